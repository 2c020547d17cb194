//! Market data (protocol version 2): a subscriber's logic, free of I/O.
//!
//! A [`FeedChecker`] is one subscriber connection's view of the feed: it
//! writes the Subscribe requests into a caller's buffer and reads the
//! server's frames from the caller's bytes (with the run clock and the wall
//! clock passed in), exactly like [`crate::session::Session`] does for
//! trading. Per subscribed symbol it keeps
//!
//! - a state: waiting for the answer to a Subscribe (everything of the
//!   symbol is discarded meanwhile, as `/work/md-spec.md` and PROTOCOL.md
//!   ask), reading a depth snapshot, or live;
//! - with depth, a local book by price level, built from the snapshot
//!   (`MdStatus(Subscribed)`, the rows, `MdStatus(SnapshotEnd)`) and the
//!   `MdDepth` updates;
//! - the last sequence number: with depth every `MdTrade` and `MdDepth`
//!   update must be the last one plus 1; trades alone must increase
//!   strictly (the depth updates between them take numbers too); tops of
//!   book must not go back.
//!
//! Every checksum (`SnapshotEnd`, `MdStatus(Checksum)`) is compared with
//! [`wire::book_checksum`] of the local book at the same sequence number,
//! and with depth every `MdTopOfBook` with the local best levels. A gap or
//! a mismatch is counted, described (bounded, [`Violations`]) and repaired
//! the documented way: the Subscribe is sent again for that symbol and its
//! messages are discarded until the new `Subscribed`. A cut-off
//! (`MdStatus(CutOff)`) is counted and the whole subscription sent again.
//!
//! Nothing the server sends panics: a message that breaks the rules is
//! counted in [`MdCounters::unexpected`] and described; a `SessionError`, a
//! refused Subscribe or bytes that do not decode end the connection with
//! an [`MdFailure`].
//!
//! Feed latency is the wall clock at receipt (CLOCK_REALTIME, read once per
//! read by the caller) minus the `engine_ns` of each `MdTrade` and
//! `MdDepth` update: both ends on one host clock.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;
use wire::{
    ALL_SYMBOLS, Decoder, Frame, Kind, MdDepth, MdStatus, MdStatusEvent, MdTopOfBook, MdTrade,
    RejectReason, SUBSCRIBE_CONFLATE, SUBSCRIBE_DEPTH, SUBSCRIBE_TOP_OF_BOOK, SUBSCRIBE_TRADES,
    Side, Subscribe, SymbolEntry, TopLevel,
};

use crate::report::{Num, group, si};
use crate::session::{SessionFailure, Window};
use crate::stats::{LATENCY_NS_MAX, Percentiles, new_histogram};
use crate::verify::Violations;

/// Most `--subscribers` (each is a connection, a file descriptor and a
/// receive buffer).
pub const SUBSCRIBERS_MAX: usize = 10_000;
/// Most `--subscriber-threads`.
pub const SUBSCRIBER_THREADS_MAX: usize = 256;

/// The market-data part of a run's plan (`--subscribe` and companions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MdPlan {
    /// What to subscribe to.
    pub symbols: SymbolSpec,
    /// `Subscribe.flags` (trades always).
    pub flags: u32,
    /// Subscriber connections.
    pub subscribers: usize,
    /// Threads they run on.
    pub threads: usize,
}

/// The symbols of `--subscribe`, as written: `all`, or names and ids that
/// the server's directory resolves (see [`resolve_symbols`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SymbolSpec {
    /// Every symbol: one Subscribe with symbol [`ALL_SYMBOLS`].
    All,
    /// Names or ids from the directory, in the order given.
    List(Vec<String>),
}

impl SymbolSpec {
    /// Parses `all` or a comma-separated list (`BTC-USD,ETH-USD`, `0,3`).
    pub fn parse(text: &str) -> Result<SymbolSpec, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("all") {
            return Ok(SymbolSpec::All);
        }
        let list: Vec<String> = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if list.is_empty() {
            return Err(format!(
                "`{text}` names no symbol; give `all` or comma-separated names or ids from the \
                 server's directory"
            ));
        }
        Ok(SymbolSpec::List(list))
    }
}

/// What a subscriber subscribes to, resolved against the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One Subscribe for [`ALL_SYMBOLS`]; the directory's symbols answer.
    All,
    /// One Subscribe per symbol id.
    Symbols(Vec<u32>),
}

/// Resolves `spec` against the server's directory: each entry is a name
/// (exact) or an id listed there. Duplicates are dropped.
pub fn resolve_symbols(spec: &SymbolSpec, directory: &[SymbolEntry]) -> Result<Target, String> {
    let names = match spec {
        SymbolSpec::All => return Ok(Target::All),
        SymbolSpec::List(names) => names,
    };
    let mut ids = Vec::with_capacity(names.len());
    for name in names {
        let by_name = directory
            .iter()
            .find(|e| e.name() == name.as_bytes())
            .map(|e| e.symbol.get());
        let by_id = || {
            let id: u32 = name.parse().ok()?;
            directory.iter().any(|e| e.symbol.get() == id).then_some(id)
        };
        let Some(id) = by_name.or_else(by_id) else {
            let listed: Vec<String> = directory
                .iter()
                .take(8)
                .map(|e| String::from_utf8_lossy(e.name()).into_owned())
                .collect();
            return Err(format!(
                "--subscribe {name}: no such symbol in the server's directory (it lists {} \
                 symbols: {}{}); give names or ids from it, or `all`",
                directory.len(),
                listed.join(", "),
                if directory.len() > listed.len() {
                    ", ..."
                } else {
                    ""
                }
            ));
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(Target::Symbols(ids))
}

/// The `Subscribe.flags` of `--depth`, `--top` and `--conflate` (trades
/// always).
pub fn subscribe_flags(depth: bool, top: bool, conflate: bool) -> u32 {
    let mut flags = SUBSCRIBE_TRADES;
    if depth {
        flags |= SUBSCRIBE_DEPTH;
    }
    if top {
        flags |= SUBSCRIBE_TOP_OF_BOOK;
    }
    if conflate {
        flags |= SUBSCRIBE_CONFLATE;
    }
    flags
}

/// The channels of `flags` in words: `trades+depth+top (conflated)`.
pub fn channels(flags: u32) -> String {
    let mut out = String::from("trades");
    if flags & SUBSCRIBE_DEPTH != 0 {
        out.push_str("+depth");
    }
    if flags & SUBSCRIBE_TOP_OF_BOOK != 0 {
        out.push_str("+top");
        if flags & SUBSCRIBE_CONFLATE != 0 {
            out.push_str(" (conflated)");
        }
    }
    out
}

/// What a subscriber counted. Message counts (`messages` to `statuses`)
/// and the feed latency cover the measured window; everything else the
/// whole run (snapshots are taken before the window starts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MdCounters {
    /// Market-data messages received in the window (every kind below).
    pub messages: u64,
    /// `MdTrade` messages in the window.
    pub trades: u64,
    /// `MdDepth` updates in the window.
    pub depth_updates: u64,
    /// `MdDepth` snapshot rows in the window.
    pub snapshot_rows: u64,
    /// `MdTopOfBook` messages in the window.
    pub tops: u64,
    /// `MdStatus` messages in the window.
    pub statuses: u64,
    /// Trades, depth updates and tops of the whole run (the evidence that
    /// the feed followed the trading at all).
    pub updates_total: u64,
    /// Snapshots completed: a `Subscribed` answer taken (with depth, with
    /// its rows and a `SnapshotEnd`).
    pub snapshots: u64,
    /// Sequence numbers out of order: with depth, not the last plus 1;
    /// trades alone, not above the last; a top of book going back.
    pub gaps: u64,
    /// Checksums (`SnapshotEnd` and `MdStatus(Checksum)`) equal to the
    /// local book's.
    pub checksum_ok: u64,
    /// Checksums that differ from the local book's.
    pub checksum_mismatches: u64,
    /// Checksums that could not be compared: their sequence number was
    /// already behind the local book when they arrived.
    pub checksums_unchecked: u64,
    /// Tops of book equal to the local best levels (depth only).
    pub tops_ok: u64,
    /// Tops of book that differ from the local best levels.
    pub top_mismatches: u64,
    /// Subscribes sent again for one symbol after a gap or a mismatch.
    pub resyncs: u64,
    /// `MdStatus(CutOff)`: the server dropped every subscription because
    /// this subscriber fell behind (each answered by subscribing again).
    pub cut_offs: u64,
    /// Messages of a symbol discarded while its Subscribe was unanswered.
    pub discarded: u64,
    /// Messages that break the protocol (a kind or a field a subscriber
    /// never gets, a snapshot out of shape, a symbol not subscribed).
    pub unexpected: u64,
    /// Other frames (server heartbeats).
    pub other: u64,
}

impl MdCounters {
    /// Adds another subscriber's counts.
    pub fn add(&mut self, o: &MdCounters) {
        self.messages += o.messages;
        self.trades += o.trades;
        self.depth_updates += o.depth_updates;
        self.snapshot_rows += o.snapshot_rows;
        self.tops += o.tops;
        self.statuses += o.statuses;
        self.updates_total += o.updates_total;
        self.snapshots += o.snapshots;
        self.gaps += o.gaps;
        self.checksum_ok += o.checksum_ok;
        self.checksum_mismatches += o.checksum_mismatches;
        self.checksums_unchecked += o.checksums_unchecked;
        self.tops_ok += o.tops_ok;
        self.top_mismatches += o.top_mismatches;
        self.resyncs += o.resyncs;
        self.cut_offs += o.cut_offs;
        self.discarded += o.discarded;
        self.unexpected += o.unexpected;
        self.other += o.other;
    }
}

/// Why a subscriber connection cannot go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MdFailure {
    /// A SessionError, or bytes that do not decode.
    Session(SessionFailure),
    /// The server refused a Subscribe.
    Refused {
        /// The symbol the Subscribe named.
        symbol: u32,
        /// The reason (raw wire value).
        reason: u16,
    },
}

