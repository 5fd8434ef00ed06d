//! What an operator relies on: the origin allow-list, the admin listener's protection,
//! readiness as JSON, refused handshakes logged at a bounded rate without their tokens, and
//! metrics that are there from start-up.

#[macro_use]
mod common;

use std::time::Duration;

use common::process::*;
use common::*;
use fanout_test_support::*;
use hyper::StatusCode;

#[tokio::test]
async fn browsers_of_other_origins_get_403_with_the_json_envelope() {
    let stack = start_with(
        |_| {},
        |config| {
            config.allowed_origins = vec![
                "https://app.example.com".to_owned(),
                "*.customers.example.net".to_owned(),
            ];
        },
    )
    .await;
    let token = admin_token(tutorial_customer());
    for origin in [
        "https://evil.example",
        "https://app.example.com.evil.example",
        "http://app.example.com",
        "https://customers.example.net",
        "null",
    ] {
        let refused =
            Client::refused(stack.addr, Connect::token(&token).header("Origin", origin)).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{origin}");
        assert_eq!(
            refused.body["error"]["status"], "PERMISSION_DENIED",
            "{origin}: {}",
            refused.body
        );
        assert!(
            refused.body["error"]["request_id"].is_string(),
            "{}",
            refused.body
        );
    }
    // Two Origin headers are never taken for one of them.
    let refused = Client::refused(
        stack.addr,
        Connect::token(&token)
            .header("Origin", "https://evil.example")
            .header("Origin", "https://app.example.com"),
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    for origin in [
        Some("https://app.example.com"),
        Some("https://tenant-1.customers.example.net"),
        None,
    ] {
        let options = match origin {
            Some(origin) => Connect::token(&token).header("Origin", origin),
            None => Connect::token(&token),
        };
        match Client::connect(stack.addr, options).await {
            Ok(Ok(client)) => client.close().await,
            other => panic!("{origin:?} refused: {:?}", other.err()),
        }
    }
    // Six refused, each asked twice (the client asks again to read the body).
    assert_eq!(
        metric(
            stack.admin,
            "fanout_handshakes_refused_total{reason=\"origin\"}"
        )
        .await,
        12.0
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn without_a_list_every_origin_is_allowed() {
    let stack = start().await;
    let token = admin_token(tutorial_customer());
    match Client::connect(
        stack.addr,
        Connect::token(&token).header("Origin", "https://anywhere.example"),
    )
    .await
    {
        Ok(Ok(client)) => client.close().await,
        other => panic!("refused: {:?}", other.err()),
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn the_tenant_list_needs_the_admin_token_and_the_probes_do_not() {
    let open = start_with(|_| {}, |config| config.admin.token.clear()).await;
    let (status, body) = http(open.admin, "GET", "/customers", None).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "without a token configured: {body}"
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("admin.token"))
    );
    open.shutdown().await;

    let stack = start().await;
    let c = tutorial_customer();
    let client = Client::connect_token(stack.addr, &admin_token(c)).await;
    let (status, _) = http(stack.admin, "GET", "/customers", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for wrong in [
        "Bearer wrong-token",
        "Bearer test-admin-tokem",
        "Bearer test-admin-token-and-more",
        "test-admin-token",
        "Basic dGVzdDp0ZXN0",
    ] {
        let (status, headers, _) = http_full(
            stack.admin,
            "GET",
            "/customers",
            &[("Authorization".to_owned(), wrong.to_owned())],
            None,
        )
        .await
        .expect("answer");
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong}");
        assert_eq!(headers["www-authenticate"], "Bearer");
    }
    let (status, body) = admin_get(stack.admin, "/customers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["customers"][0]["customer_id"], c.to_string());
    for path in ["/healthz", "/metrics"] {
        let (status, _) = http(stack.admin, "GET", path, None).await;
        assert_eq!(status, StatusCode::OK, "{path} stays open");
    }
    let (status, body) = http(stack.admin, "GET", "/readyz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({"ready": true, "reasons": []}));
    assert!(metrics_text(stack.admin).await.contains("fanout_ready 1"));
    client.close().await;
    stack.shutdown().await;
}

#[tokio::test]
async fn refused_handshakes_are_logged_at_a_bounded_rate_without_their_tokens() {
    let (sim, _cancel) = start_sim(World::Voipbin, |_| {}).await;
    let gateway = spawn_gateway(sim.local_addr(), &[]).await;
    // A forged token (signed with another secret), 60 times within a second.
    let forged = agent_token(
        "not-the-secret",
        tutorial_customer(),
        uuid::Uuid::new_v4(),
        perm::PROJECT_SUPER_ADMIN,
        &far_future(),
    );
    let started = std::time::Instant::now();
    for _ in 0..60 {
        let refused = Client::refused(gateway.addr, Connect::token(&forged)).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    }
    let burst = started.elapsed();
    // One more after the window turned carries the count of the unlogged ones.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let _ = Client::refused(gateway.addr, Connect::token(&forged)).await;
    let admin = gateway.admin;
    // Each refused request above was sent twice (the client asks again to read the body).
    eventually("the refusals counted", || async move {
        metric(
            admin,
            "fanout_handshakes_refused_total{reason=\"signature\"}",
        )
        .await
            >= 122.0
    })
    .await;
    // The last refusal's line carries the count of those left unlogged before it.
    let logs = &gateway;
    eventually("the last refusal logged", || async move {
        logs.logged("Handshake refused")
            .iter()
            .any(|l| l["fields"]["unlogged"].as_u64().is_some_and(|n| n > 0))
    })
    .await;
    let lines = gateway.logged("Handshake refused");
    let seconds = burst.as_secs() + 2;
    assert!(
        lines.len() as u64 <= 10 * (seconds + 1),
        "{} lines in about {seconds} s",
        lines.len()
    );
    assert!(
        lines.len() >= 11,
        "at most the rate, but logged: {}",
        lines.len()
    );
    let unlogged: u64 = lines
        .iter()
        .filter_map(|l| l["fields"]["unlogged"].as_u64())
        .sum();
    assert_eq!(
        unlogged as usize + lines.len(),
        122,
        "every refusal is logged or counted as unlogged"
    );
    let first = &lines[0]["fields"];
    assert_eq!(first["reason"], "signature");
    assert_eq!(first["status"], 401);
    assert!(
        first["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{first}"
    );
    let all = gateway
        .logs
        .lock()
        .expect("logs")
        .iter()
        .cloned()
        .collect::<Vec<_>>();
    let signature = forged.rsplit('.').next().expect("signature");
    assert!(
        all.iter().all(|line| !line.contains(signature)),
        "a log line holds the token"
    );
}

#[tokio::test]
async fn every_metric_is_described_and_present_before_any_session() {
    let (sim, _cancel) = start_sim(World::Voipbin, |_| {}).await;
    let gateway = spawn_gateway(sim.local_addr(), &[]).await;
    let text = metrics_text(gateway.admin).await;
    let mut families = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().expect("name");
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP line"
            );
            families.push(name.to_owned());
        }
    }
    for m in fanout_gateway::telemetry::METRICS {
        assert!(
            families.iter().any(|f| f == m.name),
            "{} missing at start-up",
            m.name
        );
    }
    for expected in [
        "fanout_sessions 0",
        "fanout_bytes_written_total 0",
        "fanout_slow_consumers_total 0",
        "fanout_handshakes_refused_total{reason=\"origin\"} 0",
        "fanout_upstream_connections{state=\"connected\"} 0",
        "fanout_session_limit 100000",
        "fanout_ready 1",
        "fanout_upstream_connect_seconds_count 0",
        "fanout_session_queue_frames_count",
        "process_open_fds ",
        "process_max_fds ",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from\n{text}");
    }
    let version = env!("CARGO_PKG_VERSION");
    assert!(text.contains(&format!("fanout_build_info{{version=\"{version}\"}} 1")));

    // Traffic moves them: bytes written and the upstream's connect time.
    let c = tutorial_customer();
    let mut client = Client::connect_token(gateway.addr, &admin_token(c)).await;
    client
        .subscribe_synced(&[&format!("customer_id:{c}:call:*")])
        .await;
    let admin = gateway.admin;
    eventually("the upstream's connect time recorded", || async move {
        metric(admin, "fanout_upstream_connect_seconds_count").await >= 1.0
    })
    .await;
    // A session's bytes are counted a batch at a time, and the rest when it ends.
    client.close().await;
    eventually("the bytes written counted", || async move {
        metric(admin, "fanout_bytes_written_total").await > 0.0
    })
    .await;
}
