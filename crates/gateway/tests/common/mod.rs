//! A gateway in front of a simulator, both on loopback, for the integration tests.

#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod process;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fanout_gateway::Gateway;
use fanout_gateway::config::Config;
use fanout_test_support::*;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use voipbin_sim::{SimConfig, Simulator};

/// An access key the simulator knows, for the tutorial customer.
pub const KEY: &str = "vb_0123456789abcdefghijklmnopqrstuv";

pub struct Stack {
    pub sim: Arc<Simulator>,
    pub gateway: Option<Gateway>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    sim_cancel: CancellationToken,
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

/// A service token: a project super-admin of the tutorial customer.
pub fn service_token() -> String {
    agent_token(
        SECRET,
        tutorial_customer(),
        Uuid::new_v4(),
        perm::PROJECT_SUPER_ADMIN,
        &far_future(),
    )
}

pub fn test_config(sim: &Simulator) -> Config {
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
    // The simulator applies a subscribe before it reads the next frame.
    config.upstream.subscribe_settle = Duration::ZERO;
    config.upstream.backoff_base = Duration::from_millis(20);
    config.upstream.backoff_cap = Duration::from_millis(200);
    config.shutdown.drain_timeout = Duration::from_secs(3);
    config
}

pub async fn start_sim(
    configure: impl FnOnce(&mut SimConfig),
) -> (Arc<Simulator>, CancellationToken) {
    init_tracing();
    let mut config = SimConfig::new(SECRET);
    config.access_keys = vec![(KEY.to_owned(), tutorial_customer())];
    configure(&mut config);
    let cancel = CancellationToken::new();
    let sim = Simulator::start(config, "127.0.0.1:0".parse().expect("addr"), cancel.clone())
        .await
        .expect("simulator starts");
    (sim, cancel)
}

pub async fn start_with(
    sim_configure: impl FnOnce(&mut SimConfig),
    configure: impl FnOnce(&mut Config),
) -> Stack {
    let (sim, sim_cancel) = start_sim(sim_configure).await;
    let mut config = test_config(&sim);
    configure(&mut config);
    config.validate().expect("valid test configuration");
    let gateway = Gateway::start(config).await.expect("gateway starts");
    Stack {
        addr: gateway.local_addr(),
        admin: gateway.admin_addr(),
        sim,
        gateway: Some(gateway),
        sim_cancel,
    }
}

pub async fn start() -> Stack {
    start_with(|_| {}, |_| {}).await
}

pub fn call(customer: Uuid, id: &str, owner: Option<Uuid>) -> Value {
    let mut data = json!({"id": id, "customer_id": customer, "status": "ringing"});
    if let Some(owner) = owner {
        data["owner_type"] = json!("agent");
        data["owner_id"] = json!(owner);
    }
    json!({"event_type": "call_ringing", "data": data})
}

/// Waits until the simulator holds `count` subscriptions for `customer` (the gateway's
/// upstream has subscribed).
pub async fn upstream_subscriptions(stack: &Stack, customer: Uuid, count: usize) {
    sim_subscriptions(stack.sim_addr(), customer, count).await;
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

/// `/_sim/drop?{query}`, which must have acted on one connection (`{answer: 1}`).
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
    assert_eq!(
        (status, body[answer].as_u64()),
        (hyper::StatusCode::OK, Some(1))
    );
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
