//! `--subscribe`: the market-data subscribers' I/O. They run on threads of
//! their own (`--subscriber-threads`, unpinned glommio executors, so they
//! never take a trading worker's core), one connection each; the logic is
//! [`crate::md::FeedChecker`].
//!
//! They connect, log in (protocol version 2, accounts after the trading
//! sessions') and send their Subscribes before the clock starts (they
//! arrive at the same gate as the workers), so the snapshots are taken
//! before the warmup. Per connection a receiver task hands every read to
//! the checker; a control task sends what the checker asks for (resyncs,
//! the resubscription after a cut-off) and heartbeats. When every trading
//! worker is done the subscribers keep reading until the feed has been
//! quiet for [`SETTLE`] (at most `--drain`), then stop.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};
use wire::{Heartbeat, Hello};

use super::{
    Clock, GLOMMIO_IO_MEMORY_BYTES, RunError, STOP_POLL, Shared, Signal, read_more, write_all,
};
use crate::cli::Plan;
use crate::md::{
    FeedChecker, MarketDataReport, SubscriberOutcome, Target, merge_outcomes, resolve_symbols,
};
use crate::session::Window;

/// After the trading ends: how long the feed must be quiet before the
/// subscribers stop.
const SETTLE: Duration = Duration::from_millis(200);
/// Subscribers that connect and log in at the same time.
const CONNECT_AT_ONCE: usize = 64;

/// The subscribers' threads, as the main thread holds them.
pub(super) struct Subscribers {
    handles: Vec<JoinHandle<Option<MdRun>>>,
    /// Set by the main thread when every trading worker is done.
    trading_done: Arc<AtomicBool>,
}

/// What the subscribers' thread brings home.
pub(super) struct MdRun {
    outcomes: Vec<SubscriberOutcome>,
    /// Symbols each subscribed to.
    symbols: usize,
    /// Whether they follow at least one symbol the trading sessions trade.
    pub(super) covers_traded: bool,
}

impl Subscribers {
    /// Starts the threads (when the plan subscribes): thread t runs
    /// subscribers t, t + threads, ... Each arrives at the gate like a
    /// worker, even when it fails.
    pub(super) fn spawn(plan: &Plan, shared: &Arc<Shared>) -> Option<Subscribers> {
        let md = plan.market_data.as_ref()?;
        let threads = md.threads.clamp(1, md.subscribers.max(1));
        let trading_done = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::with_capacity(threads);
        for t in 0..threads {
            let ids: Vec<usize> = (t..md.subscribers).step_by(threads).collect();
            let (plan, thread_shared, done) = (plan.clone(), shared.clone(), trading_done.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("dex-trader-md{t}"))
                .spawn(move || subscriber_thread(&plan, ids, &thread_shared, &done));
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    shared.fail(format!("cannot start market-data thread {t}: {e}"));
                    break;
                }
            }
        }
        Some(Subscribers {
            handles,
            trading_done,
        })
    }

    /// Threads that will arrive at the gate.
    pub(super) fn threads(&self) -> usize {
        self.handles.len()
    }

    /// Tells the subscribers that trading is over and waits for them: what
    /// they all brought home, or `None` if a thread was lost.
    pub(super) fn join(self) -> Option<MdRun> {
        self.trading_done.store(true, Ordering::Relaxed);
        let mut all: Option<MdRun> = None;
        let mut lost = false;
        for h in self.handles {
            match h.join().ok().flatten() {
                None => lost = true,
                Some(run) => match &mut all {
                    None => all = Some(run),
                    Some(a) => {
                        a.outcomes.extend(run.outcomes);
                        a.symbols = a.symbols.max(run.symbols);
                        a.covers_traded |= run.covers_traded;
                    }
                },
            }
        }
        if lost { None } else { all }
    }
}

impl MdRun {
    /// The merged report over a window of `duration_secs`.
    pub(super) fn report(self, plan: &Plan, duration_secs: f64) -> Option<MarketDataReport> {
        let md = plan.market_data.as_ref()?;
        Some(merge_outcomes(
            self.outcomes,
            md.subscribers,
            self.symbols,
            md.flags,
            duration_secs,
        ))
    }
}

fn subscriber_thread(
    plan: &Plan,
    ids: Vec<usize>,
    shared: &Arc<Shared>,
    done: &Arc<AtomicBool>,
) -> Option<MdRun> {
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .name("dex-trader-md")
        .io_memory(GLOMMIO_IO_MEMORY_BYTES)
        .make();
    let executor = match executor {
        Ok(ex) => ex,
        Err(e) => {
            shared.fail(format!(
                "cannot start a glommio executor for the market-data subscribers: {e}"
            ));
            shared.gate.arrive_and_wait();
            return None;
        }
    };
    executor.run(subscribers(plan, ids, shared.clone(), done.clone()))
}

/// A subscriber connected, logged in and subscribed, before the clock starts.
struct Connected {
    stream: crate::tls::Stream,
    checker: FeedChecker,
    leftover: Vec<u8>,
    heartbeat_ns: u64,
    recv_bytes: usize,
}

