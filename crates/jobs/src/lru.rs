//! A cache bounded by the bytes it holds, not by a count of entries:
//! what a worker keeps of input sets, model files and loaded models. The
//! least recently used entries go first; the entry just added always
//! stays, even alone over the budget (a query needs it now).
//!
//! **Invariant:** `bytes` is the sum of the entries' sizes.

use std::collections::HashMap;
use std::hash::Hash;

#[derive(Debug)]
pub(crate) struct ByteLru<K, V> {
    entries: HashMap<K, Entry<V>>,
    bytes: usize,
    budget: usize,
    clock: u64,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    size: usize,
    used: u64,
}

impl<K: Eq + Hash + Clone, V> ByteLru<K, V> {
    pub(crate) fn new(budget: usize) -> Self {
        ByteLru { entries: HashMap::new(), bytes: 0, budget, clock: 0 }
    }

    /// The entry of `key`, now the most recently used.
    pub(crate) fn get(&mut self, key: &K) -> Option<&mut V> {
        self.clock += 1;
        let e = self.entries.get_mut(key)?;
        e.used = self.clock;
        Some(&mut e.value)
    }

    pub(crate) fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// Add (or replace) `key`, of `size` bytes, then drop the least
    /// recently used others until the budget holds: the evicted entries.
    pub(crate) fn insert(&mut self, key: K, value: V, size: usize) -> Vec<(K, V)> {
        self.clock += 1;
        if let Some(old) = self.entries.insert(key.clone(), Entry { value, size, used: self.clock }) {
            self.bytes -= old.size;
        }
        self.bytes += size;
        let mut evicted = Vec::new();
        while self.bytes > self.budget {
            let oldest = self.entries.iter().filter(|(k, _)| **k != key).min_by_key(|(_, e)| e.used);
            let Some(k) = oldest.map(|(k, _)| k.clone()) else { break };
            if let Some(v) = self.remove(&k) {
                evicted.push((k, v));
            }
        }
        evicted
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let e = self.entries.remove(key)?;
        self.bytes -= e.size;
        Some(e.value)
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.keys()
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = (&V, usize)> {
        self.entries.values().map(|e| (&e.value, e.size))
    }

    /// Every entry's value, without touching their order.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.entries.iter_mut().map(|(k, e)| (k, &mut e.value))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_go_first_until_the_bytes_fit() {
        let mut c = ByteLru::new(100);
        assert!(c.insert("a", 1, 40).is_empty());
        assert!(c.insert("b", 2, 40).is_empty());
        // "a" used since "b" came: "b" is the one to go.
        assert_eq!(c.get(&"a"), Some(&mut 1));
        assert_eq!(c.insert("c", 3, 40), vec![("b", 2)]);
        assert_eq!(c.bytes(), 80);
        // One entry over the whole budget stays, alone.
        let gone = c.insert("big", 4, 500);
        assert_eq!(gone.len(), 2);
        assert_eq!((c.len(), c.bytes()), (1, 500));
        // Replacing an entry counts its new size once.
        c.insert("big", 5, 60);
        assert_eq!((c.len(), c.bytes()), (1, 60));
        assert_eq!(c.remove(&"big"), Some(5));
        assert_eq!(c.bytes(), 0);
    }
}
