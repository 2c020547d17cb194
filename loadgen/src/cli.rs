//! The command line (`dex-trader --help`) and its checks.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tuning::CpuList;

use crate::flow::Mix;
use crate::logging::LogFormat;
use crate::md::{MdPlan, SUBSCRIBER_THREADS_MAX, SUBSCRIBERS_MAX, SymbolSpec, subscribe_flags};
use crate::session::CONNECTIONS_PER_WORKER_MAX;

/// Longest `--duration`, `--warmup` or `--drain`: a week. Keeps the
/// nanosecond clock arithmetic far from overflow.
pub const DURATION_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

const AFTER_HELP: &str = "\
Examples:
  dex-trader --server 127.0.0.1:9000 --duration 10s
  dex-trader --server 10.0.0.2:9000 --batch 2000 --cores 0-7 --connections 2 --duration 60s
  dex-trader --server 10.0.0.2:9000 --rate 1000000 --mix match --json result.json
  dex-trader --server 127.0.0.1:9000 --mix match --connections 2 --verify --duration 2s
  dex-trader --server 127.0.0.1:9000 --admin 127.0.0.1:9101 --log-format json --duration 10m
  dex-trader --server 127.0.0.1:9000 --mix match --subscribe all --depth --top --verify --duration 2s
  dex-trader --server 127.0.0.1:9000 --duration 30s --hgrm run.hgrm --interval-log run.hlog --plot run.svg
  dex-trader --cluster 10.0.0.2:9000,10.0.0.3:9000 --mix match --duration 30s   (each order to its shard's node)
  dex-trader --cluster 10.0.0.2:9000,10.0.0.3:9000,10.0.0.4:9000 --mix match --verify --duration 2s
  dex-trader --cluster nats://10.0.0.2:4222 --mix match --duration 30s   (the nodes the cluster publishes in NATS)
  dex-trader --cluster auto --mix match --duration 30s   (NATS_URL, else nodes announced by mDNS, else nats://127.0.0.1:4222)
  dex-trader flood --server 127.0.0.1:9000     (probe the server's limits; dex-trader flood --help)

Latency is measured from each request's send time (closed loop) or its
scheduled time (open loop, --rate) to its first answer from the server.
Exit status: 0 ok, 1 the run failed or --verify found violations, 2 usage error.";

/// dex-trader: drives a turbo-dex server with a realistic order flow from
/// pinned cores and reports throughput and latency.
#[derive(Parser, Debug, Clone)]
#[command(name = "dex-trader", version, about, long_about = None, after_help = AFTER_HELP)]
pub struct Args {
    /// The server, HOST:PORT (hostnames resolve; the first address is used).
    /// Required unless --cluster is given.
    #[arg(
        long,
        env = "DEX_SERVER",
        value_name = "HOST:PORT",
        required_unless_present = "cluster"
    )]
    pub server: Option<String>,

    /// Trade with a turbo-dex cluster: seed nodes HOST:PORT[,HOST:PORT...]
    /// (order-entry addresses), the cluster's NATS servers
    /// nats://HOST:PORT[,nats://HOST:PORT...] (the live nodes of the map the
    /// cluster publishes there become the seeds), or `auto`: $NATS_URL if
    /// set, else the nodes announced by multicast DNS (browsed for up to
    /// 2 s), else nats://127.0.0.1:4222. The first seed that answers gives
    /// the cluster map; every session then connects to each node that owns
    /// shards and sends each request to its symbol's owner, following
    /// WrongNode answers and re-reading the map every second. Finding no
    /// node (NATS unreachable, nothing announced) exits with status 1.
    #[arg(long, value_name = "SEEDS|nats://...|auto")]
    pub cluster: Option<String>,

    /// Orders per frame. At most what one NewOrder frame can carry under the
    /// server's max_frame_bytes (2,047 with turbo-dex's default 64 KiB
    /// frames, 32,767 with --max-frame-bytes 1048576); checked after the
    /// handshake.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub batch: u32,

    /// Cores to run workers on, taskset style (0-3,8,10-15:2): one worker
    /// thread pinned to each. Default: one worker on the first CPU this
    /// process may use (its affinity mask, as set by taskset or a cgroup).
    #[arg(long, value_name = "LIST")]
    pub cores: Option<CpuList>,

    /// Do not pin the workers: each runs wherever the scheduler puts it
    /// (for comparing pinned against unpinned runs).
    #[arg(long)]
    pub no_pin: bool,

    /// Keep a worker spinning this long (500us, 1s) after its last work
    /// before it parks, and poll the sockets with non-blocking send and
    /// recv meanwhile (one task per connection) instead of waiting for
    /// io_uring readiness, whose completion interrupts the thread once per
    /// answer. Parking means the next answer has to wake the thread (a
    /// cross-CPU wake-up, tens of microseconds on some VMs), so latency
    /// measurements should spin; it costs a whole core. Default 0: park at
    /// once, io_uring readiness.
    #[arg(long, value_parser = parse_duration, value_name = "TIME")]
    pub spin: Option<Duration>,

    /// Connections per worker (each a session, with its own account unless
    /// --accounts says otherwise). Default 2, so that even one worker's
    /// orders trade: orders of one account never trade with each other
    /// (self-trade prevention cancels them), so a run under one account
    /// (--connections 1 with one core, or --accounts 1) warns.
    #[arg(long, default_value_t = 2, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=CONNECTIONS_PER_WORKER_MAX as i64))]
    pub connections: u32,

    /// How long to measure, after the warmup: 500ms, 10s, 2m, 1h, 1m30s.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "TIME")]
    pub duration: Duration,

    /// Trading before the measurement starts, excluded from every figure.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "TIME")]
    pub warmup: Duration,

    /// Target requests per second in total (open loop: sent on schedule
    /// whatever the server does, latency counted from the schedule). 0 or
    /// absent: closed loop, as fast as the server answers, with at most
    /// --inflight requests unanswered per connection.
    #[arg(long, value_name = "N")]
    pub rate: Option<u64>,

    /// Most requests awaiting their first answer per connection. Default:
    /// 4 batches in closed loop; in open loop 4 batches or 10 ms of the
    /// connection's rate, whichever is more (when reached, sending pauses and
    /// the late orders keep their scheduled times).
    #[arg(long, value_name = "N")]
    pub inflight: Option<u32>,

    /// How many of the server's symbols to trade (the first N of its
    /// directory, Zipf-skewed popularity). Default: all.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub symbols: Option<u32>,

    /// Order mix: realistic (exchange-core like: 9% GTC, 3% IOC, 6% cancel,
    /// 82% replace), insert (resting orders and cancels) or match (takers
    /// sweeping a book that GTC orders keep up: about half the requests
    /// cross, the most trades per request).
    #[arg(long, value_enum, default_value_t = Mix::Realistic)]
    pub mix: Mix,

    /// Seed of the order flow: the same seed and the same server answers
    /// give the same requests.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub seed: u64,

    /// Account of the first connection; connection i (counted over all
    /// workers) uses account + (i mod accounts). Default: the start time in
    /// milliseconds since the epoch, so that each run trades under accounts
    /// no earlier run used: a server with a journal remembers client order
    /// ids per account (also across restarts) and would refuse a rerun's ids
    /// as duplicates.
    #[arg(long, value_name = "N")]
    pub account: Option<u64>,

    /// How many accounts the connections spread over. Default: one per
    /// connection. Orders of one account never trade with each other
    /// (self-trade prevention), so trading needs at least 2.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub accounts: Option<u64>,

    /// Credentials for the Hello (at most 32 bytes).
    #[arg(
        long,
        default_value = "",
        env = "DEX_CREDENTIALS",
        value_name = "STR",
        hide_env_values = true
    )]
    pub credentials: String,

    /// Read the Hello's credentials from the first line of FILE instead of
    /// --credentials (keeps a password off the command line): the password
    /// of the --account a turbo-dex with --accounts checks. Every session
    /// of the run sends it, so give --accounts 1, or accounts that share it.
    #[arg(long, value_name = "FILE", conflicts_with = "credentials")]
    pub password_file: Option<std::path::PathBuf>,

    /// Per-connection accounts for a multi-account run against a turbo-dex
    /// with --accounts: one `ACCOUNT_ID PASSWORD` per line (blank lines and
    /// lines starting with # skipped; the password is the rest of the
    /// line, at most 32 bytes). Connection i (counted over all workers)
    /// logs on with line i mod the number of lines. Replaces --account,
    /// --accounts, --credentials and --password-file.
    #[arg(long, value_name = "FILE",
          conflicts_with_all = ["account", "accounts", "credentials", "password_file"])]
    pub logins: Option<std::path::PathBuf>,

    /// Parsed from --logins by the caller (not a flag).
    #[arg(skip)]
    pub login_list: Vec<(u64, String)>,

    /// Send coalescing: small frames are gathered up to one TCP segment of
    /// this MTU before a send. Default: the path MTU of each connection.
    #[arg(long, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(576..=65_536))]
    pub mtu: Option<u32>,

    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Also write the measured latency histogram to this file as an
    /// HdrHistogram percentile distribution (`.hgrm`, microseconds, the
    /// text Java's outputPercentileDistribution prints), for HdrHistogram's
    /// plotter and the tools wrk2 users have.
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,

    /// Also write the latency histogram of every second to this file as an
    /// HdrHistogram interval log (values in nanoseconds; warmup and drain
    /// seconds tagged `warmup` and `drain`), for HistogramLogProcessor and
    /// other interval-log readers.
    #[arg(long, value_name = "FILE")]
    pub interval_log: Option<PathBuf>,

    /// Also draw the run as an SVG chart: the latency percentile
    /// distribution (log axis of nines: 90%, 99%, 99.9%, ...) above the
    /// orders and trades per second of every second.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,

    /// Check every answer: one terminal report per order, fills within the
    /// order's quantity, consistent leaves, reports only for our orders,
    /// trades paired. Cancels every open order at the end (see --drain) and
    /// exits 1 on any violation. Meant for --engine match: the null engine
    /// keeps no orders. Assumes nobody else trades on the server. With
    /// --subscribe also fails on a market-data gap, checksum or top-of-book
    /// mismatch, or a feed silent while the run traded. With --cluster the
    /// same checks over every node's reports (trades paired per node);
    /// requests with no reachable owner (unrouted) or answered WrongNode
    /// count as rejected, not as violations.
    #[arg(long)]
    pub verify: bool,

    /// After the measurement: how long to wait for outstanding answers (and
    /// with --verify for the final cancels) before giving up.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "TIME")]
    pub drain: Duration,

    /// How long a connection and its handshake may take.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "TIME")]
    pub connect_timeout: Duration,

    /// No live line on stderr and no host-tuning warnings; the summary still
    /// goes to stdout.
    #[arg(long)]
    pub quiet: bool,

    /// How warnings, errors and the live line are written to stderr: text
    /// (`dex-trader: warning: ...`, as always) or json (one object per line,
    /// for log collectors). RUST_LOG filters them (default info; warn drops
    /// the live line). The summary and --json report are not affected.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "DEX_LOG_FORMAT",
          value_name = "FORMAT")]
    pub log_format: LogFormat,

    /// Serve /metrics (Prometheus text format) and /health over HTTP on
    /// this address while the run lasts, e.g. 127.0.0.1:9101 (port 0 picks
    /// one; the address is printed on stdout as `dex-trader admin listening
    /// on ADDR`). No authentication: keep it on loopback or a trusted
    /// network. Default: off.
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin: Option<SocketAddr>,

    /// Order entry (and --subscribe) over TLS 1.3, for a server started with
    /// turbo-dex --tls-cert. Needs --tls-ca. The server's certificate must be
    /// signed by that CA, be current, and name --tls-server-name; otherwise
    /// the run fails at connect, saying which. The protocol inside is the same.
    #[arg(long, requires = "tls_ca")]
    pub tls: bool,

    /// With --tls: the CA certificate(s) (PEM) that the server's
    /// certificate must be signed by; only these are trusted.
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub tls_ca: Option<PathBuf>,

    /// With --tls: the name the server's certificate must carry (a DNS name
    /// or an IP address). Default: the host part of --server.
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub tls_server_name: Option<String>,

    /// Also run market-data subscribers (protocol version 2) beside the
    /// trading sessions (always beside them: dex-trader has no mode without
    /// trading): `all` (one Subscribe for every symbol) or comma-separated
    /// names or ids from the server's directory. Each keeps a local book
    /// per symbol, checks every sequence number and checksum, resubscribes
    /// on a gap or mismatch, and measures feed latency (engine time to
    /// receipt, one host clock); the report gains `market_data`, and
    /// --verify fails on any gap or mismatch. Trades are always subscribed.
    #[arg(long, value_name = "SYMBOLS|all", value_parser = SymbolSpec::parse)]
    pub subscribe: Option<SymbolSpec>,

    /// With --subscribe: full depth by price level (snapshot, then every
    /// update; checked against the checksums).
    #[arg(long, requires = "subscribe")]
    pub depth: bool,

    /// With --subscribe: top of book (checked against the local book with --depth).
    #[arg(long, requires = "subscribe")]
    pub top: bool,

    /// With --subscribe: ask for conflated top of book (at most one per
    /// symbol per server loop iteration).
    #[arg(long, requires = "subscribe")]
    pub conflate: bool,

    /// With --subscribe: subscriber connections (each its own session and
    /// account, after the trading sessions' accounts).
    #[arg(long, default_value_t = 1, value_name = "N", requires = "subscribe",
          value_parser = clap::value_parser!(u32).range(1..=SUBSCRIBERS_MAX as i64))]
    pub subscribers: u32,

    /// With --subscribe: threads the subscribers run on (unpinned, beside
    /// the trading workers; subscriber i on thread i mod N). One thread
    /// that cannot keep up gets its subscribers cut off by the server.
    #[arg(long, default_value_t = 1, value_name = "N", requires = "subscribe",
          value_parser = clap::value_parser!(u32).range(1..=SUBSCRIBER_THREADS_MAX as i64))]
    pub subscriber_threads: u32,
}

