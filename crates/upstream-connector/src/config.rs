//! Where VoIPBIN is, how to authenticate to it, and the connection's timings.

use std::collections::HashMap;
use std::time::Duration;

use uuid::Uuid;

use crate::backoff::Backoff;

/// How the gateway authenticates its upstream connections (never with browsers' tokens).
#[derive(Clone)]
pub enum Credentials {
    /// One service token (a JWT that may subscribe to every customer's topics).
    ServiceToken(String),
    /// An access key per customer.
    AccessKeys(HashMap<Uuid, String>),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::ServiceToken(_) => f.write_str("ServiceToken(..)"),
            Credentials::AccessKeys(keys) => write!(f, "AccessKeys({} customers)", keys.len()),
        }
    }
}

/// The credential for one customer's connection.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// Sent as `Authorization: Bearer`.
    Token(String),
    /// Sent as the `accesskey` cookie.
    AccessKey(String),
}

impl Credentials {
    /// The credential for `customer`, if there is one.
    pub fn for_customer(&self, customer: Uuid) -> Option<Credential> {
        match self {
            Credentials::ServiceToken(token) => Some(Credential::Token(token.clone())),
            Credentials::AccessKeys(keys) => {
                keys.get(&customer).cloned().map(Credential::AccessKey)
            }
        }
    }
}

/// Everything an upstream connection needs.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The WebSocket URL, `ws://` or `wss://` (default `wss://api.voipbin.net/v1.0/ws`).
    pub url: hyper::Uri,
    /// How to authenticate.
    pub credentials: Credentials,
    /// TLS settings of `wss://` connections (roots, client certificate).
    pub tls: std::sync::Arc<rustls::ClientConfig>,
    /// Connect and handshake deadline.
    pub connect_timeout: Duration,
    /// How often the gateway pings the upstream.
    pub ping_interval: Duration,
    /// A ping that nothing answers within this long (VoIPBIN answers pings) means the
    /// connection is stalled: it is replaced. With `ping_interval`, a stall is noticed
    /// within their sum.
    pub pong_timeout: Duration,
    /// A connection that delivered nothing (not even a ping or pong) for this long is
    /// considered stalled and replaced.
    pub idle_timeout: Duration,
    /// A write that takes longer than this means the connection is stalled.
    pub write_timeout: Duration,
    /// Retry delays.
    pub backoff: Backoff,
    /// A connection that stayed up this long resets the back-off.
    pub stable_after: Duration,
    /// The largest frame accepted from upstream.
    pub max_frame_bytes: usize,
    /// How long after VoIPBIN answered the ping that follows a subscribe the subscription is
    /// taken as applied: the pong proves the subscribe was read, and VoIPBIN may apply it
    /// a little later (its message bus subscribes asynchronously).
    pub subscribe_settle: Duration,
    /// The most connections one customer's upstream may have: one per label in use.
    pub max_connections: usize,
    /// How long and how many events are remembered to collapse their copies.
    pub merge: crate::merge::MergeLimits,
}

impl UpstreamConfig {
    /// Defaults for everything but the URL and credentials.
    pub fn new(url: hyper::Uri, credentials: Credentials) -> Self {
        UpstreamConfig {
            url,
            credentials,
            tls: crate::connect::default_tls(),
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(5),
            pong_timeout: Duration::from_secs(8),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            backoff: Backoff {
                base: Duration::from_millis(200),
                cap: Duration::from_secs(5),
            },
            stable_after: Duration::from_secs(30),
            max_frame_bytes: 16 * 1024 * 1024,
            subscribe_settle: Duration::from_secs(1),
            max_connections: 16,
            merge: crate::merge::MergeLimits::default(),
        }
    }
}
