//! Reading and steering the memory profiler's maps while its programs run:
//! the on/off switch, the exact counters, the cumulative allocation counts
//! and the table of live sampled blocks.

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, AsRawFd as _},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, Map, PerCpuArray, PerCpuHashMap},
};
use qprof_common::memory::{
    AllocKey, ConfigSlot, LiveKey, MAP_ALLOCS, MAP_CONFIG, MAP_LIVE, MAP_STATS, Stat,
};

use super::MemoryError;
use crate::{
    aggregate::memory::MemoryStats,
    probes::{ProbeError, map, map_err, map_mut},
};

/// Turns every memory program on or off at once (see `ConfigSlot`).
pub fn set_enabled(ebpf: &mut Ebpf, on: bool) -> Result<(), ProbeError> {
    let mut config: Array<_, u32> =
        Array::try_from(map_mut(ebpf, MAP_CONFIG)?).map_err(map_err(MAP_CONFIG))?;
    config
        .set(ConfigSlot::Enabled as u32, u32::from(on), 0)
        .map_err(map_err(MAP_CONFIG))
}

/// `membarrier(2)` command that waits for an RCU grace period.
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
/// Fallback wait when `membarrier` is unavailable: far longer than a
/// memory program runs (a few µs).
const QUIESCE_FALLBACK: Duration = Duration::from_millis(20);

/// Waits until no memory program that read the switch before it was turned
/// off is still running. Non-sleepable uprobe programs run inside an RCU
/// read-side section, so one RCU grace period (what `MEMBARRIER_CMD_GLOBAL`
/// waits for) covers every one in flight.
pub fn quiesce() {
    // SAFETY: membarrier takes plain integers and touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if ret != 0 {
        std::thread::sleep(QUIESCE_FALLBACK);
    }
}

/// One exact counter, summed over CPUs (cheap: one per-CPU array lookup).
pub fn stat(ebpf: &Ebpf, stat: Stat) -> Result<u64, ProbeError> {
    let stats: PerCpuArray<_, u64> =
        PerCpuArray::try_from(map(ebpf, MAP_STATS)?).map_err(map_err(MAP_STATS))?;
    Ok(stats
        .get(&(stat as u32), 0)
        .map_err(map_err(MAP_STATS))?
        .iter()
        .sum())
}

/// Every exact counter, cumulative since the start; `live` is the number of
/// entries in the live table now.
pub fn stats(ebpf: &Ebpf, live: usize) -> Result<MemoryStats, ProbeError> {
    Ok(MemoryStats {
        calls: stat(ebpf, Stat::Calls)?,
        bytes: stat(ebpf, Stat::Bytes)?,
        sampled: stat(ebpf, Stat::Sampled)?,
        failed: stat(ebpf, Stat::Failed)?,
        frees: stat(ebpf, Stat::Frees)?,
        frees_tracked: stat(ebpf, Stat::FreesTracked)?,
        frees_untracked: stat(ebpf, Stat::FreesUntracked)?,
        live_inserted: stat(ebpf, Stat::LiveInserted)?,
        live_replaced: stat(ebpf, Stat::LiveReplaced)?,
        nested: stat(ebpf, Stat::Nested)?,
        live_remaining: live as u64,
        evicted: 0,
    }
    .with_evictions())
}

/// Cumulative sampled allocations per key, summed over CPUs. Only the
/// agent deletes keys, so walking the map while programs add to it is safe
/// (a key created during the walk may be missed; it is read next time).
pub fn alloc_counts(ebpf: &Ebpf) -> Result<Vec<(AllocKey, u64)>, ProbeError> {
    let counts: PerCpuHashMap<_, AllocKey, u64> =
        PerCpuHashMap::try_from(map(ebpf, MAP_ALLOCS)?).map_err(map_err(MAP_ALLOCS))?;
    let mut out = Vec::new();
    for entry in &counts {
        let (key, per_cpu) = entry.map_err(map_err(MAP_ALLOCS))?;
        out.push((key, per_cpu.iter().sum()));
    }
    Ok(out)
}

