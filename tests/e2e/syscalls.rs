//! End-to-end syscall tracing against fixtures that make exactly known
//! syscalls, checked against the fixture's own arithmetic and strace's counts.

use std::path::Path;

use qprof_e2e::{
    ChildGuard, TempDir, assert_fails_with, build_fixture, require_root, run_qprof,
    session::{Fixture, QprofRun},
};
use serde_json::Value;

/// Rows of a `--json` report for one pid, by syscall name.
fn rows_for(json: &Path, pid: u32) -> std::collections::HashMap<String, Value> {
    let text =
        std::fs::read_to_string(json).unwrap_or_else(|e| panic!("reading {}: {e}", json.display()));
    let rows: Vec<Value> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON: {e}: {text}"));
    rows.into_iter()
        .filter(|r| r["pid"] == pid)
        .map(|r| (r["syscall"].as_str().unwrap_or_default().to_owned(), r))
        .collect()
}

/// (calls, errors) per syscall from `strace -c` output.
fn strace_counts(text: &str) -> std::collections::HashMap<String, (u64, u64)> {
    let mut out = std::collections::HashMap::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // "% time seconds usecs/call calls [errors] syscall"
        if cols.len() >= 5 && cols[0].parse::<f64>().is_ok() {
            let name = cols[cols.len() - 1].to_owned();
            let calls = cols[3].parse().unwrap_or(0);
            let errors = if cols.len() == 6 {
                cols[4].parse().unwrap_or(0)
            } else {
                0
            };
            out.insert(name, (calls, errors));
        }
    }
    out
}

/// The `counts` fixture run under `strace -f -c` (its summary goes to
/// `strace.txt` in `dir`), ready to be told to work.
fn fixture_under_strace(dir: &TempDir) -> (Fixture, std::path::PathBuf) {
    let fixture = build_fixture("syscalls_fixed", dir.path());
    let strace_out = dir.join("strace.txt");
    let fx = Fixture::start(
        Path::new("strace"),
        &[
            "-f",
            "-c",
            "-o",
            strace_out.to_str().unwrap_or_default(),
            "-e",
            "trace=getppid,open,nanosleep",
            fixture.to_str().unwrap_or_default(),
            "counts",
        ],
    );
    (fx, strace_out)
}

/// `record syscalls --pid PID --mode MODE` writing JSON to `json`, attached.
fn record_pid(pid: u32, mode: &str, json: &Path) -> QprofRun {
    QprofRun::start(&[
        "record",
        "syscalls",
        "--pid",
        &pid.to_string(),
        "--mode",
        mode,
        "--duration",
        "60s",
        "--json",
        json.to_str().unwrap_or_default(),
    ])
}

/// Stops a run and checks that it succeeded.
fn stop(mut qprof: QprofRun) {
    qprof.interrupt();
    let fin = qprof.wait();
    assert!(fin.status.success(), "qprof failed: {}", fin.stderr);
}

/// The fixture's exact counts, checked against strace's: 100,000 getppid
/// without error, 1,000 open all failing with ENOENT, strace's nanosleeps.
fn assert_exact_counts(rows: &std::collections::HashMap<String, Value>, strace_out: &Path) {
    assert_eq!(rows["getppid"]["calls"], 100_000, "{:?}", rows["getppid"]);
    assert_eq!(rows["getppid"]["errors"], serde_json::json!({}));
    assert_eq!(rows["open"]["calls"], 1_000);
    assert_eq!(rows["open"]["errors"], serde_json::json!({"ENOENT": 1000}));
    let strace = strace_counts(&std::fs::read_to_string(strace_out).unwrap_or_default());
    assert_eq!(
        strace.get("getppid"),
        Some(&(100_000, 0)),
        "strace: {strace:?}"
    );
    assert_eq!(
        strace.get("open"),
        Some(&(1_000, 1_000)),
        "strace: {strace:?}"
    );
    assert_eq!(rows["nanosleep"]["calls"], strace["nanosleep"].0);
}

