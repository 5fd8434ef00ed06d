//! Cluster mode on NATS (docs/protocol.md §12): the pieces one node needs to share
//! customers with the rest of the fleet.
//!
//! - How a node reaches NATS: [`bus`] (credentials, TLS).
//! - Who is in the fleet and who owns what: [`membership`] (a lease per node, an ownership
//!   record per customer, written only when it changes) and [`ownership`] (when to renew a
//!   lease, and whether its holder may serve now: self-fencing).
//! - What the nodes' sessions need: [`interest`], whose union an owner subscribes to.
//! - The log: [`log`] (its records), [`wire`] (batches of them, authenticated with the
//!   fleet's key), [`owner`] (how an owner writes a customer's term) and [`reader`] and
//!   [`fence`] (how a node takes them: fenced, in order, every loss told).
//! - The tasks that tie them together: [`node`] (once per node: membership, the publisher,
//!   the reader, the watches) and `customer` (once per customer hosted).
//! - [`server_supported`], the server version cluster mode needs.

mod bucket;
pub mod bus;
mod customer;
pub mod fence;
pub mod interest;
pub mod log;
pub mod membership;
pub mod node;
pub mod owner;
pub mod ownership;
pub mod reader;
pub mod wire;

pub use bus::BusSettings;
pub use fence::{Admit, TermFence};
pub use node::{ClusterError, ClusterFeeds, ClusterSettings};
pub use ownership::{Lease, Next, Ownership};
pub use wire::FleetKey;

/// The oldest nats-server cluster mode runs against: 2.11, the first whose expired keys are
/// seen by watchers and whose publishes can be fenced on another subject's last sequence.
pub const MIN_SERVER: (u64, u64) = (2, 11);

/// Whether a nats-server `version` (`"2.11.3"`, `"v2.15.1"`, `"2.12.0-beta"`) is at least
/// [`MIN_SERVER`]. Anything that does not parse is not.
pub fn server_supported(version: &str) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= MIN_SERVER,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_from_2_11_are_supported() {
        for ok in ["2.11.0", "v2.15.1", "2.12.0-beta.1", "3.0.0"] {
            assert!(server_supported(ok), "{ok}");
        }
        for old in ["2.10.24", "2.9.10", "v1.4.1", "", "two.eleven", "2"] {
            assert!(!server_supported(old), "{old}");
        }
    }
}
