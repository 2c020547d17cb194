//! The session layer: bytes and `now` in, effects out (commands for the
//! shards, answers for the client, a reason to close). No sockets, no
//! io_uring, no clock: the core feeds it what arrived and carries out what
//! it asks through [`Effects`], and the tests below drive it with bytes.
//!
//! Rules it keeps (PROTOCOL.md §8):
//! - the first frame is a Hello, and only the first;
//! - an order for a symbol the server does not list is rejected here, as
//!   is a NewOrder whose client order id does not increase on the session;
//! - **answers keep request order**: an answer made here (a reject, a
//!   heartbeat's echo) is sent only when every request the session sent
//!   before it has been processed by its shard ([`Effects::settled`]);
//!   until then input stops at that message ([`InputEnd::Fenced`]) and
//!   resumes later from it;
//! - a stream it cannot trust ends the session: [`InputEnd::Close`], after
//!   the requests already taken;
//! - NewOrders and Replaces take a token of the session's order entry
//!   rate ([`rate`]); without one they are answered `RateLimited` here, and
//!   a sustained flood closes the session (`SessionError(OrderFlood)`);
//! - a MassCancel (version 2) goes to the symbol's shard, or to every
//!   shard for all symbols; version 1 sessions get `NotSupported`;
//! - a CancelAfter (version 2) arms, re-arms or disarms the session's
//!   dead-man's timer; when it runs out, [`SessionLayer::poll_timers`] says
//!   so ([`Timer::CancelAll`]) and [`SessionLayer::cancel_all`] routes a
//!   MassCancel of all symbols everywhere and disarms it.

use std::sync::Arc;

use wire::{
    ALL_SYMBOLS, Decoded, Decoder, Frame, HelloAck, Kind, Message, PROTOCOL_VERSION,
    PROTOCOL_VERSION_MIN, RejectReason, Rejected, SUBSCRIBE_FLAGS_KNOWN, ServerHeartbeat,
    SessionError, SessionErrorCode, SymbolEntry,
};

use super::super::stats::Counters;
use crate::book::{ClientOrderIds, Command, Op};
use crate::session_id::SessionId;

pub mod rate;

use rate::{Admit, OrderEntryLimits, TokenBucket};

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connected; the first frame must be a Hello.
    AwaitHello,
    /// The Hello's password is being checked (off the core); input is held.
    Authenticating,
    /// Logged in.
    Active,
    /// Closing: no more input is read; pending output is flushed, then the
    /// socket is shut down and freed once no operation is in flight.
    Closing,
}

/// One session's state in the session layer.
#[derive(Clone, Copy, Debug)]
pub struct Session {
    pub phase: Phase,
    /// The id it gets at its Hello (fixed when the connection is accepted).
    pub id: SessionId,
    pub account: u64,
    pub cancel_on_disconnect: bool,
    pub client_order_ids: ClientOrderIds,
    /// The negotiated heartbeat interval (0 before the Hello).
    pub heartbeat_ms: u32,
    /// The protocol version the session speaks (the Hello's; 1 before it).
    pub version: u8,
    /// The Hello's flags and asked-for heartbeat interval, kept for the
    /// HelloAck while its password is checked.
    pub hello_flags: u16,
    pub hello_heartbeat_ms: u32,
    /// Its order entry limits (set at the Hello).
    pub limits: OrderEntryLimits,
    /// Its order entry tokens.
    pub bucket: TokenBucket,
    /// The dead-man's timer (CancelAfter): when it runs out, if armed.
    pub cancel_after_deadline_ns: Option<u64>,
}

impl Session {
    /// A connection that has not sent its Hello; `id` is what it will get.
    pub fn new(id: SessionId) -> Session {
        Session {
            phase: Phase::AwaitHello,
            id,
            account: 0,
            cancel_on_disconnect: false,
            client_order_ids: ClientOrderIds::new(),
            heartbeat_ms: 0,
            version: PROTOCOL_VERSION_MIN,
            hello_flags: 0,
            hello_heartbeat_ms: 0,
            limits: OrderEntryLimits::UNLIMITED,
            bucket: TokenBucket::full(&OrderEntryLimits::UNLIMITED, 0),
            cancel_after_deadline_ns: None,
        }
    }
}

