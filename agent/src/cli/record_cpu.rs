//! `qprof record cpu`: validate everything, drive the CPU sampler
//! component for the duration, symbolize, write.

use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};

use super::{RecordCpuArgs, capture_loop, checks, values};
use crate::{
    export::profile::{self, Outputs, value_type},
    probes::{
        component::Component as _,
        cpu::{CpuCapture, CpuConfig, CpuSampler},
    },
    symbolize::Symbolizer,
};

pub fn run(args: &RecordCpuArgs) -> anyhow::Result<()> {
    validate(args)?;
    let started_at = SystemTime::now();
    let config = CpuConfig {
        hz: args.hz,
        pids: args.pids.clone(),
        by_query: args.by_query,
        include_idle: args.include_idle,
    };
    let sampler = CpuSampler::start(&config).context("starting the CPU sampler")?;
    let (capture, ended) = capture_loop::record(sampler, args.duration, "samples")?;
    write_outputs(args, &capture, started_at, ended.elapsed)
}

/// Every check that can fail before sampling starts, so that a bad value
/// costs nothing and no capture is thrown away at the end.
fn validate(args: &RecordCpuArgs) -> anyhow::Result<()> {
    checks::pids_exist(&args.pids)?;
    if let Some(max) = values::max_sample_rate()
        && args.hz > max
    {
        bail!(
            "--hz {} is above the kernel's limit of {max} (kernel.perf_event_max_sample_rate)",
            args.hz
        );
    }
    outputs(args).check()?;
    checks::privileges_and_kernel()
}

fn write_outputs(
    args: &RecordCpuArgs,
    capture: &CpuCapture,
    started_at: SystemTime,
    elapsed: Duration,
) -> anyhow::Result<()> {
    let period = 1_000_000_000 / args.hz as i64;
    let shape = profile::shape(
        vec![
            value_type("samples", "count"),
            value_type("cpu", "nanoseconds"),
        ],
        value_type("cpu", "nanoseconds"),
        period,
        started_at,
        elapsed,
    );
    let built = profile::build(
        &mut Symbolizer::new(),
        &capture.stacks,
        &capture.maps,
        &shape,
    );
    // The SVG and folded stacks show CPU time (index 1), as perf's do.
    profile::write(&built, &outputs(args), "qprof: CPU", 1).context("writing the profile")?;
    summarize(args, capture);
    Ok(())
}

fn outputs(args: &RecordCpuArgs) -> Outputs {
    Outputs {
        pprof: args.output.clone(),
        svg: args.svg.clone(),
        folded: args.folded.clone(),
    }
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
