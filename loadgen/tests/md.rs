//! dex-trader's market-data subscribers (`--subscribe`) against the real
//! `turbo-dex` binary: two trading sessions and subscribers that keep a
//! local book per symbol, checked with `--verify` (every sequence number,
//! every checksum, every top of book).
//!
//! The binary is found as in `turbo_dex.rs`: `cargo build -p engine --bin
//! turbo-dex` with this test's cargo, target directory and profile. A
//! scripted stand-in server shows that `--verify` fails on a gap and a
//! checksum mismatch and that both, and a cut-off, are repaired.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `<target>/<profile>/turbo-dex`, built (or found up to date) by cargo.
fn turbo_dex_binary() -> PathBuf {
    testkit::cargo_built("engine", "turbo-dex")
}

/// The binary on the last CPU this process may use, 16 symbols, a fresh
/// journal; killed on drop.
struct TurboDex {
    child: Child,
    addr: std::net::SocketAddr,
    _journal: testkit::TempDir,
}

impl TurboDex {
    fn start(extra: &[&str]) -> TurboDex {
        let allowed = tuning::allowed_cpus().expect("read the affinity mask");
        let cpu = allowed.last().expect("at least one CPU").to_string();
        let journal = testkit::TempDir::new("journal-md");
        let mut child = testkit::turbo_dex(turbo_dex_binary(), &cpu)
            .args(["--symbols", "16", "--engine", "match", "--quiet"])
            .args(extra)
            .arg("--journal")
            .arg(journal.join("journal"))
            .current_dir(env!("CARGO_TARGET_TMPDIR"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start turbo-dex");
        let (addr, _stdout) = testkit::ready_addr(&mut child);
        TurboDex {
            child,
            addr,
            _journal: journal,
        }
    }
}

impl Drop for TurboDex {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// dex-trader against `server` with `args`, writing its JSON report; the
/// output and the parsed report.
fn dex_trader(server: &TurboDex, name: &str, args: &[&str]) -> (Output, serde_json::Value) {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_dex-trader"))
        .args(["--server", &server.addr.to_string(), "--quiet"])
        .args(["--cores", "0", "--warmup", "200ms", "--duration", "1s"])
        .arg("--json")
        .arg(&path)
        .args(args)
        .output()
        .expect("run dex-trader");
    testkit::assert_success(&out);
    let json = std::fs::read_to_string(&path).expect("json report");
    let _ = std::fs::remove_file(&path);
    let report = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    (out, report)
}

fn number(v: &serde_json::Value, path: &str) -> u64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is not a count in {v}"))
}

#[test]
fn a_depth_subscriber_follows_two_trading_sessions_exactly() {
    let server = TurboDex::start(&[]);
    let (out, r) = dex_trader(
        &server,
        "md-depth",
        &[
            "--mix",
            "match",
            "--connections",
            "2",
            "--batch",
            "100",
            "--verify",
            "--subscribe",
            "all",
            "--depth",
            "--top",
        ],
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("verify       ok"), "{stdout}");
    assert!(stdout.contains("md checks"), "{stdout}");
    assert!(number(&r, "trades") > 0, "{r}");
    assert_eq!(r["verify_ok"], true, "{r}");
    let md = &r["market_data"];
    assert_eq!(number(md, "subscribers"), 1, "{md}");
    assert_eq!(number(md, "symbols"), 16, "{md}");
    assert_eq!(number(md, "gaps"), 0, "{md}");
    assert_eq!(number(md, "checksum_mismatches"), 0, "{md}");
    assert_eq!(number(md, "top_mismatches"), 0, "{md}");
    assert_eq!(number(md, "unexpected"), 0, "{md}");
    assert_eq!(number(md, "errors"), 0, "{md}");
    assert!(number(md, "checksum_ok") > 0, "{md}");
    assert!(number(md, "tops_ok") > 0, "{md}");
    assert_eq!(number(md, "snapshots"), 16, "one per symbol: {md}");
    assert!(number(md, "trades") > 0, "{md}");
    assert!(number(md, "depth_updates") > 0, "{md}");
    assert!(number(md, "latency_us.samples") > 0, "{md}");
}

/// Several subscribers on two threads, symbols by name and by id, trades
/// and conflated tops only: each gets its own stream, sequence numbers
/// only increase.
#[test]
fn several_subscribers_by_name_and_id() {
    let server = TurboDex::start(&[]);
    let (_, r) = dex_trader(
        &server,
        "md-names",
        &[
            "--mix",
            "match",
            "--batch",
            "50",
            "--verify",
            "--subscribe",
            "SYM0000,1",
            "--top",
            "--conflate",
            "--subscribers",
            "3",
            "--subscriber-threads",
            "2",
        ],
    );
    let md = &r["market_data"];
    assert_eq!(number(md, "subscribers"), 3, "{md}");
    assert_eq!(number(md, "symbols"), 2, "{md}");
    assert_eq!(number(md, "snapshots"), 6, "{md}");
    assert_eq!(number(md, "gaps"), 0, "{md}");
    assert_eq!(number(md, "unexpected"), 0, "{md}");
    assert_eq!(number(md, "messages_by_kind.depth_update"), 0, "{md}");
    assert_eq!(md["channels"], "trades+top (conflated)", "{md}");
}

/// A name the directory does not list is a usage error (exit 2) that
/// says what the server lists.
#[test]
fn an_unknown_symbol_is_a_usage_error() {
    let server = TurboDex::start(&[]);
    let out = Command::new(env!("CARGO_BIN_EXE_dex-trader"))
        .args(["--server", &server.addr.to_string(), "--quiet"])
        .args(["--cores", "0", "--duration", "1s", "--subscribe", "NOPE"])
        .output()
        .expect("run dex-trader");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--subscribe NOPE: no such symbol") && stderr.contains("SYM0000"),
        "{stderr}"
    );
}

/// A stand-in server: every order is rejected (so the trading sessions
/// run, and verify, without trades), and each Subscribe is answered from a
/// script that breaks the feed the ways a subscriber must notice: a gap,
/// then a snapshot with a wrong checksum, then a cut-off, then a sound
/// feed.
mod scripted {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};

