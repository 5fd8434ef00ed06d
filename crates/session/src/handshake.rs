//! The HTTP/1.1 side of a WebSocket upgrade (RFC 6455 §4), parsed with `httparse` straight
//! off the socket: one read for the request, one write for the answer, no HTTP connection
//! machinery per handshake. The WebSocket listener serves nothing else; a request that is
//! not an upgrade gets its JSON error and the connection closes.

use std::io;
use std::time::Duration;

use fanout_protocol::rest::HttpError;
use tokio::net::TcpStream;

/// The largest request head accepted, in bytes.
pub const MAX_REQUEST: usize = 16 * 1024;
/// Headers read at most.
const MAX_HEADERS: usize = 48;
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
    /// `Sec-WebSocket-Key`.
    pub websocket_key: Option<String>,
    /// `Sec-WebSocket-Version` is 13.
    pub version_13: bool,
    /// `Upgrade: websocket`.
    pub upgrade_websocket: bool,
    /// `Connection` holds the `upgrade` token.
    pub connection_upgrade: bool,
}

impl UpgradeRequest {
    /// Whether it asks for a WebSocket upgrade RFC 6455 accepts.
    pub fn is_upgrade(&self) -> bool {
        self.get
            && self.upgrade_websocket
            && self.connection_upgrade
            && self.version_13
            && self.websocket_key.is_some()
    }
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
        } else if name.eq_ignore_ascii_case("x-request-id") {
            out.request_id = text(header.value);
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            out.websocket_key = text(header.value);
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
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
    stream: &TcpStream,
    timeout: Duration,
) -> Result<(UpgradeRequest, Vec<u8>), ReadError> {
    let read = async {
        let mut buf: Vec<u8> = Vec::with_capacity(1024);
        loop {
            stream.readable().await?;
            match read_available(stream, &mut buf) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
            if let Some((request, len)) = parse(&buf)? {
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

/// Reads what the socket holds into `buf` through a stack buffer (a plain function, so the
/// buffer is never part of a future).
fn read_available(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; READ_CHUNK];
    let n = stream.try_read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Writes all of `bytes` to the socket.
///
/// # Errors
/// The write's error.
pub async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
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
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let retry = if matches!(error.code, 429 | 503) {
        "Retry-After: 1\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{retry}Connection: close\r\n\r\n{body}",
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
        let (post, _) = parse(b"POST /v1.0/ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert!(!post.is_upgrade());
        let (old, _) = parse(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 8\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert!(!old.is_upgrade());
    }

    #[test]
    fn error_answers_are_whole_http_responses() {
        let text = String::from_utf8(error_response(HttpError::RESOURCE_EXHAUSTED, "req_1"))
            .expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"));
        assert!(text.contains("Retry-After: 1\r\n"));
        let body = text.split("\r\n\r\n").nth(1).expect("body");
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
        let value: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(value["error"]["status"], "RESOURCE_EXHAUSTED");
    }
}
