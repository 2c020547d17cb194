//! Properties every decode must have, whatever bytes it is given. Shared
//! by the robustness tests and the fuzz target (`wire/fuzz`), so both check
//! the same things.
//!
//! Written without test-only dependencies: the fuzz crate includes this
//! file with `#[path]`.

use wire::{
    DecodeError, Decoded, Decoder, Direction, Frame, HEADER_BYTES, Kind, PROTOCOL_VERSION,
    PROTOCOL_VERSION_MIN,
};
use zerocopy::IntoBytes;

/// The bytes a decoded frame's messages occupy. The match is exhaustive, so
/// a new kind does not compile until it is covered here.
pub fn frame_bytes<'a>(frame: &Frame<'a>) -> &'a [u8] {
    match *frame {
        Frame::Hello(m) => m.as_bytes(),
        Frame::NewOrder(m) => m.as_bytes(),
        Frame::Cancel(m) => m.as_bytes(),
        Frame::Replace(m) => m.as_bytes(),
        Frame::Heartbeat(m) => m.as_bytes(),
        Frame::Subscribe(m) => m.as_bytes(),
        Frame::OrderQuery(m) => m.as_bytes(),
        Frame::MassCancel(m) => m.as_bytes(),
        Frame::CancelAfter(m) => m.as_bytes(),
        Frame::HelloAck(m) => m.as_bytes(),
        Frame::SymbolEntry(m) => m.as_bytes(),
        Frame::Accepted(m) => m.as_bytes(),
        Frame::Rejected(m) => m.as_bytes(),
        Frame::Fill(m) => m.as_bytes(),
        Frame::Canceled(m) => m.as_bytes(),
        Frame::Replaced(m) => m.as_bytes(),
        Frame::ServerHeartbeat(m) => m.as_bytes(),
        Frame::Trade(m) => m.as_bytes(),
        Frame::TopOfBook(m) => m.as_bytes(),
        Frame::OrderStatus(m) => m.as_bytes(),
        Frame::SessionError(m) => m.as_bytes(),
        Frame::MdTrade(m) => m.as_bytes(),
        Frame::MdTopOfBook(m) => m.as_bytes(),
        Frame::MdDepth(m) => m.as_bytes(),
        Frame::MdStatus(m) => m.as_bytes(),
        Frame::ClusterMapRequest(m) => m.as_bytes(),
        Frame::ShardOwner(m) => m.as_bytes(),
        Frame::ClusterMap(m) => m.as_bytes(),
        Frame::ClusterNode(m) => m.as_bytes(),
        Frame::ClusterShard(m) => m.as_bytes(),
    }
}

/// Calls every typed accessor on every message: whatever the field values,
/// they answer a value or a typed error, never a panic.
pub fn touch_every_field(frame: &Frame<'_>) -> usize {
    let mut errors = 0usize;
    let mut count = |r: Result<(), DecodeError>| {
        if let Err(e) = r {
            // A field check names a field; the one framing-class error it
            // can give is a Hello's unsupported protocol version.
            assert!(
                !e.is_fatal() || matches!(e, DecodeError::UnsupportedVersion { .. }),
                "a field check returned a framing error: {e:?}"
            );
            assert!(!e.to_string().is_empty());
            errors += 1;
        }
    };
    match *frame {
        Frame::Hello(m) => m.iter().for_each(|h| {
            count(h.validate());
            let _ = (h.cancel_on_disconnect(), h.credentials().len());
        }),
        Frame::NewOrder(m) => m.iter().for_each(|o| count(o.fields().map(drop))),
        Frame::Cancel(m) => m.iter().for_each(|c| count(c.validate())),
        Frame::Replace(m) => m.iter().for_each(|r| count(r.validate())),
        Frame::OrderQuery(m) => m.iter().for_each(|q| count(q.validate())),
        Frame::MassCancel(m) => m.iter().for_each(|q| count(q.validate())),
        Frame::CancelAfter(m) => m.iter().for_each(|c| count(c.validate())),
        Frame::SymbolEntry(m) => m.iter().for_each(|s| assert!(s.name().len() <= 20)),
        Frame::Rejected(m) => m.iter().for_each(|r| {
            count(r.reason().map(drop));
            count(r.request_kind().map(drop));
        }),
        Frame::Fill(m) => m.iter().for_each(|f| {
            count(f.side().map(drop));
            count(f.liquidity().map(drop));
        }),
        Frame::Canceled(m) => m.iter().for_each(|c| count(c.reason().map(drop))),
        Frame::Replaced(m) => m.iter().for_each(|r| {
            let _ = r.priority_kept();
        }),
        Frame::OrderStatus(m) => m.iter().for_each(|s| count(s.state().map(drop))),
        Frame::MdDepth(m) => m.iter().for_each(|d| {
            count(d.side().map(drop));
            let _ = d.is_snapshot();
        }),
        Frame::MdStatus(m) => m.iter().for_each(|s| count(s.event().map(drop))),
        Frame::ShardOwner(m) => m.iter().for_each(|o| count(o.owner_address().map(drop))),
        Frame::ClusterNode(m) => m.iter().for_each(|n| {
            count(n.node_address().map(drop));
            count(n.state().map(drop));
        }),
        Frame::MdTopOfBook(m) => m.iter().for_each(|t| {
            let _ = (t.bid(), t.ask());
        }),
        Frame::SessionError(m) => m.iter().for_each(|e| {
            count(e.code().map(drop));
            assert!(e.text().len() <= 56);
        }),
        Frame::Heartbeat(_)
        | Frame::Subscribe(_)
        | Frame::HelloAck(_)
        | Frame::Accepted(_)
        | Frame::ServerHeartbeat(_)
        | Frame::Trade(_)
        | Frame::TopOfBook(_)
        | Frame::MdTrade(_)
        | Frame::ClusterMapRequest(_)
        | Frame::ClusterMap(_)
        | Frame::ClusterShard(_) => {}
    }
    errors
}

