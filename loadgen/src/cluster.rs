//! `dex-trader --cluster`: which node each request goes to. Free of I/O
//! and clocks, like `session.rs`: the runtime (`run/routed.rs`) feeds it the
//! server's cluster frames and the request bytes the sessions write, and
//! sends what it returns.
//!
//! - [`MapAssembler`] puts a `ClusterMap` answer back together from its
//!   frames (`ClusterMap`, then its `ClusterNode`s, then its
//!   `ClusterShard`s; wire/PROTOCOL.md §5 `ClusterMapRequest`).
//! - [`Routes`] maps a symbol to the connection of its shard's owner
//!   (symbol mod the shard count, §8.11): from a whole map, and shard by
//!   shard from a `ShardOwner` that follows a `Rejected(WrongNode)`; each
//!   only when it is newer than what the table holds for that shard.
//! - [`Splitter`] cuts a session's request frames into one buffer per node
//!   connection, and turns every request whose shard has no reachable
//!   owner into a local `Rejected(WrongNode)` instead of sending it
//!   ("unrouted"): the session then sees it answered, so nothing waits for
//!   an answer that cannot come.

use std::net::SocketAddr;

use wire::{
    Cancel, ClusterMap, ClusterNode, ClusterShard, Decoder, Frame, Kind, Message, NewOrder,
    RejectReason, Rejected, Replace, ShardOwner,
};

/// Most shards a map may have; a server announcing more is not believed
/// (bounds the memory a map takes).
pub const SHARDS_MAX: u32 = 1 << 16;
/// Most nodes a map may list.
pub const NODES_MAX: u32 = 1024;
/// Most node connections a routed session has, over the run (one per
/// owner it connects to, a node that came back counting again).
pub const NODE_CONNECTIONS_MAX: usize = 64;

/// One node of a map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapNode {
    /// Its node id (never 0).
    pub id: u64,
    /// Its order-entry address; `None` when the map gives none.
    pub addr: Option<SocketAddr>,
    /// Alive (a recent heartbeat) rather than stale.
    pub alive: bool,
}

/// A whole cluster map as one node answered it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MapView {
    /// The map's version.
    pub version: u64,
    /// The answering node.
    pub from_node: u64,
    /// Nodes, as listed.
    pub nodes: Vec<MapNode>,
    /// The owner's node id of every shard, 0 for none; its length is the
    /// cluster's shard count.
    pub owners: Vec<u64>,
}

impl MapView {
    /// The address of node `id`, when the map lists it with one.
    pub fn address_of(&self, id: u64) -> Option<SocketAddr> {
        if id == wire::NO_NODE {
            return None;
        }
        self.nodes.iter().find(|n| n.id == id).and_then(|n| n.addr)
    }

    /// The addresses of the nodes that own at least one shard, in node id
    /// order, each once.
    pub fn owner_addresses(&self) -> Vec<SocketAddr> {
        let mut ids: Vec<u64> = self
            .owners
            .iter()
            .copied()
            .filter(|&o| o != wire::NO_NODE)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut addrs: Vec<SocketAddr> = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(a) = self.address_of(id)
                && !addrs.contains(&a)
            {
                addrs.push(a);
            }
        }
        addrs
    }

    /// Shards with no owner.
    pub fn unowned(&self) -> usize {
        self.owners.iter().filter(|&&o| o == wire::NO_NODE).count()
    }
}

/// Why a map answer was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapError {
    /// More shards or nodes than this generator takes.
    TooLarge { shards: u32, nodes: u32 },
    /// No shards at all.
    NoShards,
    /// A node or shard record out of place (before the header, a shard
    /// number out of order, an unknown address family...).
    Malformed(String),
}

impl std::fmt::Display for MapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MapError::TooLarge { shards, nodes } => write!(
                f,
                "the cluster map has {shards} shards and {nodes} nodes, more than the \
                 {SHARDS_MAX} shards and {NODES_MAX} nodes this generator takes"
            ),
            MapError::NoShards => f.write_str("the cluster map has no shards"),
            MapError::Malformed(s) => write!(f, "malformed cluster map: {s}"),
        }
    }
}

/// Puts a map together from the frames of one answer. Frames of other
/// kinds are not its business: the caller passes only the three map kinds.
#[derive(Debug, Default)]
pub struct MapAssembler {
    head: Option<ClusterMap>,
    map: MapView,
}

