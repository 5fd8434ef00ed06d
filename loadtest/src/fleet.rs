//! The sessions of a run, in this process or spread over worker processes.
//!
//! One process may hold at most ~20k open files here, so past [`PER_PROCESS`] sessions the
//! tester starts copies of itself (`fanout-loadtest --worker`), each opening its share from
//! its own source addresses. They speak JSON lines: the coordinator sends the sessions to
//! open and then `take` (latency so far), `reconnect` (the storm) or `stop`; a worker reports
//! `opened` waves, its counters every 10 ms, and `latency` when asked. Counters arrive as
//! deltas into the coordinator's [`Shared`], so the rest of the run cannot tell the
//! difference.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use crate::client::{self, SessionSpec, Shared, histogram};

/// Sessions one process holds by default (a process may hold ~20k open files here).
pub(crate) const PER_PROCESS: usize = 15_000;

/// What a worker is asked to open.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WorkerSpec {
    specs: Vec<SessionSpec>,
    source_base: u8,
    sources: u8,
    concurrency: usize,
}

/// A histogram as (value, count) pairs.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Recorded(Vec<(u64, u64)>);

impl Recorded {
    fn of(h: &Histogram<u64>) -> Self {
        Recorded(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    fn into_histogram(self) -> Histogram<u64> {
        let mut h = histogram();
        for (value, count) in self.0 {
            let _ = h.record_n(value, count);
        }
        h
    }
}

/// What a worker reports.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Report {
    Opened {
        latency: Recorded,
        took_us: u64,
    },
    Counters {
        delivered: u64,
        ready: u64,
        closed: u64,
        unexpected: u64,
    },
    Latency(Recorded),
    Failed(String),
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    /// `opened`, `latency` and `failed` reports, in order.
    replies: mpsc::Receiver<Report>,
}

/// Where the sessions live.
pub(crate) struct Fleet {
    shared: Arc<Shared>,
    local: Option<(CancellationToken, tokio::task::JoinSet<()>)>,
    workers: Vec<Mutex<Worker>>,
    specs: Arc<Vec<SessionSpec>>,
    sources: u8,
}

async fn send(worker: &mut Worker, line: &str) -> anyhow::Result<()> {
    worker.stdin.write_all(line.as_bytes()).await?;
    worker.stdin.write_all(b"\n").await?;
    worker.stdin.flush().await?;
    Ok(())
}

async fn reply(worker: &mut Worker) -> anyhow::Result<Report> {
    match tokio::time::timeout(Duration::from_secs(180), worker.replies.recv()).await {
        Ok(Some(Report::Failed(why))) => bail!("worker failed: {why}"),
        Ok(Some(report)) => Ok(report),
        Ok(None) => bail!("worker exited"),
        Err(_) => bail!("worker did not answer"),
    }
}

impl Fleet {
    /// Opens every session of `specs`: here when they fit in one process, else spread over
    /// worker processes. Answers the handshake latencies and how long the wave took.
    pub(crate) async fn open(
        specs: Vec<SessionSpec>,
        per_process: usize,
        sources: u8,
        concurrency: usize,
        shared: Arc<Shared>,
    ) -> anyhow::Result<(Self, Histogram<u64>, Duration)> {
        let specs = Arc::new(specs);
        let mut fleet = Fleet {
            shared,
            local: None,
            workers: Vec::new(),
            specs,
            sources,
        };
        let per_process = per_process.max(1);
        let (latency, took) = if fleet.specs.len() <= per_process {
            fleet.open_local(concurrency).await?
        } else {
            fleet.open_workers(per_process, concurrency).await?
        };
        Ok((fleet, latency, took))
    }

    async fn open_local(
        &mut self,
        concurrency: usize,
    ) -> anyhow::Result<(Histogram<u64>, Duration)> {
        let stop = CancellationToken::new();
        let specs = self.specs.clone();
        let spec_of = Arc::new(move |i: u32| specs[i as usize].clone())
            as Arc<dyn Fn(u32) -> SessionSpec + Send + Sync>;
        let (latency, took, sessions) = client::open_all(
            spec_of,
            self.specs.len() as u32,
            0,
            self.sources,
            concurrency,
            self.shared.clone(),
            stop.clone(),
        )
        .await?;
        self.local = Some((stop, sessions));
        Ok((latency, took))
    }

    async fn open_workers(
        &mut self,
        per_process: usize,
        concurrency: usize,
    ) -> anyhow::Result<(Histogram<u64>, Duration)> {
        let count = self.specs.len().div_ceil(per_process);
        let exe = std::env::current_exe()?;
        for (k, chunk) in self.specs.chunks(per_process).enumerate() {
            let mut child = tokio::process::Command::new(&exe)
                .arg("--worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("starting a worker process")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let (tx, replies) = mpsc::channel(16);
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let mut last = [0u64; 4];
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<Report>(&line) {
                        Ok(Report::Counters {
                            delivered,
                            ready,
                            closed,
                            unexpected,
                        }) => {
                            // Apply what changed, so the coordinator's counters are the sums.
                            let now = [delivered, ready, closed, unexpected];
                            shared
                                .delivered
                                .fetch_add(now[0].saturating_sub(last[0]), Ordering::Relaxed);
                            shared.ready.fetch_add(
                                now[1].saturating_sub(last[1]) as usize,
                                Ordering::Relaxed,
                            );
                            shared
                                .closed
                                .fetch_add(now[2].saturating_sub(last[2]), Ordering::Relaxed);
                            shared
                                .unexpected
                                .fetch_add(now[3].saturating_sub(last[3]), Ordering::Relaxed);
                            last = now;
                        }
                        Ok(other) => {
                            if tx.send(other).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => {}
                    }
                }
            });
            let mut worker = Worker {
                child,
                stdin,
                replies,
            };
            let spec = WorkerSpec {
                specs: chunk.to_vec(),
                source_base: (k as u8).saturating_mul(self.sources),
                sources: self.sources,
                concurrency: concurrency.div_ceil(count),
            };
            send(&mut worker, &serde_json::to_string(&spec)?).await?;
            self.workers.push(Mutex::new(worker));
        }
        self.collect_opened().await
    }

