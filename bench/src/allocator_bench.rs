//! `allocator`: the draw's decisions per second (1,024-entry batches, one core, in memory) and
//! awards made durable per second through the real ledger: fjall (fsync per group commit), and
//! PostgreSQL beside it in the same run (a primary whose commits wait for a synchronous
//! standby, both started here on loopback by `scripts/pg-cluster.sh`).
//!
//! The draw scenario is the one quotas aim for: prizes released linearly, and about a quarter
//! of the entries arriving while a released prize is left (oversampling 4), users spread over
//! a billion ids.

use std::path::Path;
use std::time::Instant;

use shake_allocator::award::{Award, BatchKey};
use shake_allocator::config::{CashPool, Release, RoundConfig};
use shake_allocator::core::answer_frame;
use shake_allocator::draw::Draw;
use shake_allocator::ledger::{AnsweredBatch, CommitGroup, FjallLedger};
use shake_allocator::user_rate::{UserRateSettings, UserRates};
use shake_proto::Batch;

use crate::{proto_bench, stats};

/// Entries per batch.
pub const BATCH_ENTRIES: usize = 1024;
/// Batches per timed draw run; the clock advances 1 ms per batch.
pub const BATCHES_PER_RUN: usize = 4_000;
/// Batches per group commit measured for the durable figure.
pub const GROUP_BATCHES: [usize; 3] = [1, 8, 64];

/// The measured figures.
#[derive(Debug, Clone)]
pub struct AllocatorFigures {
    /// Median entries decided per second (with the per-user rate, as the allocator runs).
    pub decisions_per_s: f64,
    /// The same without the per-user rate, measured in the same run (its cost is the ratio).
    pub decisions_without_user_rate_per_s: f64,
    /// Share of entries that won.
    pub win_ratio: f64,
    /// Awards made durable per second, by batches per group (about 256 awards per batch).
    pub durable_by_group: Vec<(usize, usize, f64)>,
    /// The same on PostgreSQL with a synchronous standby, and each group size's commit p99 in
    /// milliseconds; or why it could not run.
    pub postgres: Result<Vec<(usize, usize, f64, f64)>, String>,
}

fn round() -> RoundConfig {
    let prizes = (BATCHES_PER_RUN * BATCH_ENTRIES / 4) as u64;
    RoundConfig {
        id: 1,
        starts_at_ms: 0,
        duration_s: (BATCHES_PER_RUN / 1000) as u64,
        seed: 42,
        release: Release::Linear,
        cash_per_user: 1,
        gifts_per_user: 1,
        min_shake_interval_ms: 100,
        start_spread_ms: 0,
        cash: Some(CashPool { total_cents: prizes * 100, envelopes: prizes, min_cents: 1 }),
        gifts: vec![],
    }
}

fn batches() -> Vec<Batch> {
    let entries = proto_bench::sample_entries(BATCHES_PER_RUN * BATCH_ENTRIES);
    entries
        .chunks(BATCH_ENTRIES)
        .enumerate()
        .map(|(i, chunk)| Batch::new(i as u64 + 1, 1, i as u64, chunk))
        .collect()
}

fn key(seq: u64) -> BatchKey {
    BatchKey { edge_id: 1, worker_id: 0, instance_id: 1, seq }
}

/// One draw over every batch, with the per-user rate or without: (entries per second, awards
/// per batch).
fn draw_run(
    config: &RoundConfig,
    batches: &[Batch],
    per_user_rate: bool,
) -> (f64, Vec<Vec<Award>>) {
    let mut draw = Draw::new(std::slice::from_ref(config));
    let mut per_batch = Vec::with_capacity(batches.len());
    let mut out = Vec::with_capacity(BATCH_ENTRIES);
    // The per-user rate as the allocator runs it, swept as its tick does (once a second of
    // the batches' clock).
    let mut rates =
        if per_user_rate { UserRates::new(UserRateSettings::default()) } else { UserRates::off() };
    let started = Instant::now();
    for (i, batch) in batches.iter().enumerate() {
        if i % 1000 == 999 {
            rates.sweep(i as u64);
        }
        draw.decide(key(batch.seq), batch, i as u64 + 1, &mut rates, &mut out);
        per_batch.push(std::mem::take(&mut out));
    }
    let rate = stats::per_second((batches.len() * BATCH_ENTRIES) as u64, started.elapsed());
    (rate, per_batch)
}

fn answered(awards: Vec<Award>, batches: &[Batch]) -> AnsweredBatch {
    let key = awards.first().map_or(key(0), |a| a.batch);
    let digest = batches.get(key.seq as usize - 1).map(Batch::digest).unwrap_or_default();
    AnsweredBatch { key, answer: answer_frame(key.seq, digest, &awards), awards }
}

