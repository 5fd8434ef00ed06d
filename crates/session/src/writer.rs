//! The frames a session has taken from its queue and not yet written, written with vectored
//! writes as far as the socket takes them: a burst of events costs one system call, not one
//! per frame.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::Bytes;

/// How many buffers one vectored write carries at most (Linux's `IOV_MAX` is 1024).
const MAX_IOVECS: usize = 64;

/// Frames being written, and how far. The deque is swapped with the session's queue (see
/// [`crate::queue::Queue::take_into`]), so its buffer is reused rather than reallocated.
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    frames: VecDeque<Bytes>,
    /// The first frame not completely written.
    index: usize,
    /// Bytes of `frames[index]` already written.
    offset: usize,
}

impl Outgoing {
    /// Whether everything taken was written.
    pub(crate) fn is_empty(&self) -> bool {
        self.index >= self.frames.len()
    }

    /// The deque to take the next frames into; only while everything was written.
    pub(crate) fn refill(&mut self) -> &mut VecDeque<Bytes> {
        self.frames.clear();
        self.index = 0;
        self.offset = 0;
        &mut self.frames
    }

    /// Drops every frame not yet begun; a frame partly written stays, since the stream is
    /// only valid once it is complete. Answers whether one stays.
    pub(crate) fn discard_unstarted(&mut self) -> bool {
        if self.is_empty() {
            return false;
        }
        let keep = usize::from(self.offset > 0);
        let start = self.index;
        self.frames.drain(..start);
        self.frames.truncate(keep);
        self.index = 0;
        keep == 1
    }

    /// Adds one frame to write after what is pending.
    pub(crate) fn push(&mut self, frame: Bytes) {
        self.frames.push_back(frame);
    }

    /// Writes with `write` (a vectored, non-blocking write) until everything is written or
    /// the socket would block. Answers whether everything was written.
    ///
    /// # Errors
    /// The write's error, other than `WouldBlock`.
    pub(crate) fn write(
        &mut self,
        mut write: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<bool> {
        while !self.is_empty() {
            let end = (self.index + MAX_IOVECS).min(self.frames.len());
            let mut slices: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
            slices[0] = IoSlice::new(&self.frames[self.index][self.offset..]);
            for (slot, frame) in slices[1..]
                .iter_mut()
                .zip(self.frames.range(self.index + 1..end))
            {
                *slot = IoSlice::new(frame);
            }
            let mut written = match write(&slices[..end - self.index]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            while written > 0 && !self.is_empty() {
                let left = self.frames[self.index].len() - self.offset;
                if written >= left {
                    written -= left;
                    self.index += 1;
                    self.offset = 0;
                } else {
                    self.offset += written;
                    written = 0;
                }
            }
            // Skip empty frames so the first slice always has bytes.
            while !self.is_empty() && self.frames[self.index].len() == self.offset {
                self.index += 1;
                self.offset = 0;
            }
        }
        // Drop the frames but keep the deque's buffer for the next batch.
        self.frames.clear();
        self.index = 0;
        self.offset = 0;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes `chunk` bytes per call and says "would block" every `block_every`
    /// calls.
    fn writes(frames: &[Bytes], chunk: usize, block_every: usize) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut calls = 0;
        let mut outgoing = Outgoing::default();
        outgoing.refill().extend(frames.iter().cloned());
        loop {
            let done = outgoing
                .write(|slices| {
                    calls += 1;
                    if block_every > 0 && calls % block_every == 0 {
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    let mut budget = chunk;
                    let mut n = 0;
                    for s in slices {
                        let take = s.len().min(budget);
                        out.extend_from_slice(&s[..take]);
                        budget -= take;
                        n += take;
                        if budget == 0 {
                            break;
                        }
                    }
                    Ok(n)
                })
                .expect("no error");
            if done {
                return (out, calls);
            }
        }
    }

    #[test]
    fn partial_and_blocked_writes_keep_order() {
        let frames: Vec<Bytes> = (0..300u32)
            .map(|i| Bytes::from(format!("frame-{i};")))
            .chain([Bytes::new(), Bytes::from_static(b"end")])
            .collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        for (chunk, block_every) in [(1, 0), (7, 3), (100, 2), (1 << 20, 0)] {
            let (out, calls) = writes(&frames, chunk, block_every);
            assert_eq!(out, expected, "chunk {chunk}");
            if chunk == 1 << 20 {
                // 302 frames in batches of 64 buffers: five calls.
                assert_eq!(calls, 5);
            }
        }
    }

    #[test]
    fn discarding_keeps_only_a_frame_partly_written() {
        let mut outgoing = Outgoing::default();
        outgoing
            .refill()
            .extend([&b"aaaa"[..], b"bbbb", b"cccc"].map(Bytes::from_static));
        // Write the first frame and half of the second, then block.
        let mut calls = 0;
        let done = outgoing
            .write(|_| {
                calls += 1;
                if calls == 1 {
                    Ok(6)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                }
            })
            .expect("no error");
        assert!(!done);
        assert!(outgoing.discard_unstarted());
        let mut out = Vec::new();
        assert!(
            outgoing
                .write(|s| {
                    out.extend_from_slice(&s[0]);
                    Ok(s[0].len())
                })
                .expect("no error")
        );
        assert_eq!(out, b"bb");
        // Nothing begun: nothing stays.
        let mut outgoing = Outgoing::default();
        outgoing
            .refill()
            .extend([&b"aaaa"[..], b"bbbb"].map(Bytes::from_static));
        assert!(!outgoing.discard_unstarted());
        assert!(outgoing.is_empty());
    }

    #[test]
    fn errors_other_than_would_block_surface() {
        let mut outgoing = Outgoing::default();
        outgoing.push(Bytes::from_static(b"x"));
        let got = outgoing.write(|_| Err(io::ErrorKind::BrokenPipe.into()));
        assert_eq!(got.map_err(|e| e.kind()), Err(io::ErrorKind::BrokenPipe));
    }
}
