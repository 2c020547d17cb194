//! PROTOCOL.md and the code cannot drift apart: this test parses the
//! document's tables (message kinds, byte layouts, enum values) and
//! compares them with the types, and checks that the worked hex examples
//! are the bytes the encoder writes.
//!
//! When a layout changes on purpose, run this test: the failure says which
//! row differs, and for the examples it prints the block to paste.

use std::any::type_name;
use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};

use wire::*;
use zerocopy::IntoBytes;

fn protocol_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

// ---------------------------------------------------------------------------
// Layouts from the types
// ---------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
struct Field {
    name: &'static str,
    offset: usize,
    size: usize,
    ty: String,
}

fn size_of_field<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// The type as PROTOCOL.md writes it: `u8`, `u16`, `u32`, `u64`, `i64`, `u8[N]`.
fn type_label<T, F>(_: fn(&T) -> &F) -> String {
    let name = type_name::<F>();
    for (rust, doc) in [
        ("U16<", "u16"),
        ("U32<", "u32"),
        ("U64<", "u64"),
        ("I64<", "i64"),
    ] {
        if name.contains(rust) {
            return doc.to_string();
        }
    }
    if let Some(n) = name.strip_prefix("[u8; ").and_then(|s| s.strip_suffix(']')) {
        return format!("u8[{n}]");
    }
    name.to_string()
}

macro_rules! layout {
    ($ty:ident { $($field:ident),+ $(,)? }) => {
        (
            stringify!($ty),
            size_of::<$ty>(),
            vec![$(Field {
                name: stringify!($field),
                offset: offset_of!($ty, $field),
                size: size_of_field(|m: &$ty| &m.$field),
                ty: type_label(|m: &$ty| &m.$field),
            }),+],
        )
    };
}

/// Every wire struct with its fields. A field missing here shows up as a
/// size mismatch against the document; a renamed one does not compile.
fn layouts() -> BTreeMap<&'static str, (usize, Vec<Field>)> {
    let all = vec![
        layout!(Header {
            length,
            kind,
            version,
            count
        }),
        layout!(Hello {
            protocol_version,
            flags,
            heartbeat_interval_ms,
            account,
            credentials
        }),
        layout!(NewOrder {
            client_order_id,
            symbol,
            side,
            order_type,
            time_in_force,
            flags,
            price,
            quantity
        }),
        layout!(Cancel {
            client_order_id,
            symbol,
            reserved
        }),
        layout!(Replace {
            client_order_id,
            symbol,
            reserved,
            price,
            quantity
        }),
        layout!(Heartbeat { token }),
        layout!(Subscribe { symbol, flags }),
        layout!(OrderQuery {
            client_order_id,
            symbol,
            reserved
        }),
        layout!(MassCancel {
            request_id,
            symbol,
            flags
        }),
        layout!(CancelAfter {
            timeout_ms,
            reserved
        }),
        layout!(HelloAck {
            session_id,
            protocol_version,
            flags,
            heartbeat_interval_ms,
            symbol_count,
            max_frame_bytes
        }),
        layout!(SymbolEntry { symbol, name }),
        layout!(Accepted {
            client_order_id,
            order_id,
            timestamp_ns,
            symbol,
            side,
            order_type,
            time_in_force,
            reserved
        }),
        layout!(Rejected {
            client_order_id,
            symbol,
            reason,
            request_kind,
            reserved
        }),
        layout!(Fill {
            client_order_id,
            trade_id,
            symbol,
            side,
            liquidity,
            reserved,
            price,
            quantity,
            leaves_quantity
        }),
        layout!(Canceled {
            client_order_id,
            symbol,
            reason,
            reserved,
            canceled_quantity
        }),
        layout!(Replaced {
            client_order_id,
            symbol,
            flags,
            reserved,
            price,
            leaves_quantity
        }),
        layout!(ServerHeartbeat { token }),
        layout!(Trade {
            symbol,
            aggressor_side,
            reserved,
            trade_id,
            price,
            quantity
        }),
        layout!(TopOfBook {
            symbol,
            reserved,
            bid_price,
            bid_quantity,
            ask_price,
            ask_quantity
        }),
        layout!(OrderStatus {
            client_order_id,
            order_id,
            symbol,
            state,
            reserved,
            filled_quantity,
            leaves_quantity
        }),
        layout!(SessionError {
            code,
            kind,
            reserved,
            detail,
            text
        }),
        layout!(MdTrade {
            symbol,
            aggressor_side,
            reserved,
            seq,
            engine_ns,
            trade_id,
            price,
            quantity
        }),
        layout!(MdTopOfBook {
            symbol,
            reserved,
            seq,
            engine_ns,
            bid_price,
            bid_quantity,
            ask_price,
            ask_quantity,
            bid_orders,
            ask_orders
        }),
        layout!(MdDepth {
            symbol,
            side,
            flags,
            reserved,
            seq,
            engine_ns,
            price,
            quantity,
            orders,
            reserved2
        }),
        layout!(MdStatus {
            symbol,
            event,
            reserved,
            seq,
            engine_ns,
            checksum,
            levels
        }),
        layout!(ClusterMapRequest { token }),
        layout!(ShardOwner {
            client_order_id,
            symbol,
            shard,
            map_version,
            node_id,
            address,
            port,
            family,
            request_kind,
            reserved
        }),
        layout!(ClusterMap {
            token,
            map_version,
            node_id,
            shard_count,
            node_count
        }),
        layout!(ClusterNode {
            node_id,
            address,
            port,
            family,
            state,
            cores,
            shards_owned,
            heartbeat_age_ms
        }),
        layout!(ClusterShard {
            shard,
            lease_remaining_ms,
            owner
        }),
    ];
    all.into_iter().map(|(n, s, f)| (n, (s, f))).collect()
}

