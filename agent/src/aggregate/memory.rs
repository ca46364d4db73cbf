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

/// The four profile values (see [`SAMPLE_TYPES`]) of one stack and size:
/// `allocs` sampled allocations of `size` bytes during the window, and
/// `live` sampled blocks of that stack and size still in use at its end
/// (allocated in this window or any earlier one: in use is a state).
#[must_use]
pub fn scaled_values(size: u64, allocs: u64, live: u64, mean: u64) -> [i64; 4] {
    let w = weight(size, mean);
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

/// The kernel's exact counters (`MEM_STATS`) and what they imply: either
/// cumulative since the start (as read) or for one window ([`Self::since`]).
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
    /// Entries in the live map at the end (a state, never a difference).
    pub live_remaining: u64,
    /// Sampled blocks the LRU live map pushed out to make room: they no
    /// longer count as in use (their frees could not be matched, so
    /// counting them would make "in use" grow for ever in a program that
    /// churns through more live samples than the table holds).
    pub evicted: u64,
}

impl MemoryStats {
    /// Fills `evicted` of a cumulative reading: what was inserted and was
    /// neither freed, replaced nor is still there.
    #[must_use]
    pub fn with_evictions(mut self) -> Self {
        self.evicted = self
            .live_inserted
            .saturating_sub(self.frees_tracked)
            .saturating_sub(self.live_replaced)
            .saturating_sub(self.live_remaining);
        self
    }

    /// The window from `earlier` to `self`, two cumulative readings: every
    /// count is the difference, `live_remaining` stays the current state.
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        let d = |now: u64, then: u64| now.saturating_sub(then);
        Self {
            calls: d(self.calls, earlier.calls),
            bytes: d(self.bytes, earlier.bytes),
            sampled: d(self.sampled, earlier.sampled),
            failed: d(self.failed, earlier.failed),
            frees: d(self.frees, earlier.frees),
            frees_tracked: d(self.frees_tracked, earlier.frees_tracked),
            frees_untracked: d(self.frees_untracked, earlier.frees_untracked),
            live_inserted: d(self.live_inserted, earlier.live_inserted),
            live_replaced: d(self.live_replaced, earlier.live_replaced),
            nested: d(self.nested, earlier.nested),
            live_remaining: self.live_remaining,
            evicted: d(self.evicted, earlier.evicted),
        }
    }
}

/// Per-key counts the kernel only ever increments, turned into per-window
/// differences.
///
/// Why not read-and-reset: the kernel keeps counting while the agent reads,
/// and an increment landing between the read of a key and its reset would
/// be lost, on every busy key at every window. Instead the kernel's counts
/// are cumulative and never reset while the key is in use; a window is the
/// difference from the previous reading, so nothing is lost. Only keys
/// that did not change for a whole window are deleted from the kernel map
/// (to keep it from filling with stacks that stopped allocating); an
/// increment between that read and the delete is the one loss possible,
/// on a key idle for a window, and the next allocation of the key creates
/// it afresh.
#[derive(Debug)]
pub struct CumulativeCounts<K> {
    last: std::collections::HashMap<K, u64>,
}

impl<K> Default for CumulativeCounts<K> {
    fn default() -> Self {
        Self {
            last: std::collections::HashMap::new(),
        }
    }
}

/// One window of [`CumulativeCounts`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Window<K> {
    /// Keys that counted during the window, with how much.
    pub counted: Vec<(K, u64)>,
    /// Keys unchanged for the whole window: delete them from the kernel.
    pub idle: Vec<K>,
}

impl<K: Copy + Eq + std::hash::Hash> CumulativeCounts<K> {
    /// Takes this snapshot's reading of every key (cumulative values) and
    /// returns the window since the previous one. Keys reported idle are
    /// forgotten here, so that a key re-created later counts from zero.
    pub fn advance(&mut self, reading: impl IntoIterator<Item = (K, u64)>) -> Window<K> {
        let mut window = Window {
            counted: Vec::new(),
            idle: Vec::new(),
        };
        let mut now = std::collections::HashMap::new();
        for (key, total) in reading {
            let before = self.last.get(&key).copied();
            match before {
                Some(b) if b == total => window.idle.push(key),
                // Fewer than before: the key was deleted and re-created
                // between readings, so all of it is new.
                Some(b) if b < total => window.counted.push((key, total - b)),
                _ => window.counted.push((key, total)),
            }
            if before != Some(total) {
                now.insert(key, total);
            }
        }
        self.last = now;
        window
    }
}

/// Which stack ids a long-running capture may free after a snapshot.
///
/// Stacks are deduplicated by the kernel into ids; an id must stay as long
/// as a live block or a recent allocation refers to it. After each
/// snapshot the ids referred to by that snapshot (window allocations and
/// every live block) are kept; those referred to by the previous snapshot
/// but not this one, idle for a whole window, are freed. A sample taken
/// at that moment with a stack idle until then loses it (counted as a lost
/// stack lookup at the next snapshot): stacks in steady use are never
/// freed.
#[derive(Debug, Default)]
pub struct StackRetention {
    previous: std::collections::HashSet<i32>,
}

