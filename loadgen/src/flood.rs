//! `dex-trader flood`: exercises the server's limits and reports what it
//! refused, per kind.
//!
//! Four parts, each selectable with `--what`:
//!
//! - `rate`: one session sends `--burst` IOC NewOrders back to back in one
//!   frame and counts the first answer of each (Accepted, or Rejected with
//!   its reason: `RateLimited` past the order entry rate's burst), and
//!   whether the session was closed (SessionError `OrderFlood`);
//! - `open-orders`: one session rests GTC orders one by one far from the
//!   market (buy at 1 tick) until `Rejected(TooManyOpenOrders)` (or
//!   `--max-open` orders), and reports how many rested first; the session
//!   logs on with cancel-on-disconnect, so they are canceled at the end;
//! - `connections`: opens `--connections` connections at once and counts
//!   those the server refuses with SessionError `TooManyConnections`;
//! - `bad-logons`: `--bad-logons` connections send a version 2 Hello with a
//!   wrong password at once, and each answer is counted and timed
//!   (`AuthenticationFailed` one second later, or at once with "too many
//!   failed logons" past the server's per-address failure limit). It runs
//!   last: the failures it causes refuse every logon from this address for
//!   a minute. With `--bad-logon-rate R` it is a sustained flood instead:
//!   R bad logons a second for `--duration`, optionally from every address
//!   of `--sources` in turn ([`sustained`]), to run beside a trading run.
//!
//! The counting and classifying ([`BurstTally`], [`OpenOrdersTally`],
//! [`classify_logon`], [`FloodReport`]) is free of I/O; the probes use
//! blocking sockets, as this mode measures no latency.

use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use wire::{
    Decoded, Decoder, Frame, HELLO_CANCEL_ON_DISCONNECT, Hello, MAX_FRAME_BYTES_LIMIT, NewOrder,
    OrderType, RejectReason, SelfTradePrevention, SessionErrorCode, Side, TimeInForce,
};

use crate::cli::parse_duration;

pub mod sustained;

const AFTER_HELP: &str = "\
Examples:
  dex-trader flood --server 127.0.0.1:9000
  dex-trader flood --server 127.0.0.1:9000 --what rate --burst 500 --expect-burst 100
  dex-trader flood --server 127.0.0.1:9000 --account 1 --password-file pw.txt --json flood.json

The refusals are the expected outcome: exit 0 when the probes ran, 1 when a
probe could not run or the server did not enforce a limit given with an
--expect-* option, 2 on a usage error. Run bad-logons last or alone: its
failures make the server refuse every logon from this address for a minute.";

/// `dex-trader flood`: probes the server's limits (order entry rate, open
/// orders per account, connections per address, failed logons) and
/// reports what it refused.
#[derive(Parser, Debug, Clone)]
#[command(name = "dex-trader flood", version, long_about = None, after_help = AFTER_HELP)]
pub struct FloodArgs {
    /// The server, HOST:PORT (the first address it resolves to).
    #[arg(long, env = "DEX_SERVER", value_name = "HOST:PORT")]
    pub server: String,

    /// The parts to run, comma separated: rate, open-orders, connections,
    /// bad-logons (always run in that order). Default: all.
    #[arg(long, value_delimiter = ',', value_enum, value_name = "LIST")]
    pub what: Vec<Part>,

    /// Account of the rate and open-orders sessions (and the account the bad
    /// logons name). Default: the start time in milliseconds since the
    /// epoch, an account no earlier run used (a server without --accounts).
    #[arg(long, value_name = "ID")]
    pub account: Option<u64>,