// ---------------------------------------------------------------------------
// Tables from the document
// ---------------------------------------------------------------------------

/// Cells of a Markdown table row, trimmed, backticks removed.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner
        .split('|')
        .map(|c| c.trim().replace('`', ""))
        .collect()
}

/// The rows (after header and separator) of the first table that follows
/// `heading_line`, stopping at the next heading.
fn table_after(lines: &[&str], heading_line: usize) -> (Vec<String>, Vec<Vec<String>>) {
    let mut i = heading_line + 1;
    while i < lines.len() && !lines[i].starts_with('|') {
        assert!(
            !lines[i].starts_with('#'),
            "no table under {:?}",
            lines[heading_line]
        );
        i += 1;
    }
    let header = cells(lines[i]);
    let mut rows = Vec::new();
    i += 2; // header and separator
    while i < lines.len() && lines[i].starts_with('|') {
        rows.push(cells(lines[i]));
        i += 1;
    }
    (header, rows)
}

/// The name between the first pair of backticks of a heading.
fn backticked(line: &str) -> Option<&str> {
    let start = line.find('`')? + 1;
    let len = line[start..].find('`')?;
    Some(&line[start..start + len])
}

fn parse_u64(s: &str) -> u64 {
    let s = s.replace(',', "");
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .unwrap_or_else(|e| panic!("not a number: {s:?}: {e}"))
}

#[test]
fn the_kinds_table_lists_every_kind_with_its_size() {
    let doc = protocol_md();
    let lines: Vec<&str> = doc.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("| Code | Kind |"))
        .expect("PROTOCOL.md has the message kinds table");
    let (header, rows) = table_after(&lines, at - 1);
    assert_eq!(
        header[..5],
        [
            "Code",
            "Kind",
            "Direction",
            "Size (bytes)",
            "Max per 1 MiB frame"
        ]
    );
    let mut seen = Vec::new();
    for row in rows {
        let code = parse_u64(&row[0]) as u8;
        let kind = Kind::from_wire(code).unwrap_or_else(|e| panic!("{row:?}: {e}"));
        assert_eq!(row[1], format!("{kind:?}"), "{row:?}");
        let direction = match kind.direction() {
            Direction::ToServer => "client → server",
            Direction::ToClient => "server → client",
        };
        assert_eq!(row[2], direction, "{row:?}");
        assert_eq!(parse_u64(&row[3]) as usize, kind.message_bytes(), "{row:?}");
        // A Hello frame carries exactly one message, whatever would fit.
        let per_frame = match kind {
            Kind::Hello => 1,
            _ => Decoder::default().max_messages(kind),
        };
        assert_eq!(parse_u64(&row[4]) as usize, per_frame, "{row:?}");
        seen.push(kind);
    }
    let mut by_code = Kind::ALL.to_vec();
    by_code.sort_by_key(|&k| k as u8);
    assert_eq!(seen, by_code, "one row per kind, in code order");
}

#[test]
fn every_layout_in_the_document_matches_the_type() {
    let doc = protocol_md();
    let lines: Vec<&str> = doc.lines().collect();
    let layouts = layouts();
    let mut documented = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !(line.starts_with("### `") && line.ends_with(" bytes")) {
            continue;
        }
        let name = backticked(line).unwrap();
        let (size, fields) = layouts
            .get(name)
            .unwrap_or_else(|| panic!("PROTOCOL.md documents unknown type {name}"));
        let heading_size: usize = line
            .rsplit(' ')
            .nth(1)
            .map(parse_u64)
            .expect("heading ends with N bytes") as usize;
        assert_eq!(heading_size, *size, "{line}");
        if let Some(k) = line.find("kind 0x") {
            let code = u8::from_str_radix(&line[k + 7..k + 9], 16).unwrap();
            assert_eq!(
                format!("{:?}", Kind::from_wire(code).unwrap()),
                name,
                "{line}"
            );
        }
        let (header, rows) = table_after(&lines, i);
        assert_eq!(header[..4], ["Offset", "Size", "Type", "Field"], "{line}");
        let mut next = 0;
        for row in &rows {
            let (offset, width) = (parse_u64(&row[0]) as usize, parse_u64(&row[1]) as usize);
            assert_eq!(offset, next, "{name}: a gap or overlap at {row:?}");
            let field = fields
                .iter()
                .find(|f| f.name == row[3])
                .unwrap_or_else(|| panic!("{name} has no field {:?}", row[3]));
            assert_eq!(
                (field.offset, field.size, field.ty.as_str()),
                (offset, width, row[2].as_str()),
                "{name}.{}",
                field.name
            );
            next += width;
        }
        assert_eq!(next, *size, "{name}: the rows do not cover the message");
        assert_eq!(rows.len(), fields.len(), "{name}: a field is missing");
        documented.push(name);
    }
    let mut expected: Vec<&str> = layouts.keys().copied().collect();
    documented.sort_unstable();
    expected.sort_unstable();
    assert_eq!(documented, expected, "one layout table per wire struct");
}

macro_rules! enum_values {
    ($ty:ty) => {
        (
            stringify!($ty),
            <$ty>::ALL
                .iter()
                .map(|v| (u64::from(v.to_wire()), format!("{v:?}")))
                .collect::<Vec<_>>(),
        )
    };
}

