//! Message layouts. Every message is a fixed-size, byte-aligned struct of
//! little-endian fields, so reading a batch is a cast of the received bytes
//! (`&[u8]` to `&[NewOrder]`), not a parse, and writing one is a copy.
//!
//! Field order puts the 8-byte fields first where that costs nothing, and
//! every reserved byte must be zero so that later versions can give it a
//! meaning. Sizes are checked at compile time below and listed in PROTOCOL.md.

use zerocopy::little_endian::{I64, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::DecodeError;
use crate::frame::Kind;
use crate::types::{
    CancelReason, Liquidity, OrderState, OrderType, RejectReason, SelfTradePrevention,
    SessionErrorCode, Side, TimeInForce,
};

/// A fixed-size message that travels in frames of its own [`Kind`].
pub trait Message: FromBytes + IntoBytes + KnownLayout + Immutable + Unaligned + Copy {
    /// The frame kind that carries this message.
    const KIND: Kind;
    /// The size of one message on the wire.
    const BYTES: usize = core::mem::size_of::<Self>();
}

macro_rules! message {
    ($name:ident, $kind:ident, $bytes:literal) => {
        impl Message for $name {
            const KIND: Kind = Kind::$kind;
        }
        const _: () = assert!(core::mem::size_of::<$name>() == $bytes);
    };
}

/// Copies `text` into a NUL-padded fixed field, truncating at a char boundary.
fn fill_text<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let mut end = text.len().min(N);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out[..end].copy_from_slice(&text.as_bytes()[..end]);
    out
}

/// Reads a NUL-padded text field (invalid UTF-8 is shown lossily by callers).
fn text_of(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// Reserved fields must be zero so that a later version can give them a
/// meaning without old clients sending noise there.
fn check_reserved(field: &'static str, value: u64) -> Result<(), DecodeError> {
    if value != 0 {
        return Err(DecodeError::ReservedBits { field, value });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Client to server
// ---------------------------------------------------------------------------

/// `Hello.flags` bit 0: cancel every live order of this session when it disconnects.
pub const HELLO_CANCEL_ON_DISCONNECT: u16 = 1;
const HELLO_FLAGS_KNOWN: u16 = HELLO_CANCEL_ON_DISCONNECT;

/// Logon: the first frame of every connection (48 bytes).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct Hello {
    /// The protocol version the client speaks.
    pub protocol_version: U16,
    /// Session options; see `HELLO_*` constants.
    pub flags: U16,
    /// How often the client promises to send something; 0 = server default.
    pub heartbeat_interval_ms: U32,
    /// The trading account; self-trade prevention and order ids are per account.
    pub account: U64,
    /// Opaque credentials (a token or password, NUL-padded).
    pub credentials: [u8; 32],
}
message!(Hello, Hello, 48);

impl Hello {
    /// A hello for `account` speaking this crate's protocol version.
    pub fn new(account: u64, flags: u16, heartbeat_interval_ms: u32, credentials: &str) -> Self {
        Hello {
            protocol_version: U16::new(u16::from(crate::frame::PROTOCOL_VERSION)),
            flags: U16::new(flags),
            heartbeat_interval_ms: U32::new(heartbeat_interval_ms),
            account: U64::new(account),
            credentials: fill_text(credentials),
        }
    }

    /// True when the session asked for cancel-on-disconnect.
    pub fn cancel_on_disconnect(&self) -> bool {
        self.flags.get() & HELLO_CANCEL_ON_DISCONNECT != 0
    }

    /// Checks the protocol version (one this crate speaks: 1 or 2; the
    /// session then speaks the client's version) and the reserved flag bits.
    pub fn validate(&self) -> Result<(), DecodeError> {
        let version = self.protocol_version.get();
        let supported = u16::from(crate::frame::PROTOCOL_VERSION_MIN)
            ..=u16::from(crate::frame::PROTOCOL_VERSION);
        if !supported.contains(&version) {
            return Err(DecodeError::UnsupportedVersion {
                // Versions are one byte in every frame header; a larger value
                // is no version anyone speaks, reported as the largest byte.
                version: u8::try_from(version).unwrap_or(u8::MAX),
                supported: crate::frame::PROTOCOL_VERSION,
            });
        }
        let unknown = self.flags.get() & !HELLO_FLAGS_KNOWN;
        if unknown != 0 {
            return Err(DecodeError::ReservedBits {
                field: "hello.flags",
                value: u64::from(unknown),
            });
        }
        Ok(())
    }

    /// The credentials without padding.
    pub fn credentials(&self) -> &[u8] {
        text_of(&self.credentials)
    }
}

/// `NewOrder.flags` bit 0: post-only (rejected rather than take liquidity).
pub const ORDER_POST_ONLY: u8 = 1;
/// `NewOrder.flags` bits 4..=5: self-trade prevention mode.
pub const ORDER_STP_SHIFT: u8 = 4;
const ORDER_STP_MASK: u8 = 0b11 << ORDER_STP_SHIFT;
const ORDER_FLAGS_KNOWN: u8 = ORDER_POST_ONLY | ORDER_STP_MASK;

/// A new order (32 bytes).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct NewOrder {
    /// The client's id for this order; must increase within a session.
    pub client_order_id: U64,
    /// Symbol id from the symbol directory.
    pub symbol: U32,
    /// [`Side`].
    pub side: u8,
    /// [`OrderType`].
    pub order_type: u8,
    /// [`TimeInForce`].
    pub time_in_force: u8,
    /// Bit 0 post-only; bits 4-5 [`SelfTradePrevention`]; others reserved (zero).
    pub flags: u8,
    /// Limit price in ticks (ignored for market orders).
    pub price: I64,
    /// Quantity in lots.
    pub quantity: U64,
}
message!(NewOrder, NewOrder, 32);

/// A [`NewOrder`] with every enum field checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderFields {
    /// Buy or sell.
    pub side: Side,
    /// Limit or market.
    pub order_type: OrderType,
    /// Time in force.
    pub time_in_force: TimeInForce,
    /// Post-only flag.
    pub post_only: bool,
    /// Self-trade prevention mode.
    pub stp: SelfTradePrevention,
}

