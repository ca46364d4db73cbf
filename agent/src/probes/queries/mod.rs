//! Query tracing: loads the libpq (and SQLite) probes, attaches them to the
//! libraries processes map, and reads text and completion events.
//!
//! [`QueryProbes`] attaches inside any loaded object (the CPU sampler's for
//! `--by-query`); [`QueryTracer`] is the query capability as a
//! [`Component`](super::component::Component), owning its object.

pub mod events;
pub mod libpq;
pub mod library;
pub mod libssl;
mod tracer;
pub mod unfollowed;

pub use self::tracer::{QueryCounters, QueryTracer, QueryWindow};

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, RingBuf},
    programs::TracePoint,
};
use qprof_common::{
    queries::{MAP_CONFIG, MAP_EVENTS, MAP_TARGET_PIDS, MAP_TEXTS_SEEN, QueryConfig},
    query_pq::{MAP_CONFIG as PQ_MAP_CONFIG, PqConfig},
};

use self::{
    events::{QueryEvent, decode},
    libpq::LIBPQ,
    library::LibraryProbes,
    libssl::LIBSSL,
};
use super::{
    ProbeError, map_mut, missing_map, query_sqlite::SqliteProbes, tracefs::TracepointFormat,
};

/// Syscall tracepoints that complete libpq queries: (program, event).
const PQ_TRACEPOINTS: [(&str, &str); 3] = [
    ("pq_sendto", "sys_enter_sendto"),
    ("pq_recvfrom_enter", "sys_enter_recvfrom"),
    ("pq_recvfrom_exit", "sys_exit_recvfrom"),
];

/// How often every process is rescanned for newly loaded libraries
/// (new processes are scanned at every poll).
const FULL_RESCAN: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Format(#[from] super::tracefs::FormatError),
}

/// What to trace.
#[derive(Debug, Clone, Default)]
pub struct QueryOptions {
    /// Only these processes (empty: every process).
    pub pids: Vec<u32>,
    /// Keep each text as captured, literals included, beside its
    /// fingerprint (`--raw-queries`); off by default.
    pub raw_queries: bool,
}

/// Warnings kept between two reads: enough to name every library of a
/// host that cannot be traced; further ones are only counted
/// (`failed_library_scans`).
const MAX_WARNINGS: usize = 64;

/// A running query trace inside a loaded object (its own, for `record
/// queries`, or the CPU sampler's, for `record cpu --by-query`). Programs
/// stay attached as long as that object lives.
pub struct QueryProbes {
    events: RingBuf<MapData>,
    pub pg: LibraryProbes,
    /// OpenSSL's libssl: the plaintext of TLS connections.
    pub ssl: LibraryProbes,
    pub sqlite: SqliteProbes,
    options: QueryOptions,
    scanned: HashSet<u32>,
    last_full_scan: Instant,
    /// Records of unknown kind or length, since the start.
    pub malformed: u64,
    /// Library files that could not be inspected or attached, and scans
    /// that failed, since the start.
    pub failed_scans: u64,
    /// Why, since the last `take_warnings` (at most `MAX_WARNINGS`).
    warnings: Vec<String>,
}

