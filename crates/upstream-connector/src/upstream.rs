//! One customer's upstream: a handle for its users, and the links behind it.
//!
//! Its users ask for prefixes (docs/protocol.md §11), counted: the first user of a prefix
//! subscribes it, the last one's leaving unsubscribes it. Prefixes are served by one link
//! (one connection to VoIPBIN) per [`Label`]: a bare object tells nothing of itself, so
//! what it is must follow from the connection it arrived on, and prefixes whose frames
//! nothing tells apart must not share one. The connections a customer costs VoIPBIN are the
//! labels in use, never the number of browsers; [`Upstream::admits`] keeps them within
//! [`UpstreamConfig::max_connections`].
//!
//! Every link's events pass one [`Merger`] on their way to the sink, so an event that
//! arrives several times (under VoIPBIN's old and new topic formats, on one connection or on
//! two) goes on once, or again only to those its first copy could not reach.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fanout_protocol::prefix::{Label, Prefix};
use fanout_protocol::upstream::Event;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::UpstreamConfig;
use crate::driver::LinkShared;
use crate::link::{Link, Timings};
use crate::merge::Merger;

/// Receives the events of a customer's upstream.
pub trait EventSink: Send + Sync + 'static {
    /// One decoded event. Called in arrival order per connection; must not block.
    fn publish(&self, event: Event);

    /// Events between `since` and `until` may have been lost: a connection was down or
    /// stalled, and VoIPBIN keeps no history. Called once per recovery, after the new
    /// connection is subscribed and before any of its events is published; must not block.
    fn gap(&self, since: SystemTime, until: SystemTime) {
        let _ = (since, until);
    }

    /// VoIPBIN has applied the subscriptions to `prefixes`: every later event they select
    /// is published. Called in order with the connection's events; must not block.
    fn covered(&self, prefixes: &[Prefix]) {
        let _ = prefixes;
    }

    /// Events that `prefixes` select may no longer arrive: they are being unsubscribed, or
    /// their connection ended. Called before the unsubscribe is sent; must not block.
    fn uncovered(&self, prefixes: &[Prefix]) {
        let _ = prefixes;
    }

    /// Backpressure: when the sink cannot take more now, a future that resolves once it
    /// can; readers await it before they read the next frame (VoIPBIN's writes then wait in
    /// the socket, and a reader held past the pong deadline counts as stalled). `None` (the
    /// default) when there is room.
    fn room(&self) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>> {
        None
    }
}

impl<F: Fn(Event) + Send + Sync + 'static> EventSink for F {
    fn publish(&self, event: Event) {
        self(event)
    }
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Opening the connection.
    Connecting = 0,
    /// Connected.
    Connected = 1,
    /// Waiting before the next attempt.
    Backoff = 2,
    /// Closed for good.
    Closed = 3,
}

impl State {
    /// Every state, for metrics.
    pub const ALL: [State; 4] = [
        State::Connecting,
        State::Connected,
        State::Backoff,
        State::Closed,
    ];

    /// The label of the `state` metric dimension.
    pub fn label(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Connected => "connected",
            State::Backoff => "backoff",
            State::Closed => "closed",
        }
    }

    pub(crate) fn from_u8(v: u8) -> State {
        match v {
            0 => State::Connecting,
            1 => State::Connected,
            2 => State::Backoff,
            _ => State::Closed,
        }
    }
}

/// Every link's events on their way to the customer's sink, their copies collapsed.
struct MergingSink {
    merger: Mutex<Merger>,
    inner: Arc<dyn EventSink>,
}

impl EventSink for MergingSink {
    fn publish(&self, event: Event) {
        let admitted = self
            .merger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(event, tokio::time::Instant::now().into_std());
        if let Some(event) = admitted {
            self.inner.publish(event);
        }
    }

    fn gap(&self, since: SystemTime, until: SystemTime) {
        self.inner.gap(since, until);
    }

    fn covered(&self, prefixes: &[Prefix]) {
        self.inner.covered(prefixes);
    }

    fn uncovered(&self, prefixes: &[Prefix]) {
        self.inner.uncovered(prefixes);
    }

    fn room(&self) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>> {
        self.inner.room()
    }
}

/// A wanted prefix: how many users need it, and which time it was wanted anew (a prefix
/// removed and added again before its link saw either is subscribed and covered again).
#[derive(Debug, Clone, Copy)]
struct Want {
    count: usize,
    generation: u64,
}

#[derive(Default)]
struct Inner {
    wanted: BTreeMap<Prefix, Want>,
    links: BTreeMap<Label, Arc<LinkShared>>,
    next_generation: u64,
}

struct Shared {
    customer_id: Uuid,
    config: Arc<UpstreamConfig>,
    sink: Arc<dyn EventSink>,
    inner: Mutex<Inner>,
    cancel: CancellationToken,
}

impl Shared {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        // The maps stay consistent even if a holder panicked.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A subscribe that would need more connections to VoIPBIN than one customer may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a customer may have at most {max} connections to VoIPBIN (one per kind of topic in use)")]
pub struct TooManyConnections {
    /// The limit ([`UpstreamConfig::max_connections`]).
    pub max: usize,
}

/// The handle of one customer's upstream. Dropping it does not close the connections;
/// [`Upstream::close`] or the parent token does.
#[derive(Clone)]
pub struct Upstream {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("customer_id", &self.shared.customer_id)
            .field("connections", &self.connections())
            .finish()
    }
}

