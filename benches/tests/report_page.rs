//! The report pages of `scripts/bench.sh --report` and
//! `scripts/netns-bench.sh --report`, from `--tiny` runs against the debug
//! binaries: one self-contained HTML file (nothing loaded from anywhere:
//! no scripts, style sheets, images or fonts), whose inline SVG charts are
//! well-formed and carry every configuration as a labelled series, and
//! which headless Chromium renders to a picture that is not blank. Nothing
//! here asserts a speed.

use std::path::{Path, PathBuf};
use std::process::Command;

use testkit::{TempDir, missing, output_text as text};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bin_dir() -> PathBuf {
    testkit::bin_dir(&["turbo-dex", "dex-trader", "dex-report", "tcp-rtt"])
}

/// Fails when the page would load anything: every chart and style must be
/// inline.
fn assert_self_contained(html: &str) {
    let lower = html.to_ascii_lowercase();
    for external in [
        "<script",
        "<link",
        "<img",
        "<iframe",
        "<object",
        "<embed",
        " src=",
        " href=",
        "url(",
        "@import",
        "xlink:href",
    ] {
        assert!(
            !lower.contains(external),
            "the page references something outside it ({external})"
        );
    }
    assert!(
        lower.starts_with("<!doctype html>"),
        "{}",
        &html[..80.min(html.len())]
    );
    assert!(lower.contains("<style>"), "the style is inline");
}

/// Every inline `<svg>...</svg>` of the page, each parsed as XML (a chart
/// that is not well-formed fails here) and reduced to its texts.
fn svg_texts(html: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("<svg") {
        let end = rest[start..].find("</svg>").expect("every <svg> is closed") + start + 6;
        let svg = &rest[start..end];
        let doc = roxmltree::Document::parse(svg)
            .unwrap_or_else(|e| panic!("an inline SVG is not well-formed XML: {e}"));
        out.push(
            doc.descendants()
                .filter(|n| n.has_tag_name("text"))
                .filter_map(|n| n.text())
                .map(|t| t.trim().to_string())
                .collect(),
        );
        rest = &rest[end..];
    }
    out
}

fn assert_has(texts: &[String], want: &str) {
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with(want) || t.ends_with(want)),
        "no text {want:?} in the chart; its texts: {texts:?}"
    );
}

/// Renders the page with headless Chromium (scripts/report-png.sh) and
/// checks the picture is a page: big, and far from one colour. Skips,
/// loudly, where Chromium is not installed.
fn assert_renders(page: &Path) -> Option<String> {
    if let Some(why) = missing(false, &["chromium"]) {
        return Some(format!(
            "{why} (Debian: apt-get install --no-install-recommends chromium; scripts/test.sh \
             installs it), to render the report page"
        ));
    }
    let png = page.with_file_name("page.png");
    let out = Command::new(root().join("scripts/report-png.sh"))
        .arg(page)
        .arg(&png)
        .output()
        .expect("report-png.sh runs");
    assert!(
        out.status.success(),
        "report-png.sh failed:\n{}",
        text(&out)
    );
    let bytes = std::fs::read(&png).expect("the PNG is written");
    assert!(
        bytes.len() > 30_000,
        "a {}-byte PNG is too small for the page",
        bytes.len()
    );
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("a valid PNG");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).expect("a valid PNG frame");
    assert!(
        info.width >= 1000 && info.height >= 1000,
        "{}x{}",
        info.width,
        info.height
    );
    let channels = info.color_type.samples();
    let mut colours = std::collections::BTreeSet::new();
    for px in pixels[..info.buffer_size()].chunks_exact(channels) {
        colours.insert(px[..3.min(channels)].to_vec());
        if colours.len() >= 64 {
            break;
        }
    }
    assert!(
        colours.len() >= 64,
        "the rendered page has only {} colours",
        colours.len()
    );
    None
}

