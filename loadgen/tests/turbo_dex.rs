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

use std::io::{BufReader, Lines};
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
    // in flight at its edges (at most --inflight, 4 batches by default).
    let reports = json_number(&path, "reports_received");
    assert!(
        (reports - sent).abs() <= 4.0 * 500.0,
        "{reports} reports for {sent} requests"
    );
    assert_eq!(json_number(&path, "unanswered"), 0.0);
    assert_eq!(json_number(&path, "errors"), 0.0);
    let _ = std::fs::remove_file(path);
}

/// `<target>/<profile>/turbo-dex`, built (or found up to date) by cargo.
fn turbo_dex_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // <target>/<profile>/deps/turbo_dex-<hash>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable under <target>/<profile>/deps");
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "-p", "engine", "--bin", "turbo-dex"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        build.arg("--release");
    }
    if let Some(target) = profile_dir.parent() {
        build.env("CARGO_TARGET_DIR", target);
    }
    let out = build.output().expect("run cargo build");
    assert!(
        out.status.success(),
        "building turbo-dex:\n{}",
        text(&out.stderr)
    );
    let binary = profile_dir.join("turbo-dex");
    assert!(binary.exists(), "no turbo-dex at {}", binary.display());
    binary
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