    use wire::{
        ALL_SYMBOLS, Decoder, Frame, HelloAck, Kind, MdDepth, MdStatus, MdStatusEvent, MdTrade,
        RejectReason, Rejected, ServerHeartbeat, Side, SymbolEntry,
    };

    /// Starts it on 127.0.0.1; the threads end with the process.
    pub fn start() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("address");
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                std::thread::spawn(move || serve(stream));
            }
        });
        addr
    }

    fn serve(mut stream: TcpStream) {
        let decoder = Decoder::for_server(1 << 20);
        let (mut buf, mut chunk) = (Vec::new(), vec![0u8; 64 << 10]);
        let mut subscribes = 0;
        loop {
            let n = match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut out = Vec::new();
            let mut frames = decoder.frames(&buf);
            for frame in frames.by_ref() {
                answer(&frame, &mut out, &mut subscribes);
            }
            if frames.error().is_some() {
                return;
            }
            let used = frames.consumed();
            buf.drain(..used);
            if !out.is_empty() && stream.write_all(&out).is_err() {
                return;
            }
        }
    }

    fn push<M: wire::Message>(out: &mut Vec<u8>, msgs: &[M]) {
        wire::append_frame(msgs, out).expect("encode");
    }

    fn status(e: MdStatusEvent, seq: u64, checksum: u32, levels: u32) -> MdStatus {
        MdStatus::new(0, e, seq, 1, checksum, levels)
    }

    fn answer(frame: &Frame<'_>, out: &mut Vec<u8>, subscribes: &mut u32) {
        let level = |seq, quantity| MdDepth::new(0, Side::Buy, false, seq, 1, 100, quantity, 1);
        let row = MdDepth::new(0, Side::Buy, true, 10, 1, 100, 5, 1);
        let good = wire::book_checksum([(100, 5)], []);
        match frame {
            Frame::Hello(h) => {
                push(
                    out,
                    &[HelloAck {
                        session_id: 1.into(),
                        protocol_version: h[0].protocol_version,
                        flags: h[0].flags,
                        heartbeat_interval_ms: 1000.into(),
                        symbol_count: 1.into(),
                        max_frame_bytes: (1u32 << 20).into(),
                    }],
                );
                push(out, &[SymbolEntry::new(0, "SYM0")]);
            }
            Frame::NewOrder(orders) => {
                let rejects: Vec<Rejected> = orders
                    .iter()
                    .map(|o| {
                        let id = o.client_order_id.get();
                        Rejected::new(id, o.symbol.get(), RejectReason::BookFull, Kind::NewOrder)
                    })
                    .collect();
                push(out, &rejects);
            }
            Frame::Heartbeat(h) => push(out, &[ServerHeartbeat { token: h[0].token }]),
            Frame::Subscribe(list) => {
                for s in *list {
                    assert!(s.symbol.get() == 0 || s.symbol.get() == ALL_SYMBOLS);
                    *subscribes += 1;
                    match *subscribes {
                        // An empty book, then seq 1 and seq 3: a gap.
                        1 => {
                            push(out, &[status(MdStatusEvent::Subscribed, 0, 0, 0)]);
                            push(out, &[status(MdStatusEvent::SnapshotEnd, 0, 0, 0)]);
                            push(out, &[level(1, 5), level(3, 6)]);
                        }
                        // A snapshot whose checksum is not its book's.
                        2 => {
                            push(out, &[status(MdStatusEvent::Subscribed, 10, 0, 1)]);
                            push(out, &[row]);
                            push(out, &[status(MdStatusEvent::SnapshotEnd, 10, !good, 1)]);
                        }
                        // A sound snapshot, then a cut-off.
                        3 => {
                            push(out, &[status(MdStatusEvent::Subscribed, 10, 0, 1)]);
                            push(out, &[row]);
                            push(out, &[status(MdStatusEvent::SnapshotEnd, 10, good, 1)]);
                            let cut = MdStatus::new(ALL_SYMBOLS, MdStatusEvent::CutOff, 0, 1, 0, 0);
                            push(out, &[cut]);
                        }
                        // Sound from here on.
                        _ => {
                            push(out, &[status(MdStatusEvent::Subscribed, 10, 0, 1)]);
                            push(out, &[row]);
                            push(out, &[status(MdStatusEvent::SnapshotEnd, 10, good, 1)]);
                            push(out, &[MdTrade::new(0, Side::Sell, 11, 1, 1, 100, 3)]);
                            push(out, &[level(12, 2)]);
                            let after = wire::book_checksum([(100, 2)], []);
                            push(out, &[status(MdStatusEvent::Checksum, 12, after, 0)]);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// A gap, a checksum mismatch and a cut-off: counted, each repaired by
/// subscribing again (the feed ends sound), and `--verify` fails the run
/// saying why.
#[test]
fn verify_fails_on_a_gap_and_a_checksum_mismatch() {
    let addr = scripted::start();
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("md-scripted-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_dex-trader"))
        .args(["--server", &addr.to_string(), "--quiet", "--cores", "0"])
        .args(["--warmup", "100ms", "--duration", "500ms", "--verify"])
        .args(["--subscribe", "all", "--depth"])
        .arg("--json")
        .arg(&path)
        .output()
        .expect("run dex-trader");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("market data: 1 sequence gap(s)")
            && stdout.contains("market data: 1 checksum mismatch(es)")
            && stdout.contains("seq 3 after 1"),
        "{stdout}"
    );
    assert!(stderr.contains("--verify found"), "{stderr}");
    let json = std::fs::read_to_string(&path).expect("json report");
    let _ = std::fs::remove_file(&path);
    let r: serde_json::Value = serde_json::from_str(&json).expect("json");
    let md = &r["market_data"];
    assert_eq!(number(md, "gaps"), 1, "{md}");
    assert_eq!(number(md, "checksum_mismatches"), 1, "{md}");
    assert_eq!(number(md, "cut_offs"), 1, "{md}");
    assert_eq!(number(md, "resyncs"), 2, "{md}");
    // The empty first one, the one cut off, the last; their checksums and
    // the last feed's MdStatus(Checksum).
    assert_eq!(number(md, "snapshots"), 3, "{md}");
    assert_eq!(number(md, "checksum_ok"), 4, "{md}");
    assert_eq!(number(md, "unexpected"), 0, "{md}");
    assert_eq!(r["verify_ok"], false, "{r}");
}

/// A market-data queue of 64 KiB (the server's smallest) under batches of
/// 2,000 with eight depth subscribers on one thread: the server may cut
/// them off (how often depends on the machine); each cut-off is answered by
/// subscribing again, and the feed stays exact: no gap, no mismatch.
#[test]
fn cut_off_subscribers_resubscribe_and_stay_exact() {
    let server = TurboDex::start(&["--md-max-queue", "65536"]);
    let (_, r) = dex_trader(
        &server,
        "md-cut-off",
        &[
            "--mix",
            "match",
            "--batch",
            "2000",
            "--verify",
            "--subscribe",
            "all",
            "--depth",
            "--top",
            "--subscribers",
            "8",
        ],
    );
    let md = &r["market_data"];
    eprintln!("cut-offs: {}", md["cut_offs"]);
    assert_eq!(number(md, "gaps"), 0, "{md}");
    assert_eq!(number(md, "checksum_mismatches"), 0, "{md}");
    assert_eq!(number(md, "top_mismatches"), 0, "{md}");
    assert_eq!(number(md, "unexpected"), 0, "{md}");
    assert_eq!(number(md, "errors"), 0, "{md}");
    assert!(number(md, "snapshots") >= 8 * 16, "{md}");
    assert!(number(md, "checksum_ok") > 0, "{md}");
    assert_eq!(r["verify_ok"], true, "{r}");
}
