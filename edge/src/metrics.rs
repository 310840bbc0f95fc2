//! The edge's Prometheus metrics. Workers count in plain integers on their own thread and add
//! them here every 100 ms, so the per-shake path touches no shared cache line.
//!
//! Each labelled family is keyed by a label-set struct whose values are enums declared with
//! [`shake_ops::label_values!`]: the exported names (`verdict="no_luck"`) are what the
//! dashboards, scripts and tests read, so each is written once, beside its variant, and the
//! test at the end pins them all.

use std::hash::Hash;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use shake_ops::labels::export_from_zero as zero;
use shake_proto::ErrorCode;

use crate::award_book::AckVerdict;
use crate::handshakes::HandshakeOutcome;

shake_ops::label_values! {
    /// A shake's verdict, as `shake_proto::Verdict` names it.
    pub enum Verdict {
        NoLuck => "no_luck",
        SlowDown => "slow_down",
        RoundClosed => "round_closed",
        Forwarded => "forwarded",
    }
}

shake_ops::label_values! {
    /// Why the edge dropped input of its own accord (see [`DropReason`] for the protocol's).
    pub enum Dropped {
        /// An admitted shake answered no-luck because too many batches awaited answers.
        Backpressure => "backpressure",
        /// A phone's datagram that was not a well-formed shake.
        MalformedDatagram => "malformed_datagram",
        /// A shake datagram before the session's `Welcome`.
        ShakeBeforeWelcome => "shake_before_welcome",
        /// A frame for a phone whose outbox was full.
        OutboxFull => "outbox_full",
        /// A broadcast to a worker's phones that its broadcast queue had no room for.
        BroadcastQueueFull => "broadcast_queue_full",
        /// A phone's award acknowledgement that the queue to the allocator had no room for
        /// (the link was down a long time): the award stays undelivered in the ledger.
        AwardAckQueueFull => "award_ack_queue_full",
        /// A new session's request for what the allocator owes its user that the queue had no
        /// room for: the owed awards wait for the user's next session.
        OwedRequestQueueFull => "owed_request_queue_full",
        /// A datagram from a phone whose session is closing or gone, or that did not say it
        /// accepts datagrams.
        DatagramOutsideSession => "datagram_outside_session",
    }
}

shake_ops::label_values! {
    /// Shakes answered without being forwarded, by reason.
    pub enum Refusal {
        /// The allocator found the user over the per-user rate.
        UserLimited => "user_limited",
    }
}

shake_ops::label_values! {
    /// What became of an award from the allocator.
    pub enum Delivery {
        /// Written to its phone.
        Written => "written",
        /// Its phone had left (it stays undelivered in the ledger).
        PhoneGone => "phone_gone",
        /// Owed to a user and written to the user's new session.
        OwedWritten => "owed_written",
    }
}

shake_ops::label_values! {
    /// An allocator answer, matched to the batch in flight or not.
    pub enum Answer {
        /// Announced.
        Matched => "matched",
        /// The digest of another batch: nothing announced.
        Mismatched => "mismatched",
        /// No such batch in flight.
        Unknown => "unknown",
    }
}

shake_ops::label_values! {
    /// Which way an event-loop worker's datagram went.
    pub enum Direction {
        /// Received.
        In => "in",
        /// Sent.
        Out => "out",
        /// Handed over by another worker (this one owns the connection).
        ForwardedIn => "forwarded_in",
        /// Handed to the worker owning the connection.
        ForwardedOut => "forwarded_out",
        /// A hand-over that found the owner's queue full.
        ForwardDropped => "forward_dropped",
        /// The kernel refused to send it (dropped, as a lost packet).
        SendFailed => "send_failed",
        /// The loop's send queue was full (dropped, as a lost packet).
        TransmitDropped => "transmit_dropped",
    }
}

shake_ops::label_values! {
    /// A bucket of `shake_loop::driver::DriverStats::queue_wait` and `turn_took`, in their
    /// order.
    pub enum WaitBucket {
        Under250us => "under_250us",
        From250usTo1ms => "250us_to_1ms",
        From1To10ms => "1_to_10ms",
        From10To100ms => "10_to_100ms",
        Over100ms => "over_100ms",
    }
}

