//! A token bucket, sans-IO: time is an argument, in microseconds from any fixed origin.
//!
//! Our own few lines rather than a crate: one lives in every connected phone's state (memory
//! per phone is a target), and the decision runs once per shake on the hot path. `governor`
//! and friends keep atomics and a clock inside; here the state is two numbers and the worker
//! that owns it is single-threaded, so no synchronisation is needed.

/// Tokens refill at `rate_per_s` up to `burst`; each admitted event takes one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    last_us: u64,
}

/// The refill rule of a bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens per second.
    pub per_s: f64,
    /// Most tokens held.
    pub burst: f64,
}

impl Rate {
    /// `per_s` tokens a second, at most `burst` held.
    pub fn new(per_s: f64, burst: f64) -> Self {
        Self { per_s: per_s.max(0.0), burst: burst.max(0.0) }
    }
}

impl TokenBucket {
    /// A full bucket at `now_us`.
    pub fn full(rate: Rate, now_us: u64) -> Self {
        Self { tokens: rate.burst, last_us: now_us }
    }

    /// A bucket holding `tokens` (at most the burst) at `now_us`.
    pub fn holding(rate: Rate, tokens: f64, now_us: u64) -> Self {
        Self { tokens: tokens.clamp(0.0, rate.burst), last_us: now_us }
    }

    /// Takes one token, or says how long until one is there (microseconds).
    #[inline]
    pub fn try_take(&mut self, rate: Rate, now_us: u64) -> Result<(), u64> {
        let elapsed = now_us.saturating_sub(self.last_us);
        self.last_us = self.last_us.max(now_us);
        self.tokens = (self.tokens + elapsed as f64 * rate.per_s / 1e6).min(rate.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if rate.per_s <= 0.0 {
            Err(u64::MAX)
        } else {
            Err(((1.0 - self.tokens) * 1e6 / rate.per_s).ceil() as u64)
        }
    }

    /// Whether the bucket has refilled to its burst by `now_us` (a fresh one would be the same).
    pub fn is_full(&self, rate: Rate, now_us: u64) -> bool {
        let elapsed = now_us.saturating_sub(self.last_us);
        self.tokens + elapsed as f64 * rate.per_s / 1e6 >= rate.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let rate = Rate::new(10.0, 20.0);
        let mut bucket = TokenBucket::full(rate, 0);
        for _ in 0..20 {
            assert!(bucket.try_take(rate, 0).is_ok());
        }
        assert_eq!(bucket.try_take(rate, 0), Err(100_000));
        // One token every 100 ms.
        assert_eq!(bucket.try_take(rate, 99_999), Err(1));
        assert!(bucket.try_take(rate, 100_000).is_ok());
        assert!(bucket.try_take(rate, 100_000).is_err());
        // A long pause refills only up to the burst.
        let mut taken = 0;
        while bucket.try_take(rate, 60_000_000).is_ok() {
            taken += 1;
        }
        assert_eq!(taken, 20);
    }

    #[test]
    fn zero_rate_never_refills_and_time_never_goes_back() {
        let rate = Rate::new(0.0, 1.0);
        let mut bucket = TokenBucket::full(rate, 1_000);
        assert!(bucket.try_take(rate, 1_000).is_ok());
        assert_eq!(bucket.try_take(rate, 9_000_000), Err(u64::MAX));
        let rate = Rate::new(1.0, 1.0);
        let mut bucket = TokenBucket::full(rate, 5_000_000);
        assert!(bucket.try_take(rate, 5_000_000).is_ok());
        // An earlier timestamp adds nothing.
        assert!(bucket.try_take(rate, 0).is_err());
    }

    #[test]
    fn full_again_once_the_burst_has_refilled() {
        let rate = Rate::new(10.0, 2.0);
        let mut bucket = TokenBucket::full(rate, 0);
        assert!(bucket.is_full(rate, 0));
        assert!(bucket.try_take(rate, 0).is_ok());
        assert!(!bucket.is_full(rate, 99_999));
        assert!(bucket.is_full(rate, 100_000));
    }
}
