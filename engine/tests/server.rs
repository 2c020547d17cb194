//! The real server on 127.0.0.1, spoken to over TCP.

mod common;

use common::*;
use engine::server::EngineKind;
use wire::*;

#[test]
fn hello_gets_an_ack_and_the_symbol_directory() {
    let server = start(&test_cpus()[..1], 1, 5, EngineKind::Match);
    let c = Client::login(server.local_addr(), 7, 0);
    assert_ne!(c.session, 0);
    let names: Vec<&[u8]> = c.symbols.iter().map(|s| s.name()).collect();
    assert_eq!(names, vec![&b"S0"[..], b"S1", b"S2", b"S3", b"S4"]);
    let ids: Vec<u32> = c.symbols.iter().map(|s| s.symbol.get()).collect();
    assert_eq!(ids, vec![0, 1, 2, 3, 4]);
    let fin = server.stop();
    assert!(fin.clean);
    assert_eq!(fin.total.conns_accepted, 1);
}

#[test]
fn orders_match_across_sessions_and_both_sides_get_fills() {
    let server = start(&test_cpus()[..1], 1, 4, EngineKind::Match);
    let addr = server.local_addr();
    let mut maker = Client::login(addr, 1, 0);
    let mut taker = Client::login(addr, 2, 0);
    maker.send(&[sell(10, 2, 100, 5)]);
    maker.wait_for(
        |m| matches!(m, Msg::Accepted(a) if a.client_order_id.get() == 10),
        "maker accept",
    );
    taker.send(&[buy(20, 2, 101, 3)]);
    taker.wait_for(
        |m| matches!(m, Msg::Accepted(a) if a.client_order_id.get() == 20),
        "taker accept",
    );
    let Msg::Fill(tf) = taker.wait_for(|m| matches!(m, Msg::Fill(_)), "taker fill") else {
        unreachable!()
    };
    let Msg::Fill(mf) = maker.wait_for(|m| matches!(m, Msg::Fill(_)), "maker fill") else {
        unreachable!()
    };
    assert_eq!(tf.trade_id, mf.trade_id, "one trade, one id on both sides");
    assert_eq!(
        (tf.price.get(), tf.quantity.get(), tf.leaves_quantity.get()),
        (100, 3, 0)
    );
    assert_eq!(
        (mf.price.get(), mf.quantity.get(), mf.leaves_quantity.get()),
        (100, 3, 2)
    );
    assert_eq!(tf.liquidity, Liquidity::Taker.to_wire());
    assert_eq!(mf.liquidity, Liquidity::Maker.to_wire());
    let fin = server.stop();
    assert_eq!(fin.total.trades, 1);
}

/// Logs in until it has a session on each core (SO_REUSEPORT spreads
/// connections by hash, so a few tries give both).
fn sessions_on_both_cores(addr: std::net::SocketAddr, account_base: u64) -> (Client, Client) {
    let mut by_core: [Option<Client>; 2] = [None, None];
    for i in 0..64 {
        let c = Client::login(addr, account_base + i, 0);
        let core = session_core(c.session);
        if by_core[core].is_none() {
            by_core[core] = Some(c);
        }
        if by_core.iter().all(Option::is_some) {
            break;
        }
    }
    let [a, b] = by_core;
    (
        a.expect("a session on core 0"),
        b.expect("a session on core 1"),
    )
}

