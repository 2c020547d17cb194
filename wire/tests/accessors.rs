//! Every enum and every checked accessor accepts exactly its documented
//! values and names the field when it refuses one.

use proptest::prelude::*;
use wire::{
    Accepted, AddressFamily, Cancel, CancelReason, Canceled, ClusterMapRequest, ClusterNode,
    ClusterShard, DecodeError, Direction, Fill, HELLO_CANCEL_ON_DISCONNECT, Hello, Kind, Liquidity,
    MD_DEPTH_SNAPSHOT, MdDepth, MdStatus, MdStatusEvent, MdTopOfBook, MdTrade, NewOrder, NodeState,
    ORDER_POST_ONLY, ORDER_STP_SHIFT, OrderQuery, OrderState, OrderStatus, OrderType,
    PROTOCOL_VERSION, PROTOCOL_VERSION_MIN, REPLACED_PRIORITY_KEPT, RejectReason, Rejected,
    Replace, Replaced, SelfTradePrevention, SessionError, SessionErrorCode, ShardOwner, Side,
    Subscribe, TimeInForce, TopLevel, U16, U32,
};

/// Checks `from_wire` over every value of the representation: the listed
/// variants round-trip, everything else is `InvalidEnum` naming `field`.
macro_rules! check_enum {
    ($ty:ty, $repr:ty, $field:literal) => {{
        let valid: Vec<$repr> = <$ty>::ALL.iter().map(|v| v.to_wire()).collect();
        let mut accepted = 0usize;
        for raw in <$repr>::MIN..=<$repr>::MAX {
            match <$ty>::from_wire(raw) {
                Ok(v) => {
                    assert_eq!(v.to_wire(), raw);
                    assert!(valid.contains(&raw));
                    assert_eq!(<$ty>::try_from(raw), Ok(v));
                    assert!(!v.as_str().is_empty());
                    assert_eq!(v.to_string(), v.as_str());
                    accepted += 1;
                }
                Err(e) => {
                    assert_eq!(
                        e,
                        DecodeError::InvalidEnum {
                            field: $field,
                            value: u64::from(raw)
                        }
                    );
                    assert!(!valid.contains(&raw));
                }
            }
        }
        assert_eq!(accepted, <$ty>::ALL.len());
        // ALL is in wire-value order, without repeats.
        assert!(valid.windows(2).all(|w| w[0] < w[1]));
    }};
}

#[test]
fn every_enum_accepts_exactly_its_values() {
    check_enum!(Side, u8, "side");
    check_enum!(OrderType, u8, "order_type");
    check_enum!(TimeInForce, u8, "time_in_force");
    check_enum!(SelfTradePrevention, u8, "self_trade_prevention");
    check_enum!(Liquidity, u8, "liquidity");
    check_enum!(CancelReason, u8, "cancel_reason");
    check_enum!(OrderState, u8, "order_state");
    check_enum!(RejectReason, u16, "reject_reason");
    check_enum!(SessionErrorCode, u16, "session_error_code");
    check_enum!(MdStatusEvent, u8, "md_status_event");
    check_enum!(AddressFamily, u8, "address_family");
    check_enum!(NodeState, u8, "node_state");
}

#[test]
fn cluster_messages_read_back_what_they_were_built_with() {
    let v6: std::net::SocketAddr = "[2001:db8::42]:9100".parse().unwrap();
    let n = ClusterNode::new(7, v6, NodeState::Stale, 16, 5, 1_500);
    assert_eq!(n.node_address(), Ok(Some(v6)));
    assert_eq!(n.state(), Ok(NodeState::Stale));
    assert_eq!((n.cores.get(), n.shards_owned.get()), (16, 5));
    let owner = ShardOwner::new(9, 11, 3, 4, Some((7, v6)), Kind::Cancel);
    assert_eq!(owner.owner_address(), Ok(Some(v6)));
    assert_eq!(owner.family, AddressFamily::Ipv6.to_wire());
    let mut bad = owner;
    bad.family = 3;
    assert!(bad.owner_address().is_err());
    let s = ClusterShard::new(3, 7, 4_000);
    assert_eq!(
        (s.shard.get(), s.owner.get(), s.lease_remaining_ms.get()),
        (3, 7, 4_000)
    );
    assert_eq!(ClusterMapRequest::new(5).token.get(), 5);
}

