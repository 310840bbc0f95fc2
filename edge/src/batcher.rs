//! One worker's batches, sans-IO: admitted shakes are written straight into the next `Batch`
//! frame; a batch is flushed at a size, an age or a round change, whichever comes first;
//! flushed batches stay in flight until their `BatchResult` arrives, and are handed to the
//! uplink once per link (so a batch is sent once, and once more after each reconnect).
//!
//! Routing stays here, never on the wire: entry `i` of a batch was admitted for `routes[i]`, so
//! the allocator's winner indexes map back to phones. Route vectors are recycled, so after
//! warm-up a shake allocates nothing.
//!
//! Sequence numbers start at 1 for each worker instance (the uplink's random instance id names
//! the run), so no clock takes part in naming a batch. Each flushed batch keeps the digest of
//! its payload: an answer is matched to it by sequence *and* digest.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use shake_proto::{BatchDigest, BatchEntry, BatchWriter};

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
    digest: BatchDigest,
    round_id: u32,
    routes: Vec<R>,
    flushed_us: u64,
}

/// Why an admitted shake could not join a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Too many batches await answers: backpressure from the allocator.
    InFlight,
}

/// What an answer from the allocator turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer<R> {
    /// The answer to a batch in flight: its winners may be announced.
    Matched(Answered<R>),
    /// The sequence is in flight but the digest is another batch's: announce nothing. The
    /// batch is forgotten (its routes come back for reuse).
    Mismatch {
        /// The batch's routes, for [`Batcher::recycle`].
        routes: Vec<R>,
    },
    /// Not in flight (already answered, or never sent): ignore.
    Unknown,
}

/// A batch and its answer, matched.
#[derive(Debug, PartialEq, Eq)]
pub struct Answered<R> {
    /// The round every entry was admitted in.
    pub round_id: u32,
    /// Entry `i` was admitted for `routes[i]`.
    pub routes: Vec<R>,
    /// When it was flushed (monotonic µs).
    pub flushed_us: u64,
}

