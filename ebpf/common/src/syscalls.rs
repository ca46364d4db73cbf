//! Syscall tracing: per (process, syscall) statistics aggregated in the
//! kernel, per CPU, so no event per syscall crosses to userspace.
//!
//! Two modes share these maps (each loaded object runs one of them):
//! - **counts** (the agent's always-on default): exact calls and errors per
//!   (pid, syscall) counted on enter in a per-CPU cache (`SYS_COUNT_CACHE`,
//!   spilling into `SYS_COUNTS`) and on failing exits, and the latency of a
//!   sample of calls (about 1 in `SysConfig::sample_every` per CPU) in
//!   `SYS_SAMPLED`, timed through a per-thread slot of `SYS_SAMPLE_SLOTS`;
//! - **full** (`record syscalls`, on-demand captures): exact calls and
//!   errors as above and every call timed (the in-flight start kept per
//!   thread in `SYS_INFLIGHT`).
//!
//! Windows: every key carries the generation (`SysConfig::generation`) it was
//! counted in. A snapshot flips the generation, waits for programs that read
//! the old one to finish, then reads and deletes the old generation's keys:
//! nothing counted after the flip is lost or read twice.

use crate::hist::BUCKETS;

pub const MAP_STATS: &str = "SYS_STATS";
pub const MAP_SAMPLED: &str = "SYS_SAMPLED";
pub const MAP_COUNTS: &str = "SYS_COUNTS";
pub const MAP_ERRNOS: &str = "SYS_ERRNOS";
pub const MAP_INFLIGHT: &str = "SYS_INFLIGHT";
pub const MAP_SAMPLE_SLOTS: &str = "SYS_SAMPLE_SLOTS";
pub const MAP_SAMPLE_TICK: &str = "SYS_SAMPLE_TICK";
pub const MAP_SAMPLE_LOST: &str = "SYS_SAMPLE_LOST";
pub const MAP_COUNT_CACHE: &str = "SYS_COUNT_CACHE";
pub const MAP_COMMS: &str = "SYS_COMMS";
pub const MAP_TARGET_PIDS: &str = "SYS_TARGET_PIDS";
pub const MAP_TARGET_NRS: &str = "SYS_TARGET_NRS";
pub const MAP_CONFIG: &str = "SYS_CONFIG";

/// Distinct (pid, syscall) pairs with a latency histogram, per window (full
/// mode). A busy host runs a few hundred processes using ~30 syscalls each;
/// 16,384 pairs cover that several times. Each entry is
/// `size_of::<SysStats>()` (1,120 bytes) per CPU, so this is 18 MiB per CPU
/// at most: on demand only; the counts mode loads it with one entry. Pairs
/// beyond it are counted, not kept.
pub const STATS_CAPACITY: u32 = 16_384;
/// `SYS_SAMPLED` (counts mode): the sampled calls' histograms. One shared
/// (not per-CPU) hash: only ~1 call in 64 reaches it, so CPUs rarely meet
/// on a value (the programs' doc says what a meeting costs), and its memory
/// does not grow with the CPU count (4,096 x 1,120 bytes = 4.4 MiB on any host, where a
/// per-CPU map would take that per CPU). 4,096 pairs: the busy pairs of a
/// host, which are the ones sampling reaches.
pub const SAMPLED_CAPACITY: u32 = 4_096;
/// Distinct (pid, syscall) pairs with exact counts, per window (16 bytes per
/// CPU each: 256 KiB per CPU), as many as `STATS_CAPACITY` for the same reason.
pub const COUNTS_CAPACITY: u32 = 16_384;
/// Slots per generation of the per-CPU call-count cache (counts mode),
/// direct-mapped by a hash of (pid, nr). A call whose pair holds its slot
/// costs an array lookup instead of a hash lookup; a pair that finds its slot
/// taken moves the holder's count into `SYS_COUNTS` and takes it. 1,024
/// slots hold the busy pairs of one CPU (a syscall-heavy process makes a
/// handful of distinct syscalls); 16 KiB per generation per CPU.
pub const COUNT_CACHE_SLOTS: u32 = 1_024;

/// Slot index in `SYS_COUNT_CACHE` for (pid, nr) in `generation` (0 or 1).
#[must_use]
#[expect(
    clippy::inline_always,
    reason = "called from BPF programs, where it must be inlined"
)]
#[inline(always)]
pub const fn count_cache_index(pid: u32, nr: u32, generation: u32) -> u32 {
    // Fibonacci hashing: the top bits of the product mix every input bit.
    let mixed = (pid ^ (nr << 22) ^ (nr >> 10)).wrapping_mul(0x9E37_79B9);
    (generation & 1) * COUNT_CACHE_SLOTS + (mixed >> (32 - COUNT_CACHE_BITS))
}
const COUNT_CACHE_BITS: u32 = 10;
const _: () = assert!(1 << COUNT_CACHE_BITS == COUNT_CACHE_SLOTS);

/// A slot of `SYS_COUNT_CACHE` (per CPU): `calls` calls of (pid, nr) not yet
/// moved to `SYS_COUNTS`; `calls == 0` means free.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CountSlot {
    pub pid: u32,
    pub nr: u32,
    pub calls: u64,
}
const _: () = assert!(core::mem::size_of::<CountSlot>() == 16);

