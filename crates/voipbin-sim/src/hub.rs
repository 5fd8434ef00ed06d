//! The simulator's state: open connections by customer, publishing, and test controls.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use fanout_auth::accesskey::{Cache, StaticKeys};
use fanout_auth::{Authenticator, Identity, jwt};
use fanout_protocol::prefix::Label;
use fanout_protocol::server::EnvelopeHead;
use fanout_protocol::upstream::{self, Context};
use fanout_protocol::ws::{self, OpCode};
use fanout_protocol::{Scope, Topic};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{Shape, SimConfig};
use crate::subscription::Subscription;

/// One event to publish, as `POST /_sim/events` takes it.
#[derive(Debug, Deserialize)]
pub(crate) struct EventSpec {
    pub(crate) event_type: String,
    pub(crate) data: Box<RawValue>,
}

/// Why an event could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The body is not an event or a list of events.
    #[error("body must be {{\"event_type\",\"data\"}} or a list of them: {0}")]
    Body(String),
    /// `data.customer_id` is missing or not a uuid.
    #[error("event {0}: data.customer_id must be a uuid")]
    Customer(usize),
    /// No topic can be built for the event.
    #[error("event {0}: {1}")]
    Topic(usize, upstream::DecodeError),
}

/// One open WebSocket connection.
pub(crate) struct Conn {
    pub(crate) id: u64,
    pub(crate) identity: Identity,
    pub(crate) subscriptions: Mutex<Vec<Subscription>>,
    pub(crate) tx: mpsc::Sender<Bytes>,
    pub(crate) cancel: CancellationToken,
    pub(crate) stalled_until: Mutex<Option<tokio::time::Instant>>,
    /// Where it is filed in the registry.
    filed: Mutex<Filed>,
}

/// Where a connection is filed.
#[derive(Default)]
struct Filed {
    /// Under the customers it serves ([`Conn::serves`]).
    customers: Vec<Uuid>,
    /// Under the owners its subscriptions are limited to.
    owners: Vec<(Scope, Uuid)>,
    /// Among the connections with a subscription limited to no owner.
    unlimited: bool,
}

impl Conn {
    /// The customers whose stream this connection carries: the owners of its `customer_id:`
    /// subscriptions, or, while it holds none, its credential's customer. A gateway holding
    /// one service token for every customer thus shows each customer's upstream under that
    /// customer, as an access key would.
    fn serves(&self) -> Vec<Uuid> {
        let mut customers: Vec<Uuid> = self
            .subscriptions()
            .iter()
            .filter_map(Subscription::owner)
            .filter(|(scope, _)| *scope == Scope::Customer)
            .map(|(_, owner)| owner)
            .collect();
        customers.sort();
        customers.dedup();
        if customers.is_empty() {
            customers.push(self.identity.customer_id);
        }
        customers
    }

    pub(crate) fn subscriptions(&self) -> MutexGuard<'_, Vec<Subscription>> {
        lock(&self.subscriptions)
    }

    pub(crate) fn stalled_until(&self) -> Option<tokio::time::Instant> {
        *lock(&self.stalled_until)
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The open connections, indexed twice: by the customers they serve (for the control
/// endpoints and the stats), and by the owners their subscriptions name (for publishing,
/// whose cost so grows with the connections subscribed to an event's owners only, never
/// with all the connections held).
#[derive(Default)]
struct Registry {
    by_customer: HashMap<Uuid, Vec<Arc<Conn>>>,
    by_owner: HashMap<(Scope, Uuid), Vec<Arc<Conn>>>,
    /// Connections with a subscription limited to no owner (a super-admin may subscribe to
    /// `customer_id` on VoIPBIN, which every customer topic starts with).
    unlimited: Vec<Arc<Conn>>,
}

fn file_under<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Vec<Arc<Conn>>>,
    key: K,
    conn: &Arc<Conn>,
) {
    map.entry(key).or_default().push(conn.clone());
}

fn unfile_from<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<Arc<Conn>>>, key: &K, id: u64) {
    if let Some(list) = map.get_mut(key) {
        list.retain(|c| c.id != id);
        if list.is_empty() {
            map.remove(key);
        }
    }
}

