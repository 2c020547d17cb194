//! One engine core: a pinned thread with its own io_uring, listener,
//! connections and shards, joined to every other core by SPSC rings.
//!
//! One concern per file:
//!
//! | file | concern |
//! |---|---|
//! | `mod.rs` | the loop: reap, dispatch, route, journal, send, housekeeping, wait |
//! | `session.rs` | the session layer: frames in, commands and answers out (no I/O) |
//! | `conn.rs` | a connection's state and the slab of a core's connections |
//! | `io.rs` | connection I/O: accept, receive, send, backpressure, close, timers |
//! | `route.rs` | symbols to shards, the ring mesh, reports home, processed notices |
//! | `journal.rs` | journal writes through io_uring, applying durable batches |
//! | `md.rs` | market data: events to subscribing cores, fan-out, snapshots, cut-off |
//! | `ops.rs` | io_uring operations: the typed `user_data`, every submission and why its memory outlives it |
//! | `tls.rs` | TLS connections: admitting them after the off-core handshake, decrypting and encrypting in user space |

mod conn;
mod io;
mod journal;
mod md;
mod ops;
mod route;
mod session;
mod tls;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};

use self::conn::Slab;
use self::ops::{Op, Ops};
use self::route::Router;
pub use self::route::{Mesh, Msg, Placement, global_shard, placement_table, shards_on_core};
pub use self::session::SessionConfig;
use self::session::SessionLayer;
pub use self::session::rate::{
    DEFAULT_FLOOD_REJECTS, DEFAULT_ORDER_BURST, FLOOD_WINDOW_MS, OrderEntryLimits,
};
use super::durable::{Done, Job, ShardLog, Snapshot};
use super::limits::{
    ADAPTIVE_SPINS, ARRAYS_PUBLISH_NS, CQ_ENTRIES, EXIT_FLUSH_NS, SQ_ENTRIES, TICK_NS, WAIT_MIN_NS,
};
use super::stats::{Counters, ShardCounters};
use super::uring::{BufRing, new_ring};
use super::{PollMode, Shared, monotonic_ns, realtime_ns};
use crate::book::{Command, Matcher};

/// Static configuration a core needs.
pub struct CoreConfig {
    pub index: usize,
    pub cpu: Option<usize>,
    pub ncores: usize,
    pub shard_count: u32,
    pub batch: usize,
    pub poll: PollMode,
    pub max_connections: usize,
    pub max_frame_bytes: u32,
    pub out_high_water_bytes: usize,
    pub out_max_bytes: usize,
    pub send_chunk_bytes: usize,
    pub recv_buffers: u16,
    pub recv_buffer_bytes: usize,
    pub ring_capacity: usize,
    pub placement: Arc<[Placement]>,
    /// fdatasync each journal write (`--fsync batch`); only used with a journal.
    pub journal_fsync: bool,
    /// Records between snapshots of a shard.
    pub snapshot_every_records: u64,
    /// Unsent output past which a market-data subscriber is cut off.
    pub md_max_queue: usize,
    /// Sessions at once per account (without an account's own limit).
    pub max_sessions_per_account: u32,
    /// Connections at once per source address.
    pub max_connections_per_address: u32,
    /// The input buffers of this core's connections, in bytes of capacity.
    pub input_memory: usize,
    /// The auth thread and this core's verdict queue (with `--accounts`).
    pub auth: Option<(super::auth::AuthLink, Receiver<super::auth::Verdict>)>,
    /// What the session layer needs.
    pub session: SessionConfig,
    /// The handshake threads' queues, on a TLS listener.
    pub tls: Option<crate::server::tls::CoreTls>,
    /// The cluster's view of which shards this node serves, in a cluster.
    pub cluster: Option<Arc<crate::cluster::ClusterView>>,
}

/// Durability of a core's shards: their journals and the channels to the
/// background thread (see [`super::durable`]).
pub struct CoreJournal {
    pub logs: Vec<ShardLog>,
    pub jobs: Sender<Job>,
    pub done: Receiver<Done>,
    /// With `--replicas`: the link to the replication thread.
    pub repl: Option<crate::server::replicate::ReplLink>,
}

