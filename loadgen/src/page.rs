//! The one-page reports of `scripts/bench.sh --report` and
//! `scripts/netns-bench.sh --report` (`dex-report bench|netns DIR`): one
//! self-contained HTML file built from the results folder the script
//! writes, with the charts as inline SVG. Nothing in the page loads
//! anything: no scripts, no style sheets, no images, no fonts.
//!
//! What it reads from a bench folder: `table.md` (the machine, the
//! command and the tables, as the script prints them), every `NAME.hgrm`
//! (one latency distribution per configuration), `tcp-rtt.json`,
//! `tcp-rtt-spin.json` and `hiccup.json` (the reference lines),
//! `memory.hlog` and `memory.rss-time` (the long run over time). From a
//! netns folder: `table.md` and `runs.tsv`.

use std::fmt::Write as _;
use std::path::Path;

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

use crate::hgrm::parse_percentile_distribution;
use crate::plot::{
    Bar, Bars, Reference, Series, bar_chart, latency_series, percentile_chart, time_chart,
};

/// Most `.hgrm` files one chart overlays (each is a line and a legend row).
pub const LATENCY_SERIES_MAX: usize = 24;

fn read(dir: &Path, name: &str) -> Result<String, String> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn read_optional(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name)).ok()
}

/// A human name for a bench run: `tput-match-none-b100` is "match, batch
/// 100, closed loop"; `lat-match-fsync-r100000` is "match, open loop
/// 100k/s, fsync journal"; the market-data rows `md-depth` are "market
/// data: depth".
pub fn run_label(stem: &str) -> String {
    if let Some(row) = stem.strip_prefix("md-") {
        return format!("market data: {row}");
    }
    let parts: Vec<&str> = stem.split('-').collect();
    match parts.as_slice() {
        [kind @ ("tput" | "lat"), engine, journal, last] => {
            let journal = if *journal == "none" {
                String::new()
            } else {
                format!(", {journal} journal")
            };
            let load = match (*kind, last.strip_prefix('b'), last.strip_prefix('r')) {
                ("tput", Some(batch), _) => format!("batch {batch}, closed loop"),
                ("lat", _, Some(rate)) => match rate.parse::<f64>() {
                    Ok(r) => format!("open loop {}/s", crate::report::si(r)),
                    Err(_) => format!("open loop {rate}/s"),
                },
                _ => (*last).to_string(),
            };
            format!("{engine}, {load}{journal}")
        }
        _ => stem.to_string(),
    }
}

/// The first number named `key` in a JSON document, at any depth
/// (`tcp-rtt.json` keeps its percentiles under `rtt_us`).
fn json_number(text: &str, key: &str) -> Option<f64> {
    fn find(v: &serde_json::Value, key: &str) -> Option<f64> {
        let map = v.as_object()?;
        map.get(key)
            .and_then(serde_json::Value::as_f64)
            .or_else(|| map.values().find_map(|inner| find(inner, key)))
    }
    find(&serde_json::from_str(text).ok()?, key)
}

/// Where a bench run goes in the chart's legend: the table's order
/// (closed loop, then open loop; match, then null; no journal first;
/// batch or rate ascending).
fn run_order(stem: &str) -> (u8, u8, u8, u64, String) {
    let parts: Vec<&str> = stem.split('-').collect();
    match parts.as_slice() {
        [kind, engine, journal, last] => (
            u8::from(*kind != "tput"),
            u8::from(*engine != "match"),
            u8::from(*journal != "none"),
            last.trim_start_matches(['b', 'r'])
                .parse()
                .unwrap_or(u64::MAX),
            stem.to_string(),
        ),
        _ => (2, 0, 0, 0, stem.to_string()),
    }
}

/// The latency series of every `.hgrm` file in `dir`: closed-loop runs
/// first, then open-loop ones, each in name order.
fn latency_series_of(dir: &Path) -> Result<Vec<Series>, String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".hgrm"))
        .collect();
    names.sort_by_key(|n| run_order(n.trim_end_matches(".hgrm")));
    names.truncate(LATENCY_SERIES_MAX);
    let mut out = Vec::new();
    for name in names {
        let stem = name.trim_end_matches(".hgrm");
        let text = read(dir, &name)?;
        // An empty histogram (a run with no answers) has no line to draw.
        if let Ok(points) = parse_percentile_distribution(&text) {
            out.push(latency_series(&run_label(stem), &points));
        }
    }
    Ok(out)
}

