//! Bad input gets a typed error, never a panic and never a frame: truncation, oversize, unknown
//! types, values past their range, lengths past their limit, trailing bytes.

mod strategies;

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use shake_proto::datagram::{self, DATAGRAM_SHAKE};
use shake_proto::limits::{
    MAX_ALLOCATOR_PAYLOAD, MAX_BATCH_ENTRIES, MAX_CONTROL_PAYLOAD, MAX_DATAGRAM, MAX_DELIVERED_IDS,
    MAX_LIMITED_USERS, MAX_OWED_AWARDS, MAX_TOKEN, MAX_WANTED_USERS,
};
use shake_proto::{AllocatorFrame, ControlFrame, DecodeError, varint};

/// `type | length | payload`, with the length written by us (so it can lie).
fn raw_frame(frame_type: u64, payload: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    varint::put(&mut buf, frame_type);
    varint::put(&mut buf, payload.len() as u64);
    buf.extend_from_slice(payload);
    buf
}

#[test]
fn unknown_frame_types_are_refused() {
    let mut buf = raw_frame(0x3f, &[]);
    assert_eq!(ControlFrame::decode(&mut buf), Err(DecodeError::UnknownType(0x3f)));
    // An allocator frame on a control stream is unknown there, and the other way round.
    let mut buf = raw_frame(0x22, &[1, 1, 1]);
    assert_eq!(ControlFrame::decode(&mut buf), Err(DecodeError::UnknownType(0x22)));
    let mut buf = raw_frame(0x01, &[]);
    assert_eq!(AllocatorFrame::decode(&mut buf), Err(DecodeError::UnknownType(0x01)));
    assert_eq!(datagram::decode(&[0x07]), Err(DecodeError::UnknownType(0x07)));
}

#[test]
fn oversized_frames_are_refused_from_the_header_alone() {
    let mut header = BytesMut::new();
    varint::put(&mut header, 0x05);
    varint::put(&mut header, MAX_CONTROL_PAYLOAD as u64 + 1);
    assert_eq!(
        ControlFrame::decode(&mut header.clone()),
        Err(DecodeError::FrameTooLarge {
            len: MAX_CONTROL_PAYLOAD as u64 + 1,
            max: MAX_CONTROL_PAYLOAD
        })
    );
    let mut header = BytesMut::new();
    varint::put(&mut header, 0x22);
    varint::put(&mut header, varint::MAX);
    assert!(matches!(
        AllocatorFrame::decode(&mut header),
        Err(DecodeError::FrameTooLarge { max: MAX_ALLOCATOR_PAYLOAD, .. })
    ));
    let big = vec![0u8; MAX_DATAGRAM + 1];
    assert!(matches!(datagram::decode(&big), Err(DecodeError::FrameTooLarge { .. })));
}

#[test]
fn truncated_payloads_are_truncated() {
    // A Hello whose token claims 10 bytes but the payload holds 3.
    let mut buf = raw_frame(0x01, &[10, 1, 2, 3]);
    assert_eq!(ControlFrame::decode(&mut buf), Err(DecodeError::Truncated));
    // An Award cut inside its prize.
    let mut buf = raw_frame(0x05, &[1, 1]);
    assert_eq!(ControlFrame::decode(&mut buf), Err(DecodeError::Truncated));
    // A Shake datagram cut inside a two-byte varint.
    assert_eq!(datagram::decode(&[0x01, 0x05, 0x40]), Err(DecodeError::Truncated));
    // A batch entry cut between user id and offset.
    let mut buf = raw_frame(0x22, &[1, 1, 1, 0x2a]);
    assert_eq!(AllocatorFrame::decode(&mut buf), Err(DecodeError::Truncated));
}

#[test]
fn trailing_bytes_are_refused() {
    let mut buf = raw_frame(0x06, &[1, 0]);
    assert_eq!(ControlFrame::decode(&mut buf), Err(DecodeError::TrailingBytes(1)));
    assert_eq!(datagram::decode(&[0x01, 1, 1, 1, 9]), Err(DecodeError::TrailingBytes(1)));
}

