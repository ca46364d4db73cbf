//! `cargo xtask bench tcp`: pgbench -S (4 clients, loopback) against a
//! throw-away PostgreSQL, untraced vs under `qprof record tcp` host-wide,
//! interleaved in one run. Target: traced TPS >= 0.97x untraced.
//!
//! Every pgbench transaction is a query and a reply on loopback, so each
//! one fires `tcp_probe` on both the client's and the server's socket:
//! this is the per-packet cost of the TCP tracer at ~100k packets/s.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, ExitCode, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::{
    postgres::{self, Cluster},
    process::{clock_ticks_per_second, foreign_ticks, online_cpus},
};
use crate::util;

/// Seconds per measured pgbench run.
const SECONDS: u64 = 20;
/// Untraced/traced pairs; the order alternates (ABBA) so drift in the
/// machine's speed hits both conditions alike. Clean 20 s runs still vary
/// by ±4% here, so a 3% budget needs several pairs.
const ROUNDS: usize = 5;
const CLIENTS: &str = "4";
const THREADS: &str = "2";
/// pgbench scale: 10 is 1M rows in `pgbench_accounts`, in shared buffers.
const SCALE: &str = "10";
/// Off the common 5432 so a real server on the host is never touched.
const PORT: u16 = 54_329;
const TARGET: f64 = 0.97;

