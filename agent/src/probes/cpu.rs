//! The CPU sampler: a `perf_event` program on the software cpu-clock event of
//! every online CPU, counting stacks in the kernel.

use aya::{
    Ebpf,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::{
        PerfEvent,
        perf_event::{
            PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent,
        },
    },
};
use qprof_common::cpu::{
    CONFIG_FILTER_BY_PID, MAP_CONFIG, MAP_SAMPLE_TOTAL, MAP_STACK_COUNTS, MAP_TARGET_PIDS, StackKey,
};

use super::{
    ProbeError,
    cpu_queries::QueryLabels,
    discovery::NewPidWatcher,
    load_object, map_err, missing_map,
    process_maps::ProcessMaps,
    queries::QueryError,
    unwind::{FramePointerStacks, StackSource},
};
use crate::aggregate::stacks::{RawStack, StackCounts};

const PROGRAM: &str = "cpu_sample";

/// What to sample.
#[derive(Debug, Clone)]
pub struct CpuConfig {
    /// Samples per second per CPU.
    pub hz: u64,
    /// Only these processes (empty: the whole host).
    pub pids: Vec<u32>,
    /// Label samples taken inside traced queries with their fingerprint.
    pub by_query: bool,
}

/// A running capture. Dropping it detaches every perf event (aya owns the
/// links), so an error path leaves no probe behind.
pub struct CpuSampler {
    ebpf: Ebpf,
    links: Vec<PerfEventLinkId>,
    watcher: NewPidWatcher,
    /// Nanoseconds one sample stands for (1e9 / hz).
    period: i64,
    queries: Option<QueryLabels>,
}

/// Everything a capture produced, ready for symbolization.
pub struct CpuCapture {
    pub stacks: StackCounts,
    pub maps: ProcessMaps,
    /// Samples the kernel took (after the pid filter).
    pub total_samples: u64,
    /// Counters of losses, by reason, only the non-zero ones.
    pub drops: Vec<(&'static str, u64)>,
}

impl CpuSampler {
    /// Loads the program, sets the pid filter and attaches to every CPU.
    pub fn start(config: &CpuConfig) -> Result<Self, ProbeError> {
        let mut ebpf = load_object()?;
        if !config.pids.is_empty() {
            let mut targets: HashMap<_, u32, u8> = HashMap::try_from(
                ebpf.map_mut(MAP_TARGET_PIDS)
                    .ok_or_else(|| missing_map(MAP_TARGET_PIDS))?,
            )
            .map_err(map_err(MAP_TARGET_PIDS))?;
            for pid in &config.pids {
                targets
                    .insert(pid, 1, 0)
                    .map_err(map_err(MAP_TARGET_PIDS))?;
            }
            let mut cfg: Array<_, u64> = Array::try_from(
                ebpf.map_mut(MAP_CONFIG)
                    .ok_or_else(|| missing_map(MAP_CONFIG))?,
            )
            .map_err(map_err(MAP_CONFIG))?;
            cfg.set(CONFIG_FILTER_BY_PID, 1, 0)
                .map_err(map_err(MAP_CONFIG))?;
        }
        let watcher = NewPidWatcher::new(&mut ebpf, &config.pids)?;
        let queries = if config.by_query {
            Some(
                QueryLabels::attach(&mut ebpf, &config.pids).map_err(|e| match e {
                    QueryError::Probe(p) => p,
                    QueryError::Format(f) => ProbeError::Tracefs(f.to_string()),
                })?,
            )
        } else {
            None
        };
        let links = attach(&mut ebpf, config.hz)?;
        Ok(Self {
            ebpf,
            links,
            watcher,
            period: 1_000_000_000 / config.hz.max(1) as i64,
            queries,
        })
    }

    /// Snapshots the mappings of processes the kernel has just seen for the
    /// first time. Call often (every ~100 ms) so short-lived processes are
    /// caught while alive.
    pub fn poll_new_processes(&mut self) {
        self.watcher.poll();
        if let Some(q) = self.queries.as_mut() {
            q.poll(&mut self.ebpf);
        }
    }