#[test]
fn every_enum_table_matches_the_type() {
    let doc = protocol_md();
    let lines: Vec<&str> = doc.lines().collect();
    let enums: BTreeMap<&str, Vec<(u64, String)>> = [
        enum_values!(Side),
        enum_values!(OrderType),
        enum_values!(TimeInForce),
        enum_values!(SelfTradePrevention),
        enum_values!(Liquidity),
        enum_values!(CancelReason),
        enum_values!(RejectReason),
        enum_values!(SessionErrorCode),
        enum_values!(OrderState),
        enum_values!(MdStatusEvent),
        enum_values!(AddressFamily),
        enum_values!(NodeState),
    ]
    .into_iter()
    .collect();
    let mut documented = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !(line.starts_with("### `") && (line.ends_with("(u8)") || line.ends_with("(u16)"))) {
            continue;
        }
        let name = backticked(line).unwrap();
        let values = enums
            .get(name)
            .unwrap_or_else(|| panic!("PROTOCOL.md documents unknown enum {name}"));
        let (header, rows) = table_after(&lines, i);
        assert_eq!(header[..2], ["Value", "Name"], "{line}");
        let got: Vec<(u64, String)> = rows
            .iter()
            .map(|r| (parse_u64(&r[0]), r[1].clone()))
            .collect();
        assert_eq!(&got, values, "{name}");
        documented.push(name);
    }
    let mut expected: Vec<&str> = enums.keys().copied().collect();
    documented.sort_unstable();
    expected.sort_unstable();
    assert_eq!(documented, expected, "one table per enum");
}

#[test]
fn the_document_states_the_limits_the_code_has() {
    let doc = protocol_md();
    assert_eq!(DEFAULT_MAX_FRAME_BYTES, 1_048_576);
    assert_eq!(MAX_FRAME_BYTES_LIMIT, 16_777_216);
    assert_eq!(HEADER_BYTES, 8);
    assert_eq!((PROTOCOL_VERSION_MIN, PROTOCOL_VERSION), (1, 2));
    assert_eq!(ALL_SYMBOLS, 0xffff_ffff);
    let power = |n: u64| format!("2^{} = {}", n.trailing_zeros(), thousands(n));
    for needle in [
        "1,048,576".to_string(),
        "16,777,216".to_string(),
        "65,535".to_string(),
        "a NewOrder is 32 bytes".to_string(),
        format!("protocol versions {PROTOCOL_VERSION_MIN} and {PROTOCOL_VERSION}"),
        format!("`protocol_version` {PROTOCOL_VERSION_MIN} or {PROTOCOL_VERSION}"),
        format!("best {CHECKSUM_LEVELS} asks"),
        "0xffffffff".to_string(),
        "`--md-max-queue`".to_string(),
        "4 MiB (4,194,304 bytes)".to_string(),
        // §2 and §8.5 give the quantity and price limits as powers of two.
        power(QUANTITY_MAX_LOTS),
        power(PRICE_MAX_TICKS as u64),
        format!(
            "clamped to **{}–{} ms**",
            thousands(u64::from(HEARTBEAT_INTERVAL_MIN_MS)),
            thousands(u64::from(HEARTBEAT_INTERVAL_MAX_MS))
        ),
        format!("**{} ×", IDLE_TIMEOUT_HEARTBEATS),
        format!("**{} heartbeat intervals**", IDLE_TIMEOUT_HEARTBEATS),
    ] {
        assert!(doc.contains(&needle), "PROTOCOL.md should say {needle:?}");
    }
}

/// `n` with a comma between groups of three digits, as the document writes numbers.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The rows of the table whose header line starts with `header_start`.
fn table_starting(doc: &str, header_start: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let lines: Vec<&str> = doc.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with(header_start))
        .unwrap_or_else(|| panic!("PROTOCOL.md has no table starting {header_start:?}"));
    table_after(&lines, at - 1)
}

#[test]
fn the_limits_table_gives_the_wire_constants() {
    let doc = protocol_md();
    let constants: BTreeMap<&str, u64> = [
        ("QUANTITY_MAX_LOTS", QUANTITY_MAX_LOTS),
        ("PRICE_MAX_TICKS", PRICE_MAX_TICKS as u64),
        (
            "HEARTBEAT_INTERVAL_MIN_MS",
            u64::from(HEARTBEAT_INTERVAL_MIN_MS),
        ),
        (
            "HEARTBEAT_INTERVAL_MAX_MS",
            u64::from(HEARTBEAT_INTERVAL_MAX_MS),
        ),
        (
            "DEFAULT_HEARTBEAT_INTERVAL_MS",
            u64::from(DEFAULT_HEARTBEAT_INTERVAL_MS),
        ),
        (
            "IDLE_TIMEOUT_HEARTBEATS",
            u64::from(IDLE_TIMEOUT_HEARTBEATS),
        ),
        ("MAX_MESSAGES_PER_FRAME", MAX_MESSAGES_PER_FRAME as u64),
        (
            "DEFAULT_MAX_FRAME_BYTES",
            u64::from(DEFAULT_MAX_FRAME_BYTES),
        ),
        ("MAX_FRAME_BYTES_LIMIT", u64::from(MAX_FRAME_BYTES_LIMIT)),
        ("CHECKSUM_LEVELS", CHECKSUM_LEVELS as u64),
        ("CANCEL_AFTER_MIN_MS", u64::from(CANCEL_AFTER_MIN_MS)),
        ("CANCEL_AFTER_MAX_MS", u64::from(CANCEL_AFTER_MAX_MS)),
    ]
    .into_iter()
    .collect();
    let (header, rows) = table_starting(&doc, "| Limit | Value |");
    assert_eq!(header[..3], ["Limit", "Value", "wire constant"]);
    let mut documented = Vec::new();
    for row in &rows {
        let name = row[2].as_str();
        if name == "—" {
            continue;
        }
        let want = *constants
            .get(name)
            .unwrap_or_else(|| panic!("{row:?}: no wire constant {name}"));
        let value = row[1].split(' ').next().map(parse_u64).unwrap();
        assert_eq!(value, want, "{row:?}");
        // "(2^N)" after the value must be the same number.
        if let Some(p) = row[1].find("(2^") {
            let n: u32 = row[1][p + 3..].trim_end_matches(')').parse().unwrap();
            assert_eq!(1u64 << n, want, "{row:?}");
        }
        documented.push(name);
    }
    let expected: Vec<&str> = constants.keys().copied().collect();
    documented.sort_unstable();
    assert_eq!(documented, expected, "one row per limit constant");
    // The heartbeat rule §8.1 states, at its edges.
    let d = DEFAULT_HEARTBEAT_INTERVAL_MS;
    assert_eq!(granted_heartbeat_ms(0, d), d);
    assert_eq!(granted_heartbeat_ms(99, d), 100);
    assert_eq!(granted_heartbeat_ms(60_001, d), 60_000);
}

