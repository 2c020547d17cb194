//! The admin endpoint: `/health`, `/ready`, `/stats` (JSON) and `/metrics`
//! (Prometheus text format 0.0.4), served by `tuning::admin` on its own
//! thread, which is not an engine core and is not pinned (it is started
//! before any thread is pinned, so it runs wherever the OS puts it).
//!
//! The cores never wait for it: they publish counters into their own
//! cache-line-padded slots ([`CoreStats`]) with relaxed stores, and this
//! thread reads and sums those slots when it is asked. Rates and loads are
//! computed over the time since the previous `/stats` or `/metrics` request.
//!
//! The kill switch: `POST /accounts/ID/kill` cancels every live order of
//! account ID and blocks its new orders, `POST /accounts/ID/unblock` lifts
//! the block. Both need `Authorization: Bearer TOKEN` with the server's
//! `--admin-token`; without a configured token they are refused (403). The
//! action is queued for core 0 ([`super::operator`]) and answered `202`
//! at once: the cancels follow within a loop iteration of core 0.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tuning::admin::prom::Encoder;
use tuning::admin::{AdminConfig, AdminServer, Handler, Response};
use wire::{RejectReason, SessionErrorCode};

use super::core::global_shard;
use super::operator::{OPERATOR_QUEUE_MAX, OperatorAction};
use super::stats::{CoreStats, Counters, JOURNAL_WRITE_BUCKETS_S, Sample, ShardCounters};
use super::{Server, ServerConfig, Shared, monotonic_ns, realtime_ns};

/// A core whose loop has not turned for this long is reported stuck.
const STUCK_NS: u64 = 1_000_000_000;

/// What the admin thread knows of the server.
pub struct AdminState {
    shared: Arc<Shared>,
    cpus: Vec<usize>,
    shards: u32,
    started: Instant,
    /// The effective configuration, as `/stats` shows it.
    config: serde_json::Value,
    /// The sample of the previous request: rates are over the time since.
    previous: Mutex<Option<Sample>>,
    /// The token the kill switch's POSTs must carry; `None` refuses them.
    admin_token: Option<String>,
    /// This node's view of its cluster (`--cluster`).
    cluster: Option<Arc<crate::cluster::ClusterView>>,
}

/// Starts the admin endpoint for a server being started.
pub(super) fn start(
    addr: SocketAddr,
    cfg: &ServerConfig,
    shared: &Arc<Shared>,
) -> std::io::Result<AdminServer> {
    if !tuning::admin::is_loopback(&addr) {
        tracing::warn!(
            "the admin endpoint on {addr} has no authentication: anyone who can reach it can read \
             the server's counters and configuration; bind it to 127.0.0.1 or firewall it"
        );
    }
    let state = AdminState {
        shared: Arc::clone(shared),
        cpus: cfg.cpus.clone(),
        shards: cfg.shards,
        started: Instant::now(),
        config: effective_config(cfg),
        previous: Mutex::new(None),
        admin_token: cfg.admin_token.clone().filter(|t| !t.is_empty()),
        cluster: cfg.cluster.clone(),
    };
    let server = AdminServer::start(AdminConfig::new(addr, "turbo-dex-admin"), Arc::new(state))?;
    // On stdout like the order-entry address, and before recovery, so that
    // a supervisor can watch /ready while the journal replays.
    println!("turbo-dex admin listening on {}", server.local_addr());
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    Ok(server)
}

impl Handler for AdminState {
    fn get(&self, path: &str) -> Option<Response> {
        Some(match path {
            "/health" => self.health(),
            "/ready" => self.ready(),
            "/stats" => Response::json(200, self.stats_json()),
            "/metrics" => Response::prometheus(self.metrics()),
            _ => return None,
        })
    }

    fn post(&self, path: &str, authorization: Option<&str>) -> Option<Response> {
        let (id, action) = parse_account_action(path)?;
        Some(self.account_action(id, action, authorization))
    }
}

