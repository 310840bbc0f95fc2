//! A worker that panics stops the whole edge with a non-zero exit (before the fix the panic
//! was swallowed: the process exited 0 at its next signal, and meanwhile the dead worker's
//! SO_REUSEPORT socket was gone with its phones). `SHAKE_FAILPOINT=edge-worker-panic` makes a
//! worker panic a moment after it starts; `edge-link-stream-panic` makes a worker's stream to
//! the allocator panic once it is up.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use shake_testkit::world::{World, WorldSettings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_worker_stops_the_edge_with_a_failure_exit() {
    // The variable goes to the edge process only.
    let mut world = World::start_with_env(
        WorldSettings::default(),
        &[("SHAKE_FAILPOINT", "edge-worker-panic")],
    )
    .await;
    let status = exit_within_10_s(&mut world.edge.process).await;
    assert_eq!(status.code(), Some(1), "{status:?}");
}

/// A worker's allocator stream is a task on the allocator link's thread: its panic ended that
/// task alone, and the worker's shakes never reached the allocator again while the edge
/// looked healthy. The link now ends (a failure) and stops the edge, with exit status 1:
/// before, the end that stopped the edge was taken from the supervisor's reports, and with
/// every other thread ending cleanly at the stop, the exit was 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_allocator_stream_stops_the_edge_with_a_failure_exit() {
    use shake_testkit::scratch::Scratch;
    use shake_testkit::servers::{Allocator, Edge};

    let scratch = Scratch::new("edge-link-stream-panic");
    let allocator =
        Allocator::start(&scratch.config("[rounds.cash]\ntotal_cents = 100\nenvelopes = 1\n"));
    let mut command = Edge::command(&scratch.edge_config(allocator.quic, ""));
    command.env("SHAKE_FAILPOINT", "edge-link-stream-panic").env("RUST_LOG", "error");
    let mut edge = Edge::spawn(command).unwrap();
    let status = exit_within_10_s(&mut edge.process).await;
    assert_eq!(status.code(), Some(1), "{status:?}");
}

async fn exit_within_10_s(process: &mut shake_testkit::processes::Process) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = process.try_wait() {
            return status;
        }
        assert!(Instant::now() < deadline, "the edge kept running after its failure");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two edges configured with one edge id: the allocator keeps the newer edge's worker streams
/// and refuses the older's (`DUPLICATE_WORKER`, its instance retired). The refused edge says
/// so: an error naming the cause and `shake_edge_allocator_streams_refused_total{code}`.
/// Before, it logged "allocator stream lost" ten times a second a worker, its allocator link
/// looked up, and nothing could be alerted on while its phones' shakes were never drawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_id_used_twice_is_named_by_the_refused_edge() {
    use shake_testkit::metrics;
    use shake_testkit::scratch::Scratch;
    use shake_testkit::servers::{Allocator, Edge};

    let scratch = Scratch::new("edge-id-twice");
    let allocator =
        Allocator::start(&scratch.config("[rounds.cash]\ntotal_cents = 100\nenvelopes = 1\n"));
    let config = scratch.edge_config(allocator.quic, "");
    let first = Edge::start_quiet(&config);
    let second = Edge::start_quiet(&config);
    let refused = "shake_edge_allocator_streams_refused_total{code=\"DUPLICATE_WORKER\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics::read(first.metrics, refused) + metrics::read(second.metrics, refused) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "neither edge counted a refusal:\n{}",
            metrics::scrape(first.metrics)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