    /// The password of --account, for a server with --accounts.
    #[arg(
        long,
        default_value = "",
        env = "DEX_CREDENTIALS",
        hide_env_values = true,
        value_name = "STR"
    )]
    pub credentials: String,

    /// Read the password from the first line of FILE instead.
    #[arg(long, value_name = "FILE", conflicts_with = "credentials")]
    pub password_file: Option<PathBuf>,

    /// NewOrders in the one frame of the rate part.
    #[arg(long, default_value_t = 200, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=2_000))]
    pub burst: u32,

    /// Most orders the open-orders part rests before it gives up looking
    /// for TooManyOpenOrders.
    #[arg(long, default_value_t = 1_000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_open: u32,

    /// Connections the connections part opens at once (turbo-dex's default
    /// per-address limit is 256).
    #[arg(long, default_value_t = 300, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=5_000))]
    pub connections: u32,

    /// Bad logons the bad-logons part sends (at once). turbo-dex refuses at
    /// once after 10 failures per address and minute.
    #[arg(long, default_value_t = 12, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub bad_logons: u32,

    /// Bad logons a second: run the bad-logons part as a sustained flood at
    /// this rate for --flood-duration (instead of --bad-logons at once),
    /// each connection closed at its answer.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub bad_logon_rate: Option<u32>,

    /// How long the sustained flood of --bad-logon-rate lasts.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "TIME")]
    pub flood_duration: Duration,

    /// Source addresses of the sustained flood's connections, one after
    /// the other, as ADDR/PREFIX (for example 127.0.0.0/24 on loopback,
    /// where every address is local): each address has its own failed
    /// logon limit on the server, so more of the logons get a password
    /// check. Default: the system's choice (one address).
    #[arg(long, value_name = "CIDR", value_parser = sustained::parse_sources,
          requires = "bad_logon_rate")]
    pub sources: Option<sustained::Sources>,

    /// The server's --order-burst: exit 1 if a burst larger than this got
    /// no RateLimited at all.
    #[arg(long, value_name = "N")]
    pub expect_burst: Option<u32>,

    /// The server's --max-open-orders-per-account: exit 1 if more orders
    /// rested, or none was refused with TooManyOpenOrders.
    #[arg(long, value_name = "N")]
    pub expect_open_orders: Option<u32>,

    /// The server's --max-connections-per-address: exit 1 if more
    /// connections were held open than this.
    #[arg(long, value_name = "N")]
    pub expect_connections: Option<u32>,

    /// How long to wait for any one answer.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "TIME")]
    pub timeout: Duration,

    /// Also write the counts as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// One part of the flood.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// A burst of NewOrders past the order entry rate.
    Rate,
    /// Resting orders until TooManyOpenOrders.
    OpenOrders,
    /// Connections past the per-address limit.
    Connections,
    /// Hellos with a wrong password.
    BadLogons,
}

impl Part {
    /// Every part, in the order they run.
    pub const ALL: [Part; 4] = [
        Part::Rate,
        Part::OpenOrders,
        Part::Connections,
        Part::BadLogons,
    ];
}

/// The parts `--what` selects, deduplicated, in running order.
pub fn parts(what: &[Part]) -> Vec<Part> {
    let mut parts = if what.is_empty() {
        Part::ALL.to_vec()
    } else {
        what.to_vec()
    };
    parts.sort();
    parts.dedup();
    parts
}

/// One answer from the server, as far as the flood cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The logon was accepted.
    HelloAck {
        /// How many SymbolEntry rows follow.
        symbols: u32,
    },
    /// A row of the symbol directory.
    Symbol(u32),
    /// An order was accepted.
    Accepted(u64),
    /// A request was rejected; `None` for a reason this client does not know.
    Rejected(u64, Option<RejectReason>),
    /// The session is closed with this code and text.
    SessionError(Option<SessionErrorCode>, String),
    /// Anything else (fills, cancels, heartbeats).
    Other,
}

impl Answer {
    /// The answers of one decoded frame.
    pub fn from_frame(frame: &Frame<'_>, out: &mut Vec<Answer>) {
        match frame {
            Frame::HelloAck(m) => out.extend(m.iter().map(|a| Answer::HelloAck {
                symbols: a.symbol_count.get(),
            })),
            Frame::SymbolEntry(m) => out.extend(m.iter().map(|s| Answer::Symbol(s.symbol.get()))),
            Frame::Accepted(m) => {
                out.extend(m.iter().map(|a| Answer::Accepted(a.client_order_id.get())))
            }
            Frame::Rejected(m) => out.extend(
                m.iter()
                    .map(|r| Answer::Rejected(r.client_order_id.get(), r.reason().ok())),
            ),
            Frame::SessionError(m) => out.extend(m.iter().map(|e| {
                Answer::SessionError(
                    e.code().ok(),
                    String::from_utf8_lossy(e.text()).into_owned(),
                )
            })),
            _ => out.push(Answer::Other),
        }
    }
}

fn error_name(code: Option<SessionErrorCode>) -> String {
    code.map_or_else(|| "unknown".to_string(), |c| format!("{c:?}"))
}

/// The first answers to a burst of NewOrders.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BurstTally {
    /// NewOrders sent.
    pub sent: u64,
    /// Answered Accepted.
    pub accepted: u64,
    /// Answered Rejected(RateLimited).
    pub rate_limited: u64,
    /// Answered Rejected for another reason, by reason.
    pub other_rejects: Vec<(String, u64)>,
    /// The SessionError that closed the session, if one did (code, text).
    pub closed: Option<(String, String)>,
}

impl BurstTally {
    /// A tally for `sent` NewOrders.
    pub fn new(sent: u64) -> Self {
        BurstTally {
            sent,
            ..BurstTally::default()
        }
    }

