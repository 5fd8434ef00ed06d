//! Messages a browser sends (protocol.md §1.3) and the codes that refuse them (§1.5).
//!
//! ```json
//! {"type":"subscribe","topics":["customer_id:<uuid>:call:*"]}
//! {"type":"unsubscribe","topics":["customer_id:<uuid>:call:*"]}
//! {"type":"subscribe","topics":["customer_id:<uuid>:call:*"],"since":"<cursor>"}
//! ```
//!
//! [`parse_request`] checks everything that can be checked without knowing who sent the
//! message; permissions and per-session counts are the session's to check.

use std::fmt;

use serde::Deserialize;

use crate::cursor::Cursor;
use crate::topic::Pattern;

/// The most topics one message may carry.
pub const MAX_TOPICS_PER_MESSAGE: usize = 256;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start receiving events of the topics.
    Subscribe,
    /// Stop receiving events of the topics.
    Unsubscribe,
}

/// A well-formed client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Subscribe or unsubscribe.
    pub action: Action,
    /// The patterns, in the order sent, at least one.
    pub topics: Vec<Pattern>,
    /// Each pattern's text exactly as the client sent it (a pattern keeps its owner in
    /// lower case), for refusals that name topics.
    pub sent: Vec<String>,
    /// For a subscribe that resumes (protocol.md §1.7): the last cursor the client handled.
    pub since: Option<Cursor>,
}

/// Why a request was refused; the `code` of an error frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The message is not a JSON object of the expected shape.
    InvalidJson,
    /// The `type` is missing or names no known request.
    UnknownType,
    /// A topic does not parse (protocol.md §1.4), or the list is empty.
    InvalidTopic,
    /// The identity may not subscribe to a topic.
    ForbiddenTopic,
    /// The message or the session would hold more topics than allowed.
    TooManyTopics,
    /// The session sends requests faster than allowed.
    RateLimited,
    /// `since` is not a cursor the gateway gave out, or is used where it cannot apply.
    InvalidCursor,
    /// The topics would need more connections to VoIPBIN than the customer may have.
    UpstreamLimit,
}

impl ErrorCode {
    /// The code as it is written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidTopic => "invalid_topic",
            ErrorCode::ForbiddenTopic => "forbidden_topic",
            ErrorCode::TooManyTopics => "too_many_topics",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::InvalidCursor => "invalid_cursor",
            ErrorCode::UpstreamLimit => "upstream_limit",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused request: what goes into an error frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub code: ErrorCode,
    /// A sentence for a person.
    pub message: String,
    /// The topics concerned, as sent (empty when the refusal is not about topics).
    pub topics: Vec<String>,
}

impl Refusal {
    /// A refusal not about particular topics.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            topics: Vec::new(),
        }
    }

    /// A refusal naming the topics concerned.
    pub fn with_topics(code: ErrorCode, message: impl Into<String>, topics: Vec<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            topics,
        }
    }
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
    topics: Option<serde_json::Value>,
    since: Option<serde_json::Value>,
}

