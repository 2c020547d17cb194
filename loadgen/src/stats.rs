//! Counters and latency histograms of a connection, and the summaries made
//! from them.

use hdrhistogram::Histogram;
use wire::RejectReason;

/// Latencies above this (one hour) are recorded as this.
pub const LATENCY_NS_MAX: u64 = 3_600_000_000_000;
/// Significant decimal digits the histograms keep (0.1% resolution).
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;
/// Slots of [`Counters::rejects_by_reason`]: the reason's wire value indexes
/// it; values above the known reasons land in slot 0 ("unknown").
pub const REJECT_REASON_SLOTS: usize = 32;

/// An empty latency histogram in nanoseconds, 1 ns to one hour, 3 digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, LATENCY_SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid (low 1, high > 2 * low, 3 digits)")
}

/// What a connection sent and received. Monotonic: a window's figures are
/// the difference of two snapshots ([`Counters::since`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    /// Requests sent: new orders, cancels and replaces.
    pub orders_sent: u64,
    /// New orders sent.
    pub new_orders: u64,
    /// Cancels sent.
    pub cancels: u64,
    /// Replaces sent.
    pub replaces: u64,
    /// Reports received (every message of every server frame after the handshake).
    pub reports: u64,
    /// Accepted reports.
    pub accepted: u64,
    /// Fill reports (maker and taker).
    pub fills: u64,
    /// Trades: taker fills. Each trade has exactly one taker, so when the
    /// run's sessions are the only traders this counts every trade once.
    pub trades: u64,
    /// Canceled reports.
    pub canceled: u64,
    /// Replaced reports.
    pub replaced: u64,
    /// New orders the flow prices to take liquidity at once: IOC, FOK and
    /// market orders and GTC limits priced through the whole band (not the
    /// GTC orders near the mid, which only sometimes cross).
    pub crossing_orders: u64,
    /// Canceled reports with reason self-trade prevention (any order).
    pub self_trade_cancels: u64,
    /// Of those, the ones that canceled a crossing order.
    pub crossing_self_trade_cancels: u64,
    /// Canceled reports only a matching engine sends: IOC remainder, FOK
    /// unfilled, self-trade prevention, price band. The null engine never
    /// sends them, so with fills they tell a matching server.
    pub matching_cancels: u64,
    /// Rejected reports.
    pub rejects: u64,
    /// Rejected reports by reason wire value (slot 0: an unknown value).
    pub rejects_by_reason: [u64; REJECT_REASON_SLOTS],
    /// Rejected reports by the kind of request they refuse: new order,
    /// cancel, replace, anything else.
    pub rejects_by_request: [u64; 4],
    /// Reports that named no open order of this connection.
    pub stray_reports: u64,
    /// IOC, FOK or market orders accepted but never completed, forgotten
    /// when their slot was needed again.
    pub evicted: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            orders_sent: 0,
            new_orders: 0,
            cancels: 0,
            replaces: 0,
            reports: 0,
            accepted: 0,
            fills: 0,
            trades: 0,
            canceled: 0,
            replaced: 0,
            crossing_orders: 0,
            self_trade_cancels: 0,
            crossing_self_trade_cancels: 0,
            matching_cancels: 0,
            rejects: 0,
            rejects_by_reason: [0; REJECT_REASON_SLOTS],
            rejects_by_request: [0; 4],
            stray_reports: 0,
            evicted: 0,
        }
    }
}

impl Counters {
    /// Counts one reject of a request of kind `request_kind` (wire value).
    #[inline]
    pub fn reject(&mut self, reason_wire: u16, request_kind: u8) {
        self.rejects += 1;
        let kind = match request_kind {
            k if k == wire::Kind::NewOrder as u8 => 0,
            k if k == wire::Kind::Cancel as u8 => 1,
            k if k == wire::Kind::Replace as u8 => 2,
            _ => 3,
        };
        self.rejects_by_request[kind] += 1;
        let slot = usize::from(reason_wire);
        let slot = if slot < REJECT_REASON_SLOTS { slot } else { 0 };
        if let Some(c) = self.rejects_by_reason.get_mut(slot) {
            *c += 1;
        }
    }

