//! SQLite query tracing, attach side: finds every file that carries the
//! SQLite API (`libsqlite3.so*`, or a program or library with
//! `sqlite3_step` in its symbol table) in the processes traced, and
//! attaches the SQLite uprobes to it once per distinct file (dev, inode).
//!
//! A uprobe on a file fires in every process that maps it, now or later,
//! so a process started after qprof that uses an attached library is
//! traced with no rescan; rescans only look for new files (another copy of
//! the library, a container's, a program with SQLite compiled in). Pids
//! are filtered in the kernel (`wanted`), so `--pid` only limits which
//! processes' files are looked at.
//!
//! Traps per traced execution are described in `ebpf/probes/src/query_sqlite.rs`.

pub mod library;

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use qprof_common::query_sqlite::{
    MAP_STATS, PROG_EXEC, PROG_EXEC_RET, PROG_FINALIZE, PROG_PREPARE, PROG_PREPARE_RET,
    PROG_PREPARE_V3, PROG_RESET, PROG_STEP, PROG_STEP_RET, SqliteStat,
};

use self::library::{Inspection, SqliteLibrary, inspect, is_libsqlite};
use super::{ProbeError, process_maps};

/// Every SQLite program, loaded together on first use.
const PROGRAMS: [&str; 9] = [
    PROG_PREPARE,
    PROG_PREPARE_V3,
    PROG_PREPARE_RET,
    PROG_STEP,
    PROG_STEP_RET,
    PROG_RESET,
    PROG_FINALIZE,
    PROG_EXEC,
    PROG_EXEC_RET,
];

/// Where a host-wide trace also looks for libsqlite3 before any process
/// maps it, so that the first process to load it (Python imports its
/// sqlite3 module lazily) is traced from its first query.
const LIBRARY_DIRS: [&str; 6] = [
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/lib64",
];

/// Distinct files remembered as inspected. Past it the memory of files
/// that were not SQLite is dropped (they are inspected again if seen).
const MAX_INSPECTED: usize = 65_536;

/// One file the probes are attached to.
#[derive(Debug, Clone)]
pub struct AttachedFile {
    /// The path as the process it was found in names it.
    pub path: String,
    /// The process it was found through (0: found in a library directory).
    pub pid: u32,
    pub library: SqliteLibrary,
}

/// What the SQLite probes did (sums over CPUs), see `SqliteStat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SqliteStats {
    pub executions: u64,
    pub execs: u64,
    pub prepared: u64,
    pub prepare_errors: u64,
    pub finalized: u64,
    pub nested: u64,
    pub recovered: u64,
}

/// The SQLite attachments of one capture. The links belong to the programs
/// in the `Ebpf` object, so dropping that object detaches everything.
#[derive(Debug, Default)]
pub struct SqliteProbes {
    loaded: bool,
    /// Files already looked at, by (dev, inode), SQLite or not.
    inspected: HashSet<(u64, u64)>,
    /// The subset of `inspected` that is attached.
    attached_ids: HashSet<(u64, u64)>,
    files: Vec<AttachedFile>,
    warnings: Vec<String>,
}

impl SqliteProbes {
    /// Attaches to the SQLite of every process in `pids` (every process
    /// when empty, plus the system libsqlite3 if no process maps it yet).
    /// Files that cannot be traced become warnings (`take_warnings`);
    /// errors are for programs that do not load.
    pub fn attach(ebpf: &mut Ebpf, pids: &[u32]) -> Result<Self, ProbeError> {
        let mut probes = Self::default();
        if pids.is_empty() {
            for pid in live_pids() {
                probes.rescan(ebpf, pid)?;
            }
            probes.scan_system(ebpf)?;
        } else {
            for &pid in pids {
                probes.rescan(ebpf, pid)?;
            }
        }
        Ok(probes)
    }

