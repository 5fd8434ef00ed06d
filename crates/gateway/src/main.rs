//! `fanout-gateway`: the command line. `serve` runs a node, `demo` runs one in front of an
//! embedded simulator, `config default` prints the default configuration.

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fanout_gateway::config::{Config, LogFormat, Overrides};
use fanout_gateway::demo::{Demo, DemoOptions};
use fanout_gateway::{Gateway, telemetry};

/// A multi-tenant WebSocket fan-out gateway for VoIPBIN's front-end apps.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a gateway node.
    Serve(Box<ServeArgs>),
    /// Run the gateway in front of an embedded VoIPBIN simulator with a random event stream.
    Demo(DemoArgs),
    /// Serve the demo page alone, for gateways (a cluster behind a load balancer) in front
    /// of a simulator running on its own: what `scripts/cluster-demo` runs.
    DemoPage(DemoPageArgs),
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the default configuration as TOML.
    Default,
    /// Load and validate a configuration (file, environment, flags) and print it.
    Check(Box<ServeArgs>),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// A TOML configuration file.
    #[arg(long, env = "FANOUT_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the WebSocket listener [default: 127.0.0.1:8080].
    #[arg(long, env = "FANOUT_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address of the admin listener [default: 127.0.0.1:9090].
    #[arg(long, env = "FANOUT_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// VoIPBIN's WebSocket URL [default: wss://api.voipbin.net/v1.0/ws].
    #[arg(long, env = "FANOUT_UPSTREAM_URL")]
    upstream_url: Option<String>,
    /// How VoIPBIN matches subscriptions: prefix (its server code today) or segment (its
    /// tutorial) (also FANOUT_UPSTREAM__MATCHING) [default: prefix].
    #[arg(long)]
    upstream_matching: Option<fanout_protocol::prefix::Matching>,
    /// The HS256 secret browsers' JWTs are signed with (VoIPBIN's JWT_KEY).
    #[arg(long, env = "FANOUT_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// A service token for the upstream connections.
    #[arg(long, env = "FANOUT_UPSTREAM_TOKEN", hide_env_values = true)]
    upstream_token: Option<String>,
    /// A file of CUSTOMER_UUID=vb_KEY lines for the upstream connections.
    #[arg(long, env = "FANOUT_UPSTREAM_ACCESSKEYS")]
    upstream_accesskeys: Option<PathBuf>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "FANOUT_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Cluster mode: the NATS server (2.11 or later, with JetStream) the nodes share their
    /// customers over, nats://host:4222 (also FANOUT_CLUSTER__NATS_URL) [default: none,
    /// single node].
    #[arg(long)]
    cluster_nats: Option<String>,
    /// This node's name in the cluster (also FANOUT_CLUSTER__NODE_ID) [default: the host
    /// name].
    #[arg(long)]
    node_id: Option<String>,
    /// Serve wss://: the certificate chain (PEM), reloaded when the file changes or on
    /// SIGHUP.
    #[arg(long, env = "FANOUT_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "FANOUT_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) trusted for VoIPBIN's TLS besides the public roots (a private
    /// CA).
    #[arg(long, env = "FANOUT_UPSTREAM_CA")]
    upstream_ca: Option<PathBuf>,
    /// A client certificate (PEM) presented to VoIPBIN.
    #[arg(
        long,
        env = "FANOUT_UPSTREAM_CLIENT_CERT",
        requires = "upstream_client_key"
    )]
    upstream_client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "FANOUT_UPSTREAM_CLIENT_KEY",
        requires = "upstream_client_cert"
    )]
    upstream_client_key: Option<PathBuf>,
    /// The origins browsers may connect from, comma-separated: https://app.example.com,
    /// https://*.example.com [default: any].
    #[arg(long, env = "FANOUT_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Option<Vec<String>>,
    /// The bearer token the admin listener's /customers needs; prefer the variable, as a
    /// flag shows in the process list [default: none, /customers off].
    #[arg(long, env = "FANOUT_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Address of the gateway's WebSocket listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address of the gateway's admin listener.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
    /// Address of the embedded simulator.
    #[arg(long, default_value = "127.0.0.1:9100")]
    sim_listen: SocketAddr,
    /// Events per second of the simulator's random stream.
    #[arg(long, default_value_t = 5)]
    event_rate: u32,
    /// Address of the demo page.
    #[arg(long, default_value = "127.0.0.1:8000")]
    page_listen: SocketAddr,
    /// The world the embedded simulator plays: voipbin (VoIPBIN's server code today: bare
    /// objects, raw prefixes) or tutorial (the tutorial's envelopes and segment matching).
    #[arg(long, default_value = "voipbin")]
    world: voipbin_sim::World,
}

