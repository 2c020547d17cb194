//! Per-account state of a shard: how many live orders each account holds
//! (in the shard and in each book), for the caps of rule 11 in the
//! [module docs](super), and which accounts an operator's kill switch has
//! blocked.
//!
//! The counts are derived state: they follow from the live orders, so
//! snapshots do not carry them (a restored shard counts its orders again)
//! and the digest covers them through the orders. They are kept only for
//! the caps that can bind (a cap at or above the shard's own `orders_max`
//! never does), so a server with the caps off pays nothing per order.
//!
//! Storage: `HashMap`s with a fixed (deterministic, seedless) hasher; an
//! entry is removed when its count returns to 0, so each map holds at most
//! one entry per live order and its capacity, once grown to the most
//! accounts seen with live orders at once, is reused: no allocation per
//! order in steady state. Nothing iterates them, so their order never
//! reaches a report or a digest.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// A multiply-rotate hasher for `u64` and `(u64, u32)` keys: fixed, so
/// the shard stays free of `RandomState`. Account ids come from clients,
/// but the number of entries is bounded by the shard's live orders, so a
/// chosen collision costs probes, not memory.
#[derive(Default, Clone, Copy)]
pub(super) struct FixedHasher(u64);

impl Hasher for FixedHasher {
    #[inline]
    fn finish(&self) -> u64 {
        let x = self.0.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        x ^ (x >> 29)
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    #[inline]
    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(23) ^ word).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    #[inline]
    fn write_u32(&mut self, word: u32) {
        self.write_u64(u64::from(word));
    }
}

type Fixed = BuildHasherDefault<FixedHasher>;

/// Live orders per account and per (account, book), and the blocked accounts.
#[derive(Debug, Clone, Default)]
pub(super) struct Accounts {
    /// Count per account in the whole shard (kept when `track_shard`).
    per_shard: HashMap<u64, u32, Fixed>,
    /// Count per (account, local book) (kept when `track_book`).
    per_book: HashMap<(u64, u32), u32, Fixed>,
    track_shard: bool,
    track_book: bool,
    /// Accounts whose new orders are refused (`AccountBlocked`). A
    /// `BTreeSet` so that the snapshot and the digest see them in order.
    pub(super) blocked: BTreeSet<u64>,
}

impl Accounts {
    /// Counts only what a cap can use: the shard cap when it is below the
    /// shard's capacity, the book cap when it is below both.
    pub(super) fn new(orders_max: u32, shard_cap: u32, book_cap: u32) -> Accounts {
        Accounts {
            track_shard: shard_cap < orders_max,
            track_book: book_cap < shard_cap.min(orders_max),
            ..Accounts::default()
        }
    }

    /// True when an order of `account` resting in `book` would pass a cap.
    #[inline]
    pub(super) fn at_cap(&self, account: u64, book: u32, shard_cap: u32, book_cap: u32) -> bool {
        (self.track_shard && self.per_shard.get(&account).copied().unwrap_or(0) >= shard_cap)
            || (self.track_book
                && self.per_book.get(&(account, book)).copied().unwrap_or(0) >= book_cap)
    }

    /// An order of `account` came to rest in `book`.
    #[inline]
    pub(super) fn rested(&mut self, account: u64, book: u32) {
        if self.track_shard {
            *self.per_shard.entry(account).or_insert(0) += 1;
        }
        if self.track_book {
            *self.per_book.entry((account, book)).or_insert(0) += 1;
        }
    }

    /// A live order of `account` in `book` left (filled, canceled).
    #[inline]
    pub(super) fn left(&mut self, account: u64, book: u32) {
        if self.track_shard {
            decrement(&mut self.per_shard, account);
        }
        if self.track_book {
            decrement(&mut self.per_book, (account, book));
        }
    }

    /// The live orders of `account` in the shard, as counted (None when
    /// the shard cap is off and nothing is counted).
    pub(super) fn shard_count(&self, account: u64) -> Option<u32> {
        self.track_shard
            .then(|| self.per_shard.get(&account).copied().unwrap_or(0))
    }

    /// The live orders of `account` in `book`, as counted (None when off).
    pub(super) fn book_count(&self, account: u64, book: u32) -> Option<u32> {
        self.track_book
            .then(|| self.per_book.get(&(account, book)).copied().unwrap_or(0))
    }

    /// Number of (account) and (account, book) entries: for the check
    /// that nothing is counted that does not rest.
    pub(super) fn entries(&self) -> (usize, usize) {
        (self.per_shard.len(), self.per_book.len())
    }
}

#[inline]
fn decrement<K: core::hash::Hash + Eq>(map: &mut HashMap<K, u32, Fixed>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    } else {
        debug_assert!(false, "an order left that was not counted");
    }
}
