//! One phone session, sans-IO: what the phone says and hears on one connection, and when it
//! may shake. Time is an argument (the phone's milliseconds, from a clock that never steps:
//! round times are read through the edge's clock taken at `Welcome`, so the clock need not be
//! Unix time, and a wall clock that NTP or the user steps would move every wait by the step);
//! the session owns no socket, no stream and no timer.
//!
//! The driver's part:
//! 1. once the connection is up and its control stream open, [`PhoneSession::hello`];
//! 2. whatever arrives on the control stream to [`PhoneSession::on_control`], each datagram
//!    to [`PhoneSession::on_datagram`];
//! 3. [`PhoneSession::shake`] when the user shakes: the datagram to send, or why not;
//! 4. the bytes in [`PhoneSession::control_out`] written to the control stream (as many as
//!    the stream takes; the rest stay queued);
//! 5. [`PhoneSession::poll_event`] until empty, for the app.
//!
//! Invariants: nothing but `Hello` is sent before `Welcome`; a shake is never sent sooner than
//! the pushed interval after the previous one, nor while a slow-down lasts, nor outside an
//! open round; every queue is bounded (events, held awards, rounds, the control buffers).

use std::collections::VecDeque;

use bytes::{Buf, BytesMut};
use shake_proto::control::CAP_DATAGRAMS;
use shake_proto::datagram::{self, Datagram};
use shake_proto::{
    ControlFrame, DecodeError, ErrorCode, Outcome, Prize, RoundInfo, Shake, Verdict,
};

/// Protocol client version this library speaks.
pub const CLIENT_VERSION: u32 = 1;
/// Events held for the app before new ones are dropped (and counted).
pub const MAX_EVENTS: usize = 1024;
/// Awards held until acknowledged; past it the oldest is dropped from the book (the edge
/// sends it again on a later session, as it does for any award not acknowledged).
pub const MAX_HELD_AWARDS: usize = 64;
/// Rounds remembered (the open one and the next ones announced).
pub const MAX_ROUNDS: usize = 16;

/// Whether `token` fits `Hello` ([`shake_proto::limits::MAX_TOKEN`]): one that does not is
/// refused by [`PhoneSession::hello`] before any edge could see it.
pub fn token_fits_hello(token: &[u8]) -> bool {
    token.len() <= shake_proto::limits::MAX_TOKEN
}
/// Control bytes queued before a shake on the control stream is refused
/// ([`ShakeRefusal::Backlogged`]). Besides shakes, the queue holds `Hello` once and an
/// `AwardAck` per award the app acknowledged (bounded by [`MAX_ACKS_OUT`]).
pub const MAX_CONTROL_OUT: usize = 4 * 1024;
/// Control bytes queued past which an `AwardAck` is left unsent (and counted,
/// [`PhoneSession::acks_unsent`]): only an edge that withholds the stream's credit while it
/// sends award after award gets there. The award then stays owed, and is sent again in a later
/// session, where an app that remembers it as shown has it acknowledged.
pub const MAX_ACKS_OUT: usize = 16 * MAX_CONTROL_OUT;

/// Where the session is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Connected, `Hello` not yet queued.
    New,
    /// `Hello` queued, waiting for `Welcome`.
    AwaitWelcome,
    /// Welcomed: shaking allowed within the rules.
    Active,
    /// Over; the driver closes the connection.
    Ended(EndReason),
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The edge is draining: reconnect (elsewhere) after at least this long.
    GoAway {
        /// Milliseconds to wait.
        reconnect_after_ms: u32,
    },
    /// The edge sent `Error` (it closes the connection with the same code).
    Refused {
        /// The code ([`ErrorCode`] when known).
        code: u64,
        /// The edge's reason.
        reason: String,
    },
    /// The edge broke the protocol; the driver closes the connection with this code.
    Violation(ErrorCode),
}

impl EndReason {
    /// The code's name, for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            EndReason::GoAway { .. } => "GO_AWAY",
            EndReason::Refused { code, .. } => {
                ErrorCode::from_code(*code).map_or("unknown", ErrorCode::name)
            }
            EndReason::Violation(code) => code.name(),
        }
    }
}

/// What the session tells the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The edge accepted the session.
    Welcomed {
        /// The round open now, or the next one.
        round: RoundInfo,
        /// Shake no more often than this.
        min_shake_interval_ms: u32,
    },
    /// The answer to a shake.
    Outcome(Outcome),
    /// The phone won; show it, then [`PhoneSession::ack_award`].
    Award {
        /// The award's ledger id.
        award_id: u64,
        /// The round.
        round_id: u32,
        /// What it pays.
        prize: Prize,
    },
    /// A round opened, closed or was announced.
    Round(RoundInfo),
    /// The edge changed the shake interval.
    Paced {
        /// Shake no more often than this.
        min_shake_interval_ms: u32,
    },
    /// The session is over.
    Ended(EndReason),
}

/// Why [`PhoneSession::shake`] sent nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShakeRefusal {
    /// Not welcomed yet, or the session is over.
    #[error("no session")]
    NoSession,
    /// No round is open by the edge's clock.
    #[error("no round open")]
    NoOpenRound,
    /// Too soon after the last shake, or a slow-down lasts: not before `at_ms`.
    #[error("too soon: not before {at_ms} ms")]
    TooSoon {
        /// The phone's Unix milliseconds at which a shake is allowed again.
        at_ms: u64,
    },
    /// On [`ShakePath::ControlStream`], the control bytes not yet written are past
    /// [`MAX_CONTROL_OUT`] (the edge withholds stream credit): a shake queued behind them
    /// would be stale when it left.
    #[error("the control stream is backlogged")]
    Backlogged,
}

/// How a session's shakes and their answers travel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ShakePath {
    /// RFC 9221 datagrams, the default: a lost shake is not resent (a newer one replaces it).
    #[default]
    Datagrams,
    /// Frames on the control stream (PROTOCOL.md section 5, types 0x07 and 0x08), for QUIC stacks without datagrams:
    /// `Hello` clears the datagram capability, shakes are queued in
    /// [`PhoneSession::control_out`] and outcomes come back on the stream.
    ControlStream,
}

