//! CPU sampling: the key of the in-kernel stack counts and the config slots.

/// Map names (the BPF side declares maps with these names; the agent looks
/// them up by the same constants).
pub const MAP_STACK_COUNTS: &str = "CPU_STACK_COUNTS";
pub const MAP_STACK_TRACES: &str = "CPU_STACK_TRACES";
pub const MAP_TARGET_PIDS: &str = "CPU_TARGET_PIDS";
pub const MAP_CONFIG: &str = "CPU_CONFIG";

/// Distinct (pid, thread name, user stack, kernel stack) keys counted per
/// capture. 10 s host-wide at 99 Hz on 2 CPUs is ~2,000 samples; 65,536 keys
/// cover 30 minutes of fully distinct stacks on 16 CPUs. Misses are counted.
pub const STACK_COUNTS_CAPACITY: u32 = 65_536;
/// Stack-trace map buckets. Collisions (two stacks hashing to one bucket)
/// grow with fill; 2x the count capacity keeps them rare. Each entry holds
/// `MAX_STACK_DEPTH` u64s, so this is 32 MiB of kernel memory at most.
pub const STACK_TRACES_CAPACITY: u32 = 32_768;
/// Frames kept per stack: the kernel's own `PERF_MAX_STACK_DEPTH` is 127.
pub const MAX_STACK_DEPTH: usize = 127;
/// Pids given with `--pid`.
pub const TARGET_PIDS_CAPACITY: u32 = 1_024;

/// Slot in `CPU_CONFIG` (a one-element array): non-zero means only pids in
/// `CPU_TARGET_PIDS` are sampled.
pub const CONFIG_FILTER_BY_PID: u32 = 0;
/// Slot in `CPU_CONFIG`: non-zero means samples record the query (text id)
/// the thread is executing, from `QUERY_ACTIVE` (`record cpu --by-query`).
pub const CONFIG_BY_QUERY: u32 = 1;
/// Slot in `CPU_CONFIG`: the generation stamped into every new key. The
/// agent bumps it before reading a window, waits for programs already
/// running to finish, then reads and deletes only keys of older
/// generations: no program writes those any more, so nothing counted
/// between the read and the delete is lost (a per-CPU hash offers no
/// atomic read-and-reset).
pub const CONFIG_GENERATION: u32 = 2;
/// Slot in `CPU_CONFIG`: non-zero means samples of the idle task (pid 0,
/// `swapper/N`) are not counted. On by default: a host-wide profile of a
/// quiet host is otherwise almost all `cpuidle_enter`.
pub const CONFIG_SKIP_IDLE: u32 = 3;
pub const CONFIG_SLOTS: u32 = 4;

/// Stack id value meaning "no stack of this kind" (user stack of a kernel
/// thread, kernel stack of a sample taken in user mode).
pub const NO_STACK: i32 = -1;

/// Key of `CPU_STACK_COUNTS`; the value is a `u64` sample count.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StackKey {
    /// Process id (tgid in kernel terms).
    pub pid: u32,
    /// Thread id (pid in kernel terms); kept so per-thread views are possible.
    pub tid: u32,
    /// Id in `CPU_STACK_TRACES`, or `NO_STACK`.
    pub user_stack_id: i32,
    /// Id in `CPU_STACK_TRACES`, or `NO_STACK`.
    pub kernel_stack_id: i32,
    /// Thread name (`comm`), NUL-padded.
    pub comm: [u8; 16],
    /// Text id of the traced query the thread was inside, 0 if none.
    pub query_id: u64,
    /// `CPU_CONFIG[CONFIG_GENERATION]` when the sample was taken.
    pub generation: u32,
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<StackKey>() == 48);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), only integer fields, no implicit padding (size asserted).
    unsafe impl aya::Pod for super::StackKey {}
}

/// Per-CPU array with one slot: samples taken (after the pid filter), so the
/// agent can show progress and the share lost without walking the count map.
pub const MAP_SAMPLE_TOTAL: &str = "CPU_SAMPLE_TOTAL";
