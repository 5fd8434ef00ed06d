//! Downstream sessions as the load tester drives them: a WebSocket client over a raw TCP
//! socket (the handshake written by hand, frames decoded with the gateway's sans-IO decoder in
//! client role), reading events as they come and recording their latency.
//!
//! Each event carries its publish time as `"t":<unix ns>` in its payload; a session finds it
//! with a substring search rather than parsing the JSON, so the tester spends its two cores
//! on reading, not on parsing.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use bytes::{Buf, Bytes, BytesMut};
use fanout_protocol::ws::{self, Decoder, Message, OpCode, Role};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

/// A session's connection: TCP, or TLS over it.
pub(crate) type Stream = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

fn tcp_of(stream: &Stream) -> &TcpStream {
    match stream {
        Either::Left(tcp) => tcp,
        Either::Right(tls) => tls.get_ref().0,
    }
}

/// TLS client settings trusting the CA in `path` (PEM), made once per process.
fn tls_config(path: &std::path::Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(config.clone());
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    Ok(CONFIG.get_or_init(|| config).clone())
}

/// Histogram shards, so that sessions on two threads rarely share a lock.
const SHARDS: usize = 16;

/// The unix time in nanoseconds.
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A new latency histogram: 1 µs to 60 s, 3 significant figures.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!("bug: valid bounds")))
}

/// What every session reports into.
pub(crate) struct Shared {
    /// Events received.
    pub(crate) delivered: AtomicU64,
    /// Sessions subscribed and ready.
    pub(crate) ready: AtomicUsize,
    /// Sessions closed by the server.
    pub(crate) closed: AtomicU64,
    /// Frames that were neither events nor expected answers.
    pub(crate) unexpected: AtomicU64,
    latency: Vec<Mutex<Histogram<u64>>>,
}

impl Shared {
    /// Empty counters.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Shared {
            delivered: AtomicU64::new(0),
            ready: AtomicUsize::new(0),
            closed: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
            latency: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
        })
    }

    /// Adds what one session read in one go: a count and its latencies, under one lock.
    fn add_batch(&self, shard: usize, batch: &mut Batch) {
        if batch.len == 0 {
            return;
        }
        self.delivered
            .fetch_add(batch.len as u64, Ordering::Relaxed);
        let mut h = self.latency[shard % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for micros in &batch.micros[..batch.len] {
            let _ = h.record((*micros).max(1));
        }
        batch.len = 0;
    }

    /// Takes the latency recorded so far (microseconds) and starts afresh.
    pub(crate) fn take_latency(&self) -> Histogram<u64> {
        let mut out = histogram();
        for shard in &self.latency {
            let mut h = shard.lock().unwrap_or_else(|e| e.into_inner());
            let _ = out.add(&*h);
            h.reset();
        }
        out
    }
}

/// Latencies a session collected since its last flush (flushed per read, or when full), so
/// the tester's threads do not meet on a lock and a counter for every event.
struct Batch {
    micros: [u64; 64],
    len: usize,
}

impl Batch {
    fn new() -> Self {
        Batch {
            micros: [0; 64],
            len: 0,
        }
    }

    /// Records one event's latency; true when the batch is full and must be flushed.
    fn push(&mut self, sent: u64) -> bool {
        self.micros[self.len] = now_ns().saturating_sub(sent) / 1000;
        self.len += 1;
        self.len == self.micros.len()
    }
}

/// How a session speaks once the WebSocket is open.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) enum Protocol {
    /// The gateway: subscribe, then a marker request whose error answer says the subscription
    /// is in place; each text frame after that is one event.
    Gateway {
        /// The subscribe message.
        subscribe: String,
    },
    /// nchan: subscribed by the URL; each frame is one event.
    Plain,
    /// NATS over WebSocket: `CONNECT`, `SUB`, `PING`; ready at the `PONG`; events are `MSG`s.
    Nats {
        /// The subject to subscribe to.
        subject: String,
    },
}

/// Where and how a session connects.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct SessionSpec {
    /// The server.
    pub(crate) addr: SocketAddr,
    /// Request path and query.
    pub(crate) path: String,
    /// What it speaks.
    pub(crate) protocol: Protocol,
    /// `wss://`: the CA (PEM) the server's certificate (for `localhost`) is issued by.
    #[serde(default)]
    pub(crate) tls_ca: Option<std::path::PathBuf>,
}

fn masked(opcode: OpCode, payload: &[u8]) -> Bytes {
    ws::encode_masked(opcode, payload, rand::random())
}

