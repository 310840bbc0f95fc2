//! The durable award ledger: one interface ([`LedgerStore`]), two stores.
//!
//! - [`fjall`]: embedded, in a directory on local disk; the default for one machine and for
//!   `scripts/demo.sh`.
//! - [`postgres`]: PostgreSQL (with synchronous streaming replication for high
//!   availability); awards readable with SQL on any replica while the show runs. Its
//!   [`lease`] elects one leader among several allocators and fences the others.
//!
//! Both keep the same things: every award, its delivery mark, the exact answer of each batch
//! its edge has not confirmed yet, each edge worker's record, and every worker instance ever
//! retired. Writes come in groups, one atomic and durable write each; nothing is announced to
//! an edge before its group returned.
//! `tests/ledger_stores.rs` runs the same suite over both.

mod commit_statements;
pub mod deadline;
pub mod delivery_marks;
pub mod fjall;
pub mod follow;
pub mod lanes;
pub mod lease;
pub mod postgres;

use std::collections::HashMap;

use bytes::Bytes;

use crate::award::{Award, BatchKey, CorruptRow, WorkerKey};
use crate::export::AwardQuery;
use crate::round_command::RoundCommand;

pub use self::fjall::FjallLedger;
pub use self::postgres::PostgresLedger;

/// Why the ledger failed. Any of these stops the allocator: it never answers without it.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The fjall store failed (I/O, a full disk, corruption detected by fjall, or the
    /// directory locked by a running allocator).
    #[error("ledger store: {0}")]
    Store(#[from] ::fjall::Error),
    /// PostgreSQL failed or could not be reached. A failure inside a commit leaves its outcome
    /// unknown (the connection may have died after the server committed): the allocator stops
    /// and its next leader rebuilds from the log, which settles it.
    #[error("ledger database: {}", describe(.0))]
    Database(#[from] ::postgres::Error),
    /// Another allocator took the leadership (a newer epoch): this one must commit nothing
    /// more. Nothing of the refused group was written.
    #[error(
        "fenced: the ledger's leader epoch is {current} ({holder}), this allocator held {held}"
    )]
    Fenced {
        /// The epoch this allocator held.
        held: i64,
        /// The epoch in the ledger now.
        current: i64,
        /// Who holds it.
        holder: String,
    },
    /// The database's schema is not one this allocator can use.
    #[error("ledger schema: {0}")]
    Schema(String),
    /// A row could not be decoded.
    #[error("ledger row: {0}")]
    Row(#[from] CorruptRow),
    /// A commit failed earlier; the ledger accepts nothing more.
    #[error("ledger stopped after a failed commit: {0}")]
    Failed(String),
    /// The database did not answer a call within its deadline (a server that hangs while its
    /// host still acknowledges every byte): the call was left behind with its connection
    /// ([`deadline`]). Inside a commit, its outcome is unknown, as for [`Self::Database`].
    #[error("ledger: no answer to the {what} within {after:?}; left behind")]
    NoAnswer {
        /// The call.
        what: &'static str,
        /// Its deadline.
        after: std::time::Duration,
    },
}

/// The server's own words where there are some (`postgres::Error` alone says "db error").
fn describe(err: &::postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
        None => match std::error::Error::source(err) {
            Some(source) => format!("{err}: {source}"),
            None => err.to_string(),
        },
    }
}

/// One answered batch: its awards and the answer frame, written together.
#[derive(Debug, Clone)]
pub struct AnsweredBatch {
    /// The batch.
    pub key: BatchKey,
    /// The `BatchResult` frame, exactly as sent.
    pub answer: Bytes,
    /// The awards it granted.
    pub awards: Vec<Award>,
}

/// What the allocator knows of one edge worker across its restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRecord {
    /// The worker.
    pub worker: WorkerKey,
    /// Its current instance.
    pub instance_id: u64,
    /// Every batch of the current instance up to this sequence is confirmed by the edge.
    pub confirmed_seq: u64,
    /// Instances it had before, newest last. Written: the newest few (at most
    /// [`RETIRED_IN_RECORD`](crate::core::RETIRED_IN_RECORD), all an allocator of an older
    /// version reads). Read: every instance the ledger knows retired, those of its log of
    /// retirements ([`CommitGroup::retired`]) first.
    pub retired: Vec<u64>,
}

/// An edge worker's instance replaced by a newer one. The ledger keeps every one for as long as
/// it lives: a process that comes back under a retired instance has resends whose answers were
/// forgotten, and drawing them again would pay twice for the same shakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RetiredInstance {
    /// The worker.
    pub worker: WorkerKey,
    /// The instance it retired.
    pub instance_id: u64,
}

/// Merges a worker's log of retirements into its record's list: those the record lacks first,
/// then the record's own (newest last).
pub(crate) fn merge_retired(record: &mut WorkerRecord, logged: impl IntoIterator<Item = u64>) {
    let mut merged: Vec<u64> =
        logged.into_iter().filter(|id| !record.retired.contains(id)).collect();
    merged.sort_unstable();
    merged.dedup();
    merged.append(&mut record.retired);
    record.retired = merged;
}

