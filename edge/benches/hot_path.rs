//! `edge-hot-path`: what one shake costs the edge's own code: decode the datagram, then the
//! edge's real sans-IO `WorkerCore::on_shake` (round, phone bucket, edge bucket, batch), then
//! encode the outcome. Allocations per shake after warm-up (target 0), counted by the counting
//! allocator this target installs, and the time per shake on one core.
//!
//! Batches are answered as they flush (through the core's uplink and `on_allocator_frame`, as
//! the allocator stream does), so the in-flight window stays small. The per-batch work (the
//! frame's digest, a new frame buffer now and then, the in-flight map) is counted too: it shows
//! up as a fraction of an allocation per shake.
//!
//! `scripts/bench.sh edge-hot-path` runs it (`cargo bench -p shake-edge --bench hot_path`);
//! `cargo test` runs it briefly and checks the rig decides, batches and allocates nothing per
//! shake.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use clap::Parser;
use serde_json::{Map, Value};
use shake_benchkit::cli::CommonArgs;
use shake_benchkit::counting_alloc::CountingAlloc;
use shake_benchkit::{report, stats};
use shake_edge::admission::AdmissionSettings;
use shake_edge::award_book::AwardBook;
use shake_edge::batcher::BatchSettings;
use shake_edge::bucket::Rate;
use shake_edge::core::{CoreSettings, PhoneEffect, WorkerCore};
use shake_edge::phones::PhoneRef;
use shake_edge::uplink::WorkerName;
use shake_proto::datagram::{self, Datagram, Outcome};
use shake_proto::{AllocatorFrame, BatchDigest, RoundInfo, RoundPhase, Shake, Verdict, frame};

/// Phones simulated.
const PHONES: usize = 10_000;

/// The measured figures.
#[derive(Debug, Clone, Copy)]
struct HotPathFigures {
    /// Shakes measured.
    shakes: u64,
    /// Allocations per shake after warm-up.
    allocations_per_shake: f64,
    /// Nanoseconds per shake (median of runs).
    ns_per_shake: f64,
    /// Share of shakes admitted.
    admitted_ratio: f64,
}

struct Rig {
    core: WorkerCore<()>,
    phones: Vec<PhoneRef>,
    datagrams: Vec<Bytes>,
    scratch: BytesMut,
    effects: Vec<PhoneEffect>,
    admitted: u64,
    clock_us: u64,
}

const ROUND_START_MS: u64 = 1_767_225_600_000;

impl Rig {
    fn new() -> Self {
        let settings = CoreSettings {
            admission: AdmissionSettings {
                phone: Rate::new(10.0, 20.0),
                fallback: Rate::new(1e3, 1e3),
            },
            batches: BatchSettings { max_entries: 1024, max_age_us: 2_000, max_in_flight: 16 },
            workers: 1,
        };
        let name = WorkerName { edge_id: 1, worker_id: 0, instance_id: 1 };
        let mut core = WorkerCore::new(settings, name, Arc::new(AwardBook::new(1, 1)), 0);
        let round = RoundInfo {
            round_id: 1,
            phase: RoundPhase::Open,
            starts_at_ms: ROUND_START_MS,
            ends_at_ms: ROUND_START_MS + 3_600_000,
            start_spread_ms: 0,
        };
        let mut effects = Vec::new();
        core.on_allocator_frame(
            AllocatorFrame::RoundState { round, min_shake_interval_ms: 100 },
            0,
            ROUND_START_MS,
            &mut effects,
        );
        // A quota that admits about a fifth of the shakes at the simulated rate.
        core.on_allocator_frame(
            AllocatorFrame::Quota {
                round_id: 1,
                rate_per_s: 20_000,
                burst: 200,
                valid_until_ms: u64::MAX,
            },
            0,
            ROUND_START_MS,
            &mut effects,
        );
        core.uplink().link_up();
        while core.uplink().poll_transmit().is_some() {}
        let phones = (0..PHONES as u64).map(|user| core.add_phone(user + 1, (), 0, None)).collect();
        let datagrams = (0..PHONES as u64)
            .map(|i| {
                let mut out = BytesMut::new();
                Shake { round_id: 1, seq: i, client_time_ms: ROUND_START_MS }
                    .encode_datagram(&mut out);
                out.freeze()
            })
            .collect();
        Self {
            core,
            phones,
            datagrams,
            scratch: BytesMut::with_capacity(64 * 1024),
            effects,
            admitted: 0,
            clock_us: 0,
        }
    }

