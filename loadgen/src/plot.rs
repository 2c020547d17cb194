//! SVG charts of benchmark results, drawn with `plotters` (SVG backend
//! only: no fonts are read, text is left to the viewer, and nothing in the
//! file loads anything): the latency percentile distribution on a log axis
//! of nines, values over time, and grouped bars with error bars. Used by
//! `dex-trader --plot` and by `dex-report` (the pages of `scripts/bench.sh
//! --report` and `scripts/netns-bench.sh --report`).

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::hgrm::Point;

/// Colours of the series, in order (Tableau 10 and ten more: a `--full`
/// bench has 19 configurations); the 21st series takes the first colour
/// again.
pub const PALETTE: [RGBColor; 20] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 128),
    RGBColor(128, 64, 0),
    RGBColor(0, 128, 128),
    RGBColor(199, 21, 133),
    RGBColor(255, 187, 120),
    RGBColor(100, 100, 0),
    RGBColor(255, 0, 255),
    RGBColor(0, 200, 100),
    RGBColor(170, 110, 40),
    RGBColor(70, 70, 70),
];

/// A labelled line: `(x, y)` points.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The legend's text.
    pub label: String,
    /// The points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// A labelled horizontal reference line (a floor or a ceiling to read the
/// series against).
#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    /// The legend's text.
    pub label: String,
    /// Where it is, in the y axis' unit.
    pub value: f64,
}

/// One bar of a group: the middle (the median) and the range it varied
/// over.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bar {
    /// The bar's height.
    pub value: f64,
    /// The error bar's bottom.
    pub low: f64,
    /// The error bar's top.
    pub high: f64,
}

/// One labelled set of bars, one per group (`None`: no bar there).
#[derive(Clone, Debug, PartialEq)]
pub struct Bars {
    /// The legend's text.
    pub label: String,
    /// One bar per group.
    pub values: Vec<Option<Bar>>,
}

/// Nines of a quantile: 0 for 0%, 1 for 90%, 2 for 99%, 3 for 99.9%.
pub fn nines(quantile: f64) -> f64 {
    -(1.0 - quantile).log10()
}

/// The axis label of a number of nines: `0%`, `90%`, `99%`, `99.9%`.
pub fn nines_label(x: f64) -> String {
    let rounded = x.round();
    if (x - rounded).abs() < 1e-6 && rounded >= 0.0 {
        return match rounded as u32 {
            0 => "0%".into(),
            1 => "90%".into(),
            n => format!(
                "99{}{}%",
                if n > 2 { "." } else { "" },
                "9".repeat(n as usize - 2)
            ),
        };
    }
    let percent = 100.0 * (1.0 - 10f64.powf(-x));
    format!("{percent:.2}%")
}

/// A latency series from the points of a percentile distribution (an
/// `.hgrm` file): x in nines, y in its unit. The 100% point, whose nines
/// are infinite, is drawn at the last finite x (the line rises to the max
/// there).
pub fn latency_series(label: &str, points: &[Point]) -> Series {
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(points.len());
    for p in points {
        let x = if p.quantile < 1.0 {
            nines(p.quantile)
        } else {
            out.last().map_or(0.0, |&(x, _)| x)
        };
        if x.is_finite() && p.value > 0.0 {
            out.push((x, p.value));
        }
    }
    Series {
        label: label.to_string(),
        points: out,
    }
}

fn err(e: impl std::fmt::Display) -> String {
    format!("drawing the chart: {e}")
}

/// Draws into a fresh SVG document of `size` pixels.
fn svg(
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), String>,
) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(&root)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

/// A chart of latency percentile distributions, one line per series, over
/// a log axis of nines (the way HdrHistogram's plots are read), with the
/// references as dashed lines; latency on a log axis, microseconds.
pub fn percentile_chart(
    title: &str,
    series: &[Series],
    references: &[Reference],
    size: (u32, u32),
) -> Result<String, String> {
    svg(size, |root| {
        draw_percentiles(root, title, series, references)
    })
}

