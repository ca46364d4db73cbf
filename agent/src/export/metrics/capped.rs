//! Cardinality caps: at most `cap` labelled series per family, the rest of
//! the traffic aggregated under an "other" series.
//!
//! Every series is a cumulative counter set (Prometheus wants monotonic
//! series), so membership must be sticky: a series that left and came back
//! would restart from zero, which `rate()` reads as a counter reset. A key
//! therefore keeps its series until a newcomer beats it clearly, and the
//! ranking is by a decayed score (total time or events, decayed by
//! [`DECAY`] per window) so that yesterday's heavy hitter eventually yields
//! to today's. Keys without a series keep a score too (in a bounded shadow
//! table), so a newcomer is compared with an incumbent on the same
//! footing: both are decayed sums over the windows, not one window against
//! many. Admission is decided *before* a window's data is added: an
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

/// Untracked keys whose score is kept, per series of the cap: enough to
/// remember the keys just below the cut (the ones that could take a
/// place), not every key ever seen.
pub const SHADOW_PER_SERIES: usize = 4;

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
    /// Decayed scores of keys without a series, at most
    /// `SHADOW_PER_SERIES × cap`, the best kept.
    shadow: HashMap<K, f64>,
    other: BTreeMap<K, V>,
    evicted: u64,
}

impl<K: Eq + Hash + Ord + Clone, V: Default> Capped<K, V> {
    #[must_use]
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            series: HashMap::new(),
            shadow: HashMap::new(),
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
        for s in self.shadow.values_mut() {
            *s *= DECAY;
        }
        for (k, w) in &items {
            match self.series.get_mut(k) {
                Some(t) => t.score += score(w),
                None => *self.shadow.entry(k.clone()).or_default() += score(w),
            }
        }
        let mut candidates: Vec<(f64, K)> = self.shadow.drain().map(|(k, s)| (s, k)).collect();
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let mut candidates = candidates.into_iter();
        while self.series.len() < self.cap {
            let Some((s, k)) = candidates.next() else {
                break;
            };
            self.admit(k, s);
        }
        let rest = self.displace(candidates);
        let keep = self.cap.saturating_mul(SHADOW_PER_SERIES);
        self.shadow = rest.into_iter().take(keep).map(|(s, k)| (k, s)).collect();
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
    /// beat by [`HYSTERESIS`]; returns the keys left without a series
    /// (best first), the evicted ones included.
    fn displace(&mut self, candidates: impl Iterator<Item = (f64, K)>) -> Vec<(f64, K)> {
        let mut weakest: Vec<(f64, K)> = self
            .series
            .iter()
            .map(|(k, t)| (t.score, k.clone()))
            .collect();
        weakest.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.cmp(&a.1)));
        let mut weakest = weakest.into_iter().peekable();
        let mut rest = Vec::new();
        for (s, k) in candidates {
            match weakest.peek() {
                Some((ws, _)) if s > 0.0 && s > ws * HYSTERESIS => {
                    if let Some((ws, wk)) = weakest.next() {
                        self.series.remove(&wk);
                        self.evicted += 1;
                        rest.push((ws, wk));
                    }
                    self.admit(k, s);
                }
                _ => rest.push((s, k)),
            }
        }
        rest.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        rest
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

    /// The shadow scores of untracked keys stay bounded however many keys
    /// pass, and a key just below the cut that keeps coming takes a place
    /// once an incumbent has gone quiet.
    #[test]
    fn shadow_bounded_and_patient() {
        let mut c = Capped::new(2);
        feed(&mut c, &[(1, 100), (2, 100)]);
        for w in 0..20u32 {
            let burst: Vec<(u32, u64)> = (0..1_000).map(|i| (1_000 + w * 1_000 + i, 1)).collect();
            feed(&mut c, &burst);
            assert!(c.shadow.len() <= 2 * SHADOW_PER_SERIES);
        }
        // 3 comes at 60 a window, 1 stays at 100, 2 has gone quiet: after a
        // few windows 3's decayed sum is over twice 2's.
        for _ in 0..6 {
            feed(&mut c, &[(1, 100), (3, 60)]);
        }
        assert!(c.get(&3).is_some() && c.get(&1).is_some() && c.get(&2).is_none());
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
