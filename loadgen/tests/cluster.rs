//! `dex-trader --cluster` against a real cluster: a nats-server with
//! JetStream (`-js -sd <tempdir>`) on 127.0.0.1 and two `turbo-dex --cluster`
//! nodes (the binary, on ephemeral ports, which they advertise). dex-trader
//! reads the map from a seed node and sends every order to its shard's
//! owner: trades happen on both nodes and no order meets `WrongNode`. With
//! `--cluster nats://...` (or `auto` and `NATS_URL`) the seeds are the live
//! nodes the cluster publishes in NATS. (`auto`'s mDNS step needs two
//! network namespaces: scripts/auto-cluster.sh and its test in benches.)
//! Without nats-server (the Debian package scripts/test.sh installs) the
//! tests that need it say `SKIP:` and return; the usage errors run anyway.
//!
//! The tests run one at a time (a lock): each starts a NATS server and two
//! nodes (three for `--verify`), whose leases should not compete for 2
//! cores with another test's.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use loadgen::cluster::{MapAssembler, MapView};
use testkit::{NatsServer, TempDir};
use wire::{ClusterMapRequest, Decoder, Frame, Hello};

/// Shards of the test cluster, and symbols (two per shard).
const SHARDS: u32 = 4;
const SYMBOLS: u32 = 8;
/// The longest any condition is waited for.
const DEADLINE: Duration = Duration::from_secs(20);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The turbo-dex binary: `<target>/<profile>/turbo-dex` as `cargo build
/// -p engine -p loadgen --bins` (or the workspace build, scripts/test.sh)
/// left it, so that no test waits for a build; built with this test's
/// cargo only when it is missing. Rebuild the binaries after changing the
/// engine. (`cargo build -p engine` alone resolves other features of the
/// shared dependencies than the loadgen test build, so building it here
/// every time would recompile them, about 30 s on 2 cores, at each
/// alternation.)
fn turbo_dex_binary() -> &'static Path {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        let built = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join("turbo-dex")))
            .filter(|p| p.is_file());
        built.unwrap_or_else(|| testkit::cargo_built("engine", "turbo-dex"))
    })
}

/// The CPU for the servers: the last one this process may use (dex-trader
/// runs on the first).
fn server_cpu() -> String {
    let allowed = tuning::allowed_cpus().expect("read the affinity mask");
    allowed.last().expect("at least one CPU").to_string()
}

/// A turbo-dex node (binary) on 127.0.0.1, port 0, advertising the port it
/// bound (turbo-dex's default for a specified `--listen` address).
struct Node {
    child: Child,
    addr: SocketAddr,
}

impl Node {
    /// Its stderr goes to `<journal>.stderr`, shown when it does not start.
    fn start(extra: &[&str], journal: &Path) -> Node {
        let binary = turbo_dex_binary();
        let log = journal.with_extension("stderr");
        let stderr = std::fs::File::create(&log).expect("create the node's stderr file");
        let mut child = testkit::turbo_dex(binary, &server_cpu())
            .args([
                "--no-pin",
                "--quiet",
                "--engine",
                "match",
                "--symbols",
                &SYMBOLS.to_string(),
                "--journal-segment-bytes",
                "1048576",
            ])
            .args(extra)
            .arg("--journal")
            .arg(journal)
            .stderr(stderr)
            .spawn()
            .expect("start turbo-dex");
        let ready = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            testkit::ready_addr(&mut child)
        }));
        let (addr, lines) = ready.unwrap_or_else(|_| {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            panic!(
                "turbo-dex in {} did not start; its stderr:\n{text}",
                journal.display()
            )
        });
        // Keep reading stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Node { child, addr }
    }

    fn in_cluster(nats: &NatsServer, journal: &Path) -> Node {
        Node::in_cluster_of(nats, journal, SHARDS)
    }

    fn in_cluster_of(nats: &NatsServer, journal: &Path, shards: u32) -> Node {
        let shards = shards.to_string();
        Node::start(&["--cluster", &nats.url(), "--shards", &shards], journal)
    }
}

