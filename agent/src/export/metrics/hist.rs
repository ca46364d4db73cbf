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

/// Query latency bounds, seconds. Ten per decade (1, 1.25, 1.5, 2, 2.5,
/// 3, 4, 5, 6, 8) from 10 µs to 10 ms, where OLTP statements live (a
/// loopback PostgreSQL point select takes ~50 µs, a LAN one a few hundred
/// µs): Prometheus's `histogram_quantile` interpolates linearly inside a
/// bucket, and its p99 stays within 20% of the truth only with buckets at
/// most ~1.33× wide (the 1-2-5 series errs by up to 50-80%; see
/// `p99_within_20_percent`). Sparser from 10 ms up to 10 s for reports and
/// batch jobs, and 5-8 µs for in-memory SQLite. 46 bounds: ~49 series per
/// fingerprint, which is why the default cap is 100 fingerprints.
pub const QUERY_BOUNDS: &[f64] = &[
    0.000_005,
    0.000_006,
    0.000_008, // in-memory SQLite
    0.000_01,
    0.000_012_5,
    0.000_015,
    0.000_02,
    0.000_025,
    0.000_03,
    0.000_04,
    0.000_05,
    0.000_06,
    0.000_08, // 10-80 µs
    0.000_1,
    0.000_125,
    0.000_15,
    0.000_2,
    0.000_25,
    0.000_3,
    0.000_4,
    0.000_5,
    0.000_6,
    0.000_8, // 100-800 µs
    0.001,
    0.001_25,
    0.001_5,
    0.002,
    0.002_5,
    0.003,
    0.004,
    0.005,
    0.006,
    0.008, // 1-8 ms
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
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

    /// Prometheus's `histogram_quantile`: linear interpolation inside the
    /// bucket holding the rank; the `+Inf` bucket answers the last bound.
    fn histogram_quantile(q: f64, h: &HistValue, bounds: &[f64]) -> f64 {
        let buckets = h.buckets(bounds);
        let rank = q * h.count() as f64;
        let mut below = 0u64;
        for (i, &(upper, c)) in buckets.iter().enumerate() {
            if (below + c) as f64 >= rank && c > 0 {
                if upper.is_infinite() {
                    return bounds[bounds.len() - 1];
                }
                let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
                return lower + (upper - lower) * (rank - below as f64) / c as f64;
            }
            below += c;
        }
        f64::NAN
    }

    /// The query bounds keep `histogram_quantile(0.99)` within 20% of the
    /// true p99 for exponential-tailed latencies (narrow to wide tails)
    /// with a floor anywhere from 10 µs to 5 ms: the acceptance the agent's
    /// end-to-end test checks against pgbench's own latency log.
    #[test]
    fn p99_within_20_percent() {
        let n = 10_000u32;
        for k in 0..60 {
            let floor = 10e-6 * 500f64.powf(f64::from(k) / 60.0);
            for tail in [0.2, 0.5, 1.0, 2.0] {
                let mut values: Vec<f64> = (0..n)
                    .map(|i| {
                        floor + floor * tail * -(1.0 - (f64::from(i) + 0.5) / f64::from(n)).ln()
                    })
                    .collect();
                values.sort_by(f64::total_cmp);
                let mut h = HistValue::default();
                for &v in &values {
                    h.add_n(QUERY_BOUNDS, v, 1);
                }
                let truth = values[(0.99 * f64::from(n)).ceil() as usize - 1];
                let got = histogram_quantile(0.99, &h, QUERY_BOUNDS);
                let err = (got - truth).abs() / truth;
                assert!(err < 0.2, "floor {floor} tail {tail}: {got} vs {truth}");
            }
        }
        assert!(QUERY_BOUNDS.windows(2).all(|w| w[0] < w[1]));
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
