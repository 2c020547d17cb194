//! Untrusted input: random bytes and damaged frames never panic the
//! decoder, never yield messages beyond the input, and always give a frame,
//! `NeedMore` or a typed error that says what is wrong.

mod common;

use common::invariants::{check_decode, check_split_reads, check_stream, decoders};
use common::{any_batch, any_encoder};
use proptest::prelude::*;
use wire::{
    DEFAULT_MAX_FRAME_BYTES, DecodeError, Decoded, Decoder, EncodeError, FrameBuf, FrameWriter,
    HEADER_BYTES, Kind, MAX_FRAME_BYTES_LIMIT, NewOrder, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN,
    SessionError, SessionErrorCode, Side, append_frame,
};

/// A header with each field drawn from values that matter: the edges,
/// the exact value a valid frame would have, and noise.
fn header_and_body() -> impl Strategy<Value = Vec<u8>> {
    let kind = prop_oneof![
        proptest::sample::select(Kind::ALL).prop_map(|k| k as u8),
        any::<u8>(),
    ];
    let version = prop_oneof![
        2 => Just(PROTOCOL_VERSION),
        1 => Just(PROTOCOL_VERSION_MIN),
        1 => any::<u8>(),
    ];
    let count = prop_oneof![
        Just(0u16),
        Just(1),
        Just(2),
        Just(u16::MAX),
        any::<u16>(),
        0u16..64
    ];
    (kind, version, count, 0usize..600, any::<u8>(), any::<u32>()).prop_map(
        |(kind, version, count, body_len, fill, noise)| {
            let exact = Kind::from_wire(kind)
                .map(|k| (HEADER_BYTES + usize::from(count) * k.message_bytes()) as u32)
                .unwrap_or(HEADER_BYTES as u32);
            let length = match noise % 8 {
                0..=3 => exact,
                4 => noise % 16,
                5 => u32::MAX - noise % 4,
                6 => DEFAULT_MAX_FRAME_BYTES + noise % 3 - 1,
                _ => noise,
            };
            let mut bytes = Vec::with_capacity(HEADER_BYTES + body_len);
            bytes.extend_from_slice(&length.to_le_bytes());
            bytes.extend_from_slice(&[kind, version]);
            bytes.extend_from_slice(&count.to_le_bytes());
            bytes.resize(HEADER_BYTES + body_len, fill);
            bytes
        },
    )
}

