//! The turbo-dex binary: start-up errors, the ready line, signals.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The bare binary: these tests check its own argument handling.
fn turbo_dex() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_turbo-dex"));
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// The binary as the tests run a server: [`testkit::turbo_dex`] on the first test CPU.
fn server() -> Command {
    let mut c = testkit::turbo_dex(env!("CARGO_BIN_EXE_turbo-dex"), &test_cpus()[0].to_string());
    c.stderr(Stdio::piped());
    c
}

/// Runs turbo-dex expecting it to refuse to start; returns (status, stderr).
fn refuses(args: &[&str]) -> (i32, String) {
    let out = turbo_dex().args(args).output().expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts turbo-dex and waits for its `listening on` line.
fn spawn(command: &mut Command) -> (Child, std::net::SocketAddr) {
    let mut child = command.spawn().expect("spawns");
    let (addr, lines) = ready_addr(&mut child);
    // Keep reading stdout in the background so the final stats can be collected.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let _ = tx.send(rest.join("\n"));
    });
    STDOUT_RX.with(|r| *r.borrow_mut() = Some(rx));
    (child, addr)
}

thread_local! {
    static STDOUT_RX: std::cell::RefCell<Option<std::sync::mpsc::Receiver<String>>> = const { std::cell::RefCell::new(None) };
}

fn rest_of_stdout() -> String {
    STDOUT_RX.with(|r| {
        r.borrow_mut()
            .take()
            .and_then(|rx| rx.recv_timeout(Duration::from_secs(10)).ok())
            .unwrap_or_default()
    })
}

fn wait_exit(child: &mut Child) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "turbo-dex did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn one_line_error(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "exactly one error line: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    lines[0]
}

#[test]
fn a_core_that_does_not_exist_is_a_one_line_error() {
    let (code, err) = refuses(&["--listen", "127.0.0.1:0", "--cores", "4000", "--quiet"]);
    assert_eq!(code, 2);
    let line = one_line_error(&err);
    assert!(line.contains("4000"), "{line}");
}

#[test]
fn fewer_shards_than_cores_is_refused() {
    let cpus = test_cpus();
    if cpus.len() < 2 {
        testkit::skip!("needs two CPUs, this process may use {cpus:?}");
        return;
    }
    let list = format!("{},{}", cpus[0], cpus[1]);
    let (code, err) = refuses(&[
        "--listen",
        "127.0.0.1:0",
        "--cores",
        &list,
        "--shards",
        "1",
        "--quiet",
    ]);
    assert_eq!(code, 2);
    assert!(one_line_error(&err).contains("--shards 1"), "{err}");
}

#[test]
fn bad_address_and_bad_flags_are_usage_errors() {
    let (code, err) = refuses(&["--listen", "not-an-address"]);
    assert_eq!(code, 2);
    assert!(err.contains("--listen"), "{err}");
    let (code, err) = refuses(&["--poll", "sometimes"]);
    assert_eq!(code, 2);
    assert!(err.contains("sometimes"), "{err}");
    let (code, err) = refuses(&["--listen", "127.0.0.1:0", "--symbols", "A,A", "--quiet"]);
    assert_eq!(code, 2);
    assert!(one_line_error(&err).contains("twice"), "{err}");
}

#[test]
fn a_port_in_use_is_a_one_line_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let cpu = test_cpus()[0].to_string();
    let (code, err) = refuses(&[
        "--listen",
        &addr,
        "--cores",
        &cpu,
        "--quiet",
        "--journal",
        "none",
    ]);
    assert_eq!(code, 2);
    let line = one_line_error(&err);
    assert!(line.contains("already in use"), "{line}");
    assert!(line.contains(&addr), "{line}");
}

#[test]
fn replicas_need_a_cluster_and_stay_in_range() {
    let (code, err) = refuses(&["--listen", "127.0.0.1:0", "--replicas", "2", "--quiet"]);
    assert_eq!(code, 2);
    assert!(
        one_line_error(&err).contains("--replicas 2 needs --cluster"),
        "{err}"
    );
    for bad in ["0", "6", "three"] {
        let (code, err) = refuses(&["--listen", "127.0.0.1:0", "--replicas", bad]);
        assert_eq!(code, 2, "--replicas {bad}");
        assert!(err.contains("--replicas"), "{err}");
    }
    // --lease-ms needs --cluster and stays within 500..=60000.
    let (code, err) = refuses(&["--listen", "127.0.0.1:0", "--lease-ms", "1000"]);
    assert_eq!(code, 2);
    assert!(err.contains("--cluster"), "{err}");
    for bad in ["499", "60001", "soon"] {
        let (code, err) = refuses(&[
            "--listen",
            "127.0.0.1:0",
            "--cluster",
            "nats://127.0.0.1:1",
            "--lease-ms",
            bad,
        ]);
        assert_eq!(code, 2, "--lease-ms {bad}");
        assert!(err.contains("--lease-ms"), "{err}");
    }
    // cluster move says what it needs.
    let out = turbo_dex()
        .args(["cluster", "move", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--replicas 2 or more"), "{help}");
    let (code, err) = refuses(&["cluster", "move", "0"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn help_explains_every_option() {
    let out = turbo_dex().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--cores",
        "--shards",
        "--symbols",
        "--batch",
        "--poll",
        "--max-connections",
        "--input-memory-per-core",
        "--engine",
        "--mtu",
        "--quiet",
        "--replicas",
        "--lease-ms",
        "check-host",
    ] {
        assert!(help.contains(flag), "--help mentions {flag}");
    }
}

#[test]
fn sigterm_stops_gracefully_with_final_stats() {
    let (mut child, addr) = spawn(server().args(["--symbols", "4", "--journal", "none"]));
    let mut a = Client::login(addr, 1, 0);
    let mut b = Client::login(addr, 2, 0);
    a.send(&[sell(1, 0, 10, 5)]);
    a.wait_for(|m| matches!(m, Msg::Accepted(_)), "accept");
    b.send(&[buy(1, 0, 10, 5)]);
    b.wait_for(|m| matches!(m, Msg::Fill(_)), "fill");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    // Clients are told why the connection closes.
    let msgs = a.wait_closed();
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Msg::Error(e) if e.code.get() == wire::SessionErrorCode::ServerShutdown.to_wire())),
        "{msgs:?}"
    );
    assert_eq!(wait_exit(&mut child), 0);
    let stdout = rest_of_stdout();
    assert!(stdout.contains("turbo-dex final stats"), "{stdout}");
    assert!(stdout.contains("trades            1"), "{stdout}");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("received SIGTERM"), "{err}");
}

#[test]
fn sigint_with_no_clients_exits_zero() {
    let cpu = test_cpus()[0].to_string();
    // Not `server()`: this one polls adaptively.
    let (mut child, _addr) = spawn(turbo_dex().args([
        "--listen",
        "127.0.0.1:0",
        "--cores",
        &cpu,
        "--poll",
        "adaptive",
        "--quiet",
        "--journal",
        "none",
        "--admin",
        "none",
    ]));
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(wait_exit(&mut child), 0);
    assert!(rest_of_stdout().contains("final stats"));
}
