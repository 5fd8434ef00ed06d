//! One entry point from a request's credential to an identity.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::accesskey::{self, Cache, Verifier};
use crate::credential::Credential;
use crate::error::AuthError;
use crate::identity::Identity;
use crate::jwt;

/// Verifies JWTs with the shared secret and access keys through a cached verifier.
pub struct Authenticator {
    jwt: jwt::Verifier,
    keys: Arc<dyn Verifier>,
    cache: Cache,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator { .. }")
    }
}

impl Authenticator {
    /// An authenticator from its parts.
    pub fn new(jwt: jwt::Verifier, keys: Arc<dyn Verifier>, cache: Cache) -> Self {
        Authenticator { jwt, keys, cache }
    }

    /// The identity `credential` stands for at the given wall-clock and monotonic times.
    ///
    /// # Cancel safety
    /// Cancel-safe when the access-key verifier is.
    ///
    /// # Errors
    /// [`AuthError::Missing`] without a credential; otherwise as [`jwt::Verifier::verify`]
    /// and [`accesskey::verify`].
    pub async fn authenticate(
        &self,
        credential: Option<&Credential>,
        now: SystemTime,
        monotonic: Instant,
    ) -> Result<Identity, AuthError> {
        match credential {
            None => Err(AuthError::Missing),
            Some(Credential::Token(token)) => self.jwt.verify(token, now),
            Some(Credential::AccessKey(key)) => {
                accesskey::verify(self.keys.as_ref(), &self.cache, key, monotonic).await
            }
        }
    }
}
