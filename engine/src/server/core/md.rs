//! Market data on one core (PROTOCOL.md §8.9).
//!
//! A core has two roles. As the **owner** of some symbols (their shards run
//! here) it turns the books' events into records as they happen and sends
//! one copy to each core that has subscribers for the symbol, itself
//! included; it answers subscriptions between batches with a snapshot. As
//! the **home** of sessions it keeps, per symbol, the list of its sessions
//! that subscribe, and copies each record it receives into their send
//! buffers. Ring traffic is one copy per subscribing core, whatever the
//! number of subscribers.
//!
//! Order: an answer to a subscription (Subscribed, the snapshot rows,
//! SnapshotEnd, the top) is made by the owner in one piece between two
//! batches, and travels the same FIFO path as the events (the ring to the
//! home core, or a call on the same core), so exactly the events with a
//! later sequence number follow it. A session's subscription becomes
//! active at its Subscribed; every subscription request carries a ticket,
//! and parts of an answer whose ticket is no longer the session's current
//! one are dropped (a resubscribe, an unsubscribe, a cut-off or a close
//! came between).
//!
//! A subscriber whose unsent output passes `md_max_queue` when a record is
//! to be added loses every subscription and gets a CutOff: it never slows
//! matching or the other subscribers, and its memory stays bounded.

use std::collections::HashMap;
use std::sync::Arc;

use wire::{
    ALL_SYMBOLS, MdDepth, MdStatus, MdStatusEvent, MdTopOfBook, MdTrade, SUBSCRIBE_CONFLATE,
    SUBSCRIBE_DEPTH, SUBSCRIBE_TOP_OF_BOOK, SUBSCRIBE_TRADES, Side, TopLevel,
};

use super::conn::{Conn, Slab};
use super::route::{Msg, Placement, Router};
use super::session::Phase;
use super::{Matcher, State};
use crate::book::MdEvent;
use crate::mdbridge::{BridgeFeed, BridgeRecord};
use crate::server::durable::Snapshot;
use crate::session_id::SessionId;

/// Snapshot rows one loop iteration serves before it leaves the remaining
/// subscription requests for the next (one request is always served, so a
/// book larger than this goes out alone).
pub const SNAPSHOT_ROWS_PER_ITERATION: usize = 8_192;

/// A session's entry in a symbol's subscriber list.
#[derive(Clone, Copy, Debug)]
struct Sub {
    slot: u32,
    session: SessionId,
    flags: u8,
}

/// One subscription of a session (on its home core).
#[derive(Clone, Copy, Debug)]
pub struct SessionSub {
    flags: u8,
    ticket: u32,
    /// Subscribed has arrived: the session is on the symbol's list.
    active: bool,
    /// From the Subscribed: the snapshot's sequence and time (for the
    /// initial top, which arrives in two halves).
    seq: u64,
    engine_ns: u64,
    bid: TopLevel,
}

/// A session's market-data state (on its connection).
#[derive(Debug, Default)]
pub struct ConnMd {
    subs: HashMap<u32, SessionSub>,
    next_ticket: u32,
}

/// A subscription request waiting for its owner core to serve it.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    pub session: SessionId,
    pub symbol: u32,
    pub flags: u8,
    pub ticket: u32,
}

/// What one record is, for the home core's fan-out.
#[derive(Clone, Copy, Debug)]
pub enum Rec {
    Trade(MdTrade),
    Level(MdDepth),
    Top(MdTopOfBook),
    Checksum(MdStatus),
}

impl Rec {
    fn symbol(&self) -> u32 {
        match self {
            Rec::Trade(m) => m.symbol.get(),
            Rec::Level(m) => m.symbol.get(),
            Rec::Top(m) => m.symbol.get(),
            Rec::Checksum(m) => m.symbol.get(),
        }
    }

    /// The subscription flags that receive it.
    fn wanted_by(&self) -> u8 {
        (match self {
            Rec::Trade(_) => SUBSCRIBE_TRADES | SUBSCRIBE_DEPTH,
            Rec::Level(_) | Rec::Checksum(_) => SUBSCRIBE_DEPTH,
            Rec::Top(_) => SUBSCRIBE_TOP_OF_BOOK,
        }) as u8
    }

