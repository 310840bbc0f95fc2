//! `soak`: a campaign that runs for weeks, compressed: millions of batches through the
//! allocator's sans-IO core with a fake clock and no network, from several edge workers that
//! confirm their answers as a real edge does (`ResultsReceived`), restart now and then (new
//! instances), and acknowledge awards. Memory must stay flat after warm-up: the heap's live
//! bytes (the counting allocator this target installs) and the answers held are sampled as it
//! goes.
//!
//! A second, shorter part runs batches through the real fjall ledger with compaction: the
//! answers stored on disk stay bounded by what edges have not confirmed yet.
//!
//! `scripts/bench.sh soak` runs it (`cargo bench -p shake-allocator --bench soak`); `cargo
//! test` runs it briefly and checks both bounds.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use clap::Parser;
use serde_json::{Map, Value};
use shake_allocator::award::BatchKey;
use shake_allocator::config::{CashPool, Release, RoundConfig};
use shake_allocator::core::{Core, CoreSettings, Effect, WorkerHello};
use shake_allocator::draw::Draw;
use shake_allocator::ledger::{CommitGroup, FjallLedger};
use shake_allocator::user_rate::UserRateSettings;
use shake_benchkit::cli::CommonArgs;
use shake_benchkit::counting_alloc::CountingAlloc;
use shake_benchkit::report;
use shake_proto::allocator::PROTOCOL_VERSION;
use shake_proto::{Batch, BatchEntry};

const START_MS: u64 = 1_767_225_600_000;
/// Edge workers feeding the allocator.
const WORKERS: u16 = 8;
/// Entries per batch.
const ENTRIES: usize = 8;
/// A worker confirms its answers every this many of its batches (a real edge: each 100 ms).
const CONFIRM_EVERY: u64 = 16;

/// One sample of the soak.
#[derive(Debug, Clone, Copy)]
struct SoakSample {
    /// Batches so far.
    batches: u64,
    /// Heap bytes live.
    live_bytes: i64,
    /// Answers the core holds for resends.
    stored_answers: usize,
}

/// The soak's figures.
#[derive(Debug, Clone)]
struct SoakFigures {
    /// Samples, in order.
    samples: Vec<SoakSample>,
    /// Batches per second through the core.
    batches_per_s: f64,
    /// Awards granted.
    awards: u64,
    /// Worker restarts (new instances).
    restarts: u64,
    /// Most answers the core held at a sample.
    max_stored_answers: usize,
    /// The ledger part: batches committed, answers left stored at the end, most stored at once.
    ledger: Option<LedgerSoak>,
}

