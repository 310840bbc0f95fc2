//! One edge worker on the `shake-loop` event loop: a thread, its socket on the shared port,
//! one `quinn_proto` endpoint, and the worker's sans-IO [`WorkerCore`]. No task per phone: each
//! shake is decided when its datagram comes out of the connection, and the outcome is queued on
//! that same connection in the same pass, so the ACK of the shake rides on the outcome.
//!
//! This module holds the worker's state, the loop's callbacks (handshake admission, connection
//! events, the turn) and its start; each job has a file of its own: `session` (the phone
//! session: `Hello` within the deadline, the control stream, shakes, closes with an `Error`
//! first), `broadcast` (frames for phones, broadcasts in slices), `link` (the allocator
//! link's frames in and out), `housekeeping` (metrics, load, overload, drain and stop). The
//! allocator stream itself stays on the allocator-link thread's tokio runtime
//! ([`link_pipe`](crate::link_pipe)).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use shake_loop::cid::WorkerCids;
use shake_loop::driver::DriverStats;
use shake_loop::quinn_proto::{
    Connection, ConnectionError, ConnectionHandle, Dir, EndpointConfig, Incoming, ServerConfig,
    StreamEvent, StreamId, VarInt,
};
use shake_loop::scratch_datagrams::ScratchDatagrams;
use shake_loop::timers::Timers;
use shake_loop::{AppEvent, Driver, Engine, Flow, Handler, IncomingDecision, Shell};
use shake_proto::control::CAP_DATAGRAMS;
use shake_proto::datagram::{self, Datagram};
use shake_proto::{ControlFrame, ErrorCode};

use crate::core::{self, PhoneEffect, WorkerCore};
use crate::handshakes::{self, Attempt, HandshakeDecision, HandshakeOutcome};
use crate::link_pipe::{LinkEvent, LoopEnds};
use crate::metrics::{DropReason, Dropped, EdgeMetrics, Shed, ShedLabels};
use crate::outbox::OUTBOX_FRAMES;
use crate::overload::{LoopReading, Overload};
use crate::phones::PhoneRef;
use crate::shared::Shared;
use crate::sources::{SourceLimiter, SourceLimits};
use crate::uplink::WorkerName;
use crate::user_sessions::{Claim, Closer};

mod broadcast;
mod housekeeping;
mod link;
mod session;

/// How long a close waits for its `Error` frame to be acknowledged before closing anyway.
const CLOSE_GRACE: Duration = Duration::from_millis(200);
/// How long a fast stop gives sessions to close.
const STOP_GRACE: Duration = Duration::from_millis(300);
/// What a draining edge's `GoAway` asks phones to wait before they connect again.
const RECONNECT_AFTER_DRAIN_MS: u32 = 1_000;
/// Most phones one broadcast reaches in one turn of the loop. A round opening told to 10,000
/// phones at once was 10,000 packets sealed and sent in one turn, during which every shake
/// waited in the socket: the p99 shake->outcome of about 100 ms (docs/PERFORMANCE.md). In
/// slices, shakes are served between them and a slice costs well under a millisecond.
const BROADCAST_PER_TURN: usize = 64;
/// Broadcasts in progress at once; past it the oldest is finished in one go.
const MAX_BROADCASTS: usize = 8;
/// Most events from the allocator link one turn takes (the pipe's size): the link thread
/// refills the pipe as the turn empties it, so "until it is empty" could last as long as the
/// allocator kept sending, with no datagram read meanwhile. The rest wait for the next turn,
/// which then does not wait.
const LINK_EVENTS_PER_TURN: usize = 1_024;

