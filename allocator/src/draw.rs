//! The draw: which entries of a batch win, and what. Sans-IO and deterministic: the clock is an
//! argument and every random choice is a hash of the round's seed and the entry's name
//! (edge, worker, instance, batch sequence, entry index), so the same input gives the same
//! answer.
//!
//! For each entry, in order: the round is open, the user is under the round's cap for some
//! kind, and a released, unawarded prize of such a kind is left -> award it. Which kind (when
//! the user may take either) and which item are chosen at random among what is left.

use std::collections::HashMap;

use shake_proto::limits::MAX_WINNERS_PER_RESULT;
use shake_proto::{Batch, Prize};

use crate::award::{Award, BatchKey};
use crate::config::{
    CashPool, GiftPool, MAX_CENTS_PER_POOL, MAX_PRIZES_PER_ROUND, Release, RoundConfig,
};
use crate::pool::{Item, Kind, Pool};
use crate::round_command::{Refusal, RoundAction, RoundCommand, RoundStatus, RoundTiming, Timings};
use crate::user_rate::UserRates;

/// Wins of one user in one round, by kind.
#[derive(Debug, Clone, Copy, Default)]
struct UserWins {
    cash: u8,
    gifts: u8,
}

/// One round's configuration, prizes and winners.
#[derive(Debug, Clone)]
pub struct RoundDraw {
    config: RoundConfig,
    /// The times and interval in force: the configuration's, as operator commands left them.
    timing: RoundTiming,
    pool: Pool,
    /// Each winner's wins, for the caps; emptied once the round is finished.
    wins: HashMap<u64, UserWins>,
    /// Closed for [`WINNERS_KEPT_AFTER_CLOSE_MS`]: draws nothing more, whatever the clock says,
    /// and its winners are forgotten ([`Draw::finish_closed`]).
    finished: bool,
    /// Top-ups applied so far: each one's items are split and ordered from a seed of its own.
    top_ups: u64,
}

impl RoundDraw {
    fn new(config: RoundConfig) -> Self {
        let pool = Pool::new(&config);
        let timing = RoundTiming::scheduled(
            config.id,
            config.starts_at_ms,
            config.ends_at_ms(),
            config.min_shake_interval_ms,
        );
        Self { config, timing, pool, wins: HashMap::new(), finished: false, top_ups: 0 }
    }

    /// The times and interval in force.
    pub fn timing(&self) -> &RoundTiming {
        &self.timing
    }

    /// The round's configuration.
    pub fn config(&self) -> &RoundConfig {
        &self.config
    }

    /// The round's prizes.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Open at `now_ms`?
    pub fn is_open(&self, now_ms: u64) -> bool {
        self.timing.is_open(now_ms)
    }

    /// How many items the release schedule has let out by `now_ms`.
    pub fn release_target(&self, now_ms: u64) -> usize {
        let total = self.pool.items().len();
        // Commands move these: extending a round spreads what is left over the longer time
        // (the target may dip below what is released; nothing more is released until it
        // catches up), a pause stops the clock, a top-up is released in proportion from the
        // moment it lands, and closing early leaves the rest unreleased.
        if now_ms < self.timing.starts_at_ms {
            return 0;
        }
        let (elapsed, whole) = self.timing.progress(now_ms);
        match self.config.release {
            Release::Immediate => total,
            Release::Linear if elapsed >= whole => total,
            Release::Linear => (total as u128 * u128::from(elapsed) / u128::from(whole)) as usize,
        }
    }

    /// Adds a top-up's prizes (checked already): a gift whose SKU the round has joins that
    /// pool, another becomes a new pool. The new items follow every existing one.
    fn top_up(&mut self, cash: Option<&CashPool>, gifts: &[GiftPool]) {
        self.top_ups += 1;
        let gift_items = self.config.top_up(cash, gifts);
        let seed = mix(self.config.seed ^ self.top_ups.rotate_left(32));
        self.pool.top_up(seed, cash, &gift_items);
    }

    fn cap(&self, kind: Kind) -> u8 {
        match kind {
            Kind::Cash => self.config.cash_per_user,
            Kind::Gift => self.config.gifts_per_user,
        }
    }

