//! The market-data bridge to NATS: public trades and top of book, published
//! by a thread that is not a matching core, for any number of consumers in
//! any language (and browsers, through nats-server's WebSocket listener).
//!
//! # Subjects
//!
//! | subject | what | one message per |
//! | --- | --- | --- |
//! | `turbo-dex.md.<SYMBOL>.trade` | a public trade | [`wire::MdTrade`] |
//! | `turbo-dex.md.<SYMBOL>.bbo` | best bid and ask after a change | [`wire::MdTopOfBook`] |
//!
//! `<SYMBOL>` is the symbol's name in the server's directory (`BTC-USD`).
//! The characters that NATS gives a meaning inside a subject (`.`, `*`,
//! `>`, and whitespace, which the directory already refuses) become `_` in
//! the subject only (`BRK.B` publishes on `turbo-dex.md.BRK_B.trade`; the
//! JSON `symbol` field keeps `BRK.B`). A symbol id without a name in the
//! directory is published under its decimal id (`turbo-dex.md.42.trade`).
//!
//! # Payloads
//!
//! Chosen for the whole bridge by [`BridgeFormat`] (`--md-nats-format`):
//!
//! - `binary` (default): the record's exact wire bytes, as in a protocol
//!   version 2 frame body (PROTOCOL.md): [`wire::MdTrade`] is 48 bytes
//!   (kind 0x8c), [`wire::MdTopOfBook`] is 64 bytes (kind 0x8d), integers
//!   little-endian, no frame header (the subject says which record it is).
//! - `json`: one UTF-8 JSON object per message, prices in ticks, all
//!   numbers integers:
//!
//!   ```text
//!   turbo-dex.md.BTC-USD.trade
//!   {"symbol":"BTC-USD","symbol_id":3,"seq":17,"engine_ns":1764650000123456789,
//!    "trade_id":912,"price":6500000,"quantity":5,"aggressor":"buy"}
//!   turbo-dex.md.BTC-USD.bbo
//!   {"symbol":"BTC-USD","symbol_id":3,"seq":18,"engine_ns":1764650000123456789,
//!    "bid_price":6499900,"bid_quantity":12,"bid_orders":3,
//!    "ask_price":6500100,"ask_quantity":4,"ask_orders":1}
//!   ```
//!
//!   (one line each on the wire). `aggressor` is the taker's side, `"buy"`
//!   or `"sell"`. An empty side of the book has price, quantity and orders
//!   0. `engine_ns` (ns since the Unix epoch) is above 2^53: JavaScript's
//!   `JSON.parse` rounds it (to about 256 ns); parse it as a big integer
//!   where that matters.
//!
//! `seq` is the symbol's market-data sequence number, as on the wire: every
//! trade takes the next number, and so does every depth update, which this
//! bridge does not publish, so consecutive trades of a symbol may skip
//! numbers; a `bbo` carries the number it reflects. NATS core delivery is
//! at most once: a consumer that must see every event (or prove its book)
//! subscribes over the wire protocol instead.
//!
//! # Following prices
//!
//! ```text
//! turbo-dex --symbols BTC-USD,ETH-USD --md-nats nats://127.0.0.1:4222 --md-nats-format json
//! nats sub 'turbo-dex.md.*.trade'          # every trade of every symbol
//! nats sub 'turbo-dex.md.BTC-USD.bbo'      # BTC-USD's best bid and ask
//! ```
//!
//! # Never blocking matching
//!
//! Each engine core owns a [`BridgeFeed`]: a bounded single-producer ring
//! ([`rtrb`]) into which [`BridgeFeed::offer`] pushes a copy of the record;
//! it never blocks, allocates or locks, and when the ring is full it counts
//! the record as dropped and returns. The bridge thread (named `md-nats`)
//! runs one async-nats client on its own current-thread tokio runtime. It
//! drains every ring in turns of at most [`BATCH`] records per ring and
//! publishes each record; with every ring empty it sleeps 1 ms (no spin).
//!
//! - NATS down (or not yet up at start): the client reconnects by itself,
//!   forever, with a backoff capped at [`RECONNECT_DELAY_MAX`]; meanwhile the
//!   thread keeps draining the rings and counts those records as
//!   `dropped_disconnected` (they are not queued anywhere).
//! - NATS slow: the client's queue is bounded ([`CLIENT_CAPACITY`] messages);
//!   while it is full the thread waits, at most [`STUCK_WAIT`] per turn
//!   (records it could not hand over in that time are `dropped_slow`), and
//!   the rings fill, so the cores drop and count (`dropped_full`).
//!
//! [`Bridge::stats`] reads these counters (atomics) from any thread.
//! `published` counts records handed to the client: NATS core gives no
//! acknowledgement, so the few in flight when a connection breaks are lost
//! without being counted.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::{ConnectOptions, Event, ServerAddr, Subject};
use bytes::{Bytes, BytesMut};
use wire::{MdTopOfBook, MdTrade, Side};
use zerocopy::IntoBytes;

