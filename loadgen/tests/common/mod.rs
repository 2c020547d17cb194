//! A small turbo-dex stand-in for tests: std::net threads speaking the wire
//! protocol in front of the real matching core (`engine::book::Shard`) or
//! the null engine, with optional deliberate faults so `--verify` can be
//! shown to catch them.
//!
//! One reader thread per connection decodes requests, applies them to the
//! shared engine under one lock and queues each session's reports (in
//! engine order) on that session's channel; one writer thread per
//! connection sends them. Cross-session reports (the maker's fill) take the
//! same path, so every session sees its reports in engine order.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use engine::book::{
    ClientOrderIds, Command, Matcher, NullShard, Op, Report, SessionId, Shard, ShardConfig,
};
use wire::{
    CancelReason, Decoder, Frame, FrameWriter, HelloAck, Liquidity, SessionError, SessionErrorCode,
    SymbolEntry,
};

/// Which engine answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// engine::book::NullShard: accepts everything, matches nothing.
    Null,
    /// engine::book::Shard: the matching core.
    Match,
}

/// A deliberate mistake in the server's answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer correctly.
    None,
    /// Send the first fill twice.
    DuplicateFill,
    /// Make the first fill 1000 lots larger than it was.
    OverFill,
    /// Drop the first Canceled that answers a cancel request (its order never ends).
    DropTerminal,
    /// Drop the first maker fill (its trade is seen only as taker).
    DropMakerFill,
}

/// How the stand-in behaves.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub engine: EngineKind,
    pub symbols: u32,
    pub fault: Fault,
    pub max_frame_bytes: u32,
    /// When set, a Hello with other credentials gets SessionError(AuthenticationFailed).
    pub credentials: Option<String>,
    /// Close every connection this long after the first Hello.
    pub close_after: Option<Duration>,
    pub heartbeat_interval_ms: u32,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            engine: EngineKind::Match,
            symbols: 4,
            fault: Fault::None,
            max_frame_bytes: wire::DEFAULT_MAX_FRAME_BYTES,
            credentials: None,
            close_after: None,
            heartbeat_interval_ms: 1000,
        }
    }
}

enum Engine {
    Null(NullShard),
    Match(Box<Shard>),
}

impl Engine {
    fn process(&mut self, cmd: &Command, now_ns: u64, out: &mut Vec<(SessionId, Report)>) {
        match self {
            Engine::Null(e) => e.process(cmd, now_ns, out),
            Engine::Match(e) => e.process(cmd, now_ns, out),
        }
    }
}

struct Core {
    engine: Engine,
    outboxes: HashMap<SessionId, mpsc::Sender<Vec<u8>>>,
    fault: Fault,
    fault_done: bool,
    max_frame_bytes: u32,
}

impl Core {
    /// Applies the fault (once) to a batch of reports.
    fn inject(&mut self, reports: &mut Vec<(SessionId, Report)>) {
        if self.fault_done || self.fault == Fault::None {
            return;
        }
        let hit = reports.iter().position(|(_, r)| match (self.fault, r) {
            (Fault::DuplicateFill | Fault::OverFill, Report::Fill(_)) => true,
            (Fault::DropMakerFill, Report::Fill(f)) => f.liquidity == Liquidity::Maker.to_wire(),
            (Fault::DropTerminal, Report::Canceled(c)) => {
                c.reason == CancelReason::Requested.to_wire()
            }
            _ => false,
        });
        let Some(i) = hit else { return };
        self.fault_done = true;
        match self.fault {
            Fault::DuplicateFill => {
                let dup = reports[i];
                reports.insert(i + 1, dup);
            }
            Fault::OverFill => {
                if let (_, Report::Fill(f)) = &mut reports[i] {
                    f.quantity = (f.quantity.get() + 1000).into();
                }
            }
            Fault::DropTerminal | Fault::DropMakerFill => {
                reports.remove(i);
            }
            Fault::None => {}
        }
    }

