//! The peer's post-processing: `perf script | inferno-collapse-perf |
//! inferno-flamegraph`, with inferno as a library in this process so that
//! its CPU time can be read directly.

use std::{
    fs::File,
    io::{BufReader, BufWriter, Write as _},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use inferno::collapse::Collapse as _;

use super::process::{Running, self_cpu};

/// What turning perf.data into a flamegraph cost.
pub struct PerfPost {
    /// `perf script`: reading perf.data and symbolizing every sample.
    pub script_cpu: Duration,
    /// inferno's collapse and SVG rendering (this process, all threads).
    pub inferno_cpu: Duration,
    pub wall: Duration,
    /// Samples in the folded output, to check both tools saw as many.
    pub samples: u64,
}

pub fn run(data: &Path, svg: &Path, log: &Path) -> anyhow::Result<PerfPost> {
    let wall = Instant::now();
    let self_before = self_cpu()?;
    let mut script = Running::spawn(
        Command::new("perf")
            .arg("script")
            .arg("-i")
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
        "perf script",
        Some(log),
    )?;
    let stdout = script
        .child_mut()?
        .stdout
        .take()
        .context("perf script's stdout")?;
    // Collapsing reads the pipe while perf script writes it, as in a shell
    // pipeline; the default options are inferno-collapse-perf's defaults.
    let mut folded = Vec::new();
    inferno::collapse::perf::Folder::default()
        .collapse(BufReader::new(stdout), &mut folded)
        .context("collapsing perf script's output")?;
    let (status, script_cpu) = script.wait_cpu()?;
    if !status.success() {
        bail!("perf script failed with {status}{}", script.log_tail());
    }
    let folded = String::from_utf8(folded).context("folded stacks are not UTF-8")?;
    let samples = folded
        .lines()
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, n)| n.parse::<u64>().ok()))
        .sum();
    let mut options = inferno::flamegraph::Options::default();
    "perf: CPU".clone_into(&mut options.title);
    let file = File::create(svg).with_context(|| format!("creating {}", svg.display()))?;
    let mut out = BufWriter::new(file);
    inferno::flamegraph::from_lines(&mut options, folded.lines(), &mut out)
        .context("rendering perf's flamegraph")?;
    out.flush()
        .with_context(|| format!("writing {}", svg.display()))?;
    let inferno_cpu = self_cpu()?.saturating_sub(self_before);
    Ok(PerfPost {
        script_cpu,
        inferno_cpu,
        wall: wall.elapsed(),
        samples,
    })
}
