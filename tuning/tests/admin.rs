//! The admin endpoint over real sockets: answers, limits, timeouts, stop;
//! and the Prometheus encoder's output checked by `promtool`.
//!
//! Clients are raw `std::net::TcpStream`s writing HTTP by hand, so that a
//! test can send exactly the malformed, oversized or stalled requests that
//! a client library would refuse to produce.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tuning::admin::prom::Encoder;
use tuning::admin::{AdminConfig, AdminServer, Handler, Response};

struct Routes;

impl Handler for Routes {
    fn get(&self, path: &str) -> Option<Response> {
        match path {
            "/health" => Some(Response::text(200, "ok\n".to_string())),
            "/ready" => Some(Response::text(503, "starting\n".to_string())),
            "/stats" => Some(Response::json(200, "{\"orders\":42}".to_string())),
            "/metrics" => {
                let mut e = Encoder::new();
                e.counter("dex_orders_total", "Orders.", &[(&[], 42.0)]);
                Some(Response::prometheus(e.finish()))
            }
            _ => None,
        }
    }
}

/// Longest any test waits for a reply that should come at once.
const PROMPT: Duration = Duration::from_secs(5);

fn config() -> AdminConfig {
    AdminConfig::new("127.0.0.1:0".parse().unwrap(), "test-admin")
}

fn start(cfg: AdminConfig) -> AdminServer {
    AdminServer::start(cfg, Arc::new(Routes)).expect("start admin server")
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    stream
}

/// Reads until the server closes; panics when it stays open past the read
/// timeout. A reset counts as a close.
fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "server did not close: {e}; got so far: {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One request with `Connection: close`; returns the whole reply.
fn request(addr: SocketAddr, method: &str, path: &str) -> String {
    let mut stream = connect(addr);
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    read_to_close(&mut stream)
}

/// Reads one response with a `Content-Length` from a keep-alive connection.
fn read_response(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("read response");
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length: usize = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if out.len() >= head_end + 4 + length {
                return text.into_owned();
            }
        }
    }
}

fn status(reply: &str) -> u16 {
    reply
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 response: {reply:?}"))
}

fn header<'a>(reply: &'a str, name: &str) -> Option<&'a str> {
    let head = &reply[..reply.find("\r\n\r\n")?];
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

fn body(reply: &str) -> &str {
    &reply[reply.find("\r\n\r\n").expect("head end") + 4..]
}

