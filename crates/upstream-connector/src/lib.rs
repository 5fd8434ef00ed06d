//! One WebSocket per customer to VoIPBIN (protocol.md §2).
//!
//! An [`Upstream`] is a task that connects, subscribes to the patterns it is given (counted,
//! so that the last user of a pattern unsubscribes it), decodes every frame it receives into
//! an [`Event`](fanout_protocol::upstream::Event) and hands it to a sink. On any drop or stall
//! it reconnects with capped exponential back-off and full jitter and re-sends the whole
//! current subscription set; its users never notice beyond a gap in events.
//!
//! - [`config`]: the endpoint, credentials and timings.
//! - [`backoff`]: the retry delays.
//! - [`connect`]: TCP, TLS and the WebSocket handshake.
//! - [`upstream`](mod@upstream): the per-customer task and its handle.
//! - [`verifier`]: checks access keys against VoIPBIN's `GET /v1.0/customer`.
//!
//! Invariants callers rely on:
//! - Events reach the sink in the order the connection delivered them, from one task.
//! - Every event carries the customer of its connection (the decoder refuses others).
//! - Every loop is bounded or cancellable; cancelling the token closes the connection.

pub mod backoff;
pub mod config;
pub mod connect;
pub mod upstream;
pub mod verifier;

pub use config::{Credentials, UpstreamConfig};
pub use upstream::{EventSink, State, Upstream};
