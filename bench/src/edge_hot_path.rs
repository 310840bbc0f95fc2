//! `edge-hot-path`: what one shake costs the edge's own code: decode the datagram, decide
//! (round, phone bucket, edge bucket), join the batch, encode the outcome. Counted with the
//! counting allocator installed by the `shake-bench` binary: allocations per shake after
//! warm-up, and the time per shake on one core.
//!
//! Batches are answered as they flush (routes recycled), as the allocator stream does, so the
//! in-flight window stays small. The per-batch work (a new frame buffer now and then, the
//! in-flight map) is counted too: it shows up as a fraction of an allocation per shake.

use std::hint::black_box;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use shake_edge::admission::{Admission, AdmissionSettings, Decision};
use shake_edge::batcher::{BatchSettings, Batcher};
use shake_edge::bucket::{Rate, TokenBucket};
use shake_proto::datagram::{self, Datagram, Outcome};
use shake_proto::{RoundInfo, RoundPhase, Shake, Verdict};

/// Phones simulated.
pub const PHONES: usize = 10_000;

/// The measured figures.
#[derive(Debug, Clone, Copy)]
pub struct HotPathFigures {
    /// Shakes measured.
    pub shakes: u64,
    /// Allocations per shake after warm-up.
    pub allocations_per_shake: f64,
    /// Nanoseconds per shake (median of runs).
    pub ns_per_shake: f64,
    /// Share of shakes admitted.
    pub admitted_ratio: f64,
}

struct Rig {
    admission: Admission,
    batcher: Batcher<u32>,
    phones: Vec<TokenBucket>,
    datagrams: Vec<Bytes>,
    scratch: BytesMut,
    admitted: u64,
    clock_us: u64,
}

const ROUND_START_MS: u64 = 1_767_225_600_000;

impl Rig {
    fn new() -> Self {
        let settings =
            AdmissionSettings { phone: Rate::new(10.0, 20.0), fallback: Rate::new(1e3, 1e3) };
        let mut admission = Admission::new(settings, 0);
        admission.on_round_state(
            RoundInfo {
                round_id: 1,
                phase: RoundPhase::Open,
                starts_at_ms: ROUND_START_MS,
                ends_at_ms: ROUND_START_MS + 3_600_000,
            },
            100,
        );
        // A quota that admits about a fifth of the shakes at the simulated rate.
        admission.on_quota(1, Rate::new(20_000.0, 200.0), u64::MAX);
        let batch = BatchSettings { max_entries: 1024, max_age_us: 2_000, max_in_flight: 16 };
        let phones = (0..PHONES).map(|_| admission.new_phone_bucket(0)).collect();
        let datagrams = (0..PHONES as u64)
            .map(|i| {
                let mut out = BytesMut::new();
                Shake { round_id: 1, seq: i, client_time_ms: ROUND_START_MS }
                    .encode_datagram(&mut out);
                out.freeze()
            })
            .collect();
        Self {
            admission,
            batcher: Batcher::new(batch, 1),
            phones,
            datagrams,
            scratch: BytesMut::with_capacity(64 * 1024),
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
        let verdict =
            match self.admission.decide(shake.round_id, &mut self.phones[i], self.clock_us, now_ms)
            {
                Decision::Answer(verdict) => verdict,
                Decision::Admit { round_id } => {
                    self.admitted += 1;
                    match self.batcher.push(round_id, i as u64 + 1, i as u32, self.clock_us, now_ms)
                    {
                        Ok(Some(flushed)) => {
                            // The allocator answers at once: the routes come back for reuse.
                            if let Some((_, routes)) = self.batcher.on_result(flushed.seq) {
                                self.batcher.recycle(routes);
                            }
                            Verdict::Forwarded
                        }
                        Ok(None) => Verdict::Forwarded,
                        Err(_) => Verdict::NoLuck,
                    }
                }
            };
        datagram::encode_outcomes(&mut self.scratch, &[Outcome { seq: shake.seq, verdict }]);
        if self.scratch.capacity() - self.scratch.len() < 64 {
            self.scratch.reserve(64 * 1024);
        }
        self.scratch.split().freeze()
    }
}

/// Runs `runs` timed runs of `shakes_per_run` shakes; `allocations` reads the global counter.
pub fn run(runs: usize, shakes_per_run: u64, allocations: impl Fn() -> u64) -> HotPathFigures {
    let mut rig = Rig::new();
    // Warm-up: buffers, route vectors and the in-flight map reach their working size.
    for n in 0..200_000u64 {
        black_box(rig.shake((n as usize * 7919) % PHONES));
    }
    let mut times = Vec::new();
    let mut allocs = 0;
    let mut shakes = 0;
    let admitted_before = rig.admitted;
    for _ in 0..runs.max(1) {
        let before = allocations();
        let started = Instant::now();
        for n in 0..shakes_per_run {
            black_box(rig.shake((n as usize * 7919) % PHONES));
        }
        times.push(started.elapsed().as_nanos() as f64 / shakes_per_run as f64);
        allocs += allocations() - before;
        shakes += shakes_per_run;
    }
    HotPathFigures {
        shakes,
        allocations_per_shake: allocs as f64 / shakes as f64,
        ns_per_shake: crate::stats::median(&times).unwrap_or(0.0),
        admitted_ratio: (rig.admitted - admitted_before) as f64 / shakes as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rig_decides_and_batches() {
        let figures = run(1, 20_000, || 0);
        assert_eq!(figures.shakes, 20_000);
        assert!(figures.admitted_ratio > 0.1 && figures.admitted_ratio < 0.3, "{figures:?}");
    }
}
