//! The WebSocket listener's connections: the upgrade request (`/v1.0/ws` and its alias
//! `/v1.0/service_agents/ws`), limits, the credential, the JSON error envelopes of
//! protocol.md §1.1, the 101, and the session, all in one task per connection.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use fanout_auth::Authenticator;
use fanout_auth::credential;
use fanout_protocol::rest::{self, HttpError};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::config::SessionConfig;
use crate::conn::{Conn, TlsConn};
use crate::handshake::{self, ReadError};
use crate::origin::Origins;
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
    /// Deadline for a client's request head.
    pub header_timeout: Duration,
    /// Connections accepted and not yet upgraded, at most; past it the oldest of them that
    /// has sent nothing of its request for a second is dropped to make room (an honest
    /// client sends its request at once), or, if none has, the new one.
    pub max_pending: usize,
    /// Connections not yet upgraded from one source address, at most; past it new ones
    /// from that address are closed at accept.
    pub max_pending_per_source: usize,
    /// Connections (pending and sessions) the listener may hold: the process's descriptor
    /// limit less what is kept in reserve for the admin listener, upstreams and access-key
    /// lookups. From an eighth below it, new connections evict old idle pending ones; at it,
    /// a new connection is taken only if one was evicted for it (and never past a
    /// thirty-second beyond it).
    pub max_connections: usize,
    /// The listener already carries `TCP_NODELAY` and `TCP_NOTSENT_LOWAT` (see
    /// [`configure_listener`]), which accepted sockets inherit on Linux: two system calls less
    /// per connection.
    pub listener_configured: bool,
}

impl Default for AcceptLimits {
    fn default() -> Self {
        AcceptLimits {
            max_sessions: 100_000,
            handshakes_per_second: 50_000,
            handshake_burst: 50_000,
            header_timeout: Duration::from_secs(10),
            max_pending: 4096,
            max_pending_per_source: 256,
            max_connections: usize::MAX,
            listener_configured: false,
        }
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Why a connection was closed at accept, before anything was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turned {
    /// Its source address already has `max_pending_per_source` connections pending.
    SourceCap,
    /// `max_pending` connections are pending and none has waited long enough to be evicted.
    PendingCap,
    /// The node holds `max_connections` connections (sessions, pending ones, and evicted ones
    /// not yet closed).
    Descriptors,
    /// Over the handshake rate on a TLS listener (checked before the TLS handshake).
    HandshakeRate,
}

impl Turned {
    /// The label of the `reason` metric dimension.
    pub fn label(self) -> &'static str {
        match self {
            Turned::SourceCap => "source_cap",
            Turned::PendingCap => "pending_cap",
            Turned::Descriptors => "descriptors",
            Turned::HandshakeRate => "handshake_rate",
        }
    }
}

/// The connections that have not finished their handshake: how many per source address,
/// and each one's eviction signal in the order they came.
#[derive(Default)]
struct Pending {
    /// Connections counted at accept and not yet gone (evicted ones included, until their
    /// task drops them).
    total: usize,
    by_source: HashMap<IpAddr, usize>,
    /// Connections still waiting for their request head, oldest first: the ones eviction
    /// may pick (one being authenticated is not, so a slow credential check is never cut).
    reading: BTreeMap<u64, (Instant, Arc<Notify>)>,
    next: u64,
}

/// A pending connection that has sent nothing of its request for this long may be evicted
/// to make room; an honest client sends its head at once.
const EVICTABLE_AFTER: Duration = Duration::from_secs(1);

impl Pending {
    /// Tells the oldest connection still reading its head, if it has waited long enough, to
    /// go; answers whether one was told.
    fn evict_oldest(&mut self, now: Instant) -> bool {
        let old_enough = self
            .reading
            .first_key_value()
            .is_some_and(|(_, (since, _))| {
                now.saturating_duration_since(*since) >= EVICTABLE_AFTER
            });
        if !old_enough {
            return false;
        }
        if let Some((_, (_, evicted))) = self.reading.pop_first() {
            // Its guard gives back its counts when its task drops the connection.
            evicted.notify_one();
            metrics::counter!("fanout_connections_refused_total", "reason" => "pending_evicted")
                .increment(1);
        }
        true
    }
}

/// The address a per-source cap counts by: an IPv4 address, or an IPv6 /64 (one host's
/// share of a network; an attacker with a /64 has 2^64 addresses).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from_bits(
                v6.to_bits() & !u128::from(u64::MAX),
            )),
        },
    }
}

