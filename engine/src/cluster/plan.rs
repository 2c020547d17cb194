//! The cluster's decisions, free of I/O: which shards a node claims,
//! renews or lets go, each node's fair share, and the cluster map. The
//! agent ([`super::agent`]) reads the key-value buckets, calls these with
//! the time, and writes what they decide.
//!
//! Rules (the README's "Cluster" section says the same for operators):
//!
//! 1. A lease is `{owner, expires_ms, generation}` under key `shard-K`.
//!    nats-server 2.9 (Debian's) has no per-key TTL, so a lease expires by
//!    the timestamp in its value; writes are compare-and-set on the key's
//!    revision (`create` fails when the key exists, `update` when the
//!    revision moved), which works the same on 2.9 and 2.10+.
//! 2. A node renews its own leases every [`ROUND_MS`], each to
//!    now + [`LEASE_MS`]. A lease naming this node but not held (a restart
//!    with the same journal, or an operator's `cluster claim`) is taken
//!    back the same way, expired or not.
//! 3. A node claims unowned shards (no key) up to its share, computed by
//!    [`shares`]: the shards in proportion to the engine cores of the live
//!    nodes, an even number per core. It first waits [`JOIN_WINDOW_MS`]
//!    after registering, so that nodes started together see each other
//!    and split the shards instead of the first one taking all. When
//!    every other live node has its share, it also takes the unowned rest.
//! 4. Without replication, a lease naming another node is never taken,
//!    even long expired: that node's journal holds the shard's orders.
//!    Only that node (restarted) or an operator's `turbo-dex cluster claim
//!    SHARD --node ID --force` (asserting the journal was copied to node
//!    ID) moves it. With replication (`--replicas` 2 or more) rule 7 applies.
//! 5. A node serves a shard only between a successful write of its lease
//!    and [`FENCE_MS`] after the last successful renewal, which is
//!    [`LEASE_MS`] − [`FENCE_MS`] before the lease could expire (the
//!    margin covers the cores' requests in flight and clock skew). A
//!    renewal that finds the lease gone to another node stops serving at once.
//! 6. A node remembers the last lease it read for every shard. When a lease
//!    key vanishes (NATS came back without its store, or a server was
//!    restarted into a cluster and its standalone buckets were not carried
//!    over), the remembered owner still owns the shard: that node creates
//!    its lease again at once (the next generation, so map versions keep
//!    growing) and no other node claims it as unowned.
//! 7. With replication, each shard's journal is in a JetStream stream, so
//!    any node can rebuild it. Its standbys ([`standbys`]) are the R − 1
//!    live nodes that follow the owner in the ring of node ids; they keep
//!    a copy of the shard's book. Liveness here is judged against the
//!    newest heartbeat in the nodes table ([`table_now`]), so that a
//!    nodes bucket that takes no writes for a while (its leader died
//!    with a machine) does not make every node look dead. When the
//!    owner's lease has expired, the first live standby takes it by
//!    compare-and-set ([`Action::Take`], the next generation), then
//!    serves once it has applied the whole stream (`server::replicate`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use wire::{ClusterNode, ClusterShard, NodeState};

/// Time between two rounds of the agent: heartbeat, read, claim, renew.
pub const ROUND_MS: u64 = 1_000;
/// How long a lease lasts after it is written.
pub const LEASE_MS: u64 = 5_000;
/// A node stops serving a shard this long after its last successful
/// renewal of the shard's lease: 2 s before the lease could expire.
pub const FENCE_MS: u64 = 3_000;
/// A node whose heartbeat is older than this is not counted as alive.
pub const NODE_TIMEOUT_MS: u64 = 5_000;
/// How long a starting node waits, after registering, before it claims
/// shards nobody owns (its own leases it takes back at once).
pub const JOIN_WINDOW_MS: u64 = 2_000;

const _: () = assert!(FENCE_MS + ROUND_MS < LEASE_MS);

/// The shortest `--lease-ms`.
pub const LEASE_MS_MIN: u64 = 500;
/// The longest `--lease-ms`.
pub const LEASE_MS_MAX: u64 = 60_000;

/// The control plane's clocks, all derived from the lease duration
/// (`--lease-ms`): a round every fifth of it, serving stops three fifths
/// after the last renewal, a node counts as alive for one lease after its
/// heartbeat. The default ([`LEASE_MS`]) gives the constants above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub lease_ms: u64,
    pub round_ms: u64,
    pub fence_ms: u64,
    pub node_timeout_ms: u64,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing::from_lease(LEASE_MS)
    }
}

