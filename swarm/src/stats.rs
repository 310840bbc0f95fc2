//! What the swarm measures, shared by every phone task, and the report built from it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use shake_proto::Verdict;

/// Latency histograms, microseconds.
#[derive(Debug)]
pub struct Histograms {
    /// Shake (intended send time) to outcome: corrected for coordinated omission.
    pub outcome: Histogram<u64>,
    /// The same, honest phones only (the figure hostile phones must not spoil).
    pub honest_outcome: Histogram<u64>,
    /// Shake (actual send time) to outcome: uncorrected.
    pub outcome_raw: Histogram<u64>,
    /// Winning shake (intended) to award.
    pub award: Histogram<u64>,
    /// QUIC handshake to `Welcome`, first connection.
    pub handshake: Histogram<u64>,
    /// The same on a reconnect (churn or GoAway), where TLS resumes.
    pub reconnect_handshake: Histogram<u64>,
}

/// A latency histogram: 1 us to 1 hour, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    // invariant: 1 us to 1 hour at 3 significant figures is a valid configuration.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

impl Default for Histograms {
    fn default() -> Self {
        Self {
            outcome: histogram(),
            honest_outcome: histogram(),
            outcome_raw: histogram(),
            award: histogram(),
            handshake: histogram(),
            reconnect_handshake: histogram(),
        }
    }
}

/// One award a phone received, as it was told it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedAward {
    /// Ledger id.
    pub award_id: u64,
    /// The phone's user.
    pub user_id: u64,
    /// The round.
    pub round_id: u32,
    /// The cash it pays, cents (a gift: none).
    pub cents: Option<u64>,
    /// The gift's SKU (cash: none).
    pub sku: Option<String>,
}

impl ReceivedAward {
    /// Award `award_id` of `round_id`, paying `prize`, told to `user_id`'s phone.
    pub fn new(award_id: u64, user_id: u64, round_id: u32, prize: &shake_proto::Prize) -> Self {
        let (cents, sku) = match prize {
            shake_proto::Prize::Cash { cents } => (Some(*cents), None),
            shake_proto::Prize::Gift { sku } => (None, Some(sku.clone())),
        };
        Self { award_id, user_id, round_id, cents, sku }
    }
}

/// Counters and histograms, updated by phone tasks.
#[derive(Debug, Default)]
pub struct Stats {
    /// Shakes sent.
    pub sent: AtomicU64,
    /// Outcomes by verdict: no-luck, slow-down, round-closed, forwarded.
    pub verdicts: [AtomicU64; 4],
    /// Phones with a session (after `Welcome`).
    pub connected: AtomicU64,
    /// Sessions started, all together (reconnects included).
    pub sessions: AtomicU64,
    /// Intended sends made late or skipped after a stall.
    pub behind_schedule: AtomicU64,
    /// Shakes the phone's session held back (too soon after the last by the edge's pace, or
    /// within a slow-down: sends made late by the generator can land closer than planned).
    pub held_back: AtomicU64,
    /// Planned disconnections of churning phones.
    pub churned: AtomicU64,
    /// Hostile phones closed by the edge with a documented code, by code.
    pub closed_by_edge: Mutex<BTreeMap<String, u64>>,
    /// Hostile actions that did not end in a close, and what became of them, by kind.
    pub limited: Mutex<BTreeMap<String, u64>>,
    /// Errors by class.
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Latencies.
    pub histograms: Mutex<Histograms>,
    /// Outcome latencies of the current second (for the time series).
    pub interval: Mutex<Option<Histogram<u64>>>,
    /// Awards received (each once: see [`Stats::award_received`]).
    pub awards: Mutex<Vec<ReceivedAward>>,
    /// Forwarded shakes by user, for the users registered (honest and cheating), and whether
    /// each cheats.
    pub users: Mutex<HashMap<u64, UserTally>>,
}

/// One user's forwarded shakes.
#[derive(Debug, Clone, Copy, Default)]
pub struct UserTally {
    /// A multi-connection cheater.
    pub cheater: bool,
    /// Shakes the edge answered `forwarded`, over all the user's connections.
    pub forwarded: u64,
}

/// Index of a verdict in [`Stats::verdicts`].
pub fn verdict_index(verdict: Verdict) -> usize {
    match verdict {
        Verdict::NoLuck => 0,
        Verdict::SlowDown { .. } => 1,
        Verdict::RoundClosed => 2,
        Verdict::Forwarded => 3,
    }
}

