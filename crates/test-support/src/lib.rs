//! Helpers that integration tests share (dev-only): a WebSocket test client built on
//! fastwebsockets (an implementation independent of the gateway's own framing), token
//! minting, plain HTTP calls, the tutorial's client programs, and tracing set-up.

#![allow(missing_docs, unreachable_pub)]

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload, handshake};
use http_body_util::{BodyExt, Empty, Full};
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use uuid::Uuid;

pub use fanout_auth::permission_bits as perm;

pub mod nats;
pub mod natsauth;
pub mod pki;

/// The JWT secret tests sign with.
pub const SECRET: &str = "test-jwt-secret";

/// The fleet key the tests' cluster nodes share.
pub const FLEET_KEY: &str = "test-fleet-key-of-thirty-two-bytes-or-more";
/// The customer of the tutorial's examples.
pub const TUTORIAL_CUSTOMER: &str = "12345678-1234-1234-1234-123456789012";
/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// Starts a tracing subscriber for the test binary once (quiet unless `RUST_LOG` is set).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// An expiry far in the future, in VoIPBIN's layout.
pub fn far_future() -> String {
    "2099-01-01T00:00:00.000000Z".to_owned()
}

/// VoIPBIN's layout for `now + after`.
pub fn expire_in(after: Duration) -> String {
    fanout_protocol::timestamp::format(std::time::SystemTime::now() + after)
}

/// Signs `claims` with HS256 and `secret`.
pub fn sign(secret: &str, claims: &Value) -> String {
    fanout_auth::jwt::sign(secret.as_bytes(), claims).expect("non-empty secret")
}

/// An agent token of `customer` with `permission`, valid until `expire`.
pub fn agent_token(
    secret: &str,
    customer: Uuid,
    agent: Uuid,
    permission: u64,
    expire: &str,
) -> String {
    sign(
        secret,
        &fanout_auth::jwt::agent_claims(customer, agent, permission, expire),
    )
}

/// An admin agent token of `customer`, valid for long.
pub fn admin_token(customer: Uuid) -> String {
    agent_token(
        SECRET,
        customer,
        Uuid::new_v4(),
        perm::CUSTOMER_ADMIN,
        &far_future(),
    )
}

/// A gateway's service token: a project super-admin (of the tutorial customer), which
/// VoIPBIN lets subscribe to any customer's topics.
pub fn service_token() -> String {
    agent_token(
        SECRET,
        tutorial_customer(),
        Uuid::new_v4(),
        perm::PROJECT_SUPER_ADMIN,
        &far_future(),
    )
}

/// A `direct` token of `customer` for a web widget allowed `allowed` resource types.
pub fn direct_token(secret: &str, customer: Uuid, allowed: &[&str]) -> String {
    sign(
        secret,
        &json!({
            "type": "direct",
            "direct": {
                "customer_id": customer,
                "resource_type": "webchat_widget",
                "resource_id": Uuid::new_v4(),
                "allowed_resource_types": allowed,
            },
            "expire": far_future(),
        }),
    )
}

/// The tutorial customer's id.
pub fn tutorial_customer() -> Uuid {
    Uuid::parse_str(TUTORIAL_CUSTOMER).expect("valid uuid")
}

struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::task::spawn(fut);
    }
}

/// A refused handshake: the HTTP status and body.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub body: Value,
    pub headers: hyper::HeaderMap,
}

/// What a test client read.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Text(Value),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

/// A byte stream a handshake runs on: TCP or TLS.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A WebSocket client for tests.
pub struct Client {
    ws: FragmentCollector<TokioIo<Upgraded>>,
}

/// Options of a handshake.
#[derive(Default, Clone)]
pub struct Connect {
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    /// Answer pings automatically (the default of browsers).
    pub no_auto_pong: bool,
    /// The local address to connect from (`127.0.0.2`, …), to stand for another client host.
    pub source: Option<IpAddr>,
    /// `wss://`: TLS with these settings, to this server name.
    pub tls: Option<(std::sync::Arc<rustls::ClientConfig>, String)>,
}

impl Connect {
    pub fn path(path_and_query: impl Into<String>) -> Self {
        Connect {
            path_and_query: path_and_query.into(),
            ..Connect::default()
        }
    }