/// One session error built by the `wire` crate, what it must carry, and
/// words the §9.1 row of its code must contain in its `kind` and `detail`
/// cells.
struct DetailCase {
    error: SessionError,
    decode: DecodeError,
    code: SessionErrorCode,
    kind: u8,
    detail: u32,
    kind_words: &'static str,
    detail_words: &'static str,
}

#[test]
fn session_error_kinds_and_details_are_what_section_9_1_says() {
    let doc = protocol_md();
    let (header, rows) = table_starting(&doc, "| Code | `kind` | `detail` |");
    assert_eq!(header, ["Code", "kind", "detail"]);
    let codes: Vec<u64> = rows
        .iter()
        .map(|r| parse_u64(r[0].split(' ').next().unwrap()))
        .collect();
    let all: Vec<u64> = SessionErrorCode::ALL
        .iter()
        .map(|c| u64::from(c.to_wire()))
        .collect();
    assert_eq!(codes, all, "one row per session error code, in order");

    let mut hello = Hello::new(1, HELLO_CANCEL_ON_DISCONNECT, 0, "");
    hello.flags = (HELLO_CANCEL_ON_DISCONNECT | 0x0006).into();
    let reserved = hello.validate().unwrap_err();
    let from = |decode: DecodeError| (SessionError::from_decode_error(&decode), decode);
    let cases = [
        (
            from(DecodeError::LengthTooSmall { length: 5 }),
            SessionErrorCode::MalformedFrame,
            0,
            5,
            "0",
            "The `length` received",
        ),
        (
            from(DecodeError::FrameTooLarge {
                length: 2_000_000,
                max_frame_bytes: 1 << 20,
            }),
            SessionErrorCode::FrameTooLarge,
            0,
            2_000_000,
            "0",
            "The `length` received",
        ),
        (
            from(DecodeError::UnknownKind { kind: 0x42 }),
            SessionErrorCode::UnknownKind,
            0x42,
            0x42,
            "The kind received",
            "The kind received",
        ),
        (
            from(DecodeError::UnsupportedVersion {
                version: 7,
                supported: PROTOCOL_VERSION,
            }),
            SessionErrorCode::UnsupportedVersion,
            0,
            7,
            "0 for a frame header",
            "The version received",
        ),
        (
            from(DecodeError::BadCount {
                kind: 0x02,
                count: 3,
                length: 9,
                message_bytes: 32,
            }),
            SessionErrorCode::BadCount,
            0x02,
            3,
            "The frame's kind",
            "The `count` received",
        ),
        (
            from(DecodeError::CountMustBeOne {
                kind: 0x01,
                count: 2,
            }),
            SessionErrorCode::BadCount,
            0x01,
            2,
            "The frame's kind",
            "The `count` received",
        ),
        (
            (
                SessionError::invalid_field(Kind::Hello, &reserved),
                reserved,
            ),
            SessionErrorCode::InvalidField,
            0x01,
            0x0006,
            "0x01",
            "The reserved `Hello.flags` bits that were set",
        ),
    ]
    .map(
        |((error, decode), code, kind, detail, kind_words, detail_words)| DetailCase {
            error,
            decode,
            code,
            kind,
            detail,
            kind_words,
            detail_words,
        },
    );
    for case in cases {
        let DetailCase {
            error: e, decode, ..
        } = case;
        assert_eq!(
            (e.code(), e.kind, e.detail.get(), decode.detail()),
            (Ok(case.code), case.kind, case.detail, case.detail),
            "{decode:?}"
        );
        assert_eq!(decode.session_error_code(), case.code, "{decode:?}");
        let row = rows
            .iter()
            .find(|r| r[0].split(' ').next().map(parse_u64) == Some(u64::from(case.code.to_wire())))
            .unwrap();
        // The cell starts with the words, and they end there ("0" is not "0x01").
        let says = |cell: &str, words: &str| {
            let words = words.replace('`', "");
            cell.strip_prefix(words.as_str())
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_alphanumeric()))
        };
        assert!(
            says(&row[1], case.kind_words),
            "§9.1 row {row:?}: `kind` should say {:?}",
            case.kind_words
        );
        assert!(
            says(&row[2], case.detail_words),
            "§9.1 row {row:?}: `detail` should say {:?}",
            case.detail_words
        );
    }
}