#[test]
fn two_cores_trade_a_symbol_owned_by_the_other_core() {
    let cpus = test_cpus();
    if cpus.len() < 2 {
        testkit::skip!("needs two CPUs, this process may use {cpus:?}");
        return;
    }
    let shards = 4;
    let server = start(&cpus, shards, 8, EngineKind::Match);
    let (mut on0, mut on1) = sessions_on_both_cores(server.local_addr(), 100);
    // A symbol owned by core 1, traded by a session on core 0 against one on core 1,
    // and a symbol owned by core 0 traded the same way.
    for (round, symbol) in [(0u64, 1u32), (1, 0)] {
        assert_eq!(
            owner_core(symbol, shards, 2),
            if symbol == 1 { 1 } else { 0 }
        );
        let base = 1000 * (round + 1);
        on1.send(&[sell(base + 1, symbol, 50, 10)]);
        on1.wait_for(|m| matches!(m, Msg::Accepted(_)), "resting sell accepted");
        on0.send(&[buy(base + 2, symbol, 50, 10)]);
        let Msg::Fill(f0) = on0.wait_for(|m| matches!(m, Msg::Fill(_)), "taker fill on core 0")
        else {
            unreachable!()
        };
        let Msg::Fill(f1) = on1.wait_for(|m| matches!(m, Msg::Fill(_)), "maker fill on core 1")
        else {
            unreachable!()
        };
        assert_eq!(f0.trade_id, f1.trade_id);
        assert_eq!(f0.symbol.get(), symbol);
        assert_eq!((f0.leaves_quantity.get(), f1.leaves_quantity.get()), (0, 0));
    }
    let fin = server.stop();
    assert!(fin.clean);
    assert_eq!(fin.total.trades, 2);
    assert!(
        fin.total.ring_pushed > 0,
        "orders and reports crossed cores on rings"
    );
    assert_eq!(fin.total.ring_pushed, fin.total.ring_popped);
}

#[test]
fn cancel_and_replace() {
    let server = start(&test_cpus()[..1], 1, 2, EngineKind::Match);
    let mut c = Client::login(server.local_addr(), 1, 0);
    c.send(&[buy(1, 0, 100, 10), buy(2, 0, 101, 10)]);
    c.collect_until(|m| matches!(m, Msg::Accepted(_)), 2, "accepts");
    c.send(&[Cancel::new(1, 0)]);
    let Msg::Canceled(x) = c.wait_for(|m| matches!(m, Msg::Canceled(_)), "canceled") else {
        unreachable!()
    };
    assert_eq!(
        (x.client_order_id.get(), x.canceled_quantity.get()),
        (1, 10)
    );
    assert_eq!(x.reason, CancelReason::Requested.to_wire());
    // Cancel of a dead order: rejected, nothing else changes.
    c.send(&[Cancel::new(1, 0)]);
    let Msg::Rejected(r) = c.wait_for(|m| matches!(m, Msg::Rejected(_)), "reject") else {
        unreachable!()
    };
    assert_eq!(r.reason(), Ok(RejectReason::UnknownOrder));
    assert_eq!(r.request_kind, Kind::Cancel as u8);
    // Reduce keeps priority; a price change loses it.
    c.send(&[Replace::new(2, 0, 101, 4)]);
    let Msg::Replaced(p) = c.wait_for(|m| matches!(m, Msg::Replaced(_)), "replaced") else {
        unreachable!()
    };
    assert!(p.priority_kept());
    assert_eq!(p.leaves_quantity.get(), 4);
    c.send(&[Replace::new(2, 0, 105, 4)]);
    let Msg::Replaced(p) = c.wait_for(|m| matches!(m, Msg::Replaced(_)), "replaced") else {
        unreachable!()
    };
    assert!(!p.priority_kept());
    c.send(&[OrderQuery::new(2, 0)]);
    let Msg::Status(s) = c.wait_for(|m| matches!(m, Msg::Status(_)), "status") else {
        unreachable!()
    };
    assert_eq!(s.state, OrderState::Live.to_wire());
    assert_eq!((s.leaves_quantity.get(), s.filled_quantity.get()), (4, 0));
    server.stop();
}

