//! One worker's state machine, sans-IO: phones come and go, shakes are decided, the allocator
//! answers, the clock ticks. Time is an argument (`now_us` monotonic for buckets and batch
//! ages, `now_ms` Unix for rounds); consequences for phones come out as [`PhoneEffect`]s for
//! the I/O shell (today the quinn worker, tomorrow the event loop) to deliver.
//!
//! `on_shake` is the hot path: round open? phone within its bucket? worker within its share
//! of the edge's admission? then into the batch. It allocates nothing after warm-up and
//! touches nothing shared with another thread (`shake-bench hot-path` measures it).
//!
//! One user, one chance: a user the allocator names in `UsersLimited` (over the per-user rate,
//! whatever their connections) is answered no-luck without forwarding until the limit ends.
//! The check is one comparison on the phone's own record, set when the notice comes and when
//! the phone's session starts; the table behind it is bounded and swept once a second.
//!
//! Awards are announced only for a batch whose answer matches it (sequence and digest), to the
//! phone that shook, and are entered in the edge's [`AwardBook`] so that only that user can
//! acknowledge them.

use std::collections::HashMap;
use std::sync::Arc;

use shake_proto::datagram::Outcome;
use shake_proto::{AllocatorFrame, ControlFrame, Shake, Verdict, VerdictCounts};

use crate::admission::{Admission, AdmissionSettings, Decision};
use crate::award_book::{AckVerdict, AwardBook};
use crate::batcher::{Answer, BatchSettings};
use crate::bucket::{Rate, TokenBucket};
use crate::phones::{PhoneRef, PhoneTable};
use crate::uplink::{Uplink, WorkerName, WorkerStats};
use crate::user_sessions::MAX_LIMITED_USERS;

/// A connected phone, as the core sees it; `X` is whatever the shell keeps beside it.
#[derive(Debug)]
pub struct Phone<X> {
    /// The user its session token names.
    pub user_id: u64,
    bucket: TokenBucket,
    /// The allocator limited this user until then (Unix ms; 0: never).
    limited_until_ms: u64,
    /// Its `AwardAck`s refused so far (bounded by
    /// [`shake_proto::limits::MAX_REFUSED_AWARD_ACKS`]).
    acks_refused: u32,
    /// The shell's part (an outbox, a connection handle...).
    pub ext: X,
}

impl<X> Phone<X> {
    /// Its shake bucket as it stands (what a session that follows this one starts with).
    pub fn bucket(&self) -> TokenBucket {
        self.bucket
    }
}

/// A phone had more `AwardAck`s refused than the protocol allows
/// ([`shake_proto::limits::MAX_REFUSED_AWARD_ACKS`]): close it with `FLOOD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckFlood;

/// Something the shell must tell phones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhoneEffect {
    /// A control frame for one phone (an `Award`).
    ToPhone(PhoneRef, ControlFrame),
    /// A control frame for every phone of this worker (`RoundNotice`).
    Broadcast(ControlFrame),
}

/// What the worker counted since the last [`WorkerCore::take_counts`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Verdicts.
    pub no_luck: u64,
    /// Verdicts.
    pub slow_down: u64,
    /// Verdicts.
    pub round_closed: u64,
    /// Verdicts.
    pub forwarded: u64,
    /// Admitted shakes answered no-luck because too many batches awaited answers.
    pub backpressure: u64,
    /// Shakes answered no-luck, not forwarded, because the allocator limited their user.
    pub user_limited: u64,
    /// Awards written to their phone.
    pub awards_written: u64,
    /// Awards whose phone had left (they stay undelivered in the ledger).
    pub awards_orphaned: u64,
    /// Awards the allocator still owed a user, written to the user's new session.
    pub awards_owed_written: u64,
    /// Answers whose digest named another batch: nothing announced.
    pub answers_mismatched: u64,
    /// Answers for no batch in flight (duplicates).
    pub answers_unknown: u64,
    /// Acknowledgements by verdict.
    pub acks_accepted: u64,
    /// Acknowledgements by verdict.
    pub acks_unknown: u64,
    /// Acknowledgements by verdict.
    pub acks_wrong_user: u64,
    /// Batch flush to answer, microseconds, one per matched answer (at most 1,024 kept).
    pub answer_rtt_us: Vec<u64>,
}