    /// The prize item `item` of the pool pays (`None` past the pool): what an award naming
    /// it must pay.
    pub fn prize_at(&self, item: u32) -> Option<Prize> {
        self.pool.items().get(item as usize).map(|&held| self.prize_of(held))
    }

    fn prize_of(&self, item: Item) -> Prize {
        match item {
            Item::Cash { cents } => Prize::Cash { cents },
            Item::Gift { pool } => {
                Prize::Gift { sku: self.config.gifts[pool as usize].sku.clone() }
            }
        }
    }

    /// The kind this user may still win, chosen with `random` when both are possible.
    fn choose_kind(&self, wins: UserWins, random: u64) -> Option<Kind> {
        let cash =
            if wins.cash < self.cap(Kind::Cash) { self.pool.available(Kind::Cash) } else { 0 };
        let gifts =
            if wins.gifts < self.cap(Kind::Gift) { self.pool.available(Kind::Gift) } else { 0 };
        match (cash, gifts) {
            (0, 0) => None,
            (_, 0) => Some(Kind::Cash),
            (0, _) => Some(Kind::Gift),
            (c, g) => {
                let cash_share = c as u64;
                Some(if random % ((c + g) as u64) < cash_share { Kind::Cash } else { Kind::Gift })
            }
        }
    }
}

/// How long a closed round's winners are remembered. A closed round never opens again (no
/// command reopens or extends it), so its table of winners, one entry per winner for the caps
/// (20-30 bytes each, hundreds of MB over a show of millions of awards, in every allocator
/// that leads or stands by), serves nothing; the margin is for a wall clock stepped back,
/// which would otherwise open the round again by its times.
pub const WINNERS_KEPT_AFTER_CLOSE_MS: u64 = 10 * 60 * 1000;

/// Every round, and the next award id.
#[derive(Debug, Clone)]
pub struct Draw {
    rounds: Vec<RoundDraw>,
    next_award_id: u64,
}

/// A ledger row names an item or round the configuration does not have: the ledger and the
/// configuration disagree, and the allocator must not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ledger award {award_id} does not fit the configured round {round_id}")]
pub struct RestoreError {
    /// The award that does not fit.
    pub award_id: u64,
    /// Its round.
    pub round_id: u32,
}

impl Draw {
    /// Fresh state for these rounds: every pool split and ordered from its seed.
    pub fn new(rounds: &[RoundConfig]) -> Self {
        Self { rounds: rounds.iter().cloned().map(RoundDraw::new).collect(), next_award_id: 1 }
    }

    /// The rounds.
    pub fn rounds(&self) -> &[RoundDraw] {
        &self.rounds
    }

    /// The round with this id.
    pub fn round(&self, round_id: u32) -> Option<&RoundDraw> {
        self.rounds.iter().find(|r| r.config.id == round_id)
    }

    /// Every round's timing now.
    pub fn timings(&self) -> Timings {
        Timings::new(self.rounds.iter().map(|r| r.timing))
    }

    /// What `command` would do, or why it may not (nothing changes).
    pub fn check_command(&self, command: &RoundCommand) -> Result<RoundTiming, Refusal> {
        let next = self.timings().check(command)?;
        if let (RoundAction::TopUp { cash, gifts }, Some(round)) =
            (&command.action, self.round(command.round_id))
        {
            let adding = gifts
                .iter()
                .fold(cash.as_ref().map_or(0, |c| c.envelopes), |n, g| n.saturating_add(g.count));
            if (round.pool.items().len() as u64).saturating_add(adding) > u64::from(u32::MAX) {
                return Err(Refusal::Invalid("more than 2^32 prizes in one round".into()));
            }
            // A gift pool's index is 16 bits.
            let known = &round.config.gifts;
            let mut new_skus: Vec<&str> = gifts
                .iter()
                .map(|g| g.sku.as_str())
                .filter(|sku| !known.iter().any(|k| k.sku == *sku))
                .collect();
            new_skus.sort_unstable();
            new_skus.dedup();
            if known.len() + new_skus.len() > usize::from(u16::MAX) + 1 {
                return Err(Refusal::Invalid("more than 65,536 gifts in one round".into()));
            }
        }
        Ok(next)
    }

