//! The durable award ledger: a fjall database (an LSM tree with a write-ahead journal) in a
//! directory on local disk.
//!
//! Keyspaces:
//! - `awards`: award id (8 bytes, big-endian) -> award row ([`Award::encode`]).
//! - `answers`: edge id (8) | worker id (2) | batch seq (8), big-endian -> the exact
//!   `BatchResult` frame sent for that batch, so a resend gets the same bytes.
//!
//! Writes come in groups ([`Ledger::commit_group`]): the awards and answers of many batches in
//! one atomic write batch across both keyspaces, journalled with `PersistMode::SyncAll`
//! (fsync) before the call returns. Nothing is announced to an edge before that.
//!
//! fjall was chosen over redb and SQLite by the group-commit benchmark recorded in the README
//! (`scripts/bench.sh ledger-stores`): it made the most awards durable per second at every
//! group size measured (1, 100 and 10,000 awards per commit).

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::award::{Award, BatchKey, CorruptRow};

/// Why the ledger failed. Any of these stops the allocator: it never answers without it.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The store itself failed (I/O, a full disk, corruption detected by fjall, or the
    /// directory locked by a running allocator).
    #[error("ledger store: {0}")]
    Store(#[from] fjall::Error),
    /// A row could not be decoded.
    #[error("ledger row: {0}")]
    Row(#[from] CorruptRow),
    /// A commit failed earlier; the ledger accepts nothing more.
    #[error("ledger stopped after a failed commit: {0}")]
    Failed(String),
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

/// Everything a restart needs.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every award, in id order.
    pub awards: Vec<Award>,
    /// Every stored answer.
    pub answers: HashMap<BatchKey, Bytes>,
}

fn answer_key(key: &BatchKey) -> [u8; 18] {
    let mut out = [0u8; 18];
    out[..8].copy_from_slice(&key.edge_id.to_be_bytes());
    out[8..10].copy_from_slice(&key.worker_id.to_be_bytes());
    out[10..].copy_from_slice(&key.seq.to_be_bytes());
    out
}

fn parse_answer_key(raw: &[u8]) -> Result<BatchKey, CorruptRow> {
    let raw: &[u8; 18] = raw.try_into().map_err(|_| CorruptRow)?;
    let mut edge = [0u8; 8];
    let mut worker = [0u8; 2];
    let mut seq = [0u8; 8];
    edge.copy_from_slice(&raw[..8]);
    worker.copy_from_slice(&raw[8..10]);
    seq.copy_from_slice(&raw[10..]);
    Ok(BatchKey {
        edge_id: u64::from_be_bytes(edge),
        worker_id: u16::from_be_bytes(worker),
        seq: u64::from_be_bytes(seq),
    })
}

/// The award ledger.
pub struct Ledger {
    db: Database,
    awards: Keyspace,
    answers: Keyspace,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

impl Ledger {
    /// Opens the ledger directory, creating it if missing.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let db = Database::builder(path).open()?;
        let awards = db.keyspace("awards", KeyspaceCreateOptions::default)?;
        let answers = db.keyspace("answers", KeyspaceCreateOptions::default)?;
        Ok(Self { db, awards, answers })
    }

    /// Writes the batches and delivery marks in one atomic, fsynced write.
    pub fn commit_group(
        &self,
        batches: &[AnsweredBatch],
        delivered: &[u64],
    ) -> Result<(), LedgerError> {
        let mut write = self.db.batch().durability(Some(PersistMode::SyncAll));
        for batch in batches {
            write.insert(&self.answers, answer_key(&batch.key), &batch.answer[..]);
            for award in &batch.awards {
                write.insert(&self.awards, award.award_id.to_be_bytes(), award.encode());
            }
        }
        for id in delivered {
            // Rows of this same group are not visible yet; they are written undelivered and
            // the mark lands with the next group (marks arrive long after their award).
            let Some(row) = self.awards.get(id.to_be_bytes())? else { continue };
            let award = Award::decode(&row)?;
            if !award.delivered {
                let award = Award { delivered: true, ..award };
                write.insert(&self.awards, id.to_be_bytes(), award.encode());
            }
        }
        write.commit()?;
        Ok(())
    }

    /// Reads everything back for a restart.
    pub fn snapshot(&self) -> Result<Snapshot, LedgerError> {
        let mut snapshot = Snapshot { awards: self.awards(|_| true)?, ..Snapshot::default() };
        for item in self.answers.iter() {
            let (key, value) = item.into_inner()?;
            snapshot.answers.insert(parse_answer_key(&key)?, Bytes::copy_from_slice(&value));
        }
        Ok(snapshot)
    }

    /// Every award (in id order) that `keep` accepts.
    pub fn awards(&self, mut keep: impl FnMut(&Award) -> bool) -> Result<Vec<Award>, LedgerError> {
        let mut out = Vec::new();
        for item in self.awards.iter() {
            let award = Award::decode(&item.value()?)?;
            if keep(&award) {
                out.push(award);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shake_proto::Prize;

    fn award(id: u64, seq: u64) -> Award {
        Award {
            award_id: id,
            round_id: 1,
            user_id: 100 + id,
            item: id as u32,
            prize: Prize::Cash { cents: 10 * id },
            batch: BatchKey { edge_id: 1, worker_id: 0, seq },
            entry_index: 0,
            granted_at_ms: 5,
            delivered: false,
        }
    }

    #[test]
    fn groups_survive_reopening_and_delivery_marks_stick() {
        let dir = std::env::temp_dir().join(format!("shake-ledger-{}", std::process::id()));
        let path = dir.join("ledger");
        let _ = std::fs::remove_dir_all(&dir);
        {
            let ledger = Ledger::open(&path).unwrap();
            let batches: Vec<AnsweredBatch> = (1..=3)
                .map(|seq| AnsweredBatch {
                    key: BatchKey { edge_id: 1, worker_id: 0, seq },
                    answer: Bytes::from(vec![seq as u8; 3]),
                    awards: vec![award(seq, seq)],
                })
                .collect();
            ledger.commit_group(&batches, &[]).unwrap();
            ledger.commit_group(&[], &[2, 99]).unwrap();
        }
        let ledger = Ledger::open(&path).unwrap();
        let snapshot = ledger.snapshot().unwrap();
        assert_eq!(snapshot.awards.len(), 3);
        assert_eq!(snapshot.awards.iter().filter(|a| a.delivered).count(), 1);
        assert!(snapshot.awards[1].delivered);
        let key = BatchKey { edge_id: 1, worker_id: 0, seq: 2 };
        assert_eq!(snapshot.answers[&key], Bytes::from(vec![2u8; 3]));
        assert_eq!(ledger.awards(|a| a.user_id == 103).unwrap().len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