/// What the session layer of a core needs to know.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub symbol_count: u32,
    pub directory: Arc<[SymbolEntry]>,
    pub auth_token: Option<Vec<u8>>,
    /// The heartbeat interval of sessions that do not ask for one.
    pub heartbeat_ms: u32,
    /// Silence for this many heartbeat intervals closes a session.
    pub idle_timeout_factor: u32,
    pub max_frame_bytes: u32,
    /// A send stuck for this long closes the session.
    pub slow_consumer_ms: u64,
    /// Accounts are authenticated (`--accounts`): a Hello must be version
    /// 2, and its password is checked through [`Effects::logon`].
    pub accounts: bool,
    /// The Hello must arrive within this long of the accept.
    pub logon_timeout_ms: u64,
    /// A frame begun must be complete within this long.
    pub frame_timeout_ms: u64,
    /// The order entry limits every session gets at its Hello.
    pub order_limits: OrderEntryLimits,
}

/// What [`Effects::logon`] decided.
#[derive(Debug)]
pub enum Logon {
    /// Logged on: send the HelloAck now.
    Granted,
    /// The password is being checked: hold the input; the core calls
    /// [`SessionLayer::complete_logon`] or closes when the verdict comes.
    Pending,
    /// Refused now.
    Refused(CloseReason),
}

/// How the core carries out what the session layer decides.
pub trait Effects {
    /// True when input must stop (a ring or queue is full).
    fn congested(&self) -> bool;
    /// Hands a command to the shard that owns `symbol` (checked to exist).
    fn route(&mut self, symbol: u32, cmd: Command);
    /// Hands a command to every shard (a MassCancel of all symbols).
    fn route_everywhere(&mut self, cmd: Command);
    /// The time now, for the order entry rate.
    fn now_ns(&self) -> u64;
    /// True when an answer made here may be sent now: every command the
    /// session routed before has been processed. The core may process its
    /// queued local commands first to make this so.
    fn settled(&mut self) -> bool;
    /// Queues an answer for the client.
    fn answer<T: Message>(&mut self, msg: &T);
    /// Writes the session's frames with protocol `version` from now on.
    fn set_version(&mut self, version: u8);
    /// A market-data subscription (checked: a known symbol or
    /// [`ALL_SYMBOLS`], known flags; 0 unsubscribes).
    fn subscribe(&mut self, symbol: u32, flags: u32);
    /// The core's counters.
    fn counters(&mut self) -> &mut Counters;
    /// Logs `account` on with the Hello's `credentials`: counts the session
    /// against the account's limit and, with accounts, hands the password
    /// to the auth thread.
    fn logon(&mut self, account: u64, credentials: &[u8; 32]) -> Logon;
    /// Whether this node serves `symbol`'s shard (checked to exist): always
    /// outside a cluster; in one, one atomic load.
    fn serves(&self, symbol: u32) -> bool;
    /// The `ShardOwner` that follows a `Rejected(WrongNode)` (cluster only).
    fn shard_owner(&self, client_order_id: u64, symbol: u32, kind: Kind) -> wire::ShardOwner;
    /// Answers a ClusterMapRequest with the map; false outside a cluster.
    fn cluster_map(&mut self, token: u64) -> bool;
}

/// Why a connection is being closed: the SessionError it is sent, and the
/// full explanation for the log (the message's text field holds 56 bytes).
#[derive(Debug)]
pub struct CloseReason {
    pub msg: SessionError,
    pub text: String,
    pub log: bool,
}

impl CloseReason {
    pub fn new(code: SessionErrorCode, kind: u8, detail: u32, text: impl Into<String>) -> Self {
        let text = text.into();
        CloseReason {
            msg: SessionError::new(code, kind, detail, &text),
            text,
            log: true,
        }
    }

    fn decode(e: &wire::DecodeError) -> CloseReason {
        CloseReason {
            msg: SessionError::from_decode_error(e),
            text: e.to_string(),
            log: true,
        }
    }

    /// The same reason, not logged (an expected close).
    pub fn quiet(mut self) -> CloseReason {
        self.log = false;
        self
    }

    pub fn code(&self) -> Option<SessionErrorCode> {
        self.msg.code().ok()
    }
}

