//! The allocator's state machine, sans-IO: edge streams come and go, batches arrive, groups
//! commit, the clock ticks (time is an argument); every consequence is an [`Effect`] for the
//! I/O shell to carry out, in order.
//!
//! Exactly once: a batch is named by (edge, worker, instance, seq) and drawn the first time its
//! [`BatchKey`] is seen. Until its group commits it is pending and any resend waits for the
//! same answer; once committed its answer bytes are kept and replayed. When the edge confirms
//! answers (`ResultsReceived`, or the mark in `EdgeHello`) they leave memory and the ledger
//! (compaction), and the mark stays: a batch at or below it is never drawn again (sending one
//! is a protocol violation and closes the stream).
//!
//! Workers and instances: an edge worker draws a new instance id each time it starts. An
//! `EdgeHello` with a new instance retires the worker's previous instance: its answers are
//! forgotten (the process that could resend them is gone) and a stream that later speaks for
//! it is closed with `DUPLICATE_WORKER`, however many starts ago it retired: its resends would
//! otherwise be drawn again. Every retired instance is kept (in memory and in the ledger's log
//! of retirements): eight bytes per start of a worker, for the ledger's life.
//!
//! Bounds: answers drawn and not yet confirmed are at most
//! [`MAX_UNCONFIRMED_BATCHES`](shake_proto::limits::MAX_UNCONFIRMED_BATCHES) per worker (one
//! more closes the stream with `FLOOD`); memory holds one slot per worker seen.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use bytes::{Bytes, BytesMut};
use shake_proto::limits::MAX_UNCONFIRMED_BATCHES;
use shake_proto::{
    AllocatorFrame, Batch, BatchDigest, ErrorCode, RoundInfo, RoundPhase, Winner, frame,
};

use crate::award::{Award, BatchKey, WorkerKey};
use crate::draw::{Draw, RoundDraw};
use crate::latency_window::LatencyWindow;
use crate::ledger::{AnsweredBatch, RetiredInstance, WorkerRecord};
use crate::owed::OwedAwards;
use crate::quota::{self, EdgeQuota, QuotaPlanner};
use crate::round_command::{
    CommandBook, Refusal, RoundCommand, RoundStatus, RoundTiming, Submitted,
};
use crate::user_rate::{UserRateSettings, UserRates};

/// The shell's name for one edge worker stream.
pub type StreamId = u64;

/// Retired instances a worker's record carries, newest last: what an allocator of an older
/// version, which reads no log of retirements, refuses. This one refuses every instance ever
/// retired.
pub const RETIRED_IN_RECORD: usize = 8;
/// How long before a round opens its quota goes to the edges, milliseconds: well ahead of the
/// opening, well inside the quota's life (`quota_valid_ms`, at least 2 s).
pub const QUOTA_LEAD_MS: u64 = 1_000;

/// What the shell must do.
#[derive(Debug)]
pub enum Effect {
    /// Write these frame bytes on a stream.
    Send(StreamId, Bytes),
    /// Make a batch durable, then call [`Core::on_committed`].
    Commit(AnsweredBatch),
    /// Mark these awards delivered (durably, in the next group).
    MarkDelivered(Vec<u64>),
    /// Delete these stored answers and record this worker (in the next group; nothing waits
    /// for it: losing it leaves an older, still consistent ledger).
    Compact {
        /// Answers confirmed by the edge, or of a retired instance.
        forget: Vec<BatchKey>,
        /// The worker's new record, if it changed.
        worker: Option<WorkerRecord>,
        /// The instance the new record retired, for the ledger's log of retirements.
        retired: Option<RetiredInstance>,
    },
    /// Close a stream with this code.
    Close(StreamId, ErrorCode),
    /// Record this operator command durably, then call [`Core::on_command_recorded`].
    RecordCommand(RoundCommand),
}

/// An `EdgeHello`, as the core needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerHello {
    /// The edge (already checked against its certificate).
    pub edge_id: u64,
    /// The worker within the edge.
    pub worker_id: u16,
    /// The worker's run.
    pub instance_id: u64,
    /// Every batch of this instance up to here is answered at the edge.
    pub highest_answered_seq: u64,
    /// The edge's protocol version (frames newer than it are not sent to it).
    pub protocol_version: u32,
}

