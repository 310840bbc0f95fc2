//! One user, one chance: each user's drawn entries are held to a per-user rate, whatever
//! number of connections, workers or edges they shake through. Sans-IO; time is an argument.
//!
//! Every entry of an open round passes [`UserRates::admit`] before the draw: a token bucket
//! per user, refilled at `per_s` up to `burst`, clocked by the entry's own admission time
//! (batch base time plus offset), so a batch resent late after a link cut is judged by when
//! its shakes happened, not when it arrived. An entry without a token is treated as no-luck
//! and counted. A user refused `limit_after_excess` times is *limited*: reported once to
//! every edge ([`UserRates::take_newly_limited`]), which then answers that user no-luck
//! without forwarding until the limit ends.
//!
//! Bounds: only users whose entries reach the allocator are tracked, at most
//! `max_tracked_users`. [`UserRates::sweep`] drops users whose bucket has refilled and whose
//! limit is over (they are indistinguishable from a new user). While the table is full a new
//! user passes untracked and is counted: the table cannot grow, and filling it takes that many
//! distinct valid tokens, which is the login service's to stop.
//!
//! Not restored after a restart: the table starts empty, which at worst lets each user one
//! burst through again.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Settings from the configuration (`[user_rate]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UserRateSettings {
    /// Entries per second one user may have drawn.
    pub per_s: f64,
    /// Bucket depth, entries.
    pub burst: f64,
    /// Most users tracked at once.
    pub max_tracked_users: usize,
    /// Refused entries after which the user is limited at the edges.
    pub limit_after_excess: u32,
    /// How long edges refuse a limited user, milliseconds.
    pub limit_for_ms: u64,
}

impl Default for UserRateSettings {
    fn default() -> Self {
        Self {
            per_s: 10.0,
            burst: 20.0,
            max_tracked_users: 262_144,
            limit_after_excess: 20,
            limit_for_ms: 60_000,
        }
    }
}

/// What the accounting counted since the last [`UserRates::take_counts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserRateCounts {
    /// Entries treated as no-luck because their user was over the rate.
    pub entries_over_rate: u64,
    /// Users newly limited at the edges.
    pub users_limited: u64,
    /// Entries of users not tracked because the table was full (admitted).
    pub entries_untracked: u64,
}

#[derive(Debug, Clone, Copy)]
struct UserBucket {
    tokens: f64,
    last_ms: u64,
    excess: u32,
    limited_until_ms: u64,
}

/// User ids are already well spread (login-service ids, or hashes of them); a multiply-shift
/// finish is enough and far cheaper than SipHash on the allocator's per-entry path.
#[derive(Default)]
struct UserIdHasher(u64);

impl Hasher for UserIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = crate::draw::mix(n);
    }
}

type UserMap = HashMap<u64, UserBucket, BuildHasherDefault<UserIdHasher>>;

/// The per-user accounting.
#[derive(Debug)]
pub struct UserRates {
    settings: UserRateSettings,
    users: UserMap,
    newly_limited: Vec<u64>,
    counts: UserRateCounts,
}

impl UserRates {
    /// Nobody tracked yet.
    pub fn new(settings: UserRateSettings) -> Self {
        Self {
            settings,
            users: UserMap::default(),
            newly_limited: Vec::new(),
            counts: UserRateCounts::default(),
        }
    }

    /// Accounting that admits every entry: for tests and tools whose subject is not the
    /// per-user rate (the allocator itself always runs with [`UserRates::new`]).
    pub fn off() -> Self {
        Self::new(UserRateSettings { max_tracked_users: 0, ..UserRateSettings::default() })
    }

