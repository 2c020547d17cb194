//! Routing: symbols to shards, commands to the core that owns the shard,
//! reports back to the core that owns the session, over the mesh of SPSC
//! rings; and the account of which routed commands are processed, that
//! keeps a session's answers in request order.

use rtrb::{Consumer, Producer};
use wire::{FrameBuf, Kind, Message, SessionErrorCode};

use super::super::auth::AuthRequest;
use super::super::limits::PENDING_JOURNAL_MAX;
use super::super::stats::{Counters, ShardCounters};
use super::conn::Slab;
use super::md::{MarketData, Part, Rec, Request};
use super::session::{CloseReason, Effects, Logon};
use super::{Core, State};
use crate::book::{Command, Matcher, MdEvent, Op, Report, Sink};
use crate::server::durable::Snapshot;
use crate::session_id::SessionId;

/// A message on a ring between two cores.
#[derive(Clone, Copy, Debug)]
pub enum Msg {
    /// A command for the target core's local shard `shard`.
    Cmd {
        shard: u32,
        cmd: Command,
    },
    /// A report for a session the target core owns.
    Report {
        session: SessionId,
        report: Report,
    },
    /// `count` commands of a session the target core owns were processed
    /// (after their reports, on the same ring).
    Processed {
        session: SessionId,
        count: u32,
    },
    /// Market data for the target core's subscribers of the symbol.
    MdTrade(wire::MdTrade),
    MdLevel(wire::MdDepth),
    MdChecksum(wire::MdStatus),
    MdTop {
        symbol: u32,
        bid_orders: u32,
        ask_orders: u32,
        seq: u64,
        engine_ns: u64,
        bid_price: i64,
        bid_quantity: u64,
        ask_price: i64,
        ask_quantity: u64,
    },
    /// Parts of the answer to a subscription of a session the target core owns.
    MdStatusTo {
        session: SessionId,
        ticket: u32,
        msg: wire::MdStatus,
    },
    MdRowTo {
        session: SessionId,
        ticket: u32,
        msg: wire::MdDepth,
    },
    MdTopHalfTo {
        session: SessionId,
        ticket: u32,
        symbol: u32,
        ask: bool,
        price: i64,
        quantity: u64,
        orders: u32,
    },
    /// A session of the sending core subscribes to a symbol the target owns.
    MdSub {
        session: SessionId,
        symbol: u32,
        flags: u8,
        ticket: u32,
    },
    /// A subscription of core `core` to a symbol the target owns ended.
    MdUnsub {
        symbol: u32,
        core: u32,
    },
}

// Every message is one 64-byte slot of a ring.
const _: () = assert!(core::mem::size_of::<Msg>() <= 64);

/// The rings of one core: to and from every other core (`None` for itself).
pub struct Mesh {
    pub to: Vec<Option<Producer<Msg>>>,
    pub from: Vec<Option<Consumer<Msg>>>,
}

/// Where a symbol lives: the core that owns its shard, and the shard's
/// index among that core's shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub core: u32,
    pub shard: u32,
}

/// The placement table: symbol s in shard s % shards, shard k on core
/// k % cores as that core's (k / cores)-th shard. One load per order
/// instead of three divisions.
pub fn placement_table(symbols: usize, shards: u32, cores: usize) -> Vec<Placement> {
    (0..symbols as u64)
        .map(|s| {
            let shard = s % u64::from(shards);
            Placement {
                core: (shard % cores as u64) as u32,
                shard: (shard / cores as u64) as u32,
            }
        })
        .collect()
}

/// Shards that core `core` of `cores` holds when there are `shards`.
pub fn shards_on_core(shards: u32, cores: usize, core: usize) -> usize {
    (shards as usize + cores - 1 - core) / cores
}

/// The shard index (of all shards) of core `core`'s `local`-th shard: the
/// inverse of the placement above.
pub fn global_shard(local: usize, cores: usize, core: usize) -> u32 {
    (local * cores + core) as u32
}

/// Whether a session waits for a processed notice of `op`: not for a
/// CancelSession, an operator's kill or unblock or a new owner's
/// DetachSessions.
#[inline]
fn session_waits(op: &Op) -> bool {
    !matches!(
        op,
        Op::CancelSession | Op::KillAccount | Op::UnblockAccount | Op::DetachSessions
    )
}