/// Exact counts (100,000 getppid; 1,000 open failing with ENOENT) that agree
/// with strace -f -c on the same run, and latency percentiles that match the
/// fixture's 1 ms and 10 ms sleeps.
#[test]
fn counts_are_exact_and_match_strace() {
    require_root();
    let dir = TempDir::new("sys-counts");
    let (mut fx, strace_out) = fixture_under_strace(&dir);
    let json = dir.join("sys.json");
    let qprof = record_pid(fx.pid, "full", &json);
    fx.run_to_done();
    stop(qprof);
    let fixture_pid = fx.pid;
    assert!(fx.finish().success());

    let rows = rows_for(&json, fixture_pid);
    assert_exact_counts(&rows, &strace_out);
    assert_eq!(rows["getppid"]["timed_calls"], 100_000);

    // 200 sleeps of 1 ms and 20 of 10 ms: p50 ~1 ms, p99 in the 10 ms group.
    let ns = |k: &str| rows["nanosleep"][k].as_u64().unwrap_or(0) as f64;
    assert!(
        (0.9e6..1.6e6).contains(&ns("p50_ns")),
        "p50 {}",
        ns("p50_ns")
    );
    assert!(
        (0.9e7..1.3e7).contains(&ns("p99_ns")),
        "p99 {}",
        ns("p99_ns")
    );
    assert!(
        ns("max_ns") >= 1.0e7 && ns("total_ns") >= 0.4e9,
        "{:?}",
        rows["nanosleep"]
    );
}

/// The counts mode on the same calls as a full-mode run beside it: calls
/// and errors exactly as strace counts them, about 1 call in 64 timed, and
/// the sampled getppid median close to the median of every call.
#[test]
fn counts_mode_is_exact_and_samples_latency() {
    require_root();
    let dir = TempDir::new("sys-counts-mode");
    let (mut fx, strace_out) = fixture_under_strace(&dir);
    let (counts_json, full_json) = (dir.join("counts.json"), dir.join("full.json"));
    let counts = record_pid(fx.pid, "counts", &counts_json);
    let full = record_pid(fx.pid, "full", &full_json);
    fx.run_to_done();
    stop(counts);
    stop(full);
    let fixture_pid = fx.pid;
    assert!(fx.finish().success());

    let rows = rows_for(&counts_json, fixture_pid);
    assert_exact_counts(&rows, &strace_out);
    let getppid = &rows["getppid"];
    let timed = getppid["timed_calls"].as_u64().unwrap_or(0);
    // A countdown of mean 64: 1,562 expected; the sum of ~1,560 uniform
    // draws is within a few percent of that, 30% is generous.
    assert!((1_100..=2_050).contains(&timed), "timed {timed}: {getppid}");
    let full_rows = rows_for(&full_json, fixture_pid);
    let (sampled, all) = (
        getppid["p50_ns"].as_u64().unwrap_or(0) as f64,
        full_rows["getppid"]["p50_ns"].as_u64().unwrap_or(0) as f64,
    );
    assert!(
        all > 0.0 && (0.5..=2.0).contains(&(sampled / all)),
        "sampled p50 {sampled} vs every call's {all}"
    );
    // Scaled back: the estimated total is the sampled mean times all calls.
    let total = getppid["total_ns"].as_u64().unwrap_or(0) as f64;
    assert!(total >= 100_000.0 * sampled * 0.5, "total {total}");
}

