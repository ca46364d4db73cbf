//! The memory profiler: uprobes on the allocator entry points of the
//! target processes (each attached to one process, never host-wide), byte
//! sampling in the kernel, and the drain into scaled stack counts.
//!
//! Traps per call: `malloc`, `calloc`, `realloc`, `posix_memalign`,
//! `aligned_alloc`, `memalign`: one uprobe trap plus a uretprobe
//! (whose return trampoline is a cheap syscall on kernels with the
//! `uretprobe` syscall); `free`: one trap. Each probe sits on an
//! instruction the kernel emulates (see `placement`), so no hit pays a
//! second, single-step trap. Calls the allocator makes to itself (glibc's
//! `realloc(NULL, n)` tail-calls `malloc`) cost their own trap but are
//! counted once.

pub mod allocators;
pub mod placement;
pub mod usage;

use std::num::NonZeroU32;

use aya::{
    Ebpf,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::{
        ProgramError, UProbe,
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
    },
};
use qprof_common::memory::{
    AllocCounts, AllocKey, INTERVAL_SLOTS, LiveKey, MAP_ALLOCS, MAP_INTERVALS, MAP_LIVE, MAP_STATS,
    Stat,
};

use self::allocators::{AllocatorError, AttachPoint, RETURN_PROGRAM};
use super::{
    ProbeError,
    discovery::NewPidWatcher,
    load_object, map_err, missing_map,
    process_maps::ProcessMaps,
    unwind::{FramePointerStacks, StackSource},
};
use crate::aggregate::{
    memory::{MemoryStats, exponential_intervals, scaled_values},
    stacks::{RawStack, StackCounts},
};

/// What to profile.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    pub pids: Vec<u32>,
    /// Mean bytes between samples (`--sample-bytes`), at least 1.
    pub sample_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Allocator(#[from] AllocatorError),
    #[error("attaching a uprobe to {function} in {module} of pid {pid}: {source}")]
    Attach {
        pid: u32,
        function: &'static str,
        module: String,
        source: ProgramError,
    },
}

