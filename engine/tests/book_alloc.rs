//! Proof that the book allocates nothing in steady state: a counting global
//! allocator watches a long run of the realistic mix (new GTC, IOC, cancel,
//! replace, with matching) after a warm-up, and must see zero allocations.
//!
//! This file holds a single test so that no other test's allocations run
//! concurrently, and counting is per thread anyway.

use engine::book::workload::{self, DiscardSink, Mix, WorkloadConfig};
use engine::book::{Matcher, ShardConfig};
use testkit::CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `f` and returns how many allocations this thread made meanwhile.
fn allocations_during(f: impl FnOnce()) -> u64 {
    testkit::count_allocations(f).1
}

#[test]
fn steady_state_matching_allocates_nothing() {
    // The counter itself works.
    assert_eq!(
        allocations_during(|| drop(std::hint::black_box(vec![1u8; 16]))),
        1
    );

    let uncapped = ShardConfig {
        orders_max: 1 << 14,
        levels_per_side_max: 4_096,
        ..ShardConfig::default()
    };
    // With the per-account open-order caps on, the shard counts every
    // resting and leaving order per account: that must not allocate either.
    let capped = ShardConfig {
        account_orders_max: 1 << 13,
        account_symbol_orders_max: 1 << 12,
        ..uncapped
    };
    for (mix, symbols, shard_config) in [
        (Mix::EXCHANGE_CORE, 4, uncapped),
        (Mix::HEAVY_MATCHING, 2, uncapped),
        (Mix::EXCHANGE_CORE, 4, capped),
    ] {
        let cfg = WorkloadConfig {
            mix,
            symbols,
            target_orders_per_symbol: 500,
            spread_ticks: 400,
            ..WorkloadConfig::default()
        };
        let flow = workload::generate(shard_config, cfg, 150_000);
        let (warm_up, steady) = flow.commands.split_at(50_000);
        let mut shard = flow.start_shard(shard_config, symbols);
        let mut sink = DiscardSink::default();
        // Warm-up: books reach their working depth and the level vectors
        // their working capacity.
        shard.process_batch(warm_up, 1, &mut sink);
        let before = sink;
        // Half one command at a time, half in batches (as the server feeds
        // the shard, with prefetching).
        let (single, batched) = steady.split_at(steady.len() / 2);
        let allocations = allocations_during(|| {
            for (i, cmd) in single.iter().enumerate() {
                shard.process(cmd, i as u64, &mut sink);
            }
            for (i, batch) in batched.chunks(64).enumerate() {
                shard.process_batch(batch, i as u64, &mut sink);
            }
        });
        let fills = sink.fills - before.fills;
        assert!(fills > 2_000, "{mix:?}: the run must match ({fills} fills)");
        assert!(
            shard.live_orders() > 100,
            "{mix:?}: the book must stay deep"
        );
        assert_eq!(
            allocations,
            0,
            "{mix:?}: {} commands in steady state allocated",
            steady.len()
        );
        shard.check_invariants().unwrap();
    }
}
