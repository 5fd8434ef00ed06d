//! Decoding of the frames VoIPBIN sends upstream (protocol.md §2) into one [`Event`].
//!
//! Three shapes arrive, and each is read:
//! 1. the tutorial's envelope `{"event_type","timestamp","topic","data"}`: routed by `topic`;
//! 2. VoIPBIN's webhook shape `{"type":"call_created","data":{…}}`;
//! 3. the bare resource object, routed only by the subscription it arrived on
//!    ([`Context::bare_resource`]).
//!
//! Whatever the shape, the event gets the topics the real server publishes it under, in this
//! order: `customer_id:<C>:<resource>:<id>`, `customer_id:<C>:<resource>:<event_type>:<id>`,
//! and when `data` names an agent owner, the same two under `agent_id:<owner_id>`.
//!
//! Invariants:
//! - A frame is parsed once; `data` is a slice of the frame, never re-encoded.
//! - An event never carries a customer other than the connection's: a frame whose
//!   `customer_id` (in `data` or in a customer topic) names another customer is refused
//!   with [`DecodeError::ForeignCustomer`].

use std::borrow::Cow;
use std::time::SystemTime;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::timestamp;
use crate::topic::{Scope, Topic, TopicError};

/// Resource names that hold an underscore, so that a webhook `type` such as
/// `webchat_session_created` is split after the resource rather than at the first `_`.
pub const MULTIWORD_RESOURCES: &[&str] = &["webchat_session"];

/// Which of the three shapes a frame came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{"event_type","timestamp","topic","data"}`.
    Envelope,
    /// `{"type","data"}`.
    Webhook,
    /// The resource object itself.
    Bare,
}

/// One upstream event, ready to be matched and enveloped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The shape it arrived in.
    pub shape: Shape,
    /// Its event type (`call_hangup`).
    pub event_type: String,
    /// When it happened, in VoIPBIN's layout (the frame's own, or the time it arrived).
    pub timestamp: String,
    /// The customer whose connection it arrived on.
    pub customer_id: Uuid,
    /// Its topics in the order of the module docs, no duplicates, at least one.
    pub topics: Vec<Topic>,
    /// The resource JSON, exactly the bytes that arrived.
    pub data: Bytes,
}

/// What the decoder knows about the connection a frame arrived on.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The customer the upstream connection belongs to.
    pub customer_id: Uuid,
    /// When the frame arrived, for shapes that carry no timestamp.
    pub received_at: SystemTime,
    /// For bare objects: the resource of the one subscription they can have arrived on, when
    /// it is known. Without it a bare object is routed under `customer_id:<C>` alone.
    pub bare_resource: Option<&'a str>,
}

/// Why a frame could not become an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame is not a JSON object.
    #[error("frame is not a json object")]
    InvalidJson,
    /// The envelope's `topic` does not parse.
    #[error("invalid topic: {0}")]
    InvalidTopic(TopicError),
    /// The frame names a customer other than the connection's.
    #[error("frame names another customer")]
    ForeignCustomer,
    /// No topic could be built for the event (its type or id holds bytes no topic may).
    #[error("no topic can be built for the event")]
    NoTopic,
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow)]
    event_type: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow)]
    topic: Option<&'a RawValue>,
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    // The routing fields of a bare resource object, at the top level. (`flatten` would not
    // do: serde buffers flattened fields, and `RawValue` cannot be buffered.)
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    customer_id: Option<&'a RawValue>,
    #[serde(borrow)]
    owner_type: Option<&'a RawValue>,
    #[serde(borrow)]
    owner_id: Option<&'a RawValue>,
}

/// The fields of a resource object that routing needs.
#[derive(Deserialize)]
struct ResourceFields<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    customer_id: Option<&'a RawValue>,
    #[serde(borrow)]
    owner_type: Option<&'a RawValue>,
    #[serde(borrow)]
    owner_id: Option<&'a RawValue>,
}

