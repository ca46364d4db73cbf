//! What `bench cpu` measured, and its report: Markdown tables ready for
//! BENCHMARKS.md, medians of the interleaved runs, each target of issue 2
//! next to its result.

use std::{fmt::Write as _, time::Duration};

use super::{cpu::Bench, perf_post::PerfPost};

/// Issue 2: qprof's CPU while sampling, as a share of one CPU.
const MAX_SAMPLING_SHARE: f64 = 0.01;

/// One run of the fixture (one instance per CPU).
pub struct Window {
    /// Rounds per second, summed over the instances.
    pub rate: f64,
    pub wall: Duration,
    /// CPU the instances used (all of theirs, from `wait4`).
    pub fixture_cpu: Duration,
    /// CPU this process used meanwhile.
    pub self_cpu: Duration,
}

impl Window {
    /// Rounds per CPU-second the fixture got. Other processes change how
    /// much CPU the fixture gets, hardly what it does with it, while a
    /// tracer's sampling in the kernel (interrupts, charged to the task they
    /// interrupt) does lower it; the tracer's process is counted apart.
    fn per_cpu_second(&self) -> f64 {
        self.rate * self.wall.as_secs_f64() / self.fixture_cpu.as_secs_f64().max(1e-9)
    }
}

/// One window under a tracer, and what the tracer cost.
pub struct Traced {
    pub window: Window,
    /// Tracer CPU before the window: loading, attaching, settling.
    pub startup_cpu: Duration,
    /// Tracer CPU during the window.
    pub window_cpu: Duration,
    /// Tracer CPU from the stop signal to its exit.
    pub stop_cpu: Duration,
    pub stop_wall: Duration,
}

pub enum Run {
    Untraced(Window),
    Perf(Traced, PerfPost),
    /// With the sample count from qprof's summary.
    Qprof(Traced, Option<u64>),
}

impl Run {
    fn window(&self) -> &Window {
        match self {
            Run::Untraced(w) => w,
            Run::Perf(t, _) | Run::Qprof(t, _) => &t.window,
        }
    }

    /// Share of the machine's CPU during the window that went neither to
    /// the fixture nor to the tracer nor to this process: other processes,
    /// idle gaps (start and exit), and time the hypervisor took.
    pub fn other_load(&self, cpus: usize) -> f64 {
        let w = self.window();
        let tracer = match self {
            Run::Untraced(_) => Duration::ZERO,
            Run::Perf(t, _) | Run::Qprof(t, _) => t.window_cpu,
        };
        Self::other_load_of(w, tracer, cpus)
    }

    fn other_load_of(w: &Window, tracer: Duration, cpus: usize) -> f64 {
        let used = (w.fixture_cpu + w.self_cpu + tracer).as_secs_f64();
        1.0 - used / (w.wall.as_secs_f64() * cpus as f64).max(1e-9)
    }

    /// One progress line.
    pub fn describe(&self, cpus: usize) -> String {
        let other = self.other_load(cpus) * 100.0;
        match self {
            Run::Untraced(w) => {
                format!(
                    "(a) untraced: {:.1} rounds/s, other load {other:.2}%",
                    w.rate
                )
            }
            Run::Perf(t, p) => format!(
                "(b) perf:     {:.1} rounds/s, other load {other:.2}%, sampling {:.3}% of a CPU, \
                 post-processing {} ms (script {} + inferno {}; record's exit {})",
                t.window.rate,
                share(t) * 100.0,
                (p.script_cpu + p.inferno_cpu).as_millis(),
                p.script_cpu.as_millis(),
                p.inferno_cpu.as_millis(),
                t.stop_cpu.as_millis()
            ),
            Run::Qprof(t, _) => format!(
                "(c) qprof:    {:.1} rounds/s, other load {other:.2}%, sampling {:.3}% of a CPU, \
                 post-processing {} ms",
                t.window.rate,
                share(t) * 100.0,
                t.stop_cpu.as_millis()
            ),
        }
    }
}

#[derive(Default)]
pub struct Results {
    untraced: Vec<Window>,
    perf: Vec<(Traced, PerfPost)>,
    qprof: Vec<(Traced, Option<u64>)>,
    /// Windows repeated because other processes were busy.
    pub repeated: usize,
}

impl Results {
    pub fn push(&mut self, run: Run) {
        match run {
            Run::Untraced(w) => self.untraced.push(w),
            Run::Perf(t, p) => self.perf.push((t, p)),
            Run::Qprof(t, n) => self.qprof.push((t, n)),
        }
    }
}

