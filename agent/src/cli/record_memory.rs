//! `qprof record memory`: sample allocations of given processes by bytes,
//! track which sampled blocks are still live, write a Go-style heap
//! profile, and report memory usage over the capture.

use std::{path::PathBuf, time::Duration, time::SystemTime};

use anyhow::Context as _;
use clap::Args;

use super::{
    capture_loop, checks,
    profile_out::{self, Outputs, value_type},
    values,
};
use crate::{
    aggregate::memory::{ALLOC_SPACE, INUSE_SPACE, SAMPLE_TYPES, human_bytes},
    probes::{
        component::Component as _,
        memory::{MemoryConfig, MemoryProfiler, MemorySnapshot, allocators, usage::ProcessUsage},
    },
};

#[derive(Debug, Args)]
pub struct RecordMemoryArgs {
    /// Profile this process (repeatable; at least one). Its allocator
    /// (libc's malloc/free..., or the program's own) is traced in it alone.
    #[arg(long = "pid", value_name = "PID", value_parser = values::parse_pid, required = true)]
    pub pids: Vec<u32>,
    /// How long to record, e.g. 30s. Ctrl-C stops early and still writes.
    #[arg(long, default_value = "30s", value_parser = values::parse_duration)]
    pub duration: Duration,
    /// Mean bytes allocated between two samples (512 KiB, as in tcmalloc
    /// and Go). An allocation is sampled with probability
    /// 1 - exp(-size/N) and scaled back, so totals stay unbiased; smaller
    /// N means more samples and more detail. Accepts K/M/G suffixes.
    #[arg(long, default_value = "524288", value_parser = parse_sample_bytes)]
    pub sample_bytes: u64,
    /// gzip-compressed pprof output (Go's heap sample types: allocated and
    /// in-use objects and bytes; in-use bytes by default).
    #[arg(short = 'o', long = "output", default_value = "memory.pb.gz")]
    pub output: PathBuf,
    /// Also write an interactive SVG flamegraph (of bytes in use, or of
    /// bytes allocated when nothing sampled is still in use) here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Also write folded stacks (same value as the SVG) here.
    #[arg(long)]
    pub folded: Option<PathBuf>,
}

/// Bytes between samples: a positive integer with an optional K, M or G
/// (binary) suffix, at most 1 TiB.
pub fn parse_sample_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let bad = || {
        format!("invalid --sample-bytes '{text}': expected a number of bytes, e.g. 524288 or 512K")
    };
    let scale: u64 = match suffix.trim() {
        "" | "B" | "b" => 1,
        "K" | "k" | "KiB" | "KB" | "kB" => 1 << 10,
        "M" | "m" | "MiB" | "MB" => 1 << 20,
        "G" | "g" | "GiB" | "GB" => 1 << 30,
        _ => return Err(bad()),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    match n.checked_mul(scale) {
        Some(0) => Err(format!(
            "invalid --sample-bytes '{text}': must be at least 1 (1 samples every allocation)"
        )),
        Some(v) if v <= 1 << 40 => Ok(v),
        _ => Err(format!("invalid --sample-bytes '{text}': at most 1T")),
    }
}

pub fn run(args: &RecordMemoryArgs) -> anyhow::Result<()> {
    checks::pids_exist(&args.pids)?;
    outputs(args).check()?;
    checks::privileges_and_kernel()?;
    let started_at = SystemTime::now();
    let config = MemoryConfig {
        pids: args.pids.clone(),
        sample_bytes: args.sample_bytes,
    };
    let profiler = MemoryProfiler::start(&config).context("starting the memory profiler")?;
    for pid in &args.pids {
        let points: Vec<_> = profiler
            .points
            .iter()
            .filter(|p| p.pid == *pid)
            .cloned()
            .collect();
        eprintln!(
            "qprof: pid {pid} ({}): tracing {}",
            allocators::comm(*pid),
            allocators::describe(&points).join("; ")
        );
    }
    let (capture, ended) = capture_loop::record(profiler, args.duration, "sampled allocations")?;
    let shape = profile_out::shape(
        SAMPLE_TYPES
            .iter()
            .map(|(kind, unit)| value_type(kind, unit))
            .collect(),
        value_type("space", "bytes"),
        args.sample_bytes as i64,
        started_at,
        ended.elapsed,
    );
    let in_use = capture.stacks.total(INUSE_SPACE) > 0;
    let (index, title) = if in_use {
        (INUSE_SPACE, "qprof: memory in use (bytes)")
    } else {
        (ALLOC_SPACE, "qprof: memory allocated (bytes)")
    };
    profile_out::write(
        &capture.stacks,
        &capture.maps,
        &shape,
        &outputs(args),
        title,
        index,
    )?;
    summarize(args, &capture);
    Ok(())
}

