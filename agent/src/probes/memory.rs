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
//!
//! A capture starts and ends at one instant: the programs are attached
//! inert and turned on together by one map write, and at the end turned
//! off together, waited for, and read, before any uprobe is removed (each
//! removal takes ~75 ms here; a rolling cache that kept being freed while
//! `malloc`'s probe was already gone read as 0 bytes in use instead of the
//! 80 MB it held).

pub mod allocators;
pub mod kernel;
pub mod placement;
pub mod usage;

use std::{
    collections::{HashMap, HashSet},
    num::NonZeroU32,
};

use aya::{
    Ebpf,
    maps::Array,
    programs::{
        ProgramError, UProbe,
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
    },
};
use qprof_common::memory::{AllocKey, INTERVAL_SLOTS, LiveKey, MAP_INTERVALS, Stat};

use self::{
    allocators::{AllocatorError, AttachPoint, RETURN_PROGRAM},
    usage::{ProcessUsage, UsageWatch},
};
use super::{
    ProbeError,
    component::{CaptureKind, Component},
    discovery::NewPidWatcher,
    map_err, missing_map,
    process_maps::ProcessMaps,
    unwind::{FramePointerStacks, StackSource},
};
use crate::aggregate::{
    memory::{CumulativeCounts, MemoryStats, StackRetention, exponential_intervals, scaled_values},
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
    #[error("reading BPF map {map} in batches: {source}")]
    Batch {
        map: &'static str,
        source: std::io::Error,
    },
}

/// A running capture. Dropping it detaches every uprobe (aya owns the
/// links), so an error path leaves no probe behind.
///
/// Between snapshots the kernel keeps two things: the sampled allocations
/// per (process, stack, size), cumulative (see `CumulativeCounts` for why
/// they are never reset while in use), and the table of live sampled
/// blocks, which persists across snapshots: bytes in use are a state, not
/// a rate, and each snapshot counts them from that table.
pub struct MemoryProfiler {
    ebpf: Ebpf,
    watcher: NewPidWatcher,
    stacks: FramePointerStacks,
    usage: UsageWatch,
    /// What was attached, for the start-up message.
    pub points: Vec<AttachPoint>,
    pids: Vec<u32>,
    comms: HashMap<u32, String>,
    sample_bytes: u64,
    allocs: CumulativeCounts<AllocKey>,
    retention: StackRetention,
    /// The cumulative counters and loss counters at the last snapshot.
    last_stats: MemoryStats,
    last_drops: Vec<(&'static str, u64)>,
}

/// One window (or a whole capture), ready for symbolization.
pub struct MemorySnapshot {
    /// Values per stack in `aggregate::memory::SAMPLE_TYPES` order, scaled:
    /// allocations of the window, and blocks in use at its end.
    pub stacks: StackCounts,
    pub maps: ProcessMaps,
    /// Counts of the window; `live_remaining` at its end.
    pub stats: MemoryStats,
    /// Loss counters of the window, by reason, only the non-zero ones.
    pub drops: Vec<(&'static str, u64)>,
    /// RSS and PSS of each target process through the window.
    pub usage: Vec<(u32, ProcessUsage)>,
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
    /// if one has none), fills the sampling intervals, attaches with the
    /// programs inert, and turns them all on at once.
    fn open(config: &MemoryConfig) -> Result<Self, MemoryError> {
        let mut points = Vec::new();
        for &pid in &config.pids {
            points.extend(allocators::find(pid)?);
        }
        let mut ebpf = super::objects::load_for(CaptureKind::Memory, false)?;
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
        let stacks = FramePointerStacks::take(&mut ebpf)?;
        let comms = config
            .pids
            .iter()
            .map(|&p| (p, allocators::comm(p)))
            .collect();
        let mut profiler = Self {
            ebpf,
            watcher,
            stacks,
            usage: UsageWatch::new(&config.pids),
            points,
            pids: config.pids.clone(),
            comms,
            sample_bytes: config.sample_bytes,
            allocs: CumulativeCounts::default(),
            retention: StackRetention::default(),
            last_stats: MemoryStats::default(),
            last_drops: Vec::new(),
        };
        profiler.attach_all()?;
        // Every probe is in place: from this instant on all of them count.
        // (Turned on one by one, a block freed while `malloc`'s probe was
        // already counting but `free`'s not yet would stay "in use".)
        kernel::set_enabled(&mut profiler.ebpf, true)?;
        profiler.usage.sample();
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
                // The link stays owned by the program: dropping the object
                // detaches it.
                let _: UProbeLinkId = program
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
            }
        }
        Ok(())
    }

