//! The embedded award ledger: a fjall database (an LSM tree with a write-ahead journal) in a
//! directory on local disk. The default for one machine and for `scripts/demo.sh`.
//!
//! Keyspaces:
//! - `awards`: award id (8 bytes, big-endian) -> award row ([`Award::encode`]), written once.
//! - `delivered`: award id -> nothing. A phone acknowledged the award. A separate mark, so that
//!   marking needs no read of the award row (a blind write).
//! - `answers`: edge id (8) | worker id (2) | instance id (8) | batch seq (8), big-endian -> the
//!   exact `BatchResult` frame sent for that batch, so a resend gets the same bytes. Only
//!   answers the edge has not yet confirmed are kept: confirmed ones are deleted (compaction).
//! - `workers`: edge id (8) | worker id (2) -> [`WorkerRecord`]: the worker's current instance,
//!   how far the edge has confirmed its answers, and the newest instances it retired.
//! - `retired`: edge id (8) | worker id (2) | instance id (8) -> nothing: every instance a
//!   worker ever retired, written once (the record carries only the newest few).
//! - `commands`: sequence (8, big-endian, from 1) -> the operator command (JSON), in the order
//!   they took effect.
//! - `meta`: the start-up probe row (the ledger is writable).
//!
//! Writes come in groups ([`FjallLedger::commit_group`]): the awards and answers of many batches,
//! delivery marks and compaction in one atomic write batch across the keyspaces, journalled
//! with `PersistMode::SyncAll` (fsync) before the call returns. Nothing is announced to an edge
//! before that.
//!
//! fjall was chosen over redb and SQLite by the group-commit benchmark recorded in the README
//! (`scripts/bench.sh ledger-stores`): it made the most awards durable per second at every
//! group size measured (1, 100 and 10,000 awards per commit).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use bytes::{Buf, Bytes, BytesMut};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use shake_proto::varint;

use super::{
    CommitGroup, LedgerError, LedgerStore, RetiredInstance, Snapshot, WorkerRecord, merge_retired,
};
use crate::award::{Award, BatchKey, CorruptRow, WorkerKey};
use crate::export::AwardQuery;
use crate::round_command::RoundCommand;

const WORKER_ROW_VERSION: u8 = 1;

fn encode_worker(record: &WorkerRecord) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(32 + 9 * record.retired.len());
    out.extend_from_slice(&[WORKER_ROW_VERSION]);
    varint::put(&mut out, record.instance_id);
    varint::put(&mut out, record.confirmed_seq);
    for retired in &record.retired {
        varint::put(&mut out, *retired);
    }
    out.to_vec()
}

fn decode_worker(worker: WorkerKey, mut row: &[u8]) -> Result<WorkerRecord, CorruptRow> {
    fn next(row: &mut &[u8]) -> Result<u64, CorruptRow> {
        let (value, len) = varint::decode(row).map_err(|_| CorruptRow)?;
        row.advance(len);
        Ok(value)
    }
    if row.first() != Some(&WORKER_ROW_VERSION) {
        return Err(CorruptRow);
    }
    row.advance(1);
    let instance_id = next(&mut row)?;
    let confirmed_seq = next(&mut row)?;
    let mut retired = Vec::new();
    while !row.is_empty() {
        retired.push(next(&mut row)?);
    }
    Ok(WorkerRecord { worker, instance_id, confirmed_seq, retired })
}

fn answer_key(key: &BatchKey) -> [u8; 26] {
    let mut out = [0u8; 26];
    out[..8].copy_from_slice(&key.edge_id.to_be_bytes());
    out[8..10].copy_from_slice(&key.worker_id.to_be_bytes());
    out[10..18].copy_from_slice(&key.instance_id.to_be_bytes());
    out[18..].copy_from_slice(&key.seq.to_be_bytes());
    out
}

fn parse_answer_key(raw: &[u8]) -> Result<BatchKey, CorruptRow> {
    let raw: &[u8; 26] = raw.try_into().map_err(|_| CorruptRow)?;
    let u64_at = |at: usize| u64::from_be_bytes(raw[at..at + 8].try_into().expect("8 bytes"));
    Ok(BatchKey {
        edge_id: u64_at(0),
        worker_id: u16::from_be_bytes([raw[8], raw[9]]),
        instance_id: u64_at(10),
        seq: u64_at(18),
    })
}

fn worker_key(worker: &WorkerKey) -> [u8; 10] {
    let mut out = [0u8; 10];
    out[..8].copy_from_slice(&worker.edge_id.to_be_bytes());
    out[8..].copy_from_slice(&worker.worker_id.to_be_bytes());
    out
}

