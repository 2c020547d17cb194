//! The market-data bridge (engine::mdbridge) against a real nats-server,
//! started by each test on 127.0.0.1 with a free port: payloads and
//! subjects, drops on a full ring, NATS going down and coming back, NATS not
//! up yet at start. Without nats-server (the Debian package scripts/test.sh
//! installs) each test says `SKIP:` and returns.
//!
//! Nothing here asserts on a duration: every wait is for a condition, with
//! a generous deadline.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::{Client, Message, Subscriber};
use engine::mdbridge::{Bridge, BridgeConfig, BridgeFormat, BridgeRecord, BridgeStats};
use futures_lite::StreamExt;
use testkit::{NatsServer, free_port};
use wire::{MdTopOfBook, MdTrade, Side, TopLevel};
use zerocopy::IntoBytes;

#[global_allocator]
static ALLOCATOR: testkit::CountingAllocator = testkit::CountingAllocator;

/// The longest any condition is waited for.
const DEADLINE: Duration = Duration::from_secs(10);

const SYMBOLS: [&str; 2] = ["BTC-USD", "ETH-USD"];

fn url(port: u16) -> String {
    format!("nats://127.0.0.1:{port}")
}

fn config(port: u16, format: BridgeFormat, ring_capacity: usize) -> BridgeConfig {
    BridgeConfig {
        url: url(port),
        format,
        symbols: SYMBOLS
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into(),
        ring_capacity,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Polls `cond` every 5 ms until it holds; panics after [`DEADLINE`] with
/// `what` and the bridge's counters. Async, so the test's own NATS client
/// keeps running meanwhile.
async fn wait_until(what: &str, bridge: &Bridge, mut cond: impl FnMut(&BridgeStats) -> bool) {
    let until = Instant::now() + DEADLINE;
    loop {
        let stats = bridge.stats();
        if cond(&stats) {
            return;
        }
        assert!(
            Instant::now() < until,
            "{what}: not after {DEADLINE:?}; bridge stats {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A test client subscribed to every market-data subject, the
/// subscription known to the server when this returns. It reconnects
/// quickly (every 50 ms) when the server comes back.
async fn subscriber(port: u16) -> (Client, Subscriber) {
    let client = async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(50))
        .connect(url(port))
        .await
        .expect("the test's NATS client connects");
    let sub = client.subscribe("turbo-dex.md.>").await.expect("subscribe");
    server_has_read(&client).await;
    (client, sub)
}

/// Returns once the server has read everything `client` sent before the
/// call (its subscriptions, also those a reconnection sent again): a
/// message to the client's own inbox comes back. `Client::flush` is not
/// enough: it returns once the bytes are written to the socket, and a
/// loaded server may then read another connection's PUB first (that race
/// lost this file's tests a message 1 run in 5 on a busy 2-core machine).
async fn server_has_read(client: &Client) {
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await.expect("subscribe");
    let until = Instant::now() + DEADLINE;
    // A publish made while disconnected may be lost: send again until one
    // comes back.
    loop {
        client
            .publish(inbox.clone(), "sync".into())
            .await
            .expect("publish");
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), echo.next()).await {
            return;
        }
        assert!(
            Instant::now() < until,
            "the test's NATS client got no echo within {DEADLINE:?}"
        );
    }
}

/// The next message, or a panic after [`DEADLINE`] showing the bridge's
/// counters when the test has the bridge at hand.
async fn next_message(sub: &mut Subscriber, bridge: Option<&Bridge>) -> Message {
    tokio::time::timeout(DEADLINE, sub.next())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no market-data message within {DEADLINE:?}; bridge stats {:?}",
                bridge.map(Bridge::stats)
            )
        })
        .expect("the subscription ended")
}

fn trade(symbol: u32, seq: u64) -> MdTrade {
    MdTrade::new(
        symbol,
        Side::Sell,
        seq,
        1_764_650_000_123_456_789,
        seq + 1000,
        -250,
        7,
    )
}

