//! Off-CPU profiling: the `sched_switch` and `sched_exit_tp` BTF
//! tracepoints, blocked time per stack aggregated in the kernel, read
//! window by window (see [`super::stack_window`]).
//!
//! A window holds the blocks that *ended* in it. Threads still blocked are
//! added (with the time since they blocked) only by [`Component::stop`]:
//! counting them in an intermediate window as well would count their time
//! twice when they come back.

mod kallsyms;
mod still_blocked;

use std::collections::HashSet;

use aya::{
    Btf, Ebpf,
    maps::{Array, HashMap},
    programs::{BtfTracePoint, tp_btf::BtfTracePointLinkId},
};
use qprof_common::offcpu::{
    MAP_CONFIG, MAP_COUNTS, MAP_START, MAP_TARGET_PIDS, OffcpuConfig, OffcpuKey, OffcpuStart,
    OffcpuValue,
};

use super::{
    ProbeError,
    component::{CaptureKind, Component},
    cpu::comm_string,
    cpu_queries::QueryLabels,
    discovery::NewPidWatcher,
    drop_counters, map, map_err, map_mut,
    process_maps::ProcessMaps,
    prog_err,
    stack_window::{self, CounterBaseline, SETTLE, StackTable, WindowKey},
    unwind::FramePointerStacks,
};
use crate::aggregate::stacks::{RawStack, StackCounts};
use kallsyms::Kallsyms;

/// (program, BTF tracepoint): the block starts, the block ends.
const PROGRAMS: [(&str, &str); 2] = [
    ("offcpu_switch", "sched_switch"),
    ("offcpu_back", "sched_exit_tp"),
];

/// What to trace.
#[derive(Debug, Clone)]
pub struct OffcpuOptions {
    pub pids: Vec<u32>,
    pub min_block_ns: u64,
    /// Label blocks inside traced queries with the query's fingerprint.
    pub by_query: bool,
}

