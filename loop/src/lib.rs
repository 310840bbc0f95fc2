//! `shake-loop`: a QUIC event loop that drives `quinn_proto` from one thread, with no task per
//! connection. The edge's workers and the swarm's phones both run on it.
//!
//! # Layout
//! - [`engine`]: the sans-IO core: an endpoint, its connections, one timer structure, the send
//!   queue; a [`Handler`](engine::Handler) is called inline with each application event.
//! - [`timers`]: every connection's deadline in one heap with lazy deletion and purging.
//! - [`cid`]: connection IDs that name their worker, and which worker a datagram is for.
//! - [`driver`]: the I/O loop: one socket, one engine, a [`Shell`](driver::Shell) for what
//!   comes from outside; batched receive and send, one wait per turn, its busy share.
//! - [`scratch_datagrams`]: DATAGRAM frames cut from one reused buffer, copied only for a
//!   connection whose datagrams queue (so it cannot keep the buffer alive).
//! - [`udp`]: the system calls (`recvmmsg`, `sendmmsg`, `ppoll`, `eventfd`): the crate's only
//!   `unsafe`.

pub mod cid;
pub mod driver;
pub mod engine;
pub mod scratch_datagrams;
pub mod timers;
pub mod udp;

pub use driver::{Driver, Flow, Shell};
pub use engine::{AppEvent, Engine, Handler, IncomingDecision};
/// The QUIC state machine the loop drives (its types appear in the handler's signature).
pub use quinn_proto;
