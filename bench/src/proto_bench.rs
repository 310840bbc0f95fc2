//! `proto`: encoding and decoding a 1,024-entry `Batch`, on one core, in entries per second.
//!
//! Entries look like production: user ids spread over a billion users (four-byte varints) and
//! admission offsets within a 2 ms batch age (one- or two-byte varints). Encoding writes
//! through `BatchWriter` into a reused buffer, as the edge does; decoding parses and validates
//! the frame and then walks every entry, as the allocator does.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use shake_proto::{AllocatorFrame, BatchEntry, BatchWriter, frame, limits};

use crate::stats;

/// Entries per benchmarked batch.
pub const BATCH_ENTRIES: usize = 1024;

/// The measured figures.
#[derive(Debug, Clone, Copy)]
pub struct ProtoFigures {
    /// Median entries encoded per second.
    pub encode_entries_per_s: f64,
    /// Median entries decoded per second.
    pub decode_entries_per_s: f64,
    /// Encoded size of one batch, bytes.
    pub batch_bytes: usize,
}

/// Deterministic production-like entries (a small xorshift, so runs compare).
pub fn sample_entries(n: usize) -> Vec<BatchEntry> {
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

fn encode_once(out: &mut BytesMut, entries: &[BatchEntry], seq: u64) {
    out.clear();
    let mut writer = BatchWriter::begin(out, seq, 3, 1_767_225_601_000);
    for entry in entries {
        writer.push(out, *entry);
    }
    writer.finish(out);
}

fn decode_once(payload: &Bytes) -> u64 {
    let Ok(AllocatorFrame::Batch(batch)) = AllocatorFrame::parse(0x22, payload) else {
        unreachable!("the benchmark batch is valid")
    };
    batch.entries().fold(0u64, |acc, e| acc.wrapping_add(e.user_id ^ u64::from(e.offset_us)))
}

/// Runs `body` (which handles `per_call` entries) repeatedly for `for_at_least`, and returns
/// entries per second.
fn rate(per_call: usize, for_at_least: Duration, mut body: impl FnMut(u64)) -> f64 {
    let started = Instant::now();
    let mut calls = 0u64;
    while started.elapsed() < for_at_least {
        for _ in 0..64 {
            body(calls);
            calls += 1;
        }
    }
    stats::per_second(calls * per_call as u64, started.elapsed())
}

/// Measures `runs` timed runs of each direction and returns the medians.
pub fn run(runs: usize, run_time: Duration) -> ProtoFigures {
    let entries = sample_entries(BATCH_ENTRIES);
    let mut out = BytesMut::with_capacity(16 * 1024);
    encode_once(&mut out, &entries, 1);
    let batch_bytes = out.len();
    let header = frame::check(&out, limits::MAX_ALLOCATOR_PAYLOAD).expect("valid frame");
    let payload = Bytes::copy_from_slice(&out[header.header_len..]);
    assert_eq!(decode_once(&payload), decode_reference(&entries));

    let mut encode = Vec::with_capacity(runs);
    let mut decode = Vec::with_capacity(runs);
    for _ in 0..runs {
        encode.push(rate(BATCH_ENTRIES, run_time, |seq| {
            encode_once(&mut out, black_box(&entries), seq);
            black_box(&out);
        }));
        decode.push(rate(BATCH_ENTRIES, run_time, |_| {
            black_box(decode_once(black_box(&payload)));
        }));
    }
    ProtoFigures {
        encode_entries_per_s: stats::median(&encode).unwrap_or(0.0),
        decode_entries_per_s: stats::median(&decode).unwrap_or(0.0),
        batch_bytes,
    }
}

fn decode_reference(entries: &[BatchEntry]) -> u64 {
    entries.iter().fold(0u64, |acc, e| acc.wrapping_add(e.user_id ^ u64::from(e.offset_us)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_entries_are_production_like() {
        let entries = sample_entries(BATCH_ENTRIES);
        assert_eq!(entries.len(), BATCH_ENTRIES);
        assert!(entries.iter().all(|e| e.user_id >= 1 && e.user_id <= 1_000_000_000));
        assert!(entries.iter().all(|e| e.offset_us < 2_000));
        let distinct: std::collections::HashSet<_> = entries.iter().map(|e| e.user_id).collect();
        assert!(distinct.len() > BATCH_ENTRIES * 9 / 10);
    }

    #[test]
    fn a_short_run_measures_both_directions() {
        let figures = run(1, Duration::from_millis(5));
        assert!(figures.encode_entries_per_s > 0.0);
        assert!(figures.decode_entries_per_s > 0.0);
        // Four-byte user ids and one- or two-byte offsets: 5 to 6 bytes per entry.
        assert!((5 * BATCH_ENTRIES..=6 * BATCH_ENTRIES + 32).contains(&figures.batch_bytes));
    }
}