impl std::fmt::Display for MdFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MdFailure::Session(s) => s.fmt(f),
            MdFailure::Refused { symbol, reason } => {
                let name =
                    RejectReason::from_wire(*reason).map_or("unknown reason", |r| r.as_str());
                let which = if *symbol == ALL_SYMBOLS {
                    "all symbols".to_string()
                } else {
                    format!("symbol {symbol}")
                };
                write!(
                    f,
                    "the server refused the market-data Subscribe for {which}: {name} (reason \
                     {reason})"
                )?;
                if *reason == RejectReason::NotSupported.to_wire() {
                    write!(
                        f,
                        "; it serves no market data (a protocol version 1 server, or one built \
                         before market data)"
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for MdFailure {}

/// One price level of a local book.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Level {
    /// Total open quantity.
    pub quantity: u64,
    /// Orders.
    pub orders: u32,
}

/// A local book by price level.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalBook {
    /// Bids by price (best: the last).
    pub bids: BTreeMap<i64, Level>,
    /// Asks by price (best: the first).
    pub asks: BTreeMap<i64, Level>,
}

impl LocalBook {
    /// Sets a level (quantity 0 removes it).
    pub fn set(&mut self, side: Side, price: i64, level: Level) {
        let levels = match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        };
        if level.quantity == 0 {
            levels.remove(&price);
        } else {
            levels.insert(price, level);
        }
    }

    /// [`wire::book_checksum`] of this book.
    pub fn checksum(&self) -> u32 {
        wire::book_checksum(
            self.bids.iter().rev().map(|(p, l)| (*p, l.quantity)),
            self.asks.iter().map(|(p, l)| (*p, l.quantity)),
        )
    }

    /// The best bid as a top of book has it (all zero when empty).
    pub fn best_bid(&self) -> TopLevel {
        self.bids
            .iter()
            .next_back()
            .map_or(TopLevel::default(), |(p, l)| top(*p, l))
    }

    /// The best ask as a top of book has it (all zero when empty).
    pub fn best_ask(&self) -> TopLevel {
        self.asks
            .iter()
            .next()
            .map_or(TopLevel::default(), |(p, l)| top(*p, l))
    }

    fn clear(&mut self) {
        self.bids.clear();
        self.asks.clear();
    }
}

fn top(price: i64, l: &Level) -> TopLevel {
    TopLevel {
        price,
        quantity: l.quantity,
        orders: l.orders,
    }
}

/// Where a symbol's stream stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedState {
    /// A Subscribe is unanswered: the symbol's messages are discarded.
    Awaiting,
    /// Reading the depth snapshot of sequence `seq`: `rows` of `levels` so far.
    Snapshot {
        /// The snapshot's sequence number.
        seq: u64,
        /// Rows announced by `Subscribed`.
        levels: u32,
        /// Rows received.
        rows: u32,
    },
    /// Live after sequence number `last`.
    Live {
        /// The last sequence number taken (with depth: applied to the book).
        last: u64,
    },
}

/// A check that waits for the local book to reach its sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Checksum {
        seq: u64,
        checksum: u32,
    },
    Top {
        seq: u64,
        bid: TopLevel,
        ask: TopLevel,
    },
}

impl Pending {
    fn seq(&self) -> u64 {
        match self {
            Pending::Checksum { seq, .. } | Pending::Top { seq, .. } => *seq,
        }
    }
}

/// One subscribed symbol.
#[derive(Clone, Debug)]
struct SymbolFeed {
    id: u32,
    state: FeedState,
    /// Subscribes sent for it and not answered yet (a resync and a
    /// cut-off's resubscription may overlap).
    unanswered: u32,
    book: LocalBook,
    /// The last top of book's sequence number (they must not go back).
    last_top: u64,
    /// Checks whose sequence number the book has not reached yet (with
    /// depth; bounded: see [`PENDING_MAX`]).
    pending: Vec<Pending>,
}

/// Most checks that may wait for the book per symbol; beyond, the oldest
/// is given up (counted unchecked).
const PENDING_MAX: usize = 64;

impl SymbolFeed {
    fn new(id: u32) -> Self {
        SymbolFeed {
            id,
            state: FeedState::Awaiting,
            unanswered: 0,
            book: LocalBook::default(),
            last_top: 0,
            pending: Vec::new(),
        }
    }

    fn last(&self) -> Option<u64> {
        match self.state {
            FeedState::Live { last } => Some(last),
            _ => None,
        }
    }
}

/// Symbol id to feed: a table when the ids are small (a directory's ids
/// are its positions), a hash map otherwise.
enum SymbolIndex {
    Dense(Vec<u32>),
    Sparse(HashMap<u32, usize>),
}

/// Largest id the dense table covers.
const DENSE_IDS_MAX: u32 = 1 << 20;

impl SymbolIndex {
    fn new(feeds: &[SymbolFeed]) -> Self {
        let max = feeds.iter().map(|f| f.id).max().unwrap_or(0);
        if max < DENSE_IDS_MAX {
            let mut table = vec![u32::MAX; max as usize + 1];
            for (i, f) in feeds.iter().enumerate() {
                table[f.id as usize] = i as u32;
            }
            SymbolIndex::Dense(table)
        } else {
            SymbolIndex::Sparse(feeds.iter().enumerate().map(|(i, f)| (f.id, i)).collect())
        }
    }

    #[inline]
    fn get(&self, id: u32) -> Option<usize> {
        match self {
            SymbolIndex::Dense(table) => table
                .get(id as usize)
                .filter(|&&i| i != u32::MAX)
                .map(|&i| i as usize),
            SymbolIndex::Sparse(map) => map.get(&id).copied(),
        }
    }
}

/// A problem found on a symbol: what to count and say.
enum Problem {
    Gap,
    Checksum,
    Top,
    Unexpected,
}

/// One subscriber connection's market-data logic (see the module docs).
pub struct FeedChecker {
    target: Target,
    flags: u32,
    depth: bool,
    decoder: Decoder,
    window: Window,
    feeds: Vec<SymbolFeed>,
    index: SymbolIndex,
    /// Symbols whose Subscribe must be sent again (a resync).
    resubscribe: Vec<u32>,
    /// The whole subscription must be sent again (a cut-off).
    resubscribe_all: bool,
    counters: MdCounters,
    latency: Histogram<u64>,
    problems: Violations,
}

impl FeedChecker {
    /// A subscriber of `target` with `flags` (trades are always added);
    /// `directory` is the server's symbol list (the symbols of
    /// [`Target::All`]); frames up to `max_frame_bytes`; messages and
    /// latency count in `window` (run clock).
    pub fn new(
        target: Target,
        flags: u32,
        directory: &[u32],
        max_frame_bytes: u32,
        window: Window,
    ) -> Self {
        let ids: Vec<u32> = match &target {
            Target::All => directory.to_vec(),
            Target::Symbols(ids) => ids.clone(),
        };
        let mut feeds = Vec::with_capacity(ids.len());
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        for id in ids {
            if seen.insert(id) {
                feeds.push(SymbolFeed::new(id));
            }
        }
        let index = SymbolIndex::new(&feeds);
        // One Subscribe per symbol, even if one was named twice.
        let target = match target {
            Target::All => Target::All,
            Target::Symbols(_) => Target::Symbols(feeds.iter().map(|f| f.id).collect()),
        };
        FeedChecker {
            target,
            flags: flags | SUBSCRIBE_TRADES,
            depth: flags & SUBSCRIBE_DEPTH != 0,
            decoder: Decoder::for_client(max_frame_bytes),
            window,
            feeds,
            index,
            resubscribe: Vec::new(),
            resubscribe_all: false,
            counters: MdCounters::default(),
            latency: new_histogram(),
            problems: Violations::default(),
        }
    }

