//! `--tls`: TLS 1.3 (rustls, `ring`) over dex-trader's connections.
//!
//! The glommio socket stays a plain `TcpStream`; [`Stream`] wraps it with
//! an optional rustls client session, and the run's four ways of moving
//! bytes (await readable, await writable, and the non-blocking `recv` and
//! `send` of `--spin`) go through it. Reports are decrypted into the
//! caller's receive buffer; a batch of requests is sealed into records as
//! a whole, so a batch still leaves in one send.
//!
//! Writes: a write hands the whole buffer to rustls, then reports it
//! written only once all its records are on the socket. Until then it
//! answers "not yet" (`Pending`, or `Ok(None)`) and the caller retries
//! with the same bytes, as every caller here does (its buffer only moves
//! on when a write reports progress).

use std::io::{self, Read as _, Write as _};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite, future};
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, ClientConnection};

/// What `--tls` needs for every connection.
#[derive(Clone, Debug)]
pub struct TlsPlan {
    pub config: Arc<ClientConfig>,
    /// The name the server's certificate must carry.
    pub server_name: ServerName<'static>,
    /// `--tls-ca`, for messages.
    pub ca_file: String,
}

/// Ciphertext read from the socket at a time.
const CIPHERTEXT_READ_BYTES: usize = 64 << 10;

/// Builds the client configuration: TLS 1.3 only, trusting only the
/// certificates in `ca` (PEM).
pub fn load_client_config(ca: &Path, server_name: &str) -> Result<TlsPlan, String> {
    let pem =
        std::fs::read(ca).map_err(|e| format!("--tls-ca {}: cannot read it: {e}", ca.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-ca {}: not valid PEM: {e}", ca.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-ca {}: holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)",
            ca.display()
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| {
            format!(
                "--tls-ca {}: not a usable CA certificate: {e}",
                ca.display()
            )
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS 1.3 is not available: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| {
        format!("--tls-server-name {server_name}: not a DNS name or an IP address: {e}")
    })?;
    Ok(TlsPlan {
        config: Arc::new(config),
        server_name: name,
        ca_file: ca.display().to_string(),
    })
}

/// The TLS side of a connection.
struct Tls {
    session: ClientConnection,
    /// Ciphertext read from the socket, `rpos..rend` not yet given to rustls.
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    /// Records to send, `wpos..` not yet on the socket.
    wbuf: Vec<u8>,
    wpos: usize,
    /// Plaintext bytes handed to rustls and not yet reported written.
    accepted: usize,
}

/// A connection: the socket and, with `--tls`, its TLS session.
pub struct Stream {
    tcp: TcpStream,
    tls: Option<Box<Tls>>,
}

impl Stream {
    /// A connection without TLS.
    pub fn plain(tcp: TcpStream) -> Stream {
        Stream { tcp, tls: None }
    }

    /// Runs the TLS handshake on `tcp`. The error says why the server's
    /// certificate was refused, or that the server does not speak TLS.
    pub async fn handshake(tcp: TcpStream, plan: &TlsPlan) -> Result<Stream, String> {
        let mut session = ClientConnection::new(Arc::clone(&plan.config), plan.server_name.clone())
            .map_err(|e| format!("cannot start a TLS session: {e}"))?;
        session.set_buffer_limit(None);
        let mut s = Stream {
            tcp,
            tls: Some(Box::new(Tls {
                session,
                rbuf: vec![0; CIPHERTEXT_READ_BYTES],
                rpos: 0,
                rend: 0,
                wbuf: Vec::with_capacity(CIPHERTEXT_READ_BYTES),
                wpos: 0,
                accepted: 0,
            })),
        };
        let Stream { tcp, tls } = &mut s;
        let Some(t) = tls.as_mut() else {
            return Err("internal: no TLS session".into());
        };
        loop {
            if t.session.wants_write() {
                t.wbuf.clear();
                while t.session.wants_write() {
                    t.session
                        .write_tls(&mut t.wbuf)
                        .map_err(|e| format!("TLS: {e}"))?;
                }
                let mut at = 0;
                while at < t.wbuf.len() {
                    let n = future::poll_fn(|cx| Pin::new(&mut *tcp).poll_write(cx, &t.wbuf[at..]))
                        .await
                        .map_err(|e| format!("sending the TLS handshake: {e}"))?;
                    if n == 0 {
                        return Err("sending the TLS handshake: the socket took no bytes".into());
                    }
                    at += n;
                }
                t.wbuf.clear();
                continue;
            }
            if !t.session.is_handshaking() {
                return Ok(s);
            }
            if t.rpos == t.rend {
                let n = future::poll_fn(|cx| Pin::new(&mut *tcp).poll_read(cx, &mut t.rbuf))
                    .await
                    .map_err(|e| format!("during the TLS handshake: {e}"))?;
                if n == 0 {
                    return Err(
                        "the server closed the connection during the TLS handshake; is \
                                it listening with TLS (turbo-dex --tls-cert)?"
                            .into(),
                    );
                }
                t.rpos = 0;
                t.rend = n;
            }
            t.feed().map_err(|e| handshake_error(&e, plan))?;
        }
    }

    /// The socket's descriptor.
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.tcp)
    }

    /// Reads what arrived (plaintext), waiting until something does.
    pub fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let Stream { tcp, tls } = self;
        match tls {
            None => Pin::new(tcp).poll_read(cx, buf),
            Some(t) => t.read(buf, |b| Pin::new(&mut *tcp).poll_read(cx, b)),
        }
    }

    /// Writes some of `buf`, waiting until the socket takes bytes.
    pub fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let Stream { tcp, tls } = self;
        match tls {
            None => Pin::new(tcp).poll_write(cx, buf),
            Some(t) => t.write(buf, |b| Pin::new(&mut *tcp).poll_write(cx, b)),
        }
    }

    /// A non-blocking read: `Ok(None)` when nothing is there yet.
    pub fn recv_now(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let fd = self.as_raw_fd();
        match &mut self.tls {
            None => recv_now(fd, buf),
            Some(t) => ready(t.read(buf, |b| pending(recv_now(fd, b)))),
        }
    }

    /// A non-blocking write: `Ok(None)` when the socket buffer is full.
    pub fn send_now(&mut self, buf: &[u8]) -> io::Result<Option<usize>> {
        let fd = self.as_raw_fd();
        match &mut self.tls {
            None => send_now(fd, buf),
            Some(t) => ready(t.write(buf, |b| pending(send_now(fd, b)))),
        }
    }
}

