//! A slot index: a key of two `u64` words -> a `u32` slot of a slab, in
//! O(1). The shard keeps its live orders by (account, client order id) in
//! one, for cancel, replace and query, and the history of terminated
//! orders one per generation. (Price levels need none: a book side finds
//! them by price offset in its window, `side.rs`.)
//!
//! A custom open-addressing table rather than `std::collections::HashMap`
//! because the book needs three things std does not give together: no
//! `RandomState` (the shard must be deterministic), storage allocated once
//! for the shard's whole capacity (no allocation in steady state), and
//! 8-byte entries so that a probe touches one cache line.
//!
//! Layout: a power-of-two array of `u64` entries, at least twice the most
//! keys it may hold, so the load factor never exceeds 1/2 and a probe
//! sequence is short. An entry packs the top 32 bits of the key's hash (the tag) above
//! `slot + 1`; 0 means empty, which lets the array come from a zeroed
//! allocation that the OS maps lazily. The key itself lives in the order
//! slab: a tag match is confirmed there, and the caller touches that order
//! anyway. The home bucket is the top bits of the hash (Fibonacci hashing),
//! recomputable from the tag, which is what backward-shift deletion needs.
//!
//! Dense prefix: the table uses only a power-of-two prefix of the array,
//! doubled (and rebuilt from the order slab) whenever it would pass half
//! full. A shard sized for a million orders that holds a thousand then
//! probes a 16 KiB table that stays in L1, instead of one random cache line
//! in 16 MiB per lookup; measured, this was the largest single cost of the
//! replace-heavy mix (a third of its time with a 2 MiB table). The prefix never shrinks and never allocates: the
//! array is reserved (and zeroed) once, for the shard's capacity.
//!
//! Hash flooding: the hash is a fixed multiplicative one (deterministic by
//! design), so a client that chose its ids adversarially could lengthen
//! probe sequences. Probing is bounded by the table size and the shard's
//! order limit bounds how much a single client can insert; a per-deployment
//! seed would be the next step if that ever matters.

/// Smallest table, so that the home-bucket shift stays below 32.
const CAPACITY_MIN: usize = 16;

/// A key's 64-bit hash: two multiply-xor rounds. Client order ids and
/// prices are often consecutive, so the multiply's high bits (which pick
/// the bucket) spread consecutive keys over the whole table.
#[inline]
fn hash(high: u64, low: u64) -> u64 {
    let x = high.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ low;
    let x = x.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    x ^ (x >> 29)
}

/// Asks the CPU to bring the cache line at `p` closer; a hint that never
/// faults, whatever `p` is.
#[inline(always)]
pub(crate) fn prefetch_read<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: SSE is part of the x86_64 baseline that every x86_64
        // build targets, and a prefetch never dereferences its address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Maps keys to slots. See the module docs.
#[derive(Debug)]
pub(crate) struct SlotIndex {
    /// The whole reserved array; only `entries[..=mask]` is in use.
    entries: Vec<u64>,
    /// The in-use prefix's length minus one.
    mask: usize,
    /// `32 - log2(mask + 1)`: the tag shifted right by this is the home bucket.
    home_shift: u32,
    /// Keys stored.
    len: usize,
}

/// Where a key was found: its entry position (for removal) and its slot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Found {
    pub(crate) position: usize,
    pub(crate) slot: u32,
}

impl SlotIndex {
    /// A table for at most `keys_max` keys (capacity: the next power of
    /// two at or above `2 * keys_max`).
    pub(crate) fn new(keys_max: usize) -> Self {
        let capacity = (2 * keys_max).next_power_of_two().max(CAPACITY_MIN);
        SlotIndex {
            // `vec![0; n]` allocates zeroed memory: pages are mapped on first use.
            entries: vec![0u64; capacity],
            mask: CAPACITY_MIN - 1,
            home_shift: 32 - CAPACITY_MIN.trailing_zeros(),
            len: 0,
        }
    }

    /// A table for at most `keys_max` keys that uses its whole array from
    /// the start, so it never grows (never rebuilds): for a table that is
    /// expected to fill, where a rebuild of millions of keys would be a
    /// stall on the hot path. The array is still zeroed lazily by the OS.
    pub(crate) fn new_full(keys_max: usize) -> Self {
        let mut index = Self::new(keys_max);
        let size = index.entries.len();
        index.mask = size - 1;
        index.home_shift = 32 - size.trailing_zeros();
        index
    }

