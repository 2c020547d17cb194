//! "No allocation per order in steady state", checked: a counting global
//! allocator watches the generator's own calls (`write_batch`, `on_bytes`)
//! while two sessions trade against the matching core and the null
//! engine, after a warm-up that lets every buffer reach its working size.

use engine::book::{Command, Matcher, NullShard, Op, Report, SessionId, Shard, ShardConfig};
use loadgen::flow::Mix;
use loadgen::session::{Session, SessionConfig, Window};
use loadgen::verify::TradeLedger;
use testkit::{CountingAllocator, count_allocations};
use wire::{Decoder, Frame, FrameWriter};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const BATCH: usize = 500;

fn session(connection: u8, mix: Mix) -> Session {
    Session::new(SessionConfig {
        worker: 0,
        connection,
        symbols: (0..8).collect(),
        mix,
        seed: 5 + u64::from(connection),
        outstanding_max: 4 * BATCH,
        live_max: 4 * BATCH + 2048,
        verify: false,
        max_frame_bytes: wire::DEFAULT_MAX_FRAME_BYTES,
        window: Window {
            from_ns: 0,
            until_ns: u64::MAX,
        },
    })
}

/// Rounds of both sessions trading; returns the allocations made inside
/// the sessions' calls during the last `measured` rounds.
fn allocations<M: Matcher>(engine: &mut M, mix: Mix, warmup: usize, measured: usize) -> u64 {
    let mut sessions = [session(0, mix), session(1, mix)];
    let mut ledger = TradeLedger::new();
    let mut out = Vec::with_capacity(1 << 20);
    let mut replies = [Vec::with_capacity(1 << 22), Vec::with_capacity(1 << 22)];
    let mut reports: Vec<(SessionId, Report)> = Vec::with_capacity(1 << 16);
    let mut total = 0;
    for round in 0..warmup + measured {
        for sid in 0..2usize {
            out.clear();
            let (_, n) = count_allocations(|| sessions[sid].write_batch(&mut out, BATCH, 1, || 1));
            reports.clear();
            for frame in Decoder::default().frames(&out) {
                let mut apply = |op| {
                    engine.process(
                        &Command {
                            session: SessionId::from_raw(sid as u64),
                            account: sid as u64 + 1,
                            op,
                        },
                        0,
                        &mut reports,
                    )
                };
                match frame {
                    Frame::NewOrder(list) => list.iter().for_each(|o| apply(Op::New(*o))),
                    Frame::Cancel(list) => list.iter().for_each(|c| apply(Op::Cancel(*c))),
                    Frame::Replace(list) => list.iter().for_each(|r| apply(Op::Replace(*r))),
                    _ => {}
                }
            }
            for (to, report) in &reports {
                let mut w = FrameWriter::new(&mut replies[to.get() as usize]);
                match report {
                    Report::Accepted(m) => w.push(m),
                    Report::Rejected(m) => w.push(m),
                    Report::Fill(m) => w.push(m),
                    Report::Canceled(m) => w.push(m),
                    Report::Replaced(m) => w.push(m),
                    Report::Status(m) => w.push(m),
                }
            }
            let mut m = 0;
            for (s, reply) in sessions.iter_mut().zip(replies.iter_mut()) {
                let (used, k) = count_allocations(|| s.on_bytes(reply, 2, &mut ledger));
                assert_eq!(used, Ok(reply.len()));
                reply.clear();
                m += k;
            }
            if round >= warmup {
                total += n + m;
            }
        }
    }
    total
}

#[test]
fn the_generator_allocates_nothing_per_order_in_steady_state() {
    // The counter counts: one allocation is seen as one.
    let (v, n) = count_allocations(|| std::hint::black_box(vec![0u8; 100]));
    assert_eq!((v.len(), n), (100, 1));
    for mix in [Mix::Realistic, Mix::Insert, Mix::Match] {
        let mut shard = Shard::new(
            0,
            1,
            8,
            ShardConfig {
                orders_max: 1 << 16,
                ..ShardConfig::default()
            },
        );
        assert_eq!(
            allocations(&mut shard, mix, 100, 100),
            0,
            "{mix:?} against the matching core"
        );
        assert_eq!(
            allocations(&mut NullShard::new(0), mix, 100, 100),
            0,
            "{mix:?} against the null engine"
        );
    }
}
