//! Recovery: rebuild a shard from its newest valid snapshot and the
//! journal records after it, exactly as it was.
//!
//! 1. Leftover `.tmp` files (a snapshot or segment whose creation was cut
//!    short: never renamed, so never used) are removed.
//! 2. The newest snapshot that reads back (header, checksums, restore) is
//!    the base; damaged newer ones are skipped and reported. A snapshot
//!    that restores to a different digest than it stored, belongs to
//!    another shard layout, or does not fit the configuration is an error
//!    (those are not damage, and an older snapshot would not fix them).
//!    With no usable snapshot the base is an empty shard at sequence 0.
//! 3. Every record after the base's sequence is replayed in order, with
//!    its engine time, from the segment that holds the next sequence on.
//!    Every record read must pass its checksum and continue the sequence.
//!    The records replayed must have been written under the same shard
//!    configuration (segment headers say which), or replay could differ.
//! 4. The end: in the newest segment with data, a record that fails its
//!    checksum or is cut short, followed only by zeros, is a **torn tail**
//!    (a write that never completed, so never acknowledged): reported and
//!    zeroed, and appending resumes there. Anything else (a bad record
//!    with data after it, data after the end marker, a bad record in an
//!    older segment, a sequence gap) is an error naming the file and the
//!    byte offset: the journal is damaged where acknowledged orders may
//!    live, and skipping them would silently lose them.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::record::{RECORD_BYTES_MAX, RECORD_BYTES_MIN, RecordError, decode_record};
use super::segment::{
    SEGMENT_BYTES_MIN, SEGMENT_HEADER_BYTES, Segment, create_segment, probe_segment,
};
use super::snapshot::{SnapshotFileError, read_snapshot_file};
use super::{ShardIdentity, list_segments, list_snapshots, shard_dir};
use crate::book::workload::DiscardSink;
use crate::book::{Command, ConfigError, Matcher, Shard, ShardConfig, Sink, SnapshotError};
use wire::Side;

/// Commands replayed per `process_batch` call (records with one engine
/// time, as the runtime applied them, up to this many).
const REPLAY_BATCH_COMMANDS: usize = 1024;

/// Zeros written per call when a torn tail is cleared.
const ZERO_CHUNK_BYTES: usize = 64 << 10;

/// A torn record at the end of the journal, and what was done about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub path: PathBuf,
    /// Where the torn record starts (appending resumes here).
    pub offset: u64,
    /// Non-zero bytes from there on, now zeroed.
    pub bytes_zeroed: u64,
    /// What was wrong with the record.
    pub problem: RecordError,
}

/// What recovery found and did, for the start-up log (its `Display` is one
/// paragraph).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The shard recovered.
    pub identity: ShardIdentity,
    /// The snapshot the state started from and the sequence it covers
    /// (`None`: an empty shard at sequence 0).
    pub snapshot: Option<(PathBuf, u64)>,
    /// Newer snapshots that could not be used, and why.
    pub snapshots_skipped: Vec<(PathBuf, String)>,
    /// Temp files of interrupted snapshot or segment writes, removed.
    pub temp_files_removed: Vec<PathBuf>,
    /// Segment files read.
    pub segments_read: usize,
    /// Records applied after the snapshot.
    pub records_replayed: u64,
    /// Records read that the snapshot already covered.
    pub records_covered: u64,
    /// The torn record at the end, if there was one.
    pub torn_tail: Option<TornTail>,
    /// The sequence number the next record gets.
    pub next_seq: u64,
    /// The segment appending continues in, and at which offset.
    pub append_at: (PathBuf, u64),
    /// Live orders after recovery.
    pub live_orders: usize,
    /// The highest per-core sequence ([`SessionId::sequence`](crate::session_id::SessionId::sequence): generation
    /// and slot) of any session that owns a live order or sent a replayed
    /// command. New sessions must be numbered above it on
    /// every core, or reports for orders resting across the restart would
    /// reach an unrelated new session.
    pub session_sequence_max: u64,
    /// Time to read and restore the snapshot.
    pub snapshot_load: Duration,
    /// Time to read and replay the segments.
    pub replay: Duration,
    /// Time for the whole recovery.
    pub total: Duration,
}