/// Parses the text of a --logins file: `ACCOUNT_ID PASSWORD` per line.
pub fn parse_logins(text: &str) -> Result<Vec<(u64, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (id, password) = line
            .trim_start()
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("line {}: expected ACCOUNT_ID PASSWORD", n + 1))?;
        let id: u64 = id
            .parse()
            .map_err(|_| format!("line {}: {id:?} is not an account id", n + 1))?;
        let password = password.trim();
        if password.is_empty() || password.len() > 32 || password.contains('\0') {
            return Err(format!(
                "line {}: the password must be 1 to 32 bytes without NUL",
                n + 1
            ));
        }
        out.push((id, password.to_string()));
    }
    if out.is_empty() {
        return Err("no ACCOUNT_ID PASSWORD line".into());
    }
    Ok(out)
}

/// Parses a humane duration: a number with a unit (ns, us, ms, s, m, h),
/// possibly several (`1m30s`), or a bare number of seconds; decimals allowed.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; write it like 500ms, 10s, 2m or 1h".into());
    }
    if let Ok(secs) = text.parse::<f64>() {
        return seconds(secs, text);
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        let unit_len = tail
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let value: f64 = number.parse().map_err(|_| {
            format!("`{text}` is not a duration; write it like 500ms, 10s, 2m, 1h or 1m30s")
        })?;
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" | "sec" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(format!(
                    "`{text}`: a number without a unit inside a duration; add s, ms, m or h"
                ));
            }
            other => {
                return Err(format!(
                    "`{text}`: unknown unit `{other}`; use ns, us, ms, s, m or h"
                ));
            }
        };
        total += value * scale;
        rest = tail;
    }
    seconds(total, text)
}

