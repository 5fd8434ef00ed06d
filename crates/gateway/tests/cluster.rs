//! Cluster mode (docs/protocol.md §12) with real processes on loopback, in both of the
//! simulator's worlds: a nats-server (≥ 2.11, installed by `scripts/test`), the simulator,
//! and gateway nodes running the real binary, each with sessions of one customer. What is
//! asserted is what browsers and VoIPBIN see: the connections one node would hold, for the
//! fleet (one per kind of topic the fleet's sessions use), every event once on every
//! session, one gap per owner change, fleet-wide cursors.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::{Running, sigterm, spawn_gateway};
use common::*;
use fanout_cluster::FleetKey;
use fanout_cluster::log::{Record, Stamp};
use fanout_cluster::wire;
use fanout_protocol::cursor::Cursor;
use fanout_test_support::nats::Nats;
use fanout_test_support::*;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use voipbin_sim::Simulator;

/// One fleet at a time: the tests' processes share two cores, and leases are timed.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Fleet {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    world: World,
    nats: Nats,
    sim: Arc<Simulator>,
    _sim_cancel: CancellationToken,
    nodes: Vec<Option<Running>>,
    ttl: Duration,
    degraded_after: &'static str,
    /// The URL nodes are given, credentials and all.
    url: String,
    /// More of the nodes' environment (credentials files, TLS).
    env: Vec<(&'static str, String)>,
    /// The other servers of a NATS cluster, when `nats` is one of several.
    more: Vec<Nats>,
}

impl Fleet {
    /// NATS, the simulator playing `world` and `n` nodes whose leases last `ttl`.
    async fn start(world: World, n: usize, ttl: Duration) -> Fleet {
        Fleet::start_with(world, n, ttl, "1s").await
    }

