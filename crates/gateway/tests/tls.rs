//! TLS both ways, with a private CA made in the test: browsers on `wss://` (the real binary,
//! its certificate reloaded when the files change and on SIGHUP), and the upstream to a
//! simulator on `wss://` (events and the access-key check over `https://`), with every TLS
//! failure named in the metrics.

#[macro_use]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::process::*;
use common::*;
use fanout_test_support::pki::{Ca, Issued, Validity};
use fanout_test_support::*;
use hyper::StatusCode;

fn install(from: &Issued, dir: &Path) {
    // As a rotation does: the new files replace the old ones whole.
    for (source, name) in [(&from.cert, "tls.crt"), (&from.key, "tls.key")] {
        let next = dir.join(format!("{name}.next"));
        std::fs::copy(source, &next).expect("copy");
        std::fs::rename(&next, dir.join(name)).expect("rename");
    }
}

/// Whether a client trusting `ca` opens a session on `addr`.
async fn opens(addr: std::net::SocketAddr, ca: &Ca) -> bool {
    let token = admin_token(tutorial_customer());
    matches!(
        Client::connect(
            addr,
            Connect::token(&token).tls(ca.client_config(), "localhost")
        )
        .await,
        Ok(Ok(_))
    )
}

/// Two CAs, the first one's certificate installed as `tls.crt`/`tls.key` in a directory,
/// and the gateway binary serving those files, checking them every `reload_interval`.
struct Rotating {
    first: Ca,
    second: Ca,
    dir: std::path::PathBuf,
    sim: Arc<voipbin_sim::Simulator>,
    _cancel: tokio_util::sync::CancellationToken,
    gateway: Running,
}

async fn rotating_gateway(reload_interval: &str) -> Rotating {
    let first = Ca::new("first CA");
    let second = Ca::new("second CA");
    let dir = first.dir().join("serving");
    std::fs::create_dir_all(&dir).expect("dir");
    install(
        &first.server("gw1", &["localhost"], Validity::Current),
        &dir,
    );
    let (sim, cancel) = start_sim(World::Voipbin, |_| {}).await;
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let gateway = spawn_gateway(
        sim.local_addr(),
        &[
            ("FANOUT_TLS_CERT", cert.to_str().expect("path")),
            ("FANOUT_TLS_KEY", key.to_str().expect("path")),
            ("FANOUT_TLS__RELOAD_INTERVAL", reload_interval),
        ],
    )
    .await;
    Rotating {
        first,
        second,
        dir,
        sim,
        _cancel: cancel,
        gateway,
    }
}

/// A gateway in this process serving `wss://` with `served`, configured further by
/// `configure`.
async fn tls_stack(
    served: &Issued,
    configure: impl FnOnce(&mut fanout_gateway::config::Config),
) -> Stack {
    start_with(
        |_| {},
        |config| {
            config.tls.cert_file = Some(served.cert.clone());
            config.tls.key_file = Some(served.key.clone());
            configure(config);
        },
    )
    .await
}

