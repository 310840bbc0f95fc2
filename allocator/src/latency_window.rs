//! The shake-to-award latencies of the last few seconds, for the control room's dashboard: a
//! bounded ring of samples (when, how long), summarised as percentiles on demand.

use std::collections::VecDeque;

/// Samples kept; older ones are dropped first.
pub const MAX_SAMPLES: usize = 4_096;

/// Recent latency samples, oldest first.
#[derive(Debug, Default, Clone)]
pub struct LatencyWindow {
    samples: VecDeque<(u64, u64)>,
}

impl LatencyWindow {
    /// A sample: at `at_ms`, this latency in milliseconds.
    pub fn record(&mut self, at_ms: u64, latency_ms: u64) {
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((at_ms, latency_ms));
    }

    /// The median and 99th percentile of the samples taken in the `over_ms` before `now_ms`,
    /// milliseconds; none without a sample.
    pub fn percentiles(&self, now_ms: u64, over_ms: u64) -> Option<(u64, u64)> {
        let since = now_ms.saturating_sub(over_ms);
        let mut recent: Vec<u64> =
            self.samples.iter().filter(|(at, _)| *at >= since).map(|(_, ms)| *ms).collect();
        if recent.is_empty() {
            return None;
        }
        recent.sort_unstable();
        let at = |q: f64| recent[((recent.len() - 1) as f64 * q).round() as usize];
        Some((at(0.5), at(0.99)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_cover_the_recent_samples_only_and_the_ring_is_bounded() {
        let mut window = LatencyWindow::default();
        assert_eq!(window.percentiles(10_000, 5_000), None);
        window.record(1_000, 900);
        for ms in 1..=100 {
            window.record(9_000, ms);
        }
        assert_eq!(window.percentiles(10_000, 5_000), Some((51, 99)));
        assert_eq!(window.percentiles(20_000, 5_000), None);
        for _ in 0..MAX_SAMPLES {
            window.record(9_500, 7);
        }
        assert_eq!(window.samples.len(), MAX_SAMPLES);
        assert_eq!(window.percentiles(10_000, 5_000), Some((7, 7)));
    }
}
