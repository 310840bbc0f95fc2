//! An award: the ledger row written for each winning entry, and its compact encoding.
//!
//! The encoding is a version byte then varints (`shake_proto::varint`), with the prize as in
//! the wire protocol. A row is written once and only its delivered flag changes.

use bytes::{Buf, BytesMut};
use shake_proto::{Prize, varint};

/// Names one batch for ever: a resend with the same key gets the same answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchKey {
    /// The edge (from its certificate and `EdgeHello`).
    pub edge_id: u64,
    /// The edge worker whose stream carried the batch.
    pub worker_id: u16,
    /// The batch sequence number.
    pub seq: u64,
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
    /// A phone acknowledged it (through its edge's `AwardDelivered`).
    pub delivered: bool,
}

const ROW_VERSION: u8 = 1;

/// A stored row that cannot be read back: the ledger is damaged or from a newer version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("corrupt award row")]
pub struct CorruptRow;

impl Award {
    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(48);
        out.extend_from_slice(&[ROW_VERSION, u8::from(self.delivered)]);
        for value in [
            self.award_id,
            u64::from(self.round_id),
            self.user_id,
            u64::from(self.item),
            self.batch.edge_id,
            u64::from(self.batch.worker_id),
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
        if row.len() < 2 || row[0] != ROW_VERSION {
            return Err(CorruptRow);
        }
        let delivered = row[1] == 1;
        row.advance(2);
        let award_id = next(&mut row)?;
        let round_id = narrow(next(&mut row)?)?;
        let user_id = next(&mut row)?;
        let item = narrow(next(&mut row)?)?;
        let edge_id = next(&mut row)?;
        let worker_id = u16::try_from(next(&mut row)?).map_err(|_| CorruptRow)?;
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
            batch: BatchKey { edge_id, worker_id, seq },
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
                batch: BatchKey { edge_id: 7, worker_id: 2, seq: 42 },
                entry_index: 1023,
                granted_at_ms: 1_767_225_601_000,
                delivered: true,
            };
            assert_eq!(Award::decode(&award.encode()), Ok(award));
        }
        assert_eq!(Award::decode(&[]), Err(CorruptRow));
        assert_eq!(Award::decode(&[9, 0]), Err(CorruptRow));
    }
}
