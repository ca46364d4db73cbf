//! The query text table: what the kernel's text ids stand for.
//!
//! The kernel sends a query's text once per distinct text (by an id it
//! hashes) and refers to it by id afterwards (`qprof_common::queries`). This
//! table turns those ids back into normalized fingerprints for every
//! consumer: `record queries`, the `query` label of `--by-query` CPU and
//! off-CPU samples, and the agent, whose table lives as long as it does.
//!
//! Only the normalized text is kept ([`Normalized`]: literals removed);
//! the raw text, literals included, is kept only when raw queries were
//! opted in (`--raw-queries`, `raw_queries = true`).
//!
//! Bounds and eviction: at most `max_texts` ids and `max_bytes` bytes of
//! text (each distinct fingerprint counted once however many ids share
//! it, plus raw texts). When either would be exceeded, the least recently
//! used id goes (learned, or resolved for an execution). Evictions are
//! counted ([`QueryTexts::evicted`]) and the evicted ids are handed to the
//! probe side ([`QueryTexts::take_forgotten`]), which removes them from the
//! kernel's "already sent" table so that the next execution sends the text
//! again: an evicted text is re-learned, not lost, unless it belongs to a
//! statement prepared once and never prepared again.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use qprof_common::queries::TEXTS_SEEN_CAPACITY;

use super::fingerprint::{Normalized, normalize_captured};

/// Ids held by default: twice the kernel's "already sent" table
/// (`TEXTS_SEEN_CAPACITY`). Both are LRUs by use, so an id this table
/// evicts for want of room has at least twice the kernel's capacity of
/// distinct ids used after it: the kernel has forgotten it too, and it
/// need not be removed there (before, a client whose every statement
/// carries a new literal cost the agent one BPF syscall per query for
/// that). Each id costs ~100 bytes of bookkeeping besides its text:
/// ~13 MB when full.
pub const DEFAULT_MAX_TEXTS: usize = 2 * TEXTS_SEEN_CAPACITY as usize;

/// Bytes of text held by default: 16 MiB, a quarter of the agent's 64 MB
/// budget. Texts are captured up to 1 KiB, so this binds only when most
/// ids have distinct long fingerprints (or raw texts are kept); with
/// typical ~100-byte statements the id cap binds first.
pub const DEFAULT_MAX_BYTES: usize = 16 * 1024 * 1024;

/// What one text id stands for.
#[derive(Debug, Clone, Copy)]
pub struct Resolved<'a> {
    pub fingerprint: &'a Normalized,
    /// The text as captured, only when raw queries were opted in.
    pub raw: Option<&'a str>,
}

#[derive(Debug)]
struct Entry {
    fingerprint: Arc<Normalized>,
    raw: Option<Box<str>>,
    last_used: u64,
}

/// A fingerprint shared by several ids, counted once.
#[derive(Debug)]
struct Shared {
    fingerprint: Arc<Normalized>,
    ids: u32,
}

/// Text id -> normalized fingerprint (and raw text when opted in), bounded
/// as the module documentation says.
#[derive(Debug)]
pub struct QueryTexts {
    max_texts: usize,
    max_bytes: usize,
    keep_raw: bool,
    entries: HashMap<u64, Entry>,
    /// `last_used` -> id: the first entry is the next to evict.
    by_use: BTreeMap<u64, u64>,
    /// Fingerprint id -> the one copy of its text.
    fingerprints: HashMap<u64, Shared>,
    bytes: usize,
    clock: u64,
    evicted: u64,
    /// Ids evicted since the last `take_forgotten`, at most `max_texts`.
    forgotten: Vec<u64>,
}

impl QueryTexts {
    /// A table with the default bounds.
    #[must_use]
    pub fn new(keep_raw: bool) -> Self {
        Self::with_limits(DEFAULT_MAX_TEXTS, DEFAULT_MAX_BYTES, keep_raw)
    }

    /// A table of at most `max_texts` ids (at least one) and `max_bytes`
    /// bytes of text (a single text larger than that is still kept, alone).
    #[must_use]
    pub fn with_limits(max_texts: usize, max_bytes: usize, keep_raw: bool) -> Self {
        Self {
            max_texts: max_texts.max(1),
            max_bytes,
            keep_raw,
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
            fingerprints: HashMap::new(),
            bytes: 0,
            clock: 0,
            evicted: 0,
            forgotten: Vec::new(),
        }
    }

