//! Replicated journals (`--replicas R`, R of 2 or more): every journal
//! batch of a shard this node serves is also published to that shard's
//! JetStream stream, and its reports leave only when the local write is
//! durable *and* JetStream has acknowledged the publish (stored on a
//! quorum of the stream's R servers).
//!
//! # Streams
//!
//! | stream | subject | replicas | storage |
//! | --- | --- | --- | --- |
//! | `TURBO_DEX_SHARD_<n>` | `turbo-dex.journal.<n>` | R | file |
//!
//! A message is a run of journal records exactly as the local journal
//! writes them (`journal::encode_record`: sequence, engine time, command):
//! every batch that waited while the previous publish was in flight, up
//! to the server's `max_payload` (a batch larger than that is cut at
//! record boundaries). Its `Nats-Msg-Id` is
//! `<node>.<shard>.<first seq>.<last seq>` (node id in 16 hex digits):
//! who wrote it, and which records it carries.
//!
//! # Order
//!
//! Each publish carries `Nats-Expected-Last-Subject-Sequence`, the stream
//! sequence of the shard's last stored message, so the stream refuses it
//! unless it follows that message: records are never stored twice, out of
//! order, or after another node's. One such publish is in flight per
//! shard (streams of different shards run side by side): nats-server
//! checks the expectation against the messages it has applied, so a
//! second conditional publish sent before the first is stored is refused
//! (measured at R3 with nats-server 2.9.10 and 2.15.1: of 50 pipelined
//! publishes with consecutive expectations, 49 were refused). Throughput is not capped by
//! the round trip: the next publish carries every batch that arrived
//! meanwhile (group commit, as the local journal does). After a failure
//! (a timeout, no quorum, a leader change) the task reads the stream's
//! last message, which says through its id whose records it holds and up
//! to which sequence, and resumes after it. A last message by another
//! node means another node took the shard over (and fenced the stream:
//! `server::standby`): the batches still waiting are refused
//! ([`ReplOut::Lost`], `NotDurable`, never applied) and nothing more of
//! this node is published for the shard until it takes it back.
//!
//! The expectation is checked before the server's Raft proposal, not
//! when the proposal is applied (nats-io/nats-server#4320), so two
//! publishes in flight at once from different nodes, each conditional
//! on the same message, can both be stored: an old owner's last batch
//! after the new owner's fence. The old owner acknowledged it. The new
//! owner then finds another node's message last while it serves the
//! shard ([`overtaken`]): once a renewal of its lease begun after that
//! has succeeded (the shard is still its own, not a stale role), it
//! stops serving and takes the shard over again (reload, apply the
//! stream to its end, fence after it).
//!
//! # Snapshots and trimming
//!
//! Each snapshot a core takes of a replicated shard (`--snapshot-every`)
//! is taken once every record it covers is in the stream; it is also
//! handed here and put in the object store [`SNAPSHOT_BUCKET`] (object
//! `shard-<n>`, R replicas, metadata `covers_seq`, `digest` and `node`),
//! and once stored the stream is purged of every message before the
//! first one holding a record after the *previous* snapshot (the last
//! message always stays). So a stream holds what follows the snapshot
//! before the newest: its storage does not grow without bound, and a
//! standby that lags by less than one snapshot interval keeps reading
//! it instead of reloading. One upload per shard runs at a time; a
//! newer snapshot replaces one still waiting.
//!
//! # Never blocking matching
//!
//! The cores hand batches over bounded single-producer rings
//! ([`ReplLink`]) and take the acknowledgements back from rings; this
//! thread (`turbo-dex-repl`) runs one async-nats client on its own
//! current-thread tokio runtime, one task per shard.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::{Bytes, BytesMut};
use tokio::sync::{Notify, mpsc};

use crate::cluster::view::Role;
use crate::journal;

/// The stream of shard `shard`.
pub fn stream_name(shard: u32) -> String {
    format!("TURBO_DEX_SHARD_{shard}")
}

/// The subject shard `shard`'s journal is published on.
pub fn subject(shard: u32) -> String {
    format!("turbo-dex.journal.{shard}")
}

/// The `Nats-Msg-Id` of the records `first..=last` of `shard` by `node`.
pub fn message_id(node: u64, shard: u32, first: u64, last: u64) -> String {
    format!("{node:016x}.{shard}.{first}.{last}")
}

/// The `Nats-Msg-Id` of `node`'s fence of `shard` after record `last`,
/// conditional on stream message `after`: `<node>.<shard>.<last+1>.<last>.<after>`.
/// The stream message it follows makes it unique: a node that fences the
/// same record twice within the duplicate window (the shard went to
/// another node and came back with no record in between) would otherwise
/// send an id JetStream remembers, and the fence would be acknowledged
/// as a duplicate without being stored.
pub fn fence_id(node: u64, shard: u32, last: u64, after: u64) -> String {
    format!("{}.{after}", message_id(node, shard, last + 1, last))
}

/// A stream message's `Nats-Msg-Id`, when it has one.
pub fn id_header(headers: &async_nats::HeaderMap) -> Option<&str> {
    headers.get("Nats-Msg-Id").map(|v| v.as_str())
}

/// A message id's parts: node, shard, first and last sequence (a fence's
/// fifth part, the message it follows, is checked and left out).
pub fn parse_message_id(id: &str) -> Option<(u64, u32, u64, u64)> {
    let mut parts = id.split('.');
    let node = u64::from_str_radix(parts.next()?, 16).ok()?;
    let shard = parts.next()?.parse().ok()?;
    let first: u64 = parts.next()?.parse().ok()?;
    let last: u64 = parts.next()?.parse().ok()?;
    if let Some(after) = parts.next() {
        // Only a fence (no records) has one.
        if first != last.wrapping_add(1) || after.parse::<u64>().is_err() {
            return None;
        }
    }
    parts.next().is_none().then_some((node, shard, first, last))
}

