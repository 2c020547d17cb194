//! One engine core: a pinned thread with its own io_uring, listener,
//! connections and shards, joined to every other core by SPSC rings.
//!
//! An iteration of the loop: reap every completion (accepts, received
//! bytes, finished sends), decode and route what arrived, drain the rings
//! from other cores, flush what this core staged for them, start one send
//! per connection with output, publish counters, then wait (or not,
//! depending on `--poll`) in one `io_uring_enter`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use rtrb::{Consumer, Producer};
use wire::{
    Decoded, Decoder, Frame, FrameBuf, HelloAck, Kind, Message, PROTOCOL_VERSION, RejectReason,
    Rejected, ServerHeartbeat, SessionError, SessionErrorCode, SymbolEntry,
};

use super::conn::{Conn, Phase, Slab, make_session, session_slot};
use super::durable::{
    Done, Inflight, Job, SEGMENT_RETRY_NS, ShardLog, Snapshot, reject_not_durable,
};
use super::stats::Counters;
use super::uring::{BufRing, new_ring};
use super::{PollMode, Shared, monotonic_ns, realtime_ns};
use crate::book::{Command, Matcher, Op, Report, SessionId, Sink, session_core};
use crate::journal;

/// A message on a ring between two cores.
#[derive(Clone, Copy, Debug)]
pub enum Msg {
    /// A command for the target core's local shard `shard`.
    Cmd { shard: u32, cmd: Command },
    /// A report for a session the target core owns.
    Report { session: SessionId, report: Report },
}

/// The rings of one core: to and from every other core (`None` for itself).
pub struct Mesh {
    pub to: Vec<Option<Producer<Msg>>>,
    pub from: Vec<Option<Consumer<Msg>>>,
}

/// Static configuration a core needs.
pub struct CoreConfig {
    pub index: usize,
    pub cpu: Option<usize>,
    pub ncores: usize,
    pub shard_count: u32,
    pub symbol_count: u32,
    pub batch: usize,
    pub poll: PollMode,
    pub max_connections: usize,
    pub max_frame_bytes: u32,
    pub heartbeat_ms: u32,
    pub idle_timeout_factor: u32,
    pub slow_consumer_ms: u64,
    pub out_high_water_bytes: usize,
    pub out_max_bytes: usize,
    pub send_chunk_bytes: usize,
    pub recv_buffers: u16,
    pub recv_buffer_bytes: usize,
    pub ring_capacity: usize,
    pub auth_token: Option<Vec<u8>>,
    pub directory: Arc<[SymbolEntry]>,
    /// Per symbol: owning core index << 32 | shard index on that core.
    pub placement: Arc<[u64]>,
    /// fdatasync each journal write (`--fsync batch`); only used with a journal.
    pub journal_fsync: bool,
    /// Records between snapshots of a shard.
    pub snapshot_every_records: u64,
}

/// Durability of a core's shards: their journals and the channels to the
/// background thread (see [`super::durable`]).
pub struct CoreJournal {
    pub logs: Vec<ShardLog>,
    pub jobs: Sender<Job>,
    pub done: Receiver<Done>,
}

const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
const OP_CANCEL: u64 = 4;
const OP_WAKE: u64 = 5;
const OP_JOURNAL_WRITE: u64 = 6;
const OP_JOURNAL_SYNC: u64 = 7;

#[inline]
fn user_data(op: u64, slot: u32, generation: u32) -> u64 {
    (op << 56) | (u64::from(generation & 0xff_ffff) << 32) | u64::from(slot)
}

#[inline]
fn split_user_data(ud: u64) -> (u64, u32, u32) {
    (ud >> 56, (ud as u32), ((ud >> 32) as u32) & 0xff_ffff)
}

/// How often housekeeping (idle timeouts, heartbeats, slow consumers) runs,
/// and the longest a blocked wait lasts.
const TICK_NS: u64 = 50_000_000;
/// Most commands a shard's queue holds while its journal write is in
/// flight; beyond it the core stops reading connections (backpressure).
const PENDING_JOURNAL_MAX: usize = 1 << 16;
/// Iterations without work before `--poll adaptive` goes to sleep.
const ADAPTIVE_SPINS: u32 = 2_000;
/// How long a closing connection may take to flush before it is cut.
const CLOSE_FLUSH_NS: u64 = 2_000_000_000;

/// Everything of a core except the io_uring, so that data borrowed from the
/// buffer ring can be processed while this is mutably borrowed.
struct State<M> {
    cfg: CoreConfig,
    shared: Arc<Shared>,
    shards: Vec<M>,
    /// Commands for each local shard, applied in one `process_batch` per
    /// shard (the book prefetches a few commands ahead); in arrival order.
    /// With a journal they wait here until `journal_submit` writes them.
    pending: Vec<Vec<Command>>,
    /// One journal per local shard; empty when there is no journal.
    logs: Vec<ShardLog>,
    router: Router,
    decoder: Decoder,
    /// Connections with output to send this iteration.
    dirty: Vec<u32>,
    /// Connections whose input processing is held back.
    blocked: Vec<u32>,
    /// Connections to start closing this iteration.
    to_close: Vec<u32>,
    /// Monotonic time of this iteration (intervals, timeouts).
    now_ns: u64,
    /// Wall-clock time of this iteration: the engine time given to shards.
    engine_ns: u64,
    draining: bool,
}

/// Delivers reports: into local connections' output, or staged for the
/// core that owns the session. Implements the shards' [`Sink`].
struct Router {
    core: usize,
    conns: Slab,
    staging: Vec<Vec<Msg>>,
    staging_limit: usize,
    congested: bool,
    newly_dirty: Vec<u32>,
    counters: Counters,
}

impl Router {
    #[inline]
    fn deliver_local(&mut self, session: SessionId, report: &Report) {
        let Some(conn) = self.conns.by_session(session) else {
            self.counters.reports_orphaned += 1;
            return;
        };
        push_report(&mut conn.out, report);
        self.counters.reports_out += 1;
        if !conn.dirty {
            conn.dirty = true;
            let (slot, _) = session_slot(session);
            self.newly_dirty.push(slot);
        }
    }

    #[inline]
    fn stage(&mut self, core: usize, msg: Msg) {
        let q = &mut self.staging[core];
        q.push(msg);
        if q.len() >= self.staging_limit {
            self.congested = true;
        }
    }
}

#[inline]
fn push_report(out: &mut FrameBuf, report: &Report) {
    match report {
        Report::Accepted(m) => out.push(m),
        Report::Rejected(m) => out.push(m),
        Report::Fill(m) => out.push(m),
        Report::Canceled(m) => out.push(m),
        Report::Replaced(m) => out.push(m),
        Report::Status(m) => out.push(m),
    }
}

impl Sink for Router {
    #[inline]
    fn emit(&mut self, session: SessionId, report: Report) {
        match &report {
            Report::Fill(f) if f.liquidity == wire::Liquidity::Taker.to_wire() => {
                self.counters.trades += 1
            }
            Report::Rejected(_) => self.counters.rejects += 1,
            _ => {}
        }
        let owner = session_core(session);
        if owner == self.core {
            self.deliver_local(session, &report);
        } else if owner < self.staging.len() {
            self.stage(owner, Msg::Report { session, report });
        } else {
            self.counters.reports_orphaned += 1;
        }
    }
}

