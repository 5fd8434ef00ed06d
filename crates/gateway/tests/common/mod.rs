//! A gateway in front of a simulator, both on loopback, for the integration tests, in
//! either of the simulator's worlds: the tutorial's (envelopes, segment matching) or
//! VoIPBIN's code as it is today (bare objects, raw prefixes, a delivery per published
//! topic). [`in_both_worlds!`] declares a test once and runs it in each.

#![allow(dead_code, unreachable_pub, missing_docs, unused_macros)]

pub mod process;

/// Declares an async test whose body runs in each world (`$world: World` inside): one test
/// per world, `<name>::tutorial` and `<name>::voipbin`.
macro_rules! in_both_worlds {
    ($(#[doc = $doc:literal])* async fn $name:ident($world:ident) $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($world: World) $body

            #[tokio::test]
            async fn tutorial() {
                run(World::Tutorial).await
            }

            #[tokio::test]
            async fn voipbin() {
                run(World::Voipbin).await
            }
        }
    };
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fanout_gateway::Gateway;
use fanout_gateway::config::Config;
use fanout_protocol::Pattern;
use fanout_protocol::prefix::{Label, Prefix};
use fanout_test_support::*;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
pub use voipbin_sim::World;
use voipbin_sim::{SimConfig, Simulator};

/// An access key the simulator knows, for the tutorial customer.
pub const KEY: &str = "vb_0123456789abcdefghijklmnopqrstuv";

pub struct Stack {
    pub sim: Arc<Simulator>,
    pub gateway: Option<Gateway>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub world: World,
    sim_cancel: CancellationToken,
}

/// What `customer`'s upstream subscribes to, in `world`, for sessions holding `patterns`
/// (placed in the customer's hub): each prefix once, sorted.
pub fn prefixes_in(world: World, customer: Uuid, patterns: &[&str]) -> Vec<Prefix> {
    let mut prefixes: Vec<Prefix> = patterns
        .iter()
        .map(|p| Pattern::parse(p).expect("a pattern"))
        .map(|p| Prefix::for_pattern(&p, customer, world.matching()))
        .collect();
    prefixes.sort();
    prefixes.dedup();
    prefixes
}

/// The connections those prefixes take: one per label.
pub fn connections_in(world: World, customer: Uuid, patterns: &[&str]) -> usize {
    let mut labels: Vec<Label> = prefixes_in(world, customer, patterns)
        .iter()
        .map(|p| p.label().clone())
        .collect();
    labels.dedup();
    labels.len()
}

impl Stack {
    pub fn sim_addr(&self) -> SocketAddr {
        self.sim.local_addr()
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("running")
    }

    pub async fn shutdown(mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await;
        }
        self.sim_cancel.cancel();
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.sim_cancel.cancel();
    }
}

pub fn test_config(sim: &Simulator, world: World) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        admin_listen: "127.0.0.1:0".parse().expect("addr"),
        jwt_secret: SECRET.to_owned(),
        ..Config::default()
    };
    config.upstream.url = sim.ws_url();
    config.upstream.token = service_token();
    config.admin.token = ADMIN_TOKEN.to_owned();
    config.upstream.linger = Duration::from_millis(300);
    config.upstream.matching = world.matching();
    // The simulator applies a subscribe before it reads the next frame.
    config.upstream.subscribe_settle = Duration::ZERO;
    config.upstream.backoff_base = Duration::from_millis(20);
    config.upstream.backoff_cap = Duration::from_millis(200);
    config.shutdown.drain_timeout = Duration::from_secs(3);
    config
}

pub async fn start_sim(
    world: World,
    configure: impl FnOnce(&mut SimConfig),
) -> (Arc<Simulator>, CancellationToken) {
    init_tracing();
    let mut config = SimConfig::new(SECRET).in_world(world);
    config.access_keys = vec![(KEY.to_owned(), tutorial_customer())];
    configure(&mut config);
    let cancel = CancellationToken::new();
    let sim = Simulator::start(config, "127.0.0.1:0".parse().expect("addr"), cancel.clone())
        .await
        .expect("simulator starts");
    (sim, cancel)
}

/// A gateway in front of a simulator playing `world`, each configured further.
pub async fn start_in_with(
    world: World,
    sim_configure: impl FnOnce(&mut SimConfig),
    configure: impl FnOnce(&mut Config),
) -> Stack {
    let (sim, sim_cancel) = start_sim(world, sim_configure).await;
    let mut config = test_config(&sim, world);
    configure(&mut config);
    config.validate().expect("valid test configuration");
    let gateway = Gateway::start(config).await.expect("gateway starts");
    Stack {
        addr: gateway.local_addr(),
        admin: gateway.admin_addr(),
        sim,
        gateway: Some(gateway),
        world,
        sim_cancel,
    }
}

