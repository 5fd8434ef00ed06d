//! Logs (`tracing`, text or JSON) and metrics (Prometheus text from the admin listener).
//!
//! Every metric the node exports is described in [`METRICS`] (its `# HELP` line) and present
//! from start-up, at zero, for its usual label values: dashboards and alert rules see a
//! series before the first event, not a missing one. Process metrics (CPU, memory, open
//! descriptors against the limit) come from the `metrics-process` crate at each scrape.

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::LogFormat;

/// Installs the log subscriber (`RUST_LOG` filters; default `info`).
pub fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = match format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .try_init(),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_ansi(std::io::stdout().is_terminal())
            .with_env_filter(filter)
            .try_init(),
    };
}

/// A metric's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution in buckets.
    Histogram,
}

/// One exported metric: its name, kind, help text, and the label sets it starts with
/// (at zero). An empty list starts the unlabelled series.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The metric's name.
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Its `# HELP` line.
    pub help: &'static str,
    /// The label (name, values) it starts with at zero, if any.
    pub starts: Option<(&'static str, &'static [&'static str])>,
}

const fn metric(name: &'static str, kind: Kind, help: &'static str) -> Metric {
    Metric {
        name,
        kind,
        help,
        starts: None,
    }
}

const fn labelled(
    name: &'static str,
    kind: Kind,
    help: &'static str,
    label: &'static str,
    values: &'static [&'static str],
) -> Metric {
    Metric {
        name,
        kind,
        help,
        starts: Some((label, values)),
    }
}

use Kind::{Counter, Gauge, Histogram};