    /// Encodes each session's reports (in engine order, runs of one kind
    /// coalesced into frames) and queues them.
    fn deliver(&mut self, reports: &[(SessionId, Report)]) {
        let mut sessions: Vec<SessionId> = Vec::new();
        for (sid, _) in reports {
            if !sessions.contains(sid) {
                sessions.push(*sid);
            }
        }
        for sid in sessions {
            let mut bytes = Vec::with_capacity(64 * reports.len());
            let mut w = FrameWriter::with_max_frame(&mut bytes, self.max_frame_bytes);
            for (_, r) in reports.iter().filter(|(s, _)| *s == sid) {
                match r {
                    Report::Accepted(m) => w.push(m),
                    Report::Rejected(m) => w.push(m),
                    Report::Fill(m) => w.push(m),
                    Report::Canceled(m) => w.push(m),
                    Report::Replaced(m) => w.push(m),
                    Report::Status(m) => w.push(m),
                }
            }
            if let Some(tx) = self.outboxes.get(&sid) {
                let _ = tx.send(bytes);
            }
        }
    }
}

/// Counts of what the stand-in saw.
#[derive(Default)]
pub struct ServerStats {
    pub requests: AtomicU64,
    pub sessions: AtomicU64,
    /// NewOrders whose client order id did not increase within their session.
    pub id_violations: AtomicU64,
}

/// A running stand-in server on 127.0.0.1.
pub struct TestServer {
    pub addr: SocketAddr,
    pub stats: Arc<ServerStats>,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl TestServer {
    /// Starts listening on 127.0.0.1 port 0.
    pub fn start(opts: ServerOptions) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let engine = match opts.engine {
            EngineKind::Null => Engine::Null(NullShard::new(0)),
            EngineKind::Match => Engine::Match(Box::new(Shard::new(
                0,
                1,
                opts.symbols,
                ShardConfig {
                    orders_max: 1 << 18,
                    ..ShardConfig::default()
                },
            ))),
        };
        let core = Arc::new(Mutex::new(Core {
            engine,
            outboxes: HashMap::new(),
            fault: opts.fault,
            fault_done: false,
            max_frame_bytes: opts.max_frame_bytes,
        }));
        let stats = Arc::new(ServerStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let epoch = Instant::now();
        let killer_armed = Arc::new(AtomicBool::new(false));
        {
            let (stats, stop, streams) = (stats.clone(), stop.clone(), streams.clone());
            thread::spawn(move || {
                let mut next_session = 1u64;
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let _ = conn.set_nodelay(true);
                    if let Ok(clone) = conn.try_clone() {
                        streams.lock().unwrap().push(clone);
                    }
                    let sid = SessionId::from_raw(next_session);
                    next_session += 1;
                    let (core, stats, opts) = (core.clone(), stats.clone(), opts.clone());
                    let (stop, streams, armed) =
                        (stop.clone(), streams.clone(), killer_armed.clone());
                    thread::spawn(move || {
                        serve(conn, sid, core, stats, opts, epoch, stop, streams, armed)
                    });
                }
            });
        }
        TestServer {
            addr,
            stats,
            stop,
            streams,
        }
    }