pub fn run() -> anyhow::Result<ExitCode> {
    if !util::is_root() {
        bail!("the benchmark loads BPF programs: run as root (sudo -E cargo xtask bench tcp)");
    }
    let bin = postgres::ensure_installed()?;
    let qprof = util::build_qprof()?;
    let cluster = Cluster::start(&bin, PORT).context("starting a throw-away PostgreSQL")?;
    util::run_cmd(
        cluster
            .pgbench()
            .args(["-i", "-q", "-s", SCALE, "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .context("pgbench -i")?;
    eprintln!("bench: warm-up");
    pgbench(&cluster, 5)?;
    let ours = [std::process::id(), cluster.postmaster_pid()?];
    let (mut untraced, mut traced, mut discarded) = (Vec::new(), Vec::new(), 0);
    for round in 0..ROUNDS {
        for traced_first in [round % 2 == 1, round % 2 == 0] {
            let (tps, retries) = measure(&cluster, &qprof, traced_first, &ours)?;
            discarded += retries;
            if traced_first {
                traced.push(tps);
            } else {
                untraced.push(tps);
            }
        }
    }
    report(&untraced, &traced, discarded);
    Ok(ExitCode::SUCCESS)
}

/// One run of a condition, repeated (up to `RETRIES` times) while other
/// work on the machine took more than `MAX_FOREIGN` of its CPU time: on a
/// shared 2-CPU machine a compile starting mid-run moves TPS by 30%.
/// Returns the TPS and how many runs were discarded.
fn measure(
    cluster: &Cluster,
    qprof: &std::path::Path,
    traced: bool,
    ours: &[u32],
) -> anyhow::Result<(f64, usize)> {
    // (share of the CPUs other work took, TPS) of the least disturbed run.
    let mut best: Option<(f64, f64)> = None;
    for attempt in 0..=RETRIES {
        wait_for_quiet();
        let before = foreign_ticks(ours);
        let (tps, summary) = if traced {
            let running = Tracer::start(qprof)?;
            let tps = pgbench(cluster, SECONDS)?;
            (tps, running.stop()?)
        } else {
            (pgbench(cluster, SECONDS)?, String::new())
        };
        let foreign = foreign_ticks(ours).saturating_sub(before) as f64
            / (clock_ticks_per_second() as f64 * SECONDS as f64 * online_cpus() as f64);
        let label = if traced { "traced  " } else { "untraced" };
        eprintln!(
            "bench: {label} {tps:>9.0} TPS, other work {:.1}% of the CPUs {summary}",
            foreign * 100.0
        );
        if foreign <= MAX_FOREIGN {
            return Ok((tps, attempt));
        }
        if best.is_none_or(|(f, _)| foreign < f) {
            best = Some((foreign, tps));
        }
    }
    eprintln!("bench: warning: every attempt was disturbed; keeping the least disturbed");
    Ok((best.map_or(0.0, |(_, tps)| tps), RETRIES + 1))
}

/// Other work may take this share of the CPUs during a kept run.
const MAX_FOREIGN: f64 = 0.03;
const RETRIES: usize = 4;

/// (busy, total) jiffies of all CPUs from `/proc/stat`.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = text
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Waits (up to 2 minutes) until the machine is below 10% busy over a
/// second, so that other work does not land in one condition only; says
/// so when it never gets quiet.
fn wait_for_quiet() {
    for _ in 0..120 {
        let Some((b0, t0)) = cpu_jiffies() else {
            return;
        };
        std::thread::sleep(Duration::from_secs(1));
        let Some((b1, t1)) = cpu_jiffies() else {
            return;
        };
        if t1 > t0 && ((b1 - b0) as f64) < 0.10 * (t1 - t0) as f64 {
            return;
        }
    }
    eprintln!("bench: warning: the machine stayed busy; this run shares it with other work");
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The headline is the median of per-round ratios: each round's two runs
/// are adjacent in time, and this machine's speed drifts by ~10% over a
/// few runs, which a ratio of medians would mix in.
fn report(untraced: &[f64], traced: &[f64], discarded: usize) {
    let pairs: Vec<f64> = untraced.iter().zip(traced).map(|(u, t)| t / u).collect();
    let ratio = median(&pairs);
    let shown: Vec<String> = pairs.iter().map(|r| format!("{r:.3}")).collect();
    println!(
        "pgbench -S, {CLIENTS} clients, {SECONDS} s x {ROUNDS} rounds (interleaved; \
         {discarded} runs disturbed by other work redone)"
    );
    println!(
        "  TPS medians: untraced {:.0}, under qprof record tcp (host-wide) {:.0}",
        median(untraced),
        median(traced)
    );
    println!(
        "  traced/untraced: {ratio:.3}x (median of rounds: {}); target >= {TARGET}x: {}",
        shown.join(", "),
        if ratio >= TARGET { "met" } else { "NOT met" }
    );
}

/// One `pgbench -S` run; its TPS without connection time.
fn pgbench(cluster: &Cluster, seconds: u64) -> anyhow::Result<f64> {
    let out = cluster
        .pgbench()
        .args([
            "-S",
            "-c",
            CLIENTS,
            "-j",
            THREADS,
            "-T",
            &seconds.to_string(),
            "postgres",
        ])
        .stderr(Stdio::null())
        .output()
        .context("running pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("pgbench failed with {}: {text}", out.status);
    }
    postgres::parse_tps(&text).with_context(|| format!("no TPS in pgbench's output: {text}"))
}

/// `qprof record tcp` running host-wide; killed if dropped before `stop`.
struct Tracer {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
}

impl Tracer {
    /// Starts qprof and waits until it says it is recording (probes attached).
    fn start(qprof: &std::path::Path) -> anyhow::Result<Self> {
        let mut child = Command::new(qprof)
            .args(["record", "tcp", "--duration", "10m"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", qprof.display()))?;
        let stderr = child.stderr.take().context("qprof has no stderr")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let tracer = Self {
            child: Some(child),
            lines,
        };
        loop {
            let line = tracer
                .lines
                .recv_timeout(Duration::from_mins(1))
                .context("qprof did not start recording within a minute")?;
            if line.contains("qprof: recording") {
                return Ok(tracer);
            }
            if line.contains("error") {
                bail!("qprof failed to start: {line}");
            }
        }
    }

    /// Ctrl-C, then its summary line.
    fn stop(mut self) -> anyhow::Result<String> {
        let mut child = self.child.take().context("qprof already stopped")?;
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = child.wait().context("waiting for qprof")?;
        let rest: Vec<String> = self.lines.iter().collect();
        if !status.success() {
            bail!("qprof exited with {status}: {}", rest.join("\n"));
        }
        Ok(rest
            .iter()
            .find(|l| l.contains("connects"))
            .map(|l| l.trim_start_matches("qprof: ").to_owned())
            .unwrap_or_default())
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
