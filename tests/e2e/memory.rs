//! End-to-end memory profiling: uprobes on a real libc (or a static
//! binary's own allocator) in a fixture whose allocations are known to the
//! byte, checked with `go tool pprof` (the reference reader).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
};

use qprof_e2e::{
    TempDir, assert_fails_with, build_fixture, require_root, run_qprof,
    session::{Finished, Fixture, QprofRun},
};

/// Flat values per function from `go tool pprof -top -unit=B` (bytes, or
/// plain counts for the object indexes), all nodes.
fn flat(profile: &Path, sample_index: &str) -> HashMap<String, f64> {
    let out = Command::new("go")
        .args(["tool", "pprof", "-top", "-nodecount=100000", "-unit=B"])
        .arg(format!("-sample_index={sample_index}"))
        .arg(profile)
        .env("HOME", std::env::temp_dir())
        .output()
        .unwrap_or_else(|e| panic!("running go tool pprof: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&format!("Type: {sample_index}")),
        "go tool pprof -sample_index={sample_index} rejected {}: {}",
        profile.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut by_function = HashMap::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 6 || !cols[1].ends_with('%') || !cols[4].ends_with('%') {
            continue;
        }
        if let Ok(value) = cols[0].trim_end_matches('B').parse::<f64>() {
            *by_function.entry(cols[5..].join(" ")).or_insert(0.0) += value;
        }
    }
    by_function
}

fn get(flat: &HashMap<String, f64>, name: &str) -> f64 {
    flat.get(name).copied().unwrap_or(0.0)
}

/// `key=value` pairs the fixture wrote.
fn fixture_report(path: &Path) -> HashMap<String, f64> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}

/// The number just before `marker` in qprof's summary.
fn number_before(stderr: &str, marker: &str) -> u64 {
    let at = stderr
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in: {stderr}"));
    stderr[..at]
        .split_whitespace()
        .last()
        .and_then(|n| n.trim_start_matches('(').parse().ok())
        .unwrap_or_else(|| panic!("no number before {marker:?} in: {stderr}"))
}

fn path_arg(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}

/// Starts `qprof record memory` on a fixture, lets the fixture do its work
/// once the probes are attached, optionally lets it exit, then stops qprof
/// with Ctrl-C.
fn record(fixture: &Path, args: &[&str], qprof_args: &[&str], exit_first: bool) -> Finished {
    let mut fx = Fixture::start(fixture, args);
    let pid = fx.pid.to_string();
    let mut all = vec!["record", "memory", "--pid", &pid, "--duration", "60s"];
    all.extend_from_slice(qprof_args);
    let mut qprof = QprofRun::start(&all);
    fx.run_to_done();
    if exit_first {
        assert!(fx.finish().success(), "fixture failed");
        std::thread::sleep(std::time::Duration::from_millis(1500));
    }
    qprof.interrupt();
    let fin = qprof.wait();
    assert!(fin.status.success(), "qprof failed: {}", fin.stderr);
    fin
}

/// Checks the two call sites of the `sites` mode in `profile`: 4:1 bytes
/// allocated (±15%), bytes in use dominated by the first site, and the
/// total within ±15% of what the fixture allocated.
fn check_sites(profile: &Path, report: &Path) {
    let truth = fixture_report(report);
    let alloc = flat(profile, "alloc_space");
    let (a, b) = (get(&alloc, "alloc_site_a"), get(&alloc, "alloc_site_b"));
    assert!(
        a > 0.0 && b > 0.0,
        "alloc_site_a={a} alloc_site_b={b}: {alloc:?}"
    );
    let ratio = a / b;
    eprintln!("alloc_space alloc_site_a:alloc_site_b = {ratio:.3}");
    assert!(
        (3.4..=4.6).contains(&ratio),
        "alloc_space ratio {ratio:.3}, want 4 ±15%"
    );
    let want = truth["site_a"] + truth["site_b"];
    let total = a + b;
    eprintln!("alloc_space total {total} vs {want} allocated");
    assert!(
        (total / want - 1.0).abs() <= 0.15,
        "alloc_space {total} vs {want}"
    );
    let inuse = flat(profile, "inuse_space");
    let (ia, ib) = (get(&inuse, "alloc_site_a"), get(&inuse, "alloc_site_b"));
    assert!(
        ia > 0.0 && ia >= 0.9 * inuse.values().sum::<f64>(),
        "inuse_space: {inuse:?}"
    );
    assert!(ib <= 0.02 * ia, "freed site still in use: {ib} vs {ia}");
}