/// What processing a connection's input ended with.
#[derive(Debug)]
pub enum InputEnd {
    /// All whole frames were processed.
    Done,
    /// Backpressure: stopped before a message; resume when it clears.
    Blocked,
    /// An answer made here must wait for earlier requests' answers:
    /// stopped before its message; resume once the session is settled.
    Fenced,
    /// The stream cannot be trusted: close with this reason.
    Close(CloseReason),
    /// The Hello's password is being checked: hold the input until the
    /// verdict (after the Hello, which is consumed).
    Pending,
}

/// What a connection's timers call for now.
#[derive(Debug)]
pub enum Timer {
    Nothing,
    /// Send a ServerHeartbeat (nothing else went out for an interval).
    Heartbeat,
    /// Close: idle or a slow consumer.
    Close(CloseReason),
    /// The dead-man's timer ran out: carry it out with
    /// [`SessionLayer::cancel_all`].
    CancelAll,
}

/// A connection's times and output state, for [`SessionLayer::poll_timers`].
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub now_ns: u64,
    pub last_recv_ns: u64,
    pub last_out_ns: u64,
    /// When the send in flight started, if one is.
    pub send_started_ns: Option<u64>,
    /// Bytes waiting for the client.
    pub out_bytes: usize,
    /// Input is held back by the server (the client is not to blame for silence).
    pub held_back: bool,
    /// When the connection was accepted (the logon deadline).
    pub accepted_ns: u64,
    /// When the first byte of the frame still incomplete arrived, if one is.
    pub frame_started_ns: Option<u64>,
}

/// Where processing stopped inside a frame.
enum Stop {
    Blocked(usize),
    Fenced(usize),
    /// The Hello is waiting for its password check.
    Pending,
}

/// The session layer of one core (stateless between calls but for its config).
pub struct SessionLayer {
    cfg: SessionConfig,
    decoder: Decoder,
}

impl SessionLayer {
    pub fn new(cfg: SessionConfig) -> SessionLayer {
        let decoder = Decoder::for_server(cfg.max_frame_bytes);
        SessionLayer { cfg, decoder }
    }

    /// Processes the whole frames of `data` from message `cursor` of the
    /// first. Returns bytes consumed, the message cursor into the frame at
    /// that point, and how it ended.
    pub fn handle_input(
        &self,
        s: &mut Session,
        data: &[u8],
        mut cursor: usize,
        fx: &mut impl Effects,
    ) -> (usize, usize, InputEnd) {
        let mut consumed = 0;
        loop {
            if fx.congested() {
                return (consumed, cursor, InputEnd::Blocked);
            }
            let (frame, used) = match self.decoder.decode(&data[consumed..]) {
                Ok(Decoded::NeedMore(_)) => return (consumed, cursor, InputEnd::Done),
                Ok(Decoded::Frame(f, used)) => (f, used),
                Err(e) => return (consumed, cursor, InputEnd::Close(CloseReason::decode(&e))),
            };
            match self.handle_frame(s, frame, cursor, fx) {
                Ok(None) => {
                    consumed += used;
                    cursor = 0;
                }
                Ok(Some(Stop::Blocked(at))) => return (consumed, at, InputEnd::Blocked),
                Ok(Some(Stop::Fenced(at))) => return (consumed, at, InputEnd::Fenced),
                Ok(Some(Stop::Pending)) => return (consumed + used, 0, InputEnd::Pending),
                Err(reason) => return (consumed + used, 0, InputEnd::Close(reason)),
            }
        }
    }

