//! Per-core counters. Each core counts in plain integers on its own stack
//! and publishes them here with relaxed stores (the scalars once per loop
//! iteration, the per-reason, per-bucket and per-shard arrays at most once
//! a millisecond), so no order ever touches a shared atomic and no core
//! takes a lock; the admin thread and the stats line read and sum them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Counters a core keeps locally and publishes once per loop iteration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Order messages (new, cancel, replace, query) received from clients.
    pub orders_in: u64,
    /// Commands applied to this core's shards.
    pub commands: u64,
    /// Trades (one per maker/taker pair) made by this core's shards.
    pub trades: u64,
    /// Reports written to this core's connections.
    pub reports_out: u64,
    /// Rejects produced (by shards or by the session layer).
    pub rejects: u64,
    /// Reports for sessions that had disconnected, or for none (orders a
    /// new shard owner detached), so nothing to deliver to.
    pub reports_orphaned: u64,
    /// Connections accepted.
    pub conns_accepted: u64,
    /// Connections closed because of a session error, idle or slow consumer.
    pub conns_errored: u64,
    /// Bytes received and sent.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Ring messages pushed to other cores and popped from them.
    pub ring_pushed: u64,
    /// Ring messages popped.
    pub ring_popped: u64,
    /// Loop iterations.
    pub iterations: u64,
    /// Nanoseconds spent outside the wait for completions.
    pub busy_ns: u64,
    /// Journal record bytes made durable.
    pub journal_bytes: u64,
    /// Journal writes completed (each with its fdatasync under --fsync batch).
    pub journal_writes: u64,
    /// Sum of their latencies, submission to completion.
    pub journal_write_ns: u64,
    /// Commands rejected because the journal could not take them.
    pub journal_rejects: u64,
    /// With `--replicas`: batches JetStream stored (then applied), and the
    /// sum of their waits, local durability to JetStream's acknowledgement.
    pub replicated_batches: u64,
    pub replication_ns: u64,
    /// Snapshots taken.
    pub snapshots: u64,
    /// Time matching stood still serializing them.
    pub snapshot_ns: u64,
    /// Market-data messages written to subscribers.
    pub md_messages: u64,
    /// Subscribe requests (an all-symbols one counts once).
    pub md_subscribes: u64,
    /// Subscribers cut off for falling behind.
    pub md_cut_offs: u64,
    /// Snapshots served, their rows, and the time matching stood still for them.
    pub md_snapshots: u64,
    pub md_snapshot_rows: u64,
    pub md_snapshot_ns: u64,
    /// Trades and tops the NATS bridge's ring had no room for.
    pub md_nats_dropped: u64,
    /// States that cannot happen (an unknown completion, a placement miss):
    /// counted and logged at exit instead of crashing a release build.
    pub internal_errors: u64,
    /// Rejects by reason, indexed by the reason's wire value.
    pub rejects_by_reason: [u64; REJECT_REASONS],
    /// Closed connections by reason, indexed by the SessionError code's
    /// wire value; 0 is a close without a SessionError (the peer left, or
    /// the connection failed).
    pub closes_by_reason: [u64; CLOSE_REASONS],
    /// Journal writes (with their fdatasync) by latency: bucket i counts
    /// writes up to `JOURNAL_WRITE_BUCKETS_S[i]`, the last one the rest.
    pub journal_write_hist: [u64; JOURNAL_WRITE_BUCKETS_S.len() + 1],
}

/// Reject reasons a counter array holds (wire values 1..=20, 0 unused).
pub const REJECT_REASONS: usize = 21;
/// Close reasons a counter array holds (SessionError codes 1..=18, 0: none).
pub const CLOSE_REASONS: usize = 19;
/// Upper bounds of the journal write latency buckets, in seconds.
pub const JOURNAL_WRITE_BUCKETS_S: [f64; 14] = [
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0,
];

const _: () = assert!(wire::RejectReason::ALL.len() < REJECT_REASONS);
const _: () = assert!(wire::SessionErrorCode::ALL.len() < CLOSE_REASONS);

impl Counters {
    /// Counts a reject with its reason's wire value.
    #[inline]
    pub fn reject(&mut self, reason: u16) {
        self.rejects += 1;
        self.rejects_by_reason[usize::from(reason).min(REJECT_REASONS - 1)] += 1;
    }

    /// Counts a closed connection (`code`: the SessionError's wire value, 0 for none).
    pub fn closed(&mut self, code: u16) {
        self.closes_by_reason[usize::from(code).min(CLOSE_REASONS - 1)] += 1;
    }

    /// Counts a batch JetStream stored `ns` after it was durable here.
    pub fn replication(&mut self, ns: u64) {
        self.replicated_batches += 1;
        self.replication_ns += ns;
    }

    /// Counts a completed journal write that took `ns`.
    pub fn journal_write(&mut self, ns: u64) {
        self.journal_writes += 1;
        self.journal_write_ns += ns;
        let secs = ns as f64 / 1e9;
        let bucket = JOURNAL_WRITE_BUCKETS_S
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(JOURNAL_WRITE_BUCKETS_S.len());
        self.journal_write_hist[bucket] += 1;
    }
}