impl Registry {
    fn file(&mut self, conn: &Arc<Conn>) {
        let customers = conn.serves();
        let (mut owners, mut unlimited) = (Vec::new(), false);
        for subscription in conn.subscriptions().iter() {
            match subscription.owner() {
                Some(owner) if !owners.contains(&owner) => owners.push(owner),
                Some(_) => {}
                None => unlimited = true,
            }
        }
        for customer in &customers {
            file_under(&mut self.by_customer, *customer, conn);
        }
        for owner in &owners {
            file_under(&mut self.by_owner, *owner, conn);
        }
        if unlimited {
            self.unlimited.push(conn.clone());
        }
        *lock(&conn.filed) = Filed {
            customers,
            owners,
            unlimited,
        };
    }

    fn unfile(&mut self, conn: &Conn) {
        let filed = std::mem::take(&mut *lock(&conn.filed));
        for customer in &filed.customers {
            unfile_from(&mut self.by_customer, customer, conn.id);
        }
        for owner in &filed.owners {
            unfile_from(&mut self.by_owner, owner, conn.id);
        }
        if filed.unlimited {
            self.unlimited.retain(|c| c.id != conn.id);
        }
    }

    /// The connections whose subscriptions may match one of `topics`, each once.
    fn candidates(&self, topics: &[Topic]) -> Vec<Arc<Conn>> {
        let mut owners: Vec<(Scope, Uuid)> = Vec::with_capacity(2);
        for topic in topics {
            let owner = (topic.scope(), topic.owner());
            if !owners.contains(&owner) {
                owners.push(owner);
            }
        }
        let mut conns: Vec<Arc<Conn>> = owners
            .iter()
            .filter_map(|owner| self.by_owner.get(owner))
            .flatten()
            .chain(&self.unlimited)
            .cloned()
            .collect();
        if owners.len() > 1 || !self.unlimited.is_empty() {
            conns.sort_by_key(|c| c.id);
            conns.dedup_by_key(|c| c.id);
        }
        conns
    }
}

/// A running simulator.
pub struct Simulator {
    pub(crate) config: SimConfig,
    pub(crate) auth: Authenticator,
    pub(crate) keys: Arc<StaticKeys>,
    registry: Mutex<Registry>,
    next_id: AtomicU64,
    published: AtomicU64,
    frames_sent: AtomicU64,
    frames_dropped: AtomicU64,
    subscriptions_checked: AtomicU64,
    connections_total: AtomicU64,
    pub(crate) lookups: AtomicU64,
    pub(crate) lookups_in_flight: AtomicU64,
    pub(crate) lookups_max_in_flight: AtomicU64,
    pub(crate) tcp_connections_total: AtomicU64,
    pub(crate) cancel: CancellationToken,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// Per-customer figures in [`Stats`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct CustomerStats {
    /// Open connections of the customer.
    pub connections: usize,
    /// Every subscription of those connections, sorted (one entry per connection holding it).
    pub subscriptions: Vec<String>,
}

/// What `GET /_sim/stats` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Stats {
    /// Open connections in all.
    pub connections: usize,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Events published since start.
    pub published: u64,
    /// Frames queued to connections since start.
    pub frames_sent: u64,
    /// Frames dropped because a connection's queue was full.
    pub frames_dropped: u64,
    /// Subscriptions looked at to publish events since start: what publishing cost.
    pub subscriptions_checked: u64,
    /// `GET /v1.0/customer` requests (access-key lookups) since start.
    pub lookups: u64,
    /// The most of them in flight at once.
    pub lookups_max_in_flight: u64,
    /// TCP connections accepted since start, WebSocket and plain HTTP alike.
    pub tcp_connections_total: u64,
    /// Per customer with at least one open connection.
    pub customers: BTreeMap<String, CustomerStats>,
}

