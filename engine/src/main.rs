//! `turbo-dex`: the order-matching engine server.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use engine::accounts::{self, Accounts};
use engine::book::ShardConfig;
use engine::config::parse_symbols;
use engine::journal::JournalConfig;
use engine::server::durable::JournalSettings;
use engine::server::{
    EngineKind, MdNatsSettings, PollMode, Server, ServerConfig, ring_capacity_for, stats,
};
use tuning::{CpuList, HostCheckConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// turbo-dex: a thread-per-core order-matching engine over io_uring TCP.
///
/// One pinned thread per core of --cores, each with its own io_uring,
/// listener (SO_REUSEPORT), connections and symbol shards; cores exchange
/// orders and reports over lock-free SPSC rings. Clients speak the binary
/// protocol in wire/PROTOCOL.md. Prints `turbo-dex listening on ADDR` on
/// stdout when ready, a live stats line on stderr every second, and final
/// stats on stdout after SIGINT/SIGTERM.
#[derive(Parser, Debug)]
#[command(name = "turbo-dex", version, about, long_about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// Address and port to listen on; port 0 picks a free one.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:9000")]
    listen: SocketAddr,

    /// Engine cores, taskset style (0-39, 0,2,4-7, 1-15:2): one pinned
    /// thread per core. Default: every core this process may run on.
    #[arg(long, value_name = "LIST")]
    cores: Option<CpuList>,

    /// Number of symbol shards (default: one per core). Symbol s lives in
    /// shard s % N and shard k on the (k % cores)-th core, so 80 shards on
    /// 40 cores gives two each. Must be at least the number of cores.
    #[arg(long, value_name = "N")]
    shards: Option<u32>,

    /// The symbol directory clients receive: a count of synthetic symbols
    /// (64 gives SYM0000..SYM0063), a comma-separated list of names
    /// (BTC-USD,ETH-USD), or a file with one name per line (@file forces a
    /// file). Symbol ids are positions in this list.
    #[arg(long, value_name = "COUNT|LIST|FILE", default_value = "64")]
    symbols: String,

    /// Most messages handled per ring drain and per outgoing frame.
    #[arg(long, value_name = "N", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=65535))]
    batch: u32,

    /// How a core waits for work: spin never sleeps (lowest latency, a full
    /// core each), adaptive spins briefly then sleeps in io_uring_enter,
    /// block sleeps whenever idle.
    #[arg(long, value_enum, default_value = "adaptive")]
    poll: PollMode,

    /// Most client connections in total; more are told why and closed.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_connections: usize,

    /// match: real limit order books. null: accept every order and match
    /// nothing, the transport ceiling benchmarks compare against.
    #[arg(long, value_enum, default_value = "match")]
    engine: EngineKind,

    /// MTU the sends are sized for: each send is a whole number of TCP
    /// segments (MTU 9000 gives MSS 8960). Default: the MTU of the
    /// listen address's interface (65536 on loopback, 1500 if unknown).
    #[arg(long, value_name = "BYTES")]
    mtu: Option<usize>,

    /// Most resting orders per shard; storage for them is allocated at start.
    #[arg(long, value_name = "N", default_value_t = 1 << 20)]
    orders_per_shard: u32,

    /// Most price levels on one side of one book.
    #[arg(long, value_name = "N", default_value_t = 1 << 14)]
    levels_per_side: u32,

    /// Protective band of market orders, in ticks beyond the best opposite price.
    #[arg(long, value_name = "TICKS", default_value_t = 1_000)]
    market_band_ticks: i64,

    /// Largest frame accepted from a client, in bytes (at most 16 MiB), and
    /// so the most partial-frame memory one connection holds. The default,
    /// 64 KiB, fits a batch of 2,000 NewOrders (64,008 bytes); raise it for
    /// larger batches.
    #[arg(long, value_name = "BYTES", default_value_t = engine::server::limits::MAX_FRAME_BYTES_DEFAULT,
          value_parser = clap::value_parser!(u32).range(4096..=i64::from(wire::MAX_FRAME_BYTES_LIMIT)))]
    max_frame_bytes: u32,

    /// Heartbeat interval for sessions that do not ask for one (100 to
    /// 60000); a session silent for 3 intervals is closed.
    #[arg(long, value_name = "MS", default_value_t = wire::DEFAULT_HEARTBEAT_INTERVAL_MS)]
    heartbeat_ms: u32,

    /// Disconnect a client that has not read its reports for this long.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    slow_consumer_ms: u64,

    /// Capacity of each core-to-core ring in messages (default scales with cores).
    #[arg(long, value_name = "N")]
    ring_capacity: Option<usize>,

    /// Journal directory: every accepted command is written and fdatasynced
    /// here before it is acknowledged, and a restart recovers the books from
    /// it. `none` turns durability off (benchmarks): acknowledgements are
    /// then not durable.
    #[arg(long, value_name = "DIR|none", default_value = "turbo-dex-data")]
    journal: String,

    /// batch: reports for a batch leave only after its journal write and
    /// fdatasync complete. never: once the write completes (into the page
    /// cache, or the disk's volatile cache with direct I/O), without
    /// fdatasync; UNSAFE: a power loss or kernel crash loses acknowledged
    /// orders (a process crash does not).
    #[arg(long, value_enum, default_value = "batch")]
    fsync: FsyncMode,

    /// Size of each pre-allocated journal segment file.
    #[arg(long, value_name = "BYTES", default_value_t = engine::journal::DEFAULT_SEGMENT_BYTES)]
    journal_segment_bytes: u64,

    /// Snapshot a shard after this many journal records; recovery replays
    /// at most this many records after loading the snapshot.
    #[arg(long, value_name = "RECORDS", default_value_t = engine::journal::DEFAULT_SNAPSHOT_EVERY_RECORDS)]
    snapshot_every: u64,

    /// Terminated orders each shard remembers, for status queries and for
    /// rejecting a reused client order id (also across restarts).
    #[arg(long, value_name = "N", default_value_t = ShardConfig::default().history_max)]
    order_history: u32,

    /// If set, a Hello's credentials must equal this token (one secret
    /// for every account; --accounts, which excludes it, gives each
    /// account its own password).
    #[arg(long, value_name = "TOKEN", env = "TURBO_DEX_AUTH_TOKEN")]
    auth_token: Option<String>,

    /// Accounts with passwords, one per line: `ID NAME ARGON2-PHC
    /// [max_sessions=N] [allow=CIDR,...]` (`turbo-dex accounts add` writes
    /// them). With it a Hello must be protocol version 2 with the account's
    /// password in `credentials`; passwords are checked on a thread that is
    /// not an engine core, and a wrong one is answered after 1 s. Without
    /// it any client may log on as any account.
    #[arg(long, value_name = "FILE")]
    accounts: Option<std::path::PathBuf>,

    /// Sessions one account may have at once (an account's max_sessions=
    /// overrides it); more are refused with SessionError TooManySessions.
    #[arg(long, value_name = "N", default_value_t = engine::server::limits::MAX_SESSIONS_PER_ACCOUNT)]
    max_sessions_per_account: u32,

    /// Connections one source address may have open at once; more are
    /// refused with SessionError TooManyConnections.
    #[arg(long, value_name = "N", default_value_t = engine::server::limits::MAX_CONNECTIONS_PER_ADDRESS)]
    max_connections_per_address: u32,

    /// Failed logons one source address may make per minute; after them
    /// its logons are refused at once, without a password check, until the
    /// minute is over (logged once per address and minute).
    #[arg(long, value_name = "N", default_value_t = engine::server::limits::AUTH_FAILURES_PER_WINDOW)]
    logon_failures_per_minute: u32,

    /// A connection must send its Hello within this long of connecting
    /// (SessionError LogonTimeout).
    #[arg(long, value_name = "MS", default_value_t = engine::server::limits::LOGON_TIMEOUT_MS)]
    logon_timeout_ms: u64,

    /// A frame whose first byte arrived must be complete within this long
    /// (SessionError FrameTimeout), so dripping bytes does not hold a connection.
    #[arg(long, value_name = "MS", default_value_t = engine::server::limits::FRAME_TIMEOUT_MS)]
    frame_timeout_ms: u64,

    /// The input memory of one core: the capacity of the buffers that hold
    /// its connections' partial frames, together. A connection whose buffer
    /// grows past it is closed (SessionError TooManyConnections, the reason
    /// in its text); a connection that sends whole frames holds none. At
    /// least --max-frame-bytes.
    #[arg(long, value_name = "BYTES", default_value_t = engine::server::limits::INPUT_MEMORY_PER_CORE)]
    input_memory_per_core: usize,
    /// Order entry rate of each session: NewOrders and Replaces per
    /// second (`N` or `N/s`; `off` for no limit, the default, so that
    /// benchmarks measure the engine). Past it, requests get
    /// Rejected(RateLimited); Cancels, queries and mass cancels are free.
    #[arg(long, value_name = "N/s|off", default_value = "off", value_parser = parse_rate)]
    max_order_rate: u64,

    /// How many NewOrders and Replaces a session may send at once, after
    /// a quiet period (the token bucket's size; at least 1).
    #[arg(long, value_name = "N", default_value_t = engine::server::DEFAULT_ORDER_BURST,
          value_parser = clap::value_parser!(u32).range(1..))]
    order_burst: u32,

    /// A session with more than this many rate-limited requests within one
    /// second is closed (SessionError OrderFlood); 0 never closes.
    #[arg(long, value_name = "N", default_value_t = engine::server::DEFAULT_FLOOD_REJECTS)]
    order_flood_rejects: u32,

    /// Most live orders one account may hold in one shard; more get
    /// Rejected(TooManyOpenOrders), so one account can never fill a shard
    /// for the others. Default: a quarter of --orders-per-shard. A journal
    /// must be replayed with the caps it was written with.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_open_orders_per_account: Option<u32>,

    /// Most live orders one account may hold in one symbol (default: no
    /// limit beyond --max-open-orders-per-account).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_open_orders_per_account_symbol: Option<u32>,

    /// The token that the kill switch's admin requests (POST
    /// /accounts/ID/kill and /accounts/ID/unblock) must carry as
    /// `Authorization: Bearer TOKEN`. Without it those requests are refused.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "TURBO_DEX_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// TLS 1.3 on the order-entry listener: the server's certificate chain
    /// (PEM, the server's certificate first). Needs --tls-key. Handshakes run
    /// on their own threads, never on an engine core; after the handshake
    /// the cores encrypt and decrypt in user space (rustls), and io_uring
    /// batching is unchanged. A client without TLS gets a SessionError in
    /// clear that says so, one log line, and the close. At start the log
    /// says whether this kernel has kTLS (keys are not installed into kTLS
    /// yet: the user-space path is used either way). The protocol bytes
    /// inside TLS are the same.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,

    /// Do not pin core threads to their CPUs (for machines where pinning is not allowed).
    #[arg(long)]
    no_pin: bool,

    /// No live stats line and no host warnings.
    #[arg(long)]
    quiet: bool,

    /// The admin HTTP endpoint: /health, /ready, /stats (JSON) and /metrics
    /// (Prometheus), served from a thread that is not an engine core. Port
    /// 0 picks a free port (printed on stdout as `turbo-dex admin listening
    /// on ADDR`); `none` turns it off. It has no authentication: keep it on
    /// loopback or behind a firewall.
    #[arg(long, value_name = "ADDR:PORT|none", default_value = "127.0.0.1:9100")]
    admin: String,

    /// Market data: a subscriber whose unsent output passes this many bytes
    /// when an update is to be added loses its subscriptions (MdStatus
    /// CutOff; it may subscribe again). At or above --out-max-bytes it never
    /// acts: the slow-consumer disconnect comes first.
    #[arg(long, value_name = "BYTES", default_value_t = engine::server::limits::MD_MAX_QUEUE_BYTES)]
    md_max_queue: usize,

    /// Republish every trade and top of book to NATS, on subjects
    /// turbo-dex.md.<SYMBOL>.trade and turbo-dex.md.<SYMBOL>.bbo, from a
    /// thread that is not an engine core (when NATS is slow or down,
    /// records are dropped and counted; matching never waits). Off by default.
    #[arg(long, value_name = "nats://HOST:PORT")]
    md_nats: Option<String>,

    /// Payload of the NATS market data: the binary records of PROTOCOL.md
    /// (MdTrade, MdTopOfBook) or one JSON object per message.
    #[arg(long, value_name = "binary|json", default_value = "binary")]
    md_nats_format: engine::mdbridge::BridgeFormat,

    /// Join a cluster: nodes share the symbol shards through NATS JetStream
    /// key-value buckets (nats-server -js, 2.9 or later) and each serves
    /// only the shards it holds a lease on; orders for the others get
    /// Rejected(WrongNode) naming the owner. `auto`: $NATS_URL if set, else
    /// a NATS server another node announces by mDNS (_turbo-dex._tcp), else
    /// one on 127.0.0.1:4222, else a nats-server this node starts (data
    /// under --journal) and announces. Needs --journal (the node id is kept there),
    /// and the same --shards and --symbols on every node (a node with others
    /// is refused, exit code 3). Shards are claimed after a 2 s join window;
    /// see README "Cluster".
    #[arg(long, value_name = "nats://HOST:PORT[,...]|auto")]
    cluster: Option<String>,

    /// With --cluster: the order-entry address other nodes' clients are
    /// sent to (HOST:PORT). Default: the listen address, if it is not
    /// unspecified (0.0.0.0 or ::), with the port actually bound.
    #[arg(long, value_name = "HOST:PORT", requires = "cluster")]
    advertise: Option<String>,

    /// With --cluster: store every journal batch of a shard in the shard's
    /// JetStream stream (TURBO_DEX_SHARD_<n>, this many replicas, file
    /// storage) before its reports leave, so that an acknowledged order
    /// survives the loss of this machine. 1: no replication (the local
    /// journal only). 2 or more needs that many NATS servers with
    /// JetStream in the cluster; see README "High availability".
    #[arg(long, value_name = "R", default_value_t = 1,
          value_parser = clap::value_parser!(u8)
              .range(1..=engine::server::limits::REPLICAS_MAX as i64))]
    replicas: u8,

    /// With --cluster: how long a shard's lease runs after each renewal,
    /// in ms. Renewals come every fifth of it; a node stops serving a
    /// shard three fifths after its last successful renewal; with
    /// --replicas 2 or more a standby takes over a shard whose lease
    /// expired. Shorter leases fail over faster and write the control
    /// plane more often. Every node of a cluster should use the same.
    #[arg(long, value_name = "MS", default_value_t = engine::cluster::plan::LEASE_MS,
          requires = "cluster",
          value_parser = clap::value_parser!(u64)
              .range(engine::cluster::plan::LEASE_MS_MIN..=engine::cluster::plan::LEASE_MS_MAX))]
    lease_ms: u64,

    /// Log lines on stderr as text (for people) or JSON (one object per
    /// line, for log collectors). RUST_LOG filters them (default: info).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// `2026-12-02T10:00:00.000000Z  INFO message`.
    Text,
    /// One JSON object per line.
    Json,
}

