//! How fast one session may enter orders: a token bucket, with the time
//! passed in (no clock here), and the flood rule that ends a session that
//! keeps sending past it.
//!
//! NewOrders and Replaces take a token each; Cancels, OrderQueries,
//! MassCancels and Heartbeats are free, as at most venues (a client must
//! always be able to take risk off). A request without a token is
//! answered `Rejected(RateLimited)` and not acted on: a burst past the
//! limit costs the client those requests, never the connection. Only a
//! sustained flood (more than `flood_rejects` rate-limited requests within
//! `flood_window_ms`) closes the session, with a SessionError saying so.

/// A session's order entry limits. The server takes them from its flags
/// for every session today ([`crate::server::Config`]); they live per
/// session so that per-account overrides can set them at logon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderEntryLimits {
    /// NewOrders and Replaces per second, sustained; 0: no limit (the
    /// default, so that benchmarks measure the engine, not the limiter).
    pub orders_per_second: u64,
    /// The bucket's size: how many may arrive at once after a quiet
    /// period. At least 1 when a rate is set.
    pub burst: u32,
    /// Rate-limited requests within one window that close the session
    /// (0: never close).
    pub flood_rejects: u32,
    /// The window the flood rule counts over.
    pub flood_window_ms: u32,
}

impl OrderEntryLimits {
    /// No limit at all.
    pub const UNLIMITED: OrderEntryLimits = OrderEntryLimits {
        orders_per_second: 0,
        burst: DEFAULT_ORDER_BURST,
        flood_rejects: DEFAULT_FLOOD_REJECTS,
        flood_window_ms: FLOOD_WINDOW_MS,
    };

    /// True when a rate is set.
    #[inline]
    pub fn limited(&self) -> bool {
        self.orders_per_second > 0
    }
}

impl Default for OrderEntryLimits {
    fn default() -> Self {
        OrderEntryLimits::UNLIMITED
    }
}

/// `--order-burst`'s default: more than one frame of the most messages a
/// frame can hold (65,535), so that a client batching at full size is
/// never refused for the burst alone.
pub const DEFAULT_ORDER_BURST: u32 = 100_000;

/// `--order-flood-rejects`'s default, per [`FLOOD_WINDOW_MS`].
pub const DEFAULT_FLOOD_REJECTS: u32 = 100_000;

/// The window of the flood rule.
pub const FLOOD_WINDOW_MS: u32 = 1_000;

/// Units of one token: the bucket counts in billionths of a token, so that
/// a rate of N per second adds exactly N units per nanosecond.
const UNITS_PER_TOKEN: u64 = 1_000_000_000;

/// One session's bucket and flood counter. Small and `Copy`, like the
/// session it lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    /// Tokens left, in [`UNITS_PER_TOKEN`]ths.
    units: u64,
    /// When `units` was last brought up to date.
    refilled_ns: u64,
    /// Rate-limited requests in the current flood window.
    rejected: u32,
    /// When the current flood window began.
    window_start_ns: u64,
}

/// What [`TokenBucket::take`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Go ahead (a token was taken, or there is no limit).
    Yes,
    /// `Rejected(RateLimited)`.
    RateLimited,
    /// `Rejected(RateLimited)`, and the session has flooded: close it.
    Flood,
}

impl TokenBucket {
    /// A full bucket at `now_ns` (a session starts with its whole burst).
    pub fn full(limits: &OrderEntryLimits, now_ns: u64) -> TokenBucket {
        TokenBucket {
            units: u64::from(limits.burst).saturating_mul(UNITS_PER_TOKEN),
            refilled_ns: now_ns,
            rejected: 0,
            window_start_ns: now_ns,
        }
    }

    /// Tokens left now (whole ones), for tests.
    #[cfg(test)]
    pub fn tokens(&self) -> u64 {
        self.units / UNITS_PER_TOKEN
    }

    /// Brings the bucket up to `now_ns` and says whether a token is there
    /// (without taking it): the session layer asks first, because a
    /// refusal is an answer that may have to wait for earlier ones.
    #[inline]
    pub fn ready(&mut self, limits: &OrderEntryLimits, now_ns: u64) -> bool {
        if !limits.limited() {
            return true;
        }
        let cap = u64::from(limits.burst.max(1)).saturating_mul(UNITS_PER_TOKEN);
        // A clock that went back (it should not) refills nothing.
        let elapsed = now_ns.saturating_sub(self.refilled_ns);
        self.units = self
            .units
            .saturating_add(elapsed.saturating_mul(limits.orders_per_second))
            .min(cap);
        self.refilled_ns = self.refilled_ns.max(now_ns);
        self.units >= UNITS_PER_TOKEN
    }

