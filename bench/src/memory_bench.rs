//! `scripts/bench.sh memory`: the edge's resident memory per idle connected phone. A real
//! allocator and edge (the round opens an hour later, so phones connect, say `Hello` and stay
//! idle), phones on `shake-loop` ramping up to the largest count; the edge's RSS is read before the first
//! phone and as the connected count passes each checkpoint.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use shake_testkit::fixture::{Fixture, FixtureOptions};

use crate::edge_bench::{self, LoadOptions};
use crate::procfs;
use shake_swarm::loop_phones::Speech;

/// The checkpoints, phones.
pub const CHECKPOINTS: [u64; 3] = [10_000, 50_000, 100_000];

/// One checkpoint reached.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Checkpoint {
    /// Phones connected when read.
    pub phones: u64,
    /// Edge RSS then, KiB.
    pub rss_kib: u64,
}

/// What a memory run found.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryFigures {
    /// Edge RSS with no phone, KiB.
    pub baseline_kib: u64,
    /// Checkpoints reached, in order.
    pub checkpoints: Vec<Checkpoint>,
    /// Most phones connected at once.
    pub phones_reached: u64,
    /// The swarm's own memory per phone, KiB.
    pub swarm_kib_per_phone: Option<f64>,
    /// Connect errors by class.
    pub errors: std::collections::BTreeMap<String, u64>,
}

impl MemoryFigures {
    /// KiB per phone at a checkpoint: growth over the baseline divided by phones.
    pub fn kib_per_phone(&self, c: &Checkpoint) -> f64 {
        c.rss_kib.saturating_sub(self.baseline_kib) as f64 / c.phones.max(1) as f64
    }

    /// KiB per phone at the largest checkpoint reached.
    pub fn kib_per_idle_phone(&self) -> Option<f64> {
        self.checkpoints.last().map(|c| self.kib_per_phone(c))
    }
}

