//! The per-customer fan-out: the index of a customer's session patterns, and publishing an
//! upstream event to every session that may see it.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use fanout_protocol::Pattern;
use fanout_protocol::server::EnvelopeHead;
use fanout_protocol::upstream::Event;
use fanout_topic_trie::Trie;
use uuid::Uuid;

use crate::session::SessionHandle;

/// A session as the index holds it: compared and hashed by session id.
#[derive(Debug, Clone)]
pub struct Subscriber(pub Arc<SessionHandle>);

impl PartialEq for Subscriber {
    fn eq(&self, other: &Self) -> bool {
        self.0.id() == other.0.id()
    }
}

impl Eq for Subscriber {}

impl Hash for Subscriber {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id().hash(state);
    }
}

impl fanout_topic_trie::Subscriber for Subscriber {
    fn id(&self) -> u64 {
        self.0.id()
    }
}

/// What one publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Published {
    /// Sessions the event was queued to.
    pub delivered: usize,
    /// Sessions whose queue was full (each is being closed with 1013).
    pub overflowed: usize,
    /// Envelopes encoded (at most one per topic).
    pub encoded: usize,
}

/// One customer's sessions, indexed by pattern.
pub struct Hub {
    customer_id: Uuid,
    trie: Trie<Subscriber>,
    // Metric handles, registered once: the publish path does no registry lookups.
    events_in: metrics::Counter,
    deliveries: metrics::Counter,
    fanout_seconds: metrics::Histogram,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("customer_id", &self.customer_id)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// An empty hub for `customer_id`.
    pub fn new(customer_id: Uuid) -> Self {
        Hub {
            customer_id,
            trie: Trie::new(),
            events_in: metrics::counter!("fanout_events_in_total"),
            deliveries: metrics::counter!("fanout_deliveries_total"),
            fanout_seconds: metrics::histogram!("fanout_fanout_seconds"),
        }
    }

    /// The customer whose events this hub publishes.
    pub fn customer_id(&self) -> Uuid {
        self.customer_id
    }

    /// Adds a session's pattern; false if it was there.
    pub fn insert(&self, pattern: &Pattern, subscriber: &Subscriber) -> bool {
        self.trie.insert(pattern, subscriber.clone())
    }

    /// Removes a session's pattern; false if it was not there.
    pub fn remove(&self, pattern: &Pattern, subscriber: &Subscriber) -> bool {
        self.trie.remove(pattern, subscriber)
    }

    /// Removes every pattern of a session.
    pub fn remove_subscriber(&self, subscriber: &Subscriber) -> usize {
        self.trie.remove_subscriber(subscriber)
    }

    /// How many (pattern, session) pairs the hub holds.
    pub fn len(&self) -> usize {
        self.trie.len()
    }

    /// Whether the hub holds no pattern.
    pub fn is_empty(&self) -> bool {
        self.trie.is_empty()
    }

    /// Queues `frame` (a gap, made once) to every session holding a pattern here, once each,
    /// in order with the events: a session learns of a loss before the first event after it.
    /// Answers how many sessions it was queued to. Never waits, like [`Hub::publish`].
    pub fn publish_to_all(&self, frame: &Bytes) -> usize {
        let mut delivered = 0;
        self.trie.for_each_subscriber(|subscriber| {
            if subscriber.0.offer(frame.clone()) {
                delivered += 1;
            }
        });
        delivered
    }

    /// Queues `event` to every session with a matching pattern, once each, under the first of
    /// the event's topics it matched. Each topic's envelope is encoded at most once and shared.
    ///
    /// Never waits: a session whose queue is full is closed with 1013 instead.
    pub fn publish(&self, event: &Event) -> Published {
        let started = Instant::now();
        let mut published = Published::default();
        if event.customer_id != self.customer_id {
            // The upstream decoder guarantees this; a mismatch would leak across tenants.
            metrics::counter!("fanout_events_dropped_total", "reason" => "foreign_customer")
                .increment(1);
            return published;
        }
        // The head is made on the first match only: an event nobody here subscribed to costs
        // no encoding. Then one frame per topic, made on first use and shared (events have at
        // most five topics; a longer list is encoded per use past the slots).
        let mut head: Option<EnvelopeHead> = None;
        let mut encode = |index: usize| {
            published.encoded += 1;
            head.get_or_insert_with(|| EnvelopeHead::new(&event.event_type, &event.timestamp))
                .frame(&event.topics[index], &event.data)
        };
        let mut frames: [Option<Bytes>; 5] = Default::default();
        let (mut delivered, mut overflowed) = (0, 0);
        self.trie.match_topics(&event.topics, |subscriber, index| {
            let frame = match frames.get_mut(index) {
                Some(slot) => slot.get_or_insert_with(|| encode(index)).clone(),
                None => encode(index),
            };
            if subscriber.0.offer(frame) {
                delivered += 1;
            } else {
                overflowed += 1;
            }
        });
        published.delivered = delivered;
        published.overflowed = overflowed;
        self.events_in.increment(1);
        self.deliveries.increment(published.delivered as u64);
        self.fanout_seconds.record(started.elapsed().as_secs_f64());
        published
    }
}
