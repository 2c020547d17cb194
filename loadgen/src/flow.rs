//! The order-flow model: what the next request is, on which symbol, at what
//! price. Pure and deterministic: the same seed and the same answers from
//! the server give the same requests.
//!
//! Each connection keeps a mid price per symbol (in ticks) that takes a
//! random walk around [`BASE_PRICE_TICKS`], pulled back inside
//! +-[`MID_BAND_TICKS`]; every connection walks around the same base, so
//! orders of different connections (different accounts) meet and trade.
//! Symbols are drawn with Zipf popularity ([`ZIPF_EXPONENT`]): symbol 0 of
//! the traded set is the busiest, as on real venues.

use clap::ValueEnum;
use wire::{OrderType, Side, TimeInForce};

use crate::rng::{Rng, Zipf, select};

/// Every connection's mid prices walk around this price (ticks).
pub const BASE_PRICE_TICKS: i64 = 1_000_000;
/// Mid prices stay within this many ticks of the base: a walk that reaches
/// the edge only steps back. Keeps the connections' markets overlapping.
pub const MID_BAND_TICKS: i64 = 32;
/// Order quantities are uniform in `1..=QUANTITY_MAX_LOTS`.
pub const QUANTITY_MAX_LOTS: u64 = 100;
/// Zipf exponent of symbol popularity (1.0: the k-th symbol is traded 1/k
/// as often as the first).
pub const ZIPF_EXPONENT: f64 = 1.0;
/// Resolution of the mix tables: weights are in parts per thousand.
const MIX_PARTS: usize = 1000;

/// The order mix (`--mix`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
pub enum Mix {
    /// Like exchange-core's benchmark: 9% new GTC limit orders around the
    /// mid, 3% IOC (a third of them market orders), 6% cancels, 82% replaces
    /// (moving live orders around the mid, some of which cross).
    Realistic,
    /// Insert-heavy: 75% new GTC limit orders priced away from the mid so
    /// they rest (a few trade when two connections' mids drift apart), 25%
    /// cancels to bound the book.
    Insert,
    /// Matching-heavy: 45% of requests are orders that take (35% IOC and
    /// 5% FOK priced through the whole book, 5% market), 45% GTC orders
    /// around the mid that they take from (a fifth of which cross
    /// themselves), 5% cancels, 5% replaces: about half of all requests
    /// cross. With few accounts self-trade prevention stops part of the
    /// taking (an order meeting its own account's order is canceled), so
    /// more connections (accounts) trade more.
    Match,
}

impl Mix {
    /// The name `--mix` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Mix::Realistic => "realistic",
            Mix::Insert => "insert",
            Mix::Match => "match",
        }
    }

    /// The mix as (weight in parts per thousand, action); weights sum to 1000.
    pub fn weights(self) -> &'static [(u16, Action)] {
        use Action::*;
        use NewKind::*;
        match self {
            Mix::Realistic => &[
                (90, New(Near)),
                (20, New(IocNear)),
                (10, New(Market)),
                (60, Cancel),
                (820, Replace),
            ],
            Mix::Insert => &[(750, New(Passive)), (250, Cancel)],
            Mix::Match => &[
                (450, New(Near)),
                (350, New(IocAggressive)),
                (50, New(FokAggressive)),
                (50, New(Market)),
                (50, Cancel),
                (50, Replace),
            ],
        }
    }
}

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// A new order of this kind.
    New(NewKind),
    /// Cancel one of the connection's live orders.
    Cancel,
    /// Move one of the connection's live orders (new price and quantity).
    Replace,
}

/// The kinds of new orders the model sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NewKind {
    /// GTC limit 17 to 48 ticks on the passive side of the mid (half a band
    /// plus 1 to 32): rests, unless two connections' mids drift more than
    /// a band apart.
    Passive,
    /// GTC limit from 4 ticks through the mid to 16 ticks away: mostly rests,
    /// sometimes crosses.
    Near,
    /// GTC limit priced through the whole band: crosses whatever rests.
    Aggressive,
    /// IOC limit 0 to 3 ticks through the mid.
    IocNear,
    /// IOC limit priced through the whole band.
    IocAggressive,
    /// FOK limit priced through the whole band.
    FokAggressive,
    /// Market order (IOC), bounded by the server's price band.
    Market,
}

