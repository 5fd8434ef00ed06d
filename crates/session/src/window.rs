//! A customer's recent stream on this node (protocol.md §1.7): the window that a resuming
//! client is replayed from, and the judge of whether a resume is `recovered`.
//!
//! Every event and every gap takes the next offset of the window's epoch, so its cursor is
//! `(epoch, offset)`. A gap having an offset of its own means a client that handled the gap
//! (reloaded its state) can resume from the gap's cursor and miss nothing after it.
//!
//! The window keeps events and gaps in offset order and forgets the oldest ones past its
//! age, byte or count limit. [`Window::resume`] answers `recovered` only when it can prove
//! that nothing after the client's cursor is missing: the cursor is of this epoch, names an
//! offset already given out, nothing after it was forgotten, and no gap lies after it. A
//! wrong `recovered: true` is the one answer that must never happen; any doubt is `false`.
//!
//! Sans-IO: time comes in as an argument; the items are whatever the hub keeps per event
//! (its shared frames), sized by the caller.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use fanout_protocol::cursor::Cursor;
use fanout_protocol::server::GapReason;
use tokio::time::Instant;

/// How much a window keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLimits {
    /// Events older than this are forgotten.
    pub max_age: Duration,
    /// The items' bytes kept at most (as their sizes were given).
    pub max_bytes: usize,
    /// Events and gaps kept at most.
    pub max_entries: usize,
}

impl Default for WindowLimits {
    fn default() -> Self {
        WindowLimits {
            max_age: Duration::from_secs(120),
            max_bytes: 4 << 20,
            max_entries: 20_000,
        }
    }
}

/// A loss the window knows of: events between `since` and `until` may never have arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// Why.
    pub reason: GapReason,
    /// Since when events may be missing.
    pub since: SystemTime,
    /// Until when.
    pub until: SystemTime,
}

/// What a gap costs in the byte count.
const GAP_SIZE: usize = 64;

#[derive(Debug)]
enum Entry<E> {
    Event(E),
    Gap(Gap),
}

#[derive(Debug)]
struct Slot<E> {
    offset: u64,
    at: Instant,
    size: usize,
    entry: Entry<E>,
}

