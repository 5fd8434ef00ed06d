//! The listeners: WebSocket (`/v1.0/ws` and its alias) and admin (`/healthz`, `/readyz`,
//! `/metrics`, open; `/customers`, behind the admin token).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fanout_session::Endpoint;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use fanout_core::Registry;

type Answer = Response<Full<Bytes>>;

pub(crate) fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Answer {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Serves one admin connection over HTTP/1.1 until it closes or `stop`.
async fn serve_connection<F, Fut>(
    stream: TcpStream,
    stop: CancellationToken,
    header_timeout: Duration,
    handle: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Answer> + Send + 'static,
{
    let service = service_fn(move |req| {
        let handle = handle.clone();
        async move { Ok::<_, Infallible>(handle(req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}

/// Accepts admin connections until `stop`, serving each over HTTP/1.1.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    stop: CancellationToken,
    header_timeout: Duration,
    handle: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Answer> + Send + 'static,
{
    let mut failures: u32 = 0;
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                failures = 0;
                tokio::spawn(serve_connection(
                    stream,
                    stop.clone(),
                    header_timeout,
                    handle.clone(),
                ));
            }
            Err(error) => {
                // Typically out of file descriptors: pause instead of spinning.
                metrics::counter!("fanout_accept_errors_total").increment(1);
                tracing::warn!(%error, "Accept failed");
                tokio::time::sleep(accept_backoff(failures)).await;
                failures = failures.saturating_add(1);
            }
        }
    }
}

/// Binds `addr` with a listen backlog of `backlog` (tokio's default, 1024, overflows in a
/// reconnect storm and costs the dropped clients a one-second SYN retry).
///
/// # Errors
/// When the address cannot be bound.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// Accepts WebSocket clients on a thread of its own, so that accepting never waits behind
/// busy session tasks (in a reconnect storm that wait overflows the backlog), and hands each
/// connection to the endpoint on the runtime. Returns when `stop` is cancelled and the
/// listener is shut down (see [`stop_accepting`]).
pub fn spawn_ws_acceptor(
    listener: std::net::TcpListener,
    runtime: tokio::runtime::Handle,
    endpoint: Arc<Endpoint>,
    stop: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("fanout-accept".into())
        .spawn(move || {
            let mut failures: u32 = 0;
            loop {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        failures = 0;
                        if stream.set_nonblocking(true).is_err() {
                            continue;
                        }
                        let _guard = runtime.enter();
                        if let Ok(stream) = TcpStream::from_std(stream)
                            && let Err(turned) = endpoint.spawn_connection(stream, peer)
                        {
                            tracing::debug!(%peer, reason = turned.label(), "Connection closed at accept");
                        }
                    }
                    Err(_) if stop.is_cancelled() => return,
                    Err(error) => {
                        // Typically out of descriptors (EMFILE): back off, doubling up to a
                        // second, rather than spin on a backlog that stays full.
                        metrics::counter!("fanout_accept_errors_total").increment(1);
                        let pause = accept_backoff(failures);
                        failures = failures.saturating_add(1);
                        tracing::warn!(%error, pause_ms = pause.as_millis() as u64, "Accept failed");
                        std::thread::sleep(pause);
                    }
                }
            }
        })
}

/// The pause after `failures` accept errors in a row: 5 ms, doubling, at most a second.
fn accept_backoff(failures: u32) -> Duration {
    Duration::from_millis(5)
        .saturating_mul(1u32 << failures.min(8))
        .min(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_to_a_second() {
        assert_eq!(accept_backoff(0), Duration::from_millis(5));
        assert_eq!(accept_backoff(3), Duration::from_millis(40));
        assert_eq!(accept_backoff(10), Duration::from_secs(1));
        assert_eq!(accept_backoff(u32::MAX), Duration::from_secs(1));
    }
}

/// Wakes the acceptor thread out of `accept` so it sees `stop` (shutting a listening socket
/// down makes a blocked `accept` fail at once).
pub fn stop_accepting(listener: &std::net::TcpListener) {
    let _ = socket2::SockRef::from(listener).shutdown(std::net::Shutdown::Both);
}

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    /// Whether the node takes new sessions.
    pub ready: Arc<AtomicBool>,
    /// The WebSocket endpoint.
    pub endpoint: Arc<Endpoint>,
    /// The customers.
    pub registry: Arc<Registry>,
    /// Not ready once the node has had customers but no working upstream for this long.
    pub unready_after: Duration,
    /// The bearer token `/customers` needs; without one it answers 403.
    pub token: Option<Arc<str>>,
}

/// Whether `req` carries `Authorization: Bearer <token>`. The digests are compared, in
/// constant time, so that neither the token's bytes nor its length show in the time taken.
fn authorized(token: &str, req: &Request<Incoming>) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let Some((scheme, given)) = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
    else {
        return false;
    };
    let given = Sha256::digest(given.trim().as_bytes());
    let expected = Sha256::digest(token.as_bytes());
    scheme.eq_ignore_ascii_case("bearer") && bool::from(given.as_slice().ct_eq(expected.as_slice()))
}

/// Every few seconds, how many frames wait in each open session's queue, into the
/// `fanout_session_queue_frames` histogram, until `stop`.
pub async fn sample_queues(endpoint: Arc<Endpoint>, stop: CancellationToken) {
    let histogram = metrics::histogram!("fanout_session_queue_frames");
    let mut ticks = tokio::time::interval(QUEUE_SAMPLE_INTERVAL);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        endpoint.queue_lengths(|frames| histogram.record(frames as f64));
    }
}

