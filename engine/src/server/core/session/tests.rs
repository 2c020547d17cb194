//! The session layer driven with bytes: frames in, effects out.
use super::super::super::limits::{HEARTBEAT_MS_MAX, HEARTBEAT_MS_MIN};
use super::*;
use wire::{
    Cancel, CancelAfter, Heartbeat, Hello, MASS_CANCEL_ALL_SYMBOLS, MassCancel, NewOrder,
    OrderQuery, Replace, Side, Subscribe,
};

/// Records what the session layer asks for, in order.
#[derive(Default)]
struct Recorder {
    /// Each effect in order: a routed command's client order id as
    /// "route N", an answer as its kind and id.
    log: Vec<String>,
    routed: Vec<Command>,
    answers: Vec<u8>,
    /// Routed commands not yet processed; `settled` processes them all
    /// when `settle_on_ask` (the core's local, unjournaled case).
    unprocessed: usize,
    settle_on_ask: bool,
    /// Congested after this many routes.
    congest_after: Option<usize>,
    counters: Counters,
    /// The version frames are written with (set at the Hello).
    version: Option<u8>,
    /// The time the session layer sees.
    now_ns: u64,
    /// What `logon` answers (`None`: granted), and the logons asked for.
    logon_pending: bool,
    logons: Vec<(u64, Vec<u8>)>,
    /// In a cluster: the symbols this node does not serve.
    foreign: Vec<u32>,
    /// In a cluster: map requests are answered.
    in_cluster: bool,
}

impl Effects for Recorder {
    fn congested(&self) -> bool {
        self.congest_after.is_some_and(|n| self.routed.len() >= n)
    }
    fn route(&mut self, _symbol: u32, cmd: Command) {
        let id = match cmd.op {
            Op::New(o) => o.client_order_id.get(),
            Op::Cancel(c) => c.client_order_id.get(),
            Op::Replace(r) => r.client_order_id.get(),
            Op::Query(q) => q.client_order_id.get(),
            Op::MassCancel { symbol } => {
                self.log.push(format!("mass cancel {symbol:#x}"));
                self.routed.push(cmd);
                self.unprocessed += 1;
                return;
            }
            Op::CancelSession | Op::KillAccount | Op::UnblockAccount | Op::DetachSessions => 0,
        };
        self.log.push(format!("route {id}"));
        self.routed.push(cmd);
        self.unprocessed += 1;
    }
    fn route_everywhere(&mut self, cmd: Command) {
        self.route(u32::MAX, cmd);
    }
    fn now_ns(&self) -> u64 {
        self.now_ns
    }
    fn settled(&mut self) -> bool {
        if self.settle_on_ask {
            self.unprocessed = 0;
        }
        self.unprocessed == 0
    }
    fn answer<T: Message>(&mut self, msg: &T) {
        let mut one = Vec::new();
        wire::append_frame(std::slice::from_ref(msg), &mut one).unwrap();
        self.answers.extend_from_slice(&one);
        let id = match T::KIND {
            Kind::Rejected => {
                let (r, _) =
                    <Rejected as zerocopy::FromBytes>::read_from_prefix(&one[8..]).unwrap();
                format!(" {} {:?}", r.client_order_id.get(), r.reason())
            }
            _ => String::new(),
        };
        self.log.push(format!("{:?}{id}", T::KIND));
    }
    fn counters(&mut self) -> &mut Counters {
        &mut self.counters
    }
    fn set_version(&mut self, version: u8) {
        self.version = Some(version);
    }
    fn logon(&mut self, account: u64, credentials: &[u8; 32]) -> Logon {
        self.logons
            .push((account, crate::accounts::password_of(credentials).to_vec()));
        if self.logon_pending {
            Logon::Pending
        } else {
            Logon::Granted
        }
    }
    fn subscribe(&mut self, symbol: u32, flags: u32) {
        self.log.push(format!("subscribe {symbol:#x} {flags}"));
    }
    fn serves(&self, symbol: u32) -> bool {
        !self.foreign.contains(&symbol)
    }
    fn shard_owner(&self, client_order_id: u64, symbol: u32, kind: Kind) -> wire::ShardOwner {
        let owner = (9, "10.0.0.9:9000".parse().unwrap());
        wire::ShardOwner::new(client_order_id, symbol, symbol % 2, 5, Some(owner), kind)
    }
    fn cluster_map(&mut self, token: u64) -> bool {
        if self.in_cluster {
            self.log.push(format!("map {token}"));
        }
        self.in_cluster
    }
}