impl NewOrder {
    /// Builds a new order.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client_order_id: u64,
        symbol: u32,
        side: Side,
        order_type: OrderType,
        time_in_force: TimeInForce,
        post_only: bool,
        stp: SelfTradePrevention,
        price: i64,
        quantity: u64,
    ) -> Self {
        NewOrder {
            client_order_id: U64::new(client_order_id),
            symbol: U32::new(symbol),
            side: side.to_wire(),
            order_type: order_type.to_wire(),
            time_in_force: time_in_force.to_wire(),
            flags: (if post_only { ORDER_POST_ONLY } else { 0 })
                | (stp.to_wire() << ORDER_STP_SHIFT),
            price: I64::new(price),
            quantity: U64::new(quantity),
        }
    }

    /// A GTC limit order with default self-trade prevention (cancel incoming).
    pub fn limit(client_order_id: u64, symbol: u32, side: Side, price: i64, quantity: u64) -> Self {
        Self::new(
            client_order_id,
            symbol,
            side,
            OrderType::Limit,
            TimeInForce::Gtc,
            false,
            SelfTradePrevention::CancelIncoming,
            price,
            quantity,
        )
    }

    /// Checks and returns the enum fields; the error names the bad field.
    #[inline]
    pub fn fields(&self) -> Result<OrderFields, DecodeError> {
        let reserved = self.flags & !ORDER_FLAGS_KNOWN;
        if reserved != 0 {
            return Err(DecodeError::ReservedBits {
                field: "new_order.flags",
                value: u64::from(reserved),
            });
        }
        Ok(OrderFields {
            side: Side::from_wire(self.side)?,
            order_type: OrderType::from_wire(self.order_type)?,
            time_in_force: TimeInForce::from_wire(self.time_in_force)?,
            post_only: self.flags & ORDER_POST_ONLY != 0,
            stp: SelfTradePrevention::from_wire((self.flags & ORDER_STP_MASK) >> ORDER_STP_SHIFT)?,
        })
    }
}

/// Cancel a live order by its client order id (16 bytes).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct Cancel {
    /// The client order id of the order to cancel.
    pub client_order_id: U64,
    /// Its symbol (routes the request to the book without a lookup).
    pub symbol: U32,
    /// Reserved, zero.
    pub reserved: U32,
}
message!(Cancel, Cancel, 16);

