//! The per-customer fan-out: the index of a customer's session patterns, publishing an
//! upstream event to every session that may see it, and the customer's stream for resumes
//! (protocol.md §1.7).
//!
//! The stream lock orders three things: publishing (each event takes the next cursor, is
//! fanned out and kept in the window), gaps, and resumes. A resume judges the window, queues
//! its answer and replay, and enters the trie while holding it, so the first live event it
//! gets is the one after the last it was replayed: nothing lost or repeated at the seam. The
//! lock is one customer's, taken once per event by that customer's one upstream reader, so it
//! is contended only by that customer's resumes.
//!
//! What `recovered` rests on, besides the window: the upstream prefixes that a resume's
//! patterns need must have been *covered* (subscribed, and the subscription known applied by
//! VoIPBIN, see `fanout_upstream`) since no later than the client's cursor, without a break.
//!
//! An event may come twice, the second time with more topics (a copy that said more of it,
//! `Event::fresh_from`): it goes only to the sessions that its earlier topics did not reach,
//! live and in a replay alike.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use fanout_protocol::cursor::Cursor;
use fanout_protocol::prefix::Prefix;
use fanout_protocol::server::{EnvelopeHead, GapReason, gap_frame, resumed_frame};
use fanout_protocol::upstream::Event;
use fanout_protocol::{Pattern, Topic};
use fanout_topic_trie::Trie;
use uuid::Uuid;

use crate::queue::Push;
use crate::session::SessionHandle;
use crate::window::{Gap, Resume, Window, WindowLimits};

/// A session as the index holds it: compared and hashed by session id.
#[derive(Debug, Clone)]
pub struct Subscriber(pub Arc<SessionHandle>);

impl PartialEq for Subscriber {
    fn eq(&self, other: &Self) -> bool {
        self.0.id() == other.0.id()
    }
}

impl Eq for Subscriber {}

impl Hash for Subscriber {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id().hash(state);
    }
}

impl Subscriber {
    /// The customer whose stream (and hub) `pattern` selects for this session: the owner of a
    /// `customer_id:` pattern, the session's own customer for an `agent_id:` one (agent events
    /// are served from the customer's stream).
    pub fn stream_of(&self, pattern: &Pattern) -> Uuid {
        match pattern.scope() {
            fanout_protocol::Scope::Customer => pattern.owner(),
            fanout_protocol::Scope::Agent => self.0.customer_id(),
        }
    }
}

impl fanout_topic_trie::Subscriber for Subscriber {
    fn id(&self) -> u64 {
        self.0.id()
    }
}

/// What one publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Published {
    /// Sessions the event was queued to.
    pub delivered: usize,
    /// Sessions whose queue was full (each is being closed with 1013).
    pub overflowed: usize,
    /// Envelopes encoded (at most one per topic).
    pub encoded: usize,
}

/// The bytes every window of the node may keep together; past it, the window that grows
/// forgets its own oldest entries.
#[derive(Debug)]
pub struct WindowBudget {
    max_bytes: usize,
    used: AtomicUsize,
    gauge: metrics::Gauge,
}

impl WindowBudget {
    /// A budget of `max_bytes` for all windows together.
    pub fn new(max_bytes: usize) -> Arc<Self> {
        Arc::new(WindowBudget {
            max_bytes,
            used: AtomicUsize::new(0),
            gauge: metrics::gauge!("fanout_resume_window_bytes"),
        })
    }

    /// The bytes all windows keep now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn change(&self, before: usize, after: usize) {
        let used = if after >= before {
            self.used.fetch_add(after - before, Ordering::Relaxed) + (after - before)
        } else {
            self.used.fetch_sub(before - after, Ordering::Relaxed) - (before - after)
        };
        self.gauge.set(used as f64);
    }

    fn over(&self) -> bool {
        self.used() > self.max_bytes
    }
}

