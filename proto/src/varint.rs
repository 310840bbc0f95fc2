//! QUIC variable-length integers (RFC 9000 §16), the one integer encoding on every Shake wire.
//!
//! The two high bits of the first byte give the length (1, 2, 4 or 8 bytes); the rest is the
//! value, big-endian, at most 2^62 - 1. Encoders always write the shortest form; decoders accept
//! any form, as RFC 9000 allows.
//!
//! Why our own few lines rather than `quinn_proto::coding`: the batch decoder runs this once per
//! entry at tens of millions of entries per second, and works on a plain `&[u8]` with an
//! `Incomplete` answer distinct from malformed input. A test checks every encoding against
//! quinn-proto's `VarInt`, so the two cannot drift.

use bytes::BufMut;

use crate::DecodeError;

/// The largest value a varint can carry: 2^62 - 1.
pub const MAX: u64 = (1 << 62) - 1;

/// Number of bytes the shortest encoding of `value` takes.
///
/// # Panics
/// If `value` exceeds [`MAX`]. Values that reach an encoder come from our own state or from a
/// decoder, so both are in range; a larger one is a bug in the caller.
#[inline]
pub fn encoded_len(value: u64) -> usize {
    if value < 1 << 6 {
        1
    } else if value < 1 << 14 {
        2
    } else if value < 1 << 30 {
        4
    } else {
        assert!(value <= MAX, "varint value {value} exceeds 2^62-1");
        8
    }
}

/// Appends the shortest encoding of `value`.
///
/// # Panics
/// If `value` exceeds [`MAX`] (see [`encoded_len`]).
#[inline]
pub fn put<B: BufMut + ?Sized>(out: &mut B, value: u64) {
    match encoded_len(value) {
        1 => out.put_u8(value as u8),
        2 => out.put_u16(0x4000 | value as u16),
        4 => out.put_u32(0x8000_0000 | value as u32),
        _ => out.put_u64(0xc000_0000_0000_0000 | value),
    }
}

/// Decodes one varint from the front of `buf`: the value and the bytes it took.
///
/// Returns [`DecodeError::Incomplete`] when `buf` ends inside the varint.
#[inline]
pub fn decode(buf: &[u8]) -> Result<(u64, usize), DecodeError> {
    let Some(&first) = buf.first() else {
        return Err(DecodeError::Incomplete);
    };
    let len = 1usize << (first >> 6);
    let Some(bytes) = buf.get(..len) else {
        return Err(DecodeError::Incomplete);
    };
    let value = match *bytes {
        [b0] => u64::from(b0),
        [b0, b1] => u64::from(u16::from_be_bytes([b0 & 0x3f, b1])),
        [b0, b1, b2, b3] => u64::from(u32::from_be_bytes([b0 & 0x3f, b1, b2, b3])),
        [b0, b1, b2, b3, b4, b5, b6, b7] => {
            u64::from_be_bytes([b0 & 0x3f, b1, b2, b3, b4, b5, b6, b7])
        }
        // invariant: `len` is 1, 2, 4 or 8 and `get` returned exactly `len` bytes.
        _ => unreachable!("varint length is always 1, 2, 4 or 8"),
    };
    Ok((value, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use quinn_proto::VarInt;
    use quinn_proto::coding::Codec;

    #[test]
    fn rfc9000_examples_decode() {
        // RFC 9000 §A.1 sample values.
        let cases: &[(&[u8], u64)] = &[
            (&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c], 151_288_809_941_952_652),
            (&[0x9d, 0x7f, 0x3e, 0x7d], 494_878_333),
            (&[0x7b, 0xbd], 15_293),
            (&[0x25], 37),
            (&[0x40, 0x25], 37),
        ];
        for (bytes, value) in cases {
            assert_eq!(decode(bytes), Ok((*value, bytes.len())));
        }
    }

    #[test]
    fn truncated_is_incomplete() {
        assert_eq!(decode(&[]), Err(DecodeError::Incomplete));
        assert_eq!(decode(&[0x40]), Err(DecodeError::Incomplete));
        assert_eq!(decode(&[0x80, 0, 0]), Err(DecodeError::Incomplete));
        assert_eq!(decode(&[0xc0, 0, 0, 0, 0, 0, 0]), Err(DecodeError::Incomplete));
    }

    #[test]
    #[should_panic(expected = "exceeds 2^62-1")]
    fn encoding_past_max_is_a_caller_bug() {
        put(&mut Vec::new(), MAX + 1);
    }

    proptest! {
        #[test]
        fn matches_quinn_proto(value in 0..=MAX) {
            let mut ours = Vec::new();
            put(&mut ours, value);
            let mut theirs = Vec::new();
            VarInt::from_u64(value).unwrap().encode(&mut theirs);
            prop_assert_eq!(&ours, &theirs);
            prop_assert_eq!(ours.len(), encoded_len(value));
            prop_assert_eq!(decode(&ours), Ok((value, ours.len())));
        }
    }
}
