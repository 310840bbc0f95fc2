//! Two real allocators on one PostgreSQL ledger: the standby redirects edges to the leader;
//! the leader is SIGKILLed mid-stream; the standby takes over, and an edge resending every
//! batch gets each answer exactly once (byte for byte what the old leader said), no award
//! lost or doubled, no pool overspent. Settlement reads the ledger while the new leader runs.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use shake_ops::http::metric_sum;
use shake_proto::{AllocatorFrame, Batch, BatchEntry, ErrorCode};
use shake_testkit::edge_link::{
    assert_a_drain_answers_the_batch_in_flight, client_config, connect, edge_worker, until_draining,
};
use shake_testkit::failpoints;
use shake_testkit::metrics;
use shake_testkit::now_ms;
use shake_testkit::pg_server::PgServer;
use shake_testkit::processes::bin;
use shake_testkit::scratch::{ADMIN_TOKEN, Scratch};
use shake_testkit::servers::Allocator;

const ENVELOPES: u64 = 300;
const TOTAL_CENTS: u64 = 30_000;
const BATCHES: u64 = 40;
const TOP_UP_ENVELOPES: u64 = 50;
const TOP_UP_CENTS: u64 = 5_000;

fn batch(seq: u64) -> AllocatorFrame {
    static BASE_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let entries: Vec<BatchEntry> =
        (0..25).map(|i| BatchEntry { user_id: seq * 1000 + i, offset_us: i as u32 }).collect();
    AllocatorFrame::Batch(Batch::new(seq, 1, *BASE_MS.get_or_init(now_ms), &entries))
}

/// The round every test here plays: its envelopes all released at the opening.
fn round() -> String {
    format!(
        "release = \"immediate\"\n[rounds.cash]\ntotal_cents = {TOTAL_CENTS}\nenvelopes = {ENVELOPES}\n"
    )
}

/// An allocator serving `config` with the fault `failpoint` switched on (`SHAKE_FAILPOINT`),
/// its errors only on the test's stderr.
fn with_failpoint(config: &std::path::Path, failpoint: &str) -> Allocator {
    let mut command = Allocator::command(config);
    failpoints::switch_on(&mut command, config, failpoint);
    command.env("RUST_LOG", "error").stderr(std::process::Stdio::inherit());
    Allocator::spawn(command).unwrap()
}

/// Another node takes the lease of the ledger at `url` (epoch + 1, for an hour) behind its
/// leader's back, as a standby would once the lease ran out while the leader was frozen.
fn take_the_lease_behind_its_back(url: &str) {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client
            .execute(
                "UPDATE shake_leader SET epoch = epoch + 1, holder = 'intruder', \
                 expires_at = now() + interval '1 hour' WHERE id = 1",
                &[],
            )
            .unwrap();
    })
    .join()
    .unwrap();
}

/// A scratch directory named `name`, a PostgreSQL primary in it, and the URL of its database
/// `shake` (the server drops before the directory when bound in this order).
fn primary(name: &str) -> (Scratch, PgServer, String) {
    let scratch = Scratch::new(name);
    let server = PgServer::primary(&scratch.dir.join("pg"));
    let url = server.database("shake");
    (scratch, server, url)
}

/// Node `node`'s configuration on `url` with a lease of 6 s, which a test's handover must not
/// wait out.
fn long_lease(scratch: &Scratch, node: &str, url: &str) -> std::path::PathBuf {
    let config = scratch.postgres_config(node, url, &round());
    rewrite(&config, "lease_ms = 1500", "lease_ms = 6000");
    config
}

/// Replaces `from`, which must be there, with `to` in the configuration file `config`.
fn rewrite(config: &std::path::Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains(from), "{from:?} not in {text}");
    std::fs::write(config, text.replace(from, to)).unwrap();
}

/// Whether the lease row held under `holder` has run out (or was released).
fn lease_expired(server: &PgServer, holder: &str) -> bool {
    let expired = format!(
        "SELECT (expires_at <= now())::int::int8 FROM shake_leader WHERE holder = '{holder}'"
    );
    server.admin("shake", &expired) == [1]
}

fn leader_epoch(alloc: &Allocator) -> f64 {
    metrics::read(alloc.metrics, "shake_allocator_leader_epoch")
}

