//! Who is in the fleet, and who owns which customer: two NATS key-value buckets.
//!
//! - **Node leases** (bucket `fanout_nodes` by default, `max_age` = the lease TTL): key the
//!   node's id (hex), made with `create` when the node joins. The revision `create` answers
//!   is the **node term**; renewals every third of the TTL write it as the value, so a
//!   watcher knows a node's term whenever it starts watching. An expired lease is marked by
//!   the store (nats-server 2.11), so watchers see a node go without polling.
//! - **Ownership records** (bucket `fanout_owners` by default, no TTL): key the customer,
//!   value `<node hex> <node term>`, written only when ownership changes: taken with a
//!   revision-checked write (after nobody, a handoff's delete, or a dead node term), given up
//!   with a revision-checked delete. Its revision is the **customer term**, the fencing
//!   token of the customer's records. A record is valid while its node term lives: one lease
//!   per node keeps every customer it owns, however many.
//!
//! [`Roster`] is what a node knows of both (sans-IO), and where an owner is placed: among
//! the live nodes that need the customer, by rendezvous hashing, so owners spread evenly and
//! nothing moves when nodes come.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use uuid::Uuid;

use crate::bucket::Bucket;

/// A node id as a key or a subject token: hex, so any id can be one.
pub fn token(node: &str) -> String {
    node.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The node id a [`token`] stands for.
pub fn from_token(token: &str) -> Option<String> {
    if token.is_empty() || !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Why a membership operation did not happen.
#[derive(Debug, thiserror::Error)]
#[error("membership: {0}")]
pub struct MembershipError(String);

fn error(e: impl std::fmt::Display) -> MembershipError {
    MembershipError(e.to_string())
}

/// Who owns a customer, as its record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The owner's node id.
    pub node: String,
    /// The node term it owned the customer in.
    pub node_term: u64,
    /// The record's revision: the customer term.
    pub term: u64,
}

/// A customer's ownership record as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Nobody ever owned it (since NATS was last empty).
    Never,
    /// Its last owner handed it over (the record's delete, at revision `revision`).
    HandedOver {
        /// The delete's revision.
        revision: u64,
    },
    /// Owned.
    Owned(Owner),
}

impl Record {
    /// The revision a take must expect.
    pub fn revision(&self) -> u64 {
        match self {
            Record::Never => 0,
            Record::HandedOver { revision } => *revision,
            Record::Owned(owner) => owner.term,
        }
    }
}

fn owner_value(node: &str, node_term: u64) -> Bytes {
    Bytes::from(format!("{} {node_term}", token(node)))
}

fn parse_owner(value: &[u8], revision: u64) -> Option<Owner> {
    let text = std::str::from_utf8(value).ok()?;
    let (node, term) = text.split_once(' ')?;
    Some(Owner {
        node: from_token(node)?,
        node_term: term.parse().ok()?,
        term: revision,
    })
}

/// One change of either bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A node's lease: its term, or `None` when it went (expired or left).
    Node {
        /// The node.
        node: String,
        /// Its term.
        term: Option<u64>,
    },
    /// A customer's ownership record.
    Owner {
        /// The customer.
        customer: Uuid,
        /// The record.
        record: Record,
    },
}

