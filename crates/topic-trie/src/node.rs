//! The immutable trie of one owner: nodes shared between snapshots and copied only along the
//! paths a change touches.
//!
//! A pattern `<scope>:<owner>:a:*:b` lives at the node reached from the owner's root by the
//! edges `a`, `*`, `b`; its subscribers are stored there. A topic `a:x:b:c` is matched by
//! walking literal and wildcard edges at once: every node on the way reports its
//! subscribers, because a pattern shorter than the topic matches it as a segment-prefix.
//!
//! Children and subscribers are persistent hash maps (imbl's HAMT): cloning a node is O(1),
//! and a change copies O(log n) map nodes on each level of its path, whatever the number of
//! patterns or subscribers already there. Iterating them does not allocate.

use std::sync::Arc;

use fanout_protocol::topic::WILDCARD;
use imbl::GenericHashMap;
use imbl::shared_ptr::DefaultSharedPtr;

type Map<K, V> = GenericHashMap<K, V, foldhash::fast::RandomState, DefaultSharedPtr>;

/// One node of an owner's trie.
pub(crate) struct Node<V> {
    /// Subscribers whose pattern ends here, by subscriber id.
    subscribers: Map<u64, V>,
    /// Literal edges.
    children: Map<Box<str>, Arc<Node<V>>>,
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
            subscribers: Map::default(),
            children: Map::default(),
            wildcard: None,
        }
    }
}

impl<V: Clone> Node<V> {
    /// Whether the node holds nothing and can be dropped.
    pub(crate) fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.children.is_empty() && self.wildcard.is_none()
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
            None => self.subscribers.insert(id, subscriber).is_none(),
            Some(segment) => {
                let child = if segment == WILDCARD {
                    self.wildcard.get_or_insert_with(Default::default)
                } else {
                    if !self.children.contains_key(segment) {
                        self.children
                            .insert(segment.into(), Arc::new(Node::default()));
                    }
                    match self.children.get_mut(segment) {
                        Some(child) => child,
                        // Inserted just above.
                        None => return false,
                    }
                };
                Arc::make_mut(child).insert(path, id, subscriber)
            }
        }
    }

    /// Removes `id` at the end of `path`, pruning nodes left empty; false if it was not there.
    pub(crate) fn remove<'p>(&mut self, mut path: impl Iterator<Item = &'p str>, id: u64) -> bool {
        match path.next() {
            None => self.subscribers.remove(&id).is_some(),
            Some(segment) if segment == WILDCARD => {
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
                // Look before copying: an absent pair must not copy the path.
                if !self.children.contains_key(segment) {
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
            None => self.subscribers.contains_key(&id),
            Some(segment) if segment == WILDCARD => {
                self.wildcard.as_ref().is_some_and(|c| c.contains(path, id))
            }
            Some(segment) => self
                .children
                .get(segment)
                .is_some_and(|c| c.contains(path, id)),
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