    async fn collect_opened(&self) -> anyhow::Result<(Histogram<u64>, Duration)> {
        let mut latency = histogram();
        let mut took = Duration::ZERO;
        for worker in &self.workers {
            match reply(&mut *worker.lock().await).await? {
                Report::Opened {
                    latency: l,
                    took_us,
                } => {
                    let _ = latency.add(l.into_histogram());
                    took = took.max(Duration::from_micros(took_us));
                }
                other => bail!("unexpected worker report {other:?}"),
            }
        }
        Ok((latency, took))
    }

    /// The latency recorded since the last call, from every process, merged.
    pub(crate) async fn take_latency(&self) -> anyhow::Result<Histogram<u64>> {
        let mut latency = self.shared.take_latency();
        for worker in &self.workers {
            let mut worker = worker.lock().await;
            send(&mut worker, "take").await?;
            match reply(&mut worker).await? {
                Report::Latency(l) => {
                    let _ = latency.add(l.into_histogram());
                }
                other => bail!("unexpected worker report {other:?}"),
            }
        }
        Ok(latency)
    }

    /// Drops every session at once, waits for the server to tear them down, and reopens them
    /// all at once (into fresh counters): the storm. Answers the wave's latencies and length.
    pub(crate) async fn reconnect(
        &mut self,
        shared: Arc<Shared>,
    ) -> anyhow::Result<(Histogram<u64>, Duration)> {
        self.shared = shared;
        if let Some((stop, mut sessions)) = self.local.take() {
            stop.cancel();
            while sessions.join_next().await.is_some() {}
            tokio::time::sleep(Duration::from_secs(2)).await;
            let concurrency = self.specs.len();
            return self.open_local(concurrency).await;
        }
        bail!(
            "reconnect waves across worker processes are not supported; storm cases fit one process"
        )
    }

    /// Closes every session and ends the workers.
    pub(crate) async fn stop(self) {
        if let Some((stop, mut sessions)) = self.local {
            stop.cancel();
            while sessions.join_next().await.is_some() {}
        }
        for worker in self.workers {
            let mut worker = worker.into_inner();
            let _ = send(&mut worker, "stop").await;
            let _ = tokio::time::timeout(Duration::from_secs(10), worker.child.wait()).await;
        }
    }
}

/// The `--worker` process: opens the sessions it is given on stdin and reports on stdout.
pub(crate) async fn worker_main() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines.next_line().await?.context("no worker spec")?;
    let spec: WorkerSpec = serde_json::from_str(&first)?;
    let (out_tx, mut out_rx) = mpsc::channel::<String>(64);
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = out_rx.recv().await {
            if stdout.write_all(line.as_bytes()).await.is_err()
                || stdout.write_all(b"\n").await.is_err()
            {
                return;
            }
            let _ = stdout.flush().await;
        }
    });
    let emit = |report: &Report| serde_json::to_string(report).unwrap_or_default();
    let shared = Shared::new();
    let stop = CancellationToken::new();
    let specs = Arc::new(spec.specs);
    let spec_of = {
        let specs = specs.clone();
        Arc::new(move |i: u32| specs[i as usize].clone())
            as Arc<dyn Fn(u32) -> SessionSpec + Send + Sync>
    };
    let opened = client::open_all(
        spec_of,
        specs.len() as u32,
        spec.source_base,
        spec.sources,
        spec.concurrency,
        shared.clone(),
        stop.clone(),
    )
    .await;
    let mut sessions = match opened {
        Ok((latency, took, sessions)) => {
            let report = Report::Opened {
                latency: Recorded::of(&latency),
                took_us: took.as_micros() as u64,
            };
            out_tx.send(emit(&report)).await?;
            sessions
        }
        Err(error) => {
            out_tx
                .send(emit(&Report::Failed(format!("{error:#}"))))
                .await?;
            return Ok(());
        }
    };
    let counters = {
        let (shared, out_tx, stop) = (shared.clone(), out_tx.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let report = Report::Counters {
                    delivered: shared.delivered.load(Ordering::Relaxed),
                    ready: shared.ready.load(Ordering::Relaxed) as u64,
                    closed: shared.closed.load(Ordering::Relaxed),
                    unexpected: shared.unexpected.load(Ordering::Relaxed),
                };
                if out_tx
                    .send(serde_json::to_string(&report).unwrap_or_default())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    while let Ok(Some(command)) = lines.next_line().await {
        match command.trim() {
            "take" => {
                let report = Report::Latency(Recorded::of(&shared.take_latency()));
                out_tx.send(emit(&report)).await?;
            }
            "stop" => break,
            other => {
                out_tx
                    .send(emit(&Report::Failed(format!("unknown command {other:?}"))))
                    .await?;
            }
        }
    }
    stop.cancel();
    while sessions.join_next().await.is_some() {}
    let _ = counters.await;
    drop(out_tx);
    let _ = writer.await;
    Ok(())
}
