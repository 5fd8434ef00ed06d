//! Cluster mode on NATS (docs/protocol.md §12): the pieces one node needs to share
//! customers with the rest of the fleet: [`lease`], the owner lease per customer in NATS
//! key-value, whose term is the fencing token; [`ownership`], when to take, renew and give it
//! up and whether this node may serve as owner now (self-fencing); [`interest`], what each
//! node's sessions need of a customer's upstream, whose union the owner subscribes to;
//! [`log`], the records of the fleet's event log; [`fence`], the reader side of fencing (a
//! stale term's messages never pass); [`feeds`], the customer tasks that tie them together;
//! and [`server_supported`], the server version cluster mode needs.

mod bucket;
pub mod bus;
pub mod feeds;
pub mod fence;
pub mod interest;
pub mod lease;
pub mod log;
pub mod membership;
pub mod owner;
pub mod ownership;
pub mod reader;
pub mod wire;

pub use bus::BusSettings;
pub use feeds::{ClusterError, ClusterFeeds, ClusterSettings};
pub use fence::{Admit, TermFence};
pub use lease::{Lease, LeaseError, Leases};
pub use ownership::{Next, Ownership};

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
