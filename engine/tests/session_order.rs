//! The order in which a session's answers leave, with and without the
//! journal, on one core and across cores; what a bad frame after good
//! requests leaves the client; and the output cut-off's SessionError.
//! Each of these failed before the core loop was split (issue 12).

mod common;

use std::time::{Duration, Instant};

use common::*;
use engine::journal::JournalConfig;
use engine::server::durable::JournalSettings;
use engine::server::{EngineKind, Server, ServerConfig};
use engine::session_id::SessionId;
use testkit::TempDir;
use wire::*;

/// A one- or two-core server, with a journal in `dir` when given.
fn server(cores: &[usize], symbols: usize, journal: Option<&TempDir>) -> Server {
    let dir = journal.map(|d| d.path().to_path_buf());
    start_with(
        cores,
        cores.len() as u32,
        symbols,
        EngineKind::Match,
        move |cfg| {
            cfg.journal = dir.map(|dir| JournalSettings {
                config: JournalConfig {
                    dir,
                    segment_bytes: 8 << 20,
                    snapshot_every_records: 1 << 30,
                },
                fsync: true,
            });
        },
    )
}

/// A short name for each answer, in arrival order.
fn names(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .map(|m| match m {
            Msg::Accepted(a) => format!("Accepted {}", a.client_order_id.get()),
            Msg::Rejected(r) => format!(
                "Rejected {} {:?}",
                r.client_order_id.get(),
                r.reason().unwrap()
            ),
            Msg::Heartbeat(h) => format!("Heartbeat {}", h.token.get()),
            Msg::Error(e) => format!("SessionError {:?}", e.code().unwrap()),
            other => format!("{other:?}"),
        })
        .collect()
}

/// Sends, in one write: an order that rests, its duplicate, a heartbeat,
/// a cancel for an unknown symbol; returns the answers' names.
fn answers_to_a_mixed_write(c: &mut Client, symbol: u32) -> Vec<String> {
    let mut bytes = Vec::new();
    let mut w = FrameWriter::new(&mut bytes);
    w.push(&buy(7, symbol, 100, 1));
    w.push(&buy(7, symbol, 100, 1));
    w.push(&Heartbeat { token: 9.into() });
    w.push(&Cancel::new(7, 999));
    c.send_raw(&bytes);
    let msgs = c.collect_until(|m| matches!(m, Msg::Rejected(_)), 2, "both rejects");
    names(&msgs)
}

const IN_ORDER: [&str; 4] = [
    "Accepted 7",
    "Rejected 7 DuplicateClientOrderId",
    "Heartbeat 9",
    "Rejected 7 UnknownSymbol",
];

#[test]
fn answers_keep_request_order_with_the_journal_on() {
    let dir = TempDir::new("order-journal");
    let server = server(&test_cpus()[..1], 2, Some(&dir));
    let mut c = Client::login(server.local_addr(), 1, 0);
    assert_eq!(answers_to_a_mixed_write(&mut c, 0), IN_ORDER);
    server.stop();
}

#[test]
fn answers_keep_request_order_without_the_journal() {
    let server = server(&test_cpus()[..1], 2, None);
    let mut c = Client::login(server.local_addr(), 1, 0);
    assert_eq!(answers_to_a_mixed_write(&mut c, 0), IN_ORDER);
    server.stop();
}

#[test]
fn answers_keep_request_order_when_the_shard_is_on_another_core() {
    let cpus = test_cpus();
    if cpus.len() < 2 {
        testkit::skip!("needs two CPUs, this process may use {cpus:?}");
        return;
    }
    for journal in [false, true] {
        let dir = TempDir::new("order-cross-core");
        let server = server(&cpus, 4, journal.then_some(&dir));
        let mut c = Client::login(server.local_addr(), 1, 0);
        let home = SessionId::from_raw(c.session).core();
        let symbol = (0..4u32)
            .find(|&s| owner_core(s, 2, 2) != home)
            .expect("a symbol on the other core");
        assert_eq!(
            answers_to_a_mixed_write(&mut c, symbol),
            IN_ORDER,
            "journal {journal}"
        );
        server.stop();
    }
}

#[test]
fn a_bad_frame_after_a_good_request_gets_the_answer_first() {
    for journal in [false, true] {
        let dir = TempDir::new("bad-frame");
        let server = server(&test_cpus()[..1], 2, journal.then_some(&dir));
        let mut c = Client::login(server.local_addr(), 1, 0);
        let mut bytes = Vec::new();
        FrameWriter::new(&mut bytes).push(&buy(1, 0, 100, 1));
        // A header of a kind no client may send.
        bytes.extend_from_slice(&[0x08, 0, 0, 0, 0x0f, 1, 0, 0]);
        c.send_raw(&bytes);
        let got = names(&c.wait_closed());
        assert_eq!(
            got,
            ["Accepted 1", "SessionError UnknownKind"],
            "journal {journal}"
        );
        let fin = server.stop();
        assert_eq!(fin.total.reports_orphaned, 0, "journal {journal}");
        assert_eq!(fin.total.conns_errored, 1, "journal {journal}");
    }
}

/// A server that cuts a connection off past 2 KiB of unread output, and a
/// client that asked for 6,400 bytes of answers in one write.
fn cut_off() -> (Server, Client, Instant) {
    let cfg = |cfg: &mut ServerConfig| {
        cfg.out_high_water_bytes = 1024;
        cfg.out_max_bytes = 2048;
    };
    let server = start_with(&test_cpus()[..1], 1, 2, EngineKind::Match, cfg);
    let mut c = Client::login(server.local_addr(), 1, 0);
    // 200 resting orders: 200 Accepted of 32 bytes in one loop iteration.
    let orders: Vec<NewOrder> = (1..=200).map(|i| buy(i, 0, 100 + i as i64, 1)).collect();
    let sent = Instant::now();
    c.send(&orders);
    (server, c, sent)
}

#[test]
fn an_output_cut_off_sends_its_session_error_at_once() {
    let (server, mut c, sent) = cut_off();
    let got = c.wait_closed();
    let waited = sent.elapsed();
    assert!(
        matches!(got.last(), Some(Msg::Error(e)) if e.code() == Ok(SessionErrorCode::SlowConsumer)),
        "the SessionError is the last message: {:?}",
        got.last()
    );
    // The close-flush timeout is 2 s: the SessionError must not wait for it.
    assert!(waited < Duration::from_millis(1_500), "took {waited:?}");
    server.stop();
}

#[test]
fn an_output_cut_off_counts_one_errored_connection() {
    let (server, mut c, _) = cut_off();
    c.wait_closed();
    let fin = server.stop();
    assert_eq!(fin.total.conns_errored, 1, "one cut-off, counted once");
}
