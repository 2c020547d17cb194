//! The tests' stand-in server as a program, for trying dex-trader by hand
//! before (or besides) turbo-dex:
//!
//!     cargo run -p loadgen --release --example stand_in_server -- match 16
//!     dex-trader --server 127.0.0.1:PORT --mix match --connections 2 --verify
//!
//! Arguments: engine (`match`, `null` or `fast-null`, default match),
//! symbols (default 16). Prints `stand-in listening on 127.0.0.1:PORT` and
//! serves until killed.
//!
//! `fast-null` is a lean single-threaded answerer for measuring the
//! generator itself: it accepts every new order, cancels and replaces
//! whatever it is asked, and keeps no state, answering each read's
//! requests with one write. Pin it to another core than dex-trader:
//!
//!     taskset -c 1 target/release/examples/stand_in_server fast-null
//!     dex-trader --server 127.0.0.1:PORT --cores 0 --batch 2000 --mix insert

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use common::{EngineKind, ServerOptions, TestServer};
use wire::{
    Accepted, CancelReason, Canceled, Decoder, Frame, FrameWriter, HelloAck, Replaced, SymbolEntry,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let engine = match args.next().as_deref() {
        None | Some("match") => Some(EngineKind::Match),
        Some("null") => Some(EngineKind::Null),
        Some("fast-null") => None,
        Some(other) => {
            eprintln!("stand_in_server: unknown engine `{other}`; use match, null or fast-null");
            std::process::exit(2);
        }
    };
    let symbols = match args.next().map(|s| s.parse::<u32>()) {
        None => 16,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("stand_in_server: symbols must be a number above 0");
            std::process::exit(2);
        }
    };
    let Some(engine) = engine else {
        fast_null(symbols);
        return;
    };
    let server = TestServer::start(ServerOptions {
        engine,
        symbols,
        ..ServerOptions::default()
    });
    println!("stand-in listening on {}", server.address());
    loop {
        std::thread::park();
    }
}

/// Largest frame the fast null server takes (and announces).
const MAX_FRAME_BYTES: u32 = wire::DEFAULT_MAX_FRAME_BYTES;

fn fast_null(symbols: u32) {
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => {
            eprintln!("stand_in_server: cannot listen on 127.0.0.1: {e}");
            std::process::exit(1);
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("stand-in listening on {addr}"),
        Err(e) => {
            eprintln!("stand_in_server: {e}");
            std::process::exit(1);
        }
    }
    for (session, conn) in listener.incoming().enumerate() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || {
            if let Err(e) = answer(conn, session as u64 + 1, symbols) {
                eprintln!("stand_in_server: connection {session}: {e}");
            }
        });
    }
}

/// Answers one connection until it closes: one read, its answers, one write.
fn answer(mut conn: TcpStream, session: u64, symbols: u32) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let decoder = Decoder::for_server(MAX_FRAME_BYTES);
    let mut input = vec![0u8; 4 * MAX_FRAME_BYTES as usize];
    let mut len = 0;
    let mut output: Vec<u8> = Vec::with_capacity(4 * MAX_FRAME_BYTES as usize);
    let mut next_order_id = 1u64;
    loop {
        let n = conn.read(&mut input[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        output.clear();
        let mut w = FrameWriter::with_max_frame(&mut output, MAX_FRAME_BYTES);
        let mut frames = decoder.frames(&input[..len]);
        for frame in frames.by_ref() {
            match frame {
                Frame::Hello(h) => {
                    w.push(&HelloAck {
                        session_id: session.into(),
                        protocol_version: u16::from(wire::PROTOCOL_VERSION).into(),
                        flags: h[0].flags,
                        heartbeat_interval_ms: 1000.into(),
                        symbol_count: symbols.into(),
                        max_frame_bytes: MAX_FRAME_BYTES.into(),
                    });
                    for s in 0..symbols {
                        w.push(&SymbolEntry::new(s, &format!("SYM{s}")));
                    }
                }
                Frame::NewOrder(list) => {
                    for o in list {
                        if let Ok(fields) = o.fields() {
                            let id = o.client_order_id.get();
                            w.push(&Accepted::new(
                                id,
                                next_order_id,
                                0,
                                o.symbol.get(),
                                &fields,
                            ));
                            next_order_id += 1;
                        }
                    }
                }
                Frame::Cancel(list) => {
                    for c in list {
                        let (id, symbol) = (c.client_order_id.get(), c.symbol.get());
                        w.push(&Canceled::new(id, symbol, CancelReason::Requested, 0));
                    }
                }
                Frame::Replace(list) => {
                    for r in list {
                        let (id, symbol) = (r.client_order_id.get(), r.symbol.get());
                        w.push(&Replaced::new(
                            id,
                            symbol,
                            false,
                            r.price.get(),
                            r.quantity.get(),
                        ));
                    }
                }
                _ => {}
            }
        }
        if let Some(e) = frames.error() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e.to_string(),
            ));
        }
        let used = frames.consumed();
        input.copy_within(used..len, 0);
        len -= used;
        conn.write_all(&output)?;
    }
}