impl Cancel {
    /// Builds a cancel.
    pub fn new(client_order_id: u64, symbol: u32) -> Self {
        Cancel {
            client_order_id: U64::new(client_order_id),
            symbol: U32::new(symbol),
            reserved: U32::new(0),
        }
    }

    /// Checks that the reserved field is zero.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_reserved("cancel.reserved", u64::from(self.reserved.get()))
    }
}

/// Change the price and/or the open quantity of a live order (32 bytes).
/// Reducing the quantity at the same price keeps time priority; any other
/// change loses it (the order goes to the back of its new price level).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct Replace {
    /// The client order id of the order to change (it keeps this id).
    pub client_order_id: U64,
    /// Its symbol.
    pub symbol: U32,
    /// Reserved, zero.
    pub reserved: U32,
    /// The new limit price in ticks.
    pub price: I64,
    /// The new open (remaining) quantity; must be above zero.
    pub quantity: U64,
}
message!(Replace, Replace, 32);

impl Replace {
    /// Builds a replace.
    pub fn new(client_order_id: u64, symbol: u32, price: i64, quantity: u64) -> Self {
        Replace {
            client_order_id: U64::new(client_order_id),
            symbol: U32::new(symbol),
            reserved: U32::new(0),
            price: I64::new(price),
            quantity: U64::new(quantity),
        }
    }

    /// Checks that the reserved field is zero.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_reserved("replace.reserved", u64::from(self.reserved.get()))
    }
}

/// Heartbeat, in either direction (8 bytes). The server echoes a client's
/// `token`; its own heartbeats carry its clock in nanoseconds.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct Heartbeat {
    /// Opaque to the receiver.
    pub token: U64,
}
message!(Heartbeat, Heartbeat, 8);

/// Server-to-client heartbeat (8 bytes): same layout as [`Heartbeat`] under its own kind.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct ServerHeartbeat {
    /// The client's token when echoing, else the server clock in ns.
    pub token: U64,
}
message!(ServerHeartbeat, ServerHeartbeat, 8);

/// Market-data subscription (8 bytes), protocol version 2: the flags
/// (`SUBSCRIBE_*`) replace the session's channels for the symbol; 0
/// unsubscribes. A version 1 session gets a `NotSupported` reject.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct Subscribe {
    /// Symbol id, or `u32::MAX` for every symbol.
    pub symbol: U32,
    /// Bit 0 trades, bit 1 top of book, bit 2 depth, bit 3 conflate top of book.
    pub flags: U32,
}
message!(Subscribe, Subscribe, 8);

impl Subscribe {
    /// A subscription to `symbol` (or [`crate::ALL_SYMBOLS`]) with `flags`.
    pub fn new(symbol: u32, flags: u32) -> Self {
        Subscribe {
            symbol: U32::new(symbol),
            flags: U32::new(flags),
        }
    }
}

/// Ask for the state of an order by client order id (16 bytes).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct OrderQuery {
    /// The client order id.
    pub client_order_id: U64,
    /// Its symbol.
    pub symbol: U32,
    /// Reserved, zero.
    pub reserved: U32,
}
message!(OrderQuery, OrderQuery, 16);

impl OrderQuery {
    /// Builds a query.
    pub fn new(client_order_id: u64, symbol: u32) -> Self {
        OrderQuery {
            client_order_id: U64::new(client_order_id),
            symbol: U32::new(symbol),
            reserved: U32::new(0),
        }
    }

    /// Checks that the reserved field is zero.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_reserved("order_query.reserved", u64::from(self.reserved.get()))
    }
}

/// [`MassCancel::symbol`] for every symbol.
pub const MASS_CANCEL_ALL_SYMBOLS: u32 = u32::MAX;

/// Cancel every live order of the session's account on one symbol, or on
/// all (16 bytes; protocol version 2).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct MassCancel {
    /// The client's id for this request: a `Rejected` about it carries it
    /// as its `client_order_id`.
    pub request_id: U64,
    /// The symbol, or [`MASS_CANCEL_ALL_SYMBOLS`].
    pub symbol: U32,
    /// Reserved, zero.
    pub flags: U32,
}
message!(MassCancel, MassCancel, 16);