impl core::fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} recovered in {:.1?}: ", self.identity, self.total)?;
        match &self.snapshot {
            Some((path, covers)) => write!(
                f,
                "snapshot {} (through seq {covers}) loaded in {:.1?}",
                path.display(),
                self.snapshot_load
            )?,
            None => write!(f, "no snapshot, started empty")?,
        }
        for (path, why) in &self.snapshots_skipped {
            write!(f, "; skipped damaged snapshot {}: {why}", path.display())?;
        }
        write!(
            f,
            "; replayed {} records from {} segments in {:.1?} ({} already in the snapshot)",
            self.records_replayed, self.segments_read, self.replay, self.records_covered
        )?;
        if let Some(t) = &self.torn_tail {
            write!(
                f,
                "; torn record at the end of {} at byte {} ({}): {} bytes zeroed, never \
                 acknowledged",
                t.path.display(),
                t.offset,
                t.problem,
                t.bytes_zeroed
            )?;
        }
        for path in &self.temp_files_removed {
            write!(f, "; removed unfinished {}", path.display())?;
        }
        write!(
            f,
            "; {} live orders; next seq {}, appending to {} at byte {}",
            self.live_orders,
            self.next_seq,
            self.append_at.0.display(),
            self.append_at.1
        )
    }
}

/// A recovered shard, ready to go on.
#[derive(Debug)]
pub struct Recovered {
    /// The shard, in the state the journal describes.
    pub shard: Shard,
    /// The sequence number of the next record.
    pub next_seq: u64,
    /// The segment to append to, positioned after the last record.
    pub segment: Segment,
    /// What recovery did.
    pub report: RecoveryReport,
}

/// Why a shard could not be recovered. Every variant that concerns a file
/// names it (and the byte offset, for damage inside one); the `Display`
/// says what to do.
#[derive(Debug)]
pub enum RecoveryError {
    /// The shard placement or configuration is invalid.
    Config(ConfigError),
    /// The segment size to create new segments with is too small.
    SegmentSize {
        /// The size asked for.
        bytes: u64,
    },
    /// A file operation failed.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The error.
        source: io::Error,
    },
    /// A segment's header is damaged or does not match its name.
    SegmentHeader {
        /// The segment.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A file belongs to another shard or shard layout.
    WrongShard {
        /// The file.
        path: PathBuf,
        /// The identity it carries.
        found: ShardIdentity,
        /// The shard being recovered.
        expected: ShardIdentity,
    },
    /// Records to replay were written under another shard configuration.
    ConfigChanged {
        /// The segment holding them.
        path: PathBuf,
        /// The configuration they were applied with.
        found: ShardConfig,
        /// The configuration given now.
        expected: ShardConfig,
    },
    /// A snapshot that is intact but cannot be used with this configuration
    /// (or restores to another digest than it stored).
    Snapshot {
        /// The snapshot file.
        path: PathBuf,
        /// Why.
        error: SnapshotFileError,
    },
    /// A record that is not the torn end of the journal fails its checks.
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Byte offset of the record.
        offset: u64,
        /// What is wrong with it.
        problem: RecordError,
    },
    /// Non-zero bytes after the end-of-data marker of a segment.
    DataAfterEnd {
        /// The segment.
        path: PathBuf,
        /// Where the data ended (a zero length).
        end_offset: u64,
        /// The first non-zero byte after it.
        data_offset: u64,
    },
    /// A record's sequence number does not continue the journal.
    SequenceGap {
        /// The segment.
        path: PathBuf,
        /// Byte offset of the record.
        offset: u64,
        /// The sequence number expected.
        expected: u64,
        /// The sequence number found.
        found: u64,
        /// Snapshots skipped as damaged before replay started (an older
        /// base needs older records).
        snapshots_skipped: Vec<(PathBuf, String)>,
    },
    /// The journal ends before the sequence the snapshot covers.
    JournalBehindSnapshot {
        /// The snapshot.
        snapshot: PathBuf,
        /// What it covers.
        covers_seq: u64,
        /// The last record in the journal.
        last_seq: u64,
    },
}

