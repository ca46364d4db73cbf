//! Per-statement query statistics: one entry per (database kind,
//! fingerprint), in a table of bounded size that evicts the least used.
//!
//! Only normalized text ([`Normalized`]) enters the table: raw query text
//! with its literals is never stored here.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::fine_histogram::FineHistogram;
use super::fingerprint::{Normalized, id_hex};

/// Statements a table holds by default. 10,000 covers the distinct
/// statements of any sane application many times over, and at ~2 KB each
/// (text up to the 1–4 KB capture, a latency histogram of a few hundred
/// bytes) stays around 20 MB: inside the 64 MB agent budget.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// Pids kept per statement: enough to name every client of a connection
/// pool; the calls of any further pid are only counted.
pub const MAX_PIDS: usize = 64;

/// The database a statement was sent to (by the client library traced).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Db {
    Postgres,
    Sqlite,
}

impl Db {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Db::Postgres => "postgres",
            Db::Sqlite => "sqlite",
        }
    }
}

impl fmt::Display for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything known about one statement.
#[derive(Debug, Clone)]
pub struct QueryStats {
    /// Normalized text (ends with the truncation marker if cut).
    pub text: String,
    pub calls: u64,
    pub errors: u64,
    /// Rows returned or changed, summed over the calls that reported them;
    /// `None` if none did.
    pub rows: Option<u64>,
    /// Sum of latencies, nanoseconds (saturating).
    pub total_ns: u64,
    /// Latencies in nanoseconds, with exact min and max.
    pub latency: FineHistogram,
    /// Distinct pids that ran it, sorted, at most [`MAX_PIDS`].
    pub pids: Vec<u32>,
    /// Calls from pids beyond the first [`MAX_PIDS`].
    pub other_pid_calls: u64,
    /// Table clock at the last call, for eviction order.
    last_seen: u64,
}

impl QueryStats {
    fn new(text: String) -> Self {
        Self {
            text,
            calls: 0,
            errors: 0,
            rows: None,
            total_ns: 0,
            latency: FineHistogram::new(),
            pids: Vec::new(),
            other_pid_calls: 0,
            last_seen: 0,
        }
    }

    fn add(&mut self, latency_ns: u64, error: bool, rows: Option<u64>, pid: u32) {
        self.calls += 1;
        self.errors += u64::from(error);
        if let Some(r) = rows {
            self.rows = Some(self.rows.unwrap_or(0).saturating_add(r));
        }
        self.total_ns = self.total_ns.saturating_add(latency_ns);
        self.latency.record(latency_ns);
        if let Err(at) = self.pids.binary_search(&pid) {
            if self.pids.len() < MAX_PIDS {
                self.pids.insert(at, pid);
            } else {
                self.other_pid_calls += 1;
            }
        }
    }

    /// Adds another window's statistics of the same statement.
    fn absorb(&mut self, other: &QueryStats) {
        self.calls += other.calls;
        self.errors += other.errors;
        if let Some(r) = other.rows {
            self.rows = Some(self.rows.unwrap_or(0).saturating_add(r));
        }
        self.total_ns = self.total_ns.saturating_add(other.total_ns);
        self.latency.merge(&other.latency);
        self.other_pid_calls += other.other_pid_calls;
        for &pid in &other.pids {
            if let Err(at) = self.pids.binary_search(&pid)
                && self.pids.len() < MAX_PIDS
            {
                self.pids.insert(at, pid);
            }
        }
    }

    /// The report row for this statement.
    #[must_use]
    pub fn row(&self, db: Db, id: u64) -> QueryRow {
        let us = |ns: u64| ns as f64 / 1_000.0;
        QueryRow {
            db,
            fingerprint_id: id_hex(id),
            fingerprint: self.text.clone(),
            calls: self.calls,
            errors: self.errors,
            rows: self.rows,
            total_us: us(self.total_ns),
            min_us: us(self.latency.min()),
            p50_us: us(self.latency.percentile(0.50)),
            p95_us: us(self.latency.percentile(0.95)),
            p99_us: us(self.latency.percentile(0.99)),
            max_us: us(self.latency.max()),
            pids: self.pids.clone(),
        }
    }
}

