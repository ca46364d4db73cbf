//! Off-CPU profiling: `sched:sched_switch`, blocked time per stack
//! aggregated in the kernel, read once at the end.

use aya::{
    Ebpf,
    maps::{Array, HashMap, PerCpuHashMap, StackTraceMap},
    programs::{TracePoint, trace_point::TracePointLinkId},
};
use qprof_common::{
    cpu::MAP_STACK_TRACES,
    offcpu::{
        MAP_CONFIG, MAP_COUNTS, MAP_START, MAP_TARGET_PIDS, OffcpuConfig, OffcpuKey, OffcpuStart,
        OffcpuValue,
    },
};

use super::{
    ProbeError,
    cpu::comm_string,
    cpu_queries::QueryLabels,
    drop_counters,
    discovery::NewPidWatcher,
    load_object,
    process_maps::ProcessMaps,
    tracefs::TracepointFormat,
    unwind::{FramePointerStacks, StackSource},
};
use crate::aggregate::stacks::{RawStack, StackCounts};

const PROGRAM: &str = "offcpu_switch";

/// A key with its (blocked ns, blocks).
type KeyTotals = (OffcpuKey, (u64, u64));

/// What to trace.
#[derive(Debug, Clone)]
pub struct OffcpuOptions {
    pub pids: Vec<u32>,
    pub min_block_ns: u64,
    /// Label blocks inside traced queries with the query's fingerprint.
    pub by_query: bool,
}

/// A running off-CPU capture; dropping it detaches the program.
pub struct OffcpuProfiler {
    ebpf: Ebpf,
    link: Option<TracePointLinkId>,
    watcher: NewPidWatcher,
    min_block_ns: u64,
    queries: Option<QueryLabels>,
}

