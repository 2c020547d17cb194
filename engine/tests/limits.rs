//! How much a client may trade, end to end against an in-process server:
//! the kill switch over the admin endpoint (with and without its token),
//! mass cancel, the dead-man's timer, the open-order caps, and the order entry rate with a
//! flooding session beside a well-behaved one.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use engine::server::{EngineKind, OrderEntryLimits, Server};
use wire::{
    CancelAfter, CancelReason, Heartbeat, MASS_CANCEL_ALL_SYMBOLS, MassCancel, NewOrder,
    RejectReason, SessionErrorCode,
};

const TOKEN: &str = "let-me-in";

/// A server on the test CPUs with an admin endpoint, 2 shards, 4 symbols.
fn start_admin(token: Option<&str>) -> (Server, SocketAddr) {
    let token = token.map(str::to_string);
    let server = start_with(&test_cpus(), 2, 4, EngineKind::Match, |cfg| {
        cfg.admin = Some("127.0.0.1:0".parse().unwrap());
        cfg.admin_token = token;
    });
    let admin = server.admin_addr().expect("admin endpoint");
    (server, admin)
}

/// A POST with an optional `Authorization` header: (status, body).
fn post(addr: SocketAddr, path: &str, authorization: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("admin answers");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {raw:?}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn accepted(c: &mut Client, coid: u64) {
    c.wait_for(
        |m| matches!(m, Msg::Accepted(a) if a.client_order_id.get() == coid),
        &format!("the accept of {coid}"),
    );
}

fn rejected(c: &mut Client, coid: u64) -> RejectReason {
    match c.wait_for(
        |m| matches!(m, Msg::Rejected(r) if r.client_order_id.get() == coid),
        &format!("the reject of {coid}"),
    ) {
        Msg::Rejected(r) => r.reason().unwrap(),
        _ => unreachable!(),
    }
}

/// The Canceled reports in `msgs`: (client order id, symbol, reason).
fn cancels(msgs: &[Msg]) -> Vec<(u64, u32, CancelReason)> {
    let mut v: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            Msg::Canceled(c) => Some((
                c.client_order_id.get(),
                c.symbol.get(),
                CancelReason::from_wire(c.reason).unwrap(),
            )),
            _ => None,
        })
        .collect();
    v.sort_by_key(|&(id, ..)| id);
    v
}

#[test]
fn the_kill_switch_needs_the_token_cancels_the_accounts_orders_and_blocks_until_unblocked() {
    // Without a configured token the POSTs are refused, and say why.
    let (server, admin) = start_admin(None);
    let (status, body) = post(admin, "/accounts/7/kill", Some("Bearer anything"));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--admin-token"), "{body}");
    server.stop();

    let (server, admin) = start_admin(Some(TOKEN));
    let (_, stats) = get(admin, "/stats");
    let json: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(json["config"]["kill_switch"], true, "{stats}");
    assert!(!stats.contains(TOKEN), "the token is never shown");
    let addr = server.local_addr();
    // Version 1 sessions: the kill switch is the operator's, not the protocol's.
    let mut a1 = Client::login_version(addr, 7, 0, 1);
    let mut a2 = Client::login_version(addr, 7, 0, 1);
    let mut b = Client::login_version(addr, 8, 0, 1);
    a1.send(&[buy(1, 0, 100, 1), buy(2, 1, 100, 2)]);
    a2.send(&[sell(3, 2, 200, 3)]);
    b.send(&[buy(4, 3, 100, 4)]);
    accepted(&mut a1, 1);
    accepted(&mut a1, 2);
    accepted(&mut a2, 3);
    accepted(&mut b, 4);

    // Wrong or missing credentials, a bad id, an unknown action.
    let path = "/accounts/7/kill";
    assert_eq!(post(admin, path, None).0, 401);
    assert_eq!(post(admin, path, Some("Bearer wrong")).0, 401);
    assert_eq!(post(admin, path, Some(TOKEN)).0, 401, "the Bearer scheme");
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(post(admin, "/accounts/x/kill", Some(&bearer)).0, 400);
    assert_eq!(post(admin, "/accounts/7/explode", Some(&bearer)).0, 405);
    assert_eq!(get(admin, path).0, 404, "GET is not a kill");

    let (status, body) = post(admin, path, Some(&bearer));
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("\"kill\""), "{body}");
    // Every order of account 7 is canceled, each to its owner session.
    let got = a1.collect_until(|m| matches!(m, Msg::Canceled(_)), 2, "a1's cancels");
    assert_eq!(
        cancels(&got),
        [(1, 0, CancelReason::Killed), (2, 1, CancelReason::Killed)]
    );
    let got = a2.collect_until(|m| matches!(m, Msg::Canceled(_)), 1, "a2's cancel");
    assert_eq!(cancels(&got), [(3, 2, CancelReason::Killed)]);
    // New orders of the account are refused on every shard; others trade on.
    a1.send(&[buy(5, 0, 100, 1), buy(6, 1, 100, 1)]);
    assert_eq!(rejected(&mut a1, 5), RejectReason::AccountBlocked);
    assert_eq!(rejected(&mut a1, 6), RejectReason::AccountBlocked);
    b.send(&[buy(7, 0, 100, 1)]);
    accepted(&mut b, 7);
    assert!(
        cancels(&b.drain_for(100)).is_empty(),
        "account 8 lost nothing"
    );

    // Unblock: the account trades again (the unblock is queued; the first
    // order after it that the shards see is accepted).
    let (status, _) = post(admin, "/accounts/7/unblock", Some(&bearer));
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut id = 100;
    loop {
        a2.send(&[buy(id, 0, 100, 1)]);
        let m = a2.wait_for(
            |m| m.coid() == Some(id) && matches!(m, Msg::Accepted(_) | Msg::Rejected(_)),
            "an answer",
        );
        if matches!(m, Msg::Accepted(_)) {
            break;
        }
        assert!(Instant::now() < deadline, "never unblocked: {m:?}");
        std::thread::sleep(Duration::from_millis(20));
        id += 1;
    }
    server.stop();
}