impl MapAssembler {
    /// Whether an answer is being assembled (its header came, not all of it).
    pub fn in_progress(&self) -> bool {
        self.head.is_some()
    }

    /// Takes one frame; returns the map once its last shard has arrived.
    /// A bad answer is dropped (the next one starts afresh) and reported.
    pub fn on_frame(&mut self, frame: &Frame<'_>) -> Result<Option<MapView>, MapError> {
        let r = self.take(frame);
        if r.is_err() {
            self.head = None;
        }
        r
    }

    fn take(&mut self, frame: &Frame<'_>) -> Result<Option<MapView>, MapError> {
        match frame {
            Frame::ClusterMap(list) => {
                for h in list.iter() {
                    let (shards, nodes) = (h.shard_count.get(), h.node_count.get());
                    if shards > SHARDS_MAX || nodes > NODES_MAX {
                        return Err(MapError::TooLarge { shards, nodes });
                    }
                    if shards == 0 {
                        return Err(MapError::NoShards);
                    }
                    self.head = Some(*h);
                    self.map = MapView {
                        version: h.map_version.get(),
                        from_node: h.node_id.get(),
                        nodes: Vec::with_capacity(nodes as usize),
                        owners: Vec::with_capacity(shards as usize),
                    };
                }
                Ok(None)
            }
            Frame::ClusterNode(list) => {
                let Some(head) = self.head else {
                    return Err(MapError::Malformed(
                        "a ClusterNode before its ClusterMap".into(),
                    ));
                };
                for n in list.iter() {
                    if self.map.nodes.len() >= head.node_count.get() as usize {
                        return Err(MapError::Malformed(
                            "more ClusterNodes than announced".into(),
                        ));
                    }
                    self.map.nodes.push(node_of(n)?);
                }
                Ok(None)
            }
            Frame::ClusterShard(list) => {
                let Some(head) = self.head else {
                    return Err(MapError::Malformed(
                        "a ClusterShard before its ClusterMap".into(),
                    ));
                };
                if self.map.nodes.len() != head.node_count.get() as usize {
                    return Err(MapError::Malformed(
                        "a ClusterShard before all the ClusterNodes".into(),
                    ));
                }
                for s in list.iter() {
                    shard_of(s, self.map.owners.len())?;
                    self.map.owners.push(s.owner.get());
                    if self.map.owners.len() == head.shard_count.get() as usize {
                        self.head = None;
                        return Ok(Some(std::mem::take(&mut self.map)));
                    }
                }
                Ok(None)
            }
            _ => Ok(None),
        }
    }
}

fn node_of(n: &ClusterNode) -> Result<MapNode, MapError> {
    let addr = n
        .node_address()
        .map_err(|e| MapError::Malformed(format!("node {:016x}: {e}", n.node_id.get())))?;
    Ok(MapNode {
        id: n.node_id.get(),
        addr,
        alive: n.state == wire::NodeState::Alive.to_wire(),
    })
}

fn shard_of(s: &ClusterShard, expected: usize) -> Result<(), MapError> {
    if s.shard.get() as usize != expected {
        return Err(MapError::Malformed(format!(
            "shard {} where shard {expected} was due",
            s.shard.get()
        )));
    }
    Ok(())
}

/// What a map or `ShardOwner` did to the routes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteChange {
    /// Shards whose route changed.
    pub shards_moved: u32,
    /// Shards that another node than the one last heard of serves now
    /// (not counting a shard that merely lost its owner): the new owner
    /// detached the sessions of its resting orders (PROTOCOL.md §8.11
    /// rule 9), so they report to no session here any more.
    pub new_owner: Vec<u32>,
    /// Owners the table has no connection to (their shards are unrouted).
    pub unreachable: Vec<SocketAddr>,
}

/// Symbol to node connection, for one routed session.
///
/// Connections are numbered by their place in `nodes` (fixed when the run
/// starts). A shard routes to the connection whose address is its owner's;
/// a shard without an owner, or whose owner has no connection here, routes
/// nowhere.
#[derive(Clone, Debug)]
pub struct Routes {
    nodes: Vec<SocketAddr>,
    /// Per connection: closed (its node went away); nothing routes there.
    closed: Vec<bool>,
    /// Per shard: the connection, or `None`.
    route: Vec<Option<u8>>,
    /// Per shard: the owner's address, as last heard, connected or not.
    owner: Vec<Option<SocketAddr>>,
    /// Per shard: the last owner heard of that was a node (not none).
    served_by: Vec<Option<SocketAddr>>,
    /// Per shard: the map version its route comes from.
    version: Vec<u64>,
    /// The newest whole map taken.
    map_version: u64,
}

