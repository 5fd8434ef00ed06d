//! The async shell of a [`Link`]: it connects (with back-off), writes what the link asks,
//! reads frames into it, wakes it when it wants to be woken, and tells the sink what it
//! outputs. It decides nothing; the link does.
//!
//! ```text
//! Connecting ──ok──▶ Connected ──drop/stall──▶ Backoff ──delay──▶ Connecting
//!     └──────────────── error ────────────────────▲
//! any state ──cancelled──▶ Closed
//! ```
//!
//! fastwebsockets' `read_frame` is not cancel-safe, so one task reads (and never sits in a
//! `select!`) while this one writes and keeps time. Both go through the link's lock, and
//! what the link outputs is told to the sink under that lock, so the sink hears it in the
//! link's order.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::UpstreamConfig;
use crate::connect;
use fanout_protocol::prefix::Label;

use crate::link::{Link, Output, Transmit};
use crate::upstream::{EventSink, State};

/// Milliseconds since the first call, on a clock shared by every upstream of the process.
pub(crate) fn clock_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// `worked_at` while subscribed.
pub(crate) const WORKING_NOW: u64 = u64::MAX;

/// One link, as its tasks and its owner share it.
pub(crate) struct LinkShared {
    customer: Uuid,
    label: Label,
    link: Mutex<Link>,
    sink: Arc<dyn EventSink>,
    /// Wakes the writer: what is wanted changed, or the link's next deadline may be earlier.
    pub(crate) changed: Notify,
    state: AtomicU8,
    /// When the link last had a subscribed connection ([`clock_ms`]): [`WORKING_NOW`]
    /// while it has one, 0 if it never did.
    worked_at: AtomicU64,
    pub(crate) cancel: CancellationToken,
}

impl LinkShared {
    /// Starts `link`'s tasks; they run until `cancel`.
    pub(crate) fn spawn(
        customer: Uuid,
        link: Link,
        config: Arc<UpstreamConfig>,
        sink: Arc<dyn EventSink>,
        cancel: CancellationToken,
    ) -> Arc<LinkShared> {
        let shared = Arc::new(LinkShared {
            customer,
            label: link.label().clone(),
            link: Mutex::new(link),
            sink,
            changed: Notify::new(),
            state: AtomicU8::new(State::Connecting as u8),
            worked_at: AtomicU64::new(0),
            cancel,
        });
        metrics::gauge!("fanout_upstream_connections", "state" => State::Connecting.label())
            .increment(1.0);
        tokio::spawn(run(shared.clone(), config));
        shared
    }