/// Waits until `alloc` leads; returns its epoch.
fn await_leadership(alloc: &Allocator, within: Duration) -> f64 {
    let started = Instant::now();
    loop {
        let epoch = leader_epoch(alloc);
        if epoch > 0.0 {
            return epoch;
        }
        assert!(started.elapsed() < within, "no leadership within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_from_a_killed_leader_and_answers_exactly_once() {
    let (scratch, server, url) = primary("ha");
    let round = round();
    let mut a =
        Allocator::start(&scratch.with_admin_api(scratch.postgres_config("a", &url, &round)));
    let first_epoch = await_leadership(&a, Duration::from_secs(10));
    let b_config = scratch.postgres_config("b", &url, &round);
    let b = Allocator::start(&b_config);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(leader_epoch(&b), 0.0, "one leader at a time");

    // The standby completes the handshake and redirects: NOT_LEADER naming the leader.
    let conn = connect(b.quic, client_config(&scratch.certs(), Some("edge-1"))).await.unwrap();
    match conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, ErrorCode::NotLeader.code().into());
            assert_eq!(std::str::from_utf8(&close.reason).unwrap(), a.quic.to_string());
        }
        other => panic!("expected NOT_LEADER, got {other}"),
    }

    // The control room tops the round up through the leader: the standby follows that command
    // from the log (the awards of the new envelopes name items only the top-up made).
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let headers = [("Authorization", bearer.as_str()), ("Idempotency-Key", "top-up-1")];
    let top_up = format!(
        r#"{{"cash": {{"total_cents": {TOP_UP_CENTS}, "envelopes": {TOP_UP_ENVELOPES}}}}}"#
    );
    let response = shake_ops::http::request_with_body(
        a.admin.unwrap(),
        "POST",
        "/rounds/1/top-up",
        &headers,
        top_up.as_bytes(),
    )
    .unwrap();
    assert_eq!(shake_ops::http::status_of(&response), Some(200), "{response}");

    // The leader answers half, gets the rest, and is killed mid-stream.
    let mut first_answers: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    {
        let mut stream = edge_worker(a.quic, &scratch, 42).await.unwrap();
        for seq in 1..=BATCHES / 2 {
            stream.send(&batch(seq)).await;
            let (answered, _, raw) = stream.next_result().await.unwrap();
            assert_eq!(answered, seq);
            first_answers.insert(seq, raw);
        }
        // An operator checks an edited configuration against the ledger while the show runs
        // (a PostgreSQL ledger is read beside its leader): the top-up replays, and the awards.
        let check = Command::new(bin("shake-allocator"))
            .arg("--check-config")
            .arg(&b_config)
            .arg("--against-ledger")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&check.stdout);
        assert_eq!(
            check.status.code(),
            Some(0),
            "{said}{}",
            String::from_utf8_lossy(&check.stderr)
        );
        assert!(said.contains(" awards, 1 round commands)"), "{said}");
        for seq in BATCHES / 2 + 1..=BATCHES {
            stream.send(&batch(seq)).await;
        }
        let early = tokio::time::timeout(Duration::from_millis(30), async {
            while let Ok((seq, _, raw)) = stream.next_result().await {
                first_answers.insert(seq, raw);
            }
        });
        let _ = early.await;
        // The standby follows the log while it stands by: its pools are warm.
        let started = Instant::now();
        while metrics::read(b.metrics, "shake_allocator_awards_followed") == 0.0 {
            assert!(started.elapsed() < Duration::from_secs(5), "the standby followed nothing");
            std::thread::sleep(Duration::from_millis(50));
        }
        a.process.kill();
    }
    let killed_at = Instant::now();

    // The standby takes over after the lease runs out, with a new epoch.
    let second_epoch = await_leadership(&b, Duration::from_secs(15));
    let failover = killed_at.elapsed();
    assert!(second_epoch > first_epoch);
    assert!(failover < Duration::from_secs(5), "takeover took {failover:?} (lease 1.5 s)");

    let mut stream = edge_worker(b.quic, &scratch, 42).await.unwrap();
    let mut second_answers: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut told: BTreeMap<u64, u64> = BTreeMap::new();
    for seq in 1..=BATCHES {
        stream.send(&batch(seq)).await;
        let (answered, winners, raw) = stream.next_result().await.unwrap();
        assert_eq!(answered, seq);
        for w in winners {
            assert!(told.insert(w.award_id, seq).is_none(), "award {} granted twice", w.award_id);
        }
        second_answers.insert(seq, raw);
    }
    for (seq, raw) in &first_answers {
        assert_eq!(&second_answers[seq], raw, "batch {seq} answered differently after failover");
    }
    assert!(!told.is_empty());

    // Settlement reads the ledger while the new leader serves.
    let export = Command::new(bin("shake-allocator"))
        .args(["export", "--config"])
        .arg(scratch.dir.join("allocator-a.toml"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ledger_ids: BTreeSet<u64> = rows.iter().map(|r| r["award_id"].as_u64().unwrap()).collect();
    assert_eq!(ledger_ids, told.keys().copied().collect(), "ledger and answers disagree");
    let cash: u64 = rows.iter().filter_map(|r| r["cents"].as_u64()).sum();
    let pool = TOTAL_CENTS + TOP_UP_CENTS;
    assert!(cash <= pool, "pool overspent: {cash} > {pool}");
    // 1,000 users for 350 envelopes released at once: the top-up's were drawn too, and every
    // envelope once.
    assert_eq!(rows.len() as u64, ENVELOPES + TOP_UP_ENVELOPES, "every envelope drawn once");
    assert_eq!(cash, pool, "a drained pool pays exactly its cash");
    // No phone acknowledged anything: every award is owed, those the old leader drew included,
    // which the new leader knows from what it followed as a standby.
    let started = Instant::now();
    loop {
        let owed = metrics::read(b.metrics, "shake_allocator_awards_owed");
        if owed == rows.len() as f64 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{owed} owed, {} awards", rows.len());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The README's SQL for settlement, support and the fencing proof runs as written.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let queries: Vec<String> = readme
        .split("```sql")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().to_owned())
        .collect();
    assert!(queries.len() >= 2, "the README shows its SQL");
    let readme_url = url.clone();
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&readme_url, postgres::NoTls).unwrap();
        for query in &queries {
            client
                .batch_execute(query)
                .unwrap_or_else(|e| panic!("README SQL failed: {e}\n{query}"));
        }
        let paid: Vec<postgres::Row> =
            client.query("SELECT count(*) FROM shake_awards", &[]).unwrap();
        paid[0].get::<_, i64>(0)
    })
    .join()
    .map(|rows| assert_eq!(rows as usize, told.len()))
    .unwrap();
    let leadership = metrics::scrape(b.metrics);
    assert_eq!(metric_sum(&leadership, "shake_allocator_leadership_total{outcome=\"won\"}"), 1.0);
    let followed = metric_sum(&leadership, "shake_allocator_awards_followed");
    let tail = metric_sum(&leadership, "shake_allocator_takeover_tail_awards");
    assert!(followed > 0.0, "followed {followed}");
    assert!(
        tail < followed,
        "the takeover read {tail} awards, the standby had followed {followed}"
    );
    drop(b);
    drop(server);
}

