//! `shake-bench`: the benchmark harness and micro-benchmarks. The phones come from
//! `shake-swarm` (and `shake-client` on `shake-loop`, in [`loop_load`]).
//!
//! # Layout
//! - [`report`]: what every benchmark prints: a readable table, one JSON line at the end, and
//!   the same JSON under `bench/results/<name>.json` with a description of the machine.
//! - [`stats`]: medians and rates over repeated timed runs.
//! - [`proto_bench`]: encoding and decoding a 1,024-entry `Batch`.
//! - [`allocator_bench`]: the draw's decisions per second and durable awards per second.
//! - [`edge_hot_path`]: one shake through the edge's own code, with [`counting_alloc`].
//! - [`floor`]: the UDP floor (recvmmsg/sendmmsg echo) every per-message cost is compared to.
//! - [`edge_bench`]: the real edge against a quinn echo, a stream-per-shake design and the floor,
//!   with `shake_testkit::fixture` (real allocator and edge processes), [`quinn_echo`],
//!   [`loop_load`] (the phones on `shake-loop`, through `shake-client`), [`loadgen`],
//!   [`window`] (the steady-state window) and [`procfs`].
//! - [`latency_bench`]: shake-to-outcome and -award latency at 50% and 80% of the edge's maximum.
//! - [`memory_bench`]: the edge's memory per idle connected phone up to 100,000 phones.
//! - [`handshake_bench`]: QUIC handshakes per second for several TLS configurations.
//! - `ledger_stores` (feature `store-comparison`): redb, fjall and SQLite group commits.
//! - [`sys`]: pinning, thread CPU time and batched UDP system calls (the one `unsafe` module
//!   beside [`counting_alloc`]).

pub mod allocator_bench;
pub mod allocator_soak;
pub mod counting_alloc;
pub mod cpu_quota;
pub mod edge_bench;
pub mod edge_hot_path;
pub mod floor;
pub mod handshake_bench;
pub mod latency_bench;
#[cfg(feature = "store-comparison")]
pub mod ledger_stores;
pub mod loadgen;
pub mod loop_load;
pub mod memory_bench;
pub mod procfs;
pub mod proto_bench;
pub mod quinn_echo;
pub mod report;
pub mod stats;
pub mod surge_bench;
pub mod sys;
pub mod window;