#[test]
fn mass_cancel_cancels_the_accounts_orders_on_a_symbol_or_all_and_version_1_is_refused() {
    let server = start(&test_cpus(), 2, 4, EngineKind::Match);
    let addr = server.local_addr();
    let mut a1 = Client::login_version(addr, 7, 0, 2);
    let mut a2 = Client::login_version(addr, 7, 0, 2);
    let mut b = Client::login_version(addr, 8, 0, 2);
    a1.send(&[buy(1, 0, 100, 1), buy(2, 1, 100, 2), buy(3, 2, 100, 3)]);
    a2.send(&[sell(4, 1, 200, 4), sell(5, 3, 200, 5)]);
    b.send(&[buy(6, 1, 100, 6)]);
    for id in 1..=3 {
        accepted(&mut a1, id);
    }
    accepted(&mut a2, 4);
    accepted(&mut a2, 5);
    accepted(&mut b, 6);

    // One symbol: the account's orders there, whoever owns them, reported
    // to the requester; a Heartbeat behind it marks the end.
    a1.send(&[MassCancel::new(50, 1)]);
    a1.send(&[Heartbeat { token: 51.into() }]);
    let got = a1.collect_until(|m| matches!(m, Msg::Heartbeat(_)), 1, "the echo");
    assert_eq!(
        cancels(&got),
        [
            (2, 1, CancelReason::Requested),
            (4, 1, CancelReason::Requested)
        ]
    );
    // All symbols: the rest of the account's orders.
    a2.send(&[MassCancel::new(52, MASS_CANCEL_ALL_SYMBOLS)]);
    a2.send(&[Heartbeat { token: 53.into() }]);
    let got = a2.collect_until(|m| matches!(m, Msg::Heartbeat(_)), 1, "the echo");
    assert_eq!(
        cancels(&got),
        [
            (1, 0, CancelReason::Requested),
            (3, 2, CancelReason::Requested),
            (5, 3, CancelReason::Requested)
        ]
    );
    // An unknown symbol is refused with the request's id.
    a2.send(&[MassCancel::new(54, 99)]);
    assert_eq!(rejected(&mut a2, 54), RejectReason::UnknownSymbol);
    // Account 8's order is still there.
    b.send(&[wire::OrderQuery::new(6, 1)]);
    match b.wait_for(|m| matches!(m, Msg::Status(_)), "the status") {
        Msg::Status(s) => assert_eq!(s.leaves_quantity.get(), 6),
        _ => unreachable!(),
    }
    // Version 1 sessions do not have it.
    let mut old = Client::login_version(addr, 7, 0, 1);
    old.send(&[MassCancel::new(55, MASS_CANCEL_ALL_SYMBOLS)]);
    assert_eq!(rejected(&mut old, 55), RejectReason::NotSupported);
    server.stop();
}

