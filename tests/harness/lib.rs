//! Shared harness for qprof's privileged end-to-end tests: locating the
//! binary, building fixtures, temporary directories and children that are
//! cleaned up even when a test fails, and the reference readers (`go tool
//! pprof`) that qprof's outputs are checked against.
#![expect(
    clippy::missing_panics_doc,
    reason = "a test harness fails tests by panicking"
)]

pub mod agent;
pub mod net;
pub mod pg_queries;
pub mod pgbench;
pub mod postgres;
pub mod pprof_tool;
pub mod prometheus;
pub mod receiver;
pub mod session;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// The qprof binary under test: `$QPROF_BIN` (set by `cargo xtask test`),
/// else the workspace's release build.
#[must_use]
pub fn qprof_bin() -> PathBuf {
    let path = std::env::var_os("QPROF_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/qprof"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "qprof binary not found at {} (run `cargo xtask test`)",
        path.display()
    );
    path
}

/// Fails the test with a clear message unless running as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "end-to-end tests load BPF programs and must run as root (cargo xtask test)"
    );
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    #[must_use]
    pub fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("qprof-e2e-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self(path)
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.0
    }

    #[must_use]
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed and reaped on drop, so a failing test leaves no
/// workload (or qprof, with its probes) behind.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Compiles `tests/fixtures/<name>.c` with frame pointers into `dir`.
#[must_use]
pub fn build_fixture(name: &str, dir: &Path) -> PathBuf {
    build_fixture_with(name, dir, &[])
}

/// As [`build_fixture`], with extra compiler/linker arguments after the
/// source (e.g. `-lpq`).
#[must_use]
pub fn build_fixture_with(name: &str, dir: &Path, extra: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(format!("{name}.c"));
    let out = dir.join(name);
    let status = Command::new("gcc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .args(extra)
        .status()
        .unwrap_or_else(|e| panic!("running gcc for {}: {e}", src.display()));
    assert!(status.success(), "gcc failed on {}", src.display());
    out
}

/// Starts a fixture and waits for its "ready" line, so it is running (and
/// its pid valid) before qprof starts.
#[must_use]
pub fn start_fixture(bin: &Path, args: &[&str]) -> ChildGuard {
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    assert!(
        line.starts_with("ready"),
        "fixture {} did not start: {line:?}",
        bin.display()
    );
    ChildGuard(child)
}

/// Runs qprof to completion with a generous timeout.
#[must_use]
pub fn run_qprof(args: &[&str]) -> Output {
    run_with_timeout(Command::new(qprof_bin()).args(args), Duration::from_mins(2))
}

/// Runs a command, killing it if it outlives `timeout`.
#[must_use]
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let pid = child.id();
    let started = Instant::now();
    let watchdog = std::thread::spawn(move || {
        while started.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(100));
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
        }
        // SAFETY: plain kill(2) on a pid we spawned; at worst ESRCH.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"));
    let _ = watchdog.join();
    output
}

/// stderr as text.
#[must_use]
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts a clean failure: non-zero exit, no panic, and `needle` in stderr.
pub fn assert_fails_with(output: &Output, needle: &str) {
    let err = stderr(output);
    assert!(
        !output.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert_eq!(
        output.status.code(),
        output.status.code().filter(|c| *c != 101),
        "panicked: {err}"
    );
    assert!(!err.contains("panicked"), "qprof panicked: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}
