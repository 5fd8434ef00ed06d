//! Cluster mode's [`Feeds`]: a customer's events come from the fleet's log in JetStream,
//! written by the one node that holds the customer's lease, its owner.
//!
//! Every node with sessions of a customer runs one task for it, which
//! - **reads** the customer's log ([`crate::log`]) from the beginning of the current term,
//!   through the reader-side fence ([`TermFence`]), into the customer's hub, at the owner's
//!   cursors: every node numbers the stream alike, so a browser resumes on any of them;
//! - **tells the fleet what its sessions need** ([`crate::interest`]): the prefixes of its
//!   sessions' patterns, in a key of its own in the interest bucket;
//! - **seeks the lease** ([`Ownership`]) when nobody holds it (a watch on the lease bucket
//!   says so at once), and while it holds it **owns**: the customer's upstream to VoIPBIN,
//!   subscribed to the union of what every node needs (one connection per label, as on a
//!   single node), whose events, gaps and coverage it appends to the log, fenced on the
//!   store's side on its term's beginning and on its own side by the time since its last
//!   renewal (a node paused past that publishes nothing);
//! - **hands over** when the registry closes it (the customer's linger is over, or the node
//!   shuts down): the upstream closes, the term's end is written and the lease released, so
//!   another interested node takes over at once and tells `owner_handoff`.
//!
//! A new owner tells the customer's sessions a gap (`owner_failover`, or `owner_handoff` when
//! the last term ended properly) once its upstream covers the stream, so that a client
//! resuming from the gap's cursor misses nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, consumer, stream};
use fanout_core::{Feed, FeedStatus, Feeds, HubSink};
use fanout_protocol::cursor::Cursor;
use fanout_protocol::prefix::{Label, Prefix};
use fanout_protocol::server::GapReason;
use fanout_protocol::upstream::Event;
use fanout_session::Hub;
use fanout_upstream::{EventSink, Upstream, UpstreamConfig};
use futures_util::StreamExt as _;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::bucket;
use crate::bus::{self, BusSettings};
use crate::interest::{self, Fleet, Interests};
use crate::log::{self, Record, Stamp};
use crate::{Admit, Lease, Leases, Next, Ownership, TermFence, server_supported};

/// Cluster mode's settings.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This node's name in the fleet (the lease holder's value).
    pub node_id: String,
    /// How long a lease lasts unless renewed.
    pub lease_ttl: Duration,
    /// The key-value bucket of the leases.
    pub lease_bucket: String,
    /// The key-value bucket of the nodes' interest in each customer.
    pub interest_bucket: String,
    /// How long an owner keeps a prefix subscribed after no node needs it any more (a
    /// session back soon finds it covered; longer than [`interest::REFRESH`], so that a
    /// NATS that lost the interest keys has them back first).
    pub interest_linger: Duration,
    /// The JetStream stream of the log.
    pub stream: String,
    /// The log keeps at most this many events per customer.
    pub max_events: i64,
    /// And at most this many bytes in all.
    pub max_bytes: i64,
    /// How many records an owner may have published but not yet seen stored.
    pub max_in_flight: usize,
    /// How many records an owner's upstream may hand over before they are published; past
    /// it, the owner gives its term up (its successor tells the gap).
    pub max_backlog: usize,
    /// How long a NATS request may take.
    pub request_timeout: Duration,
    /// How long NATS may be unreachable before the node serves its own sessions from
    /// upstreams of its own (degraded mode).
    pub degraded_after: Duration,
    /// Readers the log may have at once, fleet-wide: one per (node, customer).
    pub max_readers: i32,
    /// Replicas of the log's stream and the buckets this node makes (existing ones are used
    /// as they are).
    pub replicas: usize,
}

impl ClusterSettings {
    /// The defaults for `node_id`.
    pub fn new(node_id: impl Into<String>) -> Self {
        ClusterSettings {
            node_id: node_id.into(),
            lease_ttl: Duration::from_secs(15),
            lease_bucket: "fanout_owner".into(),
            interest_bucket: "fanout_interest".into(),
            interest_linger: Duration::from_secs(30),
            stream: "FANOUT_EVENTS".into(),
            max_events: 20_000,
            max_bytes: 1 << 30,
            max_in_flight: 1024,
            max_backlog: 16_384,
            request_timeout: Duration::from_secs(5),
            degraded_after: Duration::from_secs(5),
            max_readers: 1_000_000,
            replicas: 1,
        }
    }
}

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS could not be reached, refused the node, or the settings to reach it cannot work.
    #[error(transparent)]
    Connect(#[from] crate::bus::ConnectFailure),
    /// The server is older than cluster mode needs.
    #[error(
        "nats-server {found} is too old for cluster mode: it needs 2.11 or later (expiry markers for leases, and publishes fenced on another subject's last sequence)"
    )]
    TooOld {
        /// The version it reported.
        found: String,
    },
    /// JetStream refused the bucket or the stream.
    #[error("JetStream: {0}")]
    JetStream(String),
}

struct Node {
    settings: ClusterSettings,
    upstream: Arc<UpstreamConfig>,
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    leases: Leases,
    interests: Interests,
    /// What this node knows of every node's interest.
    fleet: Mutex<Fleet>,
    /// Each customer's task, woken when its lease was seen released or expired, or when
    /// the fleet's interest in it changed.
    waiters: Mutex<HashMap<Uuid, Arc<Waiter>>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    /// Whether NATS has been unreachable for longer than `degraded_after`.
    degraded: tokio::sync::watch::Sender<bool>,
    /// The log's stream, to create again if NATS lost it.
    stream_config: stream::Config,
}

/// What wakes a customer's task.
#[derive(Default)]
struct Waiter {
    /// The lease was released or expired.
    lease: Notify,
    /// Another node's interest in the customer changed.
    interest: Notify,
}

impl Node {
    fn waiters(&self) -> MutexGuard<'_, HashMap<Uuid, Arc<Waiter>>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fleet(&self) -> MutexGuard<'_, Fleet> {
        self.fleet.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The feeds of a node in a cluster.
pub struct ClusterFeeds {
    node: Arc<Node>,
}

impl std::fmt::Debug for ClusterFeeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterFeeds")
            .field("node_id", &self.node.settings.node_id)
            .finish_non_exhaustive()
    }
}

impl ClusterFeeds {
    /// Joins the cluster on `bus`: checks the server's version, opens the lease bucket and
    /// the log's stream (creating them if needed), and watches the leases. Customers'
    /// upstreams connect as `upstream` says. Runs until `cancel`.
    ///
    /// # Errors
    /// [`ClusterError`] when NATS cannot be reached, is too old or refuses JetStream.
    pub async fn connect(
        bus: &BusSettings,
        settings: ClusterSettings,
        upstream: Arc<UpstreamConfig>,
        cancel: CancellationToken,
    ) -> Result<Self, ClusterError> {
        let client = bus::connect(
            bus,
            format!("fanout-gateway {}", settings.node_id),
            settings.request_timeout,
        )
        .await?;
        let version = client.server_info().version;
        if !server_supported(&version) {
            return Err(ClusterError::TooOld { found: version });
        }
        let leases = Leases::open(
            client.clone(),
            &settings.lease_bucket,
            settings.lease_ttl,
            &settings.node_id,
            settings.replicas,
        )
        .await
        .map_err(|e| ClusterError::JetStream(e.to_string()))?;
        let interests = Interests::open(
            client.clone(),
            &settings.interest_bucket,
            &settings.node_id,
            settings.replicas,
        )
        .await
        .map_err(|e| ClusterError::JetStream(e.to_string()))?;
        let js = jetstream::new(client.clone());
        let stream_config = stream::Config {
            name: settings.stream.clone(),
            subjects: vec![log::STREAM_SUBJECTS.into()],
            max_messages_per_subject: settings.max_events,
            max_bytes: settings.max_bytes,
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            // One reader per (node, customer). Set, not left to the server: nats-server
            // 2.15 puts a stream with no limit of its own (or -1) at 1,000 consumers.
            max_consumers: settings.max_readers,
            allow_direct: true,
            num_replicas: settings.replicas,
            ..Default::default()
        };
        let stream = bucket::open_stream(&js, &stream_config)
            .await
            .map_err(ClusterError::JetStream)?;
        let node = Arc::new(Node {
            settings,
            upstream,
            client,
            js,
            stream,
            leases,
            interests,
            fleet: Mutex::new(Fleet::default()),
            waiters: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            cancel,
            degraded: tokio::sync::watch::Sender::new(false),
            stream_config,
        });
        metrics::gauge!("fanout_cluster_degraded").set(0.0);
        metrics::gauge!("fanout_cluster_leases_held").set(0.0);
        tokio::spawn(watch_connection(node.clone()));
        tokio::spawn(watch_leases(node.clone()));
        tokio::spawn(watch_interest(node.clone()));
        tokio::spawn(measure_round_trip(node.clone()));
        tracing::info!(url = %bus::masked(&bus.url), server = %version, node_id = %node.settings.node_id, "Joined the cluster");
        Ok(ClusterFeeds { node })
    }
}