#[derive(Debug, Clone, Copy)]
struct StreamInfo {
    worker: WorkerKey,
    instance_id: u64,
    /// The edge understands `UsersLimited` (protocol 3 on).
    hears_limits: bool,
    /// The edge understands `AwardsOwed` (protocol 4 on).
    hears_owed: bool,
}

/// One edge worker: its current instance and that instance's unconfirmed answers.
#[derive(Debug, Default)]
struct WorkerSlot {
    instance_id: u64,
    confirmed_seq: u64,
    /// Every instance this worker had before the current one.
    retired: HashSet<u64>,
    /// The newest of them, newest last: the record's list.
    recently_retired: VecDeque<u64>,
    /// Committed, not yet confirmed: seq -> the answer frame.
    answered: BTreeMap<u64, Bytes>,
    /// Drawn, not yet committed (of the current instance).
    pending: usize,
}

impl WorkerSlot {
    fn record(&self, worker: WorkerKey) -> WorkerRecord {
        WorkerRecord {
            worker,
            instance_id: self.instance_id,
            confirmed_seq: self.confirmed_seq,
            retired: self.recently_retired.iter().copied().collect(),
        }
    }

    fn key(&self, worker: WorkerKey, seq: u64) -> BatchKey {
        BatchKey {
            edge_id: worker.edge_id,
            worker_id: worker.worker_id,
            instance_id: self.instance_id,
            seq,
        }
    }

    /// Confirms up to `mark`: `None` if that is no news, else the forgotten answers' keys,
    /// oldest first.
    fn confirm(&mut self, worker: WorkerKey, mark: u64) -> Option<Vec<BatchKey>> {
        if mark <= self.confirmed_seq {
            return None;
        }
        self.confirmed_seq = mark;
        let kept = self.answered.split_off(&mark.saturating_add(1));
        let forgotten = std::mem::replace(&mut self.answered, kept);
        Some(forgotten.into_keys().map(|seq| self.key(worker, seq)).collect())
    }

    /// Makes `instance_id` current; the previous instance's answers are returned to forget.
    fn start_instance(&mut self, worker: WorkerKey, instance_id: u64) -> Vec<BatchKey> {
        let forget = std::mem::take(&mut self.answered)
            .into_keys()
            .map(|seq| self.key(worker, seq))
            .collect();
        self.retired.insert(self.instance_id);
        self.recently_retired.push_back(self.instance_id);
        while self.recently_retired.len() > RETIRED_IN_RECORD {
            self.recently_retired.pop_front();
        }
        self.instance_id = instance_id;
        self.confirmed_seq = 0;
        // The old instance's pending batches still commit; `on_committed` forgets them.
        self.pending = 0;
        forget
    }
}

#[derive(Debug)]
struct Pending {
    digest: BatchDigest,
    waiting: Vec<StreamId>,
    /// When each winner shook (the edge's clock, Unix milliseconds), for the award latency.
    shaken_at_ms: Vec<u64>,
}

/// Settings the core needs from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct CoreSettings {
    /// Admitted shakes are about this many times the prizes left per second.
    pub oversampling: f64,
    /// Quota lifetime; refreshed at a third of it.
    pub quota_valid_ms: u64,
    /// The per-user rate.
    pub user_rate: UserRateSettings,
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
    /// Resent batches whose content differs from the batch first drawn under that name.
    pub batches_conflicting: u64,
    /// Awards granted.
    pub awards_granted: u64,
    /// Stored answers forgotten because the edge confirmed them or their instance retired.
    pub answers_forgotten: u64,
    /// Entries treated as no-luck because their user was over the per-user rate.
    pub entries_over_user_rate: u64,
    /// Users limited at the edges for going over it.
    pub users_limited: u64,
    /// Users evicted from the per-user table while over the rate.
    pub users_evicted: u64,
    /// Entries over the per-user rate whose user the full table of offenders could not hold.
    pub offenders_untracked: u64,
    /// `AwardsOwed` frames sent to edges for sessions that started.
    pub awards_owed_sent: u64,
    /// Entries of batches whose round is unknown here or not open (every one no-luck): an
    /// edge's clock or round table that disagrees with this allocator's.
    pub entries_round_not_open: u64,
}

