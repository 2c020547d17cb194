//! Synthetic, deterministic order flow for the book's benchmarks and
//! steady-state tests (the load generator `dex-trader` has its own, richer
//! order-flow model for the server).
//!
//! The generator keeps its own [`Shard`] and applies every command it
//! makes to it, so a cancel or a replace always names an order that is
//! really live at that point, and a crossing order is priced against the
//! real best price. Replaying the same [`Workload`] on a fresh shard gives
//! exactly the same book states, because the shard is deterministic.
//!
//! Generating costs far more than processing; do it outside timed loops.

use wire::{NewOrder, OrderType, Replace, SelfTradePrevention, Side, TimeInForce};

use super::{Command, Matcher, Op, Report, Shard, ShardConfig};

/// Shares of each kind of command, in percent (they must sum to 100).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    /// New GTC limit orders.
    pub new_gtc_pct: u32,
    /// New IOC limit orders priced to cross.
    pub ioc_pct: u32,
    /// Cancels of live orders.
    pub cancel_pct: u32,
    /// Replaces of live orders (mostly price moves, some size reductions).
    pub replace_pct: u32,
    /// Of the new GTC orders, the share priced to cross the spread (they
    /// trade, and rest if anything is left) when the book is at its target
    /// size; the generator raises it when the book is above target and
    /// lowers it below, which keeps the book near its target depth.
    pub gtc_cross_pct: u32,
}

impl Mix {
    /// The mix of exchange-core's throughput tests: 9% GTC, 3% IOC,
    /// 6% cancel, 82% replace (move), over a book of about a thousand
    /// orders, where some orders trade.
    pub const EXCHANGE_CORE: Mix = Mix {
        new_gtc_pct: 9,
        ioc_pct: 3,
        cancel_pct: 6,
        replace_pct: 82,
        gtc_cross_pct: 10,
    };

    /// A matching-heavy mix: most new orders cross and trade against one
    /// or more resting orders.
    pub const HEAVY_MATCHING: Mix = Mix {
        new_gtc_pct: 50,
        ioc_pct: 30,
        cancel_pct: 5,
        replace_pct: 15,
        gtc_cross_pct: 60,
    };
}

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct WorkloadConfig {
    /// Command shares.
    pub mix: Mix,
    /// Symbols `0..symbols`, all on one shard (shard 0 of 1); each command
    /// picks one uniformly.
    pub symbols: u32,
    /// Resting orders per symbol the flow keeps the book near.
    pub target_orders_per_symbol: u32,
    /// Passive orders rest up to this many ticks from the mid price; with
    /// the target depth this sets how many price levels the book has.
    pub spread_ticks: i64,
    /// Accounts (one session each); more accounts make self-trades rarer.
    pub accounts: u64,
    /// Largest order quantity (quantities are uniform in 1..=this).
    pub quantity_max: u64,
    /// Seed of the deterministic random generator.
    pub seed: u64,
}

impl Default for WorkloadConfig {
    /// About 1,000 orders in about 750 price levels on one symbol.
    fn default() -> Self {
        WorkloadConfig {
            mix: Mix::EXCHANGE_CORE,
            symbols: 1,
            target_orders_per_symbol: 1_000,
            spread_ticks: 800,
            accounts: 64,
            quantity_max: 100,
            seed: 1,
        }
    }
}

/// A generated flow: `prefill` builds the starting books, `commands` is
/// the measured stream.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Passive GTC orders that build the books to their target depth.
    pub prefill: Vec<Command>,
    /// The mixed stream.
    pub commands: Vec<Command>,
    /// How the stream went on the generator's own shard.
    pub stats: WorkloadStats,
}

/// Counters from the generator's run, to describe the flow in reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkloadStats {
    /// Fills emitted (two per trade).
    pub fills: u64,
    /// Reports of every kind.
    pub reports: u64,
    /// Live orders after the stream, over all symbols.
    pub live_orders_end: u64,
    /// Price levels (both sides, all symbols) after the stream.
    pub levels_end: u64,
}

impl Workload {
    /// A shard with the shard config used to generate the flow, with the
    /// prefill applied: the state the command stream starts from.
    pub fn start_shard(&self, shard_config: ShardConfig, symbols: u32) -> Shard {
        let mut shard = Shard::new(0, 1, symbols, shard_config);
        let mut sink = DiscardSink::default();
        shard.process_batch(&self.prefill, 0, &mut sink);
        shard
    }
}

