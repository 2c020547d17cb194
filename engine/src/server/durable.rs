//! The runtime side of durability: per-shard journal state driven by the
//! core's io_uring, and the background thread that does the blocking
//! file work (pre-allocating the next segment, writing snapshots, removing
//! what a snapshot covers).
//!
//! Journal before apply: a shard's commands wait in its queue until a
//! write of their records (and, with `--fsync batch`, an fdatasync) has
//! completed; only then are they applied and their reports sent. One write
//! and one fdatasync per shard and loop iteration carry every command that
//! arrived meanwhile (group commit). If the journal cannot take them (the
//! disk is full and no next segment could be made, or a write failed), the
//! commands are rejected with `NotDurable` and never applied, so memory
//! never holds state the disk does not.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;

use crate::book::{Command, Op, Report, ShardConfig, Sink};
use crate::journal::{self, JournalConfig, Segment, ShardIdentity};

use super::Shared;

/// How the journal is kept (`--journal`, `--fsync`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalSettings {
    /// Directory, segment size, snapshot interval.
    pub config: JournalConfig,
    /// fdatasync every batch before acknowledging it (`--fsync batch`).
    /// Without it (`--fsync never`) a batch is acknowledged once written to
    /// the page cache: a machine crash can lose acknowledged orders.
    pub fsync: bool,
}

/// Most record bytes one write carries (bounded below the segment size):
/// 4 MiB is about 55,000 new orders, far more than one iteration brings.
pub const WRITE_BYTES_MAX: usize = 4 << 20;

/// Ask for the next segment once the current one is this full (percent).
const NEXT_SEGMENT_AT_PERCENT: u64 = 50;

/// How long to wait before asking again for a segment that failed.
pub const SEGMENT_RETRY_NS: u64 = 1_000_000_000;

/// Work for the background thread.
pub enum Job {
    /// Create, pre-allocate and fsync segment `number` of a shard.
    CreateSegment {
        core: usize,
        local: usize,
        id: ShardIdentity,
        config: ShardConfig,
        number: u64,
    },
    /// Write a snapshot body, then remove the files it makes unnecessary.
    WriteSnapshot {
        id: ShardIdentity,
        covers_seq: u64,
        digest: u64,
        body: Vec<u8>,
    },
}

/// A finished job, for the core that asked.
pub enum Done {
    /// The next segment of local shard `local`, or why there is none.
    Segment {
        local: usize,
        result: io::Result<Segment>,
    },
}

/// The background thread: one per server, not pinned to an engine core.
pub struct Housekeeper {
    pub jobs: Sender<Job>,
    pub thread: Option<JoinHandle<()>>,
}

impl Housekeeper {
    /// Starts the thread; `done[core]` receives that core's answers.
    pub fn start(
        dir: PathBuf,
        segment_bytes: u64,
        done: Vec<Sender<Done>>,
        shared: Arc<Shared>,
    ) -> io::Result<Housekeeper> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("turbo-dex-journal".into())
            .spawn(move || housekeeping(rx, &dir, segment_bytes, &done, &shared))?;
        Ok(Housekeeper {
            jobs,
            thread: Some(thread),
        })
    }
}

fn housekeeping(
    rx: Receiver<Job>,
    dir: &Path,
    segment_bytes: u64,
    done: &[Sender<Done>],
    shared: &Shared,
) {
    // Ends when every core has dropped its sender.
    while let Ok(job) = rx.recv() {
        match job {
            Job::CreateSegment {
                core,
                local,
                id,
                config,
                number,
            } => {
                let result = journal::create_segment(dir, &id, &config, number, segment_bytes);
                if let Some(tx) = done.get(core) {
                    let _ = tx.send(Done::Segment { local, result });
                    shared.kick(core);
                }
            }
            Job::WriteSnapshot {
                id,
                covers_seq,
                digest,
                body,
            } => {
                if let Err(e) = journal::write_snapshot_bytes(dir, &id, covers_seq, digest, &body) {
                    eprintln!(
                        "turbo-dex: journal: snapshot of {id} through seq {covers_seq} failed: {e}; \
                         the journal is intact, recovery will replay more"
                    );
                    continue;
                }
                if let Err(e) = remove_covered(dir, &id) {
                    eprintln!(
                        "turbo-dex: journal: removing files covered by the snapshot of {id}: {e}"
                    );
                }
            }
        }
    }
}

/// Snapshots kept per shard: two, so recovery can fall back one.
const SNAPSHOTS_KEPT: usize = 2;

