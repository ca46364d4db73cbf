//! A `qprof agent` on a free loopback port with a temporary data directory,
//! its log readable while it runs, and a small HTTP client for its API.
//! Dropping it kills the agent (SIGKILL) if a test did not stop it.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{ChildGuard, TempDir, qprof_bin};

/// A running agent.
pub struct AgentRun {
    pub child: ChildGuard,
    pub port: u16,
    pub dir: TempDir,
    log: Arc<Mutex<String>>,
    pub token: Option<String>,
}

/// A port nothing listens on now.
#[must_use]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or_else(|e| panic!("no free port: {e}"), |a| a.port())
}

/// An HTTP answer: status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[must_use]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

impl AgentRun {
    /// Starts `qprof agent --config <dir>/qprof.toml --data-dir <dir>/data
    /// --listen 127.0.0.1:<free port>` with `config` as the file, and waits
    /// until it listens (or panics with its log).
    #[must_use]
    pub fn start(tag: &str, config: &str, extra: &[&str]) -> Self {
        Self::start_in(TempDir::new(tag), config, extra)
    }

    /// Same, on an existing directory (a restart on the same data).
    #[must_use]
    pub fn start_in(dir: TempDir, config: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let conf = dir.join("qprof.toml");
        std::fs::write(&conf, config).unwrap_or_else(|e| panic!("writing config: {e}"));
        let data = dir.join("data");
        let listen = format!("127.0.0.1:{port}");
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--config".into(),
            conf.display().to_string(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen".into(),
            listen,
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut child = Command::new(qprof_bin())
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting the agent: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = log.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stderr);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    eprint!("[agent] {line}");
                    if let Ok(mut l) = sink.lock() {
                        l.push_str(&line);
                    }
                    line.clear();
                }
            });
        }
        let token = extra
            .iter()
            .position(|a| *a == "--auth-token-file")
            .and_then(|i| extra.get(i + 1))
            .map(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            });
        let mut run = Self {
            child: ChildGuard(child),
            port,
            dir,
            log,
            token,
        };
        run.wait_log("listening on", Duration::from_mins(1));
        run
    }

    /// The agent's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log if the
    /// agent exits first or time runs out.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.0.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                panic!("agent exited ({status}) before {needle:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "agent did not log {needle:?} within {timeout:?}:\n{}",
            self.log()
        );
    }

    #[must_use]
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A request with the agent's token (if it has one).
    #[must_use]
    pub fn get(&self, path: &str) -> Answer {
        self.send("GET", path, None, self.token.as_deref())
    }

    #[must_use]
    pub fn post(&self, path: &str, body: &str) -> Answer {
        self.send("POST", path, Some(body.as_bytes()), self.token.as_deref())
    }

    /// Any request, with or without a token; never panics on a 4xx/5xx.
    #[must_use]
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        token: Option<&str>,
    ) -> Answer {
        let mut req = ureq::request(method, &self.url(path)).timeout(Duration::from_mins(1));
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let result = match body {
            Some(b) => req.set("Content-Type", "application/json").send_bytes(b),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let mut body = Vec::new();
        let _ = resp.into_reader().read_to_end(&mut body);
        Answer { status, body }
    }

    /// SIGTERM (or another signal) and wait for the exit, at most 60 s.
    pub fn signal_and_wait(&mut self, signal: i32) -> ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.pid() as i32, signal) };
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            if let Ok(Some(status)) = self.child.0.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls a capture until it is no longer running; returns its meta.
    #[must_use]
    pub fn wait_capture(&self, id: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let meta = self.get(&format!("/api/captures/{id}")).json();
            if meta["status"] != "running" {
                return meta;
            }
            assert!(
                Instant::now() < deadline,
                "capture {id} still running:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Ids of the BPF programs process `pid` holds, from the `prog_id:` line
/// of each of its file descriptors' fdinfo (bpftool here cannot name the
/// holders of a program).
#[must_use]
pub fn held_programs(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    let mut ids: Vec<u32> = dir
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("prog_id:")
                    .and_then(|v| v.trim().parse().ok())
            })
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Those of `ids` the kernel still has loaded (`bpftool prog show id N`).
#[must_use]
pub fn still_loaded(ids: &[u32]) -> Vec<u32> {
    ids.iter()
        .copied()
        .filter(|id| {
            Command::new("bpftool")
                .args(["prog", "show", "id", &id.to_string()])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect()
}

/// Path of a file inside `dir` (for a test's config).
#[must_use]
pub fn file_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
