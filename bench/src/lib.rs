//! `shake-bench`: the benchmark harness, micro-benchmarks and (later) the phone swarm.
//!
//! # Layout
//! - [`report`]: what every benchmark prints: a readable table, one JSON line at the end, and
//!   the same JSON under `bench/results/<name>.json` with a description of the machine.
//! - [`stats`]: medians and rates over repeated timed runs.
//! - [`proto_bench`]: encoding and decoding a 1,024-entry `Batch`.

pub mod proto_bench;
pub mod report;
pub mod stats;
