//! `book-ops`: replays one measured flow through one book, one operation
//! at a time, for deterministic counts under cachegrind
//! (`scripts/book-cachegrind.sh`).
//!
//!     book-ops MIX REPLAYS BOOK [--ops N] [--warm-up N] [--depth N]
//!
//! - MIX: `heavy`, `exchange-core` or `exchange-core-64` (benches::flows);
//! - REPLAYS: 0, 1 or 2 replays of the measured stream;
//! - BOOK: `real` (`Shard::process`, one command at a time), `batched`
//!   (`Shard::process_batch` in slices of the server's batch size),
//!   `capped` (like `real`, with the server's default open-order cap per
//!   account, a quarter of the shard's orders: the cost of counting live
//!   orders per account) or `naive` (the reference book, one command at a
//!   time);
//! - `--ops`: measured commands (default 300,000); `--warm-up`: commands
//!   run before them on every book (default 100,000); `--depth`: resting
//!   orders per symbol the flow keeps (default the workload's 1,000).
//!
//! Everything except the replays is the same whatever REPLAYS is: the
//! stream is generated, and [`BOOKS`] books are built (prefill and warm-up
//! applied) before any replay, and the process exits without tearing
//! anything down. So the counts of a 2-replay run minus those of a
//! 1-replay run are the cost of exactly one replay of the stream on a
//! built book, whatever generating and building cost.

use std::hint::black_box;
use std::process::ExitCode;

use benches::flows;
use benches::naive::NaiveBook;
use engine::book::workload::{self, DiscardSink};
use engine::book::{Command, Matcher, Shard, ShardConfig};

/// Books built before the replays: the most replays a run may ask for.
const BOOKS: usize = 2;

const USAGE: &str = "usage: book-ops MIX REPLAYS BOOK [--ops N] [--warm-up N] [--depth N]
  MIX: heavy | exchange-core | exchange-core-64
  REPLAYS: 0..=2
  BOOK: real | batched | capped | naive";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Real,
    Batched,
    Capped,
    Naive,
}

/// A book being measured.
enum Book {
    Real(Box<Shard>),
    Naive(Box<NaiveBook>),
}

impl Book {
    fn new(kind: Kind, symbols: u32, cfg: ShardConfig) -> Result<Book, String> {
        Ok(match kind {
            Kind::Naive => Book::Naive(Box::new(NaiveBook::new(symbols, cfg))),
            Kind::Real | Kind::Batched | Kind::Capped => Book::Real(Box::new(
                Shard::try_new(0, 1, symbols, cfg).map_err(|e| e.to_string())?,
            )),
        })
    }

    /// Applies `cmds` the way `kind` measures.
    fn run(&mut self, kind: Kind, cmds: &[Command], batch: usize, sink: &mut DiscardSink) {
        match (self, kind) {
            (Book::Real(shard), Kind::Batched) => {
                for slice in cmds.chunks(batch) {
                    shard.process_batch(slice, 1, sink);
                }
            }
            (Book::Real(shard), _) => {
                for cmd in cmds {
                    shard.process(cmd, 1, sink);
                }
            }
            (Book::Naive(book), _) => {
                for cmd in cmds {
                    book.process(cmd, 1, sink);
                }
            }
        }
    }

    fn live_orders(&self) -> usize {
        match self {
            Book::Real(shard) => shard.live_orders(),
            Book::Naive(book) => book.live_orders(),
        }
    }
}

fn number(args: &[String], name: &str, default: usize) -> Result<usize, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.replace('_', "").parse().ok())
            .ok_or_else(|| format!("{name} needs a number")),
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let [mix, replays, kind, ..] = args else {
        return Err("MIX, REPLAYS and BOOK are required".into());
    };
    let flow = flows::flow(mix).ok_or_else(|| format!("unknown MIX {mix:?}"))?;
    let replays: usize = replays
        .parse()
        .ok()
        .filter(|&r| r <= BOOKS)
        .ok_or_else(|| format!("REPLAYS must be 0 to {BOOKS}, not {replays:?}"))?;
    let kind = match kind.as_str() {
        "real" => Kind::Real,
        "batched" => Kind::Batched,
        "capped" => Kind::Capped,
        "naive" => Kind::Naive,
        other => return Err(format!("unknown BOOK {other:?}")),
    };
    let ops = number(args, "--ops", 300_000)?;
    let warm_up = number(args, "--warm-up", 100_000)?;
    let mut config = flow.config;
    let depth = number(args, "--depth", config.target_orders_per_symbol as usize)?;
    if depth == 0 || ops == 0 {
        return Err("--ops and --depth must be above 0".into());
    }
    // Keep the default's orders per price level at any depth.
    config.spread_ticks =
        (config.spread_ticks * depth as i64 / i64::from(config.target_orders_per_symbol)).max(4);
    config.target_orders_per_symbol = depth as u32;

    let shard_config = match kind {
        Kind::Capped => ShardConfig {
            account_orders_max: (flows::shard_config().orders_max / 4).max(1),
            ..flows::shard_config()
        },
        _ => flows::shard_config(),
    };
    let batch = flows::server_batch_commands();
    let flow_cmds = workload::generate(shard_config, config, warm_up + ops);
    let (warm, measured) = flow_cmds.commands.split_at(warm_up);
    let mut books = Vec::with_capacity(BOOKS);
    for _ in 0..BOOKS {
        let mut book = Book::new(kind, config.symbols, shard_config)?;
        let mut sink = DiscardSink::default();
        book.run(kind, &flow_cmds.prefill, batch, &mut sink);
        book.run(kind, warm, batch, &mut sink);
        books.push(book);
    }
    let mut sink = DiscardSink::default();
    for book in books.iter_mut().take(replays) {
        book.run(kind, black_box(measured), batch, &mut sink);
    }
    let live: usize = books.iter().map(Book::live_orders).sum();
    println!(
        "book-ops {mix} {replays} {}: {} prefill + {warm_up} warm-up + {ops} measured commands \
         per book; replays made {} reports, {} fills; {live} live orders in {BOOKS} books",
        args[2],
        flow_cmds.prefill.len(),
        sink.reports,
        sink.fills,
    );
    // Exit without dropping the books: teardown would be counted too, and
    // differently after a replay.
    std::mem::forget(books);
    std::mem::forget(flow_cmds);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("book-ops: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
