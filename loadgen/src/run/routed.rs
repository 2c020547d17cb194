//! `--cluster`: routed sessions. Each of a worker's `--connections`
//! sessions (one order flow, one [`Session`]) has a TCP connection to every
//! node that owned shards when the run started; its requests are cut by
//! symbol ([`Splitter`]) and each part goes to its shard's owner. The
//! nodes' answers all feed the one session, so its order table, latency
//! and counters work exactly as with one server. Each node connection
//! has a receiver task and a writer task: the sender queues each node's
//! part of a batch, and the node's writer writes it, with the node's
//! heartbeats when it has nothing else to send. So a node that stops
//! reading (or a connection being made) delays no other node: a server
//! closes a session that sent nothing for three heartbeat intervals.
//!
//! The routes follow the cluster: a `ShardOwner` newer than a shard's
//! route moves it at once, and every [`MAP_REFRESH`] the sender asks one
//! node (in turn) for the whole map and connects to the owners it has no
//! connection to. A shard whose owner is none, or not connected (yet),
//! gets no requests: they are answered here with `Rejected(WrongNode)` and
//! counted as unrouted. A node whose connection closes, or that does not
//! take a write within the stall limit ([`STALL_HALF_INTERVALS`]), is
//! dropped (its requests in flight counted lost, its open orders set
//! aside); the session goes on with the others.
//!
//! A session does not rely on the nodes it happens to be connected to for
//! news of the cluster: when no map has come for [`MAP_STALE`] (every node
//! it is connected to is silent: cut off, stopped, or gone without a
//! close), or when every connection has closed, it connects to a node it
//! knows (a seed, or any node a map listed) that it has no open connection
//! to, and asks that one. So a session whose only node was cut off finds
//! the node that took its shards over. The run fails only when every
//! connection has closed and no known node takes a new one.
//!
//! `--verify` checks the one session exactly as with one server: every
//! report, from whichever node, goes through [`Session::on_bytes`] (the
//! local rejects of unrouted requests too: a reject is a terminal answer,
//! not a violation), the drain cancels every open order through the
//! routes, and fills are paired per node ([`NodeLedgers`]): both halves of
//! a trade come from the node that holds its symbol's shard.

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use wire::{
    ClusterMapRequest, Decoder, Frame, Heartbeat, Hello, Kind, RejectReason, SessionErrorCode,
};

use super::{
    ConnOutcome, Connected, RunError, STOP_POLL, Shared, Signal, WorkerOutcome, connect, fill,
    interrupted, read_more, send_buffer_bytes, write_all,
};
use crate::cli::Plan;
use crate::cluster::{MapAssembler, MapView, NODE_CONNECTIONS_MAX, Routes, Splitter};
use crate::metrics::Published;
use crate::report::{ClusterReport, NodeReport};
use crate::rng::stream_seed;
use crate::schedule::Schedule;
use crate::session::{Session, SessionConfig, SessionFailure, Window};
use crate::tls::Stream;
use crate::verify::{NodeLedgers, TradeLedger};

/// How often a routed session asks for the whole cluster map.
pub const MAP_REFRESH: Duration = Duration::from_secs(1);
/// Token of the map requests (echoed in `ClusterMap.token`).
const MAP_TOKEN: u64 = 0x6d61_7000;
/// A session that has had no map answer for this long asks a node it is
/// not connected to (three refreshes: every connected node was asked at
/// least once, or the one connected node three times).
pub const MAP_STALE: Duration = Duration::from_secs(3);
/// The longest a node's writer waits for its socket to take bytes (it is
/// full: the node stopped reading, or the network to it is cut), and the
/// sender for a connection made mid-run, in half heartbeat intervals:
/// three (one and a half intervals, 1.5 s at the default 1 s). A write
/// that waits longer drops the node, well before the node would close the
/// session as idle (three intervals); a connection that takes longer is
/// tried again later.
pub const STALL_HALF_INTERVALS: u64 = 3;
/// The wait limit without a heartbeat interval (none negotiated).
const STALL_DEFAULT: Duration = Duration::from_millis(1500);

/// The stall limit for half a heartbeat interval of `heartbeat_ns` (0:
/// none negotiated).
fn stall_limit(heartbeat_ns: u64) -> Duration {
    if heartbeat_ns > 0 {
        Duration::from_nanos(heartbeat_ns * STALL_HALF_INTERVALS)
    } else {
        STALL_DEFAULT
    }
}

/// What one node connection of one session carried in the window.
#[derive(Clone, Debug, Default)]
pub struct NodeCount {
    pub addr: Option<SocketAddr>,
    /// Requests sent to it.
    pub orders: u64,
    /// Trades (taker fills) it reported.
    pub trades: u64,
    /// `ShardOwner`s it sent (each follows a `Rejected(WrongNode)`).
    pub wrong_node: u64,
    /// Requests in flight there when its connection closed (any time).
    pub lost: u64,
    /// Why its connection closed mid-run, if it did.
    pub closed: Option<String>,
}

/// The run's per-node figures, summed over the sessions.
#[derive(Default)]
pub struct NodeTotals {
    nodes: Vec<NodeCount>,
    unrouted: u64,
    map_version_end: u64,
    /// Shards another node took over mid-run, as any session saw it.
    taken_over: Vec<u32>,
    /// Orders the sessions set aside (their node went, or their shard
    /// passed to another node).
    set_aside: u64,
}

impl NodeTotals {
    pub fn add(&mut self, nodes: &[NodeCount], unrouted: u64, map_version: u64) {
        self.unrouted += unrouted;
        self.map_version_end = self.map_version_end.max(map_version);
        for n in nodes {
            match self.nodes.iter_mut().find(|t| t.addr == n.addr) {
                Some(t) => {
                    t.orders += n.orders;
                    t.trades += n.trades;
                    t.wrong_node += n.wrong_node;
                    t.lost += n.lost;
                    if t.closed.is_none() {
                        t.closed.clone_from(&n.closed);
                    }
                }
                None => self.nodes.push(n.clone()),
            }
        }
    }

    /// Adds one session's shards taken over and orders set aside.
    pub fn add_takeovers(&mut self, shards: &[u32], set_aside: u64) {
        self.set_aside += set_aside;
        for &s in shards {
            if !self.taken_over.contains(&s) {
                self.taken_over.push(s);
            }
        }
    }

    /// Whether some session saw shard `shard` pass to another node.
    pub fn taken_over(&self, shard: u32) -> bool {
        self.taken_over.contains(&shard)
    }

    /// Whether some session's connection to `node` closed mid-run.
    pub fn closed(&self, node: SocketAddr) -> bool {
        self.nodes
            .iter()
            .any(|n| n.addr == Some(node) && n.closed.is_some())
    }

