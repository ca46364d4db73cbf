//! Bad input: every value `record cpu` and `flamegraph` take, in its
//! malformed form, gives a clear error and a non-zero exit, never a panic.

use std::{io::Write as _, os::unix::fs::PermissionsExt as _, process::Command, time::Duration};

use qprof_e2e::{TempDir, assert_fails_with, qprof_bin, require_root, run_qprof, run_with_timeout};

/// A pid that no process has: a reaped child's pid, checked to be free.
fn dead_pid() -> u32 {
    let mut child = Command::new("true")
        .spawn()
        .unwrap_or_else(|e| panic!("spawn true: {e}"));
    let pid = child.id();
    let _ = child.wait();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} reused already"
    );
    pid
}

/// A pid that does not exist is named in the error.
#[test]
fn nonexistent_pid() {
    require_root();
    let pid = dead_pid().to_string();
    let out = run_qprof(&[
        "record",
        "cpu",
        "--pid",
        &pid,
        "--duration",
        "1s",
        "-o",
        "/tmp/qprof-never.pb.gz",
    ]);
    assert_fails_with(&out, &format!("no process with pid {pid}"));
    assert_fails_with(
        &run_qprof(&["record", "cpu", "--pid", "abc"]),
        "invalid pid 'abc'",
    );
    assert_fails_with(
        &run_qprof(&["record", "cpu", "--pid", "0"]),
        "invalid pid '0'",
    );
}

/// `--hz 0`, non-numeric, and above the kernel's `perf_event_max_sample_rate`.
#[test]
fn bad_sampling_rates() {
    require_root();
    assert_fails_with(&run_qprof(&["record", "cpu", "--hz", "0"]), "at least 1");
    assert_fails_with(
        &run_qprof(&["record", "cpu", "--hz", "lots"]),
        "invalid --hz 'lots'",
    );
    let max: u64 = std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot read perf_event_max_sample_rate"));
    let above = (max + 1).to_string();
    let dir = TempDir::new("hz");
    let out = dir.join("x.pb.gz");
    let run = run_qprof(&[
        "record",
        "cpu",
        "--hz",
        &above,
        "--duration",
        "1s",
        "-o",
        out.to_str().unwrap_or_default(),
    ]);
    assert_fails_with(&run, &format!("above the kernel's limit of {max}"));
    assert!(
        !out.exists(),
        "no profile may be written when validation fails"
    );
}

/// Duration 0, unparsable, and unknown units.
#[test]
fn bad_durations() {
    require_root();
    for bad in ["0", "0s", "soon", "10parsecs", "-5s"] {
        let arg = format!("--duration={bad}");
        assert_fails_with(&run_qprof(&["record", "cpu", &arg]), "invalid duration");
    }
}

/// Output paths in a missing or unwritable directory are refused before
/// sampling starts (the run fails fast, well before its duration).
#[test]
fn bad_output_paths() {
    require_root();
    let started = std::time::Instant::now();
    let run = run_qprof(&[
        "record",
        "cpu",
        "--duration",
        "30s",
        "-o",
        "/nonexistent-qprof-dir/cpu.pb.gz",
    ]);
    assert_fails_with(&run, "/nonexistent-qprof-dir does not exist");
    // /proc refuses new files even for root.
    let run = run_qprof(&[
        "record",
        "cpu",
        "--duration",
        "30s",
        "-o",
        "/proc/qprof-cpu.pb.gz",
    ]);
    assert_fails_with(&run, "/proc is not writable");
    let dir = TempDir::new("outs");
    let ok = dir.join("ok.pb.gz");
    let ok = ok.to_str().unwrap_or_default();
    let run = run_qprof(&[
        "record",
        "cpu",
        "--duration",
        "30s",
        "-o",
        ok,
        "--svg",
        "/nonexistent-qprof-dir/x.svg",
    ]);
    assert_fails_with(&run, "/nonexistent-qprof-dir does not exist");
    let run = run_qprof(&[
        "record",
        "cpu",
        "--duration",
        "30s",
        "-o",
        ok,
        "--folded",
        "/proc/x.folded",
    ]);
    assert_fails_with(&run, "/proc is not writable");
    let run = run_qprof(&[
        "record",
        "cpu",
        "--duration",
        "30s",
        "-o",
        dir.path().to_str().unwrap_or_default(),
    ]);
    assert_fails_with(&run, "is a directory");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "validation should fail before sampling"
    );
}

