//! Memory profiles from byte-sampled allocations: the sampling intervals the
//! kernel draws from, undoing the sampling, and the exact counters and
//! memory-usage series reported beside the profile. Pure, so tested
//! without a kernel.
//!
//! The kernel samples like tcmalloc: sample points form a Poisson process
//! over the stream of allocated bytes with mean one per `mean` bytes, and
//! an allocation is recorded when a point falls inside it, which happens
//! with probability `1 - exp(-size/mean)`. Each recorded allocation of
//! `size` bytes therefore stands for `1 / (1 - exp(-size/mean))`
//! allocations; the kernel keys its counts by size so this is exact.

/// The pprof sample types, Go's names and order, so that `go tool pprof
/// -sample_index=inuse_space` and Pyroscope read them as a Go heap profile.
pub const SAMPLE_TYPES: [(&str, &str); 4] = [
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
];
/// Index of `alloc_space` in [`SAMPLE_TYPES`].
pub const ALLOC_SPACE: usize = 1;
/// Index of `inuse_space` in [`SAMPLE_TYPES`] (the default, as in Go).
pub const INUSE_SPACE: usize = 3;

/// Probability that an allocation of `size` bytes is sampled.
#[must_use]
pub fn sample_probability(size: u64, mean: u64) -> f64 {
    if size == 0 || mean == 0 {
        return if size == 0 { 0.0 } else { 1.0 };
    }
    // 1 - exp(-x) without the cancellation for small x.
    -(-(size as f64) / mean as f64).exp_m1()
}

/// How many allocations one sampled allocation of `size` bytes stands for.
#[must_use]
pub fn weight(size: u64, mean: u64) -> f64 {
    let p = sample_probability(size, mean);
    if p > 0.0 { 1.0 / p } else { 0.0 }
}

/// The four profile values (see [`SAMPLE_TYPES`]) of `allocs` sampled
/// allocations of `size` bytes from one stack, `frees` of which were freed
/// during the capture.
#[must_use]
pub fn scaled_values(size: u64, allocs: u64, frees: u64, mean: u64) -> [i64; 4] {
    let w = weight(size, mean);
    let live = allocs.saturating_sub(frees);
    let objects = |n: u64| (n as f64 * w).round() as i64;
    let bytes = |n: u64| (n as f64 * w * size as f64).round() as i64;
    [objects(allocs), bytes(allocs), objects(live), bytes(live)]
}

/// `slots` exponential intervals with mean `mean` bytes for the kernel's
/// countdown (it has no floating point). Slot `i` holds the mean of the
/// exponential distribution over its quantile stratum `[i/n, (i+1)/n)`, so
/// a uniformly chosen slot has exactly the mean `mean` and the table's
/// quantiles are exact to `1/n`. Every interval is at least one byte.
#[must_use]
pub fn exponential_intervals(mean: u64, slots: usize) -> Vec<u64> {
    // H(u) = integral of -ln(1 - t) over [0, u] = (1 - u) ln(1 - u) + u.
    let h = |u: f64| {
        let rest = 1.0 - u;
        if rest <= 0.0 {
            1.0
        } else {
            rest * rest.ln() + u
        }
    };
    let n = slots as f64;
    (0..slots)
        .map(|i| {
            let (a, b) = (i as f64 / n, (i + 1) as f64 / n);
            let stratum_mean = (h(b) - h(a)) * n;
            ((stratum_mean * mean as f64).round() as u64).max(1)
        })
        .collect()
}

/// The kernel's exact counters (`MEM_STATS`) and what they imply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub calls: u64,
    pub bytes: u64,
    pub sampled: u64,
    pub failed: u64,
    pub frees: u64,
    pub frees_tracked: u64,
    pub frees_untracked: u64,
    pub live_inserted: u64,
    pub live_replaced: u64,
    pub nested: u64,
    /// Entries left in the live map at the end.
    pub live_remaining: u64,
}

impl MemoryStats {
    /// Sampled blocks the LRU live map pushed out to make room (each still
    /// counts as in use: its free can no longer be matched).
    #[must_use]
    pub fn evicted(&self) -> u64 {
        self.live_inserted
            .saturating_sub(self.frees_tracked)
            .saturating_sub(self.live_replaced)
            .saturating_sub(self.live_remaining)
    }
}

/// First, last and largest of a series of readings (e.g. a process's RSS
/// once a second).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Series {
    pub start: Option<u64>,
    pub end: Option<u64>,
    pub peak: Option<u64>,
    pub readings: u64,
}

impl Series {
    pub fn add(&mut self, value: u64) {
        self.start.get_or_insert(value);
        self.end = Some(value);
        self.peak = Some(self.peak.map_or(value, |p| p.max(value)));
        self.readings += 1;
    }
}

