//! Every message survives encode -> decode unchanged, alone and as a stream cut into arbitrary
//! pieces.

mod strategies;

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use shake_proto::datagram::{self, Datagram};
use shake_proto::{AllocatorFrame, BatchWriter, ControlFrame};
use strategies::*;

proptest! {
    #[test]
    fn control_frames_round_trip(frame in control_frame()) {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        prop_assert_eq!(ControlFrame::decode(&mut buf), Ok(Some(frame)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn allocator_frames_round_trip(frame in allocator_frame()) {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        prop_assert_eq!(AllocatorFrame::decode(&mut buf), Ok(Some(frame)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn shake_datagrams_round_trip(shake in shake()) {
        let mut buf = BytesMut::new();
        shake.encode_datagram(&mut buf);
        prop_assert_eq!(datagram::decode(&buf), Ok(Datagram::Shake(shake)));
    }

    #[test]
    fn outcome_datagrams_round_trip(list in vec(outcome(), 1..60)) {
        let mut buf = BytesMut::new();
        datagram::encode_outcomes(&mut buf, &list);
        match datagram::decode(&buf) {
            Ok(Datagram::Outcomes(outcomes)) => {
                prop_assert_eq!(outcomes.len(), list.len());
                prop_assert!(outcomes.iter().eq(list.iter().copied()));
            }
            other => prop_assert!(false, "decoded as {:?}", other),
        }
    }

    #[test]
    fn batch_writer_matches_batch_encoding(batch in batch()) {
        let mut written = BytesMut::new();
        let mut writer = BatchWriter::begin(&mut written, batch.seq, batch.round_id, batch.base_time_ms);
        for entry in batch.entries() {
            writer.push(&mut written, entry);
        }
        prop_assert_eq!(writer.len(), batch.len());
        writer.finish(&mut written);
        let mut encoded = BytesMut::new();
        AllocatorFrame::Batch(batch).encode(&mut encoded);
        prop_assert_eq!(written, encoded);
    }

    #[test]
    fn a_stream_cut_anywhere_decodes_the_same(
        frames in vec(allocator_frame(), 1..6),
        cuts in vec(1..64usize, 1..100),
    ) {
        let mut wire = BytesMut::new();
        for frame in &frames {
            frame.encode(&mut wire);
        }
        let mut decoded = Vec::new();
        let mut buf = BytesMut::new();
        let mut at = 0;
        let mut cuts = cuts.into_iter().cycle();
        while at < wire.len() {
            let end = (at + cuts.next().unwrap()).min(wire.len());
            buf.extend_from_slice(&wire[at..end]);
            at = end;
            while let Some(frame) = AllocatorFrame::decode(&mut buf).unwrap() {
                decoded.push(frame);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, frames);
    }
}