    /// One shake from phone `i`, 10 µs after the previous one: 100,000 shakes per second over
    /// 10,000 phones is each phone at its own limit of 10 per second.
    #[inline]
    fn shake(&mut self, i: usize) -> Bytes {
        self.clock_us += 10;
        let now_ms = ROUND_START_MS + self.clock_us / 1000;
        let Ok(Datagram::Shake(shake)) = datagram::decode(&self.datagrams[i]) else {
            unreachable!("benchmark datagrams are valid")
        };
        let outcome = self.core.on_shake(self.phones[i], shake, self.clock_us, now_ms);
        let Some(Outcome { verdict, .. }) = outcome else { unreachable!("every phone is here") };
        if verdict == Verdict::Forwarded {
            self.admitted += 1;
        }
        if self.core.uplink().in_flight() > 0 {
            self.answer_batches(now_ms);
        }
        datagram::encode_outcomes(&mut self.scratch, &[Outcome { seq: shake.seq, verdict }]);
        if self.scratch.capacity() - self.scratch.len() < 64 {
            self.scratch.reserve(64 * 1024);
        }
        self.scratch.split().freeze()
    }

    /// The allocator answers every flushed batch at once, without winners.
    fn answer_batches(&mut self, now_ms: u64) {
        while let Some(bytes) = self.core.uplink().poll_transmit() {
            let Ok(header) = frame::check(&bytes, usize::MAX) else { continue };
            if header.frame_type != shake_proto::allocator::frame_type::BATCH {
                continue;
            }
            let payload = &bytes[header.header_len..];
            let Ok((seq, _)) = shake_proto::varint::decode(payload) else { continue };
            let answer = AllocatorFrame::BatchResult {
                seq,
                digest: BatchDigest::of_payload(payload),
                winners: Vec::new(),
            };
            self.core.on_allocator_frame(answer, self.clock_us, now_ms, &mut self.effects);
        }
    }
}

/// Runs `runs` timed runs of `shakes_per_run` shakes after `warmup` shakes.
fn measure(runs: usize, shakes_per_run: u64, warmup: u64) -> HotPathFigures {
    let mut rig = Rig::new();
    // Warm-up: buffers, route vectors and the in-flight map reach their working size.
    for n in 0..warmup {
        black_box(rig.shake((n as usize * 7919) % PHONES));
    }
    let mut times = Vec::new();
    let mut allocs = 0;
    let mut shakes = 0;
    let admitted_before = rig.admitted;
    for _ in 0..runs.max(1) {
        let before = ALLOCATOR.allocations();
        let started = Instant::now();
        for n in 0..shakes_per_run {
            black_box(rig.shake((n as usize * 7919) % PHONES));
        }
        times.push(started.elapsed().as_nanos() as f64 / shakes_per_run as f64);
        allocs += ALLOCATOR.allocations() - before;
        shakes += shakes_per_run;
    }
    HotPathFigures {
        shakes,
        allocations_per_shake: allocs as f64 / shakes as f64,
        ns_per_shake: stats::median(&times).unwrap_or(0.0),
        admitted_ratio: (rig.admitted - admitted_before) as f64 / shakes as f64,
    }
}

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc::new();

#[derive(Parser, Debug)]
#[command(about = "One shake through the edge's own code: allocations and time per shake")]
struct Args {
    /// Timed runs; the median time is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Shakes per run.
    #[arg(long, default_value_t = 2_000_000)]
    shakes: u64,
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let (runs, shakes, warmup) = if args.common.full_run() {
        (args.runs.max(1), args.shakes.max(1), 200_000)
    } else {
        (1, 50_000, 50_000)
    };
    let f = measure(runs, shakes, warmup);
    assert!(f.admitted_ratio > 0.1 && f.admitted_ratio < 0.3, "{f:?}");
    // The per-batch work amortised over about 200 admitted shakes per batch stays far below
    // one allocation per shake; one per shake would be a regression of the hot path.
    assert!(f.allocations_per_shake < 0.05, "the hot path allocates: {f:?}");

    let rows = vec![
        ("shakes measured".to_owned(), f.shakes.to_string()),
        ("admitted".to_owned(), format!("{:.1}%", f.admitted_ratio * 100.0)),
        ("allocations per shake".to_owned(), format!("{:.5}", f.allocations_per_shake)),
        (
            "allocations per 1,024-entry batch".to_owned(),
            format!("{:.2}", f.allocations_per_shake / f.admitted_ratio.max(1e-9) * 1024.0),
        ),
        ("time per shake (median)".to_owned(), format!("{:.0} ns", f.ns_per_shake)),
    ];
    let mut figures = Map::new();
    figures.insert("shakes".into(), Value::from(f.shakes));
    figures.insert("allocations_per_shake".into(), Value::from(f.allocations_per_shake));
    figures.insert("ns_per_shake".into(), Value::from(f.ns_per_shake.round()));
    figures.insert("admitted_ratio".into(), Value::from(f.admitted_ratio));
    let title = format!("edge hot path: decode, decide, batch, encode; {PHONES} phones, one core");
    report::emit(
        "edge-hot-path",
        &report::table(&title, &rows),
        figures,
        args.common.results_dir().as_deref(),
    )
}
