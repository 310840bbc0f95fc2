//! Live round commands: what an operator does to a round during the show (open it now,
//! extend it, pause and resume it, close it early, change the shake interval, add a round, top
//! up its prizes). Sans-IO: a command carries the time
//! the allocator accepted it, and applying it is a pure function of the round's timing, so the
//! ledger's record of commands replays to the same rounds after a restart or a takeover.
//!
//! A command is validated against every round ([`Timings::check`]), recorded durably, and
//! only then applied ([`Timings::apply`]) and pushed to the edges. Its `command_id` makes it
//! idempotent: the same id again gets the first outcome and changes nothing.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use shake_proto::RoundPhase;

use crate::award::CorruptRow;
use crate::config::{CashPool, GiftPool, RoundConfig, check_pools};

/// The longest a round may be extended by at once, milliseconds (a day).
pub const MAX_EXTEND_MS: u64 = 86_400_000;
/// The shake interval phones may be asked to keep, milliseconds.
pub const INTERVAL_RANGE_MS: std::ops::RangeInclusive<u32> = 10..=60_000;
/// The longest command id and issuer name, bytes.
pub const MAX_NAME: usize = 64;

/// What a command does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum RoundAction {
    /// Open a waiting round now (its length kept): the host said "shake now".
    Go,
    /// Move the close later.
    Extend {
        /// By this much, milliseconds.
        by_ms: u64,
    },
    /// Close now (an open round), or cancel a round that has not opened.
    Close,
    /// Ask phones to keep this interval between shakes, milliseconds.
    Interval {
        /// The interval.
        ms: u32,
    },
    /// Stop taking shakes now, keeping the time the round has left (an open round).
    Pause,
    /// Open a paused round again now, for the time it had left.
    Resume,
    /// A new round, checked as the configuration's rounds are; its id is the command's round.
    Add {
        /// The round, as it would be written in the configuration.
        round: RoundConfig,
    },
    /// More prizes for a round that has not closed: new envelopes split from `cash`, and
    /// gifts (a SKU the round has adds to that pool). Released on the round's schedule.
    TopUp {
        /// Cash to split into new envelopes.
        #[serde(default)]
        cash: Option<CashPool>,
        /// Gifts to add.
        #[serde(default)]
        gifts: Vec<GiftPool>,
    },
}

/// One operator command, as recorded in the ledger and shown in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundCommand {
    /// The idempotency key the operator's tool chose (1 to [`MAX_NAME`] printable bytes).
    pub command_id: String,
    /// The round.
    pub round_id: u32,
    /// What to do.
    #[serde(flatten)]
    pub action: RoundAction,
    /// Who asked (the admin credential's name, or what the CLI was told).
    pub issued_by: String,
    /// When the allocator accepted it, Unix milliseconds: the instant it takes effect.
    pub at_ms: u64,
}

impl RoundAction {
    /// Its name, as the audit log writes it (`action`).
    pub fn name(&self) -> &'static str {
        match self {
            RoundAction::Go => "go",
            RoundAction::Extend { .. } => "extend",
            RoundAction::Close => "close",
            RoundAction::Interval { .. } => "interval",
            RoundAction::Pause => "pause",
            RoundAction::Resume => "resume",
            RoundAction::Add { .. } => "add",
            RoundAction::TopUp { .. } => "top_up",
        }
    }
}

impl RoundCommand {
    /// Whether `other` asks for the same thing (the same round and action, whoever sent it
    /// and whenever): a retry under the same id.
    pub fn same_command(&self, other: &RoundCommand) -> bool {
        self.round_id == other.round_id && self.action == other.action
    }

    /// The stored form (JSON: readable in the ledger, and in SQL on PostgreSQL).
    pub fn encode(&self) -> Vec<u8> {
        // invariant: a plain struct of strings and integers always serializes.
        serde_json::to_vec(self).expect("a round command serializes")
    }

    /// Reads a stored command.
    pub fn decode(row: &[u8]) -> Result<Self, CorruptRow> {
        serde_json::from_slice(row).map_err(|_| CorruptRow)
    }
}

