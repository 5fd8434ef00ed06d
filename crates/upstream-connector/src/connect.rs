//! Opening connections to VoIPBIN: TCP, TLS (rustls with the Mozilla roots) for `wss://` and
//! `https://`, then the WebSocket handshake or a plain HTTP request.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::WebSocket;
use http_body_util::Empty;
use hyper::header::{AUTHORIZATION, CONNECTION, COOKIE, HOST, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::Credential;

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL has no host, or a scheme other than ws, wss, http or https.
    #[error("invalid url: {0}")]
    InvalidUrl(String),
    /// No credential is configured for the customer.
    #[error("no upstream credential for this customer")]
    NoCredential,
    /// TCP or TLS failed.
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The deadline passed.
    #[error("timed out")]
    Timeout,
    /// The server refused the WebSocket handshake (status), or it broke off.
    #[error("websocket handshake failed: {0}")]
    Handshake(String),
    /// The HTTP exchange failed.
    #[error("http request failed: {0}")]
    Http(String),
}

impl ConnectError {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            ConnectError::InvalidUrl(_) => "invalid_url",
            ConnectError::NoCredential => "no_credential",
            ConnectError::Io(_) => "io",
            ConnectError::Timeout => "timeout",
            ConnectError::Handshake(_) => "handshake",
            ConnectError::Http(_) => "http",
        }
    }
}

/// Where to connect, read from a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Whether TLS is used.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query of the request.
    pub path_and_query: String,
}

impl Target {
    /// Reads a `ws`, `wss`, `http` or `https` URL.
    ///
    /// # Errors
    /// [`ConnectError::InvalidUrl`] for another scheme or no host.
    pub fn from_uri(uri: &Uri) -> Result<Self, ConnectError> {
        let tls = match uri.scheme_str() {
            Some("wss" | "https") => true,
            Some("ws" | "http") => false,
            other => return Err(ConnectError::InvalidUrl(format!("scheme {other:?}"))),
        };
        let host = uri
            .host()
            .ok_or_else(|| ConnectError::InvalidUrl("no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path_and_query = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        Ok(Target {
            tls,
            host,
            port,
            path_and_query,
        })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => host,
            _ => format!("{host}:{}", self.port),
        }
    }
}

/// The TLS client settings of every connection to VoIPBIN: the ring provider and the
/// webpki roots.
pub(crate) fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| b.with_root_certificates(roots).with_no_client_auth())
                .unwrap_or_else(|_| {
                    // The ring provider supports the default versions; this cannot be reached.
                    rustls::ClientConfig::builder_with_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .expect("bug: ring supports TLS 1.3")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
                });
            Arc::new(config)
        })
        .clone()
}

struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

/// Opens a TCP stream to `target`, with TLS when it asks for it.
async fn open_stream(target: &Target) -> Result<Box<dyn Io>, ConnectError> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
    let _ = tcp.set_nodelay(true);
    if !target.tls {
        return Ok(Box::new(tcp));
    }
    let name = rustls::pki_types::ServerName::try_from(target.host.clone())
        .map_err(|e| ConnectError::InvalidUrl(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(tls_config())
        .connect(name, tcp)
        .await?;
    Ok(Box::new(tls))
}

/// A byte stream that can be handed to hyper.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

fn with_credential(
    mut builder: hyper::http::request::Builder,
    credential: &Credential,
) -> hyper::http::request::Builder {
    match credential {
        Credential::Token(token) => {
            builder = builder.header(AUTHORIZATION, format!("Bearer {token}"))
        }
        Credential::AccessKey(key) => builder = builder.header(COOKIE, format!("accesskey={key}")),
    }
    builder
}

/// Opens a WebSocket to `uri` with `credential`, within `timeout`.
///
/// # Errors
/// [`ConnectError`] when the URL is unusable, the connection or TLS fails, the server
/// refuses the handshake, or the deadline passes.
pub async fn websocket(
    uri: &Uri,
    credential: &Credential,
    timeout: Duration,
) -> Result<WebSocket<TokioIo<Upgraded>>, ConnectError> {
    let target = Target::from_uri(uri)?;
    let open = async {
        let stream = open_stream(&target).await?;
        let builder = Request::get(target.path_and_query.as_str())
            .header(HOST, target.host_header())
            .header(UPGRADE, "websocket")
            .header(CONNECTION, "upgrade")
            .header(
                "Sec-WebSocket-Key",
                fastwebsockets::handshake::generate_key(),
            )
            .header("Sec-WebSocket-Version", "13");
        let req = with_credential(builder, credential)
            .body(Empty::<Bytes>::new())
            .map_err(|e| ConnectError::Handshake(e.to_string()))?;
        let (ws, _) = fastwebsockets::handshake::client(&SpawnExecutor, req, stream)
            .await
            .map_err(|e| ConnectError::Handshake(e.to_string()))?;
        Ok(ws)
    };
    tokio::time::timeout(timeout, open)
        .await
        .map_err(|_| ConnectError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::from_uri(&"wss://api.voipbin.net/v1.0/ws".parse().expect("uri"))
            .expect("valid");
        assert_eq!(
            t,
            Target {
                tls: true,
                host: "api.voipbin.net".into(),
                port: 443,
                path_and_query: "/v1.0/ws".into()
            }
        );
        assert_eq!(t.host_header(), "api.voipbin.net");
        let t = Target::from_uri(&"ws://127.0.0.1:9100/v1.0/ws?x=1".parse().expect("uri"))
            .expect("valid");
        assert_eq!(
            (t.tls, t.port, t.path_and_query.as_str()),
            (false, 9100, "/v1.0/ws?x=1")
        );
        assert_eq!(t.host_header(), "127.0.0.1:9100");
        let t = Target::from_uri(&"ws://[::1]:9100/".parse().expect("uri")).expect("valid");
        assert_eq!(
            (t.host.as_str(), t.host_header()),
            ("::1", "[::1]:9100".to_owned())
        );
        assert!(Target::from_uri(&"ftp://x/".parse().expect("uri")).is_err());
        assert!(Target::from_uri(&"/relative".parse().expect("uri")).is_err());
    }
}
