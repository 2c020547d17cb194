//! What the connections publish while they run, for the live line and for
//! `--admin`'s `/metrics`, and the Prometheus text that `/metrics` serves.
//!
//! No worker locks or makes a system call for this: each connection
//! stores its counters into its own [`Published`] atomics (one store per
//! figure, once per batch sent or read; the reject reasons only when a
//! reject came), and the admin thread loads them when scraped. Latency
//! reaches the metrics through the main thread: once a second it already
//! collects every connection's interval histogram for the live line, and
//! it folds that into [`LatencyBuckets`] here, a few dozen numbers behind a
//! mutex that only the main thread and the admin thread take.
//!
//! The figures are the process's, from the start of the run: warmup and
//! drain included (Prometheus counters start at zero with the process).
//! The `--json` report counts only the measured window, so with a warmup
//! its counts are smaller than the metrics' final values.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use tuning::admin::prom::Encoder;
use tuning::admin::{Handler, Response};
use wire::RejectReason;

use crate::stats::{Counters, REJECT_REASON_SLOTS, new_histogram};

/// Upper bounds of the `dex_trader_latency_seconds` buckets, nanoseconds:
/// 1-2.5-5 steps from 10 us to 1 s (a `+Inf` bucket follows). Fixed, so
/// that series from different runs and hosts can be summed.
pub const LATENCY_BUCKETS_NS: [u64; 16] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// What one connection publishes. Single writer (its connection), read by
/// the main thread once a second and by the admin thread when scraped.
/// Aligned so that two connections' stores never share a cache line.
#[repr(align(128))]
pub(crate) struct Published {
    pub(crate) orders_sent: AtomicU64,
    pub(crate) reports: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) trades: AtomicU64,
    pub(crate) rejects: AtomicU64,
    /// By reason wire value, as [`Counters::rejects_by_reason`].
    rejects_by_reason: [AtomicU64; REJECT_REASON_SLOTS],
    /// The connection failed (I/O error, session error, the server closing).
    pub(crate) failed: AtomicBool,
    /// Latencies since the main thread last took them (every 200 ms the
    /// connection adds its own; see `run.rs`).
    pub(crate) interval: Mutex<Histogram<u64>>,
}

impl Published {
    pub(crate) fn new() -> Self {
        Published {
            orders_sent: AtomicU64::new(0),
            reports: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            trades: AtomicU64::new(0),
            rejects: AtomicU64::new(0),
            rejects_by_reason: std::array::from_fn(|_| AtomicU64::new(0)),
            failed: AtomicBool::new(false),
            interval: Mutex::new(new_histogram()),
        }
    }

    /// Publishes `c`, the connection's counters since it started.
    #[inline]
    pub(crate) fn store(&self, c: &Counters) {
        self.orders_sent.store(c.orders_sent, Ordering::Relaxed);
        self.reports.store(c.reports, Ordering::Relaxed);
        self.accepted.store(c.accepted, Ordering::Relaxed);
        self.trades.store(c.trades, Ordering::Relaxed);
        // Single writer: loading our own last store is only a cache hit,
        // and rejects are rare, so the 32 slots are stored only when one came.
        if self.rejects.load(Ordering::Relaxed) != c.rejects {
            for (slot, &n) in self.rejects_by_reason.iter().zip(&c.rejects_by_reason) {
                slot.store(n, Ordering::Relaxed);
            }
            // After the reasons: a reader that sees the total sees them too
            // (Release/Acquire), so reasons never sum above the total it read.
            self.rejects.store(c.rejects, Ordering::Release);
        }
    }
}

/// Cumulative latency counts in the fixed [`LATENCY_BUCKETS_NS`] (not
/// cumulative across buckets: `counts[i]` is the observations in bucket
/// `i` alone; the last slot is above the largest bound).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencyBuckets {
    /// Observations per bucket (the last: above 1 s).
    pub counts: [u64; LATENCY_BUCKETS_NS.len() + 1],
    /// Sum of the observations, nanoseconds (from the histogram's
    /// 0.1%-resolution values).
    pub sum_ns: f64,
    /// Observations in all.
    pub count: u64,
}