    /// Handles one frame from message `from` on.
    fn handle_frame(
        &self,
        s: &mut Session,
        frame: Frame<'_>,
        from: usize,
        fx: &mut impl Effects,
    ) -> Result<Option<Stop>, CloseReason> {
        debug_assert!(
            s.phase != Phase::Closing,
            "no input is processed while closing"
        );
        if let Frame::Hello(h) = frame {
            if s.phase != Phase::AwaitHello {
                return Err(CloseReason::new(
                    SessionErrorCode::DuplicateHello,
                    Kind::Hello as u8,
                    0,
                    "a session sends exactly one Hello",
                ));
            }
            return self.handle_hello(s, &h[0], fx);
        }
        if s.phase != Phase::Active {
            return Err(CloseReason::new(
                SessionErrorCode::NotLoggedIn,
                frame.kind() as u8,
                0,
                "the first frame of a connection must be a Hello",
            ));
        }
        Ok(match frame {
            Frame::NewOrder(orders) => self.new_orders(s, orders, from, fx)?,
            Frame::Cancel(cancels) => {
                self.routed(s, cancels, from, fx, Kind::Cancel, Entry::Counted, |c| {
                    (c.client_order_id.get(), c.symbol.get(), Op::Cancel(*c))
                })?
            }
            Frame::Replace(replaces) => {
                self.routed(s, replaces, from, fx, Kind::Replace, Entry::Rated, |r| {
                    (r.client_order_id.get(), r.symbol.get(), Op::Replace(*r))
                })?
            }
            Frame::OrderQuery(queries) => {
                self.routed(s, queries, from, fx, Kind::OrderQuery, Entry::Free, |q| {
                    (q.client_order_id.get(), q.symbol.get(), Op::Query(*q))
                })?
            }
            Frame::MassCancel(cancels) if s.version < 2 => answered(cancels, from, fx, |fx, m| {
                let (id, symbol) = (m.request_id.get(), m.symbol.get());
                reject(fx, id, symbol, RejectReason::NotSupported, Kind::MassCancel);
            }),
            Frame::MassCancel(cancels) => self.mass_cancels(s, cancels, from, fx),
            Frame::CancelAfter(timers) if s.version < 2 => answered(timers, from, fx, |fx, t| {
                let timeout = u64::from(t.timeout_ms.get());
                reject(
                    fx,
                    timeout,
                    0,
                    RejectReason::NotSupported,
                    Kind::CancelAfter,
                );
            }),
            Frame::CancelAfter(timers) => cancel_afters(s, timers, from, fx),
            Frame::Heartbeat(beats) => answered(beats, from, fx, |fx, b| {
                fx.answer(&ServerHeartbeat { token: b.token });
            }),
            Frame::Subscribe(subs) if s.version < 2 => answered(subs, from, fx, |fx, sub| {
                let symbol = sub.symbol.get();
                reject(fx, 0, symbol, RejectReason::NotSupported, Kind::Subscribe);
            }),
            Frame::Subscribe(subs) => self.subscribes(subs, from, fx),
            Frame::ClusterMapRequest(reqs) => {
                let version = s.version;
                answered(reqs, from, fx, |fx, r| {
                    let token = r.token.get();
                    if version < 2 || !fx.cluster_map(token) {
                        reject(
                            fx,
                            token,
                            0,
                            RejectReason::NotSupported,
                            Kind::ClusterMapRequest,
                        );
                    }
                })
            }
            // The server decoder refuses client-bound kinds before this.
            other => {
                return Err(CloseReason::new(
                    SessionErrorCode::UnknownKind,
                    other.kind() as u8,
                    0,
                    "a server-to-client message kind was sent to the server",
                ));
            }
        })
    }

    /// NewOrders from message `from` on: the session's id rule and the
    /// symbol are checked here, the rest by the shard.
    fn new_orders(
        &self,
        s: &mut Session,
        orders: &[wire::NewOrder],
        from: usize,
        fx: &mut impl Effects,
    ) -> Result<Option<Stop>, CloseReason> {
        for (i, o) in orders.iter().enumerate().skip(from) {
            if fx.congested() {
                return Ok(Some(Stop::Blocked(i)));
            }
            let (id, symbol) = (o.client_order_id.get(), o.symbol.get());
            let duplicate = s.client_order_ids.last().is_some_and(|last| id <= last);
            let known = symbol < self.cfg.symbol_count;
            if !duplicate && known && !fx.serves(symbol) {
                // Another node's shard (PROTOCOL.md §8.11): the id is used.
                if !fx.settled() {
                    return Ok(Some(Stop::Fenced(i)));
                }
                fx.counters().orders_in += 1;
                let admitted = s.client_order_ids.admit(id);
                debug_assert!(admitted);
                wrong_node(s, fx, id, symbol, Kind::NewOrder);
            } else if duplicate || !known {
                // Answered here: nothing may change before the fence.
                if !fx.settled() {
                    return Ok(Some(Stop::Fenced(i)));
                }
                fx.counters().orders_in += 1;
                // The id is used even when the symbol is unknown.
                match s.client_order_ids.check(o) {
                    Err(r) => {
                        fx.counters().reject(r.reason.get());
                        fx.counters().reports_out += 1;
                        fx.answer(&r);
                    }
                    Ok(()) => reject(fx, id, symbol, RejectReason::UnknownSymbol, Kind::NewOrder),
                }
            } else {
                match rate_check(s, i, fx, id, symbol, Kind::NewOrder)? {
                    Rated::Go => {}
                    Rated::Refused => {
                        // Not acted on: the id stays free for a retry.
                        fx.counters().orders_in += 1;
                        continue;
                    }
                    Rated::Stop(stop) => return Ok(Some(stop)),
                }
                fx.counters().orders_in += 1;
                let admitted = s.client_order_ids.admit(id);
                debug_assert!(admitted);
                fx.route(symbol, command(s, Op::New(*o)));
            }
        }
        Ok(None)
    }

