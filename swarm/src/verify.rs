//! After a run: the awards phones received against the allocator's ledger
//! (`shake-allocator export`), and the money invariants over the ledger itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Deserialize;
use shake_allocator::config::Config;
use shake_allocator::draw::Draw;
use shake_allocator::round_command::{Refusal, RoundCommand};
use shake_proto::Prize;

use super::report::Report;

/// One exported ledger row (the fields verification needs).
#[derive(Debug, Clone, Deserialize)]
pub struct LedgerRow {
    /// Award id.
    pub award_id: u64,
    /// Round.
    pub round_id: u32,
    /// Winner.
    pub user_id: u64,
    /// "cash" or "gift".
    pub prize: String,
    /// Cash amount.
    pub cents: Option<u64>,
    /// A gift's SKU.
    pub sku: Option<String>,
    /// Prize identity in its round.
    pub item: u32,
    /// Acknowledged by a phone.
    pub delivered: bool,
}

/// What verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    /// Ledger rows.
    pub awards_granted: u64,
    /// Rows marked delivered.
    pub awards_delivered: u64,
    /// Rows not (yet) delivered: still queryable.
    pub awards_undelivered: u64,
    /// Awards a phone received that the ledger does not hold.
    pub received_not_in_ledger: u64,
    /// Ledger rows marked delivered that no phone reported receiving.
    pub delivered_not_received: u64,
    /// Awards a phone heard of whose ledger row pays another user.
    pub paid_other_user: u64,
    /// Awards a phone was told of as another round or prize than its ledger row pays.
    pub told_other_prize: u64,
    /// Ledger rows whose prize is not the one the configured pools hold at their item (an
    /// envelope's amount, a gift's SKU, or an item past the pool), replayed from the
    /// configuration and the operator commands as the allocator builds its pools.
    pub prizes_not_in_pools: u64,
    /// The same prize (round, item) or award id granted more than once.
    pub granted_twice: u64,
    /// Users over a round's per-user cap.
    pub cap_violations: u64,
    /// Rounds whose cash paid out exceeds the pool.
    pub pools_overspent: u64,
    /// Rounds whose every envelope went out but whose payouts do not add up to the pool.
    pub cash_inexact: u64,
    /// Cash paid and pool size, by round.
    pub cash_by_round: BTreeMap<u32, (u64, u64)>,
}

impl Verification {
    /// Mismatches between phones and ledger.
    pub fn ledger_mismatches(&self) -> u64 {
        self.received_not_in_ledger
            + self.delivered_not_received
            + self.paid_other_user
            + self.told_other_prize
    }

    /// Every invariant holds.
    pub fn ok(&self) -> bool {
        self.ledger_mismatches() == 0
            && self.granted_twice == 0
            && self.cap_violations == 0
            && self.pools_overspent == 0
            && self.cash_inexact == 0
            && self.prizes_not_in_pools == 0
    }
}

impl LedgerRow {
    /// The prize the row pays (`None`: a row neither cash with an amount nor a gift with a
    /// SKU, which no pool holds).
    pub fn prize(&self) -> Option<Prize> {
        match (self.prize.as_str(), self.cents, &self.sku) {
            ("cash", Some(cents), None) => Some(Prize::Cash { cents }),
            ("gift", None, Some(sku)) => Some(Prize::Gift { sku: sku.clone() }),
            _ => None,
        }
    }
}

/// A command of the audit log that the configuration's rounds do not take.
#[derive(Debug, thiserror::Error)]
#[error("command {command_id} does not replay: {refusal}")]
pub struct ReplayError {
    /// The command.
    pub command_id: String,
    /// Why.
    pub refusal: Refusal,
}

/// The pools as the allocator builds them: the configuration's rounds, then `commands`
/// (the audit log) replayed in order, top-ups and added rounds with their own seeds.
pub fn configured_pools(config: &Config, commands: &[RoundCommand]) -> Result<Draw, ReplayError> {
    let mut pools = Draw::new(&config.rounds);
    for command in commands {
        pools
            .apply_command(command)
            .map_err(|refusal| ReplayError { command_id: command.command_id.clone(), refusal })?;
    }
    Ok(pools)
}

/// Parses `shake-allocator export` output.
pub fn parse_export(text: &str) -> Result<Vec<LedgerRow>, serde_json::Error> {
    text.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str).collect()
}