/// `/accounts/ID/kill` or `/accounts/ID/unblock`: the id as written (it
/// may not parse) and the action; `None` for any other path.
fn parse_account_action(path: &str) -> Option<(&str, OperatorAction)> {
    let rest = path.strip_prefix("/accounts/")?;
    let (id, verb) = rest.split_once('/')?;
    let action = match verb {
        "kill" => OperatorAction::Kill,
        "unblock" => OperatorAction::Unblock,
        _ => return None,
    };
    Some((id, action))
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell how much of a guessed token was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AdminState {
    /// The kill switch: checks the token and the id, then queues it.
    fn account_action(
        &self,
        id: &str,
        action: OperatorAction,
        authorization: Option<&str>,
    ) -> Response {
        let Some(token) = &self.admin_token else {
            return Response::text(
                403,
                "the kill switch is off: start turbo-dex with --admin-token TOKEN (or \
                 TURBO_DEX_ADMIN_TOKEN) to allow POST /accounts/ID/kill and /accounts/ID/unblock\n"
                    .to_string(),
            );
        };
        let given = authorization.and_then(|a| a.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
            return Response::text(
                401,
                "this needs the header `Authorization: Bearer TOKEN` with the server's \
                 --admin-token\n"
                    .to_string(),
            );
        }
        let Ok(account) = id.parse::<u64>() else {
            return Response::text(
                400,
                format!("account id {id:?} is not a number (0 to {})\n", u64::MAX),
            );
        };
        if !self.shared.operator(action, account) {
            return Response::text(
                503,
                format!(
                    "{OPERATOR_QUEUE_MAX} operator actions are already waiting for the engine; \
                     try again\n"
                ),
            );
        }
        tracing::warn!("operator: {} account {account}", action.as_str());
        Response::json(
            202,
            serde_json::json!({
                "account": account,
                "action": action.as_str(),
                "status": "queued",
            })
            .to_string(),
        )
    }
}

#[derive(Serialize)]
struct Probe<'a> {
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

fn probe(status: u16, word: &str, reason: Option<String>) -> Response {
    let body = serde_json::to_string(&Probe {
        status: word,
        reason,
    })
    .unwrap_or_default();
    Response::json(status, body)
}

impl AdminState {
    /// 200 while every core's loop turned within the last second.
    fn health(&self) -> Response {
        let now = monotonic_ns();
        let stuck: Vec<String> = self
            .shared
            .stats
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let last = s.loop_ns.load(Ordering::Relaxed);
                let age = now.saturating_sub(last);
                (last != 0 && age > STUCK_NS).then(|| {
                    format!(
                        "core {i} (CPU {}) has not turned for {} ms",
                        self.cpus.get(i).copied().unwrap_or(i),
                        age / 1_000_000
                    )
                })
            })
            .collect();
        if stuck.is_empty() {
            probe(200, "ok", None)
        } else {
            probe(503, "stuck", Some(stuck.join("; ")))
        }
    }

    /// 200 once recovery is done and orders are taken; 503 and why not.
    fn ready(&self) -> Response {
        if !self.shared.ready.load(Ordering::Acquire) {
            return probe(503, "not ready", Some("recovering the journal".into()));
        }
        if self.shared.stop_reading.load(Ordering::Acquire) {
            return probe(503, "not ready", Some("draining for shutdown".into()));
        }
        let refusing: Vec<String> = self
            .shared
            .stats
            .iter()
            .enumerate()
            .filter(|(_, s)| s.journal_unavailable.load(Ordering::Relaxed))
            .map(|(i, _)| format!("core {i}"))
            .collect();
        if !refusing.is_empty() {
            return probe(
                503,
                "not ready",
                Some(format!(
                    "the journal cannot write (disk full or failing) on {}: orders are rejected as not durable",
                    refusing.join(", ")
                )),
            );
        }
        probe(200, "ready", None)
    }

    /// A new sample, and the one of the previous request (or an empty one
    /// at start-up).
    fn samples(&self) -> (Sample, Sample) {
        let now = Sample::take(&self.shared.stats, monotonic_ns());
        let mut previous = self.previous.lock().unwrap_or_else(|e| e.into_inner());
        let before = previous.replace(now.clone()).unwrap_or_else(|| Sample {
            cores: vec![Counters::default(); now.cores.len()],
            conns: 0,
            at_ns: self.shared.started_ns,
        });
        (before, now)
    }

    /// Per global shard: commands and trades.
    fn shard_stats(&self) -> Vec<ShardCounters> {
        let cores = self.shared.stats.len();
        let mut out = vec![ShardCounters::default(); self.shards as usize];
        for (core, s) in self.shared.stats.iter().enumerate() {
            for (local, c) in s.load_shards().into_iter().enumerate() {
                if let Some(slot) = out.get_mut(global_shard(local, cores, core) as usize) {
                    *slot = c;
                }
            }
        }
        out
    }

    fn stats_json(&self) -> String {
        let (before, now) = self.samples();
        let stats = StatsBody::new(self, &before, &now);
        serde_json::to_string_pretty(&stats).unwrap_or_default() + "\n"
    }

    fn metrics(&self) -> String {
        let (before, now) = self.samples();
        encode_metrics(self, &before, &now)
    }
}

