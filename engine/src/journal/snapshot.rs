//! Snapshot files: a shard's state ([`Shard::write_snapshot`]) after
//! every record up to a sequence number, so that recovery replays only
//! what came after it and old segments can be deleted.
//!
//! `<journal dir>/shard-<index>/snapshot-<covered sequence, 20 digits>.snap`,
//! written to a `.tmp` name, fsynced, renamed and the directory fsynced:
//! a snapshot file under its real name is always complete.
//!
//! # Header (64 bytes, little-endian), then the body
//!
//! | Offset | Size | Field |
//! |---:|---:|---|
//! | 0 | 8 | magic `TDXSNAP\0` |
//! | 8 | 4 | file format version (1) |
//! | 12 | 4 | header bytes (64) |
//! | 16 | 12 | shard index, shard count, symbol count (`u32` each) |
//! | 28 | 4 | reserved, zero |
//! | 32 | 8 | covered sequence: the state after applying records 1..=this |
//! | 40 | 8 | the state digest ([`crate::book::Matcher::state_digest`]) |
//! | 48 | 8 | body bytes |
//! | 56 | 4 | crc32c of the body |
//! | 60 | 4 | crc32c of bytes 0..60 |

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{ShardIdentity, fsync_dir, shard_dir};
use crate::book::{Matcher, Shard, ShardConfig, SnapshotError};

/// The snapshot file format this build writes and reads.
pub const SNAPSHOT_FILE_VERSION: u32 = 1;

/// Bytes before the body.
pub const SNAPSHOT_HEADER_BYTES: usize = 64;

const MAGIC: [u8; 8] = *b"TDXSNAP\0";

/// The file name of a snapshot covering records up to `covers_seq`.
pub fn snapshot_file_name(covers_seq: u64) -> String {
    format!("snapshot-{covers_seq:020}.snap")
}

/// The covered sequence in a snapshot's file name.
pub(crate) fn parse_snapshot_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snapshot-")?.strip_suffix(".snap")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Serializes `shard` and writes it as the snapshot covering records up to
/// `covers_seq` (blocking). The serialization is the part that stops the
/// shard; a runtime that wants the file I/O elsewhere calls
/// [`Shard::write_snapshot`] itself and hands the bytes to
/// [`write_snapshot_bytes`] on another thread.
pub fn write_snapshot_file(dir: &Path, shard: &Shard, covers_seq: u64) -> io::Result<PathBuf> {
    let mut body = Vec::new();
    let digest = shard.write_snapshot(&mut body);
    write_snapshot_bytes(dir, &ShardIdentity::of(shard), covers_seq, digest, &body)
}

/// Writes a snapshot body (from [`Shard::write_snapshot`], which also
/// returned `digest`) as the snapshot file covering records up to
/// `covers_seq`: temp file, fsync, rename, directory fsync (blocking).
pub fn write_snapshot_bytes(
    dir: &Path,
    id: &ShardIdentity,
    covers_seq: u64,
    digest: u64,
    body: &[u8],
) -> io::Result<PathBuf> {
    let shard_dir = shard_dir(dir, id.shard_index);
    std::fs::create_dir_all(&shard_dir)?;
    let name = snapshot_file_name(covers_seq);
    let path = shard_dir.join(&name);
    let temp = shard_dir.join(format!("{name}.tmp"));
    let mut h = [0u8; SNAPSHOT_HEADER_BYTES];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&SNAPSHOT_FILE_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(SNAPSHOT_HEADER_BYTES as u32).to_le_bytes());
    h[16..20].copy_from_slice(&id.shard_index.to_le_bytes());
    h[20..24].copy_from_slice(&id.shard_count.to_le_bytes());
    h[24..28].copy_from_slice(&id.symbol_count.to_le_bytes());
    h[32..40].copy_from_slice(&covers_seq.to_le_bytes());
    h[40..48].copy_from_slice(&digest.to_le_bytes());
    h[48..56].copy_from_slice(&(body.len() as u64).to_le_bytes());
    h[56..60].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    let crc = crc32c::crc32c(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)?;
        file.write_all(&h)?;
        file.write_all(body)?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)?;
        fsync_dir(&shard_dir)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    Ok(path)
}

/// A snapshot file read back.
#[derive(Debug)]
pub struct LoadedSnapshot {
    /// The restored shard.
    pub shard: Shard,
    /// The last sequence number its state includes.
    pub covers_seq: u64,
    /// Its state digest (checked against the restored shard's).
    pub digest: u64,
}