    /// What a new `command` would do, or why it may not: [`Self::check_command`], and the
    /// bounds a round is held to now ([`RoundConfig::check_limits`], prizes a round may hold
    /// with its top-ups), which a command recorded by an earlier build is not held to when it
    /// is replayed (a ledger it wrote must still open).
    pub fn check_new_command(&self, command: &RoundCommand) -> Result<RoundTiming, Refusal> {
        // A finished round is closed whatever the clock says now: stepped back into its
        // times, `extend` or `top_up` passed the timing's checks and was recorded for a round
        // that draws no more. (Replays are not held to it: a standby finishes rounds by its
        // own clock, and a command its leader recorded must still apply.)
        if self.round(command.round_id).is_some_and(|round| round.finished) {
            return Err(Refusal::AlreadyClosed(command.round_id));
        }
        let next = self.check_command(command)?;
        match (&command.action, self.round(command.round_id)) {
            (RoundAction::Add { round }, _) => round
                .check_limits(&|field| format!("round.{field}"))
                .map_err(|e| Refusal::Invalid(e.to_string()))?,
            (RoundAction::TopUp { cash, gifts }, Some(round)) => {
                let adding = gifts.iter().fold(cash.as_ref().map_or(0, |c| c.envelopes), |n, g| {
                    n.saturating_add(g.count)
                });
                if (round.pool.items().len() as u64).saturating_add(adding) > MAX_PRIZES_PER_ROUND {
                    return Err(Refusal::Invalid(
                        "more than 200,000,000 prizes in one round, top-ups included".into(),
                    ));
                }
                let cents = |pool: Option<&CashPool>| pool.map_or(0, |c| c.total_cents);
                if cents(round.config.cash.as_ref()).saturating_add(cents(cash.as_ref()))
                    > MAX_CENTS_PER_POOL
                {
                    return Err(Refusal::Invalid(
                        "more than 1,000,000,000,000,000 cents in the round's cash pool, top-ups \
                         included"
                            .into(),
                    ));
                }
            }
            _ => {}
        }
        Ok(next)
    }

    /// Applies a command (checked again: a recorded command replays the same way). Replay
    /// every recorded command before restoring awards: an award may name a topped-up item or
    /// an added round.
    pub fn apply_command(&mut self, command: &RoundCommand) -> Result<RoundTiming, Refusal> {
        // A round added live and configured the same adds nothing when replayed; one that
        // differs from the configured round still refuses the replay.
        let configured = self.rounds.iter().map(|r| &r.config);
        if crate::round_command::adds_a_configured_round(command, configured)
            && let Some(round) = self.round(command.round_id)
        {
            return Ok(round.timing);
        }
        let next = self.check_command(command)?;
        match &command.action {
            RoundAction::Add { round } => self.rounds.push(RoundDraw::new(round.clone())),
            RoundAction::TopUp { cash, gifts } => {
                if let Some(round) =
                    self.rounds.iter_mut().find(|r| r.config.id == command.round_id)
                {
                    round.top_up(cash.as_ref(), gifts);
                }
            }
            _ => {}
        }
        if let Some(round) = self.rounds.iter_mut().find(|r| r.config.id == command.round_id) {
            round.timing = next;
        }
        Ok(next)
    }

    /// The next award id to be granted.
    pub fn next_award_id(&self) -> u64 {
        self.next_award_id
    }

    /// Replays an award read from the ledger (call for every row before any `decide`).
    pub fn restore(&mut self, award: &Award) -> Result<(), RestoreError> {
        let err = RestoreError { award_id: award.award_id, round_id: award.round_id };
        let round =
            self.rounds.iter_mut().find(|r| r.config.id == award.round_id).ok_or(err.clone())?;
        let item = *round.pool.items().get(award.item as usize).ok_or(err.clone())?;
        if round.prize_of(item) != award.prize || !round.pool.restore_awarded(award.item) {
            return Err(err);
        }
        if !round.finished {
            let wins = round.wins.entry(award.user_id).or_default();
            match item.kind() {
                Kind::Cash => wins.cash += 1,
                Kind::Gift => wins.gifts += 1,
            }
        }
        self.next_award_id = self.next_award_id.max(award.award_id + 1);
        Ok(())
    }

