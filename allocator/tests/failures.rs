//! A panic in the allocator's actor stops the process with a non-zero exit (before the fix the
//! task's panic was mapped to `Ok(())` and the allocator exited 0).
//! `SHAKE_FAILPOINT=allocator-actor-panic` makes the actor panic at its first tick.
//! A name that is no fault is refused at start (exit 64).

use std::io::Read;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use shake_testkit::scratch::Scratch;
use shake_testkit::servers::Allocator;

#[test]
fn a_panicking_actor_stops_the_allocator_with_a_failure_exit() {
    let scratch = Scratch::new("actor-panic");
    let config = scratch.config("[rounds.cash]\ntotal_cents = 100\nenvelopes = 1\n");
    let child = Allocator::command(&config)
        .env("SHAKE_FAILPOINT", "allocator-actor-panic")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = exit_within(child, "after its actor panicked");
    assert_eq!(status.code(), Some(1), "{status:?}");
}

/// The child's exit status, or a failed test (the child killed) if it runs on past 10 s.
fn exit_within(mut child: Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the allocator kept running {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A misspelt fault would inject nothing and let its test pass without the fault: the binary
/// refuses it as a usage error, naming it.
#[test]
fn a_misspelt_failpoint_is_refused_at_start() {
    let scratch = Scratch::new("failpoint-misspelt");
    let config = scratch.config("[rounds.cash]\ntotal_cents = 100\nenvelopes = 1\n");
    let mut child = Allocator::command(&config)
        .env("SHAKE_FAILPOINT", "allocator-actor-panik")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let status = exit_within(child, "with a misspelt failpoint");
    let mut stderr = String::new();
    stderr_pipe.read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("no such fault: allocator-actor-panik"), "{stderr}");
}
