//! Durability: the journal of every command a shard accepts, snapshots of
//! shard state, and recovery to the identical state after a crash.
//!
//! The runtime drives this library; the library does no io_uring and keeps
//! no threads. Per shard, under `<journal dir>/shard-<index>/`:
//!
//! - **Records** ([`record`]): each accepted [`Command`](crate::book::Command)
//!   with its sequence number (per shard, from 1, no gaps) and the engine
//!   time it is applied at, checksummed (crc32c). [`encode_record`]
//!   appends one to the runtime's batch buffer without allocating.
//! - **Segments** ([`segment`]): pre-allocated files the batches are
//!   written into. [`Segment`] says where the next write goes
//!   ([`Segment::fd`], [`Segment::offset`], [`Segment::room`]) and is told
//!   when it completed ([`Segment::advance`]); [`create_segment`] makes the
//!   next one (blocking, for a background thread).
//! - **Snapshots** ([`snapshot`]): the shard's whole state after a
//!   sequence number ([`write_snapshot_file`]), so recovery replays only
//!   the records after it and older segments can go
//!   ([`obsolete_segments`], [`obsolete_snapshots`]).
//! - **Recovery** ([`recover`]): the newest valid snapshot, then every
//!   record after it in order, checking checksums and sequence continuity;
//!   a torn record at the very end is reported and zeroed, anything else
//!   stops with an error naming the file and the byte offset.
//!
//! # The protocol the runtime follows (journal before apply)
//!
//! For each shard and loop iteration: encode each command of the batch
//! with the next sequence number and the batch's engine time; write the
//! bytes at the segment's offset (switching to the next segment first if
//! they do not fit: the rest of the old one stays zero); `fdatasync`; and
//! only when that completed, [`advance`](Segment::advance), apply the
//! commands (`process_batch` with that same engine time) and send their
//! reports. If the write fails, the commands are never applied (they get
//! `Rejected(NotDurable)`), so the in-memory state always equals what
//! replay of the durable records gives. A batch must fit in one segment:
//! bound it by bytes ([`RECORD_BYTES_MAX`] per command) below the segment
//! size.
//!
//! Queries change no state: journaling them is not needed for the state
//! (replay without them gives the same digest) but is what makes replay
//! reproduce every report, so it is the runtime's choice.
//!
//! # Measured
//!
//! `cargo bench -p benches --bench journal` on the project's 2-core Xeon
//! VM (ext4; shared and noisy, so ranges over several runs):
//!
//! - encoding a record: 32 ns a command (45 before fixed-size copies);
//!   decoding and checking one: 16 to 25 ns;
//! - recovery of 1.06 million records of the exchange-core mix on 64 books
//!   (two 64 MiB segments, from the page cache, no snapshot): 0.30 to
//!   0.59 s, 1.8 to 3.5 million records a second;
//! - [`Shard::write_snapshot`] of 2^20 live orders: 35 to 47 ms (49 MiB;
//!   183 ms before the walk stopped chasing list pointers), 46 to 77 ms
//!   with a full history of 2^20 more (86 MiB); restoring: 150 to 285 ms,
//!   and 330 to 500 ms with the history;
//! - creating a 64 MiB segment (fallocate, zero fill, fsync): about 60 ms,
//!   off the hot path.
//!
//! After restart, session ids must not repeat those of the journal:
//! reports for orders that rested across the restart go to their owner
//! session id, so a new session must not get one of those ids
//! ([`RecoveryReport::session_sequence_max`]).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::book::Shard;

pub mod record;
mod recovery;
pub mod segment;
pub mod snapshot;

pub use record::{
    RECORD_BYTES_MAX, RECORD_BYTES_MIN, Record, RecordError, decode_record, encode_record,
    record_bytes,
};
pub use recovery::{Recovered, RecoveryError, RecoveryReport, TornTail, recover, recover_into};
pub use segment::{
    DIRECT_ALIGN, SEGMENT_BYTES_MIN, SEGMENT_HEADER_BYTES, Segment, SegmentHeader, create_segment,
    segment_file_name,
};
pub use snapshot::{
    LoadedSnapshot, SnapshotFileError, read_snapshot_file, snapshot_file_name,
    write_snapshot_bytes, write_snapshot_file,
};

/// Default size of a segment file: about 900,000 NewOrder records.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// Default number of records between snapshots. Replay ran at 1.8 to 3.5
/// million records a second on the project's 2-core VM (see the module
/// docs), so this bounds recovery to a few seconds of replay after the
/// snapshot, while a snapshot (about 35 to 90 ms of stalled matching per
/// million live orders) comes at most once per 10 million commands.
pub const DEFAULT_SNAPSHOT_EVERY_RECORDS: u64 = 10_000_000;

/// Where and how the journal is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalConfig {
    /// The journal directory (one subdirectory per shard).
    pub dir: PathBuf,
    /// Size of each pre-allocated segment file, at least [`SEGMENT_BYTES_MIN`].
    pub segment_bytes: u64,
    /// Take a snapshot after this many records since the last one.
    pub snapshot_every_records: u64,
}

