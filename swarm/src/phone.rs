//! One simulated phone: a real QUIC connection with its own session token, run by the client
//! library as an app would run it: [`PhoneSession`] keeps the protocol's rules (`Hello`,
//! `Welcome`, the pushed pace, slow-down, round times and start spreads, awards held until
//! acknowledged), [`Reconnect`] says when and where to connect next, [`EdgeSilence`] notices
//! an edge that died under its phones. What is about load stays here: shakes on an open-loop
//! schedule, outcomes and awards timed, churn, and the hostile roles, which break the rules
//! the library keeps (hostile.rs holds what they do beyond that).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use shake_client::quinn_driver::connection_end;
use shake_client::{
    ConnectionEnd, EdgeSilence, EndReason, NextConnect, PhoneSession, Reconnect, ReconnectSettings,
    SessionEvent, ShakeRefusal,
};
use shake_proto::{ErrorCode, Shake, Verdict};

use super::hostile;
use super::schedule::Schedule;
use super::stats::{ReceivedAward, Stats};

/// How a phone behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Follows the rules.
    Honest,
    /// Shakes ten times too fast.
    OverRate,
    /// Presents a forged token.
    ForgedToken,
    /// Presents an expired token.
    ExpiredToken,
    /// Sends malformed datagrams between shakes.
    Malformed,
    /// Sends a control frame larger than the protocol allows.
    OversizedFrame,
    /// Tries to open many streams, then shakes.
    StreamFlood,
    /// Starts handshakes from fresh source ports and never says `Hello`.
    ConnectionFlood,
    /// One of many connections of the same user, each shaking at the honest rate; reconnects
    /// whenever a newer session of the user supersedes it.
    MultiConnection,
}

impl Role {
    /// Whether the phone keeps the edge's pace and slow-downs (an over-rate attacker does not:
    /// it is what the edge's per-phone bucket is for).
    pub fn obeys_pacing(self) -> bool {
        self != Role::OverRate
    }

    /// The hostile roles, in the order of [`super::scenario::Hostile::shares`].
    pub const HOSTILE: [Role; 8] = [
        Role::OverRate,
        Role::ForgedToken,
        Role::ExpiredToken,
        Role::Malformed,
        Role::OversizedFrame,
        Role::StreamFlood,
        Role::ConnectionFlood,
        Role::MultiConnection,
    ];
}

/// What every phone shares.
#[derive(Debug)]
pub struct PhoneContext {
    /// Edges to connect to.
    pub edges: Vec<SocketAddr>,
    /// Name in their certificates.
    pub server_name: String,
    /// Shakes per second while a round is open.
    pub rate_per_s: f64,
    /// Interval jitter.
    pub jitter: f64,
    /// Shake at round open.
    pub spike: bool,
    /// How often a churning phone leaves and comes back.
    pub churn_every: Duration,
    /// The run's clock origin.
    pub origin: Instant,
    /// The Unix time of `origin`, milliseconds: the phones' clock is `origin`'s, so that the
    /// sessions' times and the schedules' agree.
    pub origin_unix_ms: u64,
    /// When to stop.
    pub end: Instant,
    /// Measurements.
    pub stats: Arc<Stats>,
    /// TLS and transport settings (connection floods open endpoints of their own).
    pub client_config: quinn::ClientConfig,
}

impl PhoneContext {
    /// The phones' Unix milliseconds.
    fn now_ms(&self) -> u64 {
        self.origin_unix_ms + self.origin.elapsed().as_millis() as u64
    }

    /// Microseconds since `origin`, the schedules' time.
    fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }

    /// A time of the phones' clock as the schedules' time.
    fn us_at(&self, unix_ms: u64) -> u64 {
        unix_ms.saturating_sub(self.origin_unix_ms) * 1_000
    }
}

/// The swarm's reconnect policy: the library's, with waits sized for runs of tens of seconds
/// (a phone app waits 1 s doubling to 16 s, and a session must last 30 s to start it over).
const SWARM_RECONNECT: ReconnectSettings =
    ReconnectSettings { first_ms: 250, max_ms: 8_000, in_use_ms: 60_000, stable_ms: 5_000 };
/// A multi-connection cheater's pause before taking its user's session again (times a jitter
/// of 0.5 to 1.5): a cheater does not wait as the library would.
const CHEATER_RECONNECT: Duration = Duration::from_secs(1);
/// Longest wait for a handshake, and for `Welcome` after it, before trying again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Intended and actual send times of recent shakes, by sequence number.
struct InFlight {
    slots: [(u64, Instant, Instant); 64],
}

