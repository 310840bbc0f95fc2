//! Open-loop shake timing, sans-IO: every shake has an intended send time fixed in advance by
//! the rate and jitter, whatever the system answers. A sender that falls behind still sends
//! every intended shake (and latency is measured from the intended time: corrected for
//! coordinated omission), but a stall longer than `max_catch_up` intervals skips the backlog
//! and counts it, so one pause does not become a burst.

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// One phone's schedule. Times are microseconds from any fixed origin.
#[derive(Debug, Clone)]
pub struct Schedule {
    next_us: u64,
    interval_us: f64,
    /// The interval of the plan, before any pacing the edge asked for.
    planned_us: f64,
    jitter: f64,
    rng: ChaCha8Rng,
    /// Intended sends skipped after a stall.
    pub skipped: u64,
    /// Intended sends made late (after their intended time plus one interval).
    pub late: u64,
}

/// Most intervals of backlog sent after a stall before the rest is skipped.
const MAX_CATCH_UP: u64 = 4;

impl Schedule {
    /// A schedule of `rate_per_s` shakes a second from `start_us`, intervals scaled by a random
    /// factor in `1 +- jitter`.
    pub fn new(start_us: u64, rate_per_s: f64, jitter: f64, seed: u64) -> Self {
        Self {
            next_us: start_us,
            interval_us: 1e6 / rate_per_s,
            planned_us: 1e6 / rate_per_s,
            jitter,
            rng: ChaCha8Rng::seed_from_u64(seed),
            skipped: 0,
            late: 0,
        }
    }

    /// The next intended send time.
    pub fn next_us(&self) -> u64 {
        self.next_us
    }

    fn advance(&mut self) {
        let factor = if self.jitter > 0.0 {
            self.rng.random_range(1.0 - self.jitter..=1.0 + self.jitter)
        } else {
            1.0
        };
        self.next_us += (self.interval_us * factor).max(1.0) as u64;
    }

    /// If a shake is due at `now_us`, its intended time (and the schedule moves on).
    pub fn due(&mut self, now_us: u64) -> Option<u64> {
        if now_us < self.next_us {
            return None;
        }
        let behind = now_us - self.next_us;
        if behind > self.interval_us as u64 * MAX_CATCH_UP {
            while self.next_us + (self.interval_us as u64) < now_us {
                self.advance();
                self.skipped += 1;
            }
        } else if behind > self.interval_us as u64 {
            self.late += 1;
        }
        let intended = self.next_us;
        self.advance();
        Some(intended)
    }

    /// The mean interval, microseconds.
    pub fn interval_us(&self) -> f64 {
        self.interval_us
    }

    /// Restarts the schedule at `at_us` (a round opened).
    pub fn restart(&mut self, at_us: u64) {
        self.next_us = at_us;
    }

    /// The edge asks for at least `min_interval_ms` between shakes (`Welcome`, `Pace`,
    /// `RoundNotice`): the interval becomes the planned one or that, whichever is longer; a
    /// shake already planned sooner than the new interval allows after `last_us` moves back.
    pub fn pace(&mut self, min_interval_ms: u32, last_us: u64) {
        self.interval_us = self.planned_us.max(f64::from(min_interval_ms) * 1000.0);
        self.next_us = self.next_us.max(last_us + self.interval_us as u64);
    }

    /// The next shake no sooner than `at_us`, and the plan's intervals from there: the phone's
    /// session refused a shake as too soon and said when one is allowed (the interval in force
    /// and its jitter, or the phone's place in a start spread), and the user shakes as soon as
    /// it is. (Skipping to the plan's next tick instead would keep every phone's period a whole
    /// number of planned intervals: phones paced in one burst would stay in step for ever.)
    pub fn not_before(&mut self, at_us: u64) {
        self.next_us = self.next_us.max(at_us);
    }

    /// Sends nothing before `at_us` (a `SlowDown` verdict); the shakes meanwhile are skipped,
    /// not sent late.
    pub fn hold_until(&mut self, at_us: u64) {
        while self.next_us < at_us {
            self.advance();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_shake_moves_the_next_to_when_one_is_allowed_and_the_plan_goes_on_from_there() {
        let mut s = Schedule::new(0, 10.0, 0.0, 1);
        assert_eq!(s.due(0), Some(0));
        s.not_before(137_000);
        assert_eq!(s.due(136_999), None);
        assert_eq!(
            s.due(137_000),
            Some(137_000),
            "at the allowed time, not the next tick (200 ms)"
        );
        assert_eq!(s.next_us(), 237_000);
        s.not_before(1_000);
        assert_eq!(s.next_us(), 237_000, "never sooner than planned");
    }

    #[test]
    fn the_edges_pace_lengthens_the_interval_and_a_slow_down_holds_shakes_back() {
        let mut s = Schedule::new(0, 10.0, 0.0, 1);
        assert_eq!(s.due(0), Some(0));
        s.pace(1_000, 0);
        assert_eq!(s.next_us(), 1_000_000, "the next shake moves back to the paced interval");
        assert_eq!(s.due(1_000_000), Some(1_000_000));
        assert_eq!(s.next_us(), 2_000_000);
        // A pace shorter than the plan: the plan's interval again.
        s.pace(10, 1_000_000);
        assert_eq!(s.interval_us(), 100_000.0);
        s.hold_until(2_500_000);
        assert_eq!(s.next_us(), 2_500_000);
        assert_eq!(s.skipped, 0, "held-back shakes are not counted as the sender falling behind");
    }

    #[test]
    fn without_jitter_shakes_are_evenly_spaced() {
        let mut s = Schedule::new(1_000, 10.0, 0.0, 1);
        assert_eq!(s.due(999), None);
        assert_eq!(s.due(1_000), Some(1_000));
        assert_eq!(s.due(50_000), None);
        assert_eq!(s.due(101_000), Some(101_000));
        assert_eq!(s.next_us(), 201_000);
    }

    #[test]
    fn a_late_sender_keeps_the_intended_times() {
        let mut s = Schedule::new(0, 10.0, 0.0, 1);
        // 250 ms late: three shakes were due; each comes out with its own intended time.
        assert_eq!(s.due(250_000), Some(0));
        assert_eq!(s.due(250_000), Some(100_000));
        assert_eq!(s.due(250_000), Some(200_000));
        assert_eq!(s.due(250_000), None);
        assert_eq!(s.late, 2);
        assert_eq!(s.skipped, 0);
    }

    #[test]
    fn a_long_stall_skips_the_backlog_and_counts_it() {
        let mut s = Schedule::new(0, 10.0, 0.0, 1);
        let first = s.due(10_000_000).unwrap();
        assert!(first >= 9_900_000, "sent {first}");
        assert!(s.skipped >= 98);
    }

    #[test]
    fn jitter_varies_intervals_but_keeps_the_rate() {
        let mut s = Schedule::new(0, 100.0, 0.5, 7);
        let mut sent = 0;
        let mut last = 0;
        let mut distinct = std::collections::HashSet::new();
        for now in (0..10_000_000).step_by(100) {
            if let Some(at) = s.due(now) {
                distinct.insert(at - last);
                last = at;
                sent += 1;
            }
        }
        assert!((950..=1050).contains(&sent), "sent {sent} in 10 s at 100/s");
        assert!(distinct.len() > 100);
        // Same seed, same schedule.
        let mut a = Schedule::new(0, 100.0, 0.5, 7);
        let mut b = Schedule::new(0, 100.0, 0.5, 7);
        for now in (0..1_000_000).step_by(1000) {
            assert_eq!(a.due(now), b.due(now));
        }
    }
}