/// One session's protocol state.
#[derive(Debug)]
pub struct PhoneSession {
    token: bytes::Bytes,
    path: ShakePath,
    /// The user the token names (its start in each round's spread).
    user_id: u64,
    phase: Phase,
    control_in: BytesMut,
    control_out: BytesMut,
    events: VecDeque<SessionEvent>,
    events_dropped: u64,
    /// Datagrams from the edge that could not be read (dropped, the session goes on).
    datagrams_dropped: u64,
    /// Acknowledgements left unsent past [`MAX_ACKS_OUT`].
    acks_unsent: u64,
    /// Waits the edge told longer than [`shake_proto::limits::MAX_TOLD_WAIT_MS`], honoured
    /// only that long.
    waits_clamped: u64,
    held_awards: VecDeque<u64>,
    /// Awards acknowledged on this session's stream: one that comes again (an `AwardsOwed`
    /// crossing the batch's answer) is a duplicate.
    acked_here: VecDeque<u64>,
    /// Awards the app showed in an earlier session ([`PhoneSession::remember_shown`]): one
    /// that comes again (its ack was lost with that session) is acknowledged at once, unseen.
    shown_before: VecDeque<u64>,
    rounds: Vec<RoundInfo>,
    min_shake_interval_ms: u32,
    /// The edge's clock minus the phone's, milliseconds.
    clock_offset_ms: i64,
    /// When the last shake was sent (the phone's clock).
    last_shake_ms: Option<u64>,
    /// No shake before this: a slow-down.
    slow_until_ms: u64,
    next_seq: u64,
}

impl PhoneSession {
    /// A session that will present `token` (from the login service).
    pub fn new(token: bytes::Bytes) -> Self {
        Self::with_path(token, ShakePath::Datagrams)
    }

    /// A session whose shakes travel by `path`.
    pub fn with_path(token: bytes::Bytes, path: ShakePath) -> Self {
        Self {
            user_id: shake_proto::token::user_id_of(&token).unwrap_or(0),
            token,
            path,
            phase: Phase::New,
            control_in: BytesMut::new(),
            control_out: BytesMut::new(),
            events: VecDeque::new(),
            events_dropped: 0,
            datagrams_dropped: 0,
            acks_unsent: 0,
            waits_clamped: 0,
            held_awards: VecDeque::new(),
            acked_here: VecDeque::new(),
            shown_before: VecDeque::new(),
            rounds: Vec::new(),
            min_shake_interval_ms: 0,
            clock_offset_ms: 0,
            last_shake_ms: None,
            slow_until_ms: 0,
            next_seq: 1,
        }
    }

    /// Queues `Hello` (once; the control stream is open). A token longer than a `Hello`
    /// carries ([`shake_proto::limits::MAX_TOKEN`]) ends the session at once, refused as
    /// `BAD_TOKEN` (what the edge would say): nothing is sent.
    pub fn hello(&mut self) {
        if self.phase != Phase::New {
            return;
        }
        if !token_fits_hello(&self.token) {
            self.end(EndReason::Refused {
                code: u64::from(ErrorCode::BadToken.code()),
                reason: "the token is longer than 128 bytes".into(),
            });
            return;
        }
        let capabilities = match self.path {
            ShakePath::Datagrams => CAP_DATAGRAMS,
            ShakePath::ControlStream => 0,
        };
        ControlFrame::Hello {
            token: self.token.clone(),
            client_version: CLIENT_VERSION,
            capabilities,
        }
        .encode(&mut self.control_out);
        self.phase = Phase::AwaitWelcome;
    }

    /// True once welcomed and until the session ends.
    pub fn is_active(&self) -> bool {
        self.phase == Phase::Active
    }

    /// Why the session ended, if it has.
    pub fn ended(&self) -> Option<&EndReason> {
        match &self.phase {
            Phase::Ended(reason) => Some(reason),
            _ => None,
        }
    }

    /// Bytes to write on the control stream; the driver removes what it wrote
    /// (`control_out().advance(n)`).
    pub fn control_out(&mut self) -> &mut BytesMut {
        &mut self.control_out
    }

    /// The next event for the app.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Events dropped because the app did not take them.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    /// Acknowledgements left unsent because the control stream's queue was past
    /// [`MAX_ACKS_OUT`] (an edge withholding its credit).
    pub fn acks_unsent(&self) -> u64 {
        self.acks_unsent
    }

