//! Market data over TCP (PROTOCOL.md §8.9): subscribers on both cores,
//! trading sessions on both cores, a book rebuilt from snapshot + updates
//! whose every sequence number, checksum and top is checked; a slow
//! subscriber cut off without touching anyone else; resubscribing; version
//! 1 sessions unchanged; sequence numbers across a restart.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::*;
use engine::server::EngineKind;
use wire::*;

/// A subscriber's copy of the books, checked message by message.
#[derive(Default)]
struct Feed {
    books: HashMap<u32, Copy>,
    trades: u64,
    updates: u64,
    checksums: u64,
    tops: u64,
    snapshots: u64,
    cut_offs: u64,
}

#[derive(Default)]
struct Copy {
    /// price -> (quantity, orders), per side (0 bids, 1 asks).
    sides: [BTreeMap<i64, (u64, u32)>; 2],
    seq: u64,
    /// Snapshot rows still expected (between Subscribed and SnapshotEnd).
    rows_left: u32,
}

impl Copy {
    fn best(&self, side: usize) -> TopLevel {
        let level = if side == 0 {
            self.sides[0].iter().next_back()
        } else {
            self.sides[1].iter().next()
        };
        level.map_or(TopLevel::default(), |(&price, &(quantity, orders))| {
            TopLevel {
                price,
                quantity,
                orders,
            }
        })
    }

    fn checksum(&self) -> u32 {
        book_checksum(
            self.sides[0].iter().rev().map(|(&p, &(q, _))| (p, q)),
            self.sides[1].iter().map(|(&p, &(q, _))| (p, q)),
        )
    }
}

impl Feed {
    /// Applies one message; every rule of §8.9 that a client can check.
    fn apply(&mut self, m: &Msg) {
        match m {
            Msg::MdStatus(s) => {
                let symbol = s.symbol.get();
                match s.event().expect("a known event") {
                    MdStatusEvent::Subscribed => {
                        let copy = self.books.entry(symbol).or_default();
                        *copy = Copy {
                            seq: s.seq.get(),
                            rows_left: s.levels.get(),
                            ..Copy::default()
                        };
                    }
                    MdStatusEvent::SnapshotEnd => {
                        let copy = &self.books[&symbol];
                        assert_eq!(copy.rows_left, 0, "every announced row came");
                        assert_eq!(copy.seq, s.seq.get());
                        assert_eq!(copy.checksum(), s.checksum.get(), "snapshot checksum");
                        self.snapshots += 1;
                    }
                    MdStatusEvent::Checksum => {
                        let copy = &self.books[&symbol];
                        assert_eq!(copy.seq, s.seq.get(), "checksum at the last update");
                        assert_eq!(
                            copy.checksum(),
                            s.checksum.get(),
                            "symbol {symbol} at {}",
                            copy.seq
                        );
                        self.checksums += 1;
                    }
                    MdStatusEvent::CutOff => {
                        self.cut_offs += 1;
                        self.books.clear();
                    }
                    MdStatusEvent::Unsubscribed => {
                        self.books.remove(&symbol);
                    }
                }
            }
            Msg::MdDepth(d) => {
                let symbol = d.symbol.get();
                let copy = self.books.get_mut(&symbol).expect("subscribed first");
                let side = usize::from(d.side().unwrap() == Side::Sell);
                if d.is_snapshot() {
                    assert_eq!(d.seq.get(), copy.seq, "a row carries the snapshot's seq");
                    assert!(copy.rows_left > 0, "no more rows than announced");
                    copy.rows_left -= 1;
                } else {
                    assert_eq!(copy.rows_left, 0, "an update inside a snapshot");
                    assert_eq!(d.seq.get(), copy.seq + 1, "symbol {symbol}: a gap");
                    copy.seq += 1;
                    self.updates += 1;
                }
                let (q, n) = (d.quantity.get(), d.orders.get());
                assert_eq!(q == 0, n == 0);
                if q == 0 {
                    assert!(copy.sides[side].remove(&d.price.get()).is_some());
                } else {
                    copy.sides[side].insert(d.price.get(), (q, n));
                }
            }
            Msg::MdTrade(t) => {
                let copy = self.books.get_mut(&t.symbol.get()).expect("subscribed");
                assert_eq!(t.seq.get(), copy.seq + 1, "a gap at a trade");
                copy.seq += 1;
                assert!(t.engine_ns.get() > 0);
                self.trades += 1;
            }
            Msg::MdTop(t) => {
                let copy = &self.books[&t.symbol.get()];
                assert_eq!(t.seq.get(), copy.seq, "a top reflects the last update");
                assert_eq!((t.bid(), t.ask()), (copy.best(0), copy.best(1)));
                self.tops += 1;
            }
            _ => {}
        }
    }

