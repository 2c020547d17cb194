//! Journal I/O of a core: one write (and fdatasync) per shard and loop
//! iteration, submitted through io_uring; the batch is applied, and its
//! reports leave, only when the write is durable. The journal's state per
//! shard and the background thread are in `../durable.rs`.

use std::io;

use super::super::durable::{
    Done, Inflight, Job, REPL_STALL_NS, ReloadRequest, SEGMENT_RETRY_NS, StandbyRun, can_refuse,
    reject_not_durable,
};
use super::super::monotonic_ns;
use super::route::{Router, apply_batch};
use super::{Core, State};
use crate::book::{Command, Matcher};
use crate::journal;
use crate::server::durable::Snapshot;
use crate::server::replicate::{ReplJob, ReplMsg, ReplOut, ReplSnapshot};

/// A reload that waits this long for its shard's journal is logged.
const RELOAD_WAIT_WARN_NS: u64 = 2_000_000_000;

impl<M: Matcher + Snapshot> Core<M> {
    /// Asks the background thread for the next segment of a shard's journal.
    fn request_segment(&mut self, local: usize) {
        let now = self.st.now_ns;
        let core = self.st.cfg.index;
        let (Some(jobs), Some(log)) = (&self.jobs, self.st.logs.get_mut(local)) else {
            return;
        };
        if log.next_requested || log.next.is_some() || now < log.next_retry_ns {
            return;
        }
        log.next_requested = true;
        let _ = jobs.send(Job::CreateSegment {
            core,
            local,
            id: log.id,
            config: log.config,
            number: log.segment.number() + 1,
        });
    }

    /// Takes the background thread's answers (new segments, or why not).
    pub(super) fn poll_journal_done(&mut self) {
        while let Some(answer) = self.done.as_ref().and_then(|d| d.try_recv().ok()) {
            let (local, result) = match answer {
                Done::Segment { local, result } => (local, result),
                Done::Reloaded {
                    local,
                    epoch,
                    covers_seq,
                    result,
                } => {
                    self.reloaded(local, epoch, covers_seq, result);
                    continue;
                }
            };
            let now = self.st.now_ns;
            let Some(log) = self.st.logs.get_mut(local) else {
                debug_assert!(false, "a segment for local shard {local}");
                self.st.router.counters.internal_errors += 1;
                continue;
            };
            log.next_requested = false;
            match result {
                Ok(segment) => {
                    if let Some(why) = log.next_failed.take() {
                        tracing::info!(
                            "journal: the next segment of {} exists now (was: {why})",
                            log.id
                        );
                    }
                    log.next = Some(segment);
                }
                Err(e) => {
                    log.next_retry_ns = now + SEGMENT_RETRY_NS;
                    let why = format!("cannot create the next journal segment of {}: {e}", log.id);
                    if log.next_failed.as_deref() != Some(why.as_str()) {
                        tracing::warn!(
                            "journal: {why}; retrying every second (orders are rejected as \
                             not durable once the current segment is full)"
                        );
                        log.next_failed = Some(why);
                    }
                }
            }
        }
    }

    /// Starts one write (and fdatasync) per shard whose queue has commands
    /// and no write in flight: group commit of everything that arrived.
    pub(super) fn journal_submit(&mut self) {
        for local in 0..self.st.logs.len() {
            if self.st.logs[local].reload.is_some() {
                self.start_reload(local);
            }
            let log = &self.st.logs[local];
            if log.inflight.is_some() || log.reloading {
                continue;
            }
            if !log.standby.is_empty() {
                self.start_standby_write(local);
                continue;
            }
            if self.st.pending[local].is_empty() {
                continue;
            }
            // In a cluster only a shard this node serves journals commands:
            // a standby copy changes only by its owner's stream, and a
            // shard given up (its lease lost or moved) takes no more.
            if let Some(view) = &self.st.cfg.cluster
                && !view.serves_at(self.st.logs[local].id.shard_index, self.st.cluster_now_ns)
            {
                self.drop_pending(local);
                continue;
            }
            if self.st.logs[local].detach_pending {
                self.detach_sessions(local);
            }
            if self.replication_stalled(local) {
                self.refuse_in_turn(local);
                continue;
            }
            let first_bytes = journal::record_bytes(&self.st.pending[local][0]);
            if self.st.logs[local].write_room() < first_bytes && !self.next_segment(local) {
                continue;
            }
            if self.st.logs[local].wants_next() {
                self.request_segment(local);
            }
            self.start_write(local);
        }
    }

