//! The runtime: one glommio executor per `--cores` entry, pinned there
//! (`Placement::Fixed`), each owning its connections. Per connection a
//! sender task writes batches (closed loop: whenever there is room under the
//! in-flight bound; open loop: when the schedule says so) and a receiver task
//! reads reports into a fixed buffer and hands them to the [`Session`]. The
//! two share the session through an `Rc<RefCell<_>>` that is never borrowed
//! across an await. glommio parks an idle executor (no spinning).
//!
//! The main thread waits for every connection's handshake, starts the clock
//! for everyone at once, prints the live line once a second from counters
//! the connections publish through atomics (one store per batch or read, not
//! per order), and merges the results at the end.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, mpsc};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use wire::{
    Decoded, Decoder, Frame, HELLO_CANCEL_ON_DISCONNECT, Heartbeat, Hello, HelloAck, Kind,
    SessionErrorCode, SymbolEntry,
};

use crate::cli::Plan;
use crate::metrics::{Metrics, Published};
use crate::report::{RunReport, live_line};
use crate::rng::stream_seed;
use crate::schedule::Schedule;
use crate::session::{Session, SessionConfig, Window};
use crate::stats::{Counters, Percentiles, new_histogram};
use crate::timeline::Timeline;
use crate::tls::Stream;
use crate::verify::{NodeLedgers, TradeLedger, Violations};

mod routed;
mod subscriber;

/// Most symbols a directory may list; a server claiming more is refused
/// (bounds the memory the handshake allocates).
pub const DIRECTORY_SYMBOLS_MAX: u32 = 1 << 20;
/// How often a waiting sender looks at the run-wide stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);
/// How often a connection publishes its interval latency histogram.
const PUBLISH_INTERVAL_NS: u64 = 200_000_000;
/// glommio's registered I/O memory per executor: we do no DMA file I/O, so
/// the minimum (glommio rounds up to 64 KiB) instead of its 10 MiB default.
const GLOMMIO_IO_MEMORY_BYTES: usize = 64 << 10;

/// Set by SIGINT or SIGTERM: the run ends now (as if its duration were
/// over), drains, and reports what it measured.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Makes SIGINT and SIGTERM end the run early with a report instead of
/// killing the process; a second signal kills it (the handler resets).
pub fn install_interrupt_handler() -> io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid (empty mask, no flags); the
        // handler only stores to an atomic, which is async-signal-safe, and
        // the struct outlives the call that copies it.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_interrupt as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether a signal asked the run to end.
fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Why a run could not happen or did not finish.
#[derive(Debug)]
pub enum RunError {
    /// A command-line value the server does not allow (exit status 2).
    Usage(String),
    /// The run failed before measuring anything (exit status 1).
    Failed(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Usage(s) | RunError::Failed(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for RunError {}

/// State shared by the main thread and the workers.
struct Shared {
    /// Set when the run must stop now (a failure anywhere).
    stop: AtomicBool,
    /// The first failure, in words.
    failure: Mutex<Option<String>>,
    /// Usage problems found at the handshake (a batch too big for the server...).
    usage: Mutex<Option<String>>,
    /// When the clock starts, set by the main thread once everyone is connected.
    epoch: OnceLock<Instant>,
    /// Workers say they are connected; the main thread says go.
    gate: Gate,
    /// What the connections publish, for the live line and `--admin`.
    metrics: Arc<Metrics>,
    /// `--cluster`: the map a seed node gave before the run.
    cluster: Option<crate::cluster::MapView>,
}

/// Where the workers wait, after connecting, for the clock to start.
#[derive(Default)]
struct Gate {
    /// (workers that arrived, whether the main thread said go)
    state: Mutex<(usize, bool)>,
    changed: Condvar,
}

impl Gate {
    /// A worker arrives and blocks until go. Blocking the executor thread
    /// is fine here: it has nothing else to run yet.
    fn arrive_and_wait(&self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.0 += 1;
        self.changed.notify_all();
        while !state.1 {
            state = match self.changed.wait(state) {
                Ok(s) => s,
                Err(_) => return,
            };
        }
    }

    /// The main thread waits for `workers` arrivals.
    fn wait_for(&self, workers: usize) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        while state.0 < workers {
            state = match self.changed.wait(state) {
                Ok(s) => s,
                Err(_) => return,
            };
        }
    }

    /// Lets every worker go.
    fn open(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.1 = true;
        }
        self.changed.notify_all();
    }
}

impl Shared {
    fn fail(&self, message: String) {
        if let Ok(mut f) = self.failure.lock()
            && f.is_none()
        {
            *f = Some(message);
        }
        self.stop.store(true, Ordering::Relaxed);
    }

