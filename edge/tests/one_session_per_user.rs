//! One live session per user per edge, through the real edge binary: each new session of a
//! user supersedes the previous one (on either worker), which hears `Error` and is closed with
//! `SESSION_SUPERSEDED`; other users are untouched; `GET /users/{id}` and the metrics say so.
//! Past the user's supersede budget the newcomer is refused (`SESSION_IN_USE`) and the live
//! session stays. Run on both I/O paths (the event loop and the quinn reference).

use shake_proto::{ControlFrame, ErrorCode};
use shake_testkit::phone::Phone;
use shake_testkit::tokens::token;
use shake_testkit::world::{World, WorldSettings};

const CHEATER: u64 = 500;
const HONEST: u64 = 501;

fn user_report(world: &World, user: u64) -> serde_json::Value {
    let response = shake_testkit::metrics::user_report(world.edge.metrics, &user.to_string());
    let (_, body) = response.split_once("\r\n\r\n").expect("a body");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_supersedes_the_old_one() {
    // A budget that lets every session below supersede.
    let edge_limits = "user_supersedes_per_min = 6000.0\nuser_supersede_burst = 100.0\n";
    let world = World::start(WorldSettings { edge_limits, ..WorldSettings::default() }).await;
    let mut honest = Phone::connect(&world).await;
    assert!(matches!(honest.hello(token(HONEST, 3600)).await, Ok(ControlFrame::Welcome { .. })));

    // Fresh endpoints (fresh source ports) land on either worker; keep going until the user's
    // live session has been on both, so a supersede across workers is exercised.
    let mut workers_seen = std::collections::BTreeSet::new();
    let mut previous: Option<Phone> = None;
    let mut sessions = 0u64;
    while sessions < 16 && (workers_seen.len() < 2 || sessions < 4) {
        let mut phone = Phone::connect(&world).await;
        assert!(
            matches!(phone.hello(token(CHEATER, 3600)).await, Ok(ControlFrame::Welcome { .. })),
            "a new session of a user is welcome"
        );
        sessions += 1;
        if let Some(mut old) = previous.take() {
            match old.next_award().await {
                Ok(ControlFrame::Error { code, .. }) => {
                    assert_eq!(code, u64::from(ErrorCode::SessionSuperseded.code()))
                }
                other => panic!("the superseded session got {other:?}"),
            }
            assert_eq!(old.closed_code().await, Some(ErrorCode::SessionSuperseded.code().into()));
        }
        let report = user_report(&world, CHEATER);
        workers_seen.insert(report["live_session_worker"].as_u64().expect("a live session"));
        previous = Some(phone);
    }
    assert_eq!(workers_seen.len(), 2, "16 sessions all landed on one worker");

    // The user's last session and the other user are served.
    let last = previous.unwrap();
    last.shake(1, 1);
    last.outcome().await.unwrap();
    honest.shake(1, 1);
    honest.outcome().await.unwrap();

    let report = user_report(&world, CHEATER);
    assert_eq!(report["sessions_started"], sessions);
    assert_eq!(report["sessions_superseded"], sessions - 1);
    assert_eq!(user_report(&world, HONEST)["sessions_superseded"], 0);
    world
        .wait_for_metric(
            "shake_edge_sessions_closed_total{code=\"SESSION_SUPERSEDED\"}",
            (sessions - 1) as f64,
        )
        .await;
    world.wait_for_metric("shake_edge_users_live", 2.0).await;
    assert_eq!(world.metric("shake_edge_phones"), 2.0);
    // The user's sessions end: the user is free, and a bad user id is refused.
    drop(last);
    let response = shake_testkit::metrics::user_report(world.edge.metrics, "not-a-number");
    assert_eq!(shake_ops::http::status_of(&response), Some(400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_budget_the_newcomer_is_refused() {
    // The default budget: two supersedes at once, then one a minute.
    let world = World::start(WorldSettings::default()).await;
    let mut live = Vec::new();
    for _ in 0..3 {
        let mut phone = Phone::connect(&world).await;
        assert!(matches!(
            phone.hello(token(CHEATER, 3600)).await,
            Ok(ControlFrame::Welcome { .. })
        ));
        live.push(phone);
    }
    let holder = live.pop().unwrap();
    for _ in 0..3 {
        let mut newcomer = Phone::connect(&world).await;
        match newcomer.hello(token(CHEATER, 3600)).await {
            Ok(ControlFrame::Error { code, .. }) => {
                assert_eq!(code, u64::from(ErrorCode::SessionInUse.code()))
            }
            other => panic!("a session past the budget got {other:?}"),
        }
        assert_eq!(newcomer.closed_code().await, Some(ErrorCode::SessionInUse.code().into()));
    }
    // The live session was never disturbed.
    holder.shake(1, 1);
    holder.outcome().await.unwrap();
    let report = user_report(&world, CHEATER);
    assert_eq!(report["sessions_superseded"], 2);
    assert_eq!(report["sessions_refused"], 3);
    world.wait_for_metric("shake_edge_sessions_closed_total{code=\"SESSION_IN_USE\"}", 3.0).await;
}

/// Sends 20 shakes at once (a phone bucket's burst): how many were answered `SlowDown`.
async fn slowed_of_a_burst(phone: &Phone) -> usize {
    for seq in 1..=20 {
        phone.shake(1, seq);
    }
    let mut slowed = 0;
    for _ in 0..20 {
        let outcome = phone.outcome().await.unwrap_or_else(|why| panic!("an outcome: {why}"));
        slowed += usize::from(matches!(outcome.verdict, shake_proto::Verdict::SlowDown { .. }));
    }
    slowed
}

/// A session that follows a closed one starts with the shake bucket the last one left: a
/// cheater closing before each `Hello` once got a fresh burst of twenty shakes a session
/// (ten connect-burst-close cycles a second: about twenty times an honest phone's shakes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_before_each_hello_buys_no_fresh_burst() {
    use shake_proto::Verdict;
    let world = World::start(WorldSettings::default()).await;
    // Each session sends 20 shakes at once (the phone bucket's burst), then closes.
    let mut slowed = Vec::new();
    for _ in 0..3 {
        let mut phone = Phone::connect(&world).await;
        assert!(matches!(
            phone.hello(token(CHEATER, 3600)).await,
            Ok(ControlFrame::Welcome { .. })
        ));
        slowed.push(slowed_of_a_burst(&phone).await);
        phone.conn.close(0u32.into(), b"bye");
        let freed = std::time::Instant::now();
        while !user_report(&world, CHEATER)["live_session_worker"].is_null() {
            assert!(freed.elapsed() < std::time::Duration::from_secs(10), "never freed");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    // The first session's burst is answered; the next ones start from what it left (a token
    // or two refilled in the time between), so most of their shakes are slowed down.
    assert!(slowed[0] <= 2, "{slowed:?}");
    assert!(slowed[1] >= 10 && slowed[2] >= 10, "a fresh burst each session: {slowed:?}");
    // Replacing a live session buys no burst either: the newcomer starts with one shake (the
    // replaced one's bucket is in its own worker).
    let mut live = Phone::connect(&world).await;
    assert!(matches!(live.hello(token(CHEATER, 3600)).await, Ok(ControlFrame::Welcome { .. })));
    let mut newcomer = Phone::connect(&world).await;
    assert!(matches!(newcomer.hello(token(CHEATER, 3600)).await, Ok(ControlFrame::Welcome { .. })));
    let slowed_newcomer = slowed_of_a_burst(&newcomer).await;
    assert!(slowed_newcomer >= 15, "a fresh burst for a replacing session: {slowed_newcomer}");
    drop(live);
    // Another user is untouched.
    let mut honest = Phone::connect(&world).await;
    assert!(matches!(honest.hello(token(HONEST, 3600)).await, Ok(ControlFrame::Welcome { .. })));
    honest.shake(1, 1);
    assert!(!matches!(honest.outcome().await.unwrap().verdict, Verdict::SlowDown { .. }));
}

/// A user's report is for risk control and support, on the metrics listener every scraper
/// reaches: it needs the bearer token of `users_token_file` (401 without it, or with another),
/// and an edge configured with none serves no report (404). Before, anyone who could scrape
/// the edge could look up any user's sessions.
#[test]
fn a_users_report_needs_its_token_and_is_off_without_one() {
    use shake_ops::http::{request, request_with, status_of};
    use shake_testkit::scratch::{Scratch, USERS_TOKEN};
    use shake_testkit::servers::{Allocator, Edge};

    let scratch = Scratch::new("users-token");
    let allocator =
        Allocator::start(&scratch.config("[rounds.cash]\ntotal_cents = 100\nenvelopes = 1\n"));
    let config = scratch.edge_config(allocator.quic, "");
    let edge = Edge::start_quiet(&config);
    let status = |headers: &[(&str, &str)]| {
        status_of(&request_with(edge.metrics, "GET", "/users/7", headers).unwrap())
    };
    assert_eq!(status(&[]), Some(401));
    assert_eq!(status(&[("Authorization", "Bearer risk-control-token-0123456788")]), Some(401));
    assert_eq!(status(&[("Authorization", USERS_TOKEN)]), Some(401), "no Bearer scheme");
    let report = shake_testkit::metrics::user_report(edge.metrics, "7");
    assert_eq!(status_of(&report), Some(200), "{report}");
    assert!(shake_ops::http::body_of(&report).contains("\"user_id\":7"), "{report}");
    assert_eq!(status_of(&request(edge.metrics, "GET", "/metrics").unwrap()), Some(200));
    drop(edge);

    let text = std::fs::read_to_string(&config).unwrap();
    let line = text.lines().find(|l| l.starts_with("users_token_file")).unwrap().to_owned();
    std::fs::write(&config, text.replace(&(line + "\n"), "")).unwrap();
    let untokened = Edge::start_quiet(&config);
    let report = shake_testkit::metrics::user_report(untokened.metrics, "7");
    assert_eq!(status_of(&report), Some(404), "{report}");
}
