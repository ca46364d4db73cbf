//! End-to-end `libpq` query tracing against a real PostgreSQL server started
//! by the harness, checked against pgbench's own counts and latency log.

use std::{path::Path, time::Duration};

use qprof_e2e::{
    TempDir, assert_fails_with,
    pg_queries::{pg_rows, pgbench_modes_match, psql_script_matches, record_queries_json},
    postgres::PgServer,
    require_root, run_qprof,
    session::QprofRun,
};
use serde_json::Value;

/// pgbench's select-only script with the simple, extended and prepared
/// protocols: the call
/// count equals the transactions pgbench executed, and p50/p99 agree with
/// pgbench's own per-transaction log.
#[test]
fn pgbench_counts_and_latency_match() {
    require_root();
    let server = PgServer::start("pgbench");
    let dir = TempDir::new("pgbench");
    pgbench_modes_match(&server, &dir);
}

/// psql running a script: statement counts, rows and the failing statement's
/// error are right; literals never appear in fingerprints.
#[test]
fn psql_script_counts_and_errors() {
    require_root();
    let server = PgServer::start("psql");
    let dir = TempDir::new("psql");
    psql_script_matches(&server, &dir);
}

/// A client started after qprof is running is traced.
#[test]
fn client_started_later_is_traced() {
    require_root();
    let server = PgServer::start("later");
    let dir = TempDir::new("later");
    let json = dir.join("later.json");
    let mut qprof = record_queries_json(&json);
    // The first statement gives qprof time to find the new process's libpq.
    let out = server
        .client("psql")
        .args([
            "-X",
            "-q",
            "-c",
            "SELECT pg_sleep(1.5)",
            "-c",
            "SELECT 4242 AS later",
        ])
        .arg("postgres")
        .output();
    assert!(out.is_ok_and(|o| o.status.success()), "psql failed");
    std::thread::sleep(Duration::from_millis(300));
    qprof.interrupt();
    let fin = qprof.wait();
    assert!(fin.status.success(), "qprof failed: {}", fin.stderr);
    let rows = pg_rows(&json);
    assert_eq!(
        rows.get("SELECT ? AS later").map(|r| r["calls"].clone()),
        Some(Value::from(1)),
        "{:?}",
        rows.keys()
    );
}

/// Bad input for `record queries`.
#[test]
fn bad_queries_inputs() {
    require_root();
    assert_fails_with(
        &run_qprof(&["record", "queries", "--pid", "4194304"]),
        "no process with pid 4194304",
    );
    assert_fails_with(
        &run_qprof(&["record", "queries", "--top", "none"]),
        "invalid --top",
    );
    assert_fails_with(
        &run_qprof(&[
            "record",
            "queries",
            "--json",
            "/nonexistent-qprof-dir/q.json",
        ]),
        "/nonexistent-qprof-dir does not exist",
    );
}