/// Settings from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct CoreSettings {
    /// Per-phone and fallback rates (this worker's share).
    pub admission: AdmissionSettings,
    /// Batch limits.
    pub batches: BatchSettings,
    /// Workers of the edge (the allocator's quota is split between them).
    pub workers: usize,
}

/// One worker's state.
#[derive(Debug)]
pub struct WorkerCore<X> {
    settings: CoreSettings,
    admission: Admission,
    uplink: Uplink<PhoneRef>,
    phones: PhoneTable<Phone<X>>,
    /// Where each user's phone sits: the newest session's (the edge holds one live session per
    /// user; a superseded one is on its way out). What the allocator says of a user (awards
    /// owed, a limit) reaches the phone without a pass over the table.
    by_user: HashMap<u64, PhoneRef>,
    awards: Arc<AwardBook>,
    /// Users the allocator limited, and until when (at most [`MAX_LIMITED_USERS`]).
    limited: HashMap<u64, u64>,
    /// How far the allocator's wall clock runs ahead of this edge's, milliseconds (negative:
    /// behind), from its last `Heartbeat` (0 until one comes). Its deadlines (a quota's
    /// validity, a user's limit) are times on its clock: read on this edge's own, a skew of a
    /// few seconds expired every quota on arrival and put the edge on its fallback rate.
    allocator_clock_ahead_ms: i64,
    /// When the load counts now accumulating began (monotonic microseconds).
    load_since_us: u64,
    counts: Counts,
    /// Verdicts in counts the shell has taken, and in the last stats sent: the difference is
    /// the next report's (kept apart so the shake path counts each verdict once).
    verdicts_taken: VerdictCounts,
    verdicts_reported: VerdictCounts,
}

impl<X> WorkerCore<X> {
    /// A worker named `name`, no phones yet, link down.
    pub fn new(
        settings: CoreSettings,
        name: WorkerName,
        awards: Arc<AwardBook>,
        now_us: u64,
    ) -> Self {
        Self {
            settings,
            admission: Admission::new(settings.admission, now_us),
            uplink: Uplink::new(name, settings.batches),
            phones: PhoneTable::default(),
            by_user: HashMap::new(),
            awards,
            limited: HashMap::new(),
            allocator_clock_ahead_ms: 0,
            load_since_us: now_us,
            counts: Counts::default(),
            verdicts_taken: VerdictCounts::default(),
            verdicts_reported: VerdictCounts::default(),
        }
    }

    /// How far the allocator's clock runs ahead of this edge's, milliseconds, as its last
    /// `Heartbeat` said (to a link delay's error).
    pub fn allocator_clock_ahead_ms(&self) -> i64 {
        self.allocator_clock_ahead_ms
    }

    /// Time `allocator_ms` on the allocator's clock, on this edge's.
    pub fn local_time_ms(&self, allocator_ms: u64) -> u64 {
        let local = i128::from(allocator_ms) - i128::from(self.allocator_clock_ahead_ms);
        u64::try_from(local.max(0)).unwrap_or(u64::MAX)
    }

    /// The uplink (the shell writes what it hands out).
    pub fn uplink(&mut self) -> &mut Uplink<PhoneRef> {
        &mut self.uplink
    }

    /// The allocator link came up: the uplink resends what is unanswered, and the rounds the
    /// allocator names first are all it has ([`Admission::on_link_up`]).
    pub fn on_link_up(&mut self) -> &mut Uplink<PhoneRef> {
        self.admission.on_link_up();
        // Another allocator may answer, one that sends no `Heartbeat` (an older build): the
        // last one's clock says nothing of it.
        self.allocator_clock_ahead_ms = 0;
        self.uplink.link_up();
        &mut self.uplink
    }

    /// The admission state (rounds, pacing).
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The admission state, to set the worker's pace.
    pub fn admission_mut(&mut self) -> &mut Admission {
        &mut self.admission
    }

    /// Phones connected to this worker.
    pub fn phones(&self) -> &PhoneTable<Phone<X>> {
        &self.phones
    }

