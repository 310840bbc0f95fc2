//! The edge worker's core and the allocator's core, both sans-IO, wired together by hand with
//! fake clocks: an edge restarted with its clock set back never hears another batch's winners,
//! and an answer that is not for the batch it names announces nothing.
//!
//! Before batches were named by a random instance id, a worker's sequence started at its start
//! time in Unix microseconds: the restart test below announced 3 awards to the wrong user
//! (`left: 3, right: 0`), and a forged answer was announced as it came.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use shake_allocator::config::Config;
use shake_allocator::core::{Core, CoreSettings, Effect, WorkerHello};
use shake_allocator::draw::Draw;
use shake_allocator::user_rate::UserRateSettings;
use shake_edge::admission::AdmissionSettings;
use shake_edge::award_book::AwardBook;
use shake_edge::batcher::BatchSettings;
use shake_edge::bucket::Rate;
use shake_edge::core::{self as edge_core, PhoneEffect, WorkerCore};
use shake_edge::phones::PhoneRef;
use shake_edge::uplink::WorkerName;
use shake_proto::allocator::PROTOCOL_VERSION;
use shake_proto::{AllocatorFrame, BatchDigest, ControlFrame, Prize, Shake, Verdict, Winner};

const T0_MS: u64 = 1_767_225_600_000;

fn allocator() -> Core {
    let config = Config::parse(&format!(
        "listen = \"127.0.0.1:0\"\nledger_path = \"l\"\n[tls]\ncert = \"c\"\nkey = \"k\"\nedge_ca = \"a\"\n\
         [[rounds]]\nid = 1\nstarts_at_ms = {T0_MS}\nduration_s = 600\nseed = 1\nrelease = \"immediate\"\n\
         cash_per_user = 100\n[rounds.cash]\ntotal_cents = 100000\nenvelopes = 1000\n"
    ))
    .unwrap();
    Core::new(
        CoreSettings {
            oversampling: 1.0,
            quota_valid_ms: 3_000,
            user_rate: UserRateSettings::default(),
        },
        Draw::new(&config.rounds),
    )
}

fn edge_worker(instance_id: u64, now_us: u64) -> WorkerCore<()> {
    let settings = edge_core::CoreSettings {
        admission: AdmissionSettings {
            phone: Rate::new(1_000.0, 1_000.0),
            fallback: Rate::new(1_000.0, 1_000.0),
        },
        // One entry per batch: every shake is a batch of its own.
        batches: BatchSettings { max_entries: 1, max_age_us: 1_000, max_in_flight: 64 },
        workers: 1,
    };
    let name = WorkerName { edge_id: 1, worker_id: 0, instance_id };
    WorkerCore::new(settings, name, Arc::new(AwardBook::new(1_000, 60_000)), now_us)
}

fn decode(bytes: &Bytes) -> AllocatorFrame {
    AllocatorFrame::decode(&mut BytesMut::from(&bytes[..])).unwrap().unwrap()
}

/// The allocator's side of the wire: every ledger award by id (award -> user).
#[derive(Default)]
struct Ledger {
    user_of: HashMap<u64, u64>,
}