/// Delivers reports: into local connections' output, or staged for the
/// core that owns the session. Implements the shards' [`Sink`].
pub struct Router {
    pub core: usize,
    pub conns: Slab,
    pub staging: Vec<Vec<Msg>>,
    pub staging_limit: usize,
    pub congested: bool,
    /// Connections that got output since the core last collected them.
    pub newly_dirty: Vec<u32>,
    pub counters: Counters,
    /// Market data: this core's symbols' subscribers and its sessions'
    /// subscriptions.
    pub md: MarketData,
}

impl Router {
    #[inline]
    pub fn deliver_local(&mut self, session: SessionId, report: &Report) {
        let Some(conn) = self.conns.by_session(session) else {
            self.counters.reports_orphaned += 1;
            return;
        };
        if conn.final_sent {
            // The SessionError was the last message: nothing follows it.
            self.counters.reports_orphaned += 1;
            return;
        }
        push_report(&mut conn.out, report);
        self.counters.reports_out += 1;
        if !conn.dirty {
            conn.dirty = true;
            self.newly_dirty.push(session.slot());
        }
    }

    #[inline]
    pub fn stage(&mut self, core: usize, msg: Msg) {
        let q = &mut self.staging[core];
        q.push(msg);
        if q.len() >= self.staging_limit {
            self.congested = true;
        }
    }

    /// `count` commands of `session` were processed here.
    fn processed(&mut self, session: SessionId, count: u32) {
        if session.core() != self.core {
            self.stage(session.core(), Msg::Processed { session, count });
            return;
        }
        self.processed_local(session, count);
    }

    /// `count` commands of a session of this core were processed (here or
    /// on the core that sent the notice).
    pub fn processed_local(&mut self, session: SessionId, count: u32) {
        // A connection gone meanwhile has nobody left to answer.
        if let Some(conn) = self.conns.by_session(session)
            && conn.processed(count)
            && !conn.dirty
        {
            conn.dirty = true;
            self.newly_dirty.push(session.slot());
        }
    }

    /// Accounts a processed batch: one notice per run of one session's
    /// commands. A CancelSession, an operator's kill or unblock or a new
    /// owner's DetachSessions is not counted (no session waits on it).
    pub fn batch_processed(&mut self, cmds: &[Command]) {
        let mut run: Option<(SessionId, u32)> = None;
        for cmd in cmds {
            if !session_waits(&cmd.op) {
                continue;
            }
            match &mut run {
                Some((session, n)) if *session == cmd.session => *n += 1,
                _ => {
                    if let Some((session, n)) = run.take() {
                        self.processed(session, n);
                    }
                    run = Some((cmd.session, 1));
                }
            }
        }
        if let Some((session, n)) = run {
            self.processed(session, n);
        }
    }
}

#[inline]
fn push_report(out: &mut FrameBuf, report: &Report) {
    match report {
        Report::Accepted(m) => out.push(m),
        Report::Rejected(m) => out.push(m),
        Report::Fill(m) => out.push(m),
        Report::Canceled(m) => out.push(m),
        Report::Replaced(m) => out.push(m),
        Report::Status(m) => out.push(m),
    }
}

impl Sink for Router {
    #[inline]
    fn emit(&mut self, session: SessionId, report: Report) {
        match &report {
            Report::Fill(f) if f.liquidity == wire::Liquidity::Taker.to_wire() => {
                self.counters.trades += 1
            }
            Report::Rejected(r) => self.counters.reject(r.reason.get()),
            _ => {}
        }
        if session == SessionId::NONE {
            // A detached order's report (Op::DetachSessions): no connection
            // has this id (generations start at 1), so it is dropped here,
            // not sent to core 0 to be found orphaned there.
            self.counters.reports_orphaned += 1;
            return;
        }
        let owner = session.core();
        if owner == self.core {
            self.deliver_local(session, &report);
        } else if owner < self.staging.len() {
            self.stage(owner, Msg::Report { session, report });
        } else {
            debug_assert!(false, "a report for session {session:#x} of no core");
            self.counters.internal_errors += 1;
        }
    }

    #[inline]
    fn market(&mut self, event: MdEvent) {
        self.md_event(event);
    }

    #[inline]
    fn wants_top(&self, symbol: u32) -> bool {
        self.md.interested(symbol)
    }

    #[inline]
    fn top(&mut self, symbol: u32, seq: u64, bid: wire::TopLevel, ask: wire::TopLevel) {
        self.md_top(symbol, seq, bid, ask);
    }
}

