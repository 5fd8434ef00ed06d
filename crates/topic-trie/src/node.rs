//! The immutable trie of one owner: nodes shared between snapshots and copied only along the
//! paths a change touches.
//!
//! A pattern `<scope>:<owner>:a:*:b` lives at the node reached from the owner's root by the
//! edges `a`, `*`, `b`; its subscribers are stored there. A topic `a:x:b:c` is matched by
//! walking literal and wildcard edges at once: every node on the way reports its
//! subscribers, because a pattern shorter than the topic matches it as a segment-prefix.
//!
//! Children and subscribers are small shared slices while they are small (the common case:
//! scanning a few entries beats hashing), and persistent hash maps (imbl's HAMT) once they
//! grow: cloning a node is O(1), and a change copies at most [`SMALL`] entries or O(log n) map
//! nodes on each level of its path, whatever the number of patterns or subscribers already
//! there. Iterating either does not allocate.

use std::sync::Arc;

use fanout_protocol::topic::WILDCARD;
use imbl::GenericHashMap;
use imbl::shared_ptr::DefaultSharedPtr;

type Map<K, V> = GenericHashMap<K, V, foldhash::fast::RandomState, DefaultSharedPtr>;

/// Entries kept in a plain slice before switching to a persistent map (tiny under test, so
/// the property tests cross the switch often).
#[cfg(not(test))]
pub(crate) const SMALL: usize = 32;
#[cfg(test)]
pub(crate) const SMALL: usize = 2;

/// A persistent map from `K` to `V`: a shared slice while small, a HAMT once large.
enum Entries<K, V> {
    Small(Arc<[(K, V)]>),
    Large(Map<K, V>),
}

impl<K: Clone, V: Clone> Clone for Entries<K, V> {
    fn clone(&self) -> Self {
        match self {
            Entries::Small(s) => Entries::Small(s.clone()),
            Entries::Large(m) => Entries::Large(m.clone()),
        }
    }
}

/// Lookups by a borrowed form of the key.
trait Key: Clone + Eq + std::hash::Hash {
    type Borrowed: ?Sized + Eq + std::hash::Hash;
    fn borrowed(&self) -> &Self::Borrowed;
}

impl Key for u64 {
    type Borrowed = u64;
    fn borrowed(&self) -> &u64 {
        self
    }
}

impl Key for Box<str> {
    type Borrowed = str;
    fn borrowed(&self) -> &str {
        self
    }
}

