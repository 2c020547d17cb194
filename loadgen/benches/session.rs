//! The generator's own cost per request: order generation, encoding into
//! the send buffer, decoding the reports and the bookkeeping (order table,
//! live-order set, latency histogram). The server's work (answering) runs
//! outside the timed part: each iteration times only `write_batch` and
//! `on_bytes`.
//!
//! Two answerers: the null engine (accepts everything: the scenario of the
//! 20M orders/s goal) and the matching core with two sessions of different
//! accounts trading with each other (fills, cancels, replaces, rejects).
//!
//! Times are this thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall
//! time: on a shared 2-core machine other processes' work would otherwise
//! show up as ours.
//!
//! Run: `cargo bench -p loadgen --bench session`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::book::{Command, Matcher, NullShard, Op, Report, SessionId, Shard, ShardConfig};
use loadgen::flow::Mix;
use loadgen::session::{Session, SessionConfig, Window};
use loadgen::verify::TradeLedger;
use wire::{Decoder, Frame, FrameWriter};

const BATCH: usize = 2000;

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
const SYMBOLS: u32 = 16;

fn session(connection: u8, mix: Mix) -> Session {
    Session::new(SessionConfig {
        worker: 0,
        connection,
        symbols: (0..SYMBOLS).collect(),
        mix,
        seed: 1 + u64::from(connection),
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

/// Applies every request in `input` to the engine and encodes the reports per session.
fn answer<M: Matcher>(
    engine: &mut M,
    sid: SessionId,
    input: &[u8],
    reports: &mut Vec<(SessionId, Report)>,
    replies: &mut [Vec<u8>; 2],
) {
    reports.clear();
    for frame in Decoder::default().frames(input) {
        let mut apply = |op| {
            engine.process(
                &Command {
                    session: sid,
                    account: sid.get(),
                    op,
                },
                0,
                reports,
            )
        };
        match frame {
            Frame::NewOrder(list) => list.iter().for_each(|o| apply(Op::New(*o))),
            Frame::Cancel(list) => list.iter().for_each(|c| apply(Op::Cancel(*c))),
            Frame::Replace(list) => list.iter().for_each(|r| apply(Op::Replace(*r))),
            _ => {}
        }
    }
    let [a, b] = replies;
    let mut wa = FrameWriter::new(a);
    let mut wb = FrameWriter::new(b);
    for (to, r) in reports.iter() {
        let w = if to.get() == 0 { &mut wa } else { &mut wb };
        match r {
            Report::Accepted(m) => w.push(m),
            Report::Rejected(m) => w.push(m),
            Report::Fill(m) => w.push(m),
            Report::Canceled(m) => w.push(m),
            Report::Replaced(m) => w.push(m),
            Report::Status(m) => w.push(m),
        }
    }
}

/// Which part of the generator's work a benchmark times.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Generating and encoding requests (`write_batch`).
    Write,
    /// Decoding reports and the bookkeeping (`on_bytes`).
    Read,
    /// Both: the generator's whole cost per request.
    Both,
}

/// Times `iters` rounds of: both sessions write a batch and read their answers.
fn rounds<M: Matcher>(engine: &mut M, mix: Mix, phase: Phase, iters: u64) -> Duration {
    let mut sessions = [session(0, mix), session(1, mix)];
    let mut ledger = TradeLedger::new();
    let mut out = Vec::with_capacity(4 * BATCH * 32);
    let mut replies = [Vec::with_capacity(1 << 20), Vec::with_capacity(1 << 20)];
    let mut reports = Vec::with_capacity(8 * BATCH);
    let mut timed = Duration::ZERO;
    let mut now = 1u64;
    for _ in 0..iters {
        for sid in 0..2usize {
            out.clear();
            let t0 = thread_cpu();
            let n = sessions[sid].write_batch(&mut out, BATCH, now, || now);
            if phase != Phase::Read {
                timed += thread_cpu().saturating_sub(t0);
            }
            black_box(n);
            answer(
                engine,
                SessionId::from_raw(sid as u64),
                &out,
                &mut reports,
                &mut replies,
            );
            now += 1_000;
            for (s, reply) in sessions.iter_mut().zip(replies.iter_mut()) {
                let t0 = thread_cpu();
                let used = s.on_bytes(reply, now, &mut ledger);
                if phase != Phase::Write {
                    timed += thread_cpu().saturating_sub(t0);
                }
                let _ = black_box(used);
                reply.clear();
            }
        }
    }
    timed
}

fn per_request(c: &mut Criterion) {
    let mut group = c.benchmark_group("generator");
    // Two sessions write one batch each per round.
    group.throughput(Throughput::Elements(2 * BATCH as u64));
    for mix in [Mix::Insert, Mix::Realistic, Mix::Match] {
        for (phase, name) in [
            (Phase::Both, "all"),
            (Phase::Write, "write"),
            (Phase::Read, "read"),
        ] {
            group.bench_function(format!("null-engine/{}/{name}", mix.as_str()), |b| {
                b.iter_custom(|iters| rounds(&mut NullShard::new(0), mix, phase, iters))
            });
        }
        group.bench_function(format!("matching-engine/{}/all", mix.as_str()), |b| {
            b.iter_custom(|iters| {
                let mut shard = Shard::new(
                    0,
                    1,
                    SYMBOLS,
                    ShardConfig {
                        orders_max: 1 << 18,
                        ..ShardConfig::default()
                    },
                );
                rounds(&mut shard, mix, Phase::Both, iters)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, per_request);
criterion_main!(benches);