impl core::fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RecoveryError::Config(e) => write!(f, "cannot recover the journal: {e}"),
            RecoveryError::SegmentSize { bytes } => write!(
                f,
                "journal segment size {bytes} bytes is below the minimum {SEGMENT_BYTES_MIN}"
            ),
            RecoveryError::Io {
                path,
                action,
                source,
            } => write!(
                f,
                "journal recovery: cannot {action} {}: {source}",
                path.display()
            ),
            RecoveryError::SegmentHeader { path, problem } => write!(
                f,
                "journal segment {} has a bad header ({problem}); it was not written by this \
                 server or is damaged: restore it from a backup or replica",
                path.display()
            ),
            RecoveryError::WrongShard {
                path,
                found,
                expected,
            } => write!(
                f,
                "{} belongs to {found}, but this server runs {expected}: start with the \
                 --shards and symbols the journal was written with, or use another journal \
                 directory",
                path.display()
            ),
            RecoveryError::ConfigChanged {
                path,
                found,
                expected,
            } => write!(
                f,
                "records in {} were applied with {found:?} but the server now runs \
                 {expected:?}; replay must use the same limits: restart with the old \
                 settings (a snapshot taken then lets you change them)",
                path.display()
            ),
            RecoveryError::Snapshot { path, error } => {
                write!(f, "snapshot {} cannot be used: {error}", path.display())
            }
            RecoveryError::Corrupt {
                path,
                offset,
                problem,
            } => write!(
                f,
                "journal damaged in {} at byte offset {offset}: {problem}; records from there on \
                 may include acknowledged orders, so the server will not start: restore the file \
                 from a backup or replica, or, if you know nothing after that offset was \
                 acknowledged, zero the file from that offset and restart",
                path.display()
            ),
            RecoveryError::DataAfterEnd {
                path,
                end_offset,
                data_offset,
            } => write!(
                f,
                "journal damaged in {}: the data ends at byte offset {end_offset} but there are \
                 bytes again at offset {data_offset}; restore the file from a backup or replica, \
                 or, if you know nothing after the end was acknowledged, zero the file from \
                 offset {end_offset} and restart",
                path.display()
            ),
            RecoveryError::SequenceGap {
                path,
                offset,
                expected,
                found,
                snapshots_skipped,
            } => {
                write!(
                    f,
                    "journal sequence gap in {} at byte offset {offset}: expected record \
                     {expected}, found {found}; records {expected}..{found} are missing",
                    path.display()
                )?;
                for (path, why) in snapshots_skipped {
                    write!(
                        f,
                        "; the newer snapshot {} that would have covered them is damaged \
                         ({why})",
                        path.display()
                    )?;
                }
                write!(f, "; restore the missing files from a backup or replica")
            }
            RecoveryError::JournalBehindSnapshot {
                snapshot,
                covers_seq,
                last_seq,
            } => write!(
                f,
                "snapshot {} covers records up to {covers_seq}, but the journal ends at record \
                 {last_seq}: journal files were lost after they were durable; restore them, or \
                 move the journal segments away to start from the snapshot alone",
                snapshot.display()
            ),
        }
    }
}

