//! `qprof record offcpu`: where threads wait, by stack, in nanoseconds.

use std::time::SystemTime;

use anyhow::Context as _;

use super::{
    RecordOffcpuArgs, capture_loop, checks,
    profile_out::{self, Outputs, value_type},
};
use crate::probes::offcpu::{OffcpuOptions, OffcpuProfiler};

pub fn run(args: &RecordOffcpuArgs) -> anyhow::Result<()> {
    checks::pids_exist(&args.pids)?;
    let outputs = Outputs {
        pprof: args.output.clone(),
        svg: args.svg.clone(),
        folded: args.folded.clone(),
    };
    outputs.check()?;
    checks::privileges_and_kernel()?;
    let options = OffcpuOptions {
        pids: args.pids.clone(),
        min_block_ns: args.min_block.as_nanos() as u64,
        by_query: args.by_query,
    };
    let started_at = SystemTime::now();
    let mut profiler = OffcpuProfiler::start(&options).context("starting the off-CPU profiler")?;
    let mut polls = 0;
    let ended = capture_loop::wait(args.duration, "polls", || {
        profiler.poll_new_processes();
        polls += 1;
        polls
    })?;
    let capture = profiler
        .finish()
        .context("reading off-CPU time out of the kernel")?;
    let shape = profile_out::shape(
        vec![
            value_type("samples", "count"),
            value_type("offcpu", "nanoseconds"),
        ],
        value_type("offcpu", "nanoseconds"),
        1,
        started_at,
        ended.elapsed,
    );
    profile_out::write(
        &capture.stacks,
        &capture.maps,
        &shape,
        &outputs,
        "qprof: off-CPU time",
        1,
    )?;
    eprintln!(
        "qprof: {} blocks, {:.3}s blocked ({} distinct stacks) written to {}",
        capture.stacks.total(0),
        capture.stacks.total(1) as f64 / 1e9,
        capture.stacks.len(),
        args.output.display()
    );
    if !capture.drops.is_empty() {
        let lost: Vec<String> = capture
            .drops
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        eprintln!(
            "qprof: some blocks were degraded or lost: {}",
            lost.join(", ")
        );
    }
    Ok(())
}
