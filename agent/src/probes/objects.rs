//! Loading the embedded BPF object for one capability.
//!
//! The object holds every capability's maps, and loading it creates all
//! of them: 184 MiB of locked kernel memory on a 2-CPU machine (per-CPU
//! maps grow with the CPU count), so an agent whose four always-on
//! capabilities each loaded the whole object held 713 MiB. Each
//! capability keeps its own object (a deeper capture of the same kind
//! beside a continuous one must not share its maps, and their windows are
//! reset independently), but creates only its own maps at full size:
//! every map of *another* capability is created with the smallest size
//! its type allows. Maps that belong to no capability (drop counters,
//! process discovery) are kept whole.

use aya::{Ebpf, EbpfLoader};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

use super::{PROBES_OBJECT, ProbeError, component::CaptureKind};

/// Name prefixes of each capability's maps. A map whose name starts with
/// one of these and is not kept by the capability being loaded is shrunk.
const CAPABILITY_PREFIXES: [&str; 8] = [
    "CPU_", "OFFCPU_", "MEM_", "SYS_", "TCP_", "PQ_", "QUERY_", "SQLITE_",
];

/// Maps the query probes use (also by `--by-query` CPU and off-CPU
/// captures, which read `QUERY_ACTIVE`).
const QUERY_MAPS: [&str; 3] = ["PQ_", "QUERY_", "SQLITE_"];

/// The stack-trace map, filled by every stack-walking program.
const STACKS: &str = "CPU_STACK_TRACES";

/// Smallest ring buffer: one page (a ring buffer's size must be a
/// power-of-two multiple of the page size).
const MIN_RING_BYTES: u32 = 4096;

/// Which maps `kind` keeps at full size.
fn kept(kind: CaptureKind, with_queries: bool) -> Vec<&'static str> {
    let mut kept: Vec<&'static str> = match kind {
        CaptureKind::Cpu => vec!["CPU_"],
        CaptureKind::Offcpu => vec!["OFFCPU_", STACKS],
        CaptureKind::Memory => vec!["MEM_", STACKS],
        CaptureKind::Queries => QUERY_MAPS.to_vec(),
        CaptureKind::Syscalls => vec!["SYS_"],
        CaptureKind::Tcp => vec!["TCP_"],
    };
    if with_queries {
        kept.extend(QUERY_MAPS);
        // `QueryLabels::attach` turns labelling on in the CPU sampler's
        // config, whichever capability it attaches into.
        kept.push("CPU_CONFIG");
    }
    kept
}

/// Maps of the object (name, is a ring buffer), from its ELF symbols in
/// the `maps` section. Read from the object itself, so a map added later
/// is covered without a list to keep in step.
fn object_maps() -> Vec<(&'static str, bool)> {
    let Ok(file) = object::File::parse(PROBES_OBJECT) else {
        return Vec::new();
    };
    file.symbols()
        .filter_map(|sym| {
            let section = file.section_by_index(sym.section_index()?).ok()?;
            if section.name().ok()? != "maps" {
                return None;
            }
            sym.name().ok()
        })
        .map(|name| {
            // Ring buffers are the two byte-sized maps of the object.
            let ring = name == "QUERY_EVENTS" || name == "NEW_PIDS";
            (name, ring)
        })
        .collect()
}

/// The maps `kind` shrinks, with the size each is created with.
#[must_use]
pub fn shrunk_maps(kind: CaptureKind, with_queries: bool) -> Vec<(&'static str, u32)> {
    let kept = kept(kind, with_queries);
    object_maps()
        .into_iter()
        .filter(|(name, _)| {
            CAPABILITY_PREFIXES.iter().any(|p| name.starts_with(p))
                && !kept.iter().any(|k| name.starts_with(k))
        })
        .map(|(name, ring)| (name, if ring { MIN_RING_BYTES } else { 1 }))
        .collect()
}

/// A loader that creates only `kind`'s maps (and the query maps when
/// `with_queries`) at full size; a capability may shrink more of its own.
#[must_use]
pub fn loader_for(kind: CaptureKind, with_queries: bool) -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    for (name, size) in shrunk_maps(kind, with_queries) {
        loader.map_max_entries(name, size);
    }
    loader
}

/// Loads the object for `kind` (see [`loader_for`]).
pub fn load_for(kind: CaptureKind, with_queries: bool) -> Result<Ebpf, ProbeError> {
    Ok(loader_for(kind, with_queries).load(PROBES_OBJECT)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The object's maps are found, each capability keeps its own and the shared ones, and shrinks the others'.
    #[test]
    fn each_capability_shrinks_only_other_capabilities_maps() {
        let all: Vec<&str> = object_maps().into_iter().map(|(n, _)| n).collect();
        assert!(
            all.contains(&"SYS_STATS") && all.contains(&"DROP_COUNTERS"),
            "{all:?}"
        );
        let names =
            |kind, q| -> Vec<&str> { shrunk_maps(kind, q).into_iter().map(|(n, _)| n).collect() };
        let sys = names(CaptureKind::Syscalls, false);
        assert!(
            sys.contains(&"CPU_STACK_TRACES") && sys.contains(&"TCP_SOCKS"),
            "{sys:?}"
        );
        assert!(!sys.iter().any(|n| n.starts_with("SYS_")), "{sys:?}");
        for shared in ["DROP_COUNTERS", "KNOWN_PIDS", "NEW_PIDS"] {
            assert!(!sys.contains(&shared), "{sys:?}");
        }
        let mem = names(CaptureKind::Memory, false);
        assert!(
            !mem.iter()
                .any(|n| *n == "CPU_STACK_TRACES" || n.starts_with("MEM_")),
            "{mem:?}"
        );
        assert!(mem.contains(&"CPU_STACK_COUNTS"), "{mem:?}");
        let cpu_q = names(CaptureKind::Cpu, true);
        assert!(
            !cpu_q
                .iter()
                .any(|n| *n == "QUERY_ACTIVE" || n.starts_with("PQ_")),
            "{cpu_q:?}"
        );
        let ring = shrunk_maps(CaptureKind::Tcp, false);
        assert!(ring.contains(&("QUERY_EVENTS", MIN_RING_BYTES)), "{ring:?}");
    }
}