/// `/stats`. Field names are a contract (README "Operating turbo-dex"); a
/// test pins them.
#[derive(Serialize)]
struct StatsBody {
    version: &'static str,
    /// Unix time of this answer, in seconds.
    timestamp: f64,
    uptime_seconds: f64,
    ready: bool,
    workers: usize,
    shards: u32,
    orders: u64,
    trades: u64,
    commands: u64,
    reports: u64,
    rejects: u64,
    rejects_by_reason: serde_json::Map<String, serde_json::Value>,
    reports_orphaned: u64,
    connections: ConnectionsBody,
    bytes_in: u64,
    bytes_out: u64,
    rates: RatesBody,
    journal: JournalBody,
    snapshots: SnapshotsBody,
    market_data: MarketDataBody,
    cores: Vec<CoreBody>,
    shard_stats: Vec<ShardCounters>,
    internal_errors: u64,
    /// Present with `--cluster`.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterBody>,
    config: serde_json::Value,
}

/// The cluster view in `/stats`.
#[derive(Serialize)]
struct ClusterBody {
    node_id: String,
    map_version: u64,
    /// Shards this node serves now.
    owned_shards: Vec<u32>,
    /// Whether the agent's last round reached NATS.
    nats_connected: bool,
    lease_renew_failures: u64,
    /// Shards the fence stopped serving because renewals failed.
    fenced_shards: u64,
    nodes: Vec<ClusterNodeBody>,
    /// Per shard: the owner's node id, or null.
    owners: Vec<Option<String>>,
}

#[derive(Serialize)]
struct ClusterNodeBody {
    node_id: String,
    address: Option<SocketAddr>,
    cores: u32,
    shards_owned: u32,
    alive: bool,
    heartbeat_age_ms: u32,
}

fn cluster_body(view: &crate::cluster::ClusterView) -> ClusterBody {
    use crate::cluster::format_node_id;
    let map = view.map();
    ClusterBody {
        node_id: format_node_id(view.node_id()),
        map_version: map.version,
        owned_shards: view.served(),
        nats_connected: view.connected.load(Ordering::Relaxed),
        lease_renew_failures: view.renew_failures.load(Ordering::Relaxed),
        fenced_shards: view.fenced.load(Ordering::Relaxed),
        nodes: map
            .nodes
            .iter()
            .map(|n| ClusterNodeBody {
                node_id: format_node_id(n.node_id.get()),
                address: n.node_address().ok().flatten(),
                cores: n.cores.get(),
                shards_owned: n.shards_owned.get(),
                alive: n.state() == Ok(wire::NodeState::Alive),
                heartbeat_age_ms: n.heartbeat_age_ms.get(),
            })
            .collect(),
        owners: map
            .shards
            .iter()
            .map(|s| (s.owner.get() != wire::NO_NODE).then(|| format_node_id(s.owner.get())))
            .collect(),
    }
}

