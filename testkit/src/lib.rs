//! `shake-testkit`: one kit that starts the real binaries for every integration test, script
//! test and end-to-end benchmark. Test helpers panic with a message that says what failed; the
//! benchmark fixture returns errors, as the benchmarks do.
//!
//! # Layout
//! - [`processes`]: the built binaries ([`processes::bin_dir`]), a binary run as a child
//!   process up to its ready line, the `key=value` fields of that line, kill and SIGTERM.
//! - [`servers`]: the allocator and the edge as processes, known by the addresses their ready
//!   lines name.
//! - [`scratch`]: a temporary directory with dev certificates and configuration files.
//! - [`failpoints`]: failpoints that hold a binary's thread, and the wait for their hold.
//! - [`metrics`]: scraping a `/metrics` endpoint, reading one metric, waiting for it.
//! - [`tokens`]: the dev key ring and session tokens signed with it.
//! - [`world`]: an allocator and an edge on loopback, for the edge's integration tests.
//! - [`phone`]: a test phone, a quinn client speaking the phone protocol to an edge.
//! - [`edge_link`]: an edge worker's side of the allocator link, for the allocator's tests.
//! - [`first_flight`]: handshakes begun and never finished, for both servers' defences.
//! - `stream`: reading whole frames off a QUIC stream, for the two above.
//! - [`pg_server`]: throwaway PostgreSQL servers.
//! - [`scripts`]: the repository's scripts, run to their final JSON line.
//! - [`fixture`]: an allocator and an edge for the benchmarks that measure the edge end to end.

pub mod edge_link;
pub mod failpoints;
pub mod first_flight;
pub mod fixture;
pub mod metrics;
pub mod pg_server;
pub mod phone;
pub mod processes;
pub mod scratch;
pub mod scripts;
pub mod servers;
mod stream;
pub mod tokens;
pub mod world;

use std::time::{SystemTime, UNIX_EPOCH};

/// The wall clock in Unix milliseconds, as rounds, batches and tokens count time.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("a clock after 1970").as_millis() as u64
}
