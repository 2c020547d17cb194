//! One side of one book: its price levels, found by price without hashing
//! or searching.
//!
//! Levels are identified by a key: the price for bids and the negated price
//! for asks, so "better" is "greater key" on both sides and the matching
//! code needs no per-side branches.
//!
//! **The window.** Most activity is within a few hundred ticks of the top
//! of the book, so a side keeps an array of level slots indexed by
//! `key - base`, covering `span` consecutive keys (the window), and a
//! two-level bitmap over it: bit `p` of `bits` is set exactly when slot `p`
//! holds a level, and bit `w` of `summary` when `bits[w]` is not zero. A
//! lookup, an insert and a removal in the window are an index and a bit
//! flip; the best level is two leading-zero counts (summary, then its
//! word) and the next level below a key two more.
//!
//! **Windows are lent** by the shard's [`Windows`] pool: a side takes one
//! when its first level arrives and gives it back (all empty) when its last
//! level leaves, so a shard of many symbols holds windows only for the
//! sides that have orders, and never more than the pool's bound: memory
//! stays proportional to the shard's capacity, not to its symbol count. A
//! window is allocated only when the pool has none to spare and is below
//! its bound (while books warm up), never in steady state. A side that
//! finds the pool exhausted keeps all its levels in its far vectors
//! (correct, only slower) until it empties and tries again.
//!
//! **Outside it.** Levels whose key is below the window (far from the top:
//! deep bids, asks far above the market) are kept in two parallel sorted
//! vectors, `far_keys` and `far_levels`, ascending with the best at the
//! end, searched by bisection; every far key is below `base`, so the
//! window's levels are always better than the far ones, and the best level
//! of the side is the window's best, or the far best when the window is
//! empty. Far vectors grow by doubling up to the side's level limit and
//! never shrink, so they too stop allocating once a book is warm.
//!
//! **Re-basing** keeps the top of the book in the window as the market
//! moves. A key above the window (a new best) moves the window up so the
//! key sits [`Self::headroom`] below its top; the levels that fall off its
//! bottom go to the far vectors (appended: they are better than every far
//! level). A key below the window moves the window down when its best
//! level would stay in it with the same headroom and the key would then
//! fit, taking the far levels that now fit back in (popped from the end);
//! when the window is empty, it re-centres on the better of the key and
//! the far best. Otherwise the key is far from the market and goes to the
//! far vectors. A re-base costs O(span) (moving the slots, rebuilding the
//! bitmap) plus O(levels moved); nothing else depends on how many levels
//! a side holds.
//!
//! Every level in a side has orders: the shard removes a level as soon as
//! its last order leaves it (during matching, when the walk leaves it).

use super::index::prefetch_read;

/// "No level" in the window's slots.
const NIL: u32 = u32::MAX;

/// [`BookSide::best`] of an empty side (keys are within ±2^53).
const NO_KEY: i64 = i64::MIN;

/// Most keys a window may cover: 64 words of 64 bits under one summary word.
pub(crate) const SPAN_MAX: usize = 64 * 64;

/// The windows a shard lends its book sides (see the module docs).
#[derive(Debug)]
pub(crate) struct Windows {
    /// Windows given back, all empty, ready to lend again.
    spare: Vec<(Vec<u32>, Vec<u64>)>,
    /// Windows allocated so far (lent and spare).
    created: usize,
    /// Most windows the pool allocates.
    max: usize,
    /// Keys each window covers.
    span: usize,
}

impl Windows {
    /// A pool of at most `max` windows of `span` keys; allocates nothing yet.
    pub(crate) fn new(span: usize, max: usize) -> Self {
        assert!(
            span.is_power_of_two() && span <= SPAN_MAX,
            "window span {span}"
        );
        Windows {
            spare: Vec::new(),
            created: 0,
            max,
            span,
        }
    }

    /// An empty window, if the pool has one or may allocate one.
    fn take(&mut self) -> Option<(Vec<u32>, Vec<u64>)> {
        if let Some(window) = self.spare.pop() {
            return Some(window);
        }
        if self.created == self.max {
            return None;
        }
        self.created += 1;
        if self.spare.capacity() < self.created {
            // Room to take back every window, reserved as windows are made,
            // so giving one back never allocates.
            self.spare
                .reserve_exact(self.max.min(2 * self.created) - self.spare.len());
        }
        Some((vec![NIL; self.span], vec![0; self.span.div_ceil(64)]))
    }

