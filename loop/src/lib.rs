//! `shake-loop`: a QUIC event loop that drives `quinn_proto` from one thread, with no task per
//! connection. The edge's workers and the swarm's phones both run on it.
//!
//! # Layout
//! - [`engine`]: the sans-IO core: an endpoint, its connections, one timer structure, the send
//!   queue; a [`Handler`](engine::Handler) is called inline with each application event.
//! - [`timers`]: every connection's deadline in one heap with lazy deletion and purging.
//! - [`cid`]: connection IDs that name their worker, and which worker a datagram is for.

pub mod cid;
pub mod engine;
pub mod timers;

pub use engine::{AppEvent, Engine, Handler, IncomingDecision};