/// A leader whose commit finds a newer epoch ends its term as `fenced` (the outcome the README
/// names), answers nothing of the refused group and stands by. The lease here outlasts the
/// test, so its renewal (which would say `lost`) never runs first.
/// A handshake that completes while the leader's term ends is closed with `NOT_LEADER`, so its
/// edge tries its next allocator. Left open (it joined the term's connections after the term
/// had closed them), its streams were ended by an actor that had gone, and its edge, its link
/// up, drew nothing until one of the two restarted (review 22).
/// `allocator-hold-edge-connected` holds each completed handshake 3 s before it joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_completed_as_the_term_ends_is_told_not_leader() {
    const HOLD: &str = "allocator-hold-edge-connected";
    let (scratch, _server, url) = primary("ha-late-handshake");
    let config = scratch.postgres_config("a", &url, &round());
    rewrite(&config, "lease_ms = 1500", "lease_ms = 60000");
    let a = with_failpoint(&config, HOLD);
    await_leadership(&a, Duration::from_secs(10));
    let mut stream = edge_worker(a.quic, &scratch, 42).await.unwrap();
    stream.send(&batch(1)).await;
    assert_eq!(stream.next_result().await.unwrap().0, 1);
    // A second connection, its handshake complete and held.
    let late = tokio::spawn(connect(a.quic, client_config(&scratch.certs(), Some("edge-1"))));
    let marks = failpoints::mark_file(&config);
    let started = Instant::now();
    while std::fs::read_to_string(&marks).unwrap_or_default().lines().count() < 2 {
        assert!(started.elapsed() < Duration::from_secs(5), "the second handshake never held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The term ends meanwhile: fenced, another node having taken the lease.
    take_the_lease_behind_its_back(&url);
    stream.send(&batch(2)).await;
    assert!(stream.next_result().await.is_err(), "the fenced batch was answered");
    let late = late.await.unwrap().unwrap();
    match tokio::time::timeout(Duration::from_secs(8), late.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(close.error_code, ErrorCode::NotLeader.code().into(), "{close:?}");
        }
        other => panic!("the late connection was left open, or closed otherwise: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_commit_ends_the_term_as_fenced() {
    let (scratch, server, url) = primary("ha-fenced");
    let round = round();
    let config = scratch.postgres_config("a", &url, &round);
    rewrite(&config, "lease_ms = 1500", "lease_ms = 60000");
    let a = Allocator::start(&config);
    await_leadership(&a, Duration::from_secs(10));
    let mut stream = edge_worker(a.quic, &scratch, 42).await.unwrap();
    stream.send(&batch(1)).await;
    assert_eq!(stream.next_result().await.unwrap().0, 1);
    metrics::wait_until(a.metrics, "shake_allocator_pool_remaining{", "the leader's pool", |n| {
        n > 0.0
    })
    .await;

    // Another node takes the lease behind this one's back (as a standby would once the lease
    // ran out while this one was frozen).
    take_the_lease_behind_its_back(&url);
    stream.send(&batch(2)).await;
    let fenced = stream.next_result().await;
    assert!(fenced.is_err(), "the fenced batch was answered: {fenced:?}");
    // Ended by the fenced term, not left open unanswered.
    assert!(!fenced.is_err_and(|e| e.starts_with("timeout")), "the fenced term kept its streams");
    metrics::wait_until(
        a.metrics,
        "shake_allocator_leadership_total{outcome=\"fenced\"}",
        "1",
        |n| n == 1.0,
    )
    .await;
    metrics::wait_until(a.metrics, "shake_allocator_leader_epoch", "0 (standing by)", |e| e == 0.0)
        .await;
    let leadership = metrics::scrape(a.metrics);
    assert_eq!(
        metric_sum(&leadership, "shake_allocator_leadership_total{outcome=\"failed\"}"),
        0.0
    );
    // Standing by, it exports no pools: frozen at the term's last values, they would add to
    // the next leader's in every sum over allocators.
    for series in ["shake_allocator_pool_remaining{", "shake_allocator_round_open{"] {
        assert!(!leadership.contains(series), "{series} after the term: {leadership}");
    }
    let stored = std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client.query_one("SELECT count(*) FROM shake_batches", &[]).unwrap().get::<_, i64>(0)
    })
    .join()
    .unwrap();
    assert_eq!(stored, 1, "the fenced group wrote nothing");
    drop(a);
    drop(server);
}

/// A new leader's read of the log that outlasts its lease (`SHAKE_FAILPOINT` makes it 4 s; the
/// lease is 1.5 s) keeps the lease: it is renewed from the moment it is won, so the standby
/// never takes it from under the read (and then has to read it all again itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_read_longer_than_the_lease_keeps_the_lease() {
    let (scratch, server, url) = primary("ha-slow-read");
    let round = round();
    let config = scratch.postgres_config("a", &url, &round);
    let a = with_failpoint(&config, "allocator-slow-takeover-read");
    let won = "shake_allocator_leadership_total{outcome=\"won\"}";
    metrics::wait_until(a.metrics, won, "1 (a won and reads)", |n| n == 1.0).await;
    let b = Allocator::start(&scratch.postgres_config("b", &url, &round));
    assert_eq!(await_leadership(&a, Duration::from_secs(15)), 1.0, "a leads under its first epoch");
    // Past a lease more: still a's.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    assert_eq!(leader_epoch(&a), 1.0, "a lost its lease");
    assert_eq!(leader_epoch(&b), 0.0, "b took over during a's read");
    assert_eq!(metrics::read(b.metrics, won), 0.0);
    drop(b);
    drop(a);
    drop(server);
}

