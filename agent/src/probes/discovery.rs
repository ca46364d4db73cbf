//! The agent side of process discovery: drains the kernel's new-pid ring
//! buffer and snapshots each process's mappings while it is alive.

use std::collections::HashSet;

use aya::{
    Ebpf,
    maps::{HashMap, MapData, RingBuf},
};
use qprof_common::discovery::{MAP_KNOWN_PIDS, MAP_NEW_PIDS, NewPid};

use super::{ProbeError, map_err, map_mut, process_maps::ProcessMaps};

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

impl NewPidWatcher {
    /// The mappings one window's stacks need: announcements are drained,
    /// the window's processes still alive are read again (libraries loaded
    /// since their first snapshot), and a copy of just those is returned.
    #[must_use]
    pub fn window_maps(&mut self, pids: &HashSet<u32>) -> ProcessMaps {
        self.poll();
        for &pid in pids {
            self.maps.snapshot(pid);
        }
        self.maps.subset(pids.iter().copied())
    }

    /// Keeps the table bounded in a long-running component: forgets
    /// processes that are gone and that no remaining count refers to
    /// (`keep`: pids with counts in the current generation, whose window
    /// is still to come), and lets the kernel announce their pids again
    /// if they are reused. Returns how many were forgotten.
    pub fn forget_dead(&mut self, ebpf: &mut Ebpf, keep: &HashSet<u32>) -> usize {
        let dead: Vec<u32> = self
            .maps
            .pids()
            .filter(|pid| !keep.contains(pid))
            .filter(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        let mut known: Option<HashMap<&mut MapData, u32, u8>> = map_mut(ebpf, MAP_KNOWN_PIDS)
            .ok()
            .and_then(|m| HashMap::try_from(m).map_err(map_err(MAP_KNOWN_PIDS)).ok());
        for &pid in &dead {
            self.maps.remove(pid);
            if let Some(known) = known.as_mut() {
                // Already aged out of the LRU map is fine.
                let _ = known.remove(&pid);
            }
        }
        dead.len()
    }
}
