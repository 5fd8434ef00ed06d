//! The edges of the downstream contract (docs/protocol.md §1–§9) that need exact answers,
//! in both of the simulator's worlds: RFC 6455's handshake and close codes, every refusal
//! path of the limits (the customer's connections to VoIPBIN among them), topics named as
//! sent, and a healthy client surviving an ordinary burst.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use fanout_protocol::ws::{Decoder, Message, OpCode, Role, encode_masked};
use fanout_test_support::*;
use hyper::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

/// Sends `request` raw and answers the status line and the whole head of the answer.
async fn raw_answer(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(
            n > 0,
            "closed without an answer: {}",
            String::from_utf8_lossy(&head)
        );
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, text)
}

fn request(addr: SocketAddr, line: &str, headers: &[&str]) -> String {
    let mut text = format!("{line}\r\nHost: {addr}\r\n");
    for header in headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    text
}

in_both_worlds! {
async fn handshakes_follow_rfc_6455(world) {
    let stack = start_in(world).await;
    let addr = stack.addr;
    let token = admin_token(tutorial_customer());
    let line = format!("GET /v1.0/ws?token={token} HTTP/1.1");
    let upgrade = ["Upgrade: websocket", "Connection: Upgrade"];
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
    let v13 = "Sec-WebSocket-Version: 13";
    let good = [upgrade[0], upgrade[1], key, v13];
    assert_eq!(raw_answer(addr, &request(addr, &line, &good)).await.0, 101);
    // HTTP/1.0 has no upgrade.
    let old = format!("GET /v1.0/ws?token={token} HTTP/1.0");
    assert_eq!(raw_answer(addr, &request(addr, &old, &good)).await.0, 400);
    // A key that is not a base64 16-byte nonce.
    for bad in [
        "Sec-WebSocket-Key: k",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZSE=",
        "Sec-WebSocket-Key: not*base64*at*all*nope!!",
    ] {
        let (status, text) = raw_answer(
            addr,
            &request(addr, &line, &[upgrade[0], upgrade[1], bad, v13]),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {text}");
    }
    // Another version: 426, naming the one we speak.
    let (status, text) = raw_answer(
        addr,
        &request(
            addr,
            &line,
            &[upgrade[0], upgrade[1], key, "Sec-WebSocket-Version: 8"],
        ),
    )
    .await;
    assert_eq!(status, 426, "{text}");
    assert!(text.contains("Sec-WebSocket-Version: 13\r\n"), "{text}");
    // A hundred headers, as a browser behind a chain of proxies sends.
    let mut many: Vec<String> = good.iter().map(|h| (*h).to_owned()).collect();
    many.extend((0..96).map(|i| format!("X-Forwarded-Hop-{i}: 10.0.{i}.1")));
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(raw_answer(addr, &request(addr, &line, &many)).await.0, 101);
    stack.shutdown().await;
}
}

/// Opens a session with a raw socket and answers it after the 101.
async fn raw_session(addr: SocketAddr, token: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(upgrade_request(addr, &format!("/v1.0/ws?token={token}")).as_bytes())
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.expect("read"), 1);
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    stream
}

/// Reads frames until a close frame and answers its code.
async fn close_code(stream: &mut TcpStream) -> Option<u16> {
    let mut decoder = Decoder::new(Role::Client, 1 << 20);
    let mut input = bytes::BytesMut::new();
    let mut buf = [0u8; 4096];
    loop {
        while let Some(message) = decoder.decode(&mut input).expect("valid server frames") {
            if let Message::Close(code, _) = message {
                return code;
            }
        }
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("a close in time")
            .expect("read");
        assert!(n > 0, "closed without a close frame");
        input.extend_from_slice(&buf[..n]);
    }
}

