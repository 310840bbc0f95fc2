//! Deadlines on the client's side for database calls a server may never answer.
//!
//! A database server that hangs while its host runs on (a stopped postmaster, a stalled WAL
//! disk, a frozen virtual machine whose host still routes) completes TCP handshakes and
//! acknowledges every byte in its kernel: neither keep-alives nor `TCP_USER_TIMEOUT` end a
//! statement sent to it, and the blocking client has no deadline of its own (its
//! `connect_timeout` covers the TCP connect only, not the startup that follows). A call that
//! must not wait for ever runs here on a thread of its own; past its deadline it is left
//! behind, with the connection it holds, and the caller gets [`LedgerError::NoAnswer`]. The
//! thread ends whenever the server answers or its connection dies (a fenced server's reset).
//!
//! Invariant: a call left behind is never used again by anyone; its result, if it ever comes,
//! is dropped. [`unanswered`] counts those still waiting, for the metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::mpsc::{RecvTimeoutError, sync_channel};
use std::time::Duration;

use super::LedgerError;

/// Calls left behind at their deadline and not answered since.
static UNANSWERED: AtomicI64 = AtomicI64::new(0);

const RUNNING: u8 = 0;
const DONE: u8 = 1;
const LEFT_BEHIND: u8 = 2;

/// Database calls this process left behind at their deadline that the server has not
/// answered yet (each a thread and a connection): `shake_allocator_ledger_calls_unanswered`.
pub fn unanswered() -> i64 {
    UNANSWERED.load(Ordering::Relaxed).max(0)
}

/// Runs `call` on a thread of its own and waits at most `limit` for it. A call that panics
/// panics here; one still running at the deadline is left behind (see the module comment) and
/// `what` names it in the error.
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &'static str,
    call: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LedgerError> {
    within_then(limit, what, call, || {})
}

/// [`within`], and `answered_late` runs on the call's thread once a call left behind returns.
pub fn within_then<T: Send + 'static>(
    limit: Duration,
    what: &'static str,
    call: impl FnOnce() -> T + Send + 'static,
    answered_late: impl FnOnce() + Send + 'static,
) -> Result<T, LedgerError> {
    let (result_tx, result_rx) = sync_channel(1);
    let state = Arc::new(AtomicU8::new(RUNNING));
    let call_state = state.clone();
    std::thread::Builder::new()
        .name(format!("ledger-{what}"))
        .spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(call));
            // Sent before the state says done: a caller that finds it done receives at once.
            let _ = result_tx.send(result);
            if call_state.swap(DONE, Ordering::SeqCst) == LEFT_BEHIND {
                UNANSWERED.fetch_sub(1, Ordering::Relaxed);
                answered_late();
            }
        })
        .map_err(|e| LedgerError::Failed(format!("spawning a thread for the {what}: {e}")))?;
    let result = match result_rx.recv_timeout(limit) {
        Ok(result) => result,
        Err(RecvTimeoutError::Timeout) => {
            // Counted before it is marked, so the thread's uncount always follows the count.
            UNANSWERED.fetch_add(1, Ordering::Relaxed);
            if state.swap(LEFT_BEHIND, Ordering::SeqCst) != DONE {
                return Err(LedgerError::NoAnswer { what, after: limit });
            }
            // It returned just now: its result is in the channel already.
            UNANSWERED.fetch_sub(1, Ordering::Relaxed);
            result_rx.recv().map_err(|_| LedgerError::Failed(format!("the {what} vanished")))?
        }
        Err(RecvTimeoutError::Disconnected) => {
            return Err(LedgerError::Failed(format!("the {what}'s thread vanished")));
        }
    };
    result.map_err(|panic| std::panic::resume_unwind(panic))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::Instant;

    #[test]
    fn a_call_that_answers_in_time_gives_its_result() {
        assert_eq!(within(Duration::from_secs(5), "call", || 7).unwrap(), 7);
    }

    #[test]
    fn a_call_past_its_deadline_is_left_behind_and_counted_until_it_returns() {
        let (release_tx, release_rx) = channel::<()>();
        let (late_tx, late_rx) = channel::<()>();
        let before = UNANSWERED.load(Ordering::Relaxed);
        let started = Instant::now();
        let result = within_then(
            Duration::from_millis(200),
            "hung call",
            move || release_rx.recv().is_ok(),
            move || late_tx.send(()).unwrap(),
        );
        let waited = started.elapsed();
        match result {
            Err(LedgerError::NoAnswer { what: "hung call", after }) => {
                assert_eq!(after, Duration::from_millis(200))
            }
            other => panic!("expected NoAnswer, got {other:?}"),
        }
        assert!(waited < Duration::from_secs(5), "the caller waited {waited:?}");
        assert!(UNANSWERED.load(Ordering::Relaxed) > before, "the call left behind is counted");
        release_tx.send(()).unwrap();
        late_rx.recv_timeout(Duration::from_secs(5)).expect("the late answer is seen");
        // Uncounted before the late hook runs.
        assert_eq!(UNANSWERED.load(Ordering::Relaxed), before, "the returned call uncounted");
    }

    #[test]
    fn a_call_that_panics_panics_in_the_caller() {
        let caught = std::panic::catch_unwind(|| {
            let _ = within(Duration::from_secs(5), "call", || -> u8 { panic!("inside") });
        });
        let payload = caught.expect_err("the panic reaches the caller");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"inside"));
    }
}
