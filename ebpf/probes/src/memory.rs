//! Memory allocations: uprobes on the allocator entry points of the target
//! processes (attached per process by the agent), a uretprobe on the
//! allocating ones for the returned block.
//!
//! Per call the work is: entry — one per-thread map write and a per-CPU
//! countdown; return — one per-thread map read. Only sampled calls (about
//! one per `--sample-bytes` allocated) take a stack and touch the count and
//! live maps, so the trap, not this code, is the cost of a call.
//!
//! The stack is taken at the *return*: there the frame pointer chain
//! starts in the caller, whereas at `malloc`'s entry (before its prologue)
//! the frame-pointer walk would skip the calling function.

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use qprof_common::{
    counters::Counter,
    memory::{
        ALLOCS_CAPACITY, AllocKey, CONFIG_SLOTS, ConfigSlot, INTERVAL_SLOTS, LIVE_CAPACITY,
        LiveKey, PENDING_CAPACITY, PENDING_OUT_PARAM, PENDING_SAMPLED, Pending, STALE_PENDING_NS,
        STAT_SLOTS, Stat,
    },
};

use crate::{counters::bump, cpu::stack_id, discovery::announce_new_pid};

/// Sampled allocations per key, cumulative (see `AllocKey`).
#[map(name = "MEM_ALLOCS")]
static MEM_ALLOCS: PerCpuHashMap<AllocKey, u64> =
    PerCpuHashMap::with_max_entries(ALLOCS_CAPACITY, 0);

/// Written by the agent (see `ConfigSlot`); zero, so inert, until every
/// probe is attached.
#[map(name = "MEM_CONFIG")]
static MEM_CONFIG: Array<u32> = Array::with_max_entries(CONFIG_SLOTS, 0);

#[map(name = "MEM_LIVE")]
static MEM_LIVE: LruHashMap<LiveKey, AllocKey> = LruHashMap::with_max_entries(LIVE_CAPACITY, 0);

#[map(name = "MEM_PENDING")]
static MEM_PENDING: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(PENDING_CAPACITY, 0);

/// Exponential intervals (bytes) with the configured mean, filled by the
/// agent before it attaches: BPF has no floating point to draw them.
#[map(name = "MEM_INTERVALS")]
static MEM_INTERVALS: Array<u64> = Array::with_max_entries(INTERVAL_SLOTS, 0);

/// Bytes left until the next sample point, per CPU (no atomics needed).
#[map(name = "MEM_COUNTDOWN")]
static MEM_COUNTDOWN: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "MEM_STATS")]
static MEM_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

#[inline(always)]
fn add(stat: Stat, n: u64) {
    if let Some(slot) = MEM_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: this CPU's slot of a live per-CPU array; BPF programs on
        // one CPU do not preempt each other.
        unsafe { *slot += n };
    }
}

/// Whether the capture runs: the first thing every memory program checks,
/// so that the agent can stop all of them at one instant.
#[inline(always)]
fn enabled() -> bool {
    MEM_CONFIG
        .get(ConfigSlot::Enabled as u32)
        .is_some_and(|v| *v != 0)
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns takes no arguments and cannot fail.
    unsafe { bpf_ktime_get_ns() }
}

/// A fresh exponential interval, at least one byte.
#[inline(always)]
fn draw_interval() -> u64 {
    // SAFETY: bpf_get_prandom_u32 takes no arguments and cannot fail.
    let random = unsafe { bpf_get_prandom_u32() };
    // black_box keeps the mask visible to the verifier (see syscalls.rs).
    let index = core::hint::black_box(random & (INTERVAL_SLOTS - 1));
    MEM_INTERVALS.get(index).copied().unwrap_or(1).max(1)
}

/// Whether a sample point of the byte stream falls inside this allocation:
/// probability 1 - exp(-size/mean), since the countdown is exponential and
/// memoryless.
#[inline(always)]
fn sample(size: u64) -> bool {
    let Some(left) = MEM_COUNTDOWN.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot of a live per-CPU array; no preemption.
    let left = unsafe { &mut *left };
    if *left == 0 {
        *left = draw_interval();
    }
    if size >= *left {
        *left = draw_interval();
        true
    } else {
        *left -= size;
        false
    }
}

/// Stack pointer at the probe: the return address's slot at an entry.
#[inline(always)]
fn stack_pointer(ctx: &ProbeContext) -> u64 {
    // SAFETY: `regs` is the program's context (the trapped task's pt_regs),
    // which kprobe-type programs may read directly.
    unsafe { (*ctx.regs).rsp }
}

/// Whether this thread is inside an allocator call that made this one
/// (glibc's `realloc(NULL, n)` jumps to `malloc`, `realloc(p, 0)` calls
/// `free`): then the outer call accounts for it. A call made at or below
/// the outer entry's stack pointer within a second is nested.
#[inline(always)]
fn nested_in(pending: &Pending, sp: u64, now: u64) -> bool {
    pending.start_ns != 0
        && sp <= pending.sp
        && now.saturating_sub(pending.start_ns) < STALE_PENDING_NS
}

