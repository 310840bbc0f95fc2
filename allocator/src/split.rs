//! The "double mean" cash split: a pool of `total` cents into `n` envelopes of random size that
//! sum to exactly `total`, each at least `min`.
//!
//! Each envelope but the last draws uniformly between `min` and twice the mean of what is left
//! (capped so every later envelope can still get `min`); the last takes the remainder. The RNG
//! is seeded from the round's recorded seed, so an audit replays the same split.

use rand::Rng;

/// Splits `total` cents into `envelopes` amounts, each at least `min_cents`.
///
/// # Panics
/// If `envelopes` is 0 or `total < envelopes * min_cents` (config validation refuses both).
pub fn double_mean(total: u64, envelopes: u64, min_cents: u64, rng: &mut impl Rng) -> Vec<u64> {
    assert!(envelopes > 0, "at least one envelope");
    assert!(total / envelopes >= min_cents, "total below envelopes x min");
    let mut amounts = Vec::with_capacity(envelopes as usize);
    let mut left = total;
    for remaining in (2..=envelopes).rev() {
        // invariant: left >= remaining * min_cents.
        let twice_mean = left / remaining * 2;
        let keep_for_others = (remaining - 1) * min_cents;
        let max = twice_mean.min(left - keep_for_others).max(min_cents);
        let amount = rng.random_range(min_cents..=max);
        amounts.push(amount);
        left -= amount;
    }
    amounts.push(left);
    amounts
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    proptest! {
        #[test]
        fn sums_exactly_and_respects_the_minimum(
            envelopes in 1u64..2_000,
            min in 1u64..100,
            extra in 0u64..1_000_000,
            seed in any::<u64>(),
        ) {
            let total = envelopes * min + extra;
            let amounts = double_mean(total, envelopes, min, &mut ChaCha8Rng::seed_from_u64(seed));
            prop_assert_eq!(amounts.len() as u64, envelopes);
            prop_assert_eq!(amounts.iter().sum::<u64>(), total);
            prop_assert!(amounts.iter().all(|a| *a >= min));
        }
    }

    #[test]
    fn same_seed_same_split_and_the_mean_is_fair() {
        let split = |seed| double_mean(1_000_000, 10_000, 1, &mut ChaCha8Rng::seed_from_u64(seed));
        assert_eq!(split(7), split(7));
        assert_ne!(split(7), split(8));
        // Double mean keeps early and late envelopes close to the overall mean of 100 cents.
        let amounts = split(7);
        let first: u64 = amounts[..1000].iter().sum();
        assert!((80_000..120_000).contains(&first), "first 1,000 envelopes hold {first}");
    }
}
