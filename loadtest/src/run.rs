//! One scenario against one server: open the sessions, then measure what the scenario is for.

use std::path::Path;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::case::{Case, Kind, Step};
use crate::client::{SessionSpec, Shared};
use crate::fleet::Fleet;
use crate::measure;
use crate::target::{Target, Which};

/// Latency quantiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub(crate) struct Quantiles {
    /// Median.
    pub(crate) p50_us: u64,
    /// 99th percentile.
    pub(crate) p99_us: u64,
    /// 99.9th percentile.
    pub(crate) p999_us: u64,
    /// Largest.
    pub(crate) max_us: u64,
    /// Samples.
    pub(crate) count: u64,
}

impl Quantiles {
    fn of(h: &Histogram<u64>) -> Self {
        Quantiles {
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            count: h.len(),
        }
    }
}

/// A wave of handshakes.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Wave {
    /// Handshakes per second over the whole wave.
    pub(crate) handshakes_per_s: f64,
    /// Handshakes per second of the server's CPU time during the wave (the load tester's
    /// own handshake work, on the same cores, left out).
    pub(crate) per_server_cpu_s: f64,
    /// Handshake latency.
    pub(crate) latency: Quantiles,
}

/// One rate step.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StepResult {
    /// The step (`max` or a fraction of saturation).
    pub(crate) step: String,
    /// Events published per second.
    pub(crate) events_per_s: f64,
    /// Events received per second by all sessions, while publishing.
    pub(crate) deliveries_per_s: f64,
    /// End-to-end latency, publish to receipt.
    pub(crate) latency: Quantiles,
    /// Deliveries expected (events × sessions of their customer).
    pub(crate) expected: u64,
    /// Deliveries received.
    pub(crate) delivered: u64,
    /// Expected minus received, after draining.
    pub(crate) lost: u64,
    /// Server CPU time used by the step (user + system, every server process).
    pub(crate) cpu_seconds: f64,
    /// Deliveries per second of server CPU time.
    pub(crate) deliveries_per_cpu_second: f64,
    /// The step's CPU seconds per server process (command[pid]): nodes, NATS, the proxy.
    pub(crate) cpu_split: Vec<(String, f64)>,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunResult {
    /// The server.
    pub(crate) target: Which,
    /// The scenario.
    pub(crate) case: String,
    /// What the scenario measures.
    pub(crate) kind: Kind,
    /// Sessions opened.
    pub(crate) sessions: u32,
    /// Customers.
    pub(crate) customers: u32,
    /// Bytes per event as received.
    pub(crate) event_bytes: usize,
    /// Opening the sessions.
    pub(crate) connect: Wave,
    /// Server memory before the sessions, KiB.
    pub(crate) rss_before_kib: u64,
    /// Server memory with the sessions open and subscribed, KiB.
    pub(crate) rss_sessions_kib: u64,
    /// `(rss_sessions - rss_before) / sessions`, bytes.
    pub(crate) bytes_per_session: f64,
    /// Rate steps (throughput scenarios).
    pub(crate) steps: Vec<StepResult>,
    /// The reconnect wave (storm scenarios).
    pub(crate) storm: Option<Wave>,
    /// Sessions the server closed.
    pub(crate) closed_by_server: u64,
    /// Frames that were neither events nor expected answers.
    pub(crate) unexpected_frames: u64,
}

