//! `cargo xtask bench cpu`: what host-wide CPU profiling costs, qprof
//! against `perf record -F 99 -a -g`, in one run on one machine.
//!
//! One instance of the CPU-bound fixture per core runs for a fixed window
//! (a) untraced, (b) under perf, (c) under qprof; the conditions are
//! interleaved round by round, in a rotating order, so that drift of a noisy
//! machine spreads over all three. With every core busy, whatever a tracer
//! costs (its process, and its kernel-side sampling, which is in no
//! process's CPU time) is taken from the fixture: the fixture's slowdown is
//! the tracer's total cost. The tracers' own CPU time is read from the
//! kernel's accounting over the same window (sampling) and from the moment
//! they are told to stop until they exit (post-processing; for perf that
//! is then followed by `perf script | inferno`).

use std::{
    fmt::Write as _,
    os::unix::process::ExitStatusExt as _,
    path::PathBuf,
    process::{Command, ExitCode, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    perf_post::{self, PerfPost},
    process::{Running, Scratch, cpu_time, online_cpus, wait_ready},
};
use crate::{setup, test, util};

/// Issue 2's targets.
const MAX_SAMPLING_SHARE: f64 = 0.01;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Condition {
    Untraced,
    Perf,
    Qprof,
}

const CONDITIONS: [Condition; 3] = [Condition::Untraced, Condition::Perf, Condition::Qprof];

/// One traced window: the fixture's throughput and the tracer's CPU.
struct Traced {
    /// Fixture rounds per second, summed over the instances.
    rate: f64,
    /// CPU before the window: loading, attaching, settling.
    startup_cpu: Duration,
    window_cpu: Duration,
    window: Duration,
    /// CPU from the stop signal to the exit.
    stop_cpu: Duration,
    stop_wall: Duration,
}

struct PerfRun {
    traced: Traced,
    post: PerfPost,
}

#[derive(Default)]
struct Results {
    untraced: Vec<f64>,
    perf: Vec<PerfRun>,
    qprof: Vec<Traced>,
    /// From qprof's summary line, per run.
    qprof_samples: Vec<u64>,
}

struct Bench {
    qprof: PathBuf,
    fixture: PathBuf,
    scratch: Scratch,
    cpus: usize,
    seconds: u64,
}

pub fn run(seconds: u64, rounds: usize) -> anyhow::Result<ExitCode> {
    if !util::is_root() {
        bail!(
            "the CPU benchmark loads BPF programs and runs perf host-wide: run as root (sudo -E cargo xtask bench cpu)"
        );
    }
    if seconds == 0 || rounds == 0 {
        bail!("--seconds and --rounds must be at least 1");
    }
    setup::ensure_build_tools()?;
    test::install_test_packages()?;
    let qprof = util::build_qprof()?;
    let scratch = Scratch::create("cpu")?;
    let fixture = scratch.path("cpu_burn");
    util::run_cmd(
        Command::new("gcc")
            .args(["-O1", "-fno-omit-frame-pointer", "-o"])
            .arg(&fixture)
            .arg(util::workspace_root().join("tests/fixtures/cpu_burn.c")),
    )?;
    let bench = Bench {
        qprof,
        fixture,
        scratch,
        cpus: online_cpus(),
        seconds,
    };
    eprintln!(
        "bench cpu: {} × cpu_burn (one per CPU), {seconds} s windows, {rounds} rounds of 3 conditions: about {} min",
        bench.cpus,
        (rounds as u64 * 3 * (seconds + 8)).div_ceil(60)
    );
    let mut results = Results::default();
    for round in 0..rounds {
        for k in 0..CONDITIONS.len() {
            let condition = CONDITIONS[(round + k) % CONDITIONS.len()];
            bench
                .run_one(condition, &mut results)
                .with_context(|| format!("round {}", round + 1))?;
            // Let write-back and stragglers of the last run finish.
            sleep(Duration::from_secs(1));
        }
    }
    print!("{}", report(&bench, rounds, &results));
    Ok(ExitCode::SUCCESS)
}

impl Bench {
    fn run_one(&self, condition: Condition, results: &mut Results) -> anyhow::Result<()> {
        match condition {
            Condition::Untraced => {
                let rate = self.run_fixture()?;
                eprintln!("  (a) untraced: {rate:.1} rounds/s");
                results.untraced.push(rate);
            }
            Condition::Perf => {
                let data = self.scratch.path("perf.data");
                let _ = std::fs::remove_file(&data);
                let recorder = Running::spawn(
                    Command::new("perf")
                        .args(["record", "-F", "99", "-a", "-g", "-o"])
                        .arg(&data)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null()),
                    "perf record",
                    Some(&self.scratch.path("perf-record.log")),
                )?;
                let traced = self.traced(recorder)?;
                let post = perf_post::run(
                    &data,
                    &self.scratch.path("perf.svg"),
                    &self.scratch.path("perf-script.log"),
                )?;
                eprintln!(
                    "  (b) perf:     {:.1} rounds/s, sampling {:.2}% of a core, post {} ms (record {} + script {} + inferno {})",
                    traced.rate,
                    share(&traced) * 100.0,
                    ms(traced.stop_cpu + post.script_cpu + post.inferno_cpu),
                    ms(traced.stop_cpu),
                    ms(post.script_cpu),
                    ms(post.inferno_cpu)
                );
                results.perf.push(PerfRun { traced, post });
            }
            Condition::Qprof => {
                let recorder = Running::spawn(
                    Command::new(&self.qprof)
                        .args(["record", "cpu", "--hz", "99", "--duration"])
                        // Stopped by SIGINT (which, like the end of
                        // --duration, ends sampling and writes everything):
                        // the window's end is then known to the millisecond.
                        .arg(format!("{}s", self.seconds + 600))
                        .arg("-o")
                        .arg(self.scratch.path("qprof.pb.gz"))
                        .arg("--svg")
                        .arg(self.scratch.path("qprof.svg"))
                        .stdin(Stdio::null())
                        .stdout(Stdio::null()),
                    "qprof record cpu",
                    Some(&self.scratch.path("qprof.log")),
                )?;
                let traced = self.traced(recorder)?;
                eprintln!(
                    "  (c) qprof:    {:.1} rounds/s, sampling {:.2}% of a core, post {} ms",
                    traced.rate,
                    share(&traced) * 100.0,
                    ms(traced.stop_cpu)
                );
                let log =
                    std::fs::read_to_string(self.scratch.path("qprof.log")).unwrap_or_default();
                results.qprof_samples.extend(qprof_samples(&log));
                results.qprof.push(traced);
            }
        }
        Ok(())
    }

    /// Starts the fixture once the tracer samples, stops the tracer when the
    /// fixture is done, and reads the tracer's CPU at each step.
    fn traced(&self, mut tracer: Running) -> anyhow::Result<Traced> {
        wait_ready(&mut tracer, self.cpus)?;
        let pid = tracer.pid();
        let startup_cpu = cpu_time(pid)?;
        let start = Instant::now();
        let rate = self.run_fixture()?;
        let window = start.elapsed();
        let end_cpu = cpu_time(pid)?;
        let stop = Instant::now();
        tracer.signal(libc::SIGINT)?;
        let (status, total) = tracer.wait_cpu()?;
        let stop_wall = stop.elapsed();
        // perf re-raises SIGINT once it has written perf.data.
        if !status.success() && status.signal() != Some(libc::SIGINT) {
            bail!("the tracer failed with {status}{}", tracer.log_tail());
        }
        Ok(Traced {
            rate,
            startup_cpu,
            window_cpu: end_cpu.saturating_sub(startup_cpu),
            window,
            stop_cpu: total.saturating_sub(end_cpu),
            stop_wall,
        })
    }

    /// Runs one fixture per CPU for the window; their summed throughput.
    fn run_fixture(&self) -> anyhow::Result<f64> {
        let mut burners = Vec::with_capacity(self.cpus);
        for _ in 0..self.cpus {
            burners.push(Running::spawn(
                Command::new(&self.fixture)
                    .arg(self.seconds.to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null()),
                "cpu_burn",
                None,
            )?);
        }
        let mut rate = 0.0;
        for burner in burners {
            let out = burner
                .into_child()?
                .wait_with_output()
                .context("waiting for cpu_burn")?;
            let text = String::from_utf8_lossy(&out.stdout);
            rate += parse_rate(&text)
                .with_context(|| format!("cpu_burn printed no rounds=/seconds=: {text:?}"))?;
        }
        Ok(rate)
    }
}