impl StackRetention {
    /// `used`: the stack ids this snapshot referred to. Returns the ids to
    /// free.
    pub fn advance(&mut self, used: std::collections::HashSet<i32>) -> Vec<i32> {
        let mut stale: Vec<i32> = self.previous.difference(&used).copied().collect();
        stale.sort_unstable();
        self.previous = used;
        stale
    }
}

/// Named counters the kernel only increments, as differences from an
/// earlier reading: the non-zero ones.
#[must_use]
pub fn counter_deltas(
    now: &[(&'static str, u64)],
    before: &[(&'static str, u64)],
) -> Vec<(&'static str, u64)> {
    now.iter()
        .filter_map(|&(name, value)| {
            let then = before
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |(_, v)| *v);
            let delta = value.saturating_sub(then);
            (delta > 0).then_some((name, delta))
        })
        .collect()
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
        let samples = expected_samples.round() as u64;
        let v = scaled_values(size, samples, samples, mean);
        let rel = |got: i64, want: u64| (got as f64 - want as f64).abs() / want as f64;
        assert!(rel(v[0], n) < 1e-3, "{v:?}");
        assert!(rel(v[1], n * size) < 1e-3, "{v:?}");
        assert_eq!(v[0], v[2]);
        assert_eq!(v[1], v[3]);
    }

    /// Allocations of the window and blocks still live are scaled apart:
    /// live blocks of earlier windows count with no allocation in this one.
    #[test]
    fn window_allocations_and_live_blocks_scale_apart() {
        let v = scaled_values(1 << 20, 10, 6, 1);
        assert_eq!(v, [10, 10 << 20, 6, 6 << 20]);
        let v = scaled_values(1 << 20, 0, 5, 1);
        assert_eq!(v, [0, 0, 5, 5 << 20]);
    }

    /// Windows of cumulative counts: the difference per key, nothing lost
    /// between readings, idle keys reported once and re-created keys
    /// counted from zero.
    #[test]
    fn cumulative_counts_become_windows() {
        let mut counts = CumulativeCounts::default();
        let w = counts.advance([(1, 5), (2, 3)]);
        assert_eq!(w.counted, vec![(1, 5), (2, 3)]);
        assert!(w.idle.is_empty());
        let w = counts.advance([(1, 9), (2, 3)]);
        assert_eq!((w.counted, w.idle), (vec![(1, 4)], vec![2]));
        // 2 was deleted by the caller, then allocated twice again.
        let w = counts.advance([(1, 9), (2, 2)]);
        assert_eq!((w.counted, w.idle), (vec![(2, 2)], vec![1]));
        // A key that went backwards was re-created: all of it is new.
        let w = counts.advance([(2, 1)]);
        assert_eq!(w.counted, vec![(2, 1)]);
    }

    /// Counter windows keep only what grew, by name.
    #[test]
    fn counter_windows() {
        let before = [("a", 5), ("b", 2)];
        let now = [("a", 5), ("b", 7), ("c", 1)];
        assert_eq!(counter_deltas(&now, &before), vec![("b", 5), ("c", 1)]);
    }

    /// A stack id is freed only after a whole snapshot without a use.
    #[test]
    fn stacks_are_freed_after_a_window_unused() {
        let mut keep = StackRetention::default();
        assert!(keep.advance([1, 2, 3].into()).is_empty());
        assert_eq!(keep.advance([1, 3].into()), vec![2]);
        assert_eq!(keep.advance([3].into()), vec![1]);
        assert!(keep.advance([3, 2].into()).is_empty());
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

    /// Evictions are what was inserted and neither freed, replaced nor
    /// left; a window's counts are differences but its live blocks a state.
    #[test]
    fn evictions_and_windows() {
        let before = MemoryStats {
            live_inserted: 100,
            frees_tracked: 30,
            live_replaced: 5,
            live_remaining: 40,
            calls: 1_000,
            ..MemoryStats::default()
        }
        .with_evictions();
        assert_eq!(before.evicted, 25);
        assert_eq!(MemoryStats::default().with_evictions().evicted, 0);
        let now = MemoryStats {
            live_inserted: 300,
            frees_tracked: 150,
            live_replaced: 5,
            live_remaining: 60,
            calls: 4_000,
            ..MemoryStats::default()
        }
        .with_evictions();
        let window = now.since(&before);
        assert_eq!(
            (window.calls, window.live_inserted, window.live_remaining),
            (3_000, 200, 60)
        );
        assert_eq!(window.evicted, 85 - 25);
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
