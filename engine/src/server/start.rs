//! Starting a server, one named step at a time: validate, listen, share,
//! build the mesh, place the shards, open the journal, spawn the cores
//! (each creates or recovers its shards on its own CPU), wait for ready.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use wire::SymbolEntry;

use super::auth::{self, AuthLink, Verdict};
use super::core::{
    Core, CoreConfig, CoreExit, CoreJournal, Mesh, Msg, Placement, SessionConfig, global_shard,
    placement_table, shards_on_core,
};
use super::durable::{Housekeeper, ShardLog, Snapshot, lock_journal};
use super::limits::{LISTEN_BACKLOG, validate};
use super::stats::{CoreStats, Counters};
use super::uring::{self, WakeFd};
use super::{
    EngineKind, PaddedFlag, Server, ServerConfig, Shared, StartError, monotonic_ns,
    spawn_stats_thread,
};
use crate::book::{Matcher, NullShard, Shard};
use crate::journal::{self, ShardIdentity};
use crate::session_id::SessionId;

/// What each core reports when it is ready: the highest session sequence
/// its recovered journals name, or why it failed (CPU, reason).
type Ready = Result<u64, (usize, String)>;

pub(super) fn start(cfg: ServerConfig) -> Result<Server, StartError> {
    validate(&cfg).map_err(StartError::Config)?;
    // io_uring's rings and buffers count against RLIMIT_MEMLOCK on older
    // kernels: raise it as far as allowed (the start-up host check
    // explains what to do when it stays low).
    let _ = tuning::raise_memlock(tuning::MEMLOCK_UNLIMITED);
    uring::probe().map_err(StartError::IoUring)?;
    // Listeners first, so a busy port fails before any thread starts.
    let (local_addr, listeners) = listen_all(cfg.listen, cfg.cpus.len())?;
    let shared = share(cfg.cpus.len(), cfg.shards)?;
    // Before recovery, so that /ready can say the server is recovering.
    let admin = match cfg.admin {
        Some(addr) => Some(super::admin::start(addr, &cfg, &shared).map_err(StartError::Admin)?),
        None => None,
    };
    let meshes = build_mesh(cfg.cpus.len(), cfg.ring_capacity);
    let placement: Arc<[Placement]> =
        placement_table(cfg.symbols.len(), cfg.shards, cfg.cpus.len()).into();
    let journal = open_journal(&cfg, &shared)?;
    let mut journal = journal;
    let (md_bridge, feeds) = start_md_bridge(&cfg)?;
    let (replicator, repl_links) = start_replicator(&cfg, &shared)?;
    let (auth_thread, auth) = start_auth(&cfg, &shared)?;
    let mut spawned = spawn_cores(
        &cfg,
        &shared,
        meshes,
        listeners,
        &placement,
        &mut journal,
        (feeds, repl_links),
        auth,
    )?;
    let failure = wait_ready(&mut spawned);
    let Spawned { threads, go, .. } = spawned;
    let mut server = Server {
        local_addr,
        shared,
        threads,
        stats_thread: None,
        stats_stop: Arc::new(AtomicBool::new(false)),
        started: Instant::now(),
        cpus: cfg.cpus.clone(),
        housekeeper: journal.housekeeper,
        _journal_lock: journal.lock,
        admin,
        md_bridge,
        replicator,
        auth_thread,
    };
    if let Err(e) = failure {
        drop(go);
        server.shared.stop_reading.store(true, Ordering::Release);
        server.shared.exit.store(true, Ordering::Release);
        server.shared.kick_all();
        for t in server.threads.drain(..) {
            let _ = t.join();
        }
        return Err(e);
    }
    let recovery_ns = monotonic_ns().saturating_sub(server.shared.started_ns);
    server
        .shared
        .recovery_ns
        .store(recovery_ns, Ordering::Relaxed);
    server.shared.ready.store(true, Ordering::Release);
    if cfg.live_stats {
        server.stats_thread = spawn_stats_thread(
            Arc::clone(&server.shared),
            Arc::clone(&server.stats_stop),
            server.cpus.clone(),
        );
    }
    Ok(server)
}

/// One SO_REUSEPORT listener per core (each core gets its own accept
/// queue), all on the port the first one got.
fn listen_all(
    addr: SocketAddr,
    cores: usize,
) -> Result<(SocketAddr, Vec<TcpListener>), StartError> {
    let first = listen(addr)?;
    let local = first
        .local_addr()
        .map_err(|e| StartError::Listen(addr, e))?;
    let mut listeners = vec![first];
    for _ in 1..cores {
        listeners.push(listen(local)?);
    }
    Ok((local, listeners))
}

