//! One user, one chance, across edges: the edge workers' cores and the allocator's core, all
//! sans-IO, wired by hand with one fake clock (or two, for an edge whose clock is off). Also
//! what else an edge worker learns from the allocator's core this way: the rounds it no longer
//! names, and the deadlines on its clock. A cheater holds a phone on each of two workers
//! of each of two edges (what one session per user per edge cannot stop) and shakes at the
//! per-phone rate from each; an honest user shakes at the same rate from one phone. The
//! allocator holds the cheater to the per-user rate and names them to every edge, which then
//! refuse them before forwarding.

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
use shake_edge::uplink::WorkerName;
use shake_proto::{AllocatorFrame, ControlFrame, Shake, Verdict};

const T0_MS: u64 = 1_767_225_600_000;
const CHEATER: u64 = 42;
const HONEST: u64 = 43;
const RUN_MS: u64 = 10_000;

fn allocator() -> Core {
    // Every entry drawn wins (caps high, prizes plenty), so awards count entries drawn.
    allocator_with(&format!(
        "[[rounds]]\nid = 1\nstarts_at_ms = {T0_MS}\nduration_s = 600\nseed = 1\nrelease = \"immediate\"\n\
         cash_per_user = 255\ngifts_per_user = 0\n[rounds.cash]\ntotal_cents = 10000000\nenvelopes = 100000\n"
    ))
}

/// An allocator core with these rounds (TOML `[[rounds]]` tables).
fn allocator_with(rounds: &str) -> Core {
    let config = Config::parse(&format!(
        "listen = \"127.0.0.1:0\"\nledger_path = \"l\"\n[tls]\ncert = \"c\"\nkey = \"k\"\nedge_ca = \"a\"\n\
         {rounds}"
    ))
    .unwrap();
    let settings = CoreSettings {
        oversampling: 1.0,
        quota_valid_ms: 3_000,
        user_rate: UserRateSettings::default(),
    };
    Core::new(settings, Draw::new(&config.rounds))
}

fn edge_worker(edge_id: u64, worker_id: u16) -> WorkerCore<u64> {
    let settings = edge_core::CoreSettings {
        admission: AdmissionSettings {
            // The edge's per-phone default: each connection alone is within the rules.
            phone: Rate::new(10.0, 20.0),
            fallback: Rate::new(100_000.0, 100_000.0),
        },
        batches: BatchSettings { max_entries: 64, max_age_us: 5_000, max_in_flight: 64 },
        workers: 2,
    };
    let name =
        WorkerName { edge_id, worker_id, instance_id: 1000 + edge_id * 10 + u64::from(worker_id) };
    WorkerCore::new(settings, name, Arc::new(AwardBook::new(100_000, 600_000)), 0)
}

fn decode(bytes: &Bytes) -> AllocatorFrame {
    AllocatorFrame::decode(&mut BytesMut::from(&bytes[..])).unwrap().unwrap()
}

/// A new link between `worker` and `alloc`: the worker's hello, and everything the allocator
/// answers it with, at `alloc_ms` on the allocator's clock and `edge_ms` on the edge's. What
/// the worker tells its phones.
fn link_up(
    worker: &mut WorkerCore<u64>,
    alloc: &mut Core,
    alloc_ms: u64,
    edge_ms: u64,
) -> Vec<PhoneEffect> {
    worker.on_link_up();
    let mut effects = Vec::new();
    while let Some(bytes) = worker.uplink().poll_transmit() {
        if let Some(hello) = hello_of(&decode(&bytes)) {
            alloc.on_hello(1, hello, alloc_ms, &mut effects);
        }
    }
    let mut told = Vec::new();
    for effect in effects {
        if let Effect::Send(_, bytes) = effect {
            worker.on_allocator_frame(decode(&bytes), 0, edge_ms, &mut told);
        }
    }
    told
}

/// The allocator's view of a worker's `EdgeHello`.
fn hello_of(frame: &AllocatorFrame) -> Option<WorkerHello> {
    match *frame {
        AllocatorFrame::EdgeHello {
            edge_id,
            worker_id,
            instance_id,
            highest_answered_seq,
            protocol_version,
        } => Some(WorkerHello {
            edge_id,
            worker_id,
            instance_id,
            highest_answered_seq,
            protocol_version,
        }),
        _ => None,
    }
}

/// Counts by user.
#[derive(Default, Debug)]
struct PerUser {
    forwarded: HashMap<u64, u64>,
    awards: HashMap<u64, u64>,
}