fn seconds(secs: f64, text: &str) -> Result<Duration, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{text}` is not a duration of zero or more"));
    }
    let d = Duration::try_from_secs_f64(secs).map_err(|e| format!("`{text}`: {e}"))?;
    if d > DURATION_MAX {
        return Err(format!("`{text}` is longer than the limit of one week"));
    }
    Ok(d)
}

/// A command-line problem found after parsing (exit status 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The checked plan of a run, from [`Args`].
#[derive(Clone, Debug)]
pub struct Plan {
    /// The server's address.
    pub server: SocketAddr,
    /// As written on the command line.
    pub server_name: String,
    /// One worker per entry, pinned to that CPU (unless `pin` is false).
    pub cores: Vec<usize>,
    /// Pin each worker to its CPU.
    pub pin: bool,
    /// Spin this long before parking an idle worker.
    pub spin: Option<Duration>,
    /// Connections per worker.
    pub connections: usize,
    /// Orders per frame.
    pub batch: usize,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before it.
    pub warmup: Duration,
    /// Wait for answers after it.
    pub drain: Duration,
    /// Connect and handshake timeout.
    pub connect_timeout: Duration,
    /// Total requests per second (open loop) or `None` (closed loop).
    pub rate: Option<u64>,
    /// `--inflight` if given.
    pub inflight: Option<usize>,
    /// `--symbols` if given.
    pub symbols: Option<usize>,
    /// The mix.
    pub mix: Mix,
    /// The seed.
    pub seed: u64,
    /// First account.
    pub account: u64,
    /// Accounts spread over the connections.
    pub accounts: u64,
    /// Hello credentials.
    pub credentials: String,
    /// `--logins`: (account, password) per connection, round robin; empty
    /// without it (then account/accounts/credentials apply).
    pub logins: Vec<(u64, String)>,
    /// `--mtu` if given.
    pub mtu: Option<usize>,
    /// `--json` if given.
    pub json: Option<PathBuf>,
    /// `--hgrm` if given.
    pub hgrm: Option<PathBuf>,
    /// `--interval-log` if given.
    pub interval_log: Option<PathBuf>,
    /// `--plot` if given.
    pub plot: Option<PathBuf>,
    /// `--verify`.
    pub verify: bool,
    /// `--quiet`.
    pub quiet: bool,
    /// `--admin` if given.
    pub admin: Option<SocketAddr>,
    /// `--subscribe` and its companions, if given.
    pub market_data: Option<MdPlan>,
    /// `--tls` and its CA and name, if given.
    pub tls: Option<crate::tls::TlsPlan>,
    /// `--cluster`: the seed nodes (`server` is the first of them unless
    /// `--server` was given too).
    pub cluster: Option<Vec<SocketAddr>>,
}

impl Plan {
    /// Total connections over all workers.
    pub fn total_connections(&self) -> usize {
        self.cores.len() * self.connections
    }

    /// The account and password connection `i` (over all workers) logs
    /// on with.
    pub fn login(&self, i: usize) -> (u64, &str) {
        if self.logins.is_empty() {
            (
                self.account.wrapping_add(i as u64 % self.accounts.max(1)),
                &self.credentials,
            )
        } else {
            let (account, password) = &self.logins[i % self.logins.len()];
            (*account, password)
        }
    }

    /// Different accounts the connections trade under.
    pub fn distinct_accounts(&self) -> u64 {
        (self.total_connections() as u64).min(self.accounts)
    }

    /// What to warn about before the run: one account for every
    /// connection means self-trade prevention cancels whatever crosses.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.distinct_accounts() < 2 && self.mix != Mix::Insert {
            out.push(format!(
                "all {} connection(s) trade under one account: self-trade prevention cancels \
                 every order that meets the run's own resting orders, so the match engine \
                 reports few or no trades; use --connections 2 or more (one account each) or \
                 --accounts 2 or more",
                self.total_connections()
            ));
        }
        out
    }

    /// Most requests unanswered per connection.
    pub fn outstanding_max(&self) -> usize {
        if let Some(n) = self.inflight {
            return n;
        }
        let four_batches = 4 * self.batch;
        match self.rate {
            None => four_batches,
            Some(rate) => {
                let per_connection = rate / self.total_connections().max(1) as u64;
                four_batches.max((per_connection / 100) as usize)
            }
        }
        .min(crate::session::SLOTS_MAX / 4)
    }

    /// Most orders that may rest per connection: as many as may be in
    /// flight (replaces and cancels need live orders to act on) plus 2048,
    /// at least 4096. Far below a server's book capacity, and small enough
    /// that the generator's order table stays in cache.
    pub fn live_max(&self) -> usize {
        (self.outstanding_max() + 2048).max(4096)
    }
}

/// The host of `HOST:PORT` (without the brackets of `[IPv6]:PORT`).
/// What `--cluster` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterSource {
    /// `HOST:PORT[,HOST:PORT...]`: seed nodes' order-entry addresses, as
    /// [`plan`] takes them.
    Seeds,
    /// `nats://HOST:PORT[,...]` (or `tls://`): the cluster's NATS servers,
    /// where it publishes its map ([`crate::discover`] reads the seeds).
    Nats(String),
    /// `auto`: `NATS_URL`, else mDNS, else `nats://127.0.0.1:4222`
    /// ([`crate::discover`]).
    Auto,
}