/// Every metric of the gateway's own (process metrics aside).
pub const METRICS: &[Metric] = &[
    // Sessions.
    metric("fanout_sessions", Gauge, "Browser sessions open now."),
    metric(
        "fanout_session_limit",
        Gauge,
        "Sessions the node takes at most (limits.max_sessions); more are refused with 429.",
    ),
    metric(
        "fanout_sessions_opened_total",
        Counter,
        "Sessions opened (handshakes answered 101).",
    ),
    labelled(
        "fanout_sessions_closed_total",
        Counter,
        "Sessions closed, by reason (too_slow: its queue overflowed; flood: it sent too much).",
        "reason",
        &[
            "client_closed",
            "connection_lost",
            "shutdown",
            "pong_timeout",
            "token_expired",
            "too_slow",
            "flood",
        ],
    ),
    metric(
        "fanout_slow_consumers_total",
        Counter,
        "Sessions closed because they did not read their events fast enough.",
    ),
    metric(
        "fanout_bytes_written_total",
        Counter,
        "Bytes written to browsers' sockets (WebSocket frames, before TLS), added 64 KiB at a time per session and the rest when it ends.",
    ),
    metric(
        "fanout_session_queue_frames",
        Histogram,
        "Frames waiting in each open session's queue, sampled every few seconds.",
    ),
    metric(
        "fanout_pending_connections",
        Gauge,
        "Connections accepted whose WebSocket handshake has not finished.",
    ),
    labelled(
        "fanout_connections_refused_total",
        Counter,
        "Connections closed at accept, before any byte was read, by reason.",
        "reason",
        &[
            "source_cap",
            "pending_cap",
            "descriptors",
            "pending_evicted",
            "handshake_rate",
        ],
    ),
    labelled(
        "fanout_handshakes_refused_total",
        Counter,
        "Upgrade requests answered with an HTTP error, by reason.",
        "reason",
        &[
            "missing",
            "expired",
            "signature",
            "unavailable",
            "origin",
            "max_sessions",
            "handshake_rate",
            "draining",
        ],
    ),
    labelled(
        "fanout_tls_handshake_failures_total",
        Counter,
        "Browser connections whose TLS handshake failed, by reason.",
        "reason",
        &[
            "timeout",
            "protocol",
            "eof",
            "certificate_rejected",
            "incompatible",
        ],
    ),
    labelled(
        "fanout_tls_reloads_total",
        Counter,
        "Reloads of the listener's certificate and key, by outcome.",
        "outcome",
        &["ok", "error"],
    ),
    metric(
        "fanout_tls_certificate_expiry_timestamp_seconds",
        Gauge,
        "When the listener's certificate expires (its notAfter, Unix seconds); 0 without TLS.",
    ),
    metric(
        "fanout_accept_errors_total",
        Counter,
        "Accept calls that failed (typically out of descriptors).",
    ),
    metric(
        "fanout_descriptor_limit",
        Gauge,
        "The process's descriptor limit the listener's budget was computed from.",
    ),
    labelled(
        "fanout_requests_refused_total",
        Counter,
        "Client messages refused with an error frame, by code.",
        "code",
        &[
            "invalid_json",
            "unknown_type",
            "invalid_topic",
            "permission_denied",
            "too_many_topics",
            "upstream_limit",
        ],
    ),
    // Fan-out.
    metric(
        "fanout_customers",
        Gauge,
        "Customers with a hub on this node.",
    ),
    metric(
        "fanout_events_in_total",
        Counter,
        "Events received for fan-out.",
    ),
    metric(
        "fanout_deliveries_total",
        Counter,
        "Events queued to sessions.",
    ),
    metric(
        "fanout_fanout_seconds",
        Histogram,
        "Time from an event's arrival to its queueing to every session that wants it.",
    ),
    labelled(
        "fanout_events_dropped_total",
        Counter,
        "Events received and not delivered, by reason: undecodable, of another customer, lost inside a gap, or arriving on an upstream connection nobody needs any more.",
        "reason",
        &["undecodable", "foreign_customer", "inside_gap", "unwanted"],
    ),
    labelled(
        "fanout_gaps_sent_total",
        Counter,
        "Gap frames sent to sessions (events that may have been lost), by reason.",
        "reason",
        &[
            "upstream_reconnect",
            "owner_failover",
            "owner_handoff",
            "cluster_degraded",
        ],
    ),
    labelled(
        "fanout_resumes_total",
        Counter,
        "Resumes (subscribe with since), by whether they were recovered.",
        "recovered",
        &["true", "false"],
    ),
    metric(
        "fanout_resume_replayed_total",
        Counter,
        "Events replayed to resuming sessions.",
    ),
    metric(
        "fanout_resume_window_bytes",
        Gauge,
        "Bytes the customers' resume windows keep on this node.",
    ),
    // Upstream.
    labelled(
        "fanout_upstream_connections",
        Gauge,
        "Upstream connections to VoIPBIN (one per customer with sessions), by state.",
        "state",
        &["connecting", "connected", "backoff"],
    ),
    metric(
        "fanout_upstream_connect_seconds",
        Histogram,
        "Time to open an upstream connection: TCP, TLS and the WebSocket handshake.",
    ),
    labelled(
        "fanout_upstream_connect_errors_total",
        Counter,
        "Upstream connection attempts that failed, by reason (tls_* name the TLS failure).",
        "reason",
        &[
            "io",
            "timeout",
            "handshake",
            "tls_unknown_issuer",
            "tls_expired",
            "tls_name_mismatch",
            "tls_client_certificate",
            "tls_other",
        ],
    ),
    labelled(
        "fanout_upstream_drops_total",
        Counter,
        "Upstream connections that ended, by reason.",
        "reason",
        &["dropped", "stalled"],
    ),
    labelled(
        "fanout_upstream_events_total",
        Counter,
        "Events received from VoIPBIN, by shape.",
        "shape",
        &["envelope", "webhook", "bare"],
    ),
    metric(
        "fanout_upstream_gaps_total",
        Counter,
        "Gaps told after an upstream reconnect.",
    ),
    metric(
        "fanout_upstream_pong_timeouts_total",
        Counter,
        "Upstream connections replaced because VoIPBIN stopped answering pings.",
    ),
    metric(
        "fanout_upstream_refusals_total",
        Counter,
        "Subscriptions VoIPBIN refused: with an error frame, or by dropping the connection before answering them.",
    ),
    labelled(
        "fanout_upstream_copies_total",
        Counter,
        "Copies of an event that arrived again (VoIPBIN delivers one per topic it publishes under, on each connection whose prefix matches): collapsed, or passed on only to the sessions the earlier copy could not reach because it said more (relabelled).",
        "outcome",
        &["collapsed", "relabelled"],
    ),
    labelled(
        "fanout_upstream_transitions_total",
        Counter,
        "Upstream connections' state changes, by the state entered.",
        "state",
        &["connecting", "connected", "backoff", "closed"],
    ),
    // Cluster mode.
    metric(
        "fanout_cluster_leases_held",
        Gauge,
        "Customers this node owns (holds the lease of) in cluster mode.",
    ),
    metric(
        "fanout_cluster_takeovers_total",
        Counter,
        "Leases this node took from an owner that was gone.",
    ),
    labelled(
        "fanout_cluster_fenced_total",
        Counter,
        "Records or terms stopped by a fence, by side (self, store, lease, reader).",
        "side",
        &["self", "store", "lease", "reader"],
    ),
    metric(
        "fanout_cluster_published_total",
        Counter,
        "Records this node appended to the cluster's log as an owner.",
    ),
    metric(
        "fanout_cluster_nats_rtt_seconds",
        Gauge,
        "Round trip of the last JetStream request to NATS.",
    ),
    metric(
        "fanout_cluster_degraded",
        Gauge,
        "1 while the node serves its sessions from upstreams of its own because NATS is unreachable.",
    ),
    metric(
        "fanout_cluster_bad_records_total",
        Counter,
        "Records of the cluster's log that could not be read.",
    ),
    // The node.
    metric("fanout_ready", Gauge, "1 while /readyz answers ready."),
    labelled(
        "fanout_build_info",
        Gauge,
        "Always 1; its labels name the running build.",
        "version",
        &[env!("CARGO_PKG_VERSION")],
    ),
];

