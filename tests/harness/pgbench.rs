//! pgbench as a reference workload: a background run (killed on drop) with
//! a per-transaction log (`-l`), and that log read back with each
//! transaction's end time, so a test can compare a time window of it with
//! what a monitoring system saw over the same window.

use std::{
    path::{Path, PathBuf},
    process::{Child, Output, Stdio},
    time::Duration,
};

use crate::postgres::PgServer;

/// One logged transaction.
#[derive(Debug, Clone, Copy)]
pub struct Txn {
    /// When it ended, Unix seconds (pgbench's `time_epoch` + `time_us`).
    pub end: f64,
    /// Its latency as pgbench measured it, µs.
    pub latency_us: f64,
}

/// A pgbench running in the background.
pub struct PgbenchRun {
    /// `None` once waited for; killed on drop otherwise.
    child: Option<Child>,
    log_prefix: PathBuf,
}

impl PgbenchRun {
    /// Starts `pgbench -n -M <mode> -c <clients> -T <duration> -l -f <script>`
    /// against `server`, logging to `<dir>/<prefix>.<pid>[.<thread>]`.
    #[must_use]
    pub fn start(
        server: &PgServer,
        dir: &Path,
        script_text: &str,
        (mode, clients, duration): (&str, u32, Duration),
    ) -> Self {
        let script = dir.join("pgbench-script.sql");
        std::fs::write(&script, script_text)
            .unwrap_or_else(|e| panic!("writing {}: {e}", script.display()));
        let log_prefix = dir.join("pgbench-log");
        let child = server
            .client("pgbench")
            .args(["-n", "-M", mode, "-l", "-c", &clients.to_string()])
            .args(["-T", &duration.as_secs().to_string(), "-f"])
            .arg(&script)
            .arg(format!("--log-prefix={}", log_prefix.display()))
            .arg("postgres")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting pgbench: {e}"));
        Self {
            child: Some(child),
            log_prefix,
        }
    }

    /// Waits for pgbench to finish; panics with its output if it failed.
    pub fn wait(&mut self) -> Output {
        let Some(child) = self.child.take() else {
            panic!("pgbench already waited for");
        };
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for pgbench: {e}"));
        assert!(
            out.status.success(),
            "pgbench failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Whether pgbench is still running.
    #[must_use]
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().is_ok_and(|s| s.is_none()))
    }

    /// Every transaction of the log files, by end time.
    #[must_use]
    pub fn transactions(&self) -> Vec<Txn> {
        let dir = self.log_prefix.parent().unwrap_or_else(|| Path::new("."));
        let prefix = self
            .log_prefix
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut txns: Vec<Txn> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .flat_map(|text| text.lines().filter_map(parse_line).collect::<Vec<_>>())
            .collect();
        txns.sort_by(|a, b| a.end.total_cmp(&b.end));
        txns
    }
}

impl Drop for PgbenchRun {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `client_id transaction_no time script_no time_epoch time_us`: latency
/// is the third field (µs), the end time the fifth and sixth.
fn parse_line(line: &str) -> Option<Txn> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let latency_us = f.get(2)?.parse().ok()?;
    let secs: f64 = f.get(4)?.parse().ok()?;
    let micros: f64 = f.get(5)?.parse().ok()?;
    Some(Txn {
        end: secs + micros * 1e-6,
        latency_us,
    })
}

/// The `q` quantile of sorted values (nearest rank, as pgbench and
/// Prometheus' reference definitions take it).
#[must_use]
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or(f64::NAN)
}
