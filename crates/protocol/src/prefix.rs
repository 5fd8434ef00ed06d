//! What a customer's upstream asks VoIPBIN for, on behalf of a session's pattern, and what a
//! frame that arrives through it is known to be (docs/protocol.md §11 and §13).
//!
//! VoIPBIN's server (its code today) matches a subscription as a **raw string prefix** of
//! the topics it publishes under, with no wildcard, and sends **bare resource objects** that
//! name neither their type nor their topic. So:
//! - a session's pattern is asked upstream as the [`Prefix`] that selects exactly its events
//!   on such a server: the pattern's literal segments up to its first `*`, with a trailing
//!   `:` where the last one must match a whole segment (`…:queue:` does not catch
//!   `queuecall`);
//! - a frame's resource and event type are known only from the prefix it arrived through:
//!   its [`Label`]. Prefixes with the same label can share a connection (nothing in their
//!   frames tells them apart, and nothing needs to); prefixes with different labels cannot.
//!
//! The tutorial's world ([`Matching::Segment`]) matches segment by segment; there the same
//! prefixes are spelt without the trailing `:`.
//!
//! Invariants:
//! - A prefix is always under the customer's own scope (`customer_id:<C>`): agent patterns
//!   are served from the customer's stream.
//! - A label never says more than the prefix proves: every topic a prefix can match has
//!   the label's resource as its resource segment, and, when the label has an event type,
//!   that event type.
//! - Nothing here does I/O or panics on any input.

use std::fmt;

use uuid::Uuid;

use crate::topic::{MAX_TOPIC_LEN, Pattern, Scope, WILDCARD};

/// The longest prefix: a pattern's length, its scope made `customer_id` (three bytes longer
/// than `agent_id`) and a trailing `:`.
pub const MAX_PREFIX_LEN: usize = MAX_TOPIC_LEN + 4;

/// How the upstream server matches a subscription against the topics it publishes under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Matching {
    /// A raw string prefix with no wildcard: VoIPBIN's server code today (the default).
    #[default]
    Prefix,
    /// Segment by segment, `*` matching one segment and a shorter pattern matching as a
    /// segment prefix: VoIPBIN's tutorial.
    Segment,
}

impl Matching {
    /// The word for it in configuration (`prefix`, `segment`).
    pub fn as_str(self) -> &'static str {
        match self {
            Matching::Prefix => "prefix",
            Matching::Segment => "segment",
        }
    }
}

impl std::str::FromStr for Matching {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "prefix" => Ok(Matching::Prefix),
            "segment" => Ok(Matching::Segment),
            other => Err(format!("unknown matching {other:?}: prefix or segment")),
        }
    }
}

/// What every frame that arrives through a prefix is known to be: its resource and, for a
/// typed prefix (`customer_id:<C>:call:call_hangup:`), its event type. The whole stream's
/// label knows neither.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    resource: Option<Box<str>>,
    event_type: Option<Box<str>>,
}

impl Label {
    /// The label of the whole stream: nothing known.
    pub fn none() -> Self {
        Label::default()
    }

    /// A label of `resource`, typed `event_type` when given.
    pub fn of(resource: &str, event_type: Option<&str>) -> Self {
        Label {
            resource: Some(resource.into()),
            event_type: event_type.map(Into::into),
        }
    }

    /// The resource of every frame with this label, if known.
    pub fn resource(&self) -> Option<&str> {
        self.resource.as_deref()
    }

    /// The event type of every frame with this label, if known.
    pub fn event_type(&self) -> Option<&str> {
        self.event_type.as_deref()
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.resource, &self.event_type) {
            (None, _) => f.write_str("*"),
            (Some(resource), None) => f.write_str(resource),
            (Some(resource), Some(event_type)) => write!(f, "{resource}/{event_type}"),
        }
    }
}

/// Whether `segment`, after resource `resource`, is an event type rather than an id: VoIPBIN
/// names every event type after its resource (`call_hangup`, `webchat_session_created`;
/// the tutorial's `call.status`), and no id starts so.
pub fn is_event_type(resource: &str, segment: &str) -> bool {
    segment
        .strip_prefix(resource)
        .is_some_and(|rest| rest.len() > 1 && (rest.starts_with('_') || rest.starts_with('.')))
}