/// The cluster's series in `/metrics`.
fn cluster_metrics(e: &mut Encoder, view: &crate::cluster::ClusterView) {
    let id = crate::cluster::format_node_id(view.node_id());
    e.gauge(
        "turbo_dex_cluster_node_info",
        "This node's id in its cluster; the value is always 1.",
        &[(&[("node_id", id.as_str())], 1.0)],
    );
    e.gauge(
        "turbo_dex_cluster_map_version",
        "The version of the cluster map this node holds.",
        &[(&[], view.map_version() as f64)],
    );
    e.gauge(
        "turbo_dex_cluster_owned_shards",
        "Shards this node serves now.",
        &[(&[], view.served().len() as f64)],
    );
    e.gauge(
        "turbo_dex_cluster_nats_connected",
        "1 when the cluster agent's last round reached NATS.",
        &[(
            &[],
            f64::from(u8::from(view.connected.load(Ordering::Relaxed))),
        )],
    );
    e.counter(
        "turbo_dex_cluster_lease_renew_failures_total",
        "Lease renewals (or claims of this node's own shards) that failed.",
        &[(&[], view.renew_failures.load(Ordering::Relaxed) as f64)],
    );
    e.counter(
        "turbo_dex_cluster_fenced_shards_total",
        "Shards this node stopped serving because their leases were not renewed in time.",
        &[(&[], view.fenced.load(Ordering::Relaxed) as f64)],
    );
}

#[derive(Serialize)]
struct ConnectionsBody {
    current: u64,
    accepted: u64,
    closed_on_error: u64,
    closed_by_reason: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
struct RatesBody {
    /// The rates are averages over this window: since the previous
    /// `/stats` or `/metrics` request (or since start).
    window_seconds: f64,
    orders_per_second: f64,
    trades_per_second: f64,
    reports_per_second: f64,
}

#[derive(Serialize)]
struct JournalBody {
    bytes: u64,
    writes: u64,
    /// Mean write (and fdatasync) latency over the run, in seconds.
    write_seconds_mean: f64,
    not_durable_rejects: u64,
    /// With `--replicas`: batches JetStream stored, and their mean wait
    /// for it after the local write (seconds).
    replicated_batches: u64,
    replication_seconds_mean: f64,
}

#[derive(Serialize)]
struct SnapshotsBody {
    taken: u64,
    /// Time matching stood still serializing them, in total.
    seconds: f64,
}

#[derive(Serialize)]
struct MarketDataBody {
    /// Market-data messages written to subscribers.
    messages: u64,
    messages_per_second: f64,
    subscribes: u64,
    /// Subscribers cut off for falling behind (--md-max-queue).
    cut_offs: u64,
    snapshots: u64,
    snapshot_rows: u64,
    /// Time matching stood still building snapshots, in total.
    snapshot_seconds: f64,
    /// Trades and tops the NATS bridge had no room for (--md-nats).
    nats_dropped: u64,
}

#[derive(Serialize)]
struct CoreBody {
    core: usize,
    cpu: usize,
    /// Fraction of the window the core spent outside its wait.
    load: f64,
    orders: u64,
    connections: u64,
    iterations: u64,
    ring_high_water_messages: u64,
}

impl serde::Serialize for ShardCounters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("ShardCounters", 2)?;
        st.serialize_field("orders", &self.commands)?;
        st.serialize_field("trades", &self.trades)?;
        st.end()
    }
}

