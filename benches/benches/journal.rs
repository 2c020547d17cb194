//! Durability costs: what the journal adds per command, how fast recovery
//! replays, and how long a snapshot stops a shard.
//!
//! Run: `cargo bench -p benches --bench journal`. Throughput is in
//! commands, records or orders (criterion's `elem/s`); time per element is
//! 1e9 / that rate.
//!
//! - `journal/encode_record`: encoding the commands of the exchange-core
//!   mix (mostly 73-byte NewOrder and Replace records, with crc32c) into a
//!   reserved batch buffer: the runtime's cost per accepted command.
//! - `journal/decode_record`: the same records decoded and checked.
//! - `journal/recover_1m_records`: [`engine::journal::recover`] of a shard
//!   whose journal holds about a million records of the exchange-core mix
//!   on 64 books (from an empty shard, no snapshot): reading the segments
//!   (from the page cache: the files were just written), checking every
//!   record and applying it. Wall clock.
//! - `journal/snapshot_write_1m_live` and `journal/snapshot_restore_1m_live`:
//!   [`Shard::write_snapshot`] (serialize and digest in one walk: the time
//!   the runtime's shard stops matching) and [`Shard::from_snapshot`] of a
//!   shard with 2^20 live orders in 64 books, and with the same plus a full
//!   history of 2^20 terminated orders (`_with_history`).
//!   `journal/state_digest_1m_live` is the digest walk alone, for scale.
//! - `history/heavy_matching_{off,full_1m}`: what the order history costs
//!   the book in steady state: the heavy-matching mix (most commands end
//!   an order) on a shard whose history is off (`history_max` 0) or a
//!   full ring of 2^20 entries, so that every terminated order also evicts
//!   one. Each iteration restores the warmed-up shard from a snapshot
//!   (untimed) and times `process_batch` over the measured slice.
//!
//! The journal files go to a directory under the system temp dir, removed
//! at the end; the generated flows are printed to stderr with their shape.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::book::workload::{self, WorkloadConfig};
use engine::book::{Command, Matcher, Op, Shard, ShardConfig};
use engine::journal::{
    self, RECORD_BYTES_MAX, ShardIdentity, create_segment, decode_record, encode_record, recover,
};
use wire::{Cancel, NewOrder, Side};

/// Commands per encode/decode iteration.
const CODEC_COMMANDS: usize = 10_000;
/// Records in the recovery benchmark's journal (plus the prefill).
const RECOVERY_RECORDS: usize = 1_000_000;
/// Live orders in the snapshot benchmarks.
const SNAPSHOT_LIVE_ORDERS: u32 = 1 << 20;
/// Books of the large shards.
const SYMBOLS: u32 = 64;

fn codec(c: &mut Criterion) {
    let flow = workload::generate(
        ShardConfig {
            orders_max: 1 << 17,
            ..ShardConfig::default()
        },
        WorkloadConfig::default(),
        CODEC_COMMANDS,
    );
    let cmds = flow.commands;
    let mut buf = Vec::with_capacity(cmds.len() * RECORD_BYTES_MAX);
    let mut group = c.benchmark_group("journal");
    group.throughput(Throughput::Elements(cmds.len() as u64));
    group.bench_function("encode_record", |b| {
        b.iter(|| {
            buf.clear();
            for (i, cmd) in cmds.iter().enumerate() {
                encode_record(&mut buf, i as u64 + 1, 77, black_box(cmd));
            }
            black_box(buf.len())
        })
    });
    eprintln!(
        "journal/encode_record: {} commands, {} bytes of records ({:.1} per command)",
        cmds.len(),
        buf.len(),
        buf.len() as f64 / cmds.len() as f64
    );
    group.bench_function("decode_record", |b| {
        b.iter(|| {
            let mut at = 0;
            let mut sessions = 0u64;
            while let Ok(Some((record, used))) = decode_record(black_box(&buf[at..])) {
                sessions = sessions.wrapping_add(record.cmd.session.get());
                at += used;
            }
            black_box(sessions)
        })
    });
    group.finish();
}