impl Routes {
    /// Routes over connections to `nodes` (at most
    /// [`NODE_CONNECTIONS_MAX`]), from `map`.
    pub fn new(nodes: Vec<SocketAddr>, map: &MapView) -> Routes {
        debug_assert!(nodes.len() <= NODE_CONNECTIONS_MAX);
        let shards = map.owners.len().max(1);
        let mut r = Routes {
            closed: vec![false; nodes.len()],
            nodes,
            route: vec![None; shards],
            owner: vec![None; shards],
            served_by: vec![None; shards],
            version: vec![0; shards],
            map_version: 0,
        };
        r.apply_map(map);
        r
    }

    /// The node connections' addresses.
    pub fn nodes(&self) -> &[SocketAddr] {
        &self.nodes
    }

    /// The cluster's shard count.
    pub fn shard_count(&self) -> u32 {
        self.route.len() as u32
    }

    /// The newest whole map taken.
    pub fn map_version(&self) -> u64 {
        self.map_version
    }

    /// The connection that takes requests for `symbol`, if any.
    #[inline]
    pub fn route(&self, symbol: u32) -> Option<usize> {
        let shard = (symbol % self.shard_count()) as usize;
        self.route[shard].map(usize::from)
    }

    /// The open connection to `addr`, if any.
    fn connection_of(&self, addr: Option<SocketAddr>) -> Option<u8> {
        let addr = addr?;
        let i = (0..self.nodes.len()).find(|&i| self.nodes[i] == addr && !self.closed[i])?;
        Some(i as u8)
    }

    /// A new connection, to `addr` (a node that owns shards now, or came
    /// back): its number. The shards whose owner is `addr` route there at
    /// once. `None` at [`NODE_CONNECTIONS_MAX`] connections.
    pub fn add_node(&mut self, addr: SocketAddr) -> Option<usize> {
        if self.nodes.len() >= NODE_CONNECTIONS_MAX {
            return None;
        }
        let c = self.nodes.len();
        self.nodes.push(addr);
        self.closed.push(false);
        for (route, owner) in self.route.iter_mut().zip(&self.owner) {
            if *owner == Some(addr) && route.is_none() {
                *route = Some(c as u8);
            }
        }
        Some(c)
    }

    /// Owners that shards route to but this session has no open connection
    /// to (each once): the nodes to connect to.
    pub fn missing(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for (route, owner) in self.route.iter().zip(&self.owner) {
            if route.is_none()
                && let Some(a) = owner
                && !out.contains(a)
            {
                out.push(*a);
            }
        }
        out
    }

    /// Connection `c` closed: from now on nothing routes to it. Returns the
    /// shards whose requests went there: those that routed there, and
    /// those unrouted for now whose last owner heard of is its node (a map
    /// said "no owner" while a move or takeover catches up): their
    /// requests in flight are lost, their open orders gone with it.
    pub fn close(&mut self, c: usize) -> Vec<u32> {
        let Some(closed) = self.closed.get_mut(c) else {
            return Vec::new();
        };
        *closed = true;
        let addr = self.nodes[c];
        let mut shards = Vec::new();
        for (shard, route) in self.route.iter_mut().enumerate() {
            let served = route.is_none() && self.served_by[shard] == Some(addr);
            if *route == Some(c as u8) || served {
                *route = None;
                shards.push(shard as u32);
            }
        }
        shards
    }

    /// Whether connection `c` is closed.
    pub fn is_closed(&self, c: usize) -> bool {
        self.closed.get(c).copied().unwrap_or(true)
    }

