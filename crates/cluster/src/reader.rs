//! How a node takes one customer's records from the log into the customer's stream: the
//! reader side of fencing and continuity. Sans-IO: records and time come in as arguments,
//! and what the stream must do goes out through [`Stream`].
//!
//! - A record passes the customer's [`TermFence`]: its owner term (the revision of the
//!   customer's ownership record) and its number in the term only move forward. A record of
//!   an older term, or one already taken, is dropped.
//! - Records of the current term that never arrived (lost by NATS, evicted, purged, or
//!   refused) make a **hole**: the next entry that takes a cursor is preceded by a gap, in the
//!   place of the last entry this node never had, so that the gap comes before the first
//!   event after the loss and a client resuming from before it is told.
//! - Coverage read while a hole is open is held and takes effect where the gap is told: a
//!   client resuming from the gap's cursor misses nothing, one resuming from before it is
//!   told.
//! - A term read from its beginning needs no gap: its owner tells the change itself.

use std::time::SystemTime;

use fanout_protocol::cursor::Cursor;
use fanout_protocol::prefix::Prefix;
use fanout_protocol::server::GapReason;
use fanout_protocol::upstream::Event;

use crate::fence::{Admit, TermFence};
use crate::log::{Record, Stamp};

/// The largest jump in a customer's term or record number taken as real; past it, a record
/// is dropped as insane (only a broken owner could write one: records are authenticated).
const MAX_JUMP: u64 = 1 << 40;

/// What the reader drives: a customer's stream (its hub, on a node).
pub trait Stream {
    /// The cursor the next entry would take.
    fn next_cursor(&self) -> Cursor;
    /// The next entry takes `at`.
    fn renumber(&mut self, at: Cursor);
    /// These upstream prefixes are covered from the next entry on.
    fn covered(&mut self, prefixes: &[Prefix]);
    /// These are not any more.
    fn uncovered(&mut self, prefixes: &[Prefix]);
    /// An event at `at`: sent to the sessions when `live`, else only kept for resumes.
    fn event(&mut self, event: Event, at: Cursor, live: bool);
    /// A gap at `at`, the same way.
    fn gap(
        &mut self,
        reason: GapReason,
        since: SystemTime,
        until: SystemTime,
        at: Cursor,
        live: bool,
    );
}

/// One customer's reader on one node.
#[derive(Debug)]
pub struct CustomerReader {
    fence: TermFence,
    /// The owner's coverage, as last read.
    covered: Vec<Prefix>,
    /// Records of the current term never arrived: the next entry may follow a loss.
    hole: bool,
    /// Coverage read while the hole is open: applied where it is told.
    adopt: Option<Vec<Prefix>>,
    /// When the last record was read.
    last_read: SystemTime,
    /// Whether the owner's coverage is known (read from the term's beginning, or stated).
    known: bool,
}

/// Whether a record was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Into the stream.
    Taken,
    /// Of an older term, already taken, or insane.
    Dropped,
}

impl CustomerReader {
    /// A reader that has read nothing, at `now`.
    pub fn new(now: SystemTime) -> Self {
        CustomerReader {
            fence: TermFence::new(),
            covered: Vec::new(),
            hole: false,
            adopt: None,
            last_read: now,
            known: false,
        }
    }

    /// Whether the owner's coverage is known: read from its term's beginning, or stated
    /// since; if not, the owner is asked to state it again.
    pub fn knows_coverage(&self) -> bool {
        self.known
    }

    /// Records were lost on their way here (this node could not keep up): whatever comes
    /// next may follow a loss.
    pub fn lost(&mut self, stream: &mut impl Stream) {
        self.uncover(stream);
        self.hole = true;
        self.adopt = None;
        self.known = false;
    }

    /// The newest owner term read.
    pub fn term(&self) -> Option<u64> {
        self.fence.term()
    }

    /// When the last record was read.
    pub fn last_read(&self) -> SystemTime {
        self.last_read
    }

    /// The owner's coverage, as last read.
    pub fn coverage(&self) -> &[Prefix] {
        &self.covered
    }

    /// Forgets the owner's coverage (its owner is gone).
    pub fn uncover(&mut self, stream: &mut impl Stream) {
        if !self.covered.is_empty() {
            stream.uncovered(&std::mem::take(&mut self.covered));
        }
    }

    /// Back on the log after serving the customer otherwise (degraded mode): whatever comes
    /// next follows a loss. The caller has uncovered what it served with.
    pub fn rejoin(&mut self, now: SystemTime) {
        self.fence = TermFence::new();
        self.covered.clear();
        self.adopt = None;
        self.hole = true;
        self.last_read = now;
        self.known = false;
    }

