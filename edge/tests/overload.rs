//! Overload control through the real edge: a worker over its load target refuses new
//! handshakes (`CONNECTION_REFUSED`) while its phones keep their sessions, raises the pace it
//! asks of them and tells each one with its next answer, and once calm lowers the pace again
//! and accepts phones. The busy target is set low (2% of an interval) so that the phones of
//! the test, not a machine-sized flood, put the workers over it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shake_proto::ControlFrame;
use shake_testkit::phone::Phone;
use shake_testkit::tokens::token;
use shake_testkit::world::{World, WorldSettings};

const PHONES: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_its_target_a_worker_refuses_handshakes_paces_its_phones_and_recovers() {
    let edge_limits = "handshakes_per_source = 100000\nnew_handshakes_per_source_per_s = 1e9\n\
                       new_handshakes_per_source_burst = 1e9\nphone_rate_per_s = 1000.0\n\
                       phone_burst = 1000.0\n\
                       [overload]\nbusy_target = 0.02\n";
    let world = World::start(WorldSettings { edge_limits, ..WorldSettings::default() }).await;
    let mut phones = Vec::new();
    let mut base_ms = 0;
    for user in 0..PHONES {
        let mut phone = Phone::connect(&world).await;
        match phone.hello(token(20_000 + user, 3_600)).await {
            Ok(ControlFrame::Welcome { min_shake_interval_ms, round, .. }) => {
                base_ms = min_shake_interval_ms;
                phones.push((phone, round.round_id));
            }
            other => panic!("phone {user}: expected Welcome, got {other:?}"),
        }
    }
    let refused_while_connecting =
        world.metric("shake_edge_handshakes_total{outcome=\"overloaded\"}");

    // Every phone shakes 100 times a second (ignoring the pace, as a flood would).
    let shaking = Arc::new(AtomicBool::new(true));
    let mut tasks = Vec::new();
    for (phone, round_id) in phones {
        let shaking = shaking.clone();
        tasks.push(tokio::spawn(async move {
            let mut seq = 0;
            let mut answered = 0u64;
            while shaking.load(Ordering::Relaxed) {
                seq += 1;
                phone.shake(round_id, seq);
                if tokio::time::timeout(Duration::from_millis(50), phone.outcome()).await.is_ok() {
                    answered += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (phone, answered)
        }));
    }
    world.wait_for_metric("shake_edge_overloaded{", 1.0).await;
    world.wait_for_metric("shake_edge_paces_total", 1.0).await;
    // A new phone meets CONNECTION_REFUSED (transport error 0x2) while the workers are over;
    // both workers are, so whichever socket the kernel picks refuses it.
    // Over and calm alternate interval by interval while the flood goes on (the metric may be
    // a 100 ms report old): keep trying, a little apart, for up to 10 s.
    let mut refused = false;
    for _ in 0..200 {
        match Phone::connect_from(&world, "127.0.0.1:0".parse().unwrap()).await {
            Err(quinn::ConnectionError::ConnectionClosed(close))
                if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                refused = true;
                break;
            }
            Err(other) => panic!("expected CONNECTION_REFUSED, got {other}"),
            // The kernel may hand an attempt to a worker between two over intervals.
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(refused, "no handshake was refused while the workers were over their target");
    assert!(
        world.metric("shake_edge_handshakes_total{outcome=\"overloaded\"}")
            > refused_while_connecting
    );
    // Each worker paces its own phones, and one the kernel gave fewer phones goes over later:
    // wait until both have raised their pace, then give every phone a few shakes (one each
    // ~10 ms) for an answer to carry it. (A CI run that stopped as soon as one worker had
    // refused a handshake saw 7 of 20 phones hear a pace.)
    for worker in 0..2 {
        let pace = format!("shake_edge_pace_ms{{worker=\"{worker}\"}}");
        world.wait_for_metric(&pace, f64::from(base_ms) + 1.0).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Summed over the two workers.
    let raised = world.metric("shake_edge_pace_ms{");
    shaking.store(false, Ordering::Relaxed);
    let mut heard_pace = 0;
    for task in tasks {
        let (mut phone, answered) = task.await.unwrap();
        assert!(answered > 0, "a phone lost every answer while the edge was over its target");
        // The Pace came with an answer, on the control stream: longer than the round's.
        while let Ok(frame) =
            tokio::time::timeout(Duration::from_millis(200), phone.next_frame()).await
        {
            match frame {
                Ok(ControlFrame::Pace { min_shake_interval_ms }) => {
                    assert!(min_shake_interval_ms > base_ms, "{min_shake_interval_ms}");
                    heard_pace += 1;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        assert!(phone.conn.close_reason().is_none(), "a phone lost its session to the overload");
    }
    assert!(heard_pace >= PHONES / 2, "only {heard_pace} of {PHONES} phones heard a pace");
    assert!(raised > 2.0 * f64::from(base_ms), "the pace metric never rose: {raised}");
    // Calm: phones are accepted again, and the pace comes down once they have shaken at it.
    world.wait_for_metric_below("shake_edge_overloaded{", 0.5).await;
    let mut phone = Phone::connect(&world).await;
    assert!(matches!(phone.hello(token(29_999, 3_600)).await, Ok(ControlFrame::Welcome { .. })));
    world.wait_for_metric_below("shake_edge_pace_ms{", raised).await;
}
