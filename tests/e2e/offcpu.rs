//! End-to-end off-CPU profiling: a fixture that sleeps 100 ms and 10 ms in
//! two named functions; blocked time must follow the 10:1 ratio.

use std::path::Path;

use qprof_e2e::{
    TempDir, assert_fails_with, build_fixture, pprof_tool, require_root, run_qprof,
    session::QprofRun, start_fixture, stderr,
};

fn ratio(flat: &std::collections::HashMap<String, f64>) -> f64 {
    let (long, short) = (
        flat.get("wait_long").copied().unwrap_or(0.0),
        flat.get("wait_short").copied().unwrap_or(0.0),
    );
    assert!(
        long > 0.0 && short > 0.0,
        "wait_long={long} wait_short={short}: {flat:?}"
    );
    long / short
}

/// `record offcpu --pid`: go tool pprof reads both sample indexes, blocked
/// time splits 10:1 (±15%) between `wait_long` and `wait_short`, samples carry
/// the `sleeping` state, and the SVG names both functions.
#[test]
fn blocked_time_follows_the_fixture() {
    require_root();
    let dir = TempDir::new("offcpu");
    let fixture = build_fixture("offcpu_wait", dir.path());
    let child = start_fixture(&fixture, &["0"]);
    let pid = child.pid().to_string();
    let (out, svg) = (dir.join("off.pb.gz"), dir.join("off.svg"));
    let run = run_qprof(&[
        "record",
        "offcpu",
        "--pid",
        &pid,
        "--duration",
        "5s",
        "-o",
        out.to_str().unwrap_or_default(),
        "--svg",
        svg.to_str().unwrap_or_default(),
    ]);
    assert!(run.status.success(), "qprof failed: {}", stderr(&run));
    let flat = pprof_tool::cum_by_function(&pprof_tool::top(&out, "offcpu"));
    let r = ratio(&flat);
    eprintln!("wait_long:wait_short blocked time = {r:.3}");
    assert!(
        (8.5..=11.5).contains(&r),
        "wait_long:wait_short = {r:.2}, want 10 ±15%"
    );
    // Kernel stacks are walked when the thread comes back, from inside the
    // tracepoint; the tracing frames above __schedule are cut, so it is the
    // leaf of (nearly) all blocked time, under the nanosleep syscall.
    let leaf = pprof_tool::flat_by_function(&pprof_tool::top(&out, "offcpu"));
    let total = flat.get("wait_long").copied().unwrap_or(0.0)
        + flat.get("wait_short").copied().unwrap_or(0.0);
    let schedule = leaf.get("__schedule").copied().unwrap_or(0.0);
    assert!(
        schedule >= 0.9 * total,
        "__schedule is the leaf: {schedule} of {total} s: {leaf:?}"
    );
    assert!(
        flat.contains_key("hrtimer_nanosleep"),
        "kernel frames: {flat:?}"
    );
    let blocks = pprof_tool::cum_by_function(&pprof_tool::top(&out, "samples"));
    let (bl, bs) = (
        blocks.get("wait_long").copied().unwrap_or(0.0),
        blocks.get("wait_short").copied().unwrap_or(0.0),
    );
    assert!(
        (bl - bs).abs() <= 2.0,
        "each loop blocks once in each: {bl} vs {bs}"
    );
    let profile = profiles::pprof::decode(&std::fs::read(&out).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    let sleeping = profiles::LabelValue::Str("sleeping".into());
    assert!(profile.samples.iter().any(|s| {
        s.labels
            .iter()
            .any(|l| l.key == "state" && l.value == sleeping)
    }));
    let svg_text = std::fs::read_to_string(&svg).unwrap_or_default();
    assert!(svg_text.contains("wait_long") && svg_text.contains("wait_short"));
}

/// A process that exits during the capture keeps its blocked time and
/// symbols.
#[test]
fn exited_process_is_kept() {
    require_root();
    let dir = TempDir::new("offcpu-exit");
    let fixture = build_fixture("offcpu_wait", dir.path());
    let mut child = start_fixture(&fixture, &["0"]);
    let pid = child.pid().to_string();
    let out = dir.join("exit.pb.gz");
    let mut run = QprofRun::start(&[
        "record",
        "offcpu",
        "--pid",
        &pid,
        "--duration",
        "3s",
        "-o",
        out.to_str().unwrap_or_default(),
    ]);
    // qprof is recording: the fixture loops 1.2 s more, then is killed.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let _ = child.0.kill();
    let _ = child.0.wait();
    let fin = run.wait();
    assert!(fin.status.success(), "qprof failed: {fin:?}");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "fixture should have exited"
    );
    // ~11 loops of 100 ms + 10 ms; the block cut by the kill is at most
    // one of either, so 10:1 within ±25%.
    let r = ratio(&pprof_tool::cum_by_function(&pprof_tool::top(
        &out, "offcpu",
    )));
    assert!(
        (7.5..=12.5).contains(&r),
        "wait_long:wait_short = {r:.2} after the process exited, want 10 ±25%"
    );
}

/// A thread that blocks during the capture and never comes back before it
/// ends never has its stacks walked in the kernel: it is still in the
/// profile, with its user function (walked from the registers saved at
/// switch-out), its kernel frames (from /proc) and the time since it blocked.
#[test]
fn thread_still_blocked_at_the_end_has_stacks() {
    require_root();
    let dir = TempDir::new("offcpu-forever");
    let fixture = build_fixture("offcpu_wait", dir.path());
    let child = start_fixture(&fixture, &["forever"]);
    let pid = child.pid().to_string();
    let out = dir.join("forever.pb.gz");
    let mut run = QprofRun::start(&[
        "record",
        "offcpu",
        "--pid",
        &pid,
        "--duration",
        "3s",
        "-o",
        out.to_str().unwrap_or_default(),
    ]);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.pid() as i32, libc::SIGUSR1) };
    let fin = run.wait();
    assert!(fin.status.success(), "qprof failed: {fin:?}");
    let flat = pprof_tool::cum_by_function(&pprof_tool::top(&out, "offcpu"));
    let forever = flat.get("wait_forever").copied().unwrap_or(0.0);
    assert!(
        (1.5..=3.5).contains(&forever),
        "wait_forever blocked {forever} s of a 3 s capture: {flat:?}"
    );
    assert!(
        flat.get("main").copied().unwrap_or(0.0) >= forever,
        "its caller main: {flat:?}"
    );
    // From /proc, not from the BPF walk: the wait_short blocks walked in
    // the kernel add up to far less.
    let kernel = flat.get("hrtimer_nanosleep").copied().unwrap_or(0.0);
    assert!(
        kernel >= 0.9 * forever,
        "its kernel frames: hrtimer_nanosleep {kernel} s: {flat:?}"
    );
}

/// Bad values for off-CPU options give clear errors.
#[test]
fn bad_offcpu_inputs() {
    require_root();
    assert_fails_with(
        &run_qprof(&["record", "offcpu", "--min-block", "soon"]),
        "invalid --min-block 'soon'",
    );
    assert_fails_with(
        &run_qprof(&["record", "offcpu", "--pid", "4194304"]),
        "no process with pid 4194304",
    );
    assert_fails_with(
        &run_qprof(&["record", "offcpu", "-o", "/nonexistent-qprof-dir/o.pb.gz"]),
        "/nonexistent-qprof-dir does not exist",
    );
    assert!(!Path::new("offcpu.pb.gz").exists() || Path::new("offcpu.pb.gz").is_file());
}
