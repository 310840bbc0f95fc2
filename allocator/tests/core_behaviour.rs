//! The sans-IO core driven with a fake clock: exactly-once answers, resends while pending,
//! duplicate workers, round transitions and quota pushes.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use shake_allocator::award::BatchKey;
use shake_allocator::config::{CashPool, Release, RoundConfig};
use shake_allocator::core::{Core, CoreSettings, Effect, WorkerHello};
use shake_allocator::draw::Draw;
use shake_allocator::ledger::RetiredInstance;
use shake_allocator::user_rate::UserRateSettings;
use shake_proto::allocator::PROTOCOL_VERSION;
use shake_proto::{AllocatorFrame, Batch, BatchEntry, ErrorCode, RoundPhase};

const START: u64 = 1_000_000;

/// Round 1 from `START` for 100 s, its ten envelopes released at once, one prize a user.
fn round() -> RoundConfig {
    RoundConfig {
        id: 1,
        starts_at_ms: START,
        duration_s: 100,
        seed: 3,
        release: Release::Immediate,
        cash_per_user: 1,
        gifts_per_user: 1,
        min_shake_interval_ms: 100,
        start_spread_ms: 0,
        cash: Some(CashPool { total_cents: 1_000, envelopes: 10, min_cents: 1 }),
        gifts: vec![],
    }
}

fn settings() -> CoreSettings {
    CoreSettings {
        oversampling: 4.0,
        quota_valid_ms: 3_000,
        user_rate: UserRateSettings::default(),
    }
}

fn core() -> Core {
    Core::new(settings(), Draw::new(&[round()]))
}

/// `EdgeHello` of edge 7, worker 0, instance `instance`, answered up to `highest`.
fn hello(instance: u64, highest: u64) -> WorkerHello {
    WorkerHello {
        edge_id: 7,
        worker_id: 0,
        instance_id: instance,
        highest_answered_seq: highest,
        protocol_version: PROTOCOL_VERSION,
    }
}

const INSTANCE: u64 = 0x5eed;

fn batch(seq: u64) -> Batch {
    let entries: Vec<BatchEntry> =
        (0..4).map(|i| BatchEntry { user_id: seq * 10 + i, offset_us: 0 }).collect();
    Batch::new(seq, 1, START, &entries)
}

/// The command that adds `round` during the show, a moment after `START`.
fn adding(round: &RoundConfig) -> shake_allocator::round_command::RoundCommand {
    shake_allocator::round_command::RoundCommand {
        command_id: "add".into(),
        round_id: round.id,
        action: shake_allocator::round_command::RoundAction::Add { round: round.clone() },
        issued_by: "test".into(),
        at_ms: START + 1,
    }
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
    core.on_committed(&done, 0, &mut out);
    out
}

