//! Running qprof and a fixture side by side: qprof is started and waited
//! on until its probes are attached ("qprof: recording" on stderr), then the
//! fixture is told to do its work, so every call it makes is seen.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::Path,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::Duration,
};

use crate::{ChildGuard, qprof_bin};

/// A qprof run whose probes are attached.
pub struct QprofRun {
    child: ChildGuard,
    stderr: Option<JoinHandle<String>>,
    stdout: Option<JoinHandle<String>>,
    head: String,
}

/// What a finished run printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl QprofRun {
    /// Starts qprof and returns once it says it is recording (or panics with
    /// what it printed if it exits first or takes over 60 s).
    #[must_use]
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(qprof_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting qprof: {e}"));
        let stdout = child.stdout.take().map(|mut out| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = out.read_to_string(&mut s);
                s
            })
        });
        let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut all = String::new();
            let mut line = String::new();
            let mut told = false;
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                all.push_str(&line);
                if !told && line.contains("qprof: recording") {
                    let _ = tx.send(all.clone());
                    told = true;
                }
                line.clear();
            }
            if !told {
                let _ = tx.send(all.clone());
            }
            all
        });
        let head = rx.recv_timeout(Duration::from_mins(1)).unwrap_or_default();
        let mut run = Self {
            child: ChildGuard(child),
            stderr: Some(reader),
            stdout,
            head,
        };
        if !run.head.contains("qprof: recording") {
            let fin = run.wait();
            panic!("qprof did not start recording: {fin:?}");
        }
        run
    }

    /// Sends SIGINT (Ctrl-C).
    pub fn interrupt(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.pid() as i32, libc::SIGINT) };
    }

    /// Waits for qprof to exit (at most 120 s) and collects its output.
    #[must_use]
    pub fn wait(&mut self) -> Finished {
        let deadline = std::time::Instant::now() + Duration::from_mins(2);
        let status = loop {
            if let Ok(Some(status)) = self.child.0.try_wait() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.0.kill();
                break self.child.0.wait().unwrap_or_else(|e| panic!("wait: {e}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_else(|| self.head.clone());
        let stdout = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Finished {
            status,
            stdout,
            stderr,
        }
    }
}

/// A fixture that prints "ready pid=N", works when told, prints "done".
pub struct Fixture {
    child: ChildGuard,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// The pid the fixture reported (differs from the child's when it runs
    /// under a wrapper such as strace).
    pub pid: u32,
}

impl Fixture {
    /// Starts `program args...` (the fixture, or a wrapper running it).
    #[must_use]
    pub fn start(program: &Path, args: &[&str]) -> Self {
        let mut child: Child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut fixture = Self {
            child: ChildGuard(child),
            stdin,
            lines,
            pid: 0,
        };
        let ready = fixture.expect_line("ready");
        fixture.pid = ready
            .split("pid=")
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("bad ready line {ready:?}"));
        fixture
    }

    fn expect_line(&self, prefix: &str) -> String {
        let line = self
            .lines
            .recv_timeout(Duration::from_mins(2))
            .unwrap_or_else(|e| panic!("fixture did not print {prefix:?}: {e}"));
        assert!(
            line.starts_with(prefix),
            "expected {prefix:?}, got {line:?}"
        );
        line
    }

    /// Tells the fixture to work and waits until it is done.
    pub fn run_to_done(&mut self) {
        if let Some(stdin) = self.stdin.as_mut() {
            writeln!(stdin, "go").unwrap_or_else(|e| panic!("telling the fixture to go: {e}"));
            let _ = stdin.flush();
        }
        let _ = self.expect_line("done");
    }

    /// Lets the fixture exit (closes its stdin) and waits for it.
    #[must_use]
    pub fn finish(mut self) -> ExitStatus {
        drop(self.stdin.take());
        self.child
            .0
            .wait()
            .unwrap_or_else(|e| panic!("waiting for the fixture: {e}"))
    }
}