    /// With more of the nodes' environment.
    async fn start_env(
        world: World,
        n: usize,
        ttl: Duration,
        env: Vec<(&'static str, String)>,
    ) -> Fleet {
        let serial = SERIAL.lock().await;
        let nats = Nats::start().await;
        let url = nats.url();
        Fleet::start_on(serial, world, n, ttl, "1s", nats, url, env).await
    }

    /// With NATS unreachable for `degraded_after`, nodes serve their sessions on their own.
    async fn start_with(
        world: World,
        n: usize,
        ttl: Duration,
        degraded_after: &'static str,
    ) -> Fleet {
        let serial = SERIAL.lock().await;
        let nats = Nats::start().await;
        let url = nats.url();
        Fleet::start_on(serial, world, n, ttl, degraded_after, nats, url, Vec::new()).await
    }

    /// `n` nodes on `nats`, given `url` and `env`.
    #[allow(clippy::too_many_arguments)]
    async fn start_on(
        serial: tokio::sync::MutexGuard<'static, ()>,
        world: World,
        n: usize,
        ttl: Duration,
        degraded_after: &'static str,
        nats: Nats,
        url: String,
        env: Vec<(&'static str, String)>,
    ) -> Fleet {
        let (sim, sim_cancel) = start_sim(world, |_| {}).await;
        let mut fleet = Fleet {
            _serial: serial,
            world,
            nats,
            sim,
            _sim_cancel: sim_cancel,
            nodes: Vec::new(),
            ttl,
            degraded_after,
            url,
            env,
            more: Vec::new(),
        };
        for i in 0..n {
            let node = fleet.spawn(i).await;
            fleet.nodes.push(Some(node));
        }
        fleet
    }

    async fn spawn(&self, i: usize) -> Running {
        let env = self.env_of(i);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        spawn_gateway(self.sim.local_addr(), &env).await
    }

    /// Node `i`'s environment.
    fn env_of(&self, i: usize) -> Vec<(&'static str, String)> {
        let node = format!("node-{i}");
        let ttl = format!("{}ms", self.ttl.as_millis());
        let mut env: Vec<(&'static str, String)> = [
            ("FANOUT_CLUSTER__NATS_URL", self.url.as_str()),
            ("FANOUT_CLUSTER__FLEET_KEY", FLEET_KEY),
            ("FANOUT_CLUSTER__NODE_ID", &node),
            ("FANOUT_CLUSTER__LEASE_TTL", &ttl),
            ("FANOUT_CLUSTER__REQUEST_TIMEOUT", "2s"),
            ("FANOUT_CLUSTER__DEGRADED_AFTER", self.degraded_after),
            ("FANOUT_UPSTREAM__SUBSCRIBE_SETTLE", "0s"),
            ("FANOUT_UPSTREAM__MATCHING", self.world.matching().as_str()),
            ("FANOUT_UPSTREAM__LINGER", "1s"),
            ("FANOUT_UPSTREAM__BACKOFF_BASE", "20ms"),
            ("FANOUT_UPSTREAM__BACKOFF_CAP", "200ms"),
            ("FANOUT_SHUTDOWN__READY_DELAY", "0s"),
            ("FANOUT_SHUTDOWN__DRAIN_TIMEOUT", "1s"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
        env.extend(self.env.iter().cloned());
        env
    }

    fn node(&self, i: usize) -> &Running {
        self.nodes[i].as_ref().expect("running")
    }

    fn sim_addr(&self) -> SocketAddr {
        self.sim.local_addr()
    }

    /// The upstream connections VoIPBIN holds for `customer`.
    async fn upstreams(&self, customer: Uuid) -> u64 {
        sim_stats(self.sim_addr()).await["customers"][customer.to_string()]["connections"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Node `i`'s view of `customer` in `/customers`.
    async fn customer(&self, i: usize, customer: Uuid) -> Value {
        let (_, body) = admin_get(self.node(i).admin, "/customers").await;
        body["customers"]
            .as_array()
            .and_then(|all| {
                all.iter()
                    .find(|c| c["customer_id"] == customer.to_string())
                    .cloned()
            })
            .unwrap_or(Value::Null)
    }

    /// Waits until every running node with sessions of `customer` sees what the watchers'
    /// pattern needs covered by one owner, and VoIPBIN holds one connection for it; answers
    /// the owner's index.
    async fn settled(&self, customer: Uuid) -> usize {
        self.settled_on(customer, &[&watched(customer)]).await
    }

    /// Waits until every running node with sessions of `customer` sees what `patterns` need
    /// covered by one owner, and VoIPBIN holds the connections one node would (one per
    /// label); answers the owner's index.
    async fn settled_on(&self, customer: Uuid, patterns: &[&str]) -> usize {
        let deadline = tokio::time::Instant::now() + WAIT * 2;
        loop {
            if let Some(owner) = self.owner_covering(customer, patterns).await {
                return owner;
            }
            if tokio::time::Instant::now() >= deadline {
                let mut views = Vec::new();
                for (i, node) in self.nodes.iter().enumerate() {
                    if node.is_some() {
                        views.push(self.customer(i, customer).await);
                    }
                }
                panic!(
                    "no single owner covering the stream on every node, with {} upstreams: {views:?}",
                    self.upstreams(customer).await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn owner_covering(&self, customer: Uuid, patterns: &[&str]) -> Option<usize> {
        let needed: Vec<String> = prefixes_in(self.world, customer, patterns)
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect();
        let connections = connections_in(self.world, customer, patterns) as u64;
        let mut owners = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.is_none() {
                continue;
            }
            let view = self.customer(i, customer).await;
            if view.is_null() {
                // No session of the customer there.
                continue;
            }
            let covered = view["covered"].as_array().is_some_and(|covered| {
                needed
                    .iter()
                    .all(|p| covered.iter().any(|c| c == p.as_str()))
            });
            if !covered {
                return None;
            }
            owners.push(view["owner"].as_str().unwrap_or_default().to_owned());
        }
        if !owners.windows(2).all(|w| w[0] == w[1]) || self.upstreams(customer).await != connections
        {
            return None;
        }
        owners.first()?.strip_prefix("node-")?.parse().ok()
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.node(i).child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    async fn kill(&mut self, i: usize) {
        let mut node = self.nodes[i].take().expect("running");
        node.child.kill().await.expect("killed");
    }
}

/// What the watchers subscribe to: the customer's calls.
fn watched(customer: Uuid) -> String {
    format!("customer_id:{customer}:call:*")
}

/// A session of `customer` on `node`, subscribed to its calls.
async fn watcher(node: &Running, customer: Uuid) -> Client {
    let mut client = Client::connect_token(node.addr, &admin_token(customer)).await;
    client.subscribe_synced(&[&watched(customer)]).await;
    client
}

fn calls(customer: Uuid, prefix: &str, n: u32) -> Value {
    Value::Array(
        (0..n)
            .map(|i| call(customer, &format!("{prefix}{i}"), None))
            .collect(),
    )
}

/// Frames until `n` events arrived: the events, and the gaps among them.
async fn events(client: &mut Client, n: usize) -> (Vec<Value>, Vec<Value>) {
    let (mut events, mut gaps) = (Vec::new(), Vec::new());
    while events.len() < n {
        let frame = client.recv_json().await;
        if frame["type"] == "gap" {
            gaps.push(frame);
        } else if frame.get("event_type").is_some() {
            events.push(frame);
        }
    }
    (events, gaps)
}

/// The next frame that is a gap; panics on an event before it.
async fn gap(client: &mut Client, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.recv_within(left).await {
            Some(Received::Text(frame)) if frame["type"] == "gap" => return frame,
            Some(Received::Text(frame)) => panic!("expected a gap, got {frame}"),
            Some(Received::Ping(_) | Received::Pong(_)) => continue,
            other => panic!("expected a gap within {within:?}, got {other:?}"),
        }
    }
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["data"]["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn expected(prefix: &str, n: u32) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn cursors(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["cursor"].as_str().unwrap_or_default().to_owned())
        .collect()
}

const TTL: Duration = Duration::from_secs(3);

in_both_worlds! {
async fn the_fleet_holds_one_upstream_and_every_session_gets_every_event_once(world) {
    let fleet = Fleet::start(world, 3, TTL).await;
    let c = tutorial_customer();
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(watcher(fleet.node(i), c).await);
    }
    fleet.settled(c).await;
    publish(fleet.sim_addr(), &calls(c, "a", 40)).await;
    let mut seen = Vec::new();
    for client in &mut clients {
        let (events, gaps) = events(client, 40).await;
        assert!(gaps.is_empty(), "{gaps:?}");
        assert_eq!(ids(&events), expected("a", 40));
        seen.push(cursors(&events));
        client.expect_silence(Duration::from_millis(300)).await;
    }
    // Cursors are the fleet's: the same event has the same cursor on every node.
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    assert_eq!(fleet.upstreams(c).await, 1);
    // Every node names the same owner and term.
    let views: Vec<Value> = futures_join(&fleet, c).await;
    assert!(views.iter().all(|v| v["owner"] == views[0]["owner"]
        && v["term"] == views[0]["term"]
        && v["term"].as_u64().is_some()));
}
}

async fn futures_join(fleet: &Fleet, customer: Uuid) -> Vec<Value> {
    let mut views = Vec::new();
    for (i, node) in fleet.nodes.iter().enumerate() {
        if node.is_some() {
            views.push(fleet.customer(i, customer).await);
        }
    }
    views
}

in_both_worlds! {
async fn a_killed_owner_is_replaced_and_every_surviving_session_gets_one_gap(world) {
    let mut fleet = Fleet::start(world, 3, TTL).await;
    let c = tutorial_customer();
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(Some(watcher(fleet.node(i), c).await));
    }
    let owner = fleet.settled(c).await;
    let term = fleet.customer(owner, c).await["term"]
        .as_u64()
        .expect("term");
    publish(fleet.sim_addr(), &calls(c, "a", 5)).await;
    for client in clients.iter_mut().flatten() {
        assert_eq!(ids(&events(client, 5).await.0), expected("a", 5));
    }
    let killed = Instant::now();
    fleet.kill(owner).await;
    clients[owner] = None;
    for client in clients.iter_mut().flatten() {
        let gap = gap(client, fleet.ttl * 3).await;
        assert_eq!(gap["reason"], "owner_failover", "{gap}");
        assert!(gap["cursor"].as_str().is_some());
    }
    eprintln!(
        "failover: gap on every survivor {:?} after the kill",
        killed.elapsed()
    );
    let successor = fleet.settled(c).await;
    assert_ne!(successor, owner);
    let new_term = fleet.customer(successor, c).await["term"]
        .as_u64()
        .expect("term");
    assert!(new_term > term, "terms only grow");
    publish(fleet.sim_addr(), &calls(c, "b", 5)).await;
    for client in clients.iter_mut().flatten() {
        let (events, gaps) = events(client, 5).await;
        assert!(gaps.is_empty(), "one gap only: {gaps:?}");
        assert_eq!(ids(&events), expected("b", 5));
        client.expect_silence(Duration::from_millis(300)).await;
    }
    assert_eq!(fleet.upstreams(c).await, 1);
}
}

in_both_worlds! {
async fn an_owner_shutting_down_hands_over_with_a_short_gap(world) {
    // A long lease: only a handoff, not an expiry, can replace the owner quickly.
    let mut fleet = Fleet::start(world, 2, Duration::from_secs(20)).await;
    let c = tutorial_customer();
    let mut clients = [
        watcher(fleet.node(0), c).await,
        watcher(fleet.node(1), c).await,
    ];
    let owner = fleet.settled(c).await;
    let other = 1 - owner;
    let stopped = Instant::now();
    sigterm(&fleet.node(owner).child);
    let gap = gap(&mut clients[other], Duration::from_secs(10)).await;
    let took = stopped.elapsed();
    assert_eq!(gap["reason"], "owner_handoff", "{gap}");
    eprintln!(
        "handoff: gap {took:?} after SIGTERM (lease TTL {:?})",
        fleet.ttl
    );
    let mut old = fleet.nodes[owner].take().expect("running");
    let status = tokio::time::timeout(WAIT, old.child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(status.success(), "{status}");
    assert_eq!(fleet.settled(c).await, other);
    publish(fleet.sim_addr(), &calls(c, "h", 5)).await;
    let (events, gaps) = events(&mut clients[other], 5).await;
    assert!(gaps.is_empty(), "{gaps:?}");
    assert_eq!(ids(&events), expected("h", 5));
}
}

in_both_worlds! {
async fn a_paused_owner_that_wakes_up_gets_no_event_to_any_session(world) {
    let fleet = Fleet::start(world, 3, TTL).await;
    let c = tutorial_customer();
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(watcher(fleet.node(i), c).await);
    }
    let owner = fleet.settled(c).await;
    fleet.signal(owner, "-STOP");
    // Past the lease: another node takes over and says so.
    for (i, client) in clients.iter_mut().enumerate() {
        if i != owner {
            let gap = gap(client, fleet.ttl * 3).await;
            assert_eq!(gap["reason"], "owner_failover", "{gap}");
        }
    }
    // The paused owner's upstream is still open: VoIPBIN sends it everything too.
    eventually("the successor's upstream beside the paused one", || async {
        fleet.upstreams(c).await == 2
    })
    .await;
    publish(fleet.sim_addr(), &calls(c, "p", 10)).await;
    fleet.signal(owner, "-CONT");
    publish(fleet.sim_addr(), &calls(c, "q", 10)).await;
    for (i, client) in clients.iter_mut().enumerate() {
        let (events, gaps) = events(client, 20).await;
        let mut want = expected("p", 10);
        want.extend(expected("q", 10));
        assert_eq!(ids(&events), want, "node {i}: each event once, none stale");
        if i == owner {
            // Its own session learns of the owner change like the others.
            assert_eq!(gaps.len(), 1, "{gaps:?}");
        } else {
            assert!(gaps.is_empty(), "{gaps:?}");
        }
        client.expect_silence(Duration::from_millis(500)).await;
    }
    // The woken owner closed its upstream: one again; it fenced itself.
    eventually("one upstream again", || async {
        fleet.upstreams(c).await == 1
    })
    .await;
    let metrics = metrics_text(fleet.node(owner).admin).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("fanout_cluster_fenced_total{side=\"self\"}")),
        "{metrics}"
    );
}
}

/// An event record of `customer` at `cursor` whose data says `id`.
fn forged(customer: Uuid, cursor: Cursor, id: &str, data: Bytes) -> Record {
    Record::Event {
        cursor,
        event: fanout_protocol::upstream::Event {
            shape: fanout_protocol::upstream::Shape::Envelope,
            event_type: "call_ringing".into(),
            timestamp: "2026-12-01T00:00:00.000000Z".into(),
            customer_id: customer,
            topics: vec![
                fanout_protocol::Topic::parse(&format!("customer_id:{customer}:call:{id}"))
                    .expect("topic"),
            ],
            fresh_from: 0,
            data,
        },
    }
}

/// A batch of `records` of `customer` on `subject`, sealed with `key`.
fn batch(
    key: &FleetKey,
    subject: &str,
    node_term: u64,
    seq: u64,
    customer: Uuid,
    records: Vec<(Stamp, Record)>,
) -> Bytes {
    let mut batch = wire::BatchWriter::new(node_term, seq);
    for (stamp, record) in &records {
        batch.push(customer, *stamp, record);
    }
    batch.seal(key, subject)
}

/// Appends `body` to `subject` after whatever is last there (as a client that reads the
/// subject first would).
async fn append(js: &async_nats::jetstream::Context, subject: &str, body: Bytes) -> bool {
    let stream = js.get_stream("FANOUT_EVENTS").await.expect("stream");
    let last = stream
        .get_last_raw_message_by_subject(subject)
        .await
        .map_or(0, |m| m.sequence);
    js.send_publish(
        subject.to_owned(),
        async_nats::jetstream::message::PublishMessage::build()
            .payload(body)
            .expected_last_subject_sequence(last),
    )
    .await
    .expect("sent")
    .await
    .is_ok()
}

fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// The owner's node id and the customer's term, as node `i` sees them.
async fn owner_and_term(fleet: &Fleet, i: usize, customer: Uuid) -> (String, u64) {
    let view = fleet.customer(i, customer).await;
    (
        view["owner"].as_str().expect("owner").to_owned(),
        view["term"].as_u64().expect("term"),
    )
}

in_both_worlds! {
async fn a_stale_term_or_a_repeated_record_in_the_log_reaches_no_session(world) {
    let fleet = Fleet::start(world, 2, TTL).await;
    let c = tutorial_customer();
    let mut clients = [
        watcher(fleet.node(0), c).await,
        watcher(fleet.node(1), c).await,
    ];
    let owner = fleet.settled(c).await;
    let (owner_id, term) = owner_and_term(&fleet, owner, c).await;
    publish(fleet.sim_addr(), &calls(c, "a", 2)).await;
    let (seen, _) = events(&mut clients[0], 2).await;
    events(&mut clients[1], 2).await;
    let cursor = Cursor::parse(seen[1]["cursor"].as_str().expect("cursor")).expect("a cursor");
    let next = Cursor {
        epoch: cursor.epoch,
        offset: cursor.offset + 1,
    };
    let js = async_nats::jetstream::new(async_nats::connect(fleet.nats.url()).await.expect("nats"));
    let key = FleetKey::new(&[FLEET_KEY]).expect("key");
    // A node that holds the key, with records of an older term of the customer's (its owner
    // before, woken up) and one of this term already taken: on a subject of its own.
    let ghost = fanout_cluster::node::subject_of("ghost");
    let records = vec![
        (
            Stamp { term: term - 1, seq: 1_000 },
            forged(c, next, "stale", Bytes::from(format!(r#"{{"id":"stale","customer_id":"{c}"}}"#))),
        ),
        (
            Stamp { term, seq: 1 },
            forged(c, next, "repeated", Bytes::from(format!(r#"{{"id":"repeated","customer_id":"{c}"}}"#))),
        ),
    ];
    assert!(append(&js, &ghost, batch(&key, &ghost, 1, 0, c, records)).await);
    // The store side: a batch on the owner's subject that does not follow its last message
    // is refused.
    let subject = fanout_cluster::node::subject_of(&owner_id);
    let stream = js.get_stream("FANOUT_EVENTS").await.expect("stream");
    let last = stream.get_last_raw_message_by_subject(&subject).await.expect("the owner's batches").sequence;
    let refused = js
        .send_publish(
            subject.clone(),
            async_nats::jetstream::message::PublishMessage::build()
                .payload(batch(&key, &subject, 1, 0, c, Vec::new()))
                .expected_last_subject_sequence(last - 1),
        )
        .await
        .expect("sent")
        .await;
    assert!(refused.is_err(), "the store refuses it: {refused:?}");
    // The owner goes on; the records reached nobody.
    publish(fleet.sim_addr(), &calls(c, "b", 2)).await;
    for (i, client) in clients.iter_mut().enumerate() {
        let (events, gaps) = events(client, 2).await;
        assert!(gaps.is_empty(), "{gaps:?}");
        assert_eq!(ids(&events), expected("b", 2));
        client.expect_silence(Duration::from_millis(300)).await;
        let metrics = metrics_text(fleet.node(i).admin).await;
        let dropped = counter(&metrics, "fanout_cluster_fenced_total{side=\"reader\"}");
        assert_eq!(dropped, 2.0, "node {i} dropped both: {metrics}");
    }
}
}

in_both_worlds! {
async fn a_client_on_the_bus_without_the_fleet_key_can_neither_forge_nor_silence_nor_poison(world) {
    let fleet = Fleet::start(world, 2, TTL).await;
    let c = tutorial_customer();
    let mut clients = [
        watcher(fleet.node(0), c).await,
        watcher(fleet.node(1), c).await,
    ];
    let owner = fleet.settled(c).await;
    let (owner_id, term) = owner_and_term(&fleet, owner, c).await;
    publish(fleet.sim_addr(), &calls(c, "a", 2)).await;
    let (seen, _) = events(&mut clients[0], 2).await;
    events(&mut clients[1], 2).await;
    let cursor = Cursor::parse(seen[1]["cursor"].as_str().expect("cursor")).expect("a cursor");
    let next = Cursor {
        epoch: cursor.epoch,
        offset: cursor.offset + 1,
    };
    let js = async_nats::jetstream::new(async_nats::connect(fleet.nats.url()).await.expect("nats"));
    let wrong = FleetKey::new(&["a key that is not the fleet's, 32 bytes+"]).expect("key");
    let subject = fanout_cluster::node::subject_of(&owner_id);
    let data = |id: &str| Bytes::from(format!(r#"{{"id":"{id}","customer_id":"{c}"}}"#));
    let attacks: Vec<Bytes> = vec![
        // Forged: the next event, as the owner would write it.
        batch(&wrong, &subject, u64::MAX / 2, 0, c, vec![(Stamp { term, seq: 100 }, forged(c, next, "forged", data("forged")))]),
        // Silencing: a record stamped far ahead, in the customer's term and in a later one.
        batch(&wrong, &subject, 1, 0, c, vec![
            (Stamp { term, seq: 1 << 62 }, forged(c, Cursor { epoch: cursor.epoch, offset: 1 << 62 }, "ahead", data("ahead"))),
            (Stamp { term: 1 << 62, seq: 0 }, Record::Begin { epoch: 7, node: "x".into() }),
        ]),
        // Poison: data that is not UTF-8 (a browser frame must be text).
        batch(&wrong, &subject, 1, 1, c, vec![(Stamp { term, seq: 101 }, forged(c, next, "poison", Bytes::from_static(b"{\"id\":\"\xff\"}")))]),
        // A fence of the owner's node term, and bytes that are no batch at all.
        wire::fence(&wrong, &subject, u64::MAX, "attacker"),
        Bytes::from_static(b"junk"),
    ];
    for body in attacks {
        assert!(append(&js, &subject, body).await, "stored on the owner's subject");
    }
    // The owner goes on (its own batches follow whatever was written), nothing forged
    // reached a session, and no gap was told.
    publish(fleet.sim_addr(), &calls(c, "b", 3)).await;
    let mut last_cursor = String::new();
    for (i, client) in clients.iter_mut().enumerate() {
        let (events, gaps) = events(client, 3).await;
        assert!(gaps.is_empty(), "node {i}: {gaps:?}");
        assert_eq!(ids(&events), expected("b", 3), "node {i}");
        last_cursor = events[0]["cursor"].as_str().expect("cursor").to_owned();
        client.expect_silence(Duration::from_millis(300)).await;
        let metrics = metrics_text(fleet.node(i).admin).await;
        assert!(counter(&metrics, "fanout_cluster_bad_records_total") >= 5.0, "node {i}: {metrics}");
    }
    assert_eq!(owner_and_term(&fleet, owner, c).await, (owner_id, term), "no takeover");
    // A resume from before the attack is whole: the window holds nothing forged.
    for i in 0..2 {
        let mut again = Client::connect_token(fleet.node(i).addr, &admin_token(c)).await;
        again
            .send_json(&json!({"type": "subscribe", "topics": [watched(c)], "since": seen[0]["cursor"]}))
            .await;
        let answer = again.recv_json().await;
        assert_eq!(answer["recovered"], true, "node {i}: {answer}");
        let (events, gaps) = events(&mut again, 4).await;
        assert!(gaps.is_empty());
        assert_eq!(ids(&events), ["a1", "b0", "b1", "b2"], "node {i}");
        assert_eq!(events[1]["cursor"], last_cursor.as_str());
    }
}
}

in_both_worlds! {
async fn a_browser_resumes_on_another_node_without_loss(world) {
    let fleet = Fleet::start(world, 4, TTL).await;
    let c = tutorial_customer();
    let topic = watched(c);
    let mut away = watcher(fleet.node(0), c).await;
    let mut stays = watcher(fleet.node(1), c).await;
    // Node 0 keeps a session: its customer entry (and ownership) stays when `away` goes.
    let _keeps = watcher(fleet.node(0), c).await;
    fleet.settled(c).await;
    publish(fleet.sim_addr(), &calls(c, "a", 3)).await;
    let (seen, _) = events(&mut away, 3).await;
    let last = seen[2]["cursor"].as_str().expect("cursor").to_owned();
    away.close().await;
    publish(fleet.sim_addr(), &calls(c, "b", 4)).await;
    events(&mut stays, 7).await;
    // Back, through the other node.
    let mut back = Client::connect_token(fleet.node(1).addr, &admin_token(c)).await;
    back.send_json(&json!({"type": "subscribe", "topics": [topic], "since": last}))
        .await;
    let answer = back.recv_json().await;
    assert_eq!(answer["type"], "resumed", "{answer}");
    assert_eq!(answer["recovered"], true, "{answer}");
    let (replay, gaps) = events(&mut back, 4).await;
    assert!(gaps.is_empty());
    assert_eq!(ids(&replay), expected("b", 4));
    publish(fleet.sim_addr(), &calls(c, "c", 2)).await;
    assert_eq!(ids(&events(&mut back, 2).await.0), expected("c", 2));
    back.expect_silence(Duration::from_millis(300)).await;
    // A new session on a node that had none of the customer: the node reads the term in
    // for resumes, but the session gets only what happens from now on.
    assert!(fleet.customer(2, c).await.is_null(), "node 2 is cold");
    let mut fresh = watcher(fleet.node(2), c).await;
    fresh.expect_silence(Duration::from_millis(500)).await;
    eventually("node 2 read the term in", || async {
        fleet.customer(2, c).await["window_events"].as_u64() == Some(9)
    })
    .await;
    // Through a node that has no session of the customer yet: it reads the term in from
    // the log before it judges.
    assert!(fleet.customer(3, c).await.is_null(), "node 3 is cold");
    let mut cold = Client::connect_token(fleet.node(3).addr, &admin_token(c)).await;
    cold.send_json(&json!({"type": "subscribe", "topics": [topic], "since": last}))
        .await;
    let answer = cold.recv_json().await;
    assert_eq!(answer["type"], "resumed", "{answer}");
    assert_eq!(answer["recovered"], true, "{answer}");
    let (replay, gaps) = events(&mut cold, 6).await;
    assert!(gaps.is_empty());
    let mut want = expected("b", 4);
    want.extend(expected("c", 2));
    assert_eq!(ids(&replay), want);
    publish(fleet.sim_addr(), &calls(c, "d", 2)).await;
    assert_eq!(ids(&events(&mut cold, 2).await.0), expected("d", 2));
    cold.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(ids(&events(&mut fresh, 2).await.0), expected("d", 2));
    fresh.expect_silence(Duration::from_millis(300)).await;
}
}

in_both_worlds! {
async fn a_customer_whose_sessions_all_left_is_handed_over_and_its_upstream_closed(world) {
    let fleet = Fleet::start(world, 2, TTL).await;
    let c = tutorial_customer();
    let a = watcher(fleet.node(0), c).await;
    let b = watcher(fleet.node(1), c).await;
    fleet.settled(c).await;
    a.close().await;
    b.close().await;
    // After the linger (1 s), both nodes forget the customer and VoIPBIN sees no upstream,
    // long before the lease could have expired unrenewed.
    eventually("no upstream once the linger is over", || async {
        fleet.upstreams(c).await == 0
            && fleet.customer(0, c).await.is_null()
            && fleet.customer(1, c).await.is_null()
    })
    .await;
    let client = async_nats::connect(fleet.nats.url()).await.expect("nats");
    let kv = async_nats::jetstream::new(client)
        .get_key_value("fanout_owners")
        .await
        .expect("bucket");
    let record = kv.get(c.simple().to_string()).await.expect("read");
    assert_eq!(record, None, "handed over, not left to a dead owner");
}
}

in_both_worlds! {
async fn a_nats_restart_costs_no_event_and_no_gap(world) {
    // Long enough a lease that the owner keeps it across the restart.
    let mut fleet = Fleet::start_with(world, 2, Duration::from_secs(15), "30s").await;
    let c = tutorial_customer();
    let mut clients = vec![
        watcher(fleet.node(0), c).await,
        watcher(fleet.node(1), c).await,
    ];
    fleet.settled(c).await;
    publish(fleet.sim_addr(), &calls(c, "a", 5)).await;
    for client in &mut clients {
        assert_eq!(ids(&events(client, 5).await.0), expected("a", 5));
    }
    fleet.nats.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.nats.resume().await;
    // Once the nodes are back on NATS, live delivery goes on: one event a second until
    // every session has had one, then a last batch; no gap, no event twice.
    let mut sent = Vec::new();
    let mut frames: Vec<Vec<Value>> = vec![Vec::new(); clients.len()];
    for n in 0..20 {
        let id = format!("r{n}");
        publish(fleet.sim_addr(), &json!([call(c, &id, None)])).await;
        sent.push(id);
        for (client, frames) in clients.iter_mut().zip(&mut frames) {
            while let Some(Received::Text(frame)) =
                client.recv_within(Duration::from_millis(500)).await
            {
                frames.push(frame);
            }
        }
        if frames.iter().all(|f| !f.is_empty()) {
            break;
        }
    }
    assert!(
        frames.iter().all(|f| !f.is_empty()),
        "live delivery resumed"
    );
    publish(fleet.sim_addr(), &calls(c, "z", 5)).await;
    for (client, frames) in clients.iter_mut().zip(&mut frames) {
        while !frames.iter().any(|f| f["data"]["id"] == "z4") {
            frames.push(client.recv_json().await);
        }
        assert!(frames.iter().all(|f| f["type"] != "gap"), "{frames:?}");
        let got = ids(frames);
        let mut once = got.clone();
        once.sort();
        once.dedup();
        assert_eq!(once.len(), got.len(), "no event twice: {got:?}");
        assert_eq!(got[got.len() - 5..], expected("z", 5)[..]);
        // What was published once the nodes were back arrived in order.
        let live: Vec<&String> = got.iter().filter(|id| id.starts_with('r')).collect();
        let first = sent
            .iter()
            .position(|id| Some(&id) == live.first())
            .unwrap_or(0);
        assert_eq!(live, sent[first..].iter().collect::<Vec<_>>());
    }
    assert_eq!(fleet.upstreams(c).await, 1);
}
}

in_both_worlds! {
async fn with_nats_gone_each_node_serves_its_own_sessions_and_rejoins_when_it_is_back(world) {
    let mut fleet = Fleet::start(world, 2, TTL).await;
    let c = tutorial_customer();
    let mut clients = [
        watcher(fleet.node(0), c).await,
        watcher(fleet.node(1), c).await,
    ];
    fleet.settled(c).await;
    fleet.nats.stop();
    // Degraded: every session is told, then served by its own node's upstream.
    for client in &mut clients {
        let gap = gap(client, WAIT).await;
        assert_eq!(gap["reason"], "cluster_degraded", "{gap}");
    }
    eventually("one upstream per node", || async {
        fleet.upstreams(c).await == 2
    })
    .await;
    publish(fleet.sim_addr(), &calls(c, "d", 5)).await;
    for client in &mut clients {
        let (events, gaps) = events(client, 5).await;
        assert!(gaps.is_empty(), "{gaps:?}");
        assert_eq!(ids(&events), expected("d", 5));
    }
    // NATS back: one owner again, one upstream for the fleet.
    fleet.nats.resume().await;
    fleet.settled(c).await;
    publish(fleet.sim_addr(), &calls(c, "e", 5)).await;
    for client in &mut clients {
        let (events, gaps) = events(client, 5).await;
        assert!(!gaps.is_empty(), "the change back is told");
        assert_eq!(ids(&events), expected("e", 5), "each event once");
        client.expect_silence(Duration::from_millis(300)).await;
    }
    assert_eq!(fleet.upstreams(c).await, 1);
}
}

#[tokio::test]
async fn a_node_refuses_to_start_against_a_nats_server_older_than_2_11() {
    let _serial = SERIAL.lock().await;
    let old = Nats::start_binary(fanout_test_support::nats::old_nats_server()).await;
    let (sim, _cancel) = start_sim(World::Voipbin, |_| {}).await;
    let output = tokio::process::Command::new(common::process::BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--upstream-url",
            &sim.ws_url(),
            "--cluster-nats",
            &old.url(),
        ])
        .env("FANOUT_CLUSTER__FLEET_KEY", FLEET_KEY)
        .env("FANOUT_JWT_SECRET", SECRET)
        .env("FANOUT_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("FANOUT_UPSTREAM_TOKEN", service_token())
        .output()
        .await
        .expect("runs");
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains(&format!(
            "nats-server {} is too old for cluster mode",
            fanout_test_support::nats::OLD_VERSION
        )),
        "{log}"
    );
}

in_both_worlds! {
async fn a_nats_that_lost_its_state_is_rejoined_with_a_gap_and_terms_start_again(world) {
    let mut fleet = Fleet::start(world, 2, TTL).await;
    let c = tutorial_customer();
    let mut clients = [
        watcher(fleet.node(0), c).await,
        watcher(fleet.node(1), c).await,
    ];
    fleet.settled(c).await;
    // Terms well past those a new bucket will give.
    for _ in 0..3 {
        let owner = fleet.settled(c).await;
        fleet.signal(owner, "-STOP");
        for (i, client) in clients.iter_mut().enumerate() {
            if i != owner {
                assert_eq!(gap(client, fleet.ttl * 3).await["reason"], "owner_failover");
            }
        }
        fleet.signal(owner, "-CONT");
        let _ = gap(&mut clients[owner], WAIT).await;
    }
    fleet.nats.stop();
    fleet.nats.wipe();
    fleet.nats.resume().await;
    // The log and the leases are made again; every session is told, then served.
    for client in &mut clients {
        let gap = gap(client, WAIT * 2).await;
        assert_eq!(gap["reason"], "cluster_degraded", "{gap}");
    }
    let owner = fleet.settled(c).await;
    let term = fleet.customer(owner, c).await["term"]
        .as_u64()
        .expect("term");
    assert!(term < 4, "terms of the new bucket: {term}");
    publish(fleet.sim_addr(), &calls(c, "w", 5)).await;
    for client in &mut clients {
        let (events, _) = events(client, 5).await;
        assert_eq!(
            ids(&events),
            expected("w", 5),
            "each event once, none dropped as stale"
        );
        client.expect_silence(Duration::from_millis(300)).await;
    }
    assert_eq!(fleet.upstreams(c).await, 1);
}
}

in_both_worlds! {
/// The seed tutorial's patterns, a resource's, an agent's and an event type's, spread over
/// two nodes: the owner holds the union of what both need (one connection per label, for
/// the fleet), and each session gets exactly its events, once.
async fn every_kind_of_pattern_gets_exactly_its_events_once_across_the_fleet(world) {
    let fleet = Fleet::start(world, 2, TTL).await;
    let sessions = SeedSessions::open(&[fleet.node(0).addr, fleet.node(1).addr]).await;
    let patterns = SeedSessions::patterns(sessions.customer, sessions.agent);
    let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
    fleet.settled_on(sessions.customer, &refs).await;
    assert_eq!(
        fleet.upstreams(sessions.customer).await,
        connections_in(world, sessions.customer, &refs) as u64
    );
    sessions.check(fleet.sim_addr()).await;
}
}

/// A node and how to start it on a locked bus: its URL and environment.
type Access = (String, Vec<(&'static str, String)>);

/// On a NATS that takes only credentials (`conf`): a node given `denied` cannot start and
/// says why without printing a secret; nodes given `admitted` form the fleet, and deliver;
/// no `secrets` appear in anything a node writes.
async fn on_a_locked_bus(
    world: World,
    conf: String,
    scheme: &'static str,
    admitted: impl Fn(&Nats) -> Access,
    denied: impl Fn(&Nats) -> Access,
    secrets: &[&str],
) {
    let serial = SERIAL.lock().await;
    let nats = Nats::start_with(conf, scheme).await;
    let (url, env) = admitted(&nats);
    let denied = denied(&nats);
    let fleet = Fleet::start_on(serial, world, 2, TTL, "1s", nats, url, env).await;
    let c = tutorial_customer();
    let mut clients = vec![
        watcher(fleet.node(0), c).await,
        watcher(fleet.node(1), c).await,
    ];
    fleet.settled(c).await;
    publish(fleet.sim_addr(), &calls(c, "l", 5)).await;
    for client in &mut clients {
        let (events, gaps) = events(client, 5).await;
        assert!(gaps.is_empty(), "{gaps:?}");
        assert_eq!(ids(&events), expected("l", 5));
    }
    let (url, mut env) = denied;
    env.push(("FANOUT_CLUSTER__NATS_URL", url));
    env.push(("FANOUT_CLUSTER__FLEET_KEY", FLEET_KEY.to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (started, said) = common::process::run_gateway_to_exit(fleet.sim_addr(), &env).await;
    assert!(!started, "a node without the bus's credentials ran: {said}");
    assert!(said.contains("cannot reach NATS"), "{said}");
    for node in fleet.nodes.iter().flatten() {
        let logs = node
            .logs
            .lock()
            .expect("logs")
            .iter()
            .cloned()
            .collect::<Vec<_>>();
        for secret in secrets {
            assert!(!said.contains(secret), "printed {secret}: {said}");
            assert!(!logs.iter().any(|l| l.contains(secret)), "logged {secret}");
        }
    }
}

in_both_worlds! {
/// With the deployment's own NATS user (deploy/kubernetes/overlays/cluster/nats-auth.conf):
/// its permissions are all a node needs.
async fn a_bus_locked_with_a_password_admits_only_nodes_that_give_it(world) {
    let auth = std::fs::read_to_string(
        repo_root().join("deploy/kubernetes/overlays/cluster/nats-auth.conf"),
    )
    .expect("the overlay's NATS user");
    on_a_locked_bus(
        world,
        format!("NATS_PASSWORD: \"pw-SECRET-1\"\n{auth}"),
        "nats",
        |nats| (nats.url_with("fanout:pw-SECRET-1"), vec![]),
        |nats| (nats.url_with("fanout:wrong-SECRET-2"), vec![]),
        &["pw-SECRET-1", "wrong-SECRET-2"],
    )
    .await;
}
}

in_both_worlds! {
async fn a_bus_locked_with_a_token_admits_only_nodes_that_give_it(world) {
    on_a_locked_bus(
        world,
        "authorization { token: \"tok-SECRET-3\" }".into(),
        "nats",
        |nats| (nats.url_with("tok-SECRET-3"), vec![]),
        |nats| (nats.url(), vec![]),
        &["tok-SECRET-3"],
    )
    .await;
}
}

/// A file holding `text`, in a fresh directory.
fn secret_file(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("fanout-creds-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("written");
    path.display().to_string()
}

in_both_worlds! {
async fn a_bus_locked_with_nkeys_admits_nodes_with_the_seed(world) {
    let user = natsauth::user_nkey();
    let seed_file = secret_file("fanout.nk", &user.seed);
    on_a_locked_bus(
        world,
        format!("authorization {{ users = [ {{ nkey: {} }} ] }}", user.public),
        "nats",
        |nats| (nats.url(), vec![("FANOUT_CLUSTER__CREDENTIALS_FILE", seed_file.clone())]),
        |nats| (nats.url(), vec![]),
        &[&user.seed],
    )
    .await;
}
}

in_both_worlds! {
async fn a_bus_in_operator_mode_admits_nodes_with_a_creds_file(world) {
    let operator = natsauth::operator();
    let creds_file = secret_file("fanout.creds", &operator.creds);
    let seed = operator
        .creds
        .lines()
        .find(|l| l.starts_with("SU"))
        .expect("a seed")
        .to_owned();
    on_a_locked_bus(
        world,
        operator.server_conf.clone(),
        "nats",
        |nats| (nats.url(), vec![("FANOUT_CLUSTER__CREDENTIALS_FILE", creds_file.clone())]),
        |nats| (nats.url(), vec![]),
        &[&seed],
    )
    .await;
}
}

in_both_worlds! {
async fn a_bus_on_tls_with_a_private_ca_admits_nodes_with_a_client_certificate(world) {
    let ca = pki::Ca::new("fanout-nats-ca");
    let server = ca.server("nats", &["127.0.0.1"], pki::Validity::Current);
    let client = ca.client("node");
    let ca_file = ca.cert_path().display().to_string();
    let conf = format!(
        "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true, timeout: 2 }}",
        server.cert, server.key, ca.cert_path()
    );
    on_a_locked_bus(
        world,
        conf,
        "tls",
        |nats| {
            (
                nats.url(),
                vec![
                    ("FANOUT_CLUSTER__CA_FILE", ca_file.clone()),
                    ("FANOUT_CLUSTER__CLIENT_CERT_FILE", client.cert.display().to_string()),
                    ("FANOUT_CLUSTER__CLIENT_KEY_FILE", client.key.display().to_string()),
                ],
            )
        },
        |nats| (nats.url(), vec![("FANOUT_CLUSTER__CA_FILE", ca_file.clone())]),
        &[],
    )
    .await;
}
}

in_both_worlds! {
async fn a_stream_and_buckets_made_by_the_operator_are_used_as_they_are(world) {
    use async_nats::jetstream::{self, kv, stream};
    let serial = SERIAL.lock().await;
    let nats = Nats::start().await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    // Made by an operator before any node: other limits, more history, other subjects.
    js.create_stream(stream::Config {
        name: "FANOUT_EVENTS".into(),
        subjects: vec!["fanout.>".into()],
        max_bytes: 64 << 20,
        max_age: Duration::from_secs(600),
        ..Default::default()
    })
    .await
    .expect("stream made");
    for (bucket, history) in [("fanout_owner", 3), ("fanout_interest", 4)] {
        js.create_key_value(kv::Config {
            bucket: bucket.into(),
            history,
            max_age: Duration::from_secs(20),
            ..Default::default()
        })
        .await
        .expect("bucket made");
    }
    let url = nats.url();
    let fleet = Fleet::start_on(serial, world, 2, TTL, "1s", nats, url, Vec::new()).await;
    let c = tutorial_customer();
    let mut clients = vec![watcher(fleet.node(0), c).await, watcher(fleet.node(1), c).await];
    fleet.settled(c).await;
    publish(fleet.sim_addr(), &calls(c, "o", 5)).await;
    for client in &mut clients {
        let (events, gaps) = events(client, 5).await;
        assert!(gaps.is_empty(), "{gaps:?}");
        assert_eq!(ids(&events), expected("o", 5));
    }
    let mut log = js.get_stream("FANOUT_EVENTS").await.expect("the log");
    let config = log.info().await.expect("info").config.clone();
    assert_eq!(config.max_bytes, 64 << 20);
    assert_eq!(config.max_age, Duration::from_secs(600));
    for (bucket, history) in [("fanout_owner", 3), ("fanout_interest", 4)] {
        let mut kv = js.get_stream(format!("KV_{bucket}")).await.expect("bucket");
        let config = kv.info().await.expect("info").config.clone();
        assert_eq!(config.max_messages_per_subject, history, "{bucket}");
        assert_eq!(config.max_age, Duration::from_secs(20), "{bucket}");
    }
}
}

/// `n` calls of `customer`'s, each carrying `pad` bytes more.
fn big_calls(customer: Uuid, prefix: &str, n: u32, pad: usize) -> Value {
    let pad = "x".repeat(pad);
    Value::Array(
        (0..n)
            .map(|i| {
                let mut event = call(customer, &format!("{prefix}{i}"), None);
                event["data"]["notes"] = json!(pad);
                event
            })
            .collect(),
    )
}

/// Frames until `n` events of `prefix` arrived or `within` passed: the ids in order, with
/// `gap` standing for each gap.
async fn ids_and_gaps(
    client: &mut Client,
    prefix: &str,
    n: usize,
    within: Duration,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    let mut events = 0;
    while events < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.recv_within(left).await {
            Some(Received::Text(frame)) if frame["type"] == "gap" => {
                seen.push(format!(
                    "gap:{}",
                    frame["reason"].as_str().unwrap_or_default()
                ));
            }
            Some(Received::Text(frame)) if frame.get("event_type").is_some() => {
                let id = frame["data"]["id"].as_str().unwrap_or_default().to_owned();
                if id.starts_with(prefix) {
                    events += 1;
                }
                seen.push(id);
            }
            Some(Received::Close(code, reason)) => {
                seen.push(format!("closed {code:?} {reason}"));
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    seen
}

in_both_worlds! {
async fn a_log_far_smaller_than_its_traffic_ends_no_term_and_loses_nothing_untold(world) {
    let fleet = Fleet::start_env(
        world,
        2,
        TTL,
        vec![("FANOUT_CLUSTER__LOG_MAX_BYTES", (2 << 20).to_string())],
    )
    .await;
    let c = tutorial_customer();
    let mut clients = [
        watcher(fleet.node(0), c).await,
        watcher(fleet.node(1), c).await,
    ];
    fleet.settled(c).await;
    // About 22 MB through a log of 2 MB: eleven times over, in rounds a session's queue
    // takes whole.
    let rounds = 100;
    let per_round = 200;
    for round in 0..rounds {
        let prefix = format!("r{round}-");
        let want: Vec<String> = (0..per_round).map(|i| format!("{prefix}{i}")).collect();
        let [a, b] = &mut clients;
        let events = big_calls(c, &prefix, per_round, 1000);
        let (_, seen_a, seen_b) = tokio::join!(
            publish(fleet.sim_addr(), &events),
            ids_and_gaps(a, &prefix, per_round as usize, WAIT * 2),
            ids_and_gaps(b, &prefix, per_round as usize, WAIT * 2),
        );
        assert_eq!(seen_a, want, "round {round}: every event, in order, no gap");
        assert_eq!(seen_b, want, "round {round}: every event, in order, no gap");
    }
    let js = async_nats::jetstream::new(async_nats::connect(fleet.nats.url()).await.expect("nats"));
    let mut log = js.get_stream("FANOUT_EVENTS").await.expect("the log");
    let state = log.info().await.expect("info").state.clone();
    assert!(state.bytes <= 2 << 20, "the log keeps its limit: {state:?}");
    assert!(state.first_sequence > 1, "and evicted its oldest: {state:?}");
    for i in 0..2 {
        let metrics = metrics_text(fleet.node(i).admin).await;
        assert_eq!(counter(&metrics, "fanout_cluster_takeovers_total"), 0.0, "node {i}");
        assert_eq!(counter(&metrics, "fanout_cluster_fenced_total{side=\"store\"}"), 0.0, "node {i}");
    }
    assert_eq!(fleet.upstreams(c).await, connections_in(world, c, &[&watched(c)]) as u64);
}
}

in_both_worlds! {
async fn a_purge_of_the_log_a_node_had_not_read_is_told_as_a_gap_before_the_next_event(world) {
    // One event per message, so that the paused node's reader cannot have been handed the
    // whole burst before the purge; a TTL the pause stays well within.
    let fleet = Fleet::start_env(
        world,
        2,
        Duration::from_secs(10),
        vec![("FANOUT_CLUSTER__BATCH_MAX_BYTES", "1024".to_owned())],
    )
    .await;
    let c = tutorial_customer();
    let mut clients = [
        watcher(fleet.node(0), c).await,
        watcher(fleet.node(1), c).await,
    ];
    let owner = fleet.settled(c).await;
    let follower = 1 - owner;
    fleet.signal(follower, "-STOP");
    let burst = 3000;
    let events = big_calls(c, "p", burst, 800);
    let (_, owner_saw) = tokio::join!(
        publish(fleet.sim_addr(), &events),
        ids_and_gaps(&mut clients[owner], "p", burst as usize, WAIT * 3),
    );
    assert_eq!(owner_saw.len(), burst as usize, "the owner's node got the burst");
    let js = async_nats::jetstream::new(async_nats::connect(fleet.nats.url()).await.expect("nats"));
    let log = js.get_stream("FANOUT_EVENTS").await.expect("the log");
    log.purge().await.expect("purged");
    fleet.signal(follower, "-CONT");
    publish(fleet.sim_addr(), &calls(c, "after", 5)).await;
    let seen = ids_and_gaps(&mut clients[follower], "after", 5, WAIT * 3).await;
    let burst_seen = seen.iter().filter(|id| id.starts_with('p')).count();
    assert!(burst_seen < burst as usize, "the purge cost the paused node events: {burst_seen}");
    // What it got of the burst, in order, then one gap before anything after the loss.
    let first_gap = seen.iter().position(|id| id.starts_with("gap")).expect("a gap");
    for (i, id) in seen[..first_gap].iter().enumerate() {
        assert_eq!(id, &format!("p{i}"), "in order up to the loss");
    }
    assert_eq!(
        &seen[first_gap + 1..],
        &expected("after", 5)[..],
        "after the gap, only what came after the loss: {seen:?}"
    );
    let owner_after = ids_and_gaps(&mut clients[owner], "after", 5, WAIT).await;
    assert_eq!(owner_after, expected("after", 5), "the owner's node lost nothing");
}
}

/// Nodes on three clustered nats-servers, the log and buckets with three replicas, and
/// leases of the recommended 15 s (a replicated bucket elects a new leader when a server
/// goes, which shorter leases do not outlast).
async fn replicated_fleet(world: World, degraded_after: &'static str) -> Fleet {
    let serial = SERIAL.lock().await;
    let mut cluster = fanout_test_support::nats::NatsCluster::start(3).await;
    let url = cluster.urls();
    let first = cluster.servers.remove(0);
    let mut fleet = Fleet::start_on(
        serial,
        world,
        0,
        Duration::from_secs(15),
        degraded_after,
        first,
        url,
        vec![("FANOUT_CLUSTER__REPLICAS", "3".to_owned())],
    )
    .await;
    fleet.more = cluster.servers;
    for i in 0..2 {
        let node = fleet.spawn(i).await;
        fleet.nodes.push(Some(node));
    }
    fleet
}

in_both_worlds! {
async fn on_three_replicated_nats_servers_a_burst_ends_no_term_and_loses_nothing(world) {
    let fleet = replicated_fleet(world, "5s").await;
    let js = async_nats::jetstream::new(async_nats::connect(fleet.nats.url()).await.expect("nats"));
    let c = tutorial_customer();
    let mut clients = [
        watcher(fleet.node(0), c).await,
        watcher(fleet.node(1), c).await,
    ];
    fleet.settled(c).await;
    let mut log = js.get_stream("FANOUT_EVENTS").await.expect("the log");
    assert_eq!(log.info().await.expect("info").config.num_replicas, 3);
    let [a, b] = &mut clients;
    let events = calls(c, "burst", 2000);
    let (_, seen_a, seen_b) = tokio::join!(
        publish(fleet.sim_addr(), &events),
        ids_and_gaps(a, "burst", 2000, WAIT * 3),
        ids_and_gaps(b, "burst", 2000, WAIT * 3),
    );
    for seen in [seen_a, seen_b] {
        assert_eq!(seen, expected("burst", 2000), "every event of the burst, no gap");
    }
    for i in 0..2 {
        let metrics = metrics_text(fleet.node(i).admin).await;
        assert_eq!(counter(&metrics, "fanout_cluster_takeovers_total"), 0.0, "node {i}");
        assert_eq!(counter(&metrics, "fanout_cluster_fenced_total{side=\"store\"}"), 0.0, "node {i}");
    }
}
}

in_both_worlds! {
async fn one_nats_server_of_three_killed_costs_at_most_a_told_gap_and_no_degraded_mode(world) {
    let mut fleet = replicated_fleet(world, "5s").await;
    let c = tutorial_customer();
    let mut clients = [
        watcher(fleet.node(0), c).await,
        watcher(fleet.node(1), c).await,
    ];
    fleet.settled(c).await;
    publish(fleet.sim_addr(), &calls(c, "before", 20)).await;
    for client in &mut clients {
        assert_eq!(ids_and_gaps(client, "before", 20, WAIT).await, expected("before", 20));
    }
    fleet.nats.stop();
    // Events go on while the nodes and NATS find each other again.
    let rounds = 20;
    for round in 0..rounds {
        publish(fleet.sim_addr(), &calls(c, &format!("k{round}-"), 5)).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    publish(fleet.sim_addr(), &calls(c, "last", 5)).await;
    for (i, client) in clients.iter_mut().enumerate() {
        let seen = ids_and_gaps(client, "last", 5, WAIT * 3).await;
        // Every event of every round arrives, or a gap comes before the first after a loss.
        let mut expecting: Vec<String> = (0..rounds)
            .flat_map(|r| (0..5).map(move |n| format!("k{r}-{n}")))
            .collect();
        expecting.extend(expected("last", 5));
        let mut at = 0;
        let mut gap_open = false;
        for id in &seen {
            if id.starts_with("gap") {
                gap_open = true;
                continue;
            }
            let found = expecting[at..].iter().position(|e| e == id).map(|p| p + at);
            let found = found.unwrap_or_else(|| panic!("node {i}: {id} out of order in {seen:?}"));
            assert!(found == at || gap_open, "node {i}: lost {:?} untold before {id}: {seen:?}", &expecting[at..found]);
            at = found + 1;
            gap_open = false;
        }
        if at != expecting.len() {
            for n in 0..2 {
                let metrics = metrics_text(fleet.node(n).admin).await;
                let cluster: Vec<&str> = metrics.lines().filter(|l| l.starts_with("fanout_cluster") || l.starts_with("fanout_events")).collect();
                eprintln!("node {n}: {cluster:#?}\n{}", fleet.customer(n, c).await);
            }
        }
        assert_eq!(at, expecting.len(), "node {i}: the last events arrived: {seen:?}");
        let metrics = metrics_text(fleet.node(i).admin).await;
        assert_eq!(counter(&metrics, "fanout_cluster_degraded"), 0.0, "node {i}");
    }
    // No node served on its own meanwhile: no session was told `cluster_degraded`.
    for i in 0..2 {
        let metrics = metrics_text(fleet.node(i).admin).await;
        assert_eq!(
            counter(&metrics, "fanout_gaps_sent_total{reason=\"cluster_degraded\"}"),
            0.0,
            "node {i}"
        );
    }
}
}