shake_ops::label_values! {
    /// Which time of the event loop's long turns (`shake_loop::driver::LONG_TURN_US` or
    /// more) a `shake_edge_loop_long_turn_seconds_total` counts.
    pub enum LongTurnTime {
        /// By the wall clock.
        Wall => "wall",
        /// On the CPU: what the worker's thread ran. Far less than `wall` means the turns were
        /// held off the core.
        OnCpu => "on_cpu",
    }
}

shake_ops::label_values! {
    /// How a shake was shed for load.
    pub enum Shed {
        /// A shake-sized datagram that waited past the queue delay limit, before decryption.
        Dropped => "dropped",
        /// A shake that waited past the target while a standing queue lasted, answered
        /// `SlowDown`.
        SlowDown => "slow_down",
    }
}

/// Labels of `shake_edge_receive_waits_total` and `shake_edge_loop_turns_total`, one per
/// bucket of `shake_loop::driver::DriverStats::queue_wait` (and `turn_took`), in its order.
pub const RECEIVE_WAIT_LABELS: [WaitBucket; 5] = WaitBucket::ALL;

/// Why input was dropped: the edge's own reason, or the protocol's fixed name for what it
/// refused (`DecodeError::label()` of a control frame, `TokenError::label()` of a token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The edge's own reason.
    Edge(Dropped),
    /// A label from `shake_proto`, exported as it is.
    Protocol(&'static str),
}

impl From<Dropped> for DropReason {
    fn from(reason: Dropped) -> Self {
        DropReason::Edge(reason)
    }
}

impl EncodeLabelValue for DropReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        match self {
            DropReason::Edge(reason) => reason.encode(encoder),
            DropReason::Protocol(label) => label.encode(encoder),
        }
    }
}

/// `shake_edge_handshakes_total{outcome}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// How the attempt ended (or what was decided on its first packet).
    pub outcome: HandshakeOutcome,
}

/// `shake_edge_sessions_closed_total{code}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SessionClosedLabels {
    /// [`ErrorCode::name`].
    pub code: &'static str,
}

/// `shake_edge_allocator_streams_refused_total{code}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusedStreamLabels {
    /// [`ErrorCode::name`].
    pub code: &'static str,
}

/// `shake_edge_verdicts_total{verdict}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct VerdictLabels {
    /// The verdict.
    pub verdict: Verdict,
}

/// `shake_edge_drops_total{reason}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DropLabels {
    /// Why.
    pub reason: DropReason,
}

/// `shake_edge_shakes_refused_total{reason}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusalLabels {
    /// Why.
    pub reason: Refusal,
}

/// `shake_edge_awards_total{delivery}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// What became of the award.
    pub delivery: Delivery,
}

/// `shake_edge_batch_answers_total{outcome}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AnswerLabels {
    /// Matched or not.
    pub outcome: Answer,
}

/// `shake_edge_award_acks_total{outcome}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AwardAckLabels {
    /// The award book's verdict.
    pub outcome: AckVerdict,
}

/// `shake_edge_datagrams_total{direction}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DatagramLabels {
    /// Which way.
    pub direction: Direction,
}

/// `shake_edge_receive_waits_total{waited}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReceiveWaitLabels {
    /// How long the datagram waited in the socket.
    pub waited: WaitBucket,
}

/// `shake_edge_loop_turns_total{took}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LoopTurnLabels {
    /// How long the turn worked.
    pub took: WaitBucket,
}

/// `shake_edge_loop_long_turn_seconds_total{time}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LongTurnLabels {
    /// Which time.
    pub time: LongTurnTime,
}

/// `shake_edge_shed_total{how}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ShedLabels {
    /// How.
    pub how: Shed,
}

/// The per-worker gauges' `{worker}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WorkerLabels {
    /// The worker's index.
    pub worker: u16,
}

