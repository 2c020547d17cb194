//! The crash test: drive turbo-dex (the binary, with a journal), `kill -9`
//! it at random moments, restart it on the same journal, and check with
//! order status queries that every acknowledged order is there in a state
//! consistent with what was acknowledged, and that resending an order never
//! executes it twice.
//!
//! Small in the test suite; `scripts/crash-test.sh` runs it large:
//! `CRASH_TRIALS=50 CRASH_STEPS=400 cargo test --release -p engine --test crash -- --nocapture`.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use wire::*;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: the test's randomness, seeded so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const SYMBOLS: u32 = 4;

fn start_server(journal: &Path) -> (Child, SocketAddr) {
    let cpu = test_cpus()[0].to_string();
    let mut child = testkit::turbo_dex(env!("CARGO_BIN_EXE_turbo-dex"), &cpu)
        .arg("--quiet")
        .args(["--symbols", &SYMBOLS.to_string(), "--fsync", "batch"])
        // Small segments and frequent snapshots, so that crashes land in
        // every phase: mid-segment, at a segment switch, around a snapshot.
        .args([
            "--journal-segment-bytes",
            "262144",
            "--snapshot-every",
            "1500",
        ])
        .arg("--journal")
        .arg(journal)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("turbo-dex starts");
    let (addr, mut lines) = ready_addr(&mut child);
    // Drain stdout so the server never blocks on it.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (child, addr)
}

/// What one client learned about one of its orders.
#[derive(Clone, Debug, Default)]
struct Known {
    symbol: u32,
    quantity: u64,
    accepted: bool,
    rejected: bool,
    filled_seen: u64,
    filled: bool,
    canceled: bool,
    cancel_sent: bool,
}

impl Known {
    fn acknowledged(&self) -> bool {
        self.accepted || self.filled_seen > 0 || self.filled || self.canceled
    }
}

struct Trader {
    client: Client,
    account: u64,
    next_id: u64,
    orders: BTreeMap<u64, Known>,
}

impl Trader {
    fn connect(addr: SocketAddr, account: u64, first_id: u64) -> Trader {
        let client = Client::login(addr, account, 0);
        client
            .stream
            .set_read_timeout(Some(Duration::from_millis(2)))
            .unwrap();
        Trader {
            client,
            account,
            next_id: first_id,
            orders: BTreeMap::new(),
        }
    }

    /// One step: a few new orders (some crossing) and a cancel or two.
    fn step(&mut self, rng: &mut Rng) {
        let mut news = Vec::new();
        for _ in 0..1 + rng.below(8) {
            self.next_id += 1;
            let symbol = rng.below(u64::from(SYMBOLS)) as u32;
            let side = if rng.below(2) == 0 {
                Side::Buy
            } else {
                Side::Sell
            };
            let price = 100 + rng.below(5) as i64 - 2;
            let quantity = 1 + rng.below(5);
            news.push(NewOrder::limit(self.next_id, symbol, side, price, quantity));
            self.orders.insert(
                self.next_id,
                Known {
                    symbol,
                    quantity,
                    ..Known::default()
                },
            );
        }
        self.client.send(&news);
        let live: Vec<(u64, u32)> = self
            .orders
            .iter()
            .filter(|(_, k)| k.accepted && !k.filled && !k.canceled && !k.cancel_sent)
            .map(|(id, k)| (*id, k.symbol))
            .collect();
        if !live.is_empty() && rng.below(3) == 0 {
            let (id, symbol) = live[rng.below(live.len() as u64) as usize];
            self.client.send(&[Cancel::new(id, symbol)]);
            if let Some(k) = self.orders.get_mut(&id) {
                k.cancel_sent = true;
            }
        }
        self.read();
    }

    fn read(&mut self) {
        self.client.pump();
        for m in std::mem::take(&mut self.client.inbox) {
            let Some(id) = m.coid() else { continue };
            let Some(k) = self.orders.get_mut(&id) else {
                continue;
            };
            match m {
                Msg::Accepted(_) => k.accepted = true,
                Msg::Rejected(r) if r.request_kind == Kind::NewOrder as u8 => k.rejected = true,
                Msg::Fill(f) => {
                    k.filled_seen += f.quantity.get();
                    k.filled |= f.leaves_quantity.get() == 0;
                }
                Msg::Canceled(_) => k.canceled = true,
                _ => {}
            }
        }
    }

    /// Reads until the dead server's socket is closed: what it sent before dying.
    fn read_to_end(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.client.closed && Instant::now() < deadline {
            self.read();
        }
    }
}

