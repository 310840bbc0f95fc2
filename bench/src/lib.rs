//! `shake-bench`: the benchmark harness, micro-benchmarks and the phone swarm.
//!
//! # Layout
//! - [`report`]: what every benchmark prints: a readable table, one JSON line at the end, and
//!   the same JSON under `bench/results/<name>.json` with a description of the machine.
//! - [`stats`]: medians and rates over repeated timed runs.
//! - [`proto_bench`]: encoding and decoding a 1,024-entry `Batch`.
//! - [`allocator_bench`]: the draw's decisions per second and durable awards per second.
//! - [`edge_hot_path`]: one shake through the edge's own code, with [`counting_alloc`].
//! - [`handshake_bench`]: QUIC handshakes per second for several TLS configurations.
//! - `ledger_stores` (feature `store-comparison`): redb, fjall and SQLite group commits.
//! - [`relay`]: the UDP relay behind `shake-relay` that drops, delays and cuts traffic.
//! - [`swarm`]: the phone swarm behind `shake-swarm`.

pub mod allocator_bench;
pub mod counting_alloc;
pub mod edge_hot_path;
pub mod handshake_bench;
#[cfg(feature = "store-comparison")]
pub mod ledger_stores;
pub mod proto_bench;
pub mod relay;
pub mod report;
pub mod stats;
pub mod swarm;
