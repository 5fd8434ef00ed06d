//! VoIPBIN's JSON error envelope for HTTP answers (protocol.md §1.1):
//!
//! ```json
//! {"error":{"status":"UNAUTHENTICATED","reason":"AUTHENTICATION_REQUIRED","message":"Authentication is required.","request_id":"req_…"}}
//! ```

use serde::Serialize;

/// One HTTP error answer: its status code and the envelope's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpError {
    /// The HTTP status code.
    pub code: u16,
    /// The envelope's `status` (`UNAUTHENTICATED`).
    pub status: &'static str,
    /// The envelope's `reason` (`AUTHENTICATION_REQUIRED`).
    pub reason: &'static str,
    /// The envelope's `message`, for a person.
    pub message: &'static str,
}

impl HttpError {
    /// 401: no credential in any source.
    pub const AUTHENTICATION_REQUIRED: HttpError = HttpError {
        code: 401,
        status: "UNAUTHENTICATED",
        reason: "AUTHENTICATION_REQUIRED",
        message: "Authentication is required.",
    };
    /// 401: a credential that is not valid.
    pub const INVALID_CREDENTIALS: HttpError = HttpError {
        code: 401,
        status: "UNAUTHENTICATED",
        reason: "INVALID_CREDENTIALS",
        message: "The provided credentials are invalid.",
    };
    /// 429: a rate or connection limit.
    pub const RESOURCE_EXHAUSTED: HttpError = HttpError {
        code: 429,
        status: "RESOURCE_EXHAUSTED",
        reason: "RATE_LIMITED",
        message: "Too many requests. Retry later.",
    };
    /// 503: draining, or a dependency is unavailable.
    pub const UNAVAILABLE: HttpError = HttpError {
        code: 503,
        status: "UNAVAILABLE",
        reason: "SERVICE_UNAVAILABLE",
        message: "The service is unavailable. Retry later.",
    };
    /// 400: a request that is not a WebSocket upgrade, or is malformed.
    pub const NOT_WEBSOCKET: HttpError = HttpError {
        code: 400,
        status: "INVALID_ARGUMENT",
        reason: "WEBSOCKET_UPGRADE_REQUIRED",
        message: "This endpoint only accepts WebSocket upgrade requests.",
    };
    /// 426: a WebSocket version other than 13 (answered with `Sec-WebSocket-Version: 13`).
    pub const UNSUPPORTED_VERSION: HttpError = HttpError {
        code: 426,
        status: "FAILED_PRECONDITION",
        reason: "UNSUPPORTED_WEBSOCKET_VERSION",
        message: "Only WebSocket version 13 is supported.",
    };
    /// 400: a malformed request body or parameter.
    pub const BAD_REQUEST: HttpError = HttpError {
        code: 400,
        status: "INVALID_ARGUMENT",
        reason: "INVALID_REQUEST",
        message: "The request is malformed.",
    };
    /// 403: the identity may not do this.
    pub const PERMISSION_DENIED: HttpError = HttpError {
        code: 403,
        status: "PERMISSION_DENIED",
        reason: "PERMISSION_DENIED",
        message: "You do not have permission for this request.",
    };
    /// 404: no such route.
    pub const NOT_FOUND: HttpError = HttpError {
        code: 404,
        status: "NOT_FOUND",
        reason: "NOT_FOUND",
        message: "Not found.",
    };

    /// The envelope's JSON text with `request_id`.
    pub fn body(&self, request_id: &str) -> String {
        #[derive(Serialize)]
        struct Inner<'a> {
            status: &'a str,
            reason: &'a str,
            message: &'a str,
            request_id: &'a str,
        }
        #[derive(Serialize)]
        struct Outer<'a> {
            error: Inner<'a>,
        }
        let outer = Outer {
            error: Inner {
                status: self.status,
                reason: self.reason,
                message: self.message,
                request_id,
            },
        };
        serde_json::to_string(&outer).unwrap_or_default()
    }
}

/// A request id for an answer: the client's `X-Request-Id` when it is short and printable,
/// else `req_` and 32 hexadecimal digits derived from `random`.
pub fn request_id(client_supplied: Option<&str>, random: u128) -> String {
    match client_supplied {
        Some(id)
            if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            id.to_owned()
        }
        _ => format!("req_{random:032x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_layout() {
        let body = HttpError::AUTHENTICATION_REQUIRED.body("req_1");
        let value: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(value["error"]["status"], "UNAUTHENTICATED");
        assert_eq!(value["error"]["reason"], "AUTHENTICATION_REQUIRED");
        assert_eq!(value["error"]["message"], "Authentication is required.");
        assert_eq!(value["error"]["request_id"], "req_1");
    }

    #[test]
    fn request_ids() {
        assert_eq!(request_id(Some("abc-1"), 5), "abc-1");
        assert_eq!(request_id(Some("bad id"), 5).len(), 36);
        assert_eq!(request_id(None, 0xff), format!("req_{:032x}", 0xff));
    }
}