    pub fn report(&self, map: &MapView, duration_secs: f64) -> ClusterReport {
        let per_sec = |n: u64| {
            if duration_secs > 0.0 {
                n as f64 / duration_secs
            } else {
                0.0
            }
        };
        let mut nodes: Vec<NodeReport> = self
            .nodes
            .iter()
            .map(|n| NodeReport {
                address: n.addr.map_or_else(String::new, |a| a.to_string()),
                node_id: n
                    .addr
                    .and_then(|a| map.nodes.iter().find(|m| m.addr == Some(a)))
                    .map_or(0, |m| m.id),
                orders_sent: n.orders,
                orders_per_sec: per_sec(n.orders),
                trades: n.trades,
                trades_per_sec: per_sec(n.trades),
                wrong_node: n.wrong_node,
                lost: n.lost,
                closed: n.closed.clone(),
            })
            .collect();
        nodes.sort_by(|a, b| a.address.cmp(&b.address));
        ClusterReport {
            map_version: map.version,
            map_version_end: self.map_version_end.max(map.version),
            shards: map.owners.len() as u32,
            unowned_shards: map.unowned() as u32,
            nodes,
            unrouted: self.unrouted,
            shards_taken_over: {
                let mut t = self.taken_over.clone();
                t.sort_unstable();
                t
            },
            orders_set_aside: self.set_aside,
        }
    }
}

/// How long a run waits at its start for a map that names an owner: a
/// node answers "no owner" for shards it does not serve yet (a cluster
/// starting, or one catching up after a failover), and PROTOCOL.md §8.11
/// rule 5 says to ask again, a second later or another node.
const MAP_WAIT: Duration = Duration::from_secs(15);
/// The pause between rounds of asking the seeds.
const MAP_RETRY: Duration = Duration::from_millis(500);

/// Asks the seeds, in turn, for the cluster map (blocking, before the
/// workers start): the first answer that names an owner, asking every
/// seed again for up to [`MAP_WAIT`] while those that answer name none.
pub fn fetch_map(plan: &Plan, seeds: &[SocketAddr]) -> Result<MapView, RunError> {
    let until = Instant::now() + MAP_WAIT;
    loop {
        let mut why = Vec::new();
        let mut ownerless = None;
        for &seed in seeds {
            match fetch_map_from(plan, seed) {
                Ok(map) if !map.owner_addresses().is_empty() => return Ok(map),
                Ok(map) => ownerless = Some((seed, map.version)),
                Err(e) => why.push(format!("{seed}: {e}")),
            }
        }
        // No seed answered at all: say so at once (a wrong address).
        if ownerless.is_none() || Instant::now() >= until {
            return Err(RunError::Failed(match ownerless {
                Some((seed, version)) => format!(
                    "the cluster map from {seed} (version {version}) has no shard with an \
                     owner whose address is known, after {} s of asking: the nodes have not \
                     claimed their shards yet (a node waits a 2 s join window) or are taking \
                     them over; try again, or see `turbo-dex cluster status`",
                    MAP_WAIT.as_secs()
                ),
                None => format!("no seed node gave the cluster map ({})", why.join("; ")),
            }));
        }
        std::thread::sleep(MAP_RETRY);
    }
}

