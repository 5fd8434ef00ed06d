//! The log's wire format: one JetStream message carries a **batch** of records, of any of
//! its owner's customers, authenticated with the key the fleet shares. Sans-IO.
//!
//! ```text
//! batch   = "FGL" version:u8 kind:u8 term:u64 seq:u64 count:u32 record* mac:[32]
//! record  = len:u32 customer:[16] term:u64 seq:u64 tag:u8 payload        (len: what follows it)
//! payload = begin:   epoch:u64 node:str8
//!         | end
//!         | event:   epoch:u64 offset:u64 fresh_from:u8 topics:u8 type:str8 time:str8
//!                    topic:str16 * topics, data: the rest of the record
//!         | gap:     epoch:u64 offset:u64 reason:u8 since_ns:u64 until_ns:u64
//!         | covered: epoch:u64 offset:u64 count:u16 prefix:str16 * count
//! fence   = "FGL" version:u8 1:u8 term:u64 0:u64 by:str8 mac:[32]
//! mac     = HMAC-SHA256(fleet key, subject_len:u16 subject batch-before-mac)
//! ```
//!
//! Numbers are big-endian; `strN` is a length of N bits and UTF-8. The batch's `term` and
//! `seq` are its node's: the revision of the node's lease, and the batch's number in it. A
//! record's `term` and `seq` are its customer's: the revision of the customer's ownership
//! record, and the record's number in it ([`Stamp`]).
//!
//! The MAC covers the subject, so a batch cannot be replayed as another node's. A message
//! that fails it is not the fleet's: it is dropped whole ([`BadBatch`]). Past the MAC, every
//! record is still checked as an upstream frame is (UTF-8, JSON, the customer it names,
//! bounded counts), and one that fails is dropped alone ([`BadRecord`]): it never reaches a
//! session nor a window.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fanout_protocol::Topic;
use fanout_protocol::cursor::Cursor;
use fanout_protocol::prefix::Prefix;
use fanout_protocol::server::GapReason;
use fanout_protocol::upstream::{Event, Shape};
use ring::hmac;
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use crate::log::{Record, Stamp};

const MAGIC: &[u8; 3] = b"FGL";
const VERSION: u8 = 1;
const MAC_LEN: usize = 32;
const HEADER_LEN: usize = 3 + 1 + 1 + 8 + 8 + 4;

/// The most records one batch may hold.
pub const MAX_RECORDS: u32 = 1 << 16;
/// The most topics one event may carry (the decoder gives at most four).
const MAX_TOPICS: usize = 16;
/// The most prefixes one coverage record may hold.
const MAX_PREFIXES: usize = 4096;

const TAG_BEGIN: u8 = 1;
const TAG_END: u8 = 2;
const TAG_EVENT: u8 = 3;
const TAG_GAP: u8 = 4;
const TAG_COVERED: u8 = 5;

const KIND_RECORDS: u8 = 0;
const KIND_FENCE: u8 = 1;

/// The shortest fleet key taken, in bytes.
pub const MIN_KEY_LEN: usize = 32;

/// The key the fleet shares: the first signs, every one verifies (so that a new key can be
/// rolled out before the old one goes).
#[derive(Clone)]
pub struct FleetKey {
    keys: Vec<hmac::Key>,
}

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FleetKey({} keys)", self.keys.len())
    }
}

/// Why a fleet key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No key at all.
    #[error("no fleet key")]
    Missing,
    /// Too short to be a secret.
    #[error("a fleet key must be at least {MIN_KEY_LEN} bytes")]
    TooShort,
}

