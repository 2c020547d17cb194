//! Finding NATS, or starting it: what `turbo-dex --cluster auto` does
//! before its control plane connects. Blocking; call it on the control
//! plane's thread, never on an engine core.
//!
//! # The order
//!
//! [`discover`] takes the first of:
//!
//! 1. **`NATS_URL`** ([`DiscoveryConfig::nats_url`], read from the
//!    environment by [`DiscoveryConfig::new`]): used as given, not probed.
//!    Should mDNS fail to start, the node is then only not announced (a
//!    warning); without `NATS_URL` that is an error.
//! 2. **A NATS server announced by multicast DNS** on the local network:
//!    service type [`SERVICE_TYPE`], browsed for [`DiscoveryConfig::wait`]
//!    plus a random part of [`DiscoveryConfig::jitter`]. The first
//!    announced URL list whose server greets with a NATS `INFO` line wins,
//!    nodes that run a server before nodes that only use one, then by node
//!    id ([`candidates`]), so that nodes choose alike. The browse ends
//!    early as soon as one answers.
//! 3. **`nats://127.0.0.1:<nats_port>`** (4222) if a NATS server greets
//!    there. It is announced under this host's addresses; other nodes use
//!    it only if it answers there (it may listen on loopback only).
//! 4. **A nats-server it starts** ([`super::natsd`]): JetStream on, its
//!    store under `<data_dir>/nats/jetstream`, server name = node id,
//!    client port [`DiscoveryConfig::nats_port`], route port
//!    [`DiscoveryConfig::route_port`].
//!
//! Whatever the source, the node then announces itself ([`Announcer`]):
//! its node id, order-entry address, the NATS URLs it uses and, when it
//! runs the server, that server's route URL. Traders and other nodes find
//! it there ([`browse`] lists what is announced).
//!
//! # The announcement (TXT record)
//!
//! Instance name = node id, host `<node id>.local.`, SRV port = the
//! order-entry port, and the TXT properties ([`Announcement`]):
//!
//! | key | value |
//! | --- | --- |
//! | `v` | `1`, this layout |
//! | `node` | the node id |
//! | `oe` | order-entry `ip:port`, comma-separated when several |
//! | `nats` | NATS client URLs the node uses, comma-separated |
//! | `route` | `nats-route://ip:port` of the server the node runs; absent when it runs none |
//!
//! Addresses are this host's IPv4 addresses ([`DiscoveryConfig::advertise`],
//! by default every up, non-loopback IPv4 address) wherever the listener
//! is on `0.0.0.0` or loopback. Each TXT string is at most 255 bytes:
//! [`Announcement::encode`] refuses longer ones (name fewer addresses).
//!
//! # Convergence: one NATS cluster, not islands
//!
//! Nodes started one after another: the second and later find the first
//! one's server in step 2 and use it; only one server runs.
//!
//! Nodes started at the same moment can all reach step 4. Three things
//! make them one cluster anyway:
//!
//! - **Jitter**: each node browses `wait` plus a random share of `jitter`
//!   (default 2 s + up to 1 s), so usually one decides first, starts its
//!   server and announces it (no mDNS probing delay), and the others, still
//!   browsing, find it in step 2.
//! - **Routes to every server seen**: a node that runs a server keeps
//!   browsing for as long as its [`Announcer`] lives (a watcher thread).
//!   Every announced `route` that it does not route to yet and whose
//!   server answers on its `nats` URL is added to its server
//!   ([`super::natsd::NatsServer::add_routes`]: a restart from standalone
//!   into the cluster, or a config reload with SIGHUP once clustered).
//!   Both sides do this, so each pair is joined even if one side missed
//!   an announcement.
//! - **nats-server's route gossip**: a server tells its routed peers about
//!   the others, so one route into a group connects it to the full mesh.
//!
//! A server started in step 4 starts standalone (no routes, even to servers
//! it saw announced but that did not answer): a route to an unreachable
//! peer would make JetStream wait for it. See [`super::natsd`] for what
//! one, two and three servers mean for JetStream's meta quorum.
//!
//! # Limits
//!
//! - No security: announcements are not authenticated, and a started
//!   nats-server has no authentication and no TLS. A trusted network
//!   only; elsewhere, NATS with auth and TLS of one's own, and `NATS_URL`.
//! - IPv4 only (mDNS on IPv4 interfaces, IPv4 addresses announced).
//! - mDNS reaches one link (a LAN or a bridge), not across routers.
//! - Node ids must be unique: they are the nats-server names and the mDNS
//!   instance names.
//! - A node that uses another node's server does not look again when that
//!   server goes: its NATS client reconnects to the other servers of the
//!   cluster that the server told it about (`connect_urls`, from each
//!   server's `client_advertise`), and to none when that server was alone.
//! - The decision is made once, at start; a started server that crashes is
//!   not restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};