    /// Counts one answer (only first answers: Accepted and Rejected).
    pub fn record(&mut self, answer: &Answer) {
        match answer {
            Answer::Accepted(_) => self.accepted += 1,
            Answer::Rejected(_, Some(RejectReason::RateLimited)) => self.rate_limited += 1,
            Answer::Rejected(_, reason) => {
                let name = reason.map_or_else(|| "unknown".to_string(), |r| format!("{r:?}"));
                match self.other_rejects.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, count)) => *count += 1,
                    None => self.other_rejects.push((name, 1)),
                }
            }
            Answer::SessionError(code, text) => {
                self.closed = Some((error_name(*code), text.clone()));
            }
            _ => {}
        }
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.accepted + self.rate_limited + self.other_rejects.iter().map(|(_, c)| c).sum::<u64>()
    }

    /// Requests never answered.
    pub fn unanswered(&self) -> u64 {
        self.sent.saturating_sub(self.answered())
    }

    /// True when the session was closed for an order flood.
    pub fn order_flood(&self) -> bool {
        self.closed.as_ref().is_some_and(|(c, _)| c == "OrderFlood")
    }

    /// True when nothing more will come: all answered, or closed.
    pub fn done(&self) -> bool {
        self.unanswered() == 0 || self.closed.is_some()
    }
}

/// What resting orders one by one found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenOrdersTally {
    /// Orders that rested (Accepted) before the first TooManyOpenOrders.
    pub rested: u64,
    /// True once an order was refused with TooManyOpenOrders.
    pub refused: bool,
    /// Orders refused with RateLimited (and sent again after a pause).
    pub rate_limited: u64,
    /// Another reject or a session error that ended the part.
    pub stopped_by: Option<String>,
}

/// What to do after one answer of the open-orders part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send the next order.
    Send,
    /// Send the same order again after a pause (rate limited).
    Retry,
    /// The part is over.
    Stop,
}

impl OpenOrdersTally {
    /// Counts the first answer to one resting order; says what comes next.
    pub fn record(&mut self, answer: &Answer) -> Next {
        match answer {
            Answer::Accepted(_) => {
                self.rested += 1;
                Next::Send
            }
            Answer::Rejected(_, Some(RejectReason::TooManyOpenOrders)) => {
                self.refused = true;
                Next::Stop
            }
            Answer::Rejected(_, Some(RejectReason::RateLimited)) => {
                self.rate_limited += 1;
                Next::Retry
            }
            Answer::Rejected(_, reason) => {
                self.stopped_by = Some(format!(
                    "Rejected({})",
                    reason.map_or_else(|| "unknown".to_string(), |r| format!("{r:?}"))
                ));
                Next::Stop
            }
            Answer::SessionError(code, text) => {
                self.stopped_by = Some(format!("SessionError {} ({text})", error_name(*code)));
                Next::Stop
            }
            _ => Next::Send,
        }
    }
}

/// The outcome of one bad logon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogonOutcome {
    /// AuthenticationFailed after the password check (the delayed answer).
    Refused,
    /// AuthenticationFailed at once: the address is over its failure limit.
    RefusedAtOnce,
    /// AuthenticationFailed at once: too many logons wait for a password
    /// check ("busy with other logons").
    Busy,
    /// Another SessionError (code name).
    OtherError(String),
    /// The server accepted the wrong password (a server without --accounts).
    Accepted,
    /// No answer before the timeout, or the connection failed.
    NoAnswer(String),
}

/// Classifies the first answer to a bad Hello.
pub fn classify_logon(answer: Option<&Answer>) -> LogonOutcome {
    match answer {
        Some(Answer::SessionError(Some(SessionErrorCode::AuthenticationFailed), text)) => {
            if text.contains("too many failed logons") {
                LogonOutcome::RefusedAtOnce
            } else if text.contains("busy with other logons") {
                LogonOutcome::Busy
            } else {
                LogonOutcome::Refused
            }
        }
        Some(Answer::SessionError(code, _)) => LogonOutcome::OtherError(error_name(*code)),
        Some(Answer::HelloAck { .. }) => LogonOutcome::Accepted,
        Some(other) => LogonOutcome::NoAnswer(format!("unexpected {other:?}")),
        None => LogonOutcome::NoAnswer("no answer".to_string()),
    }
}

/// A password that is not `password`.
pub fn wrong_password(password: &str) -> &'static str {
    if password == "not-the-password" {
        "not-the-password-either"
    } else {
        "not-the-password"
    }
}

/// The bad-logons part's counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogonTally {
    /// Bad logons sent.
    pub sent: u64,
    /// AuthenticationFailed after the check.
    pub refused: u64,
    /// AuthenticationFailed at once (over the per-address failure limit).
    pub refused_at_once: u64,
    /// AuthenticationFailed at once (too many logons waiting for a check).
    pub busy: u64,
    /// Accepted despite the wrong password.
    pub accepted: u64,
    /// Other errors and missing answers.
    pub other: u64,
    /// What the other answers were, by kind.
    pub other_kinds: Vec<(String, u64)>,
    /// Seconds from the Hello to each answer, in the order sent.
    pub seconds: Vec<f64>,
    /// A sustained flood: how long it sent for, in seconds (0 when the
    /// logons went at once).
    pub sending_seconds: f64,
    /// A sustained flood: distinct source addresses it sent from.
    pub sources: u64,
}

