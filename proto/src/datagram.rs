//! Phone <-> edge QUIC DATAGRAM payloads: a `Shake` from the phone, a list of `Outcome`s back.
//!
//! A datagram is `type (varint) | body`. The same bodies travel in `Shake` and `Outcomes`
//! frames on the control stream when a phone's peer lacks datagram support.
//! Decoding a datagram allocates nothing: the outcome list borrows the payload.

use bytes::BytesMut;

use crate::limits::MAX_DATAGRAM;
use crate::reader::Reader;
use crate::{DecodeError, Verdict, varint};

/// Datagram type of a [`Shake`].
pub const DATAGRAM_SHAKE: u64 = 0x01;
/// Datagram type of an outcome list.
pub const DATAGRAM_OUTCOMES: u64 = 0x02;

/// One shake of one phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shake {
    /// The round the phone believes is open.
    pub round_id: u32,
    /// Per-connection sequence number, chosen by the phone; echoed in the outcome.
    pub seq: u64,
    /// The phone's clock at the shake, Unix milliseconds (informational only).
    pub client_time_ms: u64,
}

impl Shake {
    pub(crate) fn encode_body(&self, out: &mut BytesMut) {
        varint::put(out, u64::from(self.round_id));
        varint::put(out, self.seq);
        varint::put(out, self.client_time_ms);
    }

    pub(crate) fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            round_id: r.varint_u32("round id")?,
            seq: r.varint()?,
            client_time_ms: r.varint()?,
        })
    }

    /// Appends this shake as a complete datagram payload.
    pub fn encode_datagram(&self, out: &mut BytesMut) {
        varint::put(out, DATAGRAM_SHAKE);
        self.encode_body(out);
    }
}

/// The answer to the shake with sequence number `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Outcome {
    /// The shake's sequence number.
    pub seq: u64,
    /// What the edge decided.
    pub verdict: Verdict,
}

impl Outcome {
    /// The most bytes one outcome can take in a list.
    pub const MAX_ENCODED_LEN: usize = 8 + 1 + 8;

    /// Appends this outcome to a list body.
    pub fn encode(&self, out: &mut BytesMut) {
        varint::put(out, self.seq);
        self.verdict.encode(out);
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self { seq: r.varint()?, verdict: Verdict::decode(r)? })
    }
}

/// A validated, non-empty list of outcomes over bytes `B` (borrowed from a datagram, or owned
/// `Bytes` from a control frame). Iterating it cannot fail: the bytes were checked on decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcomes<B> {
    body: B,
    len: usize,
}

impl<B: AsRef<[u8]>> Outcomes<B> {
    /// Checks `body` holds one or more well-formed outcomes and nothing else.
    pub(crate) fn validate(body: B) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body.as_ref());
        let mut len = 0;
        while !r.is_empty() {
            Outcome::decode(&mut r)?;
            len += 1;
        }
        if len == 0 {
            return Err(DecodeError::InvalidValue("outcomes"));
        }
        Ok(Self { body, len })
    }

    /// How many outcomes the list holds (at least one).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: an empty list does not decode.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The encoded body.
    pub fn body(&self) -> &[u8] {
        self.body.as_ref()
    }

    /// The outcomes in order.
    pub fn iter(&self) -> impl Iterator<Item = Outcome> + '_ {
        let mut r = Reader::new(self.body.as_ref());
        std::iter::from_fn(move || {
            // invariant: `validate` decoded these same bytes without error.
            (!r.is_empty()).then(|| Outcome::decode(&mut r).ok()).flatten()
        })
    }
}

/// Appends a complete outcome-list datagram payload.
///
/// # Panics
/// If `outcomes` is empty: an empty list is not a valid message.
pub fn encode_outcomes(out: &mut BytesMut, outcomes: &[Outcome]) {
    assert!(!outcomes.is_empty(), "an outcome list holds at least one outcome");
    varint::put(out, DATAGRAM_OUTCOMES);
    for outcome in outcomes {
        outcome.encode(out);
    }
}

/// A decoded datagram payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// Phone to edge.
    Shake(Shake),
    /// Edge to phone.
    Outcomes(Outcomes<&'a [u8]>),
}

/// Decodes one datagram payload. Allocates nothing.
pub fn decode(payload: &[u8]) -> Result<Datagram<'_>, DecodeError> {
    if payload.len() > MAX_DATAGRAM {
        return Err(DecodeError::FrameTooLarge { len: payload.len() as u64, max: MAX_DATAGRAM });
    }
    let mut r = Reader::new(payload);
    match r.varint()? {
        DATAGRAM_SHAKE => {
            let shake = Shake::decode_body(&mut r)?;
            r.finish()?;
            Ok(Datagram::Shake(shake))
        }
        DATAGRAM_OUTCOMES => Ok(Datagram::Outcomes(Outcomes::validate(r.remaining())?)),
        other => Err(DecodeError::UnknownType(other)),
    }
}