/// The 4:1 fixture sampled at one per 16 KiB: bytes allocated split 4:1
/// (±15%), bytes in use are the kept site's, the total matches the bytes
/// the fixture allocated (±15%), every sample index parses with go tool
/// pprof (in-use bytes the default), and the SVG and folded files name the
/// sites.
#[test]
fn sites_ratio_totals_and_every_index() {
    require_root();
    let dir = TempDir::new("mem-sites");
    let fixture = build_fixture("mem_sites", dir.path());
    let (report, out, svg, folded) = (
        dir.join("sites.txt"),
        dir.join("mem.pb.gz"),
        dir.join("mem.svg"),
        dir.join("mem.folded"),
    );
    let fin = record(
        &fixture,
        &["sites", path_arg(&report)],
        &[
            "--sample-bytes",
            "16K",
            "-o",
            path_arg(&out),
            "--svg",
            path_arg(&svg),
            "--folded",
            path_arg(&folded),
        ],
        false,
    );
    check_sites(&out, &report);
    for index in [
        "alloc_objects",
        "alloc_space",
        "inuse_objects",
        "inuse_space",
    ] {
        assert!(!flat(&out, index).is_empty(), "{index} is empty");
    }
    let profile = profiles::pprof::decode(&std::fs::read(&out).unwrap_or_default())
        .unwrap_or_else(|e| panic!("decoding: {e}"));
    assert_eq!(profile.default_sample_type, "inuse_space");
    assert_eq!(profile.period, 16 * 1024);
    let svg_text = std::fs::read_to_string(&svg).unwrap_or_default();
    assert!(svg_text.contains("<svg") && svg_text.contains("alloc_site_a"));
    let folded_text = std::fs::read_to_string(&folded).unwrap_or_default();
    assert!(
        folded_text.contains("main;sites;alloc_site_a "),
        "{folded_text}"
    );
    assert!(
        fin.stderr.contains("RSS "),
        "no memory usage line: {}",
        fin.stderr
    );
}

/// With every allocation sampled (`--sample-bytes 1`), calloc, realloc
/// (including glibc's `realloc(NULL, n)` -> `malloc`, counted once),
/// `posix_memalign` and `aligned_alloc` are each attributed exactly.
#[test]
fn every_allocation_api_is_counted_once() {
    require_root();
    let dir = TempDir::new("mem-apis");
    let fixture = build_fixture("mem_sites", dir.path());
    let (report, out) = (dir.join("apis.txt"), dir.join("apis.pb.gz"));
    let _ = record(
        &fixture,
        &["apis", path_arg(&report)],
        &["--sample-bytes", "1", "-o", path_arg(&out)],
        false,
    );
    let truth = fixture_report(&report);
    let alloc = flat(&out, "alloc_space");
    for (function, key) in [
        ("via_calloc", "calloc"),
        ("via_realloc", "realloc"),
        ("via_posix_memalign", "posix_memalign"),
        ("via_aligned_alloc", "aligned_alloc"),
    ] {
        let got = get(&alloc, function);
        assert!(
            (got / truth[key] - 1.0).abs() < 0.001,
            "{function}: {got} vs {}",
            truth[key]
        );
    }
    // Each realloc retires the block it grows: 2 of the 3 bytes-per-round stay.
    let inuse = get(&flat(&out, "inuse_space"), "via_realloc");
    assert!(
        (inuse / (truth["realloc"] * 2.0 / 3.0) - 1.0).abs() < 0.001,
        "{inuse}"
    );
}

/// A process that exits during the capture keeps its samples and symbols,
/// and the summary says it exited.
#[test]
fn exited_process_keeps_its_data() {
    require_root();
    let dir = TempDir::new("mem-exit");
    let fixture = build_fixture("mem_sites", dir.path());
    let (report, out) = (dir.join("sites.txt"), dir.join("exit.pb.gz"));
    let fin = record(
        &fixture,
        &["sites", path_arg(&report)],
        &["--sample-bytes", "16K", "-o", path_arg(&out)],
        true,
    );
    assert!(
        fin.stderr.contains("exited during the capture"),
        "{}",
        fin.stderr
    );
    check_sites(&out, &report);
}

/// Frees of blocks allocated before the capture are ignored and counted in
/// the summary: none matches a sampled block, and the bytes in use are
/// exactly the 100 blocks of 1,000 bytes the fixture keeps afterwards.
#[test]
fn frees_never_seen_are_ignored_and_counted() {
    require_root();
    let dir = TempDir::new("mem-untracked");
    let fixture = build_fixture("mem_sites", dir.path());
    let out = dir.join("pre.pb.gz");
    let fin = record(
        &fixture,
        &["prealloc", "5000"],
        &["--sample-bytes", "1", "-o", path_arg(&out)],
        false,
    );
    let untracked = number_before(&fin.stderr, "of untracked addresses ignored");
    assert!(
        untracked >= 5000,
        "{untracked} untracked frees: {}",
        fin.stderr
    );
    assert_eq!(
        number_before(&fin.stderr, "of sampled blocks"),
        0,
        "a free matched a block never sampled: {}",
        fin.stderr
    );
    // Sampling every byte, each block weighs 1/(1 - e^-1000): exact.
    let inuse = flat(&out, "inuse_space");
    let kept = 100.0 * 1000.0;
    assert!(
        (get(&inuse, "alloc_site_a") - kept).abs() < 1.0
            && (inuse.values().sum::<f64>() - kept).abs() < 1.0,
        "in use {inuse:?}, want {kept} bytes at alloc_site_a"
    );
}

