//! The matching core: one price-time priority limit order book per symbol,
//! grouped into shards. No I/O, no clock reads, no threads: commands and the
//! current time go in, reports come out through a [`Sink`]. The same
//! sequence of commands (and times) always gives the same reports and the
//! same [`Matcher::state_digest`].
//!
//! Symbols are placed on shards by `symbol % shard_count`; a shard owns the
//! books of its symbols and is driven by exactly one thread.

use wire::{
    Accepted, Cancel, Canceled, Fill, NewOrder, OrderQuery, OrderStatus, Rejected, Replace,
    Replaced,
};

mod null;

pub use null::NullShard;

/// The server's id for a session (a connection after its Hello). The top 16
/// bits name the core that owns the session, so a report can be routed home
/// from the id alone; see [`session_core`].
pub type SessionId = u64;

/// Bits of a [`SessionId`] below the owning core's index.
pub const SESSION_CORE_SHIFT: u32 = 48;

/// Builds a session id from the owning core's index and a per-core sequence.
#[inline]
pub const fn session_id(core_index: u16, sequence: u64) -> SessionId {
    ((core_index as u64) << SESSION_CORE_SHIFT) | (sequence & ((1 << SESSION_CORE_SHIFT) - 1))
}

/// The index (into the server's core list) of the core that owns a session.
#[inline]
pub const fn session_core(session: SessionId) -> usize {
    (session >> SESSION_CORE_SHIFT) as usize
}

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
}

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

/// Where a shard writes its reports. Implemented by the server's router
/// (which encodes local sessions' reports straight into their send buffers
/// and pushes the rest onto the ring to their core) and by `Vec` for tests.
pub trait Sink {
    /// Delivers one report to `session`.
    fn emit(&mut self, session: SessionId, report: Report);
}

impl Sink for Vec<(SessionId, Report)> {
    #[inline]
    fn emit(&mut self, session: SessionId, report: Report) {
        self.push((session, report));
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
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            orders_max: 1 << 20,
            levels_per_side_max: 1 << 14,
            quantity_max: 1 << 40,
            price_max: 1 << 52,
            market_band_ticks: 1_000,
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

    /// A digest of the shard's whole state (books, orders, id counters).
    /// Equal inputs give equal digests; it walks the books, so call it for
    /// checks and replay, not per order.
    fn state_digest(&self) -> u64;

    /// Number of live (resting) orders.
    fn live_orders(&self) -> usize;
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