    /// True when one more key would take the in-use prefix past half full:
    /// the caller must [`Self::grow`] before inserting.
    #[inline]
    pub(crate) fn needs_growth(&self) -> bool {
        2 * (self.len + 1) > self.mask + 1
    }

    /// Doubles the in-use prefix and re-inserts `keys` (every key stored:
    /// the caller walks its order slab). O(keys), and it happens only when
    /// the shard reaches a new high of live orders.
    pub(crate) fn grow(&mut self, keys: impl Iterator<Item = (u64, u64, u32)>) {
        let size = 2 * (self.mask + 1);
        // Never needed past the array: `len < keys_max` and the array
        // holds at least `2 * keys_max` entries.
        debug_assert!(size <= self.entries.len());
        self.entries[..=self.mask].fill(0);
        self.mask = size - 1;
        self.home_shift = 32 - size.trailing_zeros();
        self.len = 0;
        for (high, low, slot) in keys {
            self.insert(high, low, slot);
        }
    }

    #[inline]
    fn tag(high: u64, low: u64) -> u32 {
        (hash(high, low) >> 32) as u32
    }

    #[inline]
    fn home(&self, tag: u32) -> usize {
        (tag >> self.home_shift) as usize
    }

    /// Hints the CPU to load the cache line of a key's home bucket (no
    /// effect on the table's contents; see `Shard::process_batch`).
    #[inline]
    pub(crate) fn prefetch(&self, high: u64, low: u64) {
        let home = self.home(Self::tag(high, low));
        prefetch_read(self.entries[home..].as_ptr());
    }

    /// The slot in a key's home bucket if its tag matches, without
    /// confirming the key (for prefetching only: it may be another key's).
    #[inline]
    pub(crate) fn peek(&self, high: u64, low: u64) -> Option<u32> {
        let tag = Self::tag(high, low);
        let entry = self.entries[self.home(tag)];
        (entry != 0 && (entry >> 32) as u32 == tag).then(|| entry as u32 - 1)
    }

    /// Finds the slot of a key. `key_of(slot)` returns the key stored in
    /// that slot (the table keeps only tags).
    #[inline]
    pub(crate) fn find(
        &self,
        high: u64,
        low: u64,
        key_of: impl Fn(u32) -> (u64, u64),
    ) -> Option<Found> {
        let tag = Self::tag(high, low);
        let mut position = self.home(tag);
        loop {
            let entry = self.entries[position];
            if entry == 0 {
                return None;
            }
            if (entry >> 32) as u32 == tag {
                let slot = (entry as u32) - 1;
                if key_of(slot) == (high, low) {
                    return Some(Found { position, slot });
                }
            }
            position = (position + 1) & self.mask;
        }
    }

    /// Finds the entry position of a key known to be stored in `slot`
    /// (compares slots, so it never needs to read other orders' keys).
    #[inline]
    pub(crate) fn position_of(&self, high: u64, low: u64, slot: u32) -> usize {
        let tag = Self::tag(high, low);
        let wanted = (u64::from(tag) << 32) | u64::from(slot + 1);
        let mut position = self.home(tag);
        // The caller guarantees presence; the bound keeps a broken caller
        // from looping forever (it then hits the debug assertion below).
        for _ in 0..=self.mask {
            if self.entries[position] == wanted {
                return position;
            }
            position = (position + 1) & self.mask;
        }
        debug_assert!(false, "order slot {slot} is not in the index");
        position
    }

    /// Adds a key that is not present. The caller has grown the table if
    /// [`Self::needs_growth`] said so, so an empty entry exists.
    #[inline]
    pub(crate) fn insert(&mut self, high: u64, low: u64, slot: u32) {
        debug_assert!(2 * (self.len + 1) <= self.mask + 1);
        self.len += 1;
        let tag = Self::tag(high, low);
        let mut position = self.home(tag);
        while self.entries[position] != 0 {
            position = (position + 1) & self.mask;
        }
        self.entries[position] = (u64::from(tag) << 32) | u64::from(slot + 1);
    }