    /// Requests a shard answers (Cancel, Replace, OrderQuery) from message
    /// `from` on; an unknown symbol is answered here. `entry`: whether the
    /// request counts in `orders_in` and takes a rate token.
    #[allow(clippy::too_many_arguments)]
    fn routed<T>(
        &self,
        s: &mut Session,
        msgs: &[T],
        from: usize,
        fx: &mut impl Effects,
        kind: Kind,
        entry: Entry,
        parts: impl Fn(&T) -> (u64, u32, Op),
    ) -> Result<Option<Stop>, CloseReason> {
        for (i, m) in msgs.iter().enumerate().skip(from) {
            if fx.congested() {
                return Ok(Some(Stop::Blocked(i)));
            }
            let (id, symbol, op) = parts(m);
            if symbol >= self.cfg.symbol_count {
                if !fx.settled() {
                    return Ok(Some(Stop::Fenced(i)));
                }
                reject(fx, id, symbol, RejectReason::UnknownSymbol, kind);
            } else if !fx.serves(symbol) {
                if !fx.settled() {
                    return Ok(Some(Stop::Fenced(i)));
                }
                wrong_node(s, fx, id, symbol, kind);
            } else if entry == Entry::Rated {
                match rate_check(s, i, fx, id, symbol, kind)? {
                    Rated::Go => fx.route(symbol, command(s, op)),
                    Rated::Refused => {}
                    Rated::Stop(stop) => return Ok(Some(stop)),
                }
            } else {
                fx.route(symbol, command(s, op));
            }
            if entry != Entry::Free {
                fx.counters().orders_in += 1;
            }
        }
        Ok(None)
    }

    /// MassCancels (protocol version 2) from message `from` on: one symbol
    /// goes to its shard, all symbols to every shard; an unknown symbol or
    /// reserved flags are answered here.
    fn mass_cancels(
        &self,
        s: &Session,
        msgs: &[wire::MassCancel],
        from: usize,
        fx: &mut impl Effects,
    ) -> Option<Stop> {
        for (i, m) in msgs.iter().enumerate().skip(from) {
            if fx.congested() {
                return Some(Stop::Blocked(i));
            }
            let (id, symbol) = (m.request_id.get(), m.symbol.get());
            let all = symbol == wire::MASS_CANCEL_ALL_SYMBOLS;
            let reason = if m.validate().is_err() {
                Some(RejectReason::InvalidFlags)
            } else if symbol >= self.cfg.symbol_count && !all {
                Some(RejectReason::UnknownSymbol)
            } else if !all && !fx.serves(symbol) {
                Some(RejectReason::WrongNode)
            } else {
                None
            };
            if let Some(reason) = reason {
                if !fx.settled() {
                    return Some(Stop::Fenced(i));
                }
                if reason == RejectReason::WrongNode {
                    wrong_node(s, fx, id, symbol, Kind::MassCancel);
                } else {
                    reject(fx, id, symbol, reason, Kind::MassCancel);
                }
                continue;
            }
            let cmd = command(s, Op::MassCancel { symbol });
            if all {
                fx.route_everywhere(cmd);
            } else {
                fx.route(symbol, cmd);
            }
        }
        None
    }

