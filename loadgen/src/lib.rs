//! dex-trader: a pinned load generator for turbo-dex that measures
//! throughput and latency honestly.
//!
//! The logic is free of I/O and of clocks: [`flow`] decides what to send,
//! [`session`] writes requests into byte buffers and reads reports from
//! them (tracking every order, and checking every answer under `--verify`),
//! [`schedule`] says when open-loop orders are due. [`run`] is the only
//! part with sockets, threads and time: glommio executors pinned to the
//! `--cores`, moving bytes between the sessions and the server. [`md`] is
//! the `--subscribe` market-data subscriber's logic (local books, sequence
//! and checksum checks), also free of I/O. [`metrics`]
//! is what the connections publish while they run (the live line,
//! `--admin`'s `/metrics`); [`logging`] sets up `tracing` for the binary.
//! [`flood`] is `dex-trader flood`, which probes the server's limits.
//! [`cluster`] and [`run`]'s routed sessions are `--cluster`; [`discover`]
//! finds its seed nodes in NATS or by mDNS, once, before the run.
//!
//! ```no_run
//! use clap::Parser;
//! let args = loadgen::cli::Args::parse_from(["dex-trader", "--server", "127.0.0.1:9000"]);
//! let plan = loadgen::cli::plan(&args).unwrap();
//! let report = loadgen::run::run(&plan, |line| eprintln!("{line}")).unwrap();
//! println!("{}", report.summary());
//! ```

pub mod cli;
pub mod cluster;
pub mod discover;
pub mod flood;
pub mod flow;
pub mod hgrm;
pub mod logging;
pub mod md;
pub mod metrics;
pub mod outputs;
pub mod page;
pub mod plot;
pub mod report;
pub mod rng;
pub mod run;
pub mod schedule;
pub mod session;
pub mod stats;
pub mod timeline;
pub mod tls;
pub mod verify;

pub use cli::{Args, Plan, UsageError, parse_duration, plan};
pub use report::RunReport;
pub use run::{RunError, run, run_with_metrics};