    pub fn token(token: &str) -> Self {
        Connect::path(format!("/v1.0/ws?token={token}"))
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Over TLS with `config`, to `server_name`.
    pub fn tls(mut self, config: std::sync::Arc<rustls::ClientConfig>, server_name: &str) -> Self {
        self.tls = Some((config, server_name.to_owned()));
        self
    }
}

impl Client {
    /// Connects with `?token=`; panics with the answer if refused.
    pub async fn connect_token(addr: SocketAddr, token: &str) -> Client {
        match Client::connect(addr, Connect::token(token)).await {
            Ok(Ok(client)) => client,
            Ok(Err(refused)) => panic!("handshake refused: {refused:?}"),
            Err(e) => panic!("connect failed: {e:#}"),
        }
    }

    /// Opens a WebSocket; `Ok(Err(_))` when the server answered with an HTTP error.
    pub async fn connect(
        addr: SocketAddr,
        options: Connect,
    ) -> anyhow::Result<Result<Client, Refused>> {
        let tcp = connect_from(addr, options.source).await?;
        let (stream, host): (Box<dyn Io>, String) = match &options.tls {
            None => (Box::new(tcp), addr.to_string()),
            Some((config, name)) => {
                let server_name = rustls::pki_types::ServerName::try_from(name.clone())?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(server_name, tcp)
                    .await?;
                (Box::new(tls), format!("{name}:{}", addr.port()))
            }
        };
        let mut builder = Request::get(options.path_and_query.as_str())
            .header(HOST, host)
            .header(UPGRADE, "websocket")
            .header(CONNECTION, "upgrade")
            .header("Sec-WebSocket-Key", handshake::generate_key())
            .header("Sec-WebSocket-Version", "13");
        for (name, value) in &options.headers {
            builder = builder.header(name, value);
        }
        let req = builder.body(Empty::<Bytes>::new())?;
        match handshake::client(&SpawnExecutor, req, stream).await {
            Ok((mut ws, _)) => {
                ws.set_auto_pong(!options.no_auto_pong);
                ws.set_auto_close(true);
                Ok(Ok(Client {
                    ws: FragmentCollector::new(ws),
                }))
            }
            Err(fastwebsockets::WebSocketError::InvalidStatusCode(_)) if options.tls.is_none() => {
                // Ask again with a plain request to read the refusal's status and body.
                let (status, headers, body) =
                    http_full(addr, "GET", &options.path_and_query, &options.headers, None).await?;
                Ok(Err(Refused {
                    status,
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    headers,
                }))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a WebSocket that the server must refuse; answers the refusal, panics if it was
    /// accepted or the connection failed.
    pub async fn refused(addr: SocketAddr, options: Connect) -> Refused {
        match Client::connect(addr, options).await {
            Ok(Err(refused)) => refused,
            Ok(Ok(_)) => panic!("the handshake was accepted"),
            Err(e) => panic!("connect failed: {e:#}"),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .write_frame(Frame::text(Payload::Borrowed(text.as_bytes())))
            .await
            .expect("send");
    }

    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn subscribe(&mut self, topics: &[&str]) {
        self.send_json(&json!({"type":"subscribe","topics":topics}))
            .await;
    }

    /// Waits until the server has handled everything sent before: it answers an unknown
    /// message type with an error frame, in order. Panics on any other frame meanwhile.
    pub async fn sync(&mut self) {
        self.send_text(r#"{"type":"sync"}"#).await;
        let answer = self.recv_json().await;
        assert!(
            answer["type"] == "error" && answer["code"] == "unknown_type",
            "unexpected frame while syncing: {answer}"
        );
    }

    /// Subscribes and waits until the server has applied it.
    pub async fn subscribe_synced(&mut self, topics: &[&str]) {
        self.subscribe(topics).await;
        self.sync().await;
    }

    pub async fn unsubscribe(&mut self, topics: &[&str]) {
        self.send_json(&json!({"type":"unsubscribe","topics":topics}))
            .await;
    }

    pub async fn send_frame(&mut self, frame: Frame<'_>) {
        self.ws.write_frame(frame).await.expect("send");
    }

    /// The next frame within `wait`, or `None`. A connection that ended without a close
    /// frame reads as `Close(None, "eof")`.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Received> {
        let frame = match tokio::time::timeout(wait, self.ws.read_frame()).await {
            Err(_) => return None,
            Ok(Err(_)) => return Some(Received::Close(None, "eof".into())),
            Ok(Ok(frame)) => frame,
        };
        Some(match frame.opcode {
            OpCode::Text => {
                Received::Text(serde_json::from_slice(&frame.payload).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&frame.payload).into_owned())
                }))
            }
            OpCode::Binary => Received::Binary(frame.payload.to_vec()),
            OpCode::Ping => Received::Ping(frame.payload.to_vec()),
            OpCode::Pong => Received::Pong(frame.payload.to_vec()),
            OpCode::Close => {
                let payload = frame.payload.to_vec();
                if payload.len() >= 2 {
                    Received::Close(
                        Some(u16::from_be_bytes([payload[0], payload[1]])),
                        String::from_utf8_lossy(&payload[2..]).into_owned(),
                    )
                } else {
                    Received::Close(None, String::new())
                }
            }
            _ => return None,
        })
    }

