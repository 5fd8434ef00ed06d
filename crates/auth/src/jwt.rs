//! VoIPBIN's JWTs: HMAC-signed (HS256 in practice), with its own claim layout.
//!
//! ```json
//! {"type":"agent","agent":{"id":UUID,"customer_id":UUID,"permission":32,…},"expire":"2026-08-29T12:00:00.000000Z"}
//! {"type":"direct","direct":{"customer_id":UUID,"resource_type":"webchat_widget","resource_id":UUID,"allowed_resource_types":["webchat_session"]},"expire":"…"}
//! ```
//!
//! A missing `type` means `agent`; `delegate` and any other type are refused. `expire` is
//! required, a string in VoIPBIN's timestamp layout; a numeric `exp`, where present, is
//! honoured too. Like the real server, any HMAC algorithm verifies with the shared secret;
//! `none` and every public-key algorithm are refused.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use uuid::Uuid;

use crate::error::{AuthError, Invalid};
use crate::identity::{Identity, Kind};

/// Verifies tokens signed with one shared secret.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("jwt::Verifier { .. }")
    }
}

/// The secret was empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the jwt secret must not be empty")]
pub struct EmptySecret;

impl Verifier {
    /// A verifier for tokens signed with `secret` (VoIPBIN's `JWT_KEY`).
    ///
    /// # Errors
    /// [`EmptySecret`] when `secret` is empty.
    pub fn new(secret: &[u8]) -> Result<Self, EmptySecret> {
        let key = DecodingKey::from_secret(secret).map_err(|_| EmptySecret)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        // Expiry is checked below against the caller's clock, with VoIPBIN's `expire`.
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        // `aud` is a delegate-token claim; delegate tokens are refused by type below.
        validation.validate_aud = false;
        Ok(Verifier { key, validation })
    }

    /// Verifies `token` at time `now` and returns the identity it stands for.
    ///
    /// # Errors
    /// [`AuthError::Invalid`] with the reason: malformed, wrong algorithm, bad signature,
    /// expired, claims missing or mistyped, or a token type the WebSocket does not take.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid(Invalid::Malformed))?;
        if !self.validation.algorithms.contains(&header.alg) {
            return Err(invalid(Invalid::Algorithm));
        }
        let data =
            jsonwebtoken::decode::<Value>(token, &self.key, &self.validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidSignature => invalid(Invalid::Signature),
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        invalid(Invalid::Algorithm)
                    }
                    ErrorKind::Json(_) => invalid(Invalid::Claims),
                    _ => invalid(Invalid::Malformed),
                }
            })?;
        identity_from_claims(&data.claims, now)
    }
}

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign the token: {0}")]
pub struct SignError(#[from] jsonwebtoken::errors::Error);

/// Signs `claims` with HS256 and `secret`, as VoIPBIN does (for the demo, the load tester and
/// tests; the gateway itself only verifies).
///
/// # Errors
/// [`SignError`] when the secret is empty.
pub fn sign(secret: &[u8], claims: &Value) -> Result<String, SignError> {
    let key = jsonwebtoken::EncodingKey::from_secret(secret)?;
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &key,
    )?)
}

/// The claims of an agent token in VoIPBIN's layout, expiring at `expire` (VoIPBIN's
/// timestamp layout).
pub fn agent_claims(customer: Uuid, agent: Uuid, permission: u64, expire: &str) -> Value {
    serde_json::json!({
        "type": "agent",
        "agent": {"id": agent, "customer_id": customer, "permission": permission, "username": "agent"},
        "expire": expire,
    })
}

fn invalid(reason: Invalid) -> AuthError {
    AuthError::Invalid(reason)
}

fn claims_error() -> AuthError {
    invalid(Invalid::Claims)
}

fn uuid_field(object: &Value, field: &str) -> Result<Uuid, AuthError> {
    object
        .get(field)
        .and_then(Value::as_str)
        .and_then(|s| Uuid::try_parse(s).ok())
        .filter(|u| !u.is_nil())
        .ok_or_else(claims_error)
}

/// Reads the identity out of verified claims and checks their expiry against `now`.
fn identity_from_claims(claims: &Value, now: SystemTime) -> Result<Identity, AuthError> {
    if !claims.is_object() {
        return Err(claims_error());
    }
    let expire = claims
        .get("expire")
        .and_then(Value::as_str)
        .ok_or_else(claims_error)?;
    let mut expires_at = fanout_protocol::timestamp::parse(expire).ok_or_else(claims_error)?;
    if let Some(exp) = claims.get("exp") {
        // A NumericDate (RFC 7519 §2): seconds, maybe with a fraction. One past what the
        // clock can hold only means "no earlier than `expire`".
        let after_epoch = match exp.as_u64() {
            Some(secs) => Some(Duration::from_secs(secs)),
            None => exp
                .as_f64()
                .filter(|secs| *secs >= 0.0)
                .map(|secs| Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
                .ok_or_else(claims_error)
                .map(Some)?,
        };
        if let Some(exp_at) = after_epoch.and_then(|d| UNIX_EPOCH.checked_add(d)) {
            expires_at = expires_at.min(exp_at);
        }
    }
    if expires_at <= now {
        return Err(invalid(Invalid::Expired));
    }
    let kind = match claims.get("type") {
        None | Some(Value::Null) => "agent",
        Some(Value::String(kind)) => kind.as_str(),
        Some(_) => return Err(claims_error()),
    };
    let (customer_id, kind) = match kind {
        "agent" => {
            let agent = claims.get("agent").ok_or_else(claims_error)?;
            let permission = match agent.get("permission") {
                None | Some(Value::Null) => 0,
                Some(p) => p.as_u64().ok_or_else(claims_error)?,
            };
            (
                uuid_field(agent, "customer_id")?,
                Kind::Agent {
                    agent_id: uuid_field(agent, "id")?,
                    permission,
                },
            )
        }
        "direct" => {
            let direct = claims.get("direct").ok_or_else(claims_error)?;
            let allowed_resource_types = direct
                .get("allowed_resource_types")
                .and_then(Value::as_array)
                .ok_or_else(claims_error)?
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or_else(claims_error))
                .collect::<Result<Vec<_>, _>>()?;
            let text = |field: &str| direct.get(field).and_then(Value::as_str).map(str::to_owned);
            (
                uuid_field(direct, "customer_id")?,
                Kind::Direct(Box::new(crate::identity::Direct {
                    resource_type: text("resource_type").unwrap_or_default(),
                    resource_id: uuid_field(direct, "resource_id").ok(),
                    allowed_resource_types,
                    allowed_resource_id: text("allowed_resource_id").filter(|s| !s.is_empty()),
                })),
            )
        }
        _ => return Err(invalid(Invalid::TokenType)),
    };
    Ok(Identity {
        customer_id,
        kind,
        expires_at: Some(expires_at),
    })
}

#[cfg(test)]
mod tests;
