//! The run's report: the summary on stdout, the JSON file and the live line.

use std::fmt::Write as _;

use crate::flow::Mix;
use crate::stats::{Counters, Percentiles};
use crate::verify::Violations;

pub use tuning::units::{group, si};

/// Everything a run measured.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// Counts of the measured window (requests sent in it, reports received in it).
    pub counters: Counters,
    /// Length of the measured window, seconds (shorter than `--duration`
    /// when the run failed part way).
    pub duration_secs: f64,
    /// Unmeasured warmup, seconds.
    pub warmup_secs: f64,
    /// Orders per frame.
    pub batch: usize,
    /// Worker threads.
    pub workers: usize,
    /// Connections in total.
    pub connections: usize,
    /// Target rate (open loop) or `None` (closed loop).
    pub rate: Option<u64>,
    /// Most unanswered requests per connection.
    pub inflight: usize,
    /// Order mix.
    pub mix: Mix,
    /// Latency of requests sent in the window, from send (or scheduled)
    /// time to first answer.
    pub latency: Percentiles,
    /// Connections that failed (I/O error, session error, bad bytes, the
    /// server closing mid-run).
    pub errors: u64,
    /// Requests never answered by the end of the drain.
    pub unanswered: u64,
    /// `Some` when verifying: what went wrong (empty when all is well).
    pub verify: Option<Violations>,
    /// Trades whose maker and taker fills were both seen and agreed (verify only).
    pub trades_paired: u64,
    /// Why the run stopped early, if it did.
    pub failure: Option<String>,
}

impl RunReport {
    fn per_sec(&self, n: u64) -> f64 {
        if self.duration_secs > 0.0 {
            n as f64 / self.duration_secs
        } else {
            0.0
        }
    }

    /// Requests sent per second in the window.
    pub fn orders_per_sec(&self) -> f64 {
        self.per_sec(self.counters.orders_sent)
    }

    /// Whether verification passed (`None` when not verifying).
    pub fn verify_ok(&self) -> Option<bool> {
        self.verify.as_ref().map(Violations::is_empty)
    }

    /// The summary printed on stdout.
    pub fn summary(&self) -> String {
        let c = &self.counters;
        let mut s = String::new();
        let mode = match self.rate {
            Some(r) => format!("open loop at {}/s", si(r as f64)),
            None => format!(
                "closed loop, {} in flight per connection",
                group(self.inflight as u64)
            ),
        };
        let _ = writeln!(
            s,
            "dex-trader: {:.2} s measured after {:.2} s warmup; {} worker{} x {} connection{}; \
             batch {}; {}; mix {}",
            self.duration_secs,
            self.warmup_secs,
            self.workers,
            plural(self.workers),
            self.connections / self.workers.max(1),
            plural(self.connections / self.workers.max(1)),
            self.batch,
            mode,
            self.mix.as_str()
        );
        let _ = writeln!(
            s,
            "  orders sent  {:>16}  {:>9}/s  (new {}, cancel {}, replace {})",
            group(c.orders_sent),
            si(self.orders_per_sec()),
            group(c.new_orders),
            group(c.cancels),
            group(c.replaces)
        );
        let _ = writeln!(
            s,
            "  reports      {:>16}  {:>9}/s  (accepted {}, fills {}, canceled {}, replaced {})",
            group(c.reports),
            si(self.per_sec(c.reports)),
            group(c.accepted),
            group(c.fills),
            group(c.canceled),
            group(c.replaced)
        );
        let _ = writeln!(
            s,
            "  trades       {:>16}  {:>9}/s",
            group(c.trades),
            si(self.per_sec(c.trades))
        );
        let _ = write!(s, "  rejects      {:>16}", group(c.rejects));
        let named = c.rejects_named();
        if !named.is_empty() {
            let parts: Vec<String> = named
                .iter()
                .map(|(n, k)| format!("{n} {}", group(*k)))
                .collect();
            let kinds: Vec<String> = c
                .rejects_by_request_named()
                .iter()
                .map(|(n, k)| format!("{} {}", n.replace('_', " "), group(*k)))
                .collect();
            let _ = write!(
                s,
                "  ({}; by request: {})",
                parts.join(", "),
                kinds.join(", ")
            );
        }
        s.push('\n');
        let _ = writeln!(s, "  errors       {:>16}", group(self.errors));
        if self.unanswered > 0 || c.stray_reports > 0 || c.evicted > 0 {
            let _ = writeln!(
                s,
                "  unanswered   {:>16}  (stray reports {}, orders never completed {})",
                group(self.unanswered),
                group(c.stray_reports),
                group(c.evicted)
            );
        }
        let l = &self.latency;
        let _ = writeln!(
            s,
            "  latency us   p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}  ({} samples)",
            us(l.p50),
            us(l.p90),
            us(l.p99),
            us(l.p999),
            us(l.p9999),
            us(l.max),
            group(l.samples)
        );
        match &self.verify {
            None => {}
            Some(v) if v.is_empty() => {
                let _ = writeln!(
                    s,
                    "  verify       ok (all {} trades of the run paired, warmup and drain included)",
                    group(self.trades_paired)
                );
            }
            Some(v) => {
                let _ = writeln!(s, "  verify       FAILED: {} violation(s)", group(v.total));
                for line in &v.kept {
                    let _ = writeln!(s, "    {line}");
                }
                if v.total > v.kept.len() as u64 {
                    let _ = writeln!(
                        s,
                        "    ... and {} more",
                        group(v.total - v.kept.len() as u64)
                    );
                }
            }
        }
        s
    }

