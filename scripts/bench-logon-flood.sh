#!/usr/bin/env bash
# What a flood of bad logons costs matching: closed-loop trading runs
# (two accounts with passwords, --mix realistic, batch 2000, as
# scripts/bench.sh runs them) without a flood and beside
# `dex-trader flood --what bad-logons --bad-logon-rate RATE`, alternating,
# against one turbo-dex with --accounts (real argon2id parameters).
#
#   scripts/bench-logon-flood.sh [--pairs 3] [--rate 1000] [--duration SECS] [--warmup SECS] [--batch 2000]
#                                [--server-cpu 0] [--trader-cpu 1] [--flood-cpus LIST]
#                                [--trade-rate ORDERS_PER_SEC] [--bin-dir DIR]
#
# Two kinds of flood: from one address (127.1.P.1 in pair P: 10 password
# checks, then refused at once by the per-address failure limit) and from a /24 of loopback
# addresses (127.0.P.0/24 in pair P, 254 addresses: up to 2,540 password
# checks, more than the auth thread does in a run, so it is busy
# throughout, and logons past its queue of 4,096 are refused at once). Prints orders/s and trades/s of every run and the flood's
# counts, and the latency p50/p99 (from each order's scheduled send time
# with --trade-rate, an open loop at that rate; closed loop without). The
# flood's own process runs on --flood-cpus (default: the
# trader's CPU, keeping the server's CPU for the server). --duration
# (default 5) and --warmup (default 2, at least 2) are whole seconds; a
# flood starts a second into the warmup and lasts to the end of the run.
set -euo pipefail

PAIRS=3
RATE=1000
DURATION=5
WARMUP=2
BATCH=2000
SERVER_CPU=0
TRADER_CPU=1
FLOOD_CPUS=
TRADE_RATE=
BIN_DIR=
while [ $# -gt 0 ]; do
    case "$1" in
        --pairs) PAIRS=$2; shift 2
            if [ "$PAIRS" -lt 1 ] || [ "$PAIRS" -gt 254 ]; then
                echo "bench-logon-flood.sh: --pairs is 1 to 254" >&2; exit 2
            fi ;;
        --rate) RATE=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --batch) BATCH=$2; shift 2 ;;
        --server-cpu) SERVER_CPU=$2; shift 2 ;;
        --trader-cpu) TRADER_CPU=$2; shift 2 ;;
        --flood-cpus) FLOOD_CPUS=$2; shift 2 ;;
        --trade-rate) TRADE_RATE=$2; shift 2 ;;
        --bin-dir) BIN_DIR=$2; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-logon-flood.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

FLOOD_CPUS=${FLOOD_CPUS:-$TRADER_CPU}
if [ "$WARMUP" -lt 2 ] 2>/dev/null; then
    echo "bench-logon-flood.sh: --warmup is at least 2 (the flood starts a second into it)" >&2; exit 2
fi
for n in "$DURATION" "$WARMUP"; do
    case "$n" in
        ''|*[!0-9]*) echo "bench-logon-flood.sh: --duration and --warmup are whole seconds, not $n" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
if [ -z "$BIN_DIR" ]; then
    cargo build --release -p engine -p loadgen --bins >&2
    BIN_DIR="${CARGO_TARGET_DIR:-target}/release"
fi
TURBO_DEX="$BIN_DIR/turbo-dex"
DEX_TRADER="$BIN_DIR/dex-trader"

OUT=$(mktemp -d /tmp/bench-logon-flood.XXXXXX)
echo "trade-secret" >"$OUT/pw.txt"
# Two fresh accounts for every run (ids 1, 2 for the first, 3, 4 for the
# next, ...): a rerun under the same accounts would send client order ids
# below their high-water mark, which the book checks against its history
# (slower, whatever the flood does).
for i in $(seq $((6 * PAIRS))); do
    "$TURBO_DEX" accounts add "trader$i" --file "$OUT/accounts.txt" <"$OUT/pw.txt" >/dev/null 2>&1
done
RUN=0

json_num() { tr -d '\n' <"$1" | grep -o "\"$2\"[[:space:]]*:[[:space:]]*[-0-9.eE+]*" | head -n 1 | sed 's/.*:[[:space:]]*//'; }

