//! One test per rule of the matching core: each order type, each reject
//! reason, self-trade prevention, replace, query and cancel-on-disconnect.
//! Every test compares the complete report sequence, so an extra, missing
//! or reordered report fails it.

use engine::book::{
    Command, ConfigError, LevelView, Matcher, Op, Report, SessionId, Shard, ShardConfig,
};
use wire::{
    Accepted, Cancel, CancelReason, Canceled, Fill, Kind, Liquidity, NewOrder, OrderQuery,
    OrderState, OrderStatus, OrderType, RejectReason, Rejected, Replace, Replaced,
    SelfTradePrevention as Stp, Side, TimeInForce as Tif,
};

/// Session 1 and 3 trade for account A, session 2 for account B.
const S1: SessionId = SessionId::from_raw(1);
const S2: SessionId = SessionId::from_raw(2);
const S3: SessionId = SessionId::from_raw(3);
const A: u64 = 100;
const B: u64 = 200;
const NOW: u64 = 777;

fn account_of(session: SessionId) -> u64 {
    if session == S2 { B } else { A }
}

fn small_config() -> ShardConfig {
    ShardConfig {
        orders_max: 16,
        levels_per_side_max: 4,
        quantity_max: 1_000,
        price_max: 10_000,
        market_band_ticks: 5,
        history_max: 8,
        account_orders_max: u32::MAX,
        account_symbol_orders_max: u32::MAX,
    }
}

struct Harness {
    shard: Shard,
}

impl Harness {
    fn new() -> Self {
        Harness {
            shard: Shard::new(0, 1, 4, small_config()),
        }
    }

    fn with(shard: Shard) -> Self {
        Harness { shard }
    }

    fn run(&mut self, session: SessionId, op: Op) -> Vec<(SessionId, Report)> {
        let mut out = Vec::new();
        self.shard.process(
            &Command {
                session,
                account: account_of(session),
                op,
            },
            NOW,
            &mut out,
        );
        self.shard.check_invariants().unwrap();
        out
    }

    fn submit(&mut self, session: SessionId, order: NewOrder) -> Vec<(SessionId, Report)> {
        self.run(session, Op::New(order))
    }

    /// Enters a resting GTC limit order and checks it was only accepted.
    fn rest(&mut self, session: SessionId, id: u64, side: Side, price: i64, qty: u64) -> u64 {
        let out = self.submit(session, NewOrder::limit(id, 0, side, price, qty));
        assert_eq!(out.len(), 1, "expected only an accept: {out:?}");
        match out[0] {
            (s, Report::Accepted(a)) if s == session => a.order_id.get(),
            other => panic!("expected an accept, got {other:?}"),
        }
    }

    fn cancel(&mut self, session: SessionId, id: u64) -> Vec<(SessionId, Report)> {
        self.run(session, Op::Cancel(Cancel::new(id, 0)))
    }

    fn replace(
        &mut self,
        session: SessionId,
        id: u64,
        price: i64,
        qty: u64,
    ) -> Vec<(SessionId, Report)> {
        self.run(session, Op::Replace(Replace::new(id, 0, price, qty)))
    }

    fn level(&self, side: Side) -> Vec<(i64, u64, u32)> {
        self.shard
            .depth(0, side)
            .map(|l| (l.price, l.quantity, l.orders))
            .collect()
    }

    fn queue(&self, side: Side) -> Vec<u64> {
        self.shard
            .orders_by_priority(0, side)
            .map(|o| o.client_order_id)
            .collect()
    }
}

fn order(id: u64, side: Side, ty: OrderType, tif: Tif, price: i64, qty: u64) -> NewOrder {
    NewOrder::new(id, 0, side, ty, tif, false, Stp::CancelIncoming, price, qty)
}

fn with_stp(mut o: NewOrder, stp: Stp) -> NewOrder {
    o.flags =
        (o.flags & !(0b11 << wire::ORDER_STP_SHIFT)) | (stp.to_wire() << wire::ORDER_STP_SHIFT);
    o
}

fn accepted(session: SessionId, o: &NewOrder, seq: u64) -> (SessionId, Report) {
    (
        session,
        Report::Accepted(Accepted::new(
            o.client_order_id.get(),
            seq,
            NOW,
            o.symbol.get(),
            &o.fields().unwrap(),
        )),
    )
}

fn rejected(session: SessionId, id: u64, reason: RejectReason, kind: Kind) -> (SessionId, Report) {
    (
        session,
        Report::Rejected(Rejected::new(id, 0, reason, kind)),
    )
}

fn new_reject(id: u64, reason: RejectReason) -> (SessionId, Report) {
    rejected(S1, id, reason, Kind::NewOrder)
}

#[allow(clippy::too_many_arguments)]
fn fill(
    session: SessionId,
    id: u64,
    trade: u64,
    side: Side,
    liquidity: Liquidity,
    price: i64,
    qty: u64,
    leaves: u64,
) -> (SessionId, Report) {
    (
        session,
        Report::Fill(Fill::new(id, trade, 0, side, liquidity, price, qty, leaves)),
    )
}

fn canceled(session: SessionId, id: u64, reason: CancelReason, qty: u64) -> (SessionId, Report) {
    (session, Report::Canceled(Canceled::new(id, 0, reason, qty)))
}

fn replaced(session: SessionId, id: u64, kept: bool, price: i64, qty: u64) -> (SessionId, Report) {
    (
        session,
        Report::Replaced(Replaced::new(id, 0, kept, price, qty)),
    )
}

/// An OrderStatus on symbol 0.
fn status(
    session: SessionId,
    id: u64,
    order_id: u64,
    state: OrderState,
    filled: u64,
    leaves: u64,
) -> (SessionId, Report) {
    (
        session,
        Report::Status(OrderStatus::new(id, order_id, 0, state, filled, leaves)),
    )
}

// -------------------------------------------------------------------------
// Limit orders and ids
// -------------------------------------------------------------------------

#[test]
fn a_gtc_limit_order_is_accepted_and_rests() {
    let mut h = Harness::new();
    let o = NewOrder::limit(7, 0, Side::Buy, 100, 5);
    assert_eq!(h.submit(S1, o), [accepted(S1, &o, 1)]);
    assert_eq!(h.level(Side::Buy), [(100, 5, 1)]);
    assert_eq!(
        h.shard.best_bid(0),
        Some(LevelView {
            price: 100,
            quantity: 5,
            orders: 1
        })
    );
    assert_eq!(h.shard.best_ask(0), None);
    assert_eq!(h.shard.live_orders(), 1);
    let view = h.shard.order(A, 7).unwrap();
    assert_eq!(
        (
            view.price,
            view.open_quantity,
            view.owner_session,
            view.order_id
        ),
        (100, 5, S1, 1)
    );
}

#[test]
fn order_and_trade_ids_carry_the_shard_index_and_count_from_one() {
    // Shard 2 of 3 owns symbols 2 and 5 of 6.
    let mut h = Harness::with(Shard::new(2, 3, 6, small_config()));
    let mut out = Vec::new();
    for (session, op) in [
        (S1, Op::New(NewOrder::limit(1, 5, Side::Sell, 100, 5))),
        (S2, Op::New(NewOrder::limit(1, 2, Side::Buy, 100, 5))),
        (S2, Op::New(NewOrder::limit(2, 5, Side::Buy, 100, 5))),
    ] {
        h.shard.process(
            &Command {
                session,
                account: account_of(session),
                op,
            },
            NOW,
            &mut out,
        );
    }
    let ids: Vec<u64> = out
        .iter()
        .filter_map(|(_, r)| match r {
            Report::Accepted(a) => Some(a.order_id.get()),
            _ => None,
        })
        .collect();
    assert_eq!(ids, [(2 << 48) | 1, (2 << 48) | 2, (2 << 48) | 3]);
    let trades: Vec<u64> = out
        .iter()
        .filter_map(|(_, r)| match r {
            Report::Fill(f) => Some(f.trade_id.get()),
            _ => None,
        })
        .collect();
    assert_eq!(trades, [(2 << 48) | 1, (2 << 48) | 1]);
    assert!(h.shard.owns_symbol(5) && h.shard.owns_symbol(2));
    assert!(!h.shard.owns_symbol(3) && !h.shard.owns_symbol(8));
}