/// A sink that only counts (used by the generator and by benches).
#[derive(Clone, Copy, Debug, Default)]
pub struct DiscardSink {
    /// Reports received.
    pub reports: u64,
    /// Fills received.
    pub fills: u64,
}

impl super::Sink for DiscardSink {
    #[inline]
    fn emit(&mut self, _session: super::SessionId, report: Report) {
        self.reports += 1;
        self.fills += u64::from(matches!(report, Report::Fill(_)));
    }
}

/// splitmix64: tiny, fast, and good enough for synthetic order flow.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn percent(&mut self) -> u32 {
        self.below(100) as u32
    }
}

/// The mid price around which every book is built.
const MID_PRICE: i64 = 1_000_000;

struct Generator {
    cfg: WorkloadConfig,
    rng: Rng,
    shard: Shard,
    /// Next client order id per account (ids strictly increase per session).
    next_id: Vec<u64>,
    /// Orders that may be live: (account, client order id). Dead ones are
    /// dropped lazily when picked.
    candidates: Vec<(u64, u64)>,
    sink: DiscardSink,
}

impl Generator {
    fn command(&mut self, account: u64, op: Op) -> Command {
        let cmd = Command {
            session: super::SessionId::from_raw(account),
            account,
            op,
        };
        self.shard.process(&cmd, 0, &mut self.sink);
        if let Op::New(o) = &cmd.op
            && self.shard.order(account, o.client_order_id.get()).is_some()
        {
            self.candidates.push((account, o.client_order_id.get()));
        }
        cmd
    }

    fn account(&mut self) -> u64 {
        1 + self.rng.below(self.cfg.accounts)
    }

    fn new_id(&mut self, account: u64) -> u64 {
        let id = &mut self.next_id[account as usize];
        *id += 1;
        *id
    }

    fn side(&mut self) -> Side {
        if self.rng.below(2) == 0 {
            Side::Buy
        } else {
            Side::Sell
        }
    }

    fn quantity(&mut self) -> u64 {
        1 + self.rng.below(self.cfg.quantity_max)
    }

    /// A passive price: up to `spread_ticks` away from the mid, on the
    /// order's own side.
    fn passive_price(&mut self, side: Side) -> i64 {
        let offset = 1 + self.rng.below(self.cfg.spread_ticks as u64) as i64;
        match side {
            Side::Buy => MID_PRICE - offset,
            Side::Sell => MID_PRICE + offset,
        }
    }

    /// A price that crosses the spread by 0..=2 ticks beyond the best
    /// opposite price (or a passive one if that side is empty).
    fn crossing_price(&mut self, symbol: u32, side: Side) -> i64 {
        let through = self.rng.below(3) as i64;
        match side {
            Side::Buy => self.shard.best_ask(symbol).map(|l| l.price + through),
            Side::Sell => self.shard.best_bid(symbol).map(|l| l.price - through),
        }
        .unwrap_or_else(|| self.passive_price(side))
    }

    fn new_order(&mut self, symbol: u32, tif: TimeInForce, cross: bool) -> Command {
        let account = self.account();
        let id = self.new_id(account);
        let side = self.side();
        let price = if cross {
            self.crossing_price(symbol, side)
        } else {
            self.passive_price(side)
        };
        let quantity = self.quantity();
        let order = NewOrder::new(
            id,
            symbol,
            side,
            OrderType::Limit,
            tif,
            false,
            SelfTradePrevention::CancelIncoming,
            price,
            quantity,
        );
        self.command(account, Op::New(order))
    }

    /// A live order, picked uniformly among the candidates.
    fn pick_live(&mut self) -> Option<super::OrderView> {
        while !self.candidates.is_empty() {
            let i = self.rng.below(self.candidates.len() as u64) as usize;
            let (account, id) = self.candidates[i];
            match self.shard.order(account, id) {
                Some(view) => return Some(view),
                None => {
                    self.candidates.swap_remove(i);
                }
            }
        }
        None
    }

    fn live_per_symbol(&self) -> u64 {
        self.shard.live_orders() as u64 / u64::from(self.cfg.symbols)
    }

