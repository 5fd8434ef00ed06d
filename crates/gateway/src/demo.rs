//! `fanout-gateway demo`: the gateway against an embedded VoIPBIN simulator with a random
//! event stream, ready-to-paste URLs to watch it, and a live page (plain HTML and the
//! JavaScript client, no build step) that shows events, resumes and gaps. The simulator
//! plays VoIPBIN's server code as it is today (bare objects, raw prefixes, a delivery per
//! published topic) unless told to play the tutorial's world.
//!
//! The page's listener serves `/` (the page), `/client.js` (`clients/js/index.js` as it
//! stands), `/demo.json` (where the gateway is, a token, the topics) and
//! `POST /drop-upstream` (the simulator drops the customer's upstream: the page then shows a
//! gap).

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use fanout_auth::permission_bits;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use voipbin_sim::{SimConfig, Simulator, World};

use crate::Gateway;
use crate::config::Config;

/// The demo's customer: the one the tutorial's examples subscribe to, so they work as they
/// stand but for the URL.
pub const DEMO_CUSTOMER: &str = "12345678-1234-1234-1234-123456789012";

/// Where the demo listens and how busy it is.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The gateway's WebSocket listener.
    pub listen: SocketAddr,
    /// The gateway's admin listener.
    pub admin_listen: SocketAddr,
    /// The simulator's listener.
    pub sim_listen: SocketAddr,
    /// Events per second of the simulator's random stream.
    pub event_rate: u32,
    /// The demo page's listener.
    pub page_listen: SocketAddr,
    /// The world the simulator plays (the gateway asks it in that world's language).
    pub world: World,
}

/// The topics the demo page and the printed examples watch: the customer's calls, queue
/// calls, messages and flows (patterns that name their resource, so that every event
/// arrives known for what it is, from VoIPBIN's code too).
pub fn demo_topics() -> Vec<String> {
    ["call", "queuecall", "message", "activeflow"]
        .iter()
        .map(|r| format!("customer_id:{DEMO_CUSTOMER}:{r}:*"))
        .collect()
}

const PAGE: &str = include_str!("../demo/index.html");
const CLIENT: &str = include_str!("../../../clients/js/index.js");

fn agent_token(
    secret: &str,
    customer: Uuid,
    agent: Uuid,
    permission: u64,
) -> anyhow::Result<String> {
    let expire = fanout_protocol::timestamp::format(
        std::time::SystemTime::now() + Duration::from_secs(7 * 24 * 3600),
    );
    let claims = fanout_auth::jwt::agent_claims(customer, agent, permission, &expire);
    Ok(fanout_auth::jwt::sign(secret.as_bytes(), &claims)?)
}

/// What a running demo is made of.
pub struct Demo {
    /// The gateway.
    pub gateway: Gateway,
    /// The simulator standing in for VoIPBIN.
    pub sim: std::sync::Arc<Simulator>,
    /// The bearer token of the admin listener's `/customers`.
    pub customers_token: String,
    /// A customer admin's token.
    pub admin_token: String,
    /// A plain agent's token.
    pub agent_token: String,
    /// The plain agent's id.
    pub agent_id: Uuid,
    page_addr: SocketAddr,
    sim_cancel: CancellationToken,
}

