//! `shake-bench`: runs one named system benchmark, prints a table and ends with one JSON line.
//!
//! `scripts/bench.sh NAME` is the usual way in: it builds in release mode and pins cores. The
//! micro-benchmarks (`proto`, `allocator`, `edge-hot-path`, `soak`) are `cargo bench` targets
//! beside their crates; `scripts/bench.sh` runs those too.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{Map, Value};
use shake_bench::{
    edge_bench, floor, handshake_bench, latency_bench, memory_bench, report, surge_bench,
};

#[derive(Parser, Debug)]
#[command(
    name = "shake-bench",
    about = "Shake system benchmarks: the real processes over real sockets",
    version
)]
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
    /// Full and resumed QUIC handshakes on one server core: quinn's default configuration, the
    /// edge's (on `shake-loop`, as it runs, and on quinn/tokio), and several TLS choices (suite
    /// order, key exchange, tickets, crypto library, certificate key); beside each, the
    /// server's time per full handshake in memory (no socket, no client on its core).
    Handshake {
        /// Length of each measurement, milliseconds.
        #[arg(long, default_value_t = 3000)]
        run_ms: u64,
        /// Measure only the first N configurations of the table (2: quinn's default and the
        /// edge, the pair `hs_ratio_vs_quinn_default` compares; for quick A/B runs, with
        /// --no-write: the results file holds the whole table).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(2..))]
        first: Option<u64>,
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
    /// Shake-to-outcome and shake-to-award latency with the edge's core 20%, 50% and 80% busy
    /// (the offer from its maximum rate, measured first in the same run, and raised up to
    /// twice where a level falls short of its share).
    Latency {
        #[command(flatten)]
        load: LoadArgs,
        /// Length of each level's round, seconds.
        #[arg(long, default_value_t = 20)]
        round_s: u64,
    },
    /// The round-open surge: phones idle, then every one wanting to shake at once at a
    /// multiple of the edge's capacity (the edge under a CPU quota, its capacity measured
    /// first and given to it as `shakes_per_core_s`, so it paces its phones before the
    /// opening; `--edge-set 'shakes_per_core_s = 0.0'` leaves it to react only); per second:
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
    /// An edge configuration line to set, `key = value` (repeatable), e.g.
    /// `--edge-set 'batch_delay_us = 400'`.
    #[arg(long)]
    edge_set: Vec<String>,
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
            edge_set: self.edge_set.clone(),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli: Cli = shake_ops::exit::command_line();
    let results_dir = (!cli.no_write).then_some(cli.results_dir.as_path());
    match cli.bench {
        Bench::Handshake { run_ms, first, cores } => {
            if first.is_some() && results_dir.is_some() {
                // The results file is the whole table's: a part of it must not replace it.
                eprintln!("shake-bench: --first measures part of the table: give --no-write too");
                std::process::exit(i32::from(shake_ops::config::EXIT_USAGE));
            }
            let results = handshake_bench::run(
                Duration::from_millis(run_ms),
                first.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX)),
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
            let options = load.options();
            let (max, levels) = latency_bench::run(&options, round_s)?;
            let (mut table, mut figures) = latency_bench::table_and_figures(max, &levels);
            let fifo = latency_bench::fifo_in_effect(&options.edge_set);
            table += &format!(
                "edge workers at worker_fifo_priority = {fifo} (0: the normal scheduler; 10 by \
                 default as root)\n"
            );
            figures.insert("worker_fifo_priority".into(), fifo.into());
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
