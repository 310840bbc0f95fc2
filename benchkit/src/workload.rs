//! Production-like inputs shared by the benchmarks of the protocol and the allocator.

use shake_proto::BatchEntry;

/// `n` deterministic batch entries that look like production: user ids spread over a billion
/// users (four-byte varints) and admission offsets within a 2 ms batch age (one- or two-byte
/// varints). A small xorshift, so that every run and every benchmark sees the same entries.
pub fn batch_entries(n: usize) -> Vec<BatchEntry> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            BatchEntry {
                user_id: 1 + state % 1_000_000_000,
                offset_us: (state >> 40) as u32 % 2_000,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_production_like_and_repeatable() {
        let entries = batch_entries(1024);
        assert_eq!(entries.len(), 1024);
        assert!(entries.iter().all(|e| e.user_id >= 1 && e.user_id <= 1_000_000_000));
        assert!(entries.iter().all(|e| e.offset_us < 2_000));
        let distinct: std::collections::HashSet<_> = entries.iter().map(|e| e.user_id).collect();
        assert!(distinct.len() > 1024 * 9 / 10);
        assert_eq!(batch_entries(16), entries[..16]);
    }
}