/// A JSON string value, or `None` for anything else.
fn string(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
    raw.and_then(|raw| serde_json::from_str::<Cow<'_, str>>(raw.get()).ok())
}

fn uuid(raw: Option<&RawValue>) -> Option<Uuid> {
    string(raw)
        .and_then(|s| Uuid::try_parse(&s).ok())
        .filter(|u| !u.is_nil())
}

/// The slice of `frame` that `part` (borrowed from it) covers, copied only if it is not.
fn sub_bytes(frame: &Bytes, part: &str) -> Bytes {
    let start = (part.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
    match start.checked_add(part.len()) {
        Some(end) if end <= frame.len() && start <= end => frame.slice(start..end),
        _ => Bytes::copy_from_slice(part.as_bytes()),
    }
}

/// Splits a webhook `type` into its resource: the longest [`MULTIWORD_RESOURCES`] entry it
/// starts with (followed by `_`), else the part before the first `_` or `.`.
pub fn resource_of(event_type: &str) -> &str {
    for multi in MULTIWORD_RESOURCES {
        if let Some(rest) = event_type.strip_prefix(multi)
            && (rest.starts_with('_') || rest.starts_with('.') || rest.is_empty())
        {
            return multi;
        }
    }
    event_type.split(['_', '.']).next().unwrap_or(event_type)
}

/// Decodes one upstream text frame.
///
/// # Errors
/// [`DecodeError`] when the frame is not a JSON object, names another customer, or no topic
/// can be built for it.
pub fn decode(frame: &Bytes, cx: &Context<'_>) -> Result<Event, DecodeError> {
    let probe: Probe<'_> = serde_json::from_slice(frame).map_err(|_| DecodeError::InvalidJson)?;
    let event_type = string(probe.event_type);
    let kind = string(probe.kind);
    let (shape, event_type, timestamp, topics, data) = match (probe.data, event_type, kind) {
        (Some(data), Some(event_type), _) => {
            let fields = Fields::read_data(data, cx)?;
            let given = match string(probe.topic) {
                Some(text) => Some(Topic::parse(&text).map_err(DecodeError::InvalidTopic)?),
                None => None,
            };
            let (resource, id) = match &given {
                Some(topic) => {
                    if topic.scope() == Scope::Customer && topic.owner() != cx.customer_id {
                        return Err(DecodeError::ForeignCustomer);
                    }
                    let resource = topic.rest_segment(0).map(str::to_owned);
                    let id = if topic.segment_count() >= 4 {
                        topic.rest().last().map(str::to_owned)
                    } else {
                        None
                    };
                    (resource, id.or_else(|| fields.id.clone()))
                }
                None => (Some(resource_of(&event_type).to_owned()), fields.id.clone()),
            };
            let mut topics = routing_topics(
                cx,
                resource.as_deref(),
                &event_type,
                id.as_deref(),
                fields.agent_owner,
            );
            if let Some(topic) = given
                && !topics.contains(&topic)
            {
                topics.insert(0, topic);
            }
            let timestamp = string(probe.timestamp).map(Cow::into_owned);
            (
                Shape::Envelope,
                event_type.into_owned(),
                timestamp,
                topics,
                data.get(),
            )
        }
        (Some(data), None, Some(kind)) => {
            let fields = Fields::read_data(data, cx)?;
            let topics = routing_topics(
                cx,
                Some(resource_of(&kind)),
                &kind,
                fields.id.as_deref(),
                fields.agent_owner,
            );
            (Shape::Webhook, kind.into_owned(), None, topics, data.get())
        }
        _ => {
            let raw = ResourceFields {
                id: probe.id,
                customer_id: probe.customer_id,
                owner_type: probe.owner_type,
                owner_id: probe.owner_id,
            };
            let fields = Fields::read(&raw, cx)?;
            let resource = cx.bare_resource;
            let event_type = match resource {
                Some(resource) => format!("{resource}_updated"),
                None => "updated".to_owned(),
            };
            let topics = routing_topics(
                cx,
                resource,
                &event_type,
                fields.id.as_deref(),
                fields.agent_owner,
            );
            let whole = std::str::from_utf8(frame)
                .map(str::trim)
                .map_err(|_| DecodeError::InvalidJson)?;
            (Shape::Bare, event_type, None, topics, whole)
        }
    };
    if topics.is_empty() {
        return Err(DecodeError::NoTopic);
    }
    Ok(Event {
        shape,
        event_type,
        timestamp: timestamp.unwrap_or_else(|| timestamp::format(cx.received_at)),
        customer_id: cx.customer_id,
        topics,
        data: sub_bytes(frame, data),
    })
}

/// Routing facts read from a resource object.
struct Fields {
    id: Option<String>,
    agent_owner: Option<Uuid>,
}

impl Fields {
    fn read(raw: &ResourceFields<'_>, cx: &Context<'_>) -> Result<Self, DecodeError> {
        // A customer id that is present must be this connection's: another customer, or a
        // value that is no uuid, is refused rather than guessed at.
        if let Some(customer) = raw.customer_id.filter(|c| c.get() != "null")
            && uuid(Some(customer)) != Some(cx.customer_id)
        {
            return Err(DecodeError::ForeignCustomer);
        }
        let agent_owner = match string(raw.owner_type).as_deref() {
            None | Some("agent") => uuid(raw.owner_id),
            Some(_) => None,
        };
        Ok(Fields {
            id: string(raw.id).map(Cow::into_owned),
            agent_owner,
        })
    }

    fn read_data(data: &RawValue, cx: &Context<'_>) -> Result<Self, DecodeError> {
        let raw: ResourceFields<'_> =
            serde_json::from_str(data.get()).map_err(|_| DecodeError::InvalidJson)?;
        Fields::read(&raw, cx)
    }
}

/// The topics of an event in the order of the module docs; those that cannot be built (an id
/// or type holding bytes no topic may) are left out.
fn routing_topics(
    cx: &Context<'_>,
    resource: Option<&str>,
    event_type: &str,
    id: Option<&str>,
    agent_owner: Option<Uuid>,
) -> Vec<Topic> {
    let Some(resource) = resource else {
        return Topic::build(Scope::Customer, cx.customer_id, &[])
            .into_iter()
            .collect();
    };
    let (short, long): (Vec<&str>, Vec<&str>) = match id {
        Some(id) => (vec![resource, id], vec![resource, event_type, id]),
        None => (vec![resource], vec![resource, event_type]),
    };
    let mut owners = vec![(Scope::Customer, cx.customer_id)];
    owners.extend(agent_owner.map(|owner| (Scope::Agent, owner)));
    let mut topics = Vec::with_capacity(4);
    for (scope, owner) in owners {
        for segments in [&short, &long] {
            if let Ok(topic) = Topic::build(scope, owner, segments)
                && !topics.contains(&topic)
            {
                topics.push(topic);
            }
        }
    }
    topics
}

#[cfg(test)]
mod tests;
