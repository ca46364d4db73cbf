//! Finding a process's allocator entry points: every executable file it
//! maps (the program itself, libc, a preloaded jemalloc...) that *defines*
//! `malloc` and friends, by file offset, so that the uprobes can be
//! attached by absolute path (aya's name matching rejects `libc.so.6`) and
//! only in that process.
//!
//! The obsolete `valloc` and `pvalloc` are not traced: every uprobe link
//! costs ~75 ms to attach and to remove, and they are rarely called.

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
};

use blazesym::{
    SymType,
    inspect::{
        Inspector,
        source::{Elf, Source},
    },
};

use super::placement;
use crate::probes::process_maps;

/// The allocator functions traced, and the BPF program each one's entry
/// runs. Order matters: when two names share an address (glibc's
/// `aligned_alloc` is `memalign`) the first one is attached, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AllocFn {
    Malloc,
    Calloc,
    Realloc,
    Free,
    PosixMemalign,
    AlignedAlloc,
    Memalign,
}

impl AllocFn {
    pub const ALL: [AllocFn; 7] = [
        AllocFn::Malloc,
        AllocFn::Calloc,
        AllocFn::Realloc,
        AllocFn::Free,
        AllocFn::PosixMemalign,
        AllocFn::AlignedAlloc,
        AllocFn::Memalign,
    ];

    #[must_use]
    pub const fn symbol(self) -> &'static str {
        match self {
            AllocFn::Malloc => "malloc",
            AllocFn::Calloc => "calloc",
            AllocFn::Realloc => "realloc",
            AllocFn::Free => "free",
            AllocFn::PosixMemalign => "posix_memalign",
            AllocFn::AlignedAlloc => "aligned_alloc",
            AllocFn::Memalign => "memalign",
        }
    }

    /// The uprobe program for the entry (see ebpf/probes/src/main.rs).
    #[must_use]
    pub const fn entry_program(self) -> &'static str {
        match self {
            AllocFn::Malloc => "mem_malloc",
            AllocFn::Calloc => "mem_calloc",
            AllocFn::Realloc => "mem_realloc",
            AllocFn::Free => "mem_free",
            AllocFn::PosixMemalign => "mem_posix_memalign",
            AllocFn::AlignedAlloc | AllocFn::Memalign => "mem_memalign",
        }
    }

    /// Whether the return is probed too (every function but `free`).
    #[must_use]
    pub const fn allocates(self) -> bool {
        !matches!(self, AllocFn::Free)
    }
}

/// The uretprobe program shared by every allocating function.
pub const RETURN_PROGRAM: &str = "mem_alloc_ret";

/// One function to probe in one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachPoint {
    pub pid: u32,
    pub function: AllocFn,
    /// The file as the process names it (for messages).
    pub module: String,
    /// The same file reached through `/proc/<pid>/root`, so that a process
    /// in another mount namespace (a container) gets its own file.
    pub target: PathBuf,
    /// File offset of the uprobe: the function's start plus `skip`.
    pub offset: u64,
    /// Bytes of flag-setting prologue before the probe (see `placement`):
    /// there the kernel emulates the instruction instead of single-stepping
    /// it, one trap instead of two.
    pub skip: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AllocatorError {
    #[error("pid {pid}: reading /proc/{pid}/maps: {source}")]
    Maps { pid: u32, source: std::io::Error },
    #[error(
        "pid {pid} ({comm}): no allocator to trace: none of its executable files defines malloc \
         (looked for {wanted} in: {searched}). A static binary stripped of its symbols cannot be \
         traced; one built with symbols, or a dynamically linked one, can"
    )]
    NotFound {
        pid: u32,
        comm: String,
        wanted: String,
        searched: String,
    },
}