    /// The current segment of a shard is full: continue in the next one.
    /// False when there is none yet (its queue is rejected if none can be made).
    fn next_segment(&mut self, local: usize) -> bool {
        let log = &mut self.st.logs[local];
        if let Some(next) = log.next.take() {
            log.use_segment(next);
            return true;
        }
        self.request_segment(local);
        let log = &mut self.st.logs[local];
        if let Some(why) = log.next_failed.clone() {
            if log.unavailable.is_none() {
                tracing::warn!(
                    "journal: {} is full and {why}: rejecting its orders (journal \
                     unavailable) until space returns",
                    log.id
                );
                log.unavailable = Some(why);
            }
            self.reject_pending(local);
        }
        false
    }

    /// Encodes as many queued commands as the segment has room for and
    /// submits their write.
    fn start_write(&mut self, local: usize) {
        let now = self.st.now_ns;
        let fsync = self.st.cfg.journal_fsync;
        let now_engine_ns = self.st.engine_ns;
        let State { logs, pending, .. } = &mut self.st;
        let log = &mut logs[local];
        // Each batch a later engine time than the last (the wall clock may
        // step back), so that a standby tells the batches apart.
        let engine_ns = now_engine_ns.max(log.last_engine_ns + 1);
        log.last_engine_ns = engine_ns;
        let queue = &mut pending[local];
        let room = log.write_room();
        let mut bytes = 0;
        let mut n = 0;
        for cmd in queue.iter() {
            let b = journal::record_bytes(cmd);
            if bytes + b > room {
                break;
            }
            bytes += b;
            n += 1;
        }
        debug_assert!(n > 0, "the first record fits (checked by the caller)");
        let start = log.begin_write();
        let records_at = log.bytes.len();
        for (i, cmd) in queue[..n].iter().enumerate() {
            journal::encode_record(&mut log.bytes, log.next_seq + i as u64, engine_ns, cmd);
        }
        let len = log.bytes.len() - records_at;
        let mut cmds = std::mem::take(&mut log.batch);
        cmds.clear();
        cmds.extend(queue.drain(..n));
        let (write_len, _offset) = log.end_write(start);
        log.inflight = Some(Inflight {
            cmds,
            engine_ns,
            len,
            start,
            records_at,
            write_len,
            last_seq: log.next_seq + n as u64 - 1,
            started_ns: now,
            failed: None,
            refuse: false,
            standby: false,
        });
        self.ops
            .journal_write(&self.st.logs[local], local as u32, fsync);
    }

    /// Rejects a shard's queued commands while its journal is unavailable
    /// (a CancelSession stays queued: it cannot be refused).
    fn reject_pending(&mut self, local: usize) {
        let State {
            pending, router, ..
        } = &mut self.st;
        let Some(queue) = pending.get_mut(local) else {
            return;
        };
        let refused = take_refusable(queue);
        refuse(router, &refused);
    }

    /// While replication stalls: the shard's queued commands that can be
    /// refused are refused `NotDurable`, not journaled, but answered only
    /// after the batches before them (answers keep request order,
    /// PROTOCOL.md §8.3), as a batch of refusals behind them.
    fn refuse_in_turn(&mut self, local: usize) {
        let (now, engine_ns) = (self.st.now_ns, self.st.engine_ns);
        let State { pending, logs, .. } = &mut self.st;
        let (Some(queue), Some(log)) = (pending.get_mut(local), logs.get_mut(local)) else {
            return;
        };
        let refused = take_refusable(queue);
        if refused.is_empty() {
            return;
        }
        log.replicating.push_back(Inflight {
            cmds: refused,
            engine_ns,
            len: 0,
            start: 0,
            records_at: 0,
            write_len: 0,
            // Answered with the batch journaled last.
            last_seq: log.next_seq.saturating_sub(1),
            started_ns: now,
            failed: None,
            refuse: true,
            standby: false,
        });
    }

