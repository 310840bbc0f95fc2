//! The phone's session over quinn and tokio: what a Rust app or a desktop client embeds. It
//! connects to the first edge of its list, drives a [`PhoneSession`] (control stream,
//! datagrams, the time), passes what happens to the app, and reconnects as [`Reconnect`]
//! says: never while a session is alive, with backoff and jitter after failures, elsewhere
//! when an edge drains, and not at all when only the app can help (a new token).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::crypto::rustls::QuicClientConfig;
use shake_proto::{ErrorCode, PHONE_ALPN};
use tokio::sync::mpsc;

use crate::liveness::EdgeSilence;
use crate::reconnect::{ConnectionEnd, NextConnect, Reconnect, ReconnectSettings};
use crate::session::{
    EndReason, PhoneSession, SessionEvent, ShakePath, ShakeRefusal, push_bounded,
};

/// How long a connection attempt may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong outside the protocol.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The phone's TLS or QUIC configuration.
    #[error("client configuration: {0}")]
    Config(String),
    /// A local socket could not be opened.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// No edge to connect to.
    #[error("no edge given")]
    NoEdge,
}

/// A phone's QUIC client configuration: TLS trusting the edges' CA at `ca` (PEM), ALPN
/// `shake/2`, room for `sessions` resumption tickets (a reconnect resumes), a 30 s idle
/// timeout with 10 s keep-alives (PROTOCOL.md 5.1.1), DATAGRAM support.
pub fn phone_client_config(
    ca: &std::path::Path,
    sessions: usize,
) -> Result<quinn::ClientConfig, ClientError> {
    let mut rustls =
        shake_ops::tls::client(ca, PHONE_ALPN).map_err(|e| ClientError::Config(e.to_string()))?;
    rustls.resumption = rustls::client::Resumption::in_memory_sessions(sessions);
    let crypto =
        QuicClientConfig::try_from(rustls).map_err(|e| ClientError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(Duration::from_secs(30).try_into().expect("30 s fits")))
        .keep_alive_interval(Some(Duration::from_secs(10)))
        .datagram_receive_buffer_size(Some(16 * 1024));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// One phone: where it connects and who it is.
#[derive(Debug, Clone)]
pub struct Phone {
    /// The edges, in the order to try them.
    pub edges: Vec<SocketAddr>,
    /// The name the edges' certificates carry.
    pub server_name: String,
    /// From [`phone_client_config`].
    pub client: quinn::ClientConfig,
    /// The session token from the login service.
    pub token: Bytes,
    /// Backoff after failures.
    pub reconnect: ReconnectSettings,
    /// Datagrams, or the control stream where the app's QUIC stack has none.
    pub shake_path: ShakePath,
}

/// What the app asks of the phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhoneCommand {
    /// The user shook.
    Shake,
    /// The app showed this award: acknowledge it.
    AckAward(u64),
    /// Hang up and stop.
    Stop,
}

/// What the phone tells the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhoneEvent {
    /// Connecting to this edge.
    Connecting(SocketAddr),
    /// Something the session said (welcomed, an outcome, an award, a round, a pace...).
    Session(SessionEvent),
    /// A shake was not sent, and why (too soon, no round open, no session).
    ShakeHeld(ShakeRefusal),
    /// The connection ended; what comes next.
    Disconnected {
        /// How it ended.
        end: ConnectionEnd,
        /// Where and when the phone connects again (or that it stops).
        next: NextConnect,
    },
}

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The app said stop (or dropped its command sender).
    ByApp,
    /// The edge refused the session in a way only the app can mend (an expired token...).
    Refused(ErrorCode),
}