/// Why a command was refused (nothing was recorded or changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No round has this id.
    #[error("unknown round {0}")]
    UnknownRound(u32),
    /// `go` on a round that is open.
    #[error("round {0} is already open")]
    AlreadyOpen(u32),
    /// The round has closed: nothing changes it any more.
    #[error("round {0} is already closed")]
    AlreadyClosed(u32),
    /// `pause` on a round that is not open (waiting, or paused already).
    #[error("round {0} is not open")]
    NotOpen(u32),
    /// `go` on a paused round, or `resume` on one that is not paused.
    #[error("round {0} is paused: resume or close it")]
    Paused(u32),
    /// `resume` on a round that is not paused.
    #[error("round {0} is not paused")]
    NotPaused(u32),
    /// `add` with the id of a round that exists.
    #[error("round {0} exists already")]
    Exists(u32),
    /// The new times would overlap another round.
    #[error("round {round} would overlap round {other}")]
    Overlap {
        /// The round commanded.
        round: u32,
        /// The round it would overlap.
        other: u32,
    },
    /// A value out of range, or a malformed command.
    #[error("{0}")]
    Invalid(String),
}

/// One round's times and interval, as commands leave them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundTiming {
    /// The round.
    pub round_id: u32,
    /// Opening time, Unix milliseconds.
    pub starts_at_ms: u64,
    /// Closing time, Unix milliseconds (later by every pause that has ended).
    pub ends_at_ms: u64,
    /// The shake interval phones are asked to keep.
    pub min_shake_interval_ms: u32,
    /// When the pause in force began (none: not paused).
    pub paused_at_ms: Option<u64>,
    /// When the round's current open stretch began: the opening, or the last resume.
    pub resumed_at_ms: u64,
    /// Time spent in pauses that have ended, milliseconds.
    pub paused_ms: u64,
}

/// Where a round is, as the control room sees it (phones and edges see a paused round as
/// closed at its pause, and its new times when it resumes: [`RoundTiming::wire_times`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundStatus {
    /// Not open yet.
    Waiting,
    /// Taking shakes.
    Open,
    /// Paused by an operator.
    Paused,
    /// Over.
    Closed,
}

impl RoundStatus {
    /// The name the admin API and the dashboard use.
    pub fn name(self) -> &'static str {
        match self {
            RoundStatus::Waiting => "waiting",
            RoundStatus::Open => "open",
            RoundStatus::Paused => "paused",
            RoundStatus::Closed => "closed",
        }
    }
}

impl RoundTiming {
    /// A round as scheduled: opens at `starts_at_ms`, closes at `ends_at_ms`.
    pub fn scheduled(round_id: u32, starts_at_ms: u64, ends_at_ms: u64, interval_ms: u32) -> Self {
        Self {
            round_id,
            starts_at_ms,
            ends_at_ms,
            min_shake_interval_ms: interval_ms,
            paused_at_ms: None,
            resumed_at_ms: starts_at_ms,
            paused_ms: 0,
        }
    }

    /// Where the round is at `now_ms`.
    pub fn status(&self, now_ms: u64) -> RoundStatus {
        if self.paused_at_ms.is_some_and(|p| now_ms >= p) {
            RoundStatus::Paused
        } else if now_ms < self.starts_at_ms {
            RoundStatus::Waiting
        } else if now_ms < self.ends_at_ms {
            RoundStatus::Open
        } else {
            RoundStatus::Closed
        }
    }

    /// Open at `now_ms`?
    pub fn is_open(&self, now_ms: u64) -> bool {
        self.status(now_ms) == RoundStatus::Open
    }

    /// The phase at `now_ms`, as edges and phones are told it (a pause is a close).
    pub fn phase(&self, now_ms: u64) -> RoundPhase {
        match self.status(now_ms) {
            RoundStatus::Waiting => RoundPhase::Waiting,
            RoundStatus::Open => RoundPhase::Open,
            RoundStatus::Paused | RoundStatus::Closed => RoundPhase::Closed,
        }
    }

    /// The opening and closing times edges and phones are told: the current open stretch
    /// (a paused round closed at its pause; a resumed one opening at its resume), so they go
    /// on deciding by times alone.
    pub fn wire_times(&self) -> (u64, u64) {
        (self.resumed_at_ms, self.paused_at_ms.unwrap_or(self.ends_at_ms))
    }

    /// How far through its open time the round is at `now_ms` (pauses not counted): the
    /// elapsed and the whole, milliseconds. The release schedule follows this.
    pub fn progress(&self, now_ms: u64) -> (u64, u64) {
        let whole = (self.ends_at_ms - self.starts_at_ms).saturating_sub(self.paused_ms);
        let until = self.paused_at_ms.map_or(now_ms, |p| p.min(now_ms));
        let elapsed = until.saturating_sub(self.starts_at_ms).saturating_sub(self.paused_ms);
        (elapsed.min(whole), whole)
    }

