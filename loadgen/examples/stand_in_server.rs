//! The tests' stand-in server as a program, for trying dex-trader by hand
//! before (or besides) turbo-dex:
//!
//!     cargo run -p loadgen --release --example stand_in_server -- match 16
//!     dex-trader --server 127.0.0.1:PORT --mix match --connections 2 --verify
//!
//! Arguments: engine (`match` or `null`, default match), symbols (default
//! 16). Prints `stand-in listening on 127.0.0.1:PORT` and serves until killed.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{EngineKind, ServerOptions, TestServer};

fn main() {
    let mut args = std::env::args().skip(1);
    let engine = match args.next().as_deref() {
        None | Some("match") => EngineKind::Match,
        Some("null") => EngineKind::Null,
        Some(other) => {
            eprintln!("stand_in_server: unknown engine `{other}`; use match or null");
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
