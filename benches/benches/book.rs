//! Matching-core throughput: book operations per second on one core, for
//! the real book and for the naive reference book on the same stream.
//!
//! Run: `cargo bench -p benches --bench book`. Every case reports
//! throughput in book operations (criterion's `elem/s`); ns per operation
//! is 1e9 / that rate. After each flow the bench prints a summary line,
//! e.g. `heavy matching: 61 ns/op, batched 55 ns/op, reference 119 ns/op,
//! 1.95x`: the median over criterion's samples of this run, and the
//! reference's time over the real book's one-at-a-time time.
//!
//! The command streams come from `engine::book::workload`, generated once
//! outside the timed loop. Each timed iteration starts from the same state:
//! a fresh book, the prefill (the books at their target depth) and a
//! warm-up slice of the stream (so slabs, the index and the level vectors
//! are in their steady state, pages faulted in), all untimed; then the
//! measured slice runs into a counting sink, three ways:
//!
//! - `book/<flow>/process`: `Matcher::process`, one command at a time;
//! - `book/<flow>/batched`: `Matcher::process_batch` over slices of the
//!   server's batch size (`ServerConfig::batch`, 2,048), as a core applies
//!   a ring drain (the book prefetches a few commands ahead);
//! - `book/<flow>/naive`: the naive reference book (`benches::naive`:
//!   `BTreeMap` levels of `VecDeque`s and a `HashMap`), one at a time.
//!
//! The flows (`benches::flows`):
//!
//! - `heavy_matching_mix`: 50% GTC (60% of them crossing), 30% IOC,
//!   5% cancel, 15% replace: most new orders trade against one or more
//!   resting orders.
//! - `exchange_core_mix`: exchange-core's throughput mix on one
//!   symbol: 9% new GTC, 3% IOC, 6% cancel, 82% replace (move), about
//!   1,000 resting orders over several hundred price levels; some orders trade.
//! - `exchange_core_mix_64_symbols`: the same mix spread over 64
//!   books of one shard (64,000 orders), which no longer fits in L2.
//!
//! The generator prints the flow's shape (fills, live orders, levels) to
//! stderr once per flow, so a number can be read with its workload.
//! For counts that do not depend on the machine's load, see
//! `scripts/book-cachegrind.sh`.
//!
//! Clock: by default the timed loop reads the benchmark thread's own CPU
//! time (`/proc/thread-self/schedstat`, updated at least every scheduler
//! tick, so each reading is within a few ms and the error averages out over
//! the samples). On a small shared machine, wall-clock time also counts the
//! turns of every other process on the same core; CPU time does not, though
//! their cache pollution still shows. `BOOK_BENCH_CLOCK=wall` measures
//! wall-clock time instead (use it on a quiet machine, or to compare).

use std::hint::black_box;
use std::time::{Duration, Instant};

use benches::flows::{self, Flow};
use benches::naive::NaiveBook;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::book::workload::{self, DiscardSink, Workload};
use engine::book::{Command, Matcher, Shard};

/// The clock the timed loop reads; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Clock {
    ThreadCpu,
    Wall,
}

impl Clock {
    fn from_env() -> Clock {
        let wall = std::env::var("BOOK_BENCH_CLOCK").is_ok_and(|v| v == "wall");
        if wall || thread_cpu_time().is_none() {
            Clock::Wall
        } else {
            Clock::ThreadCpu
        }
    }

    /// Runs `f` and returns how long it took by this clock.
    fn time(self, f: impl FnOnce()) -> Duration {
        match self {
            Clock::Wall => {
                let start = Instant::now();
                f();
                start.elapsed()
            }
            Clock::ThreadCpu => {
                let start = thread_cpu_time().unwrap_or_default();
                f();
                thread_cpu_time().unwrap_or_default().saturating_sub(start)
            }
        }
    }
}

/// This thread's CPU time so far (Linux; `None` elsewhere).
fn thread_cpu_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Untimed commands run before each measured slice.
const WARM_UP_COMMANDS: usize = 100_000;
/// Commands in each measured slice.
const MEASURED_COMMANDS: usize = 500_000;

/// How the measured slice is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    /// The real book, `Matcher::process` one command at a time.
    Process,
    /// The real book, `Matcher::process_batch` over slices of the server's
    /// batch size.
    Batched,
    /// The naive reference book, one command at a time.
    Naive,
}