"$TURBO_DEX" --listen 127.0.0.1:0 --cores "$SERVER_CPU" --journal none --poll spin --admin none \
    --accounts "$OUT/accounts.txt" --quiet >"$OUT/server.out" 2>"$OUT/server.err" &
PID=$!
trap 'kill "$PID" 2>/dev/null || true' EXIT
ADDR=
for _ in $(seq 100); do
    ADDR=$(sed -n 's/^turbo-dex listening on //p' "$OUT/server.out" | head -n 1)
    [ -n "$ADDR" ] && break
    sleep 0.1
done
[ -n "$ADDR" ] || { echo "turbo-dex did not start:" >&2; cat "$OUT/server.err" >&2; exit 1; }

# One run: trading, and (unless the flood is "none") the flood beside it,
# started a second into the warmup (once the trading sessions are logged
# on: a logon at the very moment a flood from 254 fresh addresses starts
# waits behind their first password checks) and lasting to the end.
run() {
    local name=$1 flood=$2 range=${3:-}
    RUN=$((RUN + 1))
    local rate_args=()
    [ -n "$TRADE_RATE" ] && rate_args=(--rate "$TRADE_RATE")
    "$DEX_TRADER" --server "$ADDR" --cores "$TRADER_CPU" --spin 1s --connections 2 "${rate_args[@]}" \
        --account $((2 * RUN - 1)) --accounts 2 --password-file "$OUT/pw.txt" --duration "${DURATION}s" --warmup "${WARMUP}s" \
        --batch "$BATCH" --mix realistic --quiet --json "$OUT/$name.json" \
        >"$OUT/$name.trader.out" 2>"$OUT/$name.trader.err" &
    local trader_pid=$! counts=-
    if [ "$flood" != none ]; then
        sleep 1
        taskset -c "$FLOOD_CPUS" "$DEX_TRADER" flood --server "$ADDR" --what bad-logons --account 2 \
            --bad-logon-rate "$RATE" --flood-duration "$((DURATION + WARMUP - 1))s" --timeout 30s \
            --sources "$range" --json "$OUT/$name.flood.json" >"$OUT/$name.flood.out" 2>&1 || {
            echo "flood $name failed:" >&2; cat "$OUT/$name.flood.out" >&2; exit 1; }
        counts="$(json_num "$OUT/$name.flood.json" sent) sent, $(json_num "$OUT/$name.flood.json" authentication_failed) checked, $(json_num "$OUT/$name.flood.json" refused_at_once) limited, $(json_num "$OUT/$name.flood.json" busy) busy, $(json_num "$OUT/$name.flood.json" accepted) accepted"
    fi
    wait "$trader_pid" || { echo "run $name failed:" >&2; cat "$OUT/$name.trader.err" >&2; exit 1; }
    printf '%-16s %12.0f %10.0f %9s %9s   %s\n' "$name" "$(json_num "$OUT/$name.json" orders_per_sec)" \
        "$(json_num "$OUT/$name.json" trades_per_sec)" "$(json_num "$OUT/$name.json" p50)" \
        "$(json_num "$OUT/$name.json" p99)" "$counts"
}

echo "# $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), $(uname -sr)"
echo "# turbo-dex --accounts on CPU $SERVER_CPU, dex-trader on CPU $TRADER_CPU (flood on $FLOOD_CPUS), ${TRADE_RATE:-closed loop}${TRADE_RATE:+ orders/s open loop}, batch $BATCH, ${DURATION} s per run after ${WARMUP} s of warmup; flood $RATE bad logons/s"
printf '%-16s %12s %10s %9s %9s   %s\n' run orders/s trades/s p50_us p99_us flood
for pair in $(seq "$PAIRS"); do
    run "quiet-$pair" none
    # Never from 127.0.0.1, the trading sessions' address: its failures
    # would lock them out too.
    run "one-addr-$pair" one "127.1.$pair.1/32"
    # Failure windows last a minute per address: each pair floods from
    # its own range (127.0.1.0/24, 127.0.2.0/24, ...), all of it fresh.
    run "range-$pair" range "127.0.$pair.0/24"
done
echo "# results in $OUT"