impl Timing {
    /// The timing of leases of `lease_ms` (clamped to
    /// [`LEASE_MS_MIN`]..=[`LEASE_MS_MAX`]).
    pub fn from_lease(lease_ms: u64) -> Timing {
        let lease_ms = lease_ms.clamp(LEASE_MS_MIN, LEASE_MS_MAX);
        Timing {
            lease_ms,
            round_ms: lease_ms / 5,
            fence_ms: lease_ms * 3 / 5,
            node_timeout_ms: lease_ms,
        }
    }
}

/// A node's registration in the nodes bucket (key `node-<ID>`), rewritten
/// every round with a fresh heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: u64,
    /// The order-entry address clients use (`--advertise`).
    pub address: SocketAddr,
    pub cores: u32,
    /// The turbo-dex version it runs.
    pub version: String,
    /// Its shard count (the cluster's).
    pub shards: u32,
    /// Unix time of its last heartbeat, ms.
    pub heartbeat_ms: u64,
}

/// A shard's lease (key `shard-<K>` of the leases bucket).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub owner: u64,
    /// Unix time the lease runs out, ms.
    pub expires_ms: u64,
    /// Bumped whenever the shard changes owner; the map version is their sum.
    pub generation: u64,
}

/// A lease as read, with the revision a compare-and-set must name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub record: LeaseRecord,
    pub revision: u64,
}

/// The cluster's configuration (key `config` of the cluster bucket),
/// written once by the first node; every node must have the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub shards: u32,
    /// The symbol directory: its length and [`directory_checksum`]
    /// (symbol ids are positions in it, so nodes must agree on it).
    pub symbols: u32,
    pub directory_crc32c: u32,
}

impl ClusterConfig {
    /// The config of a node with `shards` shards and these symbols.
    pub fn new(shards: u32, symbols: &[String]) -> ClusterConfig {
        ClusterConfig {
            shards,
            symbols: symbols.len() as u32,
            directory_crc32c: directory_checksum(symbols),
        }
    }
}

/// CRC-32C of the symbol names in order, each followed by a newline.
pub fn directory_checksum(symbols: &[String]) -> u32 {
    symbols.iter().fold(0, |crc, name| {
        crc32c::crc32c_append(crc32c::crc32c_append(crc, name.as_bytes()), b"\n")
    })
}

/// One write the agent makes this round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Claim an unowned shard, or create again this node's own lease that
    /// vanished (rule 6): `create` (fails if someone was faster), writing
    /// `generation`.
    Create { shard: u32, generation: u64 },
    /// Renew or take back this node's own lease: `update` at `revision`.
    Update { shard: u32, revision: u64 },
    /// Stop serving a shard whose lease names another node now.
    Drop { shard: u32 },
    /// Take over a replicated shard whose owner's lease expired (rule 7):
    /// `update` at `revision`, writing `generation`.
    Take {
        shard: u32,
        revision: u64,
        generation: u64,
    },
}

/// What a round decides from.
pub struct Round<'a> {
    pub now_ms: u64,
    pub me: u64,
    pub nodes: &'a [NodeRecord],
    /// One entry per shard: its lease, `None` when nobody owns it.
    pub leases: &'a [Option<Lease>],
    /// Shards this node serves now.
    pub held: &'a [bool],
    /// Per shard: the last lease this node read (rule 6); may be shorter
    /// than `leases` (missing entries: none seen).
    pub remembered: &'a [Option<LeaseRecord>],
    /// The join window is over: unowned shards may be claimed.
    pub may_claim: bool,
    /// Copies of each shard's journal (`--replicas`; 1: none, rule 7 off).
    pub replicas: u32,
    /// How long a node counts as alive after its heartbeat.
    pub node_timeout_ms: u64,
    /// Per shard: how long this node has read its lease at the same
    /// revision in rounds that all reached NATS (ms; missing: 0). A lease
    /// is taken over (rule 7) only once this is a whole lease: after
    /// NATS was out of reach (a JetStream leader election takes 4 to 9 s)
    /// every lease looks expired by its timestamp, and the owners get a
    /// lease's time to renew before anyone takes one.
    pub unchanged_ms: &'a [u64],
    /// The lease duration (`--lease-ms`).
    pub lease_ms: u64,
}

