//! The admin endpoint (`/health`, `/ready`, `/stats`, `/metrics`) of the
//! real server: its counters equal what the clients saw, it passes
//! promtool, a real Prometheus scrapes it, `/ready` says "recovering"
//! while a journal replays, and abuse of it does not disturb trading.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use engine::journal::JournalConfig;
use engine::server::durable::JournalSettings;
use engine::server::{EngineKind, Server};
use testkit::TempDir;
use wire::*;

/// The value of one sample line of a Prometheus exposition.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn admin_server(journal: Option<&TempDir>) -> Server {
    let dir = journal.map(|d| d.path().to_path_buf());
    start_with(&test_cpus()[..1], 1, 4, EngineKind::Match, move |cfg| {
        cfg.admin = Some("127.0.0.1:0".parse().unwrap());
        cfg.journal = dir.map(|dir| JournalSettings {
            config: JournalConfig {
                dir,
                segment_bytes: 64 << 20,
                snapshot_every_records: 1 << 40,
            },
            fsync: false,
        });
    })
}

/// Polls `f` until it returns Some (counters are published within
/// milliseconds, not at once).
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two trades, one unknown-symbol reject, 5 order messages in all.
fn trade_a_little(addr: SocketAddr) {
    let mut maker = Client::login(addr, 1, 0);
    let mut taker = Client::login(addr, 2, 0);
    maker.send(&[sell(1, 0, 100, 1), sell(2, 0, 101, 1), sell(3, 0, 102, 1)]);
    for id in 1..=3 {
        maker.wait_for(
            |m| matches!(m, Msg::Accepted(a) if a.client_order_id.get() == id),
            "maker accepts",
        );
    }
    taker.send(&[buy(10, 0, 101, 2), buy(11, 9, 100, 1)]);
    let got = taker.collect_until(
        |m| matches!(m, Msg::Fill(_) | Msg::Rejected(_)),
        3,
        "two fills and the unknown symbol",
    );
    assert!(got.iter().any(|m| matches!(m, Msg::Rejected(_))), "{got:?}");
}

#[test]
fn stats_and_metrics_count_what_the_clients_saw() {
    let server = admin_server(None);
    let admin = server.admin_addr().expect("admin endpoint");
    trade_a_little(server.local_addr());
    let stats: serde_json::Value = eventually("/stats to count the trades", || {
        let (status, body) = get(admin, "/stats");
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        // The clients have left by now (trade_a_little dropped them).
        (v["trades"] == 2
            && v["rejects_by_reason"]["unknown_symbol"] == 1
            && v["connections"]["closed_by_reason"]["peer_closed"] == 2)
            .then_some(v)
    });
    assert_eq!(stats["orders"], 5);
    assert_eq!(stats["rejects"], 1);
    assert_eq!(stats["workers"], 1);
    assert_eq!(stats["shards"], 1);
    assert_eq!(stats["connections"]["current"], 0);
    assert_eq!(stats["connections"]["accepted"], 2);
    assert_eq!(
        stats["shard_stats"][0]["orders"], 4,
        "the reject never reached the shard"
    );
    assert_eq!(stats["shard_stats"][0]["trades"], 2);
    assert_eq!(stats["config"]["auth"], false);
    assert!(stats["timestamp"].as_f64().unwrap() > 1.7e9);
    let (status, text) = get(admin, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "turbo_dex_orders_total"), Some(5.0), "{text}");
    assert_eq!(metric(&text, "turbo_dex_trades_total"), Some(2.0));
    assert_eq!(
        metric(&text, "turbo_dex_rejects_total{reason=\"unknown_symbol\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "turbo_dex_rejects_total{reason=\"book_full\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "turbo_dex_connections{core=\"0\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &text,
            "turbo_dex_connections_closed_total{reason=\"peer_closed\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, "turbo_dex_shard_trades_total{shard=\"0\"}"),
        Some(2.0)
    );
    assert_eq!(metric(&text, "turbo_dex_ready"), Some(1.0));
    assert!(text.contains("turbo_dex_build_info{version=\""));
    assert!(text.contains("turbo_dex_journal_write_seconds_bucket{le=\"+Inf\"} 0"));
    server.stop();
}

#[test]
fn the_stats_schema_keeps_its_field_names() {
    let server = admin_server(None);
    let admin = server.admin_addr().unwrap();
    let (_, body) = get(admin, "/stats");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "bytes_in",
            "bytes_out",
            "commands",
            "config",
            "connections",
            "cores",
            "internal_errors",
            "journal",
            "market_data",
            "orders",
            "rates",
            "ready",
            "rejects",
            "rejects_by_reason",
            "reports",
            "reports_orphaned",
            "shard_stats",
            "shards",
            "snapshots",
            "timestamp",
            "trades",
            "uptime_seconds",
            "version",
            "workers",
        ]
    );
    let fields = |o: &serde_json::Value| {
        let mut k: Vec<String> = o.as_object().unwrap().keys().cloned().collect();
        k.sort_unstable();
        k.join(",")
    };
    assert_eq!(
        fields(&v["connections"]),
        "accepted,closed_by_reason,closed_on_error,current"
    );
    assert_eq!(
        fields(&v["rates"]),
        "orders_per_second,reports_per_second,trades_per_second,window_seconds"
    );
    assert_eq!(
        fields(&v["journal"]),
        "bytes,not_durable_rejects,replicated_batches,replication_seconds_mean,write_seconds_mean,writes"
    );
    assert_eq!(fields(&v["snapshots"]), "seconds,taken");
    assert_eq!(
        fields(&v["market_data"]),
        "cut_offs,messages,messages_per_second,nats_dropped,snapshot_rows,snapshot_seconds,snapshots,subscribes"
    );
    assert_eq!(
        fields(&v["cores"][0]),
        "connections,core,cpu,iterations,load,orders,ring_high_water_messages"
    );
    assert_eq!(fields(&v["shard_stats"][0]), "orders,trades");
    server.stop();
}