impl NewKind {
    /// Every kind, in the order of [`NewKind::index`].
    pub const ALL: [NewKind; 7] = [
        NewKind::Passive,
        NewKind::Near,
        NewKind::Aggressive,
        NewKind::IocNear,
        NewKind::IocAggressive,
        NewKind::FokAggressive,
        NewKind::Market,
    ];

    /// Position in [`NewKind::ALL`].
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Whether the order can rest on the book (GTC limit).
    #[inline]
    pub const fn may_rest(self) -> bool {
        matches!(self, NewKind::Passive | NewKind::Near | NewKind::Aggressive)
    }

    /// Whether the flow prices the order to take liquidity at once: every
    /// IOC, FOK and market order, and the GTC limit priced through the whole
    /// band. These are the "crossing orders" of the report; `Near` GTC
    /// orders cross only sometimes and do not count.
    #[inline]
    pub const fn crosses(self) -> bool {
        !matches!(self, NewKind::Passive | NewKind::Near)
    }
}

/// One new order, before its id is assigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderSpec {
    /// Index into the connection's traded symbols.
    pub symbol_index: u32,
    /// Buy or sell.
    pub side: Side,
    /// Limit or market.
    pub order_type: OrderType,
    /// GTC, IOC or FOK.
    pub time_in_force: TimeInForce,
    /// Limit price in ticks (the mid for market orders, which the server ignores).
    pub price: i64,
    /// Quantity in lots.
    pub quantity: u64,
}

/// The order-flow model of one connection.
#[derive(Clone, Debug)]
pub struct Flow {
    rng: Rng,
    zipf: Zipf,
    mids_ticks: Vec<i64>,
    /// `MIX_PARTS` entries: drawing an index uniformly draws the mix.
    actions: Box<[Action]>,
}

impl Flow {
    /// A model trading `symbols` symbols (at least one) with `mix`, seeded with `seed`.
    pub fn new(mix: Mix, symbols: usize, seed: u64) -> Self {
        let mut actions = Vec::with_capacity(MIX_PARTS);
        for &(weight, action) in mix.weights() {
            actions.extend(std::iter::repeat_n(action, usize::from(weight)));
        }
        debug_assert_eq!(actions.len(), MIX_PARTS);
        let zipf = Zipf::new(symbols, ZIPF_EXPONENT);
        Flow {
            rng: Rng::new(seed),
            mids_ticks: vec![BASE_PRICE_TICKS; zipf.len()],
            zipf,
            actions: actions.into_boxed_slice(),
        }
    }

    /// Number of symbols traded.
    pub fn symbols(&self) -> usize {
        self.mids_ticks.len()
    }

    /// The current mid of a symbol.
    pub fn mid_ticks(&self, symbol_index: usize) -> i64 {
        self.mids_ticks
            .get(symbol_index)
            .copied()
            .unwrap_or(BASE_PRICE_TICKS)
    }

    /// Draws the next request's action from the mix.
    #[inline]
    pub fn next_action(&mut self) -> Action {
        let i = self.rng.below(self.actions.len() as u64) as usize;
        self.actions.get(i).copied().unwrap_or(Action::Cancel)
    }

    /// A uniform index in `0..n`: which live order to cancel or replace.
    #[inline]
    pub fn pick(&mut self, n: usize) -> usize {
        self.rng.below(n as u64) as usize
    }

