//! One simulated phone: a real QUIC connection with its own session token, a control stream,
//! shakes as datagrams on an open-loop schedule, outcomes and awards measured, awards
//! acknowledged. Reconnects (to the next edge) after `GoAway` or a lost connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use shake_proto::control::CAP_DATAGRAMS;
use shake_proto::datagram::{self, Datagram};
use shake_proto::{ControlFrame, RoundInfo, Shake, Verdict};
use tokio::io::AsyncReadExt;

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
    /// When to stop.
    pub end: Instant,
    /// Measurements.
    pub stats: Arc<Stats>,
    /// TLS and transport settings (connection floods open endpoints of their own).
    pub client_config: quinn::ClientConfig,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// First wait after a failed connect; doubled on each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between connect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// A multi-connection cheater's pause before reconnecting a superseded connection (times a
/// jitter of 0.5 to 1.5).
const CHEATER_RECONNECT: Duration = Duration::from_secs(1);
/// Longest wait for a handshake before trying again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A live edge answers every shake at once (the verdict does not wait for the allocator), so
/// shakes unanswered this long, with nothing from the edge acknowledged meanwhile either, mean
/// the edge is gone: the phone moves to the next edge rather than wait out QUIC's idle timeout.
/// Answers that are merely slow (an edge shedding load acknowledges other packets) are waited
/// for: a reconnect costs the edge about ten shakes.
const EDGE_SILENT: Duration = Duration::from_secs(2);

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

enum SessionEnd {
    /// The run is over.
    Done,
    /// A churning phone leaves, to come back at once (resuming its TLS session).
    Churn,
    /// Reconnect (GoAway or a lost connection, after a session).
    Reconnect,
    /// The session could not be set up: retry with backoff.
    Failed,
    /// The edge closed us for good (hostile phones).
    Refused,
    /// A newer session of the same user replaced this one (`SESSION_SUPERSEDED`).
    Superseded,
}

/// Runs one phone until the end of the run.
#[allow(clippy::too_many_arguments)]
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
        return flood_connections(index, &ctx).await;
    }
    let rate = if role == Role::OverRate { ctx.rate_per_s * 10.0 } else { ctx.rate_per_s };
    let origin = ctx.origin;
    let now_us = || origin.elapsed().as_micros() as u64;
    let mut schedule = Schedule::new(now_us(), rate, ctx.jitter, index as u64);
    let mut seq = 0u64;
    let mut edge = index % ctx.edges.len();
    // A churning phone's sessions last between half and one and a half `churn_every`.
    let churn_after = churns.then(|| ctx.churn_every.mul_f64(0.5 + (index % 101) as f64 / 100.0));
    let mut reconnecting = false;
    let mut backoff = FIRST_BACKOFF;
    while Instant::now() < ctx.end {
        let session = Session { role, token: &token, user_id, churn_after, reconnecting };
        match session.run(&endpoint, ctx.edges[edge], &ctx, &mut schedule, &mut seq).await {
            SessionEnd::Done | SessionEnd::Refused => break,
            // An honest phone does not fight its user's other session (docs/PROTOCOL.md
            // 5.1); a cheater comes back after a pause to take the session again.
            SessionEnd::Superseded if role != Role::MultiConnection => break,
            SessionEnd::Superseded => {
                reconnecting = true;
                let jitter = 0.5 + (index % 89) as f64 / 89.0;
                let pause = CHEATER_RECONNECT.mul_f64(jitter);
                tokio::time::sleep(pause.min(ctx.end.saturating_duration_since(Instant::now())))
                    .await;
            }
            SessionEnd::Churn => {
                ctx.stats.churned.fetch_add(1, Ordering::Relaxed);
                reconnecting = true;
            }
            SessionEnd::Reconnect => {
                reconnecting = true;
                backoff = FIRST_BACKOFF;
                edge = (edge + 1) % ctx.edges.len();
                tokio::time::sleep(backoff).await;
            }
            SessionEnd::Failed => {
                // Exponential backoff with per-phone jitter, so a refused crowd does not come
                // back as one.
                let jitter = 0.5 + (index % 97) as f64 / 97.0;
                tokio::time::sleep(
                    backoff.mul_f64(jitter).min(ctx.end.saturating_duration_since(Instant::now())),
                )
                .await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                edge = (edge + 1) % ctx.edges.len();
            }
        }
    }
    let behind = schedule.late + schedule.skipped;
    ctx.stats.behind_schedule.fetch_add(behind, Ordering::Relaxed);
}

