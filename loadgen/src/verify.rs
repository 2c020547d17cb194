//! `--verify`: the checks on the server's answers that need more than one
//! report, and the bounded list of what went wrong.
//!
//! Per-order checks (one terminal outcome, fills within the quantity, leaves
//! quantities that add up, reports only for orders the connection sent) live
//! in the session, which tracks every order anyway. Here: trade pairing. A
//! trade between two of this run's sessions reaches us twice, as the maker's
//! fill and as the taker's, with one `trade_id`. Each worker keeps the fills
//! still waiting for their other half in a [`TradeLedger`] shared by its
//! connections; at the end the workers' ledgers are merged and whatever is
//! left unpaired is a violation. This assumes the run's sessions are the only
//! traders on the server (otherwise the other half of a trade goes to a
//! stranger): verify against a server nobody else uses.
//!
//! With `--cluster` a worker keeps one ledger per node ([`NodeLedgers`]):
//! a trade's two fills may reach two sessions but always come from the one
//! node that holds the symbol's shard, and trade ids are only unique within
//! a node (`(shard_index << 48) | n`, numbered by whoever runs the shard).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;

use crate::rng::mix64;

/// Violations kept with their text; beyond this only the count grows.
pub const VIOLATIONS_KEPT: usize = 20;

/// Unpaired fills one ledger holds before it stops pairing (about 48 bytes
/// each: 400 MB at the limit). Long verified runs with many connections on
/// different workers reach it; the run then says pairing was incomplete.
pub const UNPAIRED_TRADES_MAX: usize = 8 << 20;

/// What went wrong, bounded: the first [`VIOLATIONS_KEPT`] in full, then a count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Violations {
    /// The first violations, each one line.
    pub kept: Vec<String>,
    /// All violations, kept or not.
    pub total: u64,
}

impl Violations {
    /// Records one; `text` is only called while there is room to keep it.
    #[cold]
    pub fn push(&mut self, text: impl FnOnce() -> String) {
        self.total += 1;
        if self.kept.len() < VIOLATIONS_KEPT {
            self.kept.push(text());
        }
    }

    /// Adds another list's violations.
    pub fn merge(&mut self, other: Violations) {
        self.total += other.total;
        let room = VIOLATIONS_KEPT.saturating_sub(self.kept.len());
        self.kept.extend(other.kept.into_iter().take(room));
    }

    /// True when nothing went wrong.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

/// One side of a trade, as a fill reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TradeSide {
    /// The client order id of the order that traded.
    pub client_order_id: u64,
    /// Symbol id.
    pub symbol: u32,
    /// `Side` wire value of the order.
    pub side: u8,
    /// `Liquidity` wire value: maker or taker.
    pub liquidity: u8,
    /// Trade price in ticks.
    pub price: i64,
    /// Traded quantity.
    pub quantity: u64,
}

/// Hashes trade ids (already well spread) with one SplitMix finalizer
/// instead of SipHash: the ledger is on the report path of verified runs.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix64(self.0 ^ u64::from(b));
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = mix64(value);
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Fills waiting for the other half of their trade.
#[derive(Debug, Default)]
pub struct TradeLedger {
    unpaired: IdMap<TradeSide>,
    /// Trades whose two halves were seen and agreed.
    pub paired: u64,
    /// Fills not recorded because the ledger was at [`UNPAIRED_TRADES_MAX`].
    pub dropped: u64,
}

