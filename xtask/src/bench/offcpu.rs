//! `cargo xtask bench offcpu`: what off-CPU profiling costs a
//! context-switch-heavy workload (two threads ping-ponging on pipes), in
//! one run, interleaved: untraced vs `qprof record offcpu` host-wide.
//! Target (issue 5): >= 0.90x the untraced switch rate.
//!
//! Two placements, both pinned (left free, the scheduler sometimes puts
//! both threads on one CPU and the rate swings tenfold between runs):
//! split over CPUs 0 and 1 (each round trip waits for two cross-CPU
//! wake-ups, as a client and a server do) and both on CPU 0 (each round trip
//! is two bare context switches, about 1 µs each: the worst case, where any
//! per-switch cost shows in full).

use std::{
    path::Path,
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};

use super::process::{Running, Scratch, wait_for_text};
use crate::util::{self, run_cmd};

const SECONDS: u32 = 3;
const ROUNDS: usize = 5;

pub fn run() -> anyhow::Result<ExitCode> {
    if !util::is_root() {
        bail!("benchmarks load BPF programs: run as root");
    }
    let qprof = util::build_qprof()?;
    let scratch = Scratch::create("offcpu")?;
    let fixture = scratch.path("pingpong");
    let src = util::workspace_root().join("tests/fixtures/pingpong.c");
    run_cmd(
        Command::new("gcc")
            .args(["-O2", "-pthread", "-o"])
            .arg(&fixture)
            .arg(&src),
    )?;
    let conditions: [(&str, Option<&[&str]>); 3] = [
        ("untraced", None),
        (
            "qprof record offcpu (host-wide, --min-block 1ms)",
            Some(&[]),
        ),
        (
            "qprof record offcpu (host-wide, --min-block 0)",
            Some(&["--min-block", "0"]),
        ),
    ];
    for one_cpu in [false, true] {
        report(&qprof, &fixture, &conditions, &scratch, one_cpu)?;
    }
    Ok(ExitCode::SUCCESS)
}

type Condition<'a> = (&'a str, Option<&'a [&'a str]>);

fn report(
    qprof: &Path,
    fixture: &Path,
    conditions: &[Condition<'_>],
    scratch: &Scratch,
    one_cpu: bool,
) -> anyhow::Result<()> {
    let placement = if one_cpu {
        "both threads on CPU 0"
    } else {
        "threads on CPUs 0 and 1"
    };
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); conditions.len()];
    for round in 0..ROUNDS {
        for (i, (name, extra)) in conditions.iter().enumerate() {
            let rate = measure(qprof, fixture, *extra, scratch, one_cpu)?;
            eprintln!(
                "  {placement}, round {}: {name}: {rate:.0} round trips/s",
                round + 1
            );
            results[i].push(rate);
        }
    }
    let medians: Vec<f64> = results
        .iter_mut()
        .map(|v| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        })
        .collect();
    println!(
        "pipe ping-pong ({placement}), {SECONDS} s per run, median of {ROUNDS} interleaved rounds:"
    );
    println!("| condition | round trips/s | ratio to untraced | target |");
    println!("| --- | --- | --- | --- |");
    for ((name, _), rate) in conditions.iter().zip(&medians) {
        let ratio = rate / medians[0];
        let target = if name.starts_with("untraced") {
            "-".to_owned()
        } else {
            format!(">= 0.90: {}", if ratio >= 0.90 { "met" } else { "NOT met" })
        };
        println!("| {name} | {rate:.0} | {ratio:.3} | {target} |");
    }
    Ok(())
}

fn measure(
    qprof: &Path,
    fixture: &Path,
    extra: Option<&[&str]>,
    scratch: &Scratch,
    one_cpu: bool,
) -> anyhow::Result<f64> {
    let log = scratch.path("qprof.log");
    let tracer = match extra {
        None => None,
        Some(extra) => {
            let mut cmd = Command::new(qprof);
            cmd.args(["record", "offcpu", "--duration", "10m", "-o"])
                .arg(scratch.path("off.pb.gz"))
                .args(extra);
            let tracer = Running::spawn(&mut cmd, "qprof", Some(&log))?;
            wait_for_text(&log, "qprof: recording")?;
            Some(tracer)
        }
    };
    let mut cmd = if one_cpu {
        let mut taskset = Command::new("taskset");
        taskset
            .args(["-c", "0"])
            .arg(fixture)
            .arg(SECONDS.to_string());
        taskset
    } else {
        let mut split = Command::new(fixture);
        split.args([SECONDS.to_string().as_str(), "split"]);
        split
    };
    let out = cmd.output().context("running pingpong")?;
    if let Some(tracer) = tracer {
        tracer.signal(libc::SIGINT)?;
        let mut tracer = tracer;
        let _ = tracer.wait_cpu();
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("roundtrips_per_sec=")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("unexpected pingpong output {text:?}"))
}
