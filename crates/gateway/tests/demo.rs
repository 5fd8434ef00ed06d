//! `fanout-gateway demo`'s tokens and stream work as printed.

use fanout_gateway::demo::{DEMO_CUSTOMER, Demo, DemoOptions};
use fanout_test_support::*;

#[tokio::test]
async fn demo_tokens_receive_the_random_stream() {
    init_tracing();
    let any = "127.0.0.1:0".parse().expect("addr");
    let demo = Demo::start(&DemoOptions {
        listen: any,
        admin_listen: any,
        sim_listen: any,
        event_rate: 200,
    })
    .await
    .expect("demo starts");
    let addr = demo.gateway.local_addr();
    let mut admin = Client::connect_token(addr, &demo.admin_token).await;
    admin
        .subscribe(&[&format!("customer_id:{DEMO_CUSTOMER}")])
        .await;
    let mut agent = Client::connect_token(addr, &demo.agent_token).await;
    agent
        .subscribe(&[&format!("agent_id:{}", demo.agent_id)])
        .await;
    for _ in 0..20 {
        let event = admin.recv_event().await;
        assert!(
            event["topic"]
                .as_str()
                .is_some_and(|t| t.starts_with(&format!("customer_id:{DEMO_CUSTOMER}:")))
        );
    }
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