#[tokio::test]
async fn browsers_get_wss_and_a_rotated_certificate_without_a_restart() {
    let Rotating {
        first,
        second,
        dir,
        sim,
        _cancel,
        gateway,
    } = rotating_gateway("100ms").await;
    let c = tutorial_customer();
    let mut session = match Client::connect(
        gateway.addr,
        Connect::token(&admin_token(c)).tls(first.client_config(), "localhost"),
    )
    .await
    {
        Ok(Ok(client)) => client,
        other => panic!("wss:// session refused: {:?}", other.err()),
    };
    session
        .subscribe_synced(&[&format!("customer_id:{c}:call:*")])
        .await;
    sim_subscriptions(sim.local_addr(), c, 1).await;
    publish(sim.local_addr(), &call(c, "before", None)).await;
    assert_eq!(session.recv_event().await["data"]["id"], "before");
    assert!(
        metric(
            gateway.admin,
            "fanout_tls_certificate_expiry_timestamp_seconds"
        )
        .await
            > 1_700_000_000.0,
        "the served certificate's expiry is exported"
    );

    // A client that does not trust the CA, and one speaking plain HTTP, are turned away
    // and counted by kind.
    assert!(!opens(gateway.addr, &second).await);
    assert!(
        Client::connect(gateway.addr, Connect::token(&admin_token(c)))
            .await
            .map(|r| r.is_err())
            .unwrap_or(true),
        "a plain ws:// handshake on a TLS listener gets no session"
    );
    let admin = gateway.admin;
    eventually("both failures counted", || async move {
        metric(
            admin,
            "fanout_tls_handshake_failures_total{reason=\"certificate_rejected\"}",
        )
        .await
            >= 1.0
            && metric(
                admin,
                "fanout_tls_handshake_failures_total{reason=\"protocol\"}",
            )
            .await
                >= 1.0
    })
    .await;

    // The rotation: new sessions get the new certificate, the open one goes on.
    install(
        &second.server("gw2", &["localhost"], Validity::Current),
        &dir,
    );
    let (first_ref, second_ref, addr) = (&first, &second, gateway.addr);
    eventually("the new certificate served", || async move {
        opens(addr, second_ref).await && !opens(addr, first_ref).await
    })
    .await;
    assert!(metric(gateway.admin, "fanout_tls_reloads_total{outcome=\"ok\"}").await >= 1.0);
    publish(sim.local_addr(), &call(c, "after", None)).await;
    assert_eq!(session.recv_event().await["data"]["id"], "after");

    // A half-done rotation (a key that is not the certificate's) keeps the old pair.
    let failed_before = metric(admin, "fanout_tls_reloads_total{outcome=\"error\"}").await;
    let other = second.server("gw3", &["localhost"], Validity::Current);
    std::fs::copy(&other.key, dir.join("tls.key")).expect("copy");
    eventually("the failed reload counted", || async move {
        metric(admin, "fanout_tls_reloads_total{outcome=\"error\"}").await > failed_before
    })
    .await;
    // Told once, not at every check while the files stay as they are.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        metric(admin, "fanout_tls_reloads_total{outcome=\"error\"}").await,
        failed_before + 1.0
    );
    assert!(
        opens(gateway.addr, &second).await,
        "the previous pair is still served"
    );
    session.close().await;
}

#[tokio::test]
async fn sighup_reloads_the_certificate_at_once() {
    let Rotating {
        first,
        second,
        dir,
        sim: _,
        _cancel,
        gateway,
    } = rotating_gateway("1h").await;
    assert!(opens(gateway.addr, &first).await);
    install(
        &second.server("gw2", &["localhost"], Validity::Current),
        &dir,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        opens(gateway.addr, &first).await,
        "without a check or a signal the old certificate stays"
    );
    signal(&gateway.child, "-HUP");
    let second_ref = &second;
    let addr = gateway.addr;
    eventually("the new certificate after SIGHUP", || async move {
        opens(addr, second_ref).await
    })
    .await;
    assert!(!opens(gateway.addr, &first).await);
    let (status, _) = http(gateway.admin, "GET", "/healthz", None).await;
    assert_eq!(status, StatusCode::OK, "SIGHUP does not stop the node");
}

/// A simulator serving `wss://` with `server`'s certificate (and asking for client
/// certificates of `client_ca`, when given).
async fn tls_sim(
    server: &Issued,
    client_ca: Option<&Path>,
) -> (
    Arc<voipbin_sim::Simulator>,
    tokio_util::sync::CancellationToken,
) {
    let tls = voipbin_sim::tls_config(&server.cert, &server.key, client_ca).expect("sim TLS");
    start_sim(World::Voipbin, move |config| config.tls = Some(tls)).await
}

#[tokio::test]
async fn the_upstream_over_wss_trusts_a_private_ca_for_events_and_access_keys() {
    let ca = Ca::new("VoIPBIN private CA");
    let (sim, sim_cancel) = tls_sim(
        &ca.server("voipbin", &["localhost"], Validity::Current),
        None,
    )
    .await;
    assert!(sim.ws_url().starts_with("wss://localhost:"));
    let mut config = test_config(&sim, World::Voipbin);
    config.upstream.ca_file = Some(ca.cert_path());
    config.validate().expect("valid");
    let gateway = fanout_gateway::Gateway::start(config)
        .await
        .expect("gateway starts");
    let c = tutorial_customer();
    // A browser with an access key: checked against VoIPBIN over https://.
    let mut session = match Client::connect(
        gateway.local_addr(),
        Connect::path(format!("/v1.0/ws?accesskey={KEY}")),
    )
    .await
    {
        Ok(Ok(client)) => client,
        other => panic!("access-key session refused: {:?}", other.err()),
    };
    assert!(
        sim.stats().lookups >= 1,
        "the key was checked at the simulator"
    );
    session
        .subscribe_synced(&[&format!("customer_id:{c}:call:*")])
        .await;
    sim_subscriptions(sim.local_addr(), c, 1).await;
    publish(sim.local_addr(), &call(c, "over-tls", None)).await;
    assert_eq!(session.recv_event().await["data"]["id"], "over-tls");
    session.close().await;
    gateway.shutdown().await;
    sim_cancel.cancel();
}