#[test]
fn rejected_orders_consume_no_order_id() {
    let mut h = Harness::new();
    h.submit(S1, NewOrder::limit(1, 0, Side::Buy, 0, 5));
    let o = NewOrder::limit(2, 0, Side::Buy, 10, 5);
    assert_eq!(h.submit(S1, o), [accepted(S1, &o, 1)]);
}

// -------------------------------------------------------------------------
// Validation, one reject reason at a time
// -------------------------------------------------------------------------

#[test]
fn symbols_of_other_shards_and_beyond_the_directory_are_unknown() {
    // Shard 0 of 2 with 3 symbols owns 0 and 2.
    let mut h = Harness::with(Shard::new(0, 2, 3, small_config()));
    for symbol in [1, 3, 4, u32::MAX] {
        let mut out = Vec::new();
        for op in [
            Op::New(NewOrder::limit(1, symbol, Side::Buy, 10, 1)),
            Op::Cancel(Cancel::new(1, symbol)),
            Op::Replace(Replace::new(1, symbol, 10, 1)),
            Op::Query(OrderQuery::new(1, symbol)),
        ] {
            h.shard.process(
                &Command {
                    session: S1,
                    account: A,
                    op,
                },
                NOW,
                &mut out,
            );
        }
        let want: Vec<_> = [
            Kind::NewOrder,
            Kind::Cancel,
            Kind::Replace,
            Kind::OrderQuery,
        ]
        .into_iter()
        .map(|k| {
            (
                S1,
                Report::Rejected(Rejected::new(1, symbol, RejectReason::UnknownSymbol, k)),
            )
        })
        .collect();
        assert_eq!(out, want, "symbol {symbol}");
    }
    let o = NewOrder::limit(1, 2, Side::Buy, 10, 1);
    let out = h.submit(S1, o);
    assert_eq!(out, [accepted(S1, &o, 1)]);
}

#[test]
fn bad_enum_fields_and_flags_are_rejected_with_their_reason() {
    let mut h = Harness::new();
    let good = NewOrder::limit(1, 0, Side::Buy, 10, 1);
    type Spoil = fn(&mut NewOrder);
    let cases: [(Spoil, RejectReason); 6] = [
        (|o| o.side = 0, RejectReason::InvalidSide),
        (|o| o.side = 3, RejectReason::InvalidSide),
        (|o| o.order_type = 9, RejectReason::InvalidOrderType),
        (|o| o.time_in_force = 4, RejectReason::InvalidTimeInForce),
        (|o| o.flags |= 0b0100, RejectReason::InvalidFlags),
        (
            |o| o.flags |= 0b11 << wire::ORDER_STP_SHIFT,
            RejectReason::InvalidFlags,
        ),
    ];
    for (i, (spoil, reason)) in cases.into_iter().enumerate() {
        let mut o = good;
        o.client_order_id = (i as u64 + 10).into();
        spoil(&mut o);
        assert_eq!(h.submit(S1, o), [new_reject(i as u64 + 10, reason)]);
    }
    assert_eq!(h.shard.live_orders(), 0);
}

#[test]
fn quantity_must_be_within_one_and_the_maximum() {
    let mut h = Harness::new();
    let out = h.submit(S1, NewOrder::limit(1, 0, Side::Buy, 10, 0));
    assert_eq!(out, [new_reject(1, RejectReason::InvalidQuantity)]);
    let out = h.submit(S1, NewOrder::limit(2, 0, Side::Buy, 10, 1_001));
    assert_eq!(out, [new_reject(2, RejectReason::InvalidQuantity)]);
    let o = NewOrder::limit(3, 0, Side::Buy, 10, 1_000);
    assert_eq!(h.submit(S1, o), [accepted(S1, &o, 1)]);
}

#[test]
fn limit_price_must_be_within_one_and_the_maximum_but_market_price_is_ignored() {
    let mut h = Harness::new();
    for (id, price) in [(1, 0), (2, -5), (3, 10_001), (4, i64::MIN)] {
        let out = h.submit(S1, NewOrder::limit(id, 0, Side::Sell, price, 1));
        assert_eq!(out, [new_reject(id, RejectReason::InvalidPrice)]);
    }
    let o = NewOrder::limit(5, 0, Side::Sell, 10_000, 1);
    assert_eq!(h.submit(S1, o), [accepted(S1, &o, 1)]);
    // A market order with a nonsense price is fine (it trades at the book).
    let m = order(6, Side::Buy, OrderType::Market, Tif::Ioc, -1, 1);
    let out = h.submit(S2, m);
    assert_eq!(out[0], accepted(S2, &m, 2));
    assert_eq!(out.len(), 3, "accept and two fills: {out:?}");
}

#[test]
fn order_type_time_in_force_and_post_only_must_fit_together() {
    let mut h = Harness::new();
    let market_gtc = order(1, Side::Buy, OrderType::Market, Tif::Gtc, 0, 1);
    assert_eq!(
        h.submit(S1, market_gtc),
        [new_reject(1, RejectReason::InvalidTimeInForce)]
    );
    let post_market = NewOrder::new(
        2,
        0,
        Side::Buy,
        OrderType::Market,
        Tif::Ioc,
        true,
        Stp::CancelIncoming,
        0,
        1,
    );
    assert_eq!(
        h.submit(S1, post_market),
        [new_reject(2, RejectReason::InvalidFlags)]
    );
    for (id, tif) in [(3, Tif::Ioc), (4, Tif::Fok)] {
        let o = NewOrder::new(
            id,
            0,
            Side::Buy,
            OrderType::Limit,
            tif,
            true,
            Stp::CancelIncoming,
            10,
            1,
        );
        assert_eq!(
            h.submit(S1, o),
            [new_reject(id, RejectReason::InvalidTimeInForce)]
        );
    }
}

#[test]
fn validation_reports_the_first_failing_rule() {
    let mut h = Harness::with(Shard::new(0, 2, 4, small_config()));
    // Unknown symbol beats a bad side.
    let mut o = NewOrder::limit(1, 1, Side::Buy, 0, 0);
    o.side = 0;
    let mut out = Vec::new();
    h.shard.process(
        &Command {
            session: S1,
            account: A,
            op: Op::New(o),
        },
        NOW,
        &mut out,
    );
    assert_eq!(
        out,
        [(
            S1,
            Report::Rejected(Rejected::new(
                1,
                1,
                RejectReason::UnknownSymbol,
                Kind::NewOrder
            ))
        )]
    );
    // Bad side beats bad quantity; quantity beats price; price beats tif.
    let mut o = NewOrder::limit(2, 0, Side::Buy, 0, 0);
    o.side = 0;
    assert_eq!(h.submit(S1, o), [new_reject(2, RejectReason::InvalidSide)]);
    let o = NewOrder::limit(3, 0, Side::Buy, 0, 0);
    assert_eq!(
        h.submit(S1, o),
        [new_reject(3, RejectReason::InvalidQuantity)]
    );
    let o = NewOrder::new(
        4,
        0,
        Side::Buy,
        OrderType::Limit,
        Tif::Ioc,
        true,
        Stp::CancelIncoming,
        0,
        1,
    );
    assert_eq!(h.submit(S1, o), [new_reject(4, RejectReason::InvalidPrice)]);
    // A duplicate that is also post-only-crossing reports the duplicate,
    // then the status of the order it duplicates.
    h.rest(S2, 5, Side::Sell, 50, 1);
    let existing = h.rest(S1, 6, Side::Buy, 40, 1);
    let o = NewOrder::new(
        6,
        0,
        Side::Buy,
        OrderType::Limit,
        Tif::Gtc,
        true,
        Stp::CancelIncoming,
        60,
        1,
    );
    assert_eq!(
        h.submit(S1, o),
        [
            new_reject(6, RejectReason::DuplicateClientOrderId),
            status(S1, 6, existing, OrderState::Live, 0, 1),
        ]
    );
}

