//! TLS 1.3 on the order-entry listener (`--tls-cert`, `--tls-key`): the
//! certificate and key, the kernel TLS (kTLS) check, and the handshake
//! threads.
//!
//! Design:
//!
//! 1. A core accepts a connection as always, then hands the socket to the
//!    handshake threads (a bounded queue; when it is full the connection
//!    is closed). The cores never run a handshake: its public-key
//!    operations would stall matching.
//! 2. A handshake thread runs many rustls handshakes at once on
//!    non-blocking sockets (poll(2)), each with a deadline
//!    ([`HANDSHAKE_TIMEOUT`]), so a client that stalls holds no thread.
//!    A completed one goes with its rustls session to the core that
//!    accepted it (a channel, then a wake). A failed handshake (a client
//!    without TLS, a garbage or a stalled handshake) is logged once and
//!    the socket closed; no core sees it.
//! 3. The core admits the connection and from then on encrypts and
//!    decrypts in user space with rustls (`core/tls.rs`): io_uring still
//!    receives and sends plain byte buffers, and batching is unchanged.
//!
//! kTLS (`setsockopt(TCP_ULP, "tls")` with the negotiated keys) would move
//! the record layer into the kernel. Where the kernel has no `tls` module
//! (`CONFIG_TLS` unset, or not loaded) that is impossible; turbo-dex
//! checks at start and says which path it uses. It does not install keys
//! into kTLS yet: the user-space path is used in both cases.

use std::io::{self, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::ServerConnection;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::Shared;

/// A TLS handshake must complete within this after the accept.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Threads that run handshakes, each up to [`HANDSHAKES_PER_THREAD_MAX`]
/// at once. Each handshake costs one key exchange and one signature of CPU.
pub const HANDSHAKE_THREADS: usize = 2;
/// Accepted connections waiting for a handshake thread, over all cores;
/// past this a new connection is closed at once.
pub const HANDSHAKE_QUEUE_MAX: usize = 1024;

/// Loads the certificate chain and private key (PEM) and builds a TLS
/// 1.3-only server configuration. Every error names the file and says
/// what is wrong with it.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let cert_pem = std::fs::read(cert)
        .map_err(|e| format!("--tls-cert {}: cannot read it: {e}", cert.display()))?;
    let key_pem = std::fs::read(key)
        .map_err(|e| format!("--tls-key {}: cannot read it: {e}", key.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert {}: not valid PEM: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks, the \
             server's certificate first)",
            cert.display()
        ));
    }
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "--tls-key {}: holds no usable private key ({e}; expected a PEM \"PRIVATE KEY\", \
             \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block)",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS 1.3 is not available: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| {
            format!(
                "--tls-cert {} and --tls-key {} do not make a usable pair: {e}",
                cert.display(),
                key.display()
            )
        })?;
    // No session resumption: a ticket would be one more message after the
    // handshake, and order-entry sessions are long-lived.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Whether this kernel offers kTLS (the `tls` module, built in or loaded).
pub fn ktls_available() -> bool {
    Path::new("/sys/module/tls").exists()
}

/// The start-up line that says which TLS path the server uses.
pub fn ktls_status_line() -> &'static str {
    if ktls_available() {
        "TLS 1.3 on order entry: this kernel has kTLS, but turbo-dex does not install keys into \
         it yet: TLS is done in user space by the engine cores (handshakes on their own threads)"
    } else {
        "TLS 1.3 on order entry: kTLS not available in this kernel (no /sys/module/tls: \
         CONFIG_TLS unset or `modprobe tls` not run): TLS is done in user space by the engine \
         cores (handshakes on their own threads)"
    }
}

/// An accepted connection waiting for its handshake.
struct Pending {
    stream: TcpStream,
    core: usize,
    accepted: Instant,
}

/// A connection whose handshake completed, on its way back to its core.
pub struct Handshaken {
    pub stream: TcpStream,
    pub session: ServerConnection,
}

/// A core's ends of the handshake threads' queues.
pub struct CoreTls {
    to_pool: SyncSender<Pending>,
    pub done: Receiver<Handshaken>,
    index: usize,
}

impl CoreTls {
    /// Queues `stream` for a handshake; gives it back when the queue is full.
    pub fn start_handshake(&self, stream: TcpStream) -> Result<(), TcpStream> {
        let pending = Pending {
            stream,
            core: self.index,
            accepted: Instant::now(),
        };
        match self.to_pool.try_send(pending) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(p)) | Err(TrySendError::Disconnected(p)) => Err(p.stream),
        }
    }
}