/// A process with 2,000 threads: every thread's calls are counted once.
#[test]
fn thousands_of_threads_are_counted() {
    require_root();
    let dir = TempDir::new("sys-threads");
    let fixture = build_fixture("syscalls_fixed", dir.path());
    let mut fx = Fixture::start(&fixture, &["threads"]);
    let json = dir.join("threads.json");
    let pid = fx.pid.to_string();
    // Nine targets: more than the BPF side compares in place, so the pid
    // filter takes its hash-map path here (the other tests take the other).
    let sleepers: Vec<ChildGuard> = (0..8)
        .map(|_| {
            ChildGuard(
                std::process::Command::new("sleep")
                    .arg("60")
                    .spawn()
                    .unwrap_or_else(|e| panic!("sleep: {e}")),
            )
        })
        .collect();
    let sleeper_pids: Vec<String> = sleepers.iter().map(|c| c.pid().to_string()).collect();
    let mut args = vec!["record", "syscalls", "--pid", pid.as_str()];
    for p in &sleeper_pids {
        args.extend(["--pid", p.as_str()]);
    }
    args.extend([
        "--syscall",
        "getppid",
        "--duration",
        "60s",
        "--json",
        json.to_str().unwrap_or_default(),
    ]);
    let mut qprof = QprofRun::start(&args);
    fx.run_to_done();
    qprof.interrupt();
    let fin = qprof.wait();
    assert!(fin.status.success(), "qprof failed: {}", fin.stderr);
    drop(sleepers);
    let rows = rows_for(&json, fx.pid);
    assert_eq!(rows["getppid"]["calls"], 100_000);
    assert_eq!(
        rows.len(),
        1,
        "--syscall getppid must filter out the rest: {:?}",
        rows.keys()
    );
    assert!(fx.finish().success());
}

/// More (pid, syscall) pairs than the map holds: the excess is counted and
/// reported, short-lived children's data is kept, and nothing crashes.
#[test]
fn map_overflow_is_counted_and_reported() {
    require_root();
    let dir = TempDir::new("sys-pairs");
    let fixture = build_fixture("syscalls_fixed", dir.path());
    let mut fx = Fixture::start(&fixture, &["pairs"]);
    let json = dir.join("pairs.json");
    let mut qprof = QprofRun::start(&[
        "record",
        "syscalls",
        "--comm",
        "syscalls_fixed",
        "--duration",
        "120s",
        "--json",
        json.to_str().unwrap_or_default(),
    ]);
    fx.run_to_done();
    qprof.interrupt();
    let fin = qprof.wait();
    assert!(fin.status.success(), "qprof failed: {}", fin.stderr);
    assert!(
        fin.stderr.contains("syscall_map_full="),
        "overflow not reported: {}",
        fin.stderr
    );
    let rows: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap_or_default())
            .unwrap_or_default();
    assert!(
        rows.len() > 10_000 && rows.len() <= 16_384,
        "{} rows",
        rows.len()
    );
    // The children exited long before the report; their names were kept.
    assert!(
        rows.iter().all(|r| r["comm"] == "syscalls_fixed"),
        "comm lost for exited children"
    );
    assert!(fx.finish().success());
}

/// Malformed filters and targets: clear errors before tracing starts.
#[test]
fn bad_syscall_inputs() {
    require_root();
    assert_fails_with(
        &run_qprof(&["record", "syscalls", "--syscall", "getpidd"]),
        "unknown syscall 'getpidd'",
    );
    assert_fails_with(
        &run_qprof(&["record", "syscalls", "--syscall", "getpidd"]),
        "did you mean",
    );
    assert_fails_with(
        &run_qprof(&[
            "record",
            "syscalls",
            "--comm",
            "a-name-far-too-long-for-comm",
        ]),
        "invalid --comm",
    );
    assert_fails_with(
        &run_qprof(&["record", "syscalls", "--top", "0"]),
        "invalid --top '0'",
    );
    assert_fails_with(
        &run_qprof(&["record", "syscalls", "--duration", "soon"]),
        "invalid duration",
    );
    assert_fails_with(
        &run_qprof(&[
            "record",
            "syscalls",
            "--json",
            "/nonexistent-qprof-dir/s.json",
        ]),
        "/nonexistent-qprof-dir does not exist",
    );
    let out = run_qprof(&["record", "syscalls", "--pid", "4194304"]);
    assert_fails_with(&out, "no process with pid 4194304");
    // A comm that no process has yet is not an error: it may start later.
    let out = run_qprof(&[
        "record",
        "syscalls",
        "--comm",
        "no-such-proc",
        "--duration",
        "300ms",
        "--json",
        "-",
    ]);
    assert!(out.status.success(), "{}", qprof_e2e::stderr(&out));
    assert!(qprof_e2e::stderr(&out).contains("no running process is named 'no-such-proc'"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}
