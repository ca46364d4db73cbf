//! End-to-end SQLite query tracing: Python's sqlite3 module, the sqlite3
//! CLI and a C client (linked against libsqlite3, and with SQLite compiled
//! in) run statements whose executions are known exactly; qprof's rows
//! must match them call for call, error for error.

use std::{
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use qprof_e2e::{
    TempDir, require_root, run_qprof,
    session::{Fixture, QprofRun},
    stderr,
};
use serde_json::Value;

/// Every row of a `--json` report.
fn rows(json: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(json).unwrap_or_else(|e| panic!("reading {}: {e}", json.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON: {e}: {text}"))
}

/// SQLite rows that `pid` ran.
fn sqlite_rows(rows: &[Value], pid: u32) -> Vec<&Value> {
    rows.iter()
        .filter(|r| r["db"] == "sqlite")
        .filter(|r| {
            r["pids"]
                .as_array()
                .is_some_and(|p| p.iter().any(|v| v.as_u64() == Some(u64::from(pid))))
        })
        .collect()
}

fn num(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a count: {v}"))
}

/// Asserts (fingerprint, calls, errors) for each expected statement; with
/// `exact`, no other statement may appear.
fn assert_statements(rows: &[&Value], expected: &[(&str, u64, u64)], exact: bool) {
    for &(fingerprint, calls, errors) in expected {
        let found: Vec<&&Value> = rows
            .iter()
            .filter(|r| r["fingerprint"] == fingerprint)
            .collect();
        assert_eq!(found.len(), 1, "one row for {fingerprint:?} in {rows:#?}");
        let row = found[0];
        assert_eq!(num(row, "calls"), calls, "calls of {fingerprint:?}: {row}");
        assert_eq!(
            num(row, "errors"),
            errors,
            "errors of {fingerprint:?}: {row}"
        );
        assert!(
            row["fingerprint_id"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{row}"
        );
    }
    if exact {
        let unexpected: Vec<&&Value> = rows
            .iter()
            .filter(|r| !expected.iter().any(|(f, _, _)| r["fingerprint"] == *f))
            .collect();
        assert!(
            unexpected.is_empty(),
            "unexpected statements: {unexpected:#?}"
        );
    }
}

/// A time field in µs (fractional).
fn micros(v: &Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number: {v}"))
}

/// The row with the largest total time.
fn slowest<'a>(rows: &[&'a Value]) -> &'a Value {
    rows.iter()
        .max_by(|a, b| micros(a, "total_us").total_cmp(&micros(b, "total_us")))
        .copied()
        .unwrap_or_else(|| panic!("no rows"))
}

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Builds `sqlite_client.c` against the shared libsqlite3, or with the
/// static library so that the program itself carries the SQLite API.
fn build_client(dir: &Path, static_sqlite: bool) -> PathBuf {
    let out = dir.join(if static_sqlite {
        "sqlite_client_static"
    } else {
        "sqlite_client"
    });
    let mut cmd = Command::new("gcc");
    cmd.args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&out)
        .arg(fixture_path("sqlite_client.c"));
    if static_sqlite {
        cmd.arg("/usr/lib/x86_64-linux-gnu/libsqlite3.a")
            .args(["-lm", "-lpthread", "-ldl"]);
    } else {
        cmd.arg("-lsqlite3");
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("running gcc: {e}"));
    assert!(
        status.success(),
        "gcc failed on sqlite_client.c (libsqlite3-dev installed?)"
    );
    out
}

/// Traces `fixture` by pid while it works; returns every row, and what
/// qprof printed on stderr.
fn trace_fixture(mut fixture: Fixture, dir: &TempDir) -> (Vec<Value>, String) {
    let json = dir.join("queries.json");
    let pid = fixture.pid.to_string();
    let mut qprof = QprofRun::start(&[
        "record",
        "queries",
        "--pid",
        &pid,
        "--duration",
        "120s",
        "--json",
        json.to_str().unwrap_or_default(),
    ]);
    fixture.run_to_done();
    std::thread::sleep(Duration::from_millis(300));
    qprof.interrupt();
    let fin = qprof.wait();
    assert!(fin.status.success(), "qprof failed: {}", fin.stderr);
    let pid = fixture.pid;
    assert!(fixture.finish().success(), "fixture failed");
    let all = rows(&json);
    let others: Vec<&Value> = all
        .iter()
        .filter(|r| {
            r["pids"]
                .as_array()
                .is_none_or(|p| p.iter().any(|v| v.as_u64() != Some(u64::from(pid))))
        })
        .collect();
    assert!(
        others.is_empty(),
        "--pid {pid} leaked other processes: {others:#?}"
    );
    (all, fin.stderr)
}