    /// May `user_id`'s entry admitted at `at_ms` (Unix) be drawn? False: it is no-luck.
    #[inline]
    pub fn admit(&mut self, user_id: u64, at_ms: u64) -> bool {
        let s = &self.settings;
        if s.max_tracked_users == 0 {
            return true;
        }
        let len = self.users.len();
        let bucket = match self.users.get_mut(&user_id) {
            Some(bucket) => bucket,
            None if len >= s.max_tracked_users => {
                self.counts.entries_untracked += 1;
                return true;
            }
            None => {
                let fresh =
                    UserBucket { tokens: s.burst, last_ms: at_ms, excess: 0, limited_until_ms: 0 };
                self.users.entry(user_id).or_insert(fresh)
            }
        };
        // Entries from several edges arrive out of time order: time never runs backwards
        // for a bucket (an earlier entry refills nothing).
        if at_ms > bucket.last_ms {
            let refill = (at_ms - bucket.last_ms) as f64 * s.per_s / 1000.0;
            bucket.tokens = (bucket.tokens + refill).min(s.burst);
            bucket.last_ms = at_ms;
        }
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return true;
        }
        self.counts.entries_over_rate += 1;
        bucket.excess = bucket.excess.saturating_add(1);
        if bucket.excess >= s.limit_after_excess && bucket.limited_until_ms <= at_ms {
            bucket.limited_until_ms = at_ms + s.limit_for_ms;
            bucket.excess = 0;
            self.counts.users_limited += 1;
            self.newly_limited.push(user_id);
        }
        false
    }

    /// Forgets users whose bucket is full again at `now_ms` and whose limit is over.
    pub fn sweep(&mut self, now_ms: u64) {
        let s = self.settings;
        let refill_ms = if s.per_s > 0.0 { (s.burst / s.per_s * 1000.0).ceil() as u64 } else { 0 };
        self.users.retain(|_, b| {
            let full_at = b.last_ms.saturating_add(refill_ms);
            now_ms < full_at.max(b.limited_until_ms)
        });
    }

    /// Users limited since the last call (to tell every edge), and until when.
    pub fn take_newly_limited(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.newly_limited)
    }

    /// Every user limited at `now_ms` (for an edge worker that just connected).
    pub fn limited_at(&self, now_ms: u64) -> Vec<u64> {
        self.users.iter().filter(|(_, b)| b.limited_until_ms > now_ms).map(|(id, _)| *id).collect()
    }

    /// How long a limit lasts, milliseconds.
    pub fn limit_for_ms(&self) -> u64 {
        self.settings.limit_for_ms
    }

    /// Users tracked now.
    pub fn tracked(&self) -> usize {
        self.users.len()
    }

    /// What was counted since the last call.
    pub fn take_counts(&mut self) -> UserRateCounts {
        std::mem::take(&mut self.counts)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn settings() -> UserRateSettings {
        UserRateSettings {
            per_s: 10.0,
            burst: 5.0,
            max_tracked_users: 100,
            limit_after_excess: 3,
            limit_for_ms: 10_000,
        }
    }

    #[test]
    fn a_burst_then_the_rate() {
        let mut rates = UserRates::new(settings());
        let admitted = (0..20).filter(|_| rates.admit(7, 1_000)).count();
        assert_eq!(admitted, 5, "the burst, then nothing at the same instant");
        // 100 ms later one more token.
        assert!(rates.admit(7, 1_100));
        assert!(!rates.admit(7, 1_100));
        assert_eq!(rates.take_counts().entries_over_rate, 16);
    }

    #[test]
    fn repeat_offenders_are_limited_once_per_limit() {
        let mut rates = UserRates::new(settings());
        for _ in 0..5 {
            rates.admit(7, 1_000);
        }
        for _ in 0..10 {
            assert!(!rates.admit(7, 1_000));
        }
        assert_eq!(rates.take_newly_limited(), vec![7]);
        assert_eq!(rates.limited_at(1_000), vec![7]);
        assert!(rates.limited_at(11_000).is_empty(), "the limit ends");
        assert_eq!(rates.take_counts().users_limited, 1);
        // An honest user at the rate is never limited.
        for t in 0..1_000u64 {
            assert!(rates.admit(8, 2_000 + t * 100));
        }
        assert!(rates.take_newly_limited().is_empty());
    }

    #[test]
    fn out_of_order_times_refill_nothing() {
        let mut rates = UserRates::new(settings());
        for _ in 0..5 {
            assert!(rates.admit(7, 10_000));
        }
        // An edge whose clock is behind: its entries do not turn the bucket back.
        assert!(!rates.admit(7, 5_000));
        assert!(!rates.admit(7, 9_999));
    }

    #[test]
    fn the_table_never_passes_its_bound_and_sweeps_idle_users() {
        let mut rates = UserRates::new(settings());
        for user in 0..1_000 {
            assert!(rates.admit(user, 1_000), "a new user is admitted, tracked or not");
        }
        assert_eq!(rates.tracked(), 100);
        assert_eq!(rates.take_counts().entries_untracked, 900);
        // Full again after burst / rate = 500 ms.
        rates.sweep(1_499);
        assert_eq!(rates.tracked(), 100);
        rates.sweep(1_500);
        assert_eq!(rates.tracked(), 0);
    }

    #[test]
    fn a_limited_user_is_kept_until_the_limit_ends() {
        let mut rates = UserRates::new(settings());
        for _ in 0..10 {
            rates.admit(7, 1_000);
        }
        rates.sweep(5_000);
        assert_eq!(rates.tracked(), 1);
        rates.sweep(11_000);
        assert_eq!(rates.tracked(), 0);
    }

    proptest! {
        /// Whatever the number of edges, workers and connections a user's entries come
        /// through, and in whatever order their batches arrive, no more are drawn than the
        /// burst plus the rate over the time they span.
        #[test]
        fn the_rate_holds_across_edges_and_workers(
            // (source: edge x worker x connection, start ms, gap ms) per source
            sources in prop::collection::vec((0u8..32, 0u64..2_000, 1u64..200), 1..40),
            shuffle_seed in any::<u64>(),
        ) {
            let s = settings();
            let mut rates = UserRates::new(s);
            // Each source shakes 20 times; batches from different sources interleave in an
            // arbitrary order, each batch in its own time order.
            let mut batches: Vec<Vec<u64>> = sources
                .iter()
                .map(|&(_, start, gap)| (0..20).map(|i| 10_000 + start + i * gap).collect())
                .collect();
            let mut x = shuffle_seed;
            for i in (1..batches.len()).rev() {
                x = crate::draw::mix(x);
                batches.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let (mut first, mut last, mut admitted) = (u64::MAX, 0u64, 0u64);
            for batch in &batches {
                for &t in batch {
                    first = first.min(t);
                    last = last.max(t);
                    if rates.admit(42, t) {
                        admitted += 1;
                    }
                }
            }
            let bound = s.burst + (last - first) as f64 * s.per_s / 1000.0;
            prop_assert!(admitted as f64 <= bound + 1e-9, "{admitted} drawn, bound {bound}");
            prop_assert!(admitted >= 1);
        }

        /// Memory stays bounded under any number of users.
        #[test]
        fn bounded_under_many_users(users in prop::collection::vec(any::<u64>(), 0..2_000)) {
            let mut rates = UserRates::new(settings());
            for (i, user) in users.iter().enumerate() {
                rates.admit(*user, 1_000 + i as u64);
                prop_assert!(rates.tracked() <= 100);
            }
        }
    }
}