/// The standbys of a shard owned by `owner` (rule 7): the `replicas` − 1
/// live nodes (other than the owner) that follow it in the ring of node
/// ids, nearest first. Every node computes the same list from the same
/// records.
///
/// Liveness here is judged by the table's own clock ([`table_now`]), not
/// by the wall clock alone: while the nodes bucket cannot be written (its
/// stream electing a leader after its server died with a machine, 4 to
/// 9 s on nats-server 2.9), every heartbeat stops at once, and by the wall
/// clock every node would look dead: no standby would take the dead
/// machine's shards over, and every standby would drop its copy. Judged
/// against the newest heartbeat, the nodes that were alive when the
/// bucket stopped still are, and one that had stopped before is not.
pub fn standbys(
    owner: u64,
    nodes: &[NodeRecord],
    replicas: u32,
    now_ms: u64,
    node_timeout_ms: u64,
) -> Vec<u64> {
    let now_ms = table_now(nodes, now_ms);
    let mut live: Vec<u64> = nodes
        .iter()
        .filter(|n| n.id != owner && now_ms.saturating_sub(n.heartbeat_ms) <= node_timeout_ms)
        .map(|n| n.id)
        .collect();
    live.sort_unstable();
    live.dedup();
    // Those after the owner first, then those before it (the ring).
    let split = live.partition_point(|&id| id < owner);
    live.rotate_left(split);
    live.truncate(replicas.saturating_sub(1) as usize);
    live
}

/// The time the node table speaks for: its newest heartbeat, never later
/// than `now_ms` (an empty table: `now_ms`). Every node heartbeats every
/// round, so while the nodes bucket takes writes this is within a round
/// of `now_ms`; while it takes none, it stays where the writes stopped.
pub fn table_now(nodes: &[NodeRecord], now_ms: u64) -> u64 {
    nodes
        .iter()
        .map(|n| n.heartbeat_ms)
        .max()
        .map_or(now_ms, |newest| newest.min(now_ms))
}

/// Whether `node` counts as alive at `now_ms`.
pub fn alive(node: &NodeRecord, now_ms: u64) -> bool {
    now_ms.saturating_sub(node.heartbeat_ms) <= NODE_TIMEOUT_MS
}

/// Each live node's fair share of `shards`: in proportion to its cores,
/// the remainder one each to the largest fractions (ties: lower id). The
/// same inputs give every node the same answer. `me` always counts.
pub fn shares(shards: u32, nodes: &[NodeRecord], me: u64, now_ms: u64) -> BTreeMap<u64, u32> {
    let live: BTreeMap<u64, u64> = nodes
        .iter()
        .filter(|n| n.id == me || alive(n, now_ms))
        .map(|n| (n.id, u64::from(n.cores.max(1))))
        .collect();
    let cores: u64 = live.values().sum();
    let mut out = BTreeMap::new();
    if cores == 0 {
        return out;
    }
    let total = u64::from(shards);
    let mut given = 0u64;
    let mut fractions: Vec<(u64, u64)> = Vec::with_capacity(live.len());
    for (&id, &c) in &live {
        let exact = total * c;
        out.insert(id, (exact / cores) as u32);
        given += exact / cores;
        fractions.push((exact % cores, id));
    }
    // Largest fraction first; ties to the lower id.
    fractions.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, id) in fractions.iter().take((total - given) as usize) {
        *out.entry(id).or_default() += 1;
    }
    out
}

/// The writes of one round (see the module's rules).
pub fn decide(r: &Round<'_>) -> Vec<Action> {
    let shards = r.leases.len() as u32;
    let mut actions = Vec::new();
    let mut owned_by: BTreeMap<u64, u32> = BTreeMap::new();
    for (shard, lease) in r.leases.iter().enumerate() {
        let shard = shard as u32;
        match lease {
            Some(l) if l.record.owner == r.me => {
                *owned_by.entry(r.me).or_default() += 1;
                actions.push(Action::Update {
                    shard,
                    revision: l.revision,
                });
            }
            Some(l) => {
                if r.held.get(shard as usize).copied().unwrap_or(false) {
                    actions.push(Action::Drop { shard });
                }
                let expired = l.record.expires_ms < r.now_ms
                    && r.unchanged_ms.get(shard as usize).copied().unwrap_or(0) >= r.lease_ms;
                if r.replicas > 1
                    && expired
                    && standbys(
                        l.record.owner,
                        r.nodes,
                        r.replicas,
                        r.now_ms,
                        r.node_timeout_ms,
                    )
                    .first()
                        == Some(&r.me)
                {
                    *owned_by.entry(r.me).or_default() += 1;
                    actions.push(Action::Take {
                        shard,
                        revision: l.revision,
                        generation: l.record.generation + 1,
                    });
                } else {
                    *owned_by.entry(l.record.owner).or_default() += 1;
                }
            }
            None => match r.remembered.get(shard as usize).copied().flatten() {
                // Its key vanished: the owner this node last saw still owns it.
                Some(last) if last.owner == r.me => {
                    *owned_by.entry(r.me).or_default() += 1;
                    actions.push(Action::Create {
                        shard,
                        generation: last.generation + 1,
                    });
                }
                Some(last) => {
                    *owned_by.entry(last.owner).or_default() += 1;
                    if r.held.get(shard as usize).copied().unwrap_or(false) {
                        actions.push(Action::Drop { shard });
                    }
                }
                None => {
                    if r.held.get(shard as usize).copied().unwrap_or(false) {
                        actions.push(Action::Drop { shard });
                    }
                }
            },
        }
    }
    if !r.may_claim {
        return actions;
    }
    let unowned: Vec<u32> = (0..shards)
        .filter(|&s| {
            r.leases[s as usize].is_none()
                && r.remembered.get(s as usize).copied().flatten().is_none()
        })
        .collect();
    if unowned.is_empty() {
        return actions;
    }
    let shares = shares(shards, r.nodes, r.me, r.now_ms);
    let mine = owned_by.get(&r.me).copied().unwrap_or(0);
    let want = shares.get(&r.me).copied().unwrap_or(0);
    let others_full = shares
        .iter()
        .filter(|&(&id, _)| id != r.me)
        .all(|(id, &share)| owned_by.get(id).copied().unwrap_or(0) >= share);
    let claim = if others_full {
        unowned.len()
    } else {
        want.saturating_sub(mine) as usize
    };
    // Nodes that start together begin at different places (their rank
    // among the live nodes), so that their creates rarely collide.
    let rank = shares.keys().position(|&id| id == r.me).unwrap_or(0) as u64;
    let start = (rank * u64::from(shards) / shares.len().max(1) as u64) as u32;
    let mut order = unowned;
    order.sort_by_key(|&s| (s + shards - start) % shards.max(1));
    actions.extend(order.into_iter().take(claim).map(|shard| Action::Create {
        shard,
        generation: 1,
    }));
    actions
}

