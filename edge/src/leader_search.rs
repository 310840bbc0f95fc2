//! Which allocator the edge's link dials next, and how long it waits first: the configured
//! addresses in turn, a standby's redirect followed to the leader it names, backoff on
//! failures. Sans-IO: the link reports what each attempt came to, with the time.
//!
//! A standby names the leader from its last look at the lease, so just after the leader has
//! left (a clean stop, a term's end, a crash) it may still name it. Dialling an allocator that
//! has gone waits out a handshake (3 s) while phones get only local answers. So a redirect to
//! an allocator that stopped, refused naming no one, or could not be reached in the last
//! [`LEFT_FOR`] is not followed: the edge asks the standby again, which has taken over or
//! names the new leader by its next look.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long an allocator that left is taken not to lead (about eight looks of a standby at
/// the default `standby_poll_ms`, well under a lease).
pub const LEFT_FOR: Duration = Duration::from_secs(2);
/// The pause before asking a standby again after its redirect named an allocator that left.
pub const ASK_AGAIN: Duration = Duration::from_millis(100);
/// The pause before following a redirect.
pub const FOLLOW: Duration = Duration::from_millis(20);
/// Redirects in a row followed without backoff (more is a stale loop between standbys).
const REDIRECTS_WITHOUT_BACKOFF: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A link up this long was a working one: the backoff starts over.
const UP_LONG_ENOUGH: Duration = Duration::from_secs(1);

/// What one attempt at [`LeaderSearch::current`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The dial failed (refused, timed out).
    Unreachable,
    /// Closed by a standby with `NOT_LEADER`, naming the leader or no one, after being up for
    /// so long (a leader whose term ended was up for as long as it led).
    NotLeader(Option<SocketAddr>, Duration),
    /// Closed by the allocator stopping (`NO_ERROR`), after being up for so long.
    Stopped(Duration),
    /// Lost any other way, after being up for so long.
    Lost(Duration),
}

/// The link's next dial, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextDial {
    /// Wait this long first.
    pub pause: Duration,
    /// A redirect named an allocator that just left: the same standby is asked again.
    pub stale_redirect: bool,
}

/// The state of the link's search for the leading allocator.
#[derive(Debug)]
pub struct LeaderSearch {
    addrs: Vec<SocketAddr>,
    next: usize,
    redirects_in_a_row: u32,
    /// Redirects in a row to an allocator that just left (asked again, not followed).
    stale_asks: u32,
    backoff: Duration,
    /// The last allocator seen leaving (stopped, refused naming no one, unreachable), and when.
    left: Option<(SocketAddr, Instant)>,
}

impl LeaderSearch {
    /// A search over `addrs` (not empty: the configuration requires one at least), from the
    /// first.
    pub fn new(addrs: Vec<SocketAddr>) -> Self {
        assert!(!addrs.is_empty(), "an edge has at least one allocator address");
        Self {
            addrs,
            next: 0,
            redirects_in_a_row: 0,
            stale_asks: 0,
            backoff: FIRST_BACKOFF,
            left: None,
        }
    }

    /// The allocator to dial now.
    pub fn current(&self) -> SocketAddr {
        self.addrs[self.next % self.addrs.len()]
    }

    /// What the attempt at [`Self::current`] came to at `now`: where to go next and the pause.
    pub fn ended(&mut self, attempt: Attempt, now: Instant) -> NextDial {
        let here = self.current();
        let (pause, stale_redirect) = match attempt {
            Attempt::NotLeader(named, up_for) => {
                self.after_link(up_for);
                let stale =
                    named.is_some_and(|leader| leader != here && self.just_left(leader, now));
                if stale {
                    (self.ask_again(now), true)
                } else {
                    self.stale_asks = 0;
                    if named.is_none() {
                        self.left = Some((here, now));
                    }
                    self.next = named
                        .and_then(|leader| self.addrs.iter().position(|a| *a == leader))
                        .unwrap_or(self.next + 1);
                    self.redirects_in_a_row += 1;
                    let pause = if self.redirects_in_a_row <= REDIRECTS_WITHOUT_BACKOFF {
                        FOLLOW
                    } else {
                        self.back_off()
                    };
                    (pause, false)
                }
            }
            Attempt::Unreachable => {
                self.left = Some((here, now));
                (self.moved_on(), false)
            }
            Attempt::Stopped(up_for) => {
                self.left = Some((here, now));
                self.after_link(up_for);
                (self.moved_on(), false)
            }
            Attempt::Lost(up_for) => {
                self.after_link(up_for);
                (self.moved_on(), false)
            }
        };
        NextDial { pause, stale_redirect }
    }

