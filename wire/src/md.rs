//! Market data (protocol version 2): public trades, top of book and full
//! depth by price level, each stamped with its symbol's sequence number and
//! the engine time. PROTOCOL.md §8.9 gives the rules (sequencing, snapshots,
//! the checksum, cut-off); this module gives the layouts and the checksum.
//!
//! A symbol's sequence counts its *book events*: every [`MdTrade`] and every
//! [`MdDepth`] update takes the next number (gap-free, from 1, across
//! restarts). A depth subscription receives both, so it sees every number;
//! [`MdTopOfBook`], snapshot rows and [`MdStatus`] carry the number they
//! reflect without taking one.

use zerocopy::little_endian::{I64, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::DecodeError;
use crate::frame::Kind;
use crate::msg::Message;
use crate::types::{MdStatusEvent, Side};

/// `Subscribe.flags` bit 0: public trades.
pub const SUBSCRIBE_TRADES: u32 = 1;
/// `Subscribe.flags` bit 1: top of book.
pub const SUBSCRIBE_TOP_OF_BOOK: u32 = 1 << 1;
/// `Subscribe.flags` bit 2: full depth by price level (a snapshot, then
/// every level update and every trade: the whole sequence).
pub const SUBSCRIBE_DEPTH: u32 = 1 << 2;
/// `Subscribe.flags` bit 3: conflate top of book (at most one per symbol
/// per server loop iteration, the latest).
pub const SUBSCRIBE_CONFLATE: u32 = 1 << 3;
/// Every `Subscribe.flags` bit version 2 defines.
pub const SUBSCRIBE_FLAGS_KNOWN: u32 =
    SUBSCRIBE_TRADES | SUBSCRIBE_TOP_OF_BOOK | SUBSCRIBE_DEPTH | SUBSCRIBE_CONFLATE;
/// `Subscribe.symbol` for every symbol.
pub const ALL_SYMBOLS: u32 = u32::MAX;
/// `MdDepth.flags` bit 0: a row of a snapshot (not an update).
pub const MD_DEPTH_SNAPSHOT: u8 = 1;
/// Levels per side the book checksum covers.
pub const CHECKSUM_LEVELS: usize = 10;

macro_rules! md_message {
    ($name:ident, $kind:ident, $bytes:literal) => {
        impl Message for $name {
            const KIND: Kind = Kind::$kind;
        }
        const _: () = assert!(core::mem::size_of::<$name>() == $bytes);
    };
}

/// A public trade (48 bytes).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct MdTrade {
    /// Symbol id.
    pub symbol: U32,
    /// [`Side`] of the taker.
    pub aggressor_side: u8,
    /// Reserved, zero.
    pub reserved: [u8; 3],
    /// The symbol's sequence number of this event.
    pub seq: U64,
    /// Engine time of the trade, ns.
    pub engine_ns: U64,
    /// Trade id (as in the two Fills).
    pub trade_id: U64,
    /// Price in ticks (the maker's).
    pub price: I64,
    /// Quantity.
    pub quantity: U64,
}
md_message!(MdTrade, MdTrade, 48);

/// Best bid and ask after a change (64 bytes). Price 0 with quantity 0 and
/// 0 orders: that side is empty.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct MdTopOfBook {
    /// Symbol id.
    pub symbol: U32,
    /// Reserved, zero.
    pub reserved: U32,
    /// The symbol's sequence number this state reflects.
    pub seq: U64,
    /// Engine time, ns.
    pub engine_ns: U64,
    /// Best bid price.
    pub bid_price: I64,
    /// Quantity at the best bid.
    pub bid_quantity: U64,
    /// Best ask price.
    pub ask_price: I64,
    /// Quantity at the best ask.
    pub ask_quantity: U64,
    /// Orders at the best bid.
    pub bid_orders: U32,
    /// Orders at the best ask.
    pub ask_orders: U32,
}
md_message!(MdTopOfBook, MdTopOfBook, 64);

