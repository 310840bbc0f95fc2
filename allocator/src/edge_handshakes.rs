//! The allocator's QUIC port, defended: edges are few and known (mutual TLS), so what reaches
//! the port from anyone else must not cost the allocator memory, tasks or log lines without
//! bound. Handshakes in progress are capped (refused past [`MAX_IN_PROGRESS`]); above
//! [`RETRY_ABOVE`] a source that has not validated its address is asked to Retry first (a
//! spoofed flood then holds no state); each handshake has a deadline ([`DEADLINE`]); a failed
//! one is counted every time and logged at most once per [`LOG_EVERY`], with the number left
//! unlogged. The leader's accept loop and a standby's redirect share one gate per endpoint.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::{Metrics, Rejected, RejectedLabels};

/// Handshakes in progress at once, at most: far above a fleet of edges reconnecting together
/// after a failover (each edge worker's link is one connection), far below what would hurt.
pub const MAX_IN_PROGRESS: usize = 256;
/// Handshakes in progress above which an unvalidated source is asked to Retry first.
pub const RETRY_ABOVE: usize = 32;
/// A handshake not complete this long after its first packet is given up.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// At most one line per this long for failed handshakes (each is counted).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// What to do with one connection attempt.
#[derive(Debug)]
pub enum Admit {
    /// Handshake it, holding a place until the slot is dropped.
    Accept(Slot),
    /// Ask the source to validate its address first.
    Retry,
    /// Refuse it: too many handshakes in progress.
    Refuse,
}

/// The handshakes of one endpoint.
#[derive(Debug, Default)]
pub struct EdgeHandshakes {
    in_progress: AtomicUsize,
    failures: Mutex<LogWindow>,
}

/// A place among the handshakes in progress, given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<EdgeHandshakes>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EdgeHandshakes {
    /// Decides an attempt from a source that has (or has not) validated its address.
    pub fn admit(self: &Arc<Self>, validated: bool) -> Admit {
        let now = self.in_progress.load(Ordering::Relaxed);
        if now >= MAX_IN_PROGRESS {
            return Admit::Refuse;
        }
        if now >= RETRY_ABOVE && !validated {
            return Admit::Retry;
        }
        // Two attempts may pass the check together: the cap is exceeded by at most the
        // runtime's worker threads, which is all the bound needs.
        self.in_progress.fetch_add(1, Ordering::Relaxed);
        Admit::Accept(Slot(self.clone()))
    }

    /// Handshakes in progress.
    pub fn in_progress(&self) -> usize {
        self.in_progress.load(Ordering::Relaxed)
    }

    /// A handshake failed at `now`: `Some(n)` when it is to be logged, `n` being the failures
    /// left unlogged since the last line.
    pub fn failed(&self, now: Instant) -> Option<u64> {
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).note(now)
    }
}

/// One log line per window, the rest counted.
#[derive(Debug, Default)]
struct LogWindow {
    logged_at: Option<Instant>,
    unlogged: u64,
}

impl LogWindow {
    fn note(&mut self, now: Instant) -> Option<u64> {
        match self.logged_at {
            Some(at) if now.saturating_duration_since(at) < LOG_EVERY => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.logged_at = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }
}

/// Runs one attempt through the gate: the connection once its handshake completed, or `None`
/// (refused, asked to Retry, failed or past its deadline: each counted).
pub async fn handshake(
    gate: &Arc<EdgeHandshakes>,
    incoming: quinn::Incoming,
    metrics: &Metrics,
) -> Option<quinn::Connection> {
    let remote = incoming.remote_address();
    let rejected = |reason| metrics.rejected_peers.get_or_create(&RejectedLabels { reason }).inc();
    let _slot = match gate.admit(incoming.remote_address_validated()) {
        Admit::Accept(slot) => slot,
        Admit::Retry => {
            // Never fails for an unvalidated source (quinn's `may_retry`).
            let _ = incoming.retry();
            return None;
        }
        Admit::Refuse => {
            rejected(Rejected::Busy);
            incoming.refuse();
            return None;
        }
    };
    let err = match tokio::time::timeout(DEADLINE, incoming).await {
        Ok(Ok(connection)) => return Some(connection),
        Ok(Err(err)) => err.to_string(),
        // Dropping the attempt closes it.
        Err(_) => format!("not complete within {DEADLINE:?}"),
    };
    rejected(Rejected::Handshake);
    if let Some(unlogged) = gate.failed(Instant::now()) {
        tracing::warn!(
            %remote,
            %err,
            unlogged,
            "edge handshake refused (one line per {LOG_EVERY:?}; `unlogged` more since the last, \
             all counted in shake_allocator_rejected_peers_total)"
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_retried_then_refused_as_handshakes_pile_up() {
        let gate = Arc::new(EdgeHandshakes::default());
        let mut slots: Vec<Slot> = (0..RETRY_ABOVE)
            .map(|_| match gate.admit(false) {
                Admit::Accept(slot) => slot,
                other => panic!("below the Retry threshold: {other:?}"),
            })
            .collect();
        assert!(matches!(gate.admit(false), Admit::Retry), "an unvalidated source above it");
        while gate.in_progress() < MAX_IN_PROGRESS {
            match gate.admit(true) {
                Admit::Accept(slot) => slots.push(slot),
                other => panic!("a validated source below the cap: {other:?}"),
            }
        }
        assert!(matches!(gate.admit(true), Admit::Refuse), "at the cap, validated or not");
        assert!(matches!(gate.admit(false), Admit::Refuse));
        slots.truncate(RETRY_ABOVE - 1);
        assert_eq!(gate.in_progress(), RETRY_ABOVE - 1, "dropped slots give their place back");
        assert!(matches!(gate.admit(false), Admit::Accept(_)));
    }

    #[test]
    fn failures_are_logged_once_a_window_with_the_count_left_out() {
        let gate = EdgeHandshakes::default();
        let t0 = Instant::now();
        assert_eq!(gate.failed(t0), Some(0), "the first is logged");
        for i in 1..=5 {
            assert_eq!(gate.failed(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(gate.failed(t0 + LOG_EVERY), Some(5), "the next window's first, with the rest");
        assert_eq!(gate.failed(t0 + LOG_EVERY + Duration::from_millis(1)), None);
        assert_eq!(gate.failed(t0 + LOG_EVERY * 3), Some(1));
    }
}