    /// Finishes every round closed for [`WINNERS_KEPT_AFTER_CLOSE_MS`] at `now_ms`: it draws
    /// nothing more, and its winners are forgotten. Call once its commands are applied (they
    /// move its times), before its awards are restored.
    pub fn finish_closed(&mut self, now_ms: u64) {
        for round in &mut self.rounds {
            let closed = round.timing.status(now_ms) == RoundStatus::Closed;
            let long_ago =
                now_ms >= round.timing.ends_at_ms.saturating_add(WINNERS_KEPT_AFTER_CLOSE_MS);
            if !round.finished && closed && long_ago {
                round.finished = true;
                round.wins = HashMap::new();
            }
        }
    }

    /// Winners remembered for the caps, over every round.
    pub fn winners_remembered(&self) -> usize {
        self.rounds.iter().map(|r| r.wins.len()).sum()
    }

    /// Draws the winners of `batch` at `now_ms`, appending their awards to `out`. An entry
    /// whose user is over the per-user rate (`rates`) is no-luck; only entries drawn while a
    /// prize is left count against the rate. At most [`MAX_WINNERS_PER_RESULT`] win: the entries
    /// after them are no-luck (their answer would not fit a frame). False if the batch's round
    /// is not known here or not open at `now_ms` (every entry no-luck): an edge whose clock or
    /// round table disagrees with this allocator's.
    pub fn decide(
        &mut self,
        key: BatchKey,
        batch: &Batch,
        now_ms: u64,
        rates: &mut UserRates,
        out: &mut Vec<Award>,
    ) -> bool {
        let Some(round) = self.rounds.iter_mut().find(|r| r.config.id == batch.round_id) else {
            return false;
        };
        if round.finished || !round.is_open(now_ms) {
            return false;
        }
        let target = round.release_target(now_ms);
        round.pool.release_until(target);
        let batch_seed = batch_seed(round.config.seed, key);
        let first_award = out.len();
        for (index, entry) in batch.entries().enumerate() {
            // The answer must fit one frame the edge accepts, whatever the winners win.
            if out.len() - first_award >= MAX_WINNERS_PER_RESULT {
                break;
            }
            // Most entries arrive after the released prizes are gone: one branch each. Only
            // entries that could win are counted against their user's rate (the others are
            // no-luck whatever the rate says).
            if round.pool.available(Kind::Cash) == 0 && round.pool.available(Kind::Gift) == 0 {
                break;
            }
            // The edge's clock: one far ahead of ours would set the user's next allowed time
            // past any shake of theirs to come, so it counts as at most a minute ahead.
            let shaken_at_ms = (batch.base_time_ms + u64::from(entry.offset_us / 1000))
                .min(now_ms.saturating_add(EDGE_CLOCK_AHEAD_MAX_MS));
            if !rates.admit(entry.user_id, shaken_at_ms) {
                continue;
            }
            let random = entry_random(batch_seed, index as u32);
            let wins = round.wins.get(&entry.user_id).copied().unwrap_or_default();
            let Some(kind) = round.choose_kind(wins, random) else { continue };
            // invariant: choose_kind only picks a kind with an available item.
            let Some(item) = round.pool.take(kind, mix(random)) else { continue };
            let wins = round.wins.entry(entry.user_id).or_default();
            match kind {
                Kind::Cash => wins.cash += 1,
                Kind::Gift => wins.gifts += 1,
            }
            let prize = round.prize_of(round.pool.items()[item as usize]);
            out.push(Award {
                award_id: self.next_award_id,
                round_id: batch.round_id,
                user_id: entry.user_id,
                item,
                prize,
                batch: key,
                entry_index: index as u32,
                granted_at_ms: now_ms,
                delivered: false,
            });
            self.next_award_id += 1;
        }
        true
    }
}

/// How far ahead of the allocator's clock an edge's shake time is taken as it says.
pub const EDGE_CLOCK_AHEAD_MAX_MS: u64 = 60_000;

/// The seed of every random choice in one batch.
pub fn batch_seed(round_seed: u64, key: BatchKey) -> u64 {
    let worker = mix(u64::from(key.worker_id) ^ mix(key.instance_id ^ mix(key.seq)));
    mix(round_seed ^ mix(key.edge_id ^ worker))
}

/// The random number of entry `index`: picks the kind; `mix` of it picks the item.
pub fn entry_random(batch_seed: u64, index: u32) -> u64 {
    mix(batch_seed ^ u64::from(index))
}

pub use shake_proto::mix;