#[test]
fn cancel_on_disconnect_cancels_the_sessions_orders() {
    let cpus = test_cpus();
    let server = start(&cpus, cpus.len() as u32, 4, EngineKind::Match);
    let addr = server.local_addr();
    let mut keeper = Client::login(addr, 1, 0);
    let mut leaver = Client::login(addr, 2, HELLO_CANCEL_ON_DISCONNECT);
    // The leaver rests orders on every symbol (so on every core), the keeper on one.
    let orders: Vec<NewOrder> = (0..4).map(|s| sell(10 + u64::from(s), s, 100, 5)).collect();
    leaver.send(&orders);
    leaver.collect_until(|m| matches!(m, Msg::Accepted(_)), 4, "accepts");
    keeper.send(&[sell(1, 0, 101, 5)]);
    keeper.wait_for(|m| matches!(m, Msg::Accepted(_)), "accept");
    drop(leaver);
    // Another session of the leaver's account watches its orders die.
    let mut watcher = Client::login(addr, 2, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let queries: Vec<OrderQuery> = (0..4)
            .map(|s| OrderQuery::new(10 + u64::from(s), s))
            .collect();
        watcher.send(&queries);
        let msgs = watcher.collect_until(|m| matches!(m, Msg::Status(_)), 4, "statuses");
        let live = msgs
            .iter()
            .filter(|m| matches!(m, Msg::Status(s) if s.state == OrderState::Live.to_wire()))
            .count();
        if live == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "orders still live after disconnect"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut buyer = Client::login(addr, 3, 0);
    let iocs: Vec<NewOrder> = (0..4)
        .map(|s| ioc(100 + u64::from(s), s, Side::Buy, 100, 5))
        .collect();
    buyer.send(&iocs);
    let msgs = buyer.collect_until(|m| matches!(m, Msg::Canceled(_)), 4, "IOC remainders");
    assert!(
        !msgs.iter().any(|m| matches!(m, Msg::Fill(_))),
        "no fill against the disconnected session's orders: {msgs:?}"
    );
    // The keeper's order, priced 101, is still there.
    buyer.send(&[ioc(200, 0, Side::Buy, 101, 5)]);
    let Msg::Fill(f) = buyer.wait_for(|m| matches!(m, Msg::Fill(_)), "fill against the keeper")
    else {
        unreachable!()
    };
    assert_eq!(f.price.get(), 101);
    server.stop();
}

#[test]
fn hundreds_of_concurrent_connections() {
    let cpus = test_cpus();
    // All from 127.0.0.1: above the default per-address limit.
    let server = start_with(&cpus, cpus.len() as u32 * 2, 16, EngineKind::Match, |cfg| {
        cfg.max_connections_per_address = 400
    });
    let addr = server.local_addr();
    let mut clients: Vec<Client> = (0..300).map(|i| Client::login(addr, 1000 + i, 0)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        // Symbol k gets clients k, k+16, ...; their sides alternate.
        let side = if (i / 16) % 2 == 0 {
            Side::Buy
        } else {
            Side::Sell
        };
        c.send(&[NewOrder::limit(1, (i % 16) as u32, side, 1000, 1)]);
    }
    for c in clients.iter_mut() {
        c.wait_for(|m| matches!(m, Msg::Accepted(_)), "accept");
    }
    let fin = server.stop();
    assert_eq!(fin.total.conns_accepted, 300);
    assert_eq!(fin.total.orders_in, 300);
    // 300 orders on 16 symbols at one price: 19 or 18 per symbol, alternating
    // sides, so 9 buy/sell pairs per symbol trade whatever the arrival order.
    assert_eq!(fin.total.trades, 16 * 9);
}

#[test]
fn a_malformed_frame_closes_only_its_connection() {
    let cpus = test_cpus();
    let server = start(&cpus, cpus.len() as u32, 2, EngineKind::Match);
    let addr = server.local_addr();
    let mut good = Client::login(addr, 1, 0);
    let mut good2 = Client::login(addr, 4, 0);
    let mut bad = Client::login(addr, 2, 0);
    // A header naming kind 0x55.
    bad.send_raw(&[16, 0, 0, 0, 0x55, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let msgs = bad.wait_closed();
    let err = msgs
        .iter()
        .find_map(|m| {
            if let Msg::Error(e) = m {
                Some(*e)
            } else {
                None
            }
        })
        .expect("a SessionError before the close");
    assert_eq!(err.code.get(), SessionErrorCode::UnknownKind.to_wire());
    assert!(String::from_utf8_lossy(err.text()).contains("0x55"));
    // The other session trades on.
    good.send(&[buy(1, 0, 10, 1)]);
    good.wait_for(|m| matches!(m, Msg::Accepted(_)), "accept");
    good2.send(&[sell(2, 0, 10, 1)]);
    good2.wait_for(|m| matches!(m, Msg::Fill(_)), "fill");
    // Oversize and bad-count frames get their own codes.
    for (bytes, code) in [
        (
            vec![0, 0, 0, 0x10, 2, 1, 1, 0],
            SessionErrorCode::FrameTooLarge,
        ),
        (
            vec![12, 0, 0, 0, 2, 1, 1, 0, 0, 0, 0, 0],
            SessionErrorCode::BadCount,
        ),
        (
            vec![8, 0, 0, 0, 2, 9, 0, 0],
            SessionErrorCode::UnsupportedVersion,
        ),
    ] {
        let mut c = Client::login(addr, 3, 0);
        c.send_raw(&bytes);
        let msgs = c.wait_closed();
        assert!(
            msgs.iter()
                .any(|m| matches!(m, Msg::Error(e) if e.code.get() == code.to_wire())),
            "{code}: {msgs:?}"
        );
    }
    let fin = server.stop();
    assert_eq!(fin.total.conns_errored, 4);
}

#[test]
fn session_rules() {
    let server = start(&test_cpus()[..1], 1, 2, EngineKind::Match);
    let addr = server.local_addr();
    // Orders before the Hello.
    let mut c = Client::connect(addr);
    c.send(&[buy(1, 0, 10, 1)]);
    let msgs = c.wait_closed();
    assert!(msgs.iter().any(
        |m| matches!(m, Msg::Error(e) if e.code.get() == SessionErrorCode::NotLoggedIn.to_wire())
    ));
    // A second Hello.
    let mut c = Client::login(addr, 1, 0);
    c.send(&[Hello::new(1, 0, 0, "")]);
    let msgs = c.wait_closed();
    assert!(msgs.iter().any(
        |m| matches!(m, Msg::Error(e) if e.code.get() == SessionErrorCode::DuplicateHello.to_wire())
    ));
    // Unknown symbol, non-increasing ids, heartbeat echo, and a version 1
    // session's Subscribe (version 2 market data: tests/md.rs).
    let mut c = Client::login_version(addr, 1, 0, 1);
    c.send(&[buy(5, 2, 10, 1), buy(5, 0, 10, 1), buy(4, 0, 10, 1)]);
    c.send(&[Heartbeat { token: 77.into() }]);
    c.send(&[Subscribe {
        symbol: 0.into(),
        flags: 1.into(),
    }]);
    let msgs = c.collect_until(|m| matches!(m, Msg::Rejected(_)), 4, "rejects");
    let reasons: Vec<RejectReason> = msgs
        .iter()
        .filter_map(|m| {
            if let Msg::Rejected(r) = m {
                r.reason().ok()
            } else {
                None
            }
        })
        .collect();
    // Id 5 counts as used even though its symbol was unknown.
    assert_eq!(
        reasons,
        vec![
            RejectReason::UnknownSymbol,
            RejectReason::DuplicateClientOrderId,
            RejectReason::DuplicateClientOrderId,
            RejectReason::NotSupported,
        ]
    );
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Msg::Heartbeat(h) if h.token.get() == 77))
    );
    server.stop();
}

