//! Loading, attaching and draining the BPF programs, one module per
//! capability, plus the pre-flight checks and process discovery they share.

pub mod cpu;
pub mod discovery;
pub mod preflight;
pub mod process_maps;
pub mod syscalls;
pub mod tcp;
pub mod tracefs;
pub mod unwind;

use aya::Ebpf;

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
    #[error("listing online CPUs: {0}")]
    OnlineCpus(std::io::Error),
}

/// Loads the embedded object. Programs are loaded and attached by each
/// capability's module.
pub fn load_object() -> Result<Ebpf, ProbeError> {
    Ok(Ebpf::load(PROBES_OBJECT)?)
}
