//! `proto`: encoding and decoding a 1,024-entry `Batch`, on one core, in entries per second
//! (target: 50 M entries/s each way).
//!
//! Entries look like production (`shake_benchkit::workload`). Encoding writes through
//! `BatchWriter` into a reused buffer, as the edge does; decoding parses and validates the
//! frame and then walks every entry, as the allocator does.
//!
//! `scripts/bench.sh proto` runs it (`cargo bench -p shake-proto --bench batch_codec`);
//! `cargo test` runs it briefly as a check.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::Parser;
use serde_json::{Map, Value};
use shake_benchkit::cli::CommonArgs;
use shake_benchkit::{report, stats, workload};
use shake_proto::{AllocatorFrame, BatchEntry, BatchWriter, frame, limits};

/// Entries per benchmarked batch.
const BATCH_ENTRIES: usize = 1024;

#[derive(Parser, Debug)]
#[command(about = "Encode and decode a 1,024-entry Batch frame on one core")]
struct Args {
    /// Timed runs per direction; the median is reported.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Length of each timed run, milliseconds.
    #[arg(long, default_value_t = 300)]
    run_ms: u64,
    #[command(flatten)]
    common: CommonArgs,
}

/// The measured figures.
#[derive(Debug, Clone, Copy)]
struct ProtoFigures {
    /// Median entries encoded per second.
    encode_entries_per_s: f64,
    /// Median entries decoded per second.
    decode_entries_per_s: f64,
    /// Encoded size of one batch, bytes.
    batch_bytes: usize,
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

fn decode_reference(entries: &[BatchEntry]) -> u64 {
    entries.iter().fold(0u64, |acc, e| acc.wrapping_add(e.user_id ^ u64::from(e.offset_us)))
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
fn measure(runs: usize, run_time: Duration) -> ProtoFigures {
    let entries = workload::batch_entries(BATCH_ENTRIES);
    let mut out = BytesMut::with_capacity(16 * 1024);
    encode_once(&mut out, &entries, 1);
    let batch_bytes = out.len();
    let header = frame::check(&out, limits::MAX_ALLOCATOR_PAYLOAD).expect("valid frame");
    let payload = Bytes::copy_from_slice(&out[header.header_len..]);
    // What is timed must be right: the decoded batch is the encoded one.
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

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let (runs, run_time) = if args.common.full_run() {
        (args.runs.max(1), Duration::from_millis(args.run_ms))
    } else {
        (1, Duration::from_millis(5))
    };
    let f = measure(runs, run_time);
    // Four-byte user ids and one- or two-byte offsets: 5 to 6 bytes per entry.
    assert!(
        (5 * BATCH_ENTRIES..=6 * BATCH_ENTRIES + 32).contains(&f.batch_bytes),
        "a batch of {BATCH_ENTRIES} production-like entries took {} bytes",
        f.batch_bytes
    );
    assert!(f.encode_entries_per_s > 0.0 && f.decode_entries_per_s > 0.0, "{f:?}");

    let rows = vec![
        ("batch entries".to_owned(), BATCH_ENTRIES.to_string()),
        ("batch bytes".to_owned(), f.batch_bytes.to_string()),
        ("encode (median)".to_owned(), report::human_rate(f.encode_entries_per_s)),
        ("decode (median)".to_owned(), report::human_rate(f.decode_entries_per_s)),
        ("target, each".to_owned(), report::human_rate(50e6)),
    ];
    let mut figures = Map::new();
    figures.insert("runs".into(), Value::from(runs));
    figures.insert("batch_entries".into(), Value::from(BATCH_ENTRIES));
    figures.insert("batch_bytes".into(), Value::from(f.batch_bytes));
    figures.insert("encode_entries_per_s".into(), Value::from(f.encode_entries_per_s.round()));
    figures.insert("decode_entries_per_s".into(), Value::from(f.decode_entries_per_s.round()));
    figures.insert(
        "target_met".into(),
        Value::from(f.encode_entries_per_s >= 50e6 && f.decode_entries_per_s >= 50e6),
    );
    let title = format!("proto: 1,024-entry Batch on one core, median of {runs} runs");
    report::emit(
        "proto",
        &report::table(&title, &rows),
        figures,
        args.common.results_dir().as_deref(),
    )
}
