//! Decoding of the frames VoIPBIN sends upstream (protocol.md §2) into one [`Event`].
//!
//! Three shapes arrive, and each is read:
//! 1. the tutorial's envelope `{"event_type","timestamp","topic","data"}`: routed by `topic`;
//! 2. VoIPBIN's webhook shape `{"type":"call_created","data":{…}}`;
//! 3. the bare resource object (VoIPBIN's server code today), which names neither its type
//!    nor its topic: it is what the [`Label`] of the subscription it arrived through says
//!    ([`Context::label`]), never what its fields suggest.
//!
//! A frame is wrapped (shapes 1 and 2) only when it has no `id` or `customer_id` of its own:
//! several resources have a `type` field, so `type` alone does not make a webhook frame.
//!
//! Whatever the shape, the event gets the topics the real server publishes it under, in this
//! order: `customer_id:<C>:<resource>:<id>`, `customer_id:<C>:<resource>:<event_type>:<id>`,
//! and when `data` names an agent owner, the same two under `agent_id:<owner_id>`. A topic is
//! only built from what is known: a bare object whose label has no event type gets no
//! `…:<event_type>:…` topics (its `event_type` may be inferred, [`infer`], but is not routed
//! on), and one whose label has no resource gets `customer_id:<C>` and `agent_id:<owner>`.
//!
//! Invariants:
//! - A frame is parsed once; `data` is a slice of the frame, never re-encoded.
//! - An event never carries a customer other than the connection's: a frame whose
//!   `customer_id` (in `data` or in a customer topic) names another customer is refused
//!   with [`DecodeError::ForeignCustomer`].
//! - An event's `event_type` never contradicts its frame, and a topic never says more than
//!   the frame or its label does.

use std::borrow::Cow;
use std::time::SystemTime;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::prefix::Label;
use crate::timestamp;
use crate::topic::{Scope, Topic, TopicError};

pub(crate) mod infer;

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
    /// How many of `topics` (the first ones) an earlier entry of the customer's stream
    /// carried already: the same event, which arrived before through a subscription that
    /// told less about it. Sessions that one of those topics matches had it; the entry is for
    /// the others. 0 for an event first seen.
    pub fresh_from: usize,
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
    /// What frames of the subscription it arrived through are known to be: a bare object's
    /// only source of its resource and event type.
    pub label: &'a Label,
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
    // What tells a bare object's event apart (`infer`).
    #[serde(borrow)]
    status: Option<&'a RawValue>,
    #[serde(borrow)]
    tm_update: Option<&'a RawValue>,
    #[serde(borrow)]
    tm_delete: Option<&'a RawValue>,
    #[serde(borrow)]
    tm_ringing: Option<&'a RawValue>,
    #[serde(borrow)]
    tm_progressing: Option<&'a RawValue>,
    #[serde(borrow)]
    tm_hangup: Option<&'a RawValue>,
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
    // A resource object at the top level is bare, whatever else it holds.
    let wrapped = probe.id.is_none() && probe.customer_id.is_none();
    let event_type = string(probe.event_type).filter(|_| wrapped);
    let kind = string(probe.kind).filter(|_| wrapped);
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
                Some(&event_type),
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
                Some(&kind),
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
            let resource = cx.label.resource();
            // The label's type is VoIPBIN's own; an inferred one is shown, never routed on.
            let routed = cx.label.event_type();
            let event_type = match (resource, routed) {
                (_, Some(known)) => known.to_owned(),
                (Some(resource), None) => {
                    let [
                        status,
                        tm_update,
                        tm_delete,
                        tm_ringing,
                        tm_progressing,
                        tm_hangup,
                    ] = [
                        probe.status,
                        probe.tm_update,
                        probe.tm_delete,
                        probe.tm_ringing,
                        probe.tm_progressing,
                        probe.tm_hangup,
                    ]
                    .map(string);
                    let object = infer::Lifecycle {
                        status: status.as_deref(),
                        tm_update: tm_update.as_deref(),
                        tm_delete: tm_delete.as_deref(),
                        tm_ringing: tm_ringing.as_deref(),
                        tm_progressing: tm_progressing.as_deref(),
                        tm_hangup: tm_hangup.as_deref(),
                    };
                    infer::event_type(resource, &object)
                        .map_or_else(|| format!("{resource}_updated"), str::to_owned)
                }
                (None, None) => "updated".to_owned(),
            };
            let topics = routing_topics(
                cx,
                resource,
                routed,
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
        fresh_from: 0,
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
/// or type holding bytes no topic may) are left out. Without a resource: the customer's and
/// the agent owner's whole streams; without an event type, no typed topics.
fn routing_topics(
    cx: &Context<'_>,
    resource: Option<&str>,
    event_type: Option<&str>,
    id: Option<&str>,
    agent_owner: Option<Uuid>,
) -> Vec<Topic> {
    let mut owners = vec![(Scope::Customer, cx.customer_id)];
    owners.extend(agent_owner.map(|owner| (Scope::Agent, owner)));
    let Some(resource) = resource else {
        return owners
            .into_iter()
            .filter_map(|(scope, owner)| Topic::build(scope, owner, &[]).ok())
            .collect();
    };
    let mut forms: Vec<Vec<&str>> = Vec::with_capacity(2);
    forms.push([Some(resource), id].into_iter().flatten().collect());
    if let Some(event_type) = event_type {
        forms.push(
            [Some(resource), Some(event_type), id]
                .into_iter()
                .flatten()
                .collect(),
        );
    }
    let mut topics = Vec::with_capacity(4);
    for (scope, owner) in owners {
        for segments in &forms {
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
