//! The benchmark and quick-start scripts, run tiny against the debug
//! binaries so they cannot rot: bench.sh must produce a complete table and
//! its raw JSON, quickstart.sh must show both reports and stop the server,
//! auto-cluster.sh must form a two-node cluster in network namespaces and
//! trade on both nodes.
//! Nothing here asserts a speed.
//!
//! The debug binaries are the ones `cargo build --workspace --bins` (which
//! scripts/test.sh runs first) puts beside this test's executable.

use std::path::{Path, PathBuf};
use std::process::Command;

use testkit::{TempDir, output_text as text};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `<target>/<profile>/`, where the workspace binaries are.
fn bin_dir() -> PathBuf {
    testkit::bin_dir(&["turbo-dex", "dex-trader", "tcp-rtt"])
}

/// The cells of the table rows under the heading that starts with `heading`.
fn table_rows(table: &str, heading: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut inside = false;
    for line in table.lines() {
        if line.starts_with("## ") {
            inside = line.starts_with(heading);
            continue;
        }
        if inside
            && line.starts_with('|')
            && !line.starts_with("|---")
            && !line.contains("engine |")
        {
            rows.push(
                line.trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().to_string())
                    .collect(),
            );
        }
    }
    rows
}

fn is_number(cell: &str) -> bool {
    let digits = cell.trim_end_matches(['K', 'M']);
    !digits.is_empty() && digits.parse::<f64>().is_ok()
}

