//! Topics and subscription patterns (protocol.md §1.4).
//!
//! A topic is segments joined by `:`: `<scope>:<owner-uuid>[:<segment>…]`, where the scope
//! is `customer_id` or `agent_id` and the owner a non-nil hyphenated UUID. A [`Pattern`] is a
//! topic a session subscribes to; its segments after the owner may be `*`, which matches any
//! one segment, and a pattern with fewer segments than a topic matches every topic it is a
//! segment-prefix of. Prefixes are cut at segment boundaries only: `…:queue` does not match
//! `…:queuecall:…`.
//!
//! Invariants:
//! - A parsed topic or pattern is at most [`MAX_TOPIC_LEN`] bytes and [`MAX_SEGMENTS`]
//!   segments, and its text never needs escaping inside a JSON string (no `"`, `\`, control
//!   characters or non-ASCII bytes), so envelopes can embed it verbatim.
//! - Scope and owner are always literal; a wildcard can only stand after the owner.

use std::fmt;

use uuid::Uuid;

/// The longest topic or pattern accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;
/// The most segments a topic or pattern may have, scope and owner included.
pub const MAX_SEGMENTS: usize = 8;
/// The segment that matches any one segment in a [`Pattern`].
pub const WILDCARD: &str = "*";

/// Whose events a topic names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// `customer_id:<customer>…`: events of a whole customer.
    Customer,
    /// `agent_id:<agent>…`: events of resources that one agent owns.
    Agent,
}

impl Scope {
    /// The scope's first segment as it is written in a topic.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Customer => "customer_id",
            Scope::Agent => "agent_id",
        }
    }

    fn parse(segment: &str) -> Option<Self> {
        match segment {
            "customer_id" => Some(Scope::Customer),
            "agent_id" => Some(Scope::Agent),
            _ => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a valid topic or pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The text is longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("topic is longer than {MAX_TOPIC_LEN} bytes")]
    TooLong,
    /// The text has fewer than two segments (scope and owner).
    #[error("topic needs at least a scope and an owner")]
    TooFewSegments,
    /// The text has more than [`MAX_SEGMENTS`] segments.
    #[error("topic has more than {MAX_SEGMENTS} segments")]
    TooManySegments,
    /// The first segment is neither `customer_id` nor `agent_id`.
    #[error("unknown scope")]
    UnknownScope,
    /// The second segment is not a hyphenated UUID.
    #[error("owner is not a uuid")]
    InvalidOwner,
    /// The second segment is the nil UUID.
    #[error("owner is the nil uuid")]
    NilOwner,
    /// Two separators in a row, or a separator at either end.
    #[error("empty segment")]
    EmptySegment,
    /// A byte that is not printable ASCII, or one of `"` and `\`.
    #[error("invalid character")]
    InvalidCharacter,
    /// A `*` segment in an event topic, where only literal segments may stand.
    #[error("wildcard in an event topic")]
    Wildcard,
}

/// The parts shared by topics and patterns.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Parsed {
    text: Box<str>,
    scope: Scope,
    owner: Uuid,
    /// Byte offset of the first segment after the owner; `text.len()` when there is none.
    rest_at: usize,
    /// Number of segments, scope and owner included.
    len: usize,
}

impl Parsed {
    fn parse(text: &str, allow_wildcard: bool) -> Result<Self, TopicError> {
        if text.len() > MAX_TOPIC_LEN {
            return Err(TopicError::TooLong);
        }
        if !text.bytes().all(is_topic_byte) {
            return Err(TopicError::InvalidCharacter);
        }
        let mut segments = text.split(':');
        let scope = segments.next().unwrap_or_default();
        let Some(owner) = segments.next() else {
            return Err(if scope.is_empty() {
                TopicError::EmptySegment
            } else {
                TopicError::TooFewSegments
            });
        };
        let scope = Scope::parse(scope).ok_or(TopicError::UnknownScope)?;
        let owner = parse_owner(owner)?;
        let rest_at = (scope.as_str().len() + 1 + 36 + 1).min(text.len());
        let mut len = 2;
        for segment in segments {
            len += 1;
            if len > MAX_SEGMENTS {
                return Err(TopicError::TooManySegments);
            }
            if segment.is_empty() {
                return Err(TopicError::EmptySegment);
            }
            if !allow_wildcard && segment == WILDCARD {
                return Err(TopicError::Wildcard);
            }
        }
        // The owner is kept in lower case so that equal topics are equal as text.
        let owner_at = scope.as_str().len() + 1;
        let text: Box<str> = if text[owner_at..owner_at + 36]
            .bytes()
            .any(|b| b.is_ascii_uppercase())
        {
            let mut lowered = text.to_owned();
            lowered[owner_at..owner_at + 36].make_ascii_lowercase();
            lowered.into()
        } else {
            text.into()
        };
        Ok(Parsed {
            text,
            scope,
            owner,
            rest_at,
            len,
        })
    }