/// A control frame on its way to every serving phone of the worker, a slice per turn.
#[derive(Debug)]
struct Broadcast {
    frame: Bytes,
    /// The shake interval the frame tells, if it tells one (`RoundNotice`, `Pace`).
    pace_ms: Option<u32>,
    /// The next connection index to visit.
    next: usize,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Where a phone's session is.
#[derive(Debug)]
enum Phase {
    /// The QUIC handshake is in progress.
    Handshake,
    /// Connected; `Hello` must come by the deadline.
    AwaitHello,
    /// `Welcome` sent: shaking.
    Serving(PhoneRef),
    /// Closing with this code once the `Error` frame is acknowledged (or the grace ends).
    Closing(ErrorCode),
}

/// What a session's deadline that passed ends.
enum Due {
    /// Its QUIC handshake.
    Handshake,
    /// Its wait for `Hello`.
    Hello,
    /// Its close's grace, closing with this code.
    Close(ErrorCode),
}

/// One connection's session.
#[derive(Debug)]
struct Session {
    phase: Phase,
    /// The source the attempt is counted against (until `Hello`, or the attempt's end).
    source: Option<IpAddr>,
    stream: Option<StreamId>,
    buf: BytesMut,
    /// Control frames waiting for stream credit (at most [`OUTBOX_FRAMES`]).
    out: VecDeque<Bytes>,
    datagrams: bool,
    /// The user and this session's serial in the edge's table of live sessions.
    holds: Option<(u64, u64)>,
    /// The shake interval this phone was last told (`Welcome`, `Pace`); when the worker's
    /// differs, the phone's next answer carries a `Pace`.
    told_pace_ms: u32,
}

/// Counted on the loop thread, added to the shared metrics by housekeeping.
#[derive(Default)]
struct LoopCounts {
    malformed_datagrams: u64,
    shakes_before_welcome: u64,
    datagrams_outside_session: u64,
    outbox_full: u64,
    paces_told: u64,
    slowed_for_load: u64,
}

/// One worker's loop state: the [`Shell`] the driver runs.
struct LoopWorker {
    shared: Arc<Shared>,
    id: u16,
    core: WorkerCore<ConnectionHandle>,
    sessions: Vec<Option<Session>>,
    /// Hello deadlines and close graces, by connection index.
    deadlines: Timers,
    sources: SourceLimiter,
    link: LoopEnds,
    counts: LoopCounts,
    /// Where frames and outcome datagrams are encoded; each goes out as a slice of it.
    scratch: BytesMut,
    /// Sends outcome datagrams cut from `scratch`, copying those that must wait.
    outcomes: ScratchDatagrams,
    in_flight_published: i64,
    /// The driver's counters as last added to the metrics.
    published_stats: DriverStats,
    next_housekeeping: Instant,
    /// Every phone here knows every round that opens at or before this, Unix milliseconds
    /// (`u64::MAX`: every round): lowered by a phone whose `Welcome` could name only the
    /// soonest rounds, raised by a notice of the next round to every phone
    /// (`announce_next_round`, or the pace set before an opening).
    told_through_ms: u64,
    ticks: u64,
    draining_since: Option<Instant>,
    stopping_since: Option<Instant>,
    /// The drain (SIGTERM) and the stop (SIGINT) as last read, at a housekeeping tick: the
    /// tokens are read under a mutex that every worker shares (tokio-util's), too often a
    /// lock to take every turn (review 22).
    drain_seen: bool,
    stop_seen: bool,
    driver_stats: DriverStats,
    /// The source of the attempt just accepted, until the engine names its connection.
    pending_source: Option<IpAddr>,
    /// Broadcasts in progress, oldest first (at most [`MAX_BROADCASTS`]).
    broadcasts: VecDeque<Broadcast>,
    /// The last turn left events from the link in the pipe ([`LINK_EVENTS_PER_TURN`]).
    link_backlog: bool,
    /// Pacing, handshake refusal and shedding under load.
    overload: Overload,
    /// Shakes decided so far (what overload control calls served).
    shakes_decided: u64,
    /// Handshakes completed (overload control tells a storm of them from shakes).
    handshakes_done: u64,
    /// How long the datagram being handled waited in the socket (overload control's
    /// slow-down reads it).
    datagram_wait_us: Option<u64>,
    /// The process's CPU quota in cores, if its cgroup has one (re-read once a second).
    cpu_quota: Option<f64>,
    /// The edge's workers (what its CPU quota is shared among).
    workers: usize,
    /// The thread's and the process's CPU time when the loop started, microseconds (overload
    /// control counts from there, as the driver's wall and busy times do).
    cpu_at_start_us: (u64, u64),
}

impl LoopWorker {
    /// The share of one core this worker may use: its share of the process's CPU quota.
    fn cpu_allowance(&self) -> f64 {
        crate::cpu_allowance::per_worker(self.cpu_quota, self.workers)
    }

