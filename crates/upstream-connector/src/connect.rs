//! Opening connections to VoIPBIN: TCP, TLS (rustls: the Mozilla roots and any private CA
//! given, a client certificate if given) for `wss://` and `https://`, then the WebSocket
//! handshake or a plain HTTP request.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::WebSocket;
use http_body_util::Empty;
use hyper::header::{AUTHORIZATION, CONNECTION, COOKIE, HOST, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
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
    /// TCP failed, or TLS in a way that is no [`TlsFailure`].
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS handshake failed.
    #[error("{advice}: {error}", advice = .0.advice(), error = .1)]
    Tls(TlsFailure, std::io::Error),
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
            ConnectError::Tls(failure, _) => failure.label(),
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

/// The TLS client settings of connections to VoIPBIN: the ring provider, trusting
/// `extra_roots` (a private CA's certificates) and, when `public_roots`, the Mozilla roots
/// (webpki-roots); presenting `client` (a certificate chain and its key) when given.
///
/// # Errors
/// When no root is trusted at all, a root is not a CA certificate rustls can use, or the
/// client key does not suit its certificate.
pub fn client_tls(
    extra_roots: &[CertificateDer<'static>],
    public_roots: bool,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    if public_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for (i, root) in extra_roots.iter().enumerate() {
        roots
            .add(root.clone())
            .map_err(|e| format!("certificate {} of the CA file: {e}", i + 1))?;
    }
    if roots.is_empty() {
        return Err("no CA to trust: give a CA file or keep the public roots".to_owned());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("client certificate: {e}"))?,
    };
    Ok(Arc::new(config))
}

/// The default TLS client settings: the Mozilla roots, no client certificate.
pub fn default_tls() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            client_tls(&[], true, None).unwrap_or_else(|error| {
                // The ring provider supports the default versions and the bundled roots
                // are all usable; this cannot be reached.
                unreachable!("bug: the default TLS settings: {error}")
            })
        })
        .clone()
}

/// What was wrong with VoIPBIN's TLS, as far as the gateway can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// Its certificate is issued by a CA that is not trusted (a private CA: set
    /// `upstream.ca_file`).
    UnknownIssuer,
    /// Its certificate expired (or is not valid yet: check the clocks).
    Expired,
    /// Its certificate is not for the host of the URL.
    NameMismatch,
    /// VoIPBIN asked for a client certificate and got none, or refused the one given.
    ClientCertificate,
    /// Anything else: a protocol error, no common version or cipher, a client certificate
    /// refused by VoIPBIN.
    Other,
}

impl TlsFailure {
    /// Reads a failed TLS handshake's error.
    pub fn of(error: &std::io::Error) -> Option<TlsFailure> {
        Self::from_rustls(error.get_ref()?.downcast_ref::<rustls::Error>()?)
    }

    /// Finds a TLS error among `error` and its sources: with TLS 1.3 the server's verdict on
    /// a client certificate arrives after the client's handshake is done, while the
    /// WebSocket handshake reads its answer.
    pub fn in_chain(error: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(tls) = error.downcast_ref::<rustls::Error>() {
                return Self::from_rustls(tls);
            }
            if let Some(io) = error.downcast_ref::<std::io::Error>()
                && let Some(failure) = Self::of(io)
            {
                return Some(failure);
            }
            next = error.source();
        }
        None
    }

    fn from_rustls(rustls_error: &rustls::Error) -> Option<TlsFailure> {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        Some(match rustls_error {
            E::AlertReceived(
                A::CertificateRequired
                | A::BadCertificate
                | A::UnknownCA
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::CertificateRevoked
                | A::UnsupportedCertificate
                | A::AccessDenied,
            ) => TlsFailure::ClientCertificate,
            E::InvalidCertificate(C::UnknownIssuer) => TlsFailure::UnknownIssuer,
            E::InvalidCertificate(
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. },
            ) => TlsFailure::Expired,
            E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                TlsFailure::NameMismatch
            }
            _ => TlsFailure::Other,
        })
    }

    /// The label of the `reason` metric dimension.
    pub fn label(self) -> &'static str {
        match self {
            TlsFailure::UnknownIssuer => "tls_unknown_issuer",
            TlsFailure::Expired => "tls_expired",
            TlsFailure::NameMismatch => "tls_name_mismatch",
            TlsFailure::ClientCertificate => "tls_client_certificate",
            TlsFailure::Other => "tls_other",
        }
    }

    /// What an operator should do about it.
    pub fn advice(self) -> &'static str {
        match self {
            TlsFailure::UnknownIssuer => {
                "VoIPBIN's certificate is issued by an unknown CA: give its CA with --upstream-ca (upstream.ca_file)"
            }
            TlsFailure::Expired => {
                "VoIPBIN's certificate has expired or is not valid yet: renew it, or check the clocks"
            }
            TlsFailure::NameMismatch => {
                "VoIPBIN's certificate is not for the host of upstream.url: fix the URL or the certificate"
            }
            TlsFailure::ClientCertificate => {
                "VoIPBIN refused the gateway's client certificate, or wanted one: set upstream.client_cert_file and client_key_file to one its CA issued"
            }
            TlsFailure::Other => "the TLS handshake with VoIPBIN failed",
        }
    }
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

/// Opens a TCP stream to `target`, with TLS (`tls`) when it asks for it.
async fn open_stream(
    target: &Target,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Box<dyn Io>, ConnectError> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
    let _ = tcp.set_nodelay(true);
    if !target.tls {
        return Ok(Box::new(tcp));
    }
    let name = rustls::pki_types::ServerName::try_from(target.host.clone())
        .map_err(|e| ConnectError::InvalidUrl(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|error| match TlsFailure::of(&error) {
            Some(failure) => ConnectError::Tls(failure, error),
            None => ConnectError::Io(error),
        })?;
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

/// Opens a WebSocket to `uri` with `credential`, within `timeout`, with TLS settings `tls`
/// for `wss://`.
///
/// # Errors
/// [`ConnectError`] when the URL is unusable, the connection or TLS fails, the server
/// refuses the handshake, or the deadline passes.
pub async fn websocket(
    uri: &Uri,
    credential: &Credential,
    timeout: Duration,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<WebSocket<TokioIo<Upgraded>>, ConnectError> {
    let target = Target::from_uri(uri)?;
    let open = async {
        let stream = open_stream(&target, tls).await?;
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
            .map_err(|e| match TlsFailure::in_chain(&e) {
                Some(failure) => ConnectError::Tls(failure, std::io::Error::other(e.to_string())),
                None => ConnectError::Handshake(e.to_string()),
            })?;
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