    /// Reads the window since the last snapshot: allocations counted since
    /// then, every live block, the counters; then frees what the kernel no
    /// longer needs (allocation keys and stack ids idle for a whole window,
    /// live blocks of processes that exited).
    fn read_window(&mut self) -> Result<MemorySnapshot, MemoryError> {
        let live = kernel::live_blocks(&self.ebpf)?;
        let counts = kernel::alloc_counts(&self.ebpf)?;
        let now = kernel::stats(&self.ebpf, live.len())?;
        let window = self.allocs.advance(counts);
        kernel::forget_allocs(&mut self.ebpf, &window.idle)?;
        let live_by_key = kernel::live_by_key(&live);
        let mut rows: HashMap<AllocKey, (u64, u64)> = HashMap::new();
        for (key, n) in window.counted {
            rows.entry(key).or_default().0 += n;
        }
        for (key, n) in live_by_key {
            rows.entry(key).or_default().1 += n;
        }
        let (stacks, lost) = self.stack_counts(&rows);
        let used: HashSet<i32> = rows.keys().map(|k| k.user_stack_id).collect();
        for id in self.retention.advance(used) {
            self.stacks.forget(id);
        }
        let usage = self.usage.take();
        let exited: HashSet<u32> = usage
            .iter()
            .filter(|(_, u)| u.gone)
            .map(|(pid, _)| *pid)
            .collect();
        if !exited.is_empty() {
            let gone: Vec<LiveKey> = live
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| exited.contains(&k.pid))
                .collect();
            kernel::forget_live(&mut self.ebpf, &gone)?;
        }
        let drops = self.drops(lost)?;
        let stats = now.since(&self.last_stats);
        self.last_stats = now;
        Ok(MemorySnapshot {
            stacks,
            maps: self.current_maps(),
            stats,
            drops,
            usage,
        })
    }

    /// One stack row per key: (window allocations, live blocks), scaled.
    /// Also returns how many stack ids could not be read.
    fn stack_counts(&self, rows: &HashMap<AllocKey, (u64, u64)>) -> (StackCounts, u64) {
        let mut stacks = StackCounts::default();
        let mut lost = 0;
        for (key, &(allocs, live)) in rows {
            let mut user = self.stacks.frames(key.user_stack_id).unwrap_or_else(|_| {
                lost += 1;
                Vec::new()
            });
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
                values: scaled_values(key.size, allocs, live, self.sample_bytes).to_vec(),
                labels: Vec::new(),
            });
        }
        (stacks, lost)
    }

    /// Loss counters of the window, plus this window's unreadable stacks.
    fn drops(&mut self, stacks_lost: u64) -> Result<Vec<(&'static str, u64)>, ProbeError> {
        let mut now = super::drop_counters(&self.ebpf)?;
        if self.watcher.maps.dropped > 0 {
            now.push(("process_table_full", self.watcher.maps.dropped));
        }
        let mut window = crate::aggregate::memory::counter_deltas(&now, &self.last_drops);
        self.last_drops = now;
        if stacks_lost > 0 {
            window.push(("mem_stack_lookup_failed", stacks_lost));
        }
        Ok(window)
    }

    /// The mappings of every process seen, refreshed for those alive (to
    /// catch libraries loaded since).
    fn current_maps(&mut self) -> ProcessMaps {
        self.watcher.poll();
        for &pid in &self.pids {
            self.watcher.maps.snapshot(pid);
        }
        self.watcher.maps.clone()
    }
}

impl Component for MemoryProfiler {
    type Config = MemoryConfig;
    type Snapshot = MemorySnapshot;
    type Error = MemoryError;

