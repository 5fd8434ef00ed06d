//! Collapsing the copies of one event (sans-IO). VoIPBIN publishes each event under several
//! topics and delivers it once per published topic a connection's prefixes match: the same
//! object arrives twice on one connection (`…:call:` matches `…:call:<id>` and
//! `…:call:<event_type>:<id>`), and again on another connection of the customer whose
//! prefix matches it too (`…:call:call_hangup:`), labelled more or less well.
//!
//! The [`Merger`] remembers each event first seen (for [`MergeLimits::window`], at most
//! [`MergeLimits::entries`] of them) with the topics it was published under:
//! - a copy that adds no topic is dropped: every session it could reach had the event;
//! - a copy that adds topics (a label that says more: the event type of a typed prefix, the
//!   resource of an object first seen on the whole stream) goes on with the old topics
//!   first and [`Event::fresh_from`] after them, so that only sessions that none of the
//!   old topics matched get it.
//!
//! Copies are the same event when their bytes are: the object (and for wrapped shapes its
//! type, and an envelope's time). VoIPBIN serializes an event once for all its topics, and
//! its objects carry their update time, so two events of the same bytes are one event.
//! Past the window a copy is taken for a new event: a duplicate then, never a loss.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fanout_protocol::Topic;
use fanout_protocol::upstream::{Event, Shape};

/// How long and how many events a [`Merger`] remembers.
#[derive(Debug, Clone, Copy)]
pub struct MergeLimits {
    /// How long after an event first arrived a copy of it is still recognised.
    pub window: Duration,
    /// How many events are remembered at most (the oldest go first).
    pub entries: usize,
}

impl Default for MergeLimits {
    fn default() -> Self {
        MergeLimits {
            window: Duration::from_secs(5),
            entries: 16_384,
        }
    }
}

/// An event seen: what identifies its copies, and the topics it went out under.
struct Seen {
    event_type: Option<Box<str>>,
    timestamp: Option<Box<str>>,
    data: Bytes,
    topics: Vec<Topic>,
}

impl Seen {
    fn is_copy_of(&self, event: &Event) -> bool {
        let (event_type, timestamp) = identity(event);
        self.data == event.data
            && self.event_type.as_deref() == event_type
            && self.timestamp.as_deref() == timestamp
    }
}

/// What identifies an event besides its data: a wrapped frame's type, an envelope's time.
fn identity(event: &Event) -> (Option<&str>, Option<&str>) {
    match event.shape {
        Shape::Bare => (None, None),
        Shape::Webhook => (Some(&event.event_type), None),
        Shape::Envelope => (Some(&event.event_type), Some(&event.timestamp)),
    }
}

/// Whether every pattern that matches `topic` matches `longer` too: `topic`'s segments are
/// the first of `longer`'s.
fn extends(longer: &Topic, topic: &Topic) -> bool {
    longer.as_str() == topic.as_str()
        || longer
            .as_str()
            .strip_prefix(topic.as_str())
            .is_some_and(|rest| rest.starts_with(':'))
}

/// A customer's recent events, to collapse their copies: see the module docs.
pub struct Merger {
    limits: MergeLimits,
    hasher: foldhash::fast::RandomState,
    seen: HashMap<u64, Vec<Seen>>,
    /// Hashes in the order they were first seen, with when.
    order: VecDeque<(Instant, u64)>,
    collapsed: metrics::Counter,
    relabelled: metrics::Counter,
}

impl Merger {
    /// An empty merger.
    pub fn new(limits: MergeLimits) -> Self {
        Merger {
            limits,
            hasher: foldhash::fast::RandomState::default(),
            seen: HashMap::new(),
            order: VecDeque::new(),
            collapsed: metrics::counter!("fanout_upstream_copies_total", "outcome" => "collapsed"),
            relabelled: metrics::counter!("fanout_upstream_copies_total", "outcome" => "relabelled"),
        }
    }

