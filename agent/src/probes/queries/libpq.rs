//! Finding libpq in running processes and attaching its uprobes once per
//! distinct file (dev, inode): a uprobe on a file fires in every process
//! that maps it, so processes started later are traced with no rescan;
//! rescans only look for new copies of the library (containers, upgrades).

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};
use blazesym::{
    SymType,
    inspect::{
        Inspector,
        source::{Elf, Source},
    },
};

use crate::probes::{ProbeError, memory::placement};

/// (program, libpq function). The `PQexec*`/`PQprepare` entry points call
/// these, so four probes cover synchronous and asynchronous use with one
/// trap per query.
pub const PROBES: [(&str, &str); 4] = [
    ("pq_send_query", "PQsendQuery"),
    ("pq_send_query_params", "PQsendQueryParams"),
    ("pq_send_prepare", "PQsendPrepare"),
    ("pq_send_query_prepared", "PQsendQueryPrepared"),
];

/// Where distributions install shared libraries (`x86_64`).
const SYSTEM_LIB_DIRS: [&str; 5] = [
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
];

/// Whether a mapped path is a libpq shared object.
#[must_use]
pub fn is_libpq(path: &str) -> bool {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("libpq.so"))
}

/// Libraries attached so far, by (dev, inode).
#[derive(Debug, Default)]
pub struct PgProbes {
    attached: HashSet<(u64, u64)>,
    /// Paths attached (for the summary).
    pub files: Vec<PathBuf>,
    loaded: bool,
    /// Files that could not be traced, since the last `take_warnings`.
    warnings: Vec<String>,
}

impl PgProbes {
    /// Loads the four programs (once) so that files can be attached.
    fn load(&mut self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        if self.loaded {
            return Ok(());
        }
        for (program, _) in PROBES {
            uprobe(ebpf, program)?
                .load()
                .map_err(|source| ProbeError::Program {
                    name: program,
                    source,
                })?;
        }
        self.loaded = true;
        Ok(())
    }

    /// Attaches to the system's own libpq (in the usual library
    /// directories) even before any process maps it, so that clients
    /// started later are traced from their first query.
    pub fn scan_system(&mut self, ebpf: &mut Ebpf) -> Result<usize, ProbeError> {
        let mut new = 0;
        for dir in SYSTEM_LIB_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                let Some(name) = path.to_str() else { continue };
                if is_libpq(name) && path.is_file() {
                    new += self.attach_or_warn(ebpf, &path, &path);
                }
            }
        }
        Ok(new)
    }

    /// Attaches to every libpq mapped by `pid` not attached yet. Returns how
    /// many files were newly attached.
    pub fn scan_pid(&mut self, ebpf: &mut Ebpf, pid: u32) -> Result<usize, ProbeError> {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return Ok(0);
        };
        let mut new = 0;
        for path in maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| is_libpq(p))
        {
            // Through the process's root, so container files resolve.
            let full = PathBuf::from(format!("/proc/{pid}/root{path}"));
            new += self.attach_or_warn(ebpf, &full, Path::new(path));
        }
        Ok(new)
    }

    /// Messages about files that could not be traced, since the last call
    /// (one per file: a file is tried once).
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// A library that cannot be probed (no `PQsend*` symbols, an unreadable
    /// file) is reported once and skipped: the rest of the host still is.
    fn attach_or_warn(&mut self, ebpf: &mut Ebpf, full: &Path, shown: &Path) -> usize {
        match self.attach_file(ebpf, full, shown) {
            Ok(n) => n,
            Err(err) => {
                self.warnings.push(format!(
                    "cannot trace queries through {}: {err}",
                    shown.display()
                ));
                0
            }
        }
    }

    /// Attaches the probes to `full` unless its (dev, inode) already is.
    fn attach_file(
        &mut self,
        ebpf: &mut Ebpf,
        full: &Path,
        shown: &Path,
    ) -> Result<usize, ProbeError> {
        let Ok(meta) = std::fs::metadata(full) else {
            return Ok(0);
        };
        if !self.attached.insert((meta.dev(), meta.ino())) {
            return Ok(0);
        }
        self.load(ebpf)?;
        let offsets = symbol_offsets(full);
        for ((program, function), offset) in PROBES.into_iter().zip(offsets) {
            // The probe goes on an instruction the kernel emulates (one trap
            // per hit) rather than one it must single-step (two).
            let location = match offset {
                Some(at) => UProbeAttachLocation::AbsoluteOffset(at + probe_skip(full, at)),
                None => UProbeAttachLocation::Symbol(function),
            };
            uprobe(ebpf, program)?
                .attach(location, full, UProbeScope::AllProcesses)
                .map_err(|source| ProbeError::Program {
                    name: program,
                    source,
                })?;
        }
        self.files.push(shown.to_path_buf());
        Ok(1)
    }
}

