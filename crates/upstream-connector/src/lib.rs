//! A customer's connections to VoIPBIN (docs/protocol.md §11).
//!
//! An [`Upstream`] subscribes to the prefixes it is given (counted, so that the last user
//! of a prefix unsubscribes it) on one connection per [`Label`](fanout_protocol::prefix::Label),
//! decodes every frame it receives with that label into an
//! [`Event`](fanout_protocol::upstream::Event), collapses the copies of each event, and
//! hands them to a sink. On any drop or stall a connection reconnects with capped
//! exponential back-off and full jitter and re-sends its whole subscription set; its users
//! never notice beyond a gap in events.
//!
//! - [`config`]: the endpoint, credentials, timings and limits.
//! - [`backoff`]: the retry delays.
//! - [`connect`]: TCP, TLS and the WebSocket handshake.
//! - [`link`]: one connection's rules, sans-IO: subscriptions, barriers, labels, held
//!   events, gaps, pings and stalls.
//! - [`merge`]: collapsing the copies of an event, sans-IO.
//! - `driver`: the async shell of a link, which only moves bytes.
//! - [`upstream`](mod@upstream): the per-customer handle over its links.
//! - [`verifier`]: checks access keys against VoIPBIN's `GET /v1.0/customer`.
//!
//! Invariants callers rely on:
//! - Events of one connection reach the sink in the order it delivered them, and coverage
//!   and gaps in order with them.
//! - Every event carries the customer of its connection (the decoder refuses others), and
//!   what its connection's label proves, never more.
//! - Every loop is bounded or cancellable; cancelling the token closes the connections.

pub mod backoff;
pub mod config;
pub mod connect;
mod driver;
pub mod link;
pub mod merge;
pub mod upstream;
pub mod verifier;

pub use config::{Credentials, UpstreamConfig};
pub use upstream::{EventSink, State, TooManyConnections, Upstream};