/// 512 B, 1.5 KiB, 12.3 MiB, 2.00 GiB: three significant digits at most.
#[must_use]
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let digits = usize::from(value < 10.0) + usize::from(value < 100.0);
    format!("{value:.digits$} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small allocations are sampled with probability ~size/mean, huge
    /// ones always; zero-byte ones never.
    #[test]
    fn probabilities() {
        let mean = 524_288;
        let p = sample_probability(64, mean);
        assert!((p / (64.0 / 524_288.0) - 1.0).abs() < 1e-3, "{p}");
        assert!((sample_probability(mean, mean) - (1.0 - (-1.0f64).exp())).abs() < 1e-12);
        assert!(sample_probability(100 * mean, mean) > 0.999_999);
        assert!(sample_probability(0, mean).abs() < f64::EPSILON);
        assert!(weight(0, mean).abs() < f64::EPSILON);
    }

    /// Scaling makes the expected estimate equal the truth: n allocations
    /// of size s, each sampled with probability p, give n*p samples, which
    /// scale back to n objects and n*s bytes.
    #[test]
    fn scaling_is_unbiased_in_expectation() {
        let (mean, size, n) = (524_288_u64, 4_096_u64, 1_000_000_u64);
        let expected_samples = n as f64 * sample_probability(size, mean);
        let v = scaled_values(size, expected_samples.round() as u64, 0, mean);
        let rel = |got: i64, want: u64| (got as f64 - want as f64).abs() / want as f64;
        assert!(rel(v[0], n) < 1e-3, "{v:?}");
        assert!(rel(v[1], n * size) < 1e-3, "{v:?}");
        assert_eq!(v[0], v[2]);
        assert_eq!(v[1], v[3]);
    }

    /// Frees leave "in use"; more frees than allocs never go negative.
    #[test]
    fn frees_reduce_in_use() {
        let v = scaled_values(1 << 20, 10, 4, 1);
        assert_eq!(v, [10, 10 << 20, 6, 6 << 20]);
        let v = scaled_values(1 << 20, 1, 5, 1);
        assert_eq!(&v[2..], [0, 0]);
    }

    /// The interval table has the requested mean and an exponential's
    /// median (mean * ln 2).
    #[test]
    fn intervals_are_exponential() {
        let mean = 524_288;
        let table = exponential_intervals(mean, 16_384);
        let avg = table.iter().sum::<u64>() as f64 / table.len() as f64;
        assert!((avg / mean as f64 - 1.0).abs() < 1e-4, "mean {avg}");
        let median = table[table.len() / 2] as f64;
        assert!(
            (median / (mean as f64 * 2f64.ln()) - 1.0).abs() < 1e-3,
            "median {median}"
        );
        assert!(table.windows(2).all(|w| w[0] <= w[1]));
        assert!(exponential_intervals(1, 64).iter().all(|&v| v >= 1));
    }

    /// Simulating the kernel's countdown over a stream of allocations and
    /// scaling the samples recovers the bytes allocated (to a few percent).
    #[test]
    fn countdown_simulation_recovers_totals() {
        let mean = 65_536;
        let table = exponential_intervals(mean, 16_384);
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (mut left, mut truth, mut estimate) = (0u64, 0u64, 0f64);
        for i in 0..400_000u64 {
            let size = 16 + (i * 7_919) % 8_192;
            truth += size;
            if left == 0 {
                left = table[(next() % 16_384) as usize];
            }
            if size >= left {
                left = table[(next() % 16_384) as usize];
                estimate += scaled_values(size, 1, 0, mean)[1] as f64;
            } else {
                left -= size;
            }
        }
        let err = (estimate / truth as f64 - 1.0).abs();
        assert!(err < 0.05, "estimate {estimate} vs {truth} ({err})");
    }

    /// Evictions are what was inserted and neither freed, replaced nor left.
    #[test]
    fn evictions() {
        let stats = MemoryStats {
            live_inserted: 100,
            frees_tracked: 30,
            live_replaced: 5,
            live_remaining: 40,
            ..MemoryStats::default()
        };
        assert_eq!(stats.evicted(), 25);
        assert_eq!(MemoryStats::default().evicted(), 0);
    }

    /// Series keep first, last and peak.
    #[test]
    fn series() {
        let mut s = Series::default();
        for v in [5, 9, 7] {
            s.add(v);
        }
        assert_eq!(
            (s.start, s.end, s.peak, s.readings),
            (Some(5), Some(7), Some(9), 3)
        );
    }

    /// Byte counts read naturally.
    #[test]
    fn bytes_read_naturally() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(12_900_000), "12.3 MiB");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
    }
}