    fn push(&self, c: &mut Conn) {
        match self {
            Rec::Trade(m) => c.out.push(m),
            Rec::Level(m) => c.out.push(m),
            Rec::Top(m) => c.out.push(m),
            Rec::Checksum(m) => c.out.push(m),
        }
    }

    /// As a ring message (one 64-byte slot).
    fn into_msg(self) -> Msg {
        match self {
            Rec::Trade(m) => Msg::MdTrade(m),
            Rec::Level(m) => Msg::MdLevel(m),
            Rec::Checksum(m) => Msg::MdChecksum(m),
            Rec::Top(m) => Msg::MdTop {
                symbol: m.symbol.get(),
                bid_orders: m.bid_orders.get(),
                ask_orders: m.ask_orders.get(),
                seq: m.seq.get(),
                engine_ns: m.engine_ns.get(),
                bid_price: m.bid_price.get(),
                bid_quantity: m.bid_quantity.get(),
                ask_price: m.ask_price.get(),
                ask_quantity: m.ask_quantity.get(),
            },
        }
    }
}

/// Part of the answer to one subscription, addressed to one session.
#[derive(Clone, Copy, Debug)]
pub enum Part {
    Status(MdStatus),
    Row(MdDepth),
    /// Half of the initial top (bid, then ask).
    TopHalf {
        symbol: u32,
        ask: bool,
        level: TopLevel,
    },
}

/// A core's market-data state, both roles.
pub struct MarketData {
    /// u64 words per core mask.
    words: usize,
    placement: Arc<[Placement]>,
    /// The engine time of the current iteration.
    pub engine_ns: u64,
    /// Unsent output past which a subscriber is cut off.
    max_queue: usize,
    // Owner side, indexed by symbol.
    /// Per symbol, `words` words: the cores with at least one subscription.
    interest: Vec<u64>,
    /// Subscriptions per (symbol, core): when the count reaches 0 the bit goes.
    counts: HashMap<(u32, u32), u32>,
    /// The last top sent per symbol (a top goes out only when it changed).
    last_top: Vec<(TopLevel, TopLevel)>,
    /// Symbols whose depth changed in the current batch (for checksums).
    touched: Vec<u32>,
    touched_flag: Vec<bool>,
    /// Requests waiting to be served (between batches).
    pub requests: std::collections::VecDeque<Request>,
    /// Trades and tops for the NATS bridge.
    pub bridge: Option<BridgeFeed>,
    // Home side, indexed by symbol.
    subs: Vec<Vec<Sub>>,
    conflated: Vec<Option<MdTopOfBook>>,
    conflated_list: Vec<u32>,
    /// Sessions to cut off after the current fan-out.
    cut: Vec<u32>,
}

impl MarketData {
    pub fn new(
        core: usize,
        ncores: usize,
        placement: Arc<[Placement]>,
        max_queue: usize,
        bridge: Option<BridgeFeed>,
    ) -> MarketData {
        let symbols = placement.len();
        let words = ncores.div_ceil(64).max(1);
        debug_assert!(core < ncores);
        MarketData {
            words,
            engine_ns: 0,
            max_queue,
            interest: vec![0; symbols * words],
            counts: HashMap::new(),
            last_top: vec![(TopLevel::default(), TopLevel::default()); symbols],
            touched: Vec::new(),
            touched_flag: vec![false; symbols],
            requests: std::collections::VecDeque::new(),
            bridge,
            subs: vec![Vec::new(); symbols],
            conflated: vec![None; symbols],
            conflated_list: Vec::new(),
            cut: Vec::new(),
            placement,
        }
    }

    #[inline]
    fn mask(&self, symbol: u32) -> &[u64] {
        let at = symbol as usize * self.words;
        self.interest.get(at..at + self.words).unwrap_or(&[])
    }

    /// True when some core subscribes to `symbol` (or the bridge is on).
    #[inline]
    pub fn interested(&self, symbol: u32) -> bool {
        self.bridge.is_some() || self.mask(symbol).iter().any(|&w| w != 0)
    }