impl QueryProbes {
    /// Configures and attaches the query probes in `ebpf`.
    pub fn attach(ebpf: &mut Ebpf, options: &QueryOptions) -> Result<Self, QueryError> {
        configure(ebpf, options)?;
        for (program, event) in PQ_TRACEPOINTS {
            let tp: &mut TracePoint = ebpf
                .program_mut(program)
                .ok_or(ProbeError::Missing {
                    kind: "program",
                    name: program,
                })?
                .try_into()
                .map_err(|source| ProbeError::Program {
                    name: program,
                    source,
                })?;
            tp.load().map_err(|source| ProbeError::Program {
                name: program,
                source,
            })?;
            tp.attach("syscalls", event)
                .map_err(|source| ProbeError::Program {
                    name: program,
                    source,
                })?;
        }
        let map = ebpf
            .take_map(MAP_EVENTS)
            .ok_or_else(|| missing_map(MAP_EVENTS))?;
        let events = RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            name: MAP_EVENTS,
            source,
        })?;
        let sqlite = SqliteProbes::attach(ebpf, &options.pids)?;
        let mut probes = Self {
            events,
            pg: LibraryProbes::new(&LIBPQ),
            ssl: LibraryProbes::new(&LIBSSL),
            sqlite,
            options: options.clone(),
            scanned: HashSet::new(),
            last_full_scan: Instant::now(),
            malformed: 0,
            failed_scans: 0,
            warnings: Vec::new(),
        };
        if options.pids.is_empty() {
            probes.pg.scan_system(ebpf)?;
            probes.ssl.scan_system(ebpf)?;
        }
        probes.scan(ebpf, true)?;
        Ok(probes)
    }

    /// Looks for new libraries (see [`Self::scan`]); a scan that fails is
    /// counted and kept as a warning instead of stopping the trace.
    pub fn rescan(&mut self, ebpf: &mut Ebpf) {
        if let Err(err) = self.scan(ebpf, false) {
            self.failed_scans += 1;
            self.warn(format!("scanning processes for query libraries: {err}"));
        }
    }

    /// Why files could not be traced, since the last call.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    fn warn(&mut self, warning: String) {
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(warning);
        }
    }

    /// Removes `text_ids` from the kernel's "already sent" table, so that
    /// their texts are sent again at their next execution (they were
    /// evicted from the text table). An id the kernel's LRU already
    /// forgot is not an error.
    pub fn forget_texts(ebpf: &mut Ebpf, text_ids: &[u64]) -> Result<(), ProbeError> {
        if text_ids.is_empty() {
            return Ok(());
        }
        let mut seen: HashMap<_, u64, u8> = HashMap::try_from(map_mut(ebpf, MAP_TEXTS_SEEN)?)
            .map_err(|source| ProbeError::Map {
                name: MAP_TEXTS_SEEN,
                source,
            })?;
        for id in text_ids {
            // ENOENT: the kernel's LRU forgot it already; nothing to do.
            let _ = seen.remove(id);
        }
        Ok(())
    }

    /// Looks for libraries in processes not seen before (and in all of them
    /// every `FULL_RESCAN`). Returns the pids scanned for the first time.
    pub fn scan(&mut self, ebpf: &mut Ebpf, force_all: bool) -> Result<Vec<u32>, ProbeError> {
        let all = force_all || self.last_full_scan.elapsed() >= FULL_RESCAN;
        if all {
            self.last_full_scan = Instant::now();
        }
        let pids: Vec<u32> = if self.options.pids.is_empty() {
            live_pids()
        } else {
            self.options.pids.clone()
        };
        if all {
            // Forget processes that are gone, so the set stays the size of
            // the live process table over a long capture.
            let live: HashSet<u32> = pids.iter().copied().collect();
            self.scanned.retain(|pid| live.contains(pid));
        }
        let mut fresh = Vec::new();
        for pid in pids {
            let new = self.scanned.insert(pid);
            if new || all {
                self.pg.scan_pid(ebpf, pid)?;
                self.ssl.scan_pid(ebpf, pid)?;
                self.sqlite.rescan(ebpf, pid)?;
                if new {
                    fresh.push(pid);
                }
            }
        }
        let (pg, ssl, sqlite) = (
            self.pg.take_warnings(),
            self.ssl.take_warnings(),
            self.sqlite.take_warnings(),
        );
        self.failed_scans += (pg.len() + ssl.len() + sqlite.len()) as u64;
        for warning in pg.into_iter().chain(ssl).chain(sqlite) {
            self.warn(warning);
        }
        Ok(fresh)
    }

    /// Drains the event ring, handing each event to `sink`; unreadable
    /// records are counted (`malformed`).
    pub fn poll(&mut self, mut sink: impl FnMut(QueryEvent)) -> usize {
        let mut n = 0;
        while let Some(record) = self.events.next() {
            match decode(&record) {
                Some(ev) => sink(ev),
                None => self.malformed += 1,
            }
            n += 1;
        }
        n
    }
}

fn configure(ebpf: &mut Ebpf, options: &QueryOptions) -> Result<(), QueryError> {
    let config = QueryConfig {
        filter_pids: u32::from(!options.pids.is_empty()),
        pad: 0,
    };
    let map = map_mut(ebpf, MAP_CONFIG)?;
    let mut array: Array<_, QueryConfig> =
        Array::try_from(map).map_err(|source| ProbeError::Map {
            name: MAP_CONFIG,
            source,
        })?;
    array.set(0, config, 0).map_err(|source| ProbeError::Map {
        name: MAP_CONFIG,
        source,
    })?;
    if !options.pids.is_empty() {
        let map = map_mut(ebpf, MAP_TARGET_PIDS)?;
        let mut targets: HashMap<_, u32, u8> =
            HashMap::try_from(map).map_err(|source| ProbeError::Map {
                name: MAP_TARGET_PIDS,
                source,
            })?;
        for pid in &options.pids {
            targets
                .insert(pid, 1, 0)
                .map_err(|source| ProbeError::Map {
                    name: MAP_TARGET_PIDS,
                    source,
                })?;
        }
    }
    let sendto = TracepointFormat::load("syscalls", "sys_enter_sendto")?;
    let recv = TracepointFormat::load("syscalls", "sys_enter_recvfrom")?;
    let recv_exit = TracepointFormat::load("syscalls", "sys_exit_recvfrom")?;
    let pq = PqConfig {
        off_sendto_fd: sendto.field("fd")?.offset,
        off_recvfrom_fd: recv.field("fd")?.offset,
        off_recvfrom_buf: recv.field("ubuf")?.offset,
        off_exit_ret: recv_exit.field("ret")?.offset,
    };
    let map = map_mut(ebpf, PQ_MAP_CONFIG)?;
    let mut array: Array<_, PqConfig> = Array::try_from(map).map_err(|source| ProbeError::Map {
        name: PQ_MAP_CONFIG,
        source,
    })?;
    array.set(0, pq, 0).map_err(|source| ProbeError::Map {
        name: PQ_MAP_CONFIG,
        source,
    })?;
    Ok(())
}

/// Pids of every live process.
fn live_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