use super::natsd::{self, NatsServer, NatsdConfig, NatsdError, RouteHandle};

/// The DNS-SD service type every turbo-dex node announces.
pub const SERVICE_TYPE: &str = "_turbo-dex._tcp.local.";

/// The TXT layout version ([`Announcement`]'s `v`).
pub const TXT_VERSION: &str = "1";

/// The default [`DiscoveryConfig::wait`].
pub const WAIT_DEFAULT: Duration = Duration::from_secs(2);

/// The default [`DiscoveryConfig::jitter`].
pub const JITTER_DEFAULT: Duration = Duration::from_secs(1);

/// The default NATS client port.
pub const NATS_PORT_DEFAULT: u16 = 4222;

/// The default nats-server route (cluster) port.
pub const ROUTE_PORT_DEFAULT: u16 = 6222;

/// How long one probe (connect, then read the INFO line) may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// How often the watcher looks at what it has seen (it also wakes on each
/// mDNS event). Bounds how often an unreachable peer is probed.
const WATCH_TICK: Duration = Duration::from_secs(1);

/// How often the watcher checks whether it should stop (it sleeps in
/// between, in the mDNS channel's receive).
const STOP_POLL: Duration = Duration::from_millis(100);

/// The most bytes of one TXT string (`key=value`), RFC 6763 section 6.1.
pub const TXT_STRING_BYTES_MAX: usize = 255;

/// How long unregistering and shutting down mDNS may take on drop.
const MDNS_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What [`discover`] needs.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// This node's id: unique in the cluster; the nats-server name and the
    /// mDNS instance name.
    pub node_id: String,
    /// The order-entry listener traders connect to (announced).
    pub order_entry: SocketAddr,
    /// The journal dir; a started nats-server keeps its config, log and
    /// JetStream store under `<data_dir>/nats/`.
    pub data_dir: PathBuf,
    /// How long to browse before deciding (default [`WAIT_DEFAULT`]).
    pub wait: Duration,
    /// The most random time added to `wait` (default [`JITTER_DEFAULT`]).
    pub jitter: Duration,
    /// Step 1: a NATS URL to use as is. [`DiscoveryConfig::new`] reads `NATS_URL`.
    pub nats_url: Option<String>,
    /// The nats-server binary; `None`: `nats-server` on PATH, else /usr/sbin.
    pub nats_server: Option<PathBuf>,
    /// The client port probed on 127.0.0.1 and listened on by a started server.
    pub nats_port: u16,
    /// The route port of a started server.
    pub route_port: u16,
    /// The addresses announced for listeners on 0.0.0.0 or loopback.
    /// Empty: every up, non-loopback IPv4 address of this host.
    pub advertise: Vec<IpAddr>,
    /// Browse and announce by mDNS (steps 2 and the announcement). Off:
    /// only steps 1, 3 and 4, nothing announced.
    pub mdns: bool,
    /// How long a started nats-server may take to serve.
    pub ready_timeout: Duration,
}

impl DiscoveryConfig {
    /// The defaults, with [`DiscoveryConfig::nats_url`] from the `NATS_URL`
    /// environment variable (unset or empty: none).
    pub fn new(node_id: &str, order_entry: SocketAddr, data_dir: PathBuf) -> DiscoveryConfig {
        DiscoveryConfig {
            node_id: node_id.to_string(),
            order_entry,
            data_dir,
            wait: WAIT_DEFAULT,
            jitter: JITTER_DEFAULT,
            nats_url: std::env::var("NATS_URL")
                .ok()
                .filter(|u| !u.trim().is_empty()),
            nats_server: None,
            nats_port: NATS_PORT_DEFAULT,
            route_port: ROUTE_PORT_DEFAULT,
            advertise: Vec::new(),
            mdns: true,
            ready_timeout: natsd::READY_TIMEOUT_DEFAULT,
        }
    }
}

/// Where the NATS URLs came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `NATS_URL`.
    Env,
    /// Announced by another node over mDNS.
    Mdns,
    /// A NATS server on this host's 127.0.0.1.
    Localhost,
    /// A nats-server this node started.
    Started,
}

