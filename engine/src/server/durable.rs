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
use crate::journal::{self, DIRECT_ALIGN, JournalConfig, Segment, ShardIdentity};

use super::Shared;

/// How the journal is kept (`--journal`, `--fsync`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalSettings {
    /// Directory, segment size, snapshot interval.
    pub config: JournalConfig,
    /// fdatasync every batch before acknowledging it (`--fsync batch`).
    /// Without it (`--fsync never`) a batch is acknowledged once its write
    /// completes (page cache, or the disk's volatile cache with direct
    /// I/O): a machine crash can lose acknowledged orders.
    pub fsync: bool,
}

use super::limits::{NEXT_SEGMENT_AT_PERCENT, SNAPSHOTS_KEPT};
pub use super::limits::{REPL_STALL_NS, SEGMENT_RETRY_NS, WRITE_BYTES_MAX};

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
    /// With `--replicas`: make local shard `local` a standby copy starting
    /// from a snapshot of its stream (`body`, from the object store; `None`:
    /// the empty shard, `covers_seq` 0): build the shard, and start its
    /// journal again from it (every other file of the shard goes: they may
    /// hold records this node journaled but the stream never stored).
    Reload {
        core: usize,
        local: usize,
        id: ShardIdentity,
        config: ShardConfig,
        covers_seq: u64,
        digest: u64,
        body: Option<Vec<u8>>,
        /// The number of the segment the journal continues in.
        number: u64,
        /// The replication thread's count of reloads of this shard.
        epoch: u64,
    },
}

/// A shard built by [`Job::Reload`], and its new journal segment.
pub struct Reloaded {
    /// The shard (a `crate::book::Shard`, as the core's engine type).
    pub shard: Box<dyn std::any::Any + Send>,
    pub segment: Segment,
}

/// A finished job, for the core that asked.
pub enum Done {
    /// The next segment of local shard `local`, or why there is none.
    Segment {
        local: usize,
        result: io::Result<Segment>,
    },
    /// [`Job::Reload`]'s result.
    Reloaded {
        local: usize,
        epoch: u64,
        covers_seq: u64,
        result: Result<Reloaded, String>,
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
                    tracing::error!(
                        "journal: snapshot of {id} through seq {covers_seq} failed: {e}; \
                         the journal is intact, recovery will replay more"
                    );
                    continue;
                }
                if let Err(e) = remove_covered(dir, &id) {
                    tracing::warn!("journal: removing files covered by the snapshot of {id}: {e}");
                }
            }
            Job::Reload {
                core,
                local,
                id,
                config,
                covers_seq,
                digest,
                body,
                number,
                epoch,
            } => {
                let result = reload(
                    dir,
                    segment_bytes,
                    &id,
                    config,
                    (covers_seq, digest),
                    body,
                    number,
                );
                if let Some(tx) = done.get(core) {
                    let _ = tx.send(Done::Reloaded {
                        local,
                        epoch,
                        covers_seq,
                        result,
                    });
                    shared.kick(core);
                }
            }
        }
    }
}

