//! The matching core: one price-time priority limit order book per symbol,
//! grouped into shards. No I/O, no clock reads, no threads: commands and the
//! current time go in, reports come out through a [`Sink`]. The same
//! sequence of commands (and times) always gives the same reports and the
//! same [`Matcher::state_digest`].
//!
//! Symbols are placed on shards by `symbol % shard_count`; a shard owns the
//! books of its symbols and is driven by exactly one thread.
//!
//! # The rules ([`Shard`])
//!
//! These are the order semantics of the product; `wire/PROTOCOL.md`
//! describes the same rules from the client's side.
//!
//! **Books.** One limit order book per symbol with price-time priority:
//! prices are `i64` ticks, quantities `u64`. A trade happens at the resting
//! (maker's) price. An order is identified by (account, client order id);
//! that key is unique among the live orders of a shard. Any session of the
//! account may cancel, replace or query it. Reports about an order go to its
//! *owner session*: the session that entered it, or the last one that
//! replaced it.
//!
//! **Ids.** Accepted orders get `order_id = (shard_index << 48) | n` with a
//! per-shard sequence `n` from 1 (rejected orders consume none); trades get
//! `trade_id = (shard_index << 48) | m` likewise (both sequences wrap after
//! 2^48). A replace keeps the order id.
//!
//! **New order validation**, in this order; the first failure is a
//! `Rejected(reason, request_kind = NewOrder)` and the only report (except
//! for rule 9, where the existing order's status follows it):
//!
//! 1. symbol not in this shard (or `>= symbol_count`): `UnknownSymbol`;
//! 2. the account is blocked by an operator's kill switch (see **Kill
//!    switch**): `AccountBlocked`;
//! 3. enum fields or flags that do not decode ([`NewOrder::fields`]):
//!    mapped by [`reject_reason_for`];
//! 4. quantity 0 or above `quantity_max`: `InvalidQuantity`;
//! 5. limit order with price below 1 or above `price_max`: `InvalidPrice`
//!    (a market order's price field is ignored);
//! 6. market order with GTC: `InvalidTimeInForce`;
//! 7. post-only market order: `InvalidFlags`;
//! 8. post-only with IOC or FOK: `InvalidTimeInForce`;
//! 9. (account, client order id) live in this shard, or remembered in its
//!    history of terminated orders (see **History**):
//!    `DuplicateClientOrderId`, then an `OrderStatus` of the existing order
//!    to the same session, as a Query on that order's symbol would answer
//!    (so the status may name another symbol than the reject);
//! 10. an order that can rest (limit GTC, post-only included) when the shard
//!     already holds `orders_max` live orders: `BookFull`;
//! 11. such an order when its account already holds
//!     [`ShardConfig::account_orders_max`] live orders in the shard, or
//!     [`ShardConfig::account_symbol_orders_max`] in this symbol's book:
//!     `TooManyOpenOrders`;
//! 12. such an order whose price has no level on its side while that side
//!     has `levels_per_side_max` levels: `PriceLevelsFull`;
//! 13. post-only whose price reaches the best opposite price (it would
//!     trade, whoever's order rests there): `PostOnlyWouldTake`;
//! 14. market order while the opposite side is empty: `NoLiquidity`.
//!
//! Checks 10 to 12 are made before anything happens, as if the whole order
//! would rest, so a reject never follows fills: a GTC order on a full shard
//! (or a full side, or an account at its cap) is refused even if it would
//! have filled completely. IOC, FOK and market orders never rest and are
//! never refused for capacity.
//!
//! Rule 11 is what keeps one account from filling a shard for the others:
//! with `account_orders_max` below `orders_max` (the server's default is a
//! quarter of it, see `--max-open-orders-per-account`), the shard always
//! has room left for other accounts' orders. A replace never changes how
//! many orders an account holds, so it is never refused for the caps.
//!
//! **Accepted orders.** An accepted order gets `Accepted` (with
//! `timestamp_ns = now_ns`) first, then matches against the opposite side,
//! best price first and oldest first within a price. Each trade produces
//! two Fills with the same `trade_id`: first the maker's (liquidity Maker,
//! to the resting order's owner session), then the taker's (liquidity Taker,
//! to the incoming order's session). A Fill's `leaves_quantity` is the
//! order's open quantity after it; 0 means filled, which is terminal.
//! After matching, the remainder of:
//!
//! - a GTC limit order rests at the back of its price level (no report: its
//!   last Fill, or the Accepted, already says how much is open);
//! - an IOC limit order: `Canceled(IocRemainder)`;
//! - a market order (IOC or FOK, never GTC): it trades only within
//!   `market_band_ticks` of the best opposite price at arrival (a buy up to
//!   best ask + band, a sell down to best bid - band); the remainder gets
//!   `Canceled(PriceBand)` if the opposite side still has liquidity (beyond
//!   the band), else `Canceled(IocRemainder)`;
//! - a FOK order: before trading anything it walks the book exactly as
//!   matching would (self-trade prevention included); if it could not fill
//!   completely it gets `Canceled(FokUnfilled)` right after its Accepted,
//!   with no fills and the book unchanged.
//!
//! **Self-trade prevention**, when the incoming order meets a resting order
//! of the same account, by the incoming order's mode:
//!
//! - `CancelIncoming`: matching stops, the incoming remainder gets
//!   `Canceled(SelfTrade)` (even a GTC: it does not rest), the resting
//!   order stays;
//! - `CancelResting`: the resting order gets `Canceled(SelfTrade)` (to its
//!   owner session) and matching continues;
//! - `CancelBoth`: the resting order's `Canceled(SelfTrade)`, then the
//!   incoming remainder's.
//!
//! **Cancel**: `Canceled(Requested, canceled_quantity = open quantity)` to
//! the requesting session. Unknown symbol: `Rejected(UnknownSymbol)`; a key
//! that is not live in that symbol: `Rejected(UnknownOrder)` (request_kind
//! Cancel).
//!
//! **Replace** (new price, new open quantity), checked in this order, each
//! a `Rejected(reason, request_kind = Replace)` with the order unchanged:
//! unknown symbol; quantity 0 or above `quantity_max` (`InvalidQuantity`);
//! price below 1 or above `price_max` (`InvalidPrice`); key not live in that
//! symbol (`UnknownOrder`). Then:
//!
//! - same price and a quantity at or below the open quantity: updated in
//!   place, time priority kept, `Replaced(priority_kept)`;
//! - otherwise the order loses priority. If its new price needs a level its
//!   side has no room for (counting the level it leaves, if it was alone
//!   there): `Rejected(PriceLevelsFull)`. If it is post-only and the new
//!   price reaches the best opposite price: `Rejected(PostOnlyWouldTake)`.
//!   Else it leaves its level, gets `Replaced` (not priority kept), and
//!   enters at the new price as an incoming order with its own
//!   self-trade prevention mode: Fills follow the Replaced, and the
//!   remainder rests at the back of its new level.
//!
//! The replacing session becomes the owner session. `filled_quantity`
//! (see Query) counts fills over the order's whole life.
//!
//! **Query**: `OrderStatus(Live, filled_quantity, leaves_quantity, order_id)`
//! for a live order of that symbol; `OrderStatus(Filled or Canceled,
//! filled_quantity, 0, order_id)` for a terminated order of that symbol
//! still in the history; else `OrderStatus(Unknown)` with zeros. Unknown
//! symbol: `Rejected(UnknownSymbol, request_kind = OrderQuery)`.
//!
//! **History**: every accepted order that terminates (a Fill with
//! `leaves_quantity` 0: `Filled`; a Canceled, for any reason: `Canceled`)
//! is remembered with its account, client order id, order id, symbol and
//! lifetime filled quantity, in the order of the terminal reports, in a
//! ring of [`ShardConfig::history_max`] entries; when it is full the
//! oldest is forgotten, and then its key may be used again. A rejected
//! NewOrder is not remembered (it never had an order id). The history is
//! part of the shard's state (digest, snapshots), so duplicates are found
//! across restarts.
//!
//! **Cancel session** ([`Op::CancelSession`]): every live order whose owner
//! session is the command's session gets `Canceled(Disconnect)`, in this
//! order: books by symbol, bids then asks, best price first, front of the
//! level first.
//!
//! **Detach sessions** ([`Op::DetachSessions`]): the first command a new
//! owner of the shard journals after a failover, since the resting orders
//! name sessions of the old owner (session ids are not unique across
//! nodes). Every live order's owner session becomes [`SessionId::NONE`],
//! which no connection has, so its later reports (fills as a maker,
//! self-trade and kill-switch cancels) reach no one; its client finds it
//! with Query (and may cancel or replace it, which makes the requesting
//! session its owner again). A [`Op::CancelSession`] of an old session
//! then cancels none of them. It changes only the owner sessions (part of
//! the state: digest, snapshots, replay) and produces no report and no
//! market data: the one change of an order's state without a report.
//!
//! **Mass cancel** ([`Op::MassCancel`]): every live order of the command's
//! account on `symbol` (on every symbol of the shard for
//! [`MASS_CANCEL_ALL_SYMBOLS`]) gets `Canceled(Requested)`, to the
//! requesting session as a Cancel's would, in the order of cancel session.
//! A symbol this shard does not own gives no report (the server checks the
//! symbol against its directory before routing).
//!
//! **Kill switch** ([`Op::KillAccount`], [`Op::UnblockAccount`]): a kill
//! cancels every live order of the command's account, `Canceled(Killed)`
//! to each order's owner session, in the order of cancel session, and
//! blocks the account: its NewOrders get `AccountBlocked` (rule 2) until an
//! unblock. Cancel, Replace and Query of a blocked account work as usual
//! (it has no live orders to replace). Kill and unblock send nothing to
//! the command's session. The blocked accounts are part of the shard's
//! state (digest, snapshots, replay).
//!
//! Every order ends in exactly one terminal report: a NewOrder's Rejected, a
//! Fill with `leaves_quantity` 0, or a Canceled. Every change of an order's
//! state produces a report, but detach sessions' change of owner session.
//!
//! The session layer adds one rule before routing ([`ClientOrderIds`]):
//! within a session, NewOrder client order ids strictly increase.
//!
//! **Market data** (a by-product, through [`Sink::market`] and
//! [`Sink::top`]): every change of a price level's total quantity or order
//! count is a [`MdEvent::Level`] with the level's new state, and every trade
//! a [`MdEvent::Trade`], each stamped with the next number of its symbol's
//! sequence (from 1; part of the state: digest, snapshots, replay). A trade
//! is followed by the update of the maker's level. After a command that
//! produced events for a symbol, a sink that [`Sink::wants_top`] for it gets
//! the symbol's best levels.

