//! A worker that panics stops the whole edge with a non-zero exit (before the fix the panic
//! was swallowed: the process exited 0 at its next signal, and meanwhile the dead worker's
//! SO_REUSEPORT socket was gone with its phones). `SHAKE_FAILPOINT=edge-worker-panic` makes a
//! worker panic a moment after it starts.

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
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = world.edge.process.try_wait() {
            break status;
        }
        assert!(Instant::now() < deadline, "the edge kept running with a dead worker");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(1), "{status:?}");
}
