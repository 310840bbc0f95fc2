//! When and where a phone connects next, sans-IO: a list of edges, each phone going round it
//! in an order of its own, exponential backoff with a jitter of the phone's own after
//! failures, a draining edge's wait honoured, and a stop where only the app can help (a token
//! to renew, a user playing elsewhere).
//!
//! The driver asks only once a connection has ended: a session that is alive is never left
//! for a reconnect, however slow its answers (answers to shakes are datagrams; losing some is
//! normal, and an edge under load answers late on purpose).

use shake_proto::ErrorCode;

/// Backoff after failures. [`Reconnect::new`] takes them as [`ReconnectSettings::sane`] makes
/// them: no wait under [`MIN_WAIT_MS`] (zeros would have every refused phone of a fleet
/// retry as fast as the refusals come back), the longest at least the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectSettings {
    /// The wait after a first failure, milliseconds; each failure in a row doubles it.
    pub first_ms: u64,
    /// The longest wait, milliseconds.
    pub max_ms: u64,
    /// The wait after `SESSION_IN_USE` (another session of the user is live), milliseconds.
    pub in_use_ms: u64,
    /// How long a welcomed session must last to start the backoff over, milliseconds: one
    /// that ends sooner (an edge that welcomes, then fails; a frame this app cannot read) is
    /// a failure like any other, or phones would come back every second for ever.
    pub stable_ms: u64,
}

impl Default for ReconnectSettings {
    fn default() -> Self {
        Self { first_ms: 1_000, max_ms: 16_000, in_use_ms: 60_000, stable_ms: 30_000 }
    }
}

/// The shortest wait [`ReconnectSettings`] may set, milliseconds.
pub const MIN_WAIT_MS: u64 = 100;

impl ReconnectSettings {
    /// These settings with every wait at least [`MIN_WAIT_MS`] and the longest at least the
    /// first. (A wait of `u64::MAX`, "never", stays: the arithmetic saturates.)
    pub fn sane(self) -> Self {
        let first_ms = self.first_ms.max(MIN_WAIT_MS);
        Self {
            first_ms,
            max_ms: self.max_ms.max(first_ms),
            in_use_ms: self.in_use_ms.max(MIN_WAIT_MS),
            stable_ms: self.stable_ms,
        }
    }
}

/// How a connection ended, as the driver saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// No session: the handshake failed, timed out, or was refused by the transport
    /// (`CONNECTION_REFUSED`: the edge is over its handshake budget).
    NotConnected,
    /// A welcomed session's connection was lost (idle timeout, reset, network change).
    Lost,
    /// The edge went silent under a live connection: shakes unanswered and nothing
    /// acknowledged ([`crate::liveness`]). The edge is likely gone: the next one.
    Silent,
    /// The edge is draining (`GoAway`, or a close with `DRAINING`): another edge, after the
    /// wait it asked for.
    GoAway {
        /// Milliseconds to wait at least.
        reconnect_after_ms: u32,
    },
    /// The edge closed the connection or the session with this code (an `Error` frame, or
    /// an application close).
    Closed(u64),
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextConnect {
    /// Connect to edge `edge` (an index into the list) at the phone's `at_ms`.
    At {
        /// The edge's index.
        edge: usize,
        /// Not before this, the phone's Unix milliseconds.
        at_ms: u64,
    },
    /// Do not reconnect by yourself: the app must act (log in again, or tell the user they
    /// play elsewhere). The code says why.
    Stop(ErrorCode),
}

/// One phone's reconnect state over its ordered list of edges.
#[derive(Debug, Clone)]
pub struct Reconnect {
    settings: ReconnectSettings,
    edges: usize,
    current: usize,
    /// Failures in a row since the last session that lasted [`ReconnectSettings::stable_ms`].
    failures: u32,
    /// When the live session was welcomed, if it was.
    welcomed_at_ms: Option<u64>,
    /// The live session got an answer to a shake: the edge works.
    answered: bool,
    /// The phone's own jitter source (its user id, say), and its own order of the edges.
    seed: u64,
    /// An edge refused the token since the last welcome: the next refusal stops the phone.
    token_refused: bool,
    /// When the token expires by its own claim, in the phone's milliseconds, if known.
    token_expires_at_ms: Option<u64>,
}

