//! Matching-core throughput: book operations per second on one core.
//!
//! Run: `cargo bench -p benches --bench book`. Every case reports
//! throughput in book operations (criterion's `elem/s`); ns per operation
//! is 1e9 / that rate.
//!
//! The command streams come from `engine::book::workload`, generated once
//! outside the timed loop. Each timed iteration starts from the same state:
//! a fresh shard, the prefill (the books at their target depth) and a
//! warm-up slice of the stream (so slabs, the index and the level vectors
//! are in their steady state, pages faulted in), all untimed; then the
//! measured slice runs through `Matcher::process_batch` into a counting sink.
//!
//! - `book/exchange_core_mix`: exchange-core's throughput mix on one
//!   symbol: 9% new GTC, 3% IOC, 6% cancel, 82% replace (move), about
//!   1,000 resting orders over several hundred price levels; some orders trade.
//! - `book/exchange_core_mix_64_symbols`: the same mix spread over 64
//!   books of one shard (64,000 orders), which no longer fits in L2.
//! - `book/heavy_matching_mix`: 50% GTC (60% of them crossing), 30% IOC,
//!   5% cancel, 15% replace: most new orders trade against one or more
//!   resting orders.
//!
//! The generator prints the flow's shape (fills, live orders, levels) to
//! stderr once per case, so a number can be read with its workload.
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

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::book::workload::{self, DiscardSink, Mix, WorkloadConfig};
use engine::book::{Matcher, ShardConfig};

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

/// Sized for the flows: 128 Ki orders is twice the deepest flow (64 books
/// of 1,000), so the slabs never fill and the index load stays below 1/4.
fn shard_config() -> ShardConfig {
    ShardConfig {
        orders_max: 1 << 17,
        ..ShardConfig::default()
    }
}

fn bench_flow(c: &mut Criterion, name: &str, cfg: WorkloadConfig, clock: Clock) {
    let shard_config = shard_config();
    let flow = workload::generate(shard_config, cfg, WARM_UP_COMMANDS + MEASURED_COMMANDS);
    let (warm_up, measured) = flow.commands.split_at(WARM_UP_COMMANDS);
    eprintln!(
        "{name} ({clock:?} clock): {} prefill + {} warm-up + {} measured commands; \
         over all {} commands {} fills, {} reports; at the end {} live orders in {} price levels",
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
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut shard = flow.start_shard(shard_config, cfg.symbols);
                let mut sink = DiscardSink::default();
                shard.process_batch(warm_up, 1, &mut sink);
                total += clock.time(|| {
                    shard.process_batch(black_box(measured), 2, &mut sink);
                });
                black_box((sink, shard.live_orders()));
            }
            total
        })
    });
    group.finish();
}

fn book(c: &mut Criterion) {
    let clock = Clock::from_env();
    bench_flow(c, "exchange_core_mix", WorkloadConfig::default(), clock);
    bench_flow(
        c,
        "exchange_core_mix_64_symbols",
        WorkloadConfig {
            symbols: 64,
            ..WorkloadConfig::default()
        },
        clock,
    );
    bench_flow(
        c,
        "heavy_matching_mix",
        WorkloadConfig {
            mix: Mix::HEAVY_MATCHING,
            ..WorkloadConfig::default()
        },
        clock,
    );
}

criterion_group!(benches, book);
criterion_main!(benches);
