//! Tests of scripts/netns-bench.sh: a `--tiny` run with the debug binaries
//! gives a complete table (every expected row, numeric columns, raw JSON
//! beside it) and leaves no network namespace behind; an interrupted run
//! cleans up too; a leftover of a crashed run is deleted; bad options are
//! usage errors. Nothing here asserts a speed: the numbers are whatever the
//! machine gives.
//!
//! The runs need root and `ip` (iproute2); without them those tests say
//! `SKIP: <test>: <reason>` (see testkit) and scripts/test.sh counts them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{TempDir, missing, output_text as text};

/// Prefix of the namespaces the script creates: `<prefix>-<pid>-srv|cli`.
const NS_PREFIX: &str = "tdx-netns-bench";

/// The rows a `--tiny` run measures per pinning and MTU: batch and load.
const TINY_LOADS: [(&str, &str); 3] = [("1", "closed"), ("100", "closed"), ("1", "open 5000/s")];

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/netns-bench.sh")
}

/// Why the namespace runs cannot happen here, or `None` when they can.
fn cannot_run() -> Option<String> {
    missing(true, &["ip"]).map(|why| format!("{why}, to create network namespaces"))
}

/// The directory holding the debug turbo-dex and dex-trader.
fn bin_dir() -> PathBuf {
    testkit::bin_dir(&["turbo-dex", "dex-trader"])
}

/// The names `ip netns list` shows.
fn namespaces() -> BTreeSet<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The namespaces a run of the script with this pid creates.
fn run_namespaces(pid: u32) -> [String; 2] {
    [
        format!("{NS_PREFIX}-{pid}-srv"),
        format!("{NS_PREFIX}-{pid}-cli"),
    ]
}

/// The CPUs this process may run on (the script inherits the same mask).
fn allowed_cpu_count() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in /proc/self/status")
        .trim();
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

/// Processes (other than this one) holding a file under `dir` open.
fn holders_of(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.chars().all(|c| c.is_ascii_digit()) || name == std::process::id().to_string() {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(dir)) {
                let cmd = std::fs::read_to_string(entry.path().join("cmdline")).unwrap_or_default();
                found.push(format!("pid {name}: {}", cmd.replace('\0', " ")));
                break;
            }
        }
    }
    found
}