    /// A phone of `user_id` started its session at `now_us`, with the shake bucket its user's
    /// last session left (`resumed`, if it has not refilled) or a full one.
    pub fn add_phone(
        &mut self,
        user_id: u64,
        ext: X,
        now_us: u64,
        resumed: Option<TokenBucket>,
    ) -> PhoneRef {
        let bucket = resumed.unwrap_or_else(|| self.admission.new_phone_bucket(now_us));
        let limited_until_ms = self.limited.get(&user_id).copied().unwrap_or(0);
        // What the allocator still owes this user (an award whose phone had gone) comes back
        // as `AwardsOwed`.
        self.uplink.want_awards(user_id);
        let at =
            self.phones.insert(Phone { user_id, bucket, limited_until_ms, acks_refused: 0, ext });
        self.by_user.insert(user_id, at);
        at
    }

    /// Users limited now (the table behind the per-phone mark).
    pub fn limited_users(&self) -> usize {
        self.limited.len()
    }

    /// A phone left.
    pub fn remove_phone(&mut self, at: PhoneRef) -> Option<Phone<X>> {
        let phone = self.phones.remove(at)?;
        // Unless a newer session of the user took the entry.
        if self.by_user.get(&phone.user_id) == Some(&at) {
            self.by_user.remove(&phone.user_id);
        }
        Some(phone)
    }

    /// Decides one shake of the phone at `at`; the outcome to send it (`None` if it left).
    #[inline]
    pub fn on_shake(
        &mut self,
        at: PhoneRef,
        shake: Shake,
        now_us: u64,
        now_ms: u64,
    ) -> Option<Outcome> {
        let Self { admission, uplink, phones, counts, .. } = self;
        let phone = phones.get_mut(at)?;
        if phone.limited_until_ms > now_ms {
            counts.user_limited += 1;
            counts.no_luck += 1;
            return Some(Outcome { seq: shake.seq, verdict: Verdict::NoLuck });
        }
        let verdict = match admission.decide(shake.round_id, &mut phone.bucket, now_us, now_ms) {
            Decision::Answer(verdict) => verdict,
            Decision::Admit { round_id } => {
                match uplink.batcher().push(round_id, phone.user_id, at, now_us, now_ms) {
                    Ok(()) => Verdict::Forwarded,
                    Err(_) => {
                        counts.backpressure += 1;
                        Verdict::NoLuck
                    }
                }
            }
        };
        match verdict {
            Verdict::NoLuck => counts.no_luck += 1,
            Verdict::SlowDown { .. } => counts.slow_down += 1,
            Verdict::RoundClosed => counts.round_closed += 1,
            Verdict::Forwarded => counts.forwarded += 1,
        }
        Some(Outcome { seq: shake.seq, verdict })
    }

    /// When the open batch must go (monotonic µs), if one is open.
    pub fn deadline_us(&self) -> Option<u64> {
        self.uplink.deadline_us()
    }

    /// Flushes the open batch if its age says so. True if one was flushed.
    pub fn poll_age(&mut self, now_us: u64) -> bool {
        self.uplink.batcher().poll_age(now_us)
    }

    /// Flushes the open batch now (draining). True if there was one.
    pub fn flush(&mut self, now_us: u64) -> bool {
        self.uplink.batcher().flush(now_us)
    }

    /// The phone at `at` acknowledged `award_id`. `Err` when the ack is refused and the phone
    /// already had [`MAX_REFUSED_AWARD_ACKS`](shake_proto::limits::MAX_REFUSED_AWARD_ACKS)
    /// refused: the shell closes it (`FLOOD`), so no phone takes the edge-wide book's lock
    /// more often than its awards and that allowance.
    pub fn on_award_ack(
        &mut self,
        at: PhoneRef,
        award_id: u64,
        now_ms: u64,
    ) -> Result<AckVerdict, AckFlood> {
        let Some(phone) = self.phones.get_mut(at) else { return Ok(AckVerdict::Unknown) };
        let verdict = self.awards.ack(award_id, phone.user_id, now_ms);
        match verdict {
            AckVerdict::Accepted => {
                self.counts.acks_accepted += 1;
                self.uplink.queue_ack(award_id);
                return Ok(verdict);
            }
            AckVerdict::Unknown => self.counts.acks_unknown += 1,
            AckVerdict::WrongUser => self.counts.acks_wrong_user += 1,
        }
        if phone.acks_refused >= shake_proto::limits::MAX_REFUSED_AWARD_ACKS {
            return Err(AckFlood);
        }
        phone.acks_refused += 1;
        Ok(verdict)
    }