/// Every subject of the bridge starts with this (then `.<SYMBOL>.trade` or
/// `.<SYMBOL>.bbo`).
pub const SUBJECT_PREFIX: &str = "turbo-dex.md";

/// Records the thread takes from one ring before it turns to the next.
pub const BATCH: usize = 256;

/// Messages the NATS client queues before a publish waits (its
/// `client_capacity`): the bound on what the client buffers.
pub const CLIENT_CAPACITY: usize = 4096;

/// The longest delay between two reconnection attempts.
pub const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(2);

/// How long, per turn over the rings, the thread waits for a full client
/// queue before it drops records as `dropped_slow`.
pub const STUCK_WAIT: Duration = Duration::from_millis(250);

/// The sleep when every ring is empty.
const IDLE_SLEEP: Duration = Duration::from_millis(1);

/// [`Bridge::stop`]: how long it keeps draining the rings, then how long it
/// waits for the client to flush.
const STOP_DRAIN: Duration = Duration::from_secs(1);
const STOP_FLUSH: Duration = Duration::from_millis(500);

/// At most one warning per this interval for failing publishes.
const WARN_INTERVAL: Duration = Duration::from_secs(5);

/// Payload encoding of every message of a bridge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BridgeFormat {
    /// The record's wire bytes (48-byte MdTrade, 64-byte MdTopOfBook).
    #[default]
    Binary,
    /// One JSON object per message.
    Json,
}

impl BridgeFormat {
    /// The name `FromStr` accepts.
    pub const fn as_str(self) -> &'static str {
        match self {
            BridgeFormat::Binary => "binary",
            BridgeFormat::Json => "json",
        }
    }
}

impl FromStr for BridgeFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "binary" => Ok(BridgeFormat::Binary),
            "json" => Ok(BridgeFormat::Json),
            other => Err(format!(
                "unknown NATS payload format '{other}': expected binary or json"
            )),
        }
    }
}

impl std::fmt::Display for BridgeFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`Bridge::start`] needs.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// `nats://HOST:PORT` (`tls://` too; `HOST:PORT` alone means nats://),
    /// or a comma-separated list of them.
    pub url: String,
    /// Payload encoding.
    pub format: BridgeFormat,
    /// Symbol names by id (the server's directory): the subjects use them.
    pub symbols: Arc<[String]>,
    /// Records each core's ring holds.
    pub ring_capacity: usize,
}

/// One record for NATS.
#[derive(Clone, Copy, Debug)]
pub enum BridgeRecord {
    /// Published on `turbo-dex.md.<SYMBOL>.trade`.
    Trade(MdTrade),
    /// Published on `turbo-dex.md.<SYMBOL>.bbo`.
    Top(MdTopOfBook),
}

impl BridgeRecord {
    /// The record's symbol id.
    pub fn symbol(&self) -> u32 {
        match self {
            BridgeRecord::Trade(t) => t.symbol.get(),
            BridgeRecord::Top(t) => t.symbol.get(),
        }
    }

    /// The record's exact wire bytes (the binary payload).
    pub fn wire_bytes(&self) -> &[u8] {
        match self {
            BridgeRecord::Trade(t) => t.as_bytes(),
            BridgeRecord::Top(t) => t.as_bytes(),
        }
    }
}

/// A counter on its own cache lines: each core's drop counter is written by
/// that core only, and read by [`Bridge::stats`].
#[derive(Default)]
#[repr(align(128))]
struct PaddedCounter(AtomicU64);

