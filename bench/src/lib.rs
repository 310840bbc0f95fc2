//! `shake-bench`: the benchmark harness for the system benchmarks, which run the real
//! processes over real sockets. The phones are the swarm's on `shake-loop`
//! (`shake_swarm::loop_phones`, running `shake-client`). The micro-benchmarks live beside the
//! crate they measure (`proto/benches`, `edge/benches`, `allocator/benches`); what every
//! benchmark prints and its arithmetic are `shake-benchkit`'s, re-exported here as [`report`]
//! and [`stats`].
//!
//! # Layout
//! - [`floor`]: the UDP floor (recvmmsg/sendmmsg echo) every per-message cost is compared to.
//! - [`edge_bench`]: the real edge against a quinn echo, a stream-per-shake design and the floor,
//!   with `shake_testkit::fixture` (real allocator and edge processes), [`quinn_echo`],
//!   `shake_swarm::loop_phones` (the phones on `shake-loop`, through `shake-client`), [`loadgen`],
//!   [`window`] (the steady-state window) and [`procfs`].
//! - [`latency_bench`]: shake-to-outcome and -award latency at 50% and 80% of the edge's maximum,
//!   with [`hold_off`] (what held the edge off its core when its datagrams waited).
//! - [`memory_bench`]: the edge's memory per idle connected phone up to 100,000 phones.
//! - [`handshake_bench`]: QUIC handshakes per second for several TLS configurations.
//! - `ledger_stores` (feature `store-comparison`): redb, fjall and SQLite group commits.
//! - [`sys`]: pinning, thread CPU time and batched UDP system calls (the one `unsafe` module).

pub mod cpu_quota;
pub mod edge_bench;
pub mod floor;
pub mod handshake_bench;
pub mod handshake_in_memory;
pub mod hold_off;
pub mod latency_bench;
#[cfg(feature = "store-comparison")]
pub mod ledger_stores;
pub mod loadgen;
pub mod memory_bench;
pub mod procfs;
pub mod quinn_echo;
pub mod surge_bench;
pub mod sys;
pub mod window;

pub use shake_benchkit::{report, stats};
