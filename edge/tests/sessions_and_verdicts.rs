//! Real phones against the real edge binary and a real allocator: every verdict, awards and
//! their acknowledgements, bad and expired tokens, the Hello deadline, malformed datagrams.
//! The handshake defences are in `handshake_limits.rs`.

use std::collections::BTreeSet;

use shake_allocator::ledger::FjallLedger;
use shake_proto::{ControlFrame, ErrorCode, RoundPhase, Verdict};
use shake_testkit::phone::Phone;
use shake_testkit::tokens::{key_ring, token};
use shake_testkit::world::{World, WorldSettings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shakes_are_answered_and_winners_get_durable_acknowledged_awards() {
    // A pool large enough that the allocator's quota (4 x prizes left per second left) admits
    // every shake here.
    let mut world =
        World::start(WorldSettings { envelopes: 100_000, ..WorldSettings::default() }).await;
    let mut phones = Vec::new();
    for user in 1..=6u64 {
        let mut phone = Phone::connect(&world).await;
        match phone.hello(token(user, 3600)).await.unwrap() {
            ControlFrame::Welcome { round, .. } => {
                assert_eq!(round.round_id, 1);
                assert_eq!(round.phase, RoundPhase::Open);
            }
            other => panic!("expected Welcome, got {other:?}"),
        }
        phones.push(phone);
    }
    // Each phone shakes twice; both are forwarded.
    for phone in &phones {
        phone.shake(1, 1);
        phone.shake(1, 2);
    }
    for phone in &phones {
        for _ in 0..2 {
            let outcome = phone.outcome().await.unwrap();
            assert_eq!(outcome.verdict, Verdict::Forwarded, "{outcome:?}\n{}", world.scrape());
        }
    }
    // One cash envelope per user per round: each phone wins exactly once, and acknowledges.
    let mut award_ids = BTreeSet::new();
    for phone in &mut phones {
        match phone.next_award().await.unwrap() {
            ControlFrame::Award { award_id, round_id, .. } => {
                assert_eq!(round_id, 1);
                assert!(award_ids.insert(award_id), "award {award_id} twice");
                phone.send_frame(&ControlFrame::AwardAck { award_id }).await;
            }
            other => panic!("expected an Award, got {other:?}"),
        }
    }
    // Round id that is not open: round closed, at once.
    phones[0].shake(7, 3);
    assert_eq!(phones[0].outcome().await.unwrap().verdict, Verdict::RoundClosed);

    // Acknowledgements reach the ledger: wait until the allocator has made all six durable.
    world.wait_for_allocator_metric("shake_allocator_delivery_marks_total", 6.0).await;
    world.stop_allocator().await;
    let ledger = FjallLedger::open(&world.scratch.ledger()).unwrap();
    let awards = ledger.awards(|_| true).unwrap();
    let in_ledger: BTreeSet<u64> = awards.iter().map(|a| a.award_id).collect();
    assert_eq!(in_ledger, award_ids);
    assert!(awards.iter().all(|a| a.delivered), "every acknowledged award is marked delivered");
    assert!(world.metric("shake_edge_verdicts_total{verdict=\"forwarded\"}") >= 12.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_over_its_own_rate_is_told_to_slow_down() {
    let world = World::start(WorldSettings::default()).await;
    let mut phone = Phone::connect(&world).await;
    phone.hello(token(42, 3600)).await.unwrap();
    for seq in 0..30 {
        phone.shake(1, seq);
    }
    let mut slow_downs = 0;
    for _ in 0..30 {
        if let Verdict::SlowDown { retry_after_ms } = phone.outcome().await.unwrap().verdict {
            assert!(retry_after_ms >= 100);
            slow_downs += 1;
        }
    }
    // Burst 20: the other ten are over the phone's own limit.
    assert_eq!(slow_downs, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_bucket_answers_no_luck_when_empty() {
    let world = World::start(WorldSettings {
        edge_limits: "fallback_rate_per_s = 0.0\nfallback_burst = 2.0\n",
        ..WorldSettings::default()
    })
    .await;
    // The allocator's quota (oversampled prizes per second) replaces the fallback: keep the
    // pool tiny so its rate is small too, then shake from many phones at once.
    let mut phones = Vec::new();
    for user in 100..120u64 {
        let mut phone = Phone::connect(&world).await;
        phone.hello(token(user, 3600)).await.unwrap();
        phones.push(phone);
    }
    for phone in &phones {
        phone.shake(1, 1);
        phone.shake(1, 2);
    }
    let mut no_luck = 0;
    for phone in &phones {
        for _ in 0..2 {
            if phone.outcome().await.unwrap().verdict == Verdict::NoLuck {
                no_luck += 1;
            }
        }
    }
    assert!(no_luck > 0, "40 shakes against a small edge bucket all passed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expired_and_missing_tokens_close_with_their_codes() {
    let world = World::start(WorldSettings::default()).await;

    let mut forged = Phone::connect(&world).await;
    let mut other = key_ring("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")
        .mint(&shake_proto::Claims {
            key_id: 1,
            user_id: 5,
            device_id: 5,
            issued_at_s: 0,
            expires_at_s: u64::MAX / 2,
        })
        .unwrap();
    other[0] = 1;
    let answer = forged.hello(bytes::Bytes::copy_from_slice(&other)).await;
    assert!(matches!(answer, Ok(ControlFrame::Error { code: 0x11, .. })), "{answer:?}");
    assert_eq!(forged.closed_code().await, Some(ErrorCode::BadToken.code().into()));

    let mut expired = Phone::connect(&world).await;
    let answer = expired.hello(token(6, -10)).await;
    assert!(matches!(answer, Ok(ControlFrame::Error { code: 0x12, .. })), "{answer:?}");
    assert_eq!(expired.closed_code().await, Some(ErrorCode::TokenExpired.code().into()));

    // Connected, control stream open, never says Hello: closed after the 500 ms deadline.
    let silent = Phone::connect(&world).await;
    assert_eq!(silent.closed_code().await, Some(ErrorCode::HelloTimeout.code().into()));

    // A frame other than Hello first.
    let mut rude = Phone::connect(&world).await;
    rude.send_frame(&ControlFrame::AwardAck { award_id: 1 }).await;
    assert_eq!(rude.closed_code().await, Some(ErrorCode::UnexpectedFrame.code().into()));
    // `Error` is no exception (docs/PROTOCOL.md 5.1 step 3).
    let mut leaving = Phone::connect(&world).await;
    leaving.send_frame(&ControlFrame::Error { code: 0, reason: "bye".into() }).await;
    assert_eq!(leaving.closed_code().await, Some(ErrorCode::UnexpectedFrame.code().into()));
}

/// A phone that says `Error` is leaving: the edge ends the session there and reads nothing it
/// sends after (a phone that kept sending frames behind an `Error` had them buffered, unread,
/// for as long as it liked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_that_says_error_is_closed_and_read_no_further() {
    let world = World::start(WorldSettings::default()).await;
    let mut phone = Phone::connect(&world).await;
    phone.hello(token(78, 3600)).await.unwrap();
    let mut behind = bytes::BytesMut::new();
    for _ in 0..300 {
        ControlFrame::Error { code: 0, reason: String::new() }.encode(&mut behind);
    }
    phone.send_frame(&ControlFrame::Error { code: 0, reason: "bye".into() }).await;
    // The close may already be on its way: a refused write is the point.
    let _ = phone.send.write_all(&behind).await;
    assert_eq!(phone.closed_code().await, Some(ErrorCode::NoError.code().into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_datagrams_are_counted_and_dropped_and_the_session_goes_on() {
    let world = World::start(WorldSettings::default()).await;
    let mut phone = Phone::connect(&world).await;
    phone.hello(token(77, 3600)).await.unwrap();
    for garbage in [&[0x01u8][..], &[0x07, 1, 2], &[0x02, 0x05, 0x09], &[0xff; 40]] {
        phone.conn.send_datagram(bytes::Bytes::copy_from_slice(garbage)).unwrap();
    }
    phone.shake(1, 9);
    let outcome = phone.outcome().await.unwrap();
    assert_eq!(outcome.seq, 9, "the only answer is to the valid shake");
    world.wait_for_metric("shake_edge_drops_total{reason=\"malformed_datagram\"}", 4.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_winner_can_acknowledge_an_award() {
    let mut world =
        World::start(WorldSettings { envelopes: 100_000, ..WorldSettings::default() }).await;
    let mut winner = Phone::connect(&world).await;
    winner.hello(token(1, 3600)).await.unwrap();
    let mut thief = Phone::connect(&world).await;
    thief.hello(token(2, 3600)).await.unwrap();
    winner.shake(1, 1);
    assert_eq!(winner.outcome().await.unwrap().verdict, Verdict::Forwarded);
    let ControlFrame::Award { award_id, .. } = winner.next_award().await.unwrap() else {
        panic!("expected an award")
    };
    // Another user acknowledges it, and then other ids up to the allowance of refused acks:
    // refused and counted, nothing queued for the allocator, the session still served.
    let allowance = u64::from(shake_proto::limits::MAX_REFUSED_AWARD_ACKS);
    thief.send_frame(&ControlFrame::AwardAck { award_id }).await;
    for id in 1..allowance {
        thief.send_frame(&ControlFrame::AwardAck { award_id: award_id + id }).await;
    }
    world.wait_for_metric("shake_edge_award_acks_total{outcome=\"wrong_user\"}", 1.0).await;
    let unknown = "shake_edge_award_acks_total{outcome=\"unknown_award\"}";
    world.wait_for_metric(unknown, (allowance - 1) as f64).await;
    thief.shake(1, 1);
    assert!(thief.outcome().await.is_ok(), "the thief is served within its allowance");
    assert_eq!(world.metric("shake_edge_award_acks_total{outcome=\"accepted\"}"), 0.0);
    // The winner's own acknowledgement is accepted, once; a second one is unknown.
    winner.send_frame(&ControlFrame::AwardAck { award_id }).await;
    winner.send_frame(&ControlFrame::AwardAck { award_id }).await;
    world.wait_for_metric(unknown, allowance as f64).await;
    world.wait_for_allocator_metric("shake_allocator_delivery_marks_total", 1.0).await;
    assert_eq!(world.metric("shake_edge_award_acks_total{outcome=\"accepted\"}"), 1.0);
    assert_eq!(world.allocator_metric("shake_allocator_delivery_marks_total"), 1.0);
    // One refused ack past the allowance closes the thief's session with FLOOD, and nothing
    // it sent behind it is read (every id under the sun would otherwise each take the
    // edge-wide award book's lock).
    for id in allowance..allowance + 2_000 {
        let ack = ControlFrame::AwardAck { award_id: award_id + id };
        if thief.try_send_frame(&ack).await.is_err() {
            break;
        }
    }
    assert_eq!(thief.closed_code().await, Some(ErrorCode::Flood as u64));
    world.wait_for_metric(unknown, (allowance + 1) as f64).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(world.metric(unknown), (allowance + 1) as f64, "only the ack past the allowance");
    // The winner's session is untouched by the thief's.
    winner.shake(1, 2);
    assert!(winner.outcome().await.is_ok());
    world.stop_allocator().await;
    // Every shake wins here (the thief's within its allowance and the winner's second too):
    // only the one acknowledged award is delivered.
    let ledger = FjallLedger::open(&world.scratch.ledger()).unwrap();
    let delivered: Vec<(u64, u64)> = ledger
        .awards(|_| true)
        .unwrap()
        .into_iter()
        .filter(|row| row.delivered)
        .map(|row| (row.award_id, row.user_id))
        .collect();
    assert_eq!(delivered, vec![(award_id, 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_award_the_phone_never_acknowledged_reaches_its_next_session() {
    let mut world =
        World::start(WorldSettings { envelopes: 100_000, ..WorldSettings::default() }).await;
    let mut first = Phone::connect(&world).await;
    first.hello(token(41, 3600)).await.unwrap();
    first.shake(1, 1);
    assert_eq!(first.outcome().await.unwrap().verdict, Verdict::Forwarded);
    let ControlFrame::Award { award_id, round_id, prize } = first.next_award().await.unwrap()
    else {
        panic!("expected an award")
    };
    // The phone goes away without acknowledging (a lost connection, an app killed), and the
    // allocator restarts meanwhile: what it owes comes back from the ledger.
    drop(first);
    world.wait_for_allocator_metric("shake_allocator_awards_owed ", 1.0).await;
    world.stop_allocator().await;
    world.restart_allocator().await;
    world.wait_for_metric("shake_edge_allocator_up", 1.0).await;

    // The user's next session hears of it at once, and acknowledges it.
    let mut again = Phone::connect(&world).await;
    again.hello(token(41, 3600)).await.unwrap();
    match again.next_award().await.unwrap() {
        ControlFrame::Award { award_id: resent, round_id: r, prize: p } => {
            assert_eq!((resent, r, p), (award_id, round_id, prize));
        }
        other => panic!("expected the owed award, got {other:?}"),
    }
    again.send_frame(&ControlFrame::AwardAck { award_id }).await;
    world.wait_for_allocator_metric("shake_allocator_delivery_marks_total", 1.0).await;
    world.wait_for_metric("shake_edge_awards_total{delivery=\"owed_written\"}", 1.0).await;
    // Acknowledged, it is owed no more: another user's session and a third one of this user
    // get nothing.
    let mut other = Phone::connect(&world).await;
    other.hello(token(42, 3600)).await.unwrap();
    let mut third = Phone::connect(&world).await;
    third.hello(token(41, 3600)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(world.allocator_metric("shake_allocator_awards_owed "), 0.0);
    assert_eq!(world.metric("shake_edge_awards_total{delivery=\"owed_written\"}"), 1.0);
    world.stop_allocator().await;
    let ledger = FjallLedger::open(&world.scratch.ledger()).unwrap();
    let rows = ledger.awards(|_| true).unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].delivered && rows[0].user_id == 41);
}
