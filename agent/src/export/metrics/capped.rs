//! Cardinality caps: at most `cap` labelled series per family, the rest of
//! the traffic aggregated under an "other" series.
//!
//! Every series is a cumulative counter set (Prometheus wants monotonic
//! series), so membership must be sticky: a series that left and came back
//! would restart from zero, which `rate()` reads as a counter reset. A key
//! therefore keeps its series until a newcomer beats it clearly, and the
//! ranking is by a decayed score (total time or events, decayed by
//! [`DECAY`] per window) so that yesterday's heavy hitter eventually yields
//! to today's. Admission is decided *before* a window's data is added: an
//! evicted key's window goes to "other", which therefore never loses data
//! and never goes backwards; the evicted series just stops (its past stays
//! in Prometheus).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// Score kept per window: 0.9 halves an idle key's weight in ~6.6 windows
/// (about 7 minutes at the default 60 s), long enough to ride out a quiet
/// spell, short enough that a new hot statement gets a series within a few
/// windows.
pub const DECAY: f64 = 0.9;

/// A newcomer displaces the weakest series only when its window score is
/// this many times the weakest decayed score: without the margin two keys
/// of equal weight would swap series every window, each swap a reset.
pub const HYSTERESIS: f64 = 2.0;

#[derive(Debug)]
struct Tracked<V> {
    value: V,
    score: f64,
}

/// Series of one family keyed by `K`, at most `cap` of them plus the
/// "other" series (keyed by what `other_of` maps a key to; callers map to a
/// small fixed set, e.g. one per database kind).
#[derive(Debug)]
pub struct Capped<K, V> {
    cap: usize,
    series: HashMap<K, Tracked<V>>,
    other: BTreeMap<K, V>,
    evicted: u64,
}

impl<K: Eq + Hash + Ord + Clone, V: Default> Capped<K, V> {
    #[must_use]
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            series: HashMap::new(),
            other: BTreeMap::new(),
            evicted: 0,
        }
    }

    /// Feeds one window: `items` maps each key to its window data, `score`
    /// ranks it (the family's "total time"), `other_of` names the "other"
    /// series of an untracked key and `add` adds window data to a series.
    pub fn feed<W>(
        &mut self,
        items: HashMap<K, W>,
        score: impl Fn(&W) -> f64,
        other_of: impl Fn(&K) -> K,
        mut add: impl FnMut(&mut V, &K, W),
    ) {
        for t in self.series.values_mut() {
            t.score *= DECAY;
        }
        let mut candidates: Vec<(f64, &K)> = Vec::new();
        for (k, w) in &items {
            match self.series.get_mut(k) {
                Some(t) => t.score += score(w),
                None => candidates.push((score(w), k)),
            }
        }
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        let mut candidates = candidates.into_iter().peekable();
        while self.series.len() < self.cap {
            let Some((s, k)) = candidates.next() else {
                break;
            };
            self.admit(k.clone(), s);
        }
        if candidates.peek().is_some() {
            self.displace(candidates);
        }
        for (k, w) in items {
            match self.series.get_mut(&k) {
                Some(t) => add(&mut t.value, &k, w),
                None => add(self.other.entry(other_of(&k)).or_default(), &k, w),
            }
        }
    }

    fn admit(&mut self, k: K, score: f64) {
        self.series.insert(
            k,
            Tracked {
                value: V::default(),
                score,
            },
        );
    }

    /// Newcomers (best first) take the places of the weakest series they
    /// beat by [`HYSTERESIS`].
    fn displace<'k>(&mut self, candidates: impl Iterator<Item = (f64, &'k K)>)
    where
        K: 'k,
    {
        let mut weakest: Vec<(f64, K)> = self
            .series
            .iter()
            .map(|(k, t)| (t.score, k.clone()))
            .collect();
        weakest.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.cmp(&a.1)));
        let mut weakest = weakest.into_iter();
        for (s, k) in candidates {
            let Some((ws, wk)) = weakest.next() else {
                break;
            };
            if s <= ws * HYSTERESIS || s <= 0.0 {
                break;
            }
            self.series.remove(&wk);
            self.evicted += 1;
            self.admit(k.clone(), s);
        }
    }

    /// Tracked series in key order (deterministic output).
    #[must_use]
    pub fn tracked(&self) -> Vec<(&K, &V)> {
        let mut v: Vec<(&K, &V)> = self.series.iter().map(|(k, t)| (k, &t.value)).collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// The "other" series in key order.
    pub fn others(&self) -> impl Iterator<Item = (&K, &V)> {
        self.other.iter()
    }

    /// Tracked plus "other" series.
    #[must_use]
    pub fn len(&self) -> usize {
        self.series.len() + self.other.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Series dropped to make room for a heavier key.
    #[must_use]
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    #[cfg(test)]
    pub fn get(&self, k: &K) -> Option<&V> {
        self.series.get(k).map(|t| &t.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(items: &[(u32, u64)]) -> HashMap<u32, u64> {
        items.iter().copied().collect()
    }

    fn feed(c: &mut Capped<u32, u64>, items: &[(u32, u64)]) {
        c.feed(
            window(items),
            |w| *w as f64,
            |_| u32::MAX,
            |v, _, w| *v += w,
        );
    }

    /// The first `cap` keys by score get series, the rest add up under
    /// "other", and nothing is lost: tracked + other = everything fed.
    #[test]
    fn caps_and_conserves() {
        let mut c = Capped::new(3);
        let items: Vec<(u32, u64)> = (1..=10).map(|k| (k, u64::from(k) * 10)).collect();
        feed(&mut c, &items);
        let tracked: Vec<u32> = c.tracked().iter().map(|(k, _)| **k).collect();
        assert_eq!(tracked, [8, 9, 10]);
        assert_eq!(c.others().collect::<Vec<_>>(), [(&u32::MAX, &280)]);
        assert_eq!(c.len(), 4);
        let total: u64 = c.tracked().iter().map(|(_, v)| **v).sum::<u64>() + 280;
        assert_eq!(total, (1..=10).map(|k| k * 10).sum::<u64>());
    }

    /// A newcomer only displaces a series it beats by the hysteresis
    /// margin; the displaced series' later data goes to "other", which
    /// only grows.
    #[test]
    fn sticky_with_hysteresis() {
        let mut c = Capped::new(2);
        feed(&mut c, &[(1, 100), (2, 100)]);
        // 150 < 2 × 90 (decayed 100): no change.
        feed(&mut c, &[(3, 150)]);
        assert!(c.get(&3).is_none());
        assert_eq!(c.others().next(), Some((&u32::MAX, &150)));
        // 1 keeps its place by staying busy; 2 decays and loses to 3.
        feed(&mut c, &[(1, 100), (3, 1_000), (2, 5)]);
        assert!(c.get(&2).is_none() && c.get(&1).is_some());
        assert_eq!(c.get(&3), Some(&1_000));
        assert_eq!(c.evicted(), 1);
        assert_eq!(
            c.others().next(),
            Some((&u32::MAX, &155)),
            "2's window went to other"
        );
        assert_eq!(c.get(&1), Some(&200));
    }

    /// A zero cap sends everything to "other".
    #[test]
    fn zero_cap() {
        let mut c = Capped::new(0);
        feed(&mut c, &[(1, 5), (2, 6)]);
        assert_eq!(c.tracked().len(), 0);
        assert_eq!(c.others().next(), Some((&u32::MAX, &11)));
    }
}