    /// A frame from the allocator.
    pub fn on_allocator_frame(
        &mut self,
        frame: AllocatorFrame,
        now_us: u64,
        now_ms: u64,
        out: &mut Vec<PhoneEffect>,
    ) {
        if !matches!(frame, AllocatorFrame::RoundState { .. }) {
            let forgotten = self.admission.on_round_list_end(now_ms);
            if !forgotten.is_empty() {
                tracing::warn!(
                    forgotten = ?forgotten.iter().map(|r| r.round_id).collect::<Vec<_>>(),
                    "rounds the allocator no longer names (its configuration changed) are forgotten"
                );
            }
            let min_shake_interval_ms = self.admission.min_interval_ms();
            out.extend(forgotten.into_iter().map(|round| {
                PhoneEffect::Broadcast(ControlFrame::RoundNotice { round, min_shake_interval_ms })
            }));
        }
        match frame {
            AllocatorFrame::BatchResult { seq, digest, winners } => {
                let answered = match self.uplink.on_result(seq, digest) {
                    Answer::Matched(answered) => answered,
                    Answer::Mismatch { routes } => {
                        self.counts.answers_mismatched += 1;
                        tracing::error!(
                            seq,
                            winners = winners.len(),
                            "an answer from the allocator does not match the batch it names: no winner announced"
                        );
                        self.uplink.batcher().recycle(routes);
                        return;
                    }
                    Answer::Unknown => {
                        self.counts.answers_unknown += 1;
                        return;
                    }
                };
                if self.counts.answer_rtt_us.len() < 1024 {
                    self.counts.answer_rtt_us.push(now_us.saturating_sub(answered.flushed_us));
                }
                for winner in winners {
                    let Some(&at) = answered.routes.get(winner.entry_index as usize) else {
                        continue;
                    };
                    match self.phones.get_mut(at) {
                        Some(phone) => {
                            self.awards.sent(winner.award_id, phone.user_id, now_ms);
                            self.counts.awards_written += 1;
                            out.push(PhoneEffect::ToPhone(
                                at,
                                ControlFrame::Award {
                                    award_id: winner.award_id,
                                    round_id: answered.round_id,
                                    prize: winner.prize,
                                },
                            ));
                        }
                        // The phone is gone: the award stays undelivered in the ledger.
                        None => self.counts.awards_orphaned += 1,
                    }
                }
                self.uplink.batcher().recycle(answered.routes);
            }
            AllocatorFrame::Quota { round_id, rate_per_s, burst, valid_until_ms } => {
                let share = self.settings.workers.max(1) as f64;
                let rate =
                    Rate::new(f64::from(rate_per_s) / share, (f64::from(burst) / share).max(1.0));
                let valid_until_ms = self.local_time_ms(valid_until_ms);
                self.admission.on_quota(round_id, rate, valid_until_ms, now_ms);
            }
            AllocatorFrame::RoundState { round, min_shake_interval_ms } => {
                if self.admission.on_round_state(round, min_shake_interval_ms, now_ms) {
                    out.push(PhoneEffect::Broadcast(ControlFrame::RoundNotice {
                        round: self.admission.told(round),
                        min_shake_interval_ms: self.admission.min_interval_ms(),
                    }));
                }
            }
            AllocatorFrame::UsersLimited { until_ms, user_ids } => {
                self.on_users_limited(&user_ids, self.local_time_ms(until_ms), now_ms);
            }
            AllocatorFrame::AwardsOwed { user_id, awards } => {
                // To the session whose start asked for them (a user can start sessions as
                // often as the handshake rate lets it: no pass over the phones for each).
                if let Some(&at) = self.by_user.get(&user_id) {
                    for award in &awards {
                        self.awards.sent(award.award_id, user_id, now_ms);
                        self.counts.awards_owed_written += 1;
                        out.push(PhoneEffect::ToPhone(
                            at,
                            ControlFrame::Award {
                                award_id: award.award_id,
                                round_id: award.round_id,
                                prize: award.prize.clone(),
                            },
                        ));
                    }
                }
            }
            AllocatorFrame::Heartbeat { now_ms: allocator_now_ms } => {
                let ahead = i128::from(allocator_now_ms) - i128::from(now_ms);
                self.allocator_clock_ahead_ms = ahead.clamp(-(1 << 62), 1 << 62) as i64;
            }
            other => tracing::warn!(frame = other.name(), "unexpected frame from the allocator"),
        }
    }

