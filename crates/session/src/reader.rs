//! A session's reader: client messages, keepalive and expiry.
//!
//! It waits for the socket to be readable and then reads what is there into a stack buffer,
//! so an idle session holds no read buffer; only a partial frame is kept between reads, and
//! that is bounded by the message limit. Every arm of its `select!` is cancel-safe.

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use fanout_auth::{Identity, permit};
use fanout_protocol::client::{self, Action, ErrorCode, Refusal};
use fanout_protocol::ws::{self, Decoder, Message, OpCode, Role};
use fanout_protocol::{Pattern, server};
use tokio::net::tcp::OwnedReadHalf;
use tokio::time::Instant;

use crate::close::CloseReason;
use crate::config::SessionConfig;
use crate::hub::Subscriber;
use crate::session::{Directory, SessionHandle, SessionParams};

/// Bytes read per system call.
const READ_CHUNK: usize = 4096;

/// A token bucket limiting client messages.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Bucket {
            tokens: f64::from(burst.max(1)),
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            last: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub(crate) struct Reader<'a> {
    identity: &'a Identity,
    config: &'a SessionConfig,
    directory: &'a dyn Directory,
    cancel: &'a tokio_util::sync::CancellationToken,
    handle: &'a std::sync::Arc<SessionHandle>,
    subscriber: Subscriber,
    patterns: Vec<Pattern>,
    refusals: u32,
    bucket: Bucket,
}

/// Converts a wall-clock deadline into the runtime's clock.
fn deadline(at: SystemTime) -> Instant {
    let left = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Instant::now() + left
}

/// Reads whatever the socket holds now into `buf`; `Ok(0)` means the peer closed.
fn read_available(read: &OwnedReadHalf, buf: &mut BytesMut) -> std::io::Result<usize> {
    let mut chunk = [0u8; READ_CHUNK];
    let n = read.try_read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

impl<'a> Reader<'a> {
    pub(crate) fn new(
        params: &'a SessionParams,
        handle: &'a std::sync::Arc<SessionHandle>,
    ) -> Self {
        Reader {
            identity: &params.identity,
            config: &params.config,
            directory: params.directory.as_ref(),
            cancel: &params.cancel,
            handle,
            subscriber: Subscriber(handle.clone()),
            patterns: Vec::new(),
            refusals: 0,
            bucket: Bucket::new(
                params.config.messages_per_second,
                params.config.message_burst,
                Instant::now(),
            ),
        }
    }

    /// The patterns the session holds.
    pub(crate) fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Reads until the session ends; the close frame for the returned reason is queued.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits on readiness, timers and the cancellation token.
    pub(crate) async fn run(&mut self, read: OwnedReadHalf, pending: Bytes) -> CloseReason {
        let reason = self.read_loop(read, pending).await;
        self.handle.close(&reason, false);
        reason
    }

    async fn read_loop(&mut self, read: OwnedReadHalf, pending: Bytes) -> CloseReason {
        let mut buf = BytesMut::from(&pending[..]);
        let mut decoder = Decoder::new(Role::Server, self.config.max_message_bytes);
        let interval = self.config.ping_interval.max(Duration::from_millis(10));
        let mut last_seen = Instant::now();
        let ping = tokio::time::sleep_until(last_seen + interval);
        tokio::pin!(ping);
        let expiry = self.identity.expires_at.map(deadline);
        let expires = tokio::time::sleep_until(expiry.unwrap_or_else(Instant::now));
        tokio::pin!(expires);
        loop {
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(message)) => {
                        if let Some(reason) = self.on_message(message) {
                            return reason;
                        }
                    }
                    Ok(None) => break,
                    Err(error) => return CloseReason::from_frame_error(error),
                }
            }
            if buf.is_empty() && buf.capacity() > 0 {
                // Give the buffer back while idle.
                buf = BytesMut::new();
            }
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return CloseReason::Shutdown,
                () = &mut expires, if expiry.is_some() => return CloseReason::TokenExpired,
                () = &mut ping => {
                    let now = Instant::now();
                    if now.saturating_duration_since(last_seen) >= self.config.pong_timeout {
                        return CloseReason::PongTimeout;
                    }
                    self.handle.send_control(ws::encode(OpCode::Ping, b""));
                    ping.as_mut().reset(now + interval);
                }
                ready = read.readable() => {
                    if ready.is_err() {
                        return CloseReason::ConnectionLost;
                    }
                    match read_available(&read, &mut buf) {
                        Ok(0) => return CloseReason::ConnectionLost,
                        Ok(_) => last_seen = Instant::now(),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return CloseReason::ConnectionLost,
                    }
                }
            }
        }
    }

    fn on_message(&mut self, message: Message) -> Option<CloseReason> {
        match message {
            Message::Text(text) => self.on_request(&text),
            Message::Binary(_) => Some(CloseReason::Binary),
            Message::Ping(payload) => {
                self.handle.send_control(ws::encode(OpCode::Pong, &payload));
                None
            }
            Message::Pong(_) => None,
            Message::Close(..) => Some(CloseReason::ClientClosed),
        }
    }

    fn refuse(&mut self, refusal: Refusal) -> Option<CloseReason> {
        metrics::counter!("fanout_requests_refused_total", "code" => refusal.code.as_str())
            .increment(1);
        self.handle.send_control(server::error_frame(&refusal));
        self.refusals += 1;
        (self.refusals > self.config.max_refusals).then_some(CloseReason::TooManyRefusals)
    }

    fn on_request(&mut self, text: &[u8]) -> Option<CloseReason> {
        if !self.bucket.take(Instant::now()) {
            return self.refuse(Refusal::new(
                ErrorCode::RateLimited,
                "too many messages; slow down",
            ));
        }
        let request = match client::parse_request(text) {
            Ok(request) => request,
            Err(refusal) => return self.refuse(refusal),
        };
        match request.action {
            Action::Subscribe => {
                let forbidden: Vec<String> = request
                    .topics
                    .iter()
                    .filter(|p| !permit(self.identity, p))
                    .map(|p| p.as_str().to_owned())
                    .collect();
                if !forbidden.is_empty() {
                    return self.refuse(Refusal::with_topics(
                        ErrorCode::ForbiddenTopic,
                        "not permitted to subscribe to these topics",
                        forbidden,
                    ));
                }
                let mut new: Vec<Pattern> = Vec::new();
                for pattern in request.topics {
                    if !self.patterns.contains(&pattern) && !new.contains(&pattern) {
                        new.push(pattern);
                    }
                }
                if self.patterns.len() + new.len() > self.config.max_topics {
                    return self.refuse(Refusal::new(
                        ErrorCode::TooManyTopics,
                        format!(
                            "a session may hold at most {} topics",
                            self.config.max_topics
                        ),
                    ));
                }
                for pattern in new {
                    self.directory.subscribe(&self.subscriber, &pattern);
                    self.patterns.push(pattern);
                }
            }
            Action::Unsubscribe => {
                for pattern in request.topics {
                    if let Some(i) = self.patterns.iter().position(|p| *p == pattern) {
                        let pattern = self.patterns.swap_remove(i);
                        self.directory.unsubscribe(&self.subscriber, &pattern);
                    }
                }
            }
        }
        None
    }
}
