//! `shake-bench`: runs one named benchmark, prints a table and ends with one JSON line.
//!
//! `scripts/bench.sh NAME` is the usual way in: it builds in release mode and pins cores.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{Map, Value};
use shake_bench::{proto_bench, report};

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
    }
    Ok(())
}