/// One worker's batches.
pub struct Batcher<R> {
    settings: BatchSettings,
    buf: BytesMut,
    open: Option<Open<R>>,
    next_seq: u64,
    in_flight: BTreeMap<u64, InFlight<R>>,
    /// Batches up to this sequence were handed out on link `sent_link`.
    sent_through: u64,
    sent_link: u64,
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
    /// A batcher whose first batch is sequence 1.
    pub fn new(settings: BatchSettings) -> Self {
        let max_entries = settings.max_entries.clamp(1, shake_proto::limits::MAX_BATCH_ENTRIES);
        let settings = BatchSettings { max_entries, ..settings };
        Self {
            settings,
            buf: BytesMut::with_capacity(max_entries * 8 + 64),
            open: None,
            next_seq: 1,
            in_flight: BTreeMap::new(),
            sent_through: 0,
            sent_link: 0,
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

    /// Adds one admitted shake. A batch filled (or closed by a round change) joins the ones in
    /// flight and waits for [`Batcher::next_unsent`]; `Err` means this shake could not join
    /// (too many batches await answers), never that a batch was lost.
    #[inline]
    pub fn push(
        &mut self,
        round_id: u32,
        user_id: u64,
        route: R,
        now_us: u64,
        now_ms: u64,
    ) -> Result<(), Full> {
        if self.open.as_ref().is_some_and(|o| o.round_id != round_id) {
            // The open batch's round is closing: it goes now, whatever happens to this shake.
            self.flush(now_us);
        }
        let open = match &mut self.open {
            Some(open) => open,
            None => {
                if self.in_flight.len() >= self.settings.max_in_flight {
                    return Err(Full::InFlight);
                }
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
        // Clamped so that a full batch always fits one frame (a clock step inside a batch).
        let offset_us = u32::try_from(offset_us)
            .unwrap_or(u32::MAX)
            .min(shake_proto::limits::MAX_ENTRY_OFFSET_US);
        open.writer.push(&mut self.buf, BatchEntry { user_id, offset_us });
        open.routes.push(route);
        if open.routes.len() >= self.settings.max_entries {
            self.flush(now_us);
        }
        Ok(())
    }

    /// When the open batch must be flushed by age (monotonic µs), if one is open.
    pub fn deadline_us(&self) -> Option<u64> {
        self.open.as_ref().map(|o| o.opened_us + self.settings.max_age_us)
    }

    /// Flushes the open batch if it is old enough. True if one was flushed.
    pub fn poll_age(&mut self, now_us: u64) -> bool {
        match self.deadline_us() {
            Some(deadline) if now_us >= deadline => self.flush(now_us),
            _ => false,
        }
    }

    /// Closes the open batch (if any): it joins the batches in flight. True if there was one.
    pub fn flush(&mut self, now_us: u64) -> bool {
        let Some(open) = self.open.take() else { return false };
        let finished = open.writer.finish(&mut self.buf);
        let frame = self.buf.split().freeze();
        let seq = self.next_seq - 1;
        let in_flight = InFlight {
            frame,
            digest: finished.digest,
            round_id: open.round_id,
            routes: open.routes,
            flushed_us: now_us,
        };
        self.in_flight.insert(seq, in_flight);
        true
    }

    /// The next batch not yet handed out on `link` (any number that changes with each new
    /// connection), oldest first; it counts as sent from now on.
    pub fn next_unsent(&mut self, link: u64) -> Option<(u64, Bytes)> {
        if link != self.sent_link {
            self.sent_link = link;
            self.sent_through = 0;
        }
        let (seq, batch) = self.in_flight.range(self.sent_through + 1..).next()?;
        self.sent_through = *seq;
        Some((*seq, batch.frame.clone()))
    }

    /// Whether [`Batcher::next_unsent`] would hand out a batch on `link`.
    pub fn has_unsent(&self, link: u64) -> bool {
        let from = if link == self.sent_link { self.sent_through + 1 } else { 0 };
        self.in_flight.range(from..).next().is_some()
    }

    /// An answer for batch `seq` whose batch digested to `digest`.
    pub fn on_result(&mut self, seq: u64, digest: BatchDigest) -> Answer<R> {
        match self.in_flight.get(&seq) {
            None => Answer::Unknown,
            Some(batch) if batch.digest != digest => {
                let batch = self.in_flight.remove(&seq).expect("just found");
                Answer::Mismatch { routes: batch.routes }
            }
            Some(_) => {
                let batch = self.in_flight.remove(&seq).expect("just found");
                Answer::Matched(Answered {
                    round_id: batch.round_id,
                    routes: batch.routes,
                    flushed_us: batch.flushed_us,
                })
            }
        }
    }

    /// Gives a route vector back for reuse.
    pub fn recycle(&mut self, mut routes: Vec<R>) {
        routes.clear();
        if self.spare_routes.len() < self.settings.max_in_flight + 1 {
            self.spare_routes.push(routes);
        }
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

    fn decode(frame: &Bytes) -> shake_proto::Batch {
        match AllocatorFrame::decode(&mut BytesMut::from(&frame[..])) {
            Ok(Some(AllocatorFrame::Batch(batch))) => batch,
            other => panic!("not a batch: {other:?}"),
        }
    }

    /// Flushes and hands out everything on link 1; the batches' decoded forms.
    fn sent(b: &mut Batcher<u32>) -> Vec<shake_proto::Batch> {
        std::iter::from_fn(|| b.next_unsent(1)).map(|(_, frame)| decode(&frame)).collect()
    }

    /// A full batch of the largest user ids, with the wall clock stepped forward two hours
    /// inside it, fits one frame: before, its offsets took 8 bytes each, the frame was over
    /// the allocator's limit (refused, resent for ever) and this decode failed.
    #[test]
    fn the_largest_batch_fits_one_frame_whatever_the_clock_does() {
        use shake_proto::limits::{MAX_BATCH_ENTRIES, MAX_ENTRY_OFFSET_US};
        let settings =
            BatchSettings { max_entries: MAX_BATCH_ENTRIES, max_age_us: 2_000, max_in_flight: 2 };
        let mut b: Batcher<u32> = Batcher::new(settings);
        let largest_user = (1u64 << 62) - 1;
        let now_ms = 1_765_000_000_000; // Unix milliseconds: an 8-byte base time
        b.push(1, largest_user, 0, 0, now_ms).unwrap();
        for i in 1..MAX_BATCH_ENTRIES {
            b.push(1, largest_user, i as u32, 0, now_ms + 7_200_000).unwrap();
        }
        let batches = sent(&mut b);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].len(), MAX_BATCH_ENTRIES);
        assert!(batches[0].entries().skip(1).all(|e| e.offset_us == MAX_ENTRY_OFFSET_US));
    }

    #[test]
    fn flush_by_size_then_by_age_from_sequence_one() {
        let mut b: Batcher<u32> = Batcher::new(settings());
        for i in 0..4 {
            assert_eq!(b.push(1, 10 + i as u64, i, 0, 5_000), Ok(()));
        }
        let batches = sent(&mut b);
        assert_eq!(batches.len(), 1, "full at 4");
        assert_eq!((batches[0].seq, batches[0].round_id, batches[0].len()), (1, 1, 4));
        let users: Vec<u64> = batches[0].entries().map(|e| e.user_id).collect();
        assert_eq!(users, vec![10, 11, 12, 13]);
        // A new batch, flushed by age 2 ms after its first entry.
        assert_eq!(b.push(1, 20, 4, 1_000, 5_001), Ok(()));
        assert_eq!(b.deadline_us(), Some(3_000));
        assert!(!b.poll_age(2_999));
        assert!(b.poll_age(3_000));
        assert_eq!(sent(&mut b).iter().map(|b| b.seq).collect::<Vec<_>>(), vec![2]);
        assert_eq!(b.deadline_us(), None);
    }

    #[test]
    fn in_flight_is_bounded_and_results_route_back_by_sequence_and_digest() {
        let mut b: Batcher<u32> = Batcher::new(settings());
        b.push(1, 1, 7, 0, 0).unwrap();
        b.flush(0);
        b.push(1, 2, 8, 0, 0).unwrap();
        b.push(1, 3, 9, 0, 0).unwrap();
        b.flush(5);
        assert_eq!(b.in_flight(), 2);
        assert_eq!(b.push(1, 4, 10, 0, 0), Err(Full::InFlight));
        assert_eq!(b.highest_answered(), 0);
        let batches = sent(&mut b);
        // Batch 2 answered first: routes come back in entry order.
        assert_eq!(
            b.on_result(2, batches[1].digest()),
            Answer::Matched(Answered { round_id: 1, routes: vec![8, 9], flushed_us: 5 })
        );
        assert_eq!(b.on_result(2, batches[1].digest()), Answer::Unknown, "a duplicate answer");
        assert_eq!(b.highest_answered(), 0, "batch 1 still waits");
        // An answer naming batch 1 with batch 2's digest is another batch's answer.
        assert_eq!(b.on_result(1, batches[1].digest()), Answer::Mismatch { routes: vec![7] });
        assert_eq!(b.in_flight(), 0);
        assert_eq!(b.highest_answered(), 2);
        assert!(b.push(1, 4, 10, 0, 0).is_ok());
        assert_eq!(b.highest_answered(), 2, "the open batch is not answered");
    }

    #[test]
    fn a_round_change_flushes_the_previous_batch() {
        let mut b: Batcher<u32> = Batcher::new(settings());
        b.push(1, 1, 0, 0, 0).unwrap();
        b.push(2, 2, 1, 0, 0).unwrap();
        b.flush(0);
        let rounds: Vec<u32> = sent(&mut b).iter().map(|b| b.round_id).collect();
        assert_eq!(rounds, vec![1, 2]);
    }

    #[test]
    fn a_round_change_at_the_in_flight_limit_still_sends_the_open_batch() {
        // max_in_flight 1: flushing the open round-1 batch reaches the limit, so the round-2
        // shake is refused, and the round-1 batch must still go out now (before the fix it
        // was moved in flight but never handed to the uplink until the next reconnect).
        let mut b: Batcher<u32> =
            Batcher::new(BatchSettings { max_entries: 4, max_age_us: 2_000, max_in_flight: 1 });
        b.push(1, 1, 0, 0, 0).unwrap();
        assert_eq!(b.push(2, 3, 2, 0, 0), Err(Full::InFlight));
        assert_eq!(b.open_len(), 0);
        let batches = sent(&mut b);
        assert_eq!(batches.iter().map(|b| (b.seq, b.round_id)).collect::<Vec<_>>(), vec![(1, 1)]);
    }

    #[test]
    fn each_batch_is_handed_out_once_per_link() {
        let mut b: Batcher<u32> = Batcher::new(settings());
        b.push(1, 1, 0, 0, 0).unwrap();
        b.flush(0);
        let first = b.next_unsent(1).unwrap();
        assert_eq!(b.next_unsent(1), None, "sent once on link 1");
        b.push(1, 2, 1, 0, 0).unwrap();
        b.flush(0);
        assert_eq!(b.next_unsent(1).map(|(seq, _)| seq), Some(2));
        // A new link: both unanswered batches again, oldest first, with their original bytes.
        assert_eq!(b.next_unsent(2), Some(first));
        assert_eq!(b.next_unsent(2).map(|(seq, _)| seq), Some(2));
        assert_eq!(b.next_unsent(2), None);
    }
}
