//! Why a credential was not accepted.

/// Why a credential is invalid; a label for logs and metrics, never shown with the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Invalid {
    /// Not three base64 parts, or a header that does not parse.
    Malformed,
    /// Signed with an algorithm other than HMAC (including `none`).
    Algorithm,
    /// The signature does not verify with the configured secret.
    Signature,
    /// `expire` (or `exp`) is in the past.
    Expired,
    /// Claims missing or of the wrong type: no string `expire`, no agent id, …
    Claims,
    /// A `delegate` token, or a `type` the WebSocket does not take.
    TokenType,
    /// An access key VoIPBIN does not know.
    UnknownKey,
}

impl Invalid {
    /// A short label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Invalid::Malformed => "malformed",
            Invalid::Algorithm => "algorithm",
            Invalid::Signature => "signature",
            Invalid::Expired => "expired",
            Invalid::Claims => "claims",
            Invalid::TokenType => "token_type",
            Invalid::UnknownKey => "unknown_key",
        }
    }
}

/// Why a request could not be authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential in any source: HTTP 401 `AUTHENTICATION_REQUIRED`.
    #[error("authentication is required")]
    Missing,
    /// A credential that is not valid: HTTP 401 `INVALID_CREDENTIALS`.
    #[error("invalid credentials ({})", .0.as_str())]
    Invalid(Invalid),
    /// The access key could not be checked (VoIPBIN unreachable): HTTP 503.
    #[error("credential check unavailable")]
    Unavailable,
    /// Too many access-key lookups are in flight: HTTP 429.
    #[error("too many credential checks in flight")]
    Busy,
}

impl AuthError {
    /// The HTTP answer for this error (protocol.md §1.1).
    pub fn http(&self) -> fanout_protocol::rest::HttpError {
        use fanout_protocol::rest::HttpError;
        match self {
            AuthError::Missing => HttpError::AUTHENTICATION_REQUIRED,
            AuthError::Invalid(_) => HttpError::INVALID_CREDENTIALS,
            AuthError::Unavailable => HttpError::UNAVAILABLE,
            AuthError::Busy => HttpError::RESOURCE_EXHAUSTED,
        }
    }

    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Invalid(reason) => reason.as_str(),
            AuthError::Unavailable => "unavailable",
            AuthError::Busy => "lookups_busy",
        }
    }
}
