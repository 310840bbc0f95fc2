//! Live round commands: what an operator does to a round during the show (open it now,
//! extend it, close it early, change the shake interval). Sans-IO: a command carries the time
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
}

/// One operator command, as recorded in the ledger and shown in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundCommand {
    /// The idempotency key the operator's tool chose (1 to 64 bytes).
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

impl RoundCommand {
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
    /// Closing time, Unix milliseconds.
    pub ends_at_ms: u64,
    /// The shake interval phones are asked to keep.
    pub min_shake_interval_ms: u32,
}

impl RoundTiming {
    /// Open at `now_ms`?
    pub fn is_open(&self, now_ms: u64) -> bool {
        (self.starts_at_ms..self.ends_at_ms).contains(&now_ms)
    }

    /// The phase at `now_ms`, as edges and phones are told it.
    pub fn phase(&self, now_ms: u64) -> RoundPhase {
        if now_ms < self.starts_at_ms {
            RoundPhase::Waiting
        } else if now_ms < self.ends_at_ms {
            RoundPhase::Open
        } else {
            RoundPhase::Closed
        }
    }

    /// What `command` makes of this round, or why it may not.
    fn after(&self, command: &RoundCommand) -> Result<RoundTiming, Refusal> {
        let at = command.at_ms;
        let id = self.round_id;
        let mut next = *self;
        match command.action {
            RoundAction::Go => {
                if at >= self.ends_at_ms {
                    return Err(Refusal::AlreadyClosed(id));
                }
                if at >= self.starts_at_ms {
                    return Err(Refusal::AlreadyOpen(id));
                }
                next.starts_at_ms = at;
                next.ends_at_ms = at + (self.ends_at_ms - self.starts_at_ms);
            }
            RoundAction::Extend { by_ms } => {
                if by_ms == 0 || by_ms > MAX_EXTEND_MS {
                    return Err(Refusal::Invalid(format!(
                        "extend by 1 ms to {MAX_EXTEND_MS} ms, not {by_ms}"
                    )));
                }
                if at >= self.ends_at_ms {
                    return Err(Refusal::AlreadyClosed(id));
                }
                next.ends_at_ms += by_ms;
            }
            RoundAction::Close => {
                if at >= self.ends_at_ms {
                    return Err(Refusal::AlreadyClosed(id));
                }
                // A round that has not opened is cancelled: it opens and closes now.
                next.starts_at_ms = self.starts_at_ms.min(at);
                next.ends_at_ms = at;
            }
            RoundAction::Interval { ms } => {
                if !INTERVAL_RANGE_MS.contains(&ms) {
                    return Err(Refusal::Invalid(format!(
                        "interval {} ms to {} ms, not {ms}",
                        INTERVAL_RANGE_MS.start(),
                        INTERVAL_RANGE_MS.end()
                    )));
                }
                if at >= self.ends_at_ms {
                    return Err(Refusal::AlreadyClosed(id));
                }
                next.min_shake_interval_ms = ms;
            }
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
    /// the round exists and is in a phase the action allows, and no two rounds would overlap.
    pub fn check(&self, command: &RoundCommand) -> Result<RoundTiming, Refusal> {
        for (what, name) in [("command id", &command.command_id), ("issuer", &command.issued_by)] {
            if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
                return Err(Refusal::Invalid(format!("{what}: 1 to {MAX_NAME} printable bytes")));
            }
        }
        let current = self.get(command.round_id).ok_or(Refusal::UnknownRound(command.round_id))?;
        let next = current.after(command)?;
        for other in self.rounds.iter().filter(|r| r.round_id != command.round_id) {
            let overlaps = next.starts_at_ms < other.ends_at_ms
                && other.starts_at_ms < next.ends_at_ms
                && next.starts_at_ms < next.ends_at_ms
                && other.starts_at_ms < other.ends_at_ms;
            if overlaps {
                return Err(Refusal::Overlap { round: command.round_id, other: other.round_id });
            }
        }
        Ok(next)
    }

    /// Checks and applies `command`; the round's new timing.
    pub fn apply(&mut self, command: &RoundCommand) -> Result<RoundTiming, Refusal> {
        let next = self.check(command)?;
        if let Some(round) = self.rounds.iter_mut().find(|r| r.round_id == command.round_id) {
            *round = next;
        }
        Ok(next)
    }
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
    /// Takes a command (its `at_ms` set by the caller) against the rounds' timings now.
    pub fn submit(&mut self, command: RoundCommand, timings: &Timings) -> Submitted {
        if let Some(&index) = self.by_id.get(&command.command_id) {
            let first = &self.recorded[index];
            if first.round_id != command.round_id || first.action != command.action {
                return Submitted::Refused(Refusal::Invalid(format!(
                    "command id {} was used for another command",
                    command.command_id
                )));
            }
            return Submitted::Done(first.clone());
        }
        if let Some(pending) = &self.pending {
            return if pending.command_id == command.command_id {
                Submitted::Recording
            } else {
                Submitted::Busy
            };
        }
        match timings.check(&command) {
            Ok(_) => {
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
            RoundTiming {
                round_id: 1,
                starts_at_ms: 1_000,
                ends_at_ms: 2_000,
                min_shake_interval_ms: 100,
            },
            RoundTiming {
                round_id: 2,
                starts_at_ms: 5_000,
                ends_at_ms: 6_000,
                min_shake_interval_ms: 100,
            },
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
        assert_eq!(book.submit(go.clone(), &t), Submitted::Record(go.clone()));
        assert_eq!(book.submit(go.clone(), &t), Submitted::Recording);
        assert_eq!(book.submit(command(1, RoundAction::Close, 3_000), &t), Submitted::Busy);
        t.apply(&go).unwrap();
        book.recorded(&go);
        // A retry after the record (even a later one): the first outcome, nothing new.
        let mut retry = go.clone();
        retry.at_ms = 3_900;
        assert_eq!(book.submit(retry, &t), Submitted::Done(go.clone()));
        let mut reused = command(2, RoundAction::Close, 3_100);
        reused.command_id = go.command_id.clone();
        assert!(matches!(book.submit(reused, &t), Submitted::Refused(Refusal::Invalid(_))));
        assert!(matches!(
            book.submit(command(2, RoundAction::Go, 3_200), &t),
            Submitted::Refused(Refusal::AlreadyOpen(2))
        ));
        assert_eq!(book.log(), &[go]);
    }
}
