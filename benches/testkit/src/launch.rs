//! Running the workspace's binaries from tests.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Lines};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};

/// A finished process's stdout then stderr, for assertion messages.
pub fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `<target>/<profile>/`, where `cargo build --workspace --bins` puts the
/// binaries: a test runs as `<target>/<profile>/deps/<name>-<hash>`.
/// Panics, saying how to build them, when one of `bins` is not there.
pub fn bin_dir(bins: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps")
        .to_path_buf();
    for bin in bins {
        assert!(
            dir.join(bin).is_file(),
            "{} is missing: run `cargo build --workspace --bins` before the tests \
             (scripts/test.sh does)",
            dir.join(bin).display()
        );
    }
    dir
}

/// `<target>/<profile>/<bin>` of `package`, built (or found up to date) by
/// cargo for the profile and target folder the calling test runs from, so
/// a test of another package can start it without a prior build step.
pub fn cargo_built(package: &str, bin: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps")
        .to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "-p", package, "--bin", bin]);
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        build.arg("--release");
    }
    if let Some(target) = profile_dir.parent() {
        build.env("CARGO_TARGET_DIR", target);
    }
    let out = build.output().expect("cargo runs");
    assert!(
        out.status.success(),
        "building {bin}:\n{}",
        output_text(&out)
    );
    let binary = profile_dir.join(bin);
    assert!(binary.exists(), "no {bin} at {}", binary.display());
    binary
}

/// The turbo-dex `binary` as the tests start it: on an ephemeral port of
/// 127.0.0.1, on `cores` (a CPU list), with blocking polls (tests never
/// spin), stdin closed and stdout piped for [`ready_addr`]. Add the
/// test's own flags, then spawn.
pub fn turbo_dex(binary: impl AsRef<OsStr>, cores: &str) -> Command {
    let mut command = Command::new(binary);
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cores",
            cores,
            "--poll",
            "block",
            // Not the default 9100: tests run many servers at once.
            "--admin",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    command
}

/// Waits for a spawned turbo-dex's `turbo-dex listening on ADDR` line (its
/// stdout must be piped), past the admin endpoint's line that comes first;
/// returns the address and the rest of its stdout.
pub fn ready_addr(child: &mut Child) -> (SocketAddr, Lines<BufReader<ChildStdout>>) {
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let line = lines
        .by_ref()
        .map(|l| l.expect("utf-8"))
        .find(|l| !l.starts_with("turbo-dex admin listening on "))
        .expect("a ready line before turbo-dex exits");
    let addr = line
        .strip_prefix("turbo-dex listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
    (addr, lines)
}

/// Asserts that a finished process exited 0; the message shows its exit
/// code, stdout and stderr.
pub fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