/// The buckets of the latency histograms, in seconds.
const FANOUT_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1,
];
const CONNECT_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const QUEUE_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// The process's metrics recorder, installed on first use, with every metric of
/// [`METRICS`] described and started at zero.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let mut builder = PrometheusBuilder::new();
        for (name, buckets) in [
            ("fanout_fanout_seconds", FANOUT_BUCKETS),
            ("fanout_upstream_connect_seconds", CONNECT_BUCKETS),
            ("fanout_session_queue_frames", QUEUE_BUCKETS),
        ] {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
                .unwrap_or_else(|_| PrometheusBuilder::new());
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (tests running several gateways in one
        // process share the first); the handle still renders this one.
        let _ = metrics::set_global_recorder(recorder);
        describe_all();
        process_collector().describe();
        handle
    })
}

fn describe_all() {
    for m in METRICS {
        match m.kind {
            Counter => metrics::describe_counter!(m.name, m.help),
            Gauge => metrics::describe_gauge!(m.name, m.help),
            Histogram => metrics::describe_histogram!(m.name, m.help),
        }
        let start = |labels: Vec<(&'static str, &'static str)>| match m.kind {
            Counter => metrics::counter!(m.name, &labels).increment(0),
            Gauge => metrics::gauge!(m.name, &labels).increment(0.0),
            // A histogram renders from its first observation; registering it is enough
            // for an empty one to render with zero counts.
            Histogram => drop(metrics::histogram!(m.name, &labels)),
        };
        match m.starts {
            None => start(Vec::new()),
            Some((label, values)) => {
                for value in values {
                    start(vec![(label, *value)]);
                }
            }
        }
    }
    metrics::gauge!("fanout_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// The current metrics in Prometheus text format.
pub fn render_metrics() -> String {
    let handle = metrics_handle();
    // One scrape at a time reads the process's figures.
    static COLLECTING: Mutex<()> = Mutex::new(());
    {
        let _one = COLLECTING.lock().unwrap_or_else(|e| e.into_inner());
        process_collector().collect();
    }
    handle.run_upkeep();
    handle.render()
}
