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
    assert_eq!(seen, Kind::ALL, "one row per kind, in code order");
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
    assert_eq!(PROTOCOL_VERSION, 1);
    for needle in [
        "1,048,576",
        "16,777,216",
        "65,535",
        "a NewOrder is 32 bytes",
        "protocol version 1",
    ] {
        assert!(doc.contains(needle), "PROTOCOL.md should say {needle:?}");
    }
}

// ---------------------------------------------------------------------------
// Worked examples
// ---------------------------------------------------------------------------

/// The example Hello: account 42, cancel-on-disconnect, 1 s heartbeats.
fn example_hello() -> Vec<u8> {
    let mut out = Vec::new();
    let hello = Hello::new(42, HELLO_CANCEL_ON_DISCONNECT, 1_000, "secret");
    append_frame(&[hello], &mut out).unwrap();
    out
}

/// The example batch: a GTC limit buy and an IOC limit sell with
/// cancel-resting self-trade prevention, on symbol 7.
fn example_orders() -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = FrameWriter::new(&mut out);
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
        let value = if f.ty.starts_with("u8[") {
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
    let hello = example_hello();
    let orders = example_orders();
    // The examples decode to what they say.
    let Ok(Decoded::Frame(Frame::Hello(h), 56)) = Decoder::for_server(1 << 20).decode(&hello)
    else {
        panic!("the Hello example is one 56-byte frame");
    };
    assert_eq!(
        (h[0].account.get(), h[0].credentials()),
        (42, &b"secret"[..])
    );
    let Ok(Decoded::Frame(Frame::NewOrder(o), 72)) = Decoder::for_server(1 << 20).decode(&orders)
    else {
        panic!("the NewOrder example is one 72-byte frame");
    };
    assert_eq!(o.len(), 2);
    assert!(o.iter().all(|o| o.fields().is_ok()));
    assert_eq!(&orders[HEADER_BYTES..], o.as_bytes());

    for block in [
        render("A Hello frame", &hello),
        render("A NewOrder frame with two orders", &orders),
    ] {
        assert!(
            doc.contains(&block),
            "PROTOCOL.md should contain this block exactly:\n\n{block}"
        );
    }
}
