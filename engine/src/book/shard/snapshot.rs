//! Shard snapshots: the whole state of a [`Shard`] as bytes, and back.
//!
//! A snapshot holds what a shard's future reports depend on, and nothing
//! internal: the id counters, every live order of every book in priority
//! order (with its owner session and lifetime fills) and the history of
//! terminated orders, oldest first. Slab slots, where the book sides'
//! price windows sit and index sizes are not in it; a restored shard rebuilds its own, so it has the
//! same [`state_digest`](crate::book::Matcher::state_digest) and answers
//! every later command exactly as the original would (`engine/tests/book_model.rs` checks this against
//! random histories).
//!
//! Serializing and the digest walk the state once together
//! ([`Shard::write_snapshot`] returns the digest), because the server
//! stalls the shard's matching for as long as the walk takes. The file
//! that carries these bytes (with its own header and checksum) is the
//! journal's business (`crate::journal`).
//!
//! Blocked accounts (the kill switch) are in it from version 3; the
//! per-account open-order counts are derived from the orders and counted
//! again on load.
//!
//! # Format, version 3 (little-endian, no padding)
//!
//! | Field | Type |
//! |---|---|
//! | magic `TDXSHARD` | `u8[8]` |
//! | format version | `u32` |
//! | shard index, shard count, symbol count, book count | `u32` × 4 |
//! | live orders | `u32` |
//! | next order sequence, next trade sequence | `u64` × 2 |
//! | history entries | `u64` |
//! | per book: market-data sequence number (version 2; version 1 has none: read as 0) | `u64` |
//! | per book, bids then asks: non-empty levels | `u32` |
//! | per level, best first: price, orders | `i64`, `u32` |
//! | per order, front first: account, client order id, owner session, order id, open, filled | `u64` × 6 |
//! | per order: flags (bit 0 post-only, bits 4-5 self-trade prevention, as in a NewOrder) | `u8` |
//! | per history entry, oldest first: account, client order id, order id, filled | `u64` × 4 |
//! | per history entry: symbol, state ([`OrderState`]) | `u32`, `u8` |
//! | blocked accounts (version 3; versions 1 and 2 have none) | `u64` |
//! | per blocked account, ascending: account | `u64` |

use crate::session_id::SessionId;
use wire::{OrderState, SelfTradePrevention, Side};

use super::{
    ConfigError, Digest, FinishedOrder, NIL, Order, Shard, ShardConfig, key_of, level_key,
    prefetch_read, side_index,
};

/// The snapshot format this build writes (it also reads version 1, which
/// has no market-data sequence numbers: they restart from 0, and version
/// 2, which has no blocked accounts).
pub const SNAPSHOT_FORMAT_VERSION: u32 = 3;

const MAGIC: [u8; 8] = *b"TDXSHARD";

/// Bytes before the first book.
const HEADER_BYTES: usize = 8 + 4 + 4 * 4 + 4 + 8 + 8 + 8;
/// Bytes per live order.
const ORDER_BYTES: usize = 6 * 8 + 1;
/// Bytes per price level before its orders.
const LEVEL_BYTES: usize = 8 + 4;
/// Bytes per history entry.
const FINISHED_BYTES: usize = 4 * 8 + 4 + 1;

/// How far ahead the walk prefetches orders and price levels (in orders,
/// in levels of a side).
const ORDER_PREFETCH_AHEAD: usize = 16;
const LEVEL_PREFETCH_AHEAD: usize = 4;
/// Level lists [`chase`] follows at once.
const CHASE_LANES: usize = 8;

const FLAG_POST_ONLY: u8 = 1;
const FLAG_STP_SHIFT: u8 = 4;

