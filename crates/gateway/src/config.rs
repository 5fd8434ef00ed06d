//! The gateway's configuration: one serde tree, compiled-in defaults, then the TOML file,
//! then `FANOUT_*` environment variables, then flags. Every field is documented in
//! `docs/configuration.md` with its default; unknown keys are an error.
//!
//! Besides the named variables the flags read (`FANOUT_LISTEN`, …), any option can be set
//! from the environment by its path in upper case, sections joined by a double underscore:
//! `FANOUT_SESSION__PING_INTERVAL=5s` sets `[session] ping_interval`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fanout_protocol::prefix::Matching;
use fanout_session::SessionConfig;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the WebSocket listener. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Address of the admin listener (`/healthz`, `/readyz`, `/metrics`). Default `127.0.0.1:9090`.
    pub admin_listen: SocketAddr,
    /// The HS256 secret browsers' JWTs are signed with (VoIPBIN's `JWT_KEY`). Required.
    pub jwt_secret: String,
    /// Log format: `text` or `json`. Default `text`.
    pub log_format: LogFormat,
    /// The origins browsers may open sessions from: origins (`https://app.example.com`) and
    /// patterns (`https://*.example.com`, or `*.example.com` for https); a handshake with
    /// another `Origin` gets 403. Requests without `Origin` (clients that are not browsers)
    /// are not concerned. Default empty: every origin.
    pub allowed_origins: Vec<String>,
    /// TLS on the WebSocket listener (`wss://`).
    pub tls: TlsSection,
    /// The admin listener's protected endpoints.
    pub admin: AdminSection,
    /// How the upstream connections to VoIPBIN are made.
    pub upstream: UpstreamSection,
    /// How browsers' access keys are checked.
    pub accesskeys: AccessKeySection,
    /// Limits and timings of every session.
    pub session: SessionConfig,
    /// Limits on accepting sessions.
    pub limits: LimitsSection,
    /// Graceful shutdown.
    pub shutdown: ShutdownSection,
    /// What each customer's stream keeps for resuming clients.
    pub resume: ResumeSection,
    /// Cluster mode: several nodes, one upstream per customer for the fleet.
    pub cluster: ClusterSection,
}

/// `[cluster]`: nodes that share their customers over NATS (protocol.md §4). Without
/// `nats_url` the node runs alone (single-node mode).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// The NATS servers (≥ 2.11, JetStream enabled) of the cluster, comma-separated:
    /// `nats://host:4222`, `tls://host:4222`; credentials may be given in them
    /// (`nats://USER:PASSWORD@host`, `nats://TOKEN@host`) and are never printed. Default
    /// none: single-node mode.
    pub nats_url: Option<String>,
    /// The node's NATS credentials: a `.creds` file (user JWT and seed) or a file holding a
    /// user NKey seed. Default none.
    pub credentials_file: Option<PathBuf>,
    /// The CA (PEM) that signed the NATS servers' certificates; makes TLS required. Default
    /// none: the system's roots for `tls://`.
    pub ca_file: Option<PathBuf>,
    /// The node's client certificate (PEM) for NATS servers that verify clients. Default none.
    pub client_cert_file: Option<PathBuf>,
    /// Its private key (PEM). Default none.
    pub client_key_file: Option<PathBuf>,
    /// This node's name in the fleet (what `/customers` shows as an owner). Default the
    /// host name (the pod's name on Kubernetes).
    pub node_id: Option<String>,
    /// How long a node's lease lasts unless renewed (every third of it). A dead node's
    /// customers are taken over within it; below 10 s, NATS leader elections cause needless
    /// takeovers. Default `15s`.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// The key-value bucket of the node leases. Default `fanout_nodes`.
    pub lease_bucket: String,
    /// The key-value bucket of the customers' ownership records (who owns which customer,
    /// written only when that changes). Default `fanout_owners`.
    pub owner_bucket: String,
    /// The key-value bucket where each node says what its sessions need of each customer's
    /// upstream (the owner subscribes to the union). Default `fanout_interest`.
    pub interest_bucket: String,
    /// How long an owner keeps a prefix subscribed after no node needs it any more.
    /// Default `30s`.
    #[serde(with = "humantime_serde")]
    pub interest_linger: Duration,
    /// The JetStream stream of the fleet's event log. Default `FANOUT_EVENTS`.
    pub stream: String,
    /// Bytes the log keeps in all; the oldest go first. Default 1 GiB.
    pub log_max_bytes: u64,
    /// How long the log keeps a batch (it needs minutes: a node opening a customer reads
    /// the resume window's worth). Default `10m`.
    #[serde(with = "humantime_serde")]
    pub log_max_age: Duration,
    /// A batch of the log goes out as soon as none is in flight, or once it holds this
    /// many bytes. Default 262144.
    pub batch_max_bytes: usize,
    /// The key every node's records are authenticated with (at least 32 bytes), the same on
    /// every node of the fleet; required in cluster mode, here or in `fleet_key_file`.
    /// Never printed.
    pub fleet_key: String,
    /// A file holding the fleet key, one per line: the first signs, every one verifies (a
    /// new key is rolled out by adding it second on every node, then first, then removing
    /// the old). Default none.
    pub fleet_key_file: Option<PathBuf>,
    /// How long one NATS request may take. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long NATS may be unreachable before each node serves its own sessions from
    /// upstreams of its own (degraded mode, `cluster_degraded` gaps) until it is back.
    /// Default `5s`.
    #[serde(with = "humantime_serde")]
    pub degraded_after: Duration,
    /// Replicas of the log's stream and the buckets, when a node makes them (1 to 5; 3 on a
    /// NATS cluster of three). Existing ones are used as they are, never scaled down.
    /// Default 1.
    pub replicas: usize,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            nats_url: None,
            credentials_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            node_id: None,
            lease_ttl: Duration::from_secs(15),
            lease_bucket: "fanout_nodes".to_owned(),
            owner_bucket: "fanout_owners".to_owned(),
            interest_bucket: "fanout_interest".to_owned(),
            interest_linger: Duration::from_secs(30),
            stream: "FANOUT_EVENTS".to_owned(),
            log_max_bytes: 1 << 30,
            log_max_age: Duration::from_secs(600),
            batch_max_bytes: 256 * 1024,
            fleet_key: String::new(),
            fleet_key_file: None,
            request_timeout: Duration::from_secs(5),
            degraded_after: Duration::from_secs(5),
            replicas: 1,
        }
    }
}

