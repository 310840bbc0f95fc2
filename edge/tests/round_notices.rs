//! A round notice reaches every phone of the edge, however many: the event loop sends a
//! broadcast 64 phones per turn (so that shakes are served between slices) and must carry it
//! on, turn after turn, until every serving phone has it. Here the allocator restarts under
//! 200 connected phones (about 100 per worker, more than one slice each) with a longer shake
//! interval, and its `RoundState` must reach every one of them as a `RoundNotice`; a restart
//! that changes nothing phones know tells them nothing. And a phone that comes after a round
//! was announced hears of it with its `Welcome`.

use std::time::Duration;

use shake_proto::ControlFrame;
use shake_testkit::phone::Phone;
use shake_testkit::tokens::token;
use shake_testkit::world::{World, WorldSettings};

/// More phones than two workers' first slices together.
const PHONES: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_notice_reaches_every_phone_past_the_first_slice() {
    // Every phone comes from 127.0.0.1: lift the per-source handshake limits.
    let edge_limits = "handshakes_per_source = 100000\nnew_handshakes_per_source_per_s = 1e9\n\
                       new_handshakes_per_source_burst = 1e9\n";
    let mut world = World::start(WorldSettings { edge_limits, ..WorldSettings::default() }).await;
    let mut phones = Vec::new();
    for user in 0..PHONES {
        let mut phone = Phone::connect(&world).await;
        match phone.hello(token(10_000 + user, 3_600)).await {
            Ok(ControlFrame::Welcome { .. }) => phones.push(phone),
            other => panic!("phone {user}: expected Welcome, got {other:?}"),
        }
    }
    world.wait_for_metric("shake_edge_phones", PHONES as f64).await;
    // The same round again: the workers hear it, the phones hear nothing.
    let notices_before = world.metric("shake_edge_round_states_total");
    world.stop_allocator().await;
    world.restart_allocator().await;
    world.wait_for_metric("shake_edge_round_states_total", notices_before + 2.0).await;
    for (i, phone) in phones.iter_mut().take(20).enumerate() {
        let heard = tokio::time::timeout(Duration::from_millis(200), phone.next_frame()).await;
        assert!(heard.is_err(), "phone {i} was told what it knew: {heard:?}");
    }
    // A longer interval is news to every phone.
    let notices_before = world.metric("shake_edge_round_states_total");
    world.stop_allocator().await;
    world.restart_allocator_with("min_shake_interval_ms = 2500").await;
    world.wait_for_metric("shake_edge_round_states_total", notices_before + 2.0).await;
    for (i, phone) in phones.iter_mut().enumerate() {
        loop {
            match phone.next_frame().await {
                Ok(ControlFrame::RoundNotice { min_shake_interval_ms, .. }) => {
                    assert_eq!(min_shake_interval_ms, 2_500, "phone {i}");
                    break;
                }
                Ok(_) => continue,
                Err(err) => panic!("phone {i} of {PHONES} heard no round notice: {err}"),
            }
        }
    }
}

/// A round announced before a phone came (the broadcast went out to the phones there then) is
/// told to it right after its `Welcome`, which names only the round open or next: else a phone
/// that connected during round 1 would never hear of round 2 and sit it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_welcomed_after_a_round_was_announced_hears_of_it() {
    let world = World::start(WorldSettings { round_2: true, ..WorldSettings::default() }).await;
    // Both workers have heard both rounds.
    world.wait_for_metric("shake_edge_round_states_total", 4.0).await;
    let mut phone = Phone::connect(&world).await;
    match phone.hello(token(20_000, 3_600)).await {
        Ok(ControlFrame::Welcome { round, .. }) => assert_eq!(round.round_id, 1, "{round:?}"),
        other => panic!("expected Welcome, got {other:?}"),
    }
    let heard = tokio::time::timeout(Duration::from_secs(2), phone.next_frame()).await;
    match heard {
        Ok(Ok(ControlFrame::RoundNotice { round, .. })) => {
            assert_eq!(round.round_id, 2, "{round:?}");
            assert!(round.starts_at_ms > shake_testkit::now_ms() + 3_000_000, "{round:?}");
        }
        other => panic!("round 2 untold after Welcome: {other:?}"),
    }
}

/// A phone whose stack gives the edge a small window takes each control frame in pieces: the
/// edge writes what the credit allows and the rest when the phone's credit comes. A write cut
/// short by the connection's credit once left the rest waiting for an event quinn-proto never
/// sends, and every later frame behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_with_a_small_window_hears_every_control_frame() {
    let world = World::start(WorldSettings { round_2: true, ..WorldSettings::default() }).await;
    world.wait_for_metric("shake_edge_round_states_total", 4.0).await;
    let mut phone = Phone::connect_with_receive_window(&world, 12).await;
    let welcome = tokio::time::timeout(Duration::from_secs(5), phone.hello(token(20_001, 3_600)));
    match welcome.await {
        Ok(Ok(ControlFrame::Welcome { round, .. })) => assert_eq!(round.round_id, 1, "{round:?}"),
        other => panic!("expected Welcome, got {other:?}"),
    }
    let heard = tokio::time::timeout(Duration::from_secs(5), phone.next_frame()).await;
    match heard {
        Ok(Ok(ControlFrame::RoundNotice { round, .. })) => assert_eq!(round.round_id, 2),
        other => panic!("round 2's notice did not come through a small window: {other:?}"),
    }
}

/// A phone that stays through a show of more rounds than its `Welcome` names (the open one and
/// the 8 soonest after it) hears of each later round before it opens: the worker tells every
/// phone the next round once, between rounds or at the latest as its opening nears. Without
/// that, a phone connected during round 1 never heard of round 10 and sat out every round from
/// there on. Round 1 lasts 8 s here (the start has that long to welcome the phone in it),
/// then ten rounds of a second each, back to back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_that_stays_hears_of_every_round_before_it_opens() {
    let settings =
        WorldSettings { round_1_s: 8, short_rounds_after: 10, ..WorldSettings::default() };
    let world = World::start(settings).await;
    let mut phone = Phone::connect(&world).await;
    match phone.hello(token(20_002, 3_600)).await {
        Ok(ControlFrame::Welcome { round, .. }) => assert_eq!(round.round_id, 1, "{round:?}"),
        other => panic!("expected Welcome, got {other:?}"),
    }
    // Rounds 2-11 open 8-17 s after round 1 did; give it until round 11 has closed.
    let mut heard_before_opening = std::collections::BTreeSet::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while heard_before_opening.len() < 10 {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, phone.next_frame()).await {
            Ok(Ok(ControlFrame::RoundNotice { round, .. })) => {
                if shake_testkit::now_ms() < round.starts_at_ms {
                    heard_before_opening.insert(round.round_id);
                }
            }
            // Quiet between notices for longer than the phone's own wait.
            Ok(Ok(_)) => {}
            Ok(Err(timeout)) if timeout == "timeout" => {}
            other => panic!("rounds told before they opened: {heard_before_opening:?}; {other:?}"),
        }
    }
    assert_eq!(heard_before_opening, (2..=11).collect());
}