    fn usage(&self, message: String) {
        if let Ok(mut u) = self.usage.lock()
            && u.is_none()
        {
            *u = Some(message);
        }
        self.stop.store(true, Ordering::Relaxed);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// What one connection brings home.
struct ConnOutcome {
    window: Counters,
    latency: Histogram<u64>,
    violations: Violations,
    unanswered: u64,
    failed: bool,
    /// `--cluster`: what each node connection carried (empty otherwise).
    nodes: Vec<routed::NodeCount>,
    /// `--cluster`: requests of the window that had no route.
    unrouted: u64,
    /// `--cluster`: the newest map version the routes took.
    map_version: u64,
    /// `--cluster`: shards that passed to another node mid-run.
    taken_over: Vec<u32>,
    /// `--cluster`: orders set aside (their shard passed to another node,
    /// or their node went).
    set_aside: u64,
}

/// What one worker brings home.
#[derive(Default)]
struct WorkerOutcome {
    connections: Vec<ConnOutcome>,
    /// The fills still waiting for their other half, per node (the one
    /// server without `--cluster`).
    ledgers: NodeLedgers,
}

/// Runs the whole load test described by `plan`; `live` is called with
/// each live line (once a second) unless the plan is quiet.
pub fn run(plan: &Plan, live: impl FnMut(&str)) -> Result<RunReport, RunError> {
    run_with_metrics(plan, &Metrics::new(plan.total_connections()), live)
}

/// [`run`], publishing into `metrics` (made by
/// `Metrics::new(plan.total_connections())`) as it goes, for a `/metrics`
/// endpoint to read while the run lasts.
pub fn run_with_metrics(
    plan: &Plan,
    metrics: &Arc<Metrics>,
    mut live: impl FnMut(&str),
) -> Result<RunReport, RunError> {
    debug_assert_eq!(metrics.connections.len(), plan.total_connections());
    let workers = plan.cores.len();
    let cluster = match &plan.cluster {
        Some(seeds) => Some(routed::fetch_map(plan, seeds)?),
        None => None,
    };
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        failure: Mutex::new(None),
        usage: Mutex::new(None),
        epoch: OnceLock::new(),
        gate: Gate::default(),
        metrics: metrics.clone(),
        cluster,
    });
    let (done_tx, done_rx) = mpsc::channel::<usize>();
    let mut handles = Vec::with_capacity(workers);
    for (w, &cpu) in plan.cores.iter().enumerate() {
        let (plan, worker_shared, done) = (plan.clone(), shared.clone(), done_tx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("dex-trader-w{w}"))
            .spawn(move || {
                let outcome = worker_thread(w, cpu, &plan, &worker_shared);
                let _ = done.send(w);
                outcome
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                shared.fail(format!("cannot start worker thread {w}: {e}"));
                break;
            }
        }
    }
    drop(done_tx);
    let spawned_all = handles.len() == workers;
    let md = subscriber::Subscribers::spawn(plan, &shared);
    shared
        .gate
        .wait_for(handles.len() + md.as_ref().map_or(0, subscriber::Subscribers::threads));
    let start = Instant::now();
    let _ = shared.epoch.set(start);
    shared.gate.open();
    if let Some(u) = shared.usage.lock().ok().and_then(|u| u.clone()) {
        join_all(handles);
        if let Some(md) = md {
            md.join();
        }
        return Err(RunError::Usage(u));
    }
    if shared.stopped() || !spawned_all {
        join_all(handles);
        if let Some(md) = md {
            md.join();
        }
        let f = shared.failure.lock().ok().and_then(|f| f.clone());
        return Err(RunError::Failed(
            f.unwrap_or_else(|| "the run stopped".into()),
        ));
    }

    // Live line until every worker is done.
    let warmup_ns = plan.warmup.as_nanos() as u64;
    let mut finished = 0;
    let mut next_tick = start + Duration::from_secs(1);
    let mut last = (start, 0u64);
    let mut scratch = new_histogram();
    let mut timeline = Timeline::new(
        plan.warmup,
        plan.duration,
        plan.interval_log.as_deref(),
        &crate::outputs::interval_log_comment(plan),
    );
    while finished < workers {
        let wait = next_tick.saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(wait) {
            Ok(_) => finished += 1,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                next_tick += Duration::from_secs(1);
                let now = Instant::now();
                let (mut orders, mut accepted, mut trades, mut rejects) = (0, 0, 0, 0);
                scratch.reset();
                for p in &shared.metrics.connections {
                    orders += p.orders_sent.load(Ordering::Relaxed);
                    accepted += p.accepted.load(Ordering::Relaxed);
                    trades += p.trades.load(Ordering::Relaxed);
                    rejects += p.rejects.load(Ordering::Relaxed);
                    if let Ok(mut h) = p.interval.lock() {
                        let _ = scratch.add(&*h);
                        h.reset();
                    }
                }
                let secs = now.duration_since(last.0).as_secs_f64();
                let rate = if secs > 0.0 {
                    orders.saturating_sub(last.1) as f64 / secs
                } else {
                    0.0
                };
                last = (now, orders);
                shared.metrics.add_latency(&scratch);
                timeline.tick(now.duration_since(start), orders, trades, &scratch);
                if !plan.quiet {
                    let p99 = (!scratch.is_empty())
                        .then(|| scratch.value_at_quantile(0.99) as f64 / 1000.0);
                    let in_warmup = (now.duration_since(start).as_nanos() as u64) < warmup_ns;
                    live(&live_line(
                        in_warmup, orders, rate, accepted, trades, rejects, p99,
                    ));
                }
            }
        }
    }
    let outcomes = join_all(handles);
    let md = md.and_then(subscriber::Subscribers::join);
    Ok(merge(plan, &shared, outcomes, md, timeline))
}

fn join_all(
    handles: Vec<std::thread::JoinHandle<Option<WorkerOutcome>>>,
) -> Vec<Option<WorkerOutcome>> {
    handles
        .into_iter()
        .map(|h| h.join().ok().flatten())
        .collect()
}