fn fetch_map_from(plan: &Plan, seed: SocketAddr) -> Result<MapView, String> {
    let timeout = plan.connect_timeout;
    let deadline = Instant::now() + timeout;
    let mut stream = std::net::TcpStream::connect_timeout(&seed, timeout)
        .map_err(|e| format!("cannot connect ({e}); is turbo-dex listening there?"))?;
    let _ = stream.set_nodelay(true);
    let (account, password) = plan.login(0);
    let mut out = Vec::new();
    let hello = Hello::new(account, 0, 0, password);
    wire::append_frame(std::slice::from_ref(&hello), &mut out).map_err(|e| e.to_string())?;
    wire::append_frame(&[ClusterMapRequest::new(MAP_TOKEN)], &mut out)
        .map_err(|e| e.to_string())?;
    stream
        .write_all(&out)
        .map_err(|e| format!("sending the Hello: {e}"))?;
    let decoder = Decoder::for_client(wire::MAX_FRAME_BYTES_LIMIT);
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    let mut assembler = MapAssembler::default();
    loop {
        let mut frames = decoder.frames(&buf);
        for frame in frames.by_ref() {
            match &frame {
                Frame::ClusterMap(_) | Frame::ClusterNode(_) | Frame::ClusterShard(_) => {
                    if let Some(map) = assembler.on_frame(&frame).map_err(|e| e.to_string())? {
                        return Ok(map);
                    }
                }
                Frame::Rejected(list) => {
                    if let Some(r) = list
                        .iter()
                        .find(|r| r.request_kind == Kind::ClusterMapRequest as u8)
                    {
                        let reason = RejectReason::from_wire(r.reason.get())
                            .map_or("an unknown reason", |r| r.as_str());
                        return Err(format!(
                            "it refused the ClusterMapRequest ({reason}): it is not in a \
                             cluster (started without --cluster?); use --server for one node"
                        ));
                    }
                }
                Frame::SessionError(list) => {
                    let text = list
                        .first()
                        .map(|e| String::from_utf8_lossy(e.text()).into_owned())
                        .unwrap_or_default();
                    return Err(format!("it refused the Hello: {text}"));
                }
                _ => {}
            }
        }
        if let Some(e) = frames.error() {
            return Err(format!("it sent bytes that do not decode ({e})"));
        }
        let used = frames.consumed();
        buf.drain(..used);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no cluster map within {timeout:?}"));
        }
        let _ = stream.set_read_timeout(Some(left));
        let n = stream
            .read(&mut chunk)
            .map_err(|e| format!("reading the cluster map: {e}"))?;
        if n == 0 {
            return Err("it closed the connection before the cluster map".into());
        }
        if buf.len() + n > wire::MAX_FRAME_BYTES_LIMIT as usize * 2 {
            return Err("it sent too much without completing a frame".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A worker of a `--cluster` run: connects every session to every owner,
/// waits for the others, trades.
pub async fn worker(w: usize, plan: &Plan, shared: Arc<Shared>) -> Option<WorkerOutcome> {
    let nodes = shared
        .cluster
        .as_ref()
        .map(MapView::owner_addresses)
        .unwrap_or_default();
    let nodes: Vec<SocketAddr> = nodes.into_iter().take(NODE_CONNECTIONS_MAX).collect();
    let mut sessions: Vec<Vec<Connected>> = Vec::with_capacity(plan.connections);
    'all: for c in 0..plan.connections {
        let global = w * plan.connections + c;
        let mut links = Vec::with_capacity(nodes.len());
        for &addr in &nodes {
            match connect(plan, global, addr, &format!("node {addr}")).await {
                Ok(conn) => links.push(conn),
                Err(RunError::Usage(u)) => {
                    shared.usage(u);
                    break 'all;
                }
                Err(RunError::Failed(f)) => {
                    shared.fail(f);
                    break 'all;
                }
            }
        }
        sessions.push(links);
    }
    shared.gate.arrive_and_wait();
    if shared.stopped() {
        return None;
    }
    let epoch = *shared.epoch.get()?;
    let map = shared.cluster.clone()?;
    let ledgers = Rc::new(RefCell::new(NodeLedgers::new()));
    let mut tasks = Vec::with_capacity(sessions.len());
    for (c, links) in sessions.into_iter().enumerate() {
        let global = w * plan.connections + c;
        let routes = Routes::new(nodes.clone(), &map);
        let task = session(
            plan.clone(),
            (w, c, global),
            links,
            routes,
            epoch,
            shared.clone(),
            ledgers.clone(),
        );
        tasks.push(glommio::spawn_local(task));
    }
    let mut connections = Vec::with_capacity(tasks.len());
    for t in tasks {
        connections.push(t.await);
    }
    let ledgers = Rc::try_unwrap(ledgers)
        .map(RefCell::into_inner)
        .unwrap_or_default();
    Some(WorkerOutcome {
        connections,
        ledgers,
    })
}

/// One node connection of a routed session.
struct NodeLink {
    addr: SocketAddr,
    stream: RefCell<Stream>,
    counts: RefCell<NodeCount>,
    /// Why reading from it stopped (set by `read_more`).
    failure: RefCell<Option<String>>,
    /// Bytes queued for its writer ([`NodeLink::queue`]). Bounded by the
    /// session: what it queues are requests it awaits answers to (at most
    /// `--inflight` of them, [`Session::room`]), one map request a
    /// refresh, and the drain's cancels; a writer that cannot empty it
    /// within the stall limit drops the node.
    pending: RefCell<Vec<u8>>,
    /// Raised when bytes are queued or the node is dropped.
    wake: Signal,
}

impl NodeLink {
    fn new(addr: SocketAddr, stream: Stream, buffer_bytes: usize) -> NodeLink {
        NodeLink {
            addr,
            stream: RefCell::new(stream),
            counts: RefCell::new(NodeCount {
                addr: Some(addr),
                ..NodeCount::default()
            }),
            failure: RefCell::new(None),
            pending: RefCell::new(Vec::with_capacity(buffer_bytes)),
            wake: Signal::default(),
        }
    }

    /// Queues `bytes` for the node's writer ([`write`]). Takes them
    /// (leaving `bytes` empty, with the capacity of the queue it swapped
    /// with) when nothing is queued, the usual case.
    fn queue(&self, bytes: &mut Vec<u8>) {
        let mut pending = self.pending.borrow_mut();
        if pending.is_empty() {
            std::mem::swap(&mut *pending, bytes);
        } else {
            pending.extend_from_slice(bytes);
            bytes.clear();
        }
        drop(pending);
        self.wake.raise();
    }
}

/// A routed session: one flow, several node connections.
struct Trader {
    session: RefCell<Session>,
    /// The worker's fills waiting for their other half, per node.
    ledgers: Rc<RefCell<NodeLedgers>>,
    routes: RefCell<Routes>,
    /// In the routes' connection order; grows when a node is connected
    /// mid-run. Never borrowed across an await.
    nodes: RefCell<Vec<Rc<NodeLink>>>,
    /// The receiver and writer tasks, two per node connection.
    tasks: RefCell<Vec<glommio::Task<()>>>,
    /// Raised by the receivers after each read and on failure.
    progress: Signal,
    failure: RefCell<Option<String>>,
    published: Arc<Published>,
    window: Window,
    /// When the interval histogram was last published.
    last_publish_ns: Cell<u64>,
    /// Requests of the window answered here for want of a route.
    unrouted_window: Cell<u64>,
    /// Shards that passed to another node mid-run.
    taken_over: RefCell<Vec<u32>>,
    /// Orders set aside: open on a shard that passed to another node, or
    /// on a node that went.
    set_aside: Cell<u64>,
    /// Every node address the session knows of: the seeds, then each node
    /// a map listed; asked when the map is stale ([`reach_out`]).
    known: RefCell<Vec<SocketAddr>>,
    /// Where the next [`reach_out`] starts in `known`.
    next_known: Cell<usize>,
    /// When the last whole map came (ns since the epoch).
    last_map_ns: Cell<u64>,
    /// Why the last node connection closed (for the failure when every
    /// one has and no known node takes a new one).
    last_close: RefCell<Option<String>>,
    /// The longest a writer waits on its node's socket, or the sender on a
    /// connection made mid-run ([`STALL_HALF_INTERVALS`]).
    stall: Duration,
    /// Half the heartbeat interval (0: no heartbeats): a writer that sent
    /// nothing for this long sends a heartbeat.
    heartbeat_ns: u64,
    /// The capacity of a node's send queue ([`send_buffer_bytes`]).
    buffer_bytes: usize,
    clock: super::Clock,
    recv_bytes: usize,
}

/// How a routed session's node connections are driven.
struct Wiring {
    clock: super::Clock,
    /// Half the negotiated heartbeat interval (0: none).
    heartbeat_ns: u64,
    /// The capacity of a node's send queue ([`send_buffer_bytes`]).
    buffer_bytes: usize,
    /// A receiver's buffer.
    recv_bytes: usize,
}

impl Trader {
    fn new(
        session: Session,
        ledgers: Rc<RefCell<NodeLedgers>>,
        routes: Routes,
        nodes: Vec<Rc<NodeLink>>,
        published: Arc<Published>,
        window: Window,
        w: Wiring,
    ) -> Trader {
        Trader {
            session: RefCell::new(session),
            ledgers,
            routes: RefCell::new(routes),
            nodes: RefCell::new(nodes),
            tasks: RefCell::new(Vec::new()),
            progress: Signal::default(),
            failure: RefCell::new(None),
            published,
            window,
            last_publish_ns: Cell::new(0),
            unrouted_window: Cell::new(0),
            taken_over: RefCell::new(Vec::new()),
            set_aside: Cell::new(0),
            known: RefCell::new(Vec::new()),
            next_known: Cell::new(0),
            last_map_ns: Cell::new(w.clock.now_ns()),
            last_close: RefCell::new(None),
            stall: stall_limit(w.heartbeat_ns),
            heartbeat_ns: w.heartbeat_ns,
            buffer_bytes: w.buffer_bytes,
            clock: w.clock,
            recv_bytes: w.recv_bytes,
        }
    }
}

async fn session(
    plan: Plan,
    (w, c, global): (usize, usize, usize),
    links: Vec<Connected>,
    routes: Routes,
    epoch: Instant,
    shared: Arc<Shared>,
    ledgers: Rc<RefCell<NodeLedgers>>,
) -> ConnOutcome {
    let clock = super::Clock(epoch);
    let warmup_ns = plan.warmup.as_nanos() as u64;
    let end_ns = warmup_ns + plan.duration.as_nanos() as u64;
    let max_frame = links
        .iter()
        .map(|l| l.ack.max_frame_bytes.get())
        .min()
        .unwrap_or(wire::DEFAULT_MAX_FRAME_BYTES);
    let heartbeat_ns = links
        .iter()
        .map(|l| u64::from(l.ack.heartbeat_interval_ms.get()) * 500_000)
        .min()
        .unwrap_or(0);
    let coalesce_bytes = links.iter().map(|l| l.coalesce_bytes).min().unwrap_or(512);
    let symbols = links.first().map(|l| l.symbols.clone()).unwrap_or_default();
    let window = Window {
        from_ns: warmup_ns,
        until_ns: end_ns,
    };
    let session = Session::new(SessionConfig {
        worker: w as u16,
        connection: c as u8,
        symbols,
        mix: plan.mix,
        seed: stream_seed(plan.seed, global as u64),
        outstanding_max: plan.outstanding_max(),
        live_max: plan.live_max(),
        verify: plan.verify,
        max_frame_bytes: max_frame,
        window,
    });
    let published = shared
        .metrics
        .connections
        .get(global)
        .cloned()
        .unwrap_or_else(|| Arc::new(Published::new()));
    let buffer_bytes = send_buffer_bytes(plan.batch, coalesce_bytes);
    let mut leftovers = Vec::with_capacity(links.len());
    let nodes = routes
        .nodes()
        .iter()
        .zip(links)
        .map(|(&addr, l)| {
            leftovers.push(l.leftover);
            Rc::new(NodeLink::new(addr, l.stream, buffer_bytes))
        })
        .collect();
    let recv_bytes = 2 * max_frame.max(wire::DEFAULT_MAX_FRAME_BYTES) as usize;
    let wiring = Wiring {
        clock,
        heartbeat_ns,
        buffer_bytes,
        recv_bytes,
    };
    let trader = Rc::new(Trader::new(
        session, ledgers, routes, nodes, published, window, wiring,
    ));
    for &seed in plan.cluster.iter().flatten() {
        note_known(&trader, seed);
    }
    if let Some(map) = shared.cluster.as_ref() {
        for addr in map.nodes.iter().filter_map(|n| n.addr) {
            note_known(&trader, addr);
        }
    }
    for (i, left) in leftovers.into_iter().enumerate() {
        start_node_tasks(&trader, i, left);
    }
    let mut outbox = Outbox::new(trader.nodes.borrow().len(), max_frame, buffer_bytes);
    let sent = send(
        &plan,
        &trader,
        &mut outbox,
        &shared,
        (end_ns, coalesce_bytes, global),
    )
    .await;
    if let Err(e) = sent {
        trader.failure.borrow_mut().get_or_insert(e);
    }
    trader.session.borrow_mut().end_window(clock.now_ns());
    if trader.failure.borrow().is_none() && !shared.stopped() {
        // The answers still in flight; with --verify the final cancels,
        // each to its order's node.
        let send =
            async |out: &[u8], now: u64| dispatch(&trader, &mut outbox, out, now).map(|_| ());
        let (session, progress, failure) = (&trader.session, &trader.progress, &trader.failure);
        super::drain(&plan, clock, &shared, session, progress, failure, send).await;
    }
    let tasks = trader.tasks.take();
    for t in tasks {
        let _ = t.cancel().await;
    }
    let failure = trader.failure.borrow_mut().take();
    let failed = failure.is_some();
    if let Some(f) = failure {
        trader.published.failed.store(true, Ordering::Relaxed);
        shared.fail(format!("session {global} of --cluster: {f}"));
    }
    let mut session = trader.session.borrow_mut();
    let unanswered = session.finish() as u64;
    trader.published.store(session.counters());
    let latency: Histogram<u64> = session.latency().total.clone();
    ConnOutcome {
        window: session.window_counters(),
        latency,
        violations: session.take_violations(),
        unanswered,
        failed,
        nodes: trader
            .nodes
            .borrow()
            .iter()
            .map(|n| n.counts.borrow().clone())
            .collect(),
        unrouted: trader.unrouted_window.get(),
        map_version: trader.routes.borrow().map_version(),
        taken_over: trader.taken_over.take(),
        set_aside: trader.set_aside.get(),
    }
}

/// Node `i`'s connection closed (or failed) mid-run: nothing routes there
/// any more, the requests in flight on its shards are lost (the session
/// stops waiting for them), and the run goes on with the other nodes
/// (when every one has closed, the sender reaches out to the nodes it
/// knows: [`reach_out`]).
fn node_lost(trader: &Trader, i: usize, why: String) {
    let Some(node) = trader.nodes.borrow().get(i).cloned() else {
        return;
    };
    if node.counts.borrow().closed.is_some() {
        return;
    }
    let shards = trader.routes.borrow_mut().close(i);
    let lost = set_aside(trader, &shards);
    {
        let mut c = node.counts.borrow_mut();
        c.lost += lost;
        c.closed = Some(why.clone());
    }
    *trader.last_close.borrow_mut() = Some(format!("{}: {why}", node.addr));
    node.wake.raise();
    trader.progress.raise();
}

/// Adds `addr` to the nodes the session knows of (once).
fn note_known(trader: &Trader, addr: SocketAddr) {
    let mut known = trader.known.borrow_mut();
    if !known.contains(&addr) {
        known.push(addr);
    }
}

/// Whether every node connection of the session has closed.
fn all_closed(trader: &Trader) -> bool {
    let routes = trader.routes.borrow();
    (0..trader.nodes.borrow().len()).all(|c| routes.is_closed(c))
}

/// Connects to a node the session knows of and has no open connection to
/// (in turn, from where the last call stopped), so that the next map
/// request can go there: `tries` of them at most, stopping at the first
/// that takes the connection. Returns whether one did; the errors of
/// those that did not.
async fn reach_out(
    plan: &Plan,
    trader: &Rc<Trader>,
    global: usize,
    tries: usize,
) -> (bool, Vec<String>) {
    let candidates: Vec<SocketAddr> = {
        let routes = trader.routes.borrow();
        let nodes = trader.nodes.borrow();
        let open =
            |a: &SocketAddr| (0..nodes.len()).any(|c| nodes[c].addr == *a && !routes.is_closed(c));
        let known = trader.known.borrow();
        let start = trader.next_known.get();
        (0..known.len())
            .map(|k| known[(start + k) % known.len()])
            .filter(|a| !open(a))
            .take(tries)
            .collect()
    };
    let mut why = Vec::new();
    for addr in candidates {
        let at = trader.known.borrow().iter().position(|&a| a == addr);
        trader.next_known.set(at.map_or(0, |k| k + 1));
        match connect_node(plan, trader, global, addr).await {
            Ok(()) => return (true, why),
            Err(e) => why.push(format!("{addr}: {e}")),
        }
    }
    (false, why)
}

/// Sets the session's orders on `shards` aside (counted); returns the
/// requests that were in flight on them (lost).
fn set_aside(trader: &Trader, shards: &[u32]) -> u64 {
    let count = trader.routes.borrow().shard_count().max(1);
    let (lost, orders) = trader
        .session
        .borrow_mut()
        .abandon(|symbol| shards.contains(&(symbol % count)));
    trader.set_aside.set(trader.set_aside.get() + orders);
    lost
}

/// Another node took `shards` over (a failover or a move): it detached
/// the sessions of their resting orders (PROTOCOL.md §8.11 rule 9), whose
/// fills and cancels now reach no session, so this session's open orders
/// there are set aside unchecked (late answers to them too), and their
/// trades are paired only where both halves arrive.
fn shards_taken_over(trader: &Trader, shards: &[u32]) {
    set_aside(trader, shards);
    let mut known = trader.taken_over.borrow_mut();
    for &s in shards {
        if !known.contains(&s) {
            known.push(s);
        }
    }
    // Requests no longer awaited: room for new ones.
    trader.progress.raise();
}

/// Sends until the end of the window (or a failure anywhere), each request
/// to its owner's queue; a map request every [`MAP_REFRESH`]. (Each node's
/// writer sends its heartbeats.)
async fn send(
    plan: &Plan,
    trader: &Rc<Trader>,
    outbox: &mut Outbox,
    shared: &Shared,
    (end_ns, coalesce_bytes, global): (u64, usize, usize),
) -> Result<(), String> {
    let clock = trader.clock;
    let batch = plan.batch;
    let mut schedule = plan
        .rate
        .map(|rate| Schedule::new(0, rate, plan.total_connections() as u64, global as u64));
    if trader.nodes.borrow().is_empty() {
        return Err("no node connection to send to".into());
    }
    let mut out: Vec<u8> = Vec::with_capacity(outbox.buffer_bytes);
    let mut map_token = MAP_TOKEN;
    let refresh_ns = MAP_REFRESH.as_nanos() as u64;
    let mut next_map_ns = refresh_ns;
    loop {
        if shared.stopped() || trader.failure.borrow().is_some() {
            return Ok(());
        }
        let now = clock.now_ns();
        if now >= end_ns || interrupted() {
            return Ok(());
        }
        // Every connection closed: a node the session knows of, at once.
        if all_closed(trader) {
            let (reached, why) = reach_out(plan, trader, global, usize::MAX).await;
            if !reached {
                let last = trader.last_close.borrow().clone().unwrap_or_default();
                let why = if why.is_empty() {
                    "no other node is known".to_string()
                } else {
                    why.join("; ")
                };
                return Err(format!(
                    "every node connection closed (the last, {last}), and no node it knows \
                     takes a new one ({why})"
                ));
            }
            next_map_ns = now;
        }
        // The map first, so that it is re-read whatever the flow does; and
        // a connection to each owner the routes lack (a node that got
        // shards since the start, or came back), tried once a refresh.
        if now >= next_map_ns {
            let missing = trader.routes.borrow().missing();
            for addr in missing {
                let _ = connect_node(plan, trader, global, addr).await;
            }
            // No map for a while: the connected nodes are silent; one
            // more node to ask.
            if now.saturating_sub(trader.last_map_ns.get()) >= MAP_STALE.as_nanos() as u64 {
                reach_out(plan, trader, global, 1).await;
            }
            next_map_ns = now + refresh_ns;
            map_token += 1;
            // The next open node in turn.
            let n = trader.nodes.borrow().len();
            let open = (0..n)
                .map(|k| (map_token as usize + k) % n)
                .find(|&k| !trader.routes.borrow().is_closed(k));
            if let Some(i) = open {
                out.clear();
                wire::append_frame(&[ClusterMapRequest::new(map_token)], &mut out)
                    .map_err(|e| format!("cannot encode a map request: {e}"))?;
                trader.nodes.borrow()[i].queue(&mut out);
            }
        }
        out.clear();
        let next_due = fill(
            &mut trader.session.borrow_mut(),
            schedule.as_mut(),
            &mut out,
            now,
            batch,
            coalesce_bytes,
        );
        if !out.is_empty() {
            let routed = dispatch(trader, outbox, &out, now)?;
            trader.published.orders_sent.store(
                trader.session.borrow().counters().orders_sent,
                Ordering::Relaxed,
            );
            if routed == 0 {
                // All answered here at once: nothing awaited, so let the
                // worker's other tasks (receivers, writers) run before the
                // next. (Otherwise the next batch, if the session has room,
                // joins the queues; the writers run when the sender waits.)
                futures_lite::future::yield_now().await;
            }
            continue;
        }
        if trader.session.borrow().exhausted() {
            return Err("the session used up its 2^40 client order ids".into());
        }
        let mut wake_ns = end_ns
            .min(now + STOP_POLL.as_nanos() as u64)
            .min(next_map_ns);
        if let Some(due) = next_due {
            wake_ns = wake_ns.min(due);
        }
        let wait = Duration::from_nanos(wake_ns.saturating_sub(now));
        if next_due.is_some() {
            glommio::timer::sleep(wait).await;
        } else {
            trader.progress.wait_at_most(wait).await;
        }
    }
}

/// The send side of a routed session: the splitter, a buffer per node
/// connection, and the local rejects of unrouted requests.
struct Outbox {
    splitter: Splitter,
    outs: Vec<Vec<u8>>,
    local: Vec<u8>,
    /// The splitter's per-node counts before a split (reused, no
    /// allocation per batch).
    routed_before: Vec<u64>,
    /// Capacity of each buffer ([`send_buffer_bytes`]).
    buffer_bytes: usize,
}

impl Outbox {
    fn new(nodes: usize, max_frame_bytes: u32, buffer_bytes: usize) -> Outbox {
        Outbox {
            splitter: Splitter::new(nodes, max_frame_bytes),
            outs: (0..nodes)
                .map(|_| Vec::with_capacity(buffer_bytes))
                .collect(),
            local: Vec::new(),
            routed_before: Vec::with_capacity(nodes),
            buffer_bytes,
        }
    }

    /// Room for `nodes` node connections (some connected mid-run).
    fn grow(&mut self, nodes: usize) {
        let bytes = self.buffer_bytes;
        self.outs.resize_with(nodes, || Vec::with_capacity(bytes));
        self.splitter.grow(nodes);
    }
}

/// Queues the requests of `out` (written by the session at `now`) each for
/// its shard's owner; the session reads those without a reachable owner
/// as answered here (unrouted, `Rejected(WrongNode)`). Returns the
/// requests queued for a node.
fn dispatch(trader: &Rc<Trader>, outbox: &mut Outbox, out: &[u8], now: u64) -> Result<u64, String> {
    outbox.grow(trader.nodes.borrow().len());
    for o in outbox.outs.iter_mut() {
        o.clear();
    }
    outbox.local.clear();
    let splitter = &mut outbox.splitter;
    outbox.routed_before.clone_from(&splitter.routed);
    let before = &outbox.routed_before;
    let unrouted_before = splitter.unrouted;
    let routed = splitter
        .split(
            out,
            &trader.routes.borrow(),
            &mut outbox.outs,
            &mut outbox.local,
        )
        .map_err(|e| format!("internal: the session wrote a bad frame ({e})"))?;
    if trader.window.contains(now) {
        let nodes = trader.nodes.borrow();
        for (node, (b, a)) in nodes.iter().zip(before.iter().zip(&splitter.routed)) {
            node.counts.borrow_mut().orders += a - b;
        }
        trader
            .unrouted_window
            .set(trader.unrouted_window.get() + splitter.unrouted - unrouted_before);
    }
    if !outbox.local.is_empty() {
        on_node_reports(
            &mut trader.session.borrow_mut(),
            &mut trader.ledgers.borrow_mut(),
            None,
            &outbox.local,
            now,
        )
        .map_err(|e| format!("internal: a local reject did not decode ({e})"))?;
    }
    let nodes = trader.nodes.borrow();
    for (node, o) in nodes.iter().zip(outbox.outs.iter_mut()) {
        if !o.is_empty() {
            node.queue(o);
        }
    }
    Ok(routed)
}

/// Node `i`'s writer: writes what the sender queued for it, and a
/// heartbeat when it has sent nothing for half an interval, until the
/// node is dropped. A write the socket does not take within the stall
/// limit drops the node ([`node_lost`]).
async fn write(trader: Rc<Trader>, i: usize) {
    let Some(node) = trader.nodes.borrow().get(i).cloned() else {
        return;
    };
    let clock = trader.clock;
    let heartbeat_ns = trader.heartbeat_ns;
    let mut bytes: Vec<u8> = Vec::with_capacity(trader.buffer_bytes);
    let (mut last_ns, mut token) = (clock.now_ns(), 0u64);
    loop {
        if node.counts.borrow().closed.is_some() {
            return;
        }
        std::mem::swap(&mut bytes, &mut *node.pending.borrow_mut());
        let now = clock.now_ns();
        if bytes.is_empty() {
            if heartbeat_ns == 0 || now < last_ns + heartbeat_ns {
                let wait = if heartbeat_ns == 0 {
                    STOP_POLL
                } else {
                    Duration::from_nanos(last_ns + heartbeat_ns - now)
                };
                node.wake.wait_at_most(wait).await;
                continue;
            }
            token += 1;
            let beat = Heartbeat {
                token: token.into(),
            };
            if let Err(e) = wire::append_frame(&[beat], &mut bytes) {
                node_lost(&trader, i, format!("cannot encode a heartbeat: {e}"));
                return;
            }
        }
        if let Err(e) = write_to(&trader, &node, &bytes).await {
            if closed_by_peer(&e) {
                // The node closed the connection: what it sent before (a
                // SessionError saying why) is still in the socket, and the
                // reader names the close by it. A failed write is the name
                // only if the reader has none soon.
                let until = clock.now_ns() + CLOSE_GRACE.as_nanos() as u64;
                while node.counts.borrow().closed.is_none() && clock.now_ns() < until {
                    node.wake.wait_at_most(CLOSE_GRACE / 10).await;
                }
            }
            node_lost(&trader, i, format!("sending to it failed: {e}"));
            return;
        }
        bytes.clear();
        last_ns = now;
    }
}

/// How long a writer whose node closed the connection leaves the reader to
/// name the close by what the node said last.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Whether a failed write means the peer closed the connection.
fn closed_by_peer(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
    )
}

/// Writes `bytes` to `node`, given up after the session's stall limit
/// (the timer starts only when the socket does not take them at once).
async fn write_to(trader: &Trader, node: &NodeLink, bytes: &[u8]) -> std::io::Result<()> {
    let stall = trader.stall;
    let limit = async {
        glommio::timer::sleep(stall).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "it took no bytes for {} ms (it stopped reading, or the network to it is cut)",
                stall.as_millis()
            ),
        ))
    };
    futures_lite::future::or(write_all(&node.stream, bytes), limit).await
}