/// Why bytes could not be restored into a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotError {
    /// The bytes end at `offset`, before the snapshot does.
    Truncated {
        /// Where the bytes ran out.
        offset: usize,
    },
    /// The bytes do not start with a shard snapshot's magic.
    BadMagic,
    /// A format version this build does not read.
    Version {
        /// The version in the bytes.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The placement in the snapshot, or the configuration given, cannot
    /// make a shard.
    Config(ConfigError),
    /// The snapshot holds more than the configuration has room for.
    Capacity {
        /// What overflows (and the setting that bounds it).
        what: &'static str,
        /// How many the snapshot holds.
        found: u64,
        /// The configured limit.
        limit: u64,
    },
    /// A value at `offset` that no shard state can have.
    Invalid {
        /// Byte offset of the value.
        offset: usize,
        /// What is wrong with it.
        what: String,
    },
    /// Bytes left after the end of the snapshot.
    TrailingBytes {
        /// Where the snapshot ended.
        offset: usize,
        /// How many bytes follow.
        len: usize,
    },
}

impl core::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SnapshotError::Truncated { offset } => {
                write!(f, "shard snapshot cut short at byte {offset}")
            }
            SnapshotError::BadMagic => write!(f, "not a shard snapshot (bad magic)"),
            SnapshotError::Version { found, supported } => write!(
                f,
                "shard snapshot format version {found}, but this build reads version {supported}"
            ),
            SnapshotError::Config(e) => write!(f, "shard snapshot cannot be restored: {e}"),
            SnapshotError::Capacity { what, found, limit } => write!(
                f,
                "shard snapshot holds {found} {what}, above the configured {limit}; \
                 restart with a limit of at least {found}"
            ),
            SnapshotError::Invalid { offset, what } => {
                write!(f, "shard snapshot invalid at byte {offset}: {what}")
            }
            SnapshotError::TrailingBytes { offset, len } => write!(
                f,
                "shard snapshot ends at byte {offset} but {len} more bytes follow"
            ),
        }
    }
}

impl std::error::Error for SnapshotError {}

impl From<ConfigError> for SnapshotError {
    fn from(e: ConfigError) -> Self {
        SnapshotError::Config(e)
    }
}

/// Appends little-endian fields.
struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    #[inline]
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    #[inline]
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
}

/// Reads little-endian fields, failing at the end of the bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self
            .offset
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(SnapshotError::Truncated {
                offset: self.bytes.len(),
            })?;
        let out = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(out)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    #[inline]
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.array::<1>()?[0])
    }

    #[inline]
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    #[inline]
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    #[inline]
    fn i64(&mut self) -> Result<i64, SnapshotError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// An `Invalid` error about the value that ends at the current offset.
    fn invalid(&self, width: usize, what: impl Into<String>) -> SnapshotError {
        SnapshotError::Invalid {
            offset: self.offset - width,
            what: what.into(),
        }
    }
}

/// An order as read, before it is linked into its level.
#[derive(Clone, Copy)]
struct RestingOrder {
    account: u64,
    client_order_id: u64,
    owner: u64,
    order_id: u64,
    open: u64,
    filled: u64,
    stp: SelfTradePrevention,
    post_only: bool,
}

impl Shard {
    /// Appends a snapshot of the whole state to `out` (format version
    /// [`SNAPSHOT_FORMAT_VERSION`], described in `book/shard/snapshot.rs`:
    /// the counters, every live order in priority order, the history
    /// oldest first) and returns the state digest, computed in the
    /// same walk (equal to
    /// [`state_digest`](crate::book::Matcher::state_digest)). O(live
    /// orders + history); the shard cannot match meanwhile.
    pub fn write_snapshot(&self, out: &mut Vec<u8>) -> u64 {
        out.reserve(self.snapshot_bytes_max());
        self.walk(Some(out))
    }

    /// An upper bound on the size of [`Self::write_snapshot`]'s output.
    pub fn snapshot_bytes_max(&self) -> usize {
        HEADER_BYTES
            + self.books.len() * (2 * 4 + 8)
            + self.live as usize * (ORDER_BYTES + LEVEL_BYTES)
            + self.history.len() * FINISHED_BYTES
            + 8
            + self.accounts.blocked.len() * 8
    }

