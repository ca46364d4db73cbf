//! Prometheus metrics of the agent (`GET /metrics`).
//!
//! The agent feeds [`Metrics`] once per window with that window's
//! aggregates ([`Metrics::observe_queries`] and friends) and sets its own
//! health values as they change; every series is cumulative, so counters
//! and histograms are monotonic across windows as Prometheus requires. A
//! scrape ([`Metrics::encode`]) only encodes what is held: no /proc walk,
//! no BPF map read, one lock.
//!
//! Cardinality is bounded per family (top N keys by total time or events,
//! the rest under `other`; see [`capped`]); label values are length-capped
//! and cleaned ([`labels`]); query text is the normalized fingerprint,
//! never a literal.
//!
//! | family | labels |
//! | --- | --- |
//! | `qprof_query_duration_seconds` (histogram), `qprof_query_errors_total`, `qprof_query_rows_total` | db, `fingerprint_id` (16 hex digits, or "other") |
//! | `qprof_query_info` | db, `fingerprint_id`, fingerprint |
//! | `qprof_syscall_calls_total`, `qprof_syscall_duration_seconds` (histogram of the timed calls) | comm, syscall |
//! | `qprof_syscall_errors_total` | comm, syscall, errno |
//! | `qprof_tcp_rtt_seconds`, `qprof_tcp_connect_duration_seconds` (histograms), `qprof_tcp_retransmits_total`, `qprof_tcp_resets_total` | remote, comm |
//! | `qprof_metrics_series`, `qprof_metrics_series_evicted_total` | family |
//! | `qprof_host_cpu_usage_ratio`, `qprof_host_cpus`, `qprof_host_{memory_total,memory_available,swap_total,swap_used}_bytes` | none |
//! | `qprof_process_cpu_seconds_total`, `qprof_process_resident_memory_bytes` (top processes) | pid, comm |
//! | `qprof_traced_process_{task_clock_seconds,context_switches,page_faults}_total` (perf counters) | pid, comm |
//! | `qprof_traced_process_skipped_total` | reason |
//! | `qprof_lost_events_total` | cause |
//! | `qprof_bpf_map_{entries,capacity,fill_ratio}` | map |
//! | `qprof_bpf_stats_enabled` | none |
//! | `qprof_bpf_program_run_time_seconds_total`, `qprof_bpf_program_runs_total` | program |
//! | `qprof_agent_cpu_seconds_total`, `qprof_agent_resident_memory_bytes`, `qprof_agent_windows_written_total` | none |
//! | `qprof_agent_captures_total` / `qprof_agent_store_size_bytes` | kind / store |

pub mod capped;
mod encode;
pub mod health;
pub mod hist;
pub mod host;
pub mod labels;
pub mod series;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::registry::Registry;

use crate::aggregate::{queries::QueryTable, syscalls::SyscallTable, tcp::TcpTable};
use crate::probes::counters::{CounterLosses, ProcessCounts};
use health::{BpfStats, Health};
use host::HostSnapshot;
use series::{Caps, WindowFamilies};

/// `Content-Type` of the `OpenMetrics` text format, the default.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `Content-Type` of the Prometheus text format 0.0.4.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// What can go wrong in the metrics module.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("reading host statistics failed: {0}")]
    Sysinfo(String),
    #[error("encoding the metrics failed")]
    Encode(#[from] std::fmt::Error),
}

/// Caps of the metrics; every field has a documented default.
#[derive(Debug, Clone, Copy)]
pub struct MetricsConfig {
    /// Fingerprints with their own series (plus one `other` per database
    /// kind). 100: the statements that matter on one host, at ~52 series
    /// each (46 buckets for a p99 within 20%, +Inf, sum, count, errors,
    /// rows, info): ~5,200 series.
    pub top_queries: usize,
    /// (comm, syscall) pairs with their own series. 100: the busy pairs of
    /// a host's main services, ~20 series each.
    pub top_syscalls: usize,
    /// (remote, comm) pairs with their own series. 100, ~40 series each.
    pub top_tcp: usize,
    /// Bytes of a comm, remote or syscall label value. A comm has 15, an
    /// IPv6 address and port ~47: 64 cuts only nonsense.
    pub max_label_bytes: usize,
    /// Bytes of the normalized statement text in `qprof_query_info`: enough
    /// to recognize a statement; the full text is in `GET /api/queries`.
    pub max_fingerprint_bytes: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            top_queries: 100,
            top_syscalls: 100,
            top_tcp: 100,
            max_label_bytes: 64,
            max_fingerprint_bytes: 256,
        }
    }
}

/// Everything a scrape encodes, behind one lock.
#[derive(Debug)]
pub struct State {
    families: WindowFamilies,
    health: Health,
    host: Option<HostSnapshot>,
    counters: Vec<ProcessCounts>,
    counter_losses: CounterLosses,
}

