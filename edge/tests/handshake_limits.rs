//! The edge's handshake defences against real phones: the per-source rate limit (a
//! connection flood from one address is refused, other addresses get in), address validation
//! with Retry above `retry_above_handshakes`, and Retry for unknown sources once the table of
//! tracked sources is full. Every edge here runs with overload control off: a worker held off
//! its core mid-turn refuses handshakes for an interval (an edge stopped for 1.5 s while it
//! worked refused the next phone), and these phones connect once, each refusal counted as the
//! limit's under test.

use std::time::Duration;

use shake_proto::ErrorCode;
use shake_testkit::first_flight::FirstFlights;
use shake_testkit::phone::{Phone, phone_config};
use shake_testkit::tokens::token;
use shake_testkit::world::{World, WorldSettings};

/// A world whose edge has these `[limits]` lines and overload control off (see above).
async fn world_with_limits(edge_limits: &'static str) -> World {
    World::start(WorldSettings { edge_limits, overload_control: false, ..WorldSettings::default() })
        .await
}

fn refused(err: &quinn::ConnectionError) -> bool {
    matches!(err, quinn::ConnectionError::ConnectionClosed(close)
        if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_from_one_address_is_refused_and_other_addresses_get_in() {
    // 4 per edge, 2 per worker; one new handshake a second.
    let world = world_with_limits(
        "new_handshakes_per_source_per_s = 1.0\nnew_handshakes_per_source_burst = 4.0\n",
    )
    .await;
    let flood: std::net::SocketAddr = "127.66.0.1:0".parse().unwrap();
    let (mut connected, mut refusals, mut phones) = (0, 0, Vec::new());
    let started = std::time::Instant::now();
    for _ in 0..12 {
        match Phone::connect_from(&world, flood).await {
            Ok(phone) => {
                connected += 1;
                phones.push(phone);
            }
            Err(err) if refused(&err) => refusals += 1,
            Err(other) => panic!("expected CONNECTION_REFUSED, got {other}"),
        }
    }
    // The burst (each worker holds half, and the kernel hashes each fresh port to a worker),
    // and what refilled while the attempts ran (one a second, and one begun).
    let refilled = started.elapsed().as_secs_f64().ceil() as usize + 1;
    assert!(
        (2..=4 + refilled).contains(&connected),
        "{connected} of 12 connected, {refilled} refilled"
    );
    assert_eq!(connected + refusals, 12);
    assert_eq!(
        world.metric("shake_edge_handshakes_total{outcome=\"rate_limited\"}"),
        refusals as f64
    );
    // Another address is not held back by the flood, and connected phones are served.
    let mut other = Phone::connect_from(&world, "127.1.0.1:0".parse().unwrap()).await.unwrap();
    other.hello(token(200, 3600)).await.unwrap();
    phones[0].hello(token(201, 3600)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_the_retry_threshold_phones_validate_their_address_first() {
    let world = world_with_limits("retry_above_handshakes = 0\n").await;
    for user in 300..303u64 {
        let local = format!("127.1.0.{}:0", user - 299).parse().unwrap();
        let mut phone = Phone::connect_from(&world, local).await.unwrap();
        phone.hello(token(user, 3600)).await.unwrap();
    }
    // One Retry per connection (quinn's client answers it), then the handshake.
    assert_eq!(world.metric("shake_edge_handshakes_total{outcome=\"retried\"}"), 3.0);
    assert_eq!(world.metric("shake_edge_handshakes_total{outcome=\"accepted\"}"), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_source_table_asks_new_sources_to_validate_and_still_lets_them_in() {
    // One tracked source per worker; entries leave only once idle, swept each second.
    let world = world_with_limits("max_tracked_sources = 1\n").await;
    let mut phones = Vec::new();
    for n in 1..=6u64 {
        let local = format!("127.2.0.{n}:0").parse().unwrap();
        let mut phone = Phone::connect_from(&world, local).await.unwrap();
        phone.hello(token(400 + n, 3600)).await.unwrap();
        phones.push(phone);
    }
    // Six sources on two workers: at least one found its worker's table full.
    assert!(world.metric("shake_edge_handshakes_total{outcome=\"retried\"}") >= 1.0);
    assert_eq!(world.metric("shake_edge_handshakes_total{outcome=\"accepted\"}"), 6.0);
}

/// A connection that completes its handshake and never says `Hello` holds a session as surely
/// as one still handshaking: it counts against `max_handshakes` until `Hello`, or a flood from
/// many addresses (each under its own rate) would hold `hello_timeout_ms` of connections past
/// every edge-wide cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_say_hello_count_against_the_handshake_cap() {
    let world = world_with_limits("max_handshakes = 2\nretry_above_handshakes = 2\n").await;
    let from = |n: u8| format!("127.3.0.{n}:0").parse().unwrap();
    let silent = Phone::connect_from(&world, from(1)).await.unwrap();
    let mut quiet = Phone::connect_from(&world, from(2)).await.unwrap();
    // Two connected, neither past Hello: a third attempt is refused.
    match Phone::connect_from(&world, from(3)).await {
        Err(err) => assert!(refused(&err), "expected CONNECTION_REFUSED, got {err}"),
        Ok(_) => panic!("a third attempt got in past two connections waiting for Hello"),
    }
    assert_eq!(world.metric("shake_edge_handshakes_total{outcome=\"refused\"}"), 1.0);
    // One says Hello: it is a phone now, and its place is free again.
    quiet.hello(token(500, 3600)).await.unwrap();
    let mut late = Phone::connect_from(&world, from(4)).await.unwrap();
    late.hello(token(501, 3600)).await.unwrap();
    // The silent one is closed at its deadline, and its place is free too: two new
    // connections wait for their Hello, and a third is refused again.
    assert_eq!(silent.closed_code().await, Some(ErrorCode::HelloTimeout.code().into()));
    let _waiting = [
        Phone::connect_from(&world, from(5)).await.unwrap(),
        Phone::connect_from(&world, from(6)).await.unwrap(),
    ];
    assert!(Phone::connect_from(&world, from(7)).await.is_err_and(|err| refused(&err)));
}

/// Sessions the edge closes itself leave its session table: quinn-proto reports no lost
/// connection for a close of our own, so each stayed (its read buffer, up to 64 queued frames)
/// until another connection took its slot; `shake_edge_sessions_held` read 3 here for ever.
/// `shake_edge_handshakes_in_progress` counts them while they wait for `Hello`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_the_edge_closes_leave_its_table() {
    // Long enough a wait for Hello that the once-a-second gauge sees the silent ones held.
    let world = world_with_limits("hello_timeout_ms = 2500\n").await;
    let mut silent = Vec::new();
    for n in 1..=3u8 {
        let from = format!("127.5.0.{n}:0").parse().unwrap();
        silent.push(Phone::connect_from(&world, from).await.unwrap());
    }
    held_until(&world, |n| n >= 3.0, "the silent connections were never counted").await;
    // Set in the same once-a-second pass: the places of `max_handshakes` they hold.
    assert_eq!(world.metric("shake_edge_handshakes_in_progress"), 3.0, "{}", world.scrape());
    for phone in &silent {
        assert_eq!(phone.closed_code().await, Some(ErrorCode::HelloTimeout.code().into()));
    }
    held_until(&world, |n| n == 0.0, "sessions held after their close").await;
    assert_eq!(world.metric("shake_edge_handshakes_in_progress"), 0.0);
}

/// Waits (5 s at most) until `shake_edge_sessions_held` satisfies `ok`, else fails with `what`.
async fn held_until(world: &World, ok: impl Fn(f64) -> bool, what: &str) {
    let started = std::time::Instant::now();
    while !ok(world.metric_family("shake_edge_sessions_held")) {
        assert!(started.elapsed() < Duration::from_secs(5), "{what}:\n{}", world.scrape());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A source's connections that completed the handshake and say nothing count against its
/// in-progress cap until `Hello`: released at the handshake, one address could hold as many
/// as its rate let it start in `hello_timeout_ms` (200 + 50 a second by default), and ten
/// addresses every edge-wide place, refusing every phone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sources_connections_waiting_for_hello_count_against_its_cap() {
    // One attempt in progress per source and worker, and a long wait for Hello.
    let world = world_with_limits("handshakes_per_source = 1\nhello_timeout_ms = 20000\n").await;
    let source: std::net::SocketAddr = "127.4.0.1:0".parse().unwrap();
    // Sooner than the phone's first resend of its Initial (about a second).
    let attempt =
        || tokio::time::timeout(Duration::from_millis(700), Phone::connect_from(&world, source));
    let mut silent = vec![Phone::connect_from(&world, source).await.unwrap()];
    for _ in 0..6 {
        if let Ok(connected) = attempt().await {
            silent.push(connected.unwrap());
        }
    }
    // A worker with the source's one attempt waiting for Hello ignores the next: at most the
    // other worker's place was free (and one attempt may have been taken too late to connect
    // in time on a loaded machine, holding its place all the same).
    assert!(silent.len() <= 2, "{} of 7 connected", silent.len());
    assert!(world.metric("shake_edge_handshakes_total{outcome=\"ignored\"}") >= 4.0);
    // Hello ends the charge: each phone that says it lets the next attempt in.
    for (n, phone) in silent.iter_mut().enumerate() {
        phone.hello(token(600 + n as u64, 3600)).await.unwrap();
    }
    for n in 0..3u64 {
        let mut phone = Phone::connect_from(&world, source).await.unwrap();
        phone.hello(token(610 + n, 3600)).await.unwrap();
    }
}

/// A handshake that never completes is closed at `handshake_timeout_ms`, counted `timed_out`,
/// and gives its place under `max_handshakes` back. quinn-proto ends a handshake only once it
/// falls silent for the idle timeout (30 s here), so without the deadline a few stalled
/// attempts, each kept alive by a packet now and then, turned every phone away (review 20).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_completes_gives_its_place_back_at_its_deadline() {
    let world = world_with_limits(
        "max_handshakes = 1\nretry_above_handshakes = 1\nhandshake_timeout_ms = 1000\n",
    )
    .await;
    let mut stalled = FirstFlights::bind("127.6.0.1:0");
    stalled.send(phone_config(&world.scratch.ca()), world.edge.addr, "localhost");
    // Its Initial taken before the phone's (they may reach different workers).
    assert!(stalled.answered(Duration::from_secs(5)), "the edge never answered a first flight");
    let from = |n: u8| format!("127.6.0.{n}:0").parse().unwrap();
    // The stalled attempt holds the one place: a phone is refused while it lasts.
    let mut refusals = 0;
    let started = std::time::Instant::now();
    let mut phone = loop {
        match Phone::connect_from(&world, from(2)).await {
            Ok(phone) => break phone,
            Err(err) if refused(&err) => refusals += 1,
            Err(other) => panic!("expected CONNECTION_REFUSED, got {other}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "phones refused 5 s after a handshake stalled ({refusals} refusals)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refusals > 0, "the stalled attempt never held the place");
    assert_eq!(world.metric("shake_edge_handshakes_total{outcome=\"timed_out\"}"), 1.0);
    phone.hello(token(600, 3600)).await.unwrap();
}
