//! Values that appear inside several messages: prizes, round state and shake verdicts, with
//! their encodings.

use bytes::BytesMut;

use crate::limits::MAX_SKU;
use crate::reader::{Reader, put_bytes};
use crate::{DecodeError, varint};

/// What an award pays.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Prize {
    /// A red envelope: an amount of cash in cents.
    Cash {
        /// Amount in cents, at least 1.
        cents: u64,
    },
    /// A gift, by stock-keeping unit (UTF-8, at most [`MAX_SKU`] bytes).
    Gift {
        /// The gift's SKU.
        sku: String,
    },
}

const PRIZE_CASH: u8 = 0;
const PRIZE_GIFT: u8 = 1;

impl Prize {
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        match self {
            Prize::Cash { cents } => {
                out.extend_from_slice(&[PRIZE_CASH]);
                varint::put(out, *cents);
            }
            Prize::Gift { sku } => {
                assert!(sku.len() <= MAX_SKU, "gift SKU longer than {MAX_SKU} bytes");
                out.extend_from_slice(&[PRIZE_GIFT]);
                put_bytes(out, sku.as_bytes());
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8()? {
            PRIZE_CASH => Ok(Prize::Cash { cents: r.varint()? }),
            PRIZE_GIFT => Ok(Prize::Gift { sku: r.text("sku", MAX_SKU)?.to_owned() }),
            _ => Err(DecodeError::InvalidValue("prize kind")),
        }
    }
}

/// Where a round is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoundPhase {
    /// No round is known (round id 0) or the round has not opened yet.
    Waiting = 0,
    /// Shakes are accepted.
    Open = 1,
    /// The round has ended; shakes are answered with round-closed.
    Closed = 2,
}

impl RoundPhase {
    fn from_u8(tag: u8) -> Result<Self, DecodeError> {
        match tag {
            0 => Ok(Self::Waiting),
            1 => Ok(Self::Open),
            2 => Ok(Self::Closed),
            _ => Err(DecodeError::InvalidValue("round phase")),
        }
    }
}

/// The state of one round as phones and edges see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoundInfo {
    /// Round id; 0 means "no round".
    pub round_id: u32,
    /// Where the round is.
    pub phase: RoundPhase,
    /// Opening time, Unix milliseconds.
    pub starts_at_ms: u64,
    /// Closing time, Unix milliseconds.
    pub ends_at_ms: u64,
}

impl RoundInfo {
    /// "No round scheduled".
    pub const NONE: RoundInfo =
        RoundInfo { round_id: 0, phase: RoundPhase::Waiting, starts_at_ms: 0, ends_at_ms: 0 };

    pub(crate) fn encode(&self, out: &mut BytesMut) {
        varint::put(out, u64::from(self.round_id));
        out.extend_from_slice(&[self.phase as u8]);
        varint::put(out, self.starts_at_ms);
        varint::put(out, self.ends_at_ms);
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            round_id: r.varint_u32("round id")?,
            phase: RoundPhase::from_u8(r.u8()?)?,
            starts_at_ms: r.varint()?,
            ends_at_ms: r.varint()?,
        })
    }
}

/// The edge's answer to one shake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Not a winner this time.
    NoLuck,
    /// Shaking too fast (or the edge is saturated): wait before the next shake.
    SlowDown {
        /// How long to wait, milliseconds.
        retry_after_ms: u32,
    },
    /// No round is open.
    RoundClosed,
    /// Sent on to the allocator; if it wins, an `Award` follows on the control stream.
    Forwarded,
}

const VERDICT_NO_LUCK: u8 = 0;
const VERDICT_SLOW_DOWN: u8 = 1;
const VERDICT_ROUND_CLOSED: u8 = 2;
const VERDICT_FORWARDED: u8 = 3;

impl Verdict {
    /// A short, fixed name for metric labels and reports.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::NoLuck => "no_luck",
            Verdict::SlowDown { .. } => "slow_down",
            Verdict::RoundClosed => "round_closed",
            Verdict::Forwarded => "forwarded",
        }
    }

    pub(crate) fn encode(&self, out: &mut BytesMut) {
        match self {
            Verdict::NoLuck => out.extend_from_slice(&[VERDICT_NO_LUCK]),
            Verdict::SlowDown { retry_after_ms } => {
                out.extend_from_slice(&[VERDICT_SLOW_DOWN]);
                varint::put(out, u64::from(*retry_after_ms));
            }
            Verdict::RoundClosed => out.extend_from_slice(&[VERDICT_ROUND_CLOSED]),
            Verdict::Forwarded => out.extend_from_slice(&[VERDICT_FORWARDED]),
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8()? {
            VERDICT_NO_LUCK => Ok(Verdict::NoLuck),
            VERDICT_SLOW_DOWN => {
                Ok(Verdict::SlowDown { retry_after_ms: r.varint_u32("retry after")? })
            }
            VERDICT_ROUND_CLOSED => Ok(Verdict::RoundClosed),
            VERDICT_FORWARDED => Ok(Verdict::Forwarded),
            _ => Err(DecodeError::InvalidValue("verdict")),
        }
    }
}