fn header_length(input: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(*input.first_chunk::<4>()?))
}

/// Decodes the first frame of `input` with `decoder` (which accepts only
/// `direction` when given) and checks everything that must hold of the
/// result. Returns it.
pub fn check_decode<'a>(
    decoder: &Decoder,
    direction: Option<Direction>,
    input: &'a [u8],
) -> Result<Decoded<'a>, DecodeError> {
    let result = decoder.decode(input);
    match result {
        Ok(Decoded::Frame(frame, used)) => {
            check_frame(decoder, direction, input, &frame, used);
        }
        Ok(Decoded::NeedMore(needed)) => {
            assert!(
                needed > input.len(),
                "NeedMore({needed}) although {} bytes are present",
                input.len()
            );
            if input.len() < HEADER_BYTES {
                assert_eq!(needed, HEADER_BYTES, "first the header is needed");
            } else {
                // A whole header was checked and found good: what is missing
                // is the rest of the frame it announces.
                assert_eq!(Some(needed as u32), header_length(input));
                assert!(needed <= decoder.max_frame_bytes() as usize);
            }
        }
        Err(e) => {
            assert!(
                input.len() >= HEADER_BYTES,
                "error {e:?} before a whole header"
            );
            assert!(
                e.is_fatal(),
                "the decoder only returns framing errors: {e:?}"
            );
            assert!(!e.to_string().is_empty());
            // Every framing error is found in the 8 header bytes alone, so a
            // receiver can refuse a frame before buffering its body.
            assert_eq!(
                decoder.decode(&input[..HEADER_BYTES]),
                Err(e),
                "the error depends on more than the header"
            );
            let reply = wire::SessionError::from_decode_error(&e);
            assert_eq!(reply.code(), Ok(e.session_error_code()));
        }
    }
    result
}

fn check_frame(
    decoder: &Decoder,
    direction: Option<Direction>,
    input: &[u8],
    frame: &Frame<'_>,
    used: usize,
) {
    let kind = frame.kind();
    assert!(
        used >= HEADER_BYTES && used <= input.len(),
        "used {used} of {}",
        input.len()
    );
    assert!(used <= decoder.max_frame_bytes() as usize);
    assert_eq!(used, HEADER_BYTES + frame.len() * kind.message_bytes());
    assert_eq!(header_length(input), Some(used as u32));
    assert_eq!(input[4], kind as u8);
    assert!(
        (PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&input[5]),
        "the decoder let version {} through",
        input[5]
    );
    assert_eq!(
        usize::from(u16::from_le_bytes([input[6], input[7]])),
        frame.len()
    );
    assert_eq!(Kind::from_wire(input[4]), Ok(kind));
    if let Some(d) = direction {
        assert_eq!(
            kind.direction(),
            d,
            "the decoder let the other side's kind through"
        );
    }
    if kind == Kind::Hello {
        assert_eq!(frame.len(), 1, "a Hello frame carries exactly one Hello");
    }
    // The messages are a view of exactly the body bytes, nothing outside the input.
    let body = frame_bytes(frame);
    assert_eq!(body.len(), used - HEADER_BYTES);
    assert_eq!(
        body.as_ptr() as usize,
        input.as_ptr() as usize + HEADER_BYTES,
        "the frame's messages do not start right after its header"
    );
    assert_eq!(body, &input[HEADER_BYTES..used]);
    touch_every_field(frame);
}

