//! One trading connection's logic, free of I/O: it writes batches of
//! requests into a caller's buffer and reads the server's reports from the
//! caller's bytes, with the time passed in. The runtime moves the bytes; the
//! tests and the benches drive the same code without a socket.
//!
//! # Orders and ids
//!
//! Client order ids are `(worker << 48) | (connection << 40) | seq`, `seq`
//! strictly increasing from 1, so connections sharing an account never
//! collide and the server's "ids increase per session" rule holds. Each open
//! order lives in a slot of a fixed table indexed by `seq % slots`; the
//! table has room for 1.5 times the most orders that can be open at once, and a
//! new order skips the seqs whose slot is still taken (ids may have gaps,
//! they only need to increase). Nothing is allocated per order.
//!
//! # What counts as an answer (latency)
//!
//! Every request's latency runs from its send time (intended time in open
//! loop) to its first answer:
//! - new order: Accepted or Rejected (the first report about it);
//! - cancel: Canceled or Rejected with `request_kind` Cancel (a fill that
//!   races the cancel is not its answer; the reject that follows it is);
//! - replace: Replaced or Rejected with `request_kind` Replace.
//!
//! An order has at most one cancel or replace outstanding, so answers are
//! never ambiguous.

use std::collections::VecDeque;

use wire::{
    Accepted, Cancel, CancelReason, Canceled, DecodeError, Decoder, Fill, FrameWriter, Kind,
    Liquidity, NewOrder, Rejected, Replace, Replaced, SelfTradePrevention, SessionErrorCode, Side,
    TimeInForce,
};

use crate::flow::{Action, Flow, Mix, NewKind};
use crate::stats::{Counters, LatencyRecorder};
use crate::verify::{TradeLedger, TradeSide, Violations};

/// Bits of a client order id below the connection index.
pub const CONNECTION_SHIFT: u32 = 40;
/// Bits of a client order id below the worker index.
pub const WORKER_SHIFT: u32 = 48;
/// Most connections per worker (the id has 8 bits for them).
pub const CONNECTIONS_PER_WORKER_MAX: usize = 1 << (WORKER_SHIFT - CONNECTION_SHIFT);
/// The last usable seq; a connection that gets there stops with an error.
pub const SEQ_MAX: u64 = (1 << CONNECTION_SHIFT) - 1;
/// Largest order table per connection (slots, 64 bytes each: 256 MiB);
/// bounds `--inflight` at a quarter of it.
pub const SLOTS_MAX: usize = 1 << 22;
/// Smallest order table.
const SLOTS_MIN: usize = 1 << 10;

/// A cancel or replace picks among this many of the longest-idle live orders.
pub const PICK_WINDOW: usize = 8;
/// How far down the idle queue a pick prefetches the slot of a later pick.
const PREFETCH_AHEAD: usize = PICK_WINDOW + 8;

/// Asks the CPU to bring slot `i` into cache (a hint: no effect on results).
#[inline(always)]
fn prefetch<T>(slots: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(slot) = slots.get(i) {
        // SAFETY: prefetch is only a hint: it reads no data into the
        // program, cannot fault, and the pointer is to a live element.
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                (slot as *const T).cast::<i8>(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (slots, i);
}

/// The id prefix of a connection.
pub const fn id_prefix(worker: u16, connection: u8) -> u64 {
    ((worker as u64) << WORKER_SHIFT) | ((connection as u64) << CONNECTION_SHIFT)
}

/// The measured window: requests sent in it count, and their latencies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Start (end of warmup), ns since the run's epoch.
    pub from_ns: u64,
    /// End, ns since the run's epoch.
    pub until_ns: u64,
}

impl Window {
    /// Whether `t_ns` is inside.
    #[inline]
    pub fn contains(&self, t_ns: u64) -> bool {
        t_ns >= self.from_ns && t_ns < self.until_ns
    }
}

/// How a connection trades.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Worker index (top 16 bits of the ids).
    pub worker: u16,
    /// Connection index within the worker.
    pub connection: u8,
    /// Symbol ids to trade (from the server's directory), most popular first.
    pub symbols: Vec<u32>,
    /// Order mix.
    pub mix: Mix,
    /// Seed of this connection's order flow.
    pub seed: u64,
    /// Most requests awaiting their first answer.
    pub outstanding_max: usize,
    /// Most orders that may rest (accepted GTC orders, and GTC orders not yet
    /// answered); above it the model cancels instead of adding.
    pub live_max: usize,
    /// Check every answer (`--verify`).
    pub verify: bool,
    /// The server's largest frame (from HelloAck).
    pub max_frame_bytes: u32,
    /// The measured window.
    pub window: Window,
}

impl SessionConfig {
    /// Slots in the order table: the power of two at or above 1.5 times
    /// the most open orders, so at most two thirds are taken and a new
    /// order finds a free slot in about two probes.
    pub fn slots(&self) -> usize {
        let open_max = self.live_max.saturating_add(self.outstanding_max);
        (open_max.saturating_add(open_max / 2))
            .clamp(SLOTS_MIN, SLOTS_MAX)
            .next_power_of_two()
    }
}

/// Why a connection cannot go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionFailure {
    /// The server ended the session with a SessionError.
    Closed {
        /// The code (raw: it may be one this build does not know).
        code: u16,
        /// The code-specific detail number.
        detail: u32,
        /// The server's explanation.
        text: String,
    },
    /// The server's bytes do not decode; the stream cannot be trusted.
    Decode(DecodeError),
}

