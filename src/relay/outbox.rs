//! A peer's bounded send queue: the hub pushes frames in without waiting, the peer's task drains it.
//!
//! The bound is in bytes. When a push would exceed it, the push is refused and the hub disconnects
//! that peer as too slow (close `1008`) rather than waiting on it: one stuck reader must never stall
//! the server it shares with hundreds of other clients, nor grow the relay's memory. Frames accepted
//! for a peer that keeps reading are always delivered, in order.

use crate::relay::outcome::{Closing, SHUTTING_DOWN, TOO_SLOW};
use crate::relay::resume::Replay;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Whether a write the peer is not reading is given up for this close rather than waited on: the
/// peer is too slow, or the relay is going away.
fn abandons_writes(closing: Closing) -> bool {
    closing == TOO_SLOW || closing == SHUTTING_DOWN
}

/// The push side, held by the hub.
#[derive(Debug, Clone)]
pub struct Outbox(Arc<Shared>);

/// The drain side, held by the peer's own task.
#[derive(Debug)]
pub struct Inbox(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<String>,
    /// Sum of the lengths of `frames`; never above `limit`.
    bytes: usize,
    /// Most bytes of frames waiting at once.
    limit: usize,
    /// The last frames taken to be written, for a resume to replay.
    replay: Replay,
    closing: Option<Closing>,
    /// The peer's task, once it found nothing to do. Only that task waits on its inbox, so one slot
    /// is enough; kept under the queue's lock, a push cannot slip between a check and the wait.
    waiting: Option<Waker>,
}

/// The queue was full: the frame was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull;

/// Makes a connected pair holding at most `limit_bytes` of queued frames.
pub fn bounded(limit_bytes: usize) -> (Outbox, Inbox) {
    replayable(limit_bytes, 0)
}

/// Like [`bounded`], also keeping the last `replay_bytes` of frames taken, for a resume.
pub fn replayable(limit_bytes: usize, replay_bytes: usize) -> (Outbox, Inbox) {
    preloaded(limit_bytes, replay_bytes, VecDeque::new())
}

/// Like [`replayable`], with `frames` already queued (a resumed peer's HELLO, its replayed and
/// its queued frames); they count against the bound on top of `limit_bytes`.
pub fn preloaded(
    limit_bytes: usize,
    replay_bytes: usize,
    frames: VecDeque<String>,
) -> (Outbox, Inbox) {
    let bytes = frames.iter().map(String::len).sum();
    let queue = Queue {
        frames,
        bytes,
        limit: limit_bytes + bytes,
        replay: Replay::new(replay_bytes),
        ..Queue::default()
    };
    let shared = Arc::new(Shared {
        queue: Mutex::new(queue),
    });
    (Outbox(shared.clone()), Inbox(shared))
}

/// What a queue held when its peer went away or was superseded.
#[derive(Debug)]
pub struct Rest {
    /// Frames not taken yet, in order.
    pub unwritten: VecDeque<String>,
    /// The frames taken last, which may have died in the socket.
    pub replay: Replay,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock cannot leave the queue inconsistent, so poison is ignored.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes the peer's task, if it waits, once the lock is released.
    fn wake(mut queue: MutexGuard<'_, Queue>) {
        let waiting = queue.waiting.take();
        drop(queue);
        if let Some(waker) = waiting {
            waker.wake();
        }
    }
}

