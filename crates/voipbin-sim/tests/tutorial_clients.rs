//! The tutorial's own Python (websocket-client) and Node (`ws`) examples, unchanged but for
//! the URL, receive events published through the simulator. Both programs are installed by
//! `.ci/run`; a missing one fails this test rather than skipping it.

use std::time::Duration;

use fanout_test_support::*;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use voipbin_sim::{SimConfig, Simulator};

async fn start() -> (std::sync::Arc<Simulator>, CancellationToken) {
    init_tracing();
    let cancel = CancellationToken::new();
    let sim = Simulator::start(
        SimConfig::new(SECRET),
        "127.0.0.1:0".parse().expect("addr"),
        cancel.clone(),
    )
    .await
    .expect("simulator starts");
    (sim, cancel)
}

async fn wait_subscriptions(sim: &Simulator, count: usize) {
    let addr = sim.local_addr();
    eventually("the tutorial client to subscribe", || async move {
        sim_stats(addr).await["customers"][TUTORIAL_CUSTOMER]["subscriptions"]
            .as_array()
            .is_some_and(|s| s.len() == count)
    })
    .await;
}

#[tokio::test]
async fn python_tutorial_client_receives_events() {
    let (sim, cancel) = start().await;
    let mut run = TutorialRun::start(
        TutorialClient::Python,
        sim.local_addr(),
        &admin_token(tutorial_customer()),
    )
    .await
    .expect("python3 with websocket-client (installed by .ci/run)");
    run.expect_line("WebSocket connection established").await;
    run.expect_line("Subscribed to events").await;
    wait_subscriptions(&sim, 3).await;
    let c = TUTORIAL_CUSTOMER;
    let events = json!([
        {"event_type":"call.status","data":{"id":"a1b2c3d4","customer_id":c,"status":"answered"}},
        {"event_type":"message.received","data":{"id":"m1","customer_id":c,"text":"hi there","source":{"target":"+15551112222"}}},
        {"event_type":"activeflow.updated","data":{"id":"f1","customer_id":c,"current_action":{"type":"talk"}}},
        {"event_type":"queue.joined","data":{"id":"q1","customer_id":c}},
    ]);
    assert_eq!(publish(sim.local_addr(), &events).await, 3);
    run.expect_line("Received event: call.status").await;
    run.expect_line("Call a1b2c3d4 status: answered").await;
    run.expect_line("Message from +15551112222: hi there").await;
    run.expect_line("Activeflow f1 executing: talk").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    cancel.cancel();
}

#[tokio::test]
async fn node_tutorial_client_receives_events() {
    let (sim, cancel) = start().await;
    let mut run = TutorialRun::start(
        TutorialClient::Node,
        sim.local_addr(),
        &admin_token(tutorial_customer()),
    )
    .await
    .expect("node with ws (installed by .ci/run)");
    run.expect_line("WebSocket connection established").await;
    wait_subscriptions(&sim, 3).await;
    let c = TUTORIAL_CUSTOMER;
    let events = json!([
        {"event_type":"call.status","data":{"id":"a1b2c3d4","customer_id":c,"status":"ringing"}},
        {"event_type":"queue.joined","data":{"id":"q1","customer_id":c,"call_id":"k9","queue_id":"q1"}},
        {"event_type":"message.received","data":{"id":"m1","customer_id":c,"text":"hello","source":{"target":"+15553334444"}}},
        {"event_type":"activeflow.updated","data":{"id":"f1","customer_id":c}},
    ]);
    assert_eq!(publish(sim.local_addr(), &events).await, 3);
    run.expect_line("Call a1b2c3d4: ringing").await;
    run.expect_line("Caller k9 joined queue q1").await;
    run.expect_line("Notifying agents about queue entry").await;
    run.expect_line("Message: hello").await;
    run.expect_line("Processing message from +15553334444")
        .await;
    cancel.cancel();
}
