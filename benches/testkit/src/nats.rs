//! A real `nats-server` for the tests that need one (the market-data
//! bridge, clusters, dex-trader's routing): where the binary is, a port no
//! other test of this process was given, and a child process started on
//! 127.0.0.1 that the test waits for and that is killed (and reaped) on
//! drop. Tests without the binary skip visibly with [`need_nats_server!`].

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::TempDir;

/// What a test that has no nats-server says when it skips.
pub const NO_NATS_SERVER: &str =
    "nats-server not installed (scripts/test.sh installs the Debian package nats-server)";

/// How long a started server may take to say it is ready (and a cluster's
/// members to elect JetStream's meta leader: a few seconds, but a clean-
/// clone CI run on two loaded CPUs once took longer than 20 s).
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// A member of a cluster that has heard of no JetStream meta leader this
/// long after it said it is ready is restarted, once: nats-server 2.9.10
/// can lose a route in the "Duplicate Route" race of servers that dial
/// each other at once (nats-io/nats-server#5065), and then waits for a
/// leader forever: a clean-clone CI run failed on it, and 1 of 120 starts
/// of a 3-server cluster in a row did it on the development VM, where the
/// restart made it ready (16.2 s in all). A restarted server dials its
/// routes again.
const LEADERLESS_RESTART: Duration = Duration::from_secs(15);

/// nats-server on PATH, or where the Debian package puts it (/usr/sbin may
/// be off a non-root PATH).
pub fn nats_server_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
}

/// The nats-server binary, or a visible skip and `return` from the test.
#[macro_export]
macro_rules! need_nats_server {
    () => {
        match $crate::nats_server_binary() {
            Some(path) => path,
            None => {
                $crate::skip!("{}", $crate::NO_NATS_SERVER);
                return;
            }
        }
    };
}

/// A port nothing listens on now, never handed out before in this process
/// (the kernel may hand a just-freed port to the next bind: two tests must
/// not share one).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A nats-server child on 127.0.0.1, its log (and JetStream store) in a
/// temporary directory; killed and reaped on drop.
pub struct NatsServer {
    child: Child,
    bin: PathBuf,
    port: u16,
    jetstream: bool,
    dir: TempDir,
    /// Starts so far; the store of start `n` is `store` or `store-<n>`.
    store: PathBuf,
}

impl NatsServer {
    /// Starts `bin -a 127.0.0.1 -p port` (with JetStream, `-js -sd DIR`,
    /// when `jetstream`) and waits until it says it is ready in its own log
    /// (so another process on the port is not taken for it) and accepts
    /// TCP connections. Panics, with the log, when it exits or is not
    /// ready in time.
    pub fn start(bin: &Path, port: u16, jetstream: bool) -> NatsServer {
        let dir = TempDir::new("nats-server");
        let store = dir.join("store");
        let child = NatsServer::spawn(bin, port, jetstream, dir.path(), &store);
        let mut server = NatsServer {
            child,
            bin: bin.to_path_buf(),
            port,
            jetstream,
            dir,
            store,
        };
        server.wait_ready();
        server
    }

    fn spawn(bin: &Path, port: u16, jetstream: bool, dir: &Path, store: &Path) -> Child {
        let log = std::fs::File::create(dir.join("nats.log")).expect("create the nats-server log");
        let mut command = Command::new(bin);
        command.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
        if jetstream {
            command.args(["-js", "-sd"]).arg(store);
        }
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
    }