/// What [`check_stream`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StreamOutcome {
    /// Frames decoded.
    pub frames: usize,
    /// Bytes they used.
    pub consumed: usize,
    /// The error that stopped decoding, if one did.
    pub error: Option<DecodeError>,
}

/// Iterates over every frame of `input` with [`Decoder::frames`] and checks
/// that each frame is the one [`check_decode`] finds at that offset, that
/// `consumed()` is exactly the bytes of the frames returned, and that the
/// iterator stops for the reason decoding the rest gives.
pub fn check_stream(
    decoder: &Decoder,
    direction: Option<Direction>,
    input: &[u8],
) -> StreamOutcome {
    let mut frames = decoder.frames(input);
    let mut offset = 0usize;
    let mut count = 0usize;
    // Not a `for` loop: `consumed()` is checked after every step.
    #[allow(clippy::while_let_on_iterator)]
    while let Some(frame) = frames.next() {
        let Ok(Decoded::Frame(one, used)) = check_decode(decoder, direction, &input[offset..])
        else {
            panic!("Frames returned a frame where decode does not");
        };
        assert_eq!(one, frame);
        assert_eq!(
            frame_bytes(&frame).as_ptr() as usize,
            input.as_ptr() as usize + offset + HEADER_BYTES
        );
        offset += used;
        count += 1;
        assert_eq!(frames.consumed(), offset);
    }
    assert_eq!(frames.consumed(), offset);
    assert!(offset <= input.len());
    let rest = &input[offset..];
    match check_decode(decoder, direction, rest) {
        Ok(Decoded::NeedMore(_)) => assert_eq!(frames.error(), None),
        Err(e) => assert_eq!(frames.error(), Some(e)),
        Ok(Decoded::Frame(..)) => panic!("Frames stopped before a whole frame"),
    }
    // Once stopped, it stays stopped.
    assert!(frames.next().is_none());
    StreamOutcome {
        frames: count,
        consumed: offset,
        error: frames.error(),
    }
}

/// The decoders the checks run with: every direction filter, and maximum
/// frame sizes from the smallest allowed to the ceiling.
pub fn decoders() -> Vec<(Decoder, Option<Direction>)> {
    let mut out = Vec::new();
    for max in [0, 9, 64, 1_000, wire::DEFAULT_MAX_FRAME_BYTES, u32::MAX] {
        out.push((Decoder::new(max), None));
        out.push((Decoder::for_server(max), Some(Direction::ToServer)));
        out.push((Decoder::for_client(max), Some(Direction::ToClient)));
    }
    out
}

/// Everything a reader gets from a stream: the frames (kind and message
/// bytes) and the error that stopped it, if any.
pub type Received = (Vec<(Kind, Vec<u8>)>, Option<DecodeError>);

/// Decodes `input` as a TCP reader would when it arrives in two reads, the
/// first `cut` bytes then the rest, keeping the unconsumed tail between
/// reads; and checks that the reader gets exactly what decoding the whole
/// input at once gives.
pub fn check_split_reads(decoder: &Decoder, input: &[u8], cut: usize) -> Received {
    let cut = cut.min(input.len());
    let mut whole = decoder.frames(input);
    let expected: Vec<(Kind, Vec<u8>)> = whole
        .by_ref()
        .map(|f| (f.kind(), frame_bytes(&f).to_vec()))
        .collect();
    let expected = (expected, whole.error());

    let mut pending: Vec<u8> = Vec::new();
    let mut got = Vec::new();
    let mut error = None;
    for read in [&input[..cut], &input[cut..]] {
        if error.is_some() {
            break; // a reader closes on the first framing error
        }
        pending.extend_from_slice(read);
        let mut frames = decoder.frames(&pending);
        got.extend(
            frames
                .by_ref()
                .map(|f| (f.kind(), frame_bytes(&f).to_vec())),
        );
        error = frames.error();
        let used = frames.consumed();
        pending.drain(..used);
    }
    assert_eq!((got, error), expected, "split at {cut} reads differently");
    expected
}
