//! What a market-data snapshot costs the owning core: the time matching
//! stands still while a subscriber's snapshot is built (PROTOCOL.md §8.9,
//! `engine/src/server/core/md.rs`): counting the levels, walking both sides
//! best first into `MdDepth` rows in an output buffer, and the checksum of
//! the top ten levels per side. Books of 100, 1,000 and 16,384 (the default
//! `--levels-per-side`) levels per side, one order per level.
//!
//! Run: `cargo bench -p benches --bench md`. criterion's `elem/s` is
//! snapshot rows per second; the time per iteration is the pause.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::book::{Command, Matcher, Op, SessionId, Shard, ShardConfig};
use wire::{FrameBuf, MdDepth, NewOrder, Side};

/// One symbol with `levels` bid and `levels` ask levels, one order each.
fn book(levels: u32) -> Shard {
    let cfg = ShardConfig {
        orders_max: 2 * levels + 16,
        levels_per_side_max: levels.max(16),
        ..ShardConfig::default()
    };
    let mut shard = Shard::new(0, 1, 1, cfg);
    let mut sink = Vec::new();
    for i in 0..levels {
        for (id, side, price) in [
            (2 * u64::from(i) + 1, Side::Buy, 1_000_000 - i64::from(i)),
            (2 * u64::from(i) + 2, Side::Sell, 1_000_001 + i64::from(i)),
        ] {
            let cmd = Command {
                session: SessionId::from_raw(1),
                account: 1,
                op: Op::New(NewOrder::limit(id, 0, side, price, 5)),
            };
            shard.process(&cmd, 0, &mut sink);
        }
        sink.clear();
    }
    shard
}

/// The owner's work for one depth snapshot into `out`.
fn snapshot(shard: &Shard, out: &mut FrameBuf) -> u32 {
    let seq = shard.md_seq(0);
    let rows = shard.md_levels(0, Side::Buy).count() + shard.md_levels(0, Side::Sell).count();
    for side in [Side::Buy, Side::Sell] {
        for l in shard.md_levels(0, side) {
            out.push(&MdDepth::new(
                0, side, true, seq, 1, l.price, l.quantity, l.orders,
            ));
        }
    }
    let checksum = wire::book_checksum(
        shard.md_levels(0, Side::Buy).map(|l| (l.price, l.quantity)),
        shard
            .md_levels(0, Side::Sell)
            .map(|l| (l.price, l.quantity)),
    );
    checksum ^ rows as u32
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("md_snapshot");
    for levels in [100u32, 1_000, 16_384] {
        let shard = book(levels);
        let mut out = FrameBuf::new(64 << 20, wire::MAX_FRAME_BYTES_LIMIT, u16::MAX);
        g.throughput(Throughput::Elements(2 * u64::from(levels)));
        g.bench_function(format!("levels_per_side_{levels}"), |b| {
            b.iter(|| {
                out.clear();
                black_box(snapshot(black_box(&shard), &mut out))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