#[test]
fn a_cancel_after_not_refreshed_cancels_the_accounts_orders_and_a_refreshed_one_does_not() {
    let server = start(&test_cpus(), 2, 4, EngineKind::Match);
    let addr = server.local_addr();
    // Account 7: the silent session and another of its sessions; account
    // 8 refreshes its timer; account 9 arms none.
    let mut dead = Client::login_version(addr, 7, 0, 2);
    let mut other = Client::login_version(addr, 7, 0, 2);
    let mut live = Client::login_version(addr, 8, 0, 2);
    let mut bystander = Client::login_version(addr, 9, 0, 2);
    dead.send(&[buy(1, 0, 100, 1), buy(2, 1, 100, 2), buy(3, 2, 100, 3)]);
    other.send(&[sell(4, 3, 200, 4)]);
    live.send(&[buy(5, 1, 100, 5)]);
    bystander.send(&[buy(6, 2, 100, 6)]);
    for id in 1..=3 {
        accepted(&mut dead, id);
    }
    accepted(&mut other, 4);
    accepted(&mut live, 5);
    accepted(&mut bystander, 6);

    let timeout_ms = 1_000;
    let armed = Instant::now();
    dead.send(&[CancelAfter::new(timeout_ms)]);
    live.send(&[CancelAfter::new(timeout_ms)]);
    // The silent session sends Heartbeats (they do not refresh the timer);
    // the live one sends a CancelAfter every 200 ms.
    let mut got = Vec::new();
    let fired = loop {
        got.extend(dead.drain_for(200));
        if cancels(&got).len() == 4 {
            break armed.elapsed();
        }
        assert!(
            armed.elapsed() < Duration::from_millis(3 * u64::from(timeout_ms)),
            "the timer did not fire: {got:?}"
        );
        dead.send(&[Heartbeat { token: 1.into() }]);
        live.send(&[CancelAfter::new(timeout_ms)]);
    };
    // Within the bound: not before the timeout, and within it plus the
    // housekeeping tick and slack for a loaded test machine.
    assert!(
        fired >= Duration::from_millis(u64::from(timeout_ms)) - Duration::from_millis(50),
        "fired early: {fired:?}"
    );
    assert!(
        fired <= Duration::from_millis(u64::from(timeout_ms) + 1_000),
        "fired late: {fired:?}"
    );
    // Every live order of account 7, whichever session owns it, reported
    // to the session whose timer ran out, as a MassCancel of all symbols.
    assert_eq!(
        cancels(&got),
        [
            (1, 0, CancelReason::Requested),
            (2, 1, CancelReason::Requested),
            (3, 2, CancelReason::Requested),
            (4, 3, CancelReason::Requested)
        ]
    );
    // The refreshed timer and the unarmed account kept their orders.
    for (c, id, symbol, qty) in [(&mut live, 5, 1, 5), (&mut bystander, 6, 2, 6)] {
        c.send(&[wire::OrderQuery::new(id, symbol)]);
        match c.wait_for(|m| matches!(m, Msg::Status(_)), "the status") {
            Msg::Status(s) => assert_eq!(s.leaves_quantity.get(), qty, "order {id}"),
            _ => unreachable!(),
        }
    }
    // The session stays connected and its timer is disarmed: a new order
    // rests past the old timeout.
    dead.send(&[buy(7, 0, 100, 7)]);
    accepted(&mut dead, 7);
    let after = dead.drain_for(u64::from(timeout_ms) + 300);
    assert!(cancels(&after).is_empty(), "{after:?}");
    live.send(&[CancelAfter::new(0)]);
    // Out of range, and version 1 sessions, are refused.
    dead.send(&[CancelAfter::new(999)]);
    assert_eq!(rejected(&mut dead, 999), RejectReason::NotSupported);
    let mut old = Client::login_version(addr, 7, 0, 1);
    old.send(&[CancelAfter::new(timeout_ms)]);
    assert_eq!(rejected(&mut old, 1_000), RejectReason::NotSupported);
    server.stop();
}

