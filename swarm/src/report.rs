//! The swarm's report: a readable summary table, the full JSON (`--json FILE`), one JSON line at
//! the end, and the per-second time series.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::fairness::Fairness;
use super::stats::{Percentiles, ReceivedAward, Stats, VERDICT_NAMES};

/// One second of the run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimePoint {
    /// Seconds since the start.
    pub t_s: f64,
    /// Phones connected.
    pub connected: u64,
    /// Shakes sent so far.
    pub sent: u64,
    /// Outcomes received so far.
    pub outcomes: u64,
    /// Awards received so far.
    pub awards: u64,
    /// p99 shake-to-outcome in this second, ms (corrected).
    pub p99_outcome_ms: f64,
}

/// Takes a time point now.
pub fn time_point(stats: &Stats, origin: Instant) -> TimePoint {
    TimePoint {
        t_s: origin.elapsed().as_secs_f64(),
        connected: stats.connected.load(Ordering::Relaxed),
        sent: stats.sent.load(Ordering::Relaxed),
        outcomes: stats.outcomes(),
        awards: stats.awards.lock().expect("stats lock").len() as u64,
        p99_outcome_ms: stats.take_interval_p99_ms(),
    }
}

/// Latencies, ms.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Latencies {
    /// Shake to outcome, from the intended send time (coordinated omission corrected).
    pub outcome: Percentiles,
    /// The same, honest phones only.
    #[serde(default)]
    pub honest_outcome: Percentiles,
    /// Shake to outcome, from the actual send time.
    pub outcome_uncorrected: Percentiles,
    /// Winning shake to award.
    pub award: Percentiles,
    /// Connect to `Welcome`, first connection.
    pub handshake: Percentiles,
    /// Connect to `Welcome` on a reconnect (TLS resumption).
    pub reconnect_handshake: Percentiles,
}

/// Everything a run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Phones simulated.
    pub phones: u64,
    /// Of which honest.
    pub honest_phones: u64,
    /// Run length, seconds.
    pub duration_s: f64,
    /// Sessions (reconnects included).
    pub sessions: u64,
    /// Planned disconnections of churning phones.
    pub churned: u64,
    /// Shakes sent.
    pub shakes: u64,
    /// Outcomes received.
    pub outcomes: u64,
    /// Outcomes by verdict.
    pub verdicts: BTreeMap<String, u64>,
    /// Shakes sent per second, averaged over the run.
    pub offered_per_s: f64,
    /// Outcomes received per second.
    pub achieved_per_s: f64,
    /// Intended sends that went out late or were skipped after a stall.
    pub behind_schedule: u64,
    /// Shakes the phones' sessions held back, to keep the edge's pace.
    #[serde(default)]
    pub held_back: u64,
    /// Latencies.
    pub latency_ms: Latencies,
    /// Errors by class.
    pub errors: BTreeMap<String, u64>,
    /// Hostile sessions the edge refused, by error code.
    pub closed_by_edge: BTreeMap<String, u64>,
    /// Hostile actions that did not end in a close, and what became of them, by kind.
    #[serde(default)]
    pub limited: BTreeMap<String, u64>,
    /// Awards received.
    pub awards_received: u64,
    /// Multi-connection cheaters against honest users (none without cheaters).
    #[serde(default)]
    pub fairness: Option<Fairness>,
    /// Peak resident memory of the swarm, KiB.
    pub peak_rss_kib: Option<u64>,
    /// Swarm memory per phone, KiB.
    pub kib_per_phone: Option<f64>,
    /// Every award received (for verification against the ledger).
    pub awards: Vec<ReceivedAward>,
    /// Per-second time series.
    pub series: Vec<TimePoint>,
    /// Stopped by SIGINT or SIGTERM before its duration: the figures cover the time it ran,
    /// and phones stopped mid-shake never heard their outcome.
    #[serde(default)]
    pub interrupted: bool,
}

