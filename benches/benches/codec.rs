//! Codec throughput: decoding and encoding batches of 2,000 new orders, and
//! encoding a mixed stream of execution reports.
//!
//! Run: `cargo bench -p benches --bench codec`. Every group reports
//! throughput in messages (criterion's `elem/s`); ns per message is
//! 1e9 / that rate, or the time per iteration divided by the batch size.
//!
//! What each case does, so the numbers mean something:
//! - `decode/view_only`: header checks and the cast to `&[NewOrder]`, nothing
//!   read from the messages (the cost a router pays before touching orders).
//! - `decode/validate_and_sum`: the same plus, for every order, the enum
//!   checks of `NewOrder::fields` and a sum of quantities (what the server
//!   does to every message it receives).
//! - `encode/frame_writer_push`: 2,000 `FrameWriter::push` calls into a
//!   buffer with capacity reserved (the server's per-report path).
//! - `encode/frame_writer_push_all`: the same 2,000 orders as one slice
//!   (one copy per frame).
//! - `encode/encode_frame_slice` and `encode/append_frame_slice`: one frame
//!   from a ready slice (the load generator's path).
//! - `reports/frame_writer_mixed`: a stream of accepted, fill, canceled and
//!   replaced reports in runs of 1 to 16 of one kind, through one writer, as
//!   a connection's send buffer sees them; `reports/frame_buf_mixed` is the
//!   same stream through the server's owned `FrameBuf`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wire::{
    Accepted, CancelReason, Canceled, DEFAULT_MAX_FRAME_BYTES, Decoded, Decoder, Fill, Frame,
    FrameBuf, FrameWriter, HEADER_BYTES, Liquidity, Message, NewOrder, OrderType, Replaced,
    SelfTradePrevention, Side, TimeInForce, append_frame, encode_frame,
};

/// Orders per client batch, the load generator's default `--batch`.
const BATCH_ORDERS: usize = 2_000;
/// Reports in the mixed stream.
const REPORTS: usize = 2_000;

/// A small deterministic generator so runs are comparable without a rand dependency.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

fn orders() -> Vec<NewOrder> {
    let mut rng = Lcg(7);
    (0..BATCH_ORDERS as u64)
        .map(|id| {
            let side = if rng.next().is_multiple_of(2) {
                Side::Buy
            } else {
                Side::Sell
            };
            let tif = match rng.next() % 3 {
                0 => TimeInForce::Gtc,
                1 => TimeInForce::Ioc,
                _ => TimeInForce::Fok,
            };
            NewOrder::new(
                id + 1,
                (rng.next() % 64) as u32,
                side,
                OrderType::Limit,
                tif,
                false,
                SelfTradePrevention::CancelIncoming,
                10_000 + (rng.next() % 100) as i64,
                1 + rng.next() % 100,
            )
        })
        .collect()
}

fn bench_decode(c: &mut Criterion) {
    let orders = orders();
    let mut buf = Vec::new();
    append_frame(&orders, &mut buf).expect("2,000 orders fit one frame");
    let decoder = Decoder::for_server(DEFAULT_MAX_FRAME_BYTES);

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(BATCH_ORDERS as u64));
    g.bench_function("view_only", |b| {
        b.iter(|| match decoder.decode(black_box(&buf)) {
            Ok(Decoded::Frame(Frame::NewOrder(view), used)) => (view.len(), used),
            _ => unreachable!("the buffer holds one new-order frame"),
        })
    });
    g.bench_function("validate_and_sum", |b| {
        b.iter(|| {
            let Ok(Decoded::Frame(Frame::NewOrder(view), _)) = decoder.decode(black_box(&buf))
            else {
                unreachable!("the buffer holds one new-order frame")
            };
            let mut quantity = 0u64;
            let mut invalid = 0u32;
            for o in view {
                match o.fields() {
                    Ok(_) => quantity = quantity.wrapping_add(o.quantity.get()),
                    Err(_) => invalid += 1,
                }
            }
            (quantity, invalid)
        })
    });
    g.finish();
}