async fn wait_ready(shared: &Shared, count: usize, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while shared.ready.load(Ordering::Relaxed) < count {
        if Instant::now() > deadline {
            bail!(
                "only {} of {count} sessions became ready",
                shared.ready.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn wave(latency: &Histogram<u64>, count: u32, took: Duration, cpu: Duration) -> Wave {
    Wave {
        handshakes_per_s: f64::from(count) / took.as_secs_f64().max(1e-9),
        per_server_cpu_s: f64::from(count) / cpu.as_secs_f64().max(1e-9),
        latency: Quantiles::of(latency),
    }
}

/// Runs `case` against `which`.
///
/// # Errors
/// When the server cannot be started or sessions cannot be opened.
pub(crate) async fn run(
    case: &Case,
    which: Which,
    repo: &Path,
    gateway_bin: &Path,
    per_process: usize,
) -> anyhow::Result<RunResult> {
    let target = Target::start(which, case.customers, repo, gateway_bin).await?;
    let result = measure_target(case, &target, per_process).await;
    target.stop().await;
    result
}

async fn measure_target(
    case: &Case,
    target: &Target,
    per_process: usize,
) -> anyhow::Result<RunResult> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pids = target.pids.clone();
    let rss_before_kib = measure::rss_total(&pids);
    let specs: Vec<SessionSpec> = (0..case.sessions)
        .map(|i| target.session(i % case.customers))
        .collect();
    let shared = Shared::new();
    let cpu_before = measure::cpu_total(&pids);
    let (mut fleet, latency, took) = Fleet::open(
        specs,
        per_process,
        case.sources,
        case.connect_concurrency,
        shared.clone(),
    )
    .await?;
    let connect = wave(
        &latency,
        case.sessions,
        took,
        measure::cpu_total(&pids).saturating_sub(cpu_before),
    );
    wait_ready(&shared, case.sessions as usize, Duration::from_secs(120)).await?;
    target.settle(case.customers).await?;
    tracing::info!(target = %target.which, sessions = case.sessions, handshakes_per_s = connect.handshakes_per_s as u64, "Sessions ready");

    let mut result = RunResult {
        target: target.which,
        case: case.name.clone(),
        kind: case.kind,
        sessions: case.sessions,
        customers: case.customers,
        event_bytes: case.event_bytes,
        connect,
        rss_before_kib,
        rss_sessions_kib: 0,
        bytes_per_session: 0.0,
        steps: Vec::new(),
        storm: None,
        closed_by_server: 0,
        unexpected_frames: 0,
    };
    match case.kind {
        Kind::Idle => tokio::time::sleep(case.hold).await,
        Kind::Throughput | Kind::Storm => tokio::time::sleep(Duration::from_millis(500)).await,
    }
    result.rss_sessions_kib = measure::rss_total(&pids);
    result.bytes_per_session = (result.rss_sessions_kib.saturating_sub(rss_before_kib) * 1024)
        as f64
        / f64::from(case.sessions);

    match case.kind {
        Kind::Idle => {}
        Kind::Throughput => {
            let mut saturation = 0.0;
            for step in &case.steps {
                let measured =
                    throughput_step(case, target, &shared, &fleet, &pids, *step, saturation)
                        .await?;
                if matches!(step, Step::Max(_)) {
                    saturation = measured.events_per_s;
                }
                tracing::info!(target = %target.which, step = %step, deliveries_per_s = measured.deliveries_per_s as u64, p99_us = measured.latency.p99_us, lost = measured.lost, "Step done");
                result.steps.push(measured);
            }
        }
        Kind::Storm => {
            // Drop every session at once, let the server finish tearing them down (a storm
            // lands on a node whose clients just lost another), then reconnect them all at
            // once.
            let wave_shared = Shared::new();
            let cpu_before = measure::cpu_total(&pids);
            let (latency, took) = fleet.reconnect(wave_shared.clone()).await?;
            let cpu = measure::cpu_total(&pids).saturating_sub(cpu_before);
            wait_ready(
                &wave_shared,
                case.sessions as usize,
                Duration::from_secs(120),
            )
            .await?;
            result.storm = Some(wave(&latency, case.sessions, took, cpu));
            result.closed_by_server += wave_shared.closed.load(Ordering::Relaxed);
            fleet.stop().await;
            return Ok(result);
        }
    }
    result.closed_by_server = shared.closed.load(Ordering::Relaxed);
    result.unexpected_frames = shared.unexpected.load(Ordering::Relaxed);
    fleet.stop().await;
    Ok(result)
}

async fn throughput_step(
    case: &Case,
    target: &Target,
    shared: &Shared,
    fleet: &Fleet,
    pids: &[u32],
    step: Step,
    saturation: f64,
) -> anyhow::Result<StepResult> {
    let _ = fleet.take_latency().await?;
    let delivered_at_start = shared.delivered.load(Ordering::Relaxed);
    let cpu_at_start = measure::cpu_total(pids);
    let each_at_start = measure::cpu_each(pids);
    let started = Instant::now();
    let window = u64::from(case.window) * u64::from(case.sessions);
    let rate = match step {
        Step::Max(_) => None,
        Step::Fraction(f) => Some((saturation * f).max(1.0)),
    };
    let mut seq: u64 = 0;
    let mut expected: u64 = 0;
    while started.elapsed() < case.duration {
        match rate {
            None => {
                let delivered = shared.delivered.load(Ordering::Relaxed) - delivered_at_start;
                if expected.saturating_sub(delivered) >= window {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    continue;
                }
            }
            Some(rate) => {
                let due = (started.elapsed().as_secs_f64() * rate) as u64;
                if seq >= due {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            }
        }
        let c = (seq % u64::from(case.customers)) as u32;
        target.publish(c, seq, case.event_bytes).await;
        expected += u64::from(case.sessions_of(c));
        seq += 1;
        if seq.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
    }
    let publishing = started.elapsed();
    let delivered_in_window = shared.delivered.load(Ordering::Relaxed) - delivered_at_start;
    // Drain: until everything arrived or nothing moved for a second (at most ten).
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    let mut last = delivered_in_window;
    let mut still_since = Instant::now();
    loop {
        let now = shared.delivered.load(Ordering::Relaxed) - delivered_at_start;
        if now >= expected
            || Instant::now() > drain_deadline
            || still_since.elapsed() > Duration::from_secs(1)
        {
            break;
        }
        if now != last {
            last = now;
            still_since = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = shared.delivered.load(Ordering::Relaxed) - delivered_at_start;
    let cpu = measure::cpu_total(pids)
        .saturating_sub(cpu_at_start)
        .as_secs_f64();
    let cpu_split = measure::cpu_each(pids)
        .into_iter()
        .map(|(name, now)| {
            let before = each_at_start
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(Duration::ZERO, |(_, d)| *d);
            (name, now.saturating_sub(before).as_secs_f64())
        })
        .collect();
    let latency = fleet.take_latency().await?;
    Ok(StepResult {
        step: step.to_string(),
        events_per_s: seq as f64 / publishing.as_secs_f64(),
        deliveries_per_s: delivered_in_window as f64 / publishing.as_secs_f64(),
        latency: Quantiles::of(&latency),
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        cpu_seconds: cpu,
        deliveries_per_cpu_second: if cpu > 0.0 {
            delivered as f64 / cpu
        } else {
            0.0
        },
        cpu_split,
    })
}
