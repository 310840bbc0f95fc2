//! What an independent phone client, written from docs/PROTOCOL.md alone, found the edge doing
//! differently from the spec, each pinned down against the real binary:
//! - section 5.1 step 7: every close with a code is preceded by an `Error` frame with that
//!   code (before the fix only BAD_TOKEN and TOKEN_EXPIRED were);
//! - section 6: shakes received before `Welcome` are dropped (before the fix they were held
//!   and answered after the session started, and in an open round one was forwarded).

use std::time::Duration;

use shake_proto::{ControlFrame, ErrorCode};
use shake_testkit::phone::Phone;
use shake_testkit::tokens::token;
use shake_testkit::world::{World, WorldSettings};

/// The `Error` frame the edge sent before closing, and the close code.
async fn error_then_close(phone: &mut Phone) -> (Option<u64>, Option<u64>) {
    let mut error = None;
    loop {
        match phone.next_frame().await {
            Ok(ControlFrame::Error { code, .. }) => {
                error = Some(code);
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    (error, phone.closed_code().await)
}

fn both(code: ErrorCode) -> (Option<u64>, Option<u64>) {
    (Some(u64::from(code.code())), Some(u64::from(code.code())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_close_with_a_code_is_preceded_by_an_error_frame() {
    let world = World::start(WorldSettings::default()).await;

    // FRAME_TOO_LARGE: a frame announcing 16,384 bytes on the control stream.
    let mut phone = Phone::connect(&world).await;
    phone.hello(token(1, 3600)).await.unwrap();
    phone.send.write_all(&[0x06, 0x80, 0x00, 0x40, 0x00]).await.unwrap();
    assert_eq!(error_then_close(&mut phone).await, both(ErrorCode::FrameTooLarge));

    // UNEXPECTED_FRAME: a second Hello.
    let mut phone = Phone::connect(&world).await;
    phone.hello(token(2, 3600)).await.unwrap();
    phone
        .send_frame(&ControlFrame::Hello {
            token: token(2, 3600),
            client_version: 1,
            capabilities: 1,
        })
        .await;
    assert_eq!(error_then_close(&mut phone).await, both(ErrorCode::UnexpectedFrame));

    // UNEXPECTED_FRAME before Welcome: an AwardAck where Hello must come first.
    let mut phone = Phone::connect(&world).await;
    phone.send_frame(&ControlFrame::AwardAck { award_id: 1 }).await;
    assert_eq!(error_then_close(&mut phone).await, both(ErrorCode::UnexpectedFrame));

    // MALFORMED_FRAME: an AwardAck whose payload has a byte left over.
    let mut phone = Phone::connect(&world).await;
    phone.hello(token(3, 3600)).await.unwrap();
    phone.send.write_all(&[0x06, 0x02, 0x01, 0x01]).await.unwrap();
    assert_eq!(error_then_close(&mut phone).await, both(ErrorCode::MalformedFrame));

    // HELLO_TIMEOUT after a partial Hello (the deadline is 500 ms here).
    let mut phone = Phone::connect(&world).await;
    phone.send.write_all(&[0x01, 0x07, 0x04]).await.unwrap();
    assert_eq!(error_then_close(&mut phone).await, both(ErrorCode::HelloTimeout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_at_once_says_so_before_closing() {
    let mut world = World::start(WorldSettings::default()).await;
    let mut phone = Phone::connect(&world).await;
    phone.hello(token(4, 3600)).await.unwrap();
    // SIGINT: stop at once; each session is closed with DRAINING, after an Error frame.
    world.edge.process.signal("INT");
    assert_eq!(error_then_close(&mut phone).await, both(ErrorCode::Draining));
    let status = world.edge.process.wait();
    assert!(status.success(), "{status:?}");
}

/// SIGTERM drains: a shake taken after the drain began still reaches the allocator, though
/// its phone left before its batch was due (batches close by age, here after 3 s). The drain
/// flushed the open batch only on its first turn, and stopped once its phones were gone and
/// nothing it had sent was unanswered: the shake, told `Forwarded`, never left the edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_sends_the_shakes_of_a_phone_that_left_before_its_batch_was_due() {
    let settings = WorldSettings {
        envelopes: 100_000,
        edge_limits: "batch_max_age_us = 3000000\n",
        ..WorldSettings::default()
    };
    let mut world = World::start(settings).await;
    let mut phone = Phone::connect(&world).await;
    phone.hello(token(6, 3600)).await.unwrap();
    world.edge.process.signal("TERM");
    loop {
        match phone.next_frame().await {
            Ok(ControlFrame::GoAway { .. }) => break,
            Ok(_) => continue,
            Err(err) => panic!("no GoAway: {err}"),
        }
    }
    phone.shake(1, 1);
    let outcome = phone.outcome().await.unwrap();
    assert_eq!(outcome.seq, 1, "{outcome:?}");
    phone.conn.close(0u32.into(), b"bye");
    let status = world.edge.process.wait();
    assert!(status.success(), "{status:?}");
    world.wait_for_allocator_metric("shake_allocator_entries_total", 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shakes_received_before_welcome_are_dropped_and_counted() {
    let world =
        World::start(WorldSettings { envelopes: 100_000, ..WorldSettings::default() }).await;
    let mut phone = Phone::connect(&world).await;
    // Three shakes, then Hello: the edge has them before it sends Welcome.
    for seq in 1..=3 {
        phone.shake(1, seq);
    }
    world.wait_for_metric("shake_edge_handshakes_total{outcome=\"accepted\"}", 1.0).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    phone.hello(token(5, 3600)).await.unwrap();
    // The first answer the phone gets is to the shake it sends after Welcome.
    phone.shake(1, 4);
    assert_eq!(phone.outcome().await.unwrap().seq, 4);
    // The counters are published together: once the verdict is, so are the drops before it.
    world.wait_for_metric("shake_edge_verdicts_total", 1.0).await;
    assert_eq!(world.metric("shake_edge_drops_total{reason=\"shake_before_welcome\"}"), 3.0);
    assert_eq!(world.metric("shake_edge_verdicts_total"), 1.0, "only the shake after Welcome");
}

/// Shakes from a phone that never says Hello are dropped and counted as they arrive, not held
/// (each in its received datagram) until a Welcome that never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shakes_before_a_hello_that_never_comes_are_counted_as_they_arrive() {
    let world = World::start(WorldSettings::default()).await;
    let phone = Phone::connect(&world).await;
    world.wait_for_metric("shake_edge_handshakes_total{outcome=\"accepted\"}", 1.0).await;
    for seq in 1..=3 {
        phone.shake(1, seq);
    }
    world.wait_for_metric("shake_edge_drops_total{reason=\"shake_before_welcome\"}", 3.0).await;
    drop(phone);
}
