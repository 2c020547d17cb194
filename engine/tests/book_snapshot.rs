//! Shard snapshots under stress: large realistic books restore to the same
//! digest and go on identically, and damaged bytes are refused with an
//! error (never a panic), whatever the damage.

use engine::book::workload::{self, DiscardSink, Mix, WorkloadConfig};
use engine::book::{Matcher, Shard, ShardConfig, SnapshotError};

fn shard_config() -> ShardConfig {
    ShardConfig {
        orders_max: 1 << 14,
        history_max: 2_000,
        ..ShardConfig::default()
    }
}

/// A shard part way through a realistic flow, and the rest of the flow.
fn shard_mid_flow(mix: Mix) -> (Shard, Vec<engine::book::Command>) {
    let cfg = WorkloadConfig {
        mix,
        symbols: 4,
        target_orders_per_symbol: 400,
        spread_ticks: 300,
        ..WorkloadConfig::default()
    };
    let flow = workload::generate(shard_config(), cfg, 40_000);
    let mut shard = flow.start_shard(shard_config(), cfg.symbols);
    let (first, rest) = flow.commands.split_at(20_000);
    shard.process_batch(first, 7, &mut DiscardSink::default());
    (shard, rest.to_vec())
}

#[test]
fn a_large_book_restores_and_continues_identically() {
    for mix in [Mix::EXCHANGE_CORE, Mix::HEAVY_MATCHING] {
        let (mut original, rest) = shard_mid_flow(mix);
        assert!(original.live_orders() > 1_000);
        assert!(original.history().count() == 2_000, "the history is full");
        let mut bytes = Vec::new();
        let digest = original.write_snapshot(&mut bytes);
        assert!(bytes.len() <= original.snapshot_bytes_max());
        let mut restored = Shard::from_snapshot(&bytes, shard_config()).unwrap();
        restored.check_invariants().unwrap();
        assert_eq!(restored.state_digest(), digest);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (i, batch) in rest.chunks(100).enumerate() {
            original.process_batch(batch, 100 + i as u64, &mut a);
            restored.process_batch(batch, 100 + i as u64, &mut b);
        }
        assert!(a == b, "{mix:?}: reports differ after restore");
        assert_eq!(original.state_digest(), restored.state_digest());
    }
}

#[test]
fn a_restore_may_use_other_limits_if_the_state_fits() {
    let (original, _) = shard_mid_flow(Mix::EXCHANGE_CORE);
    let mut bytes = Vec::new();
    original.write_snapshot(&mut bytes);
    let roomier = ShardConfig {
        orders_max: 1 << 16,
        history_max: 10_000,
        ..shard_config()
    };
    let restored = Shard::from_snapshot(&bytes, roomier).unwrap();
    assert_eq!(restored.state_digest(), original.state_digest());
    let short_history = ShardConfig {
        history_max: 10,
        ..shard_config()
    };
    assert!(matches!(
        Shard::from_snapshot(&bytes, short_history),
        Err(SnapshotError::Capacity {
            found: 2_000,
            limit: 10,
            ..
        })
    ));
    let few_levels = ShardConfig {
        levels_per_side_max: 3,
        ..shard_config()
    };
    let e = Shard::from_snapshot(&bytes, few_levels).unwrap_err();
    assert!(e.to_string().contains("levels_per_side_max"), "{e}");
}

#[test]
fn damaged_snapshot_bytes_are_an_error_never_a_panic() {
    let cfg = ShardConfig {
        orders_max: 64,
        history_max: 16,
        ..ShardConfig::default()
    };
    let flow = workload::generate(
        cfg,
        WorkloadConfig {
            symbols: 2,
            target_orders_per_symbol: 20,
            spread_ticks: 15,
            ..WorkloadConfig::default()
        },
        300,
    );
    let mut shard = flow.start_shard(cfg, 2);
    shard.process_batch(&flow.commands, 1, &mut DiscardSink::default());
    let mut bytes = Vec::new();
    shard.write_snapshot(&mut bytes);
    // Every truncation is an error.
    for cut in 0..bytes.len() {
        assert!(
            Shard::from_snapshot(&bytes[..cut], cfg).is_err(),
            "cut at {cut} restored"
        );
    }
    // Extra bytes are an error.
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        Shard::from_snapshot(&longer, cfg),
        Err(SnapshotError::TrailingBytes { len: 1, .. })
    ));
    // Every single-byte change either fails or restores a shard that is
    // consistent (some changes, like a quantity, are valid states too).
    for at in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = bytes.clone();
            bad[at] ^= flip;
            if let Ok(s) = Shard::from_snapshot(&bad, cfg) {
                s.check_invariants()
                    .unwrap_or_else(|e| panic!("byte {at} ^ {flip:#x}: {e}"));
            }
        }
    }
    assert_eq!(
        Shard::from_snapshot(b"TDXSHARX", cfg).unwrap_err(),
        SnapshotError::BadMagic
    );
}
