//! Per (process, syscall) statistics: the values `record syscalls` prints
//! and the agent daemon will export as histograms.
//!
//! Calls and errors are always exact. Latency comes from the *timed* calls:
//! every call in full mode, a sample in the counts mode (about 1 in 64, see
//! `qprof_common::syscalls::DEFAULT_SAMPLE_EVERY`). Percentiles and the
//! maximum are those of the timed calls; `total_ns` is scaled back to all
//! calls as `timed total x calls / timed calls` (exact when every call was
//! timed, 0 when none was).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{
    histogram::LogHistogram,
    names::{errno_name, syscall_name},
};

/// One (pid, syscall) aggregate.
#[derive(Debug, Clone, Default)]
pub struct SyscallStats {
    pub comm: String,
    pub calls: u64,
    pub errors: u64,
    /// errno name -> count.
    pub errnos: BTreeMap<String, u64>,
    /// Calls whose latency was measured (all of them in full mode).
    pub timed_calls: u64,
    /// Sum of the timed calls' latencies.
    pub timed_ns: u64,
    /// Latencies of the timed calls, in nanoseconds.
    pub latency: LogHistogram,
}

impl SyscallStats {
    /// Total time of all calls, estimated from the timed ones.
    #[must_use]
    pub fn total_ns(&self) -> u64 {
        if self.timed_calls == 0 || self.timed_calls >= self.calls {
            return self.timed_ns;
        }
        let scaled =
            u128::from(self.timed_ns) * u128::from(self.calls) / u128::from(self.timed_calls);
        u64::try_from(scaled).unwrap_or(u64::MAX)
    }
}