/// The two buckets, as one node uses them.
#[derive(Clone)]
pub struct Membership {
    nodes: Bucket,
    owners: Bucket,
    node: String,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// Opens (creating if needed) the buckets `nodes` (leases lasting `ttl`) and `owners`
    /// for the node `node`.
    ///
    /// # Errors
    /// [`MembershipError`] when JetStream refuses or does not answer.
    pub async fn open(
        client: async_nats::Client,
        nodes: &str,
        owners: &str,
        ttl: Duration,
        node: &str,
        replicas: usize,
    ) -> Result<Self, MembershipError> {
        let nodes = Bucket::open(
            client.clone(),
            kv::Config {
                bucket: nodes.to_owned(),
                history: 1,
                max_age: ttl,
                // The store marks an expired lease (nats-server 2.11), so that watchers see
                // it go without polling.
                limit_markers: Some(ttl.max(Duration::from_secs(1))),
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await
        .map_err(MembershipError)?;
        let owners = Bucket::open(
            client,
            kv::Config {
                bucket: owners.to_owned(),
                history: 1,
                num_replicas: replicas,
                // Bounded: a record is about 40 bytes per customer.
                max_bytes: 256 * 1024 * 1024,
                max_value_size: 1024,
                ..Default::default()
            },
        )
        .await
        .map_err(MembershipError)?;
        Ok(Membership {
            nodes,
            owners,
            node: node.to_owned(),
        })
    }

    /// Creates both buckets again if NATS lost them.
    ///
    /// # Errors
    /// [`MembershipError`] when JetStream refuses.
    pub async fn reopen(&self) -> Result<(), MembershipError> {
        self.nodes.reopen().await.map_err(MembershipError)?;
        self.owners.reopen().await.map_err(MembershipError)
    }

    /// Takes this node's lease: its node term, or `None` while a lease of its id lives (an
    /// earlier incarnation that has not expired yet).
    ///
    /// # Errors
    /// [`MembershipError`] when NATS does not carry it out.
    pub async fn join(&self) -> Result<Option<u64>, MembershipError> {
        match self
            .nodes
            .store
            .create(token(&self.node), Bytes::new())
            .await
        {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(error(e)),
        }
    }

    /// Renews the lease of node term `term`, last written at `revision`: its new revision,
    /// or `None` if it is gone (expired, or taken by another incarnation).
    ///
    /// # Errors
    /// [`MembershipError`] when NATS does not carry it out.
    pub async fn renew(&self, term: u64, revision: u64) -> Result<Option<u64>, MembershipError> {
        match self
            .nodes
            .store
            .update(token(&self.node), Bytes::from(term.to_string()), revision)
            .await
        {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(error(e)),
        }
    }

    /// Leaves: deletes the lease last written at `revision`.
    ///
    /// # Errors
    /// [`MembershipError`] when NATS does not carry it out.
    pub async fn leave(&self, revision: u64) -> Result<(), MembershipError> {
        self.nodes
            .store
            .delete_expect_revision(token(&self.node), Some(revision))
            .await
            .map_err(error)
    }

    /// `node`'s term as the store has it now (`None`: it has no lease).
    ///
    /// # Errors
    /// [`MembershipError`] when NATS does not answer.
    pub async fn node_term(&self, node: &str) -> Result<Option<u64>, MembershipError> {
        let entry = self.nodes.store.entry(token(node)).await.map_err(error)?;
        Ok(entry.and_then(|entry| match entry.operation {
            kv::Operation::Put => lease_term(&entry),
            kv::Operation::Delete | kv::Operation::Purge => None,
        }))
    }

    /// `customer`'s ownership record as the store has it now.
    ///
    /// # Errors
    /// [`MembershipError`] when NATS does not answer.
    pub async fn record(&self, customer: Uuid) -> Result<Record, MembershipError> {
        let entry = self
            .owners
            .store
            .entry(customer.simple().to_string())
            .await
            .map_err(error)?;
        Ok(record_of(entry.as_ref()))
    }

    /// Takes `customer` in the node term `node_term`, where its record stood at `expected`:
    /// the customer term, or `None` if the record moved meanwhile.
    ///
    /// # Errors
    /// [`MembershipError`] when NATS does not carry it out.
    pub async fn take(
        &self,
        customer: Uuid,
        node_term: u64,
        expected: u64,
    ) -> Result<Option<u64>, MembershipError> {
        match self
            .owners
            .store
            .update(
                customer.simple().to_string(),
                owner_value(&self.node, node_term),
                expected,
            )
            .await
        {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(error(e)),
        }
    }

    /// Hands `customer` over: deletes its record if it still stands at `term`.
    ///
    /// # Errors
    /// [`MembershipError`] when NATS does not carry it out.
    pub async fn hand_over(&self, customer: Uuid, term: u64) -> Result<(), MembershipError> {
        self.owners
            .store
            .delete_expect_revision(customer.simple().to_string(), Some(term))
            .await
            .map_err(error)
    }

    /// Every change of the node leases, from what they hold now on.
    ///
    /// # Errors
    /// [`MembershipError`] when the watch cannot start.
    pub async fn node_changes(
        &self,
    ) -> Result<impl futures_util::Stream<Item = Change> + use<>, MembershipError> {
        watch(&self.nodes, |entry| {
            let node = from_token(&entry.key)?;
            let term = match entry.operation {
                kv::Operation::Put => Some(lease_term(entry)?),
                kv::Operation::Delete | kv::Operation::Purge => None,
            };
            Some(Change::Node { node, term })
        })
        .await
    }

    /// Every change of the ownership records, from what they hold now on.
    ///
    /// # Errors
    /// [`MembershipError`] when the watch cannot start.
    pub async fn owner_changes(
        &self,
    ) -> Result<impl futures_util::Stream<Item = Change> + use<>, MembershipError> {
        watch(&self.owners, |entry| {
            let customer = Uuid::try_parse(&entry.key).ok()?;
            Some(Change::Owner {
                customer,
                record: record_of(Some(entry)),
            })
        })
        .await
    }
}

/// Every entry of `bucket`, its current values first, as `change` reads them (entries it
/// cannot read are skipped).
async fn watch(
    bucket: &Bucket,
    change: fn(&kv::Entry) -> Option<Change>,
) -> Result<impl futures_util::Stream<Item = Change> + use<>, MembershipError> {
    use futures_util::StreamExt as _;
    let watch = bucket.store.watch_with_history(">").await.map_err(error)?;
    Ok(watch.filter_map(move |entry| std::future::ready(entry.ok().and_then(|e| change(&e)))))
}

/// The node term a lease entry says: the revision of its `create` (written empty), or the
/// term its renewals write.
fn lease_term(entry: &kv::Entry) -> Option<u64> {
    if entry.value.is_empty() {
        Some(entry.revision)
    } else {
        std::str::from_utf8(&entry.value).ok()?.parse().ok()
    }
}

fn record_of(entry: Option<&kv::Entry>) -> Record {
    match entry {
        None => Record::Never,
        Some(entry) => match entry.operation {
            kv::Operation::Put => parse_owner(&entry.value, entry.revision).map_or(
                Record::HandedOver {
                    revision: entry.revision,
                },
                Record::Owned,
            ),
            kv::Operation::Delete | kv::Operation::Purge => Record::HandedOver {
                revision: entry.revision,
            },
        },
    }
}

/// What a node knows of the fleet's nodes and owners (sans-IO).
#[derive(Debug, Default)]
pub struct Roster {
    nodes: HashMap<String, u64>,
    owners: HashMap<Uuid, Record>,
}

impl Roster {
    /// Applies a change; answers the customer it concerns, or `None` for a node (which
    /// concerns every customer it owned).
    pub fn apply(&mut self, change: Change) -> Option<Uuid> {
        match change {
            Change::Node { node, term } => {
                match term {
                    Some(term) => self.nodes.insert(node, term),
                    None => self.nodes.remove(&node),
                };
                None
            }
            Change::Owner { customer, record } => {
                self.owners.insert(customer, record);
                Some(customer)
            }
        }
    }

    /// Forgets everything (NATS lost it, or the watches start again).
    pub fn clear(&mut self) {
        self.nodes.clear();
        self.owners.clear();
    }

    /// Whether `node` lives in `term`.
    pub fn lives(&self, node: &str, term: u64) -> bool {
        self.nodes.get(node) == Some(&term)
    }

    /// The live nodes.
    pub fn live(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    /// `customer`'s record, as last seen.
    pub fn record(&self, customer: Uuid) -> Option<&Record> {
        self.owners.get(&customer)
    }

    /// The customers `node` owns in `node_term`.
    pub fn owned_by(&self, node: &str, node_term: u64) -> Vec<Uuid> {
        self.owners
            .iter()
            .filter(|(_, r)| matches!(r, Record::Owned(o) if o.node == node && o.node_term == node_term))
            .map(|(c, _)| *c)
            .collect()
    }
}

/// `node`'s place among `candidates` to own `customer`: 0 for the one that should, then the
/// order in which the others step in. Rendezvous hashing: each (customer, node) pair has a
/// score, the highest first; a node that comes or goes moves only the customers it wins or
/// held.
pub fn rank<'a>(
    customer: Uuid,
    node: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> usize {
    let mine = score(customer, node);
    candidates
        .into_iter()
        .filter(|other| *other != node)
        .filter(|other| (score(customer, other), *other) > (mine, node))
        .count()
}

fn score(customer: Uuid, node: &str) -> u64 {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(customer.as_bytes());
    context.update(node.as_bytes());
    let digest = context.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_tokens_round_trip_and_fit_keys_and_subjects() {
        for node in ["node-a", "gateway-7d9f.pod/ns", "ünï côdé"] {
            let t = token(node);
            assert!(t.bytes().all(|b| b.is_ascii_hexdigit()), "{t}");
            assert_eq!(from_token(&t).as_deref(), Some(node));
        }
        for bad in ["", "a", "zz", "ff"] {
            assert_eq!(from_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn owner_values_round_trip() {
        let owner = parse_owner(&owner_value("node-a", 42), 7).expect("parsed");
        assert_eq!(
            owner,
            Owner {
                node: "node-a".into(),
                node_term: 42,
                term: 7
            }
        );
        assert_eq!(parse_owner(b"nonsense", 1), None);
        assert_eq!(parse_owner(b"zz 1", 1), None);
    }

    #[test]
    fn ranks_are_a_permutation_and_spread_owners() {
        let nodes = ["a", "b", "c"];
        let mut firsts = HashMap::new();
        for _ in 0..300 {
            let c = Uuid::new_v4();
            let mut ranks: Vec<usize> = nodes.iter().map(|n| rank(c, n, nodes)).collect();
            ranks.sort_unstable();
            assert_eq!(ranks, [0, 1, 2]);
            let first = nodes
                .iter()
                .find(|n| rank(c, n, nodes) == 0)
                .expect("one first");
            *firsts.entry(*first).or_insert(0) += 1;
        }
        // Roughly even: each node first for a third (±).
        assert!(firsts.values().all(|n| *n > 60), "{firsts:?}");
        // A node that joins takes only customers it wins: the others keep their order.
        let c = Uuid::new_v4();
        let before = rank(c, "a", ["a", "b"]);
        let after = rank(c, "a", ["a", "b", "d"]);
        assert!(after == before || after == before + 1);
    }

    #[test]
    fn the_roster_knows_who_lives_and_owns_what() {
        let mut roster = Roster::default();
        let c = Uuid::new_v4();
        roster.apply(Change::Node {
            node: "a".into(),
            term: Some(5),
        });
        roster.apply(Change::Owner {
            customer: c,
            record: Record::Owned(Owner {
                node: "a".into(),
                node_term: 5,
                term: 9,
            }),
        });
        assert!(roster.lives("a", 5));
        assert!(!roster.lives("a", 4));
        assert_eq!(roster.owned_by("a", 5), [c]);
        roster.apply(Change::Node {
            node: "a".into(),
            term: None,
        });
        assert!(!roster.lives("a", 5));
        assert_eq!(roster.live().count(), 0);
    }
}