#[test]
fn a_user_on_many_edges_and_workers_is_held_to_one_phone_s_rate() {
    let mut alloc = allocator();
    let mut workers: Vec<WorkerCore<u64>> =
        [(1, 0), (1, 1), (2, 0), (2, 1)].into_iter().map(|(e, w)| edge_worker(e, w)).collect();
    let mut phones = Vec::new();
    for (i, worker) in workers.iter_mut().enumerate() {
        worker.uplink().link_up();
        phones.push((i, worker.add_phone(CHEATER, CHEATER, 0, None)));
    }
    phones.push((0, workers[0].add_phone(HONEST, HONEST, 0, None)));
    let mut counts = PerUser::default();
    let mut seq = 0u64;
    let mut effects = Vec::new();
    // A few steps past the run, for the last batch's answer.
    for step in 0..=RUN_MS / 10 + 5 {
        let (now_ms, now_us) = (T0_MS + step * 10, step * 10_000);
        // Every phone shakes every 100 ms: ten a second, each phone within its own bucket.
        if step % 10 == 0 && step * 10 <= RUN_MS {
            seq += 1;
            for &(w, at) in &phones {
                let shake = Shake { round_id: 1, seq, client_time_ms: now_ms };
                let outcome = workers[w].on_shake(at, shake, now_us, now_ms).unwrap();
                let user = workers[w].phones().get(at).unwrap().user_id;
                if outcome.verdict == Verdict::Forwarded {
                    *counts.forwarded.entry(user).or_default() += 1;
                }
            }
            alloc.on_tick(now_ms, &mut effects);
        }
        // Each worker's uplink to the allocator (stream = worker index + 1).
        for (w, worker) in workers.iter_mut().enumerate() {
            worker.poll_age(now_us);
            let stream = w as u64 + 1;
            while let Some(bytes) = worker.uplink().poll_transmit() {
                let frame = decode(&bytes);
                if let Some(hello) = hello_of(&frame) {
                    alloc.on_hello(stream, hello, now_ms, &mut effects);
                    continue;
                }
                match frame {
                    AllocatorFrame::Batch(batch) => {
                        alloc.on_batch(stream, &batch, now_ms, &mut effects)
                    }
                    AllocatorFrame::ResultsReceived { highest_answered_seq } => {
                        alloc.on_results_received(stream, highest_answered_seq, &mut effects)
                    }
                    _ => {}
                }
            }
        }
        // Commit every draw at once, then carry the allocator's frames to their workers.
        let committed: Vec<_> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Commit(b) => Some((b.key, b.answer.clone())),
                _ => None,
            })
            .collect();
        alloc.on_committed(&committed, 0, &mut effects);
        for effect in effects.drain(..) {
            let Effect::Send(stream, bytes) = effect else { continue };
            let worker = &mut workers[stream as usize - 1];
            let frame = decode(&bytes);
            if matches!(frame, AllocatorFrame::Quota { .. }) {
                continue;
            }
            let mut told = Vec::new();
            worker.on_allocator_frame(frame, now_us, now_ms, &mut told);
            for effect in told {
                if let PhoneEffect::ToPhone(at, ControlFrame::Award { .. }) = effect {
                    let user = worker.phones().get(at).unwrap().user_id;
                    *counts.awards.entry(user).or_default() += 1;
                }
            }
        }
    }
    let c = alloc.counters();
    let honest_awards = counts.awards[&HONEST];
    let cheater_awards = counts.awards.get(&CHEATER).copied().unwrap_or(0);
    // The honest phone: every shake forwarded and drawn (ten a second for ten seconds; the
    // very first came before the edge heard the round was open).
    assert_eq!(counts.forwarded[&HONEST], RUN_MS / 100);
    assert_eq!(honest_awards, counts.forwarded[&HONEST]);
    // The cheater offered four times that; at most the per-user burst plus the rate over
    // the run is drawn, and no more than an honest user's chance and a burst.
    assert!(
        cheater_awards <= 20 + RUN_MS / 100 + 1,
        "{cheater_awards} entries of the cheater drawn"
    );
    assert!(
        cheater_awards as f64 <= honest_awards as f64 * 1.5,
        "cheater drew {cheater_awards} entries, honest user {honest_awards}"
    );
    assert_eq!(c.users_limited, 1, "the cheater is named to the edges once");
    // Once named, every worker refuses the cheater before forwarding: the cheater's forwarded
    // shakes stop growing with its connections.
    let forwarded = counts.forwarded[&CHEATER];
    assert!(
        forwarded as f64 <= counts.forwarded[&HONEST] as f64 * 1.5,
        "cheater forwarded {forwarded}, honest {}",
        counts.forwarded[&HONEST]
    );
    for (w, worker) in workers.iter_mut().enumerate() {
        assert!(worker.take_counts().user_limited > 0, "worker {w} never refused the cheater");
        assert_eq!(worker.limited_users(), 1);
    }
}