impl JournalConfig {
    /// The defaults for a journal in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        JournalConfig {
            dir: dir.into(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            snapshot_every_records: DEFAULT_SNAPSHOT_EVERY_RECORDS,
        }
    }

    /// Checks the sizes; the error says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.segment_bytes < SEGMENT_BYTES_MIN {
            return Err(format!(
                "journal segment size {} bytes is below the minimum {SEGMENT_BYTES_MIN}",
                self.segment_bytes
            ));
        }
        if self.snapshot_every_records == 0 {
            return Err("snapshot interval 0 records; use at least 1".into());
        }
        Ok(())
    }
}

/// Which shard of which layout a journal belongs to. Records only replay
/// into the same layout: a symbol's shard depends on the shard count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardIdentity {
    /// The shard's index.
    pub shard_index: u32,
    /// How many shards the symbols are spread over.
    pub shard_count: u32,
    /// The size of the symbol directory.
    pub symbol_count: u32,
}

impl ShardIdentity {
    /// The identity of `shard`.
    pub fn of(shard: &Shard) -> Self {
        ShardIdentity {
            shard_index: shard.shard_index(),
            shard_count: shard.shard_count(),
            symbol_count: shard.symbol_count(),
        }
    }
}

impl core::fmt::Display for ShardIdentity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "shard {} of {} over {} symbols",
            self.shard_index, self.shard_count, self.symbol_count
        )
    }
}

/// The directory of one shard's journal.
pub fn shard_dir(dir: &Path, shard_index: u32) -> PathBuf {
    dir.join(format!("shard-{shard_index}"))
}

/// Makes a directory's entries (a rename, a new file) durable.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The journal records `from..=to` of shard `shard_index` in `dir`, their
/// bytes as written (concatenated, in sequence order), read from its
/// segments. Returns the bytes and the first sequence found in the range
/// (`None`: none; a sequence after `from` when older segments were
/// removed after a snapshot). Reads whole segments: for rare catch-ups
/// (the replicated log after a restart), not for the hot path.
pub fn read_records(
    dir: &Path,
    shard_index: u32,
    from: u64,
    to: u64,
) -> io::Result<(Vec<u8>, Option<u64>)> {
    let mut out = Vec::new();
    let mut first = None;
    let mut buf = Vec::new();
    for (_, path) in list_segments(&shard_dir(dir, shard_index))? {
        buf.clear();
        io::Read::read_to_end(&mut File::open(&path)?, &mut buf)?;
        let mut at = SEGMENT_HEADER_BYTES as usize;
        // Records until the zeros after the last one (or damage, which
        // recovery has dealt with already: stop there).
        while let Some(rest) = buf.get(at..) {
            let Ok(Some((record, len))) = decode_record(rest) else {
                break;
            };
            if record.seq > to {
                return Ok((out, first));
            }
            if record.seq >= from {
                first.get_or_insert(record.seq);
                out.extend_from_slice(&rest[..len]);
            }
            at += len;
        }
    }
    Ok((out, first))
}

/// Segment files of a shard directory ([`shard_dir`]), oldest first:
/// (number, path).
pub fn list_segments(shard_dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = list(shard_dir, segment::parse_segment_name)?;
    out.sort_unstable_by_key(|&(n, _)| n);
    Ok(out)
}

/// Snapshot files of a shard directory ([`shard_dir`]), oldest first:
/// (covered sequence, path).
pub fn list_snapshots(shard_dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = list(shard_dir, snapshot::parse_snapshot_name)?;
    out.sort_unstable_by_key(|&(n, _)| n);
    Ok(out)
}

fn list(shard_dir: &Path, parse: fn(&str) -> Option<u64>) -> io::Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(shard_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if let Some(n) = entry.file_name().to_str().and_then(parse) {
            out.push((n, entry.path()));
        }
    }
    Ok(out)
}

/// The segments of a shard that only hold records up to `covered_seq`, so
/// that a durable snapshot covering `covered_seq` makes them unnecessary:
/// the caller (a background thread) deletes them. A segment counts as
/// covered when a later segment's first record is at most
/// `covered_seq + 1`; the newest segment is never returned, and a segment
/// whose successors cannot be read is kept.
///
/// To let recovery fall back to an older snapshot when the newest is
/// damaged, pass the covered sequence of the oldest snapshot kept (see
/// [`obsolete_snapshots`]).
pub fn obsolete_segments(
    dir: &Path,
    shard_index: u32,
    covered_seq: u64,
) -> io::Result<Vec<PathBuf>> {
    let segments = list_segments(&shard_dir(dir, shard_index))?;
    let mut obsolete = Vec::new();
    // The first sequence of the nearest later segment that has a record.
    let mut next_first: Option<u64> = None;
    for (_, path) in segments.iter().rev() {
        if next_first.is_some_and(|first| first <= covered_seq.saturating_add(1)) {
            obsolete.push(path.clone());
        }
        if let Ok(Ok(probe)) = segment::probe_segment(path)
            && let Ok(Some(first)) = probe.first_seq
        {
            next_first = Some(first);
        }
    }
    obsolete.reverse();
    Ok(obsolete)
}

/// The snapshot files of a shard other than the newest `keep` (which
/// should be at least 1; 2 lets recovery fall back one snapshot), for the
/// caller to delete.
pub fn obsolete_snapshots(dir: &Path, shard_index: u32, keep: usize) -> io::Result<Vec<PathBuf>> {
    let snapshots = list_snapshots(&shard_dir(dir, shard_index))?;
    let drop = snapshots.len().saturating_sub(keep);
    Ok(snapshots.into_iter().take(drop).map(|(_, p)| p).collect())
}
