//! Recovery end to end: a test runtime journals every batch (encode, write,
//! fdatasync, then apply, as the server does), and recovery must rebuild
//! exactly the shard it had: the same state digest, and the same reports
//! for the records it replays. Damage is injected into the files to check
//! that a torn tail is truncated and anything else is refused with the
//! file and offset.

mod common;

use common::TempDir;
use std::path::{Path, PathBuf};

use engine::book::workload::{self, Mix, WorkloadConfig};
use engine::book::{Command, Matcher, Op, Report, SessionId, Shard, ShardConfig};
use engine::journal::{
    self, RecoveryError, RecoveryReport, Segment, ShardIdentity, create_segment, encode_record,
    obsolete_segments, obsolete_snapshots, recover, recover_into, write_snapshot_file,
};
use wire::{
    Cancel, Kind, NewOrder, OrderQuery, OrderState, OrderStatus, RejectReason, Rejected, Side,
};

// -------------------------------------------------------------------------
// Helpers
// -------------------------------------------------------------------------

type Out = Vec<(SessionId, Report)>;

const ID: ShardIdentity = ShardIdentity {
    shard_index: 0,
    shard_count: 1,
    symbol_count: 2,
};

/// Small segments, so that runs cross many of them.
const SEGMENT_BYTES: u64 = 64 << 10;

fn shard_config() -> ShardConfig {
    ShardConfig {
        orders_max: 4096,
        history_max: 5_000,
        ..ShardConfig::default()
    }
}

/// What the server does per shard, minus io_uring: journal a batch, make
/// it durable, then apply it.
struct Runtime {
    dir: PathBuf,
    cfg: ShardConfig,
    shard: Shard,
    segment: Segment,
    next_seq: u64,
    buf: Vec<u8>,
}

impl Runtime {
    fn start(dir: &Path, cfg: ShardConfig) -> (Runtime, RecoveryReport) {
        let r = recover(dir, &ID, cfg, SEGMENT_BYTES).unwrap_or_else(|e| panic!("{e}"));
        let runtime = Runtime {
            dir: dir.to_path_buf(),
            cfg,
            shard: r.shard,
            segment: r.segment,
            next_seq: r.next_seq,
            buf: Vec::new(),
        };
        (runtime, r.report)
    }

    /// The bytes of a batch's records (advancing the sequence).
    fn encode(&mut self, cmds: &[Command], engine_ns: u64) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for cmd in cmds {
            encode_record(&mut buf, self.next_seq, engine_ns, cmd);
            self.next_seq += 1;
        }
        buf
    }

    fn apply(&mut self, cmds: &[Command], engine_ns: u64, out: &mut Out) {
        let bytes = self.encode(cmds, engine_ns);
        if !self.segment.fits(bytes.len()) {
            self.segment = create_segment(
                &self.dir,
                &ID,
                &self.cfg,
                self.segment.number() + 1,
                SEGMENT_BYTES,
            )
            .unwrap();
        }
        self.segment.append_blocking(&bytes).unwrap();
        self.segment.sync_data().unwrap();
        self.buf = bytes;
        self.shard.process_batch(cmds, engine_ns, out);
    }

    /// Applies `cmds` in batches of `batch`, batch i at engine time
    /// `first_ns + i`.
    fn run(&mut self, cmds: &[Command], batch: usize, first_ns: u64) -> Out {
        let mut out = Vec::new();
        for (i, chunk) in cmds.chunks(batch).enumerate() {
            self.apply(chunk, first_ns + i as u64, &mut out);
        }
        out
    }

    fn snapshot(&self) -> PathBuf {
        write_snapshot_file(&self.dir, &self.shard, self.next_seq - 1).unwrap()
    }

    fn shard_dir(&self) -> PathBuf {
        journal::shard_dir(&self.dir, ID.shard_index)
    }
}