impl InFlight {
    fn new(now: Instant) -> Self {
        Self { slots: [(u64::MAX, now, now); 64] }
    }

    fn sent(&mut self, seq: u64, intended: Instant, actual: Instant) {
        self.slots[(seq % 64) as usize] = (seq, intended, actual);
    }

    fn answered(&self, seq: u64) -> Option<(Instant, Instant)> {
        let (s, intended, actual) = self.slots[(seq % 64) as usize];
        (s == seq).then_some((intended, actual))
    }
}

/// How one connection's session ended, as the phone's loop sees it.
enum SessionEnd {
    /// The run is over.
    Done,
    /// A churning phone leaves, to come back at once (resuming its TLS session).
    Churn,
    /// The connection ended: [`Reconnect`] decides what comes next.
    Ended(ConnectionEnd),
    /// A hostile phone did its one thing and was closed for it: it stops.
    Refused,
}

/// Runs one phone until the end of the run.
pub async fn run(
    index: usize,
    role: Role,
    churns: bool,
    token: Bytes,
    user_id: u64,
    endpoint: quinn::Endpoint,
    ctx: Arc<PhoneContext>,
) {
    if role == Role::ConnectionFlood {
        return hostile::flood_connections(index, &ctx).await;
    }
    let rate = if role == Role::OverRate { ctx.rate_per_s * 10.0 } else { ctx.rate_per_s };
    let mut schedule = Schedule::new(ctx.now_us(), rate, ctx.jitter, index as u64);
    let mut reconnect = Reconnect::new(ctx.edges.len(), index as u64, SWARM_RECONNECT)
        .starting_at(index % ctx.edges.len());
    let mut edge = reconnect.first();
    // A churning phone's sessions last between half and one and a half `churn_every`.
    let churn_after = churns.then(|| ctx.churn_every.mul_f64(0.5 + (index % 101) as f64 / 100.0));
    let mut reconnecting = false;
    while Instant::now() < ctx.end {
        let phone = Connection { role, user_id, churn_after, reconnecting, ctx: &ctx };
        let end = phone.run(&endpoint, ctx.edges[edge], &token, &mut schedule, &mut reconnect);
        let end = match end.await {
            SessionEnd::Done | SessionEnd::Refused => break,
            SessionEnd::Churn => {
                ctx.stats.churned.fetch_add(1, Ordering::Relaxed);
                reconnecting = true;
                continue;
            }
            SessionEnd::Ended(end) => end,
        };
        reconnecting = true;
        let code = match end {
            ConnectionEnd::Closed(code) => ErrorCode::from_code(code),
            _ => None,
        };
        if role == Role::MultiConnection
            && matches!(code, Some(ErrorCode::SessionInUse | ErrorCode::SessionSuperseded))
        {
            // A cheater comes back after a pause to take the session again.
            let pause = CHEATER_RECONNECT.mul_f64(0.5 + (index % 89) as f64 / 89.0);
            sleep_until_or_end(Instant::now() + pause, &ctx).await;
            continue;
        }
        match reconnect.ended(ctx.now_ms(), end) {
            NextConnect::Stop(_) => break,
            NextConnect::At { edge: next, at_ms } => {
                edge = next;
                let wait = Duration::from_millis(at_ms.saturating_sub(ctx.now_ms()));
                sleep_until_or_end(Instant::now() + wait, &ctx).await;
            }
        }
    }
    let behind = schedule.late + schedule.skipped;
    ctx.stats.behind_schedule.fetch_add(behind, Ordering::Relaxed);
}

async fn sleep_until_or_end(at: Instant, ctx: &PhoneContext) {
    tokio::time::sleep_until(at.min(ctx.end).into()).await;
}

/// One connection's worth of a phone.
struct Connection<'a> {
    role: Role,
    user_id: u64,
    churn_after: Option<Duration>,
    reconnecting: bool,
    ctx: &'a PhoneContext,
}

