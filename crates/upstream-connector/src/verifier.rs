//! Checks access keys against VoIPBIN: `GET /v1.0/customer` with the key answers the
//! customer it belongs to (`{"id":"<uuid>",…}`), or 401/403 for a key VoIPBIN does not know.
//!
//! Requests go through one pooled keep-alive client (hyper-util's, with rustls for
//! `https`): a burst of checks reuses a few connections instead of opening one each.

use std::time::Duration;

use bytes::Bytes;
use fanout_auth::accesskey::{Unavailable, Verifier, VerifyFuture};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::COOKIE;
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use uuid::Uuid;

use crate::connect;

/// The path asked.
pub const CUSTOMER_PATH: &str = "/v1.0/customer";

/// Idle connections kept per host; lookups beyond them open more (the cache bounds how many
/// run at once).
const IDLE_PER_HOST: usize = 16;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// An access-key verifier that asks VoIPBIN over HTTP(S).
#[derive(Clone)]
pub struct HttpVerifier {
    url: Uri,
    timeout: Duration,
    client: Client<Https, Empty<Bytes>>,
}

impl std::fmt::Debug for HttpVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpVerifier")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpVerifier {
    /// A verifier asking the host of the upstream WebSocket URL (`wss://h/…` → `https://h`),
    /// with the upstream's TLS settings `tls`.
    ///
    /// # Errors
    /// When the URL has no host or an unknown scheme.
    pub fn from_ws_url(
        url: &Uri,
        timeout: Duration,
        tls: &rustls::ClientConfig,
    ) -> Result<Self, connect::ConnectError> {
        let scheme = match url.scheme_str() {
            Some("wss" | "https") => "https",
            Some("ws" | "http") => "http",
            other => {
                return Err(connect::ConnectError::InvalidUrl(format!(
                    "scheme {other:?}"
                )));
            }
        };
        let authority = url
            .authority()
            .ok_or_else(|| connect::ConnectError::InvalidUrl("no host".into()))?;
        let url = format!("{scheme}://{authority}{CUSTOMER_PATH}")
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| {
                connect::ConnectError::InvalidUrl(e.to_string())
            })?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(IDLE_PER_HOST)
            .build(https);
        Ok(HttpVerifier {
            url,
            timeout,
            client,
        })
    }

    /// One `GET /v1.0/customer` with `key`: its status and up to 64 KiB of body.
    async fn ask(&self, key: &str) -> Result<(StatusCode, Bytes), String> {
        let request = Request::get(self.url.clone())
            .header(COOKIE, format!("accesskey={key}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| "timed out".to_owned())?
    }
}

impl Verifier for HttpVerifier {
    fn customer_of<'a>(&'a self, key: &'a str) -> VerifyFuture<'a> {
        Box::pin(async move {
            let (status, body) = self.ask(key).await.map_err(|error| {
                tracing::warn!(%error, "Access-key check failed");
                Unavailable
            })?;
            match status {
                StatusCode::OK => {
                    #[derive(serde::Deserialize)]
                    struct Customer {
                        id: Uuid,
                    }
                    let customer: Customer =
                        serde_json::from_slice(&body).map_err(|_| Unavailable)?;
                    Ok(Some(customer.id).filter(|id| !id.is_nil()))
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
                    Ok(None)
                }
                _ => Err(Unavailable),
            }
        })
    }
}
