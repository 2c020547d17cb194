//! Who may connect and log on (README "Accounts, limits and security"):
//! passwords, the delay and the per-address limit on failed logons,
//! sessions per account, connections per address, the logon and frame
//! deadlines (memory with many idle connections: tests/idle_memory.rs,
//! alone in its process so that RSS is its own). A real server runs
//! in-process on 127.0.0.1; the only timing asserts are "closed within the
//! documented bound plus slack" and "a refusal is not faster than its delay".

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Params, Version};
use common::*;
use engine::accounts::{Accounts, hash_password_with};
use engine::server::{EngineKind, Server, ServerConfig};
use wire::*;

/// The delay of a wrong password (limits.rs), and the slack a loaded
/// 2-core machine gets on top of a bound.
const DELAY: Duration = Duration::from_secs(1);
const SLACK: Duration = Duration::from_secs(3);

/// Cheap argon2 parameters: these tests check behaviour, not cost (the
/// flood test uses the real parameters).
fn cheap_hash(password: &str) -> String {
    let argon = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(256, 1, 1, None).unwrap(),
    );
    hash_password_with(&argon, password.as_bytes(), &[3; 16]).unwrap()
}

/// alice (1001, "alpha"), bob (1002, "bravo"), carol (1003, "charlie", at
/// most 2 sessions), dave (1004, "delta", only from 10.0.0.0/8), erin
/// (1005, "echo", only from 127.0.0.1).
fn accounts() -> Arc<Accounts> {
    let text = format!(
        "# test accounts\n1001 alice {}\n1002 bob {}\n1003 carol {} max_sessions=2\n\
         1004 dave {} allow=10.0.0.0/8\n1005 erin {} allow=192.168.0.0/16,127.0.0.1\n",
        cheap_hash("alpha"),
        cheap_hash("bravo"),
        cheap_hash("charlie"),
        cheap_hash("delta"),
        cheap_hash("echo")
    );
    Arc::new(Accounts::parse(&text).unwrap())
}

fn start_accounts(tweak: impl FnOnce(&mut ServerConfig)) -> Server {
    let accounts = accounts();
    start_with(&test_cpus(), 2, 4, EngineKind::Match, |cfg| {
        cfg.accounts = Some(accounts);
        tweak(cfg);
    })
}

/// Sends a version 2 Hello with `password` (and `then`, in the same write).
fn hello(addr: SocketAddr, account: u64, password: &str, then: &[u8]) -> Client {
    let mut c = Client::connect(addr);
    let mut out = Vec::new();
    FrameWriter::new(&mut out).push(&Hello::new(account, 0, 0, password));
    out.extend_from_slice(then);
    c.send_raw(&out);
    c
}

/// Logs on with the password; panics unless the HelloAck comes.
fn logon(addr: SocketAddr, account: u64, password: &str) -> Client {
    let mut c = hello(addr, account, password, &[]);
    let Msg::Ack(ack) = c.wait_for(|m| matches!(m, Msg::Ack(_)), "hello ack") else {
        unreachable!()
    };
    c.session = ack.session_id.get();
    c
}

/// The SessionError a closed connection got, and how long the close took.
fn refusal(c: &mut Client, since: Instant) -> (SessionError, Duration) {
    let msgs = c.wait_closed();
    let elapsed = since.elapsed();
    let e = msgs
        .iter()
        .find_map(|m| match m {
            Msg::Error(e) => Some(*e),
            _ => None,
        })
        .unwrap_or_else(|| panic!("a SessionError before the close: {msgs:?}"));
    assert!(
        !msgs.iter().any(|m| matches!(m, Msg::Ack(_))),
        "no HelloAck: {msgs:?}"
    );
    (e, elapsed)
}

fn code(e: &SessionError) -> SessionErrorCode {
    e.code().unwrap()
}

fn text(e: &SessionError) -> String {
    String::from_utf8_lossy(&e.text)
        .trim_end_matches('\0')
        .to_string()
}

