//! `shake-bench`: runs one named benchmark, prints a table and ends with one JSON line.
//!
//! `scripts/bench.sh NAME` is the usual way in: it builds in release mode and pins cores.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{Map, Value};
use shake_bench::counting_alloc::CountingAlloc;
use shake_bench::{
    allocator_bench, allocator_soak, edge_bench, edge_hot_path, floor, handshake_bench,
    latency_bench, memory_bench, proto_bench, report, surge_bench,
};

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc::new();

#[derive(Parser, Debug)]
#[command(name = "shake-bench", about = "Shake micro-benchmarks", version)]
struct Cli {
    /// Where to write `<name>.json` (none: print only).
    #[arg(long, default_value = "bench/results")]
    results_dir: PathBuf,
    /// Do not write a results file.
    #[arg(long)]
    no_write: bool,
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// Encode and decode a 1,024-entry Batch frame (target: 50 M entries/s each, one core).
    Proto {
        /// Timed runs per direction; the median is reported.
        #[arg(long, default_value_t = 7)]
        runs: usize,
        /// Length of each timed run, milliseconds.
        #[arg(long, default_value_t = 300)]
        run_ms: u64,
    },
    /// The draw's decisions per second (target 5 M/s, one core) and awards made durable per
    /// second through the real ledger with fsync (target 200 k/s).
    Allocator {
        /// Timed draw runs; the median is reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Scratch directory for the ledger (on the disk being measured).
        #[arg(long, default_value = "target/bench-scratch")]
        scratch: PathBuf,
    },
    /// A weeks-long campaign compressed: batches through the allocator's core (fake clock, no
    /// network) from edge workers that confirm answers and restart; heap bytes and answers
    /// held must stay flat after warm-up. Then batches through the real ledger: answers stored
    /// on disk stay bounded by what edges have not confirmed.
    Soak {
        /// Batches through the core.
        #[arg(long, default_value_t = 10_000_000)]
        batches: u64,
        /// A worker restarts (new instance) every this many batches.
        #[arg(long, default_value_t = 1_000_000)]
        restart_every: u64,
        /// Batches through the real ledger (groups of 100, fsync each).
        #[arg(long, default_value_t = 100_000)]
        ledger_batches: u64,
        /// Scratch directory for the ledger.
        #[arg(long, default_value = "target/bench-scratch/soak-ledger")]
        scratch: PathBuf,
    },
    /// One shake through the edge's own code (decode, decide, batch, encode): allocations per
    /// shake (target 0) and nanoseconds per shake, one core.
    EdgeHotPath {
        /// Timed runs; the median time is reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Shakes per run.
        #[arg(long, default_value_t = 2_000_000)]
        shakes: u64,
    },
    /// Full and resumed QUIC handshakes on one server core: quinn's default configuration, the
    /// edge's, and several TLS choices (suite order, key exchange, tickets).
    Handshake {
        /// Length of each measurement, milliseconds.
        #[arg(long, default_value_t = 3000)]
        run_ms: u64,
        #[command(flatten)]
        cores: Cores,
    },
    /// The UDP floor: request/reply pairs over loopback with recvmmsg/sendmmsg, one server core.
    Floor {
        /// Seconds to run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[command(flatten)]
        cores: Cores,
    },
    /// The real edge (with a real allocator) against a bare quinn datagram echo, one stream per
    /// shake, and the UDP floor, under the same phone load: server CPU per message.
    Edge {
        #[command(flatten)]
        load: LoadArgs,
    },
    /// The edge's resident memory per idle connected phone at 10,000, 50,000 and 100,000 phones.
    Memory {
        /// Phones to ramp up to.
        #[arg(long, default_value_t = 100_000)]
        phones: usize,
        /// Connections opened per second.
        #[arg(long, default_value_t = 500.0)]
        connect_rate: f64,
        #[command(flatten)]
        cores: Cores,
    },
    /// Shake-to-outcome and shake-to-award latency at 50% and 80% of the edge's maximum rate
    /// (measured first, in the same run).
    Latency {
        #[command(flatten)]
        load: LoadArgs,
        /// Length of each level's round, seconds.
        #[arg(long, default_value_t = 20)]
        round_s: u64,
    },
    /// The round-open surge: phones idle, then every one shaking at once at a multiple of the
    /// edge's capacity (the edge under a CPU quota, its capacity measured first); per second:
    /// offered, answered, shed, kernel drops, pace, latency, handshakes, reconnects, memory.
    /// Writes `surge.svg` beside the JSON. Needs root (a cgroup for the quota).
    Surge {
        /// Phones.
        #[arg(long, default_value_t = 10_000)]
        phones: usize,
        /// Connections opened per second during the ramp.
        #[arg(long, default_value_t = 1_000.0)]
        connect_rate: f64,
        /// The edge's CPU quota, share of one core.
        #[arg(long, default_value_t = 0.25)]
        quota: f64,
        /// The quota's period, milliseconds (a stall once spent is up to this times 1 - quota).
        #[arg(long, default_value_t = 4)]
        quota_period_ms: u64,
        /// Shakes offered at the opening over the edge's capacity.
        #[arg(long, default_value_t = 2.5)]
        overload: f64,
        /// Seconds the phones sit idle before the round opens.
        #[arg(long, default_value_t = 3)]
        idle_s: u64,
        /// The round's length, seconds.
        #[arg(long, default_value_t = 12)]
        surge_s: u64,
        /// Round trip of the path between phones and edge, emulated by the load generator,
        /// milliseconds (loopback's own is tens of microseconds, which makes every queue over
        /// 25 ms look like loss to QUIC). Latencies are reported beyond it.
        #[arg(long, default_value_t = 40)]
        phone_rtt_ms: u64,
        /// The round's start spread, milliseconds: phones start staggered over it (0: every
        /// phone at the opening instant, the worst case).
        #[arg(long, default_value_t = 0)]
        start_spread_ms: u32,
        /// An edge configuration line to set, `key = value` (repeatable), e.g.
        /// `--edge-set 'queue_delay_target_ms = 20'`.
        #[arg(long)]
        edge_set: Vec<String>,
        #[command(flatten)]
        cores: Cores,
    },
    /// Group commits of 1, 100 and 10,000 awards in redb, fjall and SQLite, fsync each
    /// (needs `--features store-comparison`).
    #[cfg(feature = "store-comparison")]
    LedgerStores {
        /// Scratch directory (on the disk being measured).
        #[arg(long, default_value = "target/bench-scratch/stores")]
        scratch: PathBuf,
    },
}

