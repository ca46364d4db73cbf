//! The query capability as a [`Component`]: it owns its BPF object, drains
//! the event ring into the current window at every poll, and hands the
//! window over at each snapshot. The text table outlives windows (the
//! kernel sends each text once), so a statement first seen an hour ago is
//! still named in this window.

use std::collections::HashMap;

use aya::Ebpf;
use qprof_common::{counters::Counter, queries::DB_SQLITE};

use super::{
    QueryError, QueryOptions, QueryProbes,
    events::QueryEvent,
    unfollowed::{self, Unfollowed},
};
use crate::{
    aggregate::{
        drops::DropDeltas,
        fingerprint::normalize,
        queries::{Db, QueryTable},
        query_texts::QueryTexts,
    },
    probes::{
        ProbeError,
        component::{CaptureKind, Component},
        drop_counters,
    },
};

/// The kernel counters the query programs bump (libpq and SQLite).
const QUERY_COUNTERS: [Counter; 12] = [
    Counter::QueryEventRingFull,
    Counter::QueryTlsUnfollowed,
    Counter::QueryTlsDropped,
    Counter::QueryTlsFdUnknown,
    Counter::QueryTlsMapFull,
    Counter::QueryMapFull,
    Counter::QueryQueueFull,
    Counter::QueryParserResync,
    Counter::SqliteStmtMapFull,
    Counter::SqliteStmtUnknown,
    Counter::SqliteReadError,
    Counter::SqliteThreadMapFull,
];

/// What was lost or degraded in one window (all deltas over the window).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryCounters {
    /// Executions seen (completion events).
    pub executions: u64,
    /// Executions whose text id was not in the text table (text lost in a
    /// full ring, evicted, or prepared before the capture started).
    pub unknown_text: u64,
    /// Ring records of unknown kind or length.
    pub malformed_records: u64,
    /// Library files that could not be inspected or attached, and failed
    /// process scans.
    pub failed_library_scans: u64,
    /// Text ids evicted from the text table.
    pub texts_evicted: u64,
    /// Non-zero kernel drop counters of the query programs, by stable name.
    pub kernel_drops: Vec<(&'static str, u64)>,
    /// Connections that could not be followed, by reason.
    pub unfollowed: Vec<Unfollowed>,
}

/// One window of query statistics.
#[derive(Debug)]
pub struct QueryWindow {
    /// Statements by (db, fingerprint); its own eviction counts are in it.
    pub table: QueryTable,
    /// Fingerprint id -> one raw text, only with `raw_queries` (at most
    /// one per statement of `table`).
    pub examples: HashMap<u64, String>,
    pub counters: QueryCounters,
    /// Why library files could not be traced (also counted).
    pub warnings: Vec<String>,
    /// libpq files attached so far (paths as processes name them).
    pub libpq_files: Vec<String>,
    /// OpenSSL libssl files attached so far (TLS plaintext).
    pub libssl_files: Vec<String>,
    /// SQLite files (libraries or programs) attached so far.
    pub sqlite_files: usize,
}

impl QueryWindow {
    fn new() -> Self {
        Self {
            table: QueryTable::default(),
            examples: HashMap::new(),
            counters: QueryCounters::default(),
            warnings: Vec::new(),
            libpq_files: Vec::new(),
            libssl_files: Vec::new(),
            sqlite_files: 0,
        }
    }
}

/// Queries through libpq and libsqlite3, in windows.
pub struct QueryTracer {
    ebpf: Ebpf,
    probes: QueryProbes,
    texts: QueryTexts,
    window: QueryWindow,
    /// Executions since the start (progress).
    executions: u64,
    /// Totals at the previous snapshot, to report deltas.
    last_malformed: u64,
    last_failed_scans: u64,
    last_evicted: u64,
    drops: DropDeltas,
}

impl QueryTracer {
    /// Warnings so far (about libraries found at start, right after
    /// `start`); taken, so the window does not repeat them.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.window.warnings)
    }

    /// Drains the ring into the window.
    fn drain(&mut self) {
        let Self {
            probes,
            texts,
            window,
            executions,
            ..
        } = self;
        let mut lost = Vec::new();
        probes.poll(|ev| match ev {
            QueryEvent::Unfollowed(u) => lost.push(u.pid),
            ev => ingest(texts, window, executions, ev),
        });
        for pid in lost {
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok();
            let ssl = &self.probes.ssl;
            let reason = unfollowed::tls_reason(maps.as_deref(), |p| ssl.is_attached(pid, p));
            let name = unfollowed::process_name(pid);
            unfollowed::count(&mut self.window.counters.unfollowed, reason, name);
        }
        let forgotten = self.texts.take_forgotten();
        if let Err(err) = QueryProbes::forget_texts(&mut self.ebpf, &forgotten) {
            self.push_warning(format!("forgetting evicted query texts: {err}"));
        }
        let warnings = self.probes.take_warnings();
        for w in warnings {
            self.push_warning(w);
        }
    }

    fn push_warning(&mut self, warning: String) {
        if self.window.warnings.len() < super::MAX_WARNINGS {
            self.window.warnings.push(warning);
        }
    }

    /// Closes the window: fills its counters and starts a new one.
    fn take_window(&mut self) -> Result<QueryWindow, ProbeError> {
        let drops = drop_counters(&self.ebpf)?;
        let mut window = std::mem::replace(&mut self.window, QueryWindow::new());
        window.libpq_files = (self.probes.pg.files.iter())
            .map(|p| p.display().to_string())
            .collect();
        window.libssl_files = (self.probes.ssl.files.iter())
            .map(|p| p.display().to_string())
            .collect();
        window.sqlite_files = self.probes.sqlite.files().len();
        let c = &mut window.counters;
        c.malformed_records = self.probes.malformed - self.last_malformed;
        c.failed_library_scans = self.probes.failed_scans - self.last_failed_scans;
        c.texts_evicted = self.texts.evicted() - self.last_evicted;
        self.last_malformed = self.probes.malformed;
        self.last_failed_scans = self.probes.failed_scans;
        self.last_evicted = self.texts.evicted();
        c.kernel_drops = self.drops.window(&drops);
        Ok(window)
    }
}

