//! The award acks and asks one allocator link was handed, kept until the link proves it has
//! them, and sent again on the next link if it never does.
//!
//! Nothing answers `AwardDelivered` or `AwardsWanted`, so a frame written on a stream that then
//! fails may never have arrived. But the stream is ordered, and the allocator acts on its
//! frames in order and answers a batch only once the batch's group is durable: a mark read
//! before the batch is queued before it, so it commits in that group or an earlier one, and an
//! ask read before it has had its `AwardsOwed` written first. So a `BatchResult` for a batch
//! handed after a frame proves that frame arrived and took effect. (A batch answered again from
//! a stored answer needs no commit: a mark proved by one is lost if the allocator dies before
//! its next group, which costs an award offered to its user again, as before this existed.)

use std::collections::VecDeque;

/// Appends `ids` to a queue bounded at `max`, dropping its oldest: how many were dropped.
pub(crate) fn push_bounded(
    queue: &mut VecDeque<u64>,
    ids: impl IntoIterator<Item = u64>,
    max: usize,
) -> u64 {
    queue.extend(ids);
    let over = queue.len().saturating_sub(max);
    queue.drain(..over);
    over as u64
}

/// Ids handed to the link in turn, at most `max` kept (the oldest forgotten first).
#[derive(Debug)]
struct Kept {
    ids: VecDeque<u64>,
    /// How many were ever pushed on this link: the position after the newest.
    pushed: u64,
    max: usize,
}

impl Kept {
    fn new(max: usize) -> Self {
        Self { ids: VecDeque::new(), pushed: 0, max }
    }

    fn push(&mut self, ids: &[u64]) {
        self.pushed += ids.len() as u64;
        push_bounded(&mut self.ids, ids.iter().copied(), self.max);
    }

    /// Forgets every id pushed before position `position`.
    fn forget_before(&mut self, position: u64) {
        let first = self.pushed - self.ids.len() as u64;
        let n = position.saturating_sub(first).min(self.ids.len() as u64) as usize;
        self.ids.drain(..n);
    }

    fn take(&mut self) -> VecDeque<u64> {
        self.pushed = 0;
        std::mem::take(&mut self.ids)
    }
}

/// Where the link stood when acks or asks were handed: the newest batch handed before them, and
/// the positions after them.
#[derive(Debug, Clone, Copy)]
struct Checkpoint {
    batch_seq: u64,
    acks: u64,
    wanted: u64,
}

/// What the current link was handed and has not proved it has.
#[derive(Debug)]
pub struct HandedToLink {
    acks: Kept,
    wanted: Kept,
    /// The newest batch handed on this link (batches go in sequence order on a link).
    batch_seq: u64,
    /// Oldest first; at most one per batch handed on the link that is not yet answered, plus one.
    checkpoints: VecDeque<Checkpoint>,
}

impl HandedToLink {
    /// Keeps at most `max_acks` acks and `max_wanted` asks.
    pub fn new(max_acks: usize, max_wanted: usize) -> Self {
        Self {
            acks: Kept::new(max_acks),
            wanted: Kept::new(max_wanted),
            batch_seq: 0,
            checkpoints: VecDeque::new(),
        }
    }

    /// Batch `seq` was handed to the link.
    pub fn batch(&mut self, seq: u64) {
        self.batch_seq = seq;
    }

    /// These acks were handed to the link.
    pub fn acks(&mut self, ids: &[u64]) {
        self.acks.push(ids);
        self.checkpoint();
    }

    /// These asks were handed to the link.
    pub fn wanted(&mut self, ids: &[u64]) {
        self.wanted.push(ids);
        self.checkpoint();
    }

    fn checkpoint(&mut self) {
        let here = Checkpoint {
            batch_seq: self.batch_seq,
            acks: self.acks.pushed,
            wanted: self.wanted.pushed,
        };
        match self.checkpoints.back_mut() {
            // No batch handed since the last: it moves on.
            Some(last) if last.batch_seq == here.batch_seq => *last = here,
            _ => self.checkpoints.push_back(here),
        }
    }

    /// The link answered batch `seq`: what was handed before it arrived.
    pub fn answered(&mut self, seq: u64) {
        let mut proven = None;
        while let Some(first) = self.checkpoints.front().copied() {
            if first.batch_seq >= seq {
                break;
            }
            proven = Some(first);
            self.checkpoints.pop_front();
        }
        if let Some(proven) = proven {
            self.acks.forget_before(proven.acks);
            self.wanted.forget_before(proven.wanted);
        }
    }

    /// A new link: what the last one never proved it has (acks, asks; oldest first), to send
    /// again.
    pub fn take_unproven(&mut self) -> (VecDeque<u64>, VecDeque<u64>) {
        self.batch_seq = 0;
        self.checkpoints.clear();
        (self.acks.take(), self.wanted.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_for_a_batch_handed_after_proves_what_came_before_it() {
        let mut handed = HandedToLink::new(100, 100);
        handed.acks(&[1, 2]);
        handed.batch(5);
        handed.wanted(&[70]);
        handed.acks(&[3]);
        handed.batch(6);
        // Batch 5 was handed after acks 1 and 2, before ask 70 and ack 3.
        handed.answered(5);
        let (acks, wanted) = handed.take_unproven();
        assert_eq!((Vec::from(acks), Vec::from(wanted)), (vec![3], vec![70]));
    }

    #[test]
    fn results_for_earlier_batches_prove_nothing_and_the_kept_are_bounded() {
        let mut handed = HandedToLink::new(3, 1);
        handed.batch(5);
        handed.acks(&[1, 2, 3, 4]);
        handed.wanted(&[70, 71]);
        handed.answered(5);
        handed.answered(4);
        let (acks, wanted) = handed.take_unproven();
        assert_eq!((Vec::from(acks), Vec::from(wanted)), (vec![2, 3, 4], vec![71]));
        // A new link starts afresh: a result there proves what was handed there.
        handed.acks(&[9]);
        handed.batch(1);
        handed.answered(1);
        let (acks, wanted) = handed.take_unproven();
        assert!(acks.is_empty() && wanted.is_empty());
    }
}
