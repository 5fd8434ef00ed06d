//! Why a session ended: one place mapping each reason to a close code, where it came from and
//! a metric label.

use fanout_protocol::ws::close_code;

/// Where the cause of a close lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The browser did something (closed, broke the protocol, went quiet).
    Downstream,
    /// The gateway decided (shutdown, expiry, policy).
    Gateway,
    /// A fault inside the gateway.
    Internal,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close frame.
    ClientClosed,
    /// The connection ended without a close frame (or a read or write failed).
    ConnectionLost,
    /// The gateway is shutting down or draining.
    Shutdown,
    /// No pong (or any frame) within the pong timeout.
    PongTimeout,
    /// The credential expired while connected.
    TokenExpired,
    /// Too many refused requests.
    TooManyRefusals,
    /// A binary message.
    Binary,
    /// A message over the size limit.
    TooBig,
    /// A WebSocket protocol violation.
    Protocol,
    /// A text message that is not UTF-8.
    InvalidUtf8,
    /// The session's queue overflowed: it could not keep up with its events.
    SlowConsumer,
    /// The client sent more frames or bytes than its budget allows.
    Flood,
    /// A fault inside the gateway.
    Internal,
}

impl CloseReason {
    /// The close code sent to the client.
    pub fn code(&self) -> u16 {
        match self {
            CloseReason::ClientClosed | CloseReason::ConnectionLost => close_code::NORMAL,
            CloseReason::Shutdown | CloseReason::PongTimeout => close_code::GOING_AWAY,
            CloseReason::TokenExpired | CloseReason::TooManyRefusals | CloseReason::Flood => {
                close_code::POLICY
            }
            CloseReason::Binary => close_code::UNSUPPORTED_DATA,
            CloseReason::TooBig => close_code::TOO_BIG,
            CloseReason::Protocol => close_code::PROTOCOL_ERROR,
            CloseReason::InvalidUtf8 => close_code::INVALID_PAYLOAD,
            CloseReason::SlowConsumer => close_code::TRY_AGAIN_LATER,
            CloseReason::Internal => close_code::INTERNAL,
        }
    }

    /// The reason text sent with the close code.
    pub fn text(&self) -> &'static str {
        match self {
            CloseReason::ClientClosed | CloseReason::ConnectionLost => "",
            CloseReason::Shutdown => "server shutting down",
            CloseReason::PongTimeout => "pong timeout",
            CloseReason::TokenExpired => "token expired",
            CloseReason::TooManyRefusals => "too many refused requests",
            CloseReason::Binary => "binary messages are not supported",
            CloseReason::TooBig => "message too big",
            CloseReason::Protocol => "protocol error",
            CloseReason::InvalidUtf8 => "invalid utf-8",
            CloseReason::SlowConsumer => "too slow to keep up",
            CloseReason::Flood => "sending too fast",
            CloseReason::Internal => "internal error",
        }
    }

    /// The label of the `reason` metric dimension.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::ConnectionLost => "connection_lost",
            CloseReason::Shutdown => "shutdown",
            CloseReason::PongTimeout => "pong_timeout",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::TooManyRefusals => "too_many_refusals",
            CloseReason::Binary => "binary",
            CloseReason::TooBig => "too_big",
            CloseReason::Protocol => "protocol",
            CloseReason::InvalidUtf8 => "invalid_utf8",
            CloseReason::SlowConsumer => "too_slow",
            CloseReason::Flood => "flood",
            CloseReason::Internal => "internal",
        }
    }

    /// Where the cause lies.
    pub fn origin(&self) -> Origin {
        match self {
            CloseReason::ClientClosed
            | CloseReason::ConnectionLost
            | CloseReason::PongTimeout
            | CloseReason::Binary
            | CloseReason::TooBig
            | CloseReason::Protocol
            | CloseReason::InvalidUtf8
            | CloseReason::SlowConsumer
            | CloseReason::Flood => Origin::Downstream,
            CloseReason::Shutdown | CloseReason::TokenExpired | CloseReason::TooManyRefusals => {
                Origin::Gateway
            }
            CloseReason::Internal => Origin::Internal,
        }
    }

    /// The reason for a frame decoding error.
    pub fn from_frame_error(error: fanout_protocol::ws::FrameError) -> Self {
        use fanout_protocol::ws::FrameError;
        match error {
            FrameError::Protocol(_) => CloseReason::Protocol,
            FrameError::TooBig => CloseReason::TooBig,
            FrameError::InvalidUtf8 => CloseReason::InvalidUtf8,
        }
    }
}