    /// Subscribes (protocol version 2) from message `from` on: a bad one
    /// is answered here (after the session's earlier requests), a good one
    /// goes to the market-data side, which answers it.
    fn subscribes(
        &self,
        subs: &[wire::Subscribe],
        from: usize,
        fx: &mut impl Effects,
    ) -> Option<Stop> {
        for (i, sub) in subs.iter().enumerate().skip(from) {
            if fx.congested() {
                return Some(Stop::Blocked(i));
            }
            let (symbol, flags) = (sub.symbol.get(), sub.flags.get());
            let reason = if flags & !SUBSCRIBE_FLAGS_KNOWN != 0 {
                Some(RejectReason::InvalidFlags)
            } else if symbol >= self.cfg.symbol_count && symbol != ALL_SYMBOLS {
                Some(RejectReason::UnknownSymbol)
            } else {
                None
            };
            match reason {
                Some(reason) => {
                    if !fx.settled() {
                        return Some(Stop::Fenced(i));
                    }
                    reject(fx, 0, symbol, reason, Kind::Subscribe);
                }
                None => fx.subscribe(symbol, flags),
            }
        }
        None
    }

    fn handle_hello(
        &self,
        s: &mut Session,
        h: &wire::Hello,
        fx: &mut impl Effects,
    ) -> Result<Option<Stop>, CloseReason> {
        let version = h.protocol_version.get();
        let supported = u16::from(PROTOCOL_VERSION_MIN)..=u16::from(PROTOCOL_VERSION);
        if !supported.contains(&version) {
            return Err(CloseReason::new(
                SessionErrorCode::UnsupportedVersion,
                Kind::Hello as u8,
                u32::from(version),
                format!(
                    "protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION_MIN} to {PROTOCOL_VERSION}"
                ),
            ));
        }
        if let Err(e) = h.validate() {
            return Err(CloseReason {
                msg: SessionError::invalid_field(Kind::Hello, &e),
                text: e.to_string(),
                log: true,
            });
        }
        if self.cfg.accounts && version < 2 {
            return Err(CloseReason::new(
                SessionErrorCode::AuthenticationFailed,
                Kind::Hello as u8,
                0,
                "accounts need protocol version 2 with a password",
            ));
        }
        if let Some(token) = &self.cfg.auth_token
            && h.credentials() != token.as_slice()
        {
            return Err(CloseReason::new(
                SessionErrorCode::AuthenticationFailed,
                Kind::Hello as u8,
                0,
                "the credentials were refused",
            ));
        }
        s.account = h.account.get();
        s.cancel_on_disconnect = h.cancel_on_disconnect();
        // In range: checked above.
        s.version = version as u8;
        s.hello_flags = h.flags.get();
        s.hello_heartbeat_ms = h.heartbeat_interval_ms.get();
        s.limits = self.cfg.order_limits;
        s.bucket = TokenBucket::full(&s.limits, fx.now_ns());
        // A refusal after the check goes out in the client's version too.
        fx.set_version(s.version);
        match fx.logon(s.account, &h.credentials) {
            Logon::Granted => {
                self.complete_logon(s, fx);
                Ok(None)
            }
            Logon::Pending => {
                s.phase = Phase::Authenticating;
                Ok(Some(Stop::Pending))
            }
            Logon::Refused(reason) => Err(reason),
        }
    }

    /// Completes a logon whose Hello was accepted (at once, or after its
    /// password check): the session is active, and the HelloAck and the
    /// symbol directory go out.
    pub fn complete_logon(&self, s: &mut Session, fx: &mut impl Effects) {
        debug_assert!(matches!(s.phase, Phase::AwaitHello | Phase::Authenticating));
        let heartbeat_ms = wire::granted_heartbeat_ms(s.hello_heartbeat_ms, self.cfg.heartbeat_ms);
        s.heartbeat_ms = heartbeat_ms;
        s.phase = Phase::Active;
        fx.answer(&HelloAck {
            session_id: s.id.get().into(),
            protocol_version: u16::from(s.version).into(),
            flags: s.hello_flags.into(),
            heartbeat_interval_ms: heartbeat_ms.into(),
            symbol_count: (self.cfg.directory.len() as u32).into(),
            max_frame_bytes: self.cfg.max_frame_bytes.into(),
        });
        for entry in self.cfg.directory.iter() {
            fx.answer(entry);
        }
    }

