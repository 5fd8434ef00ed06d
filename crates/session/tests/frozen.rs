//! A frozen reader (a browser that stopped reading) against a real session over loopback,
//! with the runtime's clock paused: however the queue is closed from outside (overflow or
//! shutdown), and whatever the client still sends, the session ends within `close_timeout`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fanout_auth::{Identity, Kind};
use fanout_protocol::Pattern;
use fanout_protocol::ws::{OpCode, encode, encode_masked};
use fanout_session::session::{self, SessionParams};
use fanout_session::{CloseReason, Directory, SessionConfig, SessionHandle, Subscriber};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use uuid::Uuid;

/// A directory that places patterns nowhere: these sessions hold none.
struct Nowhere;

impl Directory for Nowhere {
    fn attach(&self, _: &Subscriber) {}
    fn subscribe(
        &self,
        _: &Subscriber,
        _: &[Pattern],
    ) -> Result<(), fanout_session::UpstreamLimit> {
        Ok(())
    }
    fn unsubscribe(&self, _: &Subscriber, _: &Pattern) {}
    fn detach(&self, _: &Subscriber, _: &[Pattern]) {}
}

fn config() -> SessionConfig {
    SessionConfig {
        queue_frames: 64,
        queue_bytes: 64 * 1024,
        unsent_bytes: 0,
        close_timeout: Duration::from_secs(5),
        ping_interval: Duration::from_secs(10),
        pong_timeout: Duration::from_secs(60),
        ..SessionConfig::default()
    }
}

/// A connected pair over loopback with small buffers, so the server's writes block soon
/// when the client does not read.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let client = socket
        .connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (server, _) = listener.accept().await.expect("accept");
    socket2::SockRef::from(&server)
        .set_send_buffer_size(4096)
        .expect("sndbuf");
    (client, server)
}

struct Running {
    handle: Arc<SessionHandle>,
    ended: tokio::task::JoinHandle<CloseReason>,
}

fn start(server: TcpStream) -> Running {
    let config = config();
    let handle = Arc::new(SessionHandle::new(1, Uuid::new_v4(), &config));
    let params = SessionParams {
        identity: Identity {
            customer_id: handle.customer_id(),
            kind: Kind::AccessKey,
            expires_at: None,
        },
        config: Arc::new(config),
        directory: Arc::new(Nowhere),
        written: metrics::Counter::noop(),
    };
    let ended = tokio::spawn(session::run(
        params,
        handle.clone(),
        fanout_session::conn::Conn::Plain(server),
        Bytes::new(),
    ));
    Running { handle, ended }
}

/// Offers 1000-byte events one by one, letting the session write between them, until the
/// queue overflows (`overflow`) or 60 were queued: either way the socket has stopped taking
/// them long before, so the writer holds frames it took but could not write.
async fn fill(handle: &SessionHandle, overflow: bool) {
    let event = encode(OpCode::Text, &[b'x'; 1000]);
    for offered in 0.. {
        if !overflow && offered == 60 {
            return;
        }
        if !handle.offer(event.clone()) {
            assert!(overflow, "the queue overflowed after {offered} events");
            assert!(offered > 64, "the socket took some before the queue filled");
            return;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Sends a masked ping every two seconds, never reading.
async fn keep_pinging(mut client: TcpStream) {
    loop {
        let ping = encode_masked(OpCode::Ping, b"", [1, 2, 3, 4]);
        if client.write_all(&ping).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn ended_within(running: Running, from: Instant, limit: Duration) -> CloseReason {
    let reason = tokio::time::timeout(Duration::from_secs(600), running.ended)
        .await
        .expect("the session ends")
        .expect("joins");
    let took = from.elapsed();
    assert!(took <= limit, "ended after {took:?} ({reason:?})");
    reason
}

#[tokio::test(start_paused = true)]
async fn a_silent_frozen_reader_that_overflows_ends_within_close_timeout() {
    let (_client, server) = pair().await;
    let running = start(server);
    fill(&running.handle, true).await;
    let overflowed = Instant::now();
    let reason = ended_within(running, overflowed, Duration::from_millis(5100)).await;
    assert_eq!(reason, CloseReason::SlowConsumer);
    assert_eq!(reason.label(), "too_slow");
}

#[tokio::test(start_paused = true)]
async fn a_pinging_frozen_reader_that_overflows_ends_within_close_timeout() {
    let (client, server) = pair().await;
    let running = start(server);
    let pinger = tokio::spawn(keep_pinging(client));
    fill(&running.handle, true).await;
    let overflowed = Instant::now();
    let reason = ended_within(running, overflowed, Duration::from_millis(5100)).await;
    assert_eq!(reason, CloseReason::SlowConsumer);
    pinger.abort();
}

#[tokio::test(start_paused = true)]
async fn shutdown_of_a_frozen_reader_ends_within_close_timeout() {
    let (client, server) = pair().await;
    let running = start(server);
    let pinger = tokio::spawn(keep_pinging(client));
    fill(&running.handle, false).await;
    running.handle.shut_down();
    let asked = Instant::now();
    let reason = ended_within(running, asked, Duration::from_millis(5100)).await;
    assert_eq!(reason, CloseReason::Shutdown);
    pinger.abort();
}

#[tokio::test(start_paused = true)]
async fn a_reader_that_catches_up_gets_the_1013_close_frame() {
    let (mut client, server) = pair().await;
    let running = start(server);
    fill(&running.handle, true).await;
    // It reads again: what was partly written completes, then the close frame.
    let mut seen = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        use tokio::io::AsyncReadExt;
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let mut decoder = fanout_protocol::ws::Decoder::new(fanout_protocol::ws::Role::Client, 1 << 20);
    let mut input = bytes::BytesMut::from(&seen[..]);
    let mut last = None;
    while let Some(message) = decoder.decode(&mut input).expect("a valid frame stream") {
        last = Some(message);
    }
    assert!(input.is_empty(), "no partial frame at the end");
    match last {
        Some(fanout_protocol::ws::Message::Close(code, _)) => assert_eq!(code, Some(1013)),
        other => panic!("expected a close frame last, got {other:?}"),
    }
    assert_eq!(
        running.ended.await.expect("joins"),
        CloseReason::SlowConsumer
    );
}