    /// The walk behind both
    /// [`state_digest`](crate::book::Matcher::state_digest) and
    /// [`Self::write_snapshot`]: digest words and snapshot fields in one
    /// pass over the books and the history.
    pub(super) fn walk(&self, mut out: Option<&mut Vec<u8>>) -> u64 {
        let mut h = Digest::default();
        for word in [
            u64::from(self.shard_index),
            u64::from(self.shard_count),
            u64::from(self.symbol_count),
            u64::from(self.live),
            self.next_order,
            self.next_trade,
        ] {
            h.add(word);
        }
        if let Some(out) = out.as_deref_mut() {
            out.extend_from_slice(&MAGIC);
            let mut w = Writer(out);
            w.u32(SNAPSHOT_FORMAT_VERSION);
            w.u32(self.shard_index);
            w.u32(self.shard_count);
            w.u32(self.symbol_count);
            w.u32(self.books.len() as u32);
            w.u32(self.live);
            w.u64(self.next_order);
            w.u64(self.next_trade);
            w.u64(self.history.len() as u64);
        }
        // A level's orders are a linked list through the order slab, so
        // walking them directly is a chain of dependent cache misses (88%
        // of the walk's time, measured). Instead: copy every slot's `next`
        // link into a dense array in one sequential pass, follow the
        // chains there (4 bytes a slot: it stays in cache), and read the
        // orders in the resulting order with prefetches well ahead, so
        // their misses overlap.
        let next: Vec<u32> = self.orders.iter().map(|o| o.next).collect();
        let mut slots: Vec<u32> = Vec::new();
        let mut rows: Vec<(i64, u64, u32)> = Vec::new();
        let mut heads: Vec<u32> = Vec::new();
        for book in &self.books {
            h.add(book.seq);
            if let Some(out) = out.as_deref_mut() {
                Writer(out).u64(book.seq);
            }
            for side in &book.sides {
                h.add(u64::from(side.active));
                if let Some(out) = out.as_deref_mut() {
                    Writer(out).u32(side.active);
                }
                rows.clear();
                heads.clear();
                let mut ahead = side.iter_best_first().skip(LEVEL_PREFETCH_AHEAD);
                for (_, level) in side.iter_best_first() {
                    if let Some((_, next)) = ahead.next() {
                        prefetch_read(&self.levels[next as usize]);
                    }
                    let l = &self.levels[level as usize];
                    // Every level in a side has orders.
                    debug_assert!(l.count > 0);
                    rows.push((l.price, l.total, l.count));
                    heads.push(l.head);
                }
                chase(&next, &rows, &heads, &mut slots);
                let mut k = 0;
                for &(price, total, count) in &rows {
                    h.add(price as u64);
                    h.add(total);
                    h.add(u64::from(count));
                    if let Some(out) = out.as_deref_mut() {
                        let mut w = Writer(out);
                        w.u64(price as u64);
                        w.u32(count);
                    }
                    for _ in 0..count {
                        if let Some(&ahead) = slots.get(k + ORDER_PREFETCH_AHEAD) {
                            prefetch_read(&self.orders[ahead as usize]);
                        }
                        let o = &self.orders[slots[k] as usize];
                        k += 1;
                        for word in [
                            o.account,
                            o.client_order_id,
                            o.owner.get(),
                            o.order_id,
                            o.open,
                            o.filled,
                            u64::from(o.side.to_wire())
                                | u64::from(o.stp.to_wire()) << 8
                                | u64::from(o.post_only) << 16,
                        ] {
                            h.add(word);
                        }
                        if let Some(out) = out.as_deref_mut() {
                            let mut record = [0u8; ORDER_BYTES];
                            for (i, word) in [
                                o.account,
                                o.client_order_id,
                                o.owner.get(),
                                o.order_id,
                                o.open,
                                o.filled,
                            ]
                            .into_iter()
                            .enumerate()
                            {
                                record[i * 8..i * 8 + 8].copy_from_slice(&word.to_le_bytes());
                            }
                            record[48] =
                                u8::from(o.post_only) | (o.stp.to_wire() << FLAG_STP_SHIFT);
                            out.extend_from_slice(&record);
                        }
                    }
                }
                debug_assert_eq!(k, slots.len());
            }
        }
        h.add(self.history.len() as u64);
        for e in self.history.iter_oldest_first() {
            for word in [
                e.account,
                e.client_order_id,
                e.order_id,
                e.filled_quantity,
                u64::from(e.symbol) | u64::from(e.state.to_wire()) << 32,
            ] {
                h.add(word);
            }
            if let Some(out) = out.as_deref_mut() {
                let mut record = [0u8; FINISHED_BYTES];
                for (i, word) in [e.account, e.client_order_id, e.order_id, e.filled_quantity]
                    .into_iter()
                    .enumerate()
                {
                    record[i * 8..i * 8 + 8].copy_from_slice(&word.to_le_bytes());
                }
                record[32..36].copy_from_slice(&e.symbol.to_le_bytes());
                record[36] = e.state.to_wire();
                out.extend_from_slice(&record);
            }
        }
        let blocked = &self.accounts.blocked;
        h.add(blocked.len() as u64);
        if let Some(out) = out.as_deref_mut() {
            Writer(out).u64(blocked.len() as u64);
        }
        for &account in blocked {
            h.add(account);
            if let Some(out) = out.as_deref_mut() {
                Writer(out).u64(account);
            }
        }
        h.finish()
    }

