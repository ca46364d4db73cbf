//! Log-linear latency histogram buckets, shared so that the kernel and the
//! agent agree on bucket bounds by construction.
//!
//! Values below 16 get a bucket each; above, every power of two is split into
//! 8 linear sub-buckets, so a bucket is at most 12.5% wide and its midpoint
//! is within ~6.3% of any value in it: good enough for a p99 within 10%.
//! Values at or above 2^36 (68.7 s in ns) share the last bucket.

/// Sub-buckets per power of two (a power of two itself).
pub const SUB_BUCKETS: u32 = 8;
const SUB_BITS: u32 = 3;
/// Values below this are exact.
pub const LINEAR_LIMIT: u64 = 16;
/// Highest power of two with its own buckets (exclusive).
pub const MAX_POW: u32 = 36;
/// Total buckets.
pub const BUCKETS: usize = LINEAR_LIMIT as usize + ((MAX_POW - 4) * SUB_BUCKETS) as usize;

/// Bucket index of `value`. Branch-light and loop-free so that it verifies
/// in BPF (`leading_zeros` lowers to bit operations).
#[expect(
    clippy::inline_always,
    reason = "called from BPF programs, where it must be inlined"
)]
#[inline(always)]
#[must_use]
pub const fn bucket_of(value: u64) -> usize {
    if value < LINEAR_LIMIT {
        return value as usize;
    }
    let pow = value.ilog2();
    if pow >= MAX_POW {
        return BUCKETS - 1;
    }
    let sub = ((value >> (pow - SUB_BITS)) & (SUB_BUCKETS as u64 - 1)) as usize;
    LINEAR_LIMIT as usize + ((pow - 4) * SUB_BUCKETS) as usize + sub
}

/// Smallest value that falls in bucket `index`.
#[must_use]
pub const fn bucket_low(index: usize) -> u64 {
    if index < LINEAR_LIMIT as usize {
        return index as u64;
    }
    let rel = index - LINEAR_LIMIT as usize;
    let pow = (rel / SUB_BUCKETS as usize) as u32 + 4;
    let sub = (rel % SUB_BUCKETS as usize) as u64;
    (1u64 << pow) + (sub << (pow - SUB_BITS))
}

/// Largest value that falls in bucket `index` (the last is open-ended).
#[must_use]
pub const fn bucket_high(index: usize) -> u64 {
    if index + 1 >= BUCKETS {
        u64::MAX
    } else {
        bucket_low(index + 1) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value lands in the bucket whose bounds contain it, across the
    /// whole range, and buckets are contiguous.
    #[test]
    fn bounds_are_consistent() {
        let mut v = 0u64;
        while v < (1u64 << 40) {
            let b = bucket_of(v);
            assert!(b < BUCKETS);
            if b < BUCKETS - 1 {
                assert!(bucket_low(b) <= v && v <= bucket_high(b), "v={v} b={b}");
            }
            v = v * 5 / 4 + 1;
        }
        for b in 0..BUCKETS - 1 {
            assert_eq!(bucket_high(b) + 1, bucket_low(b + 1));
        }
    }

    /// Buckets are at most 12.5% wide above the linear range.
    #[test]
    fn relative_width_is_bounded() {
        for b in LINEAR_LIMIT as usize..BUCKETS - 1 {
            let (lo, hi) = (bucket_low(b) as f64, bucket_high(b) as f64);
            assert!(
                (hi - lo + 1.0) / lo <= 0.125 + 1e-9,
                "bucket {b}: {lo}..{hi}"
            );
        }
    }
}