/// What a capture produced.
pub struct OffcpuCapture {
    /// Values: `[blocks, blocked nanoseconds]`; label `state`.
    pub stacks: StackCounts,
    pub maps: ProcessMaps,
    pub drops: Vec<(&'static str, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum OffcpuError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Format(#[from] super::tracefs::FormatError),
    #[error(transparent)]
    Queries(#[from] super::queries::QueryError),
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

fn prog_err(source: aya::programs::ProgramError) -> ProbeError {
    ProbeError::Program { name: PROGRAM, source }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut TracePoint, ProbeError> {
    ebpf.program_mut(PROGRAM)
        .ok_or(ProbeError::Missing { kind: "program", name: PROGRAM })?
        .try_into()
        .map_err(prog_err)
}

impl OffcpuProfiler {
    pub fn start(options: &OffcpuOptions) -> Result<Self, OffcpuError> {
        let format = TracepointFormat::load("sched", "sched_switch")?;
        let config = OffcpuConfig {
            min_block_ns: options.min_block_ns,
            filter_pids: u32::from(!options.pids.is_empty()),
            off_prev_state: format.field("prev_state")?.offset,
            off_next_pid: format.field("next_pid")?.offset,
            by_query: u32::from(options.by_query),
        };
        let mut ebpf = load_object()?;
        {
            let map = ebpf.map_mut(MAP_CONFIG).ok_or(ProbeError::Missing { kind: "map", name: MAP_CONFIG })?;
            let mut array: Array<_, OffcpuConfig> = Array::try_from(map).map_err(map_err(MAP_CONFIG))?;
            array.set(0, config, 0).map_err(map_err(MAP_CONFIG))?;
        }
        if !options.pids.is_empty() {
            let map = ebpf
                .map_mut(MAP_TARGET_PIDS)
                .ok_or(ProbeError::Missing { kind: "map", name: MAP_TARGET_PIDS })?;
            let mut pids: HashMap<_, u32, u8> = HashMap::try_from(map).map_err(map_err(MAP_TARGET_PIDS))?;
            for pid in &options.pids {
                pids.insert(pid, 1, 0).map_err(map_err(MAP_TARGET_PIDS))?;
            }
        }
        let watcher = NewPidWatcher::new(&mut ebpf, &options.pids)?;
        let queries = if options.by_query { Some(QueryLabels::attach(&mut ebpf, &options.pids)?) } else { None };
        let prog = program(&mut ebpf)?;
        prog.load().map_err(prog_err)?;
        let link = prog.attach("sched", "sched_switch").map_err(prog_err)?;
        Ok(Self { ebpf, link: Some(link), watcher, min_block_ns: options.min_block_ns, queries })
    }

    /// (key, (ns, 1)) for each traced thread still off the CPU now.
    fn still_blocked(&self) -> Result<Vec<KeyTotals>, ProbeError> {
        let map = self.ebpf.map(MAP_START).ok_or(ProbeError::Missing { kind: "map", name: MAP_START })?;
        // An LRU hash reads like a hash from userspace.
        let starts: HashMap<_, u32, OffcpuStart> = HashMap::try_from(map).map_err(map_err(MAP_START))?;
        let now = monotonic_ns();
        let mut out = Vec::new();
        for entry in &starts {
            let (_, start) = entry.map_err(map_err(MAP_START))?;
            if start.start_ns != 0 && now > start.start_ns {
                let blocked = now - start.start_ns;
                if blocked >= self.min_block_ns {
                    out.push((start.key, (blocked, 1)));
                }
            }
        }
        Ok(out)
    }

    pub fn poll_new_processes(&mut self) {
        self.watcher.poll();
        if let Some(q) = self.queries.as_mut() {
            q.poll(&mut self.ebpf);
        }
    }

    /// Detaches and reads the blocked time per stack. Threads still blocked
    /// at the end count up to now (a thread asleep for the whole capture is
    /// the most blocked of all, not absent).
    pub fn finish(mut self) -> Result<OffcpuCapture, ProbeError> {
        if let Some(link) = self.link.take() {
            program(&mut self.ebpf)?.detach(link).map_err(prog_err)?;
        }
        let still_blocked = self.still_blocked()?;
        let traces_map = self
            .ebpf
            .take_map(MAP_STACK_TRACES)
            .ok_or(ProbeError::Missing { kind: "map", name: MAP_STACK_TRACES })?;
        let source = FramePointerStacks::new(StackTraceMap::try_from(traces_map).map_err(map_err(MAP_STACK_TRACES))?);
        let counts_map = self.ebpf.map(MAP_COUNTS).ok_or(ProbeError::Missing { kind: "map", name: MAP_COUNTS })?;
        let counts: PerCpuHashMap<_, OffcpuKey, OffcpuValue> =
            PerCpuHashMap::try_from(counts_map).map_err(map_err(MAP_COUNTS))?;
        let mut stacks = StackCounts::default();
        let per_key = counts.iter().map(|entry| {
            entry.map(|(key, per_cpu)| {
                let sum = per_cpu.iter().fold((0u64, 0u64), |(n, c), v| (n + v.ns, c + v.count));
                (key, sum)
            })
        });
        let all: Vec<_> = per_key.collect::<Result<_, _>>().map_err(map_err(MAP_COUNTS))?;
        for (key, (ns, blocks)) in all.into_iter().chain(still_blocked) {
            if blocks == 0 {
                continue;
            }
            stacks.add(RawStack {
                pid: key.pid,
                tid: key.tid,
                comm: comm_string(&key.comm),
                user: source.frames(key.user_stack_id).unwrap_or_default(),
                kernel: source.frames(key.kernel_stack_id).unwrap_or_default(),
                values: vec![blocks as i64, ns as i64],
                labels: self.labels(&key),
            });
        }
        let mut drops = drop_counters(&self.ebpf)?;
        if self.watcher.maps.dropped > 0 {
            drops.push(("process_table_full", self.watcher.maps.dropped));
        }
        Ok(OffcpuCapture { stacks, maps: self.watcher.finish(), drops })
    }
}

impl OffcpuProfiler {
    /// `state`, and `query` for blocks inside a traced query.
    fn labels(&self, key: &OffcpuKey) -> Vec<(String, String)> {
        let mut labels = vec![("state".to_owned(), state_name(key.state).to_owned())];
        if let (Some(q), id) = (&self.queries, key.query_id)
            && id != 0
        {
            labels.push(("query".to_owned(), q.label(id)));
        }
        labels
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_MONOTONIC
    // always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The thread state a block started in, as `ps` would describe it.
#[must_use]
pub fn state_name(state: u32) -> &'static str {
    match state {
        0 => "running",
        0x1 => "sleeping",
        0x2 => "disk",
        0x4 => "stopped",
        0x8 => "traced",
        0x10 => "dead",
        0x20 => "zombie",
        0x40 => "parked",
        0x80 => "idle",
        0x100 => "preempted",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reported state bit has a readable name.
    #[test]
    fn state_names() {
        assert_eq!(state_name(1), "sleeping");
        assert_eq!(state_name(2), "disk");
        assert_eq!(state_name(0x100), "preempted");
        assert_eq!(state_name(0x3), "other");
    }
}