/// File offsets of the `PROBES` functions in `file` (None when not found:
/// aya then resolves the name itself and reports what is missing).
fn symbol_offsets(file: &Path) -> Vec<Option<u64>> {
    let names: Vec<&str> = PROBES.iter().map(|(_, f)| *f).collect();
    let mut elf = Elf::new(file);
    elf.debug_syms = false;
    match Inspector::new().lookup(&Source::Elf(elf), &names) {
        Ok(found) => found
            .iter()
            .map(|syms| {
                syms.iter()
                    .filter(|s| s.sym_type == SymType::Function)
                    .find_map(|s| s.file_offset)
            })
            .collect(),
        Err(_) => vec![None; PROBES.len()],
    }
}

/// Bytes to skip at `offset` to land on an emulated instruction. On top of
/// the allocator probes' rules, a leading `mov $imm32, %edx` is skipped:
/// it only sets the third argument, which none of these probes reads
/// (`PQsendQuery` is `mov $1, %edx; jmp PQsendQueryInternal` in libpq 15).
fn probe_skip(file: &Path, offset: u64) -> u64 {
    let Some(code) = placement::read_code(file, offset) else {
        return 0;
    };
    if let [0xba, _, _, _, _, rest @ ..] = code.as_slice()
        && is_jump(rest)
    {
        return 5;
    }
    placement::probe_offset(&code)
}

/// `jmp rel32`/`jmp rel8`: emulated, and a tail call leaves the argument
/// registers as the caller set them.
fn is_jump(code: &[u8]) -> bool {
    matches!(code.first(), Some(0xe9 | 0xeb))
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, ProbeError> {
    ebpf.program_mut(name)
        .ok_or(ProbeError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|source| ProbeError::Program { name, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `PQsendQuery`'s `mov $1,%edx; jmp` is probed on the jump.
    #[test]
    fn skips_the_argument_move_before_a_tail_call() {
        let dir = std::env::temp_dir().join(format!("qprof-pq-skip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("code");
        std::fs::write(&file, [0xba, 1, 0, 0, 0, 0xe9, 0xa6, 0xeb, 0xff, 0xff]).expect("write");
        assert_eq!(probe_skip(&file, 0), 5);
        std::fs::write(&file, [0x55, 0x48, 0x89, 0xe5]).expect("write");
        assert_eq!(probe_skip(&file, 0), 0);
        std::fs::write(&file, [0xba, 1, 0, 0, 0, 0x48, 0x89, 0xe5]).expect("write");
        assert_eq!(probe_skip(&file, 0), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Versioned sonames count; other libraries do not.
    #[test]
    fn recognizes_libpq() {
        assert!(is_libpq("/usr/lib/x86_64-linux-gnu/libpq.so.5.15"));
        assert!(is_libpq("/opt/pg/lib/libpq.so"));
        assert!(!is_libpq("/usr/lib/libpqwalreceiver.so"));
        assert!(!is_libpq("/usr/lib/x86_64-linux-gnu/libc.so.6"));
    }
}