use wire::{
    Accepted, Cancel, Canceled, Fill, NewOrder, OrderQuery, OrderStatus, Rejected, Replace,
    Replaced,
};

mod accounts;
mod history;
mod ids;
mod index;
mod null;
mod seen;
mod shard;
mod side;
pub mod workload;

pub use history::{FinishedOrder, HISTORY_MAX_LIMIT};
pub use ids::ClientOrderIds;
pub use null::NullShard;
pub use shard::{
    BOOKS_PER_SHARD_LIMIT, ConfigError, ID_SHARD_SHIFT, LevelView, ORDERS_MAX_LIMIT, OrderView,
    SHARD_INDEX_LIMIT, SNAPSHOT_FORMAT_VERSION, Shard, SnapshotError,
};

pub use crate::session_id::SessionId;

/// The shard that owns `symbol` when there are `shard_count` shards.
#[inline]
pub const fn shard_of(symbol: u32, shard_count: u32) -> u32 {
    symbol % shard_count
}

/// One input to a shard: who sent it and what it asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// The session that sent it; its reports go there.
    pub session: SessionId,
    /// The session's account: orders are identified by (account, client order id)
    /// and self-trade prevention compares accounts.
    pub account: u64,
    /// The request.
    pub op: Op,
}

/// What a command asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Enter a new order.
    New(NewOrder),
    /// Cancel a live order of the account.
    Cancel(Cancel),
    /// Change a live order of the account.
    Replace(Replace),
    /// Ask for an order's state.
    Query(OrderQuery),
    /// The session disconnected with cancel-on-disconnect: cancel every live
    /// order it owns in this shard (reason `Disconnect`). Produces no report
    /// for the closed session other than these cancels.
    CancelSession,
    /// Cancel every live order of the account on `symbol`, or on every
    /// symbol of the shard for [`MASS_CANCEL_ALL_SYMBOLS`] (reason
    /// `Requested`, reports to the command's session).
    MassCancel {
        /// The symbol, or [`MASS_CANCEL_ALL_SYMBOLS`].
        symbol: u32,
    },
    /// An operator's kill switch: cancel every live order of the account
    /// (reason `Killed`, reports to each order's owner session) and refuse
    /// its new orders (`AccountBlocked`) until [`Op::UnblockAccount`].
    KillAccount,
    /// Lift the block of [`Op::KillAccount`]. No report.
    UnblockAccount,
    /// A shard changed owner: every live order's owner session becomes
    /// `SessionId::NONE`, so that later reports of those orders (fills as a
    /// maker, kill-switch cancels) go to no connection; clients find them
    /// with OrderQuery. No report.
    DetachSessions,
}