/// Hands the session the reports in `bytes` that `node` sent, or with
/// `None` the local rejects of unrouted requests (which carry no fills):
/// the one path every answer of a routed session takes, so that `--verify`
/// checks them as with one server. Fills are paired in `node`'s ledger.
/// Returns the bytes the whole frames took.
fn on_node_reports(
    session: &mut Session,
    ledgers: &mut NodeLedgers,
    node: Option<SocketAddr>,
    bytes: &[u8],
    now: u64,
) -> Result<usize, SessionFailure> {
    match node {
        Some(addr) => session.on_bytes(bytes, now, ledgers.of(addr)),
        None => session.on_bytes(bytes, now, &mut TradeLedger::new()),
    }
}

/// Starts node `i`'s receiver (with the bytes read past its `HelloAck`)
/// and writer.
fn start_node_tasks(trader: &Rc<Trader>, i: usize, leftover: Vec<u8>) {
    let receiver = glommio::spawn_local(receive(trader.clone(), i, leftover));
    let writer = glommio::spawn_local(write(trader.clone(), i));
    trader.tasks.borrow_mut().extend([receiver, writer]);
}

/// Connects the session to `addr` mid-run (a node that owns shards the
/// routes have no connection for, or one to ask for the map) and starts
/// its receiver and writer; why not when it cannot (tried again at the
/// next map refresh).
async fn connect_node(
    plan: &Plan,
    trader: &Rc<Trader>,
    global: usize,
    addr: SocketAddr,
) -> Result<(), String> {
    let stall = trader.stall;
    let limit = async {
        glommio::timer::sleep(stall).await;
        Err(RunError::Failed(format!(
            "no connection and answer to the Hello within {} ms",
            stall.as_millis()
        )))
    };
    let conn =
        futures_lite::future::or(connect(plan, global, addr, &format!("node {addr}")), limit)
            .await
            .map_err(|e| e.to_string())?;
    let Some(i) = trader.routes.borrow_mut().add_node(addr) else {
        return Err(format!(
            "the session has had {NODE_CONNECTIONS_MAX} node connections, the most it may"
        ));
    };
    debug_assert_eq!(i, trader.nodes.borrow().len());
    let node = NodeLink::new(addr, conn.stream, trader.buffer_bytes);
    trader.nodes.borrow_mut().push(Rc::new(node));
    start_node_tasks(trader, i, conn.leftover);
    Ok(())
}