    /// Attaches to files of `pid` not seen before (call when a process
    /// execs, and now and then for libraries loaded later). Returns how
    /// many files were newly attached; a process gone is not an error.
    pub fn rescan(&mut self, ebpf: &mut Ebpf, pid: u32) -> Result<usize, ProbeError> {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return Ok(0);
        };
        let mut paths: Vec<String> = Vec::new();
        for entry in process_maps::parse(&maps) {
            if entry.is_file() && !paths.contains(&entry.path) {
                paths.push(entry.path);
            }
        }
        let mut new = 0;
        for path in paths {
            // Through the process's root, so that container files resolve.
            let target = PathBuf::from(format!("/proc/{pid}/root{path}"));
            if self.consider(ebpf, &path, &target, pid)? {
                new += 1;
            }
        }
        Ok(new)
    }

    /// Files attached so far.
    #[must_use]
    pub fn files(&self) -> &[AttachedFile] {
        &self.files
    }

    /// Messages about files that could not be traced, since the last call.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// What the probes did so far.
    pub fn stats(ebpf: &Ebpf) -> Result<SqliteStats, ProbeError> {
        let name = MAP_STATS;
        let map = ebpf
            .map(name)
            .ok_or(ProbeError::Missing { kind: "map", name })?;
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
        let get = |stat: SqliteStat| -> Result<u64, ProbeError> {
            let values = array
                .get(&(stat as u32), 0)
                .map_err(|source| ProbeError::Map { name, source })?;
            Ok(values.iter().sum())
        };
        Ok(SqliteStats {
            executions: get(SqliteStat::Executions)?,
            execs: get(SqliteStat::Execs)?,
            prepared: get(SqliteStat::Prepared)?,
            prepare_errors: get(SqliteStat::PrepareErrors)?,
            finalized: get(SqliteStat::Finalized)?,
            nested: get(SqliteStat::Nested)?,
            recovered: get(SqliteStat::Recovered)?,
        })
    }

    /// Attaches to the libsqlite3 files in the usual library directories,
    /// mapped or not (host-wide traces): the first process to load one
    /// later is then traced from its first statement, with no rescan.
    pub fn scan_system(&mut self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        for dir in LIBRARY_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                let Some(name) = path.to_str().map(str::to_owned) else {
                    continue;
                };
                if is_libsqlite(&name) {
                    self.consider(ebpf, &name, &path, 0)?;
                }
            }
        }
        Ok(())
    }

    /// Inspects a file once (by dev, inode) and attaches if it is SQLite.
    /// Returns whether it was newly attached.
    fn consider(
        &mut self,
        ebpf: &mut Ebpf,
        path: &str,
        target: &Path,
        pid: u32,
    ) -> Result<bool, ProbeError> {
        let Ok(meta) = std::fs::metadata(target) else {
            return Ok(false);
        };
        if !meta.is_file() {
            return Ok(false);
        }
        let id = (meta.dev(), meta.ino());
        if self.inspected.contains(&id) {
            return Ok(false);
        }
        if self.inspected.len() >= MAX_INSPECTED {
            self.inspected.clone_from(&self.attached_ids);
        }
        self.inspected.insert(id);
        let library = match inspect(target, is_libsqlite(path)) {
            Inspection::NotSqlite => return Ok(false),
            Inspection::NoSymbols => {
                self.warnings.push(format!(
                    "{path} (pid {pid}): no sqlite3_step in its symbol tables (stripped?): \
                     its SQLite queries cannot be traced"
                ));
                return Ok(false);
            }
            Inspection::Sqlite(library) => library,
        };
        self.load(ebpf)?;
        match attach_file(ebpf, target, &library) {
            Ok(()) => {
                self.attached_ids.insert(id);
                self.files.push(AttachedFile {
                    path: path.to_owned(),
                    pid,
                    library,
                });
                Ok(true)
            }
            Err(err) => {
                self.warnings.push(format!(
                    "{path} (pid {pid}): attaching the SQLite probes: {err}"
                ));
                Ok(false)
            }
        }
    }

    fn load(&mut self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        if self.loaded {
            return Ok(());
        }
        for name in PROGRAMS {
            uprobe(ebpf, name)?
                .load()
                .map_err(|source| ProbeError::Program { name, source })?;
        }
        self.loaded = true;
        Ok(())
    }
}

/// Attaches every program to its function in `target`; on a failure the
/// file's links made so far are detached, so that no entry probe runs
/// without its return probe.
fn attach_file(ebpf: &mut Ebpf, target: &Path, library: &SqliteLibrary) -> Result<(), ProbeError> {
    let mut links: Vec<(&'static str, UProbeLinkId)> = Vec::new();
    let mut done: Vec<(&'static str, u64)> = Vec::new();
    let result = (|| {
        for &(function, offset) in &library.functions {
            for &name in function.programs() {
                // Aliases (two names, one address) get one probe.
                if done.contains(&(name, offset)) {
                    continue;
                }
                let cookie = if name == PROG_STEP {
                    library.sql_field_offset
                } else {
                    None
                };
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(offset),
                    cookie,
                };
                let link = uprobe(ebpf, name)?
                    .attach(point, target, UProbeScope::AllProcesses)
                    .map_err(|source| ProbeError::Program { name, source })?;
                links.push((name, link));
                done.push((name, offset));
            }
        }
        Ok(())
    })();
    if result.is_err() {
        for (name, link) in links {
            if let Ok(program) = uprobe(ebpf, name) {
                let _ = program.detach(link);
            }
        }
    }
    result
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

/// Pids of every live process.
fn live_pids() -> Vec<u32> {
    std::fs::read_dir("/proc").map_or_else(
        |_| Vec::new(),
        |dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::{library::SqliteFn, *};

    /// Every traced function maps to programs that exist in the list the
    /// loader loads, entry first.
    #[test]
    fn every_function_has_loaded_programs() {
        for f in SqliteFn::ALL {
            let programs = f.programs();
            assert!(!programs.is_empty());
            for p in programs {
                assert!(PROGRAMS.contains(p), "{p}");
            }
            assert!(!programs[0].ends_with("_ret"), "{f:?}");
        }
    }

    /// The kernel keeps 15 characters of a program name; trap counting by
    /// name (`bpftool prog`) needs them distinct.
    #[test]
    fn program_names_fit_the_kernel() {
        for p in PROGRAMS {
            assert!(p.len() <= 15, "{p}");
        }
    }
}