/// Tracer CPU during the window, as a share of one CPU.
fn share(t: &Traced) -> f64 {
    t.window_cpu.as_secs_f64() / t.window.wall.as_secs_f64().max(1e-9)
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

fn median_of<T>(runs: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(runs.iter().map(f).collect())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT MET" }
}

/// Runs as "min–max".
fn range(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.0}–{max:.0}")
}

/// One way of measuring the slowdown: perf's, qprof's, and the noise floor
/// (run-to-run spread of the untraced runs, relative to their median).
#[derive(Clone, Copy)]
struct Slowdown {
    perf: f64,
    qprof: f64,
    noise: f64,
}

impl Slowdown {
    /// `measure`: throughput of one window, higher is better.
    fn of(r: &Results, measure: impl Fn(&Window) -> f64) -> Self {
        let untraced: Vec<f64> = r.untraced.iter().map(&measure).collect();
        let base = median(untraced.clone());
        let max = untraced.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let min = untraced.iter().copied().fold(f64::INFINITY, f64::min);
        Self {
            perf: 1.0 - median_of(&r.perf, |(t, _)| measure(&t.window)) / base,
            qprof: 1.0 - median_of(&r.qprof, |(t, _)| measure(&t.window)) / base,
            noise: (max - min) / base,
        }
    }
}

/// The medians the targets are judged on.
struct Summary {
    wall: Slowdown,
    per_cpu: Slowdown,
    share_qprof: f64,
    share_perf: f64,
    post_qprof_ms: f64,
    post_perf_ms: f64,
}

pub fn render(bench: &Bench, rounds: usize, r: &Results) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\n{} × cpu_burn (one per CPU), {} s windows, {rounds} interleaved rounds, medians; \
         {} window(s) repeated for other load\n",
        bench.cpus, bench.seconds, r.repeated
    );
    let summary = Summary {
        wall: Slowdown::of(r, |w| w.rate),
        per_cpu: Slowdown::of(r, Window::per_cpu_second),
        share_qprof: median_of(&r.qprof, |(t, _)| share(t)),
        share_perf: median_of(&r.perf, |(t, _)| share(t)),
        post_qprof_ms: median_of(&r.qprof, |(t, _)| ms(t.stop_cpu)),
        post_perf_ms: median_of(&r.perf, |(_, p)| ms(p.script_cpu + p.inferno_cpu)),
    };
    throughput_table(&mut o, bench.cpus, r, &summary);
    cost_table(&mut o, r, &summary);
    targets_table(&mut o, &summary);
    o
}

/// Fixture throughput per condition, by the wall clock and per CPU-second.
fn throughput_table(o: &mut String, cpus: usize, r: &Results, s: &Summary) {
    let _ = writeln!(
        o,
        "| condition | fixture rounds/s | runs (min–max) | other load | slowdown | \
         rounds per fixture CPU-s | slowdown per CPU-s |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|");
    let mut row = |name: &str, windows: Vec<(&Window, Duration)>, slowdowns: Option<(f64, f64)>| {
        let rates: Vec<f64> = windows.iter().map(|(w, _)| w.rate).collect();
        let other = median_of(&windows, |(w, tracer)| Run::other_load_of(w, *tracer, cpus));
        let per_cpu = median_of(&windows, |(w, _)| w.per_cpu_second());
        let pct =
            |x: Option<f64>| x.map_or_else(|| "–".to_owned(), |x| format!("{:.2}%", x * 100.0));
        let _ = writeln!(
            o,
            "| {name} | {:.0} | {} | {:.2}% | {} | {per_cpu:.0} | {} |",
            median(rates.clone()),
            range(&rates),
            other * 100.0,
            pct(slowdowns.map(|s| s.0)),
            pct(slowdowns.map(|s| s.1)),
        );
    };
    row(
        "(a) untraced",
        r.untraced.iter().map(|w| (w, Duration::ZERO)).collect(),
        None,
    );
    row(
        "(b) `perf record -F 99 -a -g`",
        r.perf
            .iter()
            .map(|(t, _)| (&t.window, t.window_cpu))
            .collect(),
        Some((s.wall.perf, s.per_cpu.perf)),
    );
    row(
        "(c) `qprof record cpu --hz 99`",
        r.qprof
            .iter()
            .map(|(t, _)| (&t.window, t.window_cpu))
            .collect(),
        Some((s.wall.qprof, s.per_cpu.qprof)),
    );
    let _ = writeln!(
        o,
        "\nnoise floor (spread of the untraced runs): {:.2}% by the wall clock, {:.2}% per CPU-second",
        s.wall.noise * 100.0,
        s.per_cpu.noise * 100.0
    );
}

