//! Enumerations carried inside messages as single bytes (or `u16` for
//! reject reasons). Zero is never a valid value for the enums a client
//! fills in, so a zeroed or uninitialised message is caught at decode time.

use crate::error::DecodeError;

macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $name:ident : $repr:ty, field = $field:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr($repr)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value ),+
        }

        impl $name {
            /// Every variant, in wire-value order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire value.
            #[inline]
            pub const fn to_wire(self) -> $repr {
                self as $repr
            }

            /// Parses a wire value; an unknown value is a typed error naming the field.
            #[inline]
            pub const fn from_wire(value: $repr) -> Result<Self, DecodeError> {
                match value {
                    $( $value => Ok($name::$variant), )+
                    other => Err(DecodeError::InvalidEnum { field: $field, value: other as u64 }),
                }
            }

            /// A short human-readable name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text ),+
                }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl TryFrom<$repr> for $name {
            type Error = DecodeError;
            #[inline]
            fn try_from(value: $repr) -> Result<Self, DecodeError> {
                Self::from_wire(value)
            }
        }
    };
}

wire_enum! {
    /// Buy or sell.
    Side: u8, field = "side" {
        /// Buy: trades against asks.
        Buy = 1 => "buy",
        /// Sell: trades against bids.
        Sell = 2 => "sell",
    }
}

impl Side {
    /// The other side of the book.
    #[inline]
    pub const fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }
}

wire_enum! {
    /// Limit or market.
    OrderType: u8, field = "order_type" {
        /// Trades at the limit price or better; the remainder follows the time in force.
        Limit = 1 => "limit",
        /// Trades at the best available prices within the book's protective
        /// price band; never rests (time in force must be IOC or FOK).
        Market = 2 => "market",
    }
}

wire_enum! {
    /// Time in force.
    TimeInForce: u8, field = "time_in_force" {
        /// Good till canceled: the remainder rests on the book.
        Gtc = 1 => "GTC",
        /// Immediate or cancel: the remainder is canceled.
        Ioc = 2 => "IOC",
        /// Fill or kill: fills completely at once or is canceled with no fill.
        Fok = 3 => "FOK",
    }
}

wire_enum! {
    /// What happens when an incoming order would trade against a resting
    /// order of the same account (self-trade prevention).
    SelfTradePrevention: u8, field = "self_trade_prevention" {
        /// Cancel the incoming order's remainder; the resting order stays.
        CancelIncoming = 0 => "cancel-incoming",
        /// Cancel the resting order and continue matching.
        CancelResting = 1 => "cancel-resting",
        /// Cancel both the resting order and the incoming remainder.
        CancelBoth = 2 => "cancel-both",
    }
}

wire_enum! {
    /// Maker (resting order) or taker (incoming order) of a fill.
    Liquidity: u8, field = "liquidity" {
        /// The order was resting on the book.
        Maker = 1 => "maker",
        /// The order arrived and took liquidity.
        Taker = 2 => "taker",
    }
}

wire_enum! {
    /// Why an order was canceled (the `reason` of a Canceled report).
    CancelReason: u8, field = "cancel_reason" {
        /// The client sent a Cancel.
        Requested = 1 => "canceled by request",
        /// The unfilled remainder of an IOC order (or market order).
        IocRemainder = 2 => "IOC remainder",
        /// A FOK order that could not fill completely at once.
        FokUnfilled = 3 => "FOK could not fill completely",
        /// Self-trade prevention canceled this order.
        SelfTrade = 4 => "self-trade prevention",
        /// The session that owned the order disconnected and asked for cancel-on-disconnect.
        Disconnect = 5 => "cancel on disconnect",
        /// A market order's remainder beyond its protective price band.
        PriceBand = 6 => "beyond the market order price band",
        /// An operator's kill switch canceled every open order of the account.
        Killed = 7 => "canceled by the operator's kill switch",
    }
}