impl std::error::Error for RecoveryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RecoveryError::Io { source, .. } => Some(source),
            RecoveryError::Snapshot { error, .. } => Some(error),
            RecoveryError::Corrupt { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

impl From<ConfigError> for RecoveryError {
    fn from(e: ConfigError) -> Self {
        RecoveryError::Config(e)
    }
}

fn io_error<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(io::Error) -> RecoveryError + 'a {
    move |source| RecoveryError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// Recovers shard `id` from the journal in `dir` (see the module docs),
/// creating the shard's directory and first segment (`segment_bytes`
/// long) if there is no journal yet. Blocking; run it before the shard
/// takes commands.
pub fn recover(
    dir: &Path,
    id: &ShardIdentity,
    cfg: ShardConfig,
    segment_bytes: u64,
) -> Result<Recovered, RecoveryError> {
    recover_into(dir, id, cfg, segment_bytes, &mut DiscardSink::default())
}

/// [`recover`], delivering the reports that replay produces to `sink`
/// (they are the reports the original run sent, for records after the
/// snapshot).
pub fn recover_into<S: Sink>(
    dir: &Path,
    id: &ShardIdentity,
    cfg: ShardConfig,
    segment_bytes: u64,
    sink: &mut S,
) -> Result<Recovered, RecoveryError> {
    let started = Instant::now();
    cfg.validate()?;
    if segment_bytes < SEGMENT_BYTES_MIN {
        return Err(RecoveryError::SegmentSize {
            bytes: segment_bytes,
        });
    }
    let shard_dir = shard_dir(dir, id.shard_index);
    std::fs::create_dir_all(&shard_dir).map_err(io_error(&shard_dir, "create"))?;
    let temp_files_removed = remove_temp_files(&shard_dir)?;
    let segments = list_segments(&shard_dir).map_err(io_error(&shard_dir, "list"))?;
    let snapshots = list_snapshots(&shard_dir).map_err(io_error(&shard_dir, "list"))?;

    // The base: the newest snapshot that reads back, else an empty shard.
    let snapshot_started = Instant::now();
    let mut snapshots_skipped = Vec::new();
    let mut base = None;
    for (covers, path) in snapshots.iter().rev() {
        match read_snapshot_file(path, id, cfg) {
            Ok(loaded) if loaded.covers_seq == *covers => {
                base = Some((loaded.shard, loaded.covers_seq, path.clone()));
                break;
            }
            Ok(loaded) => snapshots_skipped.push((
                path.clone(),
                format!(
                    "its name says it covers record {covers} but its header says {}",
                    loaded.covers_seq
                ),
            )),
            Err(error) if is_damage(&error) => {
                snapshots_skipped.push((path.clone(), error.to_string()))
            }
            Err(error) => {
                return Err(RecoveryError::Snapshot {
                    path: path.clone(),
                    error,
                });
            }
        }
    }
    let (mut shard, covers, snapshot) = match base {
        Some((shard, covers, path)) => (shard, covers, Some((path, covers))),
        None => (
            Shard::try_new(id.shard_index, id.shard_count, id.symbol_count, cfg)?,
            0,
            None,
        ),
    };
    let snapshot_load = snapshot_started.elapsed();

    // What each segment starts with.
    let replay_started = Instant::now();
    let mut probes = Vec::with_capacity(segments.len());
    for (number, path) in &segments {
        let probe = probe_segment(path)
            .map_err(io_error(path, "read"))?
            .map_err(|problem| RecoveryError::SegmentHeader {
                path: path.clone(),
                problem,
            })?;
        if probe.header.identity != *id {
            return Err(RecoveryError::WrongShard {
                path: path.clone(),
                found: probe.header.identity,
                expected: *id,
            });
        }
        if probe.header.number != *number {
            return Err(RecoveryError::SegmentHeader {
                path: path.clone(),
                problem: format!(
                    "named segment {number} but its header says {}",
                    probe.header.number
                ),
            });
        }
        probes.push(probe);
    }
    // Replay starts in the last segment whose first record is at most the
    // first one needed; the newest segment with data is where a torn tail
    // may be.
    let start = probes
        .iter()
        .rposition(|p| matches!(p.first_seq, Ok(Some(first)) if first <= covers + 1))
        .unwrap_or(0);
    let last_with_data = probes
        .iter()
        .rposition(|p| !matches!(p.first_seq, Ok(None)));

    let mut replay = Replay {
        shard: &mut shard,
        sink,
        covers,
        expected: None,
        batch: Vec::with_capacity(REPLAY_BATCH_COMMANDS),
        batch_ns: 0,
        replayed: 0,
        covered: 0,
        session_sequence_max: 0,
    };
    let mut buf = Vec::new();
    let mut torn_tail = None;
    let mut end_of_last = SEGMENT_HEADER_BYTES;
    for (i, (_, path)) in segments.iter().enumerate().skip(start) {
        read_file(path, &mut buf)?;
        let end = replay.segment(
            path,
            &buf,
            &probes[i].header.config,
            cfg,
            &snapshots_skipped,
        )?;
        let end = match end {
            SegmentEnd::Clean(end) => end,
            SegmentEnd::Bad { offset, problem } => {
                let after = offset + bad_record_extent(&buf[offset..], problem);
                if Some(i) != last_with_data
                    || first_nonzero(&buf[after.min(buf.len())..]).is_some()
                {
                    return Err(RecoveryError::Corrupt {
                        path: path.clone(),
                        offset: offset as u64,
                        problem,
                    });
                }
                let data_end = last_nonzero_end(&buf[offset..]);
                torn_tail = Some(TornTail {
                    path: path.clone(),
                    offset: offset as u64,
                    bytes_zeroed: data_end as u64,
                    problem,
                });
                offset
            }
        };
        end_of_last = end as u64;
    }
    replay.flush();
    let (replayed, records_covered, mut session_sequence_max) =
        (replay.replayed, replay.covered, replay.session_sequence_max);
    let last_seq = replay.expected.map(|next| next - 1);
    if let (Some(last_seq), Some((path, _))) = (last_seq, &snapshot)
        && last_seq < covers
    {
        return Err(RecoveryError::JournalBehindSnapshot {
            snapshot: path.clone(),
            covers_seq: covers,
            last_seq,
        });
    }
    let next_seq = last_seq.map_or(covers + 1, |last| last.max(covers) + 1);
    if let Some(t) = &torn_tail {
        zero_range(&t.path, t.offset, t.bytes_zeroed)?;
    }
    let replay_time = replay_started.elapsed();

    // Appending goes on in the newest segment, unless it was made for
    // another configuration (its header would then misdescribe the new
    // records) or there is none.
    let segment = match (segments.last(), probes.last()) {
        (Some((number, path)), Some(probe)) if probe.header.config == cfg => {
            Segment::open_at(path, *number, end_of_last).map_err(io_error(path, "open"))?
        }
        (last, _) => {
            let number = last.map_or(1, |(n, _)| n + 1);
            create_segment(dir, id, &cfg, number, segment_bytes)
                .map_err(io_error(&shard_dir, "create a segment in"))?
        }
    };

    for symbol in (id.shard_index..id.symbol_count).step_by(id.shard_count.max(1) as usize) {
        for side in [Side::Buy, Side::Sell] {
            for o in shard.orders_by_priority(symbol, side) {
                session_sequence_max = session_sequence_max.max(o.owner_session.sequence());
            }
        }
    }
    debug_assert_eq!(shard.check_invariants(), Ok(()));
    let report = RecoveryReport {
        identity: *id,
        snapshot,
        snapshots_skipped,
        temp_files_removed,
        segments_read: segments.len() - start.min(segments.len()),
        records_replayed: replayed,
        records_covered,
        torn_tail,
        next_seq,
        append_at: (segment.path().to_path_buf(), segment.offset()),
        live_orders: shard.live_orders(),
        session_sequence_max,
        snapshot_load,
        replay: replay_time,
        total: started.elapsed(),
    };
    Ok(Recovered {
        shard,
        next_seq,
        segment,
        report,
    })
}

/// True for snapshot errors that mean the file is damaged (so an older
/// snapshot may serve), as opposed to one that cannot be used here.
fn is_damage(error: &SnapshotFileError) -> bool {
    match error {
        SnapshotFileError::Io(_) | SnapshotFileError::Header(_) | SnapshotFileError::Body(_) => {
            true
        }
        SnapshotFileError::Restore(e) => {
            !matches!(e, SnapshotError::Capacity { .. } | SnapshotError::Config(_))
        }
        SnapshotFileError::WrongShard { .. } | SnapshotFileError::Digest { .. } => false,
    }
}

/// How one segment's records ended.
enum SegmentEnd {
    /// At the end marker (checked to be followed by zeros only) or the end
    /// of the file: the offset after the last record.
    Clean(usize),
    /// At a record that fails its checks.
    Bad { offset: usize, problem: RecordError },
}

/// Replay state across segments.
struct Replay<'a, S> {
    shard: &'a mut Shard,
    sink: &'a mut S,
    /// The sequence the base state covers.
    covers: u64,
    /// The next sequence number, once a record was read.
    expected: Option<u64>,
    batch: Vec<Command>,
    batch_ns: u64,
    replayed: u64,
    covered: u64,
    session_sequence_max: u64,
}

