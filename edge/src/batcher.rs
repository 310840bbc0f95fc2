//! One worker's batches, sans-IO: admitted shakes are written straight into the next `Batch`
//! frame; a batch is flushed at a size or an age, whichever comes first; flushed batches stay
//! in flight (kept for resending) until their `BatchResult` arrives.
//!
//! Routing stays here, never on the wire: entry `i` of a batch was admitted for `routes[i]`, so
//! the allocator's winner indexes map back to phones. Route vectors are recycled, so after
//! warm-up a shake allocates nothing.
//!
//! Sequence numbers start at the worker's start time in Unix microseconds and go up by one per
//! batch, so a restarted edge never reuses one (the allocator would replay an old answer).

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use shake_proto::{BatchEntry, BatchWriter};

/// Limits from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// Flush at this many entries.
    pub max_entries: usize,
    /// Flush when the oldest entry is this old, microseconds.
    pub max_age_us: u64,
    /// Most batches awaiting an answer; when full, admitted shakes get a local verdict.
    pub max_in_flight: usize,
}

struct Open<R> {
    writer: BatchWriter,
    round_id: u32,
    base_time_ms: u64,
    opened_us: u64,
    routes: Vec<R>,
}

struct InFlight<R> {
    frame: Bytes,
    round_id: u32,
    routes: Vec<R>,
}

/// A batch just closed: its frame, ready to send, and what the caller needs to know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flushed {
    /// Its sequence number.
    pub seq: u64,
    /// Entries in it.
    pub entries: usize,
    /// The encoded `Batch` frame.
    pub frame: Bytes,
}

/// Why an admitted shake could not join a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Too many batches await answers: backpressure from the allocator.
    InFlight,
}

/// One worker's batches.
pub struct Batcher<R> {
    settings: BatchSettings,
    buf: BytesMut,
    open: Option<Open<R>>,
    next_seq: u64,
    in_flight: BTreeMap<u64, InFlight<R>>,
    spare_routes: Vec<Vec<R>>,
}

impl<R> std::fmt::Debug for Batcher<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("next_seq", &self.next_seq)
            .field("in_flight", &self.in_flight.len())
            .field("open", &self.open.as_ref().map(|o| o.routes.len()))
            .finish()
    }
}

impl<R: Copy> Batcher<R> {
    /// A batcher whose first sequence number is `first_seq` (the start time in Unix µs).
    pub fn new(settings: BatchSettings, first_seq: u64) -> Self {
        let max_entries = settings.max_entries.clamp(1, shake_proto::limits::MAX_BATCH_ENTRIES);
        let settings = BatchSettings { max_entries, ..settings };
        Self {
            settings,
            buf: BytesMut::with_capacity(max_entries * 8 + 64),
            open: None,
            next_seq: first_seq.max(1),
            in_flight: BTreeMap::new(),
            spare_routes: Vec::new(),
        }
    }

    /// Batches awaiting an answer.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Entries in the open batch.
    pub fn open_len(&self) -> usize {
        self.open.as_ref().map_or(0, |o| o.routes.len())
    }

    /// Whether another shake can be admitted now.
    pub fn has_room(&self) -> bool {
        self.in_flight.len() < self.settings.max_in_flight
            || self.open.as_ref().is_some_and(|o| o.routes.len() + 1 < self.settings.max_entries)
    }