/// Every metric the edge exports.
#[derive(Debug)]
pub struct EdgeMetrics {
    registry: Registry,
    /// Phones connected (after a valid Hello).
    pub phones: Gauge,
    /// Handshakes by outcome ([`HandshakeOutcome`]).
    pub handshakes: Family<HandshakeLabels, Counter>,
    /// Connections counted against `max_handshakes` now (from the first packet until `Hello`),
    /// whole edge, as of each worker's last second.
    pub handshakes_in_progress: Gauge,
    /// Sessions closed by the edge, by error code name.
    pub sessions_closed: Family<SessionClosedLabels, Counter>,
    /// Shake verdicts by reason.
    pub verdicts: Family<VerdictLabels, Counter>,
    /// Drops by reason ([`DropReason`]: malformed datagrams, shakes before Hello...).
    pub drops: Family<DropLabels, Counter>,
    /// Entries per batch sent.
    pub batch_entries: Histogram,
    /// Batch flush to answer, seconds.
    pub allocator_rtt_seconds: Histogram,
    /// Batches awaiting an answer.
    pub in_flight_batches: Gauge,
    /// Batches resent after a reconnect.
    pub batches_resent: Counter,
    /// Awards from the allocator by [`Delivery`]: written to phones, or whose phone had left.
    pub awards: Family<DeliveryLabels, Counter>,
    /// Allocator link up (1) or down (0).
    pub allocator_up: Gauge,
    /// How far the allocator's wall clock runs ahead of this edge's, milliseconds (its last
    /// `Heartbeat`, to a link delay's error; negative: behind).
    pub allocator_clock_ahead_ms: Gauge,
    /// Worker streams the allocator closed on purpose, by error code name.
    pub allocator_streams_refused: Family<RefusedStreamLabels, Counter>,
    /// Round states received from the allocator (all workers).
    pub round_states: Counter,
    /// Answers from the allocator by outcome ([`Answer`]): matched and announced, or not.
    pub batch_answers: Family<AnswerLabels, Counter>,
    /// Award acknowledgements from phones by outcome ([`AckVerdict`]).
    pub award_acks: Family<AwardAckLabels, Counter>,
    /// Awards sent to phones and not yet acknowledged (the award book).
    pub awards_outstanding: Gauge,
    /// UDP datagrams of the event-loop workers, by [`Direction`] (in, out, handed between
    /// workers, dropped on the way).
    pub datagrams: Family<DatagramLabels, Counter>,
    /// Datagrams of the event-loop workers by how long they waited in the socket before the
    /// worker read them (kernel receive timestamps): see [`RECEIVE_WAIT_LABELS`].
    pub receive_waits: Family<ReceiveWaitLabels, Counter>,
    /// Turns of the event-loop workers by how long they worked (same buckets as
    /// `receive_waits`): a long turn is a wait for every datagram arriving meanwhile.
    pub loop_turns: Family<LoopTurnLabels, Counter>,
    /// Wall and on-CPU time of the turns that took 10 ms or more ([`LongTurnTime`]).
    pub long_turn_seconds: Family<LongTurnLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// Times the scheduler took the core from a worker in those turns: long turns held off
    /// the core with none of these were held by what the guest does not schedule.
    pub long_turn_preemptions: Counter,
    /// Shakes answered without being forwarded, by reason ([`Refusal`]).
    pub refused: Family<RefusalLabels, Counter>,
    /// Users with a live session (one per user: a newer session supersedes the older).
    pub users_live: Gauge,
    /// Each event-loop worker's busy share over the last 100 ms (0 to 1).
    pub loop_busy: Family<WorkerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Datagrams the kernel dropped on the workers' sockets for want of buffer room.
    pub kernel_drops: Counter,
    /// Shakes shed for load, by how ([`Shed`]): dropped before decryption, or answered
    /// `SlowDown`.
    pub shed: Family<ShedLabels, Counter>,
    /// `Pace` frames told to phones (with their answers).
    pub paces_told: Counter,
    /// The shake interval each worker asks of its phones, milliseconds.
    pub pace_ms: Family<WorkerLabels, Gauge>,
    /// Sessions each worker holds state for: connections handshaking, waiting for `Hello`,
    /// serving or closing (set once a second).
    pub sessions_held: Family<WorkerLabels, Gauge>,
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
            handshakes_in_progress: Gauge::default(),
            sessions_closed: Family::default(),
            verdicts: Family::default(),
            drops: Family::default(),
            batch_entries: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
            allocator_rtt_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            in_flight_batches: Gauge::default(),
            batches_resent: Counter::default(),
            awards: Family::default(),
            allocator_up: Gauge::default(),
            allocator_streams_refused: Family::default(),
            allocator_clock_ahead_ms: Gauge::default(),
            round_states: Counter::default(),
            batch_answers: Family::default(),
            award_acks: Family::default(),
            awards_outstanding: Gauge::default(),
            datagrams: Family::default(),
            receive_waits: Family::default(),
            loop_turns: Family::default(),
            long_turn_seconds: Family::default(),
            long_turn_preemptions: Counter::default(),
            refused: Family::default(),
            users_live: Gauge::default(),
            loop_busy: Family::default(),
            kernel_drops: Counter::default(),
            shed: Family::default(),
            paces_told: Counter::default(),
            pace_ms: Family::default(),
            sessions_held: Family::default(),
            overloaded: Family::default(),
            shedding: Family::default(),
        };
        let mut registry = Registry::with_prefix("shake_edge");
        registry.register("phones", "Phones connected", m.phones.clone());
        registry.register("handshakes", "Handshakes by outcome", m.handshakes.clone());
        registry.register(
            "handshakes_in_progress",
            "Connections counted against max_handshakes (first packet until Hello), whole edge",
            m.handshakes_in_progress.clone(),
        );
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
        registry.register(
            "allocator_clock_ahead_ms",
            "How far the allocator's wall clock runs ahead of this edge's, ms (negative: behind)",
            m.allocator_clock_ahead_ms.clone(),
        );
        registry.register(
            "allocator_streams_refused",
            "Worker streams the allocator closed on purpose (UNSUPPORTED_VERSION, DUPLICATE_WORKER...)",
            m.allocator_streams_refused.clone(),
        );
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
            "loop_long_turn_seconds",
            "Wall and on-CPU time of event-loop turns that took 10 ms or more",
            m.long_turn_seconds.clone(),
        );
        registry.register(
            "loop_long_turn_preemptions",
            "Times the scheduler took the core from a worker in a turn of 10 ms or more",
            m.long_turn_preemptions.clone(),
        );
        registry.register(
            "sessions_held",
            "Sessions a worker holds state for (handshaking, waiting for Hello, serving, closing)",
            m.sessions_held.clone(),
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
        // Every series of a closed set of label values exported from 0: `increase()` and
        // `rate()` see no increase in a series' first sample, so `ShakeAllocatorRefusesEdge`
        // would miss a process's first refusal of a code, `ShakeEdgeRefusingHandshakes` a
        // worker's first interval over its target, and a dashboard's rate of drops or sheds
        // the first burst of each. Open sets (a session's close code, a protocol's drop label,
        // a worker's index) show at their first count.
        let refusals =
            crate::link_pipe::REFUSAL_CODES.map(|c| RefusedStreamLabels { code: c.name() });
        zero(&m.allocator_streams_refused, refusals);
        zero(&m.handshakes, HandshakeOutcome::ALL.map(|outcome| HandshakeLabels { outcome }));
        zero(&m.award_acks, AckVerdict::ALL.map(|outcome| AwardAckLabels { outcome }));
        zero(&m.datagrams, Direction::ALL.map(|direction| DatagramLabels { direction }));
        zero(&m.verdicts, Verdict::ALL.map(|verdict| VerdictLabels { verdict }));
        zero(&m.drops, Dropped::ALL.map(|reason| DropLabels { reason: reason.into() }));
        zero(&m.refused, Refusal::ALL.map(|reason| RefusalLabels { reason }));
        zero(&m.awards, Delivery::ALL.map(|delivery| DeliveryLabels { delivery }));
        zero(&m.batch_answers, Answer::ALL.map(|outcome| AnswerLabels { outcome }));
        zero(&m.shed, Shed::ALL.map(|how| ShedLabels { how }));
        zero(&m.receive_waits, WaitBucket::ALL.map(|waited| ReceiveWaitLabels { waited }));
        zero(&m.loop_turns, WaitBucket::ALL.map(|took| LoopTurnLabels { took }));
        zero(&m.long_turn_seconds, LongTurnTime::ALL.map(|time| LongTurnLabels { time }));
        Self { registry, ..m }
    }

    /// Adds `n` to the counter of `labels` (nothing, not even the series, when `n` is 0).
    pub fn add<S: Clone + Eq + Hash>(family: &Family<S, Counter>, labels: &S, n: u64) {
        if n > 0 {
            family.get_or_create(labels).inc_by(n);
        }
    }

    /// Counts one handshake that ended (or was decided) as `outcome`.
    pub fn count_handshake(&self, outcome: HandshakeOutcome) {
        Self::add(&self.handshakes, &HandshakeLabels { outcome }, 1);
    }

    /// Counts one session the edge closed with `code`.
    pub fn count_session_closed(&self, code: ErrorCode) {
        Self::add(&self.sessions_closed, &SessionClosedLabels { code: code.name() }, 1);
    }

    /// Counts `n` inputs dropped for `reason`.
    pub fn count_drops(&self, reason: impl Into<DropReason>, n: u64) {
        Self::add(&self.drops, &DropLabels { reason: reason.into() }, n);
    }

    /// Adds what a worker's core counted since its last report.
    pub fn add_core_counts(&self, c: crate::core::Counts) {
        let verdicts = |verdict, n| Self::add(&self.verdicts, &VerdictLabels { verdict }, n);
        verdicts(Verdict::NoLuck, c.no_luck);
        verdicts(Verdict::SlowDown, c.slow_down);
        verdicts(Verdict::RoundClosed, c.round_closed);
        verdicts(Verdict::Forwarded, c.forwarded);
        self.count_drops(Dropped::Backpressure, c.backpressure);
        Self::add(&self.refused, &RefusalLabels { reason: Refusal::UserLimited }, c.user_limited);
        let awards = |delivery, n| Self::add(&self.awards, &DeliveryLabels { delivery }, n);
        awards(Delivery::Written, c.awards_written);
        awards(Delivery::PhoneGone, c.awards_orphaned);
        awards(Delivery::OwedWritten, c.awards_owed_written);
        let answers = |outcome, n| Self::add(&self.batch_answers, &AnswerLabels { outcome }, n);
        answers(Answer::Mismatched, c.answers_mismatched);
        answers(Answer::Unknown, c.answers_unknown);
        answers(Answer::Matched, c.answer_rtt_us.len() as u64);
        let acks = |outcome, n| Self::add(&self.award_acks, &AwardAckLabels { outcome }, n);
        acks(AckVerdict::Accepted, c.acks_accepted);
        acks(AckVerdict::Unknown, c.acks_unknown);
        acks(AckVerdict::WrongUser, c.acks_wrong_user);
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
        let datagrams = |direction, n| Self::add(&self.datagrams, &DatagramLabels { direction }, n);
        datagrams(Direction::In, d(was.datagrams_in, is.datagrams_in));
        datagrams(Direction::Out, d(was.datagrams_out, is.datagrams_out));
        datagrams(Direction::ForwardedIn, d(was.forwarded_in, is.forwarded_in));
        datagrams(Direction::ForwardedOut, d(was.forwarded_out, is.forwarded_out));
        datagrams(Direction::ForwardDropped, d(was.forward_drops, is.forward_drops));
        datagrams(Direction::SendFailed, d(was.send_failures, is.send_failures));
        datagrams(Direction::TransmitDropped, d(was.transmit_drops, is.transmit_drops));
        for (bucket, wait) in RECEIVE_WAIT_LABELS.into_iter().enumerate() {
            let n = d(was.queue_wait[bucket], is.queue_wait[bucket]);
            Self::add(&self.receive_waits, &ReceiveWaitLabels { waited: wait }, n);
            let n = d(was.turn_took[bucket], is.turn_took[bucket]);
            Self::add(&self.loop_turns, &LoopTurnLabels { took: wait }, n);
        }
        let long = |time, was_us, is_us| {
            let seconds = d(was_us, is_us) as f64 / 1e6;
            if seconds > 0.0 {
                self.long_turn_seconds.get_or_create(&LongTurnLabels { time }).inc_by(seconds);
            }
        };
        long(LongTurnTime::Wall, was.long_turn_wall_us, is.long_turn_wall_us);
        long(LongTurnTime::OnCpu, was.long_turn_cpu_us, is.long_turn_cpu_us);
        self.long_turn_preemptions.inc_by(d(was.long_turn_preemptions, is.long_turn_preemptions));
        self.kernel_drops.inc_by(d(was.kernel_drops, is.kernel_drops));
        Self::add(&self.shed, &ShedLabels { how: Shed::Dropped }, d(was.shed, is.shed));
        let wall = d(was.wall_us, is.wall_us);
        if wall > 0 {
            let busy = d(was.busy_us, is.busy_us) as f64 / wall as f64;
            self.loop_busy.get_or_create(&WorkerLabels { worker }).set(busy);
        }
    }

    /// A worker's overload state after judging an interval.
    pub fn set_overload(
        &self,
        worker: u16,
        pace_ms: u32,
        verdict: &crate::overload::IntervalVerdict,
    ) {
        let labels = WorkerLabels { worker };
        self.pace_ms.get_or_create(&labels).set(i64::from(pace_ms));
        self.overloaded.get_or_create(&labels).set(i64::from(verdict.over));
        self.shedding.get_or_create(&labels).set(i64::from(verdict.shedding));
    }

    /// A worker stream the allocator closed with `code`.
    pub fn count_allocator_refusal(&self, code: ErrorCode) {
        Self::add(&self.allocator_streams_refused, &RefusedStreamLabels { code: code.name() }, 1);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        shake_ops::http::exposition(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use shake_loop::driver::DriverStats;
    use shake_proto::{DecodeError, TokenError};

    use super::*;

    /// Every labelled series, as deploy/grafana, scripts/*.sh and the tests read it: a renamed
    /// variant text or label field fails here before it breaks a dashboard.
    const EXPECTED: &str = r#"
shake_edge_allocator_streams_refused_total{code="DUPLICATE_WORKER"}
shake_edge_allocator_streams_refused_total{code="UNSUPPORTED_VERSION"}
shake_edge_award_acks_total{outcome="accepted"}
shake_edge_award_acks_total{outcome="unknown_award"}
shake_edge_award_acks_total{outcome="wrong_user"}
shake_edge_awards_total{delivery="owed_written"}
shake_edge_awards_total{delivery="phone_gone"}
shake_edge_awards_total{delivery="written"}
shake_edge_batch_answers_total{outcome="matched"}
shake_edge_batch_answers_total{outcome="mismatched"}
shake_edge_batch_answers_total{outcome="unknown"}
shake_edge_datagrams_total{direction="forward_dropped"}
shake_edge_datagrams_total{direction="forwarded_in"}
shake_edge_datagrams_total{direction="forwarded_out"}
shake_edge_datagrams_total{direction="in"}
shake_edge_datagrams_total{direction="out"}
shake_edge_datagrams_total{direction="send_failed"}
shake_edge_datagrams_total{direction="transmit_dropped"}
shake_edge_drops_total{reason="award_ack_queue_full"}
shake_edge_drops_total{reason="backpressure"}
shake_edge_drops_total{reason="broadcast_queue_full"}
shake_edge_drops_total{reason="datagram_outside_session"}
shake_edge_drops_total{reason="expired"}
shake_edge_drops_total{reason="malformed_datagram"}
shake_edge_drops_total{reason="outbox_full"}
shake_edge_drops_total{reason="owed_request_queue_full"}
shake_edge_drops_total{reason="shake_before_welcome"}
shake_edge_drops_total{reason="truncated"}
shake_edge_handshakes_total{outcome="accepted"}
shake_edge_handshakes_total{outcome="failed"}
shake_edge_handshakes_total{outcome="ignored"}
shake_edge_handshakes_total{outcome="overloaded"}
shake_edge_handshakes_total{outcome="rate_limited"}
shake_edge_handshakes_total{outcome="refused"}
shake_edge_handshakes_total{outcome="retried"}
shake_edge_handshakes_total{outcome="timed_out"}
shake_edge_loop_busy_ratio{worker="12"}
shake_edge_loop_busy_ratio{worker="3"}
shake_edge_loop_long_turn_seconds_total{time="on_cpu"}
shake_edge_loop_long_turn_seconds_total{time="wall"}
shake_edge_loop_turns_total{took="10_to_100ms"}
shake_edge_loop_turns_total{took="1_to_10ms"}
shake_edge_loop_turns_total{took="250us_to_1ms"}
shake_edge_loop_turns_total{took="over_100ms"}
shake_edge_loop_turns_total{took="under_250us"}
shake_edge_overloaded{worker="3"}
shake_edge_pace_ms{worker="3"}
shake_edge_receive_waits_total{waited="10_to_100ms"}
shake_edge_receive_waits_total{waited="1_to_10ms"}
shake_edge_receive_waits_total{waited="250us_to_1ms"}
shake_edge_receive_waits_total{waited="over_100ms"}
shake_edge_receive_waits_total{waited="under_250us"}
shake_edge_sessions_closed_total{code="HELLO_TIMEOUT"}
shake_edge_sessions_closed_total{code="SESSION_SUPERSEDED"}
shake_edge_sessions_held{worker="3"}
shake_edge_shakes_refused_total{reason="user_limited"}
shake_edge_shed_total{how="dropped"}
shake_edge_shed_total{how="slow_down"}
shake_edge_shedding{worker="3"}
shake_edge_verdicts_total{verdict="forwarded"}
shake_edge_verdicts_total{verdict="no_luck"}
shake_edge_verdicts_total{verdict="round_closed"}
shake_edge_verdicts_total{verdict="slow_down"}
"#;

    #[test]
    fn every_label_keeps_its_exported_name() {
        let m = EdgeMetrics::new();
        m.add_core_counts(crate::core::Counts {
            no_luck: 1,
            slow_down: 1,
            round_closed: 1,
            forwarded: 1,
            backpressure: 1,
            user_limited: 1,
            awards_written: 1,
            awards_orphaned: 1,
            awards_owed_written: 1,
            answers_mismatched: 1,
            answers_unknown: 1,
            acks_accepted: 1,
            acks_unknown: 1,
            acks_wrong_user: 1,
            answer_rtt_us: vec![5],
        });
        let is = DriverStats {
            datagrams_in: 1,
            datagrams_out: 1,
            forwarded_in: 1,
            forwarded_out: 1,
            forward_drops: 1,
            transmit_drops: 1,
            send_failures: 1,
            queue_wait: [1; 5],
            turn_took: [1; 5],
            shed: 1,
            wall_us: 4,
            busy_us: 1,
            long_turn_wall_us: 10_000,
            long_turn_cpu_us: 100,
            long_turn_preemptions: 1,
            ..DriverStats::default()
        };
        m.add_loop_stats(3, &DriverStats::default(), &is);
        m.add_loop_stats(12, &DriverStats::default(), &is);
        let verdict = crate::overload::IntervalVerdict { over: true, ..Default::default() };
        m.set_overload(3, 250, &verdict);
        m.sessions_held.get_or_create(&WorkerLabels { worker: 3 }).set(7);
        for outcome in HandshakeOutcome::ALL {
            m.count_handshake(outcome);
        }
        m.count_session_closed(ErrorCode::SessionSuperseded);
        m.count_session_closed(ErrorCode::HelloTimeout);
        m.count_allocator_refusal(ErrorCode::UnsupportedVersion);
        m.count_allocator_refusal(ErrorCode::DuplicateWorker);
        for reason in Dropped::ALL {
            m.count_drops(reason, 1);
        }
        m.count_drops(DropReason::Protocol(DecodeError::Truncated.label()), 1);
        m.count_drops(DropReason::Protocol(TokenError::Expired.label()), 1);
        EdgeMetrics::add(&m.shed, &ShedLabels { how: Shed::SlowDown }, 1);

        let text = m.render();
        let expected: Vec<&str> = EXPECTED.trim().lines().collect();
        assert_eq!(shake_ops::labels::labelled_series(&text), expected);
    }

    /// A series of an open label set is not made by a count of 0.
    #[test]
    fn nothing_is_exported_for_a_zero_count() {
        let m = EdgeMetrics::new();
        m.count_drops(DropReason::Protocol(DecodeError::Truncated.label()), 0);
        let text = m.render();
        assert!(!text.contains("reason=\"truncated\""), "{text}");
    }

    /// Series whose label values the edge does not know before it counts them: a session's
    /// close code, a protocol's drop label, a worker's index.
    fn of_an_open_label_set(series: &str) -> bool {
        ["{worker=", "sessions_closed_total{", "reason=\"truncated\"", "reason=\"expired\""]
            .iter()
            .any(|open| series.contains(open))
    }

    /// Every series of a closed label set (the alerts' and dashboards' rates) is there at 0
    /// before its first count; [`EXPECTED`] is the list.
    #[test]
    fn series_of_closed_label_sets_are_exported_from_zero() {
        let text = EdgeMetrics::new().render();
        let closed: Vec<&str> =
            EXPECTED.trim().lines().filter(|series| !of_an_open_label_set(series)).collect();
        assert_eq!(closed.len(), 53, "{closed:?}");
        for series in closed {
            // `0` or, for the seconds counters, `0.0`.
            let zero = [format!("{series} 0\n"), format!("{series} 0.0\n")];
            assert!(zero.iter().any(|z| text.contains(z.as_str())), "{series}:\n{text}");
        }
    }
}