/// The answer to a resume.
#[derive(Debug, PartialEq, Eq)]
pub enum Resume<'a, E> {
    /// Nothing after the cursor is missing: these are all the events after it, in order.
    Recovered(Vec<(Cursor, &'a E)>),
    /// Contiguity cannot be proven; these are the gaps the window knows of after the cursor.
    Lost(Vec<(Cursor, Gap)>),
}

/// One customer's recent events and gaps.
#[derive(Debug)]
pub struct Window<E> {
    epoch: u64,
    /// The offset the next entry gets.
    next: u64,
    slots: VecDeque<Slot<E>>,
    bytes: usize,
    limits: WindowLimits,
}

impl<E> Window<E> {
    /// An empty window of `epoch` (which must not have been used before for this customer
    /// on this node: a random one will do).
    pub fn new(epoch: u64, limits: WindowLimits) -> Self {
        Window {
            epoch,
            next: 0,
            slots: VecDeque::new(),
            bytes: 0,
            limits,
        }
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The cursor of the latest entry: a client holding it has everything so far. `None`
    /// before the first entry.
    pub fn latest(&self) -> Option<Cursor> {
        self.next.checked_sub(1).map(|offset| self.cursor(offset))
    }

    /// The cursor the next entry will get.
    pub fn next_cursor(&self) -> Cursor {
        self.cursor(self.next)
    }

    fn cursor(&self, offset: u64) -> Cursor {
        Cursor {
            epoch: self.epoch,
            offset,
        }
    }

    /// The offset of the oldest entry kept (`next` when none is).
    fn first(&self) -> u64 {
        self.slots.front().map_or(self.next, |slot| slot.offset)
    }

    fn push(&mut self, entry: Entry<E>, size: usize, now: Instant) -> Cursor {
        let offset = self.next;
        self.next += 1;
        self.bytes += size;
        self.slots.push_back(Slot {
            offset,
            at: now,
            size,
            entry,
        });
        self.forget(now);
        self.cursor(offset)
    }

    /// Makes `cursor` the next entry's, for a stream numbered elsewhere (a cluster's owner):
    /// of another epoch, or past the next offset (entries never seen here), everything kept
    /// is forgotten, since nothing before `cursor` can be vouched for any more. Answers
    /// whether anything changed; a cursor at or before the next one changes nothing.
    pub fn jump(&mut self, cursor: Cursor) -> bool {
        if cursor.epoch == self.epoch && cursor.offset <= self.next {
            return false;
        }
        self.epoch = cursor.epoch;
        self.next = cursor.offset;
        self.slots.clear();
        self.bytes = 0;
        true
    }

    /// Adds an event whose item costs `size` bytes; answers its cursor.
    pub fn push_event(&mut self, item: E, size: usize, now: Instant) -> Cursor {
        self.push(Entry::Event(item), size, now)
    }

    /// Records a loss; answers the gap's cursor (a resume from it misses nothing).
    pub fn push_gap(&mut self, gap: Gap, now: Instant) -> Cursor {
        self.push(Entry::Gap(gap), GAP_SIZE, now)
    }

    /// Forgets the oldest entries past the limits at `now`.
    pub fn forget(&mut self, now: Instant) {
        while let Some(oldest) = self.slots.front() {
            let too_old = now.saturating_duration_since(oldest.at) > self.limits.max_age;
            let too_big = self.bytes > self.limits.max_bytes;
            let too_many = self.slots.len() > self.limits.max_entries;
            if !(too_old || too_big || too_many) {
                break;
            }
            self.bytes -= oldest.size;
            self.slots.pop_front();
        }
    }

    /// Forgets the oldest entry, if any (to keep a budget shared by many windows).
    pub fn forget_oldest(&mut self) {
        if let Some(oldest) = self.slots.pop_front() {
            self.bytes -= oldest.size;
        }
    }

    /// Counts `extra` more bytes for the entry at `cursor` (its item grew), if it is kept.
    /// The limits apply from the next push or [`Window::forget`].
    pub fn grow(&mut self, cursor: Cursor, extra: usize) {
        if cursor.epoch != self.epoch || cursor.offset < self.first() {
            return;
        }
        let index = usize::try_from(cursor.offset - self.first()).unwrap_or(usize::MAX);
        if let Some(slot) = self.slots.get_mut(index) {
            slot.size += extra;
            self.bytes += extra;
        }
    }

    /// What a client that handled everything up to `since` is owed.
    pub fn resume(&self, since: Cursor) -> Resume<'_, E> {
        let of_this_stream = since.epoch == self.epoch && since.offset < self.next;
        if !of_this_stream {
            // Another epoch (another stream, an earlier life of this one) or an offset never
            // given out: nothing is known about what it missed.
            return Resume::Lost(Vec::new());
        }
        let after = self
            .slots
            .iter()
            .skip_while(|slot| slot.offset <= since.offset);
        // Everything after `since` is still here only if the oldest entry kept is no later
        // than the one right after it.
        let complete = since.offset + 1 >= self.first();
        let gaps: Vec<(Cursor, Gap)> = after
            .clone()
            .filter_map(|slot| match &slot.entry {
                Entry::Gap(gap) => Some((self.cursor(slot.offset), *gap)),
                Entry::Event(_) => None,
            })
            .collect();
        if !complete || !gaps.is_empty() {
            return Resume::Lost(gaps);
        }
        Resume::Recovered(
            after
                .filter_map(|slot| match &slot.entry {
                    Entry::Event(item) => Some((self.cursor(slot.offset), item)),
                    Entry::Gap(_) => None,
                })
                .collect(),
        )
    }

    /// The items' bytes kept (gaps count [`GAP_SIZE`] each).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries (events and gaps) kept.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests;