/// A chart of values over time, one line per series; `marker`, when given,
/// draws a labelled vertical line (the end of the warmup).
pub fn time_chart(
    title: &str,
    y_desc: &str,
    series: &[Series],
    marker: Option<(&str, f64)>,
    size: (u32, u32),
) -> Result<String, String> {
    svg(size, |root| draw_time(root, title, y_desc, series, marker))
}

/// Grouped bars with error bars: one group per `groups` entry, one bar
/// per [`Bars`] in each.
pub fn bar_chart(
    title: &str,
    y_desc: &str,
    groups: &[String],
    bars: &[Bars],
    size: (u32, u32),
) -> Result<String, String> {
    svg(size, |root| draw_bars(root, title, y_desc, groups, bars))
}

/// `dex-trader --plot`: the run's latency percentile distribution above
/// its orders and trades per second.
pub fn run_chart(
    title: &str,
    latency: &Series,
    per_second: &[Series],
    warmup_secs: f64,
) -> Result<String, String> {
    svg((960, 900), |root| {
        let (top, bottom) = root.split_vertically(520);
        draw_percentiles(
            &top,
            &format!("{title}: latency by percentile"),
            std::slice::from_ref(latency),
            &[],
        )?;
        draw_time(
            &bottom,
            &format!("{title}: throughput per second"),
            "per second",
            per_second,
            Some(("end of warmup", warmup_secs)),
        )
    })
}

/// Most legend rows drawn inside a chart; more go beside it.
const LEGEND_INSIDE_MAX: usize = 4;
/// Width of a legend beside a chart, pixels (about 45 characters).
const LEGEND_WIDTH: u32 = 330;

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Microseconds on an axis: 0.5, 12, 1,500.
fn axis_number(v: f64) -> String {
    if v.abs() >= 1000.0 {
        crate::report::group(v.round() as u64)
    } else if v.abs() >= 10.0 || v == v.round() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A rate on an axis: 950, 12K, 4.5M.
fn axis_rate(v: f64) -> String {
    crate::report::si(v)
}

fn draw_percentiles<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    series: &[Series],
    references: &[Reference],
) -> Result<(), String> {
    let points = series.iter().flat_map(|s| s.points.iter());
    let x_max = points
        .clone()
        .map(|p| p.0)
        .fold(1.0f64, f64::max)
        .ceil()
        .max(2.0);
    let values = points
        .map(|p| p.1)
        .chain(references.iter().map(|r| r.value))
        .filter(|v| *v > 0.0 && v.is_finite());
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo <= hi {
        (lo / 1.5, hi * 1.5)
    } else {
        (1.0, 1000.0)
    };
    // Many lines: the legend goes beside the chart, where it covers none.
    let beside = series.len() + references.len() > LEGEND_INSIDE_MAX;
    let titled = area.titled(title, ("sans-serif", 20)).map_err(err)?;
    let (plot_area, legend_area) = if beside {
        let (w, _) = titled.dim_in_pixel();
        let (left, right) = titled.split_horizontally(w.saturating_sub(LEGEND_WIDTH));
        (left, Some(right))
    } else {
        (titled.clone(), None)
    };
    let mut chart = ChartBuilder::on(&plot_area)
        .margin(12)
        .margin_right(40)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (us)")
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| nines_label(*x))
        .y_label_formatter(&|y| axis_number(*y))
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    for (i, r) in references.iter().enumerate() {
        let c = if i % 2 == 0 {
            BLACK
        } else {
            RGBColor(120, 120, 120)
        };
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, r.value), (x_max, r.value)],
                6,
                4,
                c.stroke_width(1),
            ))
            .map_err(err)?
            .label(r.label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(1)));
    }
    if let Some(legend) = legend_area {
        let font = TextStyle::from(("sans-serif", 13)).pos(Pos::new(HPos::Left, VPos::Center));
        let mut y = 24;
        for (i, s) in series.iter().enumerate() {
            let style = color(i).stroke_width(2);
            legend
                .draw(&PathElement::new([(4, y), (30, y)], style))
                .map_err(err)?;
            legend
                .draw(&Text::new(s.label.as_str(), (36, y), font.clone()))
                .map_err(err)?;
            y += 20;
        }
        for (i, r) in references.iter().enumerate() {
            let c = if i % 2 == 0 {
                BLACK
            } else {
                RGBColor(120, 120, 120)
            };
            legend
                .draw(&DashedPathElement::new(
                    [(4, y), (30, y)],
                    6,
                    4,
                    c.stroke_width(1),
                ))
                .map_err(err)?;
            legend
                .draw(&Text::new(r.label.as_str(), (36, y), font.clone()))
                .map_err(err)?;
            y += 20;
        }
    } else if !series.is_empty() || !references.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