/// A pending connection's place in [`Pending`], given back on drop. Made by the
/// connection's own task (its allocations stay off the accept thread), after the accept
/// thread counted the connection.
struct PendingGuard<'a> {
    endpoint: &'a Endpoint,
    id: u64,
    source: IpAddr,
    evicted: Arc<Notify>,
}

impl<'a> PendingGuard<'a> {
    /// Registers a connection from `source` that the accept thread counted, as waiting for
    /// its request head.
    fn register(endpoint: &'a Endpoint, source: IpAddr) -> Self {
        let evicted = Arc::new(Notify::new());
        let mut pending = endpoint.lock_pending();
        let id = pending.next;
        pending.next += 1;
        pending
            .reading
            .insert(id, (Instant::now(), evicted.clone()));
        drop(pending);
        PendingGuard {
            endpoint,
            id,
            source,
            evicted,
        }
    }

    /// Its request head arrived: it can no longer be evicted.
    fn head_read(&self) {
        self.endpoint.lock_pending().reading.remove(&self.id);
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut pending = self.endpoint.lock_pending();
        pending.reading.remove(&self.id);
        if let Some(count) = pending.by_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                pending.by_source.remove(&self.source);
            }
        }
        pending.total -= 1;
        drop(pending);
        metrics::gauge!("fanout_pending_connections").decrement(1.0);
    }
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
    pending: Mutex<Pending>,
    /// TLS on the listener (`wss://`), when configured.
    tls: Option<TlsAcceptor>,
    /// The origins browsers may connect from.
    origins: Origins,
    /// Bytes written to browsers.
    written: metrics::Counter,
    /// Refused handshakes logged in the current second, and those left unlogged.
    refusal_log: Mutex<RefusalLog>,
}

/// Refused handshakes are logged at most [`REFUSALS_LOGGED_PER_SECOND`] a second; the
/// ones past it are counted and the count logged with the next line.
#[derive(Debug)]
struct RefusalLog {
    second: Instant,
    logged: u32,
    unlogged: u64,
}

/// Refused handshakes logged per second at most (each one is counted in the metrics).
pub const REFUSALS_LOGGED_PER_SECOND: u32 = 10;

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// `TCP_NODELAY`, and `TCP_NOTSENT_LOWAT` to bound what a frozen browser holds in our kernel
/// on top of its bounded queue.
fn set_socket_options(socket: &socket2::SockRef<'_>, config: &SessionConfig) {
    let _ = socket.set_tcp_nodelay(true);
    if config.unsent_bytes > 0 {
        let _ = socket.set_tcp_notsent_lowat(config.unsent_bytes);
    }
}

