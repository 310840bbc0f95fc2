//! `allocator`: the draw's decisions per second (1,024-entry batches, one core, in memory;
//! target 5 M/s) and awards made durable per second through the real ledger: fjall (fsync per
//! group commit; target 200 k/s), and PostgreSQL beside it in the same run (a primary whose
//! commits wait for a synchronous standby, both started here on loopback by
//! `scripts/pg-cluster.sh`).
//!
//! The draw scenario is the one quotas aim for: prizes released linearly, and about a quarter
//! of the entries arriving while a released prize is left (oversampling 4), users spread over
//! a billion ids.
//!
//! `scripts/bench.sh allocator` runs it (`cargo bench -p shake-allocator --bench
//! draw_and_ledger`); `cargo test` runs a short draw and a few fjall commits as a check.

use std::path::Path;
use std::time::Instant;

use clap::Parser;
use serde_json::{Map, Value};
use shake_allocator::award::{Award, BatchKey};
use shake_allocator::config::{CashPool, Release, RoundConfig};
use shake_allocator::core::answer_frame;
use shake_allocator::draw::Draw;
use shake_allocator::ledger::{AnsweredBatch, CommitGroup, FjallLedger};
use shake_allocator::user_rate::{UserRateSettings, UserRates};
use shake_benchkit::cli::CommonArgs;
use shake_benchkit::{report, stats, workload};
use shake_proto::Batch;

#[path = "support/postgres_ledger.rs"]
mod postgres_ledger;

/// Entries per batch.
const BATCH_ENTRIES: usize = 1024;
/// Batches per timed draw run; the clock advances 1 ms per batch.
const BATCHES_PER_RUN: usize = 4_000;
/// Batches per group commit measured for the durable figure.
const GROUP_BATCHES: [usize; 3] = [1, 8, 64];

/// The measured figures.
#[derive(Debug, Clone)]
struct AllocatorFigures {
    /// Median entries decided per second (with the per-user rate, as the allocator runs).
    decisions_per_s: f64,
    /// The same without the per-user rate, measured in the same run (its cost is the ratio).
    decisions_without_user_rate_per_s: f64,
    /// Share of entries that won.
    win_ratio: f64,
    /// Awards made durable per second, by batches per group (about 256 awards per batch).
    durable_by_group: Vec<(usize, usize, f64)>,
    /// The same on PostgreSQL with a synchronous standby, by group size and commit lanes, with
    /// each configuration's commit p99; or why it could not run.
    postgres: Result<postgres_ledger::Figures, String>,
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
    let entries = workload::batch_entries(BATCHES_PER_RUN * BATCH_ENTRIES);
    entries
        .chunks(BATCH_ENTRIES)
        .enumerate()
        .map(|(i, chunk)| Batch::new(i as u64 + 1, 1, i as u64, chunk))
        .collect()
}

/// Batches come from 256 edge workers in turn, so that a group confirms as many workers as it
/// has batches (up to 256), as a show's groups do when many edges send to one allocator.
fn key(seq: u64) -> BatchKey {
    BatchKey { edge_id: 1, worker_id: (seq % 256) as u16, instance_id: 1, seq }
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

/// What one invocation measures.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Timed draw runs.
    runs: usize,
    /// Batches each draw run decides (at most [`BATCHES_PER_RUN`]).
    batches: usize,
    /// Groups committed per group size, times the group size (bounded in time for size 1).
    groups_per_size: usize,
    /// Whether PostgreSQL is measured too.
    postgres: bool,
}