/// One engine core's end of the bridge: never blocks, never allocates,
/// never locks.
pub struct BridgeFeed {
    ring: rtrb::Producer<BridgeRecord>,
    dropped: Arc<PaddedCounter>,
}

impl BridgeFeed {
    /// Queues `r` for NATS; when the ring is full, counts a drop and returns.
    #[inline]
    pub fn offer(&mut self, r: BridgeRecord) {
        if self.ring.push(r).is_err() {
            // Only this feed writes the counter: a plain load and store
            // (no read-modify-write) is exact.
            let n = self.dropped.0.load(Ordering::Relaxed);
            self.dropped.0.store(n + 1, Ordering::Relaxed);
        }
    }

    /// Records this feed dropped because its ring was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.0.load(Ordering::Relaxed)
    }

    /// Records the ring holds.
    pub fn capacity(&self) -> usize {
        self.ring.buffer().capacity()
    }
}

/// The bridge's counters, as [`Bridge::stats`] reads them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BridgeStats {
    /// Records handed to the NATS client.
    pub published: u64,
    /// Records taken from the rings while the client was not connected
    /// (NATS down, or not yet reached): not published.
    pub dropped_disconnected: u64,
    /// Records a core dropped because its ring was full (the sum of
    /// [`BridgeFeed::dropped`]).
    pub dropped_full: u64,
    /// Records dropped because the client's queue stayed full for
    /// [`STUCK_WAIT`] while connected (NATS slower than the feed).
    pub dropped_slow: u64,
    /// Publishes the client refused (e.g. a payload over the server's
    /// max_payload); those records are not published.
    pub publish_errors: u64,
    /// Connections made after the first one.
    pub reconnects: u64,
    /// Whether the client is connected now.
    pub connected: bool,
}

/// Counters shared by the bridge thread, the client's event callback,
/// [`Bridge::stats`] and the feeds.
#[derive(Default)]
struct Shared {
    published: AtomicU64,
    dropped_disconnected: AtomicU64,
    dropped_slow: AtomicU64,
    publish_errors: AtomicU64,
    connects: AtomicU64,
    connected: AtomicBool,
    /// A client error was logged since the last (dis)connection.
    quiet: AtomicBool,
    stop: AtomicBool,
    feed_dropped: Vec<Arc<PaddedCounter>>,
}

