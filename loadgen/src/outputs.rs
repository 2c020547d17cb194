//! The files a run writes after it ends, besides `--json`: `--hgrm`,
//! `--interval-log` and `--plot`. Written from the report, after the
//! workers are gone.

use crate::cli::Plan;
use crate::hgrm::{NS_PER_US, TICKS_PER_HALF_DISTANCE, parse_percentile_distribution};
use crate::plot::{Series, latency_series, run_chart};
use crate::report::RunReport;

/// Writes every file the plan asks for; one message per file that could
/// not be written (the others are still written).
pub fn write_all(plan: &Plan, report: &RunReport) -> Vec<String> {
    let mut errors = Vec::new();
    let recorded = &report.recorded;
    let hgrm =
        crate::hgrm::percentile_distribution(&recorded.latency, TICKS_PER_HALF_DISTANCE, NS_PER_US);
    if let Some(path) = &plan.hgrm
        && let Err(e) = std::fs::write(path, &hgrm)
    {
        errors.push(format!("cannot write --hgrm {}: {e}", path.display()));
    }
    if let (Some(path), Some(e)) = (&plan.interval_log, &recorded.interval_log_error) {
        errors.push(format!(
            "cannot write --interval-log {}: {e}",
            path.display()
        ));
    }
    if let Some(path) = &plan.plot {
        let latency = match parse_percentile_distribution(&hgrm) {
            Ok(points) => latency_series("latency", &points),
            // No measured answer: an empty chart says so better than no file.
            Err(_) => Series {
                label: "latency (no answers measured)".into(),
                points: Vec::new(),
            },
        };
        let per_second = |label: &str, f: fn(&crate::timeline::Second) -> f64| Series {
            label: label.to_string(),
            points: recorded
                .seconds
                .iter()
                .map(|s| (s.end_secs, f(s)))
                .collect(),
        };
        let rates = [
            per_second("orders/s", |s| s.orders_per_sec),
            per_second("trades/s", |s| s.trades_per_sec),
        ];
        let title = format!("dex-trader ({})", describe(report));
        match run_chart(&title, &latency, &rates, report.warmup_secs) {
            Ok(svg) => {
                if let Err(e) = std::fs::write(path, svg) {
                    errors.push(format!("cannot write --plot {}: {e}", path.display()));
                }
            }
            Err(e) => errors.push(format!("--plot {}: {e}", path.display())),
        }
    }
    errors
}

/// The first line of the `--interval-log` file.
pub fn interval_log_comment(plan: &Plan) -> String {
    let load = match plan.rate {
        Some(r) => format!("open loop {}/s", crate::report::si(r as f64)),
        None => "closed loop".into(),
    };
    format!(
        "dex-trader interval log: one latency histogram per second, {} ({} workers x {} \
         connections, batch {}, {load}, mix {})",
        plan.server_name,
        plan.cores.len(),
        plan.connections,
        plan.batch,
        plan.mix.as_str()
    )
}

/// `batch 100, closed loop, mix realistic`.
fn describe(report: &RunReport) -> String {
    let load = match report.rate {
        Some(r) => format!("open loop {}/s", crate::report::si(r as f64)),
        None => "closed loop".into(),
    };
    format!(
        "batch {}, {load}, mix {}",
        report.batch,
        report.mix.as_str()
    )
}
