//! Off-CPU: `sched_switch` notes when a traced thread leaves the CPU (and in
//! which state); `sched_exit_tp`, in the thread that comes back, adds the
//! blocked time to its stacks, walked there and only for blocks of at least
//! `min_block_ns`. Why two tracepoints: see `qprof_common::offcpu`.

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_ktime_get_ns,
        bpf_task_pt_regs,
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuHashMap},
    programs::BtfTracePointContext,
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

/// `TASK_DEAD` in the raw `__state`: the task's last switch-out.
const TASK_DEAD: u64 = 0x80;
/// `TASK_IDLE` (`TASK_UNINTERRUPTIBLE | TASK_NOLOAD`), both bits set.
const TASK_IDLE: u64 = 0x402;
/// Reported as uninterruptible ("disk"), as the kernel does.
const TASK_RTLOCK_WAIT: u64 = 0x1000;
const TASK_FROZEN: u64 = 0x8000;
/// The kernel's `TASK_REPORT` bits.
const TASK_REPORT: u64 = 0x7f;
/// `struct pt_regs` on x86-64 (a kernel ABI: ptrace's `user_regs_struct`
/// has the same layout): word index of `bp` and `ip`.
const PT_REGS_BP: usize = 4;
const PT_REGS_IP: usize = 16;

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns takes no arguments and cannot fail.
    unsafe { bpf_ktime_get_ns() }
}

/// `sched_switch(bool preempt, task_struct *prev, task_struct *next,
/// unsigned int prev_state)`, in the context of `prev`.
#[inline(always)]
pub fn on_switch(ctx: &BtfTracePointContext) {
    let Some(config) = OFFCPU_CONFIG.get(0) else {
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if pid == 0 {
        return; // the idle task
    }
    // SAFETY: presence check only.
    if config.filter_pids != 0 && unsafe { OFFCPU_TARGET_PIDS.get(pid) }.is_none() {
        return;
    }
    let preempt: u64 = ctx.arg(0);
    let raw_state: u64 = ctx.arg(3);
    if raw_state & TASK_DEAD != 0 {
        // Its last switch: it will not come back.
        let _ = OFFCPU_START.remove(tid);
        return;
    }
    let (user_ip, user_bp) = user_regs();
    let start = OffcpuStart {
        start_ns: now_ns(),
        pid,
        state: reported_state(preempt & 1 != 0, raw_state),
        user_ip,
        user_bp,
    };
    if let Some(slot) = OFFCPU_START.get_ptr_mut(tid) {
        // SAFETY: this thread's entry; it is only written at this thread's
        // own switches, which never overlap.
        unsafe { *slot = start };
    } else if OFFCPU_START.insert(tid, start, 0).is_err() {
        bump(Counter::OffcpuStartMapFull);
    } else {
        // First block of this thread: a new process may need its maps read.
        announce_new_pid(pid);
    }
}

/// `sched_exit_tp`, at the end of `__schedule`, in the context of the thread
/// that now runs (the one switched in, or the same one if none was).
#[inline(always)]
pub fn on_sched_exit(ctx: &BtfTracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let Some(slot) = OFFCPU_START.get_ptr_mut(tid) else {
        return;
    };
    // SAFETY: this thread's entry; copied, then marked consumed so that the
    // block is counted once.
    let start = unsafe {
        let copy = *slot;
        (*slot).start_ns = 0;
        copy
    };
    let now = now_ns();
    if start.start_ns == 0 || now < start.start_ns {
        return;
    }
    let Some(config) = OFFCPU_CONFIG.get(0) else {
        return;
    };
    let blocked = now - start.start_ns;
    if blocked < config.min_block_ns {
        return;
    }
    let key = OffcpuKey {
        pid: (pid_tgid >> 32) as u32,
        tid,
        user_stack_id: stack_id(ctx, u64::from(BPF_F_USER_STACK)),
        kernel_stack_id: stack_id(ctx, 0),
        state: start.state,
        generation: config.generation,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        query_id: if config.by_query == 0 {
            0
        } else {
            // SAFETY: the value is copied out at once. The thread has not
            // yet returned from the call it blocked in: still that query.
            unsafe { crate::query_events::QUERY_ACTIVE.get(tid) }.map_or(0, |q| q.text_id)
        },
    };
    if let Some(value) = OFFCPU_COUNTS.get_ptr_mut(&key) {
        // SAFETY: this CPU's slot of a live per-CPU value; no preemption.
        unsafe {
            (*value).ns += blocked;
            (*value).count += 1;
        }
    } else if OFFCPU_COUNTS
        .insert(
            &key,
            OffcpuValue {
                ns: blocked,
                count: 1,
            },
            0,
        )
        .is_err()
    {
        bump(Counter::OffcpuCountMapFull);
    }
}

/// The user `ip` and frame pointer the thread entered the kernel with.
#[inline(always)]
fn user_regs() -> (u64, u64) {
    // SAFETY: both helpers take and return trusted BTF pointers (the
    // current task, its saved user registers); the loads are at constant
    // offsets of `struct pt_regs`, which the verifier checks against BTF.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u64;
        if regs.is_null() {
            return (0, 0);
        }
        (*regs.add(PT_REGS_IP), *regs.add(PT_REGS_BP))
    }
}

/// The state as `sched:sched_switch` records report it (the kernel's
/// `__trace_sched_switch_state`), so that labels match `perf sched`.
#[inline(always)]
fn reported_state(preempt: bool, raw: u64) -> u32 {
    if preempt {
        return 0x100;
    }
    // The kernel's `__task_state_index`, in its order.
    if raw & (TASK_RTLOCK_WAIT | TASK_FROZEN) != 0 {
        return 0x2;
    }
    if raw & TASK_IDLE == TASK_IDLE {
        return 0x80;
    }
    let bits = raw & TASK_REPORT;
    // The highest set bit, as `fls` picks it.
    let mut bit = 0x40u32;
    while bit != 0 && bits & u64::from(bit) == 0 {
        bit >>= 1;
    }
    bit
}
