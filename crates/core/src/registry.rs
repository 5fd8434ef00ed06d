//! The customers this node serves: for each, its fan-out [`Hub`] and its one [`Feed`].
//!
//! The registry is the gateway's [`Directory`]: it places each session pattern in the hub of
//! the customer whose events it selects, and tells that customer's feed what the patterns
//! need upstream, counted, so the last pattern leaving unsubscribes. A customer's entry (hub
//! and feed) is created with its first session and removed a linger time after its last one
//! left.
//!
//! Which hub a pattern goes to:
//! - `customer_id:<X>…` → customer X's hub (X is the session's own customer, except for a
//!   project super-admin, whose patterns may name any customer);
//! - `agent_id:<A>…` → the session's own customer's hub (agent events are served from the
//!   customer's stream, and matched to the agent by the owner topics the decoder derives).
//!
//! What a pattern needs upstream is its [`Prefix`] on the customer's stream, in the
//! upstream's [`Matching`] (`customer_id:<C>:call:` for `customer_id:<C>:call:*` and
//! `agent_id:<A>:call:*` alike, on VoIPBIN's prefix-matching server). A subscribe whose
//! prefixes the customer's feed cannot take (more connections to VoIPBIN than allowed) is
//! refused whole, checked and applied under one lock.
//!
//! A session that ends leaves its upstream patterns subscribed for the linger time (an
//! explicit unsubscribe does not): a browser that reconnects within it resumes without the
//! customer's stream having stopped covering what it needs.
//!
//! Tenant isolation follows: a hub only ever holds patterns permitted to see its customer's
//! events, and only its customer's upstream publishes into it.
//!
//! The registry's lock is beside the hot path: publishing goes from an upstream's reader
//! straight to its hub and never takes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use fanout_protocol::Pattern;
use fanout_protocol::cursor::Cursor;
use fanout_protocol::prefix::{Matching, Prefix};
use fanout_session::hub::WindowBudget;
use fanout_session::window::WindowLimits;
use fanout_session::{Directory, Hub, Subscriber, UpstreamLimit};

use crate::feed::{Feed, Feeds};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Entry {
    hub: Arc<Hub>,
    upstream: Arc<dyn Feed>,
    /// Sessions of the customer, plus patterns of other customers' super-admins.
    users: usize,
    /// Bumped whenever `users` drops to zero, so a stale linger timer does nothing.
    generation: u64,
}

/// A snapshot of one customer's entry.
#[derive(Debug, Clone)]
pub struct CustomerInfo {
    /// The customer.
    pub customer_id: Uuid,
    /// Its users (sessions and foreign patterns).
    pub users: usize,
    /// Patterns in its hub.
    pub patterns: usize,
    /// Its feed's state.
    pub upstream: &'static str,
    /// The node holding its upstream, in a cluster.
    pub owner: Option<String>,
    /// That owner's term, in a cluster.
    pub term: Option<u64>,
    /// What its upstream is subscribed to.
    pub upstream_patterns: Vec<String>,
    /// Its connections to VoIPBIN on this node (one per label in use).
    pub upstream_connections: usize,
    /// Upstream prefixes known applied by VoIPBIN: a resume needs them covered.
    pub covered: Vec<String>,
    /// Events and gaps its window keeps for resumes.
    pub window_events: usize,
    /// Their bytes.
    pub window_bytes: usize,
}

/// Every few seconds, each window forgets what is past its age, events or not: a customer
/// gone quiet does not keep its old events in the node's budget.
async fn sweep_windows(registry: Weak<Registry>) {
    let Some(cancel) = registry.upgrade().map(|r| r.cancel.clone()) else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(registry) = registry.upgrade() else {
            return;
        };
        let hubs: Vec<Arc<Hub>> = registry.lock().values().map(|e| e.hub.clone()).collect();
        drop(registry);
        for hub in hubs {
            hub.forget_old();
        }
    }
}

/// The gateway's customers.
pub struct Registry {
    customers: Mutex<HashMap<Uuid, Entry>>,
    /// When an upstream was last known to work, or customers last appeared on a node that
    /// had none: how long the node has been without a working upstream is counted from it.
    worked: Mutex<Instant>,
    feeds: Arc<dyn Feeds>,
    matching: Matching,
    linger: Duration,
    window: WindowLimits,
    budget: Arc<WindowBudget>,
    cancel: CancellationToken,
    me: Weak<Registry>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// An empty registry whose customers' events come from `feeds`, asked for in
    /// `matching`, each window keeping what `window` says within `window_budget` bytes for
    /// the node; feeds run until `cancel` is cancelled.
    pub fn new(
        feeds: Arc<dyn Feeds>,
        matching: Matching,
        linger: Duration,
        window: WindowLimits,
        window_budget: usize,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let registry = Arc::new_cyclic(|me| Registry {
            customers: Mutex::new(HashMap::new()),
            worked: Mutex::new(Instant::now()),
            feeds,
            matching,
            linger,
            window,
            budget: WindowBudget::new(window_budget),
            cancel,
            me: me.clone(),
        });
        tokio::spawn(sweep_windows(Arc::downgrade(&registry)));
        registry
    }