    /// Removes the entry at `position` with backward-shift deletion: later
    /// entries of the cluster move back into the hole when that keeps them
    /// reachable from their home, so no tombstones build up and lookups stay
    /// short forever.
    #[inline]
    pub(crate) fn remove_at(&mut self, position: usize) {
        self.len -= 1;
        let mut hole = position;
        let mut next = (position + 1) & self.mask;
        loop {
            let entry = self.entries[next];
            if entry == 0 {
                break;
            }
            let home = self.home((entry >> 32) as u32);
            // The entry may fill the hole if the hole lies on its probe path,
            // i.e. home..=next (cyclically) contains the hole.
            if (next.wrapping_sub(home) & self.mask) >= (next.wrapping_sub(hole) & self.mask) {
                self.entries[hole] = entry;
                hole = next;
            }
            next = (next + 1) & self.mask;
        }
        self.entries[hole] = 0;
    }

    /// Removes every key (one sequential pass over the in-use prefix).
    pub(crate) fn clear(&mut self) {
        self.entries[..=self.mask].fill(0);
        self.len = 0;
    }

    /// Keys stored.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Entries reserved (the most the prefix can grow to), for tests.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Entries in use, for tests.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.mask + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys stored in "slots" of a plain vector stand in for the order slab.
    fn find(index: &SlotIndex, keys: &[(u64, u64)], key: (u64, u64)) -> Option<u32> {
        index
            .find(key.0, key.1, |s| keys[s as usize])
            .map(|f| f.slot)
    }

    #[test]
    fn insert_find_remove_keep_every_other_key_reachable() {
        let mut index = SlotIndex::new(64);
        assert_eq!(index.capacity(), 128);
        let keys: Vec<(u64, u64)> = (0..64u64).map(|i| (i % 3, 1000 + i)).collect();
        for (slot, &(a, c)) in keys.iter().enumerate() {
            if index.needs_growth() {
                let stored = keys[..slot].iter().enumerate();
                index.grow(stored.map(|(s, &(a, c))| (a, c, s as u32)));
            }
            index.insert(a, c, slot as u32);
        }
        // The prefix doubled as keys arrived: 64 keys need 128 entries.
        assert_eq!(index.in_use(), 128);
        for (slot, &key) in keys.iter().enumerate() {
            assert_eq!(find(&index, &keys, key), Some(slot as u32));
        }
        assert_eq!(find(&index, &keys, (9, 9)), None);
        // Remove every other key; the rest must stay reachable.
        for slot in (0..64).step_by(2) {
            let (a, c) = keys[slot];
            let position = index.position_of(a, c, slot as u32);
            index.remove_at(position);
        }
        for (slot, &key) in keys.iter().enumerate() {
            let expect = (slot % 2 == 1).then_some(slot as u32);
            assert_eq!(find(&index, &keys, key), expect, "key {key:?}");
        }
    }

    #[test]
    fn long_clusters_survive_wraparound_deletes() {
        // A tiny table with many insert/remove rounds exercises clusters that
        // wrap around the end of the array.
        let mut index = SlotIndex::new(8);
        let mut live: Vec<Option<(u64, u64)>> = vec![None; 8];
        let mut seed = 0x1234_5678_u64;
        for round in 0..20_000u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let slot = (seed % 8) as usize;
            match live[slot] {
                Some((a, c)) => {
                    let found = index.find(a, c, |s| live[s as usize].unwrap()).unwrap();
                    assert_eq!(found.slot as usize, slot);
                    index.remove_at(found.position);
                    live[slot] = None;
                }
                None => {
                    let key = (seed % 5, round);
                    if index.needs_growth() {
                        let stored = live.iter().enumerate();
                        index.grow(stored.filter_map(|(s, k)| k.map(|(a, c)| (a, c, s as u32))));
                    }
                    index.insert(key.0, key.1, slot as u32);
                    live[slot] = Some(key);
                }
            }
            for (s, key) in live.iter().enumerate() {
                if let Some((a, c)) = *key {
                    let found = index
                        .find(a, c, |s| live[s as usize].unwrap())
                        .map(|f| f.slot);
                    assert_eq!(found, Some(s as u32));
                }
            }
        }
    }
}