/// How long JetStream remembers a message id.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a publish waits for JetStream's acknowledgement.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause between attempts to create a stream or read its last message.
const RETRY: Duration = Duration::from_millis(250);
/// The pause before reading the stream again after a failed publish.
const RESYNC_PAUSE: Duration = Duration::from_millis(50);
/// How often a shard found overtaken ([`overtaken`]) reads its stream
/// again until its lease's next renewal settles whose it is.
const OVERTAKEN_CHECK: Duration = Duration::from_millis(100);
/// Batches each core's ring holds (either way).
pub const RING: usize = 4096;
/// A message's payload stays this far under the server's `max_payload`
/// (room for the headers).
const HEADER_ROOM: usize = 1024;

/// A journal batch, durable on this node, to be replicated.
pub struct ReplJob {
    /// The core's local shard index (given back in [`ReplDone`]).
    pub local: u32,
    /// The global shard.
    pub shard: u32,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The batch's records, as the journal wrote them.
    pub bytes: Vec<u8>,
}

/// A snapshot of a shard this node serves, taken once every record it
/// covers was stored in the stream: published to the object store
/// [`SNAPSHOT_BUCKET`], then the stream is trimmed to what follows it.
pub struct ReplSnapshot {
    pub shard: u32,
    /// The last record the snapshot covers.
    pub covers_seq: u64,
    /// The state digest the snapshot's header carries.
    pub digest: u64,
    /// The snapshot file's body, as the journal writes it.
    pub body: Vec<u8>,
}

/// What a core hands the replication thread.
pub enum ReplMsg {
    Batch(ReplJob),
    Snapshot(ReplSnapshot),
    /// A standby copy of `shard` has applied (and journaled) its records
    /// through `seq`, in reload `epoch` (see [`ReplOut::Reload`]).
    Applied {
        shard: u32,
        epoch: u64,
        seq: u64,
    },
    /// A standby copy of `shard` took a snapshot through `covers_seq` with
    /// this digest: compared with the owner's ([`crate::server::standby`]).
    Check {
        shard: u32,
        covers_seq: u64,
        digest: u64,
    },
}

impl ReplMsg {
    fn shard(&self) -> u32 {
        match self {
            ReplMsg::Batch(j) => j.shard,
            ReplMsg::Snapshot(s) => s.shard,
            ReplMsg::Applied { shard, .. } | ReplMsg::Check { shard, .. } => *shard,
        }
    }
}

/// What the replication thread hands a core.
#[derive(Debug)]
pub enum ReplOut {
    /// Records of a shard this node serves are stored in its stream.
    Done(ReplDone),
    /// Make local shard `local` a standby copy: replace it with this
    /// snapshot of its stream (`None`: the empty shard, `covers_seq` 0) and
    /// start its journal again from it; then answer
    /// [`ReplMsg::Applied`] with `epoch` and `covers_seq`.
    Reload {
        local: u32,
        epoch: u64,
        covers_seq: u64,
        digest: u64,
        body: Option<Vec<u8>>,
    },
    /// Records of the stream (journal records, in order, the first right
    /// after the last the core has) for the standby copy of local shard
    /// `local` to journal and apply, discarding their reports.
    Records {
        local: u32,
        epoch: u64,
        bytes: Bytes,
    },
    /// This node lost local shard `local`: another node wrote its stream,
    /// so the batches still waiting for JetStream never will be stored
    /// (they are answered `NotDurable`, never applied).
    Lost { local: u32 },
}

/// The object store bucket of the newest snapshot of each shard (object
/// `shard-<n>`, with metadata `covers_seq`, `digest` (16 hex digits) and
/// `node`).
pub const SNAPSHOT_BUCKET: &str = "TURBO_DEX_SNAPSHOTS";

/// The object name of shard `shard`'s snapshot in [`SNAPSHOT_BUCKET`].
pub fn snapshot_object(shard: u32) -> String {
    format!("shard-{shard}")
}

/// Every record of local shard `local` up to `last_seq` is stored in its
/// stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplDone {
    pub local: u32,
    pub last_seq: u64,
}

/// Wakes the replication thread when it sleeps.
struct Wake {
    sleeping: AtomicBool,
    notify: Notify,
}

impl Wake {
    fn wake(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }
}

/// A core's end of the replication thread: batches out, acknowledgements
/// back. Never blocks.
pub struct ReplLink {
    jobs: rtrb::Producer<ReplMsg>,
    done: rtrb::Consumer<ReplOut>,
    wake: Arc<Wake>,
}

impl ReplLink {
    /// Hands a batch or a snapshot over; gives it back when the ring is full.
    pub fn send(&mut self, job: ReplMsg) -> Result<(), ReplMsg> {
        match self.jobs.push(job) {
            Ok(()) => {
                self.wake.wake();
                Ok(())
            }
            Err(rtrb::PushError::Full(job)) => Err(job),
        }
    }

    /// The next acknowledgement (or standby work), if any.
    pub fn poll(&mut self) -> Option<ReplOut> {
        self.done.pop().ok()
    }
}

/// What the replication thread needs.
#[derive(Clone, Debug)]
pub struct ReplConfig {
    /// `nats://HOST:PORT[,...]` (as `--cluster` names them).
    pub urls: String,
    /// Each stream's replicas (2 or more).
    pub replicas: usize,
    /// This node's id (in the message ids).
    pub node: u64,
    /// The journal directory: records a restart left unreplicated are
    /// read back from it.
    pub journal_dir: std::path::PathBuf,
    /// The shards this node serves, and what it is to each shard
    /// (standby copies, takeovers: `server::standby`).
    pub view: Arc<crate::cluster::ClusterView>,
}

/// The replication thread.
pub struct Replicator {
    stop: Arc<AtomicBool>,
    wake: Arc<Wake>,
    thread: Option<JoinHandle<()>>,
}

/// The thread's end of one core's link.
struct CoreEnd {
    jobs: rtrb::Consumer<ReplMsg>,
    done: rtrb::Producer<ReplOut>,
    /// Acknowledgements the full ring did not take yet.
    backlog: VecDeque<ReplOut>,
}