    /// Steps a symbol's mid (a quarter of the time, one tick; a step that
    /// would leave the band goes the other way) and returns it. Branch-free
    /// like the rest of the draw: the steps are random.
    #[inline]
    fn step_mid(&mut self, symbol_index: usize, bits: u64) -> i64 {
        const STEPS: [i64; 8] = [-1, 1, 0, 0, 0, 0, 0, 0];
        let Some(mid) = self.mids_ticks.get_mut(symbol_index) else {
            return BASE_PRICE_TICKS;
        };
        let step = STEPS[(bits & 7) as usize];
        let next = *mid + step;
        *mid = select(
            (next - BASE_PRICE_TICKS).abs() > MID_BAND_TICKS,
            *mid - step,
            next,
        );
        *mid
    }

    /// A new order of `kind`.
    #[inline]
    pub fn order(&mut self, kind: NewKind) -> OrderSpec {
        let symbol_index = self.zipf.sample(&mut self.rng);
        let r = self.rng.next_u64();
        let (side, sign) = side_of(r);
        let mid = self.step_mid(symbol_index, r >> 1);
        let offset_bits = (r >> 8) & 0xffff;
        let quantity = 1 + (((r >> 32) * QUANTITY_MAX_LOTS) >> 32);
        // `through` is how far the price goes towards (and past) the other side.
        let (order_type, time_in_force, through) = match kind {
            NewKind::Passive => (
                OrderType::Limit,
                TimeInForce::Gtc,
                -(MID_BAND_TICKS / 2 + 1) - (offset_bits % 32) as i64,
            ),
            NewKind::Near => (
                OrderType::Limit,
                TimeInForce::Gtc,
                (offset_bits % 21) as i64 - 16,
            ),
            NewKind::Aggressive => (OrderType::Limit, TimeInForce::Gtc, aggressive(offset_bits)),
            NewKind::IocNear => (OrderType::Limit, TimeInForce::Ioc, (offset_bits % 4) as i64),
            NewKind::IocAggressive => (OrderType::Limit, TimeInForce::Ioc, aggressive(offset_bits)),
            NewKind::FokAggressive => (OrderType::Limit, TimeInForce::Fok, aggressive(offset_bits)),
            NewKind::Market => (OrderType::Market, TimeInForce::Ioc, 0),
        };
        OrderSpec {
            symbol_index: symbol_index as u32,
            side,
            order_type,
            time_in_force,
            price: mid + sign * through,
            quantity,
        }
    }

    /// New price and open quantity for a replace of a live order: a price
    /// around the symbol's current mid (like a [`NewKind::Near`] order); the
    /// quantity is kept half of the time, halved (keeping priority when the
    /// price happens not to change) a quarter, and redrawn a quarter.
    #[inline]
    pub fn replace(&mut self, symbol_index: usize, side: Side, leaves: u64) -> (i64, u64) {
        let r = self.rng.next_u64();
        let mid = self.step_mid(symbol_index, r);
        let through = ((r >> 8) & 0xffff) as i64 % 21 - 16;
        let sign = match side {
            Side::Buy => 1,
            Side::Sell => -1,
        };
        let choices = [
            leaves,
            leaves,
            (leaves / 2).max(1),
            1 + ((((r >> 32) & 0xff) * QUANTITY_MAX_LOTS) >> 8),
        ];
        let quantity = choices[((r >> 40) & 3) as usize];
        (mid + sign * through, quantity.max(1))
    }
}

/// Side from the lowest bit, and the sign that turns "towards the other
/// side" into a price offset (+1 for a buy, -1 for a sell), without a branch.
#[inline]
fn side_of(r: u64) -> (Side, i64) {
    let sell = (r & 1) as i64;
    let side = select(sell == 0, Side::Buy, Side::Sell);
    (side, 1 - 2 * sell)
}