    /// Carries out a dead-man's timer that ran out ([`Timer::CancelAll`]):
    /// disarms it and cancels every live order of the session's account
    /// on every symbol, as a MassCancel of all symbols does.
    pub fn cancel_all(&self, s: &mut Session, fx: &mut impl Effects) {
        s.cancel_after_deadline_ns = None;
        fx.route_everywhere(command(
            s,
            Op::MassCancel {
                symbol: wire::MASS_CANCEL_ALL_SYMBOLS,
            },
        ));
    }

    /// The interval a connection's timers run on: the session's, or the
    /// server default before the Hello.
    fn heartbeat_ns(&self, s: &Session) -> u64 {
        let ms = if s.heartbeat_ms == 0 {
            self.cfg.heartbeat_ms
        } else {
            s.heartbeat_ms
        };
        u64::from(ms) * 1_000_000
    }

    /// What a connection's timers call for at `c.now_ns`: a slow consumer
    /// or a silent client is closed; an idle line gets a heartbeat.
    pub fn poll_timers(&self, s: &Session, c: &Clock) -> Timer {
        if s.phase == Phase::Closing {
            return Timer::Nothing;
        }
        if s.phase == Phase::Active
            && s.cancel_after_deadline_ns
                .is_some_and(|deadline| c.now_ns >= deadline)
        {
            return Timer::CancelAll;
        }
        let slow_ns = self.cfg.slow_consumer_ms * 1_000_000;
        if let Some(started) = c.send_started_ns
            && c.now_ns.saturating_sub(started) > slow_ns
        {
            return Timer::Close(CloseReason::new(
                SessionErrorCode::SlowConsumer,
                0,
                0,
                format!(
                    "the client has not read its reports for {} ms ({} bytes waiting)",
                    c.now_ns.saturating_sub(started) / 1_000_000,
                    c.out_bytes
                ),
            ));
        }
        if s.phase == Phase::AwaitHello
            && c.now_ns.saturating_sub(c.accepted_ns) > self.cfg.logon_timeout_ms * 1_000_000
        {
            let ms = self.cfg.logon_timeout_ms;
            return Timer::Close(CloseReason::new(
                SessionErrorCode::LogonTimeout,
                0,
                ms as u32,
                format!("no Hello within {ms} ms of connecting"),
            ));
        }
        if let Some(started) = c.frame_started_ns
            && !c.held_back
            && c.now_ns.saturating_sub(started) > self.cfg.frame_timeout_ms * 1_000_000
        {
            let ms = self.cfg.frame_timeout_ms;
            return Timer::Close(CloseReason::new(
                SessionErrorCode::FrameTimeout,
                0,
                ms as u32,
                format!("a frame was begun and not completed within {ms} ms"),
            ));
        }
        let idle_ns = self.heartbeat_ns(s) * u64::from(self.cfg.idle_timeout_factor);
        if c.now_ns.saturating_sub(c.last_recv_ns) > idle_ns && !c.held_back {
            let ms = idle_ns / 1_000_000;
            return Timer::Close(CloseReason::new(
                SessionErrorCode::IdleTimeout,
                0,
                ms as u32,
                format!("nothing received for {ms} ms"),
            ));
        }
        if s.phase == Phase::Active
            && c.now_ns.saturating_sub(c.last_out_ns) >= self.heartbeat_ns(s)
            && c.out_bytes == 0
        {
            return Timer::Heartbeat;
        }
        Timer::Nothing
    }
}

/// How a routed request counts against the session's order entry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// Neither counted in `orders_in` nor rate limited (a query).
    Free,
    /// Counted, not rate limited (a cancel).
    Counted,
    /// Counted and rate limited (a replace).
    Rated,
}

/// What the order entry rate says about a NewOrder or Replace.
enum Rated {
    /// A token was taken: route it.
    Go,
    /// Answered `RateLimited` here: drop it.
    Refused,
    /// The refusal must wait for earlier answers.
    Stop(Stop),
}