/// One connection's worth of a phone.
struct Session<'a> {
    role: Role,
    token: &'a Bytes,
    user_id: u64,
    churn_after: Option<Duration>,
    reconnecting: bool,
}

impl Session<'_> {
    async fn run(
        self,
        endpoint: &quinn::Endpoint,
        edge: SocketAddr,
        ctx: &PhoneContext,
        schedule: &mut Schedule,
        seq: &mut u64,
    ) -> SessionEnd {
        let Session { role, token, user_id, churn_after, reconnecting } = self;
        let stats = &ctx.stats;
        let started = Instant::now();
        let conn = match endpoint.connect(edge, &ctx.server_name) {
            Ok(connecting) => {
                let patience =
                    CONNECT_TIMEOUT.min(ctx.end.saturating_duration_since(Instant::now()));
                match tokio::time::timeout(patience, connecting).await {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(err)) => {
                        stats.error(format!("connect: {err}"));
                        return SessionEnd::Failed;
                    }
                    Err(_) => {
                        stats.error("connect: no answer in time");
                        return SessionEnd::Failed;
                    }
                }
            }
            Err(err) => {
                stats.error(format!("connect: {err}"));
                return SessionEnd::Done;
            }
        };
        let Ok((mut send, mut recv)) = conn.open_bi().await else {
            stats.error("open control stream");
            return SessionEnd::Failed;
        };
        let mut out = BytesMut::new();
        ControlFrame::Hello {
            token: token.clone(),
            client_version: 1,
            capabilities: CAP_DATAGRAMS,
        }
        .encode(&mut out);
        if send.write_all(&out).await.is_err() {
            stats.error("send hello");
            return SessionEnd::Failed;
        }
        let mut buf = BytesMut::with_capacity(512);
        let (round, clock_offset_ms) = match next_frame(&mut recv, &mut buf).await {
            Some(ControlFrame::Welcome { server_time_ms, round, min_shake_interval_ms }) => {
                if role.obeys_pacing() {
                    schedule.pace(min_shake_interval_ms, ctx.origin.elapsed().as_micros() as u64);
                }
                (round, server_time_ms as i64 - unix_ms() as i64)
            }
            Some(ControlFrame::Error { code, .. }) => {
                let code = shake_proto::ErrorCode::from_code(code);
                let name = code.map_or("unknown", |c| c.name());
                stats.closed_by_edge(name);
                if role == Role::MultiConnection
                    && code == Some(shake_proto::ErrorCode::SessionInUse)
                {
                    // The user's session is in use: a cheater tries again later.
                    return SessionEnd::Superseded;
                }
                if role == Role::Honest {
                    stats.error(format!("refused: {name}"));
                }
                return SessionEnd::Refused;
            }
            _ => {
                stats.error("no welcome");
                return SessionEnd::Failed;
            }
        };
        {
            let mut h = stats.histograms.lock().expect("stats lock");
            let took = started.elapsed().as_micros() as u64;
            if reconnecting {
                h.reconnect_handshake.saturating_record(took);
            } else {
                h.handshake.saturating_record(took);
            }
        }
        stats.connected.fetch_add(1, Ordering::Relaxed);
        stats.sessions.fetch_add(1, Ordering::Relaxed);
        let leave_at = churn_after.map(|after| Instant::now() + after);
        if role == Role::OversizedFrame {
            let end = send_oversized_frame(&conn, &mut send, stats).await;
            stats.connected.fetch_sub(1, Ordering::Relaxed);
            return end;
        }
        if role == Role::StreamFlood {
            flood_streams(&conn, stats).await;
        }
        let end = session_loop(
            role,
            &conn,
            &mut send,
            &mut recv,
            &mut buf,
            round,
            clock_offset_ms,
            ctx,
            schedule,
            seq,
            user_id,
            leave_at,
        )
        .await;
        stats.connected.fetch_sub(1, Ordering::Relaxed);
        conn.close(0u32.into(), b"bye");
        end
    }
}

