//! The swarm's phones on `shake-loop`, the client library's event-loop driver: what
//! `driver = "loop"` runs and what the benchmarks load the edge with. Each thread is one
//! client socket (an address of its own in 127.0.0.0/8) with one event loop hosting its share
//! of the phones: no task per phone, no per-phone timer but a slot in one heap. Measured, one
//! load core costs somewhat more per message than the edge's (64% busy against the edge's 45%
//! at 10,000 shakes/s in `scripts/bench.sh edge`), and 1.24-1.30x the quinn swarm's CPU at
//! 2,000 phones (docs/PERFORMANCE.md).
//!
//! Phones either speak the Shake protocol through [`shake_client::PhoneSession`] (`Hello`
//! with a token, shakes on an open-loop schedule within the pushed interval, outcomes timed,
//! awards acknowledged) or send a bare datagram for an echo server to return. A swarm run
//! also records every outcome and award into its [`Stats`], as the quinn-driven phones do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;
use shake_client::{PhoneSession, SessionEvent, ShakeRefusal};
use shake_loop::driver::DriverStats;
use shake_loop::quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, Dir, EndpointConfig, StreamEvent, StreamId, VarInt,
};
use shake_loop::scratch_datagrams::ScratchDatagrams;
use shake_loop::timers::Timers;
use shake_loop::{AppEvent, Driver, Engine, Flow, Handler, IncomingDecision, Shell};
use shake_proto::Verdict;

use crate::schedule::Schedule;
use crate::stats::{ReceivedAward, Stats};

/// Counters shared by every phone of a load, read live by whoever watches it.
#[derive(Debug, Default)]
pub struct LoadCounters {
    /// Phones connected (welcomed, for the Shake protocol).
    pub connected: AtomicU64,
    /// Connections that failed.
    pub failed: AtomicU64,
    /// Messages sent.
    pub sent: AtomicU64,
    /// Replies received.
    pub answered: AtomicU64,
    /// Connections lost while established and shaking: each costs the server a new handshake.
    pub lost_active: AtomicU64,
    /// Connection attempts the server refused or that failed before the session started.
    pub refused: AtomicU64,
    /// UDP datagrams sent.
    pub datagrams_out: AtomicU64,
    /// UDP datagrams received.
    pub datagrams_in: AtomicU64,
    /// Microseconds the load's loops spent working.
    pub busy_us: AtomicU64,
    /// Datagrams received by how long they waited in the load's sockets (buckets of
    /// `shake_loop::driver::QUEUE_WAIT_BOUNDS_US`).
    pub queue_waits: [AtomicU64; 5],
}

/// A swarm run's record of what its phones were told: phone `i` is user `first_user_id + i`.
#[derive(Debug, Clone)]
pub struct SwarmRecord {
    /// The run's statistics.
    pub stats: Arc<Stats>,
    /// Phone 0's user.
    pub first_user_id: u64,
}

/// What the phones say.
#[derive(Debug, Clone)]
pub enum Speech {
    /// The Shake protocol; phone `i` presents `tokens[i]`.
    Shake {
        /// One session token per phone.
        tokens: Arc<Vec<Bytes>>,
        /// Where a swarm run records outcomes and awards (none: the load's report only).
        record: Option<SwarmRecord>,
    },
    /// A 14-byte datagram (a shake's size) carrying its sequence number, echoed back.
    Echo,
}

/// The load.
#[derive(Debug, Clone, Copy)]
pub struct LoopLoadPlan {
    /// Phones.
    pub phones: usize,
    /// Shakes per second per phone while a round is open.
    pub rate_per_phone: f64,
    /// New connections per second, all threads together (0: all at once).
    pub connect_rate: f64,
    /// Threads, each one socket and one loop.
    pub threads: usize,
    /// Interval jitter, 0 to 1.
    pub jitter: f64,
    /// The loops' batch delay (see `shake_loop::Driver::set_batch_delay`); shakes sent late
    /// by it are timed from their intended time all the same.
    pub batch_delay: Duration,
    /// Unix time (ms) from which [`LoopLoadReport::outcome_by_s`] counts seconds (0: the
    /// load's start); outcomes before it are in no second.
    pub series_origin_unix_ms: u64,
    /// The round-trip time of the emulated path between phones and server (every datagram
    /// the phones receive is held this long; zero: loopback as it is). Every latency the load
    /// measures includes it.
    pub path_rtt: Duration,
}

