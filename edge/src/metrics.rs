//! The edge's Prometheus metrics. Workers count in plain integers on their own thread and add
//! them here every 100 ms, so the per-shake path touches no shared cache line.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;
type WorkerLabels = Vec<(&'static str, String)>;

/// Labels of `shake_edge_receive_waits_total`, one per bucket of
/// `shake_loop::driver::DriverStats::queue_wait`.
pub const RECEIVE_WAIT_LABELS: [&str; 5] =
    ["under_250us", "250us_to_1ms", "1_to_10ms", "10_to_100ms", "over_100ms"];

/// Every metric the edge exports.
#[derive(Debug)]
pub struct EdgeMetrics {
    registry: Registry,
    /// Phones connected (after a valid Hello).
    pub phones: Gauge,
    /// Handshakes by outcome (accepted, retried, refused, rate_limited, ignored, failed).
    pub handshakes: Family<Labels, Counter>,
    /// Sessions closed by the edge, by error code name.
    pub sessions_closed: Family<Labels, Counter>,
    /// Shake verdicts by reason.
    pub verdicts: Family<Labels, Counter>,
    /// Drops by reason (malformed datagrams, shakes before Hello...).
    pub drops: Family<Labels, Counter>,
    /// Entries per batch sent.
    pub batch_entries: Histogram,
    /// Batch flush to answer, seconds.
    pub allocator_rtt_seconds: Histogram,
    /// Batches awaiting an answer.
    pub in_flight_batches: Gauge,
    /// Batches resent after a reconnect.
    pub batches_resent: Counter,
    /// Awards written to phones, and awards whose phone had left.
    pub awards: Family<Labels, Counter>,
    /// Allocator link up (1) or down (0).
    pub allocator_up: Gauge,
    /// Round states received from the allocator (all workers).
    pub round_states: Counter,
    /// Answers from the allocator by outcome: matched (announced), mismatched (digest of
    /// another batch: nothing announced), unknown (no such batch in flight).
    pub batch_answers: Family<Labels, Counter>,
    /// Award acknowledgements from phones by outcome: accepted, unknown_award, wrong_user.
    pub award_acks: Family<Labels, Counter>,
    /// Awards sent to phones and not yet acknowledged (the award book).
    pub awards_outstanding: Gauge,
    /// UDP datagrams of the event-loop workers, by direction: in, out, forwarded_in,
    /// forwarded_out (handed to the worker owning the connection), forward_dropped,
    /// send_failed.
    pub datagrams: Family<Labels, Counter>,
    /// Datagrams of the event-loop workers by how long they waited in the socket before the
    /// worker read them (kernel receive timestamps): see [`RECEIVE_WAIT_LABELS`].
    pub receive_waits: Family<Labels, Counter>,
    /// Turns of the event-loop workers by how long they worked (same buckets as
    /// `receive_waits`): a long turn is a wait for every datagram arriving meanwhile.
    pub loop_turns: Family<Labels, Counter>,
    /// Shakes answered without being forwarded, by reason: user_limited (the allocator
    /// found the user over the per-user rate).
    pub refused: Family<Labels, Counter>,
    /// Users with a live session (one per user: a newer session supersedes the older).
    pub users_live: Gauge,
    /// Each event-loop worker's busy share over the last 100 ms (0 to 1).
    pub loop_busy: Family<WorkerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Datagrams the kernel dropped on the workers' sockets for want of buffer room.
    pub kernel_drops: Counter,
    /// Shakes shed for load, by how: `dropped` (a shake-sized datagram that waited past the
    /// queue delay limit, before decryption) or `slow_down` (a shake that waited past the
    /// target while a standing queue lasted, answered `SlowDown`).
    pub shed: Family<Labels, Counter>,
    /// `Pace` frames told to phones (with their answers).
    pub paces_told: Counter,
    /// The shake interval each worker asks of its phones, milliseconds.
    pub pace_ms: Family<WorkerLabels, Gauge>,
    /// Whether each worker was over its load target in its last interval (1) or not (0):
    /// over it, new handshakes are refused.
    pub overloaded: Family<WorkerLabels, Gauge>,
    /// Whether each worker is shedding (1) or not (0).
    pub shedding: Family<WorkerLabels, Gauge>,
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl EdgeMetrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let m = Self {
            registry: Registry::default(),
            phones: Gauge::default(),
            handshakes: Family::default(),
            sessions_closed: Family::default(),
            verdicts: Family::default(),
            drops: Family::default(),
            batch_entries: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
            allocator_rtt_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            in_flight_batches: Gauge::default(),
            batches_resent: Counter::default(),
            awards: Family::default(),
            allocator_up: Gauge::default(),
            round_states: Counter::default(),
            batch_answers: Family::default(),
            award_acks: Family::default(),
            awards_outstanding: Gauge::default(),
            datagrams: Family::default(),
            receive_waits: Family::default(),
            loop_turns: Family::default(),
            refused: Family::default(),
            users_live: Gauge::default(),
            loop_busy: Family::default(),
            kernel_drops: Counter::default(),
            shed: Family::default(),
            paces_told: Counter::default(),
            pace_ms: Family::default(),
            overloaded: Family::default(),
            shedding: Family::default(),
        };
        let mut registry = Registry::with_prefix("shake_edge");
        registry.register("phones", "Phones connected", m.phones.clone());
        registry.register("handshakes", "Handshakes by outcome", m.handshakes.clone());
        registry.register("sessions_closed", "Sessions closed by code", m.sessions_closed.clone());
        registry.register("verdicts", "Shake verdicts by reason", m.verdicts.clone());
        registry.register("drops", "Dropped input by reason", m.drops.clone());
        registry.register("batch_entries", "Entries per batch", m.batch_entries.clone());
        registry.register(
            "allocator_rtt_seconds",
            "Batch flush to answer",
            m.allocator_rtt_seconds.clone(),
        );
        registry.register(
            "in_flight_batches",
            "Batches awaiting an answer",
            m.in_flight_batches.clone(),
        );
        registry.register(
            "batches_resent",
            "Batches resent after a reconnect",
            m.batches_resent.clone(),
        );
        registry.register("awards", "Awards by delivery", m.awards.clone());
        registry.register("allocator_up", "Allocator link up", m.allocator_up.clone());
        registry.register("round_states", "Round states received", m.round_states.clone());
        registry.register(
            "batch_answers",
            "Allocator answers by outcome (mismatched: not announced)",
            m.batch_answers.clone(),
        );
        registry.register("award_acks", "Award acknowledgements by outcome", m.award_acks.clone());
        registry.register(
            "shakes_refused",
            "Shakes answered without forwarding, by reason",
            m.refused.clone(),
        );
        registry.register("users_live", "Users with a live session", m.users_live.clone());
        registry.register("datagrams", "UDP datagrams of the event loops", m.datagrams.clone());
        registry.register(
            "receive_waits",
            "Datagrams by their wait in the socket before the event loop read them",
            m.receive_waits.clone(),
        );
        registry.register(
            "loop_turns",
            "Event-loop turns by how long they worked",
            m.loop_turns.clone(),
        );
        registry.register(
            "loop_busy_ratio",
            "Event-loop worker busy share over the last 100 ms",
            m.loop_busy.clone(),
        );
        registry.register(
            "kernel_drops",
            "Datagrams the kernel dropped on the workers' sockets (receive buffer full)",
            m.kernel_drops.clone(),
        );
        registry.register(
            "shed",
            "Shakes shed for load: dropped before decryption, or answered SlowDown",
            m.shed.clone(),
        );
        registry.register("paces", "Pace frames told to phones", m.paces_told.clone());
        registry.register(
            "pace_ms",
            "The shake interval each worker asks of its phones",
            m.pace_ms.clone(),
        );
        registry.register(
            "overloaded",
            "Worker over its load target in its last interval (refusing handshakes)",
            m.overloaded.clone(),
        );
        registry.register("shedding", "Worker shedding datagrams", m.shedding.clone());
        registry.register(
            "awards_outstanding",
            "Awards sent to phones and not yet acknowledged",
            m.awards_outstanding.clone(),
        );
        shake_ops::build::register_info(&mut registry);
        Self { registry, ..m }
    }

    /// Adds to a labelled counter.
    pub fn add(family: &Family<Labels, Counter>, label: &'static str, value: &'static str, n: u64) {
        if n > 0 {
            family.get_or_create(&vec![(label, value)]).inc_by(n);
        }
    }

    /// Adds what a worker's core counted since its last report.
    pub fn add_core_counts(&self, c: crate::core::Counts) {
        Self::add(&self.verdicts, "verdict", "no_luck", c.no_luck);
        Self::add(&self.verdicts, "verdict", "slow_down", c.slow_down);
        Self::add(&self.verdicts, "verdict", "round_closed", c.round_closed);
        Self::add(&self.verdicts, "verdict", "forwarded", c.forwarded);
        Self::add(&self.drops, "reason", "backpressure", c.backpressure);
        Self::add(&self.refused, "reason", "user_limited", c.user_limited);
        Self::add(&self.awards, "delivery", "written", c.awards_written);
        Self::add(&self.awards, "delivery", "phone_gone", c.awards_orphaned);
        Self::add(&self.awards, "delivery", "owed_written", c.awards_owed_written);
        Self::add(&self.batch_answers, "outcome", "mismatched", c.answers_mismatched);
        Self::add(&self.batch_answers, "outcome", "unknown", c.answers_unknown);
        Self::add(&self.award_acks, "outcome", "accepted", c.acks_accepted);
        Self::add(&self.award_acks, "outcome", "unknown_award", c.acks_unknown);
        Self::add(&self.award_acks, "outcome", "wrong_user", c.acks_wrong_user);
        Self::add(&self.batch_answers, "outcome", "matched", c.answer_rtt_us.len() as u64);
        for rtt_us in c.answer_rtt_us {
            self.allocator_rtt_seconds.observe(rtt_us as f64 / 1e6);
        }
    }

    /// Adds an event-loop worker's driver counters since `was`, and its busy share since then.
    pub fn add_loop_stats(
        &self,
        worker: u16,
        was: &shake_loop::driver::DriverStats,
        is: &shake_loop::driver::DriverStats,
    ) {
        let d = |a: u64, b: u64| b.saturating_sub(a);
        Self::add(&self.datagrams, "direction", "in", d(was.datagrams_in, is.datagrams_in));
        Self::add(&self.datagrams, "direction", "out", d(was.datagrams_out, is.datagrams_out));
        Self::add(
            &self.datagrams,
            "direction",
            "forwarded_in",
            d(was.forwarded_in, is.forwarded_in),
        );
        Self::add(
            &self.datagrams,
            "direction",
            "forwarded_out",
            d(was.forwarded_out, is.forwarded_out),
        );
        Self::add(
            &self.datagrams,
            "direction",
            "forward_dropped",
            d(was.forward_drops, is.forward_drops),
        );
        Self::add(
            &self.datagrams,
            "direction",
            "send_failed",
            d(was.send_failures, is.send_failures),
        );
        for (bucket, name) in RECEIVE_WAIT_LABELS.iter().enumerate() {
            let n = d(was.queue_wait[bucket], is.queue_wait[bucket]);
            Self::add(&self.receive_waits, "waited", name, n);
            let n = d(was.turn_took[bucket], is.turn_took[bucket]);
            Self::add(&self.loop_turns, "took", name, n);
        }
        self.kernel_drops.inc_by(d(was.kernel_drops, is.kernel_drops));
        Self::add(&self.shed, "how", "dropped", d(was.shed, is.shed));
        let wall = d(was.wall_us, is.wall_us);
        if wall > 0 {
            let busy = d(was.busy_us, is.busy_us) as f64 / wall as f64;
            self.loop_busy.get_or_create(&vec![("worker", worker.to_string())]).set(busy);
        }
    }

    /// A worker's overload state after judging an interval.
    pub fn set_overload(
        &self,
        worker: u16,
        pace_ms: u32,
        verdict: &crate::overload::IntervalVerdict,
    ) {
        let labels = vec![("worker", worker.to_string())];
        self.pace_ms.get_or_create(&labels).set(i64::from(pace_ms));
        self.overloaded.get_or_create(&labels).set(i64::from(verdict.over));
        self.shedding.get_or_create(&labels).set(i64::from(verdict.shedding));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // invariant: writing into a String cannot fail.
        encode(&mut out, &self.registry).expect("encoding metrics into a String");
        out
    }
}
