//! A panic in the allocator's actor stops the process with a non-zero exit (before the fix the
//! task's panic was mapped to `Ok(())` and the allocator exited 0).
//! `SHAKE_FAILPOINT=allocator-actor-panic` makes the actor panic at its first tick.

use std::process::Stdio;
use std::time::{Duration, Instant};

use shake_testkit::scratch::Scratch;
use shake_testkit::servers::Allocator;

#[test]
fn a_panicking_actor_stops_the_allocator_with_a_failure_exit() {
    let scratch = Scratch::new("actor-panic");
    let config = scratch.config("[rounds.cash]\ntotal_cents = 100\nenvelopes = 1\n");
    let mut child = Allocator::command(&config)
        .env("SHAKE_FAILPOINT", "allocator-actor-panic")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the allocator kept running after its actor panicked");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(1), "{status:?}");
}