fn layer() -> SessionLayer {
    SessionLayer::new(SessionConfig {
        symbol_count: 2,
        directory: vec![SymbolEntry::new(0, "A"), SymbolEntry::new(1, "B")].into(),
        auth_token: None,
        heartbeat_ms: 1_000,
        idle_timeout_factor: 3,
        max_frame_bytes: wire::DEFAULT_MAX_FRAME_BYTES,
        slow_consumer_ms: 10_000,
        accounts: false,
        logon_timeout_ms: 5_000,
        frame_timeout_ms: 5_000,
        order_limits: OrderEntryLimits::UNLIMITED,
    })
}

/// A layer whose sessions may enter `rate` orders a second, `burst` at
/// once, and are closed after `flood` rate-limited requests in a second.
fn rated_layer(rate: u64, burst: u32, flood: u32) -> SessionLayer {
    let mut l = layer();
    l.cfg.order_limits = OrderEntryLimits {
        orders_per_second: rate,
        burst,
        flood_rejects: flood,
        flood_window_ms: 1_000,
    };
    l
}

fn layer_with_accounts() -> SessionLayer {
    let mut cfg = layer().cfg;
    cfg.accounts = true;
    SessionLayer::new(cfg)
}

fn bytes<M: Message>(msgs: &[M]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::append_frame(msgs, &mut out).unwrap();
    out
}

fn order(id: u64, symbol: u32) -> NewOrder {
    NewOrder::limit(id, symbol, Side::Buy, 100, 1)
}

fn logged_on(l: &SessionLayer, fx: &mut Recorder) -> Session {
    logged_on_with(l, fx, wire::PROTOCOL_VERSION)
}

fn logged_on_with(l: &SessionLayer, fx: &mut Recorder, version: u8) -> Session {
    let mut s = Session::new(SessionId::new(1, 2, 3));
    let mut hello = Hello::new(7, 0, 0, "");
    hello.protocol_version = u16::from(version).into();
    let (used, _, end) = l.handle_input(&mut s, &bytes(&[hello]), 0, fx);
    assert_eq!((s.version, fx.version), (version, Some(version)));
    assert!(matches!(end, InputEnd::Done), "{end:?}");
    assert_eq!(used, 8 + 48);
    fx.log.clear();
    s
}

#[test]
fn a_hello_gets_its_ack_then_the_directory() {
    let l = layer();
    let mut fx = Recorder::default();
    let mut s = Session::new(SessionId::new(1, 2, 3));
    let hello = bytes(&[Hello::new(7, 0, 250, "")]);
    let (used, _, end) = l.handle_input(&mut s, &hello, 0, &mut fx);
    assert!(matches!(end, InputEnd::Done));
    assert_eq!(used, hello.len());
    assert_eq!(fx.log, ["HelloAck", "SymbolEntry", "SymbolEntry"]);
    assert_eq!(
        (s.phase, s.account, s.heartbeat_ms),
        (Phase::Active, 7, 250)
    );
}

#[test]
fn hello_rules() {
    let l = layer();
    // A heartbeat interval out of range is clamped; 0 takes the default.
    for (asked, got) in [
        (1, HEARTBEAT_MS_MIN),
        (u32::MAX, HEARTBEAT_MS_MAX),
        (0, 1_000),
    ] {
        let mut s = Session::new(SessionId::new(0, 1, 0));
        l.handle_input(
            &mut s,
            &bytes(&[Hello::new(1, 0, asked, "")]),
            0,
            &mut Recorder::default(),
        );
        assert_eq!(s.heartbeat_ms, got, "asked {asked}");
    }
    // A second Hello closes the session.
    let mut fx = Recorder::default();
    let mut s = logged_on(&l, &mut fx);
    let (_, _, end) = l.handle_input(&mut s, &bytes(&[Hello::new(7, 0, 0, "")]), 0, &mut fx);
    let InputEnd::Close(r) = end else {
        panic!("{end:?}")
    };
    assert_eq!(r.code(), Some(SessionErrorCode::DuplicateHello));
    // A wrong version is refused, naming the version.
    let mut s = Session::new(SessionId::new(0, 1, 0));
    let mut hello = Hello::new(1, 0, 0, "");
    hello.protocol_version = 9.into();
    let (_, _, end) = l.handle_input(&mut s, &bytes(&[hello]), 0, &mut Recorder::default());
    let InputEnd::Close(r) = end else {
        panic!("{end:?}")
    };
    assert_eq!(r.code(), Some(SessionErrorCode::UnsupportedVersion));
    assert_eq!(r.msg.detail.get(), 9);
    // With a token, other credentials are refused.
    let mut cfg = layer().cfg;
    cfg.auth_token = Some(b"secret".to_vec());
    let l = SessionLayer::new(cfg);
    let mut s = Session::new(SessionId::new(0, 1, 0));
    let (_, _, end) = l.handle_input(
        &mut s,
        &bytes(&[Hello::new(1, 0, 0, "guess")]),
        0,
        &mut Recorder::default(),
    );
    let InputEnd::Close(r) = end else {
        panic!("{end:?}")
    };
    assert_eq!(r.code(), Some(SessionErrorCode::AuthenticationFailed));
    let mut fx = Recorder::default();
    l.handle_input(&mut s, &bytes(&[Hello::new(1, 0, 0, "secret")]), 0, &mut fx);
    assert_eq!(s.phase, Phase::Active);
}