/// Runs the phone until the app stops it or the edges refuse it for good: connects, keeps
/// one session at a time alive, sends the app's shakes and acknowledgements, and passes
/// every event on. A slow answer never ends a session: only the connection's end does.
///
/// The driver waits for room in `events` before it reads the next command: the code that
/// reads `events` must not wait for room in `commands` (send there from another task, as
/// `shake-phone` does, or with `try_send`), or a burst of events with the command channel
/// full stops both for good.
pub async fn run(
    phone: Phone,
    mut commands: mpsc::Receiver<PhoneCommand>,
    events: mpsc::Sender<PhoneEvent>,
) -> Result<Stopped, ClientError> {
    if phone.edges.is_empty() {
        return Err(ClientError::NoEdge);
    }
    // A token no edge could take (longer than `Hello` carries): the app must mend it, and no
    // edge is asked (a refusal by an edge is asked of one other edge; this one is not theirs).
    if !crate::session::token_fits_hello(&phone.token) {
        return Ok(Stopped::Refused(ErrorCode::BadToken));
    }
    let user = shake_proto::token::user_id_of(&phone.token).unwrap_or(0);
    // Each phone starts at its own place in the list (by its user), so that a crowd given the
    // same list spreads over the edges, and moves on from a draining one in an order of its
    // own (`Reconnect`), so that the crowd spreads over the other edges too.
    let first = (shake_proto::mix(user) % phone.edges.len() as u64) as usize;
    // The phone's milliseconds are Unix time (read once, moved by the monotonic clock).
    let expires_at_ms =
        shake_proto::token::expires_at_of(&phone.token).map(|s| s.saturating_mul(1000));
    let mut reconnect = Reconnect::new(phone.edges.len(), user, phone.reconnect)
        .starting_at(first)
        .token_expires_at(expires_at_ms);
    let mut edge = reconnect.first();
    // Every award the app acknowledged, newest last: each session is told, so that one whose
    // ack was lost with an earlier session is acknowledged again, not shown again.
    let mut shown = ShownAwards::default();
    loop {
        let addr = phone.edges[edge];
        let _ = events.send(PhoneEvent::Connecting(addr)).await;
        let io = SessionIo { reconnect: &mut reconnect, commands: &mut commands, events: &events };
        let end = match one_session(&phone, addr, io, &mut shown).await? {
            Some(end) => end,
            None => return Ok(Stopped::ByApp),
        };
        let next = reconnect.ended(now_ms(), end);
        let _ = events.send(PhoneEvent::Disconnected { end, next }).await;
        match next {
            NextConnect::Stop(code) => return Ok(Stopped::Refused(code)),
            NextConnect::At { edge: chosen, at_ms } => {
                edge = chosen;
                let wait = Duration::from_millis(at_ms.saturating_sub(now_ms()));
                // The app may stop the phone while it waits; shakes meanwhile are held.
                let deadline = tokio::time::sleep(wait);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        _ = &mut deadline => break,
                        command = commands.recv() => match command {
                            None | Some(PhoneCommand::Stop) => return Ok(Stopped::ByApp),
                            // Acknowledged in the next session, if the edge sends it again.
                            Some(PhoneCommand::AckAward(award_id)) => shown.push(award_id),
                            Some(PhoneCommand::Shake) => {
                                let held = PhoneEvent::ShakeHeld(ShakeRefusal::NoSession);
                                let _ = events.send(held).await;
                            }
                        },
                    }
                }
            }
        }
    }
}

/// The awards the app acknowledged, the newest
/// [`MAX_HELD_AWARDS`](crate::session::MAX_HELD_AWARDS).
#[derive(Debug, Default)]
struct ShownAwards(std::collections::VecDeque<u64>);

impl ShownAwards {
    fn push(&mut self, award_id: u64) {
        push_bounded(&mut self.0, award_id);
    }
}

/// What a session talks to besides its connection: the reconnect policy, the app's commands
/// and its events.
struct SessionIo<'a> {
    reconnect: &'a mut Reconnect,
    commands: &'a mut mpsc::Receiver<PhoneCommand>,
    events: &'a mpsc::Sender<PhoneEvent>,
}

/// One connection and its session, until it ends (`Some`) or the app stops (`None`).
async fn one_session(
    phone: &Phone,
    addr: SocketAddr,
    io: SessionIo<'_>,
    shown: &mut ShownAwards,
) -> Result<Option<ConnectionEnd>, ClientError> {
    let local: SocketAddr =
        if addr.is_ipv6() { "[::]:0".parse() } else { "0.0.0.0:0".parse() }.expect("an address");
    // A socket this attempt could not have (an address family the host lacks, descriptors or
    // buffers short for a moment) or an address quinn cannot send to (port 0, unspecified) is
    // this edge's failure, not the phone's end: the next edge, after the backoff. What fails
    // for every edge alike (a bad server name) is the app's to mend.
    let Ok(endpoint) = quinn::Endpoint::client(local) else {
        return Ok(Some(ConnectionEnd::NotConnected));
    };
    let connecting = match endpoint.connect_with(phone.client.clone(), addr, &phone.server_name) {
        Ok(connecting) => connecting,
        Err(quinn::ConnectError::InvalidRemoteAddress(_)) => {
            return Ok(Some(ConnectionEnd::NotConnected));
        }
        Err(err) => return Err(ClientError::Config(err.to_string())),
    };
    let Ok(Ok(conn)) = tokio::time::timeout(CONNECT_TIMEOUT, connecting).await else {
        return Ok(Some(ConnectionEnd::NotConnected));
    };
    let ended = drive(phone, &conn, io, shown).await;
    // Whatever ended it, the edge hears the close rather than waiting out its idle timeout.
    conn.close(0u32.into(), b"bye");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    Ok(ended)
}

