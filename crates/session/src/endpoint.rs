//! The HTTP side of `/v1.0/ws` (and its alias `/v1.0/service_agents/ws`): limits, the
//! credential, the JSON error envelopes of protocol.md §1.1, the upgrade, and a session task
//! per accepted connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use fanout_auth::Authenticator;
use fanout_auth::credential::{self, Credential};
use fanout_protocol::rest::{self, HttpError};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

use crate::config::SessionConfig;
use crate::session::{self, Directory, SessionHandle, SessionParams};

/// The paths that upgrade to a session.
pub const WS_PATHS: &[&str] = &["/v1.0/ws", "/v1.0/service_agents/ws"];

/// Limits on accepting sessions.
#[derive(Debug, Clone, Copy)]
pub struct AcceptLimits {
    /// Open sessions at most; more get 429.
    pub max_sessions: usize,
    /// Handshakes per second on average; more get 429.
    pub handshakes_per_second: u32,
    /// Handshakes in a burst.
    pub handshake_burst: u32,
}

impl Default for AcceptLimits {
    fn default() -> Self {
        AcceptLimits {
            max_sessions: 100_000,
            handshakes_per_second: 50_000,
            handshake_burst: 50_000,
        }
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Accepts WebSocket sessions.
pub struct Endpoint {
    auth: Authenticator,
    config: Arc<SessionConfig>,
    limits: AcceptLimits,
    directory: Arc<dyn Directory>,
    tracker: TaskTracker,
    /// Open sessions, to close them on shutdown (beside the hot path: touched at open and
    /// close only).
    live: Mutex<HashMap<u64, Arc<SessionHandle>>>,
    draining: AtomicBool,
    open: AtomicUsize,
    next_id: AtomicU64,
    handshakes: Mutex<Bucket>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

type Answer = Response<Full<Bytes>>;

fn answer(error: HttpError, request_id: &str) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(error.body(request_id))));
    *response.status_mut() =
        StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if error.code == 429 || error.code == 503 {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// The `Sec-WebSocket-Accept` value for a version-13 upgrade request (RFC 6455 §4.2.2), or
/// `None` when the key or version is missing or wrong. Computed here rather than through
/// fastwebsockets' upgrade, which builds (and drops) an 8 KiB reader per handshake.
fn accept_key<B>(req: &Request<B>) -> Option<HeaderValue> {
    use base64::Engine;
    use sha1::Digest;
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    if req.headers().get(header::SEC_WEBSOCKET_VERSION)?.as_bytes() != b"13" {
        return None;
    }
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY)?.as_bytes();
    let mut sha1 = sha1::Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    let accept = base64::engine::general_purpose::STANDARD.encode(sha1.finalize());
    HeaderValue::from_str(&accept).ok()
}

/// The credential of a request, from the sources VoIPBIN reads.
pub fn request_credential<B>(req: &Request<B>) -> Option<Credential> {
    let cookies: Vec<&str> = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    credential::find(&cookies, req.uri().query(), authorization)
}

impl Endpoint {
    /// An endpoint; [`Endpoint::shut_down`] closes its sessions with 1001.
    pub fn new(
        auth: Authenticator,
        config: SessionConfig,
        limits: AcceptLimits,
        directory: Arc<dyn Directory>,
    ) -> Self {
        Endpoint {
            auth,
            config: Arc::new(config),
            limits,
            directory,
            tracker: TaskTracker::new(),
            live: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            handshakes: Mutex::new(Bucket {
                tokens: f64::from(limits.handshake_burst.max(1)),
                last: Instant::now(),
            }),
        }
    }

    /// Whether `path` is one this endpoint serves.
    pub fn serves(path: &str) -> bool {
        WS_PATHS.contains(&path)
    }