/// A journal directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn recovery(c: &mut Criterion) {
    let shard_config = ShardConfig {
        orders_max: 1 << 17,
        ..ShardConfig::default()
    };
    let cfg = WorkloadConfig {
        symbols: SYMBOLS,
        ..WorkloadConfig::default()
    };
    let flow = workload::generate(shard_config, cfg, RECOVERY_RECORDS);
    let id = ShardIdentity {
        shard_index: 0,
        shard_count: 1,
        symbol_count: SYMBOLS,
    };
    let dir = TempDir(
        std::env::temp_dir().join(format!("turbo-dex-bench-journal-{}", std::process::id())),
    );
    let _ = std::fs::remove_dir_all(&dir.0);
    // Journal the flow as the runtime would: batches of 1,000 records.
    let segment_bytes = journal::DEFAULT_SEGMENT_BYTES;
    let mut segment = create_segment(&dir.0, &id, &shard_config, 1, segment_bytes).unwrap();
    let mut buf = Vec::with_capacity(1_000 * RECORD_BYTES_MAX);
    let mut seq = 1;
    let all: Vec<Command> = flow.prefill.iter().chain(&flow.commands).copied().collect();
    for (i, batch) in all.chunks(1_000).enumerate() {
        buf.clear();
        for cmd in batch {
            encode_record(&mut buf, seq, i as u64, cmd);
            seq += 1;
        }
        if !segment.fits(buf.len()) {
            let next = segment.number() + 1;
            segment = create_segment(&dir.0, &id, &shard_config, next, segment_bytes).unwrap();
        }
        segment.append_blocking(&buf).unwrap();
    }
    segment.sync_data().unwrap();
    drop(segment);
    eprintln!(
        "journal/recover_1m_records: {} records ({} prefill) in {} segments of {} MiB; \
         {} live orders at the end",
        all.len(),
        flow.prefill.len(),
        std::fs::read_dir(journal::shard_dir(&dir.0, 0))
            .unwrap()
            .count(),
        segment_bytes >> 20,
        flow.stats.live_orders_end
    );
    let mut group = c.benchmark_group("journal");
    group.throughput(Throughput::Elements(all.len() as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("recover_1m_records", |b| {
        b.iter(|| {
            let r = recover(&dir.0, &id, shard_config, segment_bytes).unwrap();
            assert_eq!(r.report.records_replayed, all.len() as u64);
            black_box(r.shard.live_orders())
        })
    });
    let r = recover(&dir.0, &id, shard_config, segment_bytes).unwrap();
    eprintln!("journal/recover_1m_records: {}", r.report);
    group.finish();
}

/// A shard with `SNAPSHOT_LIVE_ORDERS` resting orders over `SYMBOLS`
/// books (about 16 orders per price level), and, if `history`, as many
/// again entered and canceled (a full history).
fn large_shard(history: bool) -> Shard {
    let cfg = ShardConfig {
        orders_max: SNAPSHOT_LIVE_ORDERS,
        history_max: SNAPSHOT_LIVE_ORDERS,
        ..ShardConfig::default()
    };
    let mut shard = Shard::new(0, 1, SYMBOLS, cfg);
    let mut sink = workload::DiscardSink::default();
    let total = if history { 2 } else { 1 } * SNAPSHOT_LIVE_ORDERS as u64;
    let order = |n: u64| {
        let account = 1 + n % 1_000;
        let symbol = (n % u64::from(SYMBOLS)) as u32;
        (account, n / 1_000, symbol)
    };
    for n in 0..total {
        if history && n % 2 == 1 {
            // Cancel the previous order first (so live orders never pass
            // the limit): half of all orders end canceled.
            let (account, id, symbol) = order(n - 1);
            let cancel = Command {
                session: engine::session_id::SessionId::from_raw(account),
                account,
                op: Op::Cancel(Cancel::new(id, symbol)),
            };
            shard.process(&cancel, n, &mut sink);
        }
        let (account, id, symbol) = order(n);
        let side = if (n / 2) % 2 == 0 {
            Side::Buy
        } else {
            Side::Sell
        };
        let offset = 1 + ((n / 128) % 500) as i64;
        let price = match side {
            Side::Buy => 100_000 - offset,
            Side::Sell => 100_000 + offset,
        };
        let cmd = Command {
            session: engine::session_id::SessionId::from_raw(account),
            account,
            op: Op::New(NewOrder::limit(id, symbol, side, price, 1 + n % 50)),
        };
        shard.process(&cmd, n, &mut sink);
    }
    assert_eq!(shard.live_orders(), SNAPSHOT_LIVE_ORDERS as usize);
    shard
}

fn snapshots(c: &mut Criterion) {
    for history in [false, true] {
        let shard = large_shard(history);
        let suffix = if history { "_with_history" } else { "" };
        let mut bytes = Vec::with_capacity(shard.snapshot_bytes_max());
        let digest = shard.write_snapshot(&mut bytes);
        eprintln!(
            "journal/snapshot{suffix}: {} live orders, {} remembered, snapshot {} MiB",
            shard.live_orders(),
            shard.history().count(),
            bytes.len() >> 20
        );
        let mut group = c.benchmark_group("journal");
        group.throughput(Throughput::Elements(shard.live_orders() as u64));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(10));
        group.bench_function(format!("snapshot_write_1m_live{suffix}"), |b| {
            b.iter(|| {
                bytes.clear();
                black_box(shard.write_snapshot(&mut bytes))
            })
        });
        group.bench_function(format!("snapshot_restore_1m_live{suffix}"), |b| {
            b.iter(|| {
                let restored = Shard::from_snapshot(black_box(&bytes), *shard.config()).unwrap();
                black_box(restored.live_orders())
            })
        });
        if !history {
            group.bench_function("state_digest_1m_live", |b| {
                b.iter(|| black_box(shard.state_digest()))
            });
        }
        group.finish();
        let restored = Shard::from_snapshot(&bytes, *shard.config()).unwrap();
        assert_eq!(restored.state_digest(), digest);
    }
}