#[test]
fn a_live_or_remembered_key_is_a_duplicate_but_other_accounts_and_forgotten_keys_are_not() {
    let mut h = Harness::new();
    let first = h.rest(S1, 1, Side::Buy, 10, 1);
    // Another session of the same account: same key. The reject is followed
    // by the existing order's status.
    assert_eq!(
        h.submit(S3, NewOrder::limit(1, 0, Side::Sell, 20, 1)),
        [
            rejected(S3, 1, RejectReason::DuplicateClientOrderId, Kind::NewOrder),
            status(S3, 1, first, OrderState::Live, 0, 1),
        ]
    );
    // Another account may use the same id.
    h.rest(S2, 1, Side::Sell, 20, 1);
    // Once the order is gone the history still holds the key: a client
    // resending an order it never saw acknowledged learns what became of it
    // instead of trading twice.
    h.cancel(S1, 1);
    assert_eq!(
        h.submit(S3, NewOrder::limit(1, 0, Side::Buy, 11, 1)),
        [
            rejected(S3, 1, RejectReason::DuplicateClientOrderId, Kind::NewOrder),
            status(S3, 1, first, OrderState::Canceled, 0, 0),
        ]
    );
    // The history holds 8 (small_config); after 8 more terminated orders
    // the key is forgotten and may be used again.
    for id in 100..108 {
        h.rest(S1, id, Side::Buy, 10, 1);
        h.cancel(S1, id);
    }
    assert_eq!(h.shard.finished_order(A, 1), None);
    assert!(h.shard.finished_order(A, 100).is_some());
    h.rest(S1, 1, Side::Buy, 11, 1);
}

#[test]
fn a_duplicate_of_a_filled_order_names_the_filled_orders_symbol_and_fills() {
    let mut h = Harness::with(Shard::new(0, 1, 4, small_config()));
    h.rest(S2, 1, Side::Sell, 10, 5);
    let mut out = Vec::new();
    let cmd = |symbol| Command {
        session: S1,
        account: A,
        op: Op::New(NewOrder::limit(7, symbol, Side::Buy, 10, 5)),
    };
    h.shard.process(&cmd(0), NOW, &mut out);
    assert!(matches!(out.last(), Some((S1, Report::Fill(f))) if f.leaves_quantity.get() == 0));
    // The same key on another symbol of the shard: still a duplicate, and
    // the status describes the order that exists (symbol 0, filled).
    out.clear();
    h.shard.process(&cmd(3), NOW, &mut out);
    assert_eq!(
        out,
        [
            (
                S1,
                Report::Rejected(Rejected::new(
                    7,
                    3,
                    RejectReason::DuplicateClientOrderId,
                    Kind::NewOrder
                ))
            ),
            status(S1, 7, 2, OrderState::Filled, 5, 0),
        ]
    );
    assert_eq!(h.shard.live_orders(), 0);
}

#[test]
fn rejected_orders_are_not_remembered() {
    let mut h = Harness::new();
    // Invalid price: rejected before it becomes an order.
    h.submit(S1, NewOrder::limit(1, 0, Side::Buy, 0, 5));
    assert_eq!(h.shard.finished_order(A, 1), None);
    assert_eq!(
        h.run(S1, Op::Query(OrderQuery::new(1, 0))),
        [status(S1, 1, 0, OrderState::Unknown, 0, 0)]
    );
    // Its key is free: the shard accepts it (the session layer's
    // increasing-id rule is separate).
    h.rest(S3, 1, Side::Buy, 10, 5);
}

#[test]
fn book_full_is_checked_for_orders_that_could_rest_before_anything_happens() {
    let mut cfg = small_config();
    cfg.orders_max = 2;
    let mut h = Harness::with(Shard::new(0, 1, 1, cfg));
    h.rest(S1, 1, Side::Sell, 20, 5);
    h.rest(S1, 2, Side::Buy, 10, 5);
    assert_eq!(
        h.submit(S2, NewOrder::limit(3, 0, Side::Buy, 9, 1)),
        [rejected(S2, 3, RejectReason::BookFull, Kind::NewOrder)]
    );
    // Even a GTC order that would fill completely is refused up front...
    assert_eq!(
        h.submit(S2, NewOrder::limit(4, 0, Side::Buy, 20, 1)),
        [rejected(S2, 4, RejectReason::BookFull, Kind::NewOrder)]
    );
    // ...while an IOC never needs a slot.
    let ioc = order(5, Side::Buy, OrderType::Limit, Tif::Ioc, 20, 1);
    assert_eq!(h.submit(S2, ioc).len(), 3);
    assert_eq!(h.level(Side::Sell), [(20, 4, 1)]);
    // A freed slot is usable again.
    h.cancel(S1, 2);
    h.rest(S2, 6, Side::Buy, 9, 1);
}

#[test]
fn price_levels_full_refuses_a_new_price_but_not_an_existing_one() {
    let mut cfg = small_config();
    cfg.levels_per_side_max = 2;
    let mut h = Harness::with(Shard::new(0, 1, 1, cfg));
    h.rest(S1, 1, Side::Buy, 10, 1);
    h.rest(S1, 2, Side::Buy, 9, 1);
    assert_eq!(
        h.submit(S1, NewOrder::limit(3, 0, Side::Buy, 8, 1)),
        [new_reject(3, RejectReason::PriceLevelsFull)]
    );
    h.rest(S1, 4, Side::Buy, 9, 1);
    // The other side has its own limit.
    h.rest(S2, 5, Side::Sell, 20, 1);
    h.rest(S2, 6, Side::Sell, 21, 1);
    // A crossing GTC buy needs a new bid level on a full side: refused
    // before it trades, like BookFull.
    assert_eq!(
        h.submit(S1, NewOrder::limit(7, 0, Side::Buy, 20, 1)),
        [new_reject(7, RejectReason::PriceLevelsFull)]
    );
    assert_eq!(h.level(Side::Sell), [(20, 1, 1), (21, 1, 1)]);
}

#[test]
fn post_only_rests_unless_it_would_take() {
    let mut h = Harness::new();
    h.rest(S2, 1, Side::Sell, 20, 5);
    let post = |id, price| {
        NewOrder::new(
            id,
            0,
            Side::Buy,
            OrderType::Limit,
            Tif::Gtc,
            true,
            Stp::CancelIncoming,
            price,
            1,
        )
    };
    assert_eq!(
        h.submit(S1, post(2, 20)),
        [new_reject(2, RejectReason::PostOnlyWouldTake)]
    );
    assert_eq!(
        h.submit(S1, post(3, 25)),
        [new_reject(3, RejectReason::PostOnlyWouldTake)]
    );
    let o = post(4, 19);
    assert_eq!(h.submit(S1, o), [accepted(S1, &o, 2)]);
    assert!(h.shard.order(A, 4).unwrap().post_only);
}

#[test]
fn a_market_order_on_an_empty_side_has_no_liquidity() {
    let mut h = Harness::new();
    h.rest(S2, 1, Side::Buy, 20, 5);
    let m = order(2, Side::Buy, OrderType::Market, Tif::Ioc, 0, 1);
    assert_eq!(h.submit(S1, m), [new_reject(2, RejectReason::NoLiquidity)]);
    let m = order(3, Side::Sell, OrderType::Market, Tif::Fok, 0, 1);
    assert_eq!(h.submit(S1, m).len(), 3);
}

// -------------------------------------------------------------------------
// Matching
// -------------------------------------------------------------------------