    /// Takes one record, read at `now`: into the sessions when `live`, else only into the
    /// window.
    pub fn read(
        &mut self,
        stamp: Stamp,
        record: Record,
        live: bool,
        now: SystemTime,
        stream: &mut impl Stream,
    ) -> Read {
        if let Some(term) = self.fence.term()
            && stamp.term > term.saturating_add(MAX_JUMP)
        {
            return Read::Dropped;
        }
        match self.fence.judge(stamp.term, stamp.seq) {
            Admit::Drop => return Read::Dropped,
            Admit::Skipped { from, to } if to - from > MAX_JUMP => return Read::Dropped,
            _ => {}
        }
        match self.fence.admit(stamp.term, stamp.seq) {
            Admit::Drop => return Read::Dropped,
            Admit::NewTerm { .. } => {
                self.uncover(stream);
                self.adopt = None;
                self.known = false;
                if stamp.seq != 0 {
                    // Not read from its beginning: what came before may be missing here.
                    self.hole = true;
                }
            }
            Admit::Skipped { .. } => {
                // Lost records may have changed the coverage.
                self.uncover(stream);
                self.hole = true;
                self.adopt = None;
                self.known = false;
            }
            Admit::Next => {}
        }
        match record {
            Record::Begin { epoch, node } => {
                // A term read from its beginning: its owner tells the change itself.
                self.hole = false;
                self.adopt = None;
                let _ = node;
                self.known = true;
                stream.renumber(Cursor { epoch, offset: 0 });
            }
            Record::End => self.uncover(stream),
            Record::Covered(prefixes, next) if self.hole => {
                // In force from where the loss is told, which can be now: the record says
                // where the owner's numbering stands.
                self.adopt = Some(prefixes);
                if !self.tell_hole(next, now, live, stream)
                    && let Some(prefixes) = self.adopt.take()
                {
                    self.adopt(Some(prefixes), stream);
                }
            }
            Record::Covered(prefixes, _) => {
                self.known = true;
                let gone: Vec<Prefix> = self
                    .covered
                    .iter()
                    .filter(|p| !prefixes.contains(p))
                    .cloned()
                    .collect();
                if !gone.is_empty() {
                    stream.uncovered(&gone);
                }
                stream.covered(&prefixes);
                self.covered = prefixes;
            }
            Record::Event { cursor, event } => {
                if !self.tell_hole(cursor, now, live, stream) {
                    return Read::Dropped;
                }
                stream.event(event, cursor, live);
            }
            Record::Gap {
                cursor,
                reason,
                since,
                until,
            } => {
                if !self.tell_hole(cursor, now, live, stream) {
                    return Read::Dropped;
                }
                stream.gap(reason, since, until, cursor, live);
            }
        }
        self.last_read = now;
        Read::Taken
    }

    /// Before the entry at `cursor`: after records were lost, a gap in the place of the last
    /// entry missing before it (which this node never had). Answers whether the entry can
    /// take `cursor` (not if the stream is past it already).
    fn tell_hole(
        &mut self,
        cursor: Cursor,
        now: SystemTime,
        live: bool,
        stream: &mut impl Stream,
    ) -> bool {
        let adopt = self.adopt.take();
        let next = stream.next_cursor();
        if !std::mem::take(&mut self.hole) {
            return next.epoch != cursor.epoch || next.offset <= cursor.offset;
        }
        if cursor.offset == 0 {
            // The term's first entry: nothing of it was missed, and its owner tells the
            // change; coverage written before it holds from it.
            stream.renumber(cursor);
            self.adopt(adopt, stream);
            return true;
        }
        if next.epoch == cursor.epoch && next.offset > cursor.offset {
            // Already past it: nothing of this term's numbering was missed up to here.
            return false;
        }
        if next.epoch == cursor.epoch && next.offset == cursor.offset {
            // Nothing that takes a cursor was lost: only records that do not.
            self.adopt(adopt, stream);
            return true;
        }
        let at = Cursor {
            epoch: cursor.epoch,
            offset: cursor.offset - 1,
        };
        stream.renumber(at);
        // The owner's coverage, in force since before the gap: a client resuming from the
        // gap's cursor misses nothing.
        self.adopt(adopt, stream);
        stream.gap(GapReason::ClusterDegraded, self.last_read, now, at, live);
        true
    }

    fn adopt(&mut self, prefixes: Option<Vec<Prefix>>, stream: &mut impl Stream) {
        if let Some(prefixes) = prefixes {
            self.known = true;
            stream.covered(&prefixes);
            self.covered = prefixes;
        }
    }
}

