//! The real `fanout-gateway` binary: start-up, SIGTERM, configuration errors, and the
//! tutorial's Python and Node examples (installed by `.ci/run`) through it.

#[macro_use]
mod common;

use std::time::Duration;

use common::process::*;
use common::*;
use fanout_test_support::*;
use hyper::StatusCode;
use serde_json::{Value, json};
use tokio::process::Command;

#[tokio::test]
async fn sigterm_closes_sessions_with_1001_and_exits_zero() {
    let (sim, _cancel) = start_sim(World::Voipbin, |_| {}).await;
    let mut gateway = spawn_gateway(sim.local_addr(), &[]).await;
    let c = tutorial_customer();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = Client::connect_token(gateway.addr, &admin_token(c)).await;
        client
            .subscribe_synced(&[&format!("customer_id:{c}:call:*")])
            .await;
        clients.push(client);
    }
    let addr = sim.local_addr();
    eventually("the upstream subscription", || async move {
        sim_stats(addr).await["customers"][c.to_string()]["subscriptions"]
            .as_array()
            .is_some_and(|s| s.len() == 1)
    })
    .await;
    publish(sim.local_addr(), &call(c, "k1", None)).await;
    for client in &mut clients {
        assert_eq!(client.recv_event().await["data"]["id"], "k1");
    }
    let (status, _) = http(gateway.admin, "GET", "/readyz", None).await;
    assert_eq!(status, StatusCode::OK);
    sigterm(&gateway.child);
    for client in &mut clients {
        let (code, reason) = client.recv_close().await;
        assert_eq!(
            (code, reason.as_str()),
            (Some(1001), "server shutting down")
        );
    }
    let status = tokio::time::timeout(WAIT, gateway.child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert_eq!(status.code(), Some(0));
    eventually("the upstream to be closed", || async move {
        sim_stats(addr).await["connections"] == 0
    })
    .await;
}

#[tokio::test]
async fn invalid_configuration_exits_64_before_binding() {
    let output = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("FANOUT_JWT_SECRET")
        .env_remove("FANOUT_UPSTREAM_TOKEN")
        .env("FANOUT_SESSION__MAX_TOPICS", "0")
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for problem in ["jwt_secret", "upstream credential", "session.max_topics"] {
        assert!(
            stderr.contains(problem),
            "{problem} not reported in:\n{stderr}"
        );
    }
    let output = Command::new(BIN)
        .args(["config", "default"])
        .output()
        .await
        .expect("runs");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    let parsed: toml::Table = text.parse().expect("TOML");
    assert_eq!(parsed["listen"].as_str(), Some("127.0.0.1:8080"));
    assert_eq!(parsed["session"]["ping_interval"].as_str(), Some("10s"));
}