const CLIENT_STATEMENTS: [(&str, u64, u64); 5] = [
    ("INSERT INTO kv(k, v) VALUES (?, ?)", 101, 1),
    ("SELECT v FROM kv WHERE k >= ?", 50, 0),
    ("SELECT count(*) FROM kv", 20, 0),
    ("SELECT k FROM kv WHERE k < ?", 1, 0),
    ("SELECT * FROM no_such_table", 1, 1),
];

/// A C client on the shared libsqlite3: `prepare_v2`/`_v3`, step to done,
/// executions stopped early by reset, exec with a callback, an error at
/// step (duplicate key) and one at prepare: every execution counted once.
#[test]
fn c_client_on_shared_library() {
    require_root();
    let dir = TempDir::new("sqlite-c");
    let client = build_client(dir.path(), false);
    let fixture = Fixture::start(&client, &[]);
    let pid = fixture.pid;
    let (all, _) = trace_fixture(fixture, &dir);
    assert_statements(&sqlite_rows(&all, pid), &CLIENT_STATEMENTS, true);
}

/// The same client with SQLite compiled into the executable, whose
/// statements were all prepared before qprof started: found through the
/// program's own symbol table, texts recovered from the statements.
#[test]
fn static_client_prepared_before_qprof() {
    require_root();
    let dir = TempDir::new("sqlite-static");
    let client = build_client(dir.path(), true);
    let fixture = Fixture::start(&client, &["early"]);
    let pid = fixture.pid;
    let (all, _) = trace_fixture(fixture, &dir);
    assert_statements(&sqlite_rows(&all, pid), &CLIENT_STATEMENTS, true);
}

/// NULL pointers given to the API run nothing and lose nothing (no
/// read-error or unknown-statement counts); a statement longer than the
/// capture buffer is cut, marked, and keeps one fingerprint.
#[test]
fn null_pointers_and_long_statement() {
    require_root();
    let dir = TempDir::new("sqlite-edge");
    let client = build_client(dir.path(), false);
    let fixture = Fixture::start(&client, &["edge"]);
    let pid = fixture.pid;
    let (all, err) = trace_fixture(fixture, &dir);
    let ours = sqlite_rows(&all, pid);
    assert_eq!(ours.len(), 1, "{ours:#?}");
    let long = ours[0];
    assert_eq!(num(long, "calls"), 3, "{long}");
    assert_eq!(num(long, "errors"), 0, "{long}");
    let text = long["fingerprint"].as_str().unwrap_or_default();
    assert!(text.starts_with("SELECT ? AS c0, ? AS c1, "), "{text}");
    assert!(text.ends_with(" …"), "not marked truncated: {text}");
    assert!(
        !text.contains("c119"),
        "longer than the capture buffer: {text}"
    );
    for lost in ["sqlite_read_error", "sqlite_stmt_unknown"] {
        assert!(
            !err.contains(lost),
            "NULL arguments counted as {lost}: {err}"
        );
    }
}

/// A program with SQLite compiled in, started after a host-wide qprof:
/// its executable is found and attached within a second of its start.
#[test]
fn static_client_started_after_qprof() {
    require_root();
    let dir = TempDir::new("sqlite-late");
    let client = build_client(dir.path(), true);
    let json = dir.join("queries.json");
    let mut qprof = QprofRun::start(&[
        "record",
        "queries",
        "--duration",
        "120s",
        "--json",
        json.to_str().unwrap_or_default(),
    ]);
    let mut fixture = Fixture::start(&client, &[]);
    std::thread::sleep(Duration::from_secs(1));
    fixture.run_to_done();
    let pid = fixture.pid;
    std::thread::sleep(Duration::from_millis(300));
    qprof.interrupt();
    let fin = qprof.wait();
    assert!(fin.status.success(), "qprof failed: {}", fin.stderr);
    assert!(fixture.finish().success(), "fixture failed");
    let all = rows(&json);
    let ours = sqlite_rows(&all, pid);
    // Calls only: other tests may run the same statements meanwhile.
    for (fingerprint, calls, _) in CLIENT_STATEMENTS {
        let row = ours
            .iter()
            .find(|r| r["fingerprint"] == fingerprint)
            .unwrap_or_else(|| panic!("{fingerprint:?} not traced: {ours:#?}"));
        assert!(num(row, "calls") >= calls, "{row}");
    }
}

