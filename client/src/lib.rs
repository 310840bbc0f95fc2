//! `shake-client`: the phone's side of the Shake protocol (docs/PROTOCOL.md), sans-IO.
//!
//! A [`PhoneSession`] is one session on one QUIC connection: the driver (a quinn task, the
//! swarm's event loop, a phone app's own QUIC stack) opens the control stream, hands the
//! session the bytes and datagrams that arrive and the time, and writes out what the session
//! queues. The session owns the protocol's rules: `Hello` first, nothing before `Welcome`,
//! shakes no more often than the interval the edge pushed, slow-down obeyed, awards held
//! until acknowledged, `GoAway` and `Error` turned into a reason to end.
//!
//! # Layout
//! - [`session`]: the state machine and its events.

pub mod session;

pub use session::{EndReason, PhoneSession, SessionEvent, ShakeRefusal};