/// The session-level conversation (everything except what matching decides)
/// for one engine: a transcript of message kinds and reasons.
fn session_transcript(engine: EngineKind) -> Vec<String> {
    let server = start(&test_cpus()[..1], 1, 3, engine);
    let addr = server.local_addr();
    let mut t = Vec::new();
    let mut c = Client::login(addr, 9, 0);
    t.push(format!("symbols {}", c.symbols.len()));
    let mut bad_side = buy(3, 0, 10, 1);
    bad_side.side = 7;
    c.send(&[
        buy(1, 0, 10, 1),
        buy(2, 5, 10, 1),
        bad_side,
        buy(3, 0, 10, 1),
    ]);
    c.send(&[Heartbeat { token: 5.into() }]);
    let msgs = c.collect_until(|m| matches!(m, Msg::Heartbeat(_)), 1, "heartbeat echo");
    for m in msgs {
        t.push(match m {
            Msg::Accepted(a) => format!("accepted {}", a.client_order_id.get()),
            Msg::Rejected(r) => format!("rejected {} {:?}", r.client_order_id.get(), r.reason()),
            Msg::Heartbeat(h) => format!("heartbeat {}", h.token.get()),
            other => format!("{other:?}"),
        });
    }
    let mut x = Client::login(addr, 10, 0);
    x.send_raw(&[8, 0, 0, 0, 0x81, 1, 0, 0]);
    for m in x.wait_closed() {
        if let Msg::Error(e) = m {
            t.push(format!("session error {}", e.code.get()));
        }
    }
    server.stop();
    t
}