    /// The cores that subscribe to `symbol`.
    #[cfg(test)]
    fn cores_of(&self, symbol: u32) -> impl Iterator<Item = usize> + '_ {
        self.mask(symbol).iter().enumerate().flat_map(|(w, &bits)| {
            (0..64)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| w * 64 + b)
        })
    }

    /// A subscription of `core` to `symbol` was served here.
    fn count_sub(&mut self, symbol: u32, core: usize) {
        *self.counts.entry((symbol, core as u32)).or_insert(0) += 1;
        let at = symbol as usize * self.words + core / 64;
        if let Some(w) = self.interest.get_mut(at) {
            *w |= 1 << (core % 64);
        }
    }

    /// A subscription of `core` to `symbol` ended.
    pub fn count_unsub(&mut self, symbol: u32, core: usize) -> bool {
        let key = (symbol, core as u32);
        let Some(n) = self.counts.get_mut(&key) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            self.counts.remove(&key);
            let at = symbol as usize * self.words + core / 64;
            if let Some(w) = self.interest.get_mut(at) {
                *w &= !(1 << (core % 64));
            }
        }
        true
    }

    /// The owner core of `symbol`.
    fn owner(&self, symbol: u32) -> Option<usize> {
        self.placement.get(symbol as usize).map(|p| p.core as usize)
    }
}

/// The record of a book event at engine time `engine_ns`.
fn record(e: MdEvent, engine_ns: u64) -> Rec {
    match e {
        MdEvent::Level {
            symbol,
            seq,
            side,
            price,
            quantity,
            orders,
        } => Rec::Level(MdDepth::new(
            symbol, side, false, seq, engine_ns, price, quantity, orders,
        )),
        MdEvent::Trade {
            symbol,
            seq,
            aggressor,
            trade_id,
            price,
            quantity,
        } => Rec::Trade(MdTrade::new(
            symbol, aggressor, seq, engine_ns, trade_id, price, quantity,
        )),
    }
}

impl Router {
    /// A book event of a local shard (the [`Sink`] side).
    #[inline]
    pub fn md_event(&mut self, e: MdEvent) {
        let symbol = e.symbol();
        if !self.md.interested(symbol) {
            return;
        }
        let rec = record(e, self.md.engine_ns);
        match rec {
            Rec::Trade(t) => {
                if let Some(b) = self.md.bridge.as_mut() {
                    b.offer(BridgeRecord::Trade(t));
                }
            }
            // Checksums only for subscribers (not for the NATS bridge alone).
            Rec::Level(_) if self.md.mask(symbol).iter().any(|&w| w != 0) => {
                if let Some(flag) = self.md.touched_flag.get_mut(symbol as usize)
                    && !*flag
                {
                    *flag = true;
                    self.md.touched.push(symbol);
                }
            }
            _ => {}
        }
        self.md_broadcast(rec);
    }

    /// The top of a local book after a command (the [`Sink`] side).
    pub fn md_top(&mut self, symbol: u32, seq: u64, bid: TopLevel, ask: TopLevel) {
        let Some(last) = self.md.last_top.get_mut(symbol as usize) else {
            return;
        };
        if *last == (bid, ask) {
            return;
        }
        *last = (bid, ask);
        let top = MdTopOfBook::new(symbol, seq, self.md.engine_ns, bid, ask);
        if let Some(b) = self.md.bridge.as_mut() {
            b.offer(BridgeRecord::Top(top));
        }
        self.md_broadcast(Rec::Top(top));
    }

    /// One copy to each subscribing core (this one: straight to the fan-out).
    fn md_broadcast(&mut self, rec: Rec) {
        let symbol = rec.symbol();
        let words = self.md.words;
        let at = symbol as usize * words;
        for w in 0..words {
            let mut bits = self.md.interest.get(at + w).copied().unwrap_or(0);
            while bits != 0 {
                let core = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if core == self.core {
                    self.md_fanout(&rec);
                } else if core < self.staging.len() {
                    self.stage(core, rec.into_msg());
                }
            }
        }
    }

