//! TCP per endpoint row: connects, failures by the state they died in,
//! connect latency, smoothed RTT and lifetime histograms, retransmits,
//! resets and bytes. The values `record tcp` prints and the agent daemon
//! will export as per-peer metrics.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, SocketAddr},
};

use qprof_common::hist::BUCKETS;
use serde::{Deserialize, Serialize};

use super::histogram::LogHistogram;

/// Who opened the connections of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// This process connected (its local port is ephemeral, shown as `*`).
    Outbound,
    /// This process accepted (the remote port is ephemeral, shown as `*`).
    Inbound,
    /// Already open when the capture started and not found in `/proc`.
    Unknown,
}

/// An address and port; port 0 stands for "any ephemeral port".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr {
    pub ip: IpAddr,
    pub port: u16,
}

impl Addr {
    /// IPv4-mapped IPv6 addresses (a dual-stack socket talking IPv4) show
    /// as IPv4, so both kinds of socket share a row.
    #[must_use]
    pub fn new(ip: IpAddr, port: u16) -> Self {
        Self {
            ip: ip.to_canonical(),
            port,
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port == 0 {
            match self.ip {
                IpAddr::V4(ip) => write!(f, "{ip}:*"),
                IpAddr::V6(ip) => write!(f, "[{ip}]:*"),
            }
        } else {
            write!(f, "{}", SocketAddr::new(self.ip, self.port))
        }
    }
}

/// Identity of a row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Peer {
    /// Owning process; 0 when unknown.
    pub pid: u32,
    pub comm: String,
    pub direction: Direction,
    pub local: Addr,
    pub remote: Addr,
}

/// Which histogram a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistKind {
    /// `SYN_SENT` -> `ESTABLISHED`, nanoseconds.
    ConnectNs,
    /// Smoothed RTT at each segment received, microseconds.
    RttUs,
    /// ESTABLISHED -> CLOSE, nanoseconds.
    LifetimeNs,
}

/// Counters of one row, summed over CPUs (see `qprof_common::tcp::EndpointStats`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub connects: u64,
    pub failed_syn_sent: u64,
    pub failed_syn_recv: u64,
    pub closes: u64,
    pub lifetime_ns_total: u64,
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub connect_max_ns: u64,
    pub lifetime_max_ns: u64,
}

/// Everything known about one row.
#[derive(Debug, Clone, Default)]
pub struct PeerStats {
    pub counts: Counts,
    /// Bytes sent and received; `None` while unknown (no connection of
    /// this row measured, or the kernel's counters could not be located).
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
    /// Connections still open when the capture ended.
    pub open: u64,
    connect: Vec<u64>,
    rtt: Vec<u64>,
    lifetime: Vec<u64>,
}

impl PeerStats {
    fn buckets(&mut self, kind: HistKind) -> &mut Vec<u64> {
        let v = match kind {
            HistKind::ConnectNs => &mut self.connect,
            HistKind::RttUs => &mut self.rtt,
            HistKind::LifetimeNs => &mut self.lifetime,
        };
        if v.is_empty() {
            v.resize(BUCKETS, 0);
        }
        v
    }

    #[must_use]
    pub fn histogram(&self, kind: HistKind) -> LogHistogram {
        let mut h = LogHistogram::default();
        match kind {
            HistKind::ConnectNs => {
                h.add_buckets(&self.connect);
                h.observe_max(self.counts.connect_max_ns);
            }
            HistKind::RttUs => h.add_buckets(&self.rtt),
            HistKind::LifetimeNs => {
                h.add_buckets(&self.lifetime);
                h.observe_max(self.counts.lifetime_max_ns);
            }
        }
        h
    }
}