    /// What was counted after `earlier` was taken.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut by_reason = [0; REJECT_REASON_SLOTS];
        for (i, c) in by_reason.iter_mut().enumerate() {
            *c = self.rejects_by_reason[i].saturating_sub(earlier.rejects_by_reason[i]);
        }
        let mut by_request = [0; 4];
        for (i, c) in by_request.iter_mut().enumerate() {
            *c = self.rejects_by_request[i].saturating_sub(earlier.rejects_by_request[i]);
        }
        Counters {
            rejects_by_request: by_request,
            orders_sent: self.orders_sent.saturating_sub(earlier.orders_sent),
            new_orders: self.new_orders.saturating_sub(earlier.new_orders),
            cancels: self.cancels.saturating_sub(earlier.cancels),
            replaces: self.replaces.saturating_sub(earlier.replaces),
            reports: self.reports.saturating_sub(earlier.reports),
            accepted: self.accepted.saturating_sub(earlier.accepted),
            fills: self.fills.saturating_sub(earlier.fills),
            trades: self.trades.saturating_sub(earlier.trades),
            canceled: self.canceled.saturating_sub(earlier.canceled),
            replaced: self.replaced.saturating_sub(earlier.replaced),
            crossing_orders: self.crossing_orders.saturating_sub(earlier.crossing_orders),
            self_trade_cancels: self
                .self_trade_cancels
                .saturating_sub(earlier.self_trade_cancels),
            crossing_self_trade_cancels: self
                .crossing_self_trade_cancels
                .saturating_sub(earlier.crossing_self_trade_cancels),
            matching_cancels: self
                .matching_cancels
                .saturating_sub(earlier.matching_cancels),
            rejects: self.rejects.saturating_sub(earlier.rejects),
            rejects_by_reason: by_reason,
            stray_reports: self.stray_reports.saturating_sub(earlier.stray_reports),
            evicted: self.evicted.saturating_sub(earlier.evicted),
        }
    }

    /// Adds another connection's counts.
    pub fn add(&mut self, other: &Counters) {
        self.orders_sent += other.orders_sent;
        self.new_orders += other.new_orders;
        self.cancels += other.cancels;
        self.replaces += other.replaces;
        self.reports += other.reports;
        self.accepted += other.accepted;
        self.fills += other.fills;
        self.trades += other.trades;
        self.canceled += other.canceled;
        self.replaced += other.replaced;
        self.crossing_orders += other.crossing_orders;
        self.self_trade_cancels += other.self_trade_cancels;
        self.crossing_self_trade_cancels += other.crossing_self_trade_cancels;
        self.matching_cancels += other.matching_cancels;
        self.rejects += other.rejects;
        for (c, o) in self
            .rejects_by_reason
            .iter_mut()
            .zip(other.rejects_by_reason)
        {
            *c += o;
        }
        for (c, o) in self
            .rejects_by_request
            .iter_mut()
            .zip(other.rejects_by_request)
        {
            *c += o;
        }
        self.stray_reports += other.stray_reports;
        self.evicted += other.evicted;
    }

    /// Rejects by the request they refuse, named, the non-zero ones only.
    pub fn rejects_by_request_named(&self) -> Vec<(&'static str, u64)> {
        ["new_order", "cancel", "replace", "other"]
            .into_iter()
            .zip(self.rejects_by_request)
            .filter(|&(_, c)| c > 0)
            .collect()
    }

    /// Rejects by reason, named, the non-zero ones only.
    pub fn rejects_named(&self) -> Vec<(String, u64)> {
        self.rejects_by_reason
            .iter()
            .enumerate()
            .filter(|&(_, &c)| c > 0)
            .map(|(i, &c)| {
                let name = RejectReason::from_wire(i as u16)
                    .map_or_else(|_| "unknown reason".to_string(), |r| r.as_str().to_string());
                (name, c)
            })
            .collect()
    }
}

