//! The fleet's event log: what a customer's owner writes to JetStream, and every interested
//! node reads, one record per message.
//!
//! Subjects, per customer `<c>` (its UUID without hyphens):
//! - `fanout.<c>.ev`: events and gaps, each with its cursor (the owner numbers them);
//! - `fanout.<c>.cov`: the upstream prefixes the owner's connections cover, whole, whenever
//!   that changes;
//! - `fanout.<c>.term`: a term's beginning (with its epoch) and its end (a handoff). Every
//!   other record of a term is published on the condition that this subject's last
//!   message is still the term's beginning (`Nats-Expected-Last-Subject-Sequence` with
//!   `...-Subject`, nats-server 2.11): the store-side fence against a stale owner.
//!
//! Every record carries its owner's term and a sequence number in it (0 for the beginning,
//! then one more per record): the reader-side fence ([`crate::TermFence`]).
//!
//! An event's body is its type, timestamp and topics, each with its length, then VoIPBIN's
//! `data` as it arrived; the rest rides in headers (values of our own making only), among
//! them how many of its topics an earlier copy of it went out under
//! (`Event::fresh_from`, only when not 0).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use bytes::Bytes;
use fanout_protocol::Topic;
use fanout_protocol::cursor::Cursor;
use fanout_protocol::prefix::Prefix;
use fanout_protocol::server::GapReason;
use fanout_protocol::upstream::{Event, Shape};
use uuid::Uuid;

const TERM: &str = "Fanout-Term";
const SEQ: &str = "Fanout-Seq";
const KIND: &str = "Fanout-Kind";
const CURSOR: &str = "Fanout-Cursor";
const REASON: &str = "Fanout-Reason";
const SINCE: &str = "Fanout-Since";
const UNTIL: &str = "Fanout-Until";
const EPOCH: &str = "Fanout-Epoch";
const FRESH_FROM: &str = "Fanout-Fresh-From";

/// The most topics one event may carry in the log (the decoder gives at most four).
const MAX_TOPICS: usize = 16;

/// The subjects the log's stream holds.
pub const STREAM_SUBJECTS: &str = "fanout.*.*";

/// The subject of `customer`'s events and gaps.
pub fn events_subject(customer: Uuid) -> String {
    format!("fanout.{}.ev", customer.simple())
}

/// The subject of `customer`'s coverage.
pub fn coverage_subject(customer: Uuid) -> String {
    format!("fanout.{}.cov", customer.simple())
}

/// The subject of `customer`'s term markers, the fence's subject.
pub fn term_subject(customer: Uuid) -> String {
    format!("fanout.{}.term", customer.simple())
}

/// All of `customer`'s subjects, for a consumer's filter.
pub fn customer_filter(customer: Uuid) -> String {
    format!("fanout.{}.*", customer.simple())
}

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
    /// The upstream prefixes covered from here on (all of them: any other is not).
    Covered(Vec<Prefix>),
}

