//! dex-trader against the real server: the engine crate's server runtime
//! started in this process (engine is a dev-dependency), and the
//! `turbo-dex` binary itself.
//!
//! Finding the binary: `env!("CARGO_BIN_EXE_turbo-dex")` exists only in
//! the engine package's own tests. The test runs `cargo build -p engine
//! --bin turbo-dex` with the same cargo, target directory and profile as
//! itself, and takes `<target>/<profile>/turbo-dex`: a no-op when the
//! workspace's test run (`scripts/test.sh`) has built it already, a short
//! build after `cargo test -p loadgen`, and never a stale binary. Cargo
//! releases its build lock before it runs tests, so the nested build does
//! not wait on the outer one.

use std::io::{BufRead, BufReader, Lines};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use engine::server::{EngineKind, PollMode, Server, ServerConfig};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The CPU for the server: the last one this process may use (dex-trader
/// runs on the first).
fn server_cpu() -> usize {
    let allowed = tuning::allowed_cpus().expect("read the affinity mask");
    allowed.last().expect("at least one CPU")
}

fn start_server(engine: EngineKind) -> Server {
    let names = (0..16).map(|i| format!("SYM{i}")).collect();
    let mut cfg = ServerConfig::new(
        "127.0.0.1:0".parse().expect("address"),
        vec![server_cpu()],
        names,
    );
    cfg.poll = PollMode::Block;
    cfg.engine = engine;
    cfg.shard.orders_max = 1 << 18;
    Server::start(cfg).expect("turbo-dex starts")
}

fn dex_trader(addr: SocketAddr, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dex-trader"))
        .args([
            "--server",
            &addr.to_string(),
            "--quiet",
            "--warmup",
            "200ms",
        ])
        .args(args)
        .output()
        .expect("run dex-trader")
}

/// A number from the JSON report on stdout-adjacent file `path`.
fn json_number(path: &PathBuf, name: &str) -> f64 {
    let json = std::fs::read_to_string(path).expect("json report");
    let key = format!("\"{name}\": ");
    let at = json
        .find(&key)
        .unwrap_or_else(|| panic!("{name} in {json}"))
        + key.len();
    json[at..]
        .split([',', '\n'])
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} is not a number in {json}"))
}

fn json_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}.json", std::process::id()))
}

#[test]
fn verified_match_mix_against_the_matching_server() {
    let server = start_server(EngineKind::Match);
    let path = json_path("td-match");
    let out = dex_trader(
        server.local_addr(),
        &[
            "--cores",
            "0",
            "--mix",
            "match",
            "--connections",
            "2",
            "--batch",
            "100",
            "--duration",
            "1s",
            "--verify",
            "--json",
            path.to_str().unwrap(),
        ],
    );
    let fin = server.stop();
    testkit::assert_success(&out);
    assert!(json_number(&path, "trades") > 0.0);
    assert!(text(&out.stdout).contains("verify       ok"));
    assert!(fin.total.trades > 0, "the server saw the trades too");
    let _ = std::fs::remove_file(path);
}

#[test]
fn verified_realistic_open_loop_against_the_matching_server() {
    let server = start_server(EngineKind::Match);
    let out = dex_trader(
        server.local_addr(),
        &[
            "--cores",
            "0",
            "--connections",
            "2",
            "--batch",
            "10",
            "--rate",
            "50000",
            "--duration",
            "1s",
            "--verify",
        ],
    );
    server.stop();
    testkit::assert_success(&out);
    assert!(text(&out.stdout).contains("verify       ok"));
}

#[test]
fn report_against_the_null_server() {
    let server = start_server(EngineKind::Null);
    let path = json_path("td-null");
    let out = dex_trader(
        server.local_addr(),
        &[
            "--cores",
            "0",
            "--mix",
            "insert",
            "--batch",
            "500",
            "--duration",
            "1s",
            "--json",
            path.to_str().unwrap(),
        ],
    );
    server.stop();
    testkit::assert_success(&out);
    let sent = json_number(&path, "orders_sent");
    assert!(sent > 0.0);
    // One answer per request: the window's counts differ only by what was
    // in flight at its edges: at most --inflight (4 batches by default) on
    // each of the worker's connections (2 by default).
    let reports = json_number(&path, "reports_received");
    assert!(
        (reports - sent).abs() <= 2.0 * 4.0 * 500.0,
        "{reports} reports for {sent} requests"
    );
    assert_eq!(json_number(&path, "unanswered"), 0.0);
    assert_eq!(json_number(&path, "errors"), 0.0);
    let _ = std::fs::remove_file(path);
}