impl Connection<'_> {
    async fn run(
        self,
        endpoint: &quinn::Endpoint,
        edge: SocketAddr,
        token: &Bytes,
        schedule: &mut Schedule,
        reconnect: &mut Reconnect,
    ) -> SessionEnd {
        let stats = &self.ctx.stats;
        let started = Instant::now();
        let patience = CONNECT_TIMEOUT.min(self.ctx.end.saturating_duration_since(started));
        let conn = match endpoint.connect(edge, &self.ctx.server_name) {
            Ok(connecting) => match tokio::time::timeout(patience, connecting).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(err)) => {
                    stats.error(format!("connect: {err}"));
                    return SessionEnd::Ended(ConnectionEnd::NotConnected);
                }
                Err(_) => {
                    stats.error("connect: no answer in time");
                    return SessionEnd::Ended(ConnectionEnd::NotConnected);
                }
            },
            Err(err) => {
                // The configuration, not the edge: retrying cannot help.
                stats.error(format!("connect: {err}"));
                return SessionEnd::Done;
            }
        };
        let Ok((send, recv)) = conn.open_bi().await else {
            stats.error("open control stream");
            return SessionEnd::Ended(connection_end(&conn, false));
        };
        let mut link = Link {
            conn,
            send,
            recv,
            read: vec![0; 4096],
            session: PhoneSession::new(token.clone()),
        };
        link.session.hello();
        let end = match tokio::time::timeout(patience, link.welcome(self.role, self.ctx)).await {
            Ok(Ok(min_shake_interval_ms)) => {
                reconnect.welcomed(self.ctx.now_ms());
                self.record_handshake(started);
                if self.role.obeys_pacing() {
                    schedule.pace(min_shake_interval_ms, self.ctx.now_us());
                }
                stats.connected.fetch_add(1, Ordering::Relaxed);
                stats.sessions.fetch_add(1, Ordering::Relaxed);
                let end = self.after_welcome(&mut link, schedule).await;
                stats.connected.fetch_sub(1, Ordering::Relaxed);
                end
            }
            Ok(Err(end)) => SessionEnd::Ended(end),
            Err(_) => {
                stats.error("no welcome");
                SessionEnd::Ended(ConnectionEnd::NotConnected)
            }
        };
        link.conn.close(0u32.into(), b"bye");
        end
    }

    fn record_handshake(&self, started: Instant) {
        let mut h = self.ctx.stats.histograms.lock().expect("stats lock");
        let took = started.elapsed().as_micros() as u64;
        if self.reconnecting {
            h.reconnect_handshake.saturating_record(took);
        } else {
            h.handshake.saturating_record(took);
        }
    }

    async fn after_welcome(&self, link: &mut Link, schedule: &mut Schedule) -> SessionEnd {
        match self.role {
            Role::OversizedFrame => {
                hostile::send_oversized_frame(&link.conn, &mut link.send, &self.ctx.stats).await;
                return SessionEnd::Refused;
            }
            Role::StreamFlood => hostile::flood_streams(&link.conn, &self.ctx.stats).await,
            _ => {}
        }
        let leave_at = self.churn_after.map(|after| Instant::now() + after);
        Shaking::new(self, leave_at).run(link, schedule).await
    }
}

/// The connection, its control stream and the session on it.
struct Link {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    read: Vec<u8>,
    session: PhoneSession,
}

impl Link {
    /// Sends what the session queued, reads until `Welcome`: the interval it set, or how the
    /// connection ended.
    async fn welcome(&mut self, role: Role, ctx: &PhoneContext) -> Result<u32, ConnectionEnd> {
        let stats = &ctx.stats;
        loop {
            self.flush().await?;
            match self.recv.read(&mut self.read).await {
                Ok(Some(n)) => {
                    if let Err(code) = self.session.on_control(ctx.now_ms(), &self.read[..n]) {
                        return Err(self.violation(code, stats));
                    }
                }
                _ => {
                    stats.error("no welcome");
                    return Err(connection_end(&self.conn, false));
                }
            }
            while let Some(event) = self.session.poll_event() {
                match event {
                    SessionEvent::Welcomed { min_shake_interval_ms, .. } => {
                        return Ok(min_shake_interval_ms);
                    }
                    SessionEvent::Ended(reason) => return Err(ended(&reason, role, stats)),
                    _ => {}
                }
            }
        }
    }

    /// Writes what the session queued on the control stream.
    async fn flush(&mut self) -> Result<(), ConnectionEnd> {
        if self.session.control_out().is_empty() {
            return Ok(());
        }
        let out = self.session.control_out().split().freeze();
        self.send.write_all(&out).await.map_err(|_| connection_end(&self.conn, true))
    }

    /// The edge broke the protocol: closed with the session's code.
    fn violation(&self, code: ErrorCode, stats: &Stats) -> ConnectionEnd {
        stats.error(format!("edge broke the protocol: {}", code.name()));
        self.conn.close(code.code().into(), b"protocol violation");
        ConnectionEnd::Closed(code.code().into())
    }
}

