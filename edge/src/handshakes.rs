//! Whether a connection attempt may start its handshake, decided from its first packet before
//! any cryptography: the edge-wide caps, Retry above a threshold, then the per-source limits
//! ([`SourceLimiter`]). Both I/O paths (the quinn worker and the event loop) ask here, so the
//! rules and their metric labels are one piece of code.

use std::net::IpAddr;

use crate::config::Limits;
use crate::sources::{SourceLimiter, SourceVerdict};

/// The decision on one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeDecision {
    /// Go on; `tracked` if the attempt was counted against its source (call
    /// [`SourceLimiter::on_handshake_done`] when it ends).
    Accept {
        /// Counted against its source.
        tracked: bool,
    },
    /// Refuse (CONNECTION_REFUSED), with the outcome saying why: [`HandshakeOutcome::Refused`]
    /// (draining or full), [`HandshakeOutcome::Overloaded`] or
    /// [`HandshakeOutcome::RateLimited`].
    Refuse(HandshakeOutcome),
    /// Ask for address validation first.
    Retry,
    /// Drop the packet; the client resends.
    Ignore,
}

impl HandshakeDecision {
    /// The `outcome` of `shake_edge_handshakes_total` for this decision (accepted handshakes
    /// are counted when they complete).
    pub fn outcome(self) -> Option<HandshakeOutcome> {
        match self {
            HandshakeDecision::Accept { .. } => None,
            HandshakeDecision::Refuse(outcome) => Some(outcome),
            HandshakeDecision::Retry => Some(HandshakeOutcome::Retried),
            HandshakeDecision::Ignore => Some(HandshakeOutcome::Ignored),
        }
    }
}

shake_ops::label_values! {
    /// How a connection attempt ended, or what was decided on its first packet
    /// (`shake_edge_handshakes_total{outcome}`).
    pub enum HandshakeOutcome {
        /// The handshake completed (counted by the I/O path).
        Accepted => "accepted",
        /// The handshake started and did not complete (counted by the I/O path).
        Failed => "failed",
        /// The handshake started and had not completed by `limits.handshake_timeout_ms`
        /// (counted by the I/O path, which closes it).
        TimedOut => "timed_out",
        /// Asked for address validation first.
        Retried => "retried",
        /// Dropped: the client resends.
        Ignored => "ignored",
        /// Refused: the edge is draining, or at its handshake or phone cap.
        Refused => "refused",
        /// Refused: the worker is over its load target.
        Overloaded => "overloaded",
        /// Refused: the source went over its handshake rate.
        RateLimited => "rate_limited",
    }
}

/// What the edge knows when an attempt arrives.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// The client's address.
    pub source: IpAddr,
    /// Whether it already answered a Retry.
    pub validated: bool,
    /// Handshakes in progress, whole edge.
    pub in_progress: u32,
    /// Phones connected, whole edge.
    pub phones: u32,
    /// The edge is draining: no new phones.
    pub draining: bool,
    /// The worker is over its load target ([`crate::overload`]): established phones come
    /// first.
    pub overloaded: bool,
}

/// Decides one attempt (and charges its source if accepted).
pub fn decide(
    limits: &Limits,
    sources: &mut SourceLimiter,
    attempt: Attempt,
    now_us: u64,
) -> HandshakeDecision {
    if attempt.draining
        || attempt.in_progress >= limits.max_handshakes
        || attempt.phones >= limits.max_phones
    {
        return HandshakeDecision::Refuse(HandshakeOutcome::Refused);
    }
    if attempt.overloaded {
        return HandshakeDecision::Refuse(HandshakeOutcome::Overloaded);
    }
    // Retry is stateless and cheap: ask for it before charging the source, whose bucket then
    // pays once, for the validated attempt.
    if attempt.in_progress >= limits.retry_above_handshakes && !attempt.validated {
        return HandshakeDecision::Retry;
    }
    match sources.on_attempt(attempt.source, attempt.validated, now_us) {
        SourceVerdict::Admit { tracked } => HandshakeDecision::Accept { tracked },
        SourceVerdict::Busy => HandshakeDecision::Ignore,
        SourceVerdict::TooFast => HandshakeDecision::Refuse(HandshakeOutcome::RateLimited),
        SourceVerdict::ValidateFirst => HandshakeDecision::Retry,
    }
}
