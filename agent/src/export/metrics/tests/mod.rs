//! Tests of the metrics module: values fed through synthetic window tables
//! and read back from the encoded text, caps, and the two formats checked
//! by the reference parsers (`promtool check metrics`, and the `OpenMetrics`
//! parser of the Python `prometheus_client`).

mod formats;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use qprof_common::counters::Counter;
use qprof_common::hist::{BUCKETS, bucket_of};

use super::health::{BpfStats, ProgramStats};
use super::*;
use crate::aggregate::fingerprint::{id_hex, normalize};
use crate::aggregate::queries::Db;
use crate::aggregate::tcp::{Addr, Counts, Direction, HistKind, Peer};

/// One parsed sample line: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the sample lines of either format (no exemplars or timestamps
/// are written); label values are unescaped.
pub(super) fn samples(body: &str) -> Vec<Sample> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (head, value) = l.rsplit_once(' ').unwrap_or((l, "nan"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or(f64::NAN),
            };
            let (name, labels) = head.split_once('{').unwrap_or((head, "}"));
            (
                name.to_owned(),
                parse_labels(&labels[..labels.len() - 1]),
                value,
            )
        })
        .collect()
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        chars.next(); // opening quote
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => {}
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

/// The value of the one sample named `name` whose labels include `want`.
pub(super) fn value(all: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let mut hits = all.iter().filter(|(n, l, _)| {
        n == name
            && want
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
    });
    let hit = hits.next().map(|s| s.2);
    assert!(
        hits.next().is_none(),
        "{name} {want:?} matches several samples"
    );
    hit
}

fn count_named(all: &[Sample], name: &str) -> usize {
    all.iter().filter(|s| s.0 == name).count()
}

pub(super) fn openmetrics(m: &Metrics) -> String {
    let (ct, body) = m.encode(None).unwrap_or_default();
    assert_eq!(ct, OPENMETRICS_CONTENT_TYPE);
    body
}

pub(super) fn classic(m: &Metrics) -> String {
    let (ct, body) = m.encode(Some("text/plain")).unwrap_or_default();
    assert_eq!(ct, PROMETHEUS_TEXT_CONTENT_TYPE);
    body
}

pub(super) fn buckets_of(values: &[u64]) -> Vec<u32> {
    let mut b = vec![0u32; BUCKETS];
    for &v in values {
        b[bucket_of(v)] += 1;
    }
    b
}

pub(super) fn peer(pid: u32, comm: &str, remote_port: u16) -> Peer {
    Peer {
        pid,
        comm: comm.into(),
        direction: Direction::Outbound,
        local: Addr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        remote: Addr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)), remote_port),
    }
}

/// A window of `n` statements, statement i with i+1 calls of (i+1) µs
/// (total time grows with i), plus a hot one with errors and rows.
pub(super) fn query_window(n: u64) -> QueryTable {
    let mut t = QueryTable::with_capacity(10_000);
    for i in 0..n {
        let q = normalize(format!("SELECT c{i} FROM t WHERE id = 42").as_bytes());
        for _ in 0..=i {
            t.record(Db::Postgres, &q, (i + 1) * 1_000, false, None, 7);
        }
    }
    let hot = normalize(b"UPDATE accounts SET balance = 'secret' WHERE id = 42");
    for k in 0..10u64 {
        t.record(Db::Postgres, &hot, 2_000_000, k < 3, Some(2), 9);
    }
    t
}