/// The running bridge: its thread, its counters. [`Bridge::stop`] (or
/// dropping it) drains, flushes and joins.
pub struct Bridge {
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Bridge {
    /// Starts the bridge thread with one feed per engine core. Returns
    /// quickly: connecting happens on the thread, and a server that is down
    /// is retried (forever), not an error. An invalid URL, `cores` or
    /// `ring_capacity` of 0, or a thread or runtime that cannot be made is
    /// an error, with a message that says which.
    pub fn start(cfg: BridgeConfig, cores: usize) -> Result<(Bridge, Vec<BridgeFeed>), String> {
        let servers = parse_servers(&cfg.url)?;
        if cores == 0 {
            return Err("the NATS bridge needs at least one core feed (cores = 0)".into());
        }
        if cfg.ring_capacity == 0 {
            return Err("the NATS bridge's ring capacity must be at least 1".into());
        }
        let mut feeds = Vec::with_capacity(cores);
        let mut rings = Vec::with_capacity(cores);
        let mut feed_dropped = Vec::with_capacity(cores);
        for _ in 0..cores {
            let (producer, consumer) = rtrb::RingBuffer::new(cfg.ring_capacity);
            let dropped = Arc::new(PaddedCounter::default());
            feed_dropped.push(Arc::clone(&dropped));
            feeds.push(BridgeFeed {
                ring: producer,
                dropped,
            });
            rings.push(consumer);
        }
        let shared = Arc::new(Shared {
            feed_dropped,
            ..Shared::default()
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot build the NATS bridge's runtime: {e}"))?;
        let encoder = Encoder::new(cfg.format, cfg.symbols);
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("md-nats".into())
            .spawn(move || {
                runtime.block_on(run(servers, encoder, rings, thread_shared));
                // A DNS lookup may still sit in the blocking pool: do not
                // wait for it.
                runtime.shutdown_timeout(Duration::from_millis(100));
            })
            .map_err(|e| format!("cannot start the NATS bridge thread: {e}"))?;
        Ok((
            Bridge {
                thread: Some(thread),
                shared,
            },
            feeds,
        ))
    }

    /// The counters now (relaxed atomic loads; any thread).
    pub fn stats(&self) -> BridgeStats {
        let s = &self.shared;
        BridgeStats {
            published: s.published.load(Ordering::Relaxed),
            dropped_disconnected: s.dropped_disconnected.load(Ordering::Relaxed),
            dropped_full: s
                .feed_dropped
                .iter()
                .map(|d| d.0.load(Ordering::Relaxed))
                .sum(),
            dropped_slow: s.dropped_slow.load(Ordering::Relaxed),
            publish_errors: s.publish_errors.load(Ordering::Relaxed),
            reconnects: s.connects.load(Ordering::Relaxed).saturating_sub(1),
            connected: s.connected.load(Ordering::Relaxed),
        }
    }

    /// Publishes what the rings hold (for at most about 1 s), flushes the
    /// client (at most 0.5 s more) and joins the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the NATS bridge thread panicked");
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `url` as async-nats server addresses: a comma-separated list of
/// `nats://HOST:PORT`, `tls://HOST:PORT` or `HOST:PORT`.
pub(crate) fn parse_servers(url: &str) -> Result<Vec<ServerAddr>, String> {
    if url.trim().is_empty() {
        return Err("the NATS URL is empty; expected nats://HOST:PORT".into());
    }
    let mut servers = Vec::new();
    for part in url.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(format!(
                "NATS URL '{url}' has an empty entry; expected nats://HOST:PORT[,nats://HOST:PORT...]"
            ));
        }
        let addr = ServerAddr::from_str(part)
            .map_err(|e| format!("NATS URL '{part}': {e}; expected nats://HOST:PORT"))?;
        if !matches!(addr.scheme(), "nats" | "tls") {
            return Err(format!(
                "NATS URL '{part}': scheme {}:// is not supported; use nats:// or tls://",
                addr.scheme()
            ));
        }
        if addr.host().is_empty() {
            return Err(format!(
                "NATS URL '{part}' has no host; expected nats://HOST:PORT"
            ));
        }
        servers.push(addr);
    }
    Ok(servers)
}

/// The delay before reconnection attempt `attempts`: 0 for the first, then
/// 10 ms doubling, capped at [`RECONNECT_DELAY_MAX`].
pub fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let shift = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
    Duration::from_millis(10u64 << shift).min(RECONNECT_DELAY_MAX)
}

/// The subject token of a symbol name: `.`, `*`, `>`, whitespace and
/// control characters become `_`; an empty name stays empty (the caller
/// uses the id).
pub fn subject_token(name: &str) -> String {
    name.chars()
        .map(|c| {
            if matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// `turbo-dex.md.<SYMBOL>.trade` for symbol name `symbol`.
pub fn trade_subject(symbol: &str) -> String {
    format!("{SUBJECT_PREFIX}.{}.trade", subject_token(symbol))
}

/// `turbo-dex.md.<SYMBOL>.bbo` for symbol name `symbol`.
pub fn bbo_subject(symbol: &str) -> String {
    format!("{SUBJECT_PREFIX}.{}.bbo", subject_token(symbol))
}

/// One symbol's subjects and its JSON-escaped name (with the quotes).
struct SymbolOut {
    trade: Subject,
    bbo: Subject,
    json_name: Box<str>,
}

impl SymbolOut {
    fn new(id: u32, names: &[String]) -> SymbolOut {
        let name = usize::try_from(id)
            .ok()
            .and_then(|i| names.get(i))
            .filter(|n| !n.is_empty())
            .cloned()
            .unwrap_or_else(|| id.to_string());
        SymbolOut {
            trade: Subject::from(trade_subject(&name)),
            bbo: Subject::from(bbo_subject(&name)),
            // A string always serializes; the fallback is never taken.
            json_name: serde_json::to_string(&name)
                .unwrap_or_else(|_| format!("\"{id}\""))
                .into_boxed_str(),
        }
    }
}

/// Turns records into (subject, payload): subjects made once per symbol on
/// first use, payloads cut from one reused buffer (an allocation per some
/// thousand messages, not per message).
struct Encoder {
    format: BridgeFormat,
    names: Arc<[String]>,
    /// By symbol id, for the ids of the directory (grown on demand).
    known: Vec<Option<Box<SymbolOut>>>,
    /// Ids outside the directory, a bounded few.
    unknown: HashMap<u32, SymbolOut>,
    buf: BytesMut,
}

/// Ids outside the directory whose subjects are kept (more are made per
/// message).
const UNKNOWN_CACHED: usize = 1024;
/// The buffer payloads are cut from.
const PAYLOAD_BLOCK: usize = 64 * 1024;

impl Encoder {
    fn new(format: BridgeFormat, names: Arc<[String]>) -> Encoder {
        Encoder {
            format,
            names,
            known: Vec::new(),
            unknown: HashMap::new(),
            buf: BytesMut::with_capacity(PAYLOAD_BLOCK),
        }
    }

    /// The subject and payload of `r`.
    fn encode(&mut self, r: &BridgeRecord) -> (Subject, Bytes) {
        let id = r.symbol();
        let fresh;
        let out: &SymbolOut = match usize::try_from(id) {
            Ok(i) if i < self.names.len() => {
                if self.known.len() <= i {
                    self.known.resize_with(i + 1, || None);
                }
                self.known[i].get_or_insert_with(|| Box::new(SymbolOut::new(id, &self.names)))
            }
            _ if self.unknown.contains_key(&id) || self.unknown.len() < UNKNOWN_CACHED => self
                .unknown
                .entry(id)
                .or_insert_with(|| SymbolOut::new(id, &self.names)),
            _ => {
                fresh = SymbolOut::new(id, &self.names);
                &fresh
            }
        };
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(PAYLOAD_BLOCK);
        }
        match self.format {
            BridgeFormat::Binary => self.buf.extend_from_slice(r.wire_bytes()),
            BridgeFormat::Json => write_json(&mut self.buf, &out.json_name, r),
        }
        let subject = match r {
            BridgeRecord::Trade(_) => out.trade.clone(),
            BridgeRecord::Top(_) => out.bbo.clone(),
        };
        (subject, self.buf.split().freeze())
    }
}

/// Appends the JSON object of `r` to `out`; `json_name` is the symbol's
/// name as a JSON string (quotes included).
fn write_json<W: std::fmt::Write>(out: &mut W, json_name: &str, r: &BridgeRecord) {
    // Writing to a String or a BytesMut cannot fail.
    let _ = match r {
        BridgeRecord::Trade(t) => write!(
            out,
            "{{\"symbol\":{json_name},\"symbol_id\":{},\"seq\":{},\"engine_ns\":{},\
             \"trade_id\":{},\"price\":{},\"quantity\":{},\"aggressor\":\"{}\"}}",
            t.symbol.get(),
            t.seq.get(),
            t.engine_ns.get(),
            t.trade_id.get(),
            t.price.get(),
            t.quantity.get(),
            Side::from_wire(t.aggressor_side).map_or("unknown", Side::as_str),
        ),
        BridgeRecord::Top(t) => write!(
            out,
            "{{\"symbol\":{json_name},\"symbol_id\":{},\"seq\":{},\"engine_ns\":{},\
             \"bid_price\":{},\"bid_quantity\":{},\"bid_orders\":{},\
             \"ask_price\":{},\"ask_quantity\":{},\"ask_orders\":{}}}",
            t.symbol.get(),
            t.seq.get(),
            t.engine_ns.get(),
            t.bid_price.get(),
            t.bid_quantity.get(),
            t.bid_orders.get(),
            t.ask_price.get(),
            t.ask_quantity.get(),
            t.ask_orders.get(),
        ),
    };
}

/// The JSON payload of `r` for a symbol named `name` (what the bridge
/// publishes with [`BridgeFormat::Json`]).
pub fn json_payload(name: &str, r: &BridgeRecord) -> String {
    let mut out = String::with_capacity(256);
    let json_name = serde_json::to_string(name).unwrap_or_else(|_| "\"\"".into());
    write_json(&mut out, &json_name, r);
    out
}

/// Counts of one turn, added to the shared atomics at its end.
#[derive(Default)]
struct TurnCounts {
    published: u64,
    disconnected: u64,
    slow: u64,
    errors: u64,
}

impl TurnCounts {
    fn add_to(&self, shared: &Shared) {
        for (n, counter) in [
            (self.published, &shared.published),
            (self.disconnected, &shared.dropped_disconnected),
            (self.slow, &shared.dropped_slow),
            (self.errors, &shared.publish_errors),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// The client's options: reconnect forever with a capped backoff, a
/// bounded queue, connection events into the shared counters.
fn connect_options(shared: &Arc<Shared>) -> ConnectOptions {
    let events = Arc::clone(shared);
    ConnectOptions::new()
        .name("turbo-dex market data")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .connection_timeout(Duration::from_secs(2))
        .client_capacity(CLIENT_CAPACITY)
        // Subjects are made from sanitized names (see subject_token).
        .skip_subject_validation(true)
        .event_callback(move |event| {
            let shared = Arc::clone(&events);
            async move {
                match event {
                    Event::Connected => {
                        shared.quiet.store(false, Ordering::Relaxed);
                        let n = shared.connects.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::info!(connections = n, "market data: connected to NATS");
                    }
                    Event::Disconnected => {
                        shared.quiet.store(false, Ordering::Relaxed);
                        tracing::warn!(
                            "market data: disconnected from NATS; reconnecting, records are dropped meanwhile"
                        );
                    }
                    // Every failed attempt reports one: say the first.
                    Event::ClientError(e) if !shared.quiet.swap(true, Ordering::Relaxed) => {
                        tracing::warn!(
                            "market data: NATS: {e}; retrying (every {RECONNECT_DELAY_MAX:?} at most), records are dropped meanwhile"
                        );
                    }
                    Event::ServerError(e) => tracing::warn!("market data: NATS server error: {e}"),
                    _ => {}
                }
            }
        })
}

/// The bridge thread's loop, until [`Bridge::stop`].
async fn run(
    servers: Vec<ServerAddr>,
    mut encoder: Encoder,
    mut rings: Vec<rtrb::Consumer<BridgeRecord>>,
    shared: Arc<Shared>,
) {
    // With retry_on_initial_connect this returns at once; it fails only on
    // addresses parse_servers already checked.
    let client = match connect_options(&shared).connect(servers).await {
        Ok(client) => Some(client),
        Err(e) => {
            tracing::error!(
                "market data: cannot start the NATS client: {e}; dropping every record"
            );
            None
        }
    };
    let mut stop_at: Option<Instant> = None;
    let mut last_warning: Option<Instant> = None;
    loop {
        if stop_at.is_none() && shared.stop.load(Ordering::Acquire) {
            stop_at = Some(Instant::now() + STOP_DRAIN);
        }
        let mut connected = client
            .as_ref()
            .is_some_and(|c| c.connection_state() == State::Connected);
        shared.connected.store(connected, Ordering::Relaxed);
        let mut counts = TurnCounts::default();
        let stuck = tokio::time::sleep(STUCK_WAIT);
        tokio::pin!(stuck);
        let mut popped = 0usize;
        for ring in &mut rings {
            for _ in 0..BATCH {
                let Ok(record) = ring.pop() else { break };
                popped += 1;
                let Some(client) = client.as_ref().filter(|_| connected) else {
                    counts.disconnected += 1;
                    continue;
                };
                let (subject, payload) = encoder.encode(&record);
                tokio::select! {
                    biased;
                    sent = client.publish(subject, payload) => match sent {
                        Ok(()) => counts.published += 1,
                        Err(e) => {
                            counts.errors += 1;
                            if last_warning.is_none_or(|t| t.elapsed() >= WARN_INTERVAL) {
                                last_warning = Some(Instant::now());
                                tracing::warn!("market data: NATS publish failed: {e}");
                            }
                        }
                    },
                    () = &mut stuck => {
                        if client.connection_state() == State::Connected {
                            counts.slow += 1;
                        } else {
                            connected = false;
                            shared.connected.store(false, Ordering::Relaxed);
                            counts.disconnected += 1;
                        }
                    }
                }
            }
        }
        counts.add_to(&shared);
        if let Some(deadline) = stop_at
            && (popped == 0 || Instant::now() >= deadline)
        {
            break;
        }
        if popped == 0 {
            tokio::time::sleep(IDLE_SLEEP).await;
        } else {
            // Let the client's connection task write what was queued.
            tokio::task::yield_now().await;
        }
    }
    if let Some(client) = client.as_ref()
        && client.connection_state() == State::Connected
    {
        let _ = tokio::time::timeout(STOP_FLUSH, client.flush()).await;
    }
    shared.connected.store(false, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::TopLevel;

    fn names() -> Arc<[String]> {
        vec![
            "BTC-USD".to_string(),
            "BRK.B".to_string(),
            "A*>\"q".to_string(),
        ]
        .into()
    }

    fn trade() -> MdTrade {
        MdTrade::new(
            0,
            Side::Buy,
            17,
            1_764_650_000_123_456_789,
            912,
            6_500_000,
            5,
        )
    }

    fn top(symbol: u32) -> MdTopOfBook {
        MdTopOfBook::new(
            symbol,
            18,
            42,
            TopLevel {
                price: -3,
                quantity: 12,
                orders: 3,
            },
            TopLevel::default(),
        )
    }

    #[test]
    fn format_parses_and_says_what_is_wrong() {
        assert_eq!("binary".parse::<BridgeFormat>(), Ok(BridgeFormat::Binary));
        assert_eq!("json".parse::<BridgeFormat>(), Ok(BridgeFormat::Json));
        let err = "xml".parse::<BridgeFormat>().unwrap_err();
        assert!(
            err.contains("'xml'") && err.contains("binary or json"),
            "{err}"
        );
        assert_eq!(BridgeFormat::Json.to_string(), "json");
        assert_eq!(BridgeFormat::default(), BridgeFormat::Binary);
    }

    #[test]
    fn subjects_use_the_directory_name_sanitized_or_the_id() {
        assert_eq!(trade_subject("BTC-USD"), "turbo-dex.md.BTC-USD.trade");
        assert_eq!(bbo_subject("BTC-USD"), "turbo-dex.md.BTC-USD.bbo");
        assert_eq!(trade_subject("BRK.B"), "turbo-dex.md.BRK_B.trade");
        assert_eq!(subject_token("a*b>c d\te"), "a_b_c_d_e");

        let mut enc = Encoder::new(BridgeFormat::Binary, names());
        let (s, _) = enc.encode(&BridgeRecord::Trade(trade()));
        assert_eq!(s.as_ref(), "turbo-dex.md.BTC-USD.trade");
        let (s, _) = enc.encode(&BridgeRecord::Top(top(1)));
        assert_eq!(s.as_ref(), "turbo-dex.md.BRK_B.bbo");
        let (s, _) = enc.encode(&BridgeRecord::Top(top(2)));
        assert_eq!(s.as_ref(), "turbo-dex.md.A__\"q.bbo");
        let (s, _) = enc.encode(&BridgeRecord::Top(top(7)));
        assert_eq!(s.as_ref(), "turbo-dex.md.7.bbo");
        let (s, _) = enc.encode(&BridgeRecord::Top(top(u32::MAX)));
        assert_eq!(s.as_ref(), "turbo-dex.md.4294967295.bbo");
    }

    #[test]
    fn binary_payload_is_the_wire_record() {
        let mut enc = Encoder::new(BridgeFormat::Binary, names());
        let t = trade();
        let (_, p) = enc.encode(&BridgeRecord::Trade(t));
        assert_eq!(&p[..], t.as_bytes());
        assert_eq!(p.len(), 48);
        let b = top(1);
        let (_, p) = enc.encode(&BridgeRecord::Top(b));
        assert_eq!(&p[..], b.as_bytes());
        assert_eq!(p.len(), 64);
        // Many payloads from one buffer stay intact.
        let all: Vec<Bytes> = (0..10_000u64)
            .map(|i| {
                let t = MdTrade::new(0, Side::Sell, i, i, i, i as i64, i);
                enc.encode(&BridgeRecord::Trade(t)).1
            })
            .collect();
        for (i, p) in all.iter().enumerate() {
            let t = MdTrade::new(
                0,
                Side::Sell,
                i as u64,
                i as u64,
                i as u64,
                i as i64,
                i as u64,
            );
            assert_eq!(&p[..], t.as_bytes());
        }
    }

    #[test]
    fn json_trade_has_every_field() {
        let text = json_payload("BTC-USD", &BridgeRecord::Trade(trade()));
        assert_eq!(
            text,
            "{\"symbol\":\"BTC-USD\",\"symbol_id\":0,\"seq\":17,\"engine_ns\":1764650000123456789,\
             \"trade_id\":912,\"price\":6500000,\"quantity\":5,\"aggressor\":\"buy\"}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["engine_ns"].as_u64(), Some(1_764_650_000_123_456_789));
        let mut odd = trade();
        odd.aggressor_side = 9;
        let v: serde_json::Value =
            serde_json::from_str(&json_payload("x", &BridgeRecord::Trade(odd))).unwrap();
        assert_eq!(v["aggressor"], "unknown");
    }

    #[test]
    fn json_bbo_has_every_field_and_escapes_the_name() {
        let mut enc = Encoder::new(BridgeFormat::Json, names());
        let (_, p) = enc.encode(&BridgeRecord::Top(top(2)));
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "symbol": "A*>\"q", "symbol_id": 2, "seq": 18, "engine_ns": 42,
                "bid_price": -3, "bid_quantity": 12, "bid_orders": 3,
                "ask_price": 0, "ask_quantity": 0, "ask_orders": 0,
            })
        );
        let (_, p) = enc.encode(&BridgeRecord::Top(top(99)));
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["symbol"], "99");
        assert_eq!(v["symbol_id"], 99);
    }

    #[test]
    fn bad_urls_and_sizes_are_clear_errors() {
        let cfg = |url: &str, ring_capacity| BridgeConfig {
            url: url.into(),
            format: BridgeFormat::Binary,
            symbols: names(),
            ring_capacity,
        };
        for (url, says) in [
            ("", "URL is empty"),
            (
                " nats://127.0.0.1:4222,,nats://127.0.0.1:4223",
                "empty entry",
            ),
            ("nats://127.0.0.1:4222,", "empty entry"),
            ("http://127.0.0.1:4222", "scheme for NATS server URL: http"),
            ("ws://127.0.0.1:4222", "ws:// is not supported"),
            ("nats://127.0.0.1:99999", "invalid"),
            ("nats://[::1", "invalid"),
        ] {
            let err = Bridge::start(cfg(url, 16), 1).err().unwrap();
            eprintln!("{url:?}: {err}");
            assert!(err.contains(says), "{url}: {err}");
        }
        let err = Bridge::start(cfg("nats://127.0.0.1:4222", 0), 1)
            .err()
            .unwrap();
        assert!(err.contains("ring capacity"), "{err}");
        let err = Bridge::start(cfg("nats://127.0.0.1:4222", 16), 0)
            .err()
            .unwrap();
        assert!(err.contains("cores = 0"), "{err}");
        assert_eq!(
            parse_servers("127.0.0.1:4222, nats://h:1").unwrap().len(),
            2
        );
    }

    #[test]
    fn a_full_ring_counts_drops() {
        let (producer, _consumer) = rtrb::RingBuffer::new(4);
        let mut feed = BridgeFeed {
            ring: producer,
            dropped: Arc::default(),
        };
        for _ in 0..10 {
            feed.offer(BridgeRecord::Trade(trade()));
        }
        assert_eq!(feed.dropped(), 6);
        assert_eq!(feed.capacity(), 4);
    }

    #[test]
    fn the_ends_cross_threads() {
        fn send<T: Send>() {}
        fn sync<T: Sync>() {}
        send::<BridgeFeed>();
        send::<Bridge>();
        sync::<Bridge>();
    }

    #[test]
    fn reconnect_delay_is_capped() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(10));
        assert_eq!(reconnect_delay(3), Duration::from_millis(20));
        assert_eq!(reconnect_delay(100), RECONNECT_DELAY_MAX);
        assert_eq!(reconnect_delay(usize::MAX), RECONNECT_DELAY_MAX);
    }
}