    /// Learns the text of `text_id` as the kernel captured it (`truncated`:
    /// its capture buffer was full). A text sent again (the kernel forgot
    /// it had sent it) replaces the old entry.
    pub fn learn(&mut self, text_id: u64, bytes: &[u8], truncated: bool) {
        self.remove(text_id);
        let normalized = normalize_captured(bytes, truncated);
        let raw = self
            .keep_raw
            .then(|| String::from_utf8_lossy(bytes).into_owned().into_boxed_str());
        let shared = self.fingerprints.get(&normalized.id);
        let new_bytes = raw.as_ref().map_or(0, |r| r.len())
            + if shared.is_some() {
                0
            } else {
                normalized.text.len()
            };
        while !self.entries.is_empty()
            && (self.entries.len() >= self.max_texts || self.bytes + new_bytes > self.max_bytes)
        {
            // Evicted for the count with a table twice the kernel's: the
            // kernel forgot it already (see DEFAULT_MAX_TEXTS).
            let kernel_forgot = self.entries.len() >= self.max_texts
                && self.max_texts >= 2 * TEXTS_SEEN_CAPACITY as usize;
            self.evict_one(!kernel_forgot);
        }
        let fingerprint = if let Some(shared) = self.fingerprints.get_mut(&normalized.id) {
            shared.ids += 1;
            Arc::clone(&shared.fingerprint)
        } else {
            self.bytes += normalized.text.len();
            let fingerprint = Arc::new(normalized);
            self.fingerprints.insert(
                fingerprint.id,
                Shared {
                    fingerprint: Arc::clone(&fingerprint),
                    ids: 1,
                },
            );
            fingerprint
        };
        self.bytes += raw.as_ref().map_or(0, |r| r.len());
        self.clock += 1;
        self.by_use.insert(self.clock, text_id);
        self.entries.insert(
            text_id,
            Entry {
                fingerprint,
                raw,
                last_used: self.clock,
            },
        );
    }

