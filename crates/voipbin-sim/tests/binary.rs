//! The `voipbin-sim` binary with `--tls-cert/--tls-key`: `wss://` for the WebSocket and
//! `https://` for the access-key check, plain HTTP on the same port for `/_sim/*`.

use std::time::Duration;

use fanout_test_support::pki::{Ca, Validity};
use fanout_test_support::*;
use hyper::StatusCode;

const KEY: &str = "vb_0123456789abcdefghijklmnopqrstuv";

#[tokio::test]
async fn the_binary_serves_wss_and_plain_control_on_one_port() {
    let ca = Ca::new("CA");
    let served = ca.server("sim", &["localhost"], Validity::Current);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_voipbin-sim"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--jwt-secret",
            SECRET,
        ])
        .args(["--accesskey", &format!("{KEY}={TUTORIAL_CUSTOMER}")])
        .arg("--tls-cert")
        .arg(&served.cert)
        .arg("--tls-key")
        .arg(&served.key)
        .kill_on_drop(true)
        .spawn()
        .expect("voipbin-sim starts");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut up = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "the simulator listens");
    // The WebSocket over TLS, with a token.
    let token = admin_token(tutorial_customer());
    match Client::connect(
        addr,
        Connect::token(&token).tls(ca.client_config(), "localhost"),
    )
    .await
    {
        Ok(Ok(client)) => client.close().await,
        other => panic!("wss:// refused: {:?}", other.err()),
    }
    // The access-key check over https://, as the gateway's verifier asks it.
    let https = fanout_upstream::verifier::HttpVerifier::from_ws_url(
        &format!("wss://localhost:{port}/v1.0/ws")
            .parse()
            .expect("url"),
        Duration::from_secs(5),
        &fanout_upstream::connect::client_tls(&[ca.der()], false, None).expect("TLS settings"),
    )
    .expect("verifier");
    use fanout_auth::accesskey::Verifier as _;
    assert_eq!(
        https.customer_of(KEY).await.expect("answered"),
        Some(tutorial_customer())
    );
    // The control endpoints stay plain HTTP on the same port.
    let (status, stats) = http(addr, "GET", "/_sim/stats", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(stats["lookups"].as_u64().is_some_and(|n| n >= 1), "{stats}");
    let _ = child.kill().await;
}