#[test]
fn an_order_before_the_hello_closes_the_connection() {
    let l = layer();
    let mut fx = Recorder::default();
    let mut s = Session::new(SessionId::new(0, 1, 0));
    let (_, _, end) = l.handle_input(&mut s, &bytes(&[order(1, 0)]), 0, &mut fx);
    let InputEnd::Close(r) = end else {
        panic!("{end:?}")
    };
    assert_eq!(r.code(), Some(SessionErrorCode::NotLoggedIn));
    assert!(fx.routed.is_empty());
}

#[test]
fn frame_errors_close_after_the_frames_before_them() {
    let l = layer();
    let mut fx = Recorder::default();
    let mut s = logged_on(&l, &mut fx);
    let mut data = bytes(&[order(1, 0)]);
    let good = data.len();
    data.extend_from_slice(&[8, 0, 0, 0, 0x0f, 1, 0, 0]); // no kind 0x0f
    let (used, _, end) = l.handle_input(&mut s, &data, 0, &mut fx);
    let InputEnd::Close(r) = end else {
        panic!("{end:?}")
    };
    assert_eq!(r.code(), Some(SessionErrorCode::UnknownKind));
    assert_eq!(used, good, "the bad frame is not consumed");
    assert_eq!(fx.log, ["route 1"], "the good order was routed first");
    // A truncated frame is not an error: it waits for more bytes.
    let partial = &bytes(&[order(2, 0)])[..20];
    let (used, _, end) = l.handle_input(&mut s, partial, 0, &mut fx);
    assert!(matches!(end, InputEnd::Done));
    assert_eq!(used, 0);
}

#[test]
fn duplicate_and_unknown_symbol_rejects_wait_for_earlier_requests() {
    let l = layer();
    let mut fx = Recorder::default();
    let mut s = logged_on(&l, &mut fx);
    // id 7 is routed and not yet processed; the duplicate 7 and the
    // unknown symbol must not be answered before it.
    let data = bytes(&[order(7, 0), order(7, 1), order(8, 5), order(8, 0)]);
    let (used, cursor, end) = l.handle_input(&mut s, &data, 0, &mut fx);
    assert!(matches!(end, InputEnd::Fenced), "{end:?}");
    assert_eq!((used, cursor), (0, 1), "stopped before the second message");
    assert_eq!(fx.log, ["route 7"]);
    // Once the shard processed 7, the rest goes through, in order.
    fx.unprocessed = 0;
    let (used, _, end) = l.handle_input(&mut s, &data, cursor, &mut fx);
    assert!(matches!(end, InputEnd::Done));
    assert_eq!(used, data.len());
    assert_eq!(
        fx.log,
        [
            "route 7",
            "Rejected 7 Ok(DuplicateClientOrderId)",
            "Rejected 8 Ok(UnknownSymbol)",
            // Id 8 counts as used even though its symbol was unknown.
            "Rejected 8 Ok(DuplicateClientOrderId)"
        ]
    );
    assert_eq!(fx.counters.orders_in, 4, "each order counted once");
    assert_eq!(fx.counters.rejects, 3);
}

#[test]
fn answers_follow_local_commands_processed_on_the_spot() {
    let l = layer();
    let mut fx = Recorder {
        settle_on_ask: true,
        ..Recorder::default()
    };
    // Version 1: a Subscribe is refused as it always was.
    let mut s = logged_on_with(&l, &mut fx, 1);
    let mut data = bytes(&[order(1, 0)]);
    data.extend(bytes(&[Heartbeat { token: 5.into() }]));
    data.extend(bytes(&[Subscribe {
        symbol: 0.into(),
        flags: 1.into(),
    }]));
    data.extend(bytes(&[Cancel::new(1, 9)]));
    data.extend(bytes(&[OrderQuery::new(1, 1)]));
    let (used, _, end) = l.handle_input(&mut s, &data, 0, &mut fx);
    assert!(matches!(end, InputEnd::Done));
    assert_eq!(used, data.len());
    assert_eq!(
        fx.log,
        [
            "route 1",
            "ServerHeartbeat",
            "Rejected 0 Ok(NotSupported)",
            "Rejected 1 Ok(UnknownSymbol)",
            "route 1"
        ]
    );
}