impl Replicator {
    /// Starts the thread with one link per core; `kick(core)` wakes a core
    /// that has acknowledgements to take.
    pub fn start(
        cfg: ReplConfig,
        cores: usize,
        kick: Arc<dyn Fn(usize) + Send + Sync>,
    ) -> std::io::Result<(Replicator, Vec<ReplLink>)> {
        let wake = Arc::new(Wake {
            sleeping: AtomicBool::new(false),
            notify: Notify::new(),
        });
        let mut links = Vec::with_capacity(cores);
        let mut ends = Vec::with_capacity(cores);
        for _ in 0..cores {
            let (jobs_tx, jobs_rx) = rtrb::RingBuffer::new(RING);
            let (done_tx, done_rx) = rtrb::RingBuffer::new(RING);
            links.push(ReplLink {
                jobs: jobs_tx,
                done: done_rx,
                wake: Arc::clone(&wake),
            });
            ends.push(CoreEnd {
                jobs: jobs_rx,
                done: done_tx,
                backlog: VecDeque::new(),
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, wake) = (Arc::clone(&stop), Arc::clone(&wake));
            std::thread::Builder::new()
                .name("turbo-dex-repl".into())
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            tracing::error!("replication: cannot start its runtime: {e}");
                            return;
                        }
                    };
                    rt.block_on(run(cfg, ends, kick, stop, wake));
                })?
        };
        Ok((
            Replicator {
                stop,
                wake,
                thread: Some(thread),
            },
            links,
        ))
    }

    /// Stops the thread (batches not yet acknowledged stay so).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.wake.sleeping.store(false, Ordering::SeqCst);
        self.wake.notify.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A shard task's input: a batch or a snapshot from `core`.
type ShardInput = (usize, ReplMsg);
/// A shard task's output: an acknowledgement (or standby work) for `core`.
pub(super) type ShardOutput = (usize, ReplOut);

async fn run(
    cfg: ReplConfig,
    mut ends: Vec<CoreEnd>,
    kick: Arc<dyn Fn(usize) + Send + Sync>,
    stop: Arc<AtomicBool>,
    wake: Arc<Wake>,
) {
    let servers = match crate::mdbridge::parse_servers(&cfg.urls) {
        Ok(servers) => servers,
        Err(e) => {
            tracing::error!("replication: {}: {e}", cfg.urls);
            return;
        }
    };
    let client = match async_nats::ConnectOptions::new()
        .name("turbo-dex replication")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(crate::mdbridge::reconnect_delay)
        .connect(servers)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("replication: cannot start the NATS client: {e}");
            return;
        }
    };
    let js = jetstream::ContextBuilder::new()
        .timeout(ACK_TIMEOUT)
        .max_ack_inflight(RING)
        .build(client.clone());
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<ShardOutput>();
    let mut shards: HashMap<u32, mpsc::UnboundedSender<ShardInput>> = HashMap::new();
    let cfg = Arc::new(cfg);
    let mut standbys = super::standby::Standbys::new(ends.len());
    while !stop.load(Ordering::Acquire) {
        let mut busy = false;
        standbys.steer(&js, &cfg, &out_tx);
        for (core, end) in ends.iter_mut().enumerate() {
            while let Ok(job) = end.jobs.pop() {
                busy = true;
                let job = match job {
                    ReplMsg::Applied { shard, epoch, seq } => {
                        standbys.applied(shard, epoch, seq);
                        continue;
                    }
                    ReplMsg::Check {
                        shard,
                        covers_seq,
                        digest,
                    } => {
                        standbys.check(shard, covers_seq, digest);
                        continue;
                    }
                    job => job,
                };
                let tx = shards.entry(job.shard()).or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(shard_task(
                        js.clone(),
                        client.clone(),
                        Arc::clone(&cfg),
                        job.shard(),
                        rx,
                        out_tx.clone(),
                    ));
                    tx
                });
                let _ = tx.send((core, job));
            }
        }
        while let Ok((core, done)) = out_rx.try_recv() {
            busy = true;
            if let Some(end) = ends.get_mut(core) {
                end.backlog.push_back(done);
            }
        }
        for (core, end) in ends.iter_mut().enumerate() {
            let mut pushed = false;
            while let Some(d) = end.backlog.pop_front() {
                if let Err(rtrb::PushError::Full(d)) = end.done.push(d) {
                    end.backlog.push_front(d);
                    break;
                }
                pushed = true;
            }
            if pushed {
                kick(core);
            }
        }
        if busy {
            tokio::task::yield_now().await;
            continue;
        }
        wake.sleeping.store(true, Ordering::SeqCst);
        // A core that pushed before seeing the flag did not wake us.
        if ends.iter().any(|e| !e.jobs.is_empty()) || stop.load(Ordering::Acquire) {
            wake.sleeping.store(false, Ordering::SeqCst);
            continue;
        }
        let backlog = ends.iter().any(|e| !e.backlog.is_empty());
        let nap = if backlog {
            Duration::from_millis(1)
        } else {
            // Roles (standby, takeover) are looked at this often.
            Duration::from_millis(50)
        };
        tokio::select! {
            () = wake.notify.notified() => {}
            Some((core, done)) = out_rx.recv() => {
                if let Some(end) = ends.get_mut(core) {
                    end.backlog.push_back(done);
                }
            }
            () = tokio::time::sleep(nap) => {}
        }
        wake.sleeping.store(false, Ordering::SeqCst);
    }
}

/// One message: records `first..=last` of a batch of `core`.
struct Part {
    core: usize,
    local: u32,
    first: u64,
    last: u64,
    /// The batch ends with this part.
    ends_batch: bool,
    payload: Bytes,
}

/// The most payload bytes a message carries: the server's `max_payload`
/// less room for the headers.
fn part_limit(client: &async_nats::Client) -> usize {
    client
        .server_info()
        .max_payload
        .saturating_sub(HEADER_ROOM)
        .max(HEADER_ROOM)
}