    fn wait_ready(&mut self) {
        let port = self.port;
        let until = Instant::now() + READY_DEADLINE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "nats-server on port {port} exited ({status}):\n{}",
                    self.log()
                );
            }
            if self.log().contains("Server is ready")
                && TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < until,
                "nats-server on port {port} not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server and starts it again on the same port: with the
    /// same JetStream store when `keep_store`, else with an empty one (a
    /// server that came back without its data). Waits until it is ready.
    pub fn restart(&mut self, keep_store: bool) {
        self.kill();
        if !keep_store {
            let mut n = 1;
            while self.dir.join(format!("store-{n}")).exists() {
                n += 1;
            }
            self.store = self.dir.join(format!("store-{n}"));
        }
        self.respawn();
    }

    /// Starts the server again on its port and current store, and waits
    /// until it is ready.
    fn respawn(&mut self) {
        self.child = NatsServer::spawn(
            &self.bin,
            self.port,
            self.jetstream,
            self.dir.path(),
            &self.store,
        );
        self.wait_ready();
    }

    /// nats-server 2.9.10 (Debian's) can panic on a JetStream API request
    /// that comes just after it started (a nil pointer in
    /// `jsMsgGetRequest`, seen once in CI on a restart without its store):
    /// if the server has exited with a Go panic in its log, this starts it
    /// again on the same port and store, says so on stderr (the crashed
    /// log is kept beside the new one), and returns true.
    pub fn revive_if_crashed(&mut self) -> bool {
        if !matches!(self.child.try_wait(), Ok(Some(_))) || !self.log().contains("panic: ") {
            return false;
        }
        let mut n = 1;
        while self.dir.join(format!("nats-crashed-{n}.log")).exists() {
            n += 1;
        }
        let kept = self.dir.join(format!("nats-crashed-{n}.log"));
        let _ = std::fs::rename(self.dir.join("nats.log"), &kept);
        eprintln!(
            "nats-server on port {} crashed with a Go panic (a nats-server bug, not the \
             test's; its log: {}); started again",
            self.port,
            kept.display()
        );
        self.respawn();
        true
    }

    /// [`NatsServer::start`] with JetStream on a [`free_port`].
    pub fn with_jetstream(bin: &Path) -> NatsServer {
        NatsServer::start(bin, free_port(), true)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default()
    }

    /// Kills and reaps the server now (a test of NATS going away).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Several nats-servers with JetStream routed into one cluster on
/// 127.0.0.1 (each with a client port and a cluster port of its own), or
/// each on its own address in a network namespace ([`NatsCluster::start_on`]),
/// for streams with more than one replica. Killed and reaped on drop.
pub struct NatsCluster {
    servers: Vec<Child>,
    hosts: Vec<Host>,
    ports: Vec<u16>,
    dir: TempDir,
    bin: PathBuf,
}

/// Where a member of a [`NatsCluster`] runs: the address it listens on,
/// and the network namespace it runs in (`None`: the caller's).
#[derive(Clone, Debug)]
pub struct Host {
    pub ip: String,
    pub netns: Option<String>,
}

impl Host {
    /// 127.0.0.1 in the caller's namespace.
    pub fn loopback() -> Host {
        Host {
            ip: "127.0.0.1".into(),
            netns: None,
        }
    }
}

impl NatsCluster {
    /// Starts `n` servers (named `n0`, `n1`, ...) on 127.0.0.1 and waits
    /// until each is ready and JetStream has elected its meta leader.
    pub fn start(bin: &Path, n: usize) -> NatsCluster {
        NatsCluster::start_on(bin, &vec![Host::loopback(); n])
    }

    /// Starts one server per host: one in a namespace of its own listens
    /// on ports 4222 (clients) and 6222 (routes) of its address; those on
    /// loopback take free ports.
    pub fn start_on(bin: &Path, hosts: &[Host]) -> NatsCluster {
        let dir = TempDir::new("nats-cluster");
        let port = |h: &Host, fixed: u16| {
            if h.netns.is_some() {
                fixed
            } else {
                free_port()
            }
        };
        let ports: Vec<u16> = hosts.iter().map(|h| port(h, 4222)).collect();
        let routes: Vec<u16> = hosts.iter().map(|h| port(h, 6222)).collect();
        let route_list = hosts
            .iter()
            .zip(&routes)
            .map(|(h, p)| format!("nats-route://{}:{p}", h.ip))
            .collect::<Vec<_>>()
            .join(", ");
        let mut servers = Vec::with_capacity(hosts.len());
        for (i, host) in hosts.iter().enumerate() {
            let conf = dir.join(format!("n{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{i}\nlisten: {ip}:{}\n\
                     jetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{ name: turbo-dex-test, listen: {ip}:{}, routes: [{route_list}] }}\n",
                    ports[i],
                    dir.join(format!("store-{i}")).display(),
                    routes[i],
                    ip = host.ip,
                ),
            )
            .expect("write the nats-server config");
            servers.push(spawn_member(bin, &dir, i, host));
        }
        let mut cluster = NatsCluster {
            servers,
            hosts: hosts.to_vec(),
            ports,
            dir,
            bin: bin.to_path_buf(),
        };
        for i in 0..hosts.len() {
            cluster.wait_ready(i);
        }
        cluster
    }

