//! `shake-edge`: the edge node at a CDN point of presence. It terminates QUIC from phones,
//! checks session tokens, answers most shakes itself under token-bucket admission, and sends
//! the admitted few to the allocator in compact batches over persistent streams.
//!
//! # Layout
//! - [`bucket`]: the token bucket (sans-IO).
//! - [`admission`]: the per-shake decision (sans-IO).
//! - [`batcher`]: batches, in-flight bookkeeping and resends (sans-IO).
//! - [`uplink`]: what a worker writes to the allocator next, and what its answers mean (sans-IO).
//! - [`award_book`]: which awards went to which user, so only the winner can acknowledge.
//! - [`core`]: one worker's state machine: phones, shakes, answers, acknowledgements (sans-IO).
//! - [`phones`]: a worker's connected phones (a generational slab).
//! - [`config`]: the TOML configuration and its validation.
//! - [`event_loop`]: one worker on the `shake-loop` event loop: sessions decided inline, no
//!   task per phone.
//! - [`link_pipe`]: an event-loop worker's allocator stream, on the allocator-link thread.
//! - [`leader_search`]: which allocator the link dials next, and when (sans-IO).
//! - [`shared`]: what every worker shares (configuration, keys, metrics, sessions by user).
//! - [`service`]: sockets (SO_REUSEPORT), TLS, the allocator link, workers, metrics.
//! - [`metrics`]: Prometheus metrics.
//! - [`outbox`]: a phone's queue of control frames (awards, round notices).
//! - [`sources`]: per-source handshake limits (sans-IO).
//! - [`handshakes`]: whether an attempt may start its handshake (caps, Retry, sources).

pub mod admission;
pub mod award_book;
pub mod batcher;
pub mod bucket;
pub mod config;
pub mod core;
pub mod cpu_allowance;
pub mod event_loop;
pub mod handed_to_link;
pub mod handshakes;
pub mod keyed_hkdf;
pub mod lazy_keys;
pub mod leader_search;
pub mod link_pipe;
pub mod metrics;
pub mod outbox;
pub mod overload;
pub mod phone_session;
pub mod phones;
pub mod service;
pub mod shared;
pub mod sources;
pub mod uplink;
pub mod user_sessions;