/// The session on `conn`, until it ends (`Some`) or the app stops (`None`).
async fn drive(
    phone: &Phone,
    conn: &quinn::Connection,
    io: SessionIo<'_>,
    shown: &mut ShownAwards,
) -> Option<ConnectionEnd> {
    let SessionIo { reconnect, commands, events } = io;
    let conn = conn.clone();
    let Ok((mut send, mut recv)) = conn.open_bi().await else {
        return Some(connection_end(&conn, false));
    };
    // An edge (or a path) without RFC 9221 datagrams: the shakes take the control stream,
    // rather than failing at the first shake and reconnecting for ever.
    let path = match phone.shake_path {
        ShakePath::Datagrams if conn.max_datagram_size().is_none() => ShakePath::ControlStream,
        chosen => chosen,
    };
    let mut session = PhoneSession::with_path(phone.token.clone(), path);
    session.remember_shown(shown.0.iter().copied());
    session.hello();
    if let Some(EndReason::Refused { code, .. }) = session.ended() {
        // A token no edge could take (too long for `Hello`): the app must mend it.
        let code = *code;
        while let Some(event) = session.poll_event() {
            let _ = events.send(PhoneEvent::Session(event)).await;
        }
        return Some(ConnectionEnd::Closed(code));
    }
    let mut welcomed = false;
    let mut read = vec![0u8; 4096];
    let mut datagram = BytesMut::new();
    let mut silence = EdgeSilence::default();
    let acks_received = || conn.stats().frame_rx.acks;
    let mut sleep_watch = SleepWatch::now();
    let mut clock_look = tokio::time::interval(SleepWatch::LOOK_EVERY);
    clock_look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        sleep_watch.tell(&mut session);
        if !session.control_out().is_empty() {
            let out = session.control_out().split().freeze();
            if send.write_all(&out).await.is_err() {
                return Some(connection_end(&conn, welcomed));
            }
        }
        // Far in the future when no shake awaits an answer (the arm is then disabled).
        let look_at = silence.deadline_ms().unwrap_or(u64::MAX);
        let silence_check =
            tokio::time::sleep(Duration::from_millis(look_at.saturating_sub(now_ms()).min(60_000)));
        tokio::select! {
            // Only for the look at the clocks at the top of the loop.
            _ = clock_look.tick() => {}
            _ = silence_check, if look_at != u64::MAX => {
                if silence.check(now_ms(), acks_received()) {
                    return Some(ConnectionEnd::Silent);
                }
            }
            got = recv.read(&mut read) => match got {
                Ok(Some(n)) => {
                    silence.heard();
                    if let Err(code) = session.on_control(now_ms(), &read[..n]) {
                        // What came before the violation (an award, the end) is still told.
                        while let Some(event) = session.poll_event() {
                            let _ = events.send(PhoneEvent::Session(event)).await;
                        }
                        conn.close(code.code().into(), b"protocol violation");
                        return Some(ConnectionEnd::Closed(code.code().into()));
                    }
                }
                Ok(None) | Err(_) => return Some(connection_end(&conn, welcomed)),
            },
            got = conn.read_datagram() => match got {
                Ok(bytes) => {
                    silence.heard();
                    // A datagram never ends the session: one that cannot be read is counted.
                    let _ = session.on_datagram(now_ms(), &bytes);
                }
                Err(_) => return Some(connection_end(&conn, welcomed)),
            },
            command = commands.recv() => match command {
                None | Some(PhoneCommand::Stop) => return None,
                // A shake is often the first thing after a wake: the clocks are looked at
                // first, so that it goes by the edge's clock as it is now.
                Some(PhoneCommand::Shake) => match sleep_watch.tell(&mut session).shake(now_ms(), &mut datagram) {
                    Ok(_) => {
                        // On the stream path the shake went into the control bytes instead.
                        let sent = if datagram.is_empty() {
                            true
                        } else {
                            match conn.send_datagram(datagram.split().freeze()) {
                                Ok(()) => true,
                                Err(quinn::SendDatagramError::ConnectionLost(_)) => {
                                    return Some(connection_end(&conn, welcomed));
                                }
                                // The connection lives: this shake is lost, like any
                                // datagram, and not watched for (nothing went out to be
                                // acknowledged: the edge would be called silent).
                                Err(_) => false,
                            }
                        };
                        if sent {
                            silence.shake_sent(now_ms(), acks_received());
                        }
                    }
                    Err(refusal) => {
                        let _ = events.send(PhoneEvent::ShakeHeld(refusal)).await;
                    }
                },
                Some(PhoneCommand::AckAward(award_id)) => {
                    shown.push(award_id);
                    session.ack_award(award_id);
                }
            },
        }
        while let Some(event) = session.poll_event() {
            match event {
                SessionEvent::Welcomed { .. } => {
                    welcomed = true;
                    reconnect.welcomed(now_ms());
                }
                SessionEvent::Outcome(_) => reconnect.answered(),
                _ => {}
            }
            let _ = events.send(PhoneEvent::Session(event)).await;
        }
        if let Some(reason) = session.ended() {
            let end = match reason {
                EndReason::GoAway { reconnect_after_ms } => {
                    ConnectionEnd::GoAway { reconnect_after_ms: *reconnect_after_ms }
                }
                EndReason::Refused { code, .. } => ConnectionEnd::Closed(*code),
                EndReason::Violation(code) => ConnectionEnd::Closed(code.code().into()),
            };
            // What is queued (an AwardAck) goes before the close: a close drops stream data
            // not yet sent, so the edge is given a moment to have it.
            let out = session.control_out().split().freeze();
            let _ = send.write_all(&out).await;
            if send.finish().is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
            }
            return Some(end);
        }
    }
}