    fn wait_ready(&mut self, i: usize) {
        let until = Instant::now() + READY_DEADLINE;
        let (mut ready_since, mut restarted) = (None, false);
        loop {
            let log = self.log(i);
            if let Ok(Some(status)) = self.servers[i].try_wait() {
                panic!("nats-server n{i} of the cluster exited ({status}):\n{log}");
            }
            let ready = log.contains("Server is ready");
            let leader = log.contains("metadata leader");
            if ready
                && leader
                && TcpStream::connect((self.hosts[i].ip.as_str(), self.ports[i])).is_ok()
            {
                break;
            }
            if ready && ready_since.is_none() {
                ready_since = Some(Instant::now());
            }
            if let Some(since) = ready_since
                && !leader
                && !restarted
                && since.elapsed() > LEADERLESS_RESTART
            {
                eprintln!(
                    "testkit: nats-server n{i} heard of no JetStream meta leader within \
                     {LEADERLESS_RESTART:?} (nats-server 2.9's route race); restarting it once. \
                     Its log:\n{log}"
                );
                self.kill(i);
                self.servers[i] = spawn_member(&self.bin, &self.dir, i, &self.hosts[i]);
                (ready_since, restarted) = (None, true);
                continue;
            }
            assert!(
                Instant::now() < until,
                "nats-server n{i} of the cluster not ready within {READY_DEADLINE:?} \
                 (said it is ready: {ready}; heard of a JetStream meta leader: {leader}):\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills server `i` (SIGKILL, reaped), as when its machine dies.
    pub fn kill(&mut self, i: usize) {
        let child = &mut self.servers[i];
        // SAFETY: as in `signal`: a stopped server must run to die.
        unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts server `i` again (after [`NatsCluster::kill`]) on its store,
    /// and waits until it is ready in the cluster. Its log starts afresh.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.servers[i] = spawn_member(&self.bin, &self.dir, i, &self.hosts[i]);
        self.wait_ready(i);
    }

    /// Every server's URL, comma-separated (`nats://HOST:P,...`).
    pub fn urls(&self) -> String {
        (0..self.ports.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Server `i`'s URL.
    pub fn url(&self, i: usize) -> String {
        format!("nats://{}:{}", self.hosts[i].ip, self.ports[i])
    }

    /// Server `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("n{i}.log"))).unwrap_or_default()
    }

    /// Sends `signal` (`libc::SIGSTOP`, `libc::SIGCONT`, ...) to server `i`.
    pub fn signal(&self, i: usize, signal: i32) {
        let pid = self.servers[i].id() as i32;
        // SAFETY: kill(2) on the pid of a child this value owns and has
        // not reaped.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }
}

/// Starts member `i` of a [`NatsCluster`] from its config in `dir` (in
/// its host's namespace, through `ip netns exec`, which execs the server:
/// the child is the server), its output to `n<i>.log` there.
fn spawn_member(bin: &Path, dir: &TempDir, i: usize, host: &Host) -> Child {
    let conf = dir.join(format!("n{i}.conf"));
    let log = std::fs::File::create(dir.join(format!("n{i}.log"))).expect("create the log");
    let mut command = match &host.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    command
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log file"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for child in &mut self.servers {
            // SAFETY: as in `signal`: a stopped server must run to die.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