/// A stop during the takeover read (one of millions of awards takes seconds; the failpoint
/// holds the read 4 s) ends the term there: exit 0 at once, the lease released. Before, the
/// read ran to its end whatever came, and a SIGTERM then drained a term that had just begun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_the_takeover_read_ends_it_there() {
    let (scratch, server, url) = primary("ha-stop-in-read");
    let config = scratch.postgres_config("a", &url, &round());
    let mut a = with_failpoint(&config, "allocator-slow-takeover-read");
    let won = "shake_allocator_leadership_total{outcome=\"won\"}";
    metrics::wait_until(a.metrics, won, "1 (a won and reads)", |n| n == 1.0).await;
    let signalled = Instant::now();
    a.process.signal("TERM");
    let status = a.process.wait_within(Duration::from_secs(10));
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(2), "the takeover read ran on: {took:?}");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(lease_expired(&server, "a"), "the lease was kept");
    drop(server);
}

/// A node that cannot read the ledger at its term's start (`SHAKE_FAILPOINT`: every time)
/// gives the lease up and waits a lease before it looks again, so a standby that can read it
/// takes over. Before, the lease still named the failed node, which took it again at its next
/// look (a lease naming its own node is its own), at once, for ever: the standby never got in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_start_its_term_lets_a_standby_lead() {
    let (scratch, server, url) = primary("ha-read-fails");
    let round = round();
    let mut a = with_failpoint(
        &scratch.postgres_config("a", &url, &round),
        "allocator-takeover-read-fails",
    );
    let failed = "shake_allocator_leadership_total{outcome=\"failed\"}";
    metrics::wait_until(a.metrics, failed, "1 (a won and could not read)", |n| n >= 1.0).await;
    let b = Allocator::start(&scratch.postgres_config("b", &url, &round));
    await_leadership(&b, Duration::from_secs(10));
    assert_eq!(leader_epoch(&a), 0.0, "a leads");
    assert!(a.process.try_wait().is_none(), "a stopped: a failed read is not the end");
    drop(b);
    drop(a);
    drop(server);
}

/// A node whose configuration cannot replay the ledger (here a round that an operator added
/// with `round add` and then also wrote into its file, with another seed) stops at its term's
/// start, the lease released, and the allocator that can replay it leads at once. Before, it
/// stood by with the lease still its own and took it again at once, failing the same way for
/// ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_rounds_do_not_replay_the_ledger_stops_and_another_leads() {
    let (scratch, server, url) = primary("ha-no-replay");
    let good = scratch.with_admin_api(scratch.postgres_config("b", &url, &round()));
    let mut b = Allocator::start(&good);
    await_leadership(&b, Duration::from_secs(10));
    let pasted = add_round_9_pasted_with_another_seed(&b);
    assert!(b.process.terminate().success(), "b's clean stop");

    let mut command = Allocator::command(&scratch.postgres_config("a", &url, &pasted));
    command.env("RUST_LOG", "error").stderr(std::process::Stdio::inherit());
    let mut a = Allocator::spawn(command).unwrap();
    let status = a.process.wait_within(Duration::from_secs(20));
    // 65: no restart of this configuration can mend it (the unit does not restart on it).
    assert_eq!(status.code(), Some(65), "{status:?}");
    let b = Allocator::start(&good);
    // At its first look: a released the lease (a lease later, had it only expired).
    await_leadership(&b, Duration::from_millis(1_000));
    drop(b);
    drop(server);
}

/// A standby whose rounds do not replay the log (a command the leader logged refuses on them)
/// follows the log once more from its start, in case what it followed was not the ledger, then
/// stops with 65 while the leader leads on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_whose_rounds_do_not_replay_the_log_stops_after_one_refollow() {
    let (scratch, server, url) = primary("ha-standby-no-replay");
    let b = Allocator::start(&scratch.with_admin_api(scratch.postgres_config("b", &url, &round())));
    await_leadership(&b, Duration::from_secs(10));
    let pasted = add_round_9_pasted_with_another_seed(&b);
    let log = scratch.dir.join("allocator-a.log");
    let mut command = Allocator::command(&scratch.postgres_config("a", &url, &pasted));
    command.env("RUST_LOG", "warn").stderr(std::fs::File::create(&log).unwrap());
    let mut a = Allocator::spawn(command).unwrap();
    let status = a.process.wait_within(Duration::from_secs(20));
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(65), "{status:?}\n{said}");
    let refollows =
        said.matches("what it followed does not replay; following the log again").count();
    assert_eq!(refollows, 1, "{said}");
    assert!(leader_epoch(&b) > 0.0, "the leader stopped leading");
    drop(b);
    drop(server);
}

/// Adds round 9 through `leader`'s admin API, to open in an hour; returns the test's rounds
/// with a round 9 of their own pasted in (another seed): a configuration on which that
/// command does not replay.
fn add_round_9_pasted_with_another_seed(leader: &Allocator) -> String {
    let starts_at_ms = now_ms() + 3_600_000;
    let added = format!(
        r#"{{"id": 9, "starts_at_ms": {starts_at_ms}, "duration_s": 60, "seed": 1, "cash": {{"total_cents": 100, "envelopes": 10}}}}"#
    );
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let headers = [("Authorization", bearer.as_str()), ("Idempotency-Key", "add-9")];
    let response = shake_ops::http::request_with_body(
        leader.admin.unwrap(),
        "POST",
        "/rounds",
        &headers,
        added.as_bytes(),
    )
    .unwrap();
    assert_eq!(shake_ops::http::status_of(&response), Some(200), "{response}");
    format!(
        "{}[[rounds]]\nid = 9\nstarts_at_ms = {starts_at_ms}\nduration_s = 60\nseed = 2\n\
         [rounds.cash]\ntotal_cents = 100\nenvelopes = 10\n",
        round()
    )
}

