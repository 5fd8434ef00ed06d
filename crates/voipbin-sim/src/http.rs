//! The simulator's HTTP side: routing, the WebSocket upgrade and the control endpoints.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use fanout_auth::credential::{self, Credential};
use fanout_protocol::rest::{self, HttpError};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

use crate::hub::Simulator;

/// The largest control request body accepted.
const MAX_BODY: usize = 64 * 1024 * 1024;

type Answer = Response<Full<Bytes>>;

pub(crate) async fn serve(listener: TcpListener, sim: Arc<Simulator>) {
    loop {
        let accepted = tokio::select! {
            () = sim.cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors and the like: back off briefly, keep serving.
                tracing::warn!(%error, "Accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        sim.tcp_connections_total.fetch_add(1, Ordering::Relaxed);
        let sim = sim.clone();
        tokio::spawn(async move {
            let cancel = sim.cancel.clone();
            tokio::select! {
                () = cancel.cancelled() => {}
                () = serve_stream(stream, sim) => {}
            }
        });
    }
}

/// Serves one connection: TLS when it starts with a TLS handshake and the simulator has a
/// certificate, plain HTTP otherwise (the control endpoints stay reachable without TLS).
async fn serve_stream(stream: TcpStream, sim: Arc<Simulator>) {
    let Some(tls) = sim.config.tls.clone() else {
        return serve_io(TokioIo::new(stream), sim).await;
    };
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(Duration::from_secs(10), stream.peek(&mut first)).await;
    if !matches!(peeked, Ok(Ok(1))) || first[0] != TLS_HANDSHAKE {
        return serve_io(TokioIo::new(stream), sim).await;
    }
    let accepted = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsAcceptor::from(tls).accept(stream),
    )
    .await;
    match accepted {
        Ok(Ok(stream)) => serve_io(TokioIo::new(stream), sim).await,
        Ok(Err(error)) => tracing::info!(%error, "TLS handshake failed"),
        Err(_) => tracing::info!("TLS handshake timed out"),
    }
}

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;

async fn serve_io<I>(io: TokioIo<I>, sim: Arc<Simulator>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let sim = sim.clone();
        async move { Ok::<_, Infallible>(route(sim, req).await) }
    });
    let _ = http1::Builder::new()
        .serve_connection(io, service)
        .with_upgrades()
        .await;
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Answer {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error(req_id: &str, error: HttpError) -> Answer {
    let status = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(status, error.body(req_id))
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The credential of a request, from the sources VoIPBIN reads.
pub(crate) fn request_credential<B>(req: &Request<B>) -> Option<Credential> {
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

async fn route(sim: Arc<Simulator>, mut req: Request<Incoming>) -> Answer {
    let req_id = rest::request_id(
        req.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        rand::random(),
    );
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/v1.0/ws" | "/v1.0/service_agents/ws") => {
            upgrade(sim, &mut req, &req_id).await
        }
        (Method::GET, "/v1.0/customer") => customer(&sim, &req, &req_id).await,
        (Method::POST, "/_sim/events") => match read_body(req).await {
            Some(body) => match sim.publish_json(&body) {
                Ok(sent) => json(StatusCode::OK, format!("{{\"sent\":{sent}}}")),
                Err(e) => json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": e.to_string()}).to_string(),
                ),
            },
            None => error(&req_id, HttpError::BAD_REQUEST),
        },
        (Method::POST, "/_sim/raw") => {
            let Some(customer) = customer_param(&req) else {
                return error(&req_id, HttpError::BAD_REQUEST);
            };
            match read_body(req).await {
                Some(body) => {
                    let sent = sim.send_raw(customer, &body);
                    json(StatusCode::OK, format!("{{\"sent\":{sent}}}"))
                }
                None => error(&req_id, HttpError::BAD_REQUEST),
            }
        }
        (Method::POST, "/_sim/drop") => {
            let Some(customer) = customer_param(&req) else {
                return error(&req_id, HttpError::BAD_REQUEST);
            };
            match query_param(&req, "stall_ms").map(|ms| ms.parse::<u64>()) {
                None => {
                    let dropped = sim.drop_customer(customer);
                    json(StatusCode::OK, format!("{{\"dropped\":{dropped}}}"))
                }
                Some(Ok(ms)) => {
                    let stalled = sim.stall_customer(customer, Duration::from_millis(ms));
                    json(StatusCode::OK, format!("{{\"stalled\":{stalled}}}"))
                }
                Some(Err(_)) => error(&req_id, HttpError::BAD_REQUEST),
            }
        }
        (Method::GET, "/_sim/stats") => json(
            StatusCode::OK,
            serde_json::to_string(&sim.stats()).unwrap_or_default(),
        ),
        _ => error(&req_id, HttpError::NOT_FOUND),
    }
}

