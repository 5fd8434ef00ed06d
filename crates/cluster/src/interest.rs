//! What each node's sessions need of a customer's upstream, shared over NATS key-value
//! (bucket `fanout_interest` by default), so that the customer's owner subscribes to the
//! union of it: VoIPBIN's bare frames are known only by the prefix they arrived through, so
//! the owner cannot take the whole stream and leave the choosing to each node.
//!
//! - Key `<customer>.<node>` (the customer without hyphens, the node id hex-encoded, as a
//!   key allows only a few characters); value the node's prefixes, one per line. A node
//!   writes its key when its set changes, and only then: an idle fleet writes nothing. A
//!   key counts only while its node's lease lives ([`crate::membership`]), so a node that
//!   died stops counting at once, whatever it left in the bucket.
//! - [`Fleet`] is what a node knows of the others' keys (sans-IO): read through one watch of
//!   the whole bucket, each value checked (the customer's own prefixes, at most
//!   [`MAX_PREFIXES`]), every other key ignored.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use fanout_protocol::prefix::Prefix;
use uuid::Uuid;

use crate::bucket::Bucket;

/// The most prefixes one node's interest in one customer may hold (a session holds at most
/// a few hundred patterns; the owner's connections are capped besides).
pub const MAX_PREFIXES: usize = 4096;

/// Why the interest bucket could not be used.
#[derive(Debug, thiserror::Error)]
#[error("the interest bucket: {0}")]
pub struct InterestError(String);

/// A node's key for `customer`.
fn key(customer: Uuid, node: &str) -> String {
    let node: String = node.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{}.{node}", customer.simple())
}

/// The customer and node a key names, if it is one.
fn parse_key(key: &str) -> Option<(Uuid, String)> {
    let (customer, node) = key.split_once('.')?;
    let customer = Uuid::try_parse(customer).ok()?;
    if node.is_empty() || node.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..node.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(node.get(i..i + 2)?, 16).ok())
        .collect();
    Some((customer, String::from_utf8(bytes?).ok()?))
}

/// A value's prefixes, if every line is one of `customer`'s and there are not too many.
fn parse_value(customer: Uuid, value: &[u8]) -> Option<BTreeSet<Prefix>> {
    let text = std::str::from_utf8(value).ok()?;
    let mut prefixes = BTreeSet::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let prefix = Prefix::parse(line).ok()?;
        if prefix.customer() != customer || prefixes.len() == MAX_PREFIXES {
            return None;
        }
        prefixes.insert(prefix);
    }
    Some(prefixes)
}

/// One change of the bucket: a node's interest in a customer, `None` when it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The customer.
    pub customer: Uuid,
    /// The node.
    pub node: String,
    /// What it needs now.
    pub prefixes: Option<BTreeSet<Prefix>>,
}

/// The interest bucket, as one node uses it.
#[derive(Clone)]
pub struct Interests {
    bucket: Bucket,
    node: String,
}

impl std::fmt::Debug for Interests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interests")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Interests {
    /// Opens (creating if needed) `bucket` for the node `node`.
    ///
    /// # Errors
    /// [`InterestError`] when JetStream refuses or does not answer.
    pub async fn open(
        client: async_nats::Client,
        bucket: &str,
        node: &str,
        replicas: usize,
    ) -> Result<Self, InterestError> {
        let config = kv::Config {
            num_replicas: replicas,
            bucket: bucket.to_owned(),
            history: 1,
            // Bounded: interest is small, and nobody may fill the store with it.
            max_bytes: 256 * 1024 * 1024,
            max_value_size: 512 * 1024,
            ..Default::default()
        };
        Ok(Interests {
            bucket: Bucket::open(client, config).await.map_err(InterestError)?,
            node: node.to_owned(),
        })
    }

    /// How often a key must be written again for the bucket to keep it: only for a bucket
    /// made with an age limit (by an operator, or an earlier version).
    pub fn refresh_every(&self) -> Option<Duration> {
        let max_age = self.bucket.max_age();
        (!max_age.is_zero()).then(|| max_age / 3)
    }

    /// Creates the bucket again if NATS lost it.
    ///
    /// # Errors
    /// [`InterestError`] when JetStream refuses or does not answer.
    pub async fn reopen(&self) -> Result<(), InterestError> {
        self.bucket.reopen().await.map_err(InterestError)
    }

    /// Writes this node's interest in `customer` (nothing: the key goes).
    ///
    /// # Errors
    /// [`InterestError`] when NATS does not carry it out.
    pub async fn put(
        &self,
        customer: Uuid,
        prefixes: &BTreeSet<Prefix>,
    ) -> Result<(), InterestError> {
        let key = key(customer, &self.node);
        if prefixes.is_empty() {
            return self
                .bucket
                .store
                .delete(key)
                .await
                .map_err(|e| InterestError(e.to_string()));
        }
        let value: Vec<&str> = prefixes.iter().map(Prefix::as_str).collect();
        self.bucket
            .store
            .put(key, Bytes::from(value.join("\n")))
            .await
            .map(drop)
            .map_err(|e| InterestError(e.to_string()))
    }

    /// Every change from now on, the current keys first.
    ///
    /// # Errors
    /// [`InterestError`] when NATS does not answer.
    pub async fn changes(
        &self,
    ) -> Result<impl futures_util::Stream<Item = Change> + use<>, InterestError> {
        use futures_util::StreamExt as _;
        // Each key's latest value, then every change.
        let watch = self
            .bucket
            .store
            .watch_with_history(">")
            .await
            .map_err(|e| InterestError(e.to_string()))?;
        Ok(watch.filter_map(|entry| async move {
            let entry = entry.ok()?;
            let (customer, node) = parse_key(&entry.key)?;
            let prefixes = match entry.operation {
                kv::Operation::Put => Some(parse_value(customer, &entry.value).unwrap_or_default()),
                kv::Operation::Delete | kv::Operation::Purge => None,
            };
            Some(Change {
                customer,
                node,
                prefixes,
            })
        }))
    }
}