impl std::fmt::Display for SessionFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionFailure::Closed { code, detail, text } => {
                let name = SessionErrorCode::from_wire(*code)
                    .map_or("unknown session error", |c| c.as_str());
                write!(f, "the server closed the session: {name} (code {code}")?;
                if *detail != 0 {
                    write!(f, ", detail {detail}")?;
                }
                write!(f, ")")?;
                if !text.is_empty() {
                    write!(f, ": {text}")?;
                }
                Ok(())
            }
            SessionFailure::Decode(e) => write!(f, "the server sent bytes that do not decode: {e}"),
        }
    }
}

impl std::error::Error for SessionFailure {}

const FREE: u8 = 0;
/// Sent, no answer yet.
const SENT: u8 = 1;
/// Accepted and not terminal.
const LIVE: u8 = 2;
/// Terminal, but a cancel or replace of it still awaits its answer.
const DONE: u8 = 3;

const PENDING_NONE: u8 = 0;
const PENDING_CANCEL: u8 = 1;
const PENDING_REPLACE: u8 = 2;

/// One open order: one cache line, so the random accesses of cancels,
/// replaces and their answers touch one line each.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct Slot {
    id: u64,
    /// Send time (intended time in open loop) of what is outstanding: the
    /// new order while `SENT`, its cancel or replace while one is pending
    /// (an order only gets a cancel or replace once it is answered).
    sent_ns: u64,
    price: i64,
    leaves: u64,
    pending_price: i64,
    pending_quantity: u64,
    symbol_index: u32,
    state: u8,
    pending: u8,
    may_rest: bool,
    side: u8,
    /// Sent as a crossing order ([`NewKind::crosses`]).
    crossing: bool,
}
const _: () = assert!(core::mem::size_of::<Slot>() == 64);

impl Slot {
    fn state_name(&self) -> &'static str {
        match self.state {
            SENT => "sent, never answered",
            LIVE if self.may_rest => "accepted, resting, never completed",
            LIVE => "accepted, never completed",
            DONE => "terminal, a cancel or replace never answered",
            _ => "free",
        }
    }
}

/// One connection's trading state.
#[derive(Debug)]
pub struct Session {
    prefix: u64,
    symbols: Vec<u32>,
    mix: Mix,
    flow: Flow,
    verify: bool,
    window: Window,
    decoder: Decoder,
    max_frame_bytes: u32,
    /// Most cancels one frame under the server's limit carries.
    max_cancels_per_frame: usize,
    /// Most replaces one frame under the server's limit carries.
    max_replaces_per_frame: usize,
    /// Most new orders one frame under the server's limit carries.
    max_new_per_frame: usize,
    outstanding_max: usize,
    live_max: usize,

    slots: Box<[Slot]>,
    mask: usize,
    next_seq: u64,
    /// Slots not free.
    occupied: usize,
    /// Orders that may rest: GTC orders sent or live.
    may_rest_open: usize,
    /// Requests awaiting their first answer.
    outstanding: usize,
    /// Ids of live resting orders with nothing outstanding, oldest idle
    /// first: what a cancel or replace picks from (see [`Session::take_candidate`]).
    /// Entries go stale (the order traded away, was canceled by the
    /// server...) without being removed, which would cost a search; a pick
    /// checks its entry against the slot and drops stale ones. Each idle
    /// live order has exactly one entry: added when it becomes idle,
    /// removed when it is picked.
    candidates: VecDeque<u64>,
    /// The batch being written, by kind: each becomes one frame (or more,
    /// past the server's frame size) with one copy, new orders first.
    new_batch: Vec<NewOrder>,
    cancel_batch: Vec<Cancel>,
    replace_batch: Vec<Replace>,

    counters: Counters,
    window_start: Option<Counters>,
    window_end: Option<Counters>,
    latency: LatencyRecorder,
    violations: Violations,
    /// Set when the seq space or the table ran out.
    exhausted: bool,
    /// Ids of the orders [`Session::abandon`] set aside (their node went
    /// away, or their shard moved to another node): a late report of one
    /// is not a violation. Only ever filled in cluster runs.
    abandoned: std::collections::HashSet<u64>,
}

impl Session {
    /// A session; allocates its whole order table now.
    pub fn new(cfg: SessionConfig) -> Self {
        let slots = cfg.slots();
        let symbols = if cfg.symbols.is_empty() {
            vec![0]
        } else {
            cfg.symbols.clone()
        };
        let max_frame = cfg.max_frame_bytes.max(wire::DEFAULT_MAX_FRAME_BYTES);
        Session {
            prefix: id_prefix(cfg.worker, cfg.connection),
            flow: Flow::new(cfg.mix, symbols.len(), cfg.seed),
            symbols,
            mix: cfg.mix,
            verify: cfg.verify,
            window: cfg.window,
            decoder: Decoder::for_client(max_frame),
            max_frame_bytes: cfg.max_frame_bytes,
            max_cancels_per_frame: Decoder::new(cfg.max_frame_bytes)
                .max_messages(Kind::Cancel)
                .max(1),
            max_replaces_per_frame: Decoder::new(cfg.max_frame_bytes)
                .max_messages(Kind::Replace)
                .max(1),
            max_new_per_frame: Decoder::new(cfg.max_frame_bytes)
                .max_messages(Kind::NewOrder)
                .max(1),
            outstanding_max: cfg.outstanding_max.max(1),
            live_max: cfg.live_max.max(1),
            slots: vec![Slot::default(); slots].into_boxed_slice(),
            mask: slots - 1,
            next_seq: 1,
            occupied: 0,
            may_rest_open: 0,
            outstanding: 0,
            candidates: VecDeque::with_capacity(slots),
            new_batch: Vec::with_capacity(slots.min(1 << 16)),
            cancel_batch: Vec::with_capacity(slots.min(1 << 16)),
            replace_batch: Vec::with_capacity(slots.min(1 << 16)),
            counters: Counters::default(),
            window_start: None,
            window_end: None,
            latency: LatencyRecorder::default(),
            violations: Violations::default(),
            exhausted: false,
            abandoned: std::collections::HashSet::new(),
        }
    }