impl FleetKey {
    /// The keys `secrets`, the first of which signs.
    ///
    /// # Errors
    /// [`KeyError`] when there is none, or one is shorter than [`MIN_KEY_LEN`].
    pub fn new<S: AsRef<[u8]>>(secrets: &[S]) -> Result<FleetKey, KeyError> {
        if secrets.is_empty() {
            return Err(KeyError::Missing);
        }
        if secrets.iter().any(|s| s.as_ref().len() < MIN_KEY_LEN) {
            return Err(KeyError::TooShort);
        }
        Ok(FleetKey {
            keys: secrets
                .iter()
                .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.as_ref()))
                .collect(),
        })
    }

    /// The keys of a key file's text: one per line, blank lines and `#` comments skipped.
    ///
    /// # Errors
    /// As [`FleetKey::new`].
    pub fn from_lines(text: &str) -> Result<FleetKey, KeyError> {
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        FleetKey::new(&lines)
    }

    fn tag(key: &hmac::Key, subject: &str, body: &[u8]) -> hmac::Tag {
        let mut context = hmac::Context::with_key(key);
        let subject = &subject.as_bytes()[..subject.len().min(usize::from(u16::MAX))];
        context.update(&(subject.len() as u16).to_be_bytes());
        context.update(subject);
        context.update(body);
        context.sign()
    }

    fn seal(&self, subject: &str, body: &mut BytesMut) {
        let tag = FleetKey::tag(&self.keys[0], subject, body);
        body.extend_from_slice(tag.as_ref());
    }

    /// Whether `mac` is the MAC of `body` on `subject` under one of the keys, in constant
    /// time for each.
    fn verify(&self, subject: &str, body: &[u8], mac: &[u8]) -> bool {
        let mut ok = false;
        for key in &self.keys {
            let tag = FleetKey::tag(key, subject, body);
            ok |= bool::from(tag.as_ref().ct_eq(mac));
        }
        ok
    }
}

/// A batch being written.
#[derive(Debug)]
pub struct BatchWriter {
    body: BytesMut,
    count: u32,
}

impl BatchWriter {
    /// An empty batch of the node term `term`, numbered `seq` in it.
    pub fn new(term: u64, seq: u64) -> BatchWriter {
        let mut body = BytesMut::with_capacity(4096);
        body.put_slice(MAGIC);
        body.put_u8(VERSION);
        body.put_u8(KIND_RECORDS);
        body.put_u64(term);
        body.put_u64(seq);
        body.put_u32(0);
        BatchWriter { body, count: 0 }
    }

    /// Its number in its node term.
    pub fn seq(&self) -> u64 {
        u64::from_be_bytes(self.body[13..21].try_into().unwrap_or_default())
    }

    /// How many records it holds.
    pub fn records(&self) -> u32 {
        self.count
    }

    /// Its size so far, in bytes.
    pub fn bytes(&self) -> usize {
        self.body.len()
    }

    /// Whether it can take one more record.
    pub fn has_room(&self) -> bool {
        self.count < MAX_RECORDS
    }

    /// Appends `customer`'s `record`, stamped.
    pub fn push(&mut self, customer: Uuid, stamp: Stamp, record: &Record) {
        let at = self.body.len();
        self.body.put_u32(0);
        self.body.put_slice(customer.as_bytes());
        self.body.put_u64(stamp.term);
        self.body.put_u64(stamp.seq);
        match record {
            Record::Begin { epoch, node } => {
                self.body.put_u8(TAG_BEGIN);
                self.body.put_u64(*epoch);
                put_str8(&mut self.body, node);
            }
            Record::End => self.body.put_u8(TAG_END),
            Record::Event { cursor, event } => {
                self.body.put_u8(TAG_EVENT);
                put_cursor(&mut self.body, *cursor);
                let topics = &event.topics[..event.topics.len().min(MAX_TOPICS)];
                self.body
                    .put_u8(u8::try_from(event.fresh_from).unwrap_or(u8::MAX));
                self.body.put_u8(topics.len() as u8);
                put_str8(&mut self.body, &event.event_type);
                put_str8(&mut self.body, &event.timestamp);
                for topic in topics {
                    put_str16(&mut self.body, topic.as_str());
                }
                self.body.put_slice(&event.data);
            }
            Record::Gap {
                cursor,
                reason,
                since,
                until,
            } => {
                self.body.put_u8(TAG_GAP);
                put_cursor(&mut self.body, *cursor);
                self.body.put_u8(reason_code(*reason));
                self.body.put_u64(nanos(*since));
                self.body.put_u64(nanos(*until));
            }
            Record::Covered(prefixes, next) => {
                self.body.put_u8(TAG_COVERED);
                put_cursor(&mut self.body, *next);
                let prefixes = &prefixes[..prefixes.len().min(MAX_PREFIXES)];
                self.body.put_u16(prefixes.len() as u16);
                for prefix in prefixes {
                    put_str16(&mut self.body, prefix.as_str());
                }
            }
        }
        let len = self.body.len() - at - 4;
        self.body[at..at + 4].copy_from_slice(&(len as u32).to_be_bytes());
        self.count += 1;
    }

    /// The message body for `subject`, authenticated with `key`.
    pub fn seal(mut self, key: &FleetKey, subject: &str) -> Bytes {
        self.body[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&self.count.to_be_bytes());
        key.seal(subject, &mut self.body);
        self.body.freeze()
    }
}

