//! The real binary killed with SIGKILL in the middle of a stream of batches, restarted, every
//! batch resent: answers already given come back byte for byte, no award is lost or doubled,
//! and the pool is never overspent.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use shake_proto::{AllocatorFrame, Batch, BatchEntry, ErrorCode, Prize};
use shake_testkit::edge_link::{assert_a_drain_answers_the_batch_in_flight, edge_worker};
use shake_testkit::now_ms;
use shake_testkit::processes::bin;
use shake_testkit::scratch::Scratch;
use shake_testkit::servers::Allocator;

const ENVELOPES: u64 = 300;
const TOTAL_CENTS: u64 = 30_000;
const BATCHES: u64 = 40;

/// Batch `seq` of the one edge worker instance here: a resend is the same bytes, as an edge
/// resends them.
fn batch(seq: u64) -> AllocatorFrame {
    static BASE_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let entries: Vec<BatchEntry> =
        (0..25).map(|i| BatchEntry { user_id: seq * 1000 + i, offset_us: i as u32 }).collect();
    AllocatorFrame::Batch(Batch::new(seq, 1, *BASE_MS.get_or_init(now_ms), &entries))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_resend_pays_exactly_once() {
    let scratch = Scratch::new("sigkill");
    let config = scratch.config(&format!(
        "release = \"immediate\"\n[rounds.cash]\ntotal_cents = {TOTAL_CENTS}\nenvelopes = {ENVELOPES}\n[[rounds.gifts]]\nsku = \"TEA-01\"\nname = \"Tea\"\ncount = 20\n"
    ));

    // First life: answer half the batches, then fire the rest and kill mid-stream.
    let mut alloc = Allocator::start(&config);
    let mut first_answers: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    {
        let mut stream = edge_worker(alloc.quic, &scratch, 42).await.unwrap();
        for seq in 1..=BATCHES / 2 {
            stream.send(&batch(seq)).await;
            let (answered, _, raw) = stream.next_result().await.unwrap();
            assert_eq!(answered, seq);
            first_answers.insert(seq, raw);
        }
        for seq in BATCHES / 2 + 1..=BATCHES {
            stream.send(&batch(seq)).await;
        }
        // Some of these may be answered before the kill; remember those too.
        let early = tokio::time::timeout(Duration::from_millis(30), async {
            while let Ok((seq, _, raw)) = stream.next_result().await {
                first_answers.insert(seq, raw);
            }
        });
        let _ = early.await;
        alloc.process.kill();
    }

    // Second life: resend everything from the start.
    let mut alloc = Allocator::start(&config);
    let mut stream = edge_worker(alloc.quic, &scratch, 42).await.unwrap();
    let mut second_answers: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut winners_by_award: BTreeMap<u64, (u64, u32, Prize)> = BTreeMap::new();
    for seq in 1..=BATCHES {
        stream.send(&batch(seq)).await;
        let (answered, winners, raw) = stream.next_result().await.unwrap();
        assert_eq!(answered, seq);
        for w in winners {
            let previous = winners_by_award.insert(w.award_id, (seq, w.entry_index, w.prize));
            assert!(previous.is_none(), "award {} granted twice", w.award_id);
        }
        second_answers.insert(seq, raw);
    }
    for (seq, raw) in &first_answers {
        assert_eq!(&second_answers[seq], raw, "batch {seq} answered differently after the restart");
    }
    let prizes_granted = winners_by_award.len() as u64;
    assert!(prizes_granted <= ENVELOPES + 20);
    assert!(prizes_granted > 0);

    // A resend in the same life is also answered identically.
    stream.send(&batch(3)).await;
    let (_, _, raw) = stream.next_result().await.unwrap();
    assert_eq!(raw, second_answers[&3]);

    // Phones acknowledged the first half of the awards. A batch sent after the acknowledgement
    // is answered only once its group is durable, and the mark was queued before it.
    let acked: BTreeSet<u64> =
        winners_by_award.keys().copied().take(winners_by_award.len() / 2).collect();
    stream
        .send(&AllocatorFrame::AwardDelivered { award_ids: acked.iter().copied().collect() })
        .await;
    stream.send(&batch(BATCHES + 1)).await;
    let (_, late_winners, _) = stream.next_result().await.unwrap();
    for w in late_winners {
        winners_by_award.insert(w.award_id, (BATCHES + 1, w.entry_index, w.prize));
    }

    // The ledger holds exactly what the edge was told: drain, then export.
    assert!(alloc.process.terminate().success());
    let export = Command::new(bin("shake-allocator"))
        .args(["export", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ledger_ids: BTreeSet<u64> = rows.iter().map(|r| r["award_id"].as_u64().unwrap()).collect();
    let told_ids: BTreeSet<u64> = winners_by_award.keys().copied().collect();
    assert_eq!(ledger_ids, told_ids, "ledger and answers disagree");
    let items: BTreeSet<u64> = rows.iter().map(|r| r["item"].as_u64().unwrap()).collect();
    assert_eq!(items.len(), rows.len(), "an item awarded twice");
    let cash: u64 = rows.iter().filter_map(|r| r["cents"].as_u64()).sum();
    assert!(cash <= TOTAL_CENTS, "pool overspent: {cash} > {TOTAL_CENTS}");
    for row in &rows {
        let id = row["award_id"].as_u64().unwrap();
        assert_eq!(
            row["delivered"].as_bool(),
            Some(acked.contains(&id)),
            "award {id} delivered flag"
        );
        let (seq, index, _) = &winners_by_award[&id];
        assert_eq!(row["batch_seq"].as_u64(), Some(*seq));
        assert_eq!(row["entry_index"].as_u64(), Some(u64::from(*index)));
    }
}

/// A worker process cut off from the allocator while its worker was started again and again
/// comes back with batches whose answers were forgotten when it retired: drawing them again
/// would grant a second prize for the same shakes. However many starts ago it retired, and
/// across a restart of the allocator, it is refused with `DUPLICATE_WORKER` and draws nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_retired_many_starts_ago_is_refused_across_a_restart() {
    const STALE: u64 = 100;
    /// More starts than any fixed list of retired instances the allocator once kept (eight).
    const LATER_STARTS: u64 = 20;
    let scratch = Scratch::new("stale-instance");
    let config = scratch.config(&format!(
        "release = \"immediate\"\n[rounds.cash]\ntotal_cents = {TOTAL_CENTS}\nenvelopes = {ENVELOPES}\n"
    ));
    let mut alloc = Allocator::start(&config);
    let mut stale = edge_worker(alloc.quic, &scratch, STALE).await.unwrap();
    stale.send(&batch(1)).await;
    assert_eq!(stale.next_result().await.unwrap().0, 1);
    drop(stale);
    // The worker starts again and again (each start's hello answered before the next).
    for instance in STALE + 1..=STALE + LATER_STARTS {
        let mut stream = edge_worker(alloc.quic, &scratch, instance).await.unwrap();
        let first = stream.recv().await.map(|(frame, _)| frame);
        assert!(matches!(first, Ok(AllocatorFrame::RoundState { .. })), "{instance}: {first:?}");
    }
    let refused = |err: &str| err.contains(&ErrorCode::DuplicateWorker.code().to_string());

    // The stale process resends its batch: refused (the stream may be stopped before the
    // batch is written, or the batch answered with the refusal), not drawn again.
    let resend = async |alloc: &Allocator| {
        let mut stream = edge_worker(alloc.quic, &scratch, STALE).await.unwrap();
        match stream.try_send(&batch(1)).await {
            Ok(()) => stream.next_result().await.map(|(seq, _, _)| seq),
            Err(refusal) => Err(refusal),
        }
    };
    let answer = resend(&alloc).await;
    assert!(answer.as_ref().is_err_and(|e| refused(e)), "the stale instance got {answer:?}");

    // Across a restart of the allocator too; the newest instance is still welcome.
    assert!(alloc.process.terminate().success());
    alloc = Allocator::start(&config);
    let answer = resend(&alloc).await;
    assert!(answer.as_ref().is_err_and(|e| refused(e)), "after a restart: {answer:?}");
    let mut stream = edge_worker(alloc.quic, &scratch, STALE + LATER_STARTS).await.unwrap();
    let first = stream.recv().await.map(|(frame, _)| frame);
    assert!(matches!(first, Ok(AllocatorFrame::RoundState { .. })), "{first:?}");
}

/// SIGTERM drains: a batch being committed when the signal comes is answered before the
/// allocator exits (every group is made slow to commit, so the batch is in flight). The
/// answers of the report that ended the drain were once dropped on the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_answers_the_batch_being_committed() {
    let scratch = Scratch::new("drain-answers");
    let config = scratch.config(&format!(
        "release = \"immediate\"\n[rounds.cash]\ntotal_cents = {TOTAL_CENTS}\nenvelopes = {ENVELOPES}\n"
    ));
    let mut command = Allocator::command(&config);
    command
        .env("SHAKE_FAILPOINT", "allocator-slow-commit")
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::inherit());
    let mut alloc = Allocator::spawn(command).unwrap();
    assert_a_drain_answers_the_batch_in_flight(&mut alloc, &scratch, batch).await;
}