#[test]
fn congestion_stops_before_a_message_and_resumes_there() {
    let l = layer();
    let mut fx = Recorder {
        congest_after: Some(2),
        settle_on_ask: true,
        ..Recorder::default()
    };
    let mut s = logged_on(&l, &mut fx);
    let data = bytes(&[order(1, 0), order(2, 1), order(3, 0)]);
    let (used, cursor, end) = l.handle_input(&mut s, &data, 0, &mut fx);
    assert!(matches!(end, InputEnd::Blocked));
    assert_eq!((used, cursor), (0, 2));
    fx.congest_after = None;
    let (used, _, end) = l.handle_input(&mut s, &data, cursor, &mut fx);
    assert!(matches!(end, InputEnd::Done));
    assert_eq!(used, data.len());
    assert_eq!(fx.log, ["route 1", "route 2", "route 3"]);
}

#[test]
fn timers_close_idle_and_slow_sessions_and_beat_when_quiet() {
    let l = layer();
    let mut fx = Recorder::default();
    let s = logged_on(&l, &mut fx);
    let ms = 1_000_000;
    let clock = Clock {
        now_ns: 10_000 * ms,
        last_recv_ns: 9_500 * ms,
        last_out_ns: 9_500 * ms,
        send_started_ns: None,
        out_bytes: 0,
        held_back: false,
        accepted_ns: 0,
        frame_started_ns: None,
    };
    assert!(matches!(l.poll_timers(&s, &clock), Timer::Nothing));
    let quiet = Clock {
        last_out_ns: 8_900 * ms,
        ..clock
    };
    assert!(matches!(l.poll_timers(&s, &quiet), Timer::Heartbeat));
    let silent = Clock {
        last_recv_ns: 6_900 * ms,
        ..clock
    };
    let Timer::Close(r) = l.poll_timers(&s, &silent) else {
        panic!()
    };
    assert_eq!(r.code(), Some(SessionErrorCode::IdleTimeout));
    assert_eq!(r.msg.detail.get(), 3_000, "3 heartbeat intervals");
    // Silence while the server holds input back is not the client's fault.
    let held = Clock {
        held_back: true,
        ..silent
    };
    assert!(!matches!(l.poll_timers(&s, &held), Timer::Close(_)));
    let stuck = Clock {
        now_ns: 20_000 * ms,
        last_recv_ns: 19_900 * ms,
        last_out_ns: 19_900 * ms,
        send_started_ns: Some(9_000 * ms),
        out_bytes: 99,
        held_back: false,
        accepted_ns: 0,
        frame_started_ns: None,
    };
    let Timer::Close(r) = l.poll_timers(&s, &stuck) else {
        panic!()
    };
    assert_eq!(r.code(), Some(SessionErrorCode::SlowConsumer));
    // Before the Hello the server's default interval applies.
    let fresh = Session::new(SessionId::new(0, 1, 1));
    let within_logon_deadline = Clock {
        accepted_ns: 9_000 * ms,
        ..silent
    };
    let Timer::Close(r) = l.poll_timers(&fresh, &within_logon_deadline) else {
        panic!()
    };
    assert_eq!(r.code(), Some(SessionErrorCode::IdleTimeout));
}

#[test]
fn version_2_subscribes_go_to_market_data_and_bad_ones_are_refused_in_order() {
    let l = layer();
    let mut fx = Recorder::default();
    let mut s = logged_on(&l, &mut fx);
    let data = bytes(&[
        Subscribe::new(1, wire::SUBSCRIBE_DEPTH | wire::SUBSCRIBE_TRADES),
        Subscribe::new(wire::ALL_SYMBOLS, wire::SUBSCRIBE_TOP_OF_BOOK),
        Subscribe::new(2, wire::SUBSCRIBE_TRADES),
        Subscribe::new(0, 1 << 4),
        Subscribe::new(0, 0),
    ]);
    let mut all = bytes(&[order(1, 0)]);
    all.extend(data);
    // The order is not yet processed: the first bad Subscribe must wait.
    let (used, cursor, end) = l.handle_input(&mut s, &all, 0, &mut fx);
    assert!(matches!(end, InputEnd::Fenced), "{end:?}");
    assert_eq!((used, cursor), (8 + 32, 2));
    assert_eq!(
        fx.log,
        ["route 1", "subscribe 0x1 5", "subscribe 0xffffffff 2"]
    );
    fx.unprocessed = 0;
    let (_, _, end) = l.handle_input(&mut s, &all[used..], cursor, &mut fx);
    assert!(matches!(end, InputEnd::Done), "{end:?}");
    assert_eq!(
        fx.log[3..],
        [
            "Rejected 0 Ok(UnknownSymbol)",
            "Rejected 0 Ok(InvalidFlags)",
            "subscribe 0x0 0"
        ]
    );
}