/// What [`discover`] found. Dropping it withdraws the announcement first
/// (the field order), then stops a started server.
#[derive(Debug)]
pub struct Discovered {
    /// The NATS URLs to connect to (a client may try them in turn).
    pub urls: Vec<String>,
    pub source: Source,
    /// The node id of the announcing node when `source` is [`Source::Mdns`].
    pub found_node: Option<String>,
    /// Keeps this node registered in mDNS (and, with a started server,
    /// adding routes to servers announced later) while alive.
    pub announcer: Option<Announcer>,
    /// The started nats-server; stopped and reaped on drop.
    pub server: Option<NatsServer>,
}

/// What can go wrong in [`discover`].
#[derive(Debug)]
pub enum DiscoveryError {
    /// The node id cannot be a server name or mDNS label.
    BadNodeId(String),
    /// mDNS could not start (its sockets), or refused the announcement.
    Mdns(String),
    /// Starting nats-server failed (not installed, port in use, ...).
    Natsd(NatsdError),
    /// The data dir or this host's addresses could not be read.
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiscoveryError::BadNodeId(why) => write!(f, "bad node id: {why}"),
            DiscoveryError::Mdns(why) => write!(
                f,
                "multicast DNS failed: {why} (does this host have a multicast-capable \
                 interface with an IPv4 address, and is UDP port 5353 allowed? Set NATS_URL \
                 to skip discovery)"
            ),
            DiscoveryError::Natsd(e) => e.fmt(f),
            DiscoveryError::Io { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for DiscoveryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DiscoveryError::Natsd(e) => Some(e),
            DiscoveryError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<NatsdError> for DiscoveryError {
    fn from(e: NatsdError) -> Self {
        DiscoveryError::Natsd(e)
    }
}

/// What a node announces (the TXT properties; module docs).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Announcement {
    pub node_id: String,
    pub order_entry: Vec<String>,
    pub nats: Vec<String>,
    /// Empty when the node runs no server.
    pub route: Vec<String>,
}

/// Why TXT properties are not an [`Announcement`] (or cannot become one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxtError(pub String);

impl fmt::Display for TxtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Announcement {
    /// The TXT properties, `(key, value)`, in a fixed order. Pure.
    pub fn encode(&self) -> Result<Vec<(String, String)>, TxtError> {
        let mut props = vec![
            ("v".to_string(), TXT_VERSION.to_string()),
            ("node".to_string(), self.node_id.clone()),
            ("oe".to_string(), self.order_entry.join(",")),
            ("nats".to_string(), self.nats.join(",")),
        ];
        if !self.route.is_empty() {
            props.push(("route".to_string(), self.route.join(",")));
        }
        for (key, value) in &props {
            if key.len() + 1 + value.len() > TXT_STRING_BYTES_MAX {
                return Err(TxtError(format!(
                    "TXT property {key} is {} bytes, more than {TXT_STRING_BYTES_MAX}: \
                     announce fewer addresses",
                    key.len() + 1 + value.len()
                )));
            }
        }
        Ok(props)
    }

    /// Reads TXT properties. Unknown keys are ignored (later versions may
    /// add some); a missing `node` or `nats`, or another `v`, is an error. Pure.
    pub fn decode<'a>(
        props: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Announcement, TxtError> {
        let mut map = BTreeMap::new();
        for (key, value) in props {
            map.insert(key.to_ascii_lowercase(), value);
        }
        match map.get("v") {
            Some(&v) if v == TXT_VERSION => {}
            Some(v) => {
                return Err(TxtError(format!(
                    "TXT layout version {v}, not {TXT_VERSION}"
                )));
            }
            None => return Err(TxtError("no TXT layout version (v)".into())),
        }
        let list = |key: &str| -> Vec<String> {
            map.get(key)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default()
        };
        let node_id = map
            .get("node")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| TxtError("no node id (node)".into()))?
            .to_string();
        let nats = list("nats");
        if nats.is_empty() {
            return Err(TxtError(format!("node {node_id} announces no NATS URL")));
        }
        Ok(Announcement {
            node_id,
            order_entry: list("oe"),
            nats,
            route: list("route"),
        })
    }
}