/// The agent's metrics: fed by the agent, encoded by `GET /metrics`.
/// Methods take `&self`, so one `Arc<Metrics>` serves the window task and
/// the HTTP handlers.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    state: Arc<Mutex<State>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(MetricsConfig::default())
    }
}

impl Metrics {
    #[must_use]
    pub fn new(config: MetricsConfig) -> Self {
        let caps = Caps {
            queries: config.top_queries,
            syscalls: config.top_syscalls,
            tcp: config.top_tcp,
            label_bytes: config.max_label_bytes,
            fingerprint_bytes: config.max_fingerprint_bytes,
        };
        let state = Arc::new(Mutex::new(State {
            families: WindowFamilies::new(caps),
            health: Health::default(),
            host: None,
            counters: Vec::new(),
            counter_losses: CounterLosses::default(),
        }));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(encode::StateCollector(Arc::clone(&state))));
        Self { registry, state }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain counters,
        // still worth serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds one window's statements (the table must hold that window only).
    pub fn observe_queries(&self, window: &QueryTable) {
        self.state().families.feed_queries(window);
    }

    /// Adds one window's syscall counts (comms filled in).
    pub fn observe_syscalls(&self, window: &SyscallTable) {
        self.state().families.feed_syscalls(window);
    }

    /// Adds one window's TCP rows.
    pub fn observe_tcp(&self, window: &TcpTable) {
        self.state().families.feed_tcp(window);
    }

    /// Adds losses by cause since the last call (kernel counter names from
    /// `Counter::name`, or the agent's own causes).
    pub fn add_lost<'a>(&self, causes: impl IntoIterator<Item = (&'a str, u64)>) {
        let mut s = self.state();
        for (cause, n) in causes {
            s.health.add_lost(cause, n);
        }
    }

    /// Adds what grew since the last call for `source` of its cumulative
    /// loss totals (`probes::drop_counters` of one BPF object).
    pub fn add_lost_totals(&self, source: &str, totals: &[(&str, u64)]) {
        self.state().health.add_lost_totals(source, totals);
    }

    /// Entries and capacity of a BPF map, as of the last window.
    pub fn set_map_fill(&self, map: &str, entries: u64, capacity: u64) {
        self.state().health.set_map(map, entries, capacity);
    }

    /// The kernel's run statistics of the agent's programs
    /// ([`health::bpf_program_stats`]).
    pub fn set_bpf_stats(&self, stats: BpfStats) {
        self.state().health.bpf = stats;
    }

    pub fn window_written(&self) {
        self.state().health.windows_written += 1;
    }

    pub fn capture_taken(&self, kind: &str) {
        self.state().health.capture_taken(kind);
    }

    /// Bytes on disk of a store (`continuous`, `captures`).
    pub fn set_store_bytes(&self, store: &str, bytes: u64) {
        self.state().health.set_store_bytes(store, bytes);
    }

    /// The latest host sample ([`host::HostSampler::sample`]).
    pub fn set_host(&self, snapshot: HostSnapshot) {
        self.state().host = Some(snapshot);
    }

    /// The latest perf counts of the traced processes
    /// (`probes::counters::ProcessCounters::read`) and its losses.
    pub fn set_process_counters(&self, counts: Vec<ProcessCounts>, losses: &CounterLosses) {
        let mut s = self.state();
        s.counters = counts;
        s.counter_losses = losses.clone();
    }

    /// The scrape body for a request with this `Accept` header, and its
    /// `Content-Type`: `OpenMetrics` text unless the scraper prefers
    /// `text/plain` (Prometheus text 0.0.4).
    pub fn encode(&self, accept: Option<&str>) -> Result<(&'static str, String), MetricsError> {
        let mut body = String::with_capacity(64 * 1024);
        if prefers_text_plain(accept) {
            prometheus_text::encode(&mut body, &self.registry)?;
            Ok((PROMETHEUS_TEXT_CONTENT_TYPE, body))
        } else {
            text::encode(&mut body, &self.registry)?;
            Ok((OPENMETRICS_CONTENT_TYPE, body))
        }
    }
}

/// Whether an `Accept` header ranks `text/plain` above `OpenMetrics` (by
/// q-value; a tie, `*/*` or no header goes to `OpenMetrics`, the default).
/// Prometheus itself sends e.g. `application/openmetrics-text;version=1.0.0;q=0.5,
/// …,text/plain;version=0.0.4;q=0.3,*/*;q=0.2` and gets `OpenMetrics`, or
/// only `text/plain` when configured for the classic format.
#[must_use]
pub fn prefers_text_plain(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let (mut om, mut plain) = (-1.0f64, -1.0f64);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
            .find_map(|v| v.parse::<f64>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" => plain = plain.max(q),
            _ => {}
        }
    }
    plain > 0.0 && plain > om
}
