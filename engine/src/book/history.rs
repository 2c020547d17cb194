//! The shard's memory of terminated orders: the most recently finished
//! orders (filled or canceled), findable by (account, client order id).
//!
//! Why it exists: a client that lost its connection (or saw the server
//! restart) cannot tell from silence whether an order it sent executed.
//! It asks ([`wire::OrderQuery`]) and the shard answers from the live book
//! or from here; and if it simply sends the order again, the shard finds
//! the key here and rejects the copy as a duplicate (with the first
//! order's status) rather than execute it twice. The history is part of
//! the shard's state: snapshots carry it and replay rebuilds it, so both
//! survive restarts.
//!
//! Bounded: it remembers exactly the last `history_max` terminated orders
//! (a [`super::ShardConfig`] field); an older one is forgotten, and a query
//! about it answers `Unknown`.
//!
//! Layout, and why: entries go into a ring in termination order, and the
//! ring is cut into *generations* of [`GENERATION`] consecutive entries,
//! each with its own small index (key -> ring slot). Remembering an order
//! writes the next ring entry (sequential memory) and inserts its key into
//! the current generation's index, 512 KiB that stays in the CPU's L2;
//! forgetting needs no per-entry work: when a new generation starts, it
//! takes over the index of the oldest one, which by then holds only
//! entries beyond the last `history_max`, and clears it in one pass. The
//! previous design (one index over the whole ring, 16 MiB at the default
//! size) paid a cache miss to insert each key and another to remove the
//! oldest: on the heavy-matching mix about half of the book's time
//! (valgrind cachegrind with a 2 MiB last level; README "The matching core
//! alone"). A lookup now probes each generation's index, newest first
//! (up to 33 at the default size), but lookups are rare: a new order
//! skips them when its id is above its account's high-water mark
//! (`seen.rs`), so only queries, resent orders and restores pay them.
//!
//! Memory: 40 bytes an entry for `history_max` plus one generation, and
//! 16 bytes an entry of index: about 57 MiB at the default 2^20, mapped
//! lazily as the ring fills. Everything is reserved when the shard is
//! built; remembering an order never allocates.

use wire::OrderState;

use super::index::SlotIndex;

/// Largest `history_max`: ring positions are `u32` slots.
pub const HISTORY_MAX_LIMIT: u32 = 1 << 28;

/// Entries per generation (a power of two): its index is 512 KiB.
const GENERATION: usize = 1 << 15;

/// A terminated order as the history remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FinishedOrder {
    /// The owning account.
    pub account: u64,
    /// The client's id.
    pub client_order_id: u64,
    /// The exchange's id.
    pub order_id: u64,
    /// Quantity filled over the order's life.
    pub filled_quantity: u64,
    /// Its symbol.
    pub symbol: u32,
    /// `Filled` or `Canceled`.
    pub state: OrderState,
}

const _: () = assert!(core::mem::size_of::<FinishedOrder>() == 40);

/// The ring and its generations' indexes. See the module docs.
#[derive(Debug)]
pub(crate) struct History {
    /// The ring: entry `n` (counting every push) lives at `n % ring_len`.
    /// Reserved up front; filled as entries arrive.
    entries: Vec<FinishedOrder>,
    /// Entries remembered at most.
    max: usize,
    /// Entries per generation (`GENERATION`, or less for a small history).
    generation: usize,
    /// Ring length: `generations.len() * generation`, at least `max + generation`.
    ring_len: usize,
    /// Entries pushed so far.
    pushed: u64,
    /// The ring slot the next push writes (`pushed % ring_len`).
    next_slot: usize,
    /// The index the next push inserts into, and how many pushes its
    /// generation still takes (0: the next push starts a generation).
    current: usize,
    left: usize,
    /// One index per generation, used in turn: generation `g` (entries
    /// `g * generation ..`) indexes into `indexes[g % indexes.len()]`.
    indexes: Vec<SlotIndex>,
}

impl History {
    /// An empty history for at most `max` entries (0: remember nothing).
    pub(crate) fn new(max: u32) -> Self {
        let max = max as usize;
        let generation = GENERATION.min(max.max(1));
        // Enough generations that the one being cleared holds only
        // entries beyond the last `max`.
        let count = if max == 0 {
            0
        } else {
            max.div_ceil(generation) + 1
        };
        History {
            entries: Vec::with_capacity(count * generation),
            max,
            generation,
            ring_len: count * generation,
            pushed: 0,
            next_slot: 0,
            current: 0,
            left: 0,
            // Full size from the start: a generation is meant to fill.
            indexes: (0..count)
                .map(|_| SlotIndex::new_full(generation))
                .collect(),
        }
    }