impl LogonTally {
    /// Counts one outcome that took `seconds`.
    pub fn record(&mut self, outcome: &LogonOutcome, seconds: f64) {
        self.sent += 1;
        self.seconds.push(seconds);
        match outcome {
            LogonOutcome::Refused => self.refused += 1,
            LogonOutcome::RefusedAtOnce => self.refused_at_once += 1,
            LogonOutcome::Busy => self.busy += 1,
            LogonOutcome::Accepted => self.accepted += 1,
            LogonOutcome::OtherError(what) | LogonOutcome::NoAnswer(what) => {
                self.other += 1;
                match self.other_kinds.iter_mut().find(|(n, _)| n == what) {
                    Some((_, count)) => *count += 1,
                    None => self.other_kinds.push((what.clone(), 1)),
                }
            }
        }
    }
}

/// The connections part's counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnTally {
    /// Connections attempted.
    pub attempted: u64,
    /// Refused with SessionError TooManyConnections.
    pub too_many: u64,
    /// Other SessionErrors, or a connect that failed.
    pub other: u64,
    /// Held open without a refusal.
    pub held: u64,
}

/// Everything the flood found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FloodReport {
    /// The rate part, when it ran.
    pub rate: Option<BurstTally>,
    /// The open-orders part, when it ran.
    pub open_orders: Option<OpenOrdersTally>,
    /// The connections part, when it ran.
    pub connections: Option<ConnTally>,
    /// The bad-logons part, when it ran.
    pub bad_logons: Option<LogonTally>,
    /// Limits the server did not enforce although an --expect-* said it
    /// has them.
    pub unenforced: Vec<String>,
}

fn seconds_range(s: &[f64]) -> String {
    let min = s.iter().copied().fold(f64::INFINITY, f64::min);
    let max = s.iter().copied().fold(0.0, f64::max);
    if s.is_empty() {
        "-".to_string()
    } else {
        format!("{min:.3} to {max:.3} s")
    }
}

impl FloodReport {
    /// Compares the counts with the limits the user expects; fills
    /// [`FloodReport::unenforced`].
    pub fn check(&mut self, burst: Option<u32>, open: Option<u32>, conns: Option<u32>) {
        if let (Some(n), Some(r)) = (burst, &self.rate)
            && r.sent > u64::from(n)
            && r.rate_limited == 0
            && !r.order_flood()
        {
            self.unenforced.push(format!(
                "order entry rate: {} NewOrders in one frame past a burst of {n}, none \
                 RateLimited",
                r.sent
            ));
        }
        if let (Some(n), Some(o)) = (open, &self.open_orders) {
            if o.rested > u64::from(n) {
                self.unenforced.push(format!(
                    "open orders: {} rested past the cap of {n}",
                    o.rested
                ));
            } else if !o.refused && o.stopped_by.is_none() {
                self.unenforced
                    .push(format!("open orders: no TooManyOpenOrders (cap {n})"));
            }
        }
        if let (Some(n), Some(c)) = (conns, &self.connections)
            && c.held > u64::from(n)
        {
            self.unenforced.push(format!(
                "connections per address: {} held past the limit of {n}",
                c.held
            ));
        }
    }