/// Every row of a capture.
#[derive(Debug, Default)]
pub struct TcpTable {
    pub peers: HashMap<Peer, PeerStats>,
    /// Data the kernel (or the agent) could not keep, by reason.
    pub drops: Vec<(&'static str, u64)>,
}

/// One row of the report; the JSON field names are a public interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TcpRow {
    pub pid: u32,
    pub comm: String,
    pub direction: Direction,
    pub local: String,
    pub remote: String,
    pub connects: u64,
    pub failed_connects: u64,
    /// The state failed connects died in -> count.
    pub failed_states: BTreeMap<String, u64>,
    pub connect_p50_us: Option<f64>,
    pub connect_p99_us: Option<f64>,
    pub rtt_p50_us: Option<u64>,
    pub rtt_p99_us: Option<u64>,
    pub rtt_samples: u64,
    pub retransmits: u64,
    pub resets: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    /// `null` when unknown: received bytes need the kernel's
    /// `tcp_sock.bytes_received`, located through BTF.
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
    pub closes: u64,
    pub open: u64,
    pub lifetime_p50_ms: Option<f64>,
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl TcpTable {
    pub fn add_counts(&mut self, peer: Peer, c: &Counts) {
        let s = &mut self.peers.entry(peer).or_default().counts;
        s.connects += c.connects;
        s.failed_syn_sent += c.failed_syn_sent;
        s.failed_syn_recv += c.failed_syn_recv;
        s.closes += c.closes;
        s.lifetime_ns_total += c.lifetime_ns_total;
        s.retransmits += c.retransmits;
        s.resets_sent += c.resets_sent;
        s.resets_received += c.resets_received;
        s.connect_max_ns = s.connect_max_ns.max(c.connect_max_ns);
        s.lifetime_max_ns = s.lifetime_max_ns.max(c.lifetime_max_ns);
    }

    /// Bytes sent by a measured connection (closed or live).
    pub fn add_bytes_sent(&mut self, peer: Peer, bytes: u64) {
        let s = self.peers.entry(peer).or_default();
        s.bytes_sent = Some(s.bytes_sent.unwrap_or(0) + bytes);
    }

    /// Bytes received by a measured connection (closed or live).
    pub fn add_bytes_received(&mut self, peer: Peer, bytes: u64) {
        let s = self.peers.entry(peer).or_default();
        s.bytes_received = Some(s.bytes_received.unwrap_or(0) + bytes);
    }

    /// `count` samples in bucket `bucket` of histogram `kind`; out-of-range
    /// buckets (a newer kernel side) are ignored rather than trusted.
    pub fn add_samples(&mut self, peer: Peer, kind: HistKind, bucket: usize, count: u64) {
        if bucket < BUCKETS {
            self.peers.entry(peer).or_default().buckets(kind)[bucket] += count;
        }
    }

    /// A connection still open at the end.
    pub fn add_open(&mut self, peer: Peer) {
        self.peers.entry(peer).or_default().open += 1;
    }

    /// Rows, ordered by pid, direction, remote and local (stable, so that
    /// two captures of the same traffic diff cleanly).
    #[must_use]
    pub fn rows(&self) -> Vec<TcpRow> {
        let mut peers: Vec<(&Peer, &PeerStats)> = self.peers.iter().collect();
        peers.sort_by(|a, b| {
            (a.0.pid, a.0.direction, a.0.remote, a.0.local, &a.0.comm).cmp(&(
                b.0.pid,
                b.0.direction,
                b.0.remote,
                b.0.local,
                &b.0.comm,
            ))
        });
        peers.into_iter().map(|(p, s)| row(p, s)).collect()
    }
}

fn row(peer: &Peer, s: &PeerStats) -> TcpRow {
    let c = &s.counts;
    let connect = s.histogram(HistKind::ConnectNs);
    let rtt = s.histogram(HistKind::RttUs);
    let lifetime = s.histogram(HistKind::LifetimeNs);
    let us =
        |h: &LogHistogram, q: f64| (h.count() > 0).then(|| round1(h.percentile(q) as f64 / 1e3));
    let mut failed_states = BTreeMap::new();
    for (state, n) in [
        ("SYN_SENT", c.failed_syn_sent),
        ("SYN_RECV", c.failed_syn_recv),
    ] {
        if n > 0 {
            failed_states.insert(state.to_owned(), n);
        }
    }
    TcpRow {
        pid: peer.pid,
        comm: peer.comm.clone(),
        direction: peer.direction,
        local: peer.local.to_string(),
        remote: peer.remote.to_string(),
        connects: c.connects,
        failed_connects: c.failed_syn_sent + c.failed_syn_recv,
        failed_states,
        connect_p50_us: us(&connect, 0.5),
        connect_p99_us: us(&connect, 0.99),
        rtt_p50_us: (rtt.count() > 0).then(|| rtt.percentile(0.5)),
        rtt_p99_us: (rtt.count() > 0).then(|| rtt.percentile(0.99)),
        rtt_samples: rtt.count(),
        retransmits: c.retransmits,
        resets: c.resets_sent + c.resets_received,
        resets_sent: c.resets_sent,
        resets_received: c.resets_received,
        bytes_sent: s.bytes_sent,
        bytes_received: s.bytes_received,
        closes: c.closes,
        open: s.open,
        lifetime_p50_ms: (lifetime.count() > 0)
            .then(|| round1(lifetime.percentile(0.5) as f64 / 1e6)),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn peer(pid: u32, remote_port: u16) -> Peer {
        Peer {
            pid,
            comm: "client".into(),
            direction: Direction::Outbound,
            local: Addr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            remote: Addr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), remote_port),
        }
    }