/// Opens a WebSocket from `source`; answers the stream and any bytes read past the handshake.
///
/// # Errors
/// When the connection fails or the server does not answer 101.
pub(crate) async fn handshake(
    spec: &SessionSpec,
    source: IpAddr,
) -> anyhow::Result<(Stream, BytesMut)> {
    let socket = if spec.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_nodelay(true)?;
    socket
        .bind(SocketAddr::new(source, 0))
        .with_context(|| format!("binding {source}"))?;
    let tcp = socket.connect(spec.addr).await.context("connecting")?;
    let mut stream: Stream = match &spec.tls_ca {
        None => Either::Left(tcp),
        Some(ca) => {
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let tls = tokio_rustls::TlsConnector::from(tls_config(ca)?)
                .connect(name, tcp)
                .await
                .context("TLS handshake")?;
            Either::Right(tls)
        }
    };
    let key = uuid::Uuid::new_v4().simple().to_string();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        spec.path,
        spec.addr,
        &key[..22]
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("closed during the handshake");
        }
        if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).unwrap_or_default();
            if !head.starts_with("HTTP/1.1 101") {
                bail!(
                    "handshake refused: {}",
                    head.lines().next().unwrap_or_default()
                );
            }
            buf.advance(end + 4);
            return Ok((stream, buf));
        }
        if buf.len() > 16 * 1024 {
            bail!("handshake answer too long");
        }
    }
}