#[test]
fn health_ready_and_http_errors() {
    let server = admin_server(None);
    let admin = server.admin_addr().unwrap();
    let (status, body) = get(admin, "/health");
    assert_eq!((status, body.trim()), (200, r#"{"status":"ok"}"#));
    let (status, body) = get(admin, "/ready");
    assert_eq!((status, body.trim()), (200, r#"{"status":"ready"}"#));
    assert_eq!(get(admin, "/nope").0, 404);
    assert_eq!(http(admin, "POST", "/stats").0, 405);
    // Garbage gets a 400 (or a close), and the endpoint keeps answering.
    let mut s = TcpStream::connect(admin).unwrap();
    s.write_all(b"\x00\x01 not http\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.is_empty() || raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert_eq!(get(admin, "/health").0, 200);
    server.stop();
}

#[test]
fn metrics_pass_promtool() {
    if !testkit::have("promtool") {
        testkit::skip!(
            "promtool not installed (scripts/test.sh installs the Debian package prometheus)"
        );
        return;
    }
    let dir = TempDir::new("admin-promtool");
    let server = admin_server(Some(&dir));
    let admin = server.admin_addr().unwrap();
    trade_a_little(server.local_addr());
    let text = eventually("a journal write in /metrics", || {
        let (_, text) = get(admin, "/metrics");
        metric(&text, "turbo_dex_journal_write_seconds_count")
            .filter(|n| *n > 0.0)
            .map(|_| text)
    });
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();
}

/// Writes a journal of `n` IOC orders (none rests, all are journaled).
fn write_journal(dir: &TempDir, n: u64) {
    let server = admin_server(Some(dir));
    let mut c = Client::login(server.local_addr(), 1, 0);
    let batch = 2_000;
    for first in (0..n).step_by(batch) {
        let orders: Vec<NewOrder> = (first..(first + batch as u64).min(n))
            .map(|i| ioc(i + 1, (i % 4) as u32, Side::Buy, 100, 1))
            .collect();
        c.send(&orders);
    }
    c.wait_for(
        |m| matches!(m, Msg::Canceled(x) if x.client_order_id.get() == n),
        "the last order's answer",
    );
    server.stop();
}

#[test]
fn ready_is_503_while_the_journal_replays_then_200() {
    let dir = TempDir::new("admin-recovery");
    write_journal(&dir, 200_000);
    let cpu = test_cpus()[0].to_string();
    let mut child = testkit::turbo_dex(env!("CARGO_BIN_EXE_turbo-dex"), &cpu)
        .args(["--symbols", "4", "--shards", "1", "--quiet"])
        // The limits the journal was written with (common::start_with).
        .args(["--orders-per-shard", "16384", "--levels-per-side", "1024"])
        // ...without open-order caps per account (ServerConfig's default).
        .args(["--max-open-orders-per-account", "4294967295"])
        .args([
            "--journal",
            dir.path().to_str().unwrap(),
            "--fsync",
            "never",
        ])
        .args(["--snapshot-every", "1000000000"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().unwrap().unwrap();
    let admin: SocketAddr = first
        .strip_prefix("turbo-dex admin listening on ")
        .unwrap_or_else(|| panic!("the admin line first: {first:?}"))
        .parse()
        .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if TcpStream::connect(admin).is_err() {
            seen.push((0, "the admin endpoint went away".into()));
            break;
        }
        let (status, body) = get(admin, "/ready");
        if seen.last().map(|(s, _)| *s) != Some(status) {
            seen.push((status, body));
        }
        if status == 200 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    let _ = stderr.read_to_string(&mut err);
    assert!(
        matches!(&seen[..], [(503, why), (200, _)] if why.contains("recovering")),
        "{seen:?}\n{err}"
    );
    // Health holds throughout (the cores were not even running yet).
}

#[test]
fn a_real_prometheus_scrapes_it() {
    if !testkit::have("prometheus") {
        testkit::skip!("prometheus not installed (scripts/test.sh installs the Debian package)");
        return;
    }
    let server = admin_server(None);
    let admin = server.admin_addr().unwrap();
    trade_a_little(server.local_addr());
    let dir = TempDir::new("admin-prometheus");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    dir.write(
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: turbo-dex\n    static_configs:\n      - targets: ['{admin}']\n"
        ),
    );
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.str("prometheus.yml")))
        .arg(format!("--storage.tsdb.path={}", dir.str("data")))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let prom: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let value = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = TcpStream::connect(prom)
                .ok()
                .map(|_| get(prom, "/api/v1/query?query=turbo_dex_orders_total"))
                .and_then(|(status, body)| {
                    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                    (status == 200).then_some(())?;
                    v["data"]["result"][0]["value"][1]
                        .as_str()
                        .and_then(|s| s.parse::<f64>().ok())
                });
            if got.is_some() || Instant::now() > deadline {
                break got;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert_eq!(value, Some(5.0), "Prometheus's turbo_dex_orders_total");
    server.stop();
}

#[test]
fn abuse_of_the_admin_endpoint_does_not_disturb_trading() {
    let server = admin_server(None);
    let admin = server.admin_addr().unwrap();
    // Many idle connections, half-sent requests and garbage at once.
    let mut abusers = Vec::new();
    for i in 0..100 {
        if let Ok(mut s) = TcpStream::connect(admin) {
            let _ = match i % 3 {
                0 => s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x"),
                1 => s.write_all(b"\xff\xfe garbage\r\n\r\n"),
                _ => Ok(()),
            };
            abusers.push(s);
        }
    }
    let started = Instant::now();
    let mut maker = Client::login(server.local_addr(), 1, 0);
    let mut taker = Client::login(server.local_addr(), 2, 0);
    for id in 1..=50u64 {
        maker.send(&[sell(id, 1, 100, 1)]);
        taker.send(&[buy(id, 1, 100, 1)]);
        taker.wait_for(
            |m| matches!(m, Msg::Fill(f) if f.client_order_id.get() == id),
            "each trade",
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "trading took {:?}",
        started.elapsed()
    );
    drop(abusers);
    // And the endpoint recovers: the connection slots free up.
    let health = eventually("the endpoint to answer again", || {
        TcpStream::connect(admin).ok()?;
        let (status, _) = get(admin, "/health");
        (status == 200).then_some(status)
    });
    assert_eq!(health, 200);
    let fin = server.stop();
    assert_eq!(fin.total.trades, 50);
}

#[test]
fn the_dashboard_and_the_scrape_config_name_real_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("scripts/grafana-turbo-dex.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let server = admin_server(None);
    let (_, text) = get(server.admin_addr().unwrap(), "/metrics");
    server.stop();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("turbo_dex_"));
            for name in names {
                let family = name.strip_suffix("_bucket").unwrap_or(name);
                assert!(
                    text.contains(&format!("# TYPE {family} ")),
                    "panel {:?} uses {name}, which /metrics does not have",
                    panel["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "only {checked} metric names checked");
    if !testkit::have("promtool") {
        testkit::skip!(
            "promtool not installed: the dashboard was checked, the scrape configuration was not"
        );
        return;
    }
    {
        let out = Command::new("promtool")
            .args(["check", "config"])
            .arg(root.join("scripts/prometheus.yml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr)
        );
    }
}
