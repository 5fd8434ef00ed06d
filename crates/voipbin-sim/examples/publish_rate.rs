//! How many events a second the simulator publishes while it holds many upstream
//! connections, as a gateway with one service token holds them: one per customer, each
//! subscribed to its customer's calls. The publishing loop runs as fast as it can for a
//! fixed time; the figures are events a second and the process's CPU seconds per thousand
//! events (the connections' readers run in the process too).
//!
//! ```sh
//! cargo run --release -p voipbin-sim --example publish_rate -- 1000 5
//! ```
//!
//! Arguments: the connections (default 1000) and the seconds to publish (default 5).

#![allow(clippy::print_stdout, missing_docs)]

use std::time::{Duration, Instant};

use fanout_test_support::{Client, SECRET, service_token, sim_stats};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use voipbin_sim::{SimConfig, Simulator};

/// The process's CPU time (user and system) so far, from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // After the command name (which may hold spaces) in parentheses: fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let connections: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(5), |a| a.parse())?;
    let cancel = CancellationToken::new();
    let sim = Simulator::start(
        SimConfig::new(SECRET),
        "127.0.0.1:0".parse()?,
        cancel.clone(),
    )
    .await?;
    let service = service_token();
    let customers: Vec<Uuid> = (0..connections).map(|_| Uuid::new_v4()).collect();
    let mut readers = Vec::new();
    for customer in &customers {
        let mut client = Client::connect_token(sim.local_addr(), &service).await;
        client
            .subscribe(&[&format!("customer_id:{customer}:call:*")])
            .await;
        // Read everything, so that no socket fills.
        readers.push(tokio::spawn(async move {
            while client
                .recv_within(Duration::from_secs(3600))
                .await
                .is_some()
            {}
        }));
    }
    loop {
        let stats = sim_stats(sim.local_addr()).await;
        let subscribed = stats["customers"].as_object().map_or(0, |c| {
            c.values()
                .filter(|s| s["subscriptions"] != serde_json::json!([]))
                .count()
        });
        if subscribed >= connections {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("{connections} connections subscribed; publishing for {seconds} s");
    let bodies: Vec<Vec<u8>> = customers
        .iter()
        .map(|c| {
            serde_json::json!({"event_type": "call_ringing", "data": {"id": Uuid::new_v4(), "customer_id": c, "status": "ringing"}})
                .to_string()
                .into_bytes()
        })
        .collect();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let mut published: u64 = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        // A hundred at a time, spread over the customers.
        for _ in 0..100 {
            let at = (published as usize * 7919) % bodies.len();
            sim.publish_json(&bodies[at])?;
            published += 1;
        }
        tokio::task::yield_now().await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    println!(
        "published {published} events in {elapsed:.1} s: {:.0} events/s, {:.3} CPU-s per 1,000 events ({:.2} cores)",
        published as f64 / elapsed,
        cpu * 1000.0 / published as f64,
        cpu / elapsed
    );
    cancel.cancel();
    for reader in readers {
        reader.abort();
    }
    Ok(())
}
