//! The counts mode (the agent's always-on default; see the parent module):
//! exact calls counted on enter in a per-CPU cache, errors on exit, and
//! about one call in `sample_every` per CPU timed through its thread's
//! sample slot. The maps live in the parent module, shared with full mode.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_probe_read_kernel},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use qprof_common::{
    counters::Counter,
    hist::bucket_of,
    syscalls::{
        MAX_SYSCALL_NR, SAMPLE_SLOTS, SysConfig, SysCounts, SysErrKey, SysKey, SysStats,
        count_cache_index,
    },
};

use super::{
    SYS_COMMS, SYS_COUNT_CACHE, SYS_COUNTS, SYS_SAMPLE_LOST, SYS_SAMPLE_SLOTS, SYS_SAMPLE_TICK,
    SYS_SAMPLED, SYS_ZERO, config, count_errno, errno_of, now_ns, remember_comm, wanted,
};
use crate::counters::bump;

/// Raw tracepoint `sys_enter`, counts mode: (regs, syscall id).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_count_enter(ctx: RawTracePointContext) -> i32 {
    count_enter(&ctx);
    0
}

/// Raw tracepoint `sys_exit`, counts mode: (regs, return value).
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_count_exit(ctx: RawTracePointContext) -> i32 {
    count_exit(&ctx);
    0
}

/// The benchmark's floor: an empty program on `sys_enter`, which is what any
/// program on this tracepoint costs (the kernel's slow syscall path plus
/// one BPF call).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_floor_enter(_ctx: RawTracePointContext) -> i32 {
    0
}

/// The floor's `sys_exit` half.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_floor_exit(_ctx: RawTracePointContext) -> i32 {
    0
}

#[inline(always)]
fn count_enter(ctx: &RawTracePointContext) {
    let Some(config) = config() else {
        return;
    };
    let nr: i64 = ctx.arg(1);
    if nr < 0 || nr >= i64::from(MAX_SYSCALL_NR) {
        return;
    }
    let nr = nr as u32;
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    if !wanted(config, pid, nr) {
        return;
    }
    count_call(pid, nr, config.generation);
    let Some(tick) = SYS_SAMPLE_TICK.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array; no preemption.
    let left = unsafe { &mut *tick };
    if *left > 1 {
        *left -= 1;
        return;
    }
    // A uniform countdown in [1, 2n-1]: mean n, and no lockstep with a
    // program that cycles through a fixed sequence of syscalls.
    let every = config.sample_every.max(1);
    // SAFETY: bpf_get_prandom_u32 takes no arguments and cannot fail.
    *left = 1 + unsafe { bpf_get_prandom_u32() } % (2 * every - 1);
    if nr != NR_EXIT && nr != NR_EXIT_GROUP {
        start_sample(pid_tgid as u32, nr);
    }
}

/// `exit` and `exit_group` (`x86_64`) never return: a sample of one would
/// hold its slot until [`SLOT_STALE_NS`].
const NR_EXIT: u32 = 60;
const NR_EXIT_GROUP: u32 = 231;

/// A sample slot held this long by another thread is taken over: its owner
/// died inside the call (a kill, an `execve` that changed its tid), or is in
/// a very long wait whose one sample is then given up.
const SLOT_STALE_NS: u64 = 10_000_000_000;

/// One call of (pid, nr): in this CPU's cache slot for the pair when it
/// holds it; otherwise the holder's calls move to `SYS_COUNTS` and the pair
/// takes the slot.
#[inline(always)]
fn count_call(pid: u32, nr: u32, generation: u32) {
    let index = core::hint::black_box(count_cache_index(pid, nr, generation));
    let Some(slot) = SYS_COUNT_CACHE.get_ptr_mut(index) else {
        return;
    };
    // SAFETY: this CPU's element of a per-CPU array; BPF programs on one CPU
    // do not preempt each other.
    let slot = unsafe { &mut *slot };
    if slot.calls != 0 && slot.pid == pid && slot.nr == nr {
        slot.calls += 1;
        return;
    }
    if slot.calls != 0 {
        let evicted = SysKey {
            pid: slot.pid,
            nr: slot.nr as u16,
            generation: generation as u16,
        };
        if let Some(counts) = counts_slot(&evicted, false) {
            // SAFETY: this CPU's slot of a live map value; no preemption.
            unsafe { (*counts).calls += slot.calls };
        }
    }
    if SYS_COMMS.get_ptr(pid).is_none() {
        // A pair new to this slot, of a process not named yet: the current
        // task is that process, so name it now (a lookup on misses only).
        remember_comm(pid);
    }
    slot.pid = pid;
    slot.nr = nr;
    slot.calls = 1;
}

/// Claims this thread's sample slot for the call now entering.
#[inline(always)]
fn start_sample(tid: u32, nr: u32) {
    let Some(slot) = SYS_SAMPLE_SLOTS.get_ptr_mut(tid % SAMPLE_SLOTS) else {
        return;
    };
    // SAFETY: a live array value; a slot is written by the thread whose
    // tid it holds (or claims it when free), and a thread's enter and exit
    // never overlap. Two threads racing for a free slot is harmless: the
    // exit checks the tid, and the loser's sample is simply not taken.
    unsafe {
        let now = now_ns();
        let busy = (*slot).start_ns != 0 && (*slot).tid != tid;
        if busy && now.saturating_sub((*slot).start_ns) < SLOT_STALE_NS {
            if let Some(lost) = SYS_SAMPLE_LOST.get_ptr_mut(0) {
                *lost += 1;
            }
            return;
        }
        (*slot).tid = tid;
        (*slot).nr = nr;
        (*slot).start_ns = now;
    }
}

