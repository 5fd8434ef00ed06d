//! Access keys (`vb_…`): checked against VoIPBIN through a [`Verifier`], with a bounded
//! [`Cache`] so that a reconnecting fleet of browsers does not become a fleet of lookups.
//!
//! An access key stands for the whole customer with admin rights and no agent.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::credential::ACCESS_KEY_PREFIX;
use crate::error::{AuthError, Invalid};
use crate::identity::{Identity, Kind};

/// The longest access key considered for a lookup.
pub const MAX_KEY_LEN: usize = 128;

/// The answer of a verifier: the customer of a known key, `None` for an unknown one.
pub type Answer = Option<Uuid>;

/// The future a [`Verifier`] returns.
pub type VerifyFuture<'a> = Pin<Box<dyn Future<Output = Result<Answer, Unavailable>> + Send + 'a>>;

/// The verifier could not give an answer (VoIPBIN unreachable or erring).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("access-key verifier unavailable")]
pub struct Unavailable;

/// Tells which customer an access key belongs to.
pub trait Verifier: Send + Sync {
    /// Looks `key` up.
    ///
    /// # Cancel safety
    /// Implementations must be cancel-safe: a dropped lookup leaves nothing behind.
    ///
    /// # Errors
    /// [`Unavailable`] when no answer can be had right now.
    fn customer_of<'a>(&'a self, key: &'a str) -> VerifyFuture<'a>;
}

/// A fixed set of keys, compared in constant time (the simulator's, and tests').
#[derive(Default)]
pub struct StaticKeys {
    keys: Vec<(Box<[u8]>, Uuid)>,
}

impl std::fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaticKeys({} keys)", self.keys.len())
    }
}

impl StaticKeys {
    /// A set of `(key, customer)` pairs.
    pub fn new(keys: impl IntoIterator<Item = (String, Uuid)>) -> Self {
        StaticKeys {
            keys: keys
                .into_iter()
                .map(|(k, c)| (k.into_bytes().into_boxed_slice(), c))
                .collect(),
        }
    }

    /// The customer of `key`, comparing against every known key in constant time.
    pub fn lookup(&self, key: &str) -> Answer {
        let mut found = None;
        for (known, customer) in &self.keys {
            if bool::from(known.as_ref().ct_eq(key.as_bytes())) {
                found = Some(*customer);
            }
        }
        found
    }

    /// The customers that have keys, each once.
    pub fn customers(&self) -> Vec<Uuid> {
        let mut out: Vec<Uuid> = self.keys.iter().map(|(_, c)| *c).collect();
        out.sort();
        out.dedup();
        out
    }
}

impl Verifier for StaticKeys {
    fn customer_of<'a>(&'a self, key: &'a str) -> VerifyFuture<'a> {
        let answer = self.lookup(key);
        Box::pin(async move { Ok(answer) })
    }
}

/// Whether `key` has the shape of an access key: the prefix, then URL-safe characters.
pub fn well_formed(key: &str) -> bool {
    key.len() <= MAX_KEY_LEN
        && key.len() > ACCESS_KEY_PREFIX.len()
        && key.starts_with(ACCESS_KEY_PREFIX)
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Lookups in flight at once by default, across all keys.
pub const DEFAULT_MAX_LOOKUPS: usize = 64;

/// A cached answer and the (caller's clock) instant it stops being fresh.
#[derive(Debug, Clone, Copy)]
struct Cached {
    answer: Answer,
    until: Instant,
}

/// A bounded cache of verifier answers, keyed by a digest of the key (the key itself is not
/// kept), in front of a bounded number of lookups.
///
/// - One lookup per key at a time: handshakes with a key being looked up wait for that
///   lookup's answer rather than starting their own.
/// - At most `max_lookups` lookups in flight across all keys; past that a new key's check
///   fails at once with [`AuthError::Busy`] (429), so unauthenticated clients cannot turn
///   into a flood of requests to VoIPBIN.
/// - Unknown keys are remembered for `negative_ttl` from their first refusal; a failed
///   lookup ([`AuthError::Unavailable`]) is not remembered.
/// - When full, the cache evicts the answers least likely to be used again (moka's
///   TinyLFU), never all of them at once.
///
/// Freshness is judged against the `now` callers pass, so time stays an argument.
pub struct Cache {
    ttl: Duration,
    negative_ttl: Duration,
    entries: moka::future::Cache<[u8; 32], Cached>,
    in_flight: std::sync::atomic::AtomicUsize,
    max_lookups: usize,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("entries", &self.entries.entry_count())
            .field("max_lookups", &self.max_lookups)
            .finish_non_exhaustive()
    }
}

/// Gives an in-flight slot back on drop (a cancelled lookup included).
struct Slot<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Cache {
    /// A cache keeping known keys for `ttl`, unknown ones for `negative_ttl`, at most
    /// `max_entries` answers, and [`DEFAULT_MAX_LOOKUPS`] lookups in flight.
    pub fn new(ttl: Duration, negative_ttl: Duration, max_entries: usize) -> Self {
        Cache {
            ttl,
            negative_ttl,
            entries: moka::future::Cache::builder()
                .max_capacity(max_entries.max(1) as u64)
                // Entries are judged fresh by the callers' clock; this only clears them out.
                .time_to_live(ttl.max(negative_ttl).max(Duration::from_secs(1)))
                .build(),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            max_lookups: DEFAULT_MAX_LOOKUPS,
        }
    }