impl Reconnect {
    /// A phone that knows `edges` edges (at least one), starts at the first, moves on from an
    /// edge to the next in an order of its own (by `seed`), and jitters its waits by `seed`.
    pub fn new(edges: usize, seed: u64, settings: ReconnectSettings) -> Self {
        Self {
            settings: settings.sane(),
            edges: edges.max(1),
            current: 0,
            failures: 0,
            welcomed_at_ms: None,
            answered: false,
            seed,
            token_refused: false,
            token_expires_at_ms: None,
        }
    }

    /// The token expires at `at_ms` (the phone's milliseconds; its claim, unchecked): an edge's
    /// `TOKEN_EXPIRED` from then on is the phone's own clock's word too, and is not asked of
    /// another edge (which would only cost it a handshake).
    pub fn token_expires_at(mut self, at_ms: Option<u64>) -> Self {
        self.token_expires_at_ms = at_ms;
        self
    }

    /// The same, starting at edge `first` of the list (a fleet of phones spread over the
    /// edges, say by a hash of the user).
    pub fn starting_at(mut self, first: usize) -> Self {
        self.current = first % self.edges;
        self
    }

    /// The edge to connect to first.
    pub fn first(&self) -> usize {
        self.current
    }

    /// Failures in a row since the last session that lasted.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A session was welcomed at `now_ms`: if it lasts [`ReconnectSettings::stable_ms`], the
    /// backoff starts over when it ends.
    pub fn welcomed(&mut self, now_ms: u64) {
        self.welcomed_at_ms = Some(now_ms);
        self.answered = false;
        self.token_refused = false;
    }

    /// The live session got an answer to a shake: the edge works, and the backoff starts over
    /// when the session ends, however short it was (a flaky link that drops every few seconds
    /// goes back to the same edge soon, rather than climbing to the longest wait).
    pub fn answered(&mut self) {
        self.answered = true;
    }