#[test]
fn null_and_matching_engines_behave_the_same_at_the_session_level() {
    let matching = session_transcript(EngineKind::Match);
    let null = session_transcript(EngineKind::Null);
    assert_eq!(matching, null);
    assert_eq!(
        matching,
        vec![
            "symbols 3".to_string(),
            "accepted 1".into(),
            format!(
                "rejected 2 {:?}",
                Ok::<_, DecodeError>(RejectReason::UnknownSymbol)
            ),
            format!(
                "rejected 3 {:?}",
                Ok::<_, DecodeError>(RejectReason::InvalidSide)
            ),
            format!(
                "rejected 3 {:?}",
                Ok::<_, DecodeError>(RejectReason::DuplicateClientOrderId)
            ),
            "heartbeat 5".into(),
            format!("session error {}", SessionErrorCode::UnknownKind.to_wire()),
        ]
    );
}

#[test]
fn a_silent_session_times_out() {
    let server = start_with(&test_cpus()[..1], 1, 1, EngineKind::Match, |cfg| {
        cfg.heartbeat_ms = 100
    });
    let mut c = Client::login(server.local_addr(), 1, 0);
    let started = std::time::Instant::now();
    let msgs = c.wait_closed();
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Msg::Error(e) if e.code.get() == SessionErrorCode::IdleTimeout.to_wire())),
        "{msgs:?}"
    );
    // The server sent heartbeats while it waited.
    assert!(
        msgs.iter().any(|m| matches!(m, Msg::Heartbeat(_))),
        "{msgs:?}"
    );
    server.stop();
}

#[test]
fn a_client_that_does_not_read_is_stopped_then_disconnected_and_others_trade_on() {
    let cpus = test_cpus();
    let server = start_with(&cpus, cpus.len() as u32, 2, EngineKind::Null, |cfg| {
        cfg.out_high_water_bytes = 64 << 10;
        cfg.out_max_bytes = 1 << 20;
        cfg.slow_consumer_ms = 300;
    });
    let addr = server.local_addr();
    let mut hog = Client::login(addr, 1, 0);
    hog.stream
        .set_write_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    // Send far more orders than the server will buffer replies for, never reading.
    let batch: Vec<NewOrder> = (0..2000).map(|i| buy(i, 0, 10, 1)).collect();
    let mut sent = 0u64;
    let started = std::time::Instant::now();
    let mut id = 2000u64;
    while started.elapsed() < std::time::Duration::from_secs(5) && !hog.closed {
        hog.send(
            &batch
                .iter()
                .map(|o| {
                    id += 1;
                    let mut o = *o;
                    o.client_order_id = id.into();
                    o
                })
                .collect::<Vec<_>>(),
        );
        sent += 2000;
    }
    // The server stopped reading (TCP backpressure made our writes block)
    // long before it accepted all we tried to send, and it did not buffer
    // without bound: it cut us off.
    let mut good = Client::login(addr, 2, 0);
    good.send(&[buy(1, 1, 10, 1)]);
    good.wait_for(|m| matches!(m, Msg::Accepted(_)), "others keep trading");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let s = server.sample();
        if s.total().conns_errored >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow consumer was not disconnected"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let fin = server.stop();
    assert!(
        fin.total.orders_in < sent,
        "the server read less than was offered ({} of {sent})",
        fin.total.orders_in
    );
}

#[test]
fn connections_over_the_limit_are_told_why() {
    let server = start_with(&test_cpus()[..1], 1, 1, EngineKind::Match, |cfg| {
        cfg.max_connections = 2
    });
    let addr = server.local_addr();
    let _a = Client::login(addr, 1, 0);
    let _b = Client::login(addr, 2, 0);
    let mut c = Client::connect(addr);
    let msgs = c.wait_closed();
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Msg::Error(e) if e.code.get() == SessionErrorCode::TooManyConnections.to_wire())),
        "{msgs:?}"
    );
    server.stop();
}
