//! The command line every micro-benchmark (a `harness = false` bench target) shares.
//!
//! `cargo bench` passes `--bench` to the target: that is a full run, whose figures are printed
//! and written under `bench/results/`. `cargo test --all-targets` runs the same target without
//! it: then the benchmark runs briefly, checks that what it measures still holds together, and
//! writes nothing (a timing is never asserted).

use std::path::{Path, PathBuf};

/// Arguments common to every micro-benchmark; flatten it into the benchmark's own parser.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Where to write `<name>.json` (default: the workspace's `bench/results`).
    #[arg(long)]
    pub results_dir: Option<PathBuf>,
    /// Do not write a results file.
    #[arg(long)]
    pub no_write: bool,
    /// Set by `cargo bench`: a full run. Without it (`cargo test`) the run is a short check.
    #[arg(long, hide = true)]
    pub bench: bool,
}

impl CommonArgs {
    /// Whether this is a full, measured run (`cargo bench`) rather than `cargo test`'s check.
    pub fn full_run(&self) -> bool {
        self.bench
    }

    /// Where the figures go: none for a check run or `--no-write`.
    pub fn results_dir(&self) -> Option<PathBuf> {
        if self.no_write || !self.bench {
            return None;
        }
        Some(self.results_dir.clone().unwrap_or_else(default_results_dir))
    }
}

/// The workspace's `bench/results`, wherever the benchmark runs from (cargo runs a bench
/// target in its own crate's directory).
pub fn default_results_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Probe {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn cargo_bench_is_a_full_run_that_writes() {
        let probe = Probe::parse_from(["x", "--bench"]);
        assert!(probe.common.full_run());
        assert_eq!(probe.common.results_dir(), Some(default_results_dir()));
        let probe = Probe::parse_from(["x", "--bench", "--results-dir", "/tmp/r"]);
        assert_eq!(probe.common.results_dir(), Some(PathBuf::from("/tmp/r")));
        let probe = Probe::parse_from(["x", "--bench", "--no-write"]);
        assert_eq!(probe.common.results_dir(), None);
    }

    #[test]
    fn cargo_test_is_a_check_that_writes_nothing() {
        let probe = Probe::parse_from(["x"]);
        assert!(!probe.common.full_run());
        assert_eq!(probe.common.results_dir(), None);
    }
}