/// `record cpu --by-query`: CPU burnt by a client inside one query shows
/// under that query's fingerprint, and `flamegraph --query` draws it alone;
/// `record offcpu --by-query` puts the time waited for a query under it.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: a capture, then three views of it"
)]
fn cpu_by_query_flamegraph() {
    require_root();
    let server = PgServer::start("byquery");
    let dir = TempDir::new("byquery");
    let fixture = qprof_e2e::build_fixture_with(
        "pq_burn",
        dir.path(),
        &["-I/usr/include/postgresql", "-lpq"],
    );
    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable",
        server.port
    );
    let mut client = qprof_e2e::session::Fixture::start(&fixture, &[&conninfo]);
    let pid = client.pid.to_string();
    let (cpu, queries) = (dir.join("cpu.pb.gz"), dir.join("q.json"));
    let mut rec_q = QprofRun::start(&[
        "record",
        "queries",
        "--pid",
        &pid,
        "--duration",
        "5m",
        "--json",
        queries.to_str().unwrap_or_default(),
    ]);
    let mut rec_cpu = QprofRun::start(&[
        "record",
        "cpu",
        "--by-query",
        "--pid",
        &pid,
        "--hz",
        "199",
        "--duration",
        "5m",
        "-o",
        cpu.to_str().unwrap_or_default(),
    ]);
    let offcpu = dir.join("off.pb.gz");
    let mut rec_off = QprofRun::start(&[
        "record",
        "offcpu",
        "--by-query",
        "--pid",
        &pid,
        "--duration",
        "5m",
        "-o",
        offcpu.to_str().unwrap_or_default(),
    ]);
    client.run_to_done();
    rec_cpu.interrupt();
    rec_q.interrupt();
    rec_off.interrupt();
    let (fin_cpu, fin_q, fin_off) = (rec_cpu.wait(), rec_q.wait(), rec_off.wait());
    assert!(
        fin_cpu.status.success() && fin_q.status.success(),
        "{}\n{}",
        fin_cpu.stderr,
        fin_q.stderr
    );
    assert!(fin_off.status.success(), "{}", fin_off.stderr);
    let rows = pg_rows(&queries);
    let id = rows["SELECT ? AS burn_query"]["fingerprint_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(id.len(), 16, "{rows:?}");
    let svg = dir.join("q.svg");
    let out = run_qprof(&[
        "flamegraph",
        cpu.to_str().unwrap_or_default(),
        "--query",
        &id,
        "-o",
        svg.to_str().unwrap_or_default(),
    ]);
    assert!(
        out.status.success(),
        "flamegraph --query failed: {}",
        qprof_e2e::stderr(&out)
    );
    let text = std::fs::read_to_string(&svg).unwrap_or_default();
    assert!(
        text.contains("burn_inside_query"),
        "the query's flamegraph lacks the burning function"
    );
    assert!(
        !text.contains("burn_outside_query"),
        "CPU outside the query leaked into its flamegraph"
    );
    // Off-CPU: the ~20 x 50 ms the client waited inside wait_query.
    let wait_id = rows["SELECT pg_sleep(?) AS wait_query"]["fingerprint_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let in_query = blocked_ns_in_query(&offcpu, &wait_id);
    assert!(
        in_query >= 800_000_000,
        "blocked time inside wait_query: {in_query} ns"
    );
    let bad = run_qprof(&[
        "flamegraph",
        cpu.to_str().unwrap_or_default(),
        "--query",
        "00000000000000ff",
    ]);
    assert_fails_with(&bad, "no samples in");
    assert_fails_with(
        &run_qprof(&[
            "flamegraph",
            cpu.to_str().unwrap_or_default(),
            "--query",
            "xyz",
        ]),
        "invalid --query 'xyz'",
    );
    assert!(client.finish().success());
}

/// `record offcpu --by-query`, host-wide: a psql still waiting inside a
/// long query when the capture ends was never seen coming back, yet its
/// blocked time is labelled with that query's fingerprint (the same id
/// `record queries` gives it).
#[test]
fn offcpu_still_blocked_in_query_is_labelled() {
    require_root();
    let server = PgServer::start("offcpu-still");
    let dir = TempDir::new("offcpu-still");
    let (off, json) = (dir.join("off.pb.gz"), dir.join("q.json"));
    let mut rec_q = record_queries_json(&json);
    let mut rec_off = QprofRun::start(&[
        "record",
        "offcpu",
        "--by-query",
        "--duration",
        "5m",
        "-o",
        off.to_str().unwrap_or_default(),
    ]);
    let psql = server
        .client("psql")
        .args([
            "-X",
            "-q",
            "-c",
            "SELECT pg_sleep(30) AS still_waiting",
            "postgres",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("psql: {e}"));
    let psql = qprof_e2e::ChildGuard(psql);
    std::thread::sleep(Duration::from_secs(2));
    rec_off.interrupt();
    let fin_off = rec_off.wait();
    assert!(fin_off.status.success(), "{}", fin_off.stderr);
    // End the query with an error reply, which record queries counts (a
    // killed client would leave it unfinished and unreported).
    let cancel = server.psql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%AS still_waiting' AND pid <> pg_backend_pid()");
    let cancelled = String::from_utf8_lossy(&cancel.stdout)
        .lines()
        .any(|l| l.trim() == "t");
    assert!(
        cancelled,
        "the waiting query was not found to cancel: {cancel:?}"
    );
    let mut psql = psql;
    let _ = psql.0.wait();
    std::thread::sleep(Duration::from_millis(300));
    rec_q.interrupt();
    let fin_q = rec_q.wait();
    assert!(fin_q.status.success(), "{}", fin_q.stderr);
    let rows = pg_rows(&json);
    assert!(
        rows.contains_key("SELECT pg_sleep(?) AS still_waiting"),
        "{rows:?}\n{}",
        fin_q.stderr
    );
    let id = rows["SELECT pg_sleep(?) AS still_waiting"]["fingerprint_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(id.len(), 16, "{rows:?}");
    let labelled = blocked_ns_in_query(&off, &id);
    assert!(
        labelled >= 1_000_000_000,
        "blocked time labelled with the query: {labelled} ns"
    );
}

/// Blocked nanoseconds (off-CPU sample index 1) of the samples of an
/// off-CPU profile labelled with query fingerprint `id`.
fn blocked_ns_in_query(profile: &Path, id: &str) -> i64 {
    let off = profiles::pprof::decode(&std::fs::read(profile).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    let want = profiles::LabelValue::Str(id.to_owned());
    off.samples
        .iter()
        .filter(|s| s.labels.iter().any(|l| l.key == "query" && l.value == want))
        .map(|s| s.values[1])
        .sum()
}
