//! A standby following the PostgreSQL ledger: how far it has read ([`FollowCursor`]), what
//! each look reads ([`Followed`]), and the state it keeps from it ([`Following`]), so that a
//! takeover reads only what the standby has not read yet, whatever the ledger's size.
//!
//! A takeover used to read every award to find the undelivered ones, and count every award to
//! check what it followed: on 5 million awards the read alone took 10 s in `psql`, twice the
//! failover budget (docs/RELIABILITY.md). Now a standby keeps the undelivered awards as it
//! follows, and learns of deliveries from the marks committed since its last look; it checks
//! what it followed against the commit log (each commit's row counts its awards), read the
//! same way.
//!
//! Why no row is missed: every read is one snapshot, and each cursor grows in commit order.
//! Award ids grow with the group, and groups commit strictly in their order
//! ([`super::lanes`]). A mark row carries its term's epoch and its group's place in the term
//! (`CommitGroup::seq`), and a takeover, which raises the epoch, waits for every commit of
//! the old epoch in flight (the lease row's lock, migration 6): so (epoch, group_seq,
//! first_id) grows in commit order too, and a mark committed after one look sorts after
//! everything that look saw. A mark of an award not read yet is passed over: that award is
//! read joined with every mark committed by then. Commit rows take their id in turn.

use std::collections::HashMap;

use super::postgres::unsigned;
use super::{LedgerError, PostgresLedger};
use crate::award::Award;
use crate::round_command::RoundCommand;

/// Where a mark row sorts in commit order: (epoch, group_seq, first_id).
pub type MarkPosition = (i64, i64, i64);

/// How far a standby has read the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FollowCursor {
    /// The last award id read.
    pub award_id: u64,
    /// The last mark row read; `None` before the first look, which starts after the newest row
    /// (the marks before it reach the standby joined with their awards).
    pub mark: Option<MarkPosition>,
    /// The last row of `shake_commits` counted.
    pub commit_id: i64,
    /// The epoch of that row (an id alone could be given again, see [`TakeoverRead`]).
    pub commit_epoch: i64,
    /// Operator commands read.
    pub commands: usize,
}

/// What one look read, from one snapshot.
#[derive(Debug, Default)]
pub struct Followed {
    /// Awards after the cursor's, in id order, each with its delivery mark as of the look.
    pub awards: Vec<Award>,
    /// Award ids marked delivered by the mark rows after the cursor's.
    pub delivered: Vec<u64>,
    /// Operator commands after the cursor's.
    pub commands: Vec<RoundCommand>,
    /// How many awards the commits after the cursor's wrote, by their own rows.
    pub awards_committed: u64,
    /// Where the next look starts.
    pub next: FollowCursor,
    /// The last commit the cursor counted is no longer in the log: what was followed up to it
    /// is not the ledger, and the rest of this read must not be taken on top of it. A commit
    /// whose wait for the synchronous standbys was cancelled, or whose session ended while it
    /// waited (a standby ending an expired leader's commits does that), is visible on the
    /// primary without being replicated; a standby may follow it, and the standby promoted in
    /// that primary's place lacks it. Such commits are the newest in the log (a
    /// commit's WAL follows the one before it), so if any was followed the last one followed
    /// is gone, or its id was given again (the promoted primary's sequence may repeat ids whose
    /// WAL was lost) under another epoch.
    pub last_commit_gone: bool,
}

/// A takeover's read, from one snapshot: the tail the standby did not follow, and the state a
/// term starts from that a standby does not keep.
#[derive(Debug, Default)]
pub struct TakeoverRead {
    /// The log after the standby's cursor.
    pub tail: Followed,
    /// Every stored (unconfirmed) answer.
    pub answers: HashMap<crate::award::BatchKey, bytes::Bytes>,
    /// Every edge worker's record.
    pub workers: Vec<super::WorkerRecord>,
    /// Every operator command, in the order accepted.
    pub commands: Vec<RoundCommand>,
}

impl PostgresLedger {
    /// One look: the log after `from`, at most `limit` awards of it.
    pub fn follow(&mut self, from: &FollowCursor, limit: i64) -> Result<Followed, LedgerError> {
        self.in_snapshot(|ledger| ledger.read_after(from, limit))
    }