/// Applies a batch of commands to a local shard (its journal write, if
/// any, is durable), counts it, and sends the sessions' processed notices.
pub(super) fn apply_batch<M: Matcher>(
    shard: &mut M,
    cmds: &[Command],
    engine_ns: u64,
    router: &mut Router,
    counted: &mut ShardCounters,
) {
    let trades_before = router.counters.trades;
    shard.process_batch(cmds, engine_ns, router);
    router.md_checksums(shard);
    router.counters.commands += cmds.len() as u64;
    counted.commands += cmds.len() as u64;
    counted.trades += router.counters.trades - trades_before;
    router.batch_processed(cmds);
}

impl<M: Matcher + Snapshot> State<M> {
    /// Sends a command to the shard that owns `symbol`: queued for a batch
    /// when that shard is local, else staged for its core's ring. False
    /// when it went nowhere (an internal error, counted).
    #[inline]
    pub fn route(&mut self, symbol: u32, cmd: Command) -> bool {
        let Some(&p) = self.cfg.placement.get(symbol as usize) else {
            // The session layer checked the symbol against the directory,
            // which the placement table covers: this cannot happen.
            debug_assert!(false, "symbol {symbol} has no placement");
            self.router.counters.internal_errors += 1;
            return false;
        };
        if p.core as usize == self.cfg.index {
            self.queue_local(p.shard as usize, cmd)
        } else {
            self.router.stage(
                p.core as usize,
                Msg::Cmd {
                    shard: p.shard,
                    cmd,
                },
            );
            true
        }
    }

    /// Queues a command for local shard `shard`; false (counted) when no
    /// such shard exists.
    #[inline]
    pub fn queue_local(&mut self, shard: usize, cmd: Command) -> bool {
        let journaled = !self.logs.is_empty();
        let Some(q) = self.pending.get_mut(shard) else {
            debug_assert!(false, "local shard {shard} of {}", self.pending.len());
            self.router.counters.internal_errors += 1;
            return false;
        };
        q.push(cmd);
        if journaled {
            // The queue waits for the journal: past its bound, stop reading.
            if q.len() >= PENDING_JOURNAL_MAX {
                self.router.congested = true;
            }
        } else if q.len() >= self.cfg.batch {
            self.apply_shard(shard);
        }
        true
    }

    /// Applies a local shard's queue now (without a journal; with one,
    /// `journal_done` applies durable batches).
    pub fn apply_shard(&mut self, shard: usize) {
        if !self.logs.is_empty() {
            return;
        }
        let (Some(q), Some(s)) = (self.pending.get_mut(shard), self.shards.get_mut(shard)) else {
            return;
        };
        if q.is_empty() {
            return;
        }
        let counted = &mut self.shard_counters[shard];
        apply_batch(s, q, self.engine_ns, &mut self.router, counted);
        q.clear();
    }

    /// Applies every queued local command (without a journal).
    pub fn apply_pending(&mut self) {
        for shard in 0..self.pending.len() {
            self.apply_shard(shard);
        }
    }

    /// Cancel-on-disconnect: a CancelSession to every shard of every core.
    pub fn cancel_session_everywhere(&mut self, session: SessionId, account: u64) {
        self.route_everywhere(Command {
            session,
            account,
            op: Op::CancelSession,
        });
    }

    /// Sends `cmd` to every shard of every core (cancel-on-disconnect, a
    /// MassCancel of all symbols, the kill switch) that this node serves:
    /// in a cluster, a shard served elsewhere is not this node's business,
    /// and a standby copy changes only by its owner's stream (its orders
    /// carry the owner's session ids, which a session here may share: a
    /// cancel-on-disconnect applied to the copy would cancel the owner's
    /// orders in the copy alone, and the copy would no longer be exact).
    /// A shard skipped counts as processed at once for the session that
    /// waits on it.
    pub fn route_everywhere(&mut self, cmd: Command) {
        let now = self.cluster_now_ns;
        let ncores = self.cfg.ncores;
        let waits = session_waits(&cmd.op);
        for core in 0..self.cfg.ncores {
            for shard in 0..shards_on_core(self.cfg.shard_count, self.cfg.ncores, core) {
                if let Some(view) = &self.cfg.cluster
                    && !view.serves_at(global_shard(shard, ncores, core), now)
                {
                    if waits {
                        self.router.processed(cmd.session, 1);
                    }
                    continue;
                }
                if core == self.cfg.index {
                    let _ = self.queue_local(shard, cmd);
                } else {
                    self.router.stage(
                        core,
                        Msg::Cmd {
                            shard: shard as u32,
                            cmd,
                        },
                    );
                }
            }
        }
    }