fn customer_param(req: &Request<Incoming>) -> Option<Uuid> {
    query_param(req, "customer_id").and_then(|c| Uuid::try_parse(&c).ok())
}

async fn read_body(req: Request<Incoming>) -> Option<Bytes> {
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .ok()
        .map(|c| c.to_bytes())
}

/// `GET /v1.0/customer`: the customer of the caller, which is how a third party learns which
/// customer an access key belongs to. Like the real server it needs admin or manager rights,
/// which access keys have.
async fn customer(sim: &Simulator, req: &Request<Incoming>, req_id: &str) -> Answer {
    sim.lookups.fetch_add(1, Ordering::Relaxed);
    let in_flight = sim.lookups_in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    sim.lookups_max_in_flight
        .fetch_max(in_flight, Ordering::Relaxed);
    if !sim.config.lookup_delay.is_zero() {
        tokio::time::sleep(sim.config.lookup_delay).await;
    }
    let answer = customer_answer(sim, req, req_id).await;
    sim.lookups_in_flight.fetch_sub(1, Ordering::Relaxed);
    answer
}

async fn customer_answer(sim: &Simulator, req: &Request<Incoming>, req_id: &str) -> Answer {
    let (now, monotonic) = Simulator::now();
    let credential = request_credential(req);
    match sim
        .auth
        .authenticate(credential.as_ref(), now, monotonic)
        .await
    {
        Ok(identity) => {
            let allowed = matches!(identity.kind, fanout_auth::Kind::AccessKey)
                || identity.has_permission(
                    fanout_auth::permission_bits::CUSTOMER_ADMIN
                        | fanout_auth::permission_bits::CUSTOMER_MANAGER
                        | fanout_auth::permission_bits::PROJECT_SUPER_ADMIN,
                );
            if !allowed {
                return error(req_id, HttpError::PERMISSION_DENIED);
            }
            json(
                StatusCode::OK,
                serde_json::json!({
                    "id": identity.customer_id,
                    "name": "simulated customer",
                    "detail": "",
                    "tm_create": "2026-01-01 00:00:00.000000",
                })
                .to_string(),
            )
        }
        Err(e) => error(req_id, e.http()),
    }
}

async fn upgrade(sim: Arc<Simulator>, req: &mut Request<Incoming>, req_id: &str) -> Answer {
    let (now, monotonic) = Simulator::now();
    let credential = request_credential(req);
    let identity = match sim
        .auth
        .authenticate(credential.as_ref(), now, monotonic)
        .await
    {
        Ok(identity) => identity,
        Err(e) => return error(req_id, e.http()),
    };
    if !fastwebsockets::upgrade::is_upgrade_request(req) {
        return error(req_id, HttpError::NOT_WEBSOCKET);
    }
    let (response, fut) = match fastwebsockets::upgrade::upgrade(req) {
        Ok(pair) => pair,
        Err(_) => return error(req_id, HttpError::NOT_WEBSOCKET),
    };
    tokio::spawn(async move {
        match fut.await {
            Ok(ws) => crate::conn::run(sim, identity, ws.into_inner()).await,
            Err(error) => tracing::debug!(%error, "Upgrade failed"),
        }
    });
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}
