//! `soak`: a campaign that runs for weeks, compressed: millions of batches through the
//! allocator's sans-IO core with a fake clock and no network, from several edge workers that
//! confirm their answers as a real edge does (`ResultsReceived`), restart now and then (new
//! instances), and acknowledge awards. Memory must stay flat after warm-up: the heap's live
//! bytes (counting allocator) and the answers held are sampled as it goes.
//!
//! A second, shorter part runs batches through the real fjall ledger with compaction: the
//! answers stored on disk stay bounded by what edges have not confirmed yet.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use shake_allocator::award::BatchKey;
use shake_allocator::config::{CashPool, Release, RoundConfig};
use shake_allocator::core::{Core, CoreSettings, Effect, WorkerHello};
use shake_allocator::draw::Draw;
use shake_allocator::ledger::{CommitGroup, FjallLedger};
use shake_allocator::user_rate::UserRateSettings;
use shake_proto::allocator::PROTOCOL_VERSION;
use shake_proto::{Batch, BatchEntry};

const START_MS: u64 = 1_767_225_600_000;
/// Edge workers feeding the allocator.
pub const WORKERS: u16 = 8;
/// Entries per batch.
const ENTRIES: usize = 8;
/// A worker confirms its answers every this many of its batches (a real edge: each 100 ms).
const CONFIRM_EVERY: u64 = 16;

/// One sample of the soak.
#[derive(Debug, Clone, Copy)]
pub struct SoakSample {
    /// Batches so far.
    pub batches: u64,
    /// Heap bytes live.
    pub live_bytes: i64,
    /// Answers the core holds for resends.
    pub stored_answers: usize,
}

/// The soak's figures.
#[derive(Debug, Clone)]
pub struct SoakFigures {
    /// Samples, in order.
    pub samples: Vec<SoakSample>,
    /// Batches per second through the core.
    pub batches_per_s: f64,
    /// Awards granted.
    pub awards: u64,
    /// Worker restarts (new instances).
    pub restarts: u64,
    /// Most answers the core held at a sample.
    pub max_stored_answers: usize,
    /// The ledger part: batches committed, answers left stored at the end, most stored at once.
    pub ledger: Option<LedgerSoak>,
}

/// The ledger part of the soak.
#[derive(Debug, Clone, Copy)]
pub struct LedgerSoak {
    /// Batches committed through the real ledger.
    pub batches: u64,
    /// Answers stored in the ledger at the end.
    pub stored_at_end: usize,
    /// Answers the ledger would hold without compaction (every batch's).
    pub stored_without_compaction: u64,
}

fn round() -> RoundConfig {
    RoundConfig {
        id: 1,
        starts_at_ms: START_MS,
        // An hour: the soak's fake clock (10 µs a batch) stays inside it for 360 M batches.
        duration_s: 60 * 60,
        seed: 9,
        release: Release::Linear,
        cash_per_user: 1,
        gifts_per_user: 0,
        min_shake_interval_ms: 100,
        start_spread_ms: 0,
        cash: Some(CashPool { total_cents: 10_000_000, envelopes: 100_000, min_cents: 1 }),
        gifts: vec![],
    }
}

/// One edge worker of the simulation.
struct SimWorker {
    stream: u64,
    hello: WorkerHello,
    next_seq: u64,
}

