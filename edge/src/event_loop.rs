//! One edge worker on the `shake-loop` event loop: a thread, its socket on the shared port,
//! one `quinn_proto` endpoint, and the worker's sans-IO [`WorkerCore`]. No task per phone: each
//! shake is decided when its datagram comes out of the connection, and the outcome is queued on
//! that same connection in the same pass, so the ACK of the shake rides on the outcome.
//!
//! What lives here is the phone session (handshake admission, `Hello` within the deadline,
//! the control stream, closes with an `Error` first) and the loop's turn (the allocator link's
//! frames, batch ages, housekeeping, drain). The allocator stream itself stays on the
//! allocator-link thread's tokio runtime ([`link_pipe`](crate::link_pipe)).

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
use shake_loop::timers::Timers;
use shake_loop::{AppEvent, Driver, Engine, Flow, Handler, IncomingDecision, Shell};
use shake_proto::control::CAP_DATAGRAMS;
use shake_proto::datagram::{self, Datagram};
use shake_proto::{ControlFrame, ErrorCode};

use crate::core::{self, PhoneEffect, WorkerCore};
use crate::handshakes::{self, Attempt, HandshakeDecision};
use crate::link_pipe::{LinkEvent, LoopEnds};
use crate::metrics::EdgeMetrics;
use crate::outbox::OUTBOX_FRAMES;
use crate::overload::{LoopReading, Overload};
use crate::phones::PhoneRef;
use crate::sources::{SourceLimiter, SourceLimits};
use crate::uplink::WorkerName;
use crate::user_sessions::{Claim, Closer};
use crate::worker::Shared;

/// How long a close waits for its `Error` frame to be acknowledged before closing anyway.
const CLOSE_GRACE: Duration = Duration::from_millis(200);
/// How long a fast stop gives sessions to close.
const STOP_GRACE: Duration = Duration::from_millis(300);
/// Most phones one broadcast reaches in one turn of the loop. A round opening told to 10,000
/// phones at once was 10,000 packets sealed and sent in one turn, during which every shake
/// waited in the socket: the p99 shake->outcome of about 100 ms (docs/PERFORMANCE.md). In
/// slices, shakes are served between them and a slice costs well under a millisecond.
const BROADCAST_PER_TURN: usize = 64;
/// Broadcasts in progress at once; past it the oldest is finished in one go.
const MAX_BROADCASTS: usize = 8;

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

/// One connection's session.
#[derive(Debug)]
struct Session {
    phase: Phase,
    /// The source the handshake was counted against (until the handshake ends).
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
    scratch: BytesMut,
    in_flight_published: i64,
    /// The driver's counters as last added to the metrics.
    published_stats: DriverStats,
    next_housekeeping: Instant,
    ticks: u64,
    draining_since: Option<Instant>,
    stopping_since: Option<Instant>,
    driver_stats: DriverStats,
    /// The source of the attempt just accepted, until the engine names its connection.
    pending_source: Option<IpAddr>,
    /// Broadcasts in progress, oldest first (at most [`MAX_BROADCASTS`]).
    broadcasts: VecDeque<Broadcast>,
    /// Pacing, handshake refusal and shedding under load.
    overload: Overload,
    /// Shakes decided so far (what overload control calls served).
    shakes_decided: u64,
    /// How long the datagram being handled waited in the socket (overload control's
    /// slow-down reads it).
    datagram_wait_us: Option<u64>,
}

impl LoopWorker {
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

    /// Ends a handshake's bookkeeping whichever way it went.
    fn handshake_done(&mut self, source: Option<IpAddr>) {
        self.shared.handshakes.fetch_sub(1, Ordering::Relaxed);
        if let Some(source) = source {
            self.sources.on_handshake_done(source);
        }
    }

