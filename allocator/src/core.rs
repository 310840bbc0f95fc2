//! The allocator's state machine, sans-IO: edge streams come and go, batches arrive, groups
//! commit, the clock ticks (time is an argument); every consequence is an [`Effect`] for the
//! I/O shell to carry out, in order.
//!
//! Exactly once: a batch is drawn the first time its [`BatchKey`] is seen. Until its group
//! commits it is pending and any resend waits for the same answer; once committed its answer
//! bytes are kept and replayed. Answers an edge has confirmed (`EdgeHello`'s highest answered
//! sequence) leave memory but stay in the ledger; a batch at or below that mark is never drawn
//! again: sending one is a protocol violation and closes the stream.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use shake_proto::{AllocatorFrame, Batch, ErrorCode, RoundInfo, RoundPhase, Winner};

use crate::award::{Award, BatchKey};
use crate::draw::{Draw, RoundDraw};
use crate::ledger::AnsweredBatch;
use crate::quota::{self, EdgeQuota, QuotaPlanner};

/// The shell's name for one edge worker stream.
pub type StreamId = u64;

/// What the shell must do.
#[derive(Debug)]
pub enum Effect {
    /// Write these frame bytes on a stream.
    Send(StreamId, Bytes),
    /// Make a batch durable, then call [`Core::on_committed`].
    Commit(AnsweredBatch),
    /// Mark these awards delivered (durably, in the next group).
    MarkDelivered(Vec<u64>),
    /// Close a stream with this code.
    Close(StreamId, ErrorCode),
}

#[derive(Debug, Clone, Copy)]
struct StreamInfo {
    edge_id: u64,
    worker_id: u16,
}

/// Settings the core needs from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct CoreSettings {
    /// Admitted shakes are about this many times the prizes left per second.
    pub oversampling: f64,
    /// Quota lifetime; refreshed at a third of it.
    pub quota_valid_ms: u64,
}

/// Counters the shell exports as metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoreCounters {
    /// Batches drawn.
    pub batches_drawn: u64,
    /// Entries in drawn batches.
    pub entries_drawn: u64,
    /// Resent batches answered from stored answers (or joined to a pending one).
    pub batches_replayed: u64,
    /// Awards granted.
    pub awards_granted: u64,
}

/// The allocator's state.
#[derive(Debug)]
pub struct Core {
    settings: CoreSettings,
    draw: Draw,
    answered: HashMap<BatchKey, Bytes>,
    confirmed: HashMap<(u64, u16), u64>,
    pending: HashMap<BatchKey, Vec<StreamId>>,
    streams: HashMap<StreamId, StreamInfo>,
    planner: QuotaPlanner,
    last_quota: HashMap<u64, (EdgeQuota, u64)>,
    last_phase: HashMap<u32, RoundPhase>,
    counters: CoreCounters,
    scratch: Vec<Award>,
}

impl Core {
    /// A core over a draw restored from the ledger and its stored answers.
    pub fn new(settings: CoreSettings, draw: Draw, answered: HashMap<BatchKey, Bytes>) -> Self {
        Self {
            settings,
            draw,
            answered,
            confirmed: HashMap::new(),
            pending: HashMap::new(),
            streams: HashMap::new(),
            planner: QuotaPlanner::default(),
            last_quota: HashMap::new(),
            last_phase: HashMap::new(),
            counters: CoreCounters::default(),
            scratch: Vec::new(),
        }
    }

    /// The draw state (rounds and pools).
    pub fn draw(&self) -> &Draw {
        &self.draw
    }

    /// Counters so far.
    pub fn counters(&self) -> CoreCounters {
        self.counters
    }

    /// Batches drawn and not yet durable.
    pub fn pending_batches(&self) -> usize {
        self.pending.len()
    }

