//! The shard's memory of terminated orders: a bounded ring of the most
//! recently finished orders (filled or canceled), indexed by (account,
//! client order id).
//!
//! Why it exists: a client that lost its connection (or saw the server
//! restart) cannot tell from silence whether an order it sent executed.
//! It asks ([`wire::OrderQuery`]) and the shard answers from the live book
//! or from here; and if it simply sends the order again, the shard finds
//! the key here and rejects the copy as a duplicate (with the first
//! order's status) rather than execute it twice. The ring is part of the
//! shard's state: snapshots carry it and replay rebuilds it, so both
//! survive restarts.
//!
//! Bounded: at most `history_max` entries (a [`super::ShardConfig`]
//! field); when full, the oldest entry is forgotten to make room, and a
//! query about it answers `Unknown`. Memory: an entry is 40 bytes and the
//! index holds 8-byte entries for twice the capacity rounded up to a power
//! of two (16 to 32 bytes per entry), so 56 to 72 bytes per remembered
//! order: 56 MiB for the default 2^20 entries, mapped lazily as the ring
//! fills. Both the ring and the index are reserved when the shard is
//! built, and the index uses its whole table from the start (unlike the
//! order index, it is meant to fill, and growing would rebuild it on the
//! hot path); remembering an order never allocates.
//!
//! Cost: a NewOrder looks its key up here too (prefetched a few commands
//! ahead by `Shard::process_batch`), and a terminated order writes a ring
//! entry, inserts its key and, once the ring is full, removes the oldest
//! key (whose bucket is prefetched one push ahead).

use wire::OrderState;

use super::index::SlotIndex;

/// Largest `history_max`: ring positions are `u32` slots in a
/// slot index, whose array is twice the capacity.
pub const HISTORY_MAX_LIMIT: u32 = 1 << 28;

/// How many pushes ahead the index bucket of an entry to be forgotten is
/// prefetched.
const EVICT_PREFETCH_AHEAD: usize = 8;

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

/// The ring and its index. See the module docs.
#[derive(Debug)]
pub(crate) struct History {
    /// Entries, oldest at `oldest` once the ring is full; before that,
    /// oldest first from 0. Capacity `max`, reserved up front.
    entries: Vec<FinishedOrder>,
    max: usize,
    /// The entry the next push overwrites once the ring is full.
    oldest: usize,
    /// (account, client order id) -> position in `entries`.
    index: SlotIndex,
}

impl History {
    /// An empty history for at most `max` entries (0: remember nothing).
    pub(crate) fn new(max: u32) -> Self {
        History {
            entries: Vec::with_capacity(max as usize),
            max: max as usize,
            oldest: 0,
            // Full size from the start: the ring is meant to fill, and a
            // growing index would rebuild itself (millions of keys, on the
            // hot path) while it does.
            index: SlotIndex::new_full(max as usize),
        }
    }

    /// Entries held.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entry for a key, if it is remembered.
    #[inline]
    pub(crate) fn find(&self, account: u64, client_order_id: u64) -> Option<&FinishedOrder> {
        let entries = &self.entries;
        self.index
            .find(account, client_order_id, |slot| {
                let e = &entries[slot as usize];
                (e.account, e.client_order_id)
            })
            .map(|f| &entries[f.slot as usize])
    }

    /// Hints the CPU to load the index bucket of a key (see
    /// `Shard::process_batch`).
    #[inline]
    pub(crate) fn prefetch(&self, account: u64, client_order_id: u64) {
        self.index.prefetch(account, client_order_id);
    }

    /// Remembers a terminated order, forgetting the oldest entry if the
    /// ring is full. The key must not be remembered already: the shard
    /// refuses a NewOrder whose key is here, so a key terminates again
    /// only after it was forgotten.
    #[inline]
    pub(crate) fn push(&mut self, entry: FinishedOrder) {
        if self.max == 0 {
            return;
        }
        debug_assert!(self.find(entry.account, entry.client_order_id).is_none());
        let slot = if self.entries.len() < self.max {
            self.entries.push(entry);
            self.entries.len() - 1
        } else {
            let slot = self.oldest;
            let old = &self.entries[slot];
            let position = self
                .index
                .position_of(old.account, old.client_order_id, slot as u32);
            self.index.remove_at(position);
            self.entries[slot] = entry;
            self.oldest = if slot + 1 == self.max { 0 } else { slot + 1 };
            // A later push removes this one's key: start loading its
            // bucket a few pushes ahead (the ring is read in order, which
            // the hardware prefetches).
            let ahead = (self.oldest + EVICT_PREFETCH_AHEAD) % self.max;
            let victim = &self.entries[ahead];
            self.index.prefetch(victim.account, victim.client_order_id);
            slot
        };
        // The table has room for twice `max` keys from the start.
        debug_assert!(!self.index.needs_growth());
        self.index
            .insert(entry.account, entry.client_order_id, slot as u32);
    }

    /// The entries from the oldest to the newest: the order in which they
    /// will be forgotten.
    pub(crate) fn iter_oldest_first(&self) -> impl Iterator<Item = &FinishedOrder> + '_ {
        let (newer, older) = self.entries.split_at(self.oldest);
        older.iter().chain(newer.iter())
    }

    /// Structural check: every entry is findable at its own position, the
    /// index holds nothing else, and states are terminal.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.entries.len() > self.max {
            return Err(format!(
                "history holds {} entries, above its limit {}",
                self.entries.len(),
                self.max
            ));
        }
        if self.index.len() != self.entries.len() {
            return Err(format!(
                "history holds {} entries but indexes {}",
                self.entries.len(),
                self.index.len()
            ));
        }
        for (slot, e) in self.entries.iter().enumerate() {
            let entries = &self.entries;
            let found = self.index.find(e.account, e.client_order_id, |s| {
                let e = &entries[s as usize];
                (e.account, e.client_order_id)
            });
            if found.map(|f| f.slot as usize) != Some(slot) {
                return Err(format!(
                    "history entry {slot} ({}, {}) is not indexed at its position",
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
