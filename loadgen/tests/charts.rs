//! dex-trader's result files: `--hgrm`, `--interval-log` and `--plot`
//! written by a real run against the stand-in server on 127.0.0.1, and the
//! charts (well-formed SVG with the expected titles, axes and labelled
//! series). Nothing here asserts a speed.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{ServerOptions, TestServer};
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use loadgen::hgrm::{Point, parse_percentile_distribution};
use loadgen::plot::{Bar, Bars, Reference, Series, bar_chart, latency_series, percentile_chart};

fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{name}", std::process::id()))
}

/// Parses `svg` as XML (panics with the parser's message when it is not
/// well-formed) and returns the text of every `<text>` element.
fn svg_texts(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("not XML: {e}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(|t| t.trim().to_string())
        .collect()
}

fn assert_has(texts: &[String], want: &str) {
    assert!(
        texts.iter().any(|t| t == want),
        "no text {want:?} in the SVG; its texts: {texts:?}"
    );
}

#[test]
fn a_run_writes_hgrm_interval_log_and_plot() {
    let server = TestServer::start(ServerOptions::default());
    let (hgrm, log, plot) = (tmp("run.hgrm"), tmp("run.hlog"), tmp("run.svg"));
    let out = Command::new(env!("CARGO_BIN_EXE_dex-trader"))
        .args(["--server", &server.address(), "--cores", "0", "--quiet"])
        .args(["--warmup", "1s", "--duration", "2s", "--batch", "10"])
        .arg("--hgrm")
        .arg(&hgrm)
        .arg("--interval-log")
        .arg(&log)
        .arg("--plot")
        .arg(&plot)
        .output()
        .expect("run dex-trader");
    testkit::assert_success(&out);

    let text = std::fs::read_to_string(&hgrm).expect("--hgrm written");
    assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"));
    assert!(text.contains("#[Buckets =           32, SubBuckets     =         2048]"));
    let points = parse_percentile_distribution(&text).unwrap();
    assert_eq!(points.last().unwrap().quantile, 1.0);

    let text = std::fs::read_to_string(&log).expect("--interval-log written");
    let mut intervals = 0;
    let mut tags = Vec::new();
    for entry in IntervalLogIterator::new(text.as_bytes()) {
        if let LogEntry::Interval(i) = entry.expect("a valid interval log") {
            intervals += 1;
            tags.push(i.tag().map(|t| t.as_str().to_string()));
        }
    }
    // About one a second over 3 s (the last second may end after the run).
    assert!(intervals >= 2, "{intervals} intervals in\n{text}");
    assert_eq!(tags[0].as_deref(), Some("warmup"), "{text}");
    assert!(
        tags.iter().any(Option::is_none),
        "no measured interval in\n{text}"
    );

    let svg = std::fs::read_to_string(&plot).expect("--plot written");
    let texts = svg_texts(&svg);
    for want in [
        "latency",
        "orders/s",
        "trades/s",
        "end of warmup",
        "percentile",
        "latency (us)",
        "seconds since the start",
        "99%",
    ] {
        assert_has(&texts, want);
    }
    assert!(
        texts.iter().any(|t| t.ends_with("latency by percentile")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.ends_with("throughput per second")),
        "{texts:?}"
    );
}

#[test]
fn bad_output_paths_are_usage_errors_before_the_run() {
    // No server needed: the paths are checked first.
    for (flag, path, want) in [
        ("--hgrm", "/no/such/folder/x.hgrm", "does not exist"),
        ("--plot", "chart.png", "name the file with .svg"),
        ("--interval-log", "/", "not a folder"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_dex-trader"))
            .args(["--server", "127.0.0.1:1", "--cores", "0", flag, path])
            .output()
            .expect("run dex-trader");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {path}: {err}");
        assert!(err.contains(want), "{flag} {path}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn dex_report_says_what_is_wrong_with_a_folder() {
    let empty = tmp("empty-results");
    std::fs::create_dir_all(&empty).unwrap();
    for (args, code, want) in [
        (vec!["bench", "/no/such/folder"], 2, "is not a folder"),
        (vec!["bench", empty.to_str().unwrap()], 1, "table.md"),
        (vec!["netns", empty.to_str().unwrap()], 1, "table.md"),
        (vec!["other", "."], 2, "invalid value"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_dex-report"))
            .args(&args)
            .output()
            .expect("run dex-report");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

fn distribution(scale: f64) -> Vec<Point> {
    [0.0, 0.5, 0.9, 0.99, 0.999, 1.0]
        .iter()
        .enumerate()
        .map(|(i, &q)| Point {
            value: scale * (i + 1) as f64,
            quantile: q,
        })
        .collect()
}

#[test]
fn the_percentile_chart_labels_every_series_and_reference() {
    let series: Vec<Series> = ["match, batch 1", "null, batch 1", "match, fsync journal"]
        .iter()
        .enumerate()
        .map(|(i, l)| latency_series(l, &distribution(10.0 * (i + 1) as f64)))
        .collect();
    let refs = [
        Reference {
            label: "round trip (12 us)".into(),
            value: 12.0,
        },
        Reference {
            label: "hiccup (900 us)".into(),
            value: 900.0,
        },
    ];
    let svg =
        percentile_chart("Latency & more <by percentile>", &series, &refs, (800, 500)).unwrap();
    let texts = svg_texts(&svg);
    for want in [
        "Latency & more <by percentile>",
        "match, batch 1",
        "null, batch 1",
        "match, fsync journal",
        "round trip (12 us)",
        "hiccup (900 us)",
        "percentile",
        "latency (us)",
        "0%",
        "90%",
        "99%",
        "99.9%",
    ] {
        assert_has(&texts, want);
    }
    // One polyline per series and per reference line at least.
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let lines = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .count();
    assert!(lines >= 5, "{lines} polylines");
}

#[test]
fn the_bar_chart_has_groups_sets_and_error_bars() {
    let bar = |v: f64| {
        Some(Bar {
            value: v,
            low: v * 0.9,
            high: v * 1.1,
        })
    };
    let bars = vec![
        Bars {
            label: "pinned, MTU 1500".into(),
            values: vec![bar(100.0), bar(2000.0)],
        },
        Bars {
            label: "pinned, MTU 9000".into(),
            values: vec![bar(120.0), None],
        },
    ];
    let groups = vec!["batch 1".to_string(), "batch 100".to_string()];
    let svg = bar_chart("Orders per second", "orders/s", &groups, &bars, (800, 400)).unwrap();
    let texts = svg_texts(&svg);
    for want in [
        "Orders per second",
        "orders/s",
        "batch 1",
        "batch 100",
        "pinned, MTU 1500",
        "pinned, MTU 9000",
    ] {
        assert_has(&texts, want);
    }
    let doc = roxmltree::Document::parse(&svg).unwrap();
    // Three whiskers (a polyline each), one per bar drawn.
    let whiskers = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .count();
    assert!(whiskers >= 3, "{whiskers}");
}