    const KIND: CaptureKind = CaptureKind::Memory;

    fn start(config: &MemoryConfig) -> Result<Self, MemoryError> {
        Self::open(config)
    }

    /// Snapshots the mappings of processes seen for the first time and
    /// reads memory usage about once a second.
    fn poll(&mut self) {
        self.watcher.poll();
        self.usage.tick();
    }

    /// Sampled allocations so far (one per-CPU array lookup).
    fn progress(&self) -> u64 {
        kernel::stat(&self.ebpf, Stat::Sampled).unwrap_or(0)
    }

    /// The window's allocations and the blocks in use now, with the probes
    /// counting on (so "now" is the few ms the reads take).
    fn snapshot(&mut self) -> Result<MemorySnapshot, MemoryError> {
        self.read_window()
    }

    /// Makes every program inert at one instant, waits for those running
    /// to finish, reads the last window, then detaches (dropping the
    /// object: ~75 ms per uprobe, which no longer matters).
    fn stop(mut self) -> Result<MemorySnapshot, MemoryError> {
        kernel::set_enabled(&mut self.ebpf, false)?;
        kernel::quiesce();
        let last = self.read_window()?;
        drop(self);
        Ok(last)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, BufReader, Write as _},
        path::Path,
        process::{Command, Stdio},
        time::Duration,
    };

    use super::*;
    use crate::aggregate::memory::{ALLOC_SPACE, INUSE_SPACE};

    /// Windows of a running rolling cache: each snapshot's allocations are
    /// that window's alone (the estimate matches the kernel's exact byte
    /// count of the window, not the running total), while the bytes in use
    /// persist from window to window at what the cache holds; stacks stay
    /// readable across windows.
    #[test]
    #[ignore = "loads BPF programs and builds a C fixture: run as root with --ignored"]
    fn snapshots_are_windows_and_in_use_persists() {
        let dir = std::env::temp_dir().join(format!("qprof-mem-windows-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/mem_ring.c");
        let bin = dir.join("mem_ring");
        let report = dir.join("ring.txt");
        let built = Command::new("gcc")
            .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .unwrap();
        assert!(built.success());
        let mut child = Command::new(&bin)
            .arg("20000")
            .arg(&report)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert!(lines.next().unwrap().unwrap().starts_with("ready"));
        let config = MemoryConfig {
            pids: vec![child.id()],
            sample_bytes: 65_536,
        };
        let mut profiler = MemoryProfiler::start(&config).unwrap();
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "go").unwrap();
        assert_eq!(lines.next().unwrap().unwrap(), "done");
        let held: f64 = std::fs::read_to_string(&report).unwrap()["live_bytes=".len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let mut windows = Vec::new();
        for _ in 0..3 {
            std::thread::sleep(Duration::from_secs(1));
            profiler.poll();
            let t = std::time::Instant::now();
            windows.push(profiler.snapshot().unwrap());
            eprintln!("snapshot took {:?}", t.elapsed());
        }
        let t = std::time::Instant::now();
        windows.push(profiler.stop().unwrap());
        eprintln!("stop (inert, read, detach) took {:?}", t.elapsed());
        drop(stdin);
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        for (i, w) in windows.iter().enumerate().skip(1) {
            let alloc = w.stacks.total(ALLOC_SPACE) as f64;
            let exact = w.stats.bytes as f64;
            let inuse = w.stacks.total(INUSE_SPACE) as f64;
            eprintln!(
                "window {i}: allocated {alloc:.0} B estimated vs {exact:.0} B exact; in use {inuse:.0} B vs {held:.0} B held; drops {:?}",
                w.drops
            );
            assert!(
                exact > 0.0 && (alloc / exact - 1.0).abs() < 0.2,
                "window {i}"
            );
            assert!((inuse / held - 1.0).abs() < 0.2, "window {i}");
            assert!(w.stacks.stacks().iter().all(|s| !s.user.is_empty()));
            assert!(w.drops.is_empty(), "{:?}", w.drops);
        }
    }
}
