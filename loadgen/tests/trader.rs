//! dex-trader (the binary) against the stand-in server on 127.0.0.1: the
//! report is complete, trades happen, `--verify` passes on a correct server
//! and fails on each kind of broken answer, and every failure mode exits
//! with one clear line and the documented status.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{EngineKind, Fault, ServerOptions, TestServer, unused_port};

fn dex_trader(server: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dex-trader"))
        .args([
            "--server", server, "--cores", "0", "--quiet", "--warmup", "200ms",
        ])
        .args(args)
        .output()
        .expect("run dex-trader")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    dir.join(format!("{name}-{}.json", std::process::id()))
}

/// The value of a numeric (or null/bool) top-level field of the report.
fn field(json: &str, name: &str) -> String {
    let key = format!("\"{name}\": ");
    let at = json
        .find(&key)
        .unwrap_or_else(|| panic!("no field {name} in\n{json}"))
        + key.len();
    json[at..]
        .split([',', '\n'])
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

fn number(json: &str, name: &str) -> f64 {
    let v = field(json, name);
    v.parse()
        .unwrap_or_else(|_| panic!("{name} = {v} is not a number"))
}

#[test]
fn report_against_the_null_engine_is_complete() {
    let server = TestServer::start(ServerOptions {
        engine: EngineKind::Null,
        ..ServerOptions::default()
    });
    let path = json_path("null");
    let out = dex_trader(
        &server.address(),
        &[
            "--duration",
            "1s",
            "--batch",
            "100",
            "--connections",
            "2",
            "--json",
            path.to_str().unwrap(),
        ],
    );
    testkit::assert_success(&out);
    let json = std::fs::read_to_string(&path).expect("json written");
    for name in [
        "orders_sent",
        "orders_per_sec",
        "reports_received",
        "trades",
        "rejects",
        "errors",
        "duration_secs",
        "batch",
        "connections",
    ] {
        assert!(number(&json, name) >= 0.0, "{name}");
    }
    assert!(number(&json, "orders_sent") > 0.0);
    assert!(number(&json, "reports_received") > 0.0);
    assert_eq!(number(&json, "batch"), 100.0);
    assert_eq!(number(&json, "connections"), 2.0);
    assert_eq!(number(&json, "errors"), 0.0);
    assert!((number(&json, "duration_secs") - 1.0).abs() < 1e-9);
    let latency = json
        .lines()
        .find(|l| l.contains("\"latency_us\": {"))
        .unwrap_or_else(|| panic!("no latency_us in\n{json}"));
    for p in ["p50", "p90", "p99", "p999", "p9999", "max"] {
        let key = format!("\"{p}\": ");
        let at = latency
            .find(&key)
            .unwrap_or_else(|| panic!("{p} missing in {json}"))
            + key.len();
        let value: f64 = latency[at..]
            .split([',', '}'])
            .next()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{p} is not a number in {latency}"));
        assert!(value > 0.0, "{p} = {value}");
    }
    assert_eq!(field(&json, "verify_ok"), "null");
    let summary = text(&out.stdout);
    for want in [
        "orders sent",
        "reports",
        "trades",
        "rejects",
        "errors",
        "p50",
        "p99.99",
        "max",
    ] {
        assert!(summary.contains(want), "summary lacks {want}:\n{summary}");
    }
    assert_eq!(server.stats.id_violations.load(Ordering::Relaxed), 0);
    let _ = std::fs::remove_file(path);
}

fn verified_run(mix: &str, fault: Fault, extra: &[&str]) -> (Output, String) {
    let server = TestServer::start(ServerOptions {
        fault,
        ..ServerOptions::default()
    });
    let path = json_path(&format!("{mix}-{fault:?}"));
    let mut args = vec![
        "--duration",
        "1s",
        "--batch",
        "50",
        "--connections",
        "2",
        "--mix",
        mix,
        "--verify",
        "--drain",
        "3s",
        "--json",
        path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = dex_trader(&server.address(), &args);
    let json = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(path);
    assert_eq!(server.stats.id_violations.load(Ordering::Relaxed), 0);
    (out, json)
}

#[test]
fn match_mix_trades_and_verifies() {
    let (out, json) = verified_run("match", Fault::None, &[]);
    testkit::assert_success(&out);
    assert!(number(&json, "trades") > 0.0, "no trades:\n{json}");
    assert_eq!(field(&json, "verify_ok"), "true");
    assert!(number(&json, "trades_paired") > 0.0);
    assert!(text(&out.stdout).contains("verify       ok"));
}

#[test]
fn realistic_mix_trades_and_verifies() {
    let (out, json) = verified_run("realistic", Fault::None, &[]);
    testkit::assert_success(&out);
    assert!(
        number(&json, "replaces") > number(&json, "new_orders"),
        "{json}"
    );
    assert!(number(&json, "trades") > 0.0, "no trades:\n{json}");
    assert_eq!(field(&json, "verify_ok"), "true");
}

#[test]
fn insert_mix_rests_and_verifies_in_open_loop() {
    let (out, json) = verified_run("insert", Fault::None, &["--rate", "20000"]);
    testkit::assert_success(&out);
    assert_eq!(field(&json, "verify_ok"), "true");
    // Open loop never sends ahead of the schedule: by the end of the window
    // at most 20,000/s times (200 ms warmup + 1 s) are due, and the window
    // holds at most that many (more than 20,000 only if the sender caught
    // up on warmup orders that fell behind on a busy machine).
    let sent = number(&json, "orders_sent");
    assert!(sent > 0.0 && sent <= 24_000.0, "{sent}");
    assert!(number(&json, "cancels") > 0.0);
}

/// Runs a verified match-mix run against a server with `fault`; it must
/// fail with one of the `wanted` texts in its violations (which one depends
/// on timing: a duplicate fill of an order that the first fill completed is
/// a report for an order that is no longer open).
fn assert_verify_fails(fault: Fault, wanted: &[&str]) {
    let (out, json) = verified_run("match", fault, &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{fault:?} passed verification:\n{}",
        text(&out.stdout)
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("verify       FAILED"), "{stdout}");
    assert!(
        wanted.iter().any(|w| stdout.contains(w)),
        "{fault:?}: expected one of {wanted:?} in\n{stdout}"
    );
    assert_eq!(field(&json, "verify_ok"), "false");
    assert!(text(&out.stderr).contains("--verify found"));
}

#[test]
fn verify_catches_a_duplicate_fill() {
    assert_verify_fails(
        Fault::DuplicateFill,
        &["Fill of", "Fill for order", "Fill after its terminal"],
    );
}

#[test]
fn verify_catches_a_fill_beyond_the_quantity() {
    assert_verify_fails(Fault::OverFill, &["open (trade"]);
}

#[test]
fn verify_catches_a_missing_terminal_report() {
    assert_verify_fails(Fault::DropTerminal, &["no terminal report"]);
}

#[test]
fn verify_catches_an_unpaired_trade() {
    assert_verify_fails(Fault::DropMakerFill, &["the maker fill never arrived"]);
}

#[test]
fn a_refused_hello_is_one_clear_line_and_exit_1() {
    let server = TestServer::start(ServerOptions {
        credentials: Some("sesame".into()),
        ..ServerOptions::default()
    });
    let out = dex_trader(
        &server.address(),
        &["--duration", "1s", "--credentials", "guess"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("refused the hello: authentication failed"),
        "{stderr}"
    );
    assert!(stderr.contains("--credentials"), "{stderr}");

    let ok = dex_trader(
        &server.address(),
        &["--duration", "300ms", "--credentials", "sesame"],
    );
    testkit::assert_success(&ok);
}

#[test]
fn an_unreachable_server_is_one_clear_line_and_exit_1() {
    let addr = format!("127.0.0.1:{}", unused_port());
    let out = dex_trader(&addr, &["--duration", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot connect to"), "{stderr}");
}

#[test]
fn json_log_format_writes_one_object_per_line_and_rust_log_filters() {
    let addr = format!("127.0.0.1:{}", unused_port());
    let out = dex_trader(&addr, &["--duration", "1s", "--log-format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(!stderr.is_empty(), "no log line");
    let mut errors = 0;
    for line in stderr.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line:?}"));
        assert!(v.is_object(), "{line}");
        assert!(v["timestamp"].is_string(), "{line}");
        if v["level"] == "ERROR" {
            errors += 1;
            let message = v["message"].as_str().unwrap_or_default();
            assert!(message.contains("cannot connect to"), "{line}");
        }
    }
    assert_eq!(errors, 1, "{stderr}");

    // RUST_LOG filters: `off` silences the diagnostics, not the exit status.
    let silent = Command::new(env!("CARGO_BIN_EXE_dex-trader"))
        .args([
            "--server",
            &addr,
            "--cores",
            "0",
            "--quiet",
            "--duration",
            "1s",
        ])
        .env("RUST_LOG", "off")
        .output()
        .expect("run dex-trader");
    assert_eq!(silent.status.code(), Some(1));
    assert_eq!(text(&silent.stderr), "");
}

#[test]
fn a_server_that_stops_mid_run_reports_what_was_measured_and_exits_1() {
    let server = TestServer::start(ServerOptions {
        engine: EngineKind::Null,
        close_after: Some(Duration::from_millis(800)),
        ..ServerOptions::default()
    });
    let path = json_path("stops");
    let out = dex_trader(
        &server.address(),
        &[
            "--duration",
            "5s",
            "--batch",
            "10",
            "--json",
            path.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("closed the connection") || stderr.contains("failed"),
        "{stderr}"
    );
    assert!(text(&out.stdout).contains("orders sent"));
    let json = std::fs::read_to_string(&path).expect("json written even after a failure");
    assert!(number(&json, "orders_sent") > 0.0, "{json}");
    assert!(number(&json, "duration_secs") < 5.0);
    assert!(number(&json, "errors") >= 1.0);
    let _ = std::fs::remove_file(path);
}

#[test]
fn limits_the_server_sets_are_usage_errors() {
    let server = TestServer::start(ServerOptions {
        max_frame_bytes: 8 + 32 * 100,
        symbols: 3,
        ..ServerOptions::default()
    });
    let out = dex_trader(&server.address(), &["--duration", "1s", "--batch", "200"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("room for 100 new orders"),
        "{}",
        text(&out.stderr)
    );

    let out = dex_trader(&server.address(), &["--duration", "1s", "--symbols", "4"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("lists only 3 symbols"));
}

#[test]
fn bad_flags_exit_2_and_help_explains_every_option() {
    let out = dex_trader("127.0.0.1:1", &["--duration", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--duration"));

    let help = Command::new(env!("CARGO_BIN_EXE_dex-trader"))
        .arg("--help")
        .output()
        .expect("help");
    assert!(help.status.success());
    let help = text(&help.stdout);
    for flag in [
        "--server",
        "--batch",
        "--cores",
        "--connections",
        "--duration",
        "--warmup",
        "--rate",
        "--inflight",
        "--symbols",
        "--mix",
        "--seed",
        "--account",
        "--credentials",
        "--mtu",
        "--json",
        "--verify",
        "--quiet",
        "DEX_SERVER",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn ctrl_c_ends_the_run_with_a_report() {
    let server = TestServer::start(ServerOptions {
        engine: EngineKind::Null,
        ..ServerOptions::default()
    });
    let path = json_path("interrupted");
    let child = Command::new(env!("CARGO_BIN_EXE_dex-trader"))
        .args(["--server", &server.address(), "--cores", "0", "--quiet"])
        .args(["--warmup", "100ms", "--duration", "60s", "--batch", "10"])
        .args(["--json", path.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start dex-trader");
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = child.wait_with_output().expect("dex-trader exits");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("interrupted"),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("orders sent"));
    let json = std::fs::read_to_string(&path).expect("json written");
    let measured = number(&json, "duration_secs");
    assert!(measured > 0.0 && measured < 10.0, "{measured}");
    assert!(number(&json, "orders_sent") > 0.0);
    let _ = std::fs::remove_file(path);
}