    /// `--server` value for this server.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        close_all(&self.streams);
        // Wake the accept loop so it sees the stop flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn close_all(streams: &Mutex<Vec<TcpStream>>) {
    if let Ok(list) = streams.lock() {
        for s in list.iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn serve(
    mut conn: TcpStream,
    sid: SessionId,
    core: Arc<Mutex<Core>>,
    stats: Arc<ServerStats>,
    opts: ServerOptions,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    killer_armed: Arc<AtomicBool>,
) {
    let decoder = Decoder::for_server(opts.max_frame_bytes);
    let mut buf = vec![0u8; 4 * opts.max_frame_bytes as usize];
    let mut len = 0usize;
    let Ok(writer) = conn.try_clone() else { return };
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let writer_thread = thread::spawn(move || {
        let mut writer = writer;
        for bytes in rx {
            if writer.write_all(&bytes).is_err() {
                break;
            }
        }
    });
    let mut account = None;
    let mut ids = ClientOrderIds::new();
    let mut cmds: Vec<Command> = Vec::new();
    let mut reports: Vec<(SessionId, Report)> = Vec::new();
    'read: loop {
        let n = match conn.read(&mut buf[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if stop.load(Ordering::Relaxed) {
            break;
        }
        len += n;
        let mut frames = decoder.frames(&buf[..len]);
        cmds.clear();
        let mut hello_answer: Option<Vec<u8>> = None;
        for frame in frames.by_ref() {
            let Some(acct) = account else {
                let Frame::Hello(h) = frame else {
                    refuse(&tx, SessionErrorCode::NotLoggedIn, "hello required first");
                    break 'read;
                };
                let h = h[0];
                if let Some(want) = &opts.credentials
                    && h.credentials() != want.as_bytes()
                {
                    refuse(
                        &tx,
                        SessionErrorCode::AuthenticationFailed,
                        "bad credentials",
                    );
                    break 'read;
                }
                account = Some(h.account.get());
                stats.sessions.fetch_add(1, Ordering::Relaxed);
                core.lock().unwrap().outboxes.insert(sid, tx.clone());
                let mut out = Vec::new();
                let mut w = FrameWriter::with_max_frame(&mut out, opts.max_frame_bytes);
                w.push(&HelloAck {
                    session_id: sid.get().into(),
                    protocol_version: u16::from(wire::PROTOCOL_VERSION).into(),
                    flags: h.flags,
                    heartbeat_interval_ms: opts.heartbeat_interval_ms.into(),
                    symbol_count: opts.symbols.into(),
                    max_frame_bytes: opts.max_frame_bytes.into(),
                });
                for s in 0..opts.symbols {
                    w.push(&SymbolEntry::new(s, &format!("SYM{s}")));
                }
                hello_answer = Some(out);
                if let Some(after) = opts.close_after
                    && !killer_armed.swap(true, Ordering::Relaxed)
                {
                    let (streams, stop) = (streams.clone(), stop.clone());
                    thread::spawn(move || {
                        thread::sleep(after);
                        stop.store(true, Ordering::Relaxed);
                        close_all(&streams);
                    });
                }
                continue;
            };
            let mut push = |op| {
                cmds.push(Command {
                    session: sid,
                    account: acct,
                    op,
                })
            };
            match frame {
                Frame::NewOrder(list) => {
                    for o in list {
                        if ids.admit(o.client_order_id.get()) {
                            push(Op::New(*o));
                        } else {
                            stats.id_violations.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Frame::Cancel(list) => list.iter().for_each(|c| push(Op::Cancel(*c))),
                Frame::Replace(list) => list.iter().for_each(|r| push(Op::Replace(*r))),
                Frame::Heartbeat(list) => {
                    let mut out = Vec::new();
                    for h in list {
                        let _ = wire::append_frame(
                            &[wire::ServerHeartbeat { token: h.token }],
                            &mut out,
                        );
                    }
                    let _ = tx.send(out);
                }
                Frame::Hello(_) => {
                    refuse(&tx, SessionErrorCode::DuplicateHello, "second hello");
                    break 'read;
                }
                _ => {
                    refuse(&tx, SessionErrorCode::UnknownKind, "unexpected kind");
                    break 'read;
                }
            }
        }
        if let Some(e) = frames.error() {
            refuse(&tx, SessionErrorCode::MalformedFrame, &e.to_string());
            break;
        }
        let used = frames.consumed();
        buf.copy_within(used..len, 0);
        len -= used;
        if let Some(out) = hello_answer {
            let _ = tx.send(out);
        }
        if !cmds.is_empty() {
            stats
                .requests
                .fetch_add(cmds.len() as u64, Ordering::Relaxed);
            let mut core = core.lock().unwrap();
            let now = epoch.elapsed().as_nanos() as u64;
            reports.clear();
            for cmd in &cmds {
                core.engine.process(cmd, now, &mut reports);
            }
            core.inject(&mut reports);
            core.deliver(&reports);
        }
    }
    // Cancel on disconnect; the session is gone, so its cancels go nowhere.
    if let Some(acct) = account {
        let mut core = core.lock().unwrap();
        core.outboxes.remove(&sid);
        let now = epoch.elapsed().as_nanos() as u64;
        reports.clear();
        core.engine.process(
            &Command {
                session: sid,
                account: acct,
                op: Op::CancelSession,
            },
            now,
            &mut reports,
        );
    }
    drop(tx);
    let _ = writer_thread.join();
    let _ = conn.shutdown(Shutdown::Both);
}

fn refuse(tx: &mpsc::Sender<Vec<u8>>, code: SessionErrorCode, text: &str) {
    let mut out = Vec::new();
    let _ = wire::append_frame(&[SessionError::new(code, 0, 0, text)], &mut out);
    let _ = tx.send(out);
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub fn unused_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}
