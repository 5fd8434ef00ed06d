//! The synchronisation the trie is built from, swapped for loom's models under `cfg(loom)`.
//!
//! The snapshot cell is `arc-swap` normally; under loom it is a mutex around an `Arc`, which
//! loom can explore: the model checks the trie's own protocol (pending changes, the combining
//! writer, snapshot publication), trusting the primitives.

#[cfg(loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::Mutex;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use std::sync::Arc;

/// A cell holding the current snapshot; readers load it without waiting on writers.
#[cfg(not(loom))]
pub(crate) struct Cell<T>(arc_swap::ArcSwap<T>);

#[cfg(not(loom))]
impl<T> Cell<T> {
    pub(crate) fn new(value: Arc<T>) -> Self {
        Cell(arc_swap::ArcSwap::new(value))
    }

    /// A guard that keeps the current snapshot alive while it is read (no allocation).
    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<T>> {
        self.0.load()
    }

    pub(crate) fn load_full(&self) -> Arc<T> {
        self.0.load_full()
    }

    pub(crate) fn store(&self, value: Arc<T>) {
        self.0.store(value);
    }
}

#[cfg(loom)]
pub(crate) struct Cell<T>(loom::sync::Mutex<Arc<T>>);

#[cfg(loom)]
impl<T> Cell<T> {
    pub(crate) fn new(value: Arc<T>) -> Self {
        Cell(loom::sync::Mutex::new(value))
    }

    pub(crate) fn load(&self) -> Arc<T> {
        self.load_full()
    }

    pub(crate) fn load_full(&self) -> Arc<T> {
        self.0
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    pub(crate) fn store(&self, value: Arc<T>) {
        match self.0.lock() {
            Ok(mut g) => *g = value,
            Err(e) => *e.into_inner() = value,
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
#[cfg(not(loom))]
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
#[cfg(loom)]
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> loom::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lets another thread run while a retired owner's changes move to its replacement.
#[cfg(not(loom))]
pub(crate) fn yield_now() {
    std::thread::yield_now();
}

/// Lets another thread run while a retired owner's changes move to its replacement.
#[cfg(loom)]
pub(crate) fn yield_now() {
    loom::thread::yield_now();
}