/// The allocator's state.
#[derive(Debug)]
pub struct Core {
    settings: CoreSettings,
    draw: Draw,
    workers: HashMap<WorkerKey, WorkerSlot>,
    pending: HashMap<BatchKey, Pending>,
    streams: HashMap<StreamId, StreamInfo>,
    planner: QuotaPlanner,
    /// The last quota sent to each edge for each round (the open one, the next): the quota,
    /// when.
    last_quota: HashMap<(u64, u32), (EdgeQuota, u64)>,
    last_phase: HashMap<u32, RoundPhase>,
    counters: CoreCounters,
    rates: UserRates,
    next_sweep_ms: u64,
    scratch: Vec<Award>,
    commands: CommandBook,
    owed: OwedAwards,
    award_latency: LatencyWindow,
}

impl Core {
    /// A core over a draw restored from the ledger (no workers or answers yet: see
    /// [`Core::restore`]).
    pub fn new(settings: CoreSettings, draw: Draw) -> Self {
        Self {
            settings,
            draw,
            workers: HashMap::new(),
            pending: HashMap::new(),
            streams: HashMap::new(),
            planner: QuotaPlanner::default(),
            last_quota: HashMap::new(),
            last_phase: HashMap::new(),
            counters: CoreCounters::default(),
            rates: UserRates::new(settings.user_rate),
            next_sweep_ms: 0,
            scratch: Vec::new(),
            commands: CommandBook::default(),
            owed: OwedAwards::default(),
            award_latency: LatencyWindow::default(),
        }
    }

    /// Takes back the command log read from the ledger, in order (before serving). The draw
    /// has them applied already ([`Draw::apply_command`], before its awards were restored).
    pub fn restore_command_log(&mut self, commands: Vec<RoundCommand>) {
        for command in commands {
            self.commands.replay(command);
        }
    }

    /// An operator command (its `at_ms` is when it was accepted). A valid new one is
    /// recorded first ([`Effect::RecordCommand`]) and takes effect when
    /// [`Core::on_command_recorded`] says it is durable.
    pub fn on_command(&mut self, command: RoundCommand, out: &mut Vec<Effect>) -> Submitted {
        let draw = &self.draw;
        let submitted = self.commands.submit(command, |c| draw.check_new_command(c).map(drop));
        if let Submitted::Record(command) = &submitted {
            out.push(Effect::RecordCommand(command.clone()));
        }
        submitted
    }

    /// A command is durable: it takes effect, and every edge hears the round's new state.
    pub fn on_command_recorded(
        &mut self,
        command: &RoundCommand,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) -> Result<RoundTiming, Refusal> {
        let applied = self.draw.apply_command(command);
        self.commands.recorded(command);
        if let Some(round) = self.draw.round(command.round_id) {
            let frame = round_state_frame(round, now_ms);
            self.last_phase.insert(command.round_id, phase_at(round, now_ms));
            out.extend(self.streams.keys().map(|s| Effect::Send(*s, frame.clone())));
        }
        applied
    }

    /// Every operator command recorded, in order (the audit log).
    pub fn command_log(&self) -> &[RoundCommand] {
        self.commands.log()
    }