    /// The readable summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        if let Some(r) = &self.rate {
            let _ = writeln!(
                s,
                "rate         {} NewOrders in one frame: {} accepted, {} RateLimited{}{}",
                r.sent,
                r.accepted,
                r.rate_limited,
                r.other_rejects
                    .iter()
                    .map(|(n, c)| format!(", {c} {n}"))
                    .collect::<String>(),
                if r.unanswered() > 0 {
                    format!(", {} unanswered", r.unanswered())
                } else {
                    String::new()
                }
            );
            let _ = match &r.closed {
                Some((code, text)) => writeln!(s, "             session closed: {code} ({text})"),
                None => writeln!(s, "             session not closed"),
            };
        }
        if let Some(o) = &self.open_orders {
            let end = if o.refused {
                "then TooManyOpenOrders".to_string()
            } else if let Some(why) = &o.stopped_by {
                format!("then {why}")
            } else {
                "and no TooManyOpenOrders".to_string()
            };
            let _ = writeln!(
                s,
                "open orders  {} rested, {end}{}",
                o.rested,
                if o.rate_limited > 0 {
                    format!(" ({} RateLimited on the way, sent again)", o.rate_limited)
                } else {
                    String::new()
                }
            );
        }
        if let Some(c) = &self.connections {
            let _ = writeln!(
                s,
                "connections  {} opened at once: {} held, {} TooManyConnections, {} other",
                c.attempted, c.held, c.too_many, c.other
            );
        }
        if let Some(l) = &self.bad_logons {
            if l.sending_seconds > 0.0 {
                let _ = writeln!(
                    s,
                    "bad logons   sustained: {} in {:.1} s ({:.0}/s) from {} source address(es)",
                    l.sent,
                    l.sending_seconds,
                    l.sent as f64 / l.sending_seconds,
                    l.sources.max(1)
                );
            }
            let _ = writeln!(
                s,
                "bad logons   {} sent: {} AuthenticationFailed, {} refused at once (failure \
                 limit), {} refused at once (auth thread busy), {} accepted, {} other; \
                 answers in {}",
                l.sent,
                l.refused,
                l.refused_at_once,
                l.busy,
                l.accepted,
                l.other,
                seconds_range(&l.seconds)
            );
            for (what, count) in &l.other_kinds {
                let _ = writeln!(s, "             other: {count} {what}");
            }
            if l.accepted > 0 {
                let _ = writeln!(
                    s,
                    "             the server accepted wrong passwords: it runs without --accounts"
                );
            }
        }
        for u in &self.unenforced {
            let _ = writeln!(s, "NOT ENFORCED {u}");
        }
        s
    }

    /// The counts as JSON.
    pub fn to_json(&self) -> String {
        let mut v = serde_json::Map::new();
        if let Some(r) = &self.rate {
            v.insert(
                "rate".into(),
                serde_json::json!({
                    "sent": r.sent,
                    "accepted": r.accepted,
                    "rate_limited": r.rate_limited,
                    "other_rejects": r.other_rejects.iter()
                        .map(|(n, c)| (n.clone(), serde_json::json!(c)))
                        .collect::<serde_json::Map<_, _>>(),
                    "unanswered": r.unanswered(),
                    "closed": r.closed.as_ref().map(|(c, _)| c.clone()),
                    "closed_text": r.closed.as_ref().map(|(_, t)| t.clone()),
                    "order_flood": r.order_flood(),
                }),
            );
        }
        if let Some(o) = &self.open_orders {
            v.insert(
                "open_orders".into(),
                serde_json::json!({
                    "rested": o.rested,
                    "too_many_open_orders": o.refused,
                    "rate_limited": o.rate_limited,
                    "stopped_by": o.stopped_by,
                }),
            );
        }
        if let Some(c) = &self.connections {
            v.insert(
                "connections".into(),
                serde_json::json!({
                    "attempted": c.attempted,
                    "held": c.held,
                    "too_many_connections": c.too_many,
                    "other": c.other,
                }),
            );
        }
        if let Some(l) = &self.bad_logons {
            v.insert(
                "bad_logons".into(),
                serde_json::json!({
                    "sent": l.sent,
                    "authentication_failed": l.refused,
                    "refused_at_once": l.refused_at_once,
                    "busy": l.busy,
                    "sending_seconds": l.sending_seconds,
                    "sources": l.sources,
                    "accepted": l.accepted,
                    "other": l.other,
                    "other_kinds": l.other_kinds.iter()
                        .map(|(n, c)| (n.clone(), serde_json::json!(c)))
                        .collect::<serde_json::Map<_, _>>(),
                    "seconds": l.seconds,
                }),
            );
        }
        v.insert("unenforced".into(), serde_json::json!(self.unenforced));
        let mut text = serde_json::to_string_pretty(&serde_json::Value::Object(v))
            .unwrap_or_else(|_| "{}".into());
        text.push('\n');
        text
    }
}

// ---------------------------------------------------------------- I/O ---

/// A blocking client connection that decodes the server's frames.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    decoder: Decoder,
}

