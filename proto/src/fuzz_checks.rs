//! The properties every decoder must hold on arbitrary bytes, shared by the cargo-fuzz targets
//! in `fuzz/` and by the corpus replay test that runs them on stable in CI.
//!
//! Each function feeds `data` to one decoder and panics only if a property breaks: a decoder
//! panicking, consuming bytes it did not account for, or a decoded message that does not
//! re-encode to something that decodes to the same message.

use bytes::BytesMut;

use crate::{AllocatorFrame, ControlFrame, DecodeError, KeyRing, datagram, limits};

/// Decodes a control stream from `data`, frame after frame, and re-encodes each frame.
pub fn control_stream(data: &[u8]) {
    frame_stream(data, ControlFrame::decode, ControlFrame::encode, |_| {});
}

/// Decodes an edge-allocator stream from `data`, frame after frame, and re-encodes each frame.
pub fn allocator_stream(data: &[u8]) {
    frame_stream(data, AllocatorFrame::decode, AllocatorFrame::encode, |frame| {
        if let AllocatorFrame::Batch(batch) = frame {
            assert_eq!(batch.entries().count(), batch.len());
            assert!(batch.len() <= limits::MAX_BATCH_ENTRIES);
        }
    });
}

/// A stream of frames: each decoded frame consumed bytes, passes `check`, and re-encodes to
/// bytes that decode to the same frame and nothing more; an incomplete frame consumes nothing;
/// an error is never `Incomplete` (that is `Ok(None)`).
fn frame_stream<F: PartialEq + std::fmt::Debug>(
    data: &[u8],
    decode: impl Fn(&mut BytesMut) -> Result<Option<F>, DecodeError>,
    encode: impl Fn(&F, &mut BytesMut),
    check: impl Fn(&F),
) {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match decode(&mut buf) {
            Ok(Some(frame)) => {
                assert!(buf.len() < before, "a decoded frame consumed no bytes");
                check(&frame);
                let mut again = BytesMut::new();
                encode(&frame, &mut again);
                assert_eq!(decode(&mut again), Ok(Some(frame)));
                assert!(again.is_empty());
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete frame consumed bytes");
                break;
            }
            Err(err) => {
                assert_ne!(err, DecodeError::Incomplete, "Incomplete must be Ok(None)");
                break;
            }
        }
    }
}

/// Decodes `data` as one datagram payload and re-encodes what it finds.
pub fn datagram(data: &[u8]) {
    let mut again = BytesMut::new();
    match datagram::decode(data) {
        Ok(datagram::Datagram::Shake(shake)) => {
            shake.encode_datagram(&mut again);
            assert_eq!(datagram::decode(&again), Ok(datagram::Datagram::Shake(shake)));
        }
        Ok(datagram::Datagram::Outcomes(outcomes)) => {
            let list: Vec<_> = outcomes.iter().collect();
            assert_eq!(list.len(), outcomes.len());
            datagram::encode_outcomes(&mut again, &list);
            match datagram::decode(&again) {
                Ok(datagram::Datagram::Outcomes(back)) => {
                    assert!(back.iter().eq(list.iter().copied()))
                }
                other => panic!("re-encoded outcomes decoded as {other:?}"),
            }
        }
        Err(err) => assert_ne!(err, DecodeError::Incomplete, "datagrams are never incomplete"),
    }
}

/// Verifies `data` as a session token against a fixed test key ring at a fixed time.
///
/// Arbitrary bytes must never verify (that would be a forged MAC); a token minted from the
/// claims the bytes suggest must verify to exactly those claims.
pub fn token(data: &[u8]) {
    let mut ring = KeyRing::new();
    ring.insert(1, &[7u8; 32]).expect("32-byte secret");
    let now_s = 1_800_000_000;
    assert!(ring.verify(data, now_s).is_err(), "random bytes verified as a token");
    if data.len() >= 16 {
        let claims = crate::Claims {
            key_id: 1,
            user_id: u64::from_be_bytes(data[..8].try_into().expect("8 bytes")) >> 2,
            device_id: u64::from_be_bytes(data[8..16].try_into().expect("8 bytes")),
            issued_at_s: now_s - 10,
            expires_at_s: now_s + 10,
        };
        let minted = ring.mint(&claims).expect("claims in range");
        assert_eq!(ring.verify(&minted, now_s), Ok(claims));
    }
}
