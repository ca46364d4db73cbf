//! The continuous capabilities and what each window becomes: a gzip pprof
//! (CPU) or a JSON summary (syscalls, TCP, queries) in the store, the
//! metrics, and the last windows kept in memory for the API.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, atomic::Ordering},
    time::SystemTime,
};

use serde::Serialize;

use super::{
    Shared,
    config::Config,
    log,
    supervise::{self, WindowSpan},
};
use crate::{
    aggregate::queries::QueryTable,
    export::{
        profile::{self, value_type},
        store::StoreError,
    },
    probes::{
        cpu::{CpuCapture, CpuConfig, CpuSampler},
        queries::{QueryOptions, QueryTracer},
        syscalls::{SyscallConfig, SyscallTracer},
        tcp::{TcpOptions, TcpTracer},
    },
    symbolize::{ProfileShape, Symbolizer},
};

/// One window kept in memory: its span and its CPU profile (gzip pprof).
#[derive(Debug, Clone, Serialize)]
pub struct RecentWindow {
    pub start_unix_ms: u64,
    pub end_unix_ms: u64,
    pub samples: i64,
    #[serde(skip)]
    pub cpu_pprof: Arc<Vec<u8>>,
}

/// The last windows, newest last, at most `capacity` (the config's
/// `store.memory_windows`; 10 windows of a busy host's CPU profile are a
/// few MB).
#[derive(Debug)]
pub struct RecentWindows {
    capacity: usize,
    windows: VecDeque<RecentWindow>,
}

impl RecentWindows {
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            windows: VecDeque::new(),
        }
    }

    pub fn push(&mut self, w: RecentWindow) {
        while self.windows.len() >= self.capacity {
            self.windows.pop_front();
        }
        self.windows.push_back(w);
    }

    pub fn iter(&self) -> impl Iterator<Item = &RecentWindow> {
        self.windows.iter()
    }
}

/// Starts every capability the config turns on.
pub fn start_continuous(shared: &Arc<Shared>, config: &Config) {
    let c = &config.continuous;
    let (tracker, cancel) = (&shared.tracker, &shared.cancel);
    if c.cpu {
        start_cpu(shared, c);
    }
    if c.queries {
        let options = QueryOptions {
            pids: Vec::new(),
            raw_queries: config.raw_queries,
        };
        // Sliced every second for the triggers; the window's table is
        // assembled from the slices.
        let acc: Mutex<Option<(QueryTable, WindowSpan)>> = Mutex::new(None);
        supervise::spawn_sliced::<QueryTracer, _>(
            tracker,
            shared.clone(),
            cancel.clone(),
            options,
            Some(super::triggers::SLICE),
            move |s, window, span| {
                let c = &window.counters;
                s.metrics.add_lost(c.kernel_drops.iter().copied());
                s.metrics.add_lost([
                    ("query_unknown_text", c.unknown_text),
                    ("query_malformed_record", c.malformed_records),
                    ("query_failed_library_scan", c.failed_library_scans),
                    ("query_text_evicted", c.texts_evicted),
                ]);
                for w in &window.warnings {
                    log(&format!("queries: {w}"));
                }
                let Ok(mut acc) = acc.lock() else { return };
                let (table, acc_span) = acc.get_or_insert_with(|| (QueryTable::default(), span));
                table.merge(&window.table);
                acc_span.end_ms = span.end_ms;
                let full = acc_span.end_ms.saturating_sub(acc_span.start_ms)
                    >= s.window().as_millis() as u64;
                super::triggers::record_query_slice(s, window.table);
                if (full || s.cancel.is_cancelled())
                    && let Some((table, acc_span)) = acc.take()
                {
                    query_window(s, &table, acc_span);
                }
            },
        );
    }
    if c.syscalls {
        supervise::spawn::<SyscallTracer, _>(
            tracker,
            shared.clone(),
            cancel.clone(),
            SyscallConfig::default(),
            |s, table, span| {
                s.metrics.observe_syscalls(&table);
                s.metrics.add_lost(table.drops.iter().copied());
                let rows = table.rows();
                let result = write_json(s, span, "syscalls.json", &rows);
                if let Ok(mut latest) = s.latest.lock() {
                    latest.syscalls = rows;
                }
                count_write(s, result.map_err(|e| e.to_string()), "syscalls");
            },
        );
    }
    if c.tcp {
        supervise::spawn::<TcpTracer, _>(
            tracker,
            shared.clone(),
            cancel.clone(),
            TcpOptions::default(),
            |s, table, span| {
                s.metrics.observe_tcp(&table);
                s.metrics.add_lost(table.drops.iter().copied());
                let rows = table.rows();
                let result = write_json(s, span, "tcp.json", &rows);
                if let Ok(mut latest) = s.latest.lock() {
                    latest.tcp = rows;
                }
                count_write(s, result.map_err(|e| e.to_string()), "tcp");
            },
        );
    }
}

