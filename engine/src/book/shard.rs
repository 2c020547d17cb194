//! [`Shard`]: the matching engine of one shard (the books of its symbols).
//!
//! The rules it implements are in the [module docs](super); this file is
//! about how it does so quickly.
//!
//! # Storage
//!
//! Everything a shard needs for its configured capacity is reserved when it
//! is built, except the price windows its book sides borrow (made by the
//! shard's pool, up to its bound, while books warm up, then lent again)
//! and each side's vectors of far levels (which double on demand while
//! books warm up); so no order allocates in steady state
//! (`engine/tests/book_alloc.rs` checks this):
//!
//! - **Orders** live in one shard-wide slab (`Vec<Order>`, capacity
//!   `orders_max`), one 64-byte cache line each, addressed by `u32` slot,
//!   with a free list threaded through the `next` field. A level's orders
//!   form an intrusive doubly linked FIFO (`prev`/`next` slots), so an order
//!   leaves its level in O(1) from anywhere.
//! - **Levels** live in a second slab (32 bytes each), addressed by `u32`
//!   slot, with a free list. A level exists only while it has orders (it is
//!   freed when its last order leaves), so the slab never holds more levels
//!   than orders: `orders_max` of them.
//! - **Book sides** find a level by price without hashing or searching
//!   ([`BookSide`]): an array of level slots indexed by price offset from a
//!   moving base (the window, [`WINDOW_TICKS`] prices), a two-level bitmap
//!   of its occupied prices for the best and the next price, and sorted
//!   vectors for the rare levels below the window (far from the top).
//! - **The order index** maps (account, client order id) to a slot in an
//!   open-addressing table of twice the capacity ([`SlotIndex`]): cancel,
//!   replace and query are O(1).
//! - **The history** of terminated orders is a ring of `history_max`
//!   entries with its own index by (account, client order id), both
//!   reserved up front ([`History`]).
//!
//! [`Shard::process_batch`] prefetches the cache lines of the commands a
//! few places ahead, which matters once the books outgrow the L2 cache.
//!
//! The slabs are `Vec`s with their capacity reserved up front and filled by
//! `push` on first use, so the OS maps their pages lazily: a shard with a
//! large `orders_max` costs address space, not memory, until it fills.

use wire::{
    Accepted, CancelReason, Canceled, Fill, Kind, Liquidity, NewOrder, OrderState, OrderStatus,
    RejectReason, Rejected, Replace, Replaced, SelfTradePrevention, Side, TimeInForce, TopLevel,
};

use super::accounts::Accounts;
use super::history::{FinishedOrder, HISTORY_MAX_LIMIT, History};
use super::index::{Found, SlotIndex, prefetch_read};
use super::seen::IdHighWater;
use super::side::{BookSide, Windows};
use super::{
    Command, MASS_CANCEL_ALL_SYMBOLS, Matcher, MdEvent, Op, Report, SessionId, ShardConfig, Sink,
    reject_reason_for,
};

mod snapshot;

pub use snapshot::{SNAPSHOT_FORMAT_VERSION, SnapshotError};

/// "No slot" in the intrusive lists and free lists.
const NIL: u32 = u32::MAX;

/// Bits of an order id or trade id below the shard index: ids carry their
/// shard in the top 16 bits, so they are unique per server. The per-shard
/// sequence below wraps after 2^48 ids (about 325 days at 10 million a
/// second) rather than spill into the shard bits.
pub const ID_SHARD_SHIFT: u32 = 48;

const ID_SEQUENCE_MASK: u64 = (1 << ID_SHARD_SHIFT) - 1;

/// Largest accepted `orders_max`: order and level slots are `u32`, the
/// level slab holds twice as many levels, and each index needs a power of
/// two at least twice its slab.
pub const ORDERS_MAX_LIMIT: u32 = 1 << 28;

/// Largest shard index: it must fit the 16 bits above [`ID_SHARD_SHIFT`].
pub const SHARD_INDEX_LIMIT: u32 = 1 << 16;

/// Most books (symbols) one shard may own: keeps level slots and the
/// `book << 1 | side` key within `u32`.
pub const BOOKS_PER_SHARD_LIMIT: u32 = 1 << 20;

/// How many commands ahead [`Shard::process_batch`] prefetches each kind
/// of cache line. A command's memory is a chain (index bucket -> order ->
/// level), each link known only once the previous is loaded, so the
/// prefetches run as a pipeline: the bucket far ahead, the order (found
/// through the then-cached bucket) nearer, its levels nearest. Measured on
/// the 64-book mix of `cargo bench -p benches --bench book` (working set
/// far beyond L2), 8/4/2 did best among the few pipelines tried (6/3/1 to
/// 16/8/4), and roughly halved its time per command; in a small book that
/// fits in L2 it gains little and costs little.
const PREFETCH_BUCKET_AHEAD: usize = 8;
const PREFETCH_ORDER_AHEAD: usize = 4;
const PREFETCH_LEVEL_AHEAD: usize = 2;

/// Prices a book side's window covers ([`BookSide`]): the levels within
/// about 1,500 ticks below the best and 500 above it are found by index;
/// the rest (far from the market) by bisecting a sorted vector.
///
/// Why 2,048: a side's window costs 4 bytes a price for its level slots
/// plus a bit for its bitmap, 8.3 KiB per side (16.5 KiB per book, 1 MiB
/// for 64 books), lent by the shard's pool with the side's first level.
/// What the caches hold is only the lines of prices in use: a book of the
/// 64-book bench (about 1,000 orders over 750 levels within 800 ticks of
/// the mid) touches about 100 lines of slots and 8 of bitmap, some 7 KiB a
/// book and 0.45 MiB for 64 books, where the level-index hash this replaced spread the same
/// levels over a 1 MiB table with one random line per lookup (and each
/// side's sorted vector, 9 KiB a book, beside it). A wider window would
/// touch no more lines in such books, but each re-base (a move of the
/// market by a quarter of it) moves and rescans the whole window: 2,048
/// keeps that near a microsecond. A narrower one sends the deep half of
/// such a book to the far vectors, where inserts search and move memory.
pub(crate) const WINDOW_TICKS: usize = 2048;

/// A shard makes at most one window per this many orders of its capacity
/// (and never fewer than [`WINDOWS_MIN`], nor more than two per book): the
/// bound on window memory, so that it follows the shard's capacity and not
/// its number of symbols. At the default `orders_max` of 2^20 that is
/// 8,192 windows, 66 MiB if all are in use, about the size of the order
/// slab (64 MiB); a side needs 128 resting orders on average for its
/// window to be one of them. The 64-book bench (2^17 orders, 64 books)
/// may make 128, one per side. Sides beyond the bound work without a window
/// (their levels in the sorted far vectors) until they empty.
const ORDERS_PER_WINDOW: usize = 128;

/// See [`ORDERS_PER_WINDOW`].
const WINDOWS_MIN: usize = 64;

/// A resting order: exactly one cache line, so matching, cancel and
/// replace touch one line per order.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Order {
    account: u64,
    client_order_id: u64,
    /// The session its fills and cancels go to (the last one to replace it).
    owner: SessionId,
    order_id: u64,
    /// Open (resting) quantity.
    open: u64,
    /// Quantity filled over the order's life.
    filled: u64,
    /// Next order in the level (toward the back), or the next free slot.
    next: u32,
    /// Previous order in the level (toward the front).
    prev: u32,
    /// The level it rests in; `NIL` while the slot is free.
    level: u32,
    side: Side,
    stp: SelfTradePrevention,
    post_only: bool,
}

const _: () = assert!(core::mem::size_of::<Order>() == 64);

/// A price level: a FIFO of orders at one price on one side of one book.
#[derive(Clone, Copy, Debug)]
struct Level {
    price: i64,
    /// Sum of the open quantities of its orders.
    total: u64,
    head: u32,
    tail: u32,
    /// Number of orders (0 only while matching empties it, or free).
    count: u32,
    /// `book << 1 | side index`: the local book (its symbol is
    /// `book * shard_count + shard_index`) and the side.
    book_side: u32,
}

const _: () = assert!(core::mem::size_of::<Level>() == 32);

/// One symbol's book: bids (index 0) and asks (index 1).
#[derive(Debug)]
struct Book {
    sides: [BookSide; 2],
    /// Market-data events the book has produced: the last sequence number.
    seq: u64,
}

/// A level's `book_side`.
#[inline]
const fn level_key(book: u32, side: usize) -> u32 {
    (book << 1) | side as u32
}

#[inline]
const fn side_of_index(s: usize) -> Side {
    if s == 0 { Side::Buy } else { Side::Sell }
}

#[inline]
const fn side_index(side: Side) -> usize {
    match side {
        Side::Buy => 0,
        Side::Sell => 1,
    }
}

/// The sort key of `price` on `side`: greater is better on both sides.
/// Prices are in `1..=price_max` (or a band limit that saturates at
/// `i64::MAX`), so negation never overflows.
#[inline]
const fn key_of(side: Side, price: i64) -> i64 {
    match side {
        Side::Buy => price,
        Side::Sell => -price,
    }
}