/// A realistic flow on two symbols with every kind of command: the
/// workload's new orders, cancels and replaces, plus queries and a few
/// session cancels.
fn flow(count: usize, mix: Mix, seed: u64) -> Vec<Command> {
    let w = workload::generate(
        shard_config(),
        WorkloadConfig {
            mix,
            symbols: 2,
            target_orders_per_symbol: 150,
            spread_ticks: 100,
            accounts: 16,
            seed,
            ..WorkloadConfig::default()
        },
        count,
    );
    let mut cmds = w.prefill.clone();
    for (i, cmd) in w.commands.iter().enumerate() {
        cmds.push(*cmd);
        let key = match &cmd.op {
            Op::New(o) => Some((o.client_order_id.get(), o.symbol.get())),
            Op::Cancel(c) => Some((c.client_order_id.get(), c.symbol.get())),
            Op::Replace(r) => Some((r.client_order_id.get(), r.symbol.get())),
            _ => None,
        };
        if let (0, Some((id, symbol))) = (i % 37, key) {
            cmds.push(Command {
                op: Op::Query(OrderQuery::new(id, symbol)),
                ..*cmd
            });
        }
        if i % 1_999 == 1_000 {
            cmds.push(Command {
                session: SessionId::from_raw(1 + (i as u64 % 16)),
                account: 1 + (i as u64 % 16),
                op: Op::CancelSession,
            });
        }
    }
    cmds
}

/// The shard the flow leads to without any journal.
fn reference(cmds: &[Command], batch: usize, first_ns: u64) -> (Shard, Out) {
    let mut shard = Shard::new(
        ID.shard_index,
        ID.shard_count,
        ID.symbol_count,
        shard_config(),
    );
    let mut out = Vec::new();
    for (i, chunk) in cmds.chunks(batch).enumerate() {
        shard.process_batch(chunk, first_ns + i as u64, &mut out);
    }
    (shard, out)
}

fn segment_paths(runtime: &Runtime) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(runtime.shard_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    paths.sort();
    paths
}