/// One move of [`rebalance`]: `shard` from node `from` to node `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rebalance {
    pub shard: u32,
    pub from: u64,
    pub to: u64,
}

/// The moves (`turbo-dex cluster rebalance`, replication only) that bring
/// every live node to its fair share ([`shares`]): each from the node
/// furthest over its share to the one furthest under (ties: lower id),
/// the over node's highest-numbered shard first. A shard without an
/// owner, or whose owner is not live, is not moved (a claim or a takeover
/// is its business) and counts for nobody. The same inputs give the same
/// moves.
pub fn rebalance(nodes: &[NodeRecord], leases: &[Option<Lease>], now_ms: u64) -> Vec<Rebalance> {
    let mut owned: BTreeMap<u64, Vec<u32>> = nodes
        .iter()
        .filter(|n| alive(n, now_ms))
        .map(|n| (n.id, Vec::new()))
        .collect();
    let Some(&first) = owned.keys().next() else {
        return Vec::new();
    };
    for (shard, lease) in leases.iter().enumerate() {
        if let Some(l) = lease
            && let Some(v) = owned.get_mut(&l.record.owner)
        {
            v.push(shard as u32);
        }
    }
    let share = shares(leases.len() as u32, nodes, first, now_ms);
    let gap = |owned: &BTreeMap<u64, Vec<u32>>, id: u64| {
        owned[&id].len() as i64 - i64::from(share.get(&id).copied().unwrap_or(0))
    };
    let mut moves = Vec::new();
    loop {
        // Largest gap first; ties to the lower id (the map is in id order
        // and `max_by_key` keeps the last of equals, so compare by hand).
        let pick = |sign: i64| {
            let mut best: Option<(i64, u64)> = None;
            for &id in owned.keys() {
                let g = sign * gap(&owned, id);
                if g > 0 && best.is_none_or(|(b, _)| g > b) {
                    best = Some((g, id));
                }
            }
            best.map(|(_, id)| id)
        };
        let (Some(from), Some(to)) = (pick(1), pick(-1)) else {
            return moves;
        };
        let Some(shard) = owned.get_mut(&from).and_then(Vec::pop) else {
            return moves;
        };
        owned.entry(to).or_default().push(shard);
        moves.push(Rebalance { shard, from, to });
    }
}

/// The lease a node writes for itself at `now_ms`, running `lease_ms`.
pub fn my_lease(me: u64, now_ms: u64, generation: u64, lease_ms: u64) -> LeaseRecord {
    LeaseRecord {
        owner: me,
        expires_ms: now_ms + lease_ms,
        generation,
    }
}

/// The lease an operator's forced claim writes: owned by `node`, already
/// expired, so that `node` takes it back (rule 2) on its next round and
/// nobody serves it until then.
pub fn forced_lease(node: u64, previous: Option<&LeaseRecord>, now_ms: u64) -> LeaseRecord {
    LeaseRecord {
        owner: node,
        expires_ms: now_ms,
        generation: previous.map_or(1, |p| p.generation + 1),
    }
}