    /// Closed for good at `at`? (A paused round is not: it may resume.)
    fn closed_by(&self, at: u64) -> bool {
        self.paused_at_ms.is_none() && at >= self.ends_at_ms
    }

    /// The stretch from `at` on in which this round will be open, as far as is known: none
    /// once closed, and none while paused (a resume is checked against the others when it
    /// comes). Only what is ahead can overlap: what is past was checked when it was ahead.
    fn ahead(&self, at: u64) -> Option<(u64, u64)> {
        if self.paused_at_ms.is_some() {
            return None;
        }
        let from = at.max(self.starts_at_ms);
        (from < self.ends_at_ms).then_some((from, self.ends_at_ms))
    }

    /// What `command` makes of this round, or why it may not.
    fn after(&self, command: &RoundCommand) -> Result<RoundTiming, Refusal> {
        let at = command.at_ms;
        let id = self.round_id;
        let mut next = *self;
        let status = self.status(at);
        match &command.action {
            RoundAction::Go => match status {
                RoundStatus::Waiting => {
                    next.starts_at_ms = at;
                    next.resumed_at_ms = at;
                    next.ends_at_ms = at.saturating_add(self.ends_at_ms - self.starts_at_ms);
                }
                RoundStatus::Open => return Err(Refusal::AlreadyOpen(id)),
                RoundStatus::Paused => return Err(Refusal::Paused(id)),
                RoundStatus::Closed => return Err(Refusal::AlreadyClosed(id)),
            },
            RoundAction::Extend { by_ms } => {
                if *by_ms == 0 || *by_ms > MAX_EXTEND_MS {
                    return Err(Refusal::Invalid(format!(
                        "extend by 1 ms to {MAX_EXTEND_MS} ms, not {by_ms}"
                    )));
                }
                if self.closed_by(at) {
                    return Err(Refusal::AlreadyClosed(id));
                }
                next.ends_at_ms = next.ends_at_ms.saturating_add(*by_ms);
            }
            RoundAction::Close => {
                if self.closed_by(at) {
                    return Err(Refusal::AlreadyClosed(id));
                }
                // A paused round ends at its pause; one that has not opened is cancelled: it
                // opens and closes now.
                let end = self.paused_at_ms.unwrap_or(at);
                next.starts_at_ms = self.starts_at_ms.min(end);
                next.resumed_at_ms = self.resumed_at_ms.min(end);
                next.ends_at_ms = end;
                next.paused_at_ms = None;
            }
            RoundAction::Interval { ms } => {
                if !INTERVAL_RANGE_MS.contains(ms) {
                    return Err(Refusal::Invalid(format!(
                        "interval {} ms to {} ms, not {ms}",
                        INTERVAL_RANGE_MS.start(),
                        INTERVAL_RANGE_MS.end()
                    )));
                }
                if self.closed_by(at) {
                    return Err(Refusal::AlreadyClosed(id));
                }
                next.min_shake_interval_ms = *ms;
            }
            RoundAction::Pause => match status {
                RoundStatus::Open => next.paused_at_ms = Some(at),
                RoundStatus::Waiting | RoundStatus::Paused => return Err(Refusal::NotOpen(id)),
                RoundStatus::Closed => return Err(Refusal::AlreadyClosed(id)),
            },
            RoundAction::Resume => match (status, self.paused_at_ms) {
                (RoundStatus::Paused, Some(paused_at)) => {
                    let pause = at - paused_at;
                    next.paused_at_ms = None;
                    next.paused_ms += pause;
                    next.ends_at_ms = next.ends_at_ms.saturating_add(pause);
                    next.resumed_at_ms = at;
                }
                (RoundStatus::Closed, _) => return Err(Refusal::AlreadyClosed(id)),
                _ => return Err(Refusal::NotPaused(id)),
            },
            RoundAction::TopUp { cash, gifts } => {
                if self.closed_by(at) {
                    return Err(Refusal::AlreadyClosed(id));
                }
                if cash.is_none() && gifts.is_empty() {
                    return Err(Refusal::Invalid("a top-up needs cash or gifts".into()));
                }
                check_pools(cash.as_ref(), gifts, &|field| format!("top_up.{field}"))
                    .map_err(|e| Refusal::Invalid(e.to_string()))?;
            }
            RoundAction::Add { .. } => return Err(Refusal::Exists(id)),
        }
        Ok(next)
    }
}

