//! The numbers a server enforces that a client must know before it sends
//! anything, and that the HelloAck does not carry: the largest quantity and
//! price, and the heartbeat and idle-timeout rules. PROTOCOL.md (§8.8)
//! states each of them, and `tests/protocol_doc.rs` checks the document
//! against these constants. They are the reference server's values: its
//! book (`ShardConfig::default`) and its session layer must use these
//! constants rather than literals of their own, so that the document, this
//! crate and the server cannot disagree.

/// Largest quantity, in lots, of a NewOrder or a Replace (2^40). It keeps a
/// price level's total (up to 2^20 orders of it per shard by default) far
/// from overflowing a `u64`; a larger quantity is `Rejected(InvalidQuantity)`.
pub const QUANTITY_MAX_LOTS: u64 = 1 << 40;

/// Largest limit price, in ticks, of a NewOrder or a Replace (2^52); the
/// smallest is 1. A price outside is `Rejected(InvalidPrice)`; a market
/// order's price field is not checked.
pub const PRICE_MAX_TICKS: i64 = 1 << 52;

/// Shortest heartbeat interval a server grants: a Hello asking for less
/// (but not 0) gets this.
pub const HEARTBEAT_INTERVAL_MIN_MS: u32 = 100;

/// Longest heartbeat interval a server grants: a Hello asking for more gets
/// this.
pub const HEARTBEAT_INTERVAL_MAX_MS: u32 = 60_000;

/// The reference server's heartbeat interval for a Hello that asks for 0
/// (its `--heartbeat-ms` default), and the interval its idle timeout counts
/// in before the Hello.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u32 = 1_000;

/// A session from which nothing arrives for this many heartbeat intervals
/// is closed with `SessionError(IdleTimeout)`.
pub const IDLE_TIMEOUT_HEARTBEATS: u32 = 3;

/// The heartbeat interval a server grants for a Hello's
/// `heartbeat_interval_ms`: `default_ms` for 0, else the request clamped to
/// [`HEARTBEAT_INTERVAL_MIN_MS`]..=[`HEARTBEAT_INTERVAL_MAX_MS`].
pub const fn granted_heartbeat_ms(requested_ms: u32, default_ms: u32) -> u32 {
    if requested_ms == 0 {
        default_ms
    } else if requested_ms < HEARTBEAT_INTERVAL_MIN_MS {
        HEARTBEAT_INTERVAL_MIN_MS
    } else if requested_ms > HEARTBEAT_INTERVAL_MAX_MS {
        HEARTBEAT_INTERVAL_MAX_MS
    } else {
        requested_ms
    }
}

const _: () = assert!(HEARTBEAT_INTERVAL_MIN_MS <= DEFAULT_HEARTBEAT_INTERVAL_MS);
const _: () = assert!(DEFAULT_HEARTBEAT_INTERVAL_MS <= HEARTBEAT_INTERVAL_MAX_MS);
// The idle timeout in ms is reported in a u32 (`SessionError.detail`).
const _: () = assert!(
    (HEARTBEAT_INTERVAL_MAX_MS as u64) * (IDLE_TIMEOUT_HEARTBEATS as u64) <= u32::MAX as u64
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_gets_the_default_for_0_and_a_clamped_interval_otherwise() {
        let default_ms = 2_500;
        for (requested, granted) in [
            (0, default_ms),
            (1, 100),
            (99, 100),
            (100, 100),
            (1_000, 1_000),
            (60_000, 60_000),
            (60_001, 60_000),
            (u32::MAX, 60_000),
        ] {
            assert_eq!(
                granted_heartbeat_ms(requested, default_ms),
                granted,
                "{requested}"
            );
        }
    }
}
