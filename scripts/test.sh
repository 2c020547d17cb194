#!/usr/bin/env bash
# The one test command: formatting, lints, and the whole test suite.
# Works on a fresh machine with only the Rust toolchain; installs the few
# system tools some tests need (shellcheck, iproute2, util-linux) when it
# can. A test that still cannot run here says `SKIP: <test>: <reason>`;
# the summary at the end counts them and names each (expected: 0 on CI).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

say "toolchain components"
for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
        rustup component add "${component}"
    fi
done

# System tools some tests need: shellcheck (script lints), ip from iproute2
# (network namespaces in tuning/tests/tune_host.rs and
# benches/tests/netns_bench.rs), setpriv, mount and umount from util-linux
# (running tune-host.sh unprivileged; the tmpfs of engine/tests/durability.rs),
# promtool and prometheus from prometheus (the admin endpoints' tests).
# Installing needs root and apt; without them those tests are skipped, loudly.
missing=()
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
{ command -v mount && command -v umount; } >/dev/null 2>&1 || missing+=(mount)
# promtool checks /metrics; a real prometheus scrapes the admin endpoint
# (engine/tests/admin.rs, tuning/tests/admin.rs, loadgen/tests/turbo_dex.rs).
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || missing+=(prometheus)
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind) # scripts/book-cachegrind.sh and its test
# nats-server: the market-data NATS bridge and clusters (with -js) against a real server
# (engine/tests/md_nats.rs, engine/tests/cluster.rs).
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
# chromium renders the bench report page to a PNG (benches/tests/report_page.rs).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing ${missing[*]}"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "note: ${missing[*]} not installed and cannot install (need root and apt-get)"
    fi
fi

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "fuzz target (its own workspace): builds, lints and formats clean"
cargo build --locked --manifest-path wire/fuzz/Cargo.toml
cargo clippy --locked --manifest-path wire/fuzz/Cargo.toml --all-targets -- -D warnings
cargo fmt --manifest-path wire/fuzz/Cargo.toml -- --check

say "cargo build (the script tests run the debug binaries)"
cargo build --workspace --bins --locked

say "cargo test"
# Every test that cannot run here appends its SKIP line to this file (see
# benches/testkit: testkit::skip!).
skip_log=$(mktemp)
trap 'rm -f "$skip_log"' EXIT
TURBO_DEX_SKIP_LOG=$skip_log cargo test --workspace --locked

skipped=$(wc -l <"$skip_log")
say "${skipped} tests skipped"
if [ "$skipped" -gt 0 ]; then
    sed 's/^/  /' "$skip_log"
    echo "WARNING: ${skipped} tests did not run here (reasons above); install what they name to run them" >&2
    say "all tests that could run here passed; ${skipped} skipped"
else
    say "all tests passed"
fi