/// [`Job::Reload`]: the shard from the snapshot (its digest checked), and
/// a journal of just that snapshot and one new, empty segment. The old
/// snapshots go first (one of them may cover records of a tail the stream
/// does not have), then the old segments, then the new files are written.
fn reload(
    dir: &Path,
    segment_bytes: u64,
    id: &ShardIdentity,
    config: ShardConfig,
    (covers_seq, digest): (u64, u64),
    body: Option<Vec<u8>>,
    number: u64,
) -> Result<Reloaded, String> {
    let shard = match &body {
        Some(body) => {
            let shard = crate::book::Shard::from_snapshot(body, config)
                .map_err(|e| format!("the snapshot of {id} does not restore: {e}"))?;
            let restored = crate::book::Matcher::state_digest(&shard);
            if restored != digest {
                return Err(format!(
                    "the snapshot of {id} through record {covers_seq} restores to digest \
                     {restored:016x}, not the {digest:016x} it was published with"
                ));
            }
            if ShardIdentity::of(&shard) != *id {
                return Err(format!(
                    "the snapshot published for {id} is of {}",
                    ShardIdentity::of(&shard)
                ));
            }
            shard
        }
        None => {
            crate::book::Shard::try_new(id.shard_index, id.shard_count, id.symbol_count, config)
                .map_err(|e| e.to_string())?
        }
    };
    let shard_dir = journal::shard_dir(dir, id.shard_index);
    let files = (|| {
        for (_, path) in journal::list_snapshots(&shard_dir)? {
            std::fs::remove_file(path)?;
        }
        for (_, path) in journal::list_segments(&shard_dir)? {
            std::fs::remove_file(path)?;
        }
        if let Some(body) = &body {
            journal::write_snapshot_bytes(dir, id, covers_seq, digest, body)?;
        }
        journal::create_segment(dir, id, &config, number, segment_bytes)
    })();
    let segment = files.map_err(|e| format!("restarting the journal of {id}: {e}"))?;
    Ok(Reloaded {
        shard: Box::new(shard),
        segment,
    })
}

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
    /// Where the write's bytes begin in `ShardLog::bytes`.
    pub start: usize,
    /// Where its records begin there (after a direct write's partial block).
    pub records_at: usize,
    /// Bytes the write carries: `len`, or in direct mode the partial block
    /// before the records, the records, and zeros to the next block.
    pub write_len: usize,
    /// Sequence of the batch's last record.
    pub last_seq: u64,
    /// Monotonic time the write was submitted.
    pub started_ns: u64,
    /// The write or sync failed: reject the batch.
    pub failed: Option<io::Error>,
    /// Not a write: commands refused `NotDurable` while replication stalls,
    /// answered in turn after the batches before them (`--replicas`).
    pub refuse: bool,
    /// Records of a standby copy (from the shard's stream): applied with
    /// their reports discarded, never replicated again.
    pub standby: bool,
}

/// A batch of a standby copy: records of the stream with one engine time
/// (one batch of the owner, rebuilt), to journal and apply.
pub struct StandbyRun {
    pub engine_ns: u64,
    pub first_seq: u64,
    pub cmds: Vec<Command>,
}

/// A reload of a standby copy, waiting for the shard's journal to be idle.
pub struct ReloadRequest {
    pub epoch: u64,
    pub covers_seq: u64,
    pub digest: u64,
    pub body: Option<Vec<u8>>,
    /// When it came (core clock), and whether its long wait was logged.
    pub asked_ns: u64,
    pub warned: bool,
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
    /// With `--replicas`: batches durable here, waiting (in order) for
    /// JetStream to store them before they are applied.
    pub replicating: std::collections::VecDeque<Inflight>,
    /// The oldest batch has waited for JetStream past [`REPL_STALL_NS`]:
    /// the shard's new commands are refused `NotDurable` meanwhile.
    pub repl_stalled: bool,
    /// The bytes of the write in flight (reused across batches; never
    /// reallocated, so that its aligned start stays aligned).
    pub bytes: Vec<u8>,
    /// Direct mode: the segment's bytes from the last block boundary to the
    /// append offset, written again at the start of the next write.
    pub tail: Vec<u8>,
    /// A write that failed may have left some of its bytes in the segment
    /// up to this offset (0: none). Its commands were refused, so the next
    /// write covers the range with zeros after its own records, or recovery
    /// could read them back.
    pub stale_until: u64,
    /// A direct write was refused as misaligned: later segments are written
    /// through the page cache too.
    pub direct_refused: bool,
    /// The engine time of the last batch written: each batch gets a later
    /// one, so that a standby tells batches apart by their records' times.
    pub last_engine_ns: u64,
    /// With `--replicas`, a standby copy: batches of the stream to journal
    /// and apply, in order.
    pub standby: std::collections::VecDeque<StandbyRun>,
    /// The reload epoch the standby's records belong to.
    pub standby_epoch: u64,
    /// A reload waiting for the journal to be idle, and one in progress.
    pub reload: Option<ReloadRequest>,
    pub reloading: bool,
    /// The shard was reloaded (or followed another node's stream): its
    /// next batch as owner starts with a `DetachSessions`.
    pub detach_pending: bool,
    /// The command vector of the next batch (reused across batches).
    pub batch: Vec<Command>,
    /// The write `end_write` prepared: start in `bytes`, length, file offset.
    write_at: (usize, usize, u64),
}

