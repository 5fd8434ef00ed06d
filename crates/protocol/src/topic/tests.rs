use proptest::prelude::*;

use super::*;

const C: &str = "12345678-1234-1234-1234-123456789012";
const D: &str = "87654321-4321-4321-4321-210987654321";

fn topic(text: &str) -> Topic {
    Topic::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn pattern(text: &str) -> Pattern {
    Pattern::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn check_match(p: &str, t: &str, expected: bool) {
    assert_eq!(pattern(p).matches(&topic(t)), expected, "{p} ~ {t}");
}

#[test]
fn matching_is_segment_wise() {
    let call = format!("customer_id:{C}:call:k1");
    check_match(&format!("customer_id:{C}"), &call, true);
    check_match(&format!("customer_id:{C}:call"), &call, true);
    check_match(&format!("customer_id:{C}:call:*"), &call, true);
    check_match(&format!("customer_id:{C}:call:k1"), &call, true);
    check_match(&format!("customer_id:{C}:*:k1"), &call, true);
    check_match(&format!("customer_id:{C}:call:k2"), &call, false);
    check_match(&format!("customer_id:{C}:call:k1:more"), &call, false);
    check_match(&format!("customer_id:{D}:call:*"), &call, false);
    check_match(&format!("agent_id:{C}:call:*"), &call, false);
    // Prefixes are cut at segment boundaries, never as raw strings.
    check_match(
        &format!("customer_id:{C}:queue"),
        &format!("customer_id:{C}:queuecall:q"),
        false,
    );
    check_match(
        &format!("customer_id:{C}:call:*"),
        &format!("customer_id:{C}:call"),
        false,
    );
    // A wildcard matches exactly one segment.
    check_match(
        &format!("customer_id:{C}:call:call_hangup"),
        &format!("customer_id:{C}:call:call_hangup:k1"),
        true,
    );
    check_match(
        &format!("customer_id:{C}:call:*:k1"),
        &format!("customer_id:{C}:call:call_hangup:k1"),
        true,
    );
}

#[test]
fn owner_case_does_not_matter_and_is_kept_lower() {
    let upper = format!("customer_id:{}:call", C.to_uppercase());
    let p = pattern(&upper);
    assert_eq!(p.as_str(), format!("customer_id:{C}:call"));
    assert!(p.matches(&topic(&format!("customer_id:{C}:call:k"))));
}

#[test]
fn invalid_topics() {
    let cases: &[(&str, TopicError)] = &[
        ("", TopicError::EmptySegment),
        ("customer_id", TopicError::TooFewSegments),
        (":x", TopicError::UnknownScope),
        (
            "user_id:12345678-1234-1234-1234-123456789012",
            TopicError::UnknownScope,
        ),
        ("customer_id:abc", TopicError::InvalidOwner),
        ("customer_id:*", TopicError::InvalidOwner),
        ("customer_id:", TopicError::EmptySegment),
        (
            "customer_id:123456781234123412341234567890ab",
            TopicError::InvalidOwner,
        ),
        (
            "customer_id:00000000-0000-0000-0000-000000000000",
            TopicError::NilOwner,
        ),
        (
            "customer_id:12345678-1234-1234-1234-123456789012:",
            TopicError::EmptySegment,
        ),
        (
            "customer_id:12345678-1234-1234-1234-123456789012::x",
            TopicError::EmptySegment,
        ),
        (
            "customer_id:12345678-1234-1234-1234-123456789012:a b",
            TopicError::InvalidCharacter,
        ),
        (
            "customer_id:12345678-1234-1234-1234-123456789012:a\"b",
            TopicError::InvalidCharacter,
        ),
        (
            "customer_id:12345678-1234-1234-1234-123456789012:é",
            TopicError::InvalidCharacter,
        ),
        (
            "customer_id:12345678-1234-1234-1234-123456789012:a:b:c:d:e:f:g",
            TopicError::TooManySegments,
        ),
    ];
    for (text, error) in cases {
        assert_eq!(Pattern::parse(text).err(), Some(*error), "{text:?}");
    }
    let long = format!("customer_id:{C}:{}", "a".repeat(MAX_TOPIC_LEN));
    assert_eq!(Pattern::parse(&long).err(), Some(TopicError::TooLong));
    assert_eq!(
        Topic::parse(&format!("customer_id:{C}:call:*")).err(),
        Some(TopicError::Wildcard)
    );
}

#[test]
fn accessors() {
    let t = topic(&format!("agent_id:{C}:call:call_hangup:k1"));
    assert_eq!(t.scope(), Scope::Agent);
    assert_eq!(t.owner().to_string(), C);
    assert_eq!(t.segment_count(), 5);
    assert_eq!(t.rest().collect::<Vec<_>>(), ["call", "call_hangup", "k1"]);
    assert_eq!(t.rest_segment(0), Some("call"));
    assert_eq!(t.rest_segment(3), None);
    let whole = Pattern::whole(Scope::Customer, t.owner());
    assert_eq!(whole.as_str(), format!("customer_id:{C}"));
    assert_eq!(whole, pattern(&format!("customer_id:{C}")));
    assert_eq!(whole.rest().count(), 0);
    assert!(!whole.has_wildcard());
    assert!(pattern(&format!("customer_id:{C}:*")).has_wildcard());
    let built = Topic::build(Scope::Customer, t.owner(), &["call", "k1"]).expect("valid");
    assert_eq!(built.as_str(), format!("customer_id:{C}:call:k1"));
    assert!(Topic::build(Scope::Customer, t.owner(), &["a:b"]).is_err());
}

/// The plain reference: split on `:` and compare, with no knowledge of the parser.
fn reference_match(pattern: &str, topic: &str) -> bool {
    let p: Vec<&str> = pattern.split(':').collect();
    let t: Vec<&str> = topic.split(':').collect();
    p.len() <= t.len()
        && p.iter()
            .zip(&t)
            .enumerate()
            .all(|(i, (p, t))| (i >= 2 && *p == "*") || p == t)
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("call".to_owned()),
        Just("queue".to_owned()),
        Just("queuecall".to_owned()),
        Just("call_hangup".to_owned()),
        Just("k1".to_owned()),
        Just("k2".to_owned()),
    ]
}

fn scope_owner() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("customer_id"), Just("agent_id")],
        prop_oneof![Just(C), Just(D)],
    )
        .prop_map(|(s, o)| format!("{s}:{o}"))
}