impl MassCancel {
    /// Builds a mass cancel.
    pub fn new(request_id: u64, symbol: u32) -> Self {
        MassCancel {
            request_id: U64::new(request_id),
            symbol: U32::new(symbol),
            flags: U32::new(0),
        }
    }

    /// Checks that the reserved flags are zero.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_reserved("mass_cancel.flags", u64::from(self.flags.get()))
    }
}

/// [`CancelAfter::timeout_ms`] that disarms the dead-man's timer.
pub const CANCEL_AFTER_DISARM: u32 = 0;
/// The shortest dead-man's timer a server accepts, in milliseconds.
pub const CANCEL_AFTER_MIN_MS: u32 = 1_000;
/// The longest dead-man's timer a server accepts, in milliseconds (one hour).
pub const CANCEL_AFTER_MAX_MS: u32 = 3_600_000;

/// Dead-man's timer (8 bytes; protocol version 2): arms, or re-arms with a
/// fresh countdown, a timer of `timeout_ms` for the session; when it runs
/// out, the server cancels every live order of the session's account on
/// every symbol, as a [`MassCancel`] of all symbols does. Zero disarms it.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct CancelAfter {
    /// The countdown in milliseconds: [`CANCEL_AFTER_DISARM`], or
    /// [`CANCEL_AFTER_MIN_MS`]..=[`CANCEL_AFTER_MAX_MS`].
    pub timeout_ms: U32,
    /// Reserved, zero.
    pub reserved: U32,
}
message!(CancelAfter, CancelAfter, 8);

impl CancelAfter {
    /// Builds a dead-man's timer request.
    pub fn new(timeout_ms: u32) -> Self {
        CancelAfter {
            timeout_ms: U32::new(timeout_ms),
            reserved: U32::new(0),
        }
    }

    /// Checks that the reserved field is zero.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_reserved("cancel_after.reserved", u64::from(self.reserved.get()))
    }
}

// ---------------------------------------------------------------------------
// Server to client
// ---------------------------------------------------------------------------

/// Answer to a Hello (24 bytes); a symbol directory follows it.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct HelloAck {
    /// The server's id for this session.
    pub session_id: U64,
    /// The protocol version the server will speak.
    pub protocol_version: U16,
    /// The session flags the server accepted.
    pub flags: U16,
    /// The heartbeat interval the server will use and expects.
    pub heartbeat_interval_ms: U32,
    /// How many SymbolEntry messages follow.
    pub symbol_count: U32,
    /// The largest frame the server accepts.
    pub max_frame_bytes: U32,
}
message!(HelloAck, HelloAck, 24);

/// One row of the symbol directory (24 bytes).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct SymbolEntry {
    /// The symbol id used in orders.
    pub symbol: U32,
    /// The name, ASCII, NUL-padded.
    pub name: [u8; 20],
}
message!(SymbolEntry, SymbolEntry, 24);

impl SymbolEntry {
    /// Builds an entry (names longer than 20 bytes are truncated).
    pub fn new(symbol: u32, name: &str) -> Self {
        SymbolEntry {
            symbol: U32::new(symbol),
            name: fill_text(name),
        }
    }

    /// The name without padding.
    pub fn name(&self) -> &[u8] {
        text_of(&self.name)
    }
}

/// The order was accepted (32 bytes).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct Accepted {
    /// The client's id.
    pub client_order_id: U64,
    /// The exchange's id for the order, unique per server.
    pub order_id: U64,
    /// Engine time of acceptance, ns (as supplied by the server clock).
    pub timestamp_ns: U64,
    /// Symbol id.
    pub symbol: U32,
    /// [`Side`].
    pub side: u8,
    /// [`OrderType`].
    pub order_type: u8,
    /// [`TimeInForce`].
    pub time_in_force: u8,
    /// Reserved, zero.
    pub reserved: u8,
}
message!(Accepted, Accepted, 32);