/// The map version: the sum of the leases' generations, which grows
/// whenever a shard changes owner.
pub fn map_version(leases: &[Option<Lease>]) -> u64 {
    leases.iter().flatten().map(|l| l.record.generation).sum()
}

/// The cluster map as this node sees it at `now_ms`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Map {
    pub version: u64,
    pub me: u64,
    /// By increasing node id.
    pub nodes: Vec<ClusterNode>,
    pub shards: Vec<ClusterShard>,
    /// Per shard: the owner and its address, when known.
    pub owners: Vec<Option<(u64, SocketAddr)>>,
}

/// Builds the map from what a round read.
pub fn build_map(now_ms: u64, me: u64, nodes: &[NodeRecord], leases: &[Option<Lease>]) -> Map {
    let by_id: BTreeMap<u64, &NodeRecord> = nodes.iter().map(|n| (n.id, n)).collect();
    let mut owned: BTreeMap<u64, u32> = BTreeMap::new();
    let mut shards = Vec::with_capacity(leases.len());
    let mut owners = Vec::with_capacity(leases.len());
    for (k, lease) in leases.iter().enumerate() {
        match lease {
            Some(l) => {
                *owned.entry(l.record.owner).or_default() += 1;
                let left = l.record.expires_ms.saturating_sub(now_ms);
                shards.push(ClusterShard::new(
                    k as u32,
                    l.record.owner,
                    u32::try_from(left).unwrap_or(u32::MAX),
                ));
                owners.push(
                    by_id
                        .get(&l.record.owner)
                        .map(|n| (l.record.owner, n.address)),
                );
            }
            None => {
                shards.push(ClusterShard::new(k as u32, wire::NO_NODE, 0));
                owners.push(None);
            }
        }
    }
    let nodes = by_id
        .values()
        .map(|n| {
            let age = now_ms.saturating_sub(n.heartbeat_ms);
            let state = if alive(n, now_ms) {
                NodeState::Alive
            } else {
                NodeState::Stale
            };
            ClusterNode::new(
                n.id,
                n.address,
                state,
                n.cores,
                owned.get(&n.id).copied().unwrap_or(0),
                u32::try_from(age).unwrap_or(u32::MAX),
            )
        })
        .collect();
    Map {
        version: map_version(leases),
        me,
        nodes,
        shards,
        owners,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, cores: u32, heartbeat_ms: u64) -> NodeRecord {
        NodeRecord {
            id,
            address: format!("127.0.0.1:{}", 9000 + id).parse().unwrap(),
            cores,
            version: "test".into(),
            shards: 8,
            heartbeat_ms,
        }
    }

    fn lease(owner: u64, expires_ms: u64, revision: u64) -> Option<Lease> {
        Some(Lease {
            record: LeaseRecord {
                owner,
                expires_ms,
                generation: 1,
            },
            revision,
        })
    }

    #[test]
    fn directories_differ_by_order_and_names() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = directory_checksum(&names(&["A", "B"]));
        assert_eq!(a, directory_checksum(&names(&["A", "B"])));
        assert_ne!(a, directory_checksum(&names(&["B", "A"])));
        assert_ne!(a, directory_checksum(&names(&["AB"])));
        let c = ClusterConfig::new(4, &names(&["A", "B"]));
        assert_eq!((c.shards, c.symbols, c.directory_crc32c), (4, 2, a));
    }

    #[test]
    fn rebalance_moves_shards_from_the_fullest_to_the_emptiest_live_node() {
        let now = 100_000;
        let nodes = [node(1, 1, now), node(2, 1, now), node(3, 1, now)];
        // Node 1 owns all six shards after two failovers.
        let all_one: Vec<Option<Lease>> = (0..6).map(|s| lease(1, now + 1000, s)).collect();
        let moves = rebalance(&nodes, &all_one, now);
        let m = |shard, from, to| Rebalance { shard, from, to };
        assert_eq!(moves, [m(5, 1, 2), m(4, 1, 3), m(3, 1, 2), m(2, 1, 3)]);
        // Balanced: nothing to do.
        let even: Vec<Option<Lease>> = [1, 1, 2, 2, 3, 3]
            .iter()
            .enumerate()
            .map(|(s, &o)| lease(o, now + 1000, s as u64))
            .collect();
        assert!(rebalance(&nodes, &even, now).is_empty());
        // A node that is not live gets nothing, and its shards stay (its
        // standby takes them over); an unowned shard is nobody's.
        let stale = [node(1, 1, now), node(2, 1, now), node(3, 1, now - 60_000)];
        let mut leases = all_one.clone();
        leases[0] = lease(3, now - 30_000, 0);
        leases[1] = None;
        // Shares of six over the two live nodes: three each. Node 1 owns
        // four: one moves.
        let moves = rebalance(&stale, &leases, now);
        assert_eq!(moves, [m(5, 1, 2)]);
        // Shares follow cores: a 3-core node takes three of four.
        let cores = [node(1, 1, now), node(2, 3, now)];
        let four: Vec<Option<Lease>> = (0..4).map(|s| lease(1, now + 1000, s)).collect();
        assert_eq!(rebalance(&cores, &four, now).len(), 3);
        assert!(rebalance(&[], &four, now).is_empty());
    }

    #[test]
    fn shares_follow_cores_and_sum_to_the_shards() {
        let nodes = [node(1, 2, 100), node(2, 2, 100)];
        let s = shares(8, &nodes, 1, 100);
        assert_eq!(s.values().copied().collect::<Vec<_>>(), [4, 4]);
        let nodes = [node(1, 1, 100), node(2, 3, 100)];
        assert_eq!(shares(8, &nodes, 1, 100)[&2], 6);
        let nodes = [node(1, 1, 100), node(2, 1, 100), node(3, 1, 100)];
        let s = shares(8, &nodes, 1, 100);
        assert_eq!(s.values().sum::<u32>(), 8);
        assert_eq!(s.values().copied().collect::<Vec<_>>(), [3, 3, 2]);
    }

    #[test]
    fn dead_nodes_have_no_share_but_i_always_count() {
        let nodes = [node(1, 1, 0), node(2, 1, 0)];
        let now = NODE_TIMEOUT_MS + 1;
        let s = shares(4, &nodes, 1, now);
        assert_eq!(s.len(), 1);
        assert_eq!(s[&1], 4);
    }

    #[test]
    fn nodes_starting_together_claim_disjoint_halves() {
        let nodes = [node(1, 1, 0), node(2, 1, 0)];
        let leases = vec![None; 8];
        let held = [false; 8];
        let claims = |me| {
            decide(&Round {
                now_ms: 10,
                me,
                nodes: &nodes,
                leases: &leases,
                held: &held,
                may_claim: true,
                replicas: 1,
                node_timeout_ms: NODE_TIMEOUT_MS,
                unchanged_ms: &[],
                lease_ms: LEASE_MS,
                remembered: &[],
            })
        };
        let a = claims(1);
        let b = claims(2);
        assert_eq!(a.len(), 4);
        assert_eq!(b.len(), 4);
        for x in &a {
            assert!(!b.contains(x), "{x:?} claimed by both");
        }
    }

    #[test]
    fn nothing_new_is_claimed_in_the_join_window() {
        let nodes = [node(1, 1, 0)];
        let mut leases = vec![None; 4];
        leases[2] = lease(1, 0, 7);
        let got = decide(&Round {
            now_ms: 10,
            me: 1,
            nodes: &nodes,
            leases: &leases,
            held: &[false; 4],
            may_claim: false,
            replicas: 1,
            node_timeout_ms: NODE_TIMEOUT_MS,
            unchanged_ms: &[],
            lease_ms: LEASE_MS,
            remembered: &[],
        });
        // Its own (expired) lease is taken back at once.
        assert_eq!(
            got,
            [Action::Update {
                shard: 2,
                revision: 7
            }]
        );
    }

    #[test]
    fn another_nodes_lease_is_never_taken_even_expired() {
        let nodes = [node(1, 1, 100_000), node(2, 1, 0)];
        let leases = vec![lease(2, 5, 3); 4];
        let got = decide(&Round {
            now_ms: 100_000,
            me: 1,
            nodes: &nodes,
            leases: &leases,
            held: &[false; 4],
            may_claim: true,
            replicas: 1,
            node_timeout_ms: NODE_TIMEOUT_MS,
            unchanged_ms: &[],
            lease_ms: LEASE_MS,
            remembered: &[],
        });
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn standbys_follow_the_owner_in_the_ring_of_live_ids() {
        let now = 100_000;
        let nodes = [
            node(5, 1, now),
            node(1, 1, now),
            node(7, 1, now - NODE_TIMEOUT_MS - 1), // dead
            node(3, 1, now),
        ];
        let of = |owner, replicas| standbys(owner, &nodes, replicas, now, NODE_TIMEOUT_MS);
        assert_eq!(of(3, 3), [5, 1]);
        assert_eq!(of(5, 3), [1, 3], "past the dead 7, round to the start");
        assert_eq!(of(1, 2), [3]);
        assert_eq!(of(7, 3), [1, 3], "a dead owner's standbys are live ones");
        assert_eq!(of(3, 9), [5, 1], "no more than there are");
        assert!(of(3, 1).is_empty(), "no replication, no standby");
    }

    #[test]
    fn standbys_are_judged_by_the_tables_clock_while_no_heartbeat_is_written() {
        // The nodes bucket stopped taking writes at `stopped` (its leader
        // died with node 7's machine); node 5 had died long before.
        let stopped = 100_000;
        let nodes = [
            node(1, 1, stopped - 150),
            node(3, 1, stopped),
            node(5, 1, stopped - NODE_TIMEOUT_MS - 1),
            node(7, 1, stopped - 100),
        ];
        assert_eq!(table_now(&nodes, stopped + 30_000), stopped);
        assert_eq!(
            table_now(&nodes, stopped - 10),
            stopped - 10,
            "never ahead of now"
        );
        assert_eq!(table_now(&[], 42), 42);
        // 30 s later by the wall clock, 1 and 3 still stand by for 7; 5
        // does not.
        let later = stopped + 30_000;
        assert_eq!(standbys(7, &nodes, 3, later, NODE_TIMEOUT_MS), [1, 3]);
        assert_eq!(standbys(3, &nodes, 3, later, NODE_TIMEOUT_MS), [7, 1]);
        // So the first standby takes 7's expired lease.
        let leases = vec![lease(7, later - 1, 9)];
        let got = decide(&Round {
            now_ms: later,
            me: 1,
            nodes: &nodes,
            leases: &leases,
            held: &[false],
            may_claim: true,
            replicas: 2,
            node_timeout_ms: NODE_TIMEOUT_MS,
            unchanged_ms: &[NODE_TIMEOUT_MS],
            lease_ms: NODE_TIMEOUT_MS,
            remembered: &[],
        });
        assert!(
            got.contains(&Action::Take {
                shard: 0,
                revision: 9,
                generation: 2
            }),
            "{got:?}"
        );
    }

    #[test]
    fn an_expired_replicated_lease_goes_to_its_first_standby_once_seen_unchanged() {
        let now = 100_000;
        let nodes = [
            node(1, 1, now - NODE_TIMEOUT_MS - 1),
            node(2, 1, now),
            node(3, 1, now),
        ];
        let leases = vec![lease(1, now - 1, 9), lease(2, now + 1_000, 4)];
        let round = |me, replicas, unchanged: &[u64], leases: &[Option<Lease>]| {
            decide(&Round {
                now_ms: now,
                me,
                nodes: &nodes,
                leases,
                held: &[false; 2],
                may_claim: true,
                replicas,
                node_timeout_ms: NODE_TIMEOUT_MS,
                unchanged_ms: unchanged,
                lease_ms: 1_000,
                remembered: &[],
            })
        };
        let take = Action::Take {
            shard: 0,
            revision: 9,
            generation: 2,
        };
        // Node 2 is the first standby of node 1's shard 0.
        assert!(round(2, 3, &[1_000, 1_000], &leases).contains(&take));
        assert!(
            !round(3, 3, &[1_000, 1_000], &leases).contains(&take),
            "the second waits"
        );
        // Read unchanged for less than a lease (NATS was out of reach):
        // the owner may have renewed meanwhile.
        assert!(!round(2, 3, &[999, 1_000], &leases).contains(&take));
        // Without replication a lease is never taken (rule 4).
        assert!(!round(2, 1, &[1_000, 1_000], &leases).contains(&take));
        // A live lease is not taken, however long unchanged.
        let live = vec![lease(1, now + 1, 9), lease(2, now + 1_000, 4)];
        assert!(!round(2, 3, &[60_000, 60_000], &live).contains(&take));
    }

    #[test]
    fn timing_derives_from_the_lease() {
        assert_eq!(
            Timing::default(),
            Timing {
                lease_ms: LEASE_MS,
                round_ms: ROUND_MS,
                fence_ms: FENCE_MS,
                node_timeout_ms: NODE_TIMEOUT_MS
            }
        );
        let t = Timing::from_lease(1_000);
        assert_eq!((t.round_ms, t.fence_ms), (200, 600));
        assert!(t.fence_ms + t.round_ms < t.lease_ms);
        assert_eq!(Timing::from_lease(1).lease_ms, LEASE_MS_MIN);
    }

    #[test]
    fn leftovers_are_claimed_once_the_others_have_their_share() {
        let nodes = [node(1, 1, 0), node(2, 1, 0)];
        let mut leases = vec![None; 4];
        leases[0] = lease(2, 99, 1);
        leases[1] = lease(2, 99, 2);
        leases[2] = lease(1, 99, 3);
        let got = decide(&Round {
            now_ms: 10,
            me: 1,
            nodes: &nodes,
            leases: &leases,
            held: &[false, false, true, false],
            may_claim: true,
            replicas: 1,
            node_timeout_ms: NODE_TIMEOUT_MS,
            unchanged_ms: &[],
            lease_ms: LEASE_MS,
            remembered: &[],
        });
        assert!(got.contains(&Action::Create {
            shard: 3,
            generation: 1
        }));
    }

    #[test]
    fn a_held_shard_leased_to_another_node_is_dropped() {
        let nodes = [node(1, 1, 0), node(2, 1, 0)];
        let leases = vec![lease(2, 99, 1), None];
        let got = decide(&Round {
            now_ms: 10,
            me: 1,
            nodes: &nodes,
            leases: &leases,
            held: &[true, true],
            may_claim: false,
            replicas: 1,
            node_timeout_ms: NODE_TIMEOUT_MS,
            unchanged_ms: &[],
            lease_ms: LEASE_MS,
            remembered: &[],
        });
        assert_eq!(got, [Action::Drop { shard: 0 }, Action::Drop { shard: 1 }]);
    }

    #[test]
    fn a_vanished_lease_stays_with_the_owner_last_seen() {
        let nodes = [node(1, 1, 0), node(2, 1, 0)];
        // The leases bucket came back empty: nothing read.
        let leases = vec![None; 4];
        let remembered = [
            Some(LeaseRecord {
                owner: 1,
                expires_ms: 5,
                generation: 3,
            }),
            Some(LeaseRecord {
                owner: 2,
                expires_ms: 5,
                generation: 1,
            }),
            None,
        ];
        let got = decide(&Round {
            now_ms: 10,
            me: 1,
            nodes: &nodes,
            leases: &leases,
            held: &[true, false, false, false],
            may_claim: false,
            replicas: 1,
            node_timeout_ms: NODE_TIMEOUT_MS,
            unchanged_ms: &[],
            lease_ms: LEASE_MS,
            remembered: &remembered,
        });
        // Its own shard is created again at once, a generation on.
        assert_eq!(
            got,
            [Action::Create {
                shard: 0,
                generation: 4
            }]
        );
        // Once it may claim, node 2's shard 1 is still node 2's: of the
        // two unremembered shards, node 1 takes its share (two of four,
        // shard 0 already counted).
        let got = decide(&Round {
            now_ms: 10,
            me: 1,
            nodes: &nodes,
            leases: &leases,
            held: &[true, false, false, false],
            may_claim: true,
            replicas: 1,
            node_timeout_ms: NODE_TIMEOUT_MS,
            unchanged_ms: &[],
            lease_ms: LEASE_MS,
            remembered: &remembered,
        });
        assert!(
            !got.iter()
                .any(|a| matches!(a, Action::Create { shard: 1, .. })),
            "{got:?}"
        );
        let created: Vec<u32> = got
            .iter()
            .filter_map(|a| match a {
                Action::Create { shard, .. } => Some(*shard),
                _ => None,
            })
            .collect();
        assert_eq!(created.len(), 2, "{got:?}");
        assert!(created.contains(&0), "{got:?}");
        // Node 2, holding shard 1 when its lease vanished, creates it again.
        let got = decide(&Round {
            now_ms: 10,
            me: 2,
            nodes: &nodes,
            leases: &leases,
            held: &[false, true, false, false],
            may_claim: false,
            replicas: 1,
            node_timeout_ms: NODE_TIMEOUT_MS,
            unchanged_ms: &[],
            lease_ms: LEASE_MS,
            remembered: &remembered,
        });
        assert_eq!(
            got,
            [Action::Create {
                shard: 1,
                generation: 2
            }]
        );
    }

    #[test]
    fn the_map_names_owners_and_versions_grow_with_owner_changes() {
        let nodes = [node(1, 2, 1_000), node(2, 1, 0)];
        let mut leases = vec![lease(1, 4_000, 1), None, lease(2, 500, 2)];
        let map = build_map(NODE_TIMEOUT_MS + 500, 1, &nodes, &leases);
        assert_eq!(map.version, 2);
        assert_eq!(map.nodes.len(), 2);
        assert_eq!(map.nodes[0].state(), Ok(NodeState::Alive));
        assert_eq!(map.nodes[1].state(), Ok(NodeState::Stale));
        assert_eq!(map.nodes[0].shards_owned.get(), 1);
        assert_eq!(map.shards[1].owner.get(), wire::NO_NODE);
        assert_eq!(map.owners[2].map(|o| o.0), Some(2));
        assert_eq!(map.shards[2].lease_remaining_ms.get(), 0);
        let forced = forced_lease(1, leases[2].as_ref().map(|l| &l.record), 9);
        assert_eq!(
            (forced.owner, forced.generation, forced.expires_ms),
            (1, 2, 9)
        );
        leases[2] = Some(Lease {
            record: forced,
            revision: 5,
        });
        assert!(map_version(&leases) > map.version);
    }
}