/// A shard's configuration or placement cannot work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// `shard_count` is zero.
    NoShards,
    /// The shard would own more than [`BOOKS_PER_SHARD_LIMIT`] symbols.
    TooManyBooks(u32),
    /// `shard_index` is not below `shard_count`, or does not fit in 16 bits.
    ShardIndex {
        /// The index given.
        shard_index: u32,
        /// The shard count given.
        shard_count: u32,
    },
    /// `orders_max` is zero or above [`ORDERS_MAX_LIMIT`].
    OrdersMax(u32),
    /// `levels_per_side_max` is zero.
    LevelsPerSideMax,
    /// `quantity_max` is zero, or so large that `orders_max` orders of it
    /// could overflow a level's `u64` total.
    QuantityMax(u64),
    /// `price_max` is below 1.
    PriceMax(i64),
    /// `market_band_ticks` is negative.
    MarketBand(i64),
    /// `history_max` is above [`HISTORY_MAX_LIMIT`].
    HistoryMax(u32),
    /// `account_orders_max` or `account_symbol_orders_max` is zero.
    AccountOrdersMax,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            ConfigError::NoShards => write!(f, "shard count is 0; use at least 1 shard"),
            ConfigError::TooManyBooks(n) => write!(
                f,
                "one shard would own {n} symbols, above {BOOKS_PER_SHARD_LIMIT}; use more shards"
            ),
            ConfigError::ShardIndex {
                shard_index,
                shard_count,
            } => write!(
                f,
                "shard index {shard_index} is invalid for {shard_count} shards \
                 (must be below the count and below {SHARD_INDEX_LIMIT})"
            ),
            ConfigError::OrdersMax(n) => write!(
                f,
                "orders_max {n} is out of range; use 1..={ORDERS_MAX_LIMIT}"
            ),
            ConfigError::LevelsPerSideMax => {
                write!(f, "levels_per_side_max is 0; use at least 1")
            }
            ConfigError::QuantityMax(q) => write!(
                f,
                "quantity_max {q} is 0, or too large for orders_max: quantity_max * orders_max \
                 must fit in a u64 (level totals); lower orders_max or quantity_max"
            ),
            ConfigError::PriceMax(p) => write!(f, "price_max {p} is below 1"),
            ConfigError::MarketBand(b) => {
                write!(f, "market_band_ticks {b} is negative; use 0 or more")
            }
            ConfigError::HistoryMax(n) => write!(
                f,
                "history_max {n} is above {HISTORY_MAX_LIMIT}; use 0..={HISTORY_MAX_LIMIT}"
            ),
            ConfigError::AccountOrdersMax => write!(
                f,
                "the open-order cap per account (or per account and symbol) is 0; use at least 1"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl ShardConfig {
    /// Checks that every limit is usable; [`Shard::try_new`] calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.orders_max == 0 || self.orders_max > ORDERS_MAX_LIMIT {
            return Err(ConfigError::OrdersMax(self.orders_max));
        }
        if self.levels_per_side_max == 0 {
            return Err(ConfigError::LevelsPerSideMax);
        }
        if self.quantity_max == 0
            || self
                .quantity_max
                .checked_mul(u64::from(self.orders_max))
                .is_none()
        {
            return Err(ConfigError::QuantityMax(self.quantity_max));
        }
        if self.price_max < 1 {
            return Err(ConfigError::PriceMax(self.price_max));
        }
        if self.market_band_ticks < 0 {
            return Err(ConfigError::MarketBand(self.market_band_ticks));
        }
        if self.history_max > HISTORY_MAX_LIMIT {
            return Err(ConfigError::HistoryMax(self.history_max));
        }
        if self.account_orders_max == 0 || self.account_symbol_orders_max == 0 {
            return Err(ConfigError::AccountOrdersMax);
        }
        Ok(())
    }
}

/// A resting order, as the accessors show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderView {
    /// The owning account.
    pub account: u64,
    /// The client's id.
    pub client_order_id: u64,
    /// The exchange's id (kept across replaces).
    pub order_id: u64,
    /// The session that gets its reports.
    pub owner_session: SessionId,
    /// Symbol id.
    pub symbol: u32,
    /// Buy or sell.
    pub side: Side,
    /// Limit price in ticks.
    pub price: i64,
    /// Open (resting) quantity.
    pub open_quantity: u64,
    /// Quantity filled so far.
    pub filled_quantity: u64,
    /// Post-only flag (kept across replaces).
    pub post_only: bool,
    /// Self-trade prevention mode (kept across replaces).
    pub stp: SelfTradePrevention,
}

/// One price level, as the accessors show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LevelView {
    /// Price in ticks.
    pub price: i64,
    /// Total open quantity at this price.
    pub quantity: u64,
    /// Number of orders at this price.
    pub orders: u32,
}

/// The incoming order while it matches.
struct Taker {
    account: u64,
    session: SessionId,
    client_order_id: u64,
    side: Side,
    stp: SelfTradePrevention,
    /// Open quantity still to match.
    remaining: u64,
    /// Filled over the order's life (a replaced order starts with its past fills).
    filled: u64,
}

/// The matching engine for one shard. See the [module docs](super) for the
/// rules and [`Shard::new`] for placement.
#[derive(Debug)]
pub struct Shard {
    shard_index: u32,
    shard_count: u32,
    symbol_count: u32,
    cfg: ShardConfig,
    books: Vec<Book>,
    orders: Vec<Order>,
    free_order: u32,
    levels: Vec<Level>,
    /// The level slab's fixed capacity.
    levels_max: usize,
    free_level: u32,
    /// Levels in use (not on the free list).
    levels_used: usize,
    /// The price windows the book sides borrow.
    windows: Windows,
    index: SlotIndex,
    /// Live (resting) orders.
    live: u32,
    /// Sequence of the next order id (starts at 1).
    next_order: u64,
    /// Sequence of the next trade id (starts at 1).
    next_trade: u64,
    /// Recently terminated orders.
    history: History,
    /// Which new ids cannot be duplicates (derived state; see `seen.rs`).
    seen: IdHighWater,
    /// Live orders per account (derived state) and the blocked accounts.
    accounts: Accounts,
}

impl Shard {
    /// The shard `shard_index` of `shard_count`: it owns the books of every
    /// symbol `s < symbol_count` with `s % shard_count == shard_index` (book
    /// `s / shard_count`). Storage for `cfg.orders_max` orders is reserved now.
    ///
    /// # Panics
    ///
    /// If the placement or `cfg` is invalid (see [`Shard::try_new`], which
    /// returns the reason instead): that is an operator's configuration
    /// error, found at startup, never something a client can cause.
    pub fn new(shard_index: u32, shard_count: u32, symbol_count: u32, cfg: ShardConfig) -> Shard {
        match Shard::try_new(shard_index, shard_count, symbol_count, cfg) {
            Ok(shard) => shard,
            Err(e) => panic!("invalid shard configuration: {e}"),
        }
    }

    /// Like [`Shard::new`], but returns why the configuration is invalid.
    pub fn try_new(
        shard_index: u32,
        shard_count: u32,
        symbol_count: u32,
        cfg: ShardConfig,
    ) -> Result<Shard, ConfigError> {
        if shard_count == 0 {
            return Err(ConfigError::NoShards);
        }
        if shard_index >= shard_count || shard_index >= SHARD_INDEX_LIMIT {
            return Err(ConfigError::ShardIndex {
                shard_index,
                shard_count,
            });
        }
        cfg.validate()?;
        let book_count = if shard_index < symbol_count {
            (symbol_count - 1 - shard_index) / shard_count + 1
        } else {
            0
        };
        if book_count > BOOKS_PER_SHARD_LIMIT {
            return Err(ConfigError::TooManyBooks(book_count));
        }
        let books = (0..book_count)
            .map(|_| Book {
                seq: 0,
                sides: [BookSide::new(WINDOW_TICKS), BookSide::new(WINDOW_TICKS)],
            })
            .collect();
        // Every level holds at least one order.
        let levels_max = cfg.orders_max as usize;
        Ok(Shard {
            shard_index,
            shard_count,
            symbol_count,
            cfg,
            books,
            orders: Vec::with_capacity(cfg.orders_max as usize),
            free_order: NIL,
            levels: Vec::with_capacity(levels_max),
            levels_max,
            free_level: NIL,
            levels_used: 0,
            windows: Windows::new(WINDOW_TICKS, Self::windows_max(&cfg, book_count)),
            index: SlotIndex::new(cfg.orders_max as usize),
            live: 0,
            next_order: 1,
            next_trade: 1,
            history: History::new(cfg.history_max),
            seen: IdHighWater::new(),
            accounts: Accounts::new(
                cfg.orders_max,
                cfg.account_orders_max,
                cfg.account_symbol_orders_max,
            ),
        })
    }

    /// How many windows a shard may make ([`ORDERS_PER_WINDOW`]).
    fn windows_max(cfg: &ShardConfig, book_count: u32) -> usize {
        (cfg.orders_max as usize / ORDERS_PER_WINDOW)
            .max(WINDOWS_MIN)
            .min(2 * book_count as usize)
    }

    /// Gives every book side a window of `ticks` prices (a power of two up
    /// to 4,096) instead of [`WINDOW_TICKS`], and makes at most
    /// `windows_max` windows, so that tests reach the window's re-basing,
    /// its far levels and sides without a window with small books. Only on
    /// a shard that holds no order yet. Not part of the product: behaviour
    /// is the same with any window.
    #[doc(hidden)]
    pub fn with_windows(mut self, ticks: usize, windows_max: usize) -> Shard {
        assert_eq!(self.live, 0, "the window is chosen before any order");
        for book in &mut self.books {
            book.sides = [BookSide::new(ticks), BookSide::new(ticks)];
        }
        self.windows = Windows::new(ticks, windows_max);
        self
    }

    /// This shard's index.
    pub fn shard_index(&self) -> u32 {
        self.shard_index
    }

    /// The number of shards symbols are spread over.
    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    /// The size of the symbol directory (symbols `0..symbol_count`).
    pub fn symbol_count(&self) -> u32 {
        self.symbol_count
    }

    /// The limits it was built with.
    pub fn config(&self) -> &ShardConfig {
        &self.cfg
    }

    /// True when `symbol` is one of this shard's books.
    #[inline]
    pub fn owns_symbol(&self, symbol: u32) -> bool {
        self.book_of(symbol).is_some()
    }

    /// The best bid of `symbol` (None when the side is empty or the symbol is not here).
    pub fn best_bid(&self, symbol: u32) -> Option<LevelView> {
        self.depth(symbol, Side::Buy).next()
    }

    /// The best ask of `symbol` (None when the side is empty or the symbol is not here).
    pub fn best_ask(&self, symbol: u32) -> Option<LevelView> {
        self.depth(symbol, Side::Sell).next()
    }