    /// Requests that may be sent now without passing the outstanding bound.
    #[inline]
    pub fn room(&self) -> usize {
        if self.exhausted {
            return 0;
        }
        self.outstanding_max.saturating_sub(self.outstanding)
    }

    /// Requests awaiting their first answer.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Orders the table holds (sent and not yet terminal, or awaiting an answer).
    pub fn open_orders(&self) -> usize {
        self.occupied
    }

    /// True when the seq space ran out (2^40 orders) and the connection cannot send more.
    pub fn exhausted(&self) -> bool {
        self.exhausted
    }

    /// Nothing left to wait for: every request answered and, when verifying,
    /// every order terminal.
    pub fn settled(&self) -> bool {
        self.outstanding == 0 && (!self.verify || self.occupied == 0)
    }

    /// All counts so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Counts of the measured window (so far, if it has not ended).
    pub fn window_counters(&self) -> Counters {
        let start = self.window_start.unwrap_or(self.counters);
        self.window_end.unwrap_or(self.counters).since(&start)
    }

    /// The latency histograms.
    pub fn latency(&self) -> &LatencyRecorder {
        &self.latency
    }

    /// The latency histograms, to publish and empty the interval histogram.
    pub fn latency_mut(&mut self) -> &mut LatencyRecorder {
        &mut self.latency
    }

    /// Violations found so far (only recorded when verifying).
    pub fn violations(&self) -> &Violations {
        &self.violations
    }

    /// Takes window snapshots when `now_ns` passes the window's edges.
    #[inline]
    fn tick(&mut self, now_ns: u64) {
        if self.window_end.is_none() && now_ns >= self.window.from_ns {
            if self.window_start.is_none() {
                self.window_start = Some(self.counters);
            }
            if now_ns >= self.window.until_ns {
                self.window_end = Some(self.counters);
            }
        }
    }

    /// Closes the measured window now if it is still open (a run that ends early).
    pub fn end_window(&mut self, now_ns: u64) {
        self.tick(now_ns);
        if self.window_start.is_none() {
            self.window_start = Some(self.counters);
        }
        if self.window_end.is_none() {
            self.window_end = Some(self.counters);
        }
    }

    #[cold]
    fn violation(&mut self, text: impl FnOnce() -> String) {
        if self.verify {
            self.violations.push(text);
        }
    }

    #[inline]
    fn lookup(&self, id: u64) -> Option<usize> {
        if id & !SEQ_MAX != self.prefix {
            return None;
        }
        let i = id as usize & self.mask;
        match self.slots.get(i) {
            Some(s) if s.id == id && s.state != FREE => Some(i),
            _ => None,
        }
    }

    /// Whether `id` names a live resting order with nothing outstanding;
    /// returns its slot.
    #[inline]
    fn idle_live(slots: &[Slot], mask: usize, id: u64) -> Option<usize> {
        let i = id as usize & mask;
        match slots.get(i) {
            Some(s) if s.id == id && s.state == LIVE && s.may_rest && s.pending == PENDING_NONE => {
                Some(i)
            }
            _ => None,
        }
    }

    #[inline]
    fn add_candidate(&mut self, i: usize) {
        let Some(id) = self.slots.get(i).map(|s| s.id) else {
            return;
        };
        if self.candidates.len() == self.candidates.capacity() {
            // Full of stale entries (there are fewer idle live orders than
            // slots): drop them instead of growing.
            let (slots, mask) = (&self.slots, self.mask);
            self.candidates
                .retain(|&id| Self::idle_live(slots, mask, id).is_some());
        }
        self.candidates.push_back(id);
    }

    /// Picks the order a cancel or replace acts on: a random one among the
    /// [`PICK_WINDOW`] longest idle (dropping stale entries on the way).
    ///
    /// Why not uniformly among all live orders: the order table is
    /// megabytes, and a uniform pick is a cache miss on nearly every
    /// cancel and replace (measured: 40% of the write path). Picking among
    /// the oldest walks the table in roughly the order the orders went
    /// idle, so the slots ahead can be prefetched; every live order still
    /// gets moved or canceled in turn, and the server sees the same mix.
    #[inline]
    fn take_candidate(&mut self) -> Option<usize> {
        while !self.candidates.is_empty() {
            let window = self.candidates.len().min(PICK_WINDOW);
            let pick = self.flow.pick(window);
            self.candidates.swap(0, pick);
            let id = self.candidates.pop_front()?;
            if let Some(&ahead) = self.candidates.get(PREFETCH_AHEAD) {
                prefetch(&self.slots, ahead as usize & self.mask);
            }
            if let Some(i) = Self::idle_live(&self.slots, self.mask, id) {
                return Some(i);
            }
        }
        None
    }

    #[inline]
    fn free(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(i)
            && s.state != FREE
        {
            *s = Slot::default();
            self.occupied -= 1;
        }
    }

    /// The order in slot `i` was accepted.
    #[inline]
    fn set_live(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(i) {
            s.state = LIVE;
        }
    }