    /// Takes back an empty window.
    fn give(&mut self, window: (Vec<u32>, Vec<u64>)) {
        debug_assert!(window.0.iter().all(|&l| l == NIL) && window.1.iter().all(|&w| w == 0));
        debug_assert!(self.spare.len() < self.spare.capacity());
        self.spare.push(window);
    }

    /// Checks that the windows lent (`lent` of them, counted over the
    /// sides) and the spare ones are all there are.
    pub(crate) fn check(&self, lent: usize) -> Result<(), String> {
        if lent + self.spare.len() != self.created || self.created > self.max {
            return Err(format!(
                "{lent} windows lent and {} spare, but {} made (at most {})",
                self.spare.len(),
                self.created,
                self.max
            ));
        }
        if self.spare.iter().any(|(slots, bits)| {
            slots.len() != self.span
                || slots.iter().any(|&l| l != NIL)
                || bits.iter().any(|&w| w != 0)
        }) {
            return Err("a spare window is not empty".into());
        }
        Ok(())
    }
}

/// Price levels of one side. See the module docs.
#[derive(Debug)]
pub(crate) struct BookSide {
    /// The best key, or [`NO_KEY`] when the side is empty: kept up to date
    /// on every insert and removal because the shard asks for it (does an
    /// order cross?) more often than levels change.
    best: i64,
    /// The key of window position 0.
    base: i64,
    /// Bit `w`: `bits[w] != 0`.
    summary: u64,
    /// Level slot per window position (`NIL`: none); `span` long while the
    /// side holds a window, else empty.
    slots: Vec<u32>,
    /// Bit `p % 64` of word `p / 64`: `slots[p] != NIL`. `slots` and
    /// `bits` are the window lent by [`Windows`] (both empty: none).
    bits: Vec<u64>,
    /// Keys below the window, ascending (best last).
    far_keys: Vec<i64>,
    /// The levels of `far_keys`, in the same order.
    far_levels: Vec<u32>,
    /// The window's length in keys: a power of two, at most [`SPAN_MAX`].
    span: usize,
    /// Levels on the side (window and far).
    pub(crate) active: u32,
}

impl BookSide {
    /// An empty side whose windows cover `span` keys (a power of two, at
    /// most [`SPAN_MAX`]: the span of the shard's [`Windows`]). Allocates
    /// nothing.
    pub(crate) fn new(span: usize) -> Self {
        assert!(
            span.is_power_of_two() && span <= SPAN_MAX,
            "window span {span}"
        );
        BookSide {
            best: NO_KEY,
            base: 0,
            summary: 0,
            slots: Vec::new(),
            bits: Vec::new(),
            far_keys: Vec::new(),
            far_levels: Vec::new(),
            span,
            active: 0,
        }
    }

    /// How far above the best key a re-base leaves room: a quarter of the
    /// window, so the best can improve that far before the window moves
    /// again, and three quarters stay for depth below it.
    #[inline]
    fn headroom(&self) -> i64 {
        (self.span / 4) as i64
    }