/// Python's sqlite3 module: 100 parameterized inserts plus a failing one
/// with literals (same fingerprint), 50 selects, a statement that does not
/// compile, and a slow recursive CTE that ranks first by total time.
#[test]
fn python_module_counts_errors_and_slow_statement() {
    require_root();
    let dir = TempDir::new("sqlite-py");
    let script = fixture_path("sqlite_queries.py");
    let fixture = Fixture::start(Path::new("python3"), &[script.to_str().unwrap_or_default()]);
    let pid = fixture.pid;
    let (all, _) = trace_fixture(fixture, &dir);
    let ours = sqlite_rows(&all, pid);
    let slow = "WITH RECURSIVE c(x) AS (SELECT ? UNION ALL SELECT x + ? FROM c WHERE x < ?) \
                SELECT count(*) FROM c";
    assert_statements(
        &ours,
        &[
            (
                "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT)",
                1,
                0,
            ),
            ("INSERT INTO items(id, name) VALUES (?, ?)", 101, 1),
            ("SELECT name FROM items WHERE id = ?", 50, 0),
            ("SELECT * FROM missing_table", 1, 1),
            (slow, 1, 0),
        ],
        true,
    );
    let top = slowest(&ours);
    assert_eq!(top["fingerprint"], slow, "slowest: {top}");
    assert!(
        micros(top, "max_us") >= 50_000.0,
        "a million-row CTE took {top}"
    );
}

/// The sqlite3 CLI started after qprof (host-wide) is traced from its
/// first statement: literals differ, fingerprints do not. (Names are
/// unique to this test: rows aggregate every process of the host.)
#[test]
fn sqlite3_cli_started_after_qprof() {
    require_root();
    let dir = TempDir::new("sqlite-cli");
    let json = dir.join("queries.json");
    let mut qprof = QprofRun::start(&[
        "record",
        "queries",
        "--duration",
        "120s",
        "--json",
        json.to_str().unwrap_or_default(),
    ]);
    let mut script = String::from("CREATE TABLE cli_t(a INTEGER, b TEXT);\n");
    for i in 0..20 {
        let _ = writeln!(script, "INSERT INTO cli_t VALUES ({i}, 'row {i}');");
    }
    script.push_str("SELECT count(*) FROM cli_t;\nSELECT * FROM cli_nope;\n");
    script.push_str(
        "WITH RECURSIVE cli_c(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM cli_c WHERE v < 300000) \
         SELECT count(*) FROM cli_c;\n",
    );
    let mut cli = Command::new("sqlite3")
        .arg(":memory:")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting sqlite3 (apt-get install sqlite3): {e}"));
    let pid = cli.id();
    if let Some(mut stdin) = cli.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .unwrap_or_else(|e| panic!("feeding sqlite3: {e}"));
    }
    let _ = cli.wait();
    std::thread::sleep(Duration::from_millis(300));
    qprof.interrupt();
    let fin = qprof.wait();
    assert!(fin.status.success(), "qprof failed: {}", fin.stderr);
    let all = rows(&json);
    let ours = sqlite_rows(&all, pid);
    let slow = "WITH RECURSIVE cli_c(v) AS (SELECT ? UNION ALL SELECT v + ? FROM cli_c WHERE v < ?) \
                SELECT count(*) FROM cli_c";
    assert_statements(
        &ours,
        &[
            ("CREATE TABLE cli_t(a INTEGER, b TEXT)", 1, 0),
            ("INSERT INTO cli_t VALUES (?, ?)", 20, 0),
            ("SELECT count(*) FROM cli_t", 1, 0),
            ("SELECT * FROM cli_nope", 1, 1),
            (slow, 1, 0),
        ],
        false,
    );
    assert_eq!(slowest(&ours)["fingerprint"], slow);
}

/// A library named libsqlite3 without the SQLite symbols (stripped) is
/// reported by path, and the capture still runs.
#[test]
fn library_without_symbols_is_named() {
    require_root();
    let dir = TempDir::new("sqlite-stripped");
    let (src, lib_dir) = (fixture_path("sqlite_fake.c"), dir.join("lib"));
    std::fs::create_dir_all(&lib_dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
    let lib = lib_dir.join("libsqlite3.so.0");
    let prog = dir.join("uses_fake");
    let gcc = |cmd: &mut Command| {
        let status = cmd.status().unwrap_or_else(|e| panic!("gcc: {e}"));
        assert!(status.success(), "{cmd:?}");
    };
    gcc(Command::new("gcc")
        .args(["-shared", "-fPIC", "-DFAKE_LIBRARY", "-o"])
        .args([&lib, &src]));
    gcc(Command::new("gcc")
        .arg("-o")
        .args([&prog, &src, &lib])
        .arg(format!("-Wl,-rpath,{}", lib_dir.display())));
    let fixture = Fixture::start(&prog, &[]);
    let pid = fixture.pid.to_string();
    let out = run_qprof(&["record", "queries", "--pid", &pid, "--duration", "1s"]);
    let err = stderr(&out);
    assert!(out.status.success(), "qprof failed: {err}");
    assert!(
        err.contains("libsqlite3.so.0") && err.contains("sqlite3_step"),
        "no warning naming the stripped library: {err}"
    );
}
