//! Control frames waiting for one phone's session task (awards, round notices), filled by the
//! worker and drained by the session. Everything runs on the worker's thread, so this is a
//! queue and a wake-up rather than a channel: an empty outbox allocates nothing, where a tokio
//! channel allocates a 32-slot block per phone up front (about 1.3 KiB of the edge's memory per
//! idle phone; see docs/PERFORMANCE.md).

use std::cell::RefCell;
use std::collections::VecDeque;

use bytes::Bytes;
use tokio::sync::Notify;

/// Frames one outbox holds at most: far more than a phone is ever sent between two reads of
/// its control stream (an award or two, a round notice); only a phone that stopped reading
/// fills it.
pub const OUTBOX_FRAMES: usize = 64;

/// One phone's outbox.
#[derive(Debug, Default)]
pub struct Outbox {
    frames: RefCell<VecDeque<Bytes>>,
    ready: Notify,
}

impl Outbox {
    /// Queues a frame and wakes the session. `false` (and the frame dropped) when the outbox
    /// already holds [`OUTBOX_FRAMES`]: the caller counts it. A dropped award stays undelivered
    /// in the ledger.
    pub fn push(&self, frame: Bytes) -> bool {
        let mut frames = self.frames.borrow_mut();
        if frames.len() >= OUTBOX_FRAMES {
            return false;
        }
        frames.push_back(frame);
        // Stores a permit if the session is not waiting right now, so no wake-up is lost.
        self.ready.notify_one();
        true
    }

    /// The next frame, waiting for one if none is queued.
    pub async fn next(&self) -> Bytes {
        loop {
            if let Some(frame) = self.frames.borrow_mut().pop_front() {
                return frame;
            }
            self.ready.notified().await;
        }
    }

    /// Frames queued.
    pub fn len(&self) -> usize {
        self.frames.borrow().len()
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.frames.borrow().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::time::Duration;

    #[tokio::test]
    async fn frames_come_out_in_order_and_a_waiting_session_is_woken() {
        let outbox = Rc::new(Outbox::default());
        assert!(outbox.push(Bytes::from_static(b"a")));
        assert!(outbox.push(Bytes::from_static(b"b")));
        assert_eq!(outbox.len(), 2);
        assert_eq!(outbox.next().await, Bytes::from_static(b"a"));
        assert_eq!(outbox.next().await, Bytes::from_static(b"b"));
        assert!(outbox.is_empty());
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let waiter = {
                    let outbox = outbox.clone();
                    tokio::task::spawn_local(async move { outbox.next().await })
                };
                tokio::task::yield_now().await;
                assert!(outbox.push(Bytes::from_static(b"c")));
                let got = tokio::time::timeout(Duration::from_secs(1), waiter).await;
                assert_eq!(got.unwrap().unwrap(), Bytes::from_static(b"c"));
            })
            .await;
    }

    #[test]
    fn a_phone_that_stops_reading_fills_its_outbox_and_no_more() {
        let outbox = Outbox::default();
        for _ in 0..OUTBOX_FRAMES {
            assert!(outbox.push(Bytes::from_static(b"f")));
        }
        assert!(!outbox.push(Bytes::from_static(b"one too many")));
        assert_eq!(outbox.len(), OUTBOX_FRAMES);
    }

    #[tokio::test]
    async fn a_push_before_anyone_waits_is_not_lost() {
        let outbox = Outbox::default();
        assert!(outbox.push(Bytes::from_static(b"x")));
        let got = tokio::time::timeout(Duration::from_secs(1), outbox.next()).await;
        assert_eq!(got.unwrap(), Bytes::from_static(b"x"));
    }
}