#[test]
fn logon_needs_the_accounts_password() {
    let server = start_accounts(|_| {});
    let addr = server.local_addr();
    let mut alice = logon(addr, 1001, "alpha");
    alice.send(&[buy(1, 0, 100, 5)]);
    alice.wait_for(|m| matches!(m, Msg::Accepted(_)), "accept");

    // Wrong password, unknown account, another account's password: refused
    // after the delay, never faster.
    for (account, password) in [(1001, "alphA"), (4242, "alpha"), (1002, "alpha")] {
        let since = Instant::now();
        let mut c = hello(addr, account, password, &[]);
        let (e, took) = refusal(&mut c, since);
        assert_eq!(
            code(&e),
            SessionErrorCode::AuthenticationFailed,
            "{}",
            text(&e)
        );
        assert!(took >= DELAY - Duration::from_millis(50), "{took:?}");
        assert!(took < DELAY + SLACK, "{took:?}");
    }

    // An account may be limited to source networks.
    let _erin = logon(addr, 1005, "echo");
    let since = Instant::now();
    let mut dave = hello(addr, 1004, "delta", &[]);
    let (e, took) = refusal(&mut dave, since);
    assert_eq!(code(&e), SessionErrorCode::AuthenticationFailed);
    assert!(took >= DELAY - Duration::from_millis(50), "{took:?}");

    // A version 1 Hello: accounts need version 2, refused at once.
    let mut c = Client::connect(addr);
    let mut hello1 = Hello::new(1001, 0, 0, "alpha");
    hello1.protocol_version = 1.into();
    let mut out = Vec::new();
    FrameWriter::new(&mut out).with_version(1).push(&hello1);
    c.send_raw(&out);
    let (e, _) = refusal(&mut c, Instant::now());
    assert_eq!(code(&e), SessionErrorCode::AuthenticationFailed);
    assert!(text(&e).contains("version 2"), "{}", text(&e));

    // Orders sent right behind the Hello wait for the password check and
    // are then processed in order; with a wrong password none is.
    let mut orders = Vec::new();
    FrameWriter::new(&mut orders).push_all(&[sell(1, 1, 100, 1), sell(2, 1, 100, 1)]);
    let mut bob = hello(addr, 1002, "bravo", &orders);
    let msgs = bob.collect_until(|m| matches!(m, Msg::Accepted(_)), 2, "accepts");
    assert!(matches!(msgs[0], Msg::Ack(_)), "{msgs:?}");
    let mut mallory = hello(addr, 1002, "wrong", &orders);
    let (e, _) = refusal(&mut mallory, Instant::now());
    assert_eq!(code(&e), SessionErrorCode::AuthenticationFailed);
    let fin = server.stop();
    // alice's buy, bob's two sells; mallory's orders never counted.
    assert_eq!(fin.total.orders_in, 3);
}

#[test]
fn a_session_acts_only_for_its_own_account() {
    let server = start_accounts(|_| {});
    let addr = server.local_addr();
    let mut alice = logon(addr, 1001, "alpha");
    let mut bob = logon(addr, 1002, "bravo");
    alice.send(&[buy(7, 0, 100, 10)]);
    alice.wait_for(|m| matches!(m, Msg::Accepted(_)), "accept");
    // bob names alice's client order id: cancel, replace and query are
    // about bob's own (unknown) order 7, never alice's.
    bob.send(&[Cancel::new(7, 0)]);
    let Msg::Rejected(r) = bob.wait_for(|m| matches!(m, Msg::Rejected(_)), "cancel reject") else {
        unreachable!()
    };
    assert_eq!(r.reason(), Ok(RejectReason::UnknownOrder));
    bob.send(&[Replace::new(7, 0, 101, 5)]);
    let Msg::Rejected(r) = bob.wait_for(|m| matches!(m, Msg::Rejected(_)), "replace reject") else {
        unreachable!()
    };
    assert_eq!(r.reason(), Ok(RejectReason::UnknownOrder));
    bob.send(&[OrderQuery::new(7, 0)]);
    let Msg::Status(s) = bob.wait_for(|m| matches!(m, Msg::Status(_)), "status") else {
        unreachable!()
    };
    assert_eq!(s.state, OrderState::Unknown.to_wire());
    // alice's order is untouched.
    alice.send(&[OrderQuery::new(7, 0)]);
    let Msg::Status(s) = alice.wait_for(|m| matches!(m, Msg::Status(_)), "status") else {
        unreachable!()
    };
    assert_eq!(s.state, OrderState::Live.to_wire());
    assert_eq!(s.leaves_quantity.get(), 10);
    assert!(
        !alice
            .drain_for(100)
            .iter()
            .any(|m| matches!(m, Msg::Canceled(_) | Msg::Replaced(_))),
        "nothing happened to alice's order"
    );
    server.stop();
}

