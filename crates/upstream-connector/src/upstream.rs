//! One customer's upstream connection: a handle for its users, and the task behind it.
//!
//! ```text
//!            ┌──────────── cancelled ─────────────┐
//!            ▼                                    │
//! Connecting ──ok──▶ Connected ──drop/stall──▶ Backoff ──delay──▶ Connecting
//!     │                                            ▲
//!     └──────────────── error ─────────────────────┘
//! any state ──cancelled──▶ Closed
//! ```
//!
//! While connected, the task keeps the connection subscribed to exactly the patterns its
//! users currently need, sending only the difference when they change and the whole set
//! after every reconnect (VoIPBIN forgets subscriptions when a connection drops).
//!
//! VoIPBIN does not acknowledge a subscribe. Each batch of subscribes is followed by a ping
//! whose payload numbers it: VoIPBIN reads a connection's messages in order, so its pong
//! proves the subscribes before it were applied, and every event after the pong that they
//! match is delivered. The sink hears of it ([`EventSink::covered`]) in stream order, which
//! is what lets a resume prove that nothing was missed (protocol.md §1.7). After a reconnect
//! the gap is told at that same point, with the events that arrived before it held back until
//! then, so sessions hear of the loss before any event after it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fanout_protocol::Pattern;
use fanout_protocol::client::MAX_TOPICS_PER_MESSAGE;
use fanout_protocol::upstream::{self, Context, Event};
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::UpstreamConfig;
use crate::connect;

/// Receives the events of a customer's connection.
pub trait EventSink: Send + Sync + 'static {
    /// One decoded event. Called from the connection's reader task, in arrival order; must
    /// not block.
    fn publish(&self, event: Event);

    /// Events between `since` and `until` may have been lost: the connection was down or
    /// stalled, and VoIPBIN keeps no history. Called once per recovery, after the new
    /// connection is subscribed and before any of its events is published; must not block.
    fn gap(&self, since: SystemTime, until: SystemTime) {
        let _ = (since, until);
    }

    /// VoIPBIN has applied the subscriptions to `patterns`: every later event they match
    /// is published. Called from the reader, in order with the events; must not block.
    fn covered(&self, patterns: &[Pattern]) {
        let _ = patterns;
    }

    /// Events that `patterns` match may no longer arrive: they are being unsubscribed, or the
    /// connection ended. Called before the unsubscribe is sent; must not block.
    fn uncovered(&self, patterns: &[Pattern]) {
        let _ = patterns;
    }

    /// Backpressure: when the sink cannot take more now, a future that resolves once it
    /// can; the reader awaits it before it reads the next frame (VoIPBIN's writes then wait
    /// in the socket, and a reader held past the pong deadline counts as stalled). `None`
    /// (the default) when there is room.
    fn room(&self) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>> {
        None
    }
}

impl<F: Fn(Event) + Send + Sync + 'static> EventSink for F {
    fn publish(&self, event: Event) {
        self(event)
    }
}

/// Milliseconds since the first call, on a clock shared by every upstream of the process.
fn clock_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// `worked_at` while connected.
const WORKING_NOW: u64 = u64::MAX;

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Opening the connection.
    Connecting = 0,
    /// Connected and subscribed.
    Connected = 1,
    /// Waiting before the next attempt.
    Backoff = 2,
    /// Closed for good.
    Closed = 3,
}

impl State {
    /// Every state, for metrics.
    pub const ALL: [State; 4] = [
        State::Connecting,
        State::Connected,
        State::Backoff,
        State::Closed,
    ];

    /// The label of the `state` metric dimension.
    pub fn label(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Connected => "connected",
            State::Backoff => "backoff",
            State::Closed => "closed",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Connecting,
            1 => State::Connected,
            2 => State::Backoff,
            _ => State::Closed,
        }
    }
}

