//! The peer's post-processing: `perf script | inferno-collapse-perf |
//! inferno-flamegraph`, with inferno as a library in this process so that
//! its CPU time can be read directly.

use std::{
    fs::File,
    io::{BufReader, BufWriter, Read, Write as _},
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
    /// Samples `perf script` printed, to check both tools saw as many.
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
    let mut counted = SampleCounter {
        inner: stdout,
        samples: 0,
        at_line_start: true,
    };
    inferno::collapse::perf::Folder::default()
        .collapse(BufReader::new(&mut counted), &mut folded)
        .context("collapsing perf script's output")?;
    let (status, script_cpu) = script.wait_cpu()?;
    if !status.success() {
        bail!("perf script failed with {status}{}", script.log_tail());
    }
    let folded = String::from_utf8(folded).context("folded stacks are not UTF-8")?;
    let samples = counted.samples;
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

/// Counts the samples in `perf script` output as it streams past: each
/// starts with an unindented header line, its stack lines are indented.
/// (The folded output can't tell: inferno weighs stacks by the sample
/// period, in nanoseconds for cpu-clock.)
struct SampleCounter<R> {
    inner: R,
    samples: u64,
    at_line_start: bool,
}

impl<R: Read> Read for SampleCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &byte in buf.iter().take(n) {
            if self.at_line_start && !matches!(byte, b' ' | b'\t' | b'\n') {
                self.samples += 1;
            }
            self.at_line_start = byte == b'\n';
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_counted_across_reads() {
        let text = "perf 1 [000] 1.0: 10101010 cpu-clock:\n\tffff a (b)\n\ncpu_burn 2 [001] 1.1: 1 cpu-clock:\n\t1 c (d)\n\n";
        let mut counter = SampleCounter {
            inner: text.as_bytes(),
            samples: 0,
            at_line_start: true,
        };
        let mut small = [0u8; 3];
        while counter.read(&mut small).is_ok_and(|n| n > 0) {}
        assert_eq!(counter.samples, 2);
    }
}
