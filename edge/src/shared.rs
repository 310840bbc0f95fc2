//! What every worker of the edge shares: the configuration, token keys, metrics, edge-wide
//! counts, the award book, the sessions by user and the drain and stop signals. Read-mostly;
//! the counts are atomics, and nothing here is touched per shake.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Instant;

use shake_proto::KeyRing;
use tokio_util::sync::CancellationToken;

use crate::award_book::AwardBook;
use crate::config::EdgeConfig;
use crate::metrics::EdgeMetrics;
use crate::user_sessions::UserSessions;

/// What every worker shares (read-mostly, or edge-wide atomics).
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub config: EdgeConfig,
    /// Token keys.
    pub keys: KeyRing,
    /// Metrics.
    pub metrics: Arc<EdgeMetrics>,
    /// Connection attempts in progress, whole edge: handshaking, or connected and not yet past
    /// `Hello` (what `max_handshakes` and `retry_above_handshakes` count).
    pub handshakes: AtomicU32,
    /// Phones connected, whole edge.
    pub phones: AtomicU32,
    /// Awards sent and not yet acknowledged, whole edge.
    pub awards: Arc<AwardBook>,
    /// Live sessions by user (one per user per edge).
    pub sessions: Arc<UserSessions>,
    /// Where the clock starts for buckets.
    pub origin: Instant,
    /// Stop accepting, tell phones to go, flush, wait for answers.
    pub drain: CancellationToken,
    /// Stop at once.
    pub stop: CancellationToken,
}
