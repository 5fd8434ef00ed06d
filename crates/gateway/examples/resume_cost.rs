//! What continuity costs (issue 9's figures), measured against the real `fanout-gateway`
//! binary in front of an in-process simulator, on loopback:
//!
//! 1. the window's memory per event at the default settings (the gateway's resident memory
//!    before and after one customer's window fills, and the window's own count);
//! 2. a resume of 1,000 events by 100 sessions at once: how long until every replayed event
//!    arrived, and the gateway's CPU time meanwhile;
//! 3. whether live delivery to another customer's 100 sessions is held up during it: their
//!    event latency while the resumes run, against a quiet period before.
//!
//! ```text
//! cargo build --release -p fanout-gateway --examples
//! target/release/examples/resume_cost target/release/fanout-gateway
//! ```

#![allow(clippy::print_stdout, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use fanout_test_support::*;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use voipbin_sim::{SimConfig, Simulator};

/// Live events per second to the other customer.
const LIVE_RATE: usize = 500;
const RESUMERS: usize = 100;
const MISSED: usize = 1000;
const LIVE_SESSIONS: usize = 100;
const WINDOW_EVENTS: usize = 20_000;
/// The data of each event is padded to about this many bytes.
const EVENT_BYTES: usize = 300;

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The process's resident memory and CPU seconds (user + system), from /proc.
fn usage(pid: u32) -> anyhow::Result<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok((rss_kb * 1024, ticks / 100.0))
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn events(customer: Uuid, tag: &str, n: usize) -> Vec<u8> {
    let pad = "x".repeat(EVENT_BYTES.saturating_sub(120));
    let list: Vec<Value> = (0..n)
        .map(|i| {
            json!({"event_type": "call_progressing", "data": {
                "id": format!("{tag}{i}"), "customer_id": customer, "sent_us": now_us(), "pad": pad,
            }})
        })
        .collect();
    serde_json::to_vec(&list).unwrap_or_default()
}

async fn customers(admin: SocketAddr) -> Value {
    admin_get(admin, "/customers").await.1
}

