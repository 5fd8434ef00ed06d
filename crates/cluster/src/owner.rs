//! How an owner writes one customer's term: what its upstream hands over, stamped and
//! numbered into records of the log. Sans-IO: items come in, records go out.
//!
//! - Every record takes the next number of the term ([`Stamp`]); every event and gap the
//!   next cursor of the term's epoch.
//! - A new owner owes the customer's sessions the change of owner (`owner_failover`,
//!   `owner_handoff`): it is the term's first entry, right after its beginning, so that it
//!   comes before any event of the new upstream (docs/protocol.md: the gap comes before the
//!   first event after the loss). The coverage is written as the upstream confirms it, after
//!   that: a resume judges from it, so nothing the new connections missed is ever claimed.
//! - Coverage is written whole whenever it changes, and again on request (a node whose
//!   reader lost it), with the cursor the next entry takes.

use std::collections::BTreeSet;
use std::time::SystemTime;

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

/// One customer's term, as its owner writes it.
#[derive(Debug)]
pub struct OwnedTerm {
    term: u64,
    epoch: u64,
    seq: u64,
    offset: u64,
    covered: BTreeSet<Prefix>,
}

impl OwnedTerm {
    /// The term `term` (the revision of the customer's ownership record) begins, numbered in
    /// `epoch`, owned by `node`: its first records. `owed` is the change to tell (why, and
    /// since when events may be missing), if another owner came before.
    pub fn begin(
        term: u64,
        epoch: u64,
        node: &str,
        owed: Option<(GapReason, SystemTime)>,
        out: &mut Vec<(Stamp, Record)>,
    ) -> OwnedTerm {
        let mut owned = OwnedTerm {
            term,
            epoch,
            seq: 0,
            offset: 0,
            covered: BTreeSet::new(),
        };
        owned.write(
            Record::Begin {
                epoch,
                node: node.to_owned(),
            },
            out,
        );
        if let Some((reason, since)) = owed {
            let cursor = owned.next_cursor();
            owned.write(
                Record::Gap {
                    cursor,
                    reason,
                    since,
                    until: SystemTime::now(),
                },
                out,
            );
        }
        owned
    }

    /// Its term.
    pub fn term(&self) -> u64 {
        self.term
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
    pub fn take(&mut self, item: Item, out: &mut Vec<(Stamp, Record)>) {
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
            Item::Covered(prefixes) => {
                self.covered.extend(prefixes);
                self.coverage(out);
            }
            Item::Uncovered(prefixes) => {
                for prefix in &prefixes {
                    self.covered.remove(prefix);
                }
                self.coverage(out);
            }
        }
    }

    /// Writes the coverage again (a reader lost it).
    pub fn restate(&mut self, out: &mut Vec<(Stamp, Record)>) {
        self.coverage(out);
    }

    /// The term ends in order: a handoff.
    pub fn end(mut self, out: &mut Vec<(Stamp, Record)>) {
        self.write(Record::End, out);
    }
}

#[cfg(test)]
mod tests {
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
        let mut out = Vec::new();
        let mut term = OwnedTerm::begin(7, 1, "n", None, &mut out);
        term.take(Item::Covered(vec![Prefix::whole(c())]), &mut out);
        term.take(event("a"), &mut out);
        term.take(Item::Gap(SystemTime::now(), SystemTime::now()), &mut out);
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
    fn a_new_owner_tells_the_change_before_any_event_of_its_upstream() {
        let mut out = Vec::new();
        let owed = Some((GapReason::OwnerFailover, SystemTime::now()));
        let mut term = OwnedTerm::begin(9, 1, "n", owed, &mut out);
        term.take(event("early"), &mut out);
        term.take(Item::Covered(vec![Prefix::whole(c())]), &mut out);
        term.take(event("late"), &mut out);
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
}
