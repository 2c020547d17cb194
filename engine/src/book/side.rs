//! One side of one book: its price levels sorted by priority.
//!
//! Two parallel vectors, `keys` and `levels`, sorted ascending by key with
//! the BEST level at the END. The key is the price for bids and the negated
//! price for asks, so "better" is "greater key" on both sides and the
//! matching code needs no per-side branches. Best at the end makes the
//! common operations cheap: matching pops from the back, and orders arrive,
//! move and cancel mostly near the top of the book, where an insert or a
//! removal shifts only the few entries behind it. Keys sit in their own
//! vector so that a search scans contiguous `i64`s.
//!
//! Empty levels stay (tombstones): when a level's last order leaves, its
//! entry stays in the vectors (the shard keeps the level, with no orders)
//! unless it is the best one, so that an order arriving at that price later
//! (typically a replace moving an order by a few ticks) finds it without an
//! insert, and leaving needs no search and no memmove. Measured on the
//! replace-heavy mix, removing and re-inserting entries deep in the book
//! cost more than everything else in a move. The best entry is never
//! empty, so matching still reads the best level at the end. `active`
//! counts the non-empty levels (what the level limit applies to), and the
//! shard compacts a side when its tombstones outnumber its levels (plus
//! slack), which bounds searches and memory.
//!
//! The vectors grow on demand (doubling) up to about twice the side's level
//! limit; that growth happens while a book warms up to its working depth,
//! after which a side never allocates again (it never shrinks).

/// How many entries from the best end a search scans linearly before it
/// switches to binary search: most activity is within a few ticks of the
/// top, where a short scan beats the branchy bisection.
const LINEAR_SCAN_STEPS: usize = 8;

/// Price levels of one side, best last.
#[derive(Debug, Default)]
pub(crate) struct BookSide {
    keys: Vec<i64>,
    levels: Vec<u32>,
    /// Entries whose level has orders (the others are tombstones).
    pub(crate) active: u32,
}

impl BookSide {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        BookSide {
            keys: Vec::with_capacity(capacity),
            levels: Vec::with_capacity(capacity),
            active: 0,
        }
    }

    /// Number of entries, tombstones included.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The best level's key and level index.
    #[inline]
    pub(crate) fn best(&self) -> Option<(i64, u32)> {
        match (self.keys.last(), self.levels.last()) {
            (Some(&k), Some(&l)) => Some((k, l)),
            _ => None,
        }
    }

    /// The best key.
    #[inline]
    pub(crate) fn best_key(&self) -> Option<i64> {
        self.keys.last().copied()
    }

    /// Removes the best entry and returns its level.
    #[inline]
    pub(crate) fn pop_best(&mut self) -> Option<u32> {
        self.keys.pop();
        self.levels.pop()
    }

    /// Keeps only the entries whose level `keep` accepts, in order.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) {
        let mut kept = 0;
        for i in 0..self.keys.len() {
            if keep(self.levels[i]) {
                self.keys[kept] = self.keys[i];
                self.levels[kept] = self.levels[i];
                kept += 1;
            }
        }
        self.keys.truncate(kept);
        self.levels.truncate(kept);
    }

    /// The level at `position` (0 = worst).
    #[inline]
    pub(crate) fn at(&self, position: usize) -> (i64, u32) {
        (self.keys[position], self.levels[position])
    }

    /// Where `key` is: `Ok(position)` if a level has it, else
    /// `Err(insert position)`, like `slice::binary_search`.
    #[inline]
    pub(crate) fn find(&self, key: i64) -> Result<usize, usize> {
        let keys = &self.keys[..];
        let mut position = keys.len();
        let stop = position.saturating_sub(LINEAR_SCAN_STEPS);
        while position > stop {
            let k = keys[position - 1];
            if k == key {
                return Ok(position - 1);
            }
            if k < key {
                return Err(position);
            }
            position -= 1;
        }
        keys[..position].binary_search(&key)
    }

    /// Inserts a new level at `position` (from an `Err` of [`Self::find`]).
    /// The caller has checked the side's level limit.
    #[inline]
    pub(crate) fn insert(&mut self, position: usize, key: i64, level: u32) {
        self.keys.insert(position, key);
        self.levels.insert(position, level);
    }

    /// Levels best first: (key, level index).
    pub(crate) fn iter_best_first(&self) -> impl Iterator<Item = (i64, u32)> + '_ {
        self.keys
            .iter()
            .rev()
            .copied()
            .zip(self.levels.iter().rev().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_agrees_with_binary_search_near_and_far_from_the_best_end() {
        let mut side = BookSide::default();
        for (i, key) in (0..40).map(|k| k * 2).enumerate() {
            side.insert(i, key, i as u32);
        }
        for key in -1..82 {
            assert_eq!(side.find(key), side.keys.binary_search(&key), "key {key}");
        }
        assert_eq!(side.best(), Some((78, 39)));
        assert_eq!(side.pop_best(), Some(39));
        assert_eq!(side.best_key(), Some(76));
        side.retain(|level| level != 0);
        assert_eq!(side.at(0), (2, 1));
        let best_first: Vec<i64> = side.iter_best_first().map(|(k, _)| k).take(3).collect();
        assert_eq!(best_first, [76, 74, 72]);
        side.retain(|level| level % 2 == 0);
        assert_eq!(side.len(), 19);
        assert_eq!(side.at(0), (4, 2));
        assert_eq!(side.best(), Some((76, 38)));
    }
}
