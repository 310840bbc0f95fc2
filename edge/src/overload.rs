//! Overload control of one event-loop worker, sans-IO: what the worker can measure cheaply
//! (how long datagrams waited in its socket, the kernel's drops, its own busy share) judged
//! once an interval, and the three levers it pulls, cheapest first:
//!
//! 1. **Pace**: over its target, the worker raises the minimum shake interval its phones keep
//!    (`Pace`, told to each phone with its next answer) to what its capacity carries,
//!    `phones / (capacity * PACE_TARGET_LOAD)`, the capacity being the most it served per
//!    busy second in any interval of this overload (an interval spent answering the phones'
//!    loss probes serves few shakes and would read as a tiny capacity). The first raise goes
//!    there at once, with [`FIRST_RAISE_HEADROOM`] (the phones' own interval may be far above
//!    the configured one, so steps from it would be wasted); later ones are at least
//!    [`RAISE_MIN`] and at most [`RAISE_MAX`] times the last. Each raise is held while
//!    phones hear it: they hear it only with an answer, so for as long as the worker takes
//!    to answer each phone once. Calm for a second, it lowers the pace by what its load over
//!    the whole time at the current pace allows (to [`PACE_TARGET_LOAD`]; a quarter to a half
//!    at a time), but only once its phones have shaken at the current pace (one pace and its
//!    jitter after the last change: before that, phones still waiting out a slow-down make
//!    the load look lighter than it is) and never below what the overload's capacity carries
//!    until it has been calm for [`FORGET_US`] (hysteresis, so it does not oscillate).
//! 2. **Handshakes**: over its target, new handshakes are refused (CONNECTION_REFUSED, phones
//!    back off with jitter) before any established phone loses an answer: a handshake costs
//!    about ten shakes.
//! 3. **Shedding** (CoDel-style), in two ways, each where it costs least:
//!    - while the worker sheds (the last interval's shortest wait above the target, a
//!      standing queue rather than a burst; or kernel drops), a shake that waited longer than
//!      the target is answered `SlowDown` (retry after the pace) instead of going to the
//!      allocator: the phone stops at once and hears the pace, and the answer carries the ACK
//!      the shake needs anyway;
//!    - at any time, a datagram big enough to carry a shake that waited past the hard limit is
//!      dropped before decryption: its phone has long given it up.
//!
//!    Dropping is not the cheap answer it is for TCP-less UDP. A phone whose shake is not
//!    acknowledged within its probe timeout (its RTT plus the edge's 25 ms ACK delay) sends
//!    loss probes, each of which the edge must acknowledge: on the surge benchmark every shed
//!    shake came back as two to four datagrams, and shedding ACK-sized packets made the edge's
//!    own probes fire for every phone whose ACK it dropped, tens of thousands a second that
//!    crowded out every answer (docs/PERFORMANCE.md, "The round-open surge"). So ACK-sized
//!    packets are never dropped, and a shake is answered rather than dropped until it is
//!    hopeless.
//!
//! Before any of these, a worker that knows its capacity (configured, `shakes_per_core_s`, or
//! measured in its last overload) paces its phones before a round opens
//! ([`Overload::before_opening`]): the opening's crowd then arrives at the rate it answers, and
//! the levers above are left for what the forecast got wrong.
//!
//! The loop's busy share is the largest of the wall time its turns took, the CPU it used over
//! the CPU it may use ([`crate::cpu_allowance`]), and the CPU the whole process used over its
//! quota: in a container with a CPU limit the kernel throttles a worker long before its turns
//! fill the wall time, and the process's other threads spend the same quota.
//!
//! Time is an argument (`now_us`, monotonic); the loop feeds it its counters.

/// Settings (the edge configuration's `[overload]` section).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverloadSettings {
    /// Off: never pace, refuse or shed for load.
    pub enabled: bool,
    /// Queue delay target (CoDel's target), microseconds.
    pub target_us: u64,
    /// A shake-sized datagram that waited longer than this is dropped unanswered,
    /// microseconds.
    pub limit_us: u64,
    /// How often the worker judges its load (CoDel's interval), microseconds.
    pub interval_us: u64,
    /// The longest interval between shakes the worker asks of its phones, milliseconds.
    pub max_pace_ms: u32,
    /// Busy share over an interval at or above which the worker counts as over its target.
    pub busy_target: f64,
    /// Shakes one fully busy core answers per second (0: not known), for the pace set before
    /// a round opens ([`Overload::before_opening`]).
    pub shakes_per_core_s: f64,
}

/// The smallest short-header packet that can carry a shake: 1 byte of flags, an 8-byte
/// connection ID, a packet number, a DATAGRAM frame with a 14-byte shake (16 bytes), and the
/// 16-byte AEAD tag. ACK-only and PING packets are smaller and never shed.
pub const SHED_MIN_LEN: usize = 1 + shake_loop::cid::CID_LEN + 1 + 16 + 16;

/// Under overload the socket's receive buffer holds about this long of what the worker reads
/// (the kernel's queue is first in, first out: past the phones' probe timeout, about 25 ms
/// plus their RTT, what waits there is resent anyway).
pub const QUEUE_BUDGET_MS: u64 = 20;
/// Receive-buffer bytes per datagram of the budget, as `SO_RCVBUF` counts them (the kernel
/// charges about 1 KiB per small datagram and reports double what is asked).
pub const BUFFER_BYTES_PER_DATAGRAM: u64 = 512;
/// The smallest receive buffer asked for under overload.
pub const MIN_RECEIVE_BUFFER: usize = 64 * 1024;

