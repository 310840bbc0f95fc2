//! Which awards this edge announced, and to whom: an `AwardAck` is accepted only for an award
//! the edge sent to the acknowledging phone's user and that is not acknowledged yet. Anything
//! else (another user's award, an id never sent, a second ack) is refused and counted, so a
//! phone acking every id can neither mark other users' awards delivered nor grow any queue.
//!
//! One book per edge, shared by its workers behind a mutex: a phone may acknowledge on a new
//! connection that landed on another worker. Awards are rare next to shakes (the allocator
//! grants at most tens of thousands a second across the fleet), and the shake path never
//! touches the book. It holds at most `capacity` awards; past that, or after `ttl_ms`, the
//! oldest entries go (their awards stay undelivered in the ledger, which is the safe side).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

shake_ops::label_values! {
    /// The outcome of one `AwardAck` (also `shake_edge_award_acks_total{outcome}`).
    pub enum AckVerdict {
        /// This award was sent to this user and is now acknowledged: report it delivered.
        Accepted => "accepted",
        /// No such award is outstanding here (never sent, already acknowledged, or expired).
        Unknown => "unknown_award",
        /// The award was sent to another user.
        WrongUser => "wrong_user",
    }
}

#[derive(Debug, Default)]
struct Book {
    /// Award id -> (user id, when sent).
    outstanding: HashMap<u64, (u64, u64)>,
    /// Award ids in the order they were sent (some may be acknowledged already).
    order: VecDeque<(u64, u64)>,
}

/// The edge's outstanding awards.
#[derive(Debug)]
pub struct AwardBook {
    capacity: usize,
    ttl_ms: u64,
    book: Mutex<Book>,
}

impl AwardBook {
    /// A book holding at most `capacity` awards, each for at most `ttl_ms`.
    pub fn new(capacity: usize, ttl_ms: u64) -> Self {
        Self { capacity: capacity.max(1), ttl_ms, book: Mutex::new(Book::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        // A panic while holding the lock cannot leave the book inconsistent in a way that pays
        // anyone: at worst an ack is refused. Keep going.
        self.book.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The edge sent award `award_id` to a phone of `user_id` at `now_ms`.
    pub fn sent(&self, award_id: u64, user_id: u64, now_ms: u64) {
        let mut book = self.lock();
        book.outstanding.insert(award_id, (user_id, now_ms));
        book.order.push_back((award_id, now_ms));
        self.expire(&mut book, now_ms);
    }

    /// A phone of `user_id` acknowledged `award_id` at `now_ms`.
    pub fn ack(&self, award_id: u64, user_id: u64, now_ms: u64) -> AckVerdict {
        let mut book = self.lock();
        self.expire(&mut book, now_ms);
        match book.outstanding.get(&award_id) {
            None => AckVerdict::Unknown,
            Some((owner, _)) if *owner != user_id => AckVerdict::WrongUser,
            Some(_) => {
                book.outstanding.remove(&award_id);
                AckVerdict::Accepted
            }
        }
    }

    /// Awards sent and not yet acknowledged.
    pub fn outstanding(&self) -> usize {
        self.lock().outstanding.len()
    }

    fn expire(&self, book: &mut Book, now_ms: u64) {
        while let Some(&(award_id, sent_ms)) = book.order.front() {
            let too_many = book.outstanding.len() > self.capacity;
            let too_old = now_ms.saturating_sub(sent_ms) > self.ttl_ms;
            if !too_many && !too_old {
                break;
            }
            book.order.pop_front();
            // Only if this entry is the current one for that id (a resend re-inserts it).
            if book.outstanding.get(&award_id).is_some_and(|(_, at)| *at == sent_ms) {
                book.outstanding.remove(&award_id);
            }
        }
        // Acknowledged ids leave `outstanding` at once but stay in `order` until they reach
        // the front; never let `order` grow past twice the capacity because of them.
        if book.order.len() > 2 * self.capacity {
            let live: VecDeque<(u64, u64)> = book
                .order
                .iter()
                .copied()
                .filter(|(id, at)| book.outstanding.get(id).is_some_and(|(_, t)| t == at))
                .collect();
            book.order = live;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_winner_acknowledges_and_only_once() {
        let book = AwardBook::new(16, 60_000);
        book.sent(77, 1, 0);
        assert_eq!(book.ack(77, 2, 1), AckVerdict::WrongUser);
        assert_eq!(book.ack(78, 1, 1), AckVerdict::Unknown);
        assert_eq!(book.ack(77, 1, 2), AckVerdict::Accepted);
        assert_eq!(book.ack(77, 1, 3), AckVerdict::Unknown, "a second ack");
        assert_eq!(book.outstanding(), 0);
    }

    #[test]
    fn the_book_is_bounded_by_count_and_age() {
        let book = AwardBook::new(4, 1_000);
        for id in 0..10 {
            book.sent(id, id, 0);
        }
        assert_eq!(book.outstanding(), 4);
        assert_eq!(book.ack(0, 0, 0), AckVerdict::Unknown, "the oldest went first");
        assert_eq!(book.ack(9, 9, 0), AckVerdict::Accepted);
        assert_eq!(book.ack(8, 8, 1_001), AckVerdict::Unknown, "expired");
        // A flood of acknowledged awards never grows the order queue past its bound.
        for id in 100..10_000 {
            book.sent(id, 1, 2_000);
            book.ack(id, 1, 2_000);
        }
        assert!(book.lock().order.len() <= 8);
    }
}
