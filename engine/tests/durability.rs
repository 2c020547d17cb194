//! Durability through the real server: acknowledged orders survive a
//! restart, status queries reconcile, reused ids never execute twice, and a
//! full disk stops acknowledgements without losing what is durable.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use engine::journal::JournalConfig;
use engine::server::durable::JournalSettings;
use engine::server::{EngineKind, Server};
use wire::*;

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("turbo-dex-{tag}-{}-{nanos}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn start_journaled(dir: &Path, segment_bytes: u64, snapshot_every: u64) -> Server {
    let dir = dir.to_path_buf();
    start_with(&test_cpus()[..1], 1, 4, EngineKind::Match, move |cfg| {
        cfg.journal = Some(JournalSettings {
            config: JournalConfig {
                dir,
                segment_bytes,
                snapshot_every_records: snapshot_every,
            },
            fsync: true,
        });
    })
}

fn status(c: &mut Client, coid: u64, symbol: u32) -> OrderStatus {
    c.send(&[OrderQuery::new(coid, symbol)]);
    let Msg::Status(s) = c.wait_for(
        |m| matches!(m, Msg::Status(s) if s.client_order_id.get() == coid),
        "status",
    ) else {
        unreachable!()
    };
    s
}

#[test]
fn acknowledged_orders_survive_a_restart_and_reused_ids_are_refused() {
    let dir = temp_dir("restart");
    // Small segments and snapshots so the run crosses both.
    let server = start_journaled(&dir, 64 << 10, 500);
    let addr = server.local_addr();
    let mut a = Client::login(addr, 1, 0);
    let mut b = Client::login(addr, 2, 0);
    // Enough traffic to fill several segments and trigger snapshots.
    let mut id = 1000;
    for round in 0..20u64 {
        let orders: Vec<NewOrder> = (0..100)
            .map(|i| {
                id += 1;
                sell(id, (i % 4) as u32, 1000 + (round * 100 + i) as i64, 1)
            })
            .collect();
        a.send(&orders);
        a.collect_until(|m| matches!(m, Msg::Accepted(_)), 100, "accepts");
    }
    // Ids increase within a session: the three orders to follow are 5001..5003.
    a.send(&[
        sell(5001, 0, 50, 10),
        sell(5002, 1, 60, 10),
        sell(5003, 2, 70, 10),
    ]);
    a.collect_until(|m| matches!(m, Msg::Accepted(_)), 3, "accepts");
    b.send(&[buy(1, 0, 50, 10), buy(2, 1, 60, 4)]);
    b.collect_until(|m| matches!(m, Msg::Fill(_)), 2, "fills");
    a.send(&[Cancel::new(5003, 2)]);
    a.wait_for(|m| matches!(m, Msg::Canceled(_)), "canceled");
    let fin = server.stop();
    assert!(fin.total.journal_writes > 0);
    assert!(fin.total.snapshots > 0, "snapshots were taken");
    let shard_dir = dir.join("shard-0");
    let files: Vec<String> = std::fs::read_dir(&shard_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.iter().any(|f| f.contains("snapshot")), "{files:?}");

    // Restart on the same journal: the books are back.
    let server = start_journaled(&dir, 64 << 10, 500);
    let addr = server.local_addr();
    let mut a = Client::login(addr, 1, 0);
    let s1 = status(&mut a, 5001, 0);
    assert_eq!(
        (s1.state, s1.filled_quantity.get()),
        (OrderState::Filled.to_wire(), 10)
    );
    let s2 = status(&mut a, 5002, 1);
    assert_eq!(
        (s2.state, s2.filled_quantity.get(), s2.leaves_quantity.get()),
        (OrderState::Live.to_wire(), 4, 6)
    );
    let s3 = status(&mut a, 5003, 2);
    assert_eq!(s3.state, OrderState::Canceled.to_wire());
    let s_early = status(&mut a, 1001, 0);
    assert_eq!(s_early.state, OrderState::Live.to_wire());
    // A client that resends an order it did not see acknowledged: refused, with the status.
    a.send(&[sell(5001, 0, 50, 10)]);
    let Msg::Rejected(r) = a.wait_for(|m| matches!(m, Msg::Rejected(_)), "duplicate reject") else {
        unreachable!()
    };
    assert_eq!(r.reason(), Ok(RejectReason::DuplicateClientOrderId));
    // The live order trades on after the restart, with the same order id.
    let mut b = Client::login(addr, 2, 0);
    b.send(&[buy(10, 1, 60, 6)]);
    let Msg::Fill(f) = b.wait_for(|m| matches!(m, Msg::Fill(_)), "fill after restart") else {
        unreachable!()
    };
    assert_eq!((f.price.get(), f.quantity.get()), (60, 6));
    let fin = server.stop();
    assert_eq!(fin.total.trades, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_server_on_the_same_journal_is_refused() {
    let dir = temp_dir("lock");
    let first = start_journaled(&dir, 1 << 20, 1000);
    let names = vec!["S0".to_string()];
    let mut cfg = engine::server::ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        test_cpus()[..1].to_vec(),
        names,
    );
    cfg.journal = Some(JournalSettings {
        config: JournalConfig::new(&dir),
        fsync: true,
    });
    let err = Server::start(cfg).err().expect("refused");
    assert!(
        err.to_string().contains("in use by another turbo-dex"),
        "{err}"
    );
    first.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
