//! Awards owed: durable, and not yet acknowledged by any of the winner's phones, by user. A
//! phone that lost its connection before its `Award` arrived hears of it when a session of
//! its user starts again (the edge's `AwardsWanted`, answered by `AwardsOwed`).
//!
//! Bounded by the prizes of the show (an award is owed at most once, and leaves when a phone
//! acknowledges it): about 120 bytes an owed award (its 48, a slot in each map, the
//! allocator's overhead; a gift's SKU is a string of its own), most users owing one. An award
//! whose winner never comes back stays owed until the process ends (RELIABILITY.md, "Left").

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use shake_proto::limits::MAX_OWED_AWARDS;
use shake_proto::{AllocatorFrame, OwedAward};

use crate::award::Award;

/// Undelivered awards by user.
#[derive(Debug, Default)]
pub struct OwedAwards {
    by_user: HashMap<u64, Vec<OwedAward>>,
    user_of: HashMap<u64, u64>,
}

impl OwedAwards {
    /// A durable award (one already delivered is not owed).
    pub fn add(&mut self, award: &Award) {
        if award.delivered || self.user_of.contains_key(&award.award_id) {
            return;
        }
        self.user_of.insert(award.award_id, award.user_id);
        // Most users are owed one award: a list of one, not the four a first push reserves.
        self.by_user.entry(award.user_id).or_insert_with(|| Vec::with_capacity(1)).push(
            OwedAward {
                award_id: award.award_id,
                round_id: award.round_id,
                prize: award.prize.clone(),
            },
        );
    }

    /// A phone acknowledged this award.
    pub fn delivered(&mut self, award_id: u64) {
        let Some(user) = self.user_of.remove(&award_id) else { return };
        if let Some(list) = self.by_user.get_mut(&user) {
            list.retain(|a| a.award_id != award_id);
            if list.is_empty() {
                self.by_user.remove(&user);
            }
        }
    }

    /// The `AwardsOwed` frames for `user` (none when nothing is owed).
    pub fn frames_for(&self, user: u64) -> Vec<Bytes> {
        let Some(list) = self.by_user.get(&user) else { return Vec::new() };
        list.chunks(MAX_OWED_AWARDS)
            .map(|chunk| {
                let mut frame = BytesMut::new();
                AllocatorFrame::AwardsOwed { user_id: user, awards: chunk.to_vec() }
                    .encode(&mut frame);
                frame.freeze()
            })
            .collect()
    }

    /// Awards owed now.
    pub fn len(&self) -> usize {
        self.user_of.len()
    }

    /// Nothing owed.
    pub fn is_empty(&self) -> bool {
        self.user_of.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::award::BatchKey;
    use shake_proto::Prize;

    fn award(award_id: u64, user_id: u64, delivered: bool) -> Award {
        Award {
            award_id,
            round_id: 1,
            user_id,
            item: award_id as u32,
            prize: Prize::Cash { cents: 5 },
            batch: BatchKey { edge_id: 1, worker_id: 0, instance_id: 1, seq: 1 },
            entry_index: 0,
            granted_at_ms: 0,
            delivered,
        }
    }

    fn owed_ids(frames: &[Bytes]) -> Vec<u64> {
        frames
            .iter()
            .flat_map(|f| match AllocatorFrame::decode(&mut BytesMut::from(&f[..])) {
                Ok(Some(AllocatorFrame::AwardsOwed { awards, .. })) => {
                    awards.into_iter().map(|a| a.award_id).collect::<Vec<u64>>()
                }
                other => panic!("not an AwardsOwed frame: {other:?}"),
            })
            .collect()
    }

    /// A user owed one award holds room for one: the first push of an empty list reserved
    /// four (about 150 bytes more an owed award, most users owing one).
    #[test]
    fn a_user_owed_one_award_holds_room_for_one() {
        let mut owed = OwedAwards::default();
        owed.add(&award(1, 7, false));
        assert_eq!(owed.by_user[&7].capacity(), 1);
        owed.add(&award(2, 7, false));
        assert_eq!(owed.by_user[&7].len(), 2);
    }

    #[test]
    fn owed_until_acknowledged_and_chunked_by_the_frame_limit() {
        let mut owed = OwedAwards::default();
        owed.add(&award(1, 7, false));
        owed.add(&award(1, 7, false));
        owed.add(&award(2, 7, true));
        owed.add(&award(3, 8, false));
        assert_eq!(owed.len(), 2);
        assert_eq!(owed_ids(&owed.frames_for(7)), vec![1]);
        assert!(owed.frames_for(9).is_empty());
        owed.delivered(1);
        owed.delivered(1);
        assert!(owed.frames_for(7).is_empty());
        for id in 100..100 + MAX_OWED_AWARDS as u64 + 1 {
            owed.add(&award(id, 8, false));
        }
        let frames = owed.frames_for(8);
        assert_eq!(frames.len(), 2);
        assert_eq!(owed_ids(&frames).len(), MAX_OWED_AWARDS + 2);
    }
}