#[test]
fn an_account_past_its_open_order_cap_is_refused_and_others_are_not() {
    // One core, one shard: both symbols in it.
    let server = start_with(&test_cpus()[..1], 1, 2, EngineKind::Match, |cfg| {
        cfg.shard.account_orders_max = 3;
        cfg.shard.account_symbol_orders_max = 2;
    });
    let addr = server.local_addr();
    let mut a = Client::login(addr, 7, 0);
    let mut b = Client::login(addr, 8, 0);
    a.send(&[buy(1, 0, 100, 1), buy(2, 0, 99, 1), buy(3, 0, 98, 1)]);
    accepted(&mut a, 1);
    accepted(&mut a, 2);
    assert_eq!(rejected(&mut a, 3), RejectReason::TooManyOpenOrders);
    a.send(&[buy(4, 1, 100, 1), buy(5, 1, 99, 1)]);
    accepted(&mut a, 4);
    assert_eq!(rejected(&mut a, 5), RejectReason::TooManyOpenOrders);
    b.send(&[buy(6, 0, 100, 1), buy(7, 1, 100, 1)]);
    accepted(&mut b, 6);
    accepted(&mut b, 7);
    // A fill frees a place: B sells into A's best bid.
    b.send(&[sell(8, 0, 100, 1)]);
    a.wait_for(|m| matches!(m, Msg::Fill(_)), "a's fill");
    a.send(&[buy(9, 0, 97, 1)]);
    accepted(&mut a, 9);
    server.stop();
}

