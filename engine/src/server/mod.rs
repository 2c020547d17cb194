//! The turbo-dex server: one pinned thread per core, each with its own
//! io_uring, SO_REUSEPORT listener, connections and shards, joined by a
//! full mesh of SPSC rings (rtrb). See ARCHITECTURE.md for the hot path.

mod conn;
mod core;
pub mod durable;
pub mod stats;
pub mod uring;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wire::SymbolEntry;

use self::core::{Core, CoreConfig, CoreJournal, Mesh, Msg};
use self::durable::{Housekeeper, JournalSettings, ShardLog, Snapshot};
use self::stats::{CoreStats, Counters, Sample};
use crate::book::{Matcher, NullShard, Shard, ShardConfig};
use crate::journal::{self, ShardIdentity};

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
    /// Print the live stats line every second.
    pub live_stats: bool,
    /// The journal, or `None` for no durability (benchmarks).
    pub journal: Option<JournalSettings>,
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
            max_frame_bytes: wire::DEFAULT_MAX_FRAME_BYTES,
            heartbeat_ms: 1_000,
            idle_timeout_factor: 3,
            slow_consumer_ms: 10_000,
            out_high_water_bytes: 4 << 20,
            out_max_bytes: 64 << 20,
            send_chunk_bytes: 1 << 20,
            recv_buffers: 256,
            recv_buffer_bytes: 64 << 10,
            ring_capacity: ring_capacity_for(cpus.len()),
            auth_token: None,
            live_stats: false,
            journal: None,
            cpus,
        }
    }
}

/// Default ring capacity: a full mesh has n*(n-1) rings, so shrink each as
/// cores grow (64K messages each on 2 cores, 8K on 40), keeping the mesh
/// within about a gigabyte.
pub fn ring_capacity_for(cores: usize) -> usize {
    (1usize << 20)
        .checked_div(cores.max(1) * 2)
        .unwrap_or(1 << 16)
        .next_power_of_two()
        .clamp(4096, 1 << 16)
}

/// State shared by the cores and the admin side.
pub struct Shared {
    /// Per-core published counters.
    pub stats: Box<[CoreStats]>,
    /// Per-core "about to sleep" flags; a producer that sees one set wakes the core.
    sleeping: Box<[PaddedFlag]>,
    /// Per-core eventfds that wake a sleeping core.
    wake_fds: Box<[RawFd]>,
    /// Set when shutdown begins: stop accepting and reading.
    stop_reading: AtomicBool,
    /// Set when every core is drained: close connections and exit.
    exit: AtomicBool,
    /// Live connections over all cores (checked at accept only).
    conns_live: AtomicUsize,
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

    fn kick(&self, core: usize) {
        let one: u64 = 1;
        // SAFETY: an 8-byte write from a valid u64 to an eventfd we own.
        unsafe {
            libc::write(self.wake_fds[core], (&raw const one).cast(), 8);
        }
    }

    fn kick_all(&self) {
        for core in 0..self.wake_fds.len() {
            self.kick(core);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        for &fd in self.wake_fds.iter() {
            // SAFETY: the eventfds were created by `Server::start` and are closed once, here.
            unsafe { libc::close(fd) };
        }
    }
}

/// Monotonic nanoseconds (for intervals).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Wall-clock nanoseconds since the epoch (for timestamps in reports).
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes a timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
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
}

/// Creates the journal directory and takes its lock file.
fn lock_journal(dir: &std::path::Path) -> Result<std::fs::File, StartError> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir).map_err(|e| {
        StartError::Journal(format!(
            "cannot create the journal directory {}: {e}; pick another with --journal DIR (or --journal none)",
            dir.display()
        ))
    })?;
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StartError::Journal(format!("cannot open {}: {e}", path.display())))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(StartError::Journal(format!(
            "the journal {} is in use by another turbo-dex; stop it or give this one another --journal",
            dir.display()
        )));
    }
    Ok(file)
}

/// One SO_REUSEPORT listener (each core gets its own accept queue).
fn listen(addr: SocketAddr) -> Result<TcpListener, StartError> {
    tuning::listen_reuseport(addr, LISTEN_BACKLOG).map_err(|e| {
        if e.is_addr_in_use() {
            StartError::AddressInUse(addr)
        } else if e.is_addr_not_available() {
            StartError::AddressNotAvailable(addr)
        } else {
            StartError::Listen(addr, io::Error::other(e.to_string()))
        }
    })
}

