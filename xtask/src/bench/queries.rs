//! `cargo xtask bench queries`: pgbench -S (4 clients, loopback) untraced,
//! under `qprof record queries`, and under a bpftrace script with uprobes on
//! PQsendQuery and PQgetResult (+ uretprobe on PQgetResult), interleaved in
//! one run; then the same over TLS (`sslmode=require`), bpftrace's peer
//! script on `SSL_write`/`SSL_read`. Reports TPS ratios and probe runs per
//! query, counted from the kernel's own BPF run counters
//! (`kernel.bpf_stats_enabled`, `bpftool`); a uretprobe's run is counted
//! too, although with the `uretprobe` syscall it costs no trap.
//! Targets (issue 4): qprof's ratio above bpftrace's; <= 2 traps/query.

use std::{
    path::Path,
    process::{Command, ExitCode},
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::{
    postgres::{Cluster, ensure_installed, parse_tps},
    process::{BpfStats, Running, Scratch, wait_for_text},
};
use crate::util::{self, run_cmd};

const SECONDS: u32 = 10;
const ROUNDS: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Untraced,
    Qprof,
    Bpftrace,
    UntracedTls,
    QprofTls,
    BpftraceTls,
}

impl Mode {
    const ALL: [Mode; 6] = [
        Mode::Untraced,
        Mode::Qprof,
        Mode::Bpftrace,
        Mode::UntracedTls,
        Mode::QprofTls,
        Mode::BpftraceTls,
    ];

    fn tls(self) -> bool {
        matches!(self, Mode::UntracedTls | Mode::QprofTls | Mode::BpftraceTls)
    }
}

/// One measurement: TPS, probe runs per query, and qprof's runs per query
/// by program name.
type Sample = (f64, f64, Vec<(String, f64)>);

pub fn run() -> anyhow::Result<ExitCode> {
    if !util::is_root() {
        bail!("benchmarks load BPF programs: run as root");
    }
    for (pkg, prog) in [("bpftrace", "bpftrace"), ("bpftool", "bpftool")] {
        if !util::on_path(prog) {
            run_cmd(
                Command::new("apt-get")
                    .args(["install", "-y", "-q", pkg])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )?;
        }
    }
    let bin = ensure_installed()?;
    let qprof = util::build_qprof()?;
    let scratch = Scratch::create("queries")?;
    let cluster = Cluster::start_with(&bin, 5497, true)?;
    run_cmd(cluster.pgbench().args(["-i", "-s", "10", "-q", "postgres"]))?;
    let libs = [find_lib("libpq.so.5.")?, find_lib("libssl.so.3")?];
    let stats = BpfStats::enable()?;
    let mut results: Vec<(Mode, Vec<Sample>)> =
        Mode::ALL.into_iter().map(|m| (m, Vec::new())).collect();
    for round in 0..ROUNDS {
        for (mode, runs) in &mut results {
            let sample = measure(*mode, &qprof, &cluster, &libs, &scratch)?;
            eprintln!(
                "  round {}: {mode:?}: {:.0} TPS, {:.2} probe runs/query",
                round + 1,
                sample.0,
                sample.1
            );
            runs.push(sample);
        }
    }
    drop(stats);
    let (statements, peak_mb) = memory_with_distinct_statements(&qprof, &cluster, &scratch)?;
    let (q, b, qt, bt, plain_runs) = report(&results);
    println!(
        "qprof peak RSS with {statements} distinct statements seen: {peak_mb:.1} MB (target <= 64 MB: {})",
        if peak_mb <= 64.0 { "met" } else { "NOT met" }
    );
    println!(
        "targets: qprof ratio > bpftrace ratio: plaintext {}, TLS {}; <= 2 traps/query (plaintext): {}",
        if q > b { "met" } else { "NOT met" },
        if qt > bt { "met" } else { "NOT met" },
        if plain_runs <= 2.0 { "met" } else { "NOT met" }
    );
    Ok(ExitCode::SUCCESS)
}

