//! The HTTP/1.1 side of a WebSocket upgrade (RFC 6455 §4), parsed with `httparse` straight
//! off the socket: one read for the request, one write for the answer, no HTTP connection
//! machinery per handshake. The WebSocket listener serves nothing else; a request that is
//! not an upgrade gets its JSON error and the connection closes.

use std::io;
use std::time::Duration;

use fanout_protocol::rest::HttpError;
use tokio::io::Interest;

use crate::conn::Conn;

/// The largest request head accepted, in bytes.
pub const MAX_REQUEST: usize = 16 * 1024;
/// Headers read at most: browsers behind a chain of proxies send far more than 48.
pub const MAX_HEADERS: usize = 128;
/// Bytes read per system call.
const READ_CHUNK: usize = 4096;

/// What the upgrade needs from a request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// The method is `GET`.
    pub get: bool,
    /// The path, without the query.
    pub path: String,
    /// The query, without the `?`.
    pub query: Option<String>,
    /// Every `Cookie` header.
    pub cookies: Vec<String>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The `X-Request-Id` header.
    pub request_id: Option<String>,
    /// The `Origin` header (browsers send it).
    pub origin: Option<String>,
    /// More than one `Origin` header came.
    pub origin_repeated: bool,
    /// `Sec-WebSocket-Key`, when it is a base64 16-byte nonce (RFC 6455 §4.1).
    pub websocket_key: Option<String>,
    /// `Sec-WebSocket-Version` is 13.
    pub version_13: bool,
    /// A `Sec-WebSocket-Version` header was there, whatever its value.
    pub version_present: bool,
    /// The request is HTTP/1.1 (an upgrade needs it; HTTP/1.0 has none).
    pub http11: bool,
    /// `Upgrade: websocket`.
    pub upgrade_websocket: bool,
    /// `Connection` holds the `upgrade` token.
    pub connection_upgrade: bool,
}

/// What is wrong with a request as a WebSocket upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotUpgrade {
    /// Not an upgrade at all, HTTP/1.0, or a `Sec-WebSocket-Key` that is no 16-byte nonce
    /// (400).
    Invalid,
    /// An upgrade to a WebSocket version other than 13 (426, naming 13).
    Version,
}

impl NotUpgrade {
    /// The answer and its metric label.
    pub fn answer(self) -> (HttpError, &'static str) {
        match self {
            NotUpgrade::Invalid => (HttpError::NOT_WEBSOCKET, "not_websocket"),
            NotUpgrade::Version => (HttpError::UNSUPPORTED_VERSION, "websocket_version"),
        }
    }
}

impl UpgradeRequest {
    /// Whether it asks for a WebSocket upgrade RFC 6455 accepts.
    pub fn is_upgrade(&self) -> bool {
        self.check().is_ok()
    }

    /// Why it is not an upgrade RFC 6455 accepts, if it is not.
    ///
    /// # Errors
    /// [`NotUpgrade`] says which answer the request gets.
    pub fn check(&self) -> Result<(), NotUpgrade> {
        if !(self.get && self.http11 && self.upgrade_websocket && self.connection_upgrade) {
            return Err(NotUpgrade::Invalid);
        }
        if !self.version_13 {
            // A client that asks for another version is told which one we speak.
            return Err(if self.version_present {
                NotUpgrade::Version
            } else {
                NotUpgrade::Invalid
            });
        }
        if self.websocket_key.is_none() {
            return Err(NotUpgrade::Invalid);
        }
        Ok(())
    }
}

/// Whether `key` is the base64 encoding of 16 bytes, as `Sec-WebSocket-Key` must be. Unused
/// bits in the last character need not be zero: clients that build keys by hand get them
/// wrong, and the nonce is 16 bytes all the same.
fn is_nonce(key: &str) -> bool {
    use base64::Engine;
    use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    key.len() == 24 && LENIENT.decode(key).is_ok_and(|nonce| nonce.len() == 16)
}

/// Why no request could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The client closed before sending a whole request.
    #[error("closed before the request was complete")]
    Closed,
    /// The request head is larger than [`MAX_REQUEST`].
    #[error("request too large")]
    TooLarge,
    /// Not an HTTP/1.1 request.
    #[error("malformed request")]
    Malformed,
    /// The header timeout passed.
    #[error("timed out")]
    Timeout,
    /// A read failed.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
}