wire_enum! {
    /// Why a request (new order, cancel, replace, query) was rejected.
    RejectReason: u16, field = "reject_reason" {
        /// The symbol id is not in the symbol directory.
        UnknownSymbol = 1 => "unknown symbol",
        /// `side` is not 1 (buy) or 2 (sell).
        InvalidSide = 2 => "invalid side",
        /// `order_type` is not 1 (limit) or 2 (market).
        InvalidOrderType = 3 => "invalid order type",
        /// Unknown time in force, or one that does not fit the order type
        /// (a GTC market order, a post-only IOC).
        InvalidTimeInForce = 4 => "invalid time in force",
        /// A limit price that is zero, negative or above the book's maximum.
        InvalidPrice = 5 => "invalid price",
        /// A quantity of zero or above the book's maximum.
        InvalidQuantity = 6 => "invalid quantity",
        /// Reserved flag bits set, an unknown self-trade prevention mode,
        /// or post-only on a market order.
        InvalidFlags = 7 => "invalid flags",
        /// The client order id was already used in this session (ids must
        /// increase), or is live or remembered as finished for the same
        /// account in the shard that owns the symbol.
        DuplicateClientOrderId = 8 => "duplicate client order id",
        /// Cancel, replace or query of an order that is not live.
        UnknownOrder = 9 => "unknown order",
        /// The shard's order capacity is exhausted.
        BookFull = 10 => "book full",
        /// The book side has no room for another price level.
        PriceLevelsFull = 11 => "too many price levels",
        /// A post-only order (or its replacement) would take liquidity.
        PostOnlyWouldTake = 12 => "post-only order would take liquidity",
        /// A market order met an empty opposite side.
        NoLiquidity = 13 => "no liquidity for market order",
        /// The request is recognised but not supported by this server.
        NotSupported = 14 => "not supported",
        /// The server cannot make the order durable right now (journal full or failing).
        NotDurable = 15 => "journal unavailable",
        /// The server is shutting down and takes no new orders.
        ShuttingDown = 16 => "server shutting down",
        /// The session sent new orders and replaces faster than its order
        /// entry rate allows (`--max-order-rate`, `--order-burst`).
        RateLimited = 17 => "order entry rate limit exceeded",
        /// The order would rest beyond the account's cap on open orders in
        /// the shard or in the symbol.
        TooManyOpenOrders = 18 => "too many open orders for the account",
        /// An operator's kill switch blocks the account's new orders.
        AccountBlocked = 19 => "account blocked by the operator",
        /// In a cluster, this node does not serve the symbol's shard: send
        /// the request to the owner (a version 2 session gets a
        /// [`ShardOwner`](crate::ShardOwner) naming it right after).
        WrongNode = 20 => "wrong node: another node owns the symbol's shard",
    }
}

wire_enum! {
    /// How a node's order-entry address is written in [`ShardOwner`](crate::ShardOwner)
    /// and [`ClusterNode`](crate::ClusterNode).
    AddressFamily: u8, field = "address_family" {
        /// No address: no owner is known (address and port are zero).
        None = 0 => "none",
        /// IPv4: the 4 address bytes first, in network order, then 12 zero bytes.
        Ipv4 = 1 => "IPv4",
        /// IPv6: the 16 address bytes in network order.
        Ipv6 = 2 => "IPv6",
    }
}

wire_enum! {
    /// A node's state in a [`ClusterNode`](crate::ClusterNode).
    NodeState: u8, field = "node_state" {
        /// Its heartbeat is recent (within the cluster's node timeout).
        Alive = 1 => "alive",
        /// Its heartbeat is older than the node timeout: it may be gone.
        Stale = 2 => "stale",
    }
}

