//! io_uring operations of a core: the typed `user_data` word, and every
//! submission, each next to the reason why the memory it hands the kernel
//! outlives the operation.
//!
//! This file and `../uring.rs` hold all of the server's `unsafe` code.
//!
//! The buffers the kernel reads or writes, and who keeps them alive:
//!
//! | operation | memory | kept alive by |
//! |---|---|---|
//! | accept | none | |
//! | wake read | the 8-byte buffer owned by [`Ops`] | [`Ops`] drops its ring before the buffer (field order) |
//! | recv | the provided-buffer ring ([`BufRing`]) | the core drops [`Ops`] (the ring) before the `BufRing` (field order) |
//! | send | [`Conn::sending`] | the connection: it is freed only when no operation is in flight (`Slab::remove` asserts it) and `sending` is only touched while no send is in flight |
//! | journal write | the shard log's write buffer | [`ShardLog`]: rewritten only when no write is in flight (`begin_write` asserts it); the core leaves its loop only when no journal write is in flight |
//! | cancel, fsync | none | |

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use io_uring::{IoUring, opcode, squeue, types};

use super::super::durable::ShardLog;
use super::super::uring::BufRing;
use super::conn::Conn;
use crate::session_id::{GENERATION_BITS, SLOT_BITS};

/// What a submission was, recovered from its completion's `user_data`.
///
/// Layout: kind (8 bits) | generation (24) | index (32): the index is a
/// connection slot or a local shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// The listener's multishot accept.
    Accept,
    /// The cancel of the accept (at shutdown).
    CancelAccept,
    /// The wake eventfd's read.
    Wake,
    /// A connection's multishot recv.
    Recv { slot: u32, generation: u32 },
    /// A connection's send.
    Send { slot: u32, generation: u32 },
    /// The cancel of a connection's recv.
    CancelRecv { slot: u32, generation: u32 },
    /// A local shard's journal write.
    JournalWrite { shard: u32 },
    /// Its linked fdatasync.
    JournalSync { shard: u32 },
}

const KIND_SHIFT: u32 = 56;
const GENERATION_SHIFT: u32 = 32;
const FIELD_MASK: u64 = (1 << (KIND_SHIFT - GENERATION_SHIFT)) - 1;

// The session id's generation and slot must fit the user_data fields.
const _: () = assert!(GENERATION_BITS <= KIND_SHIFT - GENERATION_SHIFT);
const _: () = assert!(SLOT_BITS <= GENERATION_SHIFT);

const KIND_ACCEPT: u64 = 1;
const KIND_CANCEL_ACCEPT: u64 = 2;
const KIND_WAKE: u64 = 3;
const KIND_RECV: u64 = 4;
const KIND_SEND: u64 = 5;
const KIND_CANCEL_RECV: u64 = 6;
const KIND_JOURNAL_WRITE: u64 = 7;
const KIND_JOURNAL_SYNC: u64 = 8;

impl Op {
    /// The `user_data` word for this operation.
    pub fn user_data(self) -> u64 {
        let (kind, generation, index) = match self {
            Op::Accept => (KIND_ACCEPT, 0, 0),
            Op::CancelAccept => (KIND_CANCEL_ACCEPT, 0, 0),
            Op::Wake => (KIND_WAKE, 0, 0),
            Op::Recv { slot, generation } => (KIND_RECV, generation, slot),
            Op::Send { slot, generation } => (KIND_SEND, generation, slot),
            Op::CancelRecv { slot, generation } => (KIND_CANCEL_RECV, generation, slot),
            Op::JournalWrite { shard } => (KIND_JOURNAL_WRITE, 0, shard),
            Op::JournalSync { shard } => (KIND_JOURNAL_SYNC, 0, shard),
        };
        debug_assert!(u64::from(generation) <= FIELD_MASK);
        (kind << KIND_SHIFT)
            | ((u64::from(generation) & FIELD_MASK) << GENERATION_SHIFT)
            | u64::from(index)
    }

