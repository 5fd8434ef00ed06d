//! One owner's trie: the current snapshot, which readers load without waiting, and the
//! writer protocol that replaces it.
//!
//! A writer queues its change, then takes the owner's writer lock. Whoever holds the lock
//! takes every queued change at once, applies them all to a copy of the snapshot (a copy of
//! the root only: nodes are shared and copied along the touched paths), publishes the result
//! and records each change's outcome. A writer that finds its change already applied by
//! another just reads its outcome. So a burst of changes to one owner costs one publication,
//! and readers only ever see whole snapshots.

use std::sync::Arc;

use fanout_protocol::Pattern;

use crate::node::Node;
use crate::sync::{AtomicBool, AtomicUsize, Cell, Mutex, Ordering, lock};

/// A change to apply.
pub(crate) enum Change<V> {
    Insert {
        pattern: Pattern,
        id: u64,
        subscriber: V,
    },
    Remove {
        pattern: Pattern,
        id: u64,
    },
}

/// Where a change's outcome is written: 0 pending, 1 no effect, 2 applied.
pub(crate) struct Outcome(AtomicUsize);

impl Outcome {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Outcome(AtomicUsize::new(0)))
    }

    fn set(&self, applied: bool) {
        self.0.store(if applied { 2 } else { 1 }, Ordering::Release);
    }

    /// The outcome, once the change was applied.
    pub(crate) fn get(&self) -> Option<bool> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            v => Some(v == 2),
        }
    }
}

/// A queued change and where its outcome goes.
pub(crate) struct Queued<V> {
    pub(crate) change: Change<V>,
    pub(crate) outcome: Arc<Outcome>,
}

/// What submitting did.
pub(crate) enum Submitted<V> {
    /// Applied (by this writer or another).
    Done,
    /// Applied, and the owner's trie is now empty: this owner is retired and should leave the
    /// root map.
    Emptied,
    /// The owner was retired before these changes could be applied: submit them to the
    /// owner that replaces it.
    Retired(Vec<Queued<V>>),
}

/// One owner's trie.
pub(crate) struct Owner<V> {
    snapshot: Cell<Node<V>>,
    queued: Mutex<Vec<Queued<V>>>,
    writer: Mutex<()>,
    retired: AtomicBool,
}

impl<V: Clone> Owner<V> {
    pub(crate) fn new() -> Self {
        Owner {
            snapshot: Cell::new(Arc::new(Node::default())),
            queued: Mutex::new(Vec::new()),
            writer: Mutex::new(()),
            retired: AtomicBool::new(false),
        }
    }

    /// The current snapshot, for reading.
    #[cfg(not(loom))]
    pub(crate) fn snapshot(&self) -> arc_swap::Guard<Arc<Node<V>>> {
        self.snapshot.load()
    }

    /// The current snapshot, for reading.
    #[cfg(loom)]
    pub(crate) fn snapshot(&self) -> Arc<Node<V>> {
        self.snapshot.load()
    }

    /// Queues `changes` and makes sure they are applied before returning.
    pub(crate) fn submit(&self, changes: Vec<Queued<V>>) -> Submitted<V> {
        lock(&self.queued).extend(changes);
        let _writer = lock(&self.writer);
        let batch = std::mem::take(&mut *lock(&self.queued));
        if self.retired.load(Ordering::Acquire) {
            return Submitted::Retired(batch);
        }
        if batch.is_empty() {
            // Another writer applied ours while we waited for the lock.
            return Submitted::Done;
        }
        let mut root = Node::clone(&self.snapshot.load_full());
        for queued in batch {
            let applied = match queued.change {
                Change::Insert {
                    pattern,
                    id,
                    subscriber,
                } => root.insert(pattern.rest(), id, subscriber),
                Change::Remove { pattern, id } => root.remove(pattern.rest(), id),
            };
            queued.outcome.set(applied);
        }
        let emptied = root.is_empty();
        self.snapshot.store(Arc::new(root));
        if emptied {
            self.retired.store(true, Ordering::Release);
            Submitted::Emptied
        } else {
            Submitted::Done
        }
    }
}