    /// Writes the whole subscription (one Subscribe for all symbols, or
    /// one per symbol) into `out`; from now on the symbols' messages are
    /// discarded until their `Subscribed`.
    pub fn write_subscribe(&mut self, out: &mut Vec<u8>) {
        for f in &mut self.feeds {
            f.state = FeedState::Awaiting;
            f.unanswered += 1;
            f.pending.clear();
        }
        match &self.target {
            Target::All => push_subscribes(out, &[Subscribe::new(ALL_SYMBOLS, self.flags)]),
            Target::Symbols(ids) => {
                let list: Vec<Subscribe> = ids
                    .iter()
                    .map(|&id| Subscribe::new(id, self.flags))
                    .collect();
                push_subscribes(out, &list);
            }
        }
        self.resubscribe.clear();
        self.resubscribe_all = false;
    }

    /// Writes the Subscribes that resynchronisation and cut-offs asked for
    /// since the last call; returns how many symbols (or 1 for a whole
    /// subscription) were asked again.
    pub fn write_requests(&mut self, out: &mut Vec<u8>) -> usize {
        if self.resubscribe_all {
            // Everything is sent again: the per-symbol requests go with it.
            for f in &mut self.feeds {
                f.unanswered += 1;
            }
            let n = match &self.target {
                Target::All => 1,
                Target::Symbols(ids) => ids.len(),
            };
            match &self.target {
                Target::All => push_subscribes(out, &[Subscribe::new(ALL_SYMBOLS, self.flags)]),
                Target::Symbols(ids) => {
                    let list: Vec<Subscribe> = ids
                        .iter()
                        .map(|&id| Subscribe::new(id, self.flags))
                        .collect();
                    push_subscribes(out, &list);
                }
            }
            self.resubscribe.clear();
            self.resubscribe_all = false;
            return n;
        }
        if self.resubscribe.is_empty() {
            return 0;
        }
        let list: Vec<Subscribe> = self
            .resubscribe
            .iter()
            .map(|&id| Subscribe::new(id, self.flags))
            .collect();
        for &id in &self.resubscribe {
            if let Some(i) = self.index.get(id) {
                self.feeds[i].unanswered += 1;
            }
        }
        push_subscribes(out, &list);
        self.resubscribe.clear();
        list.len()
    }

    /// Whether [`FeedChecker::write_requests`] has something to write.
    pub fn has_requests(&self) -> bool {
        self.resubscribe_all || !self.resubscribe.is_empty()
    }

    /// Reads the whole frames at the front of `input`, received at
    /// `now_ns` (run clock) and `wall_ns` (CLOCK_REALTIME); returns the
    /// bytes they took (the caller keeps the partial frame at the end).
    pub fn on_bytes(
        &mut self,
        input: &[u8],
        now_ns: u64,
        wall_ns: u64,
    ) -> Result<usize, MdFailure> {
        let mut frames = self.decoder.frames(input);
        for frame in frames.by_ref() {
            self.on_frame(&frame, now_ns, wall_ns)?;
        }
        if let Some(e) = frames.error() {
            return Err(MdFailure::Session(SessionFailure::Decode(e)));
        }
        Ok(frames.consumed())
    }

    /// Takes one decoded frame (see [`FeedChecker::on_bytes`]).
    pub fn on_frame(
        &mut self,
        frame: &Frame<'_>,
        now_ns: u64,
        wall_ns: u64,
    ) -> Result<(), MdFailure> {
        let measured = self.window.contains(now_ns);
        let n = frame.len() as u64;
        match frame {
            Frame::MdTrade(list) => {
                self.count(measured, n, |c| &mut c.trades);
                for m in *list {
                    self.on_trade(m, measured, wall_ns);
                }
            }
            Frame::MdDepth(list) => {
                for m in *list {
                    if m.is_snapshot() {
                        self.count(measured, 1, |c| &mut c.snapshot_rows);
                    } else {
                        self.count(measured, 1, |c| &mut c.depth_updates);
                    }
                    self.on_depth(m, measured, wall_ns);
                }
            }
            Frame::MdTopOfBook(list) => {
                self.count(measured, n, |c| &mut c.tops);
                for m in *list {
                    self.on_top(m);
                }
            }
            Frame::MdStatus(list) => {
                self.count(measured, n, |c| &mut c.statuses);
                for m in *list {
                    self.on_status(m);
                }
            }
            Frame::Rejected(list) => {
                for r in *list {
                    if r.request_kind == Kind::Subscribe as u8 {
                        return Err(MdFailure::Refused {
                            symbol: r.symbol.get(),
                            reason: r.reason.get(),
                        });
                    }
                    self.unexpected(None, || {
                        format!(
                            "a Rejected for a request of kind {} (a subscriber sends only \
                             Subscribe and Heartbeat)",
                            r.request_kind
                        )
                    });
                }
            }
            Frame::SessionError(list) => {
                if let Some(e) = list.first() {
                    return Err(MdFailure::Session(SessionFailure::Closed {
                        code: e.code.get(),
                        detail: e.detail.get(),
                        text: String::from_utf8_lossy(e.text()).into_owned(),
                    }));
                }
            }
            Frame::ServerHeartbeat(_) => self.counters.other += n,
            other => {
                let kind = other.kind();
                for _ in 0..n {
                    self.unexpected(None, || {
                        format!("a {kind:?} message (a subscriber sends no orders)")
                    });
                }
            }
        }
        Ok(())
    }

    fn count(&mut self, measured: bool, n: u64, field: impl FnOnce(&mut MdCounters) -> &mut u64) {
        if measured {
            self.counters.messages += n;
            *field(&mut self.counters) += n;
        }
    }

    fn record_latency(&mut self, measured: bool, wall_ns: u64, engine_ns: u64) {
        if measured {
            let ns = wall_ns.saturating_sub(engine_ns).clamp(1, LATENCY_NS_MAX);
            let _ = self.latency.record(ns);
        }
    }

    /// The symbol's feed, or (counted) `None` when it is not subscribed
    /// or its Subscribe is unanswered.
    fn feed(&mut self, symbol: u32, what: &str) -> Option<usize> {
        match self.index.get(symbol) {
            Some(i) if self.feeds[i].state == FeedState::Awaiting => {
                self.counters.discarded += 1;
                None
            }
            Some(i) => Some(i),
            None => {
                self.unexpected(None, || {
                    format!("{what} for symbol {symbol}, not subscribed")
                });
                None
            }
        }
    }

    fn on_trade(&mut self, m: &MdTrade, measured: bool, wall_ns: u64) {
        self.counters.updates_total += 1;
        let Some(i) = self.feed(m.symbol.get(), "an MdTrade") else {
            return;
        };
        let seq = m.seq.get();
        let Some(last) = self.feeds[i].last() else {
            return self.problem(i, Problem::Unexpected, || {
                format!("an MdTrade (seq {seq}) inside the depth snapshot")
            });
        };
        let in_order = if self.depth {
            seq == last.wrapping_add(1)
        } else {
            seq > last
        };
        if !in_order {
            return self.gap(i, "MdTrade", seq, last);
        }
        self.feeds[i].state = FeedState::Live { last: seq };
        self.record_latency(measured, wall_ns, m.engine_ns.get());
        if self.depth {
            self.run_pending(i);
        }
    }

    fn on_depth(&mut self, m: &MdDepth, measured: bool, wall_ns: u64) {
        if !m.is_snapshot() {
            self.counters.updates_total += 1;
        }
        let Some(i) = self.feed(m.symbol.get(), "an MdDepth") else {
            return;
        };
        let seq = m.seq.get();
        if !self.depth {
            return self.problem(i, Problem::Unexpected, || {
                format!("an MdDepth (seq {seq}) on a subscription without depth")
            });
        }
        let Ok(side) = m.side() else {
            let side = m.side;
            return self.problem(i, Problem::Unexpected, || {
                format!("an MdDepth (seq {seq}) with side {side}, neither buy nor sell")
            });
        };
        let level = Level {
            quantity: m.quantity.get(),
            orders: m.orders.get(),
        };
        let price = m.price.get();
        let feed = &mut self.feeds[i];
        match (feed.state, m.is_snapshot()) {
            (
                FeedState::Snapshot {
                    seq: snap,
                    levels,
                    rows,
                },
                true,
            ) => {
                if seq != snap || rows >= levels || level.quantity == 0 {
                    return self.problem(i, Problem::Unexpected, || {
                        format!(
                            "snapshot row {} at seq {seq} (price {price}, quantity {}) of a \
                             snapshot of {levels} rows at seq {snap}",
                            rows + 1,
                            level.quantity
                        )
                    });
                }
                feed.book.set(side, price, level);
                feed.state = FeedState::Snapshot {
                    seq: snap,
                    levels,
                    rows: rows + 1,
                };
            }
            (FeedState::Live { last }, false) => {
                if seq != last.wrapping_add(1) {
                    return self.gap(i, "MdDepth", seq, last);
                }
                feed.book.set(side, price, level);
                feed.state = FeedState::Live { last: seq };
                self.record_latency(measured, wall_ns, m.engine_ns.get());
                self.run_pending(i);
            }
            (state, snapshot) => {
                let what = if snapshot { "snapshot row" } else { "update" };
                self.problem(i, Problem::Unexpected, || {
                    format!(
                        "an MdDepth {what} at seq {seq} out of place (symbol's state {state:?})"
                    )
                });
            }
        }
    }

