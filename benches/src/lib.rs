//! Shared pieces of the micro-benchmarks: the workloads, and the baseline indexes the topic
//! trie is measured against.
//!
//! - [`LockedLists`]: a read-write lock over per-owner lists of patterns (the gateway's first,
//!   simple index).
//! - [`DashLists`]: the same lists in a `dashmap`.
//! - [`Scan`]: one list of every pattern, scanned for each topic (rumqttd's approach).

use std::collections::HashMap;
use std::sync::RwLock;

use dashmap::DashMap;
use fanout_protocol::{Pattern, Scope, Topic};
use fanout_topic_trie::Trie;
use uuid::Uuid;

/// What every index offers the benchmarks.
pub trait Index: Send + Sync {
    /// A short name for reports.
    fn name(&self) -> &'static str;
    /// Adds a pair.
    fn insert(&self, pattern: &Pattern, subscriber: u64);
    /// Removes a pair.
    fn remove(&self, pattern: &Pattern, subscriber: u64);
    /// Counts the subscribers matching `topics` (each once).
    fn count(&self, topics: &[Topic]) -> usize;
}

impl Index for Trie<u64> {
    fn name(&self) -> &'static str {
        "trie"
    }

    fn insert(&self, pattern: &Pattern, subscriber: u64) {
        Trie::insert(self, pattern, subscriber);
    }

    fn remove(&self, pattern: &Pattern, subscriber: u64) {
        Trie::remove(self, pattern, &subscriber);
    }

    fn count(&self, topics: &[Topic]) -> usize {
        let mut n = 0;
        self.match_topics(topics, |_, _| n += 1);
        n
    }
}

type Owner = (Scope, Uuid);

fn dedup_count<'a>(matches: impl Iterator<Item = &'a u64>) -> usize {
    let mut seen: Vec<u64> = Vec::new();
    for s in matches {
        if !seen.contains(s) {
            seen.push(*s);
        }
    }
    seen.len()
}

/// A read-write lock over per-owner lists.
#[derive(Default)]
pub struct LockedLists(RwLock<HashMap<Owner, Vec<(Pattern, u64)>>>);

impl Index for LockedLists {
    fn name(&self) -> &'static str {
        "rwlock-lists"
    }

    fn insert(&self, pattern: &Pattern, subscriber: u64) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        map.entry((pattern.scope(), pattern.owner()))
            .or_default()
            .push((pattern.clone(), subscriber));
    }

    fn remove(&self, pattern: &Pattern, subscriber: u64) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = map.get_mut(&(pattern.scope(), pattern.owner())) {
            list.retain(|(p, s)| !(p == pattern && *s == subscriber));
        }
    }

    fn count(&self, topics: &[Topic]) -> usize {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        let hits = topics.iter().flat_map(|t| {
            map.get(&(t.scope(), t.owner()))
                .into_iter()
                .flatten()
                .filter(move |(p, _)| p.matches(t))
                .map(|(_, s)| s)
        });
        dedup_count(hits)
    }
}

/// Per-owner lists in a `dashmap`.
#[derive(Default)]
pub struct DashLists(DashMap<Owner, Vec<(Pattern, u64)>>);

impl Index for DashLists {
    fn name(&self) -> &'static str {
        "dashmap-lists"
    }

    fn insert(&self, pattern: &Pattern, subscriber: u64) {
        self.0
            .entry((pattern.scope(), pattern.owner()))
            .or_default()
            .push((pattern.clone(), subscriber));
    }

    fn remove(&self, pattern: &Pattern, subscriber: u64) {
        if let Some(mut list) = self.0.get_mut(&(pattern.scope(), pattern.owner())) {
            list.retain(|(p, s)| !(p == pattern && *s == subscriber));
        }
    }

    fn count(&self, topics: &[Topic]) -> usize {
        let mut seen: Vec<u64> = Vec::new();
        for t in topics {
            if let Some(list) = self.0.get(&(t.scope(), t.owner())) {
                for (p, s) in list.iter() {
                    if p.matches(t) && !seen.contains(s) {
                        seen.push(*s);
                    }
                }
            }
        }
        seen.len()
    }
}

/// Every pattern in one list, scanned per topic.
#[derive(Default)]
pub struct Scan(RwLock<Vec<(Pattern, u64)>>);

impl Index for Scan {
    fn name(&self) -> &'static str {
        "scan-all"
    }

    fn insert(&self, pattern: &Pattern, subscriber: u64) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push((pattern.clone(), subscriber));
    }

    fn remove(&self, pattern: &Pattern, subscriber: u64) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(p, s)| !(p == pattern && *s == subscriber));
    }

    fn count(&self, topics: &[Topic]) -> usize {
        let list = self.0.read().unwrap_or_else(|e| e.into_inner());
        let hits = topics.iter().flat_map(|t| {
            list.iter()
                .filter(move |(p, _)| p.matches(t))
                .map(|(_, s)| s)
        });
        dedup_count(hits)
    }
}

/// The owner ids of a workload, deterministic.
pub fn owner(i: u64) -> Uuid {
    Uuid::from_u128(0x1000_0000_0000_4000_8000_0000_0000_0000 | u128::from(i))
}

/// The four patterns of session `s` of `owner`: a wildcard, a prefix, an event-type topic
/// and a specific resource. The wildcard's resource varies with `s / 7` so every owner gets
/// every kind whatever the number of owners.
pub fn session_patterns(owner: Uuid, s: u64) -> [Pattern; 4] {
    let resources = ["call", "message", "queuecall", "activeflow"];
    let r = resources[((s / 7) % 4) as usize];
    [
        format!("customer_id:{owner}:{r}:*"),
        format!("customer_id:{owner}:message"),
        format!("customer_id:{owner}:call:call_hangup"),
        format!("customer_id:{owner}:call:k{}", s % 50),
    ]
    .map(|t| Pattern::parse(&t).expect("valid pattern"))
}

/// Fills `index` with `sessions` sessions spread over `owners` owners, four patterns each.
pub fn fill(index: &dyn Index, owners: u64, sessions: u64) {
    for s in 0..sessions {
        let o = owner(s % owners);
        for pattern in session_patterns(o, s) {
            index.insert(&pattern, s);
        }
    }
}

/// The topics of a call event of `owner` (§2 order: customer topics, no agent owner).
pub fn call_topics(owner: Uuid, event_type: &str, id: &str) -> Vec<Topic> {
    vec![
        Topic::parse(&format!("customer_id:{owner}:call:{id}")).expect("valid topic"),
        Topic::parse(&format!("customer_id:{owner}:call:{event_type}:{id}")).expect("valid topic"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every baseline counts what the trie counts.
    #[test]
    fn baselines_agree_with_the_trie() {
        let indexes: Vec<Box<dyn Index>> = vec![
            Box::new(Trie::<u64>::new()),
            Box::new(LockedLists::default()),
            Box::new(DashLists::default()),
            Box::new(Scan::default()),
        ];
        for index in &indexes {
            fill(index.as_ref(), 10, 200);
        }
        let mut total = 0;
        for o in 0..10 {
            for (event_type, id) in [
                ("call_hangup", "k3"),
                ("call_ringing", "k7"),
                ("call_created", "zz"),
            ] {
                let topics = call_topics(owner(o), event_type, id);
                let counts: Vec<usize> = indexes.iter().map(|i| i.count(&topics)).collect();
                assert!(counts.iter().all(|c| *c == counts[0]), "{counts:?}");
                total += counts[0];
            }
        }
        assert!(total > 0);
    }
}