/// Everything of a core except its rings and buffers, so that data
/// borrowed from the buffer ring can be processed while this is mutably
/// borrowed.
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
    /// Per local shard: commands applied and trades made.
    shard_counters: Vec<ShardCounters>,
    router: Router,
    /// Connections with output to send this iteration.
    dirty: Vec<u32>,
    /// Connections whose input processing is held back.
    blocked: Vec<u32>,
    /// Connections to start closing this iteration.
    to_close: Vec<u32>,
    /// Monotonic time of this iteration (intervals, timeouts).
    now_ns: u64,
    /// In a cluster, `cluster::boottime_ns` read at the start of this
    /// iteration, before any input is taken: the time the shards' "serve
    /// until" deadlines are checked against (0 outside a cluster).
    cluster_now_ns: u64,
    /// Bytes of capacity of the connections' input buffers (each one's
    /// `Conn::inbuf_charged`), held under `cfg.input_memory`.
    input_bytes: usize,
    /// Wall-clock time of this iteration: the engine time given to shards.
    engine_ns: u64,
    draining: bool,
}

impl<M> State<M> {
    /// Moves connections the router marked into this iteration's send list.
    fn collect_dirty(&mut self) {
        self.dirty.append(&mut self.router.newly_dirty);
    }
}

/// A core: its ring and buffers, and the state they feed.
pub struct Core<M> {
    // Field order is drop order: the ring goes before the buffer ring's memory.
    ops: Ops,
    bufring: BufRing,
    listener: Option<OwnedFd>,
    mesh: Mesh,
    /// The session layer (read-only: its config and decoder).
    session: SessionLayer,
    st: State<M>,
    completions: Vec<(Op, i32, u32)>,
    accept_armed: bool,
    wake_armed: bool,
    idle_spins: u32,
    next_tick_ns: u64,
    /// The most messages one outgoing ring held after a push.
    ring_high_water: u64,
    /// When the counter arrays were last published.
    arrays_published_ns: u64,
    /// To the journal's background thread, and its answers.
    jobs: Option<Sender<Job>>,
    done: Option<Receiver<Done>>,
    /// With `--replicas`: to the replication thread and back.
    repl: Option<crate::server::replicate::ReplLink>,
    /// Durable batches waiting for room in the replication ring.
    repl_backlog: std::collections::VecDeque<crate::server::replicate::ReplMsg>,
    /// The handshake threads' queues, on a TLS listener.
    tls: Option<crate::server::tls::CoreTls>,
    /// Cluster only: per shard, the view's detach count this core last
    /// acted on (`close_detached`).
    detach_seen: Vec<u64>,
}

/// The result of a core's run.
pub struct CoreExit {
    pub counters: Counters,
}