fn top(symbol: u32, seq: u64) -> MdTopOfBook {
    MdTopOfBook::new(
        symbol,
        seq,
        99,
        TopLevel {
            price: 100,
            quantity: 5,
            orders: 2,
        },
        TopLevel {
            price: 101,
            quantity: 3,
            orders: 1,
        },
    )
}

/// The seq of a binary MdTrade payload.
fn trade_seq(m: &Message) -> u64 {
    let (t, _) = <MdTrade as zerocopy::FromBytes>::read_from_prefix(&m.payload)
        .unwrap_or_else(|_| panic!("{}: not an MdTrade: {:?}", m.subject, m.payload));
    t.seq.get()
}

#[test]
fn binary_and_json_payloads_arrive_on_their_subjects() {
    let bin = testkit::need_nats_server!();
    let port = free_port();
    let _server = NatsServer::start(&bin, port, false);
    runtime().block_on(async {
        let (_client, mut sub) = subscriber(port).await;
        for format in [BridgeFormat::Binary, BridgeFormat::Json] {
            let (bridge, mut feeds) = Bridge::start(config(port, format, 64), 2).unwrap();
            wait_until("the bridge connects", &bridge, |s| s.connected).await;
            let t0 = trade(0, 17);
            let b1 = top(1, 18);
            let t7 = trade(7, 19); // no name in the directory
            feeds[0].offer(BridgeRecord::Trade(t0));
            feeds[1].offer(BridgeRecord::Top(b1));
            feeds[0].offer(BridgeRecord::Trade(t7));
            // Two rings: the order across them is not fixed.
            let mut got = BTreeMap::new();
            for _ in 0..3 {
                let m = next_message(&mut sub, Some(&bridge)).await;
                got.insert(m.subject.to_string(), m.payload.to_vec());
            }
            let subjects: Vec<&str> = got.keys().map(String::as_str).collect();
            assert_eq!(
                subjects,
                [
                    "turbo-dex.md.7.trade",
                    "turbo-dex.md.BTC-USD.trade",
                    "turbo-dex.md.ETH-USD.bbo",
                ],
                "{format}"
            );
            match format {
                BridgeFormat::Binary => {
                    assert_eq!(got["turbo-dex.md.BTC-USD.trade"], t0.as_bytes());
                    assert_eq!(got["turbo-dex.md.ETH-USD.bbo"], b1.as_bytes());
                    assert_eq!(got["turbo-dex.md.7.trade"], t7.as_bytes());
                }
                BridgeFormat::Json => {
                    let json = |s: &str| -> serde_json::Value {
                        serde_json::from_slice(&got[s])
                            .unwrap_or_else(|e| panic!("{s}: not JSON ({e}): {:?}", got[s]))
                    };
                    assert_eq!(
                        json("turbo-dex.md.BTC-USD.trade"),
                        serde_json::json!({
                            "symbol": "BTC-USD", "symbol_id": 0, "seq": 17,
                            "engine_ns": 1_764_650_000_123_456_789u64, "trade_id": 1017,
                            "price": -250, "quantity": 7, "aggressor": "sell",
                        })
                    );
                    assert_eq!(
                        json("turbo-dex.md.ETH-USD.bbo"),
                        serde_json::json!({
                            "symbol": "ETH-USD", "symbol_id": 1, "seq": 18, "engine_ns": 99,
                            "bid_price": 100, "bid_quantity": 5, "bid_orders": 2,
                            "ask_price": 101, "ask_quantity": 3, "ask_orders": 1,
                        })
                    );
                    let t = json("turbo-dex.md.7.trade");
                    assert_eq!((&t["symbol"], &t["symbol_id"]), (&"7".into(), &7.into()));
                }
            }
            let stats = bridge.stats();
            assert_eq!(stats.published, 3, "{stats:?}");
            assert_eq!(stats.reconnects, 0, "{stats:?}");
            bridge.stop();
        }
    });
}