fn text(value: &[u8]) -> Option<String> {
    std::str::from_utf8(value).ok().map(|s| s.trim().to_owned())
}

/// Parses a complete request head; `Ok(None)` when more bytes are needed. Answers the request
/// and the length of its head.
///
/// # Errors
/// [`ReadError::Malformed`] for anything that is not an HTTP/1.x request head.
pub fn parse(buf: &[u8]) -> Result<Option<(UpgradeRequest, usize)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ReadError::Malformed),
    };
    let target = request.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (target, None),
    };
    let mut out = UpgradeRequest {
        get: request.method == Some("GET"),
        http11: request.version == Some(1),
        path: path.to_owned(),
        query,
        ..UpgradeRequest::default()
    };
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("cookie") {
            out.cookies.extend(text(header.value));
        } else if name.eq_ignore_ascii_case("authorization") {
            out.authorization = text(header.value);
        } else if name.eq_ignore_ascii_case("origin") {
            out.origin_repeated |= out.origin.is_some();
            // One that is not text is there all the same, and matches nothing.
            out.origin = Some(text(header.value).unwrap_or_default());
        } else if name.eq_ignore_ascii_case("x-request-id") {
            out.request_id = text(header.value);
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            out.websocket_key = text(header.value).filter(|key| is_nonce(key));
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            out.version_present = true;
            out.version_13 = text(header.value).as_deref() == Some("13");
        } else if name.eq_ignore_ascii_case("upgrade") {
            out.upgrade_websocket =
                text(header.value).is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        } else if name.eq_ignore_ascii_case("connection") {
            out.connection_upgrade |= text(header.value).is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            });
        }
    }
    Ok(Some((out, len)))
}

