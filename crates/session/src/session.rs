//! A session: its shared handle (what the fan-out sees), the [`Directory`] it registers its
//! patterns with, and [`run`], which drives its reader and writer until it ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use fanout_auth::Identity;
use fanout_protocol::Pattern;
use fanout_protocol::ws;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::close::CloseReason;
use crate::config::SessionConfig;
use crate::hub::Subscriber;
use crate::queue::{Push, Queue};
use crate::{reader, writer};

/// Places a session's patterns in the hubs that serve them and keeps the upstreams
/// subscribed to what the patterns need. Implemented by the gateway.
pub trait Directory: Send + Sync + 'static {
    /// A session of `session.customer_id()` opened.
    fn attach(&self, session: &Subscriber);
    /// The session subscribed to `pattern` (already permitted and not yet held).
    fn subscribe(&self, session: &Subscriber, pattern: &Pattern);
    /// The session unsubscribed from `pattern` (which it held).
    fn unsubscribe(&self, session: &Subscriber, pattern: &Pattern);
    /// The session ended while holding `patterns`.
    fn detach(&self, session: &Subscriber, patterns: &[Pattern]);
}

/// The part of a session the fan-out holds: its identity and its queue.
#[derive(Debug)]
pub struct SessionHandle {
    id: u64,
    customer_id: Uuid,
    queue: Queue,
    slow: AtomicBool,
}

impl SessionHandle {
    /// A handle with an empty queue bounded as `config` says.
    pub fn new(id: u64, customer_id: Uuid, config: &SessionConfig) -> Self {
        SessionHandle {
            id,
            customer_id,
            queue: Queue::new(config.queue_frames, config.queue_bytes),
            slow: AtomicBool::new(false),
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
                if !self.slow.swap(true, Ordering::Relaxed) {
                    metrics::counter!("fanout_slow_consumers_total").increment(1);
                    self.close(&CloseReason::SlowConsumer, true);
                }
                false
            }
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

    pub(crate) fn was_slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
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
    /// Cancelled on shutdown: the session closes with 1001.
    pub cancel: CancellationToken,
}

/// Runs a session on an upgraded connection until it ends; `pending` holds bytes the client
/// sent right after the handshake. Returns why it ended.
///
/// # Cancel safety
/// Not meant to be cancelled: cancel `params.cancel` instead, and it closes with 1001.
pub async fn run(
    params: SessionParams,
    handle: Arc<SessionHandle>,
    stream: TcpStream,
    pending: Bytes,
) -> CloseReason {
    let subscriber = Subscriber(handle.clone());
    let (read, mut write) = stream.into_split();
    params.directory.attach(&subscriber);
    let close_timeout = params.config.close_timeout;
    let writer_handle = handle.clone();
    let mut writer =
        tokio::spawn(
            async move { writer::run(writer_handle.queue(), &mut write, close_timeout).await },
        );
    let mut state = reader::Reader::new(&params, &handle);
    let reason = tokio::select! {
        reason = state.run(read, pending) => reason,
        _ = &mut writer => {
            if handle.was_slow() { CloseReason::SlowConsumer } else { CloseReason::ConnectionLost }
        }
    };
    // The reader has queued its close frame (or the writer is done): let the writer finish
    // writing it, within the close timeout.
    handle.close(&reason, false);
    if !writer.is_finished()
        && tokio::time::timeout(
            close_timeout + std::time::Duration::from_millis(100),
            &mut writer,
        )
        .await
        .is_err()
    {
        writer.abort();
    }
    params.directory.detach(&subscriber, state.patterns());
    reason
}