/// A mutation of a valid stream.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    SetByte(prop::sample::Index, u8),
    /// Set a header field of one of the frames: 0 length, 1 kind, 2 version, 3 count.
    SetHeaderField(prop::sample::Index, u8, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let extreme = prop_oneof![
        Just(0u32),
        Just(1),
        Just(7),
        Just(8),
        Just(9),
        Just(u32::from(u16::MAX)),
        Just(DEFAULT_MAX_FRAME_BYTES),
        Just(DEFAULT_MAX_FRAME_BYTES + 1),
        Just(MAX_FRAME_BYTES_LIMIT),
        Just(MAX_FRAME_BYTES_LIMIT + 1),
        Just(u32::MAX),
        any::<u32>(),
    ];
    prop_oneof![
        (any::<prop::sample::Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        (any::<prop::sample::Index>(), 0u8..4, extreme)
            .prop_map(|(i, f, v)| Mutation::SetHeaderField(i, f, v)),
    ]
}

fn apply(bytes: &mut Vec<u8>, frame_starts: &[usize], m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let len = bytes.len();
    match *m {
        Mutation::FlipBit(i, bit) => bytes[i.index(len)] ^= 1 << bit,
        Mutation::Truncate(i) => bytes.truncate(i.index(len)),
        Mutation::SetByte(i, v) => bytes[i.index(len)] = v,
        Mutation::SetHeaderField(i, field, v) => {
            let Some(&start) = frame_starts.get(i.index(frame_starts.len().max(1))) else {
                return;
            };
            if start + HEADER_BYTES > bytes.len() {
                return;
            }
            let h = &mut bytes[start..start + HEADER_BYTES];
            match field {
                0 => h[0..4].copy_from_slice(&v.to_le_bytes()),
                1 => h[4] = v as u8,
                2 => h[5] = v as u8,
                _ => h[6..8].copy_from_slice(&(v as u16).to_le_bytes()),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        cut in any::<prop::sample::Index>(),
    ) {
        for (decoder, direction) in decoders() {
            check_decode(&decoder, direction, &bytes).ok();
            check_stream(&decoder, direction, &bytes);
            check_split_reads(&decoder, &bytes, cut.index(bytes.len() + 1));
        }
    }

    #[test]
    fn plausible_headers_never_panic(bytes in header_and_body()) {
        for (decoder, direction) in decoders() {
            check_decode(&decoder, direction, &bytes).ok();
            check_stream(&decoder, direction, &bytes);
        }
    }

    #[test]
    fn damaged_streams_never_panic(
        batches in prop::collection::vec((any_batch(6), any_encoder()), 1..6),
        mutations in prop::collection::vec(mutation(), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for (batch, encoder) in &batches {
            let before = bytes.len();
            encoder.append(batch, &mut bytes);
            if bytes.len() > before {
                starts.push(before);
            }
        }
        let intact = check_stream(&Decoder::default(), None, &bytes);
        prop_assert_eq!(intact.error, None);
        prop_assert_eq!(intact.consumed, bytes.len());
        for m in &mutations {
            apply(&mut bytes, &starts, m);
        }
        for (decoder, direction) in decoders() {
            check_stream(&decoder, direction, &bytes);
            check_split_reads(&decoder, &bytes, cut.index(bytes.len() + 1));
        }
    }
}

fn header(length: u32, kind: u8, version: u8, count: u16) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[0..4].copy_from_slice(&length.to_le_bytes());
    h[4] = kind;
    h[5] = version;
    h[6..8].copy_from_slice(&count.to_le_bytes());
    h
}

/// One case per error, with the words its message must contain, its
/// fatality and the session error code a server answers it with.
#[test]
fn every_decode_error_is_typed_and_says_what_is_wrong() {
    let d = Decoder::new(1024);
    let new_order = Kind::NewOrder as u8;
    let cases: Vec<(Vec<u8>, DecodeError, &[&str], SessionErrorCode)> = vec![
        (
            header(7, new_order, 1, 0).to_vec(),
            DecodeError::LengthTooSmall { length: 7 },
            &["length 7", "smaller than", "8-byte header"],
            SessionErrorCode::MalformedFrame,
        ),
        (
            header(1025, new_order, 1, 32).to_vec(),
            DecodeError::FrameTooLarge {
                length: 1025,
                max_frame_bytes: 1024,
            },
            &["1025", "exceeds", "maximum frame size of 1024"],
            SessionErrorCode::FrameTooLarge,
        ),
        (
            header(8, new_order, 3, 0).to_vec(),
            DecodeError::UnsupportedVersion {
                version: 3,
                supported: PROTOCOL_VERSION,
            },
            &["protocol version 3", "not supported"],
            SessionErrorCode::UnsupportedVersion,
        ),
        (
            header(8, 0x42, 1, 0).to_vec(),
            DecodeError::UnknownKind { kind: 0x42 },
            &["unknown message kind 0x42"],
            SessionErrorCode::UnknownKind,
        ),
        (
            header(8 + 31, new_order, 1, 1).to_vec(),
            DecodeError::BadCount {
                kind: new_order,
                count: 1,
                length: 39,
                message_bytes: 32,
            },
            &[
                "0x02",
                "1 messages of 32 bytes",
                "length is 39",
                "expected 40",
            ],
            SessionErrorCode::BadCount,
        ),
        (
            header(8, Kind::Hello as u8, 1, 0).to_vec(),
            DecodeError::CountMustBeOne { kind: 1, count: 0 },
            &["exactly one message", "not 0"],
            SessionErrorCode::BadCount,
        ),
    ];
    for (bytes, want, words, code) in cases {
        let got = d.decode(&bytes).expect_err("a malformed header");
        assert_eq!(got, want);
        assert!(got.is_fatal(), "{got:?} is a framing error");
        let text = got.to_string();
        for w in words {
            assert!(text.contains(w), "{text:?} lacks {w:?}");
        }
        assert_eq!(got.session_error_code(), code);
        let reply = SessionError::from_decode_error(&got);
        assert_eq!(reply.code(), Ok(code));
        let expect_text = &text.as_bytes()[..text.len().min(56)];
        assert_eq!(reply.text(), expect_text);
    }

    let field = DecodeError::InvalidEnum {
        field: "side",
        value: 9,
    };
    assert!(!field.is_fatal());
    assert!(
        field
            .to_string()
            .contains("field `side` has invalid value 9")
    );
    assert_eq!(field.session_error_code(), SessionErrorCode::InvalidField);
    let reserved = DecodeError::ReservedBits {
        field: "new_order.flags",
        value: 0x80,
    };
    assert!(!reserved.is_fatal());
    let text = reserved.to_string();
    assert!(text.contains("reserved bits of `new_order.flags`") && text.contains("0x80"));
    assert!(text.contains("must be zero"));
    assert_eq!(
        reserved.session_error_code(),
        SessionErrorCode::InvalidField
    );
}

/// The session error for a decode error carries the offending kind and
/// the number PROTOCOL.md says goes in `detail`.
#[test]
fn session_errors_for_decode_errors_carry_kind_and_detail() {
    let cases = [
        (DecodeError::LengthTooSmall { length: 3 }, 0, 3),
        (
            DecodeError::FrameTooLarge {
                length: 5_000_000,
                max_frame_bytes: 1 << 20,
            },
            0,
            5_000_000,
        ),
        (DecodeError::UnknownKind { kind: 0x99 }, 0x99, 0x99),
        (
            DecodeError::UnsupportedVersion {
                version: 7,
                supported: PROTOCOL_VERSION,
            },
            0,
            7,
        ),
        (
            DecodeError::BadCount {
                kind: 2,
                count: 3,
                length: 50,
                message_bytes: 32,
            },
            2,
            3,
        ),
        (DecodeError::CountMustBeOne { kind: 1, count: 2 }, 1, 2),
        (
            DecodeError::InvalidEnum {
                field: "side",
                value: u64::MAX,
            },
            0,
            u32::MAX,
        ),
    ];
    for (e, kind, detail) in cases {
        let s = SessionError::from_decode_error(&e);
        assert_eq!((s.kind, s.detail.get()), (kind, detail), "{e:?}");
        assert_eq!(s.reserved, 0);
    }
}

/// When several header fields are wrong, the first check in PROTOCOL.md's
/// order decides: length, size limit, version, kind, count.
#[test]
fn header_checks_run_in_the_documented_order() {
    let d = Decoder::for_server(1024);
    let all_bad = header(4, 0x99, 9, 7);
    assert!(matches!(
        d.decode(&all_bad),
        Err(DecodeError::LengthTooSmall { .. })
    ));
    let big = header(5000, 0x99, 9, 7);
    assert!(matches!(
        d.decode(&big),
        Err(DecodeError::FrameTooLarge { .. })
    ));
    let version = header(100, 0x99, 9, 7);
    assert!(matches!(
        d.decode(&version),
        Err(DecodeError::UnsupportedVersion { .. })
    ));
    let kind = header(100, 0x99, 1, 7);
    assert!(matches!(
        d.decode(&kind),
        Err(DecodeError::UnknownKind { .. })
    ));
    let direction = header(100, Kind::Fill as u8, 1, 7);
    assert!(matches!(
        d.decode(&direction),
        Err(DecodeError::UnknownKind { kind: 0x85 })
    ));
    let count = header(100, Kind::Hello as u8, 1, 7);
    assert!(matches!(
        d.decode(&count),
        Err(DecodeError::BadCount { .. })
    ));
    let hello_count = header(8 + 2 * 48, Kind::Hello as u8, 1, 2);
    assert!(matches!(
        d.decode(&hello_count),
        Err(DecodeError::CountMustBeOne { .. })
    ));
}

/// Versions 1 and 2 are spoken; any other version byte in a header is
/// `UnsupportedVersion`, whatever the kind, and found from the header alone.
#[test]
fn only_versions_1_and_2_decode() {
    assert_eq!((PROTOCOL_VERSION_MIN, PROTOCOL_VERSION), (1, 2));
    let mut frame = Vec::new();
    append_frame(&[NewOrder::limit(1, 2, Side::Buy, 3, 4)], &mut frame).unwrap();
    for decoder in [
        Decoder::default(),
        Decoder::for_server(DEFAULT_MAX_FRAME_BYTES),
        Decoder::new(40),
    ] {
        for version in 0..=u8::MAX {
            frame[5] = version;
            let got = decoder.decode(&frame);
            if version == 1 || version == 2 {
                let Ok(Decoded::Frame(f, 40)) = got else {
                    panic!("version {version}: {got:?}");
                };
                assert_eq!((f.kind(), f.len()), (Kind::NewOrder, 1));
            } else {
                assert_eq!(
                    got,
                    Err(DecodeError::UnsupportedVersion {
                        version,
                        supported: PROTOCOL_VERSION
                    }),
                    "version {version}"
                );
            }
        }
    }
    for version in [0u8, 3, 255] {
        frame[5] = version;
        let e = Decoder::default().decode(&frame).unwrap_err();
        assert_eq!(
            e,
            DecodeError::UnsupportedVersion {
                version,
                supported: PROTOCOL_VERSION
            }
        );
        assert_eq!(e.session_error_code(), SessionErrorCode::UnsupportedVersion);
        assert_eq!(e.detail(), u32::from(version));
    }
}

proptest! {
    /// Whatever the kind and count, a header whose version is not 1 or 2
    /// is `UnsupportedVersion` (the checks before it, length and size,
    /// passing), and the same frame with version 1 or 2 decodes the same.
    #[test]
    fn a_frame_of_another_version_is_unsupported(
        batch in any_batch(8),
        version in prop_oneof![Just(0u8), Just(3), Just(255), 3u8..],
        session_version in PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION,
    ) {
        let mut bytes = Vec::new();
        let mut w = FrameWriter::new(&mut bytes).with_version(session_version);
        batch.push_all(&mut w);
        w.finish();
        let mut b = FrameBuf::default();
        b.set_version(session_version);
        batch.buf_push_all(&mut b);
        prop_assert_eq!(b.version(), session_version);
        prop_assert_eq!(b.as_bytes(), &bytes[..], "FrameWriter and FrameBuf write the same bytes");
        if bytes.is_empty() {
            return Ok(());
        }
        prop_assert_eq!(bytes[5], session_version);
        let d = Decoder::default();
        let Ok(Decoded::Frame(frame, used)) = d.decode(&bytes) else {
            panic!("version {session_version} decodes");
        };
        let (kind, len) = (frame.kind(), frame.len());
        for other in PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION {
            let mut copy = bytes.clone();
            copy[5] = other;
            let Ok(Decoded::Frame(f, u)) = d.decode(&copy) else {
                panic!("version {other} decodes");
            };
            prop_assert_eq!((f.kind(), f.len(), u), (kind, len, used));
        }
        bytes[5] = version;
        prop_assert_eq!(
            d.decode(&bytes),
            Err(DecodeError::UnsupportedVersion { version, supported: PROTOCOL_VERSION })
        );
        check_stream(&d, None, &bytes);
    }
}

#[test]
fn need_more_names_the_bytes_needed() {
    let mut buf = Vec::new();
    append_frame(&[NewOrder::limit(1, 2, Side::Sell, 3, 4); 3], &mut buf).unwrap();
    let d = Decoder::default();
    assert_eq!(d.decode(&[]), Ok(Decoded::NeedMore(HEADER_BYTES)));
    assert_eq!(d.decode(&buf[..7]), Ok(Decoded::NeedMore(HEADER_BYTES)));
    assert_eq!(d.decode(&buf[..8]), Ok(Decoded::NeedMore(8 + 96)));
    assert_eq!(d.decode(&buf[..103]), Ok(Decoded::NeedMore(8 + 96)));
    assert!(matches!(d.decode(&buf), Ok(Decoded::Frame(_, 104))));
    // An absurd length is refused as soon as the header is in, not after
    // the receiver buffered what it announces.
    let mut absurd = header(u32::MAX, Kind::NewOrder as u8, 1, 0).to_vec();
    assert!(matches!(
        d.decode(&absurd),
        Err(DecodeError::FrameTooLarge { .. })
    ));
    absurd.truncate(5);
    assert_eq!(d.decode(&absurd), Ok(Decoded::NeedMore(HEADER_BYTES)));
}

#[test]
fn max_frame_bytes_is_clamped_and_enforced() {
    assert_eq!(Decoder::new(0).max_frame_bytes(), HEADER_BYTES as u32);
    assert_eq!(
        Decoder::new(u32::MAX).max_frame_bytes(),
        MAX_FRAME_BYTES_LIMIT
    );
    assert_eq!(
        Decoder::default().max_frame_bytes(),
        DEFAULT_MAX_FRAME_BYTES
    );
    assert_eq!(Decoder::default().max_messages(Kind::NewOrder), 32_767);
    assert_eq!(Decoder::new(8).max_messages(Kind::NewOrder), 0);
    assert_eq!(
        Decoder::new(MAX_FRAME_BYTES_LIMIT).max_messages(Kind::Heartbeat),
        65_535
    );
    // Exactly the maximum is accepted; one byte more is not.
    let d = Decoder::new(8 + 32 * 4);
    let mut buf = Vec::new();
    append_frame(&[NewOrder::limit(1, 2, Side::Buy, 3, 4); 4], &mut buf).unwrap();
    assert!(matches!(d.decode(&buf), Ok(Decoded::Frame(_, 136))));
    buf.clear();
    append_frame(&[NewOrder::limit(1, 2, Side::Buy, 3, 4); 5], &mut buf).unwrap();
    assert_eq!(
        d.decode(&buf),
        Err(DecodeError::FrameTooLarge {
            length: 168,
            max_frame_bytes: 136
        })
    );
}

#[test]
fn encode_errors_say_what_to_do() {
    let full = EncodeError::BufferFull {
        needed: 40,
        available: 20,
    }
    .to_string();
    assert!(full.contains("need 40 bytes") && full.contains("20 available"));
    let many = EncodeError::TooManyMessages {
        count: 70_000,
        max: 65_535,
    }
    .to_string();
    assert!(many.contains("70000 messages") && many.contains("at most 65535"));
}