#[test]
fn failed_logons_from_one_address_are_limited() {
    let server = start_accounts(|cfg| cfg.logon_failures_per_minute = 10);
    let addr = server.local_addr();
    let since = Instant::now();
    // Ten failures at once: each answered after the delay, all within the
    // delay plus slack, so the delays run side by side (the auth thread
    // schedules its answers, it does not sleep: one at a time would take 10 s).
    let mut bad: Vec<Client> = (0..10).map(|_| hello(addr, 1001, "nope", &[])).collect();
    for c in &mut bad {
        let (e, took) = refusal(c, since);
        assert_eq!(code(&e), SessionErrorCode::AuthenticationFailed);
        assert!(took < DELAY + SLACK, "{took:?}");
    }
    // Over the limit: refused at once, with its own text, even with the
    // right password.
    for password in ["nope", "alpha"] {
        let since = Instant::now();
        let mut c = hello(addr, 1001, password, &[]);
        let (e, took) = refusal(&mut c, since);
        assert_eq!(code(&e), SessionErrorCode::AuthenticationFailed);
        assert!(text(&e).contains("too many failed logons"), "{}", text(&e));
        assert!(took < SLACK, "{took:?}");
    }
    server.stop();
}

#[test]
fn sessions_per_account_are_limited() {
    let server = start_accounts(|cfg| cfg.max_sessions_per_account = 3);
    let addr = server.local_addr();
    // carol's own limit is 2.
    let first = logon(addr, 1003, "charlie");
    let _second = logon(addr, 1003, "charlie");
    let mut third = hello(addr, 1003, "charlie", &[]);
    let (e, _) = refusal(&mut third, Instant::now());
    assert_eq!(code(&e), SessionErrorCode::TooManySessions);
    assert!(text(&e).contains("limit of 2"), "{}", text(&e));
    // Others are not affected; the server default (3) applies to them.
    let _a: Vec<Client> = (0..3).map(|_| logon(addr, 1001, "alpha")).collect();
    let mut a4 = hello(addr, 1001, "alpha", &[]);
    assert_eq!(
        code(&refusal(&mut a4, Instant::now()).0),
        SessionErrorCode::TooManySessions
    );
    // A closed session frees its place (the close is seen by the server soon).
    drop(first);
    let deadline = Instant::now() + SLACK;
    loop {
        let mut c = hello(addr, 1003, "charlie", &[]);
        c.pump();
        match c.wait_for(|m| matches!(m, Msg::Ack(_) | Msg::Error(_)), "ack or error") {
            Msg::Ack(_) => break,
            other => assert!(Instant::now() < deadline, "still refused: {other:?}"),
        }
    }
    server.stop();
}

#[test]
fn sessions_per_account_are_limited_without_accounts_too() {
    let server = start_with(&test_cpus()[..1], 1, 1, EngineKind::Match, |cfg| {
        cfg.max_sessions_per_account = 1
    });
    let addr = server.local_addr();
    let _one = Client::login(addr, 5, 0);
    let _other_account = Client::login(addr, 6, 0);
    let mut two = Client::connect(addr);
    two.send(&[Hello::new(5, 0, 0, "")]);
    let (e, _) = refusal(&mut two, Instant::now());
    assert_eq!(code(&e), SessionErrorCode::TooManySessions);
    server.stop();
}

