//! Loading, attaching and draining the BPF programs, one module per
//! capability, plus the pre-flight checks and process discovery they share.

pub mod component;
pub mod counters;
pub mod cpu;
pub mod cpu_queries;
pub mod discovery;
pub mod memory;
pub mod objects;
pub mod offcpu;
pub mod preflight;
pub mod process_maps;
pub mod queries;
pub mod query_sqlite;
pub mod stack_window;
pub mod syscalls;
pub mod tcp;
pub mod tracefs;
pub mod unwind;

use aya::{Ebpf, maps::PerCpuArray};
use qprof_common::counters::{Counter, MAP_DROP_COUNTERS};

/// The BPF object built from `ebpf/probes` by build.rs, embedded so that the
/// agent is one self-contained binary.
static PROBES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/qprof-probes"));

/// What can go wrong while loading, attaching or reading probes.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("loading the BPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    /// Keeps aya's `ProgramError`, whose `LoadError` carries the verifier log.
    #[error("BPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("BPF object has no {kind} named {name} (agent and probes out of sync?)")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("tracepoint format: {0}")]
    Tracefs(String),
    #[error("listing online CPUs: {0}")]
    OnlineCpus(std::io::Error),
}

/// Loads the embedded object with every map at full size (tests and
/// tools; capabilities load theirs through [`objects::load_for`]).
pub fn load_object() -> Result<Ebpf, ProbeError> {
    Ok(Ebpf::load(PROBES_OBJECT)?)
}

/// A map error, naming the map.
pub(crate) fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

/// A program error, naming the program.
pub(crate) fn prog_err(name: &'static str) -> impl Fn(aya::programs::ProgramError) -> ProbeError {
    move |source| ProbeError::Program { name, source }
}

/// The object has no map `name`: agent and probes were built apart.
pub(crate) fn missing_map(name: &'static str) -> ProbeError {
    ProbeError::Missing { kind: "map", name }
}

pub(crate) fn map<'a>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<&'a aya::maps::Map, ProbeError> {
    ebpf.map(name).ok_or_else(|| missing_map(name))
}

pub(crate) fn map_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::maps::Map, ProbeError> {
    ebpf.map_mut(name).ok_or_else(|| missing_map(name))
}

/// Non-zero loss counters, by name. The array is shared by every
/// capability; a capture reports what its own programs counted.
pub fn drop_counters(ebpf: &Ebpf) -> Result<Vec<(&'static str, u64)>, ProbeError> {
    let name = MAP_DROP_COUNTERS;
    let counters: PerCpuArray<_, u64> =
        PerCpuArray::try_from(map(ebpf, name)?).map_err(map_err(name))?;
    let mut out = Vec::new();
    for counter in Counter::ALL {
        let values = counters.get(&(counter as u32), 0).map_err(map_err(name))?;
        let sum: u64 = values.iter().sum();
        if sum > 0 {
            out.push((counter.name(), sum));
        }
    }
    Ok(out)
}