    /// After a batch of a local shard: a checksum for each symbol whose
    /// depth changed in it.
    pub fn md_checksums<M: Matcher>(&mut self, shard: &M) {
        if self.md.touched.is_empty() {
            return;
        }
        let touched = std::mem::take(&mut self.md.touched);
        for &symbol in &touched {
            if let Some(f) = self.md.touched_flag.get_mut(symbol as usize) {
                *f = false;
            }
            let checksum = book_checksum(shard, symbol);
            let status = MdStatus::new(
                symbol,
                MdStatusEvent::Checksum,
                shard.md_seq(symbol),
                self.md.engine_ns,
                checksum,
                0,
            );
            self.md_broadcast(Rec::Checksum(status));
        }
        let mut touched = touched;
        touched.clear();
        self.md.touched = touched;
    }

    /// A record for this core's subscribers of its symbol.
    pub fn md_fanout(&mut self, rec: &Rec) {
        let symbol = rec.symbol();
        let wanted = rec.wanted_by();
        let Some(list) = self.md.subs.get(symbol as usize) else {
            return;
        };
        let max_queue = self.md.max_queue;
        let mut conflate = false;
        for sub in list {
            if sub.flags & wanted == 0 {
                continue;
            }
            if matches!(rec, Rec::Top(_)) && sub.flags & SUBSCRIBE_CONFLATE as u8 != 0 {
                conflate = true;
                continue;
            }
            match deliver(&mut self.conns, &mut self.newly_dirty, sub, max_queue, rec) {
                Delivery::Done => self.counters.md_messages += 1,
                Delivery::OverLimit => self.md.cut.push(sub.slot),
                Delivery::Gone => {}
            }
        }
        if conflate && let Rec::Top(top) = rec {
            let pending = &mut self.md.conflated[symbol as usize];
            if pending.is_none() {
                self.md.conflated_list.push(symbol);
            }
            *pending = Some(*top);
        }
        self.md_cut_offs();
    }

    /// Sends the conflated tops of this iteration (the latest per symbol).
    pub fn md_flush_conflated(&mut self) {
        if self.md.conflated_list.is_empty() {
            return;
        }
        let list = std::mem::take(&mut self.md.conflated_list);
        let max_queue = self.md.max_queue;
        for &symbol in &list {
            let Some(top) = self.md.conflated[symbol as usize].take() else {
                continue;
            };
            let rec = Rec::Top(top);
            for sub in &self.md.subs[symbol as usize] {
                let wants = (SUBSCRIBE_TOP_OF_BOOK | SUBSCRIBE_CONFLATE) as u8;
                if sub.flags & wants != wants {
                    continue;
                }
                match deliver(&mut self.conns, &mut self.newly_dirty, sub, max_queue, &rec) {
                    Delivery::Done => self.counters.md_messages += 1,
                    Delivery::OverLimit => self.md.cut.push(sub.slot),
                    Delivery::Gone => {}
                }
            }
        }
        let mut list = list;
        list.clear();
        self.md.conflated_list = list;
        self.md_cut_offs();
    }

    /// Cuts off the sessions the last fan-out found over the limit.
    fn md_cut_offs(&mut self) {
        while let Some(slot) = self.md.cut.pop() {
            let engine_ns = self.md.engine_ns;
            if self.md_drop_all(slot) {
                self.counters.md_cut_offs += 1;
                if let Some(c) = self.conns.slot_mut(slot) {
                    let msg = MdStatus::new(ALL_SYMBOLS, MdStatusEvent::CutOff, 0, engine_ns, 0, 0);
                    c.out.push(&msg);
                    if !c.dirty {
                        c.dirty = true;
                        self.newly_dirty.push(slot);
                    }
                    tracing::warn!(
                        "core {}: session {:#x} fell {} bytes behind its market data: cut off",
                        self.core,
                        c.session.id.get(),
                        c.out_bytes()
                    );
                }
            }
        }
    }