/// What a node knows of each owner node's batches: its newest node term, the last batch
/// taken in it, and the newest term fenced. Repeats, batches of an older node term, and
/// batches of a fenced term are dropped whole before their records are looked at.
#[derive(Debug, Default)]
pub struct Owners {
    by_node: std::collections::HashMap<String, OwnerState>,
}

#[derive(Debug, Default, Clone, Copy)]
struct OwnerState {
    term: u64,
    seq: Option<u64>,
    fenced: u64,
}

impl Owners {
    /// Whether to take the batch `seq` of `node`'s term `term`.
    pub fn admit(&mut self, node: &str, term: u64, seq: u64) -> bool {
        let state = self.by_node.entry(node.to_owned()).or_default();
        if term <= state.fenced || term < state.term {
            return false;
        }
        if term > state.term {
            *state = OwnerState {
                term,
                seq: Some(seq),
                fenced: state.fenced,
            };
            return true;
        }
        if state.seq.is_some_and(|last| seq <= last) {
            return false;
        }
        state.seq = Some(seq);
        true
    }

    /// No batch of `node`'s term `term` (or older) is taken from now on.
    pub fn fence(&mut self, node: &str, term: u64) {
        let state = self.by_node.entry(node.to_owned()).or_default();
        state.fenced = state.fenced.max(term);
    }

    /// The newest term of `node` fenced.
    pub fn fenced(&self, node: &str) -> u64 {
        self.by_node.get(node).map_or(0, |s| s.fenced)
    }