impl ClusterSection {
    /// The fleet key, from `fleet_key` or `fleet_key_file`.
    ///
    /// # Errors
    /// Why none can be had (never the key itself).
    pub fn fleet_key(&self) -> Result<fanout_cluster::FleetKey, String> {
        match &self.fleet_key_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("cluster.fleet_key_file {}: {}", path.display(), e.kind())
                })?;
                fanout_cluster::FleetKey::from_lines(&text)
                    .map_err(|e| format!("cluster.fleet_key_file {}: {e}", path.display()))
            }
            None => fanout_cluster::FleetKey::new(&[self.fleet_key.as_bytes()])
                .map_err(|e| format!("cluster.fleet_key: {e}")),
        }
    }

    /// How this node reaches NATS.
    pub fn bus(&self) -> fanout_cluster::BusSettings {
        fanout_cluster::BusSettings {
            url: self.nats_url.clone().unwrap_or_default(),
            credentials_file: self.credentials_file.clone(),
            ca_file: self.ca_file.clone(),
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
        }
    }

    /// This node's id: `node_id`, else the host name.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "fanout-gateway".to_owned())
        })
    }
}

/// `[tls]`: the WebSocket listener serves `wss://` when both files are set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// The certificate chain, PEM, the server's certificate first. Default none (`ws://`).
    pub cert_file: Option<PathBuf>,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1). Default none.
    pub key_file: Option<PathBuf>,
    /// How often the files are checked for a new certificate (they are also reloaded on
    /// SIGHUP). Default `10s`.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            cert_file: None,
            key_file: None,
            reload_interval: Duration::from_secs(10),
        }
    }
}

/// `[admin]`: `/healthz`, `/readyz` and `/metrics` are open; `/customers`, which lists
/// every tenant, needs `Authorization: Bearer <token>`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// The bearer token `/customers` asks for. Default none: `/customers` answers 403.
    pub token: String,
}

/// `[resume]`: each customer's window of recent events (protocol.md §1.7).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ResumeSection {
    /// Events older than this are forgotten: a client away longer resumes with
    /// `recovered: false`. Default `2m`.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Bytes one customer's window keeps at most (events' data and frames). Default 4 MiB.
    pub max_bytes: usize,
    /// Events (and gaps) one customer's window keeps at most. Default 20000.
    pub max_events: usize,
    /// Bytes all customers' windows on the node keep together at most; past it, a growing
    /// window forgets its own oldest events. Default 512 MiB.
    pub node_max_bytes: usize,
}