impl Way {
    const ALL: [Way; 3] = [Way::Process, Way::Batched, Way::Naive];

    fn name(self) -> &'static str {
        match self {
            Way::Process => "process",
            Way::Batched => "batched",
            Way::Naive => "naive",
        }
    }
}

/// Applies `cmds` to `book` one at a time, or in slices of `batch`.
fn apply(book: &mut impl Matcher, cmds: &[Command], batch: Option<usize>, sink: &mut DiscardSink) {
    match batch {
        Some(batch) => {
            for slice in cmds.chunks(batch) {
                book.process_batch(slice, 2, sink);
            }
        }
        None => {
            for cmd in cmds {
                book.process(cmd, 2, sink);
            }
        }
    }
}

/// A fresh book with the prefill and the warm-up applied (untimed), then
/// the measured slice applied and timed.
fn timed_run<M: Matcher>(
    mut book: M,
    flow: &Workload,
    warm_up: &[Command],
    measured: &[Command],
    batch: Option<usize>,
    clock: Clock,
) -> Duration {
    let mut sink = DiscardSink::default();
    apply(&mut book, &flow.prefill, batch, &mut sink);
    apply(&mut book, warm_up, batch, &mut sink);
    let elapsed = clock.time(|| apply(&mut book, black_box(measured), batch, &mut sink));
    black_box((sink, book.live_orders()));
    elapsed
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn bench_flow(c: &mut Criterion, flow_def: Flow, clock: Clock) -> String {
    let shard_config = flows::shard_config();
    let batch = flows::server_batch_commands();
    let cfg = flow_def.config;
    let name = flow_def.bench;
    let flow = workload::generate(shard_config, cfg, WARM_UP_COMMANDS + MEASURED_COMMANDS);
    let (warm_up, measured) = flow.commands.split_at(WARM_UP_COMMANDS);
    eprintln!(
        "{name} ({clock:?} clock): {} prefill + {} warm-up + {} measured commands; \
         over all {} commands {} fills, {} reports; at the end {} live orders in {} price levels; \
         batches of {batch}",
        flow.prefill.len(),
        warm_up.len(),
        measured.len(),
        flow.commands.len(),
        flow.stats.fills,
        flow.stats.reports,
        flow.stats.live_orders_end,
        flow.stats.levels_end,
    );
    let mut group = c.benchmark_group("book");
    group.throughput(Throughput::Elements(measured.len() as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(8));
    let mut ns_per_op = Vec::new();
    for way in Way::ALL {
        // ns per operation of every sample criterion takes (its warm-up
        // calls included: the median hardly moves).
        let mut samples = Vec::new();
        group.bench_function(format!("{name}/{}", way.name()), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let shard = || {
                        Shard::try_new(0, 1, cfg.symbols, shard_config).expect("valid shard config")
                    };
                    total += match way {
                        Way::Process => timed_run(shard(), &flow, warm_up, measured, None, clock),
                        Way::Batched => {
                            timed_run(shard(), &flow, warm_up, measured, Some(batch), clock)
                        }
                        Way::Naive => {
                            let book = NaiveBook::new(cfg.symbols, shard_config);
                            timed_run(book, &flow, warm_up, measured, None, clock)
                        }
                    };
                }
                samples.push(total.as_nanos() as f64 / (iters as f64 * measured.len() as f64));
                total
            })
        });
        ns_per_op.push(median(samples));
    }
    group.finish();
    let [process, batched, naive] = ns_per_op[..] else {
        unreachable!("one figure per way");
    };
    let line = format!(
        "{}: {process:.0} ns/op, batched {batched:.0} ns/op, reference {naive:.0} ns/op, {:.2}x \
         ({clock:?} clock, median of this run's samples)",
        flow_def.label,
        naive / process,
    );
    println!("{line}");
    line
}

fn book(c: &mut Criterion) {
    let clock = Clock::from_env();
    let lines: Vec<String> = flows::flows()
        .into_iter()
        .map(|flow| bench_flow(c, flow, clock))
        .collect();
    println!("\nsummary (real book one at a time, batched, naive reference; reference / real):");
    for line in lines {
        println!("  {line}");
    }
}

criterion_group!(benches, book);
criterion_main!(benches);