/// Deletes allocation keys that were idle for a whole window.
pub fn forget_allocs(ebpf: &mut Ebpf, keys: &[AllocKey]) -> Result<(), ProbeError> {
    let mut counts: PerCpuHashMap<_, AllocKey, u64> =
        PerCpuHashMap::try_from(map_mut(ebpf, MAP_ALLOCS)?).map_err(map_err(MAP_ALLOCS))?;
    for key in keys {
        // Already gone is fine.
        let _ = counts.remove(key);
    }
    Ok(())
}

/// Deletes live blocks (of processes that exited: nobody will free them).
pub fn forget_live(ebpf: &mut Ebpf, keys: &[LiveKey]) -> Result<(), ProbeError> {
    let mut live: BpfHashMap<_, LiveKey, AllocKey> =
        BpfHashMap::try_from(map_mut(ebpf, MAP_LIVE)?).map_err(map_err(MAP_LIVE))?;
    for key in keys {
        let _ = live.remove(key);
    }
    Ok(())
}

/// Entries fetched per `BPF_MAP_LOOKUP_BATCH` call; doubled when a hash
/// bucket holds more (ENOSPC).
const BATCH: usize = 4_096;
/// `bpf(2)` command number of `BPF_MAP_LOOKUP_BATCH` (Linux 5.6+).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}
const _: () = assert!(size_of::<BatchAttr>() == 56);

/// Every live sampled block, as (address key, allocation key).
///
/// Read with `BPF_MAP_LOOKUP_BATCH`, which walks the hash table bucket by
/// bucket, each bucket under its lock. The one-key-at-a-time walk
/// (`get_next_key`) restarts from the first key whenever the key it stands
/// on is deleted, which in a program freeing blocks all the time means
/// duplicates and a walk that may never end.
pub fn live_blocks(ebpf: &Ebpf) -> Result<Vec<(LiveKey, AllocKey)>, MemoryError> {
    let Map::LruHashMap(data) = map(ebpf, MAP_LIVE)? else {
        return Err(ProbeError::Missing {
            kind: "LRU hash map",
            name: MAP_LIVE,
        }
        .into());
    };
    let fd = data.fd().as_fd().as_raw_fd();
    let mut out = Vec::new();
    let mut capacity = BATCH;
    let mut keys = vec![
        LiveKey {
            pid: 0,
            pad: 0,
            addr: 0
        };
        capacity
    ];
    let mut values = vec![empty_key(); capacity];
    let (mut cursor, mut next) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw const cursor) as u64 },
            out_batch: (&raw mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: capacity as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers of `capacity` keys and values of
        // the map's key and value sizes (LiveKey, AllocKey: 16 bytes each),
        // and at two u32 batch tokens (the hash table's bucket cursor), all
        // alive across the call; the kernel writes at most `count` entries.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let err = (ret != 0).then(std::io::Error::last_os_error);
        let got = (attr.count as usize).min(capacity);
        if err
            .as_ref()
            .is_none_or(|e| e.raw_os_error() == Some(libc::ENOENT))
        {
            out.extend(
                keys[..got]
                    .iter()
                    .copied()
                    .zip(values[..got].iter().copied()),
            );
        }
        match err {
            None => {}
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Some(e) if e.raw_os_error() == Some(libc::ENOSPC) && capacity < 1 << 20 => {
                capacity *= 2;
                keys.resize(capacity, keys[0]);
                values.resize(capacity, empty_key());
                continue;
            }
            Some(source) => {
                return Err(MemoryError::Batch {
                    map: MAP_LIVE,
                    source,
                });
            }
        }
        cursor = next;
        first = false;
    }
}

fn empty_key() -> AllocKey {
    AllocKey {
        pid: 0,
        user_stack_id: 0,
        size: 0,
    }
}

/// How many live blocks each allocation key has.
#[must_use]
pub fn live_by_key(blocks: &[(LiveKey, AllocKey)]) -> HashMap<AllocKey, u64> {
    let mut by_key = HashMap::new();
    for (_, key) in blocks {
        *by_key.entry(*key).or_insert(0) += 1;
    }
    by_key
}