/// The URL lists to try in step 2, best first: nodes that run a server
/// (they announce a route) before nodes that only use one, each by node
/// id; this node and repeated lists left out. Pure.
pub fn candidates(own_id: &str, seen: &[Announcement]) -> Vec<(String, Vec<String>)> {
    let mut peers: Vec<&Announcement> = seen.iter().filter(|a| a.node_id != own_id).collect();
    peers.sort_by(|a, b| (a.route.is_empty(), &a.node_id).cmp(&(b.route.is_empty(), &b.node_id)));
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for peer in peers {
        if !out.iter().any(|(_, urls)| *urls == peer.nats) {
            out.push((peer.node_id.clone(), peer.nats.clone()));
        }
    }
    out
}

/// The announced servers a running server should add routes to: every
/// other node's route list none of whose URLs is routed yet, with the NATS
/// URLs to check it answers on. Pure.
pub fn routes_to_add<'a>(
    own_id: &str,
    own_routes: &[String],
    routed: &BTreeSet<String>,
    seen: impl IntoIterator<Item = &'a Announcement>,
) -> Vec<&'a Announcement> {
    seen.into_iter()
        .filter(|a| a.node_id != own_id && !a.route.is_empty())
        .filter(|a| {
            !a.route
                .iter()
                .any(|r| routed.contains(r) || own_routes.contains(r))
        })
        .collect()
}

/// `scheme://ip:port` for a listener on `addr`: `addr` itself when it is
/// a specific, non-loopback address, else one per `advertise` address
/// (`addr` itself when there is none). Pure.
pub fn urls_for(scheme: &str, addr: SocketAddr, advertise: &[IpAddr]) -> Vec<String> {
    let prefix = if scheme.is_empty() {
        String::new()
    } else {
        format!("{scheme}://")
    };
    let ip = addr.ip();
    if (ip.is_unspecified() || ip.is_loopback()) && !advertise.is_empty() {
        advertise
            .iter()
            .map(|&ip| format!("{prefix}{}", SocketAddr::new(ip, addr.port())))
            .collect()
    } else {
        vec![format!("{prefix}{addr}")]
    }
}

/// A node id usable as a nats-server name and an mDNS host label: 1 to 63
/// ASCII letters, digits, `-` and `_`, not starting with `-`. Pure.
pub fn check_node_id(id: &str) -> Result<(), DiscoveryError> {
    if id.is_empty() || id.len() > 63 {
        return Err(DiscoveryError::BadNodeId(format!(
            "{id:?} must be 1 to 63 characters"
        )));
    }
    if id.starts_with('-')
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(DiscoveryError::BadNodeId(format!(
            "{id:?} may have only ASCII letters, digits, '-' and '_', and not start with '-'"
        )));
    }
    Ok(())
}

/// `wait` plus a random share of `jitter`.
fn browse_time(cfg: &DiscoveryConfig) -> Duration {
    if cfg.jitter.is_zero() {
        return cfg.wait;
    }
    // RandomState is seeded randomly per process; mixing in the node id and
    // the time separates nodes started from the same image at once.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(cfg.node_id.as_bytes());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let share = (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64;
    cfg.wait + cfg.jitter.mul_f64(share)
}

/// This host's up, non-loopback IPv4 addresses.
pub fn host_ipv4_addrs() -> std::io::Result<Vec<IpAddr>> {
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()?
        .into_iter()
        .filter(|i| !i.is_loopback() && i.is_oper_up() && i.ip().is_ipv4())
        .map(|i| i.ip())
        .collect();
    ips.sort();
    ips.dedup();
    Ok(ips)
}

fn nats_server_bin(cfg: &DiscoveryConfig) -> PathBuf {
    if let Some(bin) = &cfg.nats_server {
        return bin.clone();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| "nats-server".into())
}

/// The first list whose server answers, and the node announcing it.
fn first_answering(candidates: &[(String, Vec<String>)]) -> Option<(String, Vec<String>)> {
    candidates
        .iter()
        .find(|(_, urls)| {
            urls.iter()
                .any(|u| natsd::probe_url(u, PROBE_TIMEOUT).is_some())
        })
        .cloned()
}

/// What the browse has seen: the latest announcement per mDNS full name.
#[derive(Default)]
struct Seen(BTreeMap<String, Announcement>);