    /// The operation a completion's `user_data` names; `None` for a word
    /// this core never submitted (a bug: callers count and log it).
    pub fn from_user_data(ud: u64) -> Option<Op> {
        let generation = ((ud >> GENERATION_SHIFT) & FIELD_MASK) as u32;
        let index = ud as u32;
        let slot = index;
        Some(match ud >> KIND_SHIFT {
            KIND_ACCEPT => Op::Accept,
            KIND_CANCEL_ACCEPT => Op::CancelAccept,
            KIND_WAKE => Op::Wake,
            KIND_RECV => Op::Recv { slot, generation },
            KIND_SEND => Op::Send { slot, generation },
            KIND_CANCEL_RECV => Op::CancelRecv { slot, generation },
            KIND_JOURNAL_WRITE => Op::JournalWrite { shard: index },
            KIND_JOURNAL_SYNC => Op::JournalSync { shard: index },
            _ => return None,
        })
    }
}

/// A core's io_uring and the memory only it lends the kernel.
pub struct Ops {
    // Field order is drop order: the ring closes before the wake buffer goes.
    ring: IoUring,
    wake_buf: Box<[u8; 8]>,
    core: usize,
}

impl Ops {
    /// Wraps a ring made on the core's own thread.
    pub fn new(ring: IoUring, core: usize) -> Ops {
        Ops {
            ring,
            wake_buf: Box::new([0; 8]),
            core,
        }
    }

