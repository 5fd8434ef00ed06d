//! One simulated VoIPBIN WebSocket connection: a reader task for client messages and a
//! writer task that drains the connection's queue of ready-made frames and pings.
//!
//! fastwebsockets' `read_frame` is not cancel-safe, so the reader never sits in a `select!`
//! with anything it must survive: it only races the connection's own cancellation, after
//! which the connection is gone anyway.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fanout_auth::{Identity, permit};
use fanout_protocol::client::{self, Action, ErrorCode, Refusal};
use fanout_protocol::server;
use fanout_protocol::ws::{self, OpCode};
use fastwebsockets::{Frame, WebSocketError};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::hub::{Conn, Simulator};
use crate::subscription::{Hook, Subscription, voipbin_permits};

const CLOSE_OPCODE_BYTE: u8 = 0x88;

pub(crate) async fn run(sim: Arc<Simulator>, identity: Identity, io: TokioIo<Upgraded>) {
    let (tx, rx) = mpsc::channel(sim.config.queue_capacity.max(1));
    let conn = sim.register(identity, tx);
    tracing::debug!(conn = conn.id, customer_id = %conn.identity.customer_id, "Sim connection opened");
    let (read, write) = tokio::io::split(io);
    let started = Instant::now();
    let last_seen = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(write_loop(
        sim.clone(),
        conn.clone(),
        write,
        rx,
        started,
        last_seen.clone(),
    ));
    let (mut reader, _) = fastwebsockets::after_handshake_split(
        read,
        tokio::io::sink(),
        fastwebsockets::Role::Server,
    );
    reader.set_max_message_size(sim.config.max_message);
    tokio::select! {
        () = conn.cancel.cancelled() => {}
        () = read_loop(&sim, &conn, &mut reader, started, &last_seen) => {}
    }
    // Whatever ended the reader, the writer gets to finish a close frame it was sent, then the
    // socket goes.
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    conn.cancel.cancel();
    sim.unregister(&conn);
    tracing::debug!(conn = conn.id, "Sim connection closed");
}

async fn wait_while_stalled(conn: &Conn) {
    while let Some(until) = conn.stalled_until() {
        if Instant::now() >= until {
            break;
        }
        tokio::time::sleep_until(until).await;
    }
}

async fn read_loop(
    sim: &Simulator,
    conn: &Arc<Conn>,
    reader: &mut fastwebsockets::WebSocketRead<tokio::io::ReadHalf<TokioIo<Upgraded>>>,
    started: Instant,
    last_seen: &AtomicU64,
) {
    let tx = conn.tx.clone();
    let mut obligated = move |frame: Frame<'_>| {
        let opcode = match frame.opcode {
            fastwebsockets::OpCode::Close => OpCode::Close,
            _ => OpCode::Pong,
        };
        let bytes = ws::encode(opcode, &frame.payload);
        let tx = tx.clone();
        async move {
            tx.send(bytes)
                .await
                .map_err(|_| WebSocketError::ConnectionClosed)
        }
    };
    loop {
        wait_while_stalled(conn).await;
        let frame = match reader.read_frame(&mut obligated).await {
            Ok(frame) => frame,
            Err(error) => {
                tracing::debug!(conn = conn.id, %error, "Sim connection read ended");
                conn.cancel.cancel();
                return;
            }
        };
        last_seen.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        match frame.opcode {
            fastwebsockets::OpCode::Text => {
                handle_message(sim, conn, &frame.payload);
                if conn.cancel.is_cancelled() {
                    // Refused: nothing read after it is answered (a ping behind it gets no
                    // pong), as VoIPBIN's read loop ends there.
                    return;
                }
            }
            fastwebsockets::OpCode::Close => return,
            fastwebsockets::OpCode::Binary => {
                // The real server only takes text messages.
                if sim.config.quirks.close_on_bad_topic || sim.config.quirks.raw_prefix {
                    return;
                }
                let _ = conn
                    .tx
                    .try_send(ws::encode_close(1003, "binary messages are not supported"));
                return;
            }
            _ => {}
        }
    }
}

fn refuse(sim: &Simulator, conn: &Conn, refusal: &Refusal) -> bool {
    if sim.config.quirks.close_on_bad_topic {
        // The real server drops the TCP connection on a bad topic and ignores bad JSON.
        if matches!(
            refusal.code,
            ErrorCode::InvalidTopic | ErrorCode::ForbiddenTopic
        ) {
            conn.cancel.cancel();
        }
        return false;
    }
    conn.tx.try_send(server::error_frame(refusal)).is_ok()
}