#[test]
fn the_reserved_fields_table_is_complete_and_matches_the_checks() {
    let doc = protocol_md();
    let layouts = layouts();
    let (header, rows) = table_starting(&doc, "| Message | Field | Reserved mask |");
    assert_eq!(
        header,
        [
            "Message",
            "Field",
            "Reserved mask",
            "Checked",
            "A non-zero value gets"
        ]
    );
    // Every reserved field and flags field of a client message has a row.
    let mut expected = Vec::new();
    for kind in Kind::ALL {
        if kind.direction() != Direction::ToServer {
            continue;
        }
        let name = format!("{kind:?}");
        for f in &layouts[name.as_str()].1 {
            if f.name == "reserved" || f.name == "flags" {
                expected.push((name.clone(), f.name.to_string()));
            }
        }
    }
    let documented: Vec<(String, String)> =
        rows.iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    assert_eq!(documented, expected, "one row per reserved or flags field");

    for row in &rows {
        let (message, field) = (row[0].as_str(), row[1].as_str());
        let mask = parse_u64(&row[2]);
        let f = layouts[message].1.iter().find(|f| f.name == field).unwrap();
        let width_mask = u64::MAX >> (64 - 8 * f.size);
        assert_eq!(mask & !width_mask, 0, "{row:?}: mask wider than the field");
        if field == "reserved" {
            assert_eq!(
                mask, width_mask,
                "{row:?}: a reserved field is all reserved"
            );
        }
        match row[3].as_str() {
            "yes" => {
                for bit in 0..8 * f.size {
                    let value = 1u64 << bit;
                    let reserved = mask & value != 0;
                    let got = match message {
                        "Hello" => {
                            let mut h = Hello::new(1, 0, 0, "");
                            h.flags = (value as u16).into();
                            h.validate().err()
                        }
                        "NewOrder" => {
                            let mut o = NewOrder::limit(1, 0, Side::Buy, 1, 1);
                            o.flags = value as u8;
                            o.fields().err()
                        }
                        // No check in the crate: a version 2 server refuses
                        // the bits outside `SUBSCRIBE_FLAGS_KNOWN`.
                        "Subscribe" => (value as u32 & !SUBSCRIBE_FLAGS_KNOWN != 0).then_some(
                            DecodeError::ReservedBits {
                                field: "subscribe.flags",
                                value,
                            },
                        ),
                        "MassCancel" => {
                            let mut m = MassCancel::new(1, 0);
                            m.flags = (value as u32).into();
                            m.validate().err()
                        }
                        "CancelAfter" => {
                            let mut m = CancelAfter::new(1_000);
                            m.reserved = (value as u32).into();
                            m.validate().err()
                        }
                        other => panic!("{row:?}: no check in the wire crate for {other}"),
                    };
                    let want = reserved.then_some(DecodeError::ReservedBits {
                        field: match message {
                            "Hello" => "hello.flags",
                            "Subscribe" => "subscribe.flags",
                            "MassCancel" => "mass_cancel.flags",
                            "CancelAfter" => "cancel_after.reserved",
                            _ => "new_order.flags",
                        },
                        value,
                    });
                    assert_eq!(got, want, "{message}.{field} bit {bit}");
                    if let Some(e) = got {
                        assert_eq!(u64::from(e.detail()), value);
                    }
                }
            }
            "no" => assert!(row[4].starts_with("Ignored"), "{row:?}"),
            other => panic!("{row:?}: Checked is yes or no, not {other:?}"),
        }
    }
    let invalid_field = rows.iter().find(|r| r[0] == "Hello").unwrap();
    assert!(invalid_field[4].contains("SessionError(InvalidField)"));
    let invalid_flags = rows.iter().find(|r| r[0] == "NewOrder").unwrap();
    assert!(invalid_flags[4].starts_with(&format!("Rejected({:?})", RejectReason::InvalidFlags)));
    let subscribe = rows.iter().find(|r| r[0] == "Subscribe").unwrap();
    assert!(subscribe[4].starts_with(&format!(
        "Version 2: Rejected({:?})",
        RejectReason::InvalidFlags
    )));
}