    fn on_top(&mut self, m: &MdTopOfBook) {
        self.counters.updates_total += 1;
        let Some(i) = self.feed(m.symbol.get(), "an MdTopOfBook") else {
            return;
        };
        let seq = m.seq.get();
        if self.flags & SUBSCRIBE_TOP_OF_BOOK == 0 {
            return self.problem(i, Problem::Unexpected, || {
                format!("an MdTopOfBook (seq {seq}) on a subscription without top of book")
            });
        }
        let Some(last) = self.feeds[i].last() else {
            return self.problem(i, Problem::Unexpected, || {
                format!("an MdTopOfBook (seq {seq}) inside the depth snapshot")
            });
        };
        let feed = &mut self.feeds[i];
        if seq < feed.last_top {
            let before = feed.last_top;
            return self.gap(i, "MdTopOfBook", seq, before);
        }
        feed.last_top = seq;
        if !self.depth {
            return;
        }
        let check = Pending::Top {
            seq,
            bid: m.bid(),
            ask: m.ask(),
        };
        self.check_or_wait(i, check, last);
    }

    fn on_status(&mut self, m: &MdStatus) {
        let symbol = m.symbol.get();
        let seq = m.seq.get();
        let event = match m.event() {
            Ok(e) => e,
            Err(_) => {
                let event = m.event;
                return self.unexpected(None, || {
                    format!("an MdStatus with unknown event {event} (symbol {symbol}, seq {seq})")
                });
            }
        };
        if event == MdStatusEvent::CutOff {
            self.counters.cut_offs += 1;
            for f in &mut self.feeds {
                f.state = FeedState::Awaiting;
                f.pending.clear();
            }
            self.resubscribe_all = true;
            return;
        }
        if event == MdStatusEvent::Subscribed {
            return self.on_subscribed(m);
        }
        let Some(i) = self.feed(symbol, "an MdStatus") else {
            return;
        };
        match event {
            MdStatusEvent::SnapshotEnd => {
                let feed = &mut self.feeds[i];
                let FeedState::Snapshot {
                    seq: snap,
                    levels,
                    rows,
                } = feed.state
                else {
                    let state = feed.state;
                    return self.problem(i, Problem::Unexpected, || {
                        format!(
                            "a SnapshotEnd at seq {seq} out of place (symbol's state {state:?})"
                        )
                    });
                };
                let announced = m.levels.get();
                if seq != snap || rows != levels || announced != levels {
                    return self.problem(i, Problem::Unexpected, || {
                        format!(
                            "a SnapshotEnd at seq {seq} with {announced} levels after {rows} rows \
                             of a snapshot of {levels} at seq {snap}"
                        )
                    });
                }
                feed.state = FeedState::Live { last: snap };
                feed.last_top = snap;
                let ours = feed.book.checksum();
                let theirs = m.checksum.get();
                if ours == theirs {
                    self.counters.checksum_ok += 1;
                    self.counters.snapshots += 1;
                } else {
                    self.problem(i, Problem::Checksum, || {
                        format!(
                            "snapshot checksum at seq {seq}: the server's {theirs:#010x}, the \
                             local book's {ours:#010x}"
                        )
                    });
                }
            }
            MdStatusEvent::Checksum => {
                let Some(last) = self.feeds[i].last() else {
                    return self.problem(i, Problem::Unexpected, || {
                        format!("an MdStatus(Checksum) at seq {seq} inside the depth snapshot")
                    });
                };
                if !self.depth {
                    return self.problem(i, Problem::Unexpected, || {
                        format!("an MdStatus(Checksum) at seq {seq} without depth")
                    });
                }
                let check = Pending::Checksum {
                    seq,
                    checksum: m.checksum.get(),
                };
                self.check_or_wait(i, check, last);
            }
            MdStatusEvent::Unsubscribed => self.problem(i, Problem::Unexpected, || {
                "an MdStatus(Unsubscribed), though this subscriber never unsubscribes".into()
            }),
            MdStatusEvent::Subscribed | MdStatusEvent::CutOff => {}
        }
    }

    fn on_subscribed(&mut self, m: &MdStatus) {
        let symbol = m.symbol.get();
        let Some(i) = self.index.get(symbol) else {
            return self.unexpected(None, || {
                format!("an MdStatus(Subscribed) for symbol {symbol}, not subscribed")
            });
        };
        let seq = m.seq.get();
        let levels = m.levels.get();
        let feed = &mut self.feeds[i];
        if feed.unanswered == 0 {
            return self.problem(i, Problem::Unexpected, || {
                format!("an MdStatus(Subscribed) at seq {seq} that answers no Subscribe")
            });
        }
        feed.unanswered -= 1;
        feed.book.clear();
        feed.pending.clear();
        feed.last_top = seq;
        if self.depth {
            feed.state = FeedState::Snapshot {
                seq,
                levels,
                rows: 0,
            };
        } else {
            if levels != 0 {
                return self.problem(i, Problem::Unexpected, || {
                    format!(
                        "an MdStatus(Subscribed) announcing {levels} snapshot rows without depth"
                    )
                });
            }
            feed.state = FeedState::Live { last: seq };
            self.counters.snapshots += 1;
        }
    }

    /// Checks `check` now if the book is at its sequence number, keeps it
    /// for later if the book is behind, gives up if the book is past it.
    fn check_or_wait(&mut self, i: usize, check: Pending, last: u64) {
        let seq = check.seq();
        if seq == last {
            self.check(i, check);
        } else if seq < last {
            self.counters.checksums_unchecked +=
                u64::from(matches!(check, Pending::Checksum { .. }));
        } else {
            let feed = &mut self.feeds[i];
            if feed.pending.len() >= PENDING_MAX {
                let dropped = feed.pending.remove(0);
                self.counters.checksums_unchecked +=
                    u64::from(matches!(dropped, Pending::Checksum { .. }));
            }
            self.feeds[i].pending.push(check);
        }
    }

    /// Runs the checks waiting for the book's new sequence number.
    fn run_pending(&mut self, i: usize) {
        let Some(last) = self.feeds[i].last() else {
            return;
        };
        while let Some(&p) = self.feeds[i].pending.first() {
            if p.seq() > last {
                break;
            }
            self.feeds[i].pending.remove(0);
            if p.seq() == last {
                self.check(i, p);
                if self.feeds[i].state == FeedState::Awaiting {
                    return;
                }
            }
        }
    }

    fn check(&mut self, i: usize, check: Pending) {
        let book = &self.feeds[i].book;
        match check {
            Pending::Checksum { seq, checksum } => {
                let ours = book.checksum();
                if ours == checksum {
                    self.counters.checksum_ok += 1;
                } else {
                    self.problem(i, Problem::Checksum, || {
                        format!(
                            "checksum at seq {seq}: the server's {checksum:#010x}, the local \
                             book's {ours:#010x}"
                        )
                    });
                }
            }
            Pending::Top { seq, bid, ask } => {
                let (our_bid, our_ask) = (book.best_bid(), book.best_ask());
                if (bid, ask) == (our_bid, our_ask) {
                    self.counters.tops_ok += 1;
                } else {
                    self.problem(i, Problem::Top, || {
                        format!(
                            "top of book at seq {seq}: the server's bid {bid:?} ask {ask:?}, the \
                             local book's bid {our_bid:?} ask {our_ask:?}"
                        )
                    });
                }
            }
        }
    }

    fn gap(&mut self, i: usize, what: &str, seq: u64, last: u64) {
        let rule = if what == "MdTopOfBook" {
            "not below"
        } else if self.depth {
            "expected last + 1"
        } else {
            "expected above"
        };
        self.problem(i, Problem::Gap, || {
            format!("{what} seq {seq} after {last} ({rule})")
        });
    }

    /// Counts and describes a problem on symbol `i`, and resynchronises it.
    fn problem(&mut self, i: usize, kind: Problem, text: impl FnOnce() -> String) {
        let id = self.feeds[i].id;
        match kind {
            Problem::Gap => self.counters.gaps += 1,
            Problem::Checksum => self.counters.checksum_mismatches += 1,
            Problem::Top => self.counters.top_mismatches += 1,
            Problem::Unexpected => {
                return self.unexpected(Some(i), || format!("symbol {id}: {}", text()));
            }
        }
        self.problems.push(|| format!("symbol {id}: {}", text()));
        self.resync(i);
    }

    fn unexpected(&mut self, symbol: Option<usize>, text: impl FnOnce() -> String) {
        self.counters.unexpected += 1;
        self.problems.push(|| format!("unexpected: {}", text()));
        if let Some(i) = symbol {
            self.resync(i);
        }
    }