/// Subscribe batches on their way to being covered: sent, their barrier ping not answered
/// yet (by number), or answered and settling (until when). A pattern that goes is taken out
/// of both under this lock, so a late pong never marks a pattern covered that is not
/// subscribed any more.
#[derive(Default)]
struct Barriers {
    pending: VecDeque<(u64, Vec<Pattern>)>,
    settling: VecDeque<(Instant, Vec<Pattern>)>,
}

impl Barriers {
    fn strip(&mut self, pattern: &Pattern) {
        let pending = self.pending.iter_mut().map(|(_, patterns)| patterns);
        let settling = self.settling.iter_mut().map(|(_, patterns)| patterns);
        for patterns in pending.chain(settling) {
            patterns.retain(|p| p != pattern);
        }
    }
}

/// A wanted pattern: how many users need it, and which time it was wanted anew (a pattern
/// removed and added again before the writer saw either is subscribed and covered again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Want {
    count: usize,
    generation: u64,
}

struct Shared {
    customer_id: Uuid,
    /// How many users need each pattern.
    wanted: Mutex<BTreeMap<Pattern, Want>>,
    next_generation: AtomicU64,
    barriers: Mutex<Barriers>,
    /// Whether `barriers.settling` may hold anything (the reader's fast path).
    settling: std::sync::atomic::AtomicBool,
    sink: Arc<dyn EventSink>,
    changed: Notify,
    state: AtomicU8,
    /// When the connection last worked ([`clock_ms`]): [`WORKING_NOW`] while connected,
    /// 0 if it never did.
    worked_at: AtomicU64,
    cancel: CancellationToken,
}

impl Shared {
    fn wanted(&self) -> MutexGuard<'_, BTreeMap<Pattern, Want>> {
        // The map stays consistent even if a holder panicked.
        self.wanted.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn barriers(&self) -> MutexGuard<'_, Barriers> {
        self.barriers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the sink of settled batches (in stream order: called by the reader).
    fn settle(&self, now: Instant) {
        if !self.settling.load(Ordering::Acquire) {
            return;
        }
        let mut barriers = self.barriers();
        while let Some((due, _)) = barriers.settling.front() {
            if *due > now {
                break;
            }
            if let Some((_, patterns)) = barriers.settling.pop_front()
                && !patterns.is_empty()
            {
                self.sink.covered(&patterns);
            }
        }
        self.settling
            .store(!barriers.settling.is_empty(), Ordering::Release);
    }

    fn set_state(&self, state: State) {
        let old = State::from_u8(self.state.swap(state as u8, Ordering::Relaxed));
        if state == State::Connected {
            self.worked_at.store(WORKING_NOW, Ordering::Relaxed);
        } else if old == State::Connected {
            // 0 means "never worked": the first millisecond of the process counts as 1.
            self.worked_at.store(clock_ms().max(1), Ordering::Relaxed);
        }
        if old != state {
            metrics::gauge!("fanout_upstream_connections", "state" => old.label()).decrement(1.0);
            metrics::gauge!("fanout_upstream_connections", "state" => state.label()).increment(1.0);
            metrics::counter!("fanout_upstream_transitions_total", "state" => state.label())
                .increment(1);
            tracing::info!(customer_id = %self.customer_id, from = old.label(), to = state.label(), "Upstream state changed");
        }
    }
}

/// The handle of one customer's upstream connection. Dropping it does not close the
/// connection; [`Upstream::close`] or the parent token does.
#[derive(Clone)]
pub struct Upstream {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("customer_id", &self.shared.customer_id)
            .field("state", &self.state())
            .finish()
    }
}

