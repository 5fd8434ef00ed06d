//! The simulator's settings.

use std::str::FromStr;
use std::time::Duration;

use uuid::Uuid;

/// The shape events are sent in (protocol.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    /// `{"event_type","timestamp","topic","data"}`, the tutorial's envelope.
    #[default]
    Envelope,
    /// `{"type","data"}`, VoIPBIN's webhook shape.
    Webhook,
    /// The bare resource object.
    Bare,
}

impl FromStr for Shape {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "envelope" => Ok(Shape::Envelope),
            "webhook" => Ok(Shape::Webhook),
            "bare" => Ok(Shape::Bare),
            other => Err(format!(
                "unknown shape {other:?}: envelope, webhook or bare"
            )),
        }
    }
}

/// The real server's quirks, each off by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quirks {
    /// Subscriptions as VoIPBIN's code takes them: the text as sent, matched as a raw
    /// string prefix of each published topic (`…:queue` matches `…:queuecall:…`; `*` is an
    /// ordinary character, so `…:call:*` matches nothing), and handled as VoIPBIN handles a
    /// message: checked only for the scope, the owner and the permission table (anything
    /// after the owner is accepted, a trailing `:` included), never answered, a refused topic
    /// dropping the connection without a close frame, bad JSON and unknown types ignored.
    pub raw_prefix: bool,
    /// Deliver an event once per published topic that one of a connection's subscriptions
    /// matches, as VoIPBIN does: `customer_id:C:call` gets each call event twice (under
    /// `…:call:<id>` and `…:call:<event_type>:<id>`).
    pub double_delivery: bool,
    /// Close the connection without a close frame on an invalid or forbidden topic, and
    /// ignore bad JSON, instead of answering with an error frame (implied by `raw_prefix`).
    pub close_on_bad_topic: bool,
}

/// Which of its two worlds the simulator plays (docs/protocol.md §13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum World {
    /// VoIPBIN's tutorial: envelopes with their type and topic, segment matching, one
    /// delivery per event, error frames.
    #[default]
    Tutorial,
    /// VoIPBIN's server code as it is today: bare objects, raw prefixes, a delivery per
    /// matching published topic, no error frames.
    Voipbin,
}

impl World {
    /// Both worlds, for tests that run in each.
    pub const ALL: [World; 2] = [World::Tutorial, World::Voipbin];

    /// Its name (`tutorial`, `voipbin`).
    pub fn as_str(self) -> &'static str {
        match self {
            World::Tutorial => "tutorial",
            World::Voipbin => "voipbin",
        }
    }

    /// How a gateway asks this world's VoIPBIN for events: raw prefixes in VoIPBIN's,
    /// segment by segment in the tutorial's.
    pub fn matching(self) -> fanout_protocol::prefix::Matching {
        match self {
            World::Tutorial => fanout_protocol::prefix::Matching::Segment,
            World::Voipbin => fanout_protocol::prefix::Matching::Prefix,
        }
    }

    /// The shape and quirks of the world.
    pub fn shape_and_quirks(self) -> (Shape, Quirks) {
        match self {
            World::Tutorial => (Shape::Envelope, Quirks::default()),
            World::Voipbin => (
                Shape::Bare,
                Quirks {
                    raw_prefix: true,
                    double_delivery: true,
                    close_on_bad_topic: true,
                },
            ),
        }
    }
}

impl FromStr for World {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tutorial" => Ok(World::Tutorial),
            "voipbin" => Ok(World::Voipbin),
            other => Err(format!("unknown world {other:?}: tutorial or voipbin")),
        }
    }
}

/// Everything the simulator needs to run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The shared JWT secret (VoIPBIN's `JWT_KEY`).
    pub jwt_secret: String,
    /// Access keys and the customers they stand for.
    pub access_keys: Vec<(String, Uuid)>,
    /// The shape events are sent in.
    pub shape: Shape,
    /// Events per second of the random stream; 0 for none.
    pub event_rate: u32,
    /// Quirks of the real server.
    pub quirks: Quirks,
    /// How often connections are pinged.
    pub ping_interval: Duration,
    /// How long a connection may go without a pong (or any frame) before it is closed.
    pub pong_timeout: Duration,
    /// The largest client message accepted.
    pub max_message: usize,
    /// Frames queued per connection before further events to it are dropped (the real
    /// server buffers 2000).
    pub queue_capacity: usize,
    /// Agents (customer, agent) the random stream gives calls and messages to, besides the
    /// agents connected to the simulator itself.
    pub known_agents: Vec<(Uuid, Uuid)>,
    /// How long `GET /v1.0/customer` takes to answer: a slow VoIPBIN. Default none.
    pub lookup_delay: Duration,
    /// TLS settings: connections that open with a TLS handshake are served over TLS (the
    /// endpoint is then `wss://`, and `https://` for the access-key check); plain ones on
    /// the same port still are served plainly. Default none.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

impl SimConfig {
    /// Plays `world`: its shape and quirks.
    pub fn in_world(mut self, world: World) -> Self {
        (self.shape, self.quirks) = world.shape_and_quirks();
        self
    }

    /// The world its shape and quirks are, or `custom`.
    pub fn world_name(&self) -> &'static str {
        World::ALL
            .into_iter()
            .find(|w| w.shape_and_quirks() == (self.shape, self.quirks))
            .map_or("custom", World::as_str)
    }

    /// Defaults for everything but the secret.
    pub fn new(jwt_secret: impl Into<String>) -> Self {
        SimConfig {
            jwt_secret: jwt_secret.into(),
            access_keys: Vec::new(),
            shape: Shape::default(),
            event_rate: 0,
            quirks: Quirks::default(),
            ping_interval: Duration::from_secs(10),
            pong_timeout: Duration::from_secs(60),
            max_message: 64 * 1024,
            queue_capacity: 65_536,
            known_agents: Vec::new(),
            lookup_delay: Duration::ZERO,
            tls: None,
        }
    }
}

/// TLS settings for the simulator from PEM files: its certificate chain and key, and, when
/// `client_ca` is given, client certificates required and checked against that CA.
///
/// # Errors
/// When a file does not load or rustls refuses the settings.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> anyhow::Result<std::sync::Arc<rustls::ServerConfig>> {
    use anyhow::Context as _;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| cert.display().to_string())?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| cert.display().to_string())?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| key.display().to_string())?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in
                CertificateDer::pem_file_iter(path).with_context(|| path.display().to_string())?
            {
                roots.add(ca.with_context(|| path.display().to_string())?)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                provider,
            )
            .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    Ok(std::sync::Arc::new(builder.with_single_cert(chain, key)?))
}
