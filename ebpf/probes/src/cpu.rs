//! CPU sampling: count (pid, tid, comm, user stack, kernel stack) in the kernel.
//!
//! Userspace reads summaries window by window, never one event per
//! sample. The only events are one `NewPid` record per newly seen process, so
//! that the agent snapshots its mappings while it is still alive.

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, StackTrace},
    programs::{PerfEventContext, tracing::StackIdContext},
};
use qprof_common::{
    counters::Counter,
    cpu::{
        CONFIG_BY_QUERY, CONFIG_FILTER_BY_PID, CONFIG_GENERATION, CONFIG_SKIP_IDLE, CONFIG_SLOTS,
        NO_STACK, STACK_COUNTS_CAPACITY, STACK_TRACES_CAPACITY, StackKey, TARGET_PIDS_CAPACITY,
    },
};

use crate::counters::bump;

/// Per-CPU values: each CPU adds to its own slot without atomics (the BPF
/// target has no `fetch_add` in `core`); userspace sums the slots.
#[map(name = "CPU_STACK_COUNTS")]
static CPU_STACK_COUNTS: PerCpuHashMap<StackKey, u64> =
    PerCpuHashMap::with_max_entries(STACK_COUNTS_CAPACITY, 0);

#[map(name = "CPU_STACK_TRACES")]
pub static CPU_STACK_TRACES: StackTrace = StackTrace::with_max_entries(STACK_TRACES_CAPACITY, 0);

#[map(name = "CPU_TARGET_PIDS")]
static CPU_TARGET_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(TARGET_PIDS_CAPACITY, 0);

#[map(name = "CPU_CONFIG")]
static CPU_CONFIG: Array<u64> = Array::with_max_entries(CONFIG_SLOTS, 0);

#[map(name = "CPU_SAMPLE_TOTAL")]
static CPU_SAMPLE_TOTAL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// errno of `bpf_get_stackid` when another stack owns the bucket.
const EEXIST: i32 = 17;
/// errno of `bpf_get_stackid` when there is no stack of that kind (a user
/// stack for a kernel thread): not a loss.
const EFAULT: i32 = 14;

#[inline(always)]
pub fn on_sample(ctx: &PerfEventContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    if filtered_out(pid) {
        return;
    }
    if let Some(total) = CPU_SAMPLE_TOTAL.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a live per-CPU array; no preemption.
        unsafe { *total += 1 };
    }
    crate::discovery::announce_new_pid(pid);
    let key = StackKey {
        pid,
        tid,
        user_stack_id: stack_id(ctx, u64::from(BPF_F_USER_STACK)),
        kernel_stack_id: stack_id(ctx, 0),
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        query_id: current_query(tid),
        generation: config(CONFIG_GENERATION) as u32,
        pad: 0,
    };
    count(&key);
}

/// The query `tid` is executing, when `--by-query` asked for it.
#[inline(always)]
fn current_query(tid: u32) -> u64 {
    if config(CONFIG_BY_QUERY) == 0 {
        return 0;
    }
    // SAFETY: the value is copied out at once.
    unsafe { crate::query_events::QUERY_ACTIVE.get(tid) }.map_or(0, |q| q.text_id)
}

#[inline(always)]
fn config(slot: u32) -> u64 {
    CPU_CONFIG.get(slot).copied().unwrap_or(0)
}

/// Filtering happens first so that untargeted processes cost a map lookup
/// and nothing more. The idle task (pid 0 on every CPU, `swapper/N`) is
/// skipped unless asked for, before the pid filter: on a quiet host it is
/// most samples.
#[inline(always)]
fn filtered_out(pid: u32) -> bool {
    if pid == 0 && config(CONFIG_SKIP_IDLE) != 0 {
        return true;
    }
    let filter_on = config(CONFIG_FILTER_BY_PID) != 0;
    // SAFETY: the value is a plain u8 read once; concurrent updates from
    // userspace can only flip a whole byte.
    filter_on && unsafe { CPU_TARGET_PIDS.get(pid) }.is_none()
}

/// Stack id in `CPU_STACK_TRACES` (shared with off-CPU), or `NO_STACK`.
#[inline(always)]
pub fn stack_id<C: StackIdContext>(ctx: &C, flags: u64) -> i32 {
    match ctx.get_stackid(&CPU_STACK_TRACES, flags) {
        Ok(id) => id as i32,
        Err(err) if err == -EFAULT => NO_STACK,
        Err(err) => {
            bump(if err == -EEXIST {
                Counter::StackCollision
            } else {
                Counter::StackError
            });
            NO_STACK
        }
    }
}

#[inline(always)]
fn count(key: &StackKey) {
    if let Some(value) = CPU_STACK_COUNTS.get_ptr_mut(key) {
        // SAFETY: the pointer is this CPU's slot of a live map value; programs
        // on one CPU do not preempt each other.
        unsafe { *value += 1 };
        return;
    }
    // EEXIST here means another CPU created the key after our lookup; the
    // entry then exists for every CPU, so the second lookup finds our slot.
    if CPU_STACK_COUNTS
        .insert(key, 1, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        return;
    }
    match CPU_STACK_COUNTS.get_ptr_mut(key) {
        // SAFETY: as above.
        Some(value) => unsafe { *value += 1 },
        None => bump(Counter::CountMapFull),
    }
}