    /// Takes a message popped from another core's ring.
    #[inline]
    fn take(&mut self, msg: &Msg) {
        match msg {
            Msg::Cmd { shard, cmd } => {
                let _ = self.queue_local(*shard as usize, *cmd);
            }
            Msg::Report { session, report } => self.router.deliver_local(*session, report),
            Msg::Processed { session, count } => self.router.processed_local(*session, *count),
            Msg::MdTrade(m) => self.router.md_fanout(&Rec::Trade(*m)),
            Msg::MdLevel(m) => self.router.md_fanout(&Rec::Level(*m)),
            Msg::MdChecksum(m) => self.router.md_fanout(&Rec::Checksum(*m)),
            &Msg::MdTop {
                symbol,
                bid_orders,
                ask_orders,
                seq,
                engine_ns,
                bid_price,
                bid_quantity,
                ask_price,
                ask_quantity,
            } => {
                let bid = wire::TopLevel {
                    price: bid_price,
                    quantity: bid_quantity,
                    orders: bid_orders,
                };
                let ask = wire::TopLevel {
                    price: ask_price,
                    quantity: ask_quantity,
                    orders: ask_orders,
                };
                let top = wire::MdTopOfBook::new(symbol, seq, engine_ns, bid, ask);
                self.router.md_fanout(&Rec::Top(top));
            }
            &Msg::MdStatusTo {
                session,
                ticket,
                msg,
            } => self.router.md_part(session, ticket, Part::Status(msg)),
            &Msg::MdRowTo {
                session,
                ticket,
                msg,
            } => self.router.md_part(session, ticket, Part::Row(msg)),
            &Msg::MdTopHalfTo {
                session,
                ticket,
                symbol,
                ask,
                price,
                quantity,
                orders,
            } => {
                let level = wire::TopLevel {
                    price,
                    quantity,
                    orders,
                };
                self.router
                    .md_part(session, ticket, Part::TopHalf { symbol, ask, level });
            }
            &Msg::MdSub {
                session,
                symbol,
                flags,
                ticket,
            } => self.router.md.requests.push_back(Request {
                session,
                symbol,
                flags,
                ticket,
            }),
            &Msg::MdUnsub { symbol, core } => {
                if !self.router.md.count_unsub(symbol, core as usize) {
                    debug_assert!(false, "an unsubscribe without a subscription");
                    self.router.counters.internal_errors += 1;
                }
            }
        }
    }
}

/// The session layer's effects on this core, for one connection.
pub struct CoreEffects<'a, M> {
    pub st: &'a mut State<M>,
    pub slot: u32,
}

impl<M> CoreEffects<'_, M> {
    fn in_flight(&mut self) -> Option<&mut u32> {
        self.st
            .router
            .conns
            .slot_mut(self.slot)
            .map(|c| &mut c.in_flight)
    }
}