/// A fence on `subject`: no batch of the node term `term` is taken after it; written by the
/// node `by`.
pub fn fence(key: &FleetKey, subject: &str, term: u64, by: &str) -> Bytes {
    let mut body = BytesMut::with_capacity(64);
    body.put_slice(MAGIC);
    body.put_u8(VERSION);
    body.put_u8(KIND_FENCE);
    body.put_u64(term);
    body.put_u64(0);
    put_str8(&mut body, by);
    key.seal(subject, &mut body);
    body.freeze()
}

/// A message that is not a batch of the fleet's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a batch of the fleet's: {0}")]
pub struct BadBatch(pub &'static str);

/// A record that must not be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid record: {0}")]
pub struct BadRecord(pub &'static str);

/// What a message of the log holds.
#[derive(Debug)]
pub enum Opened {
    /// A batch of the node term `term`, numbered `seq`.
    Batch {
        /// The node's term.
        term: u64,
        /// The batch's number in it.
        seq: u64,
        /// Its records.
        records: Records,
    },
    /// No batch of the node term `term` is taken after this.
    Fence {
        /// The term fenced.
        term: u64,
        /// The node that wrote it.
        by: String,
    },
}

/// Reads a message of the log on `subject`.
///
/// # Errors
/// [`BadBatch`] when it is not the fleet's (its MAC fails, or it is no batch).
pub fn open(key: &FleetKey, subject: &str, body: &Bytes) -> Result<Opened, BadBatch> {
    if body.len() < HEADER_LEN - 4 + MAC_LEN || &body[..3] != MAGIC {
        return Err(BadBatch("not a batch"));
    }
    let (signed, mac) = body.split_at(body.len() - MAC_LEN);
    if !key.verify(subject, signed, mac) {
        return Err(BadBatch("its MAC is not the fleet's"));
    }
    let mut rest = body.slice(3..body.len() - MAC_LEN);
    if rest.get_u8() != VERSION {
        return Err(BadBatch("another version"));
    }
    let kind = rest.get_u8();
    let term = rest.get_u64();
    let seq = rest.get_u64();
    match kind {
        KIND_RECORDS => {
            let left = take_u32(&mut rest).ok_or(BadBatch("no count"))?;
            if left > MAX_RECORDS {
                return Err(BadBatch("too many records"));
            }
            Ok(Opened::Batch {
                term,
                seq,
                records: Records { rest, left },
            })
        }
        KIND_FENCE => Ok(Opened::Fence {
            term,
            by: take_str8(&mut rest).ok_or(BadBatch("fence"))?,
        }),
        _ => Err(BadBatch("unknown kind")),
    }
}

/// The records of a batch, each checked as it is read.
#[derive(Debug)]
pub struct Records {
    rest: Bytes,
    left: u32,
}

impl Iterator for Records {
    type Item = Result<(Uuid, Stamp, Record), BadRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let Some(len) = take_u32(&mut self.rest) else {
            self.left = 0;
            return Some(Err(BadRecord("cut short")));
        };
        let len = len as usize;
        if self.rest.len() < len {
            self.left = 0;
            return Some(Err(BadRecord("cut short")));
        }
        let record = self.rest.split_to(len);
        Some(read_record(record))
    }
}

fn read_record(mut rest: Bytes) -> Result<(Uuid, Stamp, Record), BadRecord> {
    const CUT: BadRecord = BadRecord("cut short");
    if rest.len() < 16 + 8 + 8 + 1 {
        return Err(CUT);
    }
    let mut id = [0u8; 16];
    rest.copy_to_slice(&mut id);
    let customer = Uuid::from_bytes(id);
    let stamp = Stamp {
        term: rest.get_u64(),
        seq: rest.get_u64(),
    };
    let record = match rest.get_u8() {
        TAG_BEGIN => {
            let epoch = take_u64(&mut rest).ok_or(CUT)?;
            let node = take_str8(&mut rest).ok_or(BadRecord("node"))?;
            ended(&rest)?;
            Record::Begin { epoch, node }
        }
        TAG_END => {
            ended(&rest)?;
            Record::End
        }
        TAG_EVENT => {
            let cursor = take_cursor(&mut rest).ok_or(CUT)?;
            if rest.len() < 2 {
                return Err(CUT);
            }
            let fresh_from = usize::from(rest.get_u8());
            let count = usize::from(rest.get_u8());
            let event_type = take_str8(&mut rest).ok_or(BadRecord("event type"))?;
            let timestamp = take_str8(&mut rest).ok_or(BadRecord("timestamp"))?;
            if count == 0 || count > MAX_TOPICS || fresh_from >= count {
                return Err(BadRecord("topics"));
            }
            let mut topics = Vec::with_capacity(count);
            for _ in 0..count {
                let text = take_str16(&mut rest).ok_or(BadRecord("topic"))?;
                let topic = Topic::parse(&text).map_err(|_| BadRecord("topic"))?;
                if !names_customer(&topic, customer) {
                    return Err(BadRecord("a topic of another customer"));
                }
                topics.push(topic);
            }
            check_data(&rest, customer)?;
            Record::Event {
                cursor,
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
        TAG_GAP => {
            let cursor = take_cursor(&mut rest).ok_or(CUT)?;
            if rest.len() != 1 + 8 + 8 {
                return Err(CUT);
            }
            let reason = reason_from(rest.get_u8()).ok_or(BadRecord("reason"))?;
            let since = from_nanos(rest.get_u64());
            let until = from_nanos(rest.get_u64());
            Record::Gap {
                cursor,
                reason,
                since,
                until,
            }
        }
        TAG_COVERED => {
            let next = take_cursor(&mut rest).ok_or(CUT)?;
            if rest.len() < 2 {
                return Err(CUT);
            }
            let count = usize::from(rest.get_u16());
            if count > MAX_PREFIXES {
                return Err(BadRecord("too many prefixes"));
            }
            let mut prefixes = Vec::with_capacity(count.min(64));
            for _ in 0..count {
                let text = take_str16(&mut rest).ok_or(BadRecord("prefix"))?;
                let prefix = Prefix::parse(&text).map_err(|_| BadRecord("prefix"))?;
                if prefix.customer() != customer {
                    return Err(BadRecord("a prefix of another customer"));
                }
                prefixes.push(prefix);
            }
            ended(&rest)?;
            Record::Covered(prefixes, next)
        }
        _ => return Err(BadRecord("unknown kind")),
    };

    Ok((customer, stamp, record))
}

fn ended(rest: &Bytes) -> Result<(), BadRecord> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(BadRecord("trailing bytes"))
    }
}

/// An event's data as an upstream frame's is checked: one JSON object, UTF-8, naming no
/// other customer.
fn check_data(data: &[u8], customer: Uuid) -> Result<(), BadRecord> {
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(borrow, default)]
        customer_id: Option<std::borrow::Cow<'a, str>>,
    }
    // serde_json does not look inside the strings it skips.
    std::str::from_utf8(data).map_err(|_| BadRecord("data is not UTF-8"))?;
    if data.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(BadRecord("data is not a JSON object"));
    }
    let probe: Probe<'_> =
        serde_json::from_slice(data).map_err(|_| BadRecord("data is not JSON"))?;
    match probe.customer_id {
        Some(named) if Uuid::try_parse(&named).ok() != Some(customer) => {
            Err(BadRecord("data of another customer"))
        }
        _ => Ok(()),
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

fn put_str8(body: &mut BytesMut, text: &str) {
    let bytes = &text.as_bytes()[..floor_char(text, usize::from(u8::MAX))];
    body.put_u8(bytes.len() as u8);
    body.put_slice(bytes);
}

fn put_str16(body: &mut BytesMut, text: &str) {
    let bytes = &text.as_bytes()[..floor_char(text, usize::from(u16::MAX))];
    body.put_u16(bytes.len() as u16);
    body.put_slice(bytes);
}

/// The largest char boundary of `text` at most `max`.
fn floor_char(text: &str, max: usize) -> usize {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

fn put_cursor(body: &mut BytesMut, cursor: Cursor) {
    body.put_u64(cursor.epoch);
    body.put_u64(cursor.offset);
}

fn take_u32(rest: &mut Bytes) -> Option<u32> {
    (rest.len() >= 4).then(|| rest.get_u32())
}

fn take_u64(rest: &mut Bytes) -> Option<u64> {
    (rest.len() >= 8).then(|| rest.get_u64())
}

fn take_cursor(rest: &mut Bytes) -> Option<Cursor> {
    (rest.len() >= 16).then(|| Cursor {
        epoch: rest.get_u64(),
        offset: rest.get_u64(),
    })
}

fn take_str(rest: &mut Bytes, len: usize) -> Option<String> {
    if rest.len() < len {
        return None;
    }
    String::from_utf8(rest.split_to(len).to_vec()).ok()
}

fn take_str8(rest: &mut Bytes) -> Option<String> {
    if rest.is_empty() {
        return None;
    }
    let len = usize::from(rest.get_u8());
    take_str(rest, len)
}

fn take_str16(rest: &mut Bytes) -> Option<String> {
    if rest.len() < 2 {
        return None;
    }
    let len = usize::from(rest.get_u16());
    take_str(rest, len)
}

const REASONS: [GapReason; 4] = [
    GapReason::UpstreamReconnect,
    GapReason::OwnerFailover,
    GapReason::OwnerHandoff,
    GapReason::ClusterDegraded,
];

fn reason_code(reason: GapReason) -> u8 {
    REASONS
        .iter()
        .position(|r| *r == reason)
        .map_or(u8::MAX, |i| i as u8)
}

fn reason_from(code: u8) -> Option<GapReason> {
    REASONS.get(usize::from(code)).copied()
}

fn nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn from_nanos(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBJECT: &str = "fanout.o.node-a";

    fn key() -> FleetKey {
        FleetKey::new(&["a fleet key of at least thirty-two bytes"]).expect("a key")
    }

    fn customer() -> Uuid {
        Uuid::parse_str("12345678-1234-1234-1234-123456789012").expect("uuid")
    }

    fn event(c: Uuid, id: &str, data: &str) -> Record {
        Record::Event {
            cursor: Cursor {
                epoch: 9,
                offset: 41,
            },
            event: Event {
                shape: Shape::Envelope,
                // Whatever VoIPBIN's strings hold, a line break and a quote included.
                event_type: "call_created\r\n\"".into(),
                timestamp: "2026-12-01 10:00:00.000000".into(),
                customer_id: c,
                topics: vec![
                    Topic::parse(&format!("customer_id:{c}:call:{id}")).expect("topic"),
                    Topic::parse("agent_id:98765432-4321-4321-4321-210987654321:call:1")
                        .expect("topic"),
                ],
                fresh_from: 1,
                data: Bytes::from(data.to_owned()),
            },
        }
    }

    fn all_kinds(c: Uuid) -> Vec<Record> {
        vec![
            Record::Begin {
                epoch: 0xfeed_0000_0000_0001,
                node: "node-a".into(),
            },
            event(c, "1", &format!(r#"{{"id":"1","customer_id":"{c}"}}"#)),
            Record::Gap {
                cursor: Cursor {
                    epoch: 9,
                    offset: 42,
                },
                reason: GapReason::OwnerFailover,
                since: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
                until: UNIX_EPOCH + Duration::from_secs(1_700_000_001),
            },
            Record::Covered(
                vec![
                    Prefix::whole(c),
                    Prefix::parse(&format!("customer_id:{c}:call:")).expect("prefix"),
                ],
                Cursor {
                    epoch: 9,
                    offset: 43,
                },
            ),
            Record::Covered(
                Vec::new(),
                Cursor {
                    epoch: 9,
                    offset: 43,
                },
            ),
            Record::End,
        ]
    }

    fn sealed(records: &[(Uuid, Stamp, Record)]) -> Bytes {
        let mut batch = BatchWriter::new(7, 3);
        for (c, stamp, record) in records {
            batch.push(*c, *stamp, record);
        }
        batch.seal(&key(), SUBJECT)
    }

    fn read_all(body: &Bytes) -> Vec<Result<(Uuid, Stamp, Record), BadRecord>> {
        match open(&key(), SUBJECT, body).expect("the fleet's") {
            Opened::Batch { term, seq, records } => {
                assert_eq!((term, seq), (7, 3));
                records.collect()
            }
            Opened::Fence { .. } => panic!("not a fence"),
        }
    }

    #[test]
    fn every_record_reads_back_as_written() {
        let c = customer();
        let other = Uuid::new_v4();
        let records: Vec<(Uuid, Stamp, Record)> = all_kinds(c)
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    c,
                    Stamp {
                        term: 5,
                        seq: i as u64,
                    },
                    r,
                )
            })
            .chain([(other, Stamp { term: 2, seq: 0 }, Record::End)])
            .collect();
        let read = read_all(&sealed(&records));
        let expected: Vec<_> = records.into_iter().map(Ok).collect();
        assert_eq!(read, expected);
    }

    #[test]
    fn a_fence_reads_back() {
        let body = fence(&key(), SUBJECT, 11, "node-b");
        match open(&key(), SUBJECT, &body).expect("the fleet's") {
            Opened::Fence { term, by } => assert_eq!((term, by.as_str()), (11, "node-b")),
            Opened::Batch { .. } => panic!("a fence"),
        }
    }

    #[test]
    fn without_the_key_nothing_is_taken() {
        let c = customer();
        let body = sealed(&[(c, Stamp { term: 1, seq: 0 }, Record::End)]);
        let other = FleetKey::new(&["another key, thirty-two bytes or more"]).expect("key");
        assert!(open(&other, SUBJECT, &body).is_err());
        // Another node's subject: a replay of this batch as its.
        assert!(open(&key(), "fanout.o.node-b", &body).is_err());
        // Any byte changed, or the batch cut or grown.
        for at in 0..body.len() {
            let mut bent = body.to_vec();
            bent[at] ^= 0x20;
            assert!(open(&key(), SUBJECT, &Bytes::from(bent)).is_err(), "{at}");
        }
        for cut in 0..body.len() {
            assert!(open(&key(), SUBJECT, &body.slice(..cut)).is_err());
        }
        let mut grown = body.to_vec();
        grown.push(0);
        assert!(open(&key(), SUBJECT, &Bytes::from(grown)).is_err());
        // A key being rolled out: the old one still verifies what it signed.
        let both = FleetKey::new(&[
            "the next fleet key, thirty-two bytes or more",
            "a fleet key of at least thirty-two bytes",
        ])
        .expect("keys");
        assert!(open(&both, SUBJECT, &body).is_ok());
    }

    #[test]
    fn records_the_owner_signed_are_still_checked_one_by_one() {
        let c = customer();
        let other = Uuid::new_v4();
        let stamp = Stamp { term: 1, seq: 1 };
        let bad = [
            event(c, "1", "\"a string\""),
            event(c, "1", "{\"id\": \u{1}"),
            event(c, "1", &format!(r#"{{"customer_id":"{other}"}}"#)),
            event(other, "1", "{}"),
        ];
        let mut records: Vec<(Uuid, Stamp, Record)> =
            bad.into_iter().map(|r| (c, stamp, r)).collect();
        // Data that is not UTF-8.
        let mut raw = event(c, "1", "{}");
        if let Record::Event { event, .. } = &mut raw {
            event.data = Bytes::from_static(b"{\"id\":\"\xff\"}");
        }
        records.push((c, stamp, raw));
        let next = Cursor {
            epoch: 1,
            offset: 1,
        };
        records.push((c, stamp, Record::Covered(vec![Prefix::whole(other)], next)));
        records.push((c, stamp, event(c, "ok", "{}")));
        let read = read_all(&sealed(&records));
        assert_eq!(read.len(), records.len());
        let (good, bad): (Vec<_>, Vec<_>) = read.into_iter().partition(Result::is_ok);
        assert_eq!(bad.len(), records.len() - 1, "{bad:?}");
        assert_eq!(good.len(), 1);
    }

    #[test]
    fn a_short_key_is_refused() {
        assert_eq!(FleetKey::new(&["short"]).err(), Some(KeyError::TooShort));
        assert_eq!(FleetKey::new::<&str>(&[]).err(), Some(KeyError::Missing));
        assert_eq!(
            FleetKey::from_lines("# comment\n\n").err(),
            Some(KeyError::Missing)
        );
        assert!(
            FleetKey::from_lines("# keys\nthe next fleet key, thirty-two bytes or more\n").is_ok()
        );
    }

    proptest::proptest! {
        /// Whatever a message holds, reading it never panics, and without the MAC nothing of
        /// it is taken.
        #[test]
        fn any_bytes_are_read_safely(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let body = Bytes::from(bytes);
            proptest::prop_assert!(open(&key(), SUBJECT, &body).is_err());
        }

        /// A batch signed with the key but holding any bytes as records never panics.
        #[test]
        fn any_signed_records_are_read_safely(
            count in 0u32..8,
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        ) {
            let mut body = BytesMut::new();
            body.put_slice(MAGIC);
            body.put_u8(VERSION);
            body.put_u8(KIND_RECORDS);
            body.put_u64(1);
            body.put_u64(1);
            body.put_u32(count);
            body.put_slice(&bytes);
            key().seal(SUBJECT, &mut body);
            let body = body.freeze();
            if let Ok(Opened::Batch { records, .. }) = open(&key(), SUBJECT, &body) {
                proptest::prop_assert!(records.count() <= count as usize);
            }
        }
    }
}