    /// A new leader's read: all of the log after `from`, with the stored answers, worker
    /// records and commands.
    pub fn read_for_takeover(&mut self, from: &FollowCursor) -> Result<TakeoverRead, LedgerError> {
        self.in_snapshot(|ledger| {
            Ok(TakeoverRead {
                tail: ledger.read_after(from, i64::MAX)?,
                answers: ledger.read_answers()?,
                workers: ledger.read_workers()?,
                commands: ledger.commands_after(0)?,
            })
        })
    }

    fn read_after(&mut self, from: &FollowCursor, limit: i64) -> Result<Followed, LedgerError> {
        let last_commit_gone = from.commit_id != 0
            && self
                .client()
                .query_opt(
                    "SELECT 1 FROM shake_commits WHERE id = $1 AND epoch = $2",
                    &[&from.commit_id, &from.commit_epoch],
                )?
                .is_none();
        let awards = self.read_awards(from.award_id, limit, &mut |_| true)?;
        let mut next = *from;
        if let Some(last) = awards.last() {
            next.award_id = last.award_id;
        }
        let mut delivered = Vec::new();
        match from.mark {
            None => {
                let newest = self.client().query_opt(
                    "SELECT epoch, group_seq, first_id FROM shake_delivery_marks \
                     ORDER BY epoch DESC, group_seq DESC, first_id DESC LIMIT 1",
                    &[],
                )?;
                next.mark =
                    Some(newest.map_or((-1, -1, -1), |row| (row.get(0), row.get(1), row.get(2))));
            }
            Some((epoch, group_seq, first_id)) => {
                for row in self.client().query(
                    "SELECT epoch, group_seq, first_id, award_ids FROM shake_delivery_marks \
                     WHERE (epoch, group_seq, first_id) > ($1, $2, $3) \
                     ORDER BY epoch, group_seq, first_id",
                    &[&epoch, &group_seq, &first_id],
                )? {
                    next.mark = Some((row.get(0), row.get(1), row.get(2)));
                    delivered.extend(row.get::<_, Vec<i64>>(3).into_iter().map(unsigned));
                }
            }
        }
        // The newest commit row after the cursor, and what all of them wrote: one pass.
        let mut awards_committed: i64 = 0;
        if let Some(last) = self.client().query_opt(
            "SELECT id, epoch, sum(awards) OVER ()::int8 FROM shake_commits WHERE id > $1 \
             ORDER BY id DESC LIMIT 1",
            &[&from.commit_id],
        )? {
            (next.commit_id, next.commit_epoch) = (last.get(0), last.get(1));
            awards_committed = last.get(2);
        }
        let commands = self.commands_after(from.commands)?;
        next.commands += commands.len();
        Ok(Followed {
            awards,
            delivered,
            commands,
            awards_committed: unsigned(awards_committed),
            next,
            last_commit_gone,
        })
    }
}

/// What a standby keeps from the looks it made: the undelivered awards it read (what a new
/// leader owes its users), and how many awards it read against how many the commit log says
/// were written.
#[derive(Debug, Default, Clone)]
pub struct Following {
    /// Where the next look starts.
    pub cursor: FollowCursor,
    /// Awards read and not marked delivered, by id.
    owed: HashMap<u64, Award>,
    /// Awards read.
    pub read: u64,
    /// Awards written, by the commit log's rows read.
    pub committed: u64,
}

impl Following {
    /// Takes in one look's awards, then its marks (a mark of an award of this look lands on
    /// it; one of an award not read yet is passed over, see the module's doc).
    pub fn take(&mut self, followed: &Followed) {
        for award in &followed.awards {
            if !award.delivered {
                self.owed.insert(award.award_id, award.clone());
            }
        }
        for id in &followed.delivered {
            self.owed.remove(id);
        }
        self.read += followed.awards.len() as u64;
        self.committed += followed.awards_committed;
        self.cursor = followed.next;
    }

    /// Whether every award the commit log counts was read (it should always be).
    pub fn adds_up(&self) -> bool {
        self.read == self.committed
    }

    /// The awards owed, in id order.
    pub fn into_owed(self) -> Vec<Award> {
        let mut owed: Vec<Award> = self.owed.into_values().collect();
        owed.sort_unstable_by_key(|award| award.award_id);
        owed
    }

    /// How many awards are owed now.
    pub fn owed(&self) -> usize {
        self.owed.len()
    }
}