/// The cells of the main table's rows: the table under the header that
/// starts `| pinning | MTU |`, up to the first line that is not a row.
fn table_rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip_while(|l| !l.starts_with("| pinning | MTU |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

fn number(cell: &str, what: &str, row: &[String]) -> f64 {
    cell.parse::<f64>()
        .unwrap_or_else(|_| panic!("{what} is not a number in row {row:?}"))
}

#[test]
fn tiny_run_gives_a_complete_table_and_leaves_no_namespace() {
    if let Some(why) = cannot_run() {
        testkit::skip!("{why}");
        return;
    }
    let bins = bin_dir();
    let out = TempDir::new("tiny");

    // A leftover of a "crashed" run: a namespace named for a pid that has
    // exited. The run must delete it.
    let mut gone = Command::new("true").spawn().expect("true runs");
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let leftover = format!("{NS_PREFIX}-{dead_pid}-srv");
    let created = Command::new("ip")
        .args(["netns", "add", &leftover])
        .status()
        .expect("ip runs");
    assert!(
        created.success(),
        "cannot create the leftover namespace {leftover}"
    );

    let child = Command::new("bash")
        .arg(script())
        .args(["--tiny", "--bin-dir"])
        .arg(&bins)
        .arg("--out")
        .arg(out.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash runs");
    let pid = child.id();
    let output = child.wait_with_output().expect("the script finishes");
    let log = text(&output);
    let left = namespaces();
    let _ = Command::new("ip")
        .args(["netns", "del", &leftover])
        .stderr(Stdio::null())
        .status();

    assert!(
        output.status.success(),
        "netns-bench.sh --tiny failed:\n{log}"
    );
    for ns in run_namespaces(pid) {
        assert!(
            log.contains(&ns),
            "the log does not name namespace {ns}:\n{log}"
        );
        assert!(!left.contains(&ns), "namespace {ns} left behind: {left:?}");
    }
    // This run or one running beside it (another test) deleted it.
    assert!(
        !left.contains(&leftover),
        "the leftover {leftover} of a dead run was not deleted:\n{log}"
    );
    assert!(
        holders_of(out.path()).is_empty(),
        "processes still write into the run's directory: {:?}",
        holders_of(out.path())
    );

    let table = std::fs::read_to_string(out.path().join("table.md"))
        .unwrap_or_else(|e| panic!("no table.md ({e}):\n{log}"));
    assert!(log.contains(&table), "the table printed is not table.md");
    let rows = table_rows(&table);
    let pins: &[&str] = if allowed_cpu_count() >= 2 {
        &["pinned", "unpinned"]
    } else {
        assert!(
            table.contains("Only one core"),
            "one core but no note:\n{table}"
        );
        &["unpinned"]
    };
    let mut expected = 0;
    for pin in pins {
        for mtu in ["1500", "9000"] {
            for (batch, load) in TINY_LOADS {
                expected += 1;
                let matching: Vec<&Vec<String>> = rows
                    .iter()
                    .filter(|r| r[..4] == [*pin, mtu, batch, load])
                    .collect();
                assert_eq!(
                    matching.len(),
                    1,
                    "want one row for {pin} MTU {mtu} batch {batch} {load}:\n{table}"
                );
                let row = matching[0];
                assert_eq!(row.len(), 15, "row {row:?} should have 15 columns");
                // Above zero means the run sent orders at all; no speed is asserted.
                assert!(
                    number(&row[4], "orders/s", row) > 0.0,
                    "no orders in {row:?}"
                );
                // Two accounts: crossing orders trade (a number, 0 at worst in a tiny run).
                number(&row[5], "trades/s", row);
                let p50 = number(&row[6], "p50", row);
                let p99 = number(&row[7], "p99", row);
                let p999 = number(&row[8], "p99.9", row);
                let max = number(&row[9], "max", row);
                assert!(
                    p50 <= p99 && p99 <= p999 && p999 <= max,
                    "percentiles out of order in {row:?}"
                );
                row[10]
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("errors is not a count in {row:?}"));
                assert_eq!(row[11], "1", "--tiny runs each row once: {row:?}");
                let (lo, hi) = row[12]
                    .split_once('-')
                    .unwrap_or_else(|| panic!("orders/s range is not LOW-HIGH in {row:?}"));
                assert_eq!(
                    (
                        number(lo, "lowest orders/s", row),
                        number(hi, "highest orders/s", row)
                    ),
                    (
                        number(&row[4], "orders/s", row),
                        number(&row[4], "orders/s", row)
                    ),
                    "one run: its range is its own orders/s in {row:?}"
                );

                let mut json = format!("{pin}-mtu{mtu}-batch{batch}");
                if let Some(rate) = load.strip_prefix("open ") {
                    json += &format!("-rate{}", rate.trim_end_matches("/s"));
                }
                for (cell, what) in [
                    (&row[13], "bytes/packet to server"),
                    (&row[14], "bytes/packet to trader"),
                ] {
                    // Every run sends orders one way and reports the other.
                    assert!(number(cell, what, row) > 0.0, "no {what} in {row:?}");
                }
                json += "-run1";
                let raw = std::fs::read_to_string(out.path().join(format!("{json}.json")))
                    .unwrap_or_else(|e| panic!("no raw JSON {json}.json ({e})"));
                assert!(raw.contains("\"orders_per_sec\""), "{json}.json: {raw}");
            }
        }
    }
    assert_eq!(rows.len(), expected, "unexpected extra rows:\n{table}");
    assert!(
        table.contains("Jumbo frames: MTU 9000 against 1500"),
        "{table}"
    );
    if pins.len() == 2 {
        assert!(
            table.contains("Pinning: pinned against unpinned"),
            "{table}"
        );
    }
}

#[test]
fn an_interrupted_run_cleans_up() {
    if let Some(why) = cannot_run() {
        testkit::skip!("{why}");
        return;
    }
    let bins = bin_dir();
    let out = TempDir::new("interrupted");
    let mut child = Command::new("bash")
        .arg(script())
        .args(["--tiny", "--bin-dir"])
        .arg(&bins)
        .arg("--out")
        .arg(out.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bash runs");
    let pid = child.id();
    let names = run_namespaces(pid);

    // Wait for the namespaces and the first run's raw files, so that the
    // signal lands while a server and a trader are up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = names.iter().all(|ns| namespaces().contains(ns));
        let running = std::fs::read_dir(out.path()).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".trader.err"))
        });
        if up && running {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the script exited ({status}) before it could be interrupted");
        }
        assert!(
            Instant::now() < deadline,
            "the script did not start a run within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the script did not stop within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130), "an interrupted run exits 130");
    let left = namespaces();
    for ns in &names {
        assert!(
            !left.contains(ns),
            "namespace {ns} left behind after SIGTERM: {left:?}"
        );
    }
    assert!(
        holders_of(out.path()).is_empty(),
        "turbo-dex or dex-trader still running after SIGTERM: {:?}",
        holders_of(out.path())
    );
}

#[test]
fn bad_options_are_usage_errors() {
    let output = Command::new("bash")
        .arg(script())
        .arg("--frobnicate")
        .output()
        .expect("bash runs");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("unknown option --frobnicate"),
        "{}",
        text(&output)
    );

    for bad in [["--repeat", "0"], ["--rate", "1e5"]] {
        let output = Command::new("bash")
            .arg(script())
            .args(bad)
            .output()
            .expect("bash runs");
        assert_eq!(output.status.code(), Some(2), "{bad:?}: {}", text(&output));
    }

    let help = Command::new("bash")
        .arg(script())
        .arg("--help")
        .output()
        .expect("bash runs");
    assert!(help.status.success(), "{}", text(&help));
    for option in [
        "--tiny",
        "--short",
        "--full",
        "--repeat",
        "--rate",
        "--out",
        "--bin-dir",
    ] {
        assert!(
            text(&help).contains(option),
            "--help does not mention {option}"
        );
    }
}

#[test]
fn shellcheck_is_clean() {
    if let Some(why) = missing(false, &["shellcheck"]) {
        testkit::skip!("{why}");
        return;
    }
    let output = Command::new("shellcheck")
        .arg("-x")
        .arg(script())
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("shellcheck runs");
    assert!(output.status.success(), "shellcheck:\n{}", text(&output));
}