/// The sequence number of an `in_flight` slot whose shake was answered (or never sent).
const ANSWERED: u64 = u64::MAX;

/// What a finished load measured.
#[derive(Debug)]
pub struct LoopLoadReport {
    /// Shake (or message) to outcome, from the intended send time, microseconds.
    pub outcome_us: Histogram<u64>,
    /// The same from the actual send time: the difference is time the generator took to send.
    pub outcome_uncorrected_us: Histogram<u64>,
    /// Shake (intended send time) to the outcome's arrival in the phone's socket (the kernel's
    /// receive timestamp), microseconds: [`Self::outcome_us`] less the time the outcome waited
    /// for the generator to read it, which a phone with a core of its own would not wait (the
    /// same as `outcome_us` where the socket does not timestamp).
    pub outcome_at_socket_us: Histogram<u64>,
    /// A phone's last forwarded shake (intended time) to its award, microseconds.
    pub award_us: Histogram<u64>,
    /// The loops' counters, summed.
    pub driver: DriverStats,
    /// Sends made late or skipped by the schedule (the generator falling behind).
    pub behind_schedule: u64,
    /// Shakes the session held back (too soon after the last, or outside a round).
    pub held_back: u64,
    /// Shakes still unanswered when their phone sent its fourth shake after them (a phone
    /// times its last four): each is timed then, in the outcome histograms, at the age it had
    /// reached (a lower bound of its latency), so a slow tail is counted, not dropped; an
    /// answer that comes later is not timed again.
    pub overtaken: u64,
    /// Sessions that ended, by reason.
    pub ended: Vec<(&'static str, u64)>,
    /// Connections lost or refused.
    pub lost: u64,
    /// Shake to outcome (from the intended send time), microseconds, by the second since
    /// [`LoopLoadPlan::series_origin_unix_ms`] in which the outcome arrived.
    pub outcome_by_s: Vec<Histogram<u64>>,
    /// Awards phones were told of: (phone index, award id, round, prize), once per phone.
    pub awards: Vec<(usize, u64, u32, shake_proto::Prize)>,
}

/// A histogram for one second's outcomes: 1 us to 1 minute, 2 significant figures (small: a
/// run keeps one per second per thread).
fn second_histogram() -> Histogram<u64> {
    // invariant: 1 us to 60 s at 2 significant figures is a valid configuration.
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid histogram bounds")
}

impl Default for LoopLoadReport {
    fn default() -> Self {
        Self {
            outcome_us: crate::stats::histogram(),
            outcome_uncorrected_us: crate::stats::histogram(),
            outcome_at_socket_us: crate::stats::histogram(),
            award_us: crate::stats::histogram(),
            driver: DriverStats::default(),
            behind_schedule: 0,
            held_back: 0,
            overtaken: 0,
            ended: Vec::new(),
            lost: 0,
            outcome_by_s: Vec::new(),
            awards: Vec::new(),
        }
    }
}

impl LoopLoadReport {
    /// Busy share of the load's threads together (of one core).
    pub fn busy_share(&self) -> f64 {
        self.driver.busy_share()
    }