/// Why a snapshot file cannot be used.
#[derive(Debug)]
pub enum SnapshotFileError {
    /// Reading it failed.
    Io(io::Error),
    /// The header is damaged or from another format.
    Header(String),
    /// It belongs to another shard or shard layout.
    WrongShard {
        /// What the file says.
        found: ShardIdentity,
        /// What was asked for.
        expected: ShardIdentity,
    },
    /// The body is shorter or longer than the header says, or its checksum
    /// does not match.
    Body(String),
    /// The body does not restore.
    Restore(SnapshotError),
    /// The restored shard's digest differs from the one stored: the
    /// snapshot did not capture the state it claims (a bug, not damage:
    /// the checksums passed).
    Digest {
        /// The digest in the header.
        stored: u64,
        /// The restored shard's.
        computed: u64,
    },
}

impl core::fmt::Display for SnapshotFileError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SnapshotFileError::Io(e) => write!(f, "cannot read it: {e}"),
            SnapshotFileError::Header(problem) => write!(f, "bad header: {problem}"),
            SnapshotFileError::WrongShard { found, expected } => write!(
                f,
                "it is for {found}, not {expected} (the server was started with other \
                 --shards or symbols than the journal was written with)"
            ),
            SnapshotFileError::Body(problem) => write!(f, "bad body: {problem}"),
            SnapshotFileError::Restore(e) => write!(f, "{e}"),
            SnapshotFileError::Digest { stored, computed } => write!(
                f,
                "restored state digest {computed:#018x} differs from the stored {stored:#018x}"
            ),
        }
    }
}

impl std::error::Error for SnapshotFileError {}

/// Reads and restores a snapshot file, checking its header, the shard it
/// belongs to, both checksums and, after restoring, the digest.
pub fn read_snapshot_file(
    path: &Path,
    id: &ShardIdentity,
    cfg: ShardConfig,
) -> Result<LoadedSnapshot, SnapshotFileError> {
    let bytes = std::fs::read(path).map_err(SnapshotFileError::Io)?;
    let (covers_seq, digest, body) = parse(&bytes, id)?;
    let shard = Shard::from_snapshot(body, cfg).map_err(SnapshotFileError::Restore)?;
    let computed = shard.state_digest();
    if computed != digest {
        return Err(SnapshotFileError::Digest {
            stored: digest,
            computed,
        });
    }
    Ok(LoadedSnapshot {
        shard,
        covers_seq,
        digest,
    })
}

/// Checks the header and the body's checksum: (covered sequence, digest, body).
fn parse<'a>(
    bytes: &'a [u8],
    id: &ShardIdentity,
) -> Result<(u64, u64, &'a [u8]), SnapshotFileError> {
    let header = |p: String| SnapshotFileError::Header(p);
    let Some(h) = bytes.get(..SNAPSHOT_HEADER_BYTES) else {
        return Err(header(format!(
            "file is {} bytes, shorter than a snapshot header",
            bytes.len()
        )));
    };
    if h[0..8] != MAGIC {
        return Err(header("not a turbo-dex snapshot (bad magic)".into()));
    }
    let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    let u64_at = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&h[at..at + 8]);
        u64::from_le_bytes(a)
    };
    let (stored, computed) = (u32_at(60), crc32c::crc32c(&h[..60]));
    if stored != computed {
        return Err(header(format!(
            "header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )));
    }
    let version = u32_at(8);
    if version != SNAPSHOT_FILE_VERSION || u32_at(12) as usize != SNAPSHOT_HEADER_BYTES {
        return Err(header(format!(
            "snapshot file version {version} with a {}-byte header; this build reads version \
             {SNAPSHOT_FILE_VERSION} ({SNAPSHOT_HEADER_BYTES} bytes)",
            u32_at(12)
        )));
    }
    let found = ShardIdentity {
        shard_index: u32_at(16),
        shard_count: u32_at(20),
        symbol_count: u32_at(24),
    };
    if found != *id {
        return Err(SnapshotFileError::WrongShard {
            found,
            expected: *id,
        });
    }
    let body = &bytes[SNAPSHOT_HEADER_BYTES..];
    let body_bytes = u64_at(48);
    if body.len() as u64 != body_bytes {
        return Err(SnapshotFileError::Body(format!(
            "{} bytes where the header says {body_bytes}",
            body.len()
        )));
    }
    let (stored, computed) = (u32_at(56), crc32c::crc32c(body));
    if stored != computed {
        return Err(SnapshotFileError::Body(format!(
            "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )));
    }
    Ok((u64_at(32), u64_at(40), body))
}