    /// Starts closing a session with `code`: an `Error` frame first when the control stream is
    /// open (docs/PROTOCOL.md 5.1 step 7), the close itself when it is acknowledged or after
    /// [`CLOSE_GRACE`].
    fn start_close(
        &mut self,
        now: Instant,
        ch: ConnectionHandle,
        conn: &mut Connection,
        code: ErrorCode,
        reason: &str,
    ) {
        let error = self
            .encode(&ControlFrame::Error { code: code.code().into(), reason: reason.to_owned() });
        let Some(session) = self.sessions.get_mut(ch.0).and_then(Option::as_mut) else { return };
        if matches!(session.phase, Phase::Closing(_)) {
            return;
        }
        let left = std::mem::replace(&mut session.phase, Phase::Closing(code));
        let stream = session.stream;
        let source = session.source.take();
        let holds = session.holds.take();
        match left {
            Phase::Serving(at) => {
                self.core.remove_phone(at);
                self.shared.phones.fetch_sub(1, Ordering::Relaxed);
                self.shared.metrics.phones.dec();
                if let Some((user, serial)) = holds {
                    self.shared.sessions.release(user, serial);
                }
            }
            // Closed before its handshake completed: the handshake is over all the same (the
            // in-progress count must not leak).
            Phase::Handshake => {
                EdgeMetrics::add(&self.shared.metrics.handshakes, "outcome", "failed", 1);
                self.handshake_done(source);
            }
            Phase::AwaitHello | Phase::Closing(_) => {}
        }
        match stream {
            Some(stream) => {
                let mut send = conn.send_stream(stream);
                let _ = send.write(&error);
                let _ = send.finish();
                self.deadlines.set(ch.0, Some(now + CLOSE_GRACE));
            }
            None => self.close_now(now, ch, conn, code),
        }
    }

    fn close_now(
        &mut self,
        now: Instant,
        ch: ConnectionHandle,
        conn: &mut Connection,
        code: ErrorCode,
    ) {
        EdgeMetrics::add(&self.shared.metrics.sessions_closed, "code", code.name(), 1);
        conn.close(now, VarInt::from_u32(code.code()), Bytes::from_static(code.name().as_bytes()));
        self.deadlines.set(ch.0, None);
    }

    /// Writes a control frame on the phone's stream, or queues it while the stream has no
    /// credit (bounded: a phone that stops reading loses frames, counted).
    fn write_control(&mut self, ch: ConnectionHandle, conn: &mut Connection, frame: Bytes) {
        let Some(session) = self.sessions.get_mut(ch.0).and_then(Option::as_mut) else { return };
        let Some(stream) = session.stream else { return };
        if session.out.is_empty() {
            match conn.send_stream(stream).write(&frame) {
                Ok(n) if n == frame.len() => return,
                Ok(n) => {
                    session.out.push_back(frame.slice(n..));
                    return;
                }
                Err(_) => {}
            }
        }
        if session.out.len() >= OUTBOX_FRAMES {
            self.counts.outbox_full += 1;
        } else {
            session.out.push_back(frame);
        }
    }

