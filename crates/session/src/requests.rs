//! What a session does with the messages its client sends: subscribe and unsubscribe
//! (permission check, topic cap, applied whole or not at all), the rate limit, refusals and
//! their count, pings and closes.

use fanout_auth::{Identity, permit};
use fanout_protocol::client::{self, Action, ErrorCode, Refusal};
use fanout_protocol::cursor::Cursor;
use fanout_protocol::ws::{self, Message, OpCode};
use fanout_protocol::{Pattern, server};
use tokio::time::Instant;

use crate::budget::Bucket;
use crate::close::CloseReason;
use crate::config::SessionConfig;
use crate::hub::Subscriber;
use crate::session::{Directory, SessionHandle, SessionParams, UpstreamLimit};

/// A session's request state.
pub(crate) struct Requests<'a> {
    identity: &'a Identity,
    config: &'a SessionConfig,
    directory: &'a dyn Directory,
    handle: &'a std::sync::Arc<SessionHandle>,
    subscriber: Subscriber,
    patterns: Vec<Pattern>,
    refusals: u32,
    resumes: u32,
    /// Since when the session has had every event its patterns match: the cursor of the
    /// recovered resume that gave it all of them; `None` once it holds a pattern it did not
    /// get that way.
    continuous_since: Option<Cursor>,
    bucket: Bucket,
}

/// Subscribes with `since` one session may send: a reconnecting client needs one (a few if
/// its topics take several messages); each replay costs a scan of the window.
pub(crate) const MAX_RESUMES: u32 = 4;

impl<'a> Requests<'a> {
    pub(crate) fn new(
        params: &'a SessionParams,
        handle: &'a std::sync::Arc<SessionHandle>,
    ) -> Self {
        Requests {
            identity: &params.identity,
            config: &params.config,
            directory: params.directory.as_ref(),
            handle,
            subscriber: Subscriber(handle.clone()),
            patterns: Vec::new(),
            refusals: 0,
            resumes: 0,
            continuous_since: None,
            bucket: Bucket::new(params.config.message_burst, Instant::now()),
        }
    }

    /// The patterns the session holds.
    pub(crate) fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Handles one message from the client; answers why the session must close, if it must.
    pub(crate) fn on_message(&mut self, message: Message) -> Option<CloseReason> {
        match message {
            Message::Text(text) => self.on_request(&text),
            Message::Binary(_) => Some(CloseReason::Binary),
            Message::Ping(payload) => {
                self.handle.send_control(ws::encode(OpCode::Pong, &payload));
                None
            }
            Message::Pong(_) => None,
            Message::Close(..) => Some(CloseReason::ClientClosed),
        }
    }

    fn refuse(&mut self, refusal: Refusal) -> Option<CloseReason> {
        metrics::counter!("fanout_requests_refused_total", "code" => refusal.code.as_str())
            .increment(1);
        self.handle.send_control(server::error_frame(&refusal));
        self.refusals += 1;
        (self.refusals > self.config.max_refusals).then_some(CloseReason::TooManyRefusals)
    }

    fn on_request(&mut self, text: &[u8]) -> Option<CloseReason> {
        if !self.bucket.take(
            1,
            self.config.messages_per_second,
            self.config.message_burst,
            Instant::now(),
        ) {
            return self.refuse(Refusal::new(
                ErrorCode::RateLimited,
                "too many messages; slow down",
            ));
        }
        let request = match client::parse_request(text) {
            Ok(request) => request,
            Err(refusal) => return self.refuse(refusal),
        };
        match request.action {
            Action::Subscribe => {
                let forbidden: Vec<String> = request
                    .topics
                    .iter()
                    .zip(&request.sent)
                    .filter(|(p, _)| !permit(self.identity, p))
                    .map(|(_, sent)| sent.clone())
                    .collect();
                if !forbidden.is_empty() {
                    return self.refuse(Refusal::with_topics(
                        ErrorCode::ForbiddenTopic,
                        "not permitted to subscribe to these topics",
                        forbidden,
                    ));
                }
                let mut new: Vec<Pattern> = Vec::new();
                let mut sent: Vec<String> = Vec::new();
                for (pattern, text) in request.topics.into_iter().zip(request.sent) {
                    if !self.patterns.contains(&pattern) && !new.contains(&pattern) {
                        new.push(pattern);
                        sent.push(text);
                    }
                }
                // The directory's refusal, named by the topics as the client sent them.
                let over_limit = |limit: UpstreamLimit| {
                    let topics = new
                        .iter()
                        .zip(&sent)
                        .filter(|(p, _)| limit.patterns.contains(p))
                        .map(|(_, text)| text.clone())
                        .collect();
                    Refusal::with_topics(
                        ErrorCode::UpstreamLimit,
                        format!(
                            "these topics would need more than {} connections to VoIPBIN for this customer (upstream.max_connections_per_customer): subscribe to fewer kinds of events",
                            limit.max
                        ),
                        topics,
                    )
                };
                if self.patterns.len() + new.len() > self.config.max_topics {
                    return self.refuse(Refusal::new(
                        ErrorCode::TooManyTopics,
                        format!(
                            "a session may hold at most {} topics",
                            self.config.max_topics
                        ),
                    ));
                }
                if let Some(since) = request.since {
                    if self.resumes >= MAX_RESUMES {
                        return self.refuse(Refusal::new(
                            ErrorCode::InvalidCursor,
                            format!(
                                "a session may resume at most {MAX_RESUMES} times; subscribe without \"since\""
                            ),
                        ));
                    }
                    // A cursor is a position in one customer's stream.
                    let stream_of = |p: &Pattern| self.subscriber.stream_of(p);
                    let first = new.first().map_or(self.handle.customer_id(), stream_of);
                    if new.iter().any(|p| stream_of(p) != first) {
                        return self.refuse(Refusal::new(
                            ErrorCode::InvalidCursor,
                            "a subscribe with \"since\" names the topics of one customer only",
                        ));
                    }
                    let recovered = match self.directory.resume(
                        &self.subscriber,
                        &new,
                        &self.patterns,
                        self.continuous_since,
                        since,
                    ) {
                        Ok(recovered) => recovered,
                        Err(limit) => return self.refuse(over_limit(limit)),
                    };
                    self.resumes += 1;
                    self.continuous_since = match (recovered, self.patterns.is_empty()) {
                        (true, true) => Some(since),
                        (true, false) => self.continuous_since,
                        (false, _) => None,
                    };
                    self.patterns.extend(new);
                    return None;
                }
                if new.is_empty() {
                    return None;
                }
                if let Err(limit) = self.directory.subscribe(&self.subscriber, &new) {
                    return self.refuse(over_limit(limit));
                }
                // Held from now on only: no longer continuous since any earlier cursor.
                self.continuous_since = None;
                self.patterns.extend(new);
            }
            Action::Unsubscribe => {
                for pattern in request.topics {
                    if let Some(i) = self.patterns.iter().position(|p| *p == pattern) {
                        let pattern = self.patterns.swap_remove(i);
                        self.directory.unsubscribe(&self.subscriber, &pattern);
                    }
                }
            }
        }
        None
    }
}
