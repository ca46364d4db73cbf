//! End-to-end CPU profiling: real BPF programs, a real workload, outputs
//! checked with `go tool pprof` (the reference reader) and the kernel's own
//! symbol table.

use std::{path::Path, time::Duration};

use qprof_e2e::{
    TempDir, build_fixture, pprof_tool, require_root, run_qprof, start_fixture, stderr,
};

fn decode(path: &Path) -> profiles::Profile {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    profiles::pprof::decode(&bytes).unwrap_or_else(|e| panic!("decoding {}: {e}", path.display()))
}

fn ratio_of(flat: &std::collections::HashMap<String, f64>, a: &str, b: &str) -> f64 {
    let (x, y) = (
        flat.get(a).copied().unwrap_or(0.0),
        flat.get(b).copied().unwrap_or(0.0),
    );
    assert!(x > 0.0 && y > 0.0, "{a}={x} {b}={y} in {flat:?}");
    x / y
}

/// `record cpu --pid` on the 3:1 fixture: go tool pprof reads the file and
/// sees `burn_heavy:burn_light` within ±15% of 3:1; the SVG and folded
/// outputs name both; every sample belongs to the fixture.
#[test]
fn pid_profile_has_the_fixture_ratio() {
    require_root();
    let dir = TempDir::new("cpu-pid");
    let fixture = build_fixture("cpu_burn", dir.path());
    let child = start_fixture(&fixture, &["0"]);
    let pid = child.pid().to_string();
    let (out, svg, folded) = (
        dir.join("cpu.pb.gz"),
        dir.join("cpu.svg"),
        dir.join("cpu.folded"),
    );
    let run = run_qprof(&[
        "record",
        "cpu",
        "--pid",
        &pid,
        "--duration",
        "6s",
        "--hz",
        "199",
        "-o",
        out.to_str().unwrap_or_default(),
        "--svg",
        svg.to_str().unwrap_or_default(),
        "--folded",
        folded.to_str().unwrap_or_default(),
    ]);
    assert!(run.status.success(), "qprof failed: {}", stderr(&run));

    let flat = pprof_tool::flat_by_function(&pprof_tool::top(&out, "samples"));
    let ratio = ratio_of(&flat, "burn_heavy", "burn_light");
    eprintln!("burn_heavy:burn_light = {ratio:.3}");
    assert!(
        (2.55..=3.45).contains(&ratio),
        "burn_heavy:burn_light = {ratio:.2}, want 3 ±15%"
    );

    let profile = decode(&out);
    assert_eq!(profile.period, 1_000_000_000 / 199);
    let types: Vec<&str> = profile
        .sample_types
        .iter()
        .map(|t| t.r#type.as_str())
        .collect();
    assert_eq!(types, ["samples", "cpu"]);
    for sample in &profile.samples {
        let pid_label = sample
            .labels
            .iter()
            .find(|l| l.key == "pid")
            .map(|l| l.value.clone());
        assert_eq!(
            pid_label,
            Some(profiles::LabelValue::Num {
                value: i64::from(child.pid()),
                unit: String::new()
            })
        );
        assert!(
            sample.labels.iter().any(|l| l.key == "comm"),
            "sample without comm label"
        );
    }
    let main_mapping = profile
        .mappings
        .iter()
        .find(|m| m.file == fixture.to_string_lossy());
    let main_mapping = main_mapping
        .unwrap_or_else(|| panic!("no mapping for the fixture: {:?}", profile.mappings));
    assert!(
        !main_mapping.build_id.is_empty(),
        "fixture mapping has no build id"
    );

    let svg_text = std::fs::read_to_string(&svg).unwrap_or_default();
    assert!(
        svg_text.contains("<svg")
            && svg_text.contains("burn_heavy")
            && svg_text.contains("burn_light")
    );
    let folded_text = std::fs::read_to_string(&folded).unwrap_or_default();
    assert!(
        folded_text
            .lines()
            .any(|l| l.contains(";main;burn_heavy ") || l.contains("main;burn_heavy ")),
        "folded stacks lack main;burn_heavy: {folded_text}"
    );
}

/// Host-wide capture while a syscall-heavy workload runs: kernel frames are
/// named, and the names are real kernel symbols from /proc/kallsyms.
#[test]
fn host_wide_capture_names_kernel_frames() {
    require_root();
    let dir = TempDir::new("cpu-host");
    // dd with 1-byte blocks spends most of its time in read/write syscalls.
    let dd = std::process::Command::new("dd")
        .args(["if=/dev/zero", "of=/dev/null", "bs=1", "count=100000000"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting dd: {e}"));
    let _dd = qprof_e2e::ChildGuard(dd);
    let out = dir.join("host.pb.gz");
    let run = run_qprof(&[
        "record",
        "cpu",
        "--duration",
        "3s",
        "-o",
        out.to_str().unwrap_or_default(),
    ]);
    assert!(run.status.success(), "qprof failed: {}", stderr(&run));

    let top = pprof_tool::top(&out, "samples");
    let profile = decode(&out);
    let kernel = profile
        .mappings
        .iter()
        .position(|m| m.file == "[kernel.kallsyms]");
    let kernel = kernel.unwrap_or_else(|| panic!("no kernel mapping in {:?}", profile.mappings));
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let known: std::collections::HashSet<&str> = kallsyms
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    let kernel_names: std::collections::HashSet<String> = profile
        .samples
        .iter()
        .flat_map(|s| &s.stack)
        .filter(|loc| loc.mapping == Some(kernel))
        .filter_map(|loc| loc.lines.first().map(|l| l.function.clone()))
        .collect();
    assert!(!kernel_names.is_empty(), "no named kernel frames");
    assert!(
        kernel_names.iter().all(|n| known.contains(n.as_str())),
        "not kernel symbols: {kernel_names:?}"
    );
    assert!(
        kernel_names
            .iter()
            .any(|n| n.contains("sys_read") || n.contains("sys_write")),
        "dd's read/write syscalls not seen in kernel frames: {kernel_names:?}"
    );
    assert!(
        top.contains("dd")
            || profile.samples.iter().any(|s| s
                .labels
                .iter()
                .any(|l| l.value == profiles::LabelValue::Str("dd".into())))
    );
}

/// A process that exits during the capture still symbolizes: its mappings
/// were snapshotted while it was alive.
#[test]
fn exited_process_still_symbolizes() {
    require_root();
    let dir = TempDir::new("cpu-exit");
    let fixture = build_fixture("cpu_burn", dir.path());
    let child = start_fixture(&fixture, &["1.5"]);
    let pid = child.pid().to_string();
    let out = dir.join("exit.pb.gz");
    let run = run_qprof(&[
        "record",
        "cpu",
        "--pid",
        &pid,
        "--duration",
        "3s",
        "-o",
        out.to_str().unwrap_or_default(),
    ]);
    assert!(run.status.success(), "qprof failed: {}", stderr(&run));
    // The fixture exited after 1.5 s (a zombie now: its maps are empty).
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    assert!(
        maps.is_empty(),
        "the fixture should have exited during the capture"
    );
    let flat = pprof_tool::flat_by_function(&pprof_tool::top(&out, "samples"));
    let _ = ratio_of(&flat, "burn_heavy", "burn_light");
}

/// Ctrl-C (SIGINT) during a long capture still writes what was collected.
#[test]
fn interrupt_writes_partial_profile() {
    require_root();
    let dir = TempDir::new("cpu-int");
    let fixture = build_fixture("cpu_burn", dir.path());
    let child = start_fixture(&fixture, &["0"]);
    let pid = child.pid().to_string();
    let out = dir.join("int.pb.gz");
    let qprof = std::process::Command::new(qprof_e2e::qprof_bin())
        .args([
            "record",
            "cpu",
            "--pid",
            &pid,
            "--duration",
            "10m",
            "-o",
            out.to_str().unwrap_or_default(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting qprof: {e}"));
    let qprof = qprof_e2e::ChildGuard(qprof);
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: kill(2) on the qprof child we spawned.
    unsafe { libc::kill(qprof.pid() as i32, libc::SIGINT) };
    let mut qprof = qprof;
    let started = std::time::Instant::now();
    let status = loop {
        if let Ok(Some(status)) = qprof.0.try_wait() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "qprof did not stop after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "qprof exited with {status} after SIGINT");
    let flat = pprof_tool::flat_by_function(&pprof_tool::top(&out, "samples"));
    let _ = ratio_of(&flat, "burn_heavy", "burn_light");
}

/// `qprof flamegraph` renders our own profile and one written by Go's
/// runtime/pprof (another tool's output).
#[test]
fn flamegraph_renders_ours_and_go_profiles() {
    require_root();
    let dir = TempDir::new("flame");
    let fixture = build_fixture("cpu_burn", dir.path());
    let child = start_fixture(&fixture, &["0"]);
    let pid = child.pid().to_string();
    let out = dir.join("f.pb.gz");
    let run = run_qprof(&[
        "record",
        "cpu",
        "--pid",
        &pid,
        "--duration",
        "2s",
        "-o",
        out.to_str().unwrap_or_default(),
    ]);
    assert!(run.status.success(), "qprof failed: {}", stderr(&run));
    let run = run_qprof(&["flamegraph", out.to_str().unwrap_or_default()]);
    assert!(run.status.success(), "flamegraph failed: {}", stderr(&run));
    let svg = std::fs::read_to_string(dir.join("f.svg")).unwrap_or_default();
    assert!(
        svg.contains("burn_heavy"),
        "default output f.svg lacks burn_heavy"
    );

    let go = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/tests/data/go-cpu.pb.gz");
    let go_svg = dir.join("go.svg");
    let run = run_qprof(&[
        "flamegraph",
        go.to_str().unwrap_or_default(),
        "-o",
        go_svg.to_str().unwrap_or_default(),
        "--sample-type",
        "samples",
    ]);
    assert!(
        run.status.success(),
        "flamegraph of a Go profile failed: {}",
        stderr(&run)
    );
    assert!(
        std::fs::read_to_string(&go_svg)
            .unwrap_or_default()
            .contains("<svg")
    );
}
