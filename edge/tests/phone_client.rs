//! The client library's quinn driver as a phone app would run it, against the real edge: it
//! is welcomed, its shakes are answered within the edge's pace (never slow-down), it wins and
//! acknowledges its award (the edge counts the acknowledgement), it stays on its connection
//! while alive, and when the edge dies it reports the loss and plans to come back to the same
//! edge soon, as docs/CLIENT.md says.

use std::time::Duration;

use shake_client::quinn_driver::{self, Phone, PhoneCommand, PhoneEvent, Stopped};
use shake_client::{ConnectionEnd, NextConnect, ReconnectSettings, SessionEvent, ShakePath};
use shake_proto::Verdict;
use shake_testkit::now_ms;
use shake_testkit::processes::bin;
use shake_testkit::tokens::{DEV_SECRET_HEX, token};
use shake_testkit::world::{World, WorldSettings};
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_shakes_wins_acknowledges_and_plans_its_reconnect() {
    // Overload control off: the driver connects once, and a refusal for load (a worker held
    // off its core mid-turn) would leave it with no session.
    let mut world =
        World::start(WorldSettings { overload_control: false, ..WorldSettings::default() }).await;
    let mut client = quinn_driver::phone_client_config(&world.scratch.ca(), 4).unwrap();
    // A short idle timeout, so that the edge's death is noticed in seconds, not 30.
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(Duration::from_secs(2).try_into().unwrap()))
        .keep_alive_interval(Some(Duration::from_millis(500)));
    client.transport_config(std::sync::Arc::new(transport));
    let phone = Phone {
        edges: vec![world.edge.addr],
        server_name: "localhost".into(),
        client,
        token: token(70_001, 3_600),
        reconnect: ReconnectSettings::default(),
        shake_path: ShakePath::Datagrams,
    };
    let (commands, command_rx) = mpsc::channel(16);
    let (event_tx, mut events) = mpsc::channel(256);
    let driver = tokio::spawn(quinn_driver::run(phone, command_rx, event_tx));

    let mut interval_ms = 0;
    let mut outcomes = Vec::new();
    let mut award = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while award.is_none() {
        let event = tokio::time::timeout_at(deadline, events.recv()).await.expect("an award");
        match event.unwrap() {
            PhoneEvent::Session(SessionEvent::Welcomed { min_shake_interval_ms, .. }) => {
                interval_ms = min_shake_interval_ms;
                commands.send(PhoneCommand::Shake).await.unwrap();
            }
            PhoneEvent::Session(SessionEvent::Outcome(outcome)) => {
                outcomes.push(outcome.verdict);
                // The app shakes again once the pace allows.
                tokio::time::sleep(Duration::from_millis(u64::from(interval_ms) + 5)).await;
                commands.send(PhoneCommand::Shake).await.unwrap();
            }
            PhoneEvent::Session(SessionEvent::Award { award_id, .. }) => {
                commands.send(PhoneCommand::AckAward(award_id)).await.unwrap();
                award = Some(award_id);
            }
            PhoneEvent::Disconnected { end, .. } => panic!("left a live session: {end:?}"),
            _ => {}
        }
    }
    assert!(interval_ms > 0, "welcomed with an interval");
    assert!(outcomes.contains(&Verdict::Forwarded), "{outcomes:?}");
    assert!(
        !outcomes.iter().any(|v| matches!(v, Verdict::SlowDown { .. })),
        "a phone keeping the pace earned slow-down: {outcomes:?}"
    );
    world.wait_for_metric("shake_edge_award_acks_total{outcome=\"accepted\"}", 1.0).await;

    // The edge dies: the loss is reported and the phone plans the same edge, soon.
    world.edge.process.kill();
    let lost_at = now_ms();
    let disconnected = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Some(PhoneEvent::Disconnected { end, next }) = events.recv().await {
                return (end, next);
            }
        }
    })
    .await
    .expect("the loss is noticed within the idle timeout");
    assert!(now_ms() - lost_at < 10_000, "noticed after the 2 s idle timeout, not later");
    match disconnected {
        (ConnectionEnd::Lost, NextConnect::At { edge: 0, at_ms }) => {
            assert!(at_ms < now_ms() + 1_500, "back soon: {} ms", at_ms.saturating_sub(lost_at));
        }
        other => panic!("expected a loss and a plan to return: {other:?}"),
    }
    commands.send(PhoneCommand::Stop).await.unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(15), driver).await.unwrap();
    assert_eq!(stopped.unwrap().unwrap(), Stopped::ByApp);
}

/// Runs `shake-phone` (built beside this test: `cargo test --workspace` builds it) for 3 s.
fn run_phone(
    edge: &str,
    ca: &std::path::Path,
    key_hex: &str,
    user: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut command = std::process::Command::new(bin("shake-phone"));
    command.args(["--edge", edge, "--ca"]).arg(ca);
    command.args(["--dev-key-hex", key_hex, "--user", user, "--for-s", "3"]).args(extra);
    command.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shake_phone_plays_from_the_terminal_against_a_real_edge() {
    // Overload control off, as above: a refused connect would read as a disconnection.
    let world =
        World::start(WorldSettings { overload_control: false, ..WorldSettings::default() }).await;
    let (edge, ca) = (world.edge.addr.to_string(), world.scratch.ca());
    let output = run_phone(&edge, &ca, DEV_SECRET_HEX, "70002", &["--every-ms", "150"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("welcomed: round 1"), "{stdout}");
    let answered = stdout.lines().filter(|l| l.starts_with("shake ")).count();
    assert!(answered >= 5, "{answered} shakes answered in 3 s:\n{stdout}");
    assert!(!stdout.contains("slow down"), "the phone kept the pace:\n{stdout}");
    // One envelope per user, released at once: the phone wins it and acknowledges it.
    assert!(stdout.contains("AWARD "), "{stdout}");
    world.wait_for_metric("shake_edge_award_acks_total{outcome=\"accepted\"}", 1.0).await;
    assert!(!stdout.contains("disconnected"), "it never left its live session:\n{stdout}");

    // Without datagrams (the stream fallback): shakes and outcomes on the control stream.
    let args = ["--every-ms", "150", "--no-datagrams"];
    let output = run_phone(&edge, &ca, DEV_SECRET_HEX, "70004", &args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let answered = stdout.lines().filter(|l| l.starts_with("shake ")).count();
    assert!(answered >= 5, "{answered} shakes answered on the stream in 3 s:\n{stdout}");
    assert!(!stdout.contains("slow down"), "the phone kept the pace:\n{stdout}");

    // An edge in the list that cannot be reached from here (quinn refuses to send to an
    // unspecified address): the phone goes on to the next, where it ended with an error.
    let user = (70_010u64..).find(|u| shake_proto::mix(*u).is_multiple_of(2)).unwrap().to_string();
    let mut command = std::process::Command::new(bin("shake-phone"));
    command.args(["--edge", "0.0.0.0:9", "--edge", &edge, "--ca"]).arg(&ca);
    command.args(["--dev-key-hex", DEV_SECRET_HEX, "--user", &user, "--for-s", "5"]);
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("welcomed: round 1"), "{stdout}");

    // A token the edge does not accept: refused for good, exit 2, no reconnect loop.
    let refused = run_phone(&edge, &ca, &"ab".repeat(32), "70003", &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("BAD_TOKEN"), "{stderr}");
}
