//! The index every event is matched against: subscription patterns (protocol.md §1.4)
//! mapped to subscribers.
//!
//! [`Trie::match_topics`] takes an event's topics, most specific first, and calls back each
//! matching subscriber exactly once, with the index of the first topic it matched under.
//!
//! Invariants callers rely on:
//! - A subscriber is reported at most once per match, however many of its patterns match.
//! - Patterns are grouped by their literal scope and owner, and an event topic is only ever
//!   compared with patterns of its own scope and owner.
//! - No `.await` anywhere; the match path takes only a read lock.
//!
//! This is the simple version (a read-write lock over per-owner lists); issue 4 replaces
//! the inside with snapshots that readers load without locks, behind the same API.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use fanout_protocol::{Pattern, Scope, Topic};
use uuid::Uuid;

type Owner = (Scope, Uuid);

/// Patterns mapped to subscribers of type `V` (cheap to clone; compared for identity).
pub struct Trie<V> {
    owners: RwLock<HashMap<Owner, Vec<(Pattern, V)>>>,
}

impl<V> std::fmt::Debug for Trie<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Trie { .. }")
    }
}

impl<V> Default for Trie<V> {
    fn default() -> Self {
        Trie {
            owners: RwLock::new(HashMap::new()),
        }
    }
}

impl<V: Clone + Eq + Hash> Trie<V> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<Owner, Vec<(Pattern, V)>>> {
        // The lists stay consistent even if a writer panicked.
        self.owners.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<Owner, Vec<(Pattern, V)>>> {
        self.owners.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `(pattern, subscriber)`; returns false if the pair was already there.
    pub fn insert(&self, pattern: &Pattern, subscriber: V) -> bool {
        let mut owners = self.write();
        let list = owners
            .entry((pattern.scope(), pattern.owner()))
            .or_default();
        if list.iter().any(|(p, v)| p == pattern && *v == subscriber) {
            return false;
        }
        list.push((pattern.clone(), subscriber));
        true
    }

    /// Removes `(pattern, subscriber)`; returns false if the pair was not there.
    pub fn remove(&self, pattern: &Pattern, subscriber: &V) -> bool {
        let mut owners = self.write();
        let key = (pattern.scope(), pattern.owner());
        let Some(list) = owners.get_mut(&key) else {
            return false;
        };
        let before = list.len();
        list.retain(|(p, v)| !(p == pattern && v == subscriber));
        let removed = list.len() != before;
        if list.is_empty() {
            owners.remove(&key);
        }
        removed
    }

    /// Removes every pattern of `subscriber`; returns how many.
    pub fn remove_subscriber(&self, subscriber: &V) -> usize {
        let mut owners = self.write();
        let mut removed = 0;
        owners.retain(|_, list| {
            let before = list.len();
            list.retain(|(_, v)| v != subscriber);
            removed += before - list.len();
            !list.is_empty()
        });
        removed
    }

    /// Calls `found(subscriber, topic_index)` once for each subscriber with a pattern that
    /// matches one of `topics`, with the index of the first such topic.
    pub fn match_topics(&self, topics: &[Topic], mut found: impl FnMut(&V, usize)) {
        let owners = self.read();
        let mut seen: Vec<&V> = Vec::new();
        for (index, topic) in topics.iter().enumerate() {
            let Some(list) = owners.get(&(topic.scope(), topic.owner())) else {
                continue;
            };
            for (pattern, subscriber) in list {
                if pattern.matches(topic) && !seen.contains(&subscriber) {
                    seen.push(subscriber);
                    found(subscriber, index);
                }
            }
        }
    }

    /// The number of (pattern, subscriber) pairs.
    pub fn len(&self) -> usize {
        self.read().values().map(Vec::len).sum()
    }

    /// Whether the index holds no pair.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "12345678-1234-1234-1234-123456789012";
    const D: &str = "87654321-4321-4321-4321-210987654321";

    fn p(text: &str) -> Pattern {
        Pattern::parse(text).expect("valid pattern")
    }

    fn t(text: &str) -> Topic {
        Topic::parse(text).expect("valid topic")
    }

    fn matches(trie: &Trie<u32>, topics: &[Topic]) -> Vec<(u32, usize)> {
        let mut out = Vec::new();
        trie.match_topics(topics, |v, i| out.push((*v, i)));
        out.sort();
        out
    }

    #[test]
    fn each_subscriber_once_under_its_first_topic() {
        let trie = Trie::new();
        assert!(trie.insert(&p(&format!("customer_id:{C}:call:*")), 1));
        assert!(trie.insert(&p(&format!("customer_id:{C}")), 1));
        assert!(!trie.insert(&p(&format!("customer_id:{C}")), 1));
        assert!(trie.insert(&p(&format!("customer_id:{C}:call:call_hangup")), 2));
        assert!(trie.insert(&p(&format!("customer_id:{D}")), 3));
        let topics = [
            t(&format!("customer_id:{C}:call:k")),
            t(&format!("customer_id:{C}:call:call_hangup:k")),
        ];
        assert_eq!(matches(&trie, &topics), [(1, 0), (2, 1)]);
        assert!(trie.remove(&p(&format!("customer_id:{C}:call:*")), &1));
        assert!(!trie.remove(&p(&format!("customer_id:{C}:call:*")), &1));
        assert_eq!(matches(&trie, &topics), [(1, 0), (2, 1)]);
        assert_eq!(trie.remove_subscriber(&1), 1);
        assert_eq!(matches(&trie, &topics), [(2, 1)]);
        assert_eq!(trie.len(), 2);
    }
}
