//! Syscalls, in two modes (see `qprof_common::syscalls`):
//!
//! - **full** (`sys_enter`/`sys_exit` in main.rs): on enter remember (time,
//!   nr) per thread in `SYS_INFLIGHT`; on exit add the latency to this
//!   CPU's (pid, nr) statistics. Three hash lookups and two clock reads a call.
//! - **counts** (`sys_count_enter`/`sys_count_exit` below, the agent's
//!   always-on default): on enter the call is counted in this CPU's cache
//!   slot for its (pid, nr) (an array lookup; a hash lookup only when the
//!   pair is new to the slot), and a per-CPU countdown picks about one call
//!   in `sample_every` to time;
//!   on exit an array lookup checks this thread's sample slot, and only a
//!   failed call (errno) or a sampled one does more.
//!
//! Filtering (pid, comm, syscall number) happens first; a thread filtered out
//! never gets an in-flight entry. Every key carries the config's generation,
//! so that userspace can read and clear one window while the next fills.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::RawTracePointContext,
};
use qprof_common::{
    counters::Counter,
    hist::bucket_of,
    syscalls::{
        COMMS_CAPACITY, COUNT_CACHE_SLOTS, COUNTS_CAPACITY, CountSlot, ERRNOS_CAPACITY,
        INFLIGHT_CAPACITY, INLINE_PIDS, Inflight, MAX_SYSCALL_NR, SAMPLE_SLOTS, SAMPLED_CAPACITY,
        STATS_CAPACITY, SysConfig, SysCounts, SysErrKey, SysKey, SysStats, TARGET_PIDS_CAPACITY,
    },
};

use crate::counters::bump;

mod counts;

#[map(name = "SYS_STATS")]
static SYS_STATS: PerCpuHashMap<SysKey, SysStats> =
    PerCpuHashMap::with_max_entries(STATS_CAPACITY, 0);

#[map(name = "SYS_SAMPLED")]
static SYS_SAMPLED: HashMap<SysKey, SysStats> = HashMap::with_max_entries(SAMPLED_CAPACITY, 0);

#[map(name = "SYS_COUNTS")]
static SYS_COUNTS: PerCpuHashMap<SysKey, SysCounts> =
    PerCpuHashMap::with_max_entries(COUNTS_CAPACITY, 0);

/// Per CPU, two generations of `COUNT_CACHE_SLOTS` slots: userspace reads
/// and clears the previous generation's half while calls fill the other.
#[map(name = "SYS_COUNT_CACHE")]
static SYS_COUNT_CACHE: PerCpuArray<CountSlot> =
    PerCpuArray::with_max_entries(2 * COUNT_CACHE_SLOTS, 0);

#[map(name = "SYS_ERRNOS")]
static SYS_ERRNOS: PerCpuHashMap<SysErrKey, u64> =
    PerCpuHashMap::with_max_entries(ERRNOS_CAPACITY, 0);

#[map(name = "SYS_INFLIGHT")]
static SYS_INFLIGHT: LruHashMap<u32, Inflight> = LruHashMap::with_max_entries(INFLIGHT_CAPACITY, 0);

#[map(name = "SYS_SAMPLE_SLOTS")]
static SYS_SAMPLE_SLOTS: Array<Inflight> = Array::with_max_entries(SAMPLE_SLOTS, 0);

/// Per CPU: calls left before the next timed one (counts mode).
#[map(name = "SYS_SAMPLE_TICK")]
static SYS_SAMPLE_TICK: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: samples dropped because their slot held another thread's
/// (`syscall_sample_slot_busy`). Kept here rather than in the shared
/// `DROP_COUNTERS` so that the counts mode touches only its own maps.
#[map(name = "SYS_SAMPLE_LOST")]
static SYS_SAMPLE_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "SYS_COMMS")]
static SYS_COMMS: LruHashMap<u32, [u8; 16]> = LruHashMap::with_max_entries(COMMS_CAPACITY, 0);

#[map(name = "SYS_TARGET_PIDS")]
static SYS_TARGET_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(TARGET_PIDS_CAPACITY, 0);

#[map(name = "SYS_TARGET_NRS")]
static SYS_TARGET_NRS: Array<u8> = Array::with_max_entries(MAX_SYSCALL_NR, 0);

#[map(name = "SYS_CONFIG")]
static SYS_CONFIG: Array<SysConfig> = Array::with_max_entries(1, 0);

/// A zeroed `SysStats` to insert from: at 1,120 bytes it cannot live on the
/// 512-byte BPF stack.
#[map(name = "SYS_ZERO")]
static SYS_ZERO: PerCpuArray<SysStats> = PerCpuArray::with_max_entries(1, 0);

/// Monotonic nanoseconds (`CLOCK_MONOTONIC`).
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns takes no arguments and cannot fail.
    unsafe { bpf_ktime_get_ns() }
}

/// Largest errno the kernel returns (`MAX_ERRNO`).
const MAX_ERRNO: i64 = 4095;

/// The errno of a syscall's return value, 0 for success.
#[inline(always)]
fn errno_of(ret: i64) -> u32 {
    if (-MAX_ERRNO..0).contains(&ret) {
        (-ret) as u32
    } else {
        0
    }
}

/// The active config, or `None` while the programs are inert.
#[inline(always)]
fn config() -> Option<&'static SysConfig> {
    SYS_CONFIG.get(0).filter(|c| c.active != 0)
}

#[inline(always)]
fn remember_comm(pid: u32) {
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let _ = SYS_COMMS.insert(pid, comm, 0);
}

