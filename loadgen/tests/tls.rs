//! dex-trader `--tls` against a TLS turbo-dex (the engine's server started
//! in this process): a verified trading run (awaiting and `--spin`), and
//! the refusals: an expired certificate, one from another CA, a name the
//! certificate does not carry, and a client without TLS.

#[path = "../../engine/tests/common/certs.rs"]
mod certs;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

use engine::server::tls::load_server_config;
use engine::server::{EngineKind, PollMode, Server, ServerConfig};

fn server_cpu() -> usize {
    let allowed = tuning::allowed_cpus().expect("read the affinity mask");
    allowed.last().expect("at least one CPU")
}

fn tls_server(cert: &Path, key: &Path) -> Server {
    server(Some((cert, key)))
}

fn server(tls: Option<(&Path, &Path)>) -> Server {
    let names = (0..16).map(|i| format!("SYM{i}")).collect();
    let mut cfg = ServerConfig::new(
        "127.0.0.1:0".parse().expect("address"),
        vec![server_cpu()],
        names,
    );
    cfg.poll = PollMode::Block;
    cfg.engine = EngineKind::Match;
    cfg.shard.orders_max = 1 << 18;
    cfg.tls = tls.map(|(cert, key)| load_server_config(cert, key).expect("the pair loads"));
    Server::start(cfg).expect("turbo-dex starts")
}

fn dex_trader(addr: SocketAddr, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dex-trader"))
        .args([
            "--server",
            &addr.to_string(),
            "--quiet",
            "--warmup",
            "100ms",
            "--connect-timeout",
            "10s",
        ])
        .args(args)
        .output()
        .expect("run dex-trader")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn base() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

#[test]
fn a_verified_run_over_tls() {
    let certs = certs::make(base(), "trader-tls-run");
    let server = tls_server(&certs.server_cert, &certs.server_key);
    let addr = server.local_addr();
    let ca = certs.ca.to_str().unwrap();
    for extra in [&[][..], &["--spin", "1ms"][..]] {
        let mut args = vec![
            "--tls",
            "--tls-ca",
            ca,
            "--mix",
            "match",
            "--connections",
            "2",
            "--batch",
            "100",
            "--duration",
            "500ms",
            "--verify",
        ];
        args.extend_from_slice(extra);
        let out = dex_trader(addr, &args);
        assert!(
            out.status.success(),
            "dex-trader --tls {extra:?} fails: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    // A name the certificate carries, given explicitly.
    let out = dex_trader(
        addr,
        &[
            "--tls",
            "--tls-ca",
            ca,
            "--tls-server-name",
            "localhost",
            "--duration",
            "200ms",
            "--connections",
            "2",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    server.stop();
}

fn refused(cert: &Path, key: &Path, ca: &Path, extra: &[&str], why: &str) {
    let server = tls_server(cert, key);
    let mut args = vec![
        "--tls",
        "--tls-ca",
        ca.to_str().unwrap(),
        "--duration",
        "200ms",
    ];
    args.extend_from_slice(extra);
    let out = dex_trader(server.local_addr(), &args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(why), "expected {why:?} in: {err}");
    server.stop();
}

#[test]
fn an_expired_certificate_is_refused() {
    let certs = certs::make(base(), "trader-tls-expired");
    refused(
        &certs.expired_cert,
        &certs.expired_key,
        &certs.ca,
        &[],
        "the server's certificate has expired",
    );
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let certs = certs::make(base(), "trader-tls-foreign");
    refused(
        &certs.foreign_cert,
        &certs.foreign_key,
        &certs.ca,
        &[],
        "not signed by a CA in --tls-ca",
    );
}

#[test]
fn a_certificate_for_another_name_is_refused() {
    let certs = certs::make(base(), "trader-tls-name");
    refused(
        &certs.server_cert,
        &certs.server_key,
        &certs.ca,
        &["--tls-server-name", "exchange.example.com"],
        "not valid for exchange.example.com",
    );
}

#[test]
fn dex_trader_without_tls_against_a_tls_server_says_so() {
    let certs = certs::make(base(), "trader-tls-plain");
    let server = tls_server(&certs.server_cert, &certs.server_key);
    let addr = server.local_addr();
    let out = dex_trader(addr, &["--duration", "200ms"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--tls"), "the error points at --tls: {err}");
    // The server goes on serving TLS clients.
    let ca = certs.ca.to_str().unwrap();
    let out = dex_trader(addr, &["--tls", "--tls-ca", ca, "--duration", "200ms"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    server.stop();
}

#[test]
fn dex_trader_with_tls_against_a_plain_server_says_so() {
    let certs = certs::make(base(), "trader-tls-to-plain");
    let server = server(None);
    let ca = certs.ca.to_str().unwrap();
    let out = dex_trader(
        server.local_addr(),
        &["--tls", "--tls-ca", ca, "--duration", "200ms"],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is it listening with TLS"), "{err}");
    server.stop();
}

#[test]
fn tls_with_an_unreadable_ca_is_a_usage_error() {
    let out = dex_trader(
        "127.0.0.1:9".parse().unwrap(),
        &["--tls", "--tls-ca", "/nonexistent/ca.pem"],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--tls-ca") && err.contains("cannot read"),
        "{err}"
    );
}
