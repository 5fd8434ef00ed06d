//! The owner lease of a customer, in NATS key-value (bucket `fanout_owner` by default): the
//! key is the customer, the value the owner's node id.
//!
//! - **Take** with `create` (put-if-absent): the revision it answers is the owner's *term*.
//!   Terms only grow: a later owner's create comes after every earlier revision of the
//!   bucket.
//! - **Renew** with `update` expecting the lease's latest revision: it fails once anyone
//!   else wrote the key, so an owner that was paused past its lease and taken over learns it
//!   from the store, whatever its own clock says.
//! - **Expire** by the bucket's `max_age` (the lease TTL): an update writes a value with no
//!   per-key TTL (nats-server#6959), so the bucket's age limit is what ends a lease nobody
//!   renews.
//! - **Release** with a delete expecting the latest revision, so a successor can take it at
//!   once (a planned handoff) and a stale owner cannot delete its successor's lease.

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use uuid::Uuid;

use crate::bucket::Bucket;

/// A lease this node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The customer.
    pub customer: Uuid,
    /// The revision that took it: the fencing token of this ownership.
    pub term: u64,
    /// The latest revision written (the one a renewal or release must expect).
    pub revision: u64,
}

/// Why a lease operation could not be carried out (as opposed to being refused).
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The bucket could not be created or opened.
    #[error("the lease bucket is not available: {0}")]
    Bucket(String),
    /// NATS did not answer, or answered with something else than a refusal.
    #[error("NATS did not carry out the lease operation: {0}")]
    Store(String),
}

/// The owner leases of the fleet, as one node sees them.
#[derive(Clone)]
pub struct Leases {
    bucket: Bucket,
    node: Bytes,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("node", &String::from_utf8_lossy(&self.node))
            .finish_non_exhaustive()
    }
}

impl Leases {
    /// Opens (creating if needed) `bucket`, whose leases last `ttl` unless renewed, for the
    /// node `node`.
    ///
    /// # Errors
    /// [`LeaseError::Bucket`] when JetStream refuses or does not answer.
    pub async fn open(
        client: async_nats::Client,
        bucket: &str,
        ttl: Duration,
        node: &str,
        replicas: usize,
    ) -> Result<Self, LeaseError> {
        let config = kv::Config {
            num_replicas: replicas,
            bucket: bucket.to_owned(),
            history: 1,
            max_age: ttl,
            // The store marks an expired lease (nats-server 2.11), so that watchers
            // see it go without polling.
            limit_markers: Some(ttl.max(Duration::from_secs(1))),
            ..Default::default()
        };
        Ok(Leases {
            bucket: Bucket::open(client, config)
                .await
                .map_err(LeaseError::Bucket)?,
            node: Bytes::copy_from_slice(node.as_bytes()),
        })
    }

    /// Creates the bucket again if NATS lost it (its state was wiped); the handle works on.
    ///
    /// # Errors
    /// [`LeaseError::Bucket`] when JetStream refuses or does not answer.
    pub async fn reopen(&self) -> Result<(), LeaseError> {
        self.bucket.reopen().await.map_err(LeaseError::Bucket)
    }

    fn key(customer: Uuid) -> String {
        customer.simple().to_string()
    }

    /// Takes `customer`'s lease if nobody holds it; `None` if someone does.
    ///
    /// # Errors
    /// [`LeaseError::Store`] when NATS does not carry it out.
    pub async fn acquire(&self, customer: Uuid) -> Result<Option<Lease>, LeaseError> {
        match self
            .bucket
            .store
            .create(Self::key(customer), self.node.clone())
            .await
        {
            Ok(revision) => Ok(Some(Lease {
                customer,
                term: revision,
                revision,
            })),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(LeaseError::Store(e.to_string())),
        }
    }

    /// Renews `lease`; `None` when it is no longer this node's (someone else wrote the key,
    /// or it expired and was taken).
    ///
    /// # Errors
    /// [`LeaseError::Store`] when NATS does not carry it out (the lease may still be held:
    /// the caller counts the time since its last successful renewal).
    pub async fn renew(&self, lease: Lease) -> Result<Option<Lease>, LeaseError> {
        match self
            .bucket
            .store
            .update(Self::key(lease.customer), self.node.clone(), lease.revision)
            .await
        {
            Ok(revision) => Ok(Some(Lease { revision, ..lease })),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(LeaseError::Store(e.to_string())),
        }
    }

    /// Gives `lease` up so that another node can take it at once; false if it was no longer
    /// this node's (nothing is deleted then).
    ///
    /// # Errors
    /// [`LeaseError::Store`] when NATS does not answer.
    pub async fn release(&self, lease: Lease) -> Result<bool, LeaseError> {
        match self
            .bucket
            .store
            .delete_expect_revision(Self::key(lease.customer), Some(lease.revision))
            .await
        {
            Ok(()) => Ok(true),
            Err(e) => {
                let text = e.to_string();
                if text.contains("wrong last sequence") {
                    Ok(false)
                } else {
                    Err(LeaseError::Store(text))
                }
            }
        }
    }

    /// Every lease change from now on, for all customers: `(customer, holder)`, the holder
    /// `None` when the lease was released or expired.
    ///
    /// # Errors
    /// [`LeaseError::Store`] when NATS does not answer.
    pub async fn changes(
        &self,
    ) -> Result<impl futures_util::Stream<Item = (Uuid, Option<String>)> + use<>, LeaseError> {
        use futures_util::StreamExt as _;
        let watch = self
            .bucket
            .store
            .watch_all()
            .await
            .map_err(|e| LeaseError::Store(e.to_string()))?;
        Ok(watch.filter_map(|entry| async move {
            let entry = entry.ok()?;
            let customer = Uuid::try_parse(&entry.key).ok()?;
            let holder = (entry.operation == kv::Operation::Put)
                .then(|| String::from_utf8_lossy(&entry.value).into_owned());
            Some((customer, holder))
        }))
    }

    /// Who holds `customer`'s lease, and its latest revision.
    ///
    /// # Errors
    /// [`LeaseError::Store`] when NATS does not answer.
    pub async fn owner(&self, customer: Uuid) -> Result<Option<(String, u64)>, LeaseError> {
        let entry = self
            .bucket
            .store
            .entry(Self::key(customer))
            .await
            .map_err(|e| LeaseError::Store(e.to_string()))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| (String::from_utf8_lossy(&e.value).into_owned(), e.revision)))
    }
}
