//! Memory with many idle connections that never send their Hello: the
//! server runs in this process, and this file holds this one test, so the
//! process's resident set is the server's and the test's alone (other tests
//! of a binary run on threads beside it and would blur it).

mod common;

use std::time::{Duration, Instant};

use common::*;
use engine::server::EngineKind;

/// The resident set of this process (the server runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// The bound README "Accounts, limits and security" documents for an idle
/// connection that has not sent its Hello (the server's part: slab entry,
/// empty input buffer, output buffer reserved but not touched).
const IDLE_CONN_RSS_BOUND_KIB: u64 = 16;

#[test]
fn a_thousand_idle_connections_before_the_hello_stay_small() {
    const CONNS: u64 = 1_000;
    let server = start_with(&test_cpus(), 2, 4, EngineKind::Match, |cfg| {
        cfg.max_connections_per_address = 2 * CONNS as u32;
        cfg.logon_timeout_ms = 60_000;
    });
    let addr = server.local_addr();
    let before = rss_kib();
    let conns: Vec<std::net::TcpStream> = (0..CONNS)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // Wait until the server has accepted them all.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.sample().total().conns_accepted < CONNS {
        assert!(
            Instant::now() < deadline,
            "accepted {:?}",
            server.sample().total().conns_accepted
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let after = rss_kib();
    let per_conn = after.saturating_sub(before) * 1024 / CONNS;
    eprintln!("{CONNS} idle connections: RSS {before} KiB -> {after} KiB, {per_conn} bytes each");
    assert!(
        after.saturating_sub(before) < CONNS * IDLE_CONN_RSS_BOUND_KIB,
        "RSS grew {} KiB for {CONNS} idle connections",
        after - before
    );
    drop(conns);
    server.stop();
}