/// Every allocator entry point of `pid`, grouped by file. Files that are
/// not ELF (or vanished) are skipped; a process with no `malloc` at all is
/// an error that names the pid and what was looked for.
pub fn find(pid: u32) -> Result<Vec<AttachPoint>, AllocatorError> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|source| AllocatorError::Maps { pid, source })?;
    let mut files: Vec<String> = Vec::new();
    for entry in process_maps::parse(&maps) {
        if entry.is_file() && !files.contains(&entry.path) {
            files.push(entry.path);
        }
    }
    let inspector = Inspector::new();
    let names: Vec<&str> = AllocFn::ALL.iter().map(|f| f.symbol()).collect();
    let mut points = Vec::new();
    for module in &files {
        let target = PathBuf::from(format!("/proc/{pid}/root{module}"));
        let mut elf = Elf::new(&target);
        elf.debug_syms = false;
        let Ok(found) = inspector.lookup(&Source::Elf(elf), &names) else {
            continue;
        };
        let offsets = found.iter().map(|syms| {
            syms.iter()
                .filter(|s| s.sym_type == SymType::Function)
                .find_map(|s| s.file_offset)
        });
        let mut seen = HashSet::new();
        for (function, offset) in AllocFn::ALL.into_iter().zip(offsets) {
            if let Some(offset) = offset.filter(|o| seen.insert(*o)) {
                let skip = placement::read_code(&target, offset)
                    .map_or(0, |code| placement::probe_offset(&code));
                points.push(AttachPoint {
                    pid,
                    function,
                    module: module.clone(),
                    target: target.clone(),
                    offset: offset + skip,
                    skip,
                });
            }
        }
    }
    if !points.iter().any(|p| p.function == AllocFn::Malloc) {
        return Err(AllocatorError::NotFound {
            pid,
            comm: comm(pid),
            wanted: names.join(", "),
            searched: if files.is_empty() {
                "no executable file mappings".to_owned()
            } else {
                files.join(", ")
            },
        });
    }
    Ok(points)
}

/// `path: malloc, free, ...` per file, for the start-up message.
#[must_use]
pub fn describe(points: &[AttachPoint]) -> Vec<String> {
    let mut by_module: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for p in points {
        let name = p.function.symbol();
        by_module
            .entry(&p.module)
            .or_default()
            .push(if p.skip == 0 {
                name.to_owned()
            } else {
                format!("{name}+{}", p.skip)
            });
    }
    by_module
        .into_iter()
        .map(|(module, fns)| format!("{module} ({})", fns.join(", ")))
        .collect()
}

/// The process name, or `?` once it is gone.
#[must_use]
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map_or_else(|_| "?".to_owned(), |c| c.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test process links libc: malloc, free and the rest are found in
    /// it by file offset, aliases attached once.
    #[test]
    fn finds_libc_allocator_of_this_process() {
        let points = find(std::process::id()).expect("libc allocator");
        let libc: Vec<&AttachPoint> = points
            .iter()
            .filter(|p| p.module.contains("libc.so"))
            .collect();
        for f in [
            AllocFn::Malloc,
            AllocFn::Free,
            AllocFn::Calloc,
            AllocFn::Realloc,
        ] {
            assert!(libc.iter().any(|p| p.function == f), "{f:?} in {points:?}");
        }
        let mut offsets: Vec<u64> = libc.iter().map(|p| p.offset).collect();
        offsets.sort_unstable();
        offsets.dedup();
        assert_eq!(offsets.len(), libc.len(), "an address attached twice");
        assert!(describe(&points).iter().any(|d| d.contains("malloc")));
    }

    /// A pid that does not exist is an error naming it.
    #[test]
    fn missing_process_is_an_error() {
        let err = find(u32::MAX - 7).expect_err("no such pid");
        assert!(err.to_string().contains(&format!("pid {}", u32::MAX - 7)));
    }

    /// Every allocating function has a return probe; free does not.
    #[test]
    fn programs_per_function() {
        assert!(!AllocFn::Free.allocates());
        assert!(AllocFn::ALL.iter().filter(|f| f.allocates()).count() == 6);
        assert_eq!(AllocFn::Memalign.entry_program(), "mem_memalign");
    }
}