    /// The connection ended at `now_ms` as `end`: where and when to connect next.
    pub fn ended(&mut self, now_ms: u64, end: ConnectionEnd) -> NextConnect {
        let welcomed_at = self.welcomed_at_ms.take();
        let answered = std::mem::take(&mut self.answered);
        let lasted = |ms| welcomed_at.is_some_and(|at| now_ms.saturating_sub(at) >= ms);
        if answered || lasted(self.settings.stable_ms) {
            self.failures = 0;
        }
        // Told to go at the door (before a welcome, or with it: a draining edge welcomes, then
        // says `GoAway` at once): a failure, or with every edge draining the phone would cycle
        // through them with no backoff at all.
        let refused_at_the_door = !answered && !lasted(self.settings.first_ms);
        let code = match end {
            ConnectionEnd::Closed(code) => ErrorCode::from_code(code),
            _ => None,
        };
        match (end, code) {
            (
                ConnectionEnd::Closed(_),
                Some(code @ (ErrorCode::BadToken | ErrorCode::TokenExpired)),
            ) if self.edges > 1 && !self.token_refused && !self.expired_here(code, now_ms) => {
                // One edge's refusal may be that edge's fault (a key rotation it missed, its
                // clock off), and every new token of this user would start at the same edge:
                // one other edge is asked, after a failure's backoff, before the app is.
                self.token_refused = true;
                self.failures = self.failures.saturating_add(1);
                self.move_on();
                NextConnect::At { edge: self.current, at_ms: now_ms.saturating_add(self.pause()) }
            }
            (
                ConnectionEnd::Closed(_),
                Some(
                    code @ (ErrorCode::BadToken
                    | ErrorCode::TokenExpired
                    | ErrorCode::UnsupportedVersion
                    | ErrorCode::SessionSuperseded),
                ),
            ) => NextConnect::Stop(code),
            (ConnectionEnd::GoAway { reconnect_after_ms }, _) => {
                self.move_on();
                // At most what a phone honours (one bad value must not park it for weeks), and
                // up to as long again of the phone's own: a drained edge's whole crowd is told
                // at once, and its reconnects should not arrive at once.
                let wait = u64::from(reconnect_after_ms.min(shake_proto::limits::MAX_TOLD_WAIT_MS));
                let asked = now_ms.saturating_add(wait + self.jitter(wait));
                NextConnect::At {
                    edge: self.current,
                    at_ms: self.no_sooner(asked, now_ms, refused_at_the_door),
                }
            }
            (ConnectionEnd::Closed(_), Some(ErrorCode::Draining)) => {
                self.move_on();
                let wait = self.settings.first_ms;
                let asked = now_ms.saturating_add(wait).saturating_add(self.jitter(wait));
                NextConnect::At {
                    edge: self.current,
                    at_ms: self.no_sooner(asked, now_ms, refused_at_the_door),
                }
            }
            (ConnectionEnd::Closed(_), Some(ErrorCode::SessionInUse)) => {
                // The user's other session is live on this edge: the same edge, much later.
                let wait = self.settings.in_use_ms;
                let at_ms = now_ms.saturating_add(wait).saturating_add(self.jitter(wait / 4));
                NextConnect::At { edge: self.current, at_ms }
            }
            (ConnectionEnd::Lost, _) if self.failures == 0 => {
                // A session that worked (and lasted): the same edge first, soon.
                self.failures = 1;
                NextConnect::At { edge: self.current, at_ms: now_ms.saturating_add(self.pause()) }
            }
            _ => {
                // Not reached, refused, overloaded, or lost again: the next edge, later.
                self.failures = self.failures.saturating_add(1);
                self.move_on();
                NextConnect::At { edge: self.current, at_ms: now_ms.saturating_add(self.pause()) }
            }
        }
    }

    /// The edge said the token expired, and by the phone's own clock it has.
    fn expired_here(&self, code: ErrorCode, now_ms: u64) -> bool {
        code == ErrorCode::TokenExpired && self.token_expires_at_ms.is_some_and(|at| now_ms >= at)
    }

    /// `asked`, or, for a phone told to go before it was welcomed, a failure's backoff if that
    /// is later.
    fn no_sooner(&mut self, asked: u64, now_ms: u64, refused_at_the_door: bool) -> u64 {
        if !refused_at_the_door {
            return asked;
        }
        self.failures = self.failures.saturating_add(1);
        asked.max(now_ms.saturating_add(self.pause()))
    }

    /// The edge after the current one in this phone's own order of the list (the edges by a
    /// hash of the phone's seed and each edge's place): from a draining or dead edge, its
    /// phones go to every other edge alike, not all to the one after it in the list; and a
    /// phone that keeps failing still goes round every edge before it tries one again.
    fn move_on(&mut self) {
        let rank = |edge: usize| shake_proto::mix(self.seed ^ (edge as u64).rotate_left(40));
        let here = rank(self.current);
        let after = (0..self.edges).filter(|&e| rank(e) > here).min_by_key(|&e| rank(e));
        self.current = after.or_else(|| (0..self.edges).min_by_key(|&e| rank(e))).unwrap_or(0);
    }

    fn pause(&self) -> u64 {
        backoff_ms(&self.settings, self.seed, self.failures)
    }

    fn jitter(&self, span: u64) -> u64 {
        jitter(self.seed, self.failures, span)
    }
}

/// The wait after `failures` failures in a row (at least 1): `first_ms` doubled per failure
/// after the first, at most `max_ms`, times 0.5 to 1.5 of the phone's own (`seed`), so a
/// refused crowd does not come back at one instant.
pub fn backoff_ms(settings: &ReconnectSettings, seed: u64, failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(20);
    let base = settings.first_ms.saturating_mul(1 << doublings).min(settings.max_ms);
    (base / 2).saturating_add(jitter(seed, failures, base))
}

