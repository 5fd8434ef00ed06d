//! The listeners: WebSocket (`/v1.0/ws` and its alias) and admin (`/healthz`, `/readyz`,
//! `/metrics`, `/customers`).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fanout_protocol::rest::HttpError;
use fanout_session::Endpoint;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::registry::Registry;

type Answer = Response<Full<Bytes>>;

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Answer {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Accepts until `stop`, serving each connection over HTTP/1.1 with upgrades.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    stop: CancellationToken,
    header_timeout: Duration,
    handle: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Answer> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Typically out of file descriptors: pause instead of spinning.
                metrics::counter!("fanout_accept_errors_total").increment(1);
                tracing::warn!(%error, "Accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handle = handle.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(handle(req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                }
            }
        });
    }
}

/// Serves the WebSocket listener until `stop`.
pub async fn serve_ws(
    listener: TcpListener,
    endpoint: Arc<Endpoint>,
    stop: CancellationToken,
    header_timeout: Duration,
) {
    accept_loop(
        listener,
        stop,
        header_timeout,
        move |req: Request<Incoming>| {
            let endpoint = endpoint.clone();
            async move {
                if Endpoint::serves(req.uri().path()) {
                    endpoint.handle(req).await
                } else {
                    let error = HttpError::NOT_FOUND;
                    text(
                        StatusCode::NOT_FOUND,
                        "application/json",
                        error.body(&fanout_protocol::rest::request_id(None, rand::random())),
                    )
                }
            }
        },
    )
    .await;
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

fn admin(state: &AdminState, req: &Request<Incoming>) -> Answer {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => {
            if state.ready.load(Ordering::SeqCst) && !state.endpoint.is_draining() {
                text(StatusCode::OK, "text/plain", "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            crate::telemetry::render_metrics(),
        ),
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
                        "upstream": c.upstream.label(),
                        "upstream_patterns": c.upstream_patterns,
                    })
                })
                .collect();
            text(
                StatusCode::OK,
                "application/json",
                serde_json::json!({"customers": customers}).to_string(),
            )
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}
