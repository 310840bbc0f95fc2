//! The allocator's Prometheus metrics.
//!
//! Each labelled family is keyed by a label-set struct; closed sets of values are enums
//! declared with [`shake_ops::label_values!`], whose texts are the exported names the
//! dashboards, scripts and tests read.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use shake_ops::labels::export_from_zero;
use shake_proto::{ErrorCode, Prize};
use std::sync::atomic::AtomicU64;

shake_ops::label_values! {
    /// The kind of a prize awarded.
    pub enum PrizeKind {
        Cash => "cash",
        Gift => "gift",
    }
}

impl From<&Prize> for PrizeKind {
    fn from(prize: &Prize) -> Self {
        match prize {
            Prize::Cash { .. } => PrizeKind::Cash,
            Prize::Gift { .. } => PrizeKind::Gift,
        }
    }
}

shake_ops::label_values! {
    /// Why a connection was refused.
    pub enum Rejected {
        /// The TLS or QUIC handshake failed.
        Handshake => "handshake",
        /// The client certificate does not name the edge the stream claims to be.
        EdgeId => "edge_id",
        /// This node is a standby: the address of the leader is in the close reason.
        NotLeader => "not_leader",
        /// Refused at once: too many handshakes in progress (see `edge_handshakes`).
        Busy => "busy",
    }
}

shake_ops::label_values! {
    /// A leadership term won, and how each ended.
    pub enum Leadership {
        /// The lease was taken: a term starts.
        Won => "won",
        /// The lease was lost (a takeover while this node was frozen).
        Lost => "lost",
        /// The ledger fenced a commit: a newer leader holds the epoch.
        Fenced => "fenced",
        /// The ledger failed: unreadable at the term's start, or a commit's outcome unknown.
        Failed => "failed",
        /// The process stopped and released the lease.
        Stopped => "stopped",
    }
}

shake_ops::label_values! {
    /// Why a standby followed the log again from its start.
    pub enum FollowRestart {
        /// The last commit it followed is gone from the log (a lost primary's, never
        /// replicated).
        CommitLost => "commit_lost",
        /// What it followed refused the log's next page.
        DidNotReplay => "did_not_replay",
    }
}

/// `shake_allocator_follow_restarts_total{cause}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FollowRestartLabels {
    /// Why.
    pub cause: FollowRestart,
}

/// Why the allocator closed an edge stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamClosed {
    /// The edge did not read its answers (exported as `slow_reader`).
    SlowReader,
    /// The core closed it with this code (exported as [`ErrorCode::name`]).
    Code(ErrorCode),
}

impl EncodeLabelValue for StreamClosed {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        match self {
            StreamClosed::SlowReader => "slow_reader".encode(encoder),
            StreamClosed::Code(code) => code.name().encode(encoder),
        }
    }
}

/// `shake_allocator_awards_total{round, prize}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AwardLabels {
    /// The round's id.
    pub round: u32,
    /// The kind of prize.
    pub prize: PrizeKind,
}

/// `shake_allocator_pool_remaining{round}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RoundLabels {
    /// The round's id.
    pub round: u32,
}

/// `shake_allocator_rejected_peers_total{reason}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RejectedLabels {
    /// Why.
    pub reason: Rejected,
}

/// `shake_allocator_malformed_frames_total{reason}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MalformedLabels {
    /// `DecodeError::label()`.
    pub reason: &'static str,
}

/// `shake_allocator_streams_closed_total{reason}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StreamClosedLabels {
    /// Why.
    pub reason: StreamClosed,
}

/// `shake_allocator_leadership_total{outcome}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LeadershipLabels {
    /// Won, or how the term ended.
    pub outcome: Leadership,
}