/// A gateway in front of a simulator playing `world`.
pub async fn start_in(world: World) -> Stack {
    start_in_with(world, |_| {}, |_| {}).await
}

/// The tutorial's world, configured further (for tests about the gateway alone).
pub async fn start_with(
    sim_configure: impl FnOnce(&mut SimConfig),
    configure: impl FnOnce(&mut Config),
) -> Stack {
    start_in_with(World::Tutorial, sim_configure, configure).await
}

/// The tutorial's world (for tests about the gateway alone).
pub async fn start() -> Stack {
    start_in(World::Tutorial).await
}

/// A step of a call's life, as VoIPBIN's call manager publishes it: the event type, and the
/// status and time field its object shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStep {
    /// `call_created`: status dialing, no update time yet.
    Created,
    /// `call_ringing`: status ringing, `tm_ringing` = `tm_update`.
    Ringing,
    /// `call_progressing`: status progressing, `tm_progressing` = `tm_update`.
    Progressing,
    /// `call_hangup`: status hangup, `tm_hangup` = `tm_update`.
    Hangup,
}

/// A call event of `customer`'s, at `step`, owned by agent `owner` if given: the object has
/// the fields VoIPBIN gives it, so that a bare copy of it tells its type.
pub fn call_at(customer: Uuid, id: &str, owner: Option<Uuid>, step: CallStep) -> Value {
    let now = fanout_protocol::timestamp::format(std::time::SystemTime::now());
    let (event_type, status, stamp) = match step {
        CallStep::Created => ("call_created", "dialing", None),
        CallStep::Ringing => ("call_ringing", "ringing", Some("tm_ringing")),
        CallStep::Progressing => ("call_progressing", "progressing", Some("tm_progressing")),
        CallStep::Hangup => ("call_hangup", "hangup", Some("tm_hangup")),
    };
    let mut data = json!({"id": id, "customer_id": customer, "status": status, "tm_create": now});
    if let Some(field) = stamp {
        data[field] = json!(now);
        data["tm_update"] = json!(now);
    }
    if let Some(owner) = owner {
        data["owner_type"] = json!("agent");
        data["owner_id"] = json!(owner);
    }
    json!({"event_type": event_type, "data": data})
}

/// A ringing call (see [`call_at`]).
pub fn call(customer: Uuid, id: &str, owner: Option<Uuid>) -> Value {
    call_at(customer, id, owner, CallStep::Ringing)
}

/// Frames the simulator sends for one event a connection's prefixes select through `topics`
/// of its published topics: one in the tutorial's world, one per topic in VoIPBIN's.
pub fn frames_per_connection(world: World, topics: usize) -> u64 {
    match world {
        World::Tutorial => 1,
        World::Voipbin => topics as u64,
    }
}

/// Waits until the simulator holds `count` subscriptions for `customer` (the gateway's
/// upstream has subscribed).
pub async fn upstream_subscriptions(stack: &Stack, customer: Uuid, count: usize) {
    sim_subscriptions(stack.sim_addr(), customer, count).await;
}