impl TradeLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fills still waiting for their other half.
    pub fn unpaired(&self) -> usize {
        self.unpaired.len()
    }

    /// Records one fill of trade `trade_id`: pairs it with the other half if
    /// that was seen (checking they agree), else keeps it waiting.
    pub fn record(&mut self, trade_id: u64, side: TradeSide, violations: &mut Violations) {
        if let Some(other) = self.unpaired.remove(&trade_id) {
            self.pair(trade_id, other, side, violations);
        } else if self.unpaired.len() < UNPAIRED_TRADES_MAX {
            self.unpaired.insert(trade_id, side);
        } else {
            self.dropped += 1;
        }
    }

    fn pair(&mut self, trade_id: u64, a: TradeSide, b: TradeSide, violations: &mut Violations) {
        self.paired += 1;
        if a.liquidity == b.liquidity {
            let role = if a.liquidity == wire::Liquidity::Maker.to_wire() {
                "maker"
            } else {
                "taker"
            };
            violations.push(|| {
                format!(
                    "trade {trade_id}: reported twice as {role} (orders {} and {}), never as the other side",
                    a.client_order_id, b.client_order_id
                )
            });
        } else if a.side == b.side
            || a.symbol != b.symbol
            || a.price != b.price
            || a.quantity != b.quantity
        {
            violations.push(|| {
                format!(
                    "trade {trade_id}: the two fills disagree: order {} side {} {} lots at {} on symbol {} \
                     vs order {} side {} {} lots at {} on symbol {}",
                    a.client_order_id, a.side, a.quantity, a.price, a.symbol,
                    b.client_order_id, b.side, b.quantity, b.price, b.symbol
                )
            });
        }
    }

    /// Adds another ledger's waiting fills (pairing those that meet).
    pub fn merge(&mut self, other: TradeLedger, violations: &mut Violations) {
        self.paired += other.paired;
        self.dropped += other.dropped;
        for (trade_id, side) in other.unpaired {
            self.record(trade_id, side, violations);
        }
    }

    /// Ends the run: every fill still waiting is a violation.
    pub fn finish(self, violations: &mut Violations) {
        self.finish_except(violations, |_| false);
    }

    /// Ends the run: every fill still waiting is a violation, except those
    /// on the symbols `unchecked` names. Returns the fills not checked.
    pub fn finish_except(
        self,
        violations: &mut Violations,
        unchecked: impl Fn(u32) -> bool,
    ) -> u64 {
        if self.dropped > 0 {
            let dropped = self.dropped;
            violations.push(|| {
                format!(
                    "trade pairing incomplete: {dropped} fills were not checked because more than \
                     {UNPAIRED_TRADES_MAX} trades waited for their other half; verify shorter runs"
                )
            });
        }
        let mut left: Vec<(u64, TradeSide)> = self.unpaired.into_iter().collect();
        let before = left.len();
        left.retain(|(_, side)| !unchecked(side.symbol));
        let skipped = (before - left.len()) as u64;
        left.sort_unstable_by_key(|&(id, _)| id);
        for (trade_id, side) in left {
            let role = if side.liquidity == wire::Liquidity::Maker.to_wire() {
                ("maker", "taker")
            } else {
                ("taker", "maker")
            };
            violations.push(|| {
                let buy = side.side == wire::Side::Buy.to_wire();
                format!(
                    "trade {trade_id}: seen only as {} (order {}: symbol {}, {} {} at {}), the {} \
                     fill never arrived",
                    role.0,
                    side.client_order_id,
                    side.symbol,
                    if buy { "bought" } else { "sold" },
                    side.quantity,
                    side.price,
                    role.1
                )
            });
        }
        skipped
    }
}

/// Most nodes [`NodeLedgers`] keeps apart: a routed session connects to
/// at most [`crate::cluster::NODE_CONNECTIONS_MAX`] nodes over a run.
pub const LEDGER_NODES_MAX: usize = crate::cluster::NODE_CONNECTIONS_MAX;

/// One [`TradeLedger`] per node, so that equal trade ids from two nodes
/// never pair. A few nodes: a list searched in order, not a map.
#[derive(Debug, Default)]
pub struct NodeLedgers {
    nodes: Vec<(SocketAddr, TradeLedger)>,
}

impl NodeLedgers {
    /// No ledger yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The ledger of the fills `node` reports (made on first use). Past
    /// [`LEDGER_NODES_MAX`] nodes the last one is shared, which can only
    /// pair too much, never invent a violation between halves that agree.
    pub fn of(&mut self, node: SocketAddr) -> &mut TradeLedger {
        let i = match self.nodes.iter().position(|(a, _)| *a == node) {
            Some(i) => i,
            None if self.nodes.len() < LEDGER_NODES_MAX => {
                self.nodes.push((node, TradeLedger::new()));
                self.nodes.len() - 1
            }
            None => self.nodes.len() - 1,
        };
        &mut self.nodes[i].1
    }

    /// Trades whose two halves were seen and agreed, over all nodes.
    pub fn paired(&self) -> u64 {
        self.nodes.iter().map(|(_, l)| l.paired).sum()
    }

    /// Adds another worker's ledgers, node by node.
    pub fn merge(&mut self, other: NodeLedgers, violations: &mut Violations) {
        for (node, ledger) in other.nodes {
            self.of(node).merge(ledger, violations);
        }
    }