/// Every metric the allocator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Batches received (first arrivals and resends).
    pub batches: Counter,
    /// Batches answered from a stored answer or joined to a pending draw.
    pub batches_replayed: Counter,
    /// Entries decided.
    pub entries: Counter,
    /// Awards granted, by round and prize kind.
    pub awards: Family<AwardLabels, Counter>,
    /// Prizes not yet awarded, by round.
    pub pool_remaining: Family<RoundLabels, Gauge>,
    /// 1 while the round takes shakes, 0 while it waits, is paused or has closed, by round:
    /// what tells a pool drained in an open round (an alert) from one that closed drained.
    pub round_open: Family<RoundLabels, Gauge>,
    /// Group commit latency, seconds.
    pub commit_seconds: Histogram,
    /// Batches per group commit.
    pub commit_group_batches: Histogram,
    /// Connections refused (TLS or protocol), by reason.
    pub rejected_peers: Family<RejectedLabels, Counter>,
    /// Streams closed for bad frames, by decode error.
    pub malformed_frames: Family<MalformedLabels, Counter>,
    /// Edge worker streams open.
    pub streams_open: Gauge,
    /// Streams the allocator closed, by reason (protocol violations, floods, slow readers).
    pub streams_closed: Family<StreamClosedLabels, Counter>,
    /// Resent batches whose content differs from the batch first drawn under that name.
    pub batches_conflicting: Counter,
    /// Answers held for resends, not yet confirmed by their edge (memory and ledger).
    pub answers_stored: Gauge,
    /// Stored answers forgotten (confirmed by their edge, or their worker restarted).
    pub answers_forgotten: Counter,
    /// Jobs waiting for the group-commit thread (bounded; a full queue holds the edges back).
    pub commit_queue: Gauge,
    /// How long the oldest group commit in flight has been, seconds (0: none): set at each
    /// scrape, so a commit that never returns shows.
    pub commit_oldest_seconds: Gauge<f64, AtomicU64>,
    /// Database calls left behind at their deadline and not answered since (a server that
    /// hangs while its host acknowledges): set at each scrape
    /// ([`crate::ledger::deadline::unanswered`]).
    pub ledger_calls_unanswered: Gauge,
    /// Datagrams the kernel dropped on the QUIC socket for want of receive-buffer room: read
    /// from `/proc/net/udp` at each scrape (quinn does not pass `SO_RXQ_OVFL` on).
    pub kernel_drops: Counter,
    /// The QUIC socket's buffers as the kernel granted them (the smaller of receive and send),
    /// bytes: `socket_buffer_bytes`, or the kernel's cap where that is lower.
    pub socket_buffer_bytes: Gauge,
    /// Delivery marks (phones' acknowledgements) made durable.
    pub delivery_marks: Counter,
    /// Entries treated as no-luck because their user was over the per-user rate.
    pub entries_over_user_rate: Counter,
    /// Entries no-luck because their round is unknown here or not open.
    pub entries_round_not_open: Counter,
    /// Users the edges were told to refuse for going over the per-user rate.
    pub users_limited: Counter,
    /// Users evicted from the per-user table while over the rate.
    pub users_evicted: Counter,
    /// Entries over the per-user rate whose user the full table of offenders could not hold
    /// (refused, but that user is not limited at the edges).
    pub offenders_untracked: Counter,
    /// Users the per-user rate tracks now.
    pub users_tracked: Gauge,
    /// Winners the rounds not yet finished remember for the caps.
    pub winners_remembered: Gauge,
    /// The leader epoch this allocator holds (PostgreSQL ledger); 0 while a standby. An
    /// allocator on its own fjall ledger leads it from its start: 1 (else "no allocator
    /// leads" would page on every single-node show).
    pub leader_epoch: Gauge,
    /// Leadership terms won, and how each ended (`outcome`: [`Leadership`]).
    pub leadership: Family<LeadershipLabels, Counter>,
    /// Awards durable and not yet acknowledged by a phone (sent again at the user's next
    /// session).
    pub awards_owed: Gauge,
    /// `AwardsOwed` frames sent to edges for users whose session started.
    pub awards_owed_sent: Counter,
    /// Awards the standby's warm state holds from the log (its pools and caps warm).
    pub awards_followed: Gauge,
    /// Times a standby followed the log again from its start, by cause.
    pub follow_restarts: Family<FollowRestartLabels, Counter>,
    /// Awards the last takeover had to read because the standby had not followed them yet.
    pub takeover_tail_awards: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("shake_allocator");
        let m = Self {
            batches: Counter::default(),
            batches_replayed: Counter::default(),
            entries: Counter::default(),
            awards: Family::default(),
            pool_remaining: Family::default(),
            round_open: Family::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            commit_group_batches: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            rejected_peers: Family::default(),
            malformed_frames: Family::default(),
            streams_open: Gauge::default(),
            streams_closed: Family::default(),
            batches_conflicting: Counter::default(),
            answers_stored: Gauge::default(),
            answers_forgotten: Counter::default(),
            commit_queue: Gauge::default(),
            commit_oldest_seconds: Gauge::default(),
            ledger_calls_unanswered: Gauge::default(),
            kernel_drops: Counter::default(),
            socket_buffer_bytes: Gauge::default(),
            delivery_marks: Counter::default(),
            entries_over_user_rate: Counter::default(),
            entries_round_not_open: Counter::default(),
            users_limited: Counter::default(),
            users_evicted: Counter::default(),
            offenders_untracked: Counter::default(),
            users_tracked: Gauge::default(),
            winners_remembered: Gauge::default(),
            leader_epoch: Gauge::default(),
            leadership: Family::default(),
            awards_owed: Gauge::default(),
            awards_owed_sent: Counter::default(),
            awards_followed: Gauge::default(),
            follow_restarts: Family::default(),
            takeover_tail_awards: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("batches", "Batches received", m.batches.clone());
        registry.register(
            "batches_replayed",
            "Batches answered again (resends)",
            m.batches_replayed.clone(),
        );
        registry.register("entries", "Entries decided", m.entries.clone());
        registry.register("awards", "Awards granted", m.awards.clone());
        registry.register("pool_remaining", "Prizes not yet awarded", m.pool_remaining.clone());
        registry.register(
            "round_open",
            "1 while the round takes shakes, else 0",
            m.round_open.clone(),
        );
        registry.register("commit_seconds", "Group commit latency", m.commit_seconds.clone());
        registry.register(
            "commit_group_batches",
            "Batches per group commit",
            m.commit_group_batches.clone(),
        );
        registry.register("rejected_peers", "Connections refused", m.rejected_peers.clone());
        registry.register(
            "malformed_frames",
            "Streams closed for malformed frames",
            m.malformed_frames.clone(),
        );
        registry.register("streams_open", "Edge worker streams open", m.streams_open.clone());
        registry.register(
            "streams_closed",
            "Edge streams closed by the allocator",
            m.streams_closed.clone(),
        );
        registry.register(
            "batches_conflicting",
            "Resent batches whose content differs from the first batch of that name",
            m.batches_conflicting.clone(),
        );
        registry.register(
            "answers_stored",
            "Answers held for resends, not yet confirmed by their edge",
            m.answers_stored.clone(),
        );
        registry.register(
            "answers_forgotten",
            "Stored answers forgotten after their edge confirmed them",
            m.answers_forgotten.clone(),
        );
        registry.register(
            "commit_queue",
            "Jobs waiting for the commit thread",
            m.commit_queue.clone(),
        );
        registry.register(
            "commit_oldest_seconds",
            "How long the oldest group commit in flight has been (0: none)",
            m.commit_oldest_seconds.clone(),
        );
        registry.register(
            "ledger_calls_unanswered",
            "Database calls left behind at their deadline and not answered since",
            m.ledger_calls_unanswered.clone(),
        );
        registry.register(
            "kernel_drops",
            "Datagrams the kernel dropped on the QUIC socket (receive buffer full)",
            m.kernel_drops.clone(),
        );
        registry.register(
            "socket_buffer_bytes",
            "The QUIC socket's buffers as the kernel granted them (the smaller of receive and send)",
            m.socket_buffer_bytes.clone(),
        );
        registry.register(
            "delivery_marks",
            "Award acknowledgements made durable",
            m.delivery_marks.clone(),
        );
        registry.register(
            "entries_over_user_rate",
            "Entries no-luck because their user was over the per-user rate",
            m.entries_over_user_rate.clone(),
        );
        registry.register(
            "entries_round_not_open",
            "Entries no-luck because their round is unknown here or not open (an edge's clock or \
             round table disagrees with this allocator's)",
            m.entries_round_not_open.clone(),
        );
        registry.register(
            "users_limited",
            "Users edges were told to refuse for going over the per-user rate",
            m.users_limited.clone(),
        );
        registry.register(
            "users_evicted",
            "Users evicted from the per-user table while over the rate",
            m.users_evicted.clone(),
        );
        registry.register(
            "offenders_untracked",
            "Entries over the per-user rate whose user the full table of offenders (65,536) could \
             not hold: refused all the same, but that user is not limited at the edges",
            m.offenders_untracked.clone(),
        );
        registry.register(
            "winners_remembered",
            "Winners remembered for the per-round caps (a round forgets its own once closed for 10 min)",
            m.winners_remembered.clone(),
        );
        registry.register(
            "users_tracked",
            "Users the per-user rate tracks now",
            m.users_tracked.clone(),
        );
        registry.register(
            "leader_epoch",
            "Leader epoch held (PostgreSQL ledger); 0 while a standby",
            m.leader_epoch.clone(),
        );
        registry.register(
            "leadership",
            "Leadership terms won and how they ended",
            m.leadership.clone(),
        );
        registry.register(
            "awards_owed",
            "Awards durable and not yet acknowledged by a phone",
            m.awards_owed.clone(),
        );
        registry.register(
            "awards_owed_sent",
            "AwardsOwed frames sent for sessions that started",
            m.awards_owed_sent.clone(),
        );
        registry.register(
            "awards_followed",
            "Awards a standby's warm state holds, read from the log since it last began \
             following it from its start (a leader keeps the value it took the lease with \
             until it stands by again)",
            m.awards_followed.clone(),
        );
        registry.register(
            "follow_restarts",
            "Times a standby followed the log again from its start: the last commit it had \
             followed was gone (a lost primary's, never replicated), or what it had followed \
             did not replay",
            m.follow_restarts.clone(),
        );
        registry.register(
            "takeover_tail_awards",
            "Awards the last takeover read that the standby had not followed",
            m.takeover_tail_awards.clone(),
        );
        shake_ops::build::register_info(&mut registry);
        // Every series of a closed set of label values exported from 0: a counter that first
        // shows at 1 has no increase for `increase()` to see, so an alert on a process's first
        // failed term would never fire. Open sets (rounds, frame labels, close codes) show at
        // their first count.
        export_from_zero(&m.rejected_peers, Rejected::ALL.map(|reason| RejectedLabels { reason }));
        export_from_zero(
            &m.leadership,
            Leadership::ALL.map(|outcome| LeadershipLabels { outcome }),
        );
        export_from_zero(
            &m.follow_restarts,
            FollowRestart::ALL.map(|cause| FollowRestartLabels { cause }),
        );
        Self { registry, ..m }
    }

    /// This allocator leads no more (or not yet): the epoch is 0, and what only a serving term
    /// knows is forgotten rather than frozen at its last value (a former leader that stands by
    /// would otherwise add its last pools to the new leader's in every sum over allocators,
    /// and keep a drained round's alert going).
    pub fn not_leading(&self) {
        self.leader_epoch.set(0);
        self.pool_remaining.clear();
        self.round_open.clear();
        self.answers_stored.set(0);
        self.awards_owed.set(0);
        self.users_tracked.set(0);
        self.winners_remembered.set(0);
        self.streams_open.set(0);
        self.commit_queue.set(0);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        shake_ops::http::exposition(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use shake_proto::DecodeError;

    use super::*;

    /// Every labelled series, as deploy/grafana, scripts/*.sh, the dashboard and the tests read
    /// it: a renamed variant text or label field fails here before it breaks a reader.
    const EXPECTED: &str = r#"
shake_allocator_awards_total{round="1",prize="cash"}
shake_allocator_awards_total{round="7",prize="gift"}
shake_allocator_follow_restarts_total{cause="commit_lost"}
shake_allocator_follow_restarts_total{cause="did_not_replay"}
shake_allocator_leadership_total{outcome="failed"}
shake_allocator_leadership_total{outcome="fenced"}
shake_allocator_leadership_total{outcome="lost"}
shake_allocator_leadership_total{outcome="stopped"}
shake_allocator_leadership_total{outcome="won"}
shake_allocator_malformed_frames_total{reason="truncated"}
shake_allocator_malformed_frames_total{reason="unknown_type"}
shake_allocator_pool_remaining{round="1"}
shake_allocator_pool_remaining{round="7"}
shake_allocator_rejected_peers_total{reason="busy"}
shake_allocator_rejected_peers_total{reason="edge_id"}
shake_allocator_rejected_peers_total{reason="handshake"}
shake_allocator_rejected_peers_total{reason="not_leader"}
shake_allocator_round_open{round="1"}
shake_allocator_round_open{round="7"}
shake_allocator_streams_closed_total{reason="HELLO_TIMEOUT"}
shake_allocator_streams_closed_total{reason="SESSION_SUPERSEDED"}
shake_allocator_streams_closed_total{reason="slow_reader"}
"#;

    #[test]
    fn a_term_that_ends_leaves_no_frozen_pools_behind() {
        let m = Metrics::new();
        m.leader_epoch.set(3);
        m.pool_remaining.get_or_create(&RoundLabels { round: 1 }).set(5);
        m.round_open.get_or_create(&RoundLabels { round: 1 }).set(1);
        m.awards_owed.set(9);
        m.answers_stored.set(4);
        m.streams_open.set(32);
        let serving = m.render();
        assert!(serving.contains("shake_allocator_pool_remaining{round=\"1\"} 5"), "{serving}");
        m.not_leading();
        let standing_by = m.render();
        assert!(!standing_by.contains("shake_allocator_pool_remaining{"), "{standing_by}");
        assert!(!standing_by.contains("shake_allocator_round_open{"), "{standing_by}");
        for gauge in ["leader_epoch", "awards_owed", "answers_stored", "streams_open"] {
            assert!(standing_by.contains(&format!("shake_allocator_{gauge} 0\n")), "{gauge}");
        }
    }

    /// Every series of a closed label set is there at 0 before its first count.
    #[test]
    fn series_of_closed_label_sets_are_exported_from_zero() {
        let text = Metrics::new().render();
        let open = ["{round=", "malformed_frames_total{", "streams_closed_total{"];
        let closed: Vec<&str> = EXPECTED
            .trim()
            .lines()
            .filter(|series| !open.iter().any(|o| series.contains(o)))
            .collect();
        assert_eq!(closed.len(), 11, "{closed:?}");
        for series in closed {
            assert!(text.contains(&format!("{series} 0\n")), "{series}:\n{text}");
        }
    }

    #[test]
    fn every_label_keeps_its_exported_name() {
        let m = Metrics::new();
        for (round, prize) in [(1, PrizeKind::Cash), (7, PrizeKind::Gift)] {
            m.awards.get_or_create(&AwardLabels { round, prize }).inc();
            m.pool_remaining.get_or_create(&RoundLabels { round }).set(5);
            m.round_open.get_or_create(&RoundLabels { round }).set(1);
        }
        for reason in Rejected::ALL {
            m.rejected_peers.get_or_create(&RejectedLabels { reason }).inc();
        }
        for err in [DecodeError::Truncated, DecodeError::UnknownType(9)] {
            m.malformed_frames.get_or_create(&MalformedLabels { reason: err.label() }).inc();
        }
        for reason in [
            StreamClosed::SlowReader,
            StreamClosed::Code(ErrorCode::HelloTimeout),
            StreamClosed::Code(ErrorCode::SessionSuperseded),
        ] {
            m.streams_closed.get_or_create(&StreamClosedLabels { reason }).inc();
        }
        for outcome in Leadership::ALL {
            m.leadership.get_or_create(&LeadershipLabels { outcome }).inc();
        }

        let text = m.render();
        let expected: Vec<&str> = EXPECTED.trim().lines().collect();
        assert_eq!(shake_ops::labels::labelled_series(&text), expected);
    }
}
