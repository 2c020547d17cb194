//! Hot standbys and takeovers (`--replicas` 2 or more), on the
//! replication thread.
//!
//! Every node holds a copy of every shard in its cores, but serves only
//! those it holds leases on. For a shard the agent marks this node a
//! standby of ([`Role::Standby`], rule 7 of `cluster::plan`), or one whose
//! lease it took but whose copy is not known complete ([`Role::Owner`]
//! while not [`ClusterView::may_serve`]), a task here:
//!
//! 1. **Reloads** the core's copy: the newest snapshot of the shard in the
//!    object store (`replicate::SNAPSHOT_BUCKET`), or the empty shard when
//!    there is none, replaces the core's shard, and its local journal
//!    starts again from that snapshot ([`ReplOut::Reload`]). What the
//!    local journal held is dropped: a node that lost a shard may have
//!    journaled records the stream never stored (never acknowledged).
//! 2. **Follows** the stream: an ordered consumer delivers every message
//!    after the snapshot; their records go to the core
//!    ([`ReplOut::Records`]), which journals them (same sequence numbers
//!    and engine times) and applies them, discarding their reports. The
//!    batches are rebuilt from the records' engine times, so the copy
//!    takes its snapshots at the same records as the owner
//!    (`--snapshot-every` crossings) and the digests are compared with
//!    the owner's as published in the object store: a mismatch is fatal
//!    (the copy is not exact; the process exits rather than ever serve it).
//! 3. **Takes over** once the agent holds the lease: it reads the stream's
//!    last message, waits until the core has applied every record up to
//!    it, and publishes a *fence*: an empty message (`Nats-Msg-Id`
//!    `<this node>.<shard>.<L+1>.<L>.<M>`, no records) conditional on that last
//!    message. Once the fence is stored, no publish of the old owner can
//!    follow (each is conditional on the message before it), so the copy
//!    holds every record the stream will ever have before this node's
//!    own. Then the shard is ready ([`ClusterView::set_ready`]) and the
//!    agent serves it. The new owner's first record is a `DetachSessions`
//!    (the old owner's sessions are not this node's).
//!
//! A node whose lease names itself and whose stream it wrote last (or an
//! empty stream) needs none of this: its own journal is the shard's, and
//! any records in it the stream lacks are published first
//! (`replicate::fill_gap`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use bytes::Bytes;
use futures_lite::StreamExt;
use tokio::sync::{mpsc, watch};

use super::replicate::{
    Last, ReplConfig, ReplOut, SNAPSHOT_BUCKET, ShardOutput, ensure_stream, fence_id, id_header,
    parse_message_id, read_last, snapshot_object, stream_name, subject,
};
use crate::cluster::view::Role;
use crate::journal;

/// The pause before trying again after a failure (NATS unreachable, a
/// stream purged past the copy).
const RETRY: Duration = Duration::from_millis(250);
/// How often a task looks at its role (and tries a takeover).
const TICK: Duration = Duration::from_millis(20);
/// How often a standby compares its digests with the owner's snapshot.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// The standby's own snapshot digests kept for comparison.
const CHECKS_KEPT: usize = 16;

/// One shard's task and what the cores tell it.
struct Task {
    handle: tokio::task::JoinHandle<()>,
    /// (reload epoch, last record applied) as the core reports it.
    applied: watch::Sender<(u64, u64)>,
    /// The core's own snapshots: (covers, digest).
    checks: mpsc::UnboundedSender<(u64, u64)>,
}

/// The standby tasks of the replication thread.
pub(super) struct Standbys {
    cores: usize,
    tasks: HashMap<u32, Task>,
    /// Reloads so far per shard (epochs never repeat within a process).
    epochs: HashMap<u32, u64>,
}

impl Standbys {
    pub(super) fn new(cores: usize) -> Standbys {
        Standbys {
            cores: cores.max(1),
            tasks: HashMap::new(),
            epochs: HashMap::new(),
        }
    }

    /// Starts a task for each shard that needs one and ends those no
    /// longer wanted (the node is neither standby nor taking over).
    pub(super) fn steer(
        &mut self,
        js: &jetstream::Context,
        cfg: &Arc<ReplConfig>,
        out: &mpsc::UnboundedSender<ShardOutput>,
    ) {
        let view = &cfg.view;
        for shard in 0..view.shard_count() {
            let wanted = match view.role(shard) {
                Role::Standby => true,
                Role::Owner => !view.may_serve(shard),
                Role::None => false,
            };
            let running = self
                .tasks
                .get(&shard)
                .is_some_and(|t| !t.handle.is_finished());
            if wanted && !running {
                let epoch = self.epochs.entry(shard).or_default();
                let (applied_tx, applied_rx) = watch::channel((0, 0));
                let (checks_tx, checks_rx) = mpsc::unbounded_channel();
                let core = shard as usize % self.cores;
                let local = (shard as usize / self.cores) as u32;
                let handle = tokio::spawn(follow(
                    js.clone(),
                    Arc::clone(cfg),
                    Where { shard, core, local },
                    out.clone(),
                    applied_rx,
                    checks_rx,
                    *epoch,
                ));
                // Each task reloads once at most per RELOADS_PER_TASK.
                *epoch += RELOADS_PER_TASK;
                self.tasks.insert(
                    shard,
                    Task {
                        handle,
                        applied: applied_tx,
                        checks: checks_tx,
                    },
                );
            } else if !wanted
                && view.role(shard) == Role::None
                && let Some(t) = self.tasks.remove(&shard)
            {
                t.handle.abort();
            }
        }
    }