/// Takes a rate token for message `i` (a NewOrder or Replace), or refuses
/// it with `Rejected(RateLimited)` once the session is settled, or closes
/// a flooding session.
fn rate_check(
    s: &mut Session,
    i: usize,
    fx: &mut impl Effects,
    id: u64,
    symbol: u32,
    kind: Kind,
) -> Result<Rated, CloseReason> {
    if !s.limits.limited() {
        return Ok(Rated::Go);
    }
    let now = fx.now_ns();
    if s.bucket.ready(&s.limits, now) {
        let taken = s.bucket.take(&s.limits, now);
        debug_assert_eq!(taken, Admit::Yes);
        return Ok(Rated::Go);
    }
    if !fx.settled() {
        return Ok(Rated::Stop(Stop::Fenced(i)));
    }
    let admit = s.bucket.take(&s.limits, now);
    reject(fx, id, symbol, RejectReason::RateLimited, kind);
    if admit == Admit::Flood {
        let l = &s.limits;
        return Err(CloseReason::new(
            SessionErrorCode::OrderFlood,
            kind as u8,
            l.flood_rejects,
            format!(
                "order flood: more than {} requests over the rate of {}/s (burst {}) within {} ms",
                l.flood_rejects, l.orders_per_second, l.burst, l.flood_window_ms
            ),
        ));
    }
    Ok(Rated::Refused)
}

/// CancelAfters (protocol version 2) from message `from` on: each arms
/// the dead-man's timer afresh (`timeout_ms` from now), 0 disarms it; a
/// timeout out of range is refused with `NotSupported`, reserved bits with
/// `InvalidFlags` (`client_order_id` = the timeout asked for), and leaves
/// the timer as it was.
fn cancel_afters(
    s: &mut Session,
    msgs: &[wire::CancelAfter],
    from: usize,
    fx: &mut impl Effects,
) -> Option<Stop> {
    for (i, m) in msgs.iter().enumerate().skip(from) {
        let timeout_ms = m.timeout_ms.get();
        let reason = if m.validate().is_err() {
            Some(RejectReason::InvalidFlags)
        } else if timeout_ms != wire::CANCEL_AFTER_DISARM
            && !(wire::CANCEL_AFTER_MIN_MS..=wire::CANCEL_AFTER_MAX_MS).contains(&timeout_ms)
        {
            Some(RejectReason::NotSupported)
        } else {
            None
        };
        if let Some(reason) = reason {
            if fx.congested() {
                return Some(Stop::Blocked(i));
            }
            if !fx.settled() {
                return Some(Stop::Fenced(i));
            }
            reject(fx, u64::from(timeout_ms), 0, reason, Kind::CancelAfter);
            continue;
        }
        s.cancel_after_deadline_ns = (timeout_ms != wire::CANCEL_AFTER_DISARM).then(|| {
            fx.now_ns()
                .saturating_add(u64::from(timeout_ms) * 1_000_000)
        });
    }
    None
}

/// A command of the session.
fn command(s: &Session, op: Op) -> Command {
    Command {
        session: s.id,
        account: s.account,
        op,
    }
}

/// Messages the session layer answers itself, each once the session is
/// settled, from message `from` on.
fn answered<T, F: FnMut(&mut E, &T), E: Effects>(
    msgs: &[T],
    from: usize,
    fx: &mut E,
    mut answer: F,
) -> Option<Stop> {
    for (i, m) in msgs.iter().enumerate().skip(from) {
        if fx.congested() {
            return Some(Stop::Blocked(i));
        }
        if !fx.settled() {
            return Some(Stop::Fenced(i));
        }
        answer(fx, m);
    }
    None
}

/// `Rejected(WrongNode)`, then, in version 2, the `ShardOwner` naming the owner.
fn wrong_node(s: &Session, fx: &mut impl Effects, id: u64, symbol: u32, kind: Kind) {
    reject(fx, id, symbol, RejectReason::WrongNode, kind);
    if s.version >= 2 {
        let owner = fx.shard_owner(id, symbol, kind);
        fx.answer(&owner);
    }
}

fn reject(
    fx: &mut impl Effects,
    client_order_id: u64,
    symbol: u32,
    reason: RejectReason,
    kind: Kind,
) {
    let counters = fx.counters();
    counters.reject(reason.to_wire());
    counters.reports_out += 1;
    fx.answer(&Rejected::new(client_order_id, symbol, reason, kind));
}

#[cfg(test)]
mod tests;