    fn now_us(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.shared.origin).as_micros() as u64
    }

    fn session(&mut self, ch: ConnectionHandle) -> Option<&mut Session> {
        self.sessions.get_mut(ch.0).and_then(Option::as_mut)
    }

    fn encode(&mut self, frame: &ControlFrame) -> Bytes {
        frame.encode(&mut self.scratch);
        self.scratch.split().freeze()
    }
}

impl Handler for LoopWorker {
    fn incoming(&mut self, now: Instant, incoming: &Incoming) -> IncomingDecision {
        let source = incoming.remote_address().ip();
        let attempt = Attempt {
            source,
            validated: incoming.remote_address_validated(),
            in_progress: self.shared.handshakes.load(Ordering::Relaxed),
            phones: self.shared.phones.load(Ordering::Relaxed),
            draining: self.shared.drain.is_cancelled() || self.shared.stop.is_cancelled(),
            overloaded: self.overload.refuse_handshakes(),
        };
        let now_us = self.now_us(now);
        let limits = &self.shared.config.limits;
        let decision = handshakes::decide(limits, &mut self.sources, attempt, now_us);
        if let Some(outcome) = decision.outcome() {
            self.shared.metrics.count_handshake(outcome);
        }
        match decision {
            HandshakeDecision::Accept { tracked } => {
                self.shared.handshakes.fetch_add(1, Ordering::Relaxed);
                // The session is created when the engine names the connection (`accepted`).
                self.pending_source = tracked.then_some(source);
                IncomingDecision::Accept
            }
            HandshakeDecision::Refuse(_) => IncomingDecision::Refuse,
            HandshakeDecision::Retry => IncomingDecision::Retry,
            HandshakeDecision::Ignore => IncomingDecision::Ignore,
        }
    }

    fn accepted(&mut self, now: Instant, ch: ConnectionHandle) {
        if ch.0 >= self.sessions.len() {
            self.sessions.resize_with(ch.0 + 1, || None);
        }
        self.sessions[ch.0] = Some(Session {
            phase: Phase::Handshake,
            source: self.pending_source.take(),
            stream: None,
            buf: BytesMut::new(),
            out: VecDeque::new(),
            datagrams: false,
            holds: None,
            told_pace_ms: 0,
        });
        // quinn-proto ends a handshake only when it falls silent for the idle timeout: one kept
        // alive (a packet now and then, its Finished never sent) would hold its slots of
        // `max_handshakes` and of its source's cap for as long as its sender liked.
        let deadline = Duration::from_millis(self.shared.config.limits.handshake_timeout_ms);
        self.deadlines.set(ch.0, Some(now + deadline));
    }

    fn accept_failed(&mut self, _now: Instant) {
        let source = self.pending_source.take();
        self.shared.metrics.count_handshake(HandshakeOutcome::Failed);
        self.attempt_done(source);
    }