fn listen(addr: SocketAddr) -> Result<TcpListener, StartError> {
    tuning::listen_reuseport(addr, LISTEN_BACKLOG).map_err(|e| {
        if e.is_addr_in_use() {
            StartError::AddressInUse(addr)
        } else if e.is_addr_not_available() {
            StartError::AddressNotAvailable(addr)
        } else {
            StartError::Listen(addr, std::io::Error::other(e.to_string()))
        }
    })
}

/// The state the cores and the admin side share.
fn share(cores: usize, shards: u32) -> Result<Arc<Shared>, StartError> {
    let wake_fds = (0..cores)
        .map(|_| WakeFd::new())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError::Config(format!("eventfd: {e}")))?;
    Ok(Arc::new(Shared {
        stats: (0..cores)
            .map(|core| CoreStats::new(shards_on_core(shards, cores, core)))
            .collect(),
        sleeping: (0..cores).map(|_| PaddedFlag::default()).collect(),
        wake_fds: wake_fds.into_boxed_slice(),
        stop_reading: AtomicBool::new(false),
        exit: AtomicBool::new(false),
        conns_live: AtomicUsize::new(0),
        ready: AtomicBool::new(false),
        recovery_ns: AtomicU64::new(0),
        started_ns: monotonic_ns(),
        admission: Arc::default(),
        operator: Default::default(),
    }))
}

/// Each core's link to the auth thread and its verdict queue.
type AuthParts = Vec<(AuthLink, mpsc::Receiver<Verdict>)>;

/// Starts the auth thread when there are accounts; says at start when
/// there are none (any client may log on as any account).
fn start_auth(
    cfg: &ServerConfig,
    shared: &Arc<Shared>,
) -> Result<(Option<JoinHandle<()>>, Option<AuthParts>), StartError> {
    let Some(accounts) = &cfg.accounts else {
        let token = if cfg.auth_token.is_some() {
            " (one shared --auth-token for all of them)"
        } else {
            ""
        };
        tracing::warn!(
            "no --accounts: accounts are not authenticated; a client may log on as any account{token}"
        );
        return Ok((None, None));
    };
    tracing::info!(
        "{} account(s); logons need protocol version 2 and the account's password",
        accounts.len()
    );
    let service = auth::spawn(
        Arc::clone(accounts),
        Arc::clone(shared),
        Arc::clone(&shared.admission),
        cfg.cpus.len(),
        cfg.logon_failures_per_minute,
    )
    .map_err(|e| StartError::Config(format!("cannot start the auth thread: {e}")))?;
    let parts = service.links.into_iter().zip(service.verdicts).collect();
    Ok((Some(service.thread), Some(parts)))
}

/// The full mesh: ring i->j feeds core j from core i.
fn build_mesh(cores: usize, capacity: usize) -> Vec<Mesh> {
    let mut meshes: Vec<Mesh> = (0..cores)
        .map(|_| Mesh {
            to: (0..cores).map(|_| None).collect(),
            from: (0..cores).map(|_| None).collect(),
        })
        .collect();
    for i in 0..cores {
        for j in 0..cores {
            if i != j {
                let (p, c) = rtrb::RingBuffer::<Msg>::new(capacity);
                meshes[i].to[j] = Some(p);
                meshes[j].from[i] = Some(c);
            }
        }
    }
    meshes
}

/// The journal of a run: its settings, lock and background thread, and
/// each core's end of the channel back from that thread.
struct OpenJournal {
    settings: Option<super::durable::JournalSettings>,
    lock: Option<std::fs::File>,
    housekeeper: Option<Housekeeper>,
    done: Vec<Option<mpsc::Receiver<super::durable::Done>>>,
}

