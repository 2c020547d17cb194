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

fn start_journaled(dir: &Path, segment_bytes: u64, snapshot_every: u64) -> Server {
    start_journaled_with(dir, segment_bytes, snapshot_every, true)
}

fn start_journaled_with(
    dir: &Path,
    segment_bytes: u64,
    snapshot_every: u64,
    fsync: bool,
) -> Server {
    let dir = dir.to_path_buf();
    start_with(&test_cpus()[..1], 1, 4, EngineKind::Match, move |cfg| {
        cfg.admin = Some("127.0.0.1:0".parse().unwrap());
        cfg.journal = Some(JournalSettings {
            config: JournalConfig {
                dir,
                segment_bytes,
                snapshot_every_records: snapshot_every,
            },
            fsync,
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
    let tmp = TempDir::new("restart");
    let dir = tmp.join("journal");
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
}

#[test]
fn a_second_server_on_the_same_journal_is_refused() {
    let tmp = TempDir::new("lock");
    let dir = tmp.join("journal");
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
}

/// A tmpfs of `size` mounted at `dir` for the life of the value.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts it, or says why it cannot (not root, no `mount`, a container
    /// without CAP_SYS_ADMIN).
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        if let Some(why) = testkit::missing(true, &["mount", "umount"]) {
            return Err(why);
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                testkit::output_text(&out).trim()
            ));
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_full_disk_stops_acknowledgements_and_they_resume_when_space_returns() {
    let tmp = TempDir::new("full-disk");
    let fs = match Tmpfs::mount(&tmp.join("tmpfs"), "4m") {
        Ok(fs) => fs,
        Err(why) => {
            testkit::skip!("cannot mount a small tmpfs to fill: {why}");
            return;
        }
    };
    let journal = fs.0.join("journal");
    let segment_bytes = 512 << 10;
    let server = start_journaled(&journal, segment_bytes, u64::MAX / 2);
    // Leave room for less than one more segment.
    let filler = fs.0.join("filler");
    let free = {
        let out = std::process::Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&fs.0)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    std::fs::write(&filler, vec![1u8; (free - segment_bytes / 2) as usize]).unwrap();

    let addr = server.local_addr();
    let mut c = Client::login(addr, 1, 0);
    let mut id = 0u64;
    let mut accepted = Vec::new();
    let mut not_durable = 0;
    // About 6,700 records fit a 512 KiB segment: go well past that.
    for _ in 0..40 {
        let orders: Vec<NewOrder> = (0..500)
            .map(|i| {
                id += 1;
                sell(id, (i % 4) as u32, 1000 + i as i64, 1)
            })
            .collect();
        c.send(&orders);
        let msgs = c.collect_until(
            |m| matches!(m, Msg::Accepted(_) | Msg::Rejected(_)),
            500,
            "answers",
        );
        for m in msgs {
            match m {
                Msg::Accepted(a) => accepted.push(a.client_order_id.get()),
                Msg::Rejected(r) => {
                    assert_eq!(r.reason(), Ok(RejectReason::NotDurable), "{r:?}");
                    not_durable += 1;
                }
                _ => {}
            }
        }
        if not_durable > 0 {
            break;
        }
    }
    assert!(not_durable > 0, "the journal ran out of space and said so");
    // Load balancers see it: /ready is 503 and says why.
    let admin = server.admin_addr().unwrap();
    // (Published within a loop iteration or two.)
    let (ready, why) = (0..100)
        .map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            get(admin, "/ready")
        })
        .find(|(ready, _)| *ready == 503)
        .unwrap_or_else(|| get(admin, "/ready"));
    assert_eq!(ready, 503, "{why}");
    assert!(why.contains("journal cannot write"), "{why}");
    let durable_before = accepted.len();
    assert!(durable_before > 1000);

    // Space comes back: within a few seconds orders are acknowledged again.
    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        id += 1;
        c.send(&[sell(id, 0, 5000, 1)]);
        match c.wait_for(|m| m.coid() == Some(id), "an answer") {
            Msg::Accepted(_) => {
                accepted.push(id);
                break;
            }
            Msg::Rejected(r) => assert_eq!(r.reason(), Ok(RejectReason::NotDurable)),
            other => panic!("{other:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "acknowledgements did not resume"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let ready = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        get(admin, "/ready").0 == 200
    });
    assert!(ready, "/ready is 200 again once writes succeed");
    let fin = server.stop();
    assert!(fin.total.journal_rejects > 0);

    // Everything acknowledged is durable; nothing rejected came back.
    let server = start_journaled(&journal, segment_bytes, u64::MAX / 2);
    let mut c = Client::login(server.local_addr(), 1, 0);
    let last = *accepted.last().unwrap();
    for (coid, symbol) in [
        (accepted[0], 0),
        (
            accepted[durable_before - 1],
            ((accepted[durable_before - 1] - 1) % 500 % 4) as u32,
        ),
        (last, 0),
    ] {
        let s = status(&mut c, coid, symbol);
        assert_eq!(
            s.state,
            OrderState::Live.to_wire(),
            "acknowledged order {coid}"
        );
    }
    server.stop();
    drop(fs);
}

#[test]
fn fsync_never_still_journals_before_acknowledging() {
    let tmp = TempDir::new("fsync-never");
    let dir = tmp.join("journal");
    let server = start_journaled_with(&dir, 1 << 20, 1_000_000, false);
    let mut c = Client::login(server.local_addr(), 1, 0);
    c.send(&[sell(1, 0, 10, 3), sell(2, 1, 11, 4)]);
    c.collect_until(|m| matches!(m, Msg::Accepted(_)), 2, "accepts");
    let fin = server.stop();
    assert!(fin.total.journal_writes > 0, "written, without fdatasync");
    let server = start_journaled_with(&dir, 1 << 20, 1_000_000, false);
    let mut c = Client::login(server.local_addr(), 1, 0);
    let s = status(&mut c, 2, 1);
    assert_eq!(
        (s.state, s.leaves_quantity.get()),
        (OrderState::Live.to_wire(), 4)
    );
    server.stop();
}