impl Upstream {
    /// Starts the connection task for `customer_id`; it runs until `cancel` (or a child of
    /// it made here) is cancelled.
    pub fn spawn(
        customer_id: Uuid,
        config: Arc<UpstreamConfig>,
        sink: Arc<dyn EventSink>,
        cancel: &CancellationToken,
    ) -> Upstream {
        // Start the shared clock no later than the first upstream.
        let _ = clock_ms();
        let shared = Arc::new(Shared {
            customer_id,
            wanted: Mutex::new(BTreeMap::new()),
            next_generation: AtomicU64::new(0),
            barriers: Mutex::new(Barriers::default()),
            settling: std::sync::atomic::AtomicBool::new(false),
            sink: sink.clone(),
            changed: Notify::new(),
            state: AtomicU8::new(State::Connecting as u8),
            worked_at: AtomicU64::new(0),
            cancel: cancel.child_token(),
        });
        metrics::gauge!("fanout_upstream_connections", "state" => State::Connecting.label())
            .increment(1.0);
        tokio::spawn(run(shared.clone(), config, sink));
        Upstream { shared }
    }

    /// The customer it serves.
    pub fn customer_id(&self) -> Uuid {
        self.shared.customer_id
    }

    /// Where the connection stands.
    pub fn state(&self) -> State {
        State::from_u8(self.shared.state.load(Ordering::Relaxed))
    }

    /// How long ago the connection last worked: zero while it is connected, `None` if it
    /// never was.
    pub fn down_for(&self) -> Option<Duration> {
        match self.shared.worked_at.load(Ordering::Relaxed) {
            0 => None,
            WORKING_NOW => Some(Duration::ZERO),
            at => Some(Duration::from_millis(clock_ms().saturating_sub(at))),
        }
    }

    /// One more user needs `pattern`; the first one subscribes it.
    pub fn add(&self, pattern: &Pattern) {
        let first = {
            let mut wanted = self.shared.wanted();
            let want = wanted.entry(pattern.clone()).or_insert_with(|| Want {
                count: 0,
                generation: self.shared.next_generation.fetch_add(1, Ordering::Relaxed),
            });
            want.count += 1;
            want.count == 1
        };
        if first {
            self.shared.changed.notify_one();
        }
    }

    /// One user less needs `pattern`; the last one unsubscribes it, and the sink hears at
    /// once that its events may stop (before this returns: a resume judged after it does
    /// not take the pattern for covered).
    pub fn remove(&self, pattern: &Pattern) {
        let last = {
            let mut wanted = self.shared.wanted();
            match wanted.get_mut(pattern) {
                Some(want) if want.count > 1 => {
                    want.count -= 1;
                    false
                }
                Some(_) => {
                    wanted.remove(pattern);
                    let mut barriers = self.shared.barriers();
                    barriers.strip(pattern);
                    self.shared.sink.uncovered(std::slice::from_ref(pattern));
                    true
                }
                None => false,
            }
        };
        if last {
            self.shared.changed.notify_one();
        }
    }

    /// The patterns currently wanted, each once.
    pub fn wanted(&self) -> Vec<Pattern> {
        self.shared.wanted().keys().cloned().collect()
    }

