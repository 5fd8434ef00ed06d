//! A session's limits and timings.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Limits and timings of every session; part of the gateway's configuration (`[session]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// How often the gateway pings each session. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A session that sent nothing, not even a pong, for this long is closed (1001). Default `60s`.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// The largest client message, in bytes; larger ones close the session (1009). Default 65536.
    pub max_message_bytes: usize,
    /// The most patterns one session may hold. Default 256.
    pub max_topics: usize,
    /// Frames a session's queue holds before the session is closed as too slow (1013). Default 4096.
    pub queue_frames: usize,
    /// Bytes a session's queue holds before the session is closed as too slow (1013).
    /// Default 1 MiB, Centrifugo's default too: a client that keeps reading survives a
    /// burst of that size. An empty queue holds no memory at all.
    pub queue_bytes: usize,
    /// Bytes written to a socket but not yet sent that the kernel holds at most
    /// (`TCP_NOTSENT_LOWAT`); 0 leaves the kernel's default. Unlike a small `SO_SNDBUF` it
    /// does not limit the data in flight, so it costs no throughput. Default 16 KiB.
    pub unsent_bytes: u32,
    /// Refused requests a session may make before it is closed (1008). Default 20.
    pub max_refusals: u32,
    /// Client messages per second a session may send on average. Default 20.
    pub messages_per_second: u32,
    /// Client messages a session may send in a burst. Default 50.
    pub message_burst: u32,
    /// Frames of any kind (pings, pongs, fragments and close included) a client may send per
    /// second on average; more closes the session (1008). Default 100.
    pub frames_per_second: u32,
    /// Frames a client may send in a burst. Default 300.
    pub frame_burst: u32,
    /// Bytes a client may send per second on average, framing included; more closes the
    /// session (1008). Default 128 KiB.
    pub bytes_per_second: u32,
    /// Bytes a client may send in a burst; at least `max_message_bytes` plus framing.
    /// Default 512 KiB.
    pub byte_burst: u32,
    /// How long a close frame may take to write before the socket is dropped. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            ping_interval: Duration::from_secs(10),
            pong_timeout: Duration::from_secs(60),
            max_message_bytes: 64 * 1024,
            max_topics: 256,
            queue_frames: 4096,
            queue_bytes: 1024 * 1024,
            unsent_bytes: 16 * 1024,
            max_refusals: 20,
            messages_per_second: 20,
            message_burst: 50,
            frames_per_second: 100,
            frame_burst: 300,
            bytes_per_second: 128 * 1024,
            byte_burst: 512 * 1024,
            close_timeout: Duration::from_secs(5),
        }
    }
}