wire_enum! {
    /// A session-level error: the server sends a SessionError and then
    /// closes the connection, because the byte stream can no longer be trusted.
    SessionErrorCode: u16, field = "session_error_code" {
        /// A frame header is malformed (length smaller than the header).
        MalformedFrame = 1 => "malformed frame",
        /// The frame kind is not a client-to-server message kind.
        UnknownKind = 2 => "unknown message kind",
        /// The frame is longer than the server's maximum frame size.
        FrameTooLarge = 3 => "frame too large",
        /// The frame length does not equal header + count * message size.
        BadCount = 4 => "bad message count",
        /// The frame's protocol version is not supported.
        UnsupportedVersion = 5 => "unsupported protocol version",
        /// The first frame of a connection was not a Hello.
        NotLoggedIn = 6 => "hello required first",
        /// A second Hello on a logged-in session.
        DuplicateHello = 7 => "duplicate hello",
        /// The Hello's credentials were refused.
        AuthenticationFailed = 8 => "authentication failed",
        /// Nothing was received for longer than the idle timeout.
        IdleTimeout = 9 => "idle timeout",
        /// The client did not read its reports for longer than the limit.
        SlowConsumer = 10 => "slow consumer",
        /// The server is shutting down.
        ServerShutdown = 11 => "server shutting down",
        /// The server is at its connection limit.
        TooManyConnections = 12 => "too many connections",
        /// A field of a session message had a value outside its enum.
        InvalidField = 13 => "invalid field value",
        /// No Hello arrived within the logon deadline after the connection opened.
        LogonTimeout = 14 => "logon timeout",
        /// A frame that had begun was not completed within the frame deadline.
        FrameTimeout = 15 => "frame timeout",
        /// The account has as many sessions as it may have at once.
        TooManySessions = 16 => "too many sessions",
        /// The session kept sending NewOrders and Replaces far past its
        /// order entry rate (more rate-limited requests within a window
        /// than the server allows).
        OrderFlood = 17 => "order flood",
        /// Cluster only: a shard this session had sent NewOrders or
        /// Replaces for changed hands (the node follows another node's log
        /// of it, or took it over again itself): the session's resting
        /// orders there belong to no session now (`detail`: the shard).
        ShardTakenOver = 18 => "shard taken over",
    }
}

wire_enum! {
    /// The state of an order in an OrderStatus answer.
    OrderState: u8, field = "order_state" {
        /// Resting on the book.
        Live = 1 => "live",
        /// Completely filled.
        Filled = 2 => "filled",
        /// Canceled (for any reason), possibly after partial fills.
        Canceled = 3 => "canceled",
        /// No such order is known.
        Unknown = 4 => "unknown",
    }
}

wire_enum! {
    /// What an [`MdStatus`](crate::MdStatus) message reports (protocol version 2).
    MdStatusEvent: u8, field = "md_status_event" {
        /// A subscription took effect: the symbol's stream continues from
        /// `seq + 1`; with depth, `levels` snapshot rows follow.
        Subscribed = 1 => "subscribed",
        /// The depth snapshot announced by `Subscribed` is complete.
        SnapshotEnd = 2 => "snapshot end",
        /// The checksum of the book's top levels as of `seq`.
        Checksum = 3 => "checksum",
        /// The session fell behind: every subscription was dropped.
        CutOff = 4 => "cut off",
        /// A subscription ended at the client's request.
        Unsubscribed = 5 => "unsubscribed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_round_trips_and_zero_is_invalid() {
        for &side in Side::ALL {
            assert_eq!(Side::from_wire(side.to_wire()).unwrap(), side);
        }
        for &r in RejectReason::ALL {
            assert_eq!(RejectReason::from_wire(r.to_wire()).unwrap(), r);
        }
        assert_eq!(
            Side::from_wire(0),
            Err(DecodeError::InvalidEnum {
                field: "side",
                value: 0
            })
        );
        assert!(OrderType::from_wire(0).is_err());
        assert!(TimeInForce::from_wire(0).is_err());
        assert!(RejectReason::from_wire(0).is_err());
    }

    #[test]
    fn opposite_side() {
        assert_eq!(Side::Buy.opposite(), Side::Sell);
        assert_eq!(Side::Sell.opposite(), Side::Buy);
    }
}
