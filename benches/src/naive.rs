//! A naive reference book: the yardstick the real book is measured against.
//!
//! Per symbol, one `BTreeMap<price, VecDeque<order>>` per side, plus one
//! `HashMap<(account, client order id), (symbol, side, price)>` for the
//! shard: the structure anyone would write first, with the standard
//! library's containers and no attention to memory layout. It follows the
//! rules of `engine::book` (price-time priority, trades at the maker's
//! price, replace keeps priority only for a reduction at the same price,
//! the three self-trade prevention modes, IOC, FOK, market orders within
//! the band, post-only), so on the workload streams it does the same
//! matching work as [`engine::book::Shard`] and emits the same reports.
//!
//! What it leaves out, none of which the workload streams
//! (`engine::book::workload`) ever reach:
//!
//! - capacity limits (`orders_max`, `levels_per_side_max`): it never
//!   refuses an order for room;
//! - the history of terminated orders: a duplicate client order id is
//!   refused only while the first order is live, and an `OrderQuery` for a
//!   terminated order answers `Unknown`;
//! - order ids carry no shard index (it is always shard 0 of 1).
//!
//! The hasher is SipHash with fixed keys (not `RandomState`), so that runs
//! are repeatable to the instruction under cachegrind.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, DefaultHasher};

use engine::book::{Command, Matcher, Op, Report, SessionId, ShardConfig, Sink};
use wire::{
    Accepted, CancelReason, Canceled, Fill, Kind, Liquidity, NewOrder, OrderQuery, OrderState,
    OrderStatus, OrderType, RejectReason, Rejected, Replace, Replaced, SelfTradePrevention, Side,
    TimeInForce,
};

/// A resting order.
#[derive(Clone, Copy, Debug)]
struct Order {
    account: u64,
    client_order_id: u64,
    order_id: u64,
    owner: SessionId,
    open: u64,
    filled: u64,
    stp: SelfTradePrevention,
    post_only: bool,
}

/// One price level: its orders, oldest first.
type Level = VecDeque<Order>;

/// One symbol's book.
#[derive(Clone, Debug, Default)]
struct Book {
    bids: BTreeMap<i64, Level>,
    asks: BTreeMap<i64, Level>,
}

impl Book {
    fn side_mut(&mut self, side: Side) -> &mut BTreeMap<i64, Level> {
        match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        }
    }

    /// The best opposite price for an incoming order of `side`.
    fn best_opposite(&self, side: Side) -> Option<i64> {
        match side {
            Side::Buy => self.asks.keys().next().copied(),
            Side::Sell => self.bids.keys().next_back().copied(),
        }
    }

    /// Whether an incoming order of `side` with limit `limit` reaches
    /// the resting price `price`.
    fn reaches(side: Side, limit: i64, price: i64) -> bool {
        match side {
            Side::Buy => price <= limit,
            Side::Sell => price >= limit,
        }
    }

    /// Whether an order of `side` at `limit` would trade now.
    fn crosses(&self, side: Side, limit: i64) -> bool {
        self.best_opposite(side)
            .is_some_and(|p| Self::reaches(side, limit, p))
    }
}

/// Where a live order is: its symbol, side and price.
#[derive(Clone, Copy, Debug)]
struct Place {
    symbol: u32,
    side: Side,
    price: i64,
}

type FixedHasher = BuildHasherDefault<DefaultHasher>;

/// The incoming side of a match.
struct Taker {
    account: u64,
    session: SessionId,
    client_order_id: u64,
    side: Side,
    stp: SelfTradePrevention,
    remaining: u64,
    filled: u64,
}

/// The naive reference book for the symbols `0..symbol_count` (shard 0 of 1).
#[derive(Clone, Debug)]
pub struct NaiveBook {
    cfg: ShardConfig,
    books: Vec<Book>,
    index: HashMap<(u64, u64), Place, FixedHasher>,
    next_order: u64,
    next_trade: u64,
}

impl NaiveBook {
    /// An empty book for `symbol_count` symbols with `cfg`'s quantity,
    /// price and market band limits (its capacity limits are ignored).
    pub fn new(symbol_count: u32, cfg: ShardConfig) -> NaiveBook {
        NaiveBook {
            cfg,
            books: vec![Book::default(); symbol_count as usize],
            index: HashMap::default(),
            next_order: 1,
            next_trade: 1,
        }
    }

