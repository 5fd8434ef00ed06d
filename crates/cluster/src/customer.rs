//! One customer on one node of the cluster: its task, its feed and its upstream sinks.
//!
//! The task
//! - **reads** the customer's records, handed over by the node's reader in the log's order,
//!   through a [`CustomerReader`] into the customer's hub, at the owner's cursors; a node that
//!   opens the customer mid-term first reads its recent history from the owner's subject
//!   into the window (resumes wait for that);
//! - **tells the fleet what its sessions need** ([`crate::interest`]), when it changes;
//! - **seeks to own** the customer when nobody lives that owns it: the node ranked first
//!   among the live nodes that need it at once, the others a moment later each; a dead
//!   owner's node term is fenced first;
//! - while it owns, holds the customer's upstream to VoIPBIN, subscribed to the union of
//!   what every node needs, whose items go to the node's publisher;
//! - **hands over** when the registry closes it (linger over, or shutdown): the upstream
//!   closes, the term's end is written and the record deleted, so that another node takes
//!   over at once and tells `owner_handoff`;
//! - in **degraded mode**, serves this node's sessions from an upstream of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer;
use fanout_core::{Feed, FeedStatus, HubSink};
use fanout_protocol::cursor::Cursor;
use fanout_protocol::prefix::{Label, Prefix};
use fanout_protocol::server::GapReason;
use fanout_protocol::upstream::Event;
use fanout_session::Hub;
use fanout_upstream::{EventSink, Upstream};
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::log::Stamp;
use crate::membership::{self, Record as Ownership};
use crate::node::{Delivery, Hosted, Node, Op, subject_of};
use crate::owner::Item;
use crate::reader::{CustomerReader, Read, Stream};
use crate::wire::{self, Opened};

/// How long each rank waits before it steps in to own a customer nobody owns.
const RANK_STEP: Duration = Duration::from_millis(500);

#[derive(Default)]
pub(crate) struct Status {
    upstream: Option<Arc<Upstream>>,
    /// Since when the log has not been read, if it is not.
    broken_since: Option<Instant>,
}

/// What the customer's task, its feed and its interest writer share.
pub(crate) struct Shared {
    customer: Uuid,
    node: Arc<Node>,
    close: CancellationToken,
    status: Mutex<Status>,
    /// What this node's sessions need upstream, counted.
    wanted: Mutex<BTreeMap<Prefix, usize>>,
    /// Bumped whenever the set of `wanted` changes.
    local: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn new(customer: Uuid, node: Arc<Node>, cancel: &CancellationToken) -> Self {
        Shared {
            customer,
            node,
            close: cancel.child_token(),
            status: Mutex::new(Status::default()),
            wanted: Mutex::new(BTreeMap::new()),
            local: tokio::sync::watch::Sender::new(0),
        }
    }

    fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wanted(&self) -> MutexGuard<'_, BTreeMap<Prefix, usize>> {
        self.wanted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What this node's sessions need upstream, each prefix once.
    fn wanted_set(&self) -> BTreeSet<Prefix> {
        self.wanted().keys().cloned().collect()
    }

    /// What the customer's upstream should carry: this node's prefixes and every other
    /// live node's, within the connections a customer may have (this node's labels first);
    /// and whether some were left out.
    fn desired(&self) -> (BTreeSet<Prefix>, bool) {
        let max = self.node.upstream.max_connections;
        let own = self.wanted_set();
        let others = self.others();
        let mut labels: BTreeSet<Label> = BTreeSet::new();
        let mut desired = BTreeSet::new();
        let mut left_out = false;
        for prefix in own.into_iter().chain(others) {
            if labels.contains(prefix.label()) || labels.len() < max {
                labels.insert(prefix.label().clone());
                desired.insert(prefix);
            } else {
                left_out = true;
            }
        }
        (desired, left_out)
    }

    /// What the other live nodes need.
    fn others(&self) -> BTreeSet<Prefix> {
        let live: Vec<String> = self.node.roster().live().map(str::to_owned).collect();
        self.node
            .fleet()
            .others_among(self.customer, &self.node.settings.node_id, &live)
    }

