//! Arithmetic for measurements: the median of several runs, rates, CPU per message and what
//! one busy core would do at that cost.
//!
//! Benchmarks on a shared, noisy machine quote the median of repeated runs, never one run.

use std::time::Duration;

/// The median of `samples` (the mean of the two middle values for an even count).
/// `None` for no samples.
pub fn median(samples: &[f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    })
}

/// Items per second for `items` done in `elapsed`; zero when no time passed.
pub fn per_second(items: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs == 0.0 { 0.0 } else { items as f64 / secs }
}

/// `total / count`, zero when nothing was counted.
pub fn per(total: f64, count: u64) -> f64 {
    if count == 0 { 0.0 } else { total / count as f64 }
}

/// Messages per second one fully busy core handles at `cpu_us` CPU microseconds per message;
/// zero when nothing was measured.
pub fn rate_per_busy_core(cpu_us: f64) -> f64 {
    if cpu_us > 0.0 { 1e6 / cpu_us } else { 0.0 }
}

/// `a / b`, zero when `b` is zero.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn rates() {
        assert_eq!(per_second(1_000, Duration::from_millis(500)), 2_000.0);
        assert_eq!(per_second(1_000, Duration::ZERO), 0.0);
    }

    #[test]
    fn per_message_rates_and_ratios_guard_against_zero() {
        assert_eq!(per(10.0, 4), 2.5);
        assert_eq!(per(10.0, 0), 0.0);
        assert_eq!(rate_per_busy_core(4.0), 250_000.0);
        assert_eq!(rate_per_busy_core(0.0), 0.0);
        assert_eq!(ratio(3.0, 2.0), 1.5);
        assert_eq!(ratio(1.0, 0.0), 0.0);
    }
}