    fn on_users_limited(&mut self, user_ids: &[u64], until_ms: u64, now_ms: u64) {
        if self.limited.len() + user_ids.len() > MAX_LIMITED_USERS {
            self.limited.retain(|_, until| *until > now_ms);
        }
        for &user in user_ids {
            if self.limited.len() >= MAX_LIMITED_USERS && !self.limited.contains_key(&user) {
                tracing::warn!("limited-user table full: a limited user is not refused here");
                break;
            }
            self.limited.insert(user, until_ms);
        }
        // Marked on the users' phones, so the shake path only compares a number; a phone
        // that starts later reads the table.
        for user in user_ids {
            let Some(&until) = self.limited.get(user) else { continue };
            let Some(&at) = self.by_user.get(user) else { continue };
            if let Some(phone) = self.phones.get_mut(at) {
                phone.limited_until_ms = until;
            }
        }
    }

    /// Once a second (about: the tick runs late under load): the load report and the worker's
    /// stats for the allocator, over the time since the last (monotonic `now_us`); limits
    /// that ended are forgotten, and the rounds that ended (all but the last).
    pub fn on_load_tick(&mut self, now_us: u64, now_ms: u64) {
        self.limited.retain(|_, until| *until > now_ms);
        self.admission.forget_ended(now_ms);
        let load = self.admission.take_load();
        let total = add_verdicts(self.verdicts_taken, &self.counts);
        let r = self.verdicts_reported;
        let verdicts = VerdictCounts {
            no_luck: total.no_luck - r.no_luck,
            slow_down: total.slow_down - r.slow_down,
            round_closed: total.round_closed - r.round_closed,
            forwarded: total.forwarded - r.forwarded,
        };
        self.verdicts_reported = total;
        let stats = WorkerStats { phones: self.phones.len() as u64, verdicts };
        // The window the counts cover, as it was: reported as a second, a tick running 10-30%
        // late under load read as that much more offered load, and drew that much more quota.
        let window_ms = now_us.saturating_sub(self.load_since_us).div_ceil(1000).max(1);
        self.load_since_us = now_us;
        self.uplink.queue_load(load, stats, u32::try_from(window_ms).unwrap_or(u32::MAX));
    }

    /// What was counted since the last call.
    pub fn take_counts(&mut self) -> Counts {
        self.verdicts_taken = add_verdicts(self.verdicts_taken, &self.counts);
        std::mem::take(&mut self.counts)
    }
}

/// `totals` plus the verdicts in `counts`.
fn add_verdicts(totals: VerdictCounts, counts: &Counts) -> VerdictCounts {
    VerdictCounts {
        no_luck: totals.no_luck + counts.no_luck,
        slow_down: totals.slow_down + counts.slow_down,
        round_closed: totals.round_closed + counts.round_closed,
        forwarded: totals.forwarded + counts.forwarded,
    }
}

/// Builds the per-worker settings from the edge's configuration.
pub fn settings_for(config: &crate::config::EdgeConfig, workers: usize) -> CoreSettings {
    let l = &config.limits;
    let share = workers.max(1) as f64;
    CoreSettings {
        admission: AdmissionSettings {
            phone: Rate::new(l.phone_rate_per_s, l.phone_burst),
            fallback: Rate::new(l.fallback_rate_per_s / share, (l.fallback_burst / share).max(1.0)),
        },
        batches: BatchSettings {
            max_entries: l.batch_max_entries,
            max_age_us: l.batch_max_age_us,
            max_in_flight: l.max_in_flight_batches,
        },
        workers,
    }
}
