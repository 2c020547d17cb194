//! dex-trader: a pinned load generator for turbo-dex. See `dex-trader --help`.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use loadgen::{Args, RunError};

/// Exit status of a run that failed or found violations.
const EXIT_FAILED: u8 = 1;
/// Exit status of a usage error (clap uses the same for its own).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let args = Args::parse();
    let plan = match loadgen::plan(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("dex-trader: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if !plan.quiet {
        let cores = tuning::CpuList::from_cpus(plan.cores.iter().copied()).unwrap_or_default();
        let mut check = tuning::HostCheckConfig::new(cores);
        if let Some(mtu) = plan.mtu {
            check = check.with_mtu(mtu);
        }
        tuning::print_startup_warnings("dex-trader", &check);
    }
    if let Err(e) = loadgen::run::install_interrupt_handler() {
        eprintln!(
            "dex-trader: warning: cannot catch Ctrl-C ({e}); it will end the run without a report"
        );
    }
    let report = match loadgen::run(&plan, |line| eprintln!("{line}")) {
        Ok(r) => r,
        Err(RunError::Usage(e)) => {
            eprintln!("dex-trader: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(RunError::Failed(e)) => {
            eprintln!("dex-trader: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(report.summary().as_bytes());
    let _ = stdout.flush();
    let mut failed = false;
    if let Some(path) = &plan.json
        && let Err(e) = std::fs::write(path, report.to_json())
    {
        eprintln!(
            "dex-trader: cannot write the JSON report to {}: {e}",
            path.display()
        );
        failed = true;
    }
    if let Some(f) = &report.failure {
        eprintln!("dex-trader: {f}");
        failed = true;
    }
    if report.verify_ok() == Some(false) {
        let total = report.verify.as_ref().map_or(0, |v| v.total);
        eprintln!("dex-trader: --verify found {total} violation(s); see the summary above");
        failed = true;
    }
    if failed {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}
