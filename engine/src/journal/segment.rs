//! Segment files: pre-allocated files that records are appended to.
//!
//! A segment is `<journal dir>/shard-<index>/<number>.seg`, numbered from 1
//! per shard with 20 zero-padded digits, so names sort in write order. It
//! is created at its full size ([`create_segment`]): allocated with
//! `fallocate` and then overwritten with zeros, written with a header in
//! its first [`SEGMENT_HEADER_BYTES`], fsynced, and only then renamed into
//! place (and the directory fsynced). So:
//!
//! - a write inside a segment never needs a block the disk does not have
//!   (no ENOSPC after an order was taken), and never changes the file's
//!   size or extent map, so `fdatasync` flushes data only. Measured on this
//!   project's 2-core ext4 VM (64 KiB write + fdatasync, 300 rounds), p50
//!   was 316 us into an fallocated-only file and 202 us into a zero-filled
//!   one, which is why creation pays for the zero fill (about 57 ms and
//!   64 MiB of writes per 64 MiB segment, off the hot path);
//! - the data ends at the first record whose length is 0: after it the
//!   segment is all zeros, which recovery checks;
//! - a segment with a bad header never appears under a segment name.
//!
//! The server appends with direct I/O (`O_DIRECT`) where the file system
//! allows it ([`Segment::open_direct`]): each write starts at the
//! [`DIRECT_ALIGN`] boundary before the append offset, writing that
//! block's existing bytes again unchanged, and ends with zeros up to the
//! next boundary, where the segment holds zeros already. The bytes on disk
//! are the same as with buffered writes, so recovery does not care which
//! was used. Rewriting the partial block cannot damage the records already
//! in it: a device writes each sector whole or not at all, and every
//! sector of the old bytes is written with the same bytes.
//!
//! Segments are named by number rather than by first sequence number so
//! that the next one can be created ahead of need, when its first sequence
//! number is not yet known (it is the sequence of its first record).
//!
//! # Header (little-endian, the rest of the 4 KiB is zero)
//!
//! | Offset | Size | Field |
//! |---:|---:|---|
//! | 0 | 8 | magic `TDXJRNL\0` |
//! | 8 | 4 | format version (1) |
//! | 12 | 4 | header bytes (4096): records start there |
//! | 16 | 12 | shard index, shard count, symbol count (`u32` each) |
//! | 28 | 4 | reserved, zero |
//! | 32 | 8 | segment number |
//! | 40 | 32 | the shard configuration its records were applied with: `orders_max` u32, `levels_per_side_max` u32, `quantity_max` u64, `price_max` i64, `market_band_ticks` i64 |
//! | 72 | 4 | `history_max` u32 |
//! | 76 | 4 | crc32c of bytes 0..76 |
//! | 80 | 8 | `account_orders_max` u32, `account_symbol_orders_max` u32 |
//! | 88 | 4 | crc32c of bytes 0..88 |
//!
//! Bytes 80..92 came with the per-account caps; a segment written before
//! them has zeros there and is read as "no caps" (`u32::MAX`).
//!
//! The configuration is there because replay must apply records with the
//! limits they were first applied with, or it would not reproduce the
//! same reports (an order accepted under one `quantity_max` may be
//! rejected under another).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::record::{RECORD_BYTES_MAX, decode_record};
use super::{ShardIdentity, fsync_dir, shard_dir};
use crate::book::ShardConfig;

/// Alignment of direct (`O_DIRECT`) writes: of their file offset, their
/// length and their buffer's address. 4096 is a multiple of every common
/// logical block size.
pub const DIRECT_ALIGN: usize = 4096;

/// Bytes at the start of a segment before its first record.
pub const SEGMENT_HEADER_BYTES: u64 = 4096;

/// The segment format this build writes and reads.
pub const SEGMENT_FORMAT_VERSION: u32 = 1;

/// The smallest segment: its header and room for one record of any size.
pub const SEGMENT_BYTES_MIN: u64 = SEGMENT_HEADER_BYTES + RECORD_BYTES_MAX as u64;

const MAGIC: [u8; 8] = *b"TDXJRNL\0";

/// Bytes of the header that are not zero padding.
const HEADER_USED_BYTES: usize = 92;

