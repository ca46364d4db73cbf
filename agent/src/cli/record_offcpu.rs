//! `qprof record offcpu`: where threads wait, by stack, in nanoseconds.

use std::time::SystemTime;

use anyhow::Context as _;

use super::{RecordOffcpuArgs, capture_loop, checks};
use crate::{
    export::profile::{self, Outputs, value_type},
    probes::{
        component::Component as _,
        offcpu::{OffcpuOptions, OffcpuProfiler},
    },
    symbolize::Symbolizer,
};

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
    let profiler = OffcpuProfiler::start(&options).context("starting the off-CPU profiler")?;
    let (capture, ended) = capture_loop::record(profiler, args.duration, "polls")?;
    let shape = profile::shape(
        vec![
            value_type("samples", "count"),
            value_type("offcpu", "nanoseconds"),
        ],
        value_type("offcpu", "nanoseconds"),
        1,
        started_at,
        ended.elapsed,
    );
    let built = profile::build(
        &mut Symbolizer::new(),
        &capture.stacks,
        &capture.maps,
        &shape,
    );
    profile::write(&built, &outputs, "qprof: off-CPU time", 1).context("writing the profile")?;
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
