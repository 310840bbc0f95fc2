//! `shake-allocator`: the central allocator. It decides who wins, writes every award durably
//! before anyone hears of it, and never overspends a pool or pays twice, across restarts.
//!
//! # Layout
//! - [`config`]: the TOML configuration and its validation.
//! - [`split`]: the seeded "double mean" cash split.
//! - [`pool`]: one round's prizes in release order, released and available by kind.
//! - [`draw`]: the sans-IO draw over a batch, deterministic for a seed and input order.
//! - [`award`]: the award row and its stored encoding; [`export`]: award rows as JSON.
//! - [`owed`]: awards not yet acknowledged, by user, sent again when the user reconnects.
//! - [`quota`]: sharing the fleet's admission rate between edges.
//! - [`round_command`]: live round commands (go, extend, close, interval), checked and replayed.
//! - [`core`]: the sans-IO state machine: streams, batches, exactly-once answers, quotas.
//! - [`ledger`]: the durable ledger with group commit: fjall (embedded) or PostgreSQL (with a
//!   leader lease that fences the other allocators).
//! - `ha`: several allocators on one PostgreSQL ledger: standby, takeover, leadership terms.
//! - [`service`]: the I/O shell: QUIC endpoint, stream tasks, the actor, the commit thread.
//! - [`edge_handshakes`]: the QUIC port's defence: handshakes capped, Retry, a deadline.
//! - [`dev_certs`]: a development PKI so mutual TLS works out of the box.
//! - [`metrics`]: Prometheus metrics (served by `shake_ops::http`).
//! - [`admin`]: the admin API (live round commands, the audit log) on its own listener.

pub mod admin;
pub mod award;
pub mod config;
pub mod core;
pub mod dev_certs;
pub mod draw;
pub mod edge_handshakes;
pub mod export;
mod ha;
pub mod latency_window;
pub mod ledger;
pub mod metrics;
pub mod owed;
pub mod pool;
pub mod quota;
pub mod round_command;
pub mod service;
pub mod split;
pub mod user_rate;
