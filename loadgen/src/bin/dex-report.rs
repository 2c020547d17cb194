//! dex-report: the one-page HTML report of a benchmark results folder
//! (what `scripts/bench.sh --report` and `scripts/netns-bench.sh --report`
//! run). See `dex-report --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

/// Which script wrote the folder.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    /// scripts/bench.sh (loopback throughput and latency).
    Bench,
    /// scripts/netns-bench.sh (jumbo frames, batching, pinning over veth).
    Netns,
}

/// dex-report: writes a self-contained HTML page (inline SVG charts, no
/// scripts, no external files) from a results folder of scripts/bench.sh
/// or scripts/netns-bench.sh.
#[derive(Parser, Debug)]
#[command(name = "dex-report", version, about, long_about = None)]
struct Args {
    /// Which script wrote the folder.
    #[arg(value_enum)]
    kind: Kind,
    /// The results folder (the script's --out).
    dir: PathBuf,
    /// Where to write the page. Default: DIR/index.html.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.dir.is_dir() {
        eprintln!("dex-report: {} is not a folder", args.dir.display());
        return ExitCode::from(2);
    }
    let page = match args.kind {
        Kind::Bench => loadgen::page::bench_page(&args.dir),
        Kind::Netns => loadgen::page::netns_page(&args.dir),
    };
    let page = match page {
        Ok(p) => p,
        Err(e) => {
            eprintln!("dex-report: {e}");
            return ExitCode::from(1);
        }
    };
    let out = args.out.unwrap_or_else(|| args.dir.join("index.html"));
    if let Err(e) = std::fs::write(&out, page) {
        eprintln!("dex-report: cannot write {}: {e}", out.display());
        return ExitCode::from(1);
    }
    println!("{}", out.display());
    ExitCode::SUCCESS
}
