//! VoIPBIN misbehaving: a stalled upstream found by its pong deadline, an outage that
//! readiness reports and that ends with every customer back within the back-off cap, and
//! sessions told of what they may have missed with one `gap` frame before the next event.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use fanout_gateway::Gateway;
use fanout_test_support::*;
use hyper::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use voipbin_sim::{SimConfig, Simulator};

fn timestamp(value: &Value) -> SystemTime {
    fanout_protocol::timestamp::parse(value.as_str().expect("a string")).expect("VoIPBIN's layout")
}

/// The next text frame must be one gap frame for an upstream reconnect; answers it.
async fn expect_gap(client: &mut Client) -> Value {
    let gap = client.recv_json().await;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["reason"], "upstream_reconnect");
    assert!(gap.get("event_type").is_none());
    assert!(
        timestamp(&gap["since"]) <= timestamp(&gap["until"]),
        "{gap}"
    );
    gap
}

#[tokio::test]
async fn a_stalled_upstream_is_found_by_its_pong_deadline_and_sessions_hear_of_the_gap() {
    let stack = start_with(
        |_| {},
        |config| {
            config.upstream.ping_interval = Duration::from_millis(500);
            config.upstream.pong_timeout = Duration::from_secs(2);
            // Only the pong deadline can find this stall in time.
            config.upstream.idle_timeout = Duration::from_secs(600);
        },
    )
    .await;
    let c = tutorial_customer();
    let topic = format!("customer_id:{c}:call:*");
    let mut first = Client::connect_token(stack.addr, &admin_token(c)).await;
    let mut second = Client::connect_token(stack.addr, &admin_token(c)).await;
    first.subscribe_synced(&[&topic]).await;
    second
        .subscribe_synced(&[&format!("customer_id:{c}")])
        .await;
    upstream_subscriptions(&stack, c, 2).await;
    publish_events(&stack, &call(c, "before", None)).await;
    assert_eq!(first.recv_event().await["data"]["id"], "before");
    assert_eq!(second.recv_event().await["data"]["id"], "before");
    let stalled_at = SystemTime::now();
    let before = stall_upstream(&stack, c, 30_000).await;
    upstream_replaced(&stack, c, before, 2).await;
    eprintln!(
        "stalled upstream replaced after {:?}",
        stalled_at.elapsed().unwrap_or_default()
    );
    // Each session: one gap, then the next event; the gap starts no later than the stall.
    for client in [&mut first, &mut second] {
        let gap = expect_gap(client).await;
        assert!(
            timestamp(&gap["since"]) <= stalled_at + Duration::from_millis(1),
            "{gap}"
        );
    }
    publish_events(&stack, &call(c, "after", None)).await;
    assert_eq!(first.recv_event().await["data"]["id"], "after");
    assert_eq!(second.recv_event().await["data"]["id"], "after");
    first.expect_silence(Duration::from_millis(300)).await;
    let metrics = metrics_text(stack.admin).await;
    assert!(
        metrics.contains("fanout_upstream_pong_timeouts_total"),
        "{metrics}"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn after_an_outage_readiness_fails_then_every_customer_is_back_within_the_backoff_cap() {
    init_tracing();
    let sim_config = || {
        let mut config = SimConfig::new(SECRET);
        config.access_keys = vec![(KEY.to_owned(), tutorial_customer())];
        config
    };
    let cancel = CancellationToken::new();
    let sim = Simulator::start(
        sim_config(),
        "127.0.0.1:0".parse().expect("addr"),
        cancel.clone(),
    )
    .await
    .expect("simulator starts");
    let sim_addr = sim.local_addr();
    let mut config = test_config(&sim);
    // The shipped back-off; readiness gives up after two seconds without an upstream.
    let defaults = fanout_gateway::config::Config::default();
    config.upstream.backoff_base = defaults.upstream.backoff_base;
    config.upstream.backoff_cap = defaults.upstream.backoff_cap;
    config.upstream.unready_after = Duration::from_secs(2);
    let gateway = Gateway::start(config).await.expect("gateway starts");
    let admin = gateway.admin_addr();
    let customers: Vec<_> = (0..3).map(|_| uuid::Uuid::new_v4()).collect();
    let mut clients = Vec::new();
    for customer in &customers {
        let mut client = Client::connect_token(gateway.local_addr(), &admin_token(*customer)).await;
        client
            .subscribe_synced(&[&format!("customer_id:{customer}:call:*")])
            .await;
        clients.push(client);
    }
    let subscribed = |sim_addr| {
        let customers = customers.clone();
        async move {
            let stats = sim_stats(sim_addr).await;
            customers.iter().all(|c| {
                stats["customers"][c.to_string()]["subscriptions"]
                    .as_array()
                    .is_some_and(|s| s.len() == 1)
            })
        }
    };
    eventually("every customer's upstream", || subscribed(sim_addr)).await;
    let (status, body) = http(admin, "GET", "/readyz", None).await;
    assert_eq!(
        (status, body.clone()),
        (StatusCode::OK, json!({"ready":true,"reasons":[]})),
        "{body}"
    );

    // VoIPBIN goes away for ten seconds.
    cancel.cancel();
    drop(sim);
    eventually("/readyz to fail for want of an upstream", || async move {
        let (status, body) = http(admin, "GET", "/readyz", None).await;
        status == StatusCode::SERVICE_UNAVAILABLE
            && body == json!({"ready":false,"reasons":["no_upstream"]})
    })
    .await;
    let (status, _) = http(admin, "GET", "/healthz", None).await;
    assert_eq!(status, StatusCode::OK, "alive all the same");
    tokio::time::sleep(Duration::from_secs(8)).await;
    let cancel = CancellationToken::new();
    let _sim: Arc<Simulator> = Simulator::start(sim_config(), sim_addr, cancel.clone())
        .await
        .expect("simulator restarts on the same address");
    // Back within the ten seconds `eventually` waits: the cap is five.
    let back = std::time::Instant::now();
    eventually("every customer resubscribed", || subscribed(sim_addr)).await;
    eprintln!(
        "every customer resubscribed {:?} after VoIPBIN came back",
        back.elapsed()
    );
    eventually("/readyz to recover", || async move {
        http(admin, "GET", "/readyz", None).await.0 == StatusCode::OK
    })
    .await;
    for (client, customer) in clients.iter_mut().zip(&customers) {
        expect_gap(client).await;
        publish(sim_addr, &call(*customer, "back", None)).await;
        assert_eq!(client.recv_event().await["data"]["id"], "back");
    }
    gateway.shutdown().await;
    cancel.cancel();
}
