//! `cargo xtask bench agent pgbench`: `qprof agent` on its embedded
//! defaults (no config file; its own data directory and a free loopback
//! port) under `pgbench -S` load, against the same load untraced, in one
//! run: untraced for half the length, under the agent for the whole
//! length, untraced for the other half (so a drift of the machine's speed
//! hits both conditions alike).
//!
//! Measured while the agent runs, from outside: pgbench's TPS; the agent's
//! CPU (user + sys from `/proc/<pid>/stat`, every thread including exited
//! ones); the run time of its BPF programs (`kernel.bpf_stats_enabled`,
//! turned on for the run and put back after); its RSS every few seconds;
//! a `/metrics` scrape every 15 s (Prometheus' default interval); its
//! start-up CPU and the kernel memory its maps lock.
//!
//! How the probes' cost is separated from the agent's: a BPF program runs
//! in the context of whatever task hit the probe (pgbench and the
//! PostgreSQL backends for the uprobes, syscall and TCP tracepoints; the
//! interrupted task for CPU samples), so its time is charged to that task,
//! not to the agent's pid. The agent's `/proc/<pid>/stat` is its own work
//! (draining maps, aggregating, symbolizing, writing windows, serving
//! HTTP) plus the probes' runs on its own few syscalls; the programs' run
//! time is reported beside it. The uprobe traps themselves (entering and
//! leaving the kernel, outside the program) are in neither figure, only in
//! the TPS ratio.
//!
//! Targets (issue 9): TPS ratio >= 0.85; agent CPU <= 2% of one core
//! beyond the probes; RSS <= 64 MB and flat over the last 3 minutes; a
//! `/metrics` scrape of >= 1,000 series in <= 50 ms.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    agent_report::{AgentFigures, Phase, report},
    agent_watch::{Scrape, bpf_held, peak_rss_mib, rss_mib, rss_parts, run_time_by_type, scrape},
    postgres::{Cluster, ensure_installed, parse_tps},
    process::{
        BpfStats, Running, Scratch, clock_ticks_per_second, cpu_ticks, foreign_ticks, online_cpus,
        wait_for_quiet,
    },
};
use crate::util;

pub const CLIENTS: &str = "4";
pub const THREADS: &str = "2";
/// pgbench scale: 10 is 1M rows in `pgbench_accounts`, in shared buffers.
const SCALE: &str = "10";
/// Off the common 5432 and the other benchmarks' ports.
const PORT: u16 = 54_333;
/// How often the agent's RSS is read.
const RSS_EVERY: Duration = Duration::from_secs(5);
/// How often `/metrics` is scraped: Prometheus' default scrape interval.
const SCRAPE_EVERY: Duration = Duration::from_secs(15);
/// The components the defaults turn on; the agent is ready when each has
/// said "<kind> is on".
const DEFAULT_KINDS: [&str; 4] = ["cpu", "queries", "syscalls", "tcp"];
/// Distinct statements run when pgbench alone gives fewer series than the
/// target: ten times the default `top_fingerprints` (200), so that every
/// fingerprint series and "other" are filled.
const DISTINCT_STATEMENTS: usize = 2_000;
/// Scrapes timed once the series are there.
const TIMED_SCRAPES: usize = 10;

