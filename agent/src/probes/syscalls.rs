//! Syscall tracing: raw tracepoints `sys_enter`/`sys_exit`, statistics
//! aggregated per CPU in the kernel and read once at the end.

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuHashMap},
    programs::{RawTracePoint, raw_trace_point::RawTracePointLinkId},
};
use qprof_common::syscalls::{
    MAP_COMMS, MAP_CONFIG, MAP_ERRNOS, MAP_STATS, MAP_TARGET_NRS, MAP_TARGET_PIDS, SysConfig,
    SysErrKey, SysKey, SysStats,
};

use super::{ProbeError, cpu::comm_string, load_object, map, map_err, map_mut, prog_err};
use crate::aggregate::syscalls::SyscallTable;

const PROGRAMS: [(&str, &str); 2] = [("sys_enter", "sys_enter"), ("sys_exit", "sys_exit")];

/// What to trace; empty filters mean everything.
#[derive(Debug, Clone, Default)]
pub struct SyscallConfig {
    pub pids: Vec<u32>,
    pub comm: Option<String>,
    pub syscalls: Vec<u32>,
}

/// A running syscall trace; dropping it detaches both programs.
pub struct SyscallTracer {
    ebpf: Ebpf,
    links: Vec<(&'static str, RawTracePointLinkId)>,
}

impl SyscallTracer {
    /// Loads, configures the filters and attaches.
    pub fn start(config: &SyscallConfig) -> Result<Self, ProbeError> {
        let mut ebpf = load_object()?;
        configure(&mut ebpf, config)?;
        let mut links = Vec::new();
        for (program, tracepoint) in PROGRAMS {
            let prog: &mut RawTracePoint = ebpf
                .program_mut(program)
                .ok_or(ProbeError::Missing {
                    kind: "program",
                    name: program,
                })?
                .try_into()
                .map_err(prog_err(program))?;
            prog.load().map_err(prog_err(program))?;
            links.push((program, prog.attach(tracepoint).map_err(prog_err(program))?));
        }
        Ok(Self { ebpf, links })
    }

    /// Distinct (pid, syscall) pairs so far (for progress; walks the keys).
    #[must_use]
    pub fn pairs_so_far(&self) -> u64 {
        map(&self.ebpf, MAP_STATS)
            .ok()
            .and_then(|m| PerCpuHashMap::<_, SysKey, SysStats>::try_from(m).ok())
            .map_or(0, |m| m.keys().count() as u64)
    }

    /// Detaches and reads the statistics.
    pub fn finish(mut self) -> Result<SyscallTable, ProbeError> {
        for (program, link) in self.links.drain(..) {
            let prog: &mut RawTracePoint = self
                .ebpf
                .program_mut(program)
                .ok_or(ProbeError::Missing {
                    kind: "program",
                    name: program,
                })?
                .try_into()
                .map_err(prog_err(program))?;
            prog.detach(link).map_err(prog_err(program))?;
        }
        let mut table = SyscallTable::default();
        let stats: PerCpuHashMap<_, SysKey, SysStats> =
            PerCpuHashMap::try_from(map(&self.ebpf, MAP_STATS)?).map_err(map_err(MAP_STATS))?;
        for entry in &stats {
            let (key, per_cpu) = entry.map_err(map_err(MAP_STATS))?;
            for s in per_cpu.iter() {
                table.add(
                    key.pid, key.nr, s.calls, s.errors, s.total_ns, s.max_ns, &s.buckets,
                );
            }
        }
        let errnos: PerCpuHashMap<_, SysErrKey, u64> =
            PerCpuHashMap::try_from(map(&self.ebpf, MAP_ERRNOS)?).map_err(map_err(MAP_ERRNOS))?;
        for entry in &errnos {
            let (key, per_cpu) = entry.map_err(map_err(MAP_ERRNOS))?;
            table.add_errno(key.pid, key.nr, key.errno, per_cpu.iter().sum());
        }
        // An LRU hash reads like a hash from userspace.
        let comms: HashMap<_, u32, [u8; 16]> =
            HashMap::try_from(map(&self.ebpf, MAP_COMMS)?).map_err(map_err(MAP_COMMS))?;
        table.set_comms(|pid| process_name(&comms, pid));
        table.drops = super::drop_counters(&self.ebpf)?;
        Ok(table)
    }
}

/// The name the kernel recorded; `/proc` as a fallback; `?` if both are gone.
fn process_name(comms: &HashMap<&MapData, u32, [u8; 16]>, pid: u32) -> String {
    if let Ok(comm) = comms.get(&pid, 0) {
        return comm_string(&comm);
    }
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map_or_else(|_| "?".to_owned(), |c| c.trim().to_owned())
}

fn configure(ebpf: &mut Ebpf, config: &SyscallConfig) -> Result<(), ProbeError> {
    let mut cfg = SysConfig::default();
    if !config.pids.is_empty() {
        let mut pids: HashMap<_, u32, u8> =
            HashMap::try_from(map_mut(ebpf, MAP_TARGET_PIDS)?).map_err(map_err(MAP_TARGET_PIDS))?;
        for pid in &config.pids {
            pids.insert(pid, 1, 0).map_err(map_err(MAP_TARGET_PIDS))?;
        }
        cfg.filter_pids = 1;
        if config.pids.len() <= cfg.pids.len() {
            cfg.pids[..config.pids.len()].copy_from_slice(&config.pids);
            cfg.inline_pids = config.pids.len() as u32;
        }
    }
    if !config.syscalls.is_empty() {
        let mut nrs: Array<_, u8> =
            Array::try_from(map_mut(ebpf, MAP_TARGET_NRS)?).map_err(map_err(MAP_TARGET_NRS))?;
        for &nr in &config.syscalls {
            nrs.set(nr, 1, 0).map_err(map_err(MAP_TARGET_NRS))?;
        }
        cfg.filter_nrs = 1;
    }
    if let Some(comm) = &config.comm {
        let bytes = comm.as_bytes();
        let n = bytes.len().min(15);
        cfg.comm[..n].copy_from_slice(&bytes[..n]);
        cfg.filter_comm = 1;
    }
    let mut array: Array<_, SysConfig> =
        Array::try_from(map_mut(ebpf, MAP_CONFIG)?).map_err(map_err(MAP_CONFIG))?;
    array.set(0, cfg, 0).map_err(map_err(MAP_CONFIG))
}