    /// Recomputes the id high-water marks from the order slots (live
    /// ones and any freed ones: noting more only costs lookups) and the
    /// history; they are derived state, not in the snapshot.
    fn rebuild_seen(&mut self) {
        self.seen.clear();
        for o in &self.orders {
            self.seen.note(o.account, o.client_order_id);
        }
        for e in self.history.iter_oldest_first() {
            self.seen.note(e.account, e.client_order_id);
        }
    }

    /// Rebuilds a shard from [`Self::write_snapshot`]'s bytes, with the
    /// limits of `cfg` (which may differ from the original's as long as
    /// the state fits: orders within `orders_max` and `quantity_max`,
    /// levels within `levels_per_side_max`, history within `history_max`).
    /// Every value is checked; bytes that no shard could have written are
    /// an error naming the offset, never a panic.
    pub fn from_snapshot(bytes: &[u8], cfg: ShardConfig) -> Result<Shard, SnapshotError> {
        let mut r = Reader { bytes, offset: 0 };
        if r.array::<8>()? != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let version = r.u32()?;
        if !(1..=SNAPSHOT_FORMAT_VERSION).contains(&version) {
            return Err(SnapshotError::Version {
                found: version,
                supported: SNAPSHOT_FORMAT_VERSION,
            });
        }
        let (shard_index, shard_count, symbol_count) = (r.u32()?, r.u32()?, r.u32()?);
        let mut shard = Shard::try_new(shard_index, shard_count, symbol_count, cfg)?;
        let book_count = r.u32()?;
        if book_count as usize != shard.books.len() {
            return Err(r.invalid(
                4,
                format!(
                    "{book_count} books, but shard {shard_index} of {shard_count} over \
                     {symbol_count} symbols has {}",
                    shard.books.len()
                ),
            ));
        }
        let live = r.u32()?;
        if live > cfg.orders_max {
            return Err(SnapshotError::Capacity {
                what: "live orders (orders_max)",
                found: u64::from(live),
                limit: u64::from(cfg.orders_max),
            });
        }
        shard.next_order = r.u64()?;
        shard.next_trade = r.u64()?;
        let history_len = r.u64()?;
        if history_len > u64::from(cfg.history_max) {
            return Err(SnapshotError::Capacity {
                what: "remembered terminated orders (history_max)",
                found: history_len,
                limit: u64::from(cfg.history_max),
            });
        }
        // One side at a time: read its levels best first, then link them
        // worst first so each new level is the new best (an append).
        let mut levels: Vec<(i64, usize, usize)> = Vec::new();
        let mut orders: Vec<RestingOrder> = Vec::new();
        for book in 0..book_count {
            if version >= 2 {
                shard.books[book as usize].seq = r.u64()?;
            }
            for s in 0..2 {
                let side = if s == 0 { Side::Buy } else { Side::Sell };
                levels.clear();
                orders.clear();
                let level_count = r.u32()?;
                if level_count > cfg.levels_per_side_max {
                    return Err(SnapshotError::Capacity {
                        what: "price levels on one side (levels_per_side_max)",
                        found: u64::from(level_count),
                        limit: u64::from(cfg.levels_per_side_max),
                    });
                }
                let mut previous_key = None;
                for _ in 0..level_count {
                    let price = r.i64()?;
                    if price < 1 {
                        return Err(r.invalid(8, format!("price level at {price} ticks")));
                    }
                    let key = key_of(side, price);
                    if previous_key.is_some_and(|p| p <= key) {
                        return Err(r.invalid(8, format!("{side} level {price} out of order")));
                    }
                    previous_key = Some(key);
                    let count = r.u32()?;
                    if count == 0 {
                        return Err(r.invalid(4, format!("empty level at {price}")));
                    }
                    let total = shard.live as usize + orders.len() + count as usize;
                    if total > live as usize {
                        return Err(r.invalid(
                            4,
                            format!("more orders than the {live} live orders announced"),
                        ));
                    }
                    levels.push((price, orders.len(), count as usize));
                    for _ in 0..count {
                        orders.push(read_order(&mut r, &cfg)?);
                    }
                }
                for &(price, start, count) in levels.iter().rev() {
                    shard.restore_level(book, side, price, &orders[start..start + count], &r)?;
                }
            }
            let sides = &shard.books[book as usize].sides;
            if let (Some(bid), Some(ask)) = (sides[0].best_key(), sides[1].best_key())
                && bid >= -ask
            {
                return Err(r.invalid(
                    0,
                    format!("book {book} is crossed: bid {bid}, ask {}", -ask),
                ));
            }
        }
        if shard.live != live {
            return Err(r.invalid(
                0,
                format!("{} orders in the books, {live} announced", shard.live),
            ));
        }
        for _ in 0..history_len {
            let e = FinishedOrder {
                account: r.u64()?,
                client_order_id: r.u64()?,
                order_id: r.u64()?,
                filled_quantity: r.u64()?,
                symbol: r.u32()?,
                state: OrderState::Canceled,
            };
            let state = r.u8()?;
            let e = FinishedOrder {
                state: match OrderState::from_wire(state) {
                    Ok(s @ (OrderState::Filled | OrderState::Canceled)) => s,
                    _ => return Err(r.invalid(1, format!("history state {state}"))),
                },
                ..e
            };
            if shard.find(e.account, e.client_order_id).is_some()
                || shard.history.find(e.account, e.client_order_id).is_some()
            {
                return Err(r.invalid(
                    FINISHED_BYTES,
                    format!(
                        "history entry ({}, {}) repeats a live or remembered key",
                        e.account, e.client_order_id
                    ),
                ));
            }
            shard.history.push(e);
        }
        if version >= 3 {
            let blocked = r.u64()?;
            // Each entry takes 8 bytes: a count beyond the bytes left is
            // refused before anything is read for it.
            if blocked > ((bytes.len() - r.offset) / 8) as u64 {
                return Err(r.invalid(8, format!("{blocked} blocked accounts announced")));
            }
            let mut previous = None;
            for _ in 0..blocked {
                let account = r.u64()?;
                if previous.is_some_and(|p| p >= account) {
                    return Err(r.invalid(8, format!("blocked account {account} out of order")));
                }
                previous = Some(account);
                shard.accounts.blocked.insert(account);
            }
        }
        shard.rebuild_seen();
        if r.offset != bytes.len() {
            return Err(SnapshotError::TrailingBytes {
                offset: r.offset,
                len: bytes.len() - r.offset,
            });
        }
        debug_assert_eq!(shard.check_invariants(), Ok(()));
        Ok(shard)
    }