/// Accept backlog per core (the kernel caps it at net.core.somaxconn).
const LISTEN_BACKLOG: u32 = 4096;

fn new_eventfd() -> io::Result<RawFd> {
    // SAFETY: eventfd creation; the fd is owned by `Shared`.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fd)
    }
}

impl Server {
    /// Starts the cores and returns once every one of them is running.
    pub fn start(cfg: ServerConfig) -> Result<Server, StartError> {
        let ncores = cfg.cpus.len();
        if ncores == 0 {
            return Err(StartError::Config("no cores to run on".into()));
        }
        if (cfg.shards as usize) < ncores {
            return Err(StartError::Config(format!(
                "--shards {} is below the number of cores ({ncores}); every core needs at least one shard",
                cfg.shards
            )));
        }
        if cfg.symbols.is_empty() {
            return Err(StartError::Config("at least one symbol is needed".into()));
        }
        cfg.shard
            .validate()
            .map_err(|e| StartError::Config(e.to_string()))?;
        // io_uring's rings and buffers count against RLIMIT_MEMLOCK on older
        // kernels: raise it as far as allowed (the start-up host check
        // explains what to do when it stays low).
        let _ = tuning::raise_memlock(tuning::MEMLOCK_UNLIMITED);
        uring::probe().map_err(StartError::IoUring)?;

        // Listeners first, so a busy port fails before any thread starts.
        let first = listen(cfg.listen)?;
        let local_addr = first
            .local_addr()
            .map_err(|e| StartError::Listen(cfg.listen, e))?;
        let mut listeners = vec![first];
        for _ in 1..ncores {
            listeners.push(listen(local_addr)?);
        }

        let mut wake_fds = Vec::with_capacity(ncores);
        for _ in 0..ncores {
            match new_eventfd() {
                Ok(fd) => wake_fds.push(fd),
                Err(e) => {
                    for fd in wake_fds {
                        // SAFETY: closing eventfds created just above.
                        unsafe { libc::close(fd) };
                    }
                    return Err(StartError::Config(format!("eventfd: {e}")));
                }
            }
        }
        let shared = Arc::new(Shared {
            stats: (0..ncores).map(|_| CoreStats::default()).collect(),
            sleeping: (0..ncores).map(|_| PaddedFlag::default()).collect(),
            wake_fds: wake_fds.into_boxed_slice(),
            stop_reading: AtomicBool::new(false),
            exit: AtomicBool::new(false),
            conns_live: AtomicUsize::new(0),
        });

        // The full mesh: ring i->j feeds core j from core i.
        let mut meshes: Vec<Mesh> = (0..ncores)
            .map(|_| Mesh {
                to: (0..ncores).map(|_| None).collect(),
                from: (0..ncores).map(|_| None).collect(),
            })
            .collect();
        for i in 0..ncores {
            for j in 0..ncores {
                if i != j {
                    let (p, c) = rtrb::RingBuffer::<Msg>::new(cfg.ring_capacity);
                    meshes[i].to[j] = Some(p);
                    meshes[j].from[i] = Some(c);
                }
            }
        }

        let directory: Arc<[SymbolEntry]> = cfg
            .symbols
            .iter()
            .enumerate()
            .map(|(i, name)| SymbolEntry::new(i as u32, name))
            .collect();
        let mss_chunk = cfg.send_chunk_bytes.max(1);
        // Symbol s lives in shard s % shards, shard k on core k % cores, as
        // the (k / cores)-th shard of that core.
        let placement: Arc<[u64]> = (0..cfg.symbols.len() as u64)
            .map(|s| {
                let shard = s % u64::from(cfg.shards);
                let core = shard % ncores as u64;
                (core << 32) | (shard / ncores as u64)
            })
            .collect();
        let journal = if cfg.engine == EngineKind::Match {
            cfg.journal.clone()
        } else {
            None
        };
        let journal_lock = match &journal {
            Some(j) => {
                j.config.validate().map_err(StartError::Journal)?;
                Some(lock_journal(&j.config.dir)?)
            }
            None => None,
        };
        let mut done_rx = Vec::with_capacity(ncores);
        let housekeeper = match &journal {
            Some(j) => {
                let mut done_tx = Vec::with_capacity(ncores);
                for _ in 0..ncores {
                    let (tx, rx) = mpsc::channel();
                    done_tx.push(tx);
                    done_rx.push(Some(rx));
                }
                Some(
                    Housekeeper::start(
                        j.config.dir.clone(),
                        j.config.segment_bytes,
                        done_tx,
                        Arc::clone(&shared),
                    )
                    .map_err(|e| {
                        StartError::Journal(format!("cannot start the journal thread: {e}"))
                    })?,
                )
            }
            None => None,
        };
        let (ready_tx, ready_rx) = mpsc::channel::<Result<u64, (usize, String)>>();
        let mut go_tx = Vec::with_capacity(ncores);
        let mut threads = Vec::with_capacity(ncores);
        for (index, (mesh, listener)) in meshes.into_iter().zip(listeners).enumerate() {
            let cpu = cfg.cpus[index];
            let core_cfg = CoreConfig {
                index,
                cpu: cfg.pin.then_some(cpu),
                ncores,
                shard_count: cfg.shards,
                symbol_count: cfg.symbols.len() as u32,
                batch: cfg.batch.max(1),
                poll: cfg.poll,
                max_connections: cfg.max_connections,
                max_frame_bytes: cfg.max_frame_bytes,
                heartbeat_ms: cfg.heartbeat_ms,
                idle_timeout_factor: cfg.idle_timeout_factor.max(1),
                slow_consumer_ms: cfg.slow_consumer_ms,
                out_high_water_bytes: cfg.out_high_water_bytes,
                out_max_bytes: cfg.out_max_bytes.max(cfg.out_high_water_bytes),
                send_chunk_bytes: mss_chunk,
                recv_buffers: cfg.recv_buffers,
                recv_buffer_bytes: cfg.recv_buffer_bytes,
                ring_capacity: cfg.ring_capacity,
                auth_token: cfg.auth_token.clone(),
                directory: Arc::clone(&directory),
                placement: Arc::clone(&placement),
                journal_fsync: journal.as_ref().is_some_and(|j| j.fsync),
                snapshot_every_records: journal
                    .as_ref()
                    .map_or(u64::MAX, |j| j.config.snapshot_every_records),
            };
            let (go, go_rx) = mpsc::channel::<u32>();
            go_tx.push(go);
            let core_journal = match (&housekeeper, &journal, done_rx.get_mut(index)) {
                (Some(h), Some(j), Some(rx)) => rx
                    .take()
                    .map(|done| (h.jobs.clone(), done, j.config.clone())),
                _ => None,
            };
            let shared = Arc::clone(&shared);
            let ready = ready_tx.clone();
            let engine = cfg.engine;
            let shard_cfg = cfg.shard;
            let symbol_count = cfg.symbols.len() as u32;
            let shard_count = cfg.shards;
            let listener = OwnedFd::from(listener);
            let spawned = std::thread::Builder::new()
                .name(format!("turbo-dex-core-{cpu}"))
                .spawn(move || {
                    if let Some(cpu) = core_cfg.cpu
                        && let Err(e) = tuning::pin_current_thread(cpu)
                    {
                        let _ = ready.send(Err((cpu, e.to_string())));
                        return core::CoreExit {
                            counters: Counters::default(),
                        };
                    }
                    // Shards are created on their own core so their memory is first touched there.
                    let local: Vec<u32> = (0..shard_count)
                        .filter(|s| *s as usize % ncores == index)
                        .collect();
                    let parts = CoreParts {
                        cfg: core_cfg,
                        shared,
                        listener,
                        mesh,
                        ready,
                        go: go_rx,
                        cpu,
                    };
                    match (engine, core_journal) {
                        (EngineKind::Match, Some((jobs, done, jcfg))) => {
                            let mut shards = Vec::with_capacity(local.len());
                            let mut logs = Vec::with_capacity(local.len());
                            let mut session_seq_max = 0;
                            for &s in &local {
                                let id = ShardIdentity {
                                    shard_index: s,
                                    shard_count,
                                    symbol_count,
                                };
                                match journal::recover(
                                    &jcfg.dir,
                                    &id,
                                    shard_cfg,
                                    jcfg.segment_bytes,
                                ) {
                                    Ok(r) => {
                                        eprintln!("turbo-dex: journal: {}", r.report);
                                        session_seq_max =
                                            session_seq_max.max(r.report.session_sequence_max);
                                        let mut log =
                                            ShardLog::new(id, shard_cfg, r.segment, r.next_seq);
                                        // Records since the last snapshot count towards the next.
                                        log.since_snapshot = r.report.records_replayed;
                                        logs.push(log);
                                        shards.push(r.shard);
                                    }
                                    Err(e) => return parts.fail(e.to_string()),
                                }
                            }
                            let journal = CoreJournal { logs, jobs, done };
                            run_core(parts, shards, Some(journal), session_seq_max)
                        }
                        (EngineKind::Match, None) => {
                            let mut shards = Vec::with_capacity(local.len());
                            for &s in &local {
                                match Shard::try_new(s, shard_count, symbol_count, shard_cfg) {
                                    Ok(shard) => shards.push(shard),
                                    Err(e) => return parts.fail(e.to_string()),
                                }
                            }
                            run_core(parts, shards, None, 0)
                        }
                        (EngineKind::Null, _) => {
                            let shards = local.iter().map(|&s| NullShard::new(s)).collect();
                            run_core(parts, shards, None, 0)
                        }
                    }
                });
            match spawned {
                Ok(h) => threads.push(h),
                Err(e) => return Err(StartError::Core(cpu, e.to_string())),
            }
        }
        drop(ready_tx);
        let mut failure = None;
        let mut session_seq_max = 0u64;
        for _ in 0..ncores {
            match ready_rx.recv() {
                Ok(Ok(seq)) => session_seq_max = session_seq_max.max(seq),
                Ok(Err((cpu, e))) => failure = failure.or(Some(StartError::Core(cpu, e))),
                Err(_) => {
                    failure = failure.or(Some(StartError::Core(0, "a core thread exited".into())))
                }
            }
        }
        let mut server = Server {
            local_addr,
            shared,
            threads,
            stats_thread: None,
            stats_stop: Arc::new(AtomicBool::new(false)),
            started: Instant::now(),
            cpus: cfg.cpus.clone(),
            housekeeper,
            _journal_lock: journal_lock,
        };
        if failure.is_none() {
            // New sessions are numbered above every session a recovered
            // journal still names, on every core.
            let base = (session_seq_max >> conn::SLOT_BITS) as u32 + 1;
            for go in &go_tx {
                let _ = go.send(base);
            }
        }
        drop(go_tx);
        if let Some(e) = failure {
            server.shared.stop_reading.store(true, Ordering::Release);
            server.shared.exit.store(true, Ordering::Release);
            server.shared.kick_all();
            for t in server.threads.drain(..) {
                let _ = t.join();
            }
            return Err(e);
        }
        if cfg.live_stats {
            server.stats_thread = spawn_stats_thread(
                Arc::clone(&server.shared),
                Arc::clone(&server.stats_stop),
                server.cpus.clone(),
            );
        }
        Ok(server)
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
        let deadline = Instant::now() + Duration::from_secs(10);
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
                eprintln!("turbo-dex: shutdown: cores did not drain within 10 s; closing anyway");
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

/// What a core thread starts with.
struct CoreParts {
    cfg: CoreConfig,
    shared: Arc<Shared>,
    listener: OwnedFd,
    mesh: Mesh,
    ready: mpsc::Sender<Result<u64, (usize, String)>>,
    go: mpsc::Receiver<u32>,
    cpu: usize,
}

impl CoreParts {
    fn fail(self, why: String) -> core::CoreExit {
        let _ = self.ready.send(Err((self.cpu, why)));
        core::CoreExit {
            counters: Counters::default(),
        }
    }
}

/// Builds the core, reports ready (with the highest recovered session
/// sequence), waits for the go with the session numbering base, and runs.
fn run_core<M: Matcher + Snapshot>(
    parts: CoreParts,
    shards: Vec<M>,
    journal: Option<CoreJournal>,
    session_seq_max: u64,
) -> core::CoreExit {
    let CoreParts {
        cfg,
        shared,
        listener,
        mesh,
        ready,
        go,
        cpu,
    } = parts;
    match Core::new(cfg, shared, listener, mesh, shards, journal) {
        Ok(mut core) => {
            let _ = ready.send(Ok(session_seq_max));
            drop(ready);
            match go.recv() {
                Ok(base) => {
                    core.set_session_base(base);
                    core.run()
                }
                // Another core failed: the server is not starting.
                Err(_) => core::CoreExit {
                    counters: Counters::default(),
                },
            }
        }
        Err(e) => {
            let _ = ready.send(Err((cpu, e.to_string())));
            core::CoreExit {
                counters: Counters::default(),
            }
        }
    }
}

fn spawn_stats_thread(
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