    /// Closes the connection for good.
    pub fn close(&self) {
        self.shared.cancel.cancel();
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Cancelled,
    Dropped,
    Stalled,
}

async fn run(shared: Arc<Shared>, config: Arc<UpstreamConfig>, sink: Arc<dyn EventSink>) {
    let customer_id = shared.customer_id;
    let mut attempt: u32 = 0;
    // Since when events may have been missed: set when a connection ends or an attempt
    // fails, told to the sink once the next connection is subscribed.
    let mut missed_since: Option<SystemTime> = None;
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
                let (ended, last_heard, told) =
                    connected(&shared, &config, sink.clone(), ws, missed_since).await;
                tracing::info!(%customer_id, ended = ?ended, "Upstream connection ended");
                if ended == Ended::Cancelled {
                    break;
                }
                // A gap not told yet (the connection ended before its first barrier) still
                // starts when the earlier loss did.
                missed_since = match (told, missed_since) {
                    (false, Some(earlier)) => Some(earlier),
                    _ => Some(last_heard),
                };
                metrics::counter!("fanout_upstream_drops_total", "reason" => match ended {
                    Ended::Stalled => "stalled",
                    _ => "dropped",
                })
                .increment(1);
                if since.elapsed() >= config.stable_after {
                    attempt = 0;
                }
            }
            Err(error) => {
                missed_since.get_or_insert_with(SystemTime::now);
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
    // Closed connections are not counted as connections.
    metrics::gauge!("fanout_upstream_connections", "state" => State::Closed.label()).decrement(1.0);
}

/// The resource of the one pattern a bare object can have arrived on, if there is exactly
/// one pattern and its resource segment is literal.
fn bare_resource(sent: &Sent) -> Option<Arc<str>> {
    let mut patterns = sent.keys();
    match (patterns.next(), patterns.next()) {
        (Some(only), None) => only
            .rest_segment(0)
            .filter(|r| *r != fanout_protocol::topic::WILDCARD)
            .map(Arc::from),
        _ => None,
    }
}

fn request_json(kind: &str, topics: &[&Pattern]) -> String {
    let topics: Vec<&str> = topics.iter().map(|p| p.as_str()).collect();
    serde_json::json!({"type": kind, "topics": topics}).to_string()
}

/// Events held back until the first barrier after a reconnect, so that the gap comes first.
const MAX_HELD_EVENTS: usize = 4096;

/// The patterns subscribed on a connection, with the generation each was wanted in.
type Sent = BTreeMap<Pattern, u64>;

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

/// Writes the subscription changes that bring `sent` to what is wanted now, and answers
/// that. The subscribes (of patterns new, or wanted anew since they were sent) are followed
/// by a barrier ping numbered from `next_barrier`, registered with them while the wanted set
/// is locked: a pattern removed after that is stripped from it. `first`: the connection's
/// first set, which gets a barrier even if empty (a gap waits for it).
async fn send_changes<S>(
    write: &mut fastwebsockets::WebSocketWrite<S>,
    config: &UpstreamConfig,
    shared: &Shared,
    next_barrier: &mut u64,
    sent: &Sent,
    first: bool,
) -> Result<Sent, Ended>
where
    S: tokio::io::AsyncWrite + Unpin,
{
    let (wanted, add, gone, barrier) = {
        let wanted = shared.wanted();
        let now: Sent = wanted
            .iter()
            .map(|(p, want)| (p.clone(), want.generation))
            .collect();
        let add: Vec<Pattern> = now
            .iter()
            .filter(|(p, generation)| sent.get(*p) != Some(*generation))
            .map(|(p, _)| p.clone())
            .collect();
        let gone: Vec<Pattern> = sent
            .keys()
            .filter(|p| !now.contains_key(*p))
            .cloned()
            .collect();
        let barrier = (first || !add.is_empty()).then(|| {
            let number = *next_barrier;
            *next_barrier += 1;
            shared.barriers().pending.push_back((number, add.clone()));
            number
        });
        (now, add, gone, barrier)
    };
    let add: Vec<&Pattern> = add.iter().collect();
    let gone: Vec<&Pattern> = gone.iter().collect();
    let mut messages = Vec::new();
    for chunk in add.chunks(MAX_TOPICS_PER_MESSAGE) {
        messages.push(request_json("subscribe", chunk));
    }
    for chunk in gone.chunks(MAX_TOPICS_PER_MESSAGE) {
        messages.push(request_json("unsubscribe", chunk));
    }
    for message in &messages {
        write_within(
            write,
            config,
            Frame::text(Payload::Borrowed(message.as_bytes())),
        )
        .await?;
    }
    if let Some(number) = barrier {
        let payload = number.to_be_bytes().to_vec();
        write_within(
            write,
            config,
            Frame::new(true, OpCode::Ping, None, Payload::Owned(payload)),
        )
        .await?;
    }
    Ok(wanted)
}

/// The patterns an upstream error frame names (`{"type":"error",…,"topics":[…]}`), if the
/// frame is one.
fn refused_topics(text: &[u8]) -> Option<Vec<Pattern>> {
    #[derive(serde::Deserialize)]
    struct ErrorFrame {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        topics: Vec<String>,
    }
    // Events are the hot path: only a frame whose start names "error" is parsed for it.
    let head = &text[..text.len().min(64)];
    if !head.windows(7).any(|w| w == b"\"error\"") {
        return None;
    }
    let frame: ErrorFrame = serde_json::from_slice(text).ok()?;
    (frame.kind == "error").then(|| {
        frame
            .topics
            .iter()
            .filter_map(|t| Pattern::parse(t).ok())
            .collect()
    })
}

/// Nothing of a connection arrives any more: its barriers go, and the sink hears that none
/// of its patterns is covered.
fn end_connection(shared: &Shared, sent: &Sent) {
    let mut barriers = shared.barriers();
    barriers.pending.clear();
    barriers.settling.clear();
    shared.settling.store(false, Ordering::Release);
    if !sent.is_empty() {
        shared
            .sink
            .uncovered(&sent.keys().cloned().collect::<Vec<_>>());
    }
}

/// Serves one open connection until it ends; answers why, when it was last heard from (the
/// earliest an event may have been missed after it), and whether its first barrier was
/// answered (and so the gap it was handed told).
async fn connected(
    shared: &Arc<Shared>,
    config: &UpstreamConfig,
    sink: Arc<dyn EventSink>,
    mut ws: fastwebsockets::WebSocket<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>,
    missed_since: Option<SystemTime>,
) -> (Ended, SystemTime, bool) {
    ws.set_max_message_size(config.max_frame_bytes);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    let (read, mut write) = ws.split(tokio::io::split);
    let mut read = fastwebsockets::FragmentCollectorRead::new(read);
    let started = Instant::now();
    let started_wall = SystemTime::now();
    // When the connection was last heard from: ms after `started`.
    let last_heard = |last_seen: &AtomicU64| {
        started_wall + Duration::from_millis(last_seen.load(Ordering::Relaxed))
    };
    // The whole set first, before anything is read, then its barrier: the gap (if any) is
    // told when the barrier is answered, and events before it are held back until then.
    let mut next_barrier = 0;
    let mut sent = match send_changes(
        &mut write,
        config,
        shared,
        &mut next_barrier,
        &Sent::new(),
        true,
    )
    .await
    {
        Ok(sent) => sent,
        Err(ended) => {
            end_connection(shared, &Sent::new());
            return (ended, missed_since.unwrap_or(started_wall), false);
        }
    };
    let first_barrier_at = Instant::now();
    let last_seen = Arc::new(AtomicU64::new(0));
    // Frames heard on this connection: a ping is answered once the count passes what it was
    // when the ping went out (pongs come back as frames, events count too).
    let frames_heard = Arc::new(AtomicU64::new(0));
    let bare = Arc::new(Mutex::new(bare_resource(&sent)));
    // Frames the reader must have sent (pongs, the close reply) go through the writer here.
    let (obligated_tx, mut obligated_rx) = mpsc::channel::<(OpCode, Vec<u8>)>(16);
    let customer_id = shared.customer_id;
    let shapes = [
        metrics::counter!("fanout_upstream_events_total", "shape" => "envelope"),
        metrics::counter!("fanout_upstream_events_total", "shape" => "webhook"),
        metrics::counter!("fanout_upstream_events_total", "shape" => "bare"),
    ];
    let undecodable = metrics::counter!("fanout_events_dropped_total", "reason" => "undecodable");
    // Set by the reader once the first barrier is answered.
    let first_barrier_passed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut reader = tokio::spawn({
        let last_seen = last_seen.clone();
        let frames_heard = frames_heard.clone();
        let bare = bare.clone();
        let shared = shared.clone();
        let settle = config.subscribe_settle;
        let first_barrier_passed = first_barrier_passed.clone();
        let sink = sink.clone();
        let held_dropped =
            metrics::counter!("fanout_events_dropped_total", "reason" => "inside_gap");
        let mut held: Option<Vec<Event>> = missed_since.map(|_| Vec::new());
        let mut missed_since = missed_since;
        async move {
            let mut send = |frame: Frame<'_>| {
                let owned = (frame.opcode, frame.payload.to_vec());
                let tx = obligated_tx.clone();
                async move {
                    tx.send(owned)
                        .await
                        .map_err(|_| WebSocketError::ConnectionClosed)
                }
            };
            loop {
                if let Some(room) = sink.room() {
                    room.await;
                }
                let frame = match read.read_frame(&mut send).await {
                    Ok(frame) => frame,
                    Err(error) => {
                        tracing::debug!(%customer_id, %error, "Upstream read ended");
                        return;
                    }
                };
                last_seen.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                frames_heard.fetch_add(1, Ordering::Relaxed);
                // Settled subscriptions are covered from here, in order with the events.
                shared.settle(Instant::now());
                match frame.opcode {
                    OpCode::Text => {
                        // The frame's own buffer becomes the event's: no copy.
                        let bytes = match frame.payload {
                            fastwebsockets::Payload::Bytes(b) => b.freeze(),
                            fastwebsockets::Payload::Owned(v) => Bytes::from(v),
                            other => Bytes::copy_from_slice(&other),
                        };
                        if let Some(refused) = refused_topics(&bytes) {
                            // VoIPBIN refused subscribes and kept the connection: those
                            // patterns are not applied, whatever their barrier says.
                            tracing::warn!(%customer_id, topics = ?refused, "Upstream refused a subscription");
                            metrics::counter!("fanout_upstream_refusals_total").increment(1);
                            let mut barriers = shared.barriers();
                            for pattern in &refused {
                                barriers.strip(pattern);
                            }
                            sink.uncovered(&refused);
                            continue;
                        }
                        let bare_resource = bare.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        let cx = Context {
                            customer_id,
                            received_at: SystemTime::now(),
                            bare_resource: bare_resource.as_deref(),
                        };
                        match upstream::decode(&bytes, &cx) {
                            Ok(event) => {
                                let shape = match event.shape {
                                    upstream::Shape::Envelope => 0,
                                    upstream::Shape::Webhook => 1,
                                    upstream::Shape::Bare => 2,
                                };
                                shapes[shape].increment(1);
                                match held.as_mut() {
                                    Some(held) if held.len() < MAX_HELD_EVENTS => held.push(event),
                                    // Past the bound it is inside the gap told later.
                                    Some(_) => held_dropped.increment(1),
                                    None => sink.publish(event),
                                }
                            }
                            Err(error) => {
                                undecodable.increment(1);
                                tracing::debug!(%customer_id, %error, "Upstream frame dropped");
                            }
                        }
                    }
                    OpCode::Pong => {
                        let Ok(number) = <[u8; 8]>::try_from(&frame.payload[..]) else {
                            continue;
                        };
                        let number = u64::from_be_bytes(number);
                        let now = Instant::now();
                        // Under the barriers' lock: a pattern removed meanwhile is either
                        // stripped already or told uncovered after this.
                        let mut barriers = shared.barriers();
                        while barriers.pending.front().is_some_and(|(n, _)| *n <= number) {
                            let Some((_, patterns)) = barriers.pending.pop_front() else {
                                break;
                            };
                            // Events held back arrived before the subscriptions were known
                            // applied: inside the gap's interval, before it and the coverage.
                            for event in held.take().unwrap_or_default() {
                                sink.publish(event);
                            }
                            first_barrier_passed.store(true, Ordering::Relaxed);
                            if settle.is_zero() {
                                if !patterns.is_empty() {
                                    sink.covered(&patterns);
                                }
                            } else {
                                barriers.settling.push_back((now + settle, patterns));
                                shared.settling.store(true, Ordering::Release);
                            }
                            // The gap comes at the point from which everything is covered (at
                            // once without a settle time), so a client that handled it
                            // resumes from its cursor.
                            if let Some(since) = missed_since.take() {
                                let until = SystemTime::now();
                                metrics::counter!("fanout_upstream_gaps_total").increment(1);
                                tracing::info!(%customer_id, missed_ms = until.duration_since(since).unwrap_or_default().as_millis() as u64, "Upstream recovered; sessions told of the gap");
                                sink.gap(since, until);
                            }
                        }
                    }
                    OpCode::Close => return,
                    _ => {}
                }
            }
        }
    });
    let mut ping =
        tokio::time::interval_at(Instant::now() + config.ping_interval, config.ping_interval);
    // The oldest ping not yet known to be answered, and the latest one sent: anything heard
    // after a ping answers it (VoIPBIN answers pings; events count too).
    let mut awaiting: Option<(Instant, u64)> = None;
    let mut latest_ping: Option<(Instant, u64)> = None;
    let heard_at =
        |last_seen: &AtomicU64| started + Duration::from_millis(last_seen.load(Ordering::Relaxed));
    // Armed (reset to its due time) only while a ping awaits its answer.
    let pong_deadline = tokio::time::sleep_until(started + config.pong_timeout);
    tokio::pin!(pong_deadline);
    let mut dirty = false;
    let mut reader_done = false;
    let ended = loop {
        if dirty {
            dirty = false;
            match send_changes(&mut write, config, shared, &mut next_barrier, &sent, false).await {
                Ok(wanted) => {
                    *bare.lock().unwrap_or_else(|e| e.into_inner()) = bare_resource(&wanted);
                    sent = wanted;
                }
                Err(ended) => break ended,
            }
        }
        if let Some((at, _)) = awaiting {
            let due = at + config.pong_timeout;
            if pong_deadline.deadline() != due {
                pong_deadline.as_mut().reset(due);
            }
        }
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
            () = shared.changed.notified() => dirty = true,
            obligated = obligated_rx.recv() => {
                let Some((opcode, payload)) = obligated else { break Ended::Dropped };
                let frame = Frame::new(true, opcode, None, Payload::Owned(payload));
                match tokio::time::timeout(config.write_timeout, write.write_frame(frame)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break Ended::Dropped,
                    Err(_) => break Ended::Stalled,
                }
            }
            () = tokio::time::sleep_until(first_barrier_at + config.pong_timeout),
                if !first_barrier_passed.load(Ordering::Relaxed) =>
            {
                // Events may flow, but without the barrier's answer nothing is known to be
                // subscribed, and a gap would wait for ever.
                if !first_barrier_passed.load(Ordering::Relaxed) {
                    metrics::counter!("fanout_upstream_pong_timeouts_total").increment(1);
                    break Ended::Stalled;
                }
            }
            () = &mut pong_deadline, if awaiting.is_some() => {
                let heard = frames_heard.load(Ordering::Relaxed);
                match (awaiting, latest_ping) {
                    (Some((_, before)), _) if heard == before => {
                        metrics::counter!("fanout_upstream_pong_timeouts_total").increment(1);
                        break Ended::Stalled;
                    }
                    // Answered; a later ping may still be waiting.
                    (_, Some(latest)) if heard == latest.1 => awaiting = Some(latest),
                    _ => awaiting = None,
                }
            }
            _ = ping.tick() => {
                let now = Instant::now();
                if now.saturating_duration_since(heard_at(&last_seen)) >= config.idle_timeout {
                    break Ended::Stalled;
                }
                let frame = Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b""));
                match tokio::time::timeout(config.write_timeout, write.write_frame(frame)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break Ended::Dropped,
                    Err(_) => break Ended::Stalled,
                }
                let sent = (now, frames_heard.load(Ordering::Relaxed));
                awaiting.get_or_insert(sent);
                latest_ping = Some(sent);
            }
        }
    };
    if !reader_done {
        reader.abort();
        // Wait for it to stop: nothing of this connection may be published after the gap
        // that the next one will report. (A handle that already answered must not be
        // polled again.)
        let _ = reader.await;
    }
    end_connection(shared, &sent);
    (
        ended,
        last_heard(&last_seen),
        first_barrier_passed.load(Ordering::Relaxed),
    )
}