fn topic_text() -> impl Strategy<Value = String> {
    (scope_owner(), prop::collection::vec(segment(), 0..4)).prop_map(|(head, rest)| {
        std::iter::once(head)
            .chain(rest)
            .collect::<Vec<_>>()
            .join(":")
    })
}

fn pattern_text() -> impl Strategy<Value = String> {
    let seg = prop_oneof![3 => segment(), 1 => Just("*".to_owned())];
    (scope_owner(), prop::collection::vec(seg, 0..5)).prop_map(|(head, rest)| {
        std::iter::once(head)
            .chain(rest)
            .collect::<Vec<_>>()
            .join(":")
    })
}

proptest! {
    #[test]
    fn matching_agrees_with_the_reference(p in pattern_text(), t in topic_text()) {
        let got = pattern(&p).matches(&topic(&t));
        prop_assert_eq!(got, reference_match(&p, &t), "{} ~ {}", p, t);
    }

    #[test]
    fn parse_round_trips(t in topic_text()) {
        let parsed = topic(&t);
        prop_assert_eq!(parsed.as_str(), t.as_str());
        prop_assert_eq!(topic(&t).segment_count(), t.split(':').count());
    }

    #[test]
    fn parse_never_panics_and_accepts_only_valid_text(text in "\\PC{0,80}|(customer_id|agent_id):[0-9a-f-]{30,40}(:[a-z*: ]{0,6}){0,3}") {
        if let Ok(p) = Pattern::parse(&text) {
            prop_assert!(p.as_str().len() <= MAX_TOPIC_LEN);
            prop_assert!(p.segment_count() >= 2 && p.segment_count() <= MAX_SEGMENTS);
            prop_assert!(p.as_str().bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'));
            prop_assert!(p.rest().all(|s| !s.is_empty()));
        }
        let _ = Topic::parse(&text);
    }
}
