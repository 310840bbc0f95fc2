//! Proptest strategies for every message, shared by the round-trip and stream tests.
#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use shake_proto::limits::{
    MAX_DELIVERED_IDS, MAX_LIMITED_USERS, MAX_OWED_AWARDS, MAX_REASON, MAX_TOKEN, MAX_WANTED_USERS,
    MAX_WORKERS_PER_EDGE,
};
use shake_proto::varint::MAX;
use shake_proto::{
    AllocatorFrame, Batch, BatchDigest, BatchEntry, ControlFrame, Outcome, OwedAward, Prize,
    RoundInfo, RoundPhase, Shake, Verdict, VerdictCounts, Winner,
};

pub fn varint() -> impl Strategy<Value = u64> {
    prop_oneof![0..64u64, 0..16_384u64, 0..(1u64 << 30), 0..=MAX]
}

pub fn prize() -> impl Strategy<Value = Prize> {
    prop_oneof![
        varint().prop_map(|cents| Prize::Cash { cents }),
        "[A-Za-z0-9_-]{0,64}".prop_map(|sku| Prize::Gift { sku }),
    ]
}

pub fn round() -> impl Strategy<Value = RoundInfo> {
    (any::<u32>(), 0..3u8, varint(), varint(), any::<u32>()).prop_map(
        |(round_id, phase, starts, ends, spread)| RoundInfo {
            round_id,
            phase: [RoundPhase::Waiting, RoundPhase::Open, RoundPhase::Closed][phase as usize],
            starts_at_ms: starts,
            ends_at_ms: ends,
            start_spread_ms: spread,
        },
    )
}

pub fn verdict() -> impl Strategy<Value = Verdict> {
    prop_oneof![
        Just(Verdict::NoLuck),
        any::<u32>().prop_map(|retry_after_ms| Verdict::SlowDown { retry_after_ms }),
        Just(Verdict::RoundClosed),
        Just(Verdict::Forwarded),
    ]
}

pub fn shake() -> impl Strategy<Value = Shake> {
    (any::<u32>(), varint(), varint()).prop_map(|(round_id, seq, client_time_ms)| Shake {
        round_id,
        seq,
        client_time_ms,
    })
}

pub fn outcome() -> impl Strategy<Value = Outcome> {
    (varint(), verdict()).prop_map(|(seq, verdict)| Outcome { seq, verdict })
}

pub fn control_frame() -> impl Strategy<Value = ControlFrame> {
    prop_oneof![
        (vec(any::<u8>(), 0..=MAX_TOKEN), any::<u32>(), varint()).prop_map(|(t, v, c)| {
            ControlFrame::Hello { token: Bytes::from(t), client_version: v, capabilities: c }
        }),
        (varint(), any::<u32>(), round()).prop_map(|(t, i, round)| ControlFrame::Welcome {
            server_time_ms: t,
            min_shake_interval_ms: i,
            round,
        }),
        (round(), any::<u32>())
            .prop_map(|(round, i)| ControlFrame::RoundNotice { round, min_shake_interval_ms: i }),
        any::<u32>().prop_map(|i| ControlFrame::Pace { min_shake_interval_ms: i }),
        (varint(), any::<u32>(), prize()).prop_map(|(award_id, round_id, prize)| {
            ControlFrame::Award { award_id, round_id, prize }
        }),
        varint().prop_map(|award_id| ControlFrame::AwardAck { award_id }),
        shake().prop_map(ControlFrame::Shake),
        vec(outcome(), 1..40).prop_map(|o| ControlFrame::outcomes(&o)),
        any::<u32>().prop_map(|r| ControlFrame::GoAway { reconnect_after_ms: r }),
        (varint(), proptest::string::string_regex(&format!(".{{0,{}}}", MAX_REASON / 4)).unwrap())
            .prop_map(|(code, reason)| ControlFrame::Error { code, reason }),
    ]
}

pub fn batch() -> impl Strategy<Value = Batch> {
    (varint(), any::<u32>(), varint(), vec((varint(), any::<u32>()), 0..300)).prop_map(
        |(seq, round_id, base, entries)| {
            let entries: Vec<BatchEntry> = entries
                .into_iter()
                .map(|(user_id, offset_us)| BatchEntry { user_id, offset_us })
                .collect();
            Batch::new(seq, round_id, base, &entries)
        },
    )
}

pub fn allocator_frame() -> impl Strategy<Value = AllocatorFrame> {
    prop_oneof![
        (varint(), 0..MAX_WORKERS_PER_EDGE, any::<u32>(), varint(), varint()).prop_map(
            |(e, w, v, i, h)| {
                AllocatorFrame::EdgeHello {
                    edge_id: e,
                    worker_id: w,
                    protocol_version: v,
                    instance_id: i,
                    highest_answered_seq: h,
                }
            }
        ),
        batch().prop_map(AllocatorFrame::Batch),
        (varint(), any::<[u8; 8]>(), vec((0..16_384u32, varint(), prize()), 0..50)).prop_map(
            |(seq, digest, w)| AllocatorFrame::BatchResult {
                seq,
                digest: BatchDigest(digest),
                winners: w
                    .into_iter()
                    .map(|(entry_index, award_id, prize)| Winner { entry_index, award_id, prize })
                    .collect(),
            }
        ),
        (any::<u32>(), any::<u32>(), any::<u32>(), varint()).prop_map(|(r, rate, b, v)| {
            AllocatorFrame::Quota { round_id: r, rate_per_s: rate, burst: b, valid_until_ms: v }
        }),
        (round(), any::<u32>())
            .prop_map(|(round, i)| AllocatorFrame::RoundState { round, min_shake_interval_ms: i }),
        (any::<u32>(), varint(), varint()).prop_map(|(w, o, a)| AllocatorFrame::LoadReport {
            window_ms: w,
            offered: o,
            admitted: a,
        }),
        vec(varint(), 1..=MAX_DELIVERED_IDS)
            .prop_map(|award_ids| AllocatorFrame::AwardDelivered { award_ids }),
        varint().prop_map(|now_ms| AllocatorFrame::Heartbeat { now_ms }),
        (varint(), varint(), varint(), varint(), varint()).prop_map(|(p, n, s, c, f)| {
            AllocatorFrame::WorkerStats {
                phones: p,
                verdicts: VerdictCounts { no_luck: n, slow_down: s, round_closed: c, forwarded: f },
            }
        }),
        varint().prop_map(|highest_answered_seq| AllocatorFrame::ResultsReceived {
            highest_answered_seq
        }),
        (varint(), vec(varint(), 1..=MAX_LIMITED_USERS))
            .prop_map(|(until_ms, user_ids)| AllocatorFrame::UsersLimited { until_ms, user_ids }),
        vec(varint(), 1..=MAX_WANTED_USERS)
            .prop_map(|user_ids| AllocatorFrame::AwardsWanted { user_ids }),
        (varint(), vec((varint(), any::<u32>(), prize()), 1..=MAX_OWED_AWARDS)).prop_map(
            |(user_id, awards)| AllocatorFrame::AwardsOwed {
                user_id,
                awards: awards
                    .into_iter()
                    .map(|(award_id, round_id, prize)| OwedAward { award_id, round_id, prize })
                    .collect(),
            }
        ),
    ]
}