    /// What `text_id` stands for, marking it used (an execution of it):
    /// ids in use are the last to be evicted.
    pub fn resolve(&mut self, text_id: u64) -> Option<Resolved<'_>> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.entries.get_mut(&text_id)?;
        self.by_use.remove(&entry.last_used);
        entry.last_used = clock;
        self.by_use.insert(clock, text_id);
        Some(Resolved {
            fingerprint: &entry.fingerprint,
            raw: entry.raw.as_deref(),
        })
    }

    /// The fingerprint of `text_id`, without marking it used.
    #[must_use]
    pub fn peek(&self, text_id: u64) -> Option<&Normalized> {
        self.entries.get(&text_id).map(|e| &*e.fingerprint)
    }

    /// Ids evicted since the last call, for the kernel to forget.
    pub fn take_forgotten(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.forgotten)
    }

    /// Ids evicted so far (a drop: their executions report as unknown
    /// text until the kernel sends the text again).
    #[must_use]
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Ids held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of text held (each fingerprint once, plus raw texts).
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Evicts the least recently used id; `forget_in_kernel` queues it for
    /// removal from the kernel's "already sent" table.
    fn evict_one(&mut self, forget_in_kernel: bool) {
        let Some((_, id)) = self.by_use.pop_first() else {
            return;
        };
        self.remove(id);
        self.evicted += 1;
        if forget_in_kernel && self.forgotten.len() < self.max_texts {
            self.forgotten.push(id);
        }
    }

    /// Drops `text_id` and, with its last id, its fingerprint.
    fn remove(&mut self, text_id: u64) {
        let Some(entry) = self.entries.remove(&text_id) else {
            return;
        };
        self.by_use.remove(&entry.last_used);
        self.bytes -= entry.raw.as_ref().map_or(0, |r| r.len());
        let id = entry.fingerprint.id;
        if let Some(shared) = self.fingerprints.get_mut(&id) {
            shared.ids -= 1;
            if shared.ids == 0 {
                self.bytes -= shared.fingerprint.text.len();
                self.fingerprints.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The least recently used id goes first; resolving an id (an
    /// execution) keeps it; each eviction is counted and handed on for the
    /// kernel to forget.
    #[test]
    fn evicts_least_recently_used() {
        let mut t = QueryTexts::with_limits(3, usize::MAX, false);
        t.learn(1, b"SELECT 1", false);
        t.learn(2, b"SELECT a FROM t", false);
        t.learn(3, b"SELECT b FROM t", false);
        assert!(t.resolve(1).is_some());
        t.learn(4, b"SELECT c FROM t", false); // evicts 2, the least recent
        assert!(t.peek(2).is_none());
        assert!(t.peek(1).is_some() && t.peek(3).is_some() && t.peek(4).is_some());
        assert_eq!((t.len(), t.evicted()), (3, 1));
        assert_eq!(t.take_forgotten(), vec![2]);
        assert!(t.take_forgotten().is_empty());
        t.learn(5, b"SELECT d FROM t", false); // evicts 3
        assert!(t.peek(3).is_none());
        assert_eq!(t.evicted(), 2);
    }

    /// At the default size (twice the kernel's table) an id evicted for the
    /// count is not handed on: the kernel forgot it already, and a client
    /// with a new literal per statement costs no BPF syscall per query.
    /// Evictions for bytes still are.
    #[test]
    fn count_evictions_at_twice_the_kernel_table_stay_in_user_space() {
        let max = 2 * TEXTS_SEEN_CAPACITY as usize;
        let mut t = QueryTexts::with_limits(max, usize::MAX, false);
        for id in 0..max as u64 + 10 {
            t.learn(
                id,
                format!("SELECT abalance FROM a WHERE aid = {id}").as_bytes(),
                false,
            );
        }
        assert_eq!(t.evicted(), 10);
        assert!(t.take_forgotten().is_empty());
        let mut small = QueryTexts::with_limits(max, 64, false);
        small.learn(1, b"SELECT a FROM t", false);
        small.learn(
            2,
            b"SELECT bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb FROM t",
            false,
        );
        assert_eq!(small.take_forgotten(), vec![1]);
    }

    /// Ids of one fingerprint share its text: bytes count it once, and it
    /// is freed with its last id.
    #[test]
    fn fingerprints_counted_once() {
        let mut t = QueryTexts::with_limits(10, usize::MAX, false);
        t.learn(1, b"SELECT * FROM a WHERE id = 1", false);
        t.learn(2, b"SELECT * FROM a WHERE id = 2", false);
        let text = "SELECT * FROM a WHERE id = ?";
        assert_eq!(t.peek(1).map(|n| n.text.as_str()), Some(text));
        assert_eq!(t.peek(1).map(|n| n.id), t.peek(2).map(|n| n.id));
        assert_eq!(t.bytes(), text.len());
        t.learn(1, b"SELECT * FROM a WHERE id = 1", false); // sent again
        assert_eq!((t.len(), t.bytes(), t.evicted()), (2, text.len(), 0));
        t.remove(1);
        t.remove(2);
        assert_eq!((t.bytes(), t.fingerprints.len()), (0, 0));
    }

    /// The byte budget evicts too, and raw text (literals included) is
    /// kept only when opted in.
    #[test]
    fn byte_budget_and_raw_opt_in() {
        let mut t = QueryTexts::with_limits(100, 40, true);
        t.learn(1, b"SELECT x FROM t WHERE a = 'secret'", false);
        let r = t
            .resolve(1)
            .map(|r| (r.fingerprint.text.clone(), r.raw.map(str::to_owned)));
        assert_eq!(
            r,
            Some((
                "SELECT x FROM t WHERE a = ?".to_owned(),
                Some("SELECT x FROM t WHERE a = 'secret'".to_owned())
            ))
        );
        t.learn(2, b"SELECT y FROM u", false); // 27 + 34 + 2 * 15 > 40
        assert!(t.peek(1).is_none());
        assert_eq!((t.evicted(), t.bytes()), (1, 30));
        let mut plain = QueryTexts::new(false);
        plain.learn(1, b"SELECT 'secret'", false);
        assert_eq!(plain.resolve(1).and_then(|r| r.raw), None);
        assert_eq!(plain.bytes(), "SELECT ?".len());
    }

    /// 200,000 distinct texts through the default table: ids, bytes and
    /// the eviction index stay at their caps, and an id in use survives.
    #[test]
    fn bounded_under_churn() {
        let mut t = QueryTexts::new(false);
        t.learn(0, b"SELECT hot FROM t", false);
        for i in 1..200_000u64 {
            if i % 1_000 == 0 {
                assert!(t.resolve(0).is_some(), "hot text evicted at {i}");
            }
            t.learn(i, format!("SELECT c{i} FROM t").as_bytes(), false);
        }
        assert_eq!(t.len(), DEFAULT_MAX_TEXTS);
        assert_eq!(t.by_use.len(), DEFAULT_MAX_TEXTS);
        assert_eq!(t.fingerprints.len(), DEFAULT_MAX_TEXTS);
        assert!(t.bytes() <= DEFAULT_MAX_BYTES);
        assert_eq!(t.evicted(), 200_000 - DEFAULT_MAX_TEXTS as u64);
        // Evicted for the count at twice the kernel's table: none is handed
        // on for the kernel to forget (it has forgotten them).
        assert!(t.take_forgotten().is_empty());
    }
}