#[test]
fn a_full_ring_drops_and_counts_without_blocking() {
    let bin = testkit::need_nats_server!();
    let port = free_port();
    let _server = NatsServer::start(&bin, port, false);
    const OFFERS: u64 = 200_000;
    runtime().block_on(async {
        let (bridge, mut feeds) = Bridge::start(config(port, BridgeFormat::Binary, 8), 1).unwrap();
        wait_until("the bridge connects", &bridge, |s| s.connected).await;
        let feed = &mut feeds[0];
        let record = BridgeRecord::Trade(trade(0, 1));
        // Far faster than one thread can publish: the 8-record ring fills.
        let ((), allocations) = testkit::count_allocations(|| {
            for _ in 0..OFFERS {
                feed.offer(record);
            }
        });
        assert_eq!(allocations, 0, "offer allocates");
        assert!(feed.dropped() > 0, "no drop on a full 8-record ring");
        // Every record is accounted for: published, or dropped and counted.
        wait_until("every offered record is accounted for", &bridge, |s| {
            s.published
                + s.dropped_full
                + s.dropped_disconnected
                + s.dropped_slow
                + s.publish_errors
                == OFFERS
        })
        .await;
        let stats = bridge.stats();
        assert_eq!(stats.dropped_full, feed.dropped(), "{stats:?}");
        assert!(stats.published > 0, "{stats:?}");
        bridge.stop();
    });
}

#[test]
fn nats_down_drops_and_counts_then_the_bridge_reconnects() {
    let bin = testkit::need_nats_server!();
    let port = free_port();
    let mut server = NatsServer::start(&bin, port, false);
    runtime().block_on(async {
        let (client, mut sub) = subscriber(port).await;
        let (bridge, mut feeds) =
            Bridge::start(config(port, BridgeFormat::Binary, 1024), 2).unwrap();
        wait_until("the bridge connects", &bridge, |s| s.connected).await;
        feeds[0].offer(BridgeRecord::Trade(trade(0, 1)));
        assert_eq!(trade_seq(&next_message(&mut sub, Some(&bridge)).await), 1);

        server.kill();
        wait_until("the bridge sees NATS down", &bridge, |s| !s.connected).await;
        let before = bridge.stats();
        for seq in 100..200 {
            feeds[(seq % 2) as usize].offer(BridgeRecord::Trade(trade(1, seq)));
        }
        wait_until("100 records dropped while disconnected", &bridge, |s| {
            s.dropped_disconnected == before.dropped_disconnected + 100
        })
        .await;
        let stats = bridge.stats();
        assert_eq!(stats.published, before.published, "{stats:?}");
        assert_eq!(stats.dropped_full, 0, "{stats:?}");

        server = NatsServer::start(&bin, port, false);
        wait_until("the bridge reconnects", &bridge, |s| {
            s.connected && s.reconnects >= 1
        })
        .await;
        // The test's client has resubscribed once the server read it.
        server_has_read(&client).await;
        feeds[1].offer(BridgeRecord::Trade(trade(1, 1000)));
        // Records dropped while down never arrive later.
        assert_eq!(
            trade_seq(&next_message(&mut sub, Some(&bridge)).await),
            1000
        );
        bridge.stop();
    });
    drop(server);
}

#[test]
fn a_bridge_started_before_nats_connects_when_it_comes_up() {
    let bin = testkit::need_nats_server!();
    let port = free_port();
    runtime().block_on(async {
        // Nothing listens yet: not an error, records are dropped and counted.
        let (bridge, mut feeds) = Bridge::start(config(port, BridgeFormat::Json, 64), 1).unwrap();
        for seq in 1..=10 {
            feeds[0].offer(BridgeRecord::Top(top(0, seq)));
        }
        wait_until("10 records dropped before NATS is up", &bridge, |s| {
            s.dropped_disconnected == 10
        })
        .await;
        assert!(!bridge.stats().connected);

        let _server = NatsServer::start(&bin, port, false);
        let (_client, mut sub) = subscriber(port).await;
        wait_until("the bridge connects", &bridge, |s| s.connected).await;
        feeds[0].offer(BridgeRecord::Top(top(0, 11)));
        let m = next_message(&mut sub, Some(&bridge)).await;
        assert_eq!(&*m.subject, "turbo-dex.md.BTC-USD.bbo");
        let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON");
        assert_eq!(v["seq"], 11);
        let stats = bridge.stats();
        assert_eq!((stats.published, stats.reconnects), (1, 0), "{stats:?}");
        bridge.stop();
    });
}

