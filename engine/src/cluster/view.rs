//! What the engine cores and the admin endpoint see of the cluster: a
//! bitmap of the shards this node serves (one atomic load per request),
//! and the latest cluster map for `WrongNode` answers and map requests.
//!
//! Only the cluster agent writes. It sets a shard's bit after a successful
//! write of its lease and clears it [`super::plan::FENCE_MS`] after the last
//! successful renewal at the latest (a fence task checks every
//! [`FENCE_CHECK_MS`]), so a core never serves a shard whose lease could
//! have expired.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::plan::Map;

/// How often the fence task looks for leases not renewed in time.
pub const FENCE_CHECK_MS: u64 = 100;

/// The cluster state shared by the agent (writer), the cores and the admin
/// endpoint (readers).
pub struct ClusterView {
    node_id: u64,
    shard_count: u32,
    /// Bit k of word k / 64: this node serves shard k.
    owned: Box<[AtomicU64]>,
    /// Per shard: the monotonic ms of the last successful write of its lease
    /// (0: none); the fence clears the bit [`super::plan::FENCE_MS`] after it.
    renewed_ms: Box<[AtomicU64]>,
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
            renewed_ms: (0..shard_count).map(|_| AtomicU64::new(0)).collect(),
            map_version: AtomicU64::new(0),
            map: Mutex::new(Arc::new(Map {
                me: node_id,
                ..Map::default()
            })),
            renew_failures: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            connected: AtomicBool::new(false),
        }
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    /// Whether this node serves `shard` now: one atomic load.
    #[inline]
    pub fn serves(&self, shard: u32) -> bool {
        self.owned
            .get((shard / 64) as usize)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1u64 << (shard % 64)) != 0)
    }

    /// Starts serving `shard` after a successful write of its lease at
    /// monotonic `now_ms` (also each renewal).
    pub fn renewed(&self, shard: u32, now_ms: u64) {
        if let (Some(w), Some(r)) = (
            self.owned.get((shard / 64) as usize),
            self.renewed_ms.get(shard as usize),
        ) {
            r.store(now_ms.max(1), Ordering::Release);
            w.fetch_or(1u64 << (shard % 64), Ordering::AcqRel);
        }
    }

    /// Stops serving `shard`.
    pub fn stop(&self, shard: u32) {
        if let (Some(w), Some(r)) = (
            self.owned.get((shard / 64) as usize),
            self.renewed_ms.get(shard as usize),
        ) {
            w.fetch_and(!(1u64 << (shard % 64)), Ordering::AcqRel);
            r.store(0, Ordering::Release);
        }
    }

    /// Stops serving every shard whose last renewal is `fence_ms` or more
    /// before monotonic `now_ms`; returns how many it stopped.
    pub fn fence(&self, now_ms: u64, fence_ms: u64) -> u32 {
        let mut stopped = 0;
        for shard in 0..self.shard_count {
            let at = self.renewed_ms[shard as usize].load(Ordering::Acquire);
            if at != 0 && now_ms.saturating_sub(at) >= fence_ms && self.serves(shard) {
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
        (0..self.shard_count).filter(|&s| self.serves(s)).collect()
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

    #[test]
    fn bits_follow_renewals_and_the_fence() {
        let v = ClusterView::new(7, 130);
        assert!(!v.serves(129));
        v.renewed(129, 1_000);
        v.renewed(3, 2_000);
        assert!(v.serves(129) && v.serves(3));
        assert!(!v.serves(130), "beyond the shard count");
        assert_eq!(v.served(), [3, 129]);
        assert_eq!(v.fence(3_999, 3_000), 0);
        assert_eq!(v.fence(4_000, 3_000), 1);
        assert!(!v.serves(129));
        assert!(v.serves(3));
        v.stop(3);
        assert!(v.served().is_empty());
        assert_eq!(v.fence(100_000, 3_000), 0);
    }
}