impl ShardLog {
    pub fn new(
        id: ShardIdentity,
        config: ShardConfig,
        segment: Segment,
        next_seq: u64,
    ) -> ShardLog {
        let mut log = ShardLog {
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
            replicating: std::collections::VecDeque::new(),
            repl_stalled: false,
            // Records, plus an aligning lead, a partial block and padding.
            bytes: Vec::with_capacity(WRITE_BYTES_MAX + 3 * DIRECT_ALIGN),
            tail: Vec::with_capacity(DIRECT_ALIGN),
            stale_until: 0,
            direct_refused: false,
            last_engine_ns: 0,
            standby: std::collections::VecDeque::new(),
            standby_epoch: 0,
            reload: None,
            reloading: false,
            detach_pending: false,
            batch: Vec::new(),
            write_at: (0, 0, 0),
        };
        log.setup_direct();
        log
    }

    /// Makes `segment` the one appended to.
    pub fn use_segment(&mut self, segment: Segment) {
        self.segment = segment;
        self.setup_direct();
    }

    /// Writes the segment with direct I/O where the file system allows it
    /// (measured on this project's VM: 512 KiB writes with O_DIRECT|O_DSYNC
    /// ran at 750-900 MB/s, buffered writes plus fdatasync at 150-270 MB/s),
    /// else buffered.
    fn setup_direct(&mut self) {
        self.tail.clear();
        self.stale_until = 0;
        if !self.direct_refused
            && self.segment.open_direct().is_ok()
            && self.segment.read_partial_block(&mut self.tail).is_err()
        {
            self.segment.close_direct();
            self.tail.clear();
        }
    }

    /// Goes back to buffered writes after a direct write was refused as
    /// misaligned (a device with blocks larger than `DIRECT_ALIGN`).
    pub fn fall_back_to_buffered(&mut self) {
        self.direct_refused = true;
        self.segment.close_direct();
        self.tail.clear();
    }

    /// Starts the bytes of the next write, to be followed by its records;
    /// returns where the write begins in `bytes`. In direct mode that is an
    /// aligned address, and the write starts with the partial last block
    /// (`tail`), so that it begins on a block boundary of the file.
    pub fn begin_write(&mut self) -> usize {
        // The kernel may be reading `bytes` while a write is in flight.
        assert!(
            self.inflight.is_none(),
            "a journal write is still in flight"
        );
        self.bytes.clear();
        if !self.segment.is_direct() {
            return 0;
        }
        let lead = self.bytes.as_ptr().align_offset(DIRECT_ALIGN);
        self.bytes.resize(lead, 0);
        self.bytes.extend_from_slice(&self.tail);
        lead
    }

    /// Ends a write begun at `start` once its records are in `bytes`: pads
    /// a direct write with zeros to the next block boundary (the segment is
    /// zeros there already), and any write with zeros over what a failed
    /// write may have left (`stale_until`). Returns the number of bytes to
    /// write and the file offset to write them at ([`ShardLog::write_bytes`]).
    pub fn end_write(&mut self, start: usize) -> (usize, u64) {
        let offset = self.segment.offset() - self.tail.len() as u64;
        let mut len = (self.bytes.len() - start) as u64;
        len = len.max(self.stale_until.saturating_sub(offset));
        if self.segment.is_direct() {
            len = len.next_multiple_of(DIRECT_ALIGN as u64);
        }
        // Within the segment: a failed write stayed inside it, and the
        // segment's size is a multiple of DIRECT_ALIGN in direct mode.
        let len = len.min(self.segment.capacity() - offset) as usize;
        self.bytes.resize(start + len, 0);
        self.write_at = (start, len, offset);
        (len, offset)
    }

    /// The bytes `end_write` prepared and the file offset they go to.
    pub fn write_bytes(&self) -> (&[u8], u64) {
        let (start, len, offset) = self.write_at;
        (&self.bytes[start..start + len], offset)
    }

    /// The write begun at `start` failed after `write_len` bytes were
    /// submitted: some of them may be in the file.
    pub fn write_failed(&mut self, write_len: usize) {
        let offset = self.segment.offset() - self.tail.len() as u64;
        self.stale_until = self.stale_until.max(offset + write_len as u64);
    }