/// How a session's end reads to [`Reconnect`], counted.
fn ended(reason: &EndReason, role: Role, stats: &Stats) -> ConnectionEnd {
    match reason {
        EndReason::GoAway { reconnect_after_ms } => {
            ConnectionEnd::GoAway { reconnect_after_ms: *reconnect_after_ms }
        }
        EndReason::Refused { code, .. } => {
            stats.closed_by_edge(reason.name());
            if role == Role::Honest {
                stats.error(format!("honest phone refused: {}", reason.name()));
            }
            ConnectionEnd::Closed(*code)
        }
        EndReason::Violation(code) => {
            stats.error(format!("edge broke the protocol: {}", code.name()));
            ConnectionEnd::Closed(code.code().into())
        }
    }
}

/// A welcomed session: shakes on the schedule, answers timed, awards acknowledged.
struct Shaking<'a> {
    role: Role,
    user_id: u64,
    ctx: &'a PhoneContext,
    /// When a churning phone leaves (or the run ends).
    stop_at: Instant,
    in_flight: InFlight,
    /// The intended time of the last shake answered `forwarded` (its award is timed from it).
    last_forwarded: Option<Instant>,
    silence: EdgeSilence,
    /// Whether this phone's start in the round had come at the last look.
    was_open: bool,
    /// An over-rate cheater's own sequence numbers (it does not let the session pace it).
    cheat_seq: u64,
    datagram: BytesMut,
}

impl<'a> Shaking<'a> {
    fn new(phone: &Connection<'a>, leave_at: Option<Instant>) -> Self {
        Self {
            role: phone.role,
            user_id: phone.user_id,
            ctx: phone.ctx,
            stop_at: leave_at.map_or(phone.ctx.end, |at| at.min(phone.ctx.end)),
            in_flight: InFlight::new(Instant::now()),
            last_forwarded: None,
            silence: EdgeSilence::default(),
            was_open: false,
            cheat_seq: 0,
            datagram: BytesMut::with_capacity(64),
        }
    }

