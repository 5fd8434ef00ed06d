//! The link's rules on a fake clock: every input a frame or an instant, every answer read
//! off its outputs.

use super::*;

const C: &str = "12345678-1234-1234-1234-123456789012";
const A: &str = "98765432-4321-4321-4321-210987654321";

const TIMINGS: Timings = Timings {
    ping_interval: Duration::from_secs(5),
    pong_timeout: Duration::from_secs(8),
    idle_timeout: Duration::from_secs(30),
    subscribe_settle: Duration::ZERO,
};

fn customer() -> Uuid {
    Uuid::parse_str(C).expect("uuid")
}

fn prefix(rest: &str) -> Prefix {
    Prefix::parse(&format!("customer_id:{C}{rest}")).expect("prefix")
}

/// A fake clock: instants and wall times that advance together.
struct Clock {
    start: Instant,
    wall: SystemTime,
    at: Duration,
}

impl Clock {
    fn new() -> Self {
        Clock {
            start: Instant::now(),
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_768_905_000),
            at: Duration::ZERO,
        }
    }

    fn now(&self) -> Instant {
        self.start + self.at
    }

    fn wall(&self) -> SystemTime {
        self.wall + self.at
    }

    fn advance(&mut self, by: Duration) {
        self.at += by;
    }
}

struct Harness {
    link: Link,
    clock: Clock,
    /// The link's metrics, recorded for this test alone.
    metrics: metrics_util::debugging::Snapshotter,
}

impl Harness {
    fn new(label: Label, timings: Timings) -> Self {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let metrics = recorder.snapshotter();
        // The link registers its counters when made: they count into this recorder.
        let link =
            metrics::with_local_recorder(&recorder, || Link::new(customer(), label, timings));
        Harness {
            link,
            clock: Clock::new(),
            metrics,
        }
    }

    /// The value of counter `name` with `label` (`("reason", "unwanted")`) if given.
    fn counted(&self, name: &str, label: Option<(&str, &str)>) -> u64 {
        self.metrics
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == name)
            .filter(|(key, ..)| {
                label
                    .is_none_or(|(k, v)| key.key().labels().any(|l| l.key() == k && l.value() == v))
            })
            .map(|(.., value)| match value {
                metrics_util::debugging::DebugValue::Counter(n) => n,
                _ => 0,
            })
            .sum()
    }

    fn calls() -> Self {
        Harness::new(Label::of("call", None), TIMINGS)
    }

    fn connect(&mut self) {
        self.link.connected(self.clock.now(), self.clock.wall());
    }

    fn transmits(&mut self) -> Vec<Transmit> {
        std::iter::from_fn(|| self.link.poll_transmit()).collect()
    }

    fn outputs(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.link.poll_output()).collect()
    }

    fn text(&mut self, frame: &str) {
        let frame = Bytes::copy_from_slice(frame.as_bytes());
        self.link
            .handle_text(&frame, self.clock.now(), self.clock.wall());
    }

    fn pong(&mut self, number: u64) {
        self.link
            .handle_pong(&number.to_be_bytes(), self.clock.now(), self.clock.wall());
    }

    fn event(&mut self, id: &str) {
        self.text(&call(id));
    }

    fn timeout(&mut self) -> Option<Stall> {
        self.link.handle_timeout(self.clock.now())
    }
}

fn call(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","customer_id":"{C}","owner_type":"agent","owner_id":"{A}","status":"progressing","tm_update":"t"}}"#
    )
}

fn subscribe(prefixes: &[&Prefix]) -> Transmit {
    Transmit::Text(request_json("subscribe", prefixes))
}

fn barrier(number: u64) -> Transmit {
    Transmit::Ping(number.to_be_bytes().to_vec())
}

/// The ids of published events, and the other outputs as words, in order.
fn story(outputs: &[Output]) -> Vec<String> {
    outputs
        .iter()
        .map(|o| match o {
            Output::Publish(event) => {
                let id = event.topics[0]
                    .as_str()
                    .rsplit(':')
                    .next()
                    .unwrap_or_default();
                format!("event {id}")
            }
            Output::Gap { .. } => "gap".to_owned(),
            Output::Covered(p) => format!("covered {}", p.len()),
            Output::Uncovered(p) => format!("uncovered {}", p.len()),
        })
        .collect()
}