/// Zeros written per call while pre-allocating.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

/// What a segment's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The shard whose records it holds.
    pub identity: ShardIdentity,
    /// Its number.
    pub number: u64,
    /// The configuration its records are applied with.
    pub config: ShardConfig,
}

impl SegmentHeader {
    fn encode(&self) -> [u8; HEADER_USED_BYTES] {
        let mut h = [0u8; HEADER_USED_BYTES];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
        h[16..20].copy_from_slice(&self.identity.shard_index.to_le_bytes());
        h[20..24].copy_from_slice(&self.identity.shard_count.to_le_bytes());
        h[24..28].copy_from_slice(&self.identity.symbol_count.to_le_bytes());
        h[32..40].copy_from_slice(&self.number.to_le_bytes());
        let c = &self.config;
        h[40..44].copy_from_slice(&c.orders_max.to_le_bytes());
        h[44..48].copy_from_slice(&c.levels_per_side_max.to_le_bytes());
        h[48..56].copy_from_slice(&c.quantity_max.to_le_bytes());
        h[56..64].copy_from_slice(&c.price_max.to_le_bytes());
        h[64..72].copy_from_slice(&c.market_band_ticks.to_le_bytes());
        h[72..76].copy_from_slice(&c.history_max.to_le_bytes());
        let crc = crc32c::crc32c(&h[..76]);
        h[76..80].copy_from_slice(&crc.to_le_bytes());
        h[80..84].copy_from_slice(&c.account_orders_max.to_le_bytes());
        h[84..88].copy_from_slice(&c.account_symbol_orders_max.to_le_bytes());
        let crc = crc32c::crc32c(&h[..88]);
        h[88..92].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Parses a header; the error says what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, String> {
        if bytes.len() < HEADER_USED_BYTES {
            return Err(format!(
                "file is {} bytes, shorter than a segment header",
                bytes.len()
            ));
        }
        let h = &bytes[..HEADER_USED_BYTES];
        if h[0..8] != MAGIC {
            return Err("not a turbo-dex journal segment (bad magic)".into());
        }
        let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let u64_at = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&h[at..at + 8]);
            u64::from_le_bytes(a)
        };
        let stored = u32_at(76);
        let computed = crc32c::crc32c(&h[..76]);
        if stored != computed {
            return Err(format!(
                "header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ));
        }
        let caps = if h[80..92].iter().all(|&b| b == 0) {
            (u32::MAX, u32::MAX)
        } else {
            let (stored, computed) = (u32_at(88), crc32c::crc32c(&h[..88]));
            if stored != computed {
                return Err(format!(
                    "header checksum of the account caps mismatch (stored {stored:#010x}, \
                     computed {computed:#010x})"
                ));
            }
            (u32_at(80), u32_at(84))
        };
        let version = u32_at(8);
        if version != SEGMENT_FORMAT_VERSION {
            return Err(format!(
                "segment format version {version}, but this build reads version \
                 {SEGMENT_FORMAT_VERSION}"
            ));
        }
        if u64::from(u32_at(12)) != SEGMENT_HEADER_BYTES {
            return Err(format!(
                "header size {} (this build writes {SEGMENT_HEADER_BYTES})",
                u32_at(12)
            ));
        }
        Ok(SegmentHeader {
            identity: ShardIdentity {
                shard_index: u32_at(16),
                shard_count: u32_at(20),
                symbol_count: u32_at(24),
            },
            number: u64_at(32),
            config: ShardConfig {
                orders_max: u32_at(40),
                levels_per_side_max: u32_at(44),
                quantity_max: u64_at(48),
                price_max: u64_at(56) as i64,
                market_band_ticks: u64_at(64) as i64,
                history_max: u32_at(72),
                account_orders_max: caps.0,
                account_symbol_orders_max: caps.1,
            },
        })
    }
}

/// The file name of segment `number`.
pub fn segment_file_name(number: u64) -> String {
    format!("{number:020}.seg")
}

/// The number in a segment's file name.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// An open segment and where the next write goes. The runtime writes the
/// bytes of a batch (whole records) at [`Self::offset`] of [`Self::fd`]
/// when they fit in [`Self::room`], and calls [`Self::advance`] once the
/// write completed; when they do not fit it moves on to the next segment
/// (the rest of this one stays zero, which reads as its end).
#[derive(Debug)]
pub struct Segment {
    file: File,
    path: PathBuf,
    number: u64,
    offset: u64,
    capacity: u64,
    /// A second descriptor opened with `O_DIRECT`, when direct writes are
    /// in use (see [`Segment::open_direct`]).
    direct: Option<File>,
}

impl Segment {
    /// Opens a second descriptor on the segment for direct writes
    /// (`O_DIRECT`: no copy into the page cache, and no write-back for
    /// fdatasync to wait for). Writes through it must start and end on
    /// [`DIRECT_ALIGN`] boundaries from an aligned buffer. Fails when the
    /// file system does not support it or the segment's size is not a
    /// multiple of [`DIRECT_ALIGN`]; the segment then stays buffered.
    pub fn open_direct(&mut self) -> io::Result<()> {
        if !self.capacity.is_multiple_of(DIRECT_ALIGN as u64) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "segment size {} is not a multiple of {DIRECT_ALIGN}",
                    self.capacity
                ),
            ));
        }
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&self.path)?;
        self.direct = Some(file);
        Ok(())
    }

    /// Goes back to buffered writes.
    pub fn close_direct(&mut self) {
        self.direct = None;
    }

    /// True when writes go through the `O_DIRECT` descriptor.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The descriptor writes go through: the direct one when open.
    pub fn write_fd(&self) -> RawFd {
        self.direct.as_ref().unwrap_or(&self.file).as_raw_fd()
    }

    /// Writes `bytes` at `offset` through the write descriptor, blocking
    /// (the server submits the same write to io_uring instead).
    pub fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        self.direct
            .as_ref()
            .unwrap_or(&self.file)
            .write_all_at(bytes, offset)
    }

    /// Reads the bytes from the last [`DIRECT_ALIGN`] boundary up to the
    /// append offset into `out`: what a direct write must write again,
    /// unchanged, before its new records.
    pub fn read_partial_block(&self, out: &mut Vec<u8>) -> io::Result<()> {
        let from = self.offset - self.offset % DIRECT_ALIGN as u64;
        out.clear();
        out.resize((self.offset - from) as usize, 0);
        self.file.read_exact_at(out, from)
    }

    /// The file descriptor to write to (owned by this `Segment`).
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The file offset of the next write.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes left for records.
    pub fn room(&self) -> u64 {
        self.capacity - self.offset
    }

    /// True when `bytes` more fit.
    pub fn fits(&self, bytes: usize) -> bool {
        bytes as u64 <= self.room()
    }

    /// Records that `bytes` were written at [`Self::offset`]. More than
    /// [`Self::room`] is a caller bug: it is clamped (and a debug assertion).
    pub fn advance(&mut self, bytes: u64) {
        debug_assert!(bytes <= self.room(), "advance past the segment's end");
        self.offset += bytes.min(self.room());
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its number (the next segment is `number + 1`).
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The file's size.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Writes `bytes` at the offset and advances (blocking). For tests,
    /// tools and a runtime without io_uring; not durable until
    /// [`Self::sync_data`].
    pub fn append_blocking(&mut self, bytes: &[u8]) -> io::Result<()> {
        if !self.fits(bytes.len()) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "{} bytes do not fit in the {} bytes left in segment {}",
                    bytes.len(),
                    self.room(),
                    self.path.display()
                ),
            ));
        }
        self.file.write_all_at(bytes, self.offset)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// `fdatasync`: makes the records written so far durable.
    pub fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Opens an existing segment to append at `offset`.
    pub(crate) fn open_at(path: &Path, number: u64, offset: u64) -> io::Result<Segment> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let capacity = file.metadata()?.len();
        Ok(Segment {
            file,
            path: path.to_path_buf(),
            number,
            offset: offset.min(capacity),
            capacity,
            direct: None,
        })
    }
}