/// Busy share under which an interval counts as calm (or under the busy target, if lower).
pub const BUSY_LOW: f64 = 0.6;
/// Calm intervals in a row before the pace is lowered one step.
pub const CALM_INTERVALS: u32 = 10;
/// A lowering step multiplies the pace by at most this (busier than `LOWER_STEP *
/// PACE_TARGET_LOAD` at the pace in force, it is not lowered)...
pub const LOWER_STEP: f64 = 0.75;
/// ...and at least this.
pub const LOWER_STEP_MIN: f64 = 0.5;
/// The share of its capacity a worker paces its phones to (headroom for phases that are not
/// perfectly even and for handshakes).
pub const PACE_TARGET_LOAD: f64 = 0.8;
/// One raise lengthens the interval phones keep at least this many times...
pub const RAISE_MIN: f64 = 1.5;
/// ...and, after the first raise of an overload, at most this many.
pub const RAISE_MAX: f64 = 2.5;
/// The first raise of an overload asks for this many times what the capacity carries: phones
/// hear the pace only as they are answered, and until the last has heard it the loss probes
/// of those not yet told take a share of the worker (about half on the surge benchmark, where
/// a first raise to what the capacity carries was followed by a second one a second later).
pub const FIRST_RAISE_HEADROOM: f64 = 1.5;
/// A raise is held at least this long, and at most [`HOLD_MAX_MS`], milliseconds.
pub const HOLD_MIN_MS: u64 = 500;
/// See [`HOLD_MIN_MS`].
pub const HOLD_MAX_MS: u64 = 3_000;
/// Calm this long after its last interval over target, a worker forgets the capacity it
/// measured then and may lower the pace below what that capacity carries, microseconds.
pub const FORGET_US: u64 = 30_000_000;
/// A worker that knows its capacity sets the pace for a round this long before it opens
/// (time for every phone to hear it while the worker is idle), microseconds.
pub const OPENING_LEAD_US: u64 = 3_000_000;
/// Before an opening, the pace is raised (and told to every phone) again only when what the
/// phones connected since need is this many times the pace already told.
pub const OPENING_RAISE_MIN: f64 = 1.1;
/// The pace set before an opening asks for this many times what the capacity per core carries:
/// that figure is measured warm and at full load, and the opening comes after idle seconds at
/// a lower rate, where a shake costs more (on the surge benchmark the workers measured 6,100 to
/// 6,800 shakes a second in the round against 7,100 to 7,500 from the configured figure, and
/// raised the pace half a second into it).
pub const OPENING_HEADROOM: f64 = 1.2;

/// What a full handshake costs a worker, microseconds (in memory, this project's 2-core VM:
/// 192-212 us; PERFORMANCE.md "Handshakes in memory"): to tell an interval of handshakes
/// from one of shakes.
const HANDSHAKE_COST_US: u64 = 200;
/// Past this share of an interval's busy time in handshakes, the interval does not measure
/// the capacity.
const HANDSHAKE_SHARE_MAX: f64 = 0.3;

/// The loop's cumulative counters at one instant (from `DriverStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoopReading {
    /// Datagrams read from the socket.
    pub datagrams_in: u64,
    /// Of those, shed before decryption.
    pub shed: u64,
    /// Datagrams the kernel dropped on the socket.
    pub kernel_drops: u64,
    /// Time the loop worked, microseconds.
    pub busy_us: u64,
    /// Time the loop ran, microseconds.
    pub wall_us: u64,
    /// CPU time the loop's thread used, microseconds (0 if unknown).
    pub cpu_us: u64,
    /// The share of one core the worker may use (its process's CPU quota over its workers,
    /// at most 1; not cumulative).
    pub cpu_allowance: f64,
    /// CPU time every thread of the process used, microseconds (0 if unknown).
    pub process_cpu_us: u64,
    /// The process's CPU quota in cores (0: none; not cumulative).
    pub process_quota: f64,
    /// Shakes the worker decided (answered or forwarded).
    pub shakes: u64,
    /// Handshakes the worker completed.
    pub handshakes: u64,
    /// Phones being served now (not cumulative).
    pub phones: u64,
}

/// What one interval looked like, as judged.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IntervalVerdict {
    /// Over target: a standing queue, kernel drops, or the loop at its busy target.
    pub over: bool,
    /// Shedding for the next interval.
    pub shedding: bool,
    /// Demand over what the loop served, estimated (1 when not over).
    pub overload: f64,
    /// The loop's busy share over the interval.
    pub busy: f64,
    /// The capacity the pace is set from, shakes per busy second (0: none measured).
    pub capacity_per_s: f64,
}