    /// Queues one submission, handing the queue to the kernel when full.
    ///
    /// # Safety
    ///
    /// Every buffer `entry` points at must stay allocated, and must be
    /// neither moved nor written (nor read, for a read into it) by us,
    /// until the operation's last completion has been reaped.
    unsafe fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: the caller's contract covers the entry's buffers.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return;
            }
            // The submission queue is full: hand it to the kernel and retry.
            if let Err(e) = self.ring.submit()
                && e.raw_os_error() != Some(libc::EBUSY)
            {
                tracing::error!("core {}: io_uring submit failed: {e}", self.core);
            }
        }
    }

    /// Multishot accept on `listener`.
    pub fn accept(&mut self, listener: RawFd) {
        let e = opcode::AcceptMulti::new(types::Fd(listener))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(Op::Accept.user_data());
        // SAFETY: an accept reads and writes no memory of ours.
        unsafe { self.push(&e) };
    }

    /// Cancels the multishot accept.
    pub fn cancel_accept(&mut self) {
        let e = opcode::AsyncCancel::new(Op::Accept.user_data())
            .build()
            .user_data(Op::CancelAccept.user_data());
        // SAFETY: a cancel names an operation by its user_data; no memory.
        unsafe { self.push(&e) };
    }

    /// Reads the wake eventfd into the buffer this struct owns.
    pub fn read_wake(&mut self, eventfd: RawFd) {
        let e = opcode::Read::new(types::Fd(eventfd), self.wake_buf.as_mut_ptr(), 8)
            .build()
            .user_data(Op::Wake.user_data());
        // SAFETY: `wake_buf` is owned by self, never touched by us, and
        // outlives the ring (field order).
        unsafe { self.push(&e) };
    }

    /// Multishot recv for a connection into the buffer ring `bufs`.
    pub fn recv(&mut self, conn: &Conn, slot: u32, bufs: &BufRing) {
        let op = Op::Recv {
            slot,
            generation: conn.generation,
        };
        let e = opcode::RecvMulti::new(types::Fd(conn.raw_fd()), bufs.group())
            .build()
            .user_data(op.user_data());
        // SAFETY: the kernel writes only into the provided buffers of `bufs`,
        // which the core drops after this ring (field order in `Core`).
        unsafe { self.push(&e) };
    }

    /// Cancels a connection's recv.
    pub fn cancel_recv(&mut self, slot: u32, generation: u32) {
        let target = Op::Recv { slot, generation }.user_data();
        let e = opcode::AsyncCancel::new(target)
            .build()
            .user_data(Op::CancelRecv { slot, generation }.user_data());
        // SAFETY: a cancel names an operation by its user_data; no memory.
        unsafe { self.push(&e) };
    }

    /// Sends up to `chunk` bytes of the connection's `sending` buffer from
    /// `send_pos` and marks the send in flight.
    pub fn send(&mut self, conn: &mut Conn, slot: u32, chunk: usize) {
        debug_assert!(!conn.send_inflight, "one send in flight per connection");
        let bytes = &conn.sending[conn.send_pos..];
        let len = bytes.len().min(chunk) as u32;
        let e = opcode::Send::new(types::Fd(conn.raw_fd()), bytes.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(
                Op::Send {
                    slot,
                    generation: conn.generation,
                }
                .user_data(),
            );
        conn.send_inflight = true;
        // SAFETY: `sending` is neither written nor reallocated while
        // `send_inflight` is set (only the send completion clears it), and
        // the slab frees a connection only when no operation is in flight.
        unsafe { self.push(&e) };
    }

    /// Writes the log's batch bytes at their offset; with `sync`, a linked
    /// fdatasync follows and completes the batch.
    pub fn journal_write(&mut self, log: &ShardLog, shard: u32, sync: bool) {
        let (bytes, offset) = log.write_bytes();
        let fd = types::Fd(log.segment.write_fd());
        let write = opcode::Write::new(fd, bytes.as_ptr(), bytes.len() as u32)
            .offset(offset)
            .build()
            .user_data(Op::JournalWrite { shard }.user_data());
        debug_assert!(
            log.inflight.is_some(),
            "a write is pushed with its batch in flight"
        );
        if sync {
            // SAFETY: the log keeps the bytes unchanged while its batch is in
            // flight (`begin_write` asserts none is), and the core keeps its
            // logs until no journal write is in flight.
            unsafe { self.push(&write.flags(squeue::Flags::IO_LINK)) };
            let sync = opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(Op::JournalSync { shard }.user_data());
            // SAFETY: an fsync reads and writes no memory of ours.
            unsafe { self.push(&sync) };
        } else {
            // SAFETY: as above: the bytes stay put while the batch is in flight.
            unsafe { self.push(&write) };
        }
    }

    /// Moves every completion into `out` as (operation, result, flags).
    /// Words this core never submitted are counted in `unknown` (and
    /// asserted against in debug builds).
    pub fn reap(&mut self, out: &mut Vec<(Op, i32, u32)>, unknown: &mut u64) {
        out.clear();
        for cqe in self.ring.completion() {
            match Op::from_user_data(cqe.user_data()) {
                Some(op) => out.push((op, cqe.result(), cqe.flags())),
                None => {
                    debug_assert!(
                        false,
                        "a completion with unknown user_data {:#x}",
                        cqe.user_data()
                    );
                    *unknown += 1;
                }
            }
        }
    }

    /// Submits what is queued without waiting.
    pub fn submit(&mut self) -> io::Result<usize> {
        self.ring.submit()
    }

    /// Submits and waits for one completion or `timeout_ns`.
    pub fn submit_and_wait(&mut self, timeout_ns: u64) -> io::Result<usize> {
        let ts = types::Timespec::new().nsec(timeout_ns as u32);
        let args = types::SubmitArgs::new().timespec(&ts);
        self.ring.submitter().submit_with_args(1, &args)
    }
}

/// Takes ownership of the socket a successful accept returned.
pub fn accepted_socket(res: i32) -> Option<std::net::TcpStream> {
    if res < 0 {
        return None;
    }
    // SAFETY: a successful accept completion's result is a new descriptor
    // that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(res) };
    Some(std::net::TcpStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips_every_operation() {
        let ops = [
            Op::Accept,
            Op::CancelAccept,
            Op::Wake,
            Op::Recv {
                slot: (1 << SLOT_BITS) - 1,
                generation: (1 << GENERATION_BITS) - 1,
            },
            Op::Send {
                slot: 3,
                generation: 9,
            },
            Op::CancelRecv {
                slot: 0,
                generation: 1,
            },
            Op::JournalWrite { shard: u32::MAX },
            Op::JournalSync { shard: 7 },
        ];
        for op in ops {
            assert_eq!(Op::from_user_data(op.user_data()), Some(op), "{op:?}");
        }
    }

    #[test]
    fn unknown_words_are_refused() {
        assert_eq!(Op::from_user_data(0), None);
        assert_eq!(Op::from_user_data(0xff << KIND_SHIFT), None);
    }
}