/// Two processes under one `[postgres] node` (a rolling update that starts the new before it
/// stops the old, a configuration cloned to another host): the second waits for the lease
/// instead of taking it as its own. Before, each took it from the other at its next look, for
/// as long as both ran, and every flip closed the edges' connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_under_one_node_name_does_not_take_the_lease() {
    let (scratch, server, url) = primary("ha-same-node");
    let config = scratch.postgres_config("same", &url, &round());
    let first = Allocator::start(&config);
    let epoch = await_leadership(&first, Duration::from_secs(10));
    let second = Allocator::start(&config);
    // Longer than a lease (1.5 s) and many standby polls (100 ms).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(leader_epoch(&first), epoch, "the first lost its lease");
    assert_eq!(leader_epoch(&second), 0.0, "the second leads");
    // Once the first stops, the second takes over as any standby would.
    drop(first);
    await_leadership(&second, Duration::from_secs(10));
    drop(second);
    drop(server);
}

/// A term whose commit lanes cannot be opened (`SHAKE_FAILPOINT` refuses every second session)
/// ends as a failed term, and the allocator stands by and tries again: the process does not
/// stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_that_cannot_be_opened_end_the_term_not_the_process() {
    let (scratch, server, url) = primary("ha-lanes-refused");
    let round = round();
    let config = scratch.postgres_config("a", &url, &round);
    let mut a = with_failpoint(&config, "allocator-lane-open-fails");
    let failed = "shake_allocator_leadership_total{outcome=\"failed\"}";
    metrics::wait_until(a.metrics, failed, "at least 2 (failed, stood by, failed again)", |n| {
        n >= 2.0
    })
    .await;
    assert!(a.process.try_wait().is_none(), "the allocator stopped");
    drop(a);
    drop(server);
}

/// A leader frozen inside a group commit's `COPY` (a paused process, a stalled host) is a
/// session the server sees busy waiting for rows, not idle: neither of its timeouts ends it,
/// and its transaction holds the lease row's key-share lock, which the takeover waits for. The
/// standby must end such a session once the lease has run out, not wait for the leader to wake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_inside_a_copy_does_not_hold_the_takeover_up() {
    let (scratch, server, url) = primary("ha-frozen-copy");
    let round = round();
    let mut a =
        with_failpoint(&scratch.postgres_config("a", &url, &round), "allocator-stall-in-copy");
    let first = await_leadership(&a, Duration::from_secs(10));
    let b = Allocator::start(&scratch.postgres_config("b", &url, &round));
    let mut stream = edge_worker(a.quic, &scratch, 42).await.unwrap();
    stream.send(&batch(1)).await;
    // The whole process freezes once the batch's group is inside its COPY (the failpoint holds
    // it there for 30 s): frozen before it, no lock would hold the takeover up at all.
    until_a_copy_is_under_way(&url, Duration::from_secs(10));
    a.process.signal("STOP");
    let frozen_at = Instant::now();
    let second = await_leadership(&b, Duration::from_secs(20));
    let took = frozen_at.elapsed();
    // Still frozen, the leader cannot have ended its COPY itself: the standby did.
    assert_eq!(copies_under_way(&url), 0, "the frozen leader's COPY still runs");
    a.process.signal("CONT");
    a.process.kill();
    assert!(second > first);
    assert!(took < Duration::from_secs(8), "the takeover waited {took:?} for the frozen leader");
    drop(stream);
    drop(b);
    drop(server);
}

/// How many sessions of the server at `url` are inside a `COPY` now.
fn copies_under_way(url: &str) -> i64 {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let row = client.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
             AND query LIKE 'COPY%' AND pid <> pg_backend_pid()",
            &[],
        );
        row.unwrap().get(0)
    })
    .join()
    .unwrap()
}

