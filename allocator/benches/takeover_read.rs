//! `takeover`: how long a new leader's read of the PostgreSQL ledger takes on a large ledger,
//! the way it reads now (the tail after what it followed as a standby, `ledger::follow`)
//! against the way it read before (every award, to find the undelivered ones, and a count of
//! them all), alternated on the same ledger. Issue 15 gives leader loss to answers again 5 s;
//! a read that grows with the ledger would spend that on a long show.
//!
//! The ledger is filled through the allocator's own group commit: groups of 64 batches of 256
//! awards, each group marking delivered 95% of the awards of the group before it (phones
//! that acknowledged), so 5% stay owed. A standby then follows the whole log from its start
//! (the one-off cost of a standby started beside a full ledger, also reported); the leader
//! commits two groups more, with marks of old awards among them; then the two reads are timed,
//! and their owed awards must be the same. Last, a leader starting cold (no standby followed
//! the log) reads it all in one snapshot.
//!
//! `scripts/bench.sh takeover` runs it (5,000,000 awards; `--awards N` for another size);
//! `cargo test` runs 40,000 as a check. PostgreSQL is a primary alone (`scripts/pg-cluster.sh`
//! via the test kit): the reads are what is measured, and a standby changes nothing in them.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use serde_json::{Map, Value};
use shake_allocator::award::{Award, BatchKey};
use shake_allocator::ledger::follow::Following;
use shake_allocator::ledger::{AnsweredBatch, CommitGroup, LedgerStore, PostgresLedger, lease};
use shake_benchkit::cli::CommonArgs;
use shake_benchkit::{report, stats};
use shake_proto::Prize;
use shake_testkit::pg_server::PgServer;
use shake_testkit::scratch::Scratch;

/// Awards per batch and batches per group commit.
const BATCH_AWARDS: u64 = 256;
const GROUP_BATCHES: u64 = 64;
/// What a standby reads at one look (`[postgres] follow_page_awards`, default).
const FOLLOW_PAGE_AWARDS: i64 = 50_000;
/// Each takeover read is timed this many times, the two ways alternated.
const READS: usize = 3;

#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Awards in the ledger (a full run's default: 5,000,000).
    #[arg(long)]
    awards: Option<u64>,
}

fn award(id: u64, seq: u64) -> Award {
    Award {
        award_id: id,
        round_id: 1,
        item: id as u32,
        // Users spread over a billion ids, as in the draw benchmark.
        user_id: id.wrapping_mul(0x9E37_79B9_7F4A_7C15) % 1_000_000_000,
        prize: Prize::Cash { cents: 100 },
        batch: BatchKey { edge_id: 1, worker_id: (seq % 2) as u16, instance_id: 7, seq },
        entry_index: (id % BATCH_AWARDS) as u32,
        granted_at_ms: 1_767_225_600_000 + id,
        delivered: false,
    }
}