fn merge(
    plan: &Plan,
    shared: &Shared,
    outcomes: Vec<Option<WorkerOutcome>>,
    md: Option<subscriber::MdRun>,
    timeline: Timeline,
) -> RunReport {
    let mut counters = Counters::default();
    let mut latency = new_histogram();
    let mut violations = Violations::default();
    let mut ledgers = NodeLedgers::new();
    let (mut errors, mut unanswered) = (0, 0);
    let mut lost_workers = 0;
    let mut nodes = routed::NodeTotals::default();
    for outcome in outcomes {
        let Some(o) = outcome else {
            lost_workers += 1;
            continue;
        };
        for c in o.connections {
            counters.add(&c.window);
            let _ = latency.add(&c.latency);
            violations.merge(c.violations);
            unanswered += c.unanswered;
            errors += u64::from(c.failed);
            nodes.add(&c.nodes, c.unrouted, c.map_version);
            nodes.add_takeovers(&c.taken_over, c.set_aside);
        }
        ledgers.merge(o.ledgers, &mut violations);
    }
    if lost_workers > 0 {
        shared.fail(format!(
            "{lost_workers} worker thread(s) crashed; their figures are missing"
        ));
    }
    if plan.market_data.is_some() && md.is_none() {
        shared.fail("the market-data thread crashed; its figures are missing".into());
    }
    let failure = shared.failure.lock().ok().and_then(|f| f.clone());
    let trades_paired = ledgers.paired();
    let mut verify = plan.verify.then(|| {
        if failure.is_none() {
            // A node whose connection closed mid-run may have sent one half
            // of a trade and not the other: its leftovers are not checked;
            // nor are those on a shard another node took over (the half of
            // an order set aside goes to no session).
            let shards = shared
                .cluster
                .as_ref()
                .map_or(1, |m| m.owners.len() as u32)
                .max(1);
            ledgers.finish(
                &mut violations,
                |node| nodes.closed(node),
                |symbol| nodes.taken_over(symbol % shards),
            );
        }
        violations
    });
    let measured_ns = shared
        .epoch
        .get()
        .map(|e| e.elapsed().as_nanos() as u64)
        .unwrap_or(0);
    let window_ns = (plan.duration.as_nanos() as u64)
        .min(measured_ns.saturating_sub(plan.warmup.as_nanos() as u64));
    let ended_early = failure.is_some() || interrupted();
    let duration_secs = if ended_early {
        window_ns as f64 / 1e9
    } else {
        plan.duration.as_secs_f64()
    };
    let failure = failure.or_else(|| {
        interrupted().then(|| {
            format!(
                "interrupted by a signal after {:.2} s of measurement; the figures cover that part",
                duration_secs
            )
        })
    });
    // A server that takes requests and stops answering fails the run too.
    let failure = failure.or_else(|| {
        (unanswered > 0).then(|| {
            format!(
                "{unanswered} request(s) were never answered within the {:?} drain after the run: \
                 the server stopped answering or is far behind (a longer --drain waits more)",
                plan.drain
            )
        })
    });
    let covers_traded = md.as_ref().is_some_and(|m| m.covers_traded);
    let market_data = md.and_then(|m| m.report(plan, duration_secs));
    if let (Some(v), Some(m)) = (verify.as_mut(), &market_data) {
        for line in m.violations(counters.trades, covers_traded) {
            v.push(|| line);
        }
    }
    RunReport {
        counters,
        duration_secs,
        warmup_secs: plan.warmup.as_secs_f64(),
        batch: plan.batch,
        workers: plan.cores.len(),
        connections: plan.total_connections(),
        accounts: plan.distinct_accounts(),
        rate: plan.rate,
        inflight: plan.outstanding_max(),
        mix: plan.mix,
        latency: Percentiles::of(&latency),
        recorded: timeline.finish(latency),
        errors,
        unanswered,
        verify,
        trades_paired,
        failure,
        market_data,
        cluster: shared
            .cluster
            .as_ref()
            .map(|map| nodes.report(map, duration_secs)),
    }
}

/// A worker thread: builds its pinned executor, connects, waits for the
/// others, trades.
fn worker_thread(w: usize, cpu: usize, plan: &Plan, shared: &Arc<Shared>) -> Option<WorkerOutcome> {
    let placement = if plan.pin {
        Placement::Fixed(cpu)
    } else {
        Placement::Unbound
    };
    let mut builder = LocalExecutorBuilder::new(placement)
        .name(&format!("dex-trader-w{w}"))
        .io_memory(GLOMMIO_IO_MEMORY_BYTES);
    if let Some(spin) = plan.spin {
        builder = builder.spin_before_park(spin);
    }
    let executor = builder.make();
    let executor = match executor {
        Ok(ex) => ex,
        Err(e) => {
            shared.fail(format!(
                "worker {w}: cannot start a glommio executor on CPU {cpu}: {e} (io_uring must be \
                 available and the CPU usable; see `turbo-dex check-host`)"
            ));
            shared.gate.arrive_and_wait();
            return None;
        }
    };
    executor.run(worker(w, plan, shared.clone()))
}

/// A connected, logged-in connection before the clock starts.
struct Connected {
    stream: Stream,
    ack: HelloAck,
    symbols: Vec<u32>,
    leftover: Vec<u8>,
    coalesce_bytes: usize,
}

async fn worker(w: usize, plan: &Plan, shared: Arc<Shared>) -> Option<WorkerOutcome> {
    if shared.cluster.is_some() {
        return routed::worker(w, plan, shared).await;
    }
    let mut connected = Vec::with_capacity(plan.connections);
    for c in 0..plan.connections {
        let global = w * plan.connections + c;
        match connect(plan, global, plan.server, &plan.server_name).await {
            Ok(conn) => connected.push(conn),
            Err(RunError::Usage(u)) => {
                shared.usage(u);
                break;
            }
            Err(RunError::Failed(f)) => {
                shared.fail(f);
                break;
            }
        }
    }
    // Everyone connected (or someone failed): the main thread starts the clock.
    shared.gate.arrive_and_wait();
    if shared.stopped() {
        return None;
    }
    let epoch = *shared.epoch.get()?;
    let ledger = Rc::new(RefCell::new(TradeLedger::new()));
    let mut tasks = Vec::with_capacity(connected.len());
    for (c, conn) in connected.into_iter().enumerate() {
        let global = w * plan.connections + c;
        let task = connection(
            plan.clone(),
            w,
            c,
            global,
            conn,
            epoch,
            shared.clone(),
            ledger.clone(),
        );
        tasks.push(glommio::spawn_local(task));
    }
    let joined = async {
        let mut connections = Vec::with_capacity(tasks.len());
        for t in tasks {
            connections.push(t.await);
        }
        connections
    };
    let connections = if plan.spin.is_some() {
        // Ends with the join: no timer outlives the connections.
        let watchdog = async {
            loop {
                glommio::timer::sleep(SPIN_WATCHDOG).await;
            }
        };
        future::or(joined, watchdog).await
    } else {
        joined.await
    };
    let mut ledgers = NodeLedgers::new();
    *ledgers.of(plan.server) = Rc::try_unwrap(ledger)
        .map(RefCell::into_inner)
        .unwrap_or_default();
    Some(WorkerOutcome {
        connections,
        ledgers,
    })
}