/// Fingerprint values add up across windows; the histogram's count, sum
/// and buckets are the calls and latencies fed; the info text is the
/// normalized one, with no literal of the raw statement.
#[test]
fn query_values_accumulate() {
    let m = Metrics::default();
    m.observe_queries(&query_window(3));
    m.observe_queries(&query_window(3));
    let body = openmetrics(&m);
    let all = samples(&body);
    let hot = normalize(b"UPDATE accounts SET balance = ? WHERE id = ?");
    let id = id_hex(hot.id);
    let l = [("db", "postgres"), ("fingerprint_id", id.as_str())];
    assert_eq!(
        value(&all, "qprof_query_duration_seconds_count", &l),
        Some(20.0)
    );
    let sum = value(&all, "qprof_query_duration_seconds_sum", &l).unwrap_or(0.0);
    assert!((sum - 0.04).abs() < 1e-9, "{sum}");
    assert_eq!(value(&all, "qprof_query_errors_total", &l), Some(6.0));
    assert_eq!(value(&all, "qprof_query_rows_total", &l), Some(40.0));
    // 2 ms lands in le=0.002 (inclusive), none below.
    let le = |b: &str| {
        value(
            &all,
            "qprof_query_duration_seconds_bucket",
            &[l[1], ("le", b)],
        )
    };
    assert_eq!(
        (le("0.001"), le("0.002"), le("+Inf")),
        (Some(0.0), Some(20.0), Some(20.0))
    );
    let c2 = id_hex(normalize(b"SELECT c2 FROM t WHERE id = 1").id);
    let l2 = [("fingerprint_id", c2.as_str())];
    assert_eq!(
        value(&all, "qprof_query_duration_seconds_count", &l2),
        Some(6.0)
    );
    assert_eq!(
        value(
            &all,
            "qprof_query_duration_seconds_bucket",
            &[l2[0], ("le", "0.000003")]
        ),
        None
    );
    assert_eq!(
        value(
            &all,
            "qprof_query_duration_seconds_bucket",
            &[l2[0], ("le", "0.00001")]
        ),
        Some(6.0)
    );
    let info = all
        .iter()
        .find(|s| s.0 == "qprof_query_info" && s.1.get("fingerprint_id") == Some(&id));
    assert_eq!(
        info.and_then(|s| s.1.get("fingerprint"))
            .map(String::as_str),
        Some("UPDATE accounts SET balance = ? WHERE id = ?")
    );
    // Literals can only leak through the statement text label; other
    // families' values (the agent's own RSS, CPU seconds…) and hex ids may
    // contain any digits.
    let labels: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("qprof_query"))
        .filter_map(|l| {
            l.split_once("fingerprint=\"")
                .and_then(|(_, rest)| rest.split_once('"'))
        })
        .map(|(text, _)| text)
        .collect();
    assert!(!labels.is_empty());
    assert!(
        !body.contains("secret") && labels.iter().all(|l| !l.contains("42")),
        "a literal leaked: {labels:?}"
    );
}

/// 1,500 fingerprints under a cap of 200: exactly 200 get series, they are
/// the 200 with the most total time, the rest sum into "other", no call is
/// lost, and the whole scrape holds well over 1,000 series.
#[test]
fn queries_capped() {
    let m = Metrics::new(MetricsConfig {
        top_queries: 200,
        ..MetricsConfig::default()
    });
    m.observe_queries(&query_window(1_500));
    let all = samples(&openmetrics(&m));
    let counts: Vec<&Sample> = all
        .iter()
        .filter(|s| s.0 == "qprof_query_duration_seconds_count")
        .collect();
    assert_eq!(counts.len(), 201);
    let total: f64 = counts.iter().map(|s| s.2).sum();
    let fed = (1..=1_500u64).sum::<u64>() + 10;
    assert_eq!(total as u64, fed);
    let other = value(
        &all,
        "qprof_query_duration_seconds_count",
        &[("fingerprint_id", "other")],
    );
    // c_i totals (i+1)² µs: the top 200 are c1300..c1499 (the hot UPDATE,
    // 20 ms, ranks below them and goes to "other").
    let tracked: u64 = (1_301..=1_500u64).sum::<u64>();
    assert_eq!(other, Some((fed - tracked) as f64));
    let c1499 = id_hex(normalize(b"SELECT c1499 FROM t WHERE id = 1").id);
    assert_eq!(
        value(
            &all,
            "qprof_query_duration_seconds_count",
            &[("fingerprint_id", &c1499)]
        ),
        Some(1_500.0)
    );
    assert_eq!(
        count_named(&all, "qprof_query_info"),
        200,
        "no info for other"
    );
    assert!(all.len() > 5_000, "{} series", all.len());
    assert_eq!(
        value(&all, "qprof_metrics_series", &[("family", "queries")]),
        Some(201.0)
    );
}