#[inline(always)]
fn count_exit(ctx: &RawTracePointContext) {
    let Some(config) = config() else {
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let pid = (pid_tgid >> 32) as u32;
    let ret: i64 = ctx.arg(1);
    let errno = errno_of(ret);
    if errno != 0 {
        count_error(ctx, config, pid, errno);
    }
    let Some(slot) = SYS_SAMPLE_SLOTS.get_ptr_mut(tid % SAMPLE_SLOTS) else {
        return;
    };
    // SAFETY: a live array value; see start_sample.
    let sample = unsafe {
        if (*slot).start_ns == 0 || (*slot).tid != tid {
            return;
        }
        let copy = *slot;
        (*slot).start_ns = 0;
        copy
    };
    let key = SysKey {
        pid,
        nr: sample.nr as u16,
        generation: config.generation as u16,
    };
    add_sampled(&key, now_ns().saturating_sub(sample.start_ns));
}

/// Adds one sampled call to the shared histogram of `key`.
///
/// Plain adds, not atomic ones (the BPF target's `core` has no atomic
/// read-modify-write): two CPUs finishing a *sampled* call of the *same*
/// (pid, syscall) within the same few nanoseconds can lose one of the two
/// increments of a field. At ~1 call in 64 sampled this is rare, it can only
/// thin a sample (never invent one), and it is the price of a map whose
/// memory does not grow with the CPU count.
#[inline(always)]
fn add_sampled(key: &SysKey, latency: u64) {
    let Some(stats) = SYS_SAMPLED.get_ptr_mut(key).or_else(|| insert_sampled(key)) else {
        return;
    };
    // SAFETY: a live map value; see above for the (benign) race between CPUs.
    let stats = unsafe { &mut *stats };
    stats.calls += 1;
    stats.total_ns += latency;
    if latency > stats.max_ns {
        stats.max_ns = latency;
    }
    let index = core::hint::black_box(bucket_of(latency));
    if let Some(bucket) = stats.buckets.get_mut(index) {
        *bucket += 1;
    }
}

/// Creates the shared entry of `key` (naming the process) and returns it.
#[inline(always)]
fn insert_sampled(key: &SysKey) -> Option<*mut SysStats> {
    let zero = SYS_ZERO.get_ptr(0)?;
    // SAFETY: `zero` is a live, never-written map value.
    let zero = unsafe { &*zero };
    // EEXIST (another CPU inserted it first) is fine: look it up.
    if SYS_SAMPLED
        .insert(key, zero, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        remember_comm(key.pid);
    }
    let ptr = SYS_SAMPLED.get_ptr_mut(key);
    if ptr.is_none() {
        bump(Counter::SyscallMapFull);
    }
    ptr
}

/// Offset of `orig_ax` (the syscall number) in `x86_64`'s `struct pt_regs`:
/// fifteen 8-byte registers precede it. Read only for failed calls.
const PT_REGS_ORIG_AX: usize = 15;

/// A failed call (counts mode): the exit knows only the return value, so the
/// syscall number comes from the registers the tracepoint passes.
#[inline(always)]
fn count_error(ctx: &RawTracePointContext, config: &SysConfig, pid: u32, errno: u32) {
    let regs: *const u64 = ctx.arg(0);
    // SAFETY: `regs` is the tracepoint's `struct pt_regs *`; the read is
    // checked by the helper and fails cleanly on a bad address.
    let Ok(nr) = (unsafe { bpf_probe_read_kernel(regs.wrapping_add(PT_REGS_ORIG_AX)) }) else {
        return;
    };
    if nr >= u64::from(MAX_SYSCALL_NR) || !wanted(config, pid, nr as u32) {
        return;
    }
    let key = SysKey {
        pid,
        nr: nr as u16,
        generation: config.generation as u16,
    };
    if let Some(counts) = counts_slot(&key, true) {
        // SAFETY: this CPU's slot of a live map value; no preemption.
        unsafe { (*counts).errors += 1 };
    }
    count_errno(SysErrKey {
        pid,
        nr: key.nr,
        generation: key.generation,
        errno,
        pad: 0,
    });
}

/// This CPU's counts for `key`, creating the entry (and, when the current
/// task is `key.pid`, remembering its name, for processes that exit before
/// the window is read).
#[inline(always)]
fn counts_slot(key: &SysKey, current: bool) -> Option<*mut SysCounts> {
    if let Some(ptr) = SYS_COUNTS.get_ptr_mut(key) {
        return Some(ptr);
    }
    let zero = SysCounts::default();
    if SYS_COUNTS.insert(key, zero, u64::from(BPF_NOEXIST)).is_ok() && current {
        remember_comm(key.pid);
    }
    let ptr = SYS_COUNTS.get_ptr_mut(key);
    if ptr.is_none() {
        bump(Counter::SyscallMapFull);
    }
    ptr
}