/// How often the sessions' queues are sampled.
const QUEUE_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

fn json_error(status: StatusCode, error: &str, message: &str) -> Answer {
    let body = serde_json::json!({"error": error, "message": message});
    text(status, "application/json", body.to_string())
}

/// Why the node is not ready, if it is not: `draining`, `no_upstream`.
pub fn unready_reasons(state: &AdminState) -> Vec<&'static str> {
    let mut reasons = Vec::new();
    if !state.ready.load(Ordering::SeqCst) || state.endpoint.is_draining() {
        reasons.push("draining");
    }
    if state.registry.without_upstream() >= state.unready_after {
        reasons.push("no_upstream");
    }
    reasons
}

/// Serves the admin listener until `stop`.
pub async fn serve_admin(listener: TcpListener, state: AdminState, stop: CancellationToken) {
    accept_loop(
        listener,
        stop,
        Duration::from_secs(10),
        move |req: Request<Incoming>| {
            let state = state.clone();
            async move { admin(&state, &req) }
        },
    )
    .await;
}

fn set_ready(reasons: &[&str]) {
    metrics::gauge!("fanout_ready").set(if reasons.is_empty() { 1.0 } else { 0.0 });
}

fn admin(state: &AdminState, req: &Request<Incoming>) -> Answer {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => {
            let reasons = unready_reasons(state);
            set_ready(&reasons);
            let status = if reasons.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = serde_json::json!({"ready": reasons.is_empty(), "reasons": reasons});
            text(status, "application/json", body.to_string())
        }
        "/metrics" => {
            set_ready(&unready_reasons(state));
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                crate::telemetry::render_metrics(),
            )
        }
        "/customers" if state.token.is_none() => json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "/customers lists every tenant: set admin.token (--admin-token) to use it",
        ),
        "/customers" if !state.token.as_deref().is_some_and(|t| authorized(t, req)) => {
            let mut answer = json_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "/customers needs Authorization: Bearer <admin.token>",
            );
            answer.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            answer
        }
        "/customers" => {
            let customers: Vec<serde_json::Value> = state
                .registry
                .customers()
                .into_iter()
                .map(|c| {
                    serde_json::json!({
                        "customer_id": c.customer_id,
                        "users": c.users,
                        "patterns": c.patterns,
                        "upstream": c.upstream,
                        "owner": c.owner,
                        "term": c.term,
                        "upstream_patterns": c.upstream_patterns,
                        "upstream_connections": c.upstream_connections,
                        "covered": c.covered,
                        "window_events": c.window_events,
                        "window_bytes": c.window_bytes,
                    })
                })
                .collect();
            let body = serde_json::json!({
                "customers": customers,
                "window_bytes": state.registry.window_bytes(),
            });
            text(StatusCode::OK, "application/json", body.to_string())
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}