    /// Ends every subscription of the connection in `slot` (a close or a
    /// cut-off). False when it had none.
    pub fn md_drop_all(&mut self, slot: u32) -> bool {
        let Some(c) = self.conns.slot_mut(slot) else {
            return false;
        };
        let Some(md) = c.md.as_mut() else {
            return false;
        };
        if md.subs.is_empty() {
            return false;
        }
        let session = c.session.id;
        let subs: Vec<(u32, SessionSub)> = md.subs.drain().collect();
        for (symbol, sub) in subs {
            if sub.active {
                self.md_leave(symbol, session);
            }
        }
        true
    }

    /// Takes `session` off `symbol`'s list and tells the owner.
    fn md_leave(&mut self, symbol: u32, session: SessionId) {
        if let Some(list) = self.md.subs.get_mut(symbol as usize)
            && let Some(i) = list.iter().position(|s| s.session == session)
        {
            list.swap_remove(i);
        }
        self.md_unsub_owner(symbol);
    }

    /// Tells `symbol`'s owner that one subscription of this core ended.
    fn md_unsub_owner(&mut self, symbol: u32) {
        match self.md.owner(symbol) {
            Some(owner) if owner == self.core => {
                let ok = self.md.count_unsub(symbol, self.core);
                debug_assert!(ok, "an unsubscribe without a subscription");
            }
            Some(owner) => self.stage(
                owner,
                Msg::MdUnsub {
                    symbol,
                    core: self.core as u32,
                },
            ),
            None => self.counters.internal_errors += 1,
        }
    }

    /// A part of the answer to a subscription of a session of this core.
    pub fn md_part(&mut self, session: SessionId, ticket: u32, part: Part) {
        let symbol = match part {
            Part::Status(m) => m.symbol.get(),
            Part::Row(m) => m.symbol.get(),
            Part::TopHalf { symbol, .. } => symbol,
        };
        let slot = session.slot();
        let current = self.conns.by_session(session).and_then(|c| {
            if c.phase() != Phase::Active || c.final_sent {
                return None;
            }
            c.md.as_ref()?
                .subs
                .get(&symbol)
                .filter(|s| s.ticket == ticket)
                .copied()
        });
        let subscribed =
            matches!(part, Part::Status(m) if m.event == MdStatusEvent::Subscribed as u8);
        let Some(sub) = current else {
            if subscribed {
                // The owner counted a subscription nobody is left to take.
                self.md_unsub_owner(symbol);
            }
            return;
        };
        let Some(c) = self.conns.slot_mut(slot) else {
            return;
        };
        match part {
            Part::Status(m) => {
                if subscribed {
                    if let Some(s) = c.md.as_mut().and_then(|md| md.subs.get_mut(&symbol)) {
                        s.active = true;
                        s.seq = m.seq.get();
                        s.engine_ns = m.engine_ns.get();
                    }
                    if let Some(list) = self.md.subs.get_mut(symbol as usize) {
                        list.push(Sub {
                            slot,
                            session,
                            flags: sub.flags,
                        });
                    }
                } else if !sub.active {
                    return;
                }
                c.out.push(&m);
            }
            Part::Row(m) => {
                if !sub.active {
                    return;
                }
                c.out.push(&m);
            }
            Part::TopHalf { ask, level, .. } => {
                if !sub.active {
                    return;
                }
                if !ask {
                    if let Some(s) = c.md.as_mut().and_then(|md| md.subs.get_mut(&symbol)) {
                        s.bid = level;
                    }
                    return;
                }
                c.out.push(&MdTopOfBook::new(
                    symbol,
                    sub.seq,
                    sub.engine_ns,
                    sub.bid,
                    level,
                ));
            }
        }
        self.counters.md_messages += 1;
        if !c.dirty {
            c.dirty = true;
            self.newly_dirty.push(slot);
        }
    }

    /// Delivers a part here or stages it for the session's core.
    fn md_send_part(&mut self, session: SessionId, ticket: u32, part: Part) {
        let home = session.core();
        if home == self.core {
            self.md_part(session, ticket, part);
        } else if home < self.staging.len() {
            self.stage(home, part_msg(session, ticket, part));
        } else {
            self.counters.internal_errors += 1;
        }
    }
}

/// What became of one record for one subscriber.
enum Delivery {
    Done,
    /// Its unsent output is past the limit: to be cut off.
    OverLimit,
    /// The connection is gone or closing.
    Gone,
}