    /// Adds what another thread of the same load measured.
    fn add(&mut self, other: LoopLoadReport) {
        // Both histograms have the same bounds, so adding never fails.
        let _ = self.outcome_us.add(&other.outcome_us);
        let _ = self.outcome_uncorrected_us.add(&other.outcome_uncorrected_us);
        let _ = self.outcome_at_socket_us.add(&other.outcome_at_socket_us);
        let _ = self.award_us.add(&other.award_us);
        self.driver.add(&other.driver);
        self.behind_schedule += other.behind_schedule;
        self.held_back += other.held_back;
        self.overtaken += other.overtaken;
        self.lost += other.lost;
        if self.outcome_by_s.len() < other.outcome_by_s.len() {
            self.outcome_by_s.resize_with(other.outcome_by_s.len(), second_histogram);
        }
        for (sum, h) in self.outcome_by_s.iter_mut().zip(&other.outcome_by_s) {
            let _ = sum.add(h);
        }
        self.awards.extend(other.awards);
        for (name, n) in other.ended {
            count(&mut self.ended, name, n);
        }
    }
}

/// A running load.
#[derive(Debug)]
pub struct LoopLoad {
    /// Live counters (connected means welcomed, for the Shake protocol).
    pub counters: Arc<LoadCounters>,
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<shake_loop::udp::Waker>>,
    threads: Vec<std::thread::JoinHandle<std::io::Result<LoopLoadReport>>>,
}

/// How long phone `index` waits after `failures` failures in a row (at least 1): the client
/// library's backoff (1 s doubling to 16 s, times a jitter of 0.5 to 1.5 of the phone's own).
fn reconnect_pause(index: usize, failures: u32) -> Duration {
    let settings = shake_client::ReconnectSettings::default();
    Duration::from_millis(shake_client::reconnect::backoff_ms(&settings, index as u64, failures))
}
/// Largest UDP payload a simulated phone accepts (an Ethernet-sized path, as phones have).
const PHONE_MAX_UDP_PAYLOAD: u16 = 1472;
/// An echo message: a shake datagram's size.
const ECHO_LEN: usize = 14;

impl LoopLoad {
    /// Starts the load against `server`, every thread pinned to `core`, until `end` or
    /// [`LoopLoad::finish`].
    pub fn start(
        server: SocketAddr,
        server_name: &str,
        client: &ClientConfig,
        speech: &Speech,
        plan: LoopLoadPlan,
        core: Option<usize>,
        end: Instant,
    ) -> std::io::Result<Self> {
        let counters = Arc::new(LoadCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let threads_n = plan.threads.max(1).min(plan.phones.max(1));
        let origin = Instant::now();
        let unix_origin_ms =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut wakers = Vec::new();
        let mut threads = Vec::new();
        for t in 0..threads_n {
            let local = crate::addresses::phone_endpoint(&[server], t);
            let socket = crate::phones_socket(local)?;
            let mut driver = Driver::new(socket)?;
            driver.set_batch_delay(plan.batch_delay);
            driver.set_receive_delay(plan.path_rtt);
            wakers.push(driver.waker());
            // Phones t, t + threads, t + 2 threads...
            let phones: Vec<usize> = (t..plan.phones).step_by(threads_n).collect();
            let mut shell = PhonesShell {
                server,
                server_name: server_name.to_owned(),
                client: client.clone(),
                speech: speech.clone(),
                phones: phones
                    .iter()
                    .map(|&index| Phone::new(index, &plan, origin, speech))
                    .collect(),
                by_conn: Vec::new(),
                timers: Timers::default(),
                connect_interval: (plan.connect_rate > 0.0)
                    .then(|| Duration::from_secs_f64(threads_n as f64 / plan.connect_rate)),
                next_connect: 0,
                next_connect_at: origin,
                origin,
                unix_origin_ms,
                end,
                stop: stop.clone(),
                counters: counters.clone(),
                report: LoopLoadReport {
                    // One per second of the run, made now: none is made while measuring.
                    outcome_by_s: (0..end.saturating_duration_since(origin).as_secs() + 2)
                        .map(|_| second_histogram())
                        .collect(),
                    ..LoopLoadReport::default()
                },
                out: BytesMut::with_capacity(4096),
                shakes: ScratchDatagrams::default(),
                published: DriverStats::default(),
                series_origin_unix_ms: if plan.series_origin_unix_ms == 0 {
                    unix_origin_ms
                } else {
                    plan.series_origin_unix_ms
                },
                record: match speech {
                    Speech::Shake { record, .. } => record.clone(),
                    Speech::Echo => None,
                },
                arrived: None,
            };
            threads.push(std::thread::Builder::new().name(format!("load-{t}")).spawn(
                move || {
                    if let Some(core) = core {
                        let _ = shake_loop::udp::pin(0, core);
                    }
                    let mut endpoint = EndpointConfig::default();
                    endpoint
                        .max_udp_payload_size(PHONE_MAX_UDP_PAYLOAD)
                        .map_err(std::io::Error::other)?;
                    let mut engine = Engine::new(endpoint, None);
                    driver.run(&mut engine, &mut shell)?;
                    shell.report.driver = driver.stats();
                    Ok(shell.report)
                },
            )?);
        }
        Ok(Self { counters, stop, wakers, threads })
    }

    /// Stops the load (if still running) and gathers what it measured.
    pub fn finish(self) -> std::io::Result<LoopLoadReport> {
        self.stop.store(true, Ordering::Relaxed);
        for waker in &self.wakers {
            waker.wake();
        }
        let mut report = LoopLoadReport::default();
        for thread in self.threads {
            let one =
                thread.join().map_err(|_| std::io::Error::other("load thread panicked"))??;
            report.add(one);
        }
        Ok(report)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PhoneState {
    /// Not connected; connects when its turn (or its reconnect time) comes.
    Idle,
    /// Handshake or `Hello` under way.
    Connecting,
    /// Shaking on its schedule.
    Active,
}

/// One phone of a thread.
#[derive(Debug)]
struct Phone {
    index: usize,
    state: PhoneState,
    ch: Option<ConnectionHandle>,
    stream: Option<StreamId>,
    session: Option<PhoneSession>,
    schedule: Schedule,
    /// Sequence number, intended and actual send times of recent shakes, by sequence
    /// number modulo the length.
    in_flight: [(u64, Instant, Instant); 4],
    /// Intended time of the last shake the edge forwarded (for award latency).
    last_forwarded: Option<Instant>,
    /// Where in each interval this phone shakes, microseconds (phases spread the load).
    phase_us: u64,
    /// Connection failures in a row (reset by a `Welcome`).
    failures: u32,
    /// When the current connection attempt began (for the handshake's time).
    connect_started: Instant,
    /// Sessions this phone has had (welcomed connections).
    sessions: u32,
    next_echo_seq: u64,
}

impl Phone {
    fn new(index: usize, plan: &LoopLoadPlan, origin: Instant, speech: &Speech) -> Self {
        let session = match speech {
            Speech::Shake { tokens, .. } => {
                Some(PhoneSession::new(tokens.get(index).cloned().unwrap_or_default()))
            }
            Speech::Echo => None,
        };
        Self {
            index,
            state: PhoneState::Idle,
            ch: None,
            stream: None,
            session,
            schedule: Schedule::new(0, plan.rate_per_phone, plan.jitter, index as u64),
            in_flight: [(ANSWERED, origin, origin); 4],
            last_forwarded: None,
            phase_us: 0,
            failures: 0,
            connect_started: origin,
            sessions: 0,
            next_echo_seq: 1,
        }
    }
}

/// One thread's phones, as the loop's shell and handler.
struct PhonesShell {
    server: SocketAddr,
    server_name: String,
    client: ClientConfig,
    speech: Speech,
    phones: Vec<Phone>,
    /// Connection handle -> position in `phones` (`u32::MAX`: none).
    by_conn: Vec<u32>,
    /// Each phone's next shake or reconnect, by position.
    timers: Timers,
    connect_interval: Option<Duration>,
    next_connect: usize,
    next_connect_at: Instant,
    origin: Instant,
    unix_origin_ms: u64,
    end: Instant,
    stop: Arc<AtomicBool>,
    counters: Arc<LoadCounters>,
    /// What this thread measured.
    report: LoopLoadReport,
    /// Where shakes are encoded; each goes out as a slice of it.
    out: BytesMut,
    /// Sends the shakes cut from `out`, copying those that must wait (an edge that stops
    /// acknowledging would otherwise keep a buffer alive per waiting shake).
    shakes: ScratchDatagrams,
    /// The driver's counters as last added to the shared ones.
    published: DriverStats,
    series_origin_unix_ms: u64,
    /// A swarm run's statistics, if this is one.
    record: Option<SwarmRecord>,
    /// When the datagram being handled reached the socket (`Shell::arrived`).
    arrived: Option<Instant>,
}

impl PhonesShell {
    fn now_us(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_micros() as u64
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        self.unix_origin_ms + now.saturating_duration_since(self.origin).as_millis() as u64
    }

    fn phone_of(&self, ch: ConnectionHandle) -> Option<usize> {
        self.by_conn.get(ch.0).copied().filter(|&p| p != u32::MAX).map(|p| p as usize)
    }

    fn connect(&mut self, now: Instant, engine: &mut Engine, at: usize) {
        let Ok(ch) = engine.connect(now, self.client.clone(), self.server, &self.server_name)
        else {
            self.report.lost += 1;
            return;
        };
        if ch.0 >= self.by_conn.len() {
            self.by_conn.resize(ch.0 + 1, u32::MAX);
        }
        self.by_conn[ch.0] = at as u32;
        let phone = &mut self.phones[at];
        phone.ch = Some(ch);
        phone.stream = None;
        phone.state = PhoneState::Connecting;
        phone.connect_started = now;
        // Shakes of a lost connection get no answer on this one: not timed as overtaken.
        for slot in &mut phone.in_flight {
            slot.0 = ANSWERED;
        }
        if let (Some(session), Speech::Shake { tokens, .. }) = (&mut phone.session, &self.speech) {
            *session = PhoneSession::new(tokens.get(phone.index).cloned().unwrap_or_default());
        }
    }

    /// The phone is welcomed (or connected, for an echo): its schedule starts now, at a phase
    /// of its own so the load is smooth.
    fn activate(&mut self, now: Instant, at: usize) {
        let now_us = self.now_us(now);
        let phone = &mut self.phones[at];
        phone.state = PhoneState::Active;
        phone.failures = 0;
        self.counters.connected.fetch_add(1, Ordering::Relaxed);
        phone.sessions += 1;
        if let Some(record) = &self.record {
            record.stats.connected.fetch_add(1, Ordering::Relaxed);
            record.stats.sessions.fetch_add(1, Ordering::Relaxed);
            // QUIC handshake to `Welcome`, as the quinn phones time it; resumed on a reconnect.
            let took = now.saturating_duration_since(phone.connect_started).as_micros() as u64;
            let mut h = record.stats.histograms.lock().expect("stats lock");
            let histogram =
                if phone.sessions == 1 { &mut h.handshake } else { &mut h.reconnect_handshake };
            histogram.saturating_record(took.max(1));
        }
        let interval_us = phone.schedule.interval_us();
        // Golden-ratio phases: spread evenly whatever the number of phones.
        let phase = (phone.index as f64 * 0.618_033_988_75).fract();
        phone.phase_us = (phase * interval_us) as u64;
        let start_us = now_us + phone.phase_us;
        phone.schedule.restart(start_us);
        self.timers.set(at, Some(self.origin + Duration::from_micros(start_us)));
    }

    /// Sends every shake due for the phone at `at`; sets its next wake-up.
    fn shake_due(&mut self, now: Instant, engine: &mut Engine, at: usize) {
        let now_us = self.now_us(now);
        let now_ms = self.unix_ms(now);
        let phone = &mut self.phones[at];
        let Some(ch) = phone.ch else { return };
        let counters = &self.counters;
        let report = &mut self.report;
        let out = &mut self.out;
        let shakes = &mut self.shakes;
        let origin = self.origin;
        let stats = self.record.as_ref().map(|r| &*r.stats);
        engine.with_connection(ch, |conn| {
            while let Some(intended_us) = phone.schedule.due(now_us) {
                out.clear();
                let seq = match &mut phone.session {
                    Some(session) => match session.shake(now_ms, out) {
                        Ok(seq) => seq,
                        Err(refusal) => {
                            report.held_back += 1;
                            // A swarm counts what the pace held back, as its quinn phones do;
                            // outside a round there is nothing to hold back.
                            if let ShakeRefusal::TooSoon { at_ms } = refusal {
                                if let Some(stats) = stats {
                                    stats.held_back.fetch_add(1, Ordering::Relaxed);
                                }
                                // The user shakes again as soon as it is allowed.
                                let at_us = now_us + at_ms.saturating_sub(now_ms) * 1000;
                                phone.schedule.not_before(at_us);
                            }
                            continue;
                        }
                    },
                    None => {
                        let seq = phone.next_echo_seq;
                        phone.next_echo_seq += 1;
                        out.extend_from_slice(&seq.to_le_bytes());
                        out.resize(ECHO_LEN, 0x07);
                        seq
                    }
                };
                if shakes.send(conn, out.split().freeze()).is_err() {
                    report.held_back += 1;
                    if let Some(stats) = stats {
                        stats.error("send datagram");
                    }
                    continue;
                }
                let intended = origin + Duration::from_micros(intended_us);
                let slot = &mut phone.in_flight[(seq % 4) as usize];
                if slot.0 != ANSWERED {
                    // Four shakes later and still unanswered: timed now, at least this old.
                    report.overtaken += 1;
                    let age =
                        |from: Instant| now.saturating_duration_since(from).as_micros() as u64;
                    report.outcome_us.saturating_record(age(slot.1).max(1));
                    report.outcome_uncorrected_us.saturating_record(age(slot.2).max(1));
                    report.outcome_at_socket_us.saturating_record(age(slot.1).max(1));
                }
                *slot = (seq, intended, now);
                counters.sent.fetch_add(1, Ordering::Relaxed);
                if let Some(stats) = stats {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let mut next = self.origin + Duration::from_micros(phone.schedule.next_us());
        // Outside a round, wake for the opening (at the phone's own phase after it, so the
        // phones do not all shake at the opening instant) rather than at every intended shake.
        if let Some(opening) = phone.session.as_ref().and_then(|s| s.next_opening_ms(now_ms)) {
            let until = Duration::from_millis(opening.saturating_sub(now_ms))
                + Duration::from_micros(phone.phase_us);
            if now + until > next {
                next = now + until;
                phone.schedule.restart(next.saturating_duration_since(origin).as_micros() as u64);
            }
        }
        self.timers.set(at, Some(next));
    }

    /// Times the answer to `seq` (an outcome's verdict, or none for an echo).
    fn answered(&mut self, now: Instant, at: usize, seq: u64, verdict: Option<Verdict>) {
        let since_origin_ms = self.unix_ms(now).checked_sub(self.series_origin_unix_ms);
        let phone = &mut self.phones[at];
        let (known, intended, sent) = phone.in_flight[(seq % 4) as usize];
        if known == seq {
            // Answered: a second answer to it is not timed, and the slot is free for the next.
            phone.in_flight[(seq % 4) as usize].0 = ANSWERED;
            self.counters.answered.fetch_add(1, Ordering::Relaxed);
            let us = |from: Instant| now.saturating_duration_since(from).as_micros() as u64;
            self.report.outcome_us.saturating_record(us(intended).max(1));
            let second = since_origin_ms.map_or(usize::MAX, |ms| ms as usize / 1000);
            if let Some(h) = self.report.outcome_by_s.get_mut(second) {
                h.saturating_record(us(intended).max(1));
            }
            self.report.outcome_uncorrected_us.saturating_record(us(sent).max(1));
            let at_socket = self.arrived.unwrap_or(now).saturating_duration_since(intended);
            self.report
                .outcome_at_socket_us
                .saturating_record((at_socket.as_micros() as u64).max(1));
            if verdict == Some(Verdict::Forwarded) {
                phone.last_forwarded = Some(intended);
            }
            if let (Some(record), Some(verdict)) = (&self.record, verdict) {
                let since = |from: Instant| now.saturating_duration_since(from);
                record.stats.outcome(verdict, since(intended), since(sent), true);
                if verdict == Verdict::Forwarded {
                    record.stats.forwarded_for(record.first_user_id + phone.index as u64);
                }
            }
        }
    }

    /// Writes what the session has queued on its control stream.
    fn write_control(phone: &mut Phone, conn: &mut Connection) {
        let (Some(session), Some(id)) = (&mut phone.session, phone.stream) else { return };
        let out = session.control_out();
        while !out.is_empty() {
            match conn.send_stream(id).write(out) {
                Ok(n) => out.advance(n),
                Err(_) => break,
            }
        }
    }

    /// The session's events after input: outcomes timed, awards acknowledged, ends closed.
    fn after_input(&mut self, now: Instant, at: usize, conn: &mut Connection) {
        while let Some(event) = self.phones[at].session.as_mut().and_then(PhoneSession::poll_event)
        {
            match event {
                SessionEvent::Welcomed { .. } => self.activate(now, at),
                SessionEvent::Outcome(outcome) => {
                    self.answered(now, at, outcome.seq, Some(outcome.verdict));
                }
                SessionEvent::Award { award_id, round_id, prize } => {
                    let phone = &mut self.phones[at];
                    // Told this phone again (an award owed from an earlier session): counted
                    // once, acknowledged again. Told another phone too, it is recorded for
                    // each, and verification sees the one whose user it does not pay.
                    if !self
                        .report
                        .awards
                        .iter()
                        .rev()
                        .any(|a| a.0 == phone.index && a.1 == award_id)
                    {
                        self.report.awards.push((phone.index, award_id, round_id, prize.clone()));
                        if let Some(from) = phone.last_forwarded {
                            let us = now.saturating_duration_since(from).as_micros() as u64;
                            self.report.award_us.saturating_record(us.max(1));
                            if let Some(record) = &self.record {
                                let mut h = record.stats.histograms.lock().expect("stats lock");
                                h.award.saturating_record(us.max(1));
                            }
                        }
                    }
                    if let Some(record) = &self.record {
                        record.stats.award_received(ReceivedAward::new(
                            award_id,
                            record.first_user_id + phone.index as u64,
                            round_id,
                            &prize,
                        ));
                    }
                    if let Some(session) = &mut phone.session {
                        session.ack_award(award_id);
                    }
                }
                SessionEvent::Ended(reason) => {
                    count(&mut self.report.ended, reason.name(), 1);
                    if let Some(record) = &self.record {
                        record
                            .stats
                            .error(format!("honest phone's session ended: {}", reason.name()));
                    }
                    conn.close(now, VarInt::from_u32(0), Bytes::from_static(b"session over"));
                }
                SessionEvent::Round(_) | SessionEvent::Paced { .. } => {}
            }
        }
        Self::write_control(&mut self.phones[at], conn);
    }
}

/// Adds `n` to `name`'s count.
fn count(counts: &mut Vec<(&'static str, u64)>, name: &'static str, n: u64) {
    match counts.iter_mut().find(|(known, _)| *known == name) {
        Some((_, total)) => *total += n,
        None => counts.push((name, n)),
    }
}

impl Handler for PhonesShell {
    fn incoming(
        &mut self,
        _now: Instant,
        _incoming: &shake_loop::quinn_proto::Incoming,
    ) -> IncomingDecision {
        // Phones accept no connections.
        IncomingDecision::Ignore
    }

    fn event(
        &mut self,
        now: Instant,
        ch: ConnectionHandle,
        conn: &mut Connection,
        event: AppEvent,
    ) {
        let Some(at) = self.phone_of(ch) else { return };
        match event {
            AppEvent::Connected => {
                if self.phones[at].session.is_none() {
                    self.activate(now, at);
                    return;
                }
                let Some(id) = conn.streams().open(Dir::Bi) else {
                    conn.close(now, VarInt::from_u32(0), Bytes::from_static(b"no stream"));
                    return;
                };
                let phone = &mut self.phones[at];
                phone.stream = Some(id);
                if let Some(session) = &mut phone.session {
                    session.hello();
                }
                Self::write_control(phone, conn);
            }
            AppEvent::Stream(StreamEvent::Readable { id }) => {
                let now_ms = self.unix_ms(now);
                let mut stream = conn.recv_stream(id);
                if let Ok(mut chunks) = stream.read(true) {
                    while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
                        if let Some(session) = &mut self.phones[at].session {
                            let _ = session.on_control(now_ms, &chunk.bytes);
                        }
                    }
                    let _ = chunks.finalize();
                }
                self.after_input(now, at, conn);
            }
            AppEvent::Stream(StreamEvent::Writable { .. }) => {
                Self::write_control(&mut self.phones[at], conn);
            }
            AppEvent::DatagramReceived => {
                let now_ms = self.unix_ms(now);
                while let Some(datagram) = conn.datagrams().recv() {
                    match &mut self.phones[at].session {
                        Some(session) => {
                            let _ = session.on_datagram(now_ms, &datagram);
                        }
                        None if datagram.len() >= 8 => {
                            let mut seq = [0u8; 8];
                            seq.copy_from_slice(&datagram[..8]);
                            self.answered(now, at, u64::from_le_bytes(seq), None);
                        }
                        None => {}
                    }
                }
                if self.phones[at].session.is_some() {
                    self.after_input(now, at, conn);
                }
            }
            AppEvent::Lost(_) => {
                self.by_conn[ch.0] = u32::MAX;
                let phone = &mut self.phones[at];
                let was_active = phone.state == PhoneState::Active;
                if was_active {
                    self.counters.connected.fetch_sub(1, Ordering::Relaxed);
                    self.counters.lost_active.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(record) = &self.record {
                    if was_active {
                        record.stats.connected.fetch_sub(1, Ordering::Relaxed);
                    }
                    // A load that ends closes its own connections: those are not errors.
                    if now < self.end && !self.stop.load(Ordering::Relaxed) {
                        record.stats.error(if was_active {
                            "connection lost"
                        } else {
                            "connect: refused or failed"
                        });
                    }
                }
                phone.state = PhoneState::Idle;
                phone.ch = None;
                phone.failures += 1;
                self.report.lost += 1;
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                let pause = reconnect_pause(phone.index, phone.failures);
                self.timers.set(at, Some(now + pause));
            }
            AppEvent::Stream(_) | AppEvent::DatagramsUnblocked => {}
        }
    }
}

impl Shell for PhonesShell {
    fn turn(&mut self, now: Instant, engine: &mut Engine, stats: &DriverStats) -> Flow {
        let was = std::mem::replace(&mut self.published, *stats);
        let c = &self.counters;
        c.datagrams_out.fetch_add(stats.datagrams_out - was.datagrams_out, Ordering::Relaxed);
        c.datagrams_in.fetch_add(stats.datagrams_in - was.datagrams_in, Ordering::Relaxed);
        c.busy_us.fetch_add(stats.busy_us - was.busy_us, Ordering::Relaxed);
        for ((total, is), was) in c.queue_waits.iter().zip(stats.queue_wait).zip(was.queue_wait) {
            if is > was {
                total.fetch_add(is - was, Ordering::Relaxed);
            }
        }
        if now >= self.end || self.stop.load(Ordering::Relaxed) {
            for phone in &mut self.phones {
                let behind = phone.schedule.late + phone.schedule.skipped;
                self.report.behind_schedule += behind;
                if let Some(record) = &self.record {
                    record.stats.behind_schedule.fetch_add(behind, Ordering::Relaxed);
                }
                if let Some(ch) = phone.ch.take() {
                    engine.with_connection(ch, |conn| {
                        conn.close(now, VarInt::from_u32(0), Bytes::from_static(b"load done"));
                    });
                }
            }
            return Flow::Stop;
        }
        // The connect ramp.
        while self.next_connect < self.phones.len() && now >= self.next_connect_at {
            let at = self.next_connect;
            self.next_connect += 1;
            self.connect(now, engine, at);
            if let Some(interval) = self.connect_interval {
                self.next_connect_at += interval;
            }
        }
        while let Some(at) = self.timers.pop_expired(now) {
            match self.phones[at].state {
                PhoneState::Active => self.shake_due(now, engine, at),
                PhoneState::Idle => self.connect(now, engine, at),
                PhoneState::Connecting => {}
            }
        }
        Flow::Continue
    }

    fn arrived(&mut self, at: Option<Instant>) {
        self.arrived = at;
    }

    fn deadline(&mut self) -> Option<Instant> {
        let connect = (self.next_connect < self.phones.len()).then_some(self.next_connect_at);
        [connect, self.timers.earliest(), Some(self.end)].into_iter().flatten().min()
    }
}