/// Checks the report and the ledger against each other and against the configuration (its
/// caps and pool sizes) and the pools it builds (every prize paid is the one its item holds).
pub fn verify(
    report: &Report,
    ledger: &[LedgerRow],
    config: Option<&Config>,
    pools: Option<&Draw>,
) -> Verification {
    let mut v = Verification { awards_granted: ledger.len() as u64, ..Verification::default() };
    v.awards_delivered = ledger.iter().filter(|r| r.delivered).count() as u64;
    v.awards_undelivered = v.awards_granted - v.awards_delivered;
    let in_ledger: BTreeSet<u64> = ledger.iter().map(|r| r.award_id).collect();
    let received: BTreeSet<u64> = report.awards.iter().map(|a| a.award_id).collect();
    v.received_not_in_ledger = received.difference(&in_ledger).count() as u64;
    let rows: HashMap<u64, &LedgerRow> = ledger.iter().map(|r| (r.award_id, r)).collect();
    v.paid_other_user = report
        .awards
        .iter()
        .filter(|a| rows.get(&a.award_id).is_some_and(|row| row.user_id != a.user_id))
        .count() as u64;
    v.told_other_prize = report
        .awards
        .iter()
        .filter(|a| {
            rows.get(&a.award_id).is_some_and(|row| {
                (row.round_id, row.cents, &row.sku) != (a.round_id, a.cents, &a.sku)
            })
        })
        .count() as u64;
    if let Some(pools) = pools {
        v.prizes_not_in_pools = ledger
            .iter()
            .filter(|row| {
                let held = pools.round(row.round_id).and_then(|round| round.prize_at(row.item));
                held.is_none() || held != row.prize()
            })
            .count() as u64;
    }
    v.delivered_not_received =
        ledger.iter().filter(|r| r.delivered && !received.contains(&r.award_id)).count() as u64;
    v.granted_twice = (ledger.len() - in_ledger.len()) as u64;
    let items: BTreeSet<(u32, u32)> = ledger.iter().map(|r| (r.round_id, r.item)).collect();
    v.granted_twice += (ledger.len() - items.len()) as u64;

    let mut wins: HashMap<(u32, u64, bool), u8> = HashMap::new();
    let mut envelopes: HashMap<u32, u64> = HashMap::new();
    for row in ledger {
        if row.prize == "cash" {
            *envelopes.entry(row.round_id).or_default() += 1;
        }
        *wins.entry((row.round_id, row.user_id, row.prize == "cash")).or_default() += 1;
        let entry = v.cash_by_round.entry(row.round_id).or_default();
        entry.0 += row.cents.unwrap_or(0);
    }
    if let Some(config) = config {
        for round in &config.rounds {
            let pool = round.cash.as_ref().map_or(0, |c| c.total_cents);
            let entry = v.cash_by_round.entry(round.id).or_default();
            entry.1 = pool;
            if entry.0 > pool {
                v.pools_overspent += 1;
            }
            let drained = round
                .cash
                .as_ref()
                .is_some_and(|c| envelopes.get(&round.id).copied().unwrap_or(0) >= c.envelopes);
            if drained && entry.0 != pool {
                v.cash_inexact += 1;
            }
        }
        for ((round_id, _, cash), n) in wins {
            let cap = config
                .rounds
                .iter()
                .find(|r| r.id == round_id)
                .map_or(u8::MAX, |r| if cash { r.cash_per_user } else { r.gifts_per_user });
            if n > cap {
                v.cap_violations += 1;
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::ReceivedAward;

    fn row(award_id: u64, user_id: u64, item: u32, cents: u64, delivered: bool) -> LedgerRow {
        LedgerRow {
            award_id,
            round_id: 1,
            user_id,
            prize: "cash".into(),
            cents: Some(cents),
            sku: None,
            item,
            delivered,
        }
    }

    /// Phones that heard of `ids`, each the user its ledger row pays in these tests (10 + id),
    /// of 100 cents.
    fn received(ids: &[u64]) -> Report {
        received_by(&ids.iter().map(|id| (*id, 9 + id)).collect::<Vec<_>>())
    }

    fn received_by(awards: &[(u64, u64)]) -> Report {
        let cash = Prize::Cash { cents: 100 };
        Report {
            awards: awards
                .iter()
                .map(|(id, user)| ReceivedAward::new(*id, *user, 1, &cash))
                .collect(),
            ..Report::default()
        }
    }

    #[test]
    fn a_clean_run_verifies() {
        let ledger = vec![row(1, 10, 0, 100, true), row(2, 11, 1, 50, false)];
        let v = verify(&received(&[1]), &ledger, None, None);
        assert!(v.ok(), "{v:?}");
        assert_eq!((v.awards_granted, v.awards_delivered, v.awards_undelivered), (2, 1, 1));
    }

    #[test]
    fn every_kind_of_mismatch_is_caught() {
        // Received but not in the ledger.
        let v = verify(&received(&[1, 9]), &[row(1, 10, 0, 100, true)], None, None);
        assert_eq!(v.received_not_in_ledger, 1);
        // Delivered in the ledger but never received.
        let v = verify(&received(&[]), &[row(1, 10, 0, 100, true)], None, None);
        assert_eq!(v.delivered_not_received, 1);
        // The same prize twice.
        let v = verify(
            &received(&[1, 2]),
            &[row(1, 10, 0, 100, true), row(2, 11, 0, 100, true)],
            None,
            None,
        );
        assert_eq!(v.granted_twice, 1);
        assert!(!v.ok());
        // A phone of user 11 told of award 1, which the ledger pays to user 10.
        let v = verify(&received_by(&[(1, 11)]), &[row(1, 10, 0, 100, true)], None, None);
        assert_eq!((v.paid_other_user, v.ledger_mismatches()), (1, 1));
        assert!(!v.ok());
        // A phone told of another amount, a gift, or another round than the ledger pays.
        let told = |prize: Prize, round_id: u32| Report {
            awards: vec![ReceivedAward::new(1, 10, round_id, &prize)],
            ..Report::default()
        };
        for report in [
            told(Prize::Cash { cents: 99 }, 1),
            told(Prize::Gift { sku: "MUG".into() }, 1),
            told(Prize::Cash { cents: 100 }, 2),
        ] {
            let v = verify(&report, &[row(1, 10, 0, 100, true)], None, None);
            assert_eq!((v.told_other_prize, v.ledger_mismatches()), (1, 1), "{report:?}");
            assert!(!v.ok());
        }
        let v =
            verify(&told(Prize::Cash { cents: 100 }, 1), &[row(1, 10, 0, 100, true)], None, None);
        assert!(v.ok(), "{v:?}");
    }

    #[test]
    fn pools_and_caps_are_checked_against_the_configuration() {
        let config = Config::parse(
            "listen = \"127.0.0.1:0\"\nledger_path = \"l\"\n[tls]\ncert = \"c\"\nkey = \"k\"\nedge_ca = \"a\"\n\
             [[rounds]]\nid = 1\nstarts_at_ms = 0\nduration_s = 10\nseed = 1\n[rounds.cash]\ntotal_cents = 120\nenvelopes = 2\n",
        )
        .unwrap();
        let ledger = vec![row(1, 10, 0, 100, false), row(2, 10, 1, 50, false)];
        let v = verify(&received(&[]), &ledger, Some(&config), None);
        assert_eq!(v.pools_overspent, 1);
        assert_eq!(v.cap_violations, 1);
        assert_eq!(v.cash_by_round[&1], (150, 120));
        // Both envelopes out: the payouts must add up to the pool exactly.
        assert_eq!(v.cash_inexact, 1);
        let exact = vec![row(1, 10, 0, 100, false), row(2, 11, 1, 20, false)];
        let v = verify(&received(&[]), &exact, Some(&config), None);
        assert!(v.ok(), "{v:?}");
        let short = vec![row(1, 10, 0, 100, false), row(2, 11, 1, 19, false)];
        assert_eq!(verify(&received(&[]), &short, Some(&config), None).cash_inexact, 1);
    }

    /// Every prize paid is the one its item holds in the pools the configuration builds: an
    /// envelope's amount (a row paying double, or an amount made up), a gift's SKU, an item
    /// past the pool. Caught even where the pool's total is not reached (a run's few winners
    /// against a large pool: the overspend check cannot see it).
    #[test]
    fn every_prize_paid_is_the_one_its_item_holds() {
        let config = Config::parse(
            "listen = \"127.0.0.1:0\"\nledger_path = \"l\"\n[tls]\ncert = \"c\"\nkey = \"k\"\nedge_ca = \"a\"\n\
             [[rounds]]\nid = 1\nstarts_at_ms = 0\nduration_s = 10\nseed = 1\n[rounds.cash]\ntotal_cents = 100000\nenvelopes = 100\n\
             [[rounds.gifts]]\nsku = \"MUG\"\nname = \"mug\"\ncount = 5\n",
        )
        .unwrap();
        let pools = configured_pools(&config, &[]).unwrap();
        let round = pools.round(1).unwrap();
        let first_cash =
            (0..105).find(|&i| matches!(round.prize_at(i), Some(Prize::Cash { .. }))).unwrap();
        let first_gift =
            (0..105).find(|&i| matches!(round.prize_at(i), Some(Prize::Gift { .. }))).unwrap();
        let Some(Prize::Cash { cents }) = round.prize_at(first_cash) else { unreachable!() };
        let paid = |item, cents, sku: Option<&str>| LedgerRow {
            prize: if sku.is_some() { "gift".into() } else { "cash".into() },
            cents,
            sku: sku.map(str::to_owned),
            ..row(1, 10, item, 0, false)
        };
        let check = |row: LedgerRow| verify(&received(&[]), &[row], Some(&config), Some(&pools));
        assert!(check(paid(first_cash, Some(cents), None)).ok());
        assert!(check(paid(first_gift, None, Some("MUG"))).ok());
        for wrong in [
            paid(first_cash, Some(cents * 2), None),
            paid(first_cash, None, Some("MUG")),
            paid(first_gift, None, Some("TEA")),
            paid(105, Some(cents), None),
        ] {
            let v = check(wrong.clone());
            assert_eq!(v.prizes_not_in_pools, 1, "{wrong:?}");
            assert!(!v.ok());
        }
    }
}