fn outputs(args: &RecordMemoryArgs) -> Outputs {
    Outputs {
        pprof: args.output.clone(),
        svg: args.svg.clone(),
        folded: args.folded.clone(),
    }
}

fn summarize(args: &RecordMemoryArgs, capture: &MemorySnapshot) {
    let s = &capture.stats;
    eprintln!(
        "qprof: {} sampled allocations ({} distinct stacks) written to {} (default sample type inuse_space)",
        s.sampled,
        capture.stacks.len(),
        args.output.display()
    );
    eprintln!(
        "qprof: allocations: {} calls, {} requested (exact, counted in the kernel); estimated from samples: {} allocated, {} still in use",
        s.calls,
        human_bytes(s.bytes),
        human_bytes(capture.stacks.total(ALLOC_SPACE).max(0) as u64),
        human_bytes(capture.stacks.total(INUSE_SPACE).max(0) as u64),
    );
    eprintln!(
        "qprof: frees: {} ({} of sampled blocks; {} of untracked addresses ignored: not sampled, or allocated before the capture)",
        s.frees, s.frees_tracked, s.frees_untracked
    );
    if s.evicted > 0 {
        eprintln!(
            "qprof: live-sample table full: {} oldest sampled blocks evicted (not counted as in use: their frees could not be matched)",
            s.evicted
        );
    }
    if s.calls == 0 {
        eprintln!("qprof: no allocation was seen: the target did not allocate during the capture");
    } else if s.sampled == 0 {
        eprintln!(
            "qprof: no allocation was sampled: the target allocated less than --sample-bytes ({}) during the capture",
            args.sample_bytes
        );
    }
    for (pid, process) in &capture.usage {
        eprintln!("qprof: pid {pid}: {}", usage_line(process));
    }
    if !capture.drops.is_empty() {
        let lost: Vec<String> = capture
            .drops
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        eprintln!("qprof: degraded or lost: {}", lost.join(", "));
    }
}

fn usage_line(usage: &ProcessUsage) -> String {
    let series = |name: &str, s: &crate::aggregate::memory::Series| match (s.start, s.end, s.peak) {
        (Some(a), Some(b), Some(p)) => Some(format!(
            "{name} {} -> {} (peak {})",
            human_bytes(a),
            human_bytes(b),
            human_bytes(p)
        )),
        _ => None,
    };
    let mut parts: Vec<String> = [series("RSS", &usage.rss), series("PSS", &usage.pss)]
        .into_iter()
        .flatten()
        .collect();
    if parts.is_empty() {
        parts.push("memory usage not readable".to_owned());
    }
    if usage.gone {
        parts.push("exited during the capture".to_owned());
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes parse with binary suffixes; 0, garbage and absurd values are
    /// refused with a hint.
    #[test]
    fn sample_bytes() {
        assert_eq!(parse_sample_bytes("524288"), Ok(524_288));
        assert_eq!(parse_sample_bytes("512K"), Ok(524_288));
        assert_eq!(parse_sample_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_sample_bytes("1"), Ok(1));
        assert!(
            parse_sample_bytes("0")
                .expect_err("0")
                .contains("at least 1")
        );
        assert!(
            parse_sample_bytes("0K")
                .expect_err("0K")
                .contains("at least 1")
        );
        for bad in ["", "x", "-1", "1.5M", "12Q", "99999999999999999999"] {
            let err = parse_sample_bytes(bad).expect_err(bad);
            assert!(err.contains("invalid --sample-bytes"), "{bad}: {err}");
        }
        assert!(parse_sample_bytes("2048G").is_err());
    }
}
