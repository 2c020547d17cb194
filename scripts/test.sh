#!/usr/bin/env bash
# The one test command: formatting, lints, and the whole test suite.
# Works on a fresh machine with only the Rust toolchain; installs the few
# system tools some tests need (shellcheck, iproute2) when it can.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

say "toolchain components"
for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
        rustup component add "${component}"
    fi
done

# System tools used by the script tests. Installing needs root and apt; when
# either is missing the tests that need a tool say so and are skipped.
missing=()
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing ${missing[*]}"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
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
cargo test --workspace --locked

say "all tests passed"