    /// A core applied a standby's records through `seq`.
    pub(super) fn applied(&mut self, shard: u32, epoch: u64, seq: u64) {
        if let Some(t) = self.tasks.get(&shard) {
            let _ = t.applied.send((epoch, seq));
        }
    }

    /// A core's standby copy took a snapshot.
    pub(super) fn check(&mut self, shard: u32, covers_seq: u64, digest: u64) {
        if let Some(t) = self.tasks.get(&shard) {
            let _ = t.checks.send((covers_seq, digest));
        }
    }
}

/// A snapshot read that gets no bytes for this long is given up (and the
/// reload tried again).
const SNAPSHOT_STALL: Duration = Duration::from_secs(5);

/// The most a snapshot read reserves up front (it grows past it as bytes
/// come).
const SNAPSHOT_RESERVE_MAX: usize = 64 << 20;

/// A reload that the core has not done after this long is logged.
const RELOAD_SLOW: Duration = Duration::from_secs(5);

/// Epochs reserved per task: a task reloads at most this many times
/// before it gives up and the next task (with the next epochs) starts.
const RELOADS_PER_TASK: u64 = 1 << 20;

/// A shard and where its copy lives.
#[derive(Clone, Copy)]
struct Where {
    shard: u32,
    core: usize,
    local: u32,
}

