//! dex-trader: a pinned load generator for turbo-dex. See `dex-trader --help`.
//!
//! stdout carries the summary (and, with `--admin`, the admin address
//! first); stderr carries the diagnostics through `tracing` (see
//! `loadgen::logging`).

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use loadgen::cli::ClusterSource;
use loadgen::logging::{self, LIVE_TARGET, LogFormat};
use loadgen::metrics::{AdminRoutes, Metrics};
use loadgen::{Args, RunError};
use tracing::{error, info, warn};
use tuning::admin::{AdminConfig, AdminServer};

/// Exit status of a run that failed or found violations.
const EXIT_FAILED: u8 = 1;
/// Exit status of a usage error (clap uses the same for its own).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    // `dex-trader flood ...`: its own command line and report.
    if std::env::args_os().nth(1).is_some_and(|a| a == "flood") {
        return flood_main();
    }
    let mut args = Args::parse();
    if let Err(e) = logging::init(args.log_format) {
        eprintln!("dex-trader: {e}");
        return ExitCode::from(EXIT_FAILED);
    }
    if let Some(path) = &args.password_file {
        match std::fs::read_to_string(path) {
            // The first line, without its line end: the password.
            Ok(text) => args.credentials = text.lines().next().unwrap_or("").to_string(),
            Err(e) => {
                error!("cannot read --password-file {}: {e}", path.display());
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    if let Some(path) = &args.logins {
        match std::fs::read_to_string(path) {
            Ok(text) => match loadgen::cli::parse_logins(&text) {
                Ok(list) => args.login_list = list,
                Err(e) => {
                    error!("--logins {}: {e}", path.display());
                    return ExitCode::from(EXIT_USAGE);
                }
            },
            Err(e) => {
                error!("cannot read --logins {}: {e}", path.display());
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    // `--cluster nats://...|auto`: the seed nodes, found once, before the run.
    if let Some(text) = &args.cluster {
        match loadgen::cli::cluster_source(text) {
            Ok(ClusterSource::Seeds) => {}
            Ok(source) => {
                // The other flags' usage errors first: finding the seeds may
                // browse mDNS for 2 s, and must not turn them into "found
                // nothing". (The stand-in seed is only resolved, never
                // contacted.)
                let mut probe = args.clone();
                probe.cluster = Some("127.0.0.1:1".into());
                if let Err(e) = loadgen::plan(&probe) {
                    error!("{e}");
                    return ExitCode::from(EXIT_USAGE);
                }
                match loadgen::discover::seeds(&source, args.connect_timeout) {
                    Ok(seeds) => {
                        info!("{}", seeds.describe());
                        args.cluster = Some(seeds.cluster_arg());
                    }
                    Err(e) => return run_error(e),
                }
            }
            Err(e) => {
                error!("{e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let plan = match loadgen::plan(&args) {
        Ok(p) => p,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if !plan.quiet {
        let cores = tuning::CpuList::from_cpus(plan.cores.iter().copied()).unwrap_or_default();
        let mut check = tuning::HostCheckConfig::new(cores);
        if let Some(mtu) = plan.mtu {
            check = check.with_mtu(mtu);
        }
        for item in tuning::check_host(&check).warnings() {
            if item.fix.is_empty() {
                warn!(
                    "{}: {} (recommended: {})",
                    item.name, item.current, item.recommended
                );
            } else {
                warn!(
                    "{}: {} (recommended: {}); fix: {}",
                    item.name, item.current, item.recommended, item.fix
                );
            }
        }
    }
    for w in plan.warnings() {
        warn!("{w}");
    }
    if let Err(e) = loadgen::run::install_interrupt_handler() {
        warn!("cannot catch Ctrl-C ({e}); it will end the run without a report");
    }
    let metrics = Metrics::new(plan.total_connections());
    // Started here, on the main thread, before any worker pins itself: the
    // admin thread inherits this thread's (unpinned) affinity.
    let admin = match plan.admin {
        None => None,
        Some(addr) => {
            if !tuning::admin::is_loopback(&addr) {
                warn!(
                    "--admin {addr} is reachable from other hosts and has no authentication; \
                     bind 127.0.0.1 unless a firewall guards it"
                );
            }
            let config = AdminConfig::new(addr, "dex-trader-admin");
            match AdminServer::start(config, Arc::new(AdminRoutes::new(metrics.clone()))) {
                Ok(server) => {
                    let mut stdout = std::io::stdout().lock();
                    let _ = writeln!(
                        stdout,
                        "dex-trader admin listening on {}",
                        server.local_addr()
                    );
                    let _ = stdout.flush();
                    Some(server)
                }
                Err(e) => {
                    error!(
                        "--admin {addr}: cannot serve there ({e}); pick a free port, or port 0 \
                         for any"
                    );
                    return ExitCode::from(EXIT_FAILED);
                }
            }
        }
    };
    let outcome = loadgen::run_with_metrics(&plan, &metrics, |line| {
        info!(target: LIVE_TARGET, "{line}");
    });
    if let Some(server) = admin {
        server.stop();
    }
    let report = match outcome {
        Ok(r) => r,
        Err(e) => return run_error(e),
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(report.summary().as_bytes());
    let _ = stdout.flush();
    for w in report.warnings() {
        warn!("{w}");
    }
    let mut failed = false;
    if let Some(path) = &plan.json
        && let Err(e) = std::fs::write(path, report.to_json())
    {
        error!("cannot write the JSON report to {}: {e}", path.display());
        failed = true;
    }
    for e in loadgen::outputs::write_all(&plan, &report) {
        error!("{e}");
        failed = true;
    }
    if let Some(f) = &report.failure {
        error!("{f}");
        failed = true;
    }
    if report.verify_ok() == Some(false) {
        let total = report.verify.as_ref().map_or(0, |v| v.total);
        error!("--verify found {total} violation(s); see the summary above");
        failed = true;
    }
    if failed {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

/// Logs a run's error and gives its exit status: usage 2, failed 1.
fn run_error(e: RunError) -> ExitCode {
    let (RunError::Usage(text) | RunError::Failed(text)) = &e;
    error!("{text}");
    ExitCode::from(match e {
        RunError::Usage(_) => EXIT_USAGE,
        RunError::Failed(_) => EXIT_FAILED,
    })
}

/// `dex-trader flood`: probes the server's limits (see `loadgen::flood`).
fn flood_main() -> ExitCode {
    use loadgen::flood::{FloodArgs, FloodError};
    let args = FloodArgs::parse_from(std::env::args_os().skip(1));
    if let Err(e) = logging::init(LogFormat::Text) {
        eprintln!("dex-trader: {e}");
        return ExitCode::from(EXIT_FAILED);
    }
    let report = match loadgen::flood::run(&args) {
        Ok(r) => r,
        Err(FloodError::Usage(e)) => {
            error!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(FloodError::Failed(e)) => {
            error!("{e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(report.summary().as_bytes());
    let _ = stdout.flush();
    let mut failed = false;
    if let Some(path) = &args.json
        && let Err(e) = std::fs::write(path, report.to_json())
    {
        error!("cannot write the JSON report to {}: {e}", path.display());
        failed = true;
    }
    if !report.unenforced.is_empty() {
        error!(
            "the server did not enforce {} limit(s) it was expected to have",
            report.unenforced.len()
        );
        failed = true;
    }
    if failed {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}