    /// Takes one token at `now_ns` for a NewOrder or Replace.
    #[inline]
    pub fn take(&mut self, limits: &OrderEntryLimits, now_ns: u64) -> Admit {
        if !limits.limited() {
            return Admit::Yes;
        }
        if self.ready(limits, now_ns) {
            self.units -= UNITS_PER_TOKEN;
            return Admit::Yes;
        }
        let window_ns = u64::from(limits.flood_window_ms) * 1_000_000;
        if now_ns.saturating_sub(self.window_start_ns) >= window_ns {
            self.window_start_ns = now_ns;
            self.rejected = 0;
        }
        self.rejected = self.rejected.saturating_add(1);
        if limits.flood_rejects > 0 && self.rejected > limits.flood_rejects {
            Admit::Flood
        } else {
            Admit::RateLimited
        }
    }

    /// Rate-limited requests counted in the current window.
    #[cfg(test)]
    pub fn rejected_in_window(&self) -> u32 {
        self.rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn limits(rate: u64, burst: u32, flood: u32) -> OrderEntryLimits {
        OrderEntryLimits {
            orders_per_second: rate,
            burst,
            flood_rejects: flood,
            flood_window_ms: 1_000,
        }
    }

    #[test]
    fn without_a_rate_everything_passes() {
        let l = OrderEntryLimits::UNLIMITED;
        let mut b = TokenBucket::full(&l, 0);
        for _ in 0..1_000_000 {
            assert_eq!(b.take(&l, 0), Admit::Yes);
        }
    }

    #[test]
    fn a_burst_passes_then_the_rate_refills_exactly() {
        let l = limits(1_000, 10, 0);
        let mut b = TokenBucket::full(&l, 5 * MS);
        for _ in 0..10 {
            assert_eq!(b.take(&l, 5 * MS), Admit::Yes);
        }
        assert_eq!(b.take(&l, 5 * MS), Admit::RateLimited);
        // 1,000/s: one token per millisecond, not before.
        assert_eq!(b.take(&l, 6 * MS - 1), Admit::RateLimited);
        assert_eq!(b.take(&l, 6 * MS), Admit::Yes);
        assert_eq!(b.take(&l, 6 * MS), Admit::RateLimited);
        // A long pause refills to the burst, no further.
        assert_eq!(b.take(&l, 10_000 * MS), Admit::Yes);
        assert_eq!(b.tokens(), 9);
    }

    #[test]
    fn rates_that_do_not_divide_a_second_are_exact_over_time() {
        // Burst 2, so that the cap never cuts a fraction of a token.
        let l = limits(3, 2, 0);
        let mut b = TokenBucket::full(&l, 0);
        assert_eq!(b.take(&l, 0), Admit::Yes);
        assert_eq!(b.take(&l, 0), Admit::Yes);
        let mut passed = 0;
        // One attempt per millisecond for 10 s at 3/s: 30 pass.
        for t in 1..=10_000 {
            if b.take(&l, t * MS) == Admit::Yes {
                passed += 1;
            }
        }
        assert_eq!(passed, 30);
    }

    #[test]
    fn only_a_sustained_flood_asks_for_a_close() {
        let l = limits(1_000, 5, 100);
        let mut b = TokenBucket::full(&l, 0);
        for _ in 0..5 {
            assert_eq!(b.take(&l, 0), Admit::Yes);
        }
        // 100 rate-limited requests within a second are tolerated...
        for _ in 0..100 {
            assert_eq!(b.take(&l, 0), Admit::RateLimited);
        }
        // ...a new window starts the count again (the bucket refilled to
        // its burst meanwhile)...
        for _ in 0..5 {
            assert_eq!(b.take(&l, 1_000 * MS), Admit::Yes);
        }
        for _ in 0..100 {
            assert_eq!(b.take(&l, 1_000 * MS), Admit::RateLimited);
        }
        assert_eq!(b.rejected_in_window(), 100);
        // ...and the 101st within one window is a flood.
        assert_eq!(b.take(&l, 1_000 * MS), Admit::Flood);
    }

    #[test]
    fn huge_rates_and_times_do_not_overflow() {
        let l = limits(u64::MAX, u32::MAX, 0);
        let mut b = TokenBucket::full(&l, 0);
        assert_eq!(b.take(&l, u64::MAX), Admit::Yes);
        assert_eq!(b.take(&l, 0), Admit::Yes);
    }
}