/// Offsets of the records of a segment file, in order.
fn record_offsets(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap();
    let mut at = journal::SEGMENT_HEADER_BYTES as usize;
    let mut offsets = Vec::new();
    while let Ok(Some((_, used))) = journal::decode_record(&bytes[at..]) {
        offsets.push(at as u64);
        at += used;
    }
    offsets
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

fn write_at(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
}

// -------------------------------------------------------------------------
// Replay
// -------------------------------------------------------------------------

#[test]
fn replay_reproduces_the_reports_and_the_digest_of_the_original_run() {
    let dir = TempDir::new("replay");
    let cmds = flow(12_000, Mix::HEAVY_MATCHING, 7);
    let (mut rt, report) = Runtime::start(dir.path(), shard_config());
    assert_eq!((report.next_seq, report.records_replayed), (1, 0));
    let original = rt.run(&cmds, 97, 1_000);
    assert!(segment_paths(&rt).len() > 5, "the run spans many segments");
    let fills = original
        .iter()
        .filter(|(_, r)| matches!(r, Report::Fill(_)))
        .count();
    assert!(fills > 1_000, "the flow trades ({fills} fills)");

    let mut replayed = Vec::new();
    let r = recover_into(
        dir.path(),
        &ID,
        shard_config(),
        SEGMENT_BYTES,
        &mut replayed,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.report.records_replayed, cmds.len() as u64);
    assert_eq!(r.next_seq, cmds.len() as u64 + 1);
    assert_eq!(r.report.snapshot, None);
    assert_eq!(r.report.torn_tail, None);
    assert!(replayed == original, "replay must give the same reports");
    assert_eq!(r.shard.state_digest(), rt.shard.state_digest());
    r.shard.check_invariants().unwrap();
    // And the journal is independent of how the commands were batched:
    // the same commands at the same times, applied without it, agree.
    let (plain, plain_out) = reference(&cmds, 97, 1_000);
    assert_eq!(plain.state_digest(), r.shard.state_digest());
    assert!(plain_out == original);
    // Appending resumes right after the last record.
    assert_eq!(r.segment.path(), segment_paths(&rt).last().unwrap());
    assert_eq!(r.segment.offset(), rt.segment.offset());
    assert!(r.report.session_sequence_max >= 1);
    let text = r.report.to_string();
    assert!(
        text.contains(&format!("replayed {} records", cmds.len())),
        "{text}"
    );
}

#[test]
fn a_recovered_shard_goes_on_exactly_like_one_that_never_stopped() {
    let dir = TempDir::new("restart");
    let cmds = flow(9_000, Mix::EXCHANGE_CORE, 3);
    // Split on a batch boundary, so the batches (and their engine times)
    // are those of the reference run.
    let (first, second) = cmds.split_at(cmds.len() / 2 / 64 * 64);
    let (mut rt, _) = Runtime::start(dir.path(), shard_config());
    let mut out = rt.run(first, 64, 10);
    drop(rt);
    // Restart (kill -9 loses nothing that was synced) and go on.
    let (mut rt, report) = Runtime::start(dir.path(), shard_config());
    assert_eq!(report.records_replayed, first.len() as u64);
    out.extend(rt.run(second, 64, 10 + first.len().div_ceil(64) as u64));
    let (plain, plain_out) = reference(&cmds, 64, 10);
    assert_eq!(rt.shard.state_digest(), plain.state_digest());
    assert!(out == plain_out);
    // A third start replays both runs' records, across the segment the
    // second run continued in.
    let (rt3, report) = Runtime::start(dir.path(), shard_config());
    assert_eq!(report.records_replayed, cmds.len() as u64);
    assert_eq!(rt3.shard.state_digest(), plain.state_digest());
}

// -------------------------------------------------------------------------
// Snapshots and segment removal
// -------------------------------------------------------------------------

#[test]
fn snapshot_plus_tail_replay_equals_full_replay() {
    let dir = TempDir::new("snapshot");
    let cmds = flow(10_000, Mix::EXCHANGE_CORE, 11);
    let (head, tail) = cmds.split_at(6_000);
    let (mut rt, _) = Runtime::start(dir.path(), shard_config());
    rt.run(head, 50, 1);
    let snapshot = rt.snapshot();
    let tail_out = rt.run(tail, 50, 1_000);

    let mut replayed = Vec::new();
    let r = recover_into(
        dir.path(),
        &ID,
        shard_config(),
        SEGMENT_BYTES,
        &mut replayed,
    )
    .unwrap();
    assert_eq!(
        r.report.snapshot,
        Some((snapshot.clone(), head.len() as u64))
    );
    assert_eq!(r.report.records_replayed, tail.len() as u64);
    assert!(replayed == tail_out, "the tail's reports come out again");
    assert_eq!(r.shard.state_digest(), rt.shard.state_digest());
    assert!(r.report.live_orders > 100);

    // Without the snapshot, full replay reaches the same state.
    std::fs::remove_file(&snapshot).unwrap();
    let full = recover(dir.path(), &ID, shard_config(), SEGMENT_BYTES).unwrap();
    assert_eq!(full.report.snapshot, None);
    assert_eq!(full.report.records_replayed, cmds.len() as u64);
    assert_eq!(full.shard.state_digest(), rt.shard.state_digest());
}

#[test]
fn removing_the_segments_a_snapshot_covers_keeps_recovery_exact() {
    let dir = TempDir::new("removal");
    let cmds = flow(12_000, Mix::HEAVY_MATCHING, 5);
    let (head, tail) = cmds.split_at(8_000);
    let (mut rt, _) = Runtime::start(dir.path(), shard_config());
    rt.run(head, 80, 1);
    let covered = rt.next_seq - 1;
    rt.snapshot();
    rt.run(tail, 80, 500);
    let before = segment_paths(&rt);
    let obsolete = obsolete_segments(dir.path(), ID.shard_index, covered).unwrap();
    assert!(
        obsolete.len() >= 3,
        "{} of {} segments",
        obsolete.len(),
        before.len()
    );
    assert_eq!(
        obsolete[..],
        before[..obsolete.len()],
        "the oldest go first"
    );
    // Every record of a removed segment is covered: the first kept
    // segment starts at or before the first record the snapshot lacks.
    let kept = &before[obsolete.len()];
    let first_kept = std::fs::read(kept).unwrap();
    let (first, _) = journal::decode_record(&first_kept[journal::SEGMENT_HEADER_BYTES as usize..])
        .unwrap()
        .unwrap();
    assert!(first.seq <= covered + 1);
    // And the next one to remove would not be covered.
    let bytes = std::fs::read(&before[obsolete.len() + 1]).unwrap();
    let (next, _) = journal::decode_record(&bytes[journal::SEGMENT_HEADER_BYTES as usize..])
        .unwrap()
        .unwrap();
    assert!(next.seq > covered + 1);
    for path in &obsolete {
        std::fs::remove_file(path).unwrap();
    }
    let r = recover(dir.path(), &ID, shard_config(), SEGMENT_BYTES).unwrap();
    assert_eq!(r.report.records_replayed, tail.len() as u64);
    assert_eq!(r.shard.state_digest(), rt.shard.state_digest());
    // Nothing is obsolete without a snapshot past the first segment.
    assert!(
        obsolete_segments(dir.path(), ID.shard_index, 0)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_an_older_one_and_says_so() {
    let dir = TempDir::new("fallback");
    let cmds = flow(6_000, Mix::EXCHANGE_CORE, 2);
    let (mut rt, _) = Runtime::start(dir.path(), shard_config());
    rt.run(&cmds[..3_000], 40, 1);
    let older = rt.snapshot();
    let older_covers = rt.next_seq - 1;
    rt.run(&cmds[3_000..5_000], 40, 100);
    let newer = rt.snapshot();
    let newer_covers = rt.next_seq - 1;
    rt.run(&cmds[5_000..], 40, 200);
    // Damage the newer snapshot's body.
    let len = std::fs::metadata(&newer).unwrap().len();
    flip_byte(&newer, len / 2);
    let r = recover(dir.path(), &ID, shard_config(), SEGMENT_BYTES).unwrap();
    assert_eq!(r.report.snapshot, Some((older.clone(), older_covers)));
    assert_eq!(r.report.snapshots_skipped.len(), 1);
    assert_eq!(r.report.snapshots_skipped[0].0, newer);
    assert!(r.report.to_string().contains("skipped damaged snapshot"));
    assert_eq!(r.shard.state_digest(), rt.shard.state_digest());
    drop(r);
    // Once the segments the older snapshot needs are gone, nothing can
    // rebuild the state: an error that names the gap and the snapshot.
    for path in obsolete_segments(dir.path(), ID.shard_index, newer_covers).unwrap() {
        std::fs::remove_file(path).unwrap();
    }
    match recover(dir.path(), &ID, shard_config(), SEGMENT_BYTES) {
        Err(e @ RecoveryError::SequenceGap { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains(&format!("expected record {}", older_covers + 1)),
                "{text}"
            );
            assert!(text.contains(&newer.display().to_string()), "{text}");
        }
        other => panic!("expected a sequence gap, got {other:?}"),
    }
    // Old snapshot files can be listed for removal, newest kept.
    assert_eq!(
        obsolete_snapshots(dir.path(), ID.shard_index, 1).unwrap(),
        [older]
    );
}

// -------------------------------------------------------------------------
// Damage
// -------------------------------------------------------------------------

#[test]
fn a_torn_tail_is_reported_truncated_and_appending_resumes_there() {
    let cmds = flow(3_000, Mix::EXCHANGE_CORE, 9);
    let (kept, lost) = cmds.split_at(2_000);
    // Three ways a last write can be torn: cut short (zeros after a
    // prefix), a hole in its only record, a damaged length.
    for tear in ["prefix", "hole", "garbage-length"] {
        let dir = TempDir::new("torn");
        let (mut rt, _) = Runtime::start(dir.path(), shard_config());
        rt.run(kept, 100, 1);
        let end = rt.segment.offset();
        let path = rt.segment.path().to_path_buf();
        // The next batch's write never completed.
        let bytes = rt.encode(&lost[..50], 99);
        let torn = match tear {
            "prefix" => bytes[..bytes.len() / 3 + 5].to_vec(),
            "hole" => {
                let mut b = bytes[..journal::record_bytes(&lost[0])].to_vec();
                b[30..50].fill(0);
                b
            }
            _ => {
                let mut b = bytes[..60].to_vec();
                b[0..4].copy_from_slice(&9_999u32.to_le_bytes());
                b
            }
        };
        write_at(&path, end, &torn);
        drop(rt);

        let (mut rt, report) = Runtime::start(dir.path(), shard_config());
        let t = report
            .torn_tail
            .clone()
            .unwrap_or_else(|| panic!("{tear}: no torn tail"));
        assert!(t.bytes_zeroed > 0);
        assert!(report.to_string().contains("torn record"), "{tear}");
        // Whole records before the torn one are kept, even those of the
        // torn batch: never acknowledged, but keeping them is safe (a
        // client that resends one gets a duplicate reject and its status).
        let survived = report.next_seq - 1;
        assert!(survived >= kept.len() as u64, "{tear}");
        let whole = record_bytes_of(&lost[..(survived as usize - kept.len())]);
        assert!(whole < torn.len() as u64, "{tear}");
        assert_eq!(
            (t.path.as_path(), t.offset),
            (path.as_path(), end + whole),
            "{tear}"
        );
        assert_eq!(rt.segment.offset(), end + whole);
        // Appending resumes at the torn record and recovery stays exact.
        let from = survived as usize;
        rt.run(&cmds[from..], 100, 500);
        let (rt2, report) = Runtime::start(dir.path(), shard_config());
        assert_eq!(report.torn_tail, None, "{tear}: the tail was zeroed");
        assert_eq!(report.next_seq, cmds.len() as u64 + 1);
        assert_eq!(rt2.shard.state_digest(), rt.shard.state_digest(), "{tear}");
    }
}

fn record_bytes_of(cmds: &[Command]) -> u64 {
    cmds.iter().map(|c| journal::record_bytes(c) as u64).sum()
}

#[test]
fn a_damaged_record_in_the_middle_is_refused_naming_the_file_and_offset() {
    let dir = TempDir::new("corrupt");
    let cmds = flow(4_000, Mix::EXCHANGE_CORE, 4);
    let (mut rt, _) = Runtime::start(dir.path(), shard_config());
    rt.run(&cmds, 100, 1);
    let segments = segment_paths(&rt);
    assert!(segments.len() >= 3);
    // In the middle of the newest segment: records follow it.
    let newest = segments.last().unwrap();
    let offsets = record_offsets(newest);
    let victim = offsets[offsets.len() / 2];
    flip_byte(newest, victim + 30);
    let err = recover(dir.path(), &ID, shard_config(), SEGMENT_BYTES).unwrap_err();
    match &err {
        RecoveryError::Corrupt { path, offset, .. } => {
            assert_eq!((path, *offset), (newest, victim));
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&newest.display().to_string()), "{text}");
    assert!(text.contains(&format!("byte offset {victim}")), "{text}");
    flip_byte(newest, victim + 30);

    // The last record of an older segment: later segments hold newer
    // records, so it cannot be a torn tail.
    let older = &segments[1];
    let last = *record_offsets(older).last().unwrap();
    flip_byte(older, last + 45);
    match recover(dir.path(), &ID, shard_config(), SEGMENT_BYTES) {
        Err(RecoveryError::Corrupt { path, offset, .. }) => {
            assert_eq!((&path, offset), (older, last));
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    flip_byte(older, last + 45);

    // Non-zero bytes after the end of the data.
    let end = rt.segment.offset();
    write_at(newest, end + 500, &[7]);
    match recover(dir.path(), &ID, shard_config(), SEGMENT_BYTES) {
        Err(e @ RecoveryError::DataAfterEnd { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&format!("offset {}", end + 500)), "{text}");
            assert!(text.contains(&format!("offset {end}")), "{text}");
        }
        other => panic!("expected data after the end, got {other:?}"),
    }
    write_at(newest, end + 500, &[0]);

    // A record whose sequence skips one.
    let mut bytes = Vec::new();
    encode_record(&mut bytes, rt.next_seq + 1, 5, &cmds[0]);
    write_at(newest, end, &bytes);
    match recover(dir.path(), &ID, shard_config(), SEGMENT_BYTES) {
        Err(RecoveryError::SequenceGap {
            path,
            offset,
            expected,
            found,
            ..
        }) => {
            assert_eq!((&path, offset), (newest, end));
            assert_eq!((expected, found), (rt.next_seq, rt.next_seq + 1));
        }
        other => panic!("expected a sequence gap, got {other:?}"),
    }
    write_at(newest, end, &vec![0; bytes.len()]);
    // Undamaged again: recovery succeeds.
    let r = recover(dir.path(), &ID, shard_config(), SEGMENT_BYTES).unwrap();
    assert_eq!(r.shard.state_digest(), rt.shard.state_digest());
}

// -------------------------------------------------------------------------
// Order history across restarts
// -------------------------------------------------------------------------

fn new_order(session: u64, id: u64, side: Side, price: i64, qty: u64) -> Command {
    Command {
        session: SessionId::from_raw(session),
        account: session,
        op: Op::New(NewOrder::limit(id, 0, side, price, qty)),
    }
}

fn status_after_reject(out: &[(SessionId, Report)], id: u64) -> OrderStatus {
    match out {
        [(_, Report::Rejected(r)), (_, Report::Status(s))] => {
            assert_eq!(
                *r,
                Rejected::new(id, 0, RejectReason::DuplicateClientOrderId, Kind::NewOrder)
            );
            *s
        }
        other => panic!("expected a duplicate reject and a status, got {other:?}"),
    }
}

#[test]
fn a_resent_order_is_a_duplicate_after_a_restart_and_queries_find_finished_orders() {
    let dir = TempDir::new("history");
    let (mut rt, _) = Runtime::start(dir.path(), shard_config());
    let mut out = Vec::new();
    // Before the snapshot: order 1 of session 1 fills completely against
    // session 2's order 1; session 1's order 2 is canceled.
    rt.apply(&[new_order(2, 1, Side::Sell, 100, 5)], 1, &mut out);
    rt.apply(&[new_order(1, 1, Side::Buy, 100, 5)], 2, &mut out);
    rt.apply(&[new_order(1, 2, Side::Buy, 90, 3)], 3, &mut out);
    let cancel = Command {
        session: SessionId::from_raw(1),
        account: 1,
        op: Op::Cancel(Cancel::new(2, 0)),
    };
    rt.apply(&[cancel], 4, &mut out);
    rt.snapshot();
    // After it (replayed from the journal): order 3 rests, then fills 4
    // of 7 and is canceled by its session's disconnect.
    rt.apply(&[new_order(1, 3, Side::Buy, 95, 7)], 5, &mut out);
    rt.apply(&[new_order(2, 2, Side::Sell, 95, 4)], 6, &mut out);
    let gone = Command {
        session: SessionId::from_raw(1),
        account: 1,
        op: Op::CancelSession,
    };
    rt.apply(&[gone], 7, &mut out);
    drop(rt);

    // The server restarts; the client reconnects (a new session of the same
    // account) and resends orders it never saw acknowledged.
    let (mut rt, report) = Runtime::start(dir.path(), shard_config());
    assert!(report.snapshot.is_some());
    assert_eq!(report.records_replayed, 3);
    assert_eq!(report.session_sequence_max, 2);
    let session = 77;
    let resend = |rt: &mut Runtime, id, qty| {
        let mut out = Vec::new();
        let mut cmd = new_order(session, id, Side::Buy, 100, qty);
        cmd.account = 1;
        rt.apply(&[cmd], 10, &mut out);
        out
    };
    let s = status_after_reject(&resend(&mut rt, 1, 5), 1);
    assert_eq!(s.state(), Ok(OrderState::Filled));
    assert_eq!((s.filled_quantity.get(), s.leaves_quantity.get()), (5, 0));
    let s = status_after_reject(&resend(&mut rt, 2, 3), 2);
    assert_eq!(s.state(), Ok(OrderState::Canceled));
    assert_eq!(s.filled_quantity.get(), 0);
    let s = status_after_reject(&resend(&mut rt, 3, 7), 3);
    assert_eq!(s.state(), Ok(OrderState::Canceled));
    assert_eq!(s.filled_quantity.get(), 4);
    // Nothing traded twice: no live orders, and queries say the same.
    assert_eq!(rt.shard.live_orders(), 0);
    let mut out = Vec::new();
    let query = Command {
        session: SessionId::from_raw(session),
        account: 1,
        op: Op::Query(OrderQuery::new(1, 0)),
    };
    rt.apply(&[query], 11, &mut out);
    assert!(
        matches!(out[..], [(who, Report::Status(s))] if who.get() == 77 && s.state() == Ok(OrderState::Filled)),
        "{out:?}"
    );
    // A new id is accepted.
    let out = resend(&mut rt, 4, 1);
    assert!(
        matches!(out[0], (who, Report::Accepted(_)) if who.get() == 77),
        "{out:?}"
    );
}

// -------------------------------------------------------------------------
// Layout, configuration and housekeeping
// -------------------------------------------------------------------------

#[test]
fn an_empty_directory_gets_its_first_segment() {
    let dir = TempDir::new("fresh");
    let r = recover(dir.path(), &ID, shard_config(), SEGMENT_BYTES).unwrap();
    assert_eq!(r.next_seq, 1);
    assert_eq!(r.shard.live_orders(), 0);
    assert_eq!(r.segment.number(), 1);
    assert_eq!(r.segment.offset(), journal::SEGMENT_HEADER_BYTES);
    assert_eq!(
        r.segment.room(),
        SEGMENT_BYTES - journal::SEGMENT_HEADER_BYTES
    );
    let path = r.segment.path().to_path_buf();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), SEGMENT_BYTES);
    assert!(path.starts_with(dir.path().join("shard-0")));
    drop(r);
    // Recovering again reuses it.
    let r = recover(dir.path(), &ID, shard_config(), SEGMENT_BYTES).unwrap();
    assert_eq!(r.segment.path(), path);
}

#[test]
fn a_journal_of_another_layout_or_configuration_is_refused() {
    let dir = TempDir::new("layout");
    let cmds = flow(500, Mix::EXCHANGE_CORE, 1);
    let (mut rt, _) = Runtime::start(dir.path(), shard_config());
    rt.run(&cmds, 50, 1);
    let other = ShardIdentity {
        shard_count: 2,
        ..ID
    };
    match recover(dir.path(), &other, shard_config(), SEGMENT_BYTES) {
        Err(e @ RecoveryError::WrongShard { .. }) => {
            assert!(e.to_string().contains("shard 0 of 1 over 2 symbols"), "{e}");
        }
        other => panic!("expected a layout error, got {other:?}"),
    }
    let bigger = ShardConfig {
        quantity_max: 1 << 30,
        ..shard_config()
    };
    assert!(matches!(
        recover(dir.path(), &ID, bigger, SEGMENT_BYTES),
        Err(RecoveryError::ConfigChanged { .. })
    ));
    // With a snapshot covering every record, the limits may change: the
    // new records go to a new segment that says so.
    rt.snapshot();
    let digest = rt.shard.state_digest();
    drop(rt);
    let (mut rt, report) = Runtime::start(dir.path(), bigger);
    assert_eq!(report.records_replayed, 0);
    assert_eq!(rt.shard.state_digest(), digest);
    let first_new_segment = rt.segment.path().to_path_buf();
    rt.run(&flow(300, Mix::EXCHANGE_CORE, 8)[..200], 50, 9_000);
    let digest = rt.shard.state_digest();
    drop(rt);
    let (rt, report) = Runtime::start(dir.path(), bigger);
    assert_eq!(report.records_replayed, 200);
    assert_eq!(rt.shard.state_digest(), digest);
    assert!(report.append_at.0 >= first_new_segment);
}

#[test]
fn files_of_interrupted_writes_are_removed() {
    let dir = TempDir::new("temp-files");
    let (rt, _) = Runtime::start(dir.path(), shard_config());
    let shard_dir = rt.shard_dir();
    drop(rt);
    let leftovers = [
        shard_dir.join(format!("{}.tmp", journal::snapshot_file_name(9))),
        shard_dir.join(format!("{}.tmp", journal::segment_file_name(2))),
    ];
    for path in &leftovers {
        std::fs::write(path, b"half written").unwrap();
    }
    let unrelated = shard_dir.join("notes.tmp");
    std::fs::write(&unrelated, b"keep").unwrap();
    let r = recover(dir.path(), &ID, shard_config(), SEGMENT_BYTES).unwrap();
    let mut removed = r.report.temp_files_removed.clone();
    removed.sort();
    let mut expected = leftovers.to_vec();
    expected.sort();
    assert_eq!(removed, expected);
    assert!(leftovers.iter().all(|p| !p.exists()));
    assert!(unrelated.exists(), "only the journal's own temp files go");
}

#[test]
fn a_query_is_journaled_and_replayed_like_any_command() {
    // Queries change nothing, but replaying them gives their answers again.
    let dir = TempDir::new("query");
    let (mut rt, _) = Runtime::start(dir.path(), shard_config());
    let mut out = Vec::new();
    rt.apply(&[new_order(5, 1, Side::Buy, 10, 2)], 1, &mut out);
    let digest = rt.shard.state_digest();
    let q = Command {
        session: SessionId::from_raw(5),
        account: 5,
        op: Op::Query(OrderQuery::new(1, 0)),
    };
    out.clear();
    rt.apply(&[q], 2, &mut out);
    assert_eq!(rt.shard.state_digest(), digest);
    let mut replayed = Vec::new();
    recover_into(
        dir.path(),
        &ID,
        shard_config(),
        SEGMENT_BYTES,
        &mut replayed,
    )
    .unwrap();
    assert_eq!(replayed.last(), out.last());
}
