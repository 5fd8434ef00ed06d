//! `fanout-loadtest`: drives fanout-gateway, or a peer, with many sessions and measures
//! delivered rate, end-to-end latency, loss, handshake rate, and the server's CPU and memory.
//!
//! ```sh
//! cargo build --release -p fanout-gateway -p fanout-loadtest
//! target/release/fanout-loadtest --case loadtest/cases/tenants.toml --target gateway --target nchan --target nats
//! ```
//!
//! Results go to `--out` (default `loadtest/out/<case>`): `results.json`, `report.md` with
//! the gateway/peer ratios, and `latency.svg`. `--smoke` shrinks any case to a few seconds
//! and fails unless every event expected was delivered: the test suite runs that.

#![allow(clippy::print_stdout)]

mod case;
mod client;
mod fleet;
mod measure;
mod report;
mod run;
mod target;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

use crate::case::{Case, Kind};
use crate::target::Which;

/// Load generator for fanout-gateway and its peers.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The scenario file (`loadtest/cases/*.toml`).
    #[arg(long, required_unless_present = "worker")]
    case: Option<PathBuf>,
    /// Run as a worker process of another run (reads its sessions on stdin).
    #[arg(long, hide = true)]
    worker: bool,
    /// Servers to run the scenario against, one after the other: gateway, nchan, nats.
    #[arg(long = "target", default_value = "gateway")]
    targets: Vec<Which>,
    /// Override the number of sessions.
    #[arg(long)]
    sessions: Option<u32>,
    /// Override the number of customers.
    #[arg(long)]
    customers: Option<u32>,
    /// Override the length of each rate step (`2s`).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Shrink the case to a quick check and fail unless every expected event arrived.
    #[arg(long)]
    smoke: bool,
    /// Where to write the results [default: loadtest/out/<case>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// The gateway binary [default: fanout-gateway next to this binary].
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// Sessions one process holds; more are spread over worker processes (a process may hold
    /// ~20k open files here).
    #[arg(long, default_value_t = fleet::PER_PROCESS)]
    per_process: usize,
    /// The repository root, for the peer scripts [default: the current directory].
    #[arg(long, default_value = ".")]
    repo: PathBuf,
}

fn shrink(case: &mut Case) {
    case.sessions = case.sessions.min(60);
    case.customers = case.customers.min(6).min(case.sessions);
    case.duration = Duration::from_millis(800);
    case.hold = Duration::from_millis(300);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if args.worker {
        return fleet::worker_main().await;
    }
    let mut case = Case::load(&args.case.context("--case is required")?)?;
    if args.smoke {
        shrink(&mut case);
    }
    if let Some(n) = args.sessions {
        case.sessions = n;
    }
    if let Some(n) = args.customers {
        case.customers = n;
    }
    if let Some(d) = args.duration {
        case.duration = d;
    }
    case.check()?;
    let gateway_bin = match args.gateway_bin {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .join("fanout-gateway"),
    };
    let mut results = Vec::new();
    for which in &args.targets {
        println!("== {} against {which}: {}", case.name, case.goal);
        let result = run::run(&case, *which, &args.repo, &gateway_bin, args.per_process).await?;
        results.push(result);
    }
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("loadtest/out").join(&case.name));
    report::write(&out, &results)?;
    println!("{}", report::markdown(&results));
    println!("results in {}", out.display());
    if args.smoke {
        for r in &results {
            smoke_check(&case, r)?;
        }
        println!(
            "smoke: {} against {} counted correctly",
            case.name,
            args.targets.len()
        );
    }
    Ok(())
}

/// What a smoke run must show: the tool opened, counted and measured what it should.
fn smoke_check(case: &Case, r: &run::RunResult) -> anyhow::Result<()> {
    anyhow::ensure!(
        r.connect.latency.count == u64::from(case.sessions),
        "{}: not every session opened",
        r.target
    );
    anyhow::ensure!(
        r.rss_sessions_kib > 0,
        "{}: server memory not read",
        r.target
    );
    match case.kind {
        Kind::Idle => anyhow::ensure!(
            r.bytes_per_session > 0.0,
            "{}: no memory per session",
            r.target
        ),
        Kind::Storm => {
            let storm = r.storm.as_ref().context("no storm wave")?;
            anyhow::ensure!(
                storm.latency.count == u64::from(case.sessions),
                "{}: not every session reconnected",
                r.target
            );
        }
        Kind::Throughput => {
            for s in &r.steps {
                anyhow::ensure!(s.expected > 0, "{} {}: nothing published", r.target, s.step);
                anyhow::ensure!(
                    s.lost == 0 && s.delivered == s.expected,
                    "{} {}: expected {}, delivered {}",
                    r.target,
                    s.step,
                    s.expected,
                    s.delivered
                );
                anyhow::ensure!(
                    s.latency.count == s.delivered,
                    "{} {}: latency samples {} for {} deliveries",
                    r.target,
                    s.step,
                    s.latency.count,
                    s.delivered
                );
                anyhow::ensure!(
                    s.cpu_seconds > 0.0,
                    "{} {}: server CPU not read",
                    r.target,
                    s.step
                );
            }
        }
    }
    anyhow::ensure!(
        r.closed_by_server == 0,
        "{}: the server closed {} sessions",
        r.target,
        r.closed_by_server
    );
    Ok(())
}