/// Runs the draw `runs` times and the ledger once per group size, under `dir`.
pub fn run(runs: usize, dir: &Path) -> AllocatorFigures {
    let config = round();
    let batches = batches();
    let (mut rates, mut without) = (Vec::new(), Vec::new());
    let mut last = Vec::new();
    // Interleaved, so that both see the same machine.
    for _ in 0..runs.max(1) {
        let (rate, awards) = draw_run(&config, &batches, true);
        rates.push(rate);
        last = awards;
        without.push(draw_run(&config, &batches, false).0);
    }
    let won: usize = last.iter().map(Vec::len).sum();
    let answered: Vec<AnsweredBatch> =
        last.into_iter().filter(|a| !a.is_empty()).map(|a| answered(a, &batches)).collect();

    let mut durable_by_group = Vec::new();
    for group in GROUP_BATCHES {
        let path = dir.join(format!("ledger-{group}"));
        let _ = std::fs::remove_dir_all(&path);
        let ledger = FjallLedger::open(&path).expect("opening the benchmark ledger");
        // Enough groups for a stable figure, bounded in time for group size 1.
        let take = (group * 40).min(answered.len());
        let groups: Vec<CommitGroup> = answered[..take]
            .chunks(group)
            .map(|chunk| CommitGroup { batches: chunk.to_vec(), ..CommitGroup::default() })
            .collect();
        let started = Instant::now();
        let mut awards = 0;
        for group in &groups {
            ledger.commit_group(group).expect("commit");
            awards += group.batches.iter().map(|b| b.awards.len()).sum::<usize>();
        }
        let avg_awards = awards / take.div_ceil(group).max(1);
        durable_by_group.push((
            group,
            avg_awards,
            stats::per_second(awards as u64, started.elapsed()),
        ));
        drop(ledger);
        let _ = std::fs::remove_dir_all(&path);
    }
    let postgres = postgres_run(&answered, dir);
    AllocatorFigures {
        postgres,
        decisions_per_s: stats::median(&rates).unwrap_or(0.0),
        decisions_without_user_rate_per_s: stats::median(&without).unwrap_or(0.0),
        win_ratio: won as f64 / (batches.len() * BATCH_ENTRIES) as f64,
        durable_by_group,
    }
}

/// The same groups committed to PostgreSQL (a primary and one synchronous standby on free
/// loopback ports): awards per second and commit p99 by group size.
fn postgres_run(
    answered: &[AnsweredBatch],
    dir: &Path,
) -> Result<Vec<(usize, usize, f64, f64)>, String> {
    use shake_allocator::ledger::{LedgerStore, PostgresLedger, lease};
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-cluster.sh");
    let free_port = || -> Result<u16, String> {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        Ok(socket.local_addr().map_err(|e| e.to_string())?.port())
    };
    let cluster = |args: &[&str]| -> Result<(), String> {
        let output = std::process::Command::new("bash")
            .arg(&script)
            .args(args)
            .output()
            .map_err(|e| format!("running pg-cluster.sh: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
        }
    };
    let (primary, standby) = (dir.join("pg-primary"), dir.join("pg-standby"));
    let (primary_port, standby_port) = (free_port()?, free_port()?);
    let stop = || {
        for server in [&standby, &primary] {
            let _ = cluster(&["stop", &server.display().to_string(), "immediate"]);
        }
    };
    let measured = (|| {
        cluster(&["primary", &primary.display().to_string(), &primary_port.to_string(), "s1"])?;
        cluster(&[
            "standby",
            &standby.display().to_string(),
            &standby_port.to_string(),
            &primary_port.to_string(),
            "s1",
        ])?;
        let url = format!("host=127.0.0.1 port={primary_port} user=postgres dbname=postgres");
        let mut figures = Vec::new();
        for group in GROUP_BATCHES {
            let mut ledger = PostgresLedger::open(&url).map_err(|e| e.to_string())?;
            ledger
                .client()
                .batch_execute(
                    "TRUNCATE shake_awards, shake_batches, shake_commits; \
                     UPDATE shake_leader SET expires_at = now()",
                )
                .map_err(|e| e.to_string())?;
            let epoch = lease::try_acquire(
                ledger.client(),
                "bench",
                "-",
                std::time::Duration::from_secs(60),
            )
            .map_err(|e| e.to_string())?
            .ok_or("the lease is taken")?;
            ledger.lead(epoch);
            let take = (group * 40).min(answered.len());
            let groups: Vec<CommitGroup> = answered[..take]
                .chunks(group)
                .map(|chunk| CommitGroup { batches: chunk.to_vec(), ..CommitGroup::default() })
                .collect();
            let mut latencies = Vec::with_capacity(groups.len());
            let mut awards = 0;
            let started = Instant::now();
            for group in &groups {
                let one = Instant::now();
                ledger.commit_group(group).map_err(|e| e.to_string())?;
                latencies.push(one.elapsed().as_secs_f64() * 1000.0);
                awards += group.batches.iter().map(|b| b.awards.len()).sum::<usize>();
            }
            let rate = stats::per_second(awards as u64, started.elapsed());
            latencies.sort_by(f64::total_cmp);
            let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
            figures.push((group, awards / groups.len().max(1), rate, p99));
        }
        Ok(figures)
    })();
    stop();
    measured
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scenario_awards_about_a_quarter_of_entries() {
        let config = round();
        let (_, awards) = draw_run(&config, &batches()[..400], true);
        let won: usize = awards.iter().map(Vec::len).sum();
        let ratio = won as f64 / (400 * BATCH_ENTRIES) as f64;
        assert!((0.2..0.3).contains(&ratio), "win ratio {ratio}");
    }
}