#[test]
fn the_hello_sets_the_version_and_out_of_range_versions_are_refused() {
    let l = layer();
    for version in [1u8, 2] {
        let mut fx = Recorder::default();
        let s = logged_on_with(&l, &mut fx, version);
        assert_eq!(s.version, version);
        let ack = &fx.answers[..8 + 24];
        assert_eq!(
            u16::from_le_bytes([ack[16], ack[17]]),
            u16::from(version),
            "HelloAck echoes it"
        );
    }
    for version in [0u16, 3] {
        let mut fx = Recorder::default();
        let mut s = Session::new(SessionId::new(0, 1, 0));
        let mut hello = Hello::new(7, 0, 0, "");
        hello.protocol_version = version.into();
        let (_, _, end) = l.handle_input(&mut s, &bytes(&[hello]), 0, &mut fx);
        let InputEnd::Close(reason) = end else {
            panic!("version {version}: {end:?}");
        };
        assert_eq!(reason.code(), Some(SessionErrorCode::UnsupportedVersion));
        assert_eq!(reason.msg.detail.get(), u32::from(version));
        assert_eq!(fx.version, None);
    }
}

#[test]
fn with_accounts_a_hello_waits_for_its_password_check_and_holds_the_input() {
    let l = layer_with_accounts();
    let mut fx = Recorder {
        logon_pending: true,
        ..Recorder::default()
    };
    let mut s = Session::new(SessionId::new(1, 2, 3));
    let mut data = bytes(&[Hello::new(7, 0, 250, "s3cret")]);
    let hello_len = data.len();
    data.extend(bytes(&[order(1, 0)]));
    let (used, cursor, end) = l.handle_input(&mut s, &data, 0, &mut fx);
    // The Hello is consumed, the order behind it is not processed.
    assert!(matches!(end, InputEnd::Pending), "{end:?}");
    assert_eq!((used, cursor), (hello_len, 0));
    assert_eq!(s.phase, Phase::Authenticating);
    assert_eq!(fx.logons, [(7, b"s3cret".to_vec())]);
    assert!(fx.log.is_empty(), "nothing is answered before the verdict");
    assert_eq!(fx.version, Some(wire::PROTOCOL_VERSION));
    // The verdict: the ack goes out with what the Hello asked for.
    l.complete_logon(&mut s, &mut fx);
    assert_eq!(fx.log, ["HelloAck", "SymbolEntry", "SymbolEntry"]);
    assert_eq!((s.phase, s.heartbeat_ms), (Phase::Active, 250));
    let (used, _, end) = l.handle_input(&mut s, &data[hello_len..], 0, &mut fx);
    assert!(matches!(end, InputEnd::Done));
    assert_eq!(used, data.len() - hello_len);
}

#[test]
fn with_accounts_a_version_1_hello_is_refused() {
    let l = layer_with_accounts();
    let mut fx = Recorder::default();
    let mut s = Session::new(SessionId::new(1, 2, 3));
    let mut hello = Hello::new(7, 0, 0, "pw");
    hello.protocol_version = 1.into();
    let (_, _, end) = l.handle_input(&mut s, &bytes(&[hello]), 0, &mut fx);
    let InputEnd::Close(r) = end else {
        panic!("{end:?}")
    };
    assert_eq!(r.code(), Some(SessionErrorCode::AuthenticationFailed));
    assert!(r.text.contains("version 2"), "{}", r.text);
    assert!(
        fx.logons.is_empty(),
        "no password check for a refused version"
    );
}

#[test]
fn the_logon_and_frame_deadlines_close_slow_starters_and_drippers() {
    let l = layer();
    let ms = 1_000_000;
    let s = Session::new(SessionId::new(1, 2, 3));
    let clock = Clock {
        now_ns: 5_000 * ms,
        last_recv_ns: 4_900 * ms,
        last_out_ns: 0,
        send_started_ns: None,
        out_bytes: 0,
        held_back: false,
        accepted_ns: 0,
        frame_started_ns: None,
    };
    assert!(matches!(l.poll_timers(&s, &clock), Timer::Nothing));
    let late = Clock {
        now_ns: 5_001 * ms,
        ..clock
    };
    let Timer::Close(r) = l.poll_timers(&s, &late) else {
        panic!()
    };
    assert_eq!(r.code(), Some(SessionErrorCode::LogonTimeout));
    assert_eq!(r.msg.detail.get(), 5_000);
    // Logged on, bytes arriving, but a frame begun 5 s ago is not complete.
    let mut fx = Recorder::default();
    let active = logged_on(&l, &mut fx);
    let dripping = Clock {
        now_ns: 20_000 * ms,
        last_recv_ns: 19_999 * ms,
        last_out_ns: 19_999 * ms,
        frame_started_ns: Some(15_000 * ms),
        ..clock
    };
    assert!(matches!(l.poll_timers(&active, &dripping), Timer::Nothing));
    let dripped = Clock {
        frame_started_ns: Some(14_999 * ms),
        ..dripping
    };
    let Timer::Close(r) = l.poll_timers(&active, &dripped) else {
        panic!()
    };
    assert_eq!(r.code(), Some(SessionErrorCode::FrameTimeout));
    // Input the server holds back is not the client's fault.
    let held = Clock {
        held_back: true,
        ..dripped
    };
    assert!(matches!(l.poll_timers(&active, &held), Timer::Nothing));
}