/// Splits a batch into parts of at most `max` bytes, at record boundaries
/// (one record larger than `max` goes alone: the server refuses it and
/// the shard stops, said in the log).
fn split(core: usize, job: ReplJob, max: usize) -> Vec<Part> {
    let ReplJob {
        local,
        first_seq,
        last_seq,
        bytes,
        ..
    } = job;
    if bytes.len() <= max {
        return vec![Part {
            core,
            local,
            first: first_seq,
            last: last_seq,
            ends_batch: true,
            payload: Bytes::from(bytes),
        }];
    }
    let bytes = Bytes::from(bytes);
    let mut parts = Vec::new();
    let (mut start, mut at, mut first) = (0usize, 0usize, first_seq);
    let mut seq = first_seq;
    while at < bytes.len() {
        let len = match journal::decode_record(&bytes[at..]) {
            Ok(Some((record, len))) => {
                seq = record.seq;
                len
            }
            // The core encoded these bytes: this cannot happen.
            _ => bytes.len() - at,
        };
        if at + len - start > max && at > start {
            parts.push(Part {
                core,
                local,
                first,
                last: seq - 1,
                ends_batch: false,
                payload: bytes.slice(start..at),
            });
            start = at;
            first = seq;
        }
        at += len;
    }
    parts.push(Part {
        core,
        local,
        first,
        last: last_seq,
        ends_batch: true,
        payload: bytes.slice(start..),
    });
    parts
}

/// What the stream's last message says.
pub(super) enum Last {
    /// The stream holds nothing of the shard.
    Empty,
    /// Records up to `last` by `node`, at stream sequence `seq`.
    Records { node: u64, last: u64, seq: u64 },
}

