//! Access keys from unauthenticated clients cannot make the gateway hammer VoIPBIN: one
//! lookup per key however many handshakes carry it, a bounded number in flight (429 past
//! it), unknown keys remembered from their first refusal, and a pooled client.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use fanout_test_support::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The HTTP status the gateway answers an upgrade with `accesskey` with.
async fn status_for(addr: SocketAddr, key: String) -> u16 {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = upgrade_request(addr, &format!("/v1.0/ws?accesskey={key}"));
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = [0u8; 12];
    tokio::time::timeout(WAIT, stream.read_exact(&mut head))
        .await
        .expect("an answer in time")
        .expect("a status line");
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("a status code")
}

/// Answers the status of `count` handshakes made at once, one key each from `key_of`.
async fn at_once(addr: SocketAddr, count: usize, key_of: impl Fn(usize) -> String) -> Vec<u16> {
    let tasks: Vec<_> = (0..count)
        .map(|i| tokio::spawn(status_for(addr, key_of(i))))
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.expect("joins"));
    }
    out
}

fn stat(stats: &Value, name: &str) -> u64 {
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} in {stats}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_with_access_keys_cost_voipbin_little() {
    let stack = start_with(
        |sim| sim.lookup_delay = Duration::from_millis(300),
        |config| {
            config.accesskeys.max_lookups = 8;
            config.limits.max_pending_per_source = 100_000;
        },
    )
    .await;
    let sim = stack.sim_addr();
    let before = sim_stats(sim).await;

    // 300 handshakes with one unknown key: one lookup, and every one refused.
    let unknown = "vb_unknownunknownunknownunknown12".to_owned();
    let statuses = at_once(stack.addr, 300, |_| unknown.clone()).await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let after_same = sim_stats(sim).await;
    assert_eq!(stat(&after_same, "lookups") - stat(&before, "lookups"), 1);
    // Remembered from that first refusal.
    assert_eq!(status_for(stack.addr, unknown.clone()).await, 401);
    assert_eq!(
        stat(&sim_stats(sim).await, "lookups"),
        stat(&after_same, "lookups")
    );

    // 300 handshakes with distinct unknown keys: at most 8 lookups at once, the rest 429,
    // over a handful of pooled connections.
    let statuses = at_once(stack.addr, 300, |i| {
        format!("vb_distinct_unknown_key_{i:05}")
    })
    .await;
    let busy = statuses.iter().filter(|s| **s == 429).count();
    let refused = statuses.iter().filter(|s| **s == 401).count();
    assert_eq!(busy + refused, 300, "{statuses:?}");
    assert!(busy > 0 && refused >= 8, "busy {busy}, refused {refused}");
    let after_distinct = sim_stats(sim).await;
    assert!(
        stat(&after_distinct, "lookups_max_in_flight") <= 8,
        "{after_distinct}"
    );
    assert_eq!(
        stat(&after_distinct, "lookups") - stat(&after_same, "lookups"),
        refused as u64
    );
    // Less this test's own three `/_sim/stats` requests since `before`.
    let opened =
        stat(&after_distinct, "tcp_connections_total") - stat(&before, "tcp_connections_total") - 3;
    eprintln!(
        "distinct keys: {refused} refused after a lookup, {busy} busy (429); {} lookups at most in flight; {opened} connections opened to VoIPBIN",
        stat(&after_distinct, "lookups_max_in_flight")
    );
    // One per lookup slot, and a spare or two hyper-util may open while one is handed back.
    assert!(
        opened <= 8 + 2,
        "{opened} connections for {} lookups",
        refused + 1
    );

    // The customer's real key: every handshake in, one lookup.
    let lookups = stat(&after_distinct, "lookups");
    let statuses = at_once(stack.addr, 100, |_| KEY.to_owned()).await;
    assert!(statuses.iter().all(|s| *s == 101), "{statuses:?}");
    assert_eq!(stat(&sim_stats(sim).await, "lookups") - lookups, 1);
    let metrics = metrics_text(stack.admin).await;
    assert!(
        metrics.contains("fanout_handshakes_refused_total{reason=\"lookups_busy\"}"),
        "{metrics}"
    );
    stack.shutdown().await;
}