/// 100,000 live sampled blocks overflow the 65,536-entry live table: the
/// oldest are evicted and counted, and no longer count as in use (in use
/// is what the table holds: an evicted block's free cannot be matched).
#[test]
fn live_table_overflow_evicts_and_counts() {
    require_root();
    let dir = TempDir::new("mem-evict");
    let fixture = build_fixture("mem_sites", dir.path());
    let out = dir.join("many.pb.gz");
    let fin = record(
        &fixture,
        &["many", "100000"],
        &["--sample-bytes", "1", "-o", path_arg(&out)],
        false,
    );
    let evicted = number_before(&fin.stderr, "oldest sampled blocks evicted");
    assert!(
        (30_000..=40_000).contains(&evicted),
        "{evicted}: {}",
        fin.stderr
    );
    let objects: f64 = flat(&out, "inuse_objects").values().sum();
    // The 100,000 blocks and the array holding them are live.
    let held = 100_001.0;
    assert!(
        objects <= 65_536.0 && (objects + evicted as f64 - held).abs() <= 2.0,
        "in-use objects {objects} + evicted {evicted}, want {held}"
    );
    assert!(
        fin.stderr.contains("not counted as in use"),
        "{}",
        fin.stderr
    );
}

/// Bytes in `72.3 MiB`-style text (qprof's summary).
fn parse_human_bytes(text: &str) -> f64 {
    let mut parts = text.split_whitespace();
    let value: f64 = parts
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number in {text:?}"));
    let scale = match parts.next() {
        Some("B") => 1.0,
        Some("KiB") => 1024.0,
        Some("MiB") => 1024.0 * 1024.0,
        Some("GiB") => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unit {other:?} in {text:?}"),
    };
    value * scale
}

/// The summary's estimate of bytes still in use.
fn summary_in_use(stderr: &str) -> f64 {
    let line = stderr
        .lines()
        .find(|l| l.contains(" still in use"))
        .unwrap_or_else(|| panic!("no in-use summary in: {stderr}"));
    let before = line.split(" still in use").next().unwrap_or_default();
    let text = before.rsplit(", ").next().unwrap_or_default();
    parse_human_bytes(text)
}