    /// The report as a JSON object (numbers are numbers; `verify_ok` is
    /// null when not verifying).
    pub fn to_json(&self) -> String {
        let c = &self.counters;
        let l = &self.latency;
        let mut s = String::from("{\n");
        let mut field = |name: &str, value: String| {
            let _ = writeln!(s, "  \"{name}\": {value},");
        };
        field("orders_sent", c.orders_sent.to_string());
        field("orders_per_sec", num(self.orders_per_sec()));
        field("new_orders", c.new_orders.to_string());
        field("cancels", c.cancels.to_string());
        field("replaces", c.replaces.to_string());
        field("reports_received", c.reports.to_string());
        field("reports_per_sec", num(self.per_sec(c.reports)));
        field("accepted", c.accepted.to_string());
        field("fills", c.fills.to_string());
        field("trades", c.trades.to_string());
        field("trades_per_sec", num(self.per_sec(c.trades)));
        field("canceled", c.canceled.to_string());
        field("replaced", c.replaced.to_string());
        field("rejects", c.rejects.to_string());
        let reasons: Vec<String> = c
            .rejects_named()
            .iter()
            .map(|(n, k)| format!("{}: {k}", json_string(n)))
            .collect();
        field("rejects_by_reason", format!("{{{}}}", reasons.join(", ")));
        let kinds: Vec<String> = c
            .rejects_by_request_named()
            .iter()
            .map(|(n, k)| format!("{}: {k}", json_string(n)))
            .collect();
        field("rejects_by_request", format!("{{{}}}", kinds.join(", ")));
        field("errors", self.errors.to_string());
        field("unanswered", self.unanswered.to_string());
        field("stray_reports", c.stray_reports.to_string());
        field("duration_secs", num(self.duration_secs));
        field("warmup_secs", num(self.warmup_secs));
        field("batch", self.batch.to_string());
        field("workers", self.workers.to_string());
        field("connections", self.connections.to_string());
        field(
            "rate_target",
            self.rate
                .map_or_else(|| "null".to_string(), |r| r.to_string()),
        );
        field("inflight", self.inflight.to_string());
        field("mix", json_string(self.mix.as_str()));
        field(
            "latency_us",
            format!(
                "{{\"p50\": {}, \"p90\": {}, \"p99\": {}, \"p999\": {}, \"p9999\": {}, \"max\": {}, \"samples\": {}}}",
                num(l.p50),
                num(l.p90),
                num(l.p99),
                num(l.p999),
                num(l.p9999),
                num(l.max),
                l.samples
            ),
        );
        field(
            "verify_ok",
            self.verify_ok()
                .map_or_else(|| "null".to_string(), |ok| ok.to_string()),
        );
        field(
            "violations",
            self.verify
                .as_ref()
                .map_or_else(|| "0".to_string(), |v| v.total.to_string()),
        );
        field(
            "failure",
            self.failure
                .as_deref()
                .map_or_else(|| "null".to_string(), json_string),
        );
        // The last field closes the object without a trailing comma.
        let _ = writeln!(s, "  \"trades_paired\": {}\n}}", self.trades_paired);
        s
    }
}

