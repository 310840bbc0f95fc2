//! One worker's link to the allocator, sans-IO: what to write next on the worker's stream, and
//! what an answer from the allocator means. The I/O shell opens the stream, calls
//! [`Uplink::link_up`], writes whatever [`Uplink::poll_transmit`] hands out, and feeds answers
//! back through [`Uplink::on_result`].
//!
//! Nothing here is an unbounded queue: batches live in the [`Batcher`] (at most
//! `max_in_flight`, each handed out once per link, so after an outage each unanswered batch is
//! sent exactly once more); the load report is only the latest one; acknowledgements are
//! bounded by [`MAX_QUEUED_ACKS`] (over it, the oldest are dropped and counted: their awards
//! stay undelivered in the ledger, never paid twice).
//!
//! Acknowledgements and award asks are not answered: one handed to a link that then fails (an
//! allocator paused or gone, a standby that says `NOT_LEADER` once the link is up) may never
//! have arrived. Those a link was handed and has not proved it has ([`HandedToLink`]) are sent
//! again on the next one: a delivery mark twice is harmless, and an ask twice sends a phone an
//! award it keeps once (PROTOCOL.md).
//!
//! On each new link the first frame is `EdgeHello` with this worker's instance id (drawn at
//! random when the worker starts; batch sequences count from 1 within it) and the highest
//! answered sequence; after that, `ResultsReceived` each time that mark advances, so the
//! allocator can forget answers the edge holds.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use shake_proto::allocator::PROTOCOL_VERSION;
use shake_proto::limits::{MAX_DELIVERED_IDS, MAX_WANTED_USERS};
use shake_proto::{AllocatorFrame, BatchDigest, VerdictCounts};

use crate::admission::LoadCounts;
use crate::batcher::{Answer, BatchSettings, Batcher};
use crate::handed_to_link::{HandedToLink, push_bounded};

/// Acknowledgements waiting for the link, at most.
pub const MAX_QUEUED_ACKS: usize = 65_536;
/// Users waiting to be asked about (`AwardsWanted`) on one worker, at most.
pub const MAX_QUEUED_WANTED: usize = 4_096;

/// What a worker tells the control room with each load report (`WorkerStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Phones with a session on the worker now.
    pub phones: u64,
    /// Answers over the window, by verdict.
    pub verdicts: VerdictCounts,
}

/// Who this worker is, to the allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerName {
    /// The edge (its certificate names it).
    pub edge_id: u64,
    /// The worker within the edge.
    pub worker_id: u16,
    /// This run of the worker (random, 62 bits).
    pub instance_id: u64,
}

impl WorkerName {
    /// A fresh instance id: 62 random bits (a QUIC varint holds 62).
    pub fn random_instance_id() -> u64 {
        rand::random::<u64>() >> 2
    }
}

/// One worker's uplink state.
#[derive(Debug)]
pub struct Uplink<R> {
    name: WorkerName,
    batcher: Batcher<R>,
    /// The current link's number; 0 while down.
    link: u64,
    links: u64,
    hello_due: bool,
    /// The answered mark last told to the allocator on this link.
    confirmed_sent: u64,
    load: Option<(LoadCounts, WorkerStats, u32)>,
    /// The `LoadReport` went; its `WorkerStats` goes next.
    stats_due: Option<WorkerStats>,
    acks: VecDeque<u64>,
    acks_dropped: u64,
    /// Users whose session started: the allocator is asked what it owes them.
    wanted: VecDeque<u64>,
    wanted_dropped: u64,
    /// Acks and asks handed to the current link that it has not proved it has.
    handed: HandedToLink,
    scratch: BytesMut,
}

