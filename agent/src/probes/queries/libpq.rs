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
    programs::{UProbe, uprobe::UProbeScope},
};

use crate::probes::ProbeError;

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
const SYSTEM_LIB_DIRS: [&str; 5] =
    ["/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib"];

/// Whether a mapped path is a libpq shared object.
#[must_use]
pub fn is_libpq(path: &str) -> bool {
    Path::new(path).file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libpq.so"))
}

/// Libraries attached so far, by (dev, inode).
#[derive(Debug, Default)]
pub struct PgProbes {
    attached: HashSet<(u64, u64)>,
    /// Paths attached (for the summary).
    pub files: Vec<PathBuf>,
    loaded: bool,
}

impl PgProbes {
    /// Loads the four programs (once) so that files can be attached.
    fn load(&mut self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        if self.loaded {
            return Ok(());
        }
        for (program, _) in PROBES {
            uprobe(ebpf, program)?.load().map_err(|source| ProbeError::Program { name: program, source })?;
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
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
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
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else { return Ok(0) };
        let mut new = 0;
        for path in maps.lines().filter_map(|l| l.split_whitespace().nth(5)).filter(|p| is_libpq(p)) {
            // Through the process's root, so container files resolve.
            let full = PathBuf::from(format!("/proc/{pid}/root{path}"));
            new += self.attach_or_warn(ebpf, &full, Path::new(path));
        }
        Ok(new)
    }

    /// A library that cannot be probed (no `PQsend*` symbols, an unreadable
    /// file) is reported once and skipped: the rest of the host still is.
    fn attach_or_warn(&mut self, ebpf: &mut Ebpf, full: &Path, shown: &Path) -> usize {
        match self.attach_file(ebpf, full, shown) {
            Ok(n) => n,
            Err(err) => {
                eprintln!("qprof: cannot trace queries through {}: {err}", shown.display());
                0
            }
        }
    }

    /// Attaches the probes to `full` unless its (dev, inode) already is.
    fn attach_file(&mut self, ebpf: &mut Ebpf, full: &Path, shown: &Path) -> Result<usize, ProbeError> {
        let Ok(meta) = std::fs::metadata(full) else { return Ok(0) };
        if !self.attached.insert((meta.dev(), meta.ino())) {
            return Ok(0);
        }
        self.load(ebpf)?;
        for (program, function) in PROBES {
            uprobe(ebpf, program)?
                .attach(function, full, UProbeScope::AllProcesses)
                .map_err(|source| ProbeError::Program { name: program, source })?;
        }
        self.files.push(shown.to_path_buf());
        Ok(1)
    }
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, ProbeError> {
    ebpf.program_mut(name)
        .ok_or(ProbeError::Missing { kind: "program", name })?
        .try_into()
        .map_err(|source| ProbeError::Program { name, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Versioned sonames count; other libraries do not.
    #[test]
    fn recognizes_libpq() {
        assert!(is_libpq("/usr/lib/x86_64-linux-gnu/libpq.so.5.15"));
        assert!(is_libpq("/opt/pg/lib/libpq.so"));
        assert!(!is_libpq("/usr/lib/libpqwalreceiver.so"));
        assert!(!is_libpq("/usr/lib/x86_64-linux-gnu/libc.so.6"));
    }
}
