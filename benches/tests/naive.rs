//! The naive reference book does the same matching work as the real one:
//! each measured flow, replayed through both, gives the same trades, the
//! same filled quantity and the same live orders at the end. They agree
//! on every report too (the naive book follows the rules of
//! `engine::book`, and the streams use nothing it leaves out).

use benches::flows::{self, Flow};
use benches::naive::NaiveBook;
use engine::book::workload::{self, Workload};
use engine::book::{Matcher, Report, SessionId, Shard};

/// Commands per flow: enough for thousands of trades, small enough for a
/// debug build (the real book checks its invariants after every command).
const COMMANDS: usize = 100_000;

/// What a replay produced.
struct Replay {
    reports: Vec<(SessionId, Report)>,
    trades: u64,
    filled_quantity: u64,
    live_orders: usize,
}

fn replay(book: &mut impl Matcher, w: &Workload) -> Replay {
    let mut prefill = Vec::new();
    for cmd in &w.prefill {
        book.process(cmd, 0, &mut prefill);
    }
    let mut reports = Vec::new();
    for cmd in &w.commands {
        book.process(cmd, 1, &mut reports);
    }
    // Two fills per trade: count the taker's.
    let taker_fills = reports.iter().filter_map(|(_, r)| match r {
        Report::Fill(f) if f.liquidity == wire::Liquidity::Taker.to_wire() => Some(f),
        _ => None,
    });
    let (trades, filled_quantity) =
        taker_fills.fold((0, 0), |(n, q), f| (n + 1, q + f.quantity.get()));
    Replay {
        reports,
        trades,
        filled_quantity,
        live_orders: book.live_orders(),
    }
}

fn check(flow: Flow) {
    let shard_config = flows::shard_config();
    let w = workload::generate(shard_config, flow.config, COMMANDS);
    let mut shard = Shard::try_new(0, 1, flow.config.symbols, shard_config).expect("valid config");
    let real = replay(&mut shard, &w);
    let naive = replay(&mut NaiveBook::new(flow.config.symbols, shard_config), &w);
    let label = flow.label;
    assert!(
        real.trades > 1_000,
        "{label}: the flow trades ({})",
        real.trades
    );
    assert_eq!(real.trades, naive.trades, "{label}: trades");
    assert_eq!(
        real.filled_quantity, naive.filled_quantity,
        "{label}: filled quantity"
    );
    assert_eq!(real.live_orders, naive.live_orders, "{label}: live orders");
    assert_eq!(real.reports.len(), naive.reports.len(), "{label}: reports");
    if let Some(i) = (0..real.reports.len()).find(|&i| real.reports[i] != naive.reports[i]) {
        panic!(
            "{label}: report {i} differs:\n real  {:?}\n naive {:?}",
            real.reports[i], naive.reports[i]
        );
    }
}

#[test]
fn heavy_matching_agrees_with_the_naive_book() {
    check(flows::flow("heavy").expect("flow"));
}

#[test]
fn exchange_core_agrees_with_the_naive_book() {
    check(flows::flow("exchange-core").expect("flow"));
}

#[test]
fn exchange_core_64_books_agrees_with_the_naive_book() {
    check(flows::flow("exchange-core-64").expect("flow"));
}
