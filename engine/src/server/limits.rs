//! Every limit and timeout of the server in one place, with the relations
//! between them asserted at compile time, and the one validation of a
//! [`ServerConfig`] (the command line only parses).
//!
//! Limits of the book live with the book ([`crate::book::ShardConfig`]),
//! of the protocol with the wire crate, of the session id in
//! [`crate::session_id`].

use super::{EngineKind, ServerConfig};

/// How often housekeeping (idle timeouts, heartbeats, slow consumers) runs,
/// and the longest a blocked wait lasts.
pub const TICK_NS: u64 = 50_000_000;
/// The shortest wait of a blocked core (timer granularity).
pub const WAIT_MIN_NS: u64 = 1_000_000;
/// Iterations without work before `--poll adaptive` goes to sleep.
pub const ADAPTIVE_SPINS: u32 = 2_000;
/// How often a core publishes its counter arrays (by reason, by latency
/// bucket, by shard) at most; its scalar counters go every iteration.
pub const ARRAYS_PUBLISH_NS: u64 = 1_000_000;
/// How long a closing connection may take to flush before it is cut.
pub const CLOSE_FLUSH_NS: u64 = 2_000_000_000;
/// How long a core may take to leave its loop once told to exit (open
/// connections get this long to flush their last SessionError).
pub const EXIT_FLUSH_NS: u64 = 2 * CLOSE_FLUSH_NS;
/// How long a graceful stop waits for the cores to drain.
pub const DRAIN_TIMEOUT_MS: u64 = 10_000;

/// Submission queue entries of each core's ring.
pub const SQ_ENTRIES: u32 = 4096;
/// Completion queue entries: multishot receives and accepts complete many
/// times per submission.
pub const CQ_ENTRIES: u32 = 4 * SQ_ENTRIES;

/// Most commands a shard's queue holds while its journal write is in
/// flight; beyond it the core stops reading connections (backpressure).
pub const PENDING_JOURNAL_MAX: usize = 1 << 16;

/// Most record bytes one journal write carries (bounded below the segment
/// size): 4 MiB is about 55,000 new orders, far more than one iteration brings.
pub const WRITE_BYTES_MAX: usize = 4 << 20;
/// Ask for the next journal segment once the current one is this full (percent).
pub const NEXT_SEGMENT_AT_PERCENT: u64 = 50;
/// How long to wait before asking again for a segment that failed.
pub const SEGMENT_RETRY_NS: u64 = 1_000_000_000;
/// With `--replicas`: once a shard's oldest batch has waited this long for
/// JetStream (no quorum, NATS away), its new commands are refused
/// `NotDurable` instead of queuing in memory without bound.
pub const REPL_STALL_NS: u64 = 2_000_000_000;
/// Snapshots kept per shard: two, so recovery can fall back one.
pub const SNAPSHOTS_KEPT: usize = 2;

/// The shortest `--slow-consumer-ms`: below it, ordinary scheduling
/// hiccups would cut healthy clients off.
pub const SLOW_CONSUMER_MS_MIN: u64 = 100;
/// The smallest core-to-core ring a configuration may ask for.
pub const RING_CAPACITY_FLOOR: usize = 64;

/// A Hello may ask for a heartbeat interval in this range (clamped), and
/// `--heartbeat-ms` must be in it.
pub const HEARTBEAT_MS_MIN: u32 = wire::HEARTBEAT_INTERVAL_MIN_MS;
pub const HEARTBEAT_MS_MAX: u32 = wire::HEARTBEAT_INTERVAL_MAX_MS;

/// Initial capacity of a connection's output and input buffers; they grow
/// to the output cut-off (`--out-max-bytes`) and the frame limit.
pub const CONN_BUFFER_BYTES: usize = 64 * 1024;
/// Accept backlog per core (the kernel caps it at net.core.somaxconn).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Core-to-core ring capacity bounds, in messages ([`ring_capacity_for`]).
pub const RING_CAPACITY_MIN: usize = 4096;
pub const RING_CAPACITY_MAX: usize = 1 << 16;
/// The full mesh's messages in total that the default capacity aims at.
const MESH_MESSAGES: usize = 1 << 20;