    /// The order in slot `i` got its terminal report.
    #[inline]
    fn terminal(&mut self, i: usize) {
        let Some(s) = self.slots.get_mut(i) else {
            return;
        };
        if s.may_rest && matches!(s.state, SENT | LIVE) {
            self.may_rest_open -= 1;
        }
        if s.pending == PENDING_NONE {
            self.free(i);
        } else {
            s.state = DONE;
        }
    }

    /// A request was answered: its latency is recorded.
    #[inline]
    fn answered(&mut self, sent_ns: u64, now_ns: u64) {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.latency.record(
            now_ns.saturating_sub(sent_ns),
            self.window.contains(sent_ns),
        );
    }

    /// A free slot for a new order, and its seq. Skips seqs whose slot is
    /// taken; an accepted IOC/FOK/market order still there after a whole
    /// turn of the table will never complete and is forgotten (a violation).
    #[inline]
    fn allocate(&mut self) -> Option<usize> {
        for _ in 0..self.slots.len() {
            let seq = self.next_seq;
            if seq > SEQ_MAX {
                self.exhausted = true;
                return None;
            }
            self.next_seq += 1;
            let i = seq as usize & self.mask;
            let s = self.slots.get(i)?;
            if s.state == FREE {
                return Some(i);
            }
            if s.state == LIVE && !s.may_rest && s.pending == PENDING_NONE {
                let (id, state) = (s.id, s.state_name());
                self.counters.evicted += 1;
                self.violation(|| format!("order {id}: {state}; no terminal report"));
                self.free(i);
                return Some(i);
            }
        }
        None
    }

    /// The action to take, adjusted to the state: cancels and replaces need
    /// a live order to act on (`idle` of them are available), and new
    /// resting orders stop when `open` reaches `live_max`.
    #[inline]
    fn adjust(&self, action: Action, open: usize, idle: usize) -> Action {
        let at_cap = open >= self.live_max;
        match action {
            Action::New(kind) if kind.may_rest() && at_cap => {
                if idle == 0 {
                    Action::New(NewKind::IocNear)
                } else {
                    Action::Cancel
                }
            }
            Action::Cancel | Action::Replace if idle == 0 => {
                if at_cap {
                    Action::New(NewKind::IocNear)
                } else {
                    Action::New(self.fallback_kind())
                }
            }
            other => other,
        }
    }

    fn fallback_kind(&self) -> NewKind {
        match self.mix {
            Mix::Realistic => NewKind::Near,
            Mix::Insert => NewKind::Passive,
            Mix::Match => NewKind::Aggressive,
        }
    }