fn open_journal(cfg: &ServerConfig, shared: &Arc<Shared>) -> Result<OpenJournal, StartError> {
    // The null engine keeps no state worth journaling.
    let settings = cfg
        .journal
        .clone()
        .filter(|_| cfg.engine == EngineKind::Match);
    let Some(j) = &settings else {
        return Ok(OpenJournal {
            settings,
            lock: None,
            housekeeper: None,
            done: Vec::new(),
        });
    };
    j.config.validate().map_err(StartError::Journal)?;
    let lock = lock_journal(&j.config.dir).map_err(StartError::Journal)?;
    let (done_tx, done): (Vec<_>, Vec<_>) = (0..cfg.cpus.len())
        .map(|_| {
            let (tx, rx) = mpsc::channel();
            (tx, Some(rx))
        })
        .unzip();
    let housekeeper = Housekeeper::start(
        j.config.dir.clone(),
        j.config.segment_bytes,
        done_tx,
        Arc::clone(shared),
    )
    .map_err(|e| StartError::Journal(format!("cannot start the journal thread: {e}")))?;
    Ok(OpenJournal {
        settings,
        lock: Some(lock),
        housekeeper: Some(housekeeper),
        done,
    })
}

/// The core threads, the channel they report ready on, and the channels
/// that tell them to go (with the session numbering base).
struct Spawned {
    threads: Vec<JoinHandle<CoreExit>>,
    ready: mpsc::Receiver<Ready>,
    go: Vec<mpsc::Sender<u32>>,
}

#[allow(clippy::too_many_arguments)]
fn spawn_cores(
    cfg: &ServerConfig,
    shared: &Arc<Shared>,
    meshes: Vec<Mesh>,
    listeners: Vec<TcpListener>,
    placement: &Arc<[Placement]>,
    journal: &mut OpenJournal,
    (feeds, repl_links): (
        Vec<crate::mdbridge::BridgeFeed>,
        Vec<super::replicate::ReplLink>,
    ),
    auth: Option<AuthParts>,
) -> Result<Spawned, StartError> {
    let mut feeds = feeds.into_iter();
    let mut repl_links = repl_links.into_iter();
    let mut auth = auth.map(Vec::into_iter);
    let tls: Vec<Option<super::tls::CoreTls>> = match &cfg.tls {
        Some(config) => {
            tracing::info!("{}", super::tls::ktls_status_line());
            let ends = super::tls::start_pool(Arc::clone(config), shared, cfg.cpus.len()).map_err(
                |e| StartError::Config(format!("cannot start the TLS handshake threads: {e}")),
            )?;
            ends.into_iter().map(Some).collect()
        }
        None => Vec::new(),
    };
    let mut tls = tls.into_iter();
    let OpenJournal {
        settings,
        housekeeper,
        done,
        ..
    } = journal;
    let ncores = cfg.cpus.len();
    let directory: Arc<[SymbolEntry]> = cfg
        .symbols
        .iter()
        .enumerate()
        .map(|(i, name)| SymbolEntry::new(i as u32, name))
        .collect();
    let (ready_tx, ready) = mpsc::channel::<Ready>();
    let mut go = Vec::with_capacity(ncores);
    let mut threads = Vec::with_capacity(ncores);
    let mut done = done.iter_mut();
    for (index, (mesh, listener)) in meshes.into_iter().zip(listeners).enumerate() {
        let cpu = cfg.cpus[index];
        let settings = settings.as_ref();
        let core_cfg = CoreConfig {
            index,
            cpu: cfg.pin.then_some(cpu),
            ncores,
            shard_count: cfg.shards,
            batch: cfg.batch,
            poll: cfg.poll,
            max_connections: cfg.max_connections,
            max_frame_bytes: cfg.max_frame_bytes,
            out_high_water_bytes: cfg.out_high_water_bytes,
            out_max_bytes: cfg.out_max_bytes,
            send_chunk_bytes: cfg.send_chunk_bytes,
            recv_buffers: cfg.recv_buffers,
            recv_buffer_bytes: cfg.recv_buffer_bytes,
            ring_capacity: cfg.ring_capacity,
            placement: Arc::clone(placement),
            journal_fsync: settings.is_some_and(|j| j.fsync),
            snapshot_every_records: settings.map_or(u64::MAX, |j| j.config.snapshot_every_records),
            md_max_queue: cfg.md_max_queue,
            max_sessions_per_account: cfg.max_sessions_per_account,
            max_connections_per_address: cfg.max_connections_per_address,
            input_memory: cfg.input_memory_per_core,
            auth: auth.as_mut().and_then(Iterator::next),
            session: SessionConfig {
                symbol_count: cfg.symbols.len() as u32,
                directory: Arc::clone(&directory),
                auth_token: cfg.auth_token.clone(),
                heartbeat_ms: cfg.heartbeat_ms,
                idle_timeout_factor: cfg.idle_timeout_factor,
                max_frame_bytes: cfg.max_frame_bytes,
                slow_consumer_ms: cfg.slow_consumer_ms,
                accounts: cfg.accounts.is_some(),
                logon_timeout_ms: cfg.logon_timeout_ms,
                frame_timeout_ms: cfg.frame_timeout_ms,
                order_limits: cfg.order_limits,
            },
            tls: tls.next().flatten(),
            cluster: cfg.cluster.clone(),
        };
        let (go_tx, go_rx) = mpsc::channel::<u32>();
        go.push(go_tx);
        let core_journal = match (&*housekeeper, settings, done.next()) {
            (Some(h), Some(j), Some(rx)) => rx.take().map(|rx| JournalParts {
                jobs: h.jobs.clone(),
                done: rx,
                dir: j.config.dir.clone(),
                segment_bytes: j.config.segment_bytes,
            }),
            _ => None,
        };
        let parts = CoreParts {
            cfg: core_cfg,
            shared: Arc::clone(shared),
            listener: OwnedFd::from(listener),
            mesh,
            ready: ready_tx.clone(),
            go: go_rx,
            cpu,
            bridge: feeds.next(),
            repl: repl_links.next(),
        };
        let engine = cfg.engine;
        let shard_cfg = cfg.shard;
        let spawned = std::thread::Builder::new()
            .name(format!("turbo-dex-core-{cpu}"))
            .spawn(move || core_main(parts, engine, shard_cfg, core_journal));
        match spawned {
            Ok(h) => threads.push(h),
            Err(e) => return Err(StartError::Core(cpu, e.to_string())),
        }
    }
    Ok(Spawned { threads, ready, go })
}