impl LatencyBuckets {
    /// Adds every latency recorded in `h` (nanoseconds).
    pub fn add(&mut self, h: &Histogram<u64>) {
        for v in h.iter_recorded() {
            let n = v.count_since_last_iteration();
            // The largest value this histogram slot stands for: a latency
            // is never counted in a bucket below its true value.
            let ns = h.highest_equivalent(v.value_iterated_to());
            let bucket = LATENCY_BUCKETS_NS.partition_point(|&le| le < ns);
            self.counts[bucket] += n;
            self.sum_ns += h.median_equivalent(v.value_iterated_to()) as f64 * n as f64;
            self.count += n;
        }
    }

    /// `(le in seconds, cumulative count)` for each fixed bound, ascending.
    pub fn cumulative_seconds(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        LATENCY_BUCKETS_NS
            .iter()
            .zip(&self.counts)
            .map(|(&le, &n)| {
                total += n;
                (le as f64 / 1e9, total)
            })
            .collect()
    }
}

/// Everything `/metrics` shows: the connections' [`Published`] figures
/// and the latency buckets.
pub struct Metrics {
    pub(crate) connections: Vec<Arc<Published>>,
    latency: Mutex<LatencyBuckets>,
}

impl Metrics {
    /// Metrics for a run of `connections` connections in all.
    pub fn new(connections: usize) -> Arc<Metrics> {
        Arc::new(Metrics {
            connections: (0..connections)
                .map(|_| Arc::new(Published::new()))
                .collect(),
            latency: Mutex::new(LatencyBuckets::default()),
        })
    }

    /// Folds latencies (ns) the main thread collected into the buckets.
    pub(crate) fn add_latency(&self, h: &Histogram<u64>) {
        if h.is_empty() {
            return;
        }
        if let Ok(mut l) = self.latency.lock() {
            l.add(h);
        }
    }

    /// The counters summed over every connection, as now published.
    pub fn totals(&self) -> Counters {
        let mut c = Counters::default();
        for p in &self.connections {
            // Acquire pairs with the Release in `Published::store`.
            c.rejects += p.rejects.load(Ordering::Acquire);
            for (sum, slot) in c.rejects_by_reason.iter_mut().zip(&p.rejects_by_reason) {
                *sum += slot.load(Ordering::Relaxed);
            }
            c.orders_sent += p.orders_sent.load(Ordering::Relaxed);
            c.reports += p.reports.load(Ordering::Relaxed);
            c.accepted += p.accepted.load(Ordering::Relaxed);
            c.trades += p.trades.load(Ordering::Relaxed);
        }
        c
    }

    /// Connections that failed so far.
    pub fn errors(&self) -> u64 {
        self.connections
            .iter()
            .filter(|p| p.failed.load(Ordering::Relaxed))
            .count() as u64
    }

    /// The Prometheus text exposition (format 0.0.4) of the run so far.
    pub fn render(&self) -> String {
        let c = self.totals();
        let latency = self.latency.lock().map(|l| l.clone()).unwrap_or_default();
        let mut e = Encoder::new();
        let none: &[(&str, &str)] = &[];
        e.counter(
            "dex_trader_orders_sent_total",
            "Requests sent (new orders, cancels, replaces), warmup and drain included.",
            &[(none, c.orders_sent as f64)],
        );
        e.counter(
            "dex_trader_reports_received_total",
            "Reports received from the server (every message after the handshake).",
            &[(none, c.reports as f64)],
        );
        let reasons: Vec<(&str, u64)> = RejectReason::ALL
            .iter()
            .map(|r| {
                let n = c
                    .rejects_by_reason
                    .get(usize::from(r.to_wire()))
                    .copied()
                    .unwrap_or(0);
                (r.as_str(), n)
            })
            .chain(std::iter::once(("unknown reason", c.rejects_by_reason[0])))
            .collect();
        let labels: Vec<[(&str, &str); 1]> =
            reasons.iter().map(|(r, _)| [("reason", *r)]).collect();
        let samples: Vec<(&[(&str, &str)], f64)> = labels
            .iter()
            .zip(&reasons)
            .map(|(l, (_, n))| (&l[..], *n as f64))
            .collect();
        e.counter(
            "dex_trader_rejects_total",
            "Rejected reports by reason (the reason names of the --json report).",
            &samples,
        );
        e.counter(
            "dex_trader_trades_total",
            "Trades (taker fills).",
            &[(none, c.trades as f64)],
        );
        e.counter(
            "dex_trader_errors_total",
            "Connections that failed (I/O error, session error, the server closing mid-run).",
            &[(none, self.errors() as f64)],
        );
        e.histogram(
            "dex_trader_latency_seconds",
            "Request latency from send (or scheduled) time to first answer, warmup included; \
             updated once a second.",
            none,
            &latency.cumulative_seconds(),
            latency.sum_ns / 1e9,
            latency.count,
        );
        e.gauge(
            "dex_trader_build_info",
            "dex-trader's version; always 1.",
            &[(&[("version", env!("CARGO_PKG_VERSION"))], 1.0)],
        );
        e.finish()
    }
}

