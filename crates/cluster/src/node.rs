//! Cluster mode's [`Feeds`]: one node of the fleet, and the tasks it runs once for all its
//! customers.
//!
//! - **Membership**: the node's lease in NATS key-value ([`Membership`]), taken at start and
//!   renewed every third of the TTL; its revision is the node term. Past 0.7 TTL without a
//!   renewal, the node publishes nothing (self-fencing), and its term ends.
//! - **Publisher**: every customer this node owns writes through one task, which stamps each
//!   customer's items ([`OwnedTerm`]) into one batch ([`crate::wire`]) and appends it to the
//!   node's own subject of the log, `fanout.o.<node>`. One batch is in flight at a time,
//!   expecting the subject's last sequence (so nothing else was written there meanwhile, and
//!   R3 streams take it); what arrives meanwhile goes in the next batch, which grows with
//!   the load. A retry carries the same message id, so a lost answer never stores twice.
//! - **Reader**: one ordered consumer over the whole log, from where it stood when the node
//!   joined; each batch is checked ([`crate::wire::open`], [`Owners`]) and its records go to
//!   the customers this node hosts, in the log's order.
//! - **Watches**: the node leases and ownership records ([`Roster`]) and the fleet's
//!   interest ([`Fleet`]), waking the customers they concern.
//! - **Degraded mode**: NATS unreachable for `degraded_after` makes every customer serve its
//!   sessions from an upstream of its own; when it is back, the reader starts again from the
//!   log's end and the node joins with a new term.
//!
//! The per-customer work is in [`crate::customer`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use fanout_core::{Feed, Feeds};
use fanout_protocol::prefix::Prefix;
use fanout_protocol::server::GapReason;
use fanout_session::Hub;
use fanout_upstream::UpstreamConfig;
use futures_util::StreamExt as _;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::bucket;
use crate::bus::{self, BusSettings};
use crate::customer::{self, Customer};
use crate::interest::{Fleet, Interests};
use crate::log::{Record, Stamp};
use crate::membership::{self, Membership, Roster};
use crate::owner::{Item, OwnedTerm};
use crate::reader::Owners;
use crate::wire::{self, BatchWriter, FleetKey, Opened};
use crate::{Lease, Next, Ownership, server_supported};

/// Cluster mode's settings.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This node's name in the fleet.
    pub node_id: String,
    /// How long a node's lease lasts unless renewed.
    pub lease_ttl: Duration,
    /// The key-value bucket of the node leases.
    pub lease_bucket: String,
    /// The key-value bucket of the customers' ownership records.
    pub owner_bucket: String,
    /// The key-value bucket of the nodes' interest in each customer.
    pub interest_bucket: String,
    /// How long an owner keeps a prefix subscribed after no node needs it any more.
    pub interest_linger: Duration,
    /// The JetStream stream of the log.
    pub stream: String,
    /// The log keeps at most this many bytes in all.
    pub max_bytes: i64,
    /// And nothing older than this.
    pub max_age: Duration,
    /// How far back a node that opens a customer mid-term reads its history (the resume
    /// window's age, and a margin).
    pub catch_up: Duration,
    /// A batch goes out once it holds this many bytes (and as soon as none is in flight).
    pub batch_max_bytes: usize,
    /// How many items an owner's upstreams may hand over before they are published; past
    /// it, the customer's term ends (its successor tells the gap).
    pub max_backlog: usize,
    /// How long a NATS request may take.
    pub request_timeout: Duration,
    /// How long NATS may be unreachable before the node serves its own sessions from
    /// upstreams of its own (degraded mode).
    pub degraded_after: Duration,
    /// Replicas of the log's stream and the buckets this node makes.
    pub replicas: usize,
    /// The key the fleet's records are authenticated with.
    pub fleet_key: FleetKey,
}

impl ClusterSettings {
    /// The defaults for `node_id`, with `fleet_key`.
    pub fn new(node_id: impl Into<String>, fleet_key: FleetKey) -> Self {
        ClusterSettings {
            node_id: node_id.into(),
            lease_ttl: Duration::from_secs(15),
            lease_bucket: "fanout_nodes".into(),
            owner_bucket: "fanout_owners".into(),
            interest_bucket: "fanout_interest".into(),
            interest_linger: Duration::from_secs(30),
            stream: "FANOUT_EVENTS".into(),
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(600),
            catch_up: Duration::from_secs(150),
            batch_max_bytes: 256 * 1024,
            max_backlog: 16_384,
            request_timeout: Duration::from_secs(5),
            degraded_after: Duration::from_secs(5),
            replicas: 1,
            fleet_key,
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
        "nats-server {found} is too old for cluster mode: it needs 2.11 or later (expiry markers for leases, and per-subject expected sequences)"
    )]
    TooOld {
        /// The version it reported.
        found: String,
    },
    /// JetStream refused the buckets or the stream.
    #[error("JetStream: {0}")]
    JetStream(String),
}

/// How long the log's reader may hear nothing before it asks whether the log grew.
const STALL_CHECK: Duration = Duration::from_secs(5);

/// The log's subjects, as this node makes the stream.
pub const STREAM_SUBJECTS: &str = "fanout.o.*";

/// The log subject of `node`'s batches.
pub fn subject_of(node: &str) -> String {
    format!("fanout.o.{}", membership::token(node))
}

/// The node a log subject is of.
fn node_of(subject: &str) -> Option<String> {
    membership::from_token(subject.strip_prefix("fanout.o.")?)
}

/// Where a node asks `node` to state a customer's coverage again (core NATS, not the log).
fn restate_subject(node: &str) -> String {
    format!("fanout_ctl.restate.{}", membership::token(node))
}

/// What a customer's task is handed by the reader.
pub(crate) enum Delivery {
    /// Records of the customer, in the log's order.
    Records(Vec<(Stamp, Record)>),
}