/// Verdict names, in [`Stats::verdicts`] order.
pub const VERDICT_NAMES: [&str; 4] = ["no_luck", "slow_down", "round_closed", "forwarded"];

impl Stats {
    /// A phone was told of an award. An edge may tell a phone of an award again (an award
    /// owed from an earlier session, crossing the batch's answer), and a phone app keeps one
    /// per award id: so does the report. True the first time.
    pub fn award_received(&self, award: ReceivedAward) -> bool {
        let mut awards = self.awards.lock().expect("stats lock");
        if awards.iter().rev().any(|a| a.award_id == award.award_id && a.user_id == award.user_id) {
            return false;
        }
        awards.push(award);
        true
    }

    /// Counts one error of class `class`.
    pub fn error(&self, class: impl Into<String>) {
        *self.errors.lock().expect("stats lock").entry(class.into()).or_default() += 1;
    }

    /// Counts one hostile action of kind `kind`.
    pub fn limited(&self, kind: &str) {
        *self.limited.lock().expect("stats lock").entry(kind.to_owned()).or_default() += 1;
    }

    /// Counts one session the edge closed, by the error code's name.
    pub fn closed_by_edge(&self, code: &str) {
        *self.closed_by_edge.lock().expect("stats lock").entry(code.to_owned()).or_default() += 1;
    }

    /// Records an outcome: latency from the intended and the actual send time.
    pub fn outcome(&self, verdict: Verdict, corrected: Duration, raw: Duration, honest: bool) {
        self.verdicts[verdict_index(verdict)].fetch_add(1, Ordering::Relaxed);
        let corrected = corrected.as_micros().max(1) as u64;
        let mut h = self.histograms.lock().expect("stats lock");
        h.outcome.saturating_record(corrected);
        if honest {
            h.honest_outcome.saturating_record(corrected);
        }
        h.outcome_raw.saturating_record(raw.as_micros().max(1) as u64);
        drop(h);
        self.interval
            .lock()
            .expect("stats lock")
            .get_or_insert_with(histogram)
            .saturating_record(corrected);
    }

    /// Tallies `user_id`'s forwarded shakes from now on.
    pub fn register_user(&self, user_id: u64, cheater: bool) {
        self.users.lock().expect("stats lock").entry(user_id).or_default().cheater = cheater;
    }

    /// One more forwarded shake of `user_id` (if registered).
    pub fn forwarded_for(&self, user_id: u64) {
        if let Some(tally) = self.users.lock().expect("stats lock").get_mut(&user_id) {
            tally.forwarded += 1;
        }
    }

    /// Outcomes received so far.
    pub fn outcomes(&self) -> u64 {
        self.verdicts.iter().map(|v| v.load(Ordering::Relaxed)).sum()
    }

    /// The current second's p99 (ms), resetting the interval.
    pub fn take_interval_p99_ms(&self) -> f64 {
        self.interval
            .lock()
            .expect("stats lock")
            .take()
            .map_or(0.0, |h| h.value_at_quantile(0.99) as f64 / 1000.0)
    }
}

/// Percentiles of a histogram, milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
    /// 99.99th.
    pub p9999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            p9999: ms(0.9999),
            max: h.max() as f64 / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_milliseconds() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() < 2.0, "{p:?}");
        assert!((p.max - 1000.0).abs() < 1.0, "{p:?}");
        assert_eq!(Percentiles::of(&histogram()), Percentiles::default());
    }

    #[test]
    fn outcomes_count_by_verdict_and_fill_the_interval() {
        let stats = Stats::default();
        stats.outcome(Verdict::NoLuck, Duration::from_millis(2), Duration::from_millis(1), true);
        stats.outcome(
            Verdict::Forwarded,
            Duration::from_millis(4),
            Duration::from_millis(3),
            false,
        );
        assert_eq!(stats.outcomes(), 2);
        assert_eq!(stats.histograms.lock().unwrap().honest_outcome.len(), 1, "honest only");
        assert_eq!(stats.verdicts[3].load(Ordering::Relaxed), 1);
        assert!(stats.take_interval_p99_ms() >= 3.9);
        assert_eq!(stats.take_interval_p99_ms(), 0.0);
    }
}