    /// Samples taken so far (cheap: one per-CPU array lookup).
    pub fn samples_so_far(&self) -> Result<u64, ProbeError> {
        let totals: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(MAP_SAMPLE_TOTAL)
                .ok_or_else(|| missing_map(MAP_SAMPLE_TOTAL))?,
        )
        .map_err(map_err(MAP_SAMPLE_TOTAL))?;
        Ok(totals
            .get(&0, 0)
            .map_err(map_err(MAP_SAMPLE_TOTAL))?
            .iter()
            .sum())
    }

    /// Stops sampling and reads everything out of the kernel.
    pub fn finish(mut self) -> Result<CpuCapture, ProbeError> {
        self.detach()?;
        let total_samples = self.samples_so_far()?;
        let drops = self.drop_counters()?;
        let stacks = self.read_stacks()?;
        let maps = self.watcher.finish();
        Ok(CpuCapture {
            stacks,
            maps,
            total_samples,
            drops,
        })
    }

    fn detach(&mut self) -> Result<(), ProbeError> {
        let program: &mut PerfEvent = program(&mut self.ebpf)?;
        for link in self.links.drain(..) {
            program.detach(link).map_err(|source| ProbeError::Program {
                name: PROGRAM,
                source,
            })?;
        }
        Ok(())
    }

    fn drop_counters(&self) -> Result<Vec<(&'static str, u64)>, ProbeError> {
        let mut out = super::drop_counters(&self.ebpf)?;
        if self.watcher.maps.dropped > 0 {
            out.push(("process_table_full", self.watcher.maps.dropped));
        }
        Ok(out)
    }

    fn read_stacks(&mut self) -> Result<StackCounts, ProbeError> {
        let source = FramePointerStacks::take(&mut self.ebpf)?;
        let counts: PerCpuHashMap<_, StackKey, u64> = PerCpuHashMap::try_from(
            self.ebpf
                .map(MAP_STACK_COUNTS)
                .ok_or_else(|| missing_map(MAP_STACK_COUNTS))?,
        )
        .map_err(map_err(MAP_STACK_COUNTS))?;
        let mut stacks = StackCounts::default();
        for entry in &counts {
            let (key, values) = entry.map_err(map_err(MAP_STACK_COUNTS))?;
            let count = values.iter().sum::<u64>() as i64;
            stacks.add(RawStack {
                pid: key.pid,
                tid: key.tid,
                comm: comm_string(&key.comm),
                user: source.frames(key.user_stack_id).unwrap_or_default(),
                kernel: source.frames(key.kernel_stack_id).unwrap_or_default(),
                values: vec![count, count * self.period],
                labels: match (&self.queries, key.query_id) {
                    (Some(q), id) if id != 0 => vec![("query".to_owned(), q.label(id))],
                    _ => Vec::new(),
                },
            });
        }
        Ok(stacks)
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut PerfEvent, ProbeError> {
    ebpf.program_mut(PROGRAM)
        .ok_or(ProbeError::Missing {
            kind: "program",
            name: PROGRAM,
        })?
        .try_into()
        .map_err(|source| ProbeError::Program {
            name: PROGRAM,
            source,
        })
}

fn attach(ebpf: &mut Ebpf, hz: u64) -> Result<Vec<PerfEventLinkId>, ProbeError> {
    let program = program(ebpf)?;
    program.load().map_err(|source| ProbeError::Program {
        name: PROGRAM,
        source,
    })?;
    let cpus = aya::util::online_cpus().map_err(|(_, e)| ProbeError::OnlineCpus(e))?;
    cpus.into_iter()
        .map(|cpu| {
            program
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(hz),
                    false,
                )
                .map_err(|source| ProbeError::Program {
                    name: PROGRAM,
                    source,
                })
        })
        .collect()
}

/// Thread name from the kernel's NUL-padded `comm`; lossy for non-UTF-8.
#[must_use]
pub fn comm_string(comm: &[u8; 16]) -> String {
    let len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..len]).into_owned()
}
