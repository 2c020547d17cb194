//! The run's report: the summary on stdout, the JSON file and the live line.

use std::fmt::Write as _;
use std::io;

use serde::{Serialize, Serializer};

use crate::flow::Mix;
use crate::md::{JsonMarketData, MarketDataReport};
use crate::stats::{Counters, Percentiles};
use crate::timeline::Recorded;
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
    /// Different accounts the connections trade under.
    pub accounts: u64,
    /// Target rate (open loop) or `None` (closed loop).
    pub rate: Option<u64>,
    /// Most unanswered requests per connection.
    pub inflight: usize,
    /// Order mix.
    pub mix: Mix,
    /// Latency of requests sent in the window, from send (or scheduled)
    /// time to first answer.
    pub latency: Percentiles,
    /// The latency histogram and the run second by second (`--hgrm`,
    /// `--interval-log`, `--plot`).
    pub recorded: Recorded,
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
    /// What the `--subscribe` subscribers measured (`None` without it).
    pub market_data: Option<MarketDataReport>,
    /// `--cluster`: the map and what each node carried (`None` without it).
    pub cluster: Option<ClusterReport>,
}

/// `--cluster`'s part of the report.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterReport {
    /// The version of the map the run started from.
    pub map_version: u64,
    /// The newest map version the routes took during the run.
    pub map_version_end: u64,
    /// The cluster's shard count.
    pub shards: u32,
    /// Shards without an owner when the run started.
    pub unowned_shards: u32,
    /// Per node connection address, by address.
    pub nodes: Vec<NodeReport>,
    /// Requests of the window that had no route (no owner, or one this run
    /// had no connection to): never sent, answered locally with
    /// `Rejected(WrongNode)` and counted in `rejects` too.
    pub unrouted: u64,
    /// Shards another node took over mid-run (a failover or a move), in
    /// order.
    pub shards_taken_over: Vec<u32>,
    /// Orders set aside, unchecked: open on a shard when another node took
    /// it over (which detaches their sessions: PROTOCOL.md §8.11 rule 9)
    /// or on a node whose connection closed.
    pub orders_set_aside: u64,
}

/// One node's share of the window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeReport {
    /// Its order-entry address.
    pub address: String,
    /// Its node id in the map the run started from (0 if it was not listed).
    #[serde(serialize_with = "hex_id")]
    pub node_id: u64,
    /// Requests sent to it in the window.
    pub orders_sent: u64,
    pub orders_per_sec: f64,
    /// Trades (taker fills) it reported in the window.
    pub trades: u64,
    pub trades_per_sec: f64,
    /// `Rejected(WrongNode)` answers it gave (each with its `ShardOwner`).
    pub wrong_node: u64,
    /// Requests in flight on it when its connection closed mid-run.
    pub lost: u64,
    /// Why its connection closed mid-run (null when it did not).
    pub closed: Option<String>,
}