/// The routes `--admin` serves: `/metrics` and `/health`.
pub struct AdminRoutes {
    metrics: Arc<Metrics>,
}

impl AdminRoutes {
    /// Routes over `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> AdminRoutes {
        AdminRoutes { metrics }
    }
}

impl Handler for AdminRoutes {
    fn get(&self, path: &str) -> Option<Response> {
        match path {
            "/metrics" => Some(Response::prometheus(self.metrics.render())),
            // The endpoint lives exactly as long as the run.
            "/health" => Some(Response::text(200, "ok\n".to_string())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_cumulative_and_never_below_the_value() {
        let mut h = new_histogram();
        h.record(9_000).unwrap(); // 9 us: first bucket
        h.record(9_990).unwrap(); // 9.99 us: first bucket
        // 10 us: its histogram slot (0.1% wide) reaches above 10 us, and a
        // latency is never put below a bound it may exceed: next bucket.
        h.record(10_000).unwrap();
        h.record(30_000).unwrap(); // 30 us: le 50 us
        h.record(2_000_000_000).unwrap(); // 2 s: only +Inf
        let mut b = LatencyBuckets::default();
        b.add(&h);
        assert_eq!(b.count, 5);
        let cumulative = b.cumulative_seconds();
        assert_eq!(cumulative.len(), LATENCY_BUCKETS_NS.len());
        assert_eq!(cumulative[0], (10e-6, 2));
        assert_eq!(cumulative[1], (25e-6, 3));
        assert_eq!(cumulative[2], (50e-6, 4));
        assert_eq!(cumulative.last(), Some(&(1.0, 4)));
        let sum_s = b.sum_ns / 1e9;
        assert!((sum_s - 2.000_059).abs() < 0.003, "{sum_s}");
        b.add(&h);
        assert_eq!(b.count, 10);
        assert_eq!(b.cumulative_seconds()[2], (50e-6, 8));
    }

    #[test]
    fn metrics_show_what_the_connections_published() {
        let m = Metrics::new(2);
        let mut c = Counters {
            orders_sent: 100,
            reports: 90,
            trades: 7,
            ..Counters::default()
        };
        c.reject(
            RejectReason::NoLiquidity.to_wire(),
            wire::Kind::NewOrder as u8,
        );
        m.connections[0].store(&c);
        m.connections[1].store(&c);
        m.connections[1].failed.store(true, Ordering::Relaxed);
        let mut h = new_histogram();
        h.record(20_000).unwrap();
        m.add_latency(&h);
        let text = m.render();
        for line in [
            "# TYPE dex_trader_orders_sent_total counter",
            "dex_trader_orders_sent_total 200",
            "dex_trader_reports_received_total 180",
            "dex_trader_trades_total 14",
            "dex_trader_errors_total 1",
            "dex_trader_rejects_total{reason=\"no liquidity for market order\"} 2",
            "dex_trader_rejects_total{reason=\"book full\"} 0",
            "# TYPE dex_trader_latency_seconds histogram",
            "dex_trader_latency_seconds_bucket{le=\"0.00001\"} 0",
            "dex_trader_latency_seconds_bucket{le=\"0.000025\"} 1",
            "dex_trader_latency_seconds_bucket{le=\"+Inf\"} 1",
            "dex_trader_latency_seconds_count 1",
            &format!(
                "dex_trader_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        let routes = AdminRoutes::new(m);
        let metrics = routes.get("/metrics").unwrap();
        assert_eq!(metrics.status, 200);
        assert!(metrics.content_type.contains("version=0.0.4"));
        assert_eq!(routes.get("/health").unwrap().status, 200);
        assert!(routes.get("/nope").is_none());
    }
}