#[test]
fn field_lengths_past_their_limit_are_refused() {
    let mut payload = BytesMut::new();
    varint::put(&mut payload, MAX_TOKEN as u64 + 1);
    payload.put_bytes(0, MAX_TOKEN + 1);
    payload.put_slice(&[1, 1]);
    let mut buf = raw_frame(0x01, &payload);
    assert_eq!(
        ControlFrame::decode(&mut buf),
        Err(DecodeError::FieldTooLong {
            field: "token",
            len: MAX_TOKEN as u64 + 1,
            max: MAX_TOKEN
        })
    );
}

#[test]
fn values_too_large_for_their_field_are_invalid() {
    // A round id is 32 bits; an eight-byte varint of 2^40 is not a round id.
    let mut payload = BytesMut::new();
    varint::put(&mut payload, 1 << 40);
    payload.put_slice(&[1, 0, 0]);
    let mut dgram = BytesMut::new();
    varint::put(&mut dgram, DATAGRAM_SHAKE);
    dgram.extend_from_slice(&payload);
    assert_eq!(datagram::decode(&dgram), Err(DecodeError::InvalidValue("round id")));
    // A batch entry offset is 32 bits: the eight-byte form may hold more.
    let mut buf = raw_frame(0x22, &[1, 1, 1, 7, 0xc0, 0, 0, 1, 0, 0, 0, 0]);
    assert_eq!(AllocatorFrame::decode(&mut buf), Err(DecodeError::InvalidValue("offset")));
    let mut buf = raw_frame(0x22, &[1, 1, 1, 7, 0xc0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    assert!(matches!(AllocatorFrame::decode(&mut buf), Ok(Some(AllocatorFrame::Batch(_)))));
    // A worker id is 16 bits.
    let mut buf = raw_frame(0x21, &[1, 0x80, 0x01, 0, 0, 1, 0]);
    assert_eq!(AllocatorFrame::decode(&mut buf), Err(DecodeError::InvalidValue("worker id")));
    // ... and below MAX_WORKERS_PER_EDGE (256): an edge has no more workers.
    let mut buf = raw_frame(0x21, &[1, 0x41, 0x00, 5, 1, 0]);
    assert_eq!(AllocatorFrame::decode(&mut buf), Err(DecodeError::InvalidValue("worker id")));
    let mut buf = raw_frame(0x21, &[1, 0x40, 0xff, 5, 1, 0]);
    assert!(matches!(
        AllocatorFrame::decode(&mut buf),
        Ok(Some(AllocatorFrame::EdgeHello { worker_id: 255, .. }))
    ));
}

#[test]
fn unknown_enum_tags_are_invalid() {
    // Award with prize kind 9.
    let mut buf = raw_frame(0x05, &[1, 1, 9, 0]);
    assert_eq!(ControlFrame::decode(&mut buf), Err(DecodeError::InvalidValue("prize kind")));
    // Outcome with verdict 4.
    assert_eq!(datagram::decode(&[0x02, 1, 4]), Err(DecodeError::InvalidValue("verdict")));
    // RoundNotice with phase 3.
    let mut buf = raw_frame(0x03, &[1, 3, 0, 0, 0]);
    assert_eq!(ControlFrame::decode(&mut buf), Err(DecodeError::InvalidValue("round phase")));
    // Gift SKU that is not UTF-8.
    let mut buf = raw_frame(0x05, &[1, 1, 1, 2, 0xff, 0xfe]);
    assert_eq!(ControlFrame::decode(&mut buf), Err(DecodeError::InvalidValue("sku")));
}

#[test]
fn empty_lists_that_must_not_be_empty_are_invalid() {
    assert_eq!(datagram::decode(&[0x02]), Err(DecodeError::InvalidValue("outcomes")));
    let mut buf = raw_frame(0x08, &[]);
    assert_eq!(ControlFrame::decode(&mut buf), Err(DecodeError::InvalidValue("outcomes")));
    let mut buf = raw_frame(0x27, &[]);
    assert_eq!(AllocatorFrame::decode(&mut buf), Err(DecodeError::InvalidValue("award id count")));
    assert_eq!(datagram::decode(&[]), Err(DecodeError::Truncated));
}

#[test]
fn every_bounded_list_takes_one_to_its_limit_and_refuses_none_or_more() {
    /// A frame type, the fields before its list, one item, the limit, the count's name.
    type List = (u64, &'static [u8], &'static [u8], usize, &'static str);
    let lists: [List; 4] = [
        (0x27, &[], &[7], MAX_DELIVERED_IDS, "award id count"),
        (0x2a, &[9], &[7], MAX_LIMITED_USERS, "user id count"),
        (0x2b, &[], &[7], MAX_WANTED_USERS, "user id count"),
        // Owed: award 1, round 1, cash of 1 cent.
        (0x2c, &[5], &[1, 1, 0, 1], MAX_OWED_AWARDS, "award count"),
    ];
    for (frame_type, head, item, max, field) in lists {
        let payload = |items: usize| {
            let mut p = head.to_vec();
            for _ in 0..items {
                p.extend_from_slice(item);
            }
            p
        };
        for (items, ok) in [(0, false), (1, true), (max, true), (max + 1, false)] {
            let decoded = AllocatorFrame::decode(&mut raw_frame(frame_type, &payload(items)));
            if ok {
                assert!(matches!(decoded, Ok(Some(_))), "0x{frame_type:x} with {items}");
            } else {
                assert_eq!(decoded, Err(DecodeError::InvalidValue(field)), "0x{frame_type:x}");
            }
        }
    }
}

#[test]
fn batches_past_the_entry_limit_are_refused() {
    let mut payload = BytesMut::from(&[1u8, 1, 1][..]);
    for _ in 0..=MAX_BATCH_ENTRIES {
        payload.put_slice(&[7, 0]);
    }
    let mut buf = raw_frame(0x22, &payload);
    assert_eq!(
        AllocatorFrame::decode(&mut buf),
        Err(DecodeError::TooManyEntries { max: MAX_BATCH_ENTRIES })
    );
}

proptest! {
    // Any prefix of any valid frame is "read more", and any garbage is an error or a frame:
    // never a panic.
    #[test]
    fn every_prefix_of_a_valid_frame_is_incomplete(frame in strategies::control_frame()) {
        let mut wire = BytesMut::new();
        frame.encode(&mut wire);
        for cut in 0..wire.len() {
            let mut prefix = BytesMut::from(&wire[..cut]);
            prop_assert_eq!(ControlFrame::decode(&mut prefix), Ok(None));
        }
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        shake_proto::fuzz_checks::control_stream(&bytes);
        shake_proto::fuzz_checks::allocator_stream(&bytes);
        shake_proto::fuzz_checks::datagram(&bytes);
        shake_proto::fuzz_checks::token(&bytes);
    }
}

/// The allocator lists at most `MAX_WINNERS_PER_RESULT` winners in one answer: that many of
/// the longest (the largest entry index, award id and gift SKU) still make a frame within the
/// limit, which decodes; one more winner's worth would not fit.
#[test]
fn the_most_winners_of_the_longest_prizes_fit_one_answer() {
    use shake_proto::limits::{MAX_SKU, MAX_WINNER_LEN, MAX_WINNERS_PER_RESULT};
    use shake_proto::{BatchDigest, Prize, Winner};
    let winner = Winner {
        entry_index: (MAX_BATCH_ENTRIES - 1) as u32,
        award_id: varint::MAX,
        prize: Prize::Gift { sku: "x".repeat(MAX_SKU) },
    };
    let answer = AllocatorFrame::BatchResult {
        seq: varint::MAX,
        digest: BatchDigest([7; 8]),
        winners: vec![winner; MAX_WINNERS_PER_RESULT],
    };
    let mut frame = BytesMut::new();
    answer.encode(&mut frame);
    let header =
        shake_proto::frame::check(&frame, MAX_ALLOCATOR_PAYLOAD).expect("within the limit");
    assert!(header.total_len() == frame.len());
    let payload = frame.len() - header.header_len;
    assert_eq!(payload, 16 + MAX_WINNERS_PER_RESULT * MAX_WINNER_LEN, "MAX_WINNER_LEN is exact");
    assert!(payload + MAX_WINNER_LEN > MAX_ALLOCATOR_PAYLOAD, "one more would not fit");
    assert_eq!(AllocatorFrame::decode(&mut frame), Ok(Some(answer)));
}