/// An event as the window keeps it: its topics, its head (cursor included), its data and the
/// frames made so far, one per topic, shared with every session they went to. Once a frame
/// is made, the data is a slice of it: the upstream frame the event came in is not kept.
struct Stored {
    topics: Vec<Topic>,
    /// Sessions whose first matching topic is before this one had the event already.
    fresh_from: usize,
    head: EnvelopeHead,
    data: Bytes,
    frames: [OnceCell<Bytes>; MAX_SHARED_FRAMES],
}

/// Events have at most five topics; a longer list is encoded per use past these.
const MAX_SHARED_FRAMES: usize = 5;

/// Pattern checks one resume may cost at most ((window events after the cursor + upstream
/// patterns covered) × the session's patterns), all under the customer's stream lock; past
/// it the answer is `recovered: false`, which is never wrong. 2,000 events allow 100
/// patterns.
pub const MAX_RESUME_WORK: usize = 200_000;

/// What a kept event costs besides its data and frames (head, topics, bookkeeping).
/// Measured (`crates/gateway/examples/resume_cost.rs`): the slot and its share of the
/// deque's spare room, the head's strings, the frame's allocation overheads.
const STORED_OVERHEAD: usize = 1200;

/// What a kept topic costs besides its text (its parse and its allocation).
const TOPIC_OVERHEAD: usize = 96;

impl Stored {
    /// The frame for topic `index`, and the bytes newly made for it.
    fn frame(&self, index: usize) -> (Bytes, usize) {
        let encode = || self.head.frame(&self.topics[index], &self.data);
        match self.frames.get(index) {
            Some(cell) => match cell.get() {
                Some(frame) => (frame.clone(), 0),
                None => {
                    let frame = cell.get_or_init(encode).clone();
                    let len = frame.len();
                    (frame, len)
                }
            },
            None => (encode(), 0),
        }
    }

    /// Points the data into the first frame made, if one was.
    fn share_data(&mut self) {
        if let Some(frame) = self.frames.iter().find_map(OnceCell::get) {
            self.data = self.head.data_in(frame, self.data.len());
        }
    }

    fn size(&self) -> usize {
        let topics: usize = self
            .topics
            .iter()
            .map(|t| t.as_str().len() + TOPIC_OVERHEAD)
            .sum();
        let frames: usize = self
            .frames
            .iter()
            .filter_map(|f| f.get().map(Bytes::len))
            .sum();
        // The data is counted apart only while it is not inside a frame.
        let data = if frames == 0 { self.data.len() } else { 0 };
        STORED_OVERHEAD + data + topics + frames
    }
}

/// A customer's stream: the window, and since when each upstream prefix is covered.
struct Stream {
    window: Window<Stored>,
    /// Upstream prefix → the offset from which every event it selects is in the stream.
    covered: HashMap<Prefix, u64>,
    /// The stream is being filled from elsewhere (a cluster's log, from its term's
    /// beginning): resumes wait in `deferred` until it is whole.
    catching_up: bool,
    deferred: Vec<Deferred>,
}

/// A resume that waits for the stream to catch up.
struct Deferred {
    session: Subscriber,
    patterns: Vec<Pattern>,
    /// The upstream prefix each of `patterns` needs.
    upstream: Vec<Prefix>,
    held: Vec<Pattern>,
    held_since: Option<Cursor>,
    since: Cursor,
}

/// Resumes that may wait for one stream to catch up; past it, they are judged at once.
pub const MAX_DEFERRED: usize = 1024;

/// What a resume answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    /// Whether nothing after the client's cursor can be missing.
    pub recovered: bool,
    /// Events replayed.
    pub replayed: usize,
}

/// A window's size now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowStats {
    /// Events and gaps kept.
    pub entries: usize,
    /// Their bytes.
    pub bytes: usize,
}

/// One customer's sessions, indexed by pattern, and its recent stream.
pub struct Hub {
    customer_id: Uuid,
    trie: Trie<Subscriber>,
    stream: Mutex<Stream>,
    /// Whether `stream.deferred` may hold anything (read without the lock on the
    /// unsubscribe path).
    has_deferred: AtomicBool,
    budget: Arc<WindowBudget>,
    // Metric handles, registered once: the publish path does no registry lookups.
    events_in: metrics::Counter,
    deliveries: metrics::Counter,
    fanout_seconds: metrics::Histogram,
}