    /// The live nodes that need the customer, this one included.
    fn interested(&self) -> Vec<String> {
        let live: Vec<String> = self.node.roster().live().map(str::to_owned).collect();
        let mut nodes = self.node.fleet().nodes_of(self.customer, &live);
        if !nodes.contains(&self.node.settings.node_id) {
            nodes.push(self.node.settings.node_id.clone());
        }
        nodes
    }
}

/// A customer's feed on a node of the cluster.
pub(crate) struct ClusterFeed(pub(crate) Arc<Shared>);

impl Feed for ClusterFeed {
    fn admits(&self, prefixes: &[Prefix]) -> Result<(), usize> {
        let shared = &self.0;
        let max = shared.node.upstream.max_connections;
        let mut labels: BTreeSet<Label> =
            shared.wanted().keys().map(|p| p.label().clone()).collect();
        labels.extend(
            shared
                .others()
                .iter()
                .chain(prefixes)
                .map(|p| p.label().clone()),
        );
        if labels.len() > max {
            return Err(max);
        }
        Ok(())
    }

    fn add(&self, prefix: &Prefix) {
        let first = {
            let mut wanted = self.0.wanted();
            let count = wanted.entry(prefix.clone()).or_insert(0);
            *count += 1;
            *count == 1
        };
        if first {
            self.0.local.send_modify(|n| *n += 1);
        }
    }

    // The hub's coverage is the owner's, read from the log: every event of the customer
    // reaches this node's hub whatever its sessions need, and the owner tells in the log
    // when a prefix stops being covered.
    fn remove(&self, prefix: &Prefix) {
        let last = {
            let mut wanted = self.0.wanted();
            match wanted.get_mut(prefix) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                Some(_) => {
                    wanted.remove(prefix);
                    true
                }
                None => false,
            }
        };
        if last {
            self.0.local.send_modify(|n| *n += 1);
        }
    }

    fn status(&self) -> FeedStatus {
        let shared = &self.0;
        let status = shared.status();
        let (state, connections) = match &status.upstream {
            Some(upstream) => (upstream.state().label(), upstream.connections()),
            None if status.broken_since.is_some() => ("cluster_down", 0),
            None => ("follower", 0),
        };
        let (owner, term) = match shared.node.roster().record(shared.customer) {
            Some(Ownership::Owned(o)) => (Some(o.node.clone()), Some(o.term)),
            _ => (None, None),
        };
        FeedStatus {
            state,
            wanted: shared.wanted_set().into_iter().collect(),
            connections,
            down_for: Some(
                status
                    .broken_since
                    .map_or(Duration::ZERO, |since| since.elapsed()),
            ),
            owner,
            term,
        }
    }

    fn close(&self) {
        self.0.close.cancel();
    }
}

/// Keeps this node's interest in a customer in the fleet's bucket: written when it changes
/// (and again as often as an adopted bucket's age limit needs); removed when the feed
/// closes.
pub(crate) async fn publish_interest(node: Arc<Node>, shared: Arc<Shared>) {
    let timeout = node.settings.request_timeout;
    let mut changes = shared.local.subscribe();
    let refresh_every = node.interests.refresh_every();
    // What the bucket is known to hold: nothing at first; unknown after a failed write.
    let mut written = Some(BTreeSet::new());
    let mut written_at = Instant::now();
    let mut terms = node.term.subscribe();
    loop {
        let refresh_at = refresh_every.map(|every| written_at + every);
        tokio::select! {
            () = shared.close.cancelled() => break,
            changed = changes.changed() => if changed.is_err() { break },
            // A node that joins with a new term writes its interest again (it may have
            // been forgotten while it was away).
            _ = terms.changed() => written = None,
            () = tokio::time::sleep_until(refresh_at.unwrap_or_else(Instant::now)), if refresh_at.is_some() => {
                written = None;
            }
            () = tokio::time::sleep(Duration::from_millis(500)), if written.is_none() => {}
        }
        let now = shared.wanted_set();
        if written.as_ref() == Some(&now) {
            continue;
        }
        match tokio::time::timeout(timeout, node.interests.put(shared.customer, &now)).await {
            Ok(Ok(())) => {
                written = Some(now);
                written_at = Instant::now();
            }
            failed => {
                tracing::debug!(customer = %shared.customer, ?failed, "Cannot write this node's interest yet");
                written = None;
            }
        }
    }
    if written.is_none_or(|w| !w.is_empty()) {
        let _ = tokio::time::timeout(
            timeout,
            node.interests.put(shared.customer, &BTreeSet::new()),
        )
        .await;
    }
}