/// Waits, `within` at most, until a session of the server at `url` is inside a `COPY`.
fn until_a_copy_is_under_way(url: &str, within: Duration) {
    let started = Instant::now();
    while copies_under_way(url) == 0 {
        assert!(started.elapsed() < within, "no COPY under way within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A standby that finds the log pages ahead reads page after page at once, not a page a poll
/// (which would cap its following below what a leader commits): started beside 300 awards
/// with pages of 20 and a poll of 2 s, it has followed them all well inside one poll of its
/// first page (a page a poll: 28 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_pages_behind_reads_them_at_once() {
    let (scratch, _server, url) = primary("ha-pages");
    let round = round();
    let a = Allocator::start(&scratch.postgres_config("a", &url, &round));
    await_leadership(&a, Duration::from_secs(10));
    let mut awards = 0;
    {
        let mut stream = edge_worker(a.quic, &scratch, 42).await.unwrap();
        for seq in 1..=BATCHES {
            stream.send(&batch(seq)).await;
            let (answered, winners, _) = stream.next_result().await.unwrap();
            assert_eq!(answered, seq);
            awards += winners.len();
        }
    }
    assert_eq!(awards as u64, ENVELOPES, "every envelope drawn");
    let config = scratch.postgres_config("b", &url, &round);
    let paged = "lease_ms = 5000\nstandby_poll_ms = 2000\nfollow_page_awards = 20\n";
    rewrite(&config, "lease_ms = 1500\nstandby_poll_ms = 100\n", paged);
    let b = Allocator::start(&config);
    let followed = || metrics::read(b.metrics, "shake_allocator_awards_followed");
    let started = Instant::now();
    while followed() == 0.0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the standby followed nothing");
        std::thread::sleep(Duration::from_millis(10));
    }
    let first_page = Instant::now();
    while followed() < awards as f64 {
        let waited = first_page.elapsed();
        assert!(
            waited < Duration::from_millis(1_500),
            "{} of {awards} awards followed {waited:?} after the first page (poll 2 s)",
            followed()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(followed(), awards as f64);
    assert_eq!(leader_epoch(&b), 0.0, "the standby still stands by");
    drop(a);
}

/// A standby that followed a commit the log then lost (a commit visible on its primary once its
/// wait for the synchronous standbys was cancelled, the primary lost before any had it; here, the log
/// as the standby promoted in its place has it: that commit's rows deleted once its wait
/// ended) follows the log again from its start at its next look. It then takes over with only
/// the log's tail to read, not the whole ledger, and draws the lost batch anew for the edge
/// that resends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_whose_followed_commit_is_lost_follows_the_log_again() {
    let (scratch, server, url) = primary("ha-lost-commit");
    // A lease of 10 s: the standby must not take over before the log has lost the commit.
    let a_config = long_lease(&scratch, "a", &url);
    rewrite(&a_config, "lease_ms = 6000", "lease_ms = 10000");
    let mut a = Allocator::start(&a_config);
    await_leadership(&a, Duration::from_secs(10));
    let b = Allocator::start(&long_lease(&scratch, "b", &url));
    let followed = || metrics::read(b.metrics, "shake_allocator_awards_followed");
    let restarts = |cause: &str| {
        let series = format!("shake_allocator_follow_restarts_total{{cause=\"{cause}\"}}");
        metrics::read(b.metrics, &series)
    };
    let until = |what: &str, done: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(5), "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut answers = BTreeMap::new();
    let mut stream = edge_worker(a.quic, &scratch, 42).await.unwrap();
    let mut kept = 0;
    for seq in 1..=2 {
        stream.send(&batch(seq)).await;
        let (answered, winners, raw) = stream.next_result().await.unwrap();
        assert_eq!(answered, seq);
        kept += winners.len();
        answers.insert(seq, raw);
    }
    assert!(kept > 0, "no award drawn");
    // Batch 3's commit waits for a standby that never comes, and is never answered: its leader
    // is killed, then the wait cancelled, which leaves it committed on the primary alone.
    server.hold_commits("shake");
    stream.send(&batch(3)).await;
    let group_waits = || {
        server.admin(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep' \
             AND query NOT LIKE '%shake_leader%'",
        )[0] > 0
    };
    until("batch 3's commit never waited", &group_waits);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.next_result()).await.is_err(),
        "batch 3 was answered before it was replicated"
    );
    a.process.kill();
    drop(stream);
    assert!(server.cancel_waiting_commits() > 0);
    let lost = server.admin("shake", "SELECT count(*) FROM shake_awards WHERE batch_seq = 3")[0];
    assert!(lost > 0, "batch 3 drew nothing");
    let seen = (kept as i64 + lost) as f64;
    until("the standby did not follow batch 3", &|| followed() == seen);
    server.release_commits();
    // The primary is lost with batch 3's commit and everything committed after it.
    let gone = server.admin(
        "shake",
        "WITH lost AS (SELECT pg_xact_commit_timestamp(xmin) AS at FROM shake_batches \
         WHERE seq = 3), \
         awards AS (DELETE FROM shake_awards \
           WHERE pg_xact_commit_timestamp(xmin) >= (SELECT at FROM lost) RETURNING 1), \
         batches AS (DELETE FROM shake_batches \
           WHERE pg_xact_commit_timestamp(xmin) >= (SELECT at FROM lost) RETURNING 1), \
         marks AS (DELETE FROM shake_delivery_marks \
           WHERE pg_xact_commit_timestamp(xmin) >= (SELECT at FROM lost) RETURNING 1) \
         DELETE FROM shake_commits \
           WHERE pg_xact_commit_timestamp(xmin) >= (SELECT at FROM lost) RETURNING 0::int8",
    );
    assert!(!gone.is_empty(), "no commit deleted");
    let left = server.admin("shake", "SELECT count(*) FROM shake_awards")[0];
    assert_eq!(left, kept as i64, "only batch 3's awards were lost");
    until("the standby did not follow the log again", &|| restarts("commit_lost") == 1.0);
    until("the warm state still holds the lost awards", &|| followed() == kept as f64);
    assert_eq!(restarts("did_not_replay"), 0.0);
    assert_eq!(leader_epoch(&b), 0.0, "took over before the lease ran out (10 s)");

    await_leadership(&b, Duration::from_secs(15));
    let tail = metrics::read(b.metrics, "shake_allocator_takeover_tail_awards");
    assert_eq!(tail, 0.0, "the takeover read {tail} awards: the whole ledger, not the tail");
    let mut stream = edge_worker(b.quic, &scratch, 42).await.unwrap();
    let mut drawn = kept;
    for seq in 1..=3 {
        stream.send(&batch(seq)).await;
        let (answered, winners, raw) = stream.next_result().await.unwrap();
        assert_eq!(answered, seq);
        match answers.get(&seq) {
            Some(before) => assert_eq!(&raw, before, "batch {seq} answered differently"),
            None => drawn += winners.len(),
        }
    }
    assert!(drawn > kept, "the lost batch drew nothing again");
    let paid = server.admin("shake", "SELECT count(*) FROM shake_awards")[0];
    assert_eq!(paid, drawn as i64, "the ledger and the answers disagree");
    drop(b);
    drop(server);
}