/// The tutorial's client program, unchanged but for its URL and token, against the real
/// binary in front of a simulator playing `world`: it prints each of `expectations` once,
/// after `events` were published (`sent` frames upstream).
async fn tutorial_through_gateway(
    world: World,
    which: TutorialClient,
    expectations: &[&str],
    events: Value,
    sent: u64,
) {
    let (sim, _cancel) = start_sim(world, |_| {}).await;
    let matching = world.matching().as_str();
    let gateway = spawn_gateway(sim.local_addr(), &[("FANOUT_UPSTREAM__MATCHING", matching)]).await;
    let mut run = TutorialRun::start(which, gateway.addr, &admin_token(tutorial_customer()))
        .await
        .expect("tutorial client starts (installed by .ci/run)");
    run.expect_line("WebSocket connection established").await;
    let addr = sim.local_addr();
    eventually(
        "the tutorial's three subscriptions upstream",
        || async move {
            sim_stats(addr).await["customers"][TUTORIAL_CUSTOMER]["subscriptions"]
                .as_array()
                .is_some_and(|s| s.len() == 3)
        },
    )
    .await;
    assert_eq!(publish(sim.local_addr(), &events).await, sent);
    for line in expectations {
        run.expect_line(line).await;
    }
    // Each once, however many copies VoIPBIN sent.
    let printed = run.printed(Duration::from_millis(300)).await;
    for line in expectations {
        let times = printed.iter().filter(|l| l == line).count();
        assert_eq!(times, 1, "{line:?} printed {times} times: {printed:#?}");
    }
    drop(gateway);
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The seed's events as VoIPBIN's code sends them (bare objects): a call ringing, a message,
/// a flow step, and a queue call that none of the tutorial's patterns selects.
fn voipbin_events() -> Value {
    let c = TUTORIAL_CUSTOMER;
    let at = "2026-12-07T10:00:00.000000Z";
    json!([
        {"event_type":"call_ringing","data":{"id":"a1b2c3d4-0000-4000-8000-000000000001","customer_id":c,"status":"ringing","tm_ringing":at,"tm_update":at}},
        {"event_type":"message_created","data":{"id":"m1","customer_id":c,"type":"sms","text":"hi there","source":{"type":"tel","target":"+15551112222"}}},
        {"event_type":"activeflow_updated","data":{"id":"f1","customer_id":c,"status":"running","current_action":{"type":"talk"}}},
        {"event_type":"queuecall_created","data":{"id":"q1","customer_id":c,"status":"initiating"}},
    ])
}

#[tokio::test]
async fn python_tutorial_client_through_the_gateway() {
    // VoIPBIN's code: each of the seed's three patterns gets its events once, typed as
    // VoIPBIN types them (the tutorial's `call.status` cases never match real events).
    tutorial_through_gateway(
        World::Voipbin,
        TutorialClient::Python,
        &[
            "Subscribed to events",
            "Received event: call_ringing",
            "Received event: message_updated",
            "Received event: activeflow_updated",
        ],
        voipbin_events(),
        6,
    )
    .await;
    // The tutorial's world, with the tutorial's own event types.
    let c = TUTORIAL_CUSTOMER;
    let events = json!([
        {"event_type":"call.status","data":{"id":"a1b2c3d4","customer_id":c,"status":"answered"}},
        {"event_type":"message.received","data":{"id":"m1","customer_id":c,"text":"hi there","source":{"target":"+15551112222"}}},
        {"event_type":"activeflow.updated","data":{"id":"f1","customer_id":c,"current_action":{"type":"talk"}}},
        {"event_type":"queue.joined","data":{"id":"q1","customer_id":c}},
    ]);
    tutorial_through_gateway(
        World::Tutorial,
        TutorialClient::Python,
        &[
            "Subscribed to events",
            "Received event: call.status",
            "Call a1b2c3d4 status: answered",
            "Message from +15551112222: hi there",
            "Activeflow f1 executing: talk",
        ],
        events,
        3,
    )
    .await;
}

#[tokio::test]
async fn node_tutorial_client_through_the_gateway() {
    // VoIPBIN's code: `…:queue:*` is `…:queue:` upstream, which no queue call matches.
    tutorial_through_gateway(
        World::Voipbin,
        TutorialClient::Node,
        &[
            "Subscribed to events",
            "Received event: call_ringing",
            "Received event: message_updated",
        ],
        voipbin_events(),
        4,
    )
    .await;
    let c = TUTORIAL_CUSTOMER;
    let events = json!([
        {"event_type":"call.status","data":{"id":"a1b2c3d4","customer_id":c,"status":"ringing"}},
        {"event_type":"queue.joined","data":{"id":"q1","customer_id":c,"call_id":"k9","queue_id":"q1"}},
        {"event_type":"message.received","data":{"id":"m1","customer_id":c,"text":"hello","source":{"target":"+15553334444"}}},
        {"event_type":"activeflow.updated","data":{"id":"f1","customer_id":c}},
    ]);
    tutorial_through_gateway(
        World::Tutorial,
        TutorialClient::Node,
        &[
            "Subscribed to events",
            "Call a1b2c3d4: ringing",
            "Caller k9 joined queue q1",
            "Notifying agents about queue entry",
            "Message: hello",
            "Processing message from +15553334444",
        ],
        events,
        3,
    )
    .await;
}