/// Commands run before the history's steady state (enough terminated
/// orders to fill a ring of 2^20), and commands measured.
const HISTORY_WARM_UP_COMMANDS: usize = 1_400_000;
const HISTORY_MEASURED_COMMANDS: usize = 300_000;

fn history(c: &mut Criterion) {
    let mut group = c.benchmark_group("history");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(HISTORY_MEASURED_COMMANDS as u64));
    for (name, history_max) in [
        ("heavy_matching_off", 0),
        ("heavy_matching_full_1m", 1 << 20),
    ] {
        let shard_config = ShardConfig {
            orders_max: 1 << 17,
            history_max,
            ..ShardConfig::default()
        };
        let cfg = WorkloadConfig {
            mix: workload::Mix::HEAVY_MATCHING,
            ..WorkloadConfig::default()
        };
        let flow = workload::generate(
            shard_config,
            cfg,
            HISTORY_WARM_UP_COMMANDS + HISTORY_MEASURED_COMMANDS,
        );
        let (warm_up, measured) = flow.commands.split_at(HISTORY_WARM_UP_COMMANDS);
        let mut shard = flow.start_shard(shard_config, cfg.symbols);
        shard.process_batch(warm_up, 1, &mut workload::DiscardSink::default());
        assert_eq!(
            shard.history().count(),
            history_max as usize,
            "{name}: not full"
        );
        let mut warmed = Vec::new();
        shard.write_snapshot(&mut warmed);
        drop(shard);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut shard = Shard::from_snapshot(&warmed, shard_config).unwrap();
                    let mut sink = workload::DiscardSink::default();
                    let started = std::time::Instant::now();
                    shard.process_batch(black_box(measured), 2, &mut sink);
                    total += started.elapsed();
                    black_box((sink, shard.live_orders()));
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec, recovery, snapshots, history);
criterion_main!(benches);