/// Waits until every core reported ready, then lets them go with the
/// session numbering base: new sessions are numbered above every session
/// a recovered journal still names, on every core.
fn wait_ready(spawned: &mut Spawned) -> Result<(), StartError> {
    let mut failure = None;
    let mut session_seq_max = 0u64;
    for _ in 0..spawned.threads.len() {
        match spawned.ready.recv() {
            Ok(Ok(seq)) => session_seq_max = session_seq_max.max(seq),
            Ok(Err((cpu, e))) => failure = failure.or(Some(StartError::Core(cpu, e))),
            Err(_) => {
                failure = failure.or(Some(StartError::Core(0, "a core thread exited".into())))
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let base = SessionId::generation_of_sequence(session_seq_max) + 1;
    for go in &spawned.go {
        let _ = go.send(base);
    }
    Ok(())
}

/// A core's end of the journal: the background thread's queue and answers.
struct JournalParts {
    jobs: mpsc::Sender<super::durable::Job>,
    done: mpsc::Receiver<super::durable::Done>,
    dir: std::path::PathBuf,
    segment_bytes: u64,
}

/// What a core thread starts with.
struct CoreParts {
    cfg: CoreConfig,
    shared: Arc<Shared>,
    listener: OwnedFd,
    mesh: Mesh,
    ready: mpsc::Sender<Ready>,
    go: mpsc::Receiver<u32>,
    cpu: usize,
    bridge: Option<crate::mdbridge::BridgeFeed>,
    repl: Option<super::replicate::ReplLink>,
}

impl CoreParts {
    fn fail(self, why: String) -> CoreExit {
        let _ = self.ready.send(Err((self.cpu, why)));
        CoreExit {
            counters: Counters::default(),
        }
    }
}

/// A core thread: pin, create or recover its shards (on its own CPU, so
/// their memory is first touched there), then run.
fn core_main(
    mut parts: CoreParts,
    engine: EngineKind,
    shard_cfg: crate::book::ShardConfig,
    journal: Option<JournalParts>,
) -> CoreExit {
    if let Some(cpu) = parts.cfg.cpu
        && let Err(e) = tuning::pin_current_thread(cpu)
    {
        return parts.fail(e.to_string());
    }
    let shard_count = parts.cfg.shard_count;
    let symbol_count = parts.cfg.session.symbol_count;
    let (index, ncores) = (parts.cfg.index, parts.cfg.ncores);
    let local: Vec<u32> = (0..shards_on_core(shard_count, ncores, index))
        .map(|l| global_shard(l, ncores, index))
        .collect();
    match (engine, journal) {
        (EngineKind::Match, Some(j)) => {
            let mut shards = Vec::with_capacity(local.len());
            let mut logs = Vec::with_capacity(local.len());
            let mut session_seq_max = 0;
            for &s in &local {
                let id = ShardIdentity {
                    shard_index: s,
                    shard_count,
                    symbol_count,
                };
                match journal::recover(&j.dir, &id, shard_cfg, j.segment_bytes) {
                    Ok(r) => {
                        tracing::info!("journal: {}", r.report);
                        session_seq_max = session_seq_max.max(r.report.session_sequence_max);
                        let log = ShardLog::new(id, shard_cfg, r.segment, r.next_seq);
                        logs.push(log);
                        shards.push(r.shard);
                    }
                    Err(e) => return parts.fail(e.to_string()),
                }
            }
            let journal = CoreJournal {
                logs,
                jobs: j.jobs,
                done: j.done,
                repl: parts.repl.take(),
            };
            run_core(parts, shards, Some(journal), session_seq_max)
        }
        (EngineKind::Match, None) => {
            let mut shards = Vec::with_capacity(local.len());
            for &s in &local {
                match Shard::try_new(s, shard_count, symbol_count, shard_cfg) {
                    Ok(shard) => shards.push(shard),
                    Err(e) => return parts.fail(e.to_string()),
                }
            }
            run_core(parts, shards, None, 0)
        }
        (EngineKind::Null, _) => {
            let shards = local.iter().map(|&s| NullShard::new(s)).collect();
            run_core(parts, shards, None, 0)
        }
    }
}

/// Builds the core, reports ready (with the highest recovered session
/// sequence), waits for the go with the session numbering base, and runs.
fn run_core<M: Matcher + Snapshot>(
    parts: CoreParts,
    shards: Vec<M>,
    journal: Option<CoreJournal>,
    session_seq_max: u64,
) -> CoreExit {
    let CoreParts {
        cfg,
        shared,
        listener,
        mesh,
        ready,
        go,
        cpu,
        bridge,
        ..
    } = parts;
    match Core::new(cfg, shared, listener, mesh, shards, journal, bridge) {
        Ok(mut core) => {
            let _ = ready.send(Ok(session_seq_max));
            drop(ready);
            match go.recv() {
                Ok(base) => {
                    core.set_session_base(base);
                    core.run()
                }
                // Another core failed: the server is not starting.
                Err(_) => CoreExit {
                    counters: Counters::default(),
                },
            }
        }
        Err(e) => {
            let _ = ready.send(Err((cpu, e.to_string())));
            CoreExit {
                counters: Counters::default(),
            }
        }
    }
}

/// Starts the NATS market-data bridge when `--md-nats` asks for it: one
/// feed per core (a bounded ring; the bridge thread publishes).
fn start_md_bridge(
    cfg: &ServerConfig,
) -> Result<
    (
        Option<crate::mdbridge::Bridge>,
        Vec<crate::mdbridge::BridgeFeed>,
    ),
    StartError,
> {
    let Some(nats) = &cfg.md_nats else {
        return Ok((None, Vec::new()));
    };
    let bridge_cfg = crate::mdbridge::BridgeConfig {
        url: nats.url.clone(),
        format: nats.format,
        symbols: cfg.symbols.iter().cloned().collect(),
        ring_capacity: super::limits::MD_NATS_RING,
    };
    let (bridge, feeds) = crate::mdbridge::Bridge::start(bridge_cfg, cfg.cpus.len())
        .map_err(|e| StartError::Config(format!("--md-nats {}: {e}", nats.url)))?;
    tracing::info!(
        "market data to NATS at {} ({} payloads) on turbo-dex.md.<SYMBOL>.trade and .bbo",
        nats.url,
        nats.format
    );
    Ok((Some(bridge), feeds))
}

/// Starts the replication thread when `--replicas` asks for it: one link
/// per core (bounded rings both ways).
fn start_replicator(
    cfg: &ServerConfig,
    shared: &Arc<Shared>,
) -> Result<
    (
        Option<super::replicate::Replicator>,
        Vec<super::replicate::ReplLink>,
    ),
    StartError,
> {
    let Some(repl) = &cfg.replicate else {
        return Ok((None, Vec::new()));
    };
    let kicker = Arc::clone(shared);
    let (replicator, links) = super::replicate::Replicator::start(
        repl.clone(),
        cfg.cpus.len(),
        Arc::new(move |core| kicker.kick(core)),
    )
    .map_err(|e| StartError::Config(format!("cannot start the replication thread: {e}")))?;
    tracing::info!(
        "replication: every journal batch is stored in JetStream (stream TURBO_DEX_SHARD_<n>, \
         {} replicas) before it is acknowledged",
        repl.replicas
    );
    Ok((Some(replicator), links))
}