    /// What `customer`'s upstream needs for a session pattern placed in its hub.
    fn prefix_of(&self, pattern: &Pattern, customer: Uuid) -> Prefix {
        Prefix::for_pattern(pattern, customer, self.matching)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Entry>> {
        // The map stays consistent even if a holder panicked.
        self.customers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry<'a>(&self, customers: &'a mut HashMap<Uuid, Entry>, customer: Uuid) -> &'a mut Entry {
        if customers.is_empty() {
            // Without customers, no upstream was needed: the count starts now.
            *self.lock_worked() = Instant::now();
        }
        customers.entry(customer).or_insert_with(|| {
            let hub = Arc::new(Hub::with_window(customer, self.window, self.budget.clone()));
            let upstream = self.feeds.open(customer, hub.clone(), &self.cancel);
            metrics::gauge!("fanout_customers").increment(1.0);
            tracing::info!(%customer, "Customer entry created");
            Entry {
                hub,
                upstream,
                users: 0,
                generation: 0,
            }
        })
    }

    /// Drops a user of `customer`; the last one starts the linger timer.
    fn release(&self, customers: &mut HashMap<Uuid, Entry>, customer: Uuid) {
        let Some(entry) = customers.get_mut(&customer) else {
            return;
        };
        entry.users = entry.users.saturating_sub(1);
        if entry.users == 0 {
            self.users_gone(customers, customer);
        }
    }

    /// `customer` has no users left: its entry goes after the linger time, unless one
    /// comes back.
    fn users_gone(&self, customers: &mut HashMap<Uuid, Entry>, customer: Uuid) {
        let Some(entry) = customers.get_mut(&customer) else {
            return;
        };
        entry.generation += 1;
        let generation = entry.generation;
        let me = self.me.clone();
        self.after_linger(move || {
            if let Some(registry) = me.upgrade() {
                registry.expire(customer, generation);
            }
        });
    }

    /// Runs `then` a linger time from now, unless the registry is cancelled first.
    fn after_linger(&self, then: impl FnOnce() + Send + 'static) {
        let linger = self.linger;
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = tokio::time::sleep(linger) => then(),
            }
        });
    }

    fn expire(&self, customer: Uuid, generation: u64) {
        let mut customers = self.lock();
        let idle = customers
            .get(&customer)
            .is_some_and(|e| e.users == 0 && e.generation == generation);
        if idle && let Some(entry) = customers.remove(&customer) {
            self.note_worked(&entry.upstream);
            entry.upstream.close();
            metrics::gauge!("fanout_customers").decrement(1.0);
            tracing::info!(%customer, "Customer entry removed after linger");
        }
    }

    fn lock_worked(&self) -> MutexGuard<'_, Instant> {
        self.worked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps what `upstream` knew of when it last worked.
    fn note_worked(&self, upstream: &Arc<dyn Feed>) {
        if let Some(ago) = upstream.status().down_for {
            let at = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
            let mut worked = self.lock_worked();
            *worked = (*worked).max(at);
        }
    }

    /// How long the node has had customers but no working upstream; zero when it has no
    /// customers or one upstream works.
    pub fn without_upstream(&self) -> Duration {
        let customers = self.lock();
        if customers.is_empty() {
            return Duration::ZERO;
        }
        for entry in customers.values() {
            self.note_worked(&entry.upstream);
        }
        drop(customers);
        self.lock_worked().elapsed()
    }

    /// A snapshot of every customer's entry. The registry's lock is held only to list them:
    /// no hub's stream lock is taken under it.
    pub fn customers(&self) -> Vec<CustomerInfo> {
        let entries: Vec<_> = self
            .lock()
            .iter()
            .map(|(customer, e)| (*customer, e.users, e.hub.clone(), e.upstream.clone()))
            .collect();
        entries
            .into_iter()
            .map(|(customer_id, users, hub, feed)| {
                let status = feed.status();
                let window = hub.window_stats();
                CustomerInfo {
                    customer_id,
                    users,
                    patterns: hub.len(),
                    upstream: status.state,
                    owner: status.owner.clone(),
                    term: status.term,
                    upstream_patterns: status
                        .wanted
                        .iter()
                        .map(|p| p.as_str().to_owned())
                        .collect(),
                    upstream_connections: status.connections,
                    covered: hub.covered_prefixes(),
                    window_events: window.entries,
                    window_bytes: window.bytes,
                }
            })
            .collect()
    }

    /// The bytes all customers' windows keep.
    pub fn window_bytes(&self) -> usize {
        self.budget.used()
    }

    /// Closes every upstream now.
    pub fn close_all(&self) {
        for (_, entry) in self.lock().drain() {
            self.note_worked(&entry.upstream);
            entry.upstream.close();
            metrics::gauge!("fanout_customers").decrement(1.0);
        }
    }
}

impl Directory for Registry {
    fn attach(&self, session: &Subscriber) {
        let mut customers = self.lock();
        self.entry(&mut customers, session.0.customer_id()).users += 1;
    }