    fn event(
        &mut self,
        now: Instant,
        ch: ConnectionHandle,
        conn: &mut Connection,
        event: AppEvent,
    ) {
        match event {
            AppEvent::Connected => {
                // The source stays charged until `Hello` ([`LoopWorker::attempt_done`]).
                self.shared.metrics.count_handshake(HandshakeOutcome::Accepted);
                self.handshakes_done += 1;
                let stream = match self.session(ch) {
                    Some(session) => {
                        session.phase = Phase::AwaitHello;
                        session.stream
                    }
                    None => None,
                };
                let deadline = Duration::from_millis(self.shared.config.limits.hello_timeout_ms);
                self.deadlines.set(ch.0, Some(now + deadline));
                // A Hello that came with the handshake's last packets waits in the buffer.
                if let Some(id) = stream {
                    self.on_control_readable(now, ch, conn, id);
                }
            }
            AppEvent::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                while let Some(id) = conn.streams().accept(Dir::Bi) {
                    let Some(session) = self.session(ch) else { return };
                    if session.stream.is_none() {
                        session.stream = Some(id);
                        self.on_control_readable(now, ch, conn, id);
                    }
                }
            }
            AppEvent::Stream(StreamEvent::Readable { id }) => {
                self.on_control_readable(now, ch, conn, id)
            }
            AppEvent::Stream(StreamEvent::Writable { .. }) => self.flush_control(ch, conn),
            AppEvent::Stream(StreamEvent::Finished { id }) => {
                let closing = self.session(ch).and_then(|s| match s.phase {
                    Phase::Closing(code) if s.stream == Some(id) => Some(code),
                    _ => None,
                });
                if let Some(code) = closing {
                    self.close_now(now, ch, conn, code);
                }
            }
            AppEvent::DatagramReceived => self.on_datagrams(now, ch, conn),
            AppEvent::Lost(reason) => self.on_lost(now, ch, &reason),
            AppEvent::Stream(_) | AppEvent::DatagramsUnblocked => {}
        }
    }
}

impl Shell for LoopWorker {
    fn turn(&mut self, now: Instant, engine: &mut Engine, stats: &DriverStats) -> Flow {
        self.driver_stats = *stats;
        // Deadlines of sessions: the handshake or Hello not in time, or a close's grace over.
        let due: Vec<usize> = std::iter::from_fn(|| self.deadlines.pop_expired(now)).collect();
        for ch in due.into_iter().map(ConnectionHandle) {
            let phase = self.session(ch).map(|s| match s.phase {
                Phase::Closing(code) => Due::Close(code),
                Phase::Handshake => Due::Handshake,
                Phase::AwaitHello | Phase::Serving(_) => Due::Hello,
            });
            engine.with_connection(ch, |conn| match phase {
                Some(Due::Close(code)) => self.close_now(now, ch, conn, code),
                Some(Due::Handshake) => self.handshake_timed_out(now, ch, conn),
                Some(Due::Hello) => {
                    let code = ErrorCode::HelloTimeout;
                    self.start_close(now, ch, conn, code, "no valid Hello before the deadline");
                }
                None => {}
            });
        }
        self.close_superseded(now, engine);
        let now_us = self.now_us(now);
        self.judge_load(now_us, stats, engine);
        self.core.poll_age(now_us);
        if self.housekeeping(now) {
            self.announce_next_round(engine);
        }
        let flow = self.shutdown(now, engine);
        // Last, so that a batch closed by age, a load report or a drain's flush above goes to
        // the link in this same turn.
        self.exchange_with_link(now, engine);
        self.continue_broadcasts(engine, BROADCAST_PER_TURN);
        flow
    }

    fn admit(&mut self, _now: Instant, waited_us: Option<u64>, datagram: &[u8]) -> bool {
        // A short header (first bit clear) is an established connection's packet.
        let short = datagram.first().is_some_and(|first| first & 0x80 == 0);
        // Events of this datagram come out of the engine right after this call, inline.
        self.datagram_wait_us = waited_us;
        self.overload.admit(waited_us, short, datagram.len())
    }

    fn receive_buffer(&mut self) -> Option<usize> {
        self.overload.receive_buffer()
    }

    fn deadline(&mut self) -> Option<Instant> {
        let batch =
            self.core.deadline_us().map(|us| self.shared.origin + Duration::from_micros(us));
        // A broadcast in progress, or link events left over, go on at the next turn, without
        // waiting.
        let broadcasting = (!self.broadcasts.is_empty() || self.link_backlog).then(Instant::now);
        [batch, Some(self.next_housekeeping), self.deadlines.earliest(), broadcasting]
            .into_iter()
            .flatten()
            .min()
    }
}