/// Defaults of the output limits: stop reading a connection at the high
/// water mark, cut it off at the maximum.
pub const OUT_HIGH_WATER_BYTES: usize = 4 << 20;
pub const OUT_MAX_BYTES: usize = 64 << 20;
/// Default market-data limit: a subscriber whose unsent output passes it
/// when a record is to be added is cut off from market data (PROTOCOL.md §8.9).
pub const MD_MAX_QUEUE_BYTES: usize = 4 << 20;
/// The smallest market-data limit: room for a few frames.
pub const MD_MAX_QUEUE_MIN: usize = 64 << 10;
/// Records each core's ring to the NATS bridge holds.
pub const MD_NATS_RING: usize = 1 << 16;

/// Who may connect and log on (README "Accounts, limits and security").
/// A wrong password is answered this long after the Hello (no fast
/// guessing); the auth thread schedules the answer, it does not sleep.
pub const AUTH_FAILURE_DELAY_NS: u64 = 1_000_000_000;
/// The window failed logons per source address are counted in.
pub const AUTH_FAILURE_WINDOW_NS: u64 = 60_000_000_000;
/// Default of `--logon-failures-per-minute`: failed logons from one
/// address per window; more are refused at once, without a password check.
pub const AUTH_FAILURES_PER_WINDOW: u32 = 10;
/// Logons waiting for the auth thread over all cores; past it a logon is
/// refused at once ("busy"), so a flood cannot queue without bound.
pub const AUTH_PENDING_MAX: usize = 4096;
/// A logon that waited this long for its password check is refused at
/// once ("busy"), unchecked: under a flood the auth thread spends its time
/// on logons whose clients still wait, not on a backlog of minutes.
pub const AUTH_WAIT_MAX_NS: u64 = 2_000_000_000;
/// Source addresses the failure limiter tracks at once (bounded memory).
pub const AUTH_ADDRESSES_MAX: usize = 65_536;
/// Default of `--logon-timeout-ms`: the Hello must arrive this soon after the accept.
pub const LOGON_TIMEOUT_MS: u64 = 5_000;
/// Default of `--frame-timeout-ms`: a frame whose first byte arrived must
/// be complete this soon (dripping bytes does not hold a connection).
pub const FRAME_TIMEOUT_MS: u64 = 5_000;
/// Default of `--input-memory-per-core`: the input buffers (partial
/// frames) of all connections of one core, in bytes of capacity. A
/// connection whose buffer grows past it is closed.
pub const INPUT_MEMORY_PER_CORE: usize = 256 << 20;
/// Default of `--max-frame-bytes`: the largest client frame, and so the
/// most partial-frame bytes a connection holds (a batch of 2,000
/// NewOrders is 64,008 bytes).
pub const MAX_FRAME_BYTES_DEFAULT: u32 = 64 << 10;
/// Default of `--max-sessions-per-account` (an account's `max_sessions=`
/// overrides it).
pub const MAX_SESSIONS_PER_ACCOUNT: u32 = 64;
/// Default of `--max-connections-per-address`.
pub const MAX_CONNECTIONS_PER_ADDRESS: u32 = 256;

const _: () = assert!(CQ_ENTRIES >= SQ_ENTRIES);
const _: () = assert!(WAIT_MIN_NS < TICK_NS);
// Housekeeping must run several times within a close's flush window.
const _: () = assert!(CLOSE_FLUSH_NS >= 10 * TICK_NS);
const _: () = assert!(EXIT_FLUSH_NS > CLOSE_FLUSH_NS);
// A drain must outlast a close flush, or shutdown would cut flushes short.
const _: () = assert!(DRAIN_TIMEOUT_MS * 1_000_000 > EXIT_FLUSH_NS);
const _: () = assert!(HEARTBEAT_MS_MIN as u64 * 1_000_000 >= 2 * TICK_NS);
const _: () = assert!(HEARTBEAT_MS_MIN < HEARTBEAT_MS_MAX);
const _: () = assert!(OUT_HIGH_WATER_BYTES <= OUT_MAX_BYTES);
// A batch of 2,000 NewOrders (header + 2,000 * 32 bytes) fits the default frame.
const _: () = assert!(8 + 2_000 * 32 <= MAX_FRAME_BYTES_DEFAULT as usize);
// Housekeeping notices a missed deadline within a tick or two.
const _: () = assert!(LOGON_TIMEOUT_MS * 1_000_000 >= 10 * TICK_NS);
const _: () = assert!(FRAME_TIMEOUT_MS * 1_000_000 >= 10 * TICK_NS);
const _: () = assert!(AUTH_FAILURE_DELAY_NS < AUTH_FAILURE_WINDOW_NS);
// A logon refused as stale still gets its answer before the client's logon
// deadline would have passed.
const _: () = assert!(AUTH_WAIT_MAX_NS < LOGON_TIMEOUT_MS * 1_000_000);
const _: () = assert!(MD_MAX_QUEUE_MIN <= MD_MAX_QUEUE_BYTES && MD_MAX_QUEUE_BYTES < OUT_MAX_BYTES);