/// bpftrace's peer script for `mode`: query start at the send, end at the
/// last receive.
/// Prints the table (medians over rounds); returns the TPS of qprof and
/// bpftrace on plaintext and TLS, and qprof's probe runs per plaintext
/// query, for the targets.
fn report(results: &[(Mode, Vec<Sample>)]) -> (f64, f64, f64, f64, f64) {
    let median = |mode: Mode, pick: fn(&Sample) -> f64| {
        let mut v: Vec<f64> = results
            .iter()
            .find(|(m, _)| *m == mode)
            .map(|(_, r)| r.iter().map(pick).collect())
            .unwrap_or_default();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let tps = |m| median(m, |r| r.0);
    let runs = |m| median(m, |r| r.1);
    println!("pgbench -S -c 4 -j 2 -T {SECONDS}, loopback, median of {ROUNDS} interleaved rounds:");
    println!("| condition | TPS | ratio | probe runs/query |");
    println!("| --- | --- | --- | --- |");
    for (base, rows) in [
        (
            Mode::Untraced,
            [
                (Mode::Untraced, "plaintext, untraced"),
                (Mode::Qprof, "plaintext, qprof record queries"),
                (
                    Mode::Bpftrace,
                    "plaintext, bpftrace PQsendQuery + PQgetResult (+uretprobe)",
                ),
            ],
        ),
        (
            Mode::UntracedTls,
            [
                (Mode::UntracedTls, "TLS, untraced"),
                (Mode::QprofTls, "TLS, qprof record queries"),
                (
                    Mode::BpftraceTls,
                    "TLS, bpftrace SSL_write + SSL_read (+uretprobe)",
                ),
            ],
        ),
    ] {
        for (mode, name) in rows {
            println!(
                "| {name} | {:.0} | {:.3} | {:.2} |",
                tps(mode),
                tps(mode) / tps(base),
                runs(mode)
            );
        }
    }
    if let Some((_, samples)) = results.iter().find(|(m, _)| *m == Mode::QprofTls)
        && let Some((_, _, by_program)) = samples.last()
    {
        let parts: Vec<String> = by_program
            .iter()
            .map(|(name, per_query)| format!("{name} {per_query:.2}"))
            .collect();
        println!(
            "qprof over TLS, runs/query by program (client and server; last round): {}",
            parts.join(", ")
        );
    }
    let (q, b) = (tps(Mode::Qprof), tps(Mode::Bpftrace));
    let (qt, bt) = (tps(Mode::QprofTls), tps(Mode::BpftraceTls));
    (q, b, qt, bt, runs(Mode::Qprof))
}

fn bpftrace_script(mode: Mode, [libpq, libssl]: &[String; 2]) -> String {
    if mode.tls() {
        format!(
            "uprobe:{libssl}:SSL_write {{ @s[tid] = nsecs; }} \
             uretprobe:{libssl}:SSL_read /@s[tid]/ {{ @lat = hist(nsecs - @s[tid]); delete(@s[tid]); }}"
        )
    } else {
        format!(
            "uprobe:{libpq}:PQsendQuery,uprobe:{libpq}:PQsendQueryPrepared {{ @s[tid] = nsecs; }} \
             uprobe:{libpq}:PQgetResult {{ @g = count(); }} \
             uretprobe:{libpq}:PQgetResult /retval == 0 && @s[tid]/ {{ @lat = hist(nsecs - @s[tid]); delete(@s[tid]); }}"
        )
    }
}

/// Starts the tracer of `mode` (none when untraced): the process, the
/// file to watch and the text that says it is attached.
fn start_tracer(
    mode: Mode,
    qprof: &Path,
    libs: &[String; 2],
    scratch: &Scratch,
) -> anyhow::Result<Option<(Running, std::path::PathBuf, &'static str)>> {
    let log = scratch.path("tracer.log");
    Ok(match mode {
        Mode::Untraced | Mode::UntracedTls => None,
        Mode::Qprof | Mode::QprofTls => {
            let mut cmd = Command::new(qprof);
            cmd.args(["record", "queries", "--duration", "10m", "--json"])
                .arg(scratch.path("q.json"));
            Some((
                Running::spawn(&mut cmd, "qprof", Some(&log))?,
                log,
                "qprof: recording",
            ))
        }
        Mode::Bpftrace | Mode::BpftraceTls => {
            let out = scratch.path("bpftrace.out");
            let mut cmd = Command::new("bpftrace");
            cmd.args(["-e", &bpftrace_script(mode, libs)])
                .stdout(std::fs::File::create(&out).context("bpftrace output")?);
            Some((
                Running::spawn(&mut cmd, "bpftrace", Some(&log))?,
                out,
                "Attaching",
            ))
        }
    })
}

fn measure(
    mode: Mode,
    qprof: &Path,
    cluster: &Cluster,
    libs: &[String; 2],
    scratch: &Scratch,
) -> anyhow::Result<Sample> {
    // Programs loaded before the tracer are other people's: not counted.
    let others = uprobe_runs()?;
    let tracer = start_tracer(mode, qprof, libs, scratch)?;
    if let Some((_, file, marker)) = &tracer {
        wait_for_text(file, marker)?;
    }
    let before = uprobe_runs()?;
    let out = cluster
        .pgbench()
        .env("PGSSLMODE", if mode.tls() { "require" } else { "disable" })
        .args([
            "-S",
            "-n",
            "-c",
            "4",
            "-j",
            "2",
            "-T",
            &SECONDS.to_string(),
            "postgres",
        ])
        .output()
        .context("pgbench")?;
    let after = uprobe_runs()?;
    if let Some((tracer, _, _)) = tracer {
        tracer.signal(libc::SIGINT)?;
        let mut tracer = tracer;
        let _ = tracer.wait_cpu();
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let tps = parse_tps(&text).with_context(|| format!("no TPS in pgbench output: {text}"))?;
    let queries = (tps * f64::from(SECONDS)).max(1.0);
    let mut by_program: Vec<(String, f64)> = Vec::new();
    let mut total = 0;
    for (id, (name, runs)) in &after {
        if others.contains_key(id) {
            continue;
        }
        let ran = runs.saturating_sub(before.get(id).map_or(*runs, |b| b.1));
        total += ran;
        if ran > 0 {
            match by_program.iter_mut().find(|(n, _)| n == name) {
                Some(entry) => entry.1 += ran as f64 / queries,
                None => by_program.push((name.clone(), ran as f64 / queries)),
            }
        }
    }
    by_program.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((tps, total as f64 / queries, by_program))
}

/// Name and run count of every uprobe/kprobe-type BPF program, by program
/// id (uprobes and uretprobes run `kprobe` programs).
fn uprobe_runs() -> anyhow::Result<std::collections::HashMap<u64, (String, u64)>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("bpftool")?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    Ok(progs
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|p| p["type"] == "kprobe")
                .filter_map(|p| {
                    let name = p["name"].as_str().unwrap_or("?").to_owned();
                    Some((
                        p["id"].as_u64()?,
                        (name, p["run_cnt"].as_u64().unwrap_or(0)),
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Runs 100,000 distinct statements through psql under `qprof record
/// queries` and returns qprof's peak RSS (`VmHWM`) in MB.
fn memory_with_distinct_statements(
    qprof: &Path,
    cluster: &Cluster,
    scratch: &Scratch,
) -> anyhow::Result<(usize, f64)> {
    const N: usize = 100_000;
    let log = scratch.path("mem.log");
    let mut cmd = Command::new(qprof);
    cmd.args(["record", "queries", "--duration", "30m", "--json"])
        .arg(scratch.path("mem.json"));
    let tracer = Running::spawn(&mut cmd, "qprof", Some(&log))?;
    wait_for_text(&log, "qprof: recording")?;
    cluster.distinct_statements(N, &scratch.path("distinct.sql"))?;
    std::thread::sleep(Duration::from_secs(1));
    let status = std::fs::read_to_string(format!("/proc/{}/status", tracer.pid()))
        .context("qprof's status")?;
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmHWM")?;
    tracer.signal(libc::SIGINT)?;
    let mut tracer = tracer;
    let _ = tracer.wait_cpu();
    Ok((N, hwm_kb / 1024.0))
}

/// The system's copy of a library whose file name starts with `prefix`.
fn find_lib(prefix: &str) -> anyhow::Result<String> {
    let dir = Path::new("/usr/lib/x86_64-linux-gnu");
    std::fs::read_dir(dir)
        .context("listing /usr/lib/x86_64-linux-gnu")?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .map(|p| p.display().to_string())
        .with_context(|| format!("{prefix}* not found"))
}