macro_rules! published {
    (scalars: $($field:ident),+ ; arrays: $($array:ident),+ $(,)?) => {
        /// A core's published counters and state; its own cache lines.
        #[repr(align(128))]
        #[derive(Debug)]
        pub struct CoreStats {
            $( $field: AtomicU64, )+
            $( $array: Box<[AtomicU64]>, )+
            /// Per local shard: commands applied and trades made.
            shard_commands: Box<[AtomicU64]>,
            shard_trades: Box<[AtomicU64]>,
            /// Live connections.
            pub conns: AtomicU64,
            /// Messages staged for other cores but not yet in their rings.
            pub staged: AtomicU64,
            /// The most messages one of this core's outgoing rings held.
            pub ring_high_water: AtomicU64,
            /// Monotonic time (`monotonic_ns`) of the core's last loop iteration.
            pub loop_ns: AtomicU64,
            /// A local shard's journal refuses writes (full disk, failing writes).
            pub journal_unavailable: AtomicBool,
            /// True when the core saw no pending work at the end of its last iteration.
            pub idle: AtomicBool,
            /// True once the core stopped reading connections for shutdown.
            pub draining: AtomicBool,
        }

        impl CoreStats {
            /// The slot of a core with `local_shards` shards.
            pub fn new(local_shards: usize) -> CoreStats {
                let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
                let c = Counters::default();
                CoreStats {
                    $( $field: AtomicU64::new(0), )+
                    $( $array: zeros(c.$array.len()), )+
                    shard_commands: zeros(local_shards),
                    shard_trades: zeros(local_shards),
                    conns: AtomicU64::new(0),
                    staged: AtomicU64::new(0),
                    ring_high_water: AtomicU64::new(0),
                    loop_ns: AtomicU64::new(0),
                    journal_unavailable: AtomicBool::new(false),
                    idle: AtomicBool::new(false),
                    draining: AtomicBool::new(false),
                }
            }

            /// Publishes the core's scalar counters (once per loop iteration).
            pub fn publish(&self, c: &Counters) {
                $( self.$field.store(c.$field, Relaxed); )+
            }

            /// Publishes the arrays and the per-shard counters (less often).
            pub fn publish_arrays(&self, c: &Counters, shards: &[ShardCounters]) {
                $(
                    for (slot, v) in self.$array.iter().zip(c.$array.iter()) {
                        slot.store(*v, Relaxed);
                    }
                )+
                for (i, s) in shards.iter().enumerate() {
                    if let (Some(a), Some(b)) = (self.shard_commands.get(i), self.shard_trades.get(i)) {
                        a.store(s.commands, Relaxed);
                        b.store(s.trades, Relaxed);
                    }
                }
            }

            /// A snapshot of the published counters.
            pub fn load(&self) -> Counters {
                let mut c = Counters { $( $field: self.$field.load(Relaxed), )+ ..Counters::default() };
                $(
                    for (v, slot) in c.$array.iter_mut().zip(self.$array.iter()) {
                        *v = slot.load(Relaxed);
                    }
                )+
                c
            }

            /// Per local shard (in local order): commands applied and trades.
            pub fn load_shards(&self) -> Vec<ShardCounters> {
                self.shard_commands
                    .iter()
                    .zip(self.shard_trades.iter())
                    .map(|(c, t)| ShardCounters {
                        commands: c.load(Relaxed),
                        trades: t.load(Relaxed),
                    })
                    .collect()
            }
        }

        impl Counters {
            /// Field-wise sum.
            pub fn add(&mut self, o: &Counters) {
                $( self.$field += o.$field; )+
                $(
                    for (a, b) in self.$array.iter_mut().zip(o.$array.iter()) {
                        *a += b;
                    }
                )+
            }
        }
    };
}

/// One shard's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardCounters {
    /// Commands applied.
    pub commands: u64,
    /// Trades made.
    pub trades: u64,
}

published!(
    scalars: orders_in,
    commands,
    trades,
    reports_out,
    rejects,
    reports_orphaned,
    conns_accepted,
    conns_errored,
    bytes_in,
    bytes_out,
    ring_pushed,
    ring_popped,
    iterations,
    busy_ns,
    journal_bytes,
    journal_writes,
    journal_write_ns,
    journal_rejects,
    replicated_batches,
    replication_ns,
    snapshots,
    snapshot_ns,
    md_messages,
    md_subscribes,
    md_cut_offs,
    md_snapshots,
    md_snapshot_rows,
    md_snapshot_ns,
    md_nats_dropped,
    internal_errors;
    arrays: rejects_by_reason,
    closes_by_reason,
    journal_write_hist,
);

pub use tuning::units::{group as thousands, si};

/// One sample of every core, for rates and loads between two samples.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Per-core counters.
    pub cores: Vec<Counters>,
    /// Live connections summed over cores.
    pub conns: u64,
    /// Monotonic time of the sample.
    pub at_ns: u64,
}