#[test]
fn a_crossing_order_sweeps_levels_in_price_then_time_priority_at_maker_prices() {
    let mut h = Harness::new();
    h.rest(S3, 1, Side::Sell, 101, 3);
    h.rest(S2, 2, Side::Sell, 100, 2);
    h.rest(S3, 3, Side::Sell, 100, 4);
    h.rest(S2, 4, Side::Sell, 102, 9);
    let o = NewOrder::limit(9, 0, Side::Buy, 101, 8);
    use Liquidity::{Maker, Taker};
    assert_eq!(
        h.submit(S1, o),
        [
            accepted(S1, &o, 5),
            fill(S2, 2, 1, Side::Sell, Maker, 100, 2, 0),
            fill(S1, 9, 1, Side::Buy, Taker, 100, 2, 6),
            // S3's order is account A's, like the taker's: default STP is
            // cancel-incoming.
            canceled(S1, 9, CancelReason::SelfTrade, 6),
        ]
    );
    // With another account the sweep continues through the levels.
    let o = NewOrder::limit(9, 0, Side::Buy, 101, 8);
    assert_eq!(
        h.submit(S2, o),
        [
            accepted(S2, &o, 6),
            fill(S3, 3, 2, Side::Sell, Maker, 100, 4, 0),
            fill(S2, 9, 2, Side::Buy, Taker, 100, 4, 4),
            fill(S3, 1, 3, Side::Sell, Maker, 101, 3, 0),
            fill(S2, 9, 3, Side::Buy, Taker, 101, 3, 1),
        ]
    );
    // The remainder rests at its limit.
    assert_eq!(h.level(Side::Buy), [(101, 1, 1)]);
    assert_eq!(h.level(Side::Sell), [(102, 9, 1)]);
    assert_eq!(h.shard.order(B, 9).unwrap().filled_quantity, 7);
}

#[test]
fn a_partially_filled_maker_keeps_its_place() {
    let mut h = Harness::new();
    h.rest(S2, 1, Side::Buy, 50, 10);
    h.rest(S2, 2, Side::Buy, 50, 10);
    let out = h.submit(S1, NewOrder::limit(3, 0, Side::Sell, 50, 4));
    assert_eq!(
        out[1..],
        [
            fill(S2, 1, 1, Side::Buy, Liquidity::Maker, 50, 4, 6),
            fill(S1, 3, 1, Side::Sell, Liquidity::Taker, 50, 4, 0),
        ]
    );
    assert_eq!(h.queue(Side::Buy), [1, 2]);
    assert_eq!(h.level(Side::Buy), [(50, 16, 2)]);
    assert_eq!(h.level(Side::Sell), []);
}

#[test]
fn ioc_cancels_its_remainder_whether_or_not_it_traded() {
    let mut h = Harness::new();
    h.rest(S2, 1, Side::Sell, 100, 3);
    let o = order(2, Side::Buy, OrderType::Limit, Tif::Ioc, 100, 5);
    assert_eq!(
        h.submit(S1, o),
        [
            accepted(S1, &o, 2),
            fill(S2, 1, 1, Side::Sell, Liquidity::Maker, 100, 3, 0),
            fill(S1, 2, 1, Side::Buy, Liquidity::Taker, 100, 3, 2),
            canceled(S1, 2, CancelReason::IocRemainder, 2),
        ]
    );
    let o = order(3, Side::Buy, OrderType::Limit, Tif::Ioc, 100, 5);
    assert_eq!(
        h.submit(S1, o),
        [
            accepted(S1, &o, 3),
            canceled(S1, 3, CancelReason::IocRemainder, 5)
        ]
    );
    assert_eq!(h.shard.live_orders(), 0);
}

#[test]
fn fok_fills_completely_or_leaves_the_book_unchanged() {
    let mut h = Harness::new();
    h.rest(S2, 1, Side::Sell, 100, 3);
    h.rest(S2, 2, Side::Sell, 101, 3);
    let digest = h.shard.state_digest();
    let o = order(3, Side::Buy, OrderType::Limit, Tif::Fok, 101, 7);
    assert_eq!(
        h.submit(S1, o),
        [
            accepted(S1, &o, 3),
            canceled(S1, 3, CancelReason::FokUnfilled, 7)
        ]
    );
    // Only the order id counter moved.
    assert_ne!(h.shard.state_digest(), digest);
    assert_eq!(h.level(Side::Sell), [(100, 3, 1), (101, 3, 1)]);
    let o = order(4, Side::Buy, OrderType::Limit, Tif::Fok, 101, 6);
    let out = h.submit(S1, o);
    assert_eq!(out.len(), 5, "{out:?}");
    assert_eq!(
        out[4],
        fill(S1, 4, 2, Side::Buy, Liquidity::Taker, 101, 3, 0)
    );
    assert_eq!(h.shard.live_orders(), 0);
}

#[test]
fn fok_counts_liquidity_exactly_as_self_trade_prevention_would_leave_it() {
    let mut h = Harness::new();
    h.rest(S1, 1, Side::Sell, 100, 5); // account A
    h.rest(S2, 2, Side::Sell, 100, 3); // account B
    // Cancel-incoming stops at A's own order: nothing can fill.
    let o = order(3, Side::Buy, OrderType::Limit, Tif::Fok, 100, 3);
    assert_eq!(
        h.submit(S3, o),
        [
            accepted(S3, &o, 3),
            canceled(S3, 3, CancelReason::FokUnfilled, 3)
        ]
    );
    // Cancel-resting skips A's order: 3 available, 4 is too many, and the
    // book stays unchanged (A's order is not canceled).
    let o = with_stp(
        order(4, Side::Buy, OrderType::Limit, Tif::Fok, 100, 4),
        Stp::CancelResting,
    );
    assert_eq!(
        h.submit(S3, o),
        [
            accepted(S3, &o, 4),
            canceled(S3, 4, CancelReason::FokUnfilled, 4)
        ]
    );
    assert_eq!(h.queue(Side::Sell), [1, 2]);
    // 3 fits: A's order is canceled on the way, then B's fills it.
    let o = with_stp(
        order(5, Side::Buy, OrderType::Limit, Tif::Fok, 100, 3),
        Stp::CancelResting,
    );
    assert_eq!(
        h.submit(S3, o),
        [
            accepted(S3, &o, 5),
            canceled(S1, 1, CancelReason::SelfTrade, 5),
            fill(S2, 2, 1, Side::Sell, Liquidity::Maker, 100, 3, 0),
            fill(S3, 5, 1, Side::Buy, Liquidity::Taker, 100, 3, 0),
        ]
    );
    assert_eq!(h.shard.live_orders(), 0);
}

#[test]
fn market_orders_trade_within_the_band_and_say_why_the_rest_is_canceled() {
    let mut h = Harness::new();
    h.rest(S2, 1, Side::Sell, 100, 2);
    h.rest(S2, 2, Side::Sell, 105, 2); // best + band: inside
    h.rest(S2, 3, Side::Sell, 106, 2); // beyond the band
    let m = order(4, Side::Buy, OrderType::Market, Tif::Ioc, 0, 10);
    use Liquidity::{Maker, Taker};
    assert_eq!(
        h.submit(S1, m),
        [
            accepted(S1, &m, 4),
            fill(S2, 1, 1, Side::Sell, Maker, 100, 2, 0),
            fill(S1, 4, 1, Side::Buy, Taker, 100, 2, 8),
            fill(S2, 2, 2, Side::Sell, Maker, 105, 2, 0),
            fill(S1, 4, 2, Side::Buy, Taker, 105, 2, 6),
            canceled(S1, 4, CancelReason::PriceBand, 6),
        ]
    );
    // The band is measured from the best price at arrival (now 106).
    let m = order(5, Side::Buy, OrderType::Market, Tif::Ioc, 0, 10);
    assert_eq!(
        h.submit(S1, m),
        [
            accepted(S1, &m, 5),
            fill(S2, 3, 3, Side::Sell, Maker, 106, 2, 0),
            fill(S1, 5, 3, Side::Buy, Taker, 106, 2, 8),
            canceled(S1, 5, CancelReason::IocRemainder, 8),
        ]
    );
    // Sells trade down to best bid - band.
    h.rest(S2, 6, Side::Buy, 50, 1);
    h.rest(S2, 7, Side::Buy, 44, 1);
    let m = order(8, Side::Sell, OrderType::Market, Tif::Ioc, 0, 2);
    let out = h.submit(S1, m);
    assert_eq!(out[3], canceled(S1, 8, CancelReason::PriceBand, 1));
}

