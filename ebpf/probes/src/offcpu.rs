//! Off-CPU: on switch-out of a traced thread remember when, its stacks and
//! its state; on its switch-in add the blocked time to that key. Blocks
//! shorter than `min_block_ns` are skipped here, in the kernel.

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuHashMap},
    programs::TracePointContext,
};
use qprof_common::{
    counters::Counter,
    offcpu::{
        COUNTS_CAPACITY, OffcpuConfig, OffcpuKey, OffcpuStart, OffcpuValue, START_CAPACITY,
        TARGET_PIDS_CAPACITY,
    },
};

use crate::{counters::bump, cpu::stack_id, discovery::announce_new_pid};

#[map(name = "OFFCPU_COUNTS")]
static OFFCPU_COUNTS: PerCpuHashMap<OffcpuKey, OffcpuValue> =
    PerCpuHashMap::with_max_entries(COUNTS_CAPACITY, 0);

#[map(name = "OFFCPU_START")]
static OFFCPU_START: LruHashMap<u32, OffcpuStart> = LruHashMap::with_max_entries(START_CAPACITY, 0);

#[map(name = "OFFCPU_CONFIG")]
static OFFCPU_CONFIG: Array<OffcpuConfig> = Array::with_max_entries(1, 0);

#[map(name = "OFFCPU_TARGET_PIDS")]
static OFFCPU_TARGET_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(TARGET_PIDS_CAPACITY, 0);

/// Bits of `prev_state` that name the state (the kernel's TASK_REPORT bits,
/// plus 0x80 for idle kernel threads and 0x100 for preemption).
const STATE_MASK: u64 = 0x1ff;

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns takes no arguments and cannot fail.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn on_switch(ctx: &TracePointContext) {
    let Some(config) = OFFCPU_CONFIG.get(0) else { return };
    let now = now_ns();
    switch_out(ctx, config, now);
    switch_in(ctx, config, now);
}

/// The tracepoint fires in the context of the task leaving the CPU.
#[inline(always)]
fn switch_out(ctx: &TracePointContext, config: &OffcpuConfig, now: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if pid == 0 {
        return; // the idle task
    }
    // SAFETY: presence check only.
    if config.filter_pids != 0 && unsafe { OFFCPU_TARGET_PIDS.get(pid) }.is_none() {
        return;
    }
    // SAFETY: reads a `long` inside the tracepoint record at an offset
    // taken from its format file; bpf_probe_read_kernel checks the access.
    let state: i64 = unsafe { ctx.read_at(config.off_prev_state as usize) }.unwrap_or(0);
    let key = OffcpuKey {
        pid,
        tid,
        user_stack_id: stack_id(ctx, u64::from(BPF_F_USER_STACK)),
        kernel_stack_id: stack_id(ctx, 0),
        state: (state as u64 & STATE_MASK) as u32,
        pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        query_id: if config.by_query == 0 {
            0
        } else {
            // SAFETY: the value is copied out at once.
            unsafe { crate::query_events::QUERY_ACTIVE.get(tid) }.map_or(0, |q| q.text_id)
        },
    };
    announce_new_pid(pid);
    if let Some(slot) = OFFCPU_START.get_ptr_mut(tid) {
        // SAFETY: this thread's entry; it is only written at this thread's
        // switches, which never overlap.
        unsafe { *slot = OffcpuStart { start_ns: now, key } };
    } else if OFFCPU_START.insert(tid, OffcpuStart { start_ns: now, key }, 0).is_err() {
        bump(Counter::OffcpuStartMapFull);
    }
}

#[inline(always)]
fn switch_in(ctx: &TracePointContext, config: &OffcpuConfig, now: u64) {
    // SAFETY: as in switch_out, a `pid_t` at a format-file offset.
    let next: i32 = unsafe { ctx.read_at(config.off_next_pid as usize) }.unwrap_or(0);
    if next <= 0 {
        return;
    }
    let Some(slot) = OFFCPU_START.get_ptr_mut(next as u32) else { return };
    // SAFETY: the entry of the thread being switched in; copied, then marked
    // consumed so that it is counted once.
    let start = unsafe {
        let copy = *slot;
        (*slot).start_ns = 0;
        copy
    };
    if start.start_ns == 0 || now < start.start_ns {
        return;
    }
    let blocked = now - start.start_ns;
    if blocked < config.min_block_ns {
        return;
    }
    if let Some(value) = OFFCPU_COUNTS.get_ptr_mut(&start.key) {
        // SAFETY: this CPU's slot of a live per-CPU value; no preemption.
        unsafe {
            (*value).ns += blocked;
            (*value).count += 1;
        }
    } else if OFFCPU_COUNTS.insert(&start.key, OffcpuValue { ns: blocked, count: 1 }, 0).is_err() {
        bump(Counter::OffcpuCountMapFull);
    }
}
