//! HdrHistogram's text formats, for tools that read them: the percentile
//! distribution (`.hgrm`, `--hgrm`) and the interval log (`--interval-log`).
//!
//! The `hdrhistogram` crate writes interval logs (its
//! `serialization::interval_log`, used here) but has no writer of the
//! percentile distribution: its `iter_quantiles` steps in quantiles (0.1 is
//! not exact in binary) where Java's `PercentileIterator` steps in percent
//! (10.0 is), so the two disagree on which tick a boundary value lands on,
//! and its example prints other columns. [`percentile_distribution`]
//! follows Java's `AbstractHistogram.outputPercentileDistribution`
//! step for step, and [`java_fixed`] rounds as Java's `%.Nf` does (half up,
//! on the shortest decimal form of the double), so the file is the one the
//! Java library would write for the same histogram; `tests/hgrm_java.rs`
//! compares it with files the Java library wrote.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};

/// Percentile ticks per half distance to 100%: Java's default (and wrk2's).
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// Our histograms count nanoseconds; the files are in microseconds.
pub const NS_PER_US: f64 = 1000.0;

/// The histogram's percentile distribution in HdrHistogram's text format,
/// values divided by `value_unit_ratio` (1000 for ns to us), as Java's
/// `histogram.outputPercentileDistribution(out, ticks, value_unit_ratio)`
/// prints it.
pub fn percentile_distribution(h: &Histogram<u64>, ticks: u32, value_unit_ratio: f64) -> String {
    let digits = usize::from(h.sigfig());
    let mut out = String::with_capacity(8192);
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    for step in percentile_steps(h, ticks) {
        let value = java_fixed(step.value as f64 / value_unit_ratio, digits);
        let quantile = step.percentile / 100.0;
        #[allow(clippy::float_cmp)] // Java compares with != 100.0 too.
        if step.percentile != 100.0 {
            let _ = writeln!(
                out,
                "{value:>12} {:>2} {:>10} {:>14}",
                java_fixed(quantile, 12),
                step.total_count,
                java_fixed(1.0 / (1.0 - quantile), 2)
            );
        } else {
            let _ = writeln!(
                out,
                "{value:>12} {:>2} {:>10}",
                java_fixed(quantile, 12),
                step.total_count
            );
        }
    }
    let (mean, stdev) = mean_and_stdev(h);
    let _ = writeln!(
        out,
        "#[Mean    = {:>12}, StdDeviation   = {:>12}]",
        java_fixed(mean / value_unit_ratio, digits),
        java_fixed(stdev / value_unit_ratio, digits)
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12}, Total count    = {:>12}]",
        java_fixed(h.max() as f64 / value_unit_ratio, digits),
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_bucket_count(h.sigfig())
    );
    out
}

/// One line of the distribution.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Step {
    /// Highest value equivalent to the bucket reached.
    value: u64,
    /// The percentile level iterated to (0 to 100).
    percentile: f64,
    /// Values at or below `value`.
    total_count: u64,
}

/// Java's `PercentileIterator` over the recorded values: a tick every
/// `100 / (ticks * 2^(halvings + 1))` percent, and a last step at 100%.
fn percentile_steps(h: &Histogram<u64>, ticks: u32) -> Vec<Step> {
    let total = h.len();
    let recorded: Vec<(u64, u64)> = h
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    let mut steps = Vec::new();
    if total == 0 {
        return steps;
    }
    let (mut pos, mut fresh, mut running) = (0usize, true, 0u64);
    let mut level = 0.0f64;
    let mut reached_last = false;
    'next: loop {
        // hasNext(): below the total, or one last step to 100%.
        if running >= total {
            if reached_last {
                break;
            }
            level = 100.0;
            reached_last = true;
        }
        // next(): move through the values until the level is reached.
        while let Some(&(value, count)) = recorded.get(pos) {
            if fresh {
                running += count;
                fresh = false;
            }
            let current = (100.0 * running as f64) / total as f64;
            if current >= level {
                steps.push(Step {
                    value,
                    percentile: level,
                    total_count: running,
                });
                let halvings = ((100.0 / (100.0 - level)).ln() / 2f64.ln()) as i64;
                let reporting_ticks = i64::from(ticks)
                    .saturating_mul(2f64.powf(halvings.saturating_add(1) as f64) as i64);
                level += 100.0 / reporting_ticks as f64;
                continue 'next;
            }
            pos += 1;
            fresh = true;
        }
        // Out of values below the level (only a saturated total can do
        // that; Java throws): stop.
        break;
    }
    steps
}