impl Demo {
    /// Starts the simulator and the gateway.
    ///
    /// # Errors
    /// When a listener cannot be bound.
    pub async fn start(options: &DemoOptions) -> anyhow::Result<Demo> {
        let secret = format!("demo-{}", Uuid::new_v4().simple());
        let customer = Uuid::parse_str(DEMO_CUSTOMER)?;
        let agent_id = Uuid::new_v4();
        let mut sim_config = SimConfig::new(secret.clone()).in_world(options.world);
        sim_config.event_rate = options.event_rate;
        sim_config.known_agents = vec![(customer, agent_id)];
        sim_config.access_keys = vec![(format!("vb_{}", Uuid::new_v4().simple()), customer)];
        let sim_cancel = CancellationToken::new();
        let sim = Simulator::start(sim_config, options.sim_listen, sim_cancel.clone())
            .await
            .with_context(|| format!("starting the simulator on {}", options.sim_listen))?;
        let service = agent_token(
            &secret,
            customer,
            Uuid::new_v4(),
            permission_bits::PROJECT_SUPER_ADMIN,
        )?;
        let mut config = Config {
            listen: options.listen,
            admin_listen: options.admin_listen,
            jwt_secret: secret.clone(),
            ..Config::default()
        };
        config.upstream.url = sim.ws_url();
        config.upstream.token = service;
        config.upstream.matching = options.world.matching();
        config.upstream.linger = Duration::from_secs(5);
        // The simulator applies a subscribe before it reads the next frame.
        config.upstream.subscribe_settle = Duration::ZERO;
        // `/customers` lists every tenant: a fresh bearer token each run.
        config.admin.token = Uuid::new_v4().simple().to_string();
        let customers_token = config.admin.token.clone();
        config.validate()?;
        let gateway = Gateway::start(config).await?;
        let admin_token = agent_token(
            &secret,
            customer,
            Uuid::new_v4(),
            permission_bits::CUSTOMER_ADMIN,
        )?;
        let page = tokio::net::TcpListener::bind(options.page_listen)
            .await
            .with_context(|| format!("binding the demo page on {}", options.page_listen))?;
        let page_addr = page.local_addr()?;
        let settings = serde_json::json!({
            "ws_url": format!("ws://{}/v1.0/ws", gateway.local_addr()),
            "token": admin_token,
            "customer_id": DEMO_CUSTOMER,
            "topics": demo_topics(),
        })
        .to_string();
        tokio::spawn(serve_page(
            page,
            Upstreams::Embedded(sim.clone()),
            settings,
            sim_cancel.clone(),
        ));
        Ok(Demo {
            gateway,
            sim,
            customers_token,
            admin_token,
            agent_token: agent_token(&secret, customer, agent_id, permission_bits::CUSTOMER_AGENT)?,
            agent_id,
            page_addr,
            sim_cancel,
        })
    }

    /// The demo page's URL.
    pub fn page_url(&self) -> String {
        format!("http://{}/", self.page_addr)
    }

    /// The demo page's address.
    pub fn page_addr(&self) -> SocketAddr {
        self.page_addr
    }

    /// Prints the URLs and a one-line way to watch events.
    pub fn print(&self) {
        let base = format!("ws://{}/v1.0/ws", self.gateway.local_addr());
        let admin_url = format!("{base}?token={}", self.admin_token);
        let agent_url = format!("{base}?token={}", self.agent_token);
        let watch = |url: &str, topic: &str| {
            format!(
                "python3 -c \"import websocket,json,sys; ws=websocket.create_connection(sys.argv[1]); ws.send(json.dumps({{'type':'subscribe','topics':sys.argv[2:]}})); [print(ws.recv(), flush=True) for _ in iter(int, 1)]\" '{url}' '{topic}'"
            )
        };
        println!(
            "fanout-gateway demo: the gateway in front of an embedded VoIPBIN simulator ({} world)",
            self.sim.config().world_name()
        );
        println!();
        println!("  demo page   {}", self.page_url());
        println!("  gateway     {base}");
        println!(
            "  admin       http://{}/metrics  /readyz  /customers (Authorization: Bearer {})",
            self.gateway.admin_addr(),
            self.customers_token
        );
        println!(
            "  simulator   {}  (POST /_sim/events, GET /_sim/stats)",
            self.sim.ws_url()
        );
        println!("  customer    {DEMO_CUSTOMER}");
        println!();
        println!("Customer admin (sees every event of the customer):");
        println!("  {admin_url}");
        println!();
        println!("Agent {} (sees the calls it owns):", self.agent_id);
        println!("  {agent_url}");
        println!();
        println!("Watch events (pip install websocket-client):");
        println!(
            "  {}",
            watch(&admin_url, &format!("customer_id:{DEMO_CUSTOMER}:call:*"))
        );
        println!(
            "  {}",
            watch(&agent_url, &format!("agent_id:{}:call:*", self.agent_id))
        );
        println!();
        println!("The tutorial's examples work too: set their URL to the admin URL above.");
        println!("Ctrl-C stops.");
    }

