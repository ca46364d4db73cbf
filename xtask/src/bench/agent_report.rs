//! The figures of `cargo xtask bench agent pgbench` and their tables (in
//! the style of BENCHMARKS.md), each next to its target.

use std::{collections::BTreeMap, time::Duration};

use super::{
    agent_pgbench::{CLIENTS, THREADS},
    agent_watch::{RssParts, Scrape, slope},
    syscalls::{median, verdict},
};

/// pgbench TPS under the agent over untraced: no worse than `record
/// queries` alone (issue 9).
const TPS_TARGET: f64 = 0.85;
/// The agent's own CPU, % of one core, beyond the probes' in-kernel cost.
const CPU_TARGET: f64 = 2.0;
const RSS_TARGET_MIB: f64 = 64.0;
/// "Flat": the fitted growth over the span at most this much. A window's
/// work (symbolizing, encoding) allocates and frees a few hundred KiB;
/// a leak of one statement's text per transaction would be MiB a minute.
const FLAT_MIB: f64 = 1.0;
/// The span over which RSS must be flat (shorter runs use all of it).
const FLAT_SPAN: Duration = Duration::from_mins(3);
const SCRAPE_TARGET: Duration = Duration::from_millis(50);
pub const SERIES_TARGET: usize = 1_000;
/// Scrapes earlier than this into the run come before the first 60 s
/// window has fed the metrics; their times are shown apart.
const FIRST_WINDOW: Duration = Duration::from_secs(65);

/// One pgbench run.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub tps: f64,
    /// Share of the machine's CPUs that went to work other than this
    /// benchmark's (its processes, PostgreSQL, pgbench, the agent).
    pub other: f64,
    /// 1-minute load average at the end.
    pub loadavg: f64,
}