impl StatsBody {
    fn new(a: &AdminState, before: &Sample, now: &Sample) -> StatsBody {
        let (b, t) = (before.total(), now.total());
        let secs = now.at_ns.saturating_sub(before.at_ns) as f64 / 1e9;
        let rate = |x: u64, y: u64| {
            if secs > 0.0 {
                y.saturating_sub(x) as f64 / secs
            } else {
                0.0
            }
        };
        StatsBody {
            version: env!("CARGO_PKG_VERSION"),
            timestamp: realtime_ns() as f64 / 1e9,
            uptime_seconds: a.started.elapsed().as_secs_f64(),
            ready: a.shared.ready.load(Ordering::Acquire),
            workers: now.cores.len(),
            shards: a.shards,
            orders: t.orders_in,
            trades: t.trades,
            commands: t.commands,
            reports: t.reports_out,
            rejects: t.rejects,
            rejects_by_reason: by_reason(&t.rejects_by_reason, reject_reason_label),
            reports_orphaned: t.reports_orphaned,
            connections: ConnectionsBody {
                current: now.conns,
                accepted: t.conns_accepted,
                closed_on_error: t.conns_errored,
                closed_by_reason: by_reason(&t.closes_by_reason, close_reason_label),
            },
            bytes_in: t.bytes_in,
            bytes_out: t.bytes_out,
            rates: RatesBody {
                window_seconds: secs,
                orders_per_second: rate(b.orders_in, t.orders_in),
                trades_per_second: rate(b.trades, t.trades),
                reports_per_second: rate(b.reports_out, t.reports_out),
            },
            journal: JournalBody {
                bytes: t.journal_bytes,
                writes: t.journal_writes,
                write_seconds_mean: if t.journal_writes > 0 {
                    t.journal_write_ns as f64 / t.journal_writes as f64 / 1e9
                } else {
                    0.0
                },
                not_durable_rejects: t.journal_rejects,
                replicated_batches: t.replicated_batches,
                replication_seconds_mean: if t.replicated_batches > 0 {
                    t.replication_ns as f64 / t.replicated_batches as f64 / 1e9
                } else {
                    0.0
                },
            },
            snapshots: SnapshotsBody {
                taken: t.snapshots,
                seconds: t.snapshot_ns as f64 / 1e9,
            },
            market_data: MarketDataBody {
                messages: t.md_messages,
                messages_per_second: rate(b.md_messages, t.md_messages),
                subscribes: t.md_subscribes,
                cut_offs: t.md_cut_offs,
                snapshots: t.md_snapshots,
                snapshot_rows: t.md_snapshot_rows,
                snapshot_seconds: t.md_snapshot_ns as f64 / 1e9,
                nats_dropped: t.md_nats_dropped,
            },
            cores: core_bodies(a, before, now, secs),
            shard_stats: a.shard_stats(),
            internal_errors: t.internal_errors,
            cluster: a.cluster.as_deref().map(cluster_body),
            config: a.config.clone(),
        }
    }
}

fn core_bodies(a: &AdminState, before: &Sample, now: &Sample, secs: f64) -> Vec<CoreBody> {
    now.cores
        .iter()
        .zip(&before.cores)
        .zip(a.shared.stats.iter())
        .enumerate()
        .map(|(i, ((n, p), s))| CoreBody {
            core: i,
            cpu: a.cpus.get(i).copied().unwrap_or(i),
            load: busy_fraction(p, n, secs),
            orders: n.orders_in,
            connections: s.conns.load(Ordering::Relaxed),
            iterations: n.iterations,
            ring_high_water_messages: s.ring_high_water.load(Ordering::Relaxed),
        })
        .collect()
}

fn busy_fraction(before: &Counters, now: &Counters, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    (now.busy_ns.saturating_sub(before.busy_ns) as f64 / (secs * 1e9)).min(1.0)
}

/// Non-zero entries of a by-reason array, keyed by label.
fn by_reason(
    counts: &[u64],
    label: fn(usize) -> String,
) -> serde_json::Map<String, serde_json::Value> {
    counts
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| (label(i), serde_json::Value::from(*n)))
        .collect()
}

/// `UnknownSymbol` -> `unknown_symbol`: Prometheus label values and JSON keys.
fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, ch) in name.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

fn reject_reason_label(wire: usize) -> String {
    u16::try_from(wire)
        .ok()
        .and_then(|w| RejectReason::from_wire(w).ok())
        .map_or_else(|| "other".into(), |r| snake(&format!("{r:?}")))
}

fn close_reason_label(wire: usize) -> String {
    if wire == 0 {
        return "peer_closed".into();
    }
    u16::try_from(wire)
        .ok()
        .and_then(|w| SessionErrorCode::from_wire(w).ok())
        .map_or_else(|| "other".into(), |c| snake(&format!("{c:?}")))
}

