use std::time::{Duration, UNIX_EPOCH};

use super::*;

const C: &str = "12345678-1234-1234-1234-123456789012";
const D: &str = "87654321-4321-4321-4321-210987654321";
const A: &str = "98765432-4321-4321-4321-210987654321";
const K: &str = "a1b2c3d4-e5f6-7890-abcd-ef1234567890";

/// The label of `text`: `""` none, `"call"` a resource, `"call/call_hangup"` typed.
fn label(text: &str) -> Label {
    match text.split_once('/') {
        _ if text.is_empty() => Label::none(),
        Some((resource, event_type)) => Label::of(resource, Some(event_type)),
        None => Label::of(text, None),
    }
}

fn cx(label: &Label) -> Context<'_> {
    Context {
        customer_id: Uuid::parse_str(C).expect("valid"),
        received_at: UNIX_EPOCH + Duration::from_secs(1_768_905_000),
        label,
    }
}

fn check(
    frame: &str,
    arrived_through: &str,
    shape: Shape,
    event_type: &str,
    topics: &[String],
    data: &str,
) {
    let bytes = Bytes::copy_from_slice(frame.as_bytes());
    let label = label(arrived_through);
    let event = decode(&bytes, &cx(&label)).unwrap_or_else(|e| panic!("{frame}: {e}"));
    assert_eq!(event.shape, shape, "{frame}");
    assert_eq!(event.event_type, event_type, "{frame}");
    let got: Vec<&str> = event.topics.iter().map(Topic::as_str).collect();
    assert_eq!(got, topics, "{frame}");
    assert_eq!(&event.data[..], data.as_bytes(), "{frame}");
    assert_eq!(event.customer_id.to_string(), C);
    assert_eq!(event.fresh_from, 0);
}

fn check_err(frame: &str, error: DecodeError) {
    let bytes = Bytes::copy_from_slice(frame.as_bytes());
    assert_eq!(
        decode(&bytes, &cx(&label("call"))).err(),
        Some(error),
        "{frame}"
    );
}

fn four(resource: &str, event_type: &str, id: &str, owner: Option<&str>) -> Vec<String> {
    let mut out = vec![
        format!("customer_id:{C}:{resource}:{id}"),
        format!("customer_id:{C}:{resource}:{event_type}:{id}"),
    ];
    if let Some(owner) = owner {
        out.push(format!("agent_id:{owner}:{resource}:{id}"));
        out.push(format!("agent_id:{owner}:{resource}:{event_type}:{id}"));
    }
    out
}