#[test]
fn a_flooding_session_is_limited_then_closed_while_a_well_behaved_one_goes_on() {
    let limits = OrderEntryLimits {
        orders_per_second: 1_000,
        burst: 100,
        flood_rejects: 5_000,
        flood_window_ms: 1_000,
    };
    let server = start_with(&test_cpus(), 2, 4, EngineKind::Match, |cfg| {
        cfg.order_limits = limits;
    });
    let addr = server.local_addr();
    let well = std::thread::spawn(move || {
        // 20 orders every 50 ms: 400 a second, within the rate.
        let mut c = Client::login(addr, 8, 0);
        let started = Instant::now();
        let mut id = 0;
        for _ in 0..10 {
            let orders: Vec<NewOrder> = (0..20)
                .map(|_| {
                    id += 1;
                    ioc(id, (id % 4) as u32, wire::Side::Buy, 100, 1)
                })
                .collect();
            c.send(&orders);
            let got = c.collect_until(
                |m| matches!(m, Msg::Canceled(x) if x.client_order_id.get() == id),
                1,
                "the round's last answer",
            );
            assert!(
                !got.iter().any(|m| matches!(m, Msg::Rejected(_))),
                "the well-behaved session was refused: {got:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (id, started.elapsed())
    });

    let mut flood = Client::login(addr, 7, 0);
    let started = Instant::now();
    let mut sent = 0u64;
    // 20 frames of 1,000 IOC orders at once: far past 100 + 1,000/s.
    for frame in 0..20u64 {
        let orders: Vec<NewOrder> = (0..1_000)
            .map(|i| {
                let id = frame * 1_000 + i + 1;
                ioc(id, (id % 4) as u32, wire::Side::Sell, 100, 1)
            })
            .collect();
        flood
            .stream
            .write_all(&{
                let mut b = Vec::new();
                wire::append_frame(&orders, &mut b).unwrap();
                b
            })
            .ok();
        sent += 1_000;
    }
    let got = flood.wait_closed();
    let flood_secs = started.elapsed().as_secs_f64();
    let accepted = got.iter().filter(|m| matches!(m, Msg::Accepted(_))).count();
    let limited = got
        .iter()
        .filter(|m| matches!(m, Msg::Rejected(r) if r.reason() == Ok(RejectReason::RateLimited)))
        .count();
    let error = got.iter().find_map(|m| match m {
        Msg::Error(e) => Some(*e),
        _ => None,
    });
    let error = error.expect("a SessionError says why");
    assert_eq!(error.code(), Ok(SessionErrorCode::OrderFlood));
    // The burst and what the rate refilled meanwhile got through; the
    // flood rule allowed 5,000 refusals and closed on the next.
    assert!((100..1_000).contains(&accepted), "{accepted} accepted");
    // 5,001 within one window (more only if the machine took over a second).
    assert!(
        limited > 5_000,
        "refused until the flood rule closed it: {limited}"
    );
    assert_eq!(
        accepted + limited,
        got.iter()
            .filter(|m| matches!(m, Msg::Accepted(_) | Msg::Rejected(_)))
            .count(),
        "every order has one answer, and nothing after the close"
    );

    let (well_orders, well_time) = well.join().unwrap();
    println!(
        "flooding session: {sent} orders sent, {accepted} accepted, {limited} refused \
         (RateLimited), closed after {flood_secs:.3} s; well-behaved session: {well_orders} \
         orders, all answered, in {:.3} s ({:.0} orders/s with its own pauses)",
        well_time.as_secs_f64(),
        well_orders as f64 / well_time.as_secs_f64()
    );
    server.stop();
}

#[test]
fn turbo_dex_admin_kill_and_unblock_call_the_endpoint_with_the_token() {
    let (server, admin) = start_admin(Some(TOKEN));
    let addr = server.local_addr();
    let mut a = Client::login(addr, 7, 0);
    a.send(&[buy(1, 0, 100, 1)]);
    accepted(&mut a, 1);
    let run = |args: &[&str], token: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_turbo-dex"));
        cmd.arg("admin")
            .args(args)
            .args(["--admin", &admin.to_string()]);
        cmd.env_remove("TURBO_DEX_ADMIN_TOKEN");
        if let Some(t) = token {
            cmd.env("TURBO_DEX_ADMIN_TOKEN", t);
        }
        let out = cmd.output().expect("turbo-dex runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // No token, or a wrong one: refused, and it says so.
    let (ok, _, err) = run(&["kill", "7"], None);
    assert!(!ok && err.contains("TURBO_DEX_ADMIN_TOKEN"), "{err}");
    let (ok, _, err) = run(&["kill", "7"], Some("nope"));
    assert!(!ok && err.contains("401"), "{err}");
    // With it: the account's order is canceled by the kill switch.
    let (ok, out, err) = run(&["kill", "7"], Some(TOKEN));
    assert!(ok, "{out}{err}");
    assert!(out.contains("kill account 7"), "{out}");
    let got = a.collect_until(|m| matches!(m, Msg::Canceled(_)), 1, "the kill");
    assert_eq!(cancels(&got), [(1, 0, CancelReason::Killed)]);
    let (ok, out, err) = run(&["unblock", "7"], Some(TOKEN));
    assert!(ok && out.contains("unblock account 7"), "{out}{err}");
    server.stop();
}

#[test]
fn the_kill_switch_is_journaled_and_a_restart_keeps_the_account_blocked() {
    use engine::journal::JournalConfig;
    use engine::server::durable::JournalSettings;
    let dir = TempDir::new("kill-journal");
    let start = || {
        let dir = dir.path().to_path_buf();
        start_with(&test_cpus(), 2, 4, EngineKind::Match, move |cfg| {
            cfg.admin = Some("127.0.0.1:0".parse().unwrap());
            cfg.admin_token = Some(TOKEN.to_string());
            cfg.journal = Some(JournalSettings {
                config: JournalConfig {
                    dir,
                    segment_bytes: 8 << 20,
                    snapshot_every_records: 1 << 30,
                },
                fsync: true,
            });
        })
    };
    let server = start();
    let admin = server.admin_addr().unwrap();
    let mut a = Client::login(server.local_addr(), 7, 0);
    a.send(&[buy(1, 0, 100, 1), buy(2, 1, 100, 1)]);
    accepted(&mut a, 1);
    accepted(&mut a, 2);
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(post(admin, "/accounts/7/kill", Some(&bearer)).0, 202);
    let got = a.collect_until(|m| matches!(m, Msg::Canceled(_)), 2, "the kill");
    assert_eq!(
        cancels(&got),
        [(1, 0, CancelReason::Killed), (2, 1, CancelReason::Killed)]
    );
    a.send(&[buy(3, 0, 100, 1)]);
    assert_eq!(rejected(&mut a, 3), RejectReason::AccountBlocked);
    drop(a);
    server.stop();

    // The journal replays the kill: the account is still blocked on every
    // shard, its orders still gone, until an unblock.
    let server = start();
    let admin = server.admin_addr().unwrap();
    let mut a = Client::login(server.local_addr(), 7, 0);
    a.send(&[buy(4, 0, 100, 1), buy(5, 1, 100, 1)]);
    assert_eq!(rejected(&mut a, 4), RejectReason::AccountBlocked);
    assert_eq!(rejected(&mut a, 5), RejectReason::AccountBlocked);
    a.send(&[wire::OrderQuery::new(1, 0)]);
    match a.wait_for(|m| matches!(m, Msg::Status(_)), "the status") {
        Msg::Status(s) => assert_eq!(s.state, wire::OrderState::Canceled.to_wire()),
        _ => unreachable!(),
    }
    assert_eq!(post(admin, "/accounts/7/unblock", Some(&bearer)).0, 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut id = 10;
    loop {
        a.send(&[buy(id, 1, 100, 1)]);
        let m = a.wait_for(
            |m| m.coid() == Some(id) && matches!(m, Msg::Accepted(_) | Msg::Rejected(_)),
            "an answer",
        );
        if matches!(m, Msg::Accepted(_)) {
            break;
        }
        assert!(Instant::now() < deadline, "never unblocked: {m:?}");
        std::thread::sleep(Duration::from_millis(20));
        id += 1;
    }
    server.stop();
}