/// Entry of an allocating function: `size` bytes wanted; `old_ptr` is
/// `realloc`'s block, `out_ptr` `posix_memalign`'s out-parameter.
#[inline(always)]
pub fn on_alloc_entry(ctx: &ProbeContext, size: u64, old_ptr: u64, out_ptr: u64) {
    if !enabled() {
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let sp = stack_pointer(ctx);
    let now = now_ns();
    let slot = MEM_PENDING.get_ptr_mut(tid);
    if let Some(slot) = slot {
        // SAFETY: this thread's entry; only this thread writes it, and a
        // thread runs one program at a time.
        let pending = unsafe { &mut *slot };
        if nested_in(pending, sp, now) {
            pending.nested += 1;
            add(Stat::Nested, 1);
            return;
        }
    }
    add(Stat::Calls, 1);
    add(Stat::Bytes, size);
    let mut flags = if sample(size) { PENDING_SAMPLED } else { 0 };
    if out_ptr != 0 {
        flags |= PENDING_OUT_PARAM;
    }
    let fresh = Pending {
        start_ns: now,
        sp,
        size,
        old_ptr,
        out_ptr,
        nested: 0,
        flags,
    };
    match slot {
        // SAFETY: as above; the common case rewrites in place (an update
        // per call costs several lookups).
        Some(slot) => unsafe { *slot = fresh },
        None => {
            if MEM_PENDING.insert(tid, fresh, 0).is_err() {
                bump(Counter::MemPendingMapFull);
            }
        }
    }
}

/// Return of an allocating function (one program for all of them).
#[inline(always)]
pub fn on_alloc_return(ctx: &RetProbeContext) {
    if !enabled() {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(slot) = MEM_PENDING.get_ptr_mut(pid_tgid as u32) else {
        return;
    };
    // SAFETY: this thread's entry (see on_alloc_entry); copied, then marked
    // idle so that a return without its entry is skipped.
    let pending = unsafe {
        if (*slot).start_ns == 0 {
            return;
        }
        if (*slot).nested > 0 {
            (*slot).nested -= 1;
            return;
        }
        let copy = *slot;
        (*slot).start_ns = 0;
        copy
    };
    let pid = (pid_tgid >> 32) as u32;
    let ret: u64 = ctx.ret();
    let block = if pending.flags & PENDING_OUT_PARAM == 0 {
        ret
    } else if ret as u32 != 0 {
        0 // posix_memalign failed: the value is an errno.
    } else {
        // SAFETY: reads user memory through the checked helper; a bad
        // pointer is an error, not a fault.
        let read = unsafe { bpf_probe_read_user(pending.out_ptr as *const u64) };
        read.unwrap_or_else(|_| {
            bump(Counter::MemReadError);
            0
        })
    };
    // realloc: the old block is gone once the call succeeded (or it was
    // realloc(p, 0), which frees p and may return NULL).
    if pending.old_ptr != 0 && (block != 0 || pending.size == 0) {
        retire(pid, pending.old_ptr);
    }
    if block == 0 {
        add(Stat::Failed, 1);
        return;
    }
    if pending.flags & PENDING_SAMPLED != 0 {
        record(ctx, pid, block, pending.size);
    }
}

/// Entry of `free`.
#[inline(always)]
pub fn on_free(ctx: &ProbeContext, ptr: u64) {
    if ptr == 0 || !enabled() {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if let Some(slot) = MEM_PENDING.get_ptr_mut(pid_tgid as u32) {
        // SAFETY: this thread's entry, read only.
        let pending = unsafe { &*slot };
        // The clock is read only when the thread is inside an allocator call.
        if pending.start_ns != 0 && nested_in(pending, stack_pointer(ctx), now_ns()) {
            // realloc(p, 0) freeing p: the realloc's return retires it.
            add(Stat::Nested, 1);
            return;
        }
    }
    retire((pid_tgid >> 32) as u32, ptr);
}

/// A block was freed: if it was a tracked sample, it leaves the live table
/// (which is what "in use" is counted from).
#[inline(always)]
fn retire(pid: u32, addr: u64) {
    add(Stat::Frees, 1);
    let live = LiveKey { pid, pad: 0, addr };
    // One delete decides: of two CPUs racing on a double free, one counts.
    if MEM_LIVE.remove(live).is_err() {
        // Not tracked, or another CPU retired it first (a racing double free).
        add(Stat::FreesUntracked, 1);
        return;
    }
    add(Stat::FreesTracked, 1);
}

/// A sampled allocation returned `block`: count it under its stack and
/// track the block until it is freed.
#[inline(always)]
fn record(ctx: &RetProbeContext, pid: u32, block: u64, size: u64) {
    let key = AllocKey {
        pid,
        user_stack_id: stack_id(ctx, u64::from(BPF_F_USER_STACK)),
        size,
    };
    if !count_alloc(&key) {
        bump(Counter::MemAllocMapFull);
        return;
    }
    add(Stat::Sampled, 1);
    announce_new_pid(pid);
    let live = LiveKey {
        pid,
        pad: 0,
        addr: block,
    };
    // SAFETY: only tested for presence.
    if unsafe { MEM_LIVE.get(live) }.is_some() {
        // The address was handed out again, so the tracked block there was
        // freed without our seeing it; the insert below replaces it.
        add(Stat::LiveReplaced, 1);
    }
    if MEM_LIVE.insert(live, key, 0).is_ok() {
        add(Stat::LiveInserted, 1);
    } else {
        bump(Counter::MemLiveMapFull);
    }
}

/// Adds one allocation to this CPU's counts for `key`; false if the map is
/// full.
#[inline(always)]
fn count_alloc(key: &AllocKey) -> bool {
    if let Some(count) = MEM_ALLOCS.get_ptr_mut(key) {
        // SAFETY: this CPU's slot of a live per-CPU map value; no preemption.
        unsafe { *count += 1 };
        return true;
    }
    if MEM_ALLOCS.insert(key, 1, u64::from(BPF_NOEXIST)).is_ok() {
        return true;
    }
    // EEXIST: another CPU created the key after our lookup; our slot is 0.
    match MEM_ALLOCS.get_ptr_mut(key) {
        Some(count) => {
            // SAFETY: as above.
            unsafe { *count += 1 };
            true
        }
        None => false,
    }
}