/// A running capture. Dropping it detaches every uprobe (aya owns the
/// links), so an error path leaves no probe behind.
pub struct MemoryProfiler {
    ebpf: Ebpf,
    links: Vec<(&'static str, UProbeLinkId)>,
    watcher: NewPidWatcher,
    /// What was attached, for the start-up message.
    pub points: Vec<AttachPoint>,
    comms: std::collections::HashMap<u32, String>,
    sample_bytes: u64,
}

/// Everything a capture produced, ready for symbolization.
pub struct MemoryCapture {
    /// Values per stack in `aggregate::memory::SAMPLE_TYPES` order, scaled.
    pub stacks: StackCounts,
    pub maps: ProcessMaps,
    pub stats: MemoryStats,
    /// Loss counters, by reason, only the non-zero ones.
    pub drops: Vec<(&'static str, u64)>,
}

fn program_err(name: &'static str) -> impl FnOnce(ProgramError) -> ProbeError {
    move |source| ProbeError::Program { name, source }
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, ProbeError> {
    ebpf.program_mut(name)
        .ok_or(ProbeError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(program_err(name))
}

impl MemoryProfiler {
    /// Finds every target's allocator (failing before anything is loaded
    /// if one has none), fills the sampling intervals and attaches.
    pub fn start(config: &MemoryConfig) -> Result<Self, MemoryError> {
        let mut points = Vec::new();
        for &pid in &config.pids {
            points.extend(allocators::find(pid)?);
        }
        let mut ebpf = load_object()?;
        let mut intervals: Array<_, u64> = Array::try_from(
            ebpf.map_mut(MAP_INTERVALS)
                .ok_or_else(|| missing_map(MAP_INTERVALS))?,
        )
        .map_err(map_err(MAP_INTERVALS))?;
        let table = exponential_intervals(config.sample_bytes, INTERVAL_SLOTS as usize);
        for (i, value) in table.into_iter().enumerate() {
            intervals
                .set(i as u32, value, 0)
                .map_err(map_err(MAP_INTERVALS))?;
        }
        let watcher = NewPidWatcher::new(&mut ebpf, &config.pids)?;
        let comms = config
            .pids
            .iter()
            .map(|&p| (p, allocators::comm(p)))
            .collect();
        let mut profiler = Self {
            ebpf,
            links: Vec::new(),
            watcher,
            points,
            comms,
            sample_bytes: config.sample_bytes,
        };
        profiler.attach_all()?;
        Ok(profiler)
    }

    fn attach_all(&mut self) -> Result<(), MemoryError> {
        let mut loaded: Vec<&'static str> = Vec::new();
        for point in &self.points {
            let entry = point.function.entry_program();
            let programs: &[&'static str] = if point.function.allocates() {
                &[entry, RETURN_PROGRAM]
            } else {
                &[entry]
            };
            for &name in programs {
                let program = uprobe(&mut self.ebpf, name)?;
                if !loaded.contains(&name) {
                    program.load().map_err(program_err(name))?;
                    loaded.push(name);
                }
                let scope = NonZeroU32::new(point.pid).map_or(
                    UProbeScope::AllProcesses, // unreachable: pids are > 0
                    UProbeScope::OneProcess,
                );
                let link = program
                    .attach(
                        UProbeAttachLocation::AbsoluteOffset(point.offset),
                        &point.target,
                        scope,
                    )
                    .map_err(|source| MemoryError::Attach {
                        pid: point.pid,
                        function: point.function.symbol(),
                        module: point.module.clone(),
                        source,
                    })?;
                self.links.push((name, link));
            }
        }
        Ok(())
    }

    /// Snapshots the mappings of processes seen for the first time. Call
    /// every ~100 ms.
    pub fn poll_new_processes(&mut self) {
        self.watcher.poll();
    }

    /// Sampled allocations so far (cheap: one per-CPU array lookup).
    pub fn samples_so_far(&self) -> Result<u64, ProbeError> {
        self.stat(Stat::Sampled)
    }

    fn stat(&self, stat: Stat) -> Result<u64, ProbeError> {
        let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(MAP_STATS)
                .ok_or_else(|| missing_map(MAP_STATS))?,
        )
        .map_err(map_err(MAP_STATS))?;
        Ok(stats
            .get(&(stat as u32), 0)
            .map_err(map_err(MAP_STATS))?
            .iter()
            .sum())
    }

    /// Detaches every probe, then reads everything out of the kernel.
    pub fn finish(mut self) -> Result<MemoryCapture, ProbeError> {
        self.detach_all()?;
        let stats = self.stats()?;
        let mut drops = super::drop_counters(&self.ebpf)?;
        if self.watcher.maps.dropped > 0 {
            drops.push(("process_table_full", self.watcher.maps.dropped));
        }
        let stacks = self.read_stacks()?;
        let maps = self.watcher.finish();
        Ok(MemoryCapture {
            stacks,
            maps,
            stats,
            drops,
        })
    }

    /// Each uprobe's removal waits for an RCU grace period, one after the
    /// other in the kernel (~75 ms per link here, even from parallel
    /// threads): about 0.8 s for the 11 links of a process on glibc.
    fn detach_all(&mut self) -> Result<(), ProbeError> {
        for (name, link) in std::mem::take(&mut self.links) {
            uprobe(&mut self.ebpf, name)?
                .detach(link)
                .map_err(program_err(name))?;
        }
        Ok(())
    }

    fn stats(&self) -> Result<MemoryStats, ProbeError> {
        let live: HashMap<_, LiveKey, AllocKey> = HashMap::try_from(
            self.ebpf
                .map(MAP_LIVE)
                .ok_or_else(|| missing_map(MAP_LIVE))?,
        )
        .map_err(map_err(MAP_LIVE))?;
        Ok(MemoryStats {
            calls: self.stat(Stat::Calls)?,
            bytes: self.stat(Stat::Bytes)?,
            sampled: self.stat(Stat::Sampled)?,
            failed: self.stat(Stat::Failed)?,
            frees: self.stat(Stat::Frees)?,
            frees_tracked: self.stat(Stat::FreesTracked)?,
            frees_untracked: self.stat(Stat::FreesUntracked)?,
            live_inserted: self.stat(Stat::LiveInserted)?,
            live_replaced: self.stat(Stat::LiveReplaced)?,
            nested: self.stat(Stat::Nested)?,
            live_remaining: live.keys().flatten().count() as u64,
        })
    }

    fn read_stacks(&mut self) -> Result<StackCounts, ProbeError> {
        let source = FramePointerStacks::take(&mut self.ebpf)?;
        let counts: PerCpuHashMap<_, AllocKey, AllocCounts> = PerCpuHashMap::try_from(
            self.ebpf
                .map(MAP_ALLOCS)
                .ok_or_else(|| missing_map(MAP_ALLOCS))?,
        )
        .map_err(map_err(MAP_ALLOCS))?;
        let mut stacks = StackCounts::default();
        for entry in &counts {
            let (key, per_cpu) = entry.map_err(map_err(MAP_ALLOCS))?;
            let (allocs, frees) = per_cpu
                .iter()
                .fold((0, 0), |(a, f), c| (a + c.allocs, f + c.frees));
            let mut user = source.frames(key.user_stack_id).unwrap_or_default();
            // The stack was taken at the return: its first frame is a
            // return address, whose call is the byte before.
            if let Some(leaf) = user.first_mut() {
                *leaf = leaf.saturating_sub(1);
            }
            stacks.add(RawStack {
                pid: key.pid,
                tid: key.pid,
                comm: self
                    .comms
                    .get(&key.pid)
                    .cloned()
                    .unwrap_or_else(|| allocators::comm(key.pid)),
                user,
                kernel: Vec::new(),
                values: scaled_values(key.size, allocs, frees, self.sample_bytes).to_vec(),
                labels: Vec::new(),
            });
        }
        Ok(stacks)
    }
}