/// Reads node `i`'s reports until cancelled or the connection fails.
async fn receive(trader: Rc<Trader>, i: usize, leftover: Vec<u8>) {
    let Some(node) = trader.nodes.borrow().get(i).cloned() else {
        return;
    };
    let (clock, recv_bytes) = (trader.clock, trader.recv_bytes);
    let mut buf = vec![0u8; recv_bytes.max(leftover.len() + 4096)];
    let mut len = leftover.len();
    buf[..len].copy_from_slice(&leftover);
    let mut first = len > 0;
    let mut assembler = MapAssembler::default();
    let decoder = Decoder::for_client(wire::MAX_FRAME_BYTES_LIMIT);
    loop {
        if !first
            && !read_more(
                &node.stream,
                &mut buf,
                &mut len,
                recv_bytes,
                "a report frame",
                &node.failure,
                &trader.progress,
            )
            .await
        {
            let why = node.failure.borrow_mut().take().unwrap_or_default();
            node_lost(&trader, i, why);
            return;
        }
        first = false;
        let now = clock.now_ns();
        // The cluster's frames first: they steer the routes.
        let mut taken_over: Vec<u32> = Vec::new();
        for frame in decoder.frames(&buf[..len]) {
            match &frame {
                Frame::ShardOwner(list) => {
                    let mut routes = trader.routes.borrow_mut();
                    for o in list.iter() {
                        taken_over.extend(routes.apply_owner(o).new_owner);
                    }
                    if trader.window.contains(now) {
                        node.counts.borrow_mut().wrong_node += list.len() as u64;
                    }
                }
                Frame::ClusterMap(_) | Frame::ClusterNode(_) | Frame::ClusterShard(_) => {
                    // A bad answer is dropped; the next refresh asks again.
                    if let Ok(Some(map)) = assembler.on_frame(&frame) {
                        trader.last_map_ns.set(now);
                        for addr in map.nodes.iter().filter_map(|n| n.addr) {
                            note_known(&trader, addr);
                        }
                        taken_over.extend(trader.routes.borrow_mut().apply_map(&map).new_owner);
                    }
                }
                _ => {}
            }
        }
        if !taken_over.is_empty() {
            shards_taken_over(&trader, &taken_over);
        }
        let result = {
            let mut session = trader.session.borrow_mut();
            let trades_before = session.counters().trades;
            let r = on_node_reports(
                &mut session,
                &mut trader.ledgers.borrow_mut(),
                Some(node.addr),
                &buf[..len],
                now,
            );
            if trader.window.contains(now) {
                node.counts.borrow_mut().trades += session.counters().trades - trades_before;
            }
            trader.published.store(session.counters());
            if now >= trader.last_publish_ns.get() + super::PUBLISH_INTERVAL_NS {
                trader.last_publish_ns.set(now);
                let interval = &mut session.latency_mut().interval;
                if let Ok(mut h) = trader.published.interval.lock() {
                    let _ = h.add(&*interval);
                }
                interval.reset();
            }
            r
        };
        match result {
            Ok(used) => {
                buf.copy_within(used..len, 0);
                len -= used;
            }
            Err(f) => {
                // The node's copy of the shard passed to no session (it
                // changed hands, perhaps and back, unseen in the map):
                // the session's orders there are detached, as in a
                // takeover (PROTOCOL.md §8.11 rule 9).
                if let SessionFailure::Closed { code, detail, .. } = &f
                    && *code == SessionErrorCode::ShardTakenOver.to_wire()
                {
                    shards_taken_over(&trader, &[*detail]);
                }
                node_lost(&trader, i, f.to_string());
                return;
            }
        }
        trader.progress.raise();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use wire::{Accepted, CancelReason, Canceled, Fill, Liquidity, Message, NewOrder, Rejected};

    use super::*;
    use crate::cluster::MapNode;
    use crate::flow::Mix;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Nodes a, b, c (ids 1 to 3); four shards: 0 on a, 1 on b, 2 on c, 3
    /// unowned.
    fn map() -> MapView {
        MapView {
            version: 3,
            from_node: 1,
            nodes: (1..=3)
                .map(|id| MapNode {
                    id,
                    addr: Some(addr(9000 + id as u16)),
                    alive: true,
                })
                .collect(),
            owners: vec![1, 2, 3, 0],
        }
    }

    fn verifying_session() -> Session {
        Session::new(SessionConfig {
            worker: 0,
            connection: 0,
            symbols: (0..8).collect(),
            mix: Mix::Insert,
            seed: 11,
            outstanding_max: 64,
            live_max: 100,
            verify: true,
            max_frame_bytes: wire::DEFAULT_MAX_FRAME_BYTES,
            window: Window {
                from_ns: 0,
                until_ns: u64::MAX,
            },
        })
    }

    fn frame<M: Message>(messages: &[M]) -> Vec<u8> {
        let mut out = Vec::new();
        wire::append_frame(messages, &mut out).expect("encode");
        out
    }

    fn new_orders(bytes: &[u8]) -> Vec<NewOrder> {
        Decoder::for_server(wire::DEFAULT_MAX_FRAME_BYTES)
            .frames(bytes)
            .flat_map(|f| match f {
                Frame::NewOrder(l) => l.to_vec(),
                _ => Vec::new(),
            })
            .collect()
    }

    /// Two of `orders` on one symbol, one each side: a trade's maker and taker.
    fn crossing_pair(orders: &[NewOrder]) -> (NewOrder, NewOrder) {
        for a in orders {
            if let Some(b) = orders
                .iter()
                .find(|b| b.symbol.get() == a.symbol.get() && b.side != a.side)
            {
                return (*a, *b);
            }
        }
        panic!("no buy and sell on one symbol in {orders:?}");
    }

    /// A one-lot fill of `o` in trade `trade` at `price` (the maker's).
    fn fill(
        o: &NewOrder,
        trade: u64,
        liquidity: Liquidity,
        price: i64,
        leaves: &mut HashMap<u64, u64>,
    ) -> Fill {
        let id = o.client_order_id.get();
        let open = leaves.get_mut(&id).expect("open");
        *open -= 1;
        Fill::new(
            id,
            trade,
            o.symbol.get(),
            o.fields().expect("fields").side,
            liquidity,
            price,
            1,
            *open,
        )
    }

    /// A session over real sockets to `peers` (in the order given), with
    /// a heartbeat interval of `interval`, and its nodes' receivers and
    /// writers started.
    async fn trader_over(peers: &[SocketAddr], interval: Duration) -> Rc<Trader> {
        let m = MapView {
            version: 1,
            from_node: 1,
            nodes: (0..peers.len())
                .map(|k| MapNode {
                    id: k as u64 + 1,
                    addr: Some(peers[k]),
                    alive: true,
                })
                .collect(),
            owners: (1..=peers.len() as u64).collect(),
        };
        let mut nodes = Vec::new();
        for &peer in peers {
            let tcp = glommio::net::TcpStream::connect(peer)
                .await
                .expect("connect");
            nodes.push(Rc::new(NodeLink::new(peer, Stream::plain(tcp), 4096)));
        }
        let half = interval / 2;
        let wiring = Wiring {
            clock: super::super::Clock(Instant::now()),
            heartbeat_ns: half.as_nanos() as u64,
            buffer_bytes: 4096,
            recv_bytes: 2 * wire::DEFAULT_MAX_FRAME_BYTES as usize,
        };
        let trader = Rc::new(Trader::new(
            verifying_session(),
            Rc::new(RefCell::new(NodeLedgers::new())),
            Routes::new(peers.to_vec(), &m),
            nodes,
            Arc::new(Published::new()),
            Window {
                from_ns: 0,
                until_ns: u64::MAX,
            },
            wiring,
        ));
        for &peer in peers {
            note_known(&trader, peer);
        }
        for i in 0..peers.len() {
            start_node_tasks(&trader, i, Vec::new());
        }
        trader
    }

    /// A node whose socket takes no more bytes (it stopped reading, or
    /// the network to it is cut) stalls its own writer only: the other
    /// node of the session gets its heartbeats all along (a server closes
    /// a session that sent it nothing for three intervals), and the
    /// stalled node is dropped once the stall limit passes, saying why.
    /// (With one sender for every node, the live node heard nothing while
    /// the sender waited on the stalled one.)
    #[test]
    fn a_node_that_stops_reading_delays_no_other_nodes_heartbeats() {
        let stuck = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let live = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let peers = [
            stuck.local_addr().expect("addr"),
            live.local_addr().expect("addr"),
        ];
        // The live node: the time each heartbeat arrives.
        let beats = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
        let heard = beats.clone();
        let reader = std::thread::spawn(move || {
            let (mut conn, _) = live.accept().expect("accept");
            let decoder = Decoder::for_server(wire::DEFAULT_MAX_FRAME_BYTES);
            let (mut buf, mut len) = (vec![0u8; 1 << 16], 0);
            while let Ok(n @ 1..) = conn.read(&mut buf[len..]) {
                len += n;
                let mut frames = decoder.frames(&buf[..len]);
                for frame in frames.by_ref() {
                    if matches!(frame, Frame::Heartbeat(_)) {
                        heard.lock().expect("lock").push(Instant::now());
                    }
                }
                let used = frames.consumed();
                buf.copy_within(used..len, 0);
                len -= used;
            }
        });
        let interval = Duration::from_millis(1000);
        let (queued, dropped, why) =
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .spawn(move || async move {
                    let trader = trader_over(&peers, interval).await;
                    // The stuck node accepts and never reads.
                    let (_stuck_peer, _) = stuck.accept().expect("accept");
                    let node = trader.nodes.borrow()[0].clone();
                    let queued = Instant::now();
                    // More than loopback's socket buffers hold.
                    node.queue(&mut vec![0u8; 64 << 20]);
                    let until = queued + 10 * interval;
                    while node.counts.borrow().closed.is_none() && Instant::now() < until {
                        glommio::timer::sleep(Duration::from_millis(20)).await;
                    }
                    let dropped = Instant::now();
                    let why = node.counts.borrow().closed.clone();
                    assert!(
                        trader.nodes.borrow()[1].counts.borrow().closed.is_none(),
                        "the live node was dropped"
                    );
                    for t in trader.tasks.take() {
                        let _ = t.cancel().await;
                    }
                    drop(trader);
                    (queued, dropped, why)
                })
                .expect("executor")
                .join()
                .expect("join");
        reader.join().expect("reader");
        let why = why.expect("the stuck node was never dropped");
        assert!(why.contains("took no bytes"), "{why}");
        let stalled = dropped - queued;
        assert!(
            stalled >= interval,
            "dropped after {stalled:?}, before the stall limit of 1.5 intervals"
        );
        let beats = beats.lock().expect("lock");
        let during = beats.iter().filter(|&&t| t > queued && t < dropped).count();
        assert!(
            during >= 1,
            "the live node heard no heartbeat in the {stalled:?} the stuck node stalled \
             (heartbeats every half interval: {beats:?})"
        );
    }

    /// The routed path end to end without a socket: requests cut per node,
    /// unrouted and WrongNode answers terminal and clean, equal trade ids
    /// from two nodes each paired on its node, the drain's cancels sent to
    /// the owners; then an overfill and a fill for an order never sent are
    /// counted as violations.
    #[test]
    fn every_nodes_reports_are_verified_as_with_one_server() {
        let m = map();
        let nodes = m.owner_addresses();
        let (a, b, c) = (nodes[0], nodes[1], nodes[2]);
        let routes = Routes::new(nodes.clone(), &m);
        let mut s = verifying_session();
        let mut ledgers = NodeLedgers::new();
        let mut splitter = Splitter::new(3, wire::DEFAULT_MAX_FRAME_BYTES);
        let (mut outs, mut local) = (vec![Vec::new(); 3], Vec::new());
        let mut out = Vec::new();
        assert_eq!(s.write_batch(&mut out, 64, 1, || 1), 64);
        splitter
            .split(&out, &routes, &mut outs, &mut local)
            .expect("split");
        assert!(splitter.unrouted > 0, "symbols 3 and 7 have no owner");
        on_node_reports(&mut s, &mut ledgers, None, &local, 2).expect("local");
        let sent: Vec<Vec<NewOrder>> = outs.iter().map(|o| new_orders(o)).collect();
        let mut leaves: HashMap<u64, u64> = HashMap::new();
        // a and c accept theirs; b has moved its shard: WrongNode for all.
        for (node, orders) in [(a, &sent[0]), (c, &sent[2])] {
            let accepted: Vec<Accepted> = orders
                .iter()
                .map(|o| {
                    leaves.insert(o.client_order_id.get(), o.quantity.get());
                    let fields = o.fields().expect("fields");
                    Accepted::new(o.client_order_id.get(), 1, 3, o.symbol.get(), &fields)
                })
                .collect();
            on_node_reports(&mut s, &mut ledgers, Some(node), &frame(&accepted), 3).expect("ok");
        }
        let wrong: Vec<Rejected> = sent[1]
            .iter()
            .map(|o| {
                let id = o.client_order_id.get();
                Rejected::new(id, o.symbol.get(), RejectReason::WrongNode, Kind::NewOrder)
            })
            .collect();
        on_node_reports(&mut s, &mut ledgers, Some(b), &frame(&wrong), 3).expect("ok");
        // Trade 5 on a and trade 5 on c: two trades, each paired on its node.
        for (node, orders) in [(a, &sent[0]), (c, &sent[2])] {
            let (maker, taker) = crossing_pair(orders);
            let price = maker.price.get();
            let fills = [
                fill(&maker, 5, Liquidity::Maker, price, &mut leaves),
                fill(&taker, 5, Liquidity::Taker, price, &mut leaves),
            ];
            on_node_reports(&mut s, &mut ledgers, Some(node), &frame(&fills), 4).expect("ok");
        }
        assert!(s.violations().is_empty(), "{:?}", s.violations().kept);
        assert_eq!(ledgers.paired(), 2);
        // The drain: a cancel for every open order, each to its owner.
        out.clear();
        let cancels = s.write_cancel_all(&mut out, 5);
        let open: usize = leaves.values().filter(|&&l| l > 0).count();
        assert_eq!(cancels, open);
        let (mut outs, mut local) = (vec![Vec::new(); 3], Vec::new());
        splitter
            .split(&out, &routes, &mut outs, &mut local)
            .expect("split");
        assert!(local.is_empty() && outs[1].is_empty(), "only to a and c");
        for (node, bytes) in [(a, &outs[0]), (c, &outs[2])] {
            let canceled: Vec<Canceled> = Decoder::for_server(wire::DEFAULT_MAX_FRAME_BYTES)
                .frames(bytes)
                .flat_map(|f| match f {
                    Frame::Cancel(l) => l.to_vec(),
                    _ => Vec::new(),
                })
                .map(|x| {
                    let id = x.client_order_id.get();
                    Canceled::new(id, x.symbol.get(), CancelReason::Requested, leaves[&id])
                })
                .collect();
            on_node_reports(&mut s, &mut ledgers, Some(node), &frame(&canceled), 6).expect("ok");
        }
        assert!(s.settled());
        assert_eq!(s.finish(), 0);
        let mut v = s.take_violations();
        ledgers.finish(&mut v, |_| false, |_| false);
        assert!(v.is_empty(), "{:?}", v.kept);

        // Now what verification must catch: an overfill, and a fill for
        // an order this session never sent, each from its node.
        let mut s = verifying_session();
        let mut ledgers = NodeLedgers::new();
        out.clear();
        s.write_batch(&mut out, 8, 1, || 1);
        let (mut outs, mut local) = (vec![Vec::new(); 3], Vec::new());
        splitter
            .split(&out, &routes, &mut outs, &mut local)
            .expect("split");
        let x = new_orders(&outs[0])[0];
        let accepted = Accepted::new(
            x.client_order_id.get(),
            1,
            3,
            x.symbol.get(),
            &x.fields().expect("fields"),
        );
        on_node_reports(&mut s, &mut ledgers, Some(a), &frame(&[accepted]), 3).expect("ok");
        let side = x.fields().expect("fields").side;
        let (id, symbol, price, quantity) = (
            x.client_order_id.get(),
            x.symbol.get(),
            x.price.get(),
            x.quantity.get(),
        );
        let overfill = Fill::new(
            id,
            9,
            symbol,
            side,
            Liquidity::Maker,
            price,
            quantity + 1,
            0,
        );
        on_node_reports(&mut s, &mut ledgers, Some(a), &frame(&[overfill]), 4).expect("ok");
        assert_eq!(s.violations().total, 1);
        assert!(
            s.violations().kept[0].contains(&format!("order {id}: Fill of {}", quantity + 1)),
            "{:?}",
            s.violations().kept
        );
        let stranger = Fill::new(77, 10, 2, side, Liquidity::Taker, price, 1, 0);
        on_node_reports(&mut s, &mut ledgers, Some(c), &frame(&[stranger]), 4).expect("ok");
        assert_eq!(s.violations().total, 2);
        assert!(
            s.violations().kept[1].contains("never sent"),
            "{:?}",
            s.violations().kept
        );
    }
}
