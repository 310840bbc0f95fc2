//! The allocator's Prometheus metrics.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

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
    pub awards: Family<Labels, Counter>,
    /// Prizes not yet awarded, by round.
    pub pool_remaining: Family<Labels, Gauge>,
    /// Group commit latency, seconds.
    pub commit_seconds: Histogram,
    /// Batches per group commit.
    pub commit_group_batches: Histogram,
    /// Connections refused (TLS or protocol), by reason.
    pub rejected_peers: Family<Labels, Counter>,
    /// Streams closed for bad frames, by decode error.
    pub malformed_frames: Family<Labels, Counter>,
    /// Edge worker streams open.
    pub streams_open: Gauge,
    /// Streams the allocator closed, by reason (protocol violations, floods, slow readers).
    pub streams_closed: Family<Labels, Counter>,
    /// Resent batches whose content differs from the batch first drawn under that name.
    pub batches_conflicting: Counter,
    /// Answers held for resends, not yet confirmed by their edge (memory and ledger).
    pub answers_stored: Gauge,
    /// Stored answers forgotten (confirmed by their edge, or their worker restarted).
    pub answers_forgotten: Counter,
    /// Jobs waiting for the group-commit thread (bounded; a full queue holds the edges back).
    pub commit_queue: Gauge,
    /// Delivery marks (phones' acknowledgements) made durable.
    pub delivery_marks: Counter,
    /// Entries treated as no-luck because their user was over the per-user rate.
    pub entries_over_user_rate: Counter,
    /// Users the edges were told to refuse for going over the per-user rate.
    pub users_limited: Counter,
    /// Users evicted from the per-user table while over the rate.
    pub users_evicted: Counter,
    /// Users the per-user rate tracks now.
    pub users_tracked: Gauge,
    /// The leader epoch this allocator holds (PostgreSQL ledger); 0 while a standby.
    pub leader_epoch: Gauge,
    /// Leadership terms won, and how each ended (`outcome`: won, lost, fenced, failed).
    pub leadership: Family<Labels, Counter>,
    /// Awards durable and not yet acknowledged by a phone (sent again at the user's next
    /// session).
    pub awards_owed: Gauge,
    /// `AwardsOwed` frames sent to edges for users whose session started.
    pub awards_owed_sent: Counter,
    /// Awards a standby replayed from the log while standing by (its pools and caps warm).
    pub awards_followed: Counter,
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
            delivery_marks: Counter::default(),
            entries_over_user_rate: Counter::default(),
            users_limited: Counter::default(),
            users_evicted: Counter::default(),
            users_tracked: Gauge::default(),
            leader_epoch: Gauge::default(),
            leadership: Family::default(),
            awards_owed: Gauge::default(),
            awards_owed_sent: Counter::default(),
            awards_followed: Counter::default(),
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
            "Awards a standby replayed from the log while standing by",
            m.awards_followed.clone(),
        );
        registry.register(
            "takeover_tail_awards",
            "Awards the last takeover read that the standby had not followed",
            m.takeover_tail_awards.clone(),
        );
        shake_ops::build::register_info(&mut registry);
        Self { registry, ..m }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // invariant: writing into a String cannot fail.
        encode(&mut out, &self.registry).expect("encoding metrics into a String");
        out
    }
}
