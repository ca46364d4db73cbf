//! Process discovery shared by every stack-collecting capability: the kernel
//! announces each process the first time it records something for it, so
//! that the agent snapshots its mappings while it is alive.

pub const MAP_KNOWN_PIDS: &str = "KNOWN_PIDS";
pub const MAP_NEW_PIDS: &str = "NEW_PIDS";

/// Processes already announced (LRU: a long host-wide capture forgets
/// processes that are gone rather than refusing new ones).
pub const KNOWN_PIDS_CAPACITY: u32 = 16_384;
/// New-pid ring buffer bytes (a power of two and a multiple of the page
/// size): 8,192 announcements between two 100 ms polls.
pub const NEW_PIDS_RING_BYTES: u32 = 64 * 1024;

/// Record sent once per newly seen process so that the agent can snapshot
/// `/proc/<pid>/maps` while the process is alive.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewPid {
    pub pid: u32,
    /// Explicit padding to 8 bytes; always zero.
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<NewPid>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), only integer fields, explicit padding (size asserted).
    unsafe impl aya::Pod for super::NewPid {}
}
