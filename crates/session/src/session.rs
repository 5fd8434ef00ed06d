//! A session: its shared handle (what the fan-out sees), the [`Directory`] it registers its
//! patterns with, and [`run`], which drives the session until it ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use fanout_auth::Identity;
use fanout_protocol::Pattern;
use fanout_protocol::cursor::Cursor;
use fanout_protocol::ws::{self, Decoder, OpCode, Role};
use tokio::io::{Interest, Ready};
use tokio::time::Instant;
use uuid::Uuid;

use crate::budget::Budget;
use crate::close::CloseReason;
use crate::config::SessionConfig;
use crate::conn::Conn;
use crate::hub::Subscriber;
use crate::queue::{Push, Queue, Taken};
use crate::requests::Requests;
use crate::writer::Outgoing;

/// A subscribe the directory cannot serve: its patterns would need more connections to
/// VoIPBIN than one customer may have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamLimit {
    /// The limit.
    pub max: usize,
    /// The patterns of the refused subscribe that name the customer whose upstream could
    /// not take them.
    pub patterns: Vec<Pattern>,
}

/// Places a session's patterns in the hubs that serve them and keeps the upstreams
/// subscribed to what the patterns need. Implemented by the gateway.
pub trait Directory: Send + Sync + 'static {
    /// A session of `session.customer_id()` opened.
    fn attach(&self, session: &Subscriber);
    /// The session subscribed to `patterns` (already permitted and not yet held): all of
    /// them, or none.
    ///
    /// # Errors
    /// [`UpstreamLimit`] when their customer's upstream cannot take them; none is held.
    fn subscribe(&self, session: &Subscriber, patterns: &[Pattern]) -> Result<(), UpstreamLimit>;
    /// The session unsubscribed from `pattern` (which it held).
    fn unsubscribe(&self, session: &Subscriber, pattern: &Pattern);
    /// The session ended while holding `patterns`.
    fn detach(&self, session: &Subscriber, patterns: &[Pattern]);
    /// The session subscribed to `patterns` (permitted, not yet held, all served by one
    /// customer's hub) resuming from `since`, while holding `held`, which it has had every
    /// event of since `held_since` (see [`crate::Hub::resume`]): answer with `resumed` and the
    /// replay before any live event of them (protocol.md §1.7); answers whether it was
    /// `recovered`. Without a stream to judge, it subscribes them and answers `false`.
    ///
    /// # Errors
    /// [`UpstreamLimit`] as for [`Directory::subscribe`]; nothing is answered then.
    fn resume(
        &self,
        session: &Subscriber,
        patterns: &[Pattern],
        held: &[Pattern],
        held_since: Option<Cursor>,
        since: Cursor,
    ) -> Result<bool, UpstreamLimit> {
        let _ = (held, held_since, since);
        self.subscribe(session, patterns)?;
        session
            .0
            .send_control(fanout_protocol::server::resumed_frame(false, None, 0));
        Ok(false)
    }
}

/// Why a session's queue was closed from outside the session.
const CLOSED_SLOW: u8 = 1;
const CLOSED_SHUTDOWN: u8 = 2;

/// The part of a session the fan-out holds: its identity and its queue.
#[derive(Debug)]
pub struct SessionHandle {
    id: u64,
    customer_id: Uuid,
    queue: Queue,
    /// Set when the queue is closed from outside: too slow, or shutdown.
    closed_by: AtomicU8,
}

impl SessionHandle {
    /// A handle with an empty queue bounded as `config` says.
    pub fn new(id: u64, customer_id: Uuid, config: &SessionConfig) -> Self {
        SessionHandle {
            id,
            customer_id,
            queue: Queue::new(config.queue_frames, config.queue_bytes),
            closed_by: AtomicU8::new(0),
        }
    }

    /// The session's id, unique in this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The customer the session belongs to.
    pub fn customer_id(&self) -> Uuid {
        self.customer_id
    }

    /// Offers an event frame; false if it was not queued. A full queue closes the session
    /// with 1013, dropping what it had queued.
    pub fn offer(&self, frame: Bytes) -> bool {
        match self.queue.push(frame) {
            Push::Queued => true,
            Push::Closed => false,
            Push::Full => {
                self.offer_failed();
                false
            }
        }
    }

    /// The queue had no room for an event: closes the session with 1013, dropping what it
    /// had queued.
    pub(crate) fn offer_failed(&self) {
        if self
            .closed_by
            .compare_exchange(0, CLOSED_SLOW, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            metrics::counter!("fanout_slow_consumers_total").increment(1);
            self.close(&CloseReason::SlowConsumer, true);
        }
    }

    /// Queues a control or error frame.
    pub(crate) fn send_control(&self, frame: Bytes) -> Push {
        self.queue.push_control(frame)
    }

    /// Starts closing with `reason`: the writer sends what is queued (unless `discard`), then
    /// the close frame.
    pub(crate) fn close(&self, reason: &CloseReason, discard: bool) -> bool {
        self.queue
            .close(ws::encode_close(reason.code(), reason.text()), discard)
    }