fn hex_id<S: serde::Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{id:016x}"))
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

    /// What makes the run's figures suspect, one sentence each: a server
    /// that matches (it cancels IOC remainders or self-trades) but saw no
    /// trade, more than half of the crossing orders canceled by self-trade
    /// prevention, or all the connections under one account. Empty when
    /// none applies (always for the null engine, which never matches).
    pub fn warnings(&self) -> Vec<String> {
        let c = &self.counters;
        let mut out = Vec::new();
        if self.accounts < 2 && c.crossing_orders > 0 {
            out.push(format!(
                "all {} connection{} trade under one account: self-trade prevention cancels every \
                 order that meets the run's own resting orders; use --connections 2 or more (one \
                 account each) or --accounts 2 or more",
                self.connections,
                plural(self.connections)
            ));
        }
        let matching = c.fills > 0 || c.matching_cancels > 0;
        if matching && c.trades == 0 && c.crossing_orders > 0 {
            out.push(format!(
                "the server matches (it canceled {} orders as IOC remainders, unfilled FOKs, \
                 self-trades or beyond the price band) but not one of the {} crossing orders \
                 traded: the orders/s above are not a matching rate",
                group(c.matching_cancels),
                group(c.crossing_orders)
            ));
        }
        if c.crossing_self_trade_cancels * 2 > c.crossing_orders && c.crossing_orders > 0 {
            out.push(format!(
                "{} of the {} crossing orders ({:.0}%) were canceled by self-trade prevention: \
                 they met resting orders of their own account instead of trading; use more \
                 connections or accounts",
                group(c.crossing_self_trade_cancels),
                group(c.crossing_orders),
                100.0 * c.crossing_self_trade_cancels as f64 / c.crossing_orders as f64
            ));
        }
        if let Some(cl) = &self.cluster {
            for n in &cl.nodes {
                if let Some(why) = &n.closed {
                    out.push(format!(
                        "node {} closed the connection mid-run ({why}): {} request(s) in flight \
                         there were lost, and its shards got no orders (unrouted) until the map \
                         gave them another owner",
                        n.address,
                        group(n.lost)
                    ));
                }
            }
            if !cl.shards_taken_over.is_empty() {
                out.push(format!(
                    "shard(s) {:?} passed to another node mid-run (a failover or a move): {} \
                     order(s) open on them, or on a node that went, were set aside unchecked \
                     (the new owner detaches their sessions, PROTOCOL.md §8.11 rule 9: their \
                     fills reach no session; query them with OrderQuery), and trades on them \
                     are paired where both halves arrived",
                    cl.shards_taken_over,
                    group(cl.orders_set_aside)
                ));
            }
            if cl.unrouted > 0 {
                out.push(format!(
                    "{} request(s) had no node to go to (a shard without an owner, or with one \
                     this run has no connection to): not sent, counted as rejected (wrong node)",
                    group(cl.unrouted)
                ));
            }
        }
        out
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
            "  trades       {:>16}  {:>9}/s  (crossing orders {}, self-trade cancels {}, of \
             crossing orders {})",
            group(c.trades),
            si(self.per_sec(c.trades)),
            group(c.crossing_orders),
            group(c.self_trade_cancels),
            group(c.crossing_self_trade_cancels)
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
        if let Some(cl) = &self.cluster {
            let _ = writeln!(
                s,
                "  cluster      map version {} (at the end {}), {} shards ({} unowned at the \
                 start), {} node(s); unrouted {}",
                cl.map_version,
                cl.map_version_end,
                cl.shards,
                cl.unowned_shards,
                cl.nodes.len(),
                group(cl.unrouted)
            );
            for n in &cl.nodes {
                let _ = writeln!(
                    s,
                    "  node         {:<21}  orders {:>12}  {:>9}/s  trades {:>10}  {:>9}/s  \
                     wrong node {}",
                    n.address,
                    group(n.orders_sent),
                    si(n.orders_per_sec),
                    group(n.trades),
                    si(n.trades_per_sec),
                    group(n.wrong_node)
                );
                if let Some(why) = &n.closed {
                    let _ = writeln!(
                        s,
                        "               closed mid-run ({why}); {} request(s) in flight there lost",
                        group(n.lost)
                    );
                }
            }
        }
        if let Some(md) = &self.market_data {
            md.write_summary(&mut s);
        }
        for w in self.warnings() {
            let _ = writeln!(s, "  WARNING      {w}");
        }
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
    /// null when not verifying). The field names and their nesting are a
    /// stable schema that scripts/bench.sh and the benches read; the test
    /// `json_schema_is_stable` pins them.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(2048);
        let mut serializer =
            serde_json::Serializer::with_formatter(&mut out, ReportLayout::default());
        self.json_view()
            .serialize(&mut serializer)
            .expect("the report holds only maps with string keys and numbers");
        out.push(b'\n');
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }

    /// What [`RunReport::to_json`] serializes.
    fn json_view(&self) -> JsonReport<'_> {
        let c = &self.counters;
        let l = &self.latency;
        JsonReport {
            orders_sent: c.orders_sent,
            orders_per_sec: Num(self.orders_per_sec()),
            new_orders: c.new_orders,
            cancels: c.cancels,
            replaces: c.replaces,
            reports_received: c.reports,
            reports_per_sec: Num(self.per_sec(c.reports)),
            accepted: c.accepted,
            fills: c.fills,
            trades: c.trades,
            trades_per_sec: Num(self.per_sec(c.trades)),
            canceled: c.canceled,
            replaced: c.replaced,
            crossing_orders: c.crossing_orders,
            self_trade_cancels: c.self_trade_cancels,
            crossing_self_trade_cancels: c.crossing_self_trade_cancels,
            rejects: c.rejects,
            rejects_by_reason: Named(c.rejects_named()),
            rejects_by_request: Named(c.rejects_by_request_named()),
            errors: self.errors,
            unanswered: self.unanswered,
            stray_reports: c.stray_reports,
            duration_secs: Num(self.duration_secs),
            warmup_secs: Num(self.warmup_secs),
            batch: self.batch,
            workers: self.workers,
            connections: self.connections,
            rate_target: self.rate,
            inflight: self.inflight,
            mix: self.mix.as_str(),
            latency_us: JsonLatency {
                p50: Num(l.p50),
                p90: Num(l.p90),
                p99: Num(l.p99),
                p999: Num(l.p999),
                p9999: Num(l.p9999),
                max: Num(l.max),
                samples: l.samples,
            },
            verify_ok: self.verify_ok(),
            violations: self.verify.as_ref().map_or(0, |v| v.total),
            failure: self.failure.as_deref(),
            warnings: self.warnings(),
            trades_paired: self.trades_paired,
            market_data: self.market_data.as_ref().map(MarketDataReport::json_view),
            cluster_map_version: self.cluster.as_ref().map(|c| c.map_version),
            cluster_map_version_end: self.cluster.as_ref().map(|c| c.map_version_end),
            unrouted: self.cluster.as_ref().map(|c| c.unrouted),
            shards_taken_over: self
                .cluster
                .as_ref()
                .map(|c| c.shards_taken_over.as_slice()),
            orders_set_aside: self.cluster.as_ref().map(|c| c.orders_set_aside),
            nodes: self.cluster.as_ref().map(|c| c.nodes.as_slice()),
        }
    }
}