    fn rest(&self) -> impl Iterator<Item = &str> + Clone {
        let rest = &self.text[self.rest_at..];
        rest.split(':').filter(move |_| !rest.is_empty())
    }
}

fn is_topic_byte(b: u8) -> bool {
    b.is_ascii_graphic() && b != b'"' && b != b'\\'
}

fn parse_owner(owner: &str) -> Result<Uuid, TopicError> {
    if owner.is_empty() {
        return Err(TopicError::EmptySegment);
    }
    // Only the hyphenated form: it is the form VoIPBIN writes, so topics compare as text.
    if owner.len() != 36 {
        return Err(TopicError::InvalidOwner);
    }
    let uuid = Uuid::try_parse(owner).map_err(|_| TopicError::InvalidOwner)?;
    if uuid.is_nil() {
        return Err(TopicError::NilOwner);
    }
    Ok(uuid)
}

macro_rules! common_accessors {
    ($ty:ident) => {
        impl $ty {
            /// The text as it was parsed.
            pub fn as_str(&self) -> &str {
                &self.0.text
            }

            /// The scope (first segment).
            pub fn scope(&self) -> Scope {
                self.0.scope
            }

            /// The owner (second segment): a customer or an agent id.
            pub fn owner(&self) -> Uuid {
                self.0.owner
            }

            /// The segments after the owner, in order.
            pub fn rest(&self) -> impl Iterator<Item = &str> + Clone {
                self.0.rest()
            }

            /// The number of segments, scope and owner included (at least 2).
            pub fn segment_count(&self) -> usize {
                self.0.len
            }

            /// The `n`th segment after the owner (0 is the resource), if there is one.
            pub fn rest_segment(&self, n: usize) -> Option<&str> {
                self.rest().nth(n)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = TopicError;

            fn from_str(text: &str) -> Result<Self, TopicError> {
                Self::parse(text)
            }
        }
    };
}

/// An event topic: literal segments only.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Parsed);

/// A subscription pattern: a topic whose segments after the owner may be `*`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern(Parsed);

common_accessors!(Topic);
common_accessors!(Pattern);

impl Topic {
    /// Parses an event topic.
    ///
    /// # Errors
    /// [`TopicError`] when the text breaks any rule of the module docs or holds a `*` segment.
    pub fn parse(text: &str) -> Result<Self, TopicError> {
        Parsed::parse(text, false).map(Topic)
    }

    /// Builds `<scope>:<owner>:<segment>…`, checking the result like [`Topic::parse`].
    ///
    /// # Errors
    /// [`TopicError`] when a segment is empty, holds `:` or a forbidden byte, or the result is
    /// too long.
    pub fn build(scope: Scope, owner: Uuid, segments: &[&str]) -> Result<Self, TopicError> {
        if segments.iter().any(|s| s.contains(':')) {
            return Err(TopicError::InvalidCharacter);
        }
        let mut text = String::with_capacity(64);
        text.push_str(scope.as_str());
        text.push(':');
        let mut buf = Uuid::encode_buffer();
        text.push_str(owner.hyphenated().encode_lower(&mut buf));
        for segment in segments {
            text.push(':');
            text.push_str(segment);
        }
        Topic::parse(&text)
    }
}

impl Pattern {
    /// Parses a subscription pattern.
    ///
    /// # Errors
    /// [`TopicError`] when the text breaks any rule of the module docs.
    pub fn parse(text: &str) -> Result<Self, TopicError> {
        Parsed::parse(text, true).map(Pattern)
    }

    /// The pattern that matches a customer's or agent's whole stream: `<scope>:<owner>`.
    pub fn whole(scope: Scope, owner: Uuid) -> Self {
        let mut buf = Uuid::encode_buffer();
        let text = format!(
            "{}:{}",
            scope.as_str(),
            owner.hyphenated().encode_lower(&mut buf)
        );
        Pattern(Parsed {
            rest_at: text.len(),
            text: text.into(),
            scope,
            owner,
            len: 2,
        })
    }

    /// Whether this pattern matches `topic`: same scope and owner, then segment by segment,
    /// `*` matching any one segment, and a shorter pattern matching as a segment-prefix.
    pub fn matches(&self, topic: &Topic) -> bool {
        if self.0.scope != topic.0.scope
            || self.0.owner != topic.0.owner
            || self.0.len > topic.0.len
        {
            return false;
        }
        self.rest()
            .zip(topic.rest())
            .all(|(p, t)| p == WILDCARD || p == t)
    }

    /// Whether any segment is `*`.
    pub fn has_wildcard(&self) -> bool {
        self.rest().any(|s| s == WILDCARD)
    }
}

#[cfg(test)]
mod tests;
