#!/usr/bin/env bash
# The main job in one command: build turbo-dex and dex-trader in release
# mode, start turbo-dex pinned to the first half of this machine's cores,
# drive it with dex-trader pinned to the rest (batches of 2,000, the
# realistic mix, --verify), print dex-trader's summary and the server's
# final stats, and stop the server (also when interrupted).
#
#   scripts/quickstart.sh                 # about 10 seconds of trading
#   scripts/quickstart.sh --duration 30s  # longer
#
# Works on a 1-core machine too: both run unpinned there.
set -euo pipefail
PROG=quickstart
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"
cd "$ROOT"

DURATION=10s
BATCH=2000
MIX=realistic
BIN_DIR=${BIN_DIR:-}
EXTRA=()

usage() {
    cat <<EOF
Usage: scripts/quickstart.sh [--duration TIME] [--batch N] [--mix MIX] [--bin-dir DIR] [-- DEX-TRADER ARGS...]

Builds turbo-dex and dex-trader (release), runs the server on the first half
of the cores and the load generator on the rest, prints both reports.

  --duration TIME   how long dex-trader measures (default 10s)
  --batch N         orders per frame (default 2000)
  --mix MIX         realistic, insert or match (default realistic)
  --bin-dir DIR     use prebuilt binaries from DIR instead of building
  -- ARGS           extra arguments for dex-trader
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=${2:?--duration needs a value}; shift 2 ;;
        --batch) BATCH=${2:?--batch needs a value}; shift 2 ;;
        --mix) MIX=${2:?--mix needs a value}; shift 2 ;;
        --bin-dir) BIN_DIR=${2:?--bin-dir needs a value}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; EXTRA=("$@"); break ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/turbo-dex-quickstart.XXXXXX")
SERVER_PID=""
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'note "interrupted"; exit 130' INT TERM

build_binaries

read -r -a CPUS <<<"$(allowed_cpus)"
N=${#CPUS[@]}
SERVER_PIN=()
TRADER_PIN=()
if [ "$N" -ge 2 ]; then
    HALF=$((N / 2))
    SERVER_CPUS=$(join_cpus "${CPUS[@]:0:HALF}")
    TRADER_CPUS=$(join_cpus "${CPUS[@]:HALF}")
    SERVER_PIN=(--cores "$SERVER_CPUS")
    TRADER_PIN=(--cores "$TRADER_CPUS")
    step "this machine has $N cores: turbo-dex on $SERVER_CPUS, dex-trader on $TRADER_CPUS"
else
    SERVER_PIN=(--cores "${CPUS[0]}" --no-pin)
    note "note: only one core here, so turbo-dex and dex-trader share it unpinned;"
    note "      the numbers will be far below what two or more cores give"
fi

step "starting turbo-dex (matching engine, adaptive polling, journal with fdatasync per batch)"
start_server "$WORK/server.out" "$WORK/server.err" "${SERVER_PIN[@]}" --symbols 64 --poll adaptive --quiet \
    --journal "$WORK/journal" --fsync batch
note "listening on $SERVER_ADDR (pid $SERVER_PID)"

step "running dex-trader for $DURATION: batches of $BATCH, mix $MIX, --verify"
status=0
"$DEX_TRADER" --server "$SERVER_ADDR" "${TRADER_PIN[@]}" --batch "$BATCH" --mix "$MIX" \
    --duration "$DURATION" --warmup 1s --connections 2 --verify --quiet "${EXTRA[@]}" || status=$?

step "stopping turbo-dex"
stop_server
sed -n '/final stats/,$p' "$SERVER_OUT"
if [ -s "$SERVER_ERR" ]; then
    note "server messages:"
    sed 's/^/    /' "$SERVER_ERR" >&2
fi
if [ "$status" -ne 0 ]; then
    printf '%s: dex-trader exited with status %s\n' "$PROG" "$status" >&2
fi
exit "$status"