impl Default for ResumeSection {
    fn default() -> Self {
        let window = fanout_session::window::WindowLimits::default();
        ResumeSection {
            max_age: window.max_age,
            max_bytes: window.max_bytes,
            max_events: window.max_entries,
            node_max_bytes: 512 * 1024 * 1024,
        }
    }
}

impl ResumeSection {
    /// One window's limits.
    pub fn limits(&self) -> fanout_session::window::WindowLimits {
        fanout_session::window::WindowLimits {
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            max_entries: self.max_events,
        }
    }
}

/// Log formats.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}: text or json")),
        }
    }
}

/// `[upstream]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSection {
    /// VoIPBIN's WebSocket URL. Default `wss://api.voipbin.net/v1.0/ws`.
    pub url: String,
    /// A service token used for every customer's connection. One of `token` and
    /// `accesskeys_file` is required.
    pub token: String,
    /// A file of `CUSTOMER_UUID=vb_KEY` lines: an access key per customer.
    pub accesskeys_file: Option<PathBuf>,
    /// How long a customer's connection stays open after its last session left. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Connect and handshake deadline. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Interval of the gateway's pings to VoIPBIN. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A ping that nothing answers within this long marks the connection stalled; it is
    /// replaced. A stall is noticed within `ping_interval` + `pong_timeout`. Default `8s`.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// A connection that delivers nothing at all for this long is replaced. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// First back-off ceiling between reconnects. Default `200ms`.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Largest back-off ceiling: after VoIPBIN comes back, every customer is reconnected
    /// within about this long (plus the connect time). Default `5s`.
    #[serde(with = "humantime_serde")]
    pub backoff_cap: Duration,
    /// `/readyz` answers 503 once the node has had customers but no working upstream for
    /// this long. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub unready_after: Duration,
    /// Largest frame accepted from VoIPBIN, in bytes. Default 16 MiB.
    pub max_frame_bytes: usize,
    /// CA certificates (PEM) trusted for VoIPBIN's TLS, besides the public roots: a private
    /// CA. Default none.
    pub ca_file: Option<PathBuf>,
    /// Whether the public (Mozilla) roots are trusted too; `false` trusts only `ca_file`.
    /// Default `true`.
    pub public_roots: bool,
    /// A client certificate chain (PEM) presented to VoIPBIN (mutual TLS). Default none.
    pub client_cert_file: Option<PathBuf>,
    /// Its private key (PEM). Default none.
    pub client_key_file: Option<PathBuf>,
    /// How long after VoIPBIN answers the ping that follows a subscribe the subscription is
    /// taken as applied, for resumes (VoIPBIN's message bus subscribes asynchronously).
    /// Default `1s`.
    #[serde(with = "humantime_serde")]
    pub subscribe_settle: Duration,
    /// How VoIPBIN matches a subscription: `prefix`, as its server code does today (a raw
    /// string prefix of each topic it publishes under, no wildcard), or `segment`, as its
    /// tutorial says (segment by segment, `*` a wildcard). Sessions' patterns are asked
    /// upstream in that language. Default `prefix`.
    pub matching: Matching,
    /// The most connections to VoIPBIN one customer may have on this node: one per kind of
    /// topic its sessions use (a resource, or a resource and an event type), never one per
    /// browser. A subscribe that would need more is refused with `upstream_limit`.
    /// Default 16.
    pub max_connections_per_customer: usize,
}

impl Default for UpstreamSection {
    fn default() -> Self {
        UpstreamSection {
            url: "wss://api.voipbin.net/v1.0/ws".to_owned(),
            token: String::new(),
            accesskeys_file: None,
            linger: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(5),
            pong_timeout: Duration::from_secs(8),
            idle_timeout: Duration::from_secs(30),
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(5),
            unready_after: Duration::from_secs(30),
            max_frame_bytes: 16 * 1024 * 1024,
            ca_file: None,
            public_roots: true,
            client_cert_file: None,
            client_key_file: None,
            subscribe_settle: Duration::from_secs(1),
            matching: Matching::Prefix,
            max_connections_per_customer: 16,
        }
    }
}

/// `[accesskeys]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AccessKeySection {
    /// How long a known key's answer is kept. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How long an unknown key's answer is kept. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// Answers kept at most. Default 100000.
    pub cache_entries: usize,
    /// Deadline of one check against VoIPBIN. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub verify_timeout: Duration,
    /// Checks against VoIPBIN in flight at once, across all keys (handshakes with a key
    /// already being checked wait for that check instead); past it handshakes with another
    /// unknown key get 429. Default 64.
    pub max_lookups: usize,
}