#[test]
fn market_fok_must_fill_within_the_band() {
    let mut h = Harness::new();
    h.rest(S2, 1, Side::Buy, 50, 2);
    h.rest(S2, 2, Side::Buy, 40, 5);
    let m = order(3, Side::Sell, OrderType::Market, Tif::Fok, 0, 3);
    assert_eq!(
        h.submit(S1, m),
        [
            accepted(S1, &m, 3),
            canceled(S1, 3, CancelReason::FokUnfilled, 3)
        ]
    );
    let m = order(4, Side::Sell, OrderType::Market, Tif::Fok, 0, 2);
    assert_eq!(h.submit(S1, m).len(), 3);
    assert_eq!(h.level(Side::Buy), [(40, 5, 1)]);
}

#[test]
fn self_trade_prevention_cancel_incoming_keeps_the_resting_order() {
    let mut h = Harness::new();
    h.rest(S2, 1, Side::Sell, 100, 1);
    h.rest(S1, 2, Side::Sell, 100, 5);
    h.rest(S2, 3, Side::Sell, 100, 1);
    // A GTC that meets its own account's order is canceled, not rested.
    let o = NewOrder::limit(4, 0, Side::Buy, 100, 3);
    assert_eq!(
        h.submit(S3, o),
        [
            accepted(S3, &o, 4),
            fill(S2, 1, 1, Side::Sell, Liquidity::Maker, 100, 1, 0),
            fill(S3, 4, 1, Side::Buy, Liquidity::Taker, 100, 1, 2),
            canceled(S3, 4, CancelReason::SelfTrade, 2),
        ]
    );
    assert_eq!(h.queue(Side::Sell), [2, 3]);
    assert_eq!(h.level(Side::Buy), []);
}

#[test]
fn self_trade_prevention_cancel_resting_cancels_to_the_owner_and_goes_on() {
    let mut h = Harness::new();
    h.rest(S1, 1, Side::Sell, 100, 5);
    h.rest(S2, 2, Side::Sell, 101, 1);
    let o = with_stp(NewOrder::limit(3, 0, Side::Buy, 101, 3), Stp::CancelResting);
    assert_eq!(
        h.submit(S3, o),
        [
            accepted(S3, &o, 3),
            canceled(S1, 1, CancelReason::SelfTrade, 5),
            fill(S2, 2, 1, Side::Sell, Liquidity::Maker, 101, 1, 0),
            fill(S3, 3, 1, Side::Buy, Liquidity::Taker, 101, 1, 2),
        ]
    );
    assert_eq!(h.level(Side::Buy), [(101, 2, 1)]);
    assert_eq!(h.level(Side::Sell), []);
}

#[test]
fn self_trade_prevention_cancel_both_cancels_resting_then_incoming() {
    let mut h = Harness::new();
    h.rest(S1, 1, Side::Sell, 100, 5);
    h.rest(S2, 2, Side::Sell, 100, 1);
    let o = with_stp(NewOrder::limit(3, 0, Side::Buy, 100, 3), Stp::CancelBoth);
    assert_eq!(
        h.submit(S3, o),
        [
            accepted(S3, &o, 3),
            canceled(S1, 1, CancelReason::SelfTrade, 5),
            canceled(S3, 3, CancelReason::SelfTrade, 3),
        ]
    );
    assert_eq!(h.queue(Side::Sell), [2]);
}

// -------------------------------------------------------------------------
// Cancel, replace, query, disconnect
// -------------------------------------------------------------------------

#[test]
fn cancel_reports_the_open_quantity_to_the_requesting_session() {
    let mut h = Harness::new();
    h.rest(S1, 1, Side::Buy, 10, 5);
    h.submit(S2, order(2, Side::Sell, OrderType::Limit, Tif::Ioc, 10, 2));
    // Another session of the same account may cancel it.
    assert_eq!(
        h.cancel(S3, 1),
        [canceled(S3, 1, CancelReason::Requested, 3)]
    );
    assert_eq!(
        h.cancel(S3, 1),
        [rejected(S3, 1, RejectReason::UnknownOrder, Kind::Cancel)]
    );
    // Another account cannot.
    h.rest(S1, 3, Side::Buy, 10, 5);
    assert_eq!(
        h.cancel(S2, 3),
        [rejected(S2, 3, RejectReason::UnknownOrder, Kind::Cancel)]
    );
    assert_eq!(h.level(Side::Buy), [(10, 5, 1)]);
}

#[test]
fn cancel_replace_and_query_name_the_symbol_the_order_lives_in() {
    let mut h = Harness::new();
    h.rest(S1, 1, Side::Buy, 10, 5);
    let mut out = Vec::new();
    for op in [
        Op::Cancel(Cancel::new(1, 2)),
        Op::Replace(Replace::new(1, 2, 10, 1)),
        Op::Query(OrderQuery::new(1, 2)),
    ] {
        h.shard.process(
            &Command {
                session: S1,
                account: A,
                op,
            },
            NOW,
            &mut out,
        );
    }
    assert_eq!(
        out,
        [
            (
                S1,
                Report::Rejected(Rejected::new(
                    1,
                    2,
                    RejectReason::UnknownOrder,
                    Kind::Cancel
                ))
            ),
            (
                S1,
                Report::Rejected(Rejected::new(
                    1,
                    2,
                    RejectReason::UnknownOrder,
                    Kind::Replace
                ))
            ),
            (
                S1,
                Report::Status(OrderStatus::new(1, 0, 2, OrderState::Unknown, 0, 0))
            ),
        ]
    );
    assert_eq!(h.shard.live_orders(), 1);
}

#[test]
fn replace_reducing_at_the_same_price_keeps_priority() {
    let mut h = Harness::new();
    h.rest(S1, 1, Side::Buy, 10, 5);
    h.rest(S2, 2, Side::Buy, 10, 5);
    assert_eq!(h.replace(S1, 1, 10, 2), [replaced(S1, 1, true, 10, 2)]);
    assert_eq!(h.replace(S1, 1, 10, 2), [replaced(S1, 1, true, 10, 2)]);
    assert_eq!(h.queue(Side::Buy), [1, 2]);
    assert_eq!(h.level(Side::Buy), [(10, 7, 2)]);
}

#[test]
fn replace_increasing_or_moving_loses_priority() {
    let mut h = Harness::new();
    h.rest(S1, 1, Side::Buy, 10, 5);
    h.rest(S2, 2, Side::Buy, 10, 5);
    h.rest(S2, 3, Side::Buy, 9, 5);
    assert_eq!(h.replace(S1, 1, 10, 6), [replaced(S1, 1, false, 10, 6)]);
    assert_eq!(h.queue(Side::Buy), [2, 1, 3]);
    assert_eq!(h.replace(S2, 2, 9, 5), [replaced(S2, 2, false, 9, 5)]);
    assert_eq!(h.queue(Side::Buy), [1, 3, 2]);
    assert_eq!(h.level(Side::Buy), [(10, 6, 1), (9, 10, 2)]);
    // Moving back keeps the order id.
    let id = h.shard.order(B, 2).unwrap().order_id;
    h.replace(S2, 2, 11, 5);
    assert_eq!(h.shard.order(B, 2).unwrap().order_id, id);
    assert_eq!(h.queue(Side::Buy), [2, 1, 3]);
}

