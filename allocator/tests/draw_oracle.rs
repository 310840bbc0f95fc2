//! The fast draw against a slow, obviously correct oracle: same winners, same kinds, and the
//! money invariants (no item twice, caps held, cash never over the pool and exact when drained,
//! same input same answer).
//!
//! What the oracle shares with the code under test: the pool's items in release order
//! (`Pool::items`), the batch seed and each entry's random number (`batch_seed`,
//! `entry_random`). It checks the draw's choices given those, not those themselves: a defect in
//! the release order or the seed derivation is mirrored here, not caught. The money
//! invariants below do not depend on them.

use std::collections::{BTreeSet, HashMap};

use proptest::collection::vec;
use proptest::prelude::*;
use shake_allocator::award::{Award, BatchKey};
use shake_allocator::config::{CashPool, GiftPool, Release, RoundConfig};
use shake_allocator::draw::{Draw, batch_seed, entry_random};
use shake_allocator::pool::{Item, Kind, Pool};
use shake_allocator::round_command::{RoundAction, RoundCommand};
use shake_allocator::user_rate::UserRates;
use shake_proto::{Batch, BatchEntry, Prize};

const START: u64 = 1_000_000;

fn round(
    envelopes: u64,
    gifts: Vec<u64>,
    caps: (u8, u8),
    immediate: bool,
    seed: u64,
) -> RoundConfig {
    RoundConfig {
        id: 1,
        starts_at_ms: START,
        duration_s: 10,
        seed,
        release: if immediate { Release::Immediate } else { Release::Linear },
        cash_per_user: caps.0,
        gifts_per_user: caps.1,
        min_shake_interval_ms: 100,
        start_spread_ms: 0,
        cash: (envelopes > 0).then_some(CashPool {
            total_cents: envelopes * 150,
            envelopes,
            min_cents: 1,
        }),
        gifts: gifts
            .into_iter()
            .enumerate()
            .map(|(i, count)| GiftPool { sku: format!("G{i}"), name: format!("g{i}"), count })
            .collect(),
    }
}

/// Re-derives everything from the definitions, with sets and scans.
struct Oracle {
    config: RoundConfig,
    items: Vec<Item>,
    awarded: BTreeSet<usize>,
    wins: HashMap<(u64, bool), u8>,
}

impl Oracle {
    fn new(config: &RoundConfig) -> Self {
        let items = Pool::new(config).items().to_vec();
        Self { config: config.clone(), items, awarded: BTreeSet::new(), wins: HashMap::new() }
    }

    fn decide(&mut self, key: BatchKey, users: &[u64], now: u64) -> Vec<(u32, u64, Kind)> {
        let end = self.config.starts_at_ms + self.config.duration_s * 1000;
        if now < self.config.starts_at_ms || now >= end {
            return Vec::new();
        }
        let released = match self.config.release {
            Release::Immediate => self.items.len(),
            Release::Linear => {
                self.items.len() * (now - self.config.starts_at_ms) as usize
                    / (end - self.config.starts_at_ms) as usize
            }
        };
        let seed = batch_seed(self.config.seed, key);
        let mut out = Vec::new();
        for (i, user) in users.iter().enumerate() {
            let left = |kind: Kind, awarded: &BTreeSet<usize>| {
                (0..released)
                    .filter(|j| self.items[*j].kind() == kind && !awarded.contains(j))
                    .collect::<Vec<_>>()
            };
            let may =
                |cash: bool, cap: u8| self.wins.get(&(*user, cash)).copied().unwrap_or(0) < cap;
            let cash = if may(true, self.config.cash_per_user) {
                left(Kind::Cash, &self.awarded)
            } else {
                vec![]
            };
            let gifts = if may(false, self.config.gifts_per_user) {
                left(Kind::Gift, &self.awarded)
            } else {
                vec![]
            };
            let random = entry_random(seed, i as u32);
            let total = (cash.len() + gifts.len()) as u64;
            if total == 0 {
                continue;
            }
            let (kind, pick) =
                if gifts.is_empty() || (!cash.is_empty() && random % total < cash.len() as u64) {
                    (Kind::Cash, cash[0])
                } else {
                    (Kind::Gift, gifts[0])
                };
            self.awarded.insert(pick);
            *self.wins.entry((*user, kind == Kind::Cash)).or_default() += 1;
            out.push((i as u32, *user, kind));
        }
        out
    }
}

fn kind_of(prize: &Prize) -> Kind {
    match prize {
        Prize::Cash { .. } => Kind::Cash,
        Prize::Gift { .. } => Kind::Gift,
    }
}

type Batches = Vec<(u64, Vec<u64>)>;