/// Syscall pairs merge over pids of one comm; errors keep their errno
/// names (unattributed ones as "unknown"); the histogram counts the timed
/// calls with the exact sum when all were timed, an estimate otherwise.
#[test]
fn syscall_values() {
    let mut t = SyscallTable::default();
    // pid 1 and 2 are both "pg": openat (257), every call timed.
    t.add(1, 257, 2, 1, 3_000, 2_000, &buckets_of(&[1_000, 2_000]));
    t.add(2, 257, 1, 1, 40_000, 40_000, &buckets_of(&[40_000]));
    t.add_errno(1, 257, 2, 1); // ENOENT; pid 2's error has no errno
    // pid 3 "app": read (0), 1,000 calls, 10 timed (~5 µs).
    t.add(3, 0, 1_000, 0, 50_000, 5_000, &buckets_of(&[5_000; 10]));
    t.set_comms(|pid| if pid == 3 { "app".into() } else { "pg".into() });
    let m = Metrics::default();
    m.observe_syscalls(&t);
    m.observe_syscalls(&t);
    let all = samples(&openmetrics(&m));
    let pg = [("comm", "pg"), ("syscall", "openat")];
    assert_eq!(value(&all, "qprof_syscall_calls_total", &pg), Some(6.0));
    assert_eq!(
        value(&all, "qprof_syscall_duration_seconds_count", &pg),
        Some(6.0)
    );
    let sum = value(&all, "qprof_syscall_duration_seconds_sum", &pg).unwrap_or(0.0);
    assert!((sum - 86e-6).abs() < 1e-12, "exact sum {sum}");
    let err = |e| {
        value(
            &all,
            "qprof_syscall_errors_total",
            &[pg[0], pg[1], ("errno", e)],
        )
    };
    assert_eq!((err("ENOENT"), err("unknown")), (Some(2.0), Some(2.0)));
    let le = |b| {
        value(
            &all,
            "qprof_syscall_duration_seconds_bucket",
            &[pg[0], ("le", b)],
        )
    };
    assert_eq!(
        (le("0.000001"), le("0.000005"), le("0.00005")),
        (Some(2.0), Some(4.0), Some(6.0))
    );
    let app = [("comm", "app"), ("syscall", "read")];
    assert_eq!(
        value(&all, "qprof_syscall_calls_total", &app),
        Some(2_000.0)
    );
    assert_eq!(
        value(&all, "qprof_syscall_duration_seconds_count", &app),
        Some(20.0)
    );
    let sampled = value(&all, "qprof_syscall_duration_seconds_sum", &app).unwrap_or(0.0);
    assert!(
        (sampled - 100e-6).abs() < 100e-6 * 0.07,
        "estimated sum {sampled}"
    );
    assert_eq!(count_named(&all, "qprof_syscall_errors_total"), 2);
}