    /// A journal write or sync completed.
    pub(super) fn on_journal(&mut self, sync: bool, local: usize, res: i32) {
        let fsync = self.st.cfg.journal_fsync;
        let Some(inflight) = self
            .st
            .logs
            .get_mut(local)
            .and_then(|l| l.inflight.as_mut())
        else {
            debug_assert!(
                false,
                "a journal completion for shard {local} with no write in flight"
            );
            self.st.router.counters.internal_errors += 1;
            return;
        };
        if !sync {
            if res < 0 {
                inflight.failed = Some(io::Error::from_raw_os_error(-res));
            } else if res as usize != inflight.write_len {
                inflight.failed = Some(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write: {res} of {} bytes", inflight.write_len),
                ));
            }
            if fsync {
                return; // the linked sync completes the batch
            }
        } else if res < 0 && inflight.failed.is_none() {
            inflight.failed = Some(io::Error::from_raw_os_error(-res));
        }
        if let Some(batch) = self.st.logs[local].inflight.take() {
            self.journal_done(local, batch);
        }
    }

    /// A batch's write (and sync) finished: apply it (with `--replicas`,
    /// once JetStream has it too), or reject it.
    fn journal_done(&mut self, local: usize, mut batch: Inflight) {
        let now = self.st.now_ns;
        let State { logs, router, .. } = &mut self.st;
        router
            .counters
            .journal_write(now.saturating_sub(batch.started_ns));
        if let Some(e) = batch.failed.take() {
            self.write_failed(local, &mut batch, e);
            batch.cmds.clear();
            self.st.logs[local].batch = batch.cmds;
            return;
        }
        let log = &mut logs[local];
        if let Some(why) = log.unavailable.take() {
            tracing::info!("journal: {} accepts writes again (was: {why})", log.id);
        }
        log.wrote(batch.start, batch.len);
        let first_seq = log.next_seq;
        log.next_seq = batch.last_seq + 1;
        router.counters.journal_bytes += batch.len as u64;
        if batch.standby {
            self.apply_standby(local, batch);
            return;
        }
        if self.repl.is_some() {
            let records = &log.bytes[batch.records_at..batch.records_at + batch.len];
            let job = ReplJob {
                local: local as u32,
                shard: log.id.shard_index,
                first_seq,
                last_seq: batch.last_seq,
                bytes: records.to_vec(),
            };
            batch.started_ns = now;
            log.replicating.push_back(batch);
            self.repl_backlog.push_back(ReplMsg::Batch(job));
            self.repl_submit();
            return;
        }
        self.apply_durable(local, batch);
    }

    /// Applies a batch that is durable (and replicated, with `--replicas`)
    /// and sends its reports.
    fn apply_durable(&mut self, local: usize, mut batch: Inflight) {
        if let Some(shard) = self.st.shards.get_mut(local) {
            let counted = &mut self.st.shard_counters[local];
            apply_batch(
                shard,
                &batch.cmds,
                batch.engine_ns,
                &mut self.st.router,
                counted,
            );
        }
        self.maybe_snapshot(local, batch.cmds.len() as u64, batch.last_seq, false);
        batch.cmds.clear();
        self.st.logs[local].batch = batch.cmds;
    }

    /// Hands the replication thread the batches waiting for room in its ring.
    pub(super) fn repl_submit(&mut self) {
        let Some(link) = self.repl.as_mut() else {
            return;
        };
        while let Some(job) = self.repl_backlog.pop_front() {
            if let Err(job) = link.send(job) {
                self.repl_backlog.push_front(job);
                break;
            }
        }
    }

    /// Applies the batches JetStream has stored, in order, and takes the
    /// replication thread's standby work.
    pub(super) fn poll_replicated(&mut self) {
        let now = self.st.now_ns;
        while let Some(out) = self.repl.as_mut().and_then(|l| l.poll()) {
            let done = match out {
                ReplOut::Done(done) => done,
                ReplOut::Reload {
                    local,
                    epoch,
                    covers_seq,
                    digest,
                    body,
                } => {
                    if let Some(log) = self.st.logs.get_mut(local as usize) {
                        log.reload = Some(ReloadRequest {
                            epoch,
                            covers_seq,
                            digest,
                            body,
                            asked_ns: now,
                            warned: false,
                        });
                    }
                    continue;
                }
                ReplOut::Records {
                    local,
                    epoch,
                    bytes,
                } => {
                    self.standby_records(local as usize, epoch, &bytes);
                    continue;
                }
                ReplOut::Lost { local } => {
                    self.lost(local as usize);
                    continue;
                }
            };
            let local = done.local as usize;
            loop {
                let Some(log) = self.st.logs.get_mut(local) else {
                    self.st.router.counters.internal_errors += 1;
                    break;
                };
                match log.replicating.front() {
                    Some(b) if b.last_seq <= done.last_seq => {}
                    _ => break,
                }
                let Some(batch) = log.replicating.pop_front() else {
                    break;
                };
                if log.repl_stalled && log.replicating.is_empty() {
                    tracing::info!("replication: {} is stored in JetStream again", log.id);
                    log.repl_stalled = false;
                }
                if batch.refuse {
                    refuse(&mut self.st.router, &batch.cmds);
                    continue;
                }
                self.st
                    .router
                    .counters
                    .replication(now.saturating_sub(batch.started_ns));
                self.apply_durable(local, batch);
            }
        }
    }

    /// With `--replicas`: whether the shard's oldest batch has waited for
    /// JetStream past [`REPL_STALL_NS`] (said once per episode; the end of
    /// one is said in `poll_replicated`).
    fn replication_stalled(&mut self, local: usize) -> bool {
        let now = self.st.now_ns;
        let log = &mut self.st.logs[local];
        let stalled = log
            .replicating
            .front()
            .is_some_and(|b| now.saturating_sub(b.started_ns) > REPL_STALL_NS);
        if stalled && !log.repl_stalled {
            tracing::warn!(
                "replication: {} has waited over {} s for JetStream to store a batch; its \
                 new orders are rejected (not durable) until it does",
                log.id,
                REPL_STALL_NS / 1_000_000_000
            );
            log.repl_stalled = true;
        }
        stalled
    }

    /// True while a batch waits for JetStream (or for room in the ring).
    pub(super) fn replicating(&self) -> bool {
        !self.repl_backlog.is_empty() || self.st.logs.iter().any(|l| !l.replicating.is_empty())
    }

    /// A write failed: reject its batch (keeping what cannot be refused for
    /// the next write) and say why, once per episode.
    fn write_failed(&mut self, local: usize, batch: &mut Inflight, e: io::Error) {
        let State {
            logs,
            pending,
            router,
            ..
        } = &mut self.st;
        let log = &mut logs[local];
        log.write_failed(batch.write_len);
        if e.raw_os_error() == Some(libc::EINVAL) && log.segment.is_direct() {
            tracing::error!(
                "journal: a direct write to {} was refused as misaligned; \
                 writing through the page cache from now on",
                log.segment.path().display()
            );
            log.fall_back_to_buffered();
        }
        let why = format!(
            "journal write to {} failed: {e}",
            log.segment.path().display()
        );
        if log.unavailable.as_deref() != Some(why.as_str()) {
            tracing::warn!(
                "journal: {why}; the batch is rejected (journal unavailable) and retried"
            );
            log.unavailable = Some(why);
        }
        // Commands that cannot be refused go back to the front of the queue.
        let refused = take_refusable(&mut batch.cmds);
        refuse(router, &refused);
        if !batch.cmds.is_empty() {
            pending[local].splice(0..0, batch.cmds.drain(..));
        }
    }

    /// Snapshots a shard once enough records were applied since the last.
    /// Takes a snapshot after a batch that crossed a multiple of
    /// `--snapshot-every` records (so that a standby copy, which rebuilds
    /// the same batches, takes it at the same record and the digests can
    /// be compared).
    fn maybe_snapshot(&mut self, local: usize, applied: u64, covers_seq: u64, standby: bool) {
        let every = self.st.cfg.snapshot_every_records.max(1);
        let State {
            logs,
            shards,
            router,
            ..
        } = &mut self.st;
        let log = &mut logs[local];
        if covers_seq / every == covers_seq.saturating_sub(applied) / every {
            return;
        }
        let (Some(shard), Some(jobs)) = (shards.get(local), &self.jobs) else {
            return;
        };
        let started = monotonic_ns();
        let mut body = Vec::new();
        if let Some(digest) = shard.snapshot(&mut body) {
            router.counters.snapshots += 1;
            router.counters.snapshot_ns += monotonic_ns().saturating_sub(started);
            if standby {
                self.repl_backlog.push_back(ReplMsg::Check {
                    shard: log.id.shard_index,
                    covers_seq,
                    digest,
                });
            } else if self.repl.is_some() {
                self.repl_backlog.push_back(ReplMsg::Snapshot(ReplSnapshot {
                    shard: log.id.shard_index,
                    covers_seq,
                    digest,
                    body: body.clone(),
                }));
            }
            let _ = jobs.send(Job::WriteSnapshot {
                id: log.id,
                covers_seq,
                digest,
                body,
            });
        }
    }

    /// Sends the housekeeper a waiting reload once the shard's journal is
    /// idle (no write in flight, nothing waiting for JetStream, no segment
    /// being made). Queued commands of the shard are refused: a standby
    /// serves none.
    fn start_reload(&mut self, local: usize) {
        let core = self.st.cfg.index;
        let now = self.st.now_ns;
        let State {
            logs,
            pending,
            router,
            ..
        } = &mut self.st;
        let log = &mut logs[local];
        if log.inflight.is_some()
            || !log.replicating.is_empty()
            || log.next_requested
            || log.reloading
        {
            if let Some(req) = log.reload.as_mut()
                && !req.warned
                && now.saturating_sub(req.asked_ns) > RELOAD_WAIT_WARN_NS
            {
                req.warned = true;
                tracing::warn!(
                    "standby: the reload of {} has waited {} ms for its journal to be idle \
                     (write in flight: {}, batches waiting for JetStream: {}, next segment \
                     asked for: {}, reloading: {})",
                    log.id,
                    now.saturating_sub(req.asked_ns) / 1_000_000,
                    log.inflight.is_some(),
                    log.replicating.len(),
                    log.next_requested,
                    log.reloading
                );
            }
            return;
        }
        let (Some(jobs), Some(req)) = (&self.jobs, log.reload.take()) else {
            return;
        };
        drop_queue(router, &mut pending[local]);
        log.standby.clear();
        log.standby_epoch = req.epoch;
        log.reloading = true;
        let _ = jobs.send(Job::Reload {
            core,
            local,
            id: log.id,
            config: log.config,
            covers_seq: req.covers_seq,
            digest: req.digest,
            body: req.body,
            // Past the current segment and any next one being made: the
            // reload removes both.
            number: log.segment.number() + 2,
            epoch: req.epoch,
        });
    }

    /// The housekeeper built a reloaded standby copy: it replaces the shard,
    /// its journal continues in the new segment, and the replication
    /// thread hears that the copy is at `covers_seq`.
    fn reloaded(
        &mut self,
        local: usize,
        epoch: u64,
        covers_seq: u64,
        result: Result<crate::server::durable::Reloaded, String>,
    ) {
        let Some(log) = self.st.logs.get_mut(local) else {
            self.st.router.counters.internal_errors += 1;
            return;
        };
        log.reloading = false;
        let reloaded = result.and_then(|r| {
            self.st
                .shards
                .get_mut(local)
                .ok_or_else(|| format!("no local shard {local}"))?
                .replace_with(r.shard)?;
            Ok(r.segment)
        });
        let log = &mut self.st.logs[local];
        match reloaded {
            Ok(segment) => {
                log.use_segment(segment);
                log.next = None;
                log.next_requested = false;
                log.next_seq = covers_seq + 1;
                if !log.detach_pending
                    && let Some(view) = &self.st.cfg.cluster
                {
                    view.sessions_detached(log.id.shard_index);
                }
                log.detach_pending = true;
                log.unavailable = None;
                let shard = log.id.shard_index;
                self.repl_backlog.push_back(ReplMsg::Applied {
                    shard,
                    epoch,
                    seq: covers_seq,
                });
                self.repl_submit();
            }
            Err(e) => tracing::error!(
                "standby: {} cannot be reloaded: {e}; it is neither served nor followed here",
                log.id
            ),
        }
    }

    /// Records of a standby copy's stream: rebuilt into the owner's batches
    /// (by engine time) and queued to journal and apply.
    fn standby_records(&mut self, local: usize, epoch: u64, bytes: &[u8]) {
        let Some(log) = self.st.logs.get_mut(local) else {
            self.st.router.counters.internal_errors += 1;
            return;
        };
        if epoch != log.standby_epoch || log.reloading || log.reload.is_some() {
            return; // from before the reload that is under way
        }
        let mut at = 0;
        while at < bytes.len() {
            let (record, len) = match journal::decode_record(&bytes[at..]) {
                Ok(Some(r)) => r,
                other => {
                    tracing::error!(
                        "standby: a message of {}'s stream does not decode at byte {at}:                          {other:?}; the copy stops here",
                        log.id
                    );
                    self.st.router.counters.internal_errors += 1;
                    return;
                }
            };
            at += len;
            match log.standby.back_mut() {
                Some(run)
                    if run.engine_ns == record.engine_ns
                        && run.first_seq + run.cmds.len() as u64 == record.seq =>
                {
                    run.cmds.push(record.cmd);
                }
                _ => log.standby.push_back(StandbyRun {
                    engine_ns: record.engine_ns,
                    first_seq: record.seq,
                    cmds: vec![record.cmd],
                }),
            }
        }
    }

    /// Journals a standby copy's next batch (its records exactly as the
    /// owner journaled them).
    fn start_standby_write(&mut self, local: usize) {
        let now = self.st.now_ns;
        let fsync = self.st.cfg.journal_fsync;
        let log = &mut self.st.logs[local];
        let Some(run) = log.standby.front() else {
            return;
        };
        if run.first_seq != log.next_seq {
            tracing::error!(
                "standby: {} expected record {} of its stream, got {}: the copy stops here",
                log.id,
                log.next_seq,
                run.first_seq
            );
            log.standby.clear();
            self.st.router.counters.internal_errors += 1;
            return;
        }
        let bytes: usize = run.cmds.iter().map(journal::record_bytes).sum();
        if log.write_room() < bytes {
            if !self.next_segment(local) {
                return;
            }
            if self.st.logs[local].wants_next() {
                self.request_segment(local);
            }
        }
        let log = &mut self.st.logs[local];
        let Some(run) = log.standby.pop_front() else {
            return;
        };
        let start = log.begin_write();
        let records_at = log.bytes.len();
        for (i, cmd) in run.cmds.iter().enumerate() {
            journal::encode_record(&mut log.bytes, run.first_seq + i as u64, run.engine_ns, cmd);
        }
        let len = log.bytes.len() - records_at;
        let (write_len, _offset) = log.end_write(start);
        log.last_engine_ns = log.last_engine_ns.max(run.engine_ns);
        let last_seq = run.first_seq + run.cmds.len() as u64 - 1;
        log.inflight = Some(Inflight {
            cmds: run.cmds,
            engine_ns: run.engine_ns,
            len,
            start,
            records_at,
            write_len,
            last_seq,
            started_ns: now,
            failed: None,
            refuse: false,
            standby: true,
        });
        self.ops
            .journal_write(&self.st.logs[local], local as u32, fsync);
    }

    /// A standby batch is durable here: applied, its reports discarded,
    /// and the replication thread told how far the copy is.
    fn apply_standby(&mut self, local: usize, batch: Inflight) {
        if let Some(shard) = self.st.shards.get_mut(local) {
            let mut discard = crate::book::workload::DiscardSink::default();
            shard.process_batch(&batch.cmds, batch.engine_ns, &mut discard);
        }
        self.maybe_snapshot(local, batch.cmds.len() as u64, batch.last_seq, true);
        let log = &mut self.st.logs[local];
        if !log.detach_pending
            && let Some(view) = &self.st.cfg.cluster
        {
            view.sessions_detached(log.id.shard_index);
        }
        log.detach_pending = true;
        let (shard, epoch) = (log.id.shard_index, log.standby_epoch);
        self.repl_backlog.push_back(ReplMsg::Applied {
            shard,
            epoch,
            seq: batch.last_seq,
        });
        self.repl_submit();
    }

    /// The first batch of a shard this node serves after following
    /// another node's stream starts with a `DetachSessions`: the resting
    /// orders name the other node's sessions, whose ids mean other
    /// connections here (journaled and replicated like any command, so
    /// every copy detaches them at the same record).
    fn detach_sessions(&mut self, local: usize) {
        let log = &mut self.st.logs[local];
        let serves = self
            .st
            .cfg
            .cluster
            .as_ref()
            .is_some_and(|v| v.serves(log.id.shard_index));
        if !serves {
            return;
        }
        log.detach_pending = false;
        self.st.pending[local].insert(
            0,
            Command {
                session: crate::book::SessionId::NONE,
                account: 0,
                op: crate::book::Op::DetachSessions,
            },
        );
    }

    /// Empties a shard's queue without journaling it ([`drop_queue`]).
    fn drop_pending(&mut self, local: usize) {
        let State {
            pending, router, ..
        } = &mut self.st;
        drop_queue(router, &mut pending[local]);
    }

    /// This node lost the shard while batches waited for JetStream: they
    /// never will be stored, so they are refused (`NotDurable`) in order
    /// and never applied.
    fn lost(&mut self, local: usize) {
        let State { logs, router, .. } = &mut self.st;
        let Some(log) = logs.get_mut(local) else {
            router.counters.internal_errors += 1;
            return;
        };
        for batch in log.replicating.drain(..) {
            refuse(router, &batch.cmds);
        }
        log.repl_stalled = false;
    }

    /// True while any journal write is in flight.
    pub(super) fn journal_busy(&self) -> bool {
        self.st.logs.iter().any(|l| l.inflight.is_some())
    }
}