fn run_fast(config: &RoundConfig, batches: &Batches) -> Vec<Award> {
    run_live(config, batches).1
}

/// The draw that decided `batches` (the live state), and its awards.
fn run_live(config: &RoundConfig, batches: &Batches) -> (Draw, Vec<Award>) {
    let mut draw = Draw::new(std::slice::from_ref(config));
    let mut awards = Vec::new();
    for (seq, (at, users)) in batches.iter().enumerate() {
        let entries: Vec<BatchEntry> =
            users.iter().map(|u| BatchEntry { user_id: *u, offset_us: 0 }).collect();
        let key = BatchKey { edge_id: 1, worker_id: 0, instance_id: 5, seq: seq as u64 + 1 };
        // The oracle models the draw alone; the per-user rate has tests of its own.
        let batch = Batch::new(key.seq, 1, 0, &entries);
        draw.decide(key, &batch, START + at, &mut UserRates::off(), &mut awards);
    }
    (draw, awards)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn fast_draw_matches_the_oracle_and_keeps_the_money_invariants(
        envelopes in 0u64..60,
        gifts in vec(1u64..8, 0..3),
        caps in (0u8..3, 0u8..3),
        immediate in any::<bool>(),
        seed in any::<u64>(),
        batches in vec((0u64..12_000, vec(0u64..25, 0..40)), 1..25),
    ) {
        prop_assume!(envelopes > 0 || !gifts.is_empty());
        let config = round(envelopes, gifts, caps, immediate, seed);
        let mut batches = batches;
        batches.sort_by_key(|(at, _)| *at);

        let awards = run_fast(&config, &batches);
        prop_assert_eq!(&awards, &run_fast(&config, &batches), "same input, same answer");

        let mut oracle = Oracle::new(&config);
        let mut expected = Vec::new();
        for (seq, (at, users)) in batches.iter().enumerate() {
            let key = BatchKey { edge_id: 1, worker_id: 0, instance_id: 5, seq: seq as u64 + 1 };
            for (i, user, kind) in oracle.decide(key, users, START + at) {
                expected.push((key.seq, i, user, kind));
            }
        }
        let got: Vec<_> =
            awards.iter().map(|a| (a.batch.seq, a.entry_index, a.user_id, kind_of(&a.prize))).collect();
        prop_assert_eq!(got, expected);

        // No item twice; ids unique and increasing.
        let items: BTreeSet<u32> = awards.iter().map(|a| a.item).collect();
        prop_assert_eq!(items.len(), awards.len());
        prop_assert!(awards.windows(2).all(|w| w[0].award_id < w[1].award_id));
        // Caps held.
        let mut per_user: HashMap<(u64, bool), u8> = HashMap::new();
        for a in &awards {
            *per_user.entry((a.user_id, kind_of(&a.prize) == Kind::Cash)).or_default() += 1;
        }
        for ((_, cash), n) in per_user {
            let cap = if cash { config.cash_per_user } else { config.gifts_per_user };
            prop_assert!(n <= cap, "user over the cap");
        }
        // Cash never over the pool; exact when every envelope went.
        let paid: u64 = awards.iter().filter_map(|a| match a.prize { Prize::Cash { cents } => Some(cents), _ => None }).sum();
        let total = config.cash.as_ref().map_or(0, |c| c.total_cents);
        prop_assert!(paid <= total);
        let cash_awards = awards.iter().filter(|a| kind_of(&a.prize) == Kind::Cash).count() as u64;
        if cash_awards == envelopes {
            prop_assert_eq!(paid, total);
        }
    }

    #[test]
    fn restoring_from_awards_rebuilds_the_same_state(
        seed in any::<u64>(),
        batches in vec((0u64..12_000, vec(0u64..25, 0..40)), 1..20),
        more in vec(0u64..25, 1..40),
    ) {
        let config = round(40, vec![5], (1, 1), false, seed);
        let mut batches = batches;
        batches.sort_by_key(|(at, _)| *at);
        // The live draw, as it stands after deciding the batches, against one rebuilt from its
        // awards alone (what a restart does).
        let (mut live, awards) = run_live(&config, &batches);
        let mut restored = Draw::new(std::slice::from_ref(&config));
        for award in &awards {
            restored.restore(award).unwrap();
        }
        // A double restore of the same award is refused: that would be paying twice.
        if let Some(first) = awards.first() {
            prop_assert!(restored.clone().restore(first).is_err());
        }
        prop_assert_eq!(restored.next_award_id(), awards.last().map_or(1, |a| a.award_id + 1));
        // Both continue identically after the restart.
        let entries: Vec<BatchEntry> = more.iter().map(|u| BatchEntry { user_id: *u, offset_us: 0 }).collect();
        let key = BatchKey { edge_id: 2, worker_id: 0, instance_id: 6, seq: 1 };
        let batch = Batch::new(1, 1, 0, &entries);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        restored.decide(key, &batch, START + 9_999, &mut UserRates::off(), &mut a);
        live.decide(key, &batch, START + 9_999, &mut UserRates::off(), &mut b);
        prop_assert_eq!(&a, &b);
        let taken: BTreeSet<u32> = awards.iter().chain(a.iter()).map(|x| x.item).collect();
        prop_assert_eq!(taken.len(), awards.len() + a.len());
    }

    #[test]
    fn a_round_changed_by_commands_restores_to_the_same_state(
        seed in any::<u64>(),
        batches in vec((0u64..12_000, vec(0u64..40, 0..40)), 1..20),
        top_up_at in 0u64..9_000,
        top_up in (1u64..30, 0u64..4),
        pause in (0u64..9_000, 1u64..3_000),
        more in vec(0u64..40, 1..40),
    ) {
        let config = round(20, vec![3], (2, 2), false, seed);
        let command = |n: u64, action: RoundAction, at: u64| RoundCommand {
            command_id: format!("c{n}"),
            round_id: 1,
            action,
            issued_by: "test".into(),
            at_ms: START + at,
        };
        let (envelopes, mugs) = top_up;
        let mut commands = vec![
            command(1, RoundAction::TopUp {
                cash: Some(CashPool { total_cents: envelopes * 10, envelopes, min_cents: 1 }),
                gifts: (mugs > 0)
                    .then(|| GiftPool { sku: "mug".into(), name: "Mug".into(), count: mugs })
                    .into_iter()
                    .chain([GiftPool { sku: "G0".into(), name: "g0".into(), count: 1 }])
                    .collect(),
            }, top_up_at),
            command(2, RoundAction::Pause, pause.0),
            command(3, RoundAction::Resume, pause.0 + pause.1),
        ];
        commands.sort_by_key(|c| c.at_ms);
        let mut batches = batches;
        batches.sort_by_key(|(at, _)| *at);

        // Live: batches and commands in time order.
        let mut live = Draw::new(std::slice::from_ref(&config));
        let mut awards = Vec::new();
        let mut pending = commands.iter().peekable();
        for (seq, (at, users)) in batches.iter().enumerate() {
            while let Some(c) = pending.next_if(|c| c.at_ms <= START + at) {
                live.apply_command(c).unwrap();
            }
            let entries: Vec<BatchEntry> =
                users.iter().map(|u| BatchEntry { user_id: *u, offset_us: 0 }).collect();
            let key = BatchKey { edge_id: 1, worker_id: 0, instance_id: 5, seq: seq as u64 + 1 };
            let batch = Batch::new(key.seq, 1, 0, &entries);
            let before = awards.len();
            live.decide(key, &batch, START + at, &mut UserRates::off(), &mut awards);
            let paused = (pause.0..pause.0 + pause.1).contains(at);
            prop_assert!(!paused || awards.len() == before, "a paused round drew");
        }
        for c in pending {
            live.apply_command(c).unwrap();
        }
        // Rebuilt as a restart does: every command, then every award.
        let mut restored = Draw::new(std::slice::from_ref(&config));
        for c in &commands {
            restored.apply_command(c).unwrap();
        }
        for award in &awards {
            restored.restore(award).unwrap();
        }
        let (l, r) = (live.round(1).unwrap(), restored.round(1).unwrap());
        prop_assert_eq!(l.pool().items(), r.pool().items());
        prop_assert_eq!(l.pool().left(), r.pool().left());
        prop_assert_eq!(l.pool().items().len() as u64, 20 + 3 + envelopes + mugs + 1);
        // Money: no item twice, cash never over the pool and its top-up.
        let items: BTreeSet<u32> = awards.iter().map(|a| a.item).collect();
        prop_assert_eq!(items.len(), awards.len());
        let paid: u64 = awards.iter().filter_map(|a| match a.prize { Prize::Cash { cents } => Some(cents), _ => None }).sum();
        prop_assert!(paid <= 20 * 150 + envelopes * 10);
        // Both continue identically.
        let entries: Vec<BatchEntry> = more.iter().map(|u| BatchEntry { user_id: 100 + *u, offset_us: 0 }).collect();
        let key = BatchKey { edge_id: 2, worker_id: 0, instance_id: 6, seq: 1 };
        let batch = Batch::new(1, 1, 0, &entries);
        let end = l.timing().ends_at_ms - 1;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        restored.decide(key, &batch, end, &mut UserRates::off(), &mut a);
        live.decide(key, &batch, end, &mut UserRates::off(), &mut b);
        prop_assert_eq!(&a, &b);
    }
}