#[test]
fn a_crossing_replace_reports_first_then_fills_then_rests_the_remainder() {
    let mut h = Harness::new();
    h.rest(S2, 1, Side::Sell, 12, 2);
    h.rest(S1, 2, Side::Buy, 10, 5);
    // Session 3 (account A) replaces session 1's order and becomes its owner.
    assert_eq!(
        h.replace(S3, 2, 12, 5),
        [
            replaced(S3, 2, false, 12, 5),
            fill(S2, 1, 1, Side::Sell, Liquidity::Maker, 12, 2, 0),
            fill(S3, 2, 1, Side::Buy, Liquidity::Taker, 12, 2, 3),
        ]
    );
    let view = h.shard.order(A, 2).unwrap();
    assert_eq!(
        (
            view.price,
            view.open_quantity,
            view.filled_quantity,
            view.owner_session
        ),
        (12, 3, 2, S3)
    );
    // Later fills of the order go to its new owner.
    let out = h.submit(S2, NewOrder::limit(3, 0, Side::Sell, 12, 1));
    assert_eq!(
        out[1],
        fill(S3, 2, 2, Side::Buy, Liquidity::Maker, 12, 1, 2)
    );
    // A replace that fills completely ends the order.
    h.rest(S2, 4, Side::Sell, 13, 9);
    let out = h.replace(S1, 2, 13, 2);
    assert_eq!(
        out[2],
        fill(S1, 2, 3, Side::Buy, Liquidity::Taker, 13, 2, 0)
    );
    assert_eq!(h.shard.order(A, 2), None);
}

#[test]
fn a_crossing_replace_obeys_the_orders_self_trade_prevention() {
    let mut h = Harness::new();
    h.rest(S1, 1, Side::Sell, 12, 2);
    h.rest(S1, 2, Side::Buy, 10, 5);
    assert_eq!(
        h.replace(S1, 2, 12, 5),
        [
            replaced(S1, 2, false, 12, 5),
            canceled(S1, 2, CancelReason::SelfTrade, 5)
        ]
    );
    assert_eq!(h.queue(Side::Sell), [1]);
    assert_eq!(h.queue(Side::Buy), [0u64; 0]);
}

#[test]
fn replace_validates_quantity_price_and_key() {
    let mut h = Harness::new();
    h.rest(S1, 1, Side::Buy, 10, 5);
    let r = |reason| [rejected(S1, 1, reason, Kind::Replace)];
    assert_eq!(h.replace(S1, 1, 10, 0), r(RejectReason::InvalidQuantity));
    assert_eq!(
        h.replace(S1, 1, 10, 1_001),
        r(RejectReason::InvalidQuantity)
    );
    assert_eq!(h.replace(S1, 1, 0, 5), r(RejectReason::InvalidPrice));
    assert_eq!(h.replace(S1, 1, 10_001, 5), r(RejectReason::InvalidPrice));
    // Field checks come before the lookup.
    assert_eq!(
        h.replace(S1, 9, 0, 5),
        [rejected(S1, 9, RejectReason::InvalidPrice, Kind::Replace)]
    );
    assert_eq!(
        h.replace(S1, 9, 10, 5),
        [rejected(S1, 9, RejectReason::UnknownOrder, Kind::Replace)]
    );
    assert_eq!(
        h.replace(S2, 1, 10, 5),
        [rejected(S2, 1, RejectReason::UnknownOrder, Kind::Replace)]
    );
    assert_eq!(h.level(Side::Buy), [(10, 5, 1)]);
}

#[test]
fn a_post_only_replace_that_would_take_is_rejected_and_the_order_unchanged() {
    let mut h = Harness::new();
    h.rest(S2, 1, Side::Sell, 12, 2);
    let post = NewOrder::new(
        2,
        0,
        Side::Buy,
        OrderType::Limit,
        Tif::Gtc,
        true,
        Stp::CancelIncoming,
        10,
        5,
    );
    h.submit(S1, post);
    assert_eq!(
        h.replace(S1, 2, 12, 5),
        [rejected(
            S1,
            2,
            RejectReason::PostOnlyWouldTake,
            Kind::Replace
        )]
    );
    assert_eq!(h.level(Side::Buy), [(10, 5, 1)]);
    assert_eq!(h.replace(S1, 2, 11, 5), [replaced(S1, 2, false, 11, 5)]);
}

#[test]
fn a_replace_needing_a_level_on_a_full_side_is_rejected_unless_it_frees_one() {
    let mut cfg = small_config();
    cfg.levels_per_side_max = 2;
    let mut h = Harness::with(Shard::new(0, 1, 1, cfg));
    h.rest(S1, 1, Side::Buy, 10, 1);
    h.rest(S1, 2, Side::Buy, 9, 1);
    h.rest(S1, 3, Side::Buy, 9, 1);
    // Order 3 shares level 9: moving it to 8 needs a third level.
    assert_eq!(
        h.replace(S1, 3, 8, 1),
        [rejected(
            S1,
            3,
            RejectReason::PriceLevelsFull,
            Kind::Replace
        )]
    );
    assert_eq!(h.queue(Side::Buy), [1, 2, 3]);
    // Order 1 is alone at 10: moving it to 8 frees its level.
    assert_eq!(h.replace(S1, 1, 8, 1), [replaced(S1, 1, false, 8, 1)]);
    assert_eq!(h.level(Side::Buy), [(9, 2, 2), (8, 1, 1)]);
}

#[test]
fn query_reports_live_orders_with_fills_and_unknown_otherwise() {
    let mut h = Harness::new();
    let id = h.rest(S1, 1, Side::Buy, 10, 5);
    h.submit(S2, order(2, Side::Sell, OrderType::Limit, Tif::Ioc, 10, 2));
    let q = |h: &mut Harness, session, id| h.run(session, Op::Query(OrderQuery::new(id, 0)));
    assert_eq!(
        q(&mut h, S3, 1),
        [status(S3, 1, id, OrderState::Live, 2, 3)]
    );
    assert_eq!(
        q(&mut h, S2, 1),
        [status(S2, 1, 0, OrderState::Unknown, 0, 0)]
    );
}

#[test]
fn query_reports_terminated_orders_from_the_history_with_their_fills() {
    let mut h = Harness::new();
    let q = |h: &mut Harness, session, id| h.run(session, Op::Query(OrderQuery::new(id, 0)));
    // Maker 1 fills completely; taker 2 (IOC) fills 3 of 5 and is canceled.
    let maker = h.rest(S2, 1, Side::Sell, 10, 3);
    let taker = order(2, Side::Buy, OrderType::Limit, Tif::Ioc, 10, 5);
    assert_eq!(h.submit(S1, taker).len(), 4);
    assert_eq!(
        q(&mut h, S2, 1),
        [status(S2, 1, maker, OrderState::Filled, 3, 0)]
    );
    assert_eq!(
        q(&mut h, S3, 2),
        [status(S3, 2, maker + 1, OrderState::Canceled, 3, 0)]
    );
    // A FOK that could not fill: canceled with nothing filled.
    let fok = order(3, Side::Buy, OrderType::Limit, Tif::Fok, 10, 5);
    h.submit(S1, fok);
    assert_eq!(
        q(&mut h, S1, 3),
        [status(S1, 3, maker + 2, OrderState::Canceled, 0, 0)]
    );
    // A replace that crosses and fills completely: filled over its life.
    let resting = h.rest(S1, 4, Side::Buy, 8, 4);
    h.rest(S2, 5, Side::Sell, 9, 10);
    assert_eq!(h.replace(S1, 4, 9, 4).len(), 3);
    assert_eq!(
        q(&mut h, S1, 4),
        [status(S1, 4, resting, OrderState::Filled, 4, 0)]
    );
    // Self-trade prevention and disconnects cancel into the history too.
    let own = h.rest(S1, 6, Side::Buy, 5, 2);
    let stp = with_stp(NewOrder::limit(7, 0, Side::Sell, 5, 1), Stp::CancelResting);
    h.submit(S3, stp);
    assert_eq!(
        q(&mut h, S1, 6),
        [status(S1, 6, own, OrderState::Canceled, 0, 0)]
    );
    h.run(S3, Op::CancelSession);
    assert_eq!(
        q(&mut h, S1, 7),
        [status(S1, 7, own + 1, OrderState::Canceled, 0, 0)]
    );
    // Another account, or another symbol, knows nothing of them.
    assert_eq!(
        q(&mut h, S2, 2),
        [status(S2, 2, 0, OrderState::Unknown, 0, 0)]
    );
    let mut out = Vec::new();
    h.shard.process(
        &Command {
            session: S1,
            account: A,
            op: Op::Query(OrderQuery::new(2, 1)),
        },
        NOW,
        &mut out,
    );
    assert_eq!(
        out,
        [(
            S1,
            Report::Status(OrderStatus::new(2, 0, 1, OrderState::Unknown, 0, 0))
        )]
    );
    let kept: Vec<(u64, OrderState)> = h
        .shard
        .history()
        .map(|e| (e.client_order_id, e.state))
        .collect();
    assert_eq!(
        kept,
        [
            (1, OrderState::Filled),
            (2, OrderState::Canceled),
            (3, OrderState::Canceled),
            (4, OrderState::Filled),
            (6, OrderState::Canceled),
            (7, OrderState::Canceled),
        ],
        "remembered in the order of their terminal reports"
    );
}

