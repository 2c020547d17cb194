#!/usr/bin/env bash
# Does scraping the admin endpoint cost the engine throughput? Runs
# dex-trader against turbo-dex (matching engine, no journal, batch 2,000,
# two connections so that orders trade) alternately without and with a
# scraper that GETs /metrics and /stats ten times a second each, and prints
# orders/s and trades/s for every run and the medians.
#
#   scripts/admin-bench.sh                 # 3 pairs of 5-second runs
#   scripts/admin-bench.sh --pairs 5 --duration 10s --bin-dir target/release
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROG="admin-bench"
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"

PAIRS=3
DURATION=5s
BIN_DIR=""
usage() {
    cat <<'EOF'
Usage: scripts/admin-bench.sh [--pairs N] [--duration TIME] [--bin-dir DIR]

Alternates runs without and with a /metrics + /stats scraper (10 requests a
second each) and prints the throughput of each run and the medians.
  --pairs N       pairs of runs (default 3)
  --duration T    length of each run, dex-trader syntax (default 5s)
  --bin-dir DIR   prebuilt turbo-dex and dex-trader (default: build release)
EOF
}
while [ $# -gt 0 ]; do
    case "$1" in
        --pairs) PAIRS=${2:?--pairs needs a number}; shift 2 ;;
        --duration) DURATION=${2:?--duration needs a time}; shift 2 ;;
        --bin-dir) BIN_DIR=${2:?--bin-dir needs a directory}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
done

SERVER_PID=""
SCRAPER_PID=""
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
    [ -n "$SCRAPER_PID" ] && kill "$SCRAPER_PID" 2>/dev/null
    stop_server
}
trap cleanup EXIT
trap 'note "interrupted"; exit 130' INT TERM

build_binaries
read -r -a CPUS <<<"$(allowed_cpus)"
if [ "${#CPUS[@]}" -ge 2 ]; then
    SERVER_PIN=(--cores "${CPUS[0]}")
    TRADER_PIN=(--cores "${CPUS[1]}")
else
    SERVER_PIN=(--cores "${CPUS[0]}" --no-pin)
    TRADER_PIN=()
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/turbo-dex-admin-bench.XXXXXX")

# GETs PATH from the admin endpoint with bash's /dev/tcp (no curl needed).
scrape_once() {
    local host=${SERVER_ADMIN_ADDR%:*} port=${SERVER_ADMIN_ADDR##*:}
    exec 3<>"/dev/tcp/$host/$port" || return 0
    printf 'GET %s HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n' "$1" >&3
    cat <&3 >/dev/null
    exec 3<&-
}

scraper() {
    while :; do
        scrape_once /metrics
        scrape_once /stats
        sleep 0.1
    done
}

# One run; prints "orders/s trades/s".
run() {
    local scrape=$1 json="$WORK/run.json"
    start_server "$WORK/server.out" "$WORK/server.err" "${SERVER_PIN[@]}" --quiet \
        --engine match --journal none
    [ -n "$SERVER_ADMIN_ADDR" ] || die "this turbo-dex has no admin endpoint"
    if [ "$scrape" = yes ]; then
        scraper &
        SCRAPER_PID=$!
    fi
    "$DEX_TRADER" --server "$SERVER_ADDR" "${TRADER_PIN[@]}" --duration "$DURATION" --warmup 1s \
        --batch 2000 --connections 2 --quiet --json "$json" >/dev/null 2>"$WORK/trader.err" ||
        { cat "$WORK/trader.err" >&2; die "dex-trader failed"; }
    if [ -n "$SCRAPER_PID" ]; then
        kill "$SCRAPER_PID" 2>/dev/null || true
        wait "$SCRAPER_PID" 2>/dev/null || true
        SCRAPER_PID=""
    fi
    stop_server
    local orders trades
    orders=$(json_num "$json" orders_per_sec)
    trades=$(json_num "$json" trades_per_sec)
    echo "$orders $trades"
}

median() { sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }

step "$PAIRS pairs of $DURATION runs, alternating; scraper: /metrics and /stats 10 times a second each"
: >"$WORK/without" && : >"$WORK/with"
for i in $(seq 1 "$PAIRS"); do
    read -r o t <<<"$(run no)"
    echo "$o $t" >>"$WORK/without"
    printf 'pair %d  without scraper: %12.0f orders/s %10.0f trades/s\n' "$i" "$o" "$t"
    read -r o t <<<"$(run yes)"
    echo "$o $t" >>"$WORK/with"
    printf 'pair %d  with scraper:    %12.0f orders/s %10.0f trades/s\n' "$i" "$o" "$t"
done
without=$(cut -d' ' -f1 "$WORK/without" | median)
with=$(cut -d' ' -f1 "$WORK/with" | median)
printf 'median orders/s: without %.0f, with %.0f (%+.1f%%)\n' "$without" "$with" \
    "$(awk -v a="$without" -v b="$with" 'BEGIN {print (b - a) / a * 100}')"
rm -rf "$WORK"