/// One live line: `orders 45,678,000 | rate 4.52M/s | accepted 45,123,000 |
/// trades 12.1M | rejects 0 | p99 38us`.
pub fn live_line(
    warmup: bool,
    orders: u64,
    rate_per_sec: f64,
    accepted: u64,
    trades: u64,
    rejects: u64,
    p99_us: Option<f64>,
) -> String {
    let p99 = p99_us.map_or_else(|| "-".to_string(), |v| format!("{}us", us(v)));
    format!(
        "{}orders {} | rate {}/s | accepted {} | trades {} | rejects {} | p99 {}",
        if warmup { "(warmup) " } else { "" },
        group(orders),
        si(rate_per_sec),
        group(accepted),
        si(trades as f64),
        group(rejects),
        p99
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Microseconds with a precision that suits their size.
fn us(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A JSON number (finite; non-finite values become 0).
fn num(v: f64) -> String {
    if v.is_finite() {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        "0".to_string()
    }
}

/// A JSON string literal.
fn json_string(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 2);
    s.push('"');
    for ch in text.chars() {
        match ch {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> RunReport {
        let mut counters = Counters {
            orders_sent: 45_678_000,
            reports: 50_000_000,
            trades: 12_100_000,
            ..Counters::default()
        };
        counters.reject(
            wire::RejectReason::NoLiquidity.to_wire(),
            wire::Kind::NewOrder as u8,
        );
        RunReport {
            counters,
            duration_secs: 10.0,
            warmup_secs: 2.0,
            batch: 2000,
            workers: 1,
            connections: 2,
            rate: None,
            inflight: 8000,
            mix: Mix::Match,
            latency: Percentiles {
                samples: 10,
                p50: 12.5,
                p90: 20.0,
                p99: 38.0,
                p999: 50.0,
                p9999: 60.0,
                max: 70.0,
            },
            errors: 0,
            unanswered: 0,
            verify: None,
            trades_paired: 0,
            failure: Some("the server said \"no\"".into()),
        }
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(2.5), "2.5");
        assert_eq!(num(3.0), "3");
        assert_eq!(json_string("a\"b\\\n"), "\"a\\\"b\\\\\\n\"");
    }

    #[test]
    fn the_live_line_has_the_documented_shape() {
        let line = live_line(
            false,
            45_678_000,
            4_520_000.0,
            45_123_000,
            12_100_000,
            0,
            Some(38.0),
        );
        assert_eq!(
            line,
            "orders 45,678,000 | rate 4.52M/s | accepted 45,123,000 | trades 12.1M | rejects 0 | p99 38.0us"
        );
    }

    #[test]
    fn json_has_every_field_as_numbers() {
        let json = report().to_json();
        for field in [
            "\"orders_sent\": 45678000,",
            "\"orders_per_sec\": 4567800,",
            "\"reports_received\": 50000000,",
            "\"trades\": 12100000,",
            "\"rejects\": 1,",
            "\"errors\": 0,",
            "\"duration_secs\": 10,",
            "\"batch\": 2000,",
            "\"connections\": 2,",
            "\"latency_us\": {\"p50\": 12.5, \"p90\": 20, \"p99\": 38, \"p999\": 50, \"p9999\": 60, \"max\": 70",
            "\"verify_ok\": null,",
            "\"rejects_by_reason\": {\"no liquidity for market order\": 1},",
            "\"rejects_by_request\": {\"new_order\": 1},",
            "\"failure\": \"the server said \\\"no\\\"\",",
        ] {
            assert!(json.contains(field), "missing {field} in\n{json}");
        }
        assert!(json.trim_end().ends_with('}'));
        let mut verified = report();
        verified.verify = Some(Violations::default());
        assert!(verified.to_json().contains("\"verify_ok\": true,"));
        assert!(verified.summary().contains("verify       ok"));
    }

    #[test]
    fn the_summary_names_every_figure() {
        let s = report().summary();
        for want in [
            "orders sent",
            "4.57M/s",
            "reports",
            "trades",
            "rejects",
            "no liquidity",
            "errors",
            "p99.99",
            "max",
        ] {
            assert!(s.contains(want), "missing {want} in\n{s}");
        }
    }
}
