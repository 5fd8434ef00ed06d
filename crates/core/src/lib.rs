//! The fan-out core: the customers a node serves, each a [`fanout_session::Hub`] and a
//! [`Feed`], kept by the [`Registry`], which is the sessions' directory.
//!
//! The seam is [`Feeds`]: where a customer's events come from, and where what its sessions
//! need goes. Single-node mode ([`VoipbinFeeds`]) opens the customer's own upstream to
//! VoIPBIN; cluster mode is a second implementation of the same two traits. The registry
//! holds the tenant-isolation rule, whichever feeds it is given: a hub holds only patterns
//! permitted to see its customer's events, and only its customer's feed publishes into it.

pub mod feed;
pub mod registry;

pub use feed::{Feed, FeedStatus, Feeds, HubSink, VoipbinFeeds};
pub use registry::{CustomerInfo, Registry};
