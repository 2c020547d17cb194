//! The turbo-dex server: one pinned thread per core, each with its own
//! io_uring, SO_REUSEPORT listener, connections and shards, joined by a
//! full mesh of SPSC rings (rtrb). See ARCHITECTURE.md for the hot path.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the API: [`ServerConfig`], [`Server`] (start, sample, stop), shared state, clocks |
//! | `start.rs` | start-up, one named step at a time |
//! | `auth.rs` | who may log on: the auth thread (argon2 off the cores), failed-logon limits, sessions per account and connections per address |
//! | `limits.rs` | every limit and timeout, their compile-time relations, the one validation |
//! | `core/` | one engine core: the loop and its concerns, one per file (see `core/mod.rs`) |
//! | `durable.rs` | each shard's journal state, and the journal's background thread |
//! | `uring.rs` | io_uring setup and diagnostics, the provided-buffer ring, the wake eventfd |
//! | `stats.rs` | per-core counters, the live line and the final report |
//! | `tls.rs` | TLS on order entry: certificate and key, the kTLS check, the handshake threads |

mod admin;
pub mod auth;
mod core;
pub mod durable;
pub mod limits;
pub mod operator;
pub mod replicate;
pub mod standby;
mod start;
pub mod stats;
pub mod tls;
pub mod uring;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use self::core::{
    DEFAULT_FLOOD_REJECTS, DEFAULT_ORDER_BURST, FLOOD_WINDOW_MS, OrderEntryLimits,
};
use self::durable::{Housekeeper, JournalSettings};
pub use self::limits::ring_capacity_for;
use self::limits::{DRAIN_TIMEOUT_MS, MD_MAX_QUEUE_BYTES, OUT_HIGH_WATER_BYTES, OUT_MAX_BYTES};
use self::stats::{CoreStats, Counters, Sample};
use self::uring::WakeFd;
use crate::book::ShardConfig;

/// How a core waits when it has nothing to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PollMode {
    /// Never sleep: lowest latency, burns the whole core.
    Spin,
    /// Spin a while after the last work, then sleep in io_uring_enter.
    Adaptive,
    /// Sleep in io_uring_enter whenever there is nothing to do.
    Block,
}

/// Which matching engine the shards run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// The real limit order books.
    Match,
    /// Accept every order, match nothing: the transport ceiling.
    Null,
}

/// A validated server configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// CPU ids of the engine cores, one thread each.
    pub cpus: Vec<usize>,
    /// Pin each core's thread to its CPU.
    pub pin: bool,
    /// Number of shards; shard s runs on core s % cores.
    pub shards: u32,
    /// Symbol names; symbol id = index.
    pub symbols: Vec<String>,
    /// Most messages per ring drain and per outgoing frame.
    pub batch: usize,
    /// How cores wait.
    pub poll: PollMode,
    /// Most connections in total.
    pub max_connections: usize,
    /// Matching or null engine.
    pub engine: EngineKind,
    /// Per-shard book limits.
    pub shard: ShardConfig,
    /// Largest frame accepted from clients (and sent to them).
    pub max_frame_bytes: u32,
    /// Heartbeat interval for sessions that do not ask for one.
    pub heartbeat_ms: u32,
    /// A session that sends nothing for this many heartbeat intervals is closed.
    pub idle_timeout_factor: u32,
    /// A client whose send has not completed for this long is disconnected.
    pub slow_consumer_ms: u64,
    /// Stop reading a connection while it has this many bytes of output pending.
    pub out_high_water_bytes: usize,
    /// Disconnect a connection whose pending output exceeds this.
    pub out_max_bytes: usize,
    /// Most bytes per send call (a multiple of the MSS).
    pub send_chunk_bytes: usize,
    /// Provided receive buffers per core (power of two).
    pub recv_buffers: u16,
    /// Size of each receive buffer.
    pub recv_buffer_bytes: usize,
    /// Capacity of each core-to-core ring, in messages.
    pub ring_capacity: usize,
    /// If set, the Hello credentials must equal this.
    pub auth_token: Option<Vec<u8>>,
    /// Accounts with passwords (`--accounts`): a Hello must be protocol
    /// version 2 and carry the account's password. `None`: any client may
    /// log on as any account.
    pub accounts: Option<Arc<crate::accounts::Accounts>>,
    /// Sessions at once per account (an account's `max_sessions=` overrides it).
    pub max_sessions_per_account: u32,
    /// Connections at once per source address.
    pub max_connections_per_address: u32,
    /// Failed logons per source address per minute before its logons are
    /// refused without a password check.
    pub logon_failures_per_minute: u32,
    /// The Hello must arrive within this long of the accept.
    pub logon_timeout_ms: u64,
    /// A frame whose first byte arrived must be complete within this long.
    pub frame_timeout_ms: u64,
    /// The input buffers of all connections of one core, in bytes
    /// (`--input-memory-per-core`).
    pub input_memory_per_core: usize,
    /// Order entry limits of every session (`--max-order-rate`, `--order-burst`).
    pub order_limits: OrderEntryLimits,
    /// The admin token that the kill switch's POSTs must carry
    /// (`--admin-token`); without one they are refused.
    pub admin_token: Option<String>,
    /// Print the live stats line every second.
    pub live_stats: bool,
    /// The journal, or `None` for no durability (benchmarks).
    pub journal: Option<JournalSettings>,
    /// Where the admin endpoint listens (`/health`, `/ready`, `/stats`,
    /// `/metrics`), or `None` for no endpoint.
    pub admin: Option<SocketAddr>,
    /// Unsent output past which a market-data subscriber is cut off.
    pub md_max_queue: usize,
    /// Republish trades and tops to NATS, or `None`.
    pub md_nats: Option<MdNatsSettings>,
    /// TLS 1.3 on the order-entry listener (see [`tls`]), or `None` for
    /// plain TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// In a cluster (`--cluster`): the shards this node serves and the
    /// cluster map, kept by the cluster agent. `None`: every shard is
    /// served, and the cores skip the ownership check.
    pub cluster: Option<Arc<crate::cluster::ClusterView>>,
    /// `--replicas` 2 or more: each journal batch is also stored in its
    /// shard's JetStream stream before it is acknowledged (see
    /// [`replicate`]). Needs a journal.
    pub replicate: Option<replicate::ReplConfig>,
}