/// The configuration `/stats` shows (never the auth token or an account's hash).
fn effective_config(cfg: &ServerConfig) -> serde_json::Value {
    serde_json::json!({
        "listen": cfg.listen.to_string(),
        "cores": cfg.cpus,
        "pin": cfg.pin,
        "shards": cfg.shards,
        "symbols": cfg.symbols.len(),
        "batch": cfg.batch,
        "poll": format!("{:?}", cfg.poll).to_lowercase(),
        "engine": format!("{:?}", cfg.engine).to_lowercase(),
        "max_connections": cfg.max_connections,
        "max_frame_bytes": cfg.max_frame_bytes,
        "heartbeat_ms": cfg.heartbeat_ms,
        "slow_consumer_ms": cfg.slow_consumer_ms,
        "out_high_water_bytes": cfg.out_high_water_bytes,
        "out_max_bytes": cfg.out_max_bytes,
        "send_chunk_bytes": cfg.send_chunk_bytes,
        "ring_capacity": cfg.ring_capacity,
        "orders_per_shard": cfg.shard.orders_max,
        "levels_per_side": cfg.shard.levels_per_side_max,
        "order_history": cfg.shard.history_max,
        "market_band_ticks": cfg.shard.market_band_ticks,
        "auth": cfg.auth_token.is_some(),
        // How many accounts, never their names or hashes.
        "accounts": cfg.accounts.as_ref().map(|a| a.len()),
        "max_sessions_per_account": cfg.max_sessions_per_account,
        "max_connections_per_address": cfg.max_connections_per_address,
        "logon_failures_per_minute": cfg.logon_failures_per_minute,
        "logon_timeout_ms": cfg.logon_timeout_ms,
        "frame_timeout_ms": cfg.frame_timeout_ms,
        "input_memory_per_core": cfg.input_memory_per_core,
        "max_order_rate": cfg.order_limits.orders_per_second,
        "order_burst": cfg.order_limits.burst,
        "order_flood_rejects": cfg.order_limits.flood_rejects,
        "max_open_orders_per_account": cfg.shard.account_orders_max,
        "max_open_orders_per_account_symbol": cfg.shard.account_symbol_orders_max,
        "kill_switch": cfg.admin_token.is_some(),
        "journal": cfg.journal.as_ref().map(|j| serde_json::json!({
            "dir": j.config.dir.display().to_string(),
            "fsync": j.fsync,
            "segment_bytes": j.config.segment_bytes,
            "snapshot_every_records": j.config.snapshot_every_records,
        })),
    })
}

/// `/metrics`: every counter under the Prometheus naming conventions.
fn encode_metrics(a: &AdminState, before: &Sample, now: &Sample) -> String {
    let t = now.total();
    let secs = now.at_ns.saturating_sub(before.at_ns) as f64 / 1e9;
    let mut e = Encoder::new();
    e.gauge(
        "turbo_dex_build_info",
        "The running build; the value is always 1.",
        &[(&[("version", env!("CARGO_PKG_VERSION"))], 1.0)],
    );
    e.gauge(
        "turbo_dex_up_seconds",
        "Seconds since the server started.",
        &[(&[], a.started.elapsed().as_secs_f64())],
    );
    let ready = a.shared.ready.load(Ordering::Acquire);
    e.gauge(
        "turbo_dex_ready",
        "1 once recovery is done and orders are taken.",
        &[(&[], f64::from(u8::from(ready)))],
    );
    e.gauge(
        "turbo_dex_recovery_seconds",
        "How long start-up recovery (journal replay and snapshot load) took.",
        &[(
            &[],
            a.shared.recovery_ns.load(Ordering::Relaxed) as f64 / 1e9,
        )],
    );
    let totals = [
        (
            "turbo_dex_orders_total",
            "Order messages (new, cancel, replace, query) received.",
            t.orders_in,
        ),
        (
            "turbo_dex_commands_total",
            "Commands applied to the books.",
            t.commands,
        ),
        (
            "turbo_dex_trades_total",
            "Trades (one per maker/taker pair).",
            t.trades,
        ),
        (
            "turbo_dex_reports_total",
            "Reports sent to sessions.",
            t.reports_out,
        ),
        (
            "turbo_dex_reports_orphaned_total",
            "Reports for sessions that had disconnected or for detached orders.",
            t.reports_orphaned,
        ),
        (
            "turbo_dex_connections_accepted_total",
            "Connections accepted.",
            t.conns_accepted,
        ),
        (
            "turbo_dex_received_bytes_total",
            "Bytes received from clients.",
            t.bytes_in,
        ),
        (
            "turbo_dex_sent_bytes_total",
            "Bytes sent to clients.",
            t.bytes_out,
        ),
        (
            "turbo_dex_internal_errors_total",
            "States that should not happen (please report).",
            t.internal_errors,
        ),
    ];
    for (name, help, value) in totals {
        e.counter(name, help, &[(&[], value as f64)]);
    }
    labelled_counter(
        &mut e,
        "turbo_dex_rejects_total",
        "Rejected requests, by reason.",
        "reason",
        labelled(&t.rejects_by_reason, reject_reason_label),
    );
    labelled_counter(
        &mut e,
        "turbo_dex_connections_closed_total",
        "Connections closed, by reason (peer_closed: without a SessionError).",
        "reason",
        labelled(&t.closes_by_reason, close_reason_label),
    );
    per_core(&mut e, a, before, now, secs);
    journal_metrics(&mut e, &t);
    shard_metrics(&mut e, a);
    if let Some(view) = &a.cluster {
        cluster_metrics(&mut e, view);
    }
    e.finish()
}

