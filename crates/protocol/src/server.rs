//! Frames the gateway builds for browsers (protocol.md §1.5): the event envelope and error
//! frames, each encoded as a whole WebSocket text frame, header included.
//!
//! ```json
//! {"event_type":"call_hangup","timestamp":"2026-01-20T10:30:00.000000Z","topic":"customer_id:<uuid>:call:<uuid>","data":{…},"cursor":"…"}
//! {"type":"error","code":"forbidden_topic","message":"…","topics":["…"]}
//! {"type":"gap","reason":"upstream_reconnect","since":"…","until":"…","cursor":"…"}
//! {"type":"resumed","recovered":true,"cursor":"…"}
//! ```
//!
//! An envelope is built once per (event, topic) and shared by every session it goes to.

use bytes::Bytes;
use serde::Serialize;

use crate::client::Refusal;
use crate::cursor::Cursor;
use crate::topic::Topic;
use crate::ws::{self, OpCode};

/// The parts of an envelope that do not depend on the topic, JSON-encoded once.
#[derive(Debug, Clone)]
pub struct EnvelopeHead {
    event_type: String,
    timestamp: String,
    /// `,"cursor":"…"`, or nothing (upstream envelopes carry none).
    cursor: String,
}

impl EnvelopeHead {
    /// Encodes the event type and timestamp as JSON strings.
    pub fn new(event_type: &str, timestamp: &str) -> Self {
        EnvelopeHead {
            event_type: json_string(event_type),
            timestamp: json_string(timestamp),
            cursor: String::new(),
        }
    }

    /// The same head with the event's cursor, written after `data`.
    pub fn with_cursor(mut self, cursor: Cursor) -> Self {
        // A cursor's text never needs escaping (hex digits and `-`).
        self.cursor = format!(",\"cursor\":\"{cursor}\"");
        self
    }

    /// Encodes the whole text frame of the envelope for `topic` around the raw JSON `data`.
    ///
    /// `data` is copied verbatim: it must already be a JSON value (the upstream decoder
    /// guarantees that).
    pub fn frame(&self, topic: &Topic, data: &[u8]) -> Bytes {
        const P1: &[u8] = b"{\"event_type\":";
        const P2: &[u8] = b",\"timestamp\":";
        const P3: &[u8] = b",\"topic\":\"";
        const P4: &[u8] = b"\",\"data\":";
        const P5: &[u8] = b"}";
        let topic = topic.as_str().as_bytes();
        let len = P1.len()
            + self.event_type.len()
            + P2.len()
            + self.timestamp.len()
            + P3.len()
            + topic.len()
            + P4.len()
            + data.len()
            + self.cursor.len()
            + P5.len();
        let mut out = Vec::with_capacity(ws::header_len(len) + len);
        ws::put_header(&mut out, OpCode::Text, len);
        out.extend_from_slice(P1);
        out.extend_from_slice(self.event_type.as_bytes());
        out.extend_from_slice(P2);
        out.extend_from_slice(self.timestamp.as_bytes());
        // Topic text never needs escaping (topic.rs invariant).
        out.extend_from_slice(P3);
        out.extend_from_slice(topic);
        out.extend_from_slice(P4);
        out.extend_from_slice(data);
        out.extend_from_slice(self.cursor.as_bytes());
        out.extend_from_slice(P5);
        Bytes::from(out)
    }
}

impl EnvelopeHead {
    /// The `data` inside a `frame` this head made around `data_len` bytes of data: a slice
    /// of the frame, sharing its buffer.
    pub fn data_in(&self, frame: &Bytes, data_len: usize) -> Bytes {
        let end = frame.len().saturating_sub(1 + self.cursor.len());
        frame.slice(end.saturating_sub(data_len)..end)
    }
}

fn json_string(text: &str) -> String {
    // Serialising a &str cannot fail.
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    message: &'a str,
    topics: &'a [String],
}