    /// Shuts the gateway down, then the simulator.
    pub async fn shutdown(self) {
        self.gateway.shutdown().await;
        self.sim_cancel.cancel();
    }
}

/// Where the page's "Drop the upstream" goes.
#[derive(Clone)]
enum Upstreams {
    /// The embedded simulator.
    Embedded(std::sync::Arc<Simulator>),
    /// A simulator running on its own, at this address (`POST /_sim/drop`).
    Remote(SocketAddr),
}

impl Upstreams {
    /// Drops the demo customer's upstream connections; answers how many.
    async fn drop_customer(&self) -> u64 {
        let customer = Uuid::parse_str(DEMO_CUSTOMER).unwrap_or_default();
        match self {
            Upstreams::Embedded(sim) => sim.drop_customer(customer) as u64,
            Upstreams::Remote(addr) => remote_drop(*addr, customer).await.unwrap_or(0),
        }
    }
}

/// `POST /_sim/drop?customer_id=…` on the simulator at `addr`.
async fn remote_drop(addr: SocketAddr, customer: Uuid) -> anyhow::Result<u64> {
    use http_body_util::BodyExt as _;
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = hyper::Request::post(format!("/_sim/drop?customer_id={customer}"))
        .header(hyper::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let body = sender
        .send_request(request)
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(answer["dropped"].as_u64().unwrap_or(0))
}

/// `fanout-gateway demo-page`: the demo page alone, for a gateway (or a cluster behind a
/// load balancer) at `ws_url` whose browsers' JWTs are signed with `jwt_secret`, in front
/// of the simulator at `sim`. Serves until `stop`; answers the page's address.
///
/// # Errors
/// When the listener cannot be bound or a token cannot be made.
pub async fn serve_page_alone(
    listen: SocketAddr,
    ws_url: String,
    jwt_secret: &str,
    sim: SocketAddr,
    stop: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let customer = Uuid::parse_str(DEMO_CUSTOMER)?;
    let token = agent_token(
        jwt_secret,
        customer,
        Uuid::new_v4(),
        permission_bits::CUSTOMER_ADMIN,
    )?;
    let settings = serde_json::json!({
        "ws_url": ws_url,
        "token": token,
        "customer_id": DEMO_CUSTOMER,
        "topics": demo_topics(),
    })
    .to_string();
    let page = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the demo page on {listen}"))?;
    let addr = page.local_addr()?;
    tokio::spawn(serve_page(page, Upstreams::Remote(sim), settings, stop));
    Ok(addr)
}

/// Serves the demo page until `stop`.
async fn serve_page(
    listener: tokio::net::TcpListener,
    upstreams: Upstreams,
    settings: String,
    stop: CancellationToken,
) {
    use hyper::{Method, StatusCode};

    use crate::server::text;
    let settings = bytes::Bytes::from(settings);
    crate::server::accept_loop(
        listener,
        stop,
        Duration::from_secs(10),
        move |req: hyper::Request<hyper::body::Incoming>| {
            let upstreams = upstreams.clone();
            let settings = settings.clone();
            async move {
                match (req.method(), req.uri().path()) {
                    (&Method::GET, "/" | "/index.html") => {
                        text(StatusCode::OK, "text/html; charset=utf-8", PAGE)
                    }
                    (&Method::GET, "/client.js") => {
                        text(StatusCode::OK, "text/javascript; charset=utf-8", CLIENT)
                    }
                    (&Method::GET, "/demo.json") => {
                        text(StatusCode::OK, "application/json", settings)
                    }
                    (&Method::POST, "/drop-upstream") => {
                        let dropped = upstreams.drop_customer().await;
                        text(
                            StatusCode::OK,
                            "application/json",
                            format!("{{\"dropped\":{dropped}}}"),
                        )
                    }
                    _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
                }
            }
        },
    )
    .await;
}
