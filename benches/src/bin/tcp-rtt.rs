//! `tcp-rtt`: the bare loopback TCP round trip on this machine, the floor
//! any request/response latency over loopback sits on. A pinned echo
//! thread and a pinned client exchange 32-byte messages (one NewOrder's
//! size) one at a time over a TCP_NODELAY connection with blocking
//! syscalls, and the client records each round trip. With `--spin` both
//! ends use non-blocking sockets and retry at once instead of sleeping:
//! the floor for programs that spin (turbo-dex `--poll spin`, dex-trader
//! `--spin`), with no thread wake-up in the trip.
//!
//!     tcp-rtt [--count N] [--server-cpu C] [--client-cpu C] [--spin] [--json FILE]

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

const MESSAGE_BYTES: usize = 32;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("tcp-rtt [--count N] [--server-cpu C] [--client-cpu C] [--spin] [--json FILE]");
        println!(
            "Measures the loopback TCP round trip of a 32-byte message (blocking, TCP_NODELAY;\n\
             --spin: non-blocking sockets polled in a busy loop on both ends)."
        );
        return;
    }
    let count: usize = arg(&args, "--count")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let server_cpu: Option<usize> = arg(&args, "--server-cpu").and_then(|v| v.parse().ok());
    let client_cpu: Option<usize> = arg(&args, "--client-cpu").and_then(|v| v.parse().ok());
    let json = arg(&args, "--json");
    let spin = args.iter().any(|a| a == "--spin");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| fail(&format!("bind: {e}")));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| fail(&format!("local_addr: {e}")));
    let echo = std::thread::spawn(move || {
        if let Some(cpu) = server_cpu {
            let _ = tuning::pin_current_thread(cpu);
        }
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let _ = s.set_nodelay(true);
        let _ = s.set_nonblocking(spin);
        let mut buf = [0u8; MESSAGE_BYTES];
        while read_all(&mut s, &mut buf).is_ok() {
            if write_all(&mut s, &buf).is_err() {
                return;
            }
        }
    });
    if let Some(cpu) = client_cpu {
        let _ = tuning::pin_current_thread(cpu);
    }
    let mut c = TcpStream::connect(addr).unwrap_or_else(|e| fail(&format!("connect: {e}")));
    let _ = c.set_nodelay(true);
    if c.set_nonblocking(spin).is_err() {
        fail("cannot make the socket non-blocking");
    }
    let mut buf = [7u8; MESSAGE_BYTES];
    let warmup = count / 10;
    let mut samples_ns: Vec<u64> = Vec::with_capacity(count);
    for i in 0..count + warmup {
        let t = Instant::now();
        if write_all(&mut c, &buf).is_err() || read_all(&mut c, &mut buf).is_err() {
            fail("the echo connection broke");
        }
        if i >= warmup {
            samples_ns.push(t.elapsed().as_nanos() as u64);
        }
    }
    drop(c);
    let _ = echo.join();
    samples_ns.sort_unstable();
    let pct =
        |p: f64| samples_ns[((samples_ns.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
    let (p50, p99, p9999) = (pct(0.50), pct(0.99), pct(0.9999));
    println!(
        "loopback TCP round trip of {MESSAGE_BYTES} bytes over {count} trips: p50 {p50:.1} us  p99 {p99:.1} us  p99.99 {p9999:.1} us"
    );
    if let Some(path) = json {
        let text = format!(
            "{{\"count\": {count}, \"message_bytes\": {MESSAGE_BYTES}, \"spin\": {spin}, \"rtt_us\": {{\"p50\": {p50:.2}, \"p99\": {p99:.2}, \"p9999\": {p9999:.2}}}}}\n"
        );
        if let Err(e) = std::fs::write(&path, text) {
            fail(&format!("cannot write {path}: {e}"));
        }
    }
}

/// `read_exact` that, on a non-blocking socket, retries at once.
fn read_all(s: &mut TcpStream, mut buf: &mut [u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match s.read(buf) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                std::hint::spin_loop()
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `write_all` that, on a non-blocking socket, retries at once.
fn write_all(s: &mut TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                std::hint::spin_loop()
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn fail(msg: &str) -> ! {
    eprintln!("tcp-rtt: error: {msg}");
    std::process::exit(1)
}