fn handle_message(sim: &Simulator, conn: &Arc<Conn>, text: &[u8]) {
    if sim.config.quirks.raw_prefix {
        return handle_as_voipbin(sim, conn, text);
    }
    let request = match client::parse_request(text) {
        Ok(request) => request,
        Err(refusal) => {
            refuse(sim, conn, &refusal);
            return;
        }
    };
    if request.action == Action::Subscribe {
        let forbidden: Vec<String> = request
            .topics
            .iter()
            .zip(&request.sent)
            .filter(|(p, _)| !permit(&conn.identity, p))
            .map(|(_, sent)| sent.clone())
            .collect();
        if !forbidden.is_empty() {
            let refusal = Refusal::with_topics(
                ErrorCode::ForbiddenTopic,
                "not permitted to subscribe to these topics",
                forbidden,
            );
            refuse(sim, conn, &refusal);
            return;
        }
    }
    let subscriptions = request.topics.into_iter().map(Subscription::pattern);
    apply(sim, conn, request.action, subscriptions);
}

/// A message handled as VoIPBIN's code handles it: what does not parse is skipped; any
/// topic it does not accept, whatever the `type`, drops the connection with no close frame
/// and nothing applied; an unknown `type` is ignored; nothing is ever answered.
fn handle_as_voipbin(sim: &Simulator, conn: &Arc<Conn>, text: &[u8]) {
    let Some(hook) = Hook::parse(text) else {
        tracing::debug!(conn = conn.id, "Sim skipped a message that does not parse");
        return;
    };
    if !hook
        .topics()
        .iter()
        .all(|t| voipbin_permits(&conn.identity, t))
    {
        tracing::debug!(
            conn = conn.id,
            "Sim refused a topic: dropping the connection"
        );
        conn.cancel.cancel();
        return;
    }
    let action = match hook.kind() {
        "subscribe" => Action::Subscribe,
        "unsubscribe" => Action::Unsubscribe,
        _ => return,
    };
    let subscriptions = hook.topics().iter().map(|t| Subscription::raw(t));
    apply(sim, conn, action, subscriptions);
}

/// Adds or removes subscriptions (a repeated one once), and files the connection anew.
fn apply(
    sim: &Simulator,
    conn: &Arc<Conn>,
    action: Action,
    changes: impl Iterator<Item = Subscription>,
) {
    {
        let mut subscriptions = conn.subscriptions();
        for subscription in changes {
            let held = subscriptions.iter().position(|s| *s == subscription);
            match (action, held) {
                (Action::Subscribe, None) => subscriptions.push(subscription),
                (Action::Unsubscribe, Some(i)) => {
                    subscriptions.remove(i);
                }
                _ => {}
            }
        }
    }
    sim.refile(conn);
}

async fn write_loop(
    sim: Arc<Simulator>,
    conn: Arc<Conn>,
    mut write: tokio::io::WriteHalf<TokioIo<Upgraded>>,
    mut rx: mpsc::Receiver<Bytes>,
    started: Instant,
    last_seen: Arc<AtomicU64>,
) {
    let mut ping = tokio::time::interval_at(
        Instant::now() + sim.config.ping_interval,
        sim.config.ping_interval,
    );
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        let frame = tokio::select! {
            () = conn.cancel.cancelled() => return,
            _ = ping.tick() => {
                let seen = Duration::from_millis(last_seen.load(Ordering::Relaxed));
                if started.elapsed().saturating_sub(seen) > sim.config.pong_timeout {
                    tracing::debug!(conn = conn.id, "Sim connection missed its pongs");
                    conn.cancel.cancel();
                    return;
                }
                ws::encode(OpCode::Ping, b"")
            }
            received = rx.recv_many(&mut batch, 512) => {
                if received == 0 {
                    return;
                }
                // Many frames are written with one system call.
                let frame = if batch.len() == 1 {
                    batch.pop().unwrap_or_default()
                } else {
                    let mut joined = Vec::with_capacity(batch.iter().map(Bytes::len).sum());
                    for frame in batch.drain(..) {
                        joined.extend_from_slice(&frame);
                    }
                    Bytes::from(joined)
                };
                batch.clear();
                frame
            }
        };
        wait_while_stalled(&conn).await;
        // A close reply written alone ends the connection here; joined with other frames it
        // still goes out, and the connection ends with its reader.
        let closing = frame.first() == Some(&CLOSE_OPCODE_BYTE);
        if write.write_all(&frame).await.is_err() {
            conn.cancel.cancel();
            return;
        }
        if closing {
            let _ = write.shutdown().await;
            conn.cancel.cancel();
            return;
        }
    }
}
