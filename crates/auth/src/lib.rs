//! Who is asking, and what they may see.
//!
//! - [`credential`]: finds the credential in a WebSocket upgrade request, from the sources
//!   VoIPBIN reads, in its order (protocol.md §1.1).
//! - [`jwt`]: verifies VoIPBIN's HS256 JWTs (`agent`, `direct`; `delegate` refused) into an
//!   [`Identity`].
//! - [`accesskey`]: access keys (`vb_…`) checked through an [`accesskey::Verifier`] with a
//!   bounded cache.
//! - [`permission`]: the permission table of protocol.md §1.4 as one function, [`permit`].
//!
//! Invariants callers rely on:
//! - No I/O and no clock: the current time is an argument. The one asynchronous call, an
//!   access-key check, goes through a trait the caller implements.
//! - Secrets are compared in constant time (signatures by the JWT library, access keys by
//!   [`subtle`] or by digest); no error message or `Debug` output holds a token.

pub mod accesskey;
mod authenticator;
pub mod credential;
mod error;
mod identity;
pub mod jwt;
pub mod permission;

pub use authenticator::Authenticator;
pub use error::{AuthError, Invalid};
pub use identity::{Direct, Identity, Kind, permission_bits};
pub use permission::permit;