/// Group `n` (0-based): its batches' awards, and marks for 95% of group `n - 1`'s.
fn group(n: u64, term_seq: u64) -> CommitGroup {
    let per_group = BATCH_AWARDS * GROUP_BATCHES;
    let first = n * per_group + 1;
    let batches = (0..GROUP_BATCHES)
        .map(|b| {
            let seq = n * GROUP_BATCHES + b + 1;
            let from = first + b * BATCH_AWARDS;
            AnsweredBatch {
                key: BatchKey { edge_id: 1, worker_id: (seq % 2) as u16, instance_id: 7, seq },
                answer: Bytes::from_static(b"answer"),
                awards: (from..from + BATCH_AWARDS).map(|id| award(id, seq)).collect(),
            }
        })
        .collect();
    let delivered = match n {
        0 => Vec::new(),
        _ => ((n - 1) * per_group + 1..first).filter(|id| id % 20 != 7).collect(),
    };
    CommitGroup { seq: term_seq, batches, delivered, ..CommitGroup::default() }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let full = args.common.full_run();
    let wanted = args.awards.unwrap_or(if full { 5_000_000 } else { 40_000 });
    let per_group = BATCH_AWARDS * GROUP_BATCHES;
    let groups = wanted.div_ceil(per_group).max(1);

    let scratch = Scratch::new("bench-takeover");
    let server = PgServer::primary(&scratch.dir.join("pg"));
    let url = server.database("takeover");
    let mut leader = PostgresLedger::open(&url)?;
    let epoch = lease::try_acquire(
        leader.client(),
        "bench",
        "-",
        Duration::from_secs(3_600),
        lease::OwnLease::NeverTook,
    )?
    .ok_or_else(|| anyhow::anyhow!("the lease is taken"))?;
    leader.lead(lease::Term::new(epoch, "bench"));

    let filling = Instant::now();
    for n in 0..groups {
        leader.commit_group(&group(n, n))?;
    }
    let fill_s = filling.elapsed().as_secs_f64();
    leader.client().batch_execute("VACUUM ANALYZE")?;
    leader.client().batch_execute("CHECKPOINT")?;

    // A standby started beside the full ledger follows it from the start.
    let mut standby = PostgresLedger::open(&url)?;
    let mut following = Following::default();
    let catching_up = Instant::now();
    loop {
        let read = standby.follow(&following.cursor, FOLLOW_PAGE_AWARDS)?;
        following.take(&read);
        if read.awards.is_empty() {
            break;
        }
    }
    let catch_up_ms = ms(catching_up);
    anyhow::ensure!(following.adds_up(), "the standby's reads do not add up");

    // The leader goes on for two groups; the first also marks old awards (phones back late).
    let mut late = group(groups, groups);
    late.delivered.extend((1..per_group).step_by(20).map(|id| id + 6));
    leader.commit_group(&late)?;
    leader.commit_group(&group(groups + 1, groups + 1))?;
    let total = (groups + 2) * per_group;

    let mut tail_ms = Vec::new();
    let mut full_ms = Vec::new();
    let mut owed_now = 0;
    for _ in 0..READS {
        // Now: the tail after the standby's cursor; the owed awards from what it followed.
        let mut warm = following.clone();
        let started = Instant::now();
        let read = standby.read_for_takeover(&warm.cursor)?;
        warm.take(&read.tail);
        anyhow::ensure!(warm.adds_up(), "the takeover's reads do not add up");
        let owed_by_tail: Vec<u64> = warm.into_owed().iter().map(|a| a.award_id).collect();
        tail_ms.push(ms(started));
        // Before: the tail, a count of every award, and every award read to find the owed.
        let started = Instant::now();
        let _tail = standby.awards_after(following.cursor.award_id, i64::MAX)?;
        let counted: i64 =
            standby.client().query_one("SELECT count(*) FROM shake_awards", &[])?.get(0);
        let owed: Vec<u64> = standby.undelivered_awards()?.iter().map(|a| a.award_id).collect();
        full_ms.push(ms(started));
        anyhow::ensure!(counted as u64 == total, "{counted} awards, {total} written");
        anyhow::ensure!(owed == owed_by_tail, "the two reads owe different awards");
        owed_now = owed.len();
    }
    // A leader starting cold (no standby followed the log: every allocator restarted) reads
    // all of it in one snapshot, the way a first look that wins the lease does.
    let started = Instant::now();
    let mut cold = Following::default();
    let read = standby.read_for_takeover(&cold.cursor)?;
    cold.take(&read.tail);
    anyhow::ensure!(cold.adds_up(), "the cold read does not add up");
    let cold_owed = cold.into_owed().len();
    let cold_ms = ms(started);
    anyhow::ensure!(cold_owed == owed_now, "the cold read owes {cold_owed}, not {owed_now}");
    let tail = stats::median(&tail_ms).unwrap_or(0.0);
    let before = stats::median(&full_ms).unwrap_or(0.0);

    let rows = vec![
        ("awards in the ledger".to_owned(), total.to_string()),
        ("awards owed (undelivered)".to_owned(), owed_now.to_string()),
        ("filled in".to_owned(), format!("{fill_s:.1} s")),
        ("a standby following it from the start".to_owned(), format!("{:.0} ms", catch_up_ms)),
        (
            format!("takeover read now, tail of {} (median of {READS})", 2 * per_group),
            format!("{tail:.1} ms"),
        ),
        (
            format!("takeover read before, every award (median of {READS})"),
            format!("{before:.0} ms"),
        ),
        (
            "a leader starting cold, no standby: the whole log".to_owned(),
            format!("{cold_ms:.0} ms"),
        ),
    ];
    let mut figures = Map::new();
    figures.insert("awards".into(), Value::from(total));
    figures.insert("owed".into(), Value::from(owed_now));
    figures.insert("standby_catch_up_ms".into(), Value::from(catch_up_ms.round()));
    figures.insert("takeover_read_ms".into(), Value::from((tail * 10.0).round() / 10.0));
    figures.insert("takeover_read_before_ms".into(), Value::from(before.round()));
    figures.insert("cold_start_read_ms".into(), Value::from(cold_ms.round()));
    let tenths = |all: &[f64]| all.iter().map(|v| (v * 10.0).round() / 10.0).collect::<Vec<_>>();
    figures.insert("takeover_reads_ms".into(), Value::from(tenths(&tail_ms)));
    figures.insert("takeover_reads_before_ms".into(), Value::from(tenths(&full_ms)));
    report::emit(
        "takeover",
        &report::table("takeover: a new leader's read of the PostgreSQL ledger", &rows),
        figures,
        args.common.results_dir().as_deref(),
    )?;
    Ok(())
}