/// Streams a stream flooder tries to open, each way.
const FLOOD_STREAMS: usize = 32;
/// How long a flooder waits for each stream (the edge's stream limits hold them back).
const FLOOD_STREAM_PATIENCE: Duration = Duration::from_millis(50);
/// How long a connection flooder waits for each handshake before abandoning it.
const FLOOD_HANDSHAKE_PATIENCE: Duration = Duration::from_millis(200);
/// Pause between a connection flooder's attempts.
const FLOOD_PAUSE: Duration = Duration::from_millis(50);

/// Writes the header of a control frame far over the protocol's limit, then waits for the
/// edge to close the connection and records its code.
async fn send_oversized_frame(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    stats: &Stats,
) -> SessionEnd {
    let mut header = BytesMut::new();
    // An AwardAck (normally 8 bytes) claiming 16 MiB.
    shake_proto::varint::put(&mut header, shake_proto::control::frame_type::AWARD_ACK);
    shake_proto::varint::put(&mut header, 1 << 24);
    let _ = send.write_all(&header).await;
    let _ = send.write_all(&[0u8; 1024]).await;
    match tokio::time::timeout(Duration::from_secs(5), conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => {
            let code = close.error_code.into_inner();
            stats.closed_by_edge(
                shake_proto::ErrorCode::from_code(code).map_or("unknown", |c| c.name()),
            );
        }
        _ => stats.error("oversized frame: not closed by the edge"),
    }
    SessionEnd::Refused
}

/// Tries to open more streams than the edge allows, both kinds; counts those held back.
async fn flood_streams(conn: &quinn::Connection, stats: &Stats) {
    let mut opened = Vec::new();
    for _ in 0..FLOOD_STREAMS {
        match tokio::time::timeout(FLOOD_STREAM_PATIENCE, conn.open_uni()).await {
            Ok(Ok(stream)) => opened.push(stream),
            _ => stats.limited("streams_held_back"),
        }
        match tokio::time::timeout(FLOOD_STREAM_PATIENCE, conn.open_bi()).await {
            Ok(Ok((stream, _))) => opened.push(stream),
            _ => stats.limited("streams_held_back"),
        }
    }
    if !opened.is_empty() {
        stats.error(format!("stream flood: {} streams opened", opened.len()));
    }
}

/// Handshakes from a fresh source port each time, abandoned before `Hello`, until the end.
/// One endpoint per flooder, moved to a new socket for each attempt: an endpoint of its own
/// per attempt lives on while its abandoned connection drains (about 3 s), and thousands of
/// them, each with its receive buffer, took the swarm to 6.5 GB and most of the machine's CPU
/// (measured: the honest phones' p50 went from 1.3 to 11.5 ms with the edge barely involved).
async fn flood_connections(index: usize, ctx: &PhoneContext) {
    let local = super::addresses::flooder(&ctx.edges);
    let Ok(endpoint) = super::client_endpoint(local) else {
        ctx.stats.error("flood: no socket");
        return;
    };
    let mut attempt = index;
    while Instant::now() < ctx.end {
        attempt += 1;
        let edge = ctx.edges[attempt % ctx.edges.len()];
        let fresh_port = std::net::UdpSocket::bind(local);
        if fresh_port.and_then(|socket| endpoint.rebind(socket)).is_err() {
            ctx.stats.error("flood: no socket");
            break;
        }
        if let Ok(connecting) =
            endpoint.connect_with(ctx.client_config.clone(), edge, &ctx.server_name)
        {
            match tokio::time::timeout(FLOOD_HANDSHAKE_PATIENCE, connecting).await {
                Ok(Ok(_abandoned)) => ctx.stats.limited("flood_handshakes_completed"),
                Ok(Err(quinn::ConnectionError::ConnectionClosed(close)))
                    if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
                {
                    ctx.stats.limited("flood_handshakes_refused")
                }
                _ => ctx.stats.limited("flood_handshakes_unanswered"),
            }
        }
        tokio::time::sleep(FLOOD_PAUSE).await;
    }
}

