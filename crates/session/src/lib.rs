//! One browser WebSocket session, and the per-customer fan-out hub sessions hang off.
//!
//! - [`endpoint`]: a connection on the WebSocket listener: credentials, the JSON error
//!   envelopes, limits, the upgrade ([`handshake`] parses and answers it without an HTTP
//!   stack), then the session; [`origin`] is its allow-list of browsers' origins, and
//!   [`conn`] the connection under it, plain TCP or TLS (rustls).
//! - [`session`](mod@session): a session is one task: it reads and decodes client frames,
//!   handles requests, keepalive and expiry, and writes what the fan-out put in its bounded
//!   [`queue`] of ready-made frames, many per system call.
//! - [`hub`]: one per customer: the [`fanout_topic_trie::Trie`] of its sessions' patterns and
//!   [`Hub::publish`], which encodes each event once per topic and hands the shared buffer to
//!   every matching session's queue.
//! - [`window`]: a customer's recent events and gaps, and the judge of whether a resume is
//!   `recovered` (protocol.md §1.7; the hub and sessions use it from issue 9 on).
//! - [`Directory`]: what the gateway provides to place a session's patterns in the right hub
//!   and keep the upstream subscribed to what they need.
//!
//! Invariants callers rely on:
//! - The fan-out path never awaits and never blocks on a session: a full queue closes that
//!   session with 1013 and costs the others nothing.
//! - A session is offered each event at most once.
//! - A subscribe or unsubscribe request is applied whole or not at all.
//! - Every error that ends a session maps, in [`close`], to a close code and a metric label.

mod budget;
pub mod close;
pub mod config;
pub mod conn;
pub mod endpoint;
pub mod handshake;
pub mod hub;
pub mod origin;
pub mod queue;
mod requests;
pub mod session;
pub mod window;
mod writer;

pub use close::CloseReason;
pub use config::SessionConfig;
pub use endpoint::Endpoint;
pub use hub::{Hub, Subscriber};
pub use session::{Directory, SessionHandle, UpstreamLimit};