/// A customer this node hosts, as the node's tasks reach it.
pub(crate) struct Hosted {
    pub(crate) deliveries: mpsc::Sender<Delivery>,
    /// Deliveries were dropped (its task could not keep up).
    pub(crate) lost: AtomicBool,
    /// The node is back on the log after degraded mode: what comes next follows a loss
    /// (set before any record read from there is handed over).
    pub(crate) rejoin: AtomicBool,
    /// Its ownership record, a node lease or the fleet's interest in it changed.
    pub(crate) wake: Notify,
}

/// What the customers' tasks ask of the publisher.
pub(crate) enum Op {
    /// This node took `customer` in the customer term `term`.
    Begin {
        customer: Uuid,
        term: u64,
        node_term: u64,
        epoch: u64,
        owed: Option<(GapReason, SystemTime)>,
        hold_until: std::time::Instant,
    },
    /// Its upstream is asked for `wanted` now.
    Want {
        customer: Uuid,
        term: u64,
        wanted: BTreeSet<Prefix>,
    },
    /// An item of its upstream's.
    Item {
        customer: Uuid,
        term: u64,
        item: Item,
    },
    /// Its term ends in order: `done` once the end is in the log (or cannot be).
    End {
        customer: Uuid,
        term: u64,
        done: oneshot::Sender<bool>,
    },
    /// Its term ends at once: nothing more of it is written.
    Drop { customer: Uuid, term: u64 },
}

/// This node's term, while it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NodeTerm {
    pub(crate) term: u64,
}

pub(crate) struct Node {
    pub(crate) settings: ClusterSettings,
    pub(crate) upstream: Arc<UpstreamConfig>,
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) stream: stream::Stream,
    pub(crate) membership: Membership,
    pub(crate) interests: Interests,
    pub(crate) roster: Mutex<Roster>,
    pub(crate) fleet: Mutex<Fleet>,
    /// The customers hosted here, and the stream sequence up to which the reader handed
    /// records over: both under this lock, so that a customer opened sees everything after
    /// the position it read.
    pub(crate) hosted: Mutex<(HashMap<Uuid, Arc<Hosted>>, u64)>,
    /// Node terms known fenced (no batch of them is stored any more).
    pub(crate) fenced: tokio::sync::Mutex<HashMap<String, u64>>,
    /// This node's term, `None` between terms.
    pub(crate) term: tokio::sync::watch::Sender<Option<NodeTerm>>,
    /// Until when this node may publish in its term (self-fencing).
    pub(crate) serve_until: Mutex<Instant>,
    pub(crate) ops: mpsc::Sender<Op>,
    /// Other nodes' requests to state a customer's coverage again.
    restates: mpsc::Sender<Uuid>,
    /// Stops the publisher once every customer's task has finished (and handed over).
    stop_publishing: CancellationToken,
    publisher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub(crate) tasks: TaskTracker,
    pub(crate) cancel: CancellationToken,
    /// Whether NATS has been unreachable for longer than `degraded_after`.
    pub(crate) degraded: tokio::sync::watch::Sender<bool>,
    /// The log's stream, to create again if NATS lost it.
    pub(crate) stream_config: stream::Config,
    pub(crate) subject: String,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Node {
    pub(crate) fn roster(&self) -> MutexGuard<'_, Roster> {
        locked(&self.roster)
    }

    pub(crate) fn fleet(&self) -> MutexGuard<'_, Fleet> {
        locked(&self.fleet)
    }

    pub(crate) fn hosted(&self) -> MutexGuard<'_, (HashMap<Uuid, Arc<Hosted>>, u64)> {
        locked(&self.hosted)
    }

    fn wake(&self, customer: Uuid) {
        if let Some(hosted) = self.hosted().0.get(&customer) {
            hosted.wake.notify_one();
        }
    }

    fn wake_all(&self) {
        for hosted in self.hosted().0.values() {
            hosted.wake.notify_one();
        }
    }

    /// Whether this node may publish now, in its term.
    pub(crate) fn serving(&self) -> Option<u64> {
        let term = (*self.term.borrow())?;
        (Instant::now() < *locked(&self.serve_until)).then_some(term.term)
    }

    /// Makes sure no batch of `node`'s term `term` is stored any more: a fence on its
    /// subject, after whatever is last there (written once, by whoever needs it first).
    pub(crate) async fn fence(&self, node: &str, term: u64) -> bool {
        let mut fenced = self.fenced.lock().await;
        if fenced.get(node).is_some_and(|t| *t >= term) {
            return true;
        }
        let subject = subject_of(node);
        let timeout = self.settings.request_timeout;
        for _ in 0..5 {
            let last = tokio::time::timeout(
                timeout,
                self.stream.get_last_raw_message_by_subject(&subject),
            )
            .await;
            let expected = match last {
                Ok(Ok(message)) => {
                    match wire::open(&self.settings.fleet_key, &subject, &message.payload) {
                        Ok(Opened::Fence { term: t, .. }) if t >= term => {
                            fenced.insert(node.to_owned(), t);
                            return true;
                        }
                        // A later term of the node wrote since: nothing of `term` can be
                        // stored after it.
                        Ok(Opened::Batch { term: t, .. }) if t > term => {
                            fenced.insert(node.to_owned(), term);
                            return true;
                        }
                        _ => message.sequence,
                    }
                }
                Ok(Err(e)) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => 0,
                _ => return false,
            };
            let body = wire::fence(
                &self.settings.fleet_key,
                &subject,
                term,
                &self.settings.node_id,
            );
            let written = tokio::time::timeout(timeout, async {
                self.js
                    .send_publish(
                        subject.clone(),
                        PublishMessage::build()
                            .payload(body)
                            .expected_last_subject_sequence(expected),
                    )
                    .await?
                    .await
                    .map_err(async_nats::Error::from)
            })
            .await;
            match written {
                Ok(Ok(_)) => {
                    tracing::info!(node_id = %self.settings.node_id, %node, term, "Fenced a node term that ended");
                    fenced.insert(node.to_owned(), term);
                    return true;
                }
                // Something was written meanwhile: look again.
                Ok(Err(e)) if e.to_string().contains("wrong last sequence") => {}
                _ => return false,
            }
        }
        false
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
    /// Joins the cluster on `bus`: checks the server's version, opens the buckets and the
    /// log's stream (adopting or making them), takes the node's lease and starts reading the
    /// log. Customers' upstreams connect as `upstream` says. Runs until `cancel`.
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
        let js_error = |e: String| ClusterError::JetStream(e);
        let membership = Membership::open(
            client.clone(),
            &settings.lease_bucket,
            &settings.owner_bucket,
            settings.lease_ttl,
            &settings.node_id,
            settings.replicas,
        )
        .await
        .map_err(|e| js_error(e.to_string()))?;
        let interests = Interests::open(
            client.clone(),
            &settings.interest_bucket,
            &settings.node_id,
            settings.replicas,
        )
        .await
        .map_err(|e| js_error(e.to_string()))?;
        let js = jetstream::new(client.clone());
        let stream_config = stream::Config {
            name: settings.stream.clone(),
            subjects: vec![STREAM_SUBJECTS.into()],
            max_bytes: settings.max_bytes,
            max_age: settings.max_age,
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            allow_direct: true,
            num_replicas: settings.replicas,
            // A retry of a batch whose answer was lost is found here, not stored twice.
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        let stream = bucket::open_stream(&js, &stream_config)
            .await
            .map_err(js_error)?;
        let (ops, receiver) = mpsc::channel(settings.max_backlog.max(64));
        let (restates, restate_requests) = mpsc::channel(1024);
        let subject = subject_of(&settings.node_id);
        let node = Arc::new(Node {
            settings,
            upstream,
            client,
            js,
            stream,
            membership,
            interests,
            roster: Mutex::new(Roster::default()),
            fleet: Mutex::new(Fleet::default()),
            hosted: Mutex::new((HashMap::new(), 0)),
            fenced: tokio::sync::Mutex::new(HashMap::new()),
            term: tokio::sync::watch::Sender::new(None),
            serve_until: Mutex::new(Instant::now()),
            ops,
            restates,
            stop_publishing: CancellationToken::new(),
            publisher: Mutex::new(None),
            tasks: TaskTracker::new(),
            cancel,
            degraded: tokio::sync::watch::Sender::new(false),
            stream_config,
            subject,
        });
        metrics::gauge!("fanout_cluster_degraded").set(0.0);
        metrics::gauge!("fanout_cluster_leases_held").set(0.0);
        let start = node
            .stream
            .clone()
            .info()
            .await
            .map_err(|e| js_error(e.to_string()))?
            .state
            .last_sequence;
        node.hosted().1 = start;
        tokio::spawn(watch_connection(node.clone()));
        tokio::spawn(watch_roster(node.clone()));
        tokio::spawn(watch_interest(node.clone()));
        tokio::spawn(measure_round_trip(node.clone()));
        tokio::spawn(keep_membership(node.clone()));
        tokio::spawn(read_log(node.clone(), start + 1));
        tokio::spawn(answer_restates(node.clone()));
        let publisher = tokio::spawn(publish(
            node.clone(),
            receiver,
            restate_requests,
            node.stop_publishing.clone(),
        ));
        *locked(&node.publisher) = Some(publisher);
        tracing::info!(url = %bus::masked(&bus.url), server = %version, node_id = %node.settings.node_id, "Joined the cluster");
        Ok(ClusterFeeds { node })
    }
}