/// How a connection that ended by itself ended, for [`Reconnect::ended`]: an application
/// close by its code, a transport `CONNECTION_REFUSED` as not connected, any other end as
/// lost once a session was `welcomed` (not connected before).
pub fn connection_end(conn: &quinn::Connection, welcomed: bool) -> ConnectionEnd {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => {
            ConnectionEnd::Closed(close.error_code.into())
        }
        Some(quinn::ConnectionError::ConnectionClosed(close))
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            ConnectionEnd::NotConnected
        }
        _ if welcomed => ConnectionEnd::Lost,
        _ => ConnectionEnd::NotConnected,
    }
}

/// The phone's milliseconds, as the session and reconnect policy take them: Unix time read once,
/// then advanced by the monotonic clock. A wall-clock step (NTP, the carrier, the user) then
/// moves none of the durations the session measures (the pushed interval, a slow-down, the
/// silence watch, reconnect waits: a step back of an hour once held every shake back an hour),
/// and round times, read through the edge's clock offset taken at `Welcome`, hold too.
fn now_ms() -> u64 {
    static ORIGIN: std::sync::OnceLock<PhoneClock> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(PhoneClock::now).at(std::time::Instant::now())
}

/// The wall clock's Unix milliseconds (0 before 1970).
fn unix_ms() -> u64 {
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    unix.map_or(0, |d| d.as_millis() as u64)
}

/// Notices that the device slept: the monotonic clock the phone's milliseconds run on
/// ([`now_ms`]) stands still in a suspend (Linux, Android and Apple platforms alike), while
/// [`through_suspend_ms`] goes on. A session that outlived a suspend would otherwise read the
/// edge's clock that much late: a round opened "not yet", and shaken past its close. Told, the
/// session reads it on by the time slept ([`PhoneSession::clock_slept`]) and stays: no
/// reconnect, which a crowd waking together for "shake now" would turn into a burst of
/// handshakes at the opening.
#[derive(Debug, Clone, Copy)]
struct SleepWatch {
    through_ms: u64,
    mono: std::time::Instant,
}

impl SleepWatch {
    /// How often a live session looks when nothing else wakes it.
    const LOOK_EVERY: Duration = Duration::from_secs(2);

    fn now() -> Self {
        let (through_ms, mono) = Self::read_clocks();
        Self { through_ms, mono }
    }

    /// Both clocks, read together: a pause between the two reads (the thread preempted, the
    /// app frozen) would otherwise read as a sleep at one look or the next, so the clock that
    /// goes on through a suspend is read on both sides of the monotonic one, and the pair read
    /// again (a few times at most) when the two sides differ.
    fn read_clocks() -> (u64, std::time::Instant) {
        let read = || {
            let before = through_suspend_ms();
            let mono = std::time::Instant::now();
            (before, mono, through_suspend_ms())
        };
        let (mut before, mut mono, mut after) = read();
        for _ in 0..3 {
            if after.saturating_sub(before) <= 1 {
                break;
            }
            (before, mono, after) = read();
        }
        (before, mono)
    }