    /// Ends the run: every fill still waiting is a violation, except on the
    /// nodes `unchecked` names (a node whose connection closed mid-run: the
    /// other half may have been on its way) and on the symbols
    /// `unchecked_symbol` names (of a shard another node took over: the
    /// other half may belong to an order set aside, whose fills reach no
    /// session). Returns the fills not checked.
    pub fn finish(
        self,
        violations: &mut Violations,
        unchecked: impl Fn(SocketAddr) -> bool,
        unchecked_symbol: impl Fn(u32) -> bool,
    ) -> u64 {
        let mut skipped = 0;
        for (node, ledger) in self.nodes {
            if unchecked(node) {
                skipped += ledger.unpaired() as u64;
            } else {
                skipped += ledger.finish_except(violations, &unchecked_symbol);
            }
        }
        skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{Liquidity, Side};

    fn side(id: u64, s: Side, l: Liquidity) -> TradeSide {
        TradeSide {
            client_order_id: id,
            symbol: 1,
            side: s.to_wire(),
            liquidity: l.to_wire(),
            price: 100,
            quantity: 5,
        }
    }

    #[test]
    fn halves_pair_and_leftovers_are_violations() {
        let mut v = Violations::default();
        let mut a = TradeLedger::new();
        let mut b = TradeLedger::new();
        a.record(1, side(10, Side::Buy, Liquidity::Maker), &mut v);
        a.record(1, side(20, Side::Sell, Liquidity::Taker), &mut v);
        a.record(2, side(11, Side::Buy, Liquidity::Maker), &mut v);
        b.record(2, side(21, Side::Sell, Liquidity::Taker), &mut v);
        b.record(3, side(22, Side::Sell, Liquidity::Taker), &mut v);
        assert_eq!((a.paired, a.unpaired(), b.unpaired()), (1, 1, 2));
        a.merge(b, &mut v);
        assert_eq!(a.paired, 2);
        assert!(v.is_empty());
        a.finish(&mut v);
        assert_eq!(v.total, 1);
        assert!(
            v.kept[0].contains("trade 3: seen only as taker"),
            "{:?}",
            v.kept
        );
    }

    #[test]
    fn same_role_twice_and_disagreeing_halves_are_violations() {
        let mut v = Violations::default();
        let mut l = TradeLedger::new();
        l.record(7, side(1, Side::Buy, Liquidity::Maker), &mut v);
        l.record(7, side(2, Side::Sell, Liquidity::Maker), &mut v);
        let mut other = side(4, Side::Sell, Liquidity::Taker);
        other.quantity = 6;
        l.record(8, side(3, Side::Buy, Liquidity::Maker), &mut v);
        l.record(8, other, &mut v);
        assert_eq!(v.total, 2);
        assert!(v.kept[0].contains("twice as maker"));
        assert!(v.kept[1].contains("disagree"));
    }

    #[test]
    fn node_ledgers_keep_equal_trade_ids_of_two_nodes_apart() {
        let a = SocketAddr::from(([127, 0, 0, 1], 9001));
        let b = SocketAddr::from(([127, 0, 0, 1], 9002));
        let mut v = Violations::default();
        // Trade 7 on each node, each whole: two trades, not one reported twice.
        let mut w1 = NodeLedgers::new();
        let mut w2 = NodeLedgers::new();
        w1.of(a)
            .record(7, side(1, Side::Buy, Liquidity::Maker), &mut v);
        w1.of(b)
            .record(7, side(2, Side::Buy, Liquidity::Maker), &mut v);
        w2.of(a)
            .record(7, side(3, Side::Sell, Liquidity::Taker), &mut v);
        w2.of(b)
            .record(7, side(4, Side::Sell, Liquidity::Taker), &mut v);
        w2.of(b)
            .record(8, side(5, Side::Sell, Liquidity::Taker), &mut v);
        w1.merge(w2, &mut v);
        assert!(v.is_empty(), "{:?}", v.kept);
        assert_eq!(w1.paired(), 2);
        // Trade 8's maker half never came: a violation unless b is unchecked.
        let mut kept = NodeLedgers::new();
        kept.of(b)
            .record(8, side(5, Side::Sell, Liquidity::Taker), &mut v);
        assert_eq!(kept.finish(&mut v, |n| n == b, |_| false), 1);
        assert!(v.is_empty());
        // Nor on a symbol of a shard that passed to another node.
        let mut moved = NodeLedgers::new();
        let half = side(6, Side::Sell, Liquidity::Taker);
        moved.of(a).record(9, half, &mut v);
        assert_eq!(moved.finish(&mut v, |_| false, |s| s == half.symbol), 1);
        assert!(v.is_empty());
        assert_eq!(w1.finish(&mut v, |_| false, |s| s != half.symbol), 0);
        assert_eq!(v.total, 1);
        assert!(
            v.kept[0].contains("trade 8: seen only as taker"),
            "{:?}",
            v.kept
        );
    }

    #[test]
    fn violations_keep_the_first_few_and_count_all() {
        let mut v = Violations::default();
        for i in 0..(VIOLATIONS_KEPT as u64 + 5) {
            v.push(|| format!("v{i}"));
        }
        let mut w = Violations::default();
        w.push(|| "late".to_string());
        v.merge(w);
        assert_eq!(v.total, VIOLATIONS_KEPT as u64 + 6);
        assert_eq!(v.kept.len(), VIOLATIONS_KEPT);
        assert_eq!(v.kept[0], "v0");
    }
}
