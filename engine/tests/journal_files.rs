//! The journal's files one at a time: segment creation and appending,
//! snapshot files and what reading a damaged or foreign one says.

mod common;

use common::TempDir;
use std::path::PathBuf;

use engine::book::workload::{self, WorkloadConfig};
use engine::book::{Command, Matcher, Op, SessionId, Shard, ShardConfig, SnapshotError};
use engine::journal::{
    self, JournalConfig, RecoveryError, SEGMENT_BYTES_MIN, SEGMENT_HEADER_BYTES, SegmentHeader,
    ShardIdentity, SnapshotFileError, create_segment, decode_record, encode_record,
    obsolete_snapshots, read_snapshot_file, recover, write_snapshot_file,
};
use wire::{NewOrder, Side};

const ID: ShardIdentity = ShardIdentity {
    shard_index: 3,
    shard_count: 4,
    symbol_count: 10,
};

fn cfg() -> ShardConfig {
    ShardConfig {
        orders_max: 1024,
        history_max: 100,
        ..ShardConfig::default()
    }
}

/// A shard with some resting orders and some history.
fn busy_shard() -> Shard {
    let mut shard = Shard::new(ID.shard_index, ID.shard_count, ID.symbol_count, cfg());
    let mut out = Vec::new();
    for id in 0..200u64 {
        let symbol = if id % 2 == 0 { 3 } else { 7 };
        let side = if id % 3 == 0 { Side::Sell } else { Side::Buy };
        let price = if side == Side::Buy { 90 } else { 110 } + (id % 7) as i64 - 3;
        let cmd = Command {
            session: SessionId::from_raw(1 + id % 5),
            account: 1 + id % 5,
            op: Op::New(NewOrder::limit(id, symbol, side, price, 1 + id % 9)),
        };
        shard.process(&cmd, id, &mut out);
    }
    let crossing = Command {
        session: SessionId::from_raw(9),
        account: 9,
        op: Op::New(NewOrder::limit(1, 3, Side::Buy, 120, 40)),
    };
    shard.process(&crossing, 999, &mut out);
    assert!(shard.live_orders() > 50 && shard.history().count() > 3);
    shard
}

#[test]
fn a_new_segment_is_full_size_zeroed_and_has_its_header() {
    let dir = TempDir::new("segment");
    let bytes = 256 << 10;
    let mut seg = create_segment(dir.path(), &ID, &cfg(), 7, bytes).unwrap();
    assert_eq!(seg.number(), 7);
    assert_eq!(seg.offset(), SEGMENT_HEADER_BYTES);
    assert_eq!(seg.capacity(), bytes);
    assert_eq!(seg.room(), bytes - SEGMENT_HEADER_BYTES);
    assert_eq!(
        seg.path(),
        dir.path().join("shard-3").join("00000000000000000007.seg")
    );
    let file = std::fs::read(seg.path()).unwrap();
    assert_eq!(file.len() as u64, bytes);
    assert!(
        file[SEGMENT_HEADER_BYTES as usize..]
            .iter()
            .all(|&b| b == 0),
        "the data area starts zeroed"
    );
    let header = SegmentHeader::decode(&file).unwrap();
    assert_eq!(
        header,
        SegmentHeader {
            identity: ID,
            number: 7,
            config: cfg()
        }
    );
    // Appending writes at the offset and moves it.
    let mut records = Vec::new();
    let cmd = Command {
        session: SessionId::from_raw(1),
        account: 2,
        op: Op::New(NewOrder::limit(1, 3, Side::Buy, 10, 1)),
    };
    encode_record(&mut records, 1, 5, &cmd);
    encode_record(&mut records, 2, 5, &cmd);
    seg.append_blocking(&records).unwrap();
    seg.sync_data().unwrap();
    assert_eq!(seg.offset(), SEGMENT_HEADER_BYTES + records.len() as u64);
    let file = std::fs::read(seg.path()).unwrap();
    let (first, used) = decode_record(&file[SEGMENT_HEADER_BYTES as usize..])
        .unwrap()
        .unwrap();
    assert_eq!((first.seq, first.cmd), (1, cmd));
    assert_eq!(used, records.len() / 2);
    // The runtime's own writes: advance after a completed write.
    let before = seg.offset();
    seg.advance(100);
    assert_eq!(seg.offset(), before + 100);
    assert!(seg.fits(seg.room() as usize));
    assert!(!seg.fits(seg.room() as usize + 1));
    let too_big = vec![1u8; seg.room() as usize + 1];
    assert!(seg.append_blocking(&too_big).is_err());
    assert_eq!(seg.offset(), before + 100, "a refused append moves nothing");
    // A segment is never created twice, nor below the minimum size.
    let again = create_segment(dir.path(), &ID, &cfg(), 7, bytes).unwrap_err();
    assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
    let small = create_segment(dir.path(), &ID, &cfg(), 8, SEGMENT_BYTES_MIN - 1).unwrap_err();
    assert_eq!(small.kind(), std::io::ErrorKind::InvalidInput);
    assert!(
        !journal::shard_dir(dir.path(), 3)
            .join(journal::segment_file_name(8))
            .exists()
    );
}

#[test]
fn a_damaged_segment_header_is_refused_naming_the_file() {
    let dir = TempDir::new("header");
    let seg = create_segment(dir.path(), &ID, &cfg(), 1, SEGMENT_BYTES_MIN).unwrap();
    let path = seg.path().to_path_buf();
    drop(seg);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert!(
        SegmentHeader::decode(&bytes)
            .unwrap_err()
            .contains("checksum")
    );
    match recover(dir.path(), &ID, cfg(), SEGMENT_BYTES_MIN) {
        Err(e @ RecoveryError::SegmentHeader { .. }) => {
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        }
        other => panic!("expected a header error, got {other:?}"),
    }
    assert!(SegmentHeader::decode(b"short").is_err());
    assert!(
        SegmentHeader::decode(&[0u8; 4096])
            .unwrap_err()
            .contains("magic")
    );
}