    async fn run(mut self, link: &mut Link, schedule: &mut Schedule) -> SessionEnd {
        loop {
            let wake = self.wake_at(&link.session, schedule);
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {
                    if let Some(end) = self.on_time(link, schedule) {
                        return end;
                    }
                }
                datagram = link.conn.read_datagram() => {
                    let Ok(payload) = datagram else {
                        return SessionEnd::Ended(connection_end(&link.conn, true));
                    };
                    self.silence.heard();
                    // A datagram never ends the session; one the phone cannot read is an error
                    // of the edge's, counted.
                    let dropped = link.session.datagrams_dropped();
                    let _ = link.session.on_datagram(self.ctx.now_ms(), &payload);
                    if link.session.datagrams_dropped() > dropped {
                        self.ctx.stats.error("unreadable datagram from the edge");
                    }
                }
                read = link.recv.read(&mut link.read) => {
                    let Ok(Some(n)) = read else {
                        return SessionEnd::Ended(connection_end(&link.conn, true));
                    };
                    self.silence.heard();
                    let now_ms = self.ctx.now_ms();
                    if let Err(code) = link.session.on_control(now_ms, &link.read[..n]) {
                        return SessionEnd::Ended(link.violation(code, &self.ctx.stats));
                    }
                }
            }
            self.take_events(&mut link.session, schedule);
            if let Err(end) = link.flush().await {
                return SessionEnd::Ended(end);
            }
            if let Some(reason) = link.session.ended() {
                return SessionEnd::Ended(ended(reason, self.role, &self.ctx.stats));
            }
        }
    }

    /// The next shake's intended time, or sooner: this phone's start in the next round (so
    /// the spike is on time), the silence watch's deadline, the phone's leaving.
    fn wake_at(&self, session: &PhoneSession, schedule: &Schedule) -> Instant {
        let mut wake = self.ctx.origin + Duration::from_micros(schedule.next_us());
        let now_ms = self.ctx.now_ms();
        let soonest_ms = [
            (!self.was_open).then(|| session.next_opening_ms(now_ms)).flatten(),
            self.silence.deadline_ms(),
        ];
        for at_ms in soonest_ms.into_iter().flatten() {
            let at = self.ctx.origin + Duration::from_millis(at_ms - self.ctx.origin_unix_ms);
            wake = wake.min(at);
        }
        wake.min(self.stop_at)
    }

    /// The timer fired: leave, notice silence, or send the shakes due.
    fn on_time(&mut self, link: &mut Link, schedule: &mut Schedule) -> Option<SessionEnd> {
        let now = Instant::now();
        if now >= self.ctx.end {
            return Some(SessionEnd::Done);
        }
        if now >= self.stop_at {
            return Some(SessionEnd::Churn);
        }
        let acks_received = link.conn.stats().frame_rx.acks;
        let now_ms = self.ctx.now_ms();
        if self.silence.check(now_ms, acks_received) {
            self.ctx.stats.error("edge silent: moved to the next edge");
            return Some(SessionEnd::Ended(ConnectionEnd::Silent));
        }
        let open = self.my_round_is_open(&link.session, now_ms);
        let now_us = self.ctx.now_us();
        if open && !self.was_open && self.ctx.spike {
            schedule.restart(now_us);
        }
        self.was_open = open;
        while let Some(intended_us) = schedule.due(now_us) {
            if !open {
                continue;
            }
            self.datagram.clear();
            let seq = match self.shake(&mut link.session, now_ms) {
                Ok(seq) => seq,
                Err(ShakeRefusal::TooSoon { at_ms }) => {
                    self.ctx.stats.held_back.fetch_add(1, Ordering::Relaxed);
                    schedule.not_before(self.ctx.us_at(at_ms));
                    continue;
                }
                Err(_) => continue,
            };
            let intended = self.ctx.origin + Duration::from_micros(intended_us);
            self.in_flight.sent(seq, intended, Instant::now());
            if link.conn.send_datagram(self.datagram.split().freeze()).is_err() {
                self.ctx.stats.error("send datagram");
                return Some(SessionEnd::Ended(connection_end(&link.conn, true)));
            }
            self.ctx.stats.sent.fetch_add(1, Ordering::Relaxed);
            self.silence.shake_sent(now_ms, acks_received);
            if self.role == Role::Malformed {
                let _ = link.conn.send_datagram(Bytes::from_static(&[0x01, 0xff, 0xff]));
            }
        }
        None
    }

    /// Whether the round is open for this phone: open by the edge's clock, and this phone's
    /// place in its start spread reached.
    fn my_round_is_open(&self, session: &PhoneSession, now_ms: u64) -> bool {
        let at = session.server_time_ms(now_ms);
        session.round(now_ms).is_some_and(|round| {
            (round.starts_at_ms..round.ends_at_ms).contains(&at)
                && at >= round.start_for(self.user_id)
        })
    }

    /// One shake into `self.datagram`: through the session, which keeps the pace; an
    /// over-rate cheater writes its own, as fast as its schedule goes.
    fn shake(&mut self, session: &mut PhoneSession, now_ms: u64) -> Result<u64, ShakeRefusal> {
        if self.role.obeys_pacing() {
            return session.shake(now_ms, &mut self.datagram);
        }
        let round = session.round(now_ms).ok_or(ShakeRefusal::NoOpenRound)?;
        self.cheat_seq += 1;
        let client_time_ms = session.server_time_ms(now_ms);
        Shake { round_id: round.round_id, seq: self.cheat_seq, client_time_ms }
            .encode_datagram(&mut self.datagram);
        Ok(self.cheat_seq)
    }

    /// What the session told: outcomes timed, awards counted and acknowledged, pace kept.
    fn take_events(&mut self, session: &mut PhoneSession, schedule: &mut Schedule) {
        let stats = &self.ctx.stats;
        while let Some(event) = session.poll_event() {
            match event {
                SessionEvent::Outcome(outcome) => {
                    let Some((intended, actual)) = self.in_flight.answered(outcome.seq) else {
                        continue;
                    };
                    let now = Instant::now();
                    let honest = self.role == Role::Honest;
                    stats.outcome(outcome.verdict, now - intended, now - actual, honest);
                    match outcome.verdict {
                        Verdict::SlowDown { .. } if self.role.obeys_pacing() => {
                            schedule.hold_until(self.ctx.us_at(session.next_shake_allowed_ms()));
                        }
                        Verdict::Forwarded => {
                            self.last_forwarded = Some(intended);
                            stats.forwarded_for(self.user_id);
                        }
                        _ => {}
                    }
                }
                SessionEvent::Award { award_id, round_id, prize } => {
                    if let Some(intended) = self.last_forwarded {
                        let took = intended.elapsed().as_micros() as u64;
                        stats.histograms.lock().expect("stats lock").award.saturating_record(took);
                    }
                    stats.award_received(ReceivedAward::new(
                        award_id,
                        self.user_id,
                        round_id,
                        &prize,
                    ));
                    session.ack_award(award_id);
                }
                SessionEvent::Paced { min_shake_interval_ms } if self.role.obeys_pacing() => {
                    schedule.pace(min_shake_interval_ms, self.ctx.now_us());
                }
                _ => {}
            }
        }
    }
}