#[test]
fn orders_and_replaces_past_the_rate_are_refused_and_cancels_are_free() {
    let l = rated_layer(1_000, 3, 0);
    let mut fx = Recorder {
        settle_on_ask: true,
        ..Recorder::default()
    };
    let mut s = logged_on(&l, &mut fx);
    // Burst 3: two orders and a replace pass, the fourth request is refused;
    // cancels and queries never take a token.
    let mut data = bytes(&[order(1, 0), order(2, 0)]);
    data.extend(bytes(&[Replace::new(1, 0, 101, 1)]));
    data.extend(bytes(&[order(3, 0)]));
    data.extend(bytes(&[Replace::new(2, 0, 101, 1)]));
    data.extend(bytes(&[Cancel::new(1, 0)]));
    data.extend(bytes(&[OrderQuery::new(2, 0)]));
    let (used, _, end) = l.handle_input(&mut s, &data, 0, &mut fx);
    assert!(matches!(end, InputEnd::Done), "{end:?}");
    assert_eq!(used, data.len());
    assert_eq!(
        fx.log,
        [
            "route 1",
            "route 2",
            "route 1",
            "Rejected 3 Ok(RateLimited)",
            "Rejected 2 Ok(RateLimited)",
            "route 1",
            "route 2"
        ]
    );
    assert_eq!(fx.counters.rejects_by_reason[17], 2);
    // A refused order's id was not used: it may be sent again once the
    // bucket has refilled (one token per millisecond).
    fx.log.clear();
    fx.now_ns = 1_000_000;
    let (_, _, end) = l.handle_input(&mut s, &bytes(&[order(3, 0)]), 0, &mut fx);
    assert!(matches!(end, InputEnd::Done), "{end:?}");
    assert_eq!(fx.log, ["route 3"]);
}

#[test]
fn a_rate_limit_refusal_waits_for_earlier_requests() {
    let l = rated_layer(1_000, 1, 0);
    let mut fx = Recorder::default();
    let mut s = logged_on(&l, &mut fx);
    let data = bytes(&[order(1, 0), order(2, 0)]);
    let (used, cursor, end) = l.handle_input(&mut s, &data, 0, &mut fx);
    assert!(matches!(end, InputEnd::Fenced), "{end:?}");
    assert_eq!((used, cursor), (0, 1));
    fx.unprocessed = 0;
    let (used, _, end) = l.handle_input(&mut s, &data, cursor, &mut fx);
    assert!(matches!(end, InputEnd::Done), "{end:?}");
    assert_eq!(used, data.len());
    assert_eq!(fx.log, ["route 1", "Rejected 2 Ok(RateLimited)"]);
}

#[test]
fn a_sustained_flood_closes_the_session_with_the_reason_but_a_burst_does_not() {
    let l = rated_layer(1_000, 2, 5);
    let mut fx = Recorder {
        settle_on_ask: true,
        ..Recorder::default()
    };
    let mut s = logged_on(&l, &mut fx);
    // 2 pass, 5 are refused: a burst, tolerated.
    let orders: Vec<NewOrder> = (1..=7).map(|id| order(id, 0)).collect();
    let (_, _, end) = l.handle_input(&mut s, &bytes(&orders), 0, &mut fx);
    assert!(matches!(end, InputEnd::Done), "{end:?}");
    // One more refusal within the second is a flood.
    let (used, _, end) = l.handle_input(&mut s, &bytes(&[order(8, 0)]), 0, &mut fx);
    assert_eq!(used, 8 + 32);
    let InputEnd::Close(reason) = end else {
        panic!("expected a close, got {end:?}");
    };
    assert_eq!(reason.code(), Some(SessionErrorCode::OrderFlood));
    assert!(reason.text.contains("order flood"), "{}", reason.text);
    assert_eq!(
        fx.log.iter().filter(|l| l.contains("RateLimited")).count(),
        6,
        "the request that flooded is refused too"
    );
}