    /// Awards received and not yet acknowledged, oldest first.
    pub fn held_awards(&self) -> impl Iterator<Item = u64> + '_ {
        self.held_awards.iter().copied()
    }

    /// The minimum shake interval in force, milliseconds.
    pub fn min_shake_interval_ms(&self) -> u32 {
        self.min_shake_interval_ms
    }

    /// The edge's clock at the phone's `now_ms`.
    pub fn server_time_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add_signed(self.clock_offset_ms)
    }

    /// The phone's clock stood still for `slept_ms` while the device slept (a monotonic
    /// clock does in a suspend on Linux, Android and Apple platforms): the edge's clock, as
    /// the session reads it, moves on by as much, so that a round that opened or closed
    /// meanwhile reads so at once, with the session kept. A driver whose clock goes on
    /// through a suspend never calls this.
    pub fn clock_slept(&mut self, slept_ms: u64) {
        let slept = i64::try_from(slept_ms).unwrap_or(i64::MAX);
        self.clock_offset_ms = self.clock_offset_ms.saturating_add(slept);
    }

    /// The round open at `now_ms`, else the next to open (by the edge's clock).
    pub fn round(&self, now_ms: u64) -> Option<RoundInfo> {
        let at = self.server_time_ms(now_ms);
        self.rounds.iter().find(|r| (r.starts_at_ms..r.ends_at_ms).contains(&at)).copied().or_else(
            || {
                self.rounds
                    .iter()
                    .filter(|r| r.starts_at_ms > at)
                    .min_by_key(|r| r.starts_at_ms)
                    .copied()
            },
        )
    }

    /// The phone's Unix milliseconds at which the next round opens, if one is announced and
    /// none is open (so a driver can wake for the opening).
    pub fn next_opening_ms(&self, now_ms: u64) -> Option<u64> {
        let round = self.round(now_ms)?;
        let at = self.server_time_ms(now_ms);
        let start = round.start_for(self.user_id);
        (start > at).then(|| now_ms + (start - at))
    }

    /// How this session's shakes travel.
    pub fn shake_path(&self) -> ShakePath {
        self.path
    }

    /// The user shook: the shake's datagram appended to `out` (on [`ShakePath::Datagrams`];
    /// on [`ShakePath::ControlStream`] the frame is queued in [`Self::control_out`] and `out`
    /// is left alone) and its sequence number, or why nothing may be sent now.
    pub fn shake(&mut self, now_ms: u64, out: &mut BytesMut) -> Result<u64, ShakeRefusal> {
        if self.phase != Phase::Active {
            return Err(ShakeRefusal::NoSession);
        }
        let allowed_at = self.next_shake_allowed_ms();
        if now_ms < allowed_at {
            return Err(ShakeRefusal::TooSoon { at_ms: allowed_at });
        }
        if self.path == ShakePath::ControlStream && self.control_out.len() >= MAX_CONTROL_OUT {
            return Err(ShakeRefusal::Backlogged);
        }
        let server_ms = self.server_time_ms(now_ms);
        let Some(round) =
            self.rounds.iter().find(|r| (r.starts_at_ms..r.ends_at_ms).contains(&server_ms))
        else {
            return Err(ShakeRefusal::NoOpenRound);
        };
        // This phone's place in the round's start spread.
        let start = round.start_for(self.user_id);
        if server_ms < start {
            return Err(ShakeRefusal::TooSoon { at_ms: now_ms.saturating_add(start - server_ms) });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let shake = Shake { round_id: round.round_id, seq, client_time_ms: now_ms };
        match self.path {
            ShakePath::Datagrams => shake.encode_datagram(out),
            ShakePath::ControlStream => ControlFrame::Shake(shake).encode(&mut self.control_out),
        }
        self.last_shake_ms = Some(now_ms);
        Ok(seq)
    }

    /// `retry_after_ms` plus up to a quarter more ([`shake_proto::SLOW_DOWN_JITTER_SHARE`]),
    /// the same for the same user and shake: an edge under load answers slow-down to many
    /// phones in one burst, and phones that all came back after exactly the retry would make
    /// the next burst.
    pub fn with_jitter(&self, retry_after_ms: u32, seq: u64) -> u64 {
        let z = shake_proto::mix(self.user_id ^ seq.rotate_left(32));
        let retry = u64::from(retry_after_ms);
        let most = (retry as f64 * shake_proto::SLOW_DOWN_JITTER_SHARE) as u64;
        // In 128 bits: `most` times a 53-bit fraction overflows 64 bits past about 8 s.
        retry + ((u128::from(most) * u128::from(z >> 11)) >> 53) as u64
    }

    /// The phone's Unix milliseconds from which a shake is allowed: the interval in force
    /// after the last shake, with the same jitter as a slow-down's retry, and any slow-down.
    /// (Phones paced in one burst would otherwise stay in step: every one of them answered in
    /// the same second shakes again in the same second, one interval later.)
    pub fn next_shake_allowed_ms(&self) -> u64 {
        let paced = self
            .last_shake_ms
            .map_or(0, |at| at + self.with_jitter(self.min_shake_interval_ms, self.next_seq));
        paced.max(self.slow_until_ms)
    }

    /// The app showed award `award_id`: `AwardAck` is queued and the award leaves the book.
    /// False if the session does not hold it (an award of an earlier session, acknowledged
    /// after a reconnect): it is then remembered as shown, so that when the edge sends it
    /// again it is acknowledged, not shown twice. (No ack is sent for it now: an edge that
    /// never sent it here refuses it, and counts it towards `FLOOD`.)
    pub fn ack_award(&mut self, award_id: u64) -> bool {
        let Some(at) = self.held_awards.iter().position(|&id| id == award_id) else {
            if !self.shown_before.contains(&award_id) {
                push_bounded(&mut self.shown_before, award_id);
            }
            return false;
        };
        self.held_awards.remove(at);
        self.send_ack(award_id);
        true
    }

    /// Awards the app showed in earlier sessions (the driver keeps the newest
    /// [`MAX_HELD_AWARDS`]): if the edge sends one again, its acknowledgement was lost with
    /// that session, and this one acknowledges it without showing it twice.
    pub fn remember_shown(&mut self, award_ids: impl IntoIterator<Item = u64>) {
        for award_id in award_ids {
            push_bounded(&mut self.shown_before, award_id);
        }
    }

    fn send_ack(&mut self, award_id: u64) {
        if self.control_out.len() >= MAX_ACKS_OUT {
            // Remembered all the same: the edge's next send of it is a duplicate here, not an
            // award to show again.
            self.acks_unsent += 1;
            push_bounded(&mut self.acked_here, award_id);
            return;
        }
        ControlFrame::AwardAck { award_id }.encode(&mut self.control_out);
        push_bounded(&mut self.acked_here, award_id);
    }

    /// Bytes from the control stream. An error is a protocol violation by the edge: the
    /// session has ended, and the driver closes the connection with the code.
    pub fn on_control(&mut self, now_ms: u64, bytes: &[u8]) -> Result<(), ErrorCode> {
        if matches!(self.phase, Phase::Ended(_)) {
            return Ok(());
        }
        self.control_in.extend_from_slice(bytes);
        loop {
            match ControlFrame::decode(&mut self.control_in) {
                Ok(Some(frame)) => self.on_frame(now_ms, frame)?,
                Ok(None) => return Ok(()),
                Err(err) => return Err(self.violation(code_for(err))),
            }
            if matches!(self.phase, Phase::Ended(_)) {
                self.control_in.clear();
                return Ok(());
            }
        }
    }

    /// One datagram from the edge. One that cannot be read (or is not an edge's) is dropped
    /// and counted ([`Self::datagrams_dropped`]): a datagram never closes the connection
    /// (PROTOCOL.md section 6), so one odd datagram from a newer edge costs no reconnect. The
    /// result is always `Ok`; it stays a `Result` for drivers written against the stream's.
    pub fn on_datagram(&mut self, now_ms: u64, payload: &[u8]) -> Result<(), ErrorCode> {
        if self.phase != Phase::Active {
            return Ok(());
        }
        match datagram::decode(payload) {
            Ok(Datagram::Outcomes(outcomes)) => self.on_outcomes(now_ms, &outcomes),
            Ok(Datagram::Shake(_)) | Err(_) => self.datagrams_dropped += 1,
        }
        Ok(())
    }

    /// Datagrams from the edge dropped because they could not be read.
    pub fn datagrams_dropped(&self) -> u64 {
        self.datagrams_dropped
    }

    /// Waits the edge told (a shake interval, a slow-down's retry) longer than
    /// [`shake_proto::limits::MAX_TOLD_WAIT_MS`], which the session honoured only that long:
    /// an edge that tells such a wait is broken (no configuration of it can).
    pub fn waits_clamped(&self) -> u64 {
        self.waits_clamped
    }

    /// `wait_ms`, at most what a phone honours (counted when cut).
    fn honoured(&mut self, wait_ms: u32) -> u32 {
        if wait_ms > shake_proto::limits::MAX_TOLD_WAIT_MS {
            self.waits_clamped += 1;
        }
        wait_ms.min(shake_proto::limits::MAX_TOLD_WAIT_MS)
    }

    fn on_frame(&mut self, now_ms: u64, frame: ControlFrame) -> Result<(), ErrorCode> {
        match (&self.phase, frame) {
            (
                Phase::AwaitWelcome,
                ControlFrame::Welcome { server_time_ms, min_shake_interval_ms, round },
            ) => {
                self.clock_offset_ms = server_time_ms as i64 - now_ms as i64;
                let min_shake_interval_ms = self.honoured(min_shake_interval_ms);
                self.min_shake_interval_ms = min_shake_interval_ms;
                self.remember(round, server_time_ms);
                self.phase = Phase::Active;
                self.push(SessionEvent::Welcomed { round, min_shake_interval_ms });
            }
            (Phase::Active, ControlFrame::RoundNotice { round, min_shake_interval_ms }) => {
                self.remember(round, self.server_time_ms(now_ms));
                self.pace(min_shake_interval_ms);
                self.push(SessionEvent::Round(round));
            }
            (Phase::Active, ControlFrame::Pace { min_shake_interval_ms }) => {
                self.pace(min_shake_interval_ms);
            }
            (Phase::Active, ControlFrame::Award { award_id, round_id, prize }) => {
                // Once per award id: held or acknowledged here, it is a duplicate; shown in an
                // earlier session, it is acknowledged again, not shown again.
                if self.held_awards.contains(&award_id) || self.acked_here.contains(&award_id) {
                } else if self.shown_before.contains(&award_id) {
                    self.send_ack(award_id);
                } else {
                    push_bounded(&mut self.held_awards, award_id);
                    self.push_award(SessionEvent::Award { award_id, round_id, prize });
                }
            }
            (Phase::Active, ControlFrame::Outcomes(outcomes)) => {
                self.on_outcomes(now_ms, &outcomes);
            }
            (_, ControlFrame::GoAway { reconnect_after_ms }) => {
                self.end(EndReason::GoAway { reconnect_after_ms });
            }
            (_, ControlFrame::Error { code, reason }) => {
                self.end(EndReason::Refused { code, reason });
            }
            _ => return Err(self.violation(ErrorCode::UnexpectedFrame)),
        }
        Ok(())
    }

    /// Outcomes, by datagram or on the stream: a slow-down holds the next shake back.
    fn on_outcomes<B: AsRef<[u8]>>(&mut self, now_ms: u64, outcomes: &datagram::Outcomes<B>) {
        for outcome in outcomes.iter() {
            if let Verdict::SlowDown { retry_after_ms } = outcome.verdict {
                let retry_after_ms = self.honoured(retry_after_ms);
                let until = now_ms + self.with_jitter(retry_after_ms, outcome.seq);
                self.slow_until_ms = self.slow_until_ms.max(until);
            }
            self.push(SessionEvent::Outcome(outcome));
        }
    }

    fn pace(&mut self, min_shake_interval_ms: u32) {
        let min_shake_interval_ms = self.honoured(min_shake_interval_ms);
        if min_shake_interval_ms != self.min_shake_interval_ms {
            self.min_shake_interval_ms = min_shake_interval_ms;
            self.push(SessionEvent::Paced { min_shake_interval_ms });
        }
    }

    /// Keeps `round` (the edge's clock reads `server_ms`). With the table full, a round that
    /// has ended goes first (the one that ended first); with none ended, the one that starts
    /// last, the new one included: never the open round, which an edge announcing many
    /// rounds ahead would otherwise push out (the phone then refused to shake in it).
    fn remember(&mut self, round: RoundInfo, server_ms: u64) {
        if round.round_id == 0 {
            return;
        }
        if let Some(known) = self.rounds.iter_mut().find(|r| r.round_id == round.round_id) {
            *known = round;
            return;
        }
        if self.rounds.len() < MAX_ROUNDS {
            self.rounds.push(round);
            return;
        }
        let ended = (0..self.rounds.len())
            .filter(|&i| self.rounds[i].ends_at_ms <= server_ms)
            .min_by_key(|&i| self.rounds[i].ends_at_ms);
        let last = (0..self.rounds.len()).max_by_key(|&i| self.rounds[i].starts_at_ms);
        match (ended, last) {
            (Some(gone), _) => self.rounds[gone] = round,
            (None, Some(latest)) if self.rounds[latest].starts_at_ms > round.starts_at_ms => {
                self.rounds[latest] = round;
            }
            // The new round starts after every one kept: it is the one left out.
            _ => {}
        }
    }

    fn violation(&mut self, code: ErrorCode) -> ErrorCode {
        self.end(EndReason::Violation(code));
        code
    }

    fn end(&mut self, reason: EndReason) {
        self.phase = Phase::Ended(reason.clone());
        self.control_in.clear();
        // The end is always told, even with the queue full.
        self.make_room();
        self.events.push_back(SessionEvent::Ended(reason));
    }

    /// With the queue full, drops the oldest event an app can do without (an outcome, then a
    /// round or pace notice), never an award; the newest as a last resort.
    fn make_room(&mut self) {
        if self.events.len() < MAX_EVENTS {
            return;
        }
        let outcome = |e: &SessionEvent| matches!(e, SessionEvent::Outcome(_));
        let notice =
            |e: &SessionEvent| matches!(e, SessionEvent::Round(_) | SessionEvent::Paced { .. });
        match self.events.iter().position(outcome).or_else(|| self.events.iter().position(notice)) {
            Some(at) => {
                self.events.remove(at);
            }
            None => {
                self.events.pop_back();
            }
        }
        self.events_dropped += 1;
    }

    fn push(&mut self, event: SessionEvent) {
        if self.events.len() < MAX_EVENTS {
            self.events.push_back(event);
        } else {
            self.events_dropped += 1;
        }
    }

    /// An award is told before outcomes and notices: with the queue full, one of those makes
    /// room (an app never told of an award held for it could never acknowledge it).
    fn push_award(&mut self, event: SessionEvent) {
        self.make_room();
        self.events.push_back(event);
    }
}

