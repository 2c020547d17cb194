//! What this machine lets a test do, and loud skips for when it does not.

use std::io::Write;
use std::process::Command;

/// The environment variable naming a file that every [`skipped`] test
/// appends its `SKIP:` line to; scripts/test.sh sets it and counts them.
pub const SKIP_LOG_ENV: &str = "TURBO_DEX_SKIP_LOG";

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Why a test that needs root (when `root`) and `tools` cannot run here,
/// or `None` when it can.
pub fn missing(root: bool, tools: &[&str]) -> Option<String> {
    if root && !is_root() {
        return Some("needs root".to_string());
    }
    let absent: Vec<String> = tools
        .iter()
        .filter(|tool| !have(tool))
        .map(|&tool| {
            let package = match tool {
                "ip" => "iproute2",
                "setpriv" | "mount" | "umount" => "util-linux",
                other => other,
            };
            format!("{tool} (apt-get install {package})")
        })
        .collect();
    (!absent.is_empty()).then(|| {
        format!(
            "needs {} on PATH; scripts/test.sh installs it",
            absent.join(", ")
        )
    })
}

/// Records that `test` did not run, and why: writes `SKIP: <test>: <reason>`
/// straight to stderr (past the test harness's output capture, so it shows
/// in a plain `cargo test`) and appends it to the file named by
/// [`SKIP_LOG_ENV`] when that is set. The caller then returns.
pub fn skipped(test: &str, reason: &str) {
    let line = format!("SKIP: {test}: {reason}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        // One short O_APPEND write per line: lines from parallel tests and
        // test binaries do not interleave.
        let logged = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = logged {
            panic!("cannot append to {SKIP_LOG_ENV}={path:?}: {e}");
        }
    }
}

/// `skip!("needs {x}")`: [`skipped`] under the name of the enclosing test
/// function (`binary::test_name`). The caller returns right after.
#[macro_export]
macro_rules! skip {
    ($($reason:tt)+) => {{
        fn here() {}
        let name = ::std::any::type_name_of_val(&here);
        let name = name.strip_suffix("::here").unwrap_or(name);
        $crate::skipped(name, &format!($($reason)+));
    }};
}

/// Held while a test reads or changes state of the real machine that other
/// tests read or change: sysctls, interfaces and their MTU, network
/// namespaces, IRQ affinity. Serializes such tests within the test binary
/// (a mutex) and across test processes (an `flock` on a file in the temp
/// dir), so that a test comparing host state before and after its own run
/// never sees another test's change. Released on drop.
pub struct RealHostLock {
    _file: std::fs::File,
    _guard: std::sync::MutexGuard<'static, ()>,
}

/// Takes the [`RealHostLock`], waiting for any other holder.
pub fn real_host_lock() -> RealHostLock {
    use std::os::fd::AsRawFd;
    static IN_PROCESS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that panicked while holding it leaves nothing half-done that
    // the next one could trip on: each test restores what it changes.
    let guard = IN_PROCESS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let path = std::env::temp_dir().join("turbo-dex-real-host.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // SAFETY: flock on an fd this function owns; it blocks until granted.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        rc,
        0,
        "flock {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    RealHostLock {
        _file: file,
        _guard: guard,
    }
}
