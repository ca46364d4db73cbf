//! A bounded map with an approximate least-recently-used eviction, in O(1)
//! per operation and without a linked list: two generations.
//!
//! Entries go into `hot`. When `hot` holds half the capacity, the `cold`
//! generation is dropped (its entries counted as evicted) and `hot` becomes
//! `cold`. A hit in `cold` moves the entry back to `hot`. So an entry used
//! at least once per half-capacity insertions is never evicted, and the map
//! never holds more than the capacity.

use std::{collections::HashMap, hash::Hash};

pub struct BoundedCache<K, V> {
    hot: HashMap<K, V>,
    cold: HashMap<K, V>,
    half: usize,
    evictions: u64,
}

impl<K: Hash + Eq + Clone, V> BoundedCache<K, V> {
    /// A cache of at most `capacity` entries (at least 2).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            hot: HashMap::new(),
            cold: HashMap::new(),
            half: (capacity / 2).max(1),
            evictions: 0,
        }
    }

    /// The entry for `key`, which counts as a use.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        if self.hot.contains_key(key) {
            return self.hot.get(key);
        }
        let value = self.cold.remove(key)?;
        self.insert(key.clone(), value);
        self.hot.get(key)
    }

    pub fn insert(&mut self, key: K, value: V) {
        if self.hot.len() >= self.half && !self.hot.contains_key(&key) {
            self.evictions += self.cold.len() as u64;
            self.cold = std::mem::take(&mut self.hot);
            self.cold.remove(&key);
        }
        self.hot.insert(key, value);
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.hot.len() + self.cold.len()
    }

    /// Entries dropped to stay within the capacity, since creation.
    #[must_use]
    pub fn evictions(&self) -> u64 {
        self.evictions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache never exceeds its capacity and counts what it drops.
    #[test]
    fn bounded_and_counted() {
        let mut cache = BoundedCache::new(10);
        for i in 0..100 {
            cache.insert(i, i);
            assert!(cache.len() <= 10, "{} entries", cache.len());
        }
        assert_eq!(cache.evictions() + cache.len() as u64, 100);
    }

    /// An entry used between rotations survives them; an unused one goes.
    #[test]
    fn recently_used_entries_survive() {
        let mut cache = BoundedCache::new(4);
        cache.insert("keep", 0);
        cache.insert("drop", 1);
        for i in 0..20 {
            assert_eq!(cache.get(&"keep"), Some(&0));
            cache.insert(if i % 2 == 0 { "a" } else { "b" }, i);
        }
        assert_eq!(cache.get(&"keep"), Some(&0));
        assert_eq!(cache.get(&"drop"), None);
    }
}