/// Host-wide CPU sampling; each window is symbolized and written by a
/// thread of its own.
fn start_cpu(shared: &Arc<Shared>, c: &super::config::Continuous) {
    let (tracker, cancel) = (&shared.tracker, &shared.cancel);
    let cpu = CpuConfig {
        hz: c.cpu_hz,
        pids: Vec::new(),
        by_query: false,
        include_idle: c.include_idle,
    };
    // blazesym's symbolizer is not Send: it lives on one blocking
    // thread of its own that symbolizes and writes each window, so a
    // slow symbolization never delays the sampler's polls either. The
    // thread ends when the sampler's task (the only sender) ends.
    let (tx, rx) = std::sync::mpsc::channel::<(CpuCapture, WindowSpan)>();
    let hz = c.cpu_hz;
    let writer = shared.clone();
    tracker.spawn_blocking(move || {
        let mut symbolizer = Symbolizer::new();
        let mut window: Option<(CpuCapture, WindowSpan)> = None;
        while let Ok((snap, span)) = rx.recv() {
            super::triggers::record_cpu_slice(&writer, &mut symbolizer, &snap, span, hz);
            let (acc, acc_span) = window.get_or_insert_with(|| (empty_capture(), span));
            absorb(acc, snap);
            acc_span.end_ms = span.end_ms;
            let full = acc_span.end_ms.saturating_sub(acc_span.start_ms)
                >= writer.window().as_millis() as u64;
            if full && let Some((acc, acc_span)) = window.take() {
                let result = cpu_window(&writer, &mut symbolizer, &acc, acc_span, hz);
                count_write(&writer, result.map_err(|e| e.to_string()), "cpu");
                // What the window parsed is freed (the frame cache keeps
                // its results), and so is the memory symbolizing it took.
                symbolizer.release_resolver();
                super::supervise::release_freed_memory();
            }
        }
        // The sampler stopped (its last slice is in): the partial window.
        if let Some((acc, acc_span)) = window.take() {
            let result = cpu_window(&writer, &mut symbolizer, &acc, acc_span, hz);
            count_write(&writer, result.map_err(|e| e.to_string()), "cpu");
        }
    });
    let tx = Mutex::new(tx);
    supervise::spawn_sliced::<CpuSampler, _>(
        tracker,
        shared.clone(),
        cancel.clone(),
        cpu,
        Some(super::triggers::SLICE),
        move |s, snap, span| {
            let sent = tx
                .lock()
                .map_err(|_| ())
                .and_then(|t| t.send((snap, span)).map_err(|_| ()));
            if sent.is_err() {
                count_write(s, Err("the symbolizer thread is gone".into()), "cpu");
            }
        },
    );
}

/// One whole query window: metrics, the running totals, the file.
fn query_window(s: &Shared, table: &QueryTable, span: WindowSpan) {
    s.metrics.observe_queries(table);
    if let Ok(mut all) = s.queries.lock() {
        all.merge(table);
    }
    let result = write_json(s, span, "queries.json", &table.rows());
    count_write(s, result.map_err(|e| e.to_string()), "queries");
}