impl Feeds for ClusterFeeds {
    fn open(&self, customer: Uuid, hub: Arc<Hub>, cancel: &CancellationToken) -> Arc<dyn Feed> {
        // A resume on this node waits until the customer's history is read in.
        hub.catching_up();
        let (deliveries, receiver) = mpsc::channel(1024);
        let hosted = Arc::new(Hosted {
            deliveries,
            lost: AtomicBool::new(false),
            rejoin: AtomicBool::new(false),
            wake: Notify::new(),
        });
        let position = {
            let mut hosted_map = self.node.hosted();
            hosted_map.0.insert(customer, hosted.clone());
            hosted_map.1
        };
        let shared = Arc::new(customer::Shared::new(customer, self.node.clone(), cancel));
        let task = Customer::new(
            self.node.clone(),
            customer,
            hub,
            shared.clone(),
            hosted,
            receiver,
            position,
        );
        self.node.tasks.spawn(task.run());
        self.node.tasks.spawn(customer::publish_interest(
            self.node.clone(),
            shared.clone(),
        ));
        Arc::new(customer::ClusterFeed(shared))
    }

    fn closed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let tasks = self.node.tasks.clone();
        let node = self.node.clone();
        Box::pin(async move {
            tasks.close();
            // Every customer's task handed over (its term's end went through the
            // publisher), then the publisher sends what is left and stops.
            tasks.wait().await;
            node.stop_publishing.cancel();
            let publisher = locked(&node.publisher).take();
            if let Some(publisher) = publisher {
                let _ = tokio::time::timeout(node.settings.request_timeout, publisher).await;
            }
        })
    }
}

