//! `cargo xtask bench queries`: pgbench -S (4 clients, loopback) untraced,
//! under `qprof record queries`, and under a bpftrace script with uprobes on
//! PQsendQuery and PQgetResult (+ uretprobe on PQgetResult), interleaved in
//! one run. Reports TPS ratios and uprobe traps per query, counted from the
//! kernel's own BPF run counters (`kernel.bpf_stats_enabled`, `bpftool`).
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
}

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
    let cluster = Cluster::start(&bin, 5497)?;
    run_cmd(cluster.pgbench().args(["-i", "-s", "10", "-q", "postgres"]))?;
    let libpq = find_libpq()?;
    let stats = BpfStats::enable()?;
    let mut results: Vec<(Mode, Vec<(f64, f64)>)> = [Mode::Untraced, Mode::Qprof, Mode::Bpftrace]
        .into_iter()
        .map(|m| (m, Vec::new()))
        .collect();
    for round in 0..ROUNDS {
        for (mode, runs) in &mut results {
            let (tps, traps) = measure(*mode, &qprof, &cluster, &libpq, &scratch)?;
            eprintln!(
                "  round {}: {mode:?}: {tps:.0} TPS, {traps:.2} traps/query",
                round + 1
            );
            runs.push((tps, traps));
        }
    }
    drop(stats);
    let (statements, peak_mb) = memory_with_distinct_statements(&qprof, &cluster, &scratch)?;
    let median = |mode: Mode, pick: fn(&(f64, f64)) -> f64| {
        let mut v: Vec<f64> = results
            .iter()
            .find(|(m, _)| *m == mode)
            .map(|(_, r)| r.iter().map(pick).collect())
            .unwrap_or_default();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let base = median(Mode::Untraced, |r| r.0);
    let (q, b) = (
        median(Mode::Qprof, |r| r.0),
        median(Mode::Bpftrace, |r| r.0),
    );
    let (qt, bt) = (
        median(Mode::Qprof, |r| r.1),
        median(Mode::Bpftrace, |r| r.1),
    );
    println!("pgbench -S -c 4 -j 2 -T {SECONDS}, loopback, median of {ROUNDS} interleaved rounds:");
    println!("| condition | TPS | ratio | traps/query |");
    println!("| --- | --- | --- | --- |");
    println!("| untraced | {base:.0} | 1.000 | 0 |");
    println!(
        "| qprof record queries | {q:.0} | {:.3} | {qt:.2} |",
        q / base
    );
    println!(
        "| bpftrace PQsendQuery + PQgetResult (+uretprobe) | {b:.0} | {:.3} | {bt:.2} |",
        b / base
    );
    println!(
        "qprof peak RSS with {statements} distinct statements seen: {peak_mb:.1} MB (target <= 64 MB: {})",
        if peak_mb <= 64.0 { "met" } else { "NOT met" }
    );
    println!(
        "targets: qprof ratio > bpftrace ratio: {}; <= 2 traps/query: {}",
        if q > b { "met" } else { "NOT met" },
        if qt <= 2.0 { "met" } else { "NOT met" }
    );
    Ok(ExitCode::SUCCESS)
}

fn measure(
    mode: Mode,
    qprof: &Path,
    cluster: &Cluster,
    libpq: &str,
    scratch: &Scratch,
) -> anyhow::Result<(f64, f64)> {
    let log = scratch.path("tracer.log");
    let tracer = match mode {
        Mode::Untraced => None,
        Mode::Qprof => {
            let mut cmd = Command::new(qprof);
            cmd.args(["record", "queries", "--duration", "10m", "--json"])
                .arg(scratch.path("q.json"));
            Some((
                Running::spawn(&mut cmd, "qprof", Some(&log))?,
                log.clone(),
                "qprof: recording",
            ))
        }
        Mode::Bpftrace => {
            let script = format!(
                "uprobe:{libpq}:PQsendQuery,uprobe:{libpq}:PQsendQueryPrepared {{ @s[tid] = nsecs; }} \
                 uprobe:{libpq}:PQgetResult {{ @g = count(); }} \
                 uretprobe:{libpq}:PQgetResult /retval == 0 && @s[tid]/ {{ @lat = hist(nsecs - @s[tid]); delete(@s[tid]); }}"
            );
            let out = scratch.path("bpftrace.out");
            let mut cmd = Command::new("bpftrace");
            cmd.args(["-e", &script])
                .stdout(std::fs::File::create(&out).context("bpftrace output")?);
            Some((
                Running::spawn(&mut cmd, "bpftrace", Some(&log))?,
                out,
                "Attaching",
            ))
        }
    };
    if let Some((_, file, marker)) = &tracer {
        wait_for_text(file, marker)?;
    }
    let before = uprobe_runs()?;
    let out = cluster
        .pgbench()
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
    let queries = tps * f64::from(SECONDS);
    Ok((
        tps,
        traps_between(&before, &after) as f64 / queries.max(1.0),
    ))
}

/// Run counts of every uprobe/kprobe-type BPF program, by program id
/// (uprobes run `kprobe` programs; each run is one trap).
fn uprobe_runs() -> anyhow::Result<std::collections::HashMap<u64, u64>> {
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
                .filter_map(|p| Some((p["id"].as_u64()?, p["run_cnt"].as_u64().unwrap_or(0))))
                .collect()
        })
        .unwrap_or_default())
}

/// Traps taken between two snapshots: programs present in both (tracers
/// that come and go elsewhere on the machine do not count).
fn traps_between(
    before: &std::collections::HashMap<u64, u64>,
    after: &std::collections::HashMap<u64, u64>,
) -> u64 {
    after
        .iter()
        .map(|(id, runs)| runs.saturating_sub(before.get(id).copied().unwrap_or(*runs)))
        .sum()
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

fn find_libpq() -> anyhow::Result<String> {
    let dir = Path::new("/usr/lib/x86_64-linux-gnu");
    std::fs::read_dir(dir)
        .context("listing /usr/lib/x86_64-linux-gnu")?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libpq.so.5."))
        })
        .map(|p| p.display().to_string())
        .context("libpq.so.5.* not found")
}
