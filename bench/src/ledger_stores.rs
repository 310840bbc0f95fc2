//! `ledger-stores`: the group-commit benchmark that chose the allocator's ledger store.
//!
//! For redb, fjall and SQLite (rusqlite), each durable on commit (redb `Durability::Immediate`,
//! fjall `PersistMode::SyncAll`, SQLite WAL with `synchronous=FULL`): transactions of 1, 100 and
//! 10,000 award rows, and the awards made durable per second. Rows are real encoded awards.
//! Built only with the `store-comparison` feature.

use std::path::{Path, PathBuf};
use std::time::Instant;

use shake_allocator::award::{Award, BatchKey};
use shake_proto::Prize;

use crate::stats;

/// Rows per transaction measured.
pub const GROUP_SIZES: [usize; 3] = [1, 100, 10_000];

/// One measured cell.
#[derive(Debug, Clone)]
pub struct Cell {
    /// The store.
    pub store: &'static str,
    /// Rows per transaction.
    pub group: usize,
    /// Transactions committed.
    pub commits: usize,
    /// Awards made durable per second.
    pub awards_per_s: f64,
    /// Mean commit latency, milliseconds.
    pub commit_ms: f64,
}

/// `n` award rows with ids from `first`.
pub fn rows(first: u64, n: usize) -> Vec<(u64, Vec<u8>)> {
    (0..n as u64)
        .map(|i| {
            let id = first + i;
            let award = Award {
                award_id: id,
                round_id: 1,
                user_id: 1 + id.wrapping_mul(2_654_435_761) % 1_000_000_000,
                item: id as u32,
                prize: Prize::Cash { cents: 100 + id % 900 },
                batch: BatchKey {
                    edge_id: 1,
                    worker_id: (id % 4) as u16,
                    instance_id: 1,
                    seq: id / 256,
                },
                entry_index: (id % 1024) as u32,
                granted_at_ms: 1_767_225_600_000 + id,
                delivered: false,
            };
            (id, award.encode())
        })
        .collect()
}

fn commits_for(group: usize) -> usize {
    match group {
        1 => 300,
        100 => 100,
        _ => 10,
    }
}

type Commit<'a> = Box<dyn FnMut(&[(u64, Vec<u8>)]) + 'a>;

fn measure(store: &'static str, group: usize, mut commit: Commit<'_>) -> Cell {
    let commits = commits_for(group);
    let mut latencies = Vec::with_capacity(commits);
    let started = Instant::now();
    for c in 0..commits {
        let batch = rows((c * group) as u64 + 1, group);
        let t = Instant::now();
        commit(&batch);
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let elapsed = started.elapsed();
    Cell {
        store,
        group,
        commits,
        awards_per_s: stats::per_second((commits * group) as u64, elapsed),
        commit_ms: latencies.iter().sum::<f64>() / latencies.len() as f64,
    }
}

fn fresh(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).expect("creating the benchmark directory");
    path
}

/// Runs every store at every group size under `dir` (on the disk being measured).
pub fn run(dir: &Path) -> Vec<Cell> {
    let mut cells = Vec::new();
    for group in GROUP_SIZES {
        cells.push(redb_cell(&fresh(dir, "redb"), group));
        cells.push(fjall_cell(&fresh(dir, "fjall"), group));
        cells.push(sqlite_cell(&fresh(dir, "sqlite"), group));
    }
    let _ = std::fs::remove_dir_all(dir);
    cells
}

fn redb_cell(dir: &Path, group: usize) -> Cell {
    const TABLE: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("awards");
    let db = redb::Database::create(dir.join("ledger.redb")).expect("redb create");
    measure(
        "redb",
        group,
        Box::new(move |batch| {
            let txn = db.begin_write().expect("redb begin");
            {
                let mut table = txn.open_table(TABLE).expect("redb table");
                for (id, row) in batch {
                    table.insert(*id, &row[..]).expect("redb insert");
                }
            }
            txn.commit().expect("redb commit");
        }),
    )
}

fn fjall_cell(dir: &Path, group: usize) -> Cell {
    let db = fjall::Database::builder(dir).open().expect("fjall open");
    let awards =
        db.keyspace("awards", fjall::KeyspaceCreateOptions::default).expect("fjall keyspace");
    measure(
        "fjall",
        group,
        Box::new(move |batch| {
            let mut write = db.batch().durability(Some(fjall::PersistMode::SyncAll));
            for (id, row) in batch {
                write.insert(&awards, id.to_be_bytes(), row.as_slice());
            }
            write.commit().expect("fjall commit");
        }),
    )
}

fn sqlite_cell(dir: &Path, group: usize) -> Cell {
    let mut db = rusqlite::Connection::open(dir.join("ledger.sqlite")).expect("sqlite open");
    db.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE awards (id INTEGER PRIMARY KEY, row BLOB NOT NULL);",
    )
    .expect("sqlite schema");
    measure(
        "sqlite",
        group,
        Box::new(move |batch| {
            let txn = db.transaction().expect("sqlite begin");
            {
                let mut insert = txn
                    .prepare_cached("INSERT INTO awards (id, row) VALUES (?1, ?2)")
                    .expect("prepare");
                for (id, row) in batch {
                    insert.execute(rusqlite::params![*id as i64, row]).expect("sqlite insert");
                }
            }
            txn.commit().expect("sqlite commit");
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_decodable_awards_with_distinct_ids() {
        let rows = rows(10, 50);
        assert_eq!(rows.len(), 50);
        for (id, row) in &rows {
            assert_eq!(Award::decode(row).unwrap().award_id, *id);
        }
    }
}