impl<S: Sink> Replay<'_, S> {
    /// Reads every record of one segment's bytes, applying those after the
    /// base.
    fn segment(
        &mut self,
        path: &Path,
        bytes: &[u8],
        written_with: &ShardConfig,
        cfg: ShardConfig,
        snapshots_skipped: &[(PathBuf, String)],
    ) -> Result<SegmentEnd, RecoveryError> {
        let mut at = SEGMENT_HEADER_BYTES as usize;
        let mut config_checked = false;
        loop {
            let (record, used) = match decode_record(&bytes[at.min(bytes.len())..]) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    let rest = &bytes[at.min(bytes.len())..];
                    if let Some(data) = first_nonzero(rest) {
                        return Err(RecoveryError::DataAfterEnd {
                            path: path.to_path_buf(),
                            end_offset: at as u64,
                            data_offset: (at + data) as u64,
                        });
                    }
                    return Ok(SegmentEnd::Clean(at.min(bytes.len())));
                }
                Err(problem) => {
                    return Ok(SegmentEnd::Bad {
                        offset: at,
                        problem,
                    });
                }
            };
            let expected = self.expected.unwrap_or(record.seq.min(self.covers + 1));
            if record.seq != expected {
                return Err(RecoveryError::SequenceGap {
                    path: path.to_path_buf(),
                    offset: at as u64,
                    expected,
                    found: record.seq,
                    snapshots_skipped: snapshots_skipped.to_vec(),
                });
            }
            self.expected = Some(record.seq + 1);
            if record.seq <= self.covers {
                self.covered += 1;
            } else {
                if !config_checked {
                    if *written_with != cfg {
                        return Err(RecoveryError::ConfigChanged {
                            path: path.to_path_buf(),
                            found: *written_with,
                            expected: cfg,
                        });
                    }
                    config_checked = true;
                }
                if !self.batch.is_empty()
                    && (record.engine_ns != self.batch_ns
                        || self.batch.len() == REPLAY_BATCH_COMMANDS)
                {
                    self.flush();
                }
                self.batch_ns = record.engine_ns;
                self.batch.push(record.cmd);
                self.replayed += 1;
                self.session_sequence_max =
                    self.session_sequence_max.max(record.cmd.session.sequence());
            }
            at += used;
        }
    }

    fn flush(&mut self) {
        self.shard
            .process_batch(&self.batch, self.batch_ns, &mut *self.sink);
        self.batch.clear();
    }
}