const _: () = assert!(RING_CAPACITY_MIN.is_power_of_two() && RING_CAPACITY_MAX.is_power_of_two());
const _: () = assert!(RING_CAPACITY_MIN <= RING_CAPACITY_MAX);
// A journal queue must hold at least one full batch (`--batch` is a u16 range).
const _: () = assert!(PENDING_JOURNAL_MAX > u16::MAX as usize);
const _: () = assert!(NEXT_SEGMENT_AT_PERCENT > 0 && NEXT_SEGMENT_AT_PERCENT < 100);
const _: () = assert!(SNAPSHOTS_KEPT >= 1);
const _: () = assert!(RING_CAPACITY_FLOOR <= RING_CAPACITY_MIN);
// A core checks for a stuck send on its housekeeping tick.
const _: () = assert!(SLOW_CONSUMER_MS_MIN * 1_000_000 >= TICK_NS);

/// Default ring capacity: a full mesh has n*(n-1) rings, so shrink each as
/// cores grow (64K messages each on 2 cores, 16K on 40), keeping the mesh
/// within about a gigabyte.
pub fn ring_capacity_for(cores: usize) -> usize {
    MESH_MESSAGES
        .checked_div(cores.max(1) * 2)
        .unwrap_or(RING_CAPACITY_MAX)
        .next_power_of_two()
        .clamp(RING_CAPACITY_MIN, RING_CAPACITY_MAX)
}

/// The most replicas a stream may have (JetStream's own limit).
pub const REPLICAS_MAX: usize = 5;