    /// How long the device slept since the last look, if the clock that goes on through a
    /// suspend ran [`SLEPT_MS`] or more ahead of the monotonic clock.
    fn slept(&mut self, through_ms: u64, mono: std::time::Instant) -> Option<u64> {
        let through_gain = through_ms.saturating_sub(self.through_ms);
        let mono_gain = mono.saturating_duration_since(self.mono).as_millis() as u64;
        *self = Self { through_ms, mono };
        let ahead = through_gain.saturating_sub(mono_gain);
        (ahead >= SLEPT_MS).then_some(ahead)
    }

    /// Looks at the clocks now, and tells `session` how long the device slept, if it did.
    fn tell<'a>(&mut self, session: &'a mut PhoneSession) -> &'a mut PhoneSession {
        let (through_ms, mono) = Self::read_clocks();
        if let Some(slept_ms) = self.slept(through_ms, mono) {
            session.clock_slept(slept_ms);
        }
        session
    }
}

/// Milliseconds, from an origin of the kernel's, of the clock that goes on in a suspend and
/// never steps: `CLOCK_BOOTTIME`, which leads the monotonic clock by exactly the time the
/// device has slept, whatever is done to the wall clock.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn through_suspend_ms() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000
        + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000_000
}

/// More time through a suspend than monotonic time between two looks that says the device
/// slept: above what a thread preempted between the two reads could show.
#[cfg(any(target_os = "linux", target_os = "android"))]
const SLEPT_MS: u64 = 100;

/// Elsewhere the wall clock, which goes on in a suspend but may step: one stepped forward
/// looks like a sleep, and moves the session's view of the edge's clock by the step until its
/// next `Welcome`; one stepped back looks like nothing.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn through_suspend_ms() -> u64 {
    unix_ms()
}

/// On the wall clock, above what a slewing NTP moves it in a look.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SLEPT_MS: u64 = 2_000;

/// A Unix time read once and a monotonic instant taken with it.
#[derive(Debug, Clone, Copy)]
struct PhoneClock {
    origin: std::time::Instant,
    origin_unix_ms: u64,
}

impl PhoneClock {
    fn now() -> Self {
        Self { origin: std::time::Instant::now(), origin_unix_ms: unix_ms() }
    }

    /// The phone's milliseconds at `instant`: moved by the monotonic clock only.
    fn at(&self, instant: std::time::Instant) -> u64 {
        self.origin_unix_ms + instant.saturating_duration_since(self.origin).as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phones_clock_moves_with_the_monotonic_clock_only() {
        let clock = PhoneClock::now();
        let start = clock.at(clock.origin);
        assert_eq!(clock.at(clock.origin + Duration::from_millis(1_500)), start + 1_500);
        // An instant before the origin (never, for a monotonic clock) reads as the origin.
        assert_eq!(clock.at(clock.origin.checked_sub(Duration::from_secs(1)).unwrap()), start);
        assert!(now_ms() >= start && now_ms() <= now_ms());
    }

    #[test]
    fn a_suspend_is_told_from_the_clock_that_goes_on_running_ahead() {
        let t0 = std::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut watch = SleepWatch { through_ms: 1_000_000, mono: t0 };
        // Both clocks on together (a busy phone): no sleep.
        assert_eq!(watch.slept(1_002_000, at(2_000)), None);
        let drift = SLEPT_MS - 1;
        assert_eq!(watch.slept(1_003_000 + drift, at(3_000)), None, "drift is no sleep");
        // 22.9 s through the suspend over 2 s of monotonic time: the device slept 20.9 s.
        let woke = 1_003_000 + drift + 22_900;
        assert_eq!(watch.slept(woke, at(5_000)), Some(20_900));
        assert_eq!(watch.slept(woke + 2_000, at(7_000)), None, "told once");
        // A clock that went back (the wall clock, where it is the one used): no sleep to tell.
        assert_eq!(watch.slept(1_000_000, at(8_000)), None);
    }

    /// On Linux and Android the clock that goes on in a suspend is `CLOCK_BOOTTIME`, not the
    /// wall clock, so a wall clock stepped forward is no sleep: its origin is the boot, not 1970.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn the_clock_through_a_suspend_is_the_boot_clock() {
        let (boot, unix) = (through_suspend_ms(), unix_ms());
        assert!(boot < unix / 2, "{boot} ms reads as the wall clock ({unix} ms)");
        // And it runs with the monotonic clock while the machine is awake.
        let mut watch = SleepWatch::now();
        std::thread::sleep(Duration::from_millis(300));
        let (through_ms, mono) = SleepWatch::read_clocks();
        assert_eq!(watch.slept(through_ms, mono), None);
    }
}