/// Carries what the edge's uplink writes to the allocator core, commits every draw at once,
/// and returns the frames the allocator sent back on `stream`.
fn exchange(
    edge: &mut WorkerCore<()>,
    alloc: &mut Core,
    ledger: &mut Ledger,
    stream: u64,
    now_ms: u64,
) -> Vec<AllocatorFrame> {
    let mut effects = Vec::new();
    while let Some(bytes) = edge.uplink().poll_transmit() {
        match decode(&bytes) {
            AllocatorFrame::EdgeHello {
                edge_id,
                worker_id,
                instance_id,
                highest_answered_seq,
                ..
            } => {
                let hello = WorkerHello {
                    edge_id,
                    worker_id,
                    instance_id,
                    highest_answered_seq,
                    protocol_version: PROTOCOL_VERSION,
                };
                alloc.on_hello(stream, hello, now_ms, &mut effects);
            }
            AllocatorFrame::Batch(batch) => alloc.on_batch(stream, &batch, now_ms, &mut effects),
            AllocatorFrame::ResultsReceived { highest_answered_seq } => {
                alloc.on_results_received(stream, highest_answered_seq, &mut effects)
            }
            _ => {}
        }
    }
    let mut committed = Vec::new();
    let mut sent = Vec::new();
    for effect in effects.drain(..) {
        match effect {
            Effect::Commit(batch) => {
                for award in &batch.awards {
                    ledger.user_of.insert(award.award_id, award.user_id);
                }
                committed.push((batch.key, batch.answer));
            }
            Effect::Send(s, bytes) if s == stream => sent.push(decode(&bytes)),
            Effect::Close(s, code) if s == stream => {
                panic!("the allocator closed the stream: {code:?}")
            }
            _ => {}
        }
    }
    alloc.on_committed(&committed, 0, &mut effects);
    for effect in effects {
        if let Effect::Send(s, bytes) = effect
            && s == stream
        {
            sent.push(decode(&bytes));
        }
    }
    sent
}

/// Delivers the allocator's frames to the edge; every award announced, as (phone, award id).
/// Quotas are left out: the fallback rate admits every shake here.
fn deliver(
    edge: &mut WorkerCore<()>,
    frames: Vec<AllocatorFrame>,
    now_us: u64,
    now_ms: u64,
) -> Vec<(PhoneRef, u64)> {
    let mut out = Vec::new();
    for frame in frames {
        if !matches!(frame, AllocatorFrame::Quota { .. }) {
            edge.on_allocator_frame(frame, now_us, now_ms, &mut out);
        }
    }
    out.into_iter()
        .filter_map(|e| match e {
            PhoneEffect::ToPhone(at, ControlFrame::Award { award_id, .. }) => Some((at, award_id)),
            _ => None,
        })
        .collect()
}

#[test]
fn an_edge_restarted_with_its_clock_set_back_announces_no_award_to_the_wrong_user() {
    let mut alloc = allocator();
    let mut ledger = Ledger::default();
    // Run 1 at clock T0 + 10 s: user 1 shakes five times; the edge dies before any answer
    // reaches it (the allocator has drawn and stored them all).
    let (run1_us, run1_ms) = (50_000_000, T0_MS + 10_000);
    let mut run1 = edge_worker(0x1111, run1_us);
    run1.uplink().link_up();
    let hello = exchange(&mut run1, &mut alloc, &mut ledger, 1, run1_ms);
    deliver(&mut run1, hello, run1_us, run1_ms);
    let phone1 = run1.add_phone(1, (), run1_us, None);
    for seq in 0..5 {
        let outcome = run1
            .on_shake(phone1, Shake { round_id: 1, seq, client_time_ms: 0 }, run1_us, run1_ms)
            .unwrap();
        assert_eq!(outcome.verdict, Verdict::Forwarded);
    }
    let unheard = exchange(&mut run1, &mut alloc, &mut ledger, 1, run1_ms);
    assert_eq!(
        unheard.iter().filter(|f| matches!(f, AllocatorFrame::BatchResult { .. })).count(),
        5
    );
    alloc.on_stream_closed(1);

    // Run 2 restarts with its clocks set back (Unix time 2 ms earlier than run 1 started,
    // monotonic from zero): user 2 shakes five times.
    let (run2_us, run2_ms) = (1_000, T0_MS + 9_998);
    let mut run2 = edge_worker(0x2222, run2_us);
    run2.uplink().link_up();
    let hello = exchange(&mut run2, &mut alloc, &mut ledger, 2, run2_ms);
    deliver(&mut run2, hello, run2_us, run2_ms);
    let phone2 = run2.add_phone(2, (), run2_us, None);
    for seq in 0..5 {
        run2.on_shake(phone2, Shake { round_id: 1, seq, client_time_ms: 0 }, run2_us, run2_ms)
            .unwrap();
    }
    let answers = exchange(&mut run2, &mut alloc, &mut ledger, 2, run2_ms);
    let announced = deliver(&mut run2, answers, run2_us, run2_ms);
    // Every batch was drawn afresh (no livelock, no stored answer of run 1 reused)...
    assert_eq!(announced.len(), 5, "user 2 won each of its five batches");
    // ...and every award announced belongs, in the ledger, to the user of the phone told.
    let wrong: Vec<_> =
        announced.iter().filter(|(at, id)| *at != phone2 || ledger.user_of[id] != 2).collect();
    assert_eq!(wrong.len(), 0, "awards announced to the wrong user: {wrong:?}");
    assert_eq!(run2.uplink().in_flight(), 0);
}