/// The bit tables of §7 (`### `X.flags` (uN bits)`): every bit of the field
/// is in exactly one row, the `Bit` column names the bits of the `Mask`
/// column, and the rows that are not reserved are the crate's constants.
#[test]
fn the_bit_tables_match_the_constants() {
    let doc = protocol_md();
    let lines: Vec<&str> = doc.lines().collect();
    let known: BTreeMap<&str, (u32, Vec<u64>)> = [
        (
            "Hello.flags",
            (16, vec![u64::from(HELLO_CANCEL_ON_DISCONNECT)]),
        ),
        (
            "NewOrder.flags",
            (8, vec![u64::from(ORDER_POST_ONLY), 0b11 << ORDER_STP_SHIFT]),
        ),
        (
            "Replaced.flags",
            (8, vec![u64::from(REPLACED_PRIORITY_KEPT)]),
        ),
        (
            "Subscribe.flags",
            (
                32,
                [
                    SUBSCRIBE_TRADES,
                    SUBSCRIBE_TOP_OF_BOOK,
                    SUBSCRIBE_DEPTH,
                    SUBSCRIBE_CONFLATE,
                ]
                .map(u64::from)
                .to_vec(),
            ),
        ),
        ("MdDepth.flags", (8, vec![u64::from(MD_DEPTH_SNAPSHOT)])),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        u64::from(SUBSCRIBE_FLAGS_KNOWN),
        known["Subscribe.flags"].1.iter().sum::<u64>()
    );
    let mut documented = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !(line.starts_with("### `") && line.ends_with(" bits)")) {
            continue;
        }
        let name = backticked(line).unwrap();
        let (width, masks) = known
            .get(name)
            .unwrap_or_else(|| panic!("PROTOCOL.md documents unknown bits {name}"));
        assert!(line.ends_with(&format!("(u{width} bits)")), "{line}");
        let (header, rows) = table_after(&lines, i);
        assert_eq!(header[1], "Mask", "{line}");
        let mut covered = 0u64;
        let mut defined = Vec::new();
        for row in &rows {
            let mask = parse_u64(&row[1]);
            assert_eq!(covered & mask, 0, "{name}: {row:?} overlaps");
            covered |= mask;
            let (low, high) = match row[0].split_once('–') {
                Some((a, b)) => (parse_u64(a), parse_u64(b)),
                None => (parse_u64(&row[0]), parse_u64(&row[0])),
            };
            let bits = (u64::MAX >> (63 - high)) & !((1u64 << low) - 1);
            assert_eq!(bits, mask, "{name}: {row:?}: the bits are not the mask");
            if !row[2].starts_with("Reserved") {
                defined.push(mask);
            }
        }
        assert_eq!(
            covered,
            u64::MAX >> (64 - width),
            "{name}: every bit has a row"
        );
        assert_eq!(&defined, masks, "{name}");
        documented.push(name);
    }
    let expected: Vec<&str> = known.keys().copied().collect();
    documented.sort_unstable();
    assert_eq!(documented, expected, "one table per bit field");
}

// ---------------------------------------------------------------------------
// Worked examples
// ---------------------------------------------------------------------------

/// The example Hello: account 42, cancel-on-disconnect, 1 s heartbeats,
/// speaking `version` (1 or 2) in the Hello and in the frame header.
fn example_hello(version: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut hello = Hello::new(42, HELLO_CANCEL_ON_DISCONNECT, 1_000, "secret");
    hello.protocol_version = u16::from(version).into();
    let mut w = FrameWriter::new(&mut out).with_version(version);
    w.push(&hello);
    w.finish();
    out
}

/// The example batch, in a version 1 session: a GTC limit buy and an IOC
/// limit sell with cancel-resting self-trade prevention, on symbol 7.
fn example_orders() -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = FrameWriter::new(&mut out).with_version(1);
    w.push(&NewOrder::limit(1, 7, Side::Buy, 10_050, 100));
    w.push(&NewOrder::new(
        2,
        7,
        Side::Sell,
        OrderType::Limit,
        TimeInForce::Ioc,
        false,
        SelfTradePrevention::CancelResting,
        10_040,
        25,
    ));
    w.finish();
    out
}

/// The market-data examples, all of symbol 7 in a version 2 session: the
/// book holds one bid order of 5 lots at 100 and two ask orders of 7 lots
/// in all at 101, and the symbol's sequence number is 41.
const MD_SYMBOL: u32 = 7;
/// The engine time of the snapshot (2025-12-02 00:00:00 UTC).
const MD_NS: u64 = 1_764_633_600_000_000_000;
/// The engine time of the trade, 1.5 ms later.
const MD_TRADE_NS: u64 = MD_NS + 1_500_000;

/// One frame of `msgs` as a version 2 server writes it.
fn v2_frame<M: Message>(msgs: &[M]) -> Vec<u8> {
    let mut b = FrameBuf::default();
    b.set_version(2);
    b.push_all(msgs);
    b.as_bytes().to_vec()
}

fn example_subscribe() -> Vec<u8> {
    v2_frame(&[Subscribe::new(
        MD_SYMBOL,
        SUBSCRIBE_TRADES | SUBSCRIBE_TOP_OF_BOOK | SUBSCRIBE_DEPTH,
    )])
}

fn example_snapshot_rows() -> Vec<u8> {
    v2_frame(&[
        MdDepth::new(MD_SYMBOL, Side::Buy, true, 41, MD_NS, 100, 5, 1),
        MdDepth::new(MD_SYMBOL, Side::Sell, true, 41, MD_NS, 101, 7, 2),
    ])
}

fn example_snapshot_end() -> Vec<u8> {
    let checksum = book_checksum([(100, 5)], [(101, 7)]);
    v2_frame(&[MdStatus::new(
        MD_SYMBOL,
        MdStatusEvent::SnapshotEnd,
        41,
        MD_NS,
        checksum,
        2,
    )])
}

fn example_trade() -> Vec<u8> {
    v2_frame(&[MdTrade::new(
        MD_SYMBOL,
        Side::Sell,
        42,
        MD_TRADE_NS,
        9_001,
        100,
        2,
    )])
}

fn example_update() -> Vec<u8> {
    v2_frame(&[MdDepth::new(
        MD_SYMBOL,
        Side::Buy,
        false,
        43,
        MD_TRADE_NS,
        100,
        3,
        1,
    )])
}

fn example_top_of_book() -> Vec<u8> {
    let bid = TopLevel {
        price: 100,
        quantity: 3,
        orders: 1,
    };
    let ask = TopLevel {
        price: 101,
        quantity: 7,
        orders: 2,
    };
    v2_frame(&[MdTopOfBook::new(MD_SYMBOL, 43, MD_TRADE_NS, bid, ask)])
}

