//! One round's prizes: every item in its seeded release order, which of them are released,
//! and which released items are still unawarded, by kind.
//!
//! Items never move: an item's index in the release order is its identity, recorded with the
//! award, so a restart can mark exactly the awarded items again.
//!
//! Which available item a random number picks depends only on which items are available (the
//! `k`th in release order), never on the order they were taken in: so a pool rebuilt from the
//! ledger picks exactly what the live one would have (`tests/draw_oracle.rs` compares them).
//! Availability is a Fenwick tree per kind, so a pick is O(log n). What is awarded and what is
//! left are running totals, kept where an item is marked: the gauges and the dashboard read
//! them several times a second for every round of the show, and a count over the items was
//! O(prizes) each time (a show of 200 rounds of 100,000 prizes scanned 20 M flags ten times a
//! second on the thread that draws).

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::config::{CashPool, RoundConfig};
use crate::split;

/// One prize of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// A cash envelope.
    Cash {
        /// Amount, cents.
        cents: u64,
    },
    /// A gift: index into the round's `gifts`.
    Gift {
        /// Which gift pool.
        pool: u16,
    },
}

/// The kinds of prize a user may be capped on separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Cash envelopes.
    Cash,
    /// Gifts.
    Gift,
}

/// The prizes of one round and their state.
#[derive(Debug, Clone)]
pub struct Pool {
    items: Vec<Item>,
    released: usize,
    awarded: Vec<bool>,
    totals: Totals,
    available_cash: Available,
    available_gifts: Available,
}

/// Running totals over the items: kept in step with `awarded` by [`Pool::mark_awarded`] and the
/// constructors, so that reading them costs nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Totals {
    awarded: usize,
    cents_left: u64,
    gifts_left: usize,
}

impl Totals {
    fn add_unawarded(&mut self, items: &[Item]) {
        for item in items {
            match item {
                Item::Cash { cents } => self.cents_left = self.cents_left.saturating_add(*cents),
                Item::Gift { .. } => self.gifts_left += 1,
            }
        }
    }
}

/// A set of item indexes with O(log n) insert, remove and "the `k`th smallest member".
#[derive(Debug, Clone)]
struct Available {
    /// Fenwick tree of membership counts, 1-based.
    tree: Vec<u32>,
    len: usize,
}

impl Available {
    fn new(capacity: usize) -> Self {
        Self { tree: vec![0; capacity + 1], len: 0 }
    }

    fn add(&mut self, index: usize, delta: i32) {
        let mut at = index + 1;
        while at < self.tree.len() {
            self.tree[at] = self.tree[at].wrapping_add_signed(delta);
            at += at & at.wrapping_neg();
        }
        self.len = self.len.wrapping_add_signed(delta as isize);
    }

    /// The `k`th smallest member (0-based); `k < len`.
    fn select(&self, k: usize) -> usize {
        let mut at = 0;
        let mut left = k as u32 + 1;
        let mut step = (self.tree.len() - 1).checked_ilog2().map_or(0, |b| 1usize << b);
        while step > 0 {
            let next = at + step;
            if next < self.tree.len() && self.tree[next] < left {
                at = next;
                left -= self.tree[next];
            }
            step >>= 1;
        }
        at
    }
}

impl Pool {
    /// Splits the cash and orders every prize for release, both from the round's seed.
    pub fn new(round: &RoundConfig) -> Self {
        let gifts = round.gifts.iter().enumerate().map(|(pool, g)| (pool as u16, g.count));
        Self::from_items(ordered_items(round.seed, round.cash.as_ref(), gifts))
    }

    /// A pool of `items` in this release order, none released or awarded.
    fn from_items(items: Vec<Item>) -> Self {
        let awarded = vec![false; items.len()];
        let n = items.len();
        let mut totals = Totals::default();
        totals.add_unawarded(&items);
        Self {
            items,
            released: 0,
            awarded,
            totals,
            available_cash: Available::new(n),
            available_gifts: Available::new(n),
        }
    }