/// The JSON report's schema, in the order the fields are written.
#[derive(Serialize)]
struct JsonReport<'a> {
    orders_sent: u64,
    orders_per_sec: Num,
    new_orders: u64,
    cancels: u64,
    replaces: u64,
    reports_received: u64,
    reports_per_sec: Num,
    accepted: u64,
    fills: u64,
    trades: u64,
    trades_per_sec: Num,
    canceled: u64,
    replaced: u64,
    /// New orders priced to take liquidity at once (IOC, FOK, market, GTC
    /// through the band).
    crossing_orders: u64,
    /// Canceled reports with reason self-trade prevention.
    self_trade_cancels: u64,
    /// Of those, the ones of crossing orders.
    crossing_self_trade_cancels: u64,
    rejects: u64,
    /// Reason name to count, the non-zero ones only, in wire order.
    rejects_by_reason: Named<String>,
    /// `new_order`, `cancel`, `replace`, `other` to count, the non-zero ones only.
    rejects_by_request: Named<&'static str>,
    errors: u64,
    unanswered: u64,
    stray_reports: u64,
    duration_secs: Num,
    warmup_secs: Num,
    batch: usize,
    workers: usize,
    connections: usize,
    /// null in closed loop.
    rate_target: Option<u64>,
    inflight: usize,
    mix: &'a str,
    latency_us: JsonLatency,
    /// null when not verifying.
    verify_ok: Option<bool>,
    violations: u64,
    failure: Option<&'a str>,
    /// [`RunReport::warnings`], empty when none applies.
    warnings: Vec<String>,
    trades_paired: u64,
    /// Only with `--subscribe` (absent otherwise, so the layout above is unchanged).
    #[serde(skip_serializing_if = "Option::is_none")]
    market_data: Option<JsonMarketData>,
    /// Only with `--cluster`, like the two below.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_map_version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_map_version_end: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unrouted: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shards_taken_over: Option<&'a [u32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    orders_set_aside: Option<u64>,
    /// Per node: address, node_id, orders_sent, orders_per_sec, trades,
    /// trades_per_sec, wrong_node, lost, closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<&'a [NodeReport]>,
}

/// `latency_us` of the JSON report.
#[derive(Serialize)]
struct JsonLatency {
    p50: Num,
    p90: Num,
    p99: Num,
    p999: Num,
    p9999: Num,
    max: Num,
    samples: u64,
}

/// The layout the report always had: one top-level field per line, the
/// nested objects on their field's line (`"latency_us": {"p50": 12.5,
/// "p90": 20, ...}`), so that line-oriented readers (`grep`, the scripts'
/// `json_num`) keep working.
#[derive(Default)]
struct ReportLayout {
    depth: usize,
}

