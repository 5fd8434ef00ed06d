//! One upstream connection's rules, sans-IO (the quinn-proto pattern): what to subscribe,
//! when a subscription counts as applied, which frames are events and with what label, what
//! to hold back and when to tell a loss, when to ping and when the connection has stalled.
//! Time and frames come in as arguments; what to write, what to tell the sink and when to
//! be woken come out. The async shell ([`crate::driver`]) only moves bytes.
//!
//! A link carries the prefixes of one [`Label`] (docs/protocol.md §11): every frame it
//! receives is decoded with that label, so a bare object is known for what its subscription
//! proves.
//!
//! ```text
//!        connected()                      first barrier's pong
//! Down ──────────────▶ Up: subscribing ─────────────────────▶ Up: subscribed
//!   ▲   (whole set, barrier ping;          (held events, coverage,    │
//!   │    events held if a loss is owed)     the gap: in that order)   │
//!   └───────────────── ended(): every subscription uncovered ◀────────┘
//!                      (a drop, or a stall that handle_timeout() reported)
//! ```
//!
//! Barriers: VoIPBIN does not acknowledge a subscribe, but it reads a connection in order,
//! so the pong to a ping sent right after a batch of subscribes proves them read; a
//! subscription counts as applied (*covered*) `subscribe_settle` later, in stream order.
//!
//! Invariants:
//! - Outputs come out in stream order: coverage is told between the events it precedes and
//!   follows, and after a loss the gap comes before the first event that followed it.
//! - A prefix no longer wanted is told uncovered at once and stripped from every batch in
//!   flight, so a late pong never covers it.
//! - Everything is bounded: held events ([`MAX_HELD_EVENTS`]), subscribe messages
//!   ([`MAX_TOPICS_PER_MESSAGE`] topics each).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use fanout_protocol::client::MAX_TOPICS_PER_MESSAGE;
use fanout_protocol::prefix::{Label, Prefix};
use fanout_protocol::upstream::{self, Context, Event, Shape};
use uuid::Uuid;

/// Events held back until the first barrier after a reconnect, so that the gap comes
/// first; past it they are inside the gap.
pub const MAX_HELD_EVENTS: usize = 4096;

/// The timings of a link (from [`crate::UpstreamConfig`]).
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// How often a connection is pinged.
    pub ping_interval: Duration,
    /// A ping unanswered for this long (nothing at all heard since) is a stall; so is a
    /// first barrier unanswered for this long.
    pub pong_timeout: Duration,
    /// A connection that delivered nothing for this long is a stall.
    pub idle_timeout: Duration,
    /// How long after its barrier's pong a subscription counts as applied.
    pub subscribe_settle: Duration,
}

impl From<&crate::UpstreamConfig> for Timings {
    fn from(config: &crate::UpstreamConfig) -> Self {
        Timings {
            ping_interval: config.ping_interval,
            pong_timeout: config.pong_timeout,
            idle_timeout: config.idle_timeout,
            subscribe_settle: config.subscribe_settle,
        }
    }
}

/// A frame to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A subscribe or unsubscribe message.
    Text(String),
    /// A ping: a barrier's number (8 bytes, big-endian) or empty (keepalive).
    Ping(Vec<u8>),
}

/// What the sink is told, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// An event.
    Publish(Event),
    /// Events between the two times may have been lost.
    Gap {
        /// Since when.
        since: SystemTime,
        /// Until when.
        until: SystemTime,
    },
    /// Every later event these prefixes select is delivered.
    Covered(Vec<Prefix>),
    /// Events these prefixes select may no longer arrive.
    Uncovered(Vec<Prefix>),
}

/// Why the connection must be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// A ping went unanswered for `pong_timeout`, nothing heard since.
    Pong,
    /// The first barrier went unanswered for `pong_timeout`: nothing is known subscribed.
    FirstBarrier,
    /// Nothing at all heard for `idle_timeout`.
    Idle,
}