    /// Adds one level (better than every level of its side so far) with
    /// its orders, front first.
    fn restore_level(
        &mut self,
        book: u32,
        side: Side,
        price: i64,
        orders: &[RestingOrder],
        r: &Reader<'_>,
    ) -> Result<(), SnapshotError> {
        let s = side_index(side);
        let level = self.add_level(book, s, price);
        for o in orders {
            if self.find(o.account, o.client_order_id).is_some() {
                return Err(r.invalid(
                    0,
                    format!("order ({}, {}) appears twice", o.account, o.client_order_id),
                ));
            }
            let slot = self.alloc_order(
                Order {
                    account: o.account,
                    client_order_id: o.client_order_id,
                    owner: SessionId::from_raw(o.owner),
                    order_id: o.order_id,
                    open: o.open,
                    filled: o.filled,
                    next: NIL,
                    prev: NIL,
                    level: NIL,
                    side,
                    stp: o.stp,
                    post_only: o.post_only,
                },
                book,
            );
            if self.index.needs_growth() {
                self.grow_index();
            }
            self.index.insert(o.account, o.client_order_id, slot);
            self.link_at_level(book, s, level, slot);
        }
        debug_assert_eq!(self.levels[level as usize].book_side, level_key(book, s));
        Ok(())
    }
}

