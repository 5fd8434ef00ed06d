//! Tenant isolation at the seam: whatever the feeds are, the registry opens one per customer
//! whose events a pattern selects, asks it only for that customer's patterns, and a hub
//! delivers only its own customer's events. A recording [`Feeds`] stands in for where events
//! come from (single-node and cluster mode are tested end to end elsewhere).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fanout_core::{Feed, FeedStatus, Feeds, Registry};
use fanout_protocol::prefix::{Label, Matching, Prefix};
use fanout_protocol::upstream::{Event, Shape};
use fanout_protocol::{Pattern, Topic};
use fanout_session::window::WindowLimits;
use fanout_session::{Directory, Hub, SessionConfig, SessionHandle, Subscriber, UpstreamLimit};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A feed that records what it is asked for, and lets the test publish into its hub.
struct Recording {
    customer: Uuid,
    hub: Arc<Hub>,
    wanted: Mutex<BTreeMap<String, usize>>,
}

/// The most labels a recording feed takes.
const MAX_LABELS: usize = 3;

impl Feed for Recording {
    fn admits(&self, prefixes: &[Prefix]) -> Result<(), usize> {
        let mut labels: Vec<Label> = self
            .wanted
            .lock()
            .expect("lock")
            .keys()
            .map(|p| Prefix::parse(p).expect("prefix").label().clone())
            .collect();
        labels.extend(prefixes.iter().map(|p| p.label().clone()));
        labels.sort();
        labels.dedup();
        if labels.len() > MAX_LABELS {
            return Err(MAX_LABELS);
        }
        Ok(())
    }

    fn add(&self, prefix: &Prefix) {
        *self
            .wanted
            .lock()
            .expect("lock")
            .entry(prefix.as_str().to_owned())
            .or_insert(0) += 1;
    }

    fn remove(&self, prefix: &Prefix) {
        let mut wanted = self.wanted.lock().expect("lock");
        if let Some(count) = wanted.get_mut(prefix.as_str()) {
            *count -= 1;
            if *count == 0 {
                wanted.remove(prefix.as_str());
            }
        }
    }

    fn status(&self) -> FeedStatus {
        FeedStatus {
            state: "recording",
            wanted: Vec::new(),
            connections: 0,
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
        Matching::Prefix,
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

/// Subscribes `session` to one pattern, which the registry must take.
fn subscribe(registry: &Registry, session: &Subscriber, text: &str) {
    registry
        .subscribe(session, &[pattern(text)])
        .expect("within the limit");
}

fn call(customer: Uuid, id: &str) -> Event {
    Event {
        shape: Shape::Envelope,
        event_type: "call_ringing".to_owned(),
        timestamp: "2026-01-20T10:30:00.000000Z".to_owned(),
        customer_id: customer,
        topics: vec![Topic::parse(&format!("customer_id:{customer}:call:{id}")).expect("topic")],
        fresh_from: 0,
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
    subscribe(&registry, &admin, &format!("customer_id:{c}:call:*"));
    // An agent pattern is served from the session's own customer's stream.
    let agent_session = session(2, c);
    registry.attach(&agent_session);
    subscribe(
        &registry,
        &agent_session,
        &format!("agent_id:{agent}:queue"),
    );
    // Asked in VoIPBIN's own language: raw prefixes, a segment made exact by its `:`.
    assert_eq!(
        feeds.wanted(c),
        [
            format!("customer_id:{c}:call:"),
            format!("customer_id:{c}:queue:")
        ]
    );
    // A (super-admin's) pattern naming customer D goes to D's feed, not C's.
    subscribe(&registry, &admin, &format!("customer_id:{d}"));
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
    subscribe(&registry, &of_c, &format!("customer_id:{c}"));
    subscribe(&registry, &of_d, &format!("customer_id:{d}"));
    let c_hub = feeds.of(c)[0].hub.clone();
    let d_hub = feeds.of(d)[0].hub.clone();
    assert_eq!(c_hub.publish(call(c, "k1")).delivered, 1);
    assert_eq!(d_hub.publish(call(d, "k2")).delivered, 1);
    // D's event handed to C's hub (a feed's bug) reaches nobody.
    assert_eq!(c_hub.publish(call(d, "k3")).delivered, 0);
    // C's session asking for D's topics in its own hub would not match D's events either.
    subscribe(&registry, &of_c, &format!("agent_id:{}", Uuid::new_v4()));
    assert_eq!(c_hub.publish(call(d, "k4")).delivered, 0);
}

#[tokio::test]
async fn the_last_session_leaving_releases_its_patterns_after_the_linger() {
    let feeds = Arc::new(RecordingFeeds::default());
    let registry = registry(&feeds);
    let c = Uuid::new_v4();
    let (one, two) = (session(1, c), session(2, c));
    let calls = pattern(&format!("customer_id:{c}:call:*"));
    let prefix = format!("customer_id:{c}:call:");
    for s in [&one, &two] {
        registry.attach(s);
        registry
            .subscribe(s, std::slice::from_ref(&calls))
            .expect("within the limit");
    }
    registry.detach(&one, std::slice::from_ref(&calls));
    assert_eq!(feeds.wanted(c), std::slice::from_ref(&prefix));
    registry.detach(&two, std::slice::from_ref(&calls));
    // Kept for the linger (a browser back at once resumes), then released.
    assert_eq!(feeds.wanted(c), [prefix]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(feeds.wanted(c).is_empty());
    assert!(registry.customers().is_empty(), "the entry went too");
}

#[tokio::test]
async fn a_subscribe_past_the_customers_upstream_limit_is_refused_whole() {
    let feeds = Arc::new(RecordingFeeds::default());
    let registry = registry(&feeds);
    let c = Uuid::new_v4();
    let (one, two) = (session(1, c), session(2, c));
    registry.attach(&one);
    registry.attach(&two);
    let topics = |rests: &[&str]| -> Vec<Pattern> {
        rests
            .iter()
            .map(|r| pattern(&format!("customer_id:{c}{r}")))
            .collect()
    };
    // Three labels: call, message, and call with its hang-up type.
    registry
        .subscribe(
            &one,
            &topics(&[":call:*", ":message:*", ":call:call_hangup"]),
        )
        .expect("three labels");
    // Patterns of labels in use cost nothing more, whoever holds them.
    registry
        .subscribe(
            &two,
            &topics(&[":call", &format!(":call:{}", Uuid::new_v4())]),
        )
        .expect("no new label");
    // A fourth label is one too many: nothing of the message is applied.
    let refused = registry.subscribe(&two, &topics(&[":message", ":activeflow:*"]));
    assert_eq!(
        refused,
        Err(UpstreamLimit {
            max: MAX_LABELS,
            patterns: topics(&[":message", ":activeflow:*"]),
        })
    );
    assert!(!feeds.wanted(c).iter().any(|p| p.contains("activeflow")));
    assert_eq!(feeds.wanted(c).len(), 4);
    let hub = feeds.of(c)[0].hub.clone();
    assert_eq!(
        hub.len(),
        5,
        "the refused message holds no pattern in the hub"
    );
    // Room made by an unsubscribe lets it in.
    registry.unsubscribe(&one, &pattern(&format!("customer_id:{c}:call:call_hangup")));
    registry
        .subscribe(&two, &topics(&[":message", ":activeflow:*"]))
        .expect("room again");
}