fn retired_key(retired: &RetiredInstance) -> [u8; 18] {
    let mut out = [0u8; 18];
    out[..10].copy_from_slice(&worker_key(&retired.worker));
    out[10..].copy_from_slice(&retired.instance_id.to_be_bytes());
    out
}

fn parse_retired_key(raw: &[u8]) -> Result<RetiredInstance, CorruptRow> {
    let raw: &[u8; 18] = raw.try_into().map_err(|_| CorruptRow)?;
    Ok(RetiredInstance {
        worker: parse_worker_key(&raw[..10])?,
        instance_id: u64::from_be_bytes(raw[10..].try_into().expect("8 bytes")),
    })
}

fn parse_worker_key(raw: &[u8]) -> Result<WorkerKey, CorruptRow> {
    let raw: &[u8; 10] = raw.try_into().map_err(|_| CorruptRow)?;
    Ok(WorkerKey {
        edge_id: u64::from_be_bytes(raw[..8].try_into().expect("8 bytes")),
        worker_id: u16::from_be_bytes([raw[8], raw[9]]),
    })
}

/// The award ledger.
pub struct FjallLedger {
    db: Database,
    awards: Keyspace,
    delivered: Keyspace,
    answers: Keyspace,
    workers: Keyspace,
    retired: Keyspace,
    commands: Keyspace,
    meta: Keyspace,
    /// The next command's sequence (commits come from one thread; atomic for `&self`).
    next_command: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for FjallLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallLedger").finish_non_exhaustive()
    }
}

impl FjallLedger {
    /// Opens a ledger directory that exists, to read it (the support and settlement
    /// commands): a mistyped path is an error, not an empty ledger.
    pub fn open_existing(path: &Path) -> Result<Self, LedgerError> {
        // fjall creates a database in any directory without its version marker.
        if !path.join("version").is_file() {
            return Err(LedgerError::Failed(format!("no ledger at {}", path.display())));
        }
        Self::open(path)
    }