/// One worker's overload state.
#[derive(Debug, Clone)]
pub struct Overload {
    settings: OverloadSettings,
    interval_ends_us: u64,
    /// Shortest wait of a datagram in the socket this interval, and of the last one.
    min_wait_us: Option<u64>,
    last_min_wait_us: u64,
    at_start: LoopReading,
    verdict: IntervalVerdict,
    /// The worker's own pace, milliseconds (0: none).
    pace_ms: f64,
    calm: u32,
    /// No raise before this (phones need time to hear the last one).
    hold_until_us: u64,
    /// No lowering before this (phones need time to shake at the pace in force).
    lower_after_us: u64,
    /// The most shakes per busy second served in an interval of the current (or last)
    /// overload, and when the last interval over target ended.
    capacity_per_s: f64,
    last_over_us: Option<u64>,
    /// The counters when the pace last changed.
    since_change: LoopReading,
    /// Datagrams read per second over the last interval.
    read_per_s: u64,
    /// A round's opening the pace was set for and not yet reached: from then on the load at
    /// the pace is measured (the idle time before it would make it look light).
    opening_us: Option<u64>,
    /// What one core answered per second in the last overload (its capacity over the CPU
    /// allowance then; 0: none yet): what the next opening is paced from.
    measured_per_core_s: f64,
}

impl Overload {
    /// Calm, with no pacing of its own.
    pub fn new(settings: OverloadSettings, now_us: u64) -> Self {
        Self {
            settings,
            interval_ends_us: now_us + settings.interval_us,
            min_wait_us: None,
            last_min_wait_us: 0,
            at_start: LoopReading::default(),
            verdict: IntervalVerdict::default(),
            pace_ms: 0.0,
            calm: 0,
            hold_until_us: 0,
            lower_after_us: 0,
            capacity_per_s: 0.0,
            last_over_us: None,
            since_change: LoopReading::default(),
            read_per_s: 0,
            opening_us: None,
            measured_per_core_s: 0.0,
        }
    }

    /// Before a round opens (in `opens_in_us`, at most [`OPENING_LEAD_US`] away): with `phones`
    /// connected and the worker allowed `cpu_allowance` of a core, the interval at which its
    /// phones load it to [`PACE_TARGET_LOAD`] of what its capacity answers, with
    /// [`OPENING_HEADROOM`]; the capacity per core is what the worker measured in its last
    /// overload, or else the configured one (`shakes_per_core_s`). If the
    /// phones need that (it is above the pace in force, by [`OPENING_RAISE_MIN`] once raised),
    /// it becomes the pace, held until the phones have shaken at it after the opening, and is
    /// returned: the worker tells every phone before the opening, and spreads their first
    /// shakes over as long (`RoundInfo::start_spread_ms`), so the opening's crowd arrives at
    /// the rate the worker answers instead of queueing, and no phone sends a loss probe.
    /// `None`: nothing to tell (capacity neither measured nor configured, control off,
    /// phones within it).
    pub fn before_opening(
        &mut self,
        now_us: u64,
        opens_in_us: u64,
        phones: u64,
        cpu_allowance: f64,
        base_pace_ms: u32,
    ) -> Option<u32> {
        let per_core = if self.measured_per_core_s > 0.0 {
            self.measured_per_core_s
        } else {
            self.settings.shakes_per_core_s
        };
        if !self.settings.enabled || per_core <= 0.0 || opens_in_us > OPENING_LEAD_US {
            return None;
        }
        let capacity = per_core * cpu_allowance.clamp(0.001, 1.0);
        let needed_ms = (phones as f64 * 1000.0 * OPENING_HEADROOM / (capacity * PACE_TARGET_LOAD))
            .min(f64::from(self.settings.max_pace_ms));
        let in_force = f64::from(self.pace_ms(base_pace_ms));
        let raise_min = if self.opening_us.is_some() { OPENING_RAISE_MIN } else { 1.0 };
        if needed_ms <= in_force * raise_min {
            return None;
        }
        self.pace_ms = needed_ms;
        let opening_us = now_us + opens_in_us;
        self.opening_us = Some(opening_us);
        // Reactive raises wait for the opening (before it, nothing measured says more), and
        // lowering for the phones to have shaken at this pace after it.
        self.hold_until_us = opening_us;
        self.lower_after_us = self.after_one_pace(opening_us);
        Some(self.pace_ms(base_pace_ms))
    }

    /// A datagram of `len` bytes read after waiting `waited_us` in the socket (`None`:
    /// unstamped); `short` when it has a short header (an established connection's packet,
    /// not a handshake). False: drop it, before decryption.
    #[inline]
    pub fn admit(&mut self, waited_us: Option<u64>, short: bool, len: usize) -> bool {
        let Some(waited) = waited_us.filter(|_| self.settings.enabled) else { return true };
        self.min_wait_us = Some(self.min_wait_us.map_or(waited, |min| min.min(waited)));
        // Handshake packets go on: refusing new ones is decided on their first packet, and
        // those in progress are paid for already. So do ACKs (see the module's doc).
        !(waited > self.settings.limit_us && short && len >= SHED_MIN_LEN)
    }

    /// Whether a shake whose datagram waited `waited_us` is answered `SlowDown` rather than
    /// admitted: it waited past the target while the worker sheds (a standing queue, or the
    /// kernel dropping on its socket, in the last interval).
    #[inline]
    pub fn slow_down(&self, waited_us: Option<u64>) -> bool {
        self.verdict.shedding && waited_us.is_some_and(|w| w > self.settings.target_us)
    }