    fn subscribe(&self, session: &Subscriber, patterns: &[Pattern]) -> Result<(), UpstreamLimit> {
        let own = session.0.customer_id();
        let mut customers = self.lock();
        // Each pattern's stream and prefix, in order.
        let placed: Vec<(Uuid, Prefix)> = patterns
            .iter()
            .map(|p| {
                let customer = session.stream_of(p);
                (customer, self.prefix_of(p, customer))
            })
            .collect();
        // Every customer's feed takes its new prefixes, or nothing is applied.
        let mut streams: Vec<Uuid> = placed.iter().map(|(customer, _)| *customer).collect();
        streams.sort();
        streams.dedup();
        for customer in &streams {
            let prefixes: Vec<Prefix> = placed
                .iter()
                .filter(|(c, _)| c == customer)
                .map(|(_, prefix)| prefix.clone())
                .collect();
            let admitted = self
                .entry(&mut customers, *customer)
                .upstream
                .admits(&prefixes);
            if let Err(max) = admitted {
                // An entry made for this refusal alone (another customer's, for a
                // super-admin) goes with it.
                for customer in &streams {
                    if *customer != own && customers.get(customer).is_some_and(|e| e.users == 0) {
                        self.users_gone(&mut customers, *customer);
                    }
                }
                return Err(UpstreamLimit {
                    max,
                    patterns: patterns
                        .iter()
                        .zip(&placed)
                        .filter(|(_, (c, _))| c == customer)
                        .map(|(pattern, _)| pattern.clone())
                        .collect(),
                });
            }
        }
        for (pattern, (customer, prefix)) in patterns.iter().zip(&placed) {
            let entry = self.entry(&mut customers, *customer);
            if *customer != own {
                entry.users += 1;
            }
            if entry.hub.insert(pattern, session) {
                entry.upstream.add(prefix);
            }
        }
        Ok(())
    }

    fn unsubscribe(&self, session: &Subscriber, pattern: &Pattern) {
        let customer = session.stream_of(pattern);
        let mut customers = self.lock();
        let Some(entry) = customers.get_mut(&customer) else {
            return;
        };
        if entry.hub.remove(pattern, session) {
            entry.upstream.remove(&self.prefix_of(pattern, customer));
        }
        if customer != session.0.customer_id() {
            self.release(&mut customers, customer);
        }
    }

    fn detach(&self, session: &Subscriber, patterns: &[Pattern]) {
        let own = session.0.customer_id();
        let mut lingering: Vec<(Arc<dyn Feed>, Prefix)> = Vec::new();
        {
            let mut customers = self.lock();
            for pattern in patterns {
                let customer = session.stream_of(pattern);
                if let Some(entry) = customers.get_mut(&customer)
                    && entry.hub.remove(pattern, session)
                {
                    lingering.push((entry.upstream.clone(), self.prefix_of(pattern, customer)));
                }
                if customer != own {
                    self.release(&mut customers, customer);
                }
            }
            self.release(&mut customers, own);
        }
        if lingering.is_empty() {
            return;
        }
        // The upstream keeps them for the linger time: the browser may be back at once.
        self.after_linger(move || {
            for (upstream, prefix) in lingering {
                upstream.remove(&prefix);
            }
        });
    }

    fn resume(
        &self,
        session: &Subscriber,
        patterns: &[Pattern],
        held: &[Pattern],
        held_since: Option<Cursor>,
        since: Cursor,
    ) -> Result<bool, UpstreamLimit> {
        let customer = patterns
            .first()
            .map_or(session.0.customer_id(), |p| session.stream_of(p));
        let prefixes: Vec<Prefix> = patterns
            .iter()
            .map(|p| self.prefix_of(p, customer))
            .collect();
        let (hub, upstream) = {
            let mut customers = self.lock();
            let entry = self.entry(&mut customers, customer);
            if let Err(max) = entry.upstream.admits(&prefixes) {
                if customer != session.0.customer_id() && entry.users == 0 {
                    self.users_gone(&mut customers, customer);
                }
                return Err(UpstreamLimit {
                    max,
                    patterns: patterns.to_vec(),
                });
            }
            if customer != session.0.customer_id() {
                entry.users += patterns.len();
            }
            // Counted before the judgement: no other session's leaving can unsubscribe them
            // between the judgement and this session's hold.
            for prefix in &prefixes {
                entry.upstream.add(prefix);
            }
            (entry.hub.clone(), entry.upstream.clone())
        };
        // The replay is made under the hub's stream lock only, not the registry's.
        let (inserted, answer) = hub.resume(session, patterns, &prefixes, held, held_since, since);
        for (prefix, inserted) in prefixes.iter().zip(inserted) {
            if !inserted {
                upstream.remove(prefix);
            }
        }
        metrics::counter!("fanout_resumes_total", "recovered" => if answer.recovered { "true" } else { "false" })
            .increment(1);
        metrics::counter!("fanout_resume_replayed_total").increment(answer.replayed as u64);
        Ok(answer.recovered)
    }
}