    /// Runs `f` on the link, then tells the sink what the link output, in order, still
    /// under the link's lock.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Link) -> R) -> R {
        let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        let answer = f(&mut link);
        while let Some(output) = link.poll_output() {
            match output {
                Output::Publish(event) => self.sink.publish(event),
                Output::Gap { since, until } => self.sink.gap(since, until),
                Output::Covered(prefixes) => self.sink.covered(&prefixes),
                Output::Uncovered(prefixes) => self.sink.uncovered(&prefixes),
            }
        }
        answer
    }

    /// Where its connection stands.
    pub(crate) fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// How long ago it last had a subscribed connection: zero while it has one, `None` if
    /// it never did.
    pub(crate) fn down_for(&self) -> Option<Duration> {
        match self.worked_at.load(Ordering::Relaxed) {
            0 => None,
            WORKING_NOW => Some(Duration::ZERO),
            at => Some(Duration::from_millis(clock_ms().saturating_sub(at))),
        }
    }

    fn set_state(&self, state: State) {
        let old = State::from_u8(self.state.swap(state as u8, Ordering::Relaxed));
        if old != state {
            metrics::gauge!("fanout_upstream_connections", "state" => old.label()).decrement(1.0);
            metrics::gauge!("fanout_upstream_connections", "state" => state.label()).increment(1.0);
            metrics::counter!("fanout_upstream_transitions_total", "state" => state.label())
                .increment(1);
            tracing::info!(customer_id = %self.customer, label = %self.label, from = old.label(), to = state.label(), "Upstream state changed");
        }
    }

    /// The connection ended: no longer working (if it was).
    fn not_working(&self) {
        // 0 means "never worked": the first millisecond of the process counts as 1.
        let _ = self.worked_at.compare_exchange(
            WORKING_NOW,
            clock_ms().max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Cancelled,
    Dropped,
    Stalled,
}

/// Now, as the link takes it (`tokio::time`, so tests can pause time).
fn clocks() -> (std::time::Instant, SystemTime) {
    (Instant::now().into_std(), SystemTime::now())
}

async fn run(shared: Arc<LinkShared>, config: Arc<UpstreamConfig>) {
    let customer_id = shared.customer;
    let mut attempt: u32 = 0;
    loop {
        if shared.cancel.is_cancelled() {
            break;
        }
        shared.set_state(State::Connecting);
        let started = Instant::now();
        let opened = match config.credentials.for_customer(customer_id) {
            None => Err(connect::ConnectError::NoCredential),
            Some(credential) => tokio::select! {
                () = shared.cancel.cancelled() => break,
                opened = connect::websocket(&config.url, &credential, config.connect_timeout, &config.tls) => opened,
            },
        };
        match opened {
            Ok(ws) => {
                shared.set_state(State::Connected);
                metrics::histogram!("fanout_upstream_connect_seconds")
                    .record(started.elapsed().as_secs_f64());
                let since = Instant::now();
                let ended = connected(&shared, &config, ws).await;
                let report = shared.with(Link::ended);
                shared.not_working();
                tracing::info!(%customer_id, ended = ?ended, "Upstream connection ended");
                if ended == Ended::Cancelled {
                    break;
                }
                if !report.unanswered.is_empty() {
                    // VoIPBIN refuses a topic by dropping the connection.
                    tracing::warn!(%customer_id, topics = ?report.unanswered, "VoIPBIN dropped the connection before answering a subscribe: it may refuse these topics (check the upstream credential's rights)");
                }
                metrics::counter!("fanout_upstream_drops_total", "reason" => match ended {
                    Ended::Stalled => "stalled",
                    _ => "dropped",
                })
                .increment(1);
                if since.elapsed() >= config.stable_after && report.worked {
                    attempt = 0;
                }
            }
            Err(error) => {
                shared.with(|link| link.connect_failed(SystemTime::now()));
                metrics::counter!("fanout_upstream_connect_errors_total", "reason" => error.label()).increment(1);
                tracing::warn!(%customer_id, %error, attempt, "Upstream connect failed");
            }
        }
        shared.set_state(State::Backoff);
        let delay = config.backoff.delay(attempt, rand::random::<f64>());
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = shared.cancel.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
    shared.set_state(State::Closed);
    // Closed links are not counted as connections.
    metrics::gauge!("fanout_upstream_connections", "state" => State::Closed.label()).decrement(1.0);
}

type Upgraded = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;

/// Reads frames into the link until the connection ends. Frames the reader must send (pongs,
/// the close reply) go to the writer.
async fn read_frames(
    shared: Arc<LinkShared>,
    mut read: fastwebsockets::FragmentCollectorRead<tokio::io::ReadHalf<Upgraded>>,
    obligated: mpsc::Sender<(OpCode, Vec<u8>)>,
) {
    let mut send = |frame: Frame<'_>| {
        let owned = (frame.opcode, frame.payload.to_vec());
        let tx = obligated.clone();
        async move {
            tx.send(owned)
                .await
                .map_err(|_| WebSocketError::ConnectionClosed)
        }
    };
    loop {
        if let Some(room) = shared.sink.room() {
            room.await;
        }
        let frame = match read.read_frame(&mut send).await {
            Ok(frame) => frame,
            Err(error) => {
                tracing::debug!(customer_id = %shared.customer, %error, "Upstream read ended");
                return;
            }
        };
        let (now, wall) = clocks();
        match frame.opcode {
            OpCode::Text => {
                // The frame's own buffer becomes the event's: no copy.
                let bytes = match frame.payload {
                    Payload::Bytes(b) => b.freeze(),
                    Payload::Owned(v) => Bytes::from(v),
                    other => Bytes::copy_from_slice(&other),
                };
                shared.with(|link| link.handle_text(&bytes, now, wall));
            }
            OpCode::Pong => {
                // Only a pong makes a connection subscribed (its first barrier's).
                if shared.with(|link| {
                    link.handle_pong(&frame.payload, now, wall);
                    link.is_subscribed()
                }) {
                    shared.worked_at.store(WORKING_NOW, Ordering::Relaxed);
                }
                // Coverage may now settle at a time the writer must wake for.
                shared.changed.notify_one();
            }
            OpCode::Close => return,
            _ => shared.with(|link| link.handle_other(now, wall)),
        }
    }
}

/// Serves one open connection until it ends.
async fn connected(
    shared: &Arc<LinkShared>,
    config: &UpstreamConfig,
    mut ws: fastwebsockets::WebSocket<Upgraded>,
) -> Ended {
    ws.set_max_message_size(config.max_frame_bytes);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    let (read, mut write) = ws.split(tokio::io::split);
    let read = fastwebsockets::FragmentCollectorRead::new(read);
    let (now, wall) = clocks();
    shared.with(|link| link.connected(now, wall));
    let (obligated_tx, mut obligated_rx) = mpsc::channel::<(OpCode, Vec<u8>)>(16);
    let mut reader = tokio::spawn(read_frames(shared.clone(), read, obligated_tx));
    let mut reader_done = false;
    let ended = 'serve: loop {
        // Whatever the link asks to write, in its order (its subscribe messages first).
        while let Some(transmit) = shared.with(Link::poll_transmit) {
            let frame = match &transmit {
                Transmit::Text(text) => Frame::text(Payload::Borrowed(text.as_bytes())),
                Transmit::Ping(payload) => {
                    Frame::new(true, OpCode::Ping, None, Payload::Borrowed(payload))
                }
            };
            if let Err(ended) = write_within(&mut write, config, frame).await {
                break 'serve ended;
            }
        }
        let deadline = shared.with(|link| link.poll_timeout());
        tokio::select! {
            () = shared.cancel.cancelled() => {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    write.write_frame(Frame::close(1000, b"")),
                )
                .await;
                break Ended::Cancelled;
            }
            _ = &mut reader => {
                reader_done = true;
                break Ended::Dropped;
            }
            () = shared.changed.notified() => {}
            obligated = obligated_rx.recv() => {
                let Some((opcode, payload)) = obligated else { break Ended::Dropped };
                let frame = Frame::new(true, opcode, None, Payload::Owned(payload));
                if let Err(ended) = write_within(&mut write, config, frame).await {
                    break ended;
                }
            }
            () = async {
                if let Some(deadline) = deadline {
                    tokio::time::sleep_until(Instant::from_std(deadline)).await;
                }
            }, if deadline.is_some() => {
                let (now, _) = clocks();
                if let Some(stall) = shared.with(|link| link.handle_timeout(now)) {
                    tracing::info!(customer_id = %shared.customer, label = %shared.label, ?stall, "Upstream connection stalled");
                    break Ended::Stalled;
                }
            }
        }
    };
    if !reader_done {
        reader.abort();
        // Wait for it to stop: nothing of this connection may reach the link after it
        // ended. (A handle that already answered must not be polled again.)
        let _ = reader.await;
    }
    ended
}

async fn write_within<S>(
    write: &mut fastwebsockets::WebSocketWrite<S>,
    config: &UpstreamConfig,
    frame: Frame<'_>,
) -> Result<(), Ended>
where
    S: tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(config.write_timeout, write.write_frame(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Ended::Dropped),
        Err(_) => Err(Ended::Stalled),
    }
}
