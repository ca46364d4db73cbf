//! The agent side of process discovery: drains the kernel's new-pid ring
//! buffer and snapshots each process's mappings while it is alive.

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use qprof_common::discovery::{MAP_NEW_PIDS, NewPid};

use super::{ProbeError, process_maps::ProcessMaps};

/// Owns the ring buffer and the mapping snapshots of one capture.
pub struct NewPidWatcher {
    ring: RingBuf<MapData>,
    pub maps: ProcessMaps,
}

impl NewPidWatcher {
    /// Takes the ring buffer out of `ebpf`; `known` pids are snapshotted now.
    pub fn new(ebpf: &mut Ebpf, known: &[u32]) -> Result<Self, ProbeError> {
        let map = ebpf.take_map(MAP_NEW_PIDS).ok_or(ProbeError::Missing {
            kind: "map",
            name: MAP_NEW_PIDS,
        })?;
        let ring = RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            name: MAP_NEW_PIDS,
            source,
        })?;
        let mut maps = ProcessMaps::default();
        for &pid in known {
            maps.snapshot(pid);
        }
        Ok(Self { ring, maps })
    }

    /// Snapshots processes announced since the last call. Call every ~100 ms.
    pub fn poll(&mut self) {
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<NewPid>() {
                // SAFETY: the kernel wrote a NewPid (repr(C), 8 bytes, any bit
                // pattern valid) and the length was checked; read_unaligned
                // because ring-buffer records are only 8-byte aligned by contract.
                let rec = unsafe { item.as_ptr().cast::<NewPid>().read_unaligned() };
                self.maps.snapshot(rec.pid);
            }
        }
    }

    /// Final poll, then a fresh snapshot of every process still alive (to
    /// catch libraries loaded after the first one). Returns the mappings.
    #[must_use]
    pub fn finish(mut self) -> ProcessMaps {
        self.poll();
        let pids: Vec<u32> = self.maps.pids().collect();
        for pid in pids {
            self.maps.snapshot(pid);
        }
        self.maps
    }
}