/// Appends `award_id`, forgetting the oldest past [`MAX_HELD_AWARDS`].
pub(crate) fn push_bounded(ids: &mut VecDeque<u64>, award_id: u64) {
    if ids.len() == MAX_HELD_AWARDS {
        ids.pop_front();
    }
    ids.push_back(award_id);
}

/// The code a phone closes with for control bytes it cannot decode (as the edge does: an
/// unknown frame type is `UNEXPECTED_FRAME`).
fn code_for(err: DecodeError) -> ErrorCode {
    ErrorCode::for_decode_error(&err)
}

/// Removes `n` written bytes from a control buffer (for drivers that wrote part of it).
pub fn consume(buf: &mut BytesMut, n: usize) {
    buf.advance(n.min(buf.len()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use shake_proto::RoundPhase;

    const NOW: u64 = 1_700_000_000_000;

    fn round(id: u32, starts: u64, ends: u64) -> RoundInfo {
        RoundInfo {
            round_id: id,
            phase: RoundPhase::Open,
            starts_at_ms: starts,
            ends_at_ms: ends,
            start_spread_ms: 0,
        }
    }

    #[allow(clippy::needless_pass_by_value)] // reads better at the call sites
    fn frame(frame: ControlFrame) -> BytesMut {
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        out
    }

    /// A session welcomed at `NOW` by an edge whose clock is 5 s ahead, round 1 open.
    fn welcomed(interval_ms: u32) -> PhoneSession {
        let mut s = PhoneSession::new(Bytes::from_static(b"token"));
        s.hello();
        let welcome = frame(ControlFrame::Welcome {
            server_time_ms: NOW + 5_000,
            min_shake_interval_ms: interval_ms,
            round: round(1, NOW, NOW + 60_000),
        });
        s.on_control(NOW, &welcome).unwrap();
        assert!(matches!(s.poll_event(), Some(SessionEvent::Welcomed { .. })));
        s
    }

    #[test]
    fn without_datagrams_shakes_and_their_answers_travel_on_the_control_stream() {
        let mut s = PhoneSession::with_path(Bytes::from_static(b"token"), ShakePath::ControlStream);
        s.hello();
        let hello = ControlFrame::decode(s.control_out()).unwrap().unwrap();
        assert!(
            matches!(hello, ControlFrame::Hello { capabilities: 0, .. }),
            "no datagram capability asked: {hello:?}"
        );
        let welcome = frame(ControlFrame::Welcome {
            server_time_ms: NOW,
            min_shake_interval_ms: 100,
            round: round(1, NOW, NOW + 60_000),
        });
        s.on_control(NOW, &welcome).unwrap();
        let mut out = BytesMut::new();
        assert_eq!(s.shake(NOW, &mut out), Ok(1));
        assert!(out.is_empty(), "nothing for a datagram");
        match ControlFrame::decode(s.control_out()).unwrap() {
            Some(ControlFrame::Shake(shake)) => assert_eq!((shake.round_id, shake.seq), (1, 1)),
            other => panic!("expected the shake on the stream: {other:?}"),
        }
        // A slow-down on the stream holds the next shake back as one by datagram does.
        let slow = Outcome { seq: 1, verdict: Verdict::SlowDown { retry_after_ms: 1_000 } };
        s.on_control(NOW + 1, &frame(ControlFrame::outcomes(&[slow]))).unwrap();
        while s.poll_event().is_some() {}
        assert!(s.next_shake_allowed_ms() >= NOW + 1_001);
        assert!(matches!(s.shake(NOW + 500, &mut out), Err(ShakeRefusal::TooSoon { .. })));
    }

    /// A session that outlived a suspend (the phone's clock stood still 90 s) reads the edge's
    /// clock on by as much: round 2, which opened while the device slept, is shaken in, not
    /// round 1, which closed.
    #[test]
    fn a_session_told_the_device_slept_reads_the_edges_clock_on() {
        let mut s = welcomed(0);
        let notice = frame(ControlFrame::RoundNotice {
            round: round(2, NOW + 100_000, NOW + 160_000),
            min_shake_interval_ms: 0,
        });
        s.on_control(NOW + 10_000, &notice).unwrap();
        let mut out = BytesMut::new();
        assert_eq!(s.shake(NOW + 10_000, &mut out), Ok(1));
        // The device slept 90 s (by the wall clock); the phone's clock reads NOW + 10 s still.
        s.clock_slept(90_000);
        assert_eq!(s.server_time_ms(NOW + 10_000), NOW + 105_000);
        assert_eq!(s.shake(NOW + 10_100, &mut out), Ok(2));
        s.clock_slept(u64::MAX);
        assert!(s.server_time_ms(NOW) > NOW + 105_000, "saturates, no overflow");
    }

    /// An edge that tells a wait no edge may tell (an interval or a slow-down's retry of
    /// 49 days) has it honoured for [`shake_proto::limits::MAX_TOLD_WAIT_MS`] at most, and
    /// counted: before, one such value held the phone's shakes for the rest of the session.
    #[test]
    fn a_wait_past_what_any_edge_may_tell_is_cut_and_counted() {
        let most = u64::from(shake_proto::limits::MAX_TOLD_WAIT_MS);
        let mut s = welcomed(u32::MAX);
        assert_eq!(s.waits_clamped(), 1);
        let mut out = BytesMut::new();
        assert_eq!(s.shake(NOW, &mut out), Ok(1));
        assert!(s.next_shake_allowed_ms() <= NOW + most * 5 / 4, "{}", s.next_shake_allowed_ms());
        let slow = Outcome { seq: 1, verdict: Verdict::SlowDown { retry_after_ms: u32::MAX } };
        let mut answer = BytesMut::new();
        datagram::encode_outcomes(&mut answer, &[slow]);
        s.on_datagram(NOW + 1, &answer).unwrap();
        let pace = frame(ControlFrame::Pace { min_shake_interval_ms: u32::MAX - 1 });
        s.on_control(NOW + 2, &pace).unwrap();
        assert_eq!(s.waits_clamped(), 3);
        assert!(s.next_shake_allowed_ms() <= NOW + 1 + most * 5 / 4);
        // What an edge may tell is taken as it is.
        let mut s = welcomed(shake_proto::limits::MAX_TOLD_WAIT_MS);
        assert_eq!(s.waits_clamped(), 0);
        assert_eq!(s.shake(NOW, &mut out), Ok(1));
        assert!(s.next_shake_allowed_ms() >= NOW + most);
    }

    #[test]
    fn a_phone_starts_at_its_own_place_in_the_rounds_start_spread() {
        let mut keys = shake_proto::token::KeyRing::new();
        keys.insert(1, b"0123456789abcdef0123456789abcdef").unwrap();
        let claims = shake_proto::token::Claims {
            key_id: 1,
            user_id: 77,
            device_id: 77,
            issued_at_s: 0,
            expires_at_s: u64::MAX / 2,
        };
        let token = Bytes::copy_from_slice(&keys.mint(&claims).unwrap());
        let mut s = PhoneSession::new(token);
        s.hello();
        let spread = RoundInfo { start_spread_ms: 10_000, ..round(1, NOW + 1_000, NOW + 60_000) };
        let welcome = frame(ControlFrame::Welcome {
            server_time_ms: NOW,
            min_shake_interval_ms: 100,
            round: spread,
        });
        s.on_control(NOW, &welcome).unwrap();
        let start = spread.start_for(77);
        assert!(start > NOW + 1_000, "user 77 is not first in this spread");
        assert_eq!(s.next_opening_ms(NOW), Some(start), "wakes for its own start");
        let mut out = BytesMut::new();
        assert_eq!(s.shake(start - 1, &mut out), Err(ShakeRefusal::TooSoon { at_ms: start }));
        assert!(out.is_empty());
        assert_eq!(s.shake(start, &mut out), Ok(1));
    }

    #[test]
    fn slow_down_jitter_spreads_a_crowd_over_a_quarter_of_the_retry() {
        let mut keys = shake_proto::token::KeyRing::new();
        keys.insert(1, b"0123456789abcdef0123456789abcdef").unwrap();
        let mut ends: Vec<u64> = (1..=1_000u64)
            .map(|user_id| {
                let claims = shake_proto::token::Claims {
                    key_id: 1,
                    user_id,
                    device_id: user_id,
                    issued_at_s: 0,
                    expires_at_s: u64::MAX / 2,
                };
                let s = PhoneSession::new(Bytes::copy_from_slice(&keys.mint(&claims).unwrap()));
                s.with_jitter(1_000, 7)
            })
            .collect();
        assert!(ends.iter().all(|&e| (1_000..1_250).contains(&e)));
        ends.sort_unstable();
        let quarters =
            [1_062, 1_125, 1_187, 1_250].map(|b| ends.iter().filter(|&&e| e < b).count());
        assert!((200..300).contains(&quarters[0]), "{quarters:?}");
        assert!((700..800).contains(&quarters[2]), "{quarters:?}");
    }

    #[test]
    fn hello_first_then_shakes_only_once_welcomed() {
        let mut s = PhoneSession::new(Bytes::from_static(b"token"));
        let mut out = BytesMut::new();
        assert_eq!(s.shake(NOW, &mut out), Err(ShakeRefusal::NoSession));
        s.hello();
        s.hello();
        let mut queued = s.control_out().split();
        match ControlFrame::decode(&mut queued) {
            Ok(Some(ControlFrame::Hello { token, capabilities, .. })) => {
                assert_eq!(&token[..], b"token");
                assert_eq!(capabilities, CAP_DATAGRAMS);
            }
            other => panic!("expected Hello, got {other:?}"),
        }
        assert!(queued.is_empty(), "Hello queued once");
        assert_eq!(s.shake(NOW, &mut out), Err(ShakeRefusal::NoSession));
        assert!(out.is_empty());
    }

    #[test]
    fn shakes_keep_the_pushed_interval_and_obey_slow_down_and_pace() {
        let mut s = welcomed(500);
        let mut out = BytesMut::new();
        assert_eq!(s.shake(NOW, &mut out), Ok(1));
        match datagram::decode(&out) {
            Ok(Datagram::Shake(shake)) => assert_eq!((shake.round_id, shake.seq), (1, 1)),
            other => panic!("expected a shake, got {other:?}"),
        }
        out.clear();
        // The interval and a jitter of the user's and next shake's own, at most a quarter.
        let allowed = NOW + s.with_jitter(500, 2);
        assert!((NOW + 500..=NOW + 625).contains(&allowed), "{}", allowed - NOW);
        assert_eq!(s.shake(NOW + 499, &mut out), Err(ShakeRefusal::TooSoon { at_ms: allowed }));
        assert_eq!(s.shake(allowed - 1, &mut out), Err(ShakeRefusal::TooSoon { at_ms: allowed }));
        assert!(out.is_empty());
        assert_eq!(s.shake(allowed, &mut out), Ok(2));
        // Slow-down for 2 s from NOW + 600.
        let mut answer = BytesMut::new();
        datagram::encode_outcomes(
            &mut answer,
            &[Outcome { seq: 2, verdict: Verdict::SlowDown { retry_after_ms: 2_000 } }],
        );
        s.on_datagram(NOW + 600, &answer).unwrap();
        assert!(matches!(s.poll_event(), Some(SessionEvent::Outcome(_))));
        // At least the retry, at most a quarter more (jitter of the user's and shake's own).
        let until = NOW + 600 + s.with_jitter(2_000, 2);
        assert!((NOW + 2_600..=NOW + 3_100).contains(&until), "{}", until - NOW);
        assert_eq!(s.shake(NOW + 1_100, &mut out), Err(ShakeRefusal::TooSoon { at_ms: until }));
        assert_eq!(s.shake(until, &mut out), Ok(3));
        // Pace raises the interval.
        s.on_control(until + 100, &frame(ControlFrame::Pace { min_shake_interval_ms: 5_000 }))
            .unwrap();
        assert_eq!(s.poll_event(), Some(SessionEvent::Paced { min_shake_interval_ms: 5_000 }));
        // It counts from the last shake (the edge's pace is no burst), with its jitter.
        let paced = until + s.with_jitter(5_000, 4);
        assert!((until + 5_000..=until + 6_250).contains(&paced), "{}", paced - until);
        assert_eq!(s.shake(until + 600, &mut out), Err(ShakeRefusal::TooSoon { at_ms: paced }));
        assert_eq!(s.shake(paced, &mut out), Ok(4));
    }

    /// An award once per id: a second copy in the session (an `AwardsOwed` crossing the
    /// batch's answer), before or after the app's ack, is neither shown again nor acked again
    /// (the edge refuses a second ack, and 64 refused close the session); one the app showed in
    /// an earlier session is acked at once and not shown.
    #[test]
    fn an_award_is_shown_and_acknowledged_once() {
        let award = |award_id| {
            frame(ControlFrame::Award { award_id, round_id: 1, prize: Prize::Cash { cents: 5 } })
        };
        let acks = |s: &mut PhoneSession| {
            let mut ids = Vec::new();
            while let Ok(Some(f)) = ControlFrame::decode(s.control_out()) {
                if let ControlFrame::AwardAck { award_id } = f {
                    ids.push(award_id);
                }
            }
            ids
        };
        let mut s = welcomed(0);
        s.remember_shown([9]);
        acks(&mut s);
        for _ in 0..2 {
            s.on_control(NOW, &award(7)).unwrap();
        }
        assert!(matches!(s.poll_event(), Some(SessionEvent::Award { award_id: 7, .. })));
        assert_eq!(s.poll_event(), None, "a copy is not shown again");
        assert!(s.ack_award(7));
        s.on_control(NOW, &award(7)).unwrap();
        assert_eq!(s.poll_event(), None);
        assert!(!s.ack_award(7), "acked once");
        assert_eq!(acks(&mut s), vec![7]);
        // Shown in an earlier session: acknowledged, unseen.
        s.on_control(NOW, &award(9)).unwrap();
        assert_eq!(s.poll_event(), None);
        assert_eq!(acks(&mut s), vec![9]);
    }

    #[test]
    fn jitter_stays_within_a_quarter_for_the_longest_intervals() {
        let s = welcomed(0);
        for retry in [8_196, 60_000, u32::MAX] {
            for seq in 1..50 {
                let waited = s.with_jitter(retry, seq);
                let most = u64::from(retry) + u64::from(retry) / 4;
                assert!((u64::from(retry)..=most).contains(&waited), "{retry}: {waited}");
            }
        }
    }

    #[test]
    fn shakes_only_inside_an_open_round_by_the_edges_clock() {
        let mut s = welcomed(0);
        let mut out = BytesMut::new();
        // The edge's clock is 5 s ahead: round 1 ends at the phone's NOW + 55 s.
        assert_eq!(s.shake(NOW + 54_999, &mut out), Ok(1));
        assert_eq!(s.shake(NOW + 55_000, &mut out), Err(ShakeRefusal::NoOpenRound));
        let notice = frame(ControlFrame::RoundNotice {
            round: round(2, NOW + 70_000, NOW + 80_000),
            min_shake_interval_ms: 0,
        });
        s.on_control(NOW + 55_000, &notice).unwrap();
        assert_eq!(s.next_opening_ms(NOW + 55_000), Some(NOW + 65_000));
        assert_eq!(s.shake(NOW + 64_999, &mut out), Err(ShakeRefusal::NoOpenRound));
        assert_eq!(s.shake(NOW + 65_000, &mut out), Ok(2));
    }

    #[test]
    fn awards_are_held_until_acknowledged_and_acked_once() {
        let mut s = welcomed(0);
        let award = |id| {
            frame(ControlFrame::Award {
                award_id: id,
                round_id: 1,
                prize: Prize::Cash { cents: 88 },
            })
        };
        s.on_control(NOW, &award(7)).unwrap();
        s.on_control(NOW, &award(7)).unwrap();
        assert_eq!(s.held_awards().collect::<Vec<_>>(), vec![7]);
        assert!(!s.ack_award(8));
        assert!(s.ack_award(7));
        assert!(!s.ack_award(7));
        let mut queued = s.control_out().split();
        let hello = ControlFrame::decode(&mut queued).unwrap();
        assert!(matches!(hello, Some(ControlFrame::Hello { .. })));
        assert_eq!(
            ControlFrame::decode(&mut queued),
            Ok(Some(ControlFrame::AwardAck { award_id: 7 }))
        );
        assert_eq!(ControlFrame::decode(&mut queued), Ok(None));
        // The book is bounded.
        for id in 100..100 + 2 * MAX_HELD_AWARDS as u64 {
            s.on_control(NOW, &award(id)).unwrap();
        }
        assert_eq!(s.held_awards().count(), MAX_HELD_AWARDS);
    }

    #[test]
    fn go_away_error_and_violations_end_the_session() {
        let mut s = welcomed(0);
        s.on_control(NOW, &frame(ControlFrame::GoAway { reconnect_after_ms: 250 })).unwrap();
        assert_eq!(s.ended(), Some(&EndReason::GoAway { reconnect_after_ms: 250 }));
        let mut out = BytesMut::new();
        assert_eq!(s.shake(NOW, &mut out), Err(ShakeRefusal::NoSession));

        let mut s = PhoneSession::new(Bytes::from_static(b"t"));
        s.hello();
        let error = frame(ControlFrame::Error {
            code: u64::from(ErrorCode::SessionInUse.code()),
            reason: "in use".into(),
        });
        s.on_control(NOW, &error).unwrap();
        assert_eq!(s.ended().map(EndReason::name), Some("SESSION_IN_USE"));

        // A datagram that is a shake, of an unknown type or cut short: dropped and counted,
        // the session goes on (a datagram never closes the connection).
        let mut s = welcomed(0);
        let mut shake = BytesMut::new();
        Shake { round_id: 1, seq: 1, client_time_ms: 0 }.encode_datagram(&mut shake);
        for odd in [&shake[..], &[0x7f, 1, 2], &shake[..1], &[]] {
            assert_eq!(s.on_datagram(NOW, odd), Ok(()));
        }
        assert_eq!((s.datagrams_dropped(), s.is_active()), (4, true));
        // On the stream, a Welcome twice, an unknown frame type, garbage: violations with
        // their codes (an unknown type is UNEXPECTED_FRAME, as the edge says it).
        let mut unknown = BytesMut::new();
        shake_proto::varint::put(&mut unknown, 0x3f);
        shake_proto::varint::put(&mut unknown, 0);
        assert_eq!(welcomed(0).on_control(NOW, &unknown), Err(ErrorCode::UnexpectedFrame));
        let mut s = welcomed(0);
        let again = frame(ControlFrame::Welcome {
            server_time_ms: NOW,
            min_shake_interval_ms: 0,
            round: RoundInfo::NONE,
        });
        assert_eq!(s.on_control(NOW, &again), Err(ErrorCode::UnexpectedFrame));
        let mut s = welcomed(0);
        let mut oversized = BytesMut::new();
        shake_proto::varint::put(&mut oversized, shake_proto::control::frame_type::AWARD);
        shake_proto::varint::put(&mut oversized, 1 << 24);
        assert_eq!(s.on_control(NOW, &oversized), Err(ErrorCode::FrameTooLarge));
        assert_eq!(s.ended(), Some(&EndReason::Violation(ErrorCode::FrameTooLarge)));
    }

    /// An award of an earlier session, acknowledged by the app after a reconnect and before
    /// the edge sends it again, is acknowledged when it comes, not shown twice (before, the
    /// ack was dropped and the award shown again, and an app that de-duplicates by id never
    /// acknowledged it: undelivered in the ledger).
    #[test]
    fn an_award_acknowledged_before_it_is_sent_again_is_not_shown_twice() {
        let mut s = welcomed(0);
        s.control_out().clear();
        assert!(!s.ack_award(9), "not held by this session");
        assert!(s.control_out().is_empty(), "no ack for an award this edge never sent here");
        let award =
            ControlFrame::Award { award_id: 9, round_id: 1, prize: Prize::Cash { cents: 5 } };
        s.on_control(NOW, &frame(award)).unwrap();
        assert_eq!(s.poll_event(), None, "not shown again");
        let mut acked = s.control_out().clone();
        assert_eq!(
            ControlFrame::decode(&mut acked).unwrap(),
            Some(ControlFrame::AwardAck { award_id: 9 })
        );
    }

    /// With the event queue full of outcomes, an award is still told (an outcome makes room):
    /// an app never told of an award could never acknowledge it.
    #[test]
    fn an_award_is_told_even_with_the_event_queue_full_of_outcomes() {
        let mut s = welcomed(0);
        while s.poll_event().is_some() {}
        let outcome = Outcome { seq: 1, verdict: Verdict::NoLuck };
        let mut outcomes = BytesMut::new();
        datagram::encode_outcomes(&mut outcomes, &[outcome]);
        for _ in 0..MAX_EVENTS + 5 {
            s.on_datagram(NOW, &outcomes).unwrap();
        }
        let award =
            ControlFrame::Award { award_id: 4, round_id: 1, prize: Prize::Cash { cents: 5 } };
        s.on_control(NOW, &frame(award)).unwrap();
        // And the session's end, told with the queue full, leaves the award in it.
        s.on_control(NOW, &frame(ControlFrame::GoAway { reconnect_after_ms: 0 })).unwrap();
        let events: Vec<SessionEvent> = std::iter::from_fn(|| s.poll_event()).collect();
        assert_eq!(events.len(), MAX_EVENTS);
        assert!(matches!(events[MAX_EVENTS - 2], SessionEvent::Award { award_id: 4, .. }));
        assert!(matches!(events[MAX_EVENTS - 1], SessionEvent::Ended(_)));
    }

    /// A token too long for `Hello` ends the session as refused, with nothing sent (the
    /// encoder asserts the limit: `shake-phone --token-hex` with 129 bytes aborted).
    #[test]
    fn a_token_too_long_for_hello_ends_the_session_unsent() {
        let mut s = PhoneSession::new(Bytes::from(vec![7u8; shake_proto::limits::MAX_TOKEN + 1]));
        s.hello();
        assert!(s.control_out().is_empty());
        assert_eq!(s.ended().map(EndReason::name), Some("BAD_TOKEN"));
        let mut fits = PhoneSession::new(Bytes::from(vec![7u8; shake_proto::limits::MAX_TOKEN]));
        fits.hello();
        assert!(!fits.control_out().is_empty() && fits.ended().is_none());
    }

    /// Acknowledgements stop being queued past [`MAX_ACKS_OUT`] unwritten control bytes (an
    /// edge that withholds its credit and sends award after award), counted (review 20).
    #[test]
    fn acknowledgements_queued_are_bounded() {
        let mut s = welcomed(0);
        let award = |award_id| {
            frame(ControlFrame::Award { award_id, round_id: 1, prize: Prize::Cash { cents: 1 } })
        };
        let mut acked = 0;
        for id in 1..=40_000u64 {
            s.on_control(NOW, &award(id)).unwrap();
            acked += u64::from(s.ack_award(id));
        }
        assert_eq!(acked, 40_000, "each held award is acknowledged by the app");
        let queued = s.control_out().len();
        assert!((MAX_ACKS_OUT..MAX_ACKS_OUT + 16).contains(&queued), "{queued} bytes queued");
        assert!(s.acks_unsent() > 0);
        // An award whose acknowledgement was left unsent, sent again: not shown twice.
        while s.poll_event().is_some() {}
        s.on_control(NOW, &award(40_000)).unwrap();
        assert_eq!(s.poll_event(), None, "award 40,000 shown again");
    }

    /// On the control-stream path, shakes stop being queued once the unwritten control bytes
    /// reach [`MAX_CONTROL_OUT`] (an edge withholding stream credit; an interval of 0).
    #[test]
    fn the_control_stream_queue_is_bounded() {
        let mut s = PhoneSession::with_path(Bytes::from_static(b"t"), ShakePath::ControlStream);
        s.hello();
        let welcome = frame(ControlFrame::Welcome {
            server_time_ms: NOW,
            min_shake_interval_ms: 0,
            round: round(1, NOW - 1_000, NOW + 60_000),
        });
        s.on_control(NOW, &welcome).unwrap();
        let mut out = BytesMut::new();
        let mut refused = 0;
        for _ in 0..100_000 {
            match s.shake(NOW, &mut out) {
                Ok(_) => {}
                Err(ShakeRefusal::Backlogged) => refused += 1,
                Err(other) => panic!("{other:?}"),
            }
        }
        assert!(s.control_out().len() <= MAX_CONTROL_OUT + 64, "{}", s.control_out().len());
        assert!(refused > 99_000, "{refused}");
        assert!(out.is_empty(), "nothing on the datagram path");
        // Written out, shakes are queued again.
        s.control_out().clear();
        assert!(s.shake(NOW, &mut out).is_ok());
    }

    /// Rounds announced far ahead never push the open round out of the table (before, the
    /// round that ended first went, which with none ended was the open one).
    #[test]
    fn rounds_announced_ahead_never_push_out_the_open_round() {
        let mut s = welcomed(0);
        let notice = |id: u32| {
            let starts = NOW + 100_000 * u64::from(id);
            frame(ControlFrame::RoundNotice {
                round: round(id, starts, starts + 60_000),
                min_shake_interval_ms: 0,
            })
        };
        for id in 2..=2 + MAX_ROUNDS as u32 {
            s.on_control(NOW, &notice(id)).unwrap();
        }
        let mut out = BytesMut::new();
        assert!(s.shake(NOW + 1, &mut out).is_ok(), "round 1 is still open");
        assert_eq!(s.round(NOW + 1).map(|r| r.round_id), Some(1));
        // Once round 1 has ended (by the edge's clock), it is the first to go.
        let later = NOW + 200_000;
        s.on_control(later, &notice(40)).unwrap();
        let kept: Vec<u32> = s.rounds.iter().map(|r| r.round_id).collect();
        assert!(!kept.contains(&1) && kept.len() == MAX_ROUNDS, "{kept:?}");
    }

    #[test]
    fn frames_split_anywhere_decode_the_same() {
        let mut bytes = frame(ControlFrame::Welcome {
            server_time_ms: NOW,
            min_shake_interval_ms: 100,
            round: round(3, NOW, NOW + 1_000),
        });
        bytes.extend_from_slice(&frame(ControlFrame::Pace { min_shake_interval_ms: 300 }));
        for split in 0..=bytes.len() {
            let mut s = PhoneSession::new(Bytes::from_static(b"t"));
            s.hello();
            s.on_control(NOW, &bytes[..split]).unwrap();
            s.on_control(NOW, &bytes[split..]).unwrap();
            assert!(s.is_active(), "split at {split}");
            assert_eq!(s.min_shake_interval_ms(), 300, "split at {split}");
        }
    }

    #[test]
    fn the_event_queue_is_bounded_and_the_end_is_always_told() {
        let mut s = welcomed(0);
        let mut answer = BytesMut::new();
        datagram::encode_outcomes(&mut answer, &[Outcome { seq: 1, verdict: Verdict::NoLuck }]);
        for _ in 0..MAX_EVENTS + 10 {
            s.on_datagram(NOW, &answer).unwrap();
        }
        assert_eq!(s.events_dropped(), 10);
        s.on_control(NOW, &frame(ControlFrame::GoAway { reconnect_after_ms: 0 })).unwrap();
        let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        assert_eq!(events.len(), MAX_EVENTS);
        assert!(matches!(events.last(), Some(SessionEvent::Ended(_))));
    }
}