    /// Number of levels.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.active as usize
    }

    /// True when the side has no level.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.active == 0
    }

    /// The window position of `key`, if the window covers it.
    #[inline]
    fn position(&self, key: i64) -> Option<usize> {
        // Keys and bases lie within ±(2^52 + SPAN_MAX), so the difference
        // never overflows; negative differences wrap to huge positions.
        let offset = key.wrapping_sub(self.base) as u64;
        (offset < self.slots.len() as u64).then_some(offset as usize)
    }

    /// The highest occupied window position.
    #[inline]
    fn window_top(&self) -> Option<usize> {
        if self.summary == 0 {
            return None;
        }
        let word = 63 - self.summary.leading_zeros() as usize;
        let bit = 63 - self.bits[word].leading_zeros() as usize;
        Some(word * 64 + bit)
    }

    /// The highest occupied window position below `position` (which may be
    /// `span`: any).
    #[inline]
    fn window_below(&self, position: usize) -> Option<usize> {
        if position == 0 || self.summary == 0 {
            return None;
        }
        let p = position - 1;
        let (word, bit) = (p / 64, p % 64);
        // Bits 0..=bit of the word.
        let mask = u64::MAX >> (63 - bit);
        let masked = self.bits[word] & mask;
        if masked != 0 {
            return Some(word * 64 + 63 - masked.leading_zeros() as usize);
        }
        let lower = self.summary & ((1u64 << word) - 1);
        if lower == 0 {
            return None;
        }
        let word = 63 - lower.leading_zeros() as usize;
        Some(word * 64 + 63 - self.bits[word].leading_zeros() as usize)
    }

    /// The best level's key and level slot.
    #[inline]
    pub(crate) fn best(&self) -> Option<(i64, u32)> {
        if self.best == NO_KEY {
            return None;
        }
        match self.position(self.best) {
            Some(p) => Some((self.best, self.slots[p])),
            None => self.far_best(),
        }
    }

    #[inline]
    fn far_best(&self) -> Option<(i64, u32)> {
        match (self.far_keys.last(), self.far_levels.last()) {
            (Some(&k), Some(&l)) => Some((k, l)),
            _ => None,
        }
    }

    /// The best key.
    #[inline]
    pub(crate) fn best_key(&self) -> Option<i64> {
        (self.best != NO_KEY).then_some(self.best)
    }

    /// The best key as computed from the window and the far levels.
    #[inline]
    fn compute_best_key(&self) -> i64 {
        match self.window_top() {
            Some(p) => self.base + p as i64,
            None => self.far_keys.last().copied().unwrap_or(NO_KEY),
        }
    }

    /// The best level whose key is below `key`.
    #[inline]
    pub(crate) fn next_below(&self, key: i64) -> Option<(i64, u32)> {
        if !self.slots.is_empty() && key > self.base {
            let position = (key.wrapping_sub(self.base) as u64).min(self.slots.len() as u64);
            if let Some(p) = self.window_below(position as usize) {
                return Some((self.base + p as i64, self.slots[p]));
            }
        }
        // Every far key is below the window.
        let i = self.far_keys.partition_point(|&k| k < key);
        (i > 0).then(|| (self.far_keys[i - 1], self.far_levels[i - 1]))
    }

    /// The level of `key`, if the side has one.
    #[inline]
    pub(crate) fn find(&self, key: i64) -> Option<u32> {
        match self.position(key) {
            Some(p) => {
                let level = self.slots[p];
                (level != NIL).then_some(level)
            }
            None => self.find_far(key),
        }
    }

    #[cold]
    fn find_far(&self, key: i64) -> Option<u32> {
        self.far_keys
            .binary_search(&key)
            .ok()
            .map(|i| self.far_levels[i])
    }

    /// Hints the CPU to load the window slot of `key` (if the window covers
    /// it; no effect on the side's contents).
    #[inline]
    pub(crate) fn prefetch(&self, key: i64) {
        if let Some(p) = self.position(key) {
            prefetch_read(&self.slots[p]);
        }
    }

    #[inline]
    fn set(&mut self, position: usize, level: u32) {
        self.slots[position] = level;
        self.bits[position / 64] |= 1 << (position % 64);
        self.summary |= 1 << (position / 64);
    }

    /// Adds the level of a key the side has no level for. The caller has
    /// checked the side's level limit.
    #[inline]
    pub(crate) fn insert(&mut self, key: i64, level: u32, windows: &mut Windows) {
        debug_assert!(self.find(key).is_none(), "key {key} is already in the side");
        self.active += 1;
        self.best = self.best.max(key);
        match self.position(key) {
            Some(p) => self.set(p, level),
            None => self.insert_outside(key, level, windows),
        }
    }

    /// [`Self::insert`] for a key outside the window: re-base if that
    /// keeps the top of the book in the window, else a far level.
    #[cold]
    fn insert_outside(&mut self, key: i64, level: u32, windows: &mut Windows) {
        let (span, headroom) = (self.span as i64, self.headroom());
        // The base that puts `anchor` `headroom` below the window's top.
        let base_for = |anchor: i64| anchor + headroom + 1 - span;
        if self.slots.is_empty() {
            // A side takes a window only for its first level: the far
            // levels of a side without one could lie anywhere, above it.
            if self.active == 1
                && let Some((slots, bits)) = windows.take()
            {
                debug_assert_eq!(slots.len(), self.span);
                (self.slots, self.bits) = (slots, bits);
                self.base = base_for(key);
                let p = self.span - 1 - headroom as usize;
                return self.set(p, level);
            }
            let i = self.far_keys.partition_point(|&k| k < key);
            self.far_keys.insert(i, key);
            self.far_levels.insert(i, level);
            return;
        }
        if key >= self.base + span {
            // Better than the whole window: the new best.
            self.rebase(base_for(key));
        } else {
            // Below the window: move it down if the window's best (or,
            // with an empty window, the better of the key and the far
            // best) keeps its headroom and the key then fits.
            let anchor = match self.window_top() {
                Some(p) => self.base + p as i64,
                None => self.far_keys.last().map_or(key, |&far| far.max(key)),
            };
            let base = base_for(anchor);
            if base < self.base && key >= base {
                self.rebase(base);
            }
        }
        match self.position(key) {
            Some(p) => self.set(p, level),
            None => {
                let i = self.far_keys.partition_point(|&k| k < key);
                self.far_keys.insert(i, key);
                self.far_levels.insert(i, level);
            }
        }
    }

    /// Moves the window to start at `base`: levels that fall below it go
    /// to the far vectors, far levels it now covers come in. The caller
    /// never moves the window down past its best level's headroom, so no
    /// level falls off the top.
    #[cold]
    fn rebase(&mut self, base: i64) {
        let span = self.slots.len();
        if base > self.base {
            let delta = base - self.base;
            // Positions below `delta` leave, ascending: each is better than
            // every far level so far.
            let leaving = delta.min(span as i64) as usize;
            let mut p = 0;
            while let Some(q) = self.next_set_from(p, leaving) {
                self.far_keys.push(self.base + q as i64);
                self.far_levels.push(self.slots[q]);
                p = q + 1;
            }
            if leaving < span {
                self.slots.copy_within(leaving.., 0);
            }
            self.slots[span - leaving..].fill(NIL);
        } else if base < self.base {
            let delta = (self.base - base).min(span as i64) as usize;
            debug_assert!(
                self.window_top().is_none_or(|top| top + delta < span),
                "a re-base down would drop the best level"
            );
            if delta < span {
                self.slots.copy_within(..span - delta, delta);
            }
            self.slots[..delta].fill(NIL);
            // Far keys are below the old base, so those the window now
            // covers land in its first `delta` positions.
            while let (Some(&k), Some(&l)) = (self.far_keys.last(), self.far_levels.last()) {
                if k < base {
                    break;
                }
                self.far_keys.pop();
                self.far_levels.pop();
                self.slots[(k - base) as usize] = l;
            }
        }
        self.base = base;
        self.summary = 0;
        for (w, chunk) in self.slots.chunks(64).enumerate() {
            let word = chunk
                .iter()
                .enumerate()
                .fold(0u64, |word, (i, &l)| word | (u64::from(l != NIL) << i));
            self.bits[w] = word;
            self.summary |= u64::from(word != 0) << w;
        }
    }

    /// The lowest occupied window position in `from..to`.
    fn next_set_from(&self, from: usize, to: usize) -> Option<usize> {
        let mut p = from;
        while p < to {
            let word = self.bits[p / 64] >> (p % 64);
            if word != 0 {
                let q = p + word.trailing_zeros() as usize;
                return (q < to).then_some(q);
            }
            p = (p / 64 + 1) * 64;
        }
        None
    }

    /// Removes the level of `key` (which the side has).
    #[inline]
    pub(crate) fn remove(&mut self, key: i64, windows: &mut Windows) {
        self.active -= 1;
        match self.position(key) {
            Some(p) => {
                debug_assert!(self.slots[p] != NIL, "key {key} is not in the side");
                self.slots[p] = NIL;
                let word = &mut self.bits[p / 64];
                *word &= !(1 << (p % 64));
                if *word == 0 {
                    self.summary &= !(1 << (p / 64));
                }
            }
            None => self.remove_far(key),
        }
        if key == self.best {
            self.best = self.compute_best_key();
        }
        if self.active == 0 && !self.slots.is_empty() {
            // Empty: the window goes back to the pool.
            self.summary = 0;
            windows.give((
                core::mem::take(&mut self.slots),
                core::mem::take(&mut self.bits),
            ));
        }
    }

    /// True while the side holds a window.
    pub(crate) fn has_window(&self) -> bool {
        !self.slots.is_empty()
    }

    #[cold]
    fn remove_far(&mut self, key: i64) {
        match self.far_keys.binary_search(&key) {
            Ok(i) => {
                self.far_keys.remove(i);
                self.far_levels.remove(i);
            }
            Err(_) => debug_assert!(false, "key {key} is not in the side"),
        }
    }

    /// Levels best first: (key, level slot).
    pub(crate) fn iter_best_first(&self) -> BestFirst<'_> {
        BestFirst {
            side: self,
            next: self.window_top(),
            far: self.far_keys.len(),
        }
    }

    /// Checks the structure: bitmap and summary agree with the slots,
    /// far keys ascend below the window, the count matches. Returns the
    /// number of levels. For `Shard::check_invariants`.
    pub(crate) fn check(&self) -> Result<usize, String> {
        let mut levels = 0usize;
        if !self.slots.is_empty() {
            if self.slots.len() != self.span || self.bits.len() != self.span.div_ceil(64) {
                return Err("window not of its span".into());
            }
            for (w, chunk) in self.slots.chunks(64).enumerate() {
                for (i, &l) in chunk.iter().enumerate() {
                    let bit = self.bits[w] >> i & 1 == 1;
                    if bit != (l != NIL) {
                        return Err(format!("bitmap disagrees with slot {}", w * 64 + i));
                    }
                    levels += usize::from(bit);
                }
                if (self.bits[w] != 0) != (self.summary >> w & 1 == 1) {
                    return Err(format!("summary disagrees with word {w}"));
                }
            }
            if self.bits.len() < 64 && self.summary >> self.bits.len() != 0 {
                return Err("summary has bits beyond the window".into());
            }
        } else if self.summary != 0 {
            return Err("summary without a window".into());
        }
        if self.far_keys.len() != self.far_levels.len() {
            return Err("far vectors differ in length".into());
        }
        if self.far_keys.windows(2).any(|w| w[0] >= w[1]) {
            return Err("far keys out of order".into());
        }
        if self.far_keys.last().is_some_and(|&k| k >= self.base) && !self.slots.is_empty() {
            return Err("a far key is inside or above the window".into());
        }
        levels += self.far_keys.len();
        if self.best != self.compute_best_key() {
            return Err(format!("best key {} is not the best level's", self.best));
        }
        if levels != self.active as usize {
            return Err(format!("{levels} levels, counted {}", self.active));
        }
        Ok(levels)
    }
}