impl Upstream {
    /// The upstream of `customer_id`, publishing into `sink`; its connections run until
    /// `cancel` (or a child of it made here) is cancelled. None opens before a prefix is
    /// asked for.
    pub fn spawn(
        customer_id: Uuid,
        config: Arc<UpstreamConfig>,
        sink: Arc<dyn EventSink>,
        cancel: &CancellationToken,
    ) -> Upstream {
        // Start the shared clock no later than the first upstream.
        let _ = crate::driver::clock_ms();
        let sink = Arc::new(MergingSink {
            merger: Mutex::new(Merger::new(config.merge)),
            inner: sink,
        });
        Upstream {
            shared: Arc::new(Shared {
                customer_id,
                config,
                sink,
                inner: Mutex::new(Inner::default()),
                cancel: cancel.child_token(),
            }),
        }
    }

    /// The customer it serves.
    pub fn customer_id(&self) -> Uuid {
        self.shared.customer_id
    }

    /// Whether `prefixes`, added to what is wanted now, keep the customer within its
    /// connections to VoIPBIN.
    ///
    /// # Errors
    /// [`TooManyConnections`] when they would need more.
    pub fn admits(&self, prefixes: &[Prefix]) -> Result<(), TooManyConnections> {
        let max = self.shared.config.max_connections;
        let inner = self.shared.inner();
        let mut labels: Vec<&Label> = inner.links.keys().collect();
        for prefix in prefixes {
            if !labels.contains(&prefix.label()) {
                labels.push(prefix.label());
            }
        }
        if labels.len() > max {
            return Err(TooManyConnections { max });
        }
        Ok(())
    }

    /// One more user needs `prefix`; the first one subscribes it, on the link of its label
    /// (opened if it is the label's first prefix).
    pub fn add(&self, prefix: &Prefix) {
        let mut inner = self.shared.inner();
        let Inner {
            wanted,
            links,
            next_generation,
        } = &mut *inner;
        let want = wanted.entry(prefix.clone()).or_insert_with(|| {
            *next_generation += 1;
            Want {
                count: 0,
                generation: *next_generation,
            }
        });
        want.count += 1;
        if want.count > 1 {
            return;
        }
        let generation = want.generation;
        let link = links.entry(prefix.label().clone()).or_insert_with(|| {
            let config = &self.shared.config;
            LinkShared::spawn(
                self.shared.customer_id,
                Link::new(
                    self.shared.customer_id,
                    prefix.label().clone(),
                    Timings::from(&**config),
                ),
                config.clone(),
                self.shared.sink.clone(),
                self.shared.cancel.child_token(),
            )
        });
        link.with(|l| l.want(prefix.clone(), generation));
        link.changed.notify_one();
    }

    /// One user less needs `prefix`; the last one unsubscribes it, and the sink hears at
    /// once that its events may stop (before this returns: a resume judged after it does
    /// not take the prefix for covered). A link left with no prefix closes.
    pub fn remove(&self, prefix: &Prefix) {
        let mut inner = self.shared.inner();
        match inner.wanted.get_mut(prefix) {
            Some(want) if want.count > 1 => want.count -= 1,
            Some(_) => {
                inner.wanted.remove(prefix);
                if let Some(link) = inner.links.get(prefix.label()).cloned() {
                    let idle = link.with(|l| {
                        l.unwant(prefix);
                        l.is_idle()
                    });
                    if idle {
                        link.cancel.cancel();
                        inner.links.remove(prefix.label());
                    } else {
                        link.changed.notify_one();
                    }
                }
            }
            None => {}
        }
    }

    /// The prefixes currently wanted, each once.
    pub fn wanted(&self) -> Vec<Prefix> {
        self.shared.inner().wanted.keys().cloned().collect()
    }

    /// Its connections to VoIPBIN: one per label in use.
    pub fn connections(&self) -> usize {
        self.shared.inner().links.len()
    }

    /// Where its connections stand: the least advanced of them (`Connected` when all are,
    /// and when there is none).
    pub fn state(&self) -> State {
        let inner = self.shared.inner();
        let states = inner.links.values().map(|link| link.state());
        states
            .min_by_key(|state| match state {
                State::Closed => 0,
                State::Backoff => 1,
                State::Connecting => 2,
                State::Connected => 3,
            })
            .unwrap_or(State::Connected)
    }

    /// How long ago one of its connections last worked (a connection works once VoIPBIN
    /// has answered its subscribes): zero while one does, or while none is needed; `None`
    /// if none ever did. (For readiness: whether VoIPBIN serves this node.)
    pub fn down_for(&self) -> Option<Duration> {
        let inner = self.shared.inner();
        if inner.links.is_empty() {
            return Some(Duration::ZERO);
        }
        inner
            .links
            .values()
            .filter_map(|link| link.down_for())
            .min()
    }

    /// Closes every connection for good.
    pub fn close(&self) {
        self.shared.cancel.cancel();
    }
}