#[derive(Debug, clap::Args)]
struct DemoPageArgs {
    /// Address of the page.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// The WebSocket URL the page connects to (the load balancer's).
    #[arg(long)]
    ws_url: String,
    /// The secret the gateways check browsers' JWTs with.
    #[arg(long, env = "FANOUT_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// The simulator's address (its `/_sim/drop` drops the demo customer's upstream).
    #[arg(long)]
    sim: SocketAddr,
}

/// The exit code for a configuration that cannot be used (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

impl ServeArgs {
    fn load(&self) -> Result<Config, fanout_gateway::config::ConfigError> {
        let overrides = Overrides {
            listen: self.listen,
            admin_listen: self.admin_listen,
            upstream_url: self.upstream_url.clone(),
            upstream_matching: self.upstream_matching,
            jwt_secret: self.jwt_secret.clone(),
            upstream_token: self.upstream_token.clone(),
            upstream_accesskeys: self.upstream_accesskeys.clone(),
            log_format: self.log_format,
            cluster_nats: self.cluster_nats.clone(),
            node_id: self.node_id.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            upstream_ca: self.upstream_ca.clone(),
            upstream_client_cert: self.upstream_client_cert.clone(),
            upstream_client_key: self.upstream_client_key.clone(),
            allowed_origins: self.allowed_origins.clone(),
            admin_token: self.admin_token.clone(),
        };
        Config::load(self.config.as_deref(), std::env::vars(), &overrides)
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{}", Config::default_toml());
            ExitCode::SUCCESS
        }
        Command::Config {
            command: ConfigCommand::Check(args),
        } => match args.load() {
            Ok(mut config) => {
                // Never print secrets.
                if !config.jwt_secret.is_empty() {
                    config.jwt_secret = "<set>".into();
                }
                if !config.upstream.token.is_empty() {
                    config.upstream.token = "<set>".into();
                }
                if !config.admin.token.is_empty() {
                    config.admin.token = "<set>".into();
                }
                if !config.cluster.fleet_key.is_empty() {
                    config.cluster.fleet_key = "<set>".into();
                }
                if let Some(url) = &mut config.cluster.nats_url {
                    *url = fanout_cluster::bus::masked(url);
                }
                print!("{}", toml::to_string_pretty(&config).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{error}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Serve(args) => {
            let config = match args.load() {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("{error}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            telemetry::init_logs(config.log_format);
            let gateway = match Gateway::start(config).await {
                Ok(gateway) => gateway,
                Err(error) => {
                    tracing::error!(error = %format!("{error:#}"), "Gateway failed to start");
                    return ExitCode::FAILURE;
                }
            };
            shutdown_signal().await;
            gateway.shutdown().await;
            ExitCode::SUCCESS
        }
        Command::DemoPage(args) => {
            telemetry::init_logs(LogFormat::Text);
            let stop = tokio_util::sync::CancellationToken::new();
            match fanout_gateway::demo::serve_page_alone(
                args.listen,
                args.ws_url,
                &args.jwt_secret,
                args.sim,
                stop.clone(),
            )
            .await
            {
                Ok(addr) => tracing::info!(%addr, "Demo page listening"),
                Err(error) => {
                    eprintln!("demo page failed to start: {error:#}");
                    return ExitCode::FAILURE;
                }
            }
            shutdown_signal().await;
            stop.cancel();
            ExitCode::SUCCESS
        }
        Command::Demo(args) => {
            telemetry::init_logs(LogFormat::Text);
            let options = DemoOptions {
                listen: args.listen,
                admin_listen: args.admin_listen,
                sim_listen: args.sim_listen,
                event_rate: args.event_rate,
                page_listen: args.page_listen,
                world: args.world,
            };
            let demo = match Demo::start(&options).await {
                Ok(demo) => demo,
                Err(error) => {
                    eprintln!("demo failed to start: {error:#}");
                    return ExitCode::FAILURE;
                }
            };
            demo.print();
            shutdown_signal().await;
            demo.shutdown().await;
            ExitCode::SUCCESS
        }
    }
}
