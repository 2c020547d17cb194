//! TLS on the order-entry listener (`--tls-cert`, `--tls-key`): a protocol
//! client over rustls logs on, trades and gets its reports; a client
//! without TLS, or with a garbage handshake, is closed and nobody else is
//! affected; the binary refuses missing, unreadable and mismatched files.

#[path = "common/certs.rs"]
mod certs;
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::server::{EngineKind, Server, tls::load_server_config};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use wire::*;

fn tls_server(certs: &certs::Certs) -> Server {
    let config = load_server_config(&certs.server_cert, &certs.server_key).expect("load the pair");
    common::start_with(&common::test_cpus()[..1], 1, 4, EngineKind::Match, |cfg| {
        cfg.tls = Some(config);
    })
}

fn client_config(ca: &Path) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(c.expect("CA PEM")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A blocking protocol client over rustls: what it received, by kind.
struct TlsClient {
    stream: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
    kinds: Vec<Kind>,
    session: u64,
    symbols: usize,
}

impl TlsClient {
    fn connect(addr: SocketAddr, ca: &Path) -> TlsClient {
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_nodelay(true).unwrap();
        tcp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(client_config(ca), name).expect("client session");
        TlsClient {
            stream: StreamOwned::new(conn, tcp),
            buf: Vec::new(),
            kinds: Vec::new(),
            session: 0,
            symbols: 0,
        }
    }

    fn login(addr: SocketAddr, ca: &Path, account: u64) -> TlsClient {
        let mut c = TlsClient::connect(addr, ca);
        c.send(&[Hello::new(account, 0, 0, "")]);
        c.wait(
            |c| c.session != 0 && c.symbols >= 4,
            "the HelloAck and the directory",
        );
        c
    }

    fn send<M: Message>(&mut self, msgs: &[M]) {
        let mut out = Vec::new();
        FrameWriter::new(&mut out).push_all(msgs);
        self.stream.write_all(&out).expect("send over TLS");
        self.stream.flush().expect("flush");
    }

    fn pump(&mut self) {
        let mut tmp = [0u8; 65536];
        match self.stream.read(&mut tmp) {
            Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("reading over TLS: {e}"),
        }
        let decoder = Decoder::for_client(MAX_FRAME_BYTES_LIMIT);
        let mut frames = decoder.frames(&self.buf);
        let mut kinds = Vec::new();
        for f in frames.by_ref() {
            match f {
                Frame::HelloAck(m) => {
                    self.session = m.first().map_or(0, |a| a.session_id.get());
                    kinds.push(Kind::HelloAck);
                }
                Frame::SymbolEntry(m) => self.symbols += m.len(),
                Frame::Accepted(m) => kinds.extend(m.iter().map(|_| Kind::Accepted)),
                Frame::Fill(m) => kinds.extend(m.iter().map(|_| Kind::Fill)),
                other => kinds.push(other.kind()),
            }
        }
        assert_eq!(frames.error(), None, "well-formed frames inside TLS");
        let used = frames.consumed();
        self.buf.drain(..used);
        self.kinds.extend(kinds);
    }

    fn count(&self, kind: Kind) -> usize {
        self.kinds.iter().filter(|&&k| k == kind).count()
    }

    fn wait(&mut self, done: impl Fn(&TlsClient) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; received {:?}",
                self.kinds.iter().rev().take(5).collect::<Vec<_>>()
            );
            self.pump();
        }
    }
}

/// Reads until the server closes; returns what it sent.
fn read_until_closed(mut s: TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "the server closes the connection"
        );
        match s.read(&mut tmp) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&tmp[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return got, // reset: closed too
        }
    }
}

fn base() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

#[test]
fn a_protocol_client_over_tls_logs_on_trades_and_gets_reports() {
    let certs = certs::make(base(), "tls-trade");
    let server = tls_server(&certs);
    let addr = server.local_addr();
    let mut buyer = TlsClient::login(addr, &certs.ca, 1);
    let mut seller = TlsClient::login(addr, &certs.ca, 2);
    assert_ne!(buyer.session, seller.session);

    // A batch big enough to span several TLS records each way.
    let rests: Vec<NewOrder> = (0..600).map(|i| common::buy(1000 + i, 1, 50, 1)).collect();
    buyer.send(&rests);
    buyer.wait(|c| c.count(Kind::Accepted) >= 600, "600 acceptances");

    buyer.send(&[common::buy(5000, 0, 100, 10)]);
    buyer.wait(|c| c.count(Kind::Accepted) >= 601, "the buy's acceptance");
    seller.send(&[common::sell(1, 0, 100, 10)]);
    seller.wait(|c| c.count(Kind::Fill) >= 1, "the seller's fill");
    buyer.wait(|c| c.count(Kind::Fill) >= 1, "the buyer's fill");
    assert_eq!(buyer.count(Kind::SessionError), 0);
    assert_eq!(seller.count(Kind::SessionError), 0);
    server.stop();
}