/// Why a connection is being closed: the SessionError it is sent, and the
/// full explanation for the log (the message's text field holds 56 bytes).
struct CloseReason {
    msg: SessionError,
    text: String,
    log: bool,
}

impl CloseReason {
    fn new(code: SessionErrorCode, kind: u8, detail: u32, text: impl Into<String>) -> CloseReason {
        let text = text.into();
        CloseReason {
            msg: SessionError::new(code, kind, detail, &text),
            text,
            log: true,
        }
    }

    fn decode(e: &wire::DecodeError) -> CloseReason {
        CloseReason {
            msg: SessionError::from_decode_error(e),
            text: e.to_string(),
            log: true,
        }
    }

    fn code(&self) -> Option<SessionErrorCode> {
        self.msg.code().ok()
    }
}

/// What processing a connection's input ended with.
enum InputEnd {
    /// All whole frames were processed.
    Done,
    /// Backpressure: stopped before the message at `cursor` of the frame at `consumed`.
    Blocked,
    /// The stream cannot be trusted: close with this reason.
    Close(CloseReason),
}

impl<M: Matcher + Snapshot> State<M> {
    /// The core that owns `symbol` and the shard's index on that core: one
    /// load from the placement table instead of three divisions per order.
    #[inline]
    fn local_shard(&self, symbol: u32) -> (usize, u32) {
        let p = self
            .cfg
            .placement
            .get(symbol as usize)
            .copied()
            .unwrap_or(0);
        ((p >> 32) as usize, p as u32)
    }

    /// Sends a command to the shard that owns `symbol`: queued for a batch
    /// when that shard is local, else staged for its core's ring.
    #[inline]
    fn route(&mut self, symbol: u32, cmd: Command) {
        let (core, shard) = self.local_shard(symbol);
        if core == self.cfg.index {
            self.queue_local(shard as usize, cmd);
        } else {
            self.router.stage(core, Msg::Cmd { shard, cmd });
        }
    }

    #[inline]
    fn queue_local(&mut self, shard: usize, cmd: Command) {
        let journaled = !self.logs.is_empty();
        let Some(q) = self.pending.get_mut(shard) else {
            return;
        };
        q.push(cmd);
        if journaled {
            // The queue waits for the journal: past its bound, stop reading.
            if q.len() >= PENDING_JOURNAL_MAX {
                self.router.congested = true;
            }
        } else if q.len() >= self.cfg.batch {
            self.apply_shard(shard);
        }
    }

    fn apply_shard(&mut self, shard: usize) {
        if !self.logs.is_empty() {
            // Journal before apply: `journal_done` applies durable batches.
            return;
        }
        let (Some(q), Some(s)) = (self.pending.get_mut(shard), self.shards.get_mut(shard)) else {
            return;
        };
        if q.is_empty() {
            return;
        }
        s.process_batch(q, self.engine_ns, &mut self.router);
        self.router.counters.commands += q.len() as u64;
        q.clear();
    }

    /// Applies every queued local command.
    fn apply_pending(&mut self) {
        for shard in 0..self.pending.len() {
            self.apply_shard(shard);
        }
    }

    /// Cancel-on-disconnect: a CancelSession to every shard of every core.
    fn cancel_session_everywhere(&mut self, session: SessionId, account: u64) {
        let cmd = Command {
            session,
            account,
            op: Op::CancelSession,
        };
        for core in 0..self.cfg.ncores {
            let local_shards =
                (self.cfg.shard_count as usize + self.cfg.ncores - 1 - core) / self.cfg.ncores;
            for shard in 0..local_shards as u32 {
                if core == self.cfg.index {
                    self.queue_local(shard as usize, cmd);
                } else {
                    self.router.stage(core, Msg::Cmd { shard, cmd });
                }
            }
        }
    }