    /// The price levels of one side of `symbol`, best first (empty when the
    /// symbol is not here).
    pub fn depth(&self, symbol: u32, side: Side) -> impl Iterator<Item = LevelView> + '_ {
        self.book_of(symbol).into_iter().flat_map(move |book| {
            self.books[book as usize].sides[side_index(side)]
                .iter_best_first()
                .map(|(_, level)| &self.levels[level as usize])
                .filter(|l| l.count > 0)
                .map(|l| LevelView {
                    price: l.price,
                    quantity: l.total,
                    orders: l.count,
                })
        })
    }

    /// The orders of one side of `symbol` in priority order (best price
    /// first, then time).
    pub fn orders_by_priority(
        &self,
        symbol: u32,
        side: Side,
    ) -> impl Iterator<Item = OrderView> + '_ {
        self.book_of(symbol).into_iter().flat_map(move |book| {
            self.books[book as usize].sides[side_index(side)]
                .iter_best_first()
                .flat_map(move |(_, level)| self.level_slots(level).map(|s| self.view(s)))
        })
    }

    /// A live order by its key.
    pub fn order(&self, account: u64, client_order_id: u64) -> Option<OrderView> {
        self.find(account, client_order_id)
            .map(|f| self.view(f.slot))
    }

    /// A terminated order by its key, while the history remembers it.
    pub fn finished_order(&self, account: u64, client_order_id: u64) -> Option<FinishedOrder> {
        self.history.find(account, client_order_id).copied()
    }

    /// The remembered terminated orders, oldest (next to be forgotten) first.
    pub fn history(&self) -> impl Iterator<Item = FinishedOrder> + '_ {
        self.history.iter_oldest_first().copied()
    }

    /// Checks every invariant of the whole shard by walking it: books not
    /// crossed, sides within their limit, each side's window bitmap in
    /// agreement with its level slots and its far levels sorted below the
    /// window, every level non-empty and found by its price, level totals
    /// and counts equal to their orders, list links consistent, every
    /// resting order in the index and the index holding nothing else, every
    /// level slot either in a side or free. O(live orders + windows);
    /// meant for tests and debugging, not for the hot path.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut resting = 0u32;
        let mut entries = 0usize;
        for (b, book) in self.books.iter().enumerate() {
            for (s, side) in book.sides.iter().enumerate() {
                if side.active > self.cfg.levels_per_side_max {
                    return Err(format!("book {b} side {s}: {} levels", side.active));
                }
                side.check()
                    .map_err(|e| format!("book {b} side {s}: {e}"))?;
                let mut previous_key = None;
                for (key, level) in side.iter_best_first() {
                    let l = &self.levels[level as usize];
                    if l.count == 0 {
                        return Err(format!("book {b} side {s}: level {level} is empty"));
                    }
                    let want_side = if s == 0 { Side::Buy } else { Side::Sell };
                    if key != key_of(want_side, l.price) || l.book_side != level_key(b as u32, s) {
                        return Err(format!("book {b} side {s}: level {level} misfiled"));
                    }
                    if side.find(key) != Some(level) {
                        return Err(format!("level {level} is not found by its price"));
                    }
                    entries += 1;
                    if previous_key.is_some_and(|p| p <= key) {
                        return Err(format!("book {b} side {s}: levels out of order"));
                    }
                    previous_key = Some(key);
                    let (mut total, mut count, mut prev) = (0u64, 0u32, NIL);
                    for slot in self.level_slots(level) {
                        let o = &self.orders[slot as usize];
                        if o.prev != prev || o.level != level || o.side != want_side {
                            return Err(format!("order slot {slot}: bad links"));
                        }
                        if o.open == 0 {
                            return Err(format!("order slot {slot}: rests with 0 open"));
                        }
                        match self.find(o.account, o.client_order_id) {
                            Some(f) if f.slot == slot => {}
                            _ => return Err(format!("order slot {slot}: not in the index")),
                        }
                        total += o.open;
                        count += 1;
                        prev = slot;
                    }
                    if l.tail != prev || l.total != total || l.count != count {
                        return Err(format!(
                            "book {b} side {s} level {}: total {} count {} but orders sum to {total} in {count}",
                            l.price, l.total, l.count
                        ));
                    }
                    resting += count;
                }
            }
            if let (Some(bid), Some(ask)) = (book.sides[0].best_key(), book.sides[1].best_key())
                && bid >= -ask
            {
                return Err(format!("book {b} crossed: bid {bid} >= ask {}", -ask));
            }
        }
        if resting != self.live || self.index.len() != self.live as usize {
            return Err(format!(
                "{resting} orders rest, {} indexed, but live is {}",
                self.index.len(),
                self.live
            ));
        }
        let lent = self
            .books
            .iter()
            .flat_map(|b| &b.sides)
            .filter(|s| s.has_window());
        self.windows.check(lent.count())?;
        let mut free = 0usize;
        let mut level = self.free_level;
        while level != NIL && free <= self.levels.len() {
            free += 1;
            level = self.levels[level as usize].head;
        }
        if entries != self.levels_used || entries + free != self.levels.len() {
            return Err(format!(
                "{entries} levels in sides, {} counted in use, {free} free of {}",
                self.levels_used,
                self.levels.len()
            ));
        }
        self.check_account_counts()?;
        self.history.check()?;
        for e in self.history.iter_oldest_first() {
            if self.find(e.account, e.client_order_id).is_some() {
                return Err(format!(
                    "({}, {}) is both live and in the history",
                    e.account, e.client_order_id
                ));
            }
            if !self.seen.may_have_seen(e.account, e.client_order_id) {
                return Err(format!(
                    "({}, {}) is remembered but above its id high-water mark",
                    e.account, e.client_order_id
                ));
            }
        }
        for (b, book) in self.books.iter().enumerate() {
            for side in &book.sides {
                for (_, level) in side.iter_best_first() {
                    for slot in self.level_slots(level) {
                        let o = &self.orders[slot as usize];
                        if !self.seen.may_have_seen(o.account, o.client_order_id) {
                            return Err(format!(
                                "book {b}: live ({}, {}) is above its id high-water mark",
                                o.account, o.client_order_id
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The per-account counts equal the live orders, for the caps that
    /// count (part of [`Self::check_invariants`]).
    fn check_account_counts(&self) -> Result<(), String> {
        let mut per_shard = std::collections::BTreeMap::<u64, u32>::new();
        let mut per_book = std::collections::BTreeMap::<(u64, u32), u32>::new();
        for (b, book) in self.books.iter().enumerate() {
            for side in &book.sides {
                for (_, level) in side.iter_best_first() {
                    for slot in self.level_slots(level) {
                        let account = self.orders[slot as usize].account;
                        *per_shard.entry(account).or_default() += 1;
                        *per_book.entry((account, b as u32)).or_default() += 1;
                    }
                }
            }
        }
        let (shard_entries, book_entries) = self.accounts.entries();
        if self.accounts.shard_count(0).is_some() {
            if shard_entries != per_shard.len() {
                return Err(format!(
                    "{shard_entries} accounts counted, {} hold orders",
                    per_shard.len()
                ));
            }
            for (&account, &n) in &per_shard {
                if self.accounts.shard_count(account) != Some(n) {
                    return Err(format!(
                        "account {account} holds {n} orders, counted {:?}",
                        self.accounts.shard_count(account)
                    ));
                }
            }
        }
        if self.accounts.book_count(0, 0).is_some() {
            if book_entries != per_book.len() {
                return Err(format!(
                    "{book_entries} (account, book) counted, {} hold orders",
                    per_book.len()
                ));
            }
            for (&(account, book), &n) in &per_book {
                if self.accounts.book_count(account, book) != Some(n) {
                    return Err(format!(
                        "account {account} holds {n} orders in book {book}, counted {:?}",
                        self.accounts.book_count(account, book)
                    ));
                }
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------------
    // Lookups
    // ---------------------------------------------------------------------

    #[inline]
    fn book_of(&self, symbol: u32) -> Option<u32> {
        (symbol < self.symbol_count && symbol % self.shard_count == self.shard_index)
            .then_some(symbol / self.shard_count)
    }

    #[inline]
    fn symbol_of(&self, book: u32) -> u32 {
        book * self.shard_count + self.shard_index
    }

    #[inline]
    fn find(&self, account: u64, client_order_id: u64) -> Option<Found> {
        let orders = &self.orders;
        self.index.find(account, client_order_id, |slot| {
            let o = &orders[slot as usize];
            (o.account, o.client_order_id)
        })
    }

    /// The slots of a level's orders, front to back.
    fn level_slots(&self, level: u32) -> impl Iterator<Item = u32> + '_ {
        let mut slot = self.levels[level as usize].head;
        core::iter::from_fn(move || {
            (slot != NIL).then(|| {
                let s = slot;
                slot = self.orders[s as usize].next;
                s
            })
        })
    }

    fn view(&self, slot: u32) -> OrderView {
        let o = &self.orders[slot as usize];
        let l = &self.levels[o.level as usize];
        OrderView {
            account: o.account,
            client_order_id: o.client_order_id,
            order_id: o.order_id,
            owner_session: o.owner,
            symbol: self.symbol_of(l.book_side >> 1),
            side: o.side,
            price: l.price,
            open_quantity: o.open,
            filled_quantity: o.filled,
            post_only: o.post_only,
            stp: o.stp,
        }
    }

    /// An order or trade id: the shard index above the sequence.
    #[inline]
    fn id_of(&self, sequence: u64) -> u64 {
        (u64::from(self.shard_index) << ID_SHARD_SHIFT) | (sequence & ID_SEQUENCE_MASK)
    }

    #[inline]
    fn next_trade_id(&mut self) -> u64 {
        let id = self.id_of(self.next_trade);
        self.next_trade = self.next_trade.wrapping_add(1);
        id
    }

    /// Records a terminated order in the history; called where its
    /// terminal report is emitted, so the history's order is report order.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn remember(
        &mut self,
        account: u64,
        client_order_id: u64,
        order_id: u64,
        symbol: u32,
        state: OrderState,
        filled_quantity: u64,
    ) {
        self.history.push(FinishedOrder {
            account,
            client_order_id,
            order_id,
            filled_quantity,
            symbol,
            state,
        });
    }

    /// The status a Query about a live order answers.
    #[inline]
    fn live_status(&self, slot: u32, client_order_id: u64, symbol: u32) -> OrderStatus {
        let o = &self.orders[slot as usize];
        OrderStatus::new(
            client_order_id,
            o.order_id,
            symbol,
            OrderState::Live,
            o.filled,
            o.open,
        )
    }

    /// The status a Query about a remembered order answers.
    #[inline]
    fn finished_status(e: &FinishedOrder) -> OrderStatus {
        OrderStatus::new(
            e.client_order_id,
            e.order_id,
            e.symbol,
            e.state,
            e.filled_quantity,
            0,
        )
    }

    // ---------------------------------------------------------------------
    // Slabs and links
    // ---------------------------------------------------------------------

    /// Takes a free order slot. The caller has checked `live < orders_max`,
    /// so the slab never grows past its reserved capacity.
    #[inline]
    fn alloc_order(&mut self, order: Order, book: u32) -> u32 {
        self.live += 1;
        self.accounts.rested(order.account, book);
        if self.free_order != NIL {
            let slot = self.free_order;
            self.free_order = self.orders[slot as usize].next;
            self.orders[slot as usize] = order;
            slot
        } else {
            debug_assert!(self.orders.len() < self.cfg.orders_max as usize);
            self.orders.push(order);
            (self.orders.len() - 1) as u32
        }
    }

    /// Returns an order's slot to the free list and drops it from the index
    /// (`position`: its index entry when the caller already has it).
    #[inline]
    fn retire_order(&mut self, slot: u32, position: Option<usize>) {
        let o = &self.orders[slot as usize];
        // The order still names its (last) level, so its book is known.
        let book = self.levels[o.level as usize].book_side >> 1;
        self.accounts.left(o.account, book);
        let position =
            position.unwrap_or_else(|| self.index.position_of(o.account, o.client_order_id, slot));
        self.index.remove_at(position);
        let o = &mut self.orders[slot as usize];
        o.next = self.free_order;
        // Marks the slot free for `grow_index`.
        o.level = NIL;
        self.free_order = slot;
        self.live -= 1;
    }

    /// Takes a free level slot for `price` on a side (not yet in the side).
    #[inline]
    fn alloc_level(&mut self, book: u32, side: usize, price: i64) -> u32 {
        let level = Level {
            price,
            total: 0,
            head: NIL,
            tail: NIL,
            count: 0,
            book_side: level_key(book, side),
        };
        self.levels_used += 1;
        if self.free_level != NIL {
            let index = self.free_level;
            self.free_level = self.levels[index as usize].head;
            self.levels[index as usize] = level;
            index
        } else {
            // Levels never outnumber live orders (each has one), and the
            // caller holds a live order for this one.
            debug_assert!(self.levels.len() < self.levels_max);
            self.levels.push(level);
            (self.levels.len() - 1) as u32
        }
    }

    /// Rebuilds the order index one size larger from the order slab (every
    /// slot not on the free list).
    #[cold]
    fn grow_index(&mut self) {
        let orders = &self.orders;
        self.index.grow(
            (0..orders.len() as u32)
                .filter(|&slot| orders[slot as usize].level != NIL)
                .map(|slot| {
                    let o = &orders[slot as usize];
                    (o.account, o.client_order_id, slot)
                }),
        );
    }

    /// True when the side has a level at `price` (every level in a side has
    /// orders).
    #[inline]
    fn has_level(&self, book: u32, side: Side, price: i64) -> bool {
        self.books[book as usize].sides[side_index(side)]
            .find(key_of(side, price))
            .is_some()
    }

    /// Takes an emptied level out of its side and returns it to the slab.
    #[inline]
    fn drop_level(&mut self, book: u32, s: usize, level: u32) {
        let l = &mut self.levels[level as usize];
        debug_assert_eq!(l.count, 0);
        let key = key_of(side_of_index(s), l.price);
        l.head = self.free_level;
        self.free_level = level;
        self.levels_used -= 1;
        self.books[book as usize].sides[s].remove(key, &mut self.windows);
    }

    /// Appends an order (already in the slab) at the back of the level for
    /// `price`, creating the level if needed. The caller has checked the
    /// side's level limit.
    #[inline]
    fn link_at_price(&mut self, book: u32, side: Side, price: i64, slot: u32) -> u32 {
        let s = side_index(side);
        let level = match self.books[book as usize].sides[s].find(key_of(side, price)) {
            Some(level) => level,
            None => self.add_level(book, s, price),
        };
        self.link_at_level(book, s, level, slot);
        level
    }

    /// Appends an order at the back of a level of side `s` of `book`.
    #[inline]
    fn link_at_level(&mut self, book: u32, s: usize, level: u32, slot: u32) {
        debug_assert_eq!(self.levels[level as usize].book_side, level_key(book, s));
        let l = &mut self.levels[level as usize];
        let tail = l.tail;
        l.tail = slot;
        if tail == NIL {
            l.head = slot;
        }
        l.total += self.orders[slot as usize].open;
        l.count += 1;
        if tail != NIL {
            self.orders[tail as usize].next = slot;
        }
        let o = &mut self.orders[slot as usize];
        o.prev = tail;
        o.next = NIL;
        o.level = level;
        debug_assert!(self.level_consistent(level));
    }

    /// Adds an empty level for a price its side has no level for; the
    /// caller links an order into it at once.
    #[inline]
    fn add_level(&mut self, book: u32, s: usize, price: i64) -> u32 {
        debug_assert!(
            self.books[book as usize].sides[s].active < self.cfg.levels_per_side_max,
            "the caller checks the side's level limit"
        );
        let level = self.alloc_level(book, s, price);
        self.books[book as usize].sides[s].insert(
            key_of(side_of_index(s), price),
            level,
            &mut self.windows,
        );
        level
    }

    /// Takes an order out of its level (subtracting its open quantity from
    /// the level total); a level it empties leaves its side. Returns the
    /// level's price, total and count after it.
    #[inline]
    fn unlink(&mut self, slot: u32) -> (i64, u64, u32) {
        let Order {
            prev,
            next,
            level,
            open,
            side,
            ..
        } = self.orders[slot as usize];
        if prev != NIL {
            self.orders[prev as usize].next = next;
        }
        if next != NIL {
            self.orders[next as usize].prev = prev;
        }
        let l = &mut self.levels[level as usize];
        if prev == NIL {
            l.head = next;
        }
        if next == NIL {
            l.tail = prev;
        }
        l.total -= open;
        l.count -= 1;
        debug_assert!(self.level_consistent(level));
        let l = &self.levels[level as usize];
        let after = (l.price, l.total, l.count);
        if l.count == 0 {
            self.drop_level(l.book_side >> 1, side_index(side), level);
        }
        after
    }

    // ---------------------------------------------------------------------
    // Market data
    // ---------------------------------------------------------------------

    /// A level of `book` changed: takes the book's next sequence number
    /// and reports the level's new state.
    #[inline]
    fn level_changed<S: Sink>(
        &mut self,
        book: u32,
        side: Side,
        (price, quantity, orders): (i64, u64, u32),
        sink: &mut S,
    ) {
        let symbol = self.symbol_of(book);
        let b = &mut self.books[book as usize];
        b.seq += 1;
        sink.market(MdEvent::Level {
            symbol,
            seq: b.seq,
            side,
            price,
            quantity,
            orders,
        });
    }

    /// The state of a level, for [`Self::level_changed`].
    #[inline]
    fn level_state(&self, level: u32) -> (i64, u64, u32) {
        let l = &self.levels[level as usize];
        (l.price, l.total, l.count)
    }

    /// After a command that may have changed `book`: its best levels to a
    /// sink that wants them, if its sequence moved past `seq_before`.
    #[inline]
    fn after_command<S: Sink>(&self, book: u32, seq_before: u64, sink: &mut S) {
        let b = &self.books[book as usize];
        if b.seq == seq_before {
            return;
        }
        let symbol = self.symbol_of(book);
        if !sink.wants_top(symbol) {
            return;
        }
        let top = |s: usize| {
            b.sides[s]
                .best()
                .map(|(_, level)| {
                    let l = &self.levels[level as usize];
                    TopLevel {
                        price: l.price,
                        quantity: l.total,
                        orders: l.count,
                    }
                })
                .unwrap_or_default()
        };
        sink.top(symbol, b.seq, top(0), top(1));
    }

    /// The book of a command's symbol and its sequence number now.
    #[inline]
    fn seq_mark(&self, symbol: u32) -> Option<(u32, u64)> {
        self.book_of(symbol)
            .map(|book| (book, self.books[book as usize].seq))
    }

    // ---------------------------------------------------------------------
    // Matching
    // ---------------------------------------------------------------------

    /// True when the best level of `book`'s `opposite` side is at or beyond
    /// `threshold` (a key on that side): an order with that limit would trade.
    #[inline]
    fn crosses(&self, book: u32, opposite: usize, threshold: i64) -> bool {
        self.books[book as usize].sides[opposite]
            .best_key()
            .is_some_and(|k| k >= threshold)
    }

    /// Walks the opposite side exactly as [`Shard::match_taker`] would and
    /// says whether `need` could fill completely, without changing anything.
    fn can_fill(
        &self,
        book: u32,
        opposite: usize,
        threshold: i64,
        account: u64,
        stp: SelfTradePrevention,
        need: u64,
    ) -> bool {
        let mut available = 0u64;
        for (key, level) in self.books[book as usize].sides[opposite].iter_best_first() {
            if key < threshold {
                return false;
            }
            for slot in self.level_slots(level) {
                let o = &self.orders[slot as usize];
                if o.account == account {
                    // Matching stops at a self-trade unless it cancels the
                    // resting order and goes on.
                    if stp != SelfTradePrevention::CancelResting {
                        return false;
                    }
                } else {
                    available += o.open;
                    if available >= need {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Matches `taker` against the opposite side from the best level while
    /// the level's key is at least `threshold`. Returns true if self-trade
    /// prevention stopped it (the caller cancels the remainder).
    ///
    /// Per trade, the maker's Fill is emitted before the taker's; a resting
    /// order canceled by self-trade prevention gets its Canceled when the
    /// walk reaches it.
    #[inline]
    fn match_taker<S: Sink>(
        &mut self,
        book: u32,
        opposite: usize,
        threshold: i64,
        taker: &mut Taker,
        sink: &mut S,
    ) -> bool {
        let symbol = self.symbol_of(book);
        while taker.remaining > 0 {
            let Some((key, level)) = self.books[book as usize].sides[opposite].best() else {
                return false;
            };
            if key < threshold {
                return false;
            }
            let price = self.levels[level as usize].price;
            let mut self_trade_stop = false;
            let mut slot = self.levels[level as usize].head;
            while slot != NIL && taker.remaining > 0 {
                let maker = &mut self.orders[slot as usize];
                let next = maker.next;
                if maker.account == taker.account {
                    let stop = match taker.stp {
                        SelfTradePrevention::CancelIncoming => {
                            self_trade_stop = true;
                            break;
                        }
                        SelfTradePrevention::CancelResting => false,
                        SelfTradePrevention::CancelBoth => true,
                    };
                    sink.emit(
                        maker.owner,
                        Report::Canceled(Canceled::new(
                            maker.client_order_id,
                            symbol,
                            CancelReason::SelfTrade,
                            maker.open,
                        )),
                    );
                    let (account, id, order_id, filled) = (
                        maker.account,
                        maker.client_order_id,
                        maker.order_id,
                        maker.filled,
                    );
                    self.remove_front(level, slot);
                    let state = self.level_state(level);
                    self.level_changed(book, side_of_index(opposite), state, sink);
                    self.remember(account, id, order_id, symbol, OrderState::Canceled, filled);
                    slot = next;
                    if stop {
                        self_trade_stop = true;
                        break;
                    }
                    continue;
                }
                if taker.remaining >= maker.open {
                    // This maker fills completely and will be remembered:
                    // start loading its history bucket now.
                    self.history.prefetch(maker.account, maker.client_order_id);
                }
                let quantity = taker.remaining.min(maker.open);
                maker.open -= quantity;
                // Saturating: an order replaced upward and filled again and
                // again could, in principle, fill more than u64 over its life.
                maker.filled = maker.filled.saturating_add(quantity);
                let (maker_owner, maker_id, maker_side, maker_open) =
                    (maker.owner, maker.client_order_id, maker.side, maker.open);
                let (maker_account, maker_order_id, maker_filled) =
                    (maker.account, maker.order_id, maker.filled);
                taker.remaining -= quantity;
                taker.filled = taker.filled.saturating_add(quantity);
                self.levels[level as usize].total -= quantity;
                let trade_id = self.next_trade_id();
                let b = &mut self.books[book as usize];
                b.seq += 1;
                sink.market(MdEvent::Trade {
                    symbol,
                    seq: b.seq,
                    aggressor: taker.side,
                    trade_id,
                    price,
                    quantity,
                });
                sink.emit(
                    maker_owner,
                    Report::Fill(Fill::new(
                        maker_id,
                        trade_id,
                        symbol,
                        maker_side,
                        Liquidity::Maker,
                        price,
                        quantity,
                        maker_open,
                    )),
                );
                sink.emit(
                    taker.session,
                    Report::Fill(Fill::new(
                        taker.client_order_id,
                        trade_id,
                        symbol,
                        taker.side,
                        Liquidity::Taker,
                        price,
                        quantity,
                        taker.remaining,
                    )),
                );
                if maker_open == 0 {
                    self.remove_front(level, slot);
                    self.remember(
                        maker_account,
                        maker_id,
                        maker_order_id,
                        symbol,
                        OrderState::Filled,
                        maker_filled,
                    );
                }
                let state = self.level_state(level);
                self.level_changed(book, maker_side, state, sink);
                slot = next;
            }
            debug_assert!(self.level_consistent(level));
            if self.levels[level as usize].count == 0 {
                self.drop_level(book, opposite, level);
            }
            if self_trade_stop {
                return true;
            }
        }
        false
    }

    /// Removes the front order of a best level during matching (filled or
    /// canceled by self-trade prevention). Unlike [`Shard::unlink`] it leaves
    /// an emptied level in its side: the match loop drops it when it leaves
    /// the level.
    #[inline]
    fn remove_front(&mut self, level: u32, slot: u32) {
        let (next, open) = {
            let o = &self.orders[slot as usize];
            (o.next, o.open)
        };
        let l = &mut self.levels[level as usize];
        debug_assert_eq!(l.head, slot);
        l.head = next;
        if next == NIL {
            l.tail = NIL;
        }
        l.total -= open;
        l.count -= 1;
        if next != NIL {
            self.orders[next as usize].prev = NIL;
        }
        self.retire_order(slot, None);
    }

    // ---------------------------------------------------------------------
    // Commands
    // ---------------------------------------------------------------------

    fn new_order<S: Sink>(&mut self, cmd: &Command, o: &NewOrder, now_ns: u64, sink: &mut S) {
        let client_order_id = o.client_order_id.get();
        let symbol = o.symbol.get();
        let reject = |sink: &mut S, reason| {
            sink.emit(
                cmd.session,
                Report::Rejected(Rejected::new(
                    client_order_id,
                    symbol,
                    reason,
                    Kind::NewOrder,
                )),
            );
        };
        let Some(book) = self.book_of(symbol) else {
            return reject(sink, RejectReason::UnknownSymbol);
        };
        if !self.accounts.blocked.is_empty() && self.accounts.blocked.contains(&cmd.account) {
            return reject(sink, RejectReason::AccountBlocked);
        }
        let fields = match o.fields() {
            Ok(f) => f,
            Err(e) => return reject(sink, reject_reason_for(&e)),
        };
        let quantity = o.quantity.get();
        if quantity == 0 || quantity > self.cfg.quantity_max {
            return reject(sink, RejectReason::InvalidQuantity);
        }
        let market = fields.order_type == wire::OrderType::Market;
        let price = o.price.get();
        if !market && !(1..=self.cfg.price_max).contains(&price) {
            return reject(sink, RejectReason::InvalidPrice);
        }
        let tif = fields.time_in_force;
        if market && tif == TimeInForce::Gtc {
            return reject(sink, RejectReason::InvalidTimeInForce);
        }
        if fields.post_only && market {
            return reject(sink, RejectReason::InvalidFlags);
        }
        if fields.post_only && tif != TimeInForce::Gtc {
            return reject(sink, RejectReason::InvalidTimeInForce);
        }
        // Most new ids are above everything the account used here: no
        // lookup in the live index or the (large, cache-cold) history.
        if self.seen.may_have_seen(cmd.account, client_order_id)
            && let Some(status) = self.duplicate_status(cmd.account, client_order_id)
        {
            reject(sink, RejectReason::DuplicateClientOrderId);
            return sink.emit(cmd.session, Report::Status(status));
        }
        // From here the key may become live or remembered: note it.
        self.seen.note(cmd.account, client_order_id);
        let side = fields.side;
        let own = side_index(side);
        let opposite = 1 - own;
        let rests = !market && tif == TimeInForce::Gtc;
        if rests {
            // Checked as if the whole order would rest, before anything
            // happens, so that a reject is always the only report.
            if self.live >= self.cfg.orders_max {
                return reject(sink, RejectReason::BookFull);
            }
            if self.accounts.at_cap(
                cmd.account,
                book,
                self.cfg.account_orders_max,
                self.cfg.account_symbol_orders_max,
            ) {
                return reject(sink, RejectReason::TooManyOpenOrders);
            }
            if self.books[book as usize].sides[own].active >= self.cfg.levels_per_side_max
                && !self.has_level(book, side, price)
            {
                return reject(sink, RejectReason::PriceLevelsFull);
            }
        }
        let limit = if market {
            let Some(best_key) = self.books[book as usize].sides[opposite].best_key() else {
                return reject(sink, RejectReason::NoLiquidity);
            };
            // The opposite key of a buy's asks is -price; of a sell's bids, price.
            let reference = key_of(side.opposite(), best_key);
            match side {
                Side::Buy => reference.saturating_add(self.cfg.market_band_ticks),
                Side::Sell => reference.saturating_sub(self.cfg.market_band_ticks),
            }
        } else {
            price
        };
        let threshold = key_of(side.opposite(), limit);
        if fields.post_only && self.crosses(book, opposite, threshold) {
            return reject(sink, RejectReason::PostOnlyWouldTake);
        }

        let order_id = self.id_of(self.next_order);
        self.next_order = self.next_order.wrapping_add(1);
        sink.emit(
            cmd.session,
            Report::Accepted(Accepted::new(
                client_order_id,
                order_id,
                now_ns,
                symbol,
                &fields,
            )),
        );
        let cancel = |sink: &mut S, reason, quantity| {
            sink.emit(
                cmd.session,
                Report::Canceled(Canceled::new(client_order_id, symbol, reason, quantity)),
            );
        };
        let finished = |shard: &mut Shard, state, filled| {
            shard.remember(
                cmd.account,
                client_order_id,
                order_id,
                symbol,
                state,
                filled,
            );
        };
        if tif == TimeInForce::Fok
            && !self.can_fill(book, opposite, threshold, cmd.account, fields.stp, quantity)
        {
            cancel(sink, CancelReason::FokUnfilled, quantity);
            return finished(self, OrderState::Canceled, 0);
        }
        let mut taker = Taker {
            account: cmd.account,
            session: cmd.session,
            client_order_id,
            side,
            stp: fields.stp,
            remaining: quantity,
            filled: 0,
        };
        // Most replaces and many new orders do not cross: skip the call then.
        let self_trade = self.crosses(book, opposite, threshold)
            && self.match_taker(book, opposite, threshold, &mut taker, sink);
        if taker.remaining == 0 {
            return finished(self, OrderState::Filled, taker.filled);
        }
        if self_trade {
            cancel(sink, CancelReason::SelfTrade, taker.remaining);
            return finished(self, OrderState::Canceled, taker.filled);
        }
        if rests {
            let slot = self.alloc_order(
                Order {
                    account: cmd.account,
                    client_order_id,
                    owner: cmd.session,
                    order_id,
                    open: taker.remaining,
                    filled: taker.filled,
                    next: NIL,
                    prev: NIL,
                    level: NIL,
                    side,
                    stp: fields.stp,
                    post_only: fields.post_only,
                },
                book,
            );
            if self.index.needs_growth() {
                self.grow_index();
            }
            self.index.insert(cmd.account, client_order_id, slot);
            let level = self.link_at_price(book, side, price, slot);
            let state = self.level_state(level);
            self.level_changed(book, side, state, sink);
            return;
        }
        debug_assert!(tif != TimeInForce::Fok, "a FOK that passed can_fill filled");
        let reason = if market && !self.books[book as usize].sides[opposite].is_empty() {
            CancelReason::PriceBand
        } else {
            CancelReason::IocRemainder
        };
        cancel(sink, reason, taker.remaining);
        finished(self, OrderState::Canceled, taker.filled);
    }

    /// The status of the order that makes a NewOrder's key a duplicate: a
    /// live order with that key (in any book of the shard) or a remembered
    /// one; `None` when the key is free.
    #[inline]
    fn duplicate_status(&self, account: u64, client_order_id: u64) -> Option<OrderStatus> {
        if let Some(found) = self.find(account, client_order_id) {
            let symbol = self.symbol_of(self.book_of_slot(found.slot));
            return Some(self.live_status(found.slot, client_order_id, symbol));
        }
        self.history
            .find(account, client_order_id)
            .map(Self::finished_status)
    }

    fn cancel<S: Sink>(&mut self, cmd: &Command, c: &wire::Cancel, sink: &mut S) {
        let client_order_id = c.client_order_id.get();
        let symbol = c.symbol.get();
        let found = match self.book_of(symbol) {
            None => Err(RejectReason::UnknownSymbol),
            Some(book) => self
                .find(cmd.account, client_order_id)
                .filter(|f| self.book_of_slot(f.slot) == book)
                .map(|f| (book, f))
                .ok_or(RejectReason::UnknownOrder),
        };
        let report = match found {
            Err(reason) => {
                Report::Rejected(Rejected::new(client_order_id, symbol, reason, Kind::Cancel))
            }
            Ok((book, found)) => {
                let Order {
                    open,
                    filled,
                    order_id,
                    side,
                    ..
                } = self.orders[found.slot as usize];
                let state = self.unlink(found.slot);
                self.level_changed(book, side, state, sink);
                self.retire_order(found.slot, Some(found.position));
                self.remember(
                    cmd.account,
                    client_order_id,
                    order_id,
                    symbol,
                    OrderState::Canceled,
                    filled,
                );
                Report::Canceled(Canceled::new(
                    client_order_id,
                    symbol,
                    CancelReason::Requested,
                    open,
                ))
            }
        };
        sink.emit(cmd.session, report);
    }

    #[inline]
    fn book_of_slot(&self, slot: u32) -> u32 {
        self.levels[self.orders[slot as usize].level as usize].book_side >> 1
    }

    fn replace<S: Sink>(&mut self, cmd: &Command, r: &Replace, sink: &mut S) {
        let client_order_id = r.client_order_id.get();
        let symbol = r.symbol.get();
        let price = r.price.get();
        let quantity = r.quantity.get();
        let reject = |sink: &mut S, reason| {
            sink.emit(
                cmd.session,
                Report::Rejected(Rejected::new(
                    client_order_id,
                    symbol,
                    reason,
                    Kind::Replace,
                )),
            );
        };
        let Some(book) = self.book_of(symbol) else {
            return reject(sink, RejectReason::UnknownSymbol);
        };
        if quantity == 0 || quantity > self.cfg.quantity_max {
            return reject(sink, RejectReason::InvalidQuantity);
        }
        if !(1..=self.cfg.price_max).contains(&price) {
            return reject(sink, RejectReason::InvalidPrice);
        }
        let Some(found) = self
            .find(cmd.account, client_order_id)
            .filter(|f| self.book_of_slot(f.slot) == book)
        else {
            return reject(sink, RejectReason::UnknownOrder);
        };
        let slot = found.slot;
        let o = self.orders[slot as usize];
        let level = self.levels[o.level as usize];
        if price == level.price && quantity <= o.open {
            // A reduction at the same price keeps time priority.
            self.levels[o.level as usize].total -= o.open - quantity;
            let order = &mut self.orders[slot as usize];
            order.open = quantity;
            order.owner = cmd.session;
            debug_assert!(self.level_consistent(o.level));
            if quantity != o.open {
                let state = self.level_state(o.level);
                self.level_changed(book, o.side, state, sink);
            }
            sink.emit(
                cmd.session,
                Report::Replaced(Replaced::new(
                    client_order_id,
                    symbol,
                    true,
                    price,
                    quantity,
                )),
            );
            return;
        }
        let own = side_index(o.side);
        let opposite = 1 - own;
        // As for a new order: the limit is checked as if the order would
        // rest at its new price, after leaving its old level. The search
        // only happens when the side is at its limit.
        let frees_a_level = level.count == 1 && price != level.price;
        if self.books[book as usize].sides[own].active - u32::from(frees_a_level)
            >= self.cfg.levels_per_side_max
            && !self.has_level(book, o.side, price)
        {
            return reject(sink, RejectReason::PriceLevelsFull);
        }
        let threshold = key_of(o.side.opposite(), price);
        if o.post_only && self.crosses(book, opposite, threshold) {
            return reject(sink, RejectReason::PostOnlyWouldTake);
        }
        let state = self.unlink(slot);
        self.level_changed(book, o.side, state, sink);
        sink.emit(
            cmd.session,
            Report::Replaced(Replaced::new(
                client_order_id,
                symbol,
                false,
                price,
                quantity,
            )),
        );
        let mut taker = Taker {
            account: cmd.account,
            session: cmd.session,
            client_order_id,
            side: o.side,
            stp: o.stp,
            remaining: quantity,
            filled: o.filled,
        };
        // Most replaces and many new orders do not cross: skip the call then.
        let self_trade = self.crosses(book, opposite, threshold)
            && self.match_taker(book, opposite, threshold, &mut taker, sink);
        if taker.remaining == 0 {
            self.retire_order(slot, None);
            return self.remember(
                cmd.account,
                client_order_id,
                o.order_id,
                symbol,
                OrderState::Filled,
                taker.filled,
            );
        }
        if self_trade {
            sink.emit(
                cmd.session,
                Report::Canceled(Canceled::new(
                    client_order_id,
                    symbol,
                    CancelReason::SelfTrade,
                    taker.remaining,
                )),
            );
            self.retire_order(slot, None);
            return self.remember(
                cmd.account,
                client_order_id,
                o.order_id,
                symbol,
                OrderState::Canceled,
                taker.filled,
            );
        }
        let order = &mut self.orders[slot as usize];
        order.open = taker.remaining;
        order.filled = taker.filled;
        order.owner = cmd.session;
        let level = self.link_at_price(book, o.side, price, slot);
        let state = self.level_state(level);
        self.level_changed(book, o.side, state, sink);
    }

    fn query<S: Sink>(&mut self, cmd: &Command, q: &wire::OrderQuery, sink: &mut S) {
        let client_order_id = q.client_order_id.get();
        let symbol = q.symbol.get();
        let report = match self.book_of(symbol) {
            None => Report::Rejected(Rejected::new(
                client_order_id,
                symbol,
                RejectReason::UnknownSymbol,
                Kind::OrderQuery,
            )),
            Some(book) => {
                let live = self
                    .find(cmd.account, client_order_id)
                    .filter(|f| self.book_of_slot(f.slot) == book)
                    .map(|f| self.live_status(f.slot, client_order_id, symbol));
                let finished = || {
                    self.history
                        .find(cmd.account, client_order_id)
                        .filter(|e| e.symbol == symbol)
                        .map(Self::finished_status)
                };
                Report::Status(live.or_else(finished).unwrap_or_else(|| {
                    OrderStatus::new(client_order_id, 0, symbol, OrderState::Unknown, 0, 0)
                }))
            }
        };
        sink.emit(cmd.session, report);
    }

    /// Cancels every order owned by `session`: books in symbol order, bids
    /// then asks, best price first, front of the level first. O(live orders
    /// in the shard), which a disconnect can afford.
    fn cancel_session<S: Sink>(&mut self, session: SessionId, sink: &mut S) {
        self.cancel_where(
            0..self.books.len() as u32,
            Sweep::Session(session),
            CancelReason::Disconnect,
            sink,
        );
    }

    /// [`Op::MassCancel`]: the account's orders on `symbol` (or on every
    /// symbol), `Canceled(Requested)` to the requesting session.
    fn mass_cancel<S: Sink>(&mut self, cmd: &Command, symbol: u32, sink: &mut S) {
        let books = if symbol == MASS_CANCEL_ALL_SYMBOLS {
            0..self.books.len() as u32
        } else {
            match self.book_of(symbol) {
                Some(book) => book..book + 1,
                None => return,
            }
        };
        self.cancel_where(
            books,
            Sweep::Account {
                account: cmd.account,
                to: Some(cmd.session),
            },
            CancelReason::Requested,
            sink,
        );
    }

    /// [`Op::KillAccount`]: cancels the account's orders (`Killed`, to
    /// their owners) and blocks it.
    fn kill_account<S: Sink>(&mut self, account: u64, sink: &mut S) {
        self.cancel_where(
            0..self.books.len() as u32,
            Sweep::Account { account, to: None },
            CancelReason::Killed,
            sink,
        );
        self.accounts.blocked.insert(account);
    }

    /// [`Op::DetachSessions`]: every live order's owner session becomes
    /// [`SessionId::NONE`]. No report, no market data, no allocation:
    /// O(live orders and levels in the shard), walked book by book like a
    /// cancel session (the order of the walk does not change the result).
    fn detach_sessions(&mut self) {
        if self.live == 0 {
            return;
        }
        let (orders, levels) = (&mut self.orders, &self.levels);
        for book in &self.books {
            for side in &book.sides {
                for (_, level) in side.iter_best_first() {
                    let mut slot = levels[level as usize].head;
                    while slot != NIL {
                        let o = &mut orders[slot as usize];
                        o.owner = SessionId::NONE;
                        slot = o.next;
                    }
                }
            }
        }
    }

    /// Cancels the orders `sweep` selects in `books`, in cancel session's
    /// order, with their tops after each book.
    fn cancel_where<S: Sink>(
        &mut self,
        books: core::ops::Range<u32>,
        sweep: Sweep,
        reason: CancelReason,
        sink: &mut S,
    ) {
        for book in books {
            if self.live == 0 {
                return;
            }
            let seq_before = self.books[book as usize].seq;
            self.cancel_in(book, sweep, reason, sink);
            self.after_command(book, seq_before, sink);
        }
    }

    /// [`Self::cancel_where`] in one book.
    fn cancel_in<S: Sink>(&mut self, book: u32, sweep: Sweep, reason: CancelReason, sink: &mut S) {
        let symbol = self.symbol_of(book);
        for side in 0..2 {
            let mut next = self.books[book as usize].sides[side].best();
            while let Some((key, level)) = next {
                let mut slot = self.levels[level as usize].head;
                while slot != NIL {
                    let o = self.orders[slot as usize];
                    let to = match sweep {
                        Sweep::Session(session) => (o.owner == session).then_some(session),
                        Sweep::Account { account, to } => {
                            (o.account == account).then_some(to.unwrap_or(o.owner))
                        }
                    };
                    if let Some(to) = to {
                        sink.emit(
                            to,
                            Report::Canceled(Canceled::new(
                                o.client_order_id,
                                symbol,
                                reason,
                                o.open,
                            )),
                        );
                        let state = self.unlink(slot);
                        self.level_changed(book, side_of_index(side), state, sink);
                        self.retire_order(slot, None);
                        self.remember(
                            o.account,
                            o.client_order_id,
                            o.order_id,
                            symbol,
                            OrderState::Canceled,
                            o.filled,
                        );
                    }
                    slot = o.next;
                }
                // The level may be gone (emptied): the next is found by price.
                next = self.books[book as usize].sides[side].next_below(key);
            }
        }
    }

    /// The accounts an operator's kill switch has blocked, ascending.
    pub fn blocked_accounts(&self) -> impl Iterator<Item = u64> + '_ {
        self.accounts.blocked.iter().copied()
    }

    /// The live orders `account` holds in the shard as the open-order cap
    /// counts them (None when the cap is off and nothing is counted).
    pub fn account_open_orders(&self, account: u64) -> Option<u32> {
        self.accounts.shard_count(account)
    }

    /// The live orders `account` holds on `symbol` as the per-symbol cap
    /// counts them (None when that cap is off or the symbol is not here).
    pub fn account_symbol_open_orders(&self, account: u64, symbol: u32) -> Option<u32> {
        self.book_of(symbol)
            .and_then(|book| self.accounts.book_count(account, book))
    }

    /// Debug check: a level's total and count equal its orders'. O(orders
    /// in the level), so only in debug assertions.
    fn level_consistent(&self, level: u32) -> bool {
        let l = &self.levels[level as usize];
        let (mut total, mut count) = (0u64, 0u32);
        for slot in self.level_slots(level) {
            total += self.orders[slot as usize].open;
            count += 1;
        }
        total == l.total && count == l.count
    }

    /// Debug check after each command: the book it touched is not crossed.
    #[inline]
    fn debug_check_book(&self, symbol: u32) {
        if cfg!(debug_assertions)
            && let Some(book) = self.book_of(symbol)
        {
            let sides = &self.books[book as usize].sides;
            if let (Some(bid), Some(ask)) = (sides[0].best_key(), sides[1].best_key()) {
                debug_assert!(bid < -ask, "book {book} crossed: bid {bid}, ask {}", -ask);
            }
        }
    }
}

/// Which orders a sweep of [`Shard::cancel_where`] cancels, and where
/// their reports go.
#[derive(Clone, Copy)]
enum Sweep {
    /// Orders owned by the session; reports to it.
    Session(SessionId),
    /// Orders of the account; reports to `to`, or to each order's owner.
    Account { account: u64, to: Option<SessionId> },
}

/// The order key a command names, if any.
#[inline]
fn command_key(cmd: &Command) -> Option<(u64, u32)> {
    match &cmd.op {
        Op::New(o) => Some((o.client_order_id.get(), o.symbol.get())),
        Op::Cancel(c) => Some((c.client_order_id.get(), c.symbol.get())),
        Op::Replace(r) => Some((r.client_order_id.get(), r.symbol.get())),
        Op::Query(q) => Some((q.client_order_id.get(), q.symbol.get())),
        Op::CancelSession
        | Op::MassCancel { .. }
        | Op::KillAccount
        | Op::UnblockAccount
        | Op::DetachSessions => None,
    }
}

impl Shard {
    /// Stage 1: the order index bucket of the command's key, and for a new
    /// order or a cancel the history's bucket too (a new order's duplicate
    /// check reads it; a cancel, and often a new order, ends by inserting
    /// its key there).
    #[inline]
    fn prefetch_bucket(&self, cmd: &Command) {
        if let Some((id, _)) = command_key(cmd) {
            match cmd.op {
                // A new id above its mark needs neither bucket (`seen.rs`).
                Op::New(_) if !self.seen.may_have_seen(cmd.account, id) => {}
                Op::New(_) | Op::Cancel(_) => {
                    self.index.prefetch(cmd.account, id);
                    self.history.prefetch(cmd.account, id);
                }
                _ => self.index.prefetch(cmd.account, id),
            }
        }
    }

    /// Stage 2: the order the key names (when the bucket's tag matches),
    /// and for a new limit order the window slot of its price.
    #[inline]
    fn prefetch_order(&self, cmd: &Command) {
        match &cmd.op {
            Op::Cancel(_) | Op::Replace(_) | Op::Query(_) => {
                if let Some((id, _)) = command_key(cmd)
                    && let Some(slot) = self.index.peek(cmd.account, id)
                    && let Some(order) = self.orders.get(slot as usize)
                {
                    prefetch_read(order);
                }
            }
            Op::New(o) => {
                if let (Some(book), Ok(side)) =
                    (self.book_of(o.symbol.get()), Side::from_wire(o.side))
                {
                    self.books[book as usize].sides[side_index(side)]
                        .prefetch(key_of(side, o.price.get()));
                }
            }
            Op::CancelSession
            | Op::MassCancel { .. }
            | Op::KillAccount
            | Op::UnblockAccount
            | Op::DetachSessions => {}
        }
    }

    /// Stage 3: the level the named order rests in and, for a replace,
    /// the window slot of its new price.
    #[inline]
    fn prefetch_levels(&self, cmd: &Command) {
        let (Op::Cancel(_) | Op::Replace(_)) = &cmd.op else {
            return;
        };
        let Some((id, symbol)) = command_key(cmd) else {
            return;
        };
        let Some(order) = self
            .index
            .peek(cmd.account, id)
            .and_then(|slot| self.orders.get(slot as usize))
        else {
            return;
        };
        if let Some(level) = self.levels.get(order.level as usize) {
            prefetch_read(level);
        }
        if let (Op::Replace(r), Some(book)) = (&cmd.op, self.book_of(symbol)) {
            self.books[book as usize].sides[side_index(order.side)]
                .prefetch(key_of(order.side, r.price.get()));
        }
    }
}

impl Matcher for Shard {
    /// Processes commands in order, exactly as [`Matcher::process`] one by
    /// one would (same reports, same state), while prefetching the memory
    /// of the commands a few places ahead so that their cache misses
    /// overlap with the work on the current one.
    #[inline]
    fn process_batch<S: Sink>(&mut self, cmds: &[Command], now_ns: u64, sink: &mut S) {
        for (i, cmd) in cmds.iter().enumerate() {
            if let Some(ahead) = cmds.get(i + PREFETCH_BUCKET_AHEAD) {
                self.prefetch_bucket(ahead);
            }
            if let Some(ahead) = cmds.get(i + PREFETCH_ORDER_AHEAD) {
                self.prefetch_order(ahead);
            }
            if let Some(ahead) = cmds.get(i + PREFETCH_LEVEL_AHEAD) {
                self.prefetch_levels(ahead);
            }
            self.process(cmd, now_ns, sink);
        }
    }

    #[inline]
    fn process<S: Sink>(&mut self, cmd: &Command, now_ns: u64, sink: &mut S) {
        let symbol = match &cmd.op {
            Op::New(o) => o.symbol.get(),
            Op::Cancel(c) => c.symbol.get(),
            Op::Replace(r) => r.symbol.get(),
            Op::Query(q) => return self.query(cmd, q, sink),
            Op::CancelSession => return self.cancel_session(cmd.session, sink),
            Op::MassCancel { symbol } => return self.mass_cancel(cmd, *symbol, sink),
            Op::KillAccount => return self.kill_account(cmd.account, sink),
            Op::UnblockAccount => {
                self.accounts.blocked.remove(&cmd.account);
                return;
            }
            Op::DetachSessions => return self.detach_sessions(),
        };
        // Only a sink that wants tops pays for finding the book twice.
        let mark = if sink.wants_top(symbol) {
            self.seq_mark(symbol)
        } else {
            None
        };
        match &cmd.op {
            Op::New(o) => self.new_order(cmd, o, now_ns, sink),
            Op::Cancel(c) => self.cancel(cmd, c, sink),
            Op::Replace(r) => self.replace(cmd, r, sink),
            _ => {}
        }
        self.debug_check_book(symbol);
        if let Some((book, seq_before)) = mark {
            self.after_command(book, seq_before, sink);
        }
    }

    fn md_seq(&self, symbol: u32) -> u64 {
        self.seq_mark(symbol).map_or(0, |(_, seq)| seq)
    }

    fn md_levels(&self, symbol: u32, side: Side) -> impl Iterator<Item = LevelView> + '_ {
        self.depth(symbol, side)
    }

    fn state_digest(&self) -> u64 {
        self.walk(None)
    }

    #[inline]
    fn live_orders(&self) -> usize {
        self.live as usize
    }
}

/// A small deterministic 64-bit hash for [`Matcher::state_digest`]: a
/// multiply-rotate per word and a final avalanche. Not cryptographic; it
/// only has to make different states differ.
#[derive(Default)]
struct Digest(u64);

impl Digest {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(23) ^ word).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        x ^= x >> 33;
        x = x.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        x ^ (x >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{Cancel, OrderQuery};

    fn shard(window_ticks: usize) -> Shard {
        let cfg = ShardConfig {
            orders_max: 8,
            levels_per_side_max: 8,
            ..ShardConfig::default()
        };
        Shard::new(0, 1, 1, cfg).with_windows(window_ticks, 2)
    }

    fn run(shard: &mut Shard, op: Op) -> Vec<(SessionId, Report)> {
        let mut out = Vec::new();
        let cmd = Command {
            session: SessionId::from_raw(1),
            account: 1,
            op,
        };
        shard.process(&cmd, 0, &mut out);
        shard.check_invariants().unwrap();
        out
    }

    fn rest(shard: &mut Shard, id: u64, price: i64) {
        let out = run(shard, Op::New(NewOrder::limit(id, 0, Side::Buy, price, 1)));
        assert_eq!(out.len(), 1);
    }

    fn bid_prices(s: &Shard) -> Vec<i64> {
        s.depth(0, Side::Buy).map(|l| l.price).collect()
    }

    #[test]
    fn emptied_levels_leave_their_side_and_the_slab_reuses_them() {
        let mut s = shard(WINDOW_TICKS);
        for (id, price) in [(1, 10), (2, 11), (3, 12)] {
            rest(&mut s, id, price);
        }
        let level_11 = s.books[0].sides[0].find(11).unwrap();
        run(&mut s, Op::Cancel(Cancel::new(2, 0)));
        assert_eq!(s.books[0].sides[0].len(), 2);
        assert_eq!(s.books[0].sides[0].find(11), None);
        assert_eq!(s.levels_used, 2);
        // The freed slot is the next level's.
        rest(&mut s, 4, 20);
        assert_eq!(s.books[0].sides[0].find(20), Some(level_11));
        run(&mut s, Op::Cancel(Cancel::new(4, 0)));
        run(&mut s, Op::Cancel(Cancel::new(3, 0)));
        assert_eq!(bid_prices(&s), [10]);
        assert_eq!(s.levels.len(), 3);
    }

    #[test]
    fn prices_outside_a_small_window_rebase_it_or_rest_far_from_it() {
        // An 8-tick window: 2 ticks of headroom above the best bid.
        let mut s = shard(8);
        rest(&mut s, 1, 100);
        rest(&mut s, 2, 95);
        // Far below the best: a far level, found by bisection.
        rest(&mut s, 3, 50);
        rest(&mut s, 4, 1);
        // A new best far above: the window moves up, 100 and 95 go far.
        rest(&mut s, 5, 1_000_000);
        assert_eq!(bid_prices(&s), [1_000_000, 100, 95, 50, 1]);
        assert_eq!(
            s.books[0].sides[0].next_below(100),
            Some((95, s.books[0].sides[0].find(95).unwrap()))
        );
        // The window's only level leaves: the far best is the best.
        run(&mut s, Op::Cancel(Cancel::new(5, 0)));
        assert_eq!(s.best_bid(0).map(|l| l.price), Some(100));
        // A bid next to it re-centres the window on 100 (95 comes back in).
        rest(&mut s, 6, 99);
        assert_eq!(bid_prices(&s), [100, 99, 95, 50, 1]);
        // A sell sweeps them best first, across window and far levels.
        let out = run(
            &mut s,
            Op::New(NewOrder::new(
                9,
                0,
                Side::Sell,
                wire::OrderType::Limit,
                TimeInForce::Ioc,
                false,
                SelfTradePrevention::CancelResting,
                1,
                3,
            )),
        );
        // Own orders: self-trade prevention cancels the three best, in order.
        let canceled: Vec<u64> = out
            .iter()
            .filter_map(|(_, r)| match r {
                Report::Canceled(c) if c.reason == CancelReason::SelfTrade.to_wire() => {
                    Some(c.client_order_id.get())
                }
                _ => None,
            })
            .collect();
        assert_eq!(canceled, [1, 6, 2, 3, 4]);
        assert_eq!(bid_prices(&s), Vec::<i64>::new());
        assert_eq!(s.levels_used, 0);
    }

    #[test]
    fn cancel_session_walks_window_and_far_levels_best_first() {
        let mut s = shard(4);
        for (id, price) in [(1, 500), (2, 7), (3, 502), (4, 3), (5, 501)] {
            rest(&mut s, id, price);
        }
        let out = run(&mut s, Op::CancelSession);
        let ids: Vec<u64> = out
            .iter()
            .map(|(_, r)| match r {
                Report::Canceled(c) => c.client_order_id.get(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, [3, 5, 1, 2, 4]);
        assert_eq!(s.live, 0);
    }

    fn run_as(shard: &mut Shard, session: u64, account: u64, op: Op) -> Vec<(SessionId, Report)> {
        let mut out = Vec::new();
        let cmd = Command {
            session: SessionId::from_raw(session),
            account,
            op,
        };
        shard.process(&cmd, 0, &mut out);
        shard.check_invariants().unwrap();
        out
    }

    /// Sessions 11 and 12 (accounts 1 and 2) rest asks at 100 and 101 and
    /// session 11 a bid at 90, all on symbol 0.
    fn two_sessions_resting(s: &mut Shard) {
        let sell = |id, price, qty| Op::New(NewOrder::limit(id, 0, Side::Sell, price, qty));
        assert_eq!(run_as(s, 11, 1, sell(1, 100, 2)).len(), 1);
        assert_eq!(run_as(s, 12, 2, sell(2, 101, 3)).len(), 1);
        let bid = Op::New(NewOrder::limit(3, 0, Side::Buy, 90, 1));
        assert_eq!(run_as(s, 11, 1, bid).len(), 1);
    }

    #[test]
    fn detached_orders_report_to_no_session_and_can_still_be_queried() {
        let mut s = shard(WINDOW_TICKS);
        two_sessions_resting(&mut s);
        let md_seq = s.md_seq(0);
        let out = run_as(&mut s, SessionId::NONE.get(), 0, Op::DetachSessions);
        assert_eq!(out, []);
        assert_eq!(s.md_seq(0), md_seq, "no market data");
        assert_eq!(s.live_orders(), 3);
        for (account, id) in [(1, 1), (2, 2), (1, 3)] {
            assert_eq!(
                s.order(account, id).map(|o| o.owner_session),
                Some(SessionId::NONE),
                "order {id}"
            );
        }
        // OrderQuery finds a detached order (answered to the asking session).
        let out = run_as(&mut s, 21, 1, Op::Query(OrderQuery::new(1, 0)));
        match out.as_slice() {
            [(to, Report::Status(st))] => {
                assert_eq!(*to, SessionId::from_raw(21));
                assert_eq!(st.state, OrderState::Live.to_wire());
                assert_eq!(st.leaves_quantity.get(), 2);
            }
            other => panic!("{other:?}"),
        }
        // A third session's buy takes both asks: maker reports to no one.
        let out = run_as(
            &mut s,
            13,
            3,
            Op::New(NewOrder::limit(9, 0, Side::Buy, 101, 5)),
        );
        let mut makers = 0;
        let mut takers = 0;
        for (to, report) in &out {
            match report {
                Report::Fill(f) if f.liquidity == wire::Liquidity::Maker.to_wire() => {
                    assert_eq!(*to, SessionId::NONE);
                    makers += 1;
                }
                Report::Fill(_) | Report::Accepted(_) => {
                    assert_eq!(*to, SessionId::from_raw(13));
                    takers += usize::from(matches!(report, Report::Fill(_)));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((makers, takers), (2, 2));
        assert_eq!(s.order(1, 1), None);
        assert_eq!(s.order(2, 2), None);
        assert_eq!(s.live_orders(), 1);
    }

    #[test]
    fn cancel_session_of_an_old_session_spares_detached_orders() {
        let mut s = shard(WINDOW_TICKS);
        two_sessions_resting(&mut s);
        run_as(&mut s, SessionId::NONE.get(), 0, Op::DetachSessions);
        for (session, account) in [(11, 1), (12, 2)] {
            assert_eq!(run_as(&mut s, session, account, Op::CancelSession), []);
        }
        assert_eq!(s.live_orders(), 3);
        // A replace makes the replacing session the owner again.
        let out = run_as(&mut s, 31, 1, Op::Replace(Replace::new(3, 0, 91, 1)));
        assert!(matches!(out.as_slice(), [(to, Report::Replaced(_))] if to.get() == 31));
        assert_eq!(
            s.order(1, 3).unwrap().owner_session,
            SessionId::from_raw(31)
        );
        let out = run_as(&mut s, 31, 1, Op::CancelSession);
        assert!(matches!(out.as_slice(), [(to, Report::Canceled(_))] if to.get() == 31));
        assert_eq!(s.live_orders(), 2);
    }

    #[test]
    fn detach_sessions_is_in_the_digest_and_the_snapshot() {
        let cfg = ShardConfig {
            orders_max: 8,
            levels_per_side_max: 8,
            ..ShardConfig::default()
        };
        // Nothing rests: nothing changes.
        let mut empty = Shard::new(0, 1, 1, cfg);
        let before = empty.state_digest();
        run_as(&mut empty, 0, 0, Op::DetachSessions);
        assert_eq!(empty.state_digest(), before);

        let mut a = Shard::new(0, 1, 1, cfg);
        let mut b = Shard::new(0, 1, 1, cfg);
        two_sessions_resting(&mut a);
        two_sessions_resting(&mut b);
        let before = a.state_digest();
        run_as(&mut a, 0, 0, Op::DetachSessions);
        run_as(&mut b, 0, 0, Op::DetachSessions);
        let after = a.state_digest();
        assert_ne!(after, before);
        assert_eq!(b.state_digest(), after);
        // Again: nothing left to detach.
        run_as(&mut a, 0, 0, Op::DetachSessions);
        assert_eq!(a.state_digest(), after);

        let mut bytes = Vec::new();
        assert_eq!(a.write_snapshot(&mut bytes), after);
        let restored = Shard::from_snapshot(&bytes, cfg).unwrap();
        restored.check_invariants().unwrap();
        assert_eq!(restored.state_digest(), after);
        assert_eq!(restored.order(2, 2).unwrap().owner_session, SessionId::NONE);
    }

    #[test]
    fn the_index_grows_with_live_orders_and_keeps_them_reachable() {
        let cfg = ShardConfig {
            orders_max: 1_000,
            ..ShardConfig::default()
        };
        let mut s = Shard::new(0, 1, 1, cfg);
        assert_eq!(s.index.in_use(), 16);
        for id in 0..600 {
            rest(&mut s, id, 1 + (id as i64 % 50));
        }
        assert_eq!(s.index.in_use(), 2048);
        for id in (0..600).step_by(3) {
            assert_eq!(run(&mut s, Op::Cancel(Cancel::new(id, 0))).len(), 1);
        }
        for id in 0..600 {
            assert_eq!(s.order(1, id).is_some(), id % 3 != 0, "order {id}");
        }
    }
}