/// Creates segment `number` of a shard, `bytes` long (blocking: meant for
/// a background thread, ahead of need): allocated and zero-filled, header
/// written, file and directory fsynced. Fails if that segment exists.
/// `config` is the shard configuration its records will be applied with.
pub fn create_segment(
    dir: &Path,
    id: &ShardIdentity,
    config: &ShardConfig,
    number: u64,
    bytes: u64,
) -> io::Result<Segment> {
    if bytes < SEGMENT_BYTES_MIN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("segment size {bytes} is below the minimum {SEGMENT_BYTES_MIN} bytes"),
        ));
    }
    let shard_dir = shard_dir(dir, id.shard_index);
    std::fs::create_dir_all(&shard_dir)?;
    let path = shard_dir.join(segment_file_name(number));
    if path.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("segment {} already exists", path.display()),
        ));
    }
    let temp = shard_dir.join(format!("{}.tmp", segment_file_name(number)));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)?;
    let result = (|| {
        preallocate(&file, &temp, bytes)?;
        let header = SegmentHeader {
            identity: *id,
            number,
            config: *config,
        };
        file.write_all_at(&header.encode(), 0)?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)?;
        fsync_dir(&shard_dir)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    Ok(Segment {
        file,
        path,
        number,
        offset: SEGMENT_HEADER_BYTES,
        capacity: bytes,
        direct: None,
    })
}