impl Accepted {
    /// Builds an accept.
    pub fn new(
        client_order_id: u64,
        order_id: u64,
        timestamp_ns: u64,
        symbol: u32,
        fields: &OrderFields,
    ) -> Self {
        Accepted {
            client_order_id: U64::new(client_order_id),
            order_id: U64::new(order_id),
            timestamp_ns: U64::new(timestamp_ns),
            symbol: U32::new(symbol),
            side: fields.side.to_wire(),
            order_type: fields.order_type.to_wire(),
            time_in_force: fields.time_in_force.to_wire(),
            reserved: 0,
        }
    }
}

/// A request was rejected (16 bytes). For a rejected new order this is its
/// only and terminal report; for a rejected cancel or replace the order is unchanged.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct Rejected {
    /// The client order id the request named.
    pub client_order_id: U64,
    /// The symbol the request named.
    pub symbol: U32,
    /// [`RejectReason`].
    pub reason: U16,
    /// The [`Kind`] of the rejected request (NewOrder, Cancel, Replace, ...).
    pub request_kind: u8,
    /// Reserved, zero.
    pub reserved: u8,
}
message!(Rejected, Rejected, 16);

impl Rejected {
    /// Builds a reject.
    pub fn new(
        client_order_id: u64,
        symbol: u32,
        reason: RejectReason,
        request_kind: Kind,
    ) -> Self {
        Rejected {
            client_order_id: U64::new(client_order_id),
            symbol: U32::new(symbol),
            reason: U16::new(reason.to_wire()),
            request_kind: request_kind as u8,
            reserved: 0,
        }
    }

    /// The typed reason.
    pub fn reason(&self) -> Result<RejectReason, DecodeError> {
        RejectReason::from_wire(self.reason.get())
    }

    /// The kind of the rejected request.
    pub fn request_kind(&self) -> Result<Kind, DecodeError> {
        Kind::from_wire(self.request_kind).map_err(|_| DecodeError::InvalidEnum {
            field: "rejected.request_kind",
            value: u64::from(self.request_kind),
        })
    }
}

/// A trade against one of the session's orders (48 bytes). Both the maker
/// and the taker get one, with the same `trade_id`.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct Fill {
    /// The client's id of the order that traded.
    pub client_order_id: U64,
    /// The trade's id, shared by the maker's and the taker's fill.
    pub trade_id: U64,
    /// Symbol id.
    pub symbol: U32,
    /// [`Side`] of this session's order.
    pub side: u8,
    /// [`Liquidity`]: maker or taker.
    pub liquidity: u8,
    /// Reserved, zero.
    pub reserved: U16,
    /// Trade price in ticks (the maker's price).
    pub price: I64,
    /// Traded quantity.
    pub quantity: U64,
    /// The order's open quantity after this fill; 0 means filled (terminal).
    pub leaves_quantity: U64,
}
message!(Fill, Fill, 48);

impl Fill {
    /// Builds a fill.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client_order_id: u64,
        trade_id: u64,
        symbol: u32,
        side: Side,
        liquidity: Liquidity,
        price: i64,
        quantity: u64,
        leaves_quantity: u64,
    ) -> Self {
        Fill {
            client_order_id: U64::new(client_order_id),
            trade_id: U64::new(trade_id),
            symbol: U32::new(symbol),
            side: side.to_wire(),
            liquidity: liquidity.to_wire(),
            reserved: U16::new(0),
            price: I64::new(price),
            quantity: U64::new(quantity),
            leaves_quantity: U64::new(leaves_quantity),
        }
    }

    /// The typed side of this session's order.
    pub fn side(&self) -> Result<Side, DecodeError> {
        Side::from_wire(self.side)
    }

    /// Maker or taker.
    pub fn liquidity(&self) -> Result<Liquidity, DecodeError> {
        Liquidity::from_wire(self.liquidity)
    }
}

/// An order was canceled (24 bytes); terminal.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct Canceled {
    /// The client's id.
    pub client_order_id: U64,
    /// Symbol id.
    pub symbol: U32,
    /// [`CancelReason`].
    pub reason: u8,
    /// Reserved, zero.
    pub reserved: [u8; 3],
    /// The open quantity that was canceled.
    pub canceled_quantity: U64,
}
message!(Canceled, Canceled, 24);