impl Default for AccessKeySection {
    fn default() -> Self {
        AccessKeySection {
            cache_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            cache_entries: 100_000,
            verify_timeout: Duration::from_secs(5),
            max_lookups: fanout_auth::accesskey::DEFAULT_MAX_LOOKUPS,
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Open sessions at most; more are refused with 429. Default 100000.
    pub max_sessions: usize,
    /// Handshakes per second on average; more are refused with 429. Default 50000.
    pub handshakes_per_second: u32,
    /// Handshakes in a burst. Default 50000.
    pub handshake_burst: u32,
    /// Deadline for a client to send its request headers. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// The listen backlog of the WebSocket listener (capped by the kernel's `somaxconn`).
    /// Default 4096.
    pub listen_backlog: u32,
    /// Connections accepted but not yet upgraded, at most; past it the oldest of them is
    /// closed to make room. Default 4096.
    pub max_pending: usize,
    /// Connections not yet upgraded from one source address, at most; past it new ones from
    /// that address are closed at accept. Behind a proxy that hides clients' addresses, all
    /// come from the proxy: raise it. Default 256.
    pub max_pending_per_source: usize,
    /// File descriptors kept out of the WebSocket listener's reach, for the admin listener,
    /// upstream connections (one per customer with sessions here) and access-key lookups:
    /// connections past the process's descriptor limit less this are closed at accept.
    /// Default 1024.
    pub reserved_descriptors: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_sessions: 100_000,
            handshakes_per_second: 50_000,
            handshake_burst: 50_000,
            header_timeout: Duration::from_secs(10),
            listen_backlog: 4096,
            max_pending: 4096,
            max_pending_per_source: 256,
            reserved_descriptors: 1024,
        }
    }
}

/// `[shutdown]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSection {
    /// After SIGTERM, how long the node reports not-ready before it closes sessions, so that
    /// load balancers stop sending it new ones. Default `0s`.
    #[serde(with = "humantime_serde")]
    pub ready_delay: Duration,
    /// How long sessions get to close (1001) before the process exits anyway. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        ShutdownSection {
            ready_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            jwt_secret: String::new(),
            log_format: LogFormat::Text,
            allowed_origins: Vec::new(),
            tls: TlsSection::default(),
            admin: AdminSection::default(),
            upstream: UpstreamSection::default(),
            accesskeys: AccessKeySection::default(),
            session: SessionConfig::default(),
            limits: LimitsSection::default(),
            shutdown: ShutdownSection::default(),
            resume: ResumeSection::default(),
            cluster: ClusterSection::default(),
        }
    }
}

/// Values given by flags (or their named environment variables); each overrides the rest.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--admin-listen`.
    pub admin_listen: Option<SocketAddr>,
    /// `--upstream-url`.
    pub upstream_url: Option<String>,
    /// `--upstream-matching`.
    pub upstream_matching: Option<Matching>,
    /// `--jwt-secret`.
    pub jwt_secret: Option<String>,
    /// `--upstream-token`.
    pub upstream_token: Option<String>,
    /// `--upstream-accesskeys`.
    pub upstream_accesskeys: Option<PathBuf>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--cluster-nats`.
    pub cluster_nats: Option<String>,
    /// `--node-id`.
    pub node_id: Option<String>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--upstream-ca`.
    pub upstream_ca: Option<PathBuf>,
    /// `--upstream-client-cert`.
    pub upstream_client_cert: Option<PathBuf>,
    /// `--upstream-client-key`.
    pub upstream_client_key: Option<PathBuf>,
    /// `--allowed-origins`.
    pub allowed_origins: Option<Vec<String>>,
    /// `--admin-token`.
    pub admin_token: Option<String>,
}

/// The upstream's TLS settings from `[upstream]`: the CA file's roots, the public roots
/// unless turned off, the client certificate if any.
///
/// # Errors
/// When a file does not load, only one of the client's files is set, or nothing is trusted.
pub fn upstream_tls(
    upstream: &UpstreamSection,
) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    let roots = match &upstream.ca_file {
        Some(path) => crate::tls::read_certificates(path)?,
        None => Vec::new(),
    };
    let client = match (&upstream.client_cert_file, &upstream.client_key_file) {
        (Some(cert), Some(key)) => Some((
            crate::tls::read_certificates(cert)?,
            crate::tls::read_key(key)?,
        )),
        (None, None) => None,
        _ => {
            return Err(
                "set both upstream.client_cert_file and upstream.client_key_file, or neither"
                    .to_owned(),
            );
        }
    };
    if !upstream.public_roots && upstream.ca_file.is_none() {
        return Err("upstream.public_roots = false needs upstream.ca_file".to_owned());
    }
    fanout_upstream::connect::client_tls(&roots, upstream.public_roots, client)
}

