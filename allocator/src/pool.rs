//! One round's prizes: every item in its seeded release order, which of them are released,
//! and which released items are still unawarded, by kind.
//!
//! Items never move: an item's index in the release order is its identity, recorded with the
//! award, so a restart can mark exactly the awarded items again.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::config::RoundConfig;
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
    available_cash: Vec<u32>,
    available_gifts: Vec<u32>,
}

impl Pool {
    /// Splits the cash and orders every prize for release, both from the round's seed.
    pub fn new(round: &RoundConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(round.seed);
        let mut items: Vec<Item> = match &round.cash {
            Some(cash) => {
                split::double_mean(cash.total_cents, cash.envelopes, cash.min_cents, &mut rng)
                    .into_iter()
                    .map(|cents| Item::Cash { cents })
                    .collect()
            }
            None => Vec::new(),
        };
        for (pool, gift) in round.gifts.iter().enumerate() {
            items.extend((0..gift.count).map(|_| Item::Gift { pool: pool as u16 }));
        }
        items.shuffle(&mut rng);
        let awarded = vec![false; items.len()];
        Self {
            items,
            released: 0,
            awarded,
            available_cash: Vec::new(),
            available_gifts: Vec::new(),
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
        self.awarded.iter().filter(|a| **a).count()
    }

    /// Released and unawarded items of a kind.
    pub fn available(&self, kind: Kind) -> usize {
        match kind {
            Kind::Cash => self.available_cash.len(),
            Kind::Gift => self.available_gifts.len(),
        }
    }

    /// Releases items up to `target` (clamped to the pool). Releasing never goes back.
    pub fn release_until(&mut self, target: usize) {
        let target = target.min(self.items.len());
        while self.released < target {
            let index = self.released;
            if !self.awarded[index] {
                match self.items[index] {
                    Item::Cash { .. } => self.available_cash.push(index as u32),
                    Item::Gift { .. } => self.available_gifts.push(index as u32),
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
        if list.is_empty() {
            return None;
        }
        let item = list.swap_remove((random % list.len() as u64) as usize);
        // invariant: an item is in an available list only while unawarded.
        debug_assert!(!self.awarded[item as usize]);
        self.awarded[item as usize] = true;
        Some(item)
    }

    /// Marks an item awarded while rebuilding from the ledger (before any release).
    /// Returns false if the item does not exist or was already awarded: a corrupt ledger.
    pub fn restore_awarded(&mut self, item: u32) -> bool {
        assert_eq!(self.released, 0, "restore before releasing");
        match self.awarded.get_mut(item as usize) {
            Some(awarded) if !*awarded => {
                *awarded = true;
                true
            }
            _ => false,
        }
    }
}

impl Item {
    /// The kind of prize.
    pub fn kind(&self) -> Kind {
        match self {
            Item::Cash { .. } => Kind::Cash,
            Item::Gift { .. } => Kind::Gift,
        }
    }
}