    fn flush_control(&mut self, ch: ConnectionHandle, conn: &mut Connection) {
        let Some(session) = self.sessions.get_mut(ch.0).and_then(Option::as_mut) else { return };
        let Some(stream) = session.stream else { return };
        while let Some(frame) = session.out.front_mut() {
            match conn.send_stream(stream).write(frame) {
                Ok(n) if n == frame.len() => {
                    session.out.pop_front();
                }
                Ok(n) => {
                    *frame = frame.slice(n..);
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// Reads what the control stream has and acts on each complete frame.
    fn on_control_readable(
        &mut self,
        now: Instant,
        ch: ConnectionHandle,
        conn: &mut Connection,
        id: StreamId,
    ) {
        {
            let Some(session) = self.session(ch) else { return };
            if session.stream != Some(id) {
                return;
            }
            let mut stream = conn.recv_stream(id);
            let mut recv = match stream.read(true) {
                Ok(recv) => recv,
                Err(_) => return,
            };
            while let Ok(Some(chunk)) = recv.next(shake_proto::limits::MAX_CONTROL_PAYLOAD + 16) {
                session.buf.extend_from_slice(&chunk.bytes);
            }
            let _ = recv.finalize();
        }
        loop {
            let Some(session) = self.session(ch) else { return };
            let decoded = ControlFrame::decode(&mut session.buf);
            let frame = match decoded {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(err) => {
                    EdgeMetrics::add(&self.shared.metrics.drops, "reason", err.label(), 1);
                    let code = ErrorCode::for_decode_error(&err);
                    return self.start_close(now, ch, conn, code, code.name());
                }
            };
            let phase = match &session.phase {
                Phase::AwaitHello => None,
                Phase::Serving(at) => Some(*at),
                Phase::Handshake | Phase::Closing(_) => return,
            };
            match (frame, phase) {
                (ControlFrame::Hello { token, capabilities, .. }, None) => {
                    self.on_hello(now, ch, conn, &token, capabilities);
                }
                (ControlFrame::AwardAck { award_id }, Some(at)) => {
                    self.core.on_award_ack(at, award_id, now_ms());
                }
                (ControlFrame::Shake(shake), Some(at)) => {
                    let now_us = self.now_us(now);
                    self.shakes_decided += 1;
                    if let Some(outcome) = self.decide(at, shake, now_us, now_ms()) {
                        let frame = self.encode(&ControlFrame::outcomes(&[outcome]));
                        self.write_control(ch, conn, frame);
                        self.tell_pace(ch, conn);
                    }
                }
                (ControlFrame::Error { .. }, _) => {
                    // The phone is leaving; it closes the connection itself.
                    return;
                }
                (_, _) => {
                    let code = ErrorCode::UnexpectedFrame;
                    return self.start_close(now, ch, conn, code, code.name());
                }
            }
        }
    }

    fn on_hello(
        &mut self,
        now: Instant,
        ch: ConnectionHandle,
        conn: &mut Connection,
        token: &[u8],
        capabilities: u64,
    ) {
        let claims = match self.shared.keys.verify(token, now_ms() / 1000) {
            Ok(claims) => claims,
            Err(err) => {
                let code = ErrorCode::for_token_error(&err);
                EdgeMetrics::add(&self.shared.metrics.drops, "reason", err.label(), 1);
                return self.start_close(now, ch, conn, code, &err.to_string());
            }
        };
        // One live session per user on this edge: an older one, on any worker, is closed;
        // past the user's supersede budget this one is refused instead.
        let now_us = self.now_us(now);
        let serial = self.shared.sessions.next_serial();
        let closer = Closer::Loop { worker: self.id, conn: ch.0 };
        match self.shared.sessions.claim(claims.user_id, serial, self.id, closer, now_us) {
            Claim::Fresh => {}
            Claim::Superseded => {
                tracing::debug!(user_id = claims.user_id, "a newer session supersedes the user's");
            }
            Claim::Refused => {
                tracing::debug!(user_id = claims.user_id, "session refused: the user's is in use");
                let code = ErrorCode::SessionInUse;
                let reason = "this user's session on this edge is in use";
                return self.start_close(now, ch, conn, code, reason);
            }
        }
        // Shakes that arrived before Welcome are dropped (docs/PROTOCOL.md section 6).
        while conn.datagrams().recv().is_some() {
            self.counts.shakes_before_welcome += 1;
        }
        let at = self.core.add_phone(claims.user_id, ch, now_us);
        let now_ms = now_ms();
        let pace_ms = self.core.admission().min_interval_ms();
        let welcome = self.encode(&ControlFrame::Welcome {
            server_time_ms: now_ms,
            min_shake_interval_ms: pace_ms,
            round: self.core.admission().current_round(now_ms),
        });
        let datagrams = capabilities & CAP_DATAGRAMS != 0 && conn.datagrams().max_size().is_some();
        if let Some(session) = self.session(ch) {
            session.phase = Phase::Serving(at);
            session.datagrams = datagrams;
            session.holds = Some((claims.user_id, serial));
            session.told_pace_ms = pace_ms;
        }
        self.deadlines.set(ch.0, None);
        self.shared.phones.fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.phones.inc();
        self.write_control(ch, conn, welcome);
    }

    fn on_datagrams(&mut self, now: Instant, ch: ConnectionHandle, conn: &mut Connection) {
        let at = match self.session(ch).map(|s| (&s.phase, s.datagrams)) {
            Some((Phase::Serving(at), true)) => *at,
            Some((Phase::Serving(_), false)) | None | Some((Phase::Closing(_), _)) => {
                while conn.datagrams().recv().is_some() {}
                return;
            }
            Some((Phase::Handshake | Phase::AwaitHello, _)) => {
                // Counted and dropped when Welcome goes (or never, if it does not).
                return;
            }
        };
        let now_us = self.now_us(now);
        let now_ms = now_ms();
        let mut answered = false;
        while let Some(payload) = conn.datagrams().recv() {
            match datagram::decode(&payload) {
                Ok(Datagram::Shake(shake)) => {
                    self.shakes_decided += 1;
                    if let Some(outcome) = self.decide(at, shake, now_us, now_ms) {
                        datagram::encode_outcomes(&mut self.scratch, &[outcome]);
                        let answer = self.scratch.split().freeze();
                        let _ = conn.datagrams().send(answer, true);
                        answered = true;
                    }
                }
                Ok(Datagram::Outcomes(_)) | Err(_) => self.counts.malformed_datagrams += 1,
            }
        }
        if answered {
            self.tell_pace(ch, conn);
        }
    }

    /// Decides one shake: `SlowDown` (retry after the pace) if it waited past the queue delay
    /// target while a standing queue lasts, else the core's verdict.
    fn decide(
        &mut self,
        at: PhoneRef,
        shake: shake_proto::Shake,
        now_us: u64,
        now_ms: u64,
    ) -> Option<shake_proto::Outcome> {
        if self.overload.slow_down(self.datagram_wait_us) {
            self.counts.slowed_for_load += 1;
            let retry_after_ms = self.core.admission().min_interval_ms();
            let verdict = shake_proto::Verdict::SlowDown { retry_after_ms };
            return Some(shake_proto::Outcome { seq: shake.seq, verdict });
        }
        self.core.on_shake(at, shake, now_us, now_ms)
    }

    /// Tells the phone the worker's pace if it changed since the phone last heard it: with an
    /// answer, so the `Pace` rides in the same packet and costs no send of its own, and reaches
    /// exactly the phones that are shaking.
    fn tell_pace(&mut self, ch: ConnectionHandle, conn: &mut Connection) {
        let pace_ms = self.core.admission().min_interval_ms();
        let Some(session) = self.session(ch) else { return };
        if session.told_pace_ms == pace_ms {
            return;
        }
        session.told_pace_ms = pace_ms;
        self.counts.paces_told += 1;
        let frame = self.encode(&ControlFrame::Pace { min_shake_interval_ms: pace_ms });
        self.write_control(ch, conn, frame);
    }

    fn on_lost(&mut self, ch: ConnectionHandle, reason: &ConnectionError) {
        let Some(session) = self.sessions.get_mut(ch.0).and_then(Option::take) else { return };
        self.deadlines.set(ch.0, None);
        match session.phase {
            Phase::Handshake => {
                EdgeMetrics::add(&self.shared.metrics.handshakes, "outcome", "failed", 1);
                self.handshake_done(session.source);
            }
            Phase::Serving(at) => {
                self.core.remove_phone(at);
                self.shared.phones.fetch_sub(1, Ordering::Relaxed);
                self.shared.metrics.phones.dec();
                if let Some((user, serial)) = session.holds {
                    self.shared.sessions.release(user, serial);
                }
            }
            Phase::AwaitHello | Phase::Closing(_) => {}
        }
        tracing::trace!(conn = ch.0, %reason, "phone connection lost");
    }

    /// Delivers what the core asked for to phones.
    fn deliver(&mut self, engine: &mut Engine, effects: Vec<PhoneEffect>) {
        for effect in effects {
            match effect {
                PhoneEffect::ToPhone(at, frame) => {
                    let Some(&ch) = self.core.phones().get(at).map(|p| &p.ext) else { continue };
                    let bytes = self.encode(&frame);
                    engine.with_connection(ch, |conn| self.write_control(ch, conn, bytes));
                }
                PhoneEffect::Broadcast(frame) => self.broadcast(engine, &frame),
            }
        }
    }

    /// Starts sending `frame` to every serving phone, [`BROADCAST_PER_TURN`] a turn. A phone
    /// that starts its session meanwhile learns the same from its `Welcome`; one whose slot
    /// comes after the cursor may hear it twice, which every broadcast frame allows.
    fn broadcast(&mut self, engine: &mut Engine, frame: &ControlFrame) {
        let pace_ms = match frame {
            ControlFrame::RoundNotice { min_shake_interval_ms, .. }
            | ControlFrame::Pace { min_shake_interval_ms } => Some(*min_shake_interval_ms),
            _ => None,
        };
        let frame = self.encode(frame);
        while self.broadcasts.len() >= MAX_BROADCASTS {
            // A budget of every slot finishes at least the oldest.
            self.continue_broadcasts(engine, self.sessions.len().max(1));
        }
        self.broadcasts.push_back(Broadcast { frame, pace_ms, next: 0 });
    }

    /// Sends the broadcasts in progress to at most `budget` more phones.
    fn continue_broadcasts(&mut self, engine: &mut Engine, mut budget: usize) {
        while budget > 0 {
            let Some(mut broadcast) = self.broadcasts.pop_front() else { return };
            while budget > 0 && broadcast.next < self.sessions.len() {
                let ch = ConnectionHandle(broadcast.next);
                broadcast.next += 1;
                let Some(session) = self.sessions.get_mut(ch.0).and_then(Option::as_mut) else {
                    continue;
                };
                if matches!(session.phase, Phase::Serving(_)) {
                    // The phone now keeps what the frame tells: `tell_pace` compares with it.
                    if let Some(pace_ms) = broadcast.pace_ms {
                        session.told_pace_ms = pace_ms;
                    }
                    budget -= 1;
                    let frame = broadcast.frame.clone();
                    engine.with_connection(ch, |conn| self.write_control(ch, conn, frame));
                }
            }
            if broadcast.next < self.sessions.len() {
                self.broadcasts.push_front(broadcast);
            }
        }
    }

    /// The allocator link: its events in, the uplink's frames out (while the pipe has room).
    fn exchange_with_link(&mut self, now: Instant, engine: &mut Engine) {
        let now_us = self.now_us(now);
        while let Ok(event) = self.link.from_link.try_recv() {
            match event {
                LinkEvent::Up => {
                    let up = self.core.uplink();
                    up.link_up();
                    if up.links() > 1 {
                        self.shared.metrics.batches_resent.inc_by(up.in_flight() as u64);
                    }
                }
                LinkEvent::Down => self.core.uplink().link_down(),
                LinkEvent::Frame(frame) => {
                    match &frame {
                        shake_proto::AllocatorFrame::RoundState { .. } => {
                            self.shared.metrics.round_states.inc();
                        }
                        shake_proto::AllocatorFrame::UsersLimited { until_ms, user_ids } => {
                            self.shared.sessions.note_limited(user_ids, *until_ms, now_ms());
                        }
                        _ => {}
                    }
                    let mut effects = Vec::new();
                    self.core.on_allocator_frame(frame, now_us, now_ms(), &mut effects);
                    self.deliver(engine, effects);
                }
            }
        }
        while self.link.to_link.capacity() > 0 {
            let Some(frame) = self.core.uplink().poll_transmit() else { break };
            if self.link.to_link.try_send(frame).is_err() {
                break;
            }
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        if now < self.next_housekeeping {
            return;
        }
        self.next_housekeeping = now + Duration::from_millis(100);
        self.ticks += 1;
        if self.ticks == 20 && shake_ops::supervise::failpoint("edge-worker-panic") {
            panic!("failpoint edge-worker-panic");
        }
        let metrics = &self.shared.metrics;
        metrics.add_core_counts(self.core.take_counts());
        let c = std::mem::take(&mut self.counts);
        EdgeMetrics::add(&metrics.drops, "reason", "malformed_datagram", c.malformed_datagrams);
        EdgeMetrics::add(&metrics.drops, "reason", "shake_before_welcome", c.shakes_before_welcome);
        EdgeMetrics::add(&metrics.drops, "reason", "outbox_full", c.outbox_full);
        metrics.paces_told.inc_by(c.paces_told);
        EdgeMetrics::add(&metrics.shed, "how", "slow_down", c.slowed_for_load);
        let in_flight = self.core.uplink().in_flight() as i64;
        metrics.in_flight_batches.inc_by(in_flight - self.in_flight_published);
        self.in_flight_published = in_flight;
        metrics.awards_outstanding.set(self.shared.awards.outstanding() as i64);
        let (was, is) = (self.published_stats, self.driver_stats);
        metrics.add_loop_stats(self.id, &was, &is);
        self.published_stats = is;
        if self.ticks.is_multiple_of(10) {
            let now_us = self.now_us(now);
            self.sources.sweep(now_us);
            self.core.on_load_tick(now_ms());
            metrics.users_live.set(self.shared.sessions.live() as i64);
        }
    }

    /// Drain (SIGTERM) and stop (SIGINT), checked once a turn.
    fn shutdown(&mut self, now: Instant, engine: &mut Engine) -> Flow {
        if self.shared.stop.is_cancelled() {
            let since = *self.stopping_since.get_or_insert(now);
            if since == now {
                let serving: Vec<ConnectionHandle> = self.phone_connections();
                for ch in serving {
                    engine.with_connection(ch, |conn| {
                        let code = ErrorCode::Draining;
                        self.start_close(now, ch, conn, code, code.name());
                    });
                }
            }
            let closed =
                self.sessions.iter().flatten().all(|s| matches!(s.phase, Phase::Closing(_)));
            return if now.duration_since(since) >= STOP_GRACE
                || (closed && engine.connections() == 0)
            {
                Flow::Stop
            } else {
                Flow::Continue
            };
        }
        if self.shared.drain.is_cancelled() {
            let since = *self.draining_since.get_or_insert(now);
            if since == now {
                self.broadcast(engine, &ControlFrame::GoAway { reconnect_after_ms: 1_000 });
                let now_us = self.now_us(now);
                self.core.flush(now_us);
            }
            let deadline = Duration::from_millis(self.shared.config.limits.drain_deadline_ms);
            let answered = self.core.uplink().in_flight() == 0 && !self.core.uplink().has_output();
            let left = self.core.phones().is_empty();
            if (answered && left) || now.duration_since(since) >= deadline {
                tracing::info!(
                    worker = self.id,
                    unanswered = self.core.uplink().in_flight(),
                    phones_left = self.core.phones().len(),
                    "worker drained"
                );
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// Closes this worker's sessions that a newer session of their user superseded.
    fn close_superseded(&mut self, now: Instant, engine: &mut Engine) {
        for old in self.shared.sessions.take_superseded(self.id) {
            let ch = ConnectionHandle(old.conn);
            let current = self.session(ch).is_some_and(|s| {
                matches!(s.phase, Phase::Serving(_)) && s.holds.is_some_and(|h| h.1 == old.serial)
            });
            if current {
                engine.with_connection(ch, |conn| {
                    let code = ErrorCode::SessionSuperseded;
                    self.start_close(now, ch, conn, code, "a newer session of this user started");
                });
            }
        }
    }

    /// Feeds the loop's counters to overload control; at the end of each of its intervals,
    /// the pace it sets and its verdict go to admission and the metrics. The pace reaches the
    /// phones with their next answers (a broadcast to every phone costs what a second of
    /// answers does, and a phone paced to a long interval hears a lower pace one interval
    /// later).
    fn judge_load(&mut self, now_us: u64, stats: &DriverStats) {
        if !self.overload.due(now_us) {
            return;
        }
        let reading = LoopReading {
            // What this worker's socket gave (forwarded datagrams are counted by the worker
            // that read them).
            datagrams_in: stats.datagrams_in,
            shed: stats.shed,
            kernel_drops: stats.kernel_drops,
            busy_us: stats.busy_us,
            wall_us: stats.wall_us,
            shakes: self.shakes_decided,
            phones: self.core.phones().len() as u64,
        };
        let base_ms = self.core.admission().base_interval_ms();
        let Some(verdict) = self.overload.on_turn(now_us, reading, base_ms) else { return };
        let pace_ms = self.overload.pace_ms(base_ms);
        let was = self.core.admission().min_interval_ms();
        self.core.admission_mut().set_pace_ms(pace_ms);
        if pace_ms != was {
            tracing::info!(
                worker = self.id,
                pace_ms,
                overload = format!("{:.2}", verdict.overload),
                busy = format!("{:.2}", verdict.busy),
                "pace changed"
            );
        }
        self.shared.metrics.set_overload(self.id, pace_ms, &verdict);
    }

    fn phone_connections(&self) -> Vec<ConnectionHandle> {
        self.sessions
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.as_ref().is_some_and(|s| !matches!(s.phase, Phase::Closing(_) | Phase::Handshake))
            })
            .map(|(i, _)| ConnectionHandle(i))
            .collect()
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
        if let Some(label) = decision.label() {
            EdgeMetrics::add(&self.shared.metrics.handshakes, "outcome", label, 1);
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

    fn accepted(&mut self, _now: Instant, ch: ConnectionHandle) {
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
    }

    fn accept_failed(&mut self, _now: Instant) {
        let source = self.pending_source.take();
        EdgeMetrics::add(&self.shared.metrics.handshakes, "outcome", "failed", 1);
        self.handshake_done(source);
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
                let source = self.session(ch).and_then(|s| s.source.take());
                self.handshake_done(source);
                EdgeMetrics::add(&self.shared.metrics.handshakes, "outcome", "accepted", 1);
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
            AppEvent::Lost(reason) => self.on_lost(ch, &reason),
            AppEvent::Stream(_) | AppEvent::DatagramsUnblocked => {}
        }
    }
}

impl Shell for LoopWorker {
    fn turn(&mut self, now: Instant, engine: &mut Engine, stats: &DriverStats) -> Flow {
        self.driver_stats = *stats;
        // Deadlines of sessions: Hello not in time, or a close's grace over.
        let due: Vec<usize> = std::iter::from_fn(|| self.deadlines.pop_expired(now)).collect();
        for ch in due.into_iter().map(ConnectionHandle) {
            let phase = self.session(ch).map(|s| match s.phase {
                Phase::Closing(code) => Some(code),
                _ => None,
            });
            engine.with_connection(ch, |conn| match phase {
                Some(Some(code)) => self.close_now(now, ch, conn, code),
                Some(None) => {
                    let code = ErrorCode::HelloTimeout;
                    self.start_close(now, ch, conn, code, "no valid Hello before the deadline");
                }
                None => {}
            });
        }
        self.close_superseded(now, engine);
        let now_us = self.now_us(now);
        self.judge_load(now_us, stats);
        self.core.poll_age(now_us);
        self.housekeeping(now);
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
        // A broadcast in progress goes on at the next turn, without waiting.
        let broadcasting = (!self.broadcasts.is_empty()).then(Instant::now);
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

/// Runs one worker on the current thread until it has drained (SIGTERM) or stopped (SIGINT).
pub fn run(start: LoopStart, shared: Arc<Shared>) -> std::io::Result<()> {
    let LoopStart { id, workers, mut driver, server, reset_key, link } = start;
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
    tracing::info!(worker = id, instance_id = name.instance_id, io = "loop", "worker starting");
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
        in_flight_published: 0,
        published_stats: DriverStats::default(),
        next_housekeeping: now,
        ticks: 0,
        draining_since: None,
        stopping_since: None,
        driver_stats: DriverStats::default(),
        pending_source: None,
        broadcasts: VecDeque::new(),
        overload: Overload::new(shared.config.overload.settings(), now_us),
        shakes_decided: 0,
        datagram_wait_us: None,
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
