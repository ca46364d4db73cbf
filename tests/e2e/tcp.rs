//! End-to-end TCP tracing against a fixture whose connections and bytes are
//! known exactly, checked against `ss -ti` (RTT) and the kernel's own
//! `RetransSegs` counter in a namespace where nftables drops real packets.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use qprof_e2e::{
    TempDir, assert_fails_with, build_fixture, net, require_root, run_qprof,
    session::{Fixture, QprofRun},
};
use serde_json::Value;

/// Every row of a `--json` report.
fn rows(json: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(json).unwrap_or_else(|e| panic!("reading {}: {e}", json.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON: {e}: {text}"))
}

/// The one row of `pid` whose remote is `remote`.
fn row<'a>(rows: &'a [Value], pid: u32, remote: &str) -> &'a Value {
    let found: Vec<&Value> = rows
        .iter()
        .filter(|r| r["pid"] == pid && r["remote"] == remote)
        .collect();
    assert_eq!(found.len(), 1, "rows for pid {pid} to {remote}: {rows:#?}");
    found[0]
}

fn num(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a count: {v}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "no samples");
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Samples `ss -ti` RTTs of connections to `port` until `stop` is set.
fn sample_ss(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<f64>> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            all.extend(net::ss_rtts_us(port));
            std::thread::sleep(Duration::from_millis(100));
        }
        all
    })
}

const CONNS: u64 = 8;
const ROUNDS: u64 = 600;
const SIZE: u64 = 200;