/// An allocator restarted with round 1 renumbered 5 (the same times): the worker's new link
/// hears every round the allocator has, and round 1 is not among them, so it is forgotten when
/// that list ends and round 5 is the one open. Before, round 1 stayed first in the worker's
/// table, was found open, and every shake for round 5 was answered "round closed" until the
/// edge restarted.
#[test]
fn a_round_the_restarted_allocator_no_longer_names_is_forgotten() {
    let round = |id: u32| {
        format!(
            "[[rounds]]\nid = {id}\nstarts_at_ms = {T0_MS}\nduration_s = 600\nseed = 1\n\
             [rounds.cash]\ntotal_cents = 10000000\nenvelopes = 100000\n"
        )
    };
    let mut worker = edge_worker(1, 0);
    let phone = worker.add_phone(HONEST, HONEST, 0, None);
    for (seq, (id, at_ms)) in [(1u32, T0_MS + 1_000), (5, T0_MS + 2_000)].into_iter().enumerate() {
        let told = link_up(&mut worker, &mut allocator_with(&round(id)), at_ms, at_ms);
        let open = worker.admission().open_round(at_ms).map(|r| r.round_id);
        assert_eq!(open, Some(id), "the round open as the worker sees it");
        // Phones keep a round until told otherwise: the one forgotten is told closed.
        let closed: Vec<u32> = told
            .iter()
            .filter_map(|effect| match effect {
                PhoneEffect::Broadcast(ControlFrame::RoundNotice { round, .. })
                    if round.phase == shake_proto::RoundPhase::Closed =>
                {
                    Some(round.round_id)
                }
                _ => None,
            })
            .collect();
        assert_eq!(closed, if id == 5 { vec![1] } else { vec![] }, "rounds told closed");
        let shake = Shake { round_id: id, seq: seq as u64 + 1, client_time_ms: at_ms };
        let outcome = worker.on_shake(phone, shake, at_ms * 1000, at_ms).unwrap();
        assert_eq!(outcome.verdict, Verdict::Forwarded, "a shake for round {id}");
    }
}

/// An edge whose wall clock runs 6 s ahead of the allocator's (quotas valid 3 s): the quota
/// and the limits are times on the allocator's clock, read on the edge's by the difference its
/// `Heartbeat` gives. Before, the quota had expired on arrival and the edge admitted at its
/// fallback rate (6x its share in the reviewer's example); a limit ended 6 s early.
#[test]
fn an_edge_clock_ahead_of_the_allocators_keeps_its_quota_and_limits() {
    let mut alloc = allocator();
    let mut worker = edge_worker(1, 0);
    let fallback = worker.admission().edge_rate(1, T0_MS);
    let (alloc_ms, edge_ms) = (T0_MS + 10_000, T0_MS + 16_000);
    let mut told = link_up(&mut worker, &mut alloc, alloc_ms, edge_ms);
    assert_eq!(worker.allocator_clock_ahead_ms(), -6_000);
    let quota = worker.admission().edge_rate(1, edge_ms + 2_000);
    assert!(quota.per_s < fallback.per_s, "the quota, {quota:?}, not the fallback {fallback:?}");
    // A limit until T0 + 70 s on the allocator's clock holds to T0 + 76 s on the edge's.
    let limit = AllocatorFrame::UsersLimited { until_ms: T0_MS + 70_000, user_ids: vec![HONEST] };
    worker.on_allocator_frame(limit, 0, edge_ms, &mut told);
    let phone = worker.add_phone(HONEST, HONEST, 0, None);
    let shake = |at_ms| Shake { round_id: 1, seq: at_ms, client_time_ms: at_ms };
    let during = T0_MS + 75_000;
    let outcome = worker.on_shake(phone, shake(during), during * 1000, during).unwrap();
    assert_eq!(outcome.verdict, Verdict::NoLuck, "limited to T0 + 76 s on this clock");
    assert_eq!(worker.take_counts().user_limited, 1);
}