/// The label that `segments` (the literal segments after the owner) prove.
fn label_of<'a>(mut segments: impl Iterator<Item = &'a str>) -> Label {
    let Some(resource) = segments.next() else {
        return Label::none();
    };
    let event_type = segments.next().filter(|s| is_event_type(resource, s));
    Label::of(resource, event_type)
}

/// Why a text is not a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// Longer than [`MAX_PREFIX_LEN`].
    #[error("prefix is longer than {MAX_PREFIX_LEN} bytes")]
    TooLong,
    /// Not `customer_id:<uuid>` followed by `:`-separated segments, one optional trailing
    /// `:`, no `*` segment, printable ASCII without `"` or `\`.
    #[error("not a customer prefix")]
    Malformed,
}

/// A subscription as VoIPBIN takes it: `customer_id:<C>` and literal segments, with a
/// trailing `:` where a segment must be matched whole. Compared, hashed and ordered by its
/// text (its customer and label follow from it).
#[derive(Clone)]
pub struct Prefix {
    text: Box<str>,
    customer: Uuid,
    label: Label,
}

impl PartialEq for Prefix {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Prefix {}

impl std::hash::Hash for Prefix {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl PartialOrd for Prefix {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Prefix {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Prefix({:?})", self.text)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Prefix {
    /// What `customer`'s upstream subscribes to for a session's `pattern` placed in its hub
    /// (an `agent_id:` pattern is served from the customer's stream): the literal segments
    /// before the first `*`. Under [`Matching::Prefix`] a `:` follows unless the last of them
    /// is an id (the last segment of a topic, which nothing follows).
    pub fn for_pattern(pattern: &Pattern, customer: Uuid, matching: Matching) -> Prefix {
        let literal: Vec<&str> = pattern.rest().take_while(|s| *s != WILDCARD).collect();
        let mut text = Pattern::whole(Scope::Customer, customer)
            .as_str()
            .to_owned();
        for segment in &literal {
            text.push(':');
            text.push_str(segment);
        }
        let label = label_of(literal.iter().copied());
        // The last literal is an id when it follows the resource and is no event type, or
        // follows an event type.
        let ends_with_id = match literal.len() {
            0 | 1 => false,
            2 => label.event_type().is_none(),
            _ => true,
        };
        if matching == Matching::Prefix && !literal.is_empty() && !ends_with_id {
            text.push(':');
        }
        Prefix {
            text: text.into(),
            customer,
            label,
        }
    }

    /// The whole stream of `customer`.
    pub fn whole(customer: Uuid) -> Prefix {
        Prefix {
            text: Pattern::whole(Scope::Customer, customer).as_str().into(),
            customer,
            label: Label::none(),
        }
    }

    /// Reads a prefix back from its text (the cluster's log carries them).
    ///
    /// # Errors
    /// [`PrefixError`] when the text is no prefix this module would make.
    pub fn parse(text: &str) -> Result<Prefix, PrefixError> {
        if text.len() > MAX_PREFIX_LEN {
            return Err(PrefixError::TooLong);
        }
        let trimmed = text.strip_suffix(':').unwrap_or(text);
        let mut parts = trimmed.split(':');
        let whole = match (parts.next(), parts.next()) {
            (Some(scope), Some(owner)) => {
                Pattern::parse(&format!("{scope}:{owner}")).map_err(|_| PrefixError::Malformed)?
            }
            _ => return Err(PrefixError::Malformed),
        };
        let rest: Vec<&str> = parts.collect();
        let valid_segment = |s: &&str| {
            !s.is_empty()
                && *s != WILDCARD
                && s.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        };
        // A trailing `:` only after a segment; the owner is in lower case, as made.
        if whole.scope() != Scope::Customer
            || !rest.iter().all(valid_segment)
            || (rest.is_empty() && trimmed.len() != text.len())
            || !text.starts_with(whole.as_str())
        {
            return Err(PrefixError::Malformed);
        }
        Ok(Prefix {
            text: text.into(),
            customer: whole.owner(),
            label: label_of(rest.into_iter()),
        })
    }

    /// The text sent upstream.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The customer whose stream it selects from.
    pub fn customer(&self) -> Uuid {
        self.customer
    }

    /// What frames arriving through it are known to be.
    pub fn label(&self) -> &Label {
        &self.label
    }