/// The tracers' own CPU, side by side.
fn cost_table(o: &mut String, r: &Results, s: &Summary) {
    let _ = writeln!(o, "\n| tracer's own cost | qprof | perf | qprof / perf |");
    let _ = writeln!(o, "|---|---:|---:|---:|");
    let mut row = |name: &str, q: f64, p: f64, unit: &str, decimals: usize| {
        let _ = writeln!(
            o,
            "| {name} | {q:.decimals$} {unit} | {p:.decimals$} {unit} | {:.2} |",
            q / p
        );
    };
    row(
        "CPU while sampling, % of one CPU",
        s.share_qprof * 100.0,
        s.share_perf * 100.0,
        "%",
        3,
    );
    row(
        "start-up CPU (before sampling)",
        median_of(&r.qprof, |(t, _)| ms(t.startup_cpu)),
        median_of(&r.perf, |(t, _)| ms(t.startup_cpu)),
        "ms",
        0,
    );
    row(
        "post-processing CPU (1)",
        s.post_qprof_ms,
        s.post_perf_ms,
        "ms",
        0,
    );
    row(
        "post-processing wall time (1)",
        median_of(&r.qprof, |(t, _)| ms(t.stop_wall)),
        median_of(&r.perf, |(_, p)| ms(p.wall)),
        "ms",
        0,
    );
    row(
        "post-processing CPU incl. perf record's exit (2)",
        s.post_qprof_ms,
        median_of(&r.perf, |(t, p)| {
            ms(t.stop_cpu + p.script_cpu + p.inferno_cpu)
        }),
        "ms",
        0,
    );
    row(
        "samples in the profile",
        median(
            r.qprof
                .iter()
                .filter_map(|(_, n)| n.map(|n| n as f64))
                .collect(),
        ),
        median_of(&r.perf, |(_, p)| p.samples as f64),
        "",
        0,
    );
    let _ = writeln!(
        o,
        "\n(1) qprof: SIGINT to exit: read the kernel maps, symbolize, write pprof + SVG. \
         perf: `perf script` {:.0} ms + inferno collapse-perf and flamegraph {:.0} ms.\n\
         (2) adds perf record's own work between SIGINT and its exit ({:.0} ms: build-ids, header).\n",
        median_of(&r.perf, |(_, p)| ms(p.script_cpu)),
        median_of(&r.perf, |(_, p)| ms(p.inferno_cpu)),
        median_of(&r.perf, |(t, _)| ms(t.stop_cpu)),
    );
}

/// Each target of issue 2 next to its result.
fn targets_table(o: &mut String, s: &Summary) {
    let _ = writeln!(o, "| target (issue 2) | result | verdict |");
    let _ = writeln!(o, "|---|---|---|");
    for (how, d) in [
        ("by the wall clock", s.wall),
        ("per fixture CPU-second", s.per_cpu),
    ] {
        let within_noise = (d.qprof - d.perf).abs() <= d.noise;
        let verdict = match (d.qprof <= d.perf, within_noise) {
            (true, false) => "met",
            (true, true) => "met, within noise",
            (false, true) => "not met, within noise",
            (false, false) => "NOT MET",
        };
        let _ = writeln!(
            o,
            "| qprof's slowdown ≤ perf's, {how} | {:.2}% vs {:.2}% (noise {:.2}%) | {verdict} |",
            d.qprof * 100.0,
            d.perf * 100.0,
            d.noise * 100.0
        );
    }
    let _ = writeln!(
        o,
        "| qprof's CPU while sampling ≤ 1% of one CPU | {:.3}% | {} |",
        s.share_qprof * 100.0,
        verdict(s.share_qprof <= MAX_SAMPLING_SHARE)
    );
    let _ = writeln!(
        o,
        "| qprof's post-processing ≤ perf's | {:.0} ms vs {:.0} ms | {} |",
        s.post_qprof_ms,
        s.post_perf_ms,
        verdict(s.post_qprof_ms <= s.post_perf_ms)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert!((median(vec![3.0, 1.0, 2.0]) - 2.0).abs() < 1e-9);
        assert!((median(vec![4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-9);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn other_load_is_what_nobody_measured_used() {
        let w = Window {
            rate: 1.0,
            wall: Duration::from_secs(10),
            fixture_cpu: Duration::from_secs(19),
            self_cpu: Duration::ZERO,
        };
        let run = Run::Untraced(w);
        assert!((run.other_load(2) - 0.05).abs() < 1e-9);
    }
}