/// The NATS market-data bridge's settings (`--md-nats`).
#[derive(Clone, Debug)]
pub struct MdNatsSettings {
    /// `nats://HOST:PORT[,...]`.
    pub url: String,
    /// Payload encoding.
    pub format: crate::mdbridge::BridgeFormat,
}

impl ServerConfig {
    /// A configuration for `cpus` with every other value at its default.
    pub fn new(listen: SocketAddr, cpus: Vec<usize>, symbols: Vec<String>) -> ServerConfig {
        let shards = cpus.len() as u32;
        ServerConfig {
            listen,
            pin: true,
            shards,
            symbols,
            batch: 2048,
            poll: PollMode::Adaptive,
            max_connections: 10_000,
            engine: EngineKind::Match,
            shard: ShardConfig::default(),
            max_frame_bytes: limits::MAX_FRAME_BYTES_DEFAULT,
            heartbeat_ms: wire::DEFAULT_HEARTBEAT_INTERVAL_MS,
            idle_timeout_factor: wire::IDLE_TIMEOUT_HEARTBEATS,
            slow_consumer_ms: 10_000,
            order_limits: OrderEntryLimits::UNLIMITED,
            admin_token: None,
            out_high_water_bytes: OUT_HIGH_WATER_BYTES,
            out_max_bytes: OUT_MAX_BYTES,
            send_chunk_bytes: 1 << 20,
            recv_buffers: 256,
            recv_buffer_bytes: 64 << 10,
            ring_capacity: ring_capacity_for(cpus.len()),
            auth_token: None,
            accounts: None,
            max_sessions_per_account: limits::MAX_SESSIONS_PER_ACCOUNT,
            max_connections_per_address: limits::MAX_CONNECTIONS_PER_ADDRESS,
            logon_failures_per_minute: limits::AUTH_FAILURES_PER_WINDOW,
            logon_timeout_ms: limits::LOGON_TIMEOUT_MS,
            frame_timeout_ms: limits::FRAME_TIMEOUT_MS,
            input_memory_per_core: limits::INPUT_MEMORY_PER_CORE,
            live_stats: false,
            journal: None,
            admin: None,
            md_max_queue: MD_MAX_QUEUE_BYTES,
            md_nats: None,
            tls: None,
            cluster: None,
            replicate: None,
            cpus,
        }
    }
}

/// State shared by the cores and the admin side.
pub struct Shared {
    /// Per-core published counters.
    pub stats: Box<[CoreStats]>,
    /// Per-core "about to sleep" flags; a producer that sees one set wakes the core.
    sleeping: Box<[PaddedFlag]>,
    /// Per-core eventfds that wake a sleeping core.
    wake_fds: Box<[WakeFd]>,
    /// Set when shutdown begins: stop accepting and reading.
    stop_reading: AtomicBool,
    /// Set when every core is drained: close connections and exit.
    exit: AtomicBool,
    /// Live connections over all cores (checked at accept only).
    conns_live: AtomicUsize,
    /// Recovery is done and the cores take orders.
    ready: AtomicBool,
    /// How long start-up recovery took.
    recovery_ns: AtomicU64,
    /// `monotonic_ns` when the server started.
    started_ns: u64,
    /// Sessions per account, connections per address, logons in flight.
    pub admission: Arc<auth::Admission>,
    /// Kill switch commands from the admin thread, for core 0.
    operator: operator::OperatorQueue,
}

