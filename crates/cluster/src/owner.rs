//! How an owner writes one customer's term: what its upstream hands over, stamped and
//! numbered into records of the log. Sans-IO: items and time come in, records go out.
//!
//! - Every record takes the next number of the term ([`Stamp`]); every event and gap the
//!   next cursor of the term's epoch.
//! - A new owner owes the customer's sessions the change of owner (`owner_failover`,
//!   `owner_handoff`). It tells it once its upstream covers what it was asked for (or past
//!   `hold_until` with what it covers then), so that whatever VoIPBIN sent before is inside
//!   the gap: first the gap (docs/protocol.md: before the first event after the loss), then
//!   the events that arrived meanwhile, then the coverage (a resume is judged on it, so none
//!   of those events, received while the coverage was not whole, is ever claimed complete).
//!   Events held meanwhile are bounded; past the bound they fall inside the gap (counted).
//! - Coverage is written whole whenever it changes, and again on request (a node whose
//!   reader lost it).

use std::collections::BTreeSet;
use std::time::{Instant, SystemTime};

use fanout_protocol::cursor::Cursor;
use fanout_protocol::prefix::Prefix;
use fanout_protocol::server::GapReason;
use fanout_protocol::upstream::Event;

use crate::log::{Record, Stamp};

/// What an owner's upstream hands over.
#[derive(Debug)]
pub enum Item {
    /// An event.
    Event(Event),
    /// A loss between two connections.
    Gap(SystemTime, SystemTime),
    /// These prefixes are covered from now on.
    Covered(Vec<Prefix>),
    /// These are not any more.
    Uncovered(Vec<Prefix>),
}

/// The most events held while the owner change is owed.
pub const MAX_HELD: usize = fanout_upstream::link::MAX_HELD_EVENTS;

/// One customer's term, as its owner writes it.
#[derive(Debug)]
pub struct OwnedTerm {
    term: u64,
    epoch: u64,
    seq: u64,
    offset: u64,
    covered: BTreeSet<Prefix>,
    /// What the upstream was asked for.
    wanted: BTreeSet<Prefix>,
    /// The owner change still to tell: why, and since when events may be missing.
    owed: Option<(GapReason, SystemTime)>,
    held: Vec<Item>,
    hold_until: Instant,
    /// Events that fell inside the owed gap.
    dropped: u64,
}

impl OwnedTerm {
    /// The term `term` (the revision of the customer's ownership record) begins, numbered in
    /// `epoch`, owned by `node`: its first record. `owed` is the change to tell, if another
    /// owner came before.
    pub fn begin(
        term: u64,
        epoch: u64,
        node: &str,
        owed: Option<(GapReason, SystemTime)>,
        hold_until: Instant,
        out: &mut Vec<(Stamp, Record)>,
    ) -> OwnedTerm {
        let mut owned = OwnedTerm {
            term,
            epoch,
            seq: 0,
            offset: 0,
            covered: BTreeSet::new(),
            wanted: BTreeSet::new(),
            owed,
            held: Vec::new(),
            hold_until,
            dropped: 0,
        };
        owned.write(
            Record::Begin {
                epoch,
                node: node.to_owned(),
            },
            out,
        );
        owned
    }

    /// Its term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Events that fell inside the owed gap so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// When [`OwnedTerm::poll`] has something to do, if ever.
    pub fn due(&self) -> Option<Instant> {
        self.owed.map(|_| self.hold_until)
    }

    fn write(&mut self, record: Record, out: &mut Vec<(Stamp, Record)>) {
        out.push((
            Stamp {
                term: self.term,
                seq: self.seq,
            },
            record,
        ));
        self.seq += 1;
    }

    fn next_cursor(&mut self) -> Cursor {
        let cursor = Cursor {
            epoch: self.epoch,
            offset: self.offset,
        };
        self.offset += 1;
        cursor
    }

    fn coverage(&mut self, out: &mut Vec<(Stamp, Record)>) {
        let next = Cursor {
            epoch: self.epoch,
            offset: self.offset,
        };
        let record = Record::Covered(self.covered.iter().cloned().collect(), next);
        self.write(record, out);
    }

    /// Takes one item of the upstream's.
    pub fn take(&mut self, item: Item, now: Instant, out: &mut Vec<(Stamp, Record)>) {
        if self.owed.is_some() {
            self.hold(item);
            self.poll(now, out);
            return;
        }
        self.append(item, out);
    }

    fn append(&mut self, item: Item, out: &mut Vec<(Stamp, Record)>) {
        match item {
            Item::Event(event) => {
                let cursor = self.next_cursor();
                self.write(Record::Event { cursor, event }, out);
            }
            Item::Gap(since, until) => {
                let cursor = self.next_cursor();
                let record = Record::Gap {
                    cursor,
                    reason: GapReason::UpstreamReconnect,
                    since,
                    until,
                };
                self.write(record, out);
            }
            // Written only when the set changes: an upstream confirms what it covers at
            // every ping, and an idle fleet writes nothing.
            Item::Covered(prefixes) => {
                let before = self.covered.len();
                self.covered.extend(prefixes);
                if self.covered.len() != before {
                    self.coverage(out);
                }
            }
            Item::Uncovered(prefixes) => {
                let before = self.covered.len();
                for prefix in &prefixes {
                    self.covered.remove(prefix);
                }
                if self.covered.len() != before {
                    self.coverage(out);
                }
            }
        }
    }