/// The newest snapshot of `shard` in the object store: (covers, digest,
/// the node that published it (0: not said), body), or `None` when there
/// is none.
async fn fetch_snapshot(
    js: &jetstream::Context,
    shard: u32,
) -> Result<Option<(u64, u64, u64, Vec<u8>)>, String> {
    // A bucket that does not exist means no snapshot was ever published;
    // one that cannot be opened now is tried again (taken as "none", the
    // copy would start empty and reload at the stream's first record).
    let store = match js.get_object_store(SNAPSHOT_BUCKET).await {
        Ok(store) => store,
        Err(e) => {
            return match js.get_stream(format!("OBJ_{SNAPSHOT_BUCKET}")).await {
                Err(g) if no_such_stream(&g) => Ok(None),
                _ => Err(format!("opening the snapshot store: {e}")),
            };
        }
    };
    let mut object = match store.get(snapshot_object(shard)).await {
        Ok(o) => o,
        Err(e) if e.kind() == jetstream::object_store::GetErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(format!("reading its snapshot: {e}")),
    };
    let meta = |key: &str| object.info.metadata.get(key).cloned().unwrap_or_default();
    let covers: u64 = meta("covers_seq")
        .parse()
        .map_err(|_| "its snapshot has no covers_seq".to_string())?;
    let digest = u64::from_str_radix(&meta("digest"), 16)
        .map_err(|_| "its snapshot has no digest".to_string())?;
    let node = u64::from_str_radix(&meta("node"), 16).unwrap_or(0);
    // Read with a bound on each wait, not on the whole (a large snapshot
    // may take long; one whose chunks stop coming must not hold the copy
    // up for good).
    // (The size is the object's own word: what is reserved is bounded.)
    let mut body = Vec::with_capacity(object.info.size.min(SNAPSHOT_RESERVE_MAX));
    let mut chunk = vec![0u8; 256 << 10];
    loop {
        let read = tokio::time::timeout(SNAPSHOT_STALL, async {
            tokio::io::AsyncReadExt::read(&mut object, &mut chunk).await
        })
        .await
        .map_err(|_| {
            format!(
                "reading its snapshot: no bytes for {} s after {} of {}",
                SNAPSHOT_STALL.as_secs(),
                body.len(),
                object.info.size
            )
        })?
        .map_err(|e| format!("reading its snapshot: {e}"))?;
        if read == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    Ok(Some((covers, digest, node, body)))
}

/// Whether JetStream answered that the stream does not exist (not: it
/// could not be asked).
fn no_such_stream(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(err)
        if err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// The owner's newest snapshot's (covers, digest), from its metadata.
async fn owner_digest(js: &jetstream::Context, shard: u32) -> Option<(u64, u64)> {
    let store = js.get_object_store(SNAPSHOT_BUCKET).await.ok()?;
    let info = store.info(snapshot_object(shard)).await.ok()?;
    let covers = info.metadata.get("covers_seq")?.parse().ok()?;
    let digest = u64::from_str_radix(info.metadata.get("digest")?, 16).ok()?;
    Some((covers, digest))
}

/// An ordered consumer of the shard's stream, from message `from` (the
/// first message: `None`), and its messages.
async fn open_messages(
    stream: &stream::Stream,
    shard: u32,
    from: Option<u64>,
) -> Result<consumer::pull::Ordered, String> {
    let deliver_policy = match from {
        None => consumer::DeliverPolicy::All,
        Some(start_sequence) => consumer::DeliverPolicy::ByStartSequence { start_sequence },
    };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject(shard),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    consumer.messages().await.map_err(|e| e.to_string())
}

/// The records of `payload` after `after` (messages may overlap what
/// the copy has, after a reload).
fn records_after(payload: &Bytes, after: u64) -> Bytes {
    let mut at = 0;
    while at < payload.len() {
        match journal::decode_record(&payload[at..]) {
            Ok(Some((r, len))) if r.seq <= after => at += len,
            _ => break,
        }
    }
    payload.slice(at..)
}

/// Why a following ended: reload, or the task is over.
enum Next {
    Reload,
    Done,
}

/// The task of one shard: reload, follow, take over (module docs).
async fn follow(
    js: jetstream::Context,
    cfg: Arc<ReplConfig>,
    at: Where,
    out: mpsc::UnboundedSender<ShardOutput>,
    mut applied: watch::Receiver<(u64, u64)>,
    mut checks: mpsc::UnboundedReceiver<(u64, u64)>,
    first_epoch: u64,
) {
    let shard = at.shard;
    // An owner whose shard has no stream yet wrote nothing anywhere else:
    // its own journal is the shard's, and it serves at once (its first
    // publish creates the stream).
    if cfg.view.role(shard) == Role::Owner
        && let Err(e) = js.get_stream(stream_name(shard)).await
        && no_such_stream(&e)
    {
        cfg.view.set_ready(shard, true);
        return;
    }
    let stream = ensure_stream(&js, &cfg, shard).await;
    if cfg.view.role(shard) == Role::Owner {
        match read_last(&stream, shard).await {
            Last::Records { node, .. } if node != cfg.node => {}
            _ => {
                // This node wrote the stream last (or nobody did): its own
                // journal is the shard's.
                cfg.view.set_ready(shard, true);
                return;
            }
        }
    }
    let mut mine: VecDeque<(u64, u64)> = VecDeque::new();
    for epoch in first_epoch + 1..first_epoch + RELOADS_PER_TASK {
        let following = Following {
            js: &js,
            cfg: &cfg,
            stream: &stream,
            at,
            epoch,
            out: &out,
            trail: std::sync::Mutex::new(Trail::default()),
        };
        match follow_from_snapshot(&following, &mut applied, &mut checks, &mut mine).await {
            Next::Reload => tokio::time::sleep(RETRY).await,
            Next::Done => return,
        }
    }
}

/// One reload of a shard's copy (reload `epoch`) and what it works with.
struct Following<'a> {
    js: &'a jetstream::Context,
    cfg: &'a ReplConfig,
    stream: &'a stream::Stream,
    at: Where,
    epoch: u64,
    out: &'a mpsc::UnboundedSender<ShardOutput>,
    /// The stream messages this copy took, for the log of a digest
    /// mismatch and of a takeover.
    trail: std::sync::Mutex<Trail>,
}

/// A stream message a copy took: (stream sequence, node, first, last,
/// what was done).
type Taken = (u64, u64, u64, u64, Take);

/// Messages kept in [`Trail::recent`].
const TRAIL: usize = 256;
/// Turns kept in [`Trail::turns`].
const TURNS: usize = 64;

/// The stream messages a copy took: the last [`TRAIL`], and the last
/// [`TURNS`] *turns* among all of them: a message from another node than
/// the one before it, a fence, a conflict or a gap. A digest mismatch
/// found at a snapshot hundreds of messages after the histories parted
/// still shows where they may have: at a turn.
#[derive(Default)]
struct Trail {
    recent: VecDeque<Taken>,
    turns: VecDeque<Taken>,
    /// The node of the last message taken (0: none yet).
    node: u64,
}

impl Trail {
    fn push(&mut self, entry: Taken) {
        let (_, node, first, last, what) = entry;
        let turn = (self.node != 0 && node != self.node)
            || last < first
            || matches!(what, Take::Conflict | Take::Gap);
        self.node = node;
        if turn {
            if self.turns.len() >= TURNS {
                self.turns.pop_front();
            }
            self.turns.push_back(entry);
        }
        if self.recent.len() >= TRAIL {
            self.recent.pop_front();
        }
        self.recent.push_back(entry);
    }

    /// `entries` as `message:node:first-last:what`, oldest first.
    fn text<'a>(entries: impl Iterator<Item = &'a Taken>) -> String {
        entries
            .map(|(msg, node, first, last, what)| {
                format!("{msg}:{node:016x}:{first}-{last}:{what:?}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Following<'_> {
    fn remember(&self, entry: Taken) {
        self.trail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry);
    }

    /// The turns, then the last messages, as text.
    fn trail_text(&self) -> String {
        let trail = self.trail.lock().unwrap_or_else(|p| p.into_inner());
        format!(
            "turns: {}; last {}: {}",
            Trail::text(trail.turns.iter()),
            trail.recent.len(),
            Trail::text(trail.recent.iter())
        )
    }

    /// The last `n` turns, as text.
    fn turns_text(&self, n: usize) -> String {
        let trail = self.trail.lock().unwrap_or_else(|p| p.into_inner());
        let skip = trail.turns.len().saturating_sub(n);
        Trail::text(trail.turns.iter().skip(skip))
    }
}

/// One reload and what follows it, until a takeover, the end of the role,
/// or a reason to reload again.
async fn follow_from_snapshot(
    copy: &Following<'_>,
    applied: &mut watch::Receiver<(u64, u64)>,
    checks: &mut mpsc::UnboundedReceiver<(u64, u64)>,
    mine: &mut VecDeque<(u64, u64)>,
) -> Next {
    let Following {
        js,
        cfg,
        stream,
        at,
        epoch,
        out,
        ..
    } = *copy;
    let shard = at.shard;
    let view = &cfg.view;
    let snapshot = match fetch_snapshot(js, shard).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("standby: shard {shard}: {e}; retrying");
            return Next::Reload;
        }
    };
    let (covers, digest, node, body) = match snapshot {
        Some((c, d, n, b)) => (c, d, n, Some(b)),
        None => (0, 0, 0, None),
    };
    // A copy being reloaded is never served (an owner that found another
    // node's records after its own, `replicate::overtaken`, may have had
    // its lease renewed in between).
    if !view.may_serve(shard) {
        view.stop(shard);
    }
    let _ = out.send((
        at.core,
        ReplOut::Reload {
            local: at.local,
            epoch,
            covers_seq: covers,
            digest,
            body,
        },
    ));
    // The core answers once its shard and journal are the snapshot's.
    let asked = tokio::time::Instant::now();
    let mut said = false;
    loop {
        if applied.borrow().0 == epoch {
            break;
        }
        if view.role(shard) == Role::None {
            return Next::Done;
        }
        if !said && asked.elapsed() > RELOAD_SLOW {
            said = true;
            tracing::warn!(
                "standby: shard {shard}: its core has not loaded the copy {} s after it was \
                 asked to; still waiting",
                RELOAD_SLOW.as_secs()
            );
        }
        let _ = tokio::time::timeout(TICK * 10, applied.changed()).await;
    }
    tracing::info!(
        "standby: shard {shard}: copy loaded from {}, following {}",
        if covers > 0 {
            format!("the snapshot through record {covers} (node {node:016x}'s)")
        } else {
            "the empty shard".to_string()
        },
        stream_name(shard)
    );
    // The stream message to follow on from when the consumer must be made
    // again (its server went away): reading on needs no reload.
    let mut resume_at: Option<u64> = None;
    // The consumer, when there is one: made again (from `resume_at`) after
    // it fails, at most every RETRY; meanwhile a takeover reads the
    // stream's messages by sequence (`catch_up`), so it never waits for it.
    let mut messages: Option<consumer::pull::Ordered> = None;
    let mut next_open = tokio::time::Instant::now();
    let mut sent = Tip {
        seq: covers,
        node,
        msg: 0,
    };
    let mut tick = tokio::time::interval(TICK);
    let mut last_check = tokio::time::Instant::now();
    let mut agreed = false;
    // When the consumer last delivered a message (or was last looked at
    // for a stall).
    let mut heard = tokio::time::Instant::now();
    // A stall was logged since the last message (said once per stall).
    let mut stall_said = false;
    // A message that could not be judged was logged since the last one
    // taken (said once, not at every try).
    let mut unjudged_said = false;
    loop {
        if messages.is_none() && tokio::time::Instant::now() >= next_open {
            next_open = tokio::time::Instant::now() + RETRY;
            match open_messages(stream, shard, resume_at).await {
                Ok(m) => messages = Some(m),
                Err(e) => tracing::warn!(
                    "standby: shard {shard}: cannot follow {} from message {}: {e}; retrying",
                    stream_name(shard),
                    resume_at.unwrap_or(1)
                ),
            }
        }
        tokio::select! {
            Some(m) = async {
                match messages.as_mut() {
                    Some(ms) => Some(ms.next().await),
                    None => std::future::pending().await,
                }
            } => {
                let m = match m {
                    Some(Ok(m)) => m,
                    other => {
                        let why = match other {
                            Some(Err(e)) => e.to_string(),
                            _ => "its consumer ended".to_string(),
                        };
                        tracing::warn!(
                            "standby: shard {shard}: following {}: {why}; following on from \
                             message {}",
                            stream_name(shard),
                            resume_at.unwrap_or(1)
                        );
                        messages = None;
                        continue;
                    }
                };
                heard = tokio::time::Instant::now();
                stall_said = false;
                let mut msg = 0;
                if let Ok(info) = m.info() {
                    msg = info.stream_sequence;
                    resume_at = Some(msg + 1);
                }
                let id = m.headers.as_ref().and_then(id_header);
                match take_message(copy, &mut sent, id, &m.payload, msg).await {
                    Ok(true) => unjudged_said = false,
                    // Judged again from a new consumer (its message is
                    // known: a turn needs it).
                    Ok(false) => {
                        if !std::mem::replace(&mut unjudged_said, true) {
                            tracing::warn!(
                                "standby: shard {shard}: message {msg} of {} comes from another \
                                 node than the copy's last records, and the message those came in \
                                 ({}) cannot be read again now to check that the stream still \
                                 holds it; reading on from message {msg} in {} ms (and again \
                                 until it can be)",
                                stream_name(shard),
                                sent.msg,
                                RETRY.as_millis()
                            );
                        }
                        resume_at = Some(msg);
                        messages = None;
                        next_open = tokio::time::Instant::now() + RETRY;
                    }
                    Err(gap) => {
                        tracing::warn!("standby: shard {shard}: {gap}: reloading");
                        return Next::Reload;
                    }
                }
            }
            Some(check) = checks.recv() => {
                mine.push_back(check);
                while mine.len() > CHECKS_KEPT {
                    mine.pop_front();
                }
            }
            _ = tick.tick() => {
                match view.role(shard) {
                    Role::None => return Next::Done,
                    Role::Owner if view.may_serve(shard) => return Next::Done,
                    Role::Owner => {
                        match take_over(copy, &mut sent, applied).await {
                            Ok(true) => return Next::Done,
                            Ok(false) => {}
                            Err(gap) => {
                                tracing::warn!("standby: shard {shard}: {gap}: reloading");
                                return Next::Reload;
                            }
                        }
                    }
                    Role::Standby => {
                        if last_check.elapsed() >= CHECK_EVERY {
                            last_check = tokio::time::Instant::now();
                            compare(copy, mine, &mut agreed).await;
                        }
                        if messages.is_some() && heard.elapsed() >= STALL {
                            heard = tokio::time::Instant::now();
                            if let Some(last) = stalled(stream, resume_at).await {
                                if !std::mem::replace(&mut stall_said, true) {
                                    tracing::warn!(
                                        "standby: shard {shard}: its consumer delivered nothing \
                                         for {} s while {} holds messages up to {last}; \
                                         following on from message {} with a new one (and \
                                         again every {} s until one delivers)",
                                        STALL.as_secs(),
                                        stream_name(shard),
                                        resume_at.unwrap_or(1),
                                        STALL.as_secs()
                                    );
                                }
                                messages = None;
                                next_open = tokio::time::Instant::now();
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A consumer that has delivered nothing for this long is looked at: if
/// the stream holds messages it has not delivered, it is made again. (The
/// ordered consumer of async-nats was seen to deliver nothing for 30 s
/// after the server it was made on went away with its machine, the
/// copy falling behind until the stream was trimmed past it.)
const STALL: Duration = Duration::from_secs(3);

/// The stream's last message when it is at or after `resume_at` (the
/// next message the consumer should deliver; `None`: any message),
/// i.e. the consumer is behind; `None` when it is not, or the stream
/// cannot be read now.
async fn stalled(stream: &stream::Stream, resume_at: Option<u64>) -> Option<u64> {
    let mut stream = stream.clone();
    let state = stream.info().await.ok()?.state.clone();
    let behind = state.messages > 0 && state.last_sequence >= resume_at.unwrap_or(1);
    behind.then_some(state.last_sequence)
}

/// Compares the owner's newest snapshot digest with the copy's own at the
/// same record, when the copy has one; a difference is fatal.
async fn compare(copy: &Following<'_>, mine: &mut VecDeque<(u64, u64)>, agreed: &mut bool) {
    let (js, shard) = (copy.js, copy.at.shard);
    let Some((covers, theirs)) = owner_digest(js, shard).await else {
        return;
    };
    let Some(&(_, ours)) = mine.iter().find(|&&(c, _)| c == covers) else {
        return;
    };
    mine.retain(|&(c, _)| c > covers);
    if ours == theirs {
        // Said once per copy (at info), then at debug.
        if !std::mem::replace(agreed, true) {
            tracing::info!(
                "standby: shard {shard}: the copy's digest after record {covers} agrees with \
                 the owner's snapshot ({ours:016x})"
            );
        } else {
            tracing::debug!(
                "standby: shard {shard}: digest at record {covers} agrees with the owner's"
            );
        }
        return;
    }
    tracing::error!(
        "standby: FATAL: the standby copy of shard {shard} has state digest {ours:016x} after \
         record {covers}, the owner's snapshot {theirs:016x}: the copy is not exact, and this \
         node must never serve it; exiting"
    );
    tracing::error!(
        "standby: shard {shard}: the copy's reload (epoch {}) and the stream messages it took \
         (message:node:first-last:what): {}",
        copy.epoch,
        copy.trail_text()
    );
    crate::exit::exit_flushed(STANDBY_MISMATCH_EXIT);
}

/// The exit status of a node whose standby copy differs from the owner's.
pub const STANDBY_MISMATCH_EXIT: i32 = 70;

/// How far the copy has been handed records: the last one's sequence,
/// the node whose message it came in (0: not known, as after a reload
/// from a snapshot that does not say who published it), and that
/// message's stream sequence (0: not known, as after a reload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tip {
    seq: u64,
    node: u64,
    msg: u64,
}

/// What to do with one stream message, by its id's (node, first, last)
/// and how far the copy is: a pure rule, the same on every copy and on a
/// node that reloads to take a shard over again, so that all of them
/// build the same history from the same stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Take {
    /// Nothing new: a fence (no records), or records the copy has.
    Skip,
    /// The records after the copy's last (all of them, or the rest of a
    /// message the copy's snapshot ends inside).
    Records,
    /// Records the copy has, numbered again by another node. Either a
    /// publish that nats-server let through beside another conditional
    /// on the same message (nats-io/nats-server#4320), whose node was
    /// never told it is stored (`replicate::conflict`) and which no copy
    /// applies; or the copy's own records came in a message that the
    /// stream no longer holds (nats-server 2.9 was seen to deliver a
    /// message to a consumer and then lose it, when a network cut took
    /// its stream's raft leader away): [`take_message`] tells the two
    /// apart by reading that message again.
    Conflict,
    /// Another node's message after the one the copy's last records came
    /// in, that does not overlap them: a fence, or records that continue
    /// the copy's. Taken (a fence as [`Take::Skip`], records as
    /// [`Take::Records`]) only once the stream is read to still hold that
    /// message: where it lost it (see [`Take::Conflict`]) and gave its
    /// sequence to the new owner's fence, the new owner's records may
    /// number on from the lost ones' or even come in under them; applied,
    /// they would make a copy that no digest matches.
    Turn,
    /// The message starts after a gap (the stream was trimmed after a
    /// newer snapshot).
    Gap,
}

/// [`Take`] for stream message `msg` (0: its sequence is not known) of
/// `node` with records `first` to `last` (a fence: `last` is `first - 1`),
/// when the copy is at `tip`.
fn take(tip: Tip, msg: u64, node: u64, first: u64, last: u64) -> Take {
    // Another node wrote this message, after the one the copy's last
    // records came in. (An earlier message, as read again by a catch-up or
    // after a reload, is history the copy has.)
    let other = tip.node != 0 && node != tip.node;
    let after = tip.msg != 0 && msg > tip.msg;
    if other && after {
        return if last >= first && first <= tip.seq {
            Take::Conflict
        } else if first > tip.seq + 1 {
            Take::Gap
        } else {
            Take::Turn
        };
    }
    if last < first || last <= tip.seq {
        Take::Skip
    } else if first > tip.seq + 1 {
        Take::Gap
    } else if first <= tip.seq && other {
        // The copy's tip is a snapshot's (its message is not known), and
        // another node's records run over its end.
        Take::Conflict
    } else {
        Take::Records
    }
}

/// Hands the records of one stream message (id `id`, `payload`, stream
/// sequence `msg`, 0 if not known) that follow `sent` to the core, and
/// moves `sent` on ([`take`]). Ok(false): the message cannot be judged
/// now (the copy's own last message could not be read again): the caller
/// takes it again later. Err: the copy must be reloaded (the message
/// starts after a gap: the stream was trimmed past the copy; or the copy
/// holds records the stream no longer has).
async fn take_message(
    copy: &Following<'_>,
    sent: &mut Tip,
    id: Option<&str>,
    payload: &Bytes,
    msg: u64,
) -> Result<bool, String> {
    let (at, epoch) = (copy.at, copy.epoch);
    let Some((node, _, first, last)) = id.and_then(parse_message_id) else {
        return Ok(true);
    };
    let what = take(*sent, msg, node, first, last);
    copy.remember((msg, node, first, last, what));
    match what {
        Take::Skip => return Ok(true),
        Take::Turn => {
            if !still_holds(copy, *sent).await? {
                return Ok(false);
            }
            if last < first {
                return Ok(true);
            }
        }
        Take::Gap => {
            return Err(format!(
                "{} continues at record {first}, the copy is at {} (trimmed after a newer \
                 snapshot, or messages the copy took were lost)",
                stream_name(at.shard),
                sent.seq
            ));
        }
        Take::Conflict => {
            if !still_holds(copy, *sent).await? {
                return Ok(false);
            }
            tracing::warn!(
                "standby: shard {}: {} holds records {first} to {last} of node {node:016x} \
                 after records up to {} of node {:016x}: stored beside them \
                 (nats-io/nats-server#4320) and never acknowledged; skipped",
                at.shard,
                stream_name(at.shard),
                sent.seq,
                sent.node
            );
            return Ok(true);
        }
        Take::Records => {}
    }
    let bytes = records_after(payload, sent.seq);
    let _ = copy.out.send((
        at.core,
        ReplOut::Records {
            local: at.local,
            epoch,
            bytes,
        },
    ));
    *sent = Tip {
        seq: last,
        node,
        msg,
    };
    Ok(true)
}

/// Whether the stream still holds, at `tip.msg`, the message that brought
/// the copy its last records: Ok(true) yes (or the copy does not know
/// which message it was: its tip is a snapshot's), Ok(false) it cannot
/// be read now, Err when it holds something else: the copy applied
/// records the stream lost, and must be reloaded.
async fn still_holds(copy: &Following<'_>, tip: Tip) -> Result<bool, String> {
    if tip.msg == 0 {
        return Ok(true);
    }
    let name = stream_name(copy.at.shard);
    let m = match copy.stream.get_raw_message(tip.msg).await {
        Ok(m) => m,
        Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {
            return Err(format!(
                "the copy's records up to {} came in message {} of {name}, which the stream \
                 no longer holds",
                tip.seq, tip.msg
            ));
        }
        Err(_) => return Ok(false),
    };
    let id = id_header(&m.headers);
    match id.and_then(parse_message_id) {
        Some((node, _, _, last)) if node == tip.node && last == tip.seq => Ok(true),
        _ => Err(format!(
            "the copy's records up to {} came in message {} of {name} from node {:016x}, \
             which the stream no longer holds (it holds {} there): the copy applied records \
             the stream lost",
            tip.seq,
            tip.msg,
            tip.node,
            id.unwrap_or("no turbo-dex message")
        )),
    }
}

/// The stream's messages after the copy's last record, read one by one
/// by sequence up to message `upto` (the stream's last): a takeover does
/// not wait for the consumer, which may be stale (its server died with
/// the old owner's machine, and it notices only after its heartbeats
/// stop). True once every message through `upto` was taken ([`take`]);
/// false when one could not be read (tried again at the next tick).
async fn catch_up(copy: &Following<'_>, sent: &mut Tip, upto: u64) -> Result<bool, String> {
    let stream = copy.stream;
    let mut info = stream.clone();
    let first = match info.info().await {
        Ok(i) => i.state.first_sequence,
        Err(_) => return Ok(false),
    };
    // Back from the newest message to one the copy has whole (or the
    // stream's first): the messages after it are taken in order, so that
    // the first to hold the copy's next record is the one applied (a
    // later one with the same records is a conflict, never applied).
    let mut from = upto;
    while from > first {
        match stream.get_raw_message(from).await {
            Ok(m) => match id_header(&m.headers).and_then(parse_message_id) {
                Some((_, _, _, l)) if l <= sent.seq => break,
                _ => from -= 1,
            },
            Err(_) => from -= 1, // purged or not a turbo-dex message
        }
    }
    for seq in from..=upto {
        let Ok(m) = stream.get_raw_message(seq).await else {
            return Ok(false);
        };
        if !take_message(copy, sent, id_header(&m.headers), &m.payload, seq).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One takeover attempt: when the copy has every record of the stream,
/// publish the fence after the stream's last message; true once it is
/// stored (the shard is ready).
async fn take_over(
    copy: &Following<'_>,
    sent: &mut Tip,
    applied: &watch::Receiver<(u64, u64)>,
) -> Result<bool, String> {
    let Following {
        js,
        cfg,
        stream,
        at,
        epoch,
        ..
    } = *copy;
    let shard = at.shard;
    let (last, seq) = match read_last(stream, shard).await {
        Last::Empty => (0, 0),
        Last::Records { last, seq, .. } => (last, seq),
    };
    // Once every message through the last is taken, the copy has the
    // stream's history (records of a conflict after it are not part of it).
    if last > sent.seq && !catch_up(copy, sent, seq).await? {
        return Ok(false);
    }
    let (e, done) = *applied.borrow();
    if e != epoch || done < sent.seq {
        return Ok(false); // the core is still applying them
    }
    // A copy that applied a message the stream lost (see `Take::Conflict`)
    // must not build on it as the owner: the message its last records came
    // in must still be there.
    if !still_holds(copy, *sent).await? {
        return Ok(false);
    }
    let fence = PublishMessage::build()
        .payload(Bytes::new())
        // The fence says where this node's records go on: after the
        // copy's last (a node reading it as the stream's last takes that
        // as stored).
        .message_id(fence_id(cfg.node, shard, sent.seq, seq))
        .expected_last_subject_sequence(seq);
    let stored = async {
        let ack = js
            .send_publish(subject(shard), fence)
            .await
            .map_err(|e| e.to_string())?;
        ack.await.map_err(|e| e.to_string())
    }
    .await;
    match stored {
        // Conditional on message `seq`, the fence should be stored right
        // after it; it was stored later when a publish of the old owner,
        // conditional on the same message and checked before the fence
        // was applied, went in first (nats-io/nats-server#4320). That
        // owner was told its batch is stored and acknowledged it, and
        // this copy lacks it: serving now would build on a history
        // without it. Reload (its records are before the fence in the
        // stream) and fence again.
        Ok(ack) if ack.sequence != seq + 1 => Err(format!(
            "its fence was stored at message {} of {}, not {}: another node's publish went \
             in between (nats-io/nats-server#4320)",
            ack.sequence,
            stream_name(shard),
            seq + 1
        )),
        Ok(_) => {
            tracing::info!(
                "standby: shard {shard}: took over after record {} ({} fenced at message \
                 {}; the copy's last records came from node {:016x} in message {}); serving it \
                 (the last turns of the stream it took, message:node:first-last:what: {})",
                sent.seq,
                stream_name(shard),
                seq + 1,
                sent.node,
                sent.msg,
                copy.turns_text(4)
            );
            cfg.view.set_ready(shard, true);
            Ok(true)
        }
        Err(e) => {
            tracing::debug!("standby: shard {shard}: fence not stored ({e}); catching up again");
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::{Command, Op, SessionId};
    use wire::{NewOrder, Side};

    const O: u64 = 0xa;
    const N: u64 = 0xb;

    /// A copy whose last records came in stream message 7.
    fn tip(seq: u64, node: u64) -> Tip {
        Tip { seq, node, msg: 7 }
    }

    /// The seed-1004 run: the copy had 1917-1918 of node O in message
    /// 660, which the stream lost and gave to N's fence "after 1916".
    const LOST: Tip = Tip {
        seq: 1918,
        node: O,
        msg: 660,
    };

    /// A copy just loaded from a snapshot through `seq` that `node`
    /// published (its message is not known).
    fn snap(seq: u64, node: u64) -> Tip {
        Tip { seq, node, msg: 0 }
    }

    #[test]
    fn a_copy_takes_the_records_that_continue_it() {
        // Records 951-960 in message 8 after a copy at 950 from message 7.
        assert_eq!(take(tip(950, O), 8, O, 951, 960), Take::Records);
        // The rest of a message the copy's snapshot ends inside.
        assert_eq!(take(snap(955, O), 8, O, 951, 960), Take::Records);
        // After a snapshot, whoever wrote them.
        assert_eq!(take(snap(950, O), 8, N, 951, 960), Take::Records);
        // A snapshot that does not say who published it: as before.
        assert_eq!(take(snap(955, 0), 8, N, 951, 960), Take::Records);
    }

    #[test]
    fn another_nodes_message_after_the_copys_is_a_turn() {
        // Records that continue the copy's, or a fence, of a new writer:
        // taken once the copy's own last message is read to be still there.
        assert_eq!(take(tip(950, O), 8, N, 951, 960), Take::Turn);
        assert_eq!(take(tip(950, O), 8, N, 951, 950), Take::Turn);
        // A fence after fewer records than the copy has (an old owner's
        // batch stored before a new owner's first fence,
        // nats-io/nats-server#4320; or the copy's came in a message the
        // stream lost).
        assert_eq!(take(tip(960, O), 8, N, 951, 950), Take::Turn);
        // N's records 1919 on would continue LOST's as if they were N's.
        assert_eq!(take(LOST, 662, N, 1919, 1925), Take::Turn);
    }

    #[test]
    fn a_copy_skips_fences_and_what_it_has() {
        // A fence of the copy's own writer.
        assert_eq!(take(tip(950, O), 8, O, 951, 950), Take::Skip);
        // A message delivered twice.
        assert_eq!(take(tip(960, O), 7, O, 951, 960), Take::Skip);
        // Earlier messages, of any node, read again by a catch-up or
        // after a reload from a snapshot.
        assert_eq!(take(tip(960, O), 5, N, 941, 950), Take::Skip);
        assert_eq!(take(tip(960, O), 6, N, 951, 950), Take::Skip);
        assert_eq!(take(snap(960, O), 3, N, 900, 955), Take::Skip);
        // Records the copy has, from its own writer (republished).
        assert_eq!(take(tip(960, O), 8, O, 951, 955), Take::Skip);
    }

    #[test]
    fn a_copy_sees_a_gap_after_a_trim() {
        assert_eq!(take(tip(950, O), 8, O, 952, 960), Take::Gap);
        assert_eq!(take(tip(950, O), 8, N, 952, 960), Take::Gap);
        assert_eq!(take(snap(950, O), 8, N, 952, 960), Take::Gap);
    }

    #[test]
    fn another_nodes_records_over_the_copys_are_a_conflict() {
        // Node O's 951-960 then node N's 951-970, stored after them beside
        // its fence (nats-io/nats-server#4320): none of N's is applied,
        // not even 961-970 (N numbers them again after its new takeover).
        assert_eq!(take(tip(960, O), 8, N, 951, 970), Take::Conflict);
        assert_eq!(take(tip(960, O), 8, N, 955, 961), Take::Conflict);
        // Wholly inside the copy's (the seed-1004 run: N's 1917-1918 in
        // message 661, after LOST).
        assert_eq!(take(LOST, 661, N, 1917, 1918), Take::Conflict);
        assert_eq!(take(tip(960, O), 8, N, 951, 955), Take::Conflict);
        // Over the end of a snapshot another node published.
        assert_eq!(take(snap(955, O), 8, N, 951, 960), Take::Conflict);
    }

    #[test]
    fn a_trail_keeps_the_turns_of_a_long_history() {
        let mut trail = Trail::default();
        trail.push((1, O, 1, 10, Take::Records));
        // A fence of N after O's records, then N's records.
        trail.push((2, N, 11, 10, Take::Skip));
        trail.push((3, N, 11, 20, Take::Records));
        for m in 4..1000 {
            trail.push((m, N, m * 10, m * 10 + 9, Take::Records));
        }
        trail.push((1000, O, 11, 15, Take::Conflict));
        let msgs: Vec<u64> = trail.turns.iter().map(|t| t.0).collect();
        assert_eq!(msgs, [2, 1000]);
        assert_eq!(trail.recent.len(), TRAIL);
        assert_eq!(trail.recent.back().map(|t| t.0), Some(1000));
        assert_eq!(
            Trail::text(trail.turns.iter()),
            "2:000000000000000b:11-10:Skip 1000:000000000000000a:11-15:Conflict"
        );
    }

    #[test]
    fn records_after_skips_what_the_copy_has() {
        let mut bytes = Vec::new();
        for seq in 5..=9 {
            let cmd = Command {
                session: SessionId::from_raw(1),
                account: 1,
                op: Op::New(NewOrder::limit(seq, 0, Side::Sell, 10, 1)),
            };
            journal::encode_record(&mut bytes, seq, 100, &cmd);
        }
        let payload = Bytes::from(bytes);
        let first = |b: &Bytes| journal::decode_record(b).unwrap().map(|(r, _)| r.seq);
        assert_eq!(first(&records_after(&payload, 0)), Some(5));
        assert_eq!(first(&records_after(&payload, 7)), Some(8));
        assert!(records_after(&payload, 9).is_empty());
    }
}
