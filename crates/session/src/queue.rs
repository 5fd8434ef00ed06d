//! A session's bounded queue of ready-made frames.
//!
//! The fan-out pushes shared frame buffers (`Bytes`: a reference count, no copy) without
//! waiting; the session's writer takes everything queued at once and writes it in as few
//! system calls as it can. The queue is bounded in frames and in bytes; a push that would
//! overflow it fails, and the caller closes the session as too slow.
//!
//! An idle queue holds no allocation: the deque gives its buffer back once drained.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

/// Room kept beyond the limits for control frames (pongs, errors, close), so that a session
/// that is merely busy can still be answered.
const CONTROL_HEADROOM: usize = 16;

/// The outcome of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued.
    Queued,
    /// The queue is full: the session cannot keep up.
    Full,
    /// The session is closing; nothing more is queued.
    Closed,
}

/// What the writer gets next.
#[derive(Debug)]
pub enum Next {
    /// Frames to write, in order.
    Frames(Vec<Bytes>),
    /// Everything queued is written: write this close frame and end.
    Close(Bytes),
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Bytes>,
    bytes: usize,
    close: Option<Bytes>,
}

/// A bounded multi-producer, single-consumer queue of frames.
#[derive(Debug)]
pub struct Queue {
    state: Mutex<State>,
    notify: Notify,
    max_frames: usize,
    max_bytes: usize,
}

impl Queue {
    /// A queue holding at most `max_frames` frames and `max_bytes` bytes of events.
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Queue {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            max_frames: max_frames.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push_with(&self, frame: Bytes, headroom: usize) -> Push {
        let mut state = self.lock();
        if state.close.is_some() {
            return Push::Closed;
        }
        if state.frames.len() >= self.max_frames + headroom
            || state.bytes + frame.len() > self.max_bytes + headroom * 128
        {
            return Push::Full;
        }
        state.bytes += frame.len();
        state.frames.push_back(frame);
        drop(state);
        self.notify.notify_one();
        Push::Queued
    }

    /// Queues an event frame.
    pub fn push(&self, frame: Bytes) -> Push {
        self.push_with(frame, 0)
    }

    /// Queues a control or error frame, which may use a little room beyond the limits.
    pub fn push_control(&self, frame: Bytes) -> Push {
        self.push_with(frame, CONTROL_HEADROOM)
    }

    /// Closes the queue: the writer writes what is queued (or nothing, with `discard`), then
    /// `close_frame`, and ends. Only the first close counts; returns whether this was it.
    pub fn close(&self, close_frame: Bytes, discard: bool) -> bool {
        let mut state = self.lock();
        if state.close.is_some() {
            return false;
        }
        state.close = Some(close_frame);
        if discard {
            state.frames = VecDeque::new();
            state.bytes = 0;
        }
        drop(state);
        self.notify.notify_one();
        true
    }

    /// Whether the queue was closed.
    pub fn is_closed(&self) -> bool {
        self.lock().close.is_some()
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    /// Whether no frame is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes what is queued now: frames, else the close frame once everything before it is
    /// taken, else nothing.
    pub fn try_next(&self) -> Option<Next> {
        let mut state = self.lock();
        if !state.frames.is_empty() {
            let frames: Vec<Bytes> = std::mem::take(&mut state.frames).into();
            state.bytes = 0;
            return Some(Next::Frames(frames));
        }
        state.close.as_ref().map(|close| Next::Close(close.clone()))
    }

    /// Resolves after the next push or close (or at once if one happened since the last
    /// wait). Use after [`Queue::try_next`] found nothing.
    ///
    /// # Cancel safety
    /// Cancel-safe: a wake-up that was not consumed stays for the next call.
    pub async fn changed(&self) {
        self.notify.notified().await;
    }

    /// Waits for frames or the close, and takes them.
    ///
    /// # Cancel safety
    /// Cancel-safe: nothing is taken until it is returned.
    pub async fn next(&self) -> Next {
        loop {
            {
                let mut state = self.lock();
                if !state.frames.is_empty() {
                    let frames: Vec<Bytes> = std::mem::take(&mut state.frames).into();
                    state.bytes = 0;
                    return Next::Frames(frames);
                }
                if let Some(close) = &state.close {
                    return Next::Close(close.clone());
                }
            }
            // `notify_one` keeps a permit when nobody waits, so no wake-up is lost between
            // the check above and this wait.
            self.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    #[tokio::test]
    async fn bounded_in_frames_and_bytes() {
        let queue = Queue::new(3, 100);
        assert_eq!(queue.push(frame(10)), Push::Queued);
        assert_eq!(queue.push(frame(10)), Push::Queued);
        assert_eq!(queue.push(frame(10)), Push::Queued);
        assert_eq!(queue.push(frame(10)), Push::Full);
        assert_eq!(queue.push_control(frame(2)), Push::Queued);
        let Next::Frames(frames) = queue.next().await else {
            panic!("frames expected");
        };
        assert_eq!(frames.len(), 4);
        assert_eq!(queue.push(frame(101)), Push::Full);
        assert_eq!(queue.push(frame(100)), Push::Queued);
    }

    #[tokio::test]
    async fn close_after_queued_frames_or_discarding_them() {
        let queue = Queue::new(10, 1000);
        queue.push(frame(1));
        assert!(queue.close(frame(2), false));
        assert!(!queue.close(frame(3), true));
        assert_eq!(queue.push(frame(1)), Push::Closed);
        assert!(matches!(queue.next().await, Next::Frames(f) if f.len() == 1));
        assert!(matches!(queue.next().await, Next::Close(c) if c.len() == 2));

        let queue = Queue::new(10, 1000);
        queue.push(frame(1));
        queue.close(frame(2), true);
        assert!(matches!(queue.next().await, Next::Close(_)));
    }

    #[tokio::test]
    async fn wakes_a_waiting_writer() {
        let queue = std::sync::Arc::new(Queue::new(10, 1000));
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { matches!(queue.next().await, Next::Frames(f) if f.len() == 1) }
        });
        tokio::task::yield_now().await;
        queue.push(frame(5));
        assert!(waiter.await.expect("joins"));
    }
}