    fn hash(&self, event: &Event) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        let (event_type, timestamp) = identity(event);
        for part in [event_type, timestamp].into_iter().flatten() {
            hasher.write(part.as_bytes());
            hasher.write_u8(0xff);
        }
        hasher.write(&event.data);
        hasher.finish()
    }

    /// Forgets what is past the window, and makes room for one more within the count.
    fn forget(&mut self, now: Instant) {
        while let Some(&(at, hash)) = self.order.front() {
            let expired = now.saturating_duration_since(at) >= self.limits.window;
            if !expired && self.order.len() < self.limits.entries {
                break;
            }
            self.order.pop_front();
            // Entries under one hash are in the order they came: the oldest goes.
            if let Some(list) = self.seen.get_mut(&hash) {
                list.remove(0);
                if list.is_empty() {
                    self.seen.remove(&hash);
                }
            }
        }
    }

    /// The event to publish for `event`, which arrived at `now`: itself if it is new, the
    /// topics it adds if it is a copy that says more, nothing if it is a copy that does not.
    pub fn admit(&mut self, mut event: Event, now: Instant) -> Option<Event> {
        self.forget(now);
        let hash = self.hash(&event);
        let earlier = self
            .seen
            .get_mut(&hash)
            .and_then(|list| list.iter_mut().find(|seen| seen.is_copy_of(&event)));
        let Some(seen) = earlier else {
            let (event_type, timestamp) = identity(&event);
            let seen = Seen {
                event_type: event_type.map(Into::into),
                timestamp: timestamp.map(Into::into),
                data: event.data.clone(),
                topics: event.topics.clone(),
            };
            self.seen.entry(hash).or_default().push(seen);
            self.order.push_back((now, hash));
            return Some(event);
        };
        // A topic adds sessions only if no topic it went out under already extends it: a
        // pattern that matches `customer_id:<C>` matches `customer_id:<C>:call:<id>` too.
        let new: Vec<Topic> = event
            .topics
            .iter()
            .filter(|t| !seen.topics.iter().any(|old| extends(old, t)))
            .cloned()
            .collect();
        if new.is_empty() {
            self.collapsed.increment(1);
            return None;
        }
        self.relabelled.increment(1);
        event.fresh_from = seen.topics.len();
        seen.topics.extend(new);
        event.topics = seen.topics.clone();
        Some(event)
    }

    /// How many events it remembers now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether it remembers none.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use fanout_protocol::prefix::Label;
    use fanout_protocol::upstream::{Context, decode};
    use uuid::Uuid;

    use super::*;

    const C: &str = "12345678-1234-1234-1234-123456789012";
    const A: &str = "98765432-4321-4321-4321-210987654321";

    fn call(status: &str) -> Bytes {
        Bytes::from(format!(
            r#"{{"id":"k1","customer_id":"{C}","owner_type":"agent","owner_id":"{A}","status":"{status}","tm_update":"t"}}"#
        ))
    }

    /// The object `frame` as a link of `label` decodes it.
    fn through(frame: &Bytes, label: &Label) -> Event {
        let cx = Context {
            customer_id: Uuid::parse_str(C).expect("uuid"),
            received_at: SystemTime::UNIX_EPOCH,
            label,
        };
        decode(frame, &cx).expect("decodes")
    }

    fn topics(event: &Event) -> Vec<&str> {
        event.topics.iter().map(Topic::as_str).collect()
    }

    #[test]
    fn the_same_object_twice_on_one_connection_goes_out_once() {
        let mut merger = Merger::new(MergeLimits::default());
        let now = Instant::now();
        let frame = call("progressing");
        let label = Label::of("call", None);
        assert!(merger.admit(through(&frame, &label), now).is_some());
        assert_eq!(merger.admit(through(&frame, &label), now), None);
        // Another event is another.
        assert!(
            merger
                .admit(through(&call("hangup"), &label), now)
                .is_some()
        );
        assert_eq!(merger.len(), 2);
    }

    #[test]
    fn a_copy_that_says_more_goes_to_those_the_first_did_not_reach() {
        let mut merger = Merger::new(MergeLimits::default());
        let now = Instant::now();
        let frame = call("hangup");
        let first = merger
            .admit(through(&frame, &Label::of("call", None)), now)
            .expect("new");
        assert_eq!(
            topics(&first),
            [
                format!("customer_id:{C}:call:k1"),
                format!("agent_id:{A}:call:k1")
            ]
        );
        assert_eq!(first.fresh_from, 0);
        let typed = merger
            .admit(
                through(&frame, &Label::of("call", Some("call_hangup"))),
                now,
            )
            .expect("says more");
        assert_eq!(typed.event_type, "call_hangup");
        assert_eq!(
            topics(&typed),
            [
                format!("customer_id:{C}:call:k1"),
                format!("agent_id:{A}:call:k1"),
                format!("customer_id:{C}:call:call_hangup:k1"),
                format!("agent_id:{A}:call:call_hangup:k1"),
            ]
        );
        assert_eq!(typed.fresh_from, 2);
        // Said already, by both: nothing more.
        assert_eq!(
            merger.admit(through(&frame, &Label::of("call", None)), now),
            None
        );
        assert_eq!(merger.admit(through(&frame, &Label::none()), now), None);
    }

    #[test]
    fn an_object_first_seen_on_the_whole_stream_gets_its_resource_from_a_later_copy() {
        let mut merger = Merger::new(MergeLimits::default());
        let now = Instant::now();
        let frame = call("ringing");
        let whole = merger
            .admit(through(&frame, &Label::none()), now)
            .expect("new");
        assert_eq!(
            topics(&whole),
            [format!("customer_id:{C}"), format!("agent_id:{A}")]
        );
        let labelled = merger
            .admit(through(&frame, &Label::of("call", None)), now)
            .expect("says more");
        assert_eq!(labelled.fresh_from, 2);
        assert_eq!(labelled.event_type, "call_updated");
    }

    #[test]
    fn copies_past_the_window_or_the_count_are_new_events() {
        let mut merger = Merger::new(MergeLimits {
            window: Duration::from_secs(5),
            entries: 3,
        });
        let label = Label::of("call", None);
        let t0 = Instant::now();
        let frame = call("ringing");
        assert!(merger.admit(through(&frame, &label), t0).is_some());
        assert_eq!(
            merger.admit(through(&frame, &label), t0 + Duration::from_secs(4)),
            None
        );
        assert!(
            merger
                .admit(through(&frame, &label), t0 + Duration::from_secs(5))
                .is_some()
        );
        for status in ["a", "b", "c"] {
            merger.admit(through(&call(status), &label), t0 + Duration::from_secs(6));
        }
        assert_eq!(merger.len(), 3);
        assert!(
            merger
                .admit(through(&frame, &label), t0 + Duration::from_secs(6))
                .is_some()
        );
    }

    #[test]
    fn a_topic_that_reaches_nobody_new_is_no_reason_to_publish_again() {
        let c = format!("customer_id:{C}");
        let topic = |t: &str| Topic::parse(t).expect("topic");
        assert!(extends(&topic(&format!("{c}:call:k1")), &topic(&c)));
        assert!(extends(
            &topic(&format!("{c}:call:k1")),
            &topic(&format!("{c}:call"))
        ));
        assert!(!extends(
            &topic(&format!("{c}:callx:k1")),
            &topic(&format!("{c}:call"))
        ));
        assert!(!extends(
            &topic(&format!("{c}:call")),
            &topic(&format!("{c}:call:k1"))
        ));
        assert!(!extends(
            &topic(&format!("agent_id:{A}:call:k1")),
            &topic(&c)
        ));
    }

    #[test]
    fn wrapped_frames_are_one_event_only_with_the_same_type_and_time() {
        let mut merger = Merger::new(MergeLimits::default());
        let now = Instant::now();
        let data = format!(r#"{{"id":"k1","customer_id":"{C}"}}"#);
        let webhook = |kind: &str| Bytes::from(format!(r#"{{"type":"{kind}","data":{data}}}"#));
        let label = Label::none();
        assert!(
            merger
                .admit(through(&webhook("call_created"), &label), now)
                .is_some()
        );
        assert_eq!(
            merger.admit(through(&webhook("call_created"), &label), now),
            None
        );
        assert!(
            merger
                .admit(through(&webhook("call_updated"), &label), now)
                .is_some()
        );
        let envelope = |at: &str| {
            Bytes::from(format!(
                r#"{{"event_type":"call_created","timestamp":"{at}","topic":"customer_id:{C}:call:k1","data":{data}}}"#
            ))
        };
        assert!(
            merger
                .admit(through(&envelope("t1"), &label), now)
                .is_some()
        );
        assert_eq!(merger.admit(through(&envelope("t1"), &label), now), None);
        assert!(
            merger
                .admit(through(&envelope("t2"), &label), now)
                .is_some()
        );
    }
}