    fn apply_all(&mut self, msgs: &[Msg]) {
        msgs.iter().for_each(|m| self.apply(m));
    }
}

fn is_md(m: &Msg) -> bool {
    matches!(
        m,
        Msg::MdTrade(_) | Msg::MdTop(_) | Msg::MdDepth(_) | Msg::MdStatus(_)
    )
}

fn status(event: MdStatusEvent) -> impl Fn(&Msg) -> bool {
    move |m| matches!(m, Msg::MdStatus(s) if s.event == event as u8)
}

const ALL: u32 = SUBSCRIBE_TRADES | SUBSCRIBE_TOP_OF_BOOK | SUBSCRIBE_DEPTH;

/// Rests a ladder on every symbol, then crosses it: trades, level changes
/// and cancels on both cores.
fn trade_a_while(a: &mut Client, b: &mut Client, symbols: u32, base_id: u64) -> u64 {
    let mut id = base_id;
    let mut sent = 0;
    for round in 0..4i64 {
        let mut orders = Vec::new();
        for s in 0..symbols {
            for k in 0..5 {
                id += 1;
                orders.push(sell(id, s, 100 + k + round, 3));
            }
        }
        a.send(&orders);
        sent += orders.len();
        let mut takers = Vec::new();
        for s in 0..symbols {
            id += 1;
            takers.push(buy(id, s, 102 + round, 7));
        }
        b.send(&takers);
        sent += takers.len();
        // A cancel of the last resting sell on each symbol.
        let cancels: Vec<Cancel> = orders
            .iter()
            .rev()
            .take(2)
            .map(|o| Cancel::new(o.client_order_id.get(), o.symbol.get()))
            .collect();
        a.send(&cancels);
    }
    a.collect_until(
        |m| matches!(m, Msg::Accepted(_)),
        sent - 4 * symbols as usize,
        "a's accepts",
    );
    b.collect_until(
        |m| matches!(m, Msg::Accepted(_)),
        4 * symbols as usize,
        "b's accepts",
    );
    id
}

#[test]
fn the_depth_stream_rebuilds_every_book_with_snapshots_checksums_and_tops() {
    let cpus = test_cpus();
    let server = start(&cpus, 4, 6, EngineKind::Match);
    let addr = server.local_addr();
    let mut a = Client::login(addr, 1, 0);
    let mut b = Client::login(addr, 2, 0);
    // Resting orders before anyone subscribes: the snapshots are not empty.
    let mut id = trade_a_while(&mut a, &mut b, 6, 0);
    let mut sub = Client::login(addr, 3, 0);
    sub.send(&[Subscribe::new(ALL_SYMBOLS, ALL)]);
    let mut feed = Feed::default();
    let first = sub.collect_until(status(MdStatusEvent::SnapshotEnd), 6, "six snapshots");
    feed.apply_all(&first);
    assert_eq!(feed.snapshots, 6);
    assert!(
        feed.books
            .values()
            .any(|c| c.seq > 0 && !c.sides[1].is_empty()),
        "the snapshots carry the earlier book"
    );
    for round in 0..3 {
        id = trade_a_while(&mut a, &mut b, 6, id + 1000 * round);
    }
    // Every trade the traders saw reaches the subscriber.
    let msgs = sub.collect_until(|m| matches!(m, Msg::MdTrade(_)), 1, "trades");
    feed.apply_all(&msgs);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let want_trades = 6 * 4 * 3 * 7 / 3;
    while feed.trades < want_trades as u64 && std::time::Instant::now() < deadline {
        let more = sub.drain_for(20);
        feed.apply_all(&more);
    }
    assert!(feed.trades >= want_trades as u64, "{} trades", feed.trades);
    assert!(feed.updates > feed.trades, "levels changed");
    assert!(feed.checksums > 0 && feed.tops > 0);
    // A version 1 session on the same server saw none of it.
    drop(server);
}

#[test]
fn version_1_sessions_see_version_1_frames_and_no_market_data() {
    let cpus = test_cpus();
    let server = start(&cpus, 2, 2, EngineKind::Match);
    let addr = server.local_addr();
    let mut old = Client::login_version(addr, 1, 0, 1);
    let mut taker = Client::login(addr, 2, 0);
    let mut sub = Client::login(addr, 3, 0);
    sub.send(&[Subscribe::new(0, ALL)]);
    sub.wait_for(status(MdStatusEvent::Subscribed), "subscribed");
    old.send(&[Subscribe::new(0, ALL)]);
    let r = old.wait_for(|m| matches!(m, Msg::Rejected(_)), "the old answer");
    let Msg::Rejected(r) = r else { unreachable!() };
    assert_eq!(r.reason(), Ok(RejectReason::NotSupported));
    old.send(&[sell(1, 0, 100, 5)]);
    old.wait_for(|m| matches!(m, Msg::Accepted(_)), "accept");
    taker.send(&[buy(1, 0, 100, 5)]);
    old.wait_for(|m| matches!(m, Msg::Fill(_)), "fill");
    sub.wait_for(|m| matches!(m, Msg::MdTrade(_)), "the trade on the feed");
    let rest = old.drain_for(100);
    assert!(!rest.iter().any(is_md), "{rest:?}");
    assert_eq!(
        old.versions,
        [1].into(),
        "every frame to a version 1 client is version 1"
    );
    assert_eq!(sub.versions, [2].into());
}