    /// Refuses new sessions from now on (503).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether it refuses new sessions.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Refuses new sessions and closes every open one with 1001; each writes what it has
    /// queued first.
    pub fn shut_down(&self) {
        self.drain();
        let live: Vec<Arc<SessionHandle>> = self.lock_live().values().cloned().collect();
        for handle in live {
            handle.shut_down();
        }
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<SessionHandle>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The tracker of session tasks, to wait for them on shutdown.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    fn take_handshake(&self) -> bool {
        let mut bucket = self.handshakes.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let rate = f64::from(self.limits.handshakes_per_second.max(1));
        let burst = f64::from(self.limits.handshake_burst.max(1));
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.last = now;
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refuse(&self, error: HttpError, reason: &'static str, request_id: &str) -> Answer {
        metrics::counter!("fanout_handshakes_refused_total", "reason" => reason).increment(1);
        answer(error, request_id)
    }

    /// Answers one request to a WebSocket path: an HTTP error, or 101 with a session started.
    pub async fn handle(self: &Arc<Self>, mut req: Request<Incoming>) -> Answer {
        let request_id = rest::request_id(
            req.headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok()),
            rand::random(),
        );
        if req.method() != Method::GET {
            return self.refuse(HttpError::NOT_WEBSOCKET, "not_websocket", &request_id);
        }
        if self.is_draining() {
            return self.refuse(HttpError::UNAVAILABLE, "draining", &request_id);
        }
        if self.open.load(Ordering::Relaxed) >= self.limits.max_sessions {
            return self.refuse(HttpError::RESOURCE_EXHAUSTED, "max_sessions", &request_id);
        }
        if !self.take_handshake() {
            return self.refuse(HttpError::RESOURCE_EXHAUSTED, "handshake_rate", &request_id);
        }
        let credential = request_credential(&req);
        let identity = match self
            .auth
            .authenticate(credential.as_ref(), SystemTime::now(), Instant::now())
            .await
        {
            Ok(identity) => identity,
            Err(error) => return self.refuse(error.http(), error.label(), &request_id),
        };
        if !fastwebsockets::upgrade::is_upgrade_request(&req) {
            return self.refuse(HttpError::NOT_WEBSOCKET, "not_websocket", &request_id);
        }
        let Some(accept) = accept_key(&req) else {
            return self.refuse(HttpError::NOT_WEBSOCKET, "not_websocket", &request_id);
        };
        let upgrade = hyper::upgrade::on(&mut req);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let endpoint = self.clone();
        self.open.fetch_add(1, Ordering::Relaxed);
        self.tracker.spawn(async move {
            endpoint.serve(id, identity, upgrade).await;
            endpoint.open.fetch_sub(1, Ordering::Relaxed);
        });
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        response
    }

    async fn serve(
        &self,
        id: u64,
        identity: fanout_auth::Identity,
        upgrade: hyper::upgrade::OnUpgrade,
    ) {
        let upgraded = match tokio::time::timeout(Duration::from_secs(10), upgrade).await {
            Ok(Ok(upgraded)) => upgraded,
            _ => {
                metrics::counter!("fanout_handshakes_refused_total", "reason" => "upgrade_failed")
                    .increment(1);
                return;
            }
        };
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
            tracing::error!(session_id = id, "Upgraded connection is not a TCP stream");
            return;
        };
        let stream = parts.io.into_inner();
        // `read_buf` is a view into hyper's whole read buffer (8 KiB or more): copy what the
        // client sent early and let the buffer go, or every session would keep one.
        let pending = Bytes::copy_from_slice(&parts.read_buf);
        drop(parts.read_buf);
        let _ = stream.set_nodelay(true);
        if self.config.unsent_bytes > 0 {
            // Bounds what a frozen browser holds in our kernel on top of its bounded queue.
            let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(self.config.unsent_bytes);
        }
        let customer_id = identity.customer_id;
        let kind = identity.kind_label();
        let agent_id = identity.agent_id();
        let handle = Arc::new(SessionHandle::new(id, customer_id, &self.config));
        metrics::gauge!("fanout_sessions").increment(1.0);
        metrics::counter!("fanout_sessions_opened_total").increment(1);
        tracing::info!(session_id = id, %customer_id, kind, agent_id = ?agent_id, "Session opened");
        let params = SessionParams {
            identity,
            config: self.config.clone(),
            directory: self.directory.clone(),
        };
        self.lock_live().insert(id, handle.clone());
        if self.is_draining() {
            // Shutdown began while this one was upgrading.
            handle.shut_down();
        }
        let reason = session::run(params, handle, stream, pending).await;
        self.lock_live().remove(&id);
        metrics::gauge!("fanout_sessions").decrement(1.0);
        metrics::counter!("fanout_sessions_closed_total", "reason" => reason.label()).increment(1);
        tracing::info!(session_id = id, %customer_id, reason = reason.label(), code = reason.code(), "Session closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_rfc_6455() {
        // The example of RFC 6455 §1.3.
        let req = Request::get("/v1.0/ws")
            .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .body(())
            .expect("request");
        assert_eq!(
            accept_key(&req).expect("accepted"),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let old = Request::get("/")
            .header(header::SEC_WEBSOCKET_KEY, "x")
            .header(header::SEC_WEBSOCKET_VERSION, "8")
            .body(())
            .expect("request");
        assert!(accept_key(&old).is_none());
    }
}