    /// Asks the symbol again (once until answered); its messages are
    /// discarded until then.
    fn resync(&mut self, i: usize) {
        let feed = &mut self.feeds[i];
        if feed.state == FeedState::Awaiting {
            return;
        }
        feed.state = FeedState::Awaiting;
        feed.pending.clear();
        self.counters.resyncs += 1;
        if !self.resubscribe_all {
            self.resubscribe.push(feed.id);
        }
    }

    /// What was counted so far.
    pub fn counters(&self) -> &MdCounters {
        &self.counters
    }

    /// Feed latency of the window, ns.
    pub fn latency(&self) -> &Histogram<u64> {
        &self.latency
    }

    /// The problems described so far (bounded), taken.
    pub fn take_problems(&mut self) -> Violations {
        std::mem::take(&mut self.problems)
    }

    /// The problems described so far.
    pub fn problems(&self) -> &Violations {
        &self.problems
    }

    /// A symbol's state (`None`: not subscribed).
    pub fn state(&self, symbol: u32) -> Option<FeedState> {
        self.index.get(symbol).map(|i| self.feeds[i].state)
    }

    /// A symbol's local book (`None`: not subscribed).
    pub fn book(&self, symbol: u32) -> Option<&LocalBook> {
        self.index.get(symbol).map(|i| &self.feeds[i].book)
    }

    /// Symbols subscribed.
    pub fn symbols(&self) -> usize {
        self.feeds.len()
    }
}

/// Appends `list` as Subscribe frames (many per frame).
fn push_subscribes(out: &mut Vec<u8>, list: &[Subscribe]) {
    for chunk in list.chunks(wire::MAX_MESSAGES_PER_FRAME) {
        // A chunk is never above the per-frame maximum: cannot fail.
        let _ = wire::append_frame(chunk, out);
    }
}

/// What the subscribers of a run measured, merged.
#[derive(Clone, Debug, Default)]
pub struct MarketDataReport {
    /// Subscriber connections.
    pub subscribers: usize,
    /// Symbols each subscribed to.
    pub symbols: usize,
    /// `Subscribe.flags`.
    pub flags: u32,
    /// Their counts, added up.
    pub counters: MdCounters,
    /// The measured window, seconds.
    pub duration_secs: f64,
    /// Feed latency (engine time to receipt), merged.
    pub latency: Percentiles,
    /// Subscriber connections that failed.
    pub errors: u64,
    /// Problems described (bounded).
    pub problems: Violations,
}

impl MarketDataReport {
    /// Messages per second over the window.
    pub fn messages_per_sec(&self) -> f64 {
        if self.duration_secs > 0.0 {
            self.counters.messages as f64 / self.duration_secs
        } else {
            0.0
        }
    }

    /// What `--verify` holds against the feed, one sentence each: gaps,
    /// checksum or top-of-book mismatches, messages that break the
    /// protocol, and no update at all although `trades` trades happened on
    /// symbols the subscribers follow (`covers_traded`).
    pub fn violations(&self, trades: u64, covers_traded: bool) -> Vec<String> {
        let c = &self.counters;
        let mut out = Vec::new();
        if c.gaps > 0 {
            out.push(format!("market data: {} sequence gap(s)", group(c.gaps)));
        }
        if c.checksum_mismatches > 0 {
            out.push(format!(
                "market data: {} checksum mismatch(es) between the server's book and the local one",
                group(c.checksum_mismatches)
            ));
        }
        if c.top_mismatches > 0 {
            out.push(format!(
                "market data: {} top-of-book mismatch(es) with the local book",
                group(c.top_mismatches)
            ));
        }
        if c.unexpected > 0 {
            out.push(format!(
                "market data: {} message(s) that break the protocol",
                group(c.unexpected)
            ));
        }
        if covers_traded && trades > 0 && c.updates_total == 0 {
            out.push(format!(
                "market data: the run traded ({} trades) but the {} subscriber(s) received no \
                 trade, depth update or top of book",
                group(trades),
                self.subscribers
            ));
        }
        if !out.is_empty() {
            for p in &self.problems.kept {
                out.push(format!("market data: {p}"));
            }
            if self.problems.total > self.problems.kept.len() as u64 {
                out.push(format!(
                    "market data: ... and {} more",
                    group(self.problems.total - self.problems.kept.len() as u64)
                ));
            }
        }
        out
    }

    /// The summary's market-data lines.
    pub fn write_summary(&self, s: &mut String) {
        let c = &self.counters;
        let _ = writeln!(
            s,
            "  market data  {:>16}  {:>9}/s  ({} subscriber{} x {} symbol{}, {}; trades {}, depth \
             updates {}, tops {}, snapshot rows {}, status {})",
            group(c.messages),
            si(self.messages_per_sec()),
            self.subscribers,
            if self.subscribers == 1 { "" } else { "s" },
            self.symbols,
            if self.symbols == 1 { "" } else { "s" },
            channels(self.flags),
            group(c.trades),
            group(c.depth_updates),
            group(c.tops),
            group(c.snapshot_rows),
            group(c.statuses)
        );
        let _ = writeln!(
            s,
            "  md checks    snapshots {}  gaps {}  checksums ok {}  mismatches {}  tops ok {}  \
             top mismatches {}  resyncs {}  cut-offs {}  unexpected {}  errors {}",
            group(c.snapshots),
            group(c.gaps),
            group(c.checksum_ok),
            group(c.checksum_mismatches),
            group(c.tops_ok),
            group(c.top_mismatches),
            group(c.resyncs),
            group(c.cut_offs),
            group(c.unexpected),
            group(self.errors)
        );
        let l = &self.latency;
        let _ = writeln!(
            s,
            "  feed latency us  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  ({} samples)",
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            group(l.samples)
        );
    }

    /// The JSON report's `market_data` object.
    pub fn json_view(&self) -> JsonMarketData {
        let c = &self.counters;
        let l = &self.latency;
        JsonMarketData {
            subscribers: self.subscribers,
            symbols: self.symbols,
            channels: channels(self.flags),
            messages: c.messages,
            messages_per_sec: Num(self.messages_per_sec()),
            messages_by_kind: JsonByKind {
                trade: c.trades,
                depth_update: c.depth_updates,
                snapshot_row: c.snapshot_rows,
                top_of_book: c.tops,
                status: c.statuses,
            },
            trades: c.trades,
            depth_updates: c.depth_updates,
            tops: c.tops,
            snapshots: c.snapshots,
            gaps: c.gaps,
            checksum_ok: c.checksum_ok,
            checksum_mismatches: c.checksum_mismatches,
            checksums_unchecked: c.checksums_unchecked,
            tops_ok: c.tops_ok,
            top_mismatches: c.top_mismatches,
            resyncs: c.resyncs,
            cut_offs: c.cut_offs,
            discarded: c.discarded,
            unexpected: c.unexpected,
            errors: self.errors,
            latency_us: JsonFeedLatency {
                p50: Num(l.p50),
                p90: Num(l.p90),
                p99: Num(l.p99),
                p999: Num(l.p999),
                max: Num(l.max),
                samples: l.samples,
            },
        }
    }
}

/// `market_data` of the JSON report.
#[derive(Serialize)]
pub struct JsonMarketData {
    subscribers: usize,
    symbols: usize,
    channels: String,
    /// In the window, every kind.
    messages: u64,
    messages_per_sec: Num,
    messages_by_kind: JsonByKind,
    trades: u64,
    depth_updates: u64,
    tops: u64,
    snapshots: u64,
    gaps: u64,
    checksum_ok: u64,
    checksum_mismatches: u64,
    checksums_unchecked: u64,
    tops_ok: u64,
    top_mismatches: u64,
    resyncs: u64,
    cut_offs: u64,
    discarded: u64,
    unexpected: u64,
    errors: u64,
    latency_us: JsonFeedLatency,
}

#[derive(Serialize)]
struct JsonByKind {
    trade: u64,
    depth_update: u64,
    snapshot_row: u64,
    top_of_book: u64,
    status: u64,
}

#[derive(Serialize)]
struct JsonFeedLatency {
    p50: Num,
    p90: Num,
    p99: Num,
    p999: Num,
    max: Num,
    samples: u64,
}

/// One subscriber's results, for merging into a [`MarketDataReport`].
pub struct SubscriberOutcome {
    /// Its counts.
    pub counters: MdCounters,
    /// Its feed latency, ns.
    pub latency: Histogram<u64>,
    /// Its problems.
    pub problems: Violations,
    /// Whether the connection failed.
    pub failed: bool,
}

impl SubscriberOutcome {
    /// What `checker` counted.
    pub fn of(checker: &mut FeedChecker, failed: bool) -> Self {
        SubscriberOutcome {
            counters: checker.counters,
            latency: checker.latency.clone(),
            problems: checker.take_problems(),
            failed,
        }
    }
}