/// `--cluster`'s value: which kind it is. Pure; NATS URLs are checked
/// further when they are read.
pub fn cluster_source(text: &str) -> Result<ClusterSource, UsageError> {
    let text = text.trim();
    if text == "auto" {
        return Ok(ClusterSource::Auto);
    }
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    let urls = parts.iter().filter(|p| p.contains("://")).count();
    if urls == 0 {
        return Ok(ClusterSource::Seeds);
    }
    if urls < parts.len() {
        return Err(UsageError(format!(
            "--cluster {text}: mixes NATS URLs and node addresses (or has an empty entry); \
             give either nats://HOST:PORT[,nats://HOST:PORT...] or HOST:PORT[,HOST:PORT...]"
        )));
    }
    if let Some(bad) = parts
        .iter()
        .find(|p| !(p.starts_with("nats://") || p.starts_with("tls://")))
    {
        return Err(UsageError(format!(
            "--cluster {bad}: not a NATS URL; give nats://HOST:PORT, seed nodes \
             HOST:PORT[,HOST:PORT...], or auto"
        )));
    }
    Ok(ClusterSource::Nats(text.to_string()))
}

/// `--cluster SEEDS`: the seed nodes, resolved, with their text.
fn cluster_seeds(text: &str) -> Result<Vec<(SocketAddr, String)>, UsageError> {
    if cluster_source(text)? != ClusterSource::Seeds {
        return Err(UsageError(format!(
            "--cluster {text}: the seed nodes must be found first (loadgen::discover::seeds \
             reads them from NATS or mDNS); the plan takes HOST:PORT[,HOST:PORT...]"
        )));
    }
    let mut seeds = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let addr = part
            .to_socket_addrs()
            .map_err(|e| {
                UsageError(format!(
                    "--cluster {part}: cannot resolve it ({e}); give HOST:PORT[,HOST:PORT...]"
                ))
            })?
            .next()
            .ok_or_else(|| UsageError(format!("--cluster {part}: the name has no address")))?;
        seeds.push((addr, part.to_string()));
    }
    if seeds.is_empty() {
        return Err(UsageError(
            "--cluster needs at least one seed node, HOST:PORT[,HOST:PORT...]".into(),
        ));
    }
    Ok(seeds)
}

