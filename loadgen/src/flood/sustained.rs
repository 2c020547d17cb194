//! The sustained bad-logon flood: `--bad-logon-rate R` wrong-password
//! Hellos a second for `--flood-duration`, each on its own connection,
//! optionally from every address of `--sources` in turn, with every
//! answer counted and timed. It runs beside a trading run to show what a
//! logon flood costs matching (`scripts/bench-logon-flood.sh`).
//!
//! One thread: it opens the connections that are due (paced from the
//! start, so a slow moment is caught up, never skipped), sends each
//! Hello, and waits for the answers of all open connections at once with
//! `poll(2)`; a connection is closed at its first answer. The range
//! arithmetic ([`parse_sources`]) and the pacing ([`due`]) are pure.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use wire::{Decoded, Decoder, Hello, MAX_FRAME_BYTES_LIMIT};

use super::{Answer, LogonOutcome, LogonTally, classify_logon};

/// The most addresses `--sources` may name.
pub const SOURCES_MAX: u64 = 65_536;

/// Source addresses, used one after the other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sources {
    first: u32,
    count: u32,
}

impl Sources {
    /// How many addresses.
    pub fn len(&self) -> u64 {
        u64::from(self.count)
    }

    /// Always false: a range has at least one address.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The `i`-th connection's source address (round robin).
    pub fn nth(&self, i: u64) -> Ipv4Addr {
        let offset = (i % u64::from(self.count.max(1))) as u32;
        Ipv4Addr::from(self.first.wrapping_add(offset))
    }
}

/// Parses `ADDR/PREFIX` (IPv4): the usable host addresses of the range
/// (without the network and broadcast addresses when the prefix is
/// shorter than 31), at most [`SOURCES_MAX`].
pub fn parse_sources(s: &str) -> Result<Sources, String> {
    let (addr, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected ADDR/PREFIX, for example 127.0.0.0/24"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{addr:?}: not an IPv4 address (only IPv4 ranges are supported)"))?;
    let prefix: u32 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("{prefix:?}: the prefix must be 0 to 32"))?;
    let size = 1u64 << (32 - prefix);
    let network = u32::from(addr) & (((1u64 << 32) - size) as u32);
    let (first, count) = if prefix >= 31 {
        (network, size)
    } else {
        (network + 1, size - 2)
    };
    if count > SOURCES_MAX {
        return Err(format!(
            "{s}: {count} addresses; at most {SOURCES_MAX} (a prefix of 16 or longer)"
        ));
    }
    Ok(Sources {
        first,
        count: count as u32,
    })
}

/// How many logons are due `elapsed` into a flood of `rate` a second that
/// lasts `duration` (never more than the whole flood's).
pub fn due(rate: u32, elapsed: Duration, duration: Duration) -> u64 {
    let total = (u128::from(rate) * duration.as_nanos() / 1_000_000_000) as u64;
    let now = (u128::from(rate) * elapsed.as_nanos() / 1_000_000_000) as u64;
    now.min(total)
}

/// What the sustained flood does.
#[derive(Clone, Debug)]
pub struct Plan {
    pub addr: SocketAddr,
    pub account: u64,
    /// The wrong password every Hello sends.
    pub password: String,
    pub rate: u32,
    pub duration: Duration,
    /// How long to wait for each answer.
    pub timeout: Duration,
    pub sources: Option<Sources>,
}

/// A connection waiting for its answer.
struct Open {
    stream: TcpStream,
    sent_at: Instant,
    buf: Vec<u8>,
}