fn draw_time<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    y_desc: &str,
    series: &[Series],
    marker: Option<(&str, f64)>,
) -> Result<(), String> {
    let points = series.iter().flat_map(|s| s.points.iter());
    let x_max = points.clone().map(|p| p.0).fold(1.0f64, f64::max);
    let y_max = points.map(|p| p.1).fold(0.0f64, f64::max);
    let y_max = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .margin_right(40)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start")
        .y_desc(y_desc)
        .y_label_formatter(&|y| axis_rate(*y))
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    if let Some((label, x)) = marker
        && x > 0.0
        && x < x_max
    {
        chart
            .draw_series(DashedLineSeries::new(
                [(x, 0.0), (x, y_max)],
                6,
                4,
                BLACK.stroke_width(1),
            ))
            .map_err(err)?
            .label(label)
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(1)));
    }
    if !series.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

fn draw_bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    y_desc: &str,
    groups: &[String],
    bars: &[Bars],
) -> Result<(), String> {
    let y_max = bars
        .iter()
        .flat_map(|b| b.values.iter().flatten())
        .map(|b| b.high.max(b.value))
        .fold(0.0f64, f64::max);
    // Headroom above the tallest whisker for the legend (upper right).
    let y_max = if y_max > 0.0 { y_max * 1.45 } else { 1.0 };
    let n = groups.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .margin_right(40)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..(n as f64 - 0.5), 0.0..y_max)
        .map_err(err)?;
    let names = groups.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .y_label_formatter(&|y| axis_rate(*y))
        .draw()
        .map_err(err)?;
    let width = 0.8 / bars.len().max(1) as f64;
    for (k, set) in bars.iter().enumerate() {
        let c = color(k);
        let left = |g: usize| g as f64 - 0.4 + k as f64 * width;
        let rects = set.values.iter().enumerate().filter_map(|(g, b)| {
            b.map(|b| {
                Rectangle::new(
                    [(left(g), 0.0), (left(g) + width * 0.9, b.value)],
                    c.filled(),
                )
            })
        });
        chart
            .draw_series(rects)
            .map_err(err)?
            .label(set.label.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        let whiskers = set.values.iter().enumerate().filter_map(|(g, b)| {
            b.map(|b| {
                let mid = left(g) + width * 0.45;
                let cap = width * 0.2;
                PathElement::new(
                    [
                        (mid - cap, b.low),
                        (mid + cap, b.low),
                        (mid, b.low),
                        (mid, b.high),
                        (mid - cap, b.high),
                        (mid + cap, b.high),
                    ],
                    BLACK.stroke_width(1),
                )
            })
        });
        chart.draw_series(whiskers).map_err(err)?;
    }
    if !bars.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_read_as_percentiles() {
        assert_eq!(nines_label(0.0), "0%");
        assert_eq!(nines_label(1.0), "90%");
        assert_eq!(nines_label(2.0), "99%");
        assert_eq!(nines_label(3.0), "99.9%");
        assert_eq!(nines_label(5.0), "99.999%");
        assert_eq!(nines_label(0.5), "68.38%");
        assert!((nines(0.999) - 3.0).abs() < 1e-9);
    }

    #[test]
    fn the_last_point_sits_at_the_last_finite_nines() {
        let s = latency_series(
            "x",
            &[
                Point {
                    value: 10.0,
                    quantile: 0.0,
                },
                Point {
                    value: 20.0,
                    quantile: 0.99,
                },
                Point {
                    value: 30.0,
                    quantile: 1.0,
                },
            ],
        );
        assert_eq!(s.points.len(), 3);
        assert_eq!(s.points[2].0, s.points[1].0);
        assert_eq!(s.points[2].1, 30.0);
    }
}
