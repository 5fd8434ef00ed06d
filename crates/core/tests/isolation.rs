//! Tenant isolation at the seam: whatever the feeds are, the registry opens one per customer
//! whose events a pattern selects, asks it only for that customer's patterns, and a hub
//! delivers only its own customer's events. A recording [`Feeds`] stands in for where events
//! come from (single-node and cluster mode are tested end to end elsewhere).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fanout_core::{Feed, FeedStatus, Feeds, Registry};
use fanout_protocol::upstream::{Event, Shape};
use fanout_protocol::{Pattern, Topic};
use fanout_session::window::WindowLimits;
use fanout_session::{Directory, Hub, SessionConfig, SessionHandle, Subscriber};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A feed that records what it is asked for, and lets the test publish into its hub.
struct Recording {
    customer: Uuid,
    hub: Arc<Hub>,
    wanted: Mutex<BTreeMap<String, usize>>,
}

impl Feed for Recording {
    fn add(&self, pattern: &Pattern) {
        *self
            .wanted
            .lock()
            .expect("lock")
            .entry(pattern.as_str().to_owned())
            .or_insert(0) += 1;
    }

    fn remove(&self, pattern: &Pattern) {
        let mut wanted = self.wanted.lock().expect("lock");
        if let Some(count) = wanted.get_mut(pattern.as_str()) {
            *count -= 1;
            if *count == 0 {
                wanted.remove(pattern.as_str());
            }
        }
    }

    fn status(&self) -> FeedStatus {
        FeedStatus {
            state: "recording",
            wanted: Vec::new(),
            down_for: Some(Duration::ZERO),
            owner: None,
            term: None,
        }
    }

    fn close(&self) {}
}

#[derive(Default)]
struct RecordingFeeds {
    opened: Arc<Mutex<Vec<Arc<Recording>>>>,
}

impl RecordingFeeds {
    fn of(&self, customer: Uuid) -> Vec<Arc<Recording>> {
        self.opened
            .lock()
            .expect("lock")
            .iter()
            .filter(|f| f.customer == customer)
            .cloned()
            .collect()
    }

    fn wanted(&self, customer: Uuid) -> Vec<String> {
        let feeds = self.of(customer);
        assert!(feeds.len() <= 1, "one feed per customer");
        feeds
            .first()
            .map(|f| f.wanted.lock().expect("lock").keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// The registry's handle on the same record.
struct Opener(Arc<Mutex<Vec<Arc<Recording>>>>);

impl Feeds for Opener {
    fn open(&self, customer: Uuid, hub: Arc<Hub>, _: &CancellationToken) -> Arc<dyn Feed> {
        assert_eq!(
            hub.customer_id(),
            customer,
            "a feed gets its own customer's hub"
        );
        let feed = Arc::new(Recording {
            customer,
            hub,
            wanted: Mutex::new(BTreeMap::new()),
        });
        self.0.lock().expect("lock").push(feed.clone());
        feed
    }
}

fn registry(feeds: &Arc<RecordingFeeds>) -> Arc<Registry> {
    Registry::new(
        Arc::new(Opener(feeds.opened.clone())),
        Duration::from_millis(50),
        WindowLimits::default(),
        1 << 20,
        CancellationToken::new(),
    )
}

fn session(id: u64, customer: Uuid) -> Subscriber {
    Subscriber(Arc::new(SessionHandle::new(
        id,
        customer,
        &SessionConfig::default(),
    )))
}

fn pattern(text: &str) -> Pattern {
    Pattern::parse(text).expect("valid pattern")
}

fn call(customer: Uuid, id: &str) -> Event {
    Event {
        shape: Shape::Envelope,
        event_type: "call_ringing".to_owned(),
        timestamp: "2026-01-20T10:30:00.000000Z".to_owned(),
        customer_id: customer,
        topics: vec![Topic::parse(&format!("customer_id:{customer}:call:{id}")).expect("topic")],
        data: Bytes::from_static(b"{}"),
    }
}

#[tokio::test]
async fn each_pattern_reaches_the_feed_of_the_customer_it_selects_only() {
    let feeds = Arc::new(RecordingFeeds::default());
    let registry = registry(&feeds);
    let (c, d, agent) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let admin = session(1, c);
    registry.attach(&admin);
    registry.subscribe(&admin, &pattern(&format!("customer_id:{c}:call:*")));
    // An agent pattern is served from the session's own customer's stream.
    let agent_session = session(2, c);
    registry.attach(&agent_session);
    registry.subscribe(&agent_session, &pattern(&format!("agent_id:{agent}:queue")));
    assert_eq!(
        feeds.wanted(c),
        [
            format!("customer_id:{c}:call:*"),
            format!("customer_id:{c}:queue")
        ]
    );
    // A (super-admin's) pattern naming customer D goes to D's feed, not C's.
    registry.subscribe(&admin, &pattern(&format!("customer_id:{d}")));
    assert_eq!(feeds.wanted(d), [format!("customer_id:{d}")]);
    assert_eq!(feeds.wanted(c).len(), 2);
    assert_eq!(feeds.of(c).len(), 1);
    assert_eq!(feeds.of(d).len(), 1);
}

#[tokio::test]
async fn a_hub_delivers_only_its_own_customers_events() {
    let feeds = Arc::new(RecordingFeeds::default());
    let registry = registry(&feeds);
    let (c, d) = (Uuid::new_v4(), Uuid::new_v4());
    let of_c = session(1, c);
    let of_d = session(2, d);
    registry.attach(&of_c);
    registry.attach(&of_d);
    registry.subscribe(&of_c, &pattern(&format!("customer_id:{c}")));
    registry.subscribe(&of_d, &pattern(&format!("customer_id:{d}")));
    let c_hub = feeds.of(c)[0].hub.clone();
    let d_hub = feeds.of(d)[0].hub.clone();
    assert_eq!(c_hub.publish(call(c, "k1")).delivered, 1);
    assert_eq!(d_hub.publish(call(d, "k2")).delivered, 1);
    // D's event handed to C's hub (a feed's bug) reaches nobody.
    assert_eq!(c_hub.publish(call(d, "k3")).delivered, 0);
    // C's session asking for D's topics in its own hub would not match D's events either.
    registry.subscribe(&of_c, &pattern(&format!("agent_id:{}", Uuid::new_v4())));
    assert_eq!(c_hub.publish(call(d, "k4")).delivered, 0);
}

#[tokio::test]
async fn the_last_session_leaving_releases_its_patterns_after_the_linger() {
    let feeds = Arc::new(RecordingFeeds::default());
    let registry = registry(&feeds);
    let c = Uuid::new_v4();
    let (one, two) = (session(1, c), session(2, c));
    let calls = pattern(&format!("customer_id:{c}:call:*"));
    for s in [&one, &two] {
        registry.attach(s);
        registry.subscribe(s, &calls);
    }
    registry.detach(&one, std::slice::from_ref(&calls));
    assert_eq!(feeds.wanted(c), [calls.as_str().to_owned()]);
    registry.detach(&two, std::slice::from_ref(&calls));
    // Kept for the linger (a browser back at once resumes), then released.
    assert_eq!(feeds.wanted(c), [calls.as_str().to_owned()]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(feeds.wanted(c).is_empty());
    assert!(registry.customers().is_empty(), "the entry went too");
}