/// Runs the flood; `Err` when it cannot run at all (a source address that
/// is not local, a Hello that cannot be encoded).
pub fn run(plan: &Plan) -> Result<LogonTally, String> {
    let mut hello = Vec::new();
    wire::append_frame(
        &[Hello::new(plan.account, 0, 0, &plan.password)],
        &mut hello,
    )
    .map_err(|e| format!("encoding the Hello: {e:?}"))?;
    let mut decoder = Decoder::for_client(MAX_FRAME_BYTES_LIMIT);
    let mut tally = LogonTally::default();
    let mut open: Vec<Open> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut sent: u64 = 0;
    let mut used_sources = std::collections::HashSet::new();
    let start = Instant::now();
    let total = due(plan.rate, plan.duration, plan.duration);
    let mut chunk = [0u8; 4096];
    while sent < total || !open.is_empty() {
        let target = due(plan.rate, start.elapsed(), plan.duration);
        while sent < target {
            let source = plan.sources.as_ref().map(|s| s.nth(sent));
            sent += 1;
            let at = Instant::now();
            match connect(plan.addr, source, plan.timeout, &hello) {
                Ok(stream) => {
                    if let Some(s) = source {
                        used_sources.insert(s);
                    }
                    open.push(Open {
                        stream,
                        sent_at: at,
                        buf: Vec::new(),
                    });
                }
                Err(Connect::Bind(e)) => {
                    return Err(format!(
                        "cannot send from {}: {e} (--sources must name local addresses, \
                         such as 127.0.0.0/24 against a server on loopback)",
                        source.map_or_else(String::new, |s| s.to_string())
                    ));
                }
                Err(Connect::Io(e)) => tally.record(
                    &LogonOutcome::NoAnswer(format!("connect: {}", e.kind())),
                    at.elapsed().as_secs_f64(),
                ),
            }
        }
        if open.is_empty() {
            if sent < total {
                std::thread::sleep(Duration::from_micros(200));
            }
            continue;
        }
        fds.clear();
        fds.extend(open.iter().map(|o| libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&o.stream),
            events: libc::POLLIN,
            revents: 0,
        }));
        // While sending, wake for the next due logon; after, for answers.
        let wait_ms = if sent < total { 1 } else { 20 };
        // SAFETY: `fds` is a valid, initialized array of `fds.len()`
        // pollfd structs that lives across the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        // Walk backwards so that swap_remove keeps `fds[i]` = `open[i]`
        // for the indexes still to visit.
        for i in (0..open.len()).rev() {
            let o = &mut open[i];
            let mut outcome = None;
            if fds[i].revents != 0 {
                match o.stream.read(&mut chunk) {
                    Ok(0) => outcome = Some(first_answer(&mut decoder, &o.buf, true)),
                    Ok(n) => {
                        o.buf.extend_from_slice(&chunk[..n]);
                        let first = first_answer(&mut decoder, &o.buf, false);
                        if !matches!(first, LogonOutcome::NoAnswer(_)) {
                            outcome = Some(first);
                        }
                    }
                    Err(e)
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                    Err(e) => {
                        outcome = Some(LogonOutcome::NoAnswer(format!("reading: {}", e.kind())))
                    }
                }
            }
            if outcome.is_none() && o.sent_at.elapsed() >= plan.timeout {
                outcome = Some(LogonOutcome::NoAnswer("no answer".into()));
            }
            if let Some(outcome) = outcome {
                tally.record(&outcome, o.sent_at.elapsed().as_secs_f64());
                open.swap_remove(i);
            }
        }
    }
    tally.sending_seconds = plan.duration.as_secs_f64();
    tally.sources = used_sources.len() as u64;
    Ok(tally)
}

enum Connect {
    /// Binding the source address failed: the flood cannot run.
    Bind(std::io::Error),
    /// This one connection failed.
    Io(std::io::Error),
}

/// Connects (from `source`, if given), sends the Hello and returns the
/// stream, non-blocking.
fn connect(
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    timeout: Duration,
    hello: &[u8],
) -> Result<TcpStream, Connect> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(Connect::Io)?;
    if let Some(ip) = source {
        socket
            .bind(&SocketAddr::new(IpAddr::V4(ip), 0).into())
            .map_err(Connect::Bind)?;
    }
    socket
        .connect_timeout(&addr.into(), timeout)
        .map_err(Connect::Io)?;
    let mut stream: TcpStream = socket.into();
    stream.set_nodelay(true).map_err(Connect::Io)?;
    stream.write_all(hello).map_err(Connect::Io)?;
    stream.set_nonblocking(true).map_err(Connect::Io)?;
    Ok(stream)
}

/// The outcome the first decoded answer in `buf` gives; `NoAnswer` while
/// none is complete (`closed`: the connection ended without one).
fn first_answer(decoder: &mut Decoder, buf: &[u8], closed: bool) -> LogonOutcome {
    let mut answers = Vec::new();
    match decoder.decode(buf) {
        Ok(Decoded::Frame(frame, _)) => Answer::from_frame(&frame, &mut answers),
        Ok(Decoded::NeedMore(_)) => {}
        Err(e) => return LogonOutcome::NoAnswer(format!("undecodable answer: {e:?}")),
    }
    match answers.first() {
        Some(a) => classify_logon(Some(a)),
        None if closed => LogonOutcome::NoAnswer("closed without an answer".into()),
        None => LogonOutcome::NoAnswer("incomplete".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_the_usable_hosts_of_the_range() {
        let s = parse_sources("127.0.0.0/24").unwrap();
        assert_eq!(s.len(), 254);
        assert_eq!(s.nth(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(s.nth(253), Ipv4Addr::new(127, 0, 0, 254));
        assert_eq!(s.nth(254), Ipv4Addr::new(127, 0, 0, 1), "round robin");
        // Host bits in the address are ignored.
        assert_eq!(
            parse_sources("127.0.0.77/30").unwrap().nth(0).octets()[3],
            77 & !3 | 1
        );
        let one = parse_sources("127.0.0.9/32").unwrap();
        assert_eq!((one.len(), one.nth(5)), (1, Ipv4Addr::new(127, 0, 0, 9)));
        assert_eq!(parse_sources("10.0.0.0/31").unwrap().len(), 2);
        assert_eq!(parse_sources("10.0.0.0/16").unwrap().len(), 65_534);
        for bad in ["127.0.0.1", "127.0.0.0/33", "::1/128", "x/8", "10.0.0.0/8"] {
            assert!(parse_sources(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn logons_are_paced_from_the_start_and_stop_at_the_total() {
        let d = Duration::from_secs(10);
        assert_eq!(due(1_000, Duration::ZERO, d), 0);
        assert_eq!(due(1_000, Duration::from_millis(1), d), 1);
        assert_eq!(due(1_000, Duration::from_millis(2_500), d), 2_500);
        assert_eq!(due(1_000, Duration::from_secs(60), d), 10_000);
        assert_eq!(due(3, Duration::from_millis(999), d), 2);
    }
}