    /// Counts from several CPUs add up, maxima take the largest, and
    /// percentiles come from the merged buckets.
    #[test]
    fn merges_cpus_into_one_row() {
        let mut t = TcpTable::default();
        let c = Counts {
            connects: 3,
            failed_syn_sent: 1,
            connect_max_ns: 40_000,
            ..Counts::default()
        };
        t.add_counts(peer(7, 80), &c);
        t.add_counts(
            peer(7, 80),
            &Counts {
                connects: 2,
                connect_max_ns: 90_000,
                ..c.clone()
            },
        );
        let b = qprof_common::hist::bucket_of(30_000);
        t.add_samples(peer(7, 80), HistKind::ConnectNs, b, 5);
        t.add_samples(peer(7, 80), HistKind::RttUs, 12, 10);
        let rows = t.rows();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.connects, r.failed_connects), (5, 2));
        assert_eq!(r.failed_states.get("SYN_SENT"), Some(&2));
        let p50 = r.connect_p50_us.unwrap_or_default();
        assert!((28.0..=32.0).contains(&p50), "{p50}");
        assert_eq!((r.rtt_p50_us, r.rtt_samples), (Some(12), 10));
        assert_eq!((r.bytes_sent, r.bytes_received), (None, None));
        assert_eq!(
            (r.local.as_str(), r.remote.as_str()),
            ("127.0.0.1:*", "127.0.0.1:80")
        );
    }

    /// IPv4-mapped IPv6 addresses print as IPv4; IPv6 ports get brackets.
    #[test]
    fn addresses_print_canonically() {
        let mapped = Ipv4Addr::LOCALHOST.to_ipv6_mapped();
        assert_eq!(
            Addr::new(IpAddr::V6(mapped), 5432).to_string(),
            "127.0.0.1:5432"
        );
        assert_eq!(
            Addr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 5432).to_string(),
            "[::1]:5432"
        );
        assert_eq!(
            Addr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0).to_string(),
            "[::1]:*"
        );
    }

    /// JSON has the documented fields, with null where nothing was measured.
    #[test]
    fn json_shape() {
        let mut t = TcpTable::default();
        t.add_counts(peer(1, 443), &Counts::default());
        t.add_bytes_sent(peer(1, 443), 10);
        t.add_samples(peer(1, 443), HistKind::RttUs, BUCKETS + 5, 1);
        let v = serde_json::to_value(t.rows()).unwrap_or_default();
        let r = &v[0];
        for f in [
            "pid",
            "comm",
            "local",
            "remote",
            "connects",
            "failed_connects",
            "connect_p50_us",
            "connect_p99_us",
            "rtt_p50_us",
            "rtt_p99_us",
            "retransmits",
            "resets",
            "bytes_sent",
            "bytes_received",
        ] {
            assert!(r.get(f).is_some(), "missing {f}: {r}");
        }
        assert!(r["rtt_p50_us"].is_null() && r["connect_p99_us"].is_null());
        assert_eq!(r["bytes_sent"].as_u64(), Some(10));
        assert!(r["bytes_received"].is_null(), "unknown bytes are null: {r}");
        assert_eq!(r["direction"], "outbound");
        t.add_bytes_received(peer(1, 443), 7);
        assert_eq!(t.rows()[0].bytes_received, Some(7));
    }
}