impl<M: Matcher + Snapshot> Core<M> {
    /// Builds the core on its own thread (io_uring SINGLE_ISSUER wants the
    /// creating thread to be the submitting one).
    pub fn new(
        mut cfg: CoreConfig,
        shared: Arc<Shared>,
        listener: OwnedFd,
        mesh: Mesh,
        shards: Vec<M>,
        journal: Option<CoreJournal>,
        bridge: Option<crate::mdbridge::BridgeFeed>,
    ) -> std::io::Result<Core<M>> {
        let (ring, _mode) = new_ring(SQ_ENTRIES, CQ_ENTRIES)?;
        let bufring = BufRing::new(&ring, cfg.recv_buffers, cfg.recv_buffer_bytes, 0)?;
        let staging_limit = cfg.ring_capacity.max(cfg.batch);
        let (logs, jobs, done, repl) = match journal {
            Some(j) => (j.logs, Some(j.jobs), Some(j.done), j.repl),
            None => (Vec::new(), None, None, None),
        };
        let session = SessionLayer::new(cfg.session.clone());
        let tls = cfg.tls.take();
        Ok(Core {
            ops: Ops::new(ring, cfg.index),
            bufring,
            listener: Some(listener),
            mesh,
            session,
            completions: Vec::with_capacity(CQ_ENTRIES as usize),
            accept_armed: false,
            wake_armed: false,
            idle_spins: 0,
            next_tick_ns: 0,
            ring_high_water: 0,
            arrays_published_ns: 0,
            jobs,
            done,
            repl,
            repl_backlog: std::collections::VecDeque::new(),
            tls,
            detach_seen: vec![0; cfg.shard_count as usize],
            st: State {
                router: Router {
                    core: cfg.index,
                    conns: Slab::with_capacity(64),
                    staging: (0..cfg.ncores)
                        .map(|_| Vec::with_capacity(staging_limit * 2))
                        .collect(),
                    staging_limit,
                    congested: false,
                    newly_dirty: Vec::with_capacity(1024),
                    counters: Counters::default(),
                    md: md::MarketData::new(
                        cfg.index,
                        cfg.ncores,
                        cfg.placement.clone(),
                        cfg.md_max_queue,
                        bridge,
                    ),
                },
                pending: shards
                    .iter()
                    .map(|_| Vec::with_capacity(cfg.batch))
                    .collect(),
                logs,
                shard_counters: vec![ShardCounters::default(); shards.len()],
                cfg,
                shared,
                shards,
                dirty: Vec::with_capacity(1024),
                blocked: Vec::with_capacity(64),
                to_close: Vec::with_capacity(64),
                now_ns: 0,
                cluster_now_ns: 0,
                input_bytes: 0,
                engine_ns: 0,
                draining: false,
            },
        })
    }

    /// Numbers this core's new sessions from `generation` on.
    pub fn set_session_base(&mut self, generation: u32) {
        self.st.router.conns.set_base_generation(generation);
    }

    /// Runs the loop until the server's shutdown completes.
    pub fn run(mut self) -> CoreExit {
        self.arm_accept();
        self.arm_wake();
        let mut exit_started_ns = None;
        loop {
            let start = monotonic_ns();
            self.st.now_ns = start;
            if self.st.cfg.cluster.is_some() {
                // After a pause (SIGSTOP) this read comes before the input
                // that waited: a lease that ran out meanwhile is refused.
                self.st.cluster_now_ns = crate::cluster::view::boottime_ns();
            }
            self.st.engine_ns = realtime_ns();
            self.st.router.md.engine_ns = self.st.engine_ns;
            self.reap();
            self.adopt_handshaken();
            let popped = self.drain_rings();
            self.poll_auth();
            if self.st.cfg.index == 0 && self.st.shared.operator.pending() {
                self.take_operator_commands();
            }
            self.retry_blocked();
            // Cancel-on-disconnect commands queued by closes.
            self.st.apply_pending();
            // Market-data subscriptions, between batches.
            self.st.md_serve();
            self.poll_journal_done();
            self.poll_replicated();
            self.journal_submit();
            self.repl_submit();
            self.st.router.md_flush_conflated();
            self.st.collect_dirty();
            let left = self.flush_staging();
            self.send_dirty();
            self.finish_closes();
            if start >= self.next_tick_ns {
                self.next_tick_ns = start + TICK_NS;
                self.housekeeping();
                self.close_detached();
                self.send_dirty();
            }
            if !self.st.draining && self.st.shared.stop_reading.load(Ordering::Acquire) {
                self.start_draining();
            }
            if self.st.shared.exit.load(Ordering::Acquire) {
                let since = *exit_started_ns.get_or_insert_with(|| {
                    self.close_all();
                    self.send_dirty();
                    start
                });
                // A journal write's buffer must outlive the write.
                if !self.journal_busy()
                    && (self.st.router.conns.live() == 0
                        || start.saturating_sub(since) > EXIT_FLUSH_NS)
                {
                    break;
                }
            }
            self.arm_wake();
            let has_work = popped > 0 || left > 0 || !self.rings_empty();
            // Only the shutdown coordinator reads `idle`, and only while draining.
            let idle = self.st.draining
                && !has_work
                && !self.journal_busy()
                && !self.replicating()
                && self.st.pending.iter().all(Vec::is_empty)
                && self.output_flushed();
            self.publish(start, monotonic_ns().saturating_sub(start), idle);
            self.wait(has_work);
        }
        self.publish_arrays();
        if self.st.router.counters.internal_errors > 0 {
            tracing::warn!(
                "core {}: {} internal errors (states that should not happen); please report",
                self.st.cfg.index,
                self.st.router.counters.internal_errors
            );
        }
        CoreExit {
            counters: self.st.router.counters,
        }
    }