#[test]
fn a_connection_subscribes_its_whole_set_then_a_barrier_whose_pong_covers_it() {
    let mut h = Harness::calls();
    let (a, b) = (prefix(":call:"), prefix(":call:k7"));
    h.link.want(a.clone(), 0);
    h.link.want(b.clone(), 1);
    assert_eq!(h.transmits(), []);
    h.connect();
    assert_eq!(h.transmits(), [subscribe(&[&a, &b]), barrier(0)]);
    assert!(!h.link.is_subscribed());
    h.event("k1");
    h.pong(0);
    h.event("k2");
    // No loss owed on a first connection: events flow at once, coverage at the pong.
    let outputs = h.outputs();
    assert_eq!(story(&outputs), ["event k1", "covered 2", "event k2"]);
    assert_eq!(outputs[1], Output::Covered(vec![a, b]));
    assert!(h.link.is_subscribed());
}

#[test]
fn frames_are_labelled_by_the_link_and_never_by_their_fields() {
    let mut h = Harness::new(Label::of("call", Some("call_hangup")), TIMINGS);
    h.link.want(prefix(":call:call_hangup:"), 0);
    h.connect();
    h.transmits();
    h.event("k1");
    let outputs = h.outputs();
    let [Output::Publish(event)] = outputs.as_slice() else {
        panic!("{outputs:?}")
    };
    // The status says progressing; the subscription says hang-up, and it is VoIPBIN's word.
    assert_eq!(event.event_type, "call_hangup");
    assert!(
        event
            .topics
            .iter()
            .any(|t| t.as_str() == format!("customer_id:{C}:call:call_hangup:k1"))
    );
}

#[test]
fn a_settling_subscription_is_covered_in_order_with_the_events_after_it() {
    let settle = Duration::from_secs(1);
    let mut h = Harness::new(
        Label::of("call", None),
        Timings {
            subscribe_settle: settle,
            ..TIMINGS
        },
    );
    h.link.want(prefix(":call:"), 0);
    h.connect();
    h.transmits();
    h.pong(0);
    h.clock.advance(Duration::from_millis(500));
    h.event("k1");
    assert_eq!(h.link.poll_timeout(), Some(h.clock.start + settle));
    h.clock.advance(Duration::from_millis(500));
    h.event("k2");
    assert_eq!(story(&h.outputs()), ["event k1", "covered 1", "event k2"]);
    // With no frame to carry it, the timer does.
    h.link.want(prefix(":call:k9"), 1);
    h.transmits();
    h.pong(1);
    h.clock.advance(settle);
    assert_eq!(h.timeout(), None);
    assert_eq!(story(&h.outputs()), ["covered 1"]);
}

#[test]
fn a_prefix_dropped_before_its_barrier_is_answered_is_never_covered() {
    let mut h = Harness::calls();
    let (a, b) = (prefix(":call:"), prefix(":call:k7"));
    h.link.want(a.clone(), 0);
    h.connect();
    h.transmits();
    h.pong(0);
    h.outputs();
    h.link.want(b.clone(), 1);
    assert_eq!(h.transmits(), [subscribe(&[&b]), barrier(1)]);
    h.link.unwant(&b);
    // Told at once, before anything else can cover it.
    assert_eq!(h.outputs(), [Output::Uncovered(vec![b.clone()])]);
    h.pong(1);
    assert_eq!(h.outputs(), []);
    assert_eq!(
        h.transmits(),
        [Transmit::Text(request_json("unsubscribe", &[&b]))]
    );
    // Wanted anew: subscribed and covered anew.
    h.link.want(b.clone(), 2);
    assert_eq!(h.transmits(), [subscribe(&[&b]), barrier(2)]);
    h.pong(2);
    assert_eq!(h.outputs(), [Output::Covered(vec![b])]);
}