/// Merges the subscribers' outcomes.
pub fn merge_outcomes(
    outcomes: Vec<SubscriberOutcome>,
    subscribers: usize,
    symbols: usize,
    flags: u32,
    duration_secs: f64,
) -> MarketDataReport {
    let mut counters = MdCounters::default();
    let mut latency = new_histogram();
    let mut problems = Violations::default();
    let mut errors = 0;
    for o in outcomes {
        counters.add(&o.counters);
        let _ = latency.add(&o.latency);
        problems.merge(o.problems);
        errors += u64::from(o.failed);
    }
    MarketDataReport {
        subscribers,
        symbols,
        flags: flags | SUBSCRIBE_TRADES,
        counters,
        duration_secs,
        latency: Percentiles::of(&latency),
        errors,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{MdDepth, MdStatus, MdTopOfBook, MdTrade, Rejected, SessionError, SessionErrorCode};

    const WINDOW: Window = Window {
        from_ns: 0,
        until_ns: u64::MAX,
    };
    const ALL: u32 = SUBSCRIBE_TRADES | SUBSCRIBE_DEPTH | SUBSCRIBE_TOP_OF_BOOK;

    fn checker(target: Target, flags: u32) -> FeedChecker {
        let mut c = FeedChecker::new(target, flags, &[1, 2, 3], 1 << 20, WINDOW);
        let mut out = Vec::new();
        c.write_subscribe(&mut out);
        assert!(!out.is_empty());
        c
    }

    fn feed<M: wire::Message>(c: &mut FeedChecker, msgs: &[M]) -> Result<(), MdFailure> {
        let mut buf = Vec::new();
        wire::append_frame(msgs, &mut buf).unwrap();
        let used = c.on_bytes(&buf, 10, 2_000)?;
        assert_eq!(used, buf.len());
        Ok(())
    }

    fn status(sym: u32, e: MdStatusEvent, seq: u64, checksum: u32, levels: u32) -> MdStatus {
        MdStatus::new(sym, e, seq, 1_000, checksum, levels)
    }

    fn row(sym: u32, side: Side, seq: u64, price: i64, qty: u64) -> MdDepth {
        MdDepth::new(sym, side, true, seq, 1_000, price, qty, 1)
    }

    fn upd(sym: u32, side: Side, seq: u64, price: i64, qty: u64, orders: u32) -> MdDepth {
        MdDepth::new(sym, side, false, seq, 1_000, price, qty, orders)
    }

    /// Subscribed at seq 5 with a bid 100x10 and an ask 101x7, snapshot end, top.
    fn snapshot(c: &mut FeedChecker, sym: u32) {
        let crc = wire::book_checksum([(100, 10)], [(101, 7)]);
        feed(c, &[status(sym, MdStatusEvent::Subscribed, 5, 0, 2)]).unwrap();
        feed(
            c,
            &[
                row(sym, Side::Buy, 5, 100, 10),
                row(sym, Side::Sell, 5, 101, 7),
            ],
        )
        .unwrap();
        feed(c, &[status(sym, MdStatusEvent::SnapshotEnd, 5, crc, 2)]).unwrap();
    }

    #[test]
    fn a_snapshot_then_updates_keep_the_book_and_every_check_passes() {
        let mut c = checker(Target::Symbols(vec![2]), ALL);
        snapshot(&mut c, 2);
        assert_eq!(c.state(2), Some(FeedState::Live { last: 5 }));
        let top = |bid: TopLevel, ask: TopLevel, seq| MdTopOfBook::new(2, seq, 1_000, bid, ask);
        let l = |price, quantity, orders| TopLevel {
            price,
            quantity,
            orders,
        };
        feed(&mut c, &[top(l(100, 10, 1), l(101, 7, 1), 5)]).unwrap();
        // A trade against the ask, then the ask's level after the fill.
        feed(&mut c, &[MdTrade::new(2, Side::Buy, 6, 1_500, 1, 101, 3)]).unwrap();
        feed(
            &mut c,
            &[
                upd(2, Side::Sell, 7, 101, 4, 1),
                upd(2, Side::Buy, 8, 99, 5, 2),
            ],
        )
        .unwrap();
        let crc = wire::book_checksum([(100, 10), (99, 5)], [(101, 4)]);
        feed(&mut c, &[status(2, MdStatusEvent::Checksum, 8, crc, 0)]).unwrap();
        feed(&mut c, &[top(l(100, 10, 1), l(101, 4, 1), 8)]).unwrap();
        // The ask goes away: an empty side is all zero.
        feed(&mut c, &[upd(2, Side::Sell, 9, 101, 0, 0)]).unwrap();
        feed(&mut c, &[top(l(100, 10, 1), TopLevel::default(), 9)]).unwrap();
        let k = *c.counters();
        assert_eq!(
            (
                k.gaps,
                k.checksum_mismatches,
                k.top_mismatches,
                k.unexpected
            ),
            (0, 0, 0, 0),
            "{:?}",
            c.problems()
        );
        assert_eq!((k.checksum_ok, k.tops_ok, k.snapshots), (2, 3, 1));
        assert_eq!(
            (k.trades, k.depth_updates, k.snapshot_rows, k.tops),
            (1, 3, 2, 3)
        );
        assert_eq!(k.messages, 1 + 3 + 2 + 3 + 3);
        assert_eq!(c.state(2), Some(FeedState::Live { last: 9 }));
        let book = c.book(2).unwrap();
        assert_eq!(book.best_bid(), l(100, 10, 1));
        assert!(book.asks.is_empty());
        // Latency: wall 2,000 - engine 1,500 (the trade) and 1,000 (updates).
        assert_eq!(c.latency().len(), 4);
        assert_eq!(c.latency().min(), 500);
    }

    #[test]
    fn a_gap_resynchronises_and_discards_until_subscribed() {
        let mut c = checker(Target::Symbols(vec![2]), ALL);
        snapshot(&mut c, 2);
        feed(&mut c, &[upd(2, Side::Buy, 6, 99, 1, 1)]).unwrap();
        // seq 7 lost.
        feed(&mut c, &[upd(2, Side::Buy, 8, 98, 1, 1)]).unwrap();
        assert_eq!(c.counters().gaps, 1);
        assert_eq!(c.counters().resyncs, 1);
        assert_eq!(c.state(2), Some(FeedState::Awaiting));
        assert!(
            c.problems().kept[0].contains("seq 8 after 6"),
            "{:?}",
            c.problems()
        );
        let mut out = Vec::new();
        assert!(c.has_requests());
        assert_eq!(c.write_requests(&mut out), 1);
        let Ok(wire::Decoded::Frame(Frame::Subscribe(s), _)) = Decoder::default().decode(&out)
        else {
            panic!("a Subscribe frame");
        };
        assert_eq!((s[0].symbol.get(), s[0].flags.get()), (2, ALL));
        assert_eq!(c.write_requests(&mut Vec::new()), 0);
        // In-flight messages of the old subscription are discarded, checksums included.
        feed(&mut c, &[upd(2, Side::Buy, 9, 97, 1, 1)]).unwrap();
        feed(&mut c, &[status(2, MdStatusEvent::Checksum, 9, 0xbad, 0)]).unwrap();
        assert_eq!(c.counters().discarded, 2);
        assert_eq!(c.counters().checksum_mismatches, 0);
        // The new snapshot replaces the book.
        let crc = wire::book_checksum([(98, 1)], []);
        feed(&mut c, &[status(2, MdStatusEvent::Subscribed, 20, 0, 1)]).unwrap();
        feed(&mut c, &[row(2, Side::Buy, 20, 98, 1)]).unwrap();
        feed(&mut c, &[status(2, MdStatusEvent::SnapshotEnd, 20, crc, 1)]).unwrap();
        feed(&mut c, &[upd(2, Side::Buy, 21, 98, 0, 0)]).unwrap();
        feed(&mut c, &[status(2, MdStatusEvent::Checksum, 21, 0, 0)]).unwrap();
        let k = c.counters();
        assert_eq!((k.gaps, k.snapshots, k.checksum_ok), (1, 2, 3));
        assert_eq!(c.state(2), Some(FeedState::Live { last: 21 }));
        assert!(c.book(2).unwrap().bids.is_empty());
    }

    #[test]
    fn a_checksum_mismatch_is_counted_and_resynchronised() {
        let mut c = checker(Target::Symbols(vec![1]), SUBSCRIBE_DEPTH);
        snapshot(&mut c, 1);
        feed(&mut c, &[upd(1, Side::Buy, 6, 100, 11, 2)]).unwrap();
        // The server says 100x12: the books differ.
        let theirs = wire::book_checksum([(100, 12)], [(101, 7)]);
        feed(&mut c, &[status(1, MdStatusEvent::Checksum, 6, theirs, 0)]).unwrap();
        let k = *c.counters();
        assert_eq!((k.checksum_mismatches, k.resyncs, k.checksum_ok), (1, 1, 1));
        assert_eq!(c.state(1), Some(FeedState::Awaiting));
        assert!(c.problems().kept[0].contains("checksum at seq 6"));
        let mut out = Vec::new();
        assert_eq!(c.write_requests(&mut out), 1);
        // Trades are always subscribed.
        let Ok(wire::Decoded::Frame(Frame::Subscribe(s), _)) = Decoder::default().decode(&out)
        else {
            panic!("a Subscribe frame");
        };
        assert_eq!(s[0].flags.get(), SUBSCRIBE_DEPTH | SUBSCRIBE_TRADES);
    }

    #[test]
    fn a_bad_snapshot_checksum_and_a_wrong_top_are_mismatches() {
        let mut c = checker(Target::Symbols(vec![3]), ALL);
        feed(&mut c, &[status(3, MdStatusEvent::Subscribed, 1, 0, 1)]).unwrap();
        feed(&mut c, &[row(3, Side::Sell, 1, 50, 2)]).unwrap();
        feed(
            &mut c,
            &[status(3, MdStatusEvent::SnapshotEnd, 1, 0x1234, 1)],
        )
        .unwrap();
        assert_eq!(c.counters().checksum_mismatches, 1);
        assert_eq!(c.state(3), Some(FeedState::Awaiting));
        c.write_requests(&mut Vec::new());
        snapshot(&mut c, 3);
        let wrong = MdTopOfBook::new(
            3,
            5,
            0,
            TopLevel {
                price: 100,
                quantity: 9,
                orders: 1,
            },
            TopLevel::default(),
        );
        feed(&mut c, &[wrong]).unwrap();
        assert_eq!(c.counters().top_mismatches, 1);
        assert_eq!(c.counters().resyncs, 2);
    }

    #[test]
    fn checks_ahead_of_the_book_wait_for_it_and_stale_ones_are_unchecked() {
        let mut c = checker(Target::Symbols(vec![1]), ALL);
        snapshot(&mut c, 1);
        let crc = wire::book_checksum([(100, 10), (99, 1)], [(101, 7)]);
        // The checksum of seq 6 before the update of seq 6.
        feed(&mut c, &[status(1, MdStatusEvent::Checksum, 6, crc, 0)]).unwrap();
        assert_eq!(c.counters().checksum_ok, 1);
        feed(&mut c, &[upd(1, Side::Buy, 6, 99, 1, 1)]).unwrap();
        assert_eq!(c.counters().checksum_ok, 2);
        // A checksum of seq 5 now is behind the book.
        feed(&mut c, &[status(1, MdStatusEvent::Checksum, 5, 0, 0)]).unwrap();
        assert_eq!(c.counters().checksums_unchecked, 1);
        assert_eq!(c.counters().checksum_mismatches, 0);
    }

    #[test]
    fn trades_alone_must_increase_and_tops_must_not_go_back() {
        let mut c = checker(
            Target::Symbols(vec![1]),
            SUBSCRIBE_TRADES | SUBSCRIBE_TOP_OF_BOOK,
        );
        feed(&mut c, &[status(1, MdStatusEvent::Subscribed, 10, 0, 0)]).unwrap();
        assert_eq!(c.state(1), Some(FeedState::Live { last: 10 }));
        let t = |seq| MdTrade::new(1, Side::Sell, seq, 1_000, seq, 100, 1);
        feed(&mut c, &[t(12), t(15), t(16)]).unwrap();
        assert_eq!(c.counters().gaps, 0);
        let top = |seq| MdTopOfBook::new(1, seq, 0, TopLevel::default(), TopLevel::default());
        feed(&mut c, &[top(16), top(16), top(17)]).unwrap();
        assert_eq!(c.counters().gaps, 0);
        assert_eq!(c.counters().tops_ok, 0, "no depth: tops are not compared");
        feed(&mut c, &[t(16)]).unwrap();
        assert_eq!(c.counters().gaps, 1);
        c.write_requests(&mut Vec::new());
        feed(&mut c, &[status(1, MdStatusEvent::Subscribed, 30, 0, 0)]).unwrap();
        feed(&mut c, &[top(29)]).unwrap();
        assert_eq!(c.counters().gaps, 2);
        assert_eq!(c.counters().snapshots, 2);
        // Depth messages on a subscription without depth are unexpected.
        c.write_requests(&mut Vec::new());
        feed(&mut c, &[status(1, MdStatusEvent::Subscribed, 40, 0, 0)]).unwrap();
        feed(&mut c, &[upd(1, Side::Buy, 41, 1, 1, 1)]).unwrap();
        assert_eq!(c.counters().unexpected, 1);
    }

    #[test]
    fn a_cut_off_resubscribes_everything() {
        let mut c = checker(Target::All, ALL);
        for s in [1, 2, 3] {
            snapshot(&mut c, s);
        }
        feed(
            &mut c,
            &[status(ALL_SYMBOLS, MdStatusEvent::CutOff, 0, 0, 0)],
        )
        .unwrap();
        assert_eq!(c.counters().cut_offs, 1);
        assert_eq!(c.counters().resyncs, 0);
        for s in [1, 2, 3] {
            assert_eq!(c.state(s), Some(FeedState::Awaiting));
        }
        let mut out = Vec::new();
        assert_eq!(c.write_requests(&mut out), 1);
        let Ok(wire::Decoded::Frame(Frame::Subscribe(s), used)) = Decoder::default().decode(&out)
        else {
            panic!("a Subscribe frame");
        };
        assert_eq!(
            (s.len(), s[0].symbol.get(), used),
            (1, ALL_SYMBOLS, out.len())
        );
        // Late messages of the old subscription are discarded.
        feed(&mut c, &[upd(2, Side::Buy, 6, 1, 1, 1)]).unwrap();
        assert_eq!(c.counters().discarded, 1);
        for s in [1, 2, 3] {
            snapshot(&mut c, s);
        }
        assert_eq!(c.counters().snapshots, 6);
        assert_eq!(c.counters().unexpected, 0, "{:?}", c.problems());
    }

    #[test]
    fn all_symbols_follow_each_symbol_on_its_own() {
        let mut c = checker(Target::All, ALL);
        snapshot(&mut c, 1);
        // Symbol 2 still awaits its Subscribed: its messages are discarded.
        feed(&mut c, &[upd(2, Side::Buy, 1, 10, 1, 1)]).unwrap();
        snapshot(&mut c, 2);
        snapshot(&mut c, 3);
        feed(
            &mut c,
            &[
                upd(1, Side::Buy, 6, 99, 1, 1),
                upd(3, Side::Buy, 6, 99, 1, 1),
                upd(2, Side::Sell, 6, 102, 1, 1),
                upd(1, Side::Buy, 7, 98, 1, 1),
            ],
        )
        .unwrap();
        assert_eq!(c.counters().gaps, 0);
        // A gap on symbol 3 resyncs symbol 3 only.
        feed(&mut c, &[upd(3, Side::Buy, 8, 99, 1, 1)]).unwrap();
        assert_eq!(c.state(3), Some(FeedState::Awaiting));
        assert_eq!(c.state(1), Some(FeedState::Live { last: 7 }));
        let mut out = Vec::new();
        c.write_requests(&mut out);
        let Ok(wire::Decoded::Frame(Frame::Subscribe(s), _)) = Decoder::default().decode(&out)
        else {
            panic!("a Subscribe frame");
        };
        assert_eq!(s[0].symbol.get(), 3);
        // A symbol outside the directory is unexpected, and does not panic.
        feed(&mut c, &[upd(77, Side::Buy, 1, 1, 1, 1)]).unwrap();
        assert_eq!(c.counters().unexpected, 1);
    }

    #[test]
    fn broken_messages_are_counted_not_panicked_on() {
        let mut c = checker(Target::Symbols(vec![1]), ALL);
        // Unasked Subscribed, unknown status event, bad side, snapshot out of shape.
        snapshot(&mut c, 1);
        feed(&mut c, &[status(1, MdStatusEvent::Subscribed, 9, 0, 0)]).unwrap();
        assert_eq!(c.counters().unexpected, 1);
        let mut bad = status(1, MdStatusEvent::Checksum, 1, 0, 0);
        bad.event = 200;
        feed(&mut c, &[bad]).unwrap();
        assert_eq!(c.counters().unexpected, 2);
        c.write_requests(&mut Vec::new());
        feed(&mut c, &[status(1, MdStatusEvent::Subscribed, 5, 0, 1)]).unwrap();
        let mut weird = row(1, Side::Buy, 5, 1, 1);
        weird.side = 9;
        feed(&mut c, &[weird]).unwrap();
        assert_eq!(c.counters().unexpected, 3);
        c.write_requests(&mut Vec::new());
        feed(&mut c, &[status(1, MdStatusEvent::Subscribed, 5, 0, 1)]).unwrap();
        feed(&mut c, &[status(1, MdStatusEvent::SnapshotEnd, 5, 0, 1)]).unwrap();
        assert_eq!(c.counters().unexpected, 4, "a snapshot missing its row");
        // An update inside a snapshot, a trade inside a snapshot.
        c.write_requests(&mut Vec::new());
        feed(&mut c, &[status(1, MdStatusEvent::Subscribed, 5, 0, 0)]).unwrap();
        feed(&mut c, &[MdTrade::new(1, Side::Buy, 6, 0, 1, 1, 1)]).unwrap();
        assert_eq!(c.counters().unexpected, 5);
        // Reports and heartbeats.
        feed(&mut c, &[wire::ServerHeartbeat { token: 1.into() }]).unwrap();
        assert_eq!(c.counters().other, 1);
        let r = Rejected::new(9, 1, RejectReason::UnknownOrder, Kind::Cancel);
        feed(&mut c, &[r]).unwrap();
        assert_eq!(c.counters().unexpected, 6);
        // Bytes that do not decode end the connection with a clear error.
        let e = c.on_bytes(&[0xff; 16], 0, 0).unwrap_err();
        assert!(
            matches!(e, MdFailure::Session(SessionFailure::Decode(_))),
            "{e}"
        );
        assert!(e.to_string().contains("do not decode"), "{e}");
    }

    #[test]
    fn refusals_and_session_errors_end_the_connection() {
        let mut c = checker(Target::All, ALL);
        let r = Rejected::new(0, ALL_SYMBOLS, RejectReason::NotSupported, Kind::Subscribe);
        let e = feed(&mut c, &[r]).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("refused the market-data Subscribe for all symbols"),
            "{text}"
        );
        assert!(text.contains("serves no market data"), "{text}");
        let s = SessionError::new(SessionErrorCode::IdleTimeout, 0, 0, "idle");
        let e = feed(&mut c, &[s]).unwrap_err();
        assert!(e.to_string().contains("closed the session"), "{e}");
    }

    #[test]
    fn only_the_window_counts_messages_and_latency() {
        let window = Window {
            from_ns: 100,
            until_ns: 200,
        };
        let mut c = FeedChecker::new(Target::Symbols(vec![1]), 0, &[1], 1 << 20, window);
        c.write_subscribe(&mut Vec::new());
        let mut buf = Vec::new();
        wire::append_frame(&[status(1, MdStatusEvent::Subscribed, 0, 0, 0)], &mut buf).unwrap();
        wire::append_frame(&[MdTrade::new(1, Side::Buy, 1, 10, 1, 1, 1)], &mut buf).unwrap();
        c.on_bytes(&buf, 50, 20).unwrap();
        let mut buf = Vec::new();
        wire::append_frame(&[MdTrade::new(1, Side::Buy, 2, 10, 1, 1, 1)], &mut buf).unwrap();
        c.on_bytes(&buf, 150, 30).unwrap();
        let k = c.counters();
        assert_eq!(
            (k.messages, k.trades, k.updates_total, k.snapshots),
            (1, 1, 2, 1)
        );
        assert_eq!(c.latency().len(), 1);
    }

    #[test]
    fn large_and_repeated_ids_are_indexed() {
        let ids = vec![4_000_000_000, 5, 4_000_000_000];
        let mut c = FeedChecker::new(Target::Symbols(ids), ALL, &[], 1 << 20, WINDOW);
        let mut out = Vec::new();
        c.write_subscribe(&mut out);
        let Ok(wire::Decoded::Frame(Frame::Subscribe(s), _)) = Decoder::default().decode(&out)
        else {
            panic!("a Subscribe frame");
        };
        assert_eq!(s.len(), 2, "one Subscribe per symbol");
        assert_eq!(c.symbols(), 2);
        for sym in [4_000_000_000, 5] {
            snapshot(&mut c, sym);
            assert_eq!(c.state(sym), Some(FeedState::Live { last: 5 }));
        }
        assert_eq!(c.state(6), None);
        assert_eq!(c.counters().unexpected, 0, "{:?}", c.problems());
    }

    #[test]
    fn symbols_resolve_by_name_or_id() {
        let dir = [
            SymbolEntry::new(0, "BTC-USD"),
            SymbolEntry::new(7, "ETH-USD"),
        ];
        assert_eq!(SymbolSpec::parse("ALL"), Ok(SymbolSpec::All));
        let spec = SymbolSpec::parse("ETH-USD, 0,7").unwrap();
        assert_eq!(
            resolve_symbols(&spec, &dir),
            Ok(Target::Symbols(vec![7, 0]))
        );
        assert_eq!(resolve_symbols(&SymbolSpec::All, &dir), Ok(Target::All));
        let e = resolve_symbols(&SymbolSpec::parse("DOGE").unwrap(), &dir).unwrap_err();
        assert!(e.contains("no such symbol") && e.contains("BTC-USD"), "{e}");
        assert!(resolve_symbols(&SymbolSpec::parse("3").unwrap(), &dir).is_err());
        assert!(SymbolSpec::parse(" , ").is_err());
        assert_eq!(subscribe_flags(false, false, false), SUBSCRIBE_TRADES);
        assert_eq!(
            channels(subscribe_flags(true, true, true)),
            "trades+depth+top (conflated)"
        );
    }

    #[test]
    fn the_report_merges_and_verifies() {
        let mut c = checker(Target::Symbols(vec![1]), ALL);
        snapshot(&mut c, 1);
        feed(&mut c, &[upd(1, Side::Buy, 9, 1, 1, 1)]).unwrap();
        let outcomes = vec![
            SubscriberOutcome::of(&mut c, false),
            SubscriberOutcome {
                counters: MdCounters::default(),
                latency: new_histogram(),
                problems: Violations::default(),
                failed: true,
            },
        ];
        let r = merge_outcomes(outcomes, 2, 1, ALL, 2.0);
        assert_eq!((r.counters.gaps, r.errors), (1, 1));
        let v = r.violations(10, true);
        assert!(v[0].contains("1 sequence gap"), "{v:?}");
        assert!(v.iter().any(|l| l.contains("seq 9 after 5")), "{v:?}");
        let mut s = String::new();
        r.write_summary(&mut s);
        assert!(s.contains("gaps 1") && s.contains("feed latency us"), "{s}");
        let json = serde_json::to_value(r.json_view()).unwrap();
        assert_eq!(json["gaps"], 1);
        assert_eq!(json["messages_by_kind"]["depth_update"], 1);
        assert_eq!(json["latency_us"]["samples"], 0);
        let quiet = merge_outcomes(Vec::new(), 1, 16, 0, 1.0);
        assert!(quiet.violations(0, true).is_empty());
        assert!(quiet.violations(5, false).is_empty());
        assert!(quiet.violations(5, true)[0].contains("received no trade"));
    }
}