    pub(crate) fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Closes the session for shutdown (1001): it writes what is queued, then the close frame.
    pub fn shut_down(&self) {
        if self
            .closed_by
            .compare_exchange(0, CLOSED_SHUTDOWN, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.close(&CloseReason::Shutdown, false);
        }
    }

    /// Why the queue was closed from outside, if it was.
    fn closed_reason(&self) -> Option<CloseReason> {
        match self.closed_by.load(Ordering::Relaxed) {
            CLOSED_SLOW => Some(CloseReason::SlowConsumer),
            CLOSED_SHUTDOWN => Some(CloseReason::Shutdown),
            _ => None,
        }
    }
}

/// What a session needs besides its socket.
pub struct SessionParams {
    /// Who it is.
    pub identity: Identity,
    /// Its limits and timings.
    pub config: Arc<SessionConfig>,
    /// Where its patterns go.
    pub directory: Arc<dyn Directory>,
    /// Counts the bytes written to browsers (a batch at a time: up to 64 KiB a session late).
    pub written: metrics::Counter,
}

/// Bytes read per system call.
const READ_CHUNK: usize = 4096;

/// The bytes a session wrote, added to the node's counter a batch at a time (and the rest
/// when the session ends): an atomic shared by every session, bumped at each write, costs
/// the two workers a cache line going back and forth.
struct Tally<'a> {
    counter: &'a metrics::Counter,
    bytes: usize,
}

impl Tally<'_> {
    const BATCH: usize = 64 * 1024;

    fn add(&mut self, bytes: usize) {
        self.bytes += bytes;
        if self.bytes >= Self::BATCH {
            self.counter
                .increment(std::mem::take(&mut self.bytes) as u64);
        }
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.counter.increment(self.bytes as u64);
        }
    }
}

/// Converts a wall-clock deadline into the runtime's clock.
fn deadline(at: SystemTime) -> Instant {
    let left = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Instant::now() + left
}

