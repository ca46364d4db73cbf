//! Off-CPU profiling: blocked time per (thread, stack, state), aggregated in
//! the kernel from `sched:sched_switch`.

pub const MAP_COUNTS: &str = "OFFCPU_COUNTS";
pub const MAP_START: &str = "OFFCPU_START";
pub const MAP_CONFIG: &str = "OFFCPU_CONFIG";
pub const MAP_TARGET_PIDS: &str = "OFFCPU_TARGET_PIDS";

/// Distinct (thread, stacks, state) keys per capture: blocking stacks are
/// far fewer than CPU stacks (a thread blocks in a handful of places).
pub const COUNTS_CAPACITY: u32 = 32_768;
/// Threads currently off the CPU that are being timed. LRU: a thread that
/// exits while blocked never switches in again and must age out.
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
    /// `prev_state` of the switch out, masked to the task-state bits.
    pub state: u32,
    pub pad: u32,
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

/// A thread switched out and not yet back.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OffcpuStart {
    /// 0 once consumed by the switch-in.
    pub start_ns: u64,
    pub key: OffcpuKey,
}
const _: () = assert!(core::mem::size_of::<OffcpuStart>() == 56);

/// The one entry of `OFFCPU_CONFIG`. Record offsets come from the
/// tracepoint's format file (no CO-RE for Rust BPF).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OffcpuConfig {
    /// Blocks shorter than this are not counted.
    pub min_block_ns: u64,
    /// Non-zero: only pids in `OFFCPU_TARGET_PIDS`.
    pub filter_pids: u32,
    pub off_prev_state: u32,
    pub off_next_pid: u32,
    /// Non-zero: record the query each blocked thread is in (`--by-query`).
    pub by_query: u32,
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
