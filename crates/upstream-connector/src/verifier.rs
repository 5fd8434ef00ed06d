//! Checks access keys against VoIPBIN: `GET /v1.0/customer` with the key answers the
//! customer it belongs to (`{"id":"<uuid>",…}`), or 401/403 for a key VoIPBIN does not know.

use std::time::Duration;

use fanout_auth::accesskey::{Unavailable, Verifier, VerifyFuture};
use hyper::{StatusCode, Uri};
use uuid::Uuid;

use crate::config::Credential;
use crate::connect;

/// The path asked.
pub const CUSTOMER_PATH: &str = "/v1.0/customer";

/// An access-key verifier that asks VoIPBIN over HTTP(S).
#[derive(Debug, Clone)]
pub struct HttpVerifier {
    base: Uri,
    timeout: Duration,
}

impl HttpVerifier {
    /// A verifier asking the host of the upstream WebSocket URL (`wss://h/…` → `https://h`).
    ///
    /// # Errors
    /// When the URL has no host or an unknown scheme.
    pub fn from_ws_url(url: &Uri, timeout: Duration) -> Result<Self, connect::ConnectError> {
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
        let base = format!("{scheme}://{authority}/").parse().map_err(
            |e: hyper::http::uri::InvalidUri| connect::ConnectError::InvalidUrl(e.to_string()),
        )?;
        Ok(HttpVerifier { base, timeout })
    }
}

impl Verifier for HttpVerifier {
    fn customer_of<'a>(&'a self, key: &'a str) -> VerifyFuture<'a> {
        Box::pin(async move {
            let credential = Credential::AccessKey(key.to_owned());
            let (status, body) = connect::get(&self.base, CUSTOMER_PATH, &credential, self.timeout)
                .await
                .map_err(|error| {
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