/// [`Op::MassCancel`]'s symbol for "every symbol".
pub const MASS_CANCEL_ALL_SYMBOLS: u32 = u32::MAX;

/// One report for one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// Order accepted.
    Accepted(Accepted),
    /// Request rejected.
    Rejected(Rejected),
    /// Fill (maker or taker side).
    Fill(Fill),
    /// Order canceled.
    Canceled(Canceled),
    /// Replace took effect.
    Replaced(Replaced),
    /// Answer to a query.
    Status(OrderStatus),
}

/// A market-data event of one book, in sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MdEvent {
    /// A price level's new state (`quantity` 0 and `orders` 0: gone).
    Level {
        symbol: u32,
        seq: u64,
        side: wire::Side,
        price: i64,
        quantity: u64,
        orders: u32,
    },
    /// A trade at the maker's price.
    Trade {
        symbol: u32,
        seq: u64,
        aggressor: wire::Side,
        trade_id: u64,
        price: i64,
        quantity: u64,
    },
}

impl MdEvent {
    /// The event's symbol.
    #[inline]
    pub fn symbol(&self) -> u32 {
        match *self {
            MdEvent::Level { symbol, .. } | MdEvent::Trade { symbol, .. } => symbol,
        }
    }

    /// The event's sequence number.
    #[inline]
    pub fn seq(&self) -> u64 {
        match *self {
            MdEvent::Level { seq, .. } | MdEvent::Trade { seq, .. } => seq,
        }
    }
}