/// A takeover whose wait for the synchronous standbys was cancelled is committed on the primary
/// alone: were that primary lost, the standby promoted in its place would not know it, and
/// another allocator could win the same epoch there. Such a takeover is not taken: the
/// allocator keeps standing by (trying again, under the next epoch) until one is replicated.
/// The server speaks German: its warning is known by its code, not its English text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_committed_on_the_primary_alone_is_not_taken() {
    let scratch = Scratch::new("ha-unreplicated");
    let server = PgServer::primary_in_german(&scratch.dir.join("pg"));
    let url = server.database("shake");
    // The schema first (its migration commits), then every commit waits for a standby that
    // never connects.
    let migrate = url.clone();
    std::thread::spawn(move || drop(shake_allocator::ledger::PostgresLedger::open(&migrate)))
        .join()
        .unwrap();
    server.hold_commits("shake");
    let a = Allocator::start(&scratch.postgres_config("a", &url, &round()));
    let mut cancelled = 0;
    let started = Instant::now();
    while cancelled < 3 {
        assert!(started.elapsed() < Duration::from_secs(20), "{cancelled} takeovers cancelled");
        if server.waiting_commits() > 0 {
            cancelled += server.cancel_waiting_commits();
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(leader_epoch(&a), 0.0, "led on a takeover committed on the primary alone");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(leader_epoch(&a), 0.0, "led on a takeover committed on the primary alone");
    // Each cancelled takeover left the row naming this node: the next one bumped the epoch.
    let epoch = server.admin("shake", "SELECT epoch FROM shake_leader WHERE id = 1")[0];
    assert!(epoch >= 3, "epoch {epoch} after {cancelled} cancelled takeovers");
    // Replication back (no standby required): the waiting takeover completes, and it leads.
    server.release_commits();
    let led = await_leadership(&a, Duration::from_secs(10));
    assert!(led >= epoch as f64, "led under epoch {led}, the row said {epoch}");
}

/// SIGTERM drains a leader too: a batch being committed when the signal comes is answered
/// before the term's connections close (every group is made slow to commit, so the batch is
/// in flight). The leader's answers were queued, then dropped with the connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_drained_answers_the_batch_being_committed() {
    let (scratch, server, url) = primary("ha-drain");
    let config = scratch.postgres_config("a", &url, &round());
    let mut a = with_failpoint(&config, "allocator-slow-commit");
    await_leadership(&a, Duration::from_secs(20));
    assert_a_drain_answers_the_batch_in_flight(&mut a, &scratch, batch).await;
    drop(server);
}

/// A leader that fails while serving (here its actor panics) releases its lease on the way
/// out, so that a standby takes over at its next look. Before, only a clean stop and a failed
/// takeover read released it: the lease ran on, and the unit's restart a second later took it
/// back as its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_panics_while_serving_releases_its_lease() {
    let (scratch, server, url) = primary("ha-panic");
    let config = scratch.postgres_config("a", &url, &round());
    let mut a = with_failpoint(&config, "allocator-actor-panic");
    let status = a.process.wait_within(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{status:?}");
    // The lease (1.5 s, renewed every 0.5 s) would run on for a second yet.
    assert!(lease_expired(&server, "a"), "the lease still runs");
    drop(server);
}

/// A node restarted within its former process's lease (systemd restarts a crashed allocator
/// a second later; the lease runs three) waits for that lease to run out like any standby.
/// Before, it took the lease back at once as its own: cold, it read the whole ledger while a
/// warm standby waited, and a fault that came back with it kept every standby out for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_within_its_lease_waits_for_it_to_run_out() {
    let (scratch, server, url) = primary("ha-restart");
    let config = scratch.postgres_config("a", &url, &round());
    // The same advertised address in both lives, as a unit's fixed port gives.
    rewrite(&config, "lease_ms = 1500", "lease_ms = 6000\nadvertise = \"127.0.0.1:7999\"");
    let mut a = Allocator::start(&config);
    let epoch = await_leadership(&a, Duration::from_secs(10));
    a.process.kill();
    let killed = Instant::now();
    let again = Allocator::start(&config);
    // Well inside the 6 s lease that the killed process left.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(killed.elapsed())).await;
    assert_eq!(leader_epoch(&again), 0.0, "took its former process's lease back");
    // Once that lease has run out it leads, as any standby would.
    let next = await_leadership(&again, Duration::from_secs(10));
    assert!(next > epoch, "epoch {next} after {epoch}");
    drop(again);
    drop(server);
}

/// A drain whose last commit fails (its wait for the synchronous standby cancelled: committed
/// on the primary alone, not durable by the ledger's standard) ends the process with a
/// failure, as on fjall. It exited 0, which the scripts and an operator read as "every answer
/// went out".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_whose_last_commit_fails_exits_with_a_failure() {
    let (scratch, server, url) = primary("ha-drain-fails");
    let mut a = Allocator::start(&scratch.postgres_config("a", &url, &round()));
    await_leadership(&a, Duration::from_secs(20));
    let mut stream = edge_worker(a.quic, &scratch, 7).await.unwrap();
    let first = stream.recv().await.map(|(frame, _)| frame);
    assert!(matches!(first, Ok(AllocatorFrame::RoundState { .. })), "{first:?}");
    server.hold_commits("shake");
    stream.send(&batch(1)).await;
    let started = Instant::now();
    while server.waiting_commits() == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "no commit waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.process.signal("TERM");
    until_draining(a.metrics).await;
    server.cancel_waiting_commits();
    let status = a.process.wait_within(Duration::from_secs(20));
    assert!(!status.success(), "{status:?}");
    server.release_commits();
    drop(server);
}