/// Checks a configuration once, before anything starts. Each error names
/// the flag and what to do.
pub fn validate(cfg: &ServerConfig) -> Result<(), String> {
    let cores = cfg.cpus.len();
    if cores == 0 {
        return Err("no cores to run on".into());
    }
    if cores > crate::session_id::CORES_MAX {
        return Err(format!(
            "{cores} cores: a session id names at most {} cores",
            crate::session_id::CORES_MAX
        ));
    }
    if (cfg.shards as usize) < cores {
        return Err(format!(
            "--shards {} is below the number of cores ({cores}); give at least one shard per core",
            cfg.shards
        ));
    }
    if cfg.symbols.is_empty() {
        return Err("at least one symbol is needed".into());
    }
    if let Some(r) = &cfg.replicate {
        if !(2..=REPLICAS_MAX).contains(&r.replicas) {
            return Err(format!(
                "--replicas {} is out of range; use 1 (no replication) to {REPLICAS_MAX}",
                r.replicas
            ));
        }
        if cfg.journal.is_none() || cfg.engine == EngineKind::Null {
            return Err(
                "--replicas needs the journal (--journal DIR) and the matching engine: \
                 the journal's batches are what is replicated"
                    .into(),
            );
        }
    }
    if !(HEARTBEAT_MS_MIN..=HEARTBEAT_MS_MAX).contains(&cfg.heartbeat_ms) {
        return Err(format!(
            "--heartbeat-ms {} is out of range; use {HEARTBEAT_MS_MIN}..={HEARTBEAT_MS_MAX}",
            cfg.heartbeat_ms
        ));
    }
    if cfg.idle_timeout_factor == 0 {
        return Err("the idle timeout factor must be at least 1".into());
    }
    if cfg.batch == 0 || cfg.batch > usize::from(u16::MAX) {
        return Err(format!(
            "--batch {} is out of range; use 1..=65535",
            cfg.batch
        ));
    }
    if cfg.out_high_water_bytes > cfg.out_max_bytes {
        return Err(format!(
            "the output high water mark ({} bytes) is above the output cut-off ({} bytes)",
            cfg.out_high_water_bytes, cfg.out_max_bytes
        ));
    }
    // At or above the output cut-off it never acts (the slow-consumer
    // disconnect comes first): allowed, as a way to turn it off.
    if cfg.md_max_queue < MD_MAX_QUEUE_MIN {
        return Err(format!(
            "--md-max-queue {} is below {MD_MAX_QUEUE_MIN} bytes",
            cfg.md_max_queue
        ));
    }
    if cfg.send_chunk_bytes == 0 {
        return Err("the send chunk must be at least one byte".into());
    }
    if cfg.ring_capacity < RING_CAPACITY_FLOOR {
        return Err(format!(
            "--ring-capacity {} is below {RING_CAPACITY_FLOOR} messages",
            cfg.ring_capacity
        ));
    }
    if cfg.slow_consumer_ms < SLOW_CONSUMER_MS_MIN {
        return Err(format!(
            "--slow-consumer-ms {} is below {SLOW_CONSUMER_MS_MIN}",
            cfg.slow_consumer_ms
        ));
    }
    if cfg.max_connections == 0 {
        return Err("--max-connections must be at least 1".into());
    }
    if cfg.accounts.is_some() && cfg.auth_token.is_some() {
        return Err(
            "--auth-token and --accounts exclude each other: with accounts the Hello's credentials carry each account's password"
                .into(),
        );
    }
    if cfg.max_connections_per_address == 0 {
        return Err("--max-connections-per-address must be at least 1".into());
    }
    if cfg.max_sessions_per_account == 0 {
        return Err("--max-sessions-per-account must be at least 1".into());
    }
    if cfg.logon_timeout_ms * 1_000_000 < 2 * TICK_NS
        || cfg.frame_timeout_ms * 1_000_000 < 2 * TICK_NS
    {
        return Err(format!(
            "--logon-timeout-ms and --frame-timeout-ms must be at least {} ms",
            2 * TICK_NS / 1_000_000
        ));
    }
    if cfg.input_memory_per_core < cfg.max_frame_bytes as usize {
        return Err(format!(
            "--input-memory-per-core must be at least --max-frame-bytes ({} bytes): a frame split across receives must fit",
            cfg.max_frame_bytes
        ));
    }
    cfg.shard.validate().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ServerConfig {
        ServerConfig::new("127.0.0.1:0".parse().unwrap(), vec![0, 1], vec!["A".into()])
    }

    #[test]
    fn the_defaults_are_valid() {
        validate(&cfg()).unwrap();
    }

    #[test]
    fn each_bad_value_is_named() {
        type Change = fn(&mut ServerConfig);
        let cases: [(&str, Change); 12] = [
            ("--md-max-queue 1", |c| c.md_max_queue = 1),
            ("--max-connections-per-address", |c| {
                c.max_connections_per_address = 0
            }),
            ("--max-sessions-per-account", |c| {
                c.max_sessions_per_account = 0
            }),
            ("--frame-timeout-ms", |c| c.frame_timeout_ms = 1),
            ("--input-memory-per-core", |c| c.input_memory_per_core = 1),
            ("exclude each other", |c| {
                c.auth_token = Some(b"t".to_vec());
                c.accounts = Some(Default::default());
            }),
            ("--shards 1", |c| c.shards = 1),
            ("--heartbeat-ms 50", |c| c.heartbeat_ms = 50),
            ("--batch 0", |c| c.batch = 0),
            ("high water", |c| {
                c.out_high_water_bytes = c.out_max_bytes + 1
            }),
            ("no cores", |c| c.cpus.clear()),
            ("at least one symbol", |c| c.symbols.clear()),
        ];
        for (words, change) in cases {
            let mut c = cfg();
            change(&mut c);
            let e = validate(&c).unwrap_err();
            assert!(e.contains(words), "{words}: {e}");
        }
    }

    #[test]
    fn ring_capacity_shrinks_with_cores_within_bounds() {
        assert_eq!(ring_capacity_for(2), RING_CAPACITY_MAX);
        assert_eq!(ring_capacity_for(40), 16384);
        assert_eq!(ring_capacity_for(1000), RING_CAPACITY_MIN);
    }
}