/// Where a shard writes its reports. Implemented by the server's router
/// (which encodes local sessions' reports straight into their send buffers
/// and pushes the rest onto the ring to their core) and by `Vec` for tests.
pub trait Sink {
    /// Delivers one report to `session`.
    fn emit(&mut self, session: SessionId, report: Report);

    /// A market-data event (ignored unless the sink wants market data).
    #[inline]
    fn market(&mut self, _event: MdEvent) {}

    /// True when the sink wants [`Sink::top`] after commands that change
    /// `symbol`'s book.
    #[inline]
    fn wants_top(&self, _symbol: u32) -> bool {
        false
    }

    /// The best levels of `symbol` after a command that changed its book,
    /// as of sequence number `seq`.
    #[inline]
    fn top(&mut self, _symbol: u32, _seq: u64, _bid: wire::TopLevel, _ask: wire::TopLevel) {}
}

impl Sink for Vec<(SessionId, Report)> {
    #[inline]
    fn emit(&mut self, session: SessionId, report: Report) {
        self.push((session, report));
    }
}

/// A sink that records everything, market data included (tests, tools).
#[derive(Debug, Default)]
pub struct Recorder {
    /// Reports in order.
    pub reports: Vec<(SessionId, Report)>,
    /// Market-data events in order.
    pub events: Vec<MdEvent>,
    /// Tops in order: (symbol, seq, bid, ask).
    pub tops: Vec<(u32, u64, wire::TopLevel, wire::TopLevel)>,
}

impl Sink for Recorder {
    fn emit(&mut self, session: SessionId, report: Report) {
        self.reports.push((session, report));
    }

    fn market(&mut self, event: MdEvent) {
        self.events.push(event);
    }

    fn wants_top(&self, _symbol: u32) -> bool {
        true
    }