/// Starts the handshake threads; returns each core's ends. The threads end
/// when every core has dropped its [`CoreTls`].
pub fn start_pool(
    config: Arc<rustls::ServerConfig>,
    shared: &Arc<Shared>,
    cores: usize,
) -> io::Result<Vec<CoreTls>> {
    let (to_pool, from_cores) = mpsc::sync_channel::<Pending>(HANDSHAKE_QUEUE_MAX);
    let from_cores = Arc::new(Mutex::new(from_cores));
    let mut to_cores = Vec::with_capacity(cores);
    let mut ends = Vec::with_capacity(cores);
    for index in 0..cores {
        let (tx, rx) = mpsc::channel();
        to_cores.push(tx);
        ends.push(CoreTls {
            to_pool: to_pool.clone(),
            done: rx,
            index,
        });
    }
    for i in 0..HANDSHAKE_THREADS {
        let worker = Worker {
            config: Arc::clone(&config),
            shared: Arc::clone(shared),
            from_cores: Arc::clone(&from_cores),
            to_cores: to_cores.clone(),
        };
        std::thread::Builder::new()
            .name(format!("turbo-dex-tls-{i}"))
            .spawn(move || worker.run())?;
    }
    Ok(ends)
}

struct Worker {
    config: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    from_cores: Arc<Mutex<Receiver<Pending>>>,
    to_cores: Vec<Sender<Handshaken>>,
}

/// A handshake in progress on a non-blocking socket.
struct Active {
    stream: TcpStream,
    /// `None` until the first byte showed a TLS handshake record.
    session: Option<ServerConnection>,
    core: usize,
    deadline: Instant,
}

/// Handshakes one thread runs at once; more wait in the queue.
pub const HANDSHAKES_PER_THREAD_MAX: usize = 512;
/// How long a handshake thread waits in poll(2) before it looks for new
/// connections in the queue (the most a new handshake waits to start).
const POLL_MS: i32 = 2;

