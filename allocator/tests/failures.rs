//! A panic in the allocator's actor stops the process with a non-zero exit (before the fix the
//! task's panic was mapped to `Ok(())` and the allocator exited 0).
//! `SHAKE_FAILPOINT=allocator-actor-panic` makes the actor panic at its first tick.
//! A name that is no fault is refused at start (exit 64).

use std::io::Read;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use shake_proto::{AllocatorFrame, Batch, BatchEntry};
use shake_testkit::edge_link::edge_worker;
use shake_testkit::processes::{self, exit_within};
use shake_testkit::scratch::{ONE_ENVELOPE, Scratch};
use shake_testkit::servers::Allocator;
use shake_testkit::{metrics, now_ms};

const TEN_S: Duration = Duration::from_secs(10);

#[test]
fn a_panicking_actor_stops_the_allocator_with_a_failure_exit() {
    let scratch = Scratch::new("actor-panic");
    let config = scratch.config(ONE_ENVELOPE);
    let mut child = with_failpoint(&config, "allocator-actor-panic", Stdio::null(), Stdio::null());
    let status = exit_within(&mut child, TEN_S, "the allocator whose actor panicked");
    assert_eq!(status.code(), Some(1), "{status:?}");
}

/// A signal during a long start (a fjall ledger of millions of awards reads and replays for
/// seconds; the failpoint `allocator-slow-start` holds the start 10 s) ends the process there,
/// exit 0 and no ready line: nothing was served, so a drain has nothing to answer. Before, the
/// signal waited out the start (a SIGINT too), and a SIGTERM then drained a process that had
/// only just begun.
#[test]
fn a_signal_during_the_start_ends_it_there() {
    for signal in ["TERM", "INT"] {
        let scratch = Scratch::new("signal-while-starting");
        let config = scratch.config(ONE_ENVELOPE);
        let mut child =
            with_failpoint(&config, "allocator-slow-start", Stdio::piped(), Stdio::null());
        // Its handlers in place (a signal before them takes the default action, the end).
        processes::wait_for_handlers(child.id(), &[2, 15]);
        std::thread::sleep(Duration::from_millis(200));
        let signalled = Instant::now();
        processes::signal(child.id(), signal);
        let mut stdout = child.stdout.take().unwrap();
        let status = exit_within(&mut child, TEN_S, "the allocator signalled while starting");
        let took = signalled.elapsed();
        assert!(took < Duration::from_secs(3), "SIG{signal}: the start ran on {took:?}");
        assert_eq!(status.code(), Some(0), "SIG{signal}: {status:?}");
        let mut said = String::new();
        stdout.read_to_string(&mut said).unwrap();
        assert!(!said.contains(" ready "), "SIG{signal}: {said}");
    }
}

/// An endpoint that stops while the allocator serves (its driver ends on a socket error; the
/// failpoint closes it a second in) ends the process with a failure, so that systemd restarts
/// it. Before, the accept loop ended quietly and the allocator ran on, reachable by no edge.
#[test]
fn an_endpoint_lost_while_serving_ends_the_allocator_with_a_failure() {
    let scratch = Scratch::new("endpoint-lost");
    let config = scratch.config(ONE_ENVELOPE);
    let (status, stderr) = exit_with_failpoint(&config, "allocator-endpoint-lost");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("QUIC endpoint stopped"), "{stderr}");
}

/// The allocator serving `config` with the fault `failpoint` switched on, not waited for.
fn with_failpoint(config: &Path, failpoint: &str, stdout: Stdio, stderr: Stdio) -> Child {
    let mut command = Allocator::command(config);
    command.env("SHAKE_FAILPOINT", failpoint).stdout(stdout).stderr(stderr);
    command.spawn().unwrap()
}

/// The exit status and the error output of the allocator serving `config` with `failpoint`
/// switched on, which must end within ten seconds.
fn exit_with_failpoint(config: &Path, failpoint: &str) -> (std::process::ExitStatus, String) {
    let mut child = with_failpoint(config, failpoint, Stdio::null(), Stdio::piped());
    let mut stderr_pipe = child.stderr.take().unwrap();
    let status = exit_within(&mut child, TEN_S, &format!("the allocator with {failpoint}"));
    let mut stderr = String::new();
    stderr_pipe.read_to_string(&mut stderr).unwrap();
    (status, stderr)
}

/// A misspelt fault would inject nothing and let its test pass without the fault: the binary
/// refuses it as a usage error, naming it.
#[test]
fn a_misspelt_failpoint_is_refused_at_start() {
    let scratch = Scratch::new("failpoint-misspelt");
    let config = scratch.config(ONE_ENVELOPE);
    let (status, stderr) = exit_with_failpoint(&config, "allocator-actor-panik");
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("no such fault: allocator-actor-panik"), "{stderr}");
}

/// A group commit that does not return (`allocator-commit-hangs`: the first takes 8 s) shows
/// as the age of the oldest commit in flight, and after 5 s the allocator reads not ready;
/// both clear once it returns, and the batch behind it is answered. Nothing had shown it: the
/// commit histogram counts a commit once it returns, and `/ready` looked only for a failed
/// ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_does_not_return_shows_its_age_and_the_allocator_is_not_ready() {
    let scratch = Scratch::new("commit-hangs");
    let config = scratch
        .config("release = \"immediate\"\n[rounds.cash]\ntotal_cents = 100\nenvelopes = 10\n");
    let mut command = Allocator::command(&config);
    command
        .env("SHAKE_FAILPOINT", "allocator-commit-hangs")
        .env("RUST_LOG", "error")
        .stderr(Stdio::inherit());
    let alloc = Allocator::spawn(command).unwrap();
    let mut stream = edge_worker(alloc.quic, &scratch, 7).await.unwrap();
    let first = stream.recv().await.map(|(frame, _)| frame);
    assert!(matches!(first, Ok(AllocatorFrame::RoundState { .. })), "{first:?}");
    let entries: Vec<BatchEntry> =
        (0..5).map(|i| BatchEntry { user_id: 100 + i, offset_us: i as u32 }).collect();
    stream.send(&AllocatorFrame::Batch(Batch::new(1, 1, now_ms(), &entries))).await;
    let oldest = "shake_allocator_commit_oldest_seconds";
    let started = Instant::now();
    while metrics::read(alloc.metrics, oldest) < 5.0 {
        assert!(started.elapsed() < Duration::from_secs(7), "{oldest} never reached 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = shake_ops::http::get(alloc.metrics, "/ready").unwrap();
    assert_eq!(shake_ops::http::status_of(&ready), Some(503), "{ready}");
    assert!(ready.contains("a ledger commit has not returned"), "{ready}");
    let answer = stream.next_result().await;
    assert!(matches!(answer, Ok((1, _, _))), "{answer:?}");
    assert!(metrics::read(alloc.metrics, oldest) < 1.0, "{oldest} after the commit returned");
    let ready = shake_ops::http::get(alloc.metrics, "/ready").unwrap();
    assert_eq!(shake_ops::http::status_of(&ready), Some(200), "{ready}");
}
