//! `cargo xtask bench syscalls`: the cost a traced syscall pays.
//!
//! A `getppid` loop measures ns per syscall, in one run and interleaved
//! round by round: untraced; under `qprof record syscalls` host-wide
//! (latency histograms on); under bpftrace counting by pid on enter and
//! exit (the peer); and under qprof filtered to another process (`--pid 1`),
//! which must cost the loop almost nothing. Targets (issue 3): qprof adds
//! <= 200 ns and <= 0.5x what bpftrace adds; filtered <= 60 ns.

use std::{
    path::Path,
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context as _, bail};

use super::process::{Running, Scratch, wait_for_text};
use crate::util::{self, run_cmd};

/// Calls per measurement: ~1 s untraced on this machine.
const CALLS: u64 = 5_000_000;
const ROUNDS: usize = 3;

const BPFTRACE: &str = "tracepoint:raw_syscalls:sys_enter { @enter[pid] = count(); } \
                        tracepoint:raw_syscalls:sys_exit { @exit[pid] = count(); }";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Untraced,
    Qprof,
    QprofOtherPid,
    Bpftrace,
}

pub fn run() -> anyhow::Result<ExitCode> {
    if !util::is_root() {
        bail!("benchmarks load BPF programs: run as root");
    }
    crate::test::install_test_packages()?;
    if !util::on_path("bpftrace") {
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "bpftrace"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    let qprof = util::build_qprof()?;
    let scratch = Scratch::create("syscalls")?;
    let fixture = scratch.path("getppid_loop");
    let src = util::workspace_root().join("tests/fixtures/getppid_loop.c");
    run_cmd(
        Command::new("gcc")
            .args(["-O2", "-o"])
            .arg(&fixture)
            .arg(&src),
    )?;
    let modes = [
        Mode::Untraced,
        Mode::Qprof,
        Mode::Bpftrace,
        Mode::QprofOtherPid,
    ];
    let mut results: Vec<(Mode, Vec<f64>)> = modes.iter().map(|m| (*m, Vec::new())).collect();
    for round in 0..ROUNDS {
        for (mode, samples) in &mut results {
            let ns = measure(*mode, &qprof, &fixture, &scratch)?;
            eprintln!("  round {}: {:?}: {ns:.1} ns/call", round + 1, mode);
            samples.push(ns);
        }
    }
    let median = |mode: Mode| {
        let mut v = results
            .iter()
            .find(|(m, _)| *m == mode)
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let base = median(Mode::Untraced);
    let (q, b, f) = (
        median(Mode::Qprof) - base,
        median(Mode::Bpftrace) - base,
        median(Mode::QprofOtherPid) - base,
    );
    println!("getppid loop, {CALLS} calls, median of {ROUNDS} interleaved rounds:");
    println!("| condition | ns/call | added ns | target |");
    println!("| --- | --- | --- | --- |");
    println!("| untraced | {base:.1} | - | - |");
    println!(
        "| qprof record syscalls (host-wide) | {:.1} | {q:.1} | <= 200 ns: {} |",
        base + q,
        verdict(q <= 200.0)
    );
    println!(
        "| bpftrace count by pid, enter+exit | {:.1} | {b:.1} | (peer) |",
        base + b
    );
    println!(
        "| qprof --pid 1 (another process) | {:.1} | {f:.1} | <= 60 ns: {} |",
        base + f,
        verdict(f <= 60.0)
    );
    println!(
        "qprof added / bpftrace added = {:.2} (target <= 0.5: {})",
        q / b,
        verdict(q / b <= 0.5)
    );
    Ok(ExitCode::SUCCESS)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// One loop run under `mode`; returns ns per call as the fixture measured it.
fn measure(mode: Mode, qprof: &Path, fixture: &Path, scratch: &Scratch) -> anyhow::Result<f64> {
    let log = scratch.path("tracer.log");
    let tracer = match mode {
        Mode::Untraced => None,
        Mode::Qprof | Mode::QprofOtherPid => {
            let mut cmd = Command::new(qprof);
            cmd.args(["record", "syscalls", "--duration", "10m", "--json"])
                .arg(scratch.path("out.json"));
            if mode == Mode::QprofOtherPid {
                cmd.args(["--pid", "1"]);
            }
            Some(Running::spawn(&mut cmd, "qprof", Some(&log))?)
        }
        Mode::Bpftrace => {
            let out =
                std::fs::File::create(scratch.path("bpftrace.out")).context("bpftrace output")?;
            let mut cmd = Command::new("bpftrace");
            cmd.args(["-e", BPFTRACE]).stdout(out);
            Some(Running::spawn(&mut cmd, "bpftrace", Some(&log))?)
        }
    };
    if tracer.is_some() {
        let ready_marker = if mode == Mode::Bpftrace {
            "Attaching"
        } else {
            "qprof: recording"
        };
        let file = if mode == Mode::Bpftrace {
            scratch.path("bpftrace.out")
        } else {
            log.clone()
        };
        wait_for_text(&file, ready_marker)?;
    }
    let out = Command::new(fixture)
        .arg(CALLS.to_string())
        .stderr(Stdio::inherit())
        .output()
        .context("running the loop")?;
    if let Some(tracer) = tracer {
        tracer.signal(libc::SIGINT)?;
        let mut tracer = tracer;
        let _ = tracer.wait_cpu();
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("ns_per_call=")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("unexpected loop output {text:?}"))
}
