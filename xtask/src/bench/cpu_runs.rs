//! What one `bench cpu` window measured, and how much of the machine
//! other processes took meanwhile.

use std::time::Duration;

use super::perf_post::PerfPost;

/// One run of the fixture (one instance per CPU).
pub struct Window {
    /// Rounds per second, summed over the instances.
    pub rate: f64,
    pub wall: Duration,
    /// CPU the instances used (all of theirs, from `wait4`).
    pub fixture_cpu: Duration,
    /// CPU this process used meanwhile.
    pub self_cpu: Duration,
    /// Set when the run is recorded: see [`Run::other_load`].
    pub other_load: f64,
}

impl Window {
    /// Rounds per CPU-second the fixture got. Other processes change how
    /// much CPU the fixture gets, hardly what it does with it, while a
    /// tracer's sampling in the kernel (interrupts, charged to the task they
    /// interrupt) does lower it; the tracer's process is counted apart.
    pub fn per_cpu_second(&self) -> f64 {
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

    pub fn other_load_of(w: &Window, tracer: Duration, cpus: usize) -> f64 {
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
    pub untraced: Vec<Window>,
    pub perf: Vec<(Traced, PerfPost)>,
    pub qprof: Vec<(Traced, Option<u64>)>,
    /// Windows repeated because other processes were busy.
    pub repeated: usize,
}

impl Results {
    pub fn push(&mut self, mut run: Run, cpus: usize) {
        let other = run.other_load(cpus);
        match &mut run {
            Run::Untraced(w) => w.other_load = other,
            Run::Perf(t, _) | Run::Qprof(t, _) => t.window.other_load = other,
        }
        match run {
            Run::Untraced(w) => self.untraced.push(w),
            Run::Perf(t, p) => self.perf.push((t, p)),
            Run::Qprof(t, n) => self.qprof.push((t, n)),
        }
    }

    /// The fixture windows of (a), (b) and (c).
    pub fn by_condition(&self) -> [(&'static str, Vec<&Window>); 3] {
        [
            ("(a) untraced", self.untraced.iter().collect()),
            (
                "(b) `perf record -F 99 -a -g`",
                self.perf.iter().map(|(t, _)| &t.window).collect(),
            ),
            (
                "(c) `qprof record cpu --hz 99`",
                self.qprof.iter().map(|(t, _)| &t.window).collect(),
            ),
        ]
    }
}

/// Tracer CPU during the window, as a share of one CPU.
pub fn share(t: &Traced) -> f64 {
    t.window_cpu.as_secs_f64() / t.window.wall.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_load_is_what_nobody_measured_used() {
        let w = Window {
            rate: 1.0,
            wall: Duration::from_secs(10),
            fixture_cpu: Duration::from_secs(19),
            self_cpu: Duration::ZERO,
            other_load: 0.0,
        };
        let run = Run::Untraced(w);
        assert!((run.other_load(2) - 0.05).abs() < 1e-9);
    }
}