/// Mean and standard deviation as Java computes them: over the median
/// equivalent value of each recorded bucket, summed before dividing.
fn mean_and_stdev(h: &Histogram<u64>) -> (f64, f64) {
    let total = h.len();
    if total == 0 {
        return (0.0, 0.0);
    }
    let mut sum = 0.0f64;
    for v in h.iter_recorded() {
        sum += h.median_equivalent(v.value_iterated_to()) as f64 * v.count_at_value() as f64;
    }
    let mean = sum / total as f64;
    let mut deviations = 0.0f64;
    for v in h.iter_recorded() {
        let d = h.median_equivalent(v.value_iterated_to()) as f64 - mean;
        deviations += d * d * v.count_since_last_iteration() as f64;
    }
    (mean, (deviations / total as f64).sqrt())
}

/// Java's `subBucketCount` for `digits` significant digits (2048 for 3).
fn sub_bucket_count(digits: u8) -> u64 {
    let largest_single_unit = 2.0 * 10f64.powi(i32::from(digits));
    let magnitude = largest_single_unit.log2().ceil() as u32;
    let half_magnitude = magnitude.max(1) - 1;
    1u64 << (half_magnitude + 1)
}

/// `x` with `decimals` decimals as Java's `String.format("%.Nf", x)`
/// writes it: the shortest decimal digits that read back as `x`, rounded
/// half up (Rust's `{:.N}` rounds the exact binary value half to even,
/// which differs on ties such as 0.0625 to 3 decimals).
pub fn java_fixed(x: f64, decimals: usize) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{:e}", x.abs());
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i64 = exponent.parse().unwrap_or(0);
    let mut digits: Vec<u8> = mantissa
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    // digits[..point] is the integer part.
    let mut point = exponent + 1;
    if point <= 0 {
        let pad = (1 - point) as usize;
        digits.splice(0..0, std::iter::repeat_n(0, pad));
        point = 1;
    }
    let mut point = point as usize;
    let keep = point + decimals;
    let round_up = digits.get(keep).is_some_and(|&d| d >= 5);
    digits.resize(keep, 0);
    if round_up {
        let mut i = keep;
        loop {
            if i == 0 {
                digits.insert(0, 1);
                point += 1;
                break;
            }
            i -= 1;
            if digits[i] == 9 {
                digits[i] = 0;
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    let mut s = String::with_capacity(keep + 3);
    if x.is_sign_negative() {
        s.push('-');
    }
    for (i, d) in digits.iter().enumerate() {
        if i == point {
            s.push('.');
        }
        s.push(char::from(b'0' + d));
    }
    s
}

/// One point of a percentile distribution read back from a `.hgrm` file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// The value, in the file's unit (microseconds for ours).
    pub value: f64,
    /// The percentile as a fraction (0 to 1).
    pub quantile: f64,
}

/// Reads the distribution lines of a `.hgrm` file (HdrHistogram's text
/// format: `Value Percentile TotalCount 1/(1-Percentile)`), skipping the
/// header and the `#[...]` footer.
pub fn parse_percentile_distribution(text: &str) -> Result<Vec<Point>, String> {
    let mut points = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("Value") {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(value), Some(quantile)) = (fields.next(), fields.next()) else {
            return Err(format!("line {}: expected `Value Percentile ...`", n + 1));
        };
        let parse = |s: &str| {
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("line {}: `{s}` is not a number", n + 1))
        };
        points.push(Point {
            value: parse(value)?,
            quantile: parse(quantile)?,
        });
    }
    if points.is_empty() {
        return Err("no percentile lines (an empty histogram, or not an .hgrm file)".into());
    }
    Ok(points)
}

/// The run's latency histograms interval by interval, written as they
/// come (a line of a few hundred bytes a second, so a long run holds
/// nothing in memory) as an HdrHistogram interval log: Java's
/// `HistogramLogWriter` format, through the crate's `interval_log` writer,
/// which `HistogramLogProcessor` and the crate's `IntervalLogIterator`
/// read. Values and `Interval_Max` are nanoseconds, as recorded.
pub struct IntervalLogFile {
    out: BufWriter<File>,
    serializer: V2DeflateSerializer,
    error: Option<String>,
}