/// How far past the mid an aggressive order goes: across the whole band of
/// mids (2 bands) and the farthest passive order (48 ticks, 1.5 bands), so
/// it crosses any order the model rests, whichever connection sent it.
#[inline]
fn aggressive(offset_bits: u64) -> i64 {
    4 * MID_BAND_TICKS + (offset_bits % 8) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn kind_indices_match_their_table() {
        for (i, kind) in NewKind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }

    #[test]
    fn mix_weights_sum_to_a_thousand() {
        for mix in [Mix::Realistic, Mix::Insert, Mix::Match] {
            let sum: u32 = mix.weights().iter().map(|&(w, _)| u32::from(w)).sum();
            assert_eq!(sum, 1000, "{mix:?}");
        }
    }

    #[test]
    fn same_seed_same_flow() {
        let run = |seed| {
            let mut f = Flow::new(Mix::Realistic, 8, seed);
            (0..1000)
                .map(|_| match f.next_action() {
                    Action::New(kind) => (0, f.order(kind).price),
                    Action::Cancel => (1, f.pick(10) as i64),
                    Action::Replace => (2, f.replace(1, Side::Buy, 10).0),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn realistic_proportions_are_about_right() {
        let mut f = Flow::new(Mix::Realistic, 4, 9);
        let draws = 200_000;
        let mut counts: HashMap<Action, u32> = HashMap::new();
        for _ in 0..draws {
            *counts.entry(f.next_action()).or_default() += 1;
        }
        let share = |a| f64::from(counts.get(&a).copied().unwrap_or(0)) / draws as f64;
        assert!((share(Action::Replace) - 0.82).abs() < 0.01);
        assert!((share(Action::Cancel) - 0.06).abs() < 0.005);
        assert!((share(Action::New(NewKind::Near)) - 0.09).abs() < 0.005);
        let ioc = share(Action::New(NewKind::IocNear)) + share(Action::New(NewKind::Market));
        assert!((ioc - 0.03).abs() < 0.003);
    }

    #[test]
    fn prices_stay_positive_and_near_the_base_and_sides_are_right() {
        let mut f = Flow::new(Mix::Match, 3, 1);
        for _ in 0..100_000 {
            for kind in [NewKind::Passive, NewKind::Near, NewKind::Aggressive] {
                let o = f.order(kind);
                assert!(o.price > 0 && o.quantity >= 1 && o.quantity <= QUANTITY_MAX_LOTS);
                assert!((o.price - BASE_PRICE_TICKS).abs() <= 5 * MID_BAND_TICKS + 8);
                let mid = f.mid_ticks(o.symbol_index as usize);
                let toward = match o.side {
                    Side::Buy => o.price - mid,
                    Side::Sell => mid - o.price,
                };
                match kind {
                    NewKind::Passive => assert!(toward <= -(MID_BAND_TICKS / 2 + 1)),
                    NewKind::Aggressive => assert!(toward >= 4 * MID_BAND_TICKS),
                    _ => assert!((-16..=4).contains(&toward)),
                }
            }
        }
        for s in 0..3 {
            assert!((f.mid_ticks(s) - BASE_PRICE_TICKS).abs() <= MID_BAND_TICKS);
        }
    }

    #[test]
    fn aggressive_buys_cross_passive_sells_of_any_connection() {
        // Two connections' models: every aggressive buy of one is priced at or
        // above every passive sell of the other.
        let mut a = Flow::new(Mix::Match, 1, 1);
        let mut b = Flow::new(Mix::Insert, 1, 2);
        for _ in 0..10_000 {
            let buy = loop {
                let o = a.order(NewKind::Aggressive);
                if o.side == Side::Buy {
                    break o;
                }
            };
            let sell = loop {
                let o = b.order(NewKind::Passive);
                if o.side == Side::Sell {
                    break o;
                }
            };
            assert!(buy.price >= sell.price);
        }
    }

    #[test]
    fn replace_keeps_quantities_positive() {
        let mut f = Flow::new(Mix::Realistic, 2, 5);
        for leaves in [1, 2, 50, 100] {
            for _ in 0..1000 {
                let (price, qty) = f.replace(0, Side::Sell, leaves);
                assert!(price > 0 && qty >= 1 && qty <= QUANTITY_MAX_LOTS.max(leaves));
            }
        }
    }
}