/// 0 to `span` (exclusive), the same for the same phone and failure count.
fn jitter(seed: u64, failures: u32, span: u64) -> u64 {
    let z = shake_proto::mix(seed ^ u64::from(failures).rotate_left(48));
    if span == 0 { 0 } else { (z >> 11) % span }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(next: NextConnect) -> (usize, u64) {
        match next {
            NextConnect::At { edge, at_ms } => (edge, at_ms),
            NextConnect::Stop(code) => panic!("stopped: {code:?}"),
        }
    }

    #[test]
    fn failures_back_off_exponentially_going_round_every_edge() {
        let mut r = Reconnect::new(3, 42, ReconnectSettings::default());
        assert_eq!(r.first(), 0);
        let mut waits = Vec::new();
        let mut edges = vec![0];
        for _ in 0..7 {
            let (edge, at_ms) = at(r.ended(0, ConnectionEnd::NotConnected));
            edges.push(edge);
            waits.push(at_ms);
        }
        // Round every edge before one again, in the same order each time round.
        for window in edges.windows(3) {
            let seen: std::collections::BTreeSet<_> = window.iter().collect();
            assert_eq!(seen.len(), 3, "{edges:?}");
        }
        assert_eq!(edges[..5], edges[3..], "{edges:?}");
        for (n, wait) in waits.iter().enumerate() {
            let base = (1_000u64 << n).min(16_000);
            assert!((base / 2..base * 3 / 2).contains(wait), "failure {n}: {wait} ms");
        }
        // A session that lasted starts the backoff over; losing it goes back to the same edge.
        r.welcomed(100_000);
        let (edge, wait) = at(r.ended(130_000, ConnectionEnd::Lost));
        assert_eq!((edge, (130_500..131_500).contains(&wait)), (edges[7], true));
    }

    /// The phones of a drained (or dead) edge go to every other edge alike: before, each moved
    /// to the next in the list, so the whole crowd of edge k met edge k+1 at once, its refused
    /// part then k+2, and so round the list.
    #[test]
    fn a_drained_edges_crowd_spreads_over_the_other_edges() {
        let mut next = [0u32; 4];
        for user in 0..4_000u64 {
            let seed = shake_proto::mix(user);
            let mut r = Reconnect::new(4, seed, ReconnectSettings::default());
            r.welcomed(0);
            let (edge, _) =
                at(r.ended(60_000, ConnectionEnd::GoAway { reconnect_after_ms: 1_000 }));
            next[edge] += 1;
        }
        assert_eq!(next[0], 0, "not back to the drained edge: {next:?}");
        for n in &next[1..] {
            assert!((1_100..=1_570).contains(n), "uneven: {next:?}");
        }
    }

    /// Settings an app got wrong (zeros, "never") neither spin nor overflow, and a wait the
    /// edge should never tell is honoured at most [`shake_proto::limits::MAX_TOLD_WAIT_MS`].
    #[test]
    fn waits_are_floored_saturated_and_capped() {
        let zeros = ReconnectSettings { first_ms: 0, max_ms: 0, in_use_ms: 0, stable_ms: 0 };
        let mut r = Reconnect::new(2, 5, zeros);
        for _ in 0..5 {
            let (_, at_ms) = at(r.ended(1_000, ConnectionEnd::NotConnected));
            assert!(at_ms >= 1_000 + MIN_WAIT_MS / 2, "{at_ms}");
        }
        let never = ReconnectSettings { in_use_ms: u64::MAX, ..ReconnectSettings::default() };
        let mut r = Reconnect::new(2, 5, never);
        let in_use = ConnectionEnd::Closed(ErrorCode::SessionInUse.code().into());
        assert_eq!(at(r.ended(1_000, in_use)).1, u64::MAX);
        let mut r = Reconnect::new(2, 5, ReconnectSettings::default());
        r.welcomed(0);
        let (_, at_ms) =
            at(r.ended(60_000, ConnectionEnd::GoAway { reconnect_after_ms: u32::MAX }));
        let most = u64::from(shake_proto::limits::MAX_TOLD_WAIT_MS);
        assert!((60_000 + most..60_000 + 2 * most).contains(&at_ms), "{at_ms}");
    }

    /// A session welcomed and ended at once (an edge that fails after `Welcome`, a frame this
    /// app cannot decode, a draining edge's `Welcome` then `GoAway`'s kin) is a failure: before,
    /// each `Welcome` reset the backoff and such phones came back every second for ever.
    #[test]
    fn sessions_that_end_at_once_back_off_like_failures() {
        let mut r = Reconnect::new(2, 7, ReconnectSettings::default());
        let mut waits = Vec::new();
        let mut now = 0;
        for _ in 0..6 {
            r.welcomed(now);
            let (_, at_ms) =
                at(r.ended(now + 50, ConnectionEnd::Closed(ErrorCode::Internal.code().into())));
            waits.push(at_ms - (now + 50));
            now = at_ms;
        }
        assert!(waits[5] >= 8_000, "the backoff grows: {waits:?}");
        // Lost after a short session, too: not the "same edge, soon" of a session that worked.
        let mut r = Reconnect::new(2, 7, ReconnectSettings::default());
        for _ in 0..4 {
            r.welcomed(0);
            r.ended(1_000, ConnectionEnd::Lost);
        }
        assert_eq!(r.failures(), 4);
        r.welcomed(0);
        r.ended(30_000, ConnectionEnd::Lost);
        assert_eq!(r.failures(), 1, "a session that lasted starts over: the same edge, soon");
        // A short session whose shakes were answered worked too (a flaky link): the same.
        for _ in 0..4 {
            r.welcomed(0);
            r.ended(1_000, ConnectionEnd::Lost);
        }
        r.welcomed(0);
        r.answered();
        let (edge, at_ms) = at(r.ended(3_000, ConnectionEnd::Lost));
        assert_eq!(r.failures(), 1);
        assert!((3_500..4_500).contains(&at_ms), "soon: {at_ms}");
        assert_eq!(edge, r.first(), "the same edge");
    }

    #[test]
    fn the_app_is_asked_when_only_it_can_help() {
        for code in [ErrorCode::UnsupportedVersion, ErrorCode::SessionSuperseded] {
            let mut r = Reconnect::new(2, 1, ReconnectSettings::default());
            assert_eq!(
                r.ended(0, ConnectionEnd::Closed(code.code().into())),
                NextConnect::Stop(code)
            );
        }
        // A token one edge refuses is asked of one other edge first (that edge may be the one
        // at fault: a key rotation it missed, its clock off), then the app; with one edge,
        // the app at once. A welcome in between starts that over.
        for code in [ErrorCode::BadToken, ErrorCode::TokenExpired] {
            let refused = ConnectionEnd::Closed(code.code().into());
            let mut r = Reconnect::new(1, 1, ReconnectSettings::default());
            assert_eq!(r.ended(0, refused), NextConnect::Stop(code));
            let mut r = Reconnect::new(3, 1, ReconnectSettings::default());
            let (edge, at_ms) = at(r.ended(0, refused));
            assert!(edge != 0 && at_ms >= 500, "another edge, after a backoff: {edge} {at_ms}");
            assert_eq!(r.ended(at_ms, refused), NextConnect::Stop(code));
            let mut r = Reconnect::new(3, 1, ReconnectSettings::default());
            r.ended(0, refused);
            r.welcomed(10_000);
            r.ended(40_000, ConnectionEnd::Lost);
            assert!(matches!(r.ended(41_000, refused), NextConnect::At { .. }));
            // A token whose own claim says it has expired, by the phone's clock too: an edge's
            // `TOKEN_EXPIRED` is not asked of another edge; a bad token still is.
            let expired = Reconnect::new(3, 1, ReconnectSettings::default());
            let mut r = expired.token_expires_at(Some(50_000));
            let next = r.ended(60_000, refused);
            if code == ErrorCode::TokenExpired {
                assert_eq!(next, NextConnect::Stop(code));
            } else {
                assert!(matches!(next, NextConnect::At { .. }), "{next:?}");
            }
            let valid = Reconnect::new(3, 1, ReconnectSettings::default());
            let mut r = valid.token_expires_at(Some(90_000));
            assert!(matches!(r.ended(60_000, refused), NextConnect::At { .. }));
        }
        let mut r = Reconnect::new(2, 1, ReconnectSettings::default());
        let (edge, wait) =
            at(r.ended(0, ConnectionEnd::Closed(ErrorCode::SessionInUse.code().into())));
        assert_eq!(edge, 0, "the same edge, where the other session lives");
        assert!(wait >= 60_000);
    }

    #[test]
    fn a_draining_edge_sends_the_phone_to_the_next_after_its_wait() {
        let mut r = Reconnect::new(2, 9, ReconnectSettings::default());
        r.welcomed(0);
        let (edge, at_ms) = at(r.ended(1_000, ConnectionEnd::GoAway { reconnect_after_ms: 4_000 }));
        assert_eq!(edge, 1);
        assert!((5_000..9_000).contains(&at_ms), "the wait, and up to as long again: {at_ms}");
        assert_eq!(r.failures(), 0, "a session's edge draining is not a failure");
        r.welcomed(6_000);
        let (edge, at_ms) =
            at(r.ended(7_000, ConnectionEnd::Closed(ErrorCode::Draining.code().into())));
        assert_eq!(edge, 0);
        assert!((8_000..9_000).contains(&at_ms), "1 to 2 s: {at_ms}");
    }

    /// Told to go at the door (before `Welcome`, or right after it, as a draining edge does;
    /// `GoAway` asking no wait): the waits grow as after failures (before, a phone cycled
    /// through the edges with none).
    #[test]
    fn draining_edges_that_never_welcome_back_off() {
        let mut r = Reconnect::new(2, 9, ReconnectSettings::default());
        let mut now = 0;
        let mut waits = Vec::new();
        for n in 0..6 {
            if n >= 3 {
                r.welcomed(now); // welcomed, then told to go in the same breath
            }
            let end = if n % 2 == 0 {
                ConnectionEnd::GoAway { reconnect_after_ms: 0 }
            } else {
                ConnectionEnd::Closed(ErrorCode::Draining.code().into())
            };
            let (_, at_ms) = at(r.ended(now, end));
            waits.push(at_ms - now);
            now = at_ms;
        }
        assert!(waits[0] >= 500, "{waits:?}");
        assert!(waits[5] >= 8_000, "{waits:?}");
    }

    #[test]
    fn a_silent_edge_is_left_for_the_next_at_once() {
        let mut r = Reconnect::new(3, 4, ReconnectSettings::default());
        r.welcomed(0);
        let (edge, wait) = at(r.ended(0, ConnectionEnd::Silent));
        assert_ne!(edge, 0, "not the same edge, as after a lost connection");
        assert!(wait < 1_500, "{wait}");
    }

    #[test]
    fn a_refused_crowd_comes_back_spread_out() {
        let waits: std::collections::BTreeSet<u64> = (0..500)
            .map(|user| {
                let mut r = Reconnect::new(1, user, ReconnectSettings::default());
                at(r.ended(0, ConnectionEnd::NotConnected)).1
            })
            .collect();
        // 500 draws from 1,000 milliseconds: about 393 distinct values when uniform.
        assert!(waits.len() > 350, "{} distinct waits of 500", waits.len());
        assert!(waits.first() < Some(&600) && waits.last() > Some(&1_400));
    }
}