/// Drives the core: `batches` in all, `sample_every` between samples. `live_bytes` reads the
/// counting allocator.
pub fn run_core(
    batches: u64,
    sample_every: u64,
    restart_every: u64,
    live_bytes: impl Fn() -> i64,
) -> SoakFigures {
    let mut core = soak_core();
    let mut effects = Vec::new();
    let mut next_stream = 1;
    let mut workers: Vec<SimWorker> = (0..WORKERS)
        .map(|w| {
            let worker = SimWorker {
                stream: next_stream,
                hello: WorkerHello {
                    edge_id: 1 + u64::from(w / 4),
                    worker_id: w % 4,
                    instance_id: 1000 + u64::from(w),
                    highest_answered_seq: 0,
                    protocol_version: PROTOCOL_VERSION,
                },
                next_seq: 1,
            };
            next_stream += 1;
            core.on_hello(worker.stream, worker.hello, START_MS, &mut effects);
            worker
        })
        .collect();
    effects.clear();
    let mut samples = Vec::new();
    let mut awards = 0u64;
    let mut restarts = 0u64;
    let mut entries: Vec<BatchEntry> = Vec::with_capacity(ENTRIES);
    let mut committed: Vec<(BatchKey, Bytes)> = Vec::new();
    let mut user = 0u64;
    let started = Instant::now();
    for n in 0..batches {
        // The fake clock: 10 µs a batch (100,000 batches a second for the fleet).
        let now_ms = START_MS + n / 100;
        let w = (n % u64::from(WORKERS)) as usize;
        if restart_every > 0 && n > 0 && n.is_multiple_of(restart_every) {
            // A worker restarts: a new instance, a new stream.
            let worker = &mut workers[w];
            core.on_stream_closed(worker.stream);
            worker.stream = next_stream;
            next_stream += 1;
            worker.hello.instance_id += 1_000_000;
            worker.hello.highest_answered_seq = 0;
            worker.next_seq = 1;
            core.on_hello(worker.stream, worker.hello, now_ms, &mut effects);
            restarts += 1;
        }
        let worker = &mut workers[w];
        entries.clear();
        for _ in 0..ENTRIES {
            user = user.wrapping_add(7_919) % 50_000_000;
            entries.push(BatchEntry { user_id: user, offset_us: 0 });
        }
        let batch = Batch::new(worker.next_seq, 1, now_ms, &entries);
        worker.next_seq += 1;
        core.on_batch(worker.stream, &batch, now_ms, &mut effects);
        // The committer: durable at once.
        for effect in effects.drain(..) {
            if let Effect::Commit(answered) = effect {
                awards += answered.awards.len() as u64;
                committed.push((answered.key, answered.answer));
            }
        }
        core.on_committed(&committed, now_ms, &mut effects);
        committed.clear();
        effects.clear();
        let answered = worker.next_seq - 1;
        if answered.is_multiple_of(CONFIRM_EVERY) {
            core.on_results_received(worker.stream, answered, &mut effects);
            effects.clear();
        }
        if n.is_multiple_of(10_000) {
            core.on_tick(now_ms, &mut effects);
            effects.clear();
        }
        if (n + 1).is_multiple_of(sample_every) {
            samples.push(SoakSample {
                batches: n + 1,
                live_bytes: live_bytes(),
                stored_answers: core.stored_answers(),
            });
        }
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    let max_stored_answers = samples.iter().map(|s| s.stored_answers).max().unwrap_or(0);
    SoakFigures {
        samples,
        batches_per_s: batches as f64 / elapsed,
        awards,
        restarts,
        max_stored_answers,
        ledger: None,
    }
}

/// The allocator core the soak drives: one round, the default per-user rate.
fn soak_core() -> Core {
    let settings = CoreSettings {
        oversampling: 4.0,
        quota_valid_ms: 3_000,
        user_rate: UserRateSettings::default(),
    };
    Core::new(settings, Draw::new(&[round()]))
}

/// Batches through the real ledger with compaction, groups of `group` batches.
pub fn run_ledger(dir: &Path, batches: u64, group: u64) -> std::io::Result<LedgerSoak> {
    let _ = std::fs::remove_dir_all(dir);
    let ledger = FjallLedger::open(dir).map_err(std::io::Error::other)?;
    let mut core = soak_core();
    let mut effects = Vec::new();
    let hello = WorkerHello {
        edge_id: 1,
        worker_id: 0,
        instance_id: 77,
        highest_answered_seq: 0,
        protocol_version: PROTOCOL_VERSION,
    };
    core.on_hello(1, hello, START_MS, &mut effects);
    let mut pending = CommitGroup::default();
    let mut answers: HashMap<BatchKey, Bytes> = HashMap::new();
    let mut seq = 0;
    for n in 0..batches {
        seq += 1;
        let entries = [BatchEntry { user_id: n, offset_us: 0 }];
        core.on_batch(1, &Batch::new(seq, 1, START_MS, &entries), START_MS + n, &mut effects);
        if seq.is_multiple_of(group) {
            // The committer takes everything queued: one group, one fsync.
            for effect in effects.drain(..) {
                match effect {
                    Effect::Commit(batch) => {
                        answers.insert(batch.key, batch.answer.clone());
                        pending.batches.push(batch);
                    }
                    Effect::Compact { forget, worker } => {
                        pending.forget.extend(forget);
                        pending.workers.extend(worker);
                    }
                    _ => {}
                }
            }
            ledger.commit_group(&pending).map_err(std::io::Error::other)?;
            pending = CommitGroup::default();
            let done: Vec<(BatchKey, Bytes)> = answers.drain().collect();
            core.on_committed(&done, START_MS + n, &mut effects);
            // The edge hears the answers and confirms them.
            core.on_results_received(1, seq, &mut effects);
        }
    }
    Ok(LedgerSoak {
        batches,
        stored_at_end: ledger.stored_answers().map_err(std::io::Error::other)?,
        stored_without_compaction: batches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_held_stay_bounded_across_restarts() {
        let figures = run_core(40_000, 10_000, 15_000, || 0);
        assert_eq!(figures.samples.len(), 4);
        assert_eq!(figures.restarts, 2);
        // Each worker holds at most the answers it has not confirmed yet.
        assert!(figures.max_stored_answers <= WORKERS as usize * CONFIRM_EVERY as usize);
        assert!(figures.awards > 0);
    }

    #[test]
    fn the_ledger_keeps_only_unconfirmed_answers() {
        let dir = std::env::temp_dir().join(format!("shake-soak-ledger-{}", std::process::id()));
        let soak = run_ledger(&dir, 1_000, 50).unwrap();
        // Every group's answers are confirmed right after it commits; the last group's
        // compaction is queued for the next group, so at most one group's answers remain.
        assert!(soak.stored_at_end <= 50, "{soak:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