/// Log lines a full writer queue holds before it drops new ones.
const LOG_QUEUE_LINES: usize = 16_384;

/// Sets up the `tracing` subscriber: RUST_LOG filtering, and stderr written
/// by a writer thread, so that an engine core that logs (rarely: a
/// connection closed for an error, journal trouble) never blocks on a slow
/// log consumer; past `LOG_QUEUE_LINES` waiting lines, new ones are
/// dropped. Keep the guard until exit: dropping it flushes the queue.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("turbo-dex-log")
        .finish(std::io::stderr());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

/// When journal writes are made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum FsyncMode {
    /// fdatasync every batch before acknowledging it.
    Batch,
    /// Never fdatasync (unsafe: a machine crash loses acknowledged orders).
    Never,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Operator actions on a running server, through its admin endpoint
    /// (plain HTTP; the token comes from --admin-token or
    /// TURBO_DEX_ADMIN_TOKEN).
    Admin {
        #[command(subcommand)]
        action: AdminAction,
        /// The server's admin endpoint.
        #[arg(
            long = "admin",
            id = "admin_endpoint",
            value_name = "ADDR:PORT",
            default_value = "127.0.0.1:9100",
            global = true
        )]
        admin: SocketAddr,
        /// The server's --admin-token.
        #[arg(
            long = "admin-token",
            id = "admin_client_token",
            value_name = "TOKEN",
            env = "TURBO_DEX_ADMIN_TOKEN",
            hide_env_values = true,
            global = true
        )]
        admin_token: Option<String>,
    },
    /// Print the host tuning report for the given engine cores and exit
    /// non-zero when something is off (governor, irqbalance, THP, NIC
    /// interrupts on engine cores, memlock, MTU).
    CheckHost {
        /// Engine cores to check (default: all allowed).
        #[arg(long, value_name = "LIST")]
        cores: Option<CpuList>,
        /// Network interface clients arrive on.
        #[arg(long, value_name = "IFACE")]
        iface: Option<String>,
        /// MTU the interface should carry.
        #[arg(long, value_name = "BYTES")]
        mtu: Option<usize>,
    },
    /// Manage the accounts file of --accounts.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Look at or act on a cluster through its NATS server (no node needed).
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
        /// The cluster's NATS server(s); `auto`: $NATS_URL if set, else the
        /// NATS URL a node announces by mDNS (2 s), else
        /// nats://127.0.0.1:4222.
        #[arg(
            long = "cluster",
            id = "cluster_nats",
            value_name = "nats://HOST:PORT[,...]|auto",
            default_value = "auto",
            global = true
        )]
        nats: String,
    },
}