/// The configuration could not be loaded or is invalid; every problem is listed.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(overlay)) => merge(base, overlay),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The overlay of `FANOUT_SECTION__KEY=value` variables.
fn env_overlay(vars: impl IntoIterator<Item = (String, String)>) -> toml::Table {
    let mut overlay = toml::Table::new();
    for (name, value) in vars {
        let Some(path) = name.strip_prefix("FANOUT_") else {
            continue;
        };
        if !path.contains("__") {
            continue;
        }
        let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        // A value is read as TOML (numbers, booleans, quoted strings), else taken as a string.
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        // Nest from the inside out, then merge, so `A__B=1` and `A__C=2` share section A.
        let mut value = parsed;
        for key in keys.iter().rev() {
            let mut table = toml::Table::new();
            table.insert(key.clone(), value);
            value = toml::Value::Table(table);
        }
        if let toml::Value::Table(table) = value {
            merge(&mut overlay, table);
        }
    }
    overlay
}

impl Config {
    /// Loads defaults, then `file`, then the environment, then `overrides`, and validates
    /// the result.
    ///
    /// # Errors
    /// [`ConfigError`] listing every problem: an unreadable file, unknown keys, bad values.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut tree = toml::Table::try_from(Config::default())
            .map_err(|e| ConfigError(vec![format!("defaults: {e}")]))?;
        if let Some(file) = file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| ConfigError(vec![format!("{}: {e}", file.display())]))?;
            let table: toml::Table = text
                .parse()
                .map_err(|e| ConfigError(vec![format!("{}: {e}", file.display())]))?;
            merge(&mut tree, table);
        }
        merge(&mut tree, env_overlay(env));
        let mut config: Config = toml::Value::Table(tree)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(vec![e.message().to_owned()]))?;
        let o = overrides.clone();
        if let Some(v) = o.listen {
            config.listen = v;
        }
        if let Some(v) = o.admin_listen {
            config.admin_listen = v;
        }
        if let Some(v) = o.upstream_url {
            config.upstream.url = v;
        }
        if let Some(v) = o.upstream_matching {
            config.upstream.matching = v;
        }
        if let Some(v) = o.jwt_secret {
            config.jwt_secret = v;
        }
        if let Some(v) = o.upstream_token {
            config.upstream.token = v;
        }
        if let Some(v) = o.upstream_accesskeys {
            config.upstream.accesskeys_file = Some(v);
        }
        if let Some(v) = o.log_format {
            config.log_format = v;
        }
        if let Some(v) = o.cluster_nats {
            config.cluster.nats_url = Some(v);
        }
        if let Some(v) = o.node_id {
            config.cluster.node_id = Some(v);
        }
        if let Some(v) = o.tls_cert {
            config.tls.cert_file = Some(v);
        }
        if let Some(v) = o.tls_key {
            config.tls.key_file = Some(v);
        }
        if let Some(v) = o.upstream_ca {
            config.upstream.ca_file = Some(v);
        }
        if let Some(v) = o.upstream_client_cert {
            config.upstream.client_cert_file = Some(v);
        }
        if let Some(v) = o.upstream_client_key {
            config.upstream.client_key_file = Some(v);
        }
        if let Some(v) = o.allowed_origins {
            config.allowed_origins = v;
        }
        if let Some(v) = o.admin_token {
            config.admin.token = v;
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every rule and lists every violation.
    ///
    /// # Errors
    /// [`ConfigError`] with one line per problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.jwt_secret.is_empty() {
            problems.push("jwt_secret is required (--jwt-secret or FANOUT_JWT_SECRET)".to_owned());
        }
        match self.upstream.url.parse::<hyper::Uri>() {
            Ok(uri) if matches!(uri.scheme_str(), Some("ws" | "wss")) && uri.host().is_some() => {}
            _ => problems.push(format!(
                "upstream.url {:?} is not a ws:// or wss:// URL",
                self.upstream.url
            )),
        }
        match (self.upstream.token.is_empty(), &self.upstream.accesskeys_file) {
            (true, None) => problems.push(
                "an upstream credential is required: upstream.token (--upstream-token) or upstream.accesskeys_file (--upstream-accesskeys)"
                    .to_owned(),
            ),
            (false, Some(_)) => problems.push("set only one of upstream.token and upstream.accesskeys_file".to_owned()),
            (true, Some(path)) => {
                if let Err(e) = read_accesskeys(path) {
                    problems.push(e);
                }
            }
            (false, None) => {}
        }
        let positive = [
            ("session.ping_interval", self.session.ping_interval),
            ("session.pong_timeout", self.session.pong_timeout),
            ("session.close_timeout", self.session.close_timeout),
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("upstream.ping_interval", self.upstream.ping_interval),
            ("upstream.pong_timeout", self.upstream.pong_timeout),
            ("upstream.unready_after", self.upstream.unready_after),
            ("upstream.idle_timeout", self.upstream.idle_timeout),
            ("upstream.backoff_base", self.upstream.backoff_base),
            ("accesskeys.verify_timeout", self.accesskeys.verify_timeout),
            ("limits.header_timeout", self.limits.header_timeout),
            ("resume.max_age", self.resume.max_age),
            ("cluster.request_timeout", self.cluster.request_timeout),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                problems.push(format!("{name} must be more than zero"));
            }
        }
        if let Err(errors) = fanout_session::origin::Origins::parse(&self.allowed_origins) {
            problems.extend(errors);
        }
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(cert), Some(key)) => {
                if let Err(e) = crate::tls::load_pair(cert, key) {
                    problems.push(format!("tls: {e}"));
                }
            }
            (None, None) => {}
            _ => problems.push(
                "set both tls.cert_file and tls.key_file (--tls-cert, --tls-key), or neither"
                    .to_owned(),
            ),
        }
        if self.tls.reload_interval.is_zero() {
            problems.push("tls.reload_interval must be more than zero".to_owned());
        }
        if let Err(e) = upstream_tls(&self.upstream) {
            problems.push(format!("upstream TLS: {e}"));
        }
        if self.cluster.lease_ttl < Duration::from_secs(1) {
            problems.push("cluster.lease_ttl must be at least 1s".to_owned());
        }
        if self.cluster.interest_linger < Duration::from_secs(1) {
            problems.push("cluster.interest_linger must be at least 1s".to_owned());
        }
        if self.cluster.nats_url.is_some() {
            match (self.cluster.fleet_key.is_empty(), &self.cluster.fleet_key_file) {
                (true, None) => problems.push(
                    "cluster.fleet_key (FANOUT_CLUSTER__FLEET_KEY) or cluster.fleet_key_file is required in cluster mode".to_owned(),
                ),
                (false, Some(_)) => problems.push(
                    "set only one of cluster.fleet_key and cluster.fleet_key_file".to_owned(),
                ),
                (false, None) => {
                    if let Err(e) = fanout_cluster::FleetKey::new(&[self.cluster.fleet_key.as_bytes()]) {
                        problems.push(format!("cluster.fleet_key: {e}"));
                    }
                }
                (true, Some(_)) => {}
            }
        }
        if self.cluster.nats_url.is_some()
            && let Err(e) = self.cluster.bus().check()
        {
            problems.push(format!("cluster: {e}"));
        }
        if !(1..=5).contains(&self.cluster.replicas) {
            problems.push("cluster.replicas must be 1 to 5".to_owned());
        }
        if self.cluster.node_id.as_deref().is_some_and(str::is_empty) {
            problems.push("cluster.node_id must not be empty".to_owned());
        }
        if !(1024..=16 << 20).contains(&self.cluster.batch_max_bytes) {
            problems.push("cluster.batch_max_bytes must be 1 KiB to 16 MiB".to_owned());
        }
        if self.upstream.backoff_cap < self.upstream.backoff_base {
            problems.push("upstream.backoff_cap must be at least upstream.backoff_base".to_owned());
        }
        let counts = [
            ("session.max_message_bytes", self.session.max_message_bytes),
            ("session.max_topics", self.session.max_topics),
            ("session.queue_frames", self.session.queue_frames),
            ("session.queue_bytes", self.session.queue_bytes),
            ("limits.max_sessions", self.limits.max_sessions),
            ("limits.max_pending", self.limits.max_pending),
            (
                "limits.max_pending_per_source",
                self.limits.max_pending_per_source,
            ),
            ("upstream.max_frame_bytes", self.upstream.max_frame_bytes),
            (
                "upstream.max_connections_per_customer",
                self.upstream.max_connections_per_customer,
            ),
            ("accesskeys.cache_entries", self.accesskeys.cache_entries),
            ("accesskeys.max_lookups", self.accesskeys.max_lookups),
        ];
        for (name, value) in counts {
            if value == 0 {
                problems.push(format!("{name} must be more than zero"));
            }
        }
        let budgets = [
            ("session.frames_per_second", self.session.frames_per_second),
            ("session.frame_burst", self.session.frame_burst),
            ("session.bytes_per_second", self.session.bytes_per_second),
        ];
        for (name, value) in budgets {
            if value == 0 {
                problems.push(format!("{name} must be more than zero"));
            }
        }
        let frame_max = self.session.max_message_bytes.saturating_add(14);
        if (self.session.byte_burst as usize) < frame_max {
            problems.push(format!(
                "session.byte_burst must be at least session.max_message_bytes + 14 ({frame_max}), or no message of the largest size could be read"
            ));
        }
        if self.session.messages_per_second == 0 || self.session.message_burst == 0 {
            problems.push(
                "session.messages_per_second and session.message_burst must be more than zero"
                    .to_owned(),
            );
        }
        if self.limits.handshakes_per_second == 0 || self.limits.handshake_burst == 0 {
            problems.push(
                "limits.handshakes_per_second and limits.handshake_burst must be more than zero"
                    .to_owned(),
            );
        }
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            problems.push("listen and admin_listen must differ".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(problems))
        }
    }

    /// The defaults as TOML (`fanout-gateway config default`).
    pub fn default_toml() -> String {
        toml::to_string_pretty(&Config::default()).unwrap_or_default()
    }
}