    /// An edge worker said `EdgeHello` on `stream`.
    pub fn on_hello(
        &mut self,
        stream: StreamId,
        edge_id: u64,
        worker_id: u16,
        highest_answered_seq: u64,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        let duplicate: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, s)| s.edge_id == edge_id && s.worker_id == worker_id)
            .map(|(id, _)| *id)
            .collect();
        for old in duplicate {
            self.streams.remove(&old);
            out.push(Effect::Close(old, ErrorCode::DuplicateWorker));
        }
        self.streams.insert(stream, StreamInfo { edge_id, worker_id });
        let mark = self.confirmed.entry((edge_id, worker_id)).or_default();
        *mark = (*mark).max(highest_answered_seq);
        self.answered.retain(|key, _| {
            !(key.edge_id == edge_id
                && key.worker_id == worker_id
                && key.seq <= highest_answered_seq)
        });
        for round in self.draw.rounds() {
            out.push(Effect::Send(stream, round_state_frame(round, now_ms)));
        }
        self.last_quota.remove(&edge_id);
        self.refresh_quotas(now_ms, out);
    }

    /// A batch arrived on `stream` (after its `EdgeHello`).
    pub fn on_batch(
        &mut self,
        stream: StreamId,
        batch: &Batch,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        let Some(info) = self.streams.get(&stream).copied() else {
            out.push(Effect::Close(stream, ErrorCode::UnexpectedFrame));
            return;
        };
        let key = BatchKey { edge_id: info.edge_id, worker_id: info.worker_id, seq: batch.seq };
        if let Some(answer) = self.answered.get(&key) {
            self.counters.batches_replayed += 1;
            out.push(Effect::Send(stream, answer.clone()));
            return;
        }
        if let Some(waiting) = self.pending.get_mut(&key) {
            self.counters.batches_replayed += 1;
            waiting.push(stream);
            return;
        }
        if self.confirmed.get(&(key.edge_id, key.worker_id)).is_some_and(|mark| key.seq <= *mark) {
            // Confirmed and forgotten: drawing it again could pay twice.
            out.push(Effect::Close(stream, ErrorCode::UnexpectedFrame));
            return;
        }
        self.scratch.clear();
        self.draw.decide(key, batch, now_ms, &mut self.scratch);
        self.counters.batches_drawn += 1;
        self.counters.entries_drawn += batch.len() as u64;
        self.counters.awards_granted += self.scratch.len() as u64;
        self.pending.insert(key, vec![stream]);
        out.push(Effect::Commit(AnsweredBatch {
            key,
            answer: answer_frame(batch.seq, &self.scratch),
            awards: std::mem::take(&mut self.scratch),
        }));
    }

    /// These batches are durable: answer everyone waiting for them.
    pub fn on_committed(&mut self, batches: &[(BatchKey, Bytes)], out: &mut Vec<Effect>) {
        for (key, answer) in batches {
            for stream in self.pending.remove(key).unwrap_or_default() {
                if self.streams.contains_key(&stream) {
                    out.push(Effect::Send(stream, answer.clone()));
                }
            }
            self.answered.insert(*key, answer.clone());
        }
    }

    /// Phones acknowledged these awards.
    pub fn on_delivered(&mut self, award_ids: Vec<u64>, out: &mut Vec<Effect>) {
        out.push(Effect::MarkDelivered(award_ids));
    }

    /// An edge reported its load.
    pub fn on_load_report(&mut self, stream: StreamId, window_ms: u32, offered: u64, now_ms: u64) {
        if let Some(info) = self.streams.get(&stream) {
            self.planner.report(info.edge_id, info.worker_id, window_ms, offered, now_ms);
        }
    }

    /// A stream closed. Its pending batches still commit; the edge will resend to hear them.
    pub fn on_stream_closed(&mut self, stream: StreamId) {
        if let Some(info) = self.streams.remove(&stream)
            && !self.streams.values().any(|s| s.edge_id == info.edge_id)
        {
            self.planner.forget(info.edge_id);
            self.last_quota.remove(&info.edge_id);
        }
    }

    /// The clock moved: announce round transitions, refresh quotas.
    pub fn on_tick(&mut self, now_ms: u64, out: &mut Vec<Effect>) {
        let streams: Vec<StreamId> = self.streams.keys().copied().collect();
        for round in self.draw.rounds() {
            let phase = phase_at(round, now_ms);
            if self.last_phase.insert(round.config().id, phase) != Some(phase) {
                let frame = round_state_frame(round, now_ms);
                out.extend(streams.iter().map(|s| Effect::Send(*s, frame.clone())));
            }
        }
        self.refresh_quotas(now_ms, out);
    }

    fn refresh_quotas(&mut self, now_ms: u64, out: &mut Vec<Effect>) {
        let Some(round) = self.draw.rounds().iter().find(|r| r.is_open(now_ms)) else {
            return;
        };
        let round_id = round.config().id;
        let left = round.pool().items().len() as u64 - round.pool().awarded_count() as u64;
        let fleet = quota::fleet_rate(
            self.settings.oversampling,
            left,
            round.config().ends_at_ms() - now_ms,
        );
        let mut edges: Vec<u64> = self.streams.values().map(|s| s.edge_id).collect();
        edges.sort_unstable();
        edges.dedup();
        let valid = self.settings.quota_valid_ms;
        for (edge, quota) in self.planner.plan(&edges, fleet, now_ms, valid) {
            let due = match self.last_quota.get(&edge) {
                None => true,
                Some((last, at)) => {
                    now_ms.saturating_sub(*at) >= valid / 3
                        || quota.rate_per_s.abs_diff(last.rate_per_s) * 10 > last.rate_per_s
                }
            };
            if !due {
                continue;
            }
            self.last_quota.insert(edge, (quota, now_ms));
            let mut frame = BytesMut::new();
            AllocatorFrame::Quota {
                round_id,
                rate_per_s: quota.rate_per_s,
                burst: quota.burst,
                valid_until_ms: now_ms + valid,
            }
            .encode(&mut frame);
            let frame = frame.freeze();
            for (id, info) in &self.streams {
                if info.edge_id == edge {
                    out.push(Effect::Send(*id, frame.clone()));
                }
            }
        }
    }
}

/// The `BatchResult` frame for batch `seq` that granted `awards` (winners only, entry order).
pub fn answer_frame(seq: u64, awards: &[Award]) -> Bytes {
    let winners = awards
        .iter()
        .map(|a| Winner {
            entry_index: a.entry_index,
            award_id: a.award_id,
            prize: a.prize.clone(),
        })
        .collect();
    let mut frame = BytesMut::new();
    AllocatorFrame::BatchResult { seq, winners }.encode(&mut frame);
    frame.freeze()
}

fn phase_at(round: &RoundDraw, now_ms: u64) -> RoundPhase {
    let config = round.config();
    if now_ms < config.starts_at_ms {
        RoundPhase::Waiting
    } else if now_ms < config.ends_at_ms() {
        RoundPhase::Open
    } else {
        RoundPhase::Closed
    }
}

fn round_state_frame(round: &RoundDraw, now_ms: u64) -> Bytes {
    let config = round.config();
    let mut frame = BytesMut::new();
    AllocatorFrame::RoundState {
        round: RoundInfo {
            round_id: config.id,
            phase: phase_at(round, now_ms),
            starts_at_ms: config.starts_at_ms,
            ends_at_ms: config.ends_at_ms(),
        },
        min_shake_interval_ms: config.min_shake_interval_ms,
    }
    .encode(&mut frame);
    frame.freeze()
}