/// Connects connection `global` to `addr` (`name` as the user wrote it)
/// and logs in; checks the directory and the batch against what the
/// server allows.
async fn connect(
    plan: &Plan,
    global: usize,
    addr: std::net::SocketAddr,
    name: &str,
) -> Result<Connected, RunError> {
    let stream = TcpStream::connect_timeout(addr, plan.connect_timeout)
        .await
        .map_err(|e| {
            RunError::Failed(format!(
                "cannot connect to {name} ({addr}): {e}; is turbo-dex running and listening there?"
            ))
        })?;
    let fd = stream.as_raw_fd();
    tuning::StreamOptions::default()
        .apply(fd)
        .map_err(|e| RunError::Failed(format!("connection to {name}: {e}")))?;
    let mtu = match plan.mtu {
        Some(m) => {
            if global == 0 && !plan.quiet {
                warn_if_mtu_too_big(&stream, m);
            }
            m
        }
        None => tuning::sock::ip_mtu(fd).unwrap_or(tuning::mtu::ETHERNET_MTU_BYTES),
    };
    let coalesce_bytes = tuning::send_coalesce_bytes(mtu, addr.is_ipv6()).max(512);
    let stream = secure(plan, stream).await?;

    let (account, password) = plan.login(global);
    let hello = Hello::new(account, HELLO_CANCEL_ON_DISCONNECT, 0, password);
    let stream = Rc::new(RefCell::new(stream));
    let (ack, entries, leftover) = log_on(&stream, &hello, plan).await?;
    let listed = entries.len();
    let wanted = plan.symbols.unwrap_or(listed);
    if listed == 0 {
        return Err(RunError::Failed(format!(
            "{name} lists no symbols; nothing to trade"
        )));
    }
    if wanted > listed {
        return Err(RunError::Usage(format!(
            "--symbols {wanted}: the server lists only {listed} symbols"
        )));
    }
    let max_frame = ack.max_frame_bytes.get();
    let batch_max = Decoder::new(max_frame).max_messages(Kind::NewOrder);
    if plan.batch > batch_max {
        return Err(RunError::Usage(format!(
            "--batch {}: the server's largest frame is {max_frame} bytes, room for {batch_max} \
             new orders; lower --batch",
            plan.batch
        )));
    }
    let symbols = entries
        .iter()
        .take(wanted)
        .map(|e| e.symbol.get())
        .collect();
    let stream = Rc::try_unwrap(stream)
        .map(RefCell::into_inner)
        .map_err(|_| RunError::Failed("internal: the handshake kept the stream".into()))?;
    Ok(Connected {
        stream,
        ack,
        symbols,
        leftover,
        coalesce_bytes,
    })
}

/// With `--tls`, runs the TLS handshake (within `--connect-timeout`).
async fn secure(plan: &Plan, tcp: TcpStream) -> Result<Stream, RunError> {
    let Some(tls) = &plan.tls else {
        return Ok(Stream::plain(tcp));
    };
    let handshake = async {
        Stream::handshake(tcp, tls)
            .await
            .map_err(|e| RunError::Failed(format!("connection to {}: {e}", plan.server_name)))
    };
    let timeout = async {
        glommio::timer::sleep(plan.connect_timeout).await;
        Err(RunError::Failed(format!(
            "{} accepted the connection but did not complete the TLS handshake within {:?}",
            plan.server_name, plan.connect_timeout
        )))
    };
    future::or(handshake, timeout).await
}

/// Warns (once) when `--mtu` is larger than what the interface
/// the connection leaves from carries: sends sized for it would be split.
fn warn_if_mtu_too_big(stream: &TcpStream, mtu: usize) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let Ok(Some(iface)) = tuning::interface_for_local_addr(local.ip()) else {
        return;
    };
    let sys = std::path::Path::new(tuning::SYS_ROOT);
    if let Ok(iface_mtu) = tuning::interface_mtu(sys, &iface)
        && let Some(warning) = tuning::mtu_warning(&iface, mtu, iface_mtu)
    {
        tracing::warn!("{warning}");
    }
}

/// Sends the Hello and reads the HelloAck and the symbol directory, within
/// `--connect-timeout`: the ack, the directory, and what followed it.
pub(super) async fn log_on(
    stream: &RefCell<Stream>,
    hello: &Hello,
    plan: &Plan,
) -> Result<(HelloAck, Vec<SymbolEntry>, Vec<u8>), RunError> {
    let mut out = Vec::with_capacity(64);
    wire::append_frame(std::slice::from_ref(hello), &mut out)
        .map_err(|e| RunError::Failed(format!("cannot encode the Hello: {e}")))?;
    let handshake = async {
        write_all(stream, &out).await.map_err(|e| {
            RunError::Failed(format!("sending the Hello to {}: {e}", plan.server_name))
        })?;
        read_directory(stream, plan).await
    };
    let timeout = async {
        glommio::timer::sleep(plan.connect_timeout).await;
        Err(RunError::Failed(format!(
            "{} accepted the connection but did not answer the Hello within {:?}",
            plan.server_name, plan.connect_timeout
        )))
    };
    future::or(handshake, timeout).await
}