/// The JSON text of an error frame for a refusal.
pub fn error_json(refusal: &Refusal) -> String {
    let body = ErrorBody {
        kind: "error",
        code: refusal.code.as_str(),
        message: &refusal.message,
        topics: &refusal.topics,
    };
    serde_json::to_string(&body).unwrap_or_else(|_| "{\"type\":\"error\"}".to_owned())
}

/// The whole text frame of an error frame for a refusal.
pub fn error_frame(refusal: &Refusal) -> Bytes {
    ws::encode(OpCode::Text, error_json(refusal).as_bytes())
}

/// Why events of a customer may have been lost (protocol.md §1.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// The customer's upstream connection to VoIPBIN dropped, stalled or could not be opened
    /// for a while; VoIPBIN keeps no history.
    UpstreamReconnect,
    /// The cluster node that held the customer's upstream stopped; another took over.
    OwnerFailover,
    /// The node that held the customer's upstream handed it over on a planned shutdown.
    OwnerHandoff,
    /// The cluster was unreachable and the node served the customer on its own.
    ClusterDegraded,
}

impl GapReason {
    /// The reason as it is written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::UpstreamReconnect => "upstream_reconnect",
            GapReason::OwnerFailover => "owner_failover",
            GapReason::OwnerHandoff => "owner_handoff",
            GapReason::ClusterDegraded => "cluster_degraded",
        }
    }
}

#[derive(Serialize)]
struct GapBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    reason: &'static str,
    since: &'a str,
    until: &'a str,
    cursor: String,
}

/// The whole text frame telling a session that events between `since` and `until` may have
/// been lost: no `event_type`, so no event handler takes it for an event. `cursor` is the
/// gap's own position in the stream: a client that reloaded its state resumes from it.
pub fn gap_frame(
    reason: GapReason,
    since: std::time::SystemTime,
    until: std::time::SystemTime,
    cursor: Cursor,
) -> Bytes {
    let since = crate::timestamp::format(since);
    let until = crate::timestamp::format(until);
    let body = GapBody {
        kind: "gap",
        reason: reason.as_str(),
        since: &since,
        until: &until,
        cursor: cursor.to_string(),
    };
    let json = serde_json::to_string(&body).unwrap_or_else(|_| "{\"type\":\"gap\"}".to_owned());
    ws::encode(OpCode::Text, json.as_bytes())
}

#[derive(Serialize)]
struct ResumedBody {
    #[serde(rename = "type")]
    kind: &'static str,
    recovered: bool,
    cursor: Option<String>,
    replayed: usize,
}