    /// Answers on the session's own core. Queued local commands go first,
    /// so that on one core a connection's answers keep request order.
    fn reply<T: Message>(&mut self, slot: u32, msg: &T) {
        self.apply_pending();
        if let Some(c) = self.router.conns.slot_mut(slot) {
            c.out.push(msg);
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(slot);
            }
        }
    }

    fn reject(
        &mut self,
        slot: u32,
        client_order_id: u64,
        symbol: u32,
        reason: RejectReason,
        kind: Kind,
    ) {
        self.router.counters.rejects += 1;
        self.router.counters.reports_out += 1;
        self.reply(slot, &Rejected::new(client_order_id, symbol, reason, kind));
    }

    /// Processes the whole frames of `data` for connection `slot`, starting
    /// at message `cursor` of the first frame. Returns bytes consumed, the
    /// cursor into the frame at that point, and how it ended.
    fn process_input(
        &mut self,
        slot: u32,
        data: &[u8],
        mut cursor: usize,
    ) -> (usize, usize, InputEnd) {
        let mut consumed = 0;
        loop {
            if self.router.congested {
                return (consumed, cursor, InputEnd::Blocked);
            }
            let frame = match self.decoder.decode(&data[consumed..]) {
                Ok(Decoded::NeedMore(_)) => return (consumed, cursor, InputEnd::Done),
                Ok(Decoded::Frame(f, used)) => (f, used),
                Err(e) => return (consumed, cursor, InputEnd::Close(CloseReason::decode(&e))),
            };
            let (frame, used) = frame;
            match self.process_frame(slot, frame, cursor) {
                Ok(None) => {
                    consumed += used;
                    cursor = 0;
                }
                Ok(Some(stopped_at)) => return (consumed, stopped_at, InputEnd::Blocked),
                Err(reason) => return (consumed + used, 0, InputEnd::Close(reason)),
            }
        }
    }

    /// Handles one frame from message `from` on. `Ok(Some(i))`: stopped by
    /// backpressure before message `i`.
    fn process_frame(
        &mut self,
        slot: u32,
        frame: Frame<'_>,
        from: usize,
    ) -> Result<Option<usize>, CloseReason> {
        let Some(conn) = self.router.conns.slot_mut(slot) else {
            return Ok(None);
        };
        let (phase, session, account) = (conn.phase, conn.session, conn.account);
        if phase == Phase::Closing {
            return Ok(None);
        }
        if let Frame::Hello(h) = frame {
            if phase != Phase::AwaitHello {
                return Err(CloseReason::new(
                    SessionErrorCode::DuplicateHello,
                    Kind::Hello as u8,
                    0,
                    "a session sends exactly one Hello",
                ));
            }
            return self.hello(slot, &h[0]).map(|()| None);
        }
        if phase != Phase::Active {
            return Err(CloseReason::new(
                SessionErrorCode::NotLoggedIn,
                frame.kind() as u8,
                0,
                "the first frame of a connection must be a Hello",
            ));
        }
        let symbols = self.cfg.symbol_count;
        macro_rules! each {
            ($msgs:expr, |$m:ident, $i:ident| $body:block) => {{
                for ($i, $m) in $msgs.iter().enumerate().skip(from) {
                    if self.router.congested {
                        return Ok(Some($i));
                    }
                    $body
                }
            }};
        }
        match frame {
            Frame::NewOrder(orders) => each!(orders, |o, _i| {
                self.router.counters.orders_in += 1;
                let symbol = o.symbol.get();
                let Some(conn) = self.router.conns.slot_mut(slot) else {
                    return Ok(None);
                };
                if let Err(r) = conn.client_order_ids.check(o) {
                    self.router.counters.rejects += 1;
                    self.router.counters.reports_out += 1;
                    self.reply(slot, &r);
                } else if symbol >= symbols {
                    self.reject(
                        slot,
                        o.client_order_id.get(),
                        symbol,
                        RejectReason::UnknownSymbol,
                        Kind::NewOrder,
                    );
                } else {
                    self.route(
                        symbol,
                        Command {
                            session,
                            account,
                            op: Op::New(*o),
                        },
                    );
                }
            }),
            Frame::Cancel(cancels) => each!(cancels, |c, _i| {
                self.router.counters.orders_in += 1;
                let symbol = c.symbol.get();
                if symbol >= symbols {
                    self.reject(
                        slot,
                        c.client_order_id.get(),
                        symbol,
                        RejectReason::UnknownSymbol,
                        Kind::Cancel,
                    );
                } else {
                    self.route(
                        symbol,
                        Command {
                            session,
                            account,
                            op: Op::Cancel(*c),
                        },
                    );
                }
            }),
            Frame::Replace(replaces) => each!(replaces, |r, _i| {
                self.router.counters.orders_in += 1;
                let symbol = r.symbol.get();
                if symbol >= symbols {
                    self.reject(
                        slot,
                        r.client_order_id.get(),
                        symbol,
                        RejectReason::UnknownSymbol,
                        Kind::Replace,
                    );
                } else {
                    self.route(
                        symbol,
                        Command {
                            session,
                            account,
                            op: Op::Replace(*r),
                        },
                    );
                }
            }),
            Frame::OrderQuery(queries) => each!(queries, |q, _i| {
                let symbol = q.symbol.get();
                if symbol >= symbols {
                    self.reject(
                        slot,
                        q.client_order_id.get(),
                        symbol,
                        RejectReason::UnknownSymbol,
                        Kind::OrderQuery,
                    );
                } else {
                    self.route(
                        symbol,
                        Command {
                            session,
                            account,
                            op: Op::Query(*q),
                        },
                    );
                }
            }),
            Frame::Heartbeat(beats) => {
                for b in beats.iter().skip(from) {
                    self.reply(slot, &ServerHeartbeat { token: b.token });
                }
            }
            Frame::Subscribe(subs) => {
                for s in subs.iter().skip(from) {
                    self.reject(
                        slot,
                        0,
                        s.symbol.get(),
                        RejectReason::NotSupported,
                        Kind::Subscribe,
                    );
                }
            }
            // The server decoder refuses client-bound kinds before this.
            other => {
                return Err(CloseReason::new(
                    SessionErrorCode::UnknownKind,
                    other.kind() as u8,
                    0,
                    "a server-to-client message kind was sent to the server",
                ));
            }
        }
        Ok(None)
    }

    fn hello(&mut self, slot: u32, h: &wire::Hello) -> Result<(), CloseReason> {
        let version = h.protocol_version.get();
        if version != u16::from(PROTOCOL_VERSION) {
            return Err(CloseReason::new(
                SessionErrorCode::UnsupportedVersion,
                Kind::Hello as u8,
                u32::from(version),
                format!(
                    "protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"
                ),
            ));
        }
        if let Err(e) = h.validate() {
            return Err(CloseReason::new(
                SessionErrorCode::InvalidField,
                Kind::Hello as u8,
                0,
                e.to_string(),
            ));
        }
        if let Some(token) = &self.cfg.auth_token
            && h.credentials() != token.as_slice()
        {
            return Err(CloseReason::new(
                SessionErrorCode::AuthenticationFailed,
                Kind::Hello as u8,
                0,
                "the credentials were refused",
            ));
        }
        let heartbeat_ms = match h.heartbeat_interval_ms.get() {
            0 => self.cfg.heartbeat_ms,
            ms => ms.clamp(100, 60_000),
        };
        let core = self.cfg.index as u16;
        let Some(conn) = self.router.conns.slot_mut(slot) else {
            return Ok(());
        };
        conn.session = make_session(core, slot, conn.generation);
        conn.account = h.account.get();
        conn.cancel_on_disconnect = h.cancel_on_disconnect();
        conn.heartbeat_ms = heartbeat_ms;
        conn.phase = Phase::Active;
        let ack = HelloAck {
            session_id: conn.session.into(),
            protocol_version: u16::from(PROTOCOL_VERSION).into(),
            flags: h.flags,
            heartbeat_interval_ms: heartbeat_ms.into(),
            symbol_count: (self.cfg.directory.len() as u32).into(),
            max_frame_bytes: self.cfg.max_frame_bytes.into(),
        };
        self.reply(slot, &ack);
        let directory = Arc::clone(&self.cfg.directory);
        for entry in directory.iter() {
            self.reply(slot, entry);
        }
        Ok(())
    }

    /// Takes a message popped from another core's ring.
    #[inline]
    fn apply(&mut self, msg: &Msg) {
        match msg {
            Msg::Cmd { shard, cmd } => self.queue_local(*shard as usize, *cmd),
            Msg::Report { session, report } => self.router.deliver_local(*session, report),
        }
    }
}

/// A core: its ring and buffers, and the state they feed.
pub struct Core<M> {
    // Field order is drop order: the ring goes before the buffer ring's memory.
    ring: IoUring,
    bufring: BufRing,
    listener: Option<OwnedFd>,
    wake_fd: RawFd,
    wake_buf: Box<[u8; 8]>,
    mesh: Mesh,
    st: State<M>,
    cqes: Vec<(u64, i32, u32)>,
    accept_armed: bool,
    wake_armed: bool,
    idle_spins: u32,
    next_tick_ns: u64,
    /// To the journal's background thread, and its answers.
    jobs: Option<Sender<Job>>,
    done: Option<Receiver<Done>>,
}

/// The result of a core's run.
pub struct CoreExit {
    pub counters: Counters,
}