/// Adds `rec` to a subscriber's output unless it is gone or over `max_queue`.
#[inline]
fn deliver(
    conns: &mut Slab,
    newly_dirty: &mut Vec<u32>,
    sub: &Sub,
    max_queue: usize,
    rec: &Rec,
) -> Delivery {
    let Some(c) = conns.slot_mut(sub.slot) else {
        return Delivery::Gone;
    };
    if c.session.id != sub.session || c.final_sent {
        return Delivery::Gone;
    }
    if c.out_bytes() > max_queue {
        return Delivery::OverLimit;
    }
    rec.push(c);
    if !c.dirty {
        c.dirty = true;
        newly_dirty.push(sub.slot);
    }
    Delivery::Done
}

/// A part as a ring message.
fn part_msg(session: SessionId, ticket: u32, part: Part) -> Msg {
    match part {
        Part::Status(msg) => Msg::MdStatusTo {
            session,
            ticket,
            msg,
        },
        Part::Row(msg) => Msg::MdRowTo {
            session,
            ticket,
            msg,
        },
        Part::TopHalf { symbol, ask, level } => Msg::MdTopHalfTo {
            session,
            ticket,
            symbol,
            ask,
            price: level.price,
            quantity: level.quantity,
            orders: level.orders,
        },
    }
}

/// The checksum of a local book.
fn book_checksum<M: Matcher>(shard: &M, symbol: u32) -> u32 {
    wire::book_checksum(
        shard
            .md_levels(symbol, Side::Buy)
            .map(|l| (l.price, l.quantity)),
        shard
            .md_levels(symbol, Side::Sell)
            .map(|l| (l.price, l.quantity)),
    )
}

/// The best level of a side of a local book.
fn best<M: Matcher>(shard: &M, symbol: u32, side: Side) -> TopLevel {
    shard
        .md_levels(symbol, side)
        .next()
        .map_or(TopLevel::default(), |l| TopLevel {
            price: l.price,
            quantity: l.quantity,
            orders: l.orders,
        })
}

impl<M: Matcher + Snapshot> State<M> {
    /// A Subscribe of the session in `slot` (checked by the session layer):
    /// for one symbol or, with [`ALL_SYMBOLS`], every symbol.
    pub fn md_subscribe(&mut self, slot: u32, symbol: u32, flags: u32) {
        self.router.counters.md_subscribes += 1;
        if symbol == ALL_SYMBOLS {
            for s in 0..self.cfg.placement.len() as u32 {
                self.md_subscribe_one(slot, s, flags as u8);
            }
        } else {
            self.md_subscribe_one(slot, symbol, flags as u8);
        }
    }

    fn md_subscribe_one(&mut self, slot: u32, symbol: u32, flags: u8) {
        let engine_ns = self.router.md.engine_ns;
        let Some(c) = self.router.conns.slot_mut(slot) else {
            return;
        };
        let session = c.session.id;
        let md = c.md.get_or_insert_with(Default::default);
        md.next_ticket = md.next_ticket.wrapping_add(1);
        let ticket = md.next_ticket;
        let old = md.subs.remove(&symbol);
        if flags != 0 {
            md.subs.insert(
                symbol,
                SessionSub {
                    flags,
                    ticket,
                    active: false,
                    seq: 0,
                    engine_ns: 0,
                    bid: TopLevel::default(),
                },
            );
        } else {
            let msg = MdStatus::new(symbol, MdStatusEvent::Unsubscribed, 0, engine_ns, 0, 0);
            c.out.push(&msg);
            if !c.dirty {
                c.dirty = true;
                self.router.newly_dirty.push(slot);
            }
        }
        if old.is_some_and(|o| o.active) {
            self.router.md_leave(symbol, session);
        }
        if flags == 0 {
            return;
        }
        let request = Request {
            session,
            symbol,
            flags,
            ticket,
        };
        match self.router.md.owner(symbol) {
            Some(owner) if owner == self.cfg.index => self.router.md.requests.push_back(request),
            Some(owner) => self.router.stage(
                owner,
                Msg::MdSub {
                    session,
                    symbol,
                    flags,
                    ticket,
                },
            ),
            None => self.router.counters.internal_errors += 1,
        }
    }