/// Every (pid, syscall number) seen in a capture.
#[derive(Debug, Default)]
pub struct SyscallTable {
    pub entries: HashMap<(u32, u32), SyscallStats>,
    /// Pairs or errnos the kernel could not keep, by reason.
    pub drops: Vec<(&'static str, u64)>,
}

/// One row of the report; the JSON field names are a public interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyscallRow {
    pub pid: u32,
    pub comm: String,
    pub syscall: String,
    pub calls: u64,
    pub errors: BTreeMap<String, u64>,
    /// Calls behind the latency figures (= `calls` when every call was timed).
    pub timed_calls: u64,
    pub total_ns: u64,
    pub p50_ns: u64,
    pub p95_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

impl SyscallTable {
    /// Adds one CPU's (or one source's) statistics for `(pid, nr)` where
    /// every call was timed (full mode).
    #[expect(
        clippy::too_many_arguments,
        reason = "one per field of the kernel's per-CPU value"
    )]
    pub fn add(
        &mut self,
        pid: u32,
        nr: u32,
        calls: u64,
        errors: u64,
        total_ns: u64,
        max_ns: u64,
        buckets: &[u32],
    ) {
        self.add_counts(pid, nr, calls, errors);
        self.add_timed(pid, nr, calls, total_ns, max_ns, buckets);
    }

    /// Adds exact call and error counts (counts mode).
    pub fn add_counts(&mut self, pid: u32, nr: u32, calls: u64, errors: u64) {
        let entry = self.entries.entry((pid, nr)).or_default();
        entry.calls += calls;
        entry.errors += errors;
    }

    /// Adds the latencies of `timed` calls (a sample in counts mode).
    pub fn add_timed(
        &mut self,
        pid: u32,
        nr: u32,
        timed: u64,
        total_ns: u64,
        max_ns: u64,
        buckets: &[u32],
    ) {
        let entry = self.entries.entry((pid, nr)).or_default();
        entry.timed_calls += timed;
        entry.timed_ns += total_ns;
        entry.latency.add_buckets(buckets);
        entry.latency.observe_max(max_ns);
    }

    /// Adds an errno count to an existing or new pair.
    pub fn add_errno(&mut self, pid: u32, nr: u32, errno: u32, count: u64) {
        let entry = self.entries.entry((pid, nr)).or_default();
        *entry.errnos.entry(errno_name(errno)).or_default() += count;
    }

    /// Fills in process names (pid -> comm).
    pub fn set_comms(&mut self, comm_of: impl Fn(u32) -> String) {
        for ((pid, _), stats) in &mut self.entries {
            if stats.comm.is_empty() {
                stats.comm = comm_of(*pid);
            }
        }
    }

    /// All rows with at least one call, by total time, largest first (ties:
    /// by calls, then pid and name, so the order is stable).
    #[must_use]
    pub fn rows(&self) -> Vec<SyscallRow> {
        let mut rows: Vec<SyscallRow> = self
            .entries
            .iter()
            .filter(|(_, s)| s.calls > 0)
            .map(|(&(pid, nr), s)| SyscallRow {
                pid,
                comm: s.comm.clone(),
                syscall: syscall_name(nr),
                calls: s.calls,
                errors: s.errnos.clone(),
                timed_calls: s.timed_calls,
                total_ns: s.total_ns(),
                p50_ns: s.latency.percentile(0.50),
                p95_ns: s.latency.percentile(0.95),
                p99_ns: s.latency.percentile(0.99),
                max_ns: s.latency.max(),
            })
            .collect();
        rows.sort_by(|a, b| {
            b.total_ns
                .cmp(&a.total_ns)
                .then(b.calls.cmp(&a.calls))
                .then(a.pid.cmp(&b.pid))
                .then(a.syscall.cmp(&b.syscall))
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qprof_common::hist::{BUCKETS, bucket_of};

    fn buckets_of(values: &[u64]) -> Vec<u32> {
        let mut b = vec![0u32; BUCKETS];
        for &v in values {
            b[bucket_of(v)] += 1;
        }
        b
    }

    /// Per-CPU parts merge into one row with summed counts and errno names.
    #[test]
    fn merges_cpus_and_names_errnos() {
        let mut t = SyscallTable::default();
        t.add(7, 257, 2, 1, 300, 200, &buckets_of(&[100, 200]));
        t.add(7, 257, 1, 1, 1_000, 1_000, &buckets_of(&[1_000]));
        t.add_errno(7, 257, 2, 2);
        t.set_comms(|_| "cat".to_owned());
        let rows = t.rows();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(
            (r.pid, r.comm.as_str(), r.syscall.as_str()),
            (7, "cat", "openat")
        );
        assert_eq!((r.calls, r.total_ns, r.max_ns), (3, 1_300, 1_000));
        assert_eq!(r.errors.get("ENOENT"), Some(&2));
        assert!(r.p50_ns >= 180 && r.p50_ns <= 220, "p50 {}", r.p50_ns);
    }

    /// Rows sort by total time, and the JSON has exactly the documented fields.
    #[test]
    fn sorted_by_total_and_json_shape() {
        let mut t = SyscallTable::default();
        t.add(1, 0, 10, 0, 50, 10, &buckets_of(&[5; 10]));
        t.add(1, 1, 1, 0, 900, 900, &buckets_of(&[900]));
        let rows = t.rows();
        assert_eq!(rows[0].syscall, "write");
        let json = serde_json::to_value(&rows[0]).expect("json");
        let mut keys: Vec<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "calls",
                "comm",
                "errors",
                "max_ns",
                "p50_ns",
                "p95_ns",
                "p99_ns",
                "pid",
                "syscall",
                "timed_calls",
                "total_ns"
            ]
        );
    }

    /// Counts mode: calls stay exact, the sampled time is scaled back to all
    /// calls, and percentiles come from the sample alone.
    #[test]
    fn sampled_latency_scales_total_not_counts() {
        let mut t = SyscallTable::default();
        t.add_counts(3, 39, 6_400, 0);
        t.add_timed(3, 39, 100, 100 * 250, 900, &buckets_of(&[250; 100]));
        t.add_counts(3, 2, 10, 4);
        t.add_errno(3, 2, 2, 4);
        let rows = t.rows();
        let getpid = rows.iter().find(|r| r.syscall == "getpid").expect("getpid");
        assert_eq!((getpid.calls, getpid.timed_calls), (6_400, 100));
        assert_eq!(getpid.total_ns, 6_400 * 250);
        assert!((230..=270).contains(&getpid.p50_ns), "{}", getpid.p50_ns);
        assert_eq!(getpid.max_ns, 900);
        // Failed opens that no sample timed: exact counts, no invented time.
        let open = rows.iter().find(|r| r.syscall == "open").expect("open");
        assert_eq!((open.calls, open.timed_calls, open.total_ns), (10, 0, 0));
        assert_eq!(open.errors.get("ENOENT"), Some(&4));
    }
}