/// The cluster examples: a NewOrder for symbol 7 (shard 3 of 4) sent to a
/// node that does not own shard 3; node 0x2a owns it at 10.0.0.2:9000, in
/// version 12 of the map.
fn example_wrong_node() -> (Vec<u8>, Vec<u8>) {
    let rejected = v2_frame(&[Rejected::new(
        1,
        MD_SYMBOL,
        RejectReason::WrongNode,
        Kind::NewOrder,
    )]);
    let owner = v2_frame(&[ShardOwner::new(
        1,
        MD_SYMBOL,
        3,
        12,
        Some((0x2a, "10.0.0.2:9000".parse().unwrap())),
        Kind::NewOrder,
    )]);
    (rejected, owner)
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a field's value means, for the example tables.
fn note(message: &str, field: &str, value: u64) -> String {
    let name = |r: Result<&'static str, DecodeError>| r.map_or("?".to_string(), str::to_string);
    match (message, field) {
        ("Header", "kind") => format!(
            "0x{value:02x} = {:?}",
            Kind::from_wire(value as u8).unwrap()
        ),
        ("Hello", "flags") => format!("0x{value:04x} = cancel on disconnect"),
        ("NewOrder", "side") => format!(
            "{value} = {}",
            name(Side::from_wire(value as u8).map(Side::as_str))
        ),
        ("NewOrder", "order_type") => {
            format!(
                "{value} = {}",
                name(OrderType::from_wire(value as u8).map(OrderType::as_str))
            )
        }
        ("NewOrder", "time_in_force") => format!(
            "{value} = {}",
            name(TimeInForce::from_wire(value as u8).map(TimeInForce::as_str))
        ),
        ("Subscribe", "flags") => {
            let names: Vec<&str> = [
                (SUBSCRIBE_TRADES, "trades"),
                (SUBSCRIBE_TOP_OF_BOOK, "top of book"),
                (SUBSCRIBE_DEPTH, "depth"),
                (SUBSCRIBE_CONFLATE, "conflate"),
            ]
            .into_iter()
            .filter(|&(bit, _)| value as u32 & bit != 0)
            .map(|(_, name)| name)
            .collect();
            format!("0x{value:08x} = {}", names.join(", "))
        }
        ("MdTrade", "aggressor_side") | ("MdDepth", "side") => format!(
            "{value} = {}",
            name(Side::from_wire(value as u8).map(Side::as_str))
        ),
        ("MdDepth", "flags") if value as u8 == MD_DEPTH_SNAPSHOT => {
            format!("0x{value:02x} = snapshot row")
        }
        ("MdDepth", "flags") => format!("0x{value:02x} = update"),
        ("MdStatus", "event") => format!(
            "{value} = {}",
            name(MdStatusEvent::from_wire(value as u8).map(MdStatusEvent::as_str))
        ),
        ("MdStatus", "checksum") => format!("0x{value:08x}"),
        ("Rejected", "reason") => format!(
            "{value} = {}",
            RejectReason::from_wire(value as u16).map_or("?".to_string(), |r| format!("{r:?}"))
        ),
        ("Rejected" | "ShardOwner", "request_kind") => {
            format!("{value} = {:?}", Kind::from_wire(value as u8).unwrap())
        }
        ("ShardOwner", "family") => format!(
            "{value} = {}",
            name(AddressFamily::from_wire(value as u8).map(AddressFamily::as_str))
        ),
        ("NewOrder", "flags") => format!(
            "0x{value:02x} = self-trade prevention {}",
            name(
                SelfTradePrevention::from_wire((value >> ORDER_STP_SHIFT) as u8 & 3)
                    .map(SelfTradePrevention::as_str)
            )
        ),
        _ => value.to_string(),
    }
}

/// Renders a frame as a hex dump (16 bytes a line) and a table of its
/// fields, with each value read back from the bytes.
fn render(title: &str, frame: &[u8]) -> String {
    let layouts = layouts();
    let kind = Kind::from_wire(frame[4]).unwrap();
    let kind_name = format!("{kind:?}");
    let mut s = format!("{title} ({} bytes):\n\n```text\n", frame.len());
    for line in frame.chunks(16) {
        s += &format!("{}\n", hex(line));
    }
    s += "```\n\n| Offset | Bytes | Field | Value |\n|---:|---|---|---|\n";
    let mut row = |offset: usize, message: &str, label: &str, f: &Field| {
        let bytes = &frame[offset..offset + f.size];
        let shown = if bytes.len() > 8 {
            format!("{} … ({} bytes)", hex(&bytes[..8]), bytes.len())
        } else {
            hex(bytes)
        };
        let value = if f.name.starts_with("reserved") && bytes.iter().all(|&b| b == 0) {
            "0".to_string()
        } else if f.name == "address" {
            format!(
                "{}.{}.{}.{}, then 12 zero bytes",
                bytes[0], bytes[1], bytes[2], bytes[3]
            )
        } else if f.ty.starts_with("u8[") {
            let text = bytes.split(|&b| b == 0).next().unwrap_or_default();
            format!("\"{}\", NUL-padded", String::from_utf8_lossy(text))
        } else {
            let mut le = [0u8; 8];
            le[..bytes.len()].copy_from_slice(bytes);
            let v = u64::from_le_bytes(le);
            if f.ty == "i64" {
                (v as i64).to_string()
            } else {
                note(message, f.name, v)
            }
        };
        s += &format!("| {offset} | `{shown}` | {label} | {value} |\n");
    };
    for f in &layouts["Header"].1 {
        row(f.offset, "Header", &format!("header.{}", f.name), f);
    }
    let (size, fields) = &layouts[kind_name.as_str()];
    let count = (frame.len() - HEADER_BYTES) / size;
    for i in 0..count {
        let base = HEADER_BYTES + i * size;
        for f in fields {
            let label = if count > 1 {
                format!("[{i}].{}", f.name)
            } else {
                f.name.to_string()
            };
            row(base + f.offset, &kind_name, &label, f);
        }
    }
    s
}

#[test]
fn hex_examples_are_the_bytes_the_encoder_writes() {
    let doc = protocol_md();
    let hello_v1 = example_hello(1);
    let hello_v2 = example_hello(2);
    let orders = example_orders();
    // The examples decode to what they say.
    for (bytes, version) in [(&hello_v1, 1), (&hello_v2, 2)] {
        let Ok(Decoded::Frame(Frame::Hello(h), 56)) = Decoder::for_server(1 << 20).decode(bytes)
        else {
            panic!("the Hello example is one 56-byte frame");
        };
        assert_eq!(
            (h[0].account.get(), h[0].credentials()),
            (42, &b"secret"[..])
        );
        assert_eq!(h[0].validate(), Ok(()));
        assert_eq!(
            (bytes[5], h[0].protocol_version.get()),
            (version, u16::from(version))
        );
    }
    let Ok(Decoded::Frame(Frame::NewOrder(o), 72)) = Decoder::for_server(1 << 20).decode(&orders)
    else {
        panic!("the NewOrder example is one 72-byte frame");
    };
    assert_eq!(o.len(), 2);
    assert!(o.iter().all(|o| o.fields().is_ok()));
    assert_eq!(&orders[HEADER_BYTES..], o.as_bytes());
    let market_data = [
        example_snapshot_rows(),
        example_snapshot_end(),
        example_trade(),
        example_update(),
        example_top_of_book(),
    ];
    for bytes in &market_data {
        assert!(matches!(
            Decoder::for_client(1 << 20).decode(bytes),
            Ok(Decoded::Frame(_, n)) if n == bytes.len()
        ));
        assert_eq!(bytes[5], 2);
    }

    for block in [
        render("A version 1 Hello frame", &hello_v1),
        render("A version 2 Hello frame", &hello_v2),
        render("A NewOrder frame with two orders", &orders),
        render("A Subscribe frame", &example_subscribe()),
        render("An MdDepth frame with two snapshot rows", &market_data[0]),
        render("An MdStatus frame (SnapshotEnd)", &market_data[1]),
        render("An MdTrade frame", &market_data[2]),
        render("An MdDepth frame with one update", &market_data[3]),
        render("An MdTopOfBook frame", &market_data[4]),
        render("A Rejected frame (WrongNode)", &example_wrong_node().0),
        render("A ShardOwner frame", &example_wrong_node().1),
    ] {
        assert!(
            doc.contains(&block),
            "PROTOCOL.md should contain this block exactly:\n\n{block}"
        );
    }
}

/// CRC-32 as §8.9 defines it, bit by bit: polynomial 0xEDB88320
/// (reflected), initial value 0xFFFFFFFF, final xor 0xFFFFFFFF.
fn crc32_reference(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    crc ^ 0xFFFF_FFFF
}

/// The checksum's worked example in §8.9 is what `book_checksum` gives, and
/// the definition the document gives is the one the crate computes.
#[test]
fn the_checksum_example_is_what_book_checksum_gives() {
    let doc = protocol_md();
    // The definition: the standard check value, and the empty book.
    assert_eq!(crc32_reference(b"123456789"), 0xCBF4_3926);
    assert_eq!(book_checksum([], []), 0);
    assert_eq!(crc32_reference(&[]), 0);
    // Asks best first, then bids best first, 16 bytes a level, 10 a side.
    let bids: Vec<(i64, u64)> = (0..12).map(|i| (100 - i, 5 + i as u64)).collect();
    let asks: Vec<(i64, u64)> = (0..12).map(|i| (101 + i, 7 + 2 * i as u64)).collect();
    let mut bytes = Vec::new();
    for (price, quantity) in asks.iter().take(10).chain(bids.iter().take(10)) {
        bytes.extend_from_slice(&price.to_le_bytes());
        bytes.extend_from_slice(&quantity.to_le_bytes());
    }
    assert_eq!(book_checksum(bids, asks), crc32_reference(&bytes));
    assert_eq!(
        book_checksum([], [(101, 7)]),
        crc32_reference(&bytes[..16]),
        "one side empty"
    );

    let mut bytes = Vec::new();
    for (price, quantity) in [(101i64, 7u64), (100, 5)] {
        bytes.extend_from_slice(&price.to_le_bytes());
        bytes.extend_from_slice(&quantity.to_le_bytes());
    }
    let checksum = book_checksum([(100, 5)], [(101, 7)]);
    assert_eq!(checksum, crc32_reference(&bytes));
    let mut block = String::from("```text\n");
    for line in bytes.chunks(16) {
        block += &format!("{}\n", hex(line));
    }
    block += &format!(
        "```\n\nCRC-32 of these 32 bytes: **0x{checksum:08x}** ({checksum}), sent as `{}`.",
        hex(&checksum.to_le_bytes())
    );
    assert!(
        doc.contains(&block),
        "PROTOCOL.md should contain this block exactly:\n\n{block}"
    );
    // §11's book after the example trade: 7 at 101, 3 at 100.
    let after_trade = format!("0x{:08x}.", book_checksum([(100, 3)], [(101, 7)]));
    assert!(
        doc.contains(&format!("3 lots at 100: {after_trade}")),
        "§11 should give the checksum {after_trade}"
    );
}