    /// Adds prizes after every existing item (a top-up during the show): `cash` split into
    /// envelopes and `gifts` (pool index, count), the new items ordered among themselves from
    /// `seed`. Existing items keep their indexes, so awards already recorded still name them.
    pub fn top_up(&mut self, seed: u64, cash: Option<&CashPool>, gifts: &[(u16, u64)]) {
        let added = ordered_items(seed, cash, gifts.iter().copied());
        self.totals.add_unawarded(&added);
        self.items.extend(added);
        self.awarded.resize(self.items.len(), false);
        // The availability trees have a fixed size: rebuild them over the longer list.
        let n = self.items.len();
        self.available_cash = Available::new(n);
        self.available_gifts = Available::new(n);
        for index in 0..self.released {
            if !self.awarded[index] && self.items[index].payable() {
                match self.items[index] {
                    Item::Cash { .. } => self.available_cash.add(index, 1),
                    Item::Gift { .. } => self.available_gifts.add(index, 1),
                }
            }
        }
    }

    /// Every item, in release order.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// Items released so far.
    pub fn released(&self) -> usize {
        self.released
    }

    /// Items awarded so far.
    pub fn awarded_count(&self) -> usize {
        self.totals.awarded
    }

    /// What is not awarded yet: cash in cents, and gifts (released or not).
    pub fn left(&self) -> (u64, usize) {
        (self.totals.cents_left, self.totals.gifts_left)
    }

    /// Marks unawarded item `index` awarded, and counts it.
    fn mark_awarded(&mut self, index: usize) {
        self.awarded[index] = true;
        self.totals.awarded += 1;
        match self.items[index] {
            Item::Cash { cents } => {
                self.totals.cents_left = self.totals.cents_left.saturating_sub(cents)
            }
            Item::Gift { .. } => self.totals.gifts_left -= 1,
        }
    }

    /// Released and unawarded items of a kind.
    pub fn available(&self, kind: Kind) -> usize {
        match kind {
            Kind::Cash => self.available_cash.len,
            Kind::Gift => self.available_gifts.len,
        }
    }

    /// Releases items up to `target` (clamped to the pool). Releasing never goes back.
    pub fn release_until(&mut self, target: usize) {
        let target = target.min(self.items.len());
        while self.released < target {
            let index = self.released;
            if !self.awarded[index] && self.items[index].payable() {
                match self.items[index] {
                    Item::Cash { .. } => self.available_cash.add(index, 1),
                    Item::Gift { .. } => self.available_gifts.add(index, 1),
                }
            }
            self.released += 1;
        }
    }

    /// Takes an available item of `kind`, chosen by `random`; `None` if none is available.
    pub fn take(&mut self, kind: Kind, random: u64) -> Option<u32> {
        let list = match kind {
            Kind::Cash => &mut self.available_cash,
            Kind::Gift => &mut self.available_gifts,
        };
        if list.len == 0 {
            return None;
        }
        let item = list.select((random % list.len as u64) as usize);
        list.add(item, -1);
        // invariant: an item is available only while unawarded.
        debug_assert!(!self.awarded[item]);
        self.mark_awarded(item);
        Some(item as u32)
    }

    /// Marks an item awarded while rebuilding from the ledger (before any release).
    /// Returns false if the item does not exist or was already awarded: a corrupt ledger.
    pub fn restore_awarded(&mut self, item: u32) -> bool {
        assert_eq!(self.released, 0, "restore before releasing");
        match self.awarded.get(item as usize) {
            Some(false) => {
                self.mark_awarded(item as usize);
                true
            }
            _ => false,
        }
    }
}

/// `cash` split into envelopes and `gifts` (pool index, count), ordered for release: both
/// drawn from `seed`, so the same prizes and seed give the same items in the same order.
fn ordered_items(
    seed: u64,
    cash: Option<&CashPool>,
    gifts: impl Iterator<Item = (u16, u64)>,
) -> Vec<Item> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut items: Vec<Item> = match cash {
        Some(cash) => {
            split::double_mean(cash.total_cents, cash.envelopes, cash.min_cents, &mut rng)
                .into_iter()
                .map(|cents| Item::Cash { cents })
                .collect()
        }
        None => Vec::new(),
    };
    for (pool, count) in gifts {
        items.extend((0..count).map(|_| Item::Gift { pool }));
    }
    items.shuffle(&mut rng);
    items
}