/// Reads one request head within `timeout`; answers it and any bytes the client sent after it.
///
/// # Cancel safety
/// Cancel-safe, but what was read is lost with it.
///
/// # Errors
/// [`ReadError`] when the client closes, sends too much or garbage, or is too slow.
pub async fn read_request(
    stream: &mut Conn,
    timeout: Duration,
) -> Result<(UpgradeRequest, Vec<u8>), ReadError> {
    let read = async {
        let mut buf: Vec<u8> = Vec::with_capacity(1024);
        loop {
            stream.ready(Interest::READABLE).await?;
            let before = buf.len();
            match read_available(stream, &mut buf) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
            // Parse only once the head can be complete (a blank line arrived), so a client
            // sending a byte at a time costs linear work, not a parse per byte.
            if ends_head(&buf, before)
                && let Some((request, len)) = parse(&buf)?
            {
                return Ok((request, buf.split_off(len)));
            }
            if buf.len() > MAX_REQUEST {
                return Err(ReadError::TooLarge);
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ReadError::Timeout)?
}

/// Whether the bytes of `buf` from `from` on (with the three before, to catch one split
/// across reads) hold the blank line that ends a request head: `\n\n` or `\n\r\n`.
fn ends_head(buf: &[u8], from: usize) -> bool {
    let window = &buf[from.saturating_sub(3)..];
    window.windows(2).any(|w| w == b"\n\n") || window.windows(3).any(|w| w == b"\n\r\n")
}

/// Reads what the socket holds into `buf` through a stack buffer (a plain function, so the
/// buffer is never part of a future).
fn read_available(stream: &mut Conn, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; READ_CHUNK];
    let n = stream.try_read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Writes all of `bytes` to the socket.
///
/// # Errors
/// The write's error.
pub async fn write_all(stream: &mut Conn, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.ready(Interest::WRITABLE).await?;
        match stream.try_write_vectored(&[io::IoSlice::new(bytes)]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The `Sec-WebSocket-Accept` value for a key (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    use base64::Engine;
    use sha1::Digest;
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha1 = sha1::Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// The whole `101 Switching Protocols` answer.
pub fn switching_protocols(key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    )
    .into_bytes()
}

/// The whole answer for `error`: its status, VoIPBIN's JSON envelope, and `Retry-After` for
/// 429 and 503. The connection closes after it.
pub fn error_response(error: HttpError, request_id: &str) -> Vec<u8> {
    let body = error.body(request_id);
    let reason = match error.code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let extra = match error.code {
        429 | 503 => "Retry-After: 1\r\n",
        426 => "Sec-WebSocket-Version: 13\r\n",
        _ => "",
    };
    format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        error.code,
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_upgrade() {
        let raw = b"GET /v1.0/ws?token=abc&x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nCookie: a=1\r\nCookie: token=t\r\nAuthorization: Bearer z\r\nX-Request-Id: r1\r\n\r\n\x81\x85";
        let (request, len) = parse(raw).expect("valid").expect("complete");
        assert_eq!(&raw[len..], b"\x81\x85");
        assert!(request.is_upgrade());
        assert_eq!(request.path, "/v1.0/ws");
        assert_eq!(request.query.as_deref(), Some("token=abc&x=1"));
        assert_eq!(request.cookies, ["a=1", "token=t"]);
        assert_eq!(request.authorization.as_deref(), Some("Bearer z"));
        assert_eq!(request.request_id.as_deref(), Some("r1"));
        // RFC 6455 §1.3's example.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn partial_malformed_and_plain_requests() {
        assert_eq!(
            parse(b"GET /v1.0/ws HTTP/1.1\r\nHost:").expect("valid so far"),
            None
        );
        assert!(matches!(
            parse(b"\x16\x03\x01 not http\r\n\r\n"),
            Err(ReadError::Malformed)
        ));
        let (plain, _) = parse(b"GET /v1.0/ws HTTP/1.1\r\nHost: h\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert!(!plain.is_upgrade());
        let check = |raw: &str| {
            parse(raw.as_bytes())
                .expect("valid")
                .expect("complete")
                .0
                .check()
        };
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let upgrade = |method: &str, version: &str, key: &str, ws: &str| {
            format!(
                "{method} /v1.0/ws {version}\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: {key}\r\n{ws}\r\n"
            )
        };
        let v13 = "Sec-WebSocket-Version: 13\r\n";
        assert_eq!(check(&upgrade("GET", "HTTP/1.1", key, v13)), Ok(()));
        assert_eq!(
            check(&upgrade("POST", "HTTP/1.1", key, v13)),
            Err(NotUpgrade::Invalid)
        );
        assert_eq!(
            check(&upgrade("GET", "HTTP/1.0", key, v13)),
            Err(NotUpgrade::Invalid)
        );
        assert_eq!(
            check(&upgrade(
                "GET",
                "HTTP/1.1",
                key,
                "Sec-WebSocket-Version: 8\r\n"
            )),
            Err(NotUpgrade::Version)
        );
        assert_eq!(
            check(&upgrade("GET", "HTTP/1.1", key, "")),
            Err(NotUpgrade::Invalid)
        );
        // Keys that are not a base64 16-byte nonce.
        for bad in [
            "k",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZSE=",
            "!GhlIHNhbXBsZSBub25jZQ==",
            "dGhlIHNhbXBsZSBub25jZSEhIQ==",
        ] {
            assert_eq!(
                check(&upgrade("GET", "HTTP/1.1", bad, v13)),
                Err(NotUpgrade::Invalid),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_head_ends_at_its_blank_line_however_it_is_split() {
        let head = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        for split in 0..head.len() {
            let mut buf = head[..split].to_vec();
            let whole = ends_head(&buf, 0);
            buf.extend_from_slice(&head[split..]);
            assert!(!whole || split == head.len());
            assert!(ends_head(&buf, split), "split at {split}");
        }
        assert!(ends_head(b"GET / HTTP/1.1\nHost: h\n\n", 0));
        assert!(!ends_head(b"GET / HTTP/1.1\r\nHost: h\r\n", 0));
    }

    #[test]
    fn a_hundred_headers_are_read() {
        let mut raw = String::from(
            "GET /v1.0/ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        );
        for i in 0..96 {
            raw.push_str(&format!("X-Forwarded-{i}: 10.0.0.{i}\r\n"));
        }
        raw.push_str("\r\n");
        let (request, _) = parse(raw.as_bytes()).expect("valid").expect("complete");
        assert!(request.is_upgrade());
    }

    #[test]
    fn error_answers_are_whole_http_responses() {
        let text = String::from_utf8(error_response(HttpError::RESOURCE_EXHAUSTED, "req_1"))
            .expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"));
        let upgrade =
            String::from_utf8(error_response(HttpError::UNSUPPORTED_VERSION, "r")).expect("utf-8");
        assert!(upgrade.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(upgrade.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(text.contains("Retry-After: 1\r\n"));
        let body = text.split("\r\n\r\n").nth(1).expect("body");
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
        let value: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(value["error"]["status"], "RESOURCE_EXHAUSTED");
    }
}