    /// Takes every completion and hands it to its handler.
    fn reap(&mut self) {
        let mut done = std::mem::take(&mut self.completions);
        self.ops
            .reap(&mut done, &mut self.st.router.counters.internal_errors);
        for &(op, res, flags) in &done {
            match op {
                Op::Accept => self.on_accept(res, flags),
                Op::Recv { slot, generation } => self.on_recv(slot, generation, res, flags),
                Op::Send { slot, generation } => self.on_send(slot, generation, res),
                Op::CancelRecv { slot, generation } => {
                    if let Some(c) = self.st.router.conns.get_mut(slot, generation) {
                        c.cancel_inflight = false;
                    }
                }
                Op::CancelAccept => {}
                Op::Wake => self.wake_armed = false,
                Op::JournalWrite { shard } => self.on_journal(false, shard as usize, res),
                Op::JournalSync { shard } => self.on_journal(true, shard as usize, res),
            }
        }
        self.completions = done;
    }

    /// Publishes the counters (the arrays at most once a millisecond: they
    /// are many stores, and only people read them).
    fn publish(&mut self, start_ns: u64, busy_ns: u64, idle: bool) {
        if start_ns.saturating_sub(self.arrays_published_ns) >= ARRAYS_PUBLISH_NS || idle {
            self.arrays_published_ns = start_ns;
            self.publish_arrays();
        }
        let dropped = self.st.router.md.bridge.as_ref().map(|b| b.dropped());
        let c = &mut self.st.router.counters;
        if let Some(dropped) = dropped {
            c.md_nats_dropped = dropped;
        }
        c.iterations += 1;
        c.busy_ns += busy_ns;
        let stats = &self.st.shared.stats[self.st.cfg.index];
        stats.publish(c);
        stats.loop_ns.store(start_ns, Ordering::Relaxed);
        stats
            .conns
            .store(self.st.router.conns.live() as u64, Ordering::Relaxed);
        let staged: usize = self.st.router.staging.iter().map(Vec::len).sum();
        stats.staged.store(staged as u64, Ordering::Relaxed);
        stats.idle.store(idle, Ordering::Release);
    }

    fn publish_arrays(&self) {
        let stats = &self.st.shared.stats[self.st.cfg.index];
        stats.publish_arrays(&self.st.router.counters, &self.st.shard_counters);
        stats
            .ring_high_water
            .store(self.ring_high_water, Ordering::Relaxed);
        let unavailable = self.st.logs.iter().any(|l| l.unavailable.is_some());
        stats
            .journal_unavailable
            .store(unavailable, Ordering::Relaxed);
    }

    /// Submits what this iteration queued and, when there is nothing to do
    /// (depending on `--poll`), sleeps until a completion, a wake or the
    /// next tick.
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
            if let Err(e) = self.ops.submit() {
                self.submit_error(e);
            }
            return;
        }
        let me = &self.st.shared.sleeping[self.st.cfg.index];
        me.store(true, Ordering::SeqCst);
        // A producer that pushed before seeing the flag did not wake us: look again.
        if !self.rings_empty() {
            me.store(false, Ordering::SeqCst);
            let _ = self.ops.submit();
            return;
        }
        let until = self
            .next_tick_ns
            .saturating_sub(monotonic_ns())
            .clamp(WAIT_MIN_NS, TICK_NS);
        if let Err(e) = self.ops.submit_and_wait(until) {
            self.submit_error(e);
        }
        self.st.shared.sleeping[self.st.cfg.index].store(false, Ordering::SeqCst);
        self.idle_spins = 0;
    }

    fn submit_error(&self, e: std::io::Error) {
        match e.raw_os_error() {
            Some(libc::EBUSY) | Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ETIME) => {}
            _ => tracing::error!("core {}: io_uring_enter failed: {e}", self.st.cfg.index),
        }
    }
}