#[test]
fn mass_cancels_route_to_one_shard_or_all_and_version_1_is_refused() {
    let l = layer();
    let mut fx = Recorder {
        settle_on_ask: true,
        ..Recorder::default()
    };
    let mut s = logged_on(&l, &mut fx);
    let mut bad_flags = MassCancel::new(4, 0);
    bad_flags.flags = 1.into();
    let data = bytes(&[
        MassCancel::new(1, 1),
        MassCancel::new(2, MASS_CANCEL_ALL_SYMBOLS),
        MassCancel::new(3, 9),
        bad_flags,
    ]);
    let (used, _, end) = l.handle_input(&mut s, &data, 0, &mut fx);
    assert!(matches!(end, InputEnd::Done), "{end:?}");
    assert_eq!(used, data.len());
    assert_eq!(
        fx.log,
        [
            "mass cancel 0x1",
            "mass cancel 0xffffffff",
            "Rejected 3 Ok(UnknownSymbol)",
            "Rejected 4 Ok(InvalidFlags)"
        ]
    );
    assert_eq!(fx.routed[0].account, 7);

    let mut fx = Recorder::default();
    let mut s = logged_on_with(&l, &mut fx, 1);
    let (_, _, end) = l.handle_input(&mut s, &bytes(&[MassCancel::new(5, 0)]), 0, &mut fx);
    assert!(matches!(end, InputEnd::Done), "{end:?}");
    assert_eq!(fx.log, ["Rejected 5 Ok(NotSupported)"]);
}

/// A Clock at `now_ms` for a session that is neither idle nor slow.
fn busy_clock(now_ms: u64) -> Clock {
    let ns = now_ms * 1_000_000;
    Clock {
        now_ns: ns,
        last_recv_ns: ns,
        last_out_ns: ns,
        send_started_ns: None,
        out_bytes: 0,
        held_back: false,
        accepted_ns: 0,
        frame_started_ns: None,
    }
}

#[test]
fn cancel_after_arms_rearms_disarms_and_expires_into_one_mass_cancel_of_all() {
    let l = layer();
    let mut fx = Recorder {
        settle_on_ask: true,
        ..Recorder::default()
    };
    let mut s = logged_on(&l, &mut fx);
    let ms = 1_000_000;
    // Not armed: nothing, however long.
    assert!(matches!(
        l.poll_timers(&s, &busy_clock(1_000_000)),
        Timer::Nothing
    ));

    // Armed at t = 1 s for 1 s.
    fx.now_ns = 1_000 * ms;
    let (used, _, end) = l.handle_input(&mut s, &bytes(&[CancelAfter::new(1_000)]), 0, &mut fx);
    assert!(matches!(end, InputEnd::Done), "{end:?}");
    assert_eq!(used, 8 + 8);
    assert!(fx.log.is_empty(), "arming has no answer: {:?}", fx.log);
    assert_eq!(s.cancel_after_deadline_ns, Some(2_000 * ms));
    assert!(matches!(
        l.poll_timers(&s, &busy_clock(1_999)),
        Timer::Nothing
    ));

    // Re-armed at t = 1.5 s: the countdown starts afresh.
    fx.now_ns = 1_500 * ms;
    l.handle_input(&mut s, &bytes(&[CancelAfter::new(1_000)]), 0, &mut fx);
    assert!(matches!(
        l.poll_timers(&s, &busy_clock(2_400)),
        Timer::Nothing
    ));
    assert!(matches!(
        l.poll_timers(&s, &busy_clock(2_500)),
        Timer::CancelAll
    ));

    // Carried out: one mass cancel of all symbols, routed everywhere, and
    // the timer is disarmed (the session stays active).
    l.cancel_all(&mut s, &mut fx);
    assert_eq!(fx.log, ["mass cancel 0xffffffff"]);
    assert_eq!(fx.routed.len(), 1);
    assert_eq!(fx.routed[0].account, 7);
    assert_eq!(fx.routed[0].session, s.id);
    assert_eq!(s.phase, Phase::Active);
    assert_eq!(s.cancel_after_deadline_ns, None);
    assert!(matches!(
        l.poll_timers(&s, &busy_clock(10_000)),
        Timer::Nothing
    ));

    // Zero disarms.
    fx.log.clear();
    fx.now_ns = 3_000 * ms;
    l.handle_input(&mut s, &bytes(&[CancelAfter::new(5_000)]), 0, &mut fx);
    assert_eq!(s.cancel_after_deadline_ns, Some(8_000 * ms));
    l.handle_input(&mut s, &bytes(&[CancelAfter::new(0)]), 0, &mut fx);
    assert_eq!(s.cancel_after_deadline_ns, None);
    assert!(matches!(
        l.poll_timers(&s, &busy_clock(100_000)),
        Timer::Nothing
    ));

    // Out of range and reserved bits are refused and leave the timer alone.
    l.handle_input(&mut s, &bytes(&[CancelAfter::new(2_000)]), 0, &mut fx);
    let mut reserved = CancelAfter::new(1_000);
    reserved.reserved = 1.into();
    let data = bytes(&[CancelAfter::new(999), CancelAfter::new(3_600_001), reserved]);
    let (used, _, end) = l.handle_input(&mut s, &data, 0, &mut fx);
    assert!(matches!(end, InputEnd::Done), "{end:?}");
    assert_eq!(used, data.len());
    assert_eq!(
        fx.log,
        [
            "Rejected 999 Ok(NotSupported)",
            "Rejected 3600001 Ok(NotSupported)",
            "Rejected 1000 Ok(InvalidFlags)"
        ]
    );
    assert_eq!(s.cancel_after_deadline_ns, Some(5_000 * ms));
    // The bounds themselves are accepted.
    l.handle_input(&mut s, &bytes(&[CancelAfter::new(3_600_000)]), 0, &mut fx);
    assert_eq!(s.cancel_after_deadline_ns, Some(3_603_000 * ms));
    l.handle_input(&mut s, &bytes(&[CancelAfter::new(1_000)]), 0, &mut fx);
    assert_eq!(s.cancel_after_deadline_ns, Some(4_000 * ms));
    assert_eq!(fx.log.len(), 3, "{:?}", fx.log);

    // A closing session's timer does nothing.
    s.phase = Phase::Closing;
    assert!(matches!(
        l.poll_timers(&s, &busy_clock(100_000)),
        Timer::Nothing
    ));
}