/// Runs the draw `plan.runs` times and the ledger once per group size, under `dir`.
fn run(plan: Plan, dir: &Path) -> AllocatorFigures {
    let config = round();
    let mut batches = batches();
    batches.truncate(plan.batches);
    let (mut rates, mut without) = (Vec::new(), Vec::new());
    let mut last = Vec::new();
    // Interleaved, so that both see the same machine.
    for _ in 0..plan.runs.max(1) {
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
        let take = (group * plan.groups_per_size).min(answered.len());
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
    let postgres = if plan.postgres {
        postgres_ledger::measure(&answered, dir)
    } else {
        Err("not asked for (a check run)".to_owned())
    };
    AllocatorFigures {
        postgres,
        decisions_per_s: stats::median(&rates).unwrap_or(0.0),
        decisions_without_user_rate_per_s: stats::median(&without).unwrap_or(0.0),
        win_ratio: won as f64 / (batches.len() * BATCH_ENTRIES) as f64,
        durable_by_group,
    }
}

#[derive(Parser, Debug)]
#[command(about = "The draw's decisions per second and awards made durable per second")]
struct Args {
    /// Timed draw runs; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Scratch directory for the ledgers, on the disk being measured (default:
    /// `target/bench-scratch`; a check run uses the temporary directory).
    #[arg(long)]
    scratch: Option<std::path::PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let full = args.common.full_run();
    let plan = if full {
        Plan {
            runs: args.runs.max(1),
            batches: BATCHES_PER_RUN,
            groups_per_size: 40,
            postgres: true,
        }
    } else {
        Plan { runs: 1, batches: 400, groups_per_size: 2, postgres: false }
    };
    let scratch = match (&args.scratch, full) {
        (Some(dir), _) => dir.clone(),
        (None, true) => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-scratch"),
        (None, false) => std::env::temp_dir().join(format!("shake-draw-{}", std::process::id())),
    };
    std::fs::create_dir_all(&scratch)?;
    let f = run(plan, &scratch);
    if !full {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    // The scenario is the one quotas aim for: about a quarter of the entries win.
    anyhow::ensure!((0.2..0.3).contains(&f.win_ratio), "win ratio {}", f.win_ratio);
    anyhow::ensure!(
        f.durable_by_group.iter().all(|(_, awards, rate)| *awards > 0 && *rate > 0.0),
        "a group size committed nothing: {:?}",
        f.durable_by_group
    );

    let runs = plan.runs;
    let mut rows = vec![
        ("decisions (median)".to_owned(), report::human_rate(f.decisions_per_s)),
        (
            "  without the per-user rate (same run)".to_owned(),
            report::human_rate(f.decisions_without_user_rate_per_s),
        ),
        ("win ratio".to_owned(), format!("{:.3}", f.win_ratio)),
        ("winners drawn (median)".to_owned(), report::human_rate(f.decisions_per_s * f.win_ratio)),
    ];
    for (group, awards, rate) in &f.durable_by_group {
        rows.push((
            format!("durable, {group} batches/commit (~{awards} awards)"),
            report::human_rate(*rate),
        ));
    }
    match &f.postgres {
        Ok(pg) => {
            for c in &pg.closed {
                rows.push((
                    format!(
                        "PostgreSQL + sync standby, {} lane(s), {} batches/commit (~{} awards)",
                        c.lanes, c.batches, c.awards
                    ),
                    format!(
                        "{}, p99 {:.1} ms",
                        report::human_rate(c.awards_per_s),
                        c.commit_p99_ms
                    ),
                ));
            }
            for o in &pg.offered {
                rows.push((
                    format!(
                        "PostgreSQL, {} lane(s), {} awards/s offered (groups up to {} batches)",
                        o.lanes,
                        report::human_rate(o.offered_per_s),
                        o.max_group
                    ),
                    format!(
                        "{} durable, wait p50 {:.1} / p99 {:.1} ms",
                        report::human_rate(o.awards_per_s),
                        o.p50_ms,
                        o.p99_ms
                    ),
                ));
            }
        }
        Err(why) => rows.push(("PostgreSQL".to_owned(), format!("not measured: {why}"))),
    }
    // The slowest group size measured: the figure holds whatever groups the load forms.
    let durable = f.durable_by_group.iter().map(|(_, _, r)| *r).fold(f64::INFINITY, f64::min);
    let durable = if durable.is_finite() { durable } else { 0.0 };
    let mut figures = Map::new();
    figures.insert("runs".into(), Value::from(runs));
    figures.insert("decisions_per_s".into(), Value::from(f.decisions_per_s.round()));
    figures.insert(
        "decisions_without_user_rate_per_s".into(),
        Value::from(f.decisions_without_user_rate_per_s.round()),
    );
    figures.insert(
        "user_rate_cost_ratio".into(),
        Value::from(
            (f.decisions_per_s / f.decisions_without_user_rate_per_s.max(1.0) * 1000.0).round()
                / 1000.0,
        ),
    );
    figures.insert("win_ratio".into(), Value::from(f.win_ratio));
    figures.insert("durable_awards_per_s".into(), Value::from(durable.round()));
    figures.insert(
        "durable_by_group".into(),
        f.durable_by_group
            .iter()
            .map(|(g, a, r)| serde_json::json!({"batches": g, "awards": a, "awards_per_s": r.round()}))
            .collect(),
    );
    // PostgreSQL: its capacity is the fastest closed-loop configuration; its commit p99 is
    // the batches' wait from arrival to durable at an offered 200,000 awards a second with
    // the default two lanes (what the target asks of both at once). Every reading is listed.
    let tenth = |ms: f64| (ms * 10.0).round() / 10.0;
    let pg = f.postgres.as_ref().ok();
    let capacity = pg.and_then(|pg| {
        pg.closed.iter().max_by(|a, b| a.awards_per_s.total_cmp(&b.awards_per_s)).copied()
    });
    let at_target = pg.and_then(|pg| {
        pg.offered
            .iter()
            .find(|o| o.lanes == 2 && o.offered_per_s == postgres_ledger::RATE_TARGET)
            .copied()
    });
    figures.insert(
        "pg_durable_awards_per_s".into(),
        capacity.map_or(Value::Null, |c| Value::from(c.awards_per_s.round())),
    );
    figures.insert(
        "pg_capacity_config".into(),
        capacity
            .map_or(Value::Null, |c| serde_json::json!({"lanes": c.lanes, "batches": c.batches})),
    );
    figures.insert(
        "pg_commit_p99_ms".into(),
        at_target.map_or(Value::Null, |o| Value::from(tenth(o.p99_ms))),
    );
    figures.insert(
        "pg_sustained_at_target_per_s".into(),
        at_target.map_or(Value::Null, |o| Value::from(o.awards_per_s.round())),
    );
    figures.insert(
        "pg_target_met".into(),
        Value::from(
            capacity.is_some_and(|c| c.awards_per_s >= postgres_ledger::RATE_TARGET)
                && at_target.is_some_and(|o| {
                    o.p99_ms <= postgres_ledger::P99_TARGET_MS
                        && o.awards_per_s >= 0.98 * postgres_ledger::RATE_TARGET
                }),
        ),
    );
    match &f.postgres {
        Ok(pg) => {
            figures.insert(
                "pg_durable_by_group".into(),
                pg.closed
                    .iter()
                    .map(|c| serde_json::json!({"lanes": c.lanes, "batches": c.batches, "awards": c.awards, "awards_per_s": c.awards_per_s.round(), "commit_p99_ms": tenth(c.commit_p99_ms)}))
                    .collect(),
            );
            figures.insert(
                "pg_offered".into(),
                pg.offered
                    .iter()
                    .map(|o| serde_json::json!({"lanes": o.lanes, "offered_per_s": o.offered_per_s, "awards_per_s": o.awards_per_s.round(), "p50_ms": tenth(o.p50_ms), "p99_ms": tenth(o.p99_ms), "max_group_batches": o.max_group}))
                    .collect(),
            );
        }
        Err(why) => {
            figures.insert("pg_durable_by_group".into(), Value::from(why.clone()));
        }
    }
    figures.insert("target_met".into(), Value::from(f.decisions_per_s >= 5e6 && durable >= 2e5));
    let title = format!("allocator: draw on one core (median of {runs}), ledger with fsync");
    report::emit(
        "allocator",
        &report::table(&title, &rows),
        figures,
        args.common.results_dir().as_deref(),
    )?;
    Ok(())
}