    /// The next text message as JSON; panics on anything else or after [`WAIT`].
    pub async fn recv_json(&mut self) -> Value {
        loop {
            match self.recv_within(WAIT).await {
                Some(Received::Text(value)) => return value,
                Some(Received::Ping(_) | Received::Pong(_)) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// The next event (a message with `event_type`); panics on anything else.
    pub async fn recv_event(&mut self) -> Value {
        let value = self.recv_json().await;
        assert!(value.get("event_type").is_some(), "not an event: {value}");
        value
    }

    /// The close code and reason the server sends next, skipping other frames.
    pub async fn recv_close(&mut self) -> (Option<u16>, String) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Some(Received::Close(code, reason)) => return (code, reason),
                Some(_) => continue,
                None => panic!("no close within {WAIT:?}"),
            }
        }
    }

    /// Asserts that no text message arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.recv_within(left).await {
                None => return,
                Some(Received::Ping(_) | Received::Pong(_)) => continue,
                Some(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.write_frame(Frame::close(1000, b"bye")).await;
    }

    /// The underlying stream, for tests that send raw bytes.
    pub fn into_inner(self) -> TokioIo<Upgraded> {
        self.ws.into_inner()
    }
}

/// A TCP connection to `addr`, from `source` when given.
///
/// # Errors
/// When the bind or the connect fails.
pub async fn connect_from(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(addr).await;
    };
    let socket = if source.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// A valid upgrade request for `path_and_query`, as raw bytes.
pub fn upgrade_request(addr: SocketAddr, path_and_query: &str) -> String {
    format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Opens a WebSocket with a plain blocking socket (for flooding threads that must not
/// share the test's runtime): answers the socket right after the 101's head.
///
/// # Errors
/// When the connection fails or the answer is not 101.
pub fn raw_ws_blocking(addr: SocketAddr, token: &str) -> anyhow::Result<std::net::TcpStream> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.write_all(upgrade_request(addr, &format!("/v1.0/ws?token={token}")).as_bytes())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            bail!("closed during the handshake");
        }
        head.push(byte[0]);
        if head.len() > 16 * 1024 {
            bail!("answer head too long");
        }
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        bail!("refused: {}", String::from_utf8_lossy(&head));
    }
    Ok(stream)
}

/// A plain HTTP/1.1 request; answers status, headers and body.
pub async fn http_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Option<&[u8]>,
) -> anyhow::Result<(StatusCode, hyper::HeaderMap, Bytes)> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr.to_string());
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let req = builder.body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))?;
    let response = sender.send_request(req).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, headers, body))
}

/// A plain HTTP call; answers status and body as JSON (or a JSON string of the text).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let (status, _, body) = http_full(addr, method, path, &[], body.map(str::as_bytes))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    (status, value)
}

/// The admin token test gateways are started with (`admin.token`).
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A `GET` of a protected admin endpoint (`/customers`) with [`ADMIN_TOKEN`].
pub async fn admin_get(addr: SocketAddr, path: &str) -> (StatusCode, Value) {
    let auth = [("Authorization".to_owned(), format!("Bearer {ADMIN_TOKEN}"))];
    let (status, _, body) = http_full(addr, "GET", path, &auth, None)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    (status, value)
}