async fn subscribers(
    plan: &Plan,
    ids: Vec<usize>,
    shared: Arc<Shared>,
    done: Arc<AtomicBool>,
) -> Option<MdRun> {
    let mut connected = Vec::with_capacity(ids.len());
    let (mut symbols, mut covers_traded) = (0, false);
    // In rounds of CONNECT_AT_ONCE handshakes: thousands one after the
    // other would keep the trading sessions (already logged in, waiting at
    // the gate without heartbeats) idle for long.
    'rounds: for round_ids in ids.chunks(CONNECT_AT_ONCE) {
        let round: Vec<_> = round_ids
            .iter()
            .map(|&i| {
                let plan = plan.clone();
                glommio::spawn_local(async move { connect(&plan, i).await })
            })
            .collect();
        for (&i, task) in round_ids.iter().zip(round) {
            match task.await {
                Ok((conn, covers)) => {
                    symbols = conn.checker.symbols();
                    covers_traded = covers;
                    connected.push((i, conn));
                }
                Err(RunError::Usage(u)) => {
                    shared.usage(u);
                    break 'rounds;
                }
                Err(RunError::Failed(f)) => {
                    shared.fail(format!("market-data subscriber {i}: {f}"));
                    break 'rounds;
                }
            }
        }
    }
    shared.gate.arrive_and_wait();
    if shared.stopped() {
        return None;
    }
    let epoch = *shared.epoch.get()?;
    let tasks: Vec<_> = connected
        .into_iter()
        .map(|(i, conn)| {
            let task = subscriber(plan.clone(), i, conn, epoch, shared.clone(), done.clone());
            glommio::spawn_local(task)
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(t.await);
    }
    Some(MdRun {
        outcomes,
        symbols,
        covers_traded,
    })
}

/// Connects subscriber `i`, logs in with protocol version 2, resolves the
/// symbols against the directory and sends the Subscribes. Also says
/// whether the subscription covers a symbol the trading sessions trade.
async fn connect(plan: &Plan, i: usize) -> Result<(Connected, bool), RunError> {
    let md = plan
        .market_data
        .as_ref()
        .ok_or_else(|| RunError::Failed("internal: no market-data plan".into()))?;
    let addr = plan.server;
    let stream = TcpStream::connect_timeout(addr, plan.connect_timeout)
        .await
        .map_err(|e| {
            RunError::Failed(format!(
                "cannot connect to {} ({addr}): {e}; is turbo-dex running and listening there?",
                plan.server_name
            ))
        })?;
    use std::os::fd::AsRawFd;
    tuning::StreamOptions::default()
        .apply(stream.as_raw_fd())
        .map_err(|e| RunError::Failed(format!("connection to {}: {e}", plan.server_name)))?;
    let stream = super::secure(plan, stream).await?;
    // After every trading session's account; with --logins, the file's
    // accounts in turn after the trading connections'.
    let (account, password) = if plan.logins.is_empty() {
        let account = plan
            .account
            .wrapping_add(plan.distinct_accounts())
            .wrapping_add(i as u64);
        (account, plan.credentials.as_str())
    } else {
        plan.login(plan.total_connections() + i)
    };
    // Market data needs protocol version 2, what Hello::new speaks.
    let hello = Hello::new(account, 0, 0, password);
    let stream = Rc::new(RefCell::new(stream));
    let (ack, entries, leftover) = super::log_on(&stream, &hello, plan).await?;
    if ack.protocol_version.get() < 2 {
        return Err(RunError::Failed(format!(
            "{} answered the version 2 Hello with version {}: it serves no market data",
            plan.server_name,
            ack.protocol_version.get()
        )));
    }
    let target = resolve_symbols(&md.symbols, &entries).map_err(RunError::Usage)?;
    let traded = plan.symbols.unwrap_or(entries.len()).min(entries.len());
    let covers_traded = match &target {
        Target::All => traded > 0,
        Target::Symbols(ids) => entries[..traded]
            .iter()
            .any(|e| ids.contains(&e.symbol.get())),
    };
    let directory: Vec<u32> = entries.iter().map(|e| e.symbol.get()).collect();
    let warmup_ns = plan.warmup.as_nanos() as u64;
    let window = Window {
        from_ns: warmup_ns,
        until_ns: warmup_ns + plan.duration.as_nanos() as u64,
    };
    let max_frame = ack.max_frame_bytes.get();
    let mut checker = FeedChecker::new(target, md.flags, &directory, max_frame, window);
    let mut out = Vec::with_capacity(256);
    checker.write_subscribe(&mut out);
    write_all(&stream, &out).await.map_err(|e| {
        RunError::Failed(format!(
            "sending the Subscribe to {}: {e}",
            plan.server_name
        ))
    })?;
    let stream = Rc::try_unwrap(stream)
        .map(RefCell::into_inner)
        .map_err(|_| RunError::Failed("internal: the handshake kept the stream".into()))?;
    Ok((
        Connected {
            stream,
            checker,
            leftover,
            heartbeat_ns: u64::from(ack.heartbeat_interval_ms.get()) * 500_000,
            recv_bytes: 2 * max_frame.max(wire::DEFAULT_MAX_FRAME_BYTES) as usize,
        },
        covers_traded,
    ))
}