/// What a node knows of every node's interest, sans-IO.
#[derive(Debug, Default)]
pub struct Fleet {
    by_customer: HashMap<Uuid, HashMap<String, BTreeSet<Prefix>>>,
}

impl Fleet {
    /// Applies one change; answers whether the customer's interest changed.
    pub fn apply(&mut self, change: Change) -> bool {
        match change.prefixes.filter(|p| !p.is_empty()) {
            Some(prefixes) => {
                let nodes = self.by_customer.entry(change.customer).or_default();
                nodes.insert(change.node, prefixes.clone()) != Some(prefixes)
            }
            None => {
                let Some(nodes) = self.by_customer.get_mut(&change.customer) else {
                    return false;
                };
                let gone = nodes.remove(&change.node).is_some();
                if nodes.is_empty() {
                    self.by_customer.remove(&change.customer);
                }
                gone
            }
        }
    }

    /// Forgets everything (the watch is read again from the start); answers the customers
    /// it knew interest in, whose interest may now be gone.
    pub fn clear(&mut self) -> Vec<Uuid> {
        self.by_customer
            .drain()
            .map(|(customer, _)| customer)
            .collect()
    }

    /// What the nodes other than `except` need of `customer`.
    pub fn others(&self, customer: Uuid, except: &str) -> BTreeSet<Prefix> {
        self.by_customer
            .get(&customer)
            .into_iter()
            .flatten()
            .filter(|(node, _)| node.as_str() != except)
            .flat_map(|(_, prefixes)| prefixes.iter().cloned())
            .collect()
    }

    /// What the nodes among `live` other than `except` need of `customer`'s upstream.
    pub fn others_among(&self, customer: Uuid, except: &str, live: &[String]) -> BTreeSet<Prefix> {
        self.by_customer
            .get(&customer)
            .into_iter()
            .flatten()
            .filter(|(node, _)| node.as_str() != except && live.contains(node))
            .flat_map(|(_, prefixes)| prefixes.iter().cloned())
            .collect()
    }

    /// The nodes among `live` that need `customer`.
    pub fn nodes_of(&self, customer: Uuid, live: &[String]) -> Vec<String> {
        self.by_customer
            .get(&customer)
            .into_iter()
            .flatten()
            .filter(|(node, _)| live.contains(node))
            .map(|(node, _)| node.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "12345678-1234-1234-1234-123456789012";

    fn customer() -> Uuid {
        Uuid::parse_str(C).expect("uuid")
    }

    fn prefixes(rests: &[&str]) -> BTreeSet<Prefix> {
        rests
            .iter()
            .map(|r| Prefix::parse(&format!("customer_id:{C}{r}")).expect("prefix"))
            .collect()
    }

    #[test]
    fn keys_name_the_customer_and_any_node_id() {
        for node in ["node-a", "gateway-7d9f.pod/ns", "ünï côdé"] {
            let key = key(customer(), node);
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_'),
                "{key}"
            );
            assert_eq!(parse_key(&key), Some((customer(), node.to_owned())));
        }
        for bad in [
            "",
            "x.y",
            "12345678123412341234123456789012.",
            "12345678123412341234123456789012.abc",
            "12345678123412341234123456789012.zz",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_value_holds_only_the_customers_own_prefixes() {
        let good = format!("customer_id:{C}:call:\ncustomer_id:{C}:message:");
        assert_eq!(
            parse_value(customer(), good.as_bytes()),
            Some(prefixes(&[":call:", ":message:"]))
        );
        let other = format!("customer_id:{}:call:", Uuid::new_v4());
        assert_eq!(parse_value(customer(), other.as_bytes()), None);
        assert_eq!(parse_value(customer(), b"customer_id:nope"), None);
        assert_eq!(parse_value(customer(), &[0xff]), None);
        let many: Vec<String> = (0..=MAX_PREFIXES)
            .map(|n| format!("customer_id:{C}:call:k{n}"))
            .collect();
        assert_eq!(parse_value(customer(), many.join("\n").as_bytes()), None);
    }

    #[test]
    fn the_fleet_is_the_union_of_the_other_nodes() {
        let mut fleet = Fleet::default();
        let c = customer();
        let change = |node: &str, p: Option<BTreeSet<Prefix>>| Change {
            customer: c,
            node: node.to_owned(),
            prefixes: p,
        };
        assert!(fleet.apply(change("a", Some(prefixes(&[":call:"])))));
        assert!(fleet.apply(change("b", Some(prefixes(&[":call:", ":message:"])))));
        assert!(!fleet.apply(change("b", Some(prefixes(&[":call:", ":message:"])))));
        assert_eq!(fleet.others(c, "a"), prefixes(&[":call:", ":message:"]));
        assert_eq!(fleet.others(c, "b"), prefixes(&[":call:"]));
        assert!(fleet.apply(change("b", None)));
        assert!(!fleet.apply(change("b", None)));
        assert_eq!(fleet.others(c, "a"), BTreeSet::new());
        assert!(fleet.apply(change("a", Some(BTreeSet::new()))));
        assert!(fleet.by_customer.is_empty());
        // Read again from the start: the customers known before are answered, to look again.
        assert!(fleet.apply(change("a", Some(prefixes(&[":call:"])))));
        assert_eq!(fleet.clear(), [c]);
        assert_eq!(fleet.others(c, "b"), BTreeSet::new());
    }
}
