//! Round trips: whatever is encoded, by whichever encoder, decodes to the
//! same messages, alone, in a stream of mixed kinds, and through a stream
//! cut into TCP-sized reads at any byte.

mod common;

use common::invariants::{check_stream, frame_bytes};
use common::{Batch, Encoder, any_batch, any_encoder};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use wire::{
    Decoded, Decoder, Direction, EncodeError, Frame, FrameBuf, FrameWriter, HEADER_BYTES,
    Heartbeat, Hello, Kind, MAX_FRAME_BYTES_LIMIT, MAX_MESSAGES_PER_FRAME, MdDepth, MdStatus,
    MdStatusEvent, MdTopOfBook, MdTrade, NewOrder, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN, Side,
    TopLevel, append_frame, encode_frame,
};

/// The decoders a batch of `kind` must decode with: the two-way one and the
/// one for its receiving side.
fn receivers(kind: Kind) -> [Decoder; 2] {
    let max = wire::DEFAULT_MAX_FRAME_BYTES;
    let side = match kind.direction() {
        Direction::ToServer => Decoder::for_server(max),
        Direction::ToClient => Decoder::for_client(max),
    };
    [Decoder::default(), side]
}

fn check_round_trip(batch: &Batch, encoder: Encoder) {
    let mut buf = vec![0xEE; 3]; // a prefix, so frames start at an offset
    encoder.append(batch, &mut buf);
    let bytes = &buf[3..];
    if batch.is_empty() && !encoder.frames_empty_batches() {
        assert!(
            bytes.is_empty(),
            "{encoder:?} wrote a frame for no messages"
        );
        return;
    }
    for decoder in receivers(batch.kind()) {
        let Ok(Decoded::Frame(frame, used)) = decoder.decode(bytes) else {
            panic!("{encoder:?}: {:?}", decoder.decode(bytes));
        };
        assert_eq!(used, bytes.len(), "{encoder:?}: one frame, all of it");
        assert_eq!(frame, batch.as_frame(), "{encoder:?}");
        assert_eq!(frame.kind(), batch.kind());
        assert_eq!(frame.len(), batch.len());
        // A view into the buffer, not a copy.
        assert_eq!(
            frame_bytes(&frame).as_ptr() as usize,
            bytes.as_ptr() as usize + HEADER_BYTES
        );
    }
    // The other side's decoder refuses it as an unknown kind.
    let other = match batch.kind().direction() {
        Direction::ToServer => Decoder::for_client(wire::DEFAULT_MAX_FRAME_BYTES),
        Direction::ToClient => Decoder::for_server(wire::DEFAULT_MAX_FRAME_BYTES),
    };
    assert_eq!(
        other.decode(bytes),
        Err(wire::DecodeError::UnknownKind {
            kind: batch.kind() as u8
        })
    );
}

/// Every kind in `Kind::ALL`, each with its own run of cases, so no kind is
/// left to chance.
#[test]
fn every_kind_round_trips_through_every_encoder() {
    assert_eq!(Kind::ALL.len(), 30);
    for &kind in Kind::ALL {
        let mut runner = TestRunner::new(Config {
            cases: 48,
            ..Config::default()
        });
        runner
            .run(
                &(Batch::strategy(kind, 40), any_encoder()),
                |(batch, encoder)| {
                    check_round_trip(&batch, encoder);
                    Ok(())
                },
            )
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
    }
}

#[test]
fn empty_batches_and_single_hellos_for_every_encoder() {
    for &kind in Kind::ALL {
        let mut runner = TestRunner::deterministic();
        let batch = Batch::strategy(kind, 0)
            .new_tree(&mut runner)
            .expect("a strategy for every kind")
            .current();
        assert_eq!(batch.len(), usize::from(kind == Kind::Hello));
        for encoder in Encoder::ALL {
            check_round_trip(&batch, encoder);
        }
    }
}

