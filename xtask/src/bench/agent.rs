//! `cargo xtask bench agent [PART]`: what `qprof agent`'s defaults cost the
//! host, part by part, each against its floor and peer in one run.
//!
//! Parts (all of them without PART):
//! - `syscalls`: ns added to every syscall of every process by the default
//!   syscall capability (counts mode), against the floor (empty programs on
//!   `raw_syscalls:sys_enter`/`sys_exit`: what any program there costs), the
//!   full mode (`record syscalls`), and bpftrace's plain `@[pid] = count()`.
//!   Target (issue 9): the default adds <= 1.5x what the floor adds.
//!
//! - `pgbench`: the agent on its defaults under `pgbench -S` for
//!   `--minutes` (default 5), against the same load untraced: TPS ratio,
//!   the agent's CPU beside its probes' run time, its RSS over time, a
//!   `/metrics` scrape, its start-up CPU and locked map memory (see
//!   [`super::agent_pgbench`]).

use std::process::ExitCode;

use super::syscalls::{LoopBench, Tracer, median, verdict};

/// One measured aspect of the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// ns added per getppid: default mode vs floor, full mode and bpftrace.
    Syscalls,
    /// pgbench -S under the agent's defaults vs untraced: TPS, agent CPU,
    /// RSS, /metrics scrape, start-up CPU, locked map memory.
    Pgbench,
}

impl Part {
    const ALL: [Self; 2] = [Self::Syscalls, Self::Pgbench];
}

/// Runs `part`, or every part: `rounds` of the syscall loop, `minutes` of
/// pgbench under the agent.
pub fn run(part: Option<Part>, rounds: usize, minutes: u64) -> anyhow::Result<ExitCode> {
    let mut met = true;
    for part in Part::ALL
        .into_iter()
        .filter(|p| part.is_none_or(|q| q == *p))
    {
        met &= match part {
            Part::Syscalls => syscalls(rounds)?,
            Part::Pgbench => super::agent_pgbench::run(minutes)?,
        };
    }
    Ok(if met {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Calls per loop run: ~1 s untraced here, long enough that start-up noise
/// of the loop is nothing, short enough for several rounds of five conditions.
const CALLS: u64 = 5_000_000;

/// The default's target: added ns at most this many times the floor's.
const TARGET_RATIO: f64 = 1.5;

/// bpftrace's plain count by pid (one map update per syscall).
const BPFTRACE_COUNT: &str = "tracepoint:raw_syscalls:sys_enter { @[pid] = count(); }";

/// The conditions, in the order of the table.
const CONDITIONS: [(&str, Tracer); 5] = [
    ("untraced", Tracer::Untraced),
    (
        "floor: empty programs on sys_enter + sys_exit",
        Tracer::Qprof(&["--mode", "floor"]),
    ),
    (
        "qprof default (counts, ~1/64 timed)",
        Tracer::Qprof(&["--mode", "counts"]),
    ),
    (
        "qprof full (record syscalls)",
        Tracer::Qprof(&["--mode", "full"]),
    ),
    (
        "bpftrace @[pid] = count()",
        Tracer::Bpftrace(BPFTRACE_COUNT),
    ),
];

/// The syscall part; true when the target is met.
fn syscalls(rounds: usize) -> anyhow::Result<bool> {
    let bench = LoopBench::prepare("agent-syscalls", CALLS)?;
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); CONDITIONS.len()];
    for round in 0..rounds {
        // Rotate the order each round so that no condition always runs
        // right after the same neighbour (or first, on a cold cache).
        for i in 0..CONDITIONS.len() {
            let index = (i + round) % CONDITIONS.len();
            let (name, tracer) = &CONDITIONS[index];
            let ns = bench.measure(tracer)?;
            eprintln!("  round {}: {name}: {ns:.1} ns/call", round + 1);
            samples[index].push(ns);
        }
    }
    let medians: Vec<f64> = samples.iter().map(|s| median(s)).collect();
    let base = medians[0];
    let floor = medians[1] - base;
    println!(
        "getppid loop, {} calls per run, median of {rounds} interleaved rounds:",
        bench.calls()
    );
    println!("| condition | ns/call | added ns | added / floor's |");
    println!("| --- | --- | --- | --- |");
    for (i, ((name, _), m)) in CONDITIONS.iter().zip(&medians).enumerate() {
        if i == 0 {
            println!("| {name} | {m:.1} | - | - |");
        } else {
            let added = m - base;
            println!("| {name} | {m:.1} | {added:.1} | {:.2}x |", added / floor);
        }
    }
    let ratio = (medians[2] - base) / floor;
    // The same ratio within each round (conditions of one round ran
    // minutes apart at most), then its median: robust to the drift of a
    // shared machine between rounds.
    let paired: Vec<f64> = (0..rounds)
        .map(|r| (samples[2][r] - samples[0][r]) / (samples[1][r] - samples[0][r]))
        .collect();
    let paired = median(&paired);
    let met = ratio <= TARGET_RATIO && paired <= TARGET_RATIO;
    println!(
        "default added / floor added = {ratio:.2} (of the medians), {paired:.2} (median of \
         per-round ratios); target <= {TARGET_RATIO}: {}; default added / bpftrace added = {:.2}",
        verdict(met),
        (medians[2] - base) / (medians[4] - base)
    );
    Ok(met)
}