    /// Once a loop turn with the loop's counters; at the end of an interval judges it. Returns
    /// the verdict when an interval ended.
    pub fn on_turn(
        &mut self,
        now_us: u64,
        reading: LoopReading,
        base_pace_ms: u32,
    ) -> Option<IntervalVerdict> {
        if now_us < self.interval_ends_us {
            return None;
        }
        let span_us = (now_us - self.interval_ends_us + self.settings.interval_us).max(1);
        self.interval_ends_us = now_us + self.settings.interval_us;
        let was = std::mem::replace(&mut self.at_start, reading);
        if self.opening_us.is_some_and(|at| now_us >= at) {
            self.opening_us = None;
            self.since_change = reading;
        }
        let d = |a: u64, b: u64| b.saturating_sub(a);
        let read = d(was.datagrams_in, reading.datagrams_in);
        let shed = d(was.shed, reading.shed);
        let dropped = d(was.kernel_drops, reading.kernel_drops);
        let shakes = d(was.shakes, reading.shakes);
        self.read_per_s = read * 1_000_000 / span_us;
        let busy = busy_between(&was, &reading);
        let min_wait = self.min_wait_us.take().unwrap_or(0);
        let standing_queue = min_wait > self.settings.target_us;
        let over = self.settings.enabled
            && (standing_queue || dropped > 0 || busy >= self.settings.busy_target);
        // Demand over service: what arrived (read, or dropped by the kernel) over what was
        // served; and, for a queue still growing, its growth (a FIFO's wait grows at the rate
        // arrivals exceed service).
        let served = read.saturating_sub(shed).max(1);
        let by_counts = (read + dropped) as f64 / served as f64;
        let growth = min_wait.saturating_sub(self.last_min_wait_us) as f64 / span_us as f64;
        self.last_min_wait_us = min_wait;
        let overload = if over { by_counts.max(1.0 + growth) } else { 1.0 };
        self.verdict = IntervalVerdict {
            over,
            shedding: self.settings.enabled && (standing_queue || dropped > 0),
            overload,
            busy,
            capacity_per_s: 0.0,
        };
        let remembered = self.last_over_us.is_some_and(|at| now_us - at < FORGET_US);
        if over {
            self.calm = 0;
            if !remembered {
                // A new overload: what was measured in the last one no longer holds.
                self.capacity_per_s = 0.0;
            }
            self.last_over_us = Some(now_us);
            // An interval whose work was largely handshakes (a reconnect storm: another edge
            // drained) says nothing of what a core serves in shakes: measured over it, the
            // capacity read several times too low, paced every phone for it, and paced the next
            // opening by it. Such an interval leaves the capacity as it was.
            let handshakes = d(was.handshakes, reading.handshakes);
            // Busy time is wall time; under a CPU quota a worker's busy wall time holds only its
            // allowance of CPU, which is what handshakes cost.
            let allowance =
                if reading.cpu_allowance > 0.0 { reading.cpu_allowance.min(1.0) } else { 1.0 };
            let busy_cpu_us = busy.max(0.05) * span_us as f64 * allowance;
            let handshake_share = handshakes.saturating_mul(HANDSHAKE_COST_US) as f64 / busy_cpu_us;
            if shakes > 0 && handshake_share <= HANDSHAKE_SHARE_MAX {
                // What the worker served per second, over the share of the time it was busy.
                let served_per_s = shakes as f64 * 1e6 / span_us as f64 / busy.max(0.05);
                self.capacity_per_s = self.capacity_per_s.max(served_per_s);
                self.measured_per_core_s =
                    self.capacity_per_s / reading.cpu_allowance.clamp(0.001, 1.0);
            }
            if now_us >= self.hold_until_us && self.capacity_per_s > 0.0 {
                let carried_ms = self.carried_ms(reading.phones);
                let old_pace_ms = self.pace_ms(base_pace_ms);
                let old = f64::from(old_pace_ms);
                let raised = if self.pace_ms == 0.0 {
                    (carried_ms * FIRST_RAISE_HEADROOM).max(old * RAISE_MIN)
                } else if self.verdict.shedding {
                    carried_ms.clamp(old * RAISE_MIN, old * RAISE_MAX)
                } else {
                    // Busy, without a queue or drops: a wave of phones paced in one burst
                    // coming back together, unless the capacity says the pace is too short.
                    carried_ms.min(old * RAISE_MAX)
                };
                let raised = raised.min(f64::from(self.settings.max_pace_ms));
                if raised > old {
                    self.pace_ms = raised;
                    // Phones hear a pace only with an answer: every phone is answered once
                    // within its old interval, or within the time the worker takes to answer
                    // them all.
                    let answer_all_ms = reading.phones as f64 * 1000.0 / self.capacity_per_s;
                    let hold_ms = (old.max(answer_all_ms) as u64).clamp(HOLD_MIN_MS, HOLD_MAX_MS);
                    self.hold_until_us = now_us + hold_ms * 1000;
                    self.lower_after_us = self.after_one_pace(now_us);
                    self.since_change = reading;
                }
            }
        } else if busy < BUSY_LOW.min(self.settings.busy_target) && self.pace_ms > 0.0 {
            self.calm += 1;
            if self.calm >= CALM_INTERVALS && now_us >= self.lower_after_us {
                self.calm = 0;
                // The load over the whole time at this pace (phones come back from a raise in
                // waves, and one interval may be a trough), and the step that brings it to
                // the pace's target load, at most halving the pace.
                let mean_busy = busy_between(&self.since_change, &reading);
                let step = (mean_busy / PACE_TARGET_LOAD).max(LOWER_STEP_MIN);
                let floor_ms = if remembered { self.carried_ms(reading.phones) } else { 0.0 };
                let lowered = (self.pace_ms * step).max(floor_ms);
                if step <= LOWER_STEP && lowered < self.pace_ms {
                    self.since_change = reading;
                    self.pace_ms = lowered;
                    if self.pace_ms < f64::from(base_pace_ms) {
                        self.pace_ms = 0.0;
                    }
                    self.lower_after_us = self.after_one_pace(now_us);
                }
            }
        } else {
            self.calm = 0;
        }
        self.verdict.capacity_per_s = self.capacity_per_s;
        Some(self.verdict)
    }