/// The number right after `marker` in qprof's summary.
fn number_after(stderr: &str, marker: &str) -> u64 {
    let at = stderr
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in: {stderr}"));
    stderr[at + marker.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {marker:?} in: {stderr}"))
}

/// Runs the rolling cache of `blocks` blocks of ~4 KiB: qprof attaches,
/// the fixture fills its ring and keeps replacing its oldest block without
/// pause, and qprof is stopped while it does. In use (the profile's
/// `inuse_space` total and the summary) must be within ±20% of the bytes
/// the fixture holds, at its allocation site; every free seen must be of a
/// block allocated in the capture (frees = allocations - blocks held), so
/// the counts end at one instant.
fn rolling_cache(blocks: usize) {
    require_root();
    let dir = TempDir::new("mem-ring");
    let fixture = build_fixture("mem_ring", dir.path());
    let (report, out) = (dir.join("ring.txt"), dir.join("ring.pb.gz"));
    let n = blocks.to_string();
    let mut fx = Fixture::start(&fixture, &[&n, path_arg(&report)]);
    let pid = fx.pid.to_string();
    // One sample per 64 KiB: ~6% of 4 KiB blocks, ~1,200 live samples
    // for 20,000 blocks (a relative error of ~3%).
    let mut qprof = QprofRun::start(&[
        "record",
        "memory",
        "--pid",
        &pid,
        "--duration",
        "60s",
        "--sample-bytes",
        "64K",
        "-o",
        path_arg(&out),
    ]);
    fx.run_to_done();
    // Keep churning: the ring turns over (it is refilled) while traced.
    std::thread::sleep(std::time::Duration::from_secs(2));
    qprof.interrupt();
    let fin = qprof.wait();
    assert!(fx.finish().success(), "fixture failed");
    assert!(fin.status.success(), "qprof failed: {}", fin.stderr);
    let held = fixture_report(&report)["live_bytes"];
    let inuse = flat(&out, "inuse_space");
    let total: f64 = inuse.values().sum();
    let summary = summary_in_use(&fin.stderr);
    eprintln!(
        "rolling cache of {blocks}: holds {held} B; inuse_space {total} B, summary {summary} B"
    );
    for (what, got) in [("inuse_space total", total), ("summary", summary)] {
        assert!(
            (got / held - 1.0).abs() <= 0.20,
            "{what}: {got} B in use vs {held} B held: {}",
            fin.stderr
        );
    }
    let site = get(&inuse, "cache_new_block");
    assert!(
        site >= 0.95 * total,
        "allocation site {site} of {total}: {inuse:?}"
    );
    let calls = number_before(&fin.stderr, "calls,");
    let frees = number_after(&fin.stderr, "qprof: frees: ");
    // A few stdio buffers (the report file) come and go besides the ring.
    assert!(
        calls.abs_diff(frees + blocks as u64) <= 4,
        "{calls} allocations, {frees} frees, {blocks} held: {}",
        fin.stderr
    );
}

/// A rolling cache of 20,000 blocks (~80 MB): qprof reports what it holds.
#[test]
fn rolling_cache_in_use_is_what_it_holds() {
    rolling_cache(20_000);
}

/// The same with 100,000 blocks (~400 MB, more than the cache turns over
/// while qprof detaches).
#[test]
fn large_rolling_cache_in_use_is_what_it_holds() {
    rolling_cache(100_000);
}

/// Compiles the fixture statically, optionally stripped.
fn static_fixture(dir: &Path, strip: bool) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mem_sites.c");
    let out = dir.join(if strip { "mem_stripped" } else { "mem_static" });
    let mut gcc = Command::new("gcc");
    gcc.args(["-O1", "-g", "-fno-omit-frame-pointer", "-static", "-o"])
        .arg(&out)
        .arg(&src);
    if strip {
        gcc.arg("-s");
    }
    let status = gcc.status().unwrap_or_else(|e| panic!("gcc: {e}"));
    assert!(
        status.success(),
        "gcc -static failed (libc6-dev has libc.a)"
    );
    out
}

/// A static binary that keeps its symbols is traced through its own
/// malloc (there is no libc.so to attach to).
#[test]
fn static_binary_uses_its_own_allocator() {
    require_root();
    let dir = TempDir::new("mem-static");
    let fixture = static_fixture(dir.path(), false);
    let (report, out) = (dir.join("sites.txt"), dir.join("static.pb.gz"));
    let fin = record(
        &fixture,
        &["sites", path_arg(&report)],
        &["--sample-bytes", "16K", "-o", path_arg(&out)],
        false,
    );
    assert!(fin.stderr.contains("mem_static (malloc"), "{}", fin.stderr);
    check_sites(&out, &report);
}

/// A static binary stripped of its symbols has no allocator to find: the
/// error names the pid and what was looked for, and nothing is written.
#[test]
fn stripped_static_binary_is_refused_clearly() {
    require_root();
    let dir = TempDir::new("mem-stripped");
    let fixture = static_fixture(dir.path(), true);
    let fx = Fixture::start(&fixture, &["sites", "/dev/null"]);
    let out = dir.join("never.pb.gz");
    let pid = fx.pid.to_string();
    let run = run_qprof(&["record", "memory", "--pid", &pid, "-o", path_arg(&out)]);
    assert_fails_with(
        &run,
        &format!("pid {pid} (mem_stripped): no allocator to trace"),
    );
    assert_fails_with(&run, "looked for malloc, calloc, realloc, free");
    assert!(!out.exists());
    assert!(fx.finish().success());
}

/// Bad values: `--sample-bytes 0` and garbage, a missing `--pid`, a pid
/// that does not exist, an output directory that does not exist.
#[test]
fn bad_memory_inputs() {
    require_root();
    let me = std::process::id().to_string();
    let record = |extra: &[&str]| {
        let mut args = vec!["record", "memory"];
        args.extend_from_slice(extra);
        run_qprof(&args)
    };
    assert_fails_with(
        &record(&["--pid", &me, "--sample-bytes", "0"]),
        "must be at least 1",
    );
    assert_fails_with(
        &record(&["--pid", &me, "--sample-bytes", "lots"]),
        "invalid --sample-bytes 'lots'",
    );
    assert_fails_with(&record(&["--duration", "1s"]), "--pid <PID>");
    assert_fails_with(
        &record(&["--pid", "4194304"]),
        "no process with pid 4194304",
    );
    assert_fails_with(
        &record(&["--pid", &me, "-o", "/nonexistent-qprof-dir/m.pb.gz"]),
        "/nonexistent-qprof-dir does not exist",
    );
}