/// State shared by a subscriber's receiver and control task.
struct Link {
    stream: RefCell<crate::tls::Stream>,
    checker: RefCell<FeedChecker>,
    /// Raised after each read (the checker may want to send) and on failure.
    progress: Signal,
    failure: RefCell<Option<String>>,
    /// When the last bytes arrived (run clock).
    last_rx_ns: Cell<u64>,
}

/// Nanoseconds since the Unix epoch on CLOCK_REALTIME (the engine's clock
/// for `engine_ns`).
fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

async fn subscriber(
    plan: Plan,
    i: usize,
    conn: Connected,
    epoch: Instant,
    shared: Arc<Shared>,
    done: Arc<AtomicBool>,
) -> SubscriberOutcome {
    let clock = Clock(epoch);
    let link = Rc::new(Link {
        stream: RefCell::new(conn.stream),
        checker: RefCell::new(conn.checker),
        progress: Signal::default(),
        failure: RefCell::new(None),
        last_rx_ns: Cell::new(0),
    });
    let receiver =
        glommio::spawn_local(receive(link.clone(), clock, conn.leftover, conn.recv_bytes));
    if let Err(e) = control(&plan, &link, clock, &shared, &done, conn.heartbeat_ns).await {
        link.failure.borrow_mut().get_or_insert(e);
    }
    let _ = receiver.cancel().await;
    let failure = link.failure.borrow_mut().take();
    let failed = failure.is_some();
    if let Some(f) = failure {
        shared.fail(format!(
            "market-data subscriber {i} to {}: {f}",
            plan.server_name
        ));
    }
    SubscriberOutcome::of(&mut link.checker.borrow_mut(), failed)
}

/// Sends resubscriptions and heartbeats until the trading is over and the
/// feed has settled (or a failure anywhere).
async fn control(
    plan: &Plan,
    link: &Link,
    clock: Clock,
    shared: &Shared,
    done: &AtomicBool,
    heartbeat_ns: u64,
) -> Result<(), String> {
    let mut out = Vec::with_capacity(4096);
    let (mut last_send_ns, mut heartbeat_token) = (clock.now_ns(), 0u64);
    let mut done_at: Option<u64> = None;
    loop {
        if shared.stopped() || link.failure.borrow().is_some() {
            return Ok(());
        }
        let now = clock.now_ns();
        out.clear();
        link.checker.borrow_mut().write_requests(&mut out);
        if heartbeat_ns > 0 && out.is_empty() && now >= last_send_ns + heartbeat_ns {
            heartbeat_token += 1;
            wire::append_frame(
                &[Heartbeat {
                    token: heartbeat_token.into(),
                }],
                &mut out,
            )
            .map_err(|e| format!("cannot encode a heartbeat: {e}"))?;
        }
        if !out.is_empty() {
            write_all(&link.stream, &out)
                .await
                .map_err(|e| format!("sending to the server failed: {e}"))?;
            last_send_ns = now;
            continue;
        }
        if done_at.is_none() && done.load(Ordering::Relaxed) {
            done_at = Some(now);
        }
        if let Some(at) = done_at {
            let quiet = now.saturating_sub(link.last_rx_ns.get().max(at));
            if quiet >= SETTLE.as_nanos() as u64 || now >= at + plan.drain.as_nanos() as u64 {
                return Ok(());
            }
        }
        let mut wake_ns = now + STOP_POLL.as_nanos() as u64;
        if heartbeat_ns > 0 {
            wake_ns = wake_ns.min(last_send_ns + heartbeat_ns);
        }
        link.progress
            .wait_at_most(Duration::from_nanos(wake_ns.saturating_sub(now)))
            .await;
    }
}

/// Reads the feed into the checker until cancelled or the connection fails.
async fn receive(link: Rc<Link>, clock: Clock, leftover: Vec<u8>, recv_bytes: usize) {
    let mut buf = vec![0u8; recv_bytes.max(leftover.len() + 4096)];
    let mut len = leftover.len();
    buf[..len].copy_from_slice(&leftover);
    let mut first = len > 0;
    loop {
        if !first {
            let (failure, progress) = (&link.failure, &link.progress);
            if !read_more(
                &link.stream,
                &mut buf,
                &mut len,
                recv_bytes,
                "a frame",
                failure,
                progress,
            )
            .await
            {
                return;
            }
        }
        first = false;
        let now = clock.now_ns();
        link.last_rx_ns.set(now);
        let taken = link
            .checker
            .borrow_mut()
            .on_bytes(&buf[..len], now, wall_ns());
        match taken {
            Ok(used) => {
                buf.copy_within(used..len, 0);
                len -= used;
            }
            Err(f) => {
                link.failure.borrow_mut().get_or_insert(f.to_string());
                link.progress.raise();
                return;
            }
        }
        if link.checker.borrow().has_requests() {
            link.progress.raise();
        }
    }
}
