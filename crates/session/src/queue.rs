//! A session's bounded queue of ready-made frames.
//!
//! The fan-out pushes shared frame buffers (`Bytes`: a reference count, no copy) without
//! waiting; the session's writer takes everything queued at once and writes it in as few
//! system calls as it can. The queue is bounded in frames and in bytes; a push that would
//! overflow it fails, and the caller closes the session as too slow.
//!
//! A resume's replay ([`Queue::push_replay`]) is queued whole beyond the limits, since its
//! frames are the window's own (shared, already counted there; a session resumes a few
//! times at most); live events still get the whole limit on top of it.
//!
//! An idle queue that never carried an event holds no allocation; once it has, its deque and
//! the writer's swap buffers rather than allocating per batch.

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

/// What [`Queue::take_into`] took.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Frames, now in the caller's deque.
    Frames,
    /// Everything queued is written: write this close frame and end.
    Close(Bytes),
    /// Nothing is queued.
    Nothing,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Bytes>,
    bytes: usize,
    close: Option<Bytes>,
    /// Frames and bytes of a replay not yet taken, allowed beyond the limits.
    replay_frames: usize,
    replay_bytes: usize,
    /// The consumer's waker while it is busy writing frames it took earlier (and so not
    /// waiting on `notify`): a close wakes it through this.
    busy: Option<std::task::Waker>,
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
        if state.frames.len() >= self.max_frames + headroom + state.replay_frames
            || state.bytes + frame.len() > self.max_bytes + headroom * 128 + state.replay_bytes
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

    /// Queues a resume's replay, beyond the limits (until the writer takes it).
    pub fn push_replay(&self, frames: Vec<Bytes>) -> Push {
        if frames.is_empty() {
            return Push::Queued;
        }
        let mut state = self.lock();
        if state.close.is_some() {
            return Push::Closed;
        }
        let bytes: usize = frames.iter().map(Bytes::len).sum();
        state.replay_frames += frames.len();
        state.replay_bytes += bytes;
        state.bytes += bytes;
        state.frames.extend(frames);
        drop(state);
        self.notify.notify_one();
        Push::Queued
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
        let busy = state.busy.take();
        drop(state);
        self.notify.notify_one();
        if let Some(waker) = busy {
            waker.wake();
        }
        true
    }

    /// Ready once the queue is closed; for a consumer busy writing what it took, which does
    /// not wait on [`Queue::changed`] meanwhile. Costs the queue's own lock, no other.
    pub fn poll_closed(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let mut state = self.lock();
        if state.close.is_some() {
            return std::task::Poll::Ready(());
        }
        match &state.busy {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.busy = Some(cx.waker().clone()),
        }
        std::task::Poll::Pending
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    /// Whether no frame is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes what is queued now into `out` (which must be empty) by swapping deques, so
    /// neither side allocates once both have held frames: frames, else the close frame once
    /// everything before it is taken, else nothing.
    pub fn take_into(&self, out: &mut VecDeque<Bytes>) -> Taken {
        let mut state = self.lock();
        if !state.frames.is_empty() {
            out.clear();
            std::mem::swap(&mut state.frames, out);
            state.bytes = 0;
            state.replay_frames = 0;
            state.replay_bytes = 0;
            return Taken::Frames;
        }
        match &state.close {
            Some(close) => Taken::Close(close.clone()),
            None => Taken::Nothing,
        }
    }

    /// Resolves after the next push or close (or at once if one happened since the last
    /// wait). Use after [`Queue::take_into`] found nothing.
    ///
    /// # Cancel safety
    /// Cancel-safe: a wake-up that was not consumed stays for the next call.
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    fn take(queue: &Queue) -> (Taken, Vec<usize>) {
        let mut out = VecDeque::new();
        let taken = queue.take_into(&mut out);
        (taken, out.iter().map(Bytes::len).collect())
    }

    #[test]
    fn bounded_in_frames_and_bytes() {
        let queue = Queue::new(3, 100);
        assert_eq!(queue.push(frame(10)), Push::Queued);
        assert_eq!(queue.push(frame(10)), Push::Queued);
        assert_eq!(queue.push(frame(10)), Push::Queued);
        assert_eq!(queue.push(frame(10)), Push::Full);
        assert_eq!(queue.push_control(frame(2)), Push::Queued);
        assert_eq!(take(&queue), (Taken::Frames, vec![10, 10, 10, 2]));
        assert_eq!(queue.push(frame(101)), Push::Full);
        assert_eq!(queue.push(frame(100)), Push::Queued);
    }

    #[test]
    fn a_replay_goes_beyond_the_limits() {
        let queue = Queue::new(2, 100);
        assert_eq!(queue.push(frame(10)), Push::Queued);
        assert_eq!(queue.push_replay(vec![frame(40); 5]), Push::Queued);
        // Live events still get the whole limit on top of the replay.
        assert_eq!(queue.push(frame(10)), Push::Queued);
        assert_eq!(queue.push(frame(10)), Push::Full);
        // A second replay before the first was taken goes beyond them too.
        assert_eq!(queue.push_replay(vec![frame(1)]), Push::Queued);
        assert_eq!(queue.push(frame(10)), Push::Full);
        assert_eq!(take(&queue).1.len(), 8);
        // Taken: the limits are the plain ones again.
        assert_eq!(queue.push(frame(10)), Push::Queued);
        assert_eq!(queue.push(frame(10)), Push::Queued);
        assert_eq!(queue.push(frame(10)), Push::Full);
        queue.close(frame(2), false);
        assert_eq!(queue.push_replay(vec![frame(1)]), Push::Closed);
    }

    #[test]
    fn close_after_queued_frames_or_discarding_them() {
        let queue = Queue::new(10, 1000);
        queue.push(frame(1));
        assert!(queue.close(frame(2), false));
        assert!(!queue.close(frame(3), true));
        assert_eq!(queue.push(frame(1)), Push::Closed);
        assert_eq!(take(&queue), (Taken::Frames, vec![1]));
        assert_eq!(take(&queue), (Taken::Close(frame(2)), vec![]));

        let queue = Queue::new(10, 1000);
        queue.push(frame(1));
        queue.close(frame(2), true);
        assert_eq!(take(&queue), (Taken::Close(frame(2)), vec![]));
    }

    #[test]
    fn take_into_swaps_buffers() {
        let queue = Queue::new(10, 1000);
        let mut out = VecDeque::new();
        assert_eq!(queue.take_into(&mut out), Taken::Nothing);
        queue.push(frame(1));
        queue.push(frame(2));
        assert_eq!(queue.take_into(&mut out), Taken::Frames);
        assert_eq!(out.len(), 2);
        let reused = out.capacity();
        out.clear();
        queue.push(frame(3));
        assert_eq!(queue.take_into(&mut out), Taken::Frames);
        assert_eq!(out.iter().map(Bytes::len).collect::<Vec<_>>(), [3]);
        assert!(reused > 0);
    }

    #[tokio::test]
    async fn wakes_a_waiting_writer() {
        let queue = std::sync::Arc::new(Queue::new(10, 1000));
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move {
                loop {
                    let mut out = VecDeque::new();
                    if queue.take_into(&mut out) == Taken::Frames {
                        return out.len();
                    }
                    queue.changed().await;
                }
            }
        });
        tokio::task::yield_now().await;
        queue.push(frame(5));
        assert_eq!(waiter.await.expect("joins"), 1);
    }
}
