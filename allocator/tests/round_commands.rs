//! Live rounds through the real binary's admin API: a round armed for later is opened by "go",
//! which the edge hears at once; commands are idempotent, refused with a reason when the
//! round's state does not allow them, authenticated, recorded in the ledger before they take
//! effect, and replayed after a restart. The CLI speaks the same API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shake_ops::http::{body_of, request_with, request_with_body, status_of};
use shake_proto::{AllocatorFrame, Batch, BatchEntry, RoundPhase};
use shake_testkit::edge_link::{EdgeStream, edge_worker};
use shake_testkit::processes::bin;
use shake_testkit::scratch::{ADMIN_TOKEN, Scratch};
use shake_testkit::servers::Allocator;
use shake_testkit::{failpoints, metrics, now_ms};

/// The allocator and its admin API's address (from its ready line).
fn admin_addr(config: &Path) -> (Allocator, SocketAddr) {
    let alloc = Allocator::start(config);
    let admin = alloc.admin.expect("the ready line names the admin API");
    (alloc, admin)
}

/// (status, body) of one admin request; `key` is the idempotency key.
fn status(addr: SocketAddr, method: &str, path: &str, key: Option<&str>) -> (u16, String) {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let mut headers = vec![("X-Shake-Operator", "director")];
    if key.is_some() || method == "POST" {
        headers.push(("Authorization", &bearer));
    }
    if let Some(key) = key {
        headers.push(("Idempotency-Key", key));
    }
    let response = request_with(addr, method, path, &headers).unwrap();
    (status_of(&response).unwrap_or(0), body_of(&response).to_owned())
}

fn authed(addr: SocketAddr, method: &str, path: &str, key: &str) -> (u16, serde_json::Value) {
    let (code, body) = status(addr, method, path, Some(key));
    (code, serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::String(body)))
}

/// The next `RoundState` for round 1.
async fn round_one(stream: &mut EdgeStream) -> (RoundPhase, u64, u64) {
    round_state(stream, 1).await
}

/// The next `RoundState` for `round_id`: its phase and times as the edge is told them.
async fn round_state(stream: &mut EdgeStream, round_id: u32) -> (RoundPhase, u64, u64) {
    let state = stream.recv_until(Duration::from_secs(10), |frame, _| match frame {
        AllocatorFrame::RoundState { round, .. } if round.round_id == round_id => {
            Some((round.phase, round.starts_at_ms, round.ends_at_ms))
        }
        _ => None,
    });
    state.await.unwrap_or_else(|err| panic!("no RoundState for round {round_id}: {err}"))
}

/// (status, JSON body) of an authenticated POST with a JSON body.
fn post_json(
    addr: SocketAddr,
    path: &str,
    key: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let headers = [("Authorization", bearer.as_str()), ("Idempotency-Key", key)];
    let body = serde_json::to_vec(body).unwrap();
    let response = request_with_body(addr, "POST", path, &headers, &body).unwrap();
    let text = body_of(&response).trim().to_owned();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status_of(&response).unwrap_or(0), json)
}

/// Runs the CLI's `round ...` against `admin`; its exit status and output.
fn cli(admin: SocketAddr, scratch: &Scratch, args: &[&str]) -> std::process::Output {
    Command::new(bin("shake-allocator"))
        .arg("round")
        .args(args)
        .args(["--admin", &admin.to_string(), "--token-file"])
        .arg(scratch.dir.join("admin.token"))
        .output()
        .unwrap()
}