#[test]
fn nothing_is_answered_before_it_is_durable_and_resends_get_the_same_bytes() {
    let mut core = core();
    let mut fx = Vec::new();
    core.on_hello(1, hello(INSTANCE, 0), START + 10, &mut fx);
    fx.clear();
    core.on_batch(1, &batch(1), START + 20, &mut fx);
    assert!(frames(&fx, 1).is_empty(), "answered before the commit");
    assert!(matches!(fx.as_slice(), [Effect::Commit(_)]));
    // Resends while pending draw nothing new and wait; the stream hears the answer once, however
    // often it resent (the list of waiting streams does not grow with resends).
    for resent_at in 21..24 {
        let mut resend = Vec::new();
        core.on_batch(1, &batch(1), START + resent_at, &mut resend);
        assert!(resend.is_empty());
    }
    let answers = commit_all(&mut core, &mut fx);
    let sent: Vec<&Bytes> = answers
        .iter()
        .filter_map(|e| match e {
            Effect::Send(1, b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 1, "the stream hears the answer once");
    // After the commit, a resend is answered at once, identically, with no new draw.
    let mut again = Vec::new();
    core.on_batch(1, &batch(1), START + 30, &mut again);
    match again.as_slice() {
        [Effect::Send(1, bytes)] => assert_eq!(bytes, sent[0]),
        other => panic!("expected one stored answer, got {other:?}"),
    }
    assert_eq!(core.counters().batches_drawn, 1);
    assert_eq!(core.counters().batches_replayed, 4);
}

#[test]
fn a_second_stream_for_the_same_worker_replaces_the_first() {
    let mut core = core();
    let mut fx = Vec::new();
    core.on_hello(1, hello(INSTANCE, 0), START, &mut fx);
    fx.clear();
    core.on_hello(2, hello(INSTANCE, 0), START, &mut fx);
    assert!(fx.iter().any(|e| matches!(e, Effect::Close(1, ErrorCode::DuplicateWorker))));
    fx.clear();
    core.on_batch(1, &batch(1), START, &mut fx);
    assert!(matches!(fx.as_slice(), [Effect::Close(1, ErrorCode::UnexpectedFrame)]));
}

#[test]
fn hello_brings_round_state_and_a_quota_and_transitions_are_pushed() {
    let mut core = core();
    let mut fx = Vec::new();
    core.on_hello(1, hello(INSTANCE, 0), START - 5_000, &mut fx);
    let seen = frames(&fx, 1);
    // Every round, then this allocator's clock (the edge reads its deadlines by it).
    assert!(matches!(
        seen.as_slice(),
        [
            AllocatorFrame::RoundState { round, .. },
            AllocatorFrame::Heartbeat { now_ms },
        ] if round.phase == RoundPhase::Waiting && *now_ms == START - 5_000
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
    core.on_hello(1, hello(INSTANCE, 0), START, &mut fx);
    core.on_batch(1, &batch(1), START + 1, &mut fx);
    commit_all(&mut core, &mut fx);
    // The edge reconnects saying batch 1 is answered: the answer leaves memory, and a (buggy)
    // resend of batch 1 is refused rather than drawn again.
    core.on_hello(2, hello(INSTANCE, 1), START + 2, &mut fx);
    fx.clear();
    core.on_batch(2, &batch(1), START + 3, &mut fx);
    assert!(matches!(fx.as_slice(), [Effect::Close(2, ErrorCode::UnexpectedFrame)]));
    assert_eq!(core.counters().batches_drawn, 1);
    // Batch 2 is new and drawn as usual.
    fx.clear();
    core.on_hello(3, hello(INSTANCE, 1), START + 4, &mut fx);
    fx.clear();
    core.on_batch(3, &batch(2), START + 5, &mut fx);
    assert!(matches!(fx.as_slice(), [Effect::Commit(_)]));
}

/// One `Compact` effect: the sequences forgotten, and the worker's (instance, confirmed mark).
type Compaction = (Vec<u64>, Option<(u64, u64)>);

fn compactions(effects: &[Effect]) -> Vec<Compaction> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Compact { forget, worker, .. } => Some((
                forget.iter().map(|k| k.seq).collect(),
                worker.as_ref().map(|w| (w.instance_id, w.confirmed_seq)),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn results_received_forgets_answers_at_once_and_refuses_them_after() {
    let mut core = core();
    let mut fx = Vec::new();
    core.on_hello(1, hello(INSTANCE, 0), START, &mut fx);
    for seq in 1..=3 {
        core.on_batch(1, &batch(seq), START + 1, &mut fx);
    }
    commit_all(&mut core, &mut fx);
    assert_eq!(core.stored_answers(), 3);
    // The edge confirms 1 and 2 on the open stream (no reconnect needed).
    let mut fx = Vec::new();
    core.on_results_received(1, 2, &mut fx);
    assert_eq!(compactions(&fx), vec![(vec![1, 2], Some((INSTANCE, 2)))]);
    assert_eq!(core.stored_answers(), 1);
    assert_eq!(core.counters().answers_forgotten, 2);
    // The same mark again is no news.
    fx.clear();
    core.on_results_received(1, 2, &mut fx);
    assert!(fx.is_empty());
    // A (buggy) resend of a confirmed batch is refused, never drawn again.
    core.on_batch(1, &batch(2), START + 2, &mut fx);
    assert!(matches!(fx.as_slice(), [Effect::Close(1, ErrorCode::UnexpectedFrame)]));
    assert_eq!(core.counters().batches_drawn, 3);
}

#[test]
fn a_restarted_worker_is_a_new_instance_and_never_hears_the_old_answers() {
    let mut core = core();
    let mut fx = Vec::new();
    core.on_hello(1, hello(INSTANCE, 0), START, &mut fx);
    core.on_batch(1, &batch(1), START + 1, &mut fx);
    let first = commit_all(&mut core, &mut fx);
    let old_answer = first.iter().find_map(|e| match e {
        Effect::Send(1, b) => Some(b.clone()),
        _ => None,
    });
    // The worker restarts (its clock may have gone back; its name for batches did not): its
    // batch 1 is a different batch, drawn afresh, and the old instance's answers are forgotten.
    let mut fx = Vec::new();
    core.on_hello(2, hello(0xbeef, 0), START + 2, &mut fx);
    assert_eq!(compactions(&fx), vec![(vec![1], Some((0xbeef, 0)))]);
    let retired = fx.iter().find_map(|e| match e {
        Effect::Compact { retired, .. } => Some(*retired),
        _ => None,
    });
    let worker = shake_allocator::award::WorkerKey { edge_id: 7, worker_id: 0 };
    assert_eq!(retired, Some(Some(RetiredInstance { worker, instance_id: INSTANCE })));
    fx.clear();
    core.on_batch(2, &batch(1), START + 3, &mut fx);
    assert!(matches!(fx.as_slice(), [Effect::Commit(_)]), "{fx:?}");
    let answers = commit_all(&mut core, &mut fx);
    let new_answer = answers.iter().find_map(|e| match e {
        Effect::Send(2, b) => Some(b.clone()),
        _ => None,
    });
    assert_ne!(new_answer, old_answer);
    // The old instance coming back (a stale process) is refused; the new one keeps its stream.
    let mut fx = Vec::new();
    core.on_hello(3, hello(INSTANCE, 1), START + 4, &mut fx);
    assert!(matches!(fx.as_slice(), [Effect::Close(3, ErrorCode::DuplicateWorker)]), "{fx:?}");
    fx.clear();
    core.on_batch(2, &batch(2), START + 5, &mut fx);
    assert!(matches!(fx.as_slice(), [Effect::Commit(_)]));
}

#[test]
fn unconfirmed_batches_are_bounded_per_worker() {
    let mut core = core();
    let mut fx = Vec::new();
    core.on_hello(1, hello(INSTANCE, 0), START, &mut fx);
    let max = shake_proto::limits::MAX_UNCONFIRMED_BATCHES as u64;
    for seq in 1..=max {
        core.on_batch(1, &batch(seq), START + 1, &mut fx);
        if seq % 512 == 0 {
            commit_all(&mut core, &mut fx);
        }
    }
    assert_eq!(core.stored_answers() as u64 + core.pending_batches() as u64, max);
    fx.clear();
    core.on_batch(1, &batch(max + 1), START + 1, &mut fx);
    assert!(matches!(fx.as_slice(), [Effect::Close(1, ErrorCode::Flood)]), "{fx:?}");
    // Confirming makes room again.
    core.on_hello(2, hello(INSTANCE, max - 10), START + 2, &mut fx);
    fx.clear();
    core.on_batch(2, &batch(max + 1), START + 3, &mut fx);
    assert!(matches!(fx.as_slice(), [Effect::Commit(_)]));
}

#[test]
fn a_resend_with_other_content_is_counted_and_gets_the_stored_answer() {
    let mut core = core();
    let mut fx = Vec::new();
    core.on_hello(1, hello(INSTANCE, 0), START, &mut fx);
    core.on_batch(1, &batch(1), START + 1, &mut fx);
    commit_all(&mut core, &mut fx);
    let forged = Batch::new(1, 1, START, &[BatchEntry { user_id: 999, offset_us: 0 }]);
    let mut fx = Vec::new();
    core.on_batch(1, &forged, START + 2, &mut fx);
    assert_eq!(core.counters().batches_conflicting, 1);
    match frames(&fx, 1).as_slice() {
        // The answer still names the batch first drawn: the edge will refuse it.
        [AllocatorFrame::BatchResult { digest, .. }] => {
            assert_eq!(*digest, batch(1).digest());
            assert_ne!(*digest, forged.digest());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn restore_keeps_the_current_instances_answers_and_compacts_the_rest() {
    use shake_allocator::award::WorkerKey;
    use shake_allocator::ledger::WorkerRecord;
    let mut core = core();
    let worker = WorkerKey { edge_id: 7, worker_id: 0 };
    let key = |instance_id, seq| BatchKey { edge_id: 7, worker_id: 0, instance_id, seq };
    let records =
        vec![WorkerRecord { worker, instance_id: INSTANCE, confirmed_seq: 2, retired: vec![1] }];
    let answers = [key(INSTANCE, 2), key(INSTANCE, 3), key(1, 9), key(77, 1)]
        .into_iter()
        .map(|k| (k, Bytes::from_static(b"answer")))
        .collect();
    let mut fx = Vec::new();
    core.restore(records, answers, &mut fx);
    assert_eq!(core.stored_answers(), 1, "only batch 3 of the current instance is unconfirmed");
    let mut forgotten = match fx.as_slice() {
        [Effect::Compact { forget, worker: None, retired: None }] => forget.clone(),
        other => panic!("{other:?}"),
    };
    forgotten.sort_unstable();
    assert_eq!(forgotten, vec![key(1, 9), key(77, 1), key(INSTANCE, 2)]);
    // The retired instance stays refused after the restart.
    fx.clear();
    core.on_hello(1, hello(1, 9), START, &mut fx);
    assert!(matches!(fx.as_slice(), [Effect::Close(1, ErrorCode::DuplicateWorker)]));
}

/// A large gift pool released at once lets every entry of a batch win; an answer listing
/// 16,384 winners of long-named gifts would be larger than an edge accepts, and the edge would
/// refuse it on every resend. At most `MAX_WINNERS_PER_RESULT` win in one batch; the prizes
/// left go to the next batches.
#[test]
fn one_answer_lists_no_more_winners_than_a_frame_holds() {
    use shake_allocator::config::GiftPool;
    use shake_proto::limits::{MAX_ALLOCATOR_PAYLOAD, MAX_BATCH_ENTRIES, MAX_WINNERS_PER_RESULT};
    let gifts = 2 * MAX_BATCH_ENTRIES as u64;
    let round = RoundConfig {
        cash: None,
        gifts: vec![GiftPool { sku: "G".repeat(64), name: "Gift".into(), count: gifts }],
        ..round()
    };
    let mut core = Core::new(settings(), Draw::new(&[round]));
    let mut fx = Vec::new();
    core.on_hello(1, hello(INSTANCE, 0), START, &mut fx);
    let mut granted = Vec::new();
    for seq in 1..=2u64 {
        let entries: Vec<BatchEntry> = (0..MAX_BATCH_ENTRIES as u64)
            .map(|i| BatchEntry { user_id: seq * 100_000 + i, offset_us: 0 })
            .collect();
        fx.clear();
        core.on_batch(1, &Batch::new(seq, 1, START, &entries), START + 1, &mut fx);
        let [Effect::Commit(batch)] = fx.as_slice() else { panic!("{fx:?}") };
        let header = shake_proto::frame::check(&batch.answer, MAX_ALLOCATOR_PAYLOAD);
        assert!(header.is_ok(), "batch {seq}: an answer of {} bytes", batch.answer.len());
        granted.push(batch.awards.len());
    }
    assert_eq!(granted, vec![MAX_WINNERS_PER_RESULT; 2], "each batch wins as many as fit");
}

/// A batch stamped at the end of time (an edge's clock gone wrong) is judged as at most a
/// minute ahead of the allocator's: its users may shake again after that minute, not never.
#[test]
fn a_shake_time_far_ahead_of_the_allocators_clock_limits_its_user_for_a_minute_at_most() {
    use shake_allocator::draw::EDGE_CLOCK_AHEAD_MAX_MS;
    use shake_allocator::user_rate::UserRates;
    let round = RoundConfig {
        duration_s: 1_000,
        cash_per_user: 10,
        cash: Some(CashPool { total_cents: 1_000, envelopes: 100, min_cents: 1 }),
        ..round()
    };
    let mut draw = Draw::new(&[round]);
    let mut rates = UserRates::new(UserRateSettings::default());
    let entries = [BatchEntry { user_id: 5, offset_us: 0 }];
    let key = |seq| BatchKey { edge_id: 7, worker_id: 0, instance_id: INSTANCE, seq };
    let mut awards = Vec::new();
    let far = shake_proto::varint::MAX;
    draw.decide(key(1), &Batch::new(1, 1, far, &entries), START + 1, &mut rates, &mut awards);
    assert_eq!(awards.len(), 1, "the first shake wins (every envelope is released)");
    let later = START + 2 + EDGE_CLOCK_AHEAD_MAX_MS + 1_000;
    draw.decide(key(2), &Batch::new(2, 1, later, &entries), later, &mut rates, &mut awards);
    assert_eq!(awards.len(), 2, "the user shakes again a minute later and wins");
}

/// A stale process may come back after its worker started any number of times: its
/// instance is refused however long ago it retired, and after a restart from the ledger's
/// records (which list every retired instance when read, the newest eight when written).
#[test]
fn an_instance_retired_any_number_of_starts_ago_stays_refused() {
    use shake_allocator::core::RETIRED_IN_RECORD;
    use shake_allocator::ledger::WorkerRecord;
    let starts = 3 * RETIRED_IN_RECORD as u64;
    let mut first = core();
    let mut records = HashMap::new();
    let mut retired_log = Vec::new();
    let mut fx = Vec::new();
    for (stream, instance) in (1..=starts).enumerate() {
        first.on_hello(stream as u64, hello(instance, 0), START, &mut fx);
        for effect in fx.drain(..) {
            if let Effect::Compact { worker: Some(record), retired, .. } = effect {
                retired_log.extend(retired.map(|r| r.instance_id));
                records.insert(record.worker, record);
            }
        }
    }
    assert_eq!(retired_log, (1..starts).collect::<Vec<u64>>(), "each start retires the one before");
    let [record]: [WorkerRecord; 1] = records.into_values().collect::<Vec<_>>().try_into().unwrap();
    assert_eq!(record.retired.len(), RETIRED_IN_RECORD, "the record stays bounded");
    for instance in 1..starts {
        first.on_hello(100 + instance, hello(instance, 0), START, &mut fx);
        assert!(
            matches!(fx.as_slice(), [Effect::Close(_, ErrorCode::DuplicateWorker)]),
            "instance {instance}: {fx:?}"
        );
        fx.clear();
    }
    // Restarted from what a ledger reads back: the log of retirements merged into the record.
    let mut restored = core();
    let mut read = record.clone();
    read.retired = retired_log.clone();
    restored.restore(vec![read], HashMap::new(), &mut fx);
    fx.clear();
    for instance in [1, starts - 1] {
        restored.on_hello(1, hello(instance, 0), START, &mut fx);
        assert!(
            matches!(fx.as_slice(), [Effect::Close(1, ErrorCode::DuplicateWorker)]),
            "restored, instance {instance}: {fx:?}"
        );
        fx.clear();
    }
    // It still writes the newest few in its records, and the current instance is welcome.
    restored.on_hello(2, hello(starts, 5), START, &mut fx);
    let written = fx.iter().find_map(|e| match e {
        Effect::Compact { worker: Some(record), .. } => Some(record.retired.clone()),
        _ => None,
    });
    assert_eq!(written, Some(record.retired.clone()));
    assert!(!fx.iter().any(|e| matches!(e, Effect::Close(..))), "{fx:?}");
}

/// One user shaking through two edges and two workers (four streams) at ten times the
/// per-user rate: only the rate is drawn, the user is named to every edge that speaks
/// version 3 (not to a version-2 edge), and a worker that connects later hears of it too.
#[test]
fn one_user_through_many_edges_is_held_to_the_per_user_rate() {
    let settings = CoreSettings {
        oversampling: 4.0,
        quota_valid_ms: 3_000,
        user_rate: UserRateSettings {
            per_s: 10.0,
            burst: 20.0,
            max_tracked_users: 1_000,
            limit_after_excess: 20,
            limit_for_ms: 60_000,
        },
    };
    let round = RoundConfig {
        // Every entry drawn wins (caps high, prizes plenty): awards count the entries drawn.
        cash_per_user: 255,
        gifts_per_user: 0,
        cash: Some(CashPool { total_cents: 1_000_000, envelopes: 10_000, min_cents: 1 }),
        ..round()
    };
    let mut core = Core::new(settings, Draw::new(&[round]));
    let mut fx = Vec::new();
    let streams: [(u64, u64, u16, u32); 4] =
        [(1, 7, 0, PROTOCOL_VERSION), (2, 7, 1, PROTOCOL_VERSION), (3, 8, 0, 3), (4, 8, 1, 2)];
    for (stream, edge_id, worker_id, protocol_version) in streams {
        let hello = WorkerHello {
            edge_id,
            worker_id,
            instance_id: stream,
            highest_answered_seq: 0,
            protocol_version,
        };
        core.on_hello(stream, hello, START, &mut fx);
    }
    fx.clear();
    // Cheater 42 shakes 100 times a second on each of four streams for 2 s (ten batches of
    // 20 entries per stream); honest user 43 shakes 5 times a second on stream 1.
    const CHEATER: u64 = 42;
    let mut seq = [0u64; 4];
    for tenth in 0..20u64 {
        for (i, (stream, ..)) in streams.iter().enumerate() {
            seq[i] += 1;
            let mut entries: Vec<BatchEntry> = (0..10)
                .map(|k| BatchEntry { user_id: CHEATER, offset_us: (k * 10_000) as u32 })
                .collect();
            if i == 0 && tenth % 2 == 0 {
                entries.push(BatchEntry { user_id: 43, offset_us: 0 });
            }
            let batch = Batch::new(seq[i], 1, START + tenth * 100, &entries);
            core.on_batch(*stream, &batch, START + tenth * 100 + 5, &mut fx);
        }
    }
    core.on_tick(START + 2_000, &mut fx);
    let won = |user| {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Commit(b) => Some(b.awards.iter().filter(|a| a.user_id == user).count()),
                _ => None,
            })
            .sum::<usize>()
    };
    // 800 cheater entries in 2 s: at most the burst plus 2 s at the rate are drawn.
    let drawn_for_cheater = won(CHEATER);
    assert!(drawn_for_cheater <= 20 + 20, "{drawn_for_cheater} entries of the cheater drawn");
    assert!(drawn_for_cheater >= 20, "the burst is drawn: {drawn_for_cheater}");
    assert_eq!(won(43), 10, "the honest user's every entry is drawn");
    let c = core.counters();
    assert_eq!(c.entries_over_user_rate, 800 - drawn_for_cheater as u64);
    assert_eq!(c.users_limited, 1);
    let limited = |fx: &[Effect], stream| {
        frames(fx, stream)
            .into_iter()
            .filter_map(|f| match f {
                AllocatorFrame::UsersLimited { user_ids, until_ms } => Some((user_ids, until_ms)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    for stream in [1, 2, 3] {
        // Its limit runs from the entry that earned it (a second in), for 60 s.
        assert_eq!(limited(&fx, stream), vec![(vec![CHEATER], START + 61_000)], "{stream}");
    }
    assert!(limited(&fx, 4).is_empty(), "a version-2 edge does not know the frame");
    // A worker that connects while the limit lasts hears of it.
    fx.clear();
    let late = WorkerHello {
        edge_id: 9,
        worker_id: 0,
        instance_id: 99,
        highest_answered_seq: 0,
        protocol_version: PROTOCOL_VERSION,
    };
    core.on_hello(5, late, START + 3_000, &mut fx);
    let told = limited(&fx, 5);
    assert_eq!(told, vec![(vec![CHEATER], START + 61_000)], "what is left of the limit");
    // Connecting a second before the limit ends: a second of it, not a fresh minute (before,
    // START + 120,000: a limit twice its length on the edge that reconnected).
    fx.clear();
    core.on_hello(
        6,
        WorkerHello { worker_id: 1, instance_id: 100, ..late },
        START + 60_000,
        &mut fx,
    );
    assert_eq!(limited(&fx, 6), vec![(vec![CHEATER], START + 61_000)]);
    fx.clear();
    core.on_hello(
        7,
        WorkerHello { worker_id: 2, instance_id: 101, ..late },
        START + 61_500,
        &mut fx,
    );
    assert!(limited(&fx, 7).is_empty(), "the limit is over");
}

/// A top-up is held to the round's bounds before it is recorded, its pools each within theirs
/// or not: every prize costs the allocator's memory (about 25 bytes, in the leader and every
/// standby, built again at each replay), and a gift pool's index is 16 bits. Pools of
/// 100,000,000 each passed the old bound of 2^32 prizes up to 42 of them (100 GB on apply).
#[test]
fn a_top_up_past_the_rounds_bounds_is_refused_before_it_is_recorded() {
    use shake_allocator::config::{GiftPool, MAX_PRIZES_PER_POOL, MAX_PRIZES_PER_ROUND};
    use shake_allocator::round_command::{Refusal, RoundAction, RoundCommand};
    let draw = Draw::new(&[round()]);
    let gift = |sku: String, count: u64| GiftPool { name: sku.clone(), sku, count };
    let top_up = |gifts: Vec<GiftPool>| RoundCommand {
        command_id: "t".into(),
        round_id: 1,
        action: RoundAction::TopUp { cash: None, gifts },
        issued_by: "test".into(),
        at_ms: START + 1,
    };
    // The round holds ten envelopes: a full pool and one that fills the round exactly.
    let last = MAX_PRIZES_PER_ROUND - MAX_PRIZES_PER_POOL - 10;
    let pools = |last| vec![gift("a".into(), MAX_PRIZES_PER_POOL), gift("b".into(), last)];
    assert!(draw.check_new_command(&top_up(pools(last))).is_ok());
    assert!(matches!(
        draw.check_new_command(&top_up(pools(last + 1))),
        Err(Refusal::Invalid(said)) if said.contains("200,000,000 prizes")
    ));
    let skus = |n: usize| (0..n).map(|i| gift(format!("g{i}"), 1)).collect::<Vec<_>>();
    assert!(draw.check_new_command(&top_up(skus(65_536))).is_ok());
    assert!(matches!(
        draw.check_new_command(&top_up(skus(65_537))),
        Err(Refusal::Invalid(said)) if said.contains("65,536 gifts")
    ));
}

/// A cash pool's total is bounded (`MAX_CENTS_PER_POOL`), configured or topped up: an envelope
/// is written as a varint (at most 2^62 - 1), and an envelope of 2^63 cents passed every check
/// and stopped the allocator with a panic at its first winner (the answer's encoding asserts).
/// The largest pool allowed pays its winner.
#[test]
fn a_cash_pool_past_its_bound_is_refused_and_the_largest_allowed_pays() {
    use shake_allocator::config::MAX_CENTS_PER_POOL;
    use shake_allocator::round_command::{Refusal, RoundAction, RoundCommand};
    let one_envelope =
        |total_cents| Some(CashPool { total_cents, envelopes: 1, min_cents: total_cents });
    let at = |field: &str| field.to_owned();
    for total in [MAX_CENTS_PER_POOL + 1, u64::MAX / 2 + 1, u64::MAX] {
        let huge = RoundConfig { cash: one_envelope(total), ..round() };
        assert!(huge.check_limits(&at).is_err(), "{total} cents in one pool");
        // Added during the show: refused before it is recorded.
        let draw = Draw::new(&[round()]);
        let later = RoundConfig { id: 2, starts_at_ms: START + 500_000, ..huge };
        let said = draw.check_new_command(&adding(&later));
        assert!(matches!(said, Err(Refusal::Invalid(_))), "{total}: {said:?}");
    }
    // A top-up that takes the round's cash past the bound is refused; one that fills it, not.
    let draw = Draw::new(&[round()]);
    let top_up = |total_cents| RoundCommand {
        command_id: "t".into(),
        round_id: 1,
        action: RoundAction::TopUp {
            cash: Some(CashPool { total_cents, envelopes: 1, min_cents: 1 }),
            gifts: vec![],
        },
        issued_by: "test".into(),
        at_ms: START + 1,
    };
    let room = MAX_CENTS_PER_POOL - round().cash.unwrap().total_cents;
    assert!(draw.check_new_command(&top_up(room)).is_ok());
    assert!(matches!(
        draw.check_new_command(&top_up(room + 1)),
        Err(Refusal::Invalid(said)) if said.contains("cents")
    ));
    // The largest pool allowed: its one envelope is drawn, committed and answered.
    let largest = RoundConfig { cash: one_envelope(MAX_CENTS_PER_POOL), ..round() };
    assert!(largest.check_limits(&at).is_ok());
    let mut core = Core::new(settings(), Draw::new(&[largest]));
    let mut fx = Vec::new();
    core.on_hello(1, hello(INSTANCE, 0), START + 1, &mut fx);
    fx.clear();
    core.on_batch(1, &batch(1), START + 2, &mut fx);
    let answers = commit_all(&mut core, &mut fx);
    let paid: Vec<u64> = frames(&answers, 1)
        .iter()
        .filter_map(|f| match f {
            AllocatorFrame::BatchResult { winners, .. } => Some(winners.clone()),
            _ => None,
        })
        .flatten()
        .filter_map(|w| match w.prize {
            shake_proto::Prize::Cash { cents } => Some(cents),
            _ => None,
        })
        .collect();
    assert_eq!(paid, vec![MAX_CENTS_PER_POOL]);
}

/// A round closed for `WINNERS_KEPT_AFTER_CLOSE_MS` forgets its winners (kept, one entry per
/// winner of every round of the show stayed in every allocator's memory to its end) and draws
/// nothing more, even with the clock stepped back into its times, where a winner forgotten
/// could have won past the cap. A restart after it does not build the table again.
#[test]
fn a_round_long_closed_forgets_its_winners_and_draws_no_more() {
    use shake_allocator::draw::WINNERS_KEPT_AFTER_CLOSE_MS;
    let mut draw = Draw::new(&[round()]);
    let mut rates = shake_allocator::user_rate::UserRates::off();
    let key = |seq| BatchKey { edge_id: 7, worker_id: 0, instance_id: INSTANCE, seq };
    let mut awards = Vec::new();
    assert!(draw.decide(key(1), &batch(1), START + 1, &mut rates, &mut awards));
    assert_eq!((awards.len(), draw.winners_remembered()), (4, 4));
    let closed_at = START + round().duration_s * 1000;
    draw.finish_closed(closed_at + WINNERS_KEPT_AFTER_CLOSE_MS - 1);
    assert_eq!(draw.winners_remembered(), 4, "closed a moment short of the margin");
    draw.finish_closed(closed_at + WINNERS_KEPT_AFTER_CLOSE_MS);
    assert_eq!(draw.winners_remembered(), 0);
    // The wall clock stepped back into the round: the same users shake again.
    assert!(!draw.decide(key(2), &batch(1), START + 2, &mut rates, &mut awards));
    assert_eq!(awards.len(), 4, "no award past the round's end");
    // Nor does an operator's command take it back while the clock is stepped back.
    use shake_allocator::round_command::{Refusal, RoundAction, RoundCommand};
    let extend = RoundCommand {
        command_id: "extend".into(),
        round_id: 1,
        action: RoundAction::Extend { by_ms: 60_000 },
        issued_by: "test".into(),
        at_ms: START + 2,
    };
    assert_eq!(draw.check_new_command(&extend), Err(Refusal::AlreadyClosed(1)));
    // A restart long after: its awards restored into a finished round leave no table.
    let mut restarted = Draw::new(&[round()]);
    restarted.finish_closed(closed_at + WINNERS_KEPT_AFTER_CLOSE_MS);
    for award in &awards {
        restarted.restore(award).unwrap();
    }
    assert_eq!(restarted.winners_remembered(), 0);
    assert_eq!(restarted.rounds()[0].pool().awarded_count(), 4, "the pool still knows them");
}

/// A round added live and then written into the configuration the same (an operator keeping
/// the file true): the recorded `add` replays as nothing. Before, every later start failed
/// ("round 2 exists already"), most likely a crash restart mid-show. Written differently, the
/// replay still fails, naming the command, its time and who gave it.
#[test]
fn a_round_added_live_and_configured_the_same_replays() {
    use shake_allocator::round_command::RoundCommand;
    let added = RoundConfig { id: 2, starts_at_ms: START + 500_000, ..round() };
    let add =
        RoundCommand { command_id: "add-2".into(), issued_by: "ops".into(), ..adding(&added) };
    let mut live = Draw::new(&[round()]);
    live.apply_command(&add).unwrap();
    let mut configured = Draw::new(&[round(), added.clone()]);
    assert_eq!(configured.apply_command(&add), Ok(*live.rounds()[1].timing()));
    assert_eq!(configured.rounds().len(), 2, "round 2 once");
    let mut differs = Draw::new(&[round(), RoundConfig { seed: added.seed + 1, ..added }]);
    let refusal = differs.apply_command(&add).unwrap_err();
    let said = shake_allocator::service::ServeError::replay(&add, refusal).to_string();
    for part in ["\"add-2\"", "add of round 2", "by ops", "exists already"] {
        assert!(said.contains(part), "{part:?} in {said}");
    }
}

/// Entries of a round this allocator does not know, or that is not open, are no-luck and
/// counted: the sign of an edge whose clock or round table disagrees with the allocator's.
#[test]
fn entries_for_a_round_not_open_here_are_counted() {
    let mut core = core();
    let mut fx = Vec::new();
    core.on_hello(1, hello(INSTANCE, 0), START - 10, &mut fx);
    let unknown_round = Batch::new(1, 9, START, &[BatchEntry { user_id: 5, offset_us: 0 }]);
    core.on_batch(1, &unknown_round, START + 1, &mut fx);
    core.on_batch(1, &batch(2), START - 5, &mut fx);
    assert_eq!(core.counters().entries_round_not_open, 5, "one of round 9, four before round 1");
    core.on_batch(1, &batch(3), START + 2, &mut fx);
    assert_eq!(core.counters().entries_round_not_open, 5, "round 1 is open");
    assert_eq!(core.counters().entries_drawn, 9);
}

/// A round's times are bounded when it is configured or added: a length near 2^64 (or a start
/// in microseconds) was recorded, and its end, past the 2^62 a varint carries, stopped the
/// allocator at its next RoundState, and at every start after, from the recorded command. A
/// round recorded so by an earlier build (replays are not held to the bounds) is sent with its
/// times clamped, not a panic.
#[test]
fn a_round_time_past_its_bound_is_refused_and_a_recorded_one_still_travels() {
    use shake_allocator::round_command::Refusal;
    let at = |field: &str| field.to_owned();
    let endless =
        RoundConfig { id: 2, starts_at_ms: START + 500_000, duration_s: u64::MAX / 4, ..round() };
    let in_micros = RoundConfig { id: 2, starts_at_ms: 1_765_000_000_000_000, ..round() };
    for (bad, field) in [(&endless, "duration_s"), (&in_micros, "starts_at_ms")] {
        let said = bad.check_limits(&at);
        assert!(said.as_ref().is_err_and(|e| e.to_string().contains(field)), "{said:?}");
        let said = Draw::new(&[round()]).check_new_command(&adding(bad));
        assert!(matches!(said, Err(Refusal::Invalid(_))), "{said:?}");
    }
    // As if recorded by an earlier build: configured directly, no bound checked.
    let mut core = Core::new(settings(), Draw::new(&[round(), endless]));
    let mut fx = Vec::new();
    core.on_hello(1, hello(INSTANCE, 0), START + 1, &mut fx);
    let ends: Vec<u64> = frames(&fx, 1)
        .iter()
        .filter_map(|f| match f {
            AllocatorFrame::RoundState { round, .. } if round.round_id == 2 => {
                Some(round.ends_at_ms)
            }
            _ => None,
        })
        .collect();
    assert_eq!(ends, vec![shake_proto::varint::MAX]);
}

/// A round's quota goes to the edges a second before it opens (`QUOTA_LEAD_MS`), whatever
/// its rate, beside the open round's: the edge applies a quota to the round it names only, and
/// before, each round opened on the edges' fallback rate until the first tick after it opened
/// (and a rate within a tenth of the last round's waited a third of `quota_valid_ms`).
#[test]
fn the_next_rounds_quota_is_sent_before_it_opens() {
    // Round 1's last second asks 4 x 10 prizes a second; round 2's 1,000 prizes over 100 s
    // the same 40 a second.
    let second = RoundConfig {
        id: 2,
        starts_at_ms: START + 100_000,
        cash: Some(CashPool { total_cents: 1_000, envelopes: 1_000, min_cents: 1 }),
        ..round()
    };
    let mut core = Core::new(settings(), Draw::new(&[round(), second]));
    let mut fx = Vec::new();
    core.on_hello(1, hello(INSTANCE, 0), START + 1, &mut fx);
    core.on_tick(START + 1, &mut fx);
    let quotas = |fx: &[Effect]| -> Vec<(u32, u32)> {
        frames(fx, 1)
            .iter()
            .filter_map(|f| match f {
                AllocatorFrame::Quota { round_id, rate_per_s, .. } => {
                    Some((*round_id, *rate_per_s))
                }
                _ => None,
            })
            .collect()
    };
    assert_eq!(quotas(&fx).iter().map(|q| q.0).collect::<Vec<_>>(), vec![1]);
    // Just before the lead (a second): round 2's quota not yet.
    fx.clear();
    core.on_tick(START + 98_999, &mut fx);
    assert!(quotas(&fx).iter().all(|q| q.0 == 1), "{:?}", quotas(&fx));
    // Within the lead: round 2's quota, at its own rate, while round 1 is still open.
    fx.clear();
    core.on_tick(START + 99_500, &mut fx);
    let sent = quotas(&fx);
    assert!(sent.iter().any(|q| q.0 == 2), "{sent:?}");
    // At the opening nothing new is due: the edge has it already; refreshed as any quota.
    fx.clear();
    core.on_tick(START + 100_000, &mut fx);
    assert!(quotas(&fx).is_empty(), "{:?}", quotas(&fx));
    fx.clear();
    core.on_tick(START + 100_000 + 1_000, &mut fx);
    assert_eq!(quotas(&fx).iter().map(|q| q.0).collect::<Vec<_>>(), vec![2], "a third of 3 s on");
}

/// A wall clock stepped back: the quota last sent "later" than now is due at once. Before, no
/// quota was refreshed by age until the clock caught up with the last send, and the edges'
/// copies expired meanwhile: every edge on its fallback rate for the size of the step.
#[test]
fn a_clock_stepped_back_still_refreshes_the_quota() {
    let mut core = core();
    let mut fx = Vec::new();
    core.on_hello(1, hello(INSTANCE, 0), START + 1_000, &mut fx);
    core.on_tick(START + 10_000, &mut fx);
    let sent = |fx: &[Effect]| {
        frames(fx, 1).iter().filter(|f| matches!(f, AllocatorFrame::Quota { .. })).count()
    };
    fx.clear();
    core.on_tick(START + 10_500, &mut fx);
    assert_eq!(sent(&fx), 0, "not due: a sixth of its life on");
    fx.clear();
    core.on_tick(START + 5_000, &mut fx);
    assert_eq!(sent(&fx), 1, "the clock stepped back 5.5 s");
}

/// Bounds added since a ledger was written hold new commands only: a round an earlier build
/// recorded with an interval now out of range replays (else the ledger would not open, on a
/// restart or on every standby of a rolling upgrade), the same round sent now is refused.
#[test]
fn a_command_recorded_before_a_bound_existed_still_replays() {
    use shake_allocator::round_command::{Refusal, RoundAction, RoundCommand};
    let mut draw = Draw::new(&[round()]);
    let eager =
        RoundConfig { id: 2, starts_at_ms: START + 200_000, min_shake_interval_ms: 5, ..round() };
    let add = RoundCommand {
        command_id: "add-2".into(),
        round_id: 2,
        action: RoundAction::Add { round: eager },
        issued_by: "test".into(),
        at_ms: START + 1,
    };
    assert!(matches!(
        draw.check_new_command(&add),
        Err(Refusal::Invalid(said)) if said.contains("min_shake_interval_ms")
    ));
    draw.apply_command(&add).unwrap();
    assert!(draw.round(2).is_some());
}

/// An envelope too large to travel in an answer (a top-up an earlier build recorded, before
/// cash pools were bounded) still replays, and is never drawn: drawn, its answer's encoding
/// panicked the allocator before the commit, at every restart and on every standby in turn.
#[test]
fn an_envelope_recorded_too_large_to_travel_replays_and_is_never_drawn() {
    use shake_allocator::round_command::{RoundAction, RoundCommand};
    let mut draw = Draw::new(&[round()]);
    let top_up = RoundCommand {
        command_id: "top-up-huge".into(),
        round_id: 1,
        action: RoundAction::TopUp {
            cash: Some(CashPool { total_cents: 1 << 62, envelopes: 1, min_cents: 1 << 62 }),
            gifts: vec![],
        },
        issued_by: "an earlier build".into(),
        at_ms: START + 1,
    };
    draw.apply_command(&top_up).unwrap();
    let mut rates = shake_allocator::user_rate::UserRates::off();
    let key = |seq| BatchKey { edge_id: 7, worker_id: 0, instance_id: INSTANCE, seq };
    let entries: Vec<BatchEntry> =
        (0..16).map(|i| BatchEntry { user_id: 100 + i, offset_us: 0 }).collect();
    let mut awards = Vec::new();
    assert!(draw.decide(
        key(1),
        &Batch::new(1, 1, START, &entries),
        START + 2,
        &mut rates,
        &mut awards
    ));
    assert_eq!(awards.len(), 10, "the round's own ten envelopes, not the eleventh");
    for award in &awards {
        let shake_proto::Prize::Cash { cents } = award.prize else { panic!("{award:?}") };
        assert!(cents <= shake_proto::varint::MAX, "{award:?}");
    }
}