async fn wait_covered(admin: SocketAddr, customer: Uuid) -> anyhow::Result<()> {
    for _ in 0..500 {
        let body = customers(admin).await;
        let covered = body["customers"].as_array().is_some_and(|all| {
            all.iter().any(|c| {
                c["customer_id"] == customer.to_string()
                    && c["covered"].as_array().is_some_and(|p| !p.is_empty())
            })
        });
        if covered {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("{customer} never covered")
}

type Raw = fastwebsockets::WebSocket<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// The client's connection read frame by frame without parsing: the clients share the
/// machine with the gateway and must cost it as little as they can.
fn raw(client: Client) -> Raw {
    fastwebsockets::WebSocket::after_handshake(client.into_inner(), fastwebsockets::Role::Client)
}

/// The text of the next text frame (none after `wait`, or on error).
async fn next_text(ws: &mut Raw, wait: Duration) -> Option<Vec<u8>> {
    loop {
        let frame = tokio::time::timeout(wait, ws.read_frame())
            .await
            .ok()?
            .ok()?;
        if frame.opcode == fastwebsockets::OpCode::Text {
            return Some(frame.payload.to_vec());
        }
    }
}

/// The number after `"sent_us":` in an event's text.
fn sent_us(text: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"sent_us\":";
    let at = text.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits: Vec<u8> = text[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let binary = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/release/fanout-gateway".to_owned());
    let secret = "resume-cost-secret";
    let resumed_customer = Uuid::new_v4();
    let live_customer = Uuid::new_v4();
    let cancel = CancellationToken::new();
    let sim = Simulator::start(SimConfig::new(secret), free_addr()?, cancel.clone()).await?;
    let (listen, admin) = (free_addr()?, free_addr()?);
    let service = agent_token(
        secret,
        resumed_customer,
        Uuid::new_v4(),
        perm::PROJECT_SUPER_ADMIN,
        &far_future(),
    );
    let mut child = tokio::process::Command::new(&binary)
        .args(["serve", "--listen", &listen.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .args(["--upstream-url", &sim.ws_url(), "--jwt-secret", secret])
        .args(["--upstream-token", &service])
        .args(["--admin-token", ADMIN_TOKEN])
        .env("FANOUT_UPSTREAM__LINGER", "120s")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {binary}"))?;
    let pid = child.id().context("pid")?;
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let token = |customer: Uuid| {
        agent_token(
            secret,
            customer,
            Uuid::new_v4(),
            perm::CUSTOMER_ADMIN,
            &far_future(),
        )
    };
    let topic = |customer: Uuid| format!("customer_id:{customer}");

    // 1. The window's memory per event.
    let mut filler = Client::connect_token(listen, &token(resumed_customer)).await;
    filler.subscribe_synced(&[&topic(resumed_customer)]).await;
    wait_covered(admin, resumed_customer).await?;
    let (rss_before, _) = usage(pid)?;
    for _ in 0..WINDOW_EVENTS / 1000 {
        sim.publish_json(&events(resumed_customer, "w", 1000))?;
        for _ in 0..1000 {
            filler.recv_event().await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss_after, _) = usage(pid)?;
    let body = customers(admin).await;
    let entry = body["customers"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|c| c["customer_id"] == resumed_customer.to_string())
        })
        .cloned()
        .unwrap_or_default();
    let kept = entry["window_events"].as_u64().unwrap_or(0);
    let counted = entry["window_bytes"].as_u64().unwrap_or(0);
    println!("window: {WINDOW_EVENTS} events of ~{EVENT_BYTES} B published; kept {kept}");
    println!(
        "window: counted {counted} B ({} B/event); gateway RSS grew {} B ({} B/event)",
        counted / kept.max(1),
        rss_after.saturating_sub(rss_before),
        rss_after.saturating_sub(rss_before) / kept.max(1),
    );

    // 2 and 3. 100 sessions resume 1,000 events each while another customer's 100 sessions
    // take a steady live stream.
    let mut live = Vec::new();
    for _ in 0..LIVE_SESSIONS {
        let mut client = Client::connect_token(listen, &token(live_customer)).await;
        client.subscribe_synced(&[&topic(live_customer)]).await;
        live.push(client);
    }
    wait_covered(admin, live_customer).await?;
    // Each live client keeps its latencies, tagged by the phase they were measured in.
    let resuming = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut live_tasks = Vec::new();
    for client in live {
        let resuming = resuming.clone();
        let stop = stop.clone();
        let mut ws = raw(client);
        live_tasks.push(tokio::spawn(async move {
            let (mut quiet, mut busy) = (Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let Some(text) = next_text(&mut ws, Duration::from_millis(200)).await else {
                    continue;
                };
                let Some(sent) = sent_us(&text) else { continue };
                let latency = now_us().saturating_sub(sent);
                if resuming.load(Ordering::Relaxed) {
                    busy.push(latency);
                } else {
                    quiet.push(latency);
                }
            }
            (quiet, busy)
        }));
    }
    let publisher = {
        let sim = sim.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            // A batch every 10 ms.
            while !stop.load(Ordering::Relaxed) {
                let _ = sim.publish_json(&events(live_customer, "l", LIVE_RATE / 100));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut resumers = Vec::new();
    let mut cursors = Vec::new();
    for _ in 0..RESUMERS {
        let client = Client::connect_token(listen, &token(resumed_customer)).await;
        resumers.push(client);
    }
    for client in &mut resumers {
        client.subscribe_synced(&[&topic(resumed_customer)]).await;
    }
    sim.publish_json(&events(resumed_customer, "c", 1))?;
    for client in &mut resumers {
        let event = client.recv_event().await;
        cursors.push(event["cursor"].as_str().unwrap_or_default().to_owned());
    }
    // Drain the filler too, then everyone leaves and misses 1,000 events.
    filler.recv_event().await;
    for client in resumers.drain(..) {
        client.close().await;
    }
    sim.publish_json(&events(resumed_customer, "m", MISSED))?;
    for _ in 0..MISSED {
        filler.recv_event().await;
    }
    let mut clients = Vec::new();
    for _ in 0..RESUMERS {
        clients.push(Client::connect_token(listen, &token(resumed_customer)).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, cpu_before) = usage(pid)?;
    resuming.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mut client, since) in clients.into_iter().zip(cursors) {
        let topic = topic(resumed_customer);
        tasks.push(tokio::spawn(async move {
            client
                .send_json(&json!({"type": "subscribe", "topics": [topic], "since": since}))
                .await;
            // Raw from here on: nothing read yet is left in the client's buffer.
            let mut ws = raw(client);
            let answer = next_text(&mut ws, Duration::from_secs(10))
                .await
                .unwrap_or_default();
            let recovered = answer.windows(16).any(|w| w == b"\"recovered\":true");
            let mut replayed = 0;
            while replayed < MISSED {
                let Some(text) = next_text(&mut ws, Duration::from_secs(10)).await else {
                    break;
                };
                if text.windows(7).any(|w| w == b"\"id\":\"m") {
                    replayed += 1;
                }
            }
            (recovered, replayed, ws)
        }));
    }
    let (mut recovered, mut replayed) = (0, 0);
    for task in tasks {
        let (ok, n, _ws) = task.await?;
        recovered += usize::from(ok);
        replayed += n;
    }
    let took = started.elapsed();
    let (_, cpu_after) = usage(pid)?;
    resuming.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    publisher.await?;
    let (mut quiet, mut busy) = (Vec::new(), Vec::new());
    for task in live_tasks {
        let (q, b) = task.await?;
        quiet.extend(q);
        busy.extend(b);
    }
    quiet.sort_unstable();
    busy.sort_unstable();
    println!(
        "resume: {RESUMERS} sessions x {MISSED} events: {recovered} recovered, {replayed} replayed, in {:.1} ms; gateway CPU {:.0} ms ({:.2} us per replayed event)",
        took.as_secs_f64() * 1e3,
        (cpu_after - cpu_before) * 1e3,
        (cpu_after - cpu_before) * 1e6 / (RESUMERS * MISSED) as f64,
    );
    println!(
        "live (other customer, {LIVE_SESSIONS} sessions, {LIVE_RATE} events/s): quiet p50 {} us p99 {} us ({} deliveries); during the resumes p50 {} us p99 {} us ({} deliveries)",
        percentile(&quiet, 0.5),
        percentile(&quiet, 0.99),
        quiet.len(),
        percentile(&busy, 0.5),
        percentile(&busy, 0.99),
        busy.len(),
    );
    let _ = child.kill().await;
    cancel.cancel();
    Ok(())
}