/// One price level (48 bytes): an update (the level's new state; quantity
/// 0 removes it) or, with [`MD_DEPTH_SNAPSHOT`], a snapshot row.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct MdDepth {
    /// Symbol id.
    pub symbol: U32,
    /// [`Side`] of the level.
    pub side: u8,
    /// Bit 0 ([`MD_DEPTH_SNAPSHOT`]): a snapshot row.
    pub flags: u8,
    /// Reserved, zero.
    pub reserved: [u8; 2],
    /// An update: its sequence number. A snapshot row: the snapshot's.
    pub seq: U64,
    /// Engine time, ns.
    pub engine_ns: U64,
    /// Price in ticks.
    pub price: I64,
    /// Total open quantity at the level (0: the level is gone).
    pub quantity: U64,
    /// Orders at the level.
    pub orders: U32,
    /// Reserved, zero.
    pub reserved2: U32,
}
md_message!(MdDepth, MdDepth, 48);

/// A market-data session event (32 bytes): see [`MdStatusEvent`].
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct MdStatus {
    /// Symbol id ([`ALL_SYMBOLS`] for a cut-off).
    pub symbol: U32,
    /// [`MdStatusEvent`].
    pub event: u8,
    /// Reserved, zero.
    pub reserved: [u8; 3],
    /// The symbol's sequence number the event reflects.
    pub seq: U64,
    /// Engine time, ns.
    pub engine_ns: U64,
    /// `Checksum` and `SnapshotEnd`: the book checksum as of `seq`.
    pub checksum: U32,
    /// `Subscribed` and `SnapshotEnd`: snapshot rows (0 without depth).
    pub levels: U32,
}
md_message!(MdStatus, MdStatus, 32);

impl MdTrade {
    /// Builds a trade.
    pub fn new(
        symbol: u32,
        aggressor: Side,
        seq: u64,
        engine_ns: u64,
        trade_id: u64,
        price: i64,
        quantity: u64,
    ) -> Self {
        MdTrade {
            symbol: U32::new(symbol),
            aggressor_side: aggressor.to_wire(),
            reserved: [0; 3],
            seq: U64::new(seq),
            engine_ns: U64::new(engine_ns),
            trade_id: U64::new(trade_id),
            price: I64::new(price),
            quantity: U64::new(quantity),
        }
    }
}

/// One side's best level in a [`MdTopOfBook`]: (price, quantity, orders),
/// all zero for an empty side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TopLevel {
    /// Price in ticks.
    pub price: i64,
    /// Total quantity.
    pub quantity: u64,
    /// Orders.
    pub orders: u32,
}

impl MdTopOfBook {
    /// Builds a top of book.
    pub fn new(symbol: u32, seq: u64, engine_ns: u64, bid: TopLevel, ask: TopLevel) -> Self {
        MdTopOfBook {
            symbol: U32::new(symbol),
            reserved: U32::new(0),
            seq: U64::new(seq),
            engine_ns: U64::new(engine_ns),
            bid_price: I64::new(bid.price),
            bid_quantity: U64::new(bid.quantity),
            ask_price: I64::new(ask.price),
            ask_quantity: U64::new(ask.quantity),
            bid_orders: U32::new(bid.orders),
            ask_orders: U32::new(ask.orders),
        }
    }

    /// The best bid.
    pub fn bid(&self) -> TopLevel {
        TopLevel {
            price: self.bid_price.get(),
            quantity: self.bid_quantity.get(),
            orders: self.bid_orders.get(),
        }
    }

    /// The best ask.
    pub fn ask(&self) -> TopLevel {
        TopLevel {
            price: self.ask_price.get(),
            quantity: self.ask_quantity.get(),
            orders: self.ask_orders.get(),
        }
    }
}

impl MdDepth {
    /// Builds a level update (or, with `snapshot`, a snapshot row).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        symbol: u32,
        side: Side,
        snapshot: bool,
        seq: u64,
        engine_ns: u64,
        price: i64,
        quantity: u64,
        orders: u32,
    ) -> Self {
        MdDepth {
            symbol: U32::new(symbol),
            side: side.to_wire(),
            flags: if snapshot { MD_DEPTH_SNAPSHOT } else { 0 },
            reserved: [0; 2],
            seq: U64::new(seq),
            engine_ns: U64::new(engine_ns),
            price: I64::new(price),
            quantity: U64::new(quantity),
            orders: U32::new(orders),
            reserved2: U32::new(0),
        }
    }

    /// True for a snapshot row.
    pub fn is_snapshot(&self) -> bool {
        self.flags & MD_DEPTH_SNAPSHOT != 0
    }

    /// The level's side.
    pub fn side(&self) -> Result<Side, DecodeError> {
        Side::from_wire(self.side)
    }
}