    /// The same with at most `max_lookups` lookups in flight.
    pub fn with_max_lookups(mut self, max_lookups: usize) -> Self {
        self.max_lookups = max_lookups.max(1);
        self
    }

    fn digest(key: &str) -> [u8; 32] {
        Sha256::digest(key.as_bytes()).into()
    }

    /// The cached answer for `key`, if it is still fresh at `now`.
    pub async fn get(&self, key: &str, now: Instant) -> Option<Answer> {
        let digest = Self::digest(key);
        match self.entries.get(&digest).await {
            Some(cached) if cached.until > now => Some(cached.answer),
            Some(_) => {
                self.entries.invalidate(&digest).await;
                None
            }
            None => None,
        }
    }

    /// Remembers `answer` for `key` from `now`.
    pub async fn put(&self, key: &str, answer: Answer, now: Instant) {
        let cached = self.cached(answer, now);
        self.entries.insert(Self::digest(key), cached).await;
    }

    fn cached(&self, answer: Answer, now: Instant) -> Cached {
        let ttl = if answer.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        };
        Cached {
            answer,
            until: now + ttl,
        }
    }

    /// The answer for `key`: cached, or from the one lookup in flight for it, or from a new
    /// lookup through `verifier` if a slot is free.
    async fn answer(
        &self,
        verifier: &dyn Verifier,
        key: &str,
        now: Instant,
    ) -> Result<Answer, AuthError> {
        if let Some(answer) = self.get(key, now).await {
            return Ok(answer);
        }
        let lookup = async {
            use std::sync::atomic::Ordering;
            if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_lookups {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                return Err(AuthError::Busy);
            }
            let _slot = Slot(&self.in_flight);
            let answer = verifier
                .customer_of(key)
                .await
                .map_err(|Unavailable| AuthError::Unavailable)?;
            Ok(self.cached(answer, now))
        };
        self.entries
            .try_get_with(Self::digest(key), lookup)
            .await
            .map(|cached| cached.answer)
            .map_err(|error| *error)
    }

    /// How many answers are held (moka counts lazily: after pending work is run).
    pub async fn len(&self) -> u64 {
        self.entries.run_pending_tasks().await;
        self.entries.entry_count()
    }

    /// Whether no answer is held.
    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }

    /// Lookups in flight now.
    pub fn lookups_in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Checks `key` through the cache, then the verifier, and returns its identity.
