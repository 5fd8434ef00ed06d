//! A faithful VoIPBIN stand-in (protocol.md §3) for tests, benchmarks and the demo.
//!
//! It serves VoIPBIN's WebSocket endpoint (`/v1.0/ws`, alias `/v1.0/service_agents/ws`)
//! with the same credential sources, permission rules and HTTP error envelopes, sends events
//! in any of the three upstream shapes, and has control endpoints for tests:
//!
//! | route | what it does |
//! |---|---|
//! | `POST /_sim/events` | publish `{"event_type","data"}` or an array of them; answers `{"sent":N}` |
//! | `POST /_sim/raw?customer_id=C` | send the body as one text frame to C's connections |
//! | `GET /_sim/stats` | connections and subscriptions per customer |
//! | `POST /_sim/drop?customer_id=C[&stall_ms=N]` | drop C's connections without a close frame, or stall them for N ms |
//! | `GET /v1.0/customer` | the customer of an access key (how the gateway checks keys) |
//!
//! It plays one of two worlds ([`World`]): the tutorial's (envelopes, segment matching), the
//! default, or VoIPBIN's server code as it is today (bare objects, raw-prefix matching, a
//! delivery per matching published topic, a connection dropped without a close frame on a
//! topic it refuses, no error frames). The real server's quirks are also [`Quirks`] one by
//! one. Publishing costs what the connections subscribed to an event's owners cost, however
//! many connections it holds.
//!
//! Use it in-process with [`Simulator::start`], or as the `voipbin-sim` binary.

mod config;
mod conn;
mod generator;
mod http;
mod hub;
mod subscription;

pub use config::{Quirks, Shape, SimConfig, World, tls_config};
pub use hub::{PublishError, Simulator, Stats};
