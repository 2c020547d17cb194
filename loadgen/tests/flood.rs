//! `dex-trader flood` against the real `turbo-dex` binary started with
//! small limits: each part reports the refusals the server's documented
//! rules imply (README "Accounts, limits and security"). No timing
//! asserts: the counts follow from the rules alone.

use std::io::{BufReader, Lines, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Output, Stdio};

use testkit::TempDir;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The CPU for the server: the last one this process may use.
fn server_cpu() -> String {
    let allowed = tuning::allowed_cpus().expect("read the affinity mask");
    allowed.last().expect("at least one CPU").to_string()
}

/// turbo-dex on 127.0.0.1 with the test's flags; killed on drop.
struct TurboDex {
    child: Child,
    addr: SocketAddr,
    _stdout: Lines<BufReader<ChildStdout>>,
}

impl TurboDex {
    fn start(dir: &TempDir, flags: &[&str]) -> TurboDex {
        let binary = testkit::cargo_built("engine", "turbo-dex");
        let mut child = testkit::turbo_dex(binary, &server_cpu())
            .args(["--symbols", "4", "--engine", "match", "--quiet"])
            .arg("--journal")
            .arg(dir.join("journal"))
            .args(flags)
            .current_dir(dir.path())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turbo-dex");
        let (addr, stdout) = testkit::ready_addr(&mut child);
        TurboDex {
            child,
            addr,
            _stdout: stdout,
        }
    }
}

impl Drop for TurboDex {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn flood(addr: SocketAddr, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dex-trader"))
        .args(["flood", "--server", &addr.to_string()])
        .args(args)
        .output()
        .expect("run dex-trader flood")
}

fn json(path: &PathBuf) -> serde_json::Value {
    let body = std::fs::read_to_string(path).expect("the JSON report");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn flood_reports_the_rate_open_order_and_connection_refusals() {
    let dir = TempDir::new("flood-limits");
    let server = TurboDex::start(
        &dir,
        &[
            "--max-order-rate",
            "1000/s",
            "--order-burst",
            "50",
            "--max-open-orders-per-account",
            "20",
            "--max-connections-per-address",
            "8",
        ],
    );
    let path = dir.join("flood.json");
    let out = flood(
        server.addr,
        &[
            "--what",
            "rate,open-orders,connections",
            "--connections",
            "12",
            "--expect-burst",
            "50",
            "--expect-open-orders",
            "20",
            "--expect-connections",
            "8",
            "--json",
            path.to_str().unwrap(),
        ],
    );
    testkit::assert_success(&out);
    let stdout = text(&out.stdout);
    let j = json(&path);
    // The bucket holds 50 tokens: the first 50 of the 200 are accepted
    // (and at most a token or two more refill during the burst); the rest
    // are RateLimited; 150 rejects are far from the flood close.
    let rate = &j["rate"];
    assert_eq!(n(&rate["sent"]), 200, "{stdout}");
    assert_eq!(n(&rate["unanswered"]), 0, "{stdout}");
    assert!(n(&rate["accepted"]) >= 50, "{stdout}");
    assert!(n(&rate["rate_limited"]) >= 1, "{stdout}");
    assert_eq!(
        n(&rate["accepted"]) + n(&rate["rate_limited"]),
        200,
        "{stdout}"
    );
    assert_eq!(rate["order_flood"], false, "{stdout}");
    // Exactly the cap rests, then TooManyOpenOrders.
    let open = &j["open_orders"];
    assert_eq!(n(&open["rested"]), 20, "{stdout}");
    assert_eq!(open["too_many_open_orders"], true, "{stdout}");
    assert!(stdout.contains("open orders  20 rested, then TooManyOpenOrders"));
    // At most 8 held from this address; the rest refused.
    let conns = &j["connections"];
    assert_eq!(n(&conns["attempted"]), 12);
    assert!(n(&conns["held"]) <= 8, "{stdout}");
    assert!(n(&conns["too_many_connections"]) >= 4, "{stdout}");
    assert!(j["bad_logons"].is_null());
    assert_eq!(j["unenforced"], serde_json::json!([]));
}

#[test]
fn flood_reports_bad_logons_and_a_limit_the_server_does_not_have() {
    let dir = TempDir::new("flood-logons");
    let accounts = dir.join("accounts.txt");
    let mut add = Command::new(testkit::cargo_built("engine", "turbo-dex"))
        .args(["accounts", "add", "alice", "--file"])
        .arg(&accounts)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("turbo-dex accounts add");
    add.stdin
        .take()
        .unwrap()
        .write_all(b"alpha-secret\n")
        .unwrap();
    let added = add.wait_with_output().unwrap();
    testkit::assert_success(&added);
    dir.write("pw.txt", "alpha-secret\n");
    // No --max-order-rate: the order entry rate is off.
    let server = TurboDex::start(&dir, &["--accounts", accounts.to_str().unwrap()]);
    let path = dir.join("flood.json");
    let out = flood(
        server.addr,
        &[
            "--what",
            "bad-logons,rate",
            "--account",
            "1",
            "--password-file",
            dir.join("pw.txt").to_str().unwrap(),
            "--expect-burst",
            "50",
            "--json",
            path.to_str().unwrap(),
        ],
    );
    let stdout = text(&out.stdout);
    // The rate ran first (with the right password) and nothing was
    // RateLimited: the limit --expect-burst names is not there, exit 1.
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("NOT ENFORCED order entry rate"), "{stdout}");
    let j = json(&path);
    assert_eq!(n(&j["rate"]["accepted"]), 200, "{stdout}");
    assert_eq!(n(&j["rate"]["rate_limited"]), 0, "{stdout}");
    // 12 wrong passwords: all refused; the first 10 after the check, the
    // last 2 at once (10 failures per address and minute).
    let bad = &j["bad_logons"];
    assert_eq!(n(&bad["sent"]), 12, "{stdout}");
    assert_eq!(n(&bad["accepted"]), 0, "{stdout}");
    assert_eq!(n(&bad["other"]), 0, "{stdout}");
    assert_eq!(n(&bad["authentication_failed"]), 10, "{stdout}");
    assert_eq!(n(&bad["refused_at_once"]), 2, "{stdout}");
    assert_eq!(bad["seconds"].as_array().map(Vec::len), Some(12));
}

#[test]
fn flood_usage_errors_exit_2_and_help_names_the_parts() {
    let help = Command::new(env!("CARGO_BIN_EXE_dex-trader"))
        .args(["flood", "--help"])
        .output()
        .unwrap();
    testkit::assert_success(&help);
    let help = text(&help.stdout);
    assert!(
        help.contains("--what") && help.contains("bad-logons"),
        "{help}"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_dex-trader"))
        .args(["flood", "--server", "127.0.0.1:1", "--what", "everything"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
    let no_server = Command::new(env!("CARGO_BIN_EXE_dex-trader"))
        .arg("flood")
        .env_remove("DEX_SERVER")
        .output()
        .unwrap();
    assert_eq!(no_server.status.code(), Some(2));
    // Nothing listens on port 1: a clear error, exit 1.
    let down = Command::new(env!("CARGO_BIN_EXE_dex-trader"))
        .args(["flood", "--server", "127.0.0.1:1", "--what", "rate"])
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(1));
    assert!(
        text(&down.stderr).contains("rate: connect"),
        "{}",
        text(&down.stderr)
    );
}
