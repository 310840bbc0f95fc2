//! An award: the ledger row written for each winning entry, and its compact encoding.
//!
//! The encoding is a version byte then varints (`shake_proto::varint`), with the prize as in
//! the wire protocol. A row is written once and never changed: delivery is a separate mark
//! (see `ledger`), so marking an award delivered needs no read. Version 1 rows (before batch
//! names had an instance id) still decode, with instance id 0.

use bytes::{Buf, BytesMut};
use shake_proto::{Prize, varint};

/// Names one batch for ever: a resend with the same key gets the same answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchKey {
    /// The edge (from its certificate and `EdgeHello`).
    pub edge_id: u64,
    /// The edge worker whose stream carried the batch.
    pub worker_id: u16,
    /// The worker's run, drawn at random when it started (`EdgeHello`).
    pub instance_id: u64,
    /// The batch sequence number within the instance, from 1.
    pub seq: u64,
}

impl BatchKey {
    /// The worker this batch came from.
    pub fn worker(&self) -> WorkerKey {
        WorkerKey { edge_id: self.edge_id, worker_id: self.worker_id }
    }
}

/// One edge worker, across its restarts (instances).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerKey {
    /// The edge.
    pub edge_id: u64,
    /// The worker within the edge.
    pub worker_id: u16,
}

/// One granted prize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Award {
    /// Ledger id, unique across rounds, increasing.
    pub award_id: u64,
    /// The round it was won in.
    pub round_id: u32,
    /// The winner.
    pub user_id: u64,
    /// Index of the prize in its round's release order (its identity in the pool).
    pub item: u32,
    /// What it pays.
    pub prize: Prize,
    /// Where the winning shake came from.
    pub batch: BatchKey,
    /// Index of the winning entry in its batch.
    pub entry_index: u32,
    /// When the allocator granted it, Unix milliseconds.
    pub granted_at_ms: u64,
    /// A phone acknowledged it (through its edge's `AwardDelivered`). Not part of the stored
    /// row: the ledger joins its delivery marks in when it reads awards back.
    pub delivered: bool,
}

const ROW_VERSION: u8 = 2;
const ROW_VERSION_WITHOUT_INSTANCE: u8 = 1;

/// A stored row that cannot be read back: the ledger is damaged or from a newer version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("corrupt award row")]
pub struct CorruptRow;

impl Award {
    /// The stored form (without the delivered flag, which is a separate mark).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(56);
        out.extend_from_slice(&[ROW_VERSION, 0]);
        for value in [
            self.award_id,
            u64::from(self.round_id),
            self.user_id,
            u64::from(self.item),
            self.batch.edge_id,
            u64::from(self.batch.worker_id),
            self.batch.instance_id,
            self.batch.seq,
            u64::from(self.entry_index),
            self.granted_at_ms,
        ] {
            varint::put(&mut out, value);
        }
        match &self.prize {
            Prize::Cash { cents } => {
                out.extend_from_slice(&[0]);
                varint::put(&mut out, *cents);
            }
            Prize::Gift { sku } => {
                out.extend_from_slice(&[1]);
                varint::put(&mut out, sku.len() as u64);
                out.extend_from_slice(sku.as_bytes());
            }
        }
        out.to_vec()
    }

    /// Reads a stored row.
    pub fn decode(mut row: &[u8]) -> Result<Self, CorruptRow> {
        fn next(row: &mut &[u8]) -> Result<u64, CorruptRow> {
            let (value, len) = varint::decode(row).map_err(|_| CorruptRow)?;
            row.advance(len);
            Ok(value)
        }
        let narrow = |v: u64| u32::try_from(v).map_err(|_| CorruptRow);
        let version = *row.first().ok_or(CorruptRow)?;
        if row.len() < 2 || !matches!(version, ROW_VERSION | ROW_VERSION_WITHOUT_INSTANCE) {
            return Err(CorruptRow);
        }
        // Version 1 kept the delivered flag in the row; it still counts for such rows.
        let delivered = row[1] == 1;
        row.advance(2);
        let award_id = next(&mut row)?;
        let round_id = narrow(next(&mut row)?)?;
        let user_id = next(&mut row)?;
        let item = narrow(next(&mut row)?)?;
        let edge_id = next(&mut row)?;
        let worker_id = u16::try_from(next(&mut row)?).map_err(|_| CorruptRow)?;
        let instance_id = if version == ROW_VERSION { next(&mut row)? } else { 0 };
        let seq = next(&mut row)?;
        let entry_index = narrow(next(&mut row)?)?;
        let granted_at_ms = next(&mut row)?;
        let kind = *row.first().ok_or(CorruptRow)?;
        row.advance(1);
        let prize = match kind {
            0 => Prize::Cash { cents: next(&mut row)? },
            1 => {
                let len = next(&mut row)? as usize;
                let sku = row.get(..len).ok_or(CorruptRow)?;
                let sku = String::from_utf8(sku.to_vec()).map_err(|_| CorruptRow)?;
                row.advance(len);
                Prize::Gift { sku }
            }
            _ => return Err(CorruptRow),
        };
        if !row.is_empty() {
            return Err(CorruptRow);
        }
        Ok(Self {
            award_id,
            round_id,
            user_id,
            item,
            prize,
            batch: BatchKey { edge_id, worker_id, instance_id, seq },
            entry_index,
            granted_at_ms,
            delivered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip() {
        for prize in [Prize::Cash { cents: 888 }, Prize::Gift { sku: "TEA-01".into() }] {
            let award = Award {
                award_id: 1 << 40,
                round_id: 3,
                user_id: 1_000_001,
                item: 4_999,
                prize,
                batch: BatchKey { edge_id: 7, worker_id: 2, instance_id: 1 << 61, seq: 42 },
                entry_index: 1023,
                granted_at_ms: 1_767_225_601_000,
                delivered: false,
            };
            assert_eq!(Award::decode(&award.encode()), Ok(award));
        }
        // A version 1 row (no instance id, delivered flag inside): award 5, delivered.
        let v1 = [1, 1, 5, 3, 9, 0, 7, 2, 42, 0, 1, 0, 0x40, 0x64];
        let old = Award::decode(&v1).unwrap();
        assert_eq!((old.award_id, old.batch.instance_id, old.batch.seq), (5, 0, 42));
        assert!(old.delivered);
        assert_eq!(Award::decode(&[]), Err(CorruptRow));
        assert_eq!(Award::decode(&[9, 0]), Err(CorruptRow));
    }
}