/// Reserves `bytes` for the file and writes zeros over them (see the module
/// docs for why both). The zeros go through a direct (`O_DIRECT`) descriptor
/// where the file system allows it: on this project's VM buffered zero fill
/// ran at about 190 MB/s and, at 2M journaled orders/s, competed with the
/// journal's own writes for the disk; direct writes ran at 0.8-1 GB/s.
fn preallocate(file: &File, path: &Path, bytes: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment size too large"))?;
    // SAFETY: fallocate only reads its integer arguments; the descriptor
    // is open for writing and owned by `file` for the whole call.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        // Filesystems without fallocate get the zero fill below, which
        // allocates the blocks just the same.
        if !matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
        ) {
            return Err(e);
        }
    }
    let mut direct = if bytes.is_multiple_of(DIRECT_ALIGN as u64) {
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()
    } else {
        None
    };
    // One aligned chunk of zeros (direct writes need an aligned buffer).
    let zeros = vec![0u8; ZERO_CHUNK_BYTES + DIRECT_ALIGN];
    let lead = zeros.as_ptr().align_offset(DIRECT_ALIGN);
    let chunk = &zeros[lead..lead + ZERO_CHUNK_BYTES];
    let mut at = 0u64;
    while at < bytes {
        // Whole multiples of DIRECT_ALIGN when direct: `bytes` is one.
        let n = (bytes - at).min(ZERO_CHUNK_BYTES as u64) as usize;
        match direct.as_ref().map(|d| d.write_all_at(&chunk[..n], at)) {
            Some(Ok(())) => {}
            Some(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                // Alignment refused: finish through the page cache.
                direct = None;
                continue;
            }
            Some(Err(e)) => return Err(e),
            None => file.write_all_at(&chunk[..n], at)?,
        }
        at += n as u64;
    }
    Ok(())
}

/// What the start of a segment file says: its header, and the sequence
/// number of its first record (`Ok(None)`: no records; `Err`: the first
/// record is unreadable).
#[derive(Debug)]
pub(crate) struct SegmentProbe {
    pub(crate) header: SegmentHeader,
    pub(crate) first_seq: Result<Option<u64>, super::RecordError>,
}

/// Reads a segment's header and first record.
pub(crate) fn probe_segment(path: &Path) -> io::Result<Result<SegmentProbe, String>> {
    let file = File::open(path)?;
    let mut buf = vec![0u8; SEGMENT_HEADER_BYTES as usize + RECORD_BYTES_MAX];
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read_at(&mut buf[filled..], filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    let buf = &buf[..filled];
    let header = match SegmentHeader::decode(buf) {
        Ok(h) => h,
        Err(problem) => return Ok(Err(problem)),
    };
    let records = buf.get(SEGMENT_HEADER_BYTES as usize..).unwrap_or(&[]);
    // The probe read a whole record's worth, so only a file shorter than
    // that can cut the first record short.
    let first_seq = decode_record(records).map(|r| r.map(|(r, _)| r.seq));
    Ok(Ok(SegmentProbe { header, first_seq }))
}