#[test]
fn bench_tiny_report_is_one_self_contained_page() {
    let tmp = TempDir::new("bench-report");
    let dir = tmp.path();
    let out = Command::new(root().join("scripts/bench.sh"))
        .arg("--tiny")
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--report")
        .arg(dir)
        .current_dir(root())
        .output()
        .expect("bench.sh runs");
    assert!(
        out.status.success(),
        "bench.sh --tiny --report failed:\n{}",
        text(&out)
    );
    let page = dir.join("index.html");
    let html = std::fs::read_to_string(&page).expect("index.html written");
    assert_self_contained(&html);
    // The machine, the command, and the throughput table with trades/s.
    for want in [
        "Machine: ",
        "<code>scripts/bench.sh --tiny</code>",
        "<th>orders/s</th>",
        "<th>trades/s</th>",
        "<h2>Throughput, closed loop</h2>",
    ] {
        assert!(html.contains(want), "the page lacks {want:?}");
    }
    let charts = svg_texts(&html);
    assert_eq!(
        charts.len(),
        3,
        "latency, throughput over time, RSS over time"
    );
    let latency = &charts[0];
    for want in [
        "Latency by percentile (log axes)",
        "percentile",
        "latency (us)",
        "99%",
        // One series per configuration of the tables, labelled.
        "match, batch 1, closed loop",
        "match, batch 100, closed loop",
        "null, batch 1, closed loop",
        "null, batch 100, closed loop",
        "match, batch 100, closed loop, fsync journal",
        "match, open loop 20.0k/s",
        "match, open loop 20.0k/s, fsync journal",
        "market data: none",
        "market data: depth",
        // The reference line.
        "bare loopback TCP round trip p50 (",
    ] {
        assert_has(latency, want);
    }
    assert_has(&charts[1], "Throughput of the long run");
    assert_has(&charts[1], "requests answered/s");
    assert_has(&charts[1], "seconds since the start");
    assert_has(&charts[2], "Server resident memory of the long run");
    assert_has(&charts[2], "RSS (MiB)");
    // The files the charts come from stay beside the page.
    for file in [
        "tput-match-none-b1.hgrm",
        "memory.hlog",
        "memory.rss-time",
        "table.md",
    ] {
        assert!(dir.join(file).is_file(), "{file} is missing");
    }
    if let Some(why) = assert_renders(&page) {
        testkit::skip!("{why}");
    }
}

#[test]
fn netns_tiny_report_draws_grouped_bars_with_ranges() {
    if let Some(why) = missing(true, &["ip"]) {
        testkit::skip!("{why}, to create network namespaces");
        return;
    }
    let tmp = TempDir::new("netns-report");
    let dir = tmp.path();
    let out = Command::new("bash")
        .arg(root().join("scripts/netns-bench.sh"))
        .args(["--tiny", "--bin-dir"])
        .arg(bin_dir())
        .arg("--report")
        .arg(dir)
        .output()
        .expect("netns-bench.sh runs");
    assert!(
        out.status.success(),
        "netns-bench.sh --tiny --report failed:\n{}",
        text(&out)
    );
    let html = std::fs::read_to_string(dir.join("index.html")).expect("index.html written");
    assert_self_contained(&html);
    assert!(
        html.contains("<th>orders/s range</th>"),
        "the table is on the page"
    );
    let charts = svg_texts(&html);
    assert_eq!(charts.len(), 2, "orders/s and p99");
    for (chart, title) in charts.iter().zip(["Orders per second", "p99 latency"]) {
        assert_has(chart, title);
        for want in [
            "batch 1",
            "batch 100",
            "open 5000/s",
            "MTU 1500",
            "MTU 9000",
        ] {
            assert_has(chart, want);
        }
    }
}

/// The page the README shows (benches/report/index.html, a `--short`
/// run's) stays self-contained and well-formed when it is regenerated.
#[test]
fn the_committed_report_page_is_self_contained() {
    let page = root().join("benches/report/index.html");
    let html = std::fs::read_to_string(&page).expect("benches/report/index.html is committed");
    assert_self_contained(&html);
    let charts = svg_texts(&html);
    assert_eq!(
        charts.len(),
        3,
        "latency, throughput over time, RSS over time"
    );
    assert_has(&charts[0], "bare loopback TCP round trip p50 (");
    assert_has(&charts[0], "longest hiccup of a spinning thread (");
    assert!(root().join("benches/report/bench-report.png").is_file());
}
