//! Latency histograms on the kernel's log-linear buckets
//! (`qprof_common::hist`): merge, count, percentiles.

use qprof_common::hist::{BUCKETS, bucket_high, bucket_low};

/// Counts per bucket plus the exact maximum (the kernel tracks it), which
/// bounds the top percentile estimates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHistogram {
    buckets: Vec<u64>,
    max: u64,
}

impl Default for LogHistogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; BUCKETS],
            max: 0,
        }
    }
}

impl LogHistogram {
    /// Adds counts bucket by bucket (e.g. one CPU's slot of a per-CPU map).
    pub fn add_buckets<T: Copy + Into<u64>>(&mut self, counts: &[T]) {
        for (slot, &c) in self.buckets.iter_mut().zip(counts) {
            *slot += c.into();
        }
    }

    /// Records one value (used by tests and userspace-side aggregation).
    pub fn record(&mut self, value: u64) {
        self.buckets[qprof_common::hist::bucket_of(value)] += 1;
        self.max = self.max.max(value);
    }

    pub fn observe_max(&mut self, max: u64) {
        self.max = self.max.max(max);
    }

    pub fn merge(&mut self, other: &LogHistogram) {
        self.add_buckets(&other.buckets);
        self.max = self.max.max(other.max);
    }

    #[must_use]
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    #[must_use]
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Counts per bucket of `qprof_common::hist` (index = bucket), for
    /// exporters that re-bucket (the Prometheus histograms).
    #[must_use]
    pub fn bucket_counts(&self) -> &[u64] {
        &self.buckets
    }

    /// The value below which `q` (0..=1) of the observations fall: the
    /// midpoint of the bucket holding that rank, never above the maximum.
    #[must_use]
    pub fn percentile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = (bucket_low(i), bucket_high(i));
                let mid = if hi == u64::MAX {
                    lo
                } else {
                    lo + (hi - lo) / 2
                };
                return if self.max > 0 { mid.min(self.max) } else { mid };
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Percentiles of a known distribution are within 7% of the truth.
    #[test]
    fn percentiles_are_accurate() {
        let mut h = LogHistogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1_000);
        }
        for (q, truth) in [(0.5, 5_000_000.0), (0.95, 9_500_000.0), (0.99, 9_900_000.0)] {
            let got = h.percentile(q) as f64;
            assert!(
                (got - truth).abs() / truth < 0.07,
                "q={q}: {got} vs {truth}"
            );
        }
        assert_eq!(h.max(), 10_000_000);
        assert_eq!(h.count(), 10_000);
    }

    /// An empty histogram reports zeros; merging adds counts and maxima.
    #[test]
    fn empty_and_merge() {
        let mut a = LogHistogram::default();
        assert_eq!(a.percentile(0.99), 0);
        let mut b = LogHistogram::default();
        b.record(100);
        b.record(300);
        a.record(5);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.max(), 300);
        assert_eq!(a.percentile(0.0), 5);
    }
}