/// Ramps up to `phones` at `connect_rate` and reads the edge's memory at each checkpoint.
pub fn run(
    phones: usize,
    connect_rate: f64,
    server_core: usize,
    client_core: usize,
) -> anyhow::Result<MemoryFigures> {
    crate::sys::pin_process(std::process::id(), client_core)?;
    let ramp_s = (phones as f64 / connect_rate).ceil() as u64;
    let duration_s = ramp_s + 15;
    let fixture = Fixture::start(&FixtureOptions {
        name: "shake-bench-memory".into(),
        round_opens_in_s: 3_600,
        round_s: 60,
        workers: 1,
        server_core,
        client_core,
        pin: crate::sys::pin_process,
        edge_overrides: Vec::new(),
        start_spread_ms: 0,
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let pid = fixture.edge_pid();
    let baseline_kib = procfs::rss_kib(pid).unwrap_or(0);
    let load = LoadOptions {
        phones,
        rate_per_phone: 1.0,
        connect_rate,
        warmup_s: 0.0,
        measure_s: 0.0,
        server_core,
        client_core,
        edge_set: Vec::new(),
    };
    let speech = Speech::Shake { tokens: edge_bench::demo_tokens(phones)?, record: None };
    let own_baseline_kib = procfs::rss_kib(std::process::id()).unwrap_or(0);
    let started = Instant::now();
    let end = started + Duration::from_secs(duration_s);
    let running = edge_bench::start_phones(fixture.edge_addr, &fixture.ca, &speech, &load, end);
    let targets: Vec<u64> = CHECKPOINTS.iter().copied().filter(|c| *c <= phones as u64).collect();
    let mut checkpoints = Vec::new();
    let mut phones_reached = 0;
    let mut own_kib_per_phone = None;
    let report = running.and_then(|running| {
        while Instant::now() < end && checkpoints.len() < targets.len() {
            std::thread::sleep(Duration::from_millis(250));
            let connected = running.counters.connected.load(Ordering::Relaxed);
            phones_reached = phones_reached.max(connected);
            if let Some(next) = targets.get(checkpoints.len())
                && connected >= *next
            {
                checkpoints.push(Checkpoint {
                    phones: connected,
                    rss_kib: procfs::rss_kib(pid).unwrap_or(0),
                });
                let own = procfs::rss_kib(std::process::id()).unwrap_or(0);
                own_kib_per_phone =
                    Some(own.saturating_sub(own_baseline_kib) as f64 / connected.max(1) as f64);
            }
        }
        Ok(running.finish()?)
    });
    fixture.stop();
    let report = report?;
    let mut errors: std::collections::BTreeMap<String, u64> =
        report.ended.iter().map(|(name, n)| (format!("session ended: {name}"), *n)).collect();
    if report.lost > 0 {
        errors.insert("connections lost".into(), report.lost);
    }
    Ok(MemoryFigures {
        baseline_kib,
        checkpoints,
        phones_reached,
        swarm_kib_per_phone: own_kib_per_phone,
        errors,
    })
}

/// The readable table and the JSON figures.
pub fn table_and_figures(
    f: &MemoryFigures,
) -> (String, serde_json::Map<String, serde_json::Value>) {
    let mut table = format!(
        "memory: edge RSS per idle connected phone (one worker)\n{:<24}{:>14}{:>16}\n{}\n",
        "phones connected",
        "edge RSS MiB",
        "KiB per phone",
        "-".repeat(54)
    );
    table += &format!("{:<24}{:>14.1}{:>16}\n", 0, f.baseline_kib as f64 / 1024.0, "");
    let mut by_count = serde_json::Map::new();
    for c in &f.checkpoints {
        table += &format!(
            "{:<24}{:>14.1}{:>16.1}\n",
            c.phones,
            c.rss_kib as f64 / 1024.0,
            f.kib_per_phone(c)
        );
        by_count.insert(c.phones.to_string(), ((f.kib_per_phone(c) * 10.0).round() / 10.0).into());
    }
    table +=
        &format!("phones reached {}; goal: <= 16 KiB per phone at >= 100,000\n", f.phones_reached);
    let per_phone = f.kib_per_idle_phone().map(|k| (k * 10.0).round() / 10.0);
    let value = serde_json::json!({
        "edge_kib_per_idle_phone": per_phone,
        "phones_reached": f.phones_reached,
        "baseline_kib": f.baseline_kib,
        "kib_per_phone_at": by_count,
        "swarm_kib_per_phone": f.swarm_kib_per_phone.map(|k| k.round()),
        "connect_errors": f.errors.values().sum::<u64>(),
        "goal_met": per_phone.is_some_and(|k| k <= 16.0) && f.phones_reached >= 100_000,
    });
    (table, value.as_object().cloned().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_phone_memory_is_growth_over_the_baseline() {
        let f = MemoryFigures {
            baseline_kib: 10_000,
            checkpoints: vec![
                Checkpoint { phones: 10_000, rss_kib: 210_000 },
                Checkpoint { phones: 100_000, rss_kib: 1_610_000 },
            ],
            phones_reached: 100_012,
            swarm_kib_per_phone: Some(40.0),
            errors: Default::default(),
        };
        assert_eq!(f.kib_per_phone(&f.checkpoints[0]), 20.0);
        assert_eq!(f.kib_per_idle_phone(), Some(16.0));
        let (table, json) = table_and_figures(&f);
        assert!(table.contains("100000"), "{table}");
        assert_eq!(json["edge_kib_per_idle_phone"], 16.0);
        assert_eq!(json["kib_per_phone_at"]["10000"], 20.0);
        assert_eq!(json["goal_met"], true);
        let none = MemoryFigures { checkpoints: vec![], ..f };
        assert_eq!(none.kib_per_idle_phone(), None);
        assert_eq!(table_and_figures(&none).1["goal_met"], false);
    }
}
