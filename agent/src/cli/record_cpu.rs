//! `qprof record cpu`: validate everything, sample, symbolize, write.

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};
use profiles::ValueType;

use super::{RecordCpuArgs, capture_loop, values};
use crate::{
    export::files,
    probes::{
        cpu::{CpuCapture, CpuConfig, CpuSampler},
        preflight,
    },
    symbolize::{ProfileShape, Symbolizer},
};

pub fn run(args: &RecordCpuArgs) -> anyhow::Result<()> {
    validate(args)?;
    let started_at = SystemTime::now();
    let config = CpuConfig {
        hz: args.hz,
        pids: args.pids.clone(),
    };
    let mut sampler = CpuSampler::start(&config).context("starting the CPU sampler")?;
    let ended = capture_loop::wait(args.duration, "samples", || {
        sampler.poll_new_processes();
        sampler.samples_so_far().unwrap_or(0)
    })?;
    let capture = sampler
        .finish()
        .context("reading the capture out of the kernel")?;
    write_outputs(args, &capture, started_at, ended.elapsed)
}

/// Every check that can fail before sampling starts, so that a bad value
/// costs nothing and no capture is thrown away at the end.
fn validate(args: &RecordCpuArgs) -> anyhow::Result<()> {
    for pid in &args.pids {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("no process with pid {pid}");
        }
    }
    if let Some(max) = values::max_sample_rate()
        && args.hz > max
    {
        bail!(
            "--hz {} is above the kernel's limit of {max} (kernel.perf_event_max_sample_rate)",
            args.hz
        );
    }
    for path in [Some(&args.output), args.svg.as_ref(), args.folded.as_ref()]
        .into_iter()
        .flatten()
    {
        files::check_writable(path)?;
    }
    preflight::check_capabilities()?;
    preflight::check_btf()?;
    if preflight::ensure_tracefs()? {
        eprintln!("qprof: mounted tracefs at {}", preflight::TRACEFS);
    }
    Ok(())
}

fn write_outputs(
    args: &RecordCpuArgs,
    capture: &CpuCapture,
    started_at: SystemTime,
    elapsed: Duration,
) -> anyhow::Result<()> {
    let period = 1_000_000_000 / args.hz as i64;
    let shape = ProfileShape {
        sample_types: vec![
            ValueType {
                r#type: "samples".into(),
                unit: "count".into(),
            },
            ValueType {
                r#type: "cpu".into(),
                unit: "nanoseconds".into(),
            },
        ],
        period_type: ValueType {
            r#type: "cpu".into(),
            unit: "nanoseconds".into(),
        },
        period,
        time_nanos: started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64),
        duration_nanos: elapsed.as_nanos() as i64,
    };
    let profile = Symbolizer::new().build_profile(&capture.stacks, &capture.maps, &shape);
    let pprof = profiles::pprof::encode_gzip(&profile).context("encoding pprof")?;
    files::write_private(&args.output, &pprof)?;
    let cpu_index = 1;
    if let Some(svg_path) = &args.svg {
        let mut svg = Vec::new();
        match profiles::flamegraph::render_svg(&profile, cpu_index, "qprof: CPU", &mut svg) {
            Ok(()) => files::write_private(svg_path, &svg)?,
            Err(err) => eprintln!(
                "qprof: no flamegraph written to {}: {err}",
                svg_path.display()
            ),
        }
    }
    if let Some(folded_path) = &args.folded {
        let mut text = profiles::folded::folded_lines(&profile, 0).join("\n");
        text.push('\n');
        files::write_private(folded_path, text.as_bytes())?;
    }
    summarize(args, capture);
    Ok(())
}

fn summarize(args: &RecordCpuArgs, capture: &CpuCapture) {
    let counted = capture.stacks.total(0);
    eprintln!(
        "qprof: {} samples ({} distinct stacks) written to {}",
        counted,
        capture.stacks.len(),
        args.output.display()
    );
    if counted == 0 {
        eprintln!("qprof: no samples: the target did not run on a CPU during the capture");
    }
    if !capture.drops.is_empty() {
        let lost: Vec<String> = capture
            .drops
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        eprintln!(
            "qprof: of {} samples taken, some were degraded or lost: {}",
            capture.total_samples,
            lost.join(", ")
        );
    }
}
