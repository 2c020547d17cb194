#!/usr/bin/env bash
# The cost of TLS on order entry: closed-loop runs at batch 2000 and batch 1,
# each without and with TLS (turbo-dex --tls-cert, dex-trader --tls), on
# loopback, as scripts/bench.sh runs them (turbo-dex --poll spin,
# dex-trader --spin 1s, --connections 2, --mix realistic), with the null
# engine (the transport alone: every order accepted, so every run does the
# same work) and the matching engine (whose realistic mix shifts between
# new orders and cheap replaces with the book's state, so its orders/s
# varies from run to run with or without TLS).
#
#   scripts/bench-tls.sh [--duration 5s] [--warmup 2s] [--server-cpu 0] [--trader-cpu 1] [--bin-dir DIR]
#
# Builds the release binaries (unless --bin-dir), makes a throwaway CA and
# a server certificate for 127.0.0.1 with openssl, and prints one row per
# run: orders/s and the ack latency p50/p99 from dex-trader's JSON report.
set -euo pipefail

DURATION=5s
WARMUP=2s
SERVER_CPU=0
TRADER_CPU=1
BIN_DIR=
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --server-cpu) SERVER_CPU=$2; shift 2 ;;
        --trader-cpu) TRADER_CPU=$2; shift 2 ;;
        --bin-dir) BIN_DIR=$2; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-tls.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
if [ -z "$BIN_DIR" ]; then
    cargo build --release -p engine -p loadgen --bins >&2
    BIN_DIR="${CARGO_TARGET_DIR:-target}/release"
fi
TURBO_DEX="$BIN_DIR/turbo-dex"
DEX_TRADER="$BIN_DIR/dex-trader"
command -v openssl >/dev/null || { echo "bench-tls.sh: needs openssl to make the certificates" >&2; exit 1; }

OUT=$(mktemp -d /tmp/bench-tls.XXXXXX)
# A CA, and a server certificate it signs for 127.0.0.1 (P-256 keys).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=bench-tls CA" -keyout "$OUT/ca-key.pem" -out "$OUT/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=turbo-dex" -keyout "$OUT/server-key.pem" -out "$OUT/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n' >"$OUT/ext.cnf"
openssl x509 -req -in "$OUT/server.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca-key.pem" \
    -CAcreateserial -days 2 -extfile "$OUT/ext.cnf" -out "$OUT/server.pem" 2>/dev/null

json_num() { tr -d '\n' <"$1" | grep -o "\"$2\"[[:space:]]*:[[:space:]]*[-0-9.eE+]*" | head -n 1 | sed 's/.*:[[:space:]]*//'; }

run() {
    local name=$1 engine=$2 batch=$3 tls=$4
    local server_tls=() trader_tls=()
    if [ "$tls" = tls ]; then
        server_tls=(--tls-cert "$OUT/server.pem" --tls-key "$OUT/server-key.pem")
        trader_tls=(--tls --tls-ca "$OUT/ca.pem")
    fi
    "$TURBO_DEX" --listen 127.0.0.1:0 --cores "$SERVER_CPU" --journal none --poll spin --admin none --engine "$engine" \
        --quiet "${server_tls[@]}" >"$OUT/$name.server.out" 2>"$OUT/$name.server.err" &
    local pid=$! addr=
    for _ in $(seq 100); do
        addr=$(sed -n 's/^turbo-dex listening on //p' "$OUT/$name.server.out" | head -n 1)
        [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "turbo-dex did not start:" >&2; cat "$OUT/$name.server.err" >&2; kill "$pid"; exit 1; }
    "$DEX_TRADER" --server "$addr" --cores "$TRADER_CPU" --spin 1s --connections 2 --duration "$DURATION" --warmup "$WARMUP" \
        --batch "$batch" --mix realistic --quiet --json "$OUT/$name.json" "${trader_tls[@]}" \
        >"$OUT/$name.trader.out" 2>"$OUT/$name.trader.err" || {
        echo "run $name failed:" >&2; cat "$OUT/$name.trader.err" >&2; kill "$pid"; exit 1; }
    kill -INT "$pid"; wait "$pid" || true
    printf '%-22s %12.0f %10s %10s\n' "$name" "$(json_num "$OUT/$name.json" orders_per_sec)" \
        "$(json_num "$OUT/$name.json" p50)" "$(json_num "$OUT/$name.json" p99)"
}

echo "# $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), $(uname -sr)"
echo "# turbo-dex on CPU $SERVER_CPU, dex-trader on CPU $TRADER_CPU, closed loop, $DURATION per run after $WARMUP of warmup"
printf '%-22s %12s %10s %10s\n' run orders/s p50_us p99_us
for engine in null match; do
    for batch in 2000 1; do
        run "$engine-batch$batch-plain" "$engine" "$batch" plain
        run "$engine-batch$batch-tls" "$engine" "$batch" tls
    done
done
echo "# results in $OUT"