/// One row of `record queries`; the JSON field names are a public
/// interface. Times are microseconds with nanosecond precision (fractions
/// matter: an in-memory SQLite statement takes a few µs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryRow {
    pub db: Db,
    /// [`id_hex`] of the fingerprint id: what `--query` takes.
    pub fingerprint_id: String,
    pub fingerprint: String,
    pub calls: u64,
    pub errors: u64,
    /// `null` when the client library does not report rows.
    pub rows: Option<u64>,
    pub total_us: f64,
    pub min_us: f64,
    pub p50_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub pids: Vec<u32>,
}

impl AsRef<QueryRow> for QueryRow {
    fn as_ref(&self) -> &QueryRow {
        self
    }
}

/// A row as `record queries --json` writes it: the statement, plus one
/// text as captured (literals included) only when raw queries were opted in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryReportRow {
    #[serde(flatten)]
    pub row: QueryRow,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_example: Option<String>,
}

impl AsRef<QueryRow> for QueryReportRow {
    fn as_ref(&self) -> &QueryRow {
        &self.row
    }
}

type Key = (Db, u64);

/// Statements by (db, fingerprint id), at most `capacity` of them. When
/// full, a new statement evicts the least used: fewest calls, and among
/// those the longest unseen. An ordered index keeps that O(log n) per call.
#[derive(Debug)]
pub struct QueryTable {
    capacity: usize,
    entries: HashMap<Key, QueryStats>,
    /// (calls, `last_seen`) → key: the first entry is the next to evict.
    by_use: BTreeMap<(u64, u64), Key>,
    clock: u64,
    evicted: u64,
    evicted_calls: u64,
}