/// Removes snapshots beyond the newest two, and the segments the older of
/// those two covers entirely.
fn remove_covered(dir: &Path, id: &ShardIdentity) -> io::Result<()> {
    for path in journal::obsolete_snapshots(dir, id.shard_index, SNAPSHOTS_KEPT)? {
        std::fs::remove_file(&path)?;
    }
    let shard_dir = journal::shard_dir(dir, id.shard_index);
    let snapshots = journal::list_snapshots(&shard_dir)?;
    let Some(&(oldest_kept, _)) = snapshots.first() else {
        return Ok(());
    };
    for path in journal::obsolete_segments(dir, id.shard_index, oldest_kept)? {
        std::fs::remove_file(&path)?;
    }
    Ok(())
}

/// A write (and sync) of one batch in flight.
pub struct Inflight {
    /// The commands, applied when the write is durable.
    pub cmds: Vec<Command>,
    /// The engine time the records carry and the batch is applied at.
    pub engine_ns: u64,
    /// Record bytes written.
    pub len: usize,
    /// Sequence of the batch's last record.
    pub last_seq: u64,
    /// Monotonic time the write was submitted.
    pub started_ns: u64,
    /// The write completed (the sync may still be running).
    pub written: bool,
    /// The write or sync failed: reject the batch.
    pub failed: Option<io::Error>,
}

/// One local shard's journal.
pub struct ShardLog {
    pub id: ShardIdentity,
    pub config: ShardConfig,
    pub segment: Segment,
    pub next: Option<Segment>,
    pub next_requested: bool,
    /// Monotonic time after which a failed segment creation is retried.
    pub next_retry_ns: u64,
    /// Why the next segment could not be made (logged once per episode).
    pub next_failed: Option<String>,
    /// Why the journal cannot take commands now (logged once per episode).
    pub unavailable: Option<String>,
    pub next_seq: u64,
    pub inflight: Option<Inflight>,
    /// The record bytes of the write in flight (reused across batches).
    pub bytes: Vec<u8>,
    /// Records applied since the last snapshot.
    pub since_snapshot: u64,
    /// The command vector of the next batch (reused across batches).
    pub batch: Vec<Command>,
}

impl ShardLog {
    pub fn new(
        id: ShardIdentity,
        config: ShardConfig,
        segment: Segment,
        next_seq: u64,
    ) -> ShardLog {
        ShardLog {
            id,
            config,
            segment,
            next: None,
            next_requested: false,
            next_retry_ns: 0,
            next_failed: None,
            unavailable: None,
            next_seq,
            inflight: None,
            bytes: Vec::with_capacity(WRITE_BYTES_MAX),
            since_snapshot: 0,
            batch: Vec::new(),
        }
    }

    /// Bytes one write may carry now.
    pub fn write_room(&self) -> usize {
        (self.segment.room() as usize).min(WRITE_BYTES_MAX)
    }

    /// True once the current segment is full enough to prepare the next.
    pub fn wants_next(&self) -> bool {
        !self.next_requested
            && self.next.is_none()
            && self.segment.offset() * 100 >= self.segment.capacity() * NEXT_SEGMENT_AT_PERCENT
    }
}

/// Rejects a command the journal could not take. A CancelSession cannot be
/// refused (its session is gone): the caller keeps it for the next write.
/// Returns false for such a command.
pub fn reject_not_durable<S: Sink>(cmd: &Command, sink: &mut S) -> bool {
    use wire::{Kind, RejectReason, Rejected};
    let (coid, symbol, kind) = match &cmd.op {
        Op::New(o) => (o.client_order_id.get(), o.symbol.get(), Kind::NewOrder),
        Op::Cancel(c) => (c.client_order_id.get(), c.symbol.get(), Kind::Cancel),
        Op::Replace(r) => (r.client_order_id.get(), r.symbol.get(), Kind::Replace),
        Op::Query(q) => (q.client_order_id.get(), q.symbol.get(), Kind::OrderQuery),
        Op::CancelSession => return false,
    };
    sink.emit(
        cmd.session,
        Report::Rejected(Rejected::new(coid, symbol, RejectReason::NotDurable, kind)),
    );
    true
}

/// What the runtime needs from a shard beyond [`crate::book::Matcher`] to
/// snapshot it: the matching shard serializes itself, the null engine has
/// nothing to keep.
pub trait Snapshot {
    /// Serializes the whole state into `out` and returns its digest, or
    /// `None` when this engine keeps no state.
    fn snapshot(&self, out: &mut Vec<u8>) -> Option<u64>;
}

impl Snapshot for crate::book::Shard {
    fn snapshot(&self, out: &mut Vec<u8>) -> Option<u64> {
        Some(self.write_snapshot(out))
    }
}

impl Snapshot for crate::book::NullShard {
    fn snapshot(&self, _out: &mut Vec<u8>) -> Option<u64> {
        None
    }
}
