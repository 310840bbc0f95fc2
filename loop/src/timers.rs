//! Every connection's next deadline in one structure per loop: a min-heap with lazy deletion.
//!
//! A connection's `poll_timeout` moves after almost every call, so each move pushes a new entry
//! and the old one stays behind, stale. An entry is live only if it matches the deadline the
//! connection currently has ([`Timers::set`] records it). Stale entries are skipped when they
//! reach the top, and the heap is rebuilt from the live deadlines whenever stale entries
//! outnumber live ones (paced phones leave about one stale entry per packet; without the purge
//! the heap grows by thousands a second).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// What a deadline belongs to (a connection's index in the loop's table).
pub type Key = usize;

/// The deadlines of one loop.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Key)>>,
    /// The current deadline of each key, by index (`None`: no timer).
    current: Vec<Option<Instant>>,
    live: usize,
}

impl Timers {
    /// Sets (or moves, or with `None` clears) `key`'s deadline.
    pub fn set(&mut self, key: Key, deadline: Option<Instant>) {
        if key >= self.current.len() {
            self.current.resize(key + 1, None);
        }
        let old = std::mem::replace(&mut self.current[key], deadline);
        if old == deadline {
            return;
        }
        match (old.is_some(), deadline) {
            (false, Some(_)) => self.live += 1,
            (true, None) => self.live -= 1,
            _ => {}
        }
        if let Some(at) = deadline {
            self.heap.push(Reverse((at, key)));
        }
        if self.heap.len() > 2 * self.live + 64 {
            self.rebuild();
        }
    }

    /// The earliest live deadline.
    pub fn earliest(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, key))) = self.heap.peek().copied() {
            if self.current[key] == Some(at) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// The next key whose deadline is at or before `now` (its timer is cleared), if any.
    pub fn pop_expired(&mut self, now: Instant) -> Option<Key> {
        loop {
            let Reverse((at, key)) = self.heap.peek().copied()?;
            if self.current[key] != Some(at) {
                self.heap.pop();
                continue;
            }
            if at > now {
                return None;
            }
            self.heap.pop();
            self.current[key] = None;
            self.live -= 1;
            return Some(key);
        }
    }

    /// Live deadlines.
    pub fn len(&self) -> usize {
        self.live
    }

    /// No live deadline.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Entries in the heap, stale ones included (for the bound's test).
    pub fn heap_len(&self) -> usize {
        self.heap.len()
    }

    fn rebuild(&mut self) {
        let live =
            self.current.iter().enumerate().filter_map(|(key, at)| at.map(|at| Reverse((at, key))));
        self.heap = live.collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn deadlines_come_out_in_order_and_moved_ones_only_once() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut timers = Timers::default();
        timers.set(0, Some(ms(30)));
        timers.set(1, Some(ms(10)));
        timers.set(2, Some(ms(20)));
        timers.set(1, Some(ms(40))); // moved: its 10 ms entry is stale
        timers.set(2, None); // cleared
        assert_eq!(timers.len(), 2);
        assert_eq!(timers.earliest(), Some(ms(30)));
        assert_eq!(timers.pop_expired(ms(29)), None);
        assert_eq!(timers.pop_expired(ms(50)), Some(0));
        assert_eq!(timers.pop_expired(ms(50)), Some(1));
        assert_eq!(timers.pop_expired(ms(50)), None);
        assert!(timers.is_empty());
    }

    #[test]
    fn stale_entries_are_purged() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        for key in 0..100 {
            timers.set(key, Some(t0));
        }
        // Every connection moves its deadline 1,000 times, as paced phones do.
        for round in 1..1_000u64 {
            for key in 0..100 {
                timers.set(key, Some(t0 + Duration::from_micros(round)));
            }
        }
        assert_eq!(timers.len(), 100);
        assert!(timers.heap_len() <= 2 * 100 + 64, "heap {}", timers.heap_len());
    }
}
