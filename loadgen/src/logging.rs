//! dex-trader's diagnostics (warnings, errors, the live progress line)
//! through the `tracing` facade, written to stderr by `tracing-subscriber`.
//!
//! The summary on stdout and the `--json` file are not log output: they
//! are written directly, whatever the filter says.
//!
//! - Filter: `RUST_LOG` directives (`warn`, `loadgen=debug,info`); default
//!   `info`. `RUST_LOG=warn` keeps warnings and errors and drops the live
//!   line.
//! - `--log-format text` (default): the lines dex-trader always printed,
//!   `dex-trader: warning: ...`, `dex-trader: <error>`, and the live line
//!   bare, with extra fields appended as `key=value`. Colour (the word
//!   `warning`) only when stderr is a terminal.
//! - `--log-format json`: one JSON object per line (`timestamp`, `level`,
//!   `message`, `target`, any fields), for log collectors.
//!
//! Nothing here runs on a worker's hot path: the workers log only while
//! connecting; the live line comes from the main thread once a second.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The target of the live progress line: in text format it is written
/// bare, as it always was (`orders 45,678,000 | rate 4.52M/s | ...`).
pub const LIVE_TARGET: &str = "dex_trader::live";

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people: `dex-trader: warning: ...`.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The directives without `RUST_LOG`: `info`, but only warnings from the
/// NATS client that `--cluster nats://...|auto` uses once (its `connected`
/// lines are not dex-trader's news).
pub const DEFAULT_DIRECTIVES: &str = "info,async_nats=warn";

/// Installs the process-wide subscriber: `RUST_LOG` filtering (default
/// [`DEFAULT_DIRECTIVES`]) and `format`, on stderr. Fails only when one is
/// installed already.
pub fn init(format: LogFormat) -> Result<(), String> {
    let rust_log = std::env::var("RUST_LOG").unwrap_or_default();
    let directives = if rust_log.trim().is_empty() {
        DEFAULT_DIRECTIVES.to_string()
    } else {
        rust_log
    };
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .parse_lossy(directives);
    let installed = match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .event_format(TextFormat)
            .try_init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
    };
    installed.map_err(|e| format!("cannot set up logging: {e}"))
}

/// The text format: `dex-trader: ` then `warning: ` for warnings (nothing
/// for errors and info, as before), the message, any fields; live lines
/// bare.
struct TextFormat;

impl<S, N> FormatEvent<S, N> for TextFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != LIVE_TARGET {
            writer.write_str("dex-trader: ")?;
            let level = match *meta.level() {
                Level::WARN => Some(("warning", "\x1b[33m")),
                Level::DEBUG => Some(("debug", "\x1b[34m")),
                Level::TRACE => Some(("trace", "\x1b[35m")),
                Level::ERROR | Level::INFO => None,
            };
            if let Some((word, colour)) = level {
                if writer.has_ansi_escapes() {
                    write!(writer, "{colour}{word}\x1b[0m: ")?;
                } else {
                    write!(writer, "{word}: ")?;
                }
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