    /// Takes a whole map when it is newer than the last one taken; each
    /// shard changes only when the map is at least as new as its route (a
    /// `ShardOwner` may have brought newer news of it). A map of the same
    /// version only names owners the table lacks: a node answers "no
    /// owner" for a shard it holds but does not serve yet (a move or a
    /// takeover catching up), at the version that gave it the shard, so
    /// the same version may name the owner later or from another node
    /// (§8.11 rule 5). A map with another shard count is ignored: nodes of
    /// one cluster share it (§8.11).
    pub fn apply_map(&mut self, map: &MapView) -> RouteChange {
        let mut change = RouteChange::default();
        if map.owners.len() != self.route.len()
            || (map.version < self.map_version && self.map_version != 0)
        {
            return change;
        }
        let same = map.version == self.map_version && self.map_version != 0;
        self.map_version = map.version;
        for (shard, &owner) in map.owners.iter().enumerate() {
            if map.version < self.version[shard] {
                continue;
            }
            let addr = map.address_of(owner);
            if same && (addr.is_none() || self.owner[shard].is_some()) {
                continue;
            }
            let to = self.connection_of(addr);
            if to.is_none()
                && let Some(a) = addr
                && !change.unreachable.contains(&a)
            {
                change.unreachable.push(a);
            }
            if self.route[shard] != to {
                change.shards_moved += 1;
            }
            self.route[shard] = to;
            self.owner[shard] = addr;
            self.version[shard] = map.version;
            self.note_owner(shard, addr, &mut change);
        }
        change
    }

    /// Notes `shard`'s owner: a node other than the last one heard of is
    /// a new owner.
    fn note_owner(&mut self, shard: usize, addr: Option<SocketAddr>, change: &mut RouteChange) {
        if let Some(a) = addr {
            if self.served_by[shard].is_some_and(|was| was != a) {
                change.new_owner.push(shard as u32);
            }
            self.served_by[shard] = Some(a);
        }
    }

    /// Takes a `ShardOwner` when its map version is newer than the shard's
    /// route. A shard number that does not fit the table is ignored.
    pub fn apply_owner(&mut self, owner: &ShardOwner) -> RouteChange {
        let mut change = RouteChange::default();
        let shard = owner.shard.get() as usize;
        let version = owner.map_version.get();
        if shard >= self.route.len() || version <= self.version[shard] {
            return change;
        }
        let addr = if owner.node_id.get() == wire::NO_NODE {
            None
        } else {
            owner.owner_address().ok().flatten()
        };
        let to = self.connection_of(addr);
        if to.is_none()
            && let Some(a) = addr
        {
            change.unreachable.push(a);
        }
        if self.route[shard] != to {
            change.shards_moved = 1;
        }
        self.route[shard] = to;
        self.owner[shard] = addr;
        self.version[shard] = version;
        self.note_owner(shard, addr, &mut change);
        change
    }
}

/// Cuts request frames into one buffer per node connection.
#[derive(Debug)]
pub struct Splitter {
    decoder: Decoder,
    /// Per connection: requests routed there (all time).
    pub routed: Vec<u64>,
    /// Requests that had no route (all time).
    pub unrouted: u64,
    new_orders: Vec<NewOrder>,
    cancels: Vec<Cancel>,
    replaces: Vec<Replace>,
    rejects: Vec<Rejected>,
}

impl Splitter {
    /// A splitter for `connections` node connections, reading frames of at
    /// most `max_frame_bytes`.
    pub fn new(connections: usize, max_frame_bytes: u32) -> Splitter {
        Splitter {
            decoder: Decoder::for_server(max_frame_bytes.max(wire::DEFAULT_MAX_FRAME_BYTES)),
            routed: vec![0; connections],
            unrouted: 0,
            new_orders: Vec::new(),
            cancels: Vec::new(),
            replaces: Vec::new(),
            rejects: Vec::new(),
        }
    }

    /// Makes room for `connections` node connections (a node connected
    /// mid-run).
    pub fn grow(&mut self, connections: usize) {
        if self.routed.len() < connections {
            self.routed.resize(connections, 0);
        }
    }

