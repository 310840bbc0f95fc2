//! What happens to each datagram that crosses the relay: dropped by random loss, dropped
//! inside a cut window, or forwarded after the configured delay. Sans-IO: time since the
//! relay started is an argument, and the loss draws come from a seeded generator, so a plan
//! replays exactly.

use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

/// A window during which every datagram is dropped, both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// When it starts, counted from the relay's start.
    pub from: Duration,
    /// How long it lasts.
    pub length: Duration,
}

impl Cut {
    fn covers(&self, since_start: Duration) -> bool {
        since_start >= self.from && since_start < self.from.saturating_add(self.length)
    }
}

/// A cut written as `FROM+LENGTH` in seconds, e.g. `5+4` or `2.5+0.5`.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("a cut is FROM+LENGTH in seconds (e.g. 5+4), not {0:?}")]
pub struct BadCut(String);

impl FromStr for Cut {
    type Err = BadCut;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadCut(text.to_owned());
        let (from, length) = text.split_once('+').ok_or_else(bad)?;
        let seconds = |s: &str| {
            s.trim()
                .parse::<f64>()
                .ok()
                .and_then(|v| Duration::try_from_secs_f64(v).ok())
                .ok_or_else(bad)
        };
        Ok(Self { from: seconds(from)?, length: seconds(length)? })
    }
}

/// The faults the relay applies, the same in both directions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    /// Probability that a datagram is dropped, 0 to 1.
    pub loss: f64,
    /// Extra one-way delay added to every datagram that is forwarded.
    pub delay: Duration,
    /// Windows that drop everything.
    pub cuts: Vec<Cut>,
    /// Seed of the loss draws.
    pub seed: u64,
}

/// What becomes of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Send it when this much time has passed since the relay started.
    Forward {
        /// Due time.
        at: Duration,
    },
    /// Dropped by random loss.
    Lost,
    /// Dropped inside a cut window.
    Cut,
}

/// Counters of fates, for the relay's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FateCounts {
    /// Forwarded.
    pub forwarded: u64,
    /// Dropped by random loss.
    pub lost: u64,
    /// Dropped in a cut.
    pub cut: u64,
}

/// The plan plus its generator and counters.
#[derive(Debug)]
pub struct Faults {
    plan: FaultPlan,
    state: u64,
    counts: FateCounts,
}

impl Faults {
    /// Starts applying a plan.
    pub fn new(plan: FaultPlan) -> Self {
        let state = plan.seed ^ 0x9e37_79b9_7f4a_7c15;
        Self { plan, state, counts: FateCounts::default() }
    }

    /// Decides the fate of a datagram that arrived `since_start` after the relay started.
    pub fn decide(&mut self, since_start: Duration) -> Fate {
        let fate = if self.plan.cuts.iter().any(|c| c.covers(since_start)) {
            Fate::Cut
        } else if self.plan.loss > 0.0 && self.next_unit() < self.plan.loss {
            Fate::Lost
        } else {
            Fate::Forward { at: since_start + self.plan.delay }
        };
        match fate {
            Fate::Forward { .. } => self.counts.forwarded += 1,
            Fate::Lost => self.counts.lost += 1,
            Fate::Cut => self.counts.cut += 1,
        }
        fate
    }

    /// What has been decided so far.
    pub fn counts(&self) -> FateCounts {
        self.counts
    }

    /// A uniform draw in [0, 1) (splitmix64).
    fn next_unit(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn cuts_parse_and_bad_ones_are_refused() {
        assert_eq!("5+4".parse(), Ok(Cut { from: MS(5_000), length: MS(4_000) }));
        assert_eq!("2.5+0.5".parse(), Ok(Cut { from: MS(2_500), length: MS(500) }));
        for bad in ["5", "5-4", "+4", "a+1", "-1+2", "1+inf"] {
            assert!(bad.parse::<Cut>().is_err(), "{bad}");
        }
        // Past what a duration holds: refused, not a panic; at the edge of it, a cut that
        // never ends rather than an overflow at the first datagram.
        for huge in ["1e20+1", "1+1e20"] {
            assert!(huge.parse::<Cut>().is_err(), "{huge}");
        }
        let endless: Cut = "1e19+1e19".parse().unwrap();
        assert!(endless.covers(Duration::from_secs(10_000_000_000_000_000_001)));
        assert!(!endless.covers(Duration::ZERO));
    }

    #[test]
    fn a_clean_plan_forwards_everything_after_the_delay() {
        let mut faults = Faults::new(FaultPlan { delay: MS(50), ..FaultPlan::default() });
        for t in 0..1_000 {
            assert_eq!(faults.decide(MS(t)), Fate::Forward { at: MS(t + 50) });
        }
        assert_eq!(faults.counts(), FateCounts { forwarded: 1_000, lost: 0, cut: 0 });
    }

    #[test]
    fn a_cut_drops_everything_inside_its_window_only() {
        let cut = Cut { from: MS(1_000), length: MS(500) };
        let mut faults = Faults::new(FaultPlan { cuts: vec![cut], ..FaultPlan::default() });
        assert!(matches!(faults.decide(MS(999)), Fate::Forward { .. }));
        assert_eq!(faults.decide(MS(1_000)), Fate::Cut);
        assert_eq!(faults.decide(MS(1_499)), Fate::Cut);
        assert!(matches!(faults.decide(MS(1_500)), Fate::Forward { .. }));
        assert_eq!(faults.counts().cut, 2);
    }

    #[test]
    fn loss_drops_about_its_share_and_replays_with_the_same_seed() {
        let plan = FaultPlan { loss: 0.05, seed: 7, ..FaultPlan::default() };
        let fates = |plan: &FaultPlan| {
            let mut faults = Faults::new(plan.clone());
            (0..100_000).map(|t| faults.decide(MS(t))).collect::<Vec<_>>()
        };
        let first = fates(&plan);
        let lost = first.iter().filter(|f| **f == Fate::Lost).count();
        assert!((4_500..5_500).contains(&lost), "{lost} lost of 100,000 at 5%");
        assert_eq!(first, fates(&plan), "same seed, same fates");
        let other = fates(&FaultPlan { seed: 8, ..plan });
        assert_ne!(first, other, "another seed, other fates");
    }
}