fn empty_capture() -> CpuCapture {
    CpuCapture {
        stacks: crate::aggregate::stacks::StackCounts::default(),
        maps: crate::probes::process_maps::ProcessMaps::default(),
        total_samples: 0,
        drops: Vec::new(),
    }
}

/// Adds a one-second slice to the window being assembled.
fn absorb(acc: &mut CpuCapture, slice: CpuCapture) {
    for stack in slice.stacks.stacks() {
        acc.stacks.add(stack.clone());
    }
    acc.maps.absorb(slice.maps);
    acc.total_samples += slice.total_samples;
    for (name, n) in slice.drops {
        match acc.drops.iter_mut().find(|(d, _)| *d == name) {
            Some((_, total)) => *total += n,
            None => acc.drops.push((name, n)),
        }
    }
}

fn count_write(shared: &Shared, result: Result<(), String>, what: &str) {
    match result {
        Ok(()) => shared
            .health
            .windows_written
            .fetch_add(1, Ordering::Relaxed),
        Err(e) => {
            log(&format!("writing the {what} window: {e}"));
            shared
                .health
                .window_write_errors
                .fetch_add(1, Ordering::Relaxed)
        }
    };
}

fn write_json<T: Serialize>(
    shared: &Shared,
    span: WindowSpan,
    what: &str,
    rows: &T,
) -> Result<(), StoreError> {
    let json = serde_json::to_vec(rows).map_err(|source| StoreError::Json {
        what: "window",
        source,
    })?;
    shared.store.write_window(span.start_ms, what, &json)
}

/// Symbolizes one CPU window with the long-lived symbolizer, writes it,
/// keeps it in memory, and applies retention.
fn cpu_window(
    shared: &Shared,
    symbolizer: &mut Symbolizer,
    capture: &CpuCapture,
    span: WindowSpan,
    hz: u64,
) -> Result<(), StoreError> {
    let shape = ProfileShape {
        sample_types: vec![
            value_type("samples", "count"),
            value_type("cpu", "nanoseconds"),
        ],
        period_type: value_type("cpu", "nanoseconds"),
        period: 1_000_000_000 / hz.max(1) as i64,
        time_nanos: span.start_ms as i64 * 1_000_000,
        duration_nanos: (span.end_ms.saturating_sub(span.start_ms)) as i64 * 1_000_000,
    };
    let profile = profile::build(symbolizer, &capture.stacks, &capture.maps, &shape);
    let bytes = profile::pprof_gzip(&profile).map_err(|e| StoreError::Json {
        what: "pprof",
        source: serde_json::Error::io(std::io::Error::other(e.to_string())),
    })?;
    shared.metrics.add_lost(capture.drops.iter().copied());
    shared.metrics.set_map_fill(
        "CPU_STACK_COUNTS",
        capture.stacks.len() as u64,
        u64::from(qprof_common::cpu::STACK_COUNTS_CAPACITY),
    );
    if let Some(pusher) = &shared.pyroscope
        && let Err(e) =
            pusher.push_window(&profile, span.start_ms / 1000, span.end_ms.div_ceil(1000))
    {
        log(&format!("Pyroscope: {e}"));
    }
    shared
        .store
        .write_window(span.start_ms, "cpu.pb.gz", &bytes)?;
    let config = shared.config();
    if let Ok(mut recent) = shared.recent.lock() {
        recent.push(RecentWindow {
            start_unix_ms: span.start_ms,
            end_unix_ms: span.end_ms,
            samples: profile.total(0),
            cpu_pprof: Arc::new(bytes),
        });
    }
    let _removed = shared.store.retain(
        config.store.max_size,
        config.store.max_age,
        SystemTime::now(),
    );
    Ok(())
}