    /// Entries held.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        (self.pushed as usize).min(self.max)
    }

    /// The oldest push count still remembered.
    #[inline]
    fn oldest(&self) -> u64 {
        self.pushed - self.len() as u64
    }

    /// The push count of the entry in ring `slot` of generation `g`.
    #[inline]
    fn count_of(&self, g: u64, slot: u32) -> u64 {
        let first = g * self.generation as u64;
        first + (slot as u64 - first % self.ring_len as u64)
    }

    /// The entry for a key, if it is remembered.
    pub(crate) fn find(&self, account: u64, client_order_id: u64) -> Option<&FinishedOrder> {
        if self.pushed == 0 {
            return None;
        }
        let entries = &self.entries;
        let newest = (self.pushed - 1) / self.generation as u64;
        let oldest = self.oldest() / self.generation as u64;
        // Newest first: a key pushed again after it was forgotten can
        // still sit in an older generation beyond the window.
        for g in (oldest..=newest).rev() {
            let index = &self.indexes[(g % self.indexes.len() as u64) as usize];
            let found = index.find(account, client_order_id, |slot| {
                let e = &entries[slot as usize];
                (e.account, e.client_order_id)
            });
            if let Some(f) = found {
                return (self.count_of(g, f.slot) >= self.oldest())
                    .then(|| &entries[f.slot as usize]);
            }
        }
        None
    }

    /// Hints the CPU to load the bucket the key would go into if its
    /// order terminated now (see `Shard::process_batch`).
    #[inline]
    pub(crate) fn prefetch(&self, account: u64, client_order_id: u64) {
        if self.max > 0 {
            self.indexes[self.current].prefetch(account, client_order_id);
        }
    }

    /// Remembers a terminated order; the entry `max` pushes back is
    /// forgotten. The key must not be remembered already: the shard
    /// refuses a NewOrder whose key is here, so a key terminates again
    /// only after it was forgotten.
    #[inline]
    pub(crate) fn push(&mut self, entry: FinishedOrder) {
        if self.max == 0 {
            return;
        }
        debug_assert!(self.find(entry.account, entry.client_order_id).is_none());
        // Counters instead of divisions: the ring length is no power of two.
        if self.left == 0 {
            // A new generation takes over the index of the oldest one,
            // whose entries are all more than `max` pushes back.
            if self.pushed > 0 {
                self.current = if self.current + 1 == self.indexes.len() {
                    0
                } else {
                    self.current + 1
                };
            }
            self.indexes[self.current].clear();
            self.left = self.generation;
        }
        let slot = self.next_slot;
        if slot == self.entries.len() {
            self.entries.push(entry);
        } else {
            self.entries[slot] = entry;
        }
        self.indexes[self.current].insert(entry.account, entry.client_order_id, slot as u32);
        self.left -= 1;
        self.next_slot = if slot + 1 == self.ring_len {
            0
        } else {
            slot + 1
        };
        self.pushed += 1;
        debug_assert_eq!(
            self.current as u64,
            (self.pushed - 1) / self.generation as u64 % self.indexes.len() as u64
        );
    }

    /// The remembered entries from the oldest to the newest: the order in
    /// which they will be forgotten.
    pub(crate) fn iter_oldest_first(&self) -> impl Iterator<Item = &FinishedOrder> + '_ {
        (self.oldest()..self.pushed).map(|n| &self.entries[(n % self.ring_len as u64) as usize])
    }

    /// Structural check: every remembered entry is findable at its own
    /// slot, each generation's index holds exactly its pushes, and states
    /// are terminal.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.len() > self.max {
            return Err(format!(
                "history holds {} entries, above its limit {}",
                self.len(),
                self.max
            ));
        }
        if self.pushed > 0 {
            // The last `indexes.len()` generations with pushes each hold
            // exactly their pushes; the other indexes are empty.
            let (count, size) = (self.indexes.len() as u64, self.generation as u64);
            let last = (self.pushed - 1) / size;
            let mut keys = 0;
            for g in last.saturating_sub(count - 1)..=last {
                let expected = (self.pushed - g * size).min(size) as usize;
                let held = self.indexes[(g % count) as usize].len();
                if held != expected {
                    return Err(format!(
                        "history generation {g} indexes {held} keys, expected {expected}"
                    ));
                }
                keys += held;
            }
            let total: usize = self.indexes.iter().map(SlotIndex::len).sum();
            if total != keys {
                return Err(format!(
                    "history indexes hold {total} keys, expected {keys}"
                ));
            }
        }
        for (k, e) in self.iter_oldest_first().enumerate() {
            let slot = ((self.oldest() + k as u64) % self.ring_len as u64) as usize;
            let found = self
                .find(e.account, e.client_order_id)
                .map(|f| std::ptr::eq(f, &self.entries[slot]));
            if found != Some(true) {
                return Err(format!(
                    "history entry {slot} ({}, {}) is not found at its slot",
                    e.account, e.client_order_id
                ));
            }
            if !matches!(e.state, OrderState::Filled | OrderState::Canceled) {
                return Err(format!("history entry {slot} has state {}", e.state));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(account: u64, id: u64) -> FinishedOrder {
        FinishedOrder {
            account,
            client_order_id: id,
            order_id: 1000 + id,
            filled_quantity: id,
            symbol: 3,
            state: if id.is_multiple_of(2) {
                OrderState::Filled
            } else {
                OrderState::Canceled
            },
        }
    }

    #[test]
    fn the_oldest_entry_is_forgotten_first() {
        let mut h = History::new(3);
        for id in 1..=3 {
            h.push(entry(7, id));
        }
        assert_eq!(h.find(7, 1), Some(&entry(7, 1)));
        h.push(entry(7, 4));
        assert_eq!(h.find(7, 1), None, "the oldest went first");
        for id in 2..=4 {
            assert_eq!(h.find(7, id), Some(&entry(7, id)));
        }
        let order: Vec<u64> = h.iter_oldest_first().map(|e| e.client_order_id).collect();
        assert_eq!(order, [2, 3, 4]);
        // Wrap around several times; the ring keeps the newest three.
        for id in 5..=20 {
            h.push(entry(8, id));
            h.check().unwrap();
        }
        let order: Vec<u64> = h.iter_oldest_first().map(|e| e.client_order_id).collect();
        assert_eq!(order, [18, 19, 20]);
        assert_eq!(h.find(7, 4), None);
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn a_forgotten_key_can_be_remembered_again() {
        let mut h = History::new(2);
        h.push(entry(1, 1));
        h.push(entry(1, 2));
        h.push(entry(1, 3));
        assert_eq!(h.find(1, 1), None);
        let mut again = entry(1, 1);
        again.filled_quantity = 99;
        h.push(again);
        assert_eq!(h.find(1, 1), Some(&again));
        h.check().unwrap();
    }

    #[test]
    fn a_zero_sized_history_remembers_nothing() {
        let mut h = History::new(0);
        h.push(entry(1, 1));
        assert_eq!(h.len(), 0);
        assert_eq!(h.find(1, 1), None);
        h.check().unwrap();
    }

    #[test]
    fn generations_roll_over_and_keep_exactly_the_newest_entries() {
        // Several generations of the real size, and a window that does not
        // end on a generation boundary.
        let max = GENERATION as u64 * 2 + 123;
        let mut h = History::new(max as u32);
        let total = GENERATION as u64 * 5 + 77;
        for id in 0..total {
            h.push(entry(id % 5, id));
        }
        h.check().unwrap();
        assert_eq!(h.len() as u64, max);
        for id in (0..total).step_by(97).chain(total - max - 3..total) {
            assert_eq!(h.find(id % 5, id).is_some(), id >= total - max, "id {id}");
        }
        let first = h.iter_oldest_first().next().unwrap().client_order_id;
        assert_eq!(first, total - max);
        // A forgotten key pushed again is found at its new place, even
        // though an old generation may still hold its first entry.
        let mut again = entry(0, 0);
        again.filled_quantity = 4242;
        h.push(again);
        assert_eq!(h.find(0, 0), Some(&again));
        h.check().unwrap();
    }

    #[test]
    fn a_large_ring_keeps_exactly_the_newest_entries() {
        let mut h = History::new(1000);
        for id in 0..2500 {
            h.push(entry(id % 7, id));
        }
        h.check().unwrap();
        for id in 0..2500 {
            assert_eq!(h.find(id % 7, id).is_some(), id >= 1500, "id {id}");
        }
    }
}
