//! Exiting at once without losing the last log lines.
//!
//! The binary writes its log through a writer thread
//! (`tracing_appender::non_blocking`), so a line logged just before
//! `std::process::exit` may never reach stderr: `exit` runs no
//! destructors, and the writer's queue dies with the process. A node that
//! must stop at once (a standby copy found not exact) logs why and calls
//! [`exit_flushed`], which drops the writer's guard first (flushing the
//! queue) if the binary handed it over with [`keep_log_guard`].

use std::sync::Mutex;

/// The log writer's guard, while the binary runs.
static LOG_GUARD: Mutex<Option<Box<dyn Send>>> = Mutex::new(None);

/// Keeps `guard` (whose drop flushes the log) until [`exit_flushed`] or
/// until the returned handle is dropped, whichever comes first.
pub fn keep_log_guard(guard: impl Send + 'static) -> LogGuard {
    *LOG_GUARD.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(guard));
    LogGuard(())
}

/// Flushes the log (drops the kept guard) when dropped: hold it in `main`.
#[must_use = "the log is flushed when this is dropped"]
pub struct LogGuard(());

impl Drop for LogGuard {
    fn drop(&mut self) {
        flush_log();
    }
}

/// Drops the kept guard, which writes out every queued line.
fn flush_log() {
    let guard = LOG_GUARD.lock().unwrap_or_else(|p| p.into_inner()).take();
    drop(guard);
}

/// Flushes the log, then exits the process with `code` (no destructors
/// run, as with `std::process::exit`).
pub fn exit_flushed(code: i32) -> ! {
    flush_log();
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_kept_guard_is_dropped_with_the_handle() {
        let dropped = Arc::new(AtomicBool::new(false));
        let handle = keep_log_guard(Flag(Arc::clone(&dropped)));
        assert!(
            !dropped.load(Ordering::SeqCst),
            "kept while the handle lives"
        );
        drop(handle);
        assert!(
            dropped.load(Ordering::SeqCst),
            "flushed when the handle goes"
        );
    }
}