/// Which cores the server under test and the load run on.
#[derive(clap::Args, Debug, Clone, Copy)]
struct Cores {
    /// Core for the server under test (default: the last one).
    #[arg(long)]
    server_core: Option<usize>,
    /// Core for the load generator (and the allocator).
    #[arg(long, default_value_t = 0)]
    client_core: usize,
}

impl Cores {
    fn server(&self) -> usize {
        self.server_core.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| n.get()).saturating_sub(1)
        })
    }
}

/// A phone load.
#[derive(clap::Args, Debug, Clone)]
struct LoadArgs {
    /// Phones (connections).
    #[arg(long, default_value_t = 10_000)]
    phones: usize,
    /// Shakes per second per phone.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Connections opened per second.
    #[arg(long, default_value_t = 500.0)]
    connect_rate: f64,
    /// Seconds between the last connection and the measurement window.
    #[arg(long, default_value_t = 3.0)]
    warmup_s: f64,
    /// Measurement window, seconds.
    #[arg(long, default_value_t = 10.0)]
    measure_s: f64,
    #[command(flatten)]
    cores: Cores,
}

impl LoadArgs {
    fn options(&self) -> edge_bench::LoadOptions {
        edge_bench::LoadOptions {
            phones: self.phones,
            rate_per_phone: self.rate,
            connect_rate: self.connect_rate,
            warmup_s: self.warmup_s,
            measure_s: self.measure_s,
            server_core: self.cores.server(),
            client_core: self.cores.client_core,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let results_dir = (!cli.no_write).then_some(cli.results_dir.as_path());
    match cli.bench {
        Bench::Proto { runs, run_ms } => {
            let f = proto_bench::run(runs.max(1), Duration::from_millis(run_ms));
            let rows = vec![
                ("batch entries".to_owned(), proto_bench::BATCH_ENTRIES.to_string()),
                ("batch bytes".to_owned(), f.batch_bytes.to_string()),
                ("encode (median)".to_owned(), report::human_rate(f.encode_entries_per_s)),
                ("decode (median)".to_owned(), report::human_rate(f.decode_entries_per_s)),
                ("target, each".to_owned(), report::human_rate(50e6)),
            ];
            let mut figures = Map::new();
            figures.insert("runs".into(), Value::from(runs));
            figures.insert("batch_entries".into(), Value::from(proto_bench::BATCH_ENTRIES));
            figures.insert("batch_bytes".into(), Value::from(f.batch_bytes));
            figures
                .insert("encode_entries_per_s".into(), Value::from(f.encode_entries_per_s.round()));
            figures
                .insert("decode_entries_per_s".into(), Value::from(f.decode_entries_per_s.round()));
            figures.insert(
                "target_met".into(),
                Value::from(f.encode_entries_per_s >= 50e6 && f.decode_entries_per_s >= 50e6),
            );
            let title = format!("proto: 1,024-entry Batch on one core, median of {runs} runs");
            report::emit("proto", &report::table(&title, &rows), figures, results_dir)?;
        }
        Bench::Allocator { runs, scratch } => {
            std::fs::create_dir_all(&scratch)?;
            let f = allocator_bench::run(runs, &scratch);
            let mut rows = vec![
                ("decisions (median)".to_owned(), report::human_rate(f.decisions_per_s)),
                (
                    "  without the per-user rate (same run)".to_owned(),
                    report::human_rate(f.decisions_without_user_rate_per_s),
                ),
                ("win ratio".to_owned(), format!("{:.3}", f.win_ratio)),
                (
                    "winners drawn (median)".to_owned(),
                    report::human_rate(f.decisions_per_s * f.win_ratio),
                ),
            ];
            for (group, awards, rate) in &f.durable_by_group {
                rows.push((
                    format!("durable, {group} batches/commit (~{awards} awards)"),
                    report::human_rate(*rate),
                ));
            }
            match &f.postgres {
                Ok(by_group) => {
                    for (group, awards, rate, p99) in by_group {
                        rows.push((
                            format!("PostgreSQL + sync standby, {group} batches/commit (~{awards} awards)"),
                            format!("{}, p99 {p99:.1} ms", report::human_rate(*rate)),
                        ));
                    }
                }
                Err(why) => rows.push(("PostgreSQL".to_owned(), format!("not measured: {why}"))),
            }
            // The slowest group size measured: the figure holds whatever groups the load forms.
            let durable =
                f.durable_by_group.iter().map(|(_, _, r)| *r).fold(f64::INFINITY, f64::min);
            let durable = if durable.is_finite() { durable } else { 0.0 };
            let mut figures = Map::new();
            figures.insert("runs".into(), Value::from(runs));
            figures.insert("decisions_per_s".into(), Value::from(f.decisions_per_s.round()));
            figures.insert(
                "decisions_without_user_rate_per_s".into(),
                Value::from(f.decisions_without_user_rate_per_s.round()),
            );
            figures.insert(
                "user_rate_cost_ratio".into(),
                Value::from(
                    (f.decisions_per_s / f.decisions_without_user_rate_per_s.max(1.0) * 1000.0)
                        .round()
                        / 1000.0,
                ),
            );
            figures.insert("win_ratio".into(), Value::from(f.win_ratio));
            figures.insert("durable_awards_per_s".into(), Value::from(durable.round()));
            figures.insert(
                "durable_by_group".into(),
                f.durable_by_group
                    .iter()
                    .map(|(g, a, r)| serde_json::json!({"batches": g, "awards": a, "awards_per_s": r.round()}))
                    .collect(),
            );
            // PostgreSQL at the largest group measured (the committer groups whatever waits,
            // so under load groups are large), every size in pg_durable_by_group.
            let pg_best = f.postgres.as_ref().ok().and_then(|g| g.last().copied());
            figures.insert(
                "pg_durable_awards_per_s".into(),
                pg_best.map_or(Value::Null, |(_, _, rate, _)| Value::from(rate.round())),
            );
            figures.insert(
                "pg_commit_p99_ms".into(),
                pg_best
                    .map_or(Value::Null, |(_, _, _, p99)| Value::from((p99 * 10.0).round() / 10.0)),
            );
            figures.insert(
                "pg_durable_by_group".into(),
                match &f.postgres {
                    Ok(by_group) => by_group
                        .iter()
                        .map(|(g, a, r, p)| serde_json::json!({"batches": g, "awards": a, "awards_per_s": r.round(), "commit_p99_ms": (p * 10.0).round() / 10.0}))
                        .collect(),
                    Err(why) => Value::from(why.clone()),
                },
            );
            figures.insert(
                "target_met".into(),
                Value::from(f.decisions_per_s >= 5e6 && durable >= 2e5),
            );
            let title =
                format!("allocator: draw on one core (median of {runs}), ledger with fsync");
            report::emit("allocator", &report::table(&title, &rows), figures, results_dir)?;
        }
        Bench::Soak { batches, restart_every, ledger_batches, scratch } => {
            let sample_every = (batches / 10).max(1);
            let mut f = allocator_soak::run_core(batches, sample_every, restart_every, || {
                ALLOCATOR.live_bytes()
            });
            f.ledger = Some(allocator_soak::run_ledger(&scratch, ledger_batches, 100)?);
            let _ = std::fs::remove_dir_all(&scratch);
            let mib = |b: i64| format!("{:.2} MiB", b as f64 / (1024.0 * 1024.0));
            let mut rows: Vec<(String, String)> = f
                .samples
                .iter()
                .map(|s| {
                    (
                        format!("after {:>11} batches", s.batches),
                        format!("{} live, {} answers held", mib(s.live_bytes), s.stored_answers),
                    )
                })
                .collect();
            // Warm-up: the first sample (pools, maps and buffers at their working size).
            let warm = f.samples.first().map_or(0, |s| s.live_bytes);
            let end = f.samples.last().map_or(0, |s| s.live_bytes);
            let growth = if warm > 0 { end as f64 / warm as f64 } else { 0.0 };
            rows.push(("through the core".to_owned(), report::human_rate(f.batches_per_s)));
            rows.push(("awards granted".to_owned(), f.awards.to_string()));
            rows.push(("worker restarts".to_owned(), f.restarts.to_string()));
            rows.push(("live bytes, end / after warm-up".to_owned(), format!("{growth:.3}")));
            let ledger = f.ledger.expect("just run");
            rows.push((
                format!("ledger: answers stored after {} batches", ledger.batches),
                format!("{} (not {})", ledger.stored_at_end, ledger.stored_without_compaction),
            ));
            let mut figures = Map::new();
            figures.insert("batches".into(), Value::from(batches));
            figures.insert("workers".into(), Value::from(allocator_soak::WORKERS));
            figures.insert("restarts".into(), Value::from(f.restarts));
            figures.insert("awards".into(), Value::from(f.awards));
            figures.insert("batches_per_s".into(), Value::from(f.batches_per_s.round()));
            figures.insert("live_bytes_after_warmup".into(), Value::from(warm));
            figures.insert("live_bytes_at_end".into(), Value::from(end));
            figures.insert("live_bytes_growth_ratio".into(), Value::from(growth));
            figures.insert("max_answers_held".into(), Value::from(f.max_stored_answers));
            figures.insert("ledger_batches".into(), Value::from(ledger.batches));
            figures
                .insert("ledger_answers_stored_at_end".into(), Value::from(ledger.stored_at_end));
            figures.insert(
                "samples".into(),
                f.samples
                    .iter()
                    .map(|s| serde_json::json!({"batches": s.batches, "live_bytes": s.live_bytes, "answers_held": s.stored_answers}))
                    .collect(),
            );
            let title = format!(
                "soak: {batches} batches through the allocator core, {} edge workers",
                allocator_soak::WORKERS
            );
            report::emit("soak", &report::table(&title, &rows), figures, results_dir)?;
        }
        Bench::EdgeHotPath { runs, shakes } => {
            let f = edge_hot_path::run(runs, shakes, || ALLOCATOR.allocations());
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
            let title = format!(
                "edge hot path: decode, decide, batch, encode; {} phones, one core",
                edge_hot_path::PHONES
            );
            report::emit("edge-hot-path", &report::table(&title, &rows), figures, results_dir)?;
        }
        Bench::Handshake { run_ms, cores } => {
            let results = handshake_bench::run(
                Duration::from_millis(run_ms),
                cores.server(),
                cores.client_core,
            );
            let (table, figures) = handshake_bench::table_and_figures(&results);
            report::emit("handshake", &table, figures, results_dir)?;
        }
        Bench::Floor { seconds, cores } => {
            let f =
                floor::run(cores.server(), cores.client_core, Duration::from_secs(seconds), 256)?;
            let rows = vec![
                ("pairs per second (driven)".to_owned(), report::human_rate(f.pairs_per_s())),
                ("server core busy".to_owned(), format!("{:.0}%", f.server_busy() * 100.0)),
                ("server CPU per pair".to_owned(), format!("{:.3} us", f.cpu_us_per_pair())),
                ("pairs per busy server core".to_owned(), report::human_rate(f.max_pairs_per_s())),
            ];
            let mut figures = Map::new();
            figures.insert("floor_pairs_per_s".into(), Value::from(f.pairs_per_s().round()));
            figures.insert("floor_cpu_us_per_pair".into(), Value::from(f.cpu_us_per_pair()));
            figures
                .insert("floor_max_pairs_per_s".into(), Value::from(f.max_pairs_per_s().round()));
            figures.insert("server_busy".into(), Value::from(f.server_busy()));
            let title = format!(
                "floor: UDP request/reply, {}-byte payloads, recvmmsg/sendmmsg, server on core {}",
                floor::PAYLOAD,
                cores.server()
            );
            report::emit("floor", &report::table(&title, &rows), figures, results_dir)?;
        }
        Bench::Edge { load } => {
            let options = load.options();
            let f = edge_bench::run(&options)?;
            let (table, figures) = edge_bench::table_and_figures(&f, &options);
            report::emit("edge", &table, figures, results_dir)?;
        }
        Bench::Memory { phones, connect_rate, cores } => {
            let f = memory_bench::run(phones, connect_rate, cores.server(), cores.client_core)?;
            let (table, figures) = memory_bench::table_and_figures(&f);
            report::emit("memory", &table, figures, results_dir)?;
        }
        Bench::Latency { load, round_s } => {
            let (max, levels) = latency_bench::run(&load.options(), round_s)?;
            let (table, figures) = latency_bench::table_and_figures(max, &levels);
            report::emit("latency", &table, figures, results_dir)?;
        }
        Bench::Surge {
            phones,
            connect_rate,
            quota,
            quota_period_ms,
            overload,
            idle_s,
            surge_s,
            phone_rtt_ms,
            start_spread_ms,
            edge_set,
            cores,
        } => {
            let f = surge_bench::run(&surge_bench::SurgeOptions {
                phones,
                connect_rate,
                quota_share: quota,
                quota_period_us: quota_period_ms * 1000,
                overload,
                idle_s,
                surge_s,
                phone_rtt: Duration::from_millis(phone_rtt_ms),
                start_spread_ms,
                server_core: cores.server(),
                client_core: cores.client_core,
                edge_set,
            })?;
            let (table, figures) = surge_bench::table_and_figures(&f);
            if let Some(dir) = results_dir {
                std::fs::create_dir_all(dir)?;
                std::fs::write(dir.join("surge.svg"), surge_bench::svg(&f))?;
            }
            report::emit("surge", &table, figures, results_dir)?;
        }
        #[cfg(feature = "store-comparison")]
        Bench::LedgerStores { scratch } => {
            let cells = shake_bench::ledger_stores::run(&scratch);
            let rows: Vec<(String, String)> = cells
                .iter()
                .map(|c| {
                    (
                        format!("{:<6} {:>6} awards/commit", c.store, c.group),
                        format!("{} ({:.2} ms)", report::human_rate(c.awards_per_s), c.commit_ms),
                    )
                })
                .collect();
            let mut figures = Map::new();
            for c in &cells {
                figures.insert(
                    format!("{}_{}_awards_per_s", c.store, c.group),
                    Value::from(c.awards_per_s.round()),
                );
            }
            report::emit(
                "ledger-stores",
                &report::table("ledger stores: durable group commits", &rows),
                figures,
                results_dir,
            )?;
        }
    }
    Ok(())
}
