//! Helpers of the `PostgreSQL` query tests (plaintext and TLS): qprof's
//! `--json` rows and pgbench under qprof with its own latency log.

use std::{collections::HashMap, path::Path, time::Duration};

use serde_json::Value;

use crate::{TempDir, pgbench::percentile, postgres::PgServer, session::QprofRun};

/// `qprof record queries` host-wide for up to 5 minutes (a test stops it
/// with `interrupt`), writing its JSON report to `json`; returns once it is
/// recording.
#[must_use]
pub fn record_queries_json(json: &Path) -> QprofRun {
    QprofRun::start(&[
        "record",
        "queries",
        "--duration",
        "5m",
        "--json",
        json.to_str().unwrap_or_default(),
    ])
}

/// Postgres rows of a `--json` report, by fingerprint text.
#[must_use]
pub fn pg_rows(json: &Path) -> HashMap<String, Value> {
    let text =
        std::fs::read_to_string(json).unwrap_or_else(|e| panic!("reading {}: {e}", json.display()));
    let rows: Vec<Value> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON {e}: {text}"));
    rows.into_iter()
        .filter(|r| r["db"] == "postgres")
        .map(|r| (r["fingerprint"].as_str().unwrap_or_default().to_owned(), r))
        .collect()
}

/// Latencies (µs) from pgbench's per-transaction log files (`-l`): the
/// third field of every line.
#[must_use]
pub fn pgbench_latencies(dir: &Path, prefix: &str) -> Vec<f64> {
    let mut lat = Vec::new();
    for entry in std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            lat.extend(
                text.lines()
                    .filter_map(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok()),
            );
        }
    }
    lat.sort_by(f64::total_cmp);
    lat
}

/// pgbench's select-only script, with a column alias unique to this test
/// (and mode) so that any other pgbench on the host cannot add calls.
#[must_use]
pub fn select_script(mode: &str) -> String {
    format!(
        "\\set aid random(1, 100000 * :scale)\nSELECT abalance AS qprof_e2e_{mode} FROM pgbench_accounts WHERE aid = :aid;\n"
    )
}

/// Runs pgbench -S in `mode` under qprof (over TLS when the server has
/// it); returns (qprof's row for the
/// select, pgbench's latencies).
#[must_use]
pub fn pgbench_under_qprof(server: &PgServer, dir: &TempDir, mode: &str) -> (Value, Vec<f64>) {
    let json = dir.join(&format!("{mode}.json"));
    let mut qprof = record_queries_json(&json);
    let prefix = format!("pgbench_{mode}");
    let script = dir.join(&format!("select_{mode}.sql"));
    std::fs::write(&script, select_script(mode))
        .unwrap_or_else(|e| panic!("writing the script: {e}"));
    let out = server
        .client("pgbench")
        .args(["-n", "-t", "500", "-c", "2", "-M", mode, "-l", "-f"])
        .arg(&script)
        .arg(format!("--log-prefix={}", dir.join(&prefix).display()))
        .arg("postgres")
        .output()
        .unwrap_or_else(|e| panic!("pgbench: {e}"));
    assert!(
        out.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(300));
    qprof.interrupt();
    let fin = qprof.wait();
    assert!(fin.status.success(), "qprof failed: {}", fin.stderr);
    let rows = pg_rows(&json);
    let select = format!("SELECT abalance AS qprof_e2e_{mode} FROM pgbench_accounts WHERE aid = ?");
    let row = rows
        .get(&select)
        .cloned()
        .unwrap_or_else(|| panic!("no row for {select:?}: {:?}", rows.keys()));
    (row, pgbench_latencies(dir.path(), &prefix))
}

/// pgbench's select-only script in the simple, extended and prepared
/// protocols against `server`: qprof's call count equals the transactions
/// pgbench executed, and its p50/p99 agree with pgbench's own log.
pub fn pgbench_modes_match(server: &PgServer, dir: &TempDir) {
    let init = server
        .client("pgbench")
        .args(["-i", "-s", "1", "-q", "postgres"])
        .output();
    assert!(init.is_ok_and(|o| o.status.success()), "pgbench -i failed");
    for mode in ["simple", "extended", "prepared"] {
        let (row, lat) = pgbench_under_qprof(server, dir, mode);
        assert_eq!(row["calls"], 1000, "{mode}: {row}");
        assert_eq!(row["errors"], 0, "{mode}: {row}");
        assert_eq!(
            lat.len(),
            1000,
            "{mode}: pgbench logged {} transactions",
            lat.len()
        );
        let (p50, p99) = (percentile(&lat, 0.50), percentile(&lat, 0.99));
        let (q50, q99) = (
            row["p50_us"].as_f64().unwrap_or(0.0),
            row["p99_us"].as_f64().unwrap_or(0.0),
        );
        eprintln!(
            "{mode}: pgbench p50 {p50:.0}us p99 {p99:.0}us; qprof p50 {q50:.0}us p99 {q99:.0}us"
        );
        // 10%, plus 5 µs: pgbench's clock starts before the uprobe trap that
        // starts qprof's (and stops after libpq has parsed the result), a
        // constant few µs that is more than 10% of a 50 µs query on a busy
        // machine.
        assert!(
            (q50 - p50).abs() <= 0.10 * p50 + 5.0,
            "{mode}: p50 qprof {q50} vs pgbench {p50}"
        );
        assert!(
            (q99 - p99).abs() <= 0.10 * p99 + 5.0,
            "{mode}: p99 qprof {q99} vs pgbench {p99}"
        );
    }
}

/// psql running a script against `server`: statement counts and the
/// failing statement's error are right; literals never appear in the
/// report.
pub fn psql_script_matches(server: &PgServer, dir: &TempDir) {
    let json = dir.join("psql.json");
    let script = dir.join("script.sql");
    std::fs::write(
        &script,
        "CREATE TABLE qprof_t (a int, s text);\n\
         INSERT INTO qprof_t VALUES (1, 'secret-one');\n\
         INSERT INTO qprof_t VALUES (2, 'secret-two');\n\
         INSERT INTO qprof_t VALUES (3, 'secret-three');\n\
         SELECT a FROM qprof_t WHERE a > 0;\n\
         SELECT * FROM qprof_no_such_table;\n\
         SELECT a FROM qprof_t WHERE a > 1;\n",
    )
    .unwrap_or_else(|e| panic!("writing script: {e}"));
    let mut qprof = record_queries_json(&json);
    let out = server
        .client("psql")
        .args(["-X", "-q", "-f"])
        .arg(&script)
        .arg("postgres")
        .output();
    assert!(out.is_ok(), "psql did not run");
    std::thread::sleep(Duration::from_millis(300));
    qprof.interrupt();
    let fin = qprof.wait();
    assert!(fin.status.success(), "qprof failed: {}", fin.stderr);
    let rows = pg_rows(&json);
    let insert = &rows["INSERT INTO qprof_t VALUES (?, ?)"];
    assert_eq!(
        (insert["calls"].as_u64(), insert["errors"].as_u64()),
        (Some(3), Some(0)),
        "{insert}"
    );
    let select = &rows["SELECT a FROM qprof_t WHERE a > ?"];
    assert_eq!(select["calls"], 2, "{select}");
    let missing = &rows["SELECT * FROM qprof_no_such_table"];
    assert_eq!(
        (missing["calls"].as_u64(), missing["errors"].as_u64()),
        (Some(1), Some(1)),
        "{missing}"
    );
    let raw = std::fs::read_to_string(&json).unwrap_or_default();
    assert!(!raw.contains("secret-"), "literals leaked into the report");
}
