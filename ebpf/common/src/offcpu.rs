//! Off-CPU profiling: blocked time per (thread, stack, state), aggregated in
//! the kernel from two BTF tracepoints.
//!
//! `sched_switch` fires in the thread that leaves the CPU: it notes the time
//! and state, nothing more. `sched_exit_tp` fires at the end of `__schedule`
//! in the thread that comes back: only if it was away at least `--min-block`
//! are its stacks walked, in its own context, where both are exactly as
//! they were when it blocked. Walking stacks at every switch-out (before the
//! block's length is known) costs more than the switch itself; this way the
//! many short blocks of a busy process cost two map operations.

pub const MAP_COUNTS: &str = "OFFCPU_COUNTS";
pub const MAP_START: &str = "OFFCPU_START";
pub const MAP_CONFIG: &str = "OFFCPU_CONFIG";
pub const MAP_TARGET_PIDS: &str = "OFFCPU_TARGET_PIDS";

/// Distinct (thread, stacks, state) keys per capture: blocking stacks are
/// far fewer than CPU stacks (a thread blocks in a handful of places).
pub const COUNTS_CAPACITY: u32 = 32_768;
/// Threads currently off the CPU that are being timed, by thread id. LRU: a
/// thread killed while blocked never comes back and must age out.
pub const START_CAPACITY: u32 = 65_536;
pub const TARGET_PIDS_CAPACITY: u32 = 1_024;

/// Key of `OFFCPU_COUNTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OffcpuKey {
    pub pid: u32,
    pub tid: u32,
    pub user_stack_id: i32,
    pub kernel_stack_id: i32,
    /// The state the thread left the CPU in, as `sched:sched_switch`
    /// records report it: one `TASK_REPORT` bit, 0x80 idle, 0x100 preempted.
    pub state: u32,
    /// `OffcpuConfig::generation` when the block ended (see
    /// `qprof_common::cpu::CONFIG_GENERATION` for why).
    pub generation: u32,
    pub comm: [u8; 16],
    /// Text id of the traced query the thread blocked in, 0 if none.
    pub query_id: u64,
}
const _: () = assert!(core::mem::size_of::<OffcpuKey>() == 48);

/// Value of `OFFCPU_COUNTS` (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffcpuValue {
    /// Total blocked nanoseconds.
    pub ns: u64,
    /// Number of blocks.
    pub count: u64,
}
const _: () = assert!(core::mem::size_of::<OffcpuValue>() == 16);

/// A thread switched out and not yet back, keyed by thread id.
///
/// The user registers let the agent walk the user stack of a thread that is
/// still blocked when the capture ends (it never comes back to walk it
/// itself; its stack memory is unchanged while it waits).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OffcpuStart {
    /// 0 once consumed when the thread came back (`sched_exit_tp`).
    pub start_ns: u64,
    pub pid: u32,
    /// As in [`OffcpuKey::state`].
    pub state: u32,
    pub user_ip: u64,
    pub user_bp: u64,
}
const _: () = assert!(core::mem::size_of::<OffcpuStart>() == 32);

/// The one entry of `OFFCPU_CONFIG`. The programs read no kernel struct
/// field by offset: the BTF tracepoints hand them typed arguments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OffcpuConfig {
    /// Blocks shorter than this are not counted.
    pub min_block_ns: u64,
    /// Non-zero: only pids in `OFFCPU_TARGET_PIDS`.
    pub filter_pids: u32,
    /// Non-zero: record the query each blocked thread is in (`--by-query`).
    pub by_query: u32,
    /// Stamped into every new key; bumped by the agent before it reads a
    /// window, as `qprof_common::cpu::CONFIG_GENERATION`.
    pub generation: u32,
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<OffcpuConfig>() == 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): repr(C) structs of integers with explicit padding and
    // asserted sizes: every bit pattern is valid, no implicit padding.
    unsafe impl aya::Pod for super::OffcpuKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OffcpuValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OffcpuConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OffcpuStart {}
}
