//! A worker's connected phones: a generational slab, so a batch entry's route stays a small
//! `Copy` value and a route to a phone that has left (its slot reused) is recognised as stale.

/// Where a phone sits in its worker's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhoneRef {
    slot: u32,
    generation: u32,
}

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    phone: Option<T>,
}

/// The table of phones (`T` is what the worker keeps per phone).
#[derive(Debug)]
pub struct PhoneTable<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for PhoneTable<T> {
    fn default() -> Self {
        Self { slots: Vec::new(), free: Vec::new(), len: 0 }
    }
}

impl<T> PhoneTable<T> {
    /// Phones connected.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True with no phone connected.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a phone.
    pub fn insert(&mut self, phone: T) -> PhoneRef {
        self.len += 1;
        match self.free.pop() {
            Some(slot) => {
                let entry = &mut self.slots[slot as usize];
                entry.phone = Some(phone);
                PhoneRef { slot, generation: entry.generation }
            }
            None => {
                self.slots.push(Slot { generation: 0, phone: Some(phone) });
                PhoneRef { slot: self.slots.len() as u32 - 1, generation: 0 }
            }
        }
    }

    /// The phone behind `at`, unless it has left.
    pub fn get(&self, at: PhoneRef) -> Option<&T> {
        self.slots
            .get(at.slot as usize)
            .filter(|s| s.generation == at.generation)
            .and_then(|s| s.phone.as_ref())
    }

    /// The phone behind `at`, unless it has left.
    pub fn get_mut(&mut self, at: PhoneRef) -> Option<&mut T> {
        self.slots
            .get_mut(at.slot as usize)
            .filter(|s| s.generation == at.generation)
            .and_then(|s| s.phone.as_mut())
    }

    /// Removes a phone; its slot's generation moves on so old routes go stale.
    pub fn remove(&mut self, at: PhoneRef) -> Option<T> {
        let slot =
            self.slots.get_mut(at.slot as usize).filter(|s| s.generation == at.generation)?;
        let phone = slot.phone.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(at.slot);
        self.len -= 1;
        Some(phone)
    }

    /// Every phone.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().filter_map(|s| s.phone.as_ref())
    }

    /// Where every phone sits, with the phone.
    pub fn entries(&self) -> impl Iterator<Item = (PhoneRef, &T)> {
        self.slots.iter().enumerate().filter_map(|(slot, s)| {
            let at = PhoneRef { slot: slot as u32, generation: s.generation };
            s.phone.as_ref().map(|phone| (at, phone))
        })
    }

    /// Every phone, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().filter_map(|s| s.phone.as_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_routes_miss_after_a_slot_is_reused() {
        let mut table = PhoneTable::default();
        let a = table.insert("a");
        let b = table.insert("b");
        assert_eq!(table.len(), 2);
        assert_eq!(table.remove(a), Some("a"));
        assert_eq!(table.remove(a), None);
        let c = table.insert("c");
        assert_eq!(table.get_mut(a), None, "a's route must not reach c");
        assert_eq!(table.get_mut(c).copied(), Some("c"));
        assert_eq!(table.get_mut(b).copied(), Some("b"));
        assert_eq!(table.iter().count(), 2);
    }
}