    /// Adds one admitted shake. Returns a batch frame to send if this filled it (or if the
    /// round changed and the previous batch had to go first).
    #[inline]
    pub fn push(
        &mut self,
        round_id: u32,
        user_id: u64,
        route: R,
        now_us: u64,
        now_ms: u64,
    ) -> Result<Option<Flushed>, Full> {
        if !self.has_room() {
            return Err(Full::InFlight);
        }
        let mut flushed = None;
        if self.open.as_ref().is_some_and(|o| o.round_id != round_id) {
            flushed = self.flush();
            if self.in_flight.len() >= self.settings.max_in_flight {
                return Err(Full::InFlight);
            }
        }
        let open = match &mut self.open {
            Some(open) => open,
            None => {
                let seq = self.next_seq;
                self.next_seq += 1;
                let writer = BatchWriter::begin(&mut self.buf, seq, round_id, now_ms);
                let routes = self
                    .spare_routes
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(self.settings.max_entries));
                self.open.insert(Open {
                    writer,
                    round_id,
                    base_time_ms: now_ms,
                    opened_us: now_us,
                    routes,
                })
            }
        };
        let offset_us = now_ms.saturating_sub(open.base_time_ms).saturating_mul(1000);
        let offset_us = u32::try_from(offset_us).unwrap_or(u32::MAX);
        open.writer.push(&mut self.buf, BatchEntry { user_id, offset_us });
        open.routes.push(route);
        if open.routes.len() >= self.settings.max_entries {
            // invariant: flushed is None here unless the round changed, and then the new batch
            // holds one entry, which is below any max_entries > 1.
            return Ok(self.flush().or(flushed));
        }
        Ok(flushed)
    }

    /// When the open batch must be flushed by age (monotonic µs), if one is open.
    pub fn deadline_us(&self) -> Option<u64> {
        self.open.as_ref().map(|o| o.opened_us + self.settings.max_age_us)
    }

    /// Flushes the open batch if it is old enough.
    pub fn poll_age(&mut self, now_us: u64) -> Option<Flushed> {
        match self.deadline_us() {
            Some(deadline) if now_us >= deadline => self.flush(),
            _ => None,
        }
    }

    /// Closes the open batch (if any) and returns it.
    pub fn flush(&mut self) -> Option<Flushed> {
        let open = self.open.take()?;
        open.writer.finish(&mut self.buf);
        let frame = self.buf.split().freeze();
        let seq = self.next_seq - 1;
        let entries = open.routes.len();
        let in_flight =
            InFlight { frame: frame.clone(), round_id: open.round_id, routes: open.routes };
        self.in_flight.insert(seq, in_flight);
        Some(Flushed { seq, entries, frame })
    }

    /// The answer to batch `seq` arrived: its round and the routes of its entries, to map
    /// winners to phones. `None` for a batch not in flight (a duplicate answer is ignored).
    pub fn on_result(&mut self, seq: u64) -> Option<(u32, Vec<R>)> {
        self.in_flight.remove(&seq).map(|f| (f.round_id, f.routes))
    }

    /// Gives a route vector back for reuse.
    pub fn recycle(&mut self, mut routes: Vec<R>) {
        routes.clear();
        if self.spare_routes.len() < self.settings.max_in_flight + 1 {
            self.spare_routes.push(routes);
        }
    }

    /// Every batch still awaiting its answer, oldest first, to resend after a reconnect.
    pub fn unanswered(&self) -> impl Iterator<Item = &Bytes> {
        self.in_flight.values().map(|f| &f.frame)
    }

    /// Every batch up to this sequence number has its answer.
    pub fn highest_answered(&self) -> u64 {
        let next_unanswered = self.in_flight.keys().next().copied().unwrap_or(self.next_seq);
        let open_seq = if self.open.is_some() { self.next_seq - 1 } else { self.next_seq };
        next_unanswered.min(open_seq).saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use shake_proto::AllocatorFrame;

    fn settings() -> BatchSettings {
        BatchSettings { max_entries: 4, max_age_us: 2_000, max_in_flight: 2 }
    }

    fn decode(flushed: &Flushed) -> shake_proto::Batch {
        match AllocatorFrame::decode(&mut BytesMut::from(&flushed.frame[..])) {
            Ok(Some(AllocatorFrame::Batch(batch))) => batch,
            other => panic!("not a batch: {other:?}"),
        }
    }

    #[test]
    fn flush_by_size_then_by_age() {
        let mut b: Batcher<u32> = Batcher::new(settings(), 100);
        for i in 0..3 {
            assert_eq!(b.push(1, 10 + i as u64, i, 0, 5_000), Ok(None));
        }
        let flushed = b.push(1, 13, 3, 10, 5_000).unwrap().expect("full at 4");
        assert_eq!((flushed.seq, flushed.entries), (100, 4));
        let batch = decode(&flushed);
        assert_eq!((batch.seq, batch.round_id, batch.len()), (100, 1, 4));
        assert_eq!(batch.entries().map(|e| e.user_id).collect::<Vec<_>>(), vec![10, 11, 12, 13]);
        // A new batch, flushed by age 2 ms after its first entry.
        assert_eq!(b.push(1, 20, 4, 1_000, 5_001), Ok(None));
        assert_eq!(b.deadline_us(), Some(3_000));
        assert_eq!(b.poll_age(2_999), None);
        let flushed = b.poll_age(3_000).expect("old enough");
        assert_eq!(decode(&flushed).seq, 101);
        assert_eq!(b.deadline_us(), None);
    }

    #[test]
    fn in_flight_is_bounded_and_results_route_back() {
        let mut b: Batcher<u32> = Batcher::new(settings(), 1);
        b.push(1, 1, 7, 0, 0).unwrap();
        b.flush().unwrap();
        b.push(1, 2, 8, 0, 0).unwrap();
        b.push(1, 3, 9, 0, 0).unwrap();
        b.flush().unwrap();
        assert_eq!(b.in_flight(), 2);
        assert_eq!(b.push(1, 4, 10, 0, 0), Err(Full::InFlight));
        assert_eq!(b.highest_answered(), 0);
        // Batch 2 answered first: routes come back in entry order.
        assert_eq!(b.on_result(2), Some((1, vec![8, 9])));
        assert_eq!(b.on_result(2), None, "a duplicate answer is ignored");
        assert_eq!(b.highest_answered(), 0, "batch 1 still waits");
        assert_eq!(b.unanswered().count(), 1);
        assert_eq!(b.on_result(1), Some((1, vec![7])));
        assert_eq!(b.highest_answered(), 2);
        assert!(b.push(1, 4, 10, 0, 0).is_ok());
        assert_eq!(b.highest_answered(), 2, "the open batch is not answered");
    }

    #[test]
    fn a_round_change_flushes_the_previous_batch() {
        let mut b: Batcher<u32> = Batcher::new(settings(), 1);
        b.push(1, 1, 0, 0, 0).unwrap();
        let flushed = b.push(2, 2, 1, 0, 0).unwrap().expect("round 1 batch flushed");
        assert_eq!(decode(&flushed).round_id, 1);
        assert_eq!(decode(&b.flush().unwrap()).round_id, 2);
    }

    #[test]
    fn resend_bytes_are_the_original_bytes() {
        let mut b: Batcher<u32> = Batcher::new(settings(), 1);
        b.push(1, 1, 0, 0, 0).unwrap();
        let sent = b.flush().unwrap();
        assert_eq!(b.unanswered().next(), Some(&sent.frame));
    }
}
