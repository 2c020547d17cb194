//! What a run keeps beyond the summary's figures, for `--hgrm`,
//! `--interval-log` and `--plot`: the measured latency histogram and, once
//! a second, the throughput and latency of that second. The main thread
//! records a second when it prints the live line, from the counters and
//! interval histograms the connections already publish: nothing here runs
//! on a worker.

use std::path::Path;
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;

use crate::hgrm::IntervalLogFile;
use crate::stats::new_histogram;

/// Most seconds kept for `--plot`: a week (as long as `--duration` may
/// be), some 24 MB; later seconds are not kept.
pub const SECONDS_KEPT_MAX: usize = 7 * 24 * 3600;

/// One second of the run, as the live line saw it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Second {
    /// End of the second, seconds since the run's start (warmup included).
    pub end_secs: f64,
    /// Requests sent per second in it.
    pub orders_per_sec: f64,
    /// Trades per second in it.
    pub trades_per_sec: f64,
    /// p99 latency of the answers received in it, microseconds (`None`
    /// when there was none).
    pub p99_us: Option<f64>,
    /// Whether it ended inside the warmup.
    pub warmup: bool,
}

/// The run's recordings.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// When the run (its warmup) started.
    pub started: SystemTime,
    /// Latency of the measured requests, ns (what the summary's
    /// percentiles come from).
    pub latency: Histogram<u64>,
    /// One entry per second, warmup and drain included.
    pub seconds: Vec<Second>,
    /// Why `--interval-log` could not be written, if it could not.
    pub interval_log_error: Option<String>,
}

impl Default for Recorded {
    fn default() -> Self {
        Recorded {
            started: SystemTime::UNIX_EPOCH,
            latency: new_histogram(),
            seconds: Vec::new(),
            interval_log_error: None,
        }
    }
}

/// Turns the live line's once-a-second readings into [`Second`]s.
#[derive(Debug)]
pub struct Timeline {
    recorded: Recorded,
    interval_log: Option<IntervalLogFile>,
    warmup: Duration,
    measured_end: Duration,
    last: (Duration, u64, u64),
}

impl Timeline {
    /// A timeline for a run with this warmup and duration, writing the
    /// interval histograms to `interval_log` (headed by `comment`) when
    /// given.
    pub fn new(
        warmup: Duration,
        duration: Duration,
        interval_log: Option<&Path>,
        comment: &str,
    ) -> Self {
        let started = SystemTime::now();
        let mut interval_log_error = None;
        let interval_log = interval_log.and_then(|path| {
            IntervalLogFile::create(path, started, comment)
                .map_err(|e| interval_log_error = Some(e))
                .ok()
        });
        Timeline {
            recorded: Recorded {
                started,
                interval_log_error,
                ..Recorded::default()
            },
            interval_log,
            warmup,
            measured_end: warmup + duration,
            last: (Duration::ZERO, 0, 0),
        }
    }

    /// Records the second that ends `elapsed` after the start: `orders`
    /// and `trades` are the run's totals so far, `interval` the latencies
    /// received since the last tick (ns).
    pub fn tick(&mut self, elapsed: Duration, orders: u64, trades: u64, interval: &Histogram<u64>) {
        let (last_elapsed, last_orders, last_trades) = self.last;
        self.last = (elapsed, orders, trades);
        let length = elapsed.saturating_sub(last_elapsed);
        let secs = length.as_secs_f64();
        if secs <= 0.0 {
            return;
        }
        if let Some(log) = &mut self.interval_log {
            let tag = if last_elapsed < self.warmup {
                Some("warmup")
            } else if last_elapsed >= self.measured_end {
                Some("drain")
            } else {
                None
            };
            log.push(interval, last_elapsed, length, tag);
        }
        if self.recorded.seconds.len() < SECONDS_KEPT_MAX {
            self.recorded.seconds.push(Second {
                end_secs: elapsed.as_secs_f64(),
                orders_per_sec: orders.saturating_sub(last_orders) as f64 / secs,
                trades_per_sec: trades.saturating_sub(last_trades) as f64 / secs,
                p99_us: (!interval.is_empty())
                    .then(|| interval.value_at_quantile(0.99) as f64 / 1000.0),
                warmup: elapsed <= self.warmup,
            });
        }
    }

    /// The recordings, with the measured latency histogram.
    pub fn finish(self, latency: Histogram<u64>) -> Recorded {
        let interval_log_error = match self.interval_log.map(IntervalLogFile::finish) {
            Some(Err(e)) => Some(e),
            _ => self.recorded.interval_log_error,
        };
        Recorded {
            latency,
            interval_log_error,
            ..self.recorded
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_rates_and_warmup_is_marked() {
        let path = std::env::temp_dir().join(format!("timeline-{}.hlog", std::process::id()));
        let mut t = Timeline::new(
            Duration::from_secs(1),
            Duration::from_secs(2),
            Some(&path),
            "test",
        );
        let mut h = new_histogram();
        h.record(20_000).unwrap();
        t.tick(Duration::from_secs(1), 1000, 10, &h);
        t.tick(Duration::from_secs(2), 3000, 30, &h);
        t.tick(Duration::from_millis(2500), 4000, 40, &new_histogram());
        let r = t.finish(new_histogram());
        assert_eq!(r.seconds.len(), 3);
        assert!(r.seconds[0].warmup && !r.seconds[1].warmup);
        assert_eq!(r.seconds[1].orders_per_sec, 2000.0);
        assert_eq!(r.seconds[2].trades_per_sec, 20.0);
        assert_eq!(r.seconds[2].p99_us, None);
        assert!((r.seconds[1].p99_us.unwrap() - 20.0).abs() < 0.1);
        assert_eq!(r.interval_log_error, None);
        let log = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(log.starts_with("#test\n"), "{log}");
        assert!(log.contains("Tag=warmup,0.000,1.000,20015.000,"), "{log}");
        assert!(log.contains("\n1.000,1.000,20015.000,"), "{log}");
        assert!(log.contains("\n2.000,0.500,0.000,"), "{log}");
        let bad = Timeline::new(
            Duration::ZERO,
            Duration::from_secs(1),
            Some(Path::new("/no/such/folder/x.hlog")),
            "test",
        );
        assert!(bad.finish(new_histogram()).interval_log_error.is_some());
    }
}