/// A batch of `users` fresh users (`first..`) for round `round_id`; the prizes it won.
async fn draw(
    stream: &mut EdgeStream,
    round_id: u32,
    seq: u64,
    first: u64,
    users: u64,
) -> Vec<shake_proto::Prize> {
    let entries: Vec<BatchEntry> =
        (0..users).map(|i| BatchEntry { user_id: first + i, offset_us: i as u32 }).collect();
    stream.send(&AllocatorFrame::Batch(Batch::new(seq, round_id, now_ms(), &entries))).await;
    let (_, winners, _) = stream.next_result().await.unwrap();
    winners.into_iter().map(|w| w.prize).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_opens_an_armed_round_and_every_command_is_recorded_once() {
    let scratch = Scratch::new("commands");
    let config = scratch.admin_config();
    let (mut alloc, admin) = admin_addr(&config);
    let mut stream = edge_worker(alloc.quic, &scratch, 5).await.unwrap();
    assert_eq!(round_one(&mut stream).await.0, RoundPhase::Waiting);

    // No token, a wrong token: nothing happens.
    assert_eq!(
        request_with(admin, "POST", "/rounds/1/go", &[]).map(|r| status_of(&r)).unwrap(),
        Some(401)
    );
    let wrong =
        request_with(admin, "POST", "/rounds/1/go", &[("Authorization", "Bearer nope")]).unwrap();
    assert_eq!(status_of(&wrong), Some(401));
    // Refused before its body is read: a body that never comes holds no connection for
    // someone without the token (the listener serves a bounded number).
    {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(admin).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(b"POST /rounds/1/go HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n")
            .unwrap();
        let mut answer = [0u8; 256];
        let n = conn.read(&mut answer).expect("an answer before the body");
        assert_eq!(status_of(&String::from_utf8_lossy(&answer[..n])), Some(401));
    }

    // "Shake now": the edge hears the round open at once.
    let before = now_ms();
    let (code, body) = authed(admin, "POST", "/rounds/1/go", "go-1");
    assert_eq!(code, 200, "{body}");
    let started = body["timing"]["starts_at_ms"].as_u64().unwrap();
    assert!(started >= before && started <= now_ms());
    let (phase, starts, ends) =
        tokio::time::timeout(Duration::from_secs(5), round_one(&mut stream)).await.unwrap();
    assert_eq!((phase, starts, ends), (RoundPhase::Open, started, started + 60_000));

    // Shakes win while it is open; support finds a winner's award while the allocator runs.
    let entries: Vec<BatchEntry> =
        (0..6).map(|i| BatchEntry { user_id: 500 + i, offset_us: i as u32 }).collect();
    stream.send(&AllocatorFrame::Batch(Batch::new(1, 1, now_ms(), &entries))).await;
    let (_, winners, _) = stream.next_result().await.unwrap();
    assert!(!winners.is_empty(), "an open round with prizes released draws winners");
    let user = 500 + u64::from(winners[0].entry_index);
    let (code, found) = status(admin, "GET", &format!("/awards?user={user}&round=1"), Some("-"));
    assert_eq!(code, 200, "{found}");
    let rows: Vec<serde_json::Value> =
        found.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 1, "{found}");
    assert_eq!(rows[0]["award_id"].as_u64(), Some(winners[0].award_id));
    let (code, export) = status(admin, "GET", "/awards/export", Some("-"));
    assert_eq!((code, export.lines().count()), (200, winners.len()));
    assert_eq!(status(admin, "GET", "/awards/export", None).0, 401);
    // HTTP/1.0 has no chunked encoding: an export cut short would read as whole. Refused.
    {
        use std::io::{Read, Write};
        let mut raw = std::net::TcpStream::connect(admin).unwrap();
        let ask =
            format!("GET /awards/export HTTP/1.0\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n");
        raw.write_all(ask.as_bytes()).unwrap();
        let mut answer = String::new();
        raw.read_to_string(&mut answer).unwrap();
        assert_eq!(status_of(&answer), Some(505), "{answer}");
    }

    // The same key again: the first outcome, nothing new. Another go: refused with a reason.
    let (code, again) = authed(admin, "POST", "/rounds/1/go", "go-1");
    assert_eq!((code, &again["command"]), (200, &body["command"]));
    let (code, refused) = authed(admin, "POST", "/rounds/1/go", "go-2");
    assert_eq!(code, 409);
    assert_eq!(refused["error"], "round 1 is already open");
    assert_eq!(authed(admin, "POST", "/rounds/9/close", "c-9").0, 404);
    // A key that is there but empty or not visible ASCII is refused, not replaced by a fresh
    // one (each retry would then be applied anew); nothing is recorded.
    for key in ["", "caf\u{e9}"] {
        let (code, said) = authed(admin, "POST", "/rounds/1/extend?by_s=5", key);
        assert_eq!(code, 400, "{key:?}: {said}");
    }
    assert_eq!(authed(admin, "POST", "/rounds/1/extend", "e-0").0, 400);
    // Extending into round 2 is refused; a shorter extension is not.
    assert_eq!(authed(admin, "POST", "/rounds/1/extend?by_s=7200", "e-1").0, 409);
    let (code, extended) = authed(admin, "POST", "/rounds/1/extend?by_s=30", "e-2");
    assert_eq!(code, 200, "{extended}");
    assert_eq!(round_one(&mut stream).await.2, started + 90_000);

    // The CLI: close the round early, through the same API.
    let token_file = scratch.dir.join("admin.token");
    let cli = Command::new(bin("shake-allocator"))
        .args(["round", "close", "1", "--admin", &admin.to_string(), "--token-file"])
        .arg(&token_file)
        .args(["--as", "floor-manager", "--id", "close-1"])
        .output()
        .unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let (phase, _, closed_at) = round_one(&mut stream).await;
    assert_eq!(phase, RoundPhase::Closed);
    let refused_cli = Command::new(bin("shake-allocator"))
        .args(["round", "close", "1", "--admin", &admin.to_string(), "--token-file"])
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(!refused_cli.status.success(), "closing a closed round must fail");

    // Restart: the ledger replays the commands; the round stays as they left it.
    assert!(alloc.process.terminate().success());
    let (alloc, admin) = admin_addr(&config);
    let (code, rounds) = authed(admin, "GET", "/rounds", "-");
    assert_eq!(code, 200);
    assert_eq!(rounds[0]["phase"], "closed");
    assert_eq!(rounds[0]["starts_at_ms"].as_u64(), Some(started));
    assert_eq!(rounds[0]["ends_at_ms"].as_u64(), Some(closed_at));
    let (code, audit) = status(admin, "GET", "/audit", Some("-"));
    assert_eq!(code, 200);
    let log: Vec<serde_json::Value> =
        audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let actions: Vec<(&str, &str)> = log
        .iter()
        .map(|c| (c["action"].as_str().unwrap(), c["issued_by"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        vec![("go", "director"), ("extend", "director"), ("close", "floor-manager")]
    );
    let mut stream = edge_worker(alloc.quic, &scratch, 5).await.unwrap();
    assert_eq!(round_one(&mut stream).await, (RoundPhase::Closed, started, closed_at));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_paused_topped_up_resumed_and_a_round_added_survive_a_restart() {
    let scratch = Scratch::new("show-changes");
    let config = scratch.admin_config();
    let (mut alloc, admin) = admin_addr(&config);
    let mut stream = edge_worker(alloc.quic, &scratch, 6).await.unwrap();
    assert_eq!(round_one(&mut stream).await.0, RoundPhase::Waiting);
    assert_eq!(authed(admin, "POST", "/rounds/1/pause", "p-0").1["error"], "round 1 is not open");
    assert_eq!(authed(admin, "POST", "/rounds/1/go", "go").0, 200);
    assert_eq!(round_one(&mut stream).await.0, RoundPhase::Open);
    // Round 1 releases its 10 envelopes at once: 20 users take all of them.
    assert_eq!(draw(&mut stream, 1, 1, 1_000, 20).await.len(), 10);
    // Drained and open: what the drained-pool alert pages on (and, paused below, does not).
    let left = "shake_allocator_pool_remaining{round=\"1\"}";
    metrics::wait_until(alloc.metrics, left, "0 (drained)", |n| n == 0.0).await;
    let open = "shake_allocator_round_open{round=\"1\"}";
    assert_eq!(metrics::read(alloc.metrics, open), 1.0);

    // Paused: the edge is told the round closed at the pause; nothing is drawn meanwhile.
    let before = now_ms();
    let (code, paused) = authed(admin, "POST", "/rounds/1/pause", "pause-1");
    assert_eq!(code, 200, "{paused}");
    let paused_at = paused["timing"]["paused_at_ms"].as_u64().unwrap();
    assert!(paused_at >= before);
    let (phase, _, ends) = round_one(&mut stream).await;
    assert_eq!((phase, ends), (RoundPhase::Closed, paused_at));
    assert_eq!(
        authed(admin, "POST", "/rounds/1/pause", "pause-2").1["error"],
        "round 1 is not open"
    );
    assert_eq!(
        authed(admin, "POST", "/rounds/1/go", "go-2").1["error"],
        "round 1 is paused: resume or close it"
    );
    let (_, rounds) = authed(admin, "GET", "/rounds", "-");
    assert_eq!(rounds[0]["phase"], "paused");
    metrics::wait_until(alloc.metrics, open, "0 (paused)", |n| n == 0.0).await;

    // Topped up while paused (the CLI): five envelopes and two mugs. Bad pools are refused.
    let topped = cli(
        admin,
        &scratch,
        &["top-up", "1", "--cash-cents", "500", "--envelopes", "5", "--gift", "mug=2"],
    );
    assert!(topped.status.success(), "{}", String::from_utf8_lossy(&topped.stdout));
    let bad = serde_json::json!({ "cash": { "total_cents": 5, "envelopes": 10 } });
    let (code, refused) = post_json(admin, "/rounds/1/top-up", "t-bad", &bad);
    assert_eq!(code, 400);
    assert!(refused["error"].as_str().unwrap().contains("top_up.cash.total_cents"), "{refused}");
    // A count no pool can hold is refused before it is recorded: recorded, it failed to apply
    // (a wrapped size check, then an allocation of 2^64 items), on every restart's replay too.
    for count in [u64::MAX, 3_000_000_000] {
        let huge = serde_json::json!({ "gifts": [{ "sku": "x", "name": "x", "count": count }] });
        let (code, refused) = post_json(admin, "/rounds/1/top-up", &format!("t-{count}"), &huge);
        assert_eq!(code, 400, "{count}: {refused}");
        assert!(refused["error"].as_str().unwrap().contains("count"), "{refused}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(draw(&mut stream, 1, 2, 2_000, 20).await.is_empty(), "a paused round draws nothing");

    // Resumed: open again now, for the time it had left; the new prizes are drawn.
    let (code, resumed) = authed(admin, "POST", "/rounds/1/resume", "resume-1");
    assert_eq!(code, 200, "{resumed}");
    let (phase, starts, ends) = round_one(&mut stream).await;
    assert_eq!(phase, RoundPhase::Open);
    assert!(starts >= paused_at + 300, "the open stretch starts at the resume");
    let left = ends - starts;
    assert!(left <= 60_000 && left > 50_000, "the time left is kept: {left}");
    let prizes = draw(&mut stream, 1, 3, 3_000, 20).await;
    let mugs = prizes
        .iter()
        .filter(|p| matches!(p, shake_proto::Prize::Gift { sku } if sku == "mug"))
        .count();
    assert_eq!((prizes.len(), mugs), (7, 2), "{prizes:?}");
    assert_eq!(
        authed(admin, "POST", "/rounds/1/resume", "resume-2").1["error"],
        "round 1 is not paused"
    );

    // A round added during the show (the CLI reads one round's TOML); checked as the
    // configuration is: a duplicate id or an empty pool is refused.
    let starts_3 = now_ms() + 7_200_000;
    let file = scratch.dir.join("round-3.toml");
    std::fs::write(&file, format!("id = 3\nstarts_at_ms = {starts_3}\nduration_s = 30\nseed = 9\n[[gifts]]\nsku = \"hat\"\nname = \"Hat\"\ncount = 4\n")).unwrap();
    let added = cli(admin, &scratch, &["add", file.to_str().unwrap()]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stdout));
    assert_eq!(
        round_state(&mut stream, 3).await,
        (RoundPhase::Waiting, starts_3, starts_3 + 30_000)
    );
    let again = cli(admin, &scratch, &["add", file.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("round 3 exists already"));
    let empty = serde_json::json!({ "id": 4, "starts_at_ms": starts_3 + 60_000, "duration_s": 30, "seed": 1 });
    let (code, refused) = post_json(admin, "/rounds", "add-4", &empty);
    assert_eq!(code, 400);
    assert!(refused["error"].as_str().unwrap().contains("round.cash"), "{refused}");
    // A body over the admin API's limit (64 KiB) is refused: 413, nothing parsed.
    let huge = serde_json::json!({ "id": 6, "pad": "x".repeat(70_000) });
    assert_eq!(post_json(admin, "/rounds", "add-huge", &huge).0, 413);
    let overlapping = serde_json::json!({ "id": 5, "starts_at_ms": starts_3 + 10_000, "duration_s": 30, "seed": 1, "gifts": [{ "sku": "x", "name": "x", "count": 1 }] });
    assert_eq!(post_json(admin, "/rounds", "add-5", &overlapping).0, 409);

    // Restart: the commands replay before the awards (an award names a topped-up prize).
    assert!(alloc.process.terminate().success());
    let (_alloc, admin) = admin_addr(&config);
    let (code, rounds) = authed(admin, "GET", "/rounds", "-");
    assert_eq!(code, 200, "{rounds}");
    let round_1 = &rounds[0];
    assert_eq!(
        (round_1["phase"].as_str(), round_1["prizes"].as_u64(), round_1["awarded"].as_u64()),
        (Some("open"), Some(17), Some(17))
    );
    assert_eq!(round_1["ends_at_ms"].as_u64(), Some(ends));
    assert_eq!(rounds[2]["round_id"], 3);
    assert_eq!(rounds[2]["gifts_left"], 4);
    let (code, export) = status(admin, "GET", "/awards/export", Some("-"));
    assert_eq!((code, export.lines().count()), (200, 17));
    let (_, audit) = status(admin, "GET", "/audit", Some("-"));
    let actions: Vec<String> = audit
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(actions, ["go", "pause", "top_up", "resume", "add"]);
}

/// A command whose answer never comes may have been recorded: the CLI sends it again under the
/// same id (applied at most once), and when it gives up it says to resend with that id, never
/// a new one (a fresh id could top a pool up twice).
///
/// Three ways the answer fails to come: nothing listens; the server reads the command and
/// closes without a word (an allocator stopped after recording it); a proxy's 502. The last
/// two record the id each try carried: always the same.
#[test]
fn an_unconfirmed_command_is_retried_and_resent_only_under_its_id() {
    use std::io::{Read, Write};
    let scratch = Scratch::new("cli-unconfirmed");
    std::fs::write(scratch.dir.join("admin.token"), ADMIN_TOKEN).unwrap();
    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    // Answers each request with `answer` (nothing: closes); the idempotency key of each.
    let server = |answer: &'static [u8]| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let keys = std::thread::spawn(move || {
            listener.set_nonblocking(true).unwrap();
            let mut keys = Vec::new();
            let until = Instant::now() + Duration::from_secs(20);
            while keys.len() < 5 && Instant::now() < until {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                while !String::from_utf8_lossy(&request).contains("}") {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request).into_owned();
                keys.push(
                    text.lines()
                        .find_map(|l| l.strip_prefix("Idempotency-Key: "))
                        .unwrap_or("")
                        .to_owned(),
                );
                conn.write_all(answer).unwrap();
            }
            keys
        });
        (addr, keys)
    };
    let (silent, silent_keys) = server(b"");
    let (proxy, proxy_keys) = server(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
    let runs: Vec<_> = [closed, silent, proxy]
        .into_iter()
        .map(|admin| {
            Command::new(bin("shake-allocator"))
                .args(["round", "top-up", "1", "--gift", "mug=2", "--id", "top-up-mugs-7"])
                .args(["--admin", &admin.to_string(), "--token-file"])
                .arg(scratch.dir.join("admin.token"))
                .stderr(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (run, admin) in runs.into_iter().zip(["closed", "silent", "proxy"]) {
        let output = run.wait_with_output().unwrap();
        assert!(!output.status.success(), "{admin}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains("not confirmed after 5 tries"), "{admin}: {said}");
        assert!(said.contains("send it again with --id top-up-mugs-7"), "{admin}: {said}");
    }
    for keys in [silent_keys.join().unwrap(), proxy_keys.join().unwrap()] {
        assert_eq!(keys, vec!["top-up-mugs-7"; 5]);
    }
}

/// An allocator of `scratch`'s admin configuration with the fault `failpoint` switched on
/// (`SHAKE_FAILPOINT`), its errors on the test's stderr, and its admin API's address.
fn with_failpoint(scratch: &Scratch, failpoint: &str) -> (Allocator, SocketAddr, PathBuf) {
    let config = scratch.admin_config();
    let mut command = Allocator::command(&config);
    failpoints::switch_on(&mut command, &config, failpoint);
    command.env("RUST_LOG", "warn").stderr(std::process::Stdio::inherit());
    let alloc = Allocator::spawn(command).unwrap();
    let admin = alloc.admin.expect("the ready line names the admin API");
    (alloc, admin, config)
}

/// Support's reads run on a ledger handle and thread of their own: a read as slow as one of
/// millions of awards (made 3 s slow here) holds up no group commit, so edges keep getting
/// answers. Served in the commit lane's turn, as they were, the batch waited for the read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_award_read_holds_up_no_commit() {
    let scratch = Scratch::new("slow-read");
    let (alloc, admin, config) = with_failpoint(&scratch, "allocator-slow-award-read");
    let mut stream = edge_worker(alloc.quic, &scratch, 9).await.unwrap();
    round_one(&mut stream).await;
    let read = std::thread::spawn(move || authed(admin, "GET", "/awards?limit=5", "-").0);
    // The batch goes in once the read is under way (sent before it, it would pass anyway).
    failpoints::until_held(&config, "allocator-slow-award-read", Duration::from_secs(2)).await;
    let entries = [BatchEntry { user_id: 77, offset_us: 0 }];
    stream.send(&AllocatorFrame::Batch(Batch::new(1, 1, now_ms(), &entries))).await;
    let answer = tokio::time::timeout(Duration::from_millis(1_500), stream.next_result()).await;
    assert!(matches!(answer, Ok(Ok((1, _, _)))), "the batch behind a slow read: {answer:?}");
    assert_eq!(read.join().unwrap(), 200, "the read is answered all the same");
}

/// A read the ledger never answers in time (`allocator-award-read-hangs`: 15 s) is answered
/// 504 once the admin API's wait (10 s) is out, not held for as long as the ledger hangs; the
/// rest of the API answers meanwhile. Without the wait, the request waited the read out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_the_ledger_does_not_answer_in_time_gets_a_gateway_timeout() {
    let scratch = Scratch::new("hung-read");
    let (_alloc, admin, _) = with_failpoint(&scratch, "allocator-award-read-hangs");
    let started = Instant::now();
    let read = std::thread::spawn(move || authed(admin, "GET", "/awards?limit=5", "-"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _) = authed(admin, "GET", "/rounds", "-");
    assert_eq!(status, 200, "the rounds are answered beside a hung read");
    let (status, body) = read.join().unwrap();
    let waited = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(body.to_string().contains("no answer within 10s"), "{body}");
    assert!(waited >= Duration::from_secs(10) && waited < Duration::from_secs(14), "{waited:?}");
}
