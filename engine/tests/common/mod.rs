//! A small blocking protocol client and server helpers for the server's
//! integration tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use engine::server::{EngineKind, PollMode, Server, ServerConfig};
use wire::*;

/// Starts an in-process server on 127.0.0.1:0 with `cores` (CPU ids) and
/// `shards`, blocking poll (tests never spin).
pub fn start(cores: &[usize], shards: u32, symbols: usize, engine: EngineKind) -> Server {
    start_with(cores, shards, symbols, engine, |_| {})
}

pub fn start_with(
    cores: &[usize],
    shards: u32,
    symbols: usize,
    engine: EngineKind,
    tweak: impl FnOnce(&mut ServerConfig),
) -> Server {
    let names = (0..symbols).map(|i| format!("S{i}")).collect();
    let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), cores.to_vec(), names);
    cfg.shards = shards;
    cfg.poll = PollMode::Block;
    cfg.engine = engine;
    cfg.shard.orders_max = 1 << 14;
    cfg.shard.levels_per_side_max = 1 << 10;
    // Test clients do not send heartbeats; the idle timeout has its own test.
    cfg.heartbeat_ms = 20_000;
    tweak(&mut cfg);
    Server::start(cfg).expect("server starts")
}

/// CPUs available to tests: the first two allowed CPUs (or one).
pub fn test_cpus() -> Vec<usize> {
    let allowed = tuning::allowed_cpus().expect("affinity");
    allowed.iter().take(2).collect()
}

/// An owned decoded server message.
#[derive(Clone, Debug, PartialEq)]
pub enum Msg {
    Ack(HelloAck),
    Symbol(SymbolEntry),
    Accepted(Accepted),
    Rejected(Rejected),
    Fill(Fill),
    Canceled(Canceled),
    Replaced(Replaced),
    Heartbeat(ServerHeartbeat),
    Status(OrderStatus),
    Error(SessionError),
    MdTrade(MdTrade),
    MdTop(MdTopOfBook),
    MdDepth(MdDepth),
    MdStatus(MdStatus),
    ShardOwner(wire::ShardOwner),
    ClusterMap(wire::ClusterMap),
    ClusterNode(wire::ClusterNode),
    ClusterShard(wire::ClusterShard),
    Other(Kind),
}

impl Msg {
    pub fn coid(&self) -> Option<u64> {
        Some(match self {
            Msg::Accepted(m) => m.client_order_id.get(),
            Msg::Rejected(m) => m.client_order_id.get(),
            Msg::Fill(m) => m.client_order_id.get(),
            Msg::Canceled(m) => m.client_order_id.get(),
            Msg::Replaced(m) => m.client_order_id.get(),
            Msg::Status(m) => m.client_order_id.get(),
            _ => return None,
        })
    }
}

pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pub inbox: Vec<Msg>,
    pub session: u64,
    pub symbols: Vec<SymbolEntry>,
    pub closed: bool,
    /// The header versions of the frames received.
    pub versions: std::collections::BTreeSet<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect(addr).expect("connect"))
    }

    /// A client on a connected stream.
    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Client {
            stream,
            buf: Vec::new(),
            inbox: Vec::new(),
            session: 0,
            symbols: Vec::new(),
            closed: false,
            versions: Default::default(),
        }
    }

    /// Connects and logs in; waits for the ack and the whole directory.
    pub fn login(addr: SocketAddr, account: u64, flags: u16) -> Client {
        Client::login_version(addr, account, flags, PROTOCOL_VERSION)
    }

    /// Logs in speaking protocol `version` (its frames carry it too).
    pub fn login_version(addr: SocketAddr, account: u64, flags: u16, version: u8) -> Client {
        let mut c = Client::connect(addr);
        let mut hello = Hello::new(account, flags, 0, "");
        hello.protocol_version = u16::from(version).into();
        let mut out = Vec::new();
        FrameWriter::new(&mut out)
            .with_version(version)
            .push(&hello);
        c.send_raw(&out);
        let ack = c.wait_for(|m| matches!(m, Msg::Ack(_)), "hello ack");
        let Msg::Ack(ack) = ack else { unreachable!() };
        c.session = ack.session_id.get();
        let n = ack.symbol_count.get() as usize;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut rest = Vec::new();
            for m in c.inbox.drain(..) {
                match m {
                    Msg::Symbol(s) => c.symbols.push(s),
                    other => rest.push(other),
                }
            }
            c.inbox = rest;
            if c.symbols.len() >= n || Instant::now() > deadline {
                break;
            }
            c.pump();
        }
        assert_eq!(c.symbols.len(), n, "the whole symbol directory arrives");
        c
    }

    pub fn send<M: Message>(&mut self, msgs: &[M]) {
        let mut out = Vec::new();
        let mut w = FrameWriter::new(&mut out);
        w.push_all(msgs);
        self.send_raw(&out);
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        if self.stream.write_all(bytes).is_err() {
            self.closed = true;
        }
    }

    /// Reads what is available (up to one read timeout) into the inbox.
    pub fn pump(&mut self) {
        let mut tmp = [0u8; 65536];
        match self.stream.read(&mut tmp) {
            Ok(0) => self.closed = true,
            Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => self.closed = true,
        }
        let decoder = Decoder::for_client(MAX_FRAME_BYTES_LIMIT);
        let mut frames = decoder.frames(&self.buf);
        let mut got = Vec::new();
        let mut at = 0;
        while let Some(f) = frames.next() {
            if let Some(&v) = self.buf.get(at + 5) {
                self.versions.insert(v);
            }
            at = frames.consumed();
            match f {
                Frame::HelloAck(m) => got.extend(m.iter().map(|x| Msg::Ack(*x))),
                Frame::SymbolEntry(m) => got.extend(m.iter().map(|x| Msg::Symbol(*x))),
                Frame::Accepted(m) => got.extend(m.iter().map(|x| Msg::Accepted(*x))),
                Frame::Rejected(m) => got.extend(m.iter().map(|x| Msg::Rejected(*x))),
                Frame::Fill(m) => got.extend(m.iter().map(|x| Msg::Fill(*x))),
                Frame::Canceled(m) => got.extend(m.iter().map(|x| Msg::Canceled(*x))),
                Frame::Replaced(m) => got.extend(m.iter().map(|x| Msg::Replaced(*x))),
                Frame::ServerHeartbeat(m) => got.extend(m.iter().map(|x| Msg::Heartbeat(*x))),
                Frame::OrderStatus(m) => got.extend(m.iter().map(|x| Msg::Status(*x))),
                Frame::SessionError(m) => got.extend(m.iter().map(|x| Msg::Error(*x))),
                Frame::MdTrade(m) => got.extend(m.iter().map(|x| Msg::MdTrade(*x))),
                Frame::MdTopOfBook(m) => got.extend(m.iter().map(|x| Msg::MdTop(*x))),
                Frame::MdDepth(m) => got.extend(m.iter().map(|x| Msg::MdDepth(*x))),
                Frame::MdStatus(m) => got.extend(m.iter().map(|x| Msg::MdStatus(*x))),
                Frame::ShardOwner(m) => got.extend(m.iter().map(|x| Msg::ShardOwner(*x))),
                Frame::ClusterMap(m) => got.extend(m.iter().map(|x| Msg::ClusterMap(*x))),
                Frame::ClusterNode(m) => got.extend(m.iter().map(|x| Msg::ClusterNode(*x))),
                Frame::ClusterShard(m) => got.extend(m.iter().map(|x| Msg::ClusterShard(*x))),
                other => got.push(Msg::Other(other.kind())),
            }
        }
        assert_eq!(frames.error(), None, "the server sends well-formed frames");
        let used = frames.consumed();
        self.buf.drain(..used);
        self.inbox.extend(got);
    }

    /// Waits until a message matching `pred` is in the inbox, removes and
    /// returns it (earlier messages stay).
    pub fn wait_for(&mut self, pred: impl Fn(&Msg) -> bool, what: &str) -> Msg {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = self.inbox.iter().position(&pred) {
                return self.inbox.remove(i);
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; inbox: {:?}",
                self.inbox
            );
            assert!(
                !self.closed || !self.buf.is_empty(),
                "connection closed while waiting for {what}; inbox: {:?}",
                self.inbox
            );
            self.pump();
        }
    }

    /// Collects messages until `n` of them match `pred` (all messages are returned in order).
    pub fn collect_until(&mut self, pred: impl Fn(&Msg) -> bool, n: usize, what: &str) -> Vec<Msg> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.inbox.iter().filter(|m| pred(m)).count() >= n {
                return std::mem::take(&mut self.inbox);
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} x {what}; have {}",
                self.inbox.iter().filter(|m| pred(m)).count()
            );
            assert!(!self.closed, "connection closed while waiting for {what}");
            self.pump();
        }
    }

    /// Reads for `for_ms` and returns everything received.
    pub fn drain_for(&mut self, for_ms: u64) -> Vec<Msg> {
        let deadline = Instant::now() + Duration::from_millis(for_ms);
        while Instant::now() < deadline && !self.closed {
            self.pump();
        }
        self.pump();
        std::mem::take(&mut self.inbox)
    }

    /// Waits for the server to close the connection; returns what came before.
    pub fn wait_closed(&mut self) -> Vec<Msg> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.closed {
            assert!(
                Instant::now() < deadline,
                "server did not close the connection; inbox {:?}",
                self.inbox
            );
            self.pump();
        }
        std::mem::take(&mut self.inbox)
    }
}

pub fn buy(coid: u64, symbol: u32, price: i64, qty: u64) -> NewOrder {
    NewOrder::limit(coid, symbol, Side::Buy, price, qty)
}

pub fn sell(coid: u64, symbol: u32, price: i64, qty: u64) -> NewOrder {
    NewOrder::limit(coid, symbol, Side::Sell, price, qty)
}

pub fn ioc(coid: u64, symbol: u32, side: Side, price: i64, qty: u64) -> NewOrder {
    NewOrder::new(
        coid,
        symbol,
        side,
        OrderType::Limit,
        TimeInForce::Ioc,
        false,
        SelfTradePrevention::CancelIncoming,
        price,
        qty,
    )
}

/// The core index that owns symbol `s` with `shards` shards on `cores` cores.
pub fn owner_core(symbol: u32, shards: u32, cores: usize) -> usize {
    ((symbol % shards) as usize) % cores
}

pub fn session_core(session: u64) -> usize {
    engine::session_id::SessionId::from_raw(session).core()
}

pub fn is_engine(kind: EngineKind) -> bool {
    kind == EngineKind::Match
}

#[allow(unused_imports)] // each test file uses a different part
pub use testkit::{TempDir, ready_addr};

/// One HTTP/1.1 request over a fresh connection: (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
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

pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path)
}