#[test]
fn a_snapshot_file_round_trips_and_names_what_is_wrong_with_damaged_ones() {
    let dir = TempDir::new("snapfile");
    let shard = busy_shard();
    let path = write_snapshot_file(dir.path(), &shard, 1234).unwrap();
    assert_eq!(
        path,
        dir.path()
            .join("shard-3")
            .join("snapshot-00000000000000001234.snap")
    );
    let loaded = read_snapshot_file(&path, &ID, cfg()).unwrap();
    assert_eq!(loaded.covers_seq, 1234);
    assert_eq!(loaded.digest, shard.state_digest());
    assert_eq!(loaded.shard.state_digest(), shard.state_digest());
    assert_eq!(
        loaded.shard.history().collect::<Vec<_>>(),
        shard.history().collect::<Vec<_>>()
    );

    let good = std::fs::read(&path).unwrap();
    let damaged = |at: usize| {
        let mut bytes = good.clone();
        bytes[at] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        read_snapshot_file(&path, &ID, cfg()).unwrap_err()
    };
    assert!(matches!(damaged(3), SnapshotFileError::Header(_)));
    assert!(matches!(damaged(33), SnapshotFileError::Header(_)));
    assert!(matches!(
        damaged(good.len() - 1),
        SnapshotFileError::Body(_)
    ));
    std::fs::write(&path, &good[..good.len() - 10]).unwrap();
    assert!(matches!(
        read_snapshot_file(&path, &ID, cfg()).unwrap_err(),
        SnapshotFileError::Body(_)
    ));
    std::fs::write(&path, &good).unwrap();
    let other = ShardIdentity {
        shard_index: 1,
        ..ID
    };
    assert!(matches!(
        read_snapshot_file(&path, &other, cfg()).unwrap_err(),
        SnapshotFileError::WrongShard { .. }
    ));
    // Intact, but the configuration has no room for it: a capacity error
    // that says which limit to raise (and recovery stops on it rather than
    // fall back to an older snapshot).
    let tiny = ShardConfig {
        orders_max: 10,
        ..cfg()
    };
    match read_snapshot_file(&path, &ID, tiny).unwrap_err() {
        SnapshotFileError::Restore(SnapshotError::Capacity { what, .. }) => {
            assert!(what.contains("orders_max"));
        }
        other => panic!("expected a capacity error, got {other:?}"),
    }
    match recover(dir.path(), &ID, tiny, SEGMENT_BYTES_MIN) {
        Err(e @ RecoveryError::Snapshot { .. }) => {
            assert!(e.to_string().contains("orders_max"), "{e}")
        }
        other => panic!("expected a snapshot error, got {other:?}"),
    }
}

#[test]
fn only_the_newest_snapshots_are_kept() {
    let dir = TempDir::new("keep");
    let shard = busy_shard();
    let paths: Vec<PathBuf> = [10, 200, 3_000]
        .iter()
        .map(|&seq| write_snapshot_file(dir.path(), &shard, seq).unwrap())
        .collect();
    assert_eq!(
        obsolete_snapshots(dir.path(), ID.shard_index, 2).unwrap(),
        paths[..1]
    );
    assert_eq!(
        obsolete_snapshots(dir.path(), ID.shard_index, 1).unwrap(),
        paths[..2]
    );
    assert!(
        obsolete_snapshots(dir.path(), ID.shard_index, 5)
            .unwrap()
            .is_empty()
    );
    assert!(
        obsolete_snapshots(dir.path(), 0, 1).unwrap().is_empty(),
        "a shard without a directory has none"
    );
}

#[test]
fn journal_config_defaults_and_limits() {
    let c = JournalConfig::new("/var/lib/turbo-dex");
    assert_eq!(c.segment_bytes, journal::DEFAULT_SEGMENT_BYTES);
    assert!(c.validate().is_ok());
    let small = JournalConfig {
        segment_bytes: 100,
        ..c.clone()
    };
    assert!(small.validate().unwrap_err().contains("minimum"));
    let never = JournalConfig {
        snapshot_every_records: 0,
        ..c
    };
    assert!(never.validate().is_err());
}

#[test]
fn records_of_a_realistic_flow_round_trip_in_one_buffer() {
    let w = workload::generate(
        ShardConfig {
            orders_max: 4096,
            ..ShardConfig::default()
        },
        WorkloadConfig {
            target_orders_per_symbol: 100,
            ..WorkloadConfig::default()
        },
        5_000,
    );
    let mut buf = Vec::with_capacity(w.commands.len() * journal::RECORD_BYTES_MAX);
    let capacity = buf.capacity();
    for (i, cmd) in w.commands.iter().enumerate() {
        encode_record(&mut buf, i as u64 + 1, 1_000 + i as u64 / 10, cmd);
    }
    assert_eq!(buf.capacity(), capacity, "encoding allocated");
    let mut at = 0;
    for (i, cmd) in w.commands.iter().enumerate() {
        let (r, used) = decode_record(&buf[at..]).unwrap().unwrap();
        assert_eq!(
            (r.seq, r.engine_ns, r.cmd),
            (i as u64 + 1, 1_000 + i as u64 / 10, *cmd)
        );
        at += used;
    }
    assert_eq!(at, buf.len());
}