in_both_worlds! {
async fn close_frames_with_invalid_codes_are_answered_with_1002(world) {
    let stack = start_in(world).await;
    let token = admin_token(tutorial_customer());
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
        let mut stream = raw_session(stack.addr, &token).await;
        let frame = encode_masked(OpCode::Close, &code.to_be_bytes(), [1, 2, 3, 4]);
        stream.write_all(&frame).await.expect("write");
        assert_eq!(
            close_code(&mut stream).await,
            Some(1002),
            "close code {code}"
        );
    }
    for code in [1000u16, 1001, 3000, 4999] {
        let mut stream = raw_session(stack.addr, &token).await;
        let frame = encode_masked(OpCode::Close, &code.to_be_bytes(), [1, 2, 3, 4]);
        stream.write_all(&frame).await.expect("write");
        assert_eq!(
            close_code(&mut stream).await,
            Some(1000),
            "close code {code}"
        );
    }
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn error_frames_name_topics_exactly_as_sent(world) {
    let stack = start_in(world).await;
    let c = tutorial_customer();
    let mut client = Client::connect_token(stack.addr, &admin_token(c)).await;
    let other = Uuid::new_v4().to_string().to_uppercase();
    let sent = format!("customer_id:{other}:call:*");
    client
        .subscribe(&[&format!("customer_id:{c}:call:*"), &sent])
        .await;
    let error = client.recv_json().await;
    assert_eq!(error["code"], "forbidden_topic");
    assert_eq!(error["topics"], json!([sent]));
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn every_limit_refuses_with_its_answer(world) {
    // Draining: 503.
    let stack = start_in(world).await;
    stack.gateway().endpoint().drain();
    let refused = Client::refused(
        stack.addr,
        Connect::token(&admin_token(tutorial_customer())),
    )
    .await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.body["error"]["status"], "UNAVAILABLE");
    assert!(refused.headers.contains_key("retry-after"));
    stack.shutdown().await;

    // Sessions: 429 past max_sessions.
    let stack = start_in_with(world, |_| {}, |config| config.limits.max_sessions = 1).await;
    let token = admin_token(tutorial_customer());
    let first = Client::connect_token(stack.addr, &token).await;
    let refused = Client::refused(stack.addr, Connect::token(&token)).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.body["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(refused.headers["retry-after"], "1");
    drop(first);
    stack.shutdown().await;

    // Handshakes: 429 past the rate.
    let stack = start_in_with(world,
        |_| {},
        |config| {
            config.limits.handshakes_per_second = 1;
            config.limits.handshake_burst = 1;
        },
    )
    .await;
    let _first = Client::connect_token(stack.addr, &token).await;
    let refused = Client::refused(stack.addr, Connect::token(&token)).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let metrics = metrics_text(stack.admin).await;
    assert!(
        metrics.contains("fanout_handshakes_refused_total{reason=\"handshake_rate\"}"),
        "{metrics}"
    );
    stack.shutdown().await;

    // Client messages: `rate_limited` past the burst, and the session stays.
    let stack = start_in_with(world,
        |_| {},
        |config| {
            config.session.messages_per_second = 1;
            config.session.message_burst = 3;
        },
    )
    .await;
    let c = tutorial_customer();
    let mut client = Client::connect_token(stack.addr, &admin_token(c)).await;
    // Four at once: three within the burst, the fourth over it.
    for _ in 0..4 {
        client.send_text(r#"{"type":"ping"}"#).await;
    }
    for _ in 0..3 {
        assert_eq!(client.recv_json().await["code"], "unknown_type");
    }
    assert_eq!(client.recv_json().await["code"], "rate_limited");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let topic = format!("customer_id:{c}:call:*");
    client.subscribe(&[&topic]).await;
    upstream_carries(&stack, c, &[&topic]).await;
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn a_client_that_keeps_reading_survives_an_ordinary_burst(world) {
    // The default configuration: a burst of 1,500 events of about 530 bytes (800 KB) at once,
    // under the 1 MiB queue even if the client read none of it meanwhile.
    let stack = start_in(world).await;
    let c = tutorial_customer();
    let mut client = Client::connect_token(stack.addr, &admin_token(c)).await;
    let topic = format!("customer_id:{c}:call:*");
    client.subscribe_synced(&[&topic]).await;
    upstream_carries(&stack, c, &[&topic]).await;
    let pad = "x".repeat(300);
    let events: Vec<_> = (0..1500)
        .map(|i| json!({"event_type":"call_ringing","data":{"id":format!("b{i}"),"customer_id":c,"pad":pad}}))
        .collect();
    // In VoIPBIN's world each arrives twice (under `…:call:<id>` and `…:call:<type>:<id>`).
    assert_eq!(
        publish_events(&stack, &json!(events)).await,
        1500 * frames_per_connection(world, 2)
    );
    for i in 0..1500 {
        let event = client.recv_event().await;
        assert_eq!(event["data"]["id"], format!("b{i}"));
    }
    client.expect_silence(Duration::from_millis(200)).await;
    stack.shutdown().await;
}
}

// About the listener alone (and counted in the process's metrics): one world.
#[tokio::test]
async fn past_max_pending_new_connections_are_refused_until_old_ones_can_be_evicted() {
    let stack = start_with(
        |_| {},
        |config| {
            config.limits.max_pending = 8;
            config.limits.header_timeout = Duration::from_secs(60);
        },
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(stack.addr).await.expect("connect"));
    }
    // None of the 8 admitted is a second old: the other 12 are closed at accept.
    let admin = stack.admin;
    eventually("pending-cap refusals counted", || async move {
        metrics_text(admin)
            .await
            .contains("fanout_connections_refused_total{reason=\"pending_cap\"} 12")
    })
    .await;
    // Once they have idled a second, an honest handshake evicts the oldest and gets in.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut honest = Client::connect_token(stack.addr, &admin_token(tutorial_customer())).await;
    honest.sync().await;
    assert!(
        metrics_text(admin)
            .await
            .contains("fanout_connections_refused_total{reason=\"pending_evicted\"} 1"),
    );
    drop(idle);
    stack.shutdown().await;
}

in_both_worlds! {
/// A customer's connections to VoIPBIN are one per kind of topic its sessions use, and no
/// more than `upstream.max_connections_per_customer`: a subscribe that would need more is
/// refused by name, whole, and everyone else keeps their events.
async fn a_subscribe_past_the_customers_connections_to_voipbin_is_refused_by_name(world) {
    let stack = start_in_with(
        world,
        |_| {},
        |config| config.upstream.max_connections_per_customer = 3,
    )
    .await;
    let c = tutorial_customer();
    let calls = format!("customer_id:{c}:call:*");
    let messages = format!("customer_id:{c}:message:*");
    let mut other = Client::connect_token(stack.addr, &admin_token(c)).await;
    other.subscribe_synced(&[&calls, &messages]).await;
    let mut greedy = Client::connect_token(stack.addr, &admin_token(c)).await;
    let typed: Vec<String> = ["call_hangup", "call_ringing", "call_progressing"]
        .iter()
        .map(|t| format!("customer_id:{c}:call:{t}"))
        .collect();
    let typed: Vec<&str> = typed.iter().map(String::as_str).collect();
    greedy.subscribe(&typed).await;
    let error = greedy.recv_json().await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "upstream_limit");
    assert_eq!(error["topics"], json!(typed));
    let message = error["message"].as_str().expect("message");
    assert!(
        message.contains('3') && message.contains("upstream.max_connections_per_customer"),
        "{message}"
    );
    // Nothing of it was applied; the others' events flow on.
    upstream_carries(&stack, c, &[&calls, &messages]).await;
    publish_events(&stack, &call_at(c, "k1", None, CallStep::Hangup)).await;
    let k1 = other.recv_event().await;
    assert_eq!(k1["data"]["id"], "k1");
    greedy.expect_silence(Duration::from_millis(200)).await;
    // A resume refused so uses up none of the session's four resumes.
    for _ in 0..5 {
        greedy
            .send_json(&json!({"type": "subscribe", "topics": typed, "since": k1["cursor"]}))
            .await;
        assert_eq!(greedy.recv_json().await["code"], "upstream_limit");
    }
    greedy
        .send_json(&json!({"type": "subscribe", "topics": [typed[0]], "since": k1["cursor"]}))
        .await;
    loop {
        let frame = greedy.recv_json().await;
        assert_ne!(frame["type"], "error", "{frame}");
        if frame["type"] == "resumed" {
            break;
        }
    }
    // One typed topic fits.
    greedy.subscribe_synced(&[typed[0]]).await;
    upstream_carries(&stack, c, &[&calls, &messages, typed[0]]).await;
    assert_eq!(upstream_connections(&stack, c).await, 3);
    publish_events(&stack, &call_at(c, "k2", None, CallStep::Ringing)).await;
    publish_events(&stack, &call_at(c, "k2", None, CallStep::Hangup)).await;
    let event = greedy.recv_event().await;
    assert_eq!(event["topic"], format!("customer_id:{c}:call:call_hangup:k2"));
    assert_eq!(event["event_type"], "call_hangup");
    greedy.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(other.recv_event().await["data"]["id"], "k2");
    assert_eq!(other.recv_event().await["data"]["id"], "k2");
    // Counted (the metrics are the test process's: the other world's run counts too).
    assert!(
        metric(stack.admin, "fanout_requests_refused_total{code=\"upstream_limit\"}").await
            >= 1.0
    );
    stack.shutdown().await;
}
}