/// Exact connect count for the client's pid, exact bytes both ways, RTT p50
/// within ±50% (or ±100 µs) of `ss -ti` read during the transfer, a refused
/// connect counted as failed in `SYN_SENT`, and the data of a client that
/// exits before the capture ends kept.
#[test]
fn loopback_connects_rtt_bytes_and_failures() {
    require_root();
    let dir = TempDir::new("tcp-loopback");
    let fixture = build_fixture("tcp_echo", dir.path());
    let (port, closed) = (net::closed_port(), net::closed_port());
    let (port_s, closed_s) = (port.to_string(), closed.to_string());
    let _server = Fixture::start(&fixture, &["server", "127.0.0.1", &port_s]);
    let args = [CONNS, ROUNDS, SIZE].map(|v| v.to_string());
    let mut client = Fixture::start(
        &fixture,
        &[
            "pingpong",
            "127.0.0.1",
            &port_s,
            &args[0],
            &args[1],
            &args[2],
            "3000",
            &closed_s,
        ],
    );
    let json = dir.join("tcp.json");
    let pid = client.pid.to_string();
    let mut qprof = QprofRun::start(&[
        "record",
        "tcp",
        "--pid",
        &pid,
        "--duration",
        "120s",
        "--json",
        json.to_str().unwrap_or_default(),
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_ss(port, Arc::clone(&stop));
    client.run_to_done();
    stop.store(true, Ordering::Relaxed);
    let ss = sampler.join().unwrap_or_default();
    let client_pid = client.pid;
    assert!(client.finish().success(), "client failed");
    std::thread::sleep(Duration::from_millis(300));
    qprof.interrupt();
    let fin = qprof.wait();
    assert!(fin.status.success(), "qprof failed: {}", fin.stderr);

    let rows = rows(&json);
    assert!(
        rows.iter().all(|r| r["pid"] == client_pid),
        "--pid leaked: {rows:#?}"
    );
    let main = row(&rows, client_pid, &format!("127.0.0.1:{port}"));
    assert_eq!(num(main, "connects"), CONNS, "{main}");
    assert_eq!(num(main, "failed_connects"), 0, "{main}");
    assert_eq!(main["direction"], "outbound");
    assert_eq!(main["local"], "127.0.0.1:*");
    assert_eq!(num(main, "bytes_sent"), CONNS * ROUNDS * SIZE, "{main}");
    assert_eq!(num(main, "bytes_received"), CONNS * ROUNDS * SIZE, "{main}");
    assert_eq!(num(main, "closes"), CONNS, "{main}");
    assert!(
        main["connect_p50_us"].as_f64().is_some_and(|v| v > 0.0),
        "{main}"
    );
    let rtt = num(main, "rtt_p50_us") as f64;
    let reference = median(ss);
    eprintln!("rtt p50: qprof {rtt} µs, ss {reference:.1} µs");
    assert!(
        (rtt - reference).abs() <= (0.5 * reference).max(100.0),
        "qprof rtt p50 {rtt} µs vs ss {reference} µs"
    );
    let failed = row(&rows, client_pid, &format!("127.0.0.1:{closed}"));
    assert_eq!(num(failed, "failed_connects"), 1, "{failed}");
    assert_eq!(failed["failed_states"]["SYN_SENT"], 1, "{failed}");
    assert_eq!(num(failed, "connects"), 0, "{failed}");
    assert!(
        num(failed, "resets") >= 1,
        "the refusal is a reset received: {failed}"
    );
}

/// IPv6 connections on `::1` are seen: connects, bytes and RTT per remote,
/// and host-wide the server's accepted side shows as an inbound row.
#[test]
fn ipv6_connects_are_seen() {
    require_root();
    let dir = TempDir::new("tcp-v6");
    let fixture = build_fixture("tcp_echo", dir.path());
    let port = net::closed_port();
    let port_s = port.to_string();
    let server = Fixture::start(&fixture, &["server", "::1", &port_s]);
    let mut client = Fixture::start(
        &fixture,
        &["pingpong", "::1", &port_s, "3", "50", "100", "1000", "0"],
    );
    let json = dir.join("tcp6.json");
    let mut qprof = QprofRun::start(&[
        "record",
        "tcp",
        "--duration",
        "120s",
        "--json",
        json.to_str().unwrap_or_default(),
    ]);
    client.run_to_done();
    qprof.interrupt();
    let fin = qprof.wait();
    assert!(fin.status.success(), "qprof failed: {}", fin.stderr);
    let rows = rows(&json);
    let out = row(&rows, client.pid, &format!("[::1]:{port}"));
    assert_eq!(num(out, "connects"), 3, "{out}");
    assert_eq!(out["local"], "[::1]:*");
    assert_eq!(num(out, "bytes_sent"), 3 * 50 * 100, "{out}");
    assert_eq!(num(out, "bytes_received"), 3 * 50 * 100, "{out}");
    assert!(num(out, "rtt_p50_us") > 0, "{out}");
    let inbound = row(&rows, server.pid, "[::1]:*");
    assert_eq!(inbound["local"], format!("[::1]:{port}"));
    assert_eq!(num(inbound, "connects"), 3, "{inbound}");
    assert_eq!(inbound["direction"], "inbound");
}

/// Real retransmits (nftables drops 10% of the client's segments on the
/// input hook of a test namespace): qprof's count for the two processes
/// equals the namespace's `RetransSegs` delta within 5%.
#[test]
fn retransmits_match_the_kernel_counter() {
    require_root();
    let dir = TempDir::new("tcp-retrans");
    let fixture = build_fixture("tcp_echo", dir.path());
    let fixture_s = fixture.to_str().unwrap_or_default();
    let ns = net::NetNs::create("retrans");
    ns.run(&["nft", "add", "table", "inet", "t"]);
    ns.run(&[
        "nft",
        "add",
        "chain",
        "inet",
        "t",
        "inp",
        "{ type filter hook input priority 0; }",
    ]);
    ns.run(&[
        "nft", "add", "rule", "inet", "t", "inp", "tcp", "dport", "5555", "numgen", "random",
        "mod", "10", "==", "0", "counter", "drop",
    ]);
    let ip = Path::new("ip");
    let server = Fixture::start(
        ip,
        &ns.exec_args(fixture_s, &["server", "127.0.0.1", "5555"]),
    );
    let mut client = Fixture::start(
        ip,
        &ns.exec_args(fixture_s, &["stream", "127.0.0.1", "5555", "16000000"]),
    );
    let (spid, cpid) = (server.pid.to_string(), client.pid.to_string());
    let json = dir.join("retrans.json");
    let mut qprof = QprofRun::start(&[
        "record",
        "tcp",
        "--pid",
        &spid,
        "--pid",
        &cpid,
        "--duration",
        "120s",
        "--json",
        json.to_str().unwrap_or_default(),
    ]);
    let before = ns.tcp_counter("RetransSegs");
    client.run_to_done();
    // Let late timers (a lost last ACK) fire inside the window.
    std::thread::sleep(Duration::from_millis(1500));
    let after = ns.tcp_counter("RetransSegs");
    qprof.interrupt();
    let fin = qprof.wait();
    assert!(fin.status.success(), "qprof failed: {}", fin.stderr);
    let drops = ns.run(&["nft", "list", "chain", "inet", "t", "inp"]);
    let kernel = after - before;
    let ours: u64 = rows(&json).iter().map(|r| num(r, "retransmits")).sum();
    eprintln!("retransmits: qprof {ours}, RetransSegs delta {kernel}; nft: {drops}");
    assert!(kernel >= 20, "too few drops to compare: {kernel}");
    let diff = ours.abs_diff(kernel) as f64;
    assert!(
        diff <= 0.05 * kernel as f64,
        "qprof {ours} vs RetransSegs {kernel}"
    );
}

/// A pid that does not exist is refused before anything is loaded.
#[test]
fn nonexistent_pid_is_refused() {
    let out = run_qprof(&["record", "tcp", "--pid", "4194999", "--duration", "1s"]);
    assert_fails_with(&out, "no process with pid 4194999");
}

/// A malformed duration is refused with a hint.
#[test]
fn bad_duration_is_refused() {
    let out = run_qprof(&["record", "tcp", "--duration", "tenseconds"]);
    assert_fails_with(&out, "invalid duration");
}

/// A --json path in a missing directory fails before tracing starts.
#[test]
fn json_into_missing_dir_is_refused_early() {
    let out = run_qprof(&[
        "record",
        "tcp",
        "--duration",
        "1s",
        "--json",
        "/nonexistent-qprof-dir/tcp.json",
    ]);
    assert_fails_with(&out, "does not exist");
    assert!(
        !qprof_e2e::stderr(&out).contains("recording"),
        "it started tracing"
    );
}