impl<M: Matcher + Snapshot> Core<M> {
    /// Builds the core on its own thread (io_uring SINGLE_ISSUER wants the
    /// creating thread to be the submitting one).
    pub fn new(
        cfg: CoreConfig,
        shared: Arc<Shared>,
        listener: OwnedFd,
        mesh: Mesh,
        shards: Vec<M>,
        journal: Option<CoreJournal>,
    ) -> io::Result<Core<M>> {
        let sq_entries = 4096;
        let (ring, _mode) = new_ring(sq_entries, sq_entries * 4)?;
        let bufring = BufRing::new(&ring, cfg.recv_buffers, cfg.recv_buffer_bytes, 0)?;
        let wake_fd = shared.wake_fds[cfg.index];
        let ncores = cfg.ncores;
        let staging_limit = cfg.ring_capacity.max(cfg.batch);
        let batch = cfg.batch;
        let max_frame = cfg.max_frame_bytes;
        let (logs, jobs, done) = match journal {
            Some(j) => (j.logs, Some(j.jobs), Some(j.done)),
            None => (Vec::new(), None, None),
        };
        Ok(Core {
            jobs,
            done,
            ring,
            bufring,
            listener: Some(listener),
            wake_fd,
            wake_buf: Box::new([0; 8]),
            mesh,
            cqes: Vec::with_capacity(sq_entries as usize * 4),
            accept_armed: false,
            wake_armed: false,
            idle_spins: 0,
            next_tick_ns: 0,
            st: State {
                decoder: Decoder::for_server(max_frame),
                router: Router {
                    core: cfg.index,
                    conns: Slab::with_capacity(64),
                    staging: (0..ncores)
                        .map(|_| Vec::with_capacity(staging_limit * 2))
                        .collect(),
                    staging_limit,
                    congested: false,
                    newly_dirty: Vec::with_capacity(1024),
                    counters: Counters::default(),
                },
                pending: shards.iter().map(|_| Vec::with_capacity(batch)).collect(),
                logs,
                cfg,
                shared,
                shards,
                dirty: Vec::with_capacity(1024),
                blocked: Vec::with_capacity(64),
                to_close: Vec::with_capacity(64),
                now_ns: 0,
                engine_ns: 0,
                draining: false,
            },
        })
    }

    fn push_sqe(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every buffer an entry points at (eventfd buffer, a
            // connection's `sending` bytes, the buffer ring) stays valid and
            // untouched until its completion is reaped; see the callers.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            // The submission queue is full: hand it to the kernel and retry.
            if let Err(e) = self.ring.submit()
                && e.raw_os_error() != Some(libc::EBUSY)
            {
                eprintln!(
                    "turbo-dex: core {}: io_uring submit failed: {e}",
                    self.st.cfg.index
                );
            }
        }
    }

    fn arm_accept(&mut self) {
        if let Some(l) = &self.listener
            && !self.accept_armed
        {
            let e = opcode::AcceptMulti::new(types::Fd(l.as_raw_fd()))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(user_data(OP_ACCEPT, 0, 0));
            self.push_sqe(e);
            self.accept_armed = true;
        }
    }

    fn arm_wake(&mut self) {
        if !self.wake_armed {
            let e = opcode::Read::new(types::Fd(self.wake_fd), self.wake_buf.as_mut_ptr(), 8)
                .build()
                .user_data(user_data(OP_WAKE, 0, 0));
            self.push_sqe(e);
            self.wake_armed = true;
        }
    }

    fn arm_recv(&mut self, slot: u32) {
        let group = self.bufring.group();
        let Some(c) = self.st.router.conns.slot_mut(slot) else {
            return;
        };
        if c.recv_armed || c.blocked || c.phase == Phase::Closing || c.shut_down {
            return;
        }
        c.recv_armed = true;
        let e = opcode::RecvMulti::new(types::Fd(c.raw_fd()), group)
            .build()
            .user_data(user_data(OP_RECV, slot, c.generation));
        self.push_sqe(e);
    }