/// How a connection ended, for the shell to log and count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndReport {
    /// Prefixes whose subscribe was sent and never answered: a connection VoIPBIN drops
    /// right after a subscribe is how it refuses a topic.
    pub unanswered: Vec<Prefix>,
    /// Whether the connection was ever subscribed (its first barrier answered).
    pub worked: bool,
}

/// Metric handles, registered once per link.
struct Counters {
    shapes: [metrics::Counter; 3],
    undecodable: metrics::Counter,
    inside_gap: metrics::Counter,
    unwanted: metrics::Counter,
    refusals: metrics::Counter,
    gaps: metrics::Counter,
    pong_timeouts: metrics::Counter,
}

impl Counters {
    fn new() -> Self {
        Counters {
            shapes: ["envelope", "webhook", "bare"]
                .map(|shape| metrics::counter!("fanout_upstream_events_total", "shape" => shape)),
            undecodable: metrics::counter!("fanout_events_dropped_total", "reason" => "undecodable"),
            inside_gap: metrics::counter!("fanout_events_dropped_total", "reason" => "inside_gap"),
            unwanted: metrics::counter!("fanout_events_dropped_total", "reason" => "unwanted"),
            refusals: metrics::counter!("fanout_upstream_refusals_total"),
            gaps: metrics::counter!("fanout_upstream_gaps_total"),
            pong_timeouts: metrics::counter!("fanout_upstream_pong_timeouts_total"),
        }
    }
}

/// The state of one open connection.
struct Up {
    /// Subscribed on it, with the generation each was wanted in.
    sent: BTreeMap<Prefix, u64>,
    /// Whether `sent` may differ from what is wanted.
    dirty: bool,
    next_barrier: u64,
    /// Batches sent whose barrier is not answered yet, by number.
    pending: VecDeque<(u64, Vec<Prefix>)>,
    /// Batches answered, applied from when.
    settling: VecDeque<(Instant, Vec<Prefix>)>,
    opened_at: Instant,
    first_barrier_passed: bool,
    /// The loss to tell at the first barrier, since when.
    owed: Option<SystemTime>,
    /// Events held back while a loss is owed.
    held: Vec<Event>,
    last_heard: Instant,
    last_heard_wall: SystemTime,
    frames_heard: u64,
    /// The oldest ping not yet known answered, and the latest sent: (when, frames heard).
    awaiting: Option<(Instant, u64)>,
    latest_ping: Option<(Instant, u64)>,
    next_ping: Instant,
}

impl Up {
    /// Takes the prefixes `gone` says out of the batches in flight: they are not covered
    /// when their barrier passes.
    fn strip(&mut self, gone: impl Fn(&Prefix) -> bool) {
        let pending = self.pending.iter_mut().map(|(_, batch)| batch);
        for batch in pending.chain(self.settling.iter_mut().map(|(_, batch)| batch)) {
            batch.retain(|p| !gone(p));
        }
    }
}

/// One connection's rules: see the module docs.
pub struct Link {
    customer: Uuid,
    label: Label,
    timings: Timings,
    /// What the connection should be subscribed to, with the generation each was wanted
    /// in (a prefix wanted anew is subscribed and covered anew).
    wanted: BTreeMap<Prefix, u64>,
    up: Option<Up>,
    /// Since when events may have been missed, to tell once a connection is subscribed.
    missed_since: Option<SystemTime>,
    outputs: VecDeque<Output>,
    transmits: VecDeque<Transmit>,
    counters: Counters,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("customer", &self.customer)
            .field("label", &self.label)
            .field("wanted", &self.wanted.len())
            .field("up", &self.up.is_some())
            .finish_non_exhaustive()
    }
}

fn request_json(kind: &str, topics: &[&Prefix]) -> String {
    let topics: Vec<&str> = topics.iter().map(|p| p.as_str()).collect();
    serde_json::json!({"type": kind, "topics": topics}).to_string()
}