impl Node {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The map as `addr` answers it (a version 2 session of its own).
fn map_of(addr: SocketAddr) -> MapView {
    let mut s = TcpStream::connect(addr).expect("connect to the node");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut out = Vec::new();
    wire::append_frame(&[Hello::new(1, 0, 0, "")], &mut out).expect("hello");
    wire::append_frame(&[ClusterMapRequest::new(7)], &mut out).expect("request");
    s.write_all(&out).expect("send");
    let decoder = Decoder::for_client(wire::MAX_FRAME_BYTES_LIMIT);
    let mut assembler = MapAssembler::default();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut frames = decoder.frames(&buf);
        for f in frames.by_ref() {
            if matches!(
                f,
                Frame::ClusterMap(_) | Frame::ClusterNode(_) | Frame::ClusterShard(_)
            ) && let Some(map) = assembler.on_frame(&f).expect("a well-formed map")
            {
                return map;
            }
        }
        let used = frames.consumed();
        buf.drain(..used);
        let n = s.read(&mut chunk).expect("read the map");
        assert!(n > 0, "the node closed the connection before the map");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Waits until the two nodes own two shards each, as `a` sees it.
fn wait_for_even_split(a: &Node) -> MapView {
    wait_for_split(a, 2, SHARDS)
}

/// Waits until every one of `shards` shards has an owner and `nodes`
/// nodes (with known addresses) own the same number each, as `a` sees it.
fn wait_for_split(a: &Node, nodes: usize, shards: u32) -> MapView {
    let until = Instant::now() + DEADLINE;
    loop {
        let map = map_of(a.addr);
        let mut owners = map.owners.clone();
        owners.sort_unstable();
        owners.dedup();
        let even = owners
            .iter()
            .all(|&o| map.owners.iter().filter(|&&x| x == o).count() == shards as usize / nodes);
        if map.owners.len() == shards as usize
            && owners.len() == nodes
            && !owners.contains(&wire::NO_NODE)
            && even
            && map.owner_addresses().len() == nodes
        {
            return map;
        }
        assert!(
            Instant::now() < until,
            "no even split over {nodes} nodes: {map:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn dex_trader(args: &[&str]) -> Output {
    dex_trader_with(args, None)
}

/// dex-trader with `NATS_URL` set to `nats_url`, or unset.
fn dex_trader_with(args: &[&str], nats_url: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dex-trader"));
    cmd.args(["--quiet", "--cores", "0", "--warmup", "200ms"])
        .args(args)
        .stdin(Stdio::null())
        .env_remove("NATS_URL");
    if let Some(url) = nats_url {
        cmd.env("NATS_URL", url);
    }
    cmd.output().expect("run dex-trader")
}

/// A 2 s `--mix match` run over two connections, batches of 50, routed
/// by `--cluster cluster` (with `extra` flags and `NATS_URL` as given),
/// its JSON report written to `json`.
fn routed_run(cluster: &str, extra: &[&str], json: &Path, nats_url: Option<&str>) -> Output {
    let mut args = vec![
        "--cluster",
        cluster,
        "--mix",
        "match",
        "--connections",
        "2",
        "--batch",
        "50",
        "--duration",
        "2s",
        "--json",
        json.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    dex_trader_with(&args, nats_url)
}

/// A `--verify` run that passed: exit 0, `verify ok`, no violation,
/// nothing unanswered, trades paired. Its JSON report.
fn verified_clean(out: &Output, json_path: &Path) -> serde_json::Value {
    testkit::assert_success(out);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("  verify       ok"), "{stdout}");
    let report = json(json_path);
    assert_eq!(n(&report["violations"]), 0, "{report}");
    assert_eq!(n(&report["unanswered"]), 0, "{report}");
    assert!(n(&report["trades_paired"]) > 0, "{report}");
    report
}

fn json(path: &Path) -> serde_json::Value {
    let body = std::fs::read_to_string(path).expect("the JSON report");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn routes_every_order_to_its_shards_owner() {
    let _serial = serial();
    let bin = testkit::need_nats_server!();
    let nats = NatsServer::with_jetstream(&bin);
    let dir = TempDir::new("trader-cluster");
    let a = Node::in_cluster(&nats, &dir.join("a"));
    let b = Node::in_cluster(&nats, &dir.join("b"));
    let map = wait_for_even_split(&a);
    let path = dir.join("run.json");
    // One seed is enough: the map names the other node.
    let out = routed_run(&a.addr.to_string(), &[], &path, None);
    testkit::assert_success(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("  cluster      map version"), "{stdout}");
    let report = json(&path);
    assert!(n(&report["trades"]) > 0, "{report}");
    assert_eq!(n(&report["unrouted"]), 0, "{report}");
    assert_eq!(n(&report["cluster_map_version"]), map.version, "{report}");
    assert!(
        report["rejects_by_reason"].get("wrong node").is_none()
            && !report["rejects_by_reason"].to_string().contains("wrong"),
        "no order met WrongNode: {report}"
    );
    let nodes = report["nodes"].as_array().expect("a nodes array");
    assert_eq!(nodes.len(), 2, "{report}");
    let mut addrs: Vec<String> = nodes
        .iter()
        .map(|x| x["address"].as_str().expect("address").to_string())
        .collect();
    addrs.sort();
    let mut want = vec![a.addr.to_string(), b.addr.to_string()];
    want.sort();
    assert_eq!(addrs, want);
    let mut routed = 0;
    for node in nodes {
        assert!(n(&node["orders_sent"]) > 0, "{node}");
        assert!(n(&node["trades"]) > 0, "{node}");
        assert_eq!(n(&node["wrong_node"]), 0, "{node}");
        assert!(node["orders_per_sec"].as_f64().expect("a rate") > 0.0);
        assert_eq!(node["node_id"].as_str().expect("hex id").len(), 16);
        routed += n(&node["orders_sent"]);
    }
    // Every request of the window went to one node or was unrouted.
    assert_eq!(routed, n(&report["orders_sent"]), "{report}");
    drop((a, b));
}

/// A run started before the nodes have claimed their shards (in the 2 s
/// join window every map names no owner) asks again until a map names one
/// (PROTOCOL.md §8.11 rule 5) instead of failing: the failover test starts
/// dex-trader while a cluster catches up after a trial, and it failed so.
#[test]
fn waits_at_its_start_for_a_map_that_names_an_owner() {
    let _serial = serial();
    let bin = testkit::need_nats_server!();
    let nats = NatsServer::with_jetstream(&bin);
    let dir = TempDir::new("trader-cluster-early");
    let a = Node::in_cluster(&nats, &dir.join("a"));
    let early = map_of(a.addr);
    assert!(
        early.owner_addresses().is_empty(),
        "asked in the join window, the map names no owner: {early:?}"
    );
    let path = dir.join("run.json");
    let out = routed_run(&a.addr.to_string(), &[], &path, None);
    testkit::assert_success(&out);
    assert!(n(&json(&path)["trades"]) > 0);
    drop(a);
}

/// `--cluster a,b,c --verify`: three nodes with two of six shards each;
/// every report of every node checked (one terminal report per order,
/// fills within quantities, both halves of each trade from its node
/// agreeing), the final cancels sent to each order's owner: no violation.
#[test]
fn verifies_every_report_across_three_nodes() {
    const THREE_SHARDS: u32 = 6;
    let _serial = serial();
    let bin = testkit::need_nats_server!();
    let started = Instant::now();
    let nats = NatsServer::with_jetstream(&bin);
    let dir = TempDir::new("trader-cluster-verify");
    // Started together, so that each registers within the others' 2 s
    // join window and they split the shards two each.
    let nodes: Vec<Node> = std::thread::scope(|s| {
        let starts: Vec<_> = ["a", "b", "c"]
            .map(|name| {
                let (nats, journal) = (&nats, dir.join(name));
                s.spawn(move || Node::in_cluster_of(nats, &journal, THREE_SHARDS))
            })
            .into_iter()
            .collect();
        starts
            .into_iter()
            .map(|h| h.join().expect("a node starts"))
            .collect()
    });
    let map = wait_for_split(&nodes[0], 3, THREE_SHARDS);
    let seeds: Vec<String> = nodes.iter().map(|x| x.addr.to_string()).collect();
    let path = dir.join("run.json");
    let out = routed_run(&seeds.join(","), &["--verify"], &path, None);
    let report = verified_clean(&out, &path);
    assert!(n(&report["trades"]) > 0, "{report}");
    assert_eq!(n(&report["unrouted"]), 0, "{report}");
    assert_eq!(n(&report["cluster_map_version"]), map.version, "{report}");
    let listed = report["nodes"].as_array().expect("a nodes array");
    assert_eq!(listed.len(), 3, "{report}");
    for node in listed {
        assert!(n(&node["orders_sent"]) > 0, "{node}");
        assert!(n(&node["trades"]) > 0, "{node}");
        assert_eq!(n(&node["wrong_node"]), 0, "{node}");
        assert!(node["closed"].is_null(), "{node}");
    }
    eprintln!(
        "three-node --verify test: {:.1} s from nats-server start",
        started.elapsed().as_secs_f64()
    );
}

/// The JSON report's per-node entries: both nodes, each sent orders and
/// traded, none met WrongNode.
fn assert_traded_on(report: &serde_json::Value, nodes: &[&Node]) {
    let entries = report["nodes"].as_array().expect("a nodes array");
    let mut addrs: Vec<String> = entries
        .iter()
        .map(|x| x["address"].as_str().expect("address").to_string())
        .collect();
    addrs.sort();
    let mut want: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    want.sort();
    assert_eq!(addrs, want, "{report}");
    for entry in entries {
        assert!(n(&entry["orders_sent"]) > 0, "{entry}");
        assert!(n(&entry["trades"]) > 0, "{entry}");
        assert_eq!(n(&entry["wrong_node"]), 0, "{entry}");
    }
    assert_eq!(n(&report["unrouted"]), 0, "{report}");
}

#[test]
fn reads_the_seed_nodes_from_nats_or_with_auto_from_nats_url() {
    let _serial = serial();
    let bin = testkit::need_nats_server!();
    let nats = NatsServer::with_jetstream(&bin);
    let url = nats.url();
    // JetStream there, but no cluster yet: exit 1, and why.
    let out = dex_trader(&["--cluster", &url, "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("no turbo-dex cluster at {url}")),
        "{}",
        text(&out.stderr)
    );
    let dir = TempDir::new("trader-cluster-nats");
    let a = Node::in_cluster(&nats, &dir.join("a"));
    let b = Node::in_cluster(&nats, &dir.join("b"));
    wait_for_even_split(&a);
    for (cluster, nats_url) in [(url.as_str(), None), ("auto", Some(url.as_str()))] {
        let path = dir.join(format!("run-{}.json", cluster.len()));
        let out = routed_run(cluster, &[], &path, nats_url);
        testkit::assert_success(&out);
        let stderr = text(&out.stderr);
        // Where the seeds came from: the map the cluster published in NATS.
        assert!(
            stderr.contains("cluster: 2 node(s) from ") && stderr.contains(&url),
            "{cluster}: {stderr}"
        );
        let report = json(&path);
        assert!(n(&report["trades"]) > 0, "{report}");
        assert_traded_on(&report, &[&a, &b]);
    }
    drop((a, b));
}

#[test]
fn refuses_what_it_cannot_do_yet_and_a_server_outside_a_cluster() {
    let _serial = serial();
    for (args, what) in [
        (
            vec!["--cluster", "nats://127.0.0.1:4222,127.0.0.1:9000"],
            "mixes NATS URLs and node addresses",
        ),
        (vec!["--cluster", "http://127.0.0.1:4222"], "not a NATS URL"),
        (vec!["--cluster", ","], "at least one seed"),
        // Other flags' usage errors come before looking for the nodes.
        (
            vec!["--cluster", "auto", "--subscribe", "all"],
            "cannot be combined with --subscribe",
        ),
        (
            vec!["--cluster", "nats://127.0.0.1:1", "--spin", "1ms"],
            "cannot be combined with --spin",
        ),
        (
            vec!["--cluster", "127.0.0.1:1", "--spin", "1ms"],
            "cannot be combined with --spin",
        ),
    ] {
        let out = dex_trader(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(what),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // No --server and no --cluster: clap's usage error.
    let out = dex_trader(&["--duration", "1s"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // NATS that does not answer (a closed port), given or as NATS_URL:
    // exit 1, naming the server.
    let closed = format!("nats://127.0.0.1:{}", testkit::free_port());
    for (cluster, nats_url, what) in [
        (
            closed.as_str(),
            None,
            format!("cannot reach NATS at {closed}"),
        ),
        (
            "auto",
            Some(closed.as_str()),
            format!("NATS_URL={closed}: cannot reach NATS"),
        ),
    ] {
        let out = dex_trader_with(&["--cluster", cluster, "--duration", "1s"], nats_url);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cluster}: {stderr}");
        assert!(stderr.contains(&what), "{cluster}: {stderr}");
    }
    // A turbo-dex without --cluster refuses the map request: exit 1, why.
    let dir = TempDir::new("trader-cluster-none");
    let single = Node::start(&[], &dir.join("j"));
    let out = dex_trader(&["--cluster", &single.addr.to_string(), "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not in a cluster"),
        "{}",
        text(&out.stderr)
    );
}

/// `turbo-dex cluster claim SHARD --node ID --force`, retried until the
/// node that was killed no longer holds a live lease on the shard.
fn claim_when_free(nats: &NatsServer, shard: usize, node: u64) {
    let binary = turbo_dex_binary();
    let until = Instant::now() + DEADLINE;
    loop {
        let out = Command::new(binary)
            .args(["cluster", "claim", &shard.to_string(), "--node"])
            .arg(format!("{node:016x}"))
            .args(["--force", "--cluster", &nats.url()])
            .stdin(Stdio::null())
            .output()
            .expect("run turbo-dex cluster claim");
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < until,
            "cannot claim shard {shard}: {}",
            testkit::output_text(&out)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A node started in `journal`: its id (written before it listens).
fn node_id(journal: &Path) -> u64 {
    let text = std::fs::read_to_string(journal.join("node-id")).expect("node-id file");
    u64::from_str_radix(text.trim(), 16).expect("16 hex digits")
}

#[test]
fn follows_the_map_when_a_node_goes_and_another_takes_its_shards() {
    let _serial = serial();
    let bin = testkit::need_nats_server!();
    let nats = NatsServer::with_jetstream(&bin);
    let dir = TempDir::new("trader-cluster-move");
    let a = Node::in_cluster(&nats, &dir.join("a"));
    let mut b = Node::in_cluster(&nats, &dir.join("b"));
    let map = wait_for_even_split(&a);
    let id_of = |addr| {
        map.nodes
            .iter()
            .find(|n| n.addr == Some(addr))
            .expect("listed")
            .id
    };
    let id_b = id_of(b.addr);
    let shards_of_b: Vec<usize> = (0..map.owners.len())
        .filter(|&s| map.owners[s] == id_b)
        .collect();
    let path = dir.join("run.json");
    let trader = Command::new(env!("CARGO_BIN_EXE_dex-trader"))
        .args(["--quiet", "--cores", "0", "--warmup", "200ms", "--cluster"])
        .arg(a.addr.to_string())
        .args(["--mix", "match", "--connections", "2", "--batch", "20"])
        .args(["--duration", "12s", "--json"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dex-trader");
    // Trading on both; then b goes, c joins (owning nothing), and once
    // b's leases have run out the operator gives b's shards to c.
    std::thread::sleep(Duration::from_millis(1500));
    b.kill();
    let killed = Instant::now();
    let c = Node::in_cluster(&nats, &dir.join("c"));
    let id_c = node_id(&dir.join("c"));
    for &shard in &shards_of_b {
        claim_when_free(&nats, shard, id_c);
    }
    let claimed = killed.elapsed();
    let out = trader.wait_with_output().expect("dex-trader ends");
    testkit::assert_success(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("closed mid-run"), "{stdout}");
    let report = json(&path);
    assert!(n(&report["trades"]) > 0, "{report}");
    // The routes took the newer map: b's shards moved to c.
    assert!(
        n(&report["cluster_map_version_end"]) > n(&report["cluster_map_version"]),
        "claimed after {claimed:?}: {report}"
    );
    // Between b's going and the move, b's shards got nothing: unrouted.
    assert!(n(&report["unrouted"]) > 0, "{report}");
    let nodes = report["nodes"].as_array().expect("nodes");
    let node = |addr: SocketAddr| {
        nodes
            .iter()
            .find(|x| x["address"] == addr.to_string())
            .unwrap_or_else(|| panic!("{addr} in {report}"))
    };
    assert!(node(b.addr)["closed"].is_string(), "{report}");
    assert!(node(a.addr)["closed"].is_null(), "{report}");
    assert!(n(&node(a.addr)["trades"]) > 0, "{report}");
    // c, not in the map at the start, was connected and got b's shards.
    assert_eq!(nodes.len(), 3, "{report}");
    assert!(node(c.addr)["closed"].is_null(), "{report}");
    assert!(n(&node(c.addr)["orders_sent"]) > 0, "{report}");
    assert!(n(&node(c.addr)["trades"]) > 0, "{report}");
    assert!(
        report["warnings"]
            .to_string()
            .contains("closed the connection mid-run"),
        "{report}"
    );
}

/// Two `--replicas 2` nodes of four shards (journals `ja`, `jb`, on NATS
/// servers 0 and 1, with `extra` flags), started together so that each
/// registers within the other's join window and they split the shards.
fn replicated_pair(
    nats: &testkit::NatsCluster,
    ja: &Path,
    jb: &Path,
    extra: &[&str],
) -> (Node, Node) {
    let start = |i: usize, journal: &Path| {
        let url = nats.url(i);
        let mut args = vec!["--cluster", &url, "--shards", "4", "--replicas", "2"];
        args.extend_from_slice(extra);
        Node::start(&args, journal)
    };
    std::thread::scope(|s| {
        let a = s.spawn(|| start(0, ja));
        let b = s.spawn(|| start(1, jb));
        (a.join().expect("a starts"), b.join().expect("b starts"))
    })
}

/// `dex-trader --cluster SEEDS --verify` started in the background for
/// `duration`, `--mix match` over two connections in batches of 20, its
/// JSON report to `json`.
fn verifying_trader(seeds: &str, duration: &str, json: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_dex-trader"))
        .args(["--quiet", "--cores", "0", "--warmup", "200ms", "--cluster"])
        .arg(seeds)
        .args(["--mix", "match", "--connections", "2", "--batch", "20"])
        .args(["--duration", duration, "--verify", "--json"])
        .arg(json)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("NATS_URL")
        .spawn()
        .expect("start dex-trader")
}

/// `--cluster --verify` while an operator moves a shard (`turbo-dex cluster
/// move`, `--replicas 2`): the new owner detaches the sessions of the
/// shard's resting orders (PROTOCOL.md §8.11 rule 9), so their fills and
/// cancels reach no session, and the old owner, now the shard's standby,
/// closes the sessions that sent orders there. dex-trader sets those
/// orders aside when it hears of the new owner or of the close, pairs the
/// shard's trades only where both halves arrive, says so, and finds no
/// violation in the rest.
#[test]
fn verifies_across_a_shard_moved_mid_run() {
    let _serial = serial();
    let bin = testkit::need_nats_server!();
    let nats = testkit::NatsCluster::start(&bin, 3);
    let dir = TempDir::new("trader-cluster-verify-move");
    let (ja, jb) = (dir.join("a"), dir.join("b"));
    let (a, b) = replicated_pair(&nats, &ja, &jb, &[]);
    let map = wait_for_even_split(&a);
    let (ida, idb) = (node_id(&ja), node_id(&jb));
    let shard = map
        .owners
        .iter()
        .position(|&o| o == ida)
        .expect("a owns a shard");
    let path = dir.join("run.json");
    let trader = verifying_trader(&format!("{},{}", a.addr, b.addr), "6s", &path);
    // Trading on both (b's copy of the shard follows its stream); then the
    // shard moves to b.
    std::thread::sleep(Duration::from_millis(2500));
    let moved = Command::new(turbo_dex_binary())
        .args([
            "cluster",
            "move",
            &shard.to_string(),
            &format!("{idb:016x}"),
        ])
        .args(["--cluster", &nats.url(2)])
        .output()
        .expect("turbo-dex cluster move");
    testkit::assert_success(&moved);
    let out = trader.wait_with_output().expect("dex-trader ends");
    let report = verified_clean(&out, &path);
    assert_eq!(
        report["shards_taken_over"],
        serde_json::json!([shard]),
        "{report}"
    );
    assert!(
        report["warnings"]
            .to_string()
            .contains("passed to another node mid-run"),
        "{report}"
    );
    // b took orders and traded on the moved shard's symbols after the move:
    // both nodes traded. a follows b's records of the shard as its standby
    // now, so it closed its sessions that had sent orders there (their
    // orders belong to no session: SessionError ShardTakenOver, PROTOCOL.md
    // §8.11 rule 9); b closed none.
    for node in report["nodes"].as_array().expect("nodes") {
        assert!(n(&node["trades"]) > 0, "{node}");
        let closed = node["closed"].as_str();
        if node["node_id"] == format!("{ida:016x}") {
            // Named by the SessionError even when a write to the closed
            // connection fails first (a race, seen once in CI before the
            // writer left the naming to the reader).
            assert!(
                closed.is_some_and(|c| c.contains("shard taken over")),
                "{node}"
            );
        } else {
            assert!(closed.is_none(), "{node}");
        }
    }
    drop((a, b));
}

/// Sends `addr` an IOC order on the first symbol of each of `shards` (it
/// rests nowhere: nothing to trade with) until every one is acknowledged.
fn until_acknowledged(addr: SocketAddr, shards: &[u32]) {
    let until = Instant::now() + DEADLINE;
    let mut s = TcpStream::connect(addr).expect("connect to the node");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut out = Vec::new();
    wire::append_frame(&[Hello::new(1, 0, 0, "")], &mut out).expect("hello");
    s.write_all(&out).expect("send the hello");
    let decoder = Decoder::for_client(wire::MAX_FRAME_BYTES_LIMIT);
    let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
    // Shards not asked about count as acknowledged.
    let mut acknowledged = [true; SHARDS as usize];
    for &s in shards {
        acknowledged[s as usize] = false;
    }
    let mut id = 0u64;
    while !acknowledged.iter().all(|&a| a) {
        assert!(
            Instant::now() < until,
            "{addr} acknowledged {acknowledged:?}"
        );
        out.clear();
        for shard in (0..SHARDS).filter(|&s| !acknowledged[s as usize]) {
            id += 1;
            let order = wire::NewOrder::new(
                id << 8 | u64::from(shard),
                shard,
                wire::Side::Buy,
                wire::OrderType::Limit,
                wire::TimeInForce::Ioc,
                false,
                wire::SelfTradePrevention::CancelIncoming,
                1,
                1,
            );
            wire::append_frame(&[order], &mut out).expect("order");
        }
        s.write_all(&out).expect("send the orders");
        let wait = Instant::now() + Duration::from_secs(1);
        while Instant::now() < wait && !acknowledged.iter().all(|&a| a) {
            match s.read(&mut chunk) {
                Ok(0) => panic!("{addr} closed the connection"),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => continue,
            }
            let mut frames = decoder.frames(&buf);
            for f in frames.by_ref() {
                if let Frame::Accepted(list) = f {
                    for a in list.iter() {
                        acknowledged[(a.client_order_id.get() & 0xff) as usize] = true;
                    }
                }
            }
            let used = frames.consumed();
            buf.drain(..used);
        }
    }
}

/// `--cluster --verify` connected to one node only (it owns every shard)
/// when that node goes silent without closing anything (stopped with
/// SIGSTOP: the connection stays open, nothing comes back, as when its
/// network is cut). Its leases run out, the standby takes its shards over;
/// dex-trader, hearing no map for a while, asks the other node it knows of
/// (from the map), follows the shards there, sets the silent node's orders
/// aside, and trades on with no violation.
#[test]
fn finds_the_new_owner_when_its_only_node_goes_silent() {
    let _serial = serial();
    let bin = testkit::need_nats_server!();
    let nats = testkit::NatsCluster::start(&bin, 3);
    let dir = TempDir::new("trader-cluster-silent");
    let (ja, jb) = (dir.join("a"), dir.join("b"));
    let (mut a, b) = replicated_pair(&nats, &ja, &jb, &["--lease-ms", "1000"]);
    let map = wait_for_even_split(&a);
    let ida = node_id(&ja);
    // Every shard to a, so that dex-trader connects to a alone. (A shard's
    // stream exists once its owner stored an order: b stores one on each.)
    let of_b: Vec<u32> = (0..SHARDS)
        .filter(|&s| map.owners[s as usize] != ida)
        .collect();
    until_acknowledged(b.addr, &of_b);
    for &shard in &of_b {
        let moved = Command::new(turbo_dex_binary())
            .args([
                "cluster",
                "move",
                &shard.to_string(),
                &format!("{ida:016x}"),
            ])
            .args(["--cluster", &nats.url(2)])
            .output()
            .expect("turbo-dex cluster move");
        testkit::assert_success(&moved);
    }
    // As a answers it: a lists a shard it holds but does not serve yet
    // (still applying its stream) with no owner.
    let until = Instant::now() + DEADLINE;
    while map_of(a.addr).owners != vec![ida; 4] {
        assert!(Instant::now() < until, "a never served every shard");
        std::thread::sleep(Duration::from_millis(200));
    }
    // And acknowledges orders on each (its first publishes to the moved
    // shards' streams can wait on JetStream for a while).
    until_acknowledged(a.addr, &[0, 1, 2, 3]);
    let path = dir.join("run.json");
    let trader = verifying_trader(&a.addr.to_string(), "12s", &path);
    std::thread::sleep(Duration::from_millis(2000));
    let pid = a.child.id().to_string();
    let signal = |sig: &str| {
        let out = Command::new("kill")
            .args([sig, &pid])
            .output()
            .expect("run kill");
        testkit::assert_success(&out);
    };
    signal("-STOP");
    let out = trader.wait_with_output();
    signal("-CONT");
    let out = out.expect("dex-trader ends");
    let report = verified_clean(&out, &path);
    assert_eq!(
        report["shards_taken_over"],
        serde_json::json!([0, 1, 2, 3]),
        "{report}"
    );
    let nodes = report["nodes"].as_array().expect("nodes");
    let node = |addr: SocketAddr| {
        nodes
            .iter()
            .find(|x| x["address"] == addr.to_string())
            .unwrap_or_else(|| panic!("{addr} in {report}"))
    };
    // b, which owned nothing when dex-trader started, was found and traded.
    assert!(n(&node(a.addr)["trades"]) > 0, "{report}");
    assert!(n(&node(b.addr)["orders_sent"]) > 0, "{report}");
    assert!(n(&node(b.addr)["trades"]) > 0, "{report}");
    a.kill();
    drop(b);
}
