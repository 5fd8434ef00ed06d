//! Token buckets that bound what one client may make its session do: messages (the request
//! rate limit) and, beneath them, every frame and byte it sends ([`Budget`]). A bucket holds only its
//! level and when it was last filled; rate and burst come from the configuration.

use tokio::time::Instant;

use crate::config::SessionConfig;

/// Refills `level` for `elapsed` seconds at `rate` per second up to `burst`, then takes `n`;
/// false (and the level left empty) if there was not enough.
pub(crate) fn take(level: &mut f32, n: f32, elapsed: f32, rate: u32, burst: u32) -> bool {
    *level = (*level + elapsed * rate.max(1) as f32).min(burst.max(1) as f32);
    if *level >= n {
        *level -= n;
        true
    } else {
        *level = 0.0;
        false
    }
}

/// A token bucket refilled at `rate` per second up to `burst`.
#[derive(Debug)]
pub(crate) struct Bucket {
    tokens: f32,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn new(burst: u32, now: Instant) -> Self {
        Bucket {
            tokens: burst.max(1) as f32,
            last: now,
        }
    }

    /// Takes `n` tokens; false (and the bucket left empty) if there were not enough.
    pub(crate) fn take(&mut self, n: u32, rate: u32, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        take(&mut self.tokens, n as f32, elapsed, rate, burst)
    }
}

/// What the client may still send: frames and bytes, two token buckets filled on one clock.
pub(crate) struct Budget {
    frames: f32,
    bytes: f32,
    last: Instant,
}

impl Budget {
    pub(crate) fn new(config: &SessionConfig, now: Instant) -> Self {
        Budget {
            frames: config.frame_burst.max(1) as f32,
            bytes: config.byte_burst.max(1) as f32,
            last: now,
        }
    }

    /// Refills both for the time since the last call, then takes `frames` and `bytes`;
    /// false once either is overdrawn.
    pub(crate) fn take(
        &mut self,
        config: &SessionConfig,
        frames: u32,
        bytes: usize,
        now: Instant,
    ) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        let frames_ok = take(
            &mut self.frames,
            frames as f32,
            elapsed,
            config.frames_per_second,
            config.frame_burst,
        );
        let bytes_ok = take(
            &mut self.bytes,
            bytes as f32,
            elapsed,
            config.bytes_per_second,
            config.byte_burst,
        );
        frames_ok && bytes_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(10, start);
        assert!(bucket.take(10, 5, 10, start));
        assert!(!bucket.take(1, 5, 10, start));
        // Half a second at 5 per second refills 2.5.
        let later = start + Duration::from_millis(500);
        assert!(bucket.take(2, 5, 10, later));
        assert!(!bucket.take(1, 5, 10, later));
        // Never more than the burst.
        let much_later = later + Duration::from_secs(3600);
        assert!(bucket.take(10, 5, 10, much_later));
        assert!(!bucket.take(1, 5, 10, much_later));
    }
}