impl Drop for Hub {
    fn drop(&mut self) {
        let bytes = self.lock_stream().window.bytes();
        self.budget.change(bytes, 0);
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("customer_id", &self.customer_id)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// An empty hub for `customer_id`, its window at the default limits and a budget of its
    /// own.
    pub fn new(customer_id: Uuid) -> Self {
        let limits = WindowLimits::default();
        Hub::with_window(customer_id, limits, WindowBudget::new(limits.max_bytes))
    }

    /// An empty hub whose window keeps what `limits` say, within the node's `budget`. Its
    /// epoch is random: cursors of an earlier hub of the customer are never taken for its own.
    pub fn with_window(customer_id: Uuid, limits: WindowLimits, budget: Arc<WindowBudget>) -> Self {
        Hub {
            customer_id,
            trie: Trie::new(),
            stream: Mutex::new(Stream {
                window: Window::new(rand::random(), limits),
                covered: HashMap::new(),
                catching_up: false,
                deferred: Vec::new(),
            }),
            has_deferred: AtomicBool::new(false),
            budget,
            events_in: metrics::counter!("fanout_events_in_total"),
            deliveries: metrics::counter!("fanout_deliveries_total"),
            fanout_seconds: metrics::histogram!("fanout_fanout_seconds"),
        }
    }

    fn lock_stream(&self) -> MutexGuard<'_, Stream> {
        // The stream stays consistent even if a holder panicked.
        self.stream.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets past the limits and the node's budget; keeps the budget's count.
    fn settle(&self, stream: &mut Stream, before: usize, now: tokio::time::Instant) {
        stream.window.forget(now);
        self.budget.change(before, stream.window.bytes());
        while self.budget.over() && !stream.window.is_empty() {
            let before = stream.window.bytes();
            stream.window.forget_oldest();
            self.budget.change(before, stream.window.bytes());
        }
    }

    /// The window's size now.
    pub fn window_stats(&self) -> WindowStats {
        let stream = self.lock_stream();
        WindowStats {
            entries: stream.window.len(),
            bytes: stream.window.bytes(),
        }
    }

    /// The upstream now delivers every event that `prefixes` select (in order with events).
    pub fn covered(&self, prefixes: &[Prefix]) {
        let mut stream = self.lock_stream();
        let from = stream.window.next_cursor().offset;
        for prefix in prefixes {
            stream.covered.entry(prefix.clone()).or_insert(from);
        }
    }

    /// The upstream prefixes covered now (see [`Hub::covered`]), sorted.
    pub fn covered_prefixes(&self) -> Vec<String> {
        let mut covered: Vec<String> = self
            .lock_stream()
            .covered
            .keys()
            .map(|p| p.as_str().to_owned())
            .collect();
        covered.sort();
        covered
    }

    /// Events that `prefixes` select may no longer arrive.
    pub fn uncovered(&self, prefixes: &[Prefix]) {
        let mut stream = self.lock_stream();
        for prefix in prefixes {
            stream.covered.remove(prefix);
        }
    }

    /// The customer whose events this hub publishes.
    pub fn customer_id(&self) -> Uuid {
        self.customer_id
    }

    /// Adds a session's pattern; false if it was there.
    pub fn insert(&self, pattern: &Pattern, subscriber: &Subscriber) -> bool {
        self.trie.insert(pattern, subscriber.clone())
    }

    /// Removes a session's pattern; false if it was not there (in the trie, or in a resume
    /// waiting for the stream to catch up).
    pub fn remove(&self, pattern: &Pattern, subscriber: &Subscriber) -> bool {
        if self.has_deferred.load(Ordering::Acquire) {
            let mut stream = self.lock_stream();
            let mut found = false;
            for deferred in &mut stream.deferred {
                if deferred.session == *subscriber
                    && let Some(i) = deferred.patterns.iter().position(|p| p == pattern)
                {
                    deferred.patterns.remove(i);
                    deferred.upstream.remove(i);
                    found = true;
                }
            }
            stream.deferred.retain(|d| !d.patterns.is_empty());
            if found {
                return true;
            }
        }
        self.trie.remove(pattern, subscriber)
    }

    /// The stream is filled from elsewhere from now on, and is not yet whole: resumes wait
    /// (at most [`MAX_DEFERRED`]) until [`Hub::caught_up`].
    pub fn catching_up(&self) {
        self.lock_stream().catching_up = true;
    }

    /// The stream is whole: the resumes that waited are judged now, in their order.
    pub fn caught_up(&self) {
        let now = tokio::time::Instant::now();
        let mut stream = self.lock_stream();
        stream.catching_up = false;
        let deferred = std::mem::take(&mut stream.deferred);
        self.has_deferred.store(false, Ordering::Release);
        let before = stream.window.bytes();
        for d in deferred {
            self.resume_locked(
                &mut stream,
                now,
                &d.session,
                &d.patterns,
                &d.upstream,
                &d.held,
                d.held_since,
                d.since,
            );
        }
        self.settle(&mut stream, before, now);
    }

    /// Removes every pattern of a session.
    pub fn remove_subscriber(&self, subscriber: &Subscriber) -> usize {
        self.trie.remove_subscriber(subscriber)
    }

    /// How many (pattern, session) pairs the hub holds.
    pub fn len(&self) -> usize {
        self.trie.len()
    }

    /// Whether the hub holds no pattern.
    pub fn is_empty(&self) -> bool {
        self.trie.is_empty()
    }

    /// Records a loss in the window and queues its gap frame (made once, with the gap's
    /// cursor) to every session holding a pattern here, once each, in order with the
    /// events: a session learns of a loss before the first event after it. Answers how many
    /// sessions it was queued to. Never waits, like [`Hub::publish`].
    pub fn publish_gap(&self, reason: GapReason, since: SystemTime, until: SystemTime) -> usize {
        self.publish_gap_at(reason, since, until, None)
    }

    /// Moves the stream to `at` if it was numbered elsewhere: answers false if `at` was
    /// already given out here (the entry must not be taken twice).
    fn jump(&self, stream: &mut Stream, at: Option<Cursor>, now: tokio::time::Instant) -> bool {
        let Some(at) = at else {
            return true;
        };
        let before = stream.window.bytes();
        if stream.window.jump(at) {
            // Coverage counted in offsets before the jump vouches for nothing after it.
            stream.covered.clear();
            self.settle(stream, before, now);
        }
        stream.window.next_cursor() == at
    }

    /// Starts the stream at `at`, numbered by its owner elsewhere (a cluster's new term):
    /// what the window kept and the coverage are forgotten unless `at` is the next cursor.
    pub fn renumber(&self, at: Cursor) {
        let now = tokio::time::Instant::now();
        let mut stream = self.lock_stream();
        self.jump(&mut stream, Some(at), now);
    }

    /// The cursor the next event or gap gets.
    pub fn next_cursor(&self) -> Cursor {
        self.lock_stream().window.next_cursor()
    }

    /// [`Hub::publish_gap`] at the cursor `at` given by the stream's owner elsewhere (a
    /// cluster's), when given: see [`Hub::publish_at`]. Answers how many sessions it was
    /// queued to.
    pub fn publish_gap_at(
        &self,
        reason: GapReason,
        since: SystemTime,
        until: SystemTime,
        at: Option<Cursor>,
    ) -> usize {
        self.gap_at(reason, since, until, at, true)
    }

    /// Keeps a gap of the stream's past at `at` in the window, for resumes, without telling
    /// the sessions (history read in, not news).
    pub fn store_gap_at(
        &self,
        reason: GapReason,
        since: SystemTime,
        until: SystemTime,
        at: Cursor,
    ) {
        self.gap_at(reason, since, until, Some(at), false);
    }

    fn gap_at(
        &self,
        reason: GapReason,
        since: SystemTime,
        until: SystemTime,
        at: Option<Cursor>,
        live: bool,
    ) -> usize {
        let now = tokio::time::Instant::now();
        let mut stream = self.lock_stream();
        if !self.jump(&mut stream, at, now) {
            return 0;
        }
        let before = stream.window.bytes();
        let cursor = stream.window.push_gap(
            Gap {
                reason,
                since,
                until,
            },
            now,
        );
        let frame = gap_frame(reason, since, until, cursor);
        let mut delivered = 0;
        if live {
            self.trie.for_each_subscriber(|subscriber| {
                if subscriber.0.offer(frame.clone()) {
                    delivered += 1;
                }
            });
        }
        self.settle(&mut stream, before, now);
        delivered
    }

    /// Gives `event` the next cursor, queues it to every session with a matching pattern,
    /// once each, under the first of the event's topics it matched, and keeps it in the
    /// window. Each topic's envelope is encoded at most once and shared, with the window too.
    ///
    /// Never waits: a session whose queue is full is closed with 1013 instead.
    pub fn publish(&self, event: Event) -> Published {
        self.publish_at(event, None)
    }

    /// [`Hub::publish`] at the cursor `at`, for a stream numbered by its owner elsewhere (a
    /// cluster's), when given: an `at` of another epoch or past the next offset starts the
    /// window there (forgetting what it kept and the coverage, which vouch for nothing
    /// across the break); one already given out is dropped.
    pub fn publish_at(&self, event: Event, at: Option<Cursor>) -> Published {
        self.event_at(event, at, true)
    }

    /// Keeps an event of the stream's past at `at` in the window, for resumes, without
    /// queueing it to the sessions (history read in, not news).
    pub fn store_at(&self, event: Event, at: Cursor) {
        self.event_at(event, Some(at), false);
    }

    fn event_at(&self, event: Event, at: Option<Cursor>, live: bool) -> Published {
        let started = Instant::now();
        let mut published = Published::default();
        if event.customer_id != self.customer_id {
            // The upstream decoder guarantees this; a mismatch would leak across tenants.
            metrics::counter!("fanout_events_dropped_total", "reason" => "foreign_customer")
                .increment(1);
            return published;
        }
        let now = tokio::time::Instant::now();
        let mut stream = self.lock_stream();
        if !self.jump(&mut stream, at, now) {
            return published;
        }
        let cursor = stream.window.next_cursor();
        let head = EnvelopeHead::new(&event.event_type, &event.timestamp).with_cursor(cursor);
        let Event {
            topics,
            fresh_from,
            data,
            ..
        } = event;
        let mut stored = Stored {
            topics,
            fresh_from,
            head,
            data,
            frames: Default::default(),
        };
        // One frame per topic, made on first use and shared: an event nobody here subscribed
        // to costs no encoding until a resume wants it.
        let (mut delivered, mut overflowed) = (0, 0);
        if live {
            self.trie.match_topics(&stored.topics, |subscriber, index| {
                if index < stored.fresh_from {
                    // Had it from an earlier copy.
                    return;
                }
                let (frame, made) = stored.frame(index);
                if made > 0 || index >= MAX_SHARED_FRAMES {
                    published.encoded += 1;
                }
                if subscriber.0.offer(frame) {
                    delivered += 1;
                } else {
                    overflowed += 1;
                }
            });
        }
        stored.share_data();
        let before = stream.window.bytes();
        let size = stored.size();
        stream.window.push_event(stored, size, now);
        self.settle(&mut stream, before, now);
        drop(stream);
        published.delivered = delivered;
        published.overflowed = overflowed;
        self.events_in.increment(1);
        self.deliveries.increment(published.delivered as u64);
        self.fanout_seconds.record(started.elapsed().as_secs_f64());
        published
    }

    /// Subscribes `session` to `patterns` (permitted, none held yet) resuming from `since`:
    /// queues `resumed`, then (recovered) every event after `since` that the patterns match
    /// and the session's other patterns (`held`) do not, or (not recovered) the gaps known
    /// after `since` first; all before any live event of the patterns.
    ///
    /// `held` may be left out of the replay only if the session has had every event they
    /// match since a cursor no later than `since`: `held_since`, the cursor of a recovered
    /// resume that gave it all of them (else the answer is `recovered: false`).
    /// `upstream` names the upstream prefix each pattern needs. Answers which patterns
    /// were new to the trie, and what was answered.
    #[allow(clippy::too_many_arguments)]
    pub fn resume(
        &self,
        session: &Subscriber,
        patterns: &[Pattern],
        upstream: &[Prefix],
        held: &[Pattern],
        held_since: Option<Cursor>,
        since: Cursor,
    ) -> (Vec<bool>, Resumed) {
        let now = tokio::time::Instant::now();
        let mut stream = self.lock_stream();
        if stream.catching_up && stream.deferred.len() < MAX_DEFERRED {
            // Judged once the stream is whole; held meanwhile, as if inserted.
            stream.deferred.push(Deferred {
                session: session.clone(),
                patterns: patterns.to_vec(),
                upstream: upstream.to_vec(),
                held: held.to_vec(),
                held_since,
                since,
            });
            self.has_deferred.store(true, Ordering::Release);
            return (
                vec![true; patterns.len()],
                Resumed {
                    recovered: false,
                    replayed: 0,
                },
            );
        }
        let before = stream.window.bytes();
        let answer = self.resume_locked(
            &mut stream,
            now,
            session,
            patterns,
            upstream,
            held,
            held_since,
            since,
        );
        self.settle(&mut stream, before, now);
        answer
    }

    /// [`Hub::resume`] under the stream's lock, judged now.
    #[allow(clippy::too_many_arguments)]
    fn resume_locked(
        &self,
        stream: &mut Stream,
        now: tokio::time::Instant,
        session: &Subscriber,
        patterns: &[Pattern],
        upstream: &[Prefix],
        held: &[Pattern],
        held_since: Option<Cursor>,
        since: Cursor,
    ) -> (Vec<bool>, Resumed) {
        stream.window.forget(now);
        let inserted: Vec<bool> = patterns
            .iter()
            .map(|pattern| self.trie.insert(pattern, session.clone()))
            .collect();
        let latest = stream.window.latest();
        let held_continuous = held.is_empty()
            || held_since.is_some_and(|h| h.epoch == since.epoch && h.offset <= since.offset);
        let mut answer = Resumed {
            recovered: false,
            replayed: 0,
        };
        let mut grown: Vec<(Cursor, usize)> = Vec::new();
        let mut queued = true;
        match stream.window.resume(since) {
            Resume::Recovered(events)
                if held_continuous
                    && !patterns.is_empty()
                    && events
                        .len()
                        .saturating_add(stream.covered.len())
                        .saturating_mul(patterns.len() + held.len())
                        <= MAX_RESUME_WORK
                    && covered_since(&stream.covered, upstream, since) =>
            {
                let mut replay = Vec::new();
                for (cursor, stored) in events {
                    let topics = &stored.topics;
                    if held.iter().any(|p| topics.iter().any(|t| p.matches(t))) {
                        continue;
                    }
                    let first = topics
                        .iter()
                        .position(|t| patterns.iter().any(|p| p.matches(t)));
                    // An event's later copy is for those its earlier topics did not reach.
                    if let Some(index) = first.filter(|i| *i >= stored.fresh_from) {
                        let (frame, made) = stored.frame(index);
                        if made > 0 {
                            grown.push((cursor, made));
                        }
                        replay.push(frame);
                    }
                }
                answer.recovered = true;
                answer.replayed = replay.len();
                queued &= session
                    .0
                    .send_control(resumed_frame(true, latest, replay.len()))
                    == Push::Queued;
                queued &= session.0.queue().push_replay(replay) == Push::Queued;
            }
            Resume::Recovered(_) => {
                queued &= session.0.send_control(resumed_frame(false, latest, 0)) == Push::Queued;
            }
            Resume::Lost(gaps) => {
                // The gaps first, the answer last: a client that stores every cursor it is
                // given ends on the latest.
                let frames: Vec<Bytes> = gaps
                    .iter()
                    .map(|(cursor, gap)| gap_frame(gap.reason, gap.since, gap.until, *cursor))
                    .collect();
                queued &= session.0.queue().push_replay(frames) == Push::Queued;
                queued &= session.0.send_control(resumed_frame(false, latest, 0)) == Push::Queued;
            }
        }
        if !queued {
            // An answer that cannot be queued must not be lost silently: the client
            // reconnects and resumes again.
            session.0.offer_failed();
        }
        for (cursor, extra) in grown {
            stream.window.grow(cursor, extra);
        }
        (inserted, answer)
    }

    /// Forgets what is past the window's age now (for windows that see no events).
    pub fn forget_old(&self) {
        let now = tokio::time::Instant::now();
        let mut stream = self.lock_stream();
        let before = stream.window.bytes();
        self.settle(&mut stream, before, now);
    }
}

/// Whether every prefix `needed`, or one that covers it (delivers all its events with as
/// much said of them), has been covered since no later than `since`.
fn covered_since(covered: &HashMap<Prefix, u64>, needed: &[Prefix], since: Cursor) -> bool {
    needed.iter().all(|needed| match covered.get(needed) {
        Some(from) if *from <= since.offset => true,
        _ => covered
            .iter()
            .any(|(held, from)| *from <= since.offset && held.covers(needed)),
    })
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    fn event(customer: Uuid, n: usize) -> Event {
        Event {
            shape: fanout_protocol::upstream::Shape::Envelope,
            event_type: "call_ringing".to_owned(),
            timestamp: "2026-01-20T10:30:00.000000Z".to_owned(),
            customer_id: customer,
            topics: vec![
                Topic::parse(&format!("customer_id:{customer}:call:k{n}")).expect("topic"),
            ],
            fresh_from: 0,
            data: Bytes::from(vec![b'1'; 300]),
        }
    }

    #[tokio::test]
    async fn the_nodes_windows_together_stay_within_their_budget() {
        let (c, d) = (Uuid::new_v4(), Uuid::new_v4());
        let budget = WindowBudget::new(64 * 1024);
        let limits = WindowLimits::default();
        let quiet = Hub::with_window(c, limits, budget.clone());
        let busy = Hub::with_window(d, limits, budget.clone());
        for n in 0..10 {
            quiet.publish(event(c, n));
        }
        let quiet_kept = quiet.window_stats();
        assert_eq!(quiet_kept.entries, 10);
        for n in 0..1000 {
            busy.publish(event(d, n));
            assert!(budget.used() <= 64 * 1024, "over the budget after {n}");
        }
        // The growing window gave up its own oldest events, not the quiet one's.
        assert_eq!(quiet.window_stats(), quiet_kept);
        let busy_kept = busy.window_stats();
        assert!(busy_kept.entries > 0 && busy_kept.entries < 1000);
        assert_eq!(budget.used(), quiet_kept.bytes + busy_kept.bytes);
        // A hub that goes gives its bytes back.
        drop(busy);
        assert_eq!(budget.used(), quiet_kept.bytes);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_window_forgets_by_age_without_events() {
        let c = Uuid::new_v4();
        let limits = WindowLimits {
            max_age: std::time::Duration::from_secs(60),
            ..WindowLimits::default()
        };
        let budget = WindowBudget::new(1 << 20);
        let hub = Hub::with_window(c, limits, budget.clone());
        hub.publish(event(c, 0));
        tokio::time::advance(std::time::Duration::from_secs(30)).await;
        hub.forget_old();
        assert_eq!(hub.window_stats().entries, 1);
        tokio::time::advance(std::time::Duration::from_secs(31)).await;
        hub.forget_old();
        assert_eq!(hub.window_stats(), WindowStats::default());
        assert_eq!(budget.used(), 0);
    }
}