/// TCP rows merge per (remote, comm); RTT microsecond buckets and connect
/// nanosecond buckets become seconds; retransmits and resets add up.
#[test]
fn tcp_values() {
    let mut t = TcpTable::default();
    let c = Counts {
        connects: 2,
        retransmits: 3,
        resets_sent: 1,
        resets_received: 1,
        connect_max_ns: 300_000,
        ..Counts::default()
    };
    t.add_counts(peer(1, "psql", 5432), &c);
    t.add_counts(peer(2, "psql", 5432), &c);
    t.add_samples(peer(1, "psql", 5432), HistKind::RttUs, bucket_of(40), 5);
    t.add_samples(peer(2, "psql", 5432), HistKind::RttUs, bucket_of(3_000), 1);
    t.add_samples(
        peer(1, "psql", 5432),
        HistKind::ConnectNs,
        bucket_of(200_000),
        4,
    );
    t.add_samples(peer(3, "curl", 443), HistKind::RttUs, bucket_of(100_000), 2);
    let m = Metrics::default();
    m.observe_tcp(&t);
    let all = samples(&openmetrics(&m));
    let l = [("remote", "10.0.0.7:5432"), ("comm", "psql")];
    assert_eq!(value(&all, "qprof_tcp_retransmits_total", &l), Some(6.0));
    assert_eq!(value(&all, "qprof_tcp_resets_total", &l), Some(4.0));
    assert_eq!(value(&all, "qprof_tcp_rtt_seconds_count", &l), Some(6.0));
    let rtt = |b| {
        value(
            &all,
            "qprof_tcp_rtt_seconds_bucket",
            &[l[0], l[1], ("le", b)],
        )
    };
    assert_eq!(
        (rtt("0.000025"), rtt("0.00005"), rtt("0.0025"), rtt("0.005")),
        (Some(0.0), Some(5.0), Some(5.0), Some(6.0))
    );
    let conn = |b| {
        value(
            &all,
            "qprof_tcp_connect_duration_seconds_bucket",
            &[l[0], l[1], ("le", b)],
        )
    };
    assert_eq!((conn("0.0001"), conn("0.00025")), (Some(0.0), Some(4.0)));
    let curl = [("remote", "10.0.0.7:443"), ("comm", "curl")];
    // 100 ms sits in the kernel bucket [98.3, 106.5) ms, whose midpoint is
    // past 0.1: the documented half-bucket error.
    let curl_rtt = |b| value(&all, "qprof_tcp_rtt_seconds_bucket", &[curl[0], ("le", b)]);
    assert_eq!((curl_rtt("0.05"), curl_rtt("0.25")), (Some(0.0), Some(2.0)));
}