/// Per shard: commands applied and trades.
fn shard_metrics(e: &mut Encoder, a: &AdminState) {
    let shards = a.shard_stats();
    let by_shard = |f: fn(&ShardCounters) -> u64| {
        shards
            .iter()
            .enumerate()
            .map(|(i, s)| (i.to_string(), f(s) as f64))
            .collect()
    };
    labelled_counter(
        e,
        "turbo_dex_shard_commands_total",
        "Commands applied, by shard.",
        "shard",
        by_shard(|s| s.commands),
    );
    labelled_counter(
        e,
        "turbo_dex_shard_trades_total",
        "Trades, by shard.",
        "shard",
        by_shard(|s| s.trades),
    );
}

/// A counter family with one label: (label value, value) pairs.
fn labelled_counter(e: &mut Encoder, name: &str, help: &str, key: &str, pairs: Vec<(String, f64)>) {
    let samples: Vec<([(&str, &str); 1], f64)> = pairs
        .iter()
        .map(|(l, v)| ([(key, l.as_str())], *v))
        .collect();
    let refs: Vec<(&[(&str, &str)], f64)> = samples.iter().map(|(l, v)| (&l[..], *v)).collect();
    e.counter(name, help, &refs);
}

fn per_core(e: &mut Encoder, a: &AdminState, before: &Sample, now: &Sample, secs: f64) {
    let names: Vec<String> = (0..now.cores.len()).map(|c| c.to_string()).collect();
    let label = |i: usize| vec![("core", names[i].as_str())];
    let series =
        |f: &dyn Fn(usize, &CoreStats, &Counters) -> f64| -> Vec<(Vec<(&str, &str)>, f64)> {
            a.shared
                .stats
                .iter()
                .zip(&now.cores)
                .enumerate()
                .map(|(i, (s, c))| (label(i), f(i, s, c)))
                .collect()
        };
    let conns = series(&|_, s, _| s.conns.load(Ordering::Relaxed) as f64);
    e.gauge(
        "turbo_dex_connections",
        "Connections open now, by core.",
        &as_samples_ref(&conns),
    );
    let busy = series(&|_, _, c| c.busy_ns as f64 / 1e9);
    e.counter(
        "turbo_dex_core_busy_seconds_total",
        "Time each core spent outside its wait for completions.",
        &as_samples_ref(&busy),
    );
    let load = series(&|i, _, c| busy_fraction(&before.cores[i], c, secs));
    e.gauge(
        "turbo_dex_core_busy_ratio",
        "Fraction of the time since the previous scrape each core was busy.",
        &as_samples_ref(&load),
    );
    let loops = series(&|_, _, c| c.iterations as f64);
    e.counter(
        "turbo_dex_core_loop_iterations_total",
        "Loop iterations, by core.",
        &as_samples_ref(&loops),
    );
    let water = series(&|_, s, _| s.ring_high_water.load(Ordering::Relaxed) as f64);
    e.gauge(
        "turbo_dex_ring_occupancy_high_water_messages",
        "The most messages one of the core's outgoing rings held.",
        &as_samples_ref(&water),
    );
}