/// How far a bad record at the start of `bytes` may reach: its length when
/// that is a record size, else the largest record.
fn bad_record_extent(bytes: &[u8], problem: RecordError) -> usize {
    let length = match problem {
        RecordError::Checksum { .. } => super::record::length_at(bytes) as usize,
        RecordError::BadOp { length, .. } | RecordError::Truncated { length, .. } => {
            length as usize
        }
        RecordError::BadLength { .. } => RECORD_BYTES_MAX,
    };
    length.clamp(RECORD_BYTES_MIN, RECORD_BYTES_MAX)
}

/// Reads a whole file into `buf` (reusing its allocation).
fn read_file(path: &Path, buf: &mut Vec<u8>) -> Result<(), RecoveryError> {
    let file = File::open(path).map_err(io_error(path, "open"))?;
    let len = file.metadata().map_err(io_error(path, "stat"))?.len() as usize;
    buf.clear();
    buf.resize(len, 0);
    file.read_exact_at(buf, 0).map_err(io_error(path, "read"))
}

/// The position of the first non-zero byte.
fn first_nonzero(bytes: &[u8]) -> Option<usize> {
    // OR-folding fixed chunks vectorizes; the search inside one is rare.
    const CHUNK: usize = 4096;
    let chunk = bytes
        .chunks(CHUNK)
        .position(|c| c.iter().fold(0u8, |a, &b| a | b) != 0)?;
    let start = chunk * CHUNK;
    bytes[start..]
        .iter()
        .position(|&b| b != 0)
        .map(|p| start + p)
}

/// One past the last non-zero byte (0 if all are zero).
fn last_nonzero_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1)
}

/// Writes `len` zeros at `offset` and makes them durable.
fn zero_range(path: &Path, offset: u64, len: u64) -> Result<(), RecoveryError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error(path, "open"))?;
    let zeros = vec![0u8; ZERO_CHUNK_BYTES];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(ZERO_CHUNK_BYTES as u64) as usize;
        file.write_all_at(&zeros[..n], offset + done)
            .map_err(io_error(path, "zero the torn tail of"))?;
        done += n as u64;
    }
    file.sync_data().map_err(io_error(path, "sync"))
}

/// Removes `.tmp` files of interrupted snapshot and segment writes.
fn remove_temp_files(shard_dir: &Path) -> Result<Vec<PathBuf>, RecoveryError> {
    let mut removed = Vec::new();
    let entries = std::fs::read_dir(shard_dir).map_err(io_error(shard_dir, "list"))?;
    for entry in entries {
        let entry = entry.map_err(io_error(shard_dir, "list"))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".tmp")) else {
            continue;
        };
        if super::segment::parse_segment_name(stem).is_some()
            || super::snapshot::parse_snapshot_name(stem).is_some()
        {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(io_error(&path, "remove"))?;
            removed.push(path);
        }
    }
    Ok(removed)
}