impl<R: Copy> Uplink<R> {
    /// A worker's uplink, link down, no batches yet.
    pub fn new(name: WorkerName, batches: BatchSettings) -> Self {
        Self {
            name,
            batcher: Batcher::new(batches),
            link: 0,
            links: 0,
            hello_due: false,
            confirmed_sent: 0,
            load: None,
            stats_due: None,
            acks: VecDeque::new(),
            acks_dropped: 0,
            wanted: VecDeque::new(),
            wanted_dropped: 0,
            handed: HandedToLink::new(MAX_QUEUED_ACKS, MAX_QUEUED_WANTED),
            scratch: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// Who this worker is.
    pub fn name(&self) -> WorkerName {
        self.name
    }

    /// The batches.
    pub fn batcher(&mut self) -> &mut Batcher<R> {
        &mut self.batcher
    }

    /// When the open batch must be flushed by age (monotonic µs), if one is open.
    pub fn deadline_us(&self) -> Option<u64> {
        self.batcher.deadline_us()
    }

    /// Batches awaiting an answer.
    pub fn in_flight(&self) -> usize {
        self.batcher.in_flight()
    }

    /// A new stream to the allocator is open: everything unanswered goes again, after a fresh
    /// `EdgeHello`.
    pub fn link_up(&mut self) {
        self.links += 1;
        self.link = self.links;
        self.hello_due = true;
        // What the last link was handed and never proved it has goes first, then what queued
        // since.
        let (mut acks, mut wanted) = self.handed.take_unproven();
        self.acks_dropped +=
            push_bounded(&mut acks, std::mem::take(&mut self.acks), MAX_QUEUED_ACKS);
        self.acks = acks;
        let queued = std::mem::take(&mut self.wanted);
        self.wanted_dropped += push_bounded(&mut wanted, queued, MAX_QUEUED_WANTED);
        self.wanted = wanted;
    }

    /// The stream is gone.
    pub fn link_down(&mut self) {
        self.link = 0;
        self.hello_due = false;
    }

    /// True while a stream is open.
    pub fn is_up(&self) -> bool {
        self.link != 0
    }

    /// Links opened so far (the first is 1); each one after the first resent what was
    /// unanswered.
    pub fn links(&self) -> u64 {
        self.links
    }

    /// The latest load report (the counts over `window_ms`) and the worker's stats for the
    /// control room (replace ones not yet sent).
    pub fn queue_load(&mut self, load: LoadCounts, stats: WorkerStats, window_ms: u32) {
        self.load = Some((load, stats, window_ms));
    }

    /// A session of `user_id` started: ask the allocator for the awards it owes the user.
    /// Bounded: past [`MAX_QUEUED_WANTED`] the oldest ask is dropped (and counted).
    pub fn want_awards(&mut self, user_id: u64) {
        self.wanted_dropped += push_bounded(&mut self.wanted, [user_id], MAX_QUEUED_WANTED);
    }

    /// Asks for owed awards dropped because too many waited, since the last call.
    pub fn take_wanted_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.wanted_dropped)
    }

    /// A phone acknowledged an award (already checked against the award book).
    pub fn queue_ack(&mut self, award_id: u64) {
        self.acks_dropped += push_bounded(&mut self.acks, [award_id], MAX_QUEUED_ACKS);
    }