///
/// # Cancel safety
/// Cancel-safe if the verifier is: a cancelled lookup gives its slot back, caches nothing,
/// and another caller waiting on it starts its own.
///
/// # Errors
/// [`AuthError::Invalid`] for a malformed or unknown key, [`AuthError::Unavailable`] when
/// the verifier cannot answer (nothing is cached then), [`AuthError::Busy`] when too many
/// lookups are in flight.
pub async fn verify(
    verifier: &dyn Verifier,
    cache: &Cache,
    key: &str,
    now: Instant,
) -> Result<Identity, AuthError> {
    if !well_formed(key) {
        return Err(AuthError::Invalid(Invalid::Malformed));
    }
    let answer = cache.answer(verifier, key, now).await?;
    let customer_id = answer.ok_or(AuthError::Invalid(Invalid::UnknownKey))?;
    Ok(Identity {
        customer_id,
        kind: Kind::AccessKey,
        expires_at: None,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const KEY: &str = "vb_0123456789abcdefghijklmnopqrstuv";

    /// Answers from a fixed set, counting calls; `down` answers unavailable; `gate` holds
    /// every lookup until it is opened.
    struct Counting {
        keys: StaticKeys,
        calls: AtomicUsize,
        down: bool,
        gate: Option<Arc<tokio::sync::Semaphore>>,
    }

    impl Verifier for Counting {
        fn customer_of<'a>(&'a self, key: &'a str) -> VerifyFuture<'a> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if let Some(gate) = &self.gate {
                    let _open = gate.acquire().await;
                }
                if self.down {
                    Err(Unavailable)
                } else {
                    Ok(self.keys.lookup(key))
                }
            })
        }
    }

    fn customer() -> Uuid {
        Uuid::parse_str("12345678-1234-1234-1234-123456789012").expect("uuid")
    }

    fn counting(down: bool) -> Counting {
        Counting {
            keys: StaticKeys::new([(KEY.to_owned(), customer())]),
            calls: AtomicUsize::new(0),
            down,
            gate: None,
        }
    }

    /// A verifier whose every lookup waits until `gate` gets permits.
    fn gated() -> (Arc<Counting>, Arc<tokio::sync::Semaphore>) {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let verifier = Arc::new(Counting {
            gate: Some(gate.clone()),
            ..counting(false)
        });
        (verifier, gate)
    }

    fn cache() -> Cache {
        Cache::new(Duration::from_secs(60), Duration::from_secs(5), 100)
    }

    #[tokio::test]
    async fn known_key_is_cached_for_its_ttl() {
        let verifier = counting(false);
        let cache = cache();
        let t0 = Instant::now();
        let identity = verify(&verifier, &cache, KEY, t0).await.expect("known");
        assert_eq!(identity.customer_id, customer());
        assert_eq!(identity.kind, Kind::AccessKey);
        verify(&verifier, &cache, KEY, t0 + Duration::from_secs(59))
            .await
            .expect("known");
        assert_eq!(verifier.calls.load(Ordering::SeqCst), 1);
        verify(&verifier, &cache, KEY, t0 + Duration::from_secs(61))
            .await
            .expect("known");
        assert_eq!(verifier.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn unknown_keys_are_cached_from_the_first_refusal_and_malformed_ones_never_asked() {
        let verifier = counting(false);
        let cache = cache();
        let t0 = Instant::now();
        let unknown = "vb_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz";
        for _ in 0..3 {
            let got = verify(&verifier, &cache, unknown, t0).await;
            assert_eq!(got, Err(AuthError::Invalid(Invalid::UnknownKey)));
        }
        assert_eq!(
            verifier.calls.load(Ordering::SeqCst),
            1,
            "negative answers are cached"
        );
        // Asked again once the negative answer is stale.
        let _ = verify(&verifier, &cache, unknown, t0 + Duration::from_secs(6)).await;
        assert_eq!(verifier.calls.load(Ordering::SeqCst), 2);
        for bad in [
            "vb_",
            "nope",
            "vb_has space",
            &format!("vb_{}", "a".repeat(200)),
        ] {
            let got = verify(&verifier, &cache, bad, t0).await;
            assert_eq!(got, Err(AuthError::Invalid(Invalid::Malformed)), "{bad}");
        }
        assert_eq!(
            verifier.calls.load(Ordering::SeqCst),
            2,
            "malformed keys are not looked up"
        );
    }

    #[tokio::test]
    async fn unavailable_is_not_cached() {
        let verifier = counting(true);
        let cache = cache();
        let got = verify(&verifier, &cache, KEY, Instant::now()).await;
        assert_eq!(got, Err(AuthError::Unavailable));
        assert!(cache.is_empty().await);
        let got = verify(&verifier, &cache, KEY, Instant::now()).await;
        assert_eq!(got, Err(AuthError::Unavailable));
        assert_eq!(verifier.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn identical_keys_share_one_lookup() {
        let (verifier, gate) = gated();
        let cache = Arc::new(cache());
        let now = Instant::now();
        let waiting: Vec<_> = (0..200)
            .map(|_| {
                let (verifier, cache) = (verifier.clone(), cache.clone());
                tokio::spawn(async move { verify(verifier.as_ref(), &cache, KEY, now).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(cache.lookups_in_flight(), 1);
        gate.add_permits(1000);
        for handle in waiting {
            assert_eq!(
                handle.await.expect("joins").expect("known").customer_id,
                customer()
            );
        }
        assert_eq!(verifier.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn lookups_in_flight_are_bounded() {
        let (verifier, gate) = gated();
        let cache = Arc::new(cache().with_max_lookups(4));
        let now = Instant::now();
        let held: Vec<_> = (0..4)
            .map(|i| {
                let (verifier, cache) = (verifier.clone(), cache.clone());
                tokio::spawn(async move {
                    verify(
                        verifier.as_ref(),
                        &cache,
                        &format!("vb_distinct_key_number_{i}"),
                        now,
                    )
                    .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(cache.lookups_in_flight(), 4);
        let refused = verify(verifier.as_ref(), &cache, "vb_one_more_distinct_key", now).await;
        assert_eq!(refused, Err(AuthError::Busy));
        assert_eq!(AuthError::Busy.http().code, 429);
        gate.add_permits(1000);
        for handle in held {
            assert_eq!(
                handle.await.expect("joins"),
                Err(AuthError::Invalid(Invalid::UnknownKey))
            );
        }
        assert_eq!(cache.lookups_in_flight(), 0);
        // A slot is free again.
        assert_eq!(
            verify(verifier.as_ref(), &cache, "vb_one_more_distinct_key", now).await,
            Err(AuthError::Invalid(Invalid::UnknownKey))
        );
    }

    #[tokio::test]
    async fn a_full_cache_evicts_instead_of_clearing() {
        let cache = Cache::new(Duration::from_secs(60), Duration::from_secs(60), 100);
        let now = Instant::now();
        // A key in steady use stays while a thousand one-off keys pass through.
        cache.put(KEY, Some(customer()), now).await;
        for i in 0..1000 {
            assert_eq!(cache.get(KEY, now).await, Some(Some(customer())));
            cache.put(&format!("vb_one_off_{i}"), None, now).await;
        }
        assert!(cache.len().await <= 100);
        assert_eq!(cache.get(KEY, now).await, Some(Some(customer())));
    }
}