/// What `turbo-dex cluster` does.
#[derive(Subcommand, Debug)]
enum ClusterAction {
    /// Print the nodes (id, address, cores, heartbeat age) and every
    /// shard's owner and time left on its lease.
    Status,
    /// Move shard SHARD to node ID (operator's decision): writes a lease
    /// naming ID, already expired, so that node ID takes the shard on its
    /// next round (within 1 s if it runs). Refused while another node holds
    /// a live lease on it. For a shard whose owner is gone for good: copy
    /// its journal to node ID's journal directory first, or accept that
    /// the shard's orders are lost.
    Claim {
        /// The shard (0 to the cluster's shard count - 1).
        shard: u32,
        /// The node that gets it (16 hex digits, as `cluster status` shows).
        #[arg(long, value_name = "ID")]
        node: String,
        /// Required: asserts that node ID has the shard's journal (or that
        /// losing the shard's orders is accepted).
        #[arg(long)]
        force: bool,
    },
    /// Move a live shard to another live node, with replicated journals
    /// (nodes run with --replicas 2 or more): the lease is given to NODE,
    /// the owner stops at its next round, and NODE serves once its copy
    /// holds the whole stream (a standby's copy is current already).
    /// Waits until NODE serves the shard and prints the pause.
    Move {
        /// The shard (0 to the cluster's shard count - 1).
        shard: u32,
        /// The node that gets it (16 hex digits, as `cluster status` shows).
        node: String,
    },
    /// Move live shards until every live node owns its fair share (in
    /// proportion to its cores), as `move` moves them, one at a time: for
    /// a machine that came back after a failover, which only stands by.
    /// Each move pauses its shard for a moment and detaches the sessions
    /// of its resting orders (PROTOCOL.md §8.11 rule 9). With replicated
    /// journals only.
    Rebalance {
        /// Print the moves without making them.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand, Debug)]
enum AccountsCommand {
    /// Add an account (argon2id password hash) to the accounts file.
    ///
    /// Hashes its password with argon2id and appends the line to the file
    /// (created, mode 0600, if missing). The password is
    /// read from stdin (its first line) when stdin is not a terminal, else
    /// prompted for twice without echo; 1 to 32 bytes, no NUL.
    Add {
        /// The account's name (letters, digits, '_', '.', '-').
        name: String,
        /// The account id (default: one above the highest in the file).
        #[arg(long, value_name = "N")]
        id: Option<u64>,
        /// The accounts file.
        #[arg(long, value_name = "FILE", default_value = ACCOUNTS_FILE)]
        file: std::path::PathBuf,
        /// This account's most sessions at once (default: --max-sessions-per-account).
        #[arg(long, value_name = "N")]
        max_sessions: Option<u32>,
        /// Source networks it may log on from, comma-separated CIDRs (default: any).
        #[arg(long, value_name = "CIDR,...")]
        allow: Option<String>,
    },
    /// List the accounts of the file, never their hashes.
    ///
    /// Shows ids, names, limits, networks and the hash's algorithm and
    /// parameters; never the salt or the hash itself.
    List {
        /// The accounts file.
        #[arg(long, value_name = "FILE", default_value = ACCOUNTS_FILE)]
        file: std::path::PathBuf,
    },
}

/// The default accounts file of the `accounts` subcommands.
const ACCOUNTS_FILE: &str = "turbo-dex-accounts.txt";
/// What `turbo-dex admin` asks the server.
#[derive(Subcommand, Debug)]
enum AdminAction {
    /// Kill switch: cancel every live order of account ID and refuse its
    /// new orders until `unblock`.
    Kill {
        /// The account id.
        account: u64,
    },
    /// Lift the kill switch's block of account ID.
    Unblock {
        /// The account id.
        account: u64,
    },
}

/// `--max-order-rate`: `off`, `N` or `N/s` (0 is off).
fn parse_rate(s: &str) -> Result<u64, String> {
    if s == "off" {
        return Ok(0);
    }
    let n = s.strip_suffix("/s").unwrap_or(s);
    n.replace('_', "")
        .parse::<u64>()
        .map_err(|e| format!("{s:?}: {e}; give orders per second (100000 or 100000/s) or off"))
}

/// Sends an admin action to a running server and prints its answer.
fn admin_action(
    addr: SocketAddr,
    token: Option<String>,
    action: AdminAction,
) -> Result<ExitCode, String> {
    use std::io::{Read, Write};
    let (verb, account) = match action {
        AdminAction::Kill { account } => ("kill", account),
        AdminAction::Unblock { account } => ("unblock", account),
    };
    let token = token.ok_or(
        "no admin token: give --admin-token TOKEN or set TURBO_DEX_ADMIN_TOKEN \
         (the server's --admin-token)",
    )?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("cannot reach the admin endpoint {addr}: {e} (is turbo-dex running with --admin {addr}?)"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!(
        "POST /accounts/{account}/{verb} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending to {addr}: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    let status: u16 = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{addr} did not answer HTTP: {answer:?}"))?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim();
    if status == 202 {
        println!("{verb} account {account}: {body}");
        Ok(ExitCode::SUCCESS)
    } else {
        Err(format!(
            "{verb} account {account}: the server answered {status}: {body}"
        ))
    }
}

/// The exit code of a node its cluster refuses (another shard count, or
/// buckets that are not a turbo-dex cluster's).
const CLUSTER_REFUSED_EXIT: u8 = 3;

/// `--advertise HOST:PORT`: the first address the host name resolves to.
fn resolve_advertise(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    let addr = text
        .to_socket_addrs()
        .map_err(|e| format!("--advertise {text}: {e}; give HOST:PORT"))?
        .next()
        .ok_or_else(|| format!("--advertise {text}: the name has no address"))?;
    if addr.ip().is_unspecified() || addr.port() == 0 {
        return Err(format!(
            "--advertise {text}: give an address and port clients can connect to"
        ));
    }
    Ok(addr)
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("turbo-dex: error: {msg}");
    ExitCode::from(2)
}

fn default_cores() -> Result<CpuList, String> {
    tuning::allowed_cpus().map_err(|e| format!("cannot read this process's CPU affinity: {e}"))
}

fn resolve_cores(cores: Option<CpuList>) -> Result<CpuList, String> {
    let cores = match cores {
        Some(c) => c,
        None => default_cores()?,
    };
    cores
        .check_on_this_host()
        .map_err(|e| format!("--cores {cores}: {e}"))?;
    Ok(cores)
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Signals are taken by sigwait on this thread; block them before any
    // other thread (the log writer, the cores, the admin) starts, so that
    // every thread inherits the mask.
    let signals = block_signals();
    // Kept where a fatal exit (`engine::exit::exit_flushed`) can flush it.
    let _log = engine::exit::keep_log_guard(init_logging(args.log_format));
    if let Some(Command::Admin {
        action,
        admin,
        admin_token,
    }) = args.command
    {
        return admin_action(admin, admin_token, action).unwrap_or_else(fail);
    }
    if let Some(Command::CheckHost { cores, iface, mtu }) = args.command {
        let cores = match resolve_cores(cores) {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        let mut cfg = HostCheckConfig::new(cores);
        if let Some(i) = iface {
            cfg = cfg.with_iface(i);
        }
        if let Some(m) = mtu {
            cfg = cfg.with_mtu(m);
        }
        let report = tuning::check_host(&cfg);
        println!("{report}");
        return ExitCode::from(report.exit_code());
    }
    if let Some(Command::Cluster { action, nats }) = args.command {
        let result = engine::cluster::cluster_urls(&nats).and_then(|urls| match action {
            ClusterAction::Status => engine::cluster::agent::status(&urls),
            ClusterAction::Claim { shard, node, force } => {
                engine::cluster::agent::claim(&urls, shard, &node, force)
            }
            ClusterAction::Move { shard, node } => {
                engine::cluster::agent::move_shard(&urls, shard, &node)
            }
            ClusterAction::Rebalance { dry_run } => {
                engine::cluster::agent::rebalance(&urls, dry_run)
            }
        });
        return match result {
            Ok(text) => {
                print!("{}", text.trim_end_matches('\n'));
                println!();
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        };
    }
    if let Some(Command::Accounts(cmd)) = args.command {
        return match accounts_command(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        };
    }
    match run(args, signals) {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

/// Moves this thread, and so every thread it starts from now on (the
/// auth thread's password checks, journal housekeeping, TLS handshakes,
/// the admin endpoint, the stats line, the market-data bridge), to the
/// CPUs this process may use that are not engine cores. The engine cores
/// pin themselves to their own CPU, so they are not affected. Without a
/// spare CPU (or with --no-pin) the helpers share the engine cores, as
/// the log says.
fn keep_helpers_off_the_engine_cores(cores: &CpuList, pin: bool) {
    if !pin {
        return;
    }
    let spare = match tuning::allowed_cpus() {
        Ok(allowed) => allowed.difference(cores),
        Err(e) => {
            tracing::warn!(
                "cannot read this process's CPU affinity ({e}): helper threads are not moved off the engine cores"
            );
            return;
        }
    };
    if spare.is_empty() {
        tracing::info!(
            "no CPU besides the engine cores {cores}: helper threads (password checks, journal files, TLS handshakes, admin) share them"
        );
        return;
    }
    match tuning::set_current_thread_affinity(&spare) {
        Ok(()) => tracing::info!(
            "helper threads (password checks, journal files, TLS handshakes, admin) on CPUs {spare}, off the engine cores"
        ),
        Err(e) => tracing::warn!("helper threads stay where they are: {e}"),
    }
}

fn run(args: Args, signals: libc::sigset_t) -> Result<ExitCode, String> {
    let cores = resolve_cores(args.cores)?;
    let cpus = cores.to_vec();
    // Server::start validates the whole configuration (limits.rs).
    let shards = args.shards.unwrap_or(cpus.len() as u32);
    let symbols = parse_symbols(&args.symbols)?;
    let ipv6 = args.listen.is_ipv6();
    let iface = tuning::interface_for_local_addr(args.listen.ip())
        .ok()
        .flatten();
    let iface_mtu = iface
        .as_deref()
        .and_then(|i| tuning::interface_mtu(std::path::Path::new(tuning::SYS_ROOT), i).ok());
    let mtu = args
        .mtu
        .or(iface_mtu)
        .unwrap_or(tuning::mtu::ETHERNET_MTU_BYTES);
    if let (Some(i), Some(have), Some(want)) = (&iface, iface_mtu, args.mtu)
        && let Some(w) = tuning::mtu_warning(i, want, have)
    {
        tracing::warn!("{w}");
    }
    let segment = tuning::send_coalesce_bytes(mtu, ipv6).max(512);
    let mut cfg = ServerConfig::new(args.listen, cpus.clone(), symbols);
    cfg.pin = !args.no_pin;
    cfg.shards = shards;
    cfg.batch = args.batch as usize;
    cfg.poll = args.poll;
    cfg.max_connections = args.max_connections;
    cfg.engine = args.engine;
    cfg.shard = ShardConfig {
        orders_max: args.orders_per_shard,
        levels_per_side_max: args.levels_per_side,
        market_band_ticks: args.market_band_ticks,
        history_max: args.order_history,
        account_orders_max: args
            .max_open_orders_per_account
            .unwrap_or((args.orders_per_shard / 4).max(1)),
        account_symbol_orders_max: args.max_open_orders_per_account_symbol.unwrap_or(u32::MAX),
        ..ShardConfig::default()
    };
    cfg.order_limits = engine::server::OrderEntryLimits {
        orders_per_second: args.max_order_rate,
        burst: args.order_burst,
        flood_rejects: args.order_flood_rejects,
        flood_window_ms: engine::server::FLOOD_WINDOW_MS,
    };
    cfg.admin_token = args.admin_token.filter(|t| !t.is_empty());
    cfg.journal = match args.journal.as_str() {
        "none" => None,
        dir => Some(JournalSettings {
            config: JournalConfig {
                dir: dir.into(),
                segment_bytes: args.journal_segment_bytes,
                snapshot_every_records: args.snapshot_every,
            },
            fsync: args.fsync == FsyncMode::Batch,
        }),
    };
    cfg.max_frame_bytes = args.max_frame_bytes;
    cfg.heartbeat_ms = args.heartbeat_ms;
    cfg.slow_consumer_ms = args.slow_consumer_ms;
    cfg.send_chunk_bytes = segment * (1usize << 20).div_ceil(segment);
    cfg.ring_capacity = args
        .ring_capacity
        .unwrap_or_else(|| ring_capacity_for(cpus.len()));
    cfg.auth_token = args.auth_token.map(String::into_bytes);
    cfg.accounts = match &args.accounts {
        Some(path) => Some(std::sync::Arc::new(read_accounts(path)?)),
        None => None,
    };
    cfg.max_sessions_per_account = args.max_sessions_per_account;
    cfg.max_connections_per_address = args.max_connections_per_address;
    cfg.logon_failures_per_minute = args.logon_failures_per_minute;
    cfg.logon_timeout_ms = args.logon_timeout_ms;
    cfg.frame_timeout_ms = args.frame_timeout_ms;
    cfg.input_memory_per_core = args.input_memory_per_core;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        cfg.tls = Some(engine::server::tls::load_server_config(cert, key)?);
    }
    cfg.live_stats = !args.quiet;
    cfg.md_max_queue = args.md_max_queue;
    cfg.md_nats = args.md_nats.map(|url| MdNatsSettings {
        url,
        format: args.md_nats_format,
    });
    cfg.admin = match args.admin.as_str() {
        "none" => None,
        addr => Some(addr.parse().map_err(|e| {
            format!("--admin {addr}: {e}; give ADDR:PORT (127.0.0.1:9100) or none")
        })?),
    };

    if !args.quiet {
        let mut host = HostCheckConfig::new(cores.clone()).with_mtu(mtu);
        if let Some(i) = &iface {
            host = host.with_iface(i.clone());
        }
        tuning::print_startup_warnings("turbo-dex", &host);
    }

    keep_helpers_off_the_engine_cores(&cores, cfg.pin);
    // A cluster node joins (and agrees on the shard count) before it
    // starts: a refused node never recovers its journal or listens. With
    // --cluster auto, what discovery found (the mDNS announcement, a
    // nats-server this node started) lives as long as the node.
    let mut discovered: Option<engine::cluster::discovery::Discovered> = None;
    if args.replicas > 1 && args.cluster.is_none() {
        return Err(format!(
            "--replicas {} needs --cluster: the streams live in the cluster's NATS servers",
            args.replicas
        ));
    }
    let joined = match &args.cluster {
        None => None,
        Some(arg) => {
            let Some(journal) = &cfg.journal else {
                return Err(
                    "--cluster needs a journal directory (--journal DIR): the node id is kept \
                     there, and a restarted node takes back its shards with it"
                        .into(),
                );
            };
            if args.advertise.is_none() && args.listen.ip().is_unspecified() {
                return Err(format!(
                    "--cluster: --listen {} is unspecified, so clients of other nodes could not \
                     be told where to go; give --advertise HOST:PORT (this node's order-entry \
                     address as others reach it)",
                    args.listen
                ));
            }
            let node_id = engine::cluster::node_id(&journal.config.dir)?;
            let auto = arg.trim() == "auto";
            let urls = if auto {
                // What clients of other nodes are told (and what mDNS
                // announces): --advertise, else the listen address.
                let order_entry = match &args.advertise {
                    Some(a) => resolve_advertise(a)?,
                    None => args.listen,
                };
                let found =
                    engine::cluster::discover_auto(&journal.config.dir, node_id, order_entry)?;
                tracing::info!(
                    "--cluster auto: NATS at {} ({:?}{})",
                    found.urls.join(","),
                    found.source,
                    if found.server.is_some() {
                        ", a nats-server this node started"
                    } else {
                        ""
                    }
                );
                let urls = found.urls.join(",");
                discovered = Some(found);
                urls
            } else {
                engine::cluster::cluster_urls(arg)?
            };
            let mut view = engine::cluster::ClusterView::new(node_id, shards)
                .with_timing(engine::cluster::plan::Timing::from_lease(args.lease_ms));
            if args.replicas > 1 {
                view = view.replicated();
            }
            let view = std::sync::Arc::new(view);
            let config = engine::cluster::plan::ClusterConfig::new(shards, &cfg.symbols);
            match engine::cluster::agent::Joined::join(
                &urls,
                view.clone(),
                cpus.len() as u32,
                config,
                if auto {
                    engine::cluster::agent::AUTO_JOIN_PATIENCE
                } else {
                    std::time::Duration::ZERO
                },
                // With --replicas the control plane survives a server's loss too.
                usize::from(args.replicas),
            ) {
                Ok(j) => {
                    cfg.cluster = Some(std::sync::Arc::clone(&view));
                    if args.replicas > 1 {
                        cfg.replicate = Some(engine::server::replicate::ReplConfig {
                            urls: urls.clone(),
                            replicas: usize::from(args.replicas),
                            node: node_id,
                            journal_dir: journal.config.dir.clone(),
                            view,
                        });
                    }
                    Some(j)
                }
                Err(engine::cluster::agent::JoinError::Refused(e)) => {
                    eprintln!("turbo-dex: error: refused to join the cluster: {e}");
                    return Ok(ExitCode::from(CLUSTER_REFUSED_EXIT));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    // The agent starts before the journal's recovery when this node's
    // address is known already (not with --listen HOST:0): it registers
    // and heartbeats at once, so that nodes started together see each
    // other in their join windows even when one recovers for longer; it
    // writes no lease before the server runs (Agent::serving).
    let early = match &args.advertise {
        Some(a) => Some(resolve_advertise(a)?),
        None => Some(args.listen).filter(|l| l.port() != 0),
    };
    let (mut joined, mut agent) = match (joined, early) {
        (Some(j), Some(address)) => (None, Some(j.start(address)?)),
        (j, _) => (j, None),
    };
    let server = Server::start(cfg.clone()).map_err(|e| e.to_string())?;
    if let Some(j) = joined.take() {
        agent = Some(j.start(server.local_addr())?);
    }
    if let Some(a) = &agent {
        a.serving();
    }
    tracing::info!(
        "{} core(s) [{}], {} shard(s), {} symbol(s), engine {:?}, poll {:?}, batch {}, mtu {} (send in {}-byte segments), io_uring {}",
        cpus.len(),
        cores,
        shards,
        cfg.symbols.len(),
        cfg.engine,
        cfg.poll,
        cfg.batch,
        mtu,
        segment,
        engine::server::uring::probe()
            .map(|m| m.as_str())
            .unwrap_or("?"),
    );
    match (&cfg.journal, cfg.engine) {
        (_, EngineKind::Null) => {
            tracing::info!("null engine: no journal (nothing to make durable)")
        }
        (None, _) => tracing::warn!(
            "--journal none: acknowledgements are NOT durable; a crash loses every order"
        ),
        (Some(j), _) if !j.fsync => tracing::warn!(
            "journal in {} with --fsync never: UNSAFE, a machine crash loses acknowledged orders",
            j.config.dir.display()
        ),
        (Some(j), _) => tracing::info!(
            "journal in {}: orders are acknowledged once written and fdatasynced",
            j.config.dir.display()
        ),
    }
    println!("turbo-dex listening on {}", server.local_addr());
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let mut failed = false;
    loop {
        match wait_signal(&signals, Duration::from_millis(200)) {
            Some(sig) => {
                tracing::info!("received {sig}, shutting down");
                break;
            }
            None if server.has_failed_core() => {
                tracing::error!("a core thread stopped unexpectedly; shutting down");
                failed = true;
                break;
            }
            None => {}
        }
    }
    if let Some(agent) = agent {
        agent.stop();
    }
    let fin = server.stop();
    // Last: the mDNS announcement and a nats-server this node started go
    // after the agent has stopped using them.
    drop(discovered);
    print!("{}", stats::final_report(&fin.total, fin.elapsed_secs));
    let _ = std::io::stdout().flush();
    Ok(if failed || !fin.clean {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a set we own, then masking this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<&'static str> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: sigtimedwait reads the set and timeout we own; no siginfo wanted.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    match sig {
        libc::SIGINT => Some("SIGINT"),
        libc::SIGTERM => Some("SIGTERM"),
        _ => None,
    }
}

/// Reads and parses an accounts file; the error names the file and line.
fn read_accounts(path: &std::path::Path) -> Result<Accounts, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the accounts file {}: {e}", path.display()))?;
    Accounts::parse(&text).map_err(|e| format!("accounts file {}: {e}", path.display()))
}

fn accounts_command(cmd: AccountsCommand) -> Result<(), String> {
    match cmd {
        AccountsCommand::List { file } => {
            let accounts = read_accounts(&file)?;
            println!(
                "{:<20} {:<24} {:<12} {:<24} hash",
                "id", "name", "max_sessions", "allow"
            );
            for a in accounts.iter() {
                let max = a
                    .max_sessions
                    .map_or("default".to_string(), |n| n.to_string());
                let allow = if a.allow.is_empty() {
                    "any".to_string()
                } else {
                    a.allow
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                };
                println!(
                    "{:<20} {:<24} {:<12} {:<24} {}",
                    a.id,
                    a.name,
                    max,
                    allow,
                    accounts::redacted(&a.phc)
                );
            }
            Ok(())
        }
        AccountsCommand::Add {
            name,
            id,
            file,
            max_sessions,
            allow,
        } => {
            accounts::check_name(&name)?;
            let existing = if file.exists() {
                read_accounts(&file)?
            } else {
                Accounts::default()
            };
            if existing.by_name(&name).is_some() {
                return Err(format!(
                    "{}: an account named {name:?} exists already",
                    file.display()
                ));
            }
            let id = id.unwrap_or_else(|| existing.next_id());
            if id == 0 || existing.get(id).is_some() {
                return Err(format!(
                    "{}: account id {id} is taken or invalid; pick another --id",
                    file.display()
                ));
            }
            if max_sessions == Some(0) {
                return Err("--max-sessions must be at least 1".into());
            }
            let allow = match allow {
                Some(list) => list
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<Vec<accounts::Cidr>, String>>()?,
                None => Vec::new(),
            };
            let password = read_password()?;
            accounts::check_password(&password)?;
            let mut salt = [0u8; accounts::SALT_BYTES];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut salt))
                .map_err(|e| format!("cannot read random bytes for the salt: {e}"))?;
            let started = std::time::Instant::now();
            let phc = accounts::hash_password(&password, &salt)?;
            let took = started.elapsed();
            let account = accounts::Account {
                id,
                name,
                phc,
                max_sessions,
                allow,
            };
            append_line(&file, &accounts::format_line(&account))?;
            println!(
                "added account {} ({}) to {}",
                account.id,
                account.name,
                file.display()
            );
            // A logon's check costs what this hash did (same parameters).
            println!(
                "hashed with {} in {:.1} ms (each logon's password check costs about the same, on the auth thread)",
                accounts::redacted(&account.phc).trim_end_matches("$..."),
                took.as_secs_f64() * 1e3
            );
            Ok(())
        }
    }
}

/// Appends a line to the accounts file, creating it readable by its owner only.
fn append_line(path: &std::path::Path, line: &str) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let needs_newline = std::fs::read(path).is_ok_and(|b| b.last().is_some_and(|&c| c != b'\n'));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot open {} to add the account: {e}", path.display()))?;
    let text = format!("{}{line}\n", if needs_newline { "\n" } else { "" });
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The new password: stdin's first line when stdin is not a terminal,
/// else asked for twice without echo.
fn read_password() -> Result<Vec<u8>, String> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let stdin = std::io::stdin();
    let read_line = || -> Result<Vec<u8>, String> {
        let mut line = Vec::new();
        stdin
            .lock()
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("cannot read the password: {e}"))?;
        while line.last().is_some_and(|&c| c == b'\n' || c == b'\r') {
            line.pop();
        }
        Ok(line)
    };
    if !stdin.is_terminal() {
        return read_line();
    }
    let ask = |prompt: &str| -> Result<Vec<u8>, String> {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        let echo = EchoOff::new();
        let line = read_line();
        drop(echo);
        eprintln!();
        line
    };
    let first = ask("password (1 to 32 bytes): ")?;
    let again = ask("again: ")?;
    if first != again {
        return Err("the passwords differ".into());
    }
    Ok(first)
}

/// Turns the terminal's echo off on stdin until dropped.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: termios is plain data; tcgetattr fills the one we own.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 and a valid pointer to our termios.
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return EchoOff(None);
        }
        let saved = t;
        t.c_lflag &= !libc::ECHO;
        // SAFETY: fd 0 and a valid termios read by the call.
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) } != 0 {
            return EchoOff(None);
        }
        EchoOff(Some(saved))
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: fd 0 and the termios saved before; restores the echo.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, saved) };
        }
    }
}