impl Canceled {
    /// Builds a cancel report.
    pub fn new(
        client_order_id: u64,
        symbol: u32,
        reason: CancelReason,
        canceled_quantity: u64,
    ) -> Self {
        Canceled {
            client_order_id: U64::new(client_order_id),
            symbol: U32::new(symbol),
            reason: reason.to_wire(),
            reserved: [0; 3],
            canceled_quantity: U64::new(canceled_quantity),
        }
    }

    /// The typed reason.
    pub fn reason(&self) -> Result<CancelReason, DecodeError> {
        CancelReason::from_wire(self.reason)
    }
}

/// `Replaced.flags` bit 0: the order kept its time priority.
pub const REPLACED_PRIORITY_KEPT: u8 = 1;

/// A replace took effect (32 bytes). Fills may follow if the new price crosses.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct Replaced {
    /// The client's id (unchanged by the replace).
    pub client_order_id: U64,
    /// Symbol id.
    pub symbol: U32,
    /// Bit 0: priority kept.
    pub flags: u8,
    /// Reserved, zero.
    pub reserved: [u8; 3],
    /// The new price.
    pub price: I64,
    /// The new open quantity.
    pub leaves_quantity: U64,
}
message!(Replaced, Replaced, 32);

impl Replaced {
    /// Builds a replace report.
    pub fn new(
        client_order_id: u64,
        symbol: u32,
        priority_kept: bool,
        price: i64,
        leaves_quantity: u64,
    ) -> Self {
        Replaced {
            client_order_id: U64::new(client_order_id),
            symbol: U32::new(symbol),
            flags: if priority_kept {
                REPLACED_PRIORITY_KEPT
            } else {
                0
            },
            reserved: [0; 3],
            price: I64::new(price),
            leaves_quantity: U64::new(leaves_quantity),
        }
    }

    /// True when the order kept its time priority.
    pub fn priority_kept(&self) -> bool {
        self.flags & REPLACED_PRIORITY_KEPT != 0
    }
}

/// Public trade (market data, 32 bytes). Reserved for the market-data feed.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct Trade {
    /// Symbol id.
    pub symbol: U32,
    /// [`Side`] of the taker.
    pub aggressor_side: u8,
    /// Reserved, zero.
    pub reserved: [u8; 3],
    /// Trade id.
    pub trade_id: U64,
    /// Price in ticks.
    pub price: I64,
    /// Quantity.
    pub quantity: U64,
}
message!(Trade, Trade, 32);

/// Best bid and ask (market data, 40 bytes). A price of 0 with quantity 0 means an empty side.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct TopOfBook {
    /// Symbol id.
    pub symbol: U32,
    /// Reserved, zero.
    pub reserved: U32,
    /// Best bid price.
    pub bid_price: I64,
    /// Quantity at the best bid.
    pub bid_quantity: U64,
    /// Best ask price.
    pub ask_price: I64,
    /// Quantity at the best ask.
    pub ask_quantity: U64,
}
message!(TopOfBook, TopOfBook, 40);

/// Answer to an OrderQuery (40 bytes).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct OrderStatus {
    /// The client order id asked about.
    pub client_order_id: U64,
    /// The exchange's order id (0 when unknown).
    pub order_id: U64,
    /// Symbol id.
    pub symbol: U32,
    /// [`OrderState`].
    pub state: u8,
    /// Reserved, zero.
    pub reserved: [u8; 3],
    /// Quantity filled so far.
    pub filled_quantity: U64,
    /// Open quantity (0 unless live).
    pub leaves_quantity: U64,
}
message!(OrderStatus, OrderStatus, 40);

impl OrderStatus {
    /// Builds a status answer.
    pub fn new(
        client_order_id: u64,
        order_id: u64,
        symbol: u32,
        state: OrderState,
        filled_quantity: u64,
        leaves_quantity: u64,
    ) -> Self {
        OrderStatus {
            client_order_id: U64::new(client_order_id),
            order_id: U64::new(order_id),
            symbol: U32::new(symbol),
            state: state.to_wire(),
            reserved: [0; 3],
            filled_quantity: U64::new(filled_quantity),
            leaves_quantity: U64::new(leaves_quantity),
        }
    }

    /// The typed state.
    pub fn state(&self) -> Result<OrderState, DecodeError> {
        OrderState::from_wire(self.state)
    }
}