/// The feeds outlive a stopped bridge without blocking: offers after stop
/// fill the ring and count.
#[test]
fn feeds_keep_counting_after_stop() {
    let port = free_port();
    let (bridge, mut feeds) = Bridge::start(config(port, BridgeFormat::Binary, 4), 1).unwrap();
    bridge.stop();
    for seq in 0..10 {
        feeds[0].offer(BridgeRecord::Trade(trade(0, seq)));
    }
    assert_eq!(feeds[0].dropped(), 6);
}

mod common;

/// The server end to end: `--md-nats` with JSON payloads; a trade on the
/// order-entry port appears on NATS as a trade and a top of book.
#[test]
fn the_server_publishes_its_trades_and_tops_to_nats() {
    let bin = testkit::need_nats_server!();
    let port = free_port();
    let _nats = NatsServer::start(&bin, port, false);
    let rt = runtime();
    let (_client, mut sub) = rt.block_on(subscriber(port));
    let server = common::start_with(
        &common::test_cpus(),
        2,
        2,
        engine::server::EngineKind::Match,
        |c| {
            c.md_nats = Some(engine::server::MdNatsSettings {
                url: url(port),
                format: BridgeFormat::Json,
            });
        },
    );
    let addr = server.local_addr();
    let mut maker = common::Client::login(addr, 1, 0);
    let mut taker = common::Client::login(addr, 2, 0);
    let mut warm = common::Client::login(addr, 3, 0);
    // The bridge connects on its own thread after the server starts, and
    // what it is offered before that is dropped (and counted), as when NATS
    // is down: move symbol 0's best ask until its tops arrive.
    let mut id = 100;
    let connected = rt.block_on(async {
        let until = Instant::now() + DEADLINE;
        while Instant::now() < until {
            id += 1;
            warm.send(&[common::sell(id, 0, 10_000 - id as i64, 1)]);
            let wait = tokio::time::timeout(Duration::from_millis(100), sub.next());
            if let Ok(Some(_)) = wait.await {
                return true;
            }
        }
        false
    });
    assert!(
        connected,
        "no top of symbol 0 reached NATS within {DEADLINE:?}"
    );
    // Symbol 1, whose first event is the rest below (seq 1).
    maker.send(&[common::sell(1, 1, 105, 4)]);
    maker.wait_for(
        |m| matches!(m, common::Msg::Accepted(a) if a.client_order_id.get() == 1),
        "accept",
    );
    let s1 = |sub: &mut Subscriber| loop {
        let m = rt.block_on(next_message(sub, None));
        if m.subject.starts_with("turbo-dex.md.S1.") {
            return m;
        }
    };
    let first = s1(&mut sub);
    assert_eq!(
        first.subject.as_str(),
        "turbo-dex.md.S1.bbo",
        "the new ask is a new top"
    );
    taker.send(&[common::buy(1, 1, 105, 3)]);
    taker.wait_for(|m| matches!(m, common::Msg::Fill(_)), "fill");
    let mut got = BTreeMap::new();
    while got.len() < 2 {
        let m = s1(&mut sub);
        let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON payload");
        got.insert(m.subject.to_string(), v);
    }
    let trade = &got["turbo-dex.md.S1.trade"];
    assert_eq!(trade["symbol"], "S1");
    assert_eq!(
        (trade["price"].as_i64(), trade["quantity"].as_u64()),
        (Some(105), Some(3))
    );
    assert_eq!(
        trade["seq"].as_u64(),
        Some(2),
        "the rest was 1, the trade 2"
    );
    assert_eq!(trade["aggressor"], "buy");
    let bbo = &got["turbo-dex.md.S1.bbo"];
    assert_eq!(
        (bbo["ask_price"].as_i64(), bbo["ask_quantity"].as_u64()),
        (Some(105), Some(1))
    );
    let fin = server.stop();
    assert_eq!(fin.total.md_nats_dropped, 0);
}