    /// Whether every event that `narrower` delivers, with what its label says, this one
    /// delivers too, with as much said, under either matching: the same label, and a prefix
    /// of its text cut at a segment's end (`…:call:k1` does not cover `…:call:k10`, which a
    /// segment-matching server does not deliver through it).
    pub fn covers(&self, narrower: &Prefix) -> bool {
        self.label == narrower.label
            && narrower.text.strip_prefix(&*self.text).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with(':') || self.text.ends_with(':')
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "12345678-1234-1234-1234-123456789012";
    const A: &str = "98765432-4321-4321-4321-210987654321";
    const K: &str = "a1b2c3d4-e5f6-7890-abcd-ef1234567890";

    fn customer() -> Uuid {
        Uuid::parse_str(C).expect("uuid")
    }

    /// Pattern → (prefix under `Prefix`, prefix under `Segment`, label).
    fn check(pattern: &str, prefix: &str, segment: &str, label: &str) {
        let pattern = Pattern::parse(pattern).expect("pattern");
        let p = Prefix::for_pattern(&pattern, customer(), Matching::Prefix);
        let s = Prefix::for_pattern(&pattern, customer(), Matching::Segment);
        assert_eq!(p.as_str(), prefix, "{pattern:?}");
        assert_eq!(s.as_str(), segment, "{pattern:?}");
        assert_eq!(p.label().to_string(), label, "{pattern:?}");
        assert_eq!(s.label(), p.label(), "{pattern:?}");
        // What is made reads back as itself.
        assert_eq!(Prefix::parse(p.as_str()), Ok(p.clone()));
        assert_eq!(Prefix::parse(s.as_str()), Ok(s));
    }

    #[test]
    fn patterns_become_the_prefixes_that_select_exactly_their_events() {
        let c = format!("customer_id:{C}");
        check(&c, &c, &c, "*");
        check(&format!("{c}:*"), &c, &c, "*");
        check(&format!("{c}:*:{K}"), &c, &c, "*");
        check(
            &format!("{c}:call"),
            &format!("{c}:call:"),
            &format!("{c}:call"),
            "call",
        );
        check(
            &format!("{c}:call:*"),
            &format!("{c}:call:"),
            &format!("{c}:call"),
            "call",
        );
        check(
            &format!("{c}:queue:*"),
            &format!("{c}:queue:"),
            &format!("{c}:queue"),
            "queue",
        );
        // An id ends a topic: nothing may follow it, so no `:`.
        check(
            &format!("{c}:call:{K}"),
            &format!("{c}:call:{K}"),
            &format!("{c}:call:{K}"),
            "call",
        );
        check(
            &format!("{c}:call:k1"),
            &format!("{c}:call:k1"),
            &format!("{c}:call:k1"),
            "call",
        );
        // An event type is a whole segment with more after it.
        check(
            &format!("{c}:call:call_hangup"),
            &format!("{c}:call:call_hangup:"),
            &format!("{c}:call:call_hangup"),
            "call/call_hangup",
        );
        check(
            &format!("{c}:call:call_hangup:*"),
            &format!("{c}:call:call_hangup:"),
            &format!("{c}:call:call_hangup"),
            "call/call_hangup",
        );
        check(
            &format!("{c}:call:call_hangup:{K}"),
            &format!("{c}:call:call_hangup:{K}"),
            &format!("{c}:call:call_hangup:{K}"),
            "call/call_hangup",
        );
        check(
            &format!("{c}:webchat_session:webchat_session_created"),
            &format!("{c}:webchat_session:webchat_session_created:"),
            &format!("{c}:webchat_session:webchat_session_created"),
            "webchat_session/webchat_session_created",
        );
        // A wildcard in the event type's place keeps the resource only.
        check(
            &format!("{c}:call:*:{K}"),
            &format!("{c}:call:"),
            &format!("{c}:call"),
            "call",
        );
        // Agent patterns are asked on the customer's stream.
        check(
            &format!("agent_id:{A}:call:*"),
            &format!("{c}:call:"),
            &format!("{c}:call"),
            "call",
        );
        check(&format!("agent_id:{A}"), &c, &c, "*");
    }

    #[test]
    fn event_types_are_named_after_their_resource() {
        assert!(is_event_type("call", "call_hangup"));
        assert!(is_event_type("call", "call.status"));
        assert!(is_event_type("webchat_session", "webchat_session_created"));
        assert!(!is_event_type("call", K));
        assert!(!is_event_type("call", "call"));
        assert!(!is_event_type("call", "call_"));
        assert!(!is_event_type("call", "callx_created"));
        assert!(!is_event_type("queue", "queuecall_created"));
    }

    #[test]
    fn a_prefix_covers_only_narrower_ones_that_say_no_more() {
        let of = |p: &str| Prefix::parse(&format!("customer_id:{C}{p}")).expect("prefix");
        assert!(of(":call:").covers(&of(&format!(":call:{K}"))));
        assert!(of(":call:").covers(&of(":call:")));
        assert!(of(":call").covers(&of(":call:k1")));
        // The whole stream delivers every event, but labels none of them.
        assert!(!of("").covers(&of(":call:")));
        // A typed prefix says more than the resource's.
        assert!(!of(":call:").covers(&of(":call:call_hangup:")));
        assert!(!of(":queue").covers(&of(":queuecall")));
        assert!(!of(":call:call_hangup").covers(&of(":call:call_hangupx")));
        // An id is matched whole.
        assert!(!of(":call:k1").covers(&of(":call:k10")));
        assert!(of(":call:k1").covers(&of(":call:k1")));
    }

    mod exactness {
        //! Checked against VoIPBIN's publishing: for events of resources whose names are
        //! prefixes of one another, and sessions' patterns of every shape, a prefix selects
        //! every event its pattern matches (on a prefix-matching server and on a
        //! segment-matching one), its label is true of every topic it selects, and a frame
        //! decoded with that label has a topic the pattern matches.

        use std::time::SystemTime;

        use bytes::Bytes;
        use proptest::prelude::*;

        use super::*;
        use crate::Topic;
        use crate::upstream::{Context, decode};

        const RESOURCES: &[&str] = &[
            "call",
            "callx",
            "queue",
            "queuecall",
            "ai",
            "aicall",
            "campaign",
            "campaigncall",
        ];
        const VERBS: &[&str] = &["created", "updated", "hangup"];
        const IDS: &[&str] = &[K, "k1", "k10"];

        /// An event as VoIPBIN publishes it: its topics, and its bare object.
        #[derive(Debug, Clone)]
        struct Published {
            resource: &'static str,
            event_type: String,
            id: &'static str,
            owner: Option<Uuid>,
        }

        impl Published {
            fn topics(&self) -> Vec<Topic> {
                let mut owners = vec![(Scope::Customer, customer())];
                owners.extend(self.owner.map(|o| (Scope::Agent, o)));
                let mut topics = Vec::new();
                for (scope, owner) in owners {
                    for segments in [
                        vec![self.resource, self.id],
                        vec![self.resource, &self.event_type, self.id],
                    ] {
                        topics.push(Topic::build(scope, owner, &segments).expect("topic"));
                    }
                }
                topics
            }

            /// Its topics of the customer's scope: what a customer prefix can select.
            fn customer_topics(&self) -> Vec<Topic> {
                let mut topics = self.topics();
                topics.retain(|t| t.scope() == Scope::Customer);
                topics
            }

            fn frame(&self) -> Bytes {
                let owner = self
                    .owner
                    .map(|o| format!(r#","owner_type":"agent","owner_id":"{o}""#))
                    .unwrap_or_default();
                Bytes::from(format!(
                    r#"{{"id":"{}","customer_id":"{C}"{owner}}}"#,
                    self.id
                ))
            }
        }

        fn agent() -> Uuid {
            Uuid::parse_str(A).expect("uuid")
        }

        fn published() -> impl Strategy<Value = Published> {
            (
                prop::sample::select(RESOURCES),
                prop::sample::select(VERBS),
                prop::sample::select(IDS),
                any::<bool>(),
            )
                .prop_map(|(resource, verb, id, owned)| Published {
                    resource,
                    event_type: format!("{resource}_{verb}"),
                    id,
                    owner: owned.then(agent),
                })
        }

        /// A session pattern (`customer_id:` or the agent's own `agent_id:`), and whether it
        /// is of a shape the gateway serves whole (no `*` before a literal segment).
        fn pattern() -> impl Strategy<Value = (Pattern, bool)> {
            let resource = prop::sample::select(RESOURCES);
            let verb = prop::sample::select(VERBS);
            let id = prop::sample::select(IDS);
            (resource, verb, id, 0..10usize, any::<bool>()).prop_map(
                |(resource, verb, id, shape, as_agent)| {
                    let event_type = format!("{resource}_{verb}");
                    let (rest, whole): (Vec<&str>, bool) = match shape {
                        0 => (vec![], true),
                        1 => (vec![resource], true),
                        2 => (vec![resource, "*"], true),
                        3 => (vec![resource, &event_type], true),
                        4 => (vec![resource, &event_type, "*"], true),
                        5 => (vec![resource, id], true),
                        6 => (vec![resource, &event_type, id], true),
                        7 => (vec!["*"], false),
                        8 => (vec!["*", id], false),
                        _ => (vec![resource, "*", id], false),
                    };
                    let owner = if as_agent {
                        format!("agent_id:{A}")
                    } else {
                        format!("customer_id:{C}")
                    };
                    let text = std::iter::once(owner.as_str())
                        .chain(rest)
                        .collect::<Vec<_>>()
                        .join(":");
                    (Pattern::parse(&text).expect("pattern"), whole)
                },
            )
        }

        /// Whether `prefix` selects `topic` on a server of `matching`.
        fn selects(prefix: &Prefix, topic: &Topic, matching: Matching) -> bool {
            match matching {
                Matching::Prefix => topic.as_str().starts_with(prefix.as_str()),
                Matching::Segment => Pattern::parse(prefix.as_str())
                    .expect("a segment-world prefix is a pattern")
                    .matches(topic),
            }
        }

        proptest! {
            #[test]
            fn prefixes_select_exactly_and_labels_tell_the_truth(
                event in published(),
                (pattern, whole) in pattern(),
            ) {
                for matching in [Matching::Prefix, Matching::Segment] {
                    let prefix = Prefix::for_pattern(&pattern, customer(), matching);
                    let label = prefix.label();
                    let selected: Vec<Topic> = event
                        .customer_topics()
                        .into_iter()
                        .filter(|t| selects(&prefix, t, matching))
                        .collect();
                    // Whatever arrives through it is what its label says.
                    for topic in &selected {
                        if let Some(resource) = label.resource() {
                            prop_assert_eq!(topic.rest_segment(0), Some(resource), "{:?} {:?}", prefix, topic);
                        }
                        if let Some(event_type) = label.event_type() {
                            prop_assert_eq!(topic.segment_count(), 5, "{:?} {:?}", prefix, topic);
                            prop_assert_eq!(topic.rest_segment(1), Some(event_type));
                        }
                    }
                    // An event the pattern matches arrives through it, and a frame of it
                    // decoded with the label has a topic the pattern matches.
                    // And nothing it does not match is made to look as if it did.
                    let matched = event.topics().iter().any(|t| pattern.matches(t));
                    if matched && whole {
                        prop_assert!(!selected.is_empty(), "{:?} selects nothing of {:?}", prefix, event);
                    }
                    if !selected.is_empty() && (whole || !matched) {
                        let cx = Context {
                            customer_id: customer(),
                            received_at: SystemTime::UNIX_EPOCH,
                            label,
                        };
                        let decoded = decode(&event.frame(), &cx).expect("decodes");
                        prop_assert_eq!(
                            decoded.topics.iter().any(|t| pattern.matches(t)),
                            matched,
                            "{:?} through {:?}: {:?}", pattern, prefix, decoded.topics
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn anything_else_is_not_a_prefix() {
        for bad in [
            String::new(),
            "customer_id".to_owned(),
            format!("agent_id:{A}:call:"),
            format!("customer_id:{}:call:", K.to_uppercase()),
            format!("customer_id:{C}:"),
            format!("customer_id:{C}:call::"),
            format!("customer_id:{C}::call"),
            format!("customer_id:{C}:*"),
            format!("customer_id:{C}:call:*:"),
            format!("customer_id:{C}:call \"x"),
            format!("customer_id:{C}:{}", "x".repeat(MAX_PREFIX_LEN)),
            "customer_id:00000000-0000-0000-0000-000000000000:call:".to_owned(),
        ] {
            assert!(Prefix::parse(&bad).is_err(), "{bad:?}");
        }
    }
}