/// Reads HelloAck and the symbol directory; returns them and any bytes
/// that came after.
async fn read_directory(
    stream: &RefCell<Stream>,
    plan: &Plan,
) -> Result<(HelloAck, Vec<SymbolEntry>, Vec<u8>), RunError> {
    let server = &plan.server_name;
    let decoder = Decoder::for_client(wire::MAX_FRAME_BYTES_LIMIT);
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut ack: Option<HelloAck> = None;
    let mut entries: Vec<SymbolEntry> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        // Decode what we have.
        let mut used = 0;
        loop {
            match decoder.decode(&buf[used..]) {
                Ok(Decoded::Frame(frame, n)) => {
                    used += n;
                    match frame {
                        Frame::HelloAck(a) if ack.is_none() => {
                            let Some(a) = a.first() else { continue };
                            if a.symbol_count.get() > DIRECTORY_SYMBOLS_MAX {
                                return Err(RunError::Failed(format!(
                                    "{server} announces {} symbols, more than the {} this \
                                     generator takes",
                                    a.symbol_count.get(),
                                    DIRECTORY_SYMBOLS_MAX
                                )));
                            }
                            entries.reserve(a.symbol_count.get() as usize);
                            ack = Some(*a);
                        }
                        Frame::SymbolEntry(list) if ack.is_some() => {
                            entries.extend_from_slice(list)
                        }
                        Frame::SessionError(list) => {
                            let (code, text) = list.first().map_or((0, String::new()), |e| {
                                (e.code.get(), String::from_utf8_lossy(e.text()).into_owned())
                            });
                            let name = SessionErrorCode::from_wire(code)
                                .map_or("unknown session error", |c| c.as_str());
                            let hint = if code == SessionErrorCode::AuthenticationFailed.to_wire() {
                                "; check --account and --credentials"
                            } else {
                                ""
                            };
                            return Err(RunError::Failed(format!(
                                "{server} refused the hello: {name} (code {code}){}{text}{hint}",
                                if text.is_empty() { "" } else { ": " }
                            )));
                        }
                        other => {
                            return Err(RunError::Failed(format!(
                                "{server} answered the Hello with a {:?} frame, expected HelloAck \
                                 and the symbol directory; is it a turbo-dex server?",
                                other.kind()
                            )));
                        }
                    }
                    if let Some(a) = ack
                        && entries.len() >= a.symbol_count.get() as usize
                    {
                        let leftover = buf[used..].to_vec();
                        entries.truncate(a.symbol_count.get() as usize);
                        return Ok((a, entries, leftover));
                    }
                }
                Ok(Decoded::NeedMore(_)) => break,
                Err(e) => {
                    // A TLS record: content type 21 (alert) or 22
                    // (handshake), then version 3.x.
                    if plan.tls.is_none() && matches!(buf.get(used..used + 2), Some([21 | 22, 3])) {
                        return Err(RunError::Failed(format!(
                            "{server} answered with TLS: it listens with --tls-cert; run with \
                             --tls --tls-ca FILE"
                        )));
                    }
                    return Err(RunError::Failed(format!(
                        "{server} answered the Hello with bytes that do not decode ({e}); is it a \
                         turbo-dex server speaking protocol version {}?",
                        wire::PROTOCOL_VERSION
                    )));
                }
            }
        }
        buf.drain(..used);
        let n = read_some(stream, &mut chunk).await.map_err(|e| {
            RunError::Failed(format!(
                "reading the answer to the Hello from {server}: {e}"
            ))
        })?;
        if n == 0 {
            return Err(RunError::Failed(format!(
                "{server} closed the connection during the handshake"
            )));
        }
        if buf.len() + n > wire::MAX_FRAME_BYTES_LIMIT as usize * 2 {
            return Err(RunError::Failed(format!(
                "{server} sent more than {} bytes without completing a frame",
                wire::MAX_FRAME_BYTES_LIMIT * 2
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Wakes one waiting task; remembers a wake that came while nobody waited.
#[derive(Default)]
struct Signal {
    raised: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    fn raise(&self) {
        self.raised.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn wait(&self) -> impl Future<Output = ()> + '_ {
        future::poll_fn(move |cx| {
            if self.raised.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }

    /// Waits for a raise or `limit`, whichever comes first.
    async fn wait_at_most(&self, limit: Duration) {
        if limit.is_zero() {
            return;
        }
        future::or(self.wait(), glommio::timer::sleep(limit)).await;
    }
}

/// Reads more of the server's bytes into `buf[*len..]`. False when the
/// connection is done for: a `what` larger than the receive buffer of
/// `recv_bytes`, the server closing it, or a failed read; the reason is
/// then in `failure` and `progress` is raised.
async fn read_more(
    stream: &RefCell<Stream>,
    buf: &mut [u8],
    len: &mut usize,
    recv_bytes: usize,
    what: &str,
    failure: &RefCell<Option<String>>,
    progress: &Signal,
) -> bool {
    let why = if *len == buf.len() {
        format!("{what} is larger than the {recv_bytes}-byte receive buffer")
    } else {
        match read_some(stream, &mut buf[*len..]).await {
            Ok(0) => "the server closed the connection mid-run".to_string(),
            Ok(n) => {
                *len += n;
                return true;
            }
            Err(e) => format!("reading from the server failed: {e}"),
        }
    };
    failure.borrow_mut().get_or_insert(why);
    progress.raise();
    false
}

async fn read_some(stream: &RefCell<Stream>, buf: &mut [u8]) -> io::Result<usize> {
    future::poll_fn(|cx: &mut Context<'_>| stream.borrow_mut().poll_read(cx, buf)).await
}

async fn write_all(stream: &RefCell<Stream>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n =
            future::poll_fn(|cx: &mut Context<'_>| stream.borrow_mut().poll_write(cx, buf)).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the socket took no bytes",
            ));
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// Nanoseconds since the run's epoch.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    #[inline]
    fn now_ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// State shared by a connection's sender and receiver.
struct Link {
    stream: RefCell<Stream>,
    session: RefCell<Session>,
    ledger: Rc<RefCell<TradeLedger>>,
    /// Raised by the receiver after each read (answers free room) and on failure.
    progress: Signal,
    failure: RefCell<Option<String>>,
    published: Arc<Published>,
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    plan: Plan,
    w: usize,
    c: usize,
    global: usize,
    conn: Connected,
    epoch: Instant,
    shared: Arc<Shared>,
    ledger: Rc<RefCell<TradeLedger>>,
) -> ConnOutcome {
    let clock = Clock(epoch);
    let warmup_ns = plan.warmup.as_nanos() as u64;
    let end_ns = warmup_ns + plan.duration.as_nanos() as u64;
    let max_frame = conn.ack.max_frame_bytes.get();
    let session = Session::new(SessionConfig {
        worker: w as u16,
        connection: c as u8,
        symbols: conn.symbols,
        mix: plan.mix,
        seed: stream_seed(plan.seed, global as u64),
        outstanding_max: plan.outstanding_max(),
        live_max: plan.live_max(),
        verify: plan.verify,
        max_frame_bytes: max_frame,
        window: Window {
            from_ns: warmup_ns,
            until_ns: end_ns,
        },
    });
    let published = shared
        .metrics
        .connections
        .get(global)
        .cloned()
        .unwrap_or_else(|| Arc::new(Published::new()));
    let link = Rc::new(Link {
        stream: RefCell::new(conn.stream),
        session: RefCell::new(session),
        ledger,
        progress: Signal::default(),
        failure: RefCell::new(None),
        published,
    });
    let recv_bytes = 2 * max_frame.max(wire::DEFAULT_MAX_FRAME_BYTES) as usize;
    let heartbeat_ns = u64::from(conn.ack.heartbeat_interval_ms.get()) * 500_000;
    if let Some(spin) = plan.spin {
        let spinning = Spinning {
            plan: &plan,
            link: &link,
            clock,
            shared: &shared,
            end_ns,
            coalesce_bytes: conn.coalesce_bytes,
            global,
            heartbeat_ns,
            spin_ns: spin.as_nanos().min(u128::from(u64::MAX)) as u64,
        };
        if let Err(e) = spinning.run(conn.leftover, recv_bytes).await {
            link.failure.borrow_mut().get_or_insert(e);
        }
    } else {
        let receiver =
            glommio::spawn_local(receive(link.clone(), clock, conn.leftover, recv_bytes));
        let sent = send(
            &plan,
            &link,
            clock,
            &shared,
            end_ns,
            conn.coalesce_bytes,
            global,
            heartbeat_ns,
        )
        .await;
        if let Err(e) = sent {
            link.failure.borrow_mut().get_or_insert(e);
        }
        let now = clock.now_ns();
        link.session.borrow_mut().end_window(now);
        if link.failure.borrow().is_none() && !shared.stopped() {
            let stream = &link.stream;
            let send = async |out: &[u8], _now: u64| {
                write_all(stream, out)
                    .await
                    .map_err(|e| format!("sending the final cancels failed: {e}"))
            };
            let (session, progress, failure) = (&link.session, &link.progress, &link.failure);
            drain(&plan, clock, &shared, session, progress, failure, send).await;
        }
        let _ = receiver.cancel().await;
    }
    let failure = link.failure.borrow_mut().take();
    let failed = failure.is_some();
    if let Some(f) = failure {
        link.published.failed.store(true, Ordering::Relaxed);
        shared.fail(format!("connection {global} to {}: {f}", plan.server_name));
    }
    let mut session = link.session.borrow_mut();
    let unanswered = session.finish() as u64;
    link.published.store(session.counters());
    ConnOutcome {
        window: session.window_counters(),
        latency: session.latency().total.clone(),
        violations: session.take_violations(),
        unanswered,
        failed,
        nodes: Vec::new(),
        unrouted: 0,
        map_version: 0,
        taken_over: Vec::new(),
        set_aside: 0,
    }
}

/// Sends until the end of the window (or a failure anywhere).
#[allow(clippy::too_many_arguments)]
async fn send(
    plan: &Plan,
    link: &Link,
    clock: Clock,
    shared: &Shared,
    end_ns: u64,
    coalesce_bytes: usize,
    global: usize,
    heartbeat_ns: u64,
) -> Result<(), String> {
    let batch = plan.batch;
    let mut schedule = plan
        .rate
        .map(|rate| Schedule::new(0, rate, plan.total_connections() as u64, global as u64));
    let mut out: Vec<u8> = Vec::with_capacity(send_buffer_bytes(batch, coalesce_bytes));
    let mut last_send_ns = 0u64;
    let mut heartbeat_token = 0u64;
    loop {
        if shared.stopped() || link.failure.borrow().is_some() {
            return Ok(());
        }
        let now = clock.now_ns();
        if now >= end_ns || interrupted() {
            return Ok(());
        }
        out.clear();
        let next_due = fill(
            &mut link.session.borrow_mut(),
            schedule.as_mut(),
            &mut out,
            now,
            batch,
            coalesce_bytes,
        );
        if !out.is_empty() {
            write_all(&link.stream, &out)
                .await
                .map_err(|e| format!("sending to the server failed: {e}"))?;
            last_send_ns = now;
            link.published.orders_sent.store(
                link.session.borrow().counters().orders_sent,
                Ordering::Relaxed,
            );
            continue;
        }
        if link.session.borrow().exhausted() {
            return Err("the connection used up its 2^40 client order ids".into());
        }
        if heartbeat_ns > 0 && now >= last_send_ns + heartbeat_ns {
            heartbeat_token += 1;
            out.clear();
            wire::append_frame(
                &[Heartbeat {
                    token: heartbeat_token.into(),
                }],
                &mut out,
            )
            .map_err(|e| format!("cannot encode a heartbeat: {e}"))?;
            write_all(&link.stream, &out)
                .await
                .map_err(|e| format!("sending a heartbeat failed: {e}"))?;
            last_send_ns = now;
            continue;
        }
        let mut wake_ns = end_ns.min(now + STOP_POLL.as_nanos() as u64);
        if heartbeat_ns > 0 {
            wake_ns = wake_ns.min(last_send_ns + heartbeat_ns);
        }
        if let Some(due) = next_due {
            wake_ns = wake_ns.min(due);
        }
        let wait = Duration::from_nanos(wake_ns.saturating_sub(now));
        if next_due.is_some() {
            // Open loop, nothing due: sleep to the schedule (answers do not matter).
            glommio::timer::sleep(wait).await;
        } else {
            link.progress.wait_at_most(wait).await;
        }
    }
}

/// Bytes of the send buffer: a TCP segment's worth of coalesced frames plus
/// room for three more, so that it never grows.
fn send_buffer_bytes(batch: usize, coalesce_bytes: usize) -> usize {
    let frame_bytes = wire::HEADER_BYTES + batch * <wire::NewOrder as wire::Message>::BYTES;
    coalesce_bytes.max(frame_bytes) + 3 * frame_bytes
}

/// Writes into `out` the batches that are due (open loop: by `schedule`;
/// closed loop: as many as there is room for), coalescing up to
/// `coalesce_bytes`. Open loop with nothing more due: when the next batch is.
fn fill(
    session: &mut Session,
    schedule: Option<&mut Schedule>,
    out: &mut Vec<u8>,
    now: u64,
    batch: usize,
    coalesce_bytes: usize,
) -> Option<u64> {
    let frame_bytes = wire::HEADER_BYTES + batch * <wire::NewOrder as wire::Message>::BYTES;
    let mut room_batches = session.room() / batch;
    match schedule {
        None => {
            // Closed loop: fill the room, coalescing up to a segment.
            while room_batches > 0 && (out.is_empty() || out.len() + frame_bytes <= coalesce_bytes)
            {
                if session.write_batch(out, batch, now, || now) < batch {
                    break;
                }
                room_batches -= 1;
            }
            None
        }
        Some(s) => {
            let mut due = s.batches_due(now, batch as u64);
            while due > 0
                && room_batches > 0
                && (out.is_empty() || out.len() + frame_bytes <= coalesce_bytes)
            {
                if session.write_batch(out, batch, now, || s.take()) < batch {
                    break;
                }
                due -= 1;
                room_batches -= 1;
            }
            // Still due but no room: wait for answers; else sleep to the next batch.
            (due == 0).then(|| s.next_batch_due_ns(batch as u64))
        }
    }
}

/// After the window: stop sending, wait for outstanding answers; when
/// verifying, cancel every open order so each gets its terminal report.
/// `send` delivers the cancels (`session` wrote them at the time given):
/// to the one server, or with `--cluster` each to its shard's owner; an
/// error from it ends the drain and is the connection's failure. Ends
/// early when the run stops or `failure` is set.
async fn drain(
    plan: &Plan,
    clock: Clock,
    shared: &Shared,
    session: &RefCell<Session>,
    progress: &Signal,
    failure: &RefCell<Option<String>>,
    mut send: impl AsyncFnMut(&[u8], u64) -> Result<(), String>,
) {
    let deadline = clock.now_ns() + plan.drain.as_nanos() as u64;
    let mut out = Vec::new();
    loop {
        if shared.stopped() || failure.borrow().is_some() {
            return;
        }
        let now = clock.now_ns();
        out.clear();
        if plan.verify {
            session.borrow_mut().write_cancel_all(&mut out, now);
        }
        if !out.is_empty()
            && let Err(e) = send(&out, now).await
        {
            failure.borrow_mut().get_or_insert(e);
            return;
        }
        if session.borrow().settled() || now >= deadline {
            return;
        }
        let wait = Duration::from_nanos((deadline - now).min(STOP_POLL.as_nanos() as u64));
        progress.wait_at_most(wait).await;
    }
}

/// Reads reports until cancelled or the connection fails.
async fn receive(link: Rc<Link>, clock: Clock, leftover: Vec<u8>, recv_bytes: usize) {
    let mut buf = vec![0u8; recv_bytes.max(leftover.len() + 4096)];
    let mut len = leftover.len();
    buf[..len].copy_from_slice(&leftover);
    let mut first = len > 0;
    let mut last_publish_ns = 0u64;
    loop {
        if !first {
            let what = "a report frame";
            let (failure, progress) = (&link.failure, &link.progress);
            if !read_more(
                &link.stream,
                &mut buf,
                &mut len,
                recv_bytes,
                what,
                failure,
                progress,
            )
            .await
            {
                return;
            }
        }
        first = false;
        match take_reports(&link, clock.now_ns(), &mut buf, len, &mut last_publish_ns) {
            Ok(left) => len = left,
            Err(f) => {
                link.failure.borrow_mut().get_or_insert(f);
                link.progress.raise();
                return;
            }
        }
        link.progress.raise();
    }
}

/// Hands the reports in `buf[..len]` to the session, publishes the
/// counters (and every [`PUBLISH_INTERVAL_NS`] the interval histogram) and
/// moves the partial frame left at the end to the front: its length.
fn take_reports(
    link: &Link,
    now: u64,
    buf: &mut [u8],
    len: usize,
    last_publish_ns: &mut u64,
) -> Result<usize, String> {
    let result = {
        let mut session = link.session.borrow_mut();
        let mut ledger = link.ledger.borrow_mut();
        let r = session.on_bytes(&buf[..len], now, &mut ledger);
        link.published.store(session.counters());
        if now >= *last_publish_ns + PUBLISH_INTERVAL_NS {
            *last_publish_ns = now;
            let interval = &mut session.latency_mut().interval;
            if let Ok(mut h) = link.published.interval.lock() {
                let _ = h.add(&*interval);
            }
            interval.reset();
        }
        r
    };
    let used = result.map_err(|f| f.to_string())?;
    buf.copy_within(used..len, 0);
    Ok(len - used)
}

/// Period of the timer that a worker with spinning connections keeps
/// pending (see [`Spinning`]): the longest a preemption can stall them.
const SPIN_WATCHDOG: Duration = Duration::from_micros(20);

/// With `--spin`: one task per connection both sends and receives, through
/// non-blocking `send` and `recv` system calls that it polls.
///
/// Why: glommio learns that a socket is readable from an io_uring poll,
/// which the kernel completes with task work, and task work interrupts the
/// thread: one inter-processor interrupt per answer (tens of microseconds
/// on a VM) added to what latency runs measure. A `recv` that finds the
/// bytes already there costs none.
///
/// Why one task, not a polling receiver beside the sender: a task that
/// keeps waking itself keeps glommio's task queue busy, and glommio 0.9
/// polls its rings (timers, readiness) only when the queues run dry or the
/// preempt timer fires (100 ms): the sender's timers fired late (the halved
/// throughput of an earlier experiment). Here nothing waits on glommio
/// while spinning: the clock says what is due, sends and receives are
/// direct system calls. The task yields after every turn by waking itself
/// (the worker's other connections run in between), spins at most `--spin`
/// after its last progress, then awaits properly (readable, writable, or
/// the next due time), and ends by returning.
///
/// Why the worker then keeps a [`SPIN_WATCHDOG`] timer pending: when the
/// preempt timer has fired before any queue ran, glommio's
/// `run_task_queues` reports that nothing ran, and the executor spins and
/// parks as if idle, with the self-woken tasks still queued. With no timer
/// or I/O pending that park never returns (seen here: the worker asleep in
/// `io_cqring_wait` at 0% CPU, both connections polling; likely the hang
/// of the earlier experiment). A pending timer ends glommio's spin, and
/// any park, within its period.
struct Spinning<'a> {
    plan: &'a Plan,
    link: &'a Link,
    clock: Clock,
    shared: &'a Shared,
    end_ns: u64,
    coalesce_bytes: usize,
    global: usize,
    heartbeat_ns: u64,
    spin_ns: u64,
}

/// What ended a proper await of a spinning connection.
enum Woken {
    Read(usize),
    Wrote(usize),
    Timer,
}

impl Spinning<'_> {
    /// Sends until the end of the window, then drains (with `--verify`
    /// cancelling every open order), receiving all along.
    async fn run(&self, leftover: Vec<u8>, recv_bytes: usize) -> Result<(), String> {
        let (plan, link, clock) = (self.plan, self.link, self.clock);
        let mut buf = vec![0u8; recv_bytes.max(leftover.len() + 4096)];
        let mut len = leftover.len();
        buf[..len].copy_from_slice(&leftover);
        let mut last_publish_ns = 0u64;
        if len > 0 {
            len = take_reports(link, clock.now_ns(), &mut buf, len, &mut last_publish_ns)?;
        }
        let batch = plan.batch;
        let mut schedule = plan.rate.map(|rate| {
            Schedule::new(0, rate, plan.total_connections() as u64, self.global as u64)
        });
        let mut out: Vec<u8> = Vec::with_capacity(send_buffer_bytes(batch, self.coalesce_bytes));
        // Bytes of `out` already sent.
        let mut sent = 0usize;
        let (mut last_send_ns, mut heartbeat_token) = (0u64, 0u64);
        // Set when the window ends: the drain's deadline.
        let mut drain_until: Option<u64> = None;
        let mut last_progress_ns = clock.now_ns();
        loop {
            if self.shared.stopped() {
                return Ok(());
            }
            let now = clock.now_ns();
            let mut progress = false;
            if len == buf.len() {
                return Err(format!(
                    "a report frame is larger than the {recv_bytes}-byte receive buffer"
                ));
            }
            let received = link.stream.borrow_mut().recv_now(&mut buf[len..]);
            match received {
                Ok(None) => {}
                Ok(Some(0)) => return Err("the server closed the connection mid-run".into()),
                Ok(Some(n)) => {
                    len = take_reports(link, now, &mut buf, len + n, &mut last_publish_ns)?;
                    progress = true;
                }
                Err(e) => return Err(format!("reading from the server failed: {e}")),
            }
            let mut next_due = None;
            if sent == out.len() {
                out.clear();
                sent = 0;
                match drain_until {
                    None if now >= self.end_ns || interrupted() => {
                        link.session.borrow_mut().end_window(now);
                        drain_until = Some(now + plan.drain.as_nanos() as u64);
                        continue;
                    }
                    None => {
                        next_due = fill(
                            &mut link.session.borrow_mut(),
                            schedule.as_mut(),
                            &mut out,
                            now,
                            batch,
                            self.coalesce_bytes,
                        );
                        if out.is_empty() && link.session.borrow().exhausted() {
                            return Err("the connection used up its 2^40 client order ids".into());
                        }
                        if out.is_empty()
                            && self.heartbeat_ns > 0
                            && now >= last_send_ns + self.heartbeat_ns
                        {
                            heartbeat_token += 1;
                            wire::append_frame(
                                &[Heartbeat {
                                    token: heartbeat_token.into(),
                                }],
                                &mut out,
                            )
                            .map_err(|e| format!("cannot encode a heartbeat: {e}"))?;
                        }
                    }
                    Some(deadline) => {
                        if plan.verify {
                            link.session.borrow_mut().write_cancel_all(&mut out, now);
                        }
                        if out.is_empty() && (link.session.borrow().settled() || now >= deadline) {
                            return Ok(());
                        }
                    }
                }
            }
            if sent < out.len() {
                let written = link.stream.borrow_mut().send_now(&out[sent..]);
                match written {
                    Ok(None) => {}
                    Ok(Some(n)) => {
                        sent += n;
                        progress = true;
                    }
                    Err(e) => return Err(format!("sending to the server failed: {e}")),
                }
                if sent == out.len() {
                    last_send_ns = now;
                    link.published.orders_sent.store(
                        link.session.borrow().counters().orders_sent,
                        Ordering::Relaxed,
                    );
                }
            }
            if progress {
                last_progress_ns = now;
            }
            if now < last_progress_ns.saturating_add(self.spin_ns) {
                // Let the worker's other tasks run, then look again.
                future::yield_now().await;
                continue;
            }
            // Idle for --spin: await readable, writable or the next due time.
            let mut wake_ns = now + STOP_POLL.as_nanos() as u64;
            match drain_until {
                None => {
                    wake_ns = wake_ns.min(self.end_ns);
                    if self.heartbeat_ns > 0 {
                        wake_ns = wake_ns.min(last_send_ns + self.heartbeat_ns);
                    }
                    if let Some(due) = next_due {
                        wake_ns = wake_ns.min(due);
                    }
                }
                Some(deadline) => wake_ns = wake_ns.min(deadline),
            }
            let wait = Duration::from_nanos(wake_ns.saturating_sub(now));
            let woken = {
                let readable = async {
                    read_some(&link.stream, &mut buf[len..])
                        .await
                        .map(Woken::Read)
                };
                let pending_out = &out[sent..];
                let writable = async {
                    if pending_out.is_empty() {
                        future::pending::<()>().await;
                    }
                    write_some(&link.stream, pending_out)
                        .await
                        .map(Woken::Wrote)
                };
                let timer = async {
                    glommio::timer::sleep(wait).await;
                    Ok(Woken::Timer)
                };
                future::or(readable, future::or(writable, timer)).await
            };
            let now = clock.now_ns();
            match woken {
                Ok(Woken::Read(0)) => {
                    return Err("the server closed the connection mid-run".into());
                }
                Ok(Woken::Read(n)) => {
                    len = take_reports(link, now, &mut buf, len + n, &mut last_publish_ns)?;
                }
                Ok(Woken::Wrote(n)) => sent += n,
                Ok(Woken::Timer) => {}
                Err(e) => return Err(format!("the connection to the server failed: {e}")),
            }
            // Spin again: answers tend to come in runs.
            last_progress_ns = now;
        }
    }
}

async fn write_some(stream: &RefCell<Stream>, buf: &[u8]) -> io::Result<usize> {
    future::poll_fn(|cx: &mut Context<'_>| stream.borrow_mut().poll_write(cx, buf)).await
}