/// A running off-CPU profiler; dropping it detaches the programs.
pub struct OffcpuProfiler {
    ebpf: Ebpf,
    links: Vec<(&'static str, BtfTracePointLinkId)>,
    watcher: NewPidWatcher,
    stacks: StackTable,
    /// Read once: the kernel's text does not move while it runs.
    kallsyms: Kallsyms,
    config: OffcpuConfig,
    queries: Option<QueryLabels>,
    kernel_drops: CounterBaseline,
    table_full_before: u64,
    polls: u64,
}

/// What a window (or a whole capture) produced.
pub struct OffcpuCapture {
    /// Values: `[blocks, blocked nanoseconds]`; label `state`.
    pub stacks: StackCounts,
    /// The mappings of this window's processes.
    pub maps: ProcessMaps,
    pub drops: Vec<(&'static str, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum OffcpuError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("reading the kernel's BTF (/sys/kernel/btf/vmlinux) to attach to sched_switch: {0}")]
    KernelBtf(#[from] aya::BtfError),
    #[error(
        "this kernel has no BTF tracepoint {0} (sched_exit_tp needs Linux 6.16 or later); off-CPU profiling needs it to walk stacks when a thread comes back"
    )]
    MissingTracepoint(&'static str),
    #[error(transparent)]
    Queries(#[from] super::queries::QueryError),
}

impl WindowKey for OffcpuKey {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn generation(&self) -> u32 {
        self.generation
    }
    fn stack_ids(&self) -> [i32; 2] {
        [self.user_stack_id, self.kernel_stack_id]
    }
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut BtfTracePoint, ProbeError> {
    ebpf.program_mut(name)
        .ok_or(ProbeError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(prog_err(name))
}

fn set_config(ebpf: &mut Ebpf, config: OffcpuConfig) -> Result<(), ProbeError> {
    let mut array: Array<_, OffcpuConfig> =
        Array::try_from(map_mut(ebpf, MAP_CONFIG)?).map_err(map_err(MAP_CONFIG))?;
    array.set(0, config, 0).map_err(map_err(MAP_CONFIG))
}

impl Component for OffcpuProfiler {
    type Config = OffcpuOptions;
    type Snapshot = OffcpuCapture;
    type Error = OffcpuError;
    const KIND: CaptureKind = CaptureKind::Offcpu;

    fn start(options: &OffcpuOptions) -> Result<Self, OffcpuError> {
        let btf = Btf::from_sys_fs()?;
        let config = OffcpuConfig {
            min_block_ns: options.min_block_ns,
            filter_pids: u32::from(!options.pids.is_empty()),
            by_query: u32::from(options.by_query),
            generation: 0,
            pad: 0,
        };
        let mut ebpf = super::objects::load_for(CaptureKind::Offcpu, options.by_query)?;
        set_config(&mut ebpf, config)?;
        if !options.pids.is_empty() {
            let mut pids: HashMap<_, u32, u8> =
                HashMap::try_from(map_mut(&mut ebpf, MAP_TARGET_PIDS)?)
                    .map_err(map_err(MAP_TARGET_PIDS))?;
            for pid in &options.pids {
                pids.insert(pid, 1, 0).map_err(map_err(MAP_TARGET_PIDS))?;
            }
        }
        let watcher = NewPidWatcher::new(&mut ebpf, &options.pids)?;
        let queries = if options.by_query {
            Some(QueryLabels::attach(&mut ebpf, &options.pids)?)
        } else {
            None
        };
        let stacks = StackTable::new(FramePointerStacks::take(&mut ebpf)?);
        for (name, tracepoint) in PROGRAMS {
            match program(&mut ebpf, name)?.load(tracepoint, &btf) {
                Ok(()) => {}
                // The only BTF lookup is of the tracepoint's `btf_trace_*` type.
                Err(aya::programs::ProgramError::Btf(_)) => {
                    return Err(OffcpuError::MissingTracepoint(tracepoint));
                }
                Err(e) => return Err(prog_err(name)(e).into()),
            }
        }
        // Attach the end before the start, so that no block starts that
        // could not end.
        let mut links = Vec::new();
        for (name, _) in PROGRAMS.iter().rev() {
            links.push((
                *name,
                program(&mut ebpf, name)?.attach().map_err(prog_err(name))?,
            ));
        }
        Ok(Self {
            ebpf,
            links,
            watcher,
            stacks,
            kallsyms: Kallsyms::load(),
            config,
            queries,
            kernel_drops: CounterBaseline::default(),
            table_full_before: 0,
            polls: 0,
        })
    }

    fn poll(&mut self) {
        self.polls += 1;
        self.watcher.poll();
        if let Some(q) = self.queries.as_mut() {
            q.poll(&mut self.ebpf);
        }
    }

    /// Polls so far: no cheap running count of blocks exists.
    fn progress(&self) -> u64 {
        self.polls
    }

    /// Blocks that ended since the previous window.
    fn snapshot(&mut self) -> Result<OffcpuCapture, OffcpuError> {
        self.config.generation = self.config.generation.wrapping_add(1);
        set_config(&mut self.ebpf, self.config)?;
        std::thread::sleep(SETTLE);
        Ok(self.read_window(Some(self.config.generation), Vec::new())?)
    }

    /// Detaches first (the start program, then the end one: a thread that
    /// came back between the two would otherwise keep a start and look
    /// blocked until now), so that the maps stop changing; then reads
    /// every remaining block and adds the threads still blocked, up to now
    /// (a thread asleep for the whole capture is the most blocked of all,
    /// not absent).
    fn stop(mut self) -> Result<OffcpuCapture, OffcpuError> {
        for (name, link) in std::mem::take(&mut self.links).into_iter().rev() {
            program(&mut self.ebpf, name)?
                .detach(link)
                .map_err(prog_err(name))?;
        }
        let still_blocked = self.still_blocked()?;
        Ok(self.read_window(None, still_blocked)?)
    }
}

impl OffcpuProfiler {
    /// (tid, start, ns) for each traced thread still off the CPU now.
    fn still_blocked(&self) -> Result<Vec<(u32, OffcpuStart, u64)>, ProbeError> {
        // An LRU hash reads like a hash from userspace.
        let starts: HashMap<_, u32, OffcpuStart> =
            HashMap::try_from(map(&self.ebpf, MAP_START)?).map_err(map_err(MAP_START))?;
        let now = monotonic_ns();
        let mut out = Vec::new();
        for entry in &starts {
            let (tid, start) = entry.map_err(map_err(MAP_START))?;
            if start.start_ns != 0
                && now > start.start_ns
                && now - start.start_ns >= self.config.min_block_ns
            {
                out.push((tid, start, now - start.start_ns));
            }
        }
        Ok(out)
    }

    /// Reads and deletes the counts of every generation but `keep` (all of
    /// them when `None`), adds `still_blocked` threads, and frees what no
    /// remaining count refers to.
    fn read_window(
        &mut self,
        keep: Option<u32>,
        still_blocked: Vec<(u32, OffcpuStart, u64)>,
    ) -> Result<OffcpuCapture, ProbeError> {
        if let Some(q) = self.queries.as_mut() {
            q.poll(&mut self.ebpf); // texts of queries seen in this window
        }
        let old = stack_window::drain::<OffcpuKey, OffcpuValue>(
            map_mut(&mut self.ebpf, MAP_COUNTS)?,
            MAP_COUNTS,
            keep,
        )?;
        let mut stacks = StackCounts::default();
        let mut pids = HashSet::new();
        for (key, per_cpu) in old {
            let (ns, blocks) = per_cpu
                .iter()
                .fold((0u64, 0u64), |(n, c), v| (n + v.ns, c + v.count));
            if blocks == 0 {
                continue;
            }
            pids.insert(key.pid);
            let mut kernel = self.stacks.frames(key.kernel_stack_id);
            self.kallsyms.trim_to_schedule(&mut kernel);
            stacks.add(RawStack {
                pid: key.pid,
                tid: key.tid,
                comm: comm_string(&key.comm),
                user: self.stacks.frames(key.user_stack_id),
                kernel,
                values: vec![blocks as i64, ns as i64],
                labels: self.labels(key.state, key.query_id),
            });
        }
        let unreadable = self.add_still_blocked(&mut stacks, &mut pids, still_blocked);
        let (pending_pids, pending_stacks) = stack_window::still_referenced::<
            OffcpuKey,
            OffcpuValue,
        >(map(&self.ebpf, MAP_COUNTS)?, MAP_COUNTS)?;
        let lost = self.stacks.end_window(&pending_stacks);
        let maps = self.watcher.window_maps(&pids);
        self.watcher.forget_dead(&mut self.ebpf, &pending_pids);
        let mut drops = self.kernel_drops.delta(&drop_counters(&self.ebpf)?);
        lost.report(&mut drops);
        if unreadable > 0 {
            drops.push(("still_blocked_without_stacks", unreadable));
        }
        let table_full = self.watcher.maps.dropped;
        if table_full > self.table_full_before {
            drops.push(("process_table_full", table_full - self.table_full_before));
            self.table_full_before = table_full;
        }
        Ok(OffcpuCapture {
            stacks,
            maps,
            drops,
        })
    }

    /// Adds threads still blocked (stacks read from /proc and from the
    /// registers saved at switch-out); returns how many had none readable.
    fn add_still_blocked(
        &self,
        stacks: &mut StackCounts,
        pids: &mut HashSet<u32>,
        still_blocked: Vec<(u32, OffcpuStart, u64)>,
    ) -> u64 {
        let mut unreadable = 0;
        for (tid, start, ns) in still_blocked {
            let thread = still_blocked::read(
                &self.kallsyms,
                start.pid,
                tid,
                (start.user_ip, start.user_bp),
            );
            if thread.user.is_empty() && thread.kernel.is_empty() {
                unreadable += 1; // gone, or no CAP_SYS_PTRACE / kallsyms
            }
            let query_id = if self.queries.is_some() {
                QueryLabels::active(&self.ebpf, tid)
            } else {
                0
            };
            pids.insert(start.pid);
            stacks.add(RawStack {
                pid: start.pid,
                tid,
                comm: thread.comm,
                user: thread.user,
                kernel: thread.kernel,
                values: vec![1, ns as i64],
                labels: self.labels(start.state, query_id),
            });
        }
        unreadable
    }
}

impl OffcpuProfiler {
    /// `state`, and `query` for blocks inside a traced query.
    fn labels(&self, state: u32, query_id: u64) -> Vec<(String, String)> {
        let mut labels = vec![("state".to_owned(), state_name(state).to_owned())];
        if let (Some(q), id) = (&self.queries, query_id)
            && id != 0
        {
            labels.push(("query".to_owned(), q.label(id)));
        }
        labels
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
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