impl Link {
    /// A link of `customer`'s upstream for prefixes of `label`, not connected.
    pub fn new(customer: Uuid, label: Label, timings: Timings) -> Self {
        Link {
            customer,
            label,
            timings,
            wanted: BTreeMap::new(),
            up: None,
            missed_since: None,
            outputs: VecDeque::new(),
            transmits: VecDeque::new(),
            counters: Counters::new(),
        }
    }

    /// The label of its frames.
    pub fn label(&self) -> &Label {
        &self.label
    }

    /// Whether nothing is wanted of it.
    pub fn is_idle(&self) -> bool {
        self.wanted.is_empty()
    }

    /// Whether its connection is subscribed (the first barrier answered).
    pub fn is_subscribed(&self) -> bool {
        self.up.as_ref().is_some_and(|up| up.first_barrier_passed)
    }

    /// `prefix` is wanted, anew as `generation`.
    pub fn want(&mut self, prefix: Prefix, generation: u64) {
        self.wanted.insert(prefix, generation);
        if let Some(up) = &mut self.up {
            up.dirty = true;
        }
    }

    /// `prefix` is no longer wanted: told uncovered now, never covered by a barrier in
    /// flight, unsubscribed at the next transmit.
    pub fn unwant(&mut self, prefix: &Prefix) {
        if self.wanted.remove(prefix).is_none() {
            return;
        }
        if let Some(up) = &mut self.up {
            up.dirty = true;
            up.strip(|p| p == prefix);
        }
        self.outputs
            .push_back(Output::Uncovered(vec![prefix.clone()]));
    }

    /// An attempt to connect failed at `wall`: events may be missed from then.
    pub fn connect_failed(&mut self, wall: SystemTime) {
        self.missed_since.get_or_insert(wall);
    }

    /// A connection opened: its whole subscription set goes first, then its barrier (even
    /// if the set is empty: a gap owed waits for it); events are held back until the barrier
    /// is answered if a loss is owed.
    pub fn connected(&mut self, now: Instant, wall: SystemTime) {
        self.transmits.clear();
        self.up = Some(Up {
            sent: BTreeMap::new(),
            dirty: true,
            next_barrier: 0,
            pending: VecDeque::new(),
            settling: VecDeque::new(),
            opened_at: now,
            first_barrier_passed: false,
            owed: self.missed_since.take(),
            held: Vec::new(),
            last_heard: now,
            last_heard_wall: wall,
            frames_heard: 0,
            awaiting: None,
            latest_ping: None,
            next_ping: now + self.timings.ping_interval,
        });
        self.queue_changes(true);
    }