    fn top(&mut self, symbol: u32, seq: u64, bid: wire::TopLevel, ask: wire::TopLevel) {
        self.tops.push((symbol, seq, bid, ask));
    }
}

/// Capacities and limits of a shard. Everything is bounded; exceeding a
/// bound is a reject with a reason, never a panic or unbounded growth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardConfig {
    /// Most live (resting) orders across all books of the shard. Storage
    /// for this many orders is allocated up front.
    pub orders_max: u32,
    /// Most price levels on one side of one book.
    pub levels_per_side_max: u32,
    /// Largest accepted order quantity (keeps level totals far from overflow).
    pub quantity_max: u64,
    /// Largest accepted limit price in ticks (prices must be >= 1).
    pub price_max: i64,
    /// Protective band for market orders: a market buy trades no higher than
    /// the best ask at arrival plus this many ticks (a sell no lower than the
    /// best bid minus it); the remainder is canceled with reason `PriceBand`.
    pub market_band_ticks: i64,
    /// Most terminated orders the shard remembers, for OrderQuery and for
    /// refusing a client order id again after its order ended (also across
    /// restarts: the history is in snapshots and rebuilt by replay); the
    /// oldest is forgotten first. 0 remembers nothing. Costs 56 to 72
    /// bytes per entry once the ring has filled (56 MiB for 2^20), mapped
    /// lazily; at most [`HISTORY_MAX_LIMIT`].
    pub history_max: u32,
    /// Most live orders one account may hold in the shard (rule 11); at
    /// least 1. A value at or above `orders_max` (the default, `u32::MAX`)
    /// caps nothing beyond the shard's own capacity and costs nothing.
    pub account_orders_max: u32,
    /// Most live orders one account may hold in one symbol's book (rule
    /// 11); at least 1. At or above `account_orders_max` (the default,
    /// `u32::MAX`) it caps nothing and costs nothing.
    pub account_symbol_orders_max: u32,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            orders_max: 1 << 20,
            levels_per_side_max: 1 << 14,
            quantity_max: wire::QUANTITY_MAX_LOTS,
            price_max: wire::PRICE_MAX_TICKS,
            market_band_ticks: 1_000,
            history_max: 1 << 20,
            account_orders_max: u32::MAX,
            account_symbol_orders_max: u32::MAX,
        }
    }
}

/// What the server needs from a shard's engine (the matching [`Shard`] or
/// the transport-only [`NullShard`]).
pub trait Matcher {
    /// Applies one command at engine time `now_ns`, writing its reports to `sink`.
    fn process<S: Sink>(&mut self, cmd: &Command, now_ns: u64, sink: &mut S);

    /// Applies a batch of commands in order.
    #[inline]
    fn process_batch<S: Sink>(&mut self, cmds: &[Command], now_ns: u64, sink: &mut S) {
        for cmd in cmds {
            self.process(cmd, now_ns, sink);
        }
    }

    /// A digest of the shard's whole state (books, orders, id counters,
    /// the history of terminated orders).
    /// Equal inputs give equal digests; it walks the books, so call it for
    /// checks and replay, not per order.
    fn state_digest(&self) -> u64;

    /// Number of live (resting) orders.
    fn live_orders(&self) -> usize;

    /// The market-data sequence number of `symbol`: how many events its
    /// book has produced (0 for a symbol not here, or an engine without books).
    fn md_seq(&self, _symbol: u32) -> u64 {
        0
    }

    /// The price levels of one side of `symbol`, best first.
    fn md_levels(&self, _symbol: u32, _side: wire::Side) -> impl Iterator<Item = LevelView> + '_ {
        core::iter::empty()
    }
}

/// The reject reason for a new order whose enum fields do not decode.
pub fn reject_reason_for(e: &wire::DecodeError) -> wire::RejectReason {
    use wire::{DecodeError, RejectReason};
    match e {
        DecodeError::InvalidEnum { field: "side", .. } => RejectReason::InvalidSide,
        DecodeError::InvalidEnum {
            field: "order_type",
            ..
        } => RejectReason::InvalidOrderType,
        DecodeError::InvalidEnum {
            field: "time_in_force",
            ..
        } => RejectReason::InvalidTimeInForce,
        _ => RejectReason::InvalidFlags,
    }
}
