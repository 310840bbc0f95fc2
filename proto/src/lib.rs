//! `shake-proto`: every byte that crosses a Shake network, as pure functions on bytes.
//!
//! No sockets, no async runtime, no clock: time comes in as an argument. Decoders never panic
//! on any input, never allocate in proportion to a length before checking it against a limit
//! ([`limits`]), and answer either [`DecodeError::Incomplete`] (read more) or a typed error.
//! The byte-level specification is `docs/PROTOCOL.md`; its hex examples are checked against
//! this crate by `tests/golden.rs`.
//!
//! # Layout
//! - [`varint`]: QUIC variable-length integers, the one integer encoding.
//! - [`frame`]: `type | length | payload` stream framing with length limits.
//! - [`control`]: the phone's control stream (ALPN [`PHONE_ALPN`]).
//! - [`datagram`]: shakes and outcomes as QUIC DATAGRAM payloads.
//! - [`allocator`]: edge <-> allocator frames (ALPN [`ALLOCATOR_ALPN`]), batches and results.
//! - [`token`]: HMAC-signed session tokens, minted and verified with a key ring.
//! - [`ErrorCode`]: QUIC application error codes.
//! - [`limits`]: every size limit.
//! - `fuzz_checks`: decoder properties shared by `fuzz/` and the corpus replay test.
//! - `types`: prizes, round state and verdicts shared by several messages.

pub mod allocator;
pub mod control;
pub mod datagram;
mod error;
mod error_code;
pub mod frame;
#[doc(hidden)]
pub mod fuzz_checks;
pub mod limits;
mod reader;
pub mod token;
mod types;
pub mod varint;

pub use allocator::{
    AllocatorFrame, Batch, BatchDigest, BatchEntry, BatchWriter, OwedAward, VerdictCounts, Winner,
};
pub use control::ControlFrame;
pub use datagram::{Datagram, Outcome, Outcomes, Shake};
pub use error::DecodeError;
pub use error_code::ErrorCode;
pub use token::{Claims, KeyRing, TokenError};
pub use types::{Prize, RoundInfo, RoundPhase, Verdict};

/// SplitMix64's finaliser: a fast, well-mixed 64-bit hash (the draw's randomness, a user's
/// place in a start spread, a phone's retry jitter).
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A phone waits a slow-down's `retry_after_ms`, and keeps the paced interval, plus up to this
/// share of it as jitter of its own (docs/PROTOCOL.md, "Pacing under load"): phones slowed
/// down or paced in one burst come back spread out, and an edge knows they are all back
/// within `(1 + share) * retry`.
pub const SLOW_DOWN_JITTER_SHARE: f64 = 0.25;

/// ALPN of the phone <-> edge protocol.
pub const PHONE_ALPN: &[u8] = b"shake/2";
/// ALPN of the edge <-> allocator protocol.
pub const ALLOCATOR_ALPN: &[u8] = b"shake-alloc/3";