    /// The pause before asking a standby again whose redirect named an allocator that just
    /// left: [`ASK_AGAIN`] thrice, then doubling, but never past the time the mark of having
    /// left runs out, when the redirect is believed: the allocator that left may lead again by
    /// then (a term ended by a failed commit, won again under a new epoch), and a wait past the
    /// mark only kept the edge from it. Stale asks are no redirect loop: they leave the
    /// redirects' backoff alone.
    fn ask_again(&mut self, now: Instant) -> Duration {
        self.stale_asks += 1;
        let doublings = self.stale_asks.saturating_sub(REDIRECTS_WITHOUT_BACKOFF).min(5);
        let pause = (ASK_AGAIN * 2u32.pow(doublings)).min(MAX_BACKOFF);
        pause.min(self.left_for_yet(now).max(ASK_AGAIN))
    }

    /// How long the mark of the allocator that left still holds at `now`.
    fn left_for_yet(&self, now: Instant) -> Duration {
        self.left.map_or(Duration::ZERO, |(_, at)| {
            LEFT_FOR.saturating_sub(now.saturating_duration_since(at))
        })
    }

    fn just_left(&self, addr: SocketAddr, now: Instant) -> bool {
        self.left
            .is_some_and(|(gone, at)| gone == addr && now.saturating_duration_since(at) < LEFT_FOR)
    }

    /// A link that lasted starts the search over: its backoff, and its count of redirects (a
    /// term's end after hours of leading is no redirect loop, and each failover of a long-lived
    /// edge would otherwise start where the last one's backoff had grown to).
    fn after_link(&mut self, up_for: Duration) {
        if up_for >= UP_LONG_ENOUGH {
            self.backoff = FIRST_BACKOFF;
            self.redirects_in_a_row = 0;
            self.stale_asks = 0;
        }
    }

    /// To the next address, after the backoff.
    fn moved_on(&mut self) -> Duration {
        self.redirects_in_a_row = 0;
        self.stale_asks = 0;
        self.next += 1;
        self.back_off()
    }