/// One ring record into the text table or the window.
fn ingest(texts: &mut QueryTexts, window: &mut QueryWindow, executions: &mut u64, ev: QueryEvent) {
    match ev {
        QueryEvent::Text {
            text_id,
            bytes,
            truncated,
            ..
        } => texts.learn(text_id, &bytes, truncated),
        // Classified by the caller, which knows the attached libraries.
        QueryEvent::Unfollowed(_) => {}
        QueryEvent::Done(done) => {
            *executions += 1;
            window.counters.executions += 1;
            let db = if done.db == DB_SQLITE {
                Db::Sqlite
            } else {
                Db::Postgres
            };
            let rows = (done.rows != u64::MAX).then_some(done.rows);
            let fallback;
            let normalized = if let Some(known) = texts.resolve(done.text_id) {
                if let Some(raw) = known.raw
                    && window.examples.len() < window.table.capacity()
                {
                    window
                        .examples
                        .entry(known.fingerprint.id)
                        .or_insert_with(|| raw.to_owned());
                }
                known.fingerprint
            } else {
                window.counters.unknown_text += 1;
                fallback = normalize(if done.text_id == 0 {
                    b"<prepared before the capture started: text unknown>"
                } else {
                    b"<text not captured>"
                });
                &fallback
            };
            window.table.record(
                db,
                normalized,
                done.latency_ns,
                done.error != 0,
                rows,
                done.pid,
            );
        }
    }
}

impl Component for QueryTracer {
    type Config = QueryOptions;
    type Snapshot = QueryWindow;
    type Error = QueryError;

    const KIND: CaptureKind = CaptureKind::Queries;

    fn start(config: &QueryOptions) -> Result<Self, QueryError> {
        let mut ebpf = crate::probes::objects::load_for(CaptureKind::Queries, false)?;
        let probes = QueryProbes::attach(&mut ebpf, config)?;
        let mut tracer = Self {
            ebpf,
            probes,
            texts: QueryTexts::new(config.raw_queries),
            window: QueryWindow::new(),
            executions: 0,
            last_malformed: 0,
            last_failed_scans: 0,
            last_evicted: 0,
            drops: DropDeltas::new(QUERY_COUNTERS.map(Counter::name)),
        };
        let warnings = tracer.probes.take_warnings();
        for w in warnings {
            tracer.push_warning(w);
        }
        Ok(tracer)
    }

    /// Rescans for libraries (new processes now, all of them every 10 s)
    /// and drains the ring.
    fn poll(&mut self) {
        self.probes.rescan(&mut self.ebpf);
        self.drain();
    }

    fn progress(&self) -> u64 {
        self.executions
    }

    fn snapshot(&mut self) -> Result<QueryWindow, QueryError> {
        self.drain();
        Ok(self.take_window()?)
    }

    /// The ring is drained before the programs are detached (dropping the
    /// object): executions completed up to now are in the last window.
    fn stop(mut self) -> Result<QueryWindow, QueryError> {
        self.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use qprof_common::queries::{DB_POSTGRES, DoneEvent, EVENT_DONE};

    use super::*;
    use crate::aggregate::fingerprint::id_hex;

    fn done(text_id: u64) -> QueryEvent {
        QueryEvent::Done(DoneEvent {
            kind: EVENT_DONE,
            db: DB_POSTGRES,
            text_id,
            pid: 9,
            tid: 9,
            latency_ns: 2_000,
            rows: u64::MAX,
            error: 0,
            pad: 0,
        })
    }

    fn text(text_id: u64, sql: &[u8]) -> QueryEvent {
        QueryEvent::Text {
            db: DB_POSTGRES,
            text_id,
            bytes: sql.to_vec(),
            truncated: false,
        }
    }

    /// A text learned in one window names its executions in later ones;
    /// an id never sent is counted as unknown; the raw example is kept
    /// only when opted in.
    #[test]
    fn texts_outlive_windows() {
        for keep_raw in [false, true] {
            let mut texts = QueryTexts::new(keep_raw);
            let (mut first, mut n) = (QueryWindow::new(), 0);
            ingest(
                &mut texts,
                &mut first,
                &mut n,
                text(5, b"SELECT 'a' FROM t"),
            );
            ingest(&mut texts, &mut first, &mut n, done(5));
            let mut second = QueryWindow::new();
            ingest(&mut texts, &mut second, &mut n, done(5));
            ingest(&mut texts, &mut second, &mut n, done(6));
            assert_eq!(n, 3);
            assert_eq!(
                (first.counters.executions, first.counters.unknown_text),
                (1, 0)
            );
            assert_eq!(
                (second.counters.executions, second.counters.unknown_text),
                (2, 1)
            );
            let rows = second.table.rows();
            let fp = normalize(b"SELECT ? FROM t");
            let named = rows.iter().find(|r| r.fingerprint_id == id_hex(fp.id));
            assert_eq!(named.map(|r| r.calls), Some(1), "{rows:?}");
            let unknown = normalize(b"<text not captured>").text;
            assert!(rows.iter().any(|r| r.fingerprint == unknown), "{rows:?}");
            let example = second.examples.get(&fp.id).map(String::as_str);
            assert_eq!(example, keep_raw.then_some("SELECT 'a' FROM t"));
        }
    }
}