/// Distinct (pid, syscall, errno) triples.
pub const ERRNOS_CAPACITY: u32 = 8_192;
/// Threads inside a syscall at once (full mode). LRU: a thread that dies
/// inside `exit` never returns, and its entry must age out.
pub const INFLIGHT_CAPACITY: u32 = 65_536;
/// Slots for sampled in-flight calls (counts mode), indexed by
/// `tid % SAMPLE_SLOTS`: an array lookup costs a few instructions where a
/// hash lookup costs a hash, and the exit of every call must check its slot.
/// Two threads share a slot only if their tids are equal modulo 16,384 and
/// both are in a sampled call at once; the later sample is then dropped and
/// counted (`syscall_sample_slot_busy`). 256 KiB in all.
pub const SAMPLE_SLOTS: u32 = 16_384;
/// Process names remembered (LRU), for processes that exit mid-capture.
pub const COMMS_CAPACITY: u32 = 16_384;
/// Pids given with `--pid`.
pub const TARGET_PIDS_CAPACITY: u32 = 1_024;
/// Syscall numbers with a slot in the `--syscall` filter (`x86_64` uses < 512).
pub const MAX_SYSCALL_NR: u32 = 1_024;

/// Key of `SYS_STATS` and `SYS_COUNTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SysKey {
    pub pid: u32,
    pub nr: u16,
    /// `SysConfig::generation` when counted.
    pub generation: u16,
}
const _: () = assert!(core::mem::size_of::<SysKey>() == 8);

/// Value of `SYS_STATS` (per CPU) and `SYS_SAMPLED` (shared): timed calls.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SysStats {
    /// Calls timed (every call in full mode, the sampled ones in counts mode).
    pub calls: u64,
    /// Timed calls that failed (full mode; counts mode leaves it 0).
    pub errors: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// Latency histogram on `hist::bucket_of(ns)`.
    pub buckets: [u32; BUCKETS],
}
const _: () = assert!(core::mem::size_of::<SysStats>() == 32 + 4 * BUCKETS);

/// Value of `SYS_COUNTS` (per CPU): every call, exactly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SysCounts {
    pub calls: u64,
    pub errors: u64,
}
const _: () = assert!(core::mem::size_of::<SysCounts>() == 16);

/// Key of `SYS_ERRNOS`; the value is a u64 count.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SysErrKey {
    pub pid: u32,
    pub nr: u16,
    /// `SysConfig::generation` when counted.
    pub generation: u16,
    pub errno: u32,
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<SysErrKey>() == 16);

/// A syscall in progress on one thread (`SYS_INFLIGHT` value, full mode;
/// `SYS_SAMPLE_SLOTS` value, counts mode, where `tid` says whose it is).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Inflight {
    /// 0: no call in flight (consumed by its exit).
    pub start_ns: u64,
    pub nr: u32,
    pub tid: u32,
}
const _: () = assert!(core::mem::size_of::<Inflight>() == 16);

/// Target pids compared in place, from `SysConfig::pids`: with `--pid`,
/// every syscall of every other process on the host runs the filter, and a
/// few compares cost less than a hash lookup.
pub const INLINE_PIDS: usize = 8;

/// `SysConfig::sample_every` of the counts mode: about 1 call in 64 per CPU
/// is timed. At the ~0.2 µs a timed call costs on top of a counted one, that
/// is ~3 ns per call on average, while a pair making 1,000 calls a minute
/// still gets ~15 timings a minute (a p50, not a p99: ask for a full capture
/// for tails).
pub const DEFAULT_SAMPLE_EVERY: u32 = 64;

/// The one entry of `SYS_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SysConfig {
    /// Non-zero: only the target pids (in `pids` when `inline_pids` is
    /// non-zero, else in `SYS_TARGET_PIDS`).
    pub filter_pids: u32,
    /// Non-zero: only threads whose comm equals `comm`.
    pub filter_comm: u32,
    /// Non-zero: only syscalls whose slot in `SYS_TARGET_NRS` is non-zero.
    pub filter_nrs: u32,
    /// How many of `pids` are targets (0: more than `INLINE_PIDS` targets,
    /// all of them in `SYS_TARGET_PIDS`).
    pub inline_pids: u32,
    /// NUL-padded process name.
    pub comm: [u8; 16],
    pub pids: [u32; INLINE_PIDS],
    /// Generation written into every key (see the module doc).
    pub generation: u32,
    /// Non-zero: the programs count; zero: they return at once (set before
    /// the last read, so that nothing changes while links are removed).
    pub active: u32,
    /// Counts mode: time about one call in this many per CPU (a random
    /// countdown of mean `sample_every`, so that periodic call patterns are
    /// not aliased). 1 times every call.
    pub sample_every: u32,
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<SysConfig>() == 80);

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): repr(C) structs of integers with explicit padding and
    // asserted sizes: every bit pattern is valid, no implicit padding.
    unsafe impl aya::Pod for super::SysKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SysStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SysCounts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SysErrKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SysConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Inflight {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CountSlot {}
}