/// Every round's timing: what the commands are checked against and applied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timings {
    rounds: Vec<RoundTiming>,
}

impl Timings {
    /// The rounds as configured.
    pub fn new(rounds: impl IntoIterator<Item = RoundTiming>) -> Self {
        Self { rounds: rounds.into_iter().collect() }
    }

    /// One round's timing.
    pub fn get(&self, round_id: u32) -> Option<&RoundTiming> {
        self.rounds.iter().find(|r| r.round_id == round_id)
    }

    /// Every round's timing, in configuration order.
    pub fn all(&self) -> &[RoundTiming] {
        &self.rounds
    }

    /// What `command` would make of its round, or why it may not: its names are well formed,
    /// the round exists (or, to add one, does not) and is in a phase the action allows, and no
    /// two rounds would be open at once from now on.
    pub fn check(&self, command: &RoundCommand) -> Result<RoundTiming, Refusal> {
        for (what, name) in [("command id", &command.command_id), ("issuer", &command.issued_by)] {
            if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
                return Err(Refusal::Invalid(format!("{what}: 1 to {MAX_NAME} printable bytes")));
            }
        }
        let next = match (&command.action, self.get(command.round_id)) {
            (RoundAction::Add { round }, None) => added(round, command)?,
            (_, Some(current)) => current.after(command)?,
            (_, None) => return Err(Refusal::UnknownRound(command.round_id)),
        };
        if let Some((from, until)) = next.ahead(command.at_ms) {
            for other in self.rounds.iter().filter(|r| r.round_id != command.round_id) {
                if other.ahead(command.at_ms).is_some_and(|(f, u)| from < u && f < until) {
                    return Err(Refusal::Overlap {
                        round: command.round_id,
                        other: other.round_id,
                    });
                }
            }
        }
        Ok(next)
    }

    /// Checks and applies `command`; the round's new timing.
    pub fn apply(&mut self, command: &RoundCommand) -> Result<RoundTiming, Refusal> {
        let next = self.check(command)?;
        match self.rounds.iter_mut().find(|r| r.round_id == command.round_id) {
            Some(round) => *round = next,
            None => self.rounds.push(next),
        }
        Ok(next)
    }
}

/// Whether `command` adds a round that `configured` holds already, the same: a round added
/// during the show and then written into the configuration, as an operator keeps the file true
/// for the next show. Replayed, such a command adds nothing (a live `add` of a round that
/// exists is refused before it is recorded).
pub fn adds_a_configured_round<'a>(
    command: &RoundCommand,
    mut configured: impl Iterator<Item = &'a RoundConfig>,
) -> bool {
    matches!(&command.action, RoundAction::Add { round } if configured.any(|c| c == round))
}

/// What `command` makes of the rounds as configured: a round added, prizes topped up (a
/// settlement check reads the configuration and the audit log through this). Other commands
/// change only times, which the configuration does not hold.
pub fn apply_to_rounds(rounds: &mut Vec<RoundConfig>, command: &RoundCommand) {
    if adds_a_configured_round(command, rounds.iter()) {
        return;
    }
    match &command.action {
        RoundAction::Add { round } => rounds.push(round.clone()),
        RoundAction::TopUp { cash, gifts } => {
            if let Some(round) = rounds.iter_mut().find(|r| r.id == command.round_id) {
                round.top_up(cash.as_ref(), gifts);
            }
        }
        _ => {}
    }
}

/// The timing of a round `command` adds, checked as the configuration's rounds are.
fn added(round: &RoundConfig, command: &RoundCommand) -> Result<RoundTiming, Refusal> {
    if round.id != command.round_id {
        return Err(Refusal::Invalid(format!(
            "the round's id {} is not the command's round {}",
            round.id, command.round_id
        )));
    }
    round.check(&|field| format!("round.{field}")).map_err(|e| Refusal::Invalid(e.to_string()))?;
    if round.ends_at_ms() <= command.at_ms {
        return Err(Refusal::Invalid(format!("round {} would close before now", round.id)));
    }
    Ok(RoundTiming::scheduled(
        round.id,
        round.starts_at_ms,
        round.ends_at_ms(),
        round.min_shake_interval_ms,
    ))
}

