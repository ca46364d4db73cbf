//! Cumulative Prometheus histograms fed from the agent's own histograms.
//!
//! The kernel and the query table keep latencies in fine log-linear buckets
//! (`qprof_common::hist`: 8 per octave; `FineHistogram`: 32 per octave).
//! Exporting those as they are would be ~250 series per histogram; Prometheus
//! gets a fixed, coarser set of bounds instead, and each source bucket's
//! count goes to the export bucket holding the source bucket's midpoint.
//! The error this adds to a `histogram_quantile` is at most half a source
//! bucket: 6% with the kernel's buckets, 1.6% with the query table's — small
//! beside the export buckets' own width, which dominates.

use qprof_common::hist::{bucket_high, bucket_low};

use crate::aggregate::{fine_histogram::FineHistogram, histogram::LogHistogram};

/// Query latency bounds, seconds. Dense where OLTP statements live (10 µs to
/// 10 ms: a loopback PostgreSQL point select takes ~50 µs, a LAN one a few
/// hundred µs) so that `histogram_quantile` interpolates within ±20% there,
/// sparser up to 10 s for reports and batch jobs. 26 bounds: with 200
/// fingerprints that is ~5,600 bucket series, the largest family.
pub const QUERY_BOUNDS: &[f64] = &[
    0.000_01, 0.000_02, 0.000_03, 0.000_05, 0.000_075, 0.000_1, 0.000_15, 0.000_2, 0.000_3,
    0.000_5, 0.000_75, 0.001, 0.002, 0.003, 0.005, 0.007_5, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Syscall latency bounds, seconds: 1-5 per decade from 500 ns (a cached
/// `read`) to 10 s (a blocking `poll` or `futex` wait). Coarser than the
/// query bounds because syscall series are many and their latency is a
/// sample in the default mode.
pub const SYSCALL_BOUNDS: &[f64] = &[
    0.000_000_5,
    0.000_001,
    0.000_005,
    0.000_01,
    0.000_05,
    0.000_1,
    0.000_5,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
];

/// Smoothed RTT bounds, seconds: loopback (4-32 µs) through LAN (0.1-1 ms)
/// to intercontinental (100-300 ms), 1-2.5-5 per decade.
pub const TCP_RTT_BOUNDS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Connect (SYN to ESTABLISHED) bounds, seconds: the RTT bounds plus the
/// SYN retransmission steps (1 s, 3 s, 7 s after the first SYN).
pub const TCP_CONNECT_BOUNDS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counts per bound (non-cumulative; the last slot is `+Inf`), sum and
/// count, accumulated over the agent's life: Prometheus wants monotonic
/// series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistValue {
    counts: Vec<u64>,
    sum: f64,
}

impl HistValue {
    /// Adds `n` observations of `value` (seconds).
    pub fn add_n(&mut self, bounds: &[f64], value: f64, n: u64) {
        if n == 0 {
            return;
        }
        if self.counts.len() != bounds.len() + 1 {
            self.counts.resize(bounds.len() + 1, 0);
        }
        // `le` is inclusive: the first bound >= value.
        let i = bounds.partition_point(|&b| b < value);
        self.counts[i] += n;
    }

    /// Adds to the sum (seconds).
    pub fn add_sum(&mut self, seconds: f64) {
        self.sum += seconds;
    }

    /// Every observation of `other` (same bounds).
    pub fn merge(&mut self, other: &HistValue) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
    }

    #[must_use]
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    #[must_use]
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// (upper bound, non-cumulative count) pairs ending with `+Inf`, as
    /// `prometheus_client`'s `encode_histogram` takes them.
    #[must_use]
    pub fn buckets(&self, bounds: &[f64]) -> Vec<(f64, u64)> {
        bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .enumerate()
            .map(|(i, b)| (b, self.counts.get(i).copied().unwrap_or(0)))
            .collect()
    }

    /// Adds a kernel-bucketed histogram whose values are `unit` seconds
    /// each (1e-9 for ns, 1e-6 for µs). `sum` is the exact sum in the same
    /// unit when the source has one for exactly these observations; without
    /// it the sum is estimated from bucket midpoints.
    pub fn add_log(&mut self, bounds: &[f64], h: &LogHistogram, unit: f64, sum: Option<u64>) {
        let mut estimate = 0.0;
        for (i, &c) in h.bucket_counts().iter().enumerate() {
            if c == 0 {
                continue;
            }
            let (lo, hi) = (bucket_low(i), bucket_high(i));
            let mut mid = if hi == u64::MAX {
                lo
            } else {
                lo + (hi - lo) / 2
            };
            if h.max() > 0 {
                mid = mid.min(h.max()).max(lo);
            }
            let v = mid as f64 * unit;
            self.add_n(bounds, v, c);
            estimate += v * c as f64;
        }
        self.add_sum(sum.map_or(estimate, |s| s as f64 * unit));
    }

    /// Adds a query-table histogram of nanoseconds (its sum is exact).
    pub fn add_fine(&mut self, bounds: &[f64], h: &FineHistogram) {
        for (low, width, c) in h.buckets() {
            let mid = (low + (width - 1) / 2).clamp(h.min(), h.max());
            self.add_n(bounds, mid as f64 * 1e-9, c);
        }
        self.add_sum(h.sum() as f64 * 1e-9);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Observations land in the first bucket whose bound is >= the value
    /// (`le` is inclusive), values past the last bound land in `+Inf`.
    #[test]
    fn le_is_inclusive() {
        let bounds = [0.001, 0.01];
        let mut h = HistValue::default();
        h.add_n(&bounds, 0.001, 2);
        h.add_n(&bounds, 0.001_000_1, 3);
        h.add_n(&bounds, 5.0, 1);
        h.add_n(&bounds, 0.0, 0);
        assert_eq!(
            h.buckets(&bounds),
            vec![(0.001, 2), (0.01, 3), (f64::INFINITY, 1)]
        );
        assert_eq!(h.count(), 6);
        assert_eq!(HistValue::default().buckets(&bounds)[2], (f64::INFINITY, 0));
    }

    /// Re-bucketing a kernel histogram and a query-table histogram puts
    /// every observation within one export bucket of where its true value
    /// belongs, keeps the count, and takes the exact sum when given.
    #[test]
    fn rebuckets_sources() {
        let values_ns: Vec<u64> = (1..=2_000u64).map(|i| i * 997).collect(); // ~1 µs .. 2 ms
        let mut log = LogHistogram::default();
        let mut fine = FineHistogram::new();
        let mut truth = HistValue::default();
        for &v in &values_ns {
            log.record(v);
            fine.record(v);
            truth.add_n(QUERY_BOUNDS, v as f64 * 1e-9, 1);
        }
        let exact: u64 = values_ns.iter().sum();
        let (mut a, mut b) = (HistValue::default(), HistValue::default());
        a.add_log(QUERY_BOUNDS, &log, 1e-9, Some(exact));
        b.add_fine(QUERY_BOUNDS, &fine);
        for got in [&a, &b] {
            assert_eq!(got.count(), 2_000);
            assert!((got.sum() - exact as f64 * 1e-9).abs() < 1e-9);
            let cum = |h: &HistValue| {
                h.buckets(QUERY_BOUNDS)
                    .iter()
                    .scan(0, |acc, &(_, c)| {
                        *acc += c;
                        Some(*acc)
                    })
                    .collect::<Vec<u64>>()
            };
            for (g, t) in cum(got).iter().zip(cum(&truth)) {
                // A source bucket straddling a bound moves at most its own
                // count across it: 12.5% of an octave of uniform values.
                assert!(g.abs_diff(t) <= t / 8 + 2, "{g} vs {t}");
            }
        }
        // The fine table's narrower buckets are closer to the truth.
        let err = |h: &HistValue| {
            h.buckets(QUERY_BOUNDS)
                .iter()
                .zip(truth.buckets(QUERY_BOUNDS))
                .map(|(x, y)| x.1.abs_diff(y.1))
                .sum::<u64>()
        };
        assert!(err(&b) <= err(&a), "{} > {}", err(&b), err(&a));
        let mut est = HistValue::default();
        est.add_log(QUERY_BOUNDS, &log, 1e-9, None);
        let rel = (est.sum() - exact as f64 * 1e-9).abs() / (exact as f64 * 1e-9);
        assert!(rel < 0.03, "midpoint sum estimate off by {rel}");
    }
}