#[test]
fn connections_per_address_are_limited() {
    let server = start_with(&test_cpus()[..1], 1, 1, EngineKind::Match, |cfg| {
        cfg.max_connections_per_address = 3
    });
    let addr = server.local_addr();
    let _held: Vec<Client> = (0..3).map(|i| Client::login(addr, 10 + i, 0)).collect();
    let mut fourth = Client::connect(addr);
    let (e, _) = refusal(&mut fourth, Instant::now());
    assert_eq!(code(&e), SessionErrorCode::TooManyConnections);
    assert!(text(&e).contains("limit of 3"), "{}", text(&e));
    server.stop();
}

#[test]
fn a_connection_without_a_hello_is_closed_at_the_logon_deadline() {
    let server = start_with(&test_cpus()[..1], 1, 1, EngineKind::Match, |cfg| {
        cfg.logon_timeout_ms = 300
    });
    let since = Instant::now();
    let mut c = Client::connect(server.local_addr());
    let (e, took) = refusal(&mut c, since);
    assert_eq!(code(&e), SessionErrorCode::LogonTimeout);
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_millis(300) + SLACK, "{took:?}");
    server.stop();
}

#[test]
fn partial_frames_past_the_input_memory_of_a_core_close_the_connection_that_grew() {
    // One core; room for one partial frame of 60,000 bytes, not two.
    let server = start_with(&test_cpus()[..1], 1, 1, EngineKind::Match, |cfg| {
        cfg.input_memory_per_core = 100_000
    });
    let addr = server.local_addr();
    let orders: Vec<NewOrder> = (1..=2_000).map(|i| buy(i, 0, 100, 1)).collect();
    let mut frame = Vec::new();
    FrameWriter::new(&mut frame).push_all(&orders);
    assert_eq!(frame.len(), 64_008);
    let part = 60_000;
    let mut first = Client::login(addr, 1, 0);
    let mut second = Client::login(addr, 2, 0);
    first.send_raw(&frame[..part]);
    // The first partial frame is held before the second arrives.
    std::thread::sleep(Duration::from_millis(300));
    second.send_raw(&frame[..part]);
    let msgs = second.wait_closed();
    let e = msgs
        .iter()
        .find_map(|m| match m {
            Msg::Error(e) => Some(*e),
            _ => None,
        })
        .unwrap_or_else(|| panic!("a SessionError before the close: {msgs:?}"));
    assert_eq!(code(&e), SessionErrorCode::TooManyConnections);
    assert!(text(&e).contains("input memory"), "{}", text(&e));
    assert_eq!(e.detail.get(), 0);
    // The first completes its frame: every order is accepted.
    first.send_raw(&frame[part..]);
    let got = first.collect_until(|m| matches!(m, Msg::Accepted(_)), 2_000, "the accepts");
    assert!(!got.iter().any(|m| matches!(m, Msg::Error(_))), "{got:?}");
    // The closed connection's memory went back: a new one may hold a
    // partial frame again, and complete it.
    let mut third = Client::login(addr, 3, 0);
    third.send_raw(&frame[..part]);
    std::thread::sleep(Duration::from_millis(100));
    third.send_raw(&frame[part..]);
    third.collect_until(|m| matches!(m, Msg::Accepted(_)), 2_000, "the accepts");
    server.stop();
}