impl Client {
    fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            decoder: Decoder::for_client(MAX_FRAME_BYTES_LIMIT),
        })
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    fn hello(&mut self, account: u64, flags: u16, password: &str) -> std::io::Result<()> {
        let mut out = Vec::new();
        wire::append_frame(&[Hello::new(account, flags, 0, password)], &mut out)
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        self.send(&out)
    }

    /// The next answers, waiting at most until `deadline`; empty at the
    /// deadline; an error when the connection ends or breaks.
    fn answers(&mut self, deadline: Instant) -> Result<Vec<Answer>, String> {
        let mut out = Vec::new();
        loop {
            let mut consumed = 0;
            loop {
                match self.decoder.decode(&self.buf[consumed..]) {
                    Ok(Decoded::Frame(frame, n)) => {
                        Answer::from_frame(&frame, &mut out);
                        consumed += n;
                    }
                    Ok(Decoded::NeedMore(_)) => break,
                    Err(e) => return Err(format!("undecodable answer: {e:?}")),
                }
            }
            self.buf.drain(..consumed);
            if !out.is_empty() {
                return Ok(out);
            }
            // Past the deadline: one last read that does not wait, so that
            // what already arrived still counts.
            let wait = deadline.saturating_duration_since(Instant::now());
            let last = wait.is_zero();
            if last {
                let _ = self.stream.set_nonblocking(true);
            } else {
                let _ = self.stream.set_read_timeout(Some(wait));
            }
            let mut chunk = [0u8; 64 * 1024];
            let read = self.stream.read(&mut chunk);
            if last {
                let _ = self.stream.set_nonblocking(false);
            }
            match read {
                Ok(0) => return Err("the server closed the connection".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if last {
                        return Ok(out);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading: {e}")),
            }
        }
    }

    /// Logs on and reads the directory; returns the first symbol.
    fn logon(&mut self, account: u64, password: &str, timeout: Duration) -> Result<u32, String> {
        self.hello(account, HELLO_CANCEL_ON_DISCONNECT, password)
            .map_err(|e| format!("sending the Hello: {e}"))?;
        let deadline = Instant::now() + timeout;
        let mut expected = None;
        let mut first = None;
        let mut seen = 0u32;
        loop {
            let answers = self.answers(deadline)?;
            if answers.is_empty() {
                return Err("no HelloAck and directory in time".into());
            }
            for a in answers {
                match a {
                    Answer::HelloAck { symbols } => expected = Some(symbols),
                    Answer::Symbol(s) => {
                        seen += 1;
                        first.get_or_insert(s);
                    }
                    Answer::SessionError(code, text) => {
                        return Err(format!(
                            "logon refused: SessionError {} ({text})",
                            error_name(code)
                        ));
                    }
                    _ => {}
                }
            }
            if let Some(n) = expected
                && seen >= n
            {
                return first.ok_or_else(|| "the server has no symbols".to_string());
            }
        }
    }
}

fn new_order(coid: u64, symbol: u32, tif: TimeInForce) -> NewOrder {
    NewOrder::new(
        coid,
        symbol,
        Side::Buy,
        OrderType::Limit,
        tif,
        false,
        SelfTradePrevention::CancelIncoming,
        1,
        1,
    )
}

fn frame_of(orders: &[NewOrder]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    wire::append_frame(orders, &mut out).map_err(|e| format!("encoding: {e:?}"))?;
    Ok(out)
}

/// What the probes share.
struct Ctx {
    addr: SocketAddr,
    account: u64,
    password: String,
    timeout: Duration,
    /// The next client order id (from the clock: a journal remembers ids).
    next_id: u64,
}

fn run_rate(ctx: &mut Ctx, burst: u32) -> Result<BurstTally, String> {
    let mut c = Client::connect(ctx.addr, ctx.timeout).map_err(|e| format!("connect: {e}"))?;
    let symbol = c.logon(ctx.account, &ctx.password, ctx.timeout)?;
    // IOC orders at 1 tick: they do not rest, so they leave nothing behind
    // and the open-orders cap does not refuse them.
    let orders: Vec<NewOrder> = (0..u64::from(burst))
        .map(|i| new_order(ctx.next_id + i, symbol, TimeInForce::Ioc))
        .collect();
    ctx.next_id += u64::from(burst);
    c.send(&frame_of(&orders)?)
        .map_err(|e| format!("sending the burst: {e}"))?;
    let mut tally = BurstTally::new(u64::from(burst));
    let deadline = Instant::now() + ctx.timeout;
    while !tally.done() {
        match c.answers(deadline) {
            Ok(answers) if answers.is_empty() => break,
            Ok(answers) => answers.iter().for_each(|a| tally.record(a)),
            Err(e) => {
                if tally.closed.is_none() {
                    tally.closed = Some(("closed".into(), e));
                }
                break;
            }
        }
    }
    Ok(tally)
}

fn run_open_orders(ctx: &mut Ctx, max_open: u32) -> Result<OpenOrdersTally, String> {
    let mut c = Client::connect(ctx.addr, ctx.timeout).map_err(|e| format!("connect: {e}"))?;
    let symbol = c.logon(ctx.account, &ctx.password, ctx.timeout)?;
    let mut tally = OpenOrdersTally::default();
    let mut sent = 0u32;
    let mut retries = 0u32;
    while sent < max_open {
        let coid = ctx.next_id;
        c.send(&frame_of(&[new_order(coid, symbol, TimeInForce::Gtc)])?)
            .map_err(|e| format!("sending: {e}"))?;
        let deadline = Instant::now() + ctx.timeout;
        let next = loop {
            let answers = c.answers(deadline)?;
            if answers.is_empty() {
                return Err(format!("no answer to order {coid} in time"));
            }
            let first = answers.iter().find(|a| match a {
                Answer::Accepted(id) | Answer::Rejected(id, _) => *id == coid,
                Answer::SessionError(..) => true,
                _ => false,
            });
            if let Some(a) = first {
                break tally.record(a);
            }
        };
        match next {
            Next::Send => {
                ctx.next_id += 1;
                sent += 1;
            }
            Next::Retry => {
                retries += 1;
                if retries > 1_000 {
                    return Err("rate limited 1,000 times in a row".into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Next::Stop => break,
        }
    }
    // Cancel-on-disconnect takes the rested orders off as this closes.
    Ok(tally)
}

fn run_connections(ctx: &Ctx, n: u32) -> ConnTally {
    let mut tally = ConnTally::default();
    let mut open = Vec::new();
    for _ in 0..n {
        tally.attempted += 1;
        match Client::connect(ctx.addr, ctx.timeout) {
            Ok(c) => open.push(c),
            Err(_) => tally.other += 1,
        }
    }
    // A refused connection gets its SessionError at once; the others get
    // nothing until their logon deadline. Wait a moment, then look.
    let deadline = Instant::now() + Duration::from_millis(500).min(ctx.timeout);
    for c in &mut open {
        match c.answers(deadline) {
            Ok(answers) => match answers.first() {
                Some(Answer::SessionError(Some(SessionErrorCode::TooManyConnections), _)) => {
                    tally.too_many += 1
                }
                Some(_) => tally.other += 1,
                None => tally.held += 1,
            },
            Err(_) => tally.other += 1,
        }
    }
    tally
}

fn run_bad_logons(ctx: &Ctx, n: u32) -> LogonTally {
    let wrong = wrong_password(&ctx.password).to_string();
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (addr, account, timeout, wrong) =
                (ctx.addr, ctx.account, ctx.timeout, wrong.clone());
            std::thread::spawn(move || {
                let start = Instant::now();
                let outcome = match Client::connect(addr, timeout) {
                    Err(e) => LogonOutcome::NoAnswer(format!("connect: {e}")),
                    Ok(mut c) => match c.hello(account, 0, &wrong) {
                        Err(e) => LogonOutcome::NoAnswer(format!("send: {e}")),
                        Ok(()) => match c.answers(start + timeout) {
                            Ok(a) => classify_logon(a.first()),
                            Err(e) => LogonOutcome::NoAnswer(e),
                        },
                    },
                };
                (outcome, start.elapsed().as_secs_f64())
            })
        })
        .collect();
    let mut tally = LogonTally::default();
    for h in handles {
        match h.join() {
            Ok((outcome, secs)) => tally.record(&outcome, secs),
            Err(_) => tally.record(&LogonOutcome::NoAnswer("panicked".into()), 0.0),
        }
    }
    tally
}

/// Why the flood could not run.
#[derive(Debug)]
pub enum FloodError {
    /// A usage error (exit 2).
    Usage(String),
    /// A probe failed (exit 1).
    Failed(String),
}

/// Runs the parts `args` selects; the report, or why a part could not run.
pub fn run(args: &FloodArgs) -> Result<FloodReport, FloodError> {
    let addr = args
        .server
        .to_socket_addrs()
        .map_err(|e| FloodError::Usage(format!("--server {}: {e}", args.server)))?
        .next()
        .ok_or_else(|| FloodError::Usage(format!("--server {}: no address", args.server)))?;
    let mut password = args.credentials.clone();
    if let Some(path) = &args.password_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            FloodError::Usage(format!(
                "cannot read --password-file {}: {e}",
                path.display()
            ))
        })?;
        password = text.lines().next().unwrap_or("").to_string();
    }
    if password.len() > 32 {
        return Err(FloodError::Usage(
            "the password is longer than the Hello's 32 bytes".into(),
        ));
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64);
    let mut ctx = Ctx {
        addr,
        account: args.account.unwrap_or(now_ms),
        password,
        timeout: args.timeout,
        next_id: now_ms << 20,
    };
    let mut report = FloodReport::default();
    for part in parts(&args.what) {
        match part {
            Part::Rate => {
                report.rate = Some(
                    run_rate(&mut ctx, args.burst)
                        .map_err(|e| FloodError::Failed(format!("rate: {e}")))?,
                )
            }
            Part::OpenOrders => {
                report.open_orders = Some(
                    run_open_orders(&mut ctx, args.max_open)
                        .map_err(|e| FloodError::Failed(format!("open-orders: {e}")))?,
                )
            }
            Part::Connections => {
                report.connections = Some(run_connections(&ctx, args.connections));
                // Give the server a moment to count the closed connections
                // out before the bad logons connect again.
                std::thread::sleep(Duration::from_millis(300));
            }
            Part::BadLogons => {
                report.bad_logons = Some(match args.bad_logon_rate {
                    Some(rate) => sustained::run(&sustained::Plan {
                        addr: ctx.addr,
                        account: ctx.account,
                        password: wrong_password(&ctx.password).to_string(),
                        rate,
                        duration: args.flood_duration,
                        timeout: ctx.timeout,
                        sources: args.sources.clone(),
                    })
                    .map_err(|e| FloodError::Failed(format!("bad-logons: {e}")))?,
                    None => run_bad_logons(&ctx, args.bad_logons),
                })
            }
        }
    }
    report.check(
        args.expect_burst,
        args.expect_open_orders,
        args.expect_connections,
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_default_to_all_in_running_order() {
        assert_eq!(parts(&[]), Part::ALL.to_vec());
        assert_eq!(
            parts(&[Part::BadLogons, Part::Rate, Part::Rate]),
            vec![Part::Rate, Part::BadLogons]
        );
    }

    #[test]
    fn a_burst_counts_first_answers_by_kind() {
        let mut t = BurstTally::new(5);
        t.record(&Answer::Accepted(1));
        t.record(&Answer::Accepted(2));
        t.record(&Answer::Other);
        t.record(&Answer::Rejected(3, Some(RejectReason::RateLimited)));
        t.record(&Answer::Rejected(4, Some(RejectReason::RateLimited)));
        assert!(!t.done());
        t.record(&Answer::Rejected(5, Some(RejectReason::BookFull)));
        assert_eq!((t.accepted, t.rate_limited), (2, 2));
        assert_eq!(t.other_rejects, vec![("BookFull".to_string(), 1)]);
        assert!(t.done() && !t.order_flood());
        assert_eq!(t.unanswered(), 0);
    }

    #[test]
    fn an_order_flood_close_ends_the_burst() {
        let mut t = BurstTally::new(100);
        t.record(&Answer::Accepted(1));
        t.record(&Answer::SessionError(
            Some(SessionErrorCode::OrderFlood),
            "flood".into(),
        ));
        assert!(t.done() && t.order_flood());
        assert_eq!(t.unanswered(), 99);
    }

    #[test]
    fn open_orders_stop_at_the_cap_and_retry_rate_limits() {
        let mut t = OpenOrdersTally::default();
        assert_eq!(t.record(&Answer::Accepted(1)), Next::Send);
        assert_eq!(
            t.record(&Answer::Rejected(2, Some(RejectReason::RateLimited))),
            Next::Retry
        );
        assert_eq!(t.record(&Answer::Accepted(2)), Next::Send);
        assert_eq!(
            t.record(&Answer::Rejected(3, Some(RejectReason::TooManyOpenOrders))),
            Next::Stop
        );
        assert_eq!((t.rested, t.refused, t.rate_limited), (2, true, 1));
        let mut u = OpenOrdersTally::default();
        assert_eq!(
            u.record(&Answer::Rejected(1, Some(RejectReason::BookFull))),
            Next::Stop
        );
        assert_eq!(u.stopped_by.as_deref(), Some("Rejected(BookFull)"));
    }

    #[test]
    fn bad_logons_are_classified_by_code_and_text() {
        let failed = |t: &str| {
            Answer::SessionError(Some(SessionErrorCode::AuthenticationFailed), t.to_string())
        };
        assert_eq!(
            classify_logon(Some(&failed("authentication failed"))),
            LogonOutcome::Refused
        );
        assert_eq!(
            classify_logon(Some(&failed(
                "too many failed logons from 127.0.0.1; retry in 59 s"
            ))),
            LogonOutcome::RefusedAtOnce
        );
        assert_eq!(
            classify_logon(Some(&Answer::HelloAck { symbols: 1 })),
            LogonOutcome::Accepted
        );
        assert!(matches!(classify_logon(None), LogonOutcome::NoAnswer(_)));
        assert_ne!(wrong_password("x"), "x");
        assert_ne!(wrong_password("not-the-password"), "not-the-password");
        let mut t = LogonTally::default();
        t.record(&LogonOutcome::Refused, 1.0);
        t.record(&LogonOutcome::RefusedAtOnce, 0.01);
        assert_eq!((t.sent, t.refused, t.refused_at_once), (2, 1, 1));
    }

    #[test]
    fn expectations_flag_limits_not_enforced() {
        let mut r = FloodReport {
            rate: Some(BurstTally {
                sent: 200,
                accepted: 200,
                ..BurstTally::default()
            }),
            open_orders: Some(OpenOrdersTally {
                rested: 20,
                refused: true,
                ..OpenOrdersTally::default()
            }),
            connections: Some(ConnTally {
                attempted: 10,
                held: 10,
                ..ConnTally::default()
            }),
            ..FloodReport::default()
        };
        r.check(Some(50), Some(20), Some(8));
        assert_eq!(r.unenforced.len(), 2, "{:?}", r.unenforced);
        assert!(r.summary().contains("NOT ENFORCED"));
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["open_orders"]["rested"], 20);
        assert_eq!(json["rate"]["rate_limited"], 0);
    }
}