/// `<target>/<profile>/turbo-dex`, built (or found up to date) by cargo.
fn turbo_dex_binary() -> PathBuf {
    testkit::cargo_built("engine", "turbo-dex")
}

/// The binary, started as documented; stopped (SIGTERM) on drop.
struct TurboDex {
    child: Child,
    addr: SocketAddr,
    /// Its journal: a fresh directory per server, so no run recovers the
    /// books of an earlier one; removed on drop.
    _journal: testkit::TempDir,
    /// Kept open: turbo-dex prints its final stats here after SIGTERM.
    stdout: Lines<BufReader<ChildStdout>>,
}

impl TurboDex {
    fn start(engine: &str) -> TurboDex {
        let cpu = server_cpu().to_string();
        let journal = testkit::TempDir::new(&format!("journal-{engine}"));
        let mut child = testkit::turbo_dex(turbo_dex_binary(), &cpu)
            .args(["--symbols", "16", "--engine", engine, "--quiet"])
            .arg("--journal")
            .arg(journal.join("journal"))
            .current_dir(env!("CARGO_TARGET_TMPDIR"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start turbo-dex");
        let (addr, stdout) = testkit::ready_addr(&mut child);
        TurboDex {
            child,
            addr,
            _journal: journal,
            stdout,
        }
    }

    /// SIGTERM, then wait (bounded) for a clean exit; returns the exit
    /// status and what it printed after the listening line.
    fn stop(mut self) -> (Option<i32>, String) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let rest = self
            .stdout
            .by_ref()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
            .join("\n");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (status.code(), rest);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (None, rest)
    }
}

impl Drop for TurboDex {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn the_turbo_dex_binary_trades_and_verifies() {
    let server = TurboDex::start("match");
    let out = dex_trader(
        server.addr,
        &[
            "--cores",
            "0",
            "--mix",
            "match",
            "--connections",
            "2",
            "--batch",
            "200",
            "--duration",
            "1s",
            "--verify",
        ],
    );
    let (code, final_stats) = server.stop();
    testkit::assert_success(&out);
    assert!(text(&out.stdout).contains("verify       ok"));
    assert_eq!(
        code,
        Some(0),
        "turbo-dex stops cleanly on SIGTERM:\n{final_stats}"
    );
}

/// `GET path` over a fresh connection: (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to the admin endpoint {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {response:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

/// The value of an unlabelled sample in a Prometheus text body.
fn sample(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{body}"))
}

#[test]
fn admin_metrics_follow_a_run_against_the_turbo_dex_binary() {
    let server = TurboDex::start("null");
    let path = json_path("td-admin");
    let mut trader = Command::new(env!("CARGO_BIN_EXE_dex-trader"))
        .args(["--server", &server.addr.to_string(), "--quiet"])
        .args(["--cores", "0", "--mix", "insert", "--batch", "100"])
        // No warmup: the metrics (the whole process) and the report (the
        // measured window) then count the same requests.
        .args([
            "--warmup",
            "0s",
            "--duration",
            "2s",
            "--admin",
            "127.0.0.1:0",
        ])
        .arg("--json")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dex-trader");
    let mut stdout = BufReader::new(trader.stdout.take().expect("piped")).lines();
    let first = stdout
        .next()
        .expect("a first line")
        .expect("utf-8 on stdout");
    let admin: SocketAddr = first
        .strip_prefix("dex-trader admin listening on ")
        .unwrap_or_else(|| panic!("first line {first:?}"))
        .parse()
        .expect("an address");
    assert_eq!(http_get(admin, "/health"), (200, "ok\n".to_string()));
    assert_eq!(http_get(admin, "/nothing-here").0, 404);

    // Mid-run: orders counted already, and the latency histogram filled
    // (the main thread folds it in once a second).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mid = loop {
        let (status, body) = http_get(admin, "/metrics");
        assert_eq!(status, 200, "{body}");
        if sample(&body, "dex_trader_orders_sent_total") > 0.0
            && sample(&body, "dex_trader_latency_seconds_count") > 0.0
        {
            break body;
        }
        assert!(Instant::now() < deadline, "nothing counted by now:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mid_sent = sample(&mid, "dex_trader_orders_sent_total");
    for line in [
        "# TYPE dex_trader_orders_sent_total counter",
        "# TYPE dex_trader_reports_received_total counter",
        "# TYPE dex_trader_rejects_total counter",
        "# TYPE dex_trader_trades_total counter",
        "# TYPE dex_trader_errors_total counter",
        "# TYPE dex_trader_latency_seconds histogram",
        "# TYPE dex_trader_build_info gauge",
        "dex_trader_errors_total 0",
        "dex_trader_rejects_total{reason=\"book full\"} 0",
        "dex_trader_latency_seconds_bucket{le=\"0.00001\"}",
        "dex_trader_latency_seconds_bucket{le=\"1\"}",
        "dex_trader_latency_seconds_bucket{le=\"+Inf\"}",
    ] {
        assert!(
            mid.lines().any(|l| l.starts_with(line)),
            "no {line} in\n{mid}"
        );
    }
    assert!(
        sample(&mid, "dex_trader_reports_received_total") > 0.0,
        "{mid}"
    );
    assert!(
        mid.contains(&format!(
            "dex_trader_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{mid}"
    );
    if testkit::have("promtool") {
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start promtool");
        {
            use std::io::Write;
            let mut stdin = check.stdin.take().expect("piped");
            stdin.write_all(mid.as_bytes()).expect("feed promtool");
        }
        let checked = check.wait_with_output().expect("promtool ends");
        assert!(
            checked.status.success(),
            "promtool check metrics:\n{}{}\n{mid}",
            text(&checked.stdout),
            text(&checked.stderr)
        );
    } else {
        testkit::skip!("promtool is not on PATH: /metrics not checked with it");
    }

    let rest: Vec<String> = stdout.map_while(Result::ok).collect();
    let out = trader.wait_with_output().expect("dex-trader ends");
    let (code, final_stats) = server.stop();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        rest.join("\n"),
        text(&out.stderr)
    );
    assert_eq!(code, Some(0), "{final_stats}");
    let final_sent = json_number(&path, "orders_sent");
    assert!(
        mid_sent <= final_sent,
        "scraped {mid_sent} requests mid-run, the report counts {final_sent}"
    );
    // The endpoint lives as long as the run.
    assert!(
        std::net::TcpStream::connect(admin).is_err(),
        "{admin} still open"
    );
    let _ = std::fs::remove_file(path);
}

/// A run with the default flags (realistic mix, two sessions under two
/// accounts on one core) trades against the matching server, and warns
/// about nothing.
#[test]
fn default_flags_trade_against_the_turbo_dex_binary() {
    let server = TurboDex::start("match");
    let path = json_path("td-default");
    let out = dex_trader(
        server.addr,
        &[
            "--cores",
            "0",
            "--duration",
            "1s",
            "--json",
            path.to_str().unwrap(),
        ],
    );
    server.stop();
    testkit::assert_success(&out);
    let json = std::fs::read_to_string(&path).expect("json report");
    assert_eq!(json_number(&path, "connections"), 2.0, "{json}");
    assert!(json_number(&path, "trades") > 0.0, "{json}");
    assert!(json_number(&path, "crossing_orders") > 0.0, "{json}");
    assert!(json.contains("\"warnings\": []"), "{json}");
    assert!(
        !text(&out.stdout).contains("WARNING"),
        "{}",
        text(&out.stdout)
    );
    let _ = std::fs::remove_file(path);
}

/// `--connections 1` on one core is one account: self-trade prevention
/// cancels what crosses, and the run says so before and after.
#[test]
fn a_single_session_run_warns() {
    let server = TurboDex::start("match");
    let path = json_path("td-single");
    let out = dex_trader(
        server.addr,
        &[
            "--cores",
            "0",
            "--connections",
            "1",
            "--mix",
            "match",
            "--batch",
            "100",
            "--duration",
            "1s",
            "--json",
            path.to_str().unwrap(),
        ],
    );
    server.stop();
    testkit::assert_success(&out);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let json = std::fs::read_to_string(&path).expect("json report");
    assert!(json_number(&path, "self_trade_cancels") > 0.0, "{json}");
    assert!(
        2.0 * json_number(&path, "crossing_self_trade_cancels")
            > json_number(&path, "crossing_orders"),
        "{json}"
    );
    assert!(
        stdout.contains("WARNING      all 1 connection trade under one account"),
        "{stdout}"
    );
    assert!(
        stdout.contains("were canceled by self-trade prevention"),
        "{stdout}"
    );
    assert!(stderr.contains("one account"), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert!(
        v["warnings"].as_array().is_some_and(|w| w.len() >= 2),
        "{json}"
    );
    let _ = std::fs::remove_file(path);
}

/// `--spin` sends and receives from one polling task per connection:
/// closed and open loop trade, verify clean, and the run ends on time.
#[test]
fn spinning_connections_trade_and_verify() {
    for extra in [
        &["--batch", "100"][..],
        &["--batch", "1", "--rate", "20000"][..],
    ] {
        let server = start_server(EngineKind::Match);
        let path = json_path("td-spin");
        let mut args = vec![
            "--cores",
            "0",
            "--mix",
            "match",
            "--spin",
            "50ms",
            "--duration",
            "1s",
            "--verify",
            "--json",
            path.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let started = Instant::now();
        let out = dex_trader(server.local_addr(), &args);
        server.stop();
        testkit::assert_success(&out);
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{extra:?}: the run took {:?}",
            started.elapsed()
        );
        assert!(text(&out.stdout).contains("verify       ok"), "{extra:?}");
        assert!(json_number(&path, "trades") > 0.0, "{extra:?}");
        assert_eq!(json_number(&path, "unanswered"), 0.0, "{extra:?}");
        let _ = std::fs::remove_file(path);
    }
}

/// A server whose accounts are `(id, password)`, argon2id hashed.
fn server_with_accounts(accounts: &[(u64, &str)]) -> Server {
    let text_file = accounts
        .iter()
        .map(|(id, pw)| {
            let phc =
                engine::accounts::hash_password(pw.as_bytes(), &[*id as u8; 16]).expect("hash");
            format!("{id} trader{id} {phc}\n")
        })
        .collect::<String>();
    let accounts = engine::accounts::Accounts::parse(&text_file).expect("accounts");
    let names = (0..4).map(|i| format!("SYM{i}")).collect();
    let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), vec![server_cpu()], names);
    cfg.poll = PollMode::Block;
    cfg.accounts = Some(std::sync::Arc::new(accounts));
    Server::start(cfg).expect("turbo-dex starts")
}

/// A short verified matching run over two connections that log on with
/// `login` (the account and password flags).
fn verified_run(server: &Server, login: &[&str]) -> Output {
    let mut args = vec![
        "--cores",
        "0",
        "--mix",
        "match",
        "--connections",
        "2",
        "--batch",
        "50",
        "--duration",
        "500ms",
        "--verify",
    ];
    args.extend_from_slice(login);
    dex_trader(server.local_addr(), &args)
}

/// A file in the test's temp dir with `body`, removed on drop.
struct TestFile(PathBuf);

impl TestFile {
    fn new(name: &str, body: &str) -> TestFile {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-{}", std::process::id()));
        std::fs::write(&path, body).unwrap();
        TestFile(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TestFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `--logins FILE`: each connection logs on with its own account and
/// password; a wrong password in the file refuses the run.
#[test]
fn a_logins_file_gives_each_connection_its_own_account_and_password() {
    let server = server_with_accounts(&[(1, "first-pw"), (2, "second-pw")]);
    let good = TestFile::new("logins", "# two traders\n1 first-pw\n2 second-pw\n");
    let bad = TestFile::new("logins-bad", "1 first-pw\n2 first-pw\n");
    let out = verified_run(&server, &["--logins", good.arg()]);
    testkit::assert_success(&out);
    assert!(
        text(&out.stdout).contains("verify       ok"),
        "{}",
        text(&out.stdout)
    );
    let out = verified_run(&server, &["--logins", bad.arg()]);
    assert!(
        !out.status.success(),
        "the second connection's password is wrong"
    );
    let fin = server.stop();
    assert!(fin.total.trades > 0, "two accounts trade with each other");
}

#[test]
fn a_password_file_logs_on_to_a_server_with_accounts() {
    let server = server_with_accounts(&[(1, "trader-pw"), (2, "trader-pw")]);
    let good = TestFile::new("password", "trader-pw\n");
    let bad = TestFile::new("password-bad", "wrong\n");
    let login = |file: &TestFile| {
        verified_run(
            &server,
            &[
                "--account",
                "1",
                "--accounts",
                "2",
                "--password-file",
                file.arg(),
            ],
        )
    };
    let out = login(&good);
    testkit::assert_success(&out);
    assert!(
        text(&out.stdout).contains("verify       ok"),
        "{}",
        text(&out.stdout)
    );
    let out = login(&bad);
    assert!(!out.status.success());
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        all.contains("authentication failed")
            || all.contains("AuthenticationFailed")
            || all.contains("refused"),
        "{all}"
    );
    let fin = server.stop();
    assert!(fin.total.trades > 0);
}