/// "rounds=N seconds=S" -> N / S.
fn parse_rate(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("rounds="))?;
    let mut rounds = None;
    let mut seconds = None;
    for field in line.split_whitespace() {
        match field.split_once('=') {
            Some(("rounds", n)) => rounds = n.parse::<f64>().ok(),
            Some(("seconds", s)) => seconds = s.parse::<f64>().ok(),
            _ => {}
        }
    }
    let (rounds, seconds) = (rounds?, seconds?);
    (seconds > 0.0).then_some(rounds / seconds)
}

/// qprof's summary line "qprof: N samples (M distinct stacks) ...".
fn qprof_samples(log: &str) -> Option<u64> {
    log.lines().find_map(|l| {
        l.strip_prefix("qprof: ")?
            .split_once(" samples (")?
            .0
            .parse()
            .ok()
    })
}

fn share(t: &Traced) -> f64 {
    t.window_cpu.as_secs_f64() / t.window.as_secs_f64().max(1e-9)
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => f64::midpoint(values[n / 2 - 1], values[n / 2]),
    }
}

fn median_ms<T>(runs: &[T], f: impl Fn(&T) -> Duration) -> f64 {
    median(runs.iter().map(|r| f(r).as_secs_f64() * 1000.0).collect())
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT MET" }
}

