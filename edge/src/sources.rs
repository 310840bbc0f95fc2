//! Per-source handshake limits, sans-IO: how many handshakes one source address may have in
//! progress, and how fast it may start new ones. Time is an argument (`now_us`, monotonic).
//!
//! The rate limit is the defence against a connection flood from one host: every new
//! connection costs the edge a full TLS handshake (about 0.35 ms of CPU, docs/PERFORMANCE.md),
//! and a flood of them from fresh source ports takes that CPU from established phones. The
//! verdict is reached from the first Initial packet, before any cryptography, so a refused
//! attempt costs the edge a few microseconds.
//!
//! A source is an IPv4 address, or an IPv6 /64 (one host usually owns a whole /64, so keying
//! on the full address would let it rotate). IPv4-mapped IPv6 addresses count as IPv4.
//!
//! The table of sources is bounded: idle sources (nothing in progress, bucket full again) are
//! swept out, and while the table is full an unknown source must validate its address with a
//! Retry first and is then let through untracked. Spoofed sources cannot answer a Retry, so a
//! spoofed flood cannot fill the table and lock out everyone else.
//!
//! One limiter per worker, like admission: the configured rate is divided between workers,
//! and SO_REUSEPORT spreads one address's many source ports over all of them.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

use crate::bucket::{Rate, TokenBucket};

/// Limits that come from the configuration (this worker's share).
#[derive(Debug, Clone, Copy)]
pub struct SourceLimits {
    /// Attempts one source may have in progress (handshaking, or waiting for `Hello`).
    pub in_progress: u32,
    /// New handshakes one source may start.
    pub rate: Rate,
    /// Sources tracked at once.
    pub max_sources: usize,
}

impl SourceLimits {
    /// One worker's share of the edge's per-source limits (`workers` split the rate, the burst
    /// and the table; the in-progress cap is per worker as configured).
    pub fn for_worker(limits: &crate::config::Limits, workers: usize) -> Self {
        let share = workers.max(1) as f64;
        Self {
            in_progress: limits.handshakes_per_source,
            rate: Rate::new(
                limits.new_handshakes_per_source_per_s / share,
                (limits.new_handshakes_per_source_burst / share).max(1.0),
            ),
            max_sources: (limits.max_tracked_sources / workers.max(1)).max(1),
        }
    }
}

/// What to do with a new connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceVerdict {
    /// Go ahead; report the end with [`SourceLimiter::on_handshake_done`] if `tracked`.
    Admit {
        /// Whether the attempt is counted against its source.
        tracked: bool,
    },
    /// The source has too many handshakes in progress: drop the packet (the client resends).
    Busy,
    /// The source starts handshakes faster than its rate: refuse the connection.
    TooFast,
    /// The table is full: ask the client to validate its address (Retry) first.
    ValidateFirst,
}

/// The key of a source: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey(IpAddr);

