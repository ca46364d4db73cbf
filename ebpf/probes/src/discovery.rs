//! Announces each process once, so the agent snapshots its mappings while
//! it is alive (see `qprof_common::discovery`).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{LruHashMap, RingBuf},
};
use qprof_common::{
    counters::Counter,
    discovery::{KNOWN_PIDS_CAPACITY, NEW_PIDS_RING_BYTES, NewPid},
};

use crate::counters::bump;

#[map(name = "KNOWN_PIDS")]
static KNOWN_PIDS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(KNOWN_PIDS_CAPACITY, 0);

#[map(name = "NEW_PIDS")]
static NEW_PIDS: RingBuf = RingBuf::with_byte_size(NEW_PIDS_RING_BYTES, 0);

#[inline(always)]
pub fn announce_new_pid(pid: u32) {
    // SAFETY: presence check only; the value is not read.
    if pid == 0 || unsafe { KNOWN_PIDS.get(pid) }.is_some() {
        return;
    }
    if KNOWN_PIDS.insert(pid, 1, u64::from(BPF_NOEXIST)).is_err() {
        // Another CPU inserted it first (EEXIST) is fine; anything else is a loss.
        // SAFETY: presence check only.
        if unsafe { KNOWN_PIDS.get(pid) }.is_none() {
            bump(Counter::KnownPidMapFull);
        }
        return;
    }
    if NEW_PIDS
        .output::<NewPid>(NewPid { pid, pad: 0 }, 0)
        .is_err()
    {
        bump(Counter::NewPidRingFull);
    }
}
