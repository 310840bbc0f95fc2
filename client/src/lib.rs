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
//! - [`reconnect`]: when and where to connect next (sans-IO too).
//! - [`liveness`]: whether the edge behind a live connection is still there.
//! - `quinn_driver` (feature `quinn`, on by default): both over quinn and tokio, for a Rust
//!   app or a desktop client; `shake-phone` is its terminal example.
//!
//! docs/CLIENT.md says the behaviour in plain words for app teams.

pub mod liveness;
pub mod reconnect;
pub mod session;

#[cfg(feature = "quinn")]
pub mod quinn_driver;

pub use liveness::EdgeSilence;
pub use reconnect::{ConnectionEnd, NextConnect, Reconnect, ReconnectSettings};
pub use session::{EndReason, PhoneSession, SessionEvent, ShakePath, ShakeRefusal};
