//! The records of the fleet's event log: what a customer's owner writes, and every node
//! that hosts the customer reads. Their wire format is [`crate::wire`]'s: many records,
//! of many customers, per message.
//!
//! A customer's records carry its owner term (the revision of its ownership record) and a
//! number in it (0 for the term's beginning, then one more per record): the reader-side fence
//! ([`crate::TermFence`]). Events and gaps carry their cursors besides: the owner numbers
//! the stream, and every node gives the same cursor to the same event.

use std::time::SystemTime;

use fanout_protocol::cursor::Cursor;
use fanout_protocol::prefix::Prefix;
use fanout_protocol::server::GapReason;
use fanout_protocol::upstream::Event;

/// Where a record stands in its owner's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The owner's term.
    pub term: u64,
    /// The record's number in the term, from 0 (the beginning).
    pub seq: u64,
}

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A term began: its events' cursors are of `epoch`.
    Begin {
        /// The epoch of the term's cursors.
        epoch: u64,
        /// The owner's node id.
        node: String,
    },
    /// The term ended: its owner handed the customer over.
    End,
    /// An event at `cursor`.
    Event {
        /// Its position in the customer's stream.
        cursor: Cursor,
        /// The event.
        event: Event,
    },
    /// A loss, at `cursor`.
    Gap {
        /// Its position in the customer's stream.
        cursor: Cursor,
        /// Why.
        reason: GapReason,
        /// Since when events may be missing.
        since: SystemTime,
        /// Until when.
        until: SystemTime,
    },
    /// The upstream prefixes covered from here on (all of them: any other is not), and the
    /// cursor the term's next entry takes (so that a reader that lost records can tell the
    /// loss here, in its place).
    Covered(Vec<Prefix>, Cursor),
}
