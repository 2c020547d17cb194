//! What the engine cores and the admin endpoint see of the cluster: a
//! bitmap of the shards this node serves (one atomic load per request),
//! and the latest cluster map for `WrongNode` answers and map requests.
//!
//! Only the cluster agent writes. It sets a shard's bit after a successful
//! write of its lease, with a "serve until" deadline: the start of that
//! write plus [`super::plan::FENCE_MS`] on [`boottime_ns`]'s clock. The
//! cores check both (`bit set && now < deadline`, [`ClusterView::serves_at`])
//! with a clock read of their own, so a shard whose lease could have expired
//! is refused even when the agent's thread has not run since (a process
//! paused by SIGSTOP, a stall, a frozen VM). A fence task also clears the
//! bits of shards past their deadline every [`FENCE_CHECK_MS`], for the
//! admin endpoint and the map.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::plan::{Map, Timing};

/// Nanoseconds on `CLOCK_BOOTTIME`: monotonic, and it keeps counting while
/// the process is stopped (SIGSTOP), descheduled or the machine suspended,
/// so a deadline on it passes in any pause the lease's wall-clock expiry
/// passes in. `u64::MAX` if the clock cannot be read (then nothing is
/// served: a deadline is never after it).
#[inline]
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the
    // call; clock_gettime writes only into it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 || ts.tv_sec < 0 || ts.tv_nsec < 0 {
        return u64::MAX;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// How often the fence task looks for leases not renewed in time.
pub const FENCE_CHECK_MS: u64 = 100;

/// The cluster state shared by the agent (writer), the cores and the admin
/// endpoint (readers).
pub struct ClusterView {
    node_id: u64,
    shard_count: u32,
    /// Bit k of word k / 64: this node serves shard k.
    owned: Box<[AtomicU64]>,
    /// Per shard: until when ([`boottime_ns`]) it may be served: the start
    /// of the last successful write of its lease plus the fence (0: not
    /// at all).
    until_ns: Box<[AtomicU64]>,
    map_version: AtomicU64,
    /// The latest map. Read on the reject path and by map requests: the
    /// lock is held only to clone an `Arc`, never across I/O.
    map: Mutex<Arc<Map>>,
    /// Lease writes (renewals and claims of own shards) that failed.
    pub renew_failures: AtomicU64,
    /// Shards the fence stopped serving because their renewals failed.
    pub fenced: AtomicU64,
    /// Whether the agent's last round reached NATS.
    pub connected: AtomicBool,
    /// The control plane's clocks (`--lease-ms`).
    timing: Timing,
    /// With `--replicas`: what this node is to each shard ([`Role`]), as
    /// the agent decides; the replication thread acts on it.
    roles: Box<[AtomicU8]>,
    /// With `--replicas`: per shard, the replication thread has applied
    /// the whole stream and fenced it, so the shard may be served
    /// (the agent sets the bit only then).
    ready: Box<[AtomicBool]>,
    replicated: AtomicBool,
    /// Per shard: when ([`boottime_ns`]) the last successful write of
    /// this node's lease on it began (0: none).
    lease_written_ns: Box<[AtomicU64]>,
    /// Wakes the agent when a shard became ready (it serves it at once
    /// instead of a round later).
    pub ready_notify: tokio::sync::Notify,
    /// Per shard: how many times this node set its copy of the shard to
    /// detach the sessions of its resting orders (`Op::DetachSessions`,
    /// journaled with its next batch as owner): it reloaded the shard, or
    /// applied another node's records to it. Each core closes its
    /// sessions that sent orders to a shard whose count moved
    /// (`SessionError(ShardTakenOver)`).
    detached: Box<[AtomicU64]>,
}

/// What a node is to a shard when the journals are replicated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Nothing: it keeps no copy.
    None,
    /// A standby: it applies the shard's stream to its copy of the book.
    Standby,
    /// It holds the lease: it serves once its copy has the whole stream.
    Owner,
}

impl std::fmt::Debug for ClusterView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterView")
            .field("node_id", &self.node_id)
            .field("shard_count", &self.shard_count)
            .field("served", &self.served())
            .field("map_version", &self.map_version())
            .finish_non_exhaustive()
    }
}