/// Empties the queue of a shard this node does not serve (any more, or
/// only copies): requests are refused `NotDurable`; the rest
/// (cancel-on-disconnect, a MassCancel, the kill switch) is dropped, each
/// counted as processed for a session that waits on it. (Left queued, they
/// were journaled into a standby copy after its reload, ahead of the
/// owner's records, and the copy stopped.)
fn drop_queue(router: &mut Router, queue: &mut Vec<Command>) {
    let refused = take_refusable(queue);
    refuse(router, &refused);
    router.batch_processed(queue);
    queue.clear();
}

/// Takes the commands of `queue` that can be refused ([`can_refuse`]) out
/// of it, in order; the others stay, in order.
fn take_refusable(queue: &mut Vec<Command>) -> Vec<Command> {
    let mut refused = Vec::new();
    queue.retain(|cmd| {
        let refusable = can_refuse(cmd);
        if refusable {
            refused.push(*cmd);
        }
        !refusable
    });
    refused
}

/// Answers each of `cmds` (all refusable) `Rejected(NotDurable)`, counts
/// them as journal rejects, and tells the session layer they are done.
fn refuse(router: &mut Router, cmds: &[Command]) {
    for cmd in cmds {
        reject_not_durable(cmd, router);
    }
    router.counters.journal_rejects += cmds.len() as u64;
    router.batch_processed(cmds);
}