/// One group commit: everything written by one fsync.
#[derive(Debug, Default)]
pub struct CommitGroup {
    /// Its place in its term's commit order (0, 1, 2, ...), stamped by the commit lanes when
    /// it is handed over: groups commit in this order, so a reader can follow what a group
    /// wrote by (epoch, seq) without missing a row ([`follow`]).
    pub seq: u64,
    /// Answered batches: their awards and answers.
    pub batches: Vec<AnsweredBatch>,
    /// Awards phones acknowledged.
    pub delivered: Vec<u64>,
    /// Stored answers the edges confirmed (or whose instance retired): deleted.
    pub forget: Vec<BatchKey>,
    /// Workers whose record changed.
    pub workers: Vec<WorkerRecord>,
    /// Worker instances retired since the last group: added to the ledger's log of them.
    pub retired: Vec<RetiredInstance>,
    /// Operator commands accepted, in order: recorded before they take effect.
    pub commands: Vec<RoundCommand>,
}

impl CommitGroup {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
            && self.delivered.is_empty()
            && self.forget.is_empty()
            && self.workers.is_empty()
            && self.retired.is_empty()
            && self.commands.is_empty()
    }
}

/// Everything a restart needs.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every award, in id order.
    pub awards: Vec<Award>,
    /// Every stored (unconfirmed) answer.
    pub answers: HashMap<BatchKey, Bytes>,
    /// Every worker's record.
    pub workers: Vec<WorkerRecord>,
    /// Every operator command, in the order accepted.
    pub commands: Vec<RoundCommand>,
}

/// What a ledger store does. Calls block (the allocator makes them from its commit thread, or
/// before it serves); `&mut self` because a database connection is used by one caller at once.
pub trait LedgerStore: Send {
    /// Proves the ledger is writable before serving (a write, made durable).
    fn probe(&mut self) -> Result<(), LedgerError>;
    /// Writes one group in one atomic, durable write. Nothing is read.
    fn commit_group(&mut self, group: &CommitGroup) -> Result<(), LedgerError>;
    /// Writes one group as [`Self::commit_group`] does, but makes it durable only once `turn`
    /// says every group before it has (see [`lanes`]). A store that cannot write ahead of its
    /// commit waits for the turn first.
    fn commit_group_in_turn(
        &mut self,
        group: &CommitGroup,
        turn: &mut dyn FnMut(std::time::Duration) -> lanes::Turn,
    ) -> Result<(), LedgerError> {
        lanes::wait_turn(turn)?;
        self.commit_group(group)
    }
    /// Another session of the same ledger, under the same leadership, for another commit lane;
    /// `None` where the store has one writer only (fjall: one process owns the directory).
    fn open_lane(&mut self) -> Result<Option<Box<dyn LedgerStore>>, LedgerError> {
        Ok(None)
    }
    /// Another handle on the same ledger for support's reads, on a thread of their own (a
    /// read of millions of awards takes seconds, and a group commit must not wait for it);
    /// `None` where the store has none (the reads are then served between commits).
    fn open_reader(&mut self) -> Result<Option<Box<dyn LedgerStore>>, LedgerError> {
        Ok(None)
    }
    /// Reads everything back for a restart or a takeover.
    fn snapshot(&mut self) -> Result<Snapshot, LedgerError>;
    /// Every award (in id order) that `keep` accepts, with its delivery mark.
    fn awards(&mut self, keep: &mut dyn FnMut(&Award) -> bool) -> Result<Vec<Award>, LedgerError>;
    /// The awards support asked for (in id order, at most `query.limit`; 0: no limit). A
    /// store that can find a user's awards by index does so ([`PostgresLedger`]); the rest
    /// read every award and keep the matches.
    fn find_awards(&mut self, query: &AwardQuery) -> Result<Vec<Award>, LedgerError> {
        self.awards(&mut query.keeper())
    }
    /// Stored answers (the ones edges have not confirmed yet).
    fn stored_answers(&mut self) -> Result<usize, LedgerError>;
}

/// Opens the store a configuration names to read it, creating and migrating nothing (see
/// [`FjallLedger::open_existing`], [`PostgresLedger::open_to_read`]); blocking.
pub fn open_to_read(config: &crate::config::Config) -> Result<Box<dyn LedgerStore>, LedgerError> {
    open_with(config, FjallLedger::open_existing, PostgresLedger::open_to_read)
}

/// Opens the store a configuration names (blocking: call it off the async runtime). A
/// PostgreSQL ledger opened this way reads; it commits only once it leads (see [`lease`]).
pub fn open(config: &crate::config::Config) -> Result<Box<dyn LedgerStore>, LedgerError> {
    open_with(config, FjallLedger::open, PostgresLedger::open)
}

/// The store a configuration names, opened by `fjall` or `postgres`.
fn open_with(
    config: &crate::config::Config,
    fjall: fn(&std::path::Path) -> Result<FjallLedger, LedgerError>,
    postgres: fn(postgres::Target) -> Result<PostgresLedger, LedgerError>,
) -> Result<Box<dyn LedgerStore>, LedgerError> {
    use crate::config::LedgerKind;
    match (config.ledger, &config.ledger_path, &config.postgres) {
        (LedgerKind::Fjall, Some(path), _) => Ok(Box::new(fjall(path)?)),
        (LedgerKind::Postgres, _, Some(pg)) => {
            Ok(Box::new(postgres(postgres::Target::from_config(pg)?)?))
        }
        _ => Err(LedgerError::Failed("the configuration names no ledger (validate it)".into())),
    }
}