impl Queue {
    /// Leaves the task's waker for the next push or close to wake.
    fn wait<T>(&mut self, cx: &Context<'_>) -> Poll<T> {
        match &self.waiting {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => self.waiting = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Outbox {
    /// Queues a frame without waiting. Frames pushed after [`Outbox::close`] are discarded.
    pub fn push(&self, frame: String) -> Result<(), QueueFull> {
        let mut queue = self.0.lock();
        if queue.closing.is_some() {
            return Ok(());
        }
        if queue.bytes + frame.len() > queue.limit {
            return Err(QueueFull);
        }
        queue.bytes += frame.len();
        queue.frames.push_back(frame);
        Shared::wake(queue);
        Ok(())
    }

    /// Takes everything the queue holds, written or not, for the peer's next session.
    pub fn take_rest(&self) -> Rest {
        let mut queue = self.0.lock();
        queue.bytes = 0;
        let limit = queue.replay.limit();
        Rest {
            unwritten: std::mem::take(&mut queue.frames),
            replay: std::mem::replace(&mut queue.replay, Replay::new(limit)),
        }
    }

    /// Asks the peer's task to close after writing what is already queued. The first call wins.
    pub fn close(&self, closing: Closing) {
        let mut queue = self.0.lock();
        queue.closing.get_or_insert(closing);
        Shared::wake(queue);
    }
}

impl Inbox {
    /// Waits for frames and takes every queued one, or returns the close request once no frames
    /// remain before it.
    ///
    /// The queue gives up its buffer with the frames, so an idle peer holds no queue memory.
    /// Cancel-safe: nothing is taken from the queue until the call returns.
    pub async fn next_batch(&self) -> Result<VecDeque<String>, Closing> {
        poll_fn(|cx| {
            let mut queue = self.0.lock();
            if !queue.frames.is_empty() {
                queue.bytes = 0;
                let frames = std::mem::take(&mut queue.frames);
                for frame in &frames {
                    queue.replay.record(frame);
                }
                return Poll::Ready(Ok(frames));
            }
            if let Some(closing) = queue.closing {
                return Poll::Ready(Err(closing));
            }
            queue.wait(cx)
        })
        .await
    }

    /// The number the next frame taken gets, for a ping written after the frames taken so far.
    pub fn written(&self) -> u64 {
        self.0.lock().replay.written()
    }

    /// The peer answered a ping written after frame `received - 1`: it needs none of those again.
    pub fn delivered(&self, received: u64) {
        self.0.lock().replay.delivered(received);
    }

    /// Resolves with the close once the peer has been closed as [`TOO_SLOW`] or
    /// [`SHUTTING_DOWN`]; used to abandon a write it is not reading. Other closes wait for queued
    /// frames to be written first.
    pub async fn abandoned(&self) -> Closing {
        poll_fn(|cx| {
            let mut queue = self.0.lock();
            match queue.closing {
                Some(closing) if abandons_writes(closing) => Poll::Ready(closing),
                _ => queue.wait(cx),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::relay::outcome::SERVER_GONE as GONE;

    #[tokio::test]
    async fn delivers_in_order_in_one_batch() {
        let (outbox, inbox) = bounded(100);
        outbox.push("a".into()).expect("room");
        outbox.push("bc".into()).expect("room");
        assert_eq!(
            inbox.next_batch().await,
            Ok(VecDeque::from(["a".into(), "bc".into()]))
        );
    }

    #[tokio::test]
    async fn refuses_past_the_byte_bound_and_frees_room_when_drained() {
        let (outbox, inbox) = bounded(10);
        outbox.push("x".repeat(6)).expect("room");
        assert_eq!(outbox.push("x".repeat(5)), Err(QueueFull));
        outbox.push("x".repeat(4)).expect("exactly at the bound");
        assert_eq!(inbox.next_batch().await.map(|batch| batch.len()), Ok(2));
        outbox.push("x".repeat(10)).expect("drained");
    }

    #[tokio::test]
    async fn close_comes_after_queued_frames_and_later_pushes_are_dropped() {
        let (outbox, inbox) = bounded(100);
        outbox.push("PEER_GONE".into()).expect("room");
        outbox.close(GONE);
        outbox.push("late".into()).expect("discarded quietly");
        assert_eq!(
            inbox.next_batch().await,
            Ok(VecDeque::from(["PEER_GONE".into()]))
        );
        assert_eq!(inbox.next_batch().await, Err(GONE));
        let abandoned =
            tokio::time::timeout(std::time::Duration::from_millis(20), inbox.abandoned());
        assert!(
            abandoned.await.is_err(),
            "a server-gone close waits for queued frames"
        );
        outbox.close(TOO_SLOW);
        assert_eq!(inbox.next_batch().await, Err(GONE), "the first close wins");
    }

    #[tokio::test]
    async fn a_slow_peer_or_shutdown_abandons_a_pending_write() {
        for closing in [TOO_SLOW, SHUTTING_DOWN] {
            let (outbox, inbox) = bounded(100);
            let waiter = tokio::spawn(async move { inbox.abandoned().await });
            tokio::task::yield_now().await;
            outbox.close(closing);
            assert_eq!(waiter.await.expect("no panic"), closing);
        }
    }

    #[tokio::test]
    async fn wakes_a_waiting_task() {
        let (outbox, inbox) = bounded(100);
        let waiter = tokio::spawn(async move { inbox.next_batch().await });
        tokio::task::yield_now().await;
        outbox.push("hi".into()).expect("room");
        assert_eq!(
            waiter.await.expect("no panic"),
            Ok(VecDeque::from(["hi".into()]))
        );
    }
}