/// Reads whatever the socket holds now into `buf`; `Ok(0)` means the peer closed. The read
/// goes through a stack buffer, so an idle session holds no read buffer at all.
fn read_available(stream: &mut Conn, buf: &mut BytesMut) -> std::io::Result<usize> {
    let mut chunk = [0u8; READ_CHUNK];
    let n = stream.try_read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Runs a session on an upgraded connection until it ends; `pending` holds bytes the client
/// sent right after the handshake. Returns why it ended.
///
/// One task does everything: it reads and decodes client frames, handles requests, pings and
/// the pong deadline, token expiry and shutdown, and writes what the fan-out queued with
/// non-blocking vectored writes. It waits on socket readiness, its queue and one timer, all
/// cancel-safe; shutdown reaches it through its queue like events do, so no lock shared by
/// all sessions is taken on its path.
///
/// # Cancel safety
/// Not meant to be cancelled: [`SessionHandle::shut_down`] closes it with 1001.
pub async fn run(
    params: SessionParams,
    handle: Arc<SessionHandle>,
    mut stream: Conn,
    pending: Bytes,
) -> CloseReason {
    let subscriber = Subscriber(handle.clone());
    params.directory.attach(&subscriber);
    let mut requests = Requests::new(&params, &handle);
    let reason = drive(&params, &handle, &mut requests, &mut stream, pending).await;
    params.directory.detach(&subscriber, requests.patterns());
    reason
}

/// What the session is waiting for besides its socket.
enum Wake {
    Timer,
    Socket(std::io::Result<Ready>),
    Queue,
}

async fn drive(
    params: &SessionParams,
    handle: &SessionHandle,
    requests: &mut Requests<'_>,
    stream: &mut Conn,
    pending: Bytes,
) -> CloseReason {
    let config = &params.config;
    let mut input = BytesMut::from(&pending[..]);
    drop(pending);
    let mut decoder = Decoder::new(Role::Server, config.max_message_bytes);
    let mut outgoing = Outgoing::default();
    let interval = config.ping_interval.max(Duration::from_millis(10));
    let mut last_seen = Instant::now();
    let mut next_ping = last_seen + interval;
    let mut budget = Budget::new(config, last_seen);
    let mut tally = Tally {
        counter: &params.written,
        bytes: 0,
    };
    let expiry = params.identity.expires_at.map(deadline);
    // Set once the close frame is queued: why, and until when it may take to write.
    let mut closing: Option<(CloseReason, Instant)> = None;
    let mut close_frame: Option<Bytes> = None;
    let close = |reason: CloseReason, closing: &mut Option<(CloseReason, Instant)>| {
        if closing.is_none() {
            handle.close(&reason, false);
            *closing = Some((reason, Instant::now() + config.close_timeout));
        }
    };
    let timer = tokio::time::sleep_until(next_ping);
    tokio::pin!(timer);
    loop {
        // Everything the client sent so far, within its frame budget.
        if closing.is_none() {
            loop {
                match decoder.decode(&mut input) {
                    Ok(Some(message)) => {
                        if let Some(reason) = requests.on_message(message) {
                            close(reason, &mut closing);
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(error) => {
                        close(CloseReason::from_frame_error(error), &mut closing);
                        break;
                    }
                }
            }
            let frames = decoder.take_frames();
            if frames > 0 && !budget.take(config, frames, 0, Instant::now()) {
                close(CloseReason::Flood, &mut closing);
            }
            if closing.is_some() {
                input.clear();
            }
        }
        if input.is_empty() && input.capacity() > 0 {
            // Give the buffer back while idle.
            input = BytesMut::new();
        }
        if closing.is_none()
            && let Some(reason) = handle.closed_reason()
        {
            // Closed from outside (too slow, or shutdown), maybe while frames taken earlier
            // are still being written: the deadline runs from now, whatever is pending.
            if reason == CloseReason::SlowConsumer {
                // Its queue was discarded; of what was taken, only a frame partly written
                // must still go out before the close frame can.
                outgoing.discard_unstarted();
            }
            closing = Some((reason, Instant::now() + config.close_timeout));
        }
        // Everything queued, as far as the socket takes it.
        loop {
            if outgoing.is_empty() && close_frame.is_none() {
                match handle.queue().take_into(outgoing.refill()) {
                    Taken::Frames => {}
                    Taken::Close(frame) => {
                        if closing.is_none() {
                            let reason = handle.closed_reason().unwrap_or(CloseReason::Internal);
                            closing = Some((reason, Instant::now() + config.close_timeout));
                        }
                        outgoing.push(frame.clone());
                        close_frame = Some(frame);
                    }
                    Taken::Nothing => break,
                }
            }
            let mut written = 0;
            let wrote = outgoing.write(|slices| {
                let n = stream.try_write_vectored(slices)?;
                written += n;
                Ok(n)
            });
            tally.add(written);
            match wrote {
                Ok(true) => {
                    if close_frame.is_some() {
                        // The close frame is out (for TLS, what rustls holds of it goes with
                        // the close_notify, by the close deadline): the session is over.
                        let (reason, until) =
                            closing.unwrap_or((CloseReason::Internal, Instant::now()));
                        let _ = tokio::time::timeout_at(until, stream.shutdown()).await;
                        return reason;
                    }
                }
                Ok(false) => break,
                Err(_) => return closing.map_or(CloseReason::ConnectionLost, |(reason, _)| reason),
            }
        }
        let due = match (&closing, expiry) {
            (Some((_, until)), _) => *until,
            (None, Some(expiry)) => next_ping.min(expiry),
            (None, None) => next_ping,
        };
        if timer.deadline() != due {
            timer.as_mut().reset(due);
        }
        let interest = if outgoing.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        let wake = tokio::select! {
            biased;
            () = &mut timer => Wake::Timer,
            ready = stream.ready(interest) => Wake::Socket(ready),
            () = handle.queue().changed(), if outgoing.is_empty() && close_frame.is_none() => Wake::Queue,
            // Blocked on its socket it does not wait for the queue, which may be closed from
            // outside meanwhile (overflow, shutdown): the close wakes it all the same.
            () = std::future::poll_fn(|cx| handle.queue().poll_closed(cx)), if closing.is_none() && !outgoing.is_empty() => Wake::Queue,
        };
        match wake {
            Wake::Queue => {}
            Wake::Timer => {
                let now = Instant::now();
                if let Some((reason, until)) = &closing {
                    if now >= *until {
                        // The close frame could not be written in time: drop the connection.
                        return reason.clone();
                    }
                } else if expiry.is_some_and(|at| now >= at) {
                    close(CloseReason::TokenExpired, &mut closing);
                } else if now >= next_ping {
                    if now.saturating_duration_since(last_seen) >= config.pong_timeout {
                        close(CloseReason::PongTimeout, &mut closing);
                    } else {
                        handle.send_control(ws::encode(OpCode::Ping, b""));
                        next_ping = now + interval;
                    }
                }
            }
            Wake::Socket(Err(_)) => {
                return closing.map_or(CloseReason::ConnectionLost, |(reason, _)| reason);
            }
            Wake::Socket(Ok(ready)) => {
                if ready.is_readable() || ready.is_read_closed() {
                    let lost = || {
                        closing
                            .clone()
                            .map_or(CloseReason::ConnectionLost, |(reason, _)| reason)
                    };
                    let read = match read_available(stream, &mut input) {
                        Ok(0) => return lost(),
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                        Err(_) => return lost(),
                    };
                    if read > 0 {
                        let now = Instant::now();
                        last_seen = now;
                        if !budget.take(config, 0, read, now) {
                            if closing.is_some() {
                                // Still flooding after being told to stop: hang up.
                                return lost();
                            }
                            close(CloseReason::Flood, &mut closing);
                        }
                    }
                    if closing.is_some() {
                        // Nothing more is read from a closing session but its close reply.
                        input.clear();
                    }
                    // Readiness and `try_read` spend none of the runtime's cooperative
                    // budget: a socket that always has data would otherwise keep this task
                    // running forever and starve every other session on the worker.
                    tokio::task::consume_budget().await;
                }
            }
        }
    }
}
