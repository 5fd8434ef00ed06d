//! The simulator over real sockets: credentials, permissions, the three shapes, quirks and
//! the control endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fanout_test_support::*;
use hyper::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use voipbin_sim::{Quirks, Shape, SimConfig, Simulator, World};

const KEY: &str = "vb_0123456789abcdefghijklmnopqrstuv";

struct Running {
    sim: Arc<Simulator>,
    cancel: CancellationToken,
}

impl Running {
    fn addr(&self) -> SocketAddr {
        self.sim.local_addr()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn start_with(configure: impl FnOnce(&mut SimConfig)) -> Running {
    init_tracing();
    let mut config = SimConfig::new(SECRET);
    config.access_keys = vec![(KEY.to_owned(), tutorial_customer())];
    configure(&mut config);
    let cancel = CancellationToken::new();
    let sim = Simulator::start(config, "127.0.0.1:0".parse().expect("addr"), cancel.clone())
        .await
        .expect("simulator starts");
    Running { sim, cancel }
}

async fn start() -> Running {
    start_with(|_| {}).await
}

fn call_event(customer: Uuid, id: &str, owner: Option<Uuid>) -> Value {
    let mut data = json!({"id": id, "customer_id": customer, "status": "ringing"});
    if let Some(owner) = owner {
        data["owner_type"] = json!("agent");
        data["owner_id"] = json!(owner);
    }
    json!({"event_type": "call_ringing", "data": data})
}

async fn wait_subscribed(addr: SocketAddr, customer: Uuid, count: usize) {
    eventually("subscriptions to reach the simulator", || async move {
        let stats = sim_stats(addr).await;
        stats["customers"][customer.to_string()]["subscriptions"]
            .as_array()
            .is_some_and(|s| s.len() == count)
    })
    .await;
}

#[tokio::test]
async fn handshake_errors_use_the_json_envelope() {
    let sim = start().await;
    let addr = sim.addr();
    let refused = |options: Connect| async move {
        match Client::connect(addr, options).await.expect("tcp") {
            Err(refused) => refused,
            Ok(_) => panic!("accepted"),
        }
    };
    let none = refused(Connect::path("/v1.0/ws")).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.body["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(none.body["error"]["reason"], "AUTHENTICATION_REQUIRED");
    assert!(
        none.body["error"]["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    let bad = refused(Connect::token("not.a.jwt")).await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert_eq!(bad.body["error"]["reason"], "INVALID_CREDENTIALS");
    let unknown_key = refused(Connect::path(
        "/v1.0/ws?accesskey=vb_unknownunknownunknownunknown12",
    ))
    .await;
    assert_eq!(unknown_key.body["error"]["reason"], "INVALID_CREDENTIALS");
    // A valid credential on a plain GET is not an upgrade.
    let token = admin_token(tutorial_customer());
    let (status, body) = http(sim.addr(), "GET", &format!("/v1.0/ws?token={token}"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
}

#[tokio::test]
async fn every_credential_source_is_read() {
    let sim = start().await;
    let c = tutorial_customer();
    let token = admin_token(c);
    let sources = [
        Connect::path("/v1.0/ws").header("Cookie", &format!("token={token}")),
        Connect::token(&token),
        Connect::path("/v1.0/ws").header("Authorization", &format!("Bearer {token}")),
        Connect::path("/v1.0/ws").header("Cookie", &format!("accesskey={KEY}")),
        Connect::path(format!("/v1.0/ws?accesskey={KEY}")),
        Connect::token(KEY),
        Connect::path(format!("/v1.0/service_agents/ws?token={token}")),
    ];
    for (i, source) in sources.into_iter().enumerate() {
        let mut client = match Client::connect(sim.addr(), source).await.expect("tcp") {
            Ok(client) => client,
            Err(refused) => panic!("source {i} refused: {refused:?}"),
        };
        let topic = format!("customer_id:{c}:call:*");
        client.subscribe(&[&topic]).await;
        wait_subscribed(sim.addr(), c, 1).await;
        let sent = publish(sim.addr(), &call_event(c, "k1", None)).await;
        assert_eq!(sent, 1, "source {i}");
        let event = client.recv_event().await;
        assert_eq!(
            event["topic"],
            format!("customer_id:{c}:call:k1"),
            "source {i}"
        );
        client.close().await;
        eventually("the connection to go", || async {
            sim_stats(sim.addr()).await["connections"] == 0
        })
        .await;
    }
}

#[tokio::test]
async fn envelope_events_reach_matching_subscribers_once() {
    let sim = start().await;
    let c = tutorial_customer();
    let agent = Uuid::new_v4();
    let mut admin = Client::connect_token(sim.addr(), &admin_token(c)).await;
    let mut agent_client = Client::connect_token(
        sim.addr(),
        &agent_token(SECRET, c, agent, perm::CUSTOMER_AGENT, &far_future()),
    )
    .await;
    // Two patterns that both match: still one delivery, under the first topic matched.
    admin
        .subscribe(&[
            &format!("customer_id:{c}:call:*"),
            &format!("customer_id:{c}:call"),
        ])
        .await;
    agent_client
        .subscribe(&[&format!("agent_id:{agent}:call:*")])
        .await;
    wait_subscribed(sim.addr(), c, 3).await;
    let sent = publish(sim.addr(), &call_event(c, "k1", Some(agent))).await;
    assert_eq!(sent, 2);
    let event = admin.recv_event().await;
    assert_eq!(event["event_type"], "call_ringing");
    assert_eq!(event["topic"], format!("customer_id:{c}:call:k1"));
    assert_eq!(event["data"]["status"], "ringing");
    assert!(
        event["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let event = agent_client.recv_event().await;
    assert_eq!(event["topic"], format!("agent_id:{agent}:call:k1"));
    admin.expect_silence(Duration::from_millis(200)).await;
    // An event of another agent's call does not reach this agent.
    let sent = publish(sim.addr(), &call_event(c, "k2", Some(Uuid::new_v4()))).await;
    assert_eq!(sent, 1);
    assert_eq!(admin.recv_event().await["data"]["id"], "k2");
    agent_client
        .expect_silence(Duration::from_millis(200))
        .await;
    // Event-type topics select one kind of event.
    admin
        .unsubscribe(&[
            &format!("customer_id:{c}:call:*"),
            &format!("customer_id:{c}:call"),
        ])
        .await;
    admin
        .subscribe(&[&format!("customer_id:{c}:call:call_hangup")])
        .await;
    wait_subscribed(sim.addr(), c, 2).await;
    assert_eq!(publish(sim.addr(), &call_event(c, "k3", None)).await, 0);
    let hangup = json!({"event_type":"call_hangup","data":{"id":"k3","customer_id":c}});
    assert_eq!(publish(sim.addr(), &hangup).await, 1);
    let event = admin.recv_event().await;
    assert_eq!(
        event["topic"],
        format!("customer_id:{c}:call:call_hangup:k3")
    );
}

#[tokio::test]
async fn refused_requests_get_error_frames() {
    let sim = start().await;
    let c = tutorial_customer();
    let agent = Uuid::new_v4();
    let mut client = Client::connect_token(
        sim.addr(),
        &agent_token(SECRET, c, agent, perm::CUSTOMER_AGENT, &far_future()),
    )
    .await;
    let cases = [
        ("not json".to_owned(), "invalid_json"),
        (
            r#"{"type":"publish","topics":[]}"#.to_owned(),
            "unknown_type",
        ),
        (
            r#"{"type":"subscribe","topics":["bad"]}"#.to_owned(),
            "invalid_topic",
        ),
        (
            json!({"type":"subscribe","topics":[format!("customer_id:{c}:call:*")]}).to_string(),
            "forbidden_topic",
        ),
    ];
    for (message, code) in cases {
        client.send_text(&message).await;
        let error = client.recv_json().await;
        assert_eq!(error["type"], "error", "{message}");
        assert_eq!(error["code"], code, "{message}");
        assert!(error.get("event_type").is_none());
    }
    // The session is still there and works.
    client
        .subscribe(&[&format!("agent_id:{agent}:call:*")])
        .await;
    wait_subscribed(sim.addr(), c, 1).await;
}

#[tokio::test]
async fn webhook_and_bare_shapes() {
    for shape in [Shape::Webhook, Shape::Bare] {
        let sim = start_with(|c| c.shape = shape).await;
        let c = tutorial_customer();
        let mut client = Client::connect_token(sim.addr(), &admin_token(c)).await;
        client
            .subscribe(&[&format!("customer_id:{c}:call:*")])
            .await;
        wait_subscribed(sim.addr(), c, 1).await;
        publish(sim.addr(), &call_event(c, "k1", None)).await;
        let frame = client.recv_json().await;
        match shape {
            Shape::Webhook => {
                assert_eq!(frame["type"], "call_ringing");
                assert_eq!(frame["data"]["id"], "k1");
                assert!(frame.get("event_type").is_none());
            }
            _ => {
                assert_eq!(frame["id"], "k1");
                assert_eq!(frame["status"], "ringing");
                assert!(frame.get("data").is_none());
            }
        }
    }
}

#[tokio::test]
async fn segment_matching_by_default_raw_prefix_as_a_quirk() {
    let c = tutorial_customer();
    let queuecall = json!({"event_type":"queuecall_created","data":{"id":"q1","customer_id":c}});
    let sim = start().await;
    let mut client = Client::connect_token(sim.addr(), &admin_token(c)).await;
    client.subscribe(&[&format!("customer_id:{c}:queue")]).await;
    wait_subscribed(sim.addr(), c, 1).await;
    assert_eq!(publish(sim.addr(), &queuecall).await, 0);
    drop(sim);

    let sim = start_with(|cfg| {
        cfg.quirks = Quirks {
            raw_prefix: true,
            ..Quirks::default()
        }
    })
    .await;
    let mut client = Client::connect_token(sim.addr(), &admin_token(c)).await;
    client.subscribe(&[&format!("customer_id:{c}:queue")]).await;
    wait_subscribed(sim.addr(), c, 1).await;
    assert_eq!(publish(sim.addr(), &queuecall).await, 1);
    assert_eq!(
        client.recv_event().await["topic"],
        format!("customer_id:{c}:queuecall:q1")
    );
}

#[tokio::test]
async fn double_delivery_quirk() {
    let c = tutorial_customer();
    let sim = start_with(|cfg| {
        cfg.quirks = Quirks {
            double_delivery: true,
            ..Quirks::default()
        }
    })
    .await;
    let mut client = Client::connect_token(sim.addr(), &admin_token(c)).await;
    client.subscribe(&[&format!("customer_id:{c}:call")]).await;
    wait_subscribed(sim.addr(), c, 1).await;
    assert_eq!(publish(sim.addr(), &call_event(c, "k1", None)).await, 2);
    let first = client.recv_event().await;
    let second = client.recv_event().await;
    assert_eq!(first["topic"], format!("customer_id:{c}:call:k1"));
    assert_eq!(
        second["topic"],
        format!("customer_id:{c}:call:call_ringing:k1")
    );
}

#[tokio::test]
async fn close_on_bad_topic_quirk_drops_without_a_close_frame() {
    let c = tutorial_customer();
    let sim = start_with(|cfg| {
        cfg.quirks = Quirks {
            close_on_bad_topic: true,
            ..Quirks::default()
        }
    })
    .await;
    let mut client = Client::connect_token(sim.addr(), &admin_token(c)).await;
    client.send_text("not json").await;
    client.expect_silence(Duration::from_millis(200)).await;
    client.subscribe(&["bad topic"]).await;
    assert_eq!(client.recv_close().await, (None, "eof".to_owned()));
}

#[tokio::test]
async fn drop_and_stall() {
    let sim = start().await;
    let c = tutorial_customer();
    let mut client = Client::connect_token(sim.addr(), &admin_token(c)).await;
    client.subscribe(&[&format!("customer_id:{c}")]).await;
    wait_subscribed(sim.addr(), c, 1).await;
    // Stalled: events wait, then arrive.
    let (status, body) = http(
        sim.addr(),
        "POST",
        &format!("/_sim/drop?customer_id={c}&stall_ms=400"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["stalled"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    publish(sim.addr(), &call_event(c, "k1", None)).await;
    client.expect_silence(Duration::from_millis(250)).await;
    assert_eq!(client.recv_event().await["data"]["id"], "k1");
    // Dropped: the socket ends with no close frame.
    let (status, body) = http(
        sim.addr(),
        "POST",
        &format!("/_sim/drop?customer_id={c}"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["dropped"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    assert_eq!(client.recv_close().await, (None, "eof".to_owned()));
    eventually("the connection to be gone", || async {
        sim_stats(sim.addr()).await["connections"] == 0
    })
    .await;
}

#[tokio::test]
async fn stats_and_raw_frames() {
    let sim = start().await;
    let c = tutorial_customer();
    let mut a = Client::connect_token(sim.addr(), &admin_token(c)).await;
    let mut b = Client::connect_token(sim.addr(), &admin_token(c)).await;
    a.subscribe(&[&format!("customer_id:{c}:call:*")]).await;
    b.subscribe(&[
        &format!("customer_id:{c}:message:*"),
        &format!("customer_id:{c}:call:*"),
    ])
    .await;
    wait_subscribed(sim.addr(), c, 3).await;
    let stats = sim_stats(sim.addr()).await;
    assert_eq!(stats["connections"], 2);
    let customer = &stats["customers"][c.to_string()];
    assert_eq!(customer["connections"], 2);
    assert_eq!(
        customer["subscriptions"],
        json!([
            format!("customer_id:{c}:call:*"),
            format!("customer_id:{c}:call:*"),
            format!("customer_id:{c}:message:*"),
        ])
    );
    let (status, body) = http(
        sim.addr(),
        "POST",
        &format!("/_sim/raw?customer_id={c}"),
        Some("{\"raw\":1}"),
    )
    .await;
    assert_eq!((status, body["sent"].as_u64()), (StatusCode::OK, Some(2)));
    assert_eq!(a.recv_json().await, json!({"raw": 1}));
    assert_eq!(b.recv_json().await, json!({"raw": 1}));
    // Malformed control requests.
    let (status, _) = http(sim.addr(), "POST", "/_sim/events", Some("{\"data\":{}}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = http(
        sim.addr(),
        "POST",
        "/_sim/events",
        Some(r#"{"event_type":"call_created","data":{"id":"x"}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = http(sim.addr(), "POST", "/_sim/drop?customer_id=nope", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn customer_endpoint_tells_an_access_keys_customer() {
    let sim = start().await;
    let (status, body) = http(
        sim.addr(),
        "GET",
        &format!("/v1.0/customer?accesskey={KEY}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["id"], TUTORIAL_CUSTOMER);
    let (status, body) = http(
        sim.addr(),
        "GET",
        "/v1.0/customer?accesskey=vb_unknownunknownunknownunknown12",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["reason"], "INVALID_CREDENTIALS");
    let plain_agent = agent_token(
        SECRET,
        tutorial_customer(),
        Uuid::new_v4(),
        perm::CUSTOMER_AGENT,
        &far_future(),
    );
    let (status, _) = http(
        sim.addr(),
        "GET",
        &format!("/v1.0/customer?token={plain_agent}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn pings_and_pong_deadline() {
    let sim = start_with(|cfg| {
        cfg.ping_interval = Duration::from_millis(100);
        cfg.pong_timeout = Duration::from_millis(500);
    })
    .await;
    let c = tutorial_customer();
    // A client that answers pings stays.
    let mut live = Client::connect_token(sim.addr(), &admin_token(c)).await;
    // One that does not is closed.
    let options = Connect {
        no_auto_pong: true,
        ..Connect::token(&admin_token(c))
    };
    let mut silent = match Client::connect(sim.addr(), options).await.expect("tcp") {
        Ok(client) => client,
        Err(refused) => panic!("{refused:?}"),
    };
    // The live client reads (and so answers pings) while the silent one is timed out.
    let silent_flow = async {
        assert!(matches!(
            silent.recv_within(WAIT).await,
            Some(Received::Ping(_))
        ));
        assert_eq!(silent.recv_close().await, (None, "eof".to_owned()));
    };
    tokio::join!(
        silent_flow,
        live.expect_silence(Duration::from_millis(1500))
    );
    eventually("only the live connection to remain", || async {
        sim_stats(sim.addr()).await["connections"] == 1
    })
    .await;
}

#[tokio::test]
async fn random_stream_flows_to_subscribers() {
    let sim = start_with(|cfg| cfg.event_rate = 500).await;
    let c = tutorial_customer();
    let mut client = Client::connect_token(sim.addr(), &admin_token(c)).await;
    client.subscribe(&[&format!("customer_id:{c}")]).await;
    let mut types = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let event = client.recv_event().await;
        assert!(
            event["topic"]
                .as_str()
                .is_some_and(|t| t.starts_with(&format!("customer_id:{c}:")))
        );
        assert_eq!(event["data"]["customer_id"], TUTORIAL_CUSTOMER);
        types.insert(event["event_type"].as_str().unwrap_or_default().to_owned());
    }
    assert!(types.len() >= 4, "a varied stream: {types:?}");
}

#[tokio::test]
async fn a_service_tokens_connections_are_filed_under_the_customers_they_subscribe_to() {
    let sim = start().await;
    // One project super-admin token for two customers' connections, as a gateway holds.
    let service = service_token();
    let (d, e) = (Uuid::new_v4(), Uuid::new_v4());
    let mut for_d = Client::connect_token(sim.addr(), &service).await;
    let mut for_e = Client::connect_token(sim.addr(), &service).await;
    for_d.subscribe(&[&format!("customer_id:{d}:call:*")]).await;
    for_e.subscribe(&[&format!("customer_id:{e}")]).await;
    wait_subscribed(sim.addr(), d, 1).await;
    wait_subscribed(sim.addr(), e, 1).await;
    let stats = sim_stats(sim.addr()).await;
    assert_eq!(stats["connections"], 2);
    assert_eq!(stats["customers"][d.to_string()]["connections"], 1);
    assert_eq!(
        stats["customers"][d.to_string()]["subscriptions"],
        json!([format!("customer_id:{d}:call:*")])
    );
    // Neither sits under the token's own customer any more.
    assert!(
        stats["customers"][tutorial_customer().to_string()].is_null(),
        "{stats}"
    );
    // Each event reaches its own customer's connection once.
    publish(sim.addr(), &call_event(d, "kd", None)).await;
    assert_eq!(for_d.recv_event().await["data"]["id"], "kd");
    for_e.expect_silence(Duration::from_millis(200)).await;
    // Dropping D's upstream leaves E's alone.
    let (status, body) = http(
        sim.addr(),
        "POST",
        &format!("/_sim/drop?customer_id={d}"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["dropped"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    assert_eq!(for_d.recv_close().await, (None, "eof".to_owned()));
    publish(sim.addr(), &call_event(e, "ke", None)).await;
    assert_eq!(for_e.recv_event().await["data"]["id"], "ke");
}

fn voipbin_world(cfg: &mut SimConfig) {
    (cfg.shape, cfg.quirks) = World::Voipbin.shape_and_quirks();
}

/// Waits until `addr` holds `count` subscriptions in all.
async fn wait_all_subscribed(addr: SocketAddr, count: usize) {
    eventually("subscriptions to reach the simulator", || async move {
        let stats = sim_stats(addr).await;
        let held: usize = stats["customers"].as_object().map_or(0, |c| {
            c.values()
                .map(|s| s["subscriptions"].as_array().map_or(0, Vec::len))
                .sum()
        });
        held == count
    })
    .await;
}

/// Frames that arrive within a moment, as text.
async fn drain_texts(client: &mut Client) -> Vec<Value> {
    let mut texts = Vec::new();
    while let Some(received) = client.recv_within(Duration::from_millis(300)).await {
        if let Received::Text(value) = received {
            texts.push(value);
        }
    }
    texts
}

#[tokio::test]
async fn voipbin_world_matches_raw_prefixes_once_per_published_topic() {
    let c = tutorial_customer();
    let agent = Uuid::new_v4();
    let sim = start_with(voipbin_world).await;
    let admin = admin_token(c);
    // One connection per subscription, and what each gets from one call event of the agent.
    let cases = [
        (format!("customer_id:{c}"), 2),
        (format!("customer_id:{c}:call"), 2),
        (format!("customer_id:{c}:call:"), 2),
        (format!("customer_id:{c}:call:*"), 0),
        (format!("customer_id:{c}:call:k1"), 1),
        (format!("customer_id:{c}:call:call_ringing:"), 1),
        (format!("customer_id:{c}:call:call_hangup:"), 0),
        (format!("customer_id:{c}:callx:"), 0),
    ];
    let mut clients = Vec::new();
    for (topic, _) in &cases {
        let mut client = Client::connect_token(sim.addr(), &admin).await;
        client.subscribe(&[topic]).await;
        clients.push(client);
    }
    let mut own = Client::connect_token(
        sim.addr(),
        &agent_token(SECRET, c, agent, perm::CUSTOMER_AGENT, &far_future()),
    )
    .await;
    own.subscribe(&[&format!("agent_id:{agent}:call:")]).await;
    wait_all_subscribed(sim.addr(), cases.len() + 1).await;
    let event = call_event(c, "k1", Some(agent));
    let sent = publish(sim.addr(), &event).await;
    let mut total = 0;
    for ((topic, expected), client) in cases.iter().zip(&mut clients) {
        let frames = drain_texts(client).await;
        assert_eq!(frames.len(), *expected, "{topic}: {frames:?}");
        for frame in &frames {
            // The bare object, as VoIPBIN sends it: no type, no topic.
            assert_eq!(*frame, event["data"], "{topic}");
        }
        total += frames.len();
    }
    assert_eq!(drain_texts(&mut own).await.len(), 2);
    assert_eq!(sent, total as u64 + 2);
    // `…:queue` catches queuecall events; `…:queue:` does not.
    let mut queue = Client::connect_token(sim.addr(), &admin).await;
    let mut exact = Client::connect_token(sim.addr(), &admin).await;
    queue.subscribe(&[&format!("customer_id:{c}:queue")]).await;
    exact.subscribe(&[&format!("customer_id:{c}:queue:")]).await;
    wait_all_subscribed(sim.addr(), cases.len() + 3).await;
    let queuecall = json!({"event_type":"queuecall_created","data":{"id":"q1","customer_id":c}});
    publish(sim.addr(), &queuecall).await;
    assert_eq!(drain_texts(&mut queue).await.len(), 2);
    assert_eq!(drain_texts(&mut exact).await.len(), 0);
}

#[tokio::test]
async fn voipbin_world_answers_nothing_and_drops_a_connection_for_a_refused_topic() {
    let c = tutorial_customer();
    let sim = start_with(voipbin_world).await;
    let mut client = Client::connect_token(sim.addr(), &admin_token(c)).await;
    // Anything after a valid owner is accepted, silently.
    client
        .subscribe(&[
            &format!("customer_id:{c}:call:"),
            &format!("customer_id:{c}:call:*"),
        ])
        .await;
    wait_subscribed(sim.addr(), c, 2).await;
    // What does not parse, and an unknown type, are skipped.
    client.send_text("not json").await;
    client
        .send_text(r#"{"type":"subscribe","topics":"x"}"#)
        .await;
    client
        .send_json(&json!({"type":"nonsense","topics":[format!("customer_id:{c}:message:")]}))
        .await;
    client.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(
        sim_stats(sim.addr()).await["customers"][c.to_string()]["subscriptions"],
        json!([
            format!("customer_id:{c}:call:"),
            format!("customer_id:{c}:call:*")
        ])
    );
    // A topic of another customer, even beside a good one and in an unsubscribe: the
    // connection goes, with no close frame.
    let other = Uuid::new_v4();
    for message in [
        json!({"type":"subscribe","topics":[format!("customer_id:{c}:message:"), format!("customer_id:{other}")]}),
        json!({"type":"unsubscribe","topics":[format!("customer_id:{other}:call:")]}),
        json!({"type":"subscribe","topics":[format!("customer_id:{c}:call:*"), "customer_id:not-a-uuid"]}),
    ] {
        let mut client = Client::connect_token(sim.addr(), &admin_token(c)).await;
        client.send_json(&message).await;
        assert_eq!(
            client.recv_close().await,
            (None, "eof".to_owned()),
            "{message}"
        );
    }
    // So does a binary frame.
    client
        .send_frame(fastwebsockets::Frame::binary(
            fastwebsockets::Payload::Borrowed(b"x"),
        ))
        .await;
    assert_eq!(client.recv_close().await, (None, "eof".to_owned()));
}

#[tokio::test]
async fn publishing_looks_only_at_the_subscriptions_of_the_events_owners() {
    let sim = start_with(voipbin_world).await;
    // A gateway's service token: one connection per customer it serves.
    let service = service_token();
    let mut others = Vec::new();
    for _ in 0..100 {
        let mut client = Client::connect_token(sim.addr(), &service).await;
        client
            .subscribe(&[&format!("customer_id:{}:call:", Uuid::new_v4())])
            .await;
        others.push(client);
    }
    let c = tutorial_customer();
    let mut mine = Client::connect_token(sim.addr(), &service).await;
    mine.subscribe(&[&format!("customer_id:{c}:call:")]).await;
    wait_all_subscribed(sim.addr(), 101).await;
    let before = sim_stats(sim.addr()).await["subscriptions_checked"]
        .as_u64()
        .expect("counted");
    assert_eq!(publish(sim.addr(), &call_event(c, "k1", None)).await, 2);
    let after = sim_stats(sim.addr()).await["subscriptions_checked"]
        .as_u64()
        .expect("counted");
    assert_eq!(after - before, 1, "only the customer's own subscription");
    assert_eq!(drain_texts(&mut mine).await.len(), 2);
}