impl Simulator {
    /// Binds `addr`, starts serving and, when configured, the random event stream. Stops when
    /// `cancel` is cancelled.
    ///
    /// # Errors
    /// When the address cannot be bound or the JWT secret is empty.
    pub async fn start(
        config: SimConfig,
        addr: SocketAddr,
        cancel: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let verifier = jwt::Verifier::new(config.jwt_secret.as_bytes())?;
        let keys = Arc::new(StaticKeys::new(config.access_keys.clone()));
        let auth = Authenticator::new(
            verifier,
            keys.clone(),
            Cache::new(Duration::from_secs(60), Duration::from_secs(5), 10_000),
        );
        let sim = Arc::new(Simulator {
            config,
            auth,
            keys,
            registry: Mutex::new(Registry::default()),
            next_id: AtomicU64::new(1),
            published: AtomicU64::new(0),
            frames_sent: AtomicU64::new(0),
            frames_dropped: AtomicU64::new(0),
            subscriptions_checked: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
            lookups_in_flight: AtomicU64::new(0),
            lookups_max_in_flight: AtomicU64::new(0),
            tcp_connections_total: AtomicU64::new(0),
            cancel,
            local_addr,
        });
        tokio::spawn(crate::http::serve(listener, sim.clone()));
        if sim.config.event_rate > 0 {
            tokio::spawn(crate::generator::run(sim.clone()));
        }
        Ok(sim)
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The WebSocket URL of its endpoint (`wss://localhost:…` with TLS).
    pub fn ws_url(&self) -> String {
        if self.config.tls.is_some() {
            // The test certificates are made out to localhost.
            format!("wss://localhost:{}/v1.0/ws", self.local_addr.port())
        } else {
            format!("ws://{}/v1.0/ws", self.local_addr)
        }
    }

    /// The settings it runs with.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    pub(crate) fn register(&self, identity: Identity, tx: mpsc::Sender<Bytes>) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            identity,
            subscriptions: Mutex::new(Vec::new()),
            tx,
            cancel: self.cancel.child_token(),
            stalled_until: Mutex::new(None),
            filed: Mutex::new(Filed::default()),
        });
        lock(&self.registry).file(&conn);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        conn
    }

    pub(crate) fn unregister(&self, conn: &Conn) {
        lock(&self.registry).unfile(conn);
    }

    /// Files `conn` anew under the customers it serves, after its subscriptions changed.
    pub(crate) fn refile(&self, conn: &Arc<Conn>) {
        let mut registry = lock(&self.registry);
        registry.unfile(conn);
        registry.file(conn);
    }

    /// The connections that serve `customer` (see [`Conn::serves`]).
    fn serving(&self, customer: Uuid) -> Vec<Arc<Conn>> {
        lock(&self.registry)
            .by_customer
            .get(&customer)
            .cloned()
            .unwrap_or_default()
    }

    /// Customers with at least one open connection.
    pub fn connected_customers(&self) -> Vec<Uuid> {
        lock(&self.registry).by_customer.keys().copied().collect()
    }

    /// Agent ids of a customer's connected agents.
    pub(crate) fn connected_agents(&self, customer: Uuid) -> Vec<Uuid> {
        let registry = lock(&self.registry);
        registry
            .by_customer
            .get(&customer)
            .map(|conns| conns.iter().filter_map(|c| c.identity.agent_id()).collect())
            .unwrap_or_default()
    }

    /// Publishes a JSON body of one event or a list of them; answers how many frames went out.
    ///
    /// # Errors
    /// [`PublishError`] for a malformed body or event; nothing is published then.
    pub fn publish_json(&self, body: &[u8]) -> Result<usize, PublishError> {
        let specs: Vec<EventSpec> = match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'[') => serde_json::from_slice(body),
            _ => serde_json::from_slice(body).map(|one| vec![one]),
        }
        .map_err(|e| PublishError::Body(e.to_string()))?;
        self.publish(&specs)
    }

    pub(crate) fn publish(&self, specs: &[EventSpec]) -> Result<usize, PublishError> {
        let now = SystemTime::now();
        let mut events = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            events.push(self.route(i, spec, now)?);
        }
        let mut sent = 0;
        for event in &events {
            sent += self.deliver(event);
        }
        self.published
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(sent)
    }

    /// Finds an event's topics the way VoIPBIN does: from its type, `data.id`, the customer
    /// and an agent owner (the same derivation the gateway reads webhook frames with).
    fn route(
        &self,
        index: usize,
        spec: &EventSpec,
        now: SystemTime,
    ) -> Result<upstream::Event, PublishError> {
        #[derive(Deserialize)]
        struct Customer {
            customer_id: Option<Uuid>,
        }
        let customer = serde_json::from_str::<Customer>(spec.data.get())
            .ok()
            .and_then(|c| c.customer_id)
            .filter(|c| !c.is_nil())
            .ok_or(PublishError::Customer(index))?;
        let webhook = serde_json::json!({"type": spec.event_type, "data": spec.data});
        let frame = Bytes::from(webhook.to_string());
        let cx = Context {
            customer_id: customer,
            received_at: now,
            label: &Label::none(),
        };
        upstream::decode(&frame, &cx).map_err(|e| PublishError::Topic(index, e))
    }

    /// Queues `event` to every connection that subscribed to it: once per published topic
    /// that one of its subscriptions matches, with [`crate::Quirks::double_delivery`] (as
    /// VoIPBIN does), else once under the first such topic. Answers the frames queued.
    pub fn deliver(&self, event: &upstream::Event) -> usize {
        let head = EnvelopeHead::new(&event.event_type, &event.timestamp);
        let fixed = match self.config.shape {
            Shape::Envelope => None,
            Shape::Webhook => {
                let mut text = Vec::with_capacity(event.data.len() + 64);
                text.extend_from_slice(b"{\"type\":");
                text.extend_from_slice(
                    serde_json::to_string(&event.event_type)
                        .unwrap_or_default()
                        .as_bytes(),
                );
                text.extend_from_slice(b",\"data\":");
                text.extend_from_slice(&event.data);
                text.push(b'}');
                Some(ws::encode(OpCode::Text, &text))
            }
            Shape::Bare => Some(ws::encode(OpCode::Text, &event.data)),
        };
        let mut per_topic: Vec<Option<Bytes>> = vec![None; event.topics.len()];
        let mut frame_for = |i: usize| -> Bytes {
            if let Some(fixed) = &fixed {
                return fixed.clone();
            }
            per_topic[i]
                .get_or_insert_with(|| head.frame(&event.topics[i], &event.data))
                .clone()
        };
        let candidates = lock(&self.registry).candidates(&event.topics);
        let mut sent = 0;
        let mut checked = 0;
        let mut frames = Vec::with_capacity(event.topics.len());
        for conn in candidates {
            frames.clear();
            {
                let subscriptions = conn.subscriptions();
                checked += subscriptions.len();
                let matched = |topic: &Topic| subscriptions.iter().any(|s| s.matches(topic));
                if self.config.quirks.double_delivery {
                    frames.extend((0..event.topics.len()).filter(|i| matched(&event.topics[*i])));
                } else {
                    frames.extend(event.topics.iter().position(matched));
                }
            }
            for &i in &frames {
                if conn.tx.try_send(frame_for(i)).is_ok() {
                    sent += 1;
                } else {
                    self.frames_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.frames_sent.fetch_add(sent as u64, Ordering::Relaxed);
        self.subscriptions_checked
            .fetch_add(checked as u64, Ordering::Relaxed);
        sent
    }

    /// Sends `text` as one text frame to every connection of `customer`, whatever they
    /// subscribed to; answers how many frames went out.
    pub fn send_raw(&self, customer: Uuid, text: &[u8]) -> usize {
        let frame = ws::encode(OpCode::Text, text);
        self.serving(customer)
            .iter()
            .filter(|c| c.tx.try_send(frame.clone()).is_ok())
            .count()
    }

    /// Drops every connection of `customer` without a close frame; answers how many.
    pub fn drop_customer(&self, customer: Uuid) -> usize {
        let conns = self.serving(customer);
        for conn in &conns {
            conn.cancel.cancel();
        }
        conns.len()
    }

    /// Stops reading from and writing to every connection of `customer` for `duration`;
    /// answers how many.
    pub fn stall_customer(&self, customer: Uuid, duration: Duration) -> usize {
        let until = tokio::time::Instant::now() + duration;
        let conns = self.serving(customer);
        for conn in &conns {
            *lock(&conn.stalled_until) = Some(until);
        }
        conns.len()
    }

    /// A snapshot of connections and subscriptions.
    pub fn stats(&self) -> Stats {
        let registry = lock(&self.registry);
        let mut customers = BTreeMap::new();
        let mut distinct = std::collections::HashSet::new();
        for (customer, conns) in &registry.by_customer {
            let mut subscriptions: Vec<String> = conns
                .iter()
                .flat_map(|c| {
                    c.subscriptions()
                        .iter()
                        .map(|p| p.as_str().to_owned())
                        .collect::<Vec<_>>()
                })
                .collect();
            subscriptions.sort();
            distinct.extend(conns.iter().map(|c| c.id));
            customers.insert(
                customer.to_string(),
                CustomerStats {
                    connections: conns.len(),
                    subscriptions,
                },
            );
        }
        Stats {
            connections: distinct.len(),
            connections_total: self.connections_total.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            frames_dropped: self.frames_dropped.load(Ordering::Relaxed),
            subscriptions_checked: self.subscriptions_checked.load(Ordering::Relaxed),
            lookups: self.lookups.load(Ordering::Relaxed),
            lookups_max_in_flight: self.lookups_max_in_flight.load(Ordering::Relaxed),
            tcp_connections_total: self.tcp_connections_total.load(Ordering::Relaxed),
            customers,
        }
    }

    /// The current wall-clock and monotonic times, for credential checks.
    pub(crate) fn now() -> (SystemTime, Instant) {
        (SystemTime::now(), Instant::now())
    }
}