impl Worker {
    /// Runs many handshakes at once on non-blocking sockets, so that a
    /// client that stalls its handshake holds no thread, only its entry
    /// until the deadline.
    fn run(self) {
        let mut active: Vec<Active> = Vec::with_capacity(HANDSHAKES_PER_THREAD_MAX);
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(HANDSHAKES_PER_THREAD_MAX);
        loop {
            if active.is_empty() {
                let next = match self.from_cores.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok(p) = next else {
                    return; // every core is gone
                };
                self.start(p, &mut active);
            }
            // The other thread may hold the queue while it waits: then
            // this one goes on with what it has.
            if let Ok(rx) = self.from_cores.try_lock() {
                while active.len() < HANDSHAKES_PER_THREAD_MAX {
                    let Ok(p) = rx.try_recv() else { break };
                    self.start(p, &mut active);
                }
            }
            let now = Instant::now();
            for i in (0..active.len()).rev() {
                if now >= active[i].deadline {
                    let a = active.swap_remove(i);
                    self.fail(&a, format!("not complete within {HANDSHAKE_TIMEOUT:?}"));
                }
            }
            if active.is_empty() {
                continue;
            }
            fds.clear();
            fds.extend(active.iter().map(|a| libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&a.stream),
                events: libc::POLLIN
                    | if a.session.as_ref().is_some_and(|s| s.wants_write()) {
                        libc::POLLOUT
                    } else {
                        0
                    },
                revents: 0,
            }));
            // SAFETY: `fds` is a valid, initialized array of `fds.len()`
            // pollfd entries that lives across the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
            if n <= 0 {
                continue;
            }
            // Backwards: `swap_remove` moves an entry already looked at.
            for i in (0..active.len()).rev() {
                if fds[i].revents != 0 {
                    let step = step(&mut active[i], &self.config);
                    self.settle(&mut active, i, step);
                }
            }
        }
    }

    /// Takes a new connection: non-blocking, a first step at once.
    fn start(&self, p: Pending, active: &mut Vec<Active>) {
        if let Err(e) = p.stream.set_nonblocking(true) {
            let a = Active {
                stream: p.stream,
                session: None,
                core: p.core,
                deadline: p.accepted,
            };
            self.fail(&a, format!("cannot make the socket non-blocking: {e}"));
            return;
        }
        active.push(Active {
            stream: p.stream,
            session: None,
            core: p.core,
            deadline: p.accepted + HANDSHAKE_TIMEOUT,
        });
        let i = active.len() - 1;
        let step = step(&mut active[i], &self.config);
        self.settle(active, i, step);
    }

    fn settle(&self, active: &mut Vec<Active>, i: usize, step: Step) {
        match step {
            Step::Pending => {}
            Step::Done => {
                let a = active.swap_remove(i);
                self.finish(a);
            }
            Step::Failed(e) => {
                let a = active.swap_remove(i);
                self.fail(&a, e);
            }
        }
    }

    /// Hands a completed handshake to its core.
    fn finish(&self, a: Active) {
        let Some(session) = a.session else {
            self.fail(&a, "internal: no TLS session".into());
            return;
        };
        if let Err(e) = a.stream.set_nonblocking(false) {
            let a = Active { session: None, ..a };
            self.fail(&a, format!("cannot make the socket blocking again: {e}"));
            return;
        }
        let mut session = session;
        // Plaintext is written with no limit: the core's own output limits
        // (`--out-max`) bound it, and records are drained after each write.
        session.set_buffer_limit(None);
        let back = Handshaken {
            stream: a.stream,
            session,
        };
        if let Some(tx) = self.to_cores.get(a.core)
            && tx.send(back).is_ok()
        {
            // Always kick: the core may be about to sleep, and a
            // handshake is rare next to the work a wake costs.
            self.shared.kick(a.core);
            return;
        }
        self.shared
            .conns_live
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Logs a failed handshake once and closes its connection.
    fn fail(&self, a: &Active, e: String) {
        let peer = a
            .stream
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |p| p.to_string());
        tracing::warn!(
            "TLS handshake with {peer} failed: {e}; closing the connection (a client without \
             TLS, or one that does not trust this server's certificate?)"
        );
        self.shared
            .conns_live
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Where a handshake step left it.
enum Step {
    /// Waiting for the client (or for room in the socket buffer).
    Pending,
    Done,
    Failed(String),
}

/// Moves a handshake on as far as the socket allows without blocking.
fn step(a: &mut Active, config: &Arc<rustls::ServerConfig>) -> Step {
    if a.session.is_none() {
        match first_byte_is_tls(&mut a.stream) {
            Ok(None) => return Step::Pending,
            Ok(Some(())) => match ServerConnection::new(Arc::clone(config)) {
                Ok(s) => a.session = Some(s),
                Err(e) => return Step::Failed(format!("cannot start a TLS session: {e}")),
            },
            Err(e) => return Step::Failed(e),
        }
    }
    let Some(session) = a.session.as_mut() else {
        return Step::Failed("internal: no TLS session".into());
    };
    loop {
        while session.wants_write() {
            match session.write_tls(&mut a.stream) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Pending,
                Err(e) => return Step::Failed(format!("sending the handshake: {e}")),
            }
        }
        if !session.is_handshaking() {
            return Step::Done;
        }
        match session.read_tls(&mut a.stream) {
            Ok(0) => return Step::Failed("the client closed the connection".into()),
            Ok(_) => {
                if let Err(e) = session.process_new_packets() {
                    // The alert that says why, if the socket takes it.
                    let _ = session.write_tls(&mut a.stream);
                    return Step::Failed(e.to_string());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Pending,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Step::Failed(e.to_string()),
        }
    }
}

/// TLS records start with content type 22 (handshake) for a ClientHello.
const TLS_HANDSHAKE_RECORD: u8 = 22;

/// Whether the client's first byte starts a TLS handshake record:
/// `Ok(None)` when nothing came yet. A client that speaks the protocol in
/// clear on a TLS listener gets a SessionError in clear that says so
/// (rustls would close without a word it understands), then the close.
fn first_byte_is_tls(stream: &mut TcpStream) -> Result<Option<()>, String> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first) {
        Ok(0) => Err("the client closed the connection".into()),
        Ok(_) if first[0] == TLS_HANDSHAKE_RECORD => Ok(Some(())),
        Ok(_) => {
            // The text field holds 56 bytes.
            let text = "TLS listener: connect with TLS (dex-trader --tls)";
            let mut buf = Vec::with_capacity(160);
            wire::FrameWriter::new(&mut buf)
                .with_version(wire::PROTOCOL_VERSION_MIN)
                .push(&wire::SessionError::new(
                    wire::SessionErrorCode::MalformedFrame,
                    0,
                    0,
                    text,
                ));
            // Best effort on the non-blocking socket: it is empty, so the
            // few bytes fit.
            let _ = stream.write_all(&buf);
            Err("the client does not speak TLS (its first bytes are not a TLS handshake)".into())
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}