/// A message that is no record of this customer's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a log record: {0}")]
pub struct BadRecord(&'static str);

/// Appends `part` with its length (two bytes, big-endian; longer parts are cut, which the
/// decoder's limits would refuse anyway).
fn put_part(body: &mut bytes::BytesMut, part: &str) {
    let bytes = &part.as_bytes()[..part.len().min(usize::from(u16::MAX))];
    body.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    body.extend_from_slice(bytes);
}

/// Takes a part [`put_part`] wrote off the front of `rest`.
fn take_part(rest: &mut Bytes) -> Option<String> {
    if rest.len() < 2 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
    if rest.len() < 2 + len {
        return None;
    }
    let part = rest.slice(2..2 + len);
    *rest = rest.slice(2 + len..);
    String::from_utf8(part.to_vec()).ok()
}

fn nanos(at: SystemTime) -> String {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .to_string()
}

fn from_nanos(text: &str) -> Option<SystemTime> {
    let nanos: u64 = text.parse().ok()?;
    UNIX_EPOCH.checked_add(Duration::from_nanos(nanos))
}

fn reason_from(text: &str) -> Option<GapReason> {
    [
        GapReason::UpstreamReconnect,
        GapReason::OwnerFailover,
        GapReason::OwnerHandoff,
        GapReason::ClusterDegraded,
    ]
    .into_iter()
    .find(|r| r.as_str() == text)
}

impl Record {
    /// The subject it is published on, for `customer`.
    pub fn subject(&self, customer: Uuid) -> String {
        match self {
            Record::Begin { .. } | Record::End => term_subject(customer),
            Record::Event { .. } | Record::Gap { .. } => events_subject(customer),
            Record::Covered(_) => coverage_subject(customer),
        }
    }

    /// Its headers and body, stamped.
    pub fn encode(&self, stamp: Stamp) -> (HeaderMap, Bytes) {
        let mut headers = HeaderMap::new();
        headers.insert(TERM, stamp.term.to_string().as_str());
        headers.insert(SEQ, stamp.seq.to_string().as_str());
        let body = match self {
            Record::Begin { epoch, node } => {
                headers.insert(KIND, "begin");
                headers.insert(EPOCH, format!("{epoch:016x}").as_str());
                Bytes::copy_from_slice(node.as_bytes())
            }
            Record::End => {
                headers.insert(KIND, "end");
                Bytes::new()
            }
            Record::Event { cursor, event } => {
                headers.insert(KIND, "ev");
                headers.insert(CURSOR, cursor.to_string().as_str());
                if event.fresh_from > 0 {
                    headers.insert(FRESH_FROM, event.fresh_from.to_string().as_str());
                }
                // VoIPBIN's strings ride in the body: a header value cannot hold every
                // character they may (a line break), and need not be checked for it.
                let topics: Vec<&str> = event.topics.iter().map(Topic::as_str).collect();
                let topics = topics.join(" ");
                let mut body = bytes::BytesMut::with_capacity(
                    event.event_type.len()
                        + event.timestamp.len()
                        + topics.len()
                        + 12
                        + event.data.len(),
                );
                for part in [event.event_type.as_str(), event.timestamp.as_str(), &topics] {
                    put_part(&mut body, part);
                }
                body.extend_from_slice(&event.data);
                body.freeze()
            }
            Record::Gap {
                cursor,
                reason,
                since,
                until,
            } => {
                headers.insert(KIND, "gap");
                headers.insert(CURSOR, cursor.to_string().as_str());
                headers.insert(REASON, reason.as_str());
                headers.insert(SINCE, nanos(*since).as_str());
                headers.insert(UNTIL, nanos(*until).as_str());
                Bytes::new()
            }
            Record::Covered(patterns) => {
                headers.insert(KIND, "cov");
                let text: Vec<&str> = patterns.iter().map(Prefix::as_str).collect();
                Bytes::from(text.join("\n"))
            }
        };
        (headers, body)
    }

    /// Reads a message of `customer`'s log. Events are `customer`'s whatever they say: a
    /// topic of another customer is refused.
    ///
    /// # Errors
    /// [`BadRecord`] for anything else.
    pub fn decode(
        customer: Uuid,
        headers: Option<&HeaderMap>,
        body: &Bytes,
    ) -> Result<(Stamp, Record), BadRecord> {
        let headers = headers.ok_or(BadRecord("no headers"))?;
        let get = |name: &str| headers.get(name).map(|v| v.as_str());
        let number = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
        let stamp = Stamp {
            term: number(TERM).ok_or(BadRecord("term"))?,
            seq: number(SEQ).ok_or(BadRecord("seq"))?,
        };
        let cursor = || {
            get(CURSOR)
                .and_then(Cursor::parse)
                .ok_or(BadRecord("cursor"))
        };
        let record = match get(KIND).ok_or(BadRecord("kind"))? {
            "begin" => Record::Begin {
                epoch: get(EPOCH)
                    .and_then(|e| u64::from_str_radix(e, 16).ok())
                    .ok_or(BadRecord("epoch"))?,
                node: String::from_utf8_lossy(body).into_owned(),
            },
            "end" => Record::End,
            "ev" => {
                let mut rest = body.clone();
                let event_type = take_part(&mut rest).ok_or(BadRecord("type"))?;
                let timestamp = take_part(&mut rest).ok_or(BadRecord("time"))?;
                let topics = take_part(&mut rest).ok_or(BadRecord("topics"))?;
                let topics = topics
                    .split(' ')
                    .take(MAX_TOPICS + 1)
                    .map(Topic::parse)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| BadRecord("topic"))?;
                if topics.is_empty()
                    || topics.len() > MAX_TOPICS
                    || topics.iter().any(|t| !names_customer(t, customer))
                {
                    return Err(BadRecord("topics"));
                }
                let fresh_from = match get(FRESH_FROM) {
                    None => 0,
                    Some(n) => n
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n < topics.len())
                        .ok_or(BadRecord("fresh from"))?,
                };
                Record::Event {
                    cursor: cursor()?,
                    event: Event {
                        shape: Shape::Envelope,
                        event_type,
                        timestamp,
                        customer_id: customer,
                        topics,
                        fresh_from,
                        data: rest,
                    },
                }
            }
            "gap" => Record::Gap {
                cursor: cursor()?,
                reason: get(REASON)
                    .and_then(reason_from)
                    .ok_or(BadRecord("reason"))?,
                since: get(SINCE).and_then(from_nanos).ok_or(BadRecord("since"))?,
                until: get(UNTIL).and_then(from_nanos).ok_or(BadRecord("until"))?,
            },
            "cov" => {
                let text = std::str::from_utf8(body).map_err(|_| BadRecord("coverage"))?;
                let prefixes = text
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(Prefix::parse)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| BadRecord("prefix"))?;
                if prefixes.iter().any(|p| p.customer() != customer) {
                    return Err(BadRecord("prefix"));
                }
                Record::Covered(prefixes)
            }
            _ => return Err(BadRecord("kind")),
        };
        Ok((stamp, record))
    }
}