/// Runs the part; true when every target is met.
pub fn run(minutes: u64) -> anyhow::Result<bool> {
    if !util::is_root() {
        bail!("the benchmark loads BPF programs: run as root (sudo -E cargo xtask bench agent)");
    }
    if minutes == 0 {
        bail!("--minutes must be at least 1");
    }
    let bin = ensure_installed()?;
    let qprof = util::build_qprof()?;
    let scratch = Scratch::create("agent-pgbench")?;
    let cluster = Cluster::start(&bin, PORT).context("starting a throw-away PostgreSQL")?;
    util::run_cmd(
        cluster
            .pgbench()
            .args(["-i", "-q", "-s", SCALE, "postgres"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )
    .context("pgbench -i")?;
    let ours = [std::process::id(), cluster.postmaster_pid()?];
    eprintln!("bench: warm-up");
    phase(&cluster, &scratch, &ours, Duration::from_secs(10), |_| {
        Ok(())
    })?;
    let stats = BpfStats::enable()?;
    let length = Duration::from_secs(minutes * 60);
    let half = length / 2;
    quiet()?;
    let first = phase(&cluster, &scratch, &ours, half, |_| Ok(()))?;
    eprintln!("bench: untraced {:.0} TPS", first.tps);
    let agent = under_agent(&qprof, &cluster, &scratch, &ours, length)?;
    eprintln!("bench: under the agent {:.0} TPS", agent.phase.tps);
    quiet()?;
    let second = phase(
        &cluster,
        &scratch,
        &ours,
        length.saturating_sub(half),
        |_| Ok(()),
    )?;
    eprintln!("bench: untraced {:.0} TPS", second.tps);
    drop(stats);
    Ok(report(length, &first, &agent, &second))
}

/// Waits (at most a minute) for the machine to be quiet: other people's
/// builds move pgbench's TPS by a third.
fn quiet() -> anyhow::Result<()> {
    if !wait_for_quiet(0.15, Duration::from_mins(1))? {
        eprintln!("bench: the machine stayed busy; this run shares it with other work");
    }
    Ok(())
}

/// One pgbench run of `length`; `tick` is called every 250 ms with the
/// time since it started.
fn phase(
    cluster: &Cluster,
    scratch: &Scratch,
    ours: &[u32],
    length: Duration,
    mut tick: impl FnMut(Duration) -> anyhow::Result<()>,
) -> anyhow::Result<Phase> {
    let out = scratch.path("pgbench.out");
    let mut cmd = cluster.pgbench();
    cmd.args(["-S", "-n", "-c", CLIENTS, "-j", THREADS, "-T"])
        .arg(length.as_secs().to_string())
        .arg("postgres")
        .stdout(std::fs::File::create(&out).context("pgbench's output file")?);
    let before = foreign_ticks(ours);
    let started = Instant::now();
    let mut pgbench = Running::spawn(&mut cmd, "pgbench", Some(&scratch.path("pgbench.err")))?;
    loop {
        if let Some(status) = pgbench.child_mut()?.try_wait().context("polling pgbench")? {
            if !status.success() {
                bail!("pgbench failed with {status}{}", pgbench.log_tail());
            }
            break;
        }
        tick(started.elapsed())?;
        sleep(Duration::from_millis(250));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let other = foreign_ticks(ours).saturating_sub(before) as f64
        / (clock_ticks_per_second() as f64 * elapsed * online_cpus() as f64);
    let text = std::fs::read_to_string(&out).context("reading pgbench's output")?;
    let tps = parse_tps(&text).with_context(|| format!("no TPS in pgbench's output: {text}"))?;
    Ok(Phase {
        tps,
        other,
        loadavg: loadavg(),
    })
}

/// The 1-minute load average.
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A loopback port nobody listens on (the kernel picks it).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Starts the agent, runs pgbench under it for `length` while reading it,
/// then (if pgbench's statements gave fewer series than the target) times
/// scrapes after many distinct statements, and stops it with SIGTERM.
fn under_agent(
    qprof: &Path,
    cluster: &Cluster,
    scratch: &Scratch,
    ours: &[u32],
    length: Duration,
) -> anyhow::Result<AgentFigures> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let log = scratch.path("agent.log");
    let mut cmd = Command::new(qprof);
    cmd.arg("agent")
        .args(["--listen", &addr.to_string(), "--data-dir"])
        .arg(scratch.path("agent-data"));
    let started = Instant::now();
    let mut agent = Running::spawn(&mut cmd, "qprof agent", Some(&log))?;
    let pid = agent.pid();
    wait_ready(&mut agent, &log)?;
    let ready_after = started.elapsed();
    let startup_cpu = cpu_ticks(pid)?;
    quiet()?;
    let held_before = bpf_held(pid)?;
    eprintln!(
        "bench: agent ready after {:.1} s, {} ms of CPU; pgbench under it for {} s",
        ready_after.as_secs_f64(),
        startup_cpu.as_millis(),
        length.as_secs()
    );
    let cpu_before = cpu_ticks(pid)?;
    let load_started = Instant::now();
    let (mut rss, mut scrapes) = (Vec::new(), Vec::new());
    let (mut next_rss, mut next_scrape) = (Duration::ZERO, SCRAPE_EVERY);
    let mut bpf_stats_off = false;
    let phase = phase(cluster, scratch, ours, length, |t| {
        bpf_stats_off |= !BpfStats::still_on();
        if t >= next_rss {
            rss.push((t.as_secs_f64(), rss_mib(pid)?));
            next_rss += RSS_EVERY;
        }
        if t >= next_scrape {
            scrapes.push((t, scrape(addr)?));
            next_scrape += SCRAPE_EVERY;
        }
        Ok(())
    })?;
    let load_wall = load_started.elapsed();
    let cpu = cpu_ticks(pid)?.saturating_sub(cpu_before);
    let held_after = bpf_held(pid)?;
    agent.check_alive()?;
    let enough = scrapes
        .last()
        .is_some_and(|(_, s): &(Duration, Scrape)| s.series >= super::agent_report::SERIES_TARGET);
    let many = if enough {
        None
    } else {
        Some(many_series(cluster, scratch, addr)?)
    };
    let peak_rss = peak_rss_mib(pid)?;
    let rss_end = rss_parts(pid)?;
    agent.signal(libc::SIGTERM)?;
    let (status, total_cpu) = agent.wait_cpu()?;
    if !status.success() {
        bail!("the agent exited with {status}{}", agent.log_tail());
    }
    Ok(AgentFigures {
        phase,
        ready_after,
        startup_cpu,
        maps: held_after.maps,
        map_memlock: held_after.map_memlock,
        programs: held_after.progs.len(),
        cpu,
        load_wall,
        bpf: run_time_by_type(&held_before, &held_after),
        bpf_stats_off,
        rss,
        peak_rss,
        rss_end,
        scrapes,
        many,
        total_cpu,
    })
}

/// Waits (at most 2 minutes) until every default component says it is on.
fn wait_ready(agent: &mut Running, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_mins(2);
    loop {
        agent.check_alive()?;
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if DEFAULT_KINDS
            .iter()
            .all(|k| text.contains(&format!("agent: {k} is on")))
        {
            return Ok(());
        }
        if text.contains(" failed") || Instant::now() > deadline {
            bail!(
                "the agent did not start every component{}",
                agent.log_tail()
            );
        }
        sleep(Duration::from_millis(50));
    }
}

/// Runs [`DISTINCT_STATEMENTS`] distinct statements, waits (up to two
/// windows) until a scrape has the target number of series, then times
/// [`TIMED_SCRAPES`] scrapes a second apart. Returns the statement count
/// and the timed scrapes.
fn many_series(
    cluster: &Cluster,
    scratch: &Scratch,
    addr: SocketAddr,
) -> anyhow::Result<(usize, Vec<Scrape>)> {
    eprintln!(
        "bench: fewer series than the target; running {DISTINCT_STATEMENTS} distinct statements"
    );
    cluster.distinct_statements(DISTINCT_STATEMENTS, &scratch.path("distinct.sql"))?;
    let deadline = Instant::now() + Duration::from_mins(2) + Duration::from_secs(10);
    while scrape(addr)?.series < super::agent_report::SERIES_TARGET && Instant::now() < deadline {
        sleep(Duration::from_secs(5));
    }
    let mut timed = Vec::new();
    for _ in 0..TIMED_SCRAPES {
        timed.push(scrape(addr)?);
        sleep(Duration::from_secs(1));
    }
    Ok((DISTINCT_STATEMENTS, timed))
}