/// What was read from the agent while pgbench ran under it.
#[derive(Debug)]
pub struct AgentFigures {
    pub phase: Phase,
    pub ready_after: Duration,
    pub startup_cpu: Duration,
    pub maps: usize,
    pub map_memlock: u64,
    pub programs: usize,
    /// The agent's CPU while pgbench ran, over `load_wall`.
    pub cpu: Duration,
    pub load_wall: Duration,
    /// BPF run time and runs by program type over the same interval.
    pub bpf: BTreeMap<String, (Duration, u64)>,
    /// `kernel.bpf_stats_enabled` was seen off during the run (someone
    /// else turned it off): the run times are lower bounds.
    pub bpf_stats_off: bool,
    /// (seconds into the load, RSS MiB).
    pub rss: Vec<(f64, f64)>,
    pub peak_rss: f64,
    /// Where the RSS was at the end.
    pub rss_end: RssParts,
    /// (time into the load, scrape).
    pub scrapes: Vec<(Duration, Scrape)>,
    /// When pgbench gave too few series: statements run and timed scrapes.
    pub many: Option<(usize, Vec<Scrape>)>,
    /// The agent's whole life (start, load, the extra scrapes, stop).
    pub total_cpu: Duration,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and max round trip (ms), and the series and KiB of the
/// largest scrape.
fn scrape_summary(scrapes: &[Scrape]) -> (f64, f64, usize, f64) {
    let times: Vec<f64> = scrapes.iter().map(|s| ms(s.elapsed)).collect();
    let max = times.iter().copied().fold(0.0, f64::max);
    let biggest = scrapes.iter().max_by_key(|s| s.series);
    let series = biggest.map_or(0, |s| s.series);
    let kib = biggest.map_or(0.0, |s| s.bytes as f64 / 1024.0);
    (median(&times), max, series, kib)
}

/// Prints the tables; true when every target is met.
pub fn report(length: Duration, first: &Phase, agent: &AgentFigures, second: &Phase) -> bool {
    let minutes = length.as_secs_f64() / 60.0;
    let untraced = f64::midpoint(first.tps, second.tps);
    let ratio = agent.phase.tps / untraced;
    println!(
        "pgbench -S -c {CLIENTS} -j {THREADS}, loopback PostgreSQL (scale 10): untraced \
         {:.1} min, under `qprof agent` (defaults) {minutes:.1} min, untraced {:.1} min, in that order",
        minutes / 2.0,
        minutes / 2.0
    );
    println!("| run | TPS | other work (share of the CPUs) | load average at its end |");
    println!("| --- | --- | --- | --- |");
    for (name, p) in [
        ("untraced, first half", first),
        ("under the agent", &agent.phase),
        ("untraced, second half", second),
    ] {
        println!(
            "| {name} | {:.0} | {:.1}% | {:.2} |",
            p.tps,
            p.other * 100.0,
            p.loadavg
        );
    }
    let bpf_pct = print_bpf(agent);
    print_targets(agent, ratio, untraced, bpf_pct)
}

/// The BPF programs' run time by program type; returns its share of one
/// core.
fn print_bpf(agent: &AgentFigures) -> f64 {
    let wall = agent.load_wall.as_secs_f64();
    let bpf_total: Duration = agent.bpf.values().map(|v| v.0).sum();
    let bpf_pct = bpf_total.as_secs_f64() / wall * 100.0;
    println!(
        "\nBPF programs' run time while pgbench ran (kernel.bpf_stats_enabled; charged to the \
         tasks that hit the probes, not to the agent):"
    );
    if agent.bpf_stats_off {
        println!(
            "WARNING: kernel.bpf_stats_enabled was turned off by someone else during the run: \
             the runs and run times below are lower bounds"
        );
    }
    println!("| program type | runs | run time | % of one core | ns per run |");
    println!("| --- | --- | --- | --- | --- |");
    for (kind, (time, runs)) in &agent.bpf {
        println!(
            "| {kind} | {runs} | {:.0} ms | {:.2}% | {:.0} |",
            ms(*time),
            time.as_secs_f64() / wall * 100.0,
            time.as_nanos() as f64 / (*runs).max(1) as f64
        );
    }
    bpf_pct
}

/// The table of results next to their targets; true when all are met.
fn print_targets(agent: &AgentFigures, ratio: f64, untraced: f64, bpf_pct: f64) -> bool {
    let wall = agent.load_wall.as_secs_f64();
    let cpu_pct = agent.cpu.as_secs_f64() / wall * 100.0;
    let (rss_max, growth, span) = rss_figures(&agent.rss);
    let flat = growth.abs() <= FLAT_MIB;
    let late: Vec<Scrape> = agent
        .scrapes
        .iter()
        .filter(|(t, _)| *t >= FIRST_WINDOW)
        .map(|(_, s)| *s)
        .collect();
    let all: Vec<Scrape> = agent.scrapes.iter().map(|(_, s)| *s).collect();
    let shown = if late.is_empty() { &all } else { &late };
    let (med, max, series, kib) = scrape_summary(shown);
    let mut met = ratio >= TPS_TARGET && cpu_pct <= CPU_TARGET;
    met &= agent.peak_rss.max(rss_max) <= RSS_TARGET_MIB && flat;
    println!("\n| what | result | target | |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| TPS under the agent / untraced (mean of both halves, {untraced:.0}) | {ratio:.3} | >= {TPS_TARGET} | {} |",
        verdict(ratio >= TPS_TARGET)
    );
    println!(
        "| agent CPU while pgbench ran (user+sys, /proc/PID/stat), % of one core | {cpu_pct:.2}% ({:.2} s in {wall:.0} s) | <= {CPU_TARGET}% beyond the probes | {} |",
        agent.cpu.as_secs_f64(),
        verdict(cpu_pct <= CPU_TARGET)
    );
    println!(
        "| BPF programs' run time, % of one core ({} programs) | {bpf_pct:.2}% | (the probes' in-kernel cost, apart) | - |",
        agent.programs
    );
    println!(
        "| RSS: max (read every 5 s), peak (VmHWM); fitted growth over the last {span:.0} s | {rss_max:.1} MiB, {:.1} MiB; {growth:+.2} MiB | <= {RSS_TARGET_MIB} MiB, flat (<= {FLAT_MIB} MiB) | {} |",
        agent.peak_rss,
        verdict(agent.peak_rss.max(rss_max) <= RSS_TARGET_MIB && flat)
    );
    println!(
        "| /metrics scrape under pgbench, HTTP round trip ({} scrapes every 15 s{}) | median {med:.1} ms, max {max:.1} ms; {series} series ({kib:.0} KiB) | <= {} ms with >= {SERIES_TARGET} series | {} |",
        shown.len(),
        if late.is_empty() {
            ""
        } else {
            ", after the first window"
        },
        SCRAPE_TARGET.as_millis(),
        if series >= SERIES_TARGET {
            verdict(max <= ms(SCRAPE_TARGET))
        } else {
            "too few series"
        }
    );
    if let Some((statements, timed)) = &agent.many {
        let (med, max, series, kib) = scrape_summary(timed);
        let ok = series >= SERIES_TARGET && max <= ms(SCRAPE_TARGET);
        met &= ok;
        println!(
            "| same after {statements} distinct statements ({} scrapes, 1 s apart) | median {med:.1} ms, max {max:.1} ms; {series} series ({kib:.0} KiB) | same | {} |",
            timed.len(),
            verdict(ok)
        );
    } else {
        met &= series >= SERIES_TARGET && max <= ms(SCRAPE_TARGET);
    }
    let p = agent.rss_end;
    println!(
        "| RSS at the end: anonymous, mapped BPF maps, file mappings | {:.1} + {:.1} + {:.1} MiB | - | |",
        p.anon, p.bpf_maps, p.files
    );
    println!(
        "| start-up: CPU until every default component was on (wall) | {:.0} ms ({:.1} s) | - | |",
        ms(agent.startup_cpu),
        agent.ready_after.as_secs_f64()
    );
    println!(
        "| kernel memory locked by its BPF maps (fdinfo memlock, once per map id) | {:.1} MiB in {} maps | - | |",
        agent.map_memlock as f64 / f64::from(1 << 20),
        agent.maps
    );
    println!(
        "| agent CPU over its whole life (wait4) | {:.2} s | - | |",
        agent.total_cpu.as_secs_f64()
    );
    met
}

/// Max RSS, fitted growth over the last [`FLAT_SPAN`] (or the whole run
/// when shorter) and that span's length in seconds.
fn rss_figures(rss: &[(f64, f64)]) -> (f64, f64, f64) {
    let max = rss.iter().map(|p| p.1).fold(0.0, f64::max);
    let end = rss.last().map_or(0.0, |p| p.0);
    let from = (end - FLAT_SPAN.as_secs_f64()).max(0.0);
    let tail: Vec<(f64, f64)> = rss.iter().copied().filter(|p| p.0 >= from).collect();
    let span = end - tail.first().map_or(end, |p| p.0);
    (max, slope(&tail) * span, span)
}
