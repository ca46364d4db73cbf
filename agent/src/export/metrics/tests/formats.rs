//! The two encodings checked by the reference parsers, and the encode
//! time of a full scrape.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::super::health::BpfStats;
use super::super::host::{HostSnapshot, ProcessSample};
use super::super::*;
use super::{buckets_of, classic, openmetrics, peer, query_window, samples};
use crate::aggregate::tcp::{Counts, HistKind};
use qprof_common::hist::bucket_of;

/// A Metrics fed with every family, hostile label values included, and
/// over 1,000 series.
fn full_metrics() -> Metrics {
    let m = Metrics::default();
    m.observe_queries(&query_window(300));
    let mut s = SyscallTable::default();
    for pid in 0..150u32 {
        // The hostile comms (pids 0-2) are the busiest: they get series.
        let calls = if pid < 3 { 100 } else { 10 };
        s.add(pid, pid % 40, calls, 2, 1_000, 400, &buckets_of(&[50; 10]));
        s.add_errno(pid, pid % 40, 11, 2);
    }
    s.set_comms(|pid| match pid {
        0 => "quote\"back\\slash\nnl".into(),
        1 => String::new(),
        2 => "é".repeat(100),
        p => format!("proc{p}"),
    });
    m.observe_syscalls(&s);
    let mut t = TcpTable::default();
    for port in 1..150u16 {
        t.add_counts(
            peer(1, "client", port),
            &Counts {
                connects: 1,
                retransmits: 1,
                ..Counts::default()
            },
        );
        t.add_samples(peer(1, "client", port), HistKind::RttUs, bucket_of(50), 3);
    }
    m.observe_tcp(&t);
    m.add_lost([("stack_error", 3)]);
    m.set_map_fill("QUERY_EVENTS", 1, 4);
    m.set_bpf_stats(BpfStats {
        enabled: Some(false),
        ..BpfStats::default()
    });
    m.window_written();
    m.capture_taken("memory");
    m.set_store_bytes("captures", 123);
    m.set_host(HostSnapshot {
        cpu_usage_ratio: 0.25,
        cpus: 2,
        memory_total_bytes: 1 << 34,
        memory_available_bytes: 1 << 33,
        swap_total_bytes: 0,
        swap_used_bytes: 0,
        processes: vec![ProcessSample {
            pid: 1,
            comm: "init".into(),
            cpu_seconds: 1.5,
            rss_bytes: 4096,
        }],
    });
    m.set_process_counters(
        vec![crate::probes::counters::ProcessCounts {
            pid: 9,
            comm: "postgres".into(),
            task_clock_ns: 2_000_000_000,
            context_switches: 5,
            page_faults: 7,
        }],
        &crate::probes::counters::CounterLosses::default(),
    );
    m
}

/// Runs `cmd` with `input` on stdin; returns (success, stdout + stderr).
fn run_with_stdin(cmd: &mut Command, input: &str) -> (bool, String) {
    let child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        panic!(
            "cannot run {cmd:?}: install Debian's prometheus and python3-prometheus-client (cargo xtask test does)"
        );
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().expect("wait");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The Prometheus text encoding passes `promtool check metrics` with no
/// error and no lint warning (it prints nothing then).
#[test]
fn prometheus_text_passes_promtool() {
    let body = classic(&full_metrics());
    assert!(!body.contains("# EOF") && !body.contains("# UNIT"));
    let (ok, out) = run_with_stdin(Command::new("promtool").args(["check", "metrics"]), &body);
    assert!(ok && out.trim().is_empty(), "promtool: {out}");
    // The escaped label value round-trips.
    let all = samples(&body);
    let comms: Vec<&str> = all
        .iter()
        .filter_map(|s| s.1.get("comm").map(String::as_str))
        .collect();
    assert!(comms.contains(&"quote\"back\\slash nl") && comms.contains(&"unknown"));
    let long = format!("{}…", "é".repeat(30));
    assert!(
        comms.contains(&long.as_str()),
        "cut at 64 bytes with the marker"
    );
    assert!(all.iter().all(|s| s.1.values().all(|v| v.len() <= 256)));
}

/// The `OpenMetrics` encoding parses with the strict `OpenMetrics` parser of
/// the reference Python client, with the families and types expected.
#[test]
fn openmetrics_passes_reference_parser() {
    let body = openmetrics(&full_metrics());
    assert!(body.ends_with("# EOF\n"));
    let script = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n\
        fams = list(p(sys.stdin.read()))\n\
        print('\\n'.join(sorted(f'{f.name} {f.type} {len(f.samples)}' for f in fams)))\n";
    let (ok, out) = run_with_stdin(Command::new("/usr/bin/python3").args(["-c", script]), &body);
    assert!(ok, "openmetrics parser: {out}");
    for fam in [
        "qprof_query_duration_seconds histogram",
        "qprof_query_errors counter",
        "qprof_query info",
        "qprof_syscall_errors counter",
        "qprof_tcp_rtt_seconds histogram",
        "qprof_lost_events counter",
        "qprof_traced_process_task_clock_seconds counter",
        "qprof_host_cpu_usage_ratio gauge",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{fam} "))),
            "{fam} missing:\n{out}"
        );
    }
}

/// Encode time with a full scrape (prints the figure; the target is a
/// `/metrics` scrape <= 50 ms with >= 1,000 series, measured in the agent
/// benchmark; this only catches a pathological regression).
#[test]
fn encode_time() {
    let m = full_metrics();
    m.observe_queries(&query_window(1_000));
    let series = samples(&openmetrics(&m)).len();
    assert!(series >= 1_000);
    for (name, accept) in [("openmetrics", None), ("text 0.0.4", Some("text/plain"))] {
        let start = std::time::Instant::now();
        let rounds = 10;
        let mut bytes = 0;
        for _ in 0..rounds {
            bytes = m.encode(accept).map_or(0, |(_, b)| b.len());
        }
        let each = start.elapsed() / rounds;
        eprintln!("encode {name}: {series} series, {bytes} bytes, {each:?} per scrape");
        assert!(each < Duration::from_secs(1), "{each:?}");
    }
}