#[test]
fn the_history_forgets_the_oldest_first() {
    let mut h = Harness::new();
    for id in 1..=9 {
        h.rest(S1, id, Side::Buy, 10, 1);
        h.cancel(S1, id);
    }
    let q = |h: &mut Harness, id| h.run(S1, Op::Query(OrderQuery::new(id, 0)));
    assert_eq!(q(&mut h, 1), [status(S1, 1, 0, OrderState::Unknown, 0, 0)]);
    assert_eq!(q(&mut h, 2), [status(S1, 2, 2, OrderState::Canceled, 0, 0)]);
    assert_eq!(q(&mut h, 9), [status(S1, 9, 9, OrderState::Canceled, 0, 0)]);
    assert_eq!(h.shard.history().count(), 8);
}

#[test]
fn cancel_session_cancels_only_that_sessions_orders_in_book_order() {
    let mut h = Harness::with(Shard::new(0, 1, 2, small_config()));
    let mut run = |session, op| {
        let mut out = Vec::new();
        h.shard.process(
            &Command {
                session,
                account: account_of(session),
                op,
            },
            NOW,
            &mut out,
        );
        out
    };
    run(S1, Op::New(NewOrder::limit(1, 1, Side::Buy, 10, 1)));
    run(S1, Op::New(NewOrder::limit(2, 0, Side::Sell, 30, 2)));
    run(S1, Op::New(NewOrder::limit(3, 0, Side::Buy, 9, 3)));
    run(S1, Op::New(NewOrder::limit(4, 0, Side::Buy, 10, 4)));
    run(S2, Op::New(NewOrder::limit(5, 0, Side::Buy, 10, 5)));
    run(S1, Op::New(NewOrder::limit(6, 0, Side::Buy, 10, 6)));
    run(S1, Op::New(NewOrder::limit(7, 0, Side::Sell, 20, 7)));
    // Session 3 takes order 6 over by replacing it.
    run(S3, Op::Replace(Replace::new(6, 0, 10, 6)));
    let out = run(S1, Op::CancelSession);
    let d = CancelReason::Disconnect;
    let c = |id, symbol, qty| (S1, Report::Canceled(Canceled::new(id, symbol, d, qty)));
    assert_eq!(
        out,
        [c(4, 0, 4), c(3, 0, 3), c(7, 0, 7), c(2, 0, 2), c(1, 1, 1)]
    );
    assert_eq!(h.shard.live_orders(), 2);
    assert_eq!(h.shard.check_invariants(), Ok(()));
    let mut out = Vec::new();
    h.shard.process(
        &Command {
            session: S1,
            account: A,
            op: Op::CancelSession,
        },
        NOW,
        &mut out,
    );
    assert_eq!(out, []);
}

#[test]
fn the_digest_depends_on_state_and_not_on_anything_else() {
    let run = |price| {
        let mut h = Harness::new();
        h.rest(S1, 1, Side::Buy, price, 5);
        h.rest(S2, 2, Side::Sell, 20, 5);
        h.shard.state_digest()
    };
    assert_eq!(run(10), run(10));
    assert_ne!(run(10), run(11));
}

#[test]
fn invalid_configurations_say_what_is_wrong() {
    let cfg = ShardConfig::default();
    assert!(cfg.validate().is_ok());
    assert_eq!(
        Shard::try_new(0, 0, 1, cfg).unwrap_err(),
        ConfigError::NoShards
    );
    assert!(matches!(
        Shard::try_new(2, 2, 4, cfg),
        Err(ConfigError::ShardIndex { .. })
    ));
    let bad = [
        ShardConfig {
            orders_max: 0,
            ..cfg
        },
        ShardConfig {
            levels_per_side_max: 0,
            ..cfg
        },
        ShardConfig {
            quantity_max: u64::MAX,
            ..cfg
        },
        ShardConfig {
            price_max: 0,
            ..cfg
        },
        ShardConfig {
            market_band_ticks: -1,
            ..cfg
        },
        ShardConfig {
            history_max: u32::MAX,
            ..cfg
        },
        ShardConfig {
            account_orders_max: 0,
            ..cfg
        },
        ShardConfig {
            account_symbol_orders_max: 0,
            ..cfg
        },
    ];
    for c in bad {
        let e = Shard::try_new(0, 1, 1, c).unwrap_err();
        assert!(!e.to_string().is_empty());
    }
    // A shard with no symbols is valid and rejects everything as unknown.
    let mut h = Harness::with(Shard::new(3, 4, 2, cfg));
    assert_eq!(
        h.submit(S1, NewOrder::limit(1, 0, Side::Buy, 1, 1)),
        [new_reject(1, RejectReason::UnknownSymbol)]
    );
}

// -------------------------------------------------------------------------
// Per-account limits, the kill switch and mass cancel
// -------------------------------------------------------------------------

/// A session of account A that no test uses for orders: the operator's
/// kill switch (its reports go to the orders' owners, never here).
const OPERATOR: SessionId = SessionId::from_raw(99);

fn canceled_on(
    session: SessionId,
    id: u64,
    symbol: u32,
    reason: CancelReason,
    qty: u64,
) -> (SessionId, Report) {
    (
        session,
        Report::Canceled(Canceled::new(id, symbol, reason, qty)),
    )
}

