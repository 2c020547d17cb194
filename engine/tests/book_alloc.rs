//! Proof that the book allocates nothing in steady state: a counting global
//! allocator watches a long run of the realistic mix (new GTC, IOC, cancel,
//! replace, with matching) after a warm-up, and must see zero allocations.
//!
//! This file holds a single test so that no other test's allocations run
//! concurrently, and counting is per thread anyway.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use engine::book::workload::{self, DiscardSink, Mix, WorkloadConfig};
use engine::book::{Matcher, ShardConfig};

struct CountingAllocator;

thread_local! {
    /// Allocations made by this thread while counting is on (`None`: off).
    static ALLOCATIONS: Cell<Option<u64>> = const { Cell::new(None) };
}

fn note_allocation() {
    // `try_with`: the allocator can run while thread locals are torn down.
    let _ = ALLOCATIONS.try_with(|c| {
        if let Some(n) = c.get() {
            c.set(Some(n + 1));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments,
// which upholds `GlobalAlloc`'s contract; counting touches no heap memory.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; the caller upholds `dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `f` and returns how many allocations this thread made meanwhile.
fn allocations_during(f: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|c| c.set(Some(0)));
    f();
    ALLOCATIONS.with(|c| c.replace(None)).unwrap_or(0)
}

#[test]
fn steady_state_matching_allocates_nothing() {
    // The counter itself works.
    assert_eq!(
        allocations_during(|| drop(std::hint::black_box(vec![1u8; 16]))),
        1
    );

    let shard_config = ShardConfig {
        orders_max: 1 << 14,
        levels_per_side_max: 4_096,
        ..ShardConfig::default()
    };
    for (mix, symbols) in [(Mix::EXCHANGE_CORE, 4), (Mix::HEAVY_MATCHING, 2)] {
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