#[cfg(test)]
mod cli_tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Args, plan};

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(
            ["dex-trader", "--server", "127.0.0.1:9000", "--cores", "0"]
                .into_iter()
                .chain(args.iter().copied()),
        )
    }

    #[test]
    fn subscribe_flags_plan_the_market_data() {
        let p = plan(&parse(&[]).unwrap()).unwrap();
        assert_eq!(p.market_data, None, "no --subscribe, no subscribers");
        let p = plan(&parse(&["--subscribe", "all", "--depth", "--top"]).unwrap()).unwrap();
        assert_eq!(
            p.market_data,
            Some(MdPlan {
                symbols: SymbolSpec::All,
                flags: SUBSCRIBE_TRADES | SUBSCRIBE_DEPTH | SUBSCRIBE_TOP_OF_BOOK,
                subscribers: 1,
                threads: 1,
            })
        );
        let a = parse(&[
            "--subscribe",
            "BTC-USD,3",
            "--conflate",
            "--top",
            "--subscribers",
            "100",
            "--subscriber-threads",
            "4",
        ])
        .unwrap();
        let md = plan(&a).unwrap().market_data.unwrap();
        assert_eq!(
            md.symbols,
            SymbolSpec::List(vec!["BTC-USD".into(), "3".into()])
        );
        assert_eq!(
            md.flags,
            SUBSCRIBE_TRADES | SUBSCRIBE_TOP_OF_BOOK | SUBSCRIBE_CONFLATE
        );
        assert_eq!((md.subscribers, md.threads), (100, 4));
    }

    #[test]
    fn market_data_flags_need_subscribe() {
        use clap::error::ErrorKind;
        for args in [
            &["--depth"][..],
            &["--top"][..],
            &["--conflate"][..],
            &["--subscribers", "2"][..],
            &["--subscriber-threads", "2"][..],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(
                e.kind(),
                ErrorKind::MissingRequiredArgument,
                "{args:?}: {e}"
            );
        }
        for args in [
            &["--subscribe", ""][..],
            &["--subscribe", "all", "--subscribers", "0"][..],
            &["--subscribe", "all", "--subscribers", "10001"][..],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ValueValidation, "{args:?}: {e}");
        }
    }
}