impl ClusterView {
    /// A view of `shard_count` shards, none served yet.
    pub fn new(node_id: u64, shard_count: u32) -> ClusterView {
        let words = (shard_count as usize).div_ceil(64);
        ClusterView {
            node_id,
            shard_count,
            owned: (0..words).map(|_| AtomicU64::new(0)).collect(),
            until_ns: (0..shard_count).map(|_| AtomicU64::new(0)).collect(),
            map_version: AtomicU64::new(0),
            // Every shard unowned until the agent's first round.
            map: Mutex::new(Arc::new(Map {
                me: node_id,
                shards: (0..shard_count)
                    .map(|k| wire::ClusterShard::new(k, wire::NO_NODE, 0))
                    .collect(),
                owners: vec![None; shard_count as usize],
                ..Map::default()
            })),
            renew_failures: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            timing: Timing::default(),
            roles: (0..shard_count).map(|_| AtomicU8::new(0)).collect(),
            ready: (0..shard_count).map(|_| AtomicBool::new(false)).collect(),
            replicated: AtomicBool::new(false),
            lease_written_ns: (0..shard_count).map(|_| AtomicU64::new(0)).collect(),
            ready_notify: tokio::sync::Notify::new(),
            detached: (0..shard_count).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The same view with the clocks of `timing`.
    pub fn with_timing(mut self, timing: Timing) -> ClusterView {
        self.timing = timing;
        self
    }

    /// The same view for a node that replicates its journals: a shard is
    /// served only once [`ClusterView::set_ready`] says so.
    pub fn replicated(self) -> ClusterView {
        self.replicated.store(true, Ordering::Release);
        self
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Whether journals are replicated (`--replicas` 2 or more).
    pub fn is_replicated(&self) -> bool {
        self.replicated.load(Ordering::Acquire)
    }

    /// What this node is to `shard`.
    pub fn role(&self, shard: u32) -> Role {
        match self
            .roles
            .get(shard as usize)
            .map(|r| r.load(Ordering::Acquire))
        {
            Some(1) => Role::Standby,
            Some(2) => Role::Owner,
            _ => Role::None,
        }
    }

    pub fn set_role(&self, shard: u32, role: Role) {
        if let Some(r) = self.roles.get(shard as usize) {
            r.store(
                match role {
                    Role::None => 0,
                    Role::Standby => 1,
                    Role::Owner => 2,
                },
                Ordering::Release,
            );
        }
    }

    /// Whether `shard` may be served once its lease is held: always
    /// without replication; with it, once the replication thread has
    /// caught up with its stream and fenced it.
    pub fn may_serve(&self, shard: u32) -> bool {
        !self.is_replicated()
            || self
                .ready
                .get(shard as usize)
                .is_some_and(|r| r.load(Ordering::Acquire))
    }

    /// The replication thread's word on `shard` (see [`ClusterView::may_serve`]).
    pub fn set_ready(&self, shard: u32, ready: bool) {
        if let Some(r) = self.ready.get(shard as usize) {
            r.store(ready, Ordering::Release);
        }
        if ready {
            self.ready_notify.notify_one();
        }
    }

    /// The agent wrote this node's lease of `shard` (a claim, a takeover
    /// or a renewal), in a write begun at `started_ns` ([`boottime_ns`]).
    pub fn lease_written(&self, shard: u32, started_ns: u64) {
        if let Some(w) = self.lease_written_ns.get(shard as usize) {
            w.fetch_max(started_ns, Ordering::AcqRel);
        }
    }

    /// When the last successful write of this node's lease of `shard`
    /// began ([`boottime_ns`]; 0: none): a write begun after some moment
    /// proves that the lease named this node then.
    pub fn lease_written_at(&self, shard: u32) -> u64 {
        self.lease_written_ns
            .get(shard as usize)
            .map_or(0, |w| w.load(Ordering::Acquire))
    }

    /// This node's copy of `shard` will detach the sessions of its
    /// resting orders (it reloaded the shard, or applied another node's
    /// records to it).
    pub fn sessions_detached(&self, shard: u32) {
        if let Some(d) = self.detached.get(shard as usize) {
            d.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// How many times [`ClusterView::sessions_detached`] was called for
    /// `shard`: a core compares it with the count it last saw.
    pub fn detach_count(&self, shard: u32) -> u64 {
        self.detached
            .get(shard as usize)
            .map_or(0, |d| d.load(Ordering::Acquire))
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    /// Whether this node's agent holds `shard` (its bit is set), whatever
    /// its deadline: one atomic load. The agent's own bookkeeping; the
    /// cores ask [`ClusterView::serves_at`].
    #[inline]
    pub fn holds(&self, shard: u32) -> bool {
        self.owned
            .get((shard / 64) as usize)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1u64 << (shard % 64)) != 0)
    }

    /// Whether this node may serve `shard` at `now_ns` ([`boottime_ns`]):
    /// its bit is set and its deadline has not passed. Two atomic loads.
    #[inline]
    pub fn serves_at(&self, shard: u32, now_ns: u64) -> bool {
        self.holds(shard)
            && self
                .until_ns
                .get(shard as usize)
                .is_some_and(|u| now_ns < u.load(Ordering::Acquire))
    }

    /// Whether this node may serve `shard` now (reads the clock).
    pub fn serves(&self, shard: u32) -> bool {
        self.serves_at(shard, boottime_ns())
    }

    /// Starts serving `shard` after a successful write of its lease begun
    /// at `started_ns` ([`boottime_ns`]; also each renewal): until
    /// `started_ns` + the fence ([`super::plan::FENCE_MS`] by default, [`Timing`]).
    pub fn renewed(&self, shard: u32, started_ns: u64) {
        if started_ns == u64::MAX {
            return;
        }
        if let (Some(w), Some(u)) = (
            self.owned.get((shard / 64) as usize),
            self.until_ns.get(shard as usize),
        ) {
            // With replicated journals the stream fences: a node that
            // took the shard over stored a message the old owner's next
            // publish cannot follow, so nothing more of the old owner is
            // acknowledged. The shard is served until the agent learns the
            // lease went elsewhere, not only until the fence (which a
            // JetStream leader election, 4 to 9 s, would pass for every
            // shard of every node).
            let until = if self.is_replicated() {
                u64::MAX
            } else {
                started_ns.saturating_add(self.timing.fence_ms * 1_000_000)
            };
            // The deadline before the bit: a core that sees the bit sees it.
            u.store(until, Ordering::Release);
            w.fetch_or(1u64 << (shard % 64), Ordering::AcqRel);
        }
    }

    /// Stops serving `shard`.
    pub fn stop(&self, shard: u32) {
        if let (Some(w), Some(u)) = (
            self.owned.get((shard / 64) as usize),
            self.until_ns.get(shard as usize),
        ) {
            w.fetch_and(!(1u64 << (shard % 64)), Ordering::AcqRel);
            u.store(0, Ordering::Release);
        }
    }

    /// Clears the bits of the held shards whose deadline is at or before
    /// `now_ns` ([`boottime_ns`]); returns how many it cleared.
    pub fn fence(&self, now_ns: u64) -> u32 {
        let mut stopped = 0;
        for shard in 0..self.shard_count {
            if self.holds(shard) && !self.serves_at(shard, now_ns) {
                self.stop(shard);
                stopped += 1;
            }
        }
        if stopped > 0 {
            self.fenced.fetch_add(u64::from(stopped), Ordering::Relaxed);
        }
        stopped
    }

    /// The shards served now, in order.
    pub fn served(&self) -> Vec<u32> {
        let now = boottime_ns();
        (0..self.shard_count)
            .filter(|&s| self.serves_at(s, now))
            .collect()
    }

    pub fn map_version(&self) -> u64 {
        self.map_version.load(Ordering::Acquire)
    }

    /// The latest map.
    pub fn map(&self) -> Arc<Map> {
        match self.map.lock() {
            Ok(m) => Arc::clone(&m),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Publishes a new map.
    pub fn set_map(&self, map: Map) {
        let version = map.version;
        let map = Arc::new(map);
        match self.map.lock() {
            Ok(mut m) => *m = map,
            Err(poisoned) => *poisoned.into_inner() = map,
        }
        self.map_version.store(version, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::plan::FENCE_MS;

    const FENCE_NS: u64 = FENCE_MS * 1_000_000;

    #[test]
    fn bits_follow_renewals_and_the_fence() {
        let v = ClusterView::new(7, 130);
        assert!(!v.holds(129) && !v.serves_at(129, 0));
        assert_eq!(v.map().shards.len(), 130, "every shard, unowned");
        v.renewed(129, 1_000);
        v.renewed(3, 2_000_000_000);
        assert!(v.holds(129) && v.holds(3));
        assert!(v.serves_at(129, 1_000) && v.serves_at(3, 2_000_000_000));
        assert!(
            !v.holds(130) && !v.serves_at(130, 0),
            "beyond the shard count"
        );
        assert_eq!(v.fence(1_000 + FENCE_NS - 1), 0);
        assert_eq!(v.fence(1_000 + FENCE_NS), 1);
        assert!(!v.holds(129));
        assert!(v.holds(3));
        v.stop(3);
        assert!(!v.holds(3) && !v.serves_at(3, 2_000_000_000));
        assert_eq!(v.fence(u64::MAX - 1), 0);
    }

    /// The cores' check needs no other thread: a deadline that passed
    /// refuses the shard while its bit is still set (the agent and its fence
    /// task have not run, as after a SIGSTOP).
    #[test]
    fn a_passed_deadline_refuses_without_the_fence() {
        let v = ClusterView::new(1, 4);
        let start = 5_000_000_000;
        v.renewed(2, start);
        assert!(v.serves_at(2, start));
        assert!(v.serves_at(2, start + FENCE_NS - 1));
        assert!(!v.serves_at(2, start + FENCE_NS), "the deadline itself");
        assert!(!v.serves_at(2, start + 60 * FENCE_NS), "a long pause");
        assert!(v.holds(2), "the bit is still set: only the clock refused");
        // A renewal moves the deadline on.
        v.renewed(2, start + FENCE_NS);
        assert!(v.serves_at(2, start + FENCE_NS + 1));
        // An unreadable clock serves nothing and renews nothing.
        assert!(!v.serves_at(2, u64::MAX));
        v.renewed(1, u64::MAX);
        assert!(!v.holds(1));
    }

    /// The deadline is on a clock that keeps counting while the process is
    /// stopped: CLOCK_BOOTTIME is at least CLOCK_MONOTONIC (equal but for
    /// suspend), and both advance across a sleep as wall time does.
    #[test]
    fn boottime_advances_and_is_at_least_monotonic() {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let a = boottime_ns();
        // SAFETY: `ts` is a valid, writable timespec for the call.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        assert_eq!(rc, 0);
        let mono = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        assert_ne!(a, u64::MAX);
        assert!(a + 1_000_000 >= mono, "boottime {a} monotonic {mono}");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = boottime_ns();
        assert!(b >= a + 20_000_000, "{a} -> {b}");
    }

    /// With replicated journals a held shard has no deadline (the stream
    /// fences instead), and is served only once the replication thread
    /// says its copy is complete.
    #[test]
    fn a_replicated_view_serves_ready_shards_without_a_deadline() {
        let v = ClusterView::new(1, 2).replicated();
        assert!(!v.may_serve(0), "not before the copy is ready");
        v.set_role(0, Role::Owner);
        assert_eq!(v.role(0), Role::Owner);
        v.set_ready(0, true);
        assert!(v.may_serve(0));
        v.renewed(0, 1_000);
        assert!(v.serves_at(0, 1_000 + 60 * FENCE_NS));
        assert_eq!(v.fence(u64::MAX - 1), 0);
        v.stop(0);
        assert!(!v.serves_at(0, 1_000));
        assert!(
            ClusterView::new(1, 2).may_serve(1),
            "without replication: always"
        );
    }

    /// A view served through the process's real clock.
    #[test]
    fn served_reads_the_clock() {
        let v = ClusterView::new(1, 3);
        v.renewed(0, boottime_ns());
        v.renewed(1, boottime_ns().saturating_sub(FENCE_NS + 1));
        assert_eq!(v.served(), [0]);
        assert!(v.serves(0) && !v.serves(1) && !v.serves(2));
    }
}