    /// The next frame to write, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.transmits.is_empty() && self.up.as_ref().is_some_and(|up| up.dirty) {
            self.queue_changes(false);
        }
        self.transmits.pop_front()
    }

    /// The next thing to tell the sink, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Link::handle_timeout`] is next due, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let up = self.up.as_ref()?;
        let t = &self.timings;
        [
            Some(up.next_ping),
            up.awaiting.map(|(at, _)| at + t.pong_timeout),
            (!up.first_barrier_passed).then(|| up.opened_at + t.pong_timeout),
            up.settling.front().map(|(due, _)| *due),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Queues what brings the connection from what it sent to what is wanted: subscribes
    /// (of prefixes new, or wanted anew), unsubscribes, and a barrier after subscribes (or
    /// always, for the connection's first set).
    fn queue_changes(&mut self, first: bool) {
        let Some(up) = &mut self.up else { return };
        up.dirty = false;
        let add: Vec<Prefix> = self
            .wanted
            .iter()
            .filter(|(p, generation)| up.sent.get(*p) != Some(*generation))
            .map(|(p, _)| p.clone())
            .collect();
        let gone: Vec<Prefix> = up
            .sent
            .keys()
            .filter(|p| !self.wanted.contains_key(*p))
            .cloned()
            .collect();
        for chunk in add
            .iter()
            .collect::<Vec<_>>()
            .chunks(MAX_TOPICS_PER_MESSAGE)
        {
            self.transmits
                .push_back(Transmit::Text(request_json("subscribe", chunk)));
        }
        for chunk in gone
            .iter()
            .collect::<Vec<_>>()
            .chunks(MAX_TOPICS_PER_MESSAGE)
        {
            self.transmits
                .push_back(Transmit::Text(request_json("unsubscribe", chunk)));
        }
        if first || !add.is_empty() {
            let number = up.next_barrier;
            up.next_barrier += 1;
            up.pending.push_back((number, add));
            self.transmits
                .push_back(Transmit::Ping(number.to_be_bytes().to_vec()));
        }
        up.sent = self.wanted.clone();
    }

    /// Something was heard at `now`; settled subscriptions are covered from here, in order
    /// with the events.
    fn heard(&mut self, now: Instant, wall: SystemTime) -> bool {
        let Some(up) = &mut self.up else { return false };
        up.last_heard = now;
        up.last_heard_wall = wall;
        up.frames_heard += 1;
        self.settle(now);
        true
    }

    fn settle(&mut self, now: Instant) {
        let Some(up) = &mut self.up else { return };
        while up.settling.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, batch)) = up.settling.pop_front()
                && !batch.is_empty()
            {
                self.outputs.push_back(Output::Covered(batch));
            }
        }
    }

    /// A frame other than text or pong (a ping, a close) arrived.
    pub fn handle_other(&mut self, now: Instant, wall: SystemTime) {
        self.heard(now, wall);
    }

    /// A text frame arrived: an event with this link's label, a refusal, or nothing.
    pub fn handle_text(&mut self, frame: &Bytes, now: Instant, wall: SystemTime) {
        if !self.heard(now, wall) {
            return;
        }
        if self.wanted.is_empty() {
            // Nobody needs what this connection still delivers.
            self.counters.unwanted.increment(1);
            return;
        }
        if let Some(refused) = refused_prefixes(frame) {
            // VoIPBIN refused subscribes and kept the connection: they are not applied,
            // whatever their barrier says.
            tracing::warn!(customer_id = %self.customer, topics = ?refused, "Upstream refused a subscription");
            self.counters.refusals.increment(1);
            // Only what this link asked for is its to uncover.
            let refused: Vec<Prefix> = refused
                .into_iter()
                .filter(|p| self.wanted.contains_key(p))
                .collect();
            if let Some(up) = &mut self.up {
                up.strip(|p| refused.contains(p));
            }
            if !refused.is_empty() {
                self.outputs.push_back(Output::Uncovered(refused));
            }
            return;
        }
        let cx = Context {
            customer_id: self.customer,
            received_at: wall,
            label: &self.label,
        };
        let event = match upstream::decode(frame, &cx) {
            Ok(event) => event,
            Err(error) => {
                self.counters.undecodable.increment(1);
                tracing::debug!(customer_id = %self.customer, %error, "Upstream frame dropped");
                return;
            }
        };
        let shape = match event.shape {
            Shape::Envelope => 0,
            Shape::Webhook => 1,
            Shape::Bare => 2,
        };
        self.counters.shapes[shape].increment(1);
        match &mut self.up {
            Some(up) if up.owed.is_some() => {
                if up.held.len() < MAX_HELD_EVENTS {
                    up.held.push(event);
                } else {
                    // Past the bound it is inside the gap told later.
                    self.counters.inside_gap.increment(1);
                }
            }
            _ => self.outputs.push_back(Output::Publish(event)),
        }
    }

    /// A pong arrived: the barriers it answers pass. At the first, the events held back go
    /// out, then the coverage, then the gap owed, at the point from which everything is
    /// covered (at once without a settle time), so a client that handled the gap resumes
    /// from its cursor.
    pub fn handle_pong(&mut self, payload: &[u8], now: Instant, wall: SystemTime) {
        if !self.heard(now, wall) {
            return;
        }
        let Ok(number) = <[u8; 8]>::try_from(payload) else {
            return;
        };
        let number = u64::from_be_bytes(number);
        let settle = self.timings.subscribe_settle;
        let Some(up) = &mut self.up else { return };
        while let Some((_, batch)) = up.pending.pop_front_if(|(n, _)| *n <= number) {
            for event in std::mem::take(&mut up.held) {
                self.outputs.push_back(Output::Publish(event));
            }
            up.first_barrier_passed = true;
            if settle.is_zero() {
                if !batch.is_empty() {
                    self.outputs.push_back(Output::Covered(batch));
                }
            } else {
                up.settling.push_back((now + settle, batch));
            }
            if let Some(since) = up.owed.take() {
                self.counters.gaps.increment(1);
                tracing::info!(customer_id = %self.customer, label = %self.label, missed_ms = wall.duration_since(since).unwrap_or_default().as_millis() as u64, "Upstream recovered; sessions told of the gap");
                self.outputs.push_back(Output::Gap { since, until: wall });
            }
        }
    }

    /// Time passed: pings, their deadlines, the first barrier's, settling. Answers why the
    /// connection must be replaced, if it must.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Stall> {
        self.settle(now);
        let t = self.timings;
        let up = self.up.as_mut()?;
        if !up.first_barrier_passed && now >= up.opened_at + t.pong_timeout {
            self.counters.pong_timeouts.increment(1);
            return Some(Stall::FirstBarrier);
        }
        if let Some((at, before)) = up.awaiting
            && now >= at + t.pong_timeout
        {
            if up.frames_heard == before {
                self.counters.pong_timeouts.increment(1);
                return Some(Stall::Pong);
            }
            // Answered; a later ping may still be waiting.
            up.awaiting = up
                .latest_ping
                .filter(|(_, heard)| *heard == up.frames_heard);
        }
        if now >= up.next_ping {
            if now.saturating_duration_since(up.last_heard) >= t.idle_timeout {
                return Some(Stall::Idle);
            }
            self.transmits.push_back(Transmit::Ping(Vec::new()));
            let sent = (now, up.frames_heard);
            up.awaiting.get_or_insert(sent);
            up.latest_ping = Some(sent);
            up.next_ping = now + t.ping_interval;
        }
        None
    }

    /// The connection ended: every subscription on it is uncovered, and the loss is owed to
    /// the next one from when it was last heard (or from the earlier loss it never got to
    /// tell).
    pub fn ended(&mut self) -> EndReport {
        self.transmits.clear();
        let Some(up) = self.up.take() else {
            return EndReport::default();
        };
        // What is no longer wanted was told uncovered when it went.
        let uncovered: Vec<Prefix> = up
            .sent
            .into_keys()
            .filter(|p| self.wanted.contains_key(p))
            .collect();
        if !uncovered.is_empty() {
            self.outputs.push_back(Output::Uncovered(uncovered));
        }
        if !up.held.is_empty() {
            self.counters.inside_gap.increment(up.held.len() as u64);
        }
        self.missed_since = Some(up.owed.unwrap_or(up.last_heard_wall));
        let unanswered: Vec<Prefix> = up.pending.into_iter().flat_map(|(_, b)| b).collect();
        if !unanswered.is_empty() {
            self.counters.refusals.increment(1);
        }
        EndReport {
            unanswered,
            worked: up.first_barrier_passed,
        }
    }
}

/// The prefixes an upstream error frame names (`{"type":"error",…,"topics":[…]}`), if the
/// frame is one (the tutorial's world; VoIPBIN's code drops the connection instead).
fn refused_prefixes(text: &[u8]) -> Option<Vec<Prefix>> {
    #[derive(serde::Deserialize)]
    struct ErrorFrame {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        topics: Vec<String>,
    }
    // Events are the hot path: only a frame whose start names "error" is parsed for it.
    let head = &text[..text.len().min(64)];
    if !head.windows(7).any(|w| w == b"\"error\"") {
        return None;
    }
    let frame: ErrorFrame = serde_json::from_slice(text).ok()?;
    (frame.kind == "error").then(|| {
        frame
            .topics
            .iter()
            .filter_map(|t| Prefix::parse(t).ok())
            .collect()
    })
}

#[cfg(test)]
mod tests;