    /// Takes back the workers and stored answers read from the ledger. Answers that belong to
    /// no current instance, or that the edge had already confirmed, are compacted away.
    pub fn restore(
        &mut self,
        workers: Vec<WorkerRecord>,
        answers: HashMap<BatchKey, Bytes>,
        out: &mut Vec<Effect>,
    ) {
        for record in workers {
            let newest = record.retired.len().saturating_sub(RETIRED_IN_RECORD);
            let slot = WorkerSlot {
                instance_id: record.instance_id,
                confirmed_seq: record.confirmed_seq,
                retired: record.retired.iter().copied().collect(),
                recently_retired: record.retired[newest..].iter().copied().collect(),
                ..WorkerSlot::default()
            };
            self.workers.insert(record.worker, slot);
        }
        let mut stale = Vec::new();
        for (key, answer) in answers {
            match self.workers.get_mut(&key.worker()) {
                Some(slot)
                    if slot.instance_id == key.instance_id && key.seq > slot.confirmed_seq =>
                {
                    slot.answered.insert(key.seq, answer);
                }
                _ => stale.push(key),
            }
        }
        if !stale.is_empty() {
            stale.sort_unstable();
            self.counters.answers_forgotten += stale.len() as u64;
            out.push(Effect::Compact { forget: stale, worker: None, retired: None });
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

    /// Answers held for resends (committed, not yet confirmed by their edge).
    pub fn stored_answers(&self) -> usize {
        self.workers.values().map(|w| w.answered.len()).sum()
    }

    /// Bytes of answer frames held for resends.
    pub fn stored_answer_bytes(&self) -> usize {
        self.workers.values().flat_map(|w| w.answered.values()).map(Bytes::len).sum()
    }

    /// Users the per-user rate tracks now.
    pub fn tracked_users(&self) -> usize {
        self.rates.tracked()
    }

    /// Edge workers known (one slot each, whatever their number of restarts).
    pub fn known_workers(&self) -> usize {
        self.workers.len()
    }

    /// An edge worker said `EdgeHello` on `stream`.
    pub fn on_hello(
        &mut self,
        stream: StreamId,
        hello: WorkerHello,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        let worker = WorkerKey { edge_id: hello.edge_id, worker_id: hello.worker_id };
        let mut changed = false;
        let slot = self.workers.entry(worker).or_insert_with(|| {
            changed = true;
            WorkerSlot { instance_id: hello.instance_id, ..WorkerSlot::default() }
        });
        if slot.retired.contains(&hello.instance_id) {
            // A stale process (or a second edge with this id): the newer instance keeps going.
            out.push(Effect::Close(stream, ErrorCode::DuplicateWorker));
            return;
        }
        let mut forget = Vec::new();
        let mut retired = None;
        if slot.instance_id != hello.instance_id {
            retired = Some(RetiredInstance { worker, instance_id: slot.instance_id });
            forget = slot.start_instance(worker, hello.instance_id);
            changed = true;
        }
        if let Some(confirmed) = slot.confirm(worker, hello.highest_answered_seq) {
            forget.extend(confirmed);
            changed = true;
        }
        self.counters.answers_forgotten += forget.len() as u64;
        if changed {
            out.push(Effect::Compact { forget, worker: Some(slot.record(worker)), retired });
        }

        let duplicate: Vec<StreamId> =
            self.streams.iter().filter(|(_, s)| s.worker == worker).map(|(id, _)| *id).collect();
        for old in duplicate {
            self.streams.remove(&old);
            out.push(Effect::Close(old, ErrorCode::DuplicateWorker));
        }
        let hears_limits = hello.protocol_version >= 3;
        let hears_owed = hello.protocol_version >= 4;
        self.streams.insert(
            stream,
            StreamInfo { worker, instance_id: hello.instance_id, hears_limits, hears_owed },
        );
        for round in self.draw.rounds() {
            out.push(Effect::Send(stream, round_state_frame(round, now_ms)));
        }
        // After every round (the edge takes the first other frame as the end of the list), and
        // before the deadlines that are times on this clock (limits, quotas): the edge reads
        // them on its own clock by the difference.
        out.push(Effect::Send(stream, heartbeat_frame(now_ms)));
        if hears_limits {
            let limited = self.rates.limited_at(now_ms);
            let cap_ms = now_ms + self.rates.limit_for_ms();
            for frame in users_limited_frames(limited, cap_ms) {
                out.push(Effect::Send(stream, frame));
            }
        }
        self.last_quota.retain(|(edge, _), _| *edge != hello.edge_id);
        self.refresh_quotas(now_ms, out);
    }

    /// The edge confirmed every answer of this stream's instance up to `highest_answered_seq`.
    pub fn on_results_received(
        &mut self,
        stream: StreamId,
        highest_answered_seq: u64,
        out: &mut Vec<Effect>,
    ) {
        let Some(info) = self.streams.get(&stream).copied() else { return };
        let Some(slot) = self.workers.get_mut(&info.worker) else { return };
        if slot.instance_id != info.instance_id {
            return;
        }
        let Some(forget) = slot.confirm(info.worker, highest_answered_seq) else { return };
        self.counters.answers_forgotten += forget.len() as u64;
        out.push(Effect::Compact { forget, worker: Some(slot.record(info.worker)), retired: None });
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
        let Some(slot) = self.workers.get_mut(&info.worker) else {
            out.push(Effect::Close(stream, ErrorCode::UnexpectedFrame));
            return;
        };
        if slot.instance_id != info.instance_id {
            out.push(Effect::Close(stream, ErrorCode::DuplicateWorker));
            return;
        }
        let key = slot.key(info.worker, batch.seq);
        if let Some(answer) = slot.answered.get(&batch.seq) {
            self.counters.batches_replayed += 1;
            if answer_digest(answer) != Some(batch.digest()) {
                self.counters.batches_conflicting += 1;
            }
            out.push(Effect::Send(stream, answer.clone()));
            return;
        }
        if let Some(pending) = self.pending.get_mut(&key) {
            self.counters.batches_replayed += 1;
            if pending.digest != batch.digest() {
                self.counters.batches_conflicting += 1;
            }
            // Once per stream: an edge resending on the stream that already waits (the edge
            // itself sends a batch once per stream) must not grow the list while the ledger is
            // slow, nor get one answer per resend.
            if !pending.waiting.contains(&stream) {
                pending.waiting.push(stream);
            }
            return;
        }
        if key.seq <= slot.confirmed_seq {
            // Confirmed and forgotten: drawing it again could pay twice.
            out.push(Effect::Close(stream, ErrorCode::UnexpectedFrame));
            return;
        }
        if slot.answered.len() + slot.pending >= MAX_UNCONFIRMED_BATCHES {
            out.push(Effect::Close(stream, ErrorCode::Flood));
            return;
        }
        slot.pending += 1;
        self.scratch.clear();
        if !self.draw.decide(key, batch, now_ms, &mut self.rates, &mut self.scratch) {
            self.counters.entries_round_not_open += batch.len() as u64;
        }
        self.counters.batches_drawn += 1;
        self.counters.entries_drawn += batch.len() as u64;
        self.counters.awards_granted += self.scratch.len() as u64;
        let shaken_at_ms = shake_times(batch, &self.scratch);
        self.pending
            .insert(key, Pending { digest: batch.digest(), waiting: vec![stream], shaken_at_ms });
        out.push(Effect::Commit(AnsweredBatch {
            key,
            answer: answer_frame(batch.seq, batch.digest(), &self.scratch),
            awards: std::mem::take(&mut self.scratch),
        }));
    }

    /// These batches are durable at `now_ms`: answer everyone waiting for them.
    pub fn on_committed(
        &mut self,
        batches: &[(BatchKey, Bytes)],
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        let mut stale = Vec::new();
        for (key, answer) in batches {
            let (waiting, shaken_at_ms) =
                self.pending.remove(key).map(|p| (p.waiting, p.shaken_at_ms)).unwrap_or_default();
            for shaken_at in shaken_at_ms {
                self.award_latency.record(now_ms, now_ms.saturating_sub(shaken_at));
            }
            for stream in waiting {
                if self.streams.get(&stream).is_some_and(|s| s.instance_id == key.instance_id) {
                    out.push(Effect::Send(stream, answer.clone()));
                }
            }
            match self.workers.get_mut(&key.worker()) {
                Some(slot) if slot.instance_id == key.instance_id => {
                    slot.pending = slot.pending.saturating_sub(1);
                    slot.answered.insert(key.seq, answer.clone());
                }
                // Its instance retired while the group was committing: nobody can ask again.
                _ => stale.push(*key),
            }
        }
        if !stale.is_empty() {
            self.counters.answers_forgotten += stale.len() as u64;
            out.push(Effect::Compact { forget: stale, worker: None, retired: None });
        }
    }

    /// Shake (the edge's clock) to award durable and answered (this allocator's clock), over
    /// the last few seconds.
    pub fn award_latency(&self) -> &LatencyWindow {
        &self.award_latency
    }

    /// Phones acknowledged these awards.
    pub fn on_delivered(&mut self, award_ids: Vec<u64>, out: &mut Vec<Effect>) {
        for id in &award_ids {
            self.owed.delivered(*id);
        }
        out.push(Effect::MarkDelivered(award_ids));
    }

    /// Takes back the awards the ledger holds undelivered (before serving).
    pub fn restore_owed<'a>(&mut self, awards: impl IntoIterator<Item = &'a Award>) {
        for award in awards {
            self.owed.add(award);
        }
    }

    /// These awards are durable: owed to their users until a phone acknowledges them.
    pub fn on_awards_durable(&mut self, awards: &[Award]) {
        for award in awards {
            self.owed.add(award);
        }
    }

    /// Sessions of these users started at the edge of `stream`: it gets what they are owed.
    pub fn on_awards_wanted(&mut self, stream: StreamId, user_ids: &[u64], out: &mut Vec<Effect>) {
        if !self.streams.get(&stream).is_some_and(|s| s.hears_owed) {
            return;
        }
        for user in user_ids {
            for frame in self.owed.frames_for(*user) {
                self.counters.awards_owed_sent += 1;
                out.push(Effect::Send(stream, frame));
            }
        }
    }

    /// Awards owed now (durable, not acknowledged).
    pub fn owed_awards(&self) -> usize {
        self.owed.len()
    }

    /// An edge reported its load.
    pub fn on_load_report(&mut self, stream: StreamId, window_ms: u32, offered: u64, now_ms: u64) {
        if let Some(info) = self.streams.get(&stream) {
            self.planner.report(
                info.worker.edge_id,
                info.worker.worker_id,
                window_ms,
                offered,
                now_ms,
            );
        }
    }

    /// A stream closed. Its pending batches still commit; the edge will resend to hear them.
    pub fn on_stream_closed(&mut self, stream: StreamId) {
        if let Some(info) = self.streams.remove(&stream)
            && !self.streams.values().any(|s| s.worker.edge_id == info.worker.edge_id)
        {
            self.planner.forget(info.worker.edge_id);
            self.last_quota.retain(|(edge, _), _| *edge != info.worker.edge_id);
        }
    }

    /// The clock moved: announce round transitions and newly limited users, refresh quotas,
    /// forget idle users (once a second).
    pub fn on_tick(&mut self, now_ms: u64, out: &mut Vec<Effect>) {
        let rate_counts = self.rates.take_counts();
        self.counters.entries_over_user_rate += rate_counts.entries_over_rate;
        self.counters.users_limited += rate_counts.users_limited;
        self.counters.users_evicted += rate_counts.users_evicted;
        self.counters.offenders_untracked += rate_counts.offenders_untracked;
        let limited = self.rates.take_newly_limited();
        if !limited.is_empty() {
            tracing::info!(
                users = limited.len(),
                first = ?limited.iter().take(8).map(|&(user, _)| user).collect::<Vec<_>>(),
                "users over the per-user rate: edges refuse them for {} s",
                self.rates.limit_for_ms() / 1000
            );
            let cap_ms = now_ms + self.rates.limit_for_ms();
            for frame in users_limited_frames(limited, cap_ms) {
                for (id, info) in &self.streams {
                    if info.hears_limits {
                        out.push(Effect::Send(*id, frame.clone()));
                    }
                }
            }
        }
        // A sweep planned past a second from now is from before the clock stepped back.
        if now_ms >= self.next_sweep_ms || self.next_sweep_ms > now_ms.saturating_add(1_000) {
            // Once a second, this clock to every edge worker.
            let heartbeat = heartbeat_frame(now_ms);
            out.extend(self.streams.keys().map(|s| Effect::Send(*s, heartbeat.clone())));
            self.draw.finish_closed(now_ms);
            self.rates.sweep(now_ms);
            self.next_sweep_ms = now_ms + 1_000;
        }
        let streams: Vec<StreamId> = self.streams.keys().copied().collect();
        for round in self.draw.rounds() {
            let phase = phase_at(round, now_ms);
            if self.last_phase.insert(round.config().id, phase) != Some(phase) {
                let (prizes, awarded) = (round.pool().items().len(), round.pool().awarded_count());
                tracing::info!(round = round.config().id, ?phase, prizes, awarded, "round phase");
                let frame = round_state_frame(round, now_ms);
                out.extend(streams.iter().map(|s| Effect::Send(*s, frame.clone())));
            }
        }
        self.refresh_quotas(now_ms, out);
    }

    /// Quotas for the open round and, [`QUOTA_LEAD_MS`] ahead of its opening, for the next:
    /// an edge holds a round's quota when it opens (before, every round opened on the edges'
    /// fallback rate until the first tick after the opening, some hundreds of entries an edge
    /// where the quota allowed a handful, drawn first).
    fn refresh_quotas(&mut self, now_ms: u64, out: &mut Vec<Effect>) {
        let rounds = self.draw.rounds();
        let open = rounds.iter().find(|r| r.is_open(now_ms)).map(|r| (r, now_ms));
        let next = rounds
            .iter()
            .filter(|r| {
                let waiting = r.timing().status(now_ms) == RoundStatus::Waiting;
                waiting && r.timing().starts_at_ms - now_ms <= QUOTA_LEAD_MS
            })
            .min_by_key(|r| r.timing().starts_at_ms)
            .map(|r| (r, r.timing().starts_at_ms));
        let keep: Vec<u32> = open.iter().chain(&next).map(|(r, _)| r.config().id).collect();
        self.last_quota.retain(|(_, round), _| keep.contains(round));
        let plans: Vec<(u32, u64, u64)> = open
            .iter()
            .chain(&next)
            .map(|(round, from_ms)| {
                let left = round.pool().items().len() as u64 - round.pool().awarded_count() as u64;
                let ms_left = round.timing().ends_at_ms.saturating_sub(*from_ms);
                (round.config().id, left, ms_left)
            })
            .collect();
        for (round_id, left, ms_left) in plans {
            self.send_quota(round_id, left, ms_left, now_ms, out);
        }
    }

    /// Plans `round_id`'s quota (`left` prizes over `ms_left`) and sends each edge its share
    /// where it is due: new, a third of its life old, or a tenth off.
    fn send_quota(
        &mut self,
        round_id: u32,
        left: u64,
        ms_left: u64,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        let fleet = quota::fleet_rate(self.settings.oversampling, left, ms_left);
        let mut edges: Vec<u64> = self.streams.values().map(|s| s.worker.edge_id).collect();
        edges.sort_unstable();
        edges.dedup();
        let valid = self.settings.quota_valid_ms;
        for (edge, quota) in self.planner.plan(&edges, fleet, now_ms, valid) {
            // A new round's quota goes at once, whatever its rate: the edge applies a quota to
            // the round it names only, and would use its fallback rate until the next refresh.
            let due = match self.last_quota.get(&(edge, round_id)) {
                None => true,
                // A quota sent "later" than now is from before the wall clock stepped back:
                // due, or the edges' copies (valid until the old clock's time) expire with
                // no refresh until the clock catches up, every edge on its fallback rate.
                Some((last, at)) => {
                    now_ms < *at
                        || now_ms - *at >= valid / 3
                        || u64::from(quota.rate_per_s.abs_diff(last.rate_per_s)) * 10
                            > u64::from(last.rate_per_s)
                }
            };
            if !due {
                continue;
            }
            self.last_quota.insert((edge, round_id), (quota, now_ms));
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
                if info.worker.edge_id == edge {
                    out.push(Effect::Send(*id, frame.clone()));
                }
            }
        }
    }
}