impl<M: Matcher + Snapshot> Effects for CoreEffects<'_, M> {
    #[inline]
    fn congested(&self) -> bool {
        self.st.router.congested
    }

    fn route_everywhere(&mut self, cmd: Command) {
        // One processed notice comes back per shard.
        let shards = self.st.cfg.shard_count;
        if let Some(n) = self.in_flight() {
            *n += shards;
        }
        self.st.route_everywhere(cmd);
    }

    #[inline]
    fn now_ns(&self) -> u64 {
        self.st.now_ns
    }

    #[inline]
    fn route(&mut self, symbol: u32, cmd: Command) {
        // Counted before it is routed: without a journal a full batch is
        // processed at once, and its processed notice must find it counted.
        if let Some(n) = self.in_flight() {
            *n += 1;
        }
        // In a cluster, the shards a session's orders may rest in: when
        // this node's copy of one passes to no session, the session is
        // closed (`Core::close_detached`).
        if self.st.cfg.cluster.is_some()
            && matches!(cmd.op, Op::New(_) | Op::Replace(_))
            && let Some(c) = self.st.router.conns.slot_mut(self.slot)
        {
            c.routed_to(symbol % self.st.cfg.shard_count.max(1));
        }
        if !self.st.route(symbol, cmd)
            && let Some(n) = self.in_flight()
        {
            *n -= 1;
        }
    }

    fn settled(&mut self) -> bool {
        if self.in_flight().is_some_and(|n| *n > 0) {
            // Without a journal, local commands are processed on the spot.
            self.st.apply_pending();
        }
        self.in_flight().is_none_or(|n| *n == 0)
    }

    fn answer<T: Message>(&mut self, msg: &T) {
        let slot = self.slot;
        if let Some(c) = self.st.router.conns.slot_mut(slot) {
            c.out.push(msg);
            if !c.dirty {
                c.dirty = true;
                self.st.router.newly_dirty.push(slot);
            }
        }
    }

    fn counters(&mut self) -> &mut Counters {
        &mut self.st.router.counters
    }

    #[inline]
    fn serves(&self, symbol: u32) -> bool {
        let Some(view) = &self.st.cfg.cluster else {
            return true;
        };
        // The global shard from the placement ([`global_shard`]: no
        // division on the order path). Its bit and its deadline against this
        // iteration's clock read: no other thread need have run since the
        // lease was last renewed.
        let now = self.st.cluster_now_ns;
        let cores = self.st.cfg.ncores;
        self.st.cfg.placement.get(symbol as usize).is_some_and(|p| {
            view.serves_at(global_shard(p.shard as usize, cores, p.core as usize), now)
        })
    }

    fn shard_owner(&self, client_order_id: u64, symbol: u32, kind: Kind) -> wire::ShardOwner {
        let shard = symbol % self.st.cfg.shard_count.max(1);
        let (version, owner) = match &self.st.cfg.cluster {
            Some(view) => {
                let map = view.map();
                // This node is never named: it does not serve the shard now.
                let owner = map
                    .owners
                    .get(shard as usize)
                    .copied()
                    .flatten()
                    .filter(|&(id, _)| id != view.node_id());
                (map.version, owner)
            }
            None => (0, None),
        };
        wire::ShardOwner::new(client_order_id, symbol, shard, version, owner, kind)
    }

    fn cluster_map(&mut self, token: u64) -> bool {
        // An `Arc` clone (map requests only): answering borrows `self`.
        let Some(view) = self.st.cfg.cluster.clone() else {
            return false;
        };
        let map = view.map();
        let header = wire::ClusterMap {
            token: wire::U64::new(token),
            map_version: wire::U64::new(map.version),
            node_id: wire::U64::new(view.node_id()),
            shard_count: wire::U32::new(map.shards.len() as u32),
            node_count: wire::U32::new(map.nodes.len() as u32),
        };
        self.answer(&header);
        for n in &map.nodes {
            self.answer(n);
        }
        // A shard the map (maybe not updated since a pause) gives this node
        // but whose deadline has passed is not claimed: no owner, as far as
        // this node can tell, until the agent's next round.
        let (me, now) = (view.node_id(), self.st.cluster_now_ns);
        for s in &map.shards {
            let shard = s.shard.get();
            if s.owner.get() == me && !view.serves_at(shard, now) {
                self.answer(&wire::ClusterShard::new(shard, wire::NO_NODE, 0));
            } else {
                self.answer(s);
            }
        }
        true
    }

    fn set_version(&mut self, version: u8) {
        if let Some(c) = self.st.router.conns.slot_mut(self.slot) {
            c.out.set_version(version);
        }
    }

    fn subscribe(&mut self, symbol: u32, flags: u32) {
        self.st.md_subscribe(self.slot, symbol, flags);
    }

    fn logon(&mut self, account: u64, credentials: &[u8; 32]) -> Logon {
        let (core, slot) = (self.st.cfg.index, self.slot);
        let Some(c) = self.st.router.conns.slot_mut(slot) else {
            return Logon::Refused(CloseReason::new(
                SessionErrorCode::AuthenticationFailed,
                Kind::Hello as u8,
                0,
                "the connection is gone",
            ));
        };
        let Some((link, _)) = &self.st.cfg.auth else {
            // No accounts: only the session count per account.
            let max = self.st.cfg.max_sessions_per_account;
            return if self.st.shared.admission.acquire_session(account, max) {
                c.session_counted = true;
                Logon::Granted
            } else {
                Logon::Refused(too_many_sessions(account, max))
            };
        };
        let req = AuthRequest {
            core,
            slot,
            generation: c.generation,
            account,
            password: *credentials,
            peer: c.peer.map(|p| p.ip().to_canonical()),
        };
        match link.submit(req) {
            Ok(()) => Logon::Pending,
            Err(text) => Logon::Refused(CloseReason::new(
                SessionErrorCode::AuthenticationFailed,
                Kind::Hello as u8,
                0,
                text,
            )),
        }
    }
}