/// Without root (as nobody, no capabilities) the error names the missing
/// capabilities.
#[test]
fn unprivileged_run_names_capabilities() {
    require_root();
    // Copy the binary somewhere nobody can execute it from.
    let dir = TempDir::new("nopriv");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .unwrap_or_default();
    let bin = dir.join("qprof");
    std::fs::copy(qprof_bin(), &bin).unwrap_or_else(|e| panic!("copying qprof: {e}"));
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap_or_default();
    let out = run_with_timeout(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(&bin)
            .args([
                "record",
                "cpu",
                "--duration",
                "1s",
                "-o",
                "/tmp/qprof-nobody.pb.gz",
            ]),
        Duration::from_secs(30),
    );
    assert_fails_with(&out, "CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN");
}

/// `flamegraph` on corrupt, truncated, empty and missing files, and an
/// unknown sample type: clear errors, no panic, no SVG written.
#[test]
fn flamegraph_bad_files() {
    require_root();
    let dir = TempDir::new("badfiles");
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).unwrap_or_else(|e| panic!("create: {e}"));
        f.write_all(bytes).unwrap_or_else(|e| panic!("write: {e}"));
        path.to_string_lossy().into_owned()
    };
    let go = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../profiles/tests/data/go-cpu.pb.gz");
    let good = std::fs::read(&go).unwrap_or_else(|e| panic!("reading {}: {e}", go.display()));
    let cases = [
        (write("empty.pb.gz", b""), "empty"),
        (
            write(
                "random.pb.gz",
                b"\x07\x93garbage that is not protobuf at all \xff\xfe",
            ),
            "not a readable pprof profile",
        ),
        (write("truncated.pb.gz", &good[..good.len() / 2]), "gzip"),
    ];
    for (path, needle) in &cases {
        let svg = format!("{path}.svg");
        let out = run_qprof(&["flamegraph", path, "-o", &svg]);
        assert_fails_with(&out, needle);
        assert_fails_with(&out, "not a readable pprof profile");
        assert!(
            !std::path::Path::new(&svg).exists(),
            "an SVG was written for {path}"
        );
    }
    let missing = dir.join("missing.pb.gz");
    assert_fails_with(
        &run_qprof(&["flamegraph", missing.to_str().unwrap_or_default()]),
        "missing.pb.gz",
    );
    let out = run_qprof(&[
        "flamegraph",
        go.to_str().unwrap_or_default(),
        "-o",
        &dir.join("x.svg").to_string_lossy(),
        "--sample-type",
        "bogus",
    ]);
    assert_fails_with(&out, "no sample type 'bogus'");
}

/// Runs qprof with `args` to completion and returns its exit status, its
/// stderr and its peak resident memory in KiB (from the kernel, `wait4`).
#[expect(
    clippy::zombie_processes,
    reason = "reaped with wait4, which also returns its rusage"
)]
fn run_measuring_rss(args: &[&str]) -> (i32, String, i64) {
    let child = Command::new(qprof_bin())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning qprof: {e}"));
    let pid = libc::pid_t::try_from(child.id()).unwrap_or_else(|e| panic!("pid: {e}"));
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr {
        std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap_or_default();
    }
    let mut status = 0;
    // SAFETY: rusage is plain data the kernel fills; zeroed is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet reaped (its `Child` handle
    // was consumed without waiting); both out-pointers are valid.
    let reaped = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    (libc::WEXITSTATUS(status), stderr, usage.ru_maxrss)
}

/// A gzip bomb (1 GiB of zeros in ~1 MB, made by gzip itself) is refused
/// with an error naming the cap, and `qprof flamegraph` peaks far below
/// the gigabyte it would have taken (it used to take 1 GiB).
#[test]
fn flamegraph_refuses_gzip_bomb_in_bounded_memory() {
    require_root();
    let dir = TempDir::new("bomb");
    let bomb = dir.join("bomb.pb.gz");
    let made = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 1073741824 /dev/zero | gzip -9 > '{}'",
            bomb.display()
        ))
        .status()
        .unwrap_or_else(|e| panic!("running gzip: {e}"));
    assert!(made.success(), "gzip failed");
    let size = std::fs::metadata(&bomb).map_or(0, |m| m.len());
    assert!(size > 0 && size < 4 << 20, "bomb is {size} bytes");
    let svg = dir.join("bomb.svg");
    let (code, stderr, max_rss_kib) = run_measuring_rss(&[
        "flamegraph",
        &bomb.to_string_lossy(),
        "-o",
        &svg.to_string_lossy(),
    ]);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("larger than 256 MiB (268435456 bytes), the cap on inflated pprof data"),
        "{stderr}"
    );
    assert!(!svg.exists(), "an SVG was written for a bomb");
    // The file (~1 MB) + the 16 MiB one-pass buffer + the binary itself.
    assert!(
        max_rss_kib < 64 * 1024,
        "qprof flamegraph peaked at {} MiB on a gzip bomb",
        max_rss_kib / 1024
    );
    eprintln!("peak RSS on the bomb: {} MiB", max_rss_kib / 1024);
}
