//! `fanout-gateway demo`'s tokens and stream work as printed.

use fanout_gateway::demo::{DEMO_CUSTOMER, Demo, DemoOptions, demo_topics};
use fanout_test_support::*;
use voipbin_sim::World;

/// The demo on free loopback ports, its stream at `event_rate` events per second.
async fn start_demo(event_rate: u32, world: World) -> Demo {
    init_tracing();
    let any = "127.0.0.1:0".parse().expect("addr");
    Demo::start(&DemoOptions {
        listen: any,
        admin_listen: any,
        sim_listen: any,
        event_rate,
        page_listen: any,
        world,
    })
    .await
    .expect("demo starts")
}

#[tokio::test]
async fn demo_tokens_receive_the_random_stream() {
    for world in World::ALL {
        demo_tokens_receive_the_random_stream_in(world).await;
    }
}

async fn demo_tokens_receive_the_random_stream_in(world: World) {
    let demo = start_demo(200, world).await;
    let addr = demo.gateway.local_addr();
    let mut admin = Client::connect_token(addr, &demo.admin_token).await;
    let topics = demo_topics();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    admin.subscribe(&topics).await;
    let mut agent = Client::connect_token(addr, &demo.agent_token).await;
    agent
        .subscribe(&[&format!("agent_id:{}:call:*", demo.agent_id)])
        .await;
    let mut types = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let event = admin.recv_event().await;
        assert!(
            event["topic"]
                .as_str()
                .is_some_and(|t| t.starts_with(&format!("customer_id:{DEMO_CUSTOMER}:"))),
            "{world:?}: {event}"
        );
        types.insert(event["event_type"].as_str().unwrap_or_default().to_owned());
    }
    // Every resource's events, known for what they are, in VoIPBIN's world too.
    assert!(types.len() >= 4, "{world:?}: {types:?}");
    assert!(types.iter().all(|t| t != "updated"), "{world:?}: {types:?}");
    let event = agent.recv_event().await;
    assert_eq!(event["data"]["owner_id"], demo.agent_id.to_string());
    assert!(
        event["topic"]
            .as_str()
            .is_some_and(|t| t.starts_with(&format!("agent_id:{}:", demo.agent_id)))
    );
    // The agent may not see the whole customer.
    agent
        .subscribe(&[&format!("customer_id:{DEMO_CUSTOMER}")])
        .await;
    loop {
        let frame = agent.recv_json().await;
        if frame["type"] == "error" {
            assert_eq!(frame["code"], "forbidden_topic");
            break;
        }
    }
    demo.shutdown().await;
}

#[tokio::test]
async fn demo_page_serves_the_client_its_settings_and_an_upstream_drop() {
    let demo = start_demo(50, World::Voipbin).await;
    let page = demo.page_addr();
    let (status, body) = http(page, "GET", "/", None).await;
    assert_eq!(status, 200);
    let html = body.as_str().expect("html");
    assert!(html.contains("import { FanoutClient } from './client.js'"));
    let (status, body) = http(page, "GET", "/client.js", None).await;
    assert_eq!(status, 200);
    assert!(
        body.as_str()
            .is_some_and(|js| js.contains("export class FanoutClient"))
    );
    let (status, settings) = http(page, "GET", "/demo.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        settings["ws_url"],
        format!("ws://{}/v1.0/ws", demo.gateway.local_addr())
    );
    assert_eq!(settings["topics"], serde_json::json!(demo_topics()));
    // The page's token and topics receive events with cursors.
    let token = settings["token"].as_str().expect("token");
    let mut client = Client::connect_token(demo.gateway.local_addr(), token).await;
    let topics: Vec<&str> = settings["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    client.subscribe(&topics).await;
    let event = client.recv_event().await;
    assert!(event["cursor"].as_str().is_some_and(|c| c.len() > 17));
    // Dropping the upstream (one connection per resource watched) shows as a gap, with its
    // cursor.
    let (status, body) = http(page, "POST", "/drop-upstream", None).await;
    assert_eq!(status, 200);
    assert!(body["dropped"].as_u64().is_some_and(|n| n >= 1), "{body}");
    loop {
        let frame = client.recv_json().await;
        if frame["type"] == "gap" {
            assert_eq!(frame["reason"], "upstream_reconnect");
            assert!(frame["cursor"].as_str().is_some());
            break;
        }
        assert!(frame["event_type"].is_string(), "{frame}");
    }
    assert_eq!(http(page, "GET", "/nope", None).await.0, 404);
    demo.shutdown().await;
}
