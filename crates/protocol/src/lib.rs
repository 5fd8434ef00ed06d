//! Wire types of fanout-gateway, with no I/O.
//!
//! Everything that crosses a socket is defined here, so that the session, the upstream
//! connector and the simulator agree on it by construction:
//!
//! - [`topic`]: topics and subscription patterns (`<scope>:<owner>[:<segment>…]`), their
//!   parsing and segment-wise matching (protocol.md §1.4).
//! - [`cursor`]: an event's position in its customer's stream (protocol.md §1.7).
//! - [`prefix`]: what an upstream subscribes to on VoIPBIN for a session's pattern, and the
//!   label it gives the frames that arrive through it.
//! - [`client`]: messages a browser sends (`subscribe`, `unsubscribe`) and the error codes
//!   that refuse them.
//! - [`server`]: frames the gateway builds for browsers: the event envelope and error frames.
//! - [`upstream`]: decoding of the three frame shapes VoIPBIN sends into one [`upstream::Event`].
//! - [`ws`]: WebSocket framing (RFC 6455): encoding of whole server frames into shared buffers
//!   and an incremental decoder of frames with bounded buffers.
//! - [`rest`]: VoIPBIN's JSON error envelope for HTTP answers.
//! - [`timestamp`]: VoIPBIN's timestamp layout.
//!
//! Invariants callers rely on:
//! - Nothing here does I/O, spawns or reads the clock; time comes in as an argument.
//! - Parsing never panics on any input and bounds every count and length it accepts.
//! - Event payload bytes are never re-encoded: [`upstream::Event::data`] is a slice of the
//!   frame that arrived.

pub mod client;
pub mod cursor;
pub mod prefix;
pub mod rest;
pub mod server;
pub mod timestamp;
pub mod topic;
pub mod upstream;
pub mod ws;

pub use topic::{Pattern, Scope, Topic, TopicError};