impl Seen {
    /// Takes one mDNS event; whether it changed anything.
    fn take(&mut self, event: ServiceEvent) -> bool {
        match event {
            ServiceEvent::ServiceResolved(service) => {
                let props: Vec<(&str, &str)> = service
                    .get_properties()
                    .iter()
                    .map(|p| (p.key(), p.val_str()))
                    .collect();
                match Announcement::decode(props) {
                    Ok(a) => self.0.insert(service.fullname.clone(), a.clone()) != Some(a),
                    Err(e) => {
                        tracing::debug!(service = %service.fullname, "ignoring an mDNS announcement: {e}");
                        false
                    }
                }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => self.0.remove(&fullname).is_some(),
            _ => false,
        }
    }

    fn all(&self) -> Vec<Announcement> {
        self.0.values().cloned().collect()
    }
}

/// An mDNS daemon on the IPv4 interfaces, browsing for [`SERVICE_TYPE`].
fn start_browsing() -> Result<(ServiceDaemon, mdns_sd::Receiver<ServiceEvent>), DiscoveryError> {
    let daemon = ServiceDaemon::new().map_err(mdns_error("cannot start the mDNS daemon"))?;
    // IPv4 only (module docs): fewer sockets, one address family to announce.
    daemon
        .disable_interface(IfKind::IPv6)
        .map_err(mdns_error("cannot configure the mDNS daemon"))?;
    let events = daemon
        .browse(SERVICE_TYPE)
        .map_err(mdns_error("cannot browse"))?;
    Ok((daemon, events))
}

/// The turbo-dex nodes announced on the local network: browses for at
/// most `wait`, or until `enough` says so (it sees every announcement so
/// far, after each change). For traders and tools that look for nodes;
/// [`discover`] browses on its own.
pub fn browse(
    wait: Duration,
    mut enough: impl FnMut(&[Announcement]) -> bool,
) -> Result<Vec<Announcement>, DiscoveryError> {
    let (daemon, events) = start_browsing()?;
    let mut seen = Seen::default();
    let until = Instant::now() + wait;
    while let Ok(event) = events.recv_timeout(until.saturating_duration_since(Instant::now())) {
        if seen.take(event) && enough(&seen.all()) {
            break;
        }
    }
    if let Ok(done) = daemon.shutdown() {
        let _ = done.recv_timeout(MDNS_CLOSE_TIMEOUT);
    }
    Ok(seen.all())
}

fn mdns_error(what: &str) -> impl FnOnce(mdns_sd::Error) -> DiscoveryError + '_ {
    move |e| DiscoveryError::Mdns(format!("{what}: {e}"))
}

/// Step 2: browses for `wait` plus jitter, or until an announced server
/// answers; then takes the best answering candidate of all it saw.
fn browse_for_server(
    cfg: &DiscoveryConfig,
    events: &mdns_sd::Receiver<ServiceEvent>,
    seen: &mut Seen,
) -> Option<(String, Vec<String>)> {
    let until = Instant::now() + browse_time(cfg);
    while let Ok(event) = events.recv_timeout(until.saturating_duration_since(Instant::now())) {
        if !seen.take(event) {
            continue;
        }
        // A node that runs a server and answers ends the wait early.
        let serving: Vec<Announcement> = seen
            .all()
            .into_iter()
            .filter(|a| !a.route.is_empty())
            .collect();
        if let Some(found) = first_answering(&candidates(&cfg.node_id, &serving)) {
            return Some(found);
        }
    }
    first_answering(&candidates(&cfg.node_id, &seen.all()))
}