/// `Heartbeat` with this allocator's clock.
fn heartbeat_frame(now_ms: u64) -> Bytes {
    let mut frame = BytesMut::new();
    AllocatorFrame::Heartbeat { now_ms: now_ms.min(shake_proto::varint::MAX) }.encode(&mut frame);
    frame.freeze()
}

/// `UsersLimited` frames telling each of `limited` (user, end of its limit) the end of its own
/// limit, at most `cap_ms`, rounded up to the second so that one frame serves many users (as
/// many frames as the ends and the limit of users per frame need). A worker that connected was
/// told a fresh limit for each, which made a limit last up to twice its length on that edge.
fn users_limited_frames(mut limited: Vec<(u64, u64)>, cap_ms: u64) -> Vec<Bytes> {
    for (_, until_ms) in &mut limited {
        *until_ms = until_ms.div_ceil(1000).saturating_mul(1000).min(cap_ms);
    }
    limited.sort_unstable_by_key(|&(_, until_ms)| until_ms);
    let mut frames = Vec::new();
    for same_end in limited.chunk_by(|a, b| a.1 == b.1) {
        let until_ms = same_end[0].1;
        for chunk in same_end.chunks(shake_proto::limits::MAX_LIMITED_USERS) {
            let user_ids = chunk.iter().map(|&(user, _)| user).collect();
            let mut frame = BytesMut::new();
            AllocatorFrame::UsersLimited { until_ms, user_ids }.encode(&mut frame);
            frames.push(frame.freeze());
        }
    }
    frames
}