/// What one loop worker is started with.
#[derive(Debug)]
pub struct LoopStart {
    /// The worker's index (its connection IDs start with it).
    pub id: u16,
    /// Workers of the edge.
    pub workers: usize,
    /// The driver over the worker's socket, joined to the other workers' drivers.
    pub driver: Driver,
    /// The QUIC server configuration phones meet (shared by every worker).
    pub server: Arc<ServerConfig>,
    /// The stateless-reset key every worker shares.
    pub reset_key: Arc<ring::hmac::Key>,
    /// The worker's ends of its allocator pipe.
    pub link: LoopEnds,
}

/// Gives the calling worker thread the scheduling the configuration asks for.
fn set_priority(config: &crate::config::EdgeConfig) -> std::io::Result<()> {
    let explain = |setting: String| {
        move |err: std::io::Error| {
            std::io::Error::new(err.kind(), format!("{setting}: {err} (needs CAP_SYS_NICE)"))
        }
    };
    let fifo = config.worker_fifo_priority;
    if fifo > 0 {
        let setting = format!("worker_fifo_priority = {fifo}");
        return shake_loop::udp::set_thread_fifo(i32::from(fifo)).map_err(explain(setting));
    }
    let nice = config.worker_nice;
    if nice != 0 {
        shake_loop::udp::set_thread_nice(nice).map_err(explain(format!("worker_nice = {nice}")))?;
    }
    Ok(())
}

/// Runs one worker on the current thread until it has drained (SIGTERM) or stopped (SIGINT).
pub fn run(start: LoopStart, shared: Arc<Shared>) -> std::io::Result<()> {
    let LoopStart { id, workers, mut driver, server, reset_key, link } = start;
    set_priority(&shared.config)?;
    let mut endpoint = EndpointConfig::new(reset_key);
    let worker_byte = u8::try_from(id).map_err(|_| std::io::Error::other("over 256 workers"))?;
    endpoint.cid_generator(move || Box::new(WorkerCids::new(worker_byte)));
    let mut engine = Engine::new(endpoint, Some(server));
    let l = &shared.config.limits;
    let name = WorkerName {
        edge_id: shared.config.edge_id,
        worker_id: id,
        instance_id: WorkerName::random_instance_id(),
    };
    tracing::info!(worker = id, instance_id = name.instance_id, "worker starting");
    let now = Instant::now();
    let now_us = now.saturating_duration_since(shared.origin).as_micros() as u64;
    let mut worker = LoopWorker {
        core: WorkerCore::new(
            core::settings_for(&shared.config, workers),
            name,
            shared.awards.clone(),
            now_us,
        ),
        sessions: Vec::new(),
        deadlines: Timers::default(),
        sources: SourceLimiter::new(SourceLimits::for_worker(l, workers)),
        link,
        counts: LoopCounts::default(),
        scratch: BytesMut::with_capacity(64 * 1024),
        outcomes: ScratchDatagrams::default(),
        in_flight_published: 0,
        published_stats: DriverStats::default(),
        next_housekeeping: now,
        told_through_ms: u64::MAX,
        ticks: 0,
        draining_since: None,
        stopping_since: None,
        drain_seen: false,
        stop_seen: false,
        driver_stats: DriverStats::default(),
        pending_source: None,
        broadcasts: VecDeque::new(),
        link_backlog: false,
        overload: Overload::new(shared.config.overload.settings(), now_us),
        shakes_decided: 0,
        handshakes_done: 0,
        datagram_wait_us: None,
        cpu_quota: crate::cpu_allowance::process_cores(),
        workers,
        cpu_at_start_us: (shake_loop::udp::thread_cpu_us(), shake_loop::udp::process_cpu_us()),
        id,
        shared,
    };
    let result = driver.run(&mut engine, &mut worker);
    worker.driver_stats = driver.stats();
    worker.next_housekeeping = Instant::now();
    worker.housekeeping(Instant::now());
    let stats = worker.driver_stats;
    tracing::info!(
        worker = id,
        datagrams_in = stats.datagrams_in,
        datagrams_out = stats.datagrams_out,
        busy = format!("{:.3}", stats.busy_share()),
        forwarded_in = stats.forwarded_in,
        forwarded_out = stats.forwarded_out,
        "worker stopped"
    );
    result
}