impl SourceKey {
    /// The source an address belongs to.
    pub fn of(addr: IpAddr) -> Self {
        match addr.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Self(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => Self(v4),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Source {
    in_progress: u32,
    bucket: TokenBucket,
}

/// One worker's per-source state.
#[derive(Debug)]
pub struct SourceLimiter {
    limits: SourceLimits,
    sources: HashMap<SourceKey, Source>,
}

impl SourceLimiter {
    /// No sources known yet.
    pub fn new(limits: SourceLimits) -> Self {
        Self { limits, sources: HashMap::new() }
    }

    /// Decides a new connection attempt from `addr`; `validated` says whether the client has
    /// already proved its address (answered a Retry).
    pub fn on_attempt(&mut self, addr: IpAddr, validated: bool, now_us: u64) -> SourceVerdict {
        let key = SourceKey::of(addr);
        let limits = self.limits;
        let full = self.sources.len() >= limits.max_sources;
        let source = match self.sources.get_mut(&key) {
            Some(source) => source,
            None if full && validated => return SourceVerdict::Admit { tracked: false },
            None if full => return SourceVerdict::ValidateFirst,
            None => self.sources.entry(key).or_insert(Source {
                in_progress: 0,
                bucket: TokenBucket::full(limits.rate, now_us),
            }),
        };
        if source.in_progress >= limits.in_progress {
            return SourceVerdict::Busy;
        }
        if source.bucket.try_take(limits.rate, now_us).is_err() {
            return SourceVerdict::TooFast;
        }
        source.in_progress += 1;
        SourceVerdict::Admit { tracked: true }
    }

    /// A tracked handshake from `addr` has ended, whichever way.
    pub fn on_handshake_done(&mut self, addr: IpAddr) {
        if let Some(source) = self.sources.get_mut(&SourceKey::of(addr)) {
            source.in_progress = source.in_progress.saturating_sub(1);
        }
    }

    /// Forgets sources with nothing in progress whose bucket has refilled: they would start
    /// from the same state if they came back.
    pub fn sweep(&mut self, now_us: u64) {
        let rate = self.limits.rate;
        self.sources.retain(|_, s| s.in_progress > 0 || !s.bucket.is_full(rate, now_us));
    }

    /// Sources tracked now.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    /// Whether no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(in_progress: u32, per_s: f64, burst: f64, max_sources: usize) -> SourceLimits {
        SourceLimits { in_progress, rate: Rate::new(per_s, burst), max_sources }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const ADMIT: SourceVerdict = SourceVerdict::Admit { tracked: true };

    #[test]
    fn a_fast_source_is_refused_and_others_are_not() {
        let mut limiter = SourceLimiter::new(limits(100, 10.0, 5.0, 16));
        let flood = ip("127.66.0.1");
        for _ in 0..5 {
            assert_eq!(limiter.on_attempt(flood, false, 0), ADMIT);
            limiter.on_handshake_done(flood);
        }
        assert_eq!(limiter.on_attempt(flood, false, 0), SourceVerdict::TooFast);
        // Another address is untouched by the flood.
        assert_eq!(limiter.on_attempt(ip("127.1.0.1"), false, 0), ADMIT);
        // One token every 100 ms.
        assert_eq!(limiter.on_attempt(flood, false, 99_000), SourceVerdict::TooFast);
        assert_eq!(limiter.on_attempt(flood, false, 100_000), ADMIT);
        assert_eq!(limiter.on_attempt(flood, false, 100_000), SourceVerdict::TooFast);
    }

    #[test]
    fn in_progress_handshakes_are_capped_per_source() {
        let mut limiter = SourceLimiter::new(limits(2, 1000.0, 1000.0, 16));
        let a = ip("10.0.0.1");
        assert_eq!(limiter.on_attempt(a, false, 0), ADMIT);
        assert_eq!(limiter.on_attempt(a, false, 0), ADMIT);
        assert_eq!(limiter.on_attempt(a, false, 0), SourceVerdict::Busy);
        limiter.on_handshake_done(a);
        assert_eq!(limiter.on_attempt(a, false, 0), ADMIT);
    }

    #[test]
    fn ipv6_sources_are_keyed_by_their_64_prefix_and_mapped_ipv4_as_ipv4() {
        assert_eq!(SourceKey::of(ip("2001:db8:1:2::1")), SourceKey::of(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(SourceKey::of(ip("2001:db8:1:2::1")), SourceKey::of(ip("2001:db8:1:3::1")));
        assert_eq!(SourceKey::of(ip("::ffff:192.0.2.7")), SourceKey::of(ip("192.0.2.7")));
        let mut limiter = SourceLimiter::new(limits(100, 1.0, 1.0, 16));
        assert_eq!(limiter.on_attempt(ip("2001:db8::1"), false, 0), ADMIT);
        // A rotated address in the same /64 shares the bucket.
        assert_eq!(limiter.on_attempt(ip("2001:db8::2"), false, 0), SourceVerdict::TooFast);
    }

    #[test]
    fn a_full_table_asks_unknown_sources_to_validate_and_sweeping_frees_it() {
        let mut limiter = SourceLimiter::new(limits(100, 10.0, 1.0, 2));
        assert_eq!(limiter.on_attempt(ip("10.0.0.1"), false, 0), ADMIT);
        assert_eq!(limiter.on_attempt(ip("10.0.0.2"), false, 0), ADMIT);
        let third = ip("10.0.0.3");
        assert_eq!(limiter.on_attempt(third, false, 0), SourceVerdict::ValidateFirst);
        assert_eq!(limiter.on_attempt(third, true, 0), SourceVerdict::Admit { tracked: false });
        assert_eq!(limiter.len(), 2);
        // In progress: kept, however long.
        limiter.sweep(10_000_000);
        assert_eq!(limiter.len(), 2);
        limiter.on_handshake_done(ip("10.0.0.1"));
        limiter.on_handshake_done(ip("10.0.0.2"));
        // Done, but the buckets are not full again until 100 ms later.
        limiter.sweep(50_000);
        assert_eq!(limiter.len(), 2);
        limiter.sweep(10_000_000);
        assert!(limiter.is_empty());
        assert_eq!(limiter.on_attempt(third, false, 10_000_000), ADMIT);
    }

    #[test]
    fn the_table_never_grows_past_its_bound() {
        let mut limiter = SourceLimiter::new(limits(100, 10.0, 10.0, 64));
        for i in 0..10_000u32 {
            let addr = IpAddr::from(i.to_be_bytes());
            let _ = limiter.on_attempt(addr, i % 2 == 0, u64::from(i));
        }
        assert_eq!(limiter.len(), 64);
    }
}