fn report(bench: &Bench, rounds: usize, r: &Results) -> String {
    let base = median(r.untraced.clone());
    let perf_rate = median(r.perf.iter().map(|p| p.traced.rate).collect());
    let qprof_rate = median(r.qprof.iter().map(|t| t.rate).collect());
    let slow = |rate: f64| 1.0 - rate / base;
    let (perf_slow, qprof_slow) = (slow(perf_rate), slow(qprof_rate));
    let spread = |v: &[f64]| {
        let max = v.iter().copied().fold(f64::MIN, f64::max);
        let min = v.iter().copied().fold(f64::MAX, f64::min);
        (max - min) / base
    };
    let runs = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let perf_rates: Vec<f64> = r.perf.iter().map(|p| p.traced.rate).collect();
    let qprof_rates: Vec<f64> = r.qprof.iter().map(|t| t.rate).collect();

    let qprof_share = median(r.qprof.iter().map(share).collect());
    let perf_share = median(r.perf.iter().map(|p| share(&p.traced)).collect());
    let qprof_start = median_ms(&r.qprof, |t| t.startup_cpu);
    let perf_start = median_ms(&r.perf, |p| p.traced.startup_cpu);
    let qprof_post = median_ms(&r.qprof, |t| t.stop_cpu);
    let qprof_post_wall = median_ms(&r.qprof, |t| t.stop_wall);
    let perf_record_post = median_ms(&r.perf, |p| p.traced.stop_cpu);
    let perf_script = median_ms(&r.perf, |p| p.post.script_cpu);
    let perf_inferno = median_ms(&r.perf, |p| p.post.inferno_cpu);
    let perf_post = median_ms(&r.perf, |p| p.post.script_cpu + p.post.inferno_cpu);
    let perf_post_wall = median_ms(&r.perf, |p| p.post.wall);
    let perf_post_with_exit = median_ms(&r.perf, |p| {
        p.traced.stop_cpu + p.post.script_cpu + p.post.inferno_cpu
    });
    let qprof_samples = median(r.qprof_samples.iter().map(|&n| n as f64).collect());
    let perf_samples = median(r.perf.iter().map(|p| p.post.samples as f64).collect());

    let mut o = String::new();
    let _ = writeln!(
        o,
        "\nCPU profiling benchmark: {} × cpu_burn (one per CPU), {} s windows, {rounds} interleaved rounds; medians\n",
        bench.cpus, bench.seconds
    );
    let _ = writeln!(
        o,
        "| condition                      | fixture rounds/s | runs            | slowdown vs (a) |"
    );
    let _ = writeln!(
        o,
        "|--------------------------------|-----------------:|-----------------|----------------:|"
    );
    let _ = writeln!(
        o,
        "| (a) untraced                   | {base:>16.0} | {:<15} |               - |",
        runs(&r.untraced)
    );
    let _ = writeln!(
        o,
        "| (b) perf record -F 99 -a -g    | {perf_rate:>16.0} | {:<15} | {:>14.2}% |",
        runs(&perf_rates),
        perf_slow * 100.0
    );
    let _ = writeln!(
        o,
        "| (c) qprof record cpu --hz 99   | {qprof_rate:>16.0} | {:<15} | {:>14.2}% |",
        runs(&qprof_rates),
        qprof_slow * 100.0
    );
    let _ = writeln!(
        o,
        "\nnoise: spread (max - min) of the runs, relative to (a): (a) {:.2}%, (b) {:.2}%, (c) {:.2}%\n",
        spread(&r.untraced) * 100.0,
        spread(&perf_rates) * 100.0,
        spread(&qprof_rates) * 100.0
    );
    let _ = writeln!(
        o,
        "| tracer cost                         | qprof     | perf      | qprof / perf |"
    );
    let _ = writeln!(
        o,
        "|-------------------------------------|----------:|----------:|-------------:|"
    );
    let row = |o: &mut String, name: &str, q: f64, p: f64, unit: &str, prec: usize| {
        let _ = writeln!(
            o,
            "| {name:<35} | {q:>6.prec$} {unit:<2} | {p:>6.prec$} {unit:<2} | {:>12.2} |",
            q / p
        );
    };
    row(
        &mut o,
        "CPU while sampling (% of one core)",
        qprof_share * 100.0,
        perf_share * 100.0,
        "%",
        2,
    );
    row(
        &mut o,
        "start-up CPU (before sampling)",
        qprof_start,
        perf_start,
        "ms",
        0,
    );
    row(
        &mut o,
        "post-processing CPU (1)",
        qprof_post,
        perf_post,
        "ms",
        0,
    );
    row(
        &mut o,
        "post-processing wall time (1)",
        qprof_post_wall,
        perf_post_wall,
        "ms",
        0,
    );
    row(
        &mut o,
        "post-processing CPU incl. perf's exit",
        qprof_post,
        perf_post_with_exit,
        "ms",
        0,
    );
    row(
        &mut o,
        "samples in the profile",
        qprof_samples,
        perf_samples,
        "",
        0,
    );
    let _ = writeln!(
        o,
        "\n(1) qprof: from SIGINT to exit (read the kernel maps, symbolize, write pprof + SVG).\n    \
         perf: `perf script` {perf_script:.0} ms + inferno collapse + flamegraph {perf_inferno:.0} ms; \
         perf record's own write-out after SIGINT ({perf_record_post:.0} ms) only in the \"incl.\" row.\n"
    );
    let _ = writeln!(
        o,
        "| target (issue 2)                        | result                          | verdict |"
    );
    let _ = writeln!(
        o,
        "|-----------------------------------------|---------------------------------|---------|"
    );
    let _ = writeln!(
        o,
        "| qprof's slowdown ≤ perf's               | {:<31} | {:<7} |",
        format!("{:.2}% vs {:.2}%", qprof_slow * 100.0, perf_slow * 100.0),
        verdict(qprof_slow <= perf_slow)
    );
    let _ = writeln!(
        o,
        "| qprof's CPU while sampling ≤ 1% of a core | {:<29} | {:<7} |",
        format!("{:.2}%", qprof_share * 100.0),
        verdict(qprof_share <= MAX_SAMPLING_SHARE)
    );
    let _ = writeln!(
        o,
        "| qprof's post-processing ≤ perf's        | {:<31} | {:<7} |",
        format!("{qprof_post:.0} ms vs {perf_post:.0} ms"),
        verdict(qprof_post <= perf_post)
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(
            parse_rate("ready pid=1\nrounds=300 seconds=3.000\n"),
            Some(100.0)
        );
        assert_eq!(parse_rate("ready pid=1\n"), None);
        assert_eq!(parse_rate("rounds=3 seconds=0\n"), None);
    }

    #[test]
    fn qprof_summary_parses() {
        let log =
            "qprof: mounted tracefs at /x\nqprof: 5940 samples (31 distinct stacks) written to a\n";
        assert_eq!(qprof_samples(log), Some(5940));
    }

    #[test]
    fn medians() {
        assert!((median(vec![3.0, 1.0, 2.0]) - 2.0).abs() < 1e-9);
        assert!((median(vec![4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-9);
        assert!(median(Vec::new()).is_nan());
    }
}