/// Whether an event topic is `customer`'s: a customer topic names it; an agent topic is
/// derived by the owner's decoder from a frame of the customer's own connection.
fn names_customer(topic: &Topic, customer: Uuid) -> bool {
    match topic.scope() {
        fanout_protocol::Scope::Customer => topic.owner() == customer,
        fanout_protocol::Scope::Agent => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer() -> Uuid {
        Uuid::parse_str("12345678-1234-1234-1234-123456789012").expect("uuid")
    }

    fn round_trip(record: Record) {
        let stamp = Stamp { term: 7, seq: 3 };
        let (headers, body) = record.encode(stamp);
        assert_eq!(
            Record::decode(customer(), Some(&headers), &body),
            Ok((stamp, record))
        );
    }

    #[test]
    fn every_record_reads_back_as_written() {
        let c = customer();
        round_trip(Record::Begin {
            epoch: 0xfeed_0000_0000_0001,
            node: "node-a".into(),
        });
        round_trip(Record::End);
        round_trip(Record::Event {
            cursor: Cursor {
                epoch: 9,
                offset: 41,
            },
            event: Event {
                shape: Shape::Envelope,
                // Whatever VoIPBIN's strings hold, a line break included.
                event_type: "call_created\r\n".into(),
                timestamp: "2026-12-01 10:00:00.000000".into(),
                customer_id: c,
                topics: vec![
                    Topic::parse(&format!("customer_id:{c}:call:1")).expect("topic"),
                    Topic::parse("agent_id:98765432-4321-4321-4321-210987654321:call:1")
                        .expect("topic"),
                ],
                fresh_from: 1,
                data: Bytes::from_static(br#"{"id":"1"}"#),
            },
        });
        round_trip(Record::Gap {
            cursor: Cursor {
                epoch: 9,
                offset: 42,
            },
            reason: GapReason::OwnerFailover,
            since: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            until: UNIX_EPOCH + Duration::from_secs(1_700_000_001),
        });
        round_trip(Record::Covered(vec![
            Prefix::whole(c),
            Prefix::parse(&format!("customer_id:{c}:call:")).expect("prefix"),
        ]));
        round_trip(Record::Covered(Vec::new()));
    }

    #[test]
    fn an_event_of_another_customer_or_a_broken_message_is_refused() {
        let c = customer();
        let other = Uuid::new_v4();
        let event = Record::Event {
            cursor: Cursor {
                epoch: 1,
                offset: 0,
            },
            event: Event {
                shape: Shape::Envelope,
                event_type: "call_created".into(),
                timestamp: "t".into(),
                customer_id: other,
                topics: vec![Topic::parse(&format!("customer_id:{other}:call:1")).expect("t")],
                fresh_from: 0,
                data: Bytes::new(),
            },
        };
        let (headers, body) = event.encode(Stamp { term: 1, seq: 1 });
        assert_eq!(
            Record::decode(c, Some(&headers), &body),
            Err(BadRecord("topics"))
        );
        assert!(Record::decode(c, None, &body).is_err());
        let mut broken = headers.clone();
        broken.insert(CURSOR, "not a cursor");
        assert!(Record::decode(other, Some(&broken), &body).is_err());
        let mut broken = headers.clone();
        broken.insert(KIND, "surprise");
        assert!(Record::decode(other, Some(&broken), &body).is_err());
        // A fresh-from past the topics would deliver to nobody, or to anybody.
        let mut broken = headers.clone();
        broken.insert(FRESH_FROM, "1");
        assert_eq!(
            Record::decode(other, Some(&broken), &body),
            Err(BadRecord("fresh from"))
        );
        // Coverage of another customer is no coverage of this one.
        let (cov_headers, cov_body) =
            Record::Covered(vec![Prefix::whole(other)]).encode(Stamp { term: 1, seq: 2 });
        assert_eq!(
            Record::decode(c, Some(&cov_headers), &cov_body),
            Err(BadRecord("prefix"))
        );
        // A body cut short anywhere is refused, never read past.
        for cut in 0..body.len().min(40) {
            assert!(Record::decode(other, Some(&headers), &body.slice(..cut)).is_err());
        }
    }
}
