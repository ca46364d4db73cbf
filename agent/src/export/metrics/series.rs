//! The per-window families (queries, syscalls, TCP peers): window tables
//! folded into capped, cumulative series.
//!
//! Each feed takes the aggregates of *one* window (what a component's
//! `snapshot` returned) and adds them; nothing here reads a table twice.

use std::collections::{BTreeMap, HashMap};

use super::capped::Capped;
use super::hist::{HistValue, QUERY_BOUNDS, SYSCALL_BOUNDS, TCP_CONNECT_BOUNDS, TCP_RTT_BOUNDS};
use super::labels::label_value;
use crate::aggregate::{
    histogram::LogHistogram,
    names::syscall_name,
    queries::{Db, QueryStats, QueryTable},
    syscalls::{SyscallStats, SyscallTable},
    tcp::{HistKind, PeerStats, TcpTable},
};

/// Label value of the series that holds every untracked key.
pub const OTHER: &str = "other";

/// Errno series kept per (comm, syscall): a call fails in a handful of
/// ways (ENOENT, EAGAIN, EINTR…), 16 is room for all of them; any further
/// errno is counted under `errno="other"`.
pub const MAX_ERRNOS: usize = 16;

/// Caps and label bounds of the window families.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub queries: usize,
    pub syscalls: usize,
    pub tcp: usize,
    /// Bytes of a label value (comm, remote, syscall name).
    pub label_bytes: usize,
    /// Bytes of the normalized text in `qprof_query_info`.
    pub fingerprint_bytes: usize,
}

/// (database, fingerprint id); `None` is that database's "other".
pub type QueryKey = (Db, Option<u64>);

#[derive(Debug, Default)]
pub struct QuerySeries {
    pub latency: HistValue,
    pub errors: u64,
    pub rows: u64,
    /// Normalized text, length-capped (empty for "other").
    pub text: String,
}

/// (comm, syscall name).
pub type SyscallKey = (String, String);

#[derive(Debug, Default)]
pub struct SyscallSeries {
    /// Every call (exact), whether or not its latency was sampled.
    pub calls: u64,
    /// errno name -> errors, at most [`MAX_ERRNOS`] names plus "other".
    pub errors: BTreeMap<String, u64>,
    /// Latency of the calls that were timed.
    pub latency: HistValue,
}

/// (remote address, comm).
pub type TcpKey = (String, String);

#[derive(Debug, Default)]
pub struct TcpSeries {
    pub rtt: HistValue,
    pub connect: HistValue,
    pub retransmits: u64,
    pub resets: u64,
}

/// The three capped families.
#[derive(Debug)]
pub struct WindowFamilies {
    pub caps: Caps,
    pub queries: Capped<QueryKey, QuerySeries>,
    pub syscalls: Capped<SyscallKey, SyscallSeries>,
    pub tcp: Capped<TcpKey, TcpSeries>,
}

impl WindowFamilies {
    #[must_use]
    pub fn new(caps: Caps) -> Self {
        Self {
            caps,
            queries: Capped::new(caps.queries),
            syscalls: Capped::new(caps.syscalls),
            tcp: Capped::new(caps.tcp),
        }
    }

    /// Adds one window's statements; ranked by total time.
    pub fn feed_queries(&mut self, window: &QueryTable) {
        let items: HashMap<QueryKey, &QueryStats> = window
            .iter()
            .map(|(db, id, s)| ((db, Some(id)), s))
            .collect();
        let text_bytes = self.caps.fingerprint_bytes;
        self.queries.feed(
            items,
            |s| s.total_ns as f64,
            |&(db, _)| (db, None),
            |series, key, s| {
                series.latency.add_fine(QUERY_BOUNDS, &s.latency);
                series.errors += s.errors;
                series.rows += s.rows.unwrap_or(0);
                if key.1.is_some() && series.text.is_empty() {
                    series.text = label_value(&s.text, text_bytes);
                }
            },
        );
    }