    /// Acknowledgements dropped because too many waited (the link was down a long time),
    /// since the last call.
    pub fn take_acks_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.acks_dropped)
    }

    /// Whether [`Uplink::poll_transmit`] has something now.
    pub fn has_output(&mut self) -> bool {
        self.is_up()
            && (self.hello_due
                || self.batcher.has_unsent(self.link)
                || self.batcher.highest_answered() > self.confirmed_sent
                || self.load.is_some()
                || self.stats_due.is_some()
                || !self.acks.is_empty())
    }

    /// The next frame to write on the current link; `None` when there is nothing (or no link).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if !self.is_up() {
            return None;
        }
        if self.hello_due {
            self.hello_due = false;
            self.confirmed_sent = self.batcher.highest_answered();
            return Some(self.encode(&AllocatorFrame::EdgeHello {
                edge_id: self.name.edge_id,
                worker_id: self.name.worker_id,
                protocol_version: PROTOCOL_VERSION,
                instance_id: self.name.instance_id,
                highest_answered_seq: self.confirmed_sent,
            }));
        }
        if let Some((seq, frame)) = self.batcher.next_unsent(self.link) {
            self.handed.batch(seq);
            return Some(frame);
        }
        let answered = self.batcher.highest_answered();
        if answered > self.confirmed_sent {
            self.confirmed_sent = answered;
            return Some(
                self.encode(&AllocatorFrame::ResultsReceived { highest_answered_seq: answered }),
            );
        }
        if let Some((load, stats, window_ms)) = self.load.take() {
            self.stats_due = Some(stats);
            return Some(self.encode(&AllocatorFrame::LoadReport {
                window_ms,
                offered: load.offered,
                admitted: load.admitted,
            }));
        }
        if let Some(stats) = self.stats_due.take() {
            return Some(self.encode(&AllocatorFrame::WorkerStats {
                phones: stats.phones,
                verdicts: stats.verdicts,
            }));
        }
        if !self.acks.is_empty() {
            let n = self.acks.len().min(MAX_DELIVERED_IDS);
            let award_ids: Vec<u64> = self.acks.drain(..n).collect();
            self.handed.acks(&award_ids);
            return Some(self.encode(&AllocatorFrame::AwardDelivered { award_ids }));
        }
        if !self.wanted.is_empty() {
            let n = self.wanted.len().min(MAX_WANTED_USERS);
            let user_ids: Vec<u64> = self.wanted.drain(..n).collect();
            self.handed.wanted(&user_ids);
            return Some(self.encode(&AllocatorFrame::AwardsWanted { user_ids }));
        }
        None
    }

    /// The allocator answered batch `seq`, naming the batch it answered by `digest`.
    pub fn on_result(&mut self, seq: u64, digest: BatchDigest) -> Answer<R> {
        self.handed.answered(seq);
        self.batcher.on_result(seq, digest)
    }

    fn encode(&mut self, frame: &AllocatorFrame) -> Bytes {
        frame.encode(&mut self.scratch);
        self.scratch.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uplink() -> Uplink<u32> {
        let name = WorkerName { edge_id: 3, worker_id: 1, instance_id: 99 };
        Uplink::new(name, BatchSettings { max_entries: 2, max_age_us: 1_000, max_in_flight: 8 })
    }

    fn drain(up: &mut Uplink<u32>) -> Vec<AllocatorFrame> {
        std::iter::from_fn(|| up.poll_transmit())
            .map(|b| AllocatorFrame::decode(&mut BytesMut::from(&b[..])).unwrap().unwrap())
            .collect()
    }

    fn batch(frame: &AllocatorFrame) -> &shake_proto::Batch {
        match frame {
            AllocatorFrame::Batch(b) => b,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hello_first_then_each_batch_once_then_once_more_after_a_reconnect() {
        let mut up = uplink();
        up.batcher().push(1, 10, 0, 0, 0).unwrap();
        up.batcher().push(1, 11, 1, 0, 0).unwrap();
        assert_eq!(up.poll_transmit(), None, "no link, nothing to write");
        up.link_up();
        let frames = drain(&mut up);
        assert!(matches!(
            frames[0],
            AllocatorFrame::EdgeHello { instance_id: 99, highest_answered_seq: 0, .. }
        ));
        assert_eq!(batch(&frames[1]).seq, 1);
        assert_eq!(frames.len(), 2);
        // The link drops before the answer; two more shakes fill batch 2 meanwhile.
        up.link_down();
        up.batcher().push(1, 12, 2, 0, 0).unwrap();
        up.batcher().push(1, 13, 3, 0, 0).unwrap();
        assert!(!up.has_output());
        up.link_up();
        let frames = drain(&mut up);
        let seqs: Vec<u64> = frames[1..].iter().map(|f| batch(f).seq).collect();
        assert_eq!(seqs, vec![1, 2], "each unanswered batch exactly once on the new link");
        assert_eq!(up.links(), 2);
    }

    /// A link that fails may have lost what it was handed: the acks and asks go again on the
    /// next link, before those queued since; the handed ones are bounded like the queues.
    #[test]
    fn acks_and_asks_handed_to_a_link_go_again_on_the_next() {
        let mut up = uplink();
        up.link_up();
        up.queue_ack(7);
        up.queue_ack(8);
        up.want_awards(70);
        let frames = drain(&mut up);
        assert_eq!(
            frames[1..],
            [
                AllocatorFrame::AwardDelivered { award_ids: vec![7, 8] },
                AllocatorFrame::AwardsWanted { user_ids: vec![70] }
            ]
        );
        up.link_down();
        up.queue_ack(9);
        up.link_up();
        let frames = drain(&mut up);
        assert_eq!(
            frames[1..],
            [
                AllocatorFrame::AwardDelivered { award_ids: vec![7, 8, 9] },
                AllocatorFrame::AwardsWanted { user_ids: vec![70] }
            ],
            "the last link's acks and asks again, then the new"
        );
        // A result for a batch handed after them proves they arrived: not sent again.
        up.batcher().push(1, 10, 0, 0, 0).unwrap();
        up.batcher().push(1, 11, 1, 0, 0).unwrap();
        let frames = drain(&mut up);
        let digest = batch(&frames[0]).digest();
        assert!(matches!(up.on_result(1, digest), Answer::Matched(_)));
        up.link_up();
        let frames = drain(&mut up);
        assert!(
            !frames.iter().any(|f| matches!(
                f,
                AllocatorFrame::AwardDelivered { .. } | AllocatorFrame::AwardsWanted { .. }
            )),
            "{frames:?}"
        );
        // Handed ones are kept up to the queue's bound, the oldest dropped first.
        for id in 0..(MAX_QUEUED_ACKS as u64 + 5) {
            up.queue_ack(1_000 + id);
            if id % MAX_DELIVERED_IDS as u64 == 0 {
                drain(&mut up);
            }
        }
        drain(&mut up);
        up.link_up();
        let again: Vec<u64> = drain(&mut up)
            .into_iter()
            .flat_map(|f| match f {
                AllocatorFrame::AwardDelivered { award_ids } => award_ids,
                _ => vec![],
            })
            .collect();
        assert_eq!(again.len(), MAX_QUEUED_ACKS);
        assert_eq!(again.last(), Some(&(1_000 + MAX_QUEUED_ACKS as u64 + 4)));
    }

    #[test]
    fn answers_advance_the_mark_and_results_received_says_so() {
        let mut up = uplink();
        up.link_up();
        up.batcher().push(1, 10, 0, 0, 0).unwrap();
        up.batcher().push(1, 11, 1, 0, 0).unwrap();
        let frames = drain(&mut up);
        let digest = batch(&frames[1]).digest();
        assert!(matches!(up.on_result(1, digest), Answer::Matched(_)));
        assert_eq!(
            drain(&mut up),
            vec![AllocatorFrame::ResultsReceived { highest_answered_seq: 1 }]
        );
        assert!(!up.has_output(), "the mark is sent once");
    }

    #[test]
    fn only_the_latest_load_report_and_bounded_acks() {
        let mut up = uplink();
        let stats = |phones| WorkerStats { phones, verdicts: VerdictCounts::default() };
        up.queue_load(LoadCounts { offered: 1, admitted: 1 }, stats(3), 1_000);
        up.queue_load(LoadCounts { offered: 5, admitted: 2 }, stats(4), 1_250);
        for id in 0..(MAX_QUEUED_ACKS as u64 + 10) {
            up.queue_ack(id);
        }
        assert_eq!(up.take_acks_dropped(), 10);
        assert_eq!(up.take_acks_dropped(), 0, "each drop is told once");
        up.link_up();
        let frames = drain(&mut up);
        let loads: Vec<_> =
            frames.iter().filter(|f| matches!(f, AllocatorFrame::LoadReport { .. })).collect();
        assert_eq!(
            loads,
            vec![&AllocatorFrame::LoadReport { window_ms: 1_250, offered: 5, admitted: 2 }]
        );
        let stats: Vec<_> =
            frames.iter().filter(|f| matches!(f, AllocatorFrame::WorkerStats { .. })).collect();
        assert_eq!(
            stats,
            vec![&AllocatorFrame::WorkerStats { phones: 4, verdicts: VerdictCounts::default() }]
        );
        let acked: Vec<u64> = frames
            .iter()
            .filter_map(|f| match f {
                AllocatorFrame::AwardDelivered { award_ids } => Some(award_ids.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(acked.len(), MAX_QUEUED_ACKS);
        assert_eq!(acked[0], 10, "the oldest were dropped");
    }

    #[test]
    fn users_whose_sessions_started_are_asked_about_in_bounded_frames() {
        let mut up = uplink();
        for user in 0..(MAX_QUEUED_WANTED as u64 + 7) {
            up.want_awards(user);
        }
        assert_eq!(up.take_wanted_dropped(), 7);
        up.link_up();
        let asked: Vec<Vec<u64>> = drain(&mut up)
            .into_iter()
            .filter_map(|f| match f {
                AllocatorFrame::AwardsWanted { user_ids } => Some(user_ids),
                _ => None,
            })
            .collect();
        assert!(asked.iter().all(|ids| ids.len() <= MAX_WANTED_USERS));
        let all: Vec<u64> = asked.concat();
        assert_eq!(all.len(), MAX_QUEUED_WANTED);
        assert_eq!(all[0], 7, "the oldest asks were dropped");
    }
}