/// Wakes a customer's task when its lease was released or expired (the store marks an
/// expiry), and keeps watching across NATS outages.
async fn watch_leases(node: Arc<Node>) {
    loop {
        match node.leases.changes().await {
            Ok(changes) => {
                let mut changes = std::pin::pin!(changes);
                loop {
                    tokio::select! {
                        () = node.cancel.cancelled() => return,
                        change = changes.next() => match change {
                            Some((customer, None)) => {
                                if let Some(waiter) = node.waiters().get(&customer) {
                                    waiter.lease.notify_one();
                                }
                            }
                            Some((_, Some(_))) => {}
                            None => break,
                        }
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "Cannot watch the leases yet"),
        }
        tokio::select! {
            () = node.cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Keeps the node's view of the fleet's interest ([`Fleet`]) and wakes the customers whose
/// interest changed; across NATS outages, read again from the start each time.
async fn watch_interest(node: Arc<Node>) {
    loop {
        match node.interests.changes().await {
            Ok(changes) => {
                // Interest that went meanwhile is in no change to come: its customers look
                // again now (a prefix no node needs lingers, and the history read next
                // brings back what is still needed).
                let known = node.fleet().clear();
                {
                    let waiters = node.waiters();
                    for customer in known {
                        if let Some(waiter) = waiters.get(&customer) {
                            waiter.interest.notify_one();
                        }
                    }
                }
                let mut changes = std::pin::pin!(changes);
                loop {
                    tokio::select! {
                        () = node.cancel.cancelled() => return,
                        change = changes.next() => match change {
                            Some(change) => {
                                let customer = change.customer;
                                if node.fleet().apply(change)
                                    && let Some(waiter) = node.waiters().get(&customer)
                                {
                                    waiter.interest.notify_one();
                                }
                            }
                            None => break,
                        }
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "Cannot watch the fleet's interest yet"),
        }
        tokio::select! {
            () = node.cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Declares the node degraded once its NATS connection has been down for `degraded_after`,
/// and back when it is up again.
async fn watch_connection(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut down_since: Option<Instant> = None;
    // JetStream itself: asked every second whether the log is there.
    let mut store_down_since: Option<Instant> = None;
    let mut ticks: u64 = 0;
    // NATS lost its state (the log's stream is gone): every node is degraded at least this
    // long, so that every customer's task sees it and rejoins with fresh fences (terms
    // start again from the new bucket's revisions).
    let mut lost_until: Option<Instant> = None;
    let mut created = Some(node.stream.cached_info().created);
    let hold = node
        .settings
        .degraded_after
        .max(node.settings.request_timeout * 2)
        + Duration::from_secs(1);
    loop {
        tokio::select! {
            () = node.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        ticks += 1;
        let connected = node.client.connection_state() == async_nats::connection::State::Connected;
        if connected {
            down_since = None;
            if ticks.is_multiple_of(10) {
                let probe =
                    tokio::time::timeout(Duration::from_secs(1), node.stream.get_info()).await;
                match probe {
                    Ok(Ok(info)) => {
                        store_down_since = None;
                        // Made again (by this node or another): what was there is gone.
                        let made = Some(info.created);
                        if created.is_some() && created != made {
                            tracing::warn!("NATS lost the cluster's state: the log was made again");
                            lost_until = Some(Instant::now() + hold);
                        }
                        created = made;
                    }
                    Ok(Err(error)) if error.to_string().contains("stream not found") => {
                        tracing::warn!(
                            "NATS lost the cluster's state: creating the log and the leases again"
                        );
                        lost_until = Some(Instant::now() + hold);
                        let made = bucket::open_stream(&node.js, &node.stream_config).await;
                        let reopened = node.leases.reopen().await;
                        let interests = node.interests.reopen().await;
                        if made.is_err() || reopened.is_err() || interests.is_err() {
                            store_down_since.get_or_insert_with(Instant::now);
                        }
                    }
                    _ => {
                        store_down_since.get_or_insert_with(Instant::now);
                    }
                }
            }
        } else {
            down_since.get_or_insert_with(Instant::now);
        }
        let after = node.settings.degraded_after;
        let degraded = down_since.is_some_and(|since| since.elapsed() >= after)
            || store_down_since.is_some_and(|since| since.elapsed() >= after)
            || lost_until.is_some_and(|until| Instant::now() < until);
        let changed = node.degraded.send_if_modified(|now| {
            let changed = *now != degraded;
            *now = degraded;
            changed
        });
        if changed {
            metrics::gauge!("fanout_cluster_degraded").set(if degraded { 1.0 } else { 0.0 });
            if degraded {
                tracing::warn!(
                    "NATS unreachable: serving this node's sessions from its own upstreams"
                );
            } else {
                tracing::info!("NATS reachable again: rejoining the cluster");
            }
        }
    }
}

/// Keeps `fanout_cluster_nats_rtt_seconds` (a flush is a round trip).
async fn measure_round_trip(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = node.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        let flushed =
            tokio::time::timeout(node.settings.request_timeout, node.client.flush()).await;
        if matches!(flushed, Ok(Ok(()))) {
            metrics::gauge!("fanout_cluster_nats_rtt_seconds").set(started.elapsed().as_secs_f64());
        }
    }
}

impl Feeds for ClusterFeeds {
    fn open(&self, customer: Uuid, hub: Arc<Hub>, cancel: &CancellationToken) -> Arc<dyn Feed> {
        let shared = Arc::new(Shared {
            customer,
            node: self.node.clone(),
            close: cancel.child_token(),
            status: Mutex::new(Status::default()),
            wanted: Mutex::new(BTreeMap::new()),
            local: tokio::sync::watch::Sender::new(0),
        });
        // A resume on this node waits until the log's current term is read in.
        hub.catching_up();
        let waiter = Arc::new(Waiter::default());
        self.node.waiters().insert(customer, waiter.clone());
        let task = Customer {
            node: self.node.clone(),
            customer,
            hub,
            shared: shared.clone(),
            waiter,
        };
        self.node.tasks.spawn(task.run());
        self.node
            .tasks
            .spawn(publish_interest(self.node.clone(), shared.clone()));
        Arc::new(ClusterFeed(shared))
    }

    fn closed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let tasks = self.node.tasks.clone();
        Box::pin(async move {
            tasks.close();
            tasks.wait().await;
        })
    }
}

/// Keeps this node's interest in a customer in the fleet's bucket: written when it changes
/// and every [`interest::REFRESH`]; removed when the feed closes.
async fn publish_interest(node: Arc<Node>, shared: Arc<Shared>) {
    let timeout = node.settings.request_timeout;
    let mut changes = shared.local.subscribe();
    let mut refresh = tokio::time::interval(interest::REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What the bucket is known to hold: nothing at first; unknown after a failed write.
    let mut written = Some(BTreeSet::new());
    let mut refresh_due = false;
    loop {
        tokio::select! {
            () = shared.close.cancelled() => break,
            changed = changes.changed() => if changed.is_err() { break },
            // Written again, changed or not: the bucket forgets unwritten keys.
            _ = refresh.tick() => refresh_due = true,
            () = tokio::time::sleep(Duration::from_millis(500)), if written.is_none() => {}
        }
        let now = shared.wanted_set();
        // An empty set is no key at all: nothing to refresh.
        let rewrite = refresh_due && !now.is_empty();
        if !rewrite && written.as_ref() == Some(&now) {
            continue;
        }
        match tokio::time::timeout(timeout, node.interests.put(shared.customer, &now)).await {
            Ok(Ok(())) => {
                written = Some(now);
                refresh_due = false;
                refresh.reset();
            }
            failed => {
                tracing::debug!(customer = %shared.customer, ?failed, "Cannot write this node's interest yet");
                written = None;
            }
        }
    }
    if written.is_none_or(|w| !w.is_empty()) {
        let _ = tokio::time::timeout(
            timeout,
            node.interests.put(shared.customer, &BTreeSet::new()),
        )
        .await;
    }
}

#[derive(Default)]
struct Status {
    owner: Option<String>,
    term: Option<u64>,
    upstream: Option<Arc<Upstream>>,
    /// Since when the log has not been read, if it is not.
    broken_since: Option<Instant>,
}

struct Shared {
    customer: Uuid,
    node: Arc<Node>,
    close: CancellationToken,
    status: Mutex<Status>,
    /// What this node's sessions need upstream, counted.
    wanted: Mutex<BTreeMap<Prefix, usize>>,
    /// Bumped whenever the set of `wanted` changes.
    local: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wanted(&self) -> MutexGuard<'_, BTreeMap<Prefix, usize>> {
        self.wanted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What this node's sessions need upstream, each prefix once.
    fn wanted_set(&self) -> BTreeSet<Prefix> {
        self.wanted().keys().cloned().collect()
    }

    /// What the customer's upstream should carry: this node's prefixes and every other
    /// node's, within the connections a customer may have (this node's labels first, then
    /// the others' in order; a prefix of a label past the limit is left out, and then
    /// `true` with it).
    fn desired(&self) -> (BTreeSet<Prefix>, bool) {
        let max = self.node.upstream.max_connections;
        let own = self.wanted_set();
        let others = self
            .node
            .fleet()
            .others(self.customer, &self.node.settings.node_id);
        let mut labels: BTreeSet<Label> = BTreeSet::new();
        let mut desired = BTreeSet::new();
        let mut left_out = false;
        for prefix in own.into_iter().chain(others) {
            if labels.contains(prefix.label()) || labels.len() < max {
                labels.insert(prefix.label().clone());
                desired.insert(prefix);
            } else {
                left_out = true;
            }
        }
        (desired, left_out)
    }
}

/// A customer's feed on a node of the cluster.
struct ClusterFeed(Arc<Shared>);

impl Feed for ClusterFeed {
    fn admits(&self, prefixes: &[Prefix]) -> Result<(), usize> {
        let shared = &self.0;
        let max = shared.node.upstream.max_connections;
        let mut labels: BTreeSet<Label> =
            shared.wanted().keys().map(|p| p.label().clone()).collect();
        let others = shared
            .node
            .fleet()
            .others(shared.customer, &shared.node.settings.node_id);
        labels.extend(others.iter().chain(prefixes).map(|p| p.label().clone()));
        if labels.len() > max {
            return Err(max);
        }
        Ok(())
    }

    fn add(&self, prefix: &Prefix) {
        let first = {
            let mut wanted = self.0.wanted();
            let count = wanted.entry(prefix.clone()).or_insert(0);
            *count += 1;
            *count == 1
        };
        if first {
            self.0.local.send_modify(|n| *n += 1);
        }
    }

    // The hub's coverage is the owner's, read from the log: every event of the customer
    // reaches this node's hub whatever its sessions need, and the owner tells in the log
    // when a prefix stops being covered.
    fn remove(&self, prefix: &Prefix) {
        let last = {
            let mut wanted = self.0.wanted();
            match wanted.get_mut(prefix) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                Some(_) => {
                    wanted.remove(prefix);
                    true
                }
                None => false,
            }
        };
        if last {
            self.0.local.send_modify(|n| *n += 1);
        }
    }

    fn status(&self) -> FeedStatus {
        let status = self.0.status();
        let (state, connections) = match &status.upstream {
            Some(upstream) => (upstream.state().label(), upstream.connections()),
            None if status.broken_since.is_some() => ("cluster_down", 0),
            None => ("follower", 0),
        };
        FeedStatus {
            state,
            wanted: self.0.wanted_set().into_iter().collect(),
            connections,
            down_for: Some(
                status
                    .broken_since
                    .map_or(Duration::ZERO, |since| since.elapsed()),
            ),
            owner: status.owner.clone(),
            term: status.term,
        }
    }

    fn close(&self) {
        self.0.close.cancel();
    }
}

/// What an owner's upstream hands to its publisher.
enum Item {
    Event(Event),
    Gap(SystemTime, SystemTime),
    Covered(Vec<Prefix>),
    Uncovered(Vec<Prefix>),
}

/// The owner's upstream sink: everything goes to the term's publisher, in order; a
/// publisher too far behind ends the term (nothing is dropped silently).
struct OwnerSink {
    items: mpsc::Sender<Item>,
    overflow: CancellationToken,
    /// Cancelled when the term ends in order: the publisher takes nothing more then.
    finish: CancellationToken,
}

impl OwnerSink {
    fn send(&self, item: Item) {
        // Full (the reader waits for room before each frame, so only a burst of control
        // items can fill it), or closed while the term was not ending: items would be
        // lost, so the term ends (its successor tells the gap).
        if let Err(error) = self.items.try_send(item)
            && !self.finish.is_cancelled()
            && !self.overflow.is_cancelled()
        {
            tracing::warn!(
                full = matches!(error, mpsc::error::TrySendError::Full(_)),
                "The log's publisher cannot take the upstream's events: the term ends"
            );
            self.overflow.cancel();
        }
    }
}

/// Free places in the publisher's queue below which the upstream's reader waits.
const HEADROOM: usize = 64;

impl EventSink for OwnerSink {
    fn publish(&self, event: Event) {
        self.send(Item::Event(event));
    }

    fn room(&self) -> Option<Pin<Box<dyn Future<Output = ()> + Send + '_>>> {
        if self.items.capacity() >= HEADROOM {
            return None;
        }
        // VoIPBIN waits (in the socket) while the log takes what came.
        Some(Box::pin(async move {
            let _ = self.items.reserve_many(HEADROOM).await;
        }))
    }

    fn gap(&self, since: SystemTime, until: SystemTime) {
        self.send(Item::Gap(since, until));
    }

    fn covered(&self, prefixes: &[Prefix]) {
        self.send(Item::Covered(prefixes.to_vec()));
    }

    fn uncovered(&self, prefixes: &[Prefix]) {
        self.send(Item::Uncovered(prefixes.to_vec()));
    }
}

/// Degraded mode's sink: the node's own upstream straight into the hub, numbered here; the
/// loss since the log was last read is told once the upstream covers the stream.
struct LocalSink {
    inner: HubSink,
    owed: Mutex<Option<SystemTime>>,
    /// Cleared when the node rejoins, before the log's numbering takes over: nothing the
    /// closing upstream still hands over reaches the hub after that.
    active: Arc<std::sync::atomic::AtomicBool>,
}

impl LocalSink {
    fn active(&self) -> bool {
        self.active.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl EventSink for LocalSink {
    fn publish(&self, event: Event) {
        if self.active() {
            self.inner.publish(event);
        }
    }

    fn gap(&self, since: SystemTime, until: SystemTime) {
        if self.active() {
            self.inner.gap(since, until);
        }
    }

    fn covered(&self, prefixes: &[Prefix]) {
        if !self.active() {
            return;
        }
        self.inner.covered(prefixes);
        let owed = self.owed.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(since) = owed {
            let reason = GapReason::ClusterDegraded;
            let told = self.inner.0.publish_gap(reason, since, SystemTime::now());
            metrics::counter!("fanout_gaps_sent_total", "reason" => reason.as_str())
                .increment(told as u64);
        }
    }

    fn uncovered(&self, prefixes: &[Prefix]) {
        self.inner.uncovered(prefixes);
    }
}

/// Degraded mode's own upstream, and the lease this node held when NATS went (to give up
/// on rejoining, so that nobody waits for it to expire).
struct Local {
    upstream: Arc<Upstream>,
    /// What it has been asked for: this node's own prefixes.
    owned: BTreeSet<Prefix>,
    active: Arc<std::sync::atomic::AtomicBool>,
    stale: Option<Lease>,
}

/// What an owner's upstream carries for the fleet.
struct Carried {
    upstream: Arc<Upstream>,
    /// What it has been asked for (the publisher tells the owner change once all of it is
    /// covered).
    owned: Arc<Mutex<BTreeSet<Prefix>>>,
    /// Prefixes no node needs any more, since when: they go after `interest_linger`.
    dropping: BTreeMap<Prefix, Instant>,
    /// Whether the fleet's interest was found past the connection limit (said once).
    capped: bool,
}

/// One term this node owns.
struct Term {
    lease: Lease,
    /// The stream sequence of the term's beginning, which every record of it expects.
    fence_seq: u64,
    carried: Carried,
    /// Until when the term may publish (self-fencing), kept by the customer's task.
    serve_until: Arc<Mutex<Instant>>,
    /// Cancelled when the term must end at once (fenced by the store, the publisher too
    /// far behind, NATS not answering).
    ended: CancellationToken,
    /// Tells the publisher to drain and end.
    finish: CancellationToken,
    publisher: tokio::task::JoinHandle<u64>,
}

/// `message`, to be stored only while the last message on `customer`'s term subject is
/// still at `fence_seq` (the term's beginning): the store-side fence.
fn fenced(message: PublishMessage, customer: Uuid, fence_seq: u64) -> PublishMessage {
    message.expected_last_subject_sequence(fence_seq).header(
        "Nats-Expected-Last-Subject-Sequence-Subject",
        log::term_subject(customer).as_str(),
    )
}

/// A term's publisher: stamps each item and appends it to the log, pipelined, fenced.
struct Publisher {
    node: Arc<Node>,
    customer: Uuid,
    term: u64,
    epoch: u64,
    fence_seq: u64,
    seq: u64,
    offset: u64,
    covered: BTreeSet<Prefix>,
    /// The loss to tell once the upstream covers what it was asked for: the owner change.
    owed: Option<(GapReason, SystemTime)>,
    /// What the upstream was asked for.
    owned: Arc<Mutex<BTreeSet<Prefix>>>,
    /// Until when the owner change waits for all of it to be covered.
    hold_until: Instant,
    serve_until: Arc<Mutex<Instant>>,
    ended: CancellationToken,
    /// Cancelled when the term ends in order: the queue is drained, then the task ends.
    finish: CancellationToken,
}

impl Publisher {
    fn next_cursor(&mut self) -> Cursor {
        let cursor = Cursor {
            epoch: self.epoch,
            offset: self.offset,
        };
        self.offset += 1;
        cursor
    }

    /// Publishes `record`; the answer's future is sent to `acks`.
    async fn publish(
        &mut self,
        record: Record,
        acks: &mpsc::Sender<jetstream::context::PublishAckFuture>,
    ) -> bool {
        let serving = Instant::now() < *self.serve_until.lock().unwrap_or_else(|e| e.into_inner());
        if !serving {
            metrics::counter!("fanout_cluster_fenced_total", "side" => "self").increment(1);
            tracing::warn!(customer = %self.customer, term = self.term, "Lease not renewed in time: this node stops publishing");
            self.ended.cancel();
            return false;
        }
        let (headers, body) = record.encode(Stamp {
            term: self.term,
            seq: self.seq,
        });
        self.seq += 1;
        let message = fenced(
            PublishMessage::build().headers(headers).payload(body),
            self.customer,
            self.fence_seq,
        );
        match self
            .node
            .js
            .send_publish(record.subject(self.customer), message)
            .await
        {
            Ok(ack) => acks.send(ack).await.is_ok(),
            Err(error) => {
                tracing::warn!(customer = %self.customer, %error, "Cannot publish to the log: the term ends");
                self.ended.cancel();
                false
            }
        }
    }

    /// Appends one item of the upstream's.
    async fn append(
        &mut self,
        item: Item,
        acks: &mpsc::Sender<jetstream::context::PublishAckFuture>,
    ) -> bool {
        match item {
            Item::Event(event) => {
                let cursor = self.next_cursor();
                self.publish(Record::Event { cursor, event }, acks).await
            }
            Item::Gap(since, until) => {
                let cursor = self.next_cursor();
                let record = Record::Gap {
                    cursor,
                    reason: GapReason::UpstreamReconnect,
                    since,
                    until,
                };
                self.publish(record, acks).await
            }
            Item::Covered(prefixes) => {
                self.covered.extend(prefixes);
                let record = Record::Covered(self.covered.iter().cloned().collect());
                self.publish(record, acks).await
            }
            Item::Uncovered(prefixes) => {
                for prefix in &prefixes {
                    self.covered.remove(prefix);
                }
                let record = Record::Covered(self.covered.iter().cloned().collect());
                self.publish(record, acks).await
            }
        }
    }

    /// While the owner change is owed: events and gaps wait (bounded: past it they are
    /// inside the gap), coverage is only counted.
    fn hold(&mut self, item: Item, held: &mut Vec<Item>) {
        match item {
            Item::Covered(prefixes) => self.covered.extend(prefixes),
            Item::Uncovered(prefixes) => {
                for prefix in &prefixes {
                    self.covered.remove(prefix);
                }
            }
            item if held.len() < fanout_upstream::link::MAX_HELD_EVENTS => held.push(item),
            _ => {
                metrics::counter!("fanout_events_dropped_total", "reason" => "inside_gap")
                    .increment(1);
            }
        }
    }

    /// Whether the upstream covers everything it was asked for.
    fn covers_all(&self) -> bool {
        self.owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .all(|p| self.covered.contains(p))
    }

    /// Tells the owner change at the point from which the upstream covers what it was asked
    /// for (a client resuming from the gap's cursor misses nothing): what waited first, then
    /// the coverage, then the gap.
    async fn tell_owed(
        &mut self,
        held: &mut Vec<Item>,
        acks: &mpsc::Sender<jetstream::context::PublishAckFuture>,
    ) -> bool {
        let Some((reason, since)) = self.owed.take() else {
            return true;
        };
        for item in std::mem::take(held) {
            if !self.append(item, acks).await {
                return false;
            }
        }
        let record = Record::Covered(self.covered.iter().cloned().collect());
        if !self.publish(record, acks).await {
            return false;
        }
        let cursor = self.next_cursor();
        let record = Record::Gap {
            cursor,
            reason,
            since,
            until: SystemTime::now(),
        };
        self.publish(record, acks).await
    }

    async fn run(mut self, mut items: mpsc::Receiver<Item>) -> u64 {
        // However the task ends (a panic included), the term ends with it.
        let guard = self.ended.clone().drop_guard();
        let (acks, mut answers) = mpsc::channel::<jetstream::context::PublishAckFuture>(
            self.node.settings.max_in_flight.max(1),
        );
        let ended = self.ended.clone();
        let customer = self.customer;
        let checker = tokio::spawn(async move {
            while let Some(answer) = answers.recv().await {
                match answer.await {
                    Ok(_) => metrics::counter!("fanout_cluster_published_total").increment(1),
                    Err(error) => {
                        let fenced = error.to_string().contains("wrong last sequence");
                        if fenced {
                            metrics::counter!("fanout_cluster_fenced_total", "side" => "store")
                                .increment(1);
                        }
                        tracing::warn!(%customer, %error, fenced, "The log refused a record: the term ends");
                        ended.cancel();
                        return;
                    }
                }
            }
        });
        let mut finishing = false;
        let mut held: Vec<Item> = Vec::new();
        loop {
            if self.owed.is_some() && self.covers_all() && !self.tell_owed(&mut held, &acks).await {
                break;
            }
            let holding = self.owed.is_some();
            let item = tokio::select! {
                () = self.ended.cancelled() => break,
                () = self.finish.cancelled(), if !finishing => {
                    // What is queued is published; nothing more is taken.
                    finishing = true;
                    items.close();
                    continue;
                }
                () = tokio::time::sleep_until(self.hold_until), if holding => {
                    tracing::warn!(%customer, term = self.term, "The new upstream did not cover everything in time: the owner change is told from what it covers");
                    if !self.tell_owed(&mut held, &acks).await {
                        break;
                    }
                    continue;
                }
                item = items.recv() => item,
            };
            let Some(item) = item else { break };
            if holding {
                self.hold(item, &mut held);
            } else if !self.append(item, &acks).await {
                break;
            }
        }
        drop(acks);
        // Every answer is in before the term's end is written after it.
        let _ = checker.await;
        guard.disarm();
        self.seq
    }
}

/// One customer's task on this node.
struct Customer {
    node: Arc<Node>,
    customer: Uuid,
    hub: Arc<Hub>,
    shared: Arc<Shared>,
    waiter: Arc<Waiter>,
}

/// The reader's state: where the log stands for this node.
struct Reader {
    fence: TermFence,
    /// The owner's coverage, as last read.
    covered: Vec<Prefix>,
    /// Records of the current term never arrived: the next event may follow a loss.
    hole: bool,
    /// When the last record was read.
    last_read: SystemTime,
    /// The stream sequence of the last message read.
    last_seq: u64,
    /// Back from degraded mode: the log is read from its newest records on (what came
    /// before was served by this node's own upstream).
    rejoin: bool,
    /// Coverage read while a loss is still to be told: applied where it is told.
    adopt: Option<Vec<Prefix>>,
    /// The log as it stood when first opened has been read in (resumes wait until then).
    caught_up: bool,
    /// Records still to read that were in the log when it was opened: the stream's past,
    /// kept for resumes, not queued to the sessions.
    history: u64,
}

impl Customer {
    async fn run(self) {
        let ttl = self.node.settings.lease_ttl;
        let mut ownership = Ownership::new(ttl, std::time::Instant::now());
        let mut term: Option<Term> = None;
        let mut reader = Reader {
            fence: TermFence::new(),
            covered: Vec::new(),
            hole: false,
            last_read: SystemTime::now(),
            last_seq: 0,
            rejoin: false,
            adopt: None,
            caught_up: false,
            history: 0,
        };
        // Resumes wait for the log at most this long.
        let catch_up_by = Instant::now() + self.node.settings.request_timeout;
        let mut messages = None;
        let mut degraded = self.node.degraded.subscribe();
        let mut local: Option<Local> = None;
        let mut fence_tick = tokio::time::interval(Duration::from_millis(100));
        fence_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut wanted = self.shared.local.subscribe();
        if *degraded.borrow_and_update() {
            local = Some(self.go_local(&mut ownership, &mut term, &mut reader));
        }
        loop {
            if messages.is_none() && local.is_none() {
                messages = self.open_log(&mut reader).await;
                if messages.is_none() {
                    self.shared
                        .status()
                        .broken_since
                        .get_or_insert_with(Instant::now);
                } else {
                    self.shared.status().broken_since = None;
                }
            }
            let due = Instant::from_std(ownership.due());
            let ended = term.as_ref().map(|t| t.ended.clone());
            tokio::select! {
                biased;
                () = self.shared.close.cancelled() => break,
                () = self.waiter.lease.notified() => {
                    ownership.look_now(std::time::Instant::now());
                    // Whoever held it no longer covers the stream.
                    if term.is_none() {
                        self.uncover(&mut reader);
                    }
                }
                () = tokio::time::sleep_until(catch_up_by), if !reader.caught_up => {
                    tracing::warn!(customer = %self.customer, "The log was not read in in time: resumes are judged on what this node has");
                    reader.caught_up = true;
                    self.hub.caught_up();
                }
                changed = degraded.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let now_degraded = *degraded.borrow_and_update();
                    if now_degraded && local.is_none() {
                        messages = None;
                        local = Some(self.go_local(&mut ownership, &mut term, &mut reader));
                    } else if !now_degraded && let Some(left) = local.take() {
                        self.rejoin(left, &mut ownership, &mut reader).await;
                    }
                }
                () = tokio::time::sleep_until(due), if local.is_none() => {
                    self.step(&mut ownership, &mut term).await;
                }
                () = async { ended.expect("guarded").cancelled().await }, if ended.is_some() => {
                    self.end_term(&mut ownership, &mut term, false).await;
                }
                _ = fence_tick.tick(), if term.is_some() => {
                    let serving = term.as_ref().is_some_and(|t| ownership.may_serve(std::time::Instant::now()) == Some(t.lease.term));
                    if !serving {
                        metrics::counter!("fanout_cluster_fenced_total", "side" => "self").increment(1);
                        tracing::warn!(customer = %self.customer, "Lease not renewed in time: closing the upstream");
                        self.end_term(&mut ownership, &mut term, false).await;
                    } else if let Some(t) = term.as_mut().filter(|t| !t.carried.dropping.is_empty()) {
                        self.reconcile(&mut t.carried);
                    }
                }
                () = self.waiter.interest.notified() => {
                    if let Some(t) = term.as_mut() {
                        self.reconcile(&mut t.carried);
                    }
                }
                changed = wanted.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    if let Some(t) = term.as_mut() {
                        self.reconcile(&mut t.carried);
                    }
                    if let Some(local) = local.as_mut() {
                        self.reconcile_local(local);
                    }
                }
                message = async { messages.as_mut().expect("guarded").next().await }, if messages.is_some() && local.is_none() => {
                    match message {
                        Some(Ok(message)) => self.read(&mut reader, &message),
                        Some(Err(error)) => {
                            tracing::debug!(customer = %self.customer, %error, "Reading the log");
                        }
                        None => {
                            messages = None;
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                    }
                }
            }
        }
        if let Some(left) = local {
            left.active
                .store(false, std::sync::atomic::Ordering::Release);
            left.upstream.close();
        }
        self.end_term(&mut ownership, &mut term, true).await;
        // Not this node's interest any more (its writer removes the key).
        // Unless the customer's entry was opened anew meanwhile, with a waiter of its own.
        let mut waiters = self.node.waiters();
        if waiters
            .get(&self.customer)
            .is_some_and(|w| Arc::ptr_eq(w, &self.waiter))
        {
            waiters.remove(&self.customer);
        }
    }

    /// Brings the term's upstream to what the fleet needs now: a prefix some node needs is
    /// added at once; one no node needs goes after `interest_linger` (a session back soon
    /// finds it covered, and interest a NATS lost is written again first).
    fn reconcile(&self, carried: &mut Carried) {
        let (desired, left_out) = self.shared.desired();
        let now = Instant::now();
        let linger = self.node.settings.interest_linger;
        let mut owned = carried.owned.lock().unwrap_or_else(|e| e.into_inner());
        for prefix in &desired {
            carried.dropping.remove(prefix);
            if owned.insert(prefix.clone()) {
                carried.upstream.add(prefix);
            }
        }
        let unneeded: Vec<Prefix> = owned
            .iter()
            .filter(|p| !desired.contains(*p))
            .cloned()
            .collect();
        for prefix in unneeded {
            let since = *carried.dropping.entry(prefix.clone()).or_insert(now);
            if now.saturating_duration_since(since) >= linger {
                carried.dropping.remove(&prefix);
                owned.remove(&prefix);
                carried.upstream.remove(&prefix);
            }
        }
        if !carried.capped && left_out {
            carried.capped = true;
            tracing::warn!(customer = %self.customer, max = self.node.upstream.max_connections, "The fleet's sessions need more connections to VoIPBIN than a customer may have: some of their topics are left out");
        }
    }

    /// Brings degraded mode's own upstream to what this node's sessions need now.
    fn reconcile_local(&self, local: &mut Local) {
        let desired = self.shared.wanted_set();
        for prefix in desired.difference(&local.owned) {
            local.upstream.add(prefix);
        }
        for prefix in local.owned.difference(&desired) {
            local.upstream.remove(prefix);
        }
        local.owned = desired;
    }

    /// Degraded mode: stops owning (NATS cannot be written), and serves this node's
    /// sessions from an upstream of its own, numbered here in an epoch of its own.
    fn go_local(
        &self,
        ownership: &mut Ownership,
        term: &mut Option<Term>,
        reader: &mut Reader,
    ) -> Local {
        let stale = ownership.lease();
        if let Some(t) = term.take() {
            metrics::gauge!("fanout_cluster_leases_held").decrement(1.0);
            t.carried.upstream.close();
            t.ended.cancel();
        }
        let ttl = self.node.settings.lease_ttl;
        *ownership = Ownership::new(ttl, std::time::Instant::now());
        self.uncover(reader);
        self.hub.renumber(Cursor {
            epoch: rand::random(),
            offset: 0,
        });
        if !std::mem::replace(&mut reader.caught_up, true) {
            self.hub.caught_up();
        }
        let active = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let upstream = Arc::new(Upstream::spawn(
            self.customer,
            self.node.upstream.clone(),
            Arc::new(LocalSink {
                inner: HubSink(self.hub.clone()),
                owed: Mutex::new(Some(reader.last_read)),
                active: active.clone(),
            }),
            &self.shared.close,
        ));
        let mut status = self.shared.status();
        status.upstream = Some(upstream.clone());
        status.owner = None;
        status.term = None;
        drop(status);
        tracing::info!(customer = %self.customer, "Degraded: serving the customer from this node's own upstream");
        let mut local = Local {
            upstream,
            owned: BTreeSet::new(),
            active,
            stale,
        };
        self.reconcile_local(&mut local);
        local
    }

    /// Back from degraded mode: closes the node's own upstream and reads the log from its
    /// newest records, telling the sessions the loss in between where the log resumes.
    async fn rejoin(&self, left: Local, ownership: &mut Ownership, reader: &mut Reader) {
        left.active
            .store(false, std::sync::atomic::Ordering::Release);
        left.upstream.close();
        if let Some(lease) = left.stale {
            // Ours from before the outage: given up, so a new term can begin at once.
            let timeout = self.node.settings.request_timeout;
            let _ = tokio::time::timeout(timeout, self.node.leases.release(lease)).await;
        }
        self.shared.status().upstream = None;
        self.hub
            .uncovered(&left.owned.iter().cloned().collect::<Vec<_>>());
        reader.fence = TermFence::new();
        reader.covered.clear();
        reader.hole = true;
        reader.rejoin = true;
        reader.last_read = SystemTime::now();
        reader.last_seq = 0;
        let ttl = self.node.settings.lease_ttl;
        *ownership = Ownership::new(ttl, std::time::Instant::now());
        tracing::info!(customer = %self.customer, "Rejoining the cluster");
    }

    /// Opens the log from the beginning of the current term (or from after the last
    /// message read).
    async fn open_log(&self, reader: &mut Reader) -> Option<consumer::pull::Ordered> {
        let mut rejoin_from = None;
        let deliver_policy = if reader.rejoin {
            // From the first record after this node's own upstream closed: what came
            // before it served, nothing twice.
            match self.node.stream.get_info().await {
                Ok(info) => {
                    let start_sequence = info.state.last_sequence + 1;
                    rejoin_from = Some(start_sequence);
                    consumer::DeliverPolicy::ByStartSequence { start_sequence }
                }
                Err(error) => {
                    tracing::debug!(customer = %self.customer, %error, "Cannot read the log yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return None;
                }
            }
        } else if reader.last_seq > 0 {
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: reader.last_seq + 1,
            }
        } else {
            match self
                .node
                .stream
                .get_last_raw_message_by_subject(&log::term_subject(self.customer))
                .await
            {
                Ok(marker) => consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: marker.sequence,
                },
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                    // No term in course: from now on (a term that begins meanwhile is read
                    // from a later record and told as a loss).
                    match self.node.stream.get_info().await {
                        Ok(info) => consumer::DeliverPolicy::ByStartSequence {
                            start_sequence: info.state.last_sequence + 1,
                        },
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            return None;
                        }
                    }
                }
                Err(error) => {
                    tracing::debug!(customer = %self.customer, %error, "Cannot find the term yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return None;
                }
            }
        };
        let consumer = self
            .node
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: log::customer_filter(self.customer),
                deliver_policy,
                ..Default::default()
            })
            .await;
        match consumer {
            Ok(consumer) => match (
                consumer.cached_info().num_pending,
                consumer.messages().await,
            ) {
                (pending, Ok(messages)) if rejoin_from.is_none() && reader.last_seq == 0 => {
                    reader.history = pending;
                    if pending == 0 && !reader.caught_up {
                        // Nothing to read in: the stream is whole as it stands.
                        reader.caught_up = true;
                        self.hub.caught_up();
                    }
                    Some(messages)
                }
                (0, Ok(messages)) if !reader.caught_up => {
                    // Nothing to read in: the stream is whole as it stands.
                    reader.caught_up = true;
                    self.hub.caught_up();
                    Some(messages)
                }
                (_, Ok(messages)) => {
                    if let Some(start) = rejoin_from {
                        if self.rejoin_at(reader, start).await.is_err() {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            return None;
                        }
                        reader.rejoin = false;
                    }
                    Some(messages)
                }
                (_, Err(error)) => {
                    tracing::debug!(customer = %self.customer, %error, "Cannot read the log yet");
                    None
                }
            },
            Err(error) => {
                tracing::debug!(customer = %self.customer, %error, "Cannot read the log yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
                None
            }
        }
    }

    /// The last record on `subject` before the stream sequence `before`: its sequence,
    /// stamp and record.
    async fn last_before(
        &self,
        subject: &str,
        before: u64,
    ) -> Result<Option<(u64, Stamp, Record)>, ()> {
        let last = tokio::time::timeout(
            self.node.settings.request_timeout,
            self.node.stream.get_last_raw_message_by_subject(subject),
        )
        .await
        .map_err(|_| ())?;
        let last = match last {
            Ok(last) => last,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                return Ok(None);
            }
            Err(_) => return Err(()),
        };
        if last.sequence >= before {
            return Ok(None);
        }
        Ok(
            Record::decode(self.customer, Some(&last.headers), &last.payload)
                .ok()
                .map(|(stamp, record)| (last.sequence, stamp, record)),
        )
    }

    /// Back on the log from stream sequence `start`: takes up the term in course, if one
    /// is (its owner, and where its numbering stands), and tells the sessions the loss
    /// between this node's own upstream and the log there, with the coverage from it.
    async fn rejoin_at(&self, reader: &mut Reader, start: u64) -> Result<(), ()> {
        let customer = self.customer;
        let Some((_, begun, Record::Begin { node, epoch })) = self
            .last_before(&log::term_subject(customer), start)
            .await?
        else {
            // No term in course: the next one's owner tells the change.
            return Ok(());
        };
        {
            let mut status = self.shared.status();
            status.owner = Some(node);
            status.term = Some(begun.term);
        }
        let coverage = match self
            .last_before(&log::coverage_subject(customer), start)
            .await?
        {
            Some((_, stamp, Record::Covered(patterns))) if stamp.term == begun.term => {
                Some((stamp.seq, patterns))
            }
            _ => None,
        };
        let last = self
            .last_before(&log::events_subject(customer), start)
            .await?
            .filter(|(_, stamp, _)| stamp.term == begun.term);
        // The term's last record before `start` (its records are on these three subjects):
        // the next one read follows it, or a loss is seen.
        let newest = [
            Some(begun.seq),
            coverage.as_ref().map(|(seq, _)| *seq),
            last.as_ref().map(|(_, stamp, _)| stamp.seq),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
        reader.fence = TermFence::new();
        reader.fence.admit(begun.term, newest);
        let coverage = coverage.map(|(_, patterns)| patterns);
        let at = match last {
            Some((_, _, Record::Event { cursor, .. } | Record::Gap { cursor, .. })) => cursor,
            _ => {
                // Nothing numbered in this term yet: its first entry is read from here on.
                // Coverage written before it holds from it; nothing the owner had was lost
                // (it would be numbered).
                self.hub.renumber(Cursor { epoch, offset: 0 });
                self.adopt(reader, coverage);
                reader.hole = false;
                return Ok(());
            }
        };
        // The gap takes the place of the last entry this node did not serve; the coverage
        // holds from it, so a client resuming from the gap's cursor misses nothing.
        self.hub.renumber(at);
        self.adopt(reader, coverage);
        reader.hole = false;
        let reason = GapReason::ClusterDegraded;
        let told = self
            .hub
            .publish_gap_at(reason, reader.last_read, SystemTime::now(), Some(at));
        metrics::counter!("fanout_gaps_sent_total", "reason" => reason.as_str())
            .increment(told as u64);
        Ok(())
    }

    /// The owner's coverage `patterns` (if known) holds from the hub's next entry.
    fn adopt(&self, reader: &mut Reader, patterns: Option<Vec<Prefix>>) {
        if let Some(patterns) = patterns {
            self.hub.covered(&patterns);
            reader.covered = patterns;
        }
    }

    fn uncover(&self, reader: &mut Reader) {
        if !reader.covered.is_empty() {
            self.hub.uncovered(&std::mem::take(&mut reader.covered));
        }
    }

    /// One message of the log, into the hub.
    fn read(&self, reader: &mut Reader, message: &jetstream::Message) {
        let (seq, pending) = message
            .info()
            .map_or((0, 0), |info| (info.stream_sequence, info.pending));
        reader.last_seq = seq;
        let whole = !reader.caught_up && pending == 0;
        let live = reader.history == 0;
        reader.history = reader.history.saturating_sub(1);
        let (stamp, record) =
            match Record::decode(self.customer, message.headers.as_ref(), &message.payload) {
                Ok(read) => read,
                Err(error) => {
                    metrics::counter!("fanout_cluster_bad_records_total").increment(1);
                    tracing::warn!(customer = %self.customer, %error, "Skipping a record");
                    return;
                }
            };
        match reader.fence.admit(stamp.term, stamp.seq) {
            Admit::Drop => {
                metrics::counter!("fanout_cluster_fenced_total", "side" => "reader").increment(1);
                return;
            }
            Admit::NewTerm { .. } => {
                self.uncover(reader);
                reader.adopt = None;
                if stamp.seq != 0 {
                    // Not read from its beginning: what came before may be missing here.
                    reader.hole = true;
                }
                self.shared.status().term = Some(stamp.term);
            }
            Admit::Skipped { .. } => {
                // Lost records may have changed the coverage.
                self.uncover(reader);
                reader.hole = true;
                reader.adopt = None;
            }
            Admit::Next => {}
        }
        let now = SystemTime::now();
        match record {
            Record::Begin { epoch, node } => {
                // A term read from its beginning: its owner tells the change itself.
                reader.hole = false;
                reader.adopt = None;
                self.hub.renumber(Cursor { epoch, offset: 0 });
                let mut status = self.shared.status();
                status.owner = Some(node);
                status.term = Some(stamp.term);
            }
            Record::End => {
                self.uncover(reader);
                self.shared.status().owner = None;
            }
            Record::Covered(patterns) if reader.hole => {
                // In force from where the loss is told.
                reader.adopt = Some(patterns);
            }
            Record::Covered(patterns) => {
                let gone: Vec<Prefix> = reader
                    .covered
                    .iter()
                    .filter(|p| !patterns.contains(p))
                    .cloned()
                    .collect();
                self.hub.uncovered(&gone);
                self.hub.covered(&patterns);
                reader.covered = patterns;
            }
            Record::Event { cursor, event } => {
                self.tell_hole(reader, cursor, now, live);
                if live {
                    self.hub.publish_at(event, Some(cursor));
                } else {
                    self.hub.store_at(event, cursor);
                }
            }
            Record::Gap {
                cursor,
                reason,
                since,
                until,
            } => {
                self.tell_hole(reader, cursor, now, live);
                if live {
                    let told = self.hub.publish_gap_at(reason, since, until, Some(cursor));
                    metrics::counter!("fanout_gaps_sent_total", "reason" => reason.as_str())
                        .increment(told as u64);
                } else {
                    self.hub.store_gap_at(reason, since, until, cursor);
                }
            }
        }
        reader.last_read = now;
        if whole {
            reader.caught_up = true;
            self.hub.caught_up();
        }
    }

    /// After records were lost, tells the sessions a gap in the place of the last entry
    /// missing before `cursor` (which this node never had): a client resuming from it misses
    /// nothing after it, one resuming from before it is told.
    fn tell_hole(&self, reader: &mut Reader, cursor: Cursor, now: SystemTime, live: bool) {
        let adopt = reader.adopt.take();
        if !std::mem::take(&mut reader.hole) {
            return;
        }
        if cursor.offset == 0 {
            // The term's first entry: nothing of it was missed, and its owner tells the
            // change; coverage written before it holds from it.
            self.hub.renumber(cursor);
            self.adopt(reader, adopt);
            return;
        }
        let next = self.hub.next_cursor();
        if next.epoch == cursor.epoch && next.offset >= cursor.offset {
            return;
        }
        let at = Cursor {
            epoch: cursor.epoch,
            offset: cursor.offset - 1,
        };
        self.hub.renumber(at);
        // The owner's coverage, in force since before the gap: a client resuming from the
        // gap's cursor misses nothing.
        self.adopt(reader, adopt);
        let reason = GapReason::ClusterDegraded;
        if !live {
            self.hub.store_gap_at(reason, reader.last_read, now, at);
            return;
        }
        let told = self
            .hub
            .publish_gap_at(reason, reader.last_read, now, Some(at));
        metrics::counter!("fanout_gaps_sent_total", "reason" => reason.as_str())
            .increment(told as u64);
    }

    /// Does what the lease's state machine asks.
    async fn step(&self, ownership: &mut Ownership, term: &mut Option<Term>) {
        let timeout = self.node.settings.request_timeout;
        match ownership.poll(std::time::Instant::now()) {
            Next::Wait => {}
            Next::Acquire => {
                let taken = tokio::time::timeout(timeout, self.node.leases.acquire(self.customer))
                    .await
                    .map_err(|_| ())
                    .and_then(|r| r.map_err(|_| ()));
                match taken {
                    Ok(lease) => {
                        ownership.acquired(lease, std::time::Instant::now());
                        if let Some(lease) = lease {
                            *term = self.begin_term(lease, ownership).await;
                            if term.is_none() {
                                self.give_up(ownership).await;
                            }
                        }
                    }
                    Err(()) => ownership.acquired(None, std::time::Instant::now()),
                }
            }
            Next::Renew(lease) => {
                let renewed = tokio::time::timeout(timeout, self.node.leases.renew(lease))
                    .await
                    .map_err(|_| ())
                    .and_then(|r| r.map_err(|_| ()));
                ownership.renewed(renewed, std::time::Instant::now());
                match ownership.serve_until() {
                    Some(until) => {
                        if let Some(t) = term.as_ref() {
                            *t.serve_until.lock().unwrap_or_else(|e| e.into_inner()) =
                                Instant::from_std(until);
                        }
                    }
                    None => {
                        if term.is_some() {
                            metrics::counter!("fanout_cluster_fenced_total", "side" => "lease")
                                .increment(1);
                            tracing::warn!(customer = %self.customer, "The lease was taken over: closing the upstream");
                            self.end_term(ownership, term, false).await;
                        }
                    }
                }
            }
        }
    }

    /// Starts owning: writes the term's beginning, opens the upstream.
    async fn begin_term(&self, lease: Lease, ownership: &Ownership) -> Option<Term> {
        let timeout = self.node.settings.request_timeout;
        let customer = self.customer;
        // What the last term left: a handoff, or an owner that stopped.
        let previous = match tokio::time::timeout(
            timeout,
            self.node
                .stream
                .get_last_raw_message_by_subject(&log::term_subject(customer)),
        )
        .await
        {
            Ok(Ok(marker)) => Some((
                marker.sequence,
                match Record::decode(customer, Some(&marker.headers), &marker.payload) {
                    Ok((_, Record::End)) => GapReason::OwnerHandoff,
                    _ => GapReason::OwnerFailover,
                },
            )),
            Ok(Err(e)) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => None,
            _ => return None,
        };
        // The beginning is stored only after that marker: two nodes that both believe they
        // hold the lease (one of them paused past it) cannot both begin.
        let after = previous.map_or(0, |(seq, _)| seq);
        let previous = previous.map(|(_, reason)| reason);
        let since = match tokio::time::timeout(
            timeout,
            self.node
                .stream
                .get_last_raw_message_by_subject(&log::events_subject(customer)),
        )
        .await
        {
            Ok(Ok(last)) => SystemTime::from(last.time),
            _ => SystemTime::now(),
        };
        let epoch: u64 = rand::random();
        let begin = Record::Begin {
            epoch,
            node: self.node.settings.node_id.clone(),
        };
        let (headers, body) = begin.encode(Stamp {
            term: lease.term,
            seq: 0,
        });
        let published = tokio::time::timeout(timeout, async {
            self.node
                .js
                .send_publish(
                    begin.subject(customer),
                    PublishMessage::build()
                        .headers(headers)
                        .payload(body)
                        .expected_last_subject_sequence(after),
                )
                .await?
                .await
                .map_err(async_nats::Error::from)
        })
        .await;
        let fence_seq = match published {
            Ok(Ok(ack)) => ack.sequence,
            Ok(Err(error)) => {
                tracing::warn!(%customer, %error, "Cannot begin the term");
                return None;
            }
            Err(_) => {
                tracing::warn!(%customer, "Cannot begin the term: NATS did not answer");
                return None;
            }
        };
        if ownership.may_serve(std::time::Instant::now()) != Some(lease.term) {
            // The requests took too long: the lease may already be another node's.
            tracing::warn!(%customer, "The lease ran out while the term began");
            return None;
        }
        let serve_until = Arc::new(Mutex::new(Instant::from_std(
            ownership
                .serve_until()
                .unwrap_or_else(std::time::Instant::now),
        )));
        // Not the feed's own token's child: a handoff ends the term in order, not at once.
        let ended = CancellationToken::new();
        let finish = CancellationToken::new();
        let (items, receiver) = mpsc::channel(self.node.settings.max_backlog.max(1));
        let upstream = Arc::new(Upstream::spawn(
            customer,
            self.node.upstream.clone(),
            Arc::new(OwnerSink {
                items,
                overflow: ended.clone(),
                finish: finish.clone(),
            }),
            &ended,
        ));
        let config = &self.node.upstream;
        let mut carried = Carried {
            upstream: upstream.clone(),
            owned: Arc::new(Mutex::new(BTreeSet::new())),
            dropping: BTreeMap::new(),
            capped: false,
        };
        // What the fleet needs now; more as it comes.
        self.reconcile(&mut carried);
        let publisher = Publisher {
            node: self.node.clone(),
            customer,
            term: lease.term,
            epoch,
            fence_seq,
            seq: 1,
            offset: 0,
            covered: BTreeSet::new(),
            owed: previous.map(|reason| (reason, since)),
            owned: carried.owned.clone(),
            // A new connection has this long to open and answer its first barrier.
            hold_until: Instant::now() + config.connect_timeout + config.pong_timeout,
            serve_until: serve_until.clone(),
            ended: ended.clone(),
            finish: finish.clone(),
        };
        let publisher = tokio::spawn(publisher.run(receiver));
        metrics::gauge!("fanout_cluster_leases_held").increment(1.0);
        if previous.is_some() {
            metrics::counter!("fanout_cluster_takeovers_total").increment(1);
        }
        {
            let mut status = self.shared.status();
            status.upstream = Some(upstream.clone());
        }
        tracing::info!(%customer, term = lease.term, takeover = ?previous, "Owning the customer's upstream");
        Some(Term {
            lease,
            fence_seq,
            carried,
            serve_until,
            ended,
            finish,
            publisher,
        })
    }

    /// Stops owning: closes the upstream, lets the publisher finish; on a handoff
    /// (`handoff`: the registry closed the feed) writes the term's end; releases the lease.
    async fn end_term(&self, ownership: &mut Ownership, term: &mut Option<Term>, handoff: bool) {
        let Some(t) = term.take() else {
            if handoff {
                ownership.release();
            }
            return;
        };
        metrics::gauge!("fanout_cluster_leases_held").decrement(1.0);
        self.shared.status().upstream = None;
        t.carried.upstream.close();
        t.finish.cancel();
        let timeout = self.node.settings.request_timeout;
        let seq = tokio::time::timeout(timeout, t.publisher)
            .await
            .ok()
            .and_then(Result::ok);
        let orderly = handoff && !t.ended.is_cancelled();
        if orderly && let Some(seq) = seq {
            let (headers, body) = Record::End.encode(Stamp {
                term: t.lease.term,
                seq,
            });
            let message = fenced(
                PublishMessage::build().headers(headers).payload(body),
                self.customer,
                t.fence_seq,
            );
            let written = tokio::time::timeout(timeout, async {
                self.node
                    .js
                    .send_publish(log::term_subject(self.customer), message)
                    .await?
                    .await
                    .map_err(async_nats::Error::from)
            })
            .await;
            if !matches!(written, Ok(Ok(_))) {
                tracing::warn!(customer = %self.customer, "Cannot write the term's end");
            }
        }
        tracing::info!(customer = %self.customer, term = t.lease.term, handoff, "No longer owning the customer's upstream");
        if handoff {
            if let Some(lease) = ownership.release() {
                let _ = tokio::time::timeout(timeout, self.node.leases.release(lease)).await;
            }
        } else {
            self.give_up(ownership).await;
        }
    }

    /// Gives a lease up that this node cannot serve, and seeks it anew after a while.
    async fn give_up(&self, ownership: &mut Ownership) {
        let timeout = self.node.settings.request_timeout;
        if let Some(lease) = ownership.release() {
            let _ = tokio::time::timeout(timeout, self.node.leases.release(lease)).await;
        }
        let ttl = self.node.settings.lease_ttl;
        *ownership = Ownership::new(ttl, std::time::Instant::now() + ttl / 3);
    }
}
