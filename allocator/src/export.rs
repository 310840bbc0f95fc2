//! Award rows as JSON, for `shake-allocator awards` and `export` (settlement).

use serde_json::{Value, json};
use shake_proto::Prize;

use crate::award::Award;

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
