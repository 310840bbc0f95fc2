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
    /// Phones start shaking staggered over this window after the opening, milliseconds: each
    /// phone's own start is [`RoundInfo::start_for`] its user (0: all at the opening).
    pub start_spread_ms: u32,
}

impl RoundInfo {
    /// "No round scheduled".
    pub const NONE: RoundInfo = RoundInfo {
        round_id: 0,
        phase: RoundPhase::Waiting,
        starts_at_ms: 0,
        ends_at_ms: 0,
        start_spread_ms: 0,
    };

    /// When user `user_id`'s phone starts shaking in this round, Unix milliseconds: the
    /// opening plus a hash of the user and the round into the start spread, so a crowd that
    /// heard "shake now" at one instant arrives spread evenly over the window, and each phone
    /// at a different place in it each round.
    /// A spread as long as the round or longer (no allocator sends one) counts as the round's
    /// length, so that every phone starts before the close.
    pub fn start_for(&self, user_id: u64) -> u64 {
        let length = self.ends_at_ms.saturating_sub(self.starts_at_ms);
        let spread = u64::from(self.start_spread_ms).min(length);
        if spread == 0 {
            return self.starts_at_ms;
        }
        // Well spread for sequential user ids.
        let z = crate::mix(user_id ^ (u64::from(self.round_id) << 40));
        self.starts_at_ms + z % spread
    }

    pub(crate) fn encode(&self, out: &mut BytesMut) {
        varint::put(out, u64::from(self.round_id));
        out.extend_from_slice(&[self.phase as u8]);
        varint::put(out, self.starts_at_ms);
        varint::put(out, self.ends_at_ms);
        varint::put(out, u64::from(self.start_spread_ms));
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            round_id: r.varint_u32("round id")?,
            phase: RoundPhase::from_u8(r.u8()?)?,
            starts_at_ms: r.varint()?,
            ends_at_ms: r.varint()?,
            start_spread_ms: r.varint_u32("start spread")?,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_spread_places_each_user_evenly_and_stably_in_the_window() {
        let round = RoundInfo {
            round_id: 3,
            phase: RoundPhase::Open,
            starts_at_ms: 1_000_000,
            ends_at_ms: 1_060_000,
            start_spread_ms: 2_000,
        };
        let mut per_quarter = [0u32; 4];
        for user in 1..=10_000u64 {
            let start = round.start_for(user);
            assert!((1_000_000..1_002_000).contains(&start), "user {user}: {start}");
            assert_eq!(start, round.start_for(user), "the same user, the same place");
            per_quarter[((start - 1_000_000) / 500) as usize] += 1;
        }
        for n in per_quarter {
            assert!((2_300..=2_700).contains(&n), "uneven spread: {per_quarter:?}");
        }
        let next = RoundInfo { round_id: 4, ..round };
        let moved = (1..=1_000u64).filter(|&u| next.start_for(u) != round.start_for(u)).count();
        assert!(moved > 990, "a user's place changes from round to round ({moved} of 1,000)");
        let at_once = RoundInfo { start_spread_ms: 0, ..round };
        assert_eq!(at_once.start_for(7), 1_000_000);
        // A spread longer than the round (a bad edge's, or a corrupted one) still starts every
        // phone before the close.
        let too_long = RoundInfo { start_spread_ms: u32::MAX, ..round };
        assert!((1..=1_000u64).all(|u| too_long.start_for(u) < round.ends_at_ms));
        let empty = RoundInfo { ends_at_ms: round.starts_at_ms, ..too_long };
        assert_eq!(empty.start_for(7), round.starts_at_ms);
    }
}