/// The `BatchResult` frame for batch `seq` (whose payload digests to `digest`) that granted
/// `awards` (winners only, entry order).
pub fn answer_frame(seq: u64, digest: BatchDigest, awards: &[Award]) -> Bytes {
    let winners = awards
        .iter()
        .map(|a| Winner {
            entry_index: a.entry_index,
            award_id: a.award_id,
            prize: a.prize.clone(),
        })
        .collect();
    let mut frame = BytesMut::new();
    AllocatorFrame::BatchResult { seq, digest, winners }.encode(&mut frame);
    frame.freeze()
}

/// The batch digest a stored answer echoes (read only when a resend arrives).
fn answer_digest(answer: &Bytes) -> Option<BatchDigest> {
    let header = frame::check(answer, usize::MAX).ok()?;
    let payload = answer.slice(header.header_len..header.total_len());
    match AllocatorFrame::parse(header.frame_type, &payload) {
        Ok(AllocatorFrame::BatchResult { digest, .. }) => Some(digest),
        _ => None,
    }
}

/// When each of `awards` (a batch's, in entry order) was shaken: the batch's base time and the
/// entry's offset.
fn shake_times(batch: &Batch, awards: &[Award]) -> Vec<u64> {
    let mut times = Vec::with_capacity(awards.len());
    let mut wins = awards.iter().map(|a| a.entry_index).peekable();
    for (index, entry) in batch.entries().enumerate() {
        let Some(&next) = wins.peek() else { break };
        if next == index as u32 {
            times.push(batch.base_time_ms + u64::from(entry.offset_us / 1000));
            wins.next();
        }
    }
    times
}

fn phase_at(round: &RoundDraw, now_ms: u64) -> RoundPhase {
    round.timing().phase(now_ms)
}

fn round_state_frame(round: &RoundDraw, now_ms: u64) -> Bytes {
    let config = round.config();
    let timing = round.timing();
    // A round recorded by an earlier build may end past what a varint carries (replays are not
    // held to today's bounds): clamped, it still travels, and reads as "no end in sight".
    let (starts_at_ms, ends_at_ms) = timing.wire_times();
    let (starts_at_ms, ends_at_ms) =
        (starts_at_ms.min(shake_proto::varint::MAX), ends_at_ms.min(shake_proto::varint::MAX));
    let mut frame = BytesMut::new();
    AllocatorFrame::RoundState {
        round: RoundInfo {
            round_id: config.id,
            phase: phase_at(round, now_ms),
            starts_at_ms,
            ends_at_ms,
            start_spread_ms: config.start_spread_ms,
        },
        min_shake_interval_ms: timing.min_shake_interval_ms,
    }
    .encode(&mut frame);
    frame.freeze()
}