/// What became of a submitted command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Valid and new: record it durably, then apply it ([`CommandBook::recorded`]).
    Record(RoundCommand),
    /// This command is being recorded now (a retry of the same id): wait for it.
    Recording,
    /// Recorded before under this id: this is the command that took effect.
    Done(RoundCommand),
    /// Refused; nothing recorded or changed.
    Refused(Refusal),
    /// Another command is being recorded: retry in a moment.
    Busy,
}

/// The commands recorded so far (the audit log, in order) and the one being recorded: one at
/// a time, so each is checked against the rounds as every earlier one left them.
#[derive(Debug, Default)]
pub struct CommandBook {
    recorded: Vec<RoundCommand>,
    by_id: HashMap<String, usize>,
    pending: Option<RoundCommand>,
}

impl CommandBook {
    /// Takes a command (its `at_ms` set by the caller), checked by `check` against the rounds
    /// as they are now.
    pub fn submit(
        &mut self,
        command: RoundCommand,
        check: impl FnOnce(&RoundCommand) -> Result<(), Refusal>,
    ) -> Submitted {
        let used_for_another = |first: &RoundCommand| {
            Submitted::Refused(Refusal::Invalid(format!(
                "command id {} was used for another command",
                first.command_id
            )))
        };
        if let Some(&index) = self.by_id.get(&command.command_id) {
            let first = &self.recorded[index];
            if !first.same_command(&command) {
                return used_for_another(first);
            }
            return Submitted::Done(first.clone());
        }
        if let Some(pending) = &self.pending {
            return if pending.command_id != command.command_id {
                Submitted::Busy
            } else if pending.same_command(&command) {
                Submitted::Recording
            } else {
                // Answering this one with the pending command's outcome would tell its caller
                // that a different command took effect.
                used_for_another(pending)
            };
        }
        match check(&command) {
            Ok(()) => {
                self.pending = Some(command.clone());
                Submitted::Record(command)
            }
            Err(refusal) => Submitted::Refused(refusal),
        }
    }

    /// The pending command is durable: it joins the log.
    pub fn recorded(&mut self, command: &RoundCommand) {
        if self.pending.as_ref().is_some_and(|p| p.command_id == command.command_id) {
            self.pending = None;
        }
        self.replay(command.clone());
    }

    /// A command read back from the ledger.
    pub fn replay(&mut self, command: RoundCommand) {
        self.by_id.insert(command.command_id.clone(), self.recorded.len());
        self.recorded.push(command);
    }