#[test]
fn an_account_at_its_open_order_cap_is_refused_before_anything_happens_and_others_are_not() {
    let cfg = ShardConfig {
        account_orders_max: 3,
        account_symbol_orders_max: 2,
        ..small_config()
    };
    let mut h = Harness::with(Shard::new(0, 1, 4, cfg));
    let too_many = |id| rejected(S1, id, RejectReason::TooManyOpenOrders, Kind::NewOrder);
    // Per symbol: two on symbol 0, the third is refused.
    h.rest(S1, 1, Side::Sell, 20, 5);
    h.rest(S1, 2, Side::Buy, 10, 5);
    assert_eq!(
        h.submit(S1, NewOrder::limit(3, 0, Side::Buy, 9, 1)),
        [too_many(3)]
    );
    // Per shard: a third on symbol 1 rests, a fourth anywhere is refused.
    let out = h.submit(S1, NewOrder::limit(4, 1, Side::Buy, 9, 1));
    assert!(matches!(out[..], [(_, Report::Accepted(_))]), "{out:?}");
    assert_eq!(
        h.submit(S1, NewOrder::limit(5, 2, Side::Buy, 9, 1)),
        [(
            S1,
            Report::Rejected(Rejected::new(
                5,
                2,
                RejectReason::TooManyOpenOrders,
                Kind::NewOrder
            ))
        )]
    );
    assert_eq!(h.shard.account_open_orders(A), Some(3));
    assert_eq!(h.shard.account_symbol_open_orders(A, 0), Some(2));
    // The cap is checked as if the order would rest, before it trades:
    // a GTC buy that would fill against B's ask completely is refused too.
    h.rest(S2, 6, Side::Sell, 15, 1);
    assert_eq!(
        h.submit(S1, NewOrder::limit(7, 0, Side::Buy, 15, 1)),
        [too_many(7)]
    );
    // IOC orders never rest and are never refused for the cap.
    let ioc = order(8, Side::Buy, OrderType::Limit, Tif::Ioc, 15, 1);
    assert_eq!(h.submit(S1, ioc).len(), 3);
    // Replaces do not change how many orders an account holds.
    assert_eq!(h.replace(S1, 2, 11, 6), [replaced(S1, 2, false, 11, 6)]);
    // Other accounts are not affected.
    h.rest(S2, 9, Side::Buy, 8, 1);
    h.rest(S2, 10, Side::Buy, 7, 1);
    // A fill that ends an order frees its place (counts follow fills).
    let out = h.submit(S2, order(11, Side::Buy, OrderType::Limit, Tif::Ioc, 20, 5));
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(h.shard.account_open_orders(A), Some(2));
    h.rest(S1, 12, Side::Buy, 9, 1);
    // And so does a cancel.
    h.cancel(S1, 12);
    h.rest(S3, 13, Side::Buy, 9, 1);
    assert_eq!(h.shard.account_open_orders(A), Some(3));
    assert_eq!(h.shard.account_open_orders(B), Some(2));
}

#[test]
fn the_caps_are_off_by_default_and_cost_no_counting() {
    let mut h = Harness::new();
    h.rest(S1, 1, Side::Buy, 10, 1);
    assert_eq!(h.shard.account_open_orders(A), None);
    assert_eq!(h.shard.account_symbol_open_orders(A, 0), None);
}

#[test]
fn the_kill_switch_cancels_every_order_of_the_account_to_its_owners_and_blocks_it() {
    let mut h = Harness::with(Shard::new(0, 1, 2, small_config()));
    h.rest(S1, 1, Side::Buy, 10, 1);
    h.rest(S3, 2, Side::Sell, 30, 2);
    h.rest(S2, 3, Side::Buy, 9, 3);
    let out = h.submit(S1, NewOrder::limit(4, 1, Side::Buy, 10, 4));
    assert_eq!(out.len(), 1);
    let before = h.shard.state_digest();
    let out = h.run(OPERATOR, Op::KillAccount);
    let k = CancelReason::Killed;
    // Book order (symbol, bids then asks), each to its owner session; none
    // to the operator's.
    assert_eq!(
        out,
        [
            canceled_on(S1, 1, 0, k, 1),
            canceled_on(S3, 2, 0, k, 2),
            canceled_on(S1, 4, 1, k, 4)
        ]
    );
    assert_eq!(h.shard.blocked_accounts().collect::<Vec<_>>(), [A]);
    assert_ne!(h.shard.state_digest(), before);
    // New orders of the account are refused, from any of its sessions...
    assert_eq!(
        h.submit(S3, NewOrder::limit(5, 0, Side::Buy, 10, 1)),
        [rejected(
            S3,
            5,
            RejectReason::AccountBlocked,
            Kind::NewOrder
        )]
    );
    // ...even invalid ones (the block is checked right after the symbol)...
    assert_eq!(
        h.submit(S1, NewOrder::limit(6, 0, Side::Buy, 10, 0)),
        [new_reject(6, RejectReason::AccountBlocked)]
    );
    // ...while other accounts trade on, and the account's queries work.
    h.rest(S2, 7, Side::Buy, 11, 1);
    assert_eq!(
        h.run(S1, Op::Query(OrderQuery::new(1, 0))),
        [status(S1, 1, 1, OrderState::Canceled, 0, 0)]
    );
    // A second kill changes nothing; an unblock restores the account.
    assert_eq!(h.run(OPERATOR, Op::KillAccount), []);
    assert_eq!(h.run(OPERATOR, Op::UnblockAccount), []);
    assert_eq!(h.shard.blocked_accounts().count(), 0);
    h.rest(S1, 8, Side::Buy, 10, 1);
}

#[test]
fn mass_cancel_cancels_the_accounts_orders_on_a_symbol_or_all_to_the_requester() {
    let mut h = Harness::with(Shard::new(0, 1, 3, small_config()));
    h.rest(S1, 1, Side::Buy, 10, 1);
    h.rest(S3, 2, Side::Sell, 30, 2);
    h.rest(S2, 3, Side::Buy, 9, 3);
    for (id, symbol) in [(4, 1), (5, 2)] {
        let out = h.submit(S1, NewOrder::limit(id, symbol, Side::Buy, 10, id));
        assert_eq!(out.len(), 1);
    }
    let r = CancelReason::Requested;
    // One symbol: only the account's orders there, all reported to the
    // requesting session (like a Cancel), whoever owned them.
    assert_eq!(
        h.run(S3, Op::MassCancel { symbol: 0 }),
        [canceled_on(S3, 1, 0, r, 1), canceled_on(S3, 2, 0, r, 2)]
    );
    assert_eq!(h.level(Side::Buy), [(9, 3, 1)], "B's order stays");
    // A symbol of another shard (or none) gives nothing.
    assert_eq!(h.run(S1, Op::MassCancel { symbol: 7 }), []);
    // All symbols.
    assert_eq!(
        h.run(
            S1,
            Op::MassCancel {
                symbol: engine::book::MASS_CANCEL_ALL_SYMBOLS
            }
        ),
        [canceled_on(S1, 4, 1, r, 4), canceled_on(S1, 5, 2, r, 5)]
    );
    assert_eq!(h.shard.live_orders(), 1);
    // Nothing left: nothing to report.
    assert_eq!(
        h.run(
            S1,
            Op::MassCancel {
                symbol: engine::book::MASS_CANCEL_ALL_SYMBOLS
            }
        ),
        []
    );
}

#[test]
fn snapshots_keep_the_blocked_accounts_and_count_the_open_orders_again() {
    let cfg = ShardConfig {
        account_orders_max: 2,
        account_symbol_orders_max: 1,
        ..small_config()
    };
    let mut h = Harness::with(Shard::new(0, 1, 2, cfg));
    h.rest(S1, 1, Side::Buy, 10, 1);
    h.rest(S2, 2, Side::Buy, 9, 1);
    h.run(SessionId::from_raw(2), Op::KillAccount);
    h.run(S1, Op::New(NewOrder::limit(3, 1, Side::Buy, 10, 1)));
    let mut bytes = Vec::new();
    let digest = h.shard.write_snapshot(&mut bytes);
    let restored = Shard::from_snapshot(&bytes, cfg).unwrap();
    assert_eq!(restored.state_digest(), digest);
    assert_eq!(restored.blocked_accounts().collect::<Vec<_>>(), [B]);
    assert_eq!(restored.account_open_orders(A), Some(2));
    assert_eq!(restored.account_symbol_open_orders(A, 0), Some(1));
    assert_eq!(restored.account_open_orders(B), Some(0));
    let mut h = Harness::with(restored);
    assert_eq!(
        h.submit(S1, NewOrder::limit(4, 0, Side::Buy, 8, 1)),
        [new_reject(4, RejectReason::TooManyOpenOrders)]
    );
    assert_eq!(
        h.submit(S2, NewOrder::limit(5, 0, Side::Buy, 8, 1)),
        [rejected(
            S2,
            5,
            RejectReason::AccountBlocked,
            Kind::NewOrder
        )]
    );
}
