//! `shake-benchkit`: what every Shake benchmark shares, so that the micro-benchmarks can live
//! beside the crate they measure (`proto/benches`, `edge/benches`, `allocator/benches`) and the
//! system benchmarks in `shake-bench` print the same way.
//!
//! - [`report`]: a readable table, then exactly one JSON line, also written to
//!   `bench/results/<name>.json` with a description of the machine.
//! - [`stats`]: medians of repeated runs, rates and ratios.
//! - [`cli`]: the arguments every micro-benchmark takes, and whether `cargo bench` (a full
//!   run) or `cargo test` (a short check that the benchmark still measures) started it.
//! - [`workload`]: production-like batch entries.
//! - [`counting_alloc`]: a global allocator that counts, installed only by the benchmarks
//!   whose figure is an allocation or heap-byte count.

pub mod cli;
pub mod counting_alloc;
pub mod report;
pub mod stats;
pub mod workload;