    fn back_off(&mut self) -> Duration {
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_redirect_to_the_allocator_that_just_stopped_asks_the_standby_again() {
        let (a, b) = (addr(1), addr(2));
        let mut search = LeaderSearch::new(vec![a, b]);
        let t0 = Instant::now();
        assert_eq!(search.current(), a);
        // a stops: on to b, which still names a from its last look.
        search.ended(Attempt::Stopped(Duration::from_secs(60)), t0);
        assert_eq!(search.current(), b);
        let next = search
            .ended(Attempt::NotLeader(Some(a), Duration::ZERO), t0 + Duration::from_millis(50));
        assert_eq!(next, NextDial { pause: ASK_AGAIN, stale_redirect: true });
        assert_eq!(search.current(), b, "b asked again");
        // Past LEFT_FOR the redirect is believed (a may be back and leading).
        search.ended(
            Attempt::NotLeader(Some(a), Duration::ZERO),
            t0 + LEFT_FOR + Duration::from_millis(1),
        );
        assert_eq!(search.current(), a);
    }

    /// The allocator whose term ended (a failed commit: `NOT_LEADER` naming no one) takes the
    /// lease again under a new epoch, and the standby names it: the edge asks the standby
    /// again while the mark of having left holds, and dials the allocator once it runs out,
    /// not a doubling backoff later (chaos `ha-primary-kill` measured 5.5 s to answers so, the
    /// edge's stale asks at 0.1 to 1.6 s apart); and the same at every failover of a
    /// long-lived edge (the redirects of the last one counted on, and slowed each next one).
    #[test]
    fn a_stale_redirect_is_believed_once_the_mark_runs_out_at_every_failover() {
        let (a, b) = (addr(1), addr(2));
        let mut search = LeaderSearch::new(vec![a, b]);
        let mut now = Instant::now();
        let hour = Duration::from_secs(3_600);
        for failover in 0..6 {
            assert_eq!(search.current(), a);
            // a led for an hour; its term ends.
            now += hour;
            let ended_at = now;
            search.ended(Attempt::NotLeader(None, hour), now);
            assert_eq!(search.current(), b, "failover {failover}");
            while search.current() == b {
                let next = search.ended(Attempt::NotLeader(Some(a), Duration::ZERO), now);
                let believed = search.current() == a;
                assert_eq!(next.stale_redirect, !believed);
                assert_eq!(believed, now >= ended_at + LEFT_FOR, "failover {failover}");
                now += next.pause;
            }
            let waited = now - ended_at;
            assert!(waited <= LEFT_FOR + ASK_AGAIN + FOLLOW, "failover {failover}: {waited:?}");
        }
    }

    #[test]
    fn a_redirect_after_a_lost_link_is_followed() {
        // A link lost to a blip is no sign that its allocator stopped leading.
        let (a, b) = (addr(1), addr(2));
        let mut search = LeaderSearch::new(vec![a, b]);
        let t0 = Instant::now();
        search.ended(Attempt::Lost(Duration::from_secs(60)), t0);
        let next = search.ended(Attempt::NotLeader(Some(a), Duration::ZERO), t0);
        assert_eq!(next, NextDial { pause: FOLLOW, stale_redirect: false });
        assert_eq!(search.current(), a);
    }

    #[test]
    fn an_ending_term_and_an_unreachable_allocator_count_as_left() {
        let (a, b, c) = (addr(1), addr(2), addr(3));
        let t0 = Instant::now();
        // a refuses naming no one (its term ending): b's redirect back to it is stale.
        let mut search = LeaderSearch::new(vec![a, b, c]);
        search.ended(Attempt::NotLeader(None, Duration::ZERO), t0);
        assert_eq!(search.current(), b);
        assert!(search.ended(Attempt::NotLeader(Some(a), Duration::ZERO), t0).stale_redirect);
        // c cannot be reached: a's redirect to it is stale; to b it is not.
        let mut search = LeaderSearch::new(vec![c, a, b]);
        search.ended(Attempt::Unreachable, t0);
        assert_eq!(search.current(), a);
        assert!(search.ended(Attempt::NotLeader(Some(c), Duration::ZERO), t0).stale_redirect);
        assert!(!search.ended(Attempt::NotLeader(Some(b), Duration::ZERO), t0).stale_redirect);
        assert_eq!(search.current(), b);
    }

    #[test]
    fn stale_asks_and_redirect_loops_back_off() {
        let (a, b) = (addr(1), addr(2));
        let mut search = LeaderSearch::new(vec![a, b]);
        let t0 = Instant::now();
        search.ended(Attempt::Stopped(Duration::ZERO), t0);
        let pauses: Vec<Duration> = (0..6)
            .map(|_| search.ended(Attempt::NotLeader(Some(a), Duration::ZERO), t0).pause)
            .collect();
        assert_eq!(&pauses[..3], [ASK_AGAIN; 3]);
        assert!(pauses[3] >= FIRST_BACKOFF * 2 && pauses[4] > pauses[3], "{pauses:?}");
        assert!(pauses.iter().all(|p| *p <= MAX_BACKOFF));
    }

    #[test]
    fn failures_back_off_and_a_working_link_starts_over() {
        let (a, b) = (addr(1), addr(2));
        let mut search = LeaderSearch::new(vec![a, b]);
        let t0 = Instant::now();
        let first = search.ended(Attempt::Unreachable, t0).pause;
        let second = search.ended(Attempt::Unreachable, t0).pause;
        assert_eq!((first, second), (FIRST_BACKOFF, FIRST_BACKOFF * 2));
        assert_eq!(search.current(), a, "round the addresses");
        assert_eq!(search.ended(Attempt::Lost(UP_LONG_ENOUGH), t0).pause, FIRST_BACKOFF);
    }
}