/// The answer to a subscribe with `since` (protocol.md §1.7). `recovered: true` promises that
/// every event after the client's cursor that it may see follows (`replayed` of them), then
/// live events; `cursor` is the stream's latest position at the seam (`null` before the
/// first event): once the replayed events are handled, it is the one to resume from.
pub fn resumed_frame(recovered: bool, cursor: Option<Cursor>, replayed: usize) -> Bytes {
    let body = ResumedBody {
        kind: "resumed",
        recovered,
        cursor: cursor.map(|c| c.to_string()),
        replayed,
    };
    let json = serde_json::to_string(&body).unwrap_or_else(|_| "{\"type\":\"resumed\"}".to_owned());
    ws::encode(OpCode::Text, json.as_bytes())
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::client::ErrorCode;
    use crate::ws::{Decoder, Message, Role};

    fn payload(frame: &Bytes) -> serde_json::Value {
        let mut buf = BytesMut::from(&frame[..]);
        let Ok(Some(Message::Text(text))) = Decoder::new(Role::Client, 1 << 20).decode(&mut buf)
        else {
            panic!("not one text frame: {frame:?}");
        };
        assert!(buf.is_empty());
        serde_json::from_slice(&text).expect("valid json")
    }

    #[test]
    fn envelope_is_valid_json_in_the_tutorial_layout() {
        let topic = Topic::parse("customer_id:12345678-1234-1234-1234-123456789012:call:a1")
            .expect("valid topic");
        let head = EnvelopeHead::new("call \"quoted\"", "2026-01-20T10:30:00.000000Z");
        let data = br#"{"id":"a1","status":"hangup","n":[1,2]}"#;
        let frame = head.frame(&topic, data);
        let value = payload(&frame);
        assert_eq!(value["event_type"], "call \"quoted\"");
        assert_eq!(value["timestamp"], "2026-01-20T10:30:00.000000Z");
        assert_eq!(value["topic"], topic.as_str());
        assert_eq!(value["data"]["status"], "hangup");
        assert!(value.get("cursor").is_none());
        // The data bytes are forwarded as they came.
        let text = std::str::from_utf8(&frame[ws::header_len(frame.len() - 4)..]).expect("utf-8");
        assert!(text.ends_with(r#""data":{"id":"a1","status":"hangup","n":[1,2]}}"#));
        // With a cursor, it comes last, after the untouched data.
        let cursor = Cursor {
            epoch: 0xab,
            offset: 0x1f,
        };
        let head = EnvelopeHead::new("call_hangup", "t").with_cursor(cursor);
        let frame = head.frame(&topic, data);
        let value = payload(&frame);
        assert_eq!(value["cursor"], "00000000000000ab-1f");
        assert_eq!(&head.data_in(&frame, data.len())[..], &data[..]);
        assert_eq!(value["data"]["n"][1], 2);
        assert_eq!(value["topic"], topic.as_str());
    }

    #[test]
    fn large_envelope_gets_a_long_header() {
        let topic = Topic::parse("agent_id:12345678-1234-1234-1234-123456789012:call:x")
            .expect("valid topic");
        let data = format!("\"{}\"", "y".repeat(70_000));
        let frame = EnvelopeHead::new("e", "t").frame(&topic, data.as_bytes());
        assert_eq!(payload(&frame)["data"].as_str().map(str::len), Some(70_000));
    }

    #[test]
    fn gap_frame_bounds_the_interval() {
        use std::time::{Duration, UNIX_EPOCH};
        let since = UNIX_EPOCH + Duration::from_secs(1_768_905_000);
        let until = since + Duration::from_millis(1500);
        let cursor = Cursor {
            epoch: 1,
            offset: 2,
        };
        let value = payload(&gap_frame(
            GapReason::UpstreamReconnect,
            since,
            until,
            cursor,
        ));
        assert_eq!(
            value,
            serde_json::json!({"type":"gap","reason":"upstream_reconnect","since":"2026-01-20T10:30:00.000000Z","until":"2026-01-20T10:30:01.500000Z","cursor":"0000000000000001-2"})
        );
    }

    #[test]
    fn resumed_frame_says_whether_anything_may_be_missing() {
        let cursor = Cursor {
            epoch: 0xff,
            offset: 0,
        };
        assert_eq!(
            payload(&resumed_frame(true, Some(cursor), 3)),
            serde_json::json!({"type":"resumed","recovered":true,"cursor":"00000000000000ff-0","replayed":3})
        );
        assert_eq!(
            payload(&resumed_frame(false, None, 0)),
            serde_json::json!({"type":"resumed","recovered":false,"cursor":null,"replayed":0})
        );
    }

    #[test]
    fn error_frame_has_no_event_type() {
        let refusal = Refusal::with_topics(
            ErrorCode::ForbiddenTopic,
            "not yours",
            vec!["customer_id:x".into()],
        );
        let value = payload(&error_frame(&refusal));
        assert_eq!(value["type"], "error");
        assert_eq!(value["code"], "forbidden_topic");
        assert_eq!(value["message"], "not yours");
        assert_eq!(value["topics"][0], "customer_id:x");
        assert!(value.get("event_type").is_none());
    }
}