#[test]
fn unsubscribe_resubscribe_and_bad_subscribes() {
    let cpus = test_cpus();
    let server = start(&cpus, 2, 3, EngineKind::Match);
    let addr = server.local_addr();
    let mut a = Client::login(addr, 1, 0);
    let mut sub = Client::login(addr, 3, 0);
    sub.send(&[Subscribe::new(7, ALL), Subscribe::new(1, 1 << 9)]);
    let r = sub.collect_until(|m| matches!(m, Msg::Rejected(_)), 2, "two rejects");
    let reasons: Vec<_> = r
        .iter()
        .filter_map(|m| match m {
            Msg::Rejected(r) => Some(r.reason().unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        [RejectReason::UnknownSymbol, RejectReason::InvalidFlags]
    );
    let mut feed = Feed::default();
    sub.send(&[Subscribe::new(1, ALL)]);
    feed.apply_all(&sub.collect_until(status(MdStatusEvent::SnapshotEnd), 1, "snapshot"));
    a.send(&[sell(1, 1, 100, 5), sell(2, 1, 101, 5)]);
    feed.apply_all(&sub.collect_until(status(MdStatusEvent::Checksum), 1, "checksum"));
    let seq = feed.books[&1].seq;
    assert!(seq >= 2, "two updates: {seq}");
    // Resubscribing restarts with a fresh snapshot at the current sequence.
    sub.send(&[Subscribe::new(1, ALL)]);
    let again = sub.collect_until(status(MdStatusEvent::SnapshotEnd), 1, "fresh snapshot");
    let subscribed = again.iter().rev().find_map(|m| match m {
        Msg::MdStatus(s) if s.event == MdStatusEvent::Subscribed as u8 => Some(*s),
        _ => None,
    });
    let subscribed = subscribed.expect("a new Subscribed");
    assert_eq!((subscribed.seq.get(), subscribed.levels.get()), (seq, 2));
    feed.apply_all(&again);
    // Unsubscribed: nothing more for that symbol.
    sub.send(&[Subscribe::new(1, 0)]);
    sub.wait_for(status(MdStatusEvent::Unsubscribed), "unsubscribed");
    a.send(&[sell(3, 1, 102, 5)]);
    a.wait_for(
        |m| matches!(m, Msg::Accepted(a) if a.client_order_id.get() == 3),
        "accept",
    );
    let after = sub.drain_for(100);
    assert!(!after.iter().any(is_md), "{after:?}");
}

#[test]
fn a_slow_subscriber_is_cut_off_without_slowing_anyone_else() {
    let cpus = test_cpus();
    let server = start_with(&cpus, 2, 2, EngineKind::Match, |c| {
        c.md_max_queue = 256 << 10;
        c.shard.orders_max = 1 << 16;
    });
    let addr = server.local_addr();
    let mut a = Client::login(addr, 1, 0);
    let mut b = Client::login(addr, 2, 0);
    let mut fast = Client::login(addr, 3, 0);
    // It reads nothing until the end: its socket buffers fill, then the
    // server's output for it piles up.
    let mut slow = connect_small_window(addr);
    let mut hello = Vec::new();
    FrameWriter::new(&mut hello).push(&Hello::new(4, 0, 0, ""));
    slow.send_raw(&hello);
    slow.send(&[Subscribe::new(ALL_SYMBOLS, ALL)]);
    fast.send(&[Subscribe::new(ALL_SYMBOLS, ALL)]);
    let mut feed = Feed::default();
    feed.apply_all(&fast.collect_until(status(MdStatusEvent::SnapshotEnd), 2, "snapshots"));
    // Trade until the slow one is cut off (it reads nothing meanwhile).
    let mut id = 0;
    let mut rounds = 0;
    let cut = loop {
        rounds += 1;
        let mut makers = Vec::new();
        let mut takers = Vec::new();
        for k in 0..200 {
            id += 1;
            makers.push(sell(id, (k % 2) as u32, 100 + (k % 7), 1));
            takers.push(buy(id, (k % 2) as u32, 110, 1));
        }
        a.send(&makers);
        b.send(&takers);
        a.collect_until(|m| matches!(m, Msg::Fill(_)), 200, "maker fills");
        b.collect_until(|m| matches!(m, Msg::Fill(_)), 200, "taker fills");
        feed.apply_all(&fast.drain_for(5));
        let cut_offs = server.sample().total().md_cut_offs;
        if cut_offs > 0 || rounds >= 300 {
            break cut_offs;
        }
    };
    assert_eq!(
        cut, 1,
        "one cut-off (the slow subscriber) after {rounds} rounds"
    );
    // The fast subscriber kept every sequence number and checksum.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while feed.trades < 200 * rounds && std::time::Instant::now() < deadline {
        feed.apply_all(&fast.drain_for(20));
    }
    assert_eq!(feed.trades, 200 * rounds);
    assert_eq!(feed.cut_offs, 0);
    // The slow one finds the CutOff once it reads, and may subscribe again.
    slow.stream
        .set_read_timeout(Some(std::time::Duration::from_millis(50)))
        .unwrap();
    let mut slow_feed = Feed::default();
    let msgs = slow.collect_until(status(MdStatusEvent::CutOff), 1, "the cut-off");
    for m in &msgs {
        if let Msg::MdStatus(s) = m
            && s.event == MdStatusEvent::CutOff as u8
        {
            assert_eq!(s.symbol.get(), ALL_SYMBOLS);
        }
    }
    slow_feed.apply_all(&msgs);
    assert_eq!(slow_feed.cut_offs, 1);
    slow.send(&[Subscribe::new(0, ALL)]);
    slow.wait_for(
        status(MdStatusEvent::SnapshotEnd),
        "a fresh snapshot after the cut-off",
    );
}

/// Connects with a 4 KiB receive buffer, set before the connection is
/// made (so the window is small from the start): a client that does not
/// read holds little, and the server's output for it piles up soon.
fn connect_small_window(addr: std::net::SocketAddr) -> Client {
    use std::os::fd::FromRawFd;
    let std::net::SocketAddr::V4(v4) = addr else {
        panic!("tests listen on 127.0.0.1");
    };
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is the socket just made and owned here; from now on the
    // TcpStream closes it.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let bytes: libc::c_int = 4096;
    // SAFETY: a valid socket, and a pointer to a c_int with its size, as
    // SO_RCVBUF expects; the kernel only reads it during the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a valid socket and a sockaddr_in with its size; the kernel
    // only reads it during the call.
    let rc = unsafe {
        libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
    Client::from_stream(stream)
}

#[test]
fn sequence_numbers_survive_a_restart() {
    let dir = TempDir::new("md-restart");
    let cpus = test_cpus();
    let journal = |c: &mut engine::server::ServerConfig| {
        c.journal = Some(engine::server::durable::JournalSettings {
            config: engine::journal::JournalConfig {
                dir: dir.path().to_path_buf(),
                segment_bytes: 1 << 20,
                snapshot_every_records: 1 << 20,
            },
            fsync: false,
        });
    };
    let seq_before = {
        let server = start_with(&cpus, 2, 2, EngineKind::Match, journal);
        let addr = server.local_addr();
        let mut a = Client::login(addr, 1, 0);
        let mut b = Client::login(addr, 2, 0);
        let mut sub = Client::login(addr, 3, 0);
        sub.send(&[Subscribe::new(1, ALL)]);
        let mut feed = Feed::default();
        feed.apply_all(&sub.collect_until(status(MdStatusEvent::SnapshotEnd), 1, "snapshot"));
        a.send(&[sell(1, 1, 100, 5), sell(2, 1, 101, 5)]);
        a.collect_until(|m| matches!(m, Msg::Accepted(_)), 2, "accepts");
        b.send(&[buy(1, 1, 101, 7)]);
        b.wait_for(|m| matches!(m, Msg::Fill(_)), "fill");
        feed.apply_all(&sub.collect_until(|m| matches!(m, Msg::MdTrade(_)), 2, "two trades"));
        feed.apply_all(&sub.drain_for(50));
        let seq = feed.books[&1].seq;
        server.stop();
        seq
    };
    assert!(
        seq_before >= 6,
        "2 rests + 2 trades + 2 level updates: {seq_before}"
    );
    let server = start_with(&cpus, 2, 2, EngineKind::Match, journal);
    let mut sub = Client::login(server.local_addr(), 3, 0);
    sub.send(&[Subscribe::new(1, ALL)]);
    let msgs = sub.collect_until(status(MdStatusEvent::SnapshotEnd), 1, "snapshot");
    let mut feed = Feed::default();
    feed.apply_all(&msgs);
    assert_eq!(
        feed.books[&1].seq, seq_before,
        "the sequence continues after a restart"
    );
    assert_eq!(feed.books[&1].sides[1].len(), 1, "the remaining ask");
}