impl Report {
    /// Builds the report at the end of a run.
    pub fn build(
        stats: &Stats,
        (phones, honest): (usize, usize),
        elapsed: Duration,
        series: Vec<TimePoint>,
        peak_rss_kib: Option<u64>,
    ) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let h = stats.histograms.lock().expect("stats lock");
        let awards = stats.awards.lock().expect("stats lock").clone();
        let shakes = stats.sent.load(Ordering::Relaxed);
        let outcomes = stats.outcomes();
        Self {
            phones: phones as u64,
            honest_phones: honest as u64,
            duration_s: secs,
            sessions: stats.sessions.load(Ordering::Relaxed),
            churned: stats.churned.load(Ordering::Relaxed),
            shakes,
            outcomes,
            verdicts: VERDICT_NAMES
                .iter()
                .zip(&stats.verdicts)
                .map(|(name, n)| (name.to_string(), n.load(Ordering::Relaxed)))
                .collect(),
            offered_per_s: shakes as f64 / secs,
            achieved_per_s: outcomes as f64 / secs,
            behind_schedule: stats.behind_schedule.load(Ordering::Relaxed),
            held_back: stats.held_back.load(Ordering::Relaxed),
            latency_ms: Latencies {
                outcome: Percentiles::of(&h.outcome),
                honest_outcome: Percentiles::of(&h.honest_outcome),
                outcome_uncorrected: Percentiles::of(&h.outcome_raw),
                award: Percentiles::of(&h.award),
                handshake: Percentiles::of(&h.handshake),
                reconnect_handshake: Percentiles::of(&h.reconnect_handshake),
            },
            errors: stats.errors.lock().expect("stats lock").clone(),
            closed_by_edge: stats.closed_by_edge.lock().expect("stats lock").clone(),
            limited: stats.limited.lock().expect("stats lock").clone(),
            awards_received: awards.len() as u64,
            fairness: Fairness::measure(&stats.users.lock().expect("stats lock"), &awards),
            peak_rss_kib,
            kib_per_phone: peak_rss_kib.map(|kib| kib as f64 / phones.max(1) as f64),
            awards,
            series,
            interrupted: false,
        }
    }

    /// The readable summary.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "shake-swarm: {} phones ({} honest), {:.1} s{}",
            self.phones,
            self.honest_phones,
            self.duration_s,
            if self.interrupted { " (INTERRUPTED: the figures cover the time it ran)" } else { "" }
        );
        let _ = writeln!(out, "{}", "-".repeat(60));
        let _ =
            writeln!(out, "{:<32}{:>14}  ({} churned)", "sessions", self.sessions, self.churned);
        let _ = writeln!(
            out,
            "{:<32}{:>14}  ({:.0}/s)",
            "shakes sent", self.shakes, self.offered_per_s
        );
        let _ = writeln!(
            out,
            "{:<32}{:>14}  ({:.0}/s)",
            "outcomes received", self.outcomes, self.achieved_per_s
        );
        for (verdict, n) in &self.verdicts {
            let share =
                if self.outcomes > 0 { *n as f64 * 100.0 / self.outcomes as f64 } else { 0.0 };
            let _ = writeln!(out, "  {:<30}{:>14}  ({share:.1}%)", verdict, n);
        }
        let _ = writeln!(out, "{:<32}{:>14}", "awards received", self.awards_received);
        let _ = writeln!(out, "{:<32}{:>14}", "sends behind schedule", self.behind_schedule);
        let _ = writeln!(out, "{:<32}{:>14}", "shakes held back (pace)", self.held_back);
        let _ = writeln!(
            out,
            "latency (ms)        {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "p50", "p90", "p99", "p99.9", "p99.99", "max"
        );
        for (name, p) in [
            ("shake->outcome", &self.latency_ms.outcome),
            ("  honest phones", &self.latency_ms.honest_outcome),
            ("  uncorrected", &self.latency_ms.outcome_uncorrected),
            ("shake->award", &self.latency_ms.award),
            ("handshake", &self.latency_ms.handshake),
            ("  on reconnect", &self.latency_ms.reconnect_handshake),
        ] {
            let _ = writeln!(
                out,
                "{name:<20}{:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                p.p50, p.p90, p.p99, p.p999, p.p9999, p.max
            );
        }
        if let (Some(rss), Some(per)) = (self.peak_rss_kib, self.kib_per_phone) {
            let _ = writeln!(
                out,
                "{:<32}{:>11} KiB  ({per:.1} KiB per phone)",
                "swarm peak memory", rss
            );
        }
        if let Some(f) = &self.fairness {
            let _ = writeln!(
                out,
                "fairness: {} cheating users vs {} honest: forwarded per user (median) {:.0} vs {:.0}, \
                 cheater_forwarded_ratio {:.2}; wins {} vs {:.2} per honest user (ratio {:.2}, at most {:.1} allowed)",
                f.cheating_users,
                f.honest_users,
                f.cheater_forwarded_median,
                f.honest_forwarded_median,
                f.cheater_forwarded_ratio,
                f.cheater_wins,
                f.honest_wins_per_user,
                f.cheater_wins_ratio,
                f.cheater_wins_allowed,
            );
        }
        for (code, n) in &self.closed_by_edge {
            let _ = writeln!(out, "closed by the edge: {code:<14}{n:>12}");
        }
        for (kind, n) in &self.limited {
            let _ = writeln!(out, "hostile: {kind:<35}{n:>12}");
        }
        for (class, n) in &self.errors {
            let _ = writeln!(out, "error: {class:<40}{n:>8}");
        }
        out
    }

    /// The one-line JSON summary (no award list, no series).
    pub fn json_line(&self) -> serde_json::Value {
        serde_json::json!({
            "phones": self.phones,
            "shakes": self.shakes,
            "outcomes": self.outcomes,
            "verdicts": self.verdicts,
            "awards_received": self.awards_received,
            "p50_outcome_ms": self.latency_ms.outcome.p50,
            "p99_outcome_ms": self.latency_ms.outcome.p99,
            "p99_honest_outcome_ms": self.latency_ms.honest_outcome.p99,
            "p99_award_ms": self.latency_ms.award.p99,
            "p99_handshake_ms": self.latency_ms.handshake.p99,
            "errors": self.errors.values().sum::<u64>(),
            "kib_per_phone": self.kib_per_phone,
            "cheater_forwarded_ratio": self.fairness.as_ref().map(|f| f.cheater_forwarded_ratio),
            "cheater_wins_ratio": self.fairness.as_ref().map(|f| f.cheater_wins_ratio),
            "fair": self.fairness.as_ref().map(Fairness::holds),
            "interrupted": self.interrupted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_and_json_line_carry_the_figures() {
        let mut report = Report {
            phones: 10,
            honest_phones: 9,
            shakes: 100,
            outcomes: 90,
            duration_s: 2.0,
            ..Report::default()
        };
        report.verdicts.insert("no_luck".into(), 90);
        report.latency_ms.outcome.p99 = 3.5;
        report.latency_ms.honest_outcome.p99 = 2.5;
        let text = report.summary();
        assert!(text.contains("10 phones (9 honest)"));
        assert!(text.contains("(100.0%)"));
        let line = report.json_line();
        assert_eq!(line["p99_outcome_ms"], 3.5);
        assert_eq!(line["p99_honest_outcome_ms"], 2.5);
        assert_eq!(line["shakes"], 100);
        let back: Report = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(back, report);
    }
}