/// The owner's upstream sink: everything goes to the node's publisher, in order, marked
/// with the customer's term; a publisher too far behind ends the term (nothing is dropped
/// silently: the successor tells the gap).
struct OwnerSink {
    customer: Uuid,
    term: u64,
    ops: mpsc::Sender<Op>,
    overflow: CancellationToken,
    /// Cancelled when the term ends in order: nothing more is taken.
    finish: CancellationToken,
}

/// Free places in the publisher's queue below which the upstream's reader waits.
const HEADROOM: usize = 64;

impl OwnerSink {
    fn send(&self, item: Item) {
        let op = Op::Item {
            customer: self.customer,
            term: self.term,
            item,
        };
        if let Err(error) = self.ops.try_send(op)
            && !self.finish.is_cancelled()
            && !self.overflow.is_cancelled()
        {
            tracing::warn!(
                customer = %self.customer,
                full = matches!(error, mpsc::error::TrySendError::Full(_)),
                "The log's publisher cannot take the upstream's events: the term ends"
            );
            self.overflow.cancel();
        }
    }
}

impl EventSink for OwnerSink {
    fn publish(&self, event: Event) {
        self.send(Item::Event(event));
    }

    fn room(&self) -> Option<Pin<Box<dyn Future<Output = ()> + Send + '_>>> {
        if self.ops.capacity() >= HEADROOM {
            return None;
        }
        // VoIPBIN waits (in the socket) while the log takes what came.
        Some(Box::pin(async move {
            let _ = self.ops.reserve_many(HEADROOM).await;
        }))
    }

    fn gap(&self, since: SystemTime, until: SystemTime) {
        self.send(Item::Gap(since, until));
    }

    fn covered(&self, prefixes: &[Prefix]) {
        self.send(Item::Covered(prefixes.to_vec()));
    }

    fn uncovered(&self, prefixes: &[Prefix]) {
        self.send(Item::Uncovered(prefixes.to_vec()));
    }
}

/// Degraded mode's sink: the node's own upstream straight into the hub, numbered here; the
/// loss since the log was last read is told once the upstream covers the stream.
struct LocalSink {
    inner: HubSink,
    owed: Mutex<Option<SystemTime>>,
    /// Cleared when the node rejoins, before the log's numbering takes over: nothing the
    /// closing upstream still hands over reaches the hub after that.
    active: Arc<AtomicBool>,
}

impl LocalSink {
    fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }
}

impl EventSink for LocalSink {
    fn publish(&self, event: Event) {
        if self.active() {
            self.inner.publish(event);
        }
    }

    fn gap(&self, since: SystemTime, until: SystemTime) {
        if self.active() {
            self.inner.gap(since, until);
        }
    }

    fn covered(&self, prefixes: &[Prefix]) {
        if !self.active() {
            return;
        }
        self.inner.covered(prefixes);
        let owed = self.owed.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(since) = owed {
            let reason = GapReason::ClusterDegraded;
            let told = self.inner.0.publish_gap(reason, since, SystemTime::now());
            metrics::counter!("fanout_gaps_sent_total", "reason" => reason.as_str())
                .increment(told as u64);
        }
    }

    fn uncovered(&self, prefixes: &[Prefix]) {
        self.inner.uncovered(prefixes);
    }
}