    /// Adds one window's (pid, syscall) pairs, merged per (comm, syscall);
    /// ranked by calls (exact in every mode, where time may be sampled).
    pub fn feed_syscalls(&mut self, window: &SyscallTable) {
        let mut items: HashMap<SyscallKey, SyscallWindow> = HashMap::new();
        let bytes = self.caps.label_bytes;
        for (&(_pid, nr), s) in &window.entries {
            let key = (
                label_value(&s.comm, bytes),
                label_value(&syscall_name(nr), bytes),
            );
            items.entry(key).or_default().add(s);
        }
        let other = (OTHER.to_owned(), OTHER.to_owned());
        self.syscalls.feed(
            items,
            |w| w.calls as f64,
            |_| other.clone(),
            |series, _, w| w.add_to(series),
        );
    }

    /// Adds one window's TCP rows, merged per (remote, comm); ranked by
    /// events (RTT samples, connects, retransmits, resets): there is no
    /// "total time" of a peer.
    pub fn feed_tcp(&mut self, window: &TcpTable) {
        let mut items: HashMap<TcpKey, TcpWindow> = HashMap::new();
        let bytes = self.caps.label_bytes;
        for (peer, s) in &window.peers {
            let key = (
                label_value(&peer.remote.to_string(), bytes),
                label_value(&peer.comm, bytes),
            );
            items.entry(key).or_default().add(s);
        }
        let other = (OTHER.to_owned(), OTHER.to_owned());
        self.tcp.feed(
            items,
            TcpWindow::events,
            |_| other.clone(),
            |series, _, w| w.add_to(series),
        );
    }
}

/// One window's syscall data for one (comm, syscall), over its pids.
#[derive(Debug, Default)]
struct SyscallWindow {
    calls: u64,
    errors: u64,
    errnos: BTreeMap<String, u64>,
    latency: HistValue,
}

impl SyscallWindow {
    fn add(&mut self, s: &SyscallStats) {
        self.calls += s.calls;
        self.errors += s.errors;
        for (name, n) in &s.errnos {
            *self.errnos.entry(name.clone()).or_default() += n;
        }
        // The exact total only when every call was timed; a sampled
        // histogram gets the sum of its own samples, estimated.
        let exact = (s.latency.count() == s.calls).then_some(s.total_ns());
        self.latency
            .add_log(SYSCALL_BOUNDS, &s.latency, 1e-9, exact);
    }

    fn add_to(self, series: &mut SyscallSeries) {
        series.calls += self.calls;
        series.latency.merge(&self.latency);
        // Errors whose errno the kernel could not keep (its errno map was
        // full) still count, as "unknown".
        let named: u64 = self.errnos.values().sum();
        let unknown = self.errors.saturating_sub(named);
        let unknown = (unknown > 0).then(|| ("unknown".to_owned(), unknown));
        for (name, n) in self.errnos.into_iter().chain(unknown) {
            let slot = if series.errors.contains_key(&name) || series.errors.len() < MAX_ERRNOS {
                name
            } else {
                OTHER.to_owned()
            };
            *series.errors.entry(slot).or_default() += n;
        }
    }
}

/// One window's TCP data for one (remote, comm).
#[derive(Debug, Default)]
struct TcpWindow {
    rtt: HistValue,
    connect: HistValue,
    connects: u64,
    retransmits: u64,
    resets: u64,
}

impl TcpWindow {
    fn add(&mut self, s: &PeerStats) {
        let rtt: LogHistogram = s.histogram(HistKind::RttUs);
        self.rtt.add_log(TCP_RTT_BOUNDS, &rtt, 1e-6, None);
        let connect = s.histogram(HistKind::ConnectNs);
        self.connect
            .add_log(TCP_CONNECT_BOUNDS, &connect, 1e-9, None);
        self.connects += s.counts.connects;
        self.retransmits += s.counts.retransmits;
        self.resets += s.counts.resets_sent + s.counts.resets_received;
    }

    fn events(&self) -> f64 {
        (self.rtt.count() + self.connects + self.retransmits + self.resets) as f64
    }

    fn add_to(self, series: &mut TcpSeries) {
        series.rtt.merge(&self.rtt);
        series.connect.merge(&self.connect);
        series.retransmits += self.retransmits;
        series.resets += self.resets;
    }
}