/// Health: every kernel counter id is a series from the start; losses,
/// map fill, BPF program stats and the agent's setters read back.
#[test]
fn health_values() {
    let m = Metrics::default();
    let all = samples(&openmetrics(&m));
    for c in Counter::ALL {
        assert_eq!(
            value(&all, "qprof_lost_events_total", &[("cause", c.name())]),
            Some(0.0),
            "{}",
            c.name()
        );
    }
    assert_eq!(
        value(&all, "qprof_bpf_stats_enabled", &[]),
        None,
        "unknown until set"
    );
    m.add_lost([("stack_collision", 5), ("query_table_evicted", 2)]);
    m.add_lost([("stack_collision", 1)]);
    m.set_map_fill("SYS_STATS", 2_048, 8_192);
    m.set_bpf_stats(BpfStats {
        enabled: Some(true),
        programs: vec![ProgramStats {
            name: "sys_enter".into(),
            run_time: Duration::from_millis(1_500),
            run_count: 42,
        }],
        unreadable: 0,
    });
    m.window_written();
    m.window_written();
    m.capture_taken("cpu");
    m.set_store_bytes("continuous", 1 << 20);
    let all = samples(&classic(&m));
    assert_eq!(
        value(
            &all,
            "qprof_lost_events_total",
            &[("cause", "stack_collision")]
        ),
        Some(6.0)
    );
    assert_eq!(
        value(
            &all,
            "qprof_lost_events_total",
            &[("cause", "query_table_evicted")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(&all, "qprof_bpf_map_fill_ratio", &[("map", "SYS_STATS")]),
        Some(0.25)
    );
    assert_eq!(
        value(&all, "qprof_bpf_map_capacity", &[("map", "SYS_STATS")]),
        Some(8_192.0)
    );
    assert_eq!(value(&all, "qprof_bpf_stats_enabled", &[]), Some(1.0));
    assert_eq!(
        value(
            &all,
            "qprof_bpf_program_run_time_seconds_total",
            &[("program", "sys_enter")]
        ),
        Some(1.5)
    );
    assert_eq!(
        value(
            &all,
            "qprof_bpf_program_runs_total",
            &[("program", "sys_enter")]
        ),
        Some(42.0)
    );
    assert_eq!(
        value(&all, "qprof_agent_windows_written_total", &[]),
        Some(2.0)
    );
    assert_eq!(
        value(&all, "qprof_agent_captures_total", &[("kind", "cpu")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &all,
            "qprof_agent_store_size_bytes",
            &[("store", "continuous")]
        ),
        Some(1_048_576.0)
    );
    assert!(value(&all, "qprof_agent_resident_memory_bytes", &[]).is_some_and(|v| v > 1e6));
    assert!(value(&all, "qprof_agent_cpu_seconds_total", &[]).is_some_and(|v| v > 0.0));
}

/// `Accept` negotiation: `OpenMetrics` unless text/plain ranks higher.
#[test]
fn accept_negotiation() {
    let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    assert!(!prefers_text_plain(Some(prometheus)));
    assert!(!prefers_text_plain(None));
    assert!(!prefers_text_plain(Some("*/*")));
    assert!(prefers_text_plain(Some("text/plain;version=0.0.4")));
    assert!(prefers_text_plain(Some(
        "text/plain; q=0.9, application/openmetrics-text; q=0.5"
    )));
    assert!(!prefers_text_plain(Some("text/plain;q=0, */*")));
    assert!(!prefers_text_plain(Some(
        "text/plain;q=0.5,application/openmetrics-text;q=0.5"
    )));
}

/// Over 40 windows whose slow statements keep changing (so series are
/// evicted and admitted), every series only grows from one scrape to the
/// next while it exists, "other" included, the cap holds, and every call
/// is in a visible series or in the last value of one that went away.
#[test]
fn series_stay_monotonic_under_churn() {
    let m = Metrics::new(MetricsConfig {
        top_queries: 20,
        ..MetricsConfig::default()
    });
    let mut prev: BTreeMap<String, f64> = BTreeMap::new();
    let (mut fed, mut gone) = (0u64, 0.0);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for w in 0..40u64 {
        let mut t = QueryTable::default();
        for _ in 0..300 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // 60 statements; which ones are slow moves every 10 windows.
            let k = rng % 60;
            let rank = (k + w / 10 * 15) % 60;
            let q = normalize(format!("SELECT s{k} FROM t").as_bytes());
            t.record(
                Db::Sqlite,
                &q,
                1_000 * (rank + 1).pow(2),
                k.is_multiple_of(7),
                Some(1),
                1,
            );
            fed += 1;
        }
        m.observe_queries(&t);
        let all = samples(&openmetrics(&m));
        let mut now: BTreeMap<String, f64> = BTreeMap::new();
        let mut calls = 0.0;
        for (name, labels, v) in &all {
            if !name.starts_with("qprof_query_") || name == "qprof_query_info" {
                continue;
            }
            let key = format!("{name}{labels:?}");
            if let Some(&before) = prev.get(&key) {
                assert!(*v >= before, "window {w}: {key} went {before} -> {v}");
            }
            now.insert(key, *v);
            if name == "qprof_query_duration_seconds_count" {
                calls += v;
            }
        }
        for (key, v) in &prev {
            if key.starts_with("qprof_query_duration_seconds_count") && !now.contains_key(key) {
                gone += v;
            }
        }
        prev = now;
        assert_eq!((calls + gone) as u64, fed, "window {w}");
        assert!(count_named(&all, "qprof_query_duration_seconds_count") <= 21);
    }
    let all = samples(&openmetrics(&m));
    let evicted = value(
        &all,
        "qprof_metrics_series_evicted_total",
        &[("family", "queries")],
    );
    // The slow set moved 3 times by 15 of the 20 tracked: most must follow.
    assert!(evicted.is_some_and(|e| e >= 20.0), "{evicted:?}");
}