/// Creates (or finds) the shard's stream, retrying until it exists.
pub(super) async fn ensure_stream(
    js: &jetstream::Context,
    cfg: &ReplConfig,
    shard: u32,
) -> stream::Stream {
    let config = stream::Config {
        name: stream_name(shard),
        subjects: vec![subject(shard)],
        num_replicas: cfg.replicas,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    };
    let mut said = None::<String>;
    loop {
        match js.get_or_create_stream(config.clone()).await {
            Ok(s) => {
                if said.is_some() {
                    tracing::info!("replication: stream {} exists now", config.name);
                }
                return s;
            }
            Err(e) => {
                let why = e.to_string();
                if said.as_deref() != Some(why.as_str()) {
                    tracing::error!(
                        "replication: cannot create stream {} with {} replicas: {why}; \
                         retrying (the shard's orders are not acknowledged meanwhile; \
                         --replicas {} needs that many NATS servers with JetStream)",
                        config.name,
                        cfg.replicas,
                        cfg.replicas
                    );
                    said = Some(why);
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Reads the stream's last message, retrying until it can.
pub(super) async fn read_last(stream: &stream::Stream, shard: u32) -> Last {
    let mut said = false;
    loop {
        match stream
            .get_last_raw_message_by_subject(&subject(shard))
            .await
        {
            Ok(m) => {
                let id = id_header(&m.headers).and_then(parse_message_id);
                return match id {
                    Some((node, _, _, last)) => Last::Records {
                        node,
                        last,
                        seq: m.sequence,
                    },
                    // Not a turbo-dex message: nobody's records.
                    None => Last::Records {
                        node: u64::MAX,
                        last: u64::MAX,
                        seq: m.sequence,
                    },
                };
            }
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                return Last::Empty;
            }
            Err(e) => {
                if !said {
                    tracing::warn!(
                        "replication: cannot read the last message of {}: {e}; retrying",
                        stream_name(shard)
                    );
                    said = true;
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// One shard: publishes its parts in order, one conditional publish at
/// a time carrying every part that waits, and reports each batch whose
/// last part is stored.
async fn shard_task(
    js: jetstream::Context,
    client: async_nats::Client,
    cfg: Arc<ReplConfig>,
    shard: u32,
    mut input: mpsc::UnboundedReceiver<ShardInput>,
    output: mpsc::UnboundedSender<ShardOutput>,
) {
    let subject = subject(shard);
    let stream = ensure_stream(&js, &cfg, shard).await;
    // Parts not yet known stored, in order.
    let mut parts: VecDeque<Part> = VecDeque::new();
    // The stream sequence of the shard's last stored message (0: none).
    let mut stream_seq = 0;
    // Records up to here are stored (None: none yet).
    let mut stored: Option<u64> = None;
    // Another node wrote the stream last (its node id, last record,
    // stream sequence): it took the shard over, and nothing of this node
    // is published until this node takes it back (and fences it:
    // `server::standby`).
    let mut foreign: Option<(u64, u64, u64)> = None;
    let mut broken = true; // start by reading the stream
    // The publish in flight: the last record it carries.
    let mut inflight: Option<(u64, Ack)> = None;
    let mut open = true;
    let mut payload = BytesMut::new();
    // The first sequence a gap before it was looked for (once each).
    let mut gap_checked: Option<u64> = None;
    // The first sequence a gap before it made the stream be read again
    // (once each): what this task knows of the stream is stale after the
    // shard was another node's for a while (a takeover here applied that
    // node's records, which this task never published), and only a fresh
    // read tells a real gap from that.
    let mut gap_reread: Option<u64> = None;
    // The stream is read again on purpose, not after a failure: no pause.
    let mut reread = false;
    // When another node's message was first found last in the stream of a
    // shard this node serves ([`overtaken`]).
    let mut overtaken_seen: Option<u64> = None;
    // This node's message was stored at this stream sequence, past the one
    // its publish was conditional on ([`conflict`]): until a later message
    // of this node (the fence of its new takeover) is the stream's last,
    // nothing is published and nothing more counts as stored.
    let mut conflict: Option<u64> = None;
    // Stored messages since the last trim: (stream sequence, last record).
    // Each snapshot drops those before it, so this holds at most one
    // entry per message of `--snapshot-every` records (16 bytes each).
    let mut acked: VecDeque<(u64, u64)> = VecDeque::new();
    // Where the previous snapshot let the stream start: the next snapshot
    // trims to there, so that the stream keeps what follows the snapshot
    // before the newest (a standby that lags by less than one snapshot
    // interval is never cut off and reloaded).
    let mut previous_keep: Option<u64> = None;
    // The newest snapshot not yet published, and whether an upload runs.
    let snapshots: Snapshots = Arc::new(std::sync::Mutex::new((None, false)));
    loop {
        if broken && inflight.is_none() {
            // Not at once: the failure may last (no quorum for a while).
            if !parts.is_empty() && !std::mem::take(&mut reread) {
                tokio::time::sleep(RESYNC_PAUSE).await;
            }
            match read_last(&stream, shard).await {
                Last::Empty => {
                    overtaken_seen = None;
                    stream_seq = 0;
                    foreign = None;
                }
                Last::Records { node, last, seq }
                    if node == cfg.node && conflict.is_some_and(|c| seq <= c) =>
                {
                    foreign = Some((node, last, seq));
                    acked.clear();
                }
                Last::Records { node, last, seq } if node == cfg.node => {
                    overtaken_seen = None;
                    stream_seq = seq;
                    // After a conflict, the fence says where this node's
                    // records go on (the conflicting ones never count).
                    stored = if conflict.take().is_some() {
                        Some(last)
                    } else {
                        stored.max(Some(last))
                    };
                    foreign = None;
                }
                Last::Records { node, last, seq } => {
                    foreign = Some((node, last, seq));
                    acked.clear();
                    overtaken(&cfg, shard, (node, last, seq), &mut overtaken_seen);
                }
            }
            broken = false;
            if foreign.is_none() {
                report(&mut parts, stored, &output);
            }
        }
        if let Some((node, ..)) = foreign
            && !parts.is_empty()
        {
            let why = if node == cfg.node {
                "waits for its new takeover's fence".to_string()
            } else {
                format!("was taken over by node {node:016x}")
            };
            lost(shard, &why, &mut parts, &output);
        }
        if !broken && foreign.is_none() && inflight.is_none() {
            let next = parts.front().map(|p| p.first);
            if let (Some(next), Some(stored)) = (next, stored)
                && next > stored + 1
                && gap_reread != Some(next)
            {
                gap_reread = Some(next);
                broken = true;
                reread = true;
                continue;
            }
            fill_gap(&cfg, shard, &client, stored, &mut parts, &mut gap_checked).await;
        }
        if inflight.is_none() && !broken && foreign.is_none() && !parts.is_empty() {
            let max = part_limit(&client);
            // Every waiting part that fits (the first always goes); one
            // part alone goes as it is, without a copy.
            let first = parts[0].first;
            let mut last = parts[0].last;
            let mut len = parts[0].payload.len();
            let mut n = 1;
            while let Some(p) = parts.get(n) {
                if len + p.payload.len() > max {
                    break;
                }
                len += p.payload.len();
                last = p.last;
                n += 1;
            }
            let body = if n == 1 {
                parts[0].payload.clone()
            } else {
                payload.clear();
                payload.reserve(len);
                for p in parts.iter().take(n) {
                    payload.extend_from_slice(&p.payload);
                }
                payload.split().freeze()
            };
            let publish = PublishMessage::build()
                .payload(body)
                .message_id(message_id(cfg.node, shard, first, last))
                .expected_last_subject_sequence(stream_seq);
            match js.send_publish(subject.clone(), publish).await {
                Ok(ack) => inflight = Some((last, tokio::spawn(ack.into_future()))),
                Err(e) => {
                    tracing::warn!("replication: publishing shard {shard}: {e}");
                    broken = true;
                    continue;
                }
            }
        }
        if !open && parts.is_empty() {
            return;
        }
        tokio::select! {
            got = input.recv(), if open => match got {
                Some((core, ReplMsg::Batch(job))) => {
                    parts.extend(split(core, job, part_limit(&client)));
                    // Another node wrote last: read the stream again (this
                    // node may have taken the shard back and fenced it).
                    if foreign.is_some() {
                        broken = true;
                    }
                }
                Some((_, ReplMsg::Snapshot(snap))) => {
                    if foreign.is_some() {
                        continue;
                    }
                    // Keep the first message with a record after the
                    // snapshot, and always the last one (it says whose
                    // records the stream holds, and the next publish
                    // expects it); drop what is older.
                    let keep_from = match acked.iter().find(|&&(_, last)| last > snap.covers_seq) {
                        Some(&(seq, _)) => Some(seq),
                        None => acked.back().map(|&(seq, _)| seq),
                    };
                    if let Some(keep) = keep_from {
                        acked.retain(|&(seq, _)| seq >= keep);
                    }
                    let trim_to = std::mem::replace(&mut previous_keep, keep_from);
                    // The newest replaces one still waiting; one upload at
                    // a time.
                    let start = {
                        let mut slot = snapshots.lock().unwrap_or_else(|p| p.into_inner());
                        slot.0 = Some((snap, trim_to));
                        !std::mem::replace(&mut slot.1, true)
                    };
                    if start {
                        tokio::spawn(publish_snapshots(
                            js.clone(),
                            stream.clone(),
                            Arc::clone(&cfg),
                            Arc::clone(&snapshots),
                        ));
                    }
                }
                Some((_, ReplMsg::Applied { .. } | ReplMsg::Check { .. })) => {}
                None => open = false,
            },
            // Found overtaken: look again until a renewal of the lease
            // (or its loss) settles it, batches or not.
            _ = tokio::time::sleep(OVERTAKEN_CHECK), if overtaken_seen.is_some() => {
                broken = true;
                reread = true;
            }
            (last, result) = next_ack(&mut inflight) => match result {
                Ok(ack) if stream_seq != 0
                    && !ack.duplicate
                    && ack.sequence != stream_seq + 1
                    && overlapped(&stream, shard, (stream_seq, ack.sequence), parts.front().map_or(last, |p| p.first)).await =>
                {
                    conflict = Some(ack.sequence);
                    stored = None;
                    foreign = Some((cfg.node, last, ack.sequence));
                    acked.clear();
                    self::conflict(&cfg, shard, (last, ack.sequence, stream_seq), &mut parts, &output);
                    broken = true;
                    reread = true;
                }
                Ok(ack) => {
                    stream_seq = ack.sequence;
                    stored = Some(last);
                    acked.push_back((ack.sequence, last));
                    report(&mut parts, stored, &output);
                }
                Err(e) => {
                    tracing::warn!(
                        "replication: shard {shard}: a publish was not stored: {e}; \
                         reading the stream before publishing again"
                    );
                    broken = true;
                }
            },
        }
    }
}

/// Another node's message is the stream's last while this node serves the
/// shard. Either this node's role is stale (it was cut off, and another
/// node took the lease over and fenced the stream: its agent has not yet
/// read the lease) or the old owner's publish, conditional on the same
/// message as this node's fence, was stored after the fence: nats-server
/// checks `Nats-Expected-Last-Subject-Sequence` before its Raft proposal,
/// not when the proposal is applied, so two publishes in flight at once
/// may both pass (nats-io/nats-server#4320; its in-flight guard is the
/// leader's alone and lost at a leader change). The old owner
/// acknowledged those records, and this node's copy lacks them.
///
/// A lease write of this node begun after the message was found tells
/// the two apart: it succeeds only if the lease still names this node.
/// Until one has (`seen`: when the message was first found), nothing is
/// done (the waiting batches are refused, [`lost`]). Once one has, this
/// node stops serving the shard and takes it over again as after a
/// failover (`server::standby`: reload, follow the stream to its end,
/// fence after it), which applies the other node's records. Nothing of
/// the refused batches was acknowledged or applied.
fn overtaken(cfg: &ReplConfig, shard: u32, found: (u64, u64, u64), seen: &mut Option<u64>) {
    let view = &cfg.view;
    if view.role(shard) != Role::Owner || !view.may_serve(shard) {
        *seen = None; // a takeover under way, or not this node's shard
        return;
    }
    let since = *seen.get_or_insert_with(crate::cluster::view::boottime_ns);
    if view.lease_written_at(shard) <= since {
        return; // the next renewal says whose shard it is
    }
    let (node, last, seq) = found;
    tracing::warn!(
        "replication: shard {shard}: node {node:016x} stored records up to {last} in {} \
         (message {seq}) after this node's own last message, while this node holds the \
         shard's lease (renewed since): nats-server let two conditional publishes through \
         (nats-io/nats-server#4320); stopped serving the shard to apply them and take it \
         over again",
        stream_name(shard)
    );
    *seen = None;
    // Not ready first: the agent's next renewal must not serve it again
    // before the takeover does.
    view.set_ready(shard, false);
    view.stop(shard);
}

/// JetStream stored this node's message (records up to `last`) at stream
/// sequence `at`, not right after message `after` its publish was
/// conditional on: another node's message went in between, conditional on
/// the same message and checked before this one was applied
/// (nats-io/nats-server#4320; a new owner's first batch right after an
/// old owner's last), and holds records numbered as this one's
/// ([`overlapped`]), so no copy applies this one (`standby::take`): the
/// waiting batches, this one included, are refused `NotDurable`, never
/// applied, and the shard is taken over again as after a failover
/// (reload, apply the stream, fence after it).
fn conflict(
    cfg: &ReplConfig,
    shard: u32,
    (last, at, after): (u64, u64, u64),
    parts: &mut VecDeque<Part>,
    output: &mpsc::UnboundedSender<ShardOutput>,
) {
    tracing::warn!(
        "replication: shard {shard}: JetStream stored this node's records up to {last} at \
         message {at} of {}, not right after message {after} as its publish required: \
         another node's message went in between (nats-io/nats-server#4320); stopped serving \
         the shard to take it over again",
        stream_name(shard)
    );
    lost(shard, "is taken over again", parts, output);
    let view = &cfg.view;
    view.set_ready(shard, false);
    view.stop(shard);
}

/// Whether a message of this node stored at stream sequence `at`, not
/// right after message `after` its publish was conditional on, comes
/// after another node's records numbered `first` or later (so that no
/// copy applies it: `standby::take`). The messages in between are read
/// (retried until they can be): a fence alone in between (an old owner's
/// batch stored after the new owner's fence, nats-io/nats-server#4320)
/// leaves this node's records the next ones, which every copy applies;
/// the new owner takes the shard over again to apply them too
/// ([`overtaken`]).
async fn overlapped(
    stream: &stream::Stream,
    shard: u32,
    (after, at): (u64, u64),
    first: u64,
) -> bool {
    for seq in after + 1..at {
        let mut said = false;
        let m = loop {
            match stream.get_raw_message(seq).await {
                Ok(m) => break Some(m),
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => break None,
                Err(e) => {
                    if !std::mem::replace(&mut said, true) {
                        tracing::warn!(
                            "replication: shard {shard}: cannot read message {seq} of {}: {e}; \
                             retrying",
                            stream_name(shard)
                        );
                    }
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        if numbers_over(m.as_ref().and_then(|m| id_header(&m.headers)), first) {
            return true;
        }
    }
    false
}

/// Whether the message with id `id` carries records numbered `first` or
/// later (a fence carries none; a message that is not turbo-dex's, none).
fn numbers_over(id: Option<&str>, first: u64) -> bool {
    id.and_then(parse_message_id)
        .is_some_and(|(_, _, f, l)| l >= f && l >= first)
}

/// This node lost the shard (another node wrote its stream, and this node
/// does not hold the lease), or takes it over again ([`conflict`];
/// `why` says which): the waiting parts will never be stored. Each
/// core with a batch among them is told ([`ReplOut::Lost`]) so that it
/// answers them `NotDurable` without applying them; the records stay in
/// the local journal until the shard is reloaded as a standby copy.
fn lost(
    shard: u32,
    why: &str,
    parts: &mut VecDeque<Part>,
    output: &mpsc::UnboundedSender<ShardOutput>,
) {
    let mut told: Vec<(usize, u32)> = Vec::new();
    for p in parts.iter().filter(|p| p.core != NO_CORE) {
        if !told.contains(&(p.core, p.local)) {
            told.push((p.core, p.local));
            let _ = output.send((p.core, ReplOut::Lost { local: p.local }));
        }
    }
    tracing::warn!(
        "replication: shard {shard} {why}: {} batch(es) journaled here but never stored in \
         {} are refused (not durable), never applied",
        parts.iter().filter(|p| p.ends_batch).count(),
        stream_name(shard)
    );
    parts.clear();
}

/// A shard's newest snapshot waiting to be published (with the stream
/// message to keep from), and whether an upload task runs.
type Snapshots = Arc<std::sync::Mutex<(Option<(ReplSnapshot, Option<u64>)>, bool)>>;

/// Publishes the shard's waiting snapshots, newest first, until none
/// waits (one task per shard at a time).
async fn publish_snapshots(
    js: jetstream::Context,
    stream: stream::Stream,
    cfg: Arc<ReplConfig>,
    slot: Snapshots,
) {
    loop {
        let next = {
            let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
            let next = slot.0.take();
            if next.is_none() {
                slot.1 = false;
            }
            next
        };
        let Some((snap, keep_from)) = next else {
            return;
        };
        publish_snapshot(&js, &stream, &cfg, snap, keep_from).await;
    }
}

/// Publishes a snapshot to [`SNAPSHOT_BUCKET`] and then, if it was stored,
/// trims the shard's stream to `keep_from` (purges every message before
/// it): a standby starts from the snapshot and the stream after it.
async fn publish_snapshot(
    js: &jetstream::Context,
    stream: &stream::Stream,
    cfg: &ReplConfig,
    snap: ReplSnapshot,
    keep_from: Option<u64>,
) {
    let shard = snap.shard;
    let result = async {
        let store = match js.get_object_store(SNAPSHOT_BUCKET).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(jetstream::object_store::Config {
                    bucket: SNAPSHOT_BUCKET.to_string(),
                    description: Some("turbo-dex: the newest snapshot of each shard".into()),
                    num_replicas: cfg.replicas,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("creating the object store: {e}"))?,
        };
        let meta = jetstream::object_store::ObjectMetadata {
            name: snapshot_object(shard),
            metadata: [
                ("covers_seq".to_string(), snap.covers_seq.to_string()),
                ("digest".to_string(), format!("{:016x}", snap.digest)),
                ("node".to_string(), format!("{:016x}", cfg.node)),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        store
            .put(meta, &mut snap.body.as_slice())
            .await
            .map_err(|e| format!("storing it: {e}"))?;
        if let Some(keep) = keep_from {
            stream.purge().sequence(keep).await.map_err(|e| {
                format!("trimming {} before message {keep}: {e}", stream_name(shard))
            })?;
        }
        Ok::<(), String>(())
    }
    .await;
    match result {
        Ok(()) => tracing::debug!(
            "replication: snapshot of shard {shard} through record {} published, stream trimmed",
            snap.covers_seq
        ),
        Err(e) => tracing::warn!(
            "replication: snapshot of shard {shard} through record {}: {e}; the stream keeps \
             growing until a later one is published",
            snap.covers_seq
        ),
    }
}

/// Records between the stream's last (this node's) and the first waiting
/// part were journaled here but never stored in the stream (the node
/// stopped before JetStream had them: they were never acknowledged).
/// They go first, read back from the local journal, so that the stream
/// holds every record once, in order. A stream that is empty starts where
/// the node is now.
async fn fill_gap(
    cfg: &ReplConfig,
    shard: u32,
    client: &async_nats::Client,
    stored: Option<u64>,
    parts: &mut VecDeque<Part>,
    checked: &mut Option<u64>,
) {
    let Some(next) = parts.front().map(|p| p.first) else {
        return;
    };
    if *checked == Some(next) {
        return;
    }
    *checked = Some(next);
    let Some(stored) = stored else {
        if next > 1 {
            tracing::info!(
                "replication: {} starts at record {next} (this node's journal holds the \
                 records before it)",
                stream_name(shard)
            );
        }
        return;
    };
    if next <= stored + 1 {
        return;
    }
    let (from, to) = (stored + 1, next - 1);
    let dir = cfg.journal_dir.clone();
    let read = tokio::task::spawn_blocking(move || journal::read_records(&dir, shard, from, to))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r);
    match read {
        Ok((bytes, Some(first))) if first == from => {
            tracing::info!(
                "replication: {} lacks records {from}..={to} (journaled here before a \
                 restart, never acknowledged): publishing them from the journal first",
                stream_name(shard)
            );
            let job = ReplJob {
                local: 0,
                shard,
                first_seq: from,
                last_seq: to,
                bytes,
            };
            let mut gap = split(NO_CORE, job, part_limit(client));
            for p in &mut gap {
                p.ends_batch = false; // nobody waits for them
            }
            for p in gap.into_iter().rev() {
                parts.push_front(p);
            }
        }
        Ok((_, found)) => tracing::error!(
            "replication: {} lacks records {from}..={to}, and this node's journal no \
             longer has them (first found: {found:?}); the stream has a gap there",
            stream_name(shard)
        ),
        Err(e) => tracing::error!(
            "replication: reading records {from}..={to} of shard {shard} from the journal: \
             {e}; the stream has a gap there"
        ),
    }
}

/// The `core` of parts no core waits for.
const NO_CORE: usize = usize::MAX;

/// A publish's acknowledgement, as a task (so that it runs on while the
/// shard's task waits for something else).
type Ack = tokio::task::JoinHandle<
    Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
>;

/// The publish in flight's acknowledgement (never, while there is none).
async fn next_ack(
    inflight: &mut Option<(u64, Ack)>,
) -> (u64, Result<jetstream::publish::PublishAck, String>) {
    let Some((last, handle)) = inflight.as_mut() else {
        return std::future::pending().await;
    };
    let result = match handle.await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let last = *last;
    *inflight = None;
    (last, result)
}

/// Drops the parts stored (through `stored`) and reports each batch
/// that ended among them.
fn report(
    parts: &mut VecDeque<Part>,
    stored: Option<u64>,
    output: &mpsc::UnboundedSender<ShardOutput>,
) {
    let Some(stored_through) = stored else {
        return;
    };
    while let Some(p) = parts.front() {
        if p.last > stored_through {
            break;
        }
        if p.ends_batch {
            let _ = output.send((
                p.core,
                ReplOut::Done(ReplDone {
                    local: p.local,
                    last_seq: p.last,
                }),
            ));
        }
        parts.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::{Command, Op, SessionId};
    use wire::{NewOrder, Side};

    #[test]
    fn only_records_numbered_as_this_nodes_make_a_conflict() {
        // This node's message holds records 951-960.
        let other = message_id(0xa, 2, 951, 955);
        assert!(numbers_over(Some(&other), 951));
        // A fence "after record 950" in between: the records stand.
        let fence = fence_id(0xa, 2, 950, 40);
        assert!(!numbers_over(Some(&fence), 951));
        // Records before this node's (cannot follow a message it was
        // conditional on, but they number nothing of its own).
        let before = message_id(0xa, 2, 941, 950);
        assert!(!numbers_over(Some(&before), 951));
        // No id, or not turbo-dex's: nothing.
        assert!(!numbers_over(None, 951));
        assert!(!numbers_over(Some("not-ours"), 951));
    }

    fn batch(first: u64, n: u64) -> ReplJob {
        let mut bytes = Vec::new();
        for seq in first..first + n {
            let cmd = Command {
                session: SessionId::from_raw(7),
                account: 1,
                op: Op::New(NewOrder::limit(seq, 0, Side::Buy, 100, 1)),
            };
            journal::encode_record(&mut bytes, seq, 0, &cmd);
        }
        ReplJob {
            local: 3,
            shard: 9,
            first_seq: first,
            last_seq: first + n - 1,
            bytes,
        }
    }

    fn seqs(payload: &[u8]) -> Vec<u64> {
        let mut at = 0;
        let mut out = Vec::new();
        while at < payload.len() {
            let (r, len) = journal::decode_record(&payload[at..]).unwrap().unwrap();
            out.push(r.seq);
            at += len;
        }
        out
    }

    /// Another node's message last in the stream of a shard this node
    /// serves: acted on (serving stops, for a takeover again) only after a
    /// lease write begun later proves the lease still names this node. A
    /// node that was cut off must not act on its stale role.
    #[test]
    fn an_overtaken_owner_waits_for_a_renewal_before_it_takes_its_shard_again() {
        use crate::cluster::view::boottime_ns;
        let view = Arc::new(crate::cluster::ClusterView::new(1, 4).replicated());
        let cfg = ReplConfig {
            urls: String::new(),
            replicas: 2,
            node: 1,
            journal_dir: std::path::PathBuf::new(),
            view: Arc::clone(&view),
        };
        let t0 = boottime_ns();
        for shard in [2, 3] {
            view.set_role(shard, Role::Owner);
            view.set_ready(shard, true);
            view.lease_written(shard, t0);
            view.renewed(shard, t0);
        }
        let found = (9, 10, 11);
        let mut seen = None;
        overtaken(&cfg, 2, found, &mut seen);
        overtaken(&cfg, 2, found, &mut seen);
        assert!(seen.is_some());
        assert!(view.may_serve(2) && view.serves(2), "nothing proves it yet");
        std::thread::sleep(Duration::from_millis(2));
        view.lease_written(2, boottime_ns());
        overtaken(&cfg, 2, found, &mut seen);
        assert_eq!(seen, None);
        assert!(
            !view.may_serve(2) && !view.serves(2),
            "renewed since: taken again"
        );
        // The lease went elsewhere (the agent made it a standby): left alone.
        let mut seen = None;
        overtaken(&cfg, 3, found, &mut seen);
        assert!(seen.is_some());
        view.set_role(3, Role::Standby);
        view.set_ready(3, false);
        overtaken(&cfg, 3, found, &mut seen);
        assert_eq!(seen, None);
    }

    #[test]
    fn message_ids_round_trip() {
        let id = message_id(0xfeed, 12, 5, 900);
        assert_eq!(id, "000000000000feed.12.5.900");
        assert_eq!(parse_message_id(&id), Some((0xfeed, 12, 5, 900)));
        let fence = fence_id(0xfeed, 12, 900, 77);
        assert_eq!(fence, "000000000000feed.12.901.900.77");
        assert_eq!(parse_message_id(&fence), Some((0xfeed, 12, 901, 900)));
        for bad in [
            "",
            "feed.1.2",
            "feed.1.2.3.4",
            "feed.1.3.2.x",
            "feed.1.3.2.4.5",
            "zz.1.2.3",
            "feed.x.2.3",
        ] {
            assert_eq!(parse_message_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_batch_that_fits_is_one_part() {
        let parts = split(1, batch(10, 5), 1 << 20);
        assert_eq!(parts.len(), 1);
        let p = &parts[0];
        assert_eq!(
            (p.core, p.local, p.first, p.last, p.ends_batch),
            (1, 3, 10, 14, true)
        );
        assert_eq!(seqs(&p.payload), (10..=14).collect::<Vec<_>>());
    }

    #[test]
    fn a_large_batch_is_cut_at_record_boundaries() {
        let job = batch(1, 100);
        let record = job.bytes.len() / 100;
        let parts = split(0, job, record * 30 + record / 2);
        let got: Vec<(u64, u64, bool)> = parts
            .iter()
            .map(|p| (p.first, p.last, p.ends_batch))
            .collect();
        assert_eq!(
            got,
            [
                (1, 30, false),
                (31, 60, false),
                (61, 90, false),
                (91, 100, true)
            ]
        );
        for p in &parts {
            assert_eq!(seqs(&p.payload), (p.first..=p.last).collect::<Vec<_>>());
            assert!(p.payload.len() <= record * 30 + record / 2);
        }
    }

    #[test]
    fn report_answers_each_batch_once_its_last_part_is_stored() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let job = batch(1, 10);
        let record = job.bytes.len() / 10;
        let mut parts: VecDeque<Part> = split(0, job, record * 4).into();
        parts.extend(split(1, batch(11, 2), 1 << 20));
        report(&mut parts, None, &tx);
        report(&mut parts, Some(8), &tx);
        assert!(rx.try_recv().is_err(), "the first batch ends at 10");
        assert_eq!(parts.len(), 2);
        report(&mut parts, Some(12), &tx);
        let done = |(core, out): ShardOutput| match out {
            ReplOut::Done(d) => (core, d),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            done(rx.try_recv().unwrap()),
            (
                0,
                ReplDone {
                    local: 3,
                    last_seq: 10
                }
            )
        );
        assert_eq!(
            done(rx.try_recv().unwrap()),
            (
                1,
                ReplDone {
                    local: 3,
                    last_seq: 12
                }
            )
        );
        assert!(parts.is_empty());
    }
}
