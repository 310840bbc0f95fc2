//! The durable award ledger: one redb file on local disk.
//!
//! Tables:
//! - `awards`: award id -> award row ([`Award::encode`]).
//! - `answers`: (edge id, worker id, batch seq) -> the exact `BatchResult` frame sent for that
//!   batch, so a resend gets the same bytes.
//!
//! Writes come in groups ([`Ledger::commit_group`]): the awards and answers of many batches in
//! one transaction, made durable (fsync) by redb's default `Durability::Immediate` before the
//! call returns. Nothing is announced to an edge before that.
//!
//! redb was chosen over fjall and rusqlite by the group-commit benchmark recorded in the
//! README (`scripts/bench.sh ledger-stores`).

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::award::{Award, BatchKey, CorruptRow};

const AWARDS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("awards");
const ANSWERS: TableDefinition<'_, (u64, u16, u64), &[u8]> = TableDefinition::new("answers");

/// Why the ledger failed. Any of these stops the allocator: it never answers without it.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The store itself failed (I/O, corruption detected by redb, a full disk).
    #[error("ledger store: {0}")]
    Store(#[from] redb::Error),
    /// A row could not be decoded.
    #[error("ledger row: {0}")]
    Row(#[from] CorruptRow),
}

fn store(err: impl Into<redb::Error>) -> LedgerError {
    LedgerError::Store(err.into())
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

/// The award ledger.
#[derive(Debug)]
pub struct Ledger {
    db: Database,
}

impl Ledger {
    /// Opens the ledger file, creating it (and its tables) if missing.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| store(redb::StorageError::Io(e)))?;
        }
        let db = Database::create(path).map_err(store)?;
        let txn = db.begin_write().map_err(store)?;
        txn.open_table(AWARDS).map_err(store)?;
        txn.open_table(ANSWERS).map_err(store)?;
        txn.commit().map_err(store)?;
        Ok(Self { db })
    }

    /// Writes the batches and delivery marks in one durable transaction.
    pub fn commit_group(
        &self,
        batches: &[AnsweredBatch],
        delivered: &[u64],
    ) -> Result<(), LedgerError> {
        let txn = self.db.begin_write().map_err(store)?;
        {
            let mut awards = txn.open_table(AWARDS).map_err(store)?;
            let mut answers = txn.open_table(ANSWERS).map_err(store)?;
            for batch in batches {
                let key = (batch.key.edge_id, batch.key.worker_id, batch.key.seq);
                answers.insert(key, &batch.answer[..]).map_err(store)?;
                for award in &batch.awards {
                    awards.insert(award.award_id, &award.encode()[..]).map_err(store)?;
                }
            }
            for id in delivered {
                let row = match awards.get(*id).map_err(store)? {
                    Some(row) => Award::decode(row.value())?,
                    None => continue,
                };
                if !row.delivered {
                    let row = Award { delivered: true, ..row };
                    awards.insert(*id, &row.encode()[..]).map_err(store)?;
                }
            }
        }
        txn.commit().map_err(store)
    }

    /// Reads everything back for a restart.
    pub fn snapshot(&self) -> Result<Snapshot, LedgerError> {
        let txn = self.db.begin_read().map_err(store)?;
        let mut snapshot = Snapshot::default();
        for row in txn.open_table(AWARDS).map_err(store)?.iter().map_err(store)? {
            let (_, value) = row.map_err(store)?;
            snapshot.awards.push(Award::decode(value.value())?);
        }
        for row in txn.open_table(ANSWERS).map_err(store)?.iter().map_err(store)? {
            let (key, value) = row.map_err(store)?;
            let (edge_id, worker_id, seq) = key.value();
            snapshot.answers.insert(
                BatchKey { edge_id, worker_id, seq },
                Bytes::copy_from_slice(value.value()),
            );
        }
        Ok(snapshot)
    }

    /// Every award (in id order) that `keep` accepts.
    pub fn awards(&self, mut keep: impl FnMut(&Award) -> bool) -> Result<Vec<Award>, LedgerError> {
        let txn = self.db.begin_read().map_err(store)?;
        let mut out = Vec::new();
        for row in txn.open_table(AWARDS).map_err(store)?.iter().map_err(store)? {
            let (_, value) = row.map_err(store)?;
            let award = Award::decode(value.value())?;
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
        let path = dir.join("ledger.redb");
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