    /// Serves waiting subscription requests for local symbols, up to
    /// [`SNAPSHOT_ROWS_PER_ITERATION`] snapshot rows (at least one request).
    pub fn md_serve(&mut self) {
        let mut rows = 0;
        while rows < SNAPSHOT_ROWS_PER_ITERATION {
            let Some(r) = self.router.md.requests.pop_front() else {
                return;
            };
            rows += self.md_serve_one(r);
        }
    }

    /// Answers one request from the owner's book; returns the rows sent.
    fn md_serve_one(&mut self, r: Request) -> usize {
        let started = super::super::monotonic_ns();
        let Some(p) = self.cfg.placement.get(r.symbol as usize).copied() else {
            self.router.counters.internal_errors += 1;
            return 0;
        };
        let Some(shard) = self.shards.get(p.shard as usize) else {
            self.router.counters.internal_errors += 1;
            return 0;
        };
        let symbol = r.symbol;
        let engine_ns = self.router.md.engine_ns;
        let seq = shard.md_seq(symbol);
        let depth = r.flags & SUBSCRIBE_DEPTH as u8 != 0;
        let (bid, ask) = (
            best(shard, symbol, Side::Buy),
            best(shard, symbol, Side::Sell),
        );
        let levels = if depth {
            shard.md_levels(symbol, Side::Buy).count() + shard.md_levels(symbol, Side::Sell).count()
        } else {
            0
        };
        let router = &mut self.router;
        router.md.count_sub(symbol, r.session.core());
        // Tops are compared with the last one sent: start from now.
        if let Some(last) = router.md.last_top.get_mut(symbol as usize) {
            *last = (bid, ask);
        }
        let (session, ticket) = (r.session, r.ticket);
        let status =
            |event, checksum| MdStatus::new(symbol, event, seq, engine_ns, checksum, levels as u32);
        router.md_send_part(
            session,
            ticket,
            Part::Status(status(MdStatusEvent::Subscribed, 0)),
        );
        if depth {
            for side in [Side::Buy, Side::Sell] {
                for l in shard.md_levels(symbol, side) {
                    let row = MdDepth::new(
                        symbol, side, true, seq, engine_ns, l.price, l.quantity, l.orders,
                    );
                    router.md_send_part(session, ticket, Part::Row(row));
                }
            }
            let checksum = book_checksum(shard, symbol);
            router.md_send_part(
                session,
                ticket,
                Part::Status(status(MdStatusEvent::SnapshotEnd, checksum)),
            );
        }
        if r.flags & SUBSCRIBE_TOP_OF_BOOK as u8 != 0 {
            for (ask, level) in [(false, bid), (true, ask)] {
                router.md_send_part(session, ticket, Part::TopHalf { symbol, ask, level });
            }
        }
        let c = &mut router.counters;
        c.md_snapshots += 1;
        c.md_snapshot_rows += levels as u64;
        c.md_snapshot_ns += super::super::monotonic_ns().saturating_sub(started);
        levels.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interest_counts_per_core_and_symbol() {
        let placement: Arc<[Placement]> = (0..3)
            .map(|s| Placement {
                core: s % 2,
                shard: 0,
            })
            .collect();
        let mut md = MarketData::new(0, 70, placement, 1 << 20, None);
        assert!(!md.interested(1));
        md.count_sub(1, 3);
        md.count_sub(1, 3);
        md.count_sub(1, 65);
        assert!(md.interested(1));
        assert_eq!(md.cores_of(1).collect::<Vec<_>>(), [3, 65]);
        assert!(md.count_unsub(1, 3));
        assert_eq!(md.cores_of(1).collect::<Vec<_>>(), [3, 65]);
        assert!(md.count_unsub(1, 3));
        assert!(md.count_unsub(1, 65));
        assert!(!md.interested(1));
        assert!(!md.count_unsub(1, 65), "never below zero");
        assert_eq!(md.owner(2), Some(0));
        assert_eq!(md.owner(7), None);
    }
}