/// Records latencies into two histograms: `total` (orders whose intended
/// send time is in the measured window) and `interval` (everything, for the
/// live line, emptied each time it is published). Equal consecutive values
/// are run-length counted before they reach a histogram: in closed loop a
/// whole batch is sent at one time and its reports arrive in one read, so a
/// batch of 2000 costs one histogram update, not 2000.
#[derive(Clone, Debug)]
pub struct LatencyRecorder {
    /// Latencies of measured orders, ns.
    pub total: Histogram<u64>,
    /// Latencies since the last publication, ns.
    pub interval: Histogram<u64>,
    run_value_ns: u64,
    run_count: u64,
    run_measured: bool,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        LatencyRecorder {
            total: new_histogram(),
            interval: new_histogram(),
            run_value_ns: 0,
            run_count: 0,
            run_measured: false,
        }
    }
}

impl LatencyRecorder {
    /// Records one latency.
    #[inline]
    pub fn record(&mut self, value_ns: u64, measured: bool) {
        if value_ns == self.run_value_ns && measured == self.run_measured {
            self.run_count += 1;
        } else {
            self.flush();
            self.run_value_ns = value_ns;
            self.run_measured = measured;
            self.run_count = 1;
        }
    }

    /// Moves the pending run into the histograms.
    #[inline]
    pub fn flush(&mut self) {
        if self.run_count > 0 {
            let v = self.run_value_ns.clamp(1, LATENCY_NS_MAX);
            self.interval.saturating_record_n(v, self.run_count);
            if self.run_measured {
                self.total.saturating_record_n(v, self.run_count);
            }
            self.run_count = 0;
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    /// Number of latencies recorded.
    pub samples: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// 99.99th percentile.
    pub p9999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Reads the percentiles of a nanosecond histogram (all zero when empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Percentiles {
            samples: h.len(),
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            p9999: us(h.value_at_quantile(0.9999)),
            max: us(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_counted_once_each_and_only_measured_ones_reach_total() {
        let mut r = LatencyRecorder::default();
        for _ in 0..1000 {
            r.record(5_000, true);
        }
        r.record(7_000, false);
        r.record(9_000, true);
        r.flush();
        assert_eq!(r.total.len(), 1001);
        assert_eq!(r.interval.len(), 1002);
        let p = Percentiles::of(&r.total);
        assert!((p.p50 - 5.0).abs() < 0.01, "{p:?}");
        assert!((p.max - 9.0).abs() < 0.01, "{p:?}");
        assert_eq!(Percentiles::of(&new_histogram()), Percentiles::default());
    }

    #[test]
    fn out_of_range_latencies_saturate() {
        let mut r = LatencyRecorder::default();
        r.record(0, true);
        r.record(LATENCY_NS_MAX * 10, true);
        r.flush();
        assert_eq!(r.total.len(), 2);
        assert!(r.total.max() >= LATENCY_NS_MAX);
    }

    #[test]
    fn counters_difference_and_sum() {
        let mut a = Counters {
            orders_sent: 10,
            ..Counters::default()
        };
        a.reject(RejectReason::BookFull.to_wire(), wire::Kind::NewOrder as u8);
        a.reject(999, wire::Kind::Replace as u8);
        let b = a;
        a.orders_sent = 25;
        a.reject(RejectReason::BookFull.to_wire(), wire::Kind::NewOrder as u8);
        let d = a.since(&b);
        assert_eq!(d.orders_sent, 15);
        assert_eq!(d.rejects, 1);
        let mut sum = d;
        sum.add(&b);
        assert_eq!(sum.orders_sent, 25);
        assert_eq!(
            sum.rejects_named(),
            vec![
                ("unknown reason".to_string(), 1),
                ("book full".to_string(), 2)
            ]
        );
        assert_eq!(
            sum.rejects_by_request_named(),
            vec![("new_order", 2), ("replace", 1)]
        );
    }
}
