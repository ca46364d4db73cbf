//! End-to-end query tracing over TLS: a cluster with `ssl = on` and a
//! self-signed certificate made by `openssl req -x509`, clients with
//! `sslmode=require`; qprof reads the plaintext at OpenSSL's reads.

use std::time::Duration;

use qprof_e2e::{
    TempDir,
    pg_queries::{pg_rows, pgbench_modes_match, psql_script_matches, record_queries_json},
    postgres::PgServer,
    require_root,
};

/// The server really speaks TLS to these clients (else the tests below
/// would prove nothing about TLS).
fn assert_tls(server: &PgServer) {
    let out = server.psql("SELECT 'tls:' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tls:true"), "not a TLS connection: {text}");
}

/// pgbench -S over TLS in simple, extended and prepared modes: calls equal
/// pgbench's count, p50/p99 within 10% of pgbench's own log.
#[test]
fn pgbench_over_tls_counts_and_latency_match() {
    require_root();
    let server = PgServer::start_with("tls-pgbench", true);
    assert_tls(&server);
    let dir = TempDir::new("tls-pgbench");
    pgbench_modes_match(&server, &dir);
}

/// psql over TLS: inserts, selects and the failing statement with its
/// error are counted; literals stay out of the report.
#[test]
fn psql_over_tls_counts_and_errors() {
    require_root();
    let server = PgServer::start_with("tls-psql", true);
    assert_tls(&server);
    let dir = TempDir::new("tls-psql");
    psql_script_matches(&server, &dir);
}

/// Rows of a TLS result that fits one read are counted exactly, and the
/// summary names the libssl read through.
#[test]
fn tls_rows_and_summary() {
    require_root();
    let server = PgServer::start_with("tls-rows", true);
    let dir = TempDir::new("tls-rows");
    let json = dir.join("rows.json");
    let mut qprof = record_queries_json(&json);
    let _ = server.psql("SELECT g AS tls_rows FROM generate_series(1, 37) g");
    std::thread::sleep(Duration::from_millis(300));
    qprof.interrupt();
    let fin = qprof.wait();
    assert!(fin.status.success(), "qprof failed: {}", fin.stderr);
    let rows = pg_rows(&json);
    let row = &rows["SELECT g AS tls_rows FROM generate_series(?, ?) g"];
    assert_eq!(
        (row["calls"].as_u64(), row["rows"].as_u64()),
        (Some(1), Some(37)),
        "{row}"
    );
    assert!(
        fin.stderr.contains("TLS plaintext read through") && fin.stderr.contains("libssl.so"),
        "{}",
        fin.stderr
    );
}
