//! Award rows as JSON, for `shake-allocator awards` and `export` (settlement).

use serde_json::{Value, json};
use shake_proto::Prize;

use crate::award::Award;

/// Which awards to list: for `shake-allocator awards`, and support's `GET /awards`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AwardQuery {
    /// Only this user's.
    pub user: Option<u64>,
    /// Only this round's.
    pub round: Option<u32>,
    /// Only this prize: `cash`, `gift`, or a gift's SKU.
    pub prize: Option<String>,
    /// Only those no phone has acknowledged yet.
    pub undelivered: bool,
    /// At most this many (the API caps it; 0: the cap).
    pub limit: usize,
    /// Only those with ids above this: the cursor of a read in pages (the last id of the page
    /// before; 0: from the first).
    pub after: u64,
}

impl AwardQuery {
    /// The most awards to give (`limit`; 0: no limit).
    pub fn most(&self) -> usize {
        if self.limit == 0 { usize::MAX } else { self.limit }
    }

    /// A filter for a read in id order: true for the first [`Self::most`] awards that match.
    pub fn keeper(&self) -> impl FnMut(&Award) -> bool + '_ {
        let mut found = 0usize;
        move |award| {
            let keep = found < self.most() && self.matches(award);
            found += usize::from(keep);
            keep
        }
    }

    /// Does `award` match?
    pub fn matches(&self, award: &Award) -> bool {
        let prize = match (&self.prize, &award.prize) {
            (None, _) => true,
            (Some(want), Prize::Cash { .. }) => want == "cash",
            (Some(want), Prize::Gift { sku }) => want == "gift" || want == sku,
        };
        prize
            && award.award_id > self.after
            && self.user.is_none_or(|u| award.user_id == u)
            && self.round.is_none_or(|r| award.round_id == r)
            && (!self.undelivered || !award.delivered)
    }
}

/// Awards a page of an export holds: `export` and `GET /awards/export` read the ledger page by
/// page from a cursor and hold one page, never the whole ledger (millions of awards at a show's
/// end: gigabytes, in the allocator serving the show).
pub const EXPORT_PAGE: usize = 10_000;

/// The question for an export's page: every award after the cursor, at most `size`.
pub fn export_page(after: u64, size: usize) -> AwardQuery {
    AwardQuery { after, limit: size.max(1), ..AwardQuery::default() }
}

/// The cursor of the page after `page` (a page of `size` asked), or `None` where the export is
/// done: a page short of its size was read to the end of the ledger.
pub fn next_page_after(page: &[Award], size: usize) -> Option<u64> {
    page.last().filter(|_| page.len() >= size.max(1)).map(|last| last.award_id)
}

/// An export's page as JSON lines.
pub fn award_lines(page: &[Award]) -> String {
    page.iter().map(|award| award_json(award).to_string() + "\n").collect()
}

/// One award as a JSON object (one line of `export`).
pub fn award_json(award: &Award) -> Value {
    let (kind, cents, sku) = match &award.prize {
        Prize::Cash { cents } => ("cash", Some(*cents), None),
        Prize::Gift { sku } => ("gift", None, Some(sku.as_str())),
    };
    json!({
        "award_id": award.award_id,
        "round_id": award.round_id,
        "user_id": award.user_id,
        "prize": kind,
        "cents": cents,
        "sku": sku,
        "item": award.item,
        "edge_id": award.batch.edge_id,
        "worker_id": award.batch.worker_id,
        "worker_instance": award.batch.instance_id,
        "batch_seq": award.batch.seq,
        "entry_index": award.entry_index,
        "granted_at_ms": award.granted_at_ms,
        "delivered": award.delivered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_match_by_user_round_prize_and_delivery() {
        let award = Award {
            award_id: 1,
            round_id: 2,
            user_id: 3,
            item: 0,
            prize: Prize::Gift { sku: "TEA-01".into() },
            batch: BatchKey { edge_id: 1, worker_id: 0, instance_id: 1, seq: 1 },
            entry_index: 0,
            granted_at_ms: 0,
            delivered: true,
        };
        let q = |text: &str| -> AwardQuery { serde_json::from_str(text).unwrap() };
        assert!(q("{}").matches(&award));
        assert!(q(r#"{"user":3,"round":2,"prize":"TEA-01"}"#).matches(&award));
        assert!(q(r#"{"prize":"gift"}"#).matches(&award));
        assert!(!q(r#"{"prize":"cash"}"#).matches(&award));
        assert!(!q(r#"{"user":4}"#).matches(&award));
        assert!(!q(r#"{"round":1}"#).matches(&award));
        assert!(!q(r#"{"undelivered":true}"#).matches(&award));
    }
    use crate::award::BatchKey;

    #[test]
    fn cash_and_gift_rows() {
        let mut award = Award {
            award_id: 9,
            round_id: 1,
            user_id: 5,
            item: 3,
            prize: Prize::Cash { cents: 250 },
            batch: BatchKey { edge_id: 1, worker_id: 0, instance_id: 3, seq: 4 },
            entry_index: 2,
            granted_at_ms: 77,
            delivered: false,
        };
        let row = award_json(&award);
        assert_eq!(row["prize"], "cash");
        assert_eq!(row["cents"], 250);
        assert!(row["sku"].is_null());
        award.prize = Prize::Gift { sku: "TEA-01".into() };
        assert_eq!(award_json(&award)["sku"], "TEA-01");
    }
}