fn bench_encode(c: &mut Criterion) {
    let orders = orders();
    let frame_bytes = HEADER_BYTES + BATCH_ORDERS * NewOrder::BYTES;

    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(BATCH_ORDERS as u64));
    let mut buf = Vec::with_capacity(frame_bytes);
    g.bench_function("frame_writer_push", |b| {
        b.iter(|| {
            buf.clear();
            let mut w = FrameWriter::new(&mut buf);
            for o in black_box(&orders) {
                w.push(o);
            }
            w.finish();
            black_box(buf.len())
        })
    });
    g.bench_function("frame_writer_push_all", |b| {
        b.iter(|| {
            buf.clear();
            let mut w = FrameWriter::new(&mut buf);
            w.push_all(black_box(&orders));
            w.finish();
            black_box(buf.len())
        })
    });
    let mut out = vec![0u8; frame_bytes];
    g.bench_function("encode_frame_slice", |b| {
        b.iter(|| encode_frame(black_box(&orders), black_box(&mut out)))
    });
    let mut buf = Vec::with_capacity(frame_bytes);
    g.bench_function("append_frame_slice", |b| {
        b.iter(|| {
            buf.clear();
            append_frame(black_box(&orders), &mut buf)
        })
    });
    g.finish();
}

#[derive(Clone, Copy)]
enum Report {
    Accepted(Accepted),
    Fill(Fill),
    Canceled(Canceled),
    Replaced(Replaced),
}

fn reports() -> Vec<Report> {
    let mut rng = Lcg(11);
    let mut out = Vec::with_capacity(REPORTS);
    let mut id = 0u64;
    while out.len() < REPORTS {
        let run = 1 + (rng.next() % 16) as usize;
        let kind = rng.next() % 4;
        for _ in 0..run.min(REPORTS - out.len()) {
            id += 1;
            out.push(match kind {
                0 => Report::Accepted(Accepted {
                    client_order_id: id.into(),
                    order_id: (id << 8).into(),
                    timestamp_ns: (id * 1_000).into(),
                    symbol: 3.into(),
                    side: Side::Buy.to_wire(),
                    order_type: OrderType::Limit.to_wire(),
                    time_in_force: TimeInForce::Gtc.to_wire(),
                    reserved: 0,
                }),
                1 => Report::Fill(Fill::new(
                    id,
                    id / 2,
                    3,
                    Side::Sell,
                    Liquidity::Maker,
                    10_000,
                    5,
                    id % 3,
                )),
                2 => Report::Canceled(Canceled::new(id, 3, CancelReason::Requested, 7)),
                _ => Report::Replaced(Replaced::new(id, 3, true, 10_001, 4)),
            });
        }
    }
    out
}

fn bench_reports(c: &mut Criterion) {
    let reports = reports();
    let mut g = c.benchmark_group("reports");
    g.throughput(Throughput::Elements(REPORTS as u64));
    let mut buf = Vec::with_capacity(REPORTS * (HEADER_BYTES + 48));
    g.bench_function("frame_writer_mixed", |b| {
        b.iter(|| {
            buf.clear();
            let mut w = FrameWriter::new(&mut buf);
            for r in black_box(&reports) {
                match r {
                    Report::Accepted(m) => w.push(m),
                    Report::Fill(m) => w.push(m),
                    Report::Canceled(m) => w.push(m),
                    Report::Replaced(m) => w.push(m),
                }
            }
            w.finish();
            black_box(buf.len())
        })
    });
    let mut fb = FrameBuf::new(
        REPORTS * (HEADER_BYTES + 48),
        DEFAULT_MAX_FRAME_BYTES,
        u16::MAX,
    );
    g.bench_function("frame_buf_mixed", |b| {
        b.iter(|| {
            fb.clear();
            for r in black_box(&reports) {
                match r {
                    Report::Accepted(m) => fb.push(m),
                    Report::Fill(m) => fb.push(m),
                    Report::Canceled(m) => fb.push(m),
                    Report::Replaced(m) => fb.push(m),
                }
            }
            black_box(fb.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench_decode, bench_encode, bench_reports);
criterion_main!(benches);
