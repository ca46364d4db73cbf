//! The symbolizer's caches: a window symbolized twice costs the second
//! time only cache lookups.

use std::time::{Duration, Instant};

use super::{ProfileShape, Symbolizer};
use crate::{
    aggregate::stacks::{RawStack, StackCounts},
    probes::process_maps::ProcessMaps,
};

fn shape() -> ProfileShape {
    let count = profiles::ValueType {
        r#type: "samples".into(),
        unit: "count".into(),
    };
    ProfileShape {
        sample_types: vec![count.clone()],
        period_type: count,
        period: 1,
        time_nanos: 0,
        duration_nanos: 0,
    }
}

/// A window of `stacks` stacks of this very process, `depth` frames each,
/// drawn from `distinct` addresses spread over the text of every
/// executable file it maps (this test binary, with debug info, and libc):
/// real files, real symbols.
fn own_window(stacks: usize, depth: usize, distinct: u64) -> (StackCounts, ProcessMaps) {
    let pid = std::process::id();
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("own maps");
    let entries: Vec<_> = crate::probes::process_maps::parse(&text)
        .into_iter()
        .filter(crate::probes::process_maps::MapEntry::is_file)
        .collect();
    let mut maps = ProcessMaps::default();
    maps.merge(pid, entries.clone());
    let mut counts = StackCounts::default();
    let mut n = 0u64;
    for s in 0..stacks {
        let user = (0..depth)
            .map(|d| {
                n = n
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let pick = (n >> 11) % distinct;
                let e = &entries[(pick as usize + s + d) % entries.len()];
                // The same pick is the same address in the same file.
                e.start + pick.wrapping_mul(2_654_435_761) % (e.end - e.start)
            })
            .collect();
        counts.add(RawStack {
            pid,
            tid: pid,
            comm: "self".into(),
            user,
            kernel: Vec::new(),
            values: vec![1],
            labels: Vec::new(),
        });
    }
    (counts, maps)
}

/// Symbolizing the same window twice gives the same profile, and the
/// second time every frame is a cache hit (no file is read again).
#[test]
fn second_window_is_served_from_the_cache() {
    let (stacks, maps) = own_window(500, 16, u64::MAX);
    let mut symbolizer = Symbolizer::new();
    let started = Instant::now();
    let first = symbolizer.build_profile(&stacks, &maps, &shape());
    let cold = started.elapsed();
    let after_first = symbolizer.stats();
    let started = Instant::now();
    let second = symbolizer.build_profile(&stacks, &maps, &shape());
    let warm = started.elapsed();
    let after_second = symbolizer.stats();
    eprintln!("cold {cold:?}, warm {warm:?}: {after_second:?}");
    assert_eq!(first, second);
    assert!(
        first
            .samples
            .iter()
            .flat_map(|s| &s.stack)
            .any(|l| !l.lines.is_empty()),
        "nothing was symbolized"
    );
    assert!(after_first.frame_misses > 1_000, "{after_first:?}");
    assert_eq!(after_second.frame_misses, after_first.frame_misses);
    assert_eq!(
        after_second.frame_hits - after_first.frame_hits,
        after_first.frame_misses + after_first.frame_hits
    );
}

/// Figures for BENCHMARKS.md: cold (new symbolizer) vs warm (same one)
/// symbolization of one window, median of 5. Run with
/// `cargo test --release -p qprof --lib symbolize_window_cold_vs_warm -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark: prints figures, asserts nothing about time"]
fn symbolize_window_cold_vs_warm() {
    let (stacks, maps) = own_window(2_000, 24, 4_000);
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..5 {
        let mut symbolizer = Symbolizer::new();
        let t = Instant::now();
        let first = symbolizer.build_profile(&stacks, &maps, &shape());
        cold.push(t.elapsed());
        let t = Instant::now();
        let second = symbolizer.build_profile(&stacks, &maps, &shape());
        warm.push(t.elapsed());
        drop((first, second));
    }
    let (cold, warm) = (median(cold), median(warm));
    eprintln!(
        "window of {} stacks x 24 frames: cold {cold:?}, warm {warm:?} ({:.1}x)",
        stacks.len(),
        cold.as_secs_f64() / warm.as_secs_f64()
    );
}