/// The refusal of a session over its account's limit.
pub fn too_many_sessions(account: u64, max: u32) -> CloseReason {
    CloseReason::new(
        SessionErrorCode::TooManySessions,
        Kind::Hello as u8,
        max,
        format!("account {account} has its limit of {max} sessions"),
    )
}

impl<M: Matcher + Snapshot> Core<M> {
    /// Pops what other cores sent; at most `batch` messages per ring per call.
    pub(super) fn drain_rings(&mut self) -> usize {
        let mut total = 0;
        for consumer in self.mesh.from.iter_mut().flatten() {
            let n = consumer.slots().min(self.st.cfg.batch);
            if n == 0 {
                continue;
            }
            let Ok(chunk) = consumer.read_chunk(n) else {
                continue;
            };
            let (a, b) = chunk.as_slices();
            for msg in a.iter().chain(b) {
                self.st.take(msg);
            }
            chunk.commit_all();
            total += n;
        }
        self.st.apply_pending();
        self.st.router.counters.ring_popped += total as u64;
        total
    }

    /// Moves staged messages into the rings; wakes targets that sleep.
    /// Returns how many stay staged (their rings are full).
    pub(super) fn flush_staging(&mut self) -> usize {
        let mut left = 0;
        let router = &mut self.st.router;
        for (dst, staged) in router.staging.iter_mut().enumerate() {
            if staged.is_empty() {
                continue;
            }
            let Some(producer) = self.mesh.to[dst].as_mut() else {
                debug_assert!(false, "messages staged for this core itself");
                router.counters.internal_errors += staged.len() as u64;
                staged.clear();
                continue;
            };
            let n = producer.slots().min(staged.len());
            if n > 0
                && let Ok(chunk) = producer.write_chunk_uninit(n)
            {
                let pushed = chunk.fill_from_iter(staged.drain(..n));
                router.counters.ring_pushed += pushed as u64;
                self.st.shared.wake(dst);
                let held = (producer.buffer().capacity() - producer.slots()) as u64;
                self.ring_high_water = self.ring_high_water.max(held);
            }
            left += staged.len();
        }
        router.congested = router
            .staging
            .iter()
            .any(|q| q.len() >= router.staging_limit)
            || (!self.st.logs.is_empty()
                && self
                    .st
                    .pending
                    .iter()
                    .any(|q| q.len() >= PENDING_JOURNAL_MAX));
        left
    }

    /// True when no other core has sent anything not yet popped.
    pub(super) fn rings_empty(&self) -> bool {
        self.mesh.from.iter().flatten().all(|c| c.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_for_no_session_is_dropped_on_any_core_without_an_error() {
        for core in [0, 1] {
            let mut router = Router {
                core,
                conns: Slab::with_capacity(4),
                staging: (0..2).map(|_| Vec::new()).collect(),
                staging_limit: 16,
                congested: false,
                newly_dirty: Vec::new(),
                counters: Counters::default(),
                md: super::super::md::MarketData::new(
                    core,
                    2,
                    placement_table(2, 2, 2).into(),
                    16,
                    None,
                ),
            };
            let fill = wire::Fill::new(7, 1, 0, wire::Side::Buy, wire::Liquidity::Maker, 10, 5, 0);
            router.emit(SessionId::NONE, Report::Fill(fill));
            assert!(router.staging.iter().all(Vec::is_empty), "core {core}");
            assert_eq!(router.counters.internal_errors, 0);
            assert_eq!(router.counters.reports_orphaned, 1);
            assert_eq!(router.counters.reports_out, 0);
        }
    }

    #[test]
    fn placement_spreads_shards_round_robin() {
        let p = placement_table(6, 4, 2);
        let got: Vec<(u32, u32)> = p.iter().map(|p| (p.core, p.shard)).collect();
        // symbols 0..6 -> shards 0,1,2,3,0,1 -> (core, local shard)
        assert_eq!(got, [(0, 0), (1, 0), (0, 1), (1, 1), (0, 0), (1, 0)]);
        assert_eq!(shards_on_core(5, 2, 0), 3);
        assert_eq!(shards_on_core(5, 2, 1), 2);
        for (i, q) in placement_table(4, 4, 2).iter().enumerate() {
            assert_eq!(global_shard(q.shard as usize, 2, q.core as usize), i as u32);
        }
    }
}