/// Fills `slots` with the order slots of a side's levels in priority
/// order, following each level's list from `heads` through the dense
/// `next` links. Each level's count says where its slots go, so
/// [`CHASE_LANES`] lists are followed at once, round robin: their loads do
/// not depend on each other and their cache misses overlap.
fn chase(next: &[u32], rows: &[(i64, u64, u32)], heads: &[u32], slots: &mut Vec<u32>) {
    let total: usize = rows.iter().map(|r| r.2 as usize).sum();
    slots.clear();
    slots.resize(total, NIL);
    let mut start = 0;
    let mut lanes = [(NIL, 0usize); CHASE_LANES];
    let mut level = 0;
    loop {
        // Give idle lanes the next levels.
        let mut active = 0;
        for lane in &mut lanes {
            if lane.0 == NIL && level < heads.len() {
                *lane = (heads[level], start);
                start += rows[level].2 as usize;
                level += 1;
            }
            active += usize::from(lane.0 != NIL);
        }
        if active == 0 {
            break;
        }
        for lane in &mut lanes {
            let (slot, at) = *lane;
            if slot != NIL {
                // A list longer than its level's count would be a broken
                // book; `get_mut` keeps that from writing out of bounds.
                if let Some(cell) = slots.get_mut(at) {
                    *cell = slot;
                }
                *lane = (next[slot as usize], at + 1);
            }
        }
    }
}

/// Reads one live order's fields and checks them against `cfg`.
fn read_order(r: &mut Reader<'_>, cfg: &ShardConfig) -> Result<RestingOrder, SnapshotError> {
    let (account, client_order_id, owner, order_id) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
    let open = r.u64()?;
    if open == 0 || open > cfg.quantity_max {
        return Err(SnapshotError::Invalid {
            offset: r.offset - 8,
            what: format!(
                "order ({account}, {client_order_id}) has open quantity {open} \
                 (quantity_max is {}; restart with at least that)",
                cfg.quantity_max
            ),
        });
    }
    let filled = r.u64()?;
    let flags = r.u8()?;
    let stp = SelfTradePrevention::from_wire((flags >> FLAG_STP_SHIFT) & 0b11);
    let known = FLAG_POST_ONLY | (0b11 << FLAG_STP_SHIFT);
    let Ok(stp) = stp.map_err(|_| ()).and_then(|stp| {
        if flags & !known == 0 {
            Ok(stp)
        } else {
            Err(())
        }
    }) else {
        return Err(r.invalid(1, format!("order flags {flags:#04x}")));
    };
    Ok(RestingOrder {
        account,
        client_order_id,
        owner,
        order_id,
        open,
        filled,
        stp,
        post_only: flags & FLAG_POST_ONLY != 0,
    })
}
