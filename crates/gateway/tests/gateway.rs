//! The gateway end to end on loopback, with the simulator as VoIPBIN, in both of its
//! worlds (the tutorial's, and VoIPBIN's code as it is today).

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use fanout_test_support::*;
use hyper::StatusCode;
use serde_json::json;
use uuid::Uuid;

/// Subscribes to one topic and tells whether it was accepted, using an invalid message as a
/// marker: the gateway answers every refused request, and requests in order.
async fn accepted(client: &mut Client, topic: &str) -> bool {
    client.subscribe(&[topic]).await;
    client.send_text(r#"{"type":"marker"}"#).await;
    let first = client.recv_json().await;
    match first["code"].as_str() {
        Some("unknown_type") => true,
        Some("forbidden_topic") => {
            assert_eq!(first["topics"], json!([topic]));
            let marker = client.recv_json().await;
            assert_eq!(marker["code"], "unknown_type");
            false
        }
        _ => panic!("unexpected answer to subscribing {topic}: {first}"),
    }
}

in_both_worlds! {
async fn every_permission_row(world) {
    let stack = start_in(world).await;
    let c = tutorial_customer();
    let d = Uuid::new_v4();
    let me = Uuid::new_v4();
    let other_agent = Uuid::new_v4();
    let k = Uuid::new_v4();
    let columns = [
        format!("customer_id:{c}:call:*"),
        format!("customer_id:{c}:call:{k}"),
        format!("customer_id:{d}:call:*"),
        format!("agent_id:{me}:call:*"),
        format!("agent_id:{other_agent}:call:*"),
    ];
    let agent = |permission| agent_token(SECRET, c, me, permission, &far_future());
    let rows: Vec<(&str, Connect, [bool; 5])> = vec![
        (
            "admin",
            Connect::token(&agent(perm::CUSTOMER_ADMIN)),
            [true, true, false, true, false],
        ),
        (
            "manager",
            Connect::token(&agent(perm::CUSTOMER_MANAGER)),
            [true, true, false, true, false],
        ),
        (
            "plain agent",
            Connect::token(&agent(perm::CUSTOMER_AGENT)),
            [false, false, false, true, false],
        ),
        (
            "super admin",
            Connect::token(&agent(perm::PROJECT_SUPER_ADMIN)),
            [true, true, true, true, true],
        ),
        (
            "access key",
            Connect::path(format!("/v1.0/ws?accesskey={KEY}")),
            [true, true, false, false, false],
        ),
        (
            "direct",
            Connect::token(&direct_token(SECRET, c, &["call"])),
            [false, true, false, false, false],
        ),
    ];
    for (row, connect, verdicts) in rows {
        let mut client = match Client::connect(stack.addr, connect).await.expect("tcp") {
            Ok(client) => client,
            Err(refused) => panic!("{row}: refused {refused:?}"),
        };
        for (topic, verdict) in columns.iter().zip(verdicts) {
            assert_eq!(
                accepted(&mut client, topic).await,
                verdict,
                "{row} subscribing {topic}"
            );
        }
        client.close().await;
    }
    // The direct token may not use a wildcard id or a resource type it was not given.
    let mut widget =
        Client::connect_token(stack.addr, &direct_token(SECRET, c, &["webchat_session"])).await;
    assert!(accepted(&mut widget, &format!("customer_id:{c}:webchat_session:{k}")).await);
    assert!(!accepted(&mut widget, &format!("customer_id:{c}:webchat_session:*")).await);
    assert!(!accepted(&mut widget, &format!("customer_id:{c}:call:{k}")).await);
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn permitted_patterns_deliver_through_the_customer_stream(world) {
    let stack = start_in(world).await;
    let c = tutorial_customer();
    let me = Uuid::new_v4();
    let mut admin = Client::connect_token(stack.addr, &admin_token(c)).await;
    let mut agent = Client::connect_token(
        stack.addr,
        &agent_token(SECRET, c, me, perm::CUSTOMER_AGENT, &far_future()),
    )
    .await;
    let mut key = match Client::connect(
        stack.addr,
        Connect::path(format!("/v1.0/ws?accesskey={KEY}")),
    )
    .await
    .expect("tcp")
    {
        Ok(client) => client,
        Err(refused) => panic!("{refused:?}"),
    };
    admin
        .subscribe_synced(&[&format!("customer_id:{c}:call:*")])
        .await;
    key.subscribe_synced(&[&format!("customer_id:{c}:call")])
        .await;
    agent
        .subscribe_synced(&[&format!("agent_id:{me}:call:*")])
        .await;
    // Upstream: the customer's calls, for all three (the agent's served from the
    // customer's stream): one prefix on one connection.
    upstream_carries(
        &stack,
        c,
        &[&format!("customer_id:{c}:call:*"), &format!("customer_id:{c}:call")],
    )
    .await;
    assert_eq!(upstream_connections(&stack, c).await, 1);
    publish_events(&stack, &call(c, "k1", Some(me))).await;
    let event = admin.recv_event().await;
    assert_eq!(event["topic"], format!("customer_id:{c}:call:k1"));
    assert_eq!(event["event_type"], "call_ringing");
    assert_eq!(event["data"]["id"], "k1");
    assert_eq!(
        key.recv_event().await["topic"],
        format!("customer_id:{c}:call:k1")
    );
    assert_eq!(
        agent.recv_event().await["topic"],
        format!("agent_id:{me}:call:k1")
    );
    // Another agent's call reaches the customer-level sessions only.
    publish_events(&stack, &call(c, "k2", Some(Uuid::new_v4()))).await;
    assert_eq!(admin.recv_event().await["data"]["id"], "k2");
    assert_eq!(key.recv_event().await["data"]["id"], "k2");
    agent.expect_silence(Duration::from_millis(300)).await;
    // Each event reached each session once, however many copies VoIPBIN sent.
    admin.expect_silence(Duration::from_millis(100)).await;
    key.expect_silence(Duration::from_millis(100)).await;
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn each_event_reaches_a_session_once_under_its_first_matching_topic(world) {
    let stack = start_in(world).await;
    let c = tutorial_customer();
    let mut client = Client::connect_token(stack.addr, &admin_token(c)).await;
    let topics = [
        format!("customer_id:{c}"),
        format!("customer_id:{c}:call"),
        format!("customer_id:{c}:call:*"),
        format!("customer_id:{c}:call:call_hangup"),
        format!("customer_id:{c}:*:*:k1"),
    ];
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    client.subscribe_synced(&refs).await;
    upstream_carries(&stack, c, &refs).await;
    publish_events(&stack, &call_at(c, "k1", None, CallStep::Hangup)).await;
    let event = client.recv_event().await;
    assert_eq!(event["data"]["id"], "k1");
    // Under the first of its topics a pattern matched. In VoIPBIN's world the copy that
    // came first decides: the whole stream's tells nothing of the resource.
    let seen = event["topic"].as_str().expect("topic");
    let possible = match world {
        World::Tutorial => vec![format!("customer_id:{c}:call:k1")],
        World::Voipbin => vec![format!("customer_id:{c}:call:k1"), format!("customer_id:{c}")],
    };
    assert!(possible.iter().any(|p| p == seen), "{seen}");
    // Once, whatever copies VoIPBIN sent (five in its world, over three connections).
    client.expect_silence(Duration::from_millis(300)).await;
    // Event-type topics select one kind: a session holding only `call:call_hangup` gets the
    // hang-up under the event-type topic and nothing else.
    let mut hangups = Client::connect_token(stack.addr, &admin_token(c)).await;
    hangups
        .subscribe_synced(&[&format!("customer_id:{c}:call:call_hangup")])
        .await;
    publish_events(&stack, &call_at(c, "k2", None, CallStep::Ringing)).await;
    publish_events(&stack, &call_at(c, "k2", None, CallStep::Hangup)).await;
    let event = hangups.recv_event().await;
    assert_eq!(
        event["topic"],
        format!("customer_id:{c}:call:call_hangup:k2")
    );
    assert_eq!(event["event_type"], "call_hangup");
    hangups.expect_silence(Duration::from_millis(200)).await;
    // Prefixes are cut at segment boundaries: `…:queue` is not `…:queuecall`.
    let mut queue = Client::connect_token(stack.addr, &admin_token(c)).await;
    let queue_topic = format!("customer_id:{c}:queue");
    queue.subscribe_synced(&[&queue_topic]).await;
    let mut all: Vec<&str> = refs.clone();
    all.push(&queue_topic);
    upstream_carries(&stack, c, &all).await;
    publish_events(
        &stack,
        &json!({"event_type":"queuecall_created","data":{"id":"q1","customer_id":c,"status":"initiating"}}),
    )
    .await;
    queue.expect_silence(Duration::from_millis(300)).await;
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn no_event_of_another_customer_ever_arrives(world) {
    // Upstreams authenticate with a per-customer access key here, so the simulator counts
    // each customer's connection under its own customer.
    let c = tutorial_customer();
    let d = Uuid::new_v4();
    let d_key = "vb_dddddddddddddddddddddddddddddddd";
    let keys = std::env::temp_dir().join(format!("fanout-keys-{}", Uuid::new_v4()));
    std::fs::write(&keys, format!("{c}={KEY}\n{d}={d_key}\n")).expect("write keys");
    let stack = start_in_with(
        world,
        |sim| sim.access_keys.push((d_key.to_owned(), d)),
        |config| {
            config.upstream.token.clear();
            config.upstream.accesskeys_file = Some(keys.clone());
        },
    )
    .await;
    let my_agent = Uuid::new_v4();
    // C's admin subscribes to everything it may, and tries D's topics.
    let mut admin = Client::connect_token(stack.addr, &admin_token(c)).await;
    admin.subscribe_synced(&[&format!("customer_id:{c}")]).await;
    admin.subscribe(&[&format!("customer_id:{d}")]).await;
    assert_eq!(admin.recv_json().await["code"], "forbidden_topic");
    let mut agent = Client::connect_token(
        stack.addr,
        &agent_token(SECRET, c, my_agent, perm::CUSTOMER_AGENT, &far_future()),
    )
    .await;
    agent
        .subscribe_synced(&[&format!("agent_id:{my_agent}")])
        .await;
    // D's admin keeps D's upstream subscribed.
    let mut d_admin = Client::connect_token(stack.addr, &admin_token(d)).await;
    d_admin
        .subscribe_synced(&[&format!("customer_id:{d}")])
        .await;
    upstream_carries(&stack, d, &[&format!("customer_id:{d}")]).await;
    upstream_carries(&stack, c, &[&format!("customer_id:{c}")]).await;
    // D's events, even one naming C's agent as owner and one claiming C in a field the
    // simulator ignores, reach D only.
    let sneaky = json!({"event_type":"call_created","data":{"id":"x1","customer_id":d,"owner_type":"agent","owner_id":my_agent,"note":c}});
    publish_events(&stack, &json!([call(d, "d1", None), sneaky])).await;
    assert_eq!(d_admin.recv_event().await["data"]["id"], "d1");
    assert_eq!(d_admin.recv_event().await["data"]["id"], "x1");
    admin.expect_silence(Duration::from_millis(300)).await;
    agent.expect_silence(Duration::from_millis(100)).await;
    // And C's events do not reach D.
    publish_events(&stack, &call(c, "c1", Some(my_agent))).await;
    assert_eq!(admin.recv_event().await["data"]["id"], "c1");
    assert_eq!(agent.recv_event().await["data"]["id"], "c1");
    d_admin.expect_silence(Duration::from_millis(300)).await;
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn fifty_sessions_share_the_upstream_which_closes_after_the_linger(world) {
    let stack = start_in(world).await;
    let c = tutorial_customer();
    let calls = format!("customer_id:{c}:call:*");
    let whole = format!("customer_id:{c}");
    let mut clients = Vec::new();
    for i in 0..50 {
        let mut client = Client::connect_token(stack.addr, &admin_token(c)).await;
        let topic = if i % 2 == 0 { &calls } else { &whole };
        client.subscribe_synced(&[topic]).await;
        clients.push(client);
    }
    // One connection per kind of topic (the calls', the whole stream's), none per browser.
    upstream_carries(&stack, c, &[&calls, &whole]).await;
    assert_eq!(upstream_connections(&stack, c).await, 2);
    let sent = publish_events(&stack, &call(c, "k1", None)).await;
    assert_eq!(
        sent,
        2 * frames_per_connection(world, 2),
        "the same frames upstream for fifty sessions"
    );
    for client in &mut clients {
        assert_eq!(client.recv_event().await["data"]["id"], "k1");
    }
    for client in &mut clients {
        client.expect_silence(Duration::from_millis(20)).await;
    }
    // Half leave: the upstream keeps both patterns while someone holds each.
    for client in clients.drain(..25) {
        client.close().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    upstream_carries(&stack, c, &[&calls, &whole]).await;
    // All leave: the upstream keeps what they held for the linger (300 ms here), so that a
    // browser back at once resumes; then it closes, not before.
    for client in clients.drain(..) {
        client.close().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    upstream_carries(&stack, c, &[&calls, &whole]).await;
    assert_eq!(upstream_connections(&stack, c).await, 2, "still lingering");
    let addr = stack.sim_addr();
    eventually("the upstream to close after the linger", || async move {
        sim_stats(addr).await["customers"]
            .get(c.to_string())
            .is_none()
    })
    .await;
    stack.shutdown().await;
}
}

in_both_worlds! {
/// Two hundred browsers of one customer on three resources cost VoIPBIN three connections:
/// the distinct prefixes in use, none per browser.
async fn two_hundred_sessions_on_three_resources_cost_three_connections(world) {
    let stack = start_in(world).await;
    let c = tutorial_customer();
    let resources = ["call", "message", "activeflow"];
    let patterns: Vec<String> = resources
        .iter()
        .map(|r| format!("customer_id:{c}:{r}:*"))
        .collect();
    let mut clients = Vec::new();
    for i in 0..200 {
        let mut client = Client::connect_token(stack.addr, &admin_token(c)).await;
        let mine = &patterns[i % 3];
        let also = &patterns[(i + 1) % 3];
        client.subscribe_synced(&[mine, also]).await;
        clients.push(client);
    }
    let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
    upstream_carries(&stack, c, &refs).await;
    assert_eq!(upstream_connections(&stack, c).await, 3);
    // Each resource's events reach exactly the sessions that asked for it, once.
    let message = json!({"event_type":"message_created","data":{"id":"m1","customer_id":c,"type":"sms","text":"hi"}});
    publish_events(&stack, &message).await;
    for (i, client) in clients.iter_mut().enumerate() {
        if i % 3 == 1 || (i + 1) % 3 == 1 {
            let event = client.recv_event().await;
            assert_eq!(event["data"]["id"], "m1");
            assert_eq!(event["topic"], format!("customer_id:{c}:message:m1"));
            assert!(event["event_type"].as_str().is_some_and(|t| t.starts_with("message_")));
        }
    }
    for client in &mut clients {
        client.expect_silence(Duration::from_millis(5)).await;
    }
    stack.shutdown().await;
}
}

/// Reads frames until the next event: the gaps before it, and it.
async fn gaps_then_event(client: &mut Client) -> (Vec<serde_json::Value>, serde_json::Value) {
    let mut gaps = Vec::new();
    loop {
        let frame = client.recv_json().await;
        match frame["type"].as_str() {
            Some("gap") => gaps.push(frame),
            _ => {
                assert!(frame.get("event_type").is_some(), "not an event: {frame}");
                return (gaps, frame);
            }
        }
    }
}

in_both_worlds! {
async fn upstream_dropped_mid_stream_reconnects_and_resubscribes(world) {
    let stack = start_in(world).await;
    let c = tutorial_customer();
    let mut client = Client::connect_token(stack.addr, &admin_token(c)).await;
    let topics = [
        format!("customer_id:{c}:call:*"),
        format!("customer_id:{c}:message:*"),
    ];
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    client.subscribe_synced(&refs).await;
    upstream_carries(&stack, c, &refs).await;
    publish_events(&stack, &call(c, "before", None)).await;
    assert_eq!(client.recv_event().await["data"]["id"], "before");
    let connections = upstream_connections(&stack, c).await;
    let before = drop_upstream(&stack, c).await;
    let addr = stack.sim_addr();
    eventually("new upstream connections with every subscription", || async move {
        let stats = sim_stats(addr).await;
        stats["connections_total"].as_u64().unwrap_or(0) >= before + connections
            && stats["customers"][c.to_string()]["subscriptions"]
                .as_array()
                .map_or(0, Vec::len)
                == 2
    })
    .await;
    // Told of what it may have missed (each connection its own loss), before the next
    // event.
    publish_events(&stack, &call(c, "after", None)).await;
    let (gaps, event) = gaps_then_event(&mut client).await;
    assert!(!gaps.is_empty() && gaps.len() as u64 <= connections, "{gaps:?}");
    assert_eq!(event["data"]["id"], "after");
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn upstream_stalled_mid_stream_is_replaced(world) {
    let stack = start_in_with(
        world,
        |_| {},
        |config| {
            config.upstream.ping_interval = Duration::from_millis(100);
            config.upstream.idle_timeout = Duration::from_millis(500);
        },
    )
    .await;
    let c = tutorial_customer();
    let mut client = Client::connect_token(stack.addr, &admin_token(c)).await;
    let topic = format!("customer_id:{c}:call:*");
    client.subscribe_synced(&[&topic]).await;
    upstream_carries(&stack, c, &[&topic]).await;
    let before = stall_upstream(&stack, c, 5000).await;
    upstream_replaced(&stack, c, before, 1).await;
    // The stalled connection still counts in the simulator until its stall ends; the new one
    // carries the events.
    // Told of what it may have missed, before the next event.
    assert_eq!(client.recv_json().await["type"], "gap");
    publish_events(&stack, &call(c, "after", None)).await;
    assert_eq!(client.recv_event().await["data"]["id"], "after");
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn a_slow_consumer_is_closed_with_1013_while_a_fast_one_gets_everything(world) {
    let stack = start_in_with(
        world,
        |_| {},
        |config| {
            config.session.queue_frames = 256;
            config.session.queue_bytes = 4 << 20;
        },
    )
    .await;
    let c = tutorial_customer();
    let topic = format!("customer_id:{c}:call:*");
    let mut fast = Client::connect_token(stack.addr, &admin_token(c)).await;
    let mut slow = Client::connect_token(stack.addr, &admin_token(c)).await;
    fast.subscribe_synced(&[&topic]).await;
    slow.subscribe_synced(&[&topic]).await;
    upstream_carries(&stack, c, &[&topic]).await;
    let pad = "x".repeat(8 * 1024);
    // Batches of 100, each read by the fast client before the next is sent, so only the
    // slow client (which reads nothing) falls behind.
    for batch in 0..30 {
        let events: Vec<_> = (0..100)
            .map(|i| json!({"event_type":"call_ringing","data":{"id":format!("k{}", batch * 100 + i),"customer_id":c,"pad":pad}}))
            .collect();
        publish_events(&stack, &json!(events)).await;
        for i in 0..100 {
            let event = fast.recv_event().await;
            assert_eq!(event["data"]["id"], format!("k{}", batch * 100 + i));
        }
    }
    // The slow one drains what the kernel held, then finds the 1013 close.
    let (code, reason) = slow.recv_close().await;
    assert_eq!(code, Some(1013), "{reason}");
    let admin = stack.admin;
    // Counted (the metrics are the test process's: the other world's run counts too).
    assert!(metric(admin, "fanout_slow_consumers_total").await >= 1.0);
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn expired_token_closes_the_session_with_1008(world) {
    let stack = start_in(world).await;
    let c = tutorial_customer();
    let token = agent_token(
        SECRET,
        c,
        Uuid::new_v4(),
        perm::CUSTOMER_ADMIN,
        &expire_in(Duration::from_millis(1500)),
    );
    let mut client = Client::connect_token(stack.addr, &token).await;
    client.subscribe(&[&format!("customer_id:{c}")]).await;
    let (code, reason) = client.recv_close().await;
    assert_eq!((code, reason.as_str()), (Some(1008), "token expired"));
    // An already expired token is refused at the handshake.
    let expired = agent_token(
        SECRET,
        c,
        Uuid::new_v4(),
        perm::CUSTOMER_ADMIN,
        "2020-01-01T00:00:00.000000Z",
    );
    let refused = Client::connect(stack.addr, Connect::token(&expired))
        .await
        .expect("tcp")
        .err()
        .expect("refused");
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.body["error"]["reason"], "INVALID_CREDENTIALS");
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn handshake_failures_answer_with_the_json_envelope(world) {
    let stack = start_in(world).await;
    let refused = |connect: Connect| Client::refused(stack.addr, connect);
    let none = refused(Connect::path("/v1.0/ws")).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.body["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(none.body["error"]["reason"], "AUTHENTICATION_REQUIRED");
    assert_eq!(none.body["error"]["message"], "Authentication is required.");
    assert!(none.body["error"]["request_id"].is_string());
    let forged = agent_token(
        "another secret",
        tutorial_customer(),
        Uuid::new_v4(),
        perm::ALL,
        &far_future(),
    );
    let bad = refused(Connect::token(&forged)).await;
    assert_eq!(bad.body["error"]["reason"], "INVALID_CREDENTIALS");
    let delegate = sign(
        SECRET,
        &json!({"type":"delegate","sub":Uuid::new_v4(),"customer_id":tutorial_customer(),"expire":far_future()}),
    );
    assert_eq!(
        refused(Connect::token(&delegate)).await.body["error"]["reason"],
        "INVALID_CREDENTIALS"
    );
    let unknown_key = refused(Connect::path(
        "/v1.0/ws?accesskey=vb_unknownunknownunknownunknown12",
    ))
    .await;
    assert_eq!(unknown_key.body["error"]["reason"], "INVALID_CREDENTIALS");
    let with_id = refused(Connect::path("/v1.0/ws").header("X-Request-Id", "trace-42")).await;
    assert_eq!(with_id.body["error"]["request_id"], "trace-42");
    // Every credential source works, through the alias too.
    let token = admin_token(tutorial_customer());
    for connect in [
        Connect::path("/v1.0/ws").header("Cookie", &format!("token={token}")),
        Connect::path("/v1.0/ws").header("Authorization", &format!("Bearer {token}")),
        Connect::path("/v1.0/ws").header("Cookie", &format!("accesskey={KEY}")),
        Connect::token(KEY),
        Connect::path(format!("/v1.0/service_agents/ws?token={token}")),
    ] {
        assert!(
            Client::connect(stack.addr, connect)
                .await
                .expect("tcp")
                .is_ok()
        );
    }
    // A plain GET with a valid credential is not an upgrade.
    let (status, body) = http(stack.addr, "GET", &format!("/v1.0/ws?token={token}"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
    let (status, _) = http(stack.addr, "GET", "/elsewhere", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn refused_requests_get_error_frames_then_1008(world) {
    let stack = start_in_with(world, |_| {}, |config| config.session.max_refusals = 5).await;
    let c = tutorial_customer();
    let mut client = Client::connect_token(stack.addr, &admin_token(c)).await;
    for (message, code) in [
        ("not json".to_owned(), "invalid_json"),
        (
            r#"{"type":"publish","topics":["x"]}"#.to_owned(),
            "unknown_type",
        ),
        (
            r#"{"type":"subscribe","topics":["customer_id:nope"]}"#.to_owned(),
            "invalid_topic",
        ),
        (
            json!({"type":"subscribe","topics":[format!("customer_id:{}", Uuid::new_v4())]})
                .to_string(),
            "forbidden_topic",
        ),
    ] {
        client.send_text(&message).await;
        let error = client.recv_json().await;
        assert_eq!(error["type"], "error");
        assert_eq!(error["code"], code, "{message}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(error.get("event_type").is_none());
    }
    // A mixed request is refused whole: the good topic is not applied either.
    client
        .subscribe(&[
            &format!("customer_id:{c}:call:*"),
            &format!("customer_id:{}", Uuid::new_v4()),
        ])
        .await;
    assert_eq!(client.recv_json().await["code"], "forbidden_topic");
    tokio::time::sleep(Duration::from_millis(100)).await;
    upstream_carries(&stack, c, &[]).await;
    // The sixth refusal closes the session.
    client.send_text("nope").await;
    assert_eq!(client.recv_json().await["code"], "invalid_json");
    let (code, reason) = client.recv_close().await;
    assert_eq!(
        (code, reason.as_str()),
        (Some(1008), "too many refused requests")
    );
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn topic_cap_and_idempotent_requests(world) {
    let stack = start_in_with(world, |_| {}, |config| config.session.max_topics = 3).await;
    let c = tutorial_customer();
    let mut client = Client::connect_token(stack.addr, &admin_token(c)).await;
    let t = |r: &str| format!("customer_id:{c}:{r}");
    client.subscribe(&[&t("call"), &t("message")]).await;
    client.subscribe(&[&t("call")]).await; // no-op
    client.unsubscribe(&[&t("queue")]).await; // not held: no-op
    client.subscribe(&[&t("queue"), &t("agent")]).await; // 4 > 3
    let error = client.recv_json().await;
    assert_eq!(error["code"], "too_many_topics");
    upstream_carries(&stack, c, &[&t("call"), &t("message")]).await;
    client.subscribe(&[&t("queue")]).await;
    upstream_carries(&stack, c, &[&t("call"), &t("message"), &t("queue")]).await;
    client
        .unsubscribe(&[&t("call"), &t("message"), &t("queue")])
        .await;
    upstream_carries(&stack, c, &[]).await;
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn close_codes_for_bad_frames(world) {
    let stack = start_in_with(world, |_| {}, |config| config.session.max_message_bytes = 1024).await;
    let c = tutorial_customer();
    // Binary: 1003.
    let mut client = Client::connect_token(stack.addr, &admin_token(c)).await;
    client
        .send_frame(fastwebsockets::Frame::binary(
            fastwebsockets::Payload::Borrowed(b"\x01\x02"),
        ))
        .await;
    assert_eq!(client.recv_close().await.0, Some(1003));
    // Too big: 1009.
    let mut client = Client::connect_token(stack.addr, &admin_token(c)).await;
    client.send_text(&"x".repeat(2000)).await;
    assert_eq!(client.recv_close().await.0, Some(1009));
    // A client close: 1000 back.
    let mut client = Client::connect_token(stack.addr, &admin_token(c)).await;
    client
        .send_frame(fastwebsockets::Frame::close(1000, b"bye"))
        .await;
    assert_eq!(client.recv_close().await.0, Some(1000));
    // A client ping gets a pong (the session stays).
    let mut client = Client::connect_token(stack.addr, &admin_token(c)).await;
    client
        .send_frame(fastwebsockets::Frame::new(
            true,
            fastwebsockets::OpCode::Ping,
            None,
            fastwebsockets::Payload::Borrowed(b"hi"),
        ))
        .await;
    assert_eq!(
        client.recv_within(WAIT).await,
        Some(Received::Pong(b"hi".to_vec()))
    );
    let topic = format!("customer_id:{c}:call:*");
    client.subscribe_synced(&[&topic]).await;
    upstream_carries(&stack, c, &[&topic]).await;
    publish_events(&stack, &call(c, "k1", None)).await;
    assert_eq!(client.recv_event().await["data"]["id"], "k1");
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn keepalive_pings_and_the_pong_deadline(world) {
    let stack = start_in_with(
        world,
        |_| {},
        |config| {
            config.session.ping_interval = Duration::from_millis(100);
            config.session.pong_timeout = Duration::from_millis(600);
        },
    )
    .await;
    let c = tutorial_customer();
    let mut live = Client::connect_token(stack.addr, &admin_token(c)).await;
    let options = Connect {
        no_auto_pong: true,
        ..Connect::token(&admin_token(c))
    };
    let mut silent = Client::connect(stack.addr, options)
        .await
        .expect("tcp")
        .expect("accepted");
    let silent_flow = async {
        assert!(matches!(
            silent.recv_within(WAIT).await,
            Some(Received::Ping(_))
        ));
        let (code, reason) = silent.recv_close().await;
        assert_eq!((code, reason.as_str()), (Some(1001), "pong timeout"));
    };
    tokio::join!(
        silent_flow,
        live.expect_silence(Duration::from_millis(1500))
    );
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn shutdown_closes_sessions_with_1001_and_refuses_new_ones(world) {
    let mut stack = start_in(world).await;
    let c = tutorial_customer();
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut client = Client::connect_token(stack.addr, &admin_token(c)).await;
        client
            .subscribe_synced(&[&format!("customer_id:{c}")])
            .await;
        clients.push(client);
    }
    upstream_carries(&stack, c, &[&format!("customer_id:{c}")]).await;
    let (status, _) = http(stack.admin, "GET", "/readyz", None).await;
    assert_eq!(status, StatusCode::OK);
    let gateway = stack.gateway.take().expect("running");
    let shutdown = tokio::spawn(gateway.shutdown());
    for client in &mut clients {
        let (code, reason) = client.recv_close().await;
        assert_eq!(
            (code, reason.as_str()),
            (Some(1001), "server shutting down")
        );
    }
    shutdown.await.expect("shut down");
    // The upstream is gone too.
    let addr = stack.sim_addr();
    eventually("the upstream to close", || async move {
        sim_stats(addr).await["connections"] == 0
    })
    .await;
}
}

in_both_worlds! {
async fn admin_endpoints(world) {
    let stack = start_in(world).await;
    let (status, body) = http(stack.admin, "GET", "/healthz", None).await;
    assert_eq!(
        (status, body.as_str().map(str::trim)),
        (StatusCode::OK, Some("ok"))
    );
    let (status, _) = http(stack.admin, "GET", "/readyz", None).await;
    assert_eq!(status, StatusCode::OK);
    let c = tutorial_customer();
    let mut client = Client::connect_token(stack.addr, &admin_token(c)).await;
    let topic = format!("customer_id:{c}:call:*");
    client.subscribe_synced(&[&topic]).await;
    upstream_carries(&stack, c, &[&topic]).await;
    publish_events(&stack, &call(c, "k1", None)).await;
    client.recv_event().await;
    let (status, body) = http(stack.admin, "GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let text = body.as_str().unwrap_or_default();
    for name in [
        "fanout_sessions ",
        "fanout_sessions_opened_total",
        "fanout_upstream_connections{state=\"connected\"}",
        "fanout_events_in_total",
        "fanout_deliveries_total",
        "fanout_fanout_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    let (status, body) = admin_get(stack.admin, "/customers").await;
    assert_eq!(status, StatusCode::OK);
    let customer = &body["customers"][0];
    assert_eq!(customer["customer_id"], c.to_string());
    assert_eq!(customer["upstream"], "connected");
    assert_eq!(customer["upstream_connections"], 1);
    let prefixes = prefixes_in(world, c, &[&topic]);
    assert_eq!(customer["upstream_patterns"], json!([prefixes[0].as_str()]));
    assert_eq!(customer["covered"], json!([prefixes[0].as_str()]));
    stack.shutdown().await;
}
}

/// Each shape a segment-matching VoIPBIN may send, through more than one resource at once:
/// bare objects are told apart by the connection they came through.
#[tokio::test]
async fn every_upstream_shape_reaches_sessions_as_envelopes() {
    for shape in [voipbin_sim::Shape::Webhook, voipbin_sim::Shape::Bare] {
        let stack = start_with(|sim| sim.shape = shape, |_| {}).await;
        let c = tutorial_customer();
        let mut client = Client::connect_token(stack.addr, &admin_token(c)).await;
        let topics = [
            format!("customer_id:{c}:call:*"),
            format!("customer_id:{c}:message:*"),
        ];
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        client.subscribe_synced(&refs).await;
        upstream_carries(&stack, c, &refs).await;
        publish_events(&stack, &call(c, "k1", None)).await;
        let event = client.recv_event().await;
        assert_eq!(
            event["topic"],
            format!("customer_id:{c}:call:k1"),
            "{shape:?}"
        );
        assert_eq!(event["data"]["id"], "k1");
        // Webhook frames say their type; bare objects through `call:*` are known to be calls,
        // and a ringing call's object proves it is `call_ringing`.
        assert_eq!(event["event_type"], "call_ringing");
        let message =
            json!({"event_type":"message_created","data":{"id":"m1","customer_id":c,"type":"sms"}});
        publish_events(&stack, &message).await;
        let event = client.recv_event().await;
        assert_eq!(
            event["topic"],
            format!("customer_id:{c}:message:m1"),
            "{shape:?}"
        );
        let expected = match shape {
            voipbin_sim::Shape::Webhook => "message_created",
            // A message object does not tell its event apart.
            _ => "message_updated",
        };
        assert_eq!(event["event_type"], expected);
        client.expect_silence(Duration::from_millis(200)).await;
        stack.shutdown().await;
    }
}

in_both_worlds! {
async fn bad_upstream_frames_are_dropped_without_harm(world) {
    let stack = start_in(world).await;
    let c = tutorial_customer();
    let mut client = Client::connect_token(stack.addr, &admin_token(c)).await;
    let whole = format!("customer_id:{c}");
    client.subscribe_synced(&[&whole]).await;
    upstream_carries(&stack, c, &[&whole]).await;
    let other = Uuid::new_v4();
    for raw in [
        "not json".to_owned(),
        "[1,2,3]".to_owned(),
        json!({"type":"call_created","data":{"id":"z","customer_id":other}}).to_string(),
        json!({"event_type":"e","topic":format!("customer_id:{other}:call:z"),"data":{}})
            .to_string(),
    ] {
        let (status, _) = http(
            stack.sim_addr(),
            "POST",
            &format!("/_sim/raw?customer_id={c}"),
            Some(&raw),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    client.expect_silence(Duration::from_millis(300)).await;
    publish_events(&stack, &call(c, "ok", None)).await;
    assert_eq!(client.recv_event().await["data"]["id"], "ok");
    stack.shutdown().await;
}
}

in_both_worlds! {
/// The seed tutorial's patterns, a resource's, an agent's and an event type's: each session
/// gets exactly its events, once, and another customer's session nothing.
async fn every_kind_of_pattern_gets_exactly_its_events_once(world) {
    let stack = start_in(world).await;
    let sessions = SeedSessions::open(&[stack.addr]).await;
    let patterns = SeedSessions::patterns(sessions.customer, sessions.agent);
    let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
    upstream_carries(&stack, sessions.customer, &refs).await;
    sessions.check(stack.sim_addr()).await;
    stack.shutdown().await;
}
}