/// What `--cluster` does not combine with (yet).
fn check_cluster_plan(plan: &Plan) -> Result<(), UsageError> {
    let refused = [
        (plan.spin.is_some(), "--spin"),
        (plan.tls.is_some(), "--tls"),
        (plan.market_data.is_some(), "--subscribe"),
    ];
    if let Some((_, flag)) = refused.iter().find(|(on, _)| *on) {
        return Err(UsageError(format!(
            "--cluster cannot be combined with {flag} yet: a routed session spreads its orders \
             over several nodes, and {flag} is written for one connection to one server; run \
             {flag} against one node with --server"
        )));
    }
    Ok(())
}

fn host_part(server: &str) -> String {
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// Checks `args` and resolves the server: the [`Plan`] of the run.
pub fn plan(args: &Args) -> Result<Plan, UsageError> {
    let cluster = match &args.cluster {
        None => None,
        Some(seeds) => Some(cluster_seeds(seeds)?),
    };
    let server_text = match (&args.server, &cluster) {
        (Some(s), _) => s.clone(),
        (None, Some(seeds)) => seeds[0].1.clone(),
        (None, None) => return Err(UsageError("--server HOST:PORT is required".into())),
    };
    let server = server_text
        .to_socket_addrs()
        .map_err(|e| {
            UsageError(format!(
                "--server {server_text}: cannot resolve it ({e}); give HOST:PORT, like \
                 127.0.0.1:9000"
            ))
        })?
        .next()
        .ok_or_else(|| UsageError(format!("--server {server_text}: the name has no address")))?;
    let cores =
        match &args.cores {
            Some(list) => {
                list.check_on_this_host()
                    .map_err(|e| UsageError(format!("--cores {list}: {e}")))?;
                list.to_vec()
            }
            None => {
                let allowed = tuning::allowed_cpus().map_err(|e| {
                    UsageError(format!(
                        "cannot read this process's CPU affinity ({e}); pass --cores"
                    ))
                })?;
                vec![allowed.first().ok_or_else(|| {
                    UsageError("this process may run on no CPU; pass --cores".into())
                })?]
            }
        };
    if args.credentials.len() > 32 {
        return Err(UsageError(format!(
            "--credentials is {} bytes; the Hello carries at most 32",
            args.credentials.len()
        )));
    }
    let rate = args.rate.filter(|&r| r > 0);
    let batch = args.batch as usize;
    let tls = match (&args.tls_ca, args.tls) {
        (Some(ca), true) => {
            let name = args
                .tls_server_name
                .clone()
                .unwrap_or_else(|| host_part(&server_text));
            Some(crate::tls::load_client_config(ca, &name).map_err(UsageError)?)
        }
        _ => None,
    };
    let plan = Plan {
        server,
        server_name: server_text.clone(),
        cluster: cluster.map(|seeds| seeds.into_iter().map(|(a, _)| a).collect()),
        cores,
        pin: !args.no_pin,
        spin: args.spin.filter(|d| !d.is_zero()),
        connections: args.connections as usize,
        batch,
        duration: args.duration,
        warmup: args.warmup,
        drain: args.drain,
        connect_timeout: args.connect_timeout.max(Duration::from_millis(1)),
        rate,
        inflight: args.inflight.map(|n| n as usize),
        symbols: args.symbols.map(|n| n as usize),
        mix: args.mix,
        seed: args.seed,
        account: args.account.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_millis() as u64)
        }),
        accounts: if args.login_list.is_empty() {
            args.accounts.unwrap_or(u64::MAX)
        } else {
            args.login_list.len() as u64
        },
        credentials: args.credentials.clone(),
        logins: args.login_list.clone(),
        mtu: args.mtu.map(|m| m as usize),
        json: args.json.clone(),
        hgrm: args.hgrm.clone(),
        interval_log: args.interval_log.clone(),
        plot: args.plot.clone(),
        verify: args.verify,
        quiet: args.quiet,
        admin: args.admin,
        market_data: args.subscribe.clone().map(|symbols| MdPlan {
            symbols,
            flags: subscribe_flags(args.depth, args.top, args.conflate),
            subscribers: args.subscribers as usize,
            threads: args.subscriber_threads as usize,
        }),
        tls,
    };
    check_output_files(&plan)?;
    if plan.cluster.is_some() {
        check_cluster_plan(&plan)?;
    }
    if args.duration.is_zero() {
        return Err(UsageError("--duration must be above zero".into()));
    }
    if let Some(n) = plan.inflight
        && n < batch
    {
        return Err(UsageError(format!(
            "--inflight {n} is smaller than --batch {batch}: not even one batch could be sent; \
             raise --inflight or lower --batch"
        )));
    }
    if plan.outstanding_max() > crate::session::SLOTS_MAX / 4 {
        return Err(UsageError(format!(
            "--inflight {} is above the limit of {} per connection; use more connections",
            plan.outstanding_max(),
            crate::session::SLOTS_MAX / 4
        )));
    }
    if let Some(rate) = rate
        && rate < plan.total_connections() as u64
    {
        return Err(UsageError(format!(
            "--rate {rate} is below one request per second per connection ({} connections)",
            plan.total_connections()
        )));
    }
    Ok(plan)
}