impl Tls {
    /// Gives rustls some of the ciphertext held, and decrypts.
    fn feed(&mut self) -> Result<(), rustls::Error> {
        let mut data = &self.rbuf[self.rpos..self.rend];
        let before = data.len();
        // Reading from a slice cannot fail.
        let _ = self.session.read_tls(&mut data);
        self.rpos += before - data.len();
        self.session.process_new_packets()?;
        Ok(())
    }

    fn read(
        &mut self,
        buf: &mut [u8],
        mut raw: impl FnMut(&mut [u8]) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.session.reader().read(buf) {
                // 0: the server sent close_notify.
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if self.rpos == self.rend {
                match raw(&mut self.rbuf) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) => return Poll::Ready(Ok(0)),
                    Poll::Ready(Ok(n)) => {
                        self.rpos = 0;
                        self.rend = n;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                }
            }
            if let Err(e) = self.feed() {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }

    fn write(
        &mut self,
        buf: &[u8],
        mut raw: impl FnMut(&[u8]) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if self.accepted == 0 {
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            if let Err(e) = self.session.writer().write_all(buf) {
                return Poll::Ready(Err(e));
            }
            self.accepted = buf.len();
            self.wbuf.clear();
            self.wpos = 0;
            while self.session.wants_write() {
                if let Err(e) = self.session.write_tls(&mut self.wbuf) {
                    return Poll::Ready(Err(e));
                }
            }
        }
        debug_assert!(
            buf.len() >= self.accepted,
            "a TLS write retried with fewer bytes"
        );
        while self.wpos < self.wbuf.len() {
            match raw(&self.wbuf[self.wpos..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the socket took no bytes",
                    )));
                }
                Poll::Ready(Ok(n)) => self.wpos += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        Poll::Ready(Ok(std::mem::take(&mut self.accepted)))
    }
}

/// Says why a handshake failed, in the words of the flags.
fn handshake_error(e: &rustls::Error, plan: &TlsPlan) -> String {
    let name = plan.server_name.to_str();
    let why = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired".to_string()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet".to_string()
            }
            CertificateError::UnknownIssuer => format!(
                "the server's certificate is not signed by a CA in --tls-ca {}",
                plan.ca_file
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("the server's certificate is not valid for {name} (--tls-server-name)")
            }
            other => format!("the server's certificate was refused: {other:?}"),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "the server's answer is not TLS ({e}); is it listening with TLS (turbo-dex \
             --tls-cert)?"
        ),
        other => other.to_string(),
    };
    format!("TLS handshake failed: {why}")
}

fn pending(r: io::Result<Option<usize>>) -> Poll<io::Result<usize>> {
    match r {
        Ok(None) => Poll::Pending,
        Ok(Some(n)) => Poll::Ready(Ok(n)),
        Err(e) => Poll::Ready(Err(e)),
    }
}

fn ready(p: Poll<io::Result<usize>>) -> io::Result<Option<usize>> {
    match p {
        Poll::Pending => Ok(None),
        Poll::Ready(r) => r.map(Some),
    }
}

/// A non-blocking `recv`: `Ok(None)` when nothing is there yet.
pub fn recv_now(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes during the call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    would_block_is_none(n)
}

/// A non-blocking `send`: `Ok(None)` when the socket buffer is full.
pub fn send_now(fd: std::os::fd::RawFd, buf: &[u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes during the call.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    would_block_is_none(n)
}

fn would_block_is_none(n: isize) -> io::Result<Option<usize>> {
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
        _ => Err(e),
    }
}
