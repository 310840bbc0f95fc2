//! Every message survives encode -> decode unchanged, alone and as a stream cut into arbitrary
//! pieces.

mod strategies;

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use shake_proto::datagram::{self, Datagram};
use shake_proto::{AllocatorFrame, BatchDigest, BatchWriter, ControlFrame};
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
        let finished = writer.finish(&mut written);
        // The digest the edge keeps is the digest the allocator computes from the same bytes.
        prop_assert_eq!(finished.digest, batch.digest());
        prop_assert_eq!(finished.digest, BatchDigest::of_payload(&written[finished.payload_at..]));
        let mut encoded = BytesMut::new();
        AllocatorFrame::Batch(batch.clone()).encode(&mut encoded);
        prop_assert_eq!(&written, &encoded);
        match AllocatorFrame::decode(&mut written) {
            Ok(Some(AllocatorFrame::Batch(decoded))) => prop_assert_eq!(decoded.digest(), batch.digest()),
            other => prop_assert!(false, "decoded as {:?}", other),
        }
    }

    #[test]
    fn a_changed_entry_changes_the_digest(batch in batch(), flip in any::<u64>()) {
        prop_assume!(!batch.is_empty());
        let mut entries: Vec<_> = batch.entries().collect();
        let at = (flip as usize) % entries.len();
        entries[at].user_id ^= 1 + (flip >> 40);
        entries[at].user_id &= shake_proto::varint::MAX;
        prop_assume!(entries[at] != batch.entries().nth(at).unwrap());
        let other = shake_proto::Batch::new(batch.seq, batch.round_id, batch.base_time_ms, &entries);
        prop_assert_ne!(other.digest(), batch.digest());
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