/// The bench's reference lines: the bare TCP round trip and the longest
/// hiccup, when measured.
fn references_of(dir: &Path) -> Vec<Reference> {
    let mut out = Vec::new();
    let trips = [
        ("tcp-rtt.json", "bare loopback TCP round trip p50"),
        ("tcp-rtt-spin.json", "bare TCP round trip p50, spinning"),
    ];
    for (file, label) in trips {
        if let Some(v) = read_optional(dir, file).and_then(|t| json_number(&t, "p50"))
            && v > 0.0
        {
            out.push(Reference {
                label: format!("{label} ({v:.1} us)"),
                value: v,
            });
        }
    }
    if let Some(text) = read_optional(dir, "hiccup.json")
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
    {
        let longest_ms = v["cpus"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["longest_ms"].as_f64())
            .fold(0.0f64, f64::max);
        if longest_ms > 0.0 {
            let us = longest_ms * 1000.0;
            out.push(Reference {
                label: format!("longest hiccup of a spinning thread ({us:.0} us)"),
                value: us,
            });
        }
    }
    out
}

/// Answers per second of each interval of an interval log, against the
/// interval's end in seconds since the log's base time.
pub fn answers_per_second(log: &str) -> Result<Vec<(f64, f64)>, String> {
    let mut out = Vec::new();
    for entry in IntervalLogIterator::new(log.as_bytes()) {
        let entry = entry.map_err(|e| format!("interval log: {e:?}"))?;
        if let LogEntry::Interval(interval) = entry {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(interval.encoded_histogram())
                .map_err(|e| format!("interval log: bad base64 ({e})"))?;
            let h: Histogram<u64> = Deserializer::new()
                .deserialize(&mut bytes.as_slice())
                .map_err(|e| format!("interval log: bad histogram ({e:?})"))?;
            let secs = interval.duration().as_secs_f64();
            if secs > 0.0 {
                let end = (interval.start_timestamp() + interval.duration()).as_secs_f64();
                out.push((end, h.len() as f64 / secs));
            }
        }
    }
    Ok(out)
}

/// `SECONDS KIB` lines as (seconds, MiB).
fn rss_over_time(text: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let t = f.next()?.parse::<f64>().ok()?;
            let kib = f.next()?.parse::<f64>().ok()?;
            Some((t, kib / 1024.0))
        })
        .filter(|(t, mib)| t.is_finite() && mib.is_finite())
        .collect()
}

/// Text for HTML: `&`, `<`, `>` and `"` escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// One line of markdown text: escaped, `code` in backticks as <code>.
fn inline(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{}</code>", escape(part));
        } else {
            out.push_str(&escape(part));
        }
    }
    out
}