impl serde_json::ser::Formatter for ReportLayout {
    fn begin_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.depth += 1;
        writer.write_all(b"{")
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.depth -= 1;
        if self.depth == 0 {
            writer.write_all(b"\n}")
        } else {
            writer.write_all(b"}")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        match (self.depth, first) {
            (1, true) => writer.write_all(b"\n  "),
            (1, false) => writer.write_all(b",\n  "),
            (_, true) => Ok(()),
            (_, false) => writer.write_all(b", "),
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }
}

/// Named counts written as a JSON object, keeping their order.
struct Named<K>(Vec<(K, u64)>);

impl<K: AsRef<str>> Serialize for Named<K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k.as_ref(), v)))
    }
}

/// A measured number in the JSON report: rounded to 3 decimals (more is
/// noise), written as an integer when it is one (`4567800`, not
/// `4567800.0`, as the report always wrote them); non-finite values
/// become 0.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Num(pub(crate) f64);

impl Serialize for Num {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// Above 2^53 an f64 has no fraction left to round, and a u64 no
        /// longer holds every f64 exactly.
        const EXACT_INTEGER_MAX: f64 = 9_007_199_254_740_992.0;
        let v = self.0;
        if !v.is_finite() {
            return serializer.serialize_u64(0);
        }
        let rounded = (v * 1000.0).round() / 1000.0;
        if rounded.fract() == 0.0 && rounded.abs() <= EXACT_INTEGER_MAX {
            if rounded >= 0.0 {
                serializer.serialize_u64(rounded as u64)
            } else {
                serializer.serialize_i64(rounded as i64)
            }
        } else if rounded.is_finite() {
            serializer.serialize_f64(rounded)
        } else {
            serializer.serialize_f64(v)
        }
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
            accounts: 2,
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
            recorded: Recorded::default(),
            errors: 0,
            unanswered: 0,
            verify: None,
            trades_paired: 0,
            failure: Some("the server said \"no\"".into()),
            market_data: None,
            cluster: None,
        }
    }

    #[test]
    fn numbers_read_well() {
        let text = |v: f64| serde_json::to_string(&Num(v)).unwrap();
        assert_eq!(text(2.5), "2.5");
        assert_eq!(text(3.0), "3");
        assert_eq!(text(1.23456), "1.235");
        assert_eq!(text(-4.0), "-4");
        assert_eq!(text(f64::NAN), "0");
        assert_eq!(text(f64::INFINITY), "0");
        assert_eq!(text(1e300), "1e+300");
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
        // The line format scripts/lib/common.sh's json_num greps for.
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
            "\"latency_us\": {\"p50\": 12.5, \"p90\": 20, \"p99\": 38, \"p999\": 50, \"p9999\": 60, \"max\": 70, \"samples\": 10},",
            "\"verify_ok\": null,",
            "\"rejects_by_reason\": {\"no liquidity for market order\": 1},",
            "\"rejects_by_request\": {\"new_order\": 1},",
            "\"failure\": \"the server said \\\"no\\\"\",",
        ] {
            assert!(json.contains(field), "missing {field} in\n{json}");
        }
        assert!(json.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["latency_us"]["p90"], 20);
        assert_eq!(v["latency_us"]["max"], 70);
        assert_eq!(v["latency_us"]["samples"], 10);
        assert_eq!(v["rejects_by_request"]["new_order"], 1);
        assert_eq!(v["rate_target"], serde_json::Value::Null);
        assert_eq!(v["mix"], "match");
        assert_eq!(v["failure"], "the server said \"no\"");
        let mut verified = report();
        verified.verify = Some(Violations::default());
        verified.rate = Some(1000);
        let v: serde_json::Value = serde_json::from_str(&verified.to_json()).unwrap();
        assert_eq!(v["verify_ok"], true);
        assert_eq!(v["violations"], 0);
        assert_eq!(v["rate_target"], 1000);
        assert!(verified.summary().contains("verify       ok"));
    }

    /// The bytes of the file, as the hand-written encoder wrote them before
    /// serde: line-oriented readers (`json_num` in scripts/lib/common.sh,
    /// the tests' field helpers) see no change.
    #[test]
    fn json_layout_is_unchanged() {
        let want = r#"{
  "orders_sent": 45678000,
  "orders_per_sec": 4567800,
  "new_orders": 0,
  "cancels": 0,
  "replaces": 0,
  "reports_received": 50000000,
  "reports_per_sec": 5000000,
  "accepted": 0,
  "fills": 0,
  "trades": 12100000,
  "trades_per_sec": 1210000,
  "canceled": 0,
  "replaced": 0,
  "crossing_orders": 0,
  "self_trade_cancels": 0,
  "crossing_self_trade_cancels": 0,
  "rejects": 1,
  "rejects_by_reason": {"no liquidity for market order": 1},
  "rejects_by_request": {"new_order": 1},
  "errors": 0,
  "unanswered": 0,
  "stray_reports": 0,
  "duration_secs": 10,
  "warmup_secs": 2,
  "batch": 2000,
  "workers": 1,
  "connections": 2,
  "rate_target": null,
  "inflight": 8000,
  "mix": "match",
  "latency_us": {"p50": 12.5, "p90": 20, "p99": 38, "p999": 50, "p9999": 60, "max": 70, "samples": 10},
  "verify_ok": null,
  "violations": 0,
  "failure": "the server said \"no\"",
  "warnings": [],
  "trades_paired": 0
}
"#;
        assert_eq!(report().to_json(), want);
    }

    /// Every key path of a JSON value, nested ones as `outer.inner`, sorted.
    fn key_paths(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        if let serde_json::Value::Object(map) = v {
            for (k, inner) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                key_paths(inner, &path, out);
                out.push(path);
            }
        }
        out.sort();
    }

    /// The JSON report's field names are a schema: scripts/bench.sh,
    /// scripts/netns-bench.sh and the benches read them. A rename or a
    /// move must fail here first (and then be made in those readers too).
    #[test]
    fn json_schema_is_stable() {
        let mut full = report();
        full.counters.reject(
            wire::RejectReason::UnknownOrder.to_wire(),
            wire::Kind::Cancel as u8,
        );
        full.counters.reject(
            wire::RejectReason::UnknownOrder.to_wire(),
            wire::Kind::Replace as u8,
        );
        full.counters
            .reject(wire::RejectReason::BookFull.to_wire(), 0);
        full.rate = Some(1000);
        full.verify = Some(Violations::default());
        let v: serde_json::Value = serde_json::from_str(&full.to_json()).unwrap();
        let mut got = Vec::new();
        key_paths(&v, "", &mut got);
        let mut want = vec![
            "accepted",
            "batch",
            "canceled",
            "cancels",
            "connections",
            "crossing_orders",
            "crossing_self_trade_cancels",
            "duration_secs",
            "errors",
            "failure",
            "fills",
            "inflight",
            "latency_us",
            "latency_us.max",
            "latency_us.p50",
            "latency_us.p90",
            "latency_us.p99",
            "latency_us.p999",
            "latency_us.p9999",
            "latency_us.samples",
            "mix",
            "new_orders",
            "orders_per_sec",
            "orders_sent",
            "rate_target",
            "rejects",
            "rejects_by_reason",
            "rejects_by_reason.book full",
            "rejects_by_reason.no liquidity for market order",
            "rejects_by_reason.unknown order",
            "rejects_by_request",
            "rejects_by_request.cancel",
            "rejects_by_request.new_order",
            "rejects_by_request.other",
            "rejects_by_request.replace",
            "replaced",
            "replaces",
            "reports_per_sec",
            "reports_received",
            "self_trade_cancels",
            "stray_reports",
            "trades",
            "trades_paired",
            "trades_per_sec",
            "unanswered",
            "verify_ok",
            "violations",
            "warmup_secs",
            "warnings",
            "workers",
        ];
        want.sort_unstable();
        assert_eq!(got, want);
        // Every value is a number, a string, a bool or null except the three objects.
        let map = v.as_object().unwrap();
        for (k, value) in map {
            let object =
                ["latency_us", "rejects_by_reason", "rejects_by_request"].contains(&k.as_str());
            assert_eq!(value.is_object(), object, "{k}: {value}");
        }
        // And the file keeps the order it always had: orders first, trades_paired last.
        let text = full.to_json();
        assert!(text.starts_with("{\n  \"orders_sent\": "), "{text}");
        assert!(text.ends_with(",\n  \"trades_paired\": 0\n}\n"), "{text}");
    }

    #[test]
    fn self_trades_and_tradeless_matching_warn() {
        let mut r = report();
        r.counters.crossing_orders = 1000;
        assert!(r.warnings().is_empty(), "{:?}", r.warnings());
        // A matching server, one account, every crossing order self-traded.
        r.accounts = 1;
        r.counters.trades = 0;
        r.counters.self_trade_cancels = 900;
        r.counters.crossing_self_trade_cancels = 800;
        r.counters.matching_cancels = 1000;
        let w = r.warnings();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("one account"), "{w:?}");
        assert!(
            w[1].contains("not one of the 1,000 crossing orders traded"),
            "{w:?}"
        );
        assert!(
            w[2].contains("800 of the 1,000 crossing orders (80%)"),
            "{w:?}"
        );
        assert!(r.summary().contains("WARNING      800 of the 1,000"));
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["warnings"].as_array().unwrap().len(), 3);
        assert_eq!(v["crossing_self_trade_cancels"], 800);
        // Exactly half is not more than half; the null engine never matches.
        r.accounts = 2;
        r.counters.crossing_self_trade_cancels = 500;
        r.counters.trades = 1;
        assert!(r.warnings().is_empty(), "{:?}", r.warnings());
        r.counters = Counters {
            crossing_orders: 1000,
            ..Counters::default()
        };
        assert!(r.warnings().is_empty(), "{:?}", r.warnings());
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

    #[test]
    fn cluster_runs_add_per_node_figures_and_nothing_else() {
        let plain = report().to_json();
        let mut r = report();
        r.cluster = Some(ClusterReport {
            map_version: 4,
            map_version_end: 6,
            shards: 4,
            unowned_shards: 0,
            nodes: vec![
                NodeReport {
                    address: "10.0.0.2:9000".into(),
                    node_id: 0xab,
                    orders_sent: 30,
                    orders_per_sec: 3.0,
                    trades: 10,
                    trades_per_sec: 1.0,
                    wrong_node: 0,
                    lost: 0,
                    closed: None,
                },
                NodeReport {
                    address: "10.0.0.3:9000".into(),
                    node_id: 0xcd,
                    orders_sent: 20,
                    orders_per_sec: 2.0,
                    trades: 5,
                    trades_per_sec: 0.5,
                    wrong_node: 2,
                    lost: 7,
                    closed: Some("the server closed the connection mid-run".into()),
                },
            ],
            unrouted: 3,
            shards_taken_over: vec![1],
            orders_set_aside: 4,
        });
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        let before: serde_json::Value = serde_json::from_str(&plain).unwrap();
        let keys = |v: &serde_json::Value| -> Vec<String> {
            v.as_object().unwrap().keys().cloned().collect()
        };
        let added: Vec<String> = keys(&json)
            .into_iter()
            .filter(|k| !keys(&before).contains(k))
            .collect();
        // (serde_json sorts the keys of its maps)
        assert_eq!(
            added,
            [
                "cluster_map_version",
                "cluster_map_version_end",
                "nodes",
                "orders_set_aside",
                "shards_taken_over",
                "unrouted"
            ]
        );
        assert_eq!(json["shards_taken_over"], serde_json::json!([1]));
        assert_eq!(json["orders_set_aside"], 4);
        assert!(
            r.warnings().iter().any(
                |w| w.contains("shard(s) [1] passed to another node mid-run")
                    && w.contains("4 order(s)")
            ),
            "{:?}",
            r.warnings()
        );
        assert!(!plain.contains("nodes"), "nothing without --cluster");
        assert_eq!(json["nodes"][0]["node_id"], "00000000000000ab");
        assert_eq!(
            json["nodes"][1]["closed"],
            "the server closed the connection mid-run"
        );
        assert_eq!(json["nodes"][0]["closed"], serde_json::Value::Null);
        assert_eq!(json["unrouted"], 3);
        let s = r.summary();
        assert!(
            s.contains("  cluster      map version 4 (at the end 6), 4 shards"),
            "{s}"
        );
        assert!(s.contains("  node         10.0.0.3:9000"), "{s}");
        assert!(s.contains("7 request(s) in flight there lost"), "{s}");
        assert!(
            r.warnings()
                .iter()
                .any(|w| w.contains("node 10.0.0.3:9000 closed"))
                && r.warnings()
                    .iter()
                    .any(|w| w.contains("3 request(s) had no node")),
            "{:?}",
            r.warnings()
        );
    }
}