#[test]
fn zero_is_never_a_value_a_client_fills_in() {
    // A zeroed message must not decode as a valid order.
    assert!(Side::from_wire(0).is_err());
    assert!(OrderType::from_wire(0).is_err());
    assert!(TimeInForce::from_wire(0).is_err());
    assert!(NewOrder::limit(0, 0, Side::Buy, 0, 0).fields().is_ok());
    let zeroed = NewOrder {
        side: 0,
        order_type: 0,
        time_in_force: 0,
        ..NewOrder::limit(0, 0, Side::Buy, 0, 0)
    };
    assert!(zeroed.fields().is_err());
}

#[test]
fn kinds_parse_exactly_and_the_high_bit_is_the_direction() {
    let mut known = 0;
    for code in 0..=u8::MAX {
        match Kind::from_wire(code) {
            Ok(kind) => {
                known += 1;
                assert_eq!(kind as u8, code);
                let to_client = code & 0x80 != 0;
                assert_eq!(kind.direction() == Direction::ToClient, to_client);
                assert!(Kind::ALL.contains(&kind));
            }
            Err(e) => assert_eq!(e, DecodeError::UnknownKind { kind: code }),
        }
    }
    assert_eq!(known, Kind::ALL.len());
}

/// The reference the NewOrder check is compared with: reserved flag bits
/// first, then side, order type, time in force, self-trade prevention.
fn expected_fields(side: u8, ty: u8, tif: u8, flags: u8) -> Result<wire::OrderFields, DecodeError> {
    let reserved = flags & !(ORDER_POST_ONLY | (0b11 << ORDER_STP_SHIFT));
    if reserved != 0 {
        return Err(DecodeError::ReservedBits {
            field: "new_order.flags",
            value: u64::from(reserved),
        });
    }
    let bad = |field, value: u8| DecodeError::InvalidEnum {
        field,
        value: u64::from(value),
    };
    let side = match side {
        1 => Side::Buy,
        2 => Side::Sell,
        v => return Err(bad("side", v)),
    };
    let order_type = match ty {
        1 => OrderType::Limit,
        2 => OrderType::Market,
        v => return Err(bad("order_type", v)),
    };
    let time_in_force = match tif {
        1 => TimeInForce::Gtc,
        2 => TimeInForce::Ioc,
        3 => TimeInForce::Fok,
        v => return Err(bad("time_in_force", v)),
    };
    let stp = match (flags >> ORDER_STP_SHIFT) & 0b11 {
        0 => SelfTradePrevention::CancelIncoming,
        1 => SelfTradePrevention::CancelResting,
        2 => SelfTradePrevention::CancelBoth,
        v => return Err(bad("self_trade_prevention", v)),
    };
    Ok(wire::OrderFields {
        side,
        order_type,
        time_in_force,
        post_only: flags & ORDER_POST_ONLY != 0,
        stp,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn new_order_fields_match_the_reference(
        side in prop_oneof![0u8..4, any::<u8>()],
        ty in prop_oneof![0u8..4, any::<u8>()],
        tif in prop_oneof![0u8..5, any::<u8>()],
        flags in prop_oneof![0u8..0x40, any::<u8>()],
        rest in any::<(u64, u32, i64, u64)>(),
    ) {
        let order = NewOrder {
            side,
            order_type: ty,
            time_in_force: tif,
            flags,
            ..NewOrder::limit(rest.0, rest.1, Side::Buy, rest.2, rest.3)
        };
        prop_assert_eq!(order.fields(), expected_fields(side, ty, tif, flags));
    }

    #[test]
    fn constructors_write_what_fields_reads(
        side in proptest::sample::select(Side::ALL),
        ty in proptest::sample::select(OrderType::ALL),
        tif in proptest::sample::select(TimeInForce::ALL),
        post_only in any::<bool>(),
        stp in proptest::sample::select(SelfTradePrevention::ALL),
        (id, symbol, price, quantity) in any::<(u64, u32, i64, u64)>(),
    ) {
        let o = NewOrder::new(id, symbol, side, ty, tif, post_only, stp, price, quantity);
        let f = o.fields().unwrap();
        prop_assert_eq!((f.side, f.order_type, f.time_in_force, f.post_only, f.stp), (side, ty, tif, post_only, stp));
        prop_assert_eq!((o.client_order_id.get(), o.symbol.get(), o.price.get(), o.quantity.get()), (id, symbol, price, quantity));
        let a = Accepted::new(id, 77, 5, symbol, &f);
        prop_assert_eq!((a.side, a.order_type, a.time_in_force, a.reserved), (side.to_wire(), ty.to_wire(), tif.to_wire(), 0));
    }

    #[test]
    fn hello_validate_checks_version_then_flags(
        version in prop_oneof![0u16..4, Just(255), Just(256), any::<u16>()],
        flags in prop_oneof![0u16..4, any::<u16>()],
    ) {
        let mut h = Hello::new(1, 0, 0, "token");
        h.protocol_version = U16::new(version);
        h.flags = U16::new(flags);
        let spoken = u16::from(PROTOCOL_VERSION_MIN)..=u16::from(PROTOCOL_VERSION);
        let want = if !spoken.contains(&version) {
            Err(DecodeError::UnsupportedVersion {
                version: u8::try_from(version).unwrap_or(u8::MAX),
                supported: PROTOCOL_VERSION,
            })
        } else if flags & !HELLO_CANCEL_ON_DISCONNECT != 0 {
            Err(DecodeError::ReservedBits {
                field: "hello.flags",
                value: u64::from(flags & !HELLO_CANCEL_ON_DISCONNECT),
            })
        } else {
            Ok(())
        };
        prop_assert_eq!(h.validate(), want);
        prop_assert_eq!(h.cancel_on_disconnect(), flags & 1 == 1);
    }

    #[test]
    fn reserved_fields_of_requests_must_be_zero(reserved in any::<u32>()) {
        let mut c = Cancel::new(1, 2);
        c.reserved = U32::new(reserved);
        let mut r = Replace::new(1, 2, 3, 4);
        r.reserved = U32::new(reserved);
        let mut q = OrderQuery::new(1, 2);
        q.reserved = U32::new(reserved);
        let want = |field| {
            if reserved == 0 {
                Ok(())
            } else {
                Err(DecodeError::ReservedBits { field, value: u64::from(reserved) })
            }
        };
        prop_assert_eq!(c.validate(), want("cancel.reserved"));
        prop_assert_eq!(r.validate(), want("replace.reserved"));
        prop_assert_eq!(q.validate(), want("order_query.reserved"));
    }

    #[test]
    fn report_accessors_parse_or_name_the_field(raw8 in any::<u8>(), raw16 in any::<u16>()) {
        let mut rej = Rejected::new(1, 2, RejectReason::UnknownOrder, Kind::Cancel);
        rej.reason = U16::new(raw16);
        rej.request_kind = raw8;
        prop_assert_eq!(rej.reason(), RejectReason::from_wire(raw16));
        match Kind::from_wire(raw8) {
            Ok(k) => prop_assert_eq!(rej.request_kind(), Ok(k)),
            Err(_) => prop_assert_eq!(
                rej.request_kind(),
                Err(DecodeError::InvalidEnum { field: "rejected.request_kind", value: u64::from(raw8) })
            ),
        }

        let mut fill = Fill::new(1, 2, 3, Side::Buy, Liquidity::Maker, 4, 5, 6);
        fill.side = raw8;
        fill.liquidity = raw8;
        prop_assert_eq!(fill.side(), Side::from_wire(raw8));
        prop_assert_eq!(fill.liquidity(), Liquidity::from_wire(raw8));

        let mut canceled = Canceled::new(1, 2, CancelReason::Requested, 3);
        canceled.reason = raw8;
        prop_assert_eq!(canceled.reason(), CancelReason::from_wire(raw8));

        let mut status = OrderStatus::new(1, 2, 3, OrderState::Live, 4, 5);
        status.state = raw8;
        prop_assert_eq!(status.state(), OrderState::from_wire(raw8));

        let mut err = SessionError::new(SessionErrorCode::IdleTimeout, 0, 0, "x");
        err.code = U16::new(raw16);
        prop_assert_eq!(err.code(), SessionErrorCode::from_wire(raw16));

        let mut replaced = Replaced::new(1, 2, false, 3, 4);
        replaced.flags = raw8;
        prop_assert_eq!(replaced.priority_kept(), raw8 & REPLACED_PRIORITY_KEPT != 0);
    }

    #[test]
    fn market_data_accessors_parse_or_name_the_field(raw8 in any::<u8>()) {
        let mut depth = MdDepth::new(1, Side::Buy, false, 2, 3, 4, 5, 6);
        depth.side = raw8;
        depth.flags = raw8;
        prop_assert_eq!(depth.side(), Side::from_wire(raw8));
        prop_assert_eq!(depth.is_snapshot(), raw8 & MD_DEPTH_SNAPSHOT != 0);
        let mut status = MdStatus::new(1, MdStatusEvent::Checksum, 2, 3, 4, 5);
        status.event = raw8;
        prop_assert_eq!(status.event(), MdStatusEvent::from_wire(raw8));
    }

    #[test]
    fn market_data_constructors_write_what_accessors_read(
        side in proptest::sample::select(Side::ALL),
        event in proptest::sample::select(MdStatusEvent::ALL),
        snapshot in any::<bool>(),
        (symbol, seq, engine_ns, trade_id) in any::<(u32, u64, u64, u64)>(),
        (price, quantity, orders, checksum) in any::<(i64, u64, u32, u32)>(),
        bid in any::<(i64, u64, u32)>(),
        ask in any::<(i64, u64, u32)>(),
    ) {
        let t = MdTrade::new(symbol, side, seq, engine_ns, trade_id, price, quantity);
        prop_assert_eq!(
            (t.symbol.get(), Side::from_wire(t.aggressor_side), t.reserved, t.seq.get()),
            (symbol, Ok(side), [0; 3], seq)
        );
        prop_assert_eq!(
            (t.engine_ns.get(), t.trade_id.get(), t.price.get(), t.quantity.get()),
            (engine_ns, trade_id, price, quantity)
        );

        let level = |(price, quantity, orders): (i64, u64, u32)| TopLevel { price, quantity, orders };
        let b = MdTopOfBook::new(symbol, seq, engine_ns, level(bid), level(ask));
        prop_assert_eq!((b.bid(), b.ask()), (level(bid), level(ask)));
        prop_assert_eq!(
            (b.symbol.get(), b.reserved.get(), b.seq.get(), b.engine_ns.get()),
            (symbol, 0, seq, engine_ns)
        );
        prop_assert_eq!(
            (b.bid_price.get(), b.bid_quantity.get(), b.bid_orders.get()),
            bid
        );
        prop_assert_eq!(
            (b.ask_price.get(), b.ask_quantity.get(), b.ask_orders.get()),
            ask
        );

        let d = MdDepth::new(symbol, side, snapshot, seq, engine_ns, price, quantity, orders);
        prop_assert_eq!((d.side(), d.is_snapshot()), (Ok(side), snapshot));
        prop_assert_eq!(d.flags, if snapshot { MD_DEPTH_SNAPSHOT } else { 0 });
        prop_assert_eq!((d.reserved, d.reserved2.get()), ([0; 2], 0));
        prop_assert_eq!(
            (d.symbol.get(), d.seq.get(), d.engine_ns.get()),
            (symbol, seq, engine_ns)
        );
        prop_assert_eq!(
            (d.price.get(), d.quantity.get(), d.orders.get()),
            (price, quantity, orders)
        );

        let s = MdStatus::new(symbol, event, seq, engine_ns, checksum, orders);
        prop_assert_eq!((s.event(), s.reserved), (Ok(event), [0; 3]));
        prop_assert_eq!(
            (s.symbol.get(), s.seq.get(), s.engine_ns.get(), s.checksum.get(), s.levels.get()),
            (symbol, seq, engine_ns, checksum, orders)
        );

        let sub = Subscribe::new(symbol, checksum);
        prop_assert_eq!((sub.symbol.get(), sub.flags.get()), (symbol, checksum));
    }
}

#[test]
fn constructors_set_what_accessors_read() {
    let r = Rejected::new(5, 6, RejectReason::NotSupported, Kind::Subscribe);
    assert_eq!(r.reason(), Ok(RejectReason::NotSupported));
    assert_eq!(r.request_kind(), Ok(Kind::Subscribe));
    assert_eq!(r.request_kind, 6);
    let f = Fill::new(1, 2, 3, Side::Sell, Liquidity::Taker, 4, 5, 0);
    assert_eq!(
        (f.side(), f.liquidity()),
        (Ok(Side::Sell), Ok(Liquidity::Taker))
    );
    let c = Canceled::new(1, 2, CancelReason::PriceBand, 9);
    assert_eq!(c.reason(), Ok(CancelReason::PriceBand));
    let s = OrderStatus::new(1, 2, 3, OrderState::Filled, 4, 0);
    assert_eq!(s.state(), Ok(OrderState::Filled));
    let e = SessionError::new(SessionErrorCode::SlowConsumer, 0, 0, "read faster");
    assert_eq!(e.code(), Ok(SessionErrorCode::SlowConsumer));
    assert_eq!(e.text(), b"read faster");
    assert!(Replaced::new(1, 2, true, 3, 4).priority_kept());
    assert!(!Replaced::new(1, 2, false, 3, 4).priority_kept());
    let h = Hello::new(
        9,
        HELLO_CANCEL_ON_DISCONNECT,
        250,
        "a-token-much-longer-than-thirty-two-bytes",
    );
    assert_eq!(h.validate(), Ok(()));
    assert_eq!(h.credentials(), b"a-token-much-longer-than-thirty-");
}