#[repr(align(128))]
#[derive(Default)]
struct PaddedFlag(AtomicBool);

impl std::ops::Deref for PaddedFlag {
    type Target = AtomicBool;
    fn deref(&self) -> &AtomicBool {
        &self.0
    }
}

impl Shared {
    /// Wakes `core` if it is (about to be) asleep. Called after pushing to its ring.
    #[inline]
    pub fn wake(&self, core: usize) {
        // Pairs with the core's SeqCst store of its flag before it re-checks
        // its rings: either it sees our push or we see its flag.
        fence(Ordering::SeqCst);
        if self.sleeping[core].load(Ordering::Relaxed) {
            self.kick(core);
        }
    }

    pub(crate) fn kick(&self, core: usize) {
        self.wake_fds[core].kick();
    }

    /// Queues an operator's action for core 0 and wakes it; false when the
    /// queue is full.
    pub fn operator(&self, action: operator::OperatorAction, account: u64) -> bool {
        if !self.operator.push(action, account) {
            return false;
        }
        self.kick(0);
        true
    }

    fn kick_all(&self) {
        for wake in self.wake_fds.iter() {
            wake.kick();
        }
    }
}

/// Monotonic nanoseconds since the first call in this process (for
/// intervals; the first value is about 0).
pub fn monotonic_ns() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Wall-clock nanoseconds since the epoch (for timestamps in reports).
pub fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Why the server could not start. Each says what to do.
#[derive(Debug)]
pub enum StartError {
    /// The listen address is taken.
    AddressInUse(SocketAddr),
    /// The listen address is not on this host.
    AddressNotAvailable(SocketAddr),
    /// Binding or listening failed otherwise.
    Listen(SocketAddr, io::Error),
    /// io_uring is unavailable (the message says why and how to fix it).
    IoUring(io::Error),
    /// A core thread failed to start (or its shards could not be recovered).
    Core(usize, String),
    /// The journal directory cannot be used.
    Journal(String),
    /// The configuration is inconsistent.
    Config(String),
    /// The admin endpoint cannot listen (the message says why).
    Admin(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::AddressInUse(a) => write!(
                f,
                "cannot listen on {a}: the address is already in use; stop the other process or pick another --listen port"
            ),
            StartError::AddressNotAvailable(a) => write!(
                f,
                "cannot listen on {a}: that address is not assigned to this host; use 0.0.0.0 or one of its addresses"
            ),
            StartError::Listen(a, e) => write!(f, "cannot listen on {a}: {e}"),
            StartError::IoUring(e) => write!(f, "{e}"),
            StartError::Core(cpu, e) => write!(f, "core on CPU {cpu} failed to start: {e}"),
            StartError::Journal(e) => write!(f, "{e}"),
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Admin(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Final numbers of a run.
#[derive(Clone, Debug)]
pub struct FinalStats {
    /// Counters summed over cores.
    pub total: Counters,
    /// Per-core counters.
    pub cores: Vec<Counters>,
    /// Seconds from start to stop.
    pub elapsed_secs: f64,
    /// False when a core thread failed or the drain timed out.
    pub clean: bool,
}

/// A running server.
pub struct Server {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<core::CoreExit>>,
    stats_thread: Option<JoinHandle<()>>,
    stats_stop: Arc<AtomicBool>,
    started: Instant,
    cpus: Vec<usize>,
    housekeeper: Option<Housekeeper>,
    /// Held while running: a second server on the same journal is refused.
    _journal_lock: Option<std::fs::File>,
    /// The admin endpoint, when it runs.
    admin: Option<tuning::admin::AdminServer>,
    /// The NATS market-data bridge, when it runs.
    md_bridge: Option<crate::mdbridge::Bridge>,
    /// The replication thread (`--replicas`), when it runs.
    replicator: Option<replicate::Replicator>,
    /// The auth thread (with `--accounts`); it ends when the cores do.
    auth_thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts the cores and returns once every one of them is running:
    /// validate, listen, build the mesh and the placement, open the
    /// journal, spawn the cores (each recovers its shards), wait for ready.
    pub fn start(cfg: ServerConfig) -> Result<Server, StartError> {
        start::start(cfg)
    }

    /// The address the server listens on (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// True if any core thread has exited (it only does so on failure before `stop`).
    pub fn has_failed_core(&self) -> bool {
        self.threads.iter().any(JoinHandle::is_finished)
    }

    /// A snapshot of the counters.
    pub fn sample(&self) -> Sample {
        Sample::take(&self.shared.stats, monotonic_ns())
    }

    /// Graceful shutdown: stop accepting and reading, let every order in
    /// flight finish and its reports be sent, then close the connections
    /// and join the cores.
    pub fn stop(mut self) -> FinalStats {
        let shared = Arc::clone(&self.shared);
        shared.stop_reading.store(true, Ordering::Release);
        shared.kick_all();
        let deadline = Instant::now() + Duration::from_millis(DRAIN_TIMEOUT_MS);
        let mut clean = true;
        let mut previous: Option<Vec<u64>> = None;
        loop {
            std::thread::sleep(Duration::from_millis(2));
            shared.kick_all();
            let counters: Vec<Counters> = shared.stats.iter().map(CoreStats::load).collect();
            let quiet = shared.stats.iter().all(|s| {
                s.draining.load(Ordering::Acquire)
                    && s.idle.load(Ordering::Acquire)
                    && s.staged.load(Ordering::Relaxed) == 0
            });
            let pushed: u64 = counters.iter().map(|c| c.ring_pushed).sum();
            let popped: u64 = counters.iter().map(|c| c.ring_popped).sum();
            let iterations: Vec<u64> = counters.iter().map(|c| c.iterations).collect();
            if quiet && pushed == popped {
                // Quiet twice, with every core having looped in between: nothing is in flight.
                if let Some(prev) = &previous
                    && prev.iter().zip(&iterations).all(|(a, b)| b > a)
                {
                    break;
                }
                if previous.is_none() {
                    previous = Some(iterations);
                }
            } else {
                previous = None;
            }
            if Instant::now() > deadline || self.has_failed_core() {
                tracing::warn!(
                    "shutdown: cores did not drain within {DRAIN_TIMEOUT_MS} ms; closing anyway"
                );
                clean = false;
                break;
            }
        }
        shared.exit.store(true, Ordering::Release);
        shared.kick_all();
        let mut cores = Vec::with_capacity(self.threads.len());
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(exit) => cores.push(exit.counters),
                Err(_) => {
                    clean = false;
                    cores.push(Counters::default());
                }
            }
        }
        self.stats_stop.store(true, Ordering::Release);
        if let Some(t) = self.stats_thread.take() {
            let _ = t.join();
        }
        self.stop_housekeeper();
        if let Some(mut r) = self.replicator.take() {
            r.stop();
        }
        if let Some(t) = self.auth_thread.take() {
            let _ = t.join();
        }
        if let Some(bridge) = self.md_bridge.take() {
            let s = bridge.stats();
            tracing::info!(
                "NATS market data: {} published, {} dropped (disconnected {}, full rings {}, slow {}), {} publish errors, {} reconnects",
                s.published,
                s.dropped_disconnected + s.dropped_full + s.dropped_slow,
                s.dropped_disconnected,
                s.dropped_full,
                s.dropped_slow,
                s.publish_errors,
                s.reconnects
            );
            bridge.stop();
        }
        let mut total = Counters::default();
        for c in &cores {
            total.add(c);
        }
        FinalStats {
            total,
            cores,
            elapsed_secs: self.started.elapsed().as_secs_f64(),
            clean,
        }
    }
}

impl Server {
    /// Lets the journal thread finish its queue (a snapshot being written)
    /// and joins it; the cores, its other senders, are gone by now.
    fn stop_housekeeper(&mut self) {
        if let Some(mut h) = self.housekeeper.take() {
            drop(h.jobs);
            if let Some(t) = h.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shared.stop_reading.store(true, Ordering::Release);
            self.shared.exit.store(true, Ordering::Release);
            self.shared.kick_all();
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
        self.stats_stop.store(true, Ordering::Release);
        if let Some(t) = self.stats_thread.take() {
            let _ = t.join();
        }
        self.stop_housekeeper();
    }
}

pub(crate) fn spawn_stats_thread(
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    cpus: Vec<usize>,
) -> Option<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("turbo-dex-stats".into())
        .spawn(move || {
            let mut prev = Sample::take(&shared.stats, monotonic_ns());
            let mut next = Instant::now() + Duration::from_secs(1);
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(50));
                if Instant::now() < next {
                    continue;
                }
                next += Duration::from_secs(1);
                let now = Sample::take(&shared.stats, monotonic_ns());
                eprintln!("{}", stats::live_line(&prev, &now, &cpus));
                prev = now;
            }
        })
        .ok()
}