/// Checks every order of `trader` against the restarted server; returns
/// (acknowledged orders checked, resends refused).
fn check(addr: SocketAddr, trader: &Trader, rng: &mut Rng) -> (u64, u64) {
    let mut checker = Client::login(addr, trader.account, 0);
    let mut checked = 0;
    let queries: Vec<OrderQuery> = trader
        .orders
        .iter()
        .map(|(id, k)| OrderQuery::new(*id, k.symbol))
        .collect();
    let mut statuses = BTreeMap::new();
    for chunk in queries.chunks(500) {
        checker.send(chunk);
        let msgs = checker.collect_until(|m| matches!(m, Msg::Status(_)), chunk.len(), "statuses");
        for m in msgs {
            if let Msg::Status(s) = m {
                statuses.insert(s.client_order_id.get(), s);
            }
        }
    }
    for (id, k) in &trader.orders {
        let s = statuses[id];
        let state = OrderState::from_wire(s.state).expect("a valid state");
        let filled = s.filled_quantity.get();
        assert!(
            filled <= k.quantity,
            "order {id} filled {filled} of {}: executed twice?",
            k.quantity
        );
        if k.rejected {
            assert_eq!(
                state,
                OrderState::Unknown,
                "a rejected order {id} must not exist"
            );
            continue;
        }
        if !k.acknowledged() {
            // Never acknowledged: it may or may not have become durable.
            continue;
        }
        checked += 1;
        assert_ne!(
            state,
            OrderState::Unknown,
            "acknowledged order {id} ({k:?}) was lost"
        );
        assert!(
            filled >= k.filled_seen,
            "order {id}: {filled} filled now, {} acknowledged",
            k.filled_seen
        );
        if k.filled {
            assert_eq!(
                (state, filled),
                (OrderState::Filled, k.quantity),
                "order {id} was acknowledged filled"
            );
        }
        if k.canceled {
            assert_eq!(
                state,
                OrderState::Canceled,
                "order {id} was acknowledged canceled"
            );
        }
        if state == OrderState::Live {
            assert_eq!(
                s.leaves_quantity.get(),
                k.quantity - filled,
                "order {id} quantities"
            );
        }
    }
    // Resend some acknowledged orders under their old ids from a new
    // session: each must be refused, never executed a second time.
    let acked: Vec<(&u64, &Known)> = trader
        .orders
        .iter()
        .filter(|(_, k)| k.acknowledged())
        .collect();
    let mut resent = 0;
    let mut resends = Vec::new();
    for _ in 0..acked.len().min(20) {
        let (id, k) = acked[rng.below(acked.len() as u64) as usize];
        resends.push((*id, NewOrder::limit(*id, k.symbol, Side::Buy, 1, 1)));
    }
    resends.sort_by_key(|(id, _)| *id);
    resends.dedup_by_key(|(id, _)| *id);
    let mut resender = Client::login(addr, trader.account, 0);
    for (id, order) in resends {
        resender.send(&[order]);
        let m = resender.wait_for(|m| m.coid() == Some(id), "an answer to the resend");
        assert!(
            matches!(m, Msg::Rejected(r) if r.reason() == Ok(RejectReason::DuplicateClientOrderId)),
            "resent order {id} was not refused: {m:?}"
        );
        resent += 1;
    }
    (checked, resent)
}

#[test]
fn kill_dash_nine_loses_no_acknowledged_order() {
    let trials = env_or("CRASH_TRIALS", 3);
    let steps_max = env_or("CRASH_STEPS", 60);
    let seed = env_or("CRASH_SEED", 0x5eed);
    let mut rng = Rng(seed | 1);
    let dir = TempDir::new("crash");
    let journal = dir.join("journal");
    let (mut server, mut addr) = start_server(&journal);
    let mut total_checked = 0;
    let mut total_resent = 0;
    let mut total_sent = 0;
    for trial in 0..trials {
        // Fresh id ranges per trial: ids increase within each session.
        let base = (trial + 1) * 10_000_000;
        let mut traders = [
            Trader::connect(addr, 1, base),
            Trader::connect(addr, 2, base),
        ];
        let steps = 5 + rng.below(steps_max);
        for _ in 0..steps {
            for t in traders.iter_mut() {
                t.step(&mut rng);
            }
        }
        // The crash: SIGKILL while the last steps are in flight.
        server.kill().expect("kill -9");
        let _ = server.wait();
        for t in traders.iter_mut() {
            t.read_to_end();
            total_sent += t.orders.len() as u64;
        }
        let (s, a) = start_server(&journal);
        server = s;
        addr = a;
        for t in &traders {
            let (checked, resent) = check(addr, t, &mut rng);
            total_checked += checked;
            total_resent += resent;
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    println!(
        "crash test: {trials} kill -9 trials, {total_sent} orders sent, {total_checked} acknowledged orders checked, \
         {total_resent} resent orders refused"
    );
    assert!(total_checked > 0, "some orders must have been acknowledged");
}