/// The ledger part of the soak.
#[derive(Debug, Clone, Copy)]
struct LedgerSoak {
    /// Batches committed through the real ledger.
    batches: u64,
    /// Answers stored in the ledger at the end.
    stored_at_end: usize,
    /// Answers the ledger would hold without compaction (every batch's).
    stored_without_compaction: u64,
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

/// Drives the core: `batches` in all, `sample_every` between samples, a worker restarting
/// every `restart_every`.
fn run_core(batches: u64, sample_every: u64, restart_every: u64) -> SoakFigures {
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
                live_bytes: ALLOCATOR.live_bytes(),
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
fn run_ledger(dir: &Path, batches: u64, group: u64) -> std::io::Result<LedgerSoak> {
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
                    Effect::Compact { forget, worker, retired } => {
                        pending.forget.extend(forget);
                        pending.workers.extend(worker);
                        pending.retired.extend(retired);
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

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc::new();

#[derive(Parser, Debug)]
#[command(about = "Millions of batches through the allocator core and the ledger: memory flat")]
struct Args {
    /// Batches through the core.
    #[arg(long, default_value_t = 10_000_000)]
    batches: u64,
    /// A worker restarts (new instance) every this many batches.
    #[arg(long, default_value_t = 1_000_000)]
    restart_every: u64,
    /// Batches through the real ledger (groups of 100, fsync each).
    #[arg(long, default_value_t = 100_000)]
    ledger_batches: u64,
    /// Scratch directory for the ledger, on the disk being measured (default:
    /// `target/bench-scratch/soak-ledger`; a check run uses the temporary directory).
    #[arg(long)]
    scratch: Option<std::path::PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let (batches, restart_every, ledger_batches, ledger_group) = if args.common.full_run() {
        (args.batches.max(1), args.restart_every, args.ledger_batches, 100)
    } else {
        (40_000, 15_000, 1_000, 50)
    };
    let scratch = match (&args.scratch, args.common.full_run()) {
        (Some(dir), _) => dir.clone(),
        (None, true) => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-scratch/soak-ledger")
        }
        (None, false) => {
            std::env::temp_dir().join(format!("shake-soak-ledger-{}", std::process::id()))
        }
    };
    let mut f = run_core(batches, (batches / 10).max(1), restart_every);
    let ledger = run_ledger(&scratch, ledger_batches, ledger_group)?;
    let _ = std::fs::remove_dir_all(&scratch);
    f.ledger = Some(ledger);
    // Each worker holds at most the answers it has not confirmed yet.
    assert!(
        f.max_stored_answers <= WORKERS as usize * CONFIRM_EVERY as usize,
        "the core held {} answers",
        f.max_stored_answers
    );
    assert!(f.awards > 0, "the soak awarded nothing");
    // Every group's answers are confirmed right after it commits; the last group's compaction
    // is queued for the next group, so at most one group's answers remain.
    assert!(ledger.stored_at_end as u64 <= ledger_group, "{ledger:?}");

    let mib = |b: i64| format!("{:.2} MiB", b as f64 / (1024.0 * 1024.0));
    let mut rows: Vec<(String, String)> = f
        .samples
        .iter()
        .map(|s| {
            (
                format!("after {:>11} batches", s.batches),
                format!("{} live, {} answers held", mib(s.live_bytes), s.stored_answers),
            )
        })
        .collect();
    // Warm-up: the first sample (pools, maps and buffers at their working size).
    let warm = f.samples.first().map_or(0, |s| s.live_bytes);
    let end = f.samples.last().map_or(0, |s| s.live_bytes);
    let growth = if warm > 0 { end as f64 / warm as f64 } else { 0.0 };
    rows.push(("through the core".to_owned(), report::human_rate(f.batches_per_s)));
    rows.push(("awards granted".to_owned(), f.awards.to_string()));
    rows.push(("worker restarts".to_owned(), f.restarts.to_string()));
    rows.push(("live bytes, end / after warm-up".to_owned(), format!("{growth:.3}")));
    rows.push((
        format!("ledger: answers stored after {} batches", ledger.batches),
        format!("{} (not {})", ledger.stored_at_end, ledger.stored_without_compaction),
    ));
    let mut figures = Map::new();
    figures.insert("batches".into(), Value::from(batches));
    figures.insert("workers".into(), Value::from(WORKERS));
    figures.insert("restarts".into(), Value::from(f.restarts));
    figures.insert("awards".into(), Value::from(f.awards));
    figures.insert("batches_per_s".into(), Value::from(f.batches_per_s.round()));
    figures.insert("live_bytes_after_warmup".into(), Value::from(warm));
    figures.insert("live_bytes_at_end".into(), Value::from(end));
    figures.insert("live_bytes_growth_ratio".into(), Value::from(growth));
    figures.insert("max_answers_held".into(), Value::from(f.max_stored_answers));
    figures.insert("ledger_batches".into(), Value::from(ledger.batches));
    figures.insert("ledger_answers_stored_at_end".into(), Value::from(ledger.stored_at_end));
    figures.insert(
        "samples".into(),
        f.samples
            .iter()
            .map(|s| serde_json::json!({"batches": s.batches, "live_bytes": s.live_bytes, "answers_held": s.stored_answers}))
            .collect(),
    );
    let title =
        format!("soak: {batches} batches through the allocator core, {WORKERS} edge workers");
    report::emit(
        "soak",
        &report::table(&title, &rows),
        figures,
        args.common.results_dir().as_deref(),
    )
}