    /// Matches `taker` against the side opposite to it, best price first
    /// and oldest first, up to `limit`. Returns true when self-trade
    /// prevention stopped the match (the incoming remainder is canceled).
    fn match_taker<S: Sink>(
        &mut self,
        symbol: u32,
        limit: i64,
        taker: &mut Taker,
        sink: &mut S,
    ) -> bool {
        let book = &mut self.books[symbol as usize];
        let opposite = book.side_mut(taker.side.opposite());
        while taker.remaining > 0 {
            let entry = match taker.side {
                Side::Buy => opposite.first_entry(),
                Side::Sell => opposite.last_entry(),
            };
            let Some(mut entry) = entry else {
                return false;
            };
            let price = *entry.key();
            if !Book::reaches(taker.side, limit, price) {
                return false;
            }
            let level = entry.get_mut();
            let mut self_trade_stop = false;
            while taker.remaining > 0 {
                let Some(maker) = level.front_mut() else {
                    break;
                };
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
                    self.index.remove(&(maker.account, maker.client_order_id));
                    level.pop_front();
                    if stop {
                        self_trade_stop = true;
                        break;
                    }
                    continue;
                }
                let quantity = taker.remaining.min(maker.open);
                maker.open -= quantity;
                maker.filled = maker.filled.saturating_add(quantity);
                taker.remaining -= quantity;
                taker.filled = taker.filled.saturating_add(quantity);
                let trade_id = self.next_trade;
                self.next_trade += 1;
                sink.emit(
                    maker.owner,
                    Report::Fill(Fill::new(
                        maker.client_order_id,
                        trade_id,
                        symbol,
                        taker.side.opposite(),
                        Liquidity::Maker,
                        price,
                        quantity,
                        maker.open,
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
                if maker.open == 0 {
                    self.index.remove(&(maker.account, maker.client_order_id));
                    level.pop_front();
                }
            }
            if level.is_empty() {
                entry.remove();
            }
            if self_trade_stop {
                return true;
            }
        }
        false
    }

    /// Whether a FOK order could fill `quantity` completely, walking the
    /// book as matching would (self-trade prevention included).
    fn can_fill(
        &self,
        symbol: u32,
        side: Side,
        limit: i64,
        account: u64,
        stp: SelfTradePrevention,
        quantity: u64,
    ) -> bool {
        let book = &self.books[symbol as usize];
        let levels: Box<dyn Iterator<Item = (&i64, &Level)>> = match side {
            Side::Buy => Box::new(book.asks.iter()),
            Side::Sell => Box::new(book.bids.iter().rev()),
        };
        let mut remaining = quantity;
        for (&price, level) in levels {
            if !Book::reaches(side, limit, price) {
                return false;
            }
            for maker in level {
                if maker.account == account {
                    match stp {
                        SelfTradePrevention::CancelResting => continue,
                        _ => return false,
                    }
                }
                remaining = remaining.saturating_sub(maker.open);
                if remaining == 0 {
                    return true;
                }
            }
        }
        false
    }

    /// Puts an order at the back of its level.
    fn rest(&mut self, symbol: u32, side: Side, price: i64, order: Order) {
        self.index.insert(
            (order.account, order.client_order_id),
            Place {
                symbol,
                side,
                price,
            },
        );
        self.books[symbol as usize]
            .side_mut(side)
            .entry(price)
            .or_default()
            .push_back(order);
    }

    /// Takes a live order out of its level (dropping the level if it
    /// empties); the index entry stays.
    fn take(&mut self, key: (u64, u64), place: Place) -> Order {
        let side = self.books[place.symbol as usize].side_mut(place.side);
        let level = side
            .get_mut(&place.price)
            .expect("an indexed order's level exists");
        let position = level
            .iter()
            .position(|o| (o.account, o.client_order_id) == key)
            .expect("an indexed order is in its level");
        let order = level.remove(position).expect("position is in the level");
        if level.is_empty() {
            side.remove(&place.price);
        }
        order
    }

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
        if symbol as usize >= self.books.len() {
            return reject(sink, RejectReason::UnknownSymbol);
        }
        let fields = match o.fields() {
            Ok(f) => f,
            Err(e) => return reject(sink, engine::book::reject_reason_for(&e)),
        };
        let quantity = o.quantity.get();
        if quantity == 0 || quantity > self.cfg.quantity_max {
            return reject(sink, RejectReason::InvalidQuantity);
        }
        let market = fields.order_type == OrderType::Market;
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
        if let Some(place) = self.index.get(&(cmd.account, client_order_id)).copied() {
            reject(sink, RejectReason::DuplicateClientOrderId);
            let status = self.live_status(cmd.account, client_order_id, place);
            return sink.emit(cmd.session, Report::Status(status));
        }
        let side = fields.side;
        let book = &self.books[symbol as usize];
        let limit = if market {
            let Some(best) = book.best_opposite(side) else {
                return reject(sink, RejectReason::NoLiquidity);
            };
            match side {
                Side::Buy => best.saturating_add(self.cfg.market_band_ticks),
                Side::Sell => best.saturating_sub(self.cfg.market_band_ticks),
            }
        } else {
            price
        };
        if fields.post_only && book.crosses(side, limit) {
            return reject(sink, RejectReason::PostOnlyWouldTake);
        }
        let order_id = self.next_order;
        self.next_order += 1;
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
        if tif == TimeInForce::Fok
            && !self.can_fill(symbol, side, limit, cmd.account, fields.stp, quantity)
        {
            return cancel(sink, CancelReason::FokUnfilled, quantity);
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
        let self_trade = self.match_taker(symbol, limit, &mut taker, sink);
        if taker.remaining == 0 {
            return;
        }
        if self_trade {
            return cancel(sink, CancelReason::SelfTrade, taker.remaining);
        }
        if !market && tif == TimeInForce::Gtc {
            let order = Order {
                account: cmd.account,
                client_order_id,
                order_id,
                owner: cmd.session,
                open: taker.remaining,
                filled: taker.filled,
                stp: fields.stp,
                post_only: fields.post_only,
            };
            return self.rest(symbol, side, price, order);
        }
        let book = &self.books[symbol as usize];
        let opposite_left = match side {
            Side::Buy => !book.asks.is_empty(),
            Side::Sell => !book.bids.is_empty(),
        };
        let reason = if market && opposite_left {
            CancelReason::PriceBand
        } else {
            CancelReason::IocRemainder
        };
        cancel(sink, reason, taker.remaining);
    }

    /// The live order at `key` in `symbol`, if there is one.
    fn find(&self, key: (u64, u64), symbol: u32) -> Option<Place> {
        self.index
            .get(&key)
            .copied()
            .filter(|place| place.symbol == symbol)
    }

    fn cancel<S: Sink>(&mut self, cmd: &Command, c: &wire::Cancel, sink: &mut S) {
        let client_order_id = c.client_order_id.get();
        let symbol = c.symbol.get();
        let key = (cmd.account, client_order_id);
        let found = if symbol as usize >= self.books.len() {
            Err(RejectReason::UnknownSymbol)
        } else {
            self.find(key, symbol).ok_or(RejectReason::UnknownOrder)
        };
        let report = match found {
            Err(reason) => {
                Report::Rejected(Rejected::new(client_order_id, symbol, reason, Kind::Cancel))
            }
            Ok(place) => {
                let order = self.take(key, place);
                self.index.remove(&key);
                Report::Canceled(Canceled::new(
                    client_order_id,
                    symbol,
                    CancelReason::Requested,
                    order.open,
                ))
            }
        };
        sink.emit(cmd.session, report);
    }

    fn replace<S: Sink>(&mut self, cmd: &Command, r: &Replace, sink: &mut S) {
        let client_order_id = r.client_order_id.get();
        let symbol = r.symbol.get();
        let price = r.price.get();
        let quantity = r.quantity.get();
        let key = (cmd.account, client_order_id);
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
        if symbol as usize >= self.books.len() {
            return reject(sink, RejectReason::UnknownSymbol);
        }
        if quantity == 0 || quantity > self.cfg.quantity_max {
            return reject(sink, RejectReason::InvalidQuantity);
        }
        if !(1..=self.cfg.price_max).contains(&price) {
            return reject(sink, RejectReason::InvalidPrice);
        }
        let Some(place) = self.find(key, symbol) else {
            return reject(sink, RejectReason::UnknownOrder);
        };
        let replaced = |sink: &mut S, priority_kept| {
            sink.emit(
                cmd.session,
                Report::Replaced(Replaced::new(
                    client_order_id,
                    symbol,
                    priority_kept,
                    price,
                    quantity,
                )),
            );
        };
        if price == place.price {
            let level = self.books[symbol as usize]
                .side_mut(place.side)
                .get_mut(&price)
                .expect("an indexed order's level exists");
            let order = level
                .iter_mut()
                .find(|o| (o.account, o.client_order_id) == key)
                .expect("an indexed order is in its level");
            if quantity <= order.open {
                // A reduction at the same price keeps time priority.
                order.open = quantity;
                order.owner = cmd.session;
                return replaced(sink, true);
            }
        }
        let post_only = {
            let level = &self.books[symbol as usize].side_mut(place.side)[&place.price];
            level
                .iter()
                .find(|o| (o.account, o.client_order_id) == key)
                .expect("an indexed order is in its level")
                .post_only
        };
        if post_only && self.books[symbol as usize].crosses(place.side, price) {
            return reject(sink, RejectReason::PostOnlyWouldTake);
        }
        let mut order = self.take(key, place);
        replaced(sink, false);
        let mut taker = Taker {
            account: cmd.account,
            session: cmd.session,
            client_order_id,
            side: place.side,
            stp: order.stp,
            remaining: quantity,
            filled: order.filled,
        };
        let self_trade = self.match_taker(symbol, price, &mut taker, sink);
        if taker.remaining == 0 {
            self.index.remove(&key);
            return;
        }
        if self_trade {
            self.index.remove(&key);
            return sink.emit(
                cmd.session,
                Report::Canceled(Canceled::new(
                    client_order_id,
                    symbol,
                    CancelReason::SelfTrade,
                    taker.remaining,
                )),
            );
        }
        order.open = taker.remaining;
        order.filled = taker.filled;
        order.owner = cmd.session;
        self.rest(symbol, place.side, price, order);
    }

    fn order_at(&self, key: (u64, u64), place: Place) -> &Order {
        let book = &self.books[place.symbol as usize];
        let side = match place.side {
            Side::Buy => &book.bids,
            Side::Sell => &book.asks,
        };
        side[&place.price]
            .iter()
            .find(|o| (o.account, o.client_order_id) == key)
            .expect("an indexed order is in its level")
    }

    fn live_status(&self, account: u64, client_order_id: u64, place: Place) -> OrderStatus {
        let o = self.order_at((account, client_order_id), place);
        OrderStatus::new(
            client_order_id,
            o.order_id,
            place.symbol,
            OrderState::Live,
            o.filled,
            o.open,
        )
    }

    fn query<S: Sink>(&mut self, cmd: &Command, q: &OrderQuery, sink: &mut S) {
        let client_order_id = q.client_order_id.get();
        let symbol = q.symbol.get();
        let report = if symbol as usize >= self.books.len() {
            Report::Rejected(Rejected::new(
                client_order_id,
                symbol,
                RejectReason::UnknownSymbol,
                Kind::OrderQuery,
            ))
        } else {
            let status = match self.find((cmd.account, client_order_id), symbol) {
                Some(place) => self.live_status(cmd.account, client_order_id, place),
                None => OrderStatus::new(client_order_id, 0, symbol, OrderState::Unknown, 0, 0),
            };
            Report::Status(status)
        };
        sink.emit(cmd.session, report);
    }

    fn cancel_session<S: Sink>(&mut self, session: SessionId, sink: &mut S) {
        for (symbol, book) in self.books.iter_mut().enumerate() {
            let bids = book.bids.iter_mut().rev();
            let asks = book.asks.iter_mut();
            for (_, level) in bids.chain(asks) {
                level.retain(|o| {
                    if o.owner != session {
                        return true;
                    }
                    sink.emit(
                        session,
                        Report::Canceled(Canceled::new(
                            o.client_order_id,
                            symbol as u32,
                            CancelReason::Disconnect,
                            o.open,
                        )),
                    );
                    self.index.remove(&(o.account, o.client_order_id));
                    false
                });
            }
            book.bids.retain(|_, level| !level.is_empty());
            book.asks.retain(|_, level| !level.is_empty());
        }
    }
}

impl Matcher for NaiveBook {
    fn process<S: Sink>(&mut self, cmd: &Command, now_ns: u64, sink: &mut S) {
        match &cmd.op {
            Op::New(o) => self.new_order(cmd, o, now_ns, sink),
            Op::Cancel(c) => self.cancel(cmd, c, sink),
            Op::Replace(r) => self.replace(cmd, r, sink),
            Op::Query(q) => self.query(cmd, q, sink),
            Op::CancelSession => self.cancel_session(cmd.session, sink),
            Op::DetachSessions => {
                for book in &mut self.books {
                    for level in book.bids.values_mut().chain(book.asks.values_mut()) {
                        for o in level.iter_mut() {
                            o.owner = SessionId::NONE;
                        }
                    }
                }
            }
            // The baseline has no per-account operations: the benchmark
            // flows it is compared on never send them.
            Op::MassCancel { .. } | Op::KillAccount | Op::UnblockAccount => {}
        }
    }

    /// FNV-1a over every live order in book order (not comparable with
    /// the real book's digest).
    fn state_digest(&self) -> u64 {
        let mut hash = 0xcbf2_9ce4_8422_2325_u64;
        let mut mix = |v: u64| {
            for byte in v.to_le_bytes() {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
        };
        for book in &self.books {
            for (price, level) in book.bids.iter().rev().chain(book.asks.iter()) {
                mix(*price as u64);
                for o in level {
                    mix(o.account);
                    mix(o.client_order_id);
                    mix(o.open);
                    mix(o.filled);
                }
            }
        }
        mix(self.next_order);
        mix(self.next_trade);
        hash
    }

    fn live_orders(&self) -> usize {
        self.index.len()
    }
}