    /// Forgets everything (the log was made anew, or this node rejoins).
    pub fn clear(&mut self) {
        self.by_node.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::{Duration, UNIX_EPOCH};

    use bytes::Bytes;
    use fanout_protocol::Topic;
    use fanout_protocol::upstream::Shape;
    use proptest::prelude::*;
    use uuid::Uuid;

    use super::*;

    /// A customer's stream as a hub keeps it: its numbering, its window, what sessions got.
    #[derive(Debug, Default)]
    struct Model {
        next: Option<Cursor>,
        /// Every entry taken, in order: (cursor, event id or None for a gap, live).
        window: Vec<(Cursor, Option<String>, bool)>,
        covered: BTreeSet<String>,
    }

    impl Stream for Model {
        fn next_cursor(&self) -> Cursor {
            self.next.unwrap_or(Cursor {
                epoch: 0,
                offset: 0,
            })
        }
        fn renumber(&mut self, at: Cursor) {
            self.next = Some(at);
        }
        fn covered(&mut self, prefixes: &[Prefix]) {
            self.covered
                .extend(prefixes.iter().map(|p| p.as_str().to_owned()));
        }
        fn uncovered(&mut self, prefixes: &[Prefix]) {
            for p in prefixes {
                self.covered.remove(p.as_str());
            }
        }
        fn event(&mut self, event: Event, at: Cursor, live: bool) {
            self.take(
                at,
                Some(String::from_utf8_lossy(&event.data).into_owned()),
                live,
            );
        }
        fn gap(&mut self, _: GapReason, _: SystemTime, _: SystemTime, at: Cursor, live: bool) {
            self.take(at, None, live);
        }
    }

    impl Model {
        fn take(&mut self, at: Cursor, id: Option<String>, live: bool) {
            let next = self.next_cursor();
            assert!(
                at.epoch != next.epoch || at.offset >= next.offset,
                "{at:?} taken after {next:?}"
            );
            self.window.push((at, id, live));
            self.next = Some(Cursor {
                epoch: at.epoch,
                offset: at.offset + 1,
            });
        }
    }

    fn customer() -> Uuid {
        Uuid::parse_str("12345678-1234-1234-1234-123456789012").expect("uuid")
    }

    fn event(id: &str) -> Event {
        let c = customer();
        Event {
            shape: Shape::Envelope,
            event_type: "call_created".into(),
            timestamp: "t".into(),
            customer_id: c,
            topics: vec![Topic::parse(&format!("customer_id:{c}:call:x")).expect("topic")],
            fresh_from: 0,
            data: Bytes::from(id.to_owned()),
        }
    }

    /// What an honest owner writes: `terms` terms, each a Begin and then `entries` events,
    /// gaps and coverage records.
    fn honest(terms: &[(u64, Vec<u8>)]) -> Vec<(Stamp, Record)> {
        let mut out = Vec::new();
        for (term, entries) in terms {
            let epoch = 1000 + term;
            out.push((
                Stamp {
                    term: *term,
                    seq: 0,
                },
                Record::Begin {
                    epoch,
                    node: "n".into(),
                },
            ));
            let mut offset = 0;
            for (i, kind) in entries.iter().enumerate() {
                let stamp = Stamp {
                    term: *term,
                    seq: i as u64 + 1,
                };
                let cursor = Cursor { epoch, offset };
                let record = match kind % 4 {
                    0 | 1 => {
                        offset += 1;
                        Record::Event {
                            cursor,
                            event: event(&format!("{term}-{}", cursor.offset)),
                        }
                    }
                    2 => {
                        offset += 1;
                        Record::Gap {
                            cursor,
                            reason: GapReason::UpstreamReconnect,
                            since: UNIX_EPOCH,
                            until: UNIX_EPOCH,
                        }
                    }
                    _ => Record::Covered(vec![Prefix::whole(customer())], cursor),
                };
                out.push((stamp, record));
            }
        }
        out
    }

    /// Faults the bus may bring: lose, repeat, move later (late delivery or reordering),
    /// evict the oldest.
    #[derive(Debug, Clone)]
    enum Fault {
        Lose(usize),
        Repeat(usize, usize),
        Late(usize, usize),
        Evict(usize),
    }

    fn fault() -> impl Strategy<Value = Fault> {
        prop_oneof![
            (0usize..64).prop_map(Fault::Lose),
            (0usize..64, 0usize..64).prop_map(|(a, b)| Fault::Repeat(a, b)),
            (0usize..64, 0usize..64).prop_map(|(a, b)| Fault::Late(a, b)),
            (0usize..8).prop_map(Fault::Evict),
        ]
    }

    fn apply(mut log: Vec<(Stamp, Record)>, faults: &[Fault]) -> Vec<(Stamp, Record)> {
        for fault in faults {
            if log.is_empty() {
                break;
            }
            let n = log.len();
            match *fault {
                Fault::Lose(i) => {
                    log.remove(i % n);
                }
                Fault::Repeat(i, j) => {
                    let copy = log[i % n].clone();
                    let at = (i % n + 1 + j % n).min(n);
                    log.insert(at, copy);
                }
                Fault::Late(i, j) => {
                    let moved = log.remove(i % n);
                    let at = (i % n + j % n).min(n - 1);
                    log.insert(at, moved);
                }
                Fault::Evict(k) => {
                    log.drain(..k.min(n));
                }
            }
        }
        log
    }

    proptest! {
        /// Whatever the bus loses, repeats, reorders or evicts: within an epoch the window's
        /// cursors only grow; every event of the honest log that a session did not get, but
        /// after which it got something of the same epoch, is followed first by a gap (no
        /// wrong `recovered: true`, and the gap before the first event after the loss); and
        /// no event of an older term follows one of a newer term.
        #[test]
        fn no_loss_goes_untold_and_no_old_term_follows_a_new_one(
            terms in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..12), 1..4),
            faults in proptest::collection::vec(fault(), 0..6),
            history in 0usize..6,
        ) {
            let terms: Vec<(u64, Vec<u8>)> = terms
                .into_iter()
                .enumerate()
                .map(|(i, entries)| (i as u64 * 3 + 2, entries))
                .collect();
            let log = honest(&terms);
            let delivered = apply(log.clone(), &faults);
            let mut reader = CustomerReader::new(UNIX_EPOCH);
            let mut model = Model::default();
            let mut last_term_event = 0;
            for (i, (stamp, record)) in delivered.into_iter().enumerate() {
                let is_event = matches!(record, Record::Event { .. });
                let taken = reader.read(stamp, record, i >= history, UNIX_EPOCH + Duration::from_secs(i as u64), &mut model);
                if taken == Read::Taken && is_event {
                    prop_assert!(stamp.term >= last_term_event, "term {} after {}", stamp.term, last_term_event);
                    last_term_event = stamp.term;
                }
            }
            // Cursors grow within an epoch.
            for pair in model.window.windows(2) {
                let (a, b) = (pair[0].0, pair[1].0);
                if a.epoch == b.epoch {
                    prop_assert!(b.offset > a.offset, "{:?} then {:?}", a, b);
                }
            }
            // Every honest entry that was missed is followed, first, by a gap.
            let taken: BTreeSet<Cursor> = model.window.iter().map(|(c, _, _)| *c).collect();
            for (_, record) in &log {
                let (Record::Event { cursor, .. } | Record::Gap { cursor, .. }) = record else {
                    continue;
                };
                if taken.contains(cursor) {
                    continue;
                }
                let after = model
                    .window
                    .iter()
                    .find(|(c, _, _)| c.epoch == cursor.epoch && c.offset > cursor.offset);
                if let Some((at, id, _)) = after {
                    prop_assert!(id.is_none(), "{:?} missed, then {:?} at {:?} with no gap first", cursor, id, at);
                }
            }
            // What was taken at a cursor is what the owner wrote there.
            for (at, id, _) in &model.window {
                if let Some(id) = id {
                    let term = at.epoch - 1000;
                    prop_assert_eq!(id, &format!("{term}-{}", at.offset));
                }
            }
        }
    }

    fn begin(term: u64) -> (Stamp, Record) {
        (
            Stamp { term, seq: 0 },
            Record::Begin {
                epoch: 1000 + term,
                node: "n".into(),
            },
        )
    }

    fn ev(term: u64, seq: u64, offset: u64) -> (Stamp, Record) {
        (
            Stamp { term, seq },
            Record::Event {
                cursor: Cursor {
                    epoch: 1000 + term,
                    offset,
                },
                event: event(&format!("{term}-{offset}")),
            },
        )
    }

    #[test]
    fn a_loss_is_told_in_the_place_of_the_last_entry_missed() {
        let mut reader = CustomerReader::new(UNIX_EPOCH);
        let mut model = Model::default();
        for (stamp, record) in [begin(2), ev(2, 1, 0), ev(2, 4, 3)] {
            reader.read(stamp, record, true, UNIX_EPOCH, &mut model);
        }
        let cursors: Vec<(u64, bool)> = model
            .window
            .iter()
            .map(|(c, id, _)| (c.offset, id.is_some()))
            .collect();
        assert_eq!(cursors, [(0, true), (2, false), (3, true)]);
    }

    #[test]
    fn coverage_read_inside_a_hole_tells_the_gap_in_its_place_and_holds_from_it() {
        let c = customer();
        let mut reader = CustomerReader::new(UNIX_EPOCH);
        let mut model = Model::default();
        for (stamp, record) in [begin(2), ev(2, 1, 0)] {
            reader.read(stamp, record, true, UNIX_EPOCH, &mut model);
        }
        // Seq 2 (the event at 1) lost; the coverage at 3 says the next entry takes 2.
        reader.read(
            Stamp { term: 2, seq: 3 },
            Record::Covered(
                vec![Prefix::whole(c)],
                Cursor {
                    epoch: 1002,
                    offset: 2,
                },
            ),
            true,
            UNIX_EPOCH,
            &mut model,
        );
        assert_eq!(model.covered.len(), 1);
        assert!(reader.knows_coverage());
        let told: Vec<(u64, bool)> = model
            .window
            .iter()
            .map(|(c, id, _)| (c.offset, id.is_some()))
            .collect();
        assert_eq!(
            told,
            [(0, true), (1, false)],
            "the gap in the place of the lost event"
        );
        let (stamp, record) = ev(2, 4, 2);
        assert_eq!(
            reader.read(stamp, record, true, UNIX_EPOCH, &mut model),
            Read::Taken
        );
        assert_eq!(model.window.len(), 3);
    }

    #[test]
    fn owners_drop_repeats_old_terms_and_fenced_terms() {
        let mut owners = Owners::default();
        assert!(owners.admit("a", 5, 0));
        assert!(owners.admit("a", 5, 1));
        assert!(!owners.admit("a", 5, 1), "a repeat");
        assert!(owners.admit("a", 5, 4), "after a loss");
        assert!(owners.admit("a", 7, 0), "a newer term");
        assert!(!owners.admit("a", 5, 9), "an older term");
        owners.fence("a", 7);
        assert!(!owners.admit("a", 7, 1), "fenced");
        assert!(owners.admit("a", 8, 0));
        assert!(owners.admit("b", 1, 0), "each node on its own");
    }

    #[test]
    fn insane_jumps_are_dropped() {
        let mut reader = CustomerReader::new(UNIX_EPOCH);
        let mut model = Model::default();
        for (stamp, record) in [begin(2), ev(2, 1, 0)] {
            reader.read(stamp, record, true, UNIX_EPOCH, &mut model);
        }
        let (stamp, record) = ev(1 << 62, 5, 0);
        assert_eq!(
            reader.read(stamp, record, true, UNIX_EPOCH, &mut model),
            Read::Dropped
        );
        // The real next record still passes.
        let (stamp, record) = ev(2, 2, 1);
        assert_eq!(
            reader.read(stamp, record, true, UNIX_EPOCH, &mut model),
            Read::Taken
        );
    }
}