/// Support's reads have a database session of their own; one the server closes (an idle
/// timeout, a pooler, a DBA's `pg_terminate_backend`) is opened again at the next read. It was
/// kept closed, and every `GET /awards` answered 503 until the term ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supports_session_closed_by_the_server_is_opened_again() {
    let (scratch, server, url) = primary("ha-reader");
    let a = Allocator::start(&scratch.with_admin_api(scratch.postgres_config("a", &url, &round())));
    await_leadership(&a, Duration::from_secs(20));
    let admin = a.admin.unwrap();
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let read = || {
        let response = shake_ops::http::request_with(
            admin,
            "GET",
            "/awards?user=5",
            &[("Authorization", bearer.as_str())],
        )
        .unwrap();
        shake_ops::http::status_of(&response)
    };
    assert_eq!(read(), Some(200));
    // The session whose last statement read a user's awards is the reader's.
    let ended = server.admin(
        "shake",
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE query LIKE '%shake_awards_with_delivery WHERE user_id%' \
         AND pid <> pg_backend_pid()",
    );
    assert_eq!(ended, vec![1]);
    assert_eq!(read(), Some(200), "a read after the server closed the session");
    assert!(leader_epoch(&a) > 0.0, "the term ended");
    drop(a);
    drop(server);
}

/// An allocator stopped while its look is winning the lease (a failpoint holds the look a
/// second after it won) releases what it won. The look ran on after the signal, and the lease
/// it took had nobody to serve or release it: every standby waited a lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_while_its_look_wins_releases_the_lease() {
    let (scratch, server, url) = primary("ha-stop-look");
    let mut a =
        with_failpoint(&scratch.postgres_config("a", &url, &round()), "allocator-slow-look");
    let started = Instant::now();
    while server.admin("shake", "SELECT count(*) FROM shake_leader WHERE holder = 'a'") != [1] {
        assert!(started.elapsed() < Duration::from_secs(20), "a never took the lease");
        std::thread::sleep(Duration::from_millis(20));
    }
    a.process.signal("INT");
    let status = a.process.wait_within(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(lease_expired(&server, "a"), "the lease it won runs on");
    drop(server);
}

/// A leader stopped cleanly (SIGTERM: a rolling upgrade) releases its lease, and the standby
/// leads at its next look, not a lease later (the README's promise; only the SQL was tested).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_hands_over_at_the_next_look() {
    let (scratch, server, url) = primary("ha-handover");
    let mut a = Allocator::start(&long_lease(&scratch, "a", &url));
    let epoch = await_leadership(&a, Duration::from_secs(20));
    let b = Allocator::start(&long_lease(&scratch, "b", &url));
    assert!(a.process.terminate().success(), "a's clean stop");
    // Within a few standby polls (100 ms), where the lease had 4-6 s to run.
    let next = await_leadership(&b, Duration::from_secs(2));
    assert!(next > epoch, "epoch {next} after {epoch}");
    drop(b);
    drop(server);
}

/// An edge reaches the next leader soon after a clean stop of the one it used. The standby it
/// turns to names the leader from its last look (a poll of 800 ms here), so it may still name
/// the stopped one: the edge asks the standby again rather than dial the allocator that left,
/// which had cost a handshake's 3 s wait (answers only local meanwhile) in a rolling restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_reaches_the_next_leader_soon_after_a_clean_stop() {
    let (scratch, server, url) = primary("ha-edge-handover");
    let slow_poll = |node: &str| {
        let config = long_lease(&scratch, node, &url);
        rewrite(&config, "standby_poll_ms = 100", "standby_poll_ms = 800");
        config
    };
    let mut a = Allocator::start(&slow_poll("a"));
    await_leadership(&a, Duration::from_secs(20));
    let b = Allocator::start(&slow_poll("b"));
    let edge_config = scratch.edge_config(a.quic, "");
    rewrite(
        &edge_config,
        &format!("addr = \"{}\"", a.quic),
        &format!("addr = [\"{}\", \"{}\"]", a.quic, b.quic),
    );
    let edge = shake_testkit::servers::Edge::start_quiet(&edge_config);
    let up = "shake_edge_allocator_up";
    metrics::wait_until(edge.metrics, up, "1 (the edge's link to a)", |n| n == 1.0).await;
    assert!(a.process.terminate().success(), "a's clean stop");
    let stopped = Instant::now();
    let reached = loop {
        if leader_epoch(&b) > 0.0 && metrics::read(edge.metrics, up) == 1.0 {
            break stopped.elapsed();
        }
        assert!(stopped.elapsed() < Duration::from_secs(15), "the edge never reached b");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(reached < Duration::from_millis(2_500), "the edge reached b after {reached:?}");
    drop(edge);
    drop(b);
    drop(server);
}

/// A standby stopped while it looks at a lease another holds (a failpoint holds each look a
/// second) stops cleanly. The stop that waits for the look once dropped the look's blocking
/// database client on the async runtime, which panics: exit 1, no close, for the commonest
/// stop of a standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_stopped_while_it_looks_stops_cleanly() {
    let (scratch, server, url) = primary("ha-stop-standby");
    let a = Allocator::start(&scratch.postgres_config("a", &url, &round()));
    await_leadership(&a, Duration::from_secs(20));
    let config = scratch.postgres_config("b", &url, &round());
    let mut b = with_failpoint(&config, "allocator-slow-look");
    // Stopped within a look (each held a second).
    failpoints::until_held(&config, "allocator-slow-look", Duration::from_secs(5)).await;
    b.process.signal("INT");
    let status = b.process.wait_within(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    drop(a);
    drop(server);
}