    /// Appends the requests of `input` (whole frames of NewOrder, Cancel
    /// and Replace, as `Session::write_batch` writes them) to `outs[c]`, c
    /// the connection of each request's symbol, one frame per kind per
    /// connection and input frame. A request with no route is not sent:
    /// a `Rejected(WrongNode)` frame for it goes to `local` (for the
    /// session to read as its answer). Other kinds go to connection 0.
    /// Returns the requests routed; an error when `input` does not decode
    /// (a bug: the session wrote it).
    pub fn split(
        &mut self,
        input: &[u8],
        routes: &Routes,
        outs: &mut [Vec<u8>],
        local: &mut Vec<u8>,
    ) -> Result<u64, wire::DecodeError> {
        debug_assert_eq!(outs.len(), routes.nodes().len());
        let mut frames = self.decoder.frames(input);
        let mut routed = 0;
        self.rejects.clear();
        loop {
            let start = frames.consumed();
            let Some(frame) = frames.next() else { break };
            match frame {
                Frame::NewOrder(list) => {
                    routed += spread(
                        list,
                        |m| m.symbol.get(),
                        |m| (m.client_order_id.get(), m.symbol.get()),
                        &mut self.new_orders,
                        routes,
                        outs,
                        &mut self.routed,
                        &mut self.rejects,
                    );
                }
                Frame::Cancel(list) => {
                    routed += spread(
                        list,
                        |m| m.symbol.get(),
                        |m| (m.client_order_id.get(), m.symbol.get()),
                        &mut self.cancels,
                        routes,
                        outs,
                        &mut self.routed,
                        &mut self.rejects,
                    );
                }
                Frame::Replace(list) => {
                    routed += spread(
                        list,
                        |m| m.symbol.get(),
                        |m| (m.client_order_id.get(), m.symbol.get()),
                        &mut self.replaces,
                        routes,
                        outs,
                        &mut self.routed,
                        &mut self.rejects,
                    );
                }
                _ => {
                    if let Some(out) = outs.first_mut() {
                        out.extend_from_slice(&input[start..frames.consumed()]);
                    }
                }
            }
        }
        if let Some(e) = frames.error() {
            return Err(e);
        }
        self.unrouted += self.rejects.len() as u64;
        for chunk in self.rejects.chunks(wire::MAX_MESSAGES_PER_FRAME) {
            let _ = wire::append_frame(chunk, local);
        }
        Ok(routed)
    }
}

/// The request kind of a message type, for its local reject.
trait Routed: Message + Copy {
    const REQUEST: Kind;
}
impl Routed for NewOrder {
    const REQUEST: Kind = Kind::NewOrder;
}
impl Routed for Cancel {
    const REQUEST: Kind = Kind::Cancel;
}
impl Routed for Replace {
    const REQUEST: Kind = Kind::Replace;
}

