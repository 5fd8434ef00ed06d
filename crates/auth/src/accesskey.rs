//! Access keys (`vb_…`): checked against VoIPBIN through a [`Verifier`], with a bounded
//! [`Cache`] so that a reconnecting fleet of browsers does not become a fleet of lookups.
//!
//! An access key stands for the whole customer with admin rights and no agent.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
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

/// A bounded cache of verifier answers, keyed by a digest of the key (the key itself is not
/// kept).
#[derive(Debug)]
pub struct Cache {
    ttl: Duration,
    negative_ttl: Duration,
    max_entries: usize,
    entries: Mutex<HashMap<[u8; 32], (Answer, Instant)>>,
}

impl Cache {
    /// A cache keeping known keys for `ttl`, unknown ones for `negative_ttl`, and at most
    /// `max_entries` answers.
    pub fn new(ttl: Duration, negative_ttl: Duration, max_entries: usize) -> Self {
        Cache {
            ttl,
            negative_ttl,
            max_entries: max_entries.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn digest(key: &str) -> [u8; 32] {
        Sha256::digest(key.as_bytes()).into()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Answer, Instant)>> {
        // A panic while holding the lock leaves a map that is still consistent.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached answer for `key`, if it is still fresh at `now`.
    pub fn get(&self, key: &str, now: Instant) -> Option<Answer> {
        let digest = Self::digest(key);
        let mut entries = self.lock();
        match entries.get(&digest) {
            Some((answer, until)) if *until > now => Some(*answer),
            Some(_) => {
                entries.remove(&digest);
                None
            }
            None => None,
        }
    }

    /// Remembers `answer` for `key` from `now`.
    pub fn put(&self, key: &str, answer: Answer, now: Instant) {
        let ttl = if answer.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        };
        let mut entries = self.lock();
        if entries.len() >= self.max_entries {
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= self.max_entries {
                entries.clear();
            }
        }
        entries.insert(Self::digest(key), (answer, now + ttl));
    }

    /// How many answers are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no answer is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Checks `key` through the cache, then the verifier, and returns its identity.
///
/// # Cancel safety
/// Cancel-safe if the verifier is: the cache is only written after an answer.
///
/// # Errors
/// [`AuthError::Invalid`] for a malformed or unknown key, [`AuthError::Unavailable`] when
/// the verifier cannot answer (nothing is cached then).
pub async fn verify(
    verifier: &dyn Verifier,
    cache: &Cache,
    key: &str,
    now: Instant,
) -> Result<Identity, AuthError> {
    if !well_formed(key) {
        return Err(AuthError::Invalid(Invalid::Malformed));
    }
    let answer = match cache.get(key, now) {
        Some(answer) => answer,
        None => {
            let answer = verifier
                .customer_of(key)
                .await
                .map_err(|Unavailable| AuthError::Unavailable)?;
            cache.put(key, answer, now);
            answer
        }
    };
    let customer_id = answer.ok_or(AuthError::Invalid(Invalid::UnknownKey))?;
    Ok(Identity {
        customer_id,
        kind: Kind::AccessKey,
        expires_at: None,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const KEY: &str = "vb_0123456789abcdefghijklmnopqrstuv";

    struct Counting {
        keys: StaticKeys,
        calls: AtomicUsize,
        down: bool,
    }

    impl Verifier for Counting {
        fn customer_of<'a>(&'a self, key: &'a str) -> VerifyFuture<'a> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let answer = if self.down {
                Err(Unavailable)
            } else {
                Ok(self.keys.lookup(key))
            };
            Box::pin(async move { answer })
        }
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        // The verifiers here never wait, so one poll finishes them.
        let mut future = std::pin::pin!(future);
        let waker = std::task::Waker::noop();
        match future
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
        {
            std::task::Poll::Ready(out) => out,
            std::task::Poll::Pending => panic!("verifier waited"),
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
        }
    }

    #[test]
    fn known_key_is_cached_for_its_ttl() {
        let verifier = counting(false);
        let cache = Cache::new(Duration::from_secs(60), Duration::from_secs(5), 100);
        let t0 = Instant::now();
        let identity = block_on(verify(&verifier, &cache, KEY, t0)).expect("known");
        assert_eq!(identity.customer_id, customer());
        assert_eq!(identity.kind, Kind::AccessKey);
        block_on(verify(&verifier, &cache, KEY, t0 + Duration::from_secs(59))).expect("known");
        assert_eq!(verifier.calls.load(Ordering::SeqCst), 1);
        block_on(verify(&verifier, &cache, KEY, t0 + Duration::from_secs(61))).expect("known");
        assert_eq!(verifier.calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn unknown_and_malformed_keys() {
        let verifier = counting(false);
        let cache = Cache::new(Duration::from_secs(60), Duration::from_secs(5), 100);
        let t0 = Instant::now();
        let unknown = "vb_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz";
        for _ in 0..3 {
            let got = block_on(verify(&verifier, &cache, unknown, t0));
            assert_eq!(got, Err(AuthError::Invalid(Invalid::UnknownKey)));
        }
        assert_eq!(
            verifier.calls.load(Ordering::SeqCst),
            1,
            "negative answers are cached"
        );
        for bad in [
            "vb_",
            "nope",
            "vb_has space",
            &format!("vb_{}", "a".repeat(200)),
        ] {
            let got = block_on(verify(&verifier, &cache, bad, t0));
            assert_eq!(got, Err(AuthError::Invalid(Invalid::Malformed)), "{bad}");
        }
        assert_eq!(
            verifier.calls.load(Ordering::SeqCst),
            1,
            "malformed keys are not looked up"
        );
    }

    #[test]
    fn unavailable_is_not_cached() {
        let verifier = counting(true);
        let cache = Cache::new(Duration::from_secs(60), Duration::from_secs(5), 100);
        let got = block_on(verify(&verifier, &cache, KEY, Instant::now()));
        assert_eq!(got, Err(AuthError::Unavailable));
        assert!(cache.is_empty());
    }

    #[test]
    fn cache_is_bounded() {
        let cache = Cache::new(Duration::from_secs(60), Duration::from_secs(60), 10);
        let now = Instant::now();
        for i in 0..1000 {
            cache.put(&format!("vb_{i}"), None, now);
            assert!(cache.len() <= 10);
        }
    }
}
