//! Memory-allocation profiling: allocations sampled by bytes in the kernel
//! (a Poisson process over the allocated byte stream, as tcmalloc and
//! jemalloc sample), counted per (process, user stack, size), and the live
//! sampled blocks tracked by address so that `free` can retire them.
//!
//! Uprobes sit on the allocator entry points of the target processes only;
//! every hit is a trap (~10 µs on a virtual machine), so the programs keep
//! to one trap per call (plus the uretprobe on allocating calls, which the
//! `uretprobe` syscall makes cheap) and do almost nothing for calls that
//! are not sampled.

pub const MAP_ALLOCS: &str = "MEM_ALLOCS";
pub const MAP_LIVE: &str = "MEM_LIVE";
pub const MAP_PENDING: &str = "MEM_PENDING";
pub const MAP_INTERVALS: &str = "MEM_INTERVALS";
pub const MAP_COUNTDOWN: &str = "MEM_COUNTDOWN";
pub const MAP_STATS: &str = "MEM_STATS";
pub const MAP_CONFIG: &str = "MEM_CONFIG";

/// Slots of `MEM_CONFIG`, an array of `u32` the agent writes.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigSlot {
    /// Non-zero while the capture runs. Every memory program (allocation
    /// entry and return, and `free`) checks it first and does nothing when
    /// it is zero, so that the agent can make all of them inert at one
    /// instant: at the start once every uprobe is attached, and at the end
    /// before it reads the maps and removes the uprobes one by one (tens of
    /// ms each, while a program that keeps running would change the maps;
    /// frees still counted after `malloc`'s probe is gone empty the table
    /// of live blocks).
    Enabled = 0,
}

pub const CONFIG_SLOTS: u32 = 1;

/// Distinct (pid, user stack, size) keys allocating at once (keys idle for
/// a whole window are deleted by the agent). Programs allocate
/// from a few thousand sites in a handful of sizes each; 65,536 keys of 16
/// bytes per CPU is 1 MiB per CPU. Samples beyond it are counted
/// (`Counter::MemAllocMapFull`), not kept.
pub const ALLOCS_CAPACITY: u32 = 65_536;
/// Live sampled allocations tracked by address (LRU: when full the oldest
/// is evicted; it no longer counts as in use, and the evictions are
/// counted). At the default of one sample per 512 KiB this covers a 32 GiB
/// live heap; ~6 MiB of kernel memory, preallocated by the LRU map.
pub const LIVE_CAPACITY: u32 = 65_536;
/// Threads inside an allocator call at once (LRU: a thread that dies inside
/// `malloc` never returns and its entry must age out).
pub const PENDING_CAPACITY: u32 = 16_384;
/// Pre-drawn exponential sampling intervals. A power of two so that a
/// random index is a mask; 16,384 strata make the drawn distribution's
/// quantiles exact to 1/16,384.
pub const INTERVAL_SLOTS: u32 = 16_384;
/// A pending call older than this is stale (its return was never seen,
/// e.g. the capture started inside it): the next call starts afresh
/// instead of being taken for a call nested inside it.
pub const STALE_PENDING_NS: u64 = 1_000_000_000;

/// Key of `MEM_ALLOCS`; the value is a `u64` per CPU: sampled allocations
/// since the key was created, never reset by the kernel (the agent reads
/// per-window differences and deletes keys idle for a whole window). The
/// size is part of the key so that userspace can undo the size-dependent
/// sampling probability exactly. It is also the value of `MEM_LIVE`, so
/// the bytes in use are counted by key from the live blocks themselves.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllocKey {
    /// Process id (tgid).
    pub pid: u32,
    /// Id in `CPU_STACK_TRACES` (shared with the CPU sampler), or `NO_STACK`.
    pub user_stack_id: i32,
    /// Bytes requested.
    pub size: u64,
}
const _: () = assert!(core::mem::size_of::<AllocKey>() == 16);

/// Key of `MEM_LIVE` (value: the block's [`AllocKey`]). The pid is part of
/// the key because two processes hand out the same addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LiveKey {
    pub pid: u32,
    /// Explicit padding; always zero.
    pub pad: u32,
    pub addr: u64,
}
const _: () = assert!(core::mem::size_of::<LiveKey>() == 16);

/// `Pending::flags`: this call was sampled.
pub const PENDING_SAMPLED: u32 = 1;
/// `Pending::flags`: the block comes back through an out-parameter
/// (`posix_memalign`), and the return value is an error number.
pub const PENDING_OUT_PARAM: u32 = 2;

/// Value of `MEM_PENDING` (key: thread id): the allocating call this
/// thread is inside, from its entry to its return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// When the outermost call entered; 0 when the thread is in none.
    pub start_ns: u64,
    /// Stack pointer at the outermost entry: an allocator entry at or below
    /// it is a call made by the allocator itself (glibc's `realloc(NULL,
    /// n)` jumps to `malloc`), counted once, by the outer call.
    pub sp: u64,
    /// Bytes requested.
    pub size: u64,
    /// `realloc`'s old block, retired when the call succeeds; 0 for none.
    pub old_ptr: u64,
    /// `posix_memalign`'s `memptr`; 0 for functions returning the block.
    pub out_ptr: u64,
    /// Allocator entries nested inside this call whose returns are due.
    pub nested: u32,
    /// `PENDING_*` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<Pending>() == 48);

/// Slots of `MEM_STATS`, a per-CPU array of exact counts (not sampled).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Allocating calls (outermost only).
    Calls = 0,
    /// Bytes those calls requested.
    Bytes = 1,
    /// Calls chosen by the byte sampler that returned a block.
    Sampled = 2,
    /// Allocating calls that returned no block (out of memory, size 0).
    Failed = 3,
    /// `free` calls (and successful `realloc`s) retiring a non-null block.
    Frees = 4,
    /// ... of which the block was a tracked sampled allocation.
    FreesTracked = 5,
    /// ... of which the block was not tracked: not sampled, allocated
    /// before the capture, or evicted. Ignored.
    FreesUntracked = 6,
    /// Sampled blocks entered into `MEM_LIVE`.
    LiveInserted = 7,
    /// A sampled block's address was still tracked: its free was missed
    /// (it is retired then).
    LiveReplaced = 8,
    /// Allocator entries made by the allocator itself (skipped).
    Nested = 9,
}

pub const STAT_SLOTS: u32 = 16;

impl Stat {
    pub const ALL: [Stat; 10] = [
        Stat::Calls,
        Stat::Bytes,
        Stat::Sampled,
        Stat::Failed,
        Stat::Frees,
        Stat::FreesTracked,
        Stat::FreesUntracked,
        Stat::LiveInserted,
        Stat::LiveReplaced,
        Stat::Nested,
    ];
}

const _: () = assert!(Stat::ALL.len() as u32 <= STAT_SLOTS);

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): repr(C) structs of integers with explicit padding and
    // asserted sizes: every bit pattern is valid, no implicit padding.
    unsafe impl aya::Pod for super::AllocKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LiveKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Pending {}
}