    /// Every recorded command, in order.
    pub fn log(&self) -> &[RoundCommand] {
        &self.recorded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings() -> Timings {
        Timings::new([
            RoundTiming::scheduled(1, 1_000, 2_000, 100),
            RoundTiming::scheduled(2, 5_000, 6_000, 100),
        ])
    }

    fn command(round_id: u32, action: RoundAction, at_ms: u64) -> RoundCommand {
        RoundCommand {
            command_id: format!("c-{round_id}-{at_ms}"),
            round_id,
            action,
            issued_by: "director".into(),
            at_ms,
        }
    }

    #[test]
    fn go_opens_a_waiting_round_now_and_keeps_its_length() {
        let mut t = timings();
        let opened = t.apply(&command(2, RoundAction::Go, 3_000)).unwrap();
        assert_eq!((opened.starts_at_ms, opened.ends_at_ms), (3_000, 4_000));
        assert!(opened.is_open(3_000));
        assert_eq!(t.apply(&command(2, RoundAction::Go, 3_500)), Err(Refusal::AlreadyOpen(2)));
        assert_eq!(t.apply(&command(2, RoundAction::Go, 4_000)), Err(Refusal::AlreadyClosed(2)));
        // Round 1 is open at 1,500: going again is refused, and round 2 may not open over it.
        assert_eq!(t.check(&command(1, RoundAction::Go, 1_500)), Err(Refusal::AlreadyOpen(1)));
        let mut fresh = timings();
        assert_eq!(
            fresh.apply(&command(2, RoundAction::Go, 1_500)),
            Err(Refusal::Overlap { round: 2, other: 1 })
        );
    }

    #[test]
    fn extend_close_and_interval_change_only_a_live_round() {
        let mut t = timings();
        let extended = t.apply(&command(1, RoundAction::Extend { by_ms: 500 }, 1_200)).unwrap();
        assert_eq!(extended.ends_at_ms, 2_500);
        assert!(matches!(
            t.check(&command(1, RoundAction::Extend { by_ms: 3_000 }, 1_200)),
            Err(Refusal::Overlap { round: 1, other: 2 })
        ));
        assert!(matches!(
            t.check(&command(1, RoundAction::Extend { by_ms: 0 }, 1_200)),
            Err(Refusal::Invalid(_))
        ));
        let interval = t.apply(&command(1, RoundAction::Interval { ms: 250 }, 1_300)).unwrap();
        assert_eq!(interval.min_shake_interval_ms, 250);
        assert!(matches!(
            t.check(&command(1, RoundAction::Interval { ms: 5 }, 1_300)),
            Err(Refusal::Invalid(_))
        ));
        let closed = t.apply(&command(1, RoundAction::Close, 1_400)).unwrap();
        assert_eq!((closed.starts_at_ms, closed.ends_at_ms), (1_000, 1_400));
        assert!(!closed.is_open(1_400));
        for action in [RoundAction::Close, RoundAction::Extend { by_ms: 1 }, RoundAction::Go] {
            assert_eq!(t.check(&command(1, action, 1_500)), Err(Refusal::AlreadyClosed(1)));
        }
        // A round closed before it opened never opens.
        let cancelled = t.apply(&command(2, RoundAction::Close, 1_500)).unwrap();
        assert_eq!((cancelled.starts_at_ms, cancelled.ends_at_ms), (1_500, 1_500));
        assert!(!cancelled.is_open(1_500));
        assert_eq!(t.check(&command(9, RoundAction::Close, 1)), Err(Refusal::UnknownRound(9)));
    }

    #[test]
    fn names_are_bounded_and_records_round_trip() {
        let t = timings();
        let mut bad = command(1, RoundAction::Close, 1_500);
        bad.command_id = String::new();
        assert!(matches!(t.check(&bad), Err(Refusal::Invalid(_))));
        bad.command_id = "x".repeat(MAX_NAME + 1);
        assert!(matches!(t.check(&bad), Err(Refusal::Invalid(_))));
        bad.command_id = "ok".into();
        bad.issued_by = "a\nb".into();
        assert!(matches!(t.check(&bad), Err(Refusal::Invalid(_))));
        for action in [
            RoundAction::Go,
            RoundAction::Extend { by_ms: 30_000 },
            RoundAction::Close,
            RoundAction::Interval { ms: 400 },
        ] {
            let c = command(3, action, 77);
            assert_eq!(RoundCommand::decode(&c.encode()), Ok(c));
        }
        assert_eq!(RoundCommand::decode(b"{}"), Err(CorruptRow));
    }

    #[test]
    fn the_book_takes_one_command_at_a_time_and_answers_repeats_the_same() {
        let mut t = timings();
        let mut book = CommandBook::default();
        let go = command(2, RoundAction::Go, 3_000);
        assert_eq!(
            book.submit(go.clone(), |c| t.check(c).map(drop)),
            Submitted::Record(go.clone())
        );
        assert_eq!(book.submit(go.clone(), |c| t.check(c).map(drop)), Submitted::Recording);
        // The same id for another command while the first is being recorded: refused, not
        // answered with the first one's outcome.
        let mut reused_early = command(3, RoundAction::Go, 3_050);
        reused_early.command_id = go.command_id.clone();
        assert!(matches!(
            book.submit(reused_early, |c| t.check(c).map(drop)),
            Submitted::Refused(Refusal::Invalid(_))
        ));
        assert_eq!(
            book.submit(command(1, RoundAction::Close, 3_000), |c| t.check(c).map(drop)),
            Submitted::Busy
        );
        t.apply(&go).unwrap();
        book.recorded(&go);
        // A retry after the record (even a later one): the first outcome, nothing new.
        let mut retry = go.clone();
        retry.at_ms = 3_900;
        assert_eq!(book.submit(retry, |c| t.check(c).map(drop)), Submitted::Done(go.clone()));
        let mut reused = command(2, RoundAction::Close, 3_100);
        reused.command_id = go.command_id.clone();
        assert!(matches!(
            book.submit(reused, |c| t.check(c).map(drop)),
            Submitted::Refused(Refusal::Invalid(_))
        ));
        assert!(matches!(
            book.submit(command(2, RoundAction::Go, 3_200), |c| t.check(c).map(drop)),
            Submitted::Refused(Refusal::AlreadyOpen(2))
        ));
        assert_eq!(book.log(), &[go]);
    }

    #[test]
    fn a_pause_stops_the_clock_and_a_resume_keeps_the_time_left() {
        let mut t = timings();
        assert_eq!(t.check(&command(1, RoundAction::Pause, 900)), Err(Refusal::NotOpen(1)));
        let paused = t.apply(&command(1, RoundAction::Pause, 1_400)).unwrap();
        assert_eq!(paused.status(1_400), RoundStatus::Paused);
        assert_eq!(paused.status(9_000), RoundStatus::Paused, "a pause outlasts the close time");
        assert!(!paused.is_open(1_500));
        assert_eq!(paused.phase(1_500), RoundPhase::Closed);
        assert_eq!(paused.wire_times(), (1_000, 1_400));
        assert_eq!(paused.progress(3_000), (400, 1_000));
        for (action, refusal) in
            [(RoundAction::Pause, Refusal::NotOpen(1)), (RoundAction::Go, Refusal::Paused(1))]
        {
            assert_eq!(t.check(&command(1, action, 1_500)), Err(refusal));
        }
        // Extended while paused: the time left grows.
        t.apply(&command(1, RoundAction::Extend { by_ms: 100 }, 1_600)).unwrap();
        // Resumed at 3,000 for the 700 ms it had left; the release clock skips the pause.
        let resumed = t.apply(&command(1, RoundAction::Resume, 3_000)).unwrap();
        assert_eq!((resumed.resumed_at_ms, resumed.ends_at_ms), (3_000, 3_700));
        assert_eq!(resumed.wire_times(), (3_000, 3_700));
        assert!(resumed.is_open(3_000) && resumed.is_open(3_699) && !resumed.is_open(3_700));
        assert_eq!(resumed.progress(3_200), (600, 1_100));
        assert_eq!(t.check(&command(1, RoundAction::Resume, 3_100)), Err(Refusal::NotPaused(1)));
        // A second pause and a close during it: the round ends at that pause.
        t.apply(&command(1, RoundAction::Pause, 3_500)).unwrap();
        let closed = t.apply(&command(1, RoundAction::Close, 4_500)).unwrap();
        assert_eq!((closed.ends_at_ms, closed.paused_at_ms), (3_500, None));
        assert_eq!(closed.status(4_500), RoundStatus::Closed);
        assert_eq!(
            t.check(&command(1, RoundAction::Resume, 4_600)),
            Err(Refusal::AlreadyClosed(1))
        );
    }

    #[test]
    fn a_resume_may_not_overlap_a_round_opened_during_the_pause() {
        let mut t = timings();
        t.apply(&command(1, RoundAction::Pause, 1_500)).unwrap();
        // Round 2 may go while round 1 is paused (nothing is known of round 1's future)...
        t.apply(&command(2, RoundAction::Go, 1_600)).unwrap();
        // ...and round 1 resumes only once round 2 is over.
        assert_eq!(
            t.check(&command(1, RoundAction::Resume, 1_700)),
            Err(Refusal::Overlap { round: 1, other: 2 })
        );
        t.apply(&command(2, RoundAction::Close, 1_800)).unwrap();
        let resumed = t.apply(&command(1, RoundAction::Resume, 1_900)).unwrap();
        assert_eq!(resumed.wire_times(), (1_900, 2_400));
    }

    fn round_config(id: u32, starts_at_ms: u64) -> RoundConfig {
        RoundConfig {
            id,
            starts_at_ms,
            duration_s: 1,
            seed: 3,
            release: crate::config::Release::Linear,
            cash_per_user: 1,
            gifts_per_user: 1,
            min_shake_interval_ms: 100,
            start_spread_ms: 0,
            cash: Some(CashPool { total_cents: 100, envelopes: 10, min_cents: 1 }),
            gifts: Vec::new(),
        }
    }

    #[test]
    fn an_added_round_is_checked_as_the_configuration_is() {
        let mut t = timings();
        let add = |round: RoundConfig, at| command(round.id, RoundAction::Add { round }, at);
        assert_eq!(t.check(&add(round_config(1, 8_000), 100)), Err(Refusal::Exists(1)));
        assert_eq!(
            t.check(&add(round_config(3, 5_500), 100)),
            Err(Refusal::Overlap { round: 3, other: 2 })
        );
        let mut no_prizes = round_config(3, 8_000);
        no_prizes.cash = None;
        assert!(
            matches!(t.check(&add(no_prizes, 100)), Err(Refusal::Invalid(e)) if e.contains("round.cash"))
        );
        assert!(matches!(t.check(&add(round_config(3, 100), 2_000)), Err(Refusal::Invalid(_))));
        let mut wrong_id = add(round_config(3, 8_000), 100);
        wrong_id.round_id = 4;
        assert!(matches!(t.check(&wrong_id), Err(Refusal::Invalid(_))));
        let added = t.apply(&add(round_config(3, 8_000), 100)).unwrap();
        assert_eq!((added.starts_at_ms, added.ends_at_ms), (8_000, 9_000));
        assert_eq!(t.get(3), Some(&added));
        let stored = add(round_config(4, 10_000), 100);
        assert_eq!(RoundCommand::decode(&stored.encode()), Ok(stored));
    }

    /// An action's name is the `action` its JSON carries (the audit log's, and the errors').
    #[test]
    fn an_actions_name_is_its_json_tag() {
        let actions = [
            RoundAction::Go,
            RoundAction::Extend { by_ms: 1 },
            RoundAction::Close,
            RoundAction::Interval { ms: 100 },
            RoundAction::Pause,
            RoundAction::Resume,
            RoundAction::Add { round: round_config(9, 1_000) },
            RoundAction::TopUp { cash: None, gifts: vec![] },
        ];
        for action in actions {
            let json = serde_json::to_value(&action).unwrap();
            assert_eq!(json["action"], action.name(), "{json}");
        }
    }

    #[test]
    fn a_top_up_needs_valid_pools_and_a_round_not_closed() {
        let t = timings();
        let top_up = |cash: Option<CashPool>, gifts: Vec<GiftPool>, at| {
            command(1, RoundAction::TopUp { cash, gifts }, at)
        };
        let cash = CashPool { total_cents: 500, envelopes: 5, min_cents: 1 };
        let mug = GiftPool { sku: "mug".into(), name: "Mug".into(), count: 2 };
        assert!(t.check(&top_up(Some(cash.clone()), vec![mug.clone()], 1_500)).is_ok());
        assert!(matches!(t.check(&top_up(None, Vec::new(), 1_500)), Err(Refusal::Invalid(_))));
        let too_small = CashPool { total_cents: 4, ..cash.clone() };
        assert!(matches!(
            t.check(&top_up(Some(too_small), Vec::new(), 1_500)),
            Err(Refusal::Invalid(e)) if e.contains("top_up.cash.total_cents")
        ));
        let no_sku = GiftPool { sku: String::new(), ..mug.clone() };
        assert!(matches!(t.check(&top_up(None, vec![no_sku], 1_500)), Err(Refusal::Invalid(_))));
        assert_eq!(
            t.check(&top_up(Some(cash.clone()), Vec::new(), 2_000)),
            Err(Refusal::AlreadyClosed(1))
        );
        let stored = top_up(Some(cash), vec![mug], 1_500);
        assert_eq!(RoundCommand::decode(&stored.encode()), Ok(stored));
    }

    #[test]
    fn the_configured_rounds_follow_additions_and_top_ups() {
        let mut rounds = vec![round_config(1, 1_000)];
        let mug = GiftPool { sku: "mug".into(), name: "Mug".into(), count: 2 };
        let top_up = RoundAction::TopUp {
            cash: Some(CashPool { total_cents: 50, envelopes: 5, min_cents: 2 }),
            gifts: vec![mug.clone(), GiftPool { count: 3, ..mug }],
        };
        apply_to_rounds(&mut rounds, &command(1, top_up, 1_500));
        apply_to_rounds(&mut rounds, &command(1, RoundAction::Close, 1_600));
        apply_to_rounds(
            &mut rounds,
            &command(2, RoundAction::Add { round: round_config(2, 5_000) }, 1_700),
        );
        let cash = rounds[0].cash.as_ref().unwrap();
        assert_eq!((cash.total_cents, cash.envelopes, cash.min_cents), (150, 15, 1));
        assert_eq!(rounds[0].gifts.len(), 1, "one SKU, one pool");
        assert_eq!(rounds[0].gifts[0].count, 5);
        assert_eq!(rounds.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2]);
        // A round added live and also configured, the same, is there once (the allocator's
        // replay skips it too: `shake-swarm verify` added it twice, its pools doubled).
        let mut configured = vec![round_config(1, 1_000), round_config(2, 5_000)];
        apply_to_rounds(
            &mut configured,
            &command(2, RoundAction::Add { round: round_config(2, 5_000) }, 1_700),
        );
        assert_eq!(configured.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2]);
    }
}