/// Degraded mode's own upstream.
struct Local {
    upstream: Arc<Upstream>,
    /// What it has been asked for: this node's own prefixes.
    owned: BTreeSet<Prefix>,
    active: Arc<AtomicBool>,
}

/// The customer's term this node owns.
struct Owning {
    term: u64,
    node_term: u64,
    upstream: Arc<Upstream>,
    /// What it has been asked for.
    owned: BTreeSet<Prefix>,
    /// Prefixes no node needs any more, since when: they go after `interest_linger`.
    dropping: BTreeMap<Prefix, Instant>,
    /// Whether the fleet's interest was found past the connection limit (said once).
    capped: bool,
    /// Cancelled when the term must end at once (the publisher too far behind).
    ended: CancellationToken,
    finish: CancellationToken,
}

/// The hub as a [`Stream`] the reader drives.
struct HubStream<'a>(&'a Hub);

impl Stream for HubStream<'_> {
    fn next_cursor(&self) -> Cursor {
        self.0.next_cursor()
    }

    fn renumber(&mut self, at: Cursor) {
        self.0.renumber(at);
    }

    fn covered(&mut self, prefixes: &[Prefix]) {
        self.0.covered(prefixes);
    }

    fn uncovered(&mut self, prefixes: &[Prefix]) {
        self.0.uncovered(prefixes);
    }

    fn event(&mut self, event: Event, at: Cursor, live: bool) {
        if live {
            self.0.publish_at(event, Some(at));
        } else {
            self.0.store_at(event, at);
        }
    }

    fn gap(
        &mut self,
        reason: GapReason,
        since: SystemTime,
        until: SystemTime,
        at: Cursor,
        live: bool,
    ) {
        if live {
            let told = self.0.publish_gap_at(reason, since, until, Some(at));
            metrics::counter!("fanout_gaps_sent_total", "reason" => reason.as_str())
                .increment(told as u64);
        } else {
            self.0.store_gap_at(reason, since, until, at);
        }
    }
}

/// One customer's task on this node.
pub(crate) struct Customer {
    node: Arc<Node>,
    customer: Uuid,
    hub: Arc<Hub>,
    shared: Arc<Shared>,
    hosted: Arc<Hosted>,
    deliveries: mpsc::Receiver<Delivery>,
    /// The log's position when the customer was opened: what is older is history.
    position: u64,
}