/// Full mode, `sys_enter`.
#[inline(always)]
pub fn on_enter(ctx: &RawTracePointContext) {
    let Some(config) = config() else {
        return;
    };
    let nr: i64 = ctx.arg(1);
    if nr < 0 || nr >= i64::from(MAX_SYSCALL_NR) {
        return;
    }
    let nr = nr as u32;
    let pid_tgid = bpf_get_current_pid_tgid();
    if !wanted(config, (pid_tgid >> 32) as u32, nr) {
        return;
    }
    let tid = pid_tgid as u32;
    // The common case rewrites the thread's entry in place: a map update or
    // delete per syscall costs several times a lookup.
    if let Some(slot) = SYS_INFLIGHT.get_ptr_mut(tid) {
        // SAFETY: a live value of this thread's entry; only this thread
        // writes it (enter and exit of one thread never overlap).
        unsafe {
            (*slot).start_ns = now_ns();
            (*slot).nr = nr;
        }
        return;
    }
    let inflight = Inflight {
        start_ns: now_ns(),
        nr,
        tid,
    };
    if SYS_INFLIGHT.insert(tid, inflight, 0).is_err() {
        bump(Counter::SyscallInflightFull);
    }
}

/// The pid filter, first thing on enter and on exit: with `--pid`, this is
/// all that the rest of the host's syscalls pay for (besides the kernel's
/// own tracepoint cost).
#[inline(always)]
fn pid_wanted(config: &SysConfig, pid: u32) -> bool {
    if config.filter_pids == 0 {
        return true;
    }
    if config.inline_pids == 0 {
        // SAFETY: presence check only; the u8 value is not read.
        return unsafe { SYS_TARGET_PIDS.get(pid) }.is_some();
    }
    let mut i = 0;
    while i < INLINE_PIDS {
        if (i as u32) < config.inline_pids && config.pids.get(i).is_some_and(|&p| p == pid) {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn wanted(config: &SysConfig, pid: u32, nr: u32) -> bool {
    if !pid_wanted(config, pid) {
        return false;
    }
    if config.filter_nrs != 0 && SYS_TARGET_NRS.get(nr).copied().unwrap_or(0) == 0 {
        return false;
    }
    if config.filter_comm != 0 {
        let comm = bpf_get_current_comm().unwrap_or([0; 16]);
        if comm != config.comm {
            return false;
        }
    }
    true
}

/// Full mode, `sys_exit`.
#[inline(always)]
pub fn on_exit(ctx: &RawTracePointContext) {
    let Some(config) = config() else {
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    if !pid_wanted(config, (pid_tgid >> 32) as u32) {
        return;
    }
    let now = now_ns();
    let tid = pid_tgid as u32;
    let Some(slot) = SYS_INFLIGHT.get_ptr_mut(tid) else {
        return;
    };
    // SAFETY: this thread's entry (see on_enter); copied, then marked consumed
    // so that an exit without a traced enter (a filtered syscall) is skipped.
    let inflight = unsafe {
        let copy = *slot;
        (*slot).start_ns = 0;
        copy
    };
    if inflight.start_ns == 0 {
        return;
    }
    let ret: i64 = ctx.arg(1);
    let key = SysKey {
        pid: (pid_tgid >> 32) as u32,
        nr: inflight.nr as u16,
        generation: config.generation as u16,
    };
    let errno = errno_of(ret);
    add_latency(&key, now.saturating_sub(inflight.start_ns), errno != 0);
    if errno != 0 {
        count_errno(SysErrKey {
            pid: key.pid,
            nr: key.nr,
            generation: key.generation,
            errno,
            pad: 0,
        });
    }
}

/// Adds one timed call to this CPU's statistics for `key`.
#[inline(always)]
fn add_latency(key: &SysKey, latency: u64, failed: bool) {
    let Some(stats) = stats_slot(key) else {
        return;
    };
    // SAFETY: `stats` points at this CPU's slot of a live map value, and BPF
    // programs on one CPU do not preempt each other.
    let stats = unsafe { &mut *stats };
    stats.calls += 1;
    stats.total_ns += latency;
    if latency > stats.max_ns {
        stats.max_ns = latency;
    }
    // black_box hides the (true) fact that the index is in range from LLVM,
    // which would otherwise drop the bounds check the verifier needs to see.
    let index = core::hint::black_box(bucket_of(latency));
    if let Some(bucket) = stats.buckets.get_mut(index) {
        *bucket += 1;
    }
    if failed {
        stats.errors += 1;
    }
}

/// This CPU's stats for `key`, creating the entry (and remembering the
/// process name, for processes that exit before the capture ends).
#[inline(always)]
fn stats_slot(key: &SysKey) -> Option<*mut SysStats> {
    if let Some(ptr) = SYS_STATS.get_ptr_mut(key) {
        return Some(ptr);
    }
    let zero = SYS_ZERO.get_ptr(0)?;
    // SAFETY: `zero` is a live, never-written map value of the right type.
    let zero = unsafe { &*zero };
    if SYS_STATS.insert(key, zero, u64::from(BPF_NOEXIST)).is_ok() {
        remember_comm(key.pid);
    }
    let ptr = SYS_STATS.get_ptr_mut(key);
    if ptr.is_none() {
        bump(Counter::SyscallMapFull);
    }
    ptr
}

#[inline(always)]
fn count_errno(key: SysErrKey) {
    if let Some(count) = SYS_ERRNOS.get_ptr_mut(key) {
        // SAFETY: this CPU's slot of a live map value; no preemption.
        unsafe { *count += 1 };
    } else if SYS_ERRNOS.insert(key, 1, u64::from(BPF_NOEXIST)).is_err() {
        // EEXIST: another CPU created it; this CPU's slot is now zero.
        match SYS_ERRNOS.get_ptr_mut(key) {
            // SAFETY: as above.
            Some(count) => unsafe { *count += 1 },
            None => bump(Counter::SyscallErrnoMapFull),
        }
    }
}