impl Item {
    /// Whether the item can be drawn: an envelope's cents must travel in an answer (a varint,
    /// below 2^62). Only a pool recorded before cash pools were bounded can hold one that
    /// cannot; drawn, it panicked the allocator as it encoded the answer, before the commit,
    /// at every restart and on every standby in turn (the draw is the same each time). Such an
    /// envelope stays in the pool, never released.
    pub fn payable(&self) -> bool {
        match self {
            Item::Cash { cents } => *cents <= shake_proto::varint::MAX,
            Item::Gift { .. } => true,
        }
    }

    /// The kind of prize.
    pub fn kind(&self) -> Kind {
        match self {
            Item::Cash { .. } => Kind::Cash,
            Item::Gift { .. } => Kind::Gift,
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use super::*;

    /// An envelope too large to travel in an answer is never released, so never drawn; the
    /// rest of its pool is.
    #[test]
    fn an_envelope_that_cannot_travel_is_never_drawn() {
        let huge = Item::Cash { cents: shake_proto::varint::MAX + 1 };
        let mut pool = Pool::from_items(vec![huge, Item::Cash { cents: 5 }, huge]);
        pool.release_until(3);
        assert_eq!(pool.available(Kind::Cash), 1);
        assert_eq!(pool.take(Kind::Cash, 0), Some(1));
        assert_eq!(pool.take(Kind::Cash, 0), None);
        pool.top_up(1, None, &[(0, 1)]);
        assert_eq!(pool.available(Kind::Cash), 0, "a top-up's rebuild released it");
    }

    #[test]
    fn select_finds_the_kth_member_in_index_order() {
        let mut set = Available::new(100);
        let members = [0usize, 3, 4, 17, 63, 64, 99];
        for m in members {
            set.add(m, 1);
        }
        for (k, m) in members.iter().enumerate() {
            assert_eq!(set.select(k), *m, "k = {k}");
        }
        set.add(17, -1);
        assert_eq!((set.len, set.select(3), set.select(5)), (6, 63, 99));
    }

    /// The totals counted over every item, as the pool kept them before they were running.
    fn counted(pool: &Pool) -> (usize, u64, usize) {
        let mut counted = (0, 0, 0);
        for (item, awarded) in pool.items.iter().zip(&pool.awarded) {
            match (item, awarded) {
                (_, true) => counted.0 += 1,
                (Item::Cash { cents }, false) => counted.1 += cents,
                (Item::Gift { .. }, false) => counted.2 += 1,
            }
        }
        counted
    }

    /// The running totals stay equal to a count over the items through releases, takes of
    /// either kind, restores and top-ups, in a thousand random sequences.
    #[test]
    fn the_running_totals_are_the_counted_ones() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..1000 {
            let items = (0..rng.random_range(0..40u32))
                .map(|_| match rng.random_bool(0.5) {
                    true => Item::Cash { cents: rng.random_range(1..1_000) },
                    false => Item::Gift { pool: rng.random_range(0..3) },
                })
                .collect::<Vec<_>>();
            let mut pool = Pool::from_items(items);
            for item in 0..pool.items.len() as u32 {
                if rng.random_bool(0.2) {
                    assert!(pool.restore_awarded(item));
                }
            }
            let check = |pool: &Pool| {
                let (awarded, cents, gifts) = counted(pool);
                assert_eq!((pool.awarded_count(), pool.left()), (awarded, (cents, gifts)));
            };
            check(&pool);
            for _ in 0..60 {
                match rng.random_range(0..4) {
                    0 => pool.release_until(pool.released + rng.random_range(0..8)),
                    1 => pool.top_up(rng.random(), None, &[(rng.random_range(0..3), 3)]),
                    2 => _ = pool.take(Kind::Cash, rng.random()),
                    _ => _ = pool.take(Kind::Gift, rng.random()),
                }
                check(&pool);
            }
        }
    }
}
