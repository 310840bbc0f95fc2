//! `shake-bench`: runs one named benchmark, prints a table and ends with one JSON line.
//!
//! `scripts/bench.sh NAME` is the usual way in: it builds in release mode and pins cores.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{Map, Value};
use shake_bench::counting_alloc::CountingAlloc;
use shake_bench::{allocator_bench, edge_hot_path, handshake_bench, proto_bench, report};

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
    /// Full and resumed QUIC handshakes per second, one server thread, for several TLS
    /// configurations (cipher-suite order, key exchange) of the ring provider.
    Handshake {
        /// Length of each measurement, milliseconds.
        #[arg(long, default_value_t = 3000)]
        run_ms: u64,
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
            // The slowest group size measured: the figure holds whatever groups the load forms.
            let durable =
                f.durable_by_group.iter().map(|(_, _, r)| *r).fold(f64::INFINITY, f64::min);
            let durable = if durable.is_finite() { durable } else { 0.0 };
            let mut figures = Map::new();
            figures.insert("runs".into(), Value::from(runs));
            figures.insert("decisions_per_s".into(), Value::from(f.decisions_per_s.round()));
            figures.insert("win_ratio".into(), Value::from(f.win_ratio));
            figures.insert("durable_awards_per_s".into(), Value::from(durable.round()));
            figures.insert(
                "durable_by_group".into(),
                f.durable_by_group
                    .iter()
                    .map(|(g, a, r)| serde_json::json!({"batches": g, "awards": a, "awards_per_s": r.round()}))
                    .collect(),
            );
            figures.insert(
                "target_met".into(),
                Value::from(f.decisions_per_s >= 5e6 && durable >= 2e5),
            );
            let title =
                format!("allocator: draw on one core (median of {runs}), ledger with fsync");
            report::emit("allocator", &report::table(&title, &rows), figures, results_dir)?;
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
        Bench::Handshake { run_ms } => {
            let results = handshake_bench::run(Duration::from_millis(run_ms));
            let mut rows = Vec::new();
            let mut figures = Map::new();
            for (i, r) in results.iter().enumerate() {
                rows.push((
                    format!("{}: full", r.name),
                    format!("{:.0}/s, {:.0} us server CPU", r.full_per_s, r.full_server_us),
                ));
                rows.push((
                    format!("{}: resumed", r.name),
                    format!("{:.0}/s, {:.0} us server CPU", r.resumed_per_s, r.resumed_server_us),
                ));
                figures.insert(
                    format!("variant_{i}"),
                    serde_json::json!({
                        "name": r.name,
                        "full_hs_per_s": r.full_per_s.round(),
                        "full_server_cpu_us": r.full_server_us.round(),
                        "resumed_hs_per_s": r.resumed_per_s.round(),
                        "resumed_server_cpu_us": r.resumed_server_us.round(),
                    }),
                );
            }
            let title = "handshake: QUIC + TLS 1.3, ECDSA P-256 certificate, one server thread";
            report::emit("handshake", &report::table(title, &rows), figures, results_dir)?;
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