/// Publishes events through the simulator's `/_sim/events`; answers how many frames it sent.
pub async fn publish(sim: SocketAddr, events: &Value) -> u64 {
    let (status, body) = http(sim, "POST", "/_sim/events", Some(&events.to_string())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["sent"].as_u64().expect("sent count")
}

/// The simulator's `/_sim/stats`.
pub async fn sim_stats(sim: SocketAddr) -> Value {
    let (status, body) = http(sim, "GET", "/_sim/stats", None).await;
    assert_eq!(status, StatusCode::OK);
    body
}

/// Polls `check` until it holds or [`WAIT`] passes.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// Which of the tutorial's client programs to run.
#[derive(Debug, Clone, Copy)]
pub enum TutorialClient {
    /// `tests/clients/tutorial_python.py` with `websocket-client`.
    Python,
    /// `tests/clients/tutorial_node.js` with `ws`.
    Node,
}

/// A running tutorial client and the lines it printed so far.
pub struct TutorialRun {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    pub seen: Vec<String>,
    _dir: PathBuf,
}

impl TutorialRun {
    /// Starts the tutorial's example against `ws://addr` with `token`: the program's text is
    /// used unchanged but for the URL (the host and the empty token it leaves to the reader).
    pub async fn start(
        which: TutorialClient,
        addr: SocketAddr,
        token: &str,
    ) -> anyhow::Result<TutorialRun> {
        Self::start_at(which, &format!("ws://{addr}"), token, None).await
    }

    /// Starts the tutorial's example against `wss://localhost:port` (its URL's scheme kept),
    /// trusting the CA in `ca` the way each library is told to from outside the program:
    /// `WEBSOCKET_CLIENT_CA_BUNDLE` for Python's websocket-client, `NODE_EXTRA_CA_CERTS` for
    /// Node.
    pub async fn start_tls(
        which: TutorialClient,
        port: u16,
        token: &str,
        ca: &std::path::Path,
    ) -> anyhow::Result<TutorialRun> {
        Self::start_at(which, &format!("wss://localhost:{port}"), token, Some(ca)).await
    }

    async fn start_at(
        which: TutorialClient,
        base: &str,
        token: &str,
        ca: Option<&std::path::Path>,
    ) -> anyhow::Result<TutorialRun> {
        let clients = repo_root().join("tests/clients");
        let (file, token_line, filled) = match which {
            TutorialClient::Python => (
                "tutorial_python.py",
                "token = \"\"",
                format!("token = \"{token}\""),
            ),
            TutorialClient::Node => (
                "tutorial_node.js",
                "const token = '';",
                format!("const token = '{token}';"),
            ),
        };
        let source = std::fs::read_to_string(clients.join(file))
            .with_context(|| format!("reading {file}"))?;
        if !source.contains("wss://api.voipbin.net") || !source.contains(token_line) {
            bail!("{file} no longer holds the tutorial's URL and token lines");
        }
        let source = source
            .replace("wss://api.voipbin.net", base)
            .replace(token_line, &filled);
        // Written beside the original so that Node finds `ws` in tests/clients/node_modules.
        let name = format!(".run-{}-{file}", Uuid::new_v4().simple());
        let path = clients.join(&name);
        std::fs::write(&path, source)?;
        let mut command = match which {
            TutorialClient::Python => {
                let mut c = tokio::process::Command::new("python3");
                c.arg("-u").arg(&path);
                c
            }
            TutorialClient::Node => {
                let mut c = tokio::process::Command::new("node");
                c.arg(&path);
                c
            }
        };
        if let Some(ca) = ca {
            command.env("WEBSOCKET_CLIENT_CA_BUNDLE", ca);
            command.env("NODE_EXTRA_CA_CERTS", ca);
        }
        let mut child = command
            .current_dir(&clients)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("running {which:?} (installed by .ci/run)"))?;
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        for out in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(out).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    let _ = tx.send(line);
                }
            });
        }
        Ok(TutorialRun {
            child,
            lines,
            seen: Vec::new(),
            _dir: path,
        })
    }

    /// Everything printed so far, and whatever more comes within `quiet` of the last line.
    pub async fn printed(&mut self, quiet: Duration) -> &[String] {
        while let Ok(Some(line)) = tokio::time::timeout(quiet, self.lines.recv()).await {
            self.seen.push(line);
        }
        &self.seen
    }

    /// Waits until a printed line equals `line`; panics with everything printed otherwise.
    pub async fn expect_line(&mut self, line: &str) {
        if self.seen.iter().any(|l| l == line) {
            return;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.lines.recv()).await {
                Ok(Some(got)) => {
                    let hit = got == line;
                    self.seen.push(got);
                    if hit {
                        return;
                    }
                }
                _ => panic!(
                    "the tutorial client never printed {line:?}; it printed {:#?}",
                    self.seen
                ),
            }
        }
    }
}

impl Drop for TutorialRun {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self._dir);
    }
}
