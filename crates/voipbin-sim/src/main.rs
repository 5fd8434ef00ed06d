//! `voipbin-sim`: run the VoIPBIN simulator as a process.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use voipbin_sim::{Shape, SimConfig, Simulator, World};

/// A faithful VoIPBIN WebSocket stand-in for tests, benchmarks and demos.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100", env = "VOIPBIN_SIM_LISTEN")]
    listen: SocketAddr,
    /// The shared HS256 secret tokens are signed with (VoIPBIN's JWT_KEY).
    #[arg(long, env = "VOIPBIN_SIM_JWT_SECRET")]
    jwt_secret: String,
    /// An access key and its customer, as `vb_KEY=CUSTOMER_UUID`; repeatable.
    #[arg(long = "accesskey", value_parser = parse_accesskey)]
    access_keys: Vec<(String, Uuid)>,
    /// The world to play: `tutorial` (envelopes, segment matching, error frames) or
    /// `voipbin` (VoIPBIN's server code today: bare objects, raw prefixes, a delivery per
    /// matching published topic, a dropped connection for a refused topic). The flags below
    /// change it further.
    #[arg(long, default_value = "tutorial")]
    world: World,
    /// Shape of event frames: envelope, webhook or bare (default: the world's).
    #[arg(long)]
    shape: Option<Shape>,
    /// Events per second of a random stream across known customers (0: none).
    #[arg(long, default_value_t = 0)]
    event_rate: u32,
    /// Quirk: take subscriptions as the real server does: raw string prefixes, checked for
    /// scope, owner and permission only, never answered, a refused one dropping the
    /// connection.
    #[arg(long)]
    quirk_raw_prefix: bool,
    /// Quirk: deliver an event once per published topic a connection's subscriptions match.
    #[arg(long)]
    quirk_double_delivery: bool,
    /// Quirk: drop the connection on a bad topic without a close frame; ignore bad JSON.
    #[arg(long)]
    quirk_close_on_bad_topic: bool,
    /// Interval between pings.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    ping_interval: Duration,
    /// Close a connection that sent nothing (not even a pong) for this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pong_timeout: Duration,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
    /// Serve wss:// (and https:// for the access-key check) with this certificate chain
    /// (PEM); plain connections on the same port are still served.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Require TLS clients to present a certificate issued by this CA (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<std::path::PathBuf>,
}

fn parse_accesskey(text: &str) -> Result<(String, Uuid), String> {
    let (key, customer) = text
        .split_once('=')
        .ok_or_else(|| "expected vb_KEY=CUSTOMER_UUID".to_owned())?;
    if !fanout_auth::accesskey::well_formed(key) {
        return Err("access keys look like vb_ followed by letters, digits, - or _".to_owned());
    }
    let customer = Uuid::try_parse(customer).map_err(|e| format!("customer: {e}"))?;
    Ok((key.to_owned(), customer))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let mut config = SimConfig::new(args.jwt_secret).in_world(args.world);
    config.access_keys = args.access_keys;
    if let Some(shape) = args.shape {
        config.shape = shape;
    }
    config.event_rate = args.event_rate;
    config.quirks.raw_prefix |= args.quirk_raw_prefix;
    config.quirks.double_delivery |= args.quirk_double_delivery;
    config.quirks.close_on_bad_topic |= args.quirk_close_on_bad_topic;
    config.ping_interval = args.ping_interval;
    config.pong_timeout = args.pong_timeout;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls = Some(voipbin_sim::tls_config(
            cert,
            key,
            args.tls_client_ca.as_deref(),
        )?);
    }
    let cancel = CancellationToken::new();
    let sim = Simulator::start(config, args.listen, cancel.clone())
        .await
        .with_context(|| format!("starting the simulator on {}", args.listen))?;
    tracing::info!(url = %sim.ws_url(), "VoIPBIN simulator listening");
    shutdown_signal().await;
    tracing::info!("Simulator stopping");
    cancel.cancel();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