/// Finds NATS or starts it, then announces this node (module docs).
/// Blocks for up to `wait + jitter` (less when mDNS finds a server), plus
/// a started server's start-up.
pub fn discover(cfg: &DiscoveryConfig) -> Result<Discovered, DiscoveryError> {
    check_node_id(&cfg.node_id)?;
    let advertise = if cfg.advertise.is_empty() {
        host_ipv4_addrs().map_err(|source| DiscoveryError::Io {
            what: "cannot list this host's addresses".into(),
            source,
        })?
    } else {
        cfg.advertise.clone()
    };

    let mut found = None;
    let mut mdns = None;
    if let Some(url) = &cfg.nats_url {
        found = Some((vec![url.clone()], Source::Env, None));
    }
    let browsing = if cfg.mdns {
        match start_browsing() {
            Ok(browsing) => Some(browsing),
            // NATS_URL does not need mDNS: the node is just not announced.
            Err(e) if found.is_some() => {
                tracing::warn!("NATS_URL is set; this node is not announced: {e}");
                None
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    if let Some((daemon, events)) = browsing {
        let mut seen = Seen::default();
        if found.is_none()
            && let Some((node, urls)) = browse_for_server(cfg, &events, &mut seen)
        {
            found = Some((urls, Source::Mdns, Some(node)));
        }
        mdns = Some((daemon, events, seen));
    }
    if found.is_none() {
        let local = SocketAddr::from(([127, 0, 0, 1], cfg.nats_port));
        if natsd::probe_info(local, PROBE_TIMEOUT).is_ok() {
            found = Some((vec![format!("nats://{local}")], Source::Localhost, None));
        }
    }

    let (urls, source, found_node, server) = match found {
        Some((urls, source, node)) => (urls, source, node, None),
        None => {
            let server = start_server(cfg, &advertise)?;
            (
                vec![server.local_url()],
                Source::Started,
                None,
                Some(server),
            )
        }
    };

    // What others should use to reach the same NATS: a local URL becomes
    // this host's addresses.
    let announced_nats: Vec<String> = urls
        .iter()
        .flat_map(|url| match natsd::url_host_port(url) {
            Some((host, port)) if host == "127.0.0.1" || host == "localhost" => {
                urls_for("nats", SocketAddr::from(([127, 0, 0, 1], port)), &advertise)
            }
            _ => vec![url.clone()],
        })
        .collect();
    let route = if server.is_some() {
        urls_for(
            "nats-route",
            SocketAddr::from(([0, 0, 0, 0], cfg.route_port)),
            &advertise,
        )
    } else {
        Vec::new()
    };
    let announcement = Announcement {
        node_id: cfg.node_id.clone(),
        order_entry: urls_for("", cfg.order_entry, &advertise),
        nats: announced_nats,
        route,
    };

    let announcer = match mdns {
        Some((daemon, events, seen)) => Some(Announcer::start(
            daemon,
            events,
            seen,
            &announcement,
            &advertise,
            cfg.order_entry.port(),
            server.as_ref().map(NatsServer::route_handle),
        )?),
        None => None,
    };
    Ok(Discovered {
        urls,
        source,
        found_node,
        announcer,
        server,
    })
}

fn start_server(cfg: &DiscoveryConfig, advertise: &[IpAddr]) -> Result<NatsServer, DiscoveryError> {
    let dir = cfg.data_dir.join("nats");
    let first = advertise.first();
    let bin = nats_server_bin(cfg);
    let version = super::natsd::binary_version(&bin);
    let sync_always = version
        .as_deref()
        .is_some_and(super::natsd::syncs_every_message);
    if !sync_always {
        tracing::info!(
            "nats-server {}: JetStream acknowledges messages in its page cache (sync_interval: \
             always needs nats-server 2.10 or later); replicated journals (--replicas) survive \
             the loss of a machine, not the power loss of most servers at once",
            version.as_deref().unwrap_or("of unknown version")
        );
    }
    let natsd_cfg = NatsdConfig {
        bin,
        sync_always,
        server_name: cfg.node_id.clone(),
        client_listen: SocketAddr::from(([0, 0, 0, 0], cfg.nats_port)),
        route_listen: SocketAddr::from(([0, 0, 0, 0], cfg.route_port)),
        client_advertise: first.map(|ip| SocketAddr::new(*ip, cfg.nats_port).to_string()),
        route_advertise: first.map(|ip| SocketAddr::new(*ip, cfg.route_port).to_string()),
        store_dir: dir.join("jetstream"),
        config_path: dir.join("nats-server.conf"),
        log_path: dir.join("nats-server.log"),
        routes: BTreeSet::new(),
        ready_timeout: cfg.ready_timeout,
    };
    Ok(NatsServer::start(natsd_cfg)?)
}

/// Keeps this node announced by mDNS while alive; with a started server,
/// also its watcher thread (module docs: convergence). Drop: the watcher
/// stops, the announcement is withdrawn (goodbye packets), mDNS shuts down.
pub struct Announcer {
    daemon: ServiceDaemon,
    fullname: String,
    stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
}

impl fmt::Debug for Announcer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Announcer")
            .field("fullname", &self.fullname)
            .field("watching", &self.watcher.is_some())
            .finish()
    }
}

impl Announcer {
    fn start(
        daemon: ServiceDaemon,
        events: mdns_sd::Receiver<ServiceEvent>,
        seen: Seen,
        announcement: &Announcement,
        advertise: &[IpAddr],
        port: u16,
        server: Option<RouteHandle>,
    ) -> Result<Announcer, DiscoveryError> {
        let props = announcement
            .encode()
            .map_err(|e| DiscoveryError::Mdns(e.to_string()))?;
        let host = format!("{}.local.", announcement.node_id);
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &announcement.node_id,
            &host,
            advertise,
            port,
            &props[..],
        )
        .map_err(mdns_error("cannot build the announcement"))?;
        // Node ids are unique (module docs): skip the probe for a name
        // conflict, so the announcement goes out at once.
        let mut info = if advertise.is_empty() {
            info.enable_addr_auto()
        } else {
            info
        };
        info.set_requires_probe(false);
        let fullname = info.get_fullname().to_string();
        daemon
            .register(info)
            .map_err(mdns_error("cannot announce this node"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = match server {
            Some(server) => {
                let stop = Arc::clone(&stop);
                let own = announcement.clone();
                Some(
                    std::thread::Builder::new()
                        .name("nats-routes".into())
                        .spawn(move || watch(events, seen, own, server, &stop))
                        .map_err(|source| DiscoveryError::Io {
                            what: "cannot start the route watcher thread".into(),
                            source,
                        })?,
                )
            }
            None => {
                // Nothing to watch for: stop browsing.
                let _ = daemon.stop_browse(SERVICE_TYPE);
                None
            }
        };
        Ok(Announcer {
            daemon,
            fullname,
            stop,
            watcher,
        })
    }

    /// The mDNS full name this node is announced under.
    pub fn fullname(&self) -> &str {
        &self.fullname
    }
}

/// The watcher: every announced server not routed yet that answers gets a
/// route. Wakes on each mDNS event and every [`WATCH_TICK`].
fn watch(
    events: mdns_sd::Receiver<ServiceEvent>,
    mut seen: Seen,
    own: Announcement,
    server: RouteHandle,
    stop: &AtomicBool,
) {
    let mut next_check = Instant::now();
    // Also ends when the server's handle is dropped first.
    while !stop.load(Ordering::Acquire) && server.is_alive() {
        match events.recv_timeout(STOP_POLL) {
            Ok(event) => {
                if seen.take(event) {
                    next_check = Instant::now();
                }
            }
            Err(mdns_sd::RecvTimeoutError::Timeout) => {}
            Err(mdns_sd::RecvTimeoutError::Disconnected) => return,
        }
        if Instant::now() < next_check {
            continue;
        }
        next_check = Instant::now() + WATCH_TICK;
        let all = seen.all();
        let routed = server.routes();
        let mut add = Vec::new();
        for peer in routes_to_add(&own.node_id, &own.route, &routed, &all) {
            if stop.load(Ordering::Acquire) {
                return;
            }
            if peer
                .nats
                .iter()
                .any(|u| natsd::probe_url(u, PROBE_TIMEOUT).is_some())
            {
                add.extend(peer.route.iter().cloned());
            }
        }
        if add.is_empty() {
            continue;
        }
        match server.add_routes(&add) {
            Ok(_) => tracing::info!(routes = ?add, "nats-server: routes added"),
            Err(NatsdError::Stopped) => return,
            Err(e) => tracing::error!(routes = ?add, "nats-server: cannot add routes: {e}"),
        }
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            let _ = done.recv_timeout(MDNS_CLOSE_TIMEOUT);
        }
        if let Ok(done) = self.daemon.shutdown() {
            let _ = done.recv_timeout(MDNS_CLOSE_TIMEOUT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(node: &str, nats: &[&str], route: &[&str]) -> Announcement {
        Announcement {
            node_id: node.into(),
            order_entry: vec!["10.0.0.1:9000".into()],
            nats: nats.iter().map(|s| s.to_string()).collect(),
            route: route.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn txt_round_trips() {
        let a = ann(
            "n1",
            &["nats://10.0.0.1:4222", "nats://10.0.1.1:4222"],
            &["nats-route://10.0.0.1:6222"],
        );
        let props = a.encode().unwrap();
        assert_eq!(
            props,
            [
                ("v", "1"),
                ("node", "n1"),
                ("oe", "10.0.0.1:9000"),
                ("nats", "nats://10.0.0.1:4222,nats://10.0.1.1:4222"),
                ("route", "nats-route://10.0.0.1:6222"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        let back =
            Announcement::decode(props.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn txt_without_route_means_no_server() {
        let a = ann("n2", &["nats://10.0.0.1:4222"], &[]);
        let props = a.encode().unwrap();
        assert!(props.iter().all(|(k, _)| k != "route"));
        let back =
            Announcement::decode(props.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert!(back.route.is_empty());
    }

    #[test]
    fn txt_decode_refuses_what_it_cannot_use() {
        let d =
            |props: &[(&'static str, &'static str)]| Announcement::decode(props.iter().copied());
        assert!(
            d(&[("node", "n"), ("nats", "nats://a:1")]).is_err(),
            "no version"
        );
        assert!(d(&[("v", "2"), ("node", "n"), ("nats", "nats://a:1")]).is_err());
        assert!(d(&[("v", "1"), ("nats", "nats://a:1")]).is_err(), "no node");
        assert!(
            d(&[("v", "1"), ("node", "n"), ("nats", "")]).is_err(),
            "no url"
        );
        let ok = d(&[
            ("v", "1"),
            ("node", "n"),
            ("nats", "nats://a:1"),
            ("future", "x"),
        ]);
        assert_eq!(ok.unwrap().nats, ["nats://a:1"]);
    }

    #[test]
    fn txt_strings_over_255_bytes_are_refused() {
        let many: Vec<String> = (0..20).map(|i| format!("nats://10.0.0.{i}:4222")).collect();
        let a = Announcement {
            nats: many,
            ..ann("n", &[], &[])
        };
        let e = a.encode().unwrap_err();
        assert!(e.0.contains("announce fewer addresses"), "{e}");
    }

    #[test]
    fn candidates_prefer_servers_then_node_id_and_skip_self() {
        let seen = [
            ann("c", &["nats://c:4222"], &[]),
            ann("b", &["nats://b:4222"], &["nats-route://b:6222"]),
            ann("self", &["nats://s:4222"], &["nats-route://s:6222"]),
            ann("a", &["nats://a:4222"], &["nats-route://a:6222"]),
            ann("d", &["nats://a:4222"], &[]),
        ];
        let got = candidates("self", &seen);
        let nodes: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        // d uses a's server: its list repeats a's and is left out.
        assert_eq!(nodes, ["a", "b", "c"]);
    }

    #[test]
    fn routes_go_to_servers_not_yet_routed() {
        let seen = [
            ann("a", &["nats://a:4222"], &["nats-route://a:6222"]),
            ann("b", &["nats://b:4222"], &["nats-route://b:6222"]),
            ann("c", &["nats://a:4222"], &[]),
            ann("self", &["nats://s:4222"], &["nats-route://s:6222"]),
        ];
        let routed: BTreeSet<String> = ["nats-route://a:6222".to_string()].into();
        let own = ["nats-route://s:6222".to_string()];
        let add: Vec<&str> = routes_to_add("self", &own, &routed, &seen)
            .iter()
            .map(|a| a.node_id.as_str())
            .collect();
        assert_eq!(add, ["b"]);
    }

    #[test]
    fn urls_use_the_advertised_addresses_for_wildcard_and_loopback() {
        let adv: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "10.0.1.1".parse().unwrap()];
        let any: SocketAddr = "0.0.0.0:4222".parse().unwrap();
        assert_eq!(
            urls_for("nats", any, &adv),
            ["nats://10.0.0.1:4222", "nats://10.0.1.1:4222"]
        );
        let lo: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(urls_for("", lo, &adv[..1]), ["10.0.0.1:9000"]);
        let fixed: SocketAddr = "192.0.2.7:9000".parse().unwrap();
        assert_eq!(urls_for("", fixed, &adv), ["192.0.2.7:9000"]);
        assert_eq!(urls_for("nats", any, &[]), ["nats://0.0.0.0:4222"]);
    }

    #[test]
    fn what_discover_returns_can_move_to_another_thread() {
        fn send<T: Send>() {}
        send::<Discovered>();
        send::<DiscoveryError>();
    }

    #[test]
    fn node_ids_must_be_names() {
        assert!(check_node_id("node-1_a").is_ok());
        for bad in ["", "-x", "a.b", "a b", "é", &"x".repeat(64)] {
            assert!(check_node_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn browse_time_stays_within_wait_and_jitter() {
        let mut cfg = DiscoveryConfig::new("n", "0.0.0.0:9000".parse().unwrap(), "/tmp".into());
        cfg.wait = Duration::from_millis(100);
        cfg.jitter = Duration::from_millis(50);
        for _ in 0..100 {
            let t = browse_time(&cfg);
            assert!(t >= cfg.wait && t <= cfg.wait + cfg.jitter, "{t:?}");
        }
        cfg.jitter = Duration::ZERO;
        assert_eq!(browse_time(&cfg), cfg.wait);
    }
}