#[test]
fn bench_tiny_produces_a_complete_table() {
    let tmp = TempDir::new("bench-tiny");
    let out_dir = tmp.path();
    let out = Command::new(root().join("scripts/bench.sh"))
        .arg("--tiny")
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--out")
        .arg(out_dir)
        .current_dir(root())
        .output()
        .expect("bench.sh runs");
    let log = text(&out);
    assert!(out.status.success(), "bench.sh --tiny failed:\n{log}");
    let table = std::fs::read_to_string(out_dir.join("table.md")).expect("table.md written");
    assert!(
        log.contains("## Throughput"),
        "the table is printed too:\n{log}"
    );
    assert!(table.contains("Bare loopback TCP round trip"), "{table}");

    // Throughput: match and null at batches 1 and 100 without a journal, and
    // match with an fsynced journal at the largest batch.
    let tput = table_rows(&table, "## Throughput");
    let keys: Vec<(String, String, String)> = tput
        .iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
        .collect();
    let expected: Vec<(String, String, String)> = [
        ("match", "none", "1"),
        ("match", "none", "100"),
        ("null", "none", "1"),
        ("null", "none", "100"),
        ("match", "fsync", "100"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(keys, expected, "{table}");
    for row in &tput {
        assert_eq!(row.len(), 11, "{row:?}");
        for cell in &row[3..] {
            assert!(is_number(cell), "every figure is a number: {row:?}");
        }
    }
    // Latency: one offered rate, with and without the journal.
    let lat = table_rows(&table, "## Latency");
    assert_eq!(lat.len(), 2, "{table}");
    for row in &lat {
        assert_eq!(row.len(), 13, "{row:?}");
        for cell in &row[2..] {
            assert!(is_number(cell), "every figure is a number: {row:?}");
        }
    }
    // The raw reports sit beside the table.
    for name in [
        "tput-match-none-b1",
        "tput-null-none-b100",
        "lat-match-fsync-r20000",
    ] {
        let json = std::fs::read_to_string(out_dir.join(format!("{name}.json"))).expect("raw JSON");
        assert!(json.contains("\"orders_per_sec\""), "{name}: {json}");
    }
    // No journal directory is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(out_dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("journal-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn quickstart_shows_both_reports_and_stops_the_server() {
    let out = Command::new(root().join("scripts/quickstart.sh"))
        .arg("--bin-dir")
        .arg(bin_dir())
        .args(["--duration", "1s", "--batch", "100"])
        .current_dir(root())
        .output()
        .expect("quickstart.sh runs");
    let log = text(&out);
    assert!(out.status.success(), "quickstart failed:\n{log}");
    for expected in [
        "starting turbo-dex",
        "running dex-trader",
        "orders sent",
        "latency us",
        "verify       ok",
        "turbo-dex final stats",
        "stopping turbo-dex",
    ] {
        assert!(
            log.contains(expected),
            "quickstart output lacks {expected:?}:\n{log}"
        );
    }
    // The server it started is gone: its pid (from "listening on ADDR (pid N)") no longer runs.
    let pid = log
        .lines()
        .find_map(|l| l.split("(pid ").nth(1))
        .and_then(|rest| rest.trim_end_matches(')').parse::<u32>().ok())
        .expect("quickstart names the server's pid");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the quickstart server (pid {pid}) is still running"
    );
}

#[test]
fn every_script_is_shellcheck_clean() {
    if let Some(why) = testkit::missing(false, &["shellcheck"]) {
        testkit::skip!("{why}");
        return;
    }
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(root().join("scripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    scripts.sort();
    assert!(scripts.len() >= 6, "{scripts:?}");
    let output = Command::new("shellcheck")
        .arg("-x")
        .args(&scripts)
        .current_dir(root())
        .output()
        .expect("shellcheck runs");
    assert!(output.status.success(), "shellcheck:\n{}", text(&output));
}

#[test]
fn bench_tls_gives_every_row() {
    let allowed = tuning::allowed_cpus().expect("affinity");
    let server = allowed.first().expect("a CPU").to_string();
    let trader = allowed.last().expect("a CPU").to_string();
    let out = Command::new(root().join("scripts/bench-tls.sh"))
        .args(["--duration", "200ms", "--warmup", "100ms"])
        .args([
            "--server-cpu",
            &server,
            "--trader-cpu",
            &trader,
            "--bin-dir",
        ])
        .arg(bin_dir())
        .output()
        .expect("bench-tls.sh runs");
    let log = text(&out);
    assert!(out.status.success(), "bench-tls.sh failed:\n{log}");
    for engine in ["null", "match"] {
        for batch in ["2000", "1"] {
            for tls in ["plain", "tls"] {
                let name = format!("{engine}-batch{batch}-{tls} ");
                let row = log.lines().find(|l| l.starts_with(&name));
                let cells: Vec<&str> = row.map_or(vec![], |r| r.split_whitespace().collect());
                assert!(
                    cells.len() == 4 && cells[1..].iter().all(|c| is_number(c)),
                    "row {name}: {row:?} in\n{log}"
                );
            }
        }
    }
}

#[test]
fn bench_logon_flood_gives_every_row() {
    let allowed = tuning::allowed_cpus().expect("affinity");
    let server = allowed.first().expect("a CPU").to_string();
    let trader = allowed.last().expect("a CPU").to_string();
    let out = Command::new(root().join("scripts/bench-logon-flood.sh"))
        .args([
            "--pairs",
            "1",
            "--rate",
            "50",
            "--duration",
            "1",
            "--warmup",
            "2",
        ])
        .args([
            "--batch",
            "100",
            "--server-cpu",
            &server,
            "--trader-cpu",
            &trader,
        ])
        .arg("--bin-dir")
        .arg(bin_dir())
        .output()
        .expect("bench-logon-flood.sh runs");
    let log = text(&out);
    assert!(out.status.success(), "bench-logon-flood.sh failed:\n{log}");
    for (name, flood) in [("quiet-1", false), ("one-addr-1", true), ("range-1", true)] {
        let row = log.lines().find(|l| l.starts_with(&format!("{name} ")));
        let cells: Vec<&str> = row.map_or(vec![], |r| r.split_whitespace().collect());
        assert!(
            cells.len() >= 6 && cells[1..5].iter().all(|c| is_number(c)),
            "row {name}: {row:?} in\n{log}"
        );
        if flood {
            // From a second into the warmup to the end, 2 s at 50/s: 100
            // bad logons, none accepted.
            let counts = cells[5..].join(" ");
            assert!(counts.starts_with("100 sent"), "{name}: {counts}");
            assert!(counts.ends_with(" 0 accepted"), "{name}: {counts}");
        }
    }
}

#[test]
fn admin_bench_runs_with_and_without_a_scraper() {
    let out = Command::new(root().join("scripts/admin-bench.sh"))
        .args(["--pairs", "1", "--duration", "1s", "--bin-dir"])
        .arg(bin_dir())
        .output()
        .expect("admin-bench.sh runs");
    let log = text(&out);
    assert!(out.status.success(), "admin-bench.sh failed:\n{log}");
    assert!(log.contains("without scraper:"), "{log}");
    assert!(log.contains("with scraper:"), "{log}");
    assert!(log.contains("median orders/s: without"), "{log}");
}

/// nats-server on PATH, or where the Debian package puts it.
fn have_nats_server() -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .any(|dir| dir.join("nats-server").is_file())
}

/// What a cluster script's test lacks here, if anything: root and `ip`
/// (network namespaces), nats-server.
fn lab_missing() -> Option<String> {
    if let Some(why) = testkit::missing(true, &["ip"]) {
        return Some(format!("{why}, to create network namespaces"));
    }
    if !have_nats_server() {
        return Some(
            "needs nats-server (apt-get install nats-server); scripts/test.sh installs it".into(),
        );
    }
    None
}

#[test]
fn auto_cluster_forms_and_trades_on_every_node() {
    if let Some(why) = lab_missing() {
        testkit::skip!("{why}");
        return;
    }
    // Namespaces and several processes: not beside another namespace test.
    let _host = testkit::real_host_lock();
    let tmp = TempDir::new("auto-cluster");
    let json = tmp.path().join("cluster.json");
    // The hard path on purpose: TURBO_DEX_DISCOVERY_JITTER_MS=0 and both
    // nodes started at once, so each browses exactly 2 s, finds nothing and
    // starts its own nats-server; the servers then route to each other and
    // restart into one cluster, which drops the buckets one of them held
    // while standalone. The nodes must still join (retrying while their
    // server restarts), recreate what is lost and split the shards (README
    // "Running a cluster"); no retry here hides a failure.
    let (out, log) = run_auto_cluster(&json);
    assert!(out.status.success(), "auto-cluster.sh failed:\n{log}");
    assert!(log.contains("formed in "), "{log}");
    // dex-trader --cluster auto found its seeds by mDNS from its namespace
    // (the first node announced is enough: its map names the other).
    assert!(
        log.contains("dex-trader cluster: ") && log.contains(" node(s) from mDNS ("),
        "{log}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the --json file is written"))
            .unwrap_or_else(|e| panic!("{e} in {}", json.display()));
    let nodes = v["nodes"].as_array().expect("a nodes array");
    assert_eq!(nodes.len(), 2, "{v}");
    // The default is 2 shards per node: each owned by exactly one node.
    let mut owned: Vec<u64> = nodes
        .iter()
        .flat_map(|n| n["shards"].as_array().expect("shards").clone())
        .map(|s| s.as_u64().expect("a shard number"))
        .collect();
    owned.sort_unstable();
    assert_eq!(owned, [0, 1, 2, 3], "{v}");
    for n in nodes {
        assert!(n["id"].as_str().is_some_and(|id| id.len() == 16), "{n}");
        assert!(
            n["address"].as_str().is_some_and(|a| a.contains(':')),
            "{n}"
        );
        assert!(n["orders_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{n}");
    }
    assert!(v["orders_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
    assert!(v["trades_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
    assert!(v["formed_ms"].as_u64().is_some_and(|ms| ms > 0), "{v}");
}

#[test]
fn auto_cluster_refuses_bad_options() {
    for (args, says) in [
        (&[][..], "--nodes is required"),
        (&["--nodes", "0"][..], "--nodes 0"),
        (&["--nodes", "2", "--duration", "2"][..], "--duration 2"),
        (&["--nodes", "2", "--bogus"][..], "unknown option --bogus"),
    ] {
        let out = Command::new(root().join("scripts/auto-cluster.sh"))
            .args(args)
            .output()
            .expect("auto-cluster.sh runs");
        let log = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {log}");
        assert!(log.contains(says), "{args:?}: {log}");
    }
    let help = Command::new(root().join("scripts/auto-cluster.sh"))
        .arg("--help")
        .output()
        .expect("auto-cluster.sh runs");
    assert!(help.status.success());
    assert!(text(&help).contains("--nodes N"), "{}", text(&help));
}

/// One `auto-cluster.sh --nodes 2` run writing `json`; checks that it left
/// none of its namespaces behind.
fn run_auto_cluster(json: &Path) -> (std::process::Output, String) {
    let child = Command::new(root().join("scripts/auto-cluster.sh"))
        // Forms in about 7 to 9 s.
        .args(["--nodes", "2", "--duration", "2s", "--form-timeout", "30"])
        .env("TURBO_DEX_DISCOVERY_JITTER_MS", "0")
        .arg("--json")
        .arg(json)
        .arg("--bin-dir")
        .arg(testkit::bin_dir(&["turbo-dex", "dex-trader"]))
        .env_remove("NATS_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("auto-cluster.sh runs");
    // The script names its namespaces after its pid.
    let prefix = format!("tdx-ac-{}-", child.id());
    let out = child.wait_with_output().expect("auto-cluster.sh ends");
    let log = text(&out);
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip runs");
    let left: Vec<String> = String::from_utf8_lossy(&netns.stdout)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}\n{log}");
    (out, log)
}

#[test]
fn bench_cluster_measures_overhead_formation_and_failover() {
    if let Some(why) = lab_missing() {
        testkit::skip!("{why}");
        return;
    }
    // Namespaces (auto-cluster.sh) and several nodes: not beside another
    // namespace test.
    let _host = testkit::real_host_lock();
    let tmp = TempDir::new("bench-cluster");
    // Everything the script creates (its temporary directory, the journals
    // and NATS stores in it, auto-cluster.sh's) goes under this one.
    let scratch = tmp.join("tmp");
    std::fs::create_dir(&scratch).expect("create the scratch directory");
    let json = tmp.join("cluster.json");
    let namespaces = || {
        let out = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("tdx-ac-"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let namespaces_before = namespaces();
    // The smallest of each part: one round of 1 s runs (and a batch-1 run
    // at 1K orders/s, which a debug build sharing the CPUs keeps up with),
    // one formation of 2 nodes started 2 s apart (the second finds the
    // first's nats-server, as in the auto-cluster test above), one kill and
    // restart of a node of 2 shards (a debug build replays a 64 MiB journal
    // segment per shard in seconds).
    let out = Command::new(root().join("scripts/bench-cluster.sh"))
        .args(["--rounds", "1", "--duration", "1s", "--warmup", "500ms"])
        .args(["--latency-rate", "1000", "--no-spin"])
        .args([
            "--form-nodes",
            "2",
            "--form-runs",
            "1",
            "--form-stagger",
            "2",
        ])
        .args(["--failover-runs", "1", "--failover-shards", "2"])
        .args(["--replicas", "1,3", "--json"])
        .arg(&json)
        .arg("--bin-dir")
        .arg(testkit::bin_dir(&["turbo-dex", "dex-trader"]))
        .env("TMPDIR", &scratch)
        .env_remove("NATS_URL")
        .output()
        .expect("bench-cluster.sh runs");
    let log = text(&out);

    // Nothing is left behind, whatever the outcome: no namespace, no
    // temporary directory, no process started with a path under it.
    let mut left: Vec<String> = namespaces()
        .into_iter()
        .filter(|n| !namespaces_before.contains(n))
        .collect();
    left.extend(
        std::fs::read_dir(&scratch)
            .expect("the scratch directory")
            .filter_map(Result::ok)
            .map(|e| e.path().display().to_string()),
    );
    let marker = scratch.display().to_string();
    for entry in std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
    {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(&marker)
        {
            left.push(format!(
                "process {}: {}",
                entry.file_name().to_string_lossy(),
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    assert!(left.is_empty(), "left behind: {left:?}\n{log}");

    assert!(out.status.success(), "bench-cluster.sh failed:\n{log}");
    for heading in ["## Overhead", "## Formation", "## Replicas", "## Failover"] {
        assert!(log.contains(heading), "the summary has {heading}:\n{log}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the --json file is written"))
            .unwrap_or_else(|e| panic!("{e} in {}", json.display()));
    let positive = |x: &serde_json::Value| x.as_f64().is_some_and(|x| x > 0.0);
    let o = &v["overhead"];
    for mode in ["single", "cluster"] {
        for key in ["orders_per_sec", "trades_per_sec"] {
            let runs = o[mode][key].as_array().expect("one figure per round");
            assert_eq!(runs.len(), 1, "{mode} {key}: {v}");
            assert!(runs.iter().all(positive), "{mode} {key}: {v}");
            assert!(positive(&o[mode][format!("{key}_median")]), "{v}");
        }
        assert!(positive(&o[mode]["latency_us_p50_median"]), "{v}");
        assert!(positive(&o[mode]["latency_us_p99_median"]), "{v}");
    }
    assert!(
        positive(&o["orders_ratio"]) && positive(&o["trades_ratio"]),
        "{v}"
    );
    // The lone cluster node claims its shard after its 2 s join window.
    assert!(
        o["cluster_owned_ms_median"]
            .as_f64()
            .is_some_and(|ms| ms >= 2000.0),
        "{v}"
    );
    // --replicas 1 and 3 on the script's three-server NATS cluster.
    let runs = v["replicas"]["runs"]
        .as_array()
        .expect("one entry per setting");
    let settings: Vec<u64> = runs.iter().filter_map(|r| r["replicas"].as_u64()).collect();
    assert_eq!(settings, [1, 3], "{v}");
    for r in runs {
        assert!(positive(&r["orders_per_sec_median"]), "{v}");
        assert!(positive(&r["trades_per_sec_median"]), "{v}");
        assert!(positive(&r["orders_ratio_to_1"]), "{v}");
        assert!(positive(&r["latency_us_p50_median"]), "{v}");
    }
    let f = &v["formation"][0];
    assert_eq!(f["nodes"], 2, "{v}");
    assert_eq!(f["failed_runs"], 0, "{v}");
    assert!(positive(&f["formed_ms_median"]), "{v}");
    let fo = &v["failover"];
    let served = fo["restart_served_ms"].as_array().expect("one per run");
    assert_eq!(served.len(), 1, "{v}");
    assert!(served.iter().all(positive), "{v}");
    assert!(positive(&fo["restart_served_ms_median"]), "{v}");
    let nr = &fo["no_restart"];
    // Leases last 5 s from the last renewal (every second): they expire 4
    // to 5 s after the kill, and the node is stale 5 to 6 s after it.
    assert!(
        nr["leases_expired_ms"]
            .as_f64()
            .is_some_and(|ms| (3000.0..20_000.0).contains(&ms)),
        "{v}"
    );
    assert!(positive(&nr["stale_ms"]), "{v}");
    assert_eq!(nr["unserved_confirmed"], true, "{v}");
    assert!(positive(&nr["claim_served_ms"]), "{v}");
}

#[test]
fn bench_cluster_refuses_bad_options() {
    for (args, says) in [
        (&["--rounds", "0"][..], "--rounds 0"),
        (&["--fsync", "sometimes"][..], "--fsync sometimes"),
        (&["--skip", "lunch"][..], "--skip lunch"),
        (&["--form-nodes", "3,x"][..], "--form-nodes: x"),
        (&["--replicas", "1,4"][..], "--replicas: 4"),
        (&["--bogus"][..], "unknown option --bogus"),
    ] {
        let out = Command::new(root().join("scripts/bench-cluster.sh"))
            .args(args)
            .output()
            .expect("bench-cluster.sh runs");
        let log = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {log}");
        assert!(log.contains(says), "{args:?}: {log}");
    }
    let help = Command::new(root().join("scripts/bench-cluster.sh"))
        .arg("--help")
        .output()
        .expect("bench-cluster.sh runs");
    assert!(help.status.success());
    assert!(text(&help).contains("--failover-runs N"), "{}", text(&help));
}

/// scripts/failover-test.sh checks its options before it builds anything
/// (the test itself runs in the suite as
/// `engine/tests/cluster.rs::failover_loses_no_acknowledged_order`; the
/// script runs it in a release build with more trials).
#[test]
fn failover_test_refuses_bad_options() {
    for (args, says) in [
        (&["--trials", "x"][..], "x is not a number"),
        (&["--steps", "-3"][..], "-3 is not a number"),
        (
            &["--nats-server", "/bin/true"][..],
            "not an executable named nats-server",
        ),
        (&["--bogus"][..], "unknown option --bogus"),
    ] {
        let out = Command::new(root().join("scripts/failover-test.sh"))
            .args(args)
            .output()
            .expect("failover-test.sh runs");
        let log = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {log}");
        assert!(log.contains(says), "{args:?}: {log}");
    }
    let help = Command::new(root().join("scripts/failover-test.sh"))
        .arg("--help")
        .output()
        .expect("failover-test.sh runs");
    assert!(help.status.success());
    assert!(text(&help).contains("--keep-nats"), "{}", text(&help));
}