impl std::fmt::Debug for IntervalLogFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntervalLogFile")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl IntervalLogFile {
    /// Creates the file and writes the header: `comment`, `StartTime` and
    /// `BaseTime` (both `started`: interval timestamps count from the
    /// run's start) and the legend.
    pub fn create(path: &Path, started: SystemTime, comment: &str) -> Result<Self, String> {
        let file = File::create(path).map_err(|e| e.to_string())?;
        let mut log = IntervalLogFile {
            out: BufWriter::new(file),
            serializer: V2DeflateSerializer::new(),
            error: None,
        };
        let mut builder = IntervalLogWriterBuilder::new();
        builder
            .add_comment(comment)
            .add_comment("Values and Interval_Max are nanoseconds.")
            .with_start_time(started)
            .with_base_time(started);
        builder
            .begin_log_with(&mut log.out, &mut log.serializer)
            .map_err(|e| e.to_string())?;
        // Java's HistogramLogWriter writes this legend before the first
        // interval (the crate's writer does not); both readers skip it.
        log.out
            .write_all(
                b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
            )
            .map_err(|e| e.to_string())?;
        Ok(log)
    }

    /// Appends the interval `[start, start + length)` since the run's
    /// start; `tag` marks unmeasured intervals (`warmup`, `drain`). The
    /// first error is kept for [`IntervalLogFile::finish`] and ends the
    /// writing.
    pub fn push(
        &mut self,
        h: &Histogram<u64>,
        start: Duration,
        length: Duration,
        tag: Option<&'static str>,
    ) {
        if self.error.is_some() {
            return;
        }
        // A builder without comments, times or divisor writes no header.
        let result = IntervalLogWriterBuilder::new()
            .begin_log_with(&mut self.out, &mut self.serializer)
            .map_err(|e| e.to_string())
            .and_then(|mut w| {
                w.write_histogram(h, start, length, tag.and_then(Tag::new))
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = result {
            self.error = Some(e);
        }
    }

    /// Flushes the file: the first error met, if any.
    pub fn finish(mut self) -> Result<(), String> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.out.flush().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_rounding_is_half_up_on_the_shortest_digits() {
        assert_eq!(java_fixed(0.0625, 3), "0.063");
        assert_eq!(format!("{:.3}", 0.0625), "0.062");
        assert_eq!(java_fixed(1.2345, 3), "1.235");
        assert_eq!(java_fixed(287.5, 3), "287.500");
        assert_eq!(java_fixed(0.1, 12), "0.100000000000");
        assert_eq!(java_fixed(1.0, 12), "1.000000000000");
        assert_eq!(java_fixed(9.9996, 3), "10.000");
        assert_eq!(java_fixed(0.0, 2), "0.00");
        assert_eq!(java_fixed(0.000_04, 3), "0.000");
        assert_eq!(java_fixed(0.0005, 3), "0.001");
        assert_eq!(java_fixed(123_456_789.0, 0), "123456789");
        assert_eq!(java_fixed(1e21, 1), "1000000000000000000000.0");
        assert_eq!(java_fixed(-2.5, 0), "-3");
        assert_eq!(java_fixed(f64::INFINITY, 2), "Infinity");
    }

    #[test]
    fn sub_buckets_match_java() {
        assert_eq!(sub_bucket_count(3), 2048);
        assert_eq!(sub_bucket_count(2), 256);
        assert_eq!(sub_bucket_count(1), 32);
    }

    #[test]
    fn an_empty_histogram_has_only_header_and_footer() {
        let h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).unwrap();
        let text = percentile_distribution(&h, 5, 1000.0);
        assert!(
            text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n#[Mean")
        );
        assert!(parse_percentile_distribution(&text).is_err());
    }

    #[test]
    fn the_parser_reads_what_the_writer_writes() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).unwrap();
        for v in 1..=10_000u64 {
            h.record(v * 1000).unwrap();
        }
        let points =
            parse_percentile_distribution(&percentile_distribution(&h, 5, 1000.0)).unwrap();
        assert_eq!(points.first().unwrap().quantile, 0.0);
        assert_eq!(points.last().unwrap().quantile, 1.0);
        assert!((points.last().unwrap().value - 10_000.0).abs() < 10.0);
        assert!(
            points
                .windows(2)
                .all(|w| w[0].value <= w[1].value && w[0].quantile <= w[1].quantile)
        );
        assert!(
            parse_percentile_distribution("Value\n1.0 zero 3 4\n")
                .unwrap_err()
                .contains("line 2")
        );
    }
}
