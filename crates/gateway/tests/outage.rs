//! VoIPBIN misbehaving, in both of the simulator's worlds: a stalled upstream found by its
//! pong deadline, an outage that readiness reports and that ends with every customer back
//! within the back-off cap, and sessions told of what they may have missed with a `gap`
//! frame (one per upstream connection that lost events) before the next event.

#[macro_use]
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

/// Checks one gap frame of an upstream reconnect.
fn check_gap(gap: &Value) {
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["reason"], "upstream_reconnect");
    assert!(gap.get("event_type").is_none());
    assert!(
        timestamp(&gap["since"]) <= timestamp(&gap["until"]),
        "{gap}"
    );
}

/// The gaps before the next event (at least one, checked), and the event.
async fn gaps_then_event(client: &mut Client) -> (Vec<Value>, Value) {
    let mut gaps = Vec::new();
    loop {
        let frame = client.recv_json().await;
        if frame["type"] == "gap" {
            check_gap(&frame);
            gaps.push(frame);
            continue;
        }
        assert!(!gaps.is_empty(), "an event before any gap: {frame}");
        assert!(frame.get("event_type").is_some(), "not an event: {frame}");
        return (gaps, frame);
    }
}

in_both_worlds! {
async fn a_stalled_upstream_is_found_by_its_pong_deadline_and_sessions_hear_of_the_gap(world) {
    let stack = start_in_with(
        world,
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
    let whole = format!("customer_id:{c}");
    first.subscribe_synced(&[&topic]).await;
    second.subscribe_synced(&[&whole]).await;
    upstream_carries(&stack, c, &[&topic, &whole]).await;
    let connections = upstream_connections(&stack, c).await;
    publish_events(&stack, &call(c, "before", None)).await;
    assert_eq!(first.recv_event().await["data"]["id"], "before");
    assert_eq!(second.recv_event().await["data"]["id"], "before");
    let stalled_at = SystemTime::now();
    let before = stall_upstream(&stack, c, 30_000).await;
    // Every connection replaced, and covered again (its gap told then).
    let addr = stack.sim_addr();
    eventually("every stalled connection replaced", || async move {
        sim_stats(addr).await["connections_total"].as_u64().unwrap_or(0) >= before + connections
    })
    .await;
    upstream_covers(&stack, c, &[&topic, &whole]).await;
    eprintln!(
        "stalled upstream replaced after {:?}",
        stalled_at.elapsed().unwrap_or_default()
    );
    // Each session: a gap per stalled connection, then the next event; each gap starts no
    // later than the stall.
    publish_events(&stack, &call(c, "after", None)).await;
    for client in [&mut first, &mut second] {
        let (gaps, event) = gaps_then_event(client).await;
        assert_eq!(gaps.len() as u64, connections, "{gaps:?}");
        for gap in &gaps {
            assert!(
                timestamp(&gap["since"]) <= stalled_at + Duration::from_millis(1),
                "{gap}"
            );
        }
        assert_eq!(event["data"]["id"], "after");
    }
    first.expect_silence(Duration::from_millis(300)).await;
    // Counted (the metrics are the test process's: the other world's run counts too).
    assert!(metric(stack.admin, "fanout_upstream_pong_timeouts_total").await >= connections as f64);
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn after_an_outage_readiness_fails_then_every_customer_is_back_within_the_backoff_cap(world) {
    init_tracing();
    let sim_config = || {
        let mut config = SimConfig::new(SECRET).in_world(world);
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
    let mut config = test_config(&sim, world);
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
        publish(sim_addr, &call(*customer, "back", None)).await;
        let (gaps, event) = gaps_then_event(client).await;
        assert_eq!(gaps.len(), 1, "one connection, one gap");
        assert_eq!(event["data"]["id"], "back");
    }
    gateway.shutdown().await;
    cancel.cancel();
}
}
