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
//! 2. A handshake thread runs rustls's blocking handshake with a deadline
//!    ([`HANDSHAKE_TIMEOUT`]), then passes the socket and its rustls
//!    session to the core that accepted it (a channel, then a wake). A
//!    failed handshake (a client without TLS, a garbage or a stalled
//!    handshake) is logged once and the socket closed; no core sees it.
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

/// A TLS handshake must complete within this (a client that stalls its
/// handshake holds a handshake thread this long at most).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Threads that run handshakes. Each handshake costs one key exchange and
/// one signature of CPU; a stalled one holds its thread up to
/// [`HANDSHAKE_TIMEOUT`].
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

impl Worker {
    fn run(self) {
        loop {
            let next = match self.from_cores.lock() {
                Ok(rx) => rx.recv(),
                Err(_) => return,
            };
            let Ok(mut p) = next else {
                return; // every core is gone
            };
            let peer = p
                .stream
                .peer_addr()
                .map_or_else(|_| "?".to_string(), |a| a.to_string());
            let result = ServerConnection::new(Arc::clone(&self.config))
                .map_err(|e| format!("cannot start a TLS session: {e}"))
                .and_then(|mut session| {
                    handshake(&mut p.stream, &mut session, p.accepted + HANDSHAKE_TIMEOUT)
                        .map(|()| session)
                });
            match result {
                Ok(session) => {
                    let back = Handshaken {
                        stream: p.stream,
                        session,
                    };
                    if let Some(tx) = self.to_cores.get(p.core)
                        && tx.send(back).is_ok()
                    {
                        // Always kick: the core may be about to sleep, and a
                        // handshake is rare next to the work a wake costs.
                        self.shared.kick(p.core);
                        continue;
                    }
                    self.shared
                        .conns_live
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(
                        "TLS handshake with {peer} failed: {e}; closing the connection (a client \
                         without TLS, or one that does not trust this server's certificate?)"
                    );
                    self.shared
                        .conns_live
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }
}

/// TLS records start with content type 22 (handshake) for a ClientHello.
const TLS_HANDSHAKE_RECORD: u8 = 22;

/// A client that speaks the protocol in clear on a TLS listener gets a
/// SessionError in clear that says so (rustls would close without a word
/// it understands), then the close.
fn refuse_if_not_tls(stream: &mut TcpStream, deadline: Instant) -> Result<(), String> {
    let left = deadline.saturating_duration_since(Instant::now());
    stream
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(|e| format!("cannot set the socket's timeouts: {e}"))?;
    let mut first = [0u8; 1];
    match stream.peek(&mut first) {
        Ok(0) => Err("the client closed the connection".into()),
        Ok(_) if first[0] == TLS_HANDSHAKE_RECORD => Ok(()),
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
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = stream.write_all(&buf);
            Err("the client does not speak TLS (its first bytes are not a TLS handshake)".into())
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Runs a blocking handshake on `stream` until `deadline`, then restores
/// the socket's defaults (no timeouts) for the core's io_uring.
fn handshake(
    stream: &mut TcpStream,
    session: &mut ServerConnection,
    deadline: Instant,
) -> Result<(), String> {
    refuse_if_not_tls(stream, deadline)?;
    while session.is_handshaking() {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("not complete within {HANDSHAKE_TIMEOUT:?}"))?;
        stream
            .set_read_timeout(Some(left))
            .and_then(|()| stream.set_write_timeout(Some(left)))
            .map_err(|e| format!("cannot set the socket's timeouts: {e}"))?;
        match session.complete_io(stream) {
            Ok((0, 0)) if session.is_handshaking() => {
                return Err("the client closed the connection".into());
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("not complete within {HANDSHAKE_TIMEOUT:?}"));
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err("the client closed the connection".into());
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    while session.wants_write() {
        session
            .write_tls(stream)
            .map_err(|e| format!("sending the end of the handshake: {e}"))?;
    }
    stream.flush().map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None))
        .map_err(|e| format!("cannot clear the socket's timeouts: {e}"))?;
    // Plaintext is written with no limit: the core's own output limits
    // (`--out-max`) bound it, and records are drained after each write.
    session.set_buffer_limit(None);
    Ok(())
}