#[allow(clippy::too_many_arguments)]
fn spread<M: Routed>(
    list: &[M],
    symbol: impl Fn(&M) -> u32,
    id: impl Fn(&M) -> (u64, u32),
    scratch: &mut Vec<M>,
    routes: &Routes,
    outs: &mut [Vec<u8>],
    counts: &mut [u64],
    rejects: &mut Vec<Rejected>,
) -> u64 {
    let mut routed = 0;
    for (c, out) in outs.iter_mut().enumerate() {
        scratch.clear();
        scratch.extend(list.iter().filter(|m| routes.route(symbol(m)) == Some(c)));
        if !scratch.is_empty() {
            // At most the input frame's count: fits a frame.
            let _ = wire::append_frame(scratch, out);
            counts[c] += scratch.len() as u64;
            routed += scratch.len() as u64;
        }
    }
    for m in list.iter().filter(|m| routes.route(symbol(m)).is_none()) {
        let (order, sym) = id(m);
        rejects.push(Rejected::new(
            order,
            sym,
            RejectReason::WrongNode,
            M::REQUEST,
        ));
    }
    routed
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{NodeState, OrderType, SelfTradePrevention, Side, TimeInForce};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Two nodes (ids 1 and 2), four shards: 0 and 2 on node 1, 1 on node
    /// 2, 3 unowned.
    fn map(version: u64) -> MapView {
        MapView {
            version,
            from_node: 1,
            nodes: vec![
                MapNode {
                    id: 1,
                    addr: Some(addr(9001)),
                    alive: true,
                },
                MapNode {
                    id: 2,
                    addr: Some(addr(9002)),
                    alive: true,
                },
            ],
            owners: vec![1, 2, 1, 0],
        }
    }

    fn owner(shard: u32, version: u64, node: Option<(u64, SocketAddr)>) -> ShardOwner {
        ShardOwner::new(7, shard, shard, version, node, Kind::NewOrder)
    }

    fn order(id: u64, symbol: u32) -> NewOrder {
        NewOrder::new(
            id,
            symbol,
            Side::Buy,
            OrderType::Limit,
            TimeInForce::Gtc,
            false,
            SelfTradePrevention::CancelIncoming,
            100,
            1,
        )
    }

    #[test]
    fn a_map_routes_each_symbol_to_its_shards_owner() {
        let m = map(5);
        assert_eq!(m.owner_addresses(), vec![addr(9001), addr(9002)]);
        assert_eq!(m.unowned(), 1);
        let r = Routes::new(m.owner_addresses(), &m);
        assert_eq!(r.shard_count(), 4);
        assert_eq!(r.map_version(), 5);
        // symbol mod 4
        let routes: Vec<Option<usize>> = (0..8).map(|s| r.route(s)).collect();
        assert_eq!(
            routes,
            [
                Some(0),
                Some(1),
                Some(0),
                None,
                Some(0),
                Some(1),
                Some(0),
                None
            ]
        );
    }

    #[test]
    fn a_newer_shard_owner_moves_one_shard_an_older_one_does_not() {
        let m = map(5);
        let mut r = Routes::new(m.owner_addresses(), &m);
        // Older or same version: ignored.
        let c = r.apply_owner(&owner(0, 5, Some((2, addr(9002)))));
        assert_eq!(c, RouteChange::default());
        assert_eq!(r.route(0), Some(0));
        // Newer: shard 0 moves to node 2.
        let c = r.apply_owner(&owner(0, 6, Some((2, addr(9002)))));
        assert_eq!(c.shards_moved, 1);
        assert_eq!(c.new_owner, vec![0], "another node serves it");
        assert_eq!(r.route(0), Some(1));
        assert_eq!(r.route(4), Some(1), "the shard's other symbols too");
        assert_eq!(r.route(2), Some(0), "other shards stay");
        // The map of version 5 again (an old answer): nothing changes.
        assert_eq!(r.apply_map(&map(5)), RouteChange::default());
        assert_eq!(r.route(0), Some(1));
        // Newer: no owner known (not a new owner: none yet).
        let c = r.apply_owner(&owner(1, 7, None));
        assert!(c.new_owner.is_empty());
        assert_eq!(r.route(1), None);
        // Its old owner again, after none: not a new owner either.
        let c = r.apply_owner(&owner(1, 8, Some((2, addr(9002)))));
        assert!(c.new_owner.is_empty());
        r.apply_owner(&owner(1, 9, None));
        // A node this session has no connection to: unrouted, and said.
        let c = r.apply_owner(&owner(2, 10, Some((1, addr(9001)))));
        assert!(c.new_owner.is_empty(), "its owner still");
        let c = r.apply_owner(&owner(2, 11, Some((3, addr(9003)))));
        assert_eq!(c.unreachable, vec![addr(9003)]);
        assert_eq!(c.new_owner, vec![2]);
        assert_eq!(r.route(2), None);
        // Out of range shard: ignored.
        assert_eq!(r.apply_owner(&owner(99, 12, None)), RouteChange::default());
    }

    #[test]
    fn a_closed_connection_takes_no_more_requests() {
        let m = map(5);
        let mut r = Routes::new(m.owner_addresses(), &m);
        assert_eq!(r.close(1), vec![1]);
        assert!(r.is_closed(1) && !r.is_closed(0));
        assert_eq!(r.route(1), None);
        // A newer map still naming the closed node: unreachable, unrouted.
        let c = r.apply_map(&map(6));
        assert_eq!(c.unreachable, vec![addr(9002)]);
        assert_eq!(r.route(1), None);
        // The shard moved to the node still connected: routed again.
        let mut moved = map(7);
        moved.owners[1] = 1;
        r.apply_map(&moved);
        assert_eq!(r.route(1), Some(0));
        assert_eq!(r.close(7), Vec::<u32>::new(), "no such connection");
    }

    /// A shard unrouted for a moment (a map said "no owner" while a move
    /// catches up) had its requests sent over the connection to its last
    /// owner: when that connection closes, the shard is among those
    /// returned (the session sets its open orders aside). Another node's
    /// unrouted shard is not.
    #[test]
    fn a_closed_connection_returns_the_unrouted_shards_its_node_served_last() {
        let m = map(5);
        let mut r = Routes::new(m.owner_addresses(), &m);
        let mut catching_up = map(6);
        catching_up.owners[1] = 0;
        catching_up.owners[2] = 0;
        r.apply_map(&catching_up);
        assert_eq!((r.route(1), r.route(2)), (None, None));
        assert_eq!(r.close(1), vec![1], "shard 2 was node 1's");
        assert_eq!(r.close(0), vec![0, 2]);
    }

    #[test]
    fn a_node_connected_later_takes_its_shards() {
        let m = map(5);
        // Connected to node 1 only: node 2's shard is unrouted, and missing.
        let mut r = Routes::new(vec![addr(9001)], &m);
        assert_eq!(r.route(1), None);
        assert_eq!(r.missing(), vec![addr(9002)]);
        assert_eq!(r.add_node(addr(9002)), Some(1));
        assert_eq!(r.route(1), Some(1));
        assert!(r.missing().is_empty());
        // It goes, and comes back (restarted): a new connection takes over.
        r.close(1);
        assert_eq!(r.missing(), vec![addr(9002)]);
        assert_eq!(r.add_node(addr(9002)), Some(2));
        assert_eq!((r.route(1), r.route(5)), (Some(2), Some(2)));
        // A newer map naming a third node: missing until connected.
        let mut newer = map(6);
        newer.nodes.push(MapNode {
            id: 3,
            addr: Some(addr(9003)),
            alive: true,
        });
        newer.owners[3] = 3;
        r.apply_map(&newer);
        assert_eq!(r.missing(), vec![addr(9003)]);
        assert_eq!(r.add_node(addr(9003)), Some(3));
        assert_eq!(r.route(3), Some(3));
    }

    #[test]
    fn a_map_of_the_same_version_only_names_owners_the_routes_lack() {
        // Node 1 answered before it served shard 3 (no owner, version 5).
        let m = map(5);
        let mut r = Routes::new(m.owner_addresses(), &m);
        assert_eq!(r.route(3), None);
        // Node 2's answer of the same version names node 1 for shard 3,
        // and no owner for shard 0 (say node 2 heard late): shard 3 is
        // filled in, shard 0 keeps its route.
        let mut same = map(5);
        same.owners = vec![0, 2, 1, 1];
        let c = r.apply_map(&same);
        assert_eq!(c.shards_moved, 1);
        assert!(c.new_owner.is_empty());
        assert_eq!(
            (0..4).map(|s| r.route(s)).collect::<Vec<_>>(),
            [Some(0), Some(1), Some(0), Some(0)]
        );
        // Nor does the same version move a shard between owners.
        let mut other = map(5);
        other.owners = vec![2, 1, 2, 2];
        assert_eq!(r.apply_map(&other), RouteChange::default());
        assert_eq!(r.route(0), Some(0));
    }

    #[test]
    fn a_newer_map_moves_shards_but_not_past_newer_owner_news() {
        let m = map(5);
        let mut r = Routes::new(m.owner_addresses(), &m);
        r.apply_owner(&owner(2, 9, Some((2, addr(9002)))));
        let mut newer = map(8);
        newer.owners = vec![2, 2, 1, 1];
        let c = r.apply_map(&newer);
        assert_eq!(r.map_version(), 8);
        // Shard 0 moved (1 -> 2), shard 3 gained an owner; shard 2's
        // ShardOwner (version 9) is newer than the map: kept.
        assert_eq!(c.shards_moved, 2);
        assert_eq!(c.new_owner, vec![0], "shard 3 had no owner before");
        assert_eq!(
            (0..4).map(|s| r.route(s)).collect::<Vec<_>>(),
            [Some(1), Some(1), Some(1), Some(0)]
        );
        // A map with another shard count is not this cluster's: ignored.
        let mut other = map(20);
        other.owners = vec![1, 1];
        assert_eq!(r.apply_map(&other), RouteChange::default());
        assert_eq!(r.map_version(), 8);
    }

    fn frames_of_map(m: &MapView) -> Vec<u8> {
        let mut out = Vec::new();
        let head = ClusterMap {
            token: 1.into(),
            map_version: m.version.into(),
            node_id: m.from_node.into(),
            shard_count: (m.owners.len() as u32).into(),
            node_count: (m.nodes.len() as u32).into(),
        };
        wire::append_frame(&[head], &mut out).unwrap();
        let nodes: Vec<ClusterNode> = m
            .nodes
            .iter()
            .map(|n| ClusterNode::new(n.id, n.addr.unwrap(), NodeState::Alive, 1, 1, 10))
            .collect();
        wire::append_frame(&nodes, &mut out).unwrap();
        // Shards in two frames, as a server may send them.
        let shards: Vec<ClusterShard> = m
            .owners
            .iter()
            .enumerate()
            .map(|(i, &o)| ClusterShard::new(i as u32, o, 1000))
            .collect();
        let (a, b) = shards.split_at(1);
        wire::append_frame(a, &mut out).unwrap();
        wire::append_frame(b, &mut out).unwrap();
        out
    }

    #[test]
    fn the_assembler_rebuilds_a_map_from_its_frames() {
        let m = map(5);
        let bytes = frames_of_map(&m);
        let mut a = MapAssembler::default();
        let mut got = None;
        for f in Decoder::for_client(1 << 20).frames(&bytes) {
            if let Some(done) = a.on_frame(&f).unwrap() {
                got = Some(done);
            }
        }
        assert_eq!(got, Some(m));
        assert!(!a.in_progress());
        // A shard before its header: refused, and the next answer works.
        let stray = ClusterShard::new(0, 1, 0);
        let mut out = Vec::new();
        wire::append_frame(&[stray], &mut out).unwrap();
        let f = Decoder::for_client(1 << 20).frames(&out).next().unwrap();
        assert!(matches!(a.on_frame(&f), Err(MapError::Malformed(_))));
        // An absurd size: refused.
        let head = ClusterMap {
            token: 1.into(),
            map_version: 1.into(),
            node_id: 1.into(),
            shard_count: (SHARDS_MAX + 1).into(),
            node_count: 1.into(),
        };
        let mut out = Vec::new();
        wire::append_frame(&[head], &mut out).unwrap();
        let f = Decoder::for_client(1 << 20).frames(&out).next().unwrap();
        assert!(matches!(a.on_frame(&f), Err(MapError::TooLarge { .. })));
    }

    #[test]
    fn the_splitter_sends_each_request_to_its_owner_and_rejects_the_unowned() {
        let m = map(5);
        let r = Routes::new(m.owner_addresses(), &m);
        let mut input = Vec::new();
        wire::append_frame(
            &[order(1, 0), order(2, 1), order(3, 3), order(4, 6)],
            &mut input,
        )
        .unwrap();
        wire::append_frame(&[Cancel::new(1, 0), Cancel::new(2, 5)], &mut input).unwrap();
        wire::append_frame(&[Replace::new(9, 7, 100, 2)], &mut input).unwrap();
        let mut s = Splitter::new(2, 1 << 16);
        let mut outs = vec![Vec::new(), Vec::new()];
        let mut local = Vec::new();
        let routed = s.split(&input, &r, &mut outs, &mut local).unwrap();
        assert_eq!(routed, 5);
        assert_eq!(s.routed, vec![3, 2]);
        assert_eq!(s.unrouted, 2);
        let ids = |bytes: &[u8]| -> Vec<(Kind, u64)> {
            Decoder::for_server(1 << 16)
                .frames(bytes)
                .flat_map(|f| match f {
                    Frame::NewOrder(l) => l
                        .iter()
                        .map(|m| (Kind::NewOrder, m.client_order_id.get()))
                        .collect::<Vec<_>>(),
                    Frame::Cancel(l) => l
                        .iter()
                        .map(|m| (Kind::Cancel, m.client_order_id.get()))
                        .collect(),
                    Frame::Replace(l) => l
                        .iter()
                        .map(|m| (Kind::Replace, m.client_order_id.get()))
                        .collect(),
                    _ => vec![],
                })
                .collect()
        };
        assert_eq!(
            ids(&outs[0]),
            [(Kind::NewOrder, 1), (Kind::NewOrder, 4), (Kind::Cancel, 1)]
        );
        assert_eq!(ids(&outs[1]), [(Kind::NewOrder, 2), (Kind::Cancel, 2)]);
        let rejects: Vec<(u64, u32, u16, u8)> = Decoder::for_client(1 << 16)
            .frames(&local)
            .flat_map(|f| match f {
                Frame::Rejected(l) => l
                    .iter()
                    .map(|r| {
                        (
                            r.client_order_id.get(),
                            r.symbol.get(),
                            r.reason.get(),
                            r.request_kind,
                        )
                    })
                    .collect::<Vec<_>>(),
                _ => vec![],
            })
            .collect();
        assert_eq!(
            rejects,
            [
                (
                    3,
                    3,
                    RejectReason::WrongNode.to_wire(),
                    Kind::NewOrder as u8
                ),
                (9, 7, RejectReason::WrongNode.to_wire(), Kind::Replace as u8)
            ]
        );
    }
}