    /// The interval at which `phones` shaking evenly load the worker to [`PACE_TARGET_LOAD`]
    /// of the capacity it measured in the last overload, milliseconds.
    fn carried_ms(&self, phones: u64) -> f64 {
        phones as f64 * 1000.0 / (self.capacity_per_s.max(1.0) * PACE_TARGET_LOAD)
    }

    /// When every phone has shaken at least once at the pace in force (a phone slowed down
    /// just now waits the pace and its jitter).
    fn after_one_pace(&self, now_us: u64) -> u64 {
        now_us + (self.pace_ms * (1.0 + shake_proto::SLOW_DOWN_JITTER_SHARE) * 1000.0) as u64
    }

    /// The interval phones are asked to keep, given the allocator's (never shorter).
    pub fn pace_ms(&self, base_pace_ms: u32) -> u32 {
        let own = self.pace_ms.round() as u32;
        own.min(self.settings.max_pace_ms).max(base_pace_ms)
    }

    /// The receive buffer to ask for (`SO_RCVBUF` bytes): while over target, about
    /// [`QUEUE_BUDGET_MS`] of what the worker reads; `None` (the configured one) otherwise.
    pub fn receive_buffer(&self) -> Option<usize> {
        if !self.verdict.over {
            return None;
        }
        let bytes = self.read_per_s * QUEUE_BUDGET_MS / 1000 * BUFFER_BYTES_PER_DATAGRAM;
        Some((bytes as usize).max(MIN_RECEIVE_BUFFER))
    }

    /// New handshakes are refused while the last interval was over target.
    pub fn refuse_handshakes(&self) -> bool {
        self.verdict.over
    }

    /// Whether an interval has ended by `now_us` (the next [`Overload::on_turn`] judges it).
    #[inline]
    pub fn due(&self, now_us: u64) -> bool {
        now_us >= self.interval_ends_us
    }
}

