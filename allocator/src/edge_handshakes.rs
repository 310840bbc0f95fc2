//! The allocator's QUIC port, defended: edges are few and known (mutual TLS), so what reaches
//! the port from anyone else must not cost the allocator memory, tasks or log lines without
//! bound. Handshakes in progress are capped (refused past [`MAX_IN_PROGRESS`], or past
//! [`MAX_PER_SOURCE`] from one validated address, so that one host cannot hold them all);
//! above [`RETRY_ABOVE`] a source that has not validated its address is asked to Retry first
//! (a spoofed flood then holds no state, and cannot use up a real edge's share); each
//! handshake has a deadline ([`DEADLINE`]); a failed one is counted every time and logged at
//! most once per [`LOG_EVERY`], with the number left unlogged. The leader's accept loop and a
//! standby's redirect share one gate per process.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::metrics::{Metrics, Rejected, RejectedLabels};

/// Handshakes in progress at once, at most: far above a fleet of edges reconnecting together
/// after a failover (each edge worker's link is one connection), far below what would hurt.
pub const MAX_IN_PROGRESS: usize = 1_024;
/// Handshakes in progress from one address, at most: an edge host's workers reconnecting at
/// once (one link each), and no more.
pub const MAX_PER_SOURCE: usize = 32;
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
    /// Refuse it: too many handshakes in progress, in all or from its address.
    Refuse,
}

/// The handshakes of one process's QUIC port.
#[derive(Debug, Default)]
pub struct EdgeHandshakes {
    /// One lock for the counts (a few attempts a second; never on the draw's path), so the
    /// checks and the counting are one step.
    in_progress: Mutex<InProgress>,
    failures: Mutex<LogWindow>,
}

#[derive(Debug, Default)]
struct InProgress {
    total: usize,
    /// Handshakes in progress by validated address (an entry leaves at its last; at most
    /// [`MAX_IN_PROGRESS`] entries). An unvalidated address may be anyone's, spoofed.
    by_source: HashMap<IpAddr, usize>,
}

/// A place among the handshakes in progress, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    gate: Arc<EdgeHandshakes>,
    /// The validated address it is counted against.
    source: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.gate.counts();
        counts.total -= 1;
        let Some(source) = self.source else { return };
        if let Some(n) = counts.by_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                counts.by_source.remove(&source);
            }
        }
    }
}

impl EdgeHandshakes {
    /// Decides an attempt from `source`, which has (or has not) validated its address.
    pub fn admit(self: &Arc<Self>, source: IpAddr, validated: bool) -> Admit {
        let mut counts = self.counts();
        if counts.total >= MAX_IN_PROGRESS {
            return Admit::Refuse;
        }
        let counted = if validated {
            let from_source = counts.by_source.entry(source).or_default();
            if *from_source >= MAX_PER_SOURCE {
                return Admit::Refuse;
            }
            *from_source += 1;
            Some(source)
        } else if counts.total >= RETRY_ABOVE {
            return Admit::Retry;
        } else {
            None
        };
        counts.total += 1;
        Admit::Accept(Slot { gate: self.clone(), source: counted })
    }

    /// Handshakes in progress.
    pub fn in_progress(&self) -> usize {
        self.counts().total
    }

    /// A handshake failed at `now`: `Some(n)` when it is to be logged, `n` being the failures
    /// left unlogged since the last line.
    pub fn failed(&self, now: Instant) -> Option<u64> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner).note(now)
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, InProgress> {
        self.in_progress.lock().unwrap_or_else(PoisonError::into_inner)
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
    let _slot = match gate.admit(remote.ip(), incoming.remote_address_validated()) {
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

    fn address(n: usize) -> IpAddr {
        IpAddr::from([10, 0, (n / 256) as u8, (n % 256) as u8])
    }

    #[test]
    fn attempts_are_retried_then_refused_as_handshakes_pile_up() {
        let gate = Arc::new(EdgeHandshakes::default());
        let mut slots: Vec<Slot> = (0..RETRY_ABOVE)
            .map(|n| match gate.admit(address(n), false) {
                Admit::Accept(slot) => slot,
                other => panic!("below the Retry threshold: {other:?}"),
            })
            .collect();
        let retried = gate.admit(address(RETRY_ABOVE), false);
        assert!(matches!(retried, Admit::Retry), "an unvalidated source above it: {retried:?}");
        let mut n = RETRY_ABOVE;
        while gate.in_progress() < MAX_IN_PROGRESS {
            match gate.admit(address(n), true) {
                Admit::Accept(slot) => slots.push(slot),
                other => panic!("a validated source below the cap: {other:?}"),
            }
            n += 1;
        }
        assert!(matches!(gate.admit(address(n), true), Admit::Refuse), "at the cap");
        assert!(matches!(gate.admit(address(n), false), Admit::Refuse));
        slots.truncate(RETRY_ABOVE - 1);
        assert_eq!(gate.in_progress(), RETRY_ABOVE - 1, "dropped slots give their place back");
        assert!(matches!(gate.admit(address(n), false), Admit::Accept(_)));
    }

    #[test]
    fn one_address_holds_at_most_its_share() {
        let gate = Arc::new(EdgeHandshakes::default());
        let host = address(1);
        let mut slots: Vec<Slot> = (0..MAX_PER_SOURCE)
            .map(|_| match gate.admit(host, true) {
                Admit::Accept(slot) => slot,
                other => panic!("below its share: {other:?}"),
            })
            .collect();
        assert!(matches!(gate.admit(host, true), Admit::Refuse), "past its share");
        // Unvalidated, the address may be anyone's (spoofed): its share is not held against it.
        assert!(matches!(gate.admit(host, false), Admit::Retry));
        assert!(matches!(gate.admit(address(2), true), Admit::Accept(_)), "another host gets in");
        slots.pop();
        assert!(matches!(gate.admit(host, true), Admit::Accept(_)), "a place given back");
        drop(slots);
        assert_eq!(gate.counts().by_source.len(), 0, "addresses leave with their last attempt");
    }

    /// Attempts from an address that has not validated itself may be a spoofer's: they do not
    /// use up that address's share, or a spoofer could keep a real edge out.
    #[test]
    fn unvalidated_attempts_leave_the_addresses_share_alone() {
        let gate = Arc::new(EdgeHandshakes::default());
        let edge = address(7);
        let spoofed: Vec<Admit> = (0..RETRY_ABOVE).map(|_| gate.admit(edge, false)).collect();
        assert!(spoofed.iter().all(|a| matches!(a, Admit::Accept(_))));
        assert!(matches!(gate.admit(edge, true), Admit::Accept(_)), "the real edge, validated");
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