/// Keeps this node's lease: joins (waiting out an earlier incarnation's lease), renews every
/// third of the TTL, ends the term when a renewal is refused or late, and joins again.
async fn keep_membership(node: Arc<Node>) {
    let ttl = node.settings.lease_ttl;
    let timeout = node.settings.request_timeout;
    let mut degraded = node.degraded.subscribe();
    'terms: loop {
        // Join.
        let joined = loop {
            if node.cancel.is_cancelled() {
                return;
            }
            if *degraded.borrow_and_update() {
                tokio::select! {
                    () = node.cancel.cancelled() => return,
                    _ = degraded.changed() => continue,
                }
            }
            // The lease counts from when the request went, not from its answer.
            let sent = std::time::Instant::now();
            match tokio::time::timeout(timeout, node.membership.join()).await {
                Ok(Ok(Some(term))) => break (term, sent),
                Ok(Ok(None)) => {
                    tracing::info!(node_id = %node.settings.node_id, "An earlier lease of this node id lives: waiting for it to end");
                }
                failed => tracing::debug!(?failed, "Cannot take this node's lease yet"),
            }
            tokio::select! {
                () = node.cancel.cancelled() => return,
                () = tokio::time::sleep(ttl / 5) => {}
            }
        };
        let (joined, sent) = joined;
        let mut ownership = Ownership::new(ttl, sent);
        let lease = Lease {
            term: joined,
            revision: joined,
        };
        let _ = ownership.poll(sent);
        ownership.acquired(Some(lease), std::time::Instant::now());
        *locked(&node.serve_until) = Instant::from_std(ownership.serve_until().unwrap_or(sent));
        node.term.send_replace(Some(NodeTerm { term: joined }));
        tracing::info!(node_id = %node.settings.node_id, term = joined, "This node's term begins");
        // Renew.
        loop {
            let due = Instant::from_std(ownership.due());
            let serve_until = *locked(&node.serve_until);
            tokio::select! {
                () = node.cancel.cancelled() => {
                    if let Some(lease) = ownership.release() {
                        let _ = tokio::time::timeout(timeout, node.membership.leave(lease.revision)).await;
                    }
                    node.term.send_replace(None);
                    return;
                }
                changed = degraded.changed() => {
                    if changed.is_ok() && *degraded.borrow_and_update() {
                        tracing::warn!(node_id = %node.settings.node_id, term = joined, "NATS unreachable: this node's term ends");
                        node.term.send_replace(None);
                        // Back: the old lease is given up (it may still live), a new term begins.
                        while *degraded.borrow_and_update() {
                            tokio::select! {
                                () = node.cancel.cancelled() => return,
                                _ = degraded.changed() => {}
                            }
                        }
                        if let Some(lease) = ownership.release() {
                            let _ = tokio::time::timeout(timeout, node.membership.leave(lease.revision)).await;
                        }
                        continue 'terms;
                    }
                }
                () = tokio::time::sleep_until(serve_until) => {
                    metrics::counter!("fanout_cluster_fenced_total", "side" => "self").increment(1);
                    tracing::warn!(node_id = %node.settings.node_id, term = joined, "This node's lease was not renewed in time: its term ends");
                    node.term.send_replace(None);
                    ownership.release();
                    continue 'terms;
                }
                () = tokio::time::sleep_until(due) => {
                    if let Next::Renew(lease) = ownership.poll(std::time::Instant::now()) {
                        // Never past the end of serving: the term ends there, not later.
                        let bound = timeout.min(serve_until.saturating_duration_since(Instant::now()));
                        let renewed = tokio::time::timeout(bound, node.membership.renew(joined, lease.revision))
                            .await
                            .map_err(|_| ())
                            .and_then(|r| r.map_err(|_| ()))
                            .map(|r| r.map(|revision| Lease { revision, ..lease }));
                        ownership.renewed(renewed, std::time::Instant::now());
                        match ownership.serve_until() {
                            Some(until) => *locked(&node.serve_until) = Instant::from_std(until),
                            None => {
                                metrics::counter!("fanout_cluster_fenced_total", "side" => "lease").increment(1);
                                tracing::warn!(node_id = %node.settings.node_id, term = joined, "This node's lease is gone: its term ends");
                                node.term.send_replace(None);
                                continue 'terms;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Keeps a view of the fleet up to date from the watch `open` starts: `started` runs each
/// time one starts (what was known may be stale), `apply` on every change. Paused while
/// NATS is away (what it holds when it is back may be all new), and started again after
/// outages and errors.
async fn keep_watching<S, E, Open, Opening>(
    node: &Node,
    what: &'static str,
    mut open: Open,
    mut started: impl FnMut(),
    mut apply: impl FnMut(S::Item),
) where
    S: futures_util::Stream,
    E: std::fmt::Display,
    Open: FnMut() -> Opening,
    Opening: Future<Output = Result<S, E>>,
{
    let mut degraded = node.degraded.subscribe();
    loop {
        while *degraded.borrow_and_update() {
            tokio::select! {
                () = node.cancel.cancelled() => return,
                _ = degraded.changed() => {}
            }
        }
        match open().await {
            Ok(changes) => {
                started();
                let mut changes = std::pin::pin!(changes);
                loop {
                    tokio::select! {
                        () = node.cancel.cancelled() => return,
                        _ = degraded.changed() => break,
                        change = changes.next() => match change {
                            Some(change) => apply(change),
                            None => break,
                        }
                    }
                }
            }
            Err(error) => tracing::debug!(%error, what, "Cannot watch yet"),
        }
        tokio::select! {
            () = node.cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Keeps the node's [`Roster`] (node leases and ownership records), waking the customers a
/// change concerns.
async fn watch_roster(node: Arc<Node>) {
    let open = || async {
        let nodes = node.membership.node_changes().await?;
        let owners = node.membership.owner_changes().await?;
        Ok::<_, membership::MembershipError>(futures_util::stream::select(nodes, owners))
    };
    let started = || {
        node.roster().clear();
        node.wake_all();
    };
    let live = |node: &Node| -> std::collections::BTreeSet<String> {
        node.roster().live().map(str::to_owned).collect()
    };
    let apply = |change: membership::Change| {
        let before = live(&node);
        // Not in the match: the roster's lock must be let go first.
        let concerns = node.roster().apply(change);
        match concerns {
            Some(customer) => node.wake(customer),
            // A renewal changes nothing; a node that came or went concerns every customer.
            None if live(&node) != before => node.wake_all(),
            None => {}
        }
    };
    keep_watching(&node, "membership", open, started, apply).await;
}

/// Keeps the node's view of the fleet's interest ([`Fleet`]) and wakes the customers whose
/// interest changed.
async fn watch_interest(node: Arc<Node>) {
    let started = || {
        let known = node.fleet().clear();
        for customer in known {
            node.wake(customer);
        }
    };
    let apply = |change: crate::interest::Change| {
        let customer = change.customer;
        if node.fleet().apply(change) {
            node.wake(customer);
        }
    };
    keep_watching(
        &node,
        "interest",
        || node.interests.changes(),
        started,
        apply,
    )
    .await;
}

/// Answers other nodes' requests to state a customer's coverage again.
async fn answer_restates(node: Arc<Node>) {
    let subject = restate_subject(&node.settings.node_id);
    loop {
        match node.client.subscribe(subject.clone()).await {
            Ok(mut requests) => loop {
                tokio::select! {
                    () = node.cancel.cancelled() => return,
                    request = requests.next() => match request {
                        Some(request) => {
                            let Ok(customer) = std::str::from_utf8(&request.payload).map(Uuid::try_parse) else {
                                continue;
                            };
                            if let Ok(customer) = customer {
                                let _ = node.restates.try_send(customer);
                            }
                        }
                        None => break,
                    }
                }
            },
            Err(error) => tracing::debug!(%error, "Cannot take restate requests yet"),
        }
        tokio::select! {
            () = node.cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

impl Node {
    /// Asks `owner` to state `customer`'s coverage again.
    pub(crate) async fn ask_restate(&self, owner: &str, customer: Uuid) {
        let _ = self
            .client
            .publish(
                restate_subject(owner),
                Bytes::from(customer.simple().to_string()),
            )
            .await;
    }
}

/// Reads the whole log from stream sequence `from` with one ordered consumer and hands each
/// record to the customer it is of, if this node hosts it; from the log's end again after
/// degraded mode (however briefly the node was degraded, and whatever the reader was doing
/// meanwhile).
async fn read_log(node: Arc<Node>, mut from: u64) {
    let key = node.settings.fleet_key.clone();
    let mut owners = Owners::default();
    let mut degraded = node.degraded.subscribe();
    // Whether the node was degraded since the reader last started: it starts again from
    // the log's end then, and every customer is told that what comes next follows a loss.
    let mut was_degraded = false;
    loop {
        while *degraded.borrow_and_update() {
            was_degraded = true;
            tokio::select! {
                () = node.cancel.cancelled() => return,
                _ = degraded.changed() => {}
            }
        }
        if was_degraded {
            match tokio::time::timeout(node.settings.request_timeout, node.stream.get_info()).await
            {
                Ok(Ok(info)) => from = info.state.last_sequence + 1,
                _ => {
                    tokio::select! {
                        () = node.cancel.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    continue;
                }
            }
            was_degraded = false;
            owners.clear();
            let mut hosted = node.hosted();
            hosted.1 = from - 1;
            for customer in hosted.0.values() {
                customer.rejoin.store(true, Ordering::Release);
                customer.wake.notify_one();
            }
            drop(hosted);
            tracing::info!(node_id = %node.settings.node_id, "Back on the log after degraded mode");
        }
        let consumer = node
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: STREAM_SUBJECTS.into(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from.max(1),
                },
                ..Default::default()
            })
            .await;
        let messages = match consumer {
            Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(error) => {
                tracing::debug!(%error, "Cannot read the log yet");
                tokio::select! {
                    () = node.cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
        };
        // A reader that went quiet while the log grew is read again from where it stood
        // (a server it was placed on went away, and the client did not notice).
        let mut watchdog = tokio::time::interval(STALL_CHECK);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        watchdog.reset();
        let mut heard_at = Instant::now();
        loop {
            tokio::select! {
                () = node.cancel.cancelled() => return,
                _ = watchdog.tick() => {
                    if heard_at.elapsed() < STALL_CHECK {
                        continue;
                    }
                    let last = tokio::time::timeout(node.settings.request_timeout, node.stream.get_info()).await;
                    if let Ok(Ok(info)) = last
                        && info.state.last_sequence >= from
                    {
                        tracing::warn!(node_id = %node.settings.node_id, from, last = info.state.last_sequence, "The log's reader stalled: reading again");
                        break;
                    }
                }
                changed = degraded.changed() => {
                    if changed.is_ok() && *degraded.borrow() {
                        break;
                    }
                }
                message = messages.next() => match message {
                    Some(Ok(message)) => {
                        heard_at = Instant::now();
                        let seq = message.info().map_or(from, |i| i.stream_sequence);
                        from = seq + 1;
                        take_message(&node, &key, &mut owners, &message.subject, &message.payload, seq);
                    }
                    Some(Err(error)) => {
                        tracing::warn!(node_id = %node.settings.node_id, %error, "Reading the log");
                    }
                    None => {
                        tracing::warn!(node_id = %node.settings.node_id, from, "The log's reader ended: reading again");
                        break;
                    }
                }
            }
        }
    }
}

/// One message of the log: checked, and its records handed to the customers hosted here,
/// under one lock with the reader's position (a customer opened meanwhile reads its history
/// up to exactly where its live records begin).
fn take_message(
    node: &Node,
    key: &FleetKey,
    owners: &mut Owners,
    subject: &str,
    payload: &Bytes,
    seq: u64,
) {
    let bad = |what: &str| {
        metrics::counter!("fanout_cluster_bad_records_total").increment(1);
        tracing::debug!(%subject, seq, what, "Dropped a message of the log");
    };
    let mut by_customer: Vec<(Uuid, Vec<(Stamp, Record)>)> = Vec::new();
    let admitted = match node_of(subject) {
        None => {
            bad("not a node's subject");
            false
        }
        Some(owner) => match wire::open(key, subject, payload) {
            Ok(Opened::Batch {
                term,
                seq: batch,
                records,
            }) => {
                if owners.admit(&owner, term, batch) {
                    for record in records {
                        match record {
                            Ok((customer, stamp, record)) => {
                                match by_customer.iter_mut().find(|(c, _)| *c == customer) {
                                    Some((_, records)) => records.push((stamp, record)),
                                    None => by_customer.push((customer, vec![(stamp, record)])),
                                }
                            }
                            Err(error) => {
                                metrics::counter!("fanout_cluster_bad_records_total").increment(1);
                                tracing::warn!(%subject, seq, %error, "Dropped a record of the log");
                            }
                        }
                    }
                    true
                } else {
                    metrics::counter!("fanout_cluster_fenced_total", "side" => "reader")
                        .increment(1);
                    false
                }
            }
            Ok(Opened::Fence { term, .. }) => {
                owners.fence(&owner, term);
                // Only a cache: skipped while a fence is being written.
                if let Ok(mut fenced) = node.fenced.try_lock() {
                    let known = fenced.entry(owner).or_insert(0);
                    *known = (*known).max(term);
                }
                false
            }
            Err(error) => {
                bad(error.0);
                false
            }
        },
    };
    let mut hosted = node.hosted();
    if admitted {
        for (customer, records) in by_customer {
            if let Some(entry) = hosted.0.get(&customer)
                && entry
                    .deliveries
                    .try_send(Delivery::Records(records))
                    .is_err()
            {
                entry.lost.store(true, Ordering::Release);
                entry.wake.notify_one();
            }
        }
    }
    hosted.1 = seq;
}

/// The batch being filled, numbered when it opens.
struct Open {
    node_term: Option<u64>,
    next_seq: u64,
    batch: Option<(BatchWriter, Vec<oneshot::Sender<bool>>)>,
    /// The most bytes a batch may have (under the server's largest message).
    limit: usize,
    /// The largest event data a message of the server can carry.
    max_data: usize,
    /// Batches sealed early, to go before the open one.
    sealed: Vec<Sealed>,
}

impl Open {
    /// Appends what `out` holds for `customer` (opening a batch, and sealing the open one
    /// first when a record would take it past its limit).
    fn push(&mut self, node: &Node, customer: Uuid, out: &mut Vec<(Stamp, Record)>) {
        let Some(term) = self.node_term else {
            out.clear();
            return;
        };
        for (stamp, record) in out.drain(..) {
            let size = record_size(&record);
            if self
                .batch
                .as_ref()
                .is_some_and(|(b, _)| b.records() > 0 && b.bytes() + size > self.limit)
                && let Some(sealed) = self.seal(node)
            {
                self.sealed.push(sealed);
            }
            let seq = &mut self.next_seq;
            let (batch, _) = self.batch.get_or_insert_with(|| {
                let batch = BatchWriter::new(term, *seq);
                *seq += 1;
                (batch, Vec::new())
            });
            batch.push(customer, stamp, &record);
        }
    }

    fn records(&self) -> usize {
        self.batch.as_ref().map_or(0, |(b, _)| b.records() as usize)
    }

    /// Whether the open batch is full.
    fn full(&self, max_bytes: usize) -> bool {
        self.batch
            .as_ref()
            .is_some_and(|(b, _)| b.bytes() >= max_bytes || !b.has_room())
    }

    /// The open batch, sealed.
    fn seal(&mut self, node: &Node) -> Option<Sealed> {
        let term = self.node_term?;
        let (batch, waiters) = self.batch.take()?;
        let seq = batch.seq();
        let records = batch.records();
        let body = batch.seal(&node.settings.fleet_key, &node.subject);
        Some(Sealed {
            term,
            seq,
            body,
            records,
            waiters,
        })
    }

    /// Starts again in `node_term`: what was open is not written.
    fn reset(&mut self, node_term: Option<u64>) {
        if let Some((_, waiters)) = self.batch.take() {
            for w in waiters {
                let _ = w.send(false);
            }
        }
        for sealed in self.sealed.drain(..) {
            for w in sealed.waiters {
                let _ = w.send(false);
            }
        }
        self.node_term = node_term;
        self.next_seq = 0;
    }
}

/// About how many bytes `record` takes in a batch.
fn record_size(record: &Record) -> usize {
    match record {
        Record::Event { event, .. } => {
            96 + event.data.len()
                + event.event_type.len()
                + event.timestamp.len()
                + event
                    .topics
                    .iter()
                    .map(|t| t.as_str().len() + 2)
                    .sum::<usize>()
        }
        Record::Covered(prefixes, _) => {
            64 + prefixes.iter().map(|p| p.as_str().len() + 2).sum::<usize>()
        }
        _ => 320,
    }
}

/// A batch sealed and waiting for its turn.
struct Sealed {
    term: u64,
    seq: u64,
    body: Bytes,
    records: u32,
    /// Told whether it was stored.
    waiters: Vec<oneshot::Sender<bool>>,
}

/// A publish on its way.
type Sending = Pin<Box<dyn Future<Output = Sent> + Send>>;

/// How a publish ended.
enum Sent {
    Stored(u64),
    /// The subject's last sequence was not the one expected.
    Moved,
    /// No answer, or another error: try again.
    Failed(String),
}

/// The publisher: stamps what every owned customer's upstream hands over into batches and
/// appends them to this node's subject, one at a time.
async fn publish(
    node: Arc<Node>,
    mut ops: mpsc::Receiver<Op>,
    mut restates: mpsc::Receiver<Uuid>,
    stop: CancellationToken,
) {
    let mut terms: HashMap<Uuid, OwnedTerm> = HashMap::new();
    let mut out: Vec<(Stamp, Record)> = Vec::new();
    // A batch stays under the server's largest message, with room for the headers.
    let max_payload = node.client.server_info().max_payload;
    let limit = node
        .settings
        .batch_max_bytes
        .min(max_payload.saturating_sub(4096))
        .max(1024);
    let mut open = Open {
        node_term: None,
        next_seq: 0,
        batch: None,
        limit,
        max_data: max_payload.saturating_sub(4096),
        sealed: Vec::new(),
    };
    let mut last_restate: HashMap<Uuid, Instant> = HashMap::new();
    let mut ready: VecDeque<Sealed> = VecDeque::new();
    let mut in_flight: Option<(Sealed, Sending)> = None;
    let mut expected: Option<u64> = None;
    let mut terms_watch = node.term.subscribe();
    // Records waiting in sealed batches and the open one: past the backlog, no op is taken
    // (the upstreams wait).
    let backlog_cap = node.settings.max_backlog.max(64);
    let mut closed = false;
    loop {
        let now_term = terms_watch.borrow_and_update().map(|t| t.term);
        if now_term != open.node_term {
            // A new node term (or none): whatever was owned under the old one is over.
            for _ in terms.drain() {
                metrics::gauge!("fanout_cluster_leases_held").decrement(1.0);
            }
            open.reset(now_term);
            for sealed in ready.drain(..) {
                for w in sealed.waiters {
                    let _ = w.send(false);
                }
            }
            expected = None;
        }
        // Send the next batch when none is in flight.
        if in_flight.is_none() {
            if ready.is_empty()
                && let Some(sealed) = open.seal(&node)
            {
                ready.push_back(sealed);
            }
            if let Some(sealed) = ready.pop_front() {
                if node.serving() != Some(sealed.term) {
                    for s in std::iter::once(sealed).chain(ready.drain(..)) {
                        for w in s.waiters {
                            let _ = w.send(false);
                        }
                    }
                } else {
                    if expected.is_none() {
                        expected = last_on_subject(&node).await;
                    }
                    match expected {
                        Some(after) => {
                            let future = send_batch(&node, &sealed, after);
                            in_flight = Some((sealed, Box::pin(future)));
                        }
                        None => {
                            ready.push_front(sealed);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
        }
        if closed && in_flight.is_none() && ready.is_empty() && open.records() == 0 {
            return;
        }
        let queued: usize =
            ready.iter().map(|s| s.records as usize).sum::<usize>() + open.records();
        let due = terms
            .values()
            .filter_map(OwnedTerm::due)
            .min()
            .map(Instant::from_std);
        tokio::select! {
            biased;
            sent = async { in_flight.as_mut().expect("guarded").1.as_mut().await }, if in_flight.is_some() => {
                let (sealed, _) = in_flight.take().expect("in flight");
                match sent {
                    Sent::Stored(seq) => {
                        expected = Some(seq);
                        metrics::counter!("fanout_cluster_published_total").increment(u64::from(sealed.records));
                        metrics::counter!("fanout_cluster_batches_total").increment(1);
                        for w in sealed.waiters {
                            let _ = w.send(true);
                        }
                    }
                    Sent::Moved => {
                        // Something else was written on this node's subject: a fence of this
                        // term (it is over), or junk, or a purge (write after it).
                        match fenced_here(&node, sealed.term).await {
                            Some(true) => {
                                metrics::counter!("fanout_cluster_fenced_total", "side" => "store").increment(1);
                                tracing::warn!(node_id = %node.settings.node_id, term = sealed.term, "This node's term was fenced: it ends");
                                if node.term.borrow().is_some_and(|t| t.term == sealed.term) {
                                    node.term.send_replace(None);
                                }
                                for w in sealed.waiters {
                                    let _ = w.send(false);
                                }
                            }
                            Some(false) => {
                                expected = None;
                                ready.push_front(sealed);
                            }
                            None => {
                                ready.push_front(sealed);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                    Sent::Failed(error) => {
                        tracing::debug!(%error, "A batch was not stored: trying again");
                        ready.push_front(sealed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            changed = terms_watch.changed() => {
                if changed.is_err() {
                    closed = true;
                }
            }
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                let now = std::time::Instant::now();
                for (customer, term) in &mut terms {
                    term.poll(now, &mut out);
                    open.push(&node, *customer, &mut out);
                }
                ready.extend(open.sealed.drain(..));
            }
            op = ops.recv(), if !closed && queued < backlog_cap => {
                let Some(op) = op else {
                    closed = true;
                    continue;
                };
                take_op(&node, op, &mut terms, &mut open, &mut out);
                // Whatever else is queued now joins the same batch.
                while !open.full(limit) {
                    match ops.try_recv() {
                        Ok(op) => take_op(&node, op, &mut terms, &mut open, &mut out),
                        Err(_) => break,
                    }
                }
                ready.extend(open.sealed.drain(..));
                if open.full(limit)
                    && let Some(sealed) = open.seal(&node)
                {
                    ready.push_back(sealed);
                }
            }
            customer = restates.recv() => {
                // At most once a second per customer: anyone on the bus can ask.
                let Some(customer) = customer else { continue };
                if last_restate.len() > 65_536 {
                    last_restate.clear();
                }
                let due = last_restate.get(&customer).is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
                if due && let Some(owned) = terms.get_mut(&customer) {
                    last_restate.insert(customer, Instant::now());
                    owned.restate(&mut out);
                    open.push(&node, customer, &mut out);
                    ready.extend(open.sealed.drain(..));
                }
            }
            () = stop.cancelled(), if !closed => {
                closed = true;
            }
        }
    }
}

fn take_op(
    node: &Node,
    op: Op,
    terms: &mut HashMap<Uuid, OwnedTerm>,
    open: &mut Open,
    out: &mut Vec<(Stamp, Record)>,
) {
    match op {
        Op::Begin {
            customer,
            term,
            node_term: in_term,
            epoch,
            owed,
            hold_until,
        } => {
            if open.node_term != Some(in_term) {
                return;
            }
            let owned =
                OwnedTerm::begin(term, epoch, &node.settings.node_id, owed, hold_until, out);
            if terms.insert(customer, owned).is_none() {
                metrics::gauge!("fanout_cluster_leases_held").increment(1.0);
            }
            open.push(node, customer, out);
        }
        Op::Item {
            customer,
            term,
            item,
        } => {
            if let Some(owned) = terms.get_mut(&customer).filter(|t| t.term() == term) {
                // An event too large for any message of the server is a loss, told.
                let item = match item {
                    Item::Event(event) if event.data.len() > open.max_data => {
                        metrics::counter!("fanout_events_dropped_total", "reason" => "too_large_for_the_log")
                            .increment(1);
                        let now = SystemTime::now();
                        Item::Gap(now, now)
                    }
                    item => item,
                };
                owned.take(item, std::time::Instant::now(), out);
                open.push(node, customer, out);
            }
        }
        Op::Want {
            customer,
            term,
            wanted,
        } => {
            if let Some(owned) = terms.get_mut(&customer).filter(|t| t.term() == term) {
                owned.want(wanted, std::time::Instant::now(), out);
                open.push(node, customer, out);
            }
        }
        Op::End {
            customer,
            term,
            done,
        } => match terms.remove(&customer) {
            Some(owned) if owned.term() == term => {
                metrics::gauge!("fanout_cluster_leases_held").decrement(1.0);
                let dropped = owned.dropped();
                if dropped > 0 {
                    metrics::counter!("fanout_events_dropped_total", "reason" => "inside_gap")
                        .increment(dropped);
                }
                owned.end(out);
                open.push(node, customer, out);
                match &mut open.batch {
                    Some((_, waiters)) => waiters.push(done),
                    None => {
                        let _ = done.send(false);
                    }
                }
            }
            Some(other) => {
                terms.insert(customer, other);
                let _ = done.send(false);
            }
            None => {
                let _ = done.send(false);
            }
        },
        Op::Drop { customer, term } => {
            if terms.get(&customer).is_some_and(|t| t.term() == term) {
                terms.remove(&customer);
                metrics::gauge!("fanout_cluster_leases_held").decrement(1.0);
            }
        }
    }
}

/// The sequence of the last message on this node's subject (0: none), if NATS answers.
async fn last_on_subject(node: &Node) -> Option<u64> {
    let last = tokio::time::timeout(
        node.settings.request_timeout,
        node.stream.get_last_raw_message_by_subject(&node.subject),
    )
    .await
    .ok()?;
    match last {
        Ok(message) => Some(message.sequence),
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Some(0),
        Err(_) => None,
    }
}

/// Whether this node's term `term` was fenced (the last message on its subject is a fence
/// of it, or of a later term); `None` if NATS does not answer.
async fn fenced_here(node: &Node, term: u64) -> Option<bool> {
    let last = tokio::time::timeout(
        node.settings.request_timeout,
        node.stream.get_last_raw_message_by_subject(&node.subject),
    )
    .await
    .ok()?;
    match last {
        Ok(message) => Some(
            match wire::open(&node.settings.fleet_key, &node.subject, &message.payload) {
                Ok(Opened::Fence { term: t, .. }) => t >= term,
                Ok(Opened::Batch { term: t, .. }) => t > term,
                Err(_) => false,
            },
        ),
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Some(false),
        Err(_) => None,
    }
}

/// Appends `sealed` after the message `after` on this node's subject.
fn send_batch(
    node: &Node,
    sealed: &Sealed,
    after: u64,
) -> impl Future<Output = Sent> + Send + 'static {
    let js = node.js.clone();
    let subject = node.subject.clone();
    let id = format!(
        "{}-{}-{}",
        membership::token(&node.settings.node_id),
        sealed.term,
        sealed.seq
    );
    let body = sealed.body.clone();
    let timeout = node.settings.request_timeout;
    async move {
        let message = PublishMessage::build()
            .payload(body)
            .message_id(id)
            .expected_last_subject_sequence(after);
        let sent = tokio::time::timeout(timeout, async {
            js.send_publish(subject, message)
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        match sent {
            Ok(Ok(ack)) => Sent::Stored(ack.sequence),
            Ok(Err(error)) if error.contains("wrong last sequence") => Sent::Moved,
            Ok(Err(error)) => Sent::Failed(error),
            Err(_) => Sent::Failed("no answer".into()),
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
    // start again from the new buckets' revisions).
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
                    tokio::time::timeout(node.settings.request_timeout, node.stream.get_info())
                        .await;
                match probe {
                    Ok(Ok(info)) => {
                        store_down_since = None;
                        // Made again (by this node or another): what was there is gone.
                        let made = Some(info.created);
                        if created.is_some() && created != made {
                            tracing::warn!(node_id = %node.settings.node_id, "NATS lost the cluster's state: the log was made again");
                            lost_until = Some(Instant::now() + hold);
                            // Node terms start again from the new bucket's revisions.
                            node.fenced.lock().await.clear();
                        }
                        created = made;
                    }
                    Ok(Err(error)) if error.to_string().contains("stream not found") => {
                        tracing::warn!(node_id = %node.settings.node_id,
                            "NATS lost the cluster's state: creating the log and the buckets again"
                        );
                        lost_until = Some(Instant::now() + hold);
                        node.fenced.lock().await.clear();
                        let made = bucket::open_stream(&node.js, &node.stream_config).await;
                        let membership = node.membership.reopen().await;
                        let interests = node.interests.reopen().await;
                        if made.is_err() || membership.is_err() || interests.is_err() {
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
        // JetStream not answering while the connection is up is mostly a replicated
        // stream electing a leader (a server of the cluster went): it gets longer.
        let store_after = after + node.settings.request_timeout * 2;
        let degraded = down_since.is_some_and(|since| since.elapsed() >= after)
            || store_down_since.is_some_and(|since| since.elapsed() >= store_after)
            || lost_until.is_some_and(|until| Instant::now() < until);
        let changed = node.degraded.send_if_modified(|now| {
            let changed = *now != degraded;
            *now = degraded;
            changed
        });
        if changed {
            metrics::gauge!("fanout_cluster_degraded").set(if degraded { 1.0 } else { 0.0 });
            if degraded {
                tracing::warn!(node_id = %node.settings.node_id,
                    "NATS unreachable: serving this node's sessions from its own upstreams"
                );
            } else {
                tracing::info!(node_id = %node.settings.node_id, "NATS reachable again: rejoining the cluster");
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