#[test]
fn get_known_path_is_200_with_body() {
    let server = start(config());
    let reply = request(server.local_addr(), "GET", "/health");
    assert_eq!(status(&reply), 200, "{reply}");
    assert_eq!(
        header(&reply, "content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(body(&reply), "ok\n");

    let reply = request(server.local_addr(), "GET", "/stats?verbose=1");
    assert_eq!(status(&reply), 200, "{reply}");
    assert_eq!(header(&reply, "content-type"), Some("application/json"));
    assert_eq!(body(&reply), "{\"orders\":42}");

    let reply = request(server.local_addr(), "GET", "/metrics");
    assert_eq!(
        header(&reply, "content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(body(&reply).contains("dex_orders_total 42\n"), "{reply}");

    let reply = request(server.local_addr(), "GET", "/ready");
    assert_eq!(status(&reply), 503, "{reply}");
    server.stop();
}

#[test]
fn head_has_headers_and_no_body() {
    let server = start(config());
    let reply = request(server.local_addr(), "HEAD", "/stats");
    assert_eq!(status(&reply), 200, "{reply}");
    assert_eq!(header(&reply, "content-length"), Some("13"));
    assert_eq!(body(&reply), "");
}

#[test]
fn unknown_path_is_404() {
    let server = start(config());
    let reply = request(server.local_addr(), "GET", "/nope");
    assert_eq!(status(&reply), 404, "{reply}");
    assert_eq!(body(&reply), "not found\n");
}

#[test]
fn post_is_405_with_allow() {
    let server = start(config());
    let mut stream = connect(server.local_addr());
    stream
        .write_all(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        .unwrap();
    let reply = read_to_close(&mut stream);
    assert_eq!(status(&reply), 405, "{reply}");
    assert_eq!(header(&reply, "allow"), Some("GET, HEAD"));
}

#[test]
fn keep_alive_serves_several_requests() {
    let server = start(config());
    let mut stream = connect(server.local_addr());
    for _ in 0..3 {
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let reply = read_response(&mut stream);
        assert_eq!(status(&reply), 200, "{reply}");
        assert_eq!(body(&reply), "ok\n");
    }
}

#[test]
fn malformed_request_is_400_and_closed() {
    let server = start(config());
    let mut stream = connect(server.local_addr());
    stream.write_all(b"GARBAGE\r\n\r\n").unwrap();
    let reply = read_to_close(&mut stream);
    // hyper answers 400 itself before closing.
    assert_eq!(status(&reply), 400, "{reply}");
}

#[test]
fn oversized_head_is_431_and_closed() {
    let mut cfg = config();
    cfg.max_request_bytes = 1024;
    let server = start(cfg);
    let mut stream = connect(server.local_addr());
    let filler = "a".repeat(2048);
    // The server may close before it has read all of this; that is fine.
    let _ = write!(
        stream,
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\n\r\n"
    );
    let reply = read_to_close(&mut stream);
    assert_eq!(status(&reply), 431, "{reply}");

    // A head just under the limit is still served.
    let mut stream = connect(server.local_addr());
    let filler = "a".repeat(900);
    write!(
        stream,
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    assert_eq!(status(&read_to_close(&mut stream)), 200);
}

#[test]
fn stalled_half_head_is_closed_after_header_timeout() {
    let header_timeout = Duration::from_millis(300);
    let mut cfg = config();
    cfg.header_timeout = header_timeout;
    let server = start(cfg);

    let mut half = connect(server.local_addr());
    let mut silent = connect(server.local_addr());
    let started = Instant::now();
    half.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let reply = read_to_close(&mut half);
    let waited = started.elapsed();
    assert!(
        waited >= header_timeout - Duration::from_millis(50),
        "closed after {waited:?}, before the {header_timeout:?} timeout"
    );
    assert!(waited < PROMPT, "closed only after {waited:?}");
    // hyper closes without an answer (or with 408 in some versions).
    assert!(reply.is_empty() || status(&reply) == 408, "{reply:?}");

    // A connection that sends nothing at all is closed the same way.
    read_to_close(&mut silent);
    assert!(started.elapsed() < PROMPT);

    // And the server still answers others.
    assert_eq!(status(&request(server.local_addr(), "GET", "/health")), 200);
}

#[test]
fn connections_over_the_limit_are_refused_while_the_first_work() {
    let mut cfg = config();
    cfg.max_connections = 2;
    cfg.header_timeout = Duration::from_secs(30);
    let server = start(cfg);
    let addr = server.local_addr();

    let mut first = connect(addr);
    let mut second = connect(addr);
    // Make sure both are accepted (served) before the extra ones arrive.
    for stream in [&mut first, &mut second] {
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(status(&read_response(stream)), 200);
    }

    for _ in 0..3 {
        let mut extra = connect(addr);
        let started = Instant::now();
        // Closed at once, without an answer (the write may already fail).
        let _ = extra.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        let reply = read_to_close(&mut extra);
        assert!(
            reply.is_empty(),
            "an extra connection was served: {reply:?}"
        );
        assert!(started.elapsed() < PROMPT);
    }

    // The first two still work.
    for stream in [&mut first, &mut second] {
        stream
            .write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(status(&read_response(stream)), 200);
    }

    // Closing one frees its slot.
    drop(first);
    let deadline = Instant::now() + PROMPT;
    loop {
        let mut stream = connect(addr);
        let _ = stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let reply = read_to_close(&mut stream);
        if !reply.is_empty() {
            assert_eq!(status(&reply), 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slot of a closed connection never freed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn stop_closes_connections_and_joins_promptly() {
    let server = start(config());
    let addr = server.local_addr();
    // An idle keep-alive connection and a stalled half head: stop must not
    // wait for either.
    let mut idle = connect(addr);
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(status(&read_response(&mut idle)), 200);
    let mut stalled = connect(addr);
    stalled.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));

    let started = Instant::now();
    server.stop();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "stop took {took:?}");

    assert_eq!(read_to_close(&mut idle), "");
    assert_eq!(read_to_close(&mut stalled), "");
    // Nothing listens any more.
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after stop"
    );
}

#[test]
fn dropping_the_server_stops_it() {
    let server = start(config());
    let addr = server.local_addr();
    drop(server);
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after drop"
    );
}

#[test]
fn address_in_use_is_a_clear_error() {
    let server = start(config());
    let addr = server.local_addr();
    let err = AdminServer::start(AdminConfig::new(addr, "test-admin-2"), Arc::new(Routes))
        .expect_err("second bind of the same address");
    assert_eq!(err.kind(), ErrorKind::AddrInUse);
    let message = err.to_string();
    assert!(message.contains(&addr.to_string()), "{message}");
    assert!(message.contains("admin endpoint"), "{message}");
}

#[test]
fn serves_on_the_named_thread() {
    struct ThreadName;
    impl Handler for ThreadName {
        fn get(&self, _path: &str) -> Option<Response> {
            let name = std::thread::current().name().unwrap_or("").to_string();
            Some(Response::text(200, name))
        }
    }
    let server = AdminServer::start(config(), Arc::new(ThreadName)).unwrap();
    let reply = request(server.local_addr(), "GET", "/");
    assert_eq!(body(&reply), "test-admin");
}

/// An exposition with every family type, labels and escaping.
fn every_family() -> String {
    let mut e = Encoder::new();
    e.counter(
        "dex_orders_total",
        "Orders accepted, by core and side.",
        &[
            (&[("core", "0"), ("side", "bid")], 12.0),
            (&[("core", "1"), ("side", "ask \"x\\y\"\nz")], 3.0),
        ],
    );
    e.gauge(
        "dex_ready",
        "1 when the engine accepts orders.",
        &[(&[], 1.0)],
    );
    e.gauge(
        "dex_book_depth_orders",
        "Resting orders.\nPer symbol.",
        &[
            (&[("symbol", "BTC-USD")], 1500.0),
            (&[("symbol", "ETH-USD")], f64::NAN),
        ],
    );
    e.histogram(
        "dex_ack_latency_seconds",
        "Order to ack latency.",
        &[("core", "0")],
        &[(0.000005, 3), (0.00001, 7), (0.0001, 9)],
        0.00042,
        10,
    );
    e.histogram(
        "dex_ack_latency_seconds",
        "Order to ack latency.",
        &[("core", "1")],
        &[(0.000005, 0)],
        0.0,
        0,
    );
    e.finish()
}

#[test]
fn promtool_accepts_every_family_type() {
    if !testkit::have("promtool") {
        testkit::skip!(
            "promtool not installed (scripts/test.sh installs the Debian package prometheus)"
        );
        return;
    }
    let exposition = every_family();
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\n--- input ---\n{exposition}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