impl<K, V> Entries<K, V>
where
    K: Key + std::borrow::Borrow<K::Borrowed>,
    V: Clone,
{
    fn new() -> Self {
        Entries::Small(Arc::from(Vec::new()))
    }

    fn is_empty(&self) -> bool {
        match self {
            Entries::Small(s) => s.is_empty(),
            Entries::Large(m) => m.is_empty(),
        }
    }

    fn get(&self, key: &K::Borrowed) -> Option<&V> {
        match self {
            Entries::Small(s) => s.iter().find(|(k, _)| k.borrowed() == key).map(|(_, v)| v),
            Entries::Large(m) => m.get(key),
        }
    }

    /// The value at `key`, inserted with `make` if absent, for changing in place (the slice
    /// or the map path is copied if shared).
    fn get_or_insert_mut(&mut self, key: &K::Borrowed, make: impl FnOnce() -> (K, V)) -> &mut V {
        if let Entries::Small(s) = self {
            if !s.iter().any(|(k, _)| k.borrowed() == key) {
                let (k, v) = make();
                if s.len() < SMALL {
                    let mut grown: Vec<(K, V)> = s.to_vec();
                    grown.push((k, v));
                    *s = Arc::from(grown);
                } else {
                    let mut map: Map<K, V> = Map::default();
                    for (k, v) in s.iter() {
                        map.insert(k.clone(), v.clone());
                    }
                    map.insert(k, v);
                    *self = Entries::Large(map);
                }
            }
        } else if let Entries::Large(m) = self
            && !m.contains_key(key)
        {
            let (k, v) = make();
            m.insert(k, v);
        }
        match self {
            Entries::Small(s) => {
                let slice = Arc::make_mut(s);
                let at = slice
                    .iter()
                    .position(|(k, _)| k.borrowed() == key)
                    .unwrap_or(0);
                &mut slice[at].1
            }
            Entries::Large(m) => match m.get_mut(key) {
                Some(v) => v,
                // Inserted above; a map never loses a key it was just given.
                None => unreachable!("bug: key inserted above is missing"),
            },
        }
    }

    /// The value at `key` for changing in place, copying the path only if it is there.
    fn get_mut(&mut self, key: &K::Borrowed) -> Option<&mut V> {
        match self {
            Entries::Small(s) => {
                let at = s.iter().position(|(k, _)| k.borrowed() == key)?;
                Some(&mut Arc::make_mut(s)[at].1)
            }
            Entries::Large(m) => {
                if m.contains_key(key) {
                    m.get_mut(key)
                } else {
                    None
                }
            }
        }
    }

    /// Inserts `(key, value)` if `key` is absent; true if it was.
    fn insert_new(&mut self, key: K, value: V) -> bool {
        if self.get(key.borrowed()).is_some() {
            return false;
        }
        let mut value = Some(value);
        let key_for_make = key.clone();
        let _ = self.get_or_insert_mut(key.borrowed(), || {
            (
                key_for_make,
                value
                    .take()
                    .unwrap_or_else(|| unreachable!("bug: made twice")),
            )
        });
        true
    }

    /// Removes `key`; true if it was there.
    fn remove(&mut self, key: &K::Borrowed) -> bool {
        match self {
            Entries::Small(s) => {
                let Some(at) = s.iter().position(|(k, _)| k.borrowed() == key) else {
                    return false;
                };
                let mut shrunk: Vec<(K, V)> = s.to_vec();
                shrunk.swap_remove(at);
                *s = Arc::from(shrunk);
                true
            }
            Entries::Large(m) => m.remove(key).is_some(),
        }
    }

    fn iter(&self) -> EntriesIter<'_, K, V> {
        match self {
            Entries::Small(s) => EntriesIter::Small(s.iter()),
            Entries::Large(m) => EntriesIter::Large(m.iter()),
        }
    }
}

enum EntriesIter<'a, K, V> {
    Small(std::slice::Iter<'a, (K, V)>),
    Large(imbl::hashmap::Iter<'a, K, V, DefaultSharedPtr>),
}

impl<'a, K, V> Iterator for EntriesIter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            EntriesIter::Small(it) => it.next().map(|(k, v)| (k, v)),
            EntriesIter::Large(it) => it.next(),
        }
    }
}

/// One node of an owner's trie.
pub(crate) struct Node<V> {
    /// Subscribers whose pattern ends here, by subscriber id.
    subscribers: Entries<u64, V>,
    /// Literal edges.
    children: Entries<Box<str>, Arc<Node<V>>>,
    /// The `*` edge.
    wildcard: Option<Arc<Node<V>>>,
}

impl<V: Clone> Clone for Node<V> {
    fn clone(&self) -> Self {
        Node {
            subscribers: self.subscribers.clone(),
            children: self.children.clone(),
            wildcard: self.wildcard.clone(),
        }
    }
}

impl<V: Clone> Default for Node<V> {
    fn default() -> Self {
        Node {
            subscribers: Entries::new(),
            children: Entries::new(),
            wildcard: None,
        }
    }
}