    fn hold(&mut self, item: Item) {
        match item {
            Item::Covered(prefixes) => self.covered.extend(prefixes),
            Item::Uncovered(prefixes) => {
                for prefix in &prefixes {
                    self.covered.remove(prefix);
                }
            }
            item if self.held.len() < MAX_HELD => self.held.push(item),
            _ => self.dropped += 1,
        }
    }

    /// The upstream is now asked for `wanted`.
    pub fn want(&mut self, wanted: BTreeSet<Prefix>, now: Instant, out: &mut Vec<(Stamp, Record)>) {
        self.wanted = wanted;
        self.poll(now, out);
    }

    /// Tells the owner change once the upstream covers what it was asked for, or at
    /// `hold_until` with what it covers then.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<(Stamp, Record)>) {
        let Some((reason, since)) = self.owed else {
            return;
        };
        let covers_all = self.wanted.iter().all(|p| self.covered.contains(p));
        if !covers_all && now < self.hold_until {
            return;
        }
        self.owed = None;
        let cursor = self.next_cursor();
        self.write(
            Record::Gap {
                cursor,
                reason,
                since,
                until: SystemTime::now(),
            },
            out,
        );
        for item in std::mem::take(&mut self.held) {
            self.append(item, out);
        }
        self.coverage(out);
    }

    /// Writes the coverage again (a reader lost it).
    pub fn restate(&mut self, out: &mut Vec<(Stamp, Record)>) {
        if self.owed.is_none() {
            self.coverage(out);
        }
    }

    /// The term ends in order: a handoff.
    pub fn end(mut self, out: &mut Vec<(Stamp, Record)>) {
        self.write(Record::End, out);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use fanout_protocol::Topic;
    use fanout_protocol::upstream::Shape;
    use uuid::Uuid;

    use super::*;

    fn c() -> Uuid {
        Uuid::parse_str("12345678-1234-1234-1234-123456789012").expect("uuid")
    }

    fn event(id: &str) -> Item {
        Item::Event(Event {
            shape: Shape::Envelope,
            event_type: "call_created".into(),
            timestamp: "t".into(),
            customer_id: c(),
            topics: vec![Topic::parse(&format!("customer_id:{}:call:x", c())).expect("topic")],
            fresh_from: 0,
            data: Bytes::from(id.to_owned()),
        })
    }

    fn kinds(out: &[(Stamp, Record)]) -> Vec<String> {
        out.iter()
            .map(|(stamp, record)| {
                let what = match record {
                    Record::Begin { .. } => "begin".to_owned(),
                    Record::End => "end".to_owned(),
                    Record::Event { cursor, event } => {
                        format!(
                            "ev{}@{}",
                            String::from_utf8_lossy(&event.data),
                            cursor.offset
                        )
                    }
                    Record::Gap { cursor, reason, .. } => {
                        format!("gap:{}@{}", reason.as_str(), cursor.offset)
                    }
                    Record::Covered(p, _) => format!("cov{}", p.len()),
                };
                format!("{}:{what}", stamp.seq)
            })
            .collect()
    }

    #[test]
    fn a_first_owner_writes_straight_on() {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut term = OwnedTerm::begin(7, 1, "n", None, now, &mut out);
        term.take(Item::Covered(vec![Prefix::whole(c())]), now, &mut out);
        term.take(event("a"), now, &mut out);
        term.take(
            Item::Gap(SystemTime::now(), SystemTime::now()),
            now,
            &mut out,
        );
        term.end(&mut out);
        assert_eq!(
            kinds(&out),
            [
                "0:begin",
                "1:cov1",
                "2:eva@0",
                "3:gap:upstream_reconnect@1",
                "4:end"
            ]
        );
        assert!(out.iter().all(|(s, _)| s.term == 7));
    }

    #[test]
    fn a_new_owner_tells_the_change_once_covered_before_what_waited() {
        let now = Instant::now();
        let mut out = Vec::new();
        let owed = Some((GapReason::OwnerFailover, SystemTime::now()));
        let mut term = OwnedTerm::begin(9, 1, "n", owed, now + Duration::from_secs(5), &mut out);
        let whole = Prefix::whole(c());
        term.want([whole.clone()].into(), now, &mut out);
        term.take(event("early"), now, &mut out);
        assert_eq!(kinds(&out), ["0:begin"], "held until covered");
        term.take(Item::Covered(vec![whole]), now, &mut out);
        term.take(event("late"), now, &mut out);
        assert_eq!(
            kinds(&out),
            [
                "0:begin",
                "1:gap:owner_failover@0",
                "2:evearly@1",
                "3:cov1",
                "4:evlate@2"
            ]
        );
    }

    #[test]
    fn a_new_owner_that_cannot_cover_tells_the_change_in_time_and_bounds_what_it_holds() {
        let now = Instant::now();
        let until = now + Duration::from_secs(5);
        let mut out = Vec::new();
        let owed = Some((GapReason::OwnerHandoff, SystemTime::now()));
        let mut term = OwnedTerm::begin(9, 1, "n", owed, until, &mut out);
        term.want([Prefix::whole(c())].into(), now, &mut out);
        for i in 0..MAX_HELD + 3 {
            term.take(event(&i.to_string()), now, &mut out);
        }
        assert_eq!(term.dropped(), 3);
        assert_eq!(term.due(), Some(until));
        term.poll(until, &mut out);
        assert_eq!(term.due(), None);
        let gaps: Vec<String> = kinds(&out)
            .into_iter()
            .filter(|k| k.contains("gap"))
            .collect();
        assert_eq!(gaps.len(), 1);
        assert!(gaps[0].ends_with("@0"), "the gap first: {gaps:?}");
    }
}