impl Customer {
    pub(crate) fn new(
        node: Arc<Node>,
        customer: Uuid,
        hub: Arc<Hub>,
        shared: Arc<Shared>,
        hosted: Arc<Hosted>,
        deliveries: mpsc::Receiver<Delivery>,
        position: u64,
    ) -> Self {
        Customer {
            node,
            customer,
            hub,
            shared,
            hosted,
            deliveries,
            position,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut reader = CustomerReader::new(SystemTime::now());
        let mut owning: Option<Owning> = None;
        let mut local: Option<Local> = None;
        let mut degraded = self.node.degraded.subscribe();
        let mut wanted = self.shared.local.subscribe();
        let mut terms = self.node.term.subscribe();
        if *degraded.borrow_and_update() {
            local = Some(self.go_local(&mut reader));
        } else {
            self.catch_up(&mut reader).await;
        }
        self.hub.caught_up();
        // When to look at ownership again (placement delays, retries, lingering prefixes).
        let mut look_at = Instant::now();
        let mut restated_at: Option<Instant> = None;
        loop {
            let ended = owning.as_ref().map(|o| o.ended.clone());
            tokio::select! {
                biased;
                () = self.shared.close.cancelled() => break,
                changed = degraded.changed() => {
                    if changed.is_ok() && *degraded.borrow_and_update() && local.is_none() {
                        self.end_owning(&mut owning, false).await;
                        local = Some(self.go_local(&mut reader));
                    }
                }
                delivery = self.deliveries.recv() => match delivery {
                    Some(Delivery::Records(records)) => {
                        self.notice(&mut reader, &mut local, &mut look_at);
                        if local.is_none() {
                            self.take(&mut reader, records, true);
                        }
                    }
                    None => break,
                },
                () = self.hosted.wake.notified() => {
                    self.notice(&mut reader, &mut local, &mut look_at);
                    look_at = Instant::now();
                }
                changed = wanted.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    if let Some(local) = local.as_mut() {
                        self.reconcile_local(local);
                    }
                    look_at = Instant::now();
                }
                _ = terms.changed() => look_at = Instant::now(),
                () = async { ended.expect("guarded").cancelled().await }, if ended.is_some() => {
                    self.end_owning(&mut owning, false).await;
                    look_at = Instant::now() + self.node.settings.lease_ttl / 3;
                }
                () = tokio::time::sleep_until(look_at), if local.is_none() => {
                    look_at = self.look(&mut owning, &reader).await;
                    // The owner's coverage unknown here: ask it to say it again.
                    let owner = self.node.roster().record(self.customer).cloned();
                    if owning.is_none()
                        && !reader.knows_coverage()
                        && restated_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(2))
                        && let Some(Ownership::Owned(owner)) = owner
                    {
                        restated_at = Some(Instant::now());
                        self.node.ask_restate(&owner.node, self.customer).await;
                        look_at = look_at.min(Instant::now() + Duration::from_secs(2));
                    }
                }
            }
        }
        if let Some(left) = local {
            left.active.store(false, Ordering::Release);
            left.upstream.close();
        }
        self.end_owning(&mut owning, true).await;
        // Not this node's customer any more (its interest writer removes the key), unless
        // it was opened anew meanwhile.
        let mut hosted = self.node.hosted();
        if hosted
            .0
            .get(&self.customer)
            .is_some_and(|h| Arc::ptr_eq(h, &self.hosted))
        {
            hosted.0.remove(&self.customer);
        }
    }

    /// What the node's reader flagged: records lost on the way here, or the node back on
    /// the log after degraded mode (this customer's own upstream closes, and what comes next
    /// follows a loss).
    fn notice(
        &self,
        reader: &mut CustomerReader,
        local: &mut Option<Local>,
        look_at: &mut Instant,
    ) {
        if self.hosted.rejoin.swap(false, Ordering::AcqRel) {
            if let Some(left) = local.take() {
                left.active.store(false, Ordering::Release);
                left.upstream.close();
                self.shared.status().upstream = None;
                self.hub
                    .uncovered(&left.owned.iter().cloned().collect::<Vec<_>>());
                tracing::info!(customer = %self.customer, "Rejoining the cluster");
            }
            self.hosted.lost.store(false, Ordering::Release);
            reader.rejoin(SystemTime::now());
            *look_at = Instant::now();
        }
        if self.hosted.lost.swap(false, Ordering::AcqRel) {
            reader.lost(&mut HubStream(&self.hub));
        }
    }

    /// Records read from the log, into the hub.
    fn take(
        &self,
        reader: &mut CustomerReader,
        records: Vec<(Stamp, crate::log::Record)>,
        live: bool,
    ) {
        let now = SystemTime::now();
        let mut stream = HubStream(&self.hub);
        for (stamp, record) in records {
            if reader.read(stamp, record, live, now, &mut stream) == Read::Dropped {
                metrics::counter!("fanout_cluster_fenced_total", "side" => "reader").increment(1);
            }
        }
        self.shared.status().broken_since = None;
    }

    /// Reads the customer's recent history from its owner's subject into the window: what
    /// the log held up to where the node's reader stood when the customer was opened (what
    /// came after reaches this task live). Bounded by `request_timeout`.
    async fn catch_up(&self, reader: &mut CustomerReader) {
        let timeout = self.node.settings.request_timeout;
        let record =
            tokio::time::timeout(timeout, self.node.membership.record(self.customer)).await;
        let Ok(Ok(Ownership::Owned(owner))) = record else {
            return;
        };
        let subject = subject_of(&owner.node);
        let start = SystemTime::now()
            .checked_sub(self.node.settings.catch_up)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let read = async {
            let consumer = self
                .node
                .stream
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: subject.clone(),
                    deliver_policy: consumer::DeliverPolicy::ByStartTime {
                        start_time: start.into(),
                    },
                    ..Default::default()
                })
                .await
                .ok()?;
            if consumer.cached_info().num_pending == 0 {
                return Some(());
            }
            let mut messages = consumer.messages().await.ok()?;
            while let Some(Ok(message)) = messages.next().await {
                let Ok(info) = message.info() else { break };
                if info.stream_sequence > self.position {
                    break;
                }
                let pending = info.pending;
                if let Ok(Opened::Batch { records, .. }) =
                    wire::open(&self.node.settings.fleet_key, &subject, &message.payload)
                {
                    let mine: Vec<_> = records
                        .filter_map(Result::ok)
                        .filter(|(c, _, _)| *c == self.customer)
                        .map(|(_, stamp, record)| (stamp, record))
                        .collect();
                    self.take(reader, mine, false);
                }
                if pending == 0 {
                    break;
                }
            }
            Some(())
        };
        if tokio::time::timeout(timeout, read).await.is_err() {
            tracing::warn!(customer = %self.customer, "The customer's history was not read in in time: resumes are judged on what this node has");
        }
    }

    /// Looks at the customer's ownership: keeps owning, or takes it when nobody lives who
    /// owns it and this node's turn came. Answers when to look again.
    async fn look(&self, owning: &mut Option<Owning>, reader: &CustomerReader) -> Instant {
        let ttl = self.node.settings.lease_ttl;
        let Some(node_term) = self.node.serving() else {
            // Between this node's terms: whatever it owned is over.
            self.end_owning(owning, false).await;
            return Instant::now() + Duration::from_millis(500);
        };
        if let Some(o) = owning.as_mut() {
            if o.node_term != node_term {
                self.end_owning(owning, false).await;
            } else {
                // Someone wrote the record after this node took it (the roster may not have
                // this node's own write yet: an older record says nothing).
                let taken_over = match self.node.roster().record(self.customer) {
                    Some(Ownership::Owned(r)) => {
                        r.term > o.term
                            || (r.term == o.term && r.node != self.node.settings.node_id)
                    }
                    Some(Ownership::HandedOver { revision }) => *revision > o.term,
                    _ => false,
                };
                if taken_over {
                    metrics::counter!("fanout_cluster_fenced_total", "side" => "lease")
                        .increment(1);
                    tracing::warn!(customer = %self.customer, "The customer was taken over: closing the upstream");
                    self.end_owning(owning, false).await;
                } else {
                    let o = owning.as_mut().expect("owning");
                    self.reconcile(o);
                    return Instant::now()
                        + if o.dropping.is_empty() {
                            Duration::from_secs(3600)
                        } else {
                            Duration::from_secs(1)
                        };
                }
            }
        }
        // Not owning: does anyone live who does?
        let record = self.node.roster().record(self.customer).cloned();
        let record = match record {
            Some(record) => record,
            None => match tokio::time::timeout(
                self.node.settings.request_timeout,
                self.node.membership.record(self.customer),
            )
            .await
            {
                Ok(Ok(record)) => record,
                _ => return Instant::now() + Duration::from_millis(500),
            },
        };
        let (owed, expected) = match &record {
            Ownership::Owned(owner) if self.node.roster().lives(&owner.node, owner.node_term) => {
                // Owned by a live node (maybe this one in a term it still holds but no
                // longer serves: then it is taken anew below, next time).
                if owner.node == self.node.settings.node_id && owner.node_term == node_term {
                    (Some(GapReason::OwnerFailover), owner.term)
                } else {
                    return Instant::now() + ttl;
                }
            }
            Ownership::Owned(owner) => {
                // Its node term looks over: the store says so (the roster may lag), and it
                // is fenced first, so nothing of it is stored after this node's records.
                match tokio::time::timeout(
                    self.node.settings.request_timeout,
                    self.node.membership.node_term(&owner.node),
                )
                .await
                {
                    Ok(Ok(term)) if term == Some(owner.node_term) => {
                        return Instant::now() + ttl / 3;
                    }
                    Ok(Ok(_)) => {}
                    _ => return Instant::now() + Duration::from_millis(500),
                }
                if !self.node.fence(&owner.node, owner.node_term).await {
                    return Instant::now() + Duration::from_millis(500);
                }
                (Some(GapReason::OwnerFailover), owner.term)
            }
            Ownership::HandedOver { revision } => (Some(GapReason::OwnerHandoff), *revision),
            Ownership::Never => (None, 0),
        };
        // Placement: the first-ranked of the live nodes that need the customer takes it at
        // once, the others after a moment each (in case it does not).
        let interested = self.interested_rank();
        if interested > 0 {
            let waited = self.waited_since(reader);
            let turn = RANK_STEP * u32::try_from(interested).unwrap_or(u32::MAX);
            if waited < turn {
                return Instant::now() + (turn - waited);
            }
        }
        match tokio::time::timeout(
            self.node.settings.request_timeout,
            self.node
                .membership
                .take(self.customer, node_term, expected),
        )
        .await
        {
            Ok(Ok(Some(term))) => {
                let since = reader.last_read();
                *owning = self.begin_owning(term, node_term, owed.map(|r| (r, since)));
                Instant::now() + Duration::from_millis(100)
            }
            // Someone else took it meanwhile.
            Ok(Ok(None)) => Instant::now() + Duration::from_millis(200),
            _ => Instant::now() + Duration::from_millis(500),
        }
    }

    /// This node's rank among the live nodes that need the customer.
    fn interested_rank(&self) -> usize {
        let nodes = self.shared.interested();
        membership::rank(
            self.customer,
            &self.node.settings.node_id,
            nodes.iter().map(String::as_str),
        )
    }

    /// How long the customer has been without a live owner, as far as this node can tell:
    /// since its last record was read.
    fn waited_since(&self, reader: &CustomerReader) -> Duration {
        SystemTime::now()
            .duration_since(reader.last_read())
            .unwrap_or_default()
    }

    /// Starts owning in the customer term `term`: tells the publisher, opens the upstream.
    fn begin_owning(
        &self,
        term: u64,
        node_term: u64,
        owed: Option<(GapReason, SystemTime)>,
    ) -> Option<Owning> {
        let config = &self.node.upstream;
        let ended = CancellationToken::new();
        let finish = CancellationToken::new();
        let begun = self.node.ops.try_send(Op::Begin {
            customer: self.customer,
            term,
            node_term,
            epoch: rand::random(),
            owed,
            // A new connection has this long to open and answer its first barrier.
            hold_until: std::time::Instant::now() + config.connect_timeout + config.pong_timeout,
        });
        if begun.is_err() {
            return None;
        }
        let upstream = Arc::new(Upstream::spawn(
            self.customer,
            config.clone(),
            Arc::new(OwnerSink {
                customer: self.customer,
                term,
                ops: self.node.ops.clone(),
                overflow: ended.clone(),
                finish: finish.clone(),
            }),
            &ended,
        ));
        if owed.is_some() {
            metrics::counter!("fanout_cluster_takeovers_total").increment(1);
        }
        self.shared.status().upstream = Some(upstream.clone());
        tracing::info!(customer = %self.customer, term, takeover = ?owed.map(|(r, _)| r), "Owning the customer's upstream");
        let mut owning = Owning {
            term,
            node_term,
            upstream,
            owned: BTreeSet::new(),
            dropping: BTreeMap::new(),
            capped: false,
            ended,
            finish,
        };
        self.reconcile(&mut owning);
        Some(owning)
    }

    /// Stops owning: closes the upstream; on a handoff writes the term's end and deletes the
    /// record, so that a successor takes over at once.
    async fn end_owning(&self, owning: &mut Option<Owning>, handoff: bool) {
        let Some(o) = owning.take() else {
            return;
        };
        self.shared.status().upstream = None;
        o.finish.cancel();
        o.upstream.close();
        let timeout = self.node.settings.request_timeout;
        let orderly = handoff && !o.ended.is_cancelled();
        if orderly {
            let (done, written) = oneshot::channel();
            let sent = self.node.ops.try_send(Op::End {
                customer: self.customer,
                term: o.term,
                done,
            });
            let stored = sent.is_ok()
                && matches!(tokio::time::timeout(timeout, written).await, Ok(Ok(true)));
            if !stored {
                tracing::warn!(customer = %self.customer, "Cannot write the term's end");
                let _ = self.node.ops.try_send(Op::Drop {
                    customer: self.customer,
                    term: o.term,
                });
            }
        } else {
            let _ = self.node.ops.try_send(Op::Drop {
                customer: self.customer,
                term: o.term,
            });
        }
        if handoff {
            // Whatever the end's fate, the record goes: nobody would take the customer
            // over while this node lives otherwise. A late record of this term is older
            // than the successor's, and readers drop it.
            let _ = tokio::time::timeout(
                timeout,
                self.node.membership.hand_over(self.customer, o.term),
            )
            .await;
        }
        tracing::info!(customer = %self.customer, term = o.term, handoff, "No longer owning the customer's upstream");
    }

    /// Brings the owned upstream to what the fleet needs now: a prefix some node needs is
    /// added at once; one no node needs goes after `interest_linger`.
    fn reconcile(&self, owning: &mut Owning) {
        let (desired, left_out) = self.shared.desired();
        let now = Instant::now();
        let linger = self.node.settings.interest_linger;
        let before = owning.owned.clone();
        for prefix in &desired {
            owning.dropping.remove(prefix);
            if owning.owned.insert(prefix.clone()) {
                owning.upstream.add(prefix);
            }
        }
        let unneeded: Vec<Prefix> = owning
            .owned
            .iter()
            .filter(|p| !desired.contains(*p))
            .cloned()
            .collect();
        for prefix in unneeded {
            let since = *owning.dropping.entry(prefix.clone()).or_insert(now);
            if now.saturating_duration_since(since) >= linger {
                owning.dropping.remove(&prefix);
                owning.owned.remove(&prefix);
                owning.upstream.remove(&prefix);
            }
        }
        if owning.owned != before {
            let _ = self.node.ops.try_send(Op::Want {
                customer: self.customer,
                term: owning.term,
                wanted: owning.owned.clone(),
            });
        }
        if !owning.capped && left_out {
            owning.capped = true;
            tracing::warn!(customer = %self.customer, max = self.node.upstream.max_connections, "The fleet's sessions need more connections to VoIPBIN than a customer may have: some of their topics are left out");
        }
    }

    /// Brings degraded mode's own upstream to what this node's sessions need now.
    fn reconcile_local(&self, local: &mut Local) {
        let desired = self.shared.wanted_set();
        for prefix in desired.difference(&local.owned) {
            local.upstream.add(prefix);
        }
        for prefix in local.owned.difference(&desired) {
            local.upstream.remove(prefix);
        }
        local.owned = desired;
    }

    /// Degraded mode: serves this node's sessions from an upstream of its own, numbered here
    /// in an epoch of its own.
    fn go_local(&self, reader: &mut CustomerReader) -> Local {
        reader.uncover(&mut HubStream(&self.hub));
        self.hub.renumber(Cursor {
            epoch: rand::random(),
            offset: 0,
        });
        let active = Arc::new(AtomicBool::new(true));
        let upstream = Arc::new(Upstream::spawn(
            self.customer,
            self.node.upstream.clone(),
            Arc::new(LocalSink {
                inner: HubSink(self.hub.clone()),
                owed: Mutex::new(Some(reader.last_read())),
                active: active.clone(),
            }),
            &self.shared.close,
        ));
        {
            let mut status = self.shared.status();
            status.upstream = Some(upstream.clone());
            status.broken_since.get_or_insert_with(Instant::now);
        }
        tracing::info!(customer = %self.customer, "Degraded: serving the customer from this node's own upstream");
        let mut local = Local {
            upstream,
            owned: BTreeSet::new(),
            active,
        };
        self.reconcile_local(&mut local);
        local
    }
}