impl Default for QueryTable {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl QueryTable {
    /// A table of at most `capacity` statements (at least one).
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
            clock: 0,
            evicted: 0,
            evicted_calls: 0,
        }
    }

    /// Counts one execution of `query` against `db`.
    pub fn record(
        &mut self,
        db: Db,
        query: &Normalized,
        latency_ns: u64,
        error: bool,
        rows: Option<u64>,
        pid: u32,
    ) {
        self.clock += 1;
        let key = (db, query.id);
        if let Some(stats) = self.entries.get(&key) {
            self.by_use.remove(&(stats.calls, stats.last_seen));
        } else {
            if self.entries.len() >= self.capacity {
                self.evict_one();
            }
            self.entries
                .insert(key, QueryStats::new(query.text.clone()));
        }
        let Some(stats) = self.entries.get_mut(&key) else {
            return;
        };
        stats.add(latency_ns, error, rows, pid);
        stats.last_seen = self.clock;
        self.by_use.insert((stats.calls, stats.last_seen), key);
    }

    /// Adds every statement of `other` (a window) into this table (the
    /// agent's running totals), evicting the least used when full, as
    /// [`Self::record`] does.
    pub fn merge(&mut self, other: &QueryTable) {
        for (key, theirs) in &other.entries {
            self.clock += 1;
            if let Some(stats) = self.entries.get(key) {
                self.by_use.remove(&(stats.calls, stats.last_seen));
            } else {
                if self.entries.len() >= self.capacity {
                    self.evict_one();
                }
                self.entries
                    .insert(*key, QueryStats::new(theirs.text.clone()));
            }
            let Some(stats) = self.entries.get_mut(key) else {
                continue;
            };
            stats.absorb(theirs);
            stats.last_seen = self.clock;
            self.by_use.insert((stats.calls, stats.last_seen), *key);
        }
    }

    fn evict_one(&mut self) {
        if let Some((_, key)) = self.by_use.pop_first()
            && let Some(gone) = self.entries.remove(&key)
        {
            self.evicted += 1;
            self.evicted_calls += gone.calls;
        }
    }

    #[must_use]
    pub fn get(&self, db: Db, id: u64) -> Option<&QueryStats> {
        self.entries.get(&(db, id))
    }

    pub fn iter(&self) -> impl Iterator<Item = (Db, u64, &QueryStats)> {
        self.entries.iter().map(|(&(db, id), s)| (db, id, s))
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Statements evicted to make room (count them as a drop).
    #[must_use]
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Calls those evicted statements had accumulated.
    #[must_use]
    pub fn evicted_calls(&self) -> u64 {
        self.evicted_calls
    }

    /// Every statement with its raw example from `examples` (fingerprint
    /// id -> text, empty unless raw queries were opted in), in [`Self::rows`] order.
    #[must_use]
    pub fn report_rows(&self, examples: &HashMap<u64, String>) -> Vec<QueryReportRow> {
        self.sorted()
            .into_iter()
            .map(|(&(db, id), s)| QueryReportRow {
                row: s.row(db, id),
                raw_example: examples.get(&id).cloned(),
            })
            .collect()
    }

    /// Every statement, by total time descending (then calls, then id, so
    /// the order is deterministic).
    #[must_use]
    pub fn rows(&self) -> Vec<QueryRow> {
        self.sorted()
            .into_iter()
            .map(|(&(db, id), s)| s.row(db, id))
            .collect()
    }

    fn sorted(&self) -> Vec<(&Key, &QueryStats)> {
        let mut keyed: Vec<(&Key, &QueryStats)> = self.entries.iter().collect();
        keyed.sort_by(|(ka, a), (kb, b)| {
            b.total_ns
                .cmp(&a.total_ns)
                .then(b.calls.cmp(&a.calls))
                .then(ka.cmp(kb))
        });
        keyed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::fingerprint::normalize;

    fn q(sql: &str) -> Normalized {
        normalize(sql.as_bytes())
    }

    /// Merging two windows gives what recording both into one table gives.
    #[test]
    fn merging_windows_equals_one_table() {
        let calls = [
            ("SELECT a FROM t WHERE id = 1", 1_000, 10),
            ("SELECT b FROM u", 5_000, 11),
            ("SELECT a FROM t WHERE id = 2", 3_000, 12),
        ];
        let mut whole = QueryTable::default();
        let mut a = QueryTable::default();
        let mut b = QueryTable::default();
        for (i, (sql, ns, pid)) in calls.iter().enumerate() {
            whole.record(Db::Postgres, &q(sql), *ns, i == 1, Some(2), *pid);
            let w = if i < 2 { &mut a } else { &mut b };
            w.record(Db::Postgres, &q(sql), *ns, i == 1, Some(2), *pid);
        }
        let mut merged = QueryTable::default();
        merged.merge(&a);
        merged.merge(&b);
        let mut rows = merged.rows();
        let mut expect = whole.rows();
        rows.sort_by(|x, y| x.fingerprint_id.cmp(&y.fingerprint_id));
        expect.sort_by(|x, y| x.fingerprint_id.cmp(&y.fingerprint_id));
        assert_eq!(rows, expect);
        let mut small = QueryTable::with_capacity(1);
        small.merge(&whole);
        assert_eq!(small.len(), 1);
        assert_eq!(small.evicted(), 1);
    }

    /// Calls, errors, rows, totals, min/max and pids add up per statement,
    /// and literals fold into one fingerprint per database kind.
    #[test]
    fn records_per_fingerprint() {
        let mut t = QueryTable::default();
        t.record(
            Db::Postgres,
            &q("SELECT * FROM a WHERE id = 1"),
            1_000,
            false,
            Some(1),
            10,
        );
        t.record(
            Db::Postgres,
            &q("select * from a where id = 2"),
            3_000,
            true,
            None,
            11,
        );
        t.record(
            Db::Postgres,
            &q("SELECT * FROM a WHERE id = 3"),
            2_000,
            false,
            Some(4),
            10,
        );
        t.record(
            Db::Sqlite,
            &q("SELECT * FROM a WHERE id = 3"),
            500,
            false,
            None,
            12,
        );
        assert_eq!(t.len(), 2);
        let id = q("SELECT * FROM a WHERE id = ?").id;
        let pg = t.get(Db::Postgres, id).map(|s| s.row(Db::Postgres, id));
        let pg = pg.as_ref();
        assert_eq!(
            pg.map(|r| (r.calls, r.errors, r.rows)),
            Some((3, 1, Some(5)))
        );
        assert_eq!(
            pg.map(|r| (r.total_us, r.min_us, r.max_us)),
            Some((6.0, 1.0, 3.0))
        );
        assert_eq!(pg.map(|r| r.pids.clone()), Some(vec![10, 11]));
        assert_eq!(
            pg.map(|r| r.fingerprint.as_str()),
            Some("SELECT * FROM a WHERE id = ?")
        );
        let lite = t.get(Db::Sqlite, id);
        assert_eq!(lite.map(|s| (s.calls, s.rows)), Some((1, None)));
        let rows = t.rows();
        assert_eq!(rows[0].db, Db::Postgres, "sorted by total time");
        assert_eq!(rows[1].db, Db::Sqlite);
    }

    /// The pid list is bounded; further pids are only counted.
    #[test]
    fn pids_bounded() {
        let mut t = QueryTable::default();
        let s = q("SELECT 1");
        for pid in (0..200u32).rev() {
            t.record(Db::Sqlite, &s, 1, false, None, pid);
            t.record(Db::Sqlite, &s, 1, false, None, pid);
        }
        let stats = t.get(Db::Sqlite, s.id);
        assert_eq!(stats.map(|s| s.pids.len()), Some(MAX_PIDS));
        assert_eq!(
            stats.map(|s| s.other_pid_calls),
            Some(2 * (200 - MAX_PIDS as u64))
        );
        assert!(stats.is_some_and(|s| s.pids.windows(2).all(|w| w[0] < w[1])));
    }

    /// The JSON row has exactly the documented keys, with db in lower case
    /// and rows null when unknown.
    #[test]
    fn json_shape() {
        let mut t = QueryTable::default();
        t.record(Db::Postgres, &q("SELECT 1"), 1_500, false, None, 7);
        let v = serde_json::to_value(t.rows()).unwrap_or_default();
        let obj = v[0].as_object().cloned().unwrap_or_default();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "calls",
                "db",
                "errors",
                "fingerprint",
                "fingerprint_id",
                "max_us",
                "min_us",
                "p50_us",
                "p95_us",
                "p99_us",
                "pids",
                "rows",
                "total_us"
            ]
        );
        assert_eq!(obj["db"], "postgres");
        assert_eq!(obj["fingerprint_id"], id_hex(q("SELECT ?").id));
        assert_eq!(obj["fingerprint"], "SELECT ?");
        assert_eq!(obj["rows"], serde_json::Value::Null);
        assert_eq!(obj["total_us"], 1.5);
        assert_eq!(obj["pids"], serde_json::json!([7]));
        assert_eq!(
            serde_json::to_value(Db::Sqlite).unwrap_or_default(),
            "sqlite"
        );
    }

    /// When full, the least used statement goes (fewest calls, then the
    /// longest unseen), and the eviction is counted.
    #[test]
    fn evicts_least_used() {
        let mut t = QueryTable::with_capacity(3);
        let [hot, warm, cold, fresh] = ["SELECT a", "SELECT b", "SELECT c", "SELECT d"].map(q);
        for s in [&hot, &hot, &warm, &cold, &warm] {
            t.record(Db::Postgres, s, 1, false, None, 1);
        }
        t.record(Db::Postgres, &fresh, 1, false, None, 1); // evicts cold: 1 call
        assert!(t.get(Db::Postgres, cold.id).is_none());
        assert_eq!((t.len(), t.evicted(), t.evicted_calls()), (3, 1, 1));
        t.record(Db::Postgres, &cold, 1, false, None, 1); // evicts fresh: 1 call, older
        assert!(t.get(Db::Postgres, fresh.id).is_none());
        assert!(t.get(Db::Postgres, hot.id).is_some() && t.get(Db::Postgres, warm.id).is_some());
        assert_eq!(t.evicted(), 2);
    }

    /// 100,000 distinct statements through a 10,000-entry table: the table
    /// and its index stay at capacity, the hot statement survives, and it
    /// is fast (a linear eviction scan would take tens of seconds here).
    #[test]
    fn bounded_under_churn() {
        let mut t = QueryTable::default();
        let hot = q("SELECT hot FROM t WHERE id = 1");
        let start = std::time::Instant::now();
        for i in 0..100_000u32 {
            if i % 100 == 0 {
                t.record(Db::Postgres, &hot, 1_000, false, None, 1);
            }
            let s = q(&format!("SELECT c{i} FROM t WHERE id = {i}"));
            t.record(Db::Postgres, &s, 1_000, false, None, 2);
        }
        let elapsed = start.elapsed();
        assert_eq!(t.len(), DEFAULT_CAPACITY);
        assert_eq!(t.by_use.len(), DEFAULT_CAPACITY);
        assert_eq!(t.evicted(), 100_000 + 1 - DEFAULT_CAPACITY as u64);
        assert_eq!(t.get(Db::Postgres, hot.id).map(|s| s.calls), Some(1_000));
        let held: usize = t.iter().map(|(_, _, s)| s.latency.buckets_held()).sum();
        assert!(held <= DEFAULT_CAPACITY, "{held}");
        assert!(elapsed.as_secs() < 10, "{elapsed:?}");
    }
}