/// The publish time in an event payload, if it carries one.
fn sent_ns(payload: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(payload, b"\"t\":")? + 4;
    let digits = payload[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&payload[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// Runs one session until `stop` or the server closes it: subscribes, reports readiness,
/// counts events and records their latency.
pub(crate) async fn run(
    mut stream: Stream,
    mut buf: BytesMut,
    protocol: Protocol,
    shared: Arc<Shared>,
    shard: usize,
    stop: CancellationToken,
) {
    let hello = match &protocol {
        Protocol::Gateway { subscribe } => {
            let mut out = masked(OpCode::Text, subscribe.as_bytes()).to_vec();
            out.extend_from_slice(&masked(OpCode::Text, br#"{"type":"sync"}"#));
            out
        }
        Protocol::Plain => {
            shared.ready.fetch_add(1, Ordering::Relaxed);
            Vec::new()
        }
        Protocol::Nats { subject } => masked(
            OpCode::Binary,
            format!("CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"echo\":false}}\r\nSUB {subject} 1\r\nPING\r\n").as_bytes(),
        )
        .to_vec(),
    };
    if stream.write_all(&hello).await.is_err() {
        return;
    }
    let mut decoder = Decoder::new(Role::Client, 16 * 1024 * 1024);
    let mut nats = BytesMut::new();
    let mut ready = matches!(protocol, Protocol::Plain);
    let mut batch = Batch::new();
    loop {
        loop {
            let message = match decoder.decode(&mut buf) {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(_) => {
                    shared.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let reply = match message {
                Message::Text(payload) | Message::Binary(payload) => match &protocol {
                    Protocol::Nats { .. } => {
                        nats.extend_from_slice(&payload);
                        nats_lines(&mut nats, &shared, shard, &mut ready, &mut batch)
                    }
                    _ => {
                        if let Some(sent) = sent_ns(&payload) {
                            if batch.push(sent) {
                                shared.add_batch(shard, &mut batch);
                            }
                        } else if !ready
                            && memchr::memmem::find(&payload, b"unknown_type").is_some()
                        {
                            ready = true;
                            shared.ready.fetch_add(1, Ordering::Relaxed);
                        } else {
                            shared.unexpected.fetch_add(1, Ordering::Relaxed);
                        }
                        None
                    }
                },
                Message::Ping(payload) => Some(masked(OpCode::Pong, &payload)),
                Message::Pong(_) => None,
                Message::Close(..) => {
                    shared.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            if let Some(reply) = reply
                && stream.write_all(&reply).await.is_err()
            {
                return;
            }
        }
        shared.add_batch(shard, &mut batch);
        tokio::select! {
            () = stop.cancelled() => {
                // Reset rather than close: a run leaves no TIME_WAIT behind to crowd the next
                // run's source ports (thousands per run on a few source addresses).
                let _ = socket2::SockRef::from(tcp_of(&stream)).set_linger(Some(Duration::ZERO));
                return;
            }
            read = stream.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    shared.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(_) => {}
            }
        }
    }
}

/// Handles the complete NATS protocol lines in `pending`; answers a `PONG` to send, if any.
fn nats_lines(
    pending: &mut BytesMut,
    shared: &Shared,
    shard: usize,
    ready: &mut bool,
    batch: &mut Batch,
) -> Option<Bytes> {
    let mut reply = None;
    loop {
        let Some(eol) = memchr::memmem::find(pending, b"\r\n") else {
            return reply;
        };
        if pending.starts_with(b"MSG ") {
            // MSG <subject> <sid> [reply] <bytes>
            let line = &pending[..eol];
            let len: usize = line
                .rsplit(|b| *b == b' ')
                .next()
                .and_then(|n| std::str::from_utf8(n).ok())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if pending.len() < eol + 2 + len + 2 {
                return reply;
            }
            let payload = &pending[eol + 2..eol + 2 + len];
            if let Some(sent) = sent_ns(payload)
                && batch.push(sent)
            {
                shared.add_batch(shard, batch);
            }
            pending.advance(eol + 2 + len + 2);
            continue;
        }
        if pending.starts_with(b"PING") {
            reply = Some(masked(OpCode::Binary, b"PONG\r\n"));
        } else if pending.starts_with(b"PONG") && !*ready {
            *ready = true;
            shared.ready.fetch_add(1, Ordering::Relaxed);
        } else if pending.starts_with(b"-ERR") {
            shared.unexpected.fetch_add(1, Ordering::Relaxed);
        }
        pending.advance(eol + 2);
    }
}

/// Opens `count` sessions with at most `concurrency` handshakes in flight, spread over
/// `sources` source addresses from 127.0.0.(2+`source_base`); each runs until `stop`. Answers the handshake latencies (µs) and how long the
/// whole wave took.
pub(crate) async fn open_all(
    specs: Arc<dyn Fn(u32) -> SessionSpec + Send + Sync>,
    count: u32,
    source_base: u8,
    sources: u8,
    concurrency: usize,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> anyhow::Result<(Histogram<u64>, Duration, tokio::task::JoinSet<()>)> {
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let started = Instant::now();
    let mut handshakes = tokio::task::JoinSet::new();
    for i in 0..count {
        let permit = permits.clone().acquire_owned().await?;
        let spec = specs(i);
        let source = IpAddr::from([
            127,
            0,
            0,
            2u8.saturating_add(source_base)
                .saturating_add((i % u32::from(sources.max(1))) as u8),
        ]);
        handshakes.spawn(async move {
            let begun = Instant::now();
            let mut result = handshake(&spec, source).await;
            // One retry after a short pause: a full listen backlog is a storm's normal state.
            if result.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                result = handshake(&spec, source).await;
            }
            drop(permit);
            result.map(|(stream, buf)| (i, spec.protocol, stream, buf, begun.elapsed()))
        });
    }
    let mut latency = histogram();
    let mut sessions = tokio::task::JoinSet::new();
    let mut failed = 0;
    while let Some(joined) = handshakes.join_next().await {
        match joined {
            Ok(Ok((i, protocol, stream, buf, took))) => {
                let _ = latency.record((took.as_micros() as u64).max(1));
                sessions.spawn(run(
                    stream,
                    buf,
                    protocol,
                    shared.clone(),
                    i as usize,
                    stop.clone(),
                ));
            }
            _ => failed += 1,
        }
    }
    let took = started.elapsed();
    if failed > 0 {
        bail!("{failed} of {count} handshakes failed");
    }
    Ok((latency, took, sessions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_send_time() {
        assert_eq!(sent_ns(br#"{"data":{"t":123456,"seq":1}}"#), Some(123_456));
        assert_eq!(sent_ns(br#"{"data":{"seq":1}}"#), None);
    }

    #[test]
    fn nats_messages_split_anywhere() {
        let shared = Shared::new();
        let stream = b"INFO {}\r\nPONG\r\nMSG c.1.call.k1 1 13\r\n{\"t\":1,\"a\":2}\r\nPING\r\nMSG c.1.call.k2 1 13\r\n{\"t\":2,\"a\":2}\r\n";
        let mut ready = false;
        let mut pending = BytesMut::new();
        let mut pongs = 0;
        let mut batch = Batch::new();
        for chunk in stream.chunks(5) {
            pending.extend_from_slice(chunk);
            if nats_lines(&mut pending, &shared, 0, &mut ready, &mut batch).is_some() {
                pongs += 1;
            }
        }
        shared.add_batch(0, &mut batch);
        assert!(ready);
        assert_eq!(pongs, 1);
        assert_eq!(shared.delivered.load(Ordering::Relaxed), 2);
    }
}