/// Starts a gateway against `sim` with `configure`, opens a session that needs the
/// customer's upstream, and waits until the upstream's connect errors show `reason`.
async fn upstream_fails_with(
    sim: &voipbin_sim::Simulator,
    configure: impl FnOnce(&mut fanout_gateway::config::Config),
    reason: &str,
) {
    let mut config = test_config(sim, World::Voipbin);
    configure(&mut config);
    config.validate().expect("valid");
    let gateway = fanout_gateway::Gateway::start(config)
        .await
        .expect("gateway starts");
    let c = tutorial_customer();
    let mut session = Client::connect_token(gateway.local_addr(), &admin_token(c)).await;
    session
        .subscribe_synced(&[&format!("customer_id:{c}:call:*")])
        .await;
    let admin = gateway.admin_addr();
    let line = format!("fanout_upstream_connect_errors_total{{reason=\"{reason}\"}}");
    let line = &line;
    eventually(
        &format!("an upstream failure counted as {reason}"),
        || async move { metric(admin, line).await >= 1.0 },
    )
    .await;
    let (_, customers) = admin_get(admin, "/customers").await;
    assert_ne!(
        customers["customers"][0]["upstream"], "connected",
        "{reason}: no upstream may be connected: {customers}"
    );
    assert_eq!(
        sim.stats().connections_total,
        0,
        "{reason}: no WebSocket reached VoIPBIN"
    );
    session.close().await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn upstream_tls_failures_are_named_by_kind() {
    let ca = Ca::new("VoIPBIN private CA");
    // Signed by a CA the gateway was not told about.
    let (sim, _a) = tls_sim(
        &ca.server("unknown", &["localhost"], Validity::Current),
        None,
    )
    .await;
    upstream_fails_with(&sim, |_| {}, "tls_unknown_issuer").await;
    // Expired.
    let (sim, _b) = tls_sim(
        &ca.server("expired", &["localhost"], Validity::Expired),
        None,
    )
    .await;
    upstream_fails_with(
        &sim,
        |c| c.upstream.ca_file = Some(ca.cert_path()),
        "tls_expired",
    )
    .await;
    // Made out to another name.
    let (sim, _c) = tls_sim(
        &ca.server("other", &["other.example"], Validity::Current),
        None,
    )
    .await;
    upstream_fails_with(
        &sim,
        |c| c.upstream.ca_file = Some(ca.cert_path()),
        "tls_name_mismatch",
    )
    .await;
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_voipbin_asks_for_one() {
    let ca = Ca::new("VoIPBIN private CA");
    let client = ca.client("fanout-gateway");
    let (sim, _cancel) = tls_sim(
        &ca.server("mtls", &["localhost"], Validity::Current),
        Some(&ca.cert_path()),
    )
    .await;
    // Without one, VoIPBIN ends the handshake.
    upstream_fails_with(
        &sim,
        |c| {
            c.upstream.ca_file = Some(ca.cert_path());
            c.upstream.public_roots = false;
        },
        "tls_client_certificate",
    )
    .await;
    let mut config = test_config(&sim, World::Voipbin);
    config.upstream.ca_file = Some(ca.cert_path());
    config.upstream.public_roots = false;
    config.upstream.client_cert_file = Some(client.cert.clone());
    config.upstream.client_key_file = Some(client.key.clone());
    config.validate().expect("valid");
    let gateway = fanout_gateway::Gateway::start(config)
        .await
        .expect("gateway starts");
    let c = tutorial_customer();
    let mut session = Client::connect_token(gateway.local_addr(), &admin_token(c)).await;
    session
        .subscribe_synced(&[&format!("customer_id:{c}:call:*")])
        .await;
    sim_subscriptions(sim.local_addr(), c, 1).await;
    publish(sim.local_addr(), &call(c, "mtls", None)).await;
    assert_eq!(session.recv_event().await["data"]["id"], "mtls");
    session.close().await;
    gateway.shutdown().await;
}

#[test]
fn tls_settings_that_cannot_work_are_refused_at_start() {
    let ca = Ca::new("CA");
    let a = ca.server("a", &["localhost"], Validity::Current);
    let b = ca.server("b", &["localhost"], Validity::Current);
    let flags = fanout_gateway::config::Overrides {
        jwt_secret: Some("s".into()),
        upstream_token: Some("t".into()),
        tls_cert: Some(a.cert.clone()),
        tls_key: Some(b.key.clone()),
        ..Default::default()
    };
    let err = fanout_gateway::config::Config::load(None, [], &flags).expect_err("mismatched key");
    assert!(err.to_string().contains("tls:"), "{err}");
    let flags = fanout_gateway::config::Overrides {
        jwt_secret: Some("s".into()),
        upstream_token: Some("t".into()),
        tls_cert: Some(a.cert.clone()),
        ..Default::default()
    };
    let err = fanout_gateway::config::Config::load(None, [], &flags).expect_err("no key");
    assert!(err.to_string().contains("tls.key_file"), "{err}");
    let env = [(
        "FANOUT_UPSTREAM__PUBLIC_ROOTS".to_owned(),
        "false".to_owned(),
    )];
    let flags = fanout_gateway::config::Overrides {
        jwt_secret: Some("s".into()),
        upstream_token: Some("t".into()),
        ..Default::default()
    };
    let err = fanout_gateway::config::Config::load(None, env, &flags).expect_err("no roots");
    assert!(err.to_string().contains("upstream.ca_file"), "{err}");
    let flags = fanout_gateway::config::Overrides {
        jwt_secret: Some("s".into()),
        upstream_token: Some("t".into()),
        tls_cert: Some(a.cert.clone()),
        tls_key: Some(a.key.clone()),
        upstream_ca: Some(ca.cert_path()),
        ..Default::default()
    };
    fanout_gateway::config::Config::load(None, [], &flags).expect("a good pair and CA");
}

#[tokio::test]
async fn over_wss_a_frozen_reader_is_closed_as_too_slow_and_big_events_arrive_whole() {
    let ca = Ca::new("CA");
    let served = ca.server("gw", &["localhost"], Validity::Current);
    let stack = tls_stack(&served, |config| {
        config.session.queue_bytes = 512 * 1024;
        config.session.close_timeout = Duration::from_secs(1);
    })
    .await;
    let c = tutorial_customer();
    let connect = || {
        Client::connect(
            stack.addr,
            Connect::token(&admin_token(c)).tls(ca.client_config(), "localhost"),
        )
    };
    let (Ok(Ok(mut reader)), Ok(Ok(mut frozen))) = (connect().await, connect().await) else {
        panic!("wss:// sessions refused");
    };
    let topic = format!("customer_id:{c}:call:*");
    reader.subscribe_synced(&[&topic]).await;
    frozen.subscribe_synced(&[&topic]).await;
    upstream_subscriptions(&stack, c, 1).await;
    // 200 events of 40 KB: 8 MB, far past the frozen one's socket buffers and queue, and
    // each one more than rustls takes in one write.
    let padding = "x".repeat(40_000);
    for i in 0..200 {
        let mut event = call(c, &format!("big-{i}"), None);
        event["data"]["padding"] = serde_json::json!(padding);
        publish(stack.sim_addr(), &event).await;
        let got = reader.recv_event().await;
        assert_eq!(got["data"]["id"], format!("big-{i}"));
        assert_eq!(got["data"]["padding"].as_str().map(str::len), Some(40_000));
    }
    let admin = stack.admin;
    eventually("the frozen reader closed as too slow", || async move {
        metric(admin, "fanout_slow_consumers_total").await >= 1.0
    })
    .await;
    assert!(metric(admin, "fanout_bytes_written_total").await > 8_000_000.0);
    drop(frozen);
    reader.close().await;
    stack.shutdown().await;
}

#[tokio::test]
async fn a_tls_listener_takes_the_handshake_rate_before_the_tls_handshake() {
    let ca = Ca::new("CA");
    let served = ca.server("gw", &["localhost"], Validity::Current);
    let stack = tls_stack(&served, |config| {
        config.limits.handshakes_per_second = 1;
        config.limits.handshake_burst = 2;
    })
    .await;
    let token = admin_token(tutorial_customer());
    let mut opened = 0;
    for _ in 0..6 {
        if let Ok(Ok(client)) = Client::connect(
            stack.addr,
            Connect::token(&token).tls(ca.client_config(), "localhost"),
        )
        .await
        {
            opened += 1;
            client.close().await;
        }
    }
    assert!(
        (2..=3).contains(&opened),
        "{opened} of 6 opened with a burst of 2"
    );
    assert!(
        metric(
            stack.admin,
            "fanout_connections_refused_total{reason=\"handshake_rate\"}"
        )
        .await
            >= 3.0
    );
    assert_eq!(
        metric(
            stack.admin,
            "fanout_handshakes_refused_total{reason=\"handshake_rate\"}"
        )
        .await,
        0.0,
        "not taken twice"
    );
    stack.shutdown().await;
}

/// The tutorial's own Python and Node programs over `wss://`, unchanged but for the URL,
/// trusting the test's CA the way each library is told to from outside.
#[tokio::test]
async fn the_tutorial_clients_work_over_wss() {
    let ca = Ca::new("CA");
    let served = ca.server("gw", &["localhost"], Validity::Current);
    // The tutorial's world, whose event types the tutorial's programs switch on.
    let (sim, _cancel) = start_sim(World::Tutorial, |_| {}).await;
    let gateway = spawn_gateway(
        sim.local_addr(),
        &[
            ("FANOUT_UPSTREAM__MATCHING", "segment"),
            ("FANOUT_TLS_CERT", served.cert.to_str().expect("path")),
            ("FANOUT_TLS_KEY", served.key.to_str().expect("path")),
            // So that the first client's subscriptions are gone before the second starts.
            ("FANOUT_UPSTREAM__LINGER", "100ms"),
        ],
    )
    .await;
    let c = TUTORIAL_CUSTOMER;
    for (which, expected) in [
        (TutorialClient::Python, "Call a1b2c3d4 status: answered"),
        (TutorialClient::Node, "Call a1b2c3d4: answered"),
    ] {
        let mut run = TutorialRun::start_tls(
            which,
            gateway.addr.port(),
            &admin_token(tutorial_customer()),
            &ca.cert_path(),
        )
        .await
        .expect("tutorial client starts (installed by .ci/run)");
        run.expect_line("WebSocket connection established").await;
        run.expect_line("Subscribed to events").await;
        sim_subscriptions(sim.local_addr(), tutorial_customer(), 3).await;
        let event = serde_json::json!({"event_type":"call.status","data":{"id":"a1b2c3d4","customer_id":c,"status":"answered"}});
        publish(sim.local_addr(), &event).await;
        run.expect_line(expected).await;
        drop(run);
        // The next client starts once this one's subscriptions are gone upstream.
        sim_subscriptions(sim.local_addr(), tutorial_customer(), 0).await;
    }
}

#[tokio::test]
async fn slow_tls_clients_are_cut_at_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = Ca::new("CA");
    let served = ca.server("gw", &["localhost"], Validity::Current);
    let stack = tls_stack(&served, |config| {
        config.limits.header_timeout = Duration::from_millis(500);
    })
    .await;
    // A hello never finished: the first byte of a TLS record, then nothing.
    let mut stalled = tokio::net::TcpStream::connect(stack.addr)
        .await
        .expect("connect");
    stalled.write_all(&[0x16]).await.expect("write");
    // The TLS handshake done, then no request.
    let tcp = tokio::net::TcpStream::connect(stack.addr)
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut silent = tokio_rustls::TlsConnector::from(ca.client_config())
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let mut buf = [0u8; 64];
    let cut = |read: std::io::Result<usize>| matches!(read, Ok(0) | Err(_));
    let ended = tokio::time::timeout(WAIT, stalled.read(&mut buf)).await;
    assert!(ended.is_ok_and(cut), "the stalled hello was cut");
    let ended = tokio::time::timeout(WAIT, silent.read(&mut buf)).await;
    assert!(ended.is_ok_and(cut), "the silent TLS client was cut");
    assert!(
        metric(
            stack.admin,
            "fanout_tls_handshake_failures_total{reason=\"timeout\"}"
        )
        .await
            >= 1.0
    );
    stack.shutdown().await;
}