impl<V: Clone> Node<V> {
    /// Whether the node holds nothing and can be dropped.
    pub(crate) fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.children.is_empty() && self.wildcard.is_none()
    }

    /// How many subscribers end here.
    pub(crate) fn subscriber_count(&self) -> usize {
        match &self.subscribers {
            Entries::Small(s) => s.len(),
            Entries::Large(m) => m.len(),
        }
    }

    /// Subscribers whose pattern ends here, with their ids.
    pub(crate) fn subscribers(&self) -> impl Iterator<Item = (&u64, &V)> {
        self.subscribers.iter()
    }

    /// Adds `subscriber` at the end of `path`; false if it was there.
    pub(crate) fn insert<'p>(
        &mut self,
        mut path: impl Iterator<Item = &'p str>,
        id: u64,
        subscriber: V,
    ) -> bool {
        match path.next() {
            None => self.subscribers.insert_new(id, subscriber),
            Some(segment) => {
                let child = if segment == WILDCARD {
                    self.wildcard.get_or_insert_with(Default::default)
                } else {
                    self.children
                        .get_or_insert_mut(segment, || (segment.into(), Arc::new(Node::default())))
                };
                Arc::make_mut(child).insert(path, id, subscriber)
            }
        }
    }

    /// Removes `id` at the end of `path`, pruning nodes left empty; false if it was not there.
    pub(crate) fn remove<'p>(
        &mut self,
        mut path: impl Iterator<Item = &'p str> + Clone,
        id: u64,
    ) -> bool {
        match path.next() {
            None => self.subscribers.remove(&id),
            Some(segment) if segment == WILDCARD => {
                // Look before copying: an absent pair must not copy the path.
                if !self
                    .wildcard
                    .as_ref()
                    .is_some_and(|c| c.contains(path.clone(), id))
                {
                    return false;
                }
                let Some(child) = self.wildcard.as_mut() else {
                    return false;
                };
                let removed = Arc::make_mut(child).remove(path, id);
                if child.is_empty() {
                    self.wildcard = None;
                }
                removed
            }
            Some(segment) => {
                if !self
                    .children
                    .get(segment)
                    .is_some_and(|c| c.contains(path.clone(), id))
                {
                    return false;
                }
                let Some(child) = self.children.get_mut(segment) else {
                    return false;
                };
                let removed = Arc::make_mut(child).remove(path, id);
                if child.is_empty() {
                    self.children.remove(segment);
                }
                removed
            }
        }
    }

    /// Whether `id` is at the end of `path`.
    pub(crate) fn contains<'p>(&self, mut path: impl Iterator<Item = &'p str>, id: u64) -> bool {
        match path.next() {
            None => self.subscribers.get(&id).is_some(),
            Some(segment) if segment == WILDCARD => {
                self.wildcard.as_ref().is_some_and(|c| c.contains(path, id))
            }
            Some(segment) => self
                .children
                .get(segment)
                .is_some_and(|c| c.contains(path, id)),
        }
    }

    /// Calls `found` with every subscriber of this node and of every node below it (a
    /// subscriber with several patterns is reported once per pattern).
    pub(crate) fn walk<F>(&self, found: &mut F)
    where
        F: FnMut(u64, &V),
    {
        for (id, subscriber) in self.subscribers.iter() {
            found(*id, subscriber);
        }
        for (_, child) in self.children.iter() {
            child.walk(found);
        }
        if let Some(wildcard) = &self.wildcard {
            wildcard.walk(found);
        }
    }

    /// Calls `found` with every node whose pattern matches the topic whose segments after the
    /// owner are `rest` (this node included: it matches as a prefix).
    pub(crate) fn visit<'n, 'p, F>(
        &'n self,
        mut rest: impl Iterator<Item = &'p str> + Clone,
        found: &mut F,
    ) where
        F: FnMut(&'n Node<V>),
    {
        if !self.subscribers.is_empty() {
            found(self);
        }
        let Some(segment) = rest.next() else {
            return;
        };
        if let Some(child) = self.children.get(segment) {
            child.visit(rest.clone(), found);
        }
        if let Some(wildcard) = &self.wildcard {
            wildcard.visit(rest, found);
        }
    }
}