fn journal_metrics(e: &mut Encoder, t: &Counters) {
    let mut cumulative = 0;
    let buckets: Vec<(f64, u64)> = JOURNAL_WRITE_BUCKETS_S
        .iter()
        .zip(&t.journal_write_hist)
        .map(|(&le, &n)| {
            cumulative += n;
            (le, cumulative)
        })
        .collect();
    e.histogram(
        "turbo_dex_journal_write_seconds",
        "Journal write (and fdatasync) latency, submission to completion.",
        &[],
        &buckets,
        t.journal_write_ns as f64 / 1e9,
        t.journal_writes,
    );
    let one = |v: u64| -> [(&[(&str, &str)], f64); 1] { [(&[], v as f64)] };
    e.counter(
        "turbo_dex_journal_bytes_total",
        "Journal record bytes made durable.",
        &one(t.journal_bytes),
    );
    e.counter(
        "turbo_dex_journal_not_durable_rejects_total",
        "Requests rejected because the journal could not take them.",
        &one(t.journal_rejects),
    );
    e.counter(
        "turbo_dex_replicated_batches_total",
        "Journal batches JetStream stored (--replicas), then applied.",
        &one(t.replicated_batches),
    );
    e.counter(
        "turbo_dex_replication_seconds_total",
        "Time batches waited for JetStream after their local write.",
        &[(&[], t.replication_ns as f64 / 1e9)],
    );
    e.counter(
        "turbo_dex_snapshots_total",
        "Snapshots taken.",
        &one(t.snapshots),
    );
    e.counter(
        "turbo_dex_snapshot_seconds_total",
        "Time matching stood still serializing snapshots.",
        &[(&[], t.snapshot_ns as f64 / 1e9)],
    );
    for (name, help, v) in [
        (
            "turbo_dex_md_messages_total",
            "Market-data messages written to subscribers.",
            t.md_messages,
        ),
        (
            "turbo_dex_md_subscribes_total",
            "Market-data Subscribe requests.",
            t.md_subscribes,
        ),
        (
            "turbo_dex_md_cut_offs_total",
            "Market-data subscribers cut off for falling behind.",
            t.md_cut_offs,
        ),
        (
            "turbo_dex_md_snapshots_total",
            "Depth snapshots served to subscribers.",
            t.md_snapshots,
        ),
        (
            "turbo_dex_md_snapshot_rows_total",
            "Price levels sent in depth snapshots.",
            t.md_snapshot_rows,
        ),
        (
            "turbo_dex_md_nats_dropped_total",
            "Trades and tops the NATS bridge had no room for.",
            t.md_nats_dropped,
        ),
    ] {
        e.counter(name, help, &one(v));
    }
    e.counter(
        "turbo_dex_md_snapshot_seconds_total",
        "Time matching stood still building depth snapshots.",
        &[(&[], t.md_snapshot_ns as f64 / 1e9)],
    );
}

/// Every reason of a by-reason array (zeros too, so a series exists from
/// the start), with its label.
fn labelled(counts: &[u64], label: fn(usize) -> String) -> Vec<(String, f64)> {
    counts
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, n)| (label(i), *n as f64))
        .chain(
            counts
                .first()
                .filter(|n| **n > 0)
                .map(|n| (label(0), *n as f64)),
        )
        .collect()
}

fn as_samples_ref<'a>(
    pairs: &'a [(Vec<(&'a str, &'a str)>, f64)],
) -> Vec<(&'a [(&'a str, &'a str)], f64)> {
    pairs.iter().map(|(l, v)| (l.as_slice(), *v)).collect()
}

impl Server {
    /// The admin endpoint's address, when it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_snake_case_wire_names() {
        assert_eq!(reject_reason_label(1), "unknown_symbol");
        assert_eq!(reject_reason_label(8), "duplicate_client_order_id");
        assert_eq!(reject_reason_label(0), "other");
        assert_eq!(close_reason_label(0), "peer_closed");
        assert_eq!(close_reason_label(10), "slow_consumer");
    }
}