#[test]
fn webhook_shape() {
    let data = format!(
        r#"{{"id":"{K}","customer_id":"{C}","owner_type":"agent","owner_id":"{A}","status":"ringing"}}"#
    );
    let frame = format!(r#"{{"type":"call_created","data":{data}}}"#);
    check(
        &frame,
        "",
        Shape::Webhook,
        "call_created",
        &four("call", "call_created", K, Some(A)),
        &data,
    );
    // Without an owner only the customer topics.
    let data = format!(r#"{{"id":"{K}","customer_id":"{C}"}}"#);
    let frame = format!(r#"{{ "data" : {data} , "type":"queuecall_kicked"}}"#);
    check(
        &frame,
        "",
        Shape::Webhook,
        "queuecall_kicked",
        &four("queuecall", "queuecall_kicked", K, None),
        &data,
    );
    // A multi-word resource is split after the resource.
    let data = format!(r#"{{"id":"{K}"}}"#);
    let frame = format!(r#"{{"type":"webchat_session_created","data":{data}}}"#);
    check(
        &frame,
        "",
        Shape::Webhook,
        "webchat_session_created",
        &four("webchat_session", "webchat_session_created", K, None),
        &data,
    );
    // An owner that is not an agent gives no agent topics.
    let data = format!(r#"{{"id":"{K}","owner_type":"queue","owner_id":"{A}"}}"#);
    let frame = format!(r#"{{"type":"call_hangup","data":{data}}}"#);
    check(
        &frame,
        "",
        Shape::Webhook,
        "call_hangup",
        &four("call", "call_hangup", K, None),
        &data,
    );
}

#[test]
fn envelope_shape() {
    let data = format!(r#"{{"id":"{K}","owner_type":"agent","owner_id":"{A}"}}"#);
    let frame = format!(
        r#"{{"event_type":"call_hangup","timestamp":"2026-01-20T10:30:00.000000Z","topic":"customer_id:{C}:call:{K}","data":{data}}}"#
    );
    check(
        &frame,
        "",
        Shape::Envelope,
        "call_hangup",
        &four("call", "call_hangup", K, Some(A)),
        &data,
    );
    let event = decode(&Bytes::from(frame), &cx(&Label::none())).expect("valid");
    assert_eq!(event.timestamp, "2026-01-20T10:30:00.000000Z");
    // The tutorial's dotted types and an id that is no uuid: the given topic leads.
    let data = r#"{"id":"a1b2c3d4","status":"answered"}"#;
    let frame = format!(
        r#"{{"event_type":"call.status","timestamp":"t","topic":"customer_id:{C}:call:a1b2c3d4","data":{data}}}"#
    );
    check(
        &frame,
        "",
        Shape::Envelope,
        "call.status",
        &four("call", "call.status", "a1b2c3d4", None),
        data,
    );
    // A given topic outside the derived ones is kept, first.
    let frame = format!(r#"{{"event_type":"x_y","topic":"customer_id:{C}","data":{{}}}}"#);
    check(
        &frame,
        "",
        Shape::Envelope,
        "x_y",
        &[format!("customer_id:{C}")],
        "{}",
    );
}

#[test]
fn bare_shape() {
    let data = format!(
        r#"{{"id":"{K}","customer_id":"{C}","owner_type":"agent","owner_id":"{A}","type":"flow","status":"progressing","tm_update":"t2"}}"#
    );
    // Through a typed subscription: its type, and every topic.
    check(
        &data,
        "call/call_hangup",
        Shape::Bare,
        "call_hangup",
        &four("call", "call_hangup", K, Some(A)),
        &data,
    );
    // Through a resource's: a type the object does not prove is `<resource>_updated`, and
    // no typed topic is built on it.
    let untyped = vec![
        format!("customer_id:{C}:call:{K}"),
        format!("agent_id:{A}:call:{K}"),
    ];
    check(&data, "call", Shape::Bare, "call_updated", &untyped, &data);
    // One the object proves is shown, still not routed on.
    let ringing = format!(
        r#"{{"id":"{K}","customer_id":"{C}","owner_type":"agent","owner_id":"{A}","status":"ringing","tm_ringing":"t2","tm_update":"t2"}}"#
    );
    check(
        &ringing,
        "call",
        Shape::Bare,
        "call_ringing",
        &untyped,
        &ringing,
    );
    // Through the whole stream: nothing is known but the owners.
    check(
        &format!("  {data}\n"),
        "",
        Shape::Bare,
        "updated",
        &[format!("customer_id:{C}"), format!("agent_id:{A}")],
        &data,
    );
}

#[test]
fn a_resource_with_a_type_and_data_of_its_own_is_still_bare() {
    // A conference has both `type` and `data`; a call has `type`. Their `id` and
    // `customer_id` say they are resources, not webhook frames.
    let conference = format!(
        r#"{{"id":"{K}","customer_id":"{C}","type":"conference","data":{{"x":1}},"status":"progressing"}}"#
    );
    check(
        &conference,
        "conference",
        Shape::Bare,
        "conference_updated",
        &[format!("customer_id:{C}:conference:{K}")],
        &conference,
    );
    let call = format!(r#"{{"id":"{K}","type":"call_created","data":{{}}}}"#);
    check(
        &call,
        "call",
        Shape::Bare,
        "call_created",
        &[format!("customer_id:{C}:call:{K}")],
        &call,
    );
}

#[test]
fn timestamps_default_to_arrival() {
    let frame = format!(r#"{{"type":"call_created","data":{{"id":"{K}"}}}}"#);
    let event = decode(&Bytes::from(frame), &cx(&Label::none())).expect("valid");
    assert_eq!(event.timestamp, "2026-01-20T10:30:00.000000Z");
}

#[test]
fn data_is_a_slice_of_the_frame() {
    let frame = Bytes::from(format!(
        r#"{{"type":"call_created","data":{{"id":"{K}"}}}}"#
    ));
    let event = decode(&frame, &cx(&Label::none())).expect("valid");
    let start = event.data.as_ptr() as usize - frame.as_ptr() as usize;
    assert!(start > 0 && start + event.data.len() <= frame.len());
}

#[test]
fn foreign_customers_are_refused() {
    check_err(
        &format!(r#"{{"type":"call_created","data":{{"id":"{K}","customer_id":"{D}"}}}}"#),
        DecodeError::ForeignCustomer,
    );
    check_err(
        &format!(r#"{{"type":"call_created","data":{{"id":"{K}","customer_id":"nope"}}}}"#),
        DecodeError::ForeignCustomer,
    );
    check_err(
        &format!(r#"{{"event_type":"e","topic":"customer_id:{D}:call:{K}","data":{{}}}}"#),
        DecodeError::ForeignCustomer,
    );
    check_err(
        &format!(r#"{{"id":"{K}","customer_id":"{D}"}}"#),
        DecodeError::ForeignCustomer,
    );
}

#[test]
fn bad_frames() {
    check_err("", DecodeError::InvalidJson);
    check_err("[]", DecodeError::InvalidJson);
    check_err("nope", DecodeError::InvalidJson);
    check_err(
        r#"{"type":"call_created","data":[1]}"#,
        DecodeError::InvalidJson,
    );
    check_err(
        r#"{"event_type":"e","topic":"customer_id:zz","data":{}}"#,
        DecodeError::InvalidTopic(TopicError::InvalidOwner),
    );
    // An id that no topic may hold, and no other way to build a topic.
    check_err(
        r#"{"type":"bad type","data":{"id":"a b"}}"#,
        DecodeError::NoTopic,
    );
    check_err(
        r#"{"type":"call_created","data":{"id":"k"},"data":{}}"#,
        DecodeError::InvalidJson,
    );
}

#[test]
fn lenient_field_types() {
    // Non-string routing fields do not fail the frame; they are just not used.
    let data = r#"{"id":7,"owner_id":5,"customer_id":null}"#;
    let frame = format!(r#"{{"type":"call_created","data":{data}}}"#);
    check(
        &frame,
        "",
        Shape::Webhook,
        "call_created",
        &[
            format!("customer_id:{C}:call"),
            format!("customer_id:{C}:call:call_created"),
        ],
        data,
    );
}

#[test]
fn resource_names() {
    assert_eq!(resource_of("call_created"), "call");
    assert_eq!(resource_of("call.status"), "call");
    assert_eq!(resource_of("webchat_session_updated"), "webchat_session");
    assert_eq!(resource_of("webchat_created"), "webchat");
    assert_eq!(resource_of("plain"), "plain");
}
