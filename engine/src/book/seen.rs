//! A small, conservative summary of the client order ids a shard has
//! accepted, so that a new order's duplicate check can skip the lookups in
//! the live order index and the finished-order history when its id is
//! above everything its account could have used here before.
//!
//! Why: the history is large (by default 2^20 remembered orders, a 16 MiB
//! index), so looking a new key up there misses every cache level: on the
//! heavy-matching mix that one lookup was about 0.8 of the 1.3 misses per
//! operation past a 2 MiB cache (valgrind cachegrind). Yet clients number
//! their orders upwards (a session must: PROTOCOL.md §8.4), so nearly
//! every new id is above the account's highest one and cannot be a
//! duplicate.
//!
//! How: `BUCKETS` high-water marks, one per hash bucket of the account;
//! a bucket holds the highest id accepted for any account that hashes to
//! it. An id above its bucket's mark was never accepted for its account,
//! so it is neither live nor remembered; an id at or below it may have
//! been, and the shard looks it up as before. Marks only grow, so the
//! summary stays true when orders terminate or the history forgets them;
//! accounts sharing a bucket only make it look up more often. Bounded
//! (8 KiB), allocated once, and derived state: snapshots do not carry it
//! (`rebuild` recomputes it from the live orders and the history), and it
//! does not enter the state digest.

/// Buckets (a power of two): 8 KiB of marks.
const BUCKETS: usize = 1024;

/// The high-water marks. See the module docs.
#[derive(Clone, Debug)]
pub(crate) struct IdHighWater {
    marks: Box<[u64]>,
}

impl IdHighWater {
    pub(crate) fn new() -> IdHighWater {
        IdHighWater {
            marks: vec![0; BUCKETS].into_boxed_slice(),
        }
    }

    #[inline]
    fn bucket(account: u64) -> usize {
        // Fibonacci hashing: the top bits of a multiplication spread
        // sequential account numbers over the buckets.
        (account.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - BUCKETS.trailing_zeros())) as usize
    }

    /// Records that `client_order_id` was accepted for `account`.
    #[inline]
    pub(crate) fn note(&mut self, account: u64, client_order_id: u64) {
        let mark = &mut self.marks[Self::bucket(account)];
        if client_order_id > *mark {
            *mark = client_order_id;
        }
    }

    /// False when `client_order_id` was certainly never accepted for
    /// `account`; true when it may have been (look it up).
    #[inline]
    pub(crate) fn may_have_seen(&self, account: u64, client_order_id: u64) -> bool {
        client_order_id <= self.marks[Self::bucket(account)]
    }

    /// Forgets everything (before `note`-ing a restored state again).
    pub(crate) fn clear(&mut self) {
        self.marks.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_above_the_mark_were_never_seen() {
        let mut h = IdHighWater::new();
        assert!(!h.may_have_seen(7, 1));
        assert!(h.may_have_seen(7, 0), "0 is never above a mark: looked up");
        h.note(7, 10);
        assert!(h.may_have_seen(7, 10));
        assert!(h.may_have_seen(7, 3));
        assert!(!h.may_have_seen(7, 11));
        h.note(7, 5);
        assert!(h.may_have_seen(7, 10), "marks never go down");
        h.clear();
        assert!(!h.may_have_seen(7, 10));
    }

    #[test]
    fn accounts_in_one_bucket_share_a_mark_conservatively() {
        let mut h = IdHighWater::new();
        let a = 1u64;
        let b = (2..u64::MAX)
            .find(|&x| IdHighWater::bucket(x) == IdHighWater::bucket(a))
            .unwrap();
        h.note(a, 100);
        assert!(h.may_have_seen(b, 50), "b shares a's bucket: looked up");
        let c = (2..u64::MAX)
            .find(|&x| IdHighWater::bucket(x) != IdHighWater::bucket(a))
            .unwrap();
        assert!(!h.may_have_seen(c, 50));
    }
}