#[test]
fn after_a_drop_the_loss_is_told_before_any_event_after_it() {
    let mut h = Harness::calls();
    let a = prefix(":call:");
    h.link.want(a.clone(), 0);
    h.connect();
    h.transmits();
    h.pong(0);
    h.event("k1");
    h.outputs();
    let last_heard = h.clock.wall();
    h.clock.advance(Duration::from_secs(2));
    let report = h.link.ended();
    assert!(report.worked && report.unanswered.is_empty());
    assert_eq!(h.outputs(), [Output::Uncovered(vec![a.clone()])]);
    h.clock.advance(Duration::from_secs(1));
    h.connect();
    assert_eq!(h.transmits(), [subscribe(&[&a]), barrier(0)]);
    // Events before the barrier's answer are held back.
    h.event("k2");
    h.event("k3");
    assert_eq!(h.outputs(), []);
    h.clock.advance(Duration::from_millis(10));
    h.pong(0);
    h.event("k4");
    let outputs = h.outputs();
    assert_eq!(
        story(&outputs),
        ["event k2", "event k3", "covered 1", "gap", "event k4"]
    );
    assert_eq!(
        outputs[3],
        Output::Gap {
            since: last_heard,
            until: h.clock.wall()
        }
    );
}

#[test]
fn a_connection_that_ends_before_telling_its_gap_passes_the_earlier_loss_on() {
    let mut h = Harness::calls();
    h.link.want(prefix(":call:"), 0);
    let failed_at = h.clock.wall();
    h.link.connect_failed(failed_at);
    h.clock.advance(Duration::from_secs(1));
    h.link.connect_failed(h.clock.wall());
    h.connect();
    h.transmits();
    h.clock.advance(Duration::from_secs(1));
    h.event("k1");
    let report = h.link.ended();
    assert!(!report.worked);
    h.outputs();
    h.connect();
    h.transmits();
    h.pong(0);
    let gap = h
        .outputs()
        .into_iter()
        .find(|o| matches!(o, Output::Gap { .. }));
    assert_eq!(
        gap,
        Some(Output::Gap {
            since: failed_at,
            until: h.clock.wall()
        })
    );
}

#[test]
fn held_events_are_bounded() {
    let mut h = Harness::calls();
    h.link.want(prefix(":call:"), 0);
    h.link.connect_failed(h.clock.wall());
    h.connect();
    h.transmits();
    for n in 0..=MAX_HELD_EVENTS {
        h.event(&format!("k{n}"));
    }
    h.pong(0);
    let published = h
        .outputs()
        .iter()
        .filter(|o| matches!(o, Output::Publish(_)))
        .count();
    assert_eq!(published, MAX_HELD_EVENTS);
    // The one past the bound is inside the gap told, and counted.
    assert_eq!(
        h.counted(
            "fanout_events_dropped_total",
            Some(("reason", "inside_gap"))
        ),
        1
    );
    assert!(h.outputs().is_empty());
}

#[test]
fn a_first_barrier_unanswered_in_time_is_a_stall() {
    let mut h = Harness::calls();
    h.link.want(prefix(":call:"), 0);
    h.connect();
    h.transmits();
    assert_eq!(
        h.link.poll_timeout(),
        Some(h.clock.now() + TIMINGS.ping_interval)
    );
    h.clock.advance(TIMINGS.pong_timeout);
    // Pings went out meanwhile; events flowed; none of it answers the barrier.
    h.event("k1");
    assert_eq!(h.timeout(), Some(Stall::FirstBarrier));
}

#[test]
fn pings_go_out_on_time_and_one_unanswered_is_a_stall() {
    let mut h = Harness::calls();
    h.link.want(prefix(":call:"), 0);
    h.connect();
    h.transmits();
    h.pong(0);
    h.clock.advance(TIMINGS.ping_interval);
    assert_eq!(h.timeout(), None);
    assert_eq!(h.transmits(), [Transmit::Ping(Vec::new())]);
    // Answered (anything heard counts): no stall at the deadline.
    h.clock.advance(Duration::from_secs(1));
    h.link.handle_pong(&[], h.clock.now(), h.clock.wall());
    h.clock.advance(TIMINGS.pong_timeout);
    assert_eq!(h.timeout(), None);
    // The next ping, unanswered.
    h.transmits();
    h.clock.advance(TIMINGS.pong_timeout);
    assert_eq!(h.timeout(), Some(Stall::Pong));
}