    /// The write begun at `start` is durable and held `len` record bytes:
    /// move the append offset past them and keep the new partial block.
    pub fn wrote(&mut self, start: usize, len: usize) {
        // end_write covered whatever a failed write had left.
        self.stale_until = 0;
        let base = self.segment.offset() - self.tail.len() as u64;
        self.segment.advance(len as u64);
        if self.segment.is_direct() {
            let end = self.segment.offset();
            let block = end - end % DIRECT_ALIGN as u64;
            let from = start + (block - base) as usize;
            let to = start + (end - base) as usize;
            self.tail.clear();
            self.tail.extend_from_slice(&self.bytes[from..to]);
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
/// refused (its session is gone), nor can a mass cancel or a kill switch
/// (they only take orders away), nor a new owner's DetachSessions (no
/// session asked for it): the caller keeps it for the next write.
/// Returns false for such a command.
pub fn reject_not_durable<S: Sink>(cmd: &Command, sink: &mut S) -> bool {
    use wire::{Kind, RejectReason, Rejected};
    let (coid, symbol, kind) = match &cmd.op {
        Op::New(o) => (o.client_order_id.get(), o.symbol.get(), Kind::NewOrder),
        Op::Cancel(c) => (c.client_order_id.get(), c.symbol.get(), Kind::Cancel),
        Op::Replace(r) => (r.client_order_id.get(), r.symbol.get(), Kind::Replace),
        Op::Query(q) => (q.client_order_id.get(), q.symbol.get(), Kind::OrderQuery),
        Op::CancelSession
        | Op::MassCancel { .. }
        | Op::KillAccount
        | Op::UnblockAccount
        | Op::DetachSessions => {
            return false;
        }
    };
    sink.emit(
        cmd.session,
        Report::Rejected(Rejected::new(coid, symbol, RejectReason::NotDurable, kind)),
    );
    true
}

/// Whether [`reject_not_durable`] can refuse `cmd` (a client's request,
/// not a command that only takes orders away).
pub fn can_refuse(cmd: &Command) -> bool {
    matches!(
        cmd.op,
        Op::New(_) | Op::Cancel(_) | Op::Replace(_) | Op::Query(_)
    )
}

/// What the runtime needs from a shard beyond [`crate::book::Matcher`] to
/// snapshot it: the matching shard serializes itself, the null engine has
/// nothing to keep.
pub trait Snapshot {
    /// Serializes the whole state into `out` and returns its digest, or
    /// `None` when this engine keeps no state.
    fn snapshot(&self, out: &mut Vec<u8>) -> Option<u64>;

    /// Becomes `other` (a shard [`Job::Reload`] built), or says why not.
    fn replace_with(&mut self, other: Box<dyn std::any::Any + Send>) -> Result<(), String>;
}

impl Snapshot for crate::book::Shard {
    fn snapshot(&self, out: &mut Vec<u8>) -> Option<u64> {
        Some(self.write_snapshot(out))
    }

    fn replace_with(&mut self, other: Box<dyn std::any::Any + Send>) -> Result<(), String> {
        let other = other
            .downcast::<crate::book::Shard>()
            .map_err(|_| "a reload built another kind of shard".to_string())?;
        *self = *other;
        Ok(())
    }
}

impl Snapshot for crate::book::NullShard {
    fn snapshot(&self, _out: &mut Vec<u8>) -> Option<u64> {
        None
    }

    fn replace_with(&mut self, _other: Box<dyn std::any::Any + Send>) -> Result<(), String> {
        Err("the null engine keeps no state to reload".into())
    }
}

/// Creates the journal directory and takes its lock file, so that a second
/// server on the same journal is refused (the lock goes with the process).
pub fn lock_journal(dir: &Path) -> Result<std::fs::File, String> {
    std::fs::create_dir_all(dir).map_err(|e| {
        format!(
            "cannot create the journal directory {}: {e}; pick another with --journal DIR (or --journal none)",
            dir.display()
        )
    })?;
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "the journal {} is in use by another turbo-dex; stop it or give this one another --journal",
            dir.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;
    use std::path::PathBuf;

    use super::*;

    const ID: ShardIdentity = ShardIdentity {
        shard_index: 0,
        shard_count: 1,
        symbol_count: 4,
    };

    /// A fresh 1 MiB segment in its own directory, and a log on it.
    fn new_log(tag: &str) -> (PathBuf, PathBuf, ShardLog) {
        let dir = std::env::temp_dir().join(format!("turbo-dex-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = ShardConfig::default();
        let segment = journal::create_segment(&dir, &ID, &config, 1, 1 << 20).unwrap();
        let path = segment.path().to_path_buf();
        (dir, path, ShardLog::new(ID, config, segment, 1))
    }

    /// Writes `payload` as the server writes a batch (begin_write, the
    /// records, end_write, the write), blocking; returns where the write
    /// began in `log.bytes`, its length and its file offset.
    fn write_batch(log: &mut ShardLog, payload: &[u8]) -> (usize, usize, u64) {
        let start = log.begin_write();
        log.bytes.extend_from_slice(payload);
        let (len, offset) = log.end_write(start);
        log.segment
            .write_at(&log.bytes[start..start + len], offset)
            .unwrap();
        (start, len, offset)
    }

    /// Batches of awkward sizes written the way the server writes them
    /// leave exactly the records, back to back, and zeros after them; a log
    /// reopened at the end carries on with the same partial block.
    #[test]
    fn writes_leave_the_records_back_to_back() {
        let (dir, path, mut log) = new_log("durable");
        let mut expected = Vec::new();
        for (i, &n) in [1usize, 100, 3995, 4096, 5000, 3, 70_000, 1]
            .iter()
            .enumerate()
        {
            let payload: Vec<u8> = (0..n).map(|k| (k as u8 ^ i as u8) | 1).collect();
            let direct = log.segment.is_direct();
            let (start, len, offset) = write_batch(&mut log, &payload);
            if direct {
                let address = log.bytes[start..].as_ptr() as usize;
                assert_eq!(address % DIRECT_ALIGN, 0, "buffer aligned");
                assert_eq!(len % DIRECT_ALIGN, 0, "length aligned");
                assert_eq!(offset % DIRECT_ALIGN as u64, 0, "offset aligned");
            }
            log.wrote(start, n);
            expected.extend_from_slice(&payload);
            assert_eq!(
                log.segment.offset(),
                journal::SEGMENT_HEADER_BYTES + expected.len() as u64
            );
        }
        let file = std::fs::File::open(&path).unwrap();
        let mut back = vec![0u8; expected.len() + 2 * DIRECT_ALIGN];
        file.read_exact_at(&mut back, journal::SEGMENT_HEADER_BYTES)
            .unwrap();
        assert!(back[..expected.len()] == expected[..], "records intact");
        assert!(
            back[expected.len()..].iter().all(|&b| b == 0),
            "zeros after"
        );

        // Reopened at the end (as after a restart), the next write keeps
        // everything before it.
        let end = log.segment.offset();
        let tail = log.tail.clone();
        drop(log);
        let segment = Segment::open_at(&path, 1, end).unwrap();
        let mut log = ShardLog::new(ID, ShardConfig::default(), segment, 1);
        if log.segment.is_direct() {
            assert_eq!(log.tail, tail);
        }
        let (start, _, _) = write_batch(&mut log, b"next");
        log.wrote(start, 4);
        expected.extend_from_slice(b"next");
        let mut back = vec![0u8; expected.len()];
        file.read_exact_at(&mut back, journal::SEGMENT_HEADER_BYTES)
            .unwrap();
        assert!(back == expected, "records intact after reopening");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A write that fails after some of its bytes reached the file (its
    /// commands refused) leaves nothing behind once the next, shorter
    /// write succeeds: the file holds that write's records, then zeros.
    #[test]
    fn a_failed_write_leaves_no_records_behind() {
        let (dir, path, mut log) = new_log("stale");
        let (start, _, _) = write_batch(&mut log, &[7u8; 300]);
        log.wrote(start, 300);
        // 20,000 bytes land, but the write reports failure.
        let (_, failed_len, _) = write_batch(&mut log, &[9u8; 20_000]);
        log.write_failed(failed_len);
        let (start, _, _) = write_batch(&mut log, &[5u8; 100]);
        log.wrote(start, 100);
        let file = std::fs::File::open(&path).unwrap();
        let mut back = vec![0u8; 40_000];
        file.read_exact_at(&mut back, journal::SEGMENT_HEADER_BYTES)
            .unwrap();
        assert!(back[..300].iter().all(|&b| b == 7));
        assert!(back[300..400].iter().all(|&b| b == 5));
        assert!(
            back[400..].iter().all(|&b| b == 0),
            "the failed write's bytes are gone"
        );
        assert_eq!(log.stale_until, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
