//! What `bench cpu` measured, and its report: Markdown tables ready for
//! BENCHMARKS.md, medians of the interleaved runs, each target of issue 2
//! next to its result.

use std::{fmt::Write as _, time::Duration};

use super::{
    cpu::{Bench, MAX_OTHER_LOAD},
    cpu_runs::{Results, Window, share},
};

/// Issue 2: qprof's CPU while sampling, as a share of one CPU.
const MAX_SAMPLING_SHARE: f64 = 0.01;

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
/// (run-to-run spread of the untraced runs, relative to their median; NaN
/// with fewer than two).
#[derive(Clone, Copy)]
struct Slowdown {
    perf: f64,
    qprof: f64,
    noise: f64,
}

impl Slowdown {
    /// `measure`: throughput of one window, higher is better; only windows
    /// that `keep` accepts count. None when a condition has none.
    fn of(r: &Results, measure: fn(&Window) -> f64, keep: fn(&Window) -> bool) -> Option<Self> {
        let [untraced, perf, qprof] = r.by_condition().map(|(_, ws)| {
            ws.into_iter()
                .filter(|w| keep(w))
                .map(measure)
                .collect::<Vec<f64>>()
        });
        if untraced.is_empty() || perf.is_empty() || qprof.is_empty() {
            return None;
        }
        let base = median(untraced.clone());
        let max = untraced.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let min = untraced.iter().copied().fold(f64::INFINITY, f64::min);
        Some(Self {
            perf: 1.0 - median(perf) / base,
            qprof: 1.0 - median(qprof) / base,
            noise: if untraced.len() > 1 {
                (max - min) / base
            } else {
                f64::NAN
            },
        })
    }
}

/// Windows other processes left (nearly) alone.
fn quiet(w: &Window) -> bool {
    w.other_load <= MAX_OTHER_LOAD
}

/// The medians the targets are judged on.
struct Summary {
    /// By the wall clock, quiet windows only: the measure.
    wall: Option<Slowdown>,
    /// Per fixture CPU-second, every window.
    per_cpu: Option<Slowdown>,
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
        wall: Slowdown::of(r, |w| w.rate, quiet),
        per_cpu: Slowdown::of(r, Window::per_cpu_second, |_| true),
        share_qprof: median_of(&r.qprof, |(t, _)| share(t)),
        share_perf: median_of(&r.perf, |(t, _)| share(t)),
        post_qprof_ms: median_of(&r.qprof, |(t, _)| ms(t.stop_cpu)),
        post_perf_ms: median_of(&r.perf, |(_, p)| ms(p.script_cpu + p.inferno_cpu)),
    };
    throughput_table(&mut o, r, &summary);
    cost_table(&mut o, r, &summary);
    targets_table(&mut o, &summary);
    o
}

fn pct(x: Option<f64>) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{:.2}%", x * 100.0),
        _ => "–".to_owned(),
    }
}

/// Fixture throughput per condition: by the wall clock over the quiet
/// windows, and per CPU-second over all of them.
fn throughput_table(o: &mut String, r: &Results, s: &Summary) {
    let _ = writeln!(
        o,
        "| condition | quiet windows | rounds/s, quiet (min–max) | slowdown, quiet | \
         other load, all | rounds per fixture CPU-s, all | slowdown per CPU-s |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|");
    let slowdowns = [
        (None, None),
        (s.wall.map(|d| d.perf), s.per_cpu.map(|d| d.perf)),
        (s.wall.map(|d| d.qprof), s.per_cpu.map(|d| d.qprof)),
    ];
    for ((name, windows), (wall, per_cpu)) in r.by_condition().into_iter().zip(slowdowns) {
        let rates: Vec<f64> = windows
            .iter()
            .filter(|w| quiet(w))
            .map(|w| w.rate)
            .collect();
        let rates_text = if rates.is_empty() {
            "–".to_owned()
        } else {
            format!("{:.0} ({})", median(rates.clone()), range(&rates))
        };
        let _ = writeln!(
            o,
            "| {name} | {}/{} | {rates_text} | {} | {:.2}% | {:.0} | {} |",
            rates.len(),
            windows.len(),
            pct(wall),
            median_of(&windows, |w| w.other_load) * 100.0,
            median_of(&windows, |w| w.per_cpu_second()),
            pct(per_cpu),
        );
    }
    let _ = writeln!(
        o,
        "\nnoise floor (spread of the untraced runs): {} by the wall clock (quiet), {} per CPU-second",
        pct(s.wall.map(|d| d.noise)),
        pct(s.per_cpu.map(|d| d.noise))
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
        ("by the wall clock, quiet windows", s.wall),
        ("per fixture CPU-second", s.per_cpu),
    ] {
        let Some(d) = d else {
            let _ = writeln!(
                o,
                "| qprof's slowdown ≤ perf's, {how} | – | inconclusive: no window |"
            );
            continue;
        };
        let within_noise = (d.qprof - d.perf).abs() <= d.noise;
        let verdict = match (d.qprof <= d.perf, within_noise) {
            (true, false) => "met",
            (true, true) => "met, within noise",
            (false, true) => "not met, within noise",
            (false, false) => "NOT MET",
        };
        let _ = writeln!(
            o,
            "| qprof's slowdown ≤ perf's, {how} | {} vs {} (noise {}) | {verdict} |",
            pct(Some(d.qprof)),
            pct(Some(d.perf)),
            pct(Some(d.noise))
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
}