    fn next_command(&mut self) -> Command {
        let mix = self.cfg.mix;
        let symbol = self.rng.below(u64::from(self.cfg.symbols)) as u32;
        let roll = self.rng.percent();
        if roll < mix.new_gtc_pct {
            // Steer toward the target depth: cross more when the book is
            // above target, less below.
            let target = u64::from(self.cfg.target_orders_per_symbol);
            let live = self.live_per_symbol();
            let cross_pct = if live > target + target / 10 {
                (mix.gtc_cross_pct * 2).min(100)
            } else if live + target / 10 < target {
                mix.gtc_cross_pct / 2
            } else {
                mix.gtc_cross_pct
            };
            let cross = self.rng.percent() < cross_pct;
            return self.new_order(symbol, TimeInForce::Gtc, cross);
        }
        if roll < mix.new_gtc_pct + mix.ioc_pct {
            return self.new_order(symbol, TimeInForce::Ioc, true);
        }
        let Some(order) = self.pick_live() else {
            return self.new_order(symbol, TimeInForce::Gtc, false);
        };
        if roll < mix.new_gtc_pct + mix.ioc_pct + mix.cancel_pct {
            let op = Op::Cancel(wire::Cancel::new(order.client_order_id, order.symbol));
            return self.command(order.account, op);
        }
        // Replace: mostly a move of 1..=8 ticks either way (which may cross
        // and trade), sometimes a size reduction in place.
        let (price, quantity) = if self.rng.below(5) == 0 && order.open_quantity > 1 {
            (order.price, 1 + self.rng.below(order.open_quantity - 1))
        } else {
            let step = 1 + self.rng.below(8) as i64;
            let price = if self.rng.below(2) == 0 {
                order.price + step
            } else {
                order.price - step
            };
            (price.max(1), order.open_quantity)
        };
        let op = Op::Replace(Replace::new(
            order.client_order_id,
            order.symbol,
            price,
            quantity,
        ));
        self.command(order.account, op)
    }
}

/// Generates `count` commands of `cfg.mix` (after a prefill) for a shard
/// built with `shard_config` (whose limits must leave room for the target
/// depth).
///
/// # Panics
///
/// If the mix does not sum to 100 or `symbols`/`accounts` is 0.
pub fn generate(shard_config: ShardConfig, cfg: WorkloadConfig, count: usize) -> Workload {
    let m = cfg.mix;
    assert_eq!(
        m.new_gtc_pct + m.ioc_pct + m.cancel_pct + m.replace_pct,
        100,
        "mix shares must sum to 100"
    );
    assert!(cfg.symbols > 0 && cfg.accounts > 0 && cfg.quantity_max > 0);
    let mut g = Generator {
        cfg,
        rng: Rng(cfg.seed),
        shard: Shard::new(0, 1, cfg.symbols, shard_config),
        next_id: vec![0; cfg.accounts as usize + 1],
        candidates: Vec::new(),
        sink: DiscardSink::default(),
    };
    let mut prefill = Vec::new();
    for symbol in 0..cfg.symbols {
        for _ in 0..cfg.target_orders_per_symbol {
            prefill.push(g.new_order(symbol, TimeInForce::Gtc, false));
        }
    }
    g.sink = DiscardSink::default();
    let commands = (0..count).map(|_| g.next_command()).collect();
    let levels_end = (0..cfg.symbols)
        .map(|s| {
            (g.shard.depth(s, Side::Buy).count() + g.shard.depth(s, Side::Sell).count()) as u64
        })
        .sum();
    Workload {
        prefill,
        commands,
        stats: WorkloadStats {
            fills: g.sink.fills,
            reports: g.sink.reports,
            live_orders_end: g.shard.live_orders() as u64,
            levels_end,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaying_a_workload_reproduces_the_generators_run() {
        let shard_config = ShardConfig {
            orders_max: 4096,
            ..ShardConfig::default()
        };
        let cfg = WorkloadConfig {
            target_orders_per_symbol: 200,
            spread_ticks: 150,
            ..WorkloadConfig::default()
        };
        let w = generate(shard_config, cfg, 20_000);
        assert_eq!(w.commands.len(), 20_000);
        let mut shard = w.start_shard(shard_config, cfg.symbols);
        let mut sink = DiscardSink::default();
        shard.process_batch(&w.commands, 0, &mut sink);
        assert_eq!(sink.reports, w.stats.reports);
        assert_eq!(sink.fills, w.stats.fills);
        assert_eq!(shard.live_orders() as u64, w.stats.live_orders_end);
        assert!(sink.fills > 0, "some orders trade");
        // The flow keeps the book near its target depth.
        let live = w.stats.live_orders_end;
        assert!((100..=400).contains(&live), "live orders {live}");
        // Generation is deterministic.
        let again = generate(shard_config, cfg, 20_000);
        assert_eq!(again.commands, w.commands);
    }
}
