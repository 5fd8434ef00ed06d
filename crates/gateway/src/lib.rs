//! fanout-gateway: wiring of the libraries into a running node.
//!
//! [`Gateway::start`] validates nothing (that is [`config::Config::load`]'s job), binds both
//! listeners, and runs until [`Gateway::shutdown`]:
//!
//! 1. readiness turns false and new handshakes get 503;
//! 2. after `shutdown.ready_delay` the listener stops accepting;
//! 3. every session is closed with 1001 and given `shutdown.drain_timeout` to go;
//! 4. every upstream connection is closed.
//!
//! - [`config`]: the configuration tree.
//! - [`registry`]: customers, hubs and upstreams (the sessions' [`fanout_session::Directory`]).
//! - [`server`]: the WebSocket and admin listeners.
//! - [`telemetry`]: logs and metrics.
//! - [`tls`]: the listener's certificate (reloaded on change) and the upstream's trust.
//! - [`demo`]: the embedded demo (`fanout-gateway demo`).

pub mod config;
pub mod demo;
pub use fanout_core::registry;
pub mod server;
pub mod telemetry;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use fanout_auth::accesskey::Cache;
use fanout_auth::{Authenticator, jwt};
use fanout_session::Endpoint;
use fanout_session::endpoint::AcceptLimits;
use fanout_upstream::backoff::Backoff;
use fanout_upstream::verifier::HttpVerifier;
use fanout_upstream::{Credentials, UpstreamConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use fanout_cluster::{ClusterFeeds, ClusterSettings};
use fanout_core::{Feeds, Registry, VoipbinFeeds};

/// A running gateway node.
pub struct Gateway {
    config: Config,
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
    endpoint: Arc<Endpoint>,
    registry: Arc<Registry>,
    feeds: Arc<dyn Feeds>,
    ready: Arc<AtomicBool>,
    /// Stops the listeners.
    accept: CancellationToken,
    /// Closes the upstreams.
    upstreams: CancellationToken,
    tasks: TaskTracker,
    /// The WebSocket listener, to shut down on shutdown.
    listener: std::net::TcpListener,
    /// The thread accepting on it.
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("local_addr", &self.local_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

/// Builds the upstream settings from the configuration.
///
/// # Errors
/// When the URL does not parse or the access-key file cannot be read.
pub fn upstream_config(config: &Config) -> anyhow::Result<UpstreamConfig> {
    let url: hyper::Uri = config
        .upstream
        .url
        .parse()
        .with_context(|| format!("upstream.url {:?}", config.upstream.url))?;
    let credentials = match &config.upstream.accesskeys_file {
        Some(path) => {
            Credentials::AccessKeys(config::read_accesskeys(path).map_err(anyhow::Error::msg)?)
        }
        None => Credentials::ServiceToken(config.upstream.token.clone()),
    };
    let mut upstream = UpstreamConfig::new(url, credentials);
    upstream.connect_timeout = config.upstream.connect_timeout;
    upstream.ping_interval = config.upstream.ping_interval;
    upstream.pong_timeout = config.upstream.pong_timeout;
    upstream.idle_timeout = config.upstream.idle_timeout;
    upstream.backoff = Backoff {
        base: config.upstream.backoff_base,
        cap: config.upstream.backoff_cap,
    };
    upstream.max_frame_bytes = config.upstream.max_frame_bytes;
    upstream.subscribe_settle = config.upstream.subscribe_settle;
    upstream.max_connections = config.upstream.max_connections_per_customer;
    upstream.tls = config::upstream_tls(&config.upstream).map_err(anyhow::Error::msg)?;
    Ok(upstream)
}

/// Cluster mode's settings from the configuration.
///
/// # Errors
/// When the fleet key cannot be had.
pub fn cluster_settings(config: &Config) -> anyhow::Result<ClusterSettings> {
    let cluster = &config.cluster;
    let key = cluster.fleet_key().map_err(anyhow::Error::msg)?;
    let mut settings = ClusterSettings::new(cluster.node_id(), key);
    settings.lease_ttl = cluster.lease_ttl;
    settings.lease_bucket = cluster.lease_bucket.clone();
    settings.owner_bucket = cluster.owner_bucket.clone();
    settings.interest_bucket = cluster.interest_bucket.clone();
    settings.interest_linger = cluster.interest_linger;
    settings.stream = cluster.stream.clone();
    settings.max_bytes = i64::try_from(cluster.log_max_bytes).unwrap_or(i64::MAX);
    settings.max_age = cluster.log_max_age;
    settings.batch_max_bytes = cluster.batch_max_bytes;
    // A node opening a customer reads the resume window's worth of history, and a margin.
    settings.catch_up = config.resume.max_age + Duration::from_secs(30);
    settings.request_timeout = cluster.request_timeout;
    settings.degraded_after = cluster.degraded_after;
    settings.replicas = cluster.replicas;
    Ok(settings)
}

/// Raises the soft descriptor limit to the hard one and answers how many connections the
/// WebSocket listener may hold: the limit less `reserved`, but at least a quarter of the
/// limit (so a small limit still serves; the reserve shrinks then, and the log says so).
pub fn connection_budget(reserved: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => match rlimit::getrlimit(rlimit::Resource::NOFILE) {
            // Not raised: the soft limit in force is the one to stay under.
            Ok((soft, _)) => {
                tracing::warn!(%error, soft, "Could not raise the descriptor limit");
                soft
            }
            Err(error) => {
                tracing::warn!(%error, "Could not read the descriptor limit; no descriptor budget");
                return usize::MAX;
            }
        },
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let budget = limit.saturating_sub(reserved).max(limit / 4);
    if limit.saturating_sub(budget) < reserved {
        tracing::warn!(
            descriptor_limit = limit,
            reserved,
            kept = limit - budget,
            "Descriptor limit too small for the reserve"
        );
    }
    metrics::gauge!("fanout_descriptor_limit").set(limit as f64);
    tracing::info!(
        descriptor_limit = limit,
        connection_budget = budget,
        "Descriptor budget"
    );
    budget
}

impl Gateway {
    /// Binds the listeners and starts serving.
    ///
    /// # Errors
    /// When a listener cannot be bound or the settings cannot be turned into components.
    pub async fn start(config: Config) -> anyhow::Result<Gateway> {
        telemetry::metrics_handle();
        let upstream = Arc::new(upstream_config(&config)?);
        let verifier = HttpVerifier::from_ws_url(
            &upstream.url,
            config.accesskeys.verify_timeout,
            &upstream.tls,
        )?;
        let auth = Authenticator::new(
            jwt::Verifier::new(config.jwt_secret.as_bytes())?,
            Arc::new(verifier),
            Cache::new(
                config.accesskeys.cache_ttl,
                config.accesskeys.negative_ttl,
                config.accesskeys.cache_entries,
            )
            .with_max_lookups(config.accesskeys.max_lookups),
        );
        let upstreams = CancellationToken::new();
        let accept = CancellationToken::new();
        let feeds: Arc<dyn Feeds> = match &config.cluster.nats_url {
            None => Arc::new(VoipbinFeeds::new(upstream)),
            Some(_) => Arc::new(
                ClusterFeeds::connect(
                    &config.cluster.bus(),
                    cluster_settings(&config)?,
                    upstream,
                    upstreams.clone(),
                )
                .await
                .context("cluster mode")?,
            ),
        };
        let registry = Registry::new(
            feeds.clone(),
            config.upstream.matching,
            config.upstream.linger,
            config.resume.limits(),
            config.resume.node_max_bytes,
            upstreams.clone(),
        );
        let origins = fanout_session::origin::Origins::parse(&config.allowed_origins)
            .map_err(|problems| anyhow::anyhow!(problems.join("; ")))?;
        let tls = match (&config.tls.cert_file, &config.tls.key_file) {
            (Some(cert), Some(key)) => {
                Some(tls::Reloading::load(cert, key).map_err(anyhow::Error::msg)?)
            }
            _ => None,
        };
        let mut endpoint = Endpoint::new(
            auth,
            config.session.clone(),
            AcceptLimits {
                max_sessions: config.limits.max_sessions,
                handshakes_per_second: config.limits.handshakes_per_second,
                handshake_burst: config.limits.handshake_burst,
                header_timeout: config.limits.header_timeout,
                max_pending: config.limits.max_pending,
                max_pending_per_source: config.limits.max_pending_per_source,
                max_connections: connection_budget(config.limits.reserved_descriptors),
                listener_configured: true,
            },
            registry.clone(),
        )
        .with_origins(origins);
        if let Some(resolver) = &tls {
            endpoint = endpoint
                .with_tls(tls::server_config(resolver.clone()).map_err(anyhow::Error::msg)?);
        }
        let endpoint = Arc::new(endpoint);
        metrics::gauge!("fanout_session_limit").set(config.limits.max_sessions as f64);
        let listener = server::bind(config.listen, config.limits.listen_backlog)
            .with_context(|| format!("binding listen address {}", config.listen))?;
        fanout_session::endpoint::configure_listener(&listener, &config.session);
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| format!("binding admin address {}", config.admin_listen))?;
        let local_addr = listener.local_addr()?;
        let admin_addr = admin.local_addr()?;
        let ready = Arc::new(AtomicBool::new(false));
        let tasks = TaskTracker::new();
        let acceptor = server::spawn_ws_acceptor(
            listener.try_clone()?,
            tokio::runtime::Handle::current(),
            endpoint.clone(),
            accept.clone(),
        )?;
        tasks.spawn(tls::watch(
            tls.clone(),
            tls::Hangups::listen(),
            config.tls.reload_interval,
            upstreams.clone(),
        ));
        tasks.spawn(server::sample_queues(endpoint.clone(), upstreams.clone()));
        tasks.spawn(server::serve_admin(
            admin,
            server::AdminState {
                ready: ready.clone(),
                endpoint: endpoint.clone(),
                registry: registry.clone(),
                unready_after: config.upstream.unready_after,
                token: (!config.admin.token.is_empty())
                    .then(|| Arc::from(config.admin.token.as_str())),
            },
            upstreams.clone(),
        ));
        ready.store(true, Ordering::SeqCst);
        tracing::info!(%local_addr, %admin_addr, tls = tls.is_some(), upstream = %config.upstream.url, "Gateway listening");
        Ok(Gateway {
            config,
            local_addr,
            admin_addr,
            endpoint,
            registry,
            feeds,
            ready,
            accept,
            upstreams,
            tasks,
            listener,
            acceptor: Some(acceptor),
        })
    }

    /// The WebSocket listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The customers' registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The WebSocket endpoint.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Shuts down gracefully (see the module docs) and returns when done.
    pub async fn shutdown(mut self) {
        let open = self.endpoint.open_sessions();
        tracing::info!(open_sessions = open, "Gateway draining");
        self.ready.store(false, Ordering::SeqCst);
        self.endpoint.drain();
        if !self.config.shutdown.ready_delay.is_zero() {
            tokio::time::sleep(self.config.shutdown.ready_delay).await;
        }
        self.accept.cancel();
        server::stop_accepting(&self.listener);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = tokio::task::spawn_blocking(move || acceptor.join()).await;
        }
        self.endpoint.shut_down();
        let tracker = self.endpoint.tracker();
        tracker.close();
        if tokio::time::timeout(self.config.shutdown.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.endpoint.open_sessions(),
                "Drain deadline passed with sessions open"
            );
        }
        self.registry.close_all();
        // A cluster owner hands its customers over before the node goes.
        // Draining the publisher, writing the term's end and releasing: a request each.
        let handoff = self.config.cluster.request_timeout * 3 + Duration::from_secs(1);
        if tokio::time::timeout(handoff, self.feeds.closed())
            .await
            .is_err()
        {
            tracing::warn!("Handing the customers over took too long");
        }
        self.upstreams.cancel();
        // Give upstream tasks a moment to send their close frames.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tasks.wait()).await;
        tracing::info!("Gateway stopped");
    }
}