/// Reads an access-key file: `CUSTOMER_UUID=vb_KEY` per line, `#` comments and blank lines
/// ignored.
///
/// # Errors
/// A message naming the file and line of the first problem.
pub fn read_accesskeys(path: &Path) -> Result<HashMap<Uuid, String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut keys = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let place = format!("{}:{}", path.display(), number + 1);
        let (customer, key) = line
            .split_once('=')
            .ok_or_else(|| format!("{place}: expected CUSTOMER_UUID=vb_KEY"))?;
        let customer = Uuid::try_parse(customer.trim())
            .map_err(|_| format!("{place}: not a customer uuid"))?;
        let key = key.trim();
        if !fanout_auth::accesskey::well_formed(key) {
            // The key itself is never echoed.
            return Err(format!("{place}: not an access key (vb_…)"));
        }
        keys.insert(customer, key.to_owned());
    }
    if keys.is_empty() {
        return Err(format!("{}: no access keys", path.display()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_credentials() -> Overrides {
        Overrides {
            jwt_secret: Some("s".into()),
            upstream_token: Some("t".into()),
            ..Overrides::default()
        }
    }

    #[test]
    fn defaults_need_a_secret_and_a_credential() {
        let err = Config::load(None, [], &Overrides::default()).expect_err("incomplete");
        assert_eq!(err.0.len(), 2, "{err}");
        let config = Config::load(None, [], &with_credentials()).expect("complete");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(config.upstream.url, "wss://api.voipbin.net/v1.0/ws");
        assert_eq!(config.session.ping_interval, Duration::from_secs(10));
        assert_eq!(config.session.pong_timeout, Duration::from_secs(60));
    }

    #[test]
    fn the_new_limits_are_checked() {
        let env = [
            (
                "FANOUT_SESSION__MAX_MESSAGE_BYTES".to_owned(),
                "65536".to_owned(),
            ),
            ("FANOUT_SESSION__BYTE_BURST".to_owned(), "65549".to_owned()),
            (
                "FANOUT_SESSION__FRAMES_PER_SECOND".to_owned(),
                "0".to_owned(),
            ),
            ("FANOUT_LIMITS__MAX_PENDING".to_owned(), "0".to_owned()),
            ("FANOUT_UPSTREAM__PONG_TIMEOUT".to_owned(), "0s".to_owned()),
            ("FANOUT_ACCESSKEYS__MAX_LOOKUPS".to_owned(), "0".to_owned()),
            (
                "FANOUT_CLUSTER__INTEREST_LINGER".to_owned(),
                "0s".to_owned(),
            ),
        ];
        let err = Config::load(None, env, &with_credentials()).expect_err("invalid");
        let text = err.to_string();
        for name in [
            "session.byte_burst",
            "session.frames_per_second",
            "limits.max_pending",
            "upstream.pong_timeout",
            "accesskeys.max_lookups",
            "cluster.interest_linger",
        ] {
            assert!(text.contains(name), "{name} not reported: {text}");
        }
        assert_eq!(err.0.len(), 6, "{text}");
        // A burst that fits the largest message (and its 14 bytes of framing) is fine.
        let env = [("FANOUT_SESSION__BYTE_BURST".to_owned(), "65550".to_owned())];
        Config::load(None, env, &with_credentials()).expect("valid");
    }

    #[test]
    fn cluster_mode_needs_a_fleet_key_of_32_bytes_and_never_prints_it() {
        let url = (
            "FANOUT_CLUSTER__NATS_URL".to_owned(),
            "nats://u:p@h:4222".to_owned(),
        );
        let err = Config::load(None, [url.clone()], &with_credentials()).expect_err("no key");
        assert!(err.to_string().contains("cluster.fleet_key"), "{err}");
        let short = (
            "FANOUT_CLUSTER__FLEET_KEY".to_owned(),
            "too-short-key".to_owned(),
        );
        let err =
            Config::load(None, [url.clone(), short], &with_credentials()).expect_err("short key");
        assert!(err.to_string().contains("32 bytes"), "{err}");
        assert!(!err.to_string().contains("too-short-key"), "{err}");
        let good = (
            "FANOUT_CLUSTER__FLEET_KEY".to_owned(),
            "a-fleet-key-of-at-least-thirty-two-bytes".to_owned(),
        );
        let config =
            Config::load(None, [url.clone(), good.clone()], &with_credentials()).expect("valid");
        assert!(config.cluster.fleet_key().is_ok());
        let file = std::env::temp_dir().join(format!("fanout-fleet-{}", Uuid::new_v4()));
        std::fs::write(&file, "# keys\na-fleet-key-of-at-least-thirty-two-bytes\n").expect("write");
        let from_file = (
            "FANOUT_CLUSTER__FLEET_KEY_FILE".to_owned(),
            file.display().to_string(),
        );
        let err = Config::load(
            None,
            [url.clone(), good, from_file.clone()],
            &with_credentials(),
        )
        .expect_err("two sources");
        assert!(err.to_string().contains("only one"), "{err}");
        let config =
            Config::load(None, [url, from_file], &with_credentials()).expect("from a file");
        assert!(config.cluster.fleet_key().is_ok());
        let _ = std::fs::remove_file(file);
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = std::env::temp_dir().join(format!("fanout-config-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("gateway.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1000\"\n[session]\nping_interval = \"3s\"\nmax_topics = 7\n",
        )
        .expect("write");
        let env = [
            ("FANOUT_SESSION__MAX_TOPICS".to_owned(), "9".to_owned()),
            ("FANOUT_UPSTREAM__LINGER".to_owned(), "2s".to_owned()),
            ("OTHER".to_owned(), "x".to_owned()),
        ];
        let mut flags = with_credentials();
        flags.listen = Some("127.0.0.1:2000".parse().expect("addr"));
        let config = Config::load(Some(&file), env, &flags).expect("valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:2000");
        assert_eq!(config.session.ping_interval, Duration::from_secs(3));
        assert_eq!(config.session.max_topics, 9);
        assert_eq!(config.upstream.linger, Duration::from_secs(2));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_all_reported() {
        let dir = std::env::temp_dir().join(format!("fanout-config-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("gateway.toml");
        std::fs::write(&file, "[session]\nping_intervall = \"3s\"\n").expect("write");
        let err = Config::load(Some(&file), [], &with_credentials()).expect_err("unknown key");
        assert!(err.to_string().contains("ping_intervall"), "{err}");
        let env = [
            ("FANOUT_SESSION__MAX_TOPICS".to_owned(), "0".to_owned()),
            ("FANOUT_UPSTREAM__URL".to_owned(), "http://x/".to_owned()),
        ];
        let err = Config::load(None, env, &with_credentials()).expect_err("invalid");
        assert_eq!(err.0.len(), 2, "{err}");
    }

    #[test]
    fn accesskey_files() {
        let dir = std::env::temp_dir().join(format!("fanout-keys-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let good = dir.join("good");
        std::fs::write(
            &good,
            "# keys\n12345678-1234-1234-1234-123456789012 = vb_0123456789abcdefghijklmnopqrstuv\n\n",
        )
        .expect("write");
        let keys = read_accesskeys(&good).expect("valid");
        assert_eq!(keys.len(), 1);
        let bad = dir.join("bad");
        std::fs::write(
            &bad,
            "12345678-1234-1234-1234-123456789012=secret-not-a-key\n",
        )
        .expect("write");
        let err = read_accesskeys(&bad).expect_err("invalid");
        assert!(
            err.contains(":1:") && !err.contains("secret-not-a-key"),
            "{err}"
        );
    }

    #[test]
    fn default_toml_round_trips() {
        let text = Config::default_toml();
        let parsed: Config = toml::from_str(&text).expect("parses");
        assert_eq!(parsed, Config::default());
    }
}