#[test]
fn a_client_without_tls_is_closed_and_nobody_else_is_affected() {
    let certs = certs::make(base(), "tls-plain");
    let server = tls_server(&certs);
    let addr = server.local_addr();
    let mut trader = TlsClient::login(addr, &certs.ca, 1);

    // A plain client sends its Hello in clear: a SessionError in clear
    // that says to use TLS, and a close.
    let mut plain = TcpStream::connect(addr).expect("connect");
    let mut hello = Vec::new();
    FrameWriter::new(&mut hello).push(&Hello::new(7, 0, 0, ""));
    plain.write_all(&hello).expect("send");
    let got = read_until_closed(plain);
    let decoder = Decoder::for_client(MAX_FRAME_BYTES_LIMIT);
    match decoder.decode(&got) {
        Ok(Decoded::Frame(Frame::SessionError(e), _)) => {
            let text = String::from_utf8_lossy(e[0].text()).into_owned();
            assert!(text.contains("TLS"), "{text}");
        }
        other => panic!("expected a SessionError, got {other:?} from {got:?}"),
    }

    // Garbage that looks like the start of a handshake record.
    let mut garbage = TcpStream::connect(addr).expect("connect");
    let mut bytes = vec![22u8, 3, 1, 0x40, 0];
    bytes.extend((0..16_384u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let _ = garbage.write_all(&bytes);
    read_until_closed(garbage);

    // A connection that closes in the middle of its handshake.
    let half = TcpStream::connect(addr).expect("connect");
    (&half).write_all(&[22, 3, 1, 0, 200, 1]).expect("send");
    drop(half);

    // The TLS session next to them goes on, and new ones still log on.
    trader.send(&[common::buy(1, 0, 100, 10)]);
    trader.wait(|c| c.count(Kind::Accepted) >= 1, "the acceptance");
    let mut other = TlsClient::login(addr, &certs.ca, 2);
    other.send(&[common::sell(1, 0, 100, 10)]);
    other.wait(|c| c.count(Kind::Fill) >= 1, "the fill");
    trader.wait(|c| c.count(Kind::Fill) >= 1, "the fill");
    server.stop();
}

#[test]
fn stalled_handshakes_do_not_hold_up_others() {
    let certs = certs::make(base(), "tls-stalled");
    let server = tls_server(&certs);
    let addr = server.local_addr();
    // Connections that start a handshake record and then say nothing, or
    // say nothing at all: far more than there are handshake threads. Had
    // each held a thread until its 5 s deadline, the logon below would
    // wait for 16 x 5 s / 2 threads, past its 20 s limit.
    let stalled: Vec<TcpStream> = (0..16)
        .map(|i| {
            let s = TcpStream::connect(addr).expect("connect");
            if i % 2 == 0 {
                (&s).write_all(&[22, 3, 1, 0, 200]).expect("send");
            }
            s
        })
        .collect();
    let mut trader = TlsClient::login(addr, &certs.ca, 1);
    trader.send(&[common::buy(1, 0, 100, 10)]);
    trader.wait(|c| c.count(Kind::Accepted) >= 1, "the acceptance");
    // The stalled ones are closed at their deadline.
    for s in stalled {
        read_until_closed(s);
    }
    server.stop();
}

fn turbo_dex(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_turbo-dex"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--journal",
            "none",
            "--admin",
            "none",
            "--quiet",
            "--no-pin",
        ])
        .args(args)
        .output()
        .expect("run turbo-dex");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_binary_refuses_missing_unreadable_and_mismatched_files() {
    let certs = certs::make(base(), "tls-files");
    let cert = certs.server_cert.to_str().unwrap();
    let key = certs.server_key.to_str().unwrap();
    let missing = certs.dir.join("missing.pem");
    let missing = missing.to_str().unwrap();

    let (ok, err) = turbo_dex(&["--tls-cert", missing, "--tls-key", key]);
    assert!(
        !ok && err.contains("--tls-cert") && err.contains("cannot read"),
        "{err}"
    );

    let (ok, err) = turbo_dex(&["--tls-cert", cert, "--tls-key", missing]);
    assert!(
        !ok && err.contains("--tls-key") && err.contains("cannot read"),
        "{err}"
    );

    // A key file where the certificate belongs, and the other way round.
    let (ok, err) = turbo_dex(&["--tls-cert", key, "--tls-key", key]);
    assert!(!ok && err.contains("holds no certificate"), "{err}");
    let (ok, err) = turbo_dex(&["--tls-cert", cert, "--tls-key", cert]);
    assert!(!ok && err.contains("no usable private key"), "{err}");

    // The expired certificate's key with the server certificate.
    let other_key = certs.expired_key.to_str().unwrap();
    let (ok, err) = turbo_dex(&["--tls-cert", cert, "--tls-key", other_key]);
    assert!(!ok && err.contains("do not make a usable pair"), "{err}");

    // One without the other is a usage error.
    let (ok, err) = turbo_dex(&["--tls-cert", cert]);
    assert!(!ok && err.contains("--tls-key"), "{err}");
}

#[test]
fn the_pair_loads_and_the_ktls_check_answers() {
    let certs = certs::make(base(), "tls-load");
    assert!(load_server_config(&certs.server_cert, &certs.server_key).is_ok());
    let line = engine::server::tls::ktls_status_line();
    assert!(line.contains("user space"), "{line}");
}