/// Sets the sessions' socket options on a listener, for accepted sockets to inherit (set
/// [`AcceptLimits::listener_configured`] then).
pub fn configure_listener(listener: &std::net::TcpListener, config: &SessionConfig) {
    set_socket_options(&socket2::SockRef::from(listener), config);
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
            pending: Mutex::new(Pending::default()),
            tls: None,
            origins: Origins::default(),
            written: metrics::counter!("fanout_bytes_written_total"),
            refusal_log: Mutex::new(RefusalLog {
                second: Instant::now(),
                logged: 0,
                unlogged: 0,
            }),
        }
    }

    /// Serves `wss://`: every connection does its TLS handshake with `config` first (its
    /// certificate resolver may change certificates at any time), within the header
    /// timeout.
    #[must_use]
    pub fn with_tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(TlsAcceptor::from(config));
        self
    }

    /// Refuses browsers of other origins with 403 (see [`Origins`]).
    #[must_use]
    pub fn with_origins(mut self, origins: Origins) -> Self {
        self.origins = origins;
        self
    }

    /// Logs a refused handshake or TLS failure, at most [`REFUSALS_LOGGED_PER_SECOND`] a
    /// second (with how many went unlogged before it). Never logs the credential.
    fn log_refusal(&self, peer: SocketAddr, reason: &str, status: u16) {
        let unlogged = {
            let mut log = self.refusal_log.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if now.saturating_duration_since(log.second) >= Duration::from_secs(1) {
                log.second = now;
                log.logged = 0;
            }
            if log.logged >= REFUSALS_LOGGED_PER_SECOND {
                log.unlogged += 1;
                return;
            }
            log.logged += 1;
            std::mem::take(&mut log.unlogged)
        };
        tracing::info!(%peer, reason, status, unlogged, "Handshake refused");
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

    /// Calls `f` with the frames waiting in each open session's queue.
    pub fn queue_lengths(&self, mut f: impl FnMut(usize)) {
        let live: Vec<Arc<SessionHandle>> = self.lock_live().values().cloned().collect();
        for handle in live {
            f(handle.queue().len());
        }
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The tracker of connection and session tasks, to wait for them on shutdown.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // The counts stay consistent even if a holder panicked.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn turn(turned: Turned) -> Turned {
        metrics::counter!("fanout_connections_refused_total", "reason" => turned.label())
            .increment(1);
        turned
    }

    /// Takes a just-accepted connection from `peer`, before anything is read from it:
    /// applies the descriptor and per-source caps (a refused connection is dropped, which
    /// closes it) and makes room under the pending cap by evicting the oldest pending one.
    /// The admitted connection is then served on the current runtime, tracked for shutdown.
    ///
    /// # Errors
    /// [`Turned`] says why the connection was closed.
    pub fn spawn_connection(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Result<(), Turned> {
        let source = source_key(peer.ip());
        let now = Instant::now();
        {
            let mut pending = self.lock_pending();
            if pending.by_source.get(&source).copied().unwrap_or(0)
                >= self.limits.max_pending_per_source.max(1)
            {
                drop(pending);
                return Err(Self::turn(Turned::SourceCap));
            }
            // Evicted connections hold their descriptor until their task drops it, so they
            // count until then (`total`). Eviction starts an eighth below the limit;
            // at the limit a connection is taken only if an old one goes for it, and never
            // past a thirty-second beyond it (the reserve absorbs that).
            let pending_now = pending.total;
            let held = self.open.load(Ordering::Relaxed) + pending_now;
            let limit = self.limits.max_connections;
            if held >= limit.saturating_add(limit / 32) {
                drop(pending);
                return Err(Self::turn(Turned::Descriptors));
            }
            let over_pending = pending_now >= self.limits.max_pending.max(1);
            if (over_pending || held >= limit - limit / 8) && !pending.evict_oldest(now) {
                let turned = if held >= limit {
                    Some(Turned::Descriptors)
                } else if over_pending {
                    Some(Turned::PendingCap)
                } else {
                    None
                };
                if let Some(turned) = turned {
                    drop(pending);
                    return Err(Self::turn(turned));
                }
            }
            *pending.by_source.entry(source).or_insert(0) += 1;
            pending.total += 1;
            metrics::gauge!("fanout_pending_connections").increment(1.0);
        }
        let endpoint = self.clone();
        self.tracker
            .spawn(async move { endpoint.serve_connection(stream, source, peer).await });
        Ok(())
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

    /// Serves one accepted connection: reads the upgrade request, answers it (an HTTP error
    /// and close, or 101), and runs the session until it ends.
    ///
    /// # Cancel safety
    /// Not meant to be cancelled; [`Endpoint::shut_down`] ends the session with 1001.
    async fn serve_connection(&self, stream: TcpStream, source: IpAddr, peer: SocketAddr) {
        // Boxed, and everything it read dropped with it: nothing of the handshake (the
        // request's strings, the token, the pending connection's place) stays allocated for
        // the session's lifetime, whose memory is this task's size.
        let Some((identity, stream, pending)) =
            Box::pin(self.handshake_or_eviction(stream, source, peer)).await
        else {
            return;
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        self.run_session(id, identity, stream, pending).await;
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// The handshake, unless the connection is evicted while it still waits for its request.
    async fn handshake_or_eviction(
        &self,
        stream: TcpStream,
        source: IpAddr,
        peer: SocketAddr,
    ) -> Option<(fanout_auth::Identity, Conn, Bytes)> {
        let guard = PendingGuard::register(self, source);
        tokio::select! {
            handshake = self.handshake(stream, &guard, peer) => handshake,
            () = guard.evicted.notified() => None,
        }
    }

    /// The TLS handshake, when the listener has TLS, by `deadline`; `None` when it failed
    /// (counted and logged).
    async fn tls_handshake(
        &self,
        tcp: TcpStream,
        deadline: tokio::time::Instant,
        peer: SocketAddr,
    ) -> Option<Conn> {
        let Some(acceptor) = &self.tls else {
            return Some(Conn::Plain(tcp));
        };
        // The TLS handshake is the costly part (a signature and a key exchange), so the
        // handshake rate is taken before it; over the rate the connection is closed unread.
        if !self.take_handshake() {
            Self::turn(Turned::HandshakeRate);
            return None;
        }
        let reason = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => {
                let (tcp, tls) = stream.into_inner();
                match TlsConn::new(tcp, tls) {
                    Ok(conn) => return Some(Conn::Tls(Box::new(conn))),
                    Err(_) => "protocol",
                }
            }
            Ok(Err(error)) => tls_failure(&error),
            Err(_) => "timeout",
        };
        metrics::counter!("fanout_tls_handshake_failures_total", "reason" => reason).increment(1);
        // A client gone before its hello (a load balancer's TCP check, a port scan) is
        // counted, not logged: it would crowd the log's budget out.
        if reason != "eof" {
            self.log_refusal(peer, reason, 0);
        }
        None
    }

    /// Reads and answers the upgrade request: the identity and the bytes that followed the
    /// request when the answer is 101, `None` when it was an error (already answered).
    async fn handshake(
        &self,
        tcp: TcpStream,
        guard: &PendingGuard<'_>,
        peer: SocketAddr,
    ) -> Option<(fanout_auth::Identity, Conn, Bytes)> {
        // The TLS handshake and the request head share the header timeout.
        let deadline = tokio::time::Instant::now() + self.limits.header_timeout;
        let mut stream = self.tls_handshake(tcp, deadline, peer).await?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let read = handshake::read_request(&mut stream, left).await;
        guard.head_read();
        let (request, pending) = match read {
            Ok(read) => read,
            Err(error) => {
                if matches!(error, ReadError::Malformed | ReadError::TooLarge) {
                    let id = rest::request_id(None, rand::random());
                    return self
                        .refuse(&mut stream, peer, HttpError::BAD_REQUEST, "malformed", &id)
                        .await;
                }
                return None;
            }
        };
        let request_id = rest::request_id(request.request_id.as_deref(), rand::random());
        if let Err((error, reason)) = self.admit(&request, self.tls.is_some()) {
            return self
                .refuse(&mut stream, peer, error, reason, &request_id)
                .await;
        }
        let cookies: Vec<&str> = request.cookies.iter().map(String::as_str).collect();
        let credential = credential::find(
            &cookies,
            request.query.as_deref(),
            request.authorization.as_deref(),
        );
        let identity = match self
            .auth
            .authenticate(credential.as_ref(), SystemTime::now(), Instant::now())
            .await
        {
            Ok(identity) => identity,
            Err(error) => {
                return self
                    .refuse(&mut stream, peer, error.http(), error.label(), &request_id)
                    .await;
            }
        };
        if let Err(problem) = request.check() {
            let (error, reason) = problem.answer();
            return self
                .refuse(&mut stream, peer, error, reason, &request_id)
                .await;
        }
        // An upgrade request carries its key (`is_upgrade`).
        let key = request.websocket_key.as_deref().unwrap_or_default();
        handshake::write_all(&mut stream, &handshake::switching_protocols(key))
            .await
            .ok()?;
        Some((identity, stream, Bytes::from(pending)))
    }

    /// The checks that need no credential, in the order the answers take precedence: the
    /// path, the method, draining, the limits. (The upgrade headers are checked after the
    /// credential, as VoIPBIN answers 401 before 400.)
    /// `rate_taken`: the handshake rate was taken already (before the TLS handshake).
    fn admit(
        &self,
        request: &handshake::UpgradeRequest,
        rate_taken: bool,
    ) -> Result<(), (HttpError, &'static str)> {
        if !Self::serves(&request.path) {
            return Err((HttpError::NOT_FOUND, "not_found"));
        }
        if !request.get {
            return Err((HttpError::NOT_WEBSOCKET, "not_websocket"));
        }
        if request.origin_repeated && !self.origins.allows_all()
            || !self.origins.allows(request.origin.as_deref())
        {
            return Err((HttpError::PERMISSION_DENIED, "origin"));
        }
        if self.is_draining() {
            return Err((HttpError::UNAVAILABLE, "draining"));
        }
        if self.open.load(Ordering::Relaxed) >= self.limits.max_sessions {
            return Err((HttpError::RESOURCE_EXHAUSTED, "max_sessions"));
        }
        if !rate_taken && !self.take_handshake() {
            return Err((HttpError::RESOURCE_EXHAUSTED, "handshake_rate"));
        }
        Ok(())
    }

    /// Answers with `error` and closes; always `None`, for `return self.refuse(…).await`.
    async fn refuse<T>(
        &self,
        stream: &mut Conn,
        peer: SocketAddr,
        error: HttpError,
        reason: &'static str,
        request_id: &str,
    ) -> Option<T> {
        metrics::counter!("fanout_handshakes_refused_total", "reason" => reason).increment(1);
        self.log_refusal(peer, reason, error.code);
        let answer = handshake::error_response(error, request_id);
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = handshake::write_all(stream, &answer).await;
            stream.shutdown().await;
        })
        .await;
        None
    }

    async fn run_session(
        &self,
        id: u64,
        identity: fanout_auth::Identity,
        stream: Conn,
        pending: Bytes,
    ) {
        if !self.limits.listener_configured {
            set_socket_options(&socket2::SockRef::from(stream.tcp()), &self.config);
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
            written: self.written.clone(),
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

/// The metric label of a failed TLS handshake: the client broke off (`eof`), refused our
/// certificate (`certificate_rejected`: its alert says so, as a browser that does not trust
/// the CA or finds the name wrong does), shares no version or cipher with us
/// (`incompatible`), or sent something that is not TLS (`protocol`, e.g. plain HTTP).
fn tls_failure(error: &std::io::Error) -> &'static str {
    use rustls::{AlertDescription as A, Error as E};
    match error.get_ref().and_then(|inner| inner.downcast_ref::<E>()) {
        Some(E::AlertReceived(
            A::BadCertificate
            | A::UnknownCA
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::CertificateRevoked
            | A::UnsupportedCertificate
            | A::AccessDenied,
        )) => "certificate_rejected",
        Some(E::PeerIncompatible(_) | E::NoApplicationProtocol) => "incompatible",
        Some(_) => "protocol",
        None => match error.kind() {
            std::io::ErrorKind::InvalidData => "protocol",
            _ => "eof",
        },
    }
}