/// A load report covers the time since the last, as it was: the tick that sends it runs late
/// under load (10 ticks of 100 ms, each re-armed from a late turn), and a 1.5 s window sent as
/// "1000 ms" read as half again the offered load at the allocator, which shares its quota by it.
#[test]
fn a_load_report_covers_the_time_since_the_last() {
    let mut worker = edge_worker(1, 0);
    worker.uplink().link_up();
    let windows = |worker: &mut WorkerCore<u64>| {
        std::iter::from_fn(|| worker.uplink().poll_transmit())
            .filter_map(|bytes| match decode(&bytes) {
                AllocatorFrame::LoadReport { window_ms, .. } => Some(window_ms),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    worker.on_load_tick(1_000_000, T0_MS + 1_000);
    assert_eq!(windows(&mut worker), vec![1_000], "from the worker's start");
    worker.on_load_tick(2_500_000, T0_MS + 2_500);
    assert_eq!(windows(&mut worker), vec![1_500]);
}

/// The table of limited users an edge worker keeps is bounded whatever the allocator sends,
/// makes room once limits end, and forgets ended limits on its once-a-second tick.
#[test]
fn the_limited_users_table_is_bounded_and_swept() {
    use shake_edge::user_sessions::MAX_LIMITED_USERS;
    let mut worker = edge_worker(1, 0);
    let mut told = Vec::new();
    let per_frame = shake_proto::limits::MAX_LIMITED_USERS as u64;
    for frame in 0..70u64 {
        let user_ids = (frame * per_frame..(frame + 1) * per_frame).collect();
        let limit = AllocatorFrame::UsersLimited { until_ms: T0_MS + 60_000, user_ids };
        worker.on_allocator_frame(limit, 0, T0_MS, &mut told);
        assert!(worker.limited_users() <= MAX_LIMITED_USERS);
    }
    assert_eq!(worker.limited_users(), MAX_LIMITED_USERS);
    // A phone of a user over the bound is not refused (counted as a warning), one within is.
    let within = worker.add_phone(5, 5, 0, None);
    let shake = Shake { round_id: 1, seq: 1, client_time_ms: T0_MS };
    assert_eq!(worker.on_shake(within, shake, 0, T0_MS + 1).unwrap().verdict, Verdict::NoLuck);
    assert_eq!(worker.take_counts().user_limited, 1);
    // Once the limits end, the tick forgets them and new ones fit.
    worker.on_load_tick(60_000_000, T0_MS + 60_000);
    assert_eq!(worker.limited_users(), 0);
    let again = AllocatorFrame::UsersLimited { until_ms: T0_MS + 120_000, user_ids: vec![7] };
    worker.on_allocator_frame(again, 0, T0_MS + 60_001, &mut told);
    assert_eq!(worker.limited_users(), 1);
}

/// Awards the allocator says a user is owed go to the phone of the user's newest session, found
/// by the user and not by a pass over the worker's phones (review 20: a user who never
/// acknowledged an award could make every session start cost a pass over 50,000 phones); a
/// phone that left, or a user with no phone here, gets nothing. A limit reaches the phone of a
/// user already connected the same way.
#[test]
fn owed_awards_and_limits_reach_the_users_newest_phone() {
    use shake_proto::Prize;
    use shake_proto::allocator::OwedAward;
    let mut worker = edge_worker(1, 0);
    let owed = |award_id| AllocatorFrame::AwardsOwed {
        user_id: 7,
        awards: vec![OwedAward { award_id, round_id: 1, prize: Prize::Cash { cents: 5 } }],
    };
    let sent_to = |worker: &mut WorkerCore<u64>, award_id| {
        let mut effects = Vec::new();
        worker.on_allocator_frame(owed(award_id), 0, T0_MS, &mut effects);
        effects
            .into_iter()
            .map(|effect| match effect {
                PhoneEffect::ToPhone(at, ControlFrame::Award { award_id: a, .. }) => {
                    assert_eq!(a, award_id);
                    at
                }
                other => panic!("expected an Award to one phone, got {other:?}"),
            })
            .collect::<Vec<_>>()
    };
    assert!(sent_to(&mut worker, 1).is_empty(), "no phone of user 7 here");
    let first = worker.add_phone(7, 1, 0, None);
    let other = worker.add_phone(8, 2, 0, None);
    assert_eq!(sent_to(&mut worker, 2), vec![first]);
    // A new session of user 7 (the first superseded, on its way out): the new one gets them,
    // and still after the first has left.
    let newer = worker.add_phone(7, 3, 0, None);
    assert_eq!(sent_to(&mut worker, 3), vec![newer]);
    assert!(worker.remove_phone(first).is_some());
    assert_eq!(sent_to(&mut worker, 4), vec![newer]);
    assert!(worker.remove_phone(newer).is_some());
    assert!(sent_to(&mut worker, 5).is_empty(), "user 7's phones have left");
    // A slot reused by another user's phone is not user 7's.
    let reused = worker.add_phone(9, 4, 0, None);
    assert!(sent_to(&mut worker, 6).is_empty(), "{reused:?} is user 9's");
    // A limit on a user already connected reaches that phone, and no other.
    let limit = AllocatorFrame::UsersLimited { until_ms: T0_MS + 60_000, user_ids: vec![8] };
    worker.on_allocator_frame(limit, 0, T0_MS, &mut Vec::new());
    let shake = Shake { round_id: 1, seq: 1, client_time_ms: T0_MS };
    let verdict = |worker: &mut WorkerCore<u64>, at| {
        worker.on_shake(at, shake, 1_000, T0_MS + 1).unwrap().verdict
    };
    assert_eq!(verdict(&mut worker, other), Verdict::NoLuck);
    assert_eq!(worker.take_counts().user_limited, 1);
    verdict(&mut worker, reused);
    assert_eq!(worker.take_counts().user_limited, 0, "user 9 is not limited");
}