/// The files the run writes at the end must be writable places: a missing
/// folder is found now, not after a long run. `--plot` draws SVG only.
fn check_output_files(plan: &Plan) -> Result<(), UsageError> {
    let files = [
        ("--json", &plan.json),
        ("--hgrm", &plan.hgrm),
        ("--interval-log", &plan.interval_log),
        ("--plot", &plan.plot),
    ];
    for (flag, path) in files {
        let Some(path) = path else { continue };
        if path.as_os_str().is_empty() || path.is_dir() {
            return Err(UsageError(format!(
                "{flag} {}: give a file name, not a folder",
                path.display()
            )));
        }
        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        if !folder.is_dir() {
            return Err(UsageError(format!(
                "{flag} {}: the folder {} does not exist; create it first",
                path.display(),
                folder.display()
            )));
        }
    }
    if let Some(plot) = &plan.plot
        && !plot
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("svg"))
    {
        return Err(UsageError(format!(
            "--plot {}: the chart is SVG; name the file with .svg",
            plot.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_are_id_and_password_per_line_and_go_round_robin() {
        let list = parse_logins("# traders\n1001 alpha\n\n1002   pass with spaces \r\n").unwrap();
        assert_eq!(
            list,
            vec![
                (1001, "alpha".to_string()),
                (1002, "pass with spaces".to_string())
            ]
        );
        for bad in [
            "",
            "# only a comment\n",
            "1001\n",
            "x pw\n",
            &format!("1 {}\n", "p".repeat(33)),
        ] {
            assert!(parse_logins(bad).is_err(), "{bad:?}");
        }
        let mut args = parse(&["--server", "127.0.0.1:1", "--connections", "3"]).unwrap();
        args.login_list = list;
        let p = plan(&args).unwrap();
        assert_eq!(p.distinct_accounts(), 2);
        assert_eq!(p.login(0), (1001, "alpha"));
        assert_eq!(p.login(1), (1002, "pass with spaces"));
        assert_eq!(p.login(2), (1001, "alpha"));
        let p = plan(
            &parse(&[
                "--server",
                "127.0.0.1:1",
                "--account",
                "7",
                "--accounts",
                "2",
            ])
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (p.login(0), p.login(1), p.login(2)),
            ((7, ""), (8, ""), (7, ""))
        );
        assert!(parse(&["--server", "127.0.0.1:1", "--logins", "f", "--account", "1"]).is_err());
    }

    #[test]
    fn durations_parse_humanely() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("10s", Duration::from_secs(10)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5s", Duration::from_millis(1500)),
            ("250us", Duration::from_micros(250)),
            ("7", Duration::from_secs(7)),
            ("0s", Duration::ZERO),
            (" 3s ", Duration::from_secs(3)),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "s",
            "10x",
            "-1s",
            "1m30",
            "ten seconds",
            "9999h",
            "1..2s",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
        assert!(
            parse_duration("10x")
                .unwrap_err()
                .contains("unknown unit `x`")
        );
    }

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("dex-trader").chain(args.iter().copied()))
    }

    #[test]
    fn flags_parse_with_defaults() {
        let a = parse(&["--server", "127.0.0.1:9000"]).unwrap();
        assert_eq!(a.batch, 1);
        assert_eq!(a.connections, 2);
        assert_eq!(a.duration, Duration::from_secs(60));
        assert_eq!(a.warmup, Duration::from_secs(2));
        assert_eq!(a.mix, Mix::Realistic);
        assert_eq!(a.rate, None);
        assert!(!a.verify && !a.quiet);
        assert_eq!(a.admin, None);
        let a = parse(&[
            "--server",
            "localhost:1",
            "--batch",
            "2000",
            "--cores",
            "0",
            "--connections",
            "3",
            "--duration",
            "1m30s",
            "--warmup",
            "500ms",
            "--rate",
            "1000000",
            "--inflight",
            "9000",
            "--symbols",
            "4",
            "--mix",
            "match",
            "--seed",
            "9",
            "--account",
            "7",
            "--credentials",
            "secret",
            "--mtu",
            "9000",
            "--json",
            "out.json",
            "--verify",
            "--quiet",
            "--log-format",
            "json",
            "--admin",
            "127.0.0.1:0",
        ])
        .unwrap();
        assert_eq!(a.log_format, LogFormat::Json);
        assert_eq!(a.admin, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(a.batch, 2000);
        assert_eq!(a.cores.as_ref().map(|c| c.to_vec()), Some(vec![0]));
        assert_eq!(a.duration, Duration::from_secs(90));
        assert_eq!(a.mix, Mix::Match);
        assert_eq!(a.mtu, Some(9000));
        assert!(a.verify && a.quiet);
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        use clap::error::ErrorKind;
        for (args, kind) in [
            (vec![], ErrorKind::MissingRequiredArgument),
            (
                vec!["--server", "x:1", "--batch", "0"],
                ErrorKind::ValueValidation,
            ),
            (
                vec!["--server", "x:1", "--batch", "70000"],
                ErrorKind::ValueValidation,
            ),
            (
                vec!["--server", "x:1", "--mix", "wild"],
                ErrorKind::InvalidValue,
            ),
            (
                vec!["--server", "x:1", "--duration", "soon"],
                ErrorKind::ValueValidation,
            ),
            (
                vec!["--server", "x:1", "--cores", "3-1"],
                ErrorKind::ValueValidation,
            ),
            (
                vec!["--server", "x:1", "--connections", "0"],
                ErrorKind::ValueValidation,
            ),
            (
                vec!["--server", "x:1", "--log-format", "xml"],
                ErrorKind::InvalidValue,
            ),
            (
                vec!["--server", "x:1", "--admin", "localhost"],
                ErrorKind::ValueValidation,
            ),
            (
                vec!["--server", "x:1", "--frobnicate"],
                ErrorKind::UnknownArgument,
            ),
        ] {
            let e = parse(&args).unwrap_err();
            assert_eq!(e.kind(), kind, "{args:?}: {e}");
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn plans_check_what_clap_cannot() {
        let a = parse(&["--server", "127.0.0.1:9000", "--cores", "0"]).unwrap();
        let p = plan(&a).unwrap();
        assert_eq!(p.cores, vec![0]);
        assert_eq!(p.outstanding_max(), 4);
        assert_eq!(p.server.port(), 9000);

        let default_cores = plan(&parse(&["--server", "127.0.0.1:9000"]).unwrap()).unwrap();
        assert_eq!(default_cores.cores.len(), 1);
        // The defaults trade: two sessions under two accounts, no warning.
        assert_eq!(default_cores.distinct_accounts(), 2);
        assert!(default_cores.warnings().is_empty());
        for one_account in [
            &["--connections", "1"][..],
            &["--accounts", "1"][..],
            &["--connections", "1", "--accounts", "5"][..],
        ] {
            let mut args = vec!["--server", "127.0.0.1:9000", "--cores", "0"];
            args.extend_from_slice(one_account);
            let p = plan(&parse(&args).unwrap()).unwrap();
            assert_eq!(p.distinct_accounts(), 1, "{args:?}");
            assert!(p.warnings()[0].contains("one account"), "{args:?}");
        }

        let cases: [(&[&str], &str); 8] = [
            (
                &[
                    "--server",
                    "127.0.0.1:1",
                    "--hgrm",
                    "/no/such/folder/x.hgrm",
                ],
                "the folder /no/such/folder does not exist",
            ),
            (
                &["--server", "127.0.0.1:1", "--interval-log", "/"],
                "not a folder",
            ),
            (
                &["--server", "127.0.0.1:1", "--plot", "chart.png"],
                "name the file with .svg",
            ),
            (&["--server", "no-port-here"], "cannot resolve"),
            (
                &["--server", "127.0.0.1:1", "--cores", "4000"],
                "--cores 4000",
            ),
            (
                &[
                    "--server",
                    "127.0.0.1:1",
                    "--batch",
                    "10",
                    "--inflight",
                    "5",
                ],
                "smaller than --batch",
            ),
            (
                &["--server", "127.0.0.1:1", "--duration", "0s"],
                "above zero",
            ),
            (
                &["--server", "127.0.0.1:1", "--credentials", &"x".repeat(33)],
                "at most 32",
            ),
        ];
        for (args, want) in cases {
            let e = plan(&parse(args).unwrap()).unwrap_err();
            assert!(e.0.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn open_loop_inflight_covers_10ms_of_rate() {
        let a = parse(&[
            "--server",
            "127.0.0.1:1",
            "--cores",
            "0",
            "--rate",
            "10000000",
            "--batch",
            "10",
            "--connections",
            "1",
        ])
        .unwrap();
        assert_eq!(plan(&a).unwrap().outstanding_max(), 100_000);
        let a = parse(&["--server", "127.0.0.1:1", "--cores", "0", "--rate", "0"]).unwrap();
        assert_eq!(plan(&a).unwrap().rate, None);
    }

    #[test]
    fn cluster_takes_seed_nodes_instead_of_a_server() {
        let a = parse(&[
            "--cluster",
            "127.0.0.1:9001, 127.0.0.1:9002",
            "--cores",
            "0",
        ])
        .unwrap();
        let p = plan(&a).unwrap();
        let seeds: Vec<SocketAddr> = vec![
            "127.0.0.1:9001".parse().unwrap(),
            "127.0.0.1:9002".parse().unwrap(),
        ];
        assert_eq!(p.cluster, Some(seeds));
        assert_eq!(
            (p.server.port(), p.server_name.as_str()),
            (9001, "127.0.0.1:9001")
        );
        // Without --cluster: no cluster, and --server is required.
        let a = parse(&["--server", "127.0.0.1:9000", "--cores", "0"]).unwrap();
        assert_eq!(plan(&a).unwrap().cluster, None);
        assert!(parse(&["--cores", "0"]).is_err());
        let refused = |args: &[&str]| plan(&parse(args).unwrap()).unwrap_err().0;
        for (args, want) in [
            (&["--cluster", "auto"][..], "must be found first"),
            (
                &["--cluster", "nats://10.0.0.1:4222"][..],
                "must be found first",
            ),
            (
                &["--cluster", "nats://10.0.0.1:4222,10.0.0.2:9000"][..],
                "mixes NATS URLs",
            ),
            (&["--cluster", "http://10.0.0.1:4222"][..], "not a NATS URL"),
            (&["--cluster", " , "][..], "at least one seed"),
            (&["--cluster", "no-port"][..], "cannot resolve"),
            (
                &["--cluster", "127.0.0.1:1", "--spin", "1ms"][..],
                "with --spin",
            ),
            (
                &["--cluster", "127.0.0.1:1", "--subscribe", "all"][..],
                "with --subscribe",
            ),
        ] {
            let mut all = args.to_vec();
            all.extend(["--cores", "0"]);
            let e = refused(&all);
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn cluster_names_seeds_nats_servers_or_auto() {
        use ClusterSource::{Auto, Nats, Seeds};
        assert_eq!(cluster_source(" auto "), Ok(Auto));
        assert_eq!(cluster_source("10.0.0.1:9000,node-b:9000"), Ok(Seeds));
        assert_eq!(cluster_source(" , "), Ok(Seeds));
        assert_eq!(
            cluster_source("nats://10.0.0.1:4222, tls://10.0.0.2:4222"),
            Ok(Nats("nats://10.0.0.1:4222, tls://10.0.0.2:4222".into()))
        );
        for bad in ["nats://a:1,,nats://b:2", "nats://a:1,b:2", "ws://a:1"] {
            assert!(cluster_source(bad).is_err(), "{bad}");
        }
    }
}