/// Waits until `customer`'s upstream carries exactly what sessions holding `patterns` need in
/// the stack's world: their prefixes, each on one connection, one connection per label.
pub async fn upstream_carries(stack: &Stack, customer: Uuid, patterns: &[&str]) {
    let expected: Vec<String> = prefixes_in(stack.world, customer, patterns)
        .iter()
        .map(|p| p.as_str().to_owned())
        .collect();
    let connections = connections_in(stack.world, customer, patterns);
    let addr = stack.sim_addr();
    let what = format!("{customer}'s upstream to carry {expected:?} on {connections} connections");
    eventually(&what, || {
        let expected = expected.clone();
        async move {
            let stats = sim_stats(addr).await;
            let entry = &stats["customers"][customer.to_string()];
            let mut held: Vec<String> = entry["subscriptions"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            held.sort();
            held == expected && entry["connections"].as_u64().unwrap_or(0) == connections as u64
        }
    })
    .await;
}

/// Waits until the simulator at `addr` holds `count` subscriptions for `customer`.
pub async fn sim_subscriptions(addr: SocketAddr, customer: Uuid, count: usize) {
    eventually(
        &format!("{count} upstream subscriptions for {customer}"),
        || async move {
            sim_stats(addr).await["customers"][customer.to_string()]["subscriptions"]
                .as_array()
                .map_or(0, Vec::len)
                == count
        },
    )
    .await;
}

pub async fn upstream_connections(stack: &Stack, customer: Uuid) -> u64 {
    sim_stats(stack.sim_addr()).await["customers"][customer.to_string()]["connections"]
        .as_u64()
        .unwrap_or(0)
}

/// Subscribes and waits until the upstream carries `upstream_count` patterns for `customer`.
pub async fn subscribe_and_wait(
    stack: &Stack,
    client: &mut Client,
    topics: &[&str],
    customer: Uuid,
    upstream_count: usize,
) {
    client.subscribe(topics).await;
    upstream_subscriptions(stack, customer, upstream_count).await;
}

/// The admin listener's `/metrics` text.
pub async fn metrics_text(admin: SocketAddr) -> String {
    let (_, body) = http(admin, "GET", "/metrics", None).await;
    body.as_str().unwrap_or_default().to_owned()
}

/// The value of the first `/metrics` line that starts with `line_start` (a name and its
/// labels), 0 when there is none.
pub async fn metric(admin: SocketAddr, line_start: &str) -> f64 {
    metrics_text(admin)
        .await
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The customer's covered upstream prefixes, as `/customers` shows them.
pub async fn covered_now(stack: &Stack, customer: Uuid) -> Vec<String> {
    let (_, body) = admin_get(stack.admin, "/customers").await;
    body["customers"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|c| c["customer_id"] == customer.to_string())
        })
        .and_then(|c| c["covered"].as_array())
        .map(|p| {
            p.iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until every prefix that sessions holding `patterns` need is covered (its
/// subscription known applied): after a reconnect, the gap has been told then.
pub async fn upstream_covers(stack: &Stack, customer: Uuid, patterns: &[&str]) {
    let expected: Vec<String> = prefixes_in(stack.world, customer, patterns)
        .iter()
        .map(|p| p.as_str().to_owned())
        .collect();
    let what = format!("{customer}'s upstream to cover {expected:?}");
    eventually(&what, || {
        let expected = expected.clone();
        async move {
            let covered = covered_now(stack, customer).await;
            expected.iter().all(|p| covered.contains(p))
        }
    })
    .await;
}

/// Stalls `customer`'s upstream in the simulator for `ms` and answers how many connections
/// the simulator had accepted before, to wait for the replacement with
/// [`upstream_replaced`].
pub async fn stall_upstream(stack: &Stack, customer: Uuid, ms: u64) -> u64 {
    sim_drop(
        stack,
        &format!("customer_id={customer}&stall_ms={ms}"),
        "stalled",
    )
    .await
}

/// Drops `customer`'s upstream in the simulator (no close frame) and answers how many
/// connections the simulator had accepted before, for [`upstream_replaced`].
pub async fn drop_upstream(stack: &Stack, customer: Uuid) -> u64 {
    sim_drop(stack, &format!("customer_id={customer}"), "dropped").await
}

/// `/_sim/drop?{query}`, which must have acted on a connection at least
/// (`{answer: N}`, N > 0).
async fn sim_drop(stack: &Stack, query: &str, answer: &str) -> u64 {
    let before = sim_stats(stack.sim_addr()).await["connections_total"]
        .as_u64()
        .unwrap_or(0);
    let (status, body) = http(
        stack.sim_addr(),
        "POST",
        &format!("/_sim/drop?{query}"),
        None,
    )
    .await;
    assert_eq!(status, hyper::StatusCode::OK);
    assert!(body[answer].as_u64().is_some_and(|n| n > 0), "{body}");
    before
}

/// Waits until a connection newer than `before` carries `subscriptions` patterns (at
/// least) for `customer`.
pub async fn upstream_replaced(stack: &Stack, customer: Uuid, before: u64, subscriptions: usize) {
    let addr = stack.sim_addr();
    eventually("the upstream replaced and subscribed", || async move {
        let stats = sim_stats(addr).await;
        stats["connections_total"].as_u64().unwrap_or(0) > before
            && stats["customers"][customer.to_string()]["subscriptions"]
                .as_array()
                .is_some_and(|s| s.len() >= subscriptions)
    })
    .await;
}

/// Publishes through the simulator and returns how many frames it sent upstream.
pub async fn publish_events(stack: &Stack, events: &Value) -> u64 {
    publish(stack.sim_addr(), events).await
}

/// The acceptance scenario, on one node or spread over several: sessions of
/// customer C holding the seed tutorial's three patterns, `call:*` alone, an agent's own
/// calls, hang-ups alone, and a session of another customer D; each must get exactly its
/// events of C's, once.
pub struct SeedSessions {
    pub customer: Uuid,
    pub agent: Uuid,
    seed: Client,
    calls: Client,
    own: Client,
    hangups: Client,
    other: Client,
}

impl SeedSessions {
    /// What the sessions of C hold, all together.
    pub fn patterns(customer: Uuid, agent: Uuid) -> Vec<String> {
        vec![
            format!("customer_id:{customer}:call:*"),
            format!("customer_id:{customer}:message:*"),
            format!("customer_id:{customer}:activeflow:*"),
            format!("agent_id:{agent}:call:*"),
            format!("customer_id:{customer}:call:call_hangup"),
        ]
    }

    /// Opens the sessions, taking `nodes` in turn.
    pub async fn open(nodes: &[SocketAddr]) -> SeedSessions {
        let customer = tutorial_customer();
        let agent = Uuid::new_v4();
        let other_customer = Uuid::new_v4();
        let node = |i: usize| nodes[i % nodes.len()];
        let p = Self::patterns(customer, agent);
        let mut seed = Client::connect_token(node(0), &admin_token(customer)).await;
        seed.subscribe_synced(&[&p[0], &p[1], &p[2]]).await;
        let mut calls = Client::connect_token(node(1), &admin_token(customer)).await;
        calls.subscribe_synced(&[&p[0]]).await;
        let agent_token = agent_token(SECRET, customer, agent, perm::CUSTOMER_AGENT, &far_future());
        let mut own = Client::connect_token(node(2), &agent_token).await;
        own.subscribe_synced(&[&p[3]]).await;
        let mut hangups = Client::connect_token(node(3), &admin_token(customer)).await;
        hangups.subscribe_synced(&[&p[4]]).await;
        let mut other = Client::connect_token(node(4), &admin_token(other_customer)).await;
        other
            .subscribe_synced(&[
                &format!("customer_id:{other_customer}:call:*"),
                &format!("customer_id:{other_customer}:message:*"),
                &format!("customer_id:{other_customer}:activeflow:*"),
            ])
            .await;
        SeedSessions {
            customer,
            agent,
            seed,
            calls,
            own,
            hangups,
            other,
        }
    }

    /// Publishes C's events through the simulator at `sim` and checks what each session got.
    pub async fn check(mut self, sim: SocketAddr) {
        let c = self.customer;
        let someone = Uuid::new_v4();
        let mut events = Vec::new();
        for step in [
            CallStep::Created,
            CallStep::Ringing,
            CallStep::Progressing,
            CallStep::Hangup,
        ] {
            events.push(call_at(c, "k-own", Some(self.agent), step));
            events.push(call_at(c, "k-theirs", Some(someone), step));
        }
        events.push(json!({"event_type":"message_created","data":{"id":"m1","customer_id":c,"type":"sms","text":"hello"}}));
        events.push(json!({"event_type":"activeflow_updated","data":{"id":"f1","customer_id":c,"status":"running"}}));
        events.push(json!({"event_type":"queuecall_created","data":{"id":"q1","customer_id":c,"status":"initiating"}}));
        publish(sim, &Value::Array(events)).await;
        let call_types = [
            "call_created",
            "call_ringing",
            "call_progressing",
            "call_hangup",
        ];
        let mut all_calls: Vec<(String, String)> = Vec::new();
        for id in ["k-own", "k-theirs"] {
            for t in call_types {
                all_calls.push((id.to_owned(), t.to_owned()));
            }
        }
        let mut seed_expected = all_calls.clone();
        seed_expected.push(("m1".into(), "message".into()));
        seed_expected.push(("f1".into(), "activeflow".into()));
        let own_expected: Vec<(String, String)> = all_calls
            .iter()
            .filter(|(id, _)| id == "k-own")
            .cloned()
            .collect();
        let hangups_expected: Vec<(String, String)> = all_calls
            .iter()
            .filter(|(_, t)| t == "call_hangup")
            .cloned()
            .collect();
        for (name, client, expected) in [
            ("seed", &mut self.seed, seed_expected),
            ("calls", &mut self.calls, all_calls.clone()),
            ("own", &mut self.own, own_expected),
            ("hangups", &mut self.hangups, hangups_expected),
        ] {
            let mut got = Vec::new();
            for _ in 0..expected.len() {
                let event = client.recv_event().await;
                let id = event["data"]["id"].as_str().unwrap_or_default().to_owned();
                let kind = event["event_type"].as_str().unwrap_or_default().to_owned();
                // Calls by their type (which the object proves, in VoIPBIN's world too),
                // the rest by their resource.
                let kind = if kind.starts_with("call_") {
                    kind
                } else {
                    kind.split('_').next().unwrap_or_default().to_owned()
                };
                got.push((id, kind));
            }
            client.expect_silence(Duration::from_millis(300)).await;
            let mut want = expected;
            got.sort();
            want.sort();
            assert_eq!(got, want, "{name}: exactly its events, once each");
        }
        self.other.expect_silence(Duration::from_millis(200)).await;
    }
}