#[test]
fn dripping_bytes_into_a_frame_is_closed_at_the_frame_deadline() {
    let server = start_with(&test_cpus()[..1], 1, 1, EngineKind::Match, |cfg| {
        cfg.frame_timeout_ms = 400
    });
    let addr = server.local_addr();
    let mut c = Client::login(addr, 1, 0);
    let mut frame = Vec::new();
    FrameWriter::new(&mut frame).push_all(&[buy(1, 0, 100, 1), buy(2, 0, 100, 1)]);
    let since = Instant::now();
    // One byte every 50 ms: the line is never idle, the frame never completes.
    for &b in &frame[..frame.len() - 1] {
        c.send_raw(&[b]);
        c.pump();
        if c.closed || since.elapsed() > Duration::from_millis(400) + SLACK {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (e, took) = refusal(&mut c, since);
    assert_eq!(code(&e), SessionErrorCode::FrameTimeout);
    assert!(took < Duration::from_millis(400) + SLACK, "{took:?}");

    // Half a frame, then silence.
    let mut c = Client::login(addr, 2, 0);
    let since = Instant::now();
    c.send_raw(&frame[..frame.len() / 2]);
    let (e, took) = refusal(&mut c, since);
    assert_eq!(code(&e), SessionErrorCode::FrameTimeout);
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_millis(400) + SLACK, "{took:?}");
    // A whole frame in pieces within the deadline is fine.
    let mut c = Client::login(addr, 3, 0);
    c.send_raw(&frame[..10]);
    std::thread::sleep(Duration::from_millis(100));
    c.send_raw(&frame[10..]);
    c.collect_until(|m| matches!(m, Msg::Accepted(_)), 2, "accepts");
    server.stop();
}

#[test]
fn a_flood_of_bad_logons_does_not_stop_trading() {
    // Real argon2 parameters here: the cost lands on the auth thread.
    let mut text = String::new();
    for (id, name, pw) in [
        (1, "maker", "m-secret"),
        (2, "taker", "t-secret"),
        (3, "victim", "v-secret"),
    ] {
        let phc = engine::accounts::hash_password(pw.as_bytes(), &[id as u8; 16]).unwrap();
        text.push_str(&format!("{id} {name} {phc}\n"));
    }
    let accounts = Arc::new(Accounts::parse(&text).unwrap());
    let server = start_with(&test_cpus(), 2, 4, EngineKind::Match, |cfg| {
        cfg.accounts = Some(accounts);
        // Every bad logon is verified (none is cut short by the limit).
        cfg.logon_failures_per_minute = 1_000;
    });
    let addr = server.local_addr();
    let mut maker = logon(addr, 1, "m-secret");
    let mut taker = logon(addr, 2, "t-secret");
    let trade_round = |maker: &mut Client, taker: &mut Client, base: u64| -> Duration {
        let since = Instant::now();
        let n = 200;
        let sells: Vec<NewOrder> = (0..n).map(|i| sell(base + i, 0, 100, 1)).collect();
        let buys: Vec<NewOrder> = (0..n).map(|i| buy(base + i, 0, 100, 1)).collect();
        maker.send(&sells);
        maker.collect_until(
            |m| matches!(m, Msg::Accepted(_)),
            n as usize,
            "maker accepts",
        );
        taker.send(&buys);
        let msgs = taker.collect_until(|m| matches!(m, Msg::Fill(_)), n as usize, "taker fills");
        assert!(
            !msgs.iter().any(|m| matches!(m, Msg::Rejected(_))),
            "{msgs:?}"
        );
        maker.collect_until(|m| matches!(m, Msg::Fill(_)), n as usize, "maker fills");
        since.elapsed()
    };
    let quiet = trade_round(&mut maker, &mut taker, 1_000);
    let flood_started = Instant::now();
    let flood = std::thread::spawn(move || {
        let mut refused = 0;
        let mut clients: Vec<Client> = (0..200).map(|_| hello(addr, 3, "guess", &[])).collect();
        for c in &mut clients {
            let msgs = c.wait_closed();
            if msgs.iter().any(
                |m| matches!(m, Msg::Error(e) if e.code() == Ok(SessionErrorCode::AuthenticationFailed)),
            ) {
                refused += 1;
            }
        }
        refused
    });
    let mut during = Vec::new();
    let mut base = 10_000;
    while !flood.is_finished() {
        during.push(trade_round(&mut maker, &mut taker, base));
        base += 1_000;
    }
    let refused = flood.join().unwrap();
    during.sort();
    eprintln!(
        "200 bad logons took {:?}; a 200-order round trip: {quiet:?} before, median {:?} and max {:?} during ({} rounds)",
        flood_started.elapsed(),
        during.get(during.len() / 2).copied().unwrap_or_default(),
        during.last().copied().unwrap_or_default(),
        during.len()
    );
    assert_eq!(refused, 200, "every bad logon is refused");
    // The victim's real session can still log on.
    let _victim = logon(addr, 3, "v-secret");
    server.stop();
}