/// Parses one text message from a browser.
///
/// # Errors
/// A [`Refusal`] with `invalid_json` (not a JSON object), `unknown_type` (missing or unknown
/// `type`), `invalid_topic` (no topics, a topic that is not a string or does not parse; all
/// bad topics are named), `too_many_topics` (more than [`MAX_TOPICS_PER_MESSAGE`]) or
/// `invalid_cursor` (a `since` that is not a cursor string, or on an unsubscribe). A `null`
/// `since` is no `since`.
pub fn parse_request(text: &[u8]) -> Result<Request, Refusal> {
    // serde reads a struct from a JSON array too; only an object is a message.
    let is_object = text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let raw: Option<Raw> = is_object
        .then(|| serde_json::from_slice(text).ok())
        .flatten();
    let raw = raw.ok_or_else(|| {
        Refusal::new(
            ErrorCode::InvalidJson,
            "message is not a JSON object with \"type\" and \"topics\"",
        )
    })?;
    let action = match raw.kind.as_ref().and_then(|k| k.as_str()) {
        Some("subscribe") => Action::Subscribe,
        Some("unsubscribe") => Action::Unsubscribe,
        Some(_) => {
            return Err(Refusal::new(
                ErrorCode::UnknownType,
                "\"type\" must be \"subscribe\" or \"unsubscribe\"",
            ));
        }
        None => {
            return Err(Refusal::new(
                ErrorCode::UnknownType,
                "message has no string \"type\"",
            ));
        }
    };
    let Some(serde_json::Value::Array(items)) = raw.topics else {
        return Err(Refusal::new(
            ErrorCode::InvalidTopic,
            "\"topics\" must be a list of strings",
        ));
    };
    if items.is_empty() {
        return Err(Refusal::new(
            ErrorCode::InvalidTopic,
            "\"topics\" must name at least one topic",
        ));
    }
    if items.len() > MAX_TOPICS_PER_MESSAGE {
        return Err(Refusal::new(
            ErrorCode::TooManyTopics,
            format!("a message may carry at most {MAX_TOPICS_PER_MESSAGE} topics"),
        ));
    }
    let since = match raw.since {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(text)) if action == Action::Subscribe => {
            Some(Cursor::parse(&text).ok_or_else(|| {
                Refusal::new(
                    ErrorCode::InvalidCursor,
                    "\"since\" is not a cursor this gateway gave out",
                )
            })?)
        }
        Some(serde_json::Value::String(_)) => {
            return Err(Refusal::new(
                ErrorCode::InvalidCursor,
                "\"since\" applies to subscribe only",
            ));
        }
        Some(_) => {
            return Err(Refusal::new(
                ErrorCode::InvalidCursor,
                "\"since\" must be a cursor string",
            ));
        }
    };
    let mut topics = Vec::with_capacity(items.len());
    let mut sent = Vec::with_capacity(items.len());
    let mut invalid = Vec::new();
    let mut first_reason = None;
    for item in items {
        match item {
            serde_json::Value::String(text) => match Pattern::parse(&text) {
                Ok(pattern) => {
                    topics.push(pattern);
                    sent.push(text);
                }
                Err(error) => {
                    first_reason.get_or_insert(error);
                    invalid.push(text);
                }
            },
            other => {
                invalid.push(other.to_string());
            }
        }
    }
    if !invalid.is_empty() {
        let message = match first_reason {
            Some(reason) => format!("invalid topic: {reason}"),
            None => "topics must be strings".to_owned(),
        };
        return Err(Refusal::with_topics(
            ErrorCode::InvalidTopic,
            message,
            invalid,
        ));
    }
    Ok(Request {
        action,
        topics,
        sent,
        since,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "12345678-1234-1234-1234-123456789012";

    /// The action and topics of an accepted request, or the code and topics of a refusal.
    type Expected<'a> = Result<(Action, &'a [&'a str]), (ErrorCode, &'a [&'a str])>;

    fn check(input: &str, expected: Expected<'_>) {
        let got = parse_request(input.as_bytes());
        match (got, expected) {
            (Ok(request), Ok((action, topics))) => {
                assert_eq!(request.action, action, "{input}");
                let got: Vec<&str> = request.topics.iter().map(|t| t.as_str()).collect();
                assert_eq!(got, topics, "{input}");
            }
            (Err(refusal), Err((code, topics))) => {
                assert_eq!(refusal.code, code, "{input}: {refusal:?}");
                assert_eq!(refusal.topics, topics, "{input}");
                assert!(!refusal.message.is_empty());
            }
            (got, expected) => panic!("{input}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn subscribe_and_unsubscribe() {
        let call = format!("customer_id:{C}:call:*");
        let msg = format!(r#"{{"type":"subscribe","topics":["{call}"]}}"#);
        check(&msg, Ok((Action::Subscribe, &[&call])));
        let msg = format!(r#"{{"topics":["{call}"],"type":"unsubscribe","extra":1}}"#);
        check(&msg, Ok((Action::Unsubscribe, &[&call])));
    }

    #[test]
    fn malformed_messages() {
        check("", Err((ErrorCode::InvalidJson, &[])));
        check("not json", Err((ErrorCode::InvalidJson, &[])));
        check("[1,2]", Err((ErrorCode::InvalidJson, &[])));
        check("\"subscribe\"", Err((ErrorCode::InvalidJson, &[])));
        check(r#"{"topics":[]}"#, Err((ErrorCode::UnknownType, &[])));
        check(
            r#"{"type":7,"topics":[]}"#,
            Err((ErrorCode::UnknownType, &[])),
        );
        check(
            r#"{"type":"publish","topics":[]}"#,
            Err((ErrorCode::UnknownType, &[])),
        );
        check(
            r#"{"type":"subscribe"}"#,
            Err((ErrorCode::InvalidTopic, &[])),
        );
        check(
            r#"{"type":"subscribe","topics":"x"}"#,
            Err((ErrorCode::InvalidTopic, &[])),
        );
        check(
            r#"{"type":"subscribe","topics":[]}"#,
            Err((ErrorCode::InvalidTopic, &[])),
        );
    }

    #[test]
    fn invalid_topics_are_all_named() {
        let good = format!("customer_id:{C}:call:*");
        let msg = format!(
            r#"{{"type":"subscribe","topics":["{good}","nope","customer_id:00000000-0000-0000-0000-000000000000",5]}}"#
        );
        check(
            &msg,
            Err((
                ErrorCode::InvalidTopic,
                &[
                    "nope",
                    "customer_id:00000000-0000-0000-0000-000000000000",
                    "5",
                ],
            )),
        );
    }

    #[test]
    fn too_many_topics_in_one_message() {
        let topic = format!("\"customer_id:{C}:call:*\"");
        let list = vec![topic; MAX_TOPICS_PER_MESSAGE + 1].join(",");
        let msg = format!(r#"{{"type":"subscribe","topics":[{list}]}}"#);
        check(&msg, Err((ErrorCode::TooManyTopics, &[])));
    }

    #[test]
    fn since_is_a_cursor_on_a_subscribe() {
        let call = format!("customer_id:{C}:call:*");
        let with = |since: &str, kind: &str| {
            format!(r#"{{"type":"{kind}","topics":["{call}"],"since":{since}}}"#)
        };
        let request =
            parse_request(with("\"00000000000000ff-1a\"", "subscribe").as_bytes()).expect("valid");
        assert_eq!(
            request.since,
            Some(Cursor {
                epoch: 255,
                offset: 26
            })
        );
        let request = parse_request(with("null", "subscribe").as_bytes()).expect("valid");
        assert_eq!(request.since, None);
        for bad in [
            "\"\"",
            "\"ff-1\"",
            "\"00000000000000ff-01\"",
            "7",
            "[]",
            "{}",
        ] {
            check(
                &with(bad, "subscribe"),
                Err((ErrorCode::InvalidCursor, &[])),
            );
        }
        check(
            &with("\"00000000000000ff-1\"", "unsubscribe"),
            Err((ErrorCode::InvalidCursor, &[])),
        );
    }

    #[test]
    fn deep_nesting_is_refused_without_overflow() {
        let deep = format!("{{\"type\":{}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
        check(&deep, Err((ErrorCode::InvalidJson, &[])));
    }
}
