//! Live rounds through the real binary's admin API: a round armed for later is opened by "go",
//! which the edge hears at once; commands are idempotent, refused with a reason when the
//! round's state does not allow them, authenticated, recorded in the ledger before they take
//! effect, and replayed after a restart. The CLI speaks the same API.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use shake_ops::http::{body_of, request_with, status_of};
use shake_proto::{AllocatorFrame, Batch, BatchEntry, RoundPhase};

/// The allocator and its admin API's address (from its ready line).
fn admin_addr(config: &Path) -> (Allocator, SocketAddr) {
    let alloc = Allocator::start(config);
    let admin = alloc.admin.expect("the ready line names the admin API");
    (alloc, admin)
}

/// (status, body) of one admin request; `key` is the idempotency key.
fn status(addr: SocketAddr, method: &str, path: &str, key: Option<&str>) -> (u16, String) {
    let bearer = format!("Bearer {TOKEN}");
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
    loop {
        if let (AllocatorFrame::RoundState { round, .. }, _) = stream.recv().await.unwrap()
            && round.round_id == 1
        {
            return (round.phase, round.starts_at_ms, round.ends_at_ms);
        }
    }
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

    // The same key again: the first outcome, nothing new. Another go: refused with a reason.
    let (code, again) = authed(admin, "POST", "/rounds/1/go", "go-1");
    assert_eq!((code, &again["command"]), (200, &body["command"]));
    let (code, refused) = authed(admin, "POST", "/rounds/1/go", "go-2");
    assert_eq!(code, 409);
    assert_eq!(refused["error"], "round 1 is already open");
    assert_eq!(authed(admin, "POST", "/rounds/9/close", "c-9").0, 404);
    assert_eq!(authed(admin, "POST", "/rounds/1/extend", "e-0").0, 400);
    // Extending into round 2 is refused; a shorter extension is not.
    assert_eq!(authed(admin, "POST", "/rounds/1/extend?by_s=7200", "e-1").0, 409);
    let (code, extended) = authed(admin, "POST", "/rounds/1/extend?by_s=30", "e-2");
    assert_eq!(code, 200, "{extended}");
    assert_eq!(round_one(&mut stream).await.2, started + 90_000);

    // The CLI: close the round early, through the same API.
    let token_file = scratch.dir.join("admin.token");
    let cli = Command::new(BIN)
        .args(["round", "close", "1", "--admin", &admin.to_string(), "--token-file"])
        .arg(&token_file)
        .args(["--as", "floor-manager", "--id", "close-1"])
        .output()
        .unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let (phase, _, closed_at) = round_one(&mut stream).await;
    assert_eq!(phase, RoundPhase::Closed);
    let refused_cli = Command::new(BIN)
        .args(["round", "close", "1", "--admin", &admin.to_string(), "--token-file"])
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(!refused_cli.status.success(), "closing a closed round must fail");

    // Restart: the ledger replays the commands; the round stays as they left it.
    assert!(alloc.terminate().success());
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
