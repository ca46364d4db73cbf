//! Finding a shared library in running processes and attaching its
//! uprobes once per distinct file (dev, inode): a uprobe on a file fires
//! in every process that maps it, so processes started later are traced
//! with no rescan; rescans only look for new copies of the library
//! (containers, upgrades). Used for libpq and for OpenSSL's libssl.

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

use crate::probes::ProbeError;

/// Where distributions install shared libraries (`x86_64`).
const SYSTEM_LIB_DIRS: [&str; 5] = [
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
];

/// One library qprof probes: how to recognize it and attach to it.
#[derive(Debug)]
pub struct LibrarySpec {
    /// Programs to load before the first attach.
    pub programs: &'static [&'static str],
    /// Whether a mapped path is this library.
    pub matches: fn(&str) -> bool,
    /// Attaches the (loaded) programs to one file.
    pub attach: fn(&mut Ebpf, &Path) -> Result<(), ProbeError>,
}

/// Copies of one library attached so far, by (dev, inode).
#[derive(Debug)]
pub struct LibraryProbes {
    spec: &'static LibrarySpec,
    attached: HashSet<(u64, u64)>,
    /// Paths attached (for the summary).
    pub files: Vec<PathBuf>,
    loaded: bool,
    /// Files that could not be traced, since the last `take_warnings`.
    warnings: Vec<String>,
}

impl LibraryProbes {
    #[must_use]
    pub fn new(spec: &'static LibrarySpec) -> Self {
        Self {
            spec,
            attached: HashSet::new(),
            files: Vec::new(),
            loaded: false,
            warnings: Vec::new(),
        }
    }

    /// Loads the programs (once) so that files can be attached.
    fn load(&mut self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        if self.loaded {
            return Ok(());
        }
        for &program in self.spec.programs {
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

    /// Attaches to the system's own copy (in the usual library
    /// directories) even before any process maps it, so that processes
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
                if (self.spec.matches)(name) && path.is_file() {
                    new += self.attach_or_warn(ebpf, &path, &path);
                }
            }
        }
        Ok(new)
    }

    /// Attaches to every copy mapped by `pid` not attached yet. Returns how
    /// many files were newly attached.
    pub fn scan_pid(&mut self, ebpf: &mut Ebpf, pid: u32) -> Result<usize, ProbeError> {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return Ok(0);
        };
        let mut new = 0;
        for path in maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| (self.spec.matches)(p))
        {
            // Through the process's root, so container files resolve.
            let full = PathBuf::from(format!("/proc/{pid}/root{path}"));
            new += self.attach_or_warn(ebpf, &full, Path::new(path));
        }
        Ok(new)
    }

    /// Whether the file at `path` (as seen from `pid`) is attached.
    #[must_use]
    pub fn is_attached(&self, pid: u32, path: &str) -> bool {
        std::fs::metadata(format!("/proc/{pid}/root{path}"))
            .is_ok_and(|m| self.attached.contains(&(m.dev(), m.ino())))
    }

    /// Messages about files that could not be traced, since the last call
    /// (one per file: a file is tried once).
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// A library that cannot be probed (symbols missing, an unreadable
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
        (self.spec.attach)(ebpf, full)?;
        self.files.push(shown.to_path_buf());
        Ok(1)
    }
}

/// The loaded object's uprobe program `name`.
pub fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, ProbeError> {
    ebpf.program_mut(name)
        .ok_or(ProbeError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|source| ProbeError::Program { name, source })
}

/// Attaches `program` to `file` at a file offset (`None`: at `symbol`,
/// resolved by aya), for every process that maps the file.
pub fn attach_at(
    ebpf: &mut Ebpf,
    program: &'static str,
    file: &Path,
    offset: Option<u64>,
    symbol: &str,
) -> Result<(), ProbeError> {
    let location = offset.map_or(
        UProbeAttachLocation::Symbol(symbol),
        UProbeAttachLocation::AbsoluteOffset,
    );
    uprobe(ebpf, program)?
        .attach(location, file, UProbeScope::AllProcesses)
        .map_err(|source| ProbeError::Program {
            name: program,
            source,
        })?;
    Ok(())
}