    /// Appends up to `count` requests (at most [`Session::room`]) to `out` as
    /// frames: the batch's new orders, then its cancels, then its replaces.
    /// `intended` gives each request's send time (the same `now_ns` in
    /// closed loop; the schedule in open loop). Returns how many were
    /// written: fewer only when the order table or the id space is full.
    ///
    /// Two passes: first the batch's actions are drawn from the mix and
    /// counted, then the requests are generated kind by kind. Generating
    /// them in draw order would make every request a random branch the CPU
    /// mispredicts; in runs, the branches are predictable. The mix is the
    /// same, since the draws are independent.
    #[inline(never)]
    pub fn write_batch<F: FnMut() -> u64>(
        &mut self,
        out: &mut Vec<u8>,
        count: usize,
        now_ns: u64,
        mut intended: F,
    ) -> usize {
        self.tick(now_ns);
        let count = count.min(self.room());
        // Pass 1: how many of each action.
        let mut news = [0usize; NewKind::ALL.len()];
        let (mut cancels, mut replaces) = (0usize, 0usize);
        let mut open = self.may_rest_open;
        let mut idle = self.candidates.len();
        for _ in 0..count {
            let drawn = self.flow.next_action();
            match self.adjust(drawn, open, idle) {
                Action::New(kind) => {
                    news[kind.index()] += 1;
                    open += usize::from(kind.may_rest());
                }
                Action::Cancel => {
                    cancels += 1;
                    idle -= 1;
                }
                Action::Replace => {
                    replaces += 1;
                    idle -= 1;
                }
            }
        }
        // Pass 2: generate them.
        self.new_batch.clear();
        self.cancel_batch.clear();
        self.replace_batch.clear();
        let mut written = 0;
        'kinds: for (kind, n) in NewKind::ALL.into_iter().zip(news) {
            for _ in 0..n {
                if !self.write_new(kind, &mut intended) {
                    break 'kinds;
                }
                written += 1;
            }
        }
        for (action, n) in [(Action::Cancel, cancels), (Action::Replace, replaces)] {
            for _ in 0..n {
                let done = match self.take_candidate() {
                    Some(i) => {
                        self.write_request(i, action, &mut intended);
                        true
                    }
                    // Every candidate was stale: no live order to act on.
                    None => {
                        let kind = match self.adjust(
                            Action::New(self.fallback_kind()),
                            self.may_rest_open,
                            0,
                        ) {
                            Action::New(kind) => kind,
                            _ => NewKind::IocNear,
                        };
                        self.write_new(kind, &mut intended)
                    }
                };
                if !done {
                    break;
                }
                written += 1;
            }
        }
        // One header and one copy per frame, not a push per message.
        for chunk in self.new_batch.chunks(self.max_new_per_frame) {
            let _ = wire::append_frame(chunk, out);
        }
        for chunk in self.cancel_batch.chunks(self.max_cancels_per_frame) {
            let _ = wire::append_frame(chunk, out);
        }
        for chunk in self.replace_batch.chunks(self.max_replaces_per_frame) {
            let _ = wire::append_frame(chunk, out);
        }
        self.counters.orders_sent += written as u64;
        written
    }

    /// Writes one new order; false when there is no slot or id left.
    #[inline]
    fn write_new<F: FnMut() -> u64>(&mut self, kind: NewKind, intended: &mut F) -> bool {
        let Some(i) = self.allocate() else {
            return false;
        };
        let seq = self.next_seq - 1;
        let id = self.prefix | seq;
        let spec = self.flow.order(kind);
        let symbol = self
            .symbols
            .get(spec.symbol_index as usize)
            .copied()
            .unwrap_or(0);
        self.new_batch.push(NewOrder::new(
            id,
            symbol,
            spec.side,
            spec.order_type,
            spec.time_in_force,
            false,
            SelfTradePrevention::CancelIncoming,
            spec.price,
            spec.quantity,
        ));
        let may_rest = kind.may_rest() && spec.time_in_force == TimeInForce::Gtc;
        if let Some(s) = self.slots.get_mut(i) {
            *s = Slot {
                id,
                sent_ns: intended(),
                price: spec.price,
                leaves: spec.quantity,
                pending_price: 0,
                pending_quantity: 0,
                symbol_index: spec.symbol_index,
                state: SENT,
                pending: PENDING_NONE,
                may_rest,
                side: spec.side.to_wire(),
                crossing: kind.crosses(),
            };
        }
        self.occupied += 1;
        self.may_rest_open += usize::from(may_rest);
        self.outstanding += 1;
        self.counters.new_orders += 1;
        self.counters.crossing_orders += u64::from(kind.crosses());
        true
    }

    /// Queues a cancel or replace of the live order in slot `i`.
    #[inline]
    fn write_request<F: FnMut() -> u64>(&mut self, i: usize, action: Action, intended: &mut F) {
        let t = intended();
        let Some(s) = self.slots.get_mut(i) else {
            return;
        };
        s.sent_ns = t;
        let symbol = self
            .symbols
            .get(s.symbol_index as usize)
            .copied()
            .unwrap_or(0);
        if action == Action::Cancel {
            s.pending = PENDING_CANCEL;
            self.cancel_batch.push(Cancel::new(s.id, symbol));
            self.counters.cancels += 1;
        } else {
            let side = Side::from_wire(s.side).unwrap_or(Side::Buy);
            let (price, quantity) = self.flow.replace(s.symbol_index as usize, side, s.leaves);
            s.pending = PENDING_REPLACE;
            s.pending_price = price;
            s.pending_quantity = quantity;
            self.replace_batch
                .push(Replace::new(s.id, symbol, price, quantity));
            self.counters.replaces += 1;
        }
        self.outstanding += 1;
    }

    /// Appends a cancel for every live resting order with nothing
    /// outstanding (at most [`Session::room`]): the drain after a verified
    /// run, so every order reaches a terminal report. Returns how many.
    pub fn write_cancel_all(&mut self, out: &mut Vec<u8>, now_ns: u64) -> usize {
        self.tick(now_ns);
        let room = self.room();
        let mut writer = FrameWriter::with_max_frame(out, self.max_frame_bytes);
        let mut count = 0;
        while count < room {
            let Some(id) = self.candidates.pop_front() else {
                break;
            };
            let Some(i) = Self::idle_live(&self.slots, self.mask, id) else {
                continue;
            };
            let Some(s) = self.slots.get_mut(i) else {
                break;
            };
            s.pending = PENDING_CANCEL;
            s.sent_ns = now_ns;
            let symbol = self
                .symbols
                .get(s.symbol_index as usize)
                .copied()
                .unwrap_or(0);
            writer.push(&Cancel::new(s.id, symbol));
            self.outstanding += 1;
            self.counters.cancels += 1;
            self.counters.orders_sent += 1;
            count += 1;
        }
        count
    }

    /// Reads the whole frames at the front of `input` (reports received at
    /// `now_ns`) and returns how many bytes they took; the caller keeps the
    /// rest, a partial frame, for the next read. Fills are paired in `ledger`
    /// when verifying.
    #[inline(never)]
    pub fn on_bytes(
        &mut self,
        input: &[u8],
        now_ns: u64,
        ledger: &mut TradeLedger,
    ) -> Result<usize, SessionFailure> {
        use wire::Frame;
        self.tick(now_ns);
        let mut frames = self.decoder.frames(input);
        let mut failure = None;
        for frame in frames.by_ref() {
            self.counters.reports += frame.len() as u64;
            match frame {
                Frame::Accepted(list) => {
                    for a in list {
                        self.on_accepted(a, now_ns);
                    }
                }
                Frame::Fill(list) => {
                    for f in list {
                        self.on_fill(f, now_ns, ledger);
                    }
                }
                Frame::Canceled(list) => {
                    for c in list {
                        self.on_canceled(c, now_ns);
                    }
                }
                Frame::Replaced(list) => {
                    for r in list {
                        self.on_replaced(r, now_ns);
                    }
                }
                Frame::Rejected(list) => {
                    for r in list {
                        self.on_rejected(r, now_ns);
                    }
                }
                Frame::SessionError(list) => {
                    if let Some(e) = list.first() {
                        failure = Some(SessionFailure::Closed {
                            code: e.code.get(),
                            detail: e.detail.get(),
                            text: String::from_utf8_lossy(e.text()).into_owned(),
                        });
                        break;
                    }
                }
                Frame::HelloAck(_) | Frame::SymbolEntry(_) => {
                    let kind = frame.kind();
                    self.violation(|| {
                        format!("the server sent a {kind:?} frame after the handshake")
                    });
                }
                // Heartbeats, order status answers and market data need no bookkeeping.
                _ => {}
            }
        }
        self.latency.flush();
        if let Some(f) = failure {
            return Err(f);
        }
        if let Some(e) = frames.error() {
            return Err(SessionFailure::Decode(e));
        }
        Ok(frames.consumed())
    }

    #[cold]
    fn stray(&mut self, id: u64, what: &'static str) {
        if self.abandoned.contains(&id) {
            // Its node went away or its shard moved: an answer that was
            // on its way, not checked.
            return;
        }
        self.counters.stray_reports += 1;
        let ours = id & !SEQ_MAX == self.prefix;
        self.violation(|| {
            if ours {
                format!(
                    "{what} for order {id}, which is not open (never sent, or already terminal)"
                )
            } else {
                format!("{what} for order {id}, which this connection never sent")
            }
        });
    }

    #[inline]
    fn on_accepted(&mut self, a: &Accepted, now_ns: u64) {
        self.counters.accepted += 1;
        let id = a.client_order_id.get();
        let Some(i) = self.lookup(id) else {
            return self.stray(id, "Accepted");
        };
        let s = self.slots[i];
        if s.state != SENT {
            return self
                .violation(|| format!("order {id}: Accepted when it was {}", s.state_name()));
        }
        if self.verify {
            let symbol = self
                .symbols
                .get(s.symbol_index as usize)
                .copied()
                .unwrap_or(0);
            if a.symbol.get() != symbol || a.side != s.side {
                self.violation(|| {
                    format!(
                        "order {id}: Accepted with symbol {} side {}, sent with symbol {symbol} side {}",
                        a.symbol.get(),
                        a.side,
                        s.side
                    )
                });
            }
        }
        self.set_live(i);
        self.answered(s.sent_ns, now_ns);
        if s.may_rest {
            self.add_candidate(i);
        }
    }

    #[inline]
    fn on_rejected(&mut self, r: &Rejected, now_ns: u64) {
        self.counters.reject(r.reason.get(), r.request_kind);
        let id = r.client_order_id.get();
        let Some(i) = self.lookup(id) else {
            return self.stray(id, "Rejected");
        };
        let s = self.slots[i];
        let kind = r.request_kind;
        if kind == Kind::NewOrder as u8 {
            if s.state != SENT {
                return self.violation(|| {
                    format!(
                        "order {id}: new order Rejected when it was {}",
                        s.state_name()
                    )
                });
            }
            self.answered(s.sent_ns, now_ns);
            self.terminal(i);
        } else if (kind == Kind::Cancel as u8 && s.pending == PENDING_CANCEL)
            || (kind == Kind::Replace as u8 && s.pending == PENDING_REPLACE)
        {
            self.answered(s.sent_ns, now_ns);
            self.slots[i].pending = PENDING_NONE;
            match s.state {
                DONE => self.free(i),
                LIVE if s.may_rest => self.add_candidate(i),
                _ => {}
            }
        } else {
            self.violation(|| {
                format!(
                    "order {id}: Rejected a request of kind 0x{kind:02x} that was not outstanding"
                )
            });
        }
    }

    #[inline]
    fn on_fill(&mut self, f: &Fill, now_ns: u64, ledger: &mut TradeLedger) {
        self.counters.fills += 1;
        if f.liquidity == Liquidity::Taker.to_wire() {
            self.counters.trades += 1;
        }
        let id = f.client_order_id.get();
        let Some(i) = self.lookup(id) else {
            return self.stray(id, "Fill");
        };
        let s = self.slots[i];
        match s.state {
            LIVE => {}
            SENT => {
                self.violation(|| format!("order {id}: Fill before Accepted"));
                self.set_live(i);
                self.answered(s.sent_ns, now_ns);
            }
            _ => {
                return self.violation(|| format!("order {id}: Fill after its terminal report"));
            }
        }
        let (quantity, leaves) = (f.quantity.get(), f.leaves_quantity.get());
        if self.verify {
            if quantity == 0 || quantity > s.leaves {
                self.violation(|| {
                    format!(
                        "order {id}: Fill of {quantity} lots with only {} open (trade {})",
                        s.leaves,
                        f.trade_id.get()
                    )
                });
            } else if leaves != s.leaves - quantity {
                self.violation(|| {
                    format!(
                        "order {id}: Fill of {quantity} from {} open leaves {leaves}, expected {} (trade {})",
                        s.leaves,
                        s.leaves - quantity,
                        f.trade_id.get()
                    )
                });
            }
            let symbol = self
                .symbols
                .get(s.symbol_index as usize)
                .copied()
                .unwrap_or(0);
            if f.side != s.side || f.symbol.get() != symbol {
                self.violation(|| {
                    format!(
                        "order {id}: Fill on symbol {} side {}, the order is symbol {symbol} side {}",
                        f.symbol.get(),
                        f.side,
                        s.side
                    )
                });
            }
            ledger.record(
                f.trade_id.get(),
                TradeSide {
                    client_order_id: id,
                    symbol: f.symbol.get(),
                    side: f.side,
                    liquidity: f.liquidity,
                    price: f.price.get(),
                    quantity,
                },
                &mut self.violations,
            );
        }
        self.slots[i].leaves = leaves;
        if leaves == 0 {
            self.terminal(i);
        }
    }

    #[inline]
    fn on_canceled(&mut self, c: &Canceled, now_ns: u64) {
        self.counters.canceled += 1;
        let self_trade = c.reason == CancelReason::SelfTrade.to_wire();
        let matching = self_trade
            || c.reason == CancelReason::IocRemainder.to_wire()
            || c.reason == CancelReason::FokUnfilled.to_wire()
            || c.reason == CancelReason::PriceBand.to_wire();
        self.counters.self_trade_cancels += u64::from(self_trade);
        self.counters.matching_cancels += u64::from(matching);
        let id = c.client_order_id.get();
        let Some(i) = self.lookup(id) else {
            return self.stray(id, "Canceled");
        };
        let s = self.slots[i];
        self.counters.crossing_self_trade_cancels += u64::from(self_trade && s.crossing);
        match s.state {
            LIVE => {}
            SENT => {
                self.violation(|| format!("order {id}: Canceled before Accepted"));
                self.answered(s.sent_ns, now_ns);
            }
            _ => {
                return self
                    .violation(|| format!("order {id}: Canceled after its terminal report"));
            }
        }
        let canceled = c.canceled_quantity.get();
        if canceled != s.leaves {
            self.violation(|| {
                format!(
                    "order {id}: Canceled {canceled} lots but {} were open (the null engine keeps \
                     no orders and always says 0: verify against --engine match)",
                    s.leaves
                )
            });
        }
        // Only a requested cancel answers our cancel: one for another reason
        // (self-trade prevention, disconnect) overtook it, and the cancel's
        // own answer, a reject, is still to come.
        if s.pending == PENDING_CANCEL && c.reason == CancelReason::Requested.to_wire() {
            self.answered(s.sent_ns, now_ns);
            self.slots[i].pending = PENDING_NONE;
        }
        self.terminal(i);
    }

    #[inline]
    fn on_replaced(&mut self, r: &Replaced, now_ns: u64) {
        self.counters.replaced += 1;
        let id = r.client_order_id.get();
        let Some(i) = self.lookup(id) else {
            return self.stray(id, "Replaced");
        };
        let s = self.slots[i];
        if s.pending != PENDING_REPLACE {
            return self
                .violation(|| format!("order {id}: Replaced but no replace was outstanding"));
        }
        self.answered(s.sent_ns, now_ns);
        let (price, leaves) = (r.price.get(), r.leaves_quantity.get());
        if price != s.pending_price || leaves != s.pending_quantity {
            self.violation(|| {
                format!(
                    "order {id}: Replaced to {leaves} lots at {price}, asked for {} at {}",
                    s.pending_quantity, s.pending_price
                )
            });
        }
        let slot = &mut self.slots[i];
        slot.pending = PENDING_NONE;
        match s.state {
            LIVE => {
                slot.price = price;
                slot.leaves = leaves;
                self.add_candidate(i);
            }
            _ => {
                self.violation(|| format!("order {id}: Replaced after its terminal report"));
                if s.state == DONE {
                    self.free(i);
                }
            }
        }
    }

    /// Forgets every order whose symbol `gone` names, because the server
    /// that holds them went away (a cluster node that closed its
    /// connection) or no longer reports on them (their shard moved to
    /// another node, which detached the sessions of its resting orders:
    /// PROTOCOL.md §8.11 rule 9): their outstanding requests are no longer
    /// awaited, their live orders are dropped without a cancel, and late
    /// reports of them are not checked. Returns the requests that were
    /// outstanding (lost) and the orders set aside. Walks the whole order
    /// table, so it is for rare events, not the hot path.
    pub fn abandon(&mut self, mut gone: impl FnMut(u32) -> bool) -> (u64, u64) {
        let (mut lost, mut orders) = (0, 0);
        for i in 0..self.slots.len() {
            let s = self.slots[i];
            if s.state == FREE {
                continue;
            }
            let symbol = self
                .symbols
                .get(s.symbol_index as usize)
                .copied()
                .unwrap_or(0);
            if !gone(symbol) {
                continue;
            }
            if s.state == SENT || s.pending != PENDING_NONE {
                self.outstanding = self.outstanding.saturating_sub(1);
                lost += 1;
            }
            if s.may_rest && matches!(s.state, SENT | LIVE) {
                self.may_rest_open -= 1;
            }
            self.abandoned.insert(s.id);
            orders += 1;
            self.free(i);
        }
        (lost, orders)
    }

    /// Ends the run: every order still open is a violation (when verifying);
    /// returns how many requests were never answered.
    pub fn finish(&mut self) -> usize {
        self.latency.flush();
        if self.verify {
            for i in 0..self.slots.len() {
                let s = self.slots[i];
                if s.state != FREE {
                    self.violations.push(|| {
                        format!(
                            "order {}: {} by the end of the drain; no terminal report",
                            s.id,
                            s.state_name()
                        )
                    });
                }
            }
        }
        self.outstanding
    }

    /// Takes the violations (leaving none).
    pub fn take_violations(&mut self) -> Violations {
        std::mem::take(&mut self.violations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mix: Mix, verify: bool) -> SessionConfig {
        SessionConfig {
            worker: 1,
            connection: 2,
            symbols: vec![10, 11, 12],
            mix,
            seed: 7,
            outstanding_max: 64,
            live_max: 100,
            verify,
            max_frame_bytes: wire::DEFAULT_MAX_FRAME_BYTES,
            window: Window {
                from_ns: 0,
                until_ns: u64::MAX,
            },
        }
    }

    #[test]
    fn abandon_forgets_the_orders_of_the_symbols_gone() {
        let mut s = Session::new(config(Mix::Insert, true));
        let mut out = Vec::new();
        assert_eq!(s.write_batch(&mut out, 30, 5, || 5), 30);
        assert_eq!(s.outstanding(), 30);
        let sent: Vec<NewOrder> = Decoder::default()
            .frames(&out)
            .flat_map(|f| match f {
                wire::Frame::NewOrder(o) => o.to_vec(),
                _ => Vec::new(),
            })
            .collect();
        let on_11: Vec<&NewOrder> = sent.iter().filter(|o| o.symbol.get() == 11).collect();
        let n = on_11.len() as u64;
        assert!(n > 0);
        assert_eq!(s.abandon(|symbol| symbol == 11), (n, n));
        assert_eq!(s.outstanding(), 30 - n as usize);
        assert_eq!(s.room(), 64 - (30 - n as usize));
        assert_eq!(
            s.abandon(|symbol| symbol == 11),
            (0, 0),
            "nothing left on it"
        );
        // A late answer for an order set aside is not checked.
        let o = on_11[0];
        let mut buf = Vec::new();
        let accepted = Accepted::new(o.client_order_id.get(), 1, 0, 11, &o.fields().unwrap());
        wire::append_frame(&[accepted], &mut buf).unwrap();
        s.on_bytes(&buf, 1, &mut TradeLedger::new()).unwrap();
        assert_eq!(s.violations().total, 0, "{:?}", s.violations());
        assert_eq!(s.counters().stray_reports, 0);
        assert_eq!(s.abandon(|_| true), (30 - n, 30 - n));
        assert!(s.settled());
        assert_eq!(s.finish(), 0);
        assert!(s.violations().is_empty());
    }

    #[test]
    fn ids_carry_worker_and_connection_and_increase() {
        let mut s = Session::new(config(Mix::Insert, false));
        let mut out = Vec::new();
        assert_eq!(s.write_batch(&mut out, 10, 5, || 5), 10);
        let orders: Vec<NewOrder> = Decoder::default()
            .frames(&out)
            .flat_map(|f| match f {
                wire::Frame::NewOrder(o) => o.to_vec(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(orders.len(), 10);
        let prefix = (1u64 << 48) | (2 << 40);
        let mut last = 0;
        for o in &orders {
            let id = o.client_order_id.get();
            assert_eq!(id & !SEQ_MAX, prefix);
            assert!(id > last);
            last = id;
            assert!([10, 11, 12].contains(&o.symbol.get()));
        }
        assert_eq!(s.outstanding(), 10);
        assert_eq!(s.room(), 54);
    }

    #[test]
    fn room_bounds_a_batch() {
        let mut s = Session::new(config(Mix::Match, false));
        let mut out = Vec::new();
        assert_eq!(s.write_batch(&mut out, 1000, 0, || 0), 64);
        assert_eq!(s.room(), 0);
        assert_eq!(s.write_batch(&mut out, 10, 0, || 0), 0);
    }

    #[test]
    fn a_report_for_an_order_never_sent_is_a_violation() {
        let mut s = Session::new(config(Mix::Insert, true));
        let mut buf = Vec::new();
        wire::append_frame(
            &[Accepted::new(
                99,
                1,
                0,
                10,
                &NewOrder::limit(99, 10, Side::Buy, 5, 5).fields().unwrap(),
            )],
            &mut buf,
        )
        .unwrap();
        let used = s.on_bytes(&buf, 1, &mut TradeLedger::new()).unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(s.violations().total, 1);
        assert!(s.violations().kept[0].contains("never sent"));
        assert_eq!(s.counters().stray_reports, 1);
    }

    #[test]
    fn a_session_error_ends_the_session() {
        let mut s = Session::new(config(Mix::Insert, false));
        let mut buf = Vec::new();
        wire::append_frame(
            &[wire::SessionError::new(
                SessionErrorCode::SlowConsumer,
                0,
                0,
                "read faster",
            )],
            &mut buf,
        )
        .unwrap();
        let e = s.on_bytes(&buf, 1, &mut TradeLedger::new()).unwrap_err();
        assert!(e.to_string().contains("slow consumer"), "{e}");
        assert!(e.to_string().contains("read faster"), "{e}");
    }

    #[test]
    fn partial_frames_are_left_for_the_next_read() {
        let mut s = Session::new(config(Mix::Insert, false));
        let mut buf = Vec::new();
        wire::append_frame(&[wire::ServerHeartbeat { token: 1.into() }], &mut buf).unwrap();
        let whole = buf.len();
        wire::append_frame(&[wire::ServerHeartbeat { token: 2.into() }], &mut buf).unwrap();
        let used = s
            .on_bytes(&buf[..buf.len() - 3], 1, &mut TradeLedger::new())
            .unwrap();
        assert_eq!(used, whole);
        let mut bad = buf.clone();
        bad[whole + 5] = 77; // version
        assert!(matches!(
            s.on_bytes(&bad[whole..], 1, &mut TradeLedger::new()),
            Err(SessionFailure::Decode(
                DecodeError::UnsupportedVersion { .. }
            ))
        ));
    }

    #[test]
    fn table_is_sized_to_one_and_a_half_times_the_open_orders() {
        let mut c = config(Mix::Insert, false);
        c.outstanding_max = 8000;
        c.live_max = 10048;
        assert_eq!(c.slots(), 32768);
        c.outstanding_max = 1;
        c.live_max = 1;
        assert_eq!(c.slots(), 1024);
    }
}
