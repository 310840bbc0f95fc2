//! The sans-IO core driven with a fake clock: exactly-once answers, resends while pending,
//! duplicate workers, round transitions and quota pushes.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use shake_allocator::award::BatchKey;
use shake_allocator::config::{CashPool, Release, RoundConfig};
use shake_allocator::core::{Core, CoreSettings, Effect};
use shake_allocator::draw::Draw;
use shake_proto::{AllocatorFrame, Batch, BatchEntry, ErrorCode, RoundPhase};

const START: u64 = 1_000_000;

fn core() -> Core {
    let round = RoundConfig {
        id: 1,
        starts_at_ms: START,
        duration_s: 100,
        seed: 3,
        release: Release::Immediate,
        cash_per_user: 1,
        gifts_per_user: 1,
        min_shake_interval_ms: 100,
        cash: Some(CashPool { total_cents: 1_000, envelopes: 10, min_cents: 1 }),
        gifts: vec![],
    };
    let settings = CoreSettings { oversampling: 4.0, quota_valid_ms: 3_000 };
    Core::new(settings, Draw::new(&[round]), HashMap::new())
}

fn batch(seq: u64) -> Batch {
    let entries: Vec<BatchEntry> =
        (0..4).map(|i| BatchEntry { user_id: seq * 10 + i, offset_us: 0 }).collect();
    Batch::new(seq, 1, START, &entries)
}

fn frames(effects: &[Effect], stream: u64) -> Vec<AllocatorFrame> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(s, bytes) if *s == stream => {
                Some(AllocatorFrame::decode(&mut BytesMut::from(&bytes[..])).unwrap().unwrap())
            }
            _ => None,
        })
        .collect()
}

fn commit_all(core: &mut Core, effects: &mut Vec<Effect>) -> Vec<Effect> {
    let done: Vec<(BatchKey, Bytes)> = effects
        .drain(..)
        .filter_map(|e| match e {
            Effect::Commit(b) => Some((b.key, b.answer)),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    core.on_committed(&done, &mut out);
    out
}

#[test]
fn nothing_is_answered_before_it_is_durable_and_resends_get_the_same_bytes() {
    let mut core = core();
    let mut fx = Vec::new();
    core.on_hello(1, 7, 0, 0, START + 10, &mut fx);
    fx.clear();
    core.on_batch(1, &batch(1), START + 20, &mut fx);
    assert!(frames(&fx, 1).is_empty(), "answered before the commit");
    assert!(matches!(fx.as_slice(), [Effect::Commit(_)]));
    // A resend while pending draws nothing new and waits.
    let mut resend = Vec::new();
    core.on_batch(1, &batch(1), START + 21, &mut resend);
    assert!(resend.is_empty());
    let answers = commit_all(&mut core, &mut fx);
    let sent: Vec<&Bytes> = answers
        .iter()
        .filter_map(|e| match e {
            Effect::Send(1, b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 2, "the original and the resend both hear the answer");
    assert_eq!(sent[0], sent[1]);
    // After the commit, a resend is answered at once, identically, with no new draw.
    let mut again = Vec::new();
    core.on_batch(1, &batch(1), START + 30, &mut again);
    match again.as_slice() {
        [Effect::Send(1, bytes)] => assert_eq!(bytes, sent[0]),
        other => panic!("expected one stored answer, got {other:?}"),
    }
    assert_eq!(core.counters().batches_drawn, 1);
    assert_eq!(core.counters().batches_replayed, 2);
}

#[test]
fn a_second_stream_for_the_same_worker_replaces_the_first() {
    let mut core = core();
    let mut fx = Vec::new();
    core.on_hello(1, 7, 0, 0, START, &mut fx);
    fx.clear();
    core.on_hello(2, 7, 0, 0, START, &mut fx);
    assert!(fx.iter().any(|e| matches!(e, Effect::Close(1, ErrorCode::DuplicateWorker))));
    fx.clear();
    core.on_batch(1, &batch(1), START, &mut fx);
    assert!(matches!(fx.as_slice(), [Effect::Close(1, ErrorCode::UnexpectedFrame)]));
}

#[test]
fn hello_brings_round_state_and_a_quota_and_transitions_are_pushed() {
    let mut core = core();
    let mut fx = Vec::new();
    core.on_hello(1, 7, 0, 0, START - 5_000, &mut fx);
    let seen = frames(&fx, 1);
    assert!(matches!(
        seen.as_slice(),
        [AllocatorFrame::RoundState { round, .. }] if round.phase == RoundPhase::Waiting
    ));
    fx.clear();
    core.on_tick(START - 4_000, &mut fx);
    fx.clear();
    // The round opens: state pushed, and a quota for the open round.
    core.on_tick(START + 1, &mut fx);
    let seen = frames(&fx, 1);
    assert!(seen.iter().any(
        |f| matches!(f, AllocatorFrame::RoundState { round, .. } if round.phase == RoundPhase::Open)
    ));
    let quota = seen.iter().find_map(|f| match f {
        AllocatorFrame::Quota { rate_per_s, valid_until_ms, .. } => {
            Some((*rate_per_s, *valid_until_ms))
        }
        _ => None,
    });
    // 10 prizes over 100 s, oversampled 4x: 0.4/s, floored at 1/s for the fleet.
    assert_eq!(quota, Some((1, START + 1 + 3_000)));
    // Refreshed before it expires, not on every tick.
    fx.clear();
    core.on_tick(START + 100, &mut fx);
    assert!(frames(&fx, 1).is_empty());
    core.on_tick(START + 1_001, &mut fx);
    assert!(frames(&fx, 1).iter().any(|f| matches!(f, AllocatorFrame::Quota { .. })));
    // The round closes.
    fx.clear();
    core.on_tick(START + 100_000, &mut fx);
    assert!(frames(&fx, 1).iter().any(|f| matches!(f, AllocatorFrame::RoundState { round, .. } if round.phase == RoundPhase::Closed)));
}

#[test]
fn confirmed_answers_leave_memory_on_hello() {
    let mut core = core();
    let mut fx = Vec::new();
    core.on_hello(1, 7, 0, 0, START, &mut fx);
    core.on_batch(1, &batch(1), START + 1, &mut fx);
    commit_all(&mut core, &mut fx);
    // The edge reconnects saying batch 1 is answered: the answer leaves memory, and a (buggy)
    // resend of batch 1 is refused rather than drawn again.
    core.on_hello(2, 7, 0, 1, START + 2, &mut fx);
    fx.clear();
    core.on_batch(2, &batch(1), START + 3, &mut fx);
    assert!(matches!(fx.as_slice(), [Effect::Close(2, ErrorCode::UnexpectedFrame)]));
    assert_eq!(core.counters().batches_drawn, 1);
    // Batch 2 is new and drawn as usual.
    fx.clear();
    core.on_hello(3, 7, 0, 1, START + 4, &mut fx);
    fx.clear();
    core.on_batch(3, &batch(2), START + 5, &mut fx);
    assert!(matches!(fx.as_slice(), [Effect::Commit(_)]));
}
