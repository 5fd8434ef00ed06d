//! Where a customer's events come from, and where what its sessions need goes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fanout_protocol::prefix::Prefix;
use fanout_protocol::server::GapReason;
use fanout_protocol::upstream::Event;
use fanout_session::Hub;
use fanout_upstream::{EventSink, Upstream, UpstreamConfig};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Where a feed stands, for readiness and the admin view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedStatus {
    /// A word for people and metrics (`connected`, `backoff`, …).
    pub state: &'static str,
    /// What it is asked to deliver, each prefix once.
    pub wanted: Vec<Prefix>,
    /// The connections to VoIPBIN it holds on this node.
    pub connections: usize,
    /// How long ago it last worked: zero while it works, `None` if it never did.
    pub down_for: Option<Duration>,
    /// The node that holds the customer's upstream, in a cluster.
    pub owner: Option<String>,
    /// Its term (the lease's fencing token), in a cluster.
    pub term: Option<u64>,
}

/// One customer's source of events. It publishes into the customer's hub (events, gaps,
/// coverage) and is told, counted, which upstream prefixes the customer's sessions need.
pub trait Feed: Send + Sync + 'static {
    /// Whether it can serve `prefixes` besides what it serves now.
    ///
    /// # Errors
    /// The most connections to VoIPBIN the customer may have, when they would need more.
    fn admits(&self, prefixes: &[Prefix]) -> Result<(), usize>;
    /// One more user needs `prefix`.
    fn add(&self, prefix: &Prefix);
    /// One user less needs `prefix`; the last one's leaving must reach the hub as
    /// `uncovered` before this returns (resumes are judged on it).
    fn remove(&self, prefix: &Prefix);
    /// Where it stands.
    fn status(&self) -> FeedStatus;
    /// Stops for good.
    fn close(&self);
}

/// Opens customers' feeds.
pub trait Feeds: Send + Sync + 'static {
    /// A feed of `customer`'s events into `hub` (whose customer it is), running until
    /// `cancel` or [`Feed::close`].
    fn open(&self, customer: Uuid, hub: Arc<Hub>, cancel: &CancellationToken) -> Arc<dyn Feed>;

    /// Resolves once every feed closed ([`Feed::close`]) has finished its work (a cluster
    /// owner's handoff); the gateway waits for it, bounded, before it exits.
    fn closed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        Box::pin(std::future::ready(()))
    }
}

/// An upstream's events, gaps and coverage, published into its customer's hub.
pub struct HubSink(pub Arc<Hub>);

impl EventSink for HubSink {
    fn publish(&self, event: Event) {
        self.0.publish(event);
    }

    fn gap(&self, since: SystemTime, until: SystemTime) {
        let told = self
            .0
            .publish_gap(GapReason::UpstreamReconnect, since, until);
        metrics::counter!("fanout_gaps_sent_total", "reason" => GapReason::UpstreamReconnect.as_str())
            .increment(told as u64);
    }

    fn covered(&self, prefixes: &[Prefix]) {
        self.0.covered(prefixes);
    }

    fn uncovered(&self, prefixes: &[Prefix]) {
        self.0.uncovered(prefixes);
    }
}

/// Single-node mode: every customer's feed is its own upstream connection to VoIPBIN.
pub struct VoipbinFeeds {
    config: Arc<UpstreamConfig>,
}

impl VoipbinFeeds {
    /// Feeds that connect as `config` says.
    pub fn new(config: Arc<UpstreamConfig>) -> Self {
        VoipbinFeeds { config }
    }
}

impl Feeds for VoipbinFeeds {
    fn open(&self, customer: Uuid, hub: Arc<Hub>, cancel: &CancellationToken) -> Arc<dyn Feed> {
        Arc::new(Upstream::spawn(
            customer,
            self.config.clone(),
            Arc::new(HubSink(hub)),
            cancel,
        ))
    }
}

impl Feed for Upstream {
    fn admits(&self, prefixes: &[Prefix]) -> Result<(), usize> {
        Upstream::admits(self, prefixes).map_err(|e| e.max)
    }

    fn add(&self, prefix: &Prefix) {
        Upstream::add(self, prefix);
    }

    fn remove(&self, prefix: &Prefix) {
        Upstream::remove(self, prefix);
    }

    fn status(&self) -> FeedStatus {
        FeedStatus {
            state: self.state().label(),
            wanted: self.wanted(),
            connections: self.connections(),
            down_for: self.down_for(),
            owner: None,
            term: None,
        }
    }

    fn close(&self) {
        Upstream::close(self);
    }
}