/// The markdown the scripts write (headings, paragraphs, pipe tables,
/// indented blocks) as HTML.
pub fn markdown_to_html(md: &str) -> String {
    let mut out = String::new();
    let lines: Vec<&str> = md.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(h) = line.strip_prefix("# ") {
            let _ = writeln!(out, "<h1>{}</h1>", inline(h));
            i += 1;
        } else if let Some(h) = line.strip_prefix("## ") {
            let _ = writeln!(out, "<h2>{}</h2>", inline(h));
            i += 1;
        } else if line.starts_with('|') {
            out.push_str("<table>\n");
            let mut header = true;
            while i < lines.len() && lines[i].starts_with('|') {
                let row = lines[i].trim().trim_matches('|');
                i += 1;
                if row.starts_with("---") || row.starts_with(":--") {
                    continue;
                }
                let tag = if header { "th" } else { "td" };
                header = false;
                out.push_str("<tr>");
                for cell in row.split('|') {
                    let _ = write!(out, "<{tag}>{}</{tag}>", inline(cell.trim()));
                }
                out.push_str("</tr>\n");
            }
            out.push_str("</table>\n");
        } else if line.starts_with("    ") {
            out.push_str("<pre>");
            while i < lines.len() && lines[i].starts_with("    ") {
                let _ = writeln!(out, "{}", escape(&lines[i][4..]));
                i += 1;
            }
            out.push_str("</pre>\n");
        } else if line.trim().is_empty() {
            i += 1;
        } else {
            out.push_str("<p>");
            while i < lines.len()
                && !lines[i].trim().is_empty()
                && !lines[i].starts_with('|')
                && !lines[i].starts_with('#')
                && !lines[i].starts_with("    ")
            {
                let _ = writeln!(out, "{}", inline(lines[i]));
                i += 1;
            }
            out.push_str("</p>\n");
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}\
th,td{border:1px solid #bbb;padding:2px 6px;text-align:right}th{background:#eee}\
td:first-child,th:first-child{text-align:left}\
pre{background:#f6f6f6;padding:.5em;font-size:12px;overflow-x:auto}\
code{background:#f0f0f0;padding:0 2px}figure{margin:1em 0}svg{max-width:100%;height:auto}\
.note{color:#555;font-size:14px}";

/// The page around `body`.
fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        escape(title)
    )
}

/// An SVG chart as a figure (the SVG inline).
fn figure(svg: &str, caption: &str) -> String {
    format!(
        "<figure>\n{svg}\n<figcaption class=\"note\">{}</figcaption>\n</figure>\n",
        inline(caption)
    )
}

/// The page of a `scripts/bench.sh` results folder.
pub fn bench_page(dir: &Path) -> Result<String, String> {
    let table = read(dir, "table.md")
        .map_err(|e| format!("{e}; give the folder scripts/bench.sh --report (or --out) wrote"))?;
    let title = table
        .lines()
        .find_map(|l| l.strip_prefix("# "))
        .unwrap_or("turbo-dex benchmark")
        .to_string();
    let mut body = markdown_to_html(&table);

    body.push_str("<h2>Latency by percentile, every configuration</h2>\n");
    let series = latency_series_of(dir)?;
    let references = references_of(dir);
    if series.is_empty() {
        body.push_str(
            "<p class=\"note\">No latency distributions (.hgrm files) in this folder.</p>\n",
        );
    } else {
        let svg = percentile_chart(
            "Latency by percentile (log axes)",
            &series,
            &references,
            (1060, 640),
        )?;
        body.push_str(&figure(
            &svg,
            "Each line is one run's HdrHistogram percentile distribution (its `.hgrm` file \
             beside this page): x is the percentile on a log axis of nines, y the latency from \
             each request's send (or scheduled) time to its first answer. Dashed lines: the bare \
             TCP round trip and the longest hiccup of a spinning thread, where measured (no \
             latency can beat them).",
        ));
    }

    body.push_str("<h2>The long run over time</h2>\n");
    let answers = match read_optional(dir, "memory.hlog") {
        Some(log) => answers_per_second(&log)?,
        None => Vec::new(),
    };
    let rss = read_optional(dir, "memory.rss-time")
        .map(|t| rss_over_time(&t))
        .unwrap_or_default();
    if answers.is_empty() && rss.is_empty() {
        body.push_str("<p class=\"note\">No long run in this folder.</p>\n");
    } else {
        let svg = time_chart(
            "Throughput of the long run",
            "requests answered per second",
            &[Series {
                label: "requests answered/s (dex-trader's interval log)".into(),
                points: answers,
            }],
            None,
            (1060, 360),
        )?;
        body.push_str(&figure(
            &svg,
            "Requests answered per second, from dex-trader's `--interval-log` (`memory.hlog`), \
             warmup included.",
        ));
        let svg = time_chart(
            "Server resident memory of the long run",
            "RSS (MiB)",
            &[Series {
                label: "turbo-dex RSS MiB".into(),
                points: rss,
            }],
            None,
            (1060, 360),
        )?;
        body.push_str(&figure(
            &svg,
            "turbo-dex's resident set size, sampled from /proc while the run lasts (`memory.rss-time`).",
        ));
    }
    Ok(page(&title, &body))
}

/// The median of `values` (not empty).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// One successful run of `runs.tsv`.
#[derive(Clone, Debug)]
struct NetnsRun {
    pin: String,
    mtu: String,
    group: String,
    orders_per_sec: f64,
    p99_us: f64,
}

fn parse_runs(tsv: &str) -> Vec<NetnsRun> {
    tsv.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            if f.len() < 12 || f[11] != "ok" {
                return None;
            }
            let group = if f[4] == "closed" {
                format!("batch {}", f[3])
            } else {
                f[4].to_string()
            };
            Some(NetnsRun {
                pin: f[1].to_string(),
                mtu: f[2].to_string(),
                group,
                orders_per_sec: f[5].parse().ok()?,
                p99_us: f[7].parse().ok()?,
            })
        })
        .collect()
}

/// Bars of `metric`: one set per (pinning, MTU), one group per load, each
/// the median of its runs with the lowest and highest as the error bar.
fn netns_bars(runs: &[NetnsRun], metric: fn(&NetnsRun) -> f64) -> (Vec<String>, Vec<Bars>) {
    let mut groups: Vec<String> = Vec::new();
    let mut sets: Vec<(String, String)> = Vec::new();
    for r in runs {
        if !groups.contains(&r.group) {
            groups.push(r.group.clone());
        }
        let key = (r.pin.clone(), r.mtu.clone());
        if !sets.contains(&key) {
            sets.push(key);
        }
    }
    let bars = sets
        .iter()
        .map(|(pin, mtu)| Bars {
            label: format!("{pin}, MTU {mtu}"),
            values: groups
                .iter()
                .map(|g| {
                    let mut v: Vec<f64> = runs
                        .iter()
                        .filter(|r| &r.pin == pin && &r.mtu == mtu && &r.group == g)
                        .map(metric)
                        .collect();
                    if v.is_empty() {
                        return None;
                    }
                    let value = median(&mut v);
                    Some(Bar {
                        value,
                        low: v[0],
                        high: v[v.len() - 1],
                    })
                })
                .collect(),
        })
        .collect();
    (groups, bars)
}

/// The page of a `scripts/netns-bench.sh` results folder.
pub fn netns_page(dir: &Path) -> Result<String, String> {
    let table = read(dir, "table.md").map_err(|e| {
        format!("{e}; give the folder scripts/netns-bench.sh --report (or --out) wrote")
    })?;
    let runs = parse_runs(&read(dir, "runs.tsv")?);
    let title = "turbo-dex over a veth pair: jumbo frames, batching, pinning";
    let mut body = format!("<h1>{}</h1>\n", escape(title));
    if runs.is_empty() {
        body.push_str("<p class=\"note\">No run succeeded; see runs.tsv.</p>\n");
    } else {
        let (groups, bars) = netns_bars(&runs, |r| r.orders_per_sec);
        let svg = bar_chart("Orders per second", "orders/s", &groups, &bars, (1060, 420))?;
        body.push_str(&figure(
            &svg,
            "Bars: the median of the runs of each configuration; whiskers: the lowest and the \
             highest run (the run-to-run range).",
        ));
        let (groups, bars) = netns_bars(&runs, |r| r.p99_us);
        let svg = bar_chart("p99 latency", "p99 (us)", &groups, &bars, (1060, 420))?;
        body.push_str(&figure(
            &svg,
            "p99 latency of the same runs: median and run-to-run range.",
        ));
    }
    body.push_str(&markdown_to_html(&table));
    Ok(page(title, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_read_as_configurations() {
        assert_eq!(
            run_label("tput-match-none-b100"),
            "match, batch 100, closed loop"
        );
        assert_eq!(
            run_label("tput-match-fsync-b2000"),
            "match, batch 2000, closed loop, fsync journal"
        );
        assert_eq!(
            run_label("lat-match-none-r20000"),
            "match, open loop 20.0k/s"
        );
        assert_eq!(run_label("md-depth"), "market data: depth");
        assert_eq!(run_label("other"), "other");
    }

    #[test]
    fn runs_sort_in_table_order_and_nested_numbers_are_found() {
        let mut names = vec![
            "lat-match-none-r100000",
            "tput-match-fsync-b100",
            "tput-null-none-b1",
            "lat-match-none-r20000",
            "tput-match-none-b100",
            "tput-match-none-b1",
        ];
        names.sort_by_key(|n| run_order(n));
        assert_eq!(
            names,
            vec![
                "tput-match-none-b1",
                "tput-match-none-b100",
                "tput-match-fsync-b100",
                "tput-null-none-b1",
                "lat-match-none-r20000",
                "lat-match-none-r100000",
            ]
        );
        let rtt = r#"{"count": 2000, "rtt_us": {"p50": 52.38, "p99": 4034.76}}"#;
        assert_eq!(json_number(rtt, "p50"), Some(52.38));
        assert_eq!(json_number(rtt, "p90"), None);
    }

    #[test]
    fn markdown_becomes_escaped_html() {
        let html = markdown_to_html(
            "# Title <x>\n\nMachine: `a & b`.\nnext\n\n| a | b |\n|---|---:|\n| 1 | 2 |\n\n    pre <\n",
        );
        assert!(html.contains("<h1>Title &lt;x&gt;</h1>"), "{html}");
        assert!(
            html.contains("<p>Machine: <code>a &amp; b</code>.\nnext\n</p>"),
            "{html}"
        );
        assert!(
            html.contains("<tr><th>a</th><th>b</th></tr>\n<tr><td>1</td><td>2</td></tr>"),
            "{html}"
        );
        assert!(html.contains("<pre>pre &lt;\n</pre>"), "{html}");
    }

    #[test]
    fn netns_bars_are_medians_with_ranges() {
        let tsv = "1\tpinned\t1500\t1\tclosed\t100\t1\t10\t1\t1\t0\tok\n\
                   2\tpinned\t1500\t1\tclosed\t300\t1\t30\t1\t1\t0\tok\n\
                   3\tpinned\t1500\t1\tclosed\t200\t1\t20\t1\t1\t0\tok\n\
                   1\tpinned\t9000\t1\topen 5000/s\t-\t-\t-\t-\t-\t-\texit 1\n";
        let runs = parse_runs(tsv);
        assert_eq!(runs.len(), 3);
        let (groups, bars) = netns_bars(&runs, |r| r.orders_per_sec);
        assert_eq!(groups, vec!["batch 1"]);
        assert_eq!(
            bars[0].values[0],
            Some(Bar {
                value: 200.0,
                low: 100.0,
                high: 300.0
            })
        );
    }
}