async fn next_frame(recv: &mut quinn::RecvStream, buf: &mut BytesMut) -> Option<ControlFrame> {
    loop {
        if let Ok(Some(frame)) = ControlFrame::decode(buf) {
            return Some(frame);
        }
        match tokio::time::timeout(Duration::from_secs(10), recv.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn session_loop(
    role: Role,
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
    round: RoundInfo,
    clock_offset_ms: i64,
    ctx: &PhoneContext,
    schedule: &mut Schedule,
    seq: &mut u64,
    user_id: u64,
    leave_at: Option<Instant>,
) -> SessionEnd {
    let stats = &ctx.stats;
    let origin = ctx.origin;
    let stop_at = leave_at.map_or(ctx.end, |at| at.min(ctx.end));
    let server_ms = || (unix_ms() as i64 + clock_offset_ms) as u64;
    let is_open = |round: &RoundInfo| (round.starts_at_ms..round.ends_at_ms).contains(&server_ms());
    // Every round heard of; the current one is the open one, else the next to open.
    let mut rounds = vec![round];
    let current = |rounds: &[RoundInfo]| {
        let now = server_ms();
        rounds
            .iter()
            .find(|r| (r.starts_at_ms..r.ends_at_ms).contains(&now))
            .or_else(|| {
                rounds.iter().filter(|r| r.starts_at_ms > now).min_by_key(|r| r.starts_at_ms)
            })
            .copied()
            .unwrap_or(RoundInfo::NONE)
    };
    let mut round = current(&rounds);
    let mut in_flight = InFlight::new(Instant::now());
    let mut last_forwarded: Option<Instant> = None;
    let mut was_open = is_open(&round);
    let mut out = BytesMut::with_capacity(64);
    // The first shake sent since the edge was last heard from, and the ACK frames received
    // by then.
    let mut unanswered_since: Option<(Instant, u64)> = None;
    let acks_received = || conn.stats().frame_rx.acks;
    loop {
        let next = origin + Duration::from_micros(schedule.next_us());
        // Sleep no further than this phone's start in the next round (the opening, or its
        // place in the start spread), so the spike is on time.
        let start = round.start_for(user_id);
        let wake = if !was_open && start > server_ms() {
            let until_open = Duration::from_millis(start - server_ms());
            next.min(Instant::now() + until_open)
        } else {
            next
        };
        tokio::select! {
                        _ = tokio::time::sleep_until(wake.min(stop_at).into()) => {
                if Instant::now() >= ctx.end {
                    return SessionEnd::Done;
                }
                if Instant::now() >= stop_at {
                    return SessionEnd::Churn;
                }
                if unanswered_since.is_some_and(|(since, acks)| {
                    since.elapsed() > EDGE_SILENT && acks_received() == acks
                }) {
                    stats.error("edge silent: moved to the next edge");
                    return SessionEnd::Reconnect;
                }
                round = current(&rounds);
                let open = is_open(&round) && server_ms() >= round.start_for(user_id);
                if open && !was_open && ctx.spike {
                    schedule.restart(origin.elapsed().as_micros() as u64);
                }
                was_open = open;
                let now_us = origin.elapsed().as_micros() as u64;
                while let Some(intended_us) = schedule.due(now_us) {
                    if !open {
                        continue;
                    }
                    *seq += 1;
                    out.clear();
                    Shake { round_id: round.round_id, seq: *seq, client_time_ms: server_ms() }.encode_datagram(&mut out);
                    let now = Instant::now();
                    in_flight.sent(*seq, origin + Duration::from_micros(intended_us), now);
                    if conn.send_datagram(out.split().freeze()).is_err() {
                        stats.error("send datagram");
                        return SessionEnd::Reconnect;
                    }
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                    unanswered_since.get_or_insert_with(|| (now, acks_received()));
                    if role == Role::Malformed {
                        let _ = conn.send_datagram(Bytes::from_static(&[0x01, 0xff, 0xff]));
                    }
                }
            }
            datagram = conn.read_datagram() => {
                let Ok(payload) = datagram else { return SessionEnd::Reconnect };
                let now = Instant::now();
                unanswered_since = None;
                match datagram::decode(&payload) {
                    Ok(Datagram::Outcomes(outcomes)) => {
                        for outcome in outcomes.iter() {
                            let Some((intended, actual)) = in_flight.answered(outcome.seq) else { continue };
                            stats.outcome(outcome.verdict, now - intended, now - actual, role == Role::Honest);
                            if let (Verdict::SlowDown { retry_after_ms }, true) = (outcome.verdict, role.obeys_pacing()) {
                                let at = now + Duration::from_millis(retry_after_ms.into());
                                schedule.hold_until(at.saturating_duration_since(origin).as_micros() as u64);
                            }
                            if outcome.verdict == Verdict::Forwarded {
                                last_forwarded = Some(intended);
                                stats.forwarded_for(user_id);
                            }
                        }
                    }
                    _ => stats.error("malformed datagram from edge"),
                }
            }
            read = recv.read_buf(buf) => {
                if !matches!(read, Ok(n) if n > 0) {
                    return SessionEnd::Reconnect;
                }
                unanswered_since = None;
                while let Ok(Some(frame)) = ControlFrame::decode(buf) {
                    match frame {
                        ControlFrame::Award { award_id, round_id, .. } => {
                            if let Some(intended) = last_forwarded {
                                stats.histograms.lock().expect("stats lock").award.saturating_record(intended.elapsed().as_micros() as u64);
                            }
                            stats.award_received(ReceivedAward { award_id, user_id, round_id });
                            let mut ack = BytesMut::new();
                            ControlFrame::AwardAck { award_id }.encode(&mut ack);
                            if send.write_all(&ack).await.is_err() {
                                return SessionEnd::Reconnect;
                            }
                        }
                        ControlFrame::Pace { min_shake_interval_ms } if role.obeys_pacing() => {
                            schedule.pace(min_shake_interval_ms, origin.elapsed().as_micros() as u64);
                        }
                        ControlFrame::RoundNotice { round: notice, min_shake_interval_ms } => {
                            if role.obeys_pacing() {
                                schedule.pace(min_shake_interval_ms, origin.elapsed().as_micros() as u64);
                            }
                            if let Some(known) = rounds.iter_mut().find(|r| r.round_id == notice.round_id) {
                                *known = notice;
                            } else if rounds.len() < 64 {
                                rounds.push(notice);
                            }
                            round = current(&rounds);
                        }
                        ControlFrame::GoAway { .. } => return SessionEnd::Reconnect,
                        ControlFrame::Error { code, .. }
                            if code == u64::from(shake_proto::ErrorCode::SessionSuperseded.code()) =>
                        {
                            stats.closed_by_edge("SESSION_SUPERSEDED");
                            if role == Role::Honest {
                                stats.error("honest session superseded");
                            }
                            return SessionEnd::Superseded;
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}
