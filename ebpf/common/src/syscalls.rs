//! Syscall tracing: per (process, syscall) statistics aggregated in the
//! kernel, per CPU, so no event per syscall crosses to userspace.

use crate::hist::BUCKETS;

pub const MAP_STATS: &str = "SYS_STATS";
pub const MAP_ERRNOS: &str = "SYS_ERRNOS";
pub const MAP_INFLIGHT: &str = "SYS_INFLIGHT";
pub const MAP_COMMS: &str = "SYS_COMMS";
pub const MAP_TARGET_PIDS: &str = "SYS_TARGET_PIDS";
pub const MAP_TARGET_NRS: &str = "SYS_TARGET_NRS";
pub const MAP_CONFIG: &str = "SYS_CONFIG";

/// Distinct (pid, syscall) pairs per capture. A busy host runs a few hundred
/// processes using ~30 syscalls each; 16,384 pairs cover that several times.
/// Each entry is `size_of::<SysStats>()` (1,120 bytes) per CPU, so this is
/// 18 MiB per CPU at most. Pairs beyond it are counted, not kept.
pub const STATS_CAPACITY: u32 = 16_384;
/// Distinct (pid, syscall, errno) triples.
pub const ERRNOS_CAPACITY: u32 = 8_192;
/// Threads inside a syscall at once. LRU: a thread that dies inside
/// `exit` never returns, and its entry must age out.
pub const INFLIGHT_CAPACITY: u32 = 65_536;
/// Process names remembered (LRU), for processes that exit mid-capture.
pub const COMMS_CAPACITY: u32 = 16_384;
/// Pids given with `--pid`.
pub const TARGET_PIDS_CAPACITY: u32 = 1_024;
/// Syscall numbers with a slot in the `--syscall` filter (`x86_64` uses < 512).
pub const MAX_SYSCALL_NR: u32 = 1_024;

/// Key of `SYS_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SysKey {
    pub pid: u32,
    pub nr: u32,
}
const _: () = assert!(core::mem::size_of::<SysKey>() == 8);

/// Value of `SYS_STATS` (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SysStats {
    pub calls: u64,
    pub errors: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// Latency histogram on `hist::bucket_of(ns)`.
    pub buckets: [u32; BUCKETS],
}
const _: () = assert!(core::mem::size_of::<SysStats>() == 32 + 4 * BUCKETS);

/// Key of `SYS_ERRNOS`; the value is a u64 count.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SysErrKey {
    pub pid: u32,
    pub nr: u32,
    pub errno: u32,
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<SysErrKey>() == 16);

/// A syscall in progress on one thread.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Inflight {
    pub start_ns: u64,
    pub nr: u32,
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<Inflight>() == 16);

/// Target pids compared in place, from `SysConfig::pids`: with `--pid`,
/// every syscall of every other process on the host runs the filter, and a
/// few compares cost less than a hash lookup.
pub const INLINE_PIDS: usize = 8;

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
}
const _: () = assert!(core::mem::size_of::<SysConfig>() == 64);

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): repr(C) structs of integers with explicit padding and
    // asserted sizes: every bit pattern is valid, no implicit padding.
    unsafe impl aya::Pod for super::SysKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SysStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SysErrKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SysConfig {}
}