/// The server is closing the connection, and why (64 bytes).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct SessionError {
    /// [`SessionErrorCode`].
    pub code: U16,
    /// The offending frame kind, when there is one.
    pub kind: u8,
    /// Reserved, zero.
    pub reserved: u8,
    /// A code-specific number (the bad length, version, value...).
    pub detail: U32,
    /// A human-readable explanation, ASCII/UTF-8, NUL-padded.
    pub text: [u8; 56],
}
message!(SessionError, SessionError, 64);

impl SessionError {
    /// Builds a session error; `text` is truncated to 56 bytes.
    pub fn new(code: SessionErrorCode, kind: u8, detail: u32, text: &str) -> Self {
        SessionError {
            code: U16::new(code.to_wire()),
            kind,
            reserved: 0,
            detail: U32::new(detail),
            text: fill_text(text),
        }
    }

    /// The session error a server sends before closing a connection whose
    /// bytes failed to decode: the matching code, the offending kind where
    /// the error names one, the error's number as `detail` (see PROTOCOL.md)
    /// and its message, truncated to fit `text`.
    ///
    /// An error about a field ([`DecodeError::InvalidEnum`],
    /// [`DecodeError::ReservedBits`]) names no kind, so `kind` is 0 here;
    /// a server that found it in a message knows the kind and should use
    /// [`SessionError::invalid_field`] instead.
    pub fn from_decode_error(error: &DecodeError) -> Self {
        let kind = match *error {
            DecodeError::UnknownKind { kind }
            | DecodeError::BadCount { kind, .. }
            | DecodeError::CountMustBeOne { kind, .. } => kind,
            _ => 0,
        };
        SessionError::new(
            error.session_error_code(),
            kind,
            error.detail(),
            &error.to_string(),
        )
    }

    /// The `InvalidField` session error for a field of a message of `kind`
    /// (in version 1, the Hello's reserved flag bits): `detail` is the
    /// value refused, as [`DecodeError::detail`] gives it.
    pub fn invalid_field(kind: Kind, error: &DecodeError) -> Self {
        SessionError::new(
            SessionErrorCode::InvalidField,
            kind as u8,
            error.detail(),
            &error.to_string(),
        )
    }

    /// The typed code.
    pub fn code(&self) -> Result<SessionErrorCode, DecodeError> {
        SessionErrorCode::from_wire(self.code.get())
    }

    /// The explanation without padding.
    pub fn text(&self) -> &[u8] {
        text_of(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_order_is_at_most_40_bytes() {
        assert_eq!(NewOrder::BYTES, 32);
        const { assert!(core::mem::size_of::<NewOrder>() <= 40) };
    }

    #[test]
    fn order_fields_validate_each_field() {
        let good = NewOrder::new(
            1,
            2,
            Side::Sell,
            OrderType::Limit,
            TimeInForce::Ioc,
            true,
            SelfTradePrevention::CancelBoth,
            100,
            5,
        );
        let f = good.fields().unwrap();
        assert_eq!(f.side, Side::Sell);
        assert_eq!(f.time_in_force, TimeInForce::Ioc);
        assert!(f.post_only);
        assert_eq!(f.stp, SelfTradePrevention::CancelBoth);

        let mut bad = good;
        bad.side = 9;
        assert_eq!(
            bad.fields(),
            Err(DecodeError::InvalidEnum {
                field: "side",
                value: 9
            })
        );
        let mut bad = good;
        bad.flags |= 0b1000_0000;
        assert!(matches!(
            bad.fields(),
            Err(DecodeError::ReservedBits { .. })
        ));
        let mut bad = good;
        bad.flags = 0b11 << ORDER_STP_SHIFT;
        assert!(matches!(
            bad.fields(),
            Err(DecodeError::InvalidEnum {
                field: "self_trade_prevention",
                value: 3
            })
        ));
    }

    #[test]
    fn text_fields_truncate_on_char_boundaries() {
        let e = SessionError::new(SessionErrorCode::BadCount, 2, 7, &"é".repeat(40));
        assert_eq!(e.text().len(), 56);
        assert!(std::str::from_utf8(e.text()).is_ok());
        let s = SymbolEntry::new(3, "BTC-USD");
        assert_eq!(s.name(), b"BTC-USD");
    }
}