#[test]
fn version_1_sessions_cannot_arm_a_cancel_after() {
    let l = layer();
    let mut fx = Recorder::default();
    let mut s = logged_on_with(&l, &mut fx, 1);
    let (_, _, end) = l.handle_input(&mut s, &bytes(&[CancelAfter::new(1_000)]), 0, &mut fx);
    assert!(matches!(end, InputEnd::Done), "{end:?}");
    assert_eq!(fx.log, ["Rejected 1000 Ok(NotSupported)"]);
    assert_eq!(s.cancel_after_deadline_ns, None);
    assert!(matches!(
        l.poll_timers(&s, &busy_clock(100_000)),
        Timer::Nothing
    ));
}

#[test]
fn requests_for_another_nodes_shard_get_wrong_node_and_the_owner_in_order() {
    let l = layer();
    let mut fx = Recorder {
        foreign: vec![1],
        in_cluster: true,
        ..Recorder::default()
    };
    let mut s = logged_on(&l, &mut fx);
    let data = [
        bytes(&[order(7, 0), order(8, 1), order(9, 0)]),
        bytes(&[Cancel::new(7, 1), Cancel::new(7, 0)]),
        bytes(&[
            MassCancel::new(4, 1),
            MassCancel::new(5, MASS_CANCEL_ALL_SYMBOLS),
        ]),
        bytes(&[wire::ClusterMapRequest::new(3)]),
    ]
    .concat();
    // The WrongNode waits for order 7's answer, like any reject made here.
    let (used, cursor, end) = l.handle_input(&mut s, &data, 0, &mut fx);
    assert!(matches!(end, InputEnd::Fenced), "{end:?}");
    assert_eq!((used, cursor), (0, 1));
    fx.settle_on_ask = true;
    let (used, _, end) = l.handle_input(&mut s, &data, cursor, &mut fx);
    assert!(matches!(end, InputEnd::Done), "{end:?}");
    assert_eq!(used, data.len());
    assert_eq!(
        fx.log,
        [
            "route 7",
            "Rejected 8 Ok(WrongNode)",
            "ShardOwner",
            "route 9",
            "Rejected 7 Ok(WrongNode)",
            "ShardOwner",
            "route 7",
            "Rejected 4 Ok(WrongNode)",
            "ShardOwner",
            "mass cancel 0xffffffff",
            "map 3",
        ]
    );
    // Id 8 was used: resending it to this node is a duplicate.
    let again = bytes(&[order(8, 0)]);
    fx.log.clear();
    l.handle_input(&mut s, &again, 0, &mut fx);
    assert_eq!(fx.log, ["Rejected 8 Ok(DuplicateClientOrderId)"]);
}

#[test]
fn version_1_gets_wrong_node_alone_and_no_cluster_map() {
    let l = layer();
    let mut fx = Recorder {
        foreign: vec![1],
        in_cluster: true,
        settle_on_ask: true,
        ..Recorder::default()
    };
    let mut s = logged_on_with(&l, &mut fx, 1);
    let data = [
        bytes(&[order(8, 1)]),
        bytes(&[wire::ClusterMapRequest::new(3)]),
    ]
    .concat();
    l.handle_input(&mut s, &data, 0, &mut fx);
    assert_eq!(
        fx.log,
        ["Rejected 8 Ok(WrongNode)", "Rejected 3 Ok(NotSupported)"]
    );
    // Outside a cluster a version 2 map request is refused the same way.
    let mut fx = Recorder {
        settle_on_ask: true,
        ..Recorder::default()
    };
    let mut s = logged_on(&l, &mut fx);
    l.handle_input(
        &mut s,
        &bytes(&[wire::ClusterMapRequest::new(3)]),
        0,
        &mut fx,
    );
    assert_eq!(fx.log, ["Rejected 3 Ok(NotSupported)"]);
}