impl Sample {
    /// Reads every core's published stats.
    pub fn take(stats: &[CoreStats], at_ns: u64) -> Sample {
        Sample {
            cores: stats.iter().map(CoreStats::load).collect(),
            conns: stats.iter().map(|s| s.conns.load(Relaxed)).sum(),
            at_ns,
        }
    }

    /// Counters summed over cores.
    pub fn total(&self) -> Counters {
        let mut t = Counters::default();
        for c in &self.cores {
            t.add(c);
        }
        t
    }
}

/// The live line: `turbo-dex  orders 15,234,112 (4.1M/s)  trades ... cores 0:71% 1:69%`.
pub fn live_line(prev: &Sample, now: &Sample, cpu_ids: &[usize]) -> String {
    let secs = (now.at_ns.saturating_sub(prev.at_ns)) as f64 / 1e9;
    let secs = if secs > 0.0 { secs } else { 1.0 };
    let (a, b) = (prev.total(), now.total());
    let rate = |x: u64, y: u64| si(y.saturating_sub(x) as f64 / secs);
    let mut line = format!(
        "turbo-dex  orders {} ({}/s)  trades {} ({}/s)  reports {}/s  conns {}  cores",
        thousands(b.orders_in),
        rate(a.orders_in, b.orders_in),
        thousands(b.trades),
        rate(a.trades, b.trades),
        rate(a.reports_out, b.reports_out),
        now.conns,
    );
    let writes = b.journal_writes.saturating_sub(a.journal_writes);
    if writes > 0 {
        let bytes = b.journal_bytes.saturating_sub(a.journal_bytes) as f64 / secs;
        let avg_us =
            b.journal_write_ns.saturating_sub(a.journal_write_ns) as f64 / writes as f64 / 1e3;
        let _ = write!(
            line,
            "  journal {}B/s {}syncs/s sync {avg_us:.0}us",
            si(bytes),
            si(writes as f64 / secs)
        );
    }
    if b.journal_rejects > 0 {
        let _ = write!(
            line,
            "  not-durable rejects {}",
            thousands(b.journal_rejects)
        );
    }
    for (i, (p, n)) in prev.cores.iter().zip(&now.cores).enumerate() {
        let busy = n.busy_ns.saturating_sub(p.busy_ns) as f64 / (secs * 1e9);
        let cpu = cpu_ids.get(i).copied().unwrap_or(i);
        let _ = write!(line, " {cpu}:{:.0}%", (busy * 100.0).min(100.0));
    }
    line
}

/// The final statistics block printed at shutdown.
pub fn final_report(total: &Counters, elapsed_secs: f64) -> String {
    let per_s = |n: u64| si(n as f64 / elapsed_secs.max(1e-9));
    format!(
        "turbo-dex final stats ({elapsed_secs:.1}s)\n\
         \x20 orders received   {} ({}/s)\n\
         \x20 commands matched  {}\n\
         \x20 trades            {} ({}/s)\n\
         \x20 reports sent      {} ({}/s)\n\
         \x20 rejects           {}\n\
         \x20 orphaned reports  {}\n\
         \x20 connections       {} accepted, {} closed on error\n\
         \x20 bytes             {} in, {} out\n\
         \x20 journal           {} bytes in {} writes ({}/s), mean write+sync {:.0} us, {} not-durable rejects\n\
         \x20 snapshots         {} ({:.1} ms matching paused in total)\n",
        thousands(total.orders_in),
        per_s(total.orders_in),
        thousands(total.commands),
        thousands(total.trades),
        per_s(total.trades),
        thousands(total.reports_out),
        per_s(total.reports_out),
        thousands(total.rejects),
        thousands(total.reports_orphaned),
        thousands(total.conns_accepted),
        thousands(total.conns_errored),
        thousands(total.bytes_in),
        thousands(total.bytes_out),
        thousands(total.journal_bytes),
        thousands(total.journal_writes),
        per_s(total.journal_writes),
        if total.journal_writes > 0 {
            total.journal_write_ns as f64 / total.journal_writes as f64 / 1e3
        } else {
            0.0
        },
        thousands(total.journal_rejects),
        thousands(total.snapshots),
        total.snapshot_ns as f64 / 1e6,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_line_shows_rates_and_per_core_load() {
        let stats = [CoreStats::new(0), CoreStats::new(0)];
        let prev = Sample::take(&stats, 0);
        stats[0].publish(&Counters {
            orders_in: 2_000_000,
            trades: 500,
            busy_ns: 710_000_000,
            ..Counters::default()
        });
        stats[1].publish(&Counters {
            orders_in: 2_000_000,
            busy_ns: 690_000_000,
            ..Counters::default()
        });
        stats[0].conns.store(8, Relaxed);
        let now = Sample::take(&stats, 1_000_000_000);
        let line = live_line(&prev, &now, &[0, 1]);
        assert!(line.contains("orders 4,000,000 (4.00M/s)"), "{line}");
        assert!(line.contains("conns 8"), "{line}");
        assert!(line.ends_with("cores 0:71% 1:69%"), "{line}");
    }
}