    fn cancel_recv(&mut self, slot: u32) {
        let Some(c) = self.st.router.conns.slot_mut(slot) else {
            return;
        };
        if !c.recv_armed || c.cancel_inflight {
            return;
        }
        c.cancel_inflight = true;
        let target = user_data(OP_RECV, slot, c.generation);
        let e = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data(OP_CANCEL, slot, c.generation));
        self.push_sqe(e);
    }

    fn start_send(&mut self, slot: u32) {
        let chunk = self.st.cfg.send_chunk_bytes;
        let now = self.st.now_ns;
        let Some(c) = self.st.router.conns.slot_mut(slot) else {
            return;
        };
        if c.send_inflight || c.shut_down {
            return;
        }
        if c.send_pos >= c.sending.len() {
            if c.out.is_empty() {
                return;
            }
            c.out.swap_out(&mut c.sending);
            c.send_pos = 0;
        }
        let len = (c.sending.len() - c.send_pos).min(chunk);
        // The pointer stays valid: `sending` is not touched until the send completes.
        let ptr = c.sending[c.send_pos..].as_ptr();
        c.send_inflight = true;
        c.send_started_ns = now;
        c.last_out_ns = now;
        let e = opcode::Send::new(types::Fd(c.raw_fd()), ptr, len as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(OP_SEND, slot, c.generation));
        self.push_sqe(e);
    }

    /// Starts closing a connection: queue the SessionError, stop reading,
    /// cancel on disconnect, and let `finish_closes` free it once flushed.
    fn begin_close(&mut self, slot: u32, reason: Option<CloseReason>) {
        let now = self.st.now_ns;
        let core = self.st.cfg.index;
        let Some(c) = self.st.router.conns.slot_mut(slot) else {
            return;
        };
        if c.phase == Phase::Closing {
            return;
        }
        let was_active = c.phase == Phase::Active;
        let (session, account, cod) = (c.session, c.account, c.cancel_on_disconnect);
        c.phase = Phase::Closing;
        c.closing_since_ns = now;
        c.inbuf.clear();
        if let Some(r) = &reason {
            if r.log {
                let who = c.peer.map_or_else(|| "?".to_string(), |p| p.to_string());
                let code = r.code().map_or("session error", SessionErrorCode::as_str);
                eprintln!(
                    "turbo-dex: core {core}: closing connection from {who} (session {session:#x}): {code}: {}",
                    r.text
                );
            }
            c.out.push(&r.msg);
            if !c.dirty {
                c.dirty = true;
                self.st.dirty.push(slot);
            }
            if r.code() != Some(SessionErrorCode::ServerShutdown) {
                self.st.router.counters.conns_errored += 1;
            }
        }
        self.cancel_recv(slot);
        if was_active && cod {
            self.st.cancel_session_everywhere(session, account);
        }
        self.st.to_close.push(slot);
    }

    /// Frees closing connections whose output is flushed (or whose flush
    /// timed out) and whose operations have all completed.
    fn finish_closes(&mut self) {
        let now = self.st.now_ns;
        let mut i = 0;
        while i < self.st.to_close.len() {
            let slot = self.st.to_close[i];
            let Some(c) = self.st.router.conns.slot_mut(slot) else {
                self.st.to_close.swap_remove(i);
                continue;
            };
            let flushed = c.out_bytes() == 0 && !c.send_inflight;
            let timed_out = now.saturating_sub(c.closing_since_ns) > CLOSE_FLUSH_NS;
            if (flushed || timed_out) && !c.shut_down {
                // Ends the recv (and a stuck send) so their completions arrive.
                // SAFETY: shutdown on a socket fd we own.
                unsafe { libc::shutdown(c.raw_fd(), libc::SHUT_RDWR) };
                c.shut_down = true;
            }
            if c.shut_down && !c.ops_in_flight() {
                self.st.router.conns.remove(slot);
                self.st.to_close.swap_remove(i);
                self.st.shared.conns_live.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            i += 1;
        }
    }

    fn on_accept(&mut self, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.accept_armed = false;
        }
        if res < 0 {
            let err = io::Error::from_raw_os_error(-res);
            if res != -libc::ECANCELED {
                eprintln!(
                    "turbo-dex: core {}: accept failed: {err}",
                    self.st.cfg.index
                );
            }
            return;
        }
        // SAFETY: a successful accept returns a new fd that we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(res) };
        if self.st.draining {
            return;
        }
        let live = self.st.shared.conns_live.fetch_add(1, Ordering::Relaxed);
        if live >= self.st.cfg.max_connections {
            self.st.shared.conns_live.fetch_sub(1, Ordering::Relaxed);
            refuse(&fd, self.st.cfg.max_connections);
            return;
        }
        // Reports must not wait for Nagle; a failure here only costs latency.
        let _ = tuning::set_tcp_nodelay(fd.as_raw_fd(), true);
        let Some((slot, generation)) = self.st.router.conns.reserve() else {
            self.st.shared.conns_live.fetch_sub(1, Ordering::Relaxed);
            refuse(&fd, self.st.cfg.max_connections);
            return;
        };
        let out = FrameBuf::new(
            64 * 1024,
            self.st.cfg.max_frame_bytes,
            self.st.cfg.batch.min(65_535) as u16,
        );
        let conn = Conn::new(fd, generation, self.st.now_ns, out, 64 * 1024);
        self.st.router.conns.insert(slot, conn);
        self.st.router.counters.conns_accepted += 1;
        self.arm_recv(slot);
    }

    fn on_recv(&mut self, slot: u32, generation: u32, res: i32, flags: u32) {
        let buffer = cqueue::buffer_select(flags);
        let more = cqueue::more(flags);
        let Some(c) = self.st.router.conns.get_mut(slot, generation) else {
            if let Some(bid) = buffer {
                self.bufring.recycle(bid);
            }
            return;
        };
        if !more {
            c.recv_armed = false;
        }
        if res <= 0 {
            if let Some(bid) = buffer {
                self.bufring.recycle(bid);
            }
            match -res {
                0 => self.begin_close(slot, None), // peer closed
                libc::ENOBUFS => {}                // buffers ran out: re-armed below
                libc::ECANCELED => {}              // paused by backpressure or closing
                e => {
                    let mut r = CloseReason::new(
                        SessionErrorCode::MalformedFrame,
                        0,
                        0,
                        format!("receive failed: {}", io::Error::from_raw_os_error(e)),
                    );
                    r.log = e != libc::ECONNRESET;
                    self.begin_close(slot, Some(r));
                }
            }
            if !more {
                self.arm_recv(slot);
            }
            return;
        }
        let Some(bid) = buffer else {
            return;
        };
        let len = res as usize;
        c.last_recv_ns = self.st.now_ns;
        self.st.router.counters.bytes_in += len as u64;
        let phase_closing = c.phase == Phase::Closing;
        if phase_closing {
            self.bufring.recycle(bid);
            return;
        }
        if c.inbuf.is_empty() && !c.blocked {
            // Fast path: decode straight from the kernel's buffer.
            let data = self.bufring.data(bid, len);
            let (consumed, cursor, end) = self.st.process_input(slot, data, 0);
            if let Some(c) = self.st.router.conns.get_mut(slot, generation) {
                c.inbuf.extend_from_slice(&data[consumed..]);
                c.cursor = cursor;
            }
            self.bufring.recycle(bid);
            self.after_input(slot, end);
        } else {
            c.inbuf.extend_from_slice(self.bufring.data(bid, len));
            self.bufring.recycle(bid);
            if !c.blocked {
                self.process_inbuf(slot);
            }
        }
        if !more {
            self.arm_recv(slot);
        }
    }

    /// Processes what a connection holds in `inbuf`.
    fn process_inbuf(&mut self, slot: u32) {
        let Some(c) = self.st.router.conns.slot_mut(slot) else {
            return;
        };
        let mut inbuf = std::mem::take(&mut c.inbuf);
        let cursor = c.cursor;
        let (consumed, cursor, end) = self.st.process_input(slot, &inbuf, cursor);
        inbuf.drain(..consumed);
        if let Some(c) = self.st.router.conns.slot_mut(slot) {
            c.inbuf = inbuf;
            c.cursor = cursor;
        }
        self.after_input(slot, end);
    }

    fn after_input(&mut self, slot: u32, end: InputEnd) {
        self.st.dirty.append(&mut self.st.router.newly_dirty);
        match end {
            InputEnd::Done => {
                if let Some(c) = self.st.router.conns.slot_mut(slot)
                    && c.out.len() >= self.st.cfg.out_high_water_bytes
                {
                    self.block(slot);
                }
            }
            InputEnd::Blocked => self.block(slot),
            InputEnd::Close(reason) => self.begin_close(slot, Some(reason)),
        }
    }

    fn block(&mut self, slot: u32) {
        let Some(c) = self.st.router.conns.slot_mut(slot) else {
            return;
        };
        c.blocked = true;
        if !c.listed_blocked {
            c.listed_blocked = true;
            self.st.blocked.push(slot);
        }
        // Stop the kernel from handing us more bytes: TCP backpressure.
        self.cancel_recv(slot);
    }

    /// Resumes blocked connections whose reasons cleared.
    fn retry_blocked(&mut self) {
        if self.st.router.congested || self.st.draining {
            return;
        }
        let mut i = 0;
        while i < self.st.blocked.len() {
            let slot = self.st.blocked[i];
            let high_water = self.st.cfg.out_high_water_bytes;
            let Some(c) = self.st.router.conns.slot_mut(slot) else {
                self.st.blocked.swap_remove(i);
                continue;
            };
            if c.phase == Phase::Closing {
                c.listed_blocked = false;
                self.st.blocked.swap_remove(i);
                continue;
            }
            if c.out.len() >= high_water {
                i += 1;
                continue;
            }
            c.blocked = false;
            c.listed_blocked = false;
            self.st.blocked.swap_remove(i);
            self.process_inbuf(slot);
            if self
                .st
                .router
                .conns
                .slot_mut(slot)
                .is_some_and(|c| !c.blocked)
            {
                self.arm_recv(slot);
            }
            if self.st.router.congested {
                return;
            }
        }
    }

    fn on_send(&mut self, slot: u32, generation: u32, res: i32) {
        let Some(c) = self.st.router.conns.get_mut(slot, generation) else {
            return;
        };
        c.send_inflight = false;
        if res < 0 {
            c.sending.clear();
            c.send_pos = 0;
            c.out.clear();
            let e = -res;
            if e != libc::EPIPE && e != libc::ECONNRESET {
                eprintln!(
                    "turbo-dex: core {}: send failed: {}",
                    self.st.cfg.index,
                    io::Error::from_raw_os_error(e)
                );
            }
            self.begin_close(slot, None);
            return;
        }
        c.send_pos += res as usize;
        self.st.router.counters.bytes_out += res as u64;
        if c.send_pos < c.sending.len() || !c.out.is_empty() {
            self.start_send(slot);
        } else {
            c.sending.clear();
            c.send_pos = 0;
        }
    }

    fn reap(&mut self) {
        self.cqes.clear();
        for cqe in self.ring.completion() {
            self.cqes.push((cqe.user_data(), cqe.result(), cqe.flags()));
        }
        for i in 0..self.cqes.len() {
            let (ud, res, flags) = self.cqes[i];
            let (op, slot, generation) = split_user_data(ud);
            match op {
                OP_ACCEPT => self.on_accept(res, flags),
                OP_RECV => self.on_recv(slot, generation, res, flags),
                OP_SEND => self.on_send(slot, generation, res),
                OP_CANCEL => {
                    if let Some(c) = self.st.router.conns.get_mut(slot, generation) {
                        c.cancel_inflight = false;
                    }
                }
                OP_WAKE => self.wake_armed = false,
                OP_JOURNAL_WRITE | OP_JOURNAL_SYNC => self.on_journal(op, slot as usize, res),
                _ => {}
            }
        }
    }

    /// Pops what other cores sent; at most `batch` messages per ring per call.
    fn drain_rings(&mut self) -> usize {
        let mut total = 0;
        for src in 0..self.mesh.from.len() {
            let Some(consumer) = self.mesh.from[src].as_mut() else {
                continue;
            };
            let n = consumer.slots().min(self.st.cfg.batch);
            if n == 0 {
                continue;
            }
            let Ok(chunk) = consumer.read_chunk(n) else {
                continue;
            };
            let (a, b) = chunk.as_slices();
            for msg in a.iter().chain(b) {
                self.st.apply(msg);
            }
            chunk.commit_all();
            total += n;
        }
        self.st.apply_pending();
        self.st.router.counters.ring_popped += total as u64;
        self.st.dirty.append(&mut self.st.router.newly_dirty);
        total
    }

    /// Moves staged messages into the rings; wakes targets that sleep.
    fn flush_staging(&mut self) -> usize {
        let mut left = 0;
        for dst in 0..self.st.router.staging.len() {
            let staged = &mut self.st.router.staging[dst];
            if staged.is_empty() {
                continue;
            }
            let Some(producer) = self.mesh.to[dst].as_mut() else {
                staged.clear();
                continue;
            };
            let n = producer.slots().min(staged.len());
            if n > 0
                && let Ok(chunk) = producer.write_chunk_uninit(n)
            {
                let pushed = chunk.fill_from_iter(staged.drain(..n));
                self.st.router.counters.ring_pushed += pushed as u64;
                self.st.shared.wake(dst);
            }
            left += staged.len();
        }
        self.st.router.congested = self
            .st
            .router
            .staging
            .iter()
            .any(|q| q.len() >= self.st.router.staging_limit)
            || (!self.st.logs.is_empty()
                && self
                    .st
                    .pending
                    .iter()
                    .any(|q| q.len() >= PENDING_JOURNAL_MAX));
        left
    }

    fn send_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.st.dirty);
        for &slot in &dirty {
            if let Some(c) = self.st.router.conns.slot_mut(slot) {
                c.dirty = false;
                if c.out_bytes() > self.st.cfg.out_max_bytes && c.phase != Phase::Closing {
                    let bytes = c.out_bytes();
                    c.out.clear();
                    self.st.router.counters.conns_errored += 1;
                    let mut r = CloseReason::new(
                        SessionErrorCode::SlowConsumer,
                        0,
                        0,
                        format!(
                            "{bytes} bytes of reports unread; the limit is {}",
                            self.st.cfg.out_max_bytes
                        ),
                    );
                    r.log = true;
                    self.begin_close(slot, Some(r));
                    continue;
                }
            }
            self.start_send(slot);
        }
        dirty.clear();
        // Keep the vector's capacity; sends may have queued more dirty slots.
        dirty.append(&mut self.st.dirty);
        self.st.dirty = dirty;
        for &slot in &self.st.dirty {
            if let Some(c) = self.st.router.conns.slot_mut(slot) {
                c.dirty = false;
            }
        }
        self.st.dirty.clear();
    }

    /// Idle timeouts, server heartbeats, slow consumers.
    fn housekeeping(&mut self) {
        let now = self.st.now_ns;
        let factor = u64::from(self.st.cfg.idle_timeout_factor);
        let default_hb = u64::from(self.st.cfg.heartbeat_ms);
        let slow_ns = self.st.cfg.slow_consumer_ms * 1_000_000;
        let slots: Vec<u32> = self.st.router.conns.live_slots().collect();
        for slot in slots {
            let Some(c) = self.st.router.conns.slot_mut(slot) else {
                continue;
            };
            if c.phase == Phase::Closing {
                continue;
            }
            let hb_ns = u64::from(if c.heartbeat_ms == 0 {
                default_hb as u32
            } else {
                c.heartbeat_ms
            }) * 1_000_000;
            if c.send_inflight && now.saturating_sub(c.send_started_ns) > slow_ns {
                let mut r = CloseReason::new(
                    SessionErrorCode::SlowConsumer,
                    0,
                    0,
                    format!(
                        "the client has not read its reports for {} ms ({} bytes waiting)",
                        now.saturating_sub(c.send_started_ns) / 1_000_000,
                        c.out_bytes()
                    ),
                );
                r.log = true;
                self.begin_close(slot, Some(r));
                continue;
            }
            if now.saturating_sub(c.last_recv_ns) > hb_ns * factor && !c.blocked {
                let r = CloseReason::new(
                    SessionErrorCode::IdleTimeout,
                    0,
                    (hb_ns * factor / 1_000_000) as u32,
                    format!("nothing received for {} ms", hb_ns * factor / 1_000_000),
                );
                self.begin_close(slot, Some(r));
                continue;
            }
            if c.phase == Phase::Active
                && now.saturating_sub(c.last_out_ns) >= hb_ns
                && c.out.is_empty()
            {
                c.out.push(&ServerHeartbeat {
                    token: realtime_ns().into(),
                });
                c.last_out_ns = now;
                if !c.dirty {
                    c.dirty = true;
                    self.st.dirty.push(slot);
                }
            }
        }
    }

    /// Stops reading: cancel the accept and every recv.
    fn start_draining(&mut self) {
        self.st.draining = true;
        if let Some(l) = self.listener.take() {
            let e = opcode::AsyncCancel::new(user_data(OP_ACCEPT, 0, 0))
                .build()
                .user_data(user_data(OP_CANCEL, u32::MAX, 0));
            self.push_sqe(e);
            drop(l);
        }
        let slots: Vec<u32> = self.st.router.conns.live_slots().collect();
        for slot in slots {
            if let Some(c) = self.st.router.conns.slot_mut(slot) {
                c.blocked = true;
            }
            self.cancel_recv(slot);
        }
        self.st.shared.stats[self.st.cfg.index]
            .draining
            .store(true, Ordering::Release);
    }

    fn close_all(&mut self) {
        let slots: Vec<u32> = self.st.router.conns.live_slots().collect();
        for slot in slots {
            let mut r = CloseReason::new(
                SessionErrorCode::ServerShutdown,
                0,
                0,
                "the server is shutting down",
            );
            r.log = false;
            self.begin_close(slot, Some(r));
        }
    }

    /// True when nothing is staged and no connection has output waiting.
    fn output_flushed(&mut self) -> bool {
        if self.st.router.staging.iter().any(|q| !q.is_empty()) {
            return false;
        }
        let slots: Vec<u32> = self.st.router.conns.live_slots().collect();
        slots.into_iter().all(|slot| {
            self.st
                .router
                .conns
                .slot_mut(slot)
                .is_none_or(|c| c.out_bytes() == 0 && !c.send_inflight)
        })
    }

    fn publish(&mut self, busy_ns: u64, idle: bool) {
        let c = &mut self.st.router.counters;
        c.iterations += 1;
        c.busy_ns += busy_ns;
        let stats = &self.st.shared.stats[self.st.cfg.index];
        stats.publish(c);
        stats
            .conns
            .store(self.st.router.conns.live() as u64, Ordering::Relaxed);
        let staged: usize = self.st.router.staging.iter().map(Vec::len).sum();
        stats.staged.store(staged as u64, Ordering::Relaxed);
        stats.idle.store(idle, Ordering::Release);
    }

    fn rings_empty(&self) -> bool {
        self.mesh.from.iter().flatten().all(|c| c.is_empty())
    }

    /// Runs the loop until the server's shutdown completes.
    pub fn run(mut self) -> CoreExit {
        self.arm_accept();
        self.arm_wake();
        let mut exit_started_ns = 0u64;
        loop {
            let start = monotonic_ns();
            self.st.now_ns = start;
            self.st.engine_ns = realtime_ns();
            self.reap();
            let popped = self.drain_rings();
            self.retry_blocked();
            // Cancel-on-disconnect commands queued by closes.
            self.st.apply_pending();
            self.poll_journal_done();
            self.journal_submit();
            self.st.dirty.append(&mut self.st.router.newly_dirty);
            let left = self.flush_staging();
            self.send_dirty();
            self.finish_closes();
            if start >= self.next_tick_ns {
                self.next_tick_ns = start + TICK_NS;
                self.housekeeping();
                self.send_dirty();
            }
            if !self.st.draining && self.st.shared.stop_reading.load(Ordering::Acquire) {
                self.start_draining();
            }
            if self.st.shared.exit.load(Ordering::Acquire) {
                if exit_started_ns == 0 {
                    exit_started_ns = start;
                    self.close_all();
                    self.send_dirty();
                }
                // A journal write's buffer must outlive the write.
                if !self.journal_busy()
                    && (self.st.router.conns.live() == 0
                        || start.saturating_sub(exit_started_ns) > CLOSE_FLUSH_NS * 2)
                {
                    break;
                }
            }
            if !self.wake_armed {
                self.arm_wake();
            }
            let has_work = popped > 0 || left > 0 || !self.rings_empty();
            // Only the shutdown coordinator reads `idle`, and only while draining.
            let idle = self.st.draining
                && !has_work
                && !self.journal_busy()
                && self.st.pending.iter().all(Vec::is_empty)
                && self.output_flushed();
            let busy = monotonic_ns().saturating_sub(start);
            self.publish(busy, idle);
            self.wait(has_work);
        }
        CoreExit {
            counters: self.st.router.counters,
        }
    }

    fn wait(&mut self, has_work: bool) {
        let block = match self.st.cfg.poll {
            PollMode::Spin => false,
            PollMode::Block => !has_work,
            PollMode::Adaptive => {
                if has_work {
                    self.idle_spins = 0;
                    false
                } else {
                    self.idle_spins += 1;
                    self.idle_spins > ADAPTIVE_SPINS
                }
            }
        };
        if !block {
            if let Err(e) = self.ring.submit() {
                self.submit_error(e);
            }
            return;
        }
        let me = &self.st.shared.sleeping[self.st.cfg.index];
        me.store(true, Ordering::SeqCst);
        // A producer that pushed before seeing the flag did not wake us: look again.
        if !self.rings_empty() {
            me.store(false, Ordering::SeqCst);
            let _ = self.ring.submit();
            return;
        }
        let until = self
            .next_tick_ns
            .saturating_sub(monotonic_ns())
            .clamp(1_000_000, TICK_NS);
        let ts = types::Timespec::new().nsec(until as u32);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::ETIME)
                    || e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => self.submit_error(e),
        }
        me.store(false, Ordering::SeqCst);
        self.idle_spins = 0;
    }

    /// Numbers this core's new sessions from `generation` on.
    pub fn set_session_base(&mut self, generation: u32) {
        self.st.router.conns.set_base_generation(generation);
    }

    fn request_segment(&mut self, local: usize) {
        let now = self.st.now_ns;
        let core = self.st.cfg.index;
        let (Some(jobs), Some(log)) = (&self.jobs, self.st.logs.get_mut(local)) else {
            return;
        };
        if log.next_requested || log.next.is_some() || now < log.next_retry_ns {
            return;
        }
        log.next_requested = true;
        let _ = jobs.send(Job::CreateSegment {
            core,
            local,
            id: log.id,
            config: log.config,
            number: log.segment.number() + 1,
        });
    }

    /// Takes the background thread's answers (new segments, or why not).
    fn poll_journal_done(&mut self) {
        let Some(done) = &self.done else {
            return;
        };
        while let Ok(Done::Segment { local, result }) = done.try_recv() {
            let now = self.st.now_ns;
            let Some(log) = self.st.logs.get_mut(local) else {
                continue;
            };
            log.next_requested = false;
            match result {
                Ok(segment) => {
                    if let Some(why) = log.next_failed.take() {
                        eprintln!(
                            "turbo-dex: journal: the next segment of {} exists now (was: {why})",
                            log.id
                        );
                    }
                    log.next = Some(segment);
                }
                Err(e) => {
                    log.next_retry_ns = now + SEGMENT_RETRY_NS;
                    let why = format!("cannot create the next journal segment of {}: {e}", log.id);
                    if log.next_failed.as_deref() != Some(why.as_str()) {
                        eprintln!(
                            "turbo-dex: journal: {why}; retrying every second (orders are rejected as \
                             not durable once the current segment is full)"
                        );
                        log.next_failed = Some(why);
                    }
                }
            }
        }
    }

    /// Starts one write (and fdatasync) per shard whose queue has commands
    /// and no write in flight: group commit of everything that arrived.
    fn journal_submit(&mut self) {
        for local in 0..self.st.logs.len() {
            if self.st.logs[local].inflight.is_some() || self.st.pending[local].is_empty() {
                continue;
            }
            let first_bytes = journal::record_bytes(&self.st.pending[local][0]);
            if self.st.logs[local].write_room() < first_bytes {
                // This segment is full: continue in the next one.
                let log = &mut self.st.logs[local];
                if let Some(next) = log.next.take() {
                    log.use_segment(next);
                } else {
                    self.request_segment(local);
                    let log = &mut self.st.logs[local];
                    if let Some(why) = log.next_failed.clone() {
                        if log.unavailable.is_none() {
                            eprintln!(
                                "turbo-dex: journal: {} is full and {why}: rejecting its orders (journal \
                                 unavailable) until space returns",
                                log.id
                            );
                            log.unavailable = Some(why);
                        }
                        self.reject_pending(local);
                    }
                    continue;
                }
            }
            if self.st.logs[local].wants_next() {
                self.request_segment(local);
            }
            let engine_ns = self.st.engine_ns;
            let now = self.st.now_ns;
            let fsync = self.st.cfg.journal_fsync;
            let State { logs, pending, .. } = &mut self.st;
            let log = &mut logs[local];
            let queue = &mut pending[local];
            let room = log.write_room();
            let mut bytes = 0;
            let mut n = 0;
            for cmd in queue.iter() {
                let b = journal::record_bytes(cmd);
                if bytes + b > room {
                    break;
                }
                bytes += b;
                n += 1;
            }
            let start = log.begin_write();
            let records_at = log.bytes.len();
            for (i, cmd) in queue[..n].iter().enumerate() {
                journal::encode_record(&mut log.bytes, log.next_seq + i as u64, engine_ns, cmd);
            }
            let len = log.bytes.len() - records_at;
            let mut cmds = std::mem::take(&mut log.batch);
            cmds.clear();
            cmds.extend(queue.drain(..n));
            let fd = types::Fd(log.segment.write_fd());
            let (bytes, offset) = log.end_write(start);
            let (ptr, write_len) = (bytes.as_ptr(), bytes.len());
            log.inflight = Some(Inflight {
                cmds,
                engine_ns,
                len,
                start,
                write_len,
                last_seq: log.next_seq + n as u64 - 1,
                started_ns: now,
                written: false,
                failed: None,
            });
            // The bytes stay untouched until the batch completes.
            let write = opcode::Write::new(fd, ptr, write_len as u32)
                .offset(offset)
                .build()
                .user_data(user_data(OP_JOURNAL_WRITE, local as u32, 0));
            if fsync {
                self.push_sqe(write.flags(squeue::Flags::IO_LINK));
                let sync = opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build()
                    .user_data(user_data(OP_JOURNAL_SYNC, local as u32, 0));
                self.push_sqe(sync);
            } else {
                self.push_sqe(write);
            }
        }
    }

    /// Rejects a shard's queued commands while its journal is unavailable
    /// (a CancelSession stays queued: it cannot be refused).
    fn reject_pending(&mut self, local: usize) {
        let State {
            pending, router, ..
        } = &mut self.st;
        let Some(queue) = pending.get_mut(local) else {
            return;
        };
        let before = router.counters.rejects;
        queue.retain(|cmd| !reject_not_durable(cmd, router));
        router.counters.journal_rejects += router.counters.rejects - before;
        self.st.dirty.append(&mut self.st.router.newly_dirty);
    }

    /// A journal write or sync completed.
    fn on_journal(&mut self, op: u64, local: usize, res: i32) {
        let fsync = self.st.cfg.journal_fsync;
        let Some(log) = self.st.logs.get_mut(local) else {
            return;
        };
        let Some(inflight) = log.inflight.as_mut() else {
            return;
        };
        if op == OP_JOURNAL_WRITE {
            inflight.written = true;
            if res < 0 {
                inflight.failed = Some(io::Error::from_raw_os_error(-res));
            } else if res as usize != inflight.write_len {
                inflight.failed = Some(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write: {res} of {} bytes", inflight.write_len),
                ));
            }
            if fsync {
                return; // the linked sync completes the batch
            }
        } else if res < 0 && inflight.failed.is_none() {
            inflight.failed = Some(io::Error::from_raw_os_error(-res));
        }
        let Some(batch) = log.inflight.take() else {
            return;
        };
        self.journal_done(local, batch);
    }

    /// A batch's write (and sync) finished: apply it, or reject it.
    fn journal_done(&mut self, local: usize, mut batch: Inflight) {
        let now = self.st.now_ns;
        let every = self.st.cfg.snapshot_every_records;
        let State {
            logs,
            shards,
            pending,
            router,
            ..
        } = &mut self.st;
        let log = &mut logs[local];
        router.counters.journal_writes += 1;
        router.counters.journal_write_ns += now.saturating_sub(batch.started_ns);
        if let Some(e) = batch.failed.take() {
            log.write_failed(batch.write_len);
            if e.raw_os_error() == Some(libc::EINVAL) && log.segment.is_direct() {
                eprintln!(
                    "turbo-dex: journal: a direct write to {} was refused as misaligned; \
                     writing through the page cache from now on",
                    log.segment.path().display()
                );
                log.fall_back_to_buffered();
            }
            let why = format!(
                "journal write to {} failed: {e}",
                log.segment.path().display()
            );
            if log.unavailable.as_deref() != Some(why.as_str()) {
                eprintln!(
                    "turbo-dex: journal: {why}; the batch is rejected (journal unavailable) and retried"
                );
                log.unavailable = Some(why);
            }
            // Commands that cannot be refused go back to the front of the queue.
            let before = router.counters.rejects;
            let mut keep: Vec<Command> = Vec::new();
            for cmd in batch.cmds.drain(..) {
                if !reject_not_durable(&cmd, router) {
                    keep.push(cmd);
                }
            }
            router.counters.journal_rejects += router.counters.rejects - before;
            if !keep.is_empty() {
                pending[local].splice(0..0, keep);
            }
        } else {
            if let Some(why) = log.unavailable.take() {
                eprintln!(
                    "turbo-dex: journal: {} accepts writes again (was: {why})",
                    log.id
                );
            }
            log.wrote(batch.start, batch.len);
            log.next_seq = batch.last_seq + 1;
            router.counters.journal_bytes += batch.len as u64;
            if let Some(shard) = shards.get_mut(local) {
                shard.process_batch(&batch.cmds, batch.engine_ns, router);
                router.counters.commands += batch.cmds.len() as u64;
            }
            log.since_snapshot += batch.cmds.len() as u64;
            if log.since_snapshot >= every
                && let (Some(shard), Some(jobs)) = (shards.get(local), &self.jobs)
            {
                let started = monotonic_ns();
                let mut body = Vec::new();
                if let Some(digest) = shard.snapshot(&mut body) {
                    log.since_snapshot = 0;
                    router.counters.snapshots += 1;
                    router.counters.snapshot_ns += monotonic_ns().saturating_sub(started);
                    let _ = jobs.send(Job::WriteSnapshot {
                        id: log.id,
                        covers_seq: batch.last_seq,
                        digest,
                        body,
                    });
                }
            }
        }
        batch.cmds.clear();
        log.batch = batch.cmds;
        self.st.dirty.append(&mut self.st.router.newly_dirty);
    }

    /// True while any journal write is in flight.
    fn journal_busy(&self) -> bool {
        self.st.logs.iter().any(|l| l.inflight.is_some())
    }

    fn submit_error(&self, e: io::Error) {
        match e.raw_os_error() {
            Some(libc::EBUSY) | Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ETIME) => {}
            _ => eprintln!(
                "turbo-dex: core {}: io_uring_enter failed: {e}",
                self.st.cfg.index
            ),
        }
    }
}

/// Tells a connection over the limit why, without giving it a slot.
fn refuse(fd: &OwnedFd, max: usize) {
    let mut buf = Vec::with_capacity(80);
    let text = format!("the server is at its limit of {max} connections");
    let _ = wire::append_frame(
        &[SessionError::new(
            SessionErrorCode::TooManyConnections,
            0,
            max as u32,
            &text,
        )],
        &mut buf,
    );
    // SAFETY: a non-blocking best-effort send of a buffer we own.
    unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
    }
}