proptest! {
    #![proptest_config(Config { cases: 128, ..Config::default() })]

    /// Frames of mixed kinds, back to back in one buffer, come out in order
    /// through `Decoder::frames`, and `consumed()` is the exact byte count;
    /// a trailing partial frame is left unconsumed.
    #[test]
    fn mixed_frames_decode_in_order(
        batches in prop::collection::vec((any_batch(12), any_encoder()), 0..10),
        tail in any_batch(4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut buf = Vec::new();
        let mut expected = Vec::new();
        for (batch, encoder) in &batches {
            encoder.append(batch, &mut buf);
            if !batch.is_empty() || encoder.frames_empty_batches() {
                expected.push(batch.clone());
            }
        }
        let whole = buf.len();
        let mut tail_bytes = Vec::new();
        tail.append(&mut tail_bytes).unwrap();
        // Any strict prefix of one more frame.
        buf.extend_from_slice(&tail_bytes[..cut.index(tail_bytes.len())]);

        let decoder = Decoder::default();
        let mut frames = decoder.frames(&buf);
        let got: Vec<Batch> = frames.by_ref().map(|f| Batch::from_frame(&f)).collect();
        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(frames.consumed(), whole);
        prop_assert_eq!(frames.error(), None);
        let outcome = check_stream(&decoder, None, &buf);
        prop_assert_eq!(outcome.frames, expected.len());
        prop_assert_eq!(outcome.consumed, whole);
    }

    /// A stream cut at every byte boundary into two reads decodes to the same
    /// frames when the reader keeps the unconsumed tail, as a TCP reader must.
    #[test]
    fn a_stream_split_at_every_byte_decodes_the_same(
        batches in prop::collection::vec((any_batch(3), any_encoder()), 1..5),
    ) {
        let mut buf = Vec::new();
        for (batch, encoder) in &batches {
            encoder.append(batch, &mut buf);
        }
        let decoder = Decoder::default();
        let whole: Vec<Batch> = decoder.frames(&buf).map(|f| Batch::from_frame(&f)).collect();
        for cut in 0..=buf.len() {
            let got = read_in_chunks(&decoder, &buf, &[cut, buf.len() - cut]);
            prop_assert_eq!(&got, &whole, "cut at {}", cut);
        }
    }

    /// The same with many reads of random sizes (including empty reads).
    #[test]
    fn a_stream_in_random_reads_decodes_the_same(
        batches in prop::collection::vec((any_batch(20), any_encoder()), 1..8),
        reads in prop::collection::vec(0usize..200, 1..64),
    ) {
        let mut buf = Vec::new();
        for (batch, encoder) in &batches {
            encoder.append(batch, &mut buf);
        }
        let mut sizes = Vec::new();
        let mut left = buf.len();
        for r in reads {
            let n = r.min(left);
            sizes.push(n);
            left -= n;
        }
        sizes.push(left);
        let decoder = Decoder::default();
        let whole: Vec<Batch> = decoder.frames(&buf).map(|f| Batch::from_frame(&f)).collect();
        prop_assert_eq!(read_in_chunks(&decoder, &buf, &sizes), whole);
    }

    /// FrameWriter and FrameBuf keep every frame within the configured
    /// maximum size and message count, and lose or reorder nothing.
    #[test]
    fn writers_split_at_the_limits(
        batch in any_batch(300),
        max_frame_bytes in 0u32..4_000,
        max_count in 0u16..40,
    ) {
        let decoder = Decoder::new(MAX_FRAME_BYTES_LIMIT);
        let limit = (max_frame_bytes.max(HEADER_BYTES as u32 + 64)) as usize;

        let mut out = Vec::new();
        let mut w = FrameWriter::with_max_frame(&mut out, max_frame_bytes);
        batch.push_all(&mut w);
        let mut one_by_one = Vec::new();
        let mut w = FrameWriter::with_max_frame(&mut one_by_one, max_frame_bytes);
        batch.push_each(&mut w);
        prop_assert_eq!(&out, &one_by_one, "push_all and push write the same bytes");
        let sizes = frame_sizes(&decoder, &out, limit, usize::MAX)?;
        prop_assert_eq!(sizes.iter().sum::<usize>(), batch.len());
        let per_frame = (limit - HEADER_BYTES) / batch.kind().message_bytes();
        let per_frame = if batch.kind() == Kind::Hello { 1 } else { per_frame };
        // Every frame but the last is full.
        for &n in sizes.iter().rev().skip(1) {
            prop_assert_eq!(n, per_frame);
        }
        let parts = decoder.frames(&out).map(|f| Batch::from_frame(&f)).collect::<Vec<_>>();
        prop_assert_eq!(parts, batch.split(&sizes));

        let mut b = FrameBuf::new(0, max_frame_bytes, max_count);
        batch.buf_push_each(&mut b);
        let mut b_all = FrameBuf::new(0, max_frame_bytes, max_count);
        batch.buf_push_all(&mut b_all);
        prop_assert_eq!(b.as_bytes(), b_all.as_bytes());
        let count_max = usize::from(max_count.max(1));
        let sizes = frame_sizes(&decoder, b.as_bytes(), limit, count_max)?;
        prop_assert_eq!(sizes.iter().sum::<usize>(), batch.len());
        let parts = decoder.frames(b.as_bytes()).map(|f| Batch::from_frame(&f)).collect::<Vec<_>>();
        prop_assert_eq!(parts, batch.split(&sizes));
    }
}

proptest! {
    #![proptest_config(Config { cases: 128, ..Config::default() })]

    /// A session's version is byte 5 of its frame headers and nothing
    /// else: `FrameWriter::with_version` and `FrameBuf::set_version` write
    /// the same frames as the default writers (which write
    /// `PROTOCOL_VERSION`) but for that byte, and they decode to the same
    /// messages.
    #[test]
    fn frames_of_either_version_carry_the_same_messages(
        batches in prop::collection::vec(any_batch(12), 1..6),
        version in PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION,
    ) {
        let mut default = Vec::new();
        let mut w = FrameWriter::new(&mut default);
        let mut versioned = Vec::new();
        let mut v = FrameWriter::new(&mut versioned).with_version(version);
        let mut b = FrameBuf::default();
        prop_assert_eq!(b.version(), PROTOCOL_VERSION);
        b.set_version(version);
        for batch in &batches {
            batch.push_all(&mut w);
            w.finish();
            batch.push_all(&mut v);
            v.finish();
            batch.buf_push_all(&mut b);
            b.finish();
        }
        prop_assert_eq!(b.as_bytes(), &versioned[..]);
        prop_assert_eq!(default.len(), versioned.len());
        let decoder = Decoder::default();
        let mut at = 0;
        for frame in decoder.frames(&versioned) {
            prop_assert_eq!(default[at + 5], PROTOCOL_VERSION);
            prop_assert_eq!(versioned[at + 5], version);
            let next = at + HEADER_BYTES + frame.len() * frame.kind().message_bytes();
            prop_assert_eq!(&default[at..at + 5], &versioned[at..at + 5]);
            prop_assert_eq!(&default[at + 6..next], &versioned[at + 6..next]);
            at = next;
        }
        prop_assert_eq!(at, versioned.len());
        let a: Vec<Batch> = decoder.frames(&default).map(|f| Batch::from_frame(&f)).collect();
        let c: Vec<Batch> = decoder.frames(&versioned).map(|f| Batch::from_frame(&f)).collect();
        prop_assert_eq!(a, c);
    }
}

/// The answer to a depth Subscribe as a server writes it (PROTOCOL.md
/// §8.9): one frame per run of one kind, many symbols in one frame, and a
/// client reads back what was written.
#[test]
fn market_data_runs_coalesce_and_read_back() {
    let ns = 1_764_633_600_000_000_000;
    let subscribed = [
        MdStatus::new(7, MdStatusEvent::Subscribed, 41, ns, 0, 2),
        MdStatus::new(8, MdStatusEvent::Subscribed, 0, ns, 0, 0),
    ];
    let rows = [
        MdDepth::new(7, Side::Buy, true, 41, ns, 100, 5, 1),
        MdDepth::new(7, Side::Sell, true, 41, ns, 101, 7, 2),
    ];
    let end = MdStatus::new(
        7,
        MdStatusEvent::SnapshotEnd,
        41,
        ns,
        wire::book_checksum([(100, 5)], [(101, 7)]),
        2,
    );
    let top = MdTopOfBook::new(
        7,
        41,
        ns,
        TopLevel {
            price: 100,
            quantity: 5,
            orders: 1,
        },
        TopLevel {
            price: 101,
            quantity: 7,
            orders: 2,
        },
    );
    let trade = MdTrade::new(7, Side::Sell, 42, ns + 1, 9001, 100, 2);
    let update = MdDepth::new(7, Side::Buy, false, 43, ns + 1, 100, 3, 1);

    let mut b = FrameBuf::default();
    b.push_all(&subscribed);
    b.push_all(&rows);
    b.push(&end);
    b.push(&top);
    b.push(&trade);
    b.push(&update);
    let mut frames = Decoder::for_client(wire::DEFAULT_MAX_FRAME_BYTES).frames(b.as_bytes());
    let got: Vec<Frame<'_>> = frames.by_ref().collect();
    assert_eq!(frames.error(), None);
    assert_eq!(frames.consumed(), b.len());
    assert_eq!(
        got,
        [
            Frame::MdStatus(&subscribed),
            Frame::MdDepth(&rows),
            Frame::MdStatus(&[end]),
            Frame::MdTopOfBook(&[top]),
            Frame::MdTrade(&[trade]),
            Frame::MdDepth(&[update]),
        ]
    );
    assert_eq!(
        b.len(),
        6 * HEADER_BYTES + 2 * 32 + 2 * 48 + 32 + 64 + 48 + 48
    );
    // A version 1 server never sends these kinds, but the bytes are the
    // bytes: the decoder does not tie kinds to versions.
    let mut v1 = FrameBuf::default();
    v1.set_version(1);
    v1.push(&trade);
    assert!(matches!(
        Decoder::default().decode(v1.as_bytes()),
        Ok(Decoded::Frame(Frame::MdTrade(_), 56))
    ));
}

/// Feeds `stream` to a reader in reads of `sizes` bytes, keeping the
/// unconsumed tail between reads, and returns the frames decoded.
fn read_in_chunks(decoder: &Decoder, stream: &[u8], sizes: &[usize]) -> Vec<Batch> {
    let mut pending: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut at = 0;
    for &n in sizes {
        pending.extend_from_slice(&stream[at..at + n]);
        at += n;
        let mut frames = decoder.frames(&pending);
        out.extend(frames.by_ref().map(|f| Batch::from_frame(&f)));
        assert_eq!(frames.error(), None);
        let used = frames.consumed();
        pending.drain(..used);
        // What is left is never a whole frame.
        assert!(matches!(decoder.decode(&pending), Ok(Decoded::NeedMore(_))));
    }
    assert_eq!(at, stream.len());
    assert!(pending.is_empty(), "bytes left over after the whole stream");
    out
}

/// The message counts of the frames in `bytes`, checking each frame is
/// within `max_bytes` and `max_count`.
fn frame_sizes(
    decoder: &Decoder,
    bytes: &[u8],
    max_bytes: usize,
    max_count: usize,
) -> Result<Vec<usize>, TestCaseError> {
    let mut frames = decoder.frames(bytes);
    let mut sizes = Vec::new();
    for f in frames.by_ref() {
        let frame_len = HEADER_BYTES + f.len() * f.kind().message_bytes();
        prop_assert!(frame_len <= max_bytes, "{} > {}", frame_len, max_bytes);
        prop_assert!(f.len() <= max_count);
        prop_assert!(!f.is_empty(), "writers never write empty frames");
        sizes.push(f.len());
    }
    prop_assert_eq!(frames.consumed(), bytes.len());
    prop_assert_eq!(frames.error(), None);
    Ok(sizes)
}

#[test]
fn writers_give_every_hello_its_own_frame() {
    let hellos = [
        Hello::new(1, 0, 0, "a"),
        Hello::new(2, 1, 500, "b"),
        Hello::new(3, 0, 0, "c"),
    ];
    let mut out = Vec::new();
    let mut w = FrameWriter::new(&mut out);
    w.push(&hellos[0]);
    w.push(&hellos[1]);
    w.push_all(&hellos[2..]);
    let mut b = FrameBuf::default();
    b.push_all(&hellos);
    for bytes in [&out[..], b.as_bytes()] {
        let mut frames = Decoder::for_server(1 << 20).frames(bytes);
        let got: Vec<Hello> = frames
            .by_ref()
            .map(|f| match f {
                Frame::Hello(h) => h[0],
                other => panic!("not a hello: {other:?}"),
            })
            .collect();
        assert_eq!(got, hellos);
        assert_eq!(frames.consumed(), bytes.len());
        assert_eq!(frames.error(), None);
    }
}

#[test]
fn writers_split_at_the_u16_count_and_kinds_change() {
    let beats: Vec<Heartbeat> = (0..70_000u64)
        .map(|t| Heartbeat { token: t.into() })
        .collect();
    let mut out = Vec::with_capacity(600_000);
    let mut w = FrameWriter::new(&mut out);
    w.push_all(&beats[..1]);
    w.push(&NewOrder::limit(1, 2, Side::Buy, 3, 4));
    w.push_all(&beats[1..]);
    let frames: Vec<(Kind, usize)> = Decoder::default()
        .frames(&out)
        .map(|f| (f.kind(), f.len()))
        .collect();
    assert_eq!(
        frames,
        [
            (Kind::Heartbeat, 1),
            (Kind::NewOrder, 1),
            (Kind::Heartbeat, MAX_MESSAGES_PER_FRAME),
            (Kind::Heartbeat, 69_999 - MAX_MESSAGES_PER_FRAME)
        ]
    );
}

#[test]
fn one_shot_encoders_refuse_what_does_not_fit() {
    let beats = vec![Heartbeat { token: 9.into() }; MAX_MESSAGES_PER_FRAME + 1];
    let mut out = vec![1, 2, 3];
    assert_eq!(
        append_frame(&beats, &mut out),
        Err(EncodeError::TooManyMessages {
            count: MAX_MESSAGES_PER_FRAME + 1,
            max: MAX_MESSAGES_PER_FRAME
        })
    );
    assert_eq!(
        out,
        [1, 2, 3],
        "append_frame leaves the buffer as it was on error"
    );
    let mut big = vec![0u8; 1 << 20];
    assert!(matches!(
        encode_frame(&beats, &mut big),
        Err(EncodeError::TooManyMessages { .. })
    ));
    // The largest count fits.
    let n = encode_frame(&beats[..MAX_MESSAGES_PER_FRAME], &mut big).unwrap();
    assert_eq!(n, HEADER_BYTES + 8 * MAX_MESSAGES_PER_FRAME);
    let Ok(Decoded::Frame(Frame::Heartbeat(view), used)) = Decoder::default().decode(&big) else {
        panic!("the largest heartbeat frame decodes");
    };
    assert_eq!((view.len(), used), (MAX_MESSAGES_PER_FRAME, n));
    let mut small = [0u8; 15];
    assert_eq!(
        encode_frame(&beats[..1], &mut small),
        Err(EncodeError::BufferFull {
            needed: 16,
            available: 15
        })
    );
    assert_eq!(small, [0; 15], "nothing written on error");
}