#[test]
fn an_answer_that_is_not_for_the_batch_it_names_announces_nothing() {
    let mut edge = edge_worker(0x3333, 0);
    edge.uplink().link_up();
    let round = shake_proto::RoundInfo {
        round_id: 1,
        phase: shake_proto::RoundPhase::Open,
        starts_at_ms: T0_MS,
        ends_at_ms: T0_MS + 600_000,
        start_spread_ms: 0,
    };
    let state = AllocatorFrame::RoundState { round, min_shake_interval_ms: 100 };
    deliver(&mut edge, vec![state], 0, T0_MS);
    let phone = edge.add_phone(9, (), 0, None);
    edge.on_shake(phone, Shake { round_id: 1, seq: 1, client_time_ms: 0 }, 0, T0_MS + 1).unwrap();
    // The batch goes out (hello first)...
    let frames: Vec<AllocatorFrame> =
        std::iter::from_fn(|| edge.uplink().poll_transmit()).map(|b| decode(&b)).collect();
    let AllocatorFrame::Batch(batch) = &frames[1] else { panic!("{frames:?}") };
    // ...and an answer comes back for its sequence, with the digest of some other batch.
    let forged = AllocatorFrame::BatchResult {
        seq: batch.seq,
        digest: BatchDigest([0xab; 8]),
        winners: vec![Winner { entry_index: 0, award_id: 77, prize: Prize::Cash { cents: 888 } }],
    };
    let announced = deliver(&mut edge, vec![forged], 10, T0_MS + 2);
    assert!(announced.is_empty(), "a mismatched answer was announced: {announced:?}");
    let counts = edge.take_counts();
    assert_eq!((counts.answers_mismatched, counts.awards_written), (1, 0));
    // The batch is forgotten: the real answer arriving later is unknown, and still announces
    // nothing (its award stays undelivered in the ledger, under the user the allocator drew).
    let winners = vec![Winner { entry_index: 0, award_id: 78, prize: Prize::Cash { cents: 5 } }];
    let real = AllocatorFrame::BatchResult { seq: batch.seq, digest: batch.digest(), winners };
    let late = deliver(&mut edge, vec![real], 20, T0_MS + 3);
    assert!(late.is_empty(), "a forgotten batch's answer was announced: {late:?}");
    assert_eq!(edge.take_counts().answers_unknown, 1);
    // The matching answer to a new batch is announced.
    edge.on_shake(phone, Shake { round_id: 1, seq: 2, client_time_ms: 0 }, 30, T0_MS + 4).unwrap();
    let frames: Vec<AllocatorFrame> =
        std::iter::from_fn(|| edge.uplink().poll_transmit()).map(|b| decode(&b)).collect();
    let batch = frames.iter().find_map(|f| match f {
        AllocatorFrame::Batch(b) => Some(b.clone()),
        _ => None,
    });
    let batch = batch.unwrap();
    let answer = AllocatorFrame::BatchResult {
        seq: batch.seq,
        digest: batch.digest(),
        winners: vec![Winner { entry_index: 0, award_id: 78, prize: Prize::Cash { cents: 1 } }],
    };
    assert_eq!(deliver(&mut edge, vec![answer], 40, T0_MS + 5), vec![(phone, 78)]);
}
