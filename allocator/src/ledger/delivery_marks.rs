//! Delivery marks on PostgreSQL: how a group's acknowledged award ids are laid out as
//! insert-only rows of `shake_delivery_marks`, and the one rule that finds them again.
//!
//! A mark used to be an `UPDATE` of its award's row: with every award written twice (drawn,
//! then acknowledged) that update cost a quarter of the ledger's capacity even as a heap-only
//! update (docs/PERFORMANCE.md, "The ledger on PostgreSQL"). Award ids are dense and
//! acknowledgements come soon after the draw, so a group's marks are mostly a few runs of
//! nearby ids: each run becomes one row `(first_id, award_ids[])`, and the awards are never
//! touched again once written.
//!
//! The invariant every reader relies on: each id of a row lies in
//! `first_id ..= first_id + MARK_SPAN - 1` (the table's `CHECK` refuses any other row). So the
//! marks of award `x` are found by a bounded index range scan, `first_id` between
//! `x - (MARK_SPAN - 1)` and `x`, whatever the table's size; and a row holds at most
//! [`MARK_ROW_IDS`] ids, so it stays inline in its page (no TOAST, no compression) and such a
//! lookup reads a few rows of a few hundred ids.

/// How far above its row's `first_id` a marked id may lie. Must equal the literals in
/// migration 5's `CHECK` and view (`tests/ledger_stores.rs` checks the boundary).
pub const MARK_SPAN: i64 = 4_096;

/// The most ids one row holds: 224 ids are 1,792 bytes, so the row stays under PostgreSQL's
/// TOAST threshold (about 2 KB).
pub const MARK_ROW_IDS: usize = 224;

/// One row of `shake_delivery_marks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkRow {
    /// The smallest id in the row.
    pub first_id: i64,
    /// Ascending, no repeats, all within [`MARK_SPAN`] of `first_id`.
    pub award_ids: Vec<i64>,
}

/// The rows for one group's marks: sorted, repeats dropped, cut where an id would lie
/// [`MARK_SPAN`] or more above its row's first or the row is full. A repeat costs nothing on reading (a mark
/// twice is still one delivered award) but is dropped so that a row is as small as it can be.
pub fn mark_rows(ids: &[u64]) -> Vec<MarkRow> {
    let mut sorted: Vec<i64> = ids.iter().map(|id| *id as i64).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut rows: Vec<MarkRow> = Vec::new();
    for id in sorted {
        match rows.last_mut() {
            Some(row) if id - row.first_id < MARK_SPAN && row.award_ids.len() < MARK_ROW_IDS => {
                row.award_ids.push(id)
            }
            _ => rows.push(MarkRow { first_id: id, award_ids: vec![id] }),
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearby_ids_share_a_row_and_far_ones_start_another() {
        let span = MARK_SPAN as u64;
        let rows = mark_rows(&[7, 5, 5, 5 + span - 1, 5 + span, 3 * span]);
        assert_eq!(
            rows,
            vec![
                MarkRow { first_id: 5, award_ids: vec![5, 7, (5 + span - 1) as i64] },
                MarkRow { first_id: (5 + span) as i64, award_ids: vec![(5 + span) as i64] },
                MarkRow { first_id: (3 * span) as i64, award_ids: vec![(3 * span) as i64] },
            ]
        );
        assert!(mark_rows(&[]).is_empty());
        // Dense ids fill rows to the cap.
        let dense: Vec<u64> = (1..=(MARK_ROW_IDS as u64 * 2 + 1)).collect();
        let lengths: Vec<usize> = mark_rows(&dense).iter().map(|r| r.award_ids.len()).collect();
        assert_eq!(lengths, vec![MARK_ROW_IDS, MARK_ROW_IDS, 1]);
    }

    #[test]
    fn every_id_lies_within_its_rows_span() {
        // A spread that makes many cuts: every id is kept, once, inside its row's span.
        let ids: Vec<u64> = (0..5_000u64).map(|i| (i * 7_919 * 37) % 1_000_003 + 1).collect();
        let rows = mark_rows(&ids);
        let mut seen: Vec<i64> = rows.iter().flat_map(|r| r.award_ids.clone()).collect();
        for row in &rows {
            assert_eq!(row.award_ids[0], row.first_id);
            assert!(row.award_ids.iter().all(|id| (0..MARK_SPAN).contains(&(id - row.first_id))));
            assert!(row.award_ids.len() <= MARK_ROW_IDS);
        }
        let mut expected: Vec<i64> = ids.iter().map(|id| *id as i64).collect();
        expected.sort_unstable();
        expected.dedup();
        seen.sort_unstable();
        assert_eq!(seen, expected);
    }
}