/// The loop's busy share between two readings: the share of the wall time its turns took, of
/// the CPU it may use that it used, or of the process's CPU quota that the whole process used,
/// whichever is highest (under a CPU quota the loop stalls off the core long before its turns
/// fill the wall time, and the process's other threads, its allocator link and metrics, spend
/// the same quota).
fn busy_between(was: &LoopReading, is: &LoopReading) -> f64 {
    let wall = is.wall_us.saturating_sub(was.wall_us);
    if wall == 0 {
        return 0.0;
    }
    let share = |a: u64, b: u64| b.saturating_sub(a) as f64 / wall as f64;
    let turns = share(was.busy_us, is.busy_us);
    let own = share(was.cpu_us, is.cpu_us) / is.cpu_allowance.clamp(0.001, 1.0);
    let process = if is.process_quota > 0.0 {
        share(was.process_cpu_us, is.process_cpu_us) / is.process_quota
    } else {
        0.0
    };
    turns.max(own).max(process).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000;

    fn settings() -> OverloadSettings {
        OverloadSettings {
            enabled: true,
            target_us: 5 * MS,
            limit_us: 100 * MS,
            interval_us: 100 * MS,
            max_pace_ms: 10_000,
            busy_target: 0.9,
            shakes_per_core_s: 0.0,
        }
    }

    /// Feeds one 100 ms interval: `n` datagrams (each a shake) that each waited `wait_us`, the
    /// loop `busy` of the interval, `drops` kernel drops; returns the verdict and how many
    /// were shed. The allocator's interval is 1 s.
    fn interval(
        o: &mut Overload,
        reading: &mut LoopReading,
        now_us: &mut u64,
        n: u64,
        wait_us: u64,
        busy: f64,
        drops: u64,
    ) -> (IntervalVerdict, u64) {
        let mut shed = 0;
        for _ in 0..n {
            if !o.admit(Some(wait_us), true, 60) {
                shed += 1;
            }
        }
        *now_us += 100 * MS;
        reading.datagrams_in += n;
        reading.shed += shed;
        reading.shakes += n - shed;
        reading.kernel_drops += drops;
        reading.busy_us += (busy * 100_000.0) as u64;
        reading.wall_us += 100 * MS;
        (o.on_turn(*now_us, *reading, 1_000).expect("an interval ended"), shed)
    }

    #[test]
    fn a_standing_queue_paces_refuses_then_sheds_and_calm_lowers_the_pace_step_by_step() {
        let mut o = Overload::new(settings(), 0);
        let mut reading = LoopReading { phones: 20_000, ..LoopReading::default() };
        let mut now = 0;
        // Calm: nothing changes, nothing is shed.
        let (v, shed) = interval(&mut o, &mut reading, &mut now, 1000, 200, 0.4, 0);
        assert!(!v.over && !v.shedding && shed == 0);
        assert_eq!(o.pace_ms(1_000), 1_000);
        assert!(!o.refuse_handshakes());
        // Calm, but one datagram waited past the limit: dropped all the same.
        assert!(!o.admit(Some(100 * MS + 1), true, 60));
        assert!(o.admit(Some(100 * MS), true, 60));
        assert!(!o.slow_down(Some(50 * MS)), "no slow-down without a standing queue");
        // A queue that grew by 15 ms in 100 ms: demand 15% over the service.
        let (v, shed) = interval(&mut o, &mut reading, &mut now, 1000, 15 * MS, 1.0, 0);
        assert!(v.over && v.shedding, "{v:?}");
        assert_eq!(shed, 0, "shedding under the limit starts with the next interval");
        assert!((v.overload - 1.148).abs() < 0.01, "{v:?}");
        // 1,000 shakes served in 100 ms fully busy: 10,000/s; 20,000 phones at 80% of it
        // shake every 2,500 ms, and a first raise has its headroom.
        let first = (2_500.0 * FIRST_RAISE_HEADROOM) as u32;
        assert_eq!(first, 3_750);
        assert_eq!(o.pace_ms(1_000), first, "the interval the capacity carries, and headroom");
        assert!(o.refuse_handshakes());
        // 10,000 datagrams a second read: the kernel may queue 20 ms of them.
        assert_eq!(o.receive_buffer(), Some(MIN_RECEIVE_BUFFER.max(200 * 512)));
        // Shedding now: shakes that waited past the target are slowed down, the rest admitted;
        // only what waited past the limit is dropped, and never a handshake or an ACK.
        assert!(o.slow_down(Some(6 * MS)));
        assert!(!o.slow_down(Some(4 * MS)));
        assert!(!o.slow_down(None));
        assert!(o.admit(Some(60 * MS), true, SHED_MIN_LEN));
        assert!(!o.admit(Some(200 * MS), true, SHED_MIN_LEN));
        assert!(o.admit(Some(200 * MS), false, 1200), "handshake packets are never dropped");
        assert!(o.admit(None, true, 60), "unstamped datagrams are never dropped");
        assert!(o.admit(Some(200 * MS), true, SHED_MIN_LEN - 1), "ACK-sized packets go through");
        // Still over, and more phones: held while phones hear the last raise.
        reading.phones = 40_000;
        let (v, shed) = interval(&mut o, &mut reading, &mut now, 1000, 50 * MS, 1.0, 0);
        assert!(v.over && v.shedding && shed == 0, "{v:?}");
        assert_eq!(o.pace_ms(1_000), first, "held while phones hear the last raise");
        // The queue is gone and the loop half busy: calm. Half the phones left, so the
        // capacity measured carries them at 1,250 ms.
        reading.phones = 10_000;
        let (v, _) = interval(&mut o, &mut reading, &mut now, 1000, 300, 0.5, 0);
        assert!(!v.over && !v.shedding && !o.refuse_handshakes());
        assert_eq!(o.receive_buffer(), None, "calm: the configured buffer again");
        // No lowering until the phones have shaken once at 3,750 ms (and its jitter) since
        // the raise at 200 ms: 4,887 ms.
        while now < 4_800 * MS {
            interval(&mut o, &mut reading, &mut now, 1000, 300, 0.5, 0);
            assert_eq!(o.pace_ms(1_000), first, "at {} ms", now / MS);
        }
        interval(&mut o, &mut reading, &mut now, 1000, 300, 0.5, 0);
        // Down by what the load at this pace allows: since the raise, one interval fully busy
        // and 46 half busy, 0.51 of the loop; to 80% load that is 0.64 of the pace.
        assert_eq!(o.pace_ms(1_000), 2_394, "down once the phones had time");
        // Busy between the marks: the pace holds (hysteresis).
        for _ in 0..40 {
            interval(&mut o, &mut reading, &mut now, 1000, 300, 0.75, 0);
        }
        assert_eq!(o.pace_ms(1_000), 2_394);
        // Calm again: lowered once the load since the last change is under 60% (20 intervals
        // at 0.3 after the 40 at 0.75), by a quarter at most then...
        for _ in 0..30 {
            interval(&mut o, &mut reading, &mut now, 1000, 300, 0.3, 0);
        }
        assert_eq!(o.pace_ms(1_000), 1_795);
        // ...and by up to a half, to what the overload's capacity carries.
        for _ in 0..100 {
            interval(&mut o, &mut reading, &mut now, 1000, 300, 0.3, 0);
        }
        assert_eq!(o.pace_ms(1_000), 1_250, "not below what the capacity carries");
        // ...and, calm for FORGET_US after the overload, back to the allocator's interval.
        while now < FORGET_US + 2_000 * MS {
            interval(&mut o, &mut reading, &mut now, 1000, 300, 0.3, 0);
        }
        assert_eq!(o.pace_ms(1_000), 1_000, "back to the allocator's interval");
    }

    /// An interval spent mostly on handshakes (a reconnect storm) does not measure the
    /// capacity: 1,000 shakes and 200 handshakes (40 ms of the 100) in 100 ms fully busy read
    /// as 10,000 shakes a second, where the core serves about twice that.
    #[test]
    fn a_storm_of_handshakes_does_not_measure_the_capacity() {
        let mut o = Overload::new(settings(), 0);
        let mut reading = LoopReading { phones: 20_000, ..LoopReading::default() };
        let mut now = 0;
        interval(&mut o, &mut reading, &mut now, 1000, 200, 0.4, 0);
        reading.handshakes += 200;
        let (v, _) = interval(&mut o, &mut reading, &mut now, 1000, 15 * MS, 1.0, 0);
        assert!(v.over, "{v:?}");
        assert_eq!(o.measured_per_core_s, 0.0, "nothing measured from the storm");
        assert_eq!(o.pace_ms(1_000), 1_000, "no raise from a capacity read in the storm");
        // The same interval with few handshakes measures it.
        reading.handshakes += 10;
        interval(&mut o, &mut reading, &mut now, 1000, 15 * MS, 1.0, 0);
        assert!(o.measured_per_core_s > 9_000.0);
        // Under a CPU quota (a quarter of a core a worker), 60 handshakes (12 ms of CPU) are
        // half of the 25 ms of CPU a fully busy 100 ms holds: a storm, not a measure.
        let mut o = Overload::new(settings(), 0);
        let mut reading =
            LoopReading { phones: 20_000, cpu_allowance: 0.25, ..LoopReading::default() };
        let mut now = 0;
        interval(&mut o, &mut reading, &mut now, 1000, 200, 0.4, 0);
        reading.handshakes += 60;
        interval(&mut o, &mut reading, &mut now, 1000, 15 * MS, 1.0, 0);
        assert_eq!(o.measured_per_core_s, 0.0, "a storm under a quota measured");
    }

    #[test]
    fn the_first_raise_goes_where_the_capacity_carries_and_probes_do_not_lower_the_capacity() {
        // The allocator asks for 100 ms; the phones shake every 600 ms of their own.
        let base = 100;
        let mut o = Overload::new(settings(), 0);
        let mut reading = LoopReading { phones: 10_000, ..LoopReading::default() };
        let mut now = 0;
        let mut over = |o: &mut Overload, now: &mut u64, shakes: u64| {
            *now += 100 * MS;
            reading.datagrams_in += 2_000;
            reading.shakes += shakes;
            reading.kernel_drops += 3_000;
            reading.busy_us += 100 * MS;
            reading.wall_us += 100 * MS;
            o.on_turn(*now, reading, base).expect("an interval ended")
        };
        // 500 shakes in 100 ms fully busy: 5,000/s carry 10,000 phones at 80% at 2,500 ms,
        // and a first raise has its headroom.
        assert!(over(&mut o, &mut now, 500).over);
        assert_eq!(o.pace_ms(base), 3_750, "at once, not 2.5 times the allocator's 100 ms");
        // Held while every phone is answered once (10,000 at 5,000/s: 2 s), however few
        // shakes an interval spent on loss probes serves.
        while now < 2_000 * MS {
            assert!(over(&mut o, &mut now, 50).over);
            assert_eq!(o.pace_ms(base), 3_750, "at {} ms", now / MS);
        }
        // Still over after the hold: the capacity is still the 5,000/s measured first (not the
        // 500/s of the probe-bound intervals, which would ask for 25 s), so the raise is the
        // least one.
        over(&mut o, &mut now, 50);
        assert_eq!(o.pace_ms(base), 5_625);
    }

    #[test]
    fn kernel_drops_and_a_busy_loop_count_as_over_and_the_pace_has_a_ceiling() {
        let mut o = Overload::new(settings(), 0);
        let mut reading = LoopReading { phones: 20_000, ..LoopReading::default() };
        let mut now = 0;
        let (v, _) = interval(&mut o, &mut reading, &mut now, 1000, 200, 0.5, 1000);
        assert!(v.over && v.shedding, "{v:?}");
        assert!((v.overload - 2.0).abs() < 0.01, "arrived twice what was read: {v:?}");
        // Half busy for 10,000/s: the capacity is 20,000/s, which carries 20,000 phones at
        // 1,250 ms, and 1,875 with a first raise's headroom.
        assert_eq!(o.pace_ms(1_000), 1_875);
        let (v, _) = interval(&mut o, &mut reading, &mut now, 1000, 200, 0.95, 0);
        assert!(v.over && !v.shedding, "busy alone paces and refuses, sheds nothing: {v:?}");
        // Busy past the hold with no queue and no drops, and the capacity carries the phones
        // at the pace in force: a wave of phones, not a reason to raise it again.
        for _ in 0..20 {
            interval(&mut o, &mut reading, &mut now, 1000, 200, 0.95, 0);
        }
        assert_eq!(o.pace_ms(1_000), 1_875);
        reading.phones = 10_000_000;
        for _ in 0..200 {
            interval(&mut o, &mut reading, &mut now, 1000, 200, 0.95, 100);
        }
        assert_eq!(o.pace_ms(1_000), 10_000, "never past max_pace_ms");
        assert_eq!(o.pace_ms(20_000), 20_000, "never under the allocator's interval");
    }

    #[test]
    fn under_a_cpu_quota_the_cpu_used_over_the_cpu_allowed_is_the_busy_share() {
        let mut o = Overload::new(settings(), 0);
        // A quarter of a core allowed; turns take 30% of the wall time, on 23% of a core.
        let mut reading = LoopReading { phones: 10_000, cpu_allowance: 0.25, ..Default::default() };
        reading.busy_us = 30 * MS;
        reading.cpu_us = 23 * MS;
        reading.wall_us = 100 * MS;
        reading.shakes = 500;
        let v = o.on_turn(100 * MS, reading, 1_000).expect("an interval ended");
        assert!((v.busy - 0.92).abs() < 1e-9, "{v:?}");
        assert!(v.over, "at its busy target under the quota: {v:?}");
        // Without a quota the same loop is 30% busy (its turns), and calm.
        let mut o = Overload::new(settings(), 0);
        reading.cpu_allowance = 1.0;
        let v = o.on_turn(100 * MS, reading, 1_000).expect("an interval ended");
        assert!((v.busy - 0.3).abs() < 1e-9 && !v.over, "{v:?}");
        // The process's other threads spend the same quota: its CPU over its quota counts.
        let mut o = Overload::new(settings(), 0);
        reading.cpu_allowance = 0.25;
        reading.process_quota = 0.25;
        reading.process_cpu_us = 24 * MS;
        let v = o.on_turn(100 * MS, reading, 1_000).expect("an interval ended");
        assert!((v.busy - 0.96).abs() < 1e-9 && v.over, "{v:?}");
    }

    #[test]
    fn a_known_capacity_paces_the_phones_before_the_opening_and_holds_it_through_the_round() {
        // 28,000 shakes per core, a quarter of a core allowed: 7,000/s, which carries 10,000
        // phones at 80% at one shake each 1,786 ms, 2,143 with the opening's headroom.
        let known = OverloadSettings { shakes_per_core_s: 28_000.0, ..settings() };
        let mut o = Overload::new(known, 0);
        let base = 100;
        assert_eq!(o.before_opening(0, 3_500 * MS, 10_000, 0.25, base), None, "too early");
        assert_eq!(o.before_opening(0, 3_000 * MS, 10_000, 0.25, base), Some(2_143));
        assert_eq!(o.pace_ms(base), 2_143);
        // Told once: 5% more phones since is not worth telling everyone again; 20% more is.
        assert_eq!(o.before_opening(MS, 2_999 * MS, 10_500, 0.25, base), None);
        assert_eq!(o.before_opening(2 * MS, 2_998 * MS, 12_000, 0.25, base), Some(2_571));
        // A full core carries them at the allocator's interval or less: nothing to tell.
        let mut idle = Overload::new(known, 0);
        assert_eq!(idle.before_opening(0, MS, 1_000, 1.0, base), None);
        // Capacity unknown, or control off: the reactive control only.
        for settings in [settings(), OverloadSettings { enabled: false, ..known }] {
            let mut o = Overload::new(settings, 0);
            assert_eq!(o.before_opening(0, MS, 10_000, 0.25, base), None);
        }
        // Idle until the opening (3 s from 2 ms) and then at 80% of the capacity: neither
        // lowered (the idle time before the opening does not count) nor raised.
        let mut reading = LoopReading { phones: 12_000, cpu_allowance: 0.25, ..Default::default() };
        let mut now = 0;
        while now < 3_000 * MS {
            interval(&mut o, &mut reading, &mut now, 0, 0, 0.0, 0);
        }
        for _ in 0..100 {
            let (v, _) = interval(&mut o, &mut reading, &mut now, 560, 300, 0.8, 0);
            assert!(!v.over, "{v:?}");
        }
        assert_eq!(o.pace_ms(base), 2_571, "held at the opening's pace");
        // The phones shake less than the pace allows: lowered once they have shaken at it.
        for _ in 0..60 {
            interval(&mut o, &mut reading, &mut now, 100, 300, 0.2, 0);
        }
        assert!(o.pace_ms(base) < 2_571, "{}", o.pace_ms(base));
    }

    #[test]
    fn an_opening_is_paced_from_what_the_last_overload_measured() {
        let base = 100;
        let unknown = Overload::new(settings(), 0).before_opening(0, MS, 10_000, 0.5, base);
        assert_eq!(unknown, None, "nothing measured or configured");
        // Measured counts before configured: the same with a configured figure far off.
        let configured = OverloadSettings { shakes_per_core_s: 1e6, ..settings() };
        for settings in [settings(), configured] {
            let mut o = Overload::new(settings, 0);
            // An overload at half a core: 500 shakes in 100 ms fully busy, 5,000/s, 10,000 a
            // core.
            let mut reading =
                LoopReading { phones: 10_000, cpu_allowance: 0.5, ..Default::default() };
            let mut now = 0;
            let (v, _) = interval(&mut o, &mut reading, &mut now, 500, 20 * MS, 1.0, 0);
            assert!(v.over, "{v:?}");
            // Long calm after it: the pace is back at the allocator's...
            while now < FORGET_US + 60_000 * MS {
                interval(&mut o, &mut reading, &mut now, 10, 300, 0.01, 0);
            }
            assert_eq!(o.pace_ms(base), base);
            // ...and the next round opens under a quarter of a core: 2,500/s carries 5,000
            // phones at 2,500 ms, 3,000 with the opening's headroom.
            assert_eq!(o.before_opening(now, 2_000 * MS, 5_000, 0.25, base), Some(3_000));
        }
    }

    #[test]
    fn disabled_it_never_paces_refuses_or_sheds() {
        let mut o = Overload::new(OverloadSettings { enabled: false, ..settings() }, 0);
        let mut reading = LoopReading { phones: 20_000, ..LoopReading::default() };
        let mut now = 0;
        for _ in 0..5 {
            let (v, shed) = interval(&mut o, &mut reading, &mut now, 1000, 200 * MS, 1.0, 50);
            assert!(!v.over && !v.shedding && shed == 0, "{v:?}");
        }
        assert_eq!(o.pace_ms(1_000), 1_000);
        assert!(!o.refuse_handshakes());
    }
}