/// [`BookSide::iter_best_first`]: the window's levels from its top down,
/// then the far levels from the best down.
#[derive(Clone)]
pub(crate) struct BestFirst<'a> {
    side: &'a BookSide,
    /// The next window position to yield.
    next: Option<usize>,
    /// Far levels not yet yielded (the next is `far - 1`).
    far: usize,
}

impl Iterator for BestFirst<'_> {
    type Item = (i64, u32);

    #[inline]
    fn next(&mut self) -> Option<(i64, u32)> {
        let s = self.side;
        if let Some(p) = self.next {
            self.next = s.window_below(p);
            return Some((s.base + p as i64, s.slots[p]));
        }
        if self.far == 0 {
            return None;
        }
        self.far -= 1;
        Some((s.far_keys[self.far], s.far_levels[self.far]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A side with a reference model: a sorted map of key -> level.
    struct Checked {
        side: BookSide,
        windows: Windows,
        model: std::collections::BTreeMap<i64, u32>,
    }

    impl Checked {
        fn new(span: usize) -> Self {
            Checked {
                side: BookSide::new(span),
                windows: Windows::new(span, 1),
                model: Default::default(),
            }
        }

        fn insert(&mut self, key: i64) {
            let level = self.model.len() as u32 + 1000 * (key.unsigned_abs() as u32 % 7);
            self.side.insert(key, level, &mut self.windows);
            self.model.insert(key, level);
            self.verify();
        }

        fn remove(&mut self, key: i64) {
            self.side.remove(key, &mut self.windows);
            self.model.remove(&key);
            self.verify();
        }

        fn verify(&self) {
            assert_eq!(self.side.check(), Ok(self.model.len()));
            let lent = usize::from(self.side.has_window());
            assert_eq!(self.windows.check(lent), Ok(()));
            assert_eq!(self.side.has_window(), !self.model.is_empty());
            let got: Vec<(i64, u32)> = self.side.iter_best_first().collect();
            let want: Vec<(i64, u32)> = self.model.iter().rev().map(|(&k, &l)| (k, l)).collect();
            assert_eq!(got, want);
            assert_eq!(self.side.best(), want.first().copied());
            assert_eq!(self.side.best_key(), want.first().map(|w| w.0));
            for (&k, &l) in &self.model {
                assert_eq!(self.side.find(k), Some(l));
                assert_eq!(
                    self.side.find(k + 1).is_some(),
                    self.model.contains_key(&(k + 1))
                );
                let below = self.model.range(..k).next_back().map(|(&k, &l)| (k, l));
                assert_eq!(self.side.next_below(k), below, "below {k}");
            }
            assert_eq!(self.side.next_below(i64::MAX), want.first().copied());
        }

        fn in_window(&self, key: i64) -> bool {
            self.side.position(key).is_some()
        }
    }

    #[test]
    fn an_empty_side_allocates_nothing_and_has_no_best() {
        let side = BookSide::new(2048);
        assert!(side.slots.is_empty() && side.bits.is_empty());
        assert_eq!(side.best(), None);
        assert_eq!(side.next_below(5), None);
        assert_eq!(side.find(5), None);
        assert_eq!(side.check(), Ok(0));
    }

    #[test]
    fn sides_borrow_windows_from_a_bounded_pool_and_give_them_back_empty() {
        let mut windows = Windows::new(64, 1);
        let (mut a, mut b) = (BookSide::new(64), BookSide::new(64));
        a.insert(100, 1, &mut windows);
        assert!(a.has_window());
        // The pool's only window is lent: b keeps its levels far, sorted.
        for (key, level) in [(7, 2), (9, 3), (5_000, 4), (8, 5)] {
            b.insert(key, level, &mut windows);
        }
        assert!(!b.has_window());
        assert_eq!(b.check(), Ok(4));
        let keys: Vec<i64> = b.iter_best_first().map(|(k, _)| k).collect();
        assert_eq!(keys, [5_000, 9, 8, 7]);
        assert_eq!(b.find(9), Some(3));
        assert_eq!(b.next_below(5_000), Some((9, 3)));
        assert_eq!(windows.check(1), Ok(()));
        // a empties: its window goes back, all empty.
        a.remove(100, &mut windows);
        assert!(!a.has_window());
        assert_eq!(windows.check(0), Ok(()));
        // b is not empty, so it stays without; once empty, it takes it.
        b.insert(10, 6, &mut windows);
        assert!(!b.has_window());
        for key in [7, 8, 9, 10, 5_000] {
            b.remove(key, &mut windows);
        }
        b.insert(300, 7, &mut windows);
        assert!(b.has_window());
        assert_eq!(b.best(), Some((300, 7)));
        assert_eq!(windows.check(1), Ok(()));
        // No more windows to make: a works without one.
        a.insert(1, 8, &mut windows);
        assert!(!a.has_window());
        assert_eq!(a.best(), Some((1, 8)));
    }

    #[test]
    fn the_first_level_sits_headroom_below_the_window_top() {
        let mut c = Checked::new(64);
        c.insert(1_000_000);
        assert_eq!(c.side.base, 1_000_000 + 16 + 1 - 64);
        assert!(c.in_window(1_000_000 + 16) && !c.in_window(1_000_000 + 17));
        // Asks: negative keys.
        let mut c = Checked::new(64);
        c.insert(-1_000_000);
        assert!(c.in_window(-1_000_000));
        assert_eq!(c.side.best_key(), Some(-1_000_000));
    }

    #[test]
    fn window_edges_use_the_bitmap_and_neighbours_across_words() {
        let mut c = Checked::new(256);
        c.insert(1000);
        let base = c.side.base;
        let top = base + 255;
        // Both edges of the window, and either side of each word boundary.
        for key in [base, top, base + 63, base + 64, base + 127, base + 128] {
            c.insert(key);
            assert!(c.in_window(key));
        }
        assert!(c.side.far_keys.is_empty());
        assert_eq!(c.side.best_key(), Some(top));
        c.remove(top);
        assert_eq!(c.side.best_key(), Some(1000));
        c.remove(1000);
        assert_eq!(c.side.best_key(), Some(base + 128));
        c.remove(base + 128);
        c.remove(base + 127);
        assert_eq!(c.side.best_key(), Some(base + 64));
        c.remove(base + 64);
        c.remove(base + 63);
        assert_eq!(c.side.best_key(), Some(base));
        c.remove(base);
        assert_eq!(c.side.best(), None);
        assert_eq!(c.side.summary, 0);
    }

    #[test]
    fn far_outliers_below_the_window_keep_their_order() {
        let mut c = Checked::new(64);
        c.insert(10_000);
        let base = c.side.base;
        // Far below: they cannot move the window down (the best would fall off).
        for key in [base - 1, 5, 1, 9_000, base - 100, -7] {
            c.insert(key);
            assert!(!c.in_window(key), "{key}");
        }
        assert_eq!(c.side.base, base);
        assert_eq!(c.side.far_keys.len(), 6);
        // Removing the window's only level leaves the far best as the best.
        c.remove(10_000);
        assert_eq!(c.side.best_key(), Some(base - 1));
        c.remove(base - 1);
        assert_eq!(c.side.best_key(), Some(base - 100));
        c.remove(5);
        c.remove(-7);
        assert_eq!(c.side.next_below(9_000), Some((1, c.model[&1])));
    }

    #[test]
    fn a_new_best_above_the_window_rebases_up_and_pushes_the_bottom_out() {
        let mut c = Checked::new(64);
        for key in [100, 90, 60, 54] {
            c.insert(key);
        }
        assert_eq!(c.side.base, 53);
        assert!(c.in_window(54));
        // 10 ticks above the top: the window moves up by 10 + headroom.
        c.insert(53 + 63 + 10);
        assert_eq!(c.side.base, 53 + 63 + 10 + 16 + 1 - 64);
        assert_eq!(c.side.far_keys, [54, 60]);
        assert!(c.in_window(90) && c.in_window(100));
        // Far above everything: the whole window leaves.
        c.insert(1 << 40);
        assert_eq!(c.side.far_keys.len(), 5);
        assert_eq!(c.side.best_key(), Some(1 << 40));
    }

    #[test]
    fn a_key_below_the_window_rebases_down_when_the_best_keeps_its_headroom() {
        let mut c = Checked::new(64);
        c.insert(1000);
        c.insert(1010);
        c.insert(1040);
        // 1040 moved the window up; without it, the best (1010) leaves
        // room to move the window down.
        c.remove(1040);
        let base = c.side.base;
        let key = base - 5;
        c.insert(key);
        assert!(c.in_window(key));
        assert!(c.side.base < base);
        assert_eq!(c.side.base, 1010 + 16 + 1 - 64);
        // An empty window re-centres on the far best when a key arrives.
        let mut c = Checked::new(64);
        c.insert(5000);
        for key in [100, 120, 4000] {
            c.insert(key);
        }
        c.remove(5000);
        assert_eq!(c.side.best_key(), Some(4000));
        c.insert(3990);
        assert!(c.in_window(4000) && c.in_window(3990));
        assert_eq!(c.side.far_keys, [100, 120]);
    }

    #[test]
    fn tiny_windows_match_a_sorted_map_through_random_inserts_and_removals() {
        for span in [1usize, 2, 4, 64, 128, 4096] {
            let mut c = Checked::new(span);
            let mut seed = 0x9E37_79B9_u64 ^ span as u64;
            let mut drift = 0i64;
            for _ in 0..3_000 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // A drifting market with occasional outliers either way.
                drift += (seed % 7) as i64 - 3;
                let key = match seed % 50 {
                    0 => drift - 100_000 - (seed >> 40) as i64 % 1000,
                    1 => drift + 100_000 + (seed >> 40) as i64 % 1000,
                    _ => drift + (seed >> 20) as i64 % 300 - 150,
                };
                if c.model.contains_key(&key) {
                    c.remove(key);
                } else if c.model.len() > 60 {
                    let (&best, _) = c.model.iter().next_back().unwrap();
                    c.remove(best);
                } else {
                    c.insert(key);
                }
            }
        }
    }
}