#[test]
fn a_silent_connection_is_idle_at_the_next_ping() {
    let mut h = Harness::new(
        Label::of("call", None),
        Timings {
            pong_timeout: Duration::from_secs(3600),
            ..TIMINGS
        },
    );
    h.link.want(prefix(":call:"), 0);
    h.connect();
    h.transmits();
    h.pong(0);
    let mut stall = None;
    for _ in 0..10 {
        h.clock.advance(TIMINGS.ping_interval);
        stall = h.timeout();
        if stall.is_some() {
            break;
        }
    }
    assert_eq!(stall, Some(Stall::Idle));
    assert!(h.clock.at >= TIMINGS.idle_timeout);
}

#[test]
fn a_refused_subscription_is_uncovered_never_covered() {
    // The tutorial's world answers with an error frame and keeps the connection.
    let mut h = Harness::calls();
    let (a, b) = (prefix(":call:"), prefix(":call:k7"));
    h.link.want(a.clone(), 0);
    h.link.want(b.clone(), 1);
    h.connect();
    h.transmits();
    h.text(&format!(
        r#"{{"type":"error","code":"forbidden_topic","message":"no","topics":["{b}"]}}"#
    ));
    h.pong(0);
    assert_eq!(
        h.outputs(),
        [
            Output::Uncovered(vec![b.clone()]),
            Output::Covered(vec![a.clone()])
        ]
    );
    // VoIPBIN's code drops the connection instead: nothing is covered, and the shell hears
    // which subscribes were never answered.
    let mut h = Harness::calls();
    h.link.want(a.clone(), 0);
    h.connect();
    h.transmits();
    let report = h.link.ended();
    assert_eq!(report.unanswered, std::slice::from_ref(&a));
    assert_eq!(h.outputs(), [Output::Uncovered(vec![a])]);
    assert_eq!(h.counted("fanout_upstream_refusals_total", None), 1);
}

#[test]
fn a_refusal_uncovers_only_what_the_link_asked_for() {
    let mut h = Harness::calls();
    let a = prefix(":call:");
    h.link.want(a.clone(), 0);
    h.connect();
    h.transmits();
    h.pong(0);
    h.outputs();
    // Another link's prefix, or one never asked for: not this link's to uncover.
    let other = prefix(":message:");
    h.text(&format!(
        r#"{{"type":"error","code":"forbidden_topic","message":"no","topics":["{other}"]}}"#
    ));
    assert_eq!(h.outputs(), []);
    assert_eq!(h.counted("fanout_upstream_refusals_total", None), 1);
}

#[test]
fn a_prefix_let_go_is_not_uncovered_again_when_its_connection_ends() {
    // Its label may have a new link by then, which may have covered it anew.
    let mut h = Harness::calls();
    let (a, b) = (prefix(":call:"), prefix(":call:k7"));
    h.link.want(a.clone(), 0);
    h.link.want(b.clone(), 1);
    h.connect();
    h.transmits();
    h.pong(0);
    h.outputs();
    h.link.unwant(&a);
    assert_eq!(h.outputs(), [Output::Uncovered(vec![a])]);
    h.link.ended();
    assert_eq!(h.outputs(), [Output::Uncovered(vec![b])]);
}

#[test]
fn frames_nobody_needs_any_more_are_dropped() {
    let mut h = Harness::calls();
    let a = prefix(":call:");
    h.link.want(a.clone(), 0);
    h.connect();
    h.transmits();
    h.pong(0);
    h.outputs();
    h.link.unwant(&a);
    assert!(h.link.is_idle());
    h.outputs();
    h.event("k1");
    assert_eq!(h.outputs(), []);
    assert_eq!(
        h.counted("fanout_events_dropped_total", Some(("reason", "unwanted"))),
        1
    );
}

#[test]
fn big_sets_are_sent_in_messages_of_bounded_size() {
    let mut h = Harness::calls();
    for n in 0..600 {
        h.link.want(prefix(&format!(":call:k{n}")), n);
    }
    h.connect();
    let transmits = h.transmits();
    assert_eq!(transmits.len(), 4, "three subscribes and a barrier");
    for transmit in &transmits[..3] {
        let Transmit::Text(text) = transmit else {
            panic!("{transmit:?}")
        };
        let value: serde_json::Value = serde_json::from_str(text).expect("json");
        assert!(
            value["topics"]
                .as_array()
                .is_some_and(|t| t.len() <= MAX_TOPICS_PER_MESSAGE)
        );
    }
}