    /// Opens the ledger directory, creating it if missing.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let db = Database::builder(path).open()?;
        let awards = db.keyspace("awards", KeyspaceCreateOptions::default)?;
        let delivered = db.keyspace("delivered", KeyspaceCreateOptions::default)?;
        let answers = db.keyspace("answers", KeyspaceCreateOptions::default)?;
        let workers = db.keyspace("workers", KeyspaceCreateOptions::default)?;
        let retired = db.keyspace("retired", KeyspaceCreateOptions::default)?;
        let commands = db.keyspace("commands", KeyspaceCreateOptions::default)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
        let last = match commands.last_key_value() {
            Some(item) => {
                let key = item.key()?;
                u64::from_be_bytes(key.as_ref().try_into().map_err(|_| CorruptRow)?)
            }
            None => 0,
        };
        let next_command = std::sync::atomic::AtomicU64::new(last + 1);
        let ledger =
            Self { db, awards, delivered, answers, workers, retired, commands, meta, next_command };
        ledger.log_recorded_retirements()?;
        Ok(ledger)
    }

    /// Copies the retired instances the workers' records list into the log of retirements (a
    /// ledger written before the log existed has them only there, and a record keeps only its
    /// newest eight: the next retirement would push the oldest out of every list). Idempotent;
    /// one durable write.
    fn log_recorded_retirements(&self) -> Result<(), LedgerError> {
        let mut write = self.db.batch().durability(Some(PersistMode::SyncAll));
        let mut any = false;
        for item in self.workers.iter() {
            let (key, value) = item.into_inner()?;
            let record = decode_worker(parse_worker_key(&key)?, &value)?;
            for instance_id in record.retired {
                let retired = RetiredInstance { worker: record.worker, instance_id };
                write.insert(&self.retired, retired_key(&retired), []);
                any = true;
            }
        }
        if any {
            write.commit()?;
        }
        Ok(())
    }

    /// Writes (and fsyncs) a probe row: proves the ledger is writable before serving.
    pub fn probe(&self) -> Result<(), LedgerError> {
        let mut write = self.db.batch().durability(Some(PersistMode::SyncAll));
        write.insert(&self.meta, "probe", []);
        write.commit()?;
        Ok(())
    }

    /// Writes one group in one atomic, fsynced write. Nothing is read.
    pub fn commit_group(&self, group: &CommitGroup) -> Result<(), LedgerError> {
        let mut write = self.db.batch().durability(Some(PersistMode::SyncAll));
        for batch in &group.batches {
            write.insert(&self.answers, answer_key(&batch.key), &batch.answer[..]);
            for award in &batch.awards {
                write.insert(&self.awards, award.award_id.to_be_bytes(), award.encode());
            }
        }
        for id in &group.delivered {
            // A mark for an id with no award row (never granted, or granted in this group and
            // acknowledged impossibly fast) is harmless: reads join marks onto rows.
            write.insert(&self.delivered, id.to_be_bytes(), []);
        }
        // invariant: an answer is confirmed only after the edge received it, which is after
        // the group that wrote it committed; so no key is inserted and removed in one group.
        for key in &group.forget {
            write.remove(&self.answers, answer_key(key));
        }
        for record in &group.workers {
            write.insert(&self.workers, worker_key(&record.worker), encode_worker(record));
        }
        for retired in &group.retired {
            write.insert(&self.retired, retired_key(retired), []);
        }
        for command in &group.commands {
            let seq = self.next_command.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            write.insert(&self.commands, seq.to_be_bytes(), command.encode());
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
        let mut logged: HashMap<WorkerKey, Vec<u64>> = HashMap::new();
        for item in self.retired.iter() {
            let retired = parse_retired_key(&item.key()?)?;
            logged.entry(retired.worker).or_default().push(retired.instance_id);
        }
        for item in self.workers.iter() {
            let (key, value) = item.into_inner()?;
            let mut record = decode_worker(parse_worker_key(&key)?, &value)?;
            let worker_logged = logged.remove(&record.worker).unwrap_or_default();
            merge_retired(&mut record, worker_logged);
            snapshot.workers.push(record);
        }
        for item in self.commands.iter() {
            snapshot.commands.push(RoundCommand::decode(&item.value()?)?);
        }
        Ok(snapshot)
    }

    /// Every award (in id order) that `keep` accepts, with its delivery mark joined in.
    pub fn awards(&self, mut keep: impl FnMut(&Award) -> bool) -> Result<Vec<Award>, LedgerError> {
        let mut delivered = HashSet::new();
        for item in self.delivered.iter() {
            let key = item.key()?;
            let id: [u8; 8] = key.as_ref().try_into().map_err(|_| CorruptRow)?;
            delivered.insert(u64::from_be_bytes(id));
        }
        let mut out = Vec::new();
        for item in self.awards.iter() {
            let mut award = Award::decode(&item.value()?)?;
            award.delivered |= delivered.contains(&award.award_id);
            if keep(&award) {
                out.push(award);
            }
        }
        Ok(out)
    }

    /// The awards support asked for, from the query's cursor on, each with its delivery mark
    /// looked up by its key: only the answer is held (a full read's set of marks holds one
    /// entry per award ever delivered), and the read stops at the query's limit.
    pub fn find_awards(&self, query: &AwardQuery) -> Result<Vec<Award>, LedgerError> {
        let mut out = Vec::new();
        let Some(first) = query.after.checked_add(1) else { return Ok(out) };
        for item in self.awards.range(first.to_be_bytes()..) {
            if out.len() >= query.most() {
                break;
            }
            let mut award = Award::decode(&item.value()?)?;
            award.delivered |= self.delivered.contains_key(award.award_id.to_be_bytes())?;
            if query.matches(&award) {
                out.push(award);
            }
        }
        Ok(out)
    }

    /// Stored answers (the ones edges have not confirmed yet).
    pub fn stored_answers(&self) -> Result<usize, LedgerError> {
        let mut count = 0;
        for item in self.answers.iter() {
            item.key()?;
            count += 1;
        }
        Ok(count)
    }
}

impl LedgerStore for FjallLedger {
    fn probe(&mut self) -> Result<(), LedgerError> {
        FjallLedger::probe(self)
    }

    fn commit_group(&mut self, group: &CommitGroup) -> Result<(), LedgerError> {
        FjallLedger::commit_group(self, group)
    }

    fn open_reader(&mut self) -> Result<Option<Box<dyn LedgerStore>>, LedgerError> {
        // The same database (one per process), shared: fjall's handles are thread-safe.
        Ok(Some(Box::new(Self {
            db: self.db.clone(),
            awards: self.awards.clone(),
            delivered: self.delivered.clone(),
            answers: self.answers.clone(),
            workers: self.workers.clone(),
            retired: self.retired.clone(),
            commands: self.commands.clone(),
            meta: self.meta.clone(),
            next_command: std::sync::atomic::AtomicU64::new(
                self.next_command.load(std::sync::atomic::Ordering::Relaxed),
            ),
        })))
    }

    fn snapshot(&mut self) -> Result<Snapshot, LedgerError> {
        FjallLedger::snapshot(self)
    }

    fn awards(&mut self, keep: &mut dyn FnMut(&Award) -> bool) -> Result<Vec<Award>, LedgerError> {
        FjallLedger::awards(self, keep)
    }

    fn find_awards(&mut self, query: &AwardQuery) -> Result<Vec<Award>, LedgerError> {
        FjallLedger::find_awards(self, query)
    }

    fn stored_answers(&mut self) -> Result<usize, LedgerError> {
        FjallLedger::stored_answers(self)
    }
}
