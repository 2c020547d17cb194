//! Prometheus text exposition format 0.0.4, written by hand: the format
//! is a few lines of rules, and the binaries already hold their numbers
//! (atomics, hdrhistogram), so a metrics registry would only copy them.
//!
//! What [`Encoder`] guarantees about its output:
//!
//! 1. Each family has one `# HELP` and one `# TYPE` line, followed by all of
//!    its samples, in the order of the first call that named it. Calling
//!    the same method again with the same name adds samples to that family
//!    (a per-core loop may call `gauge` once per core).
//! 2. Label values escape backslash, double quote and newline (`\\`, `\"`,
//!    `\n`); help text escapes backslash and newline.
//! 3. Values are written so Prometheus parses them back exactly: integers
//!    without a fraction (`3`), `NaN`, `+Inf`, `-Inf`.
//! 4. Histograms write cumulative `_bucket` lines with `le` last among the
//!    labels, a `+Inf` bucket equal to `count`, then `_sum` and `_count`.
//!
//! Caller mistakes are caught by `debug_assert!` (free in release builds):
//! metric names outside `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names outside
//! `[a-zA-Z_][a-zA-Z0-9_]*` or starting with `__`, a counter whose name does
//! not end in `_total`, one name used for two types, a histogram label
//! named `le`, buckets out of order or not cumulative.

use std::collections::HashMap;
use std::fmt::Write as _;

/// Builds one exposition body; see the [module docs](self) for the rules.
#[derive(Debug, Default)]
pub struct Encoder {
    families: Vec<Family>,
    by_name: HashMap<String, usize>,
}

#[derive(Debug)]
struct Family {
    name: String,
    kind: &'static str,
    help: String,
    samples: String,
}

impl Encoder {
    /// An empty body.
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// A counter family: each sample is (labels, value). `name` must end in
    /// `_total`; values should only grow over the life of the process.
    pub fn counter(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], f64)]) {
        debug_assert!(
            name.ends_with("_total"),
            "counter {name:?} must end in _total"
        );
        let family = self.family(name, "counter", help);
        for (labels, value) in samples {
            sample(&mut family.samples, name, "", labels, None, *value);
        }
    }

    /// A gauge family: each sample is (labels, value).
    pub fn gauge(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], f64)]) {
        let family = self.family(name, "gauge", help);
        for (labels, value) in samples {
            sample(&mut family.samples, name, "", labels, None, *value);
        }
    }

    /// One histogram with `labels`: `buckets` are (upper bound `le`,
    /// cumulative count of observations <= `le`), ascending; the `+Inf`
    /// bucket is added from `count` (a `+Inf` entry in `buckets` is
    /// skipped). `sum` is the sum of all observations.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        debug_assert!(
            labels.iter().all(|(label, _)| *label != "le"),
            "histogram {name:?}: the label `le` is reserved for buckets"
        );
        debug_assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "histogram {name:?}: buckets must ascend with cumulative counts: {buckets:?}"
        );
        debug_assert!(
            buckets.last().is_none_or(|&(_, last)| last <= count),
            "histogram {name:?}: a bucket count exceeds count {count}"
        );
        let family = self.family(name, "histogram", help);
        for &(le, cumulative) in buckets {
            if le == f64::INFINITY {
                continue;
            }
            sample(
                &mut family.samples,
                name,
                "_bucket",
                labels,
                Some(le),
                cumulative as f64,
            );
        }
        let out = &mut family.samples;
        sample(
            out,
            name,
            "_bucket",
            labels,
            Some(f64::INFINITY),
            count as f64,
        );
        sample(out, name, "_sum", labels, None, sum);
        sample(out, name, "_count", labels, None, count as f64);
    }

    /// The exposition body, ending in a newline (empty when nothing was
    /// added).
    pub fn finish(self) -> String {
        let mut out = String::new();
        for family in &self.families {
            let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(&family.help));
            let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
            out.push_str(&family.samples);
        }
        out
    }

    fn family(&mut self, name: &str, kind: &'static str, help: &str) -> &mut Family {
        debug_assert!(is_metric_name(name), "invalid metric name {name:?}");
        let index = match self.by_name.get(name) {
            Some(&index) => {
                debug_assert_eq!(
                    self.families[index].kind, kind,
                    "metric {name:?} used as two types"
                );
                index
            }
            None => {
                self.families.push(Family {
                    name: name.to_string(),
                    kind,
                    help: help.to_string(),
                    samples: String::new(),
                });
                self.by_name
                    .insert(name.to_string(), self.families.len() - 1);
                self.families.len() - 1
            }
        };
        &mut self.families[index]
    }
}

/// Appends `name{suffix}{labels,le="..."} value\n`.
fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&str, &str)],
    le: Option<f64>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        for (i, (label, label_value)) in labels.iter().enumerate() {
            debug_assert!(
                is_label_name(label),
                "invalid label name {label:?} on {name}"
            );
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_label_value(out, label_value);
            out.push('"');
        }
        if let Some(le) = le {
            if !labels.is_empty() {
                out.push(',');
            }
            out.push_str("le=\"");
            push_value(out, le);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    push_value(out, value);
    out.push('\n');
}

/// Rust's `Display` for f64 is the shortest text that parses back to the
/// same value and never uses an exponent, which Go's `ParseFloat` (what
/// Prometheus runs) accepts; only the non-finite values need spelling out.
fn push_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value == f64::INFINITY {
        out.push_str("+Inf");
    } else if value == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{value}");
    }
}

fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved for
/// Prometheus itself).
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_with_labels_and_escaping() {
        let mut e = Encoder::new();
        e.counter(
            "dex_orders_total",
            "Orders accepted.\nPer core \\ side.",
            &[
                (&[("core", "0"), ("side", "bid")], 12.0),
                (&[("core", "1"), ("side", "a\"b\\c\nd")], 3.5),
            ],
        );
        assert_eq!(
            e.finish(),
            "# HELP dex_orders_total Orders accepted.\\nPer core \\\\ side.\n\
             # TYPE dex_orders_total counter\n\
             dex_orders_total{core=\"0\",side=\"bid\"} 12\n\
             dex_orders_total{core=\"1\",side=\"a\\\"b\\\\c\\nd\"} 3.5\n"
        );
    }

    #[test]
    fn gauge_without_labels_and_special_values() {
        let mut e = Encoder::new();
        e.gauge("dex_up", "1 when ready.", &[(&[], 1.0)]);
        e.gauge(
            "dex_odd",
            "Odd values.",
            &[
                (&[("v", "nan")], f64::NAN),
                (&[("v", "inf")], f64::INFINITY),
                (&[("v", "-inf")], f64::NEG_INFINITY),
                (&[("v", "big")], 1e21),
                (&[("v", "small")], -0.000125),
            ],
        );
        assert_eq!(
            e.finish(),
            "# HELP dex_up 1 when ready.\n\
             # TYPE dex_up gauge\n\
             dex_up 1\n\
             # HELP dex_odd Odd values.\n\
             # TYPE dex_odd gauge\n\
             dex_odd{v=\"nan\"} NaN\n\
             dex_odd{v=\"inf\"} +Inf\n\
             dex_odd{v=\"-inf\"} -Inf\n\
             dex_odd{v=\"big\"} 1000000000000000000000\n\
             dex_odd{v=\"small\"} -0.000125\n"
        );
    }

    #[test]
    fn repeated_family_keeps_one_help_and_contiguous_samples() {
        let mut e = Encoder::new();
        e.gauge("dex_queue_depth", "Depth.", &[(&[("core", "0")], 1.0)]);
        e.gauge("dex_other", "Other.", &[(&[], 7.0)]);
        e.gauge("dex_queue_depth", "Depth.", &[(&[("core", "1")], 2.0)]);
        assert_eq!(
            e.finish(),
            "# HELP dex_queue_depth Depth.\n\
             # TYPE dex_queue_depth gauge\n\
             dex_queue_depth{core=\"0\"} 1\n\
             dex_queue_depth{core=\"1\"} 2\n\
             # HELP dex_other Other.\n\
             # TYPE dex_other gauge\n\
             dex_other 7\n"
        );
    }

    #[test]
    fn histogram_with_labels() {
        let mut e = Encoder::new();
        e.histogram(
            "dex_ack_latency_seconds",
            "Order to ack.",
            &[("core", "0")],
            &[(0.000005, 3), (0.00001, 7), (0.0001, 9)],
            0.00042,
            10,
        );
        e.histogram(
            "dex_ack_latency_seconds",
            "Order to ack.",
            &[("core", "1")],
            &[(0.000005, 0), (f64::INFINITY, 0)],
            0.0,
            0,
        );
        assert_eq!(
            e.finish(),
            "# HELP dex_ack_latency_seconds Order to ack.\n\
             # TYPE dex_ack_latency_seconds histogram\n\
             dex_ack_latency_seconds_bucket{core=\"0\",le=\"0.000005\"} 3\n\
             dex_ack_latency_seconds_bucket{core=\"0\",le=\"0.00001\"} 7\n\
             dex_ack_latency_seconds_bucket{core=\"0\",le=\"0.0001\"} 9\n\
             dex_ack_latency_seconds_bucket{core=\"0\",le=\"+Inf\"} 10\n\
             dex_ack_latency_seconds_sum{core=\"0\"} 0.00042\n\
             dex_ack_latency_seconds_count{core=\"0\"} 10\n\
             dex_ack_latency_seconds_bucket{core=\"1\",le=\"0.000005\"} 0\n\
             dex_ack_latency_seconds_bucket{core=\"1\",le=\"+Inf\"} 0\n\
             dex_ack_latency_seconds_sum{core=\"1\"} 0\n\
             dex_ack_latency_seconds_count{core=\"1\"} 0\n"
        );
    }

    #[test]
    fn histogram_without_labels() {
        let mut e = Encoder::new();
        e.histogram("h", "H.", &[], &[(1.0, 1)], 0.5, 1);
        assert_eq!(
            e.finish(),
            "# HELP h H.\n# TYPE h histogram\n\
             h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n"
        );
    }

    #[test]
    fn empty_encoder_is_empty() {
        assert_eq!(Encoder::new().finish(), "");
    }

    #[test]
    fn names() {
        for ok in ["a", "_a", "a:b_c9", "dex_orders_total", ":x"] {
            assert!(is_metric_name(ok), "{ok}");
        }
        for bad in ["", "9a", "a-b", "a b", "é"] {
            assert!(!is_metric_name(bad), "{bad}");
        }
        for ok in ["core", "_x", "a9"] {
            assert!(is_label_name(ok), "{ok}");
        }
        for bad in ["", "__name__", "a:b", "9a"] {
            assert!(!is_label_name(bad), "{bad}");
        }
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "must end in _total")]
    fn counter_name_without_total_is_caught() {
        Encoder::new().counter("dex_orders", "x", &[]);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "invalid metric name")]
    fn bad_metric_name_is_caught() {
        Encoder::new().gauge("dex-orders", "x", &[]);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "used as two types")]
    fn one_name_two_types_is_caught() {
        let mut e = Encoder::new();
        e.gauge("dex_x_total", "x", &[]);
        e.counter("dex_x_total", "x", &[]);
    }
}