impl MdStatus {
    /// Builds a status event.
    pub fn new(
        symbol: u32,
        event: MdStatusEvent,
        seq: u64,
        engine_ns: u64,
        checksum: u32,
        levels: u32,
    ) -> Self {
        MdStatus {
            symbol: U32::new(symbol),
            event: event.to_wire(),
            reserved: [0; 3],
            seq: U64::new(seq),
            engine_ns: U64::new(engine_ns),
            checksum: U32::new(checksum),
            levels: U32::new(levels),
        }
    }

    /// The event.
    pub fn event(&self) -> Result<MdStatusEvent, DecodeError> {
        MdStatusEvent::from_wire(self.event)
    }
}

/// The book checksum: CRC-32 (IEEE 802.3, the one of zlib's `crc32`) over
/// the best [`CHECKSUM_LEVELS`] asks, best first, then the best
/// [`CHECKSUM_LEVELS`] bids, best first; each level contributes its price
/// (i64) and total quantity (u64), little-endian, 16 bytes. Levels beyond
/// the first ten per side are ignored; an empty book gives 0.
pub fn book_checksum(
    bids_best_first: impl IntoIterator<Item = (i64, u64)>,
    asks_best_first: impl IntoIterator<Item = (i64, u64)>,
) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for (price, quantity) in asks_best_first.into_iter().take(CHECKSUM_LEVELS) {
        h.update(&price.to_le_bytes());
        h.update(&quantity.to_le_bytes());
    }
    for (price, quantity) in bids_best_first.into_iter().take(CHECKSUM_LEVELS) {
        h.update(&price.to_le_bytes());
        h.update(&quantity.to_le_bytes());
    }
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_covers_ten_levels_per_side_asks_first() {
        assert_eq!(book_checksum([], []), 0);
        let bids: Vec<(i64, u64)> = (0..12).map(|i| (100 - i, 5 + i as u64)).collect();
        let asks: Vec<(i64, u64)> = (0..12).map(|i| (101 + i, 7)).collect();
        let full = book_checksum(bids.clone(), asks.clone());
        assert_eq!(
            full,
            book_checksum(bids[..10].to_vec(), asks[..10].to_vec())
        );
        assert_ne!(full, book_checksum(asks.clone(), bids.clone()));
        let mut changed = bids.clone();
        changed[9].1 += 1;
        assert_ne!(full, book_checksum(changed, asks.clone()));
        // The bytes, spelled out: one ask (101, 7), one bid (100, 5).
        let mut bytes = Vec::new();
        for (p, q) in [(101i64, 7u64), (100, 5)] {
            bytes.extend_from_slice(&p.to_le_bytes());
            bytes.extend_from_slice(&q.to_le_bytes());
        }
        assert_eq!(
            book_checksum([(100, 5)], [(101, 7)]),
            crc32fast::hash(&bytes)
        );
    }

    #[test]
    fn status_and_depth_accessors() {
        let s = MdStatus::new(3, MdStatusEvent::Checksum, 9, 1, 0xdead_beef, 0);
        assert_eq!(s.event(), Ok(MdStatusEvent::Checksum));
        let d = MdDepth::new(3, Side::Sell, true, 9, 1, 105, 10, 2);
        assert!(d.is_snapshot());
        assert_eq!(d.side(), Ok(Side::Sell));
        let t = MdTopOfBook::new(
            3,
            9,
            1,
            TopLevel {
                price: 100,
                quantity: 4,
                orders: 1,
            },
            TopLevel::default(),
        );
        assert_eq!(t.bid().price, 100);
        assert_eq!(t.ask(), TopLevel::default());
    }
}
