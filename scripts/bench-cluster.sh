#!/usr/bin/env bash
# What cluster mode costs, how long a cluster takes to form, and how long a
# dead node's shards stay unserved: what one small machine can measure (it
# cannot show scale: every node shares its CPUs).
#
#   (1) overhead: the same turbo-dex on 127.0.0.1 without and with
#       --cluster nats://127.0.0.1:PORT (a nats-server -js this script
#       starts, fresh for every run; the one node owns every shard), driven
#       by the same dex-trader --mix match --batch 2000, alternating, and
#       (unless --latency-rate 0) an open-loop batch-1 run of each for the
#       latency; orders/s, trades/s, the medians and the ratios;
#   (2) formation: scripts/auto-cluster.sh --nodes N (nodes in network
#       namespaces with --cluster auto, finding each other by mDNS), its
#       formed_ms for every run and the median;
#   (4) replicas: one node on a three-server NATS cluster (started by this
#       script, fresh for every run) with --replicas 1 (no replication), 2
#       and 3, alternating, driven as in (1): orders/s, trades/s, batch-1
#       p50/p99, and each one's ratio to --replicas 1;
#   (3) failover: two nodes on one nats-server, the owner of shard 0 killed
#       with SIGKILL and restarted at once on the same journal directory
#       (what systemd's Restart= does), the time from the kill until an
#       order for shard 0 is accepted again; then, for contrast, the same
#       node killed and NOT restarted: when its leases expire and it turns
#       stale in `turbo-dex cluster status`, that its shard is still
#       unserved after that, and how long the survivor takes to serve it
#       after an operator's `turbo-dex cluster claim 0 --node ID --force`.
#
#   scripts/bench-cluster.sh                          # everything, release build
#   scripts/bench-cluster.sh --rounds 5 --duration 10s --json cluster.json --bin-dir target/release
#   scripts/bench-cluster.sh --skip formation         # without root
set -euo pipefail
PROG=bench-cluster
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"

ROUNDS=3
DURATION=10s
WARMUP=2s
LATENCY_RATE=100000
FSYNC=never
SPIN=1
FORM_NODES="3,5"
FORM_RUNS=3
FORM_STAGGER=0
FAILOVER_RUNS=3
FAILOVER_SHARDS=4
REPLICAS_LIST="1,2,3"
INFLIGHT=""
SKIP=""
JSON=""
OUT=""
BIN_DIR=${BIN_DIR:-}

usage() {
    cat <<EOF
Usage: scripts/bench-cluster.sh [--rounds N] [--duration D] [--warmup D] [--latency-rate R]
                                [--fsync never|batch] [--no-spin]
                                [--form-nodes N[,N...]] [--form-runs N] [--form-stagger S]
                                [--failover-runs N] [--failover-shards N] [--replicas LIST]
                                [--inflight N] [--skip overhead,formation,failover,replicas]
                                [--json FILE] [--out DIR] [--bin-dir DIR]

  --rounds N          overhead: alternating rounds, each one run without and one
                      with --cluster (default 3)
  --duration D        length of every overhead run, dex-trader syntax (default 10s)
  --warmup D          warmup before each (default 2s)
  --latency-rate R    also an open-loop batch-1 run of each mode per round at R
                      orders/s, for p50/p99 (default 100000; 0: none)
  --fsync MODE        the journal of both modes (--cluster needs one: the node id
                      lives there): never (default, so that the disk does not hide
                      the difference) or batch (fdatasync every batch, as deployed)
  --no-spin           turbo-dex --poll adaptive and a parking dex-trader (default:
                      --poll spin and --spin 1s, as bench.sh --short and --full)
  --form-nodes LIST   formation: the cluster sizes (default 3,5)
  --form-runs N       formation runs per size (default 3)
  --form-stagger S    passed to auto-cluster.sh --stagger (default 0: all at once)
  --failover-runs N   kill-and-restart runs (default 3)
  --failover-shards N the two nodes' --shards (default 4; each recovers its
                      journal, one 64 MiB segment per shard, when restarted)
  --replicas LIST     replicas: the --replicas values compared, each run with the
                      rounds, duration and latency rate of the overhead part
                      (default 1,2,3; 1 is the baseline)
  --inflight N        dex-trader --inflight (requests unanswered per connection)
                      for the batch-2000 runs of overhead and replicas (default:
                      dex-trader's, 4 batches); a closed-loop run's throughput is
                      at most this over the latency, which replication raises
  --skip LIST         parts to leave out: overhead, formation, failover, replicas
  --json FILE         also write every figure as JSON to FILE
  --out DIR           keep every run's files (dex-trader JSON, logs, status) in DIR
                      (default: a temporary directory, removed at exit)
  --bin-dir DIR       prebuilt turbo-dex and dex-trader (default: build release)
  -h, --help          this text

Needs nats-server (apt-get install nats-server) and, for replicas, ss (iproute2);
formation also needs root and
ip from iproute2 (network namespaces). On a machine with few CPUs every
process shares them: the overhead runs pin turbo-dex's core to the first
half of the allowed CPUs and dex-trader to the rest, and nats-server and the
cluster agent run unpinned beside them, which is part of what is measured.
Exit status: 0 done, 1 a measurement failed, 2 usage or setup error.
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=${2:?--rounds needs a count}; shift 2 ;;
        --duration) DURATION=${2:?--duration needs a time, like 10s}; shift 2 ;;
        --warmup) WARMUP=${2:?--warmup needs a time, like 2s}; shift 2 ;;
        --latency-rate) LATENCY_RATE=${2:?--latency-rate needs orders per second}; shift 2 ;;
        --fsync) FSYNC=${2:?--fsync needs never or batch}; shift 2 ;;
        --no-spin) SPIN=0; shift ;;
        --form-nodes) FORM_NODES=${2:?--form-nodes needs a list, like 3,5}; shift 2 ;;
        --form-runs) FORM_RUNS=${2:?--form-runs needs a count}; shift 2 ;;
        --form-stagger) FORM_STAGGER=${2:?--form-stagger needs seconds}; shift 2 ;;
        --failover-runs) FAILOVER_RUNS=${2:?--failover-runs needs a count}; shift 2 ;;
        --failover-shards) FAILOVER_SHARDS=${2:?--failover-shards needs a count}; shift 2 ;;
        --replicas) REPLICAS_LIST=${2:?--replicas needs a list, like 1,2,3}; shift 2 ;;
        --inflight) INFLIGHT=${2:?--inflight needs a count}; shift 2 ;;
        --skip) SKIP=${2:?--skip needs a list: overhead, formation, failover, replicas}; shift 2 ;;
        --json) JSON=${2:?--json needs a file}; shift 2 ;;
        --out) OUT=${2:?--out needs a directory}; shift 2 ;;
        --bin-dir) BIN_DIR=${2:?--bin-dir needs a directory}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
done

whole() {
    case "$2" in
        '' | *[!0-9]*) die "$1 $2: give a whole number" ;;
    esac
}
whole --rounds "$ROUNDS"
whole --latency-rate "$LATENCY_RATE"
whole --form-runs "$FORM_RUNS"
whole --form-stagger "$FORM_STAGGER"
whole --failover-runs "$FAILOVER_RUNS"
whole --failover-shards "$FAILOVER_SHARDS"
[ -z "$INFLIGHT" ] || whole --inflight "$INFLIGHT"
[ "$FAILOVER_SHARDS" -ge 2 ] || die "--failover-shards $FAILOVER_SHARDS: at least 2 (one for each node)"
[ "$ROUNDS" -ge 1 ] || die "--rounds $ROUNDS: at least 1"
[ "$FORM_RUNS" -ge 1 ] || die "--form-runs $FORM_RUNS: at least 1"
[ "$FAILOVER_RUNS" -ge 1 ] || die "--failover-runs $FAILOVER_RUNS: at least 1"
for d in "$DURATION" "$WARMUP"; do
    case "$d" in
        *[0-9]s | *[0-9]ms) ;;
        *) die "--duration/--warmup $d: give a time like 10s or 1500ms" ;;
    esac
done
case "$FSYNC" in
    never | batch) ;;
    *) die "--fsync $FSYNC: give never or batch" ;;
esac
FORM_NODES=${FORM_NODES//,/ }
for n in $FORM_NODES; do
    case "$n" in
        *[!0-9]* | 0*) die "--form-nodes: $n is not a node count from 1 to 50" ;;
    esac
    [ "$n" -le 50 ] || die "--form-nodes: $n is not a node count from 1 to 50"
done
REPLICAS_LIST=${REPLICAS_LIST//,/ }
for r in $REPLICAS_LIST; do
    case "$r" in
        [1-3]) ;;
        *) die "--replicas: $r is not 1, 2 or 3 (the script's NATS cluster has three servers)" ;;
    esac
done
DO_OVERHEAD=1 DO_FORMATION=1 DO_FAILOVER=1 DO_REPLICAS=1
for part in ${SKIP//,/ }; do
    case "$part" in
        overhead) DO_OVERHEAD=0 ;;
        formation) DO_FORMATION=0 ;;
        failover) DO_FAILOVER=0 ;;
        replicas) DO_REPLICAS=0 ;;
        *) die "--skip $part: give overhead, formation, failover or replicas" ;;
    esac
done
[ -z "$JSON" ] || JSON=$(json_out_path "$JSON")
[ -z "$BIN_DIR" ] || BIN_DIR=$(bin_dir_path "$BIN_DIR")

NATS_BIN=$(command -v nats-server || true)
for dir in /usr/sbin /usr/local/sbin; do
    [ -n "$NATS_BIN" ] || [ ! -x "$dir/nats-server" ] || NATS_BIN="$dir/nats-server"
done
if [ "$DO_OVERHEAD" -eq 1 ] || [ "$DO_FAILOVER" -eq 1 ] || [ "$DO_FORMATION" -eq 1 ] || [ "$DO_REPLICAS" -eq 1 ]; then
    [ -n "$NATS_BIN" ] || die "needs nats-server (apt-get install nats-server)"
fi
if [ "$DO_FORMATION" -eq 1 ]; then
    [ "$(id -u)" -eq 0 ] || die "formation needs root (network namespaces): run as root, or --skip formation"
    command -v ip >/dev/null 2>&1 || die "formation needs ip from iproute2 (apt-get install iproute2), or --skip formation"
fi
cd "$ROOT"

TMP=""
SERVER_PID=""
NATS_PID=""
NODE_PIDS=()
NATS_CLUSTER_PIDS=()
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
    local pid
    trap - EXIT INT TERM
    stop_server
    stop_nats_cluster
    for pid in "${NODE_PIDS[@]}"; do
        [ -n "$pid" ] || continue
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    stop_nats
    if [ -n "$TMP" ] && [ -z "$OUT" ]; then
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'note "interrupted"; exit 130' INT TERM

build_binaries
BIN_DIR=$(cd "$(dirname "$TURBO_DEX")" && pwd)
if [ -n "$OUT" ]; then
    mkdir -p "$OUT" || die "cannot create --out $OUT"
    TMP=$(cd "$OUT" && pwd)
else
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-cluster.XXXXXX")
fi

MACHINE="$(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), $(uname -sr)"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
now_ms() { date +%s%3N; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print ""; else print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
# A JSON array of the arguments (numbers, written as they are).
json_array() { local IFS=,; echo "[$*]"; }
# The arguments (JSON values) joined by a comma and a new, indented line.
json_lines() {
    local out="" f
    for f in "$@"; do
        out="${out:+$out,
    }$f"
    done
    printf '%s' "$out"
}
# col FILE N: the Nth column of FILE; med FILE N: its median; json_col
# FILE N: it as a JSON array.
col() { awk -v n="$2" '{ print $n }' "$1"; }
med() { local m; m=$(col "$1" "$2" 2>/dev/null | median); echo "${m:-null}"; }
json_col() { awk -v n="$2" '{ a = a (NR > 1 ? ", " : "") $n } END { print "[" a "]" }' "$1"; }

# Starts a nats-server with JetStream on a free port of 127.0.0.1, its
# store in DIR; sets NATS_PID and NATS_URL.
start_nats() {
    local dir=$1 i port=""
    mkdir -p "$dir"
    # A log of an earlier run in the same --out directory would name its port.
    rm -f "$dir/nats.log"
    "$NATS_BIN" -a 127.0.0.1 -p -1 -js -sd "$dir/js" -l "$dir/nats.log" >/dev/null 2>&1 &
    NATS_PID=$!
    for i in $(seq 1 200); do
        if grep -q 'Server is ready' "$dir/nats.log" 2>/dev/null; then
            port=$(sed -n 's/.*Listening for client connections on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$dir/nats.log" | head -n 1)
            [ -z "$port" ] || break
        fi
        kill -0 "$NATS_PID" 2>/dev/null || { cat "$dir/nats.log" >&2; die "nats-server did not start (its log is above)"; }
        sleep 0.05
        : "$i"
    done
    [ -n "$port" ] || die "nats-server did not report its port within 10 s (see $dir/nats.log)"
    NATS_URL="nats://127.0.0.1:$port"
}

stop_nats() {
    [ -n "${NATS_PID:-}" ] || return 0
    stop_child "$NATS_PID" TERM 60
    NATS_PID=""
}

# A TCP port nothing listens on, below the ephemeral range (so that no
# outgoing connection takes it meanwhile), and not yet handed out here.
GIVEN_PORTS=" "
unused_port() {
    local p i
    for i in $(seq 1 200); do
        p=$((20000 + RANDOM % 12000))
        case "$GIVEN_PORTS" in *" $p "*) continue ;; esac
        if [ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ]; then
            GIVEN_PORTS="$GIVEN_PORTS$p "
            echo "$p"
            return 0
        fi
        : "$i"
    done
    die "found no free TCP port between 20000 and 32000"
}

# Starts three nats-servers with JetStream routed into one cluster on
# 127.0.0.1 (free ports, every server routing to all three), their stores
# under DIR; waits until each knows JetStream's meta leader; sets
# NATS_CLUSTER_PIDS and NATS_URL (the first server's client URL).
start_nats_cluster() {
    local dir=$1 i routes="" client=() route=()
    mkdir -p "$dir"
    for i in 0 1 2; do
        client[i]=$(unused_port)
        route[i]=$(unused_port)
        routes="$routes${routes:+, }nats-route://127.0.0.1:${route[i]}"
    done
    for i in 0 1 2; do
        {
            echo "server_name: n$i"
            echo "listen: 127.0.0.1:${client[i]}"
            echo "jetstream { store_dir: \"$dir/js-$i\" }"
            echo "cluster { name: bench-replicas, listen: 127.0.0.1:${route[i]}, routes: [$routes] }"
        } >"$dir/n$i.conf"
        rm -f "$dir/n$i.log"
        "$NATS_BIN" -c "$dir/n$i.conf" -l "$dir/n$i.log" >/dev/null 2>&1 &
        NATS_CLUSTER_PIDS+=("$!")
    done
    NATS_URL="nats://127.0.0.1:${client[0]}"
    for i in $(seq 1 400); do
        if [ "$(grep -l 'metadata leader' "$dir"/n?.log 2>/dev/null | wc -l)" -eq 3 ]; then
            return 0
        fi
        sleep 0.05
        : "$i"
    done
    tail -n 20 "$dir"/n?.log >&2
    die "the three nats-servers did not elect a JetStream leader within 20 s (the end of their logs is above)"
}

stop_nats_cluster() {
    local pid
    for pid in "${NATS_CLUSTER_PIDS[@]}"; do
        stop_child "$pid" TERM 60
    done
    NATS_CLUSTER_PIDS=()
}

# `turbo-dex cluster status` of the cluster at NATS_URL into FILE.
status_to() {
    "$TURBO_DEX" cluster status --cluster "$NATS_URL" >"$1" 2>"$1.err"
}

# A node id as the status writes it: 16 hex digits (mawk has no {16}).
AWK_IS_ID='function is_id(s) { return length(s) == 16 && s ~ /^[0-9a-f]+$/ }'

# formed STATUS_FILE NODES SHARDS: NODES alive nodes and SHARDS shards, each
# owned by an alive node with time left on its lease (as auto-cluster.sh).
formed() {
    awk -v nodes="$2" -v shards="$3" "$AWK_IS_ID"'
        /^cluster at / { if ($0 !~ (": " shards " shards,")) exit 1 }
        is_id($1) && $NF == "alive" { alive[$1] = 1; n++ }
        $1 ~ /^[0-9]+$/ && is_id($2) && $4 == "ms" && NF == 4 && ($2 in alive) && $3 > 0 { owned++ }
        END { exit !(n == nodes && owned == shards) }' "$1"
}

# wait_formed NODES SHARDS TIMEOUT_SECS: polls the status every 50 ms until
# formed; dies with the last status after the timeout.
wait_formed() {
    local until=$(($(now_ms) + $3 * 1000))
    while :; do
        if status_to "$TMP/status.txt" && formed "$TMP/status.txt" "$1" "$2"; then
            return 0
        fi
        if [ "$(now_ms)" -ge "$until" ]; then
            cat "$TMP/status.txt" "$TMP/status.txt.err" >&2 2>/dev/null || true
            return 1
        fi
        sleep 0.05
    done
}

fmt_rate() { awk -v x="${1:-0}" 'BEGIN { if (x >= 1e6) printf "%.2fM", x / 1e6; else if (x >= 1e3) printf "%.0fK", x / 1e3; else printf "%.0f", x }'; }

FAILURES=0
JSON_PARTS=()

# place HELPERS: where the runs of the overhead and replicas parts go:
# turbo-dex's one engine core on the first allowed CPU, dex-trader on the
# second half, HELPERS (what else runs, unpinned) on whatever is free.
# Sets CPUS, SERVER_PIN, TRADER_PIN, SERVER_WAIT, TRADER_WAIT, PLACEMENT
# and KINDS (tput, and lat unless --latency-rate 0).
place() {
    local ncpu half
    read -r -a CPUS <<<"$(allowed_cpus)"
    ncpu=${#CPUS[@]}
    if [ "$ncpu" -ge 2 ]; then
        half=$((ncpu / 2))
        SERVER_PIN=(--cores "${CPUS[0]}")
        TRADER_PIN=(--cores "$(join_cpus "${CPUS[@]:half}")")
        PLACEMENT="turbo-dex's one engine core on CPU ${CPUS[0]}, dex-trader on CPU $(join_cpus "${CPUS[@]:half}"); $1 unpinned, so on the other CPUs"
    else
        SERVER_PIN=(--cores "${CPUS[0]}" --no-pin)
        TRADER_PIN=()
        PLACEMENT="one CPU: everything unpinned, sharing it"
    fi
    if [ "$SPIN" -eq 1 ]; then
        SERVER_WAIT=(--poll spin) TRADER_WAIT=(--spin 1s)
    else
        SERVER_WAIT=() TRADER_WAIT=()
    fi
    KINDS="tput"
    [ "$LATENCY_RATE" -eq 0 ] || KINDS="tput lat"
}

# drive DIR KIND: dex-trader against the running server (SERVER_ADDR) as
# placed: --batch 2000 for tput, batch 1 at --latency-rate for lat; its
# JSON in DIR/trader.json. Returns its exit status.
drive() {
    local dir=$1 kind=$2 trader_args=() status=0
    if [ "$kind" = tput ]; then
        trader_args=(--batch 2000)
        [ -z "$INFLIGHT" ] || trader_args+=(--inflight "$INFLIGHT")
    else
        trader_args=(--batch 1 --rate "$LATENCY_RATE")
    fi
    "$DEX_TRADER" --server "$SERVER_ADDR" "${TRADER_PIN[@]}" "${TRADER_WAIT[@]}" --duration "$DURATION" \
        --warmup "$WARMUP" --connections 2 --mix match "${trader_args[@]}" --quiet --json "$dir/trader.json" \
        >"$dir/trader.out" 2>"$dir/trader.err" || status=$?
    return "$status"
}

# record NAME DIR STATUS OUT LABEL: after `drive` (exit STATUS) and the
# server's stop: appends "orders/s trades/s p50 p99" to OUT and prints
# them after LABEL; says why and returns 1 when the run failed.
record() {
    local name=$1 dir=$2 status=$3 out=$4 label=$5 j="$2/trader.json"
    if [ "$status" -ne 0 ] || [ ! -s "$j" ]; then
        note "$name: dex-trader failed (exit status $status):"
        sed 's/^/      /' "$dir/trader.err" >&2
        return 1
    fi
    echo "$(json_num "$j" orders_per_sec) $(json_num "$j" trades_per_sec) $(json_num "$j" p50) $(json_num "$j" p99)" >>"$out"
    printf '    %s %12s orders/s %10s trades/s   p50 %6.0f us  p99 %6.0f us\n' "$label" \
        "$(fmt_rate "$(json_num "$j" orders_per_sec)")" "$(fmt_rate "$(json_num "$j" trades_per_sec)")" \
        "$(json_num "$j" p50)" "$(json_num "$j" p99)" >&2
}

# ---------------------------------------------------------------- overhead
if [ "$DO_OVERHEAD" -eq 1 ]; then
    place "turbo-dex's helper threads (the cluster agent among them) and nats-server"
    O_PLACEMENT=$PLACEMENT
    step "overhead: $ROUNDS round(s) of $DURATION runs without and with --cluster, alternating ($PLACEMENT; journal with --fsync $FSYNC in both)"

    # run_overhead MODE KIND ROUND: one run; appends "orders/s trades/s p50 p99"
    # to $TMP/MODE-KIND (and the time the cluster node took to own its
    # shard to $TMP/owned).
    run_overhead() {
        local mode=$1 kind=$2 round=$3 name="$1-$2-$3"
        local dir="$TMP/$name" cluster_args=()
        mkdir -p "$dir"
        if [ "$mode" = cluster ]; then
            start_nats "$dir/nats"
            cluster_args=(--cluster "$NATS_URL")
        fi
        local started
        started=$(now_ms)
        start_server "$dir/server.out" "$dir/server.err" "${SERVER_PIN[@]}" --quiet --engine match \
            --journal "$dir/journal" --fsync "$FSYNC" "${SERVER_WAIT[@]}" "${cluster_args[@]}"
        if [ "$mode" = cluster ]; then
            # One node, one shard per engine core: it claims after its 2 s join window.
            if ! wait_formed 1 1 30; then
                note "$name: the node did not own its shard within 30 s"
                sed 's/^/      /' "$dir/server.err" >&2
                stop_server
                stop_nats
                return 1
            fi
            echo $(($(now_ms) - started)) >>"$TMP/owned"
        fi
        local status=0
        drive "$dir" "$kind" || status=$?
        stop_server
        stop_nats
        record "$name" "$dir" "$status" "$TMP/$mode-$kind" "$(printf 'round %d  %-7s %-4s' "$round" "$mode" "$kind")" || return 1
        rm -rf "$dir/journal" "$dir/nats/js"
    }

    : >"$TMP/owned"
    for kind in $KINDS; do
        : >"$TMP/single-$kind"
        : >"$TMP/cluster-$kind"
    done
    for round in $(seq 1 "$ROUNDS"); do
        for kind in $KINDS; do
            # The order alternates too: single first in odd rounds.
            if [ $((round % 2)) -eq 1 ]; then order="single cluster"; else order="cluster single"; fi
            for mode in $order; do
                run_overhead "$mode" "$kind" "$round" || FAILURES=$((FAILURES + 1))
            done
        done
    done

    S_ORDERS=$(med "$TMP/single-tput" 1) C_ORDERS=$(med "$TMP/cluster-tput" 1)
    S_TRADES=$(med "$TMP/single-tput" 2) C_TRADES=$(med "$TMP/cluster-tput" 2)
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b != "null") printf "%.3f", b / a; else print "null" }'; }
    ORDERS_RATIO=$(ratio "${S_ORDERS:-0}" "$C_ORDERS")
    TRADES_RATIO=$(ratio "${S_TRADES:-0}" "$C_TRADES")
    OWNED_MEDIAN=$(median <"$TMP/owned")
    mode_json() {
        local mode=$1 lat=""
        if [ -s "$TMP/$mode-lat" ]; then
            lat=$(printf ', "latency_runs": {"orders_per_sec": %s, "latency_us_p50": %s, "latency_us_p99": %s}, "latency_us_p50_median": %s, "latency_us_p99_median": %s' \
                "$(json_col "$TMP/$mode-lat" 1)" "$(json_col "$TMP/$mode-lat" 3)" "$(json_col "$TMP/$mode-lat" 4)" \
                "$(med "$TMP/$mode-lat" 3)" "$(med "$TMP/$mode-lat" 4)")
        fi
        printf '{"orders_per_sec": %s, "trades_per_sec": %s, "orders_per_sec_median": %s, "trades_per_sec_median": %s%s}' \
            "$(json_col "$TMP/$mode-tput" 1)" "$(json_col "$TMP/$mode-tput" 2)" \
            "$(med "$TMP/$mode-tput" 1)" "$(med "$TMP/$mode-tput" 2)" "$lat"
    }
    JSON_PARTS+=("$(printf '"overhead": {"rounds": %s, "duration": "%s", "warmup": "%s", "batch": 2000, "mix": "match", "fsync": "%s", "spin": %s, "placement": "%s",\n    "single": %s,\n    "cluster": %s,\n    "cluster_owned_ms": %s, "cluster_owned_ms_median": %s,\n    "orders_ratio": %s, "trades_ratio": %s}' \
        "$ROUNDS" "$DURATION" "$WARMUP" "$FSYNC" "$([ "$SPIN" -eq 1 ] && echo true || echo false)" "$PLACEMENT" \
        "$(mode_json single)" "$(mode_json cluster)" "$(json_col "$TMP/owned" 1)" "${OWNED_MEDIAN:-null}" \
        "$ORDERS_RATIO" "$TRADES_RATIO")")
fi

# --------------------------------------------------------------- formation
if [ "$DO_FORMATION" -eq 1 ]; then
    FORM_JSON=()
    for n in $FORM_NODES; do
        step "formation: $FORM_RUNS run(s) of scripts/auto-cluster.sh --nodes $n (--cluster auto in network namespaces)"
        times=() failed=0
        for run in $(seq 1 "$FORM_RUNS"); do
            out="$TMP/form-$n-$run"
            stagger=()
            [ "$FORM_STAGGER" -eq 0 ] || stagger=(--stagger "$FORM_STAGGER")
            if "$ROOT/scripts/auto-cluster.sh" --nodes "$n" --duration 500ms --json "$out.json" --bin-dir "$BIN_DIR" \
                "${stagger[@]}" >"$out.log" 2>&1 && ms=$(json_num "$out.json" formed_ms) && [ -n "$ms" ]; then
                times+=("$ms")
                note "run $run: formed in $ms ms"
            else
                failed=$((failed + 1))
                note "run $run: failed; the end of its output:"
                tail -n 15 "$out.log" | sed 's/^/      /' >&2
            fi
        done
        m=$(printf '%s\n' "${times[@]}" | grep . | median || true)
        [ "${#times[@]}" -gt 0 ] || FAILURES=$((FAILURES + 1))
        FORM_JSON+=("$(printf '{"nodes": %s, "shards": %s, "stagger_secs": %s, "formed_ms": %s, "failed_runs": %s, "formed_ms_median": %s}' \
            "$n" "$((n * 2))" "$FORM_STAGGER" "$(json_array "${times[@]}")" "$failed" "${m:-null}")")
        echo "$n ${m:-} ${times[*]} failed=$failed" >>"$TMP/formation"
    done
    JSON_PARTS+=("$(printf '"formation": [\n    %s\n  ]' "$(json_lines "${FORM_JSON[@]}")")")
fi

# ---------------------------------------------------------------- replicas
if [ "$DO_REPLICAS" -eq 1 ]; then
    place "the replication thread and the three nats-servers"
    R_PLACEMENT=$PLACEMENT
    step "replicas: $ROUNDS round(s) of $DURATION runs with --replicas $(echo "$REPLICAS_LIST" | tr ' ' ','), alternating, one node on a three-server NATS cluster ($PLACEMENT; journal with --fsync $FSYNC)"

    # run_replicas R KIND ROUND: one run; appends "orders/s trades/s p50 p99"
    # to $TMP/replicas-R-KIND.
    run_replicas() {
        local r=$1 kind=$2 round=$3 name="replicas-$1-$2-$3"
        local dir="$TMP/$name" repl_args=()
        mkdir -p "$dir"
        start_nats_cluster "$dir/nats"
        [ "$r" -eq 1 ] || repl_args=(--replicas "$r")
        start_server "$dir/server.out" "$dir/server.err" "${SERVER_PIN[@]}" --quiet --engine match \
            --journal "$dir/journal" --fsync "$FSYNC" "${SERVER_WAIT[@]}" --cluster "$NATS_URL" "${repl_args[@]}"
        if ! wait_formed 1 1 30; then
            note "$name: the node did not own its shard within 30 s"
            sed 's/^/      /' "$dir/server.err" >&2
            stop_server
            stop_nats_cluster
            return 1
        fi
        local status=0
        # With replication the shard's first publish creates its stream
        # (R servers agree on it, seconds on a loaded machine): a short
        # run first, not measured, so that the measured one starts with it.
        if [ "$r" -gt 1 ]; then
            "$DEX_TRADER" --server "$SERVER_ADDR" "${TRADER_WAIT[@]}" --duration 1s --connections 1 \
                --mix match --batch 10 --quiet >"$dir/prime.out" 2>&1 || true
        fi
        drive "$dir" "$kind" || status=$?
        stop_server
        stop_nats_cluster
        record "$name" "$dir" "$status" "$TMP/replicas-$r-$kind" "$(printf 'round %d  --replicas %d %-4s' "$round" "$r" "$kind")" || return 1
        rm -rf "$dir/journal" "$dir/nats"/js-*
    }

    for r in $REPLICAS_LIST; do
        for kind in $KINDS; do
            : >"$TMP/replicas-$r-$kind"
        done
    done
    for round in $(seq 1 "$ROUNDS"); do
        # The order turns each round, so no setting always runs first.
        order=$(echo "$REPLICAS_LIST" | tr ' ' '\n' | awk -v k="$round" '{ v[NR] = $1 } END { for (i = 0; i < NR; i++) print v[(i + k - 1) % NR + 1] }')
        for kind in $KINDS; do
            for r in $order; do
                run_replicas "$r" "$kind" "$round" || FAILURES=$((FAILURES + 1))
            done
        done
    done
    R_BASE=$(med "$TMP/replicas-1-tput" 1 2>/dev/null || echo null)
    R_JSON=()
    for r in $REPLICAS_LIST; do
        lat=""
        if [ -s "$TMP/replicas-$r-lat" ]; then
            lat=$(printf ', "latency_us_p50_median": %s, "latency_us_p99_median": %s' \
                "$(med "$TMP/replicas-$r-lat" 3)" "$(med "$TMP/replicas-$r-lat" 4)")
        fi
        R_JSON+=("$(printf '{"replicas": %s, "orders_per_sec": %s, "trades_per_sec": %s, "orders_per_sec_median": %s, "trades_per_sec_median": %s, "orders_ratio_to_1": %s%s}' \
            "$r" "$(json_col "$TMP/replicas-$r-tput" 1)" "$(json_col "$TMP/replicas-$r-tput" 2)" \
            "$(med "$TMP/replicas-$r-tput" 1)" "$(med "$TMP/replicas-$r-tput" 2)" \
            "$(awk -v a="${R_BASE:-null}" -v b="$(med "$TMP/replicas-$r-tput" 1)" 'BEGIN { if (a != "null" && a > 0 && b != "null") printf "%.3f", b / a; else print "null" }')" "$lat")")
    done
    JSON_PARTS+=("$(printf '"replicas": {"rounds": %s, "duration": "%s", "batch": 2000, "mix": "match", "fsync": "%s", "spin": %s, "inflight": %s, "latency_rate": %s, "placement": "%s", "runs": [\n    %s\n  ]}' \
        "$ROUNDS" "$DURATION" "$FSYNC" "$([ "$SPIN" -eq 1 ] && echo true || echo false)" "${INFLIGHT:-null}" \
        "$LATENCY_RATE" "$R_PLACEMENT" "$(json_lines "${R_JSON[@]}")")")
fi

# ---------------------------------------------------------------- failover
if [ "$DO_FAILOVER" -eq 1 ]; then
    step "failover: 2 nodes, --shards $FAILOVER_SHARDS, --cluster nats://127.0.0.1 (a nats-server of this script)"
    FO="$TMP/failover"
    mkdir -p "$FO"
    start_nats "$FO/nats"

    # start_node I LISTEN: node I (a or b) on LISTEN, its journal in $FO/I;
    # appends to its log, so a restart keeps the earlier lines.
    NODE_ADDR=()
    start_node() {
        local i=$1 listen=$2 k
        k=$([ "$i" = a ] && echo 0 || echo 1)
        "$TURBO_DEX" --cluster "$NATS_URL" --journal "$FO/$i" --listen "$listen" --shards "$FAILOVER_SHARDS" \
            --cores 0 --no-pin --admin none --quiet >>"$FO/$i.out" 2>>"$FO/$i.err" &
        NODE_PIDS[k]=$!
    }
    # The address node I listens on: its first "listening on" line.
    node_addr() {
        local i
        for i in $(seq 1 200); do
            if grep -q '^turbo-dex listening on ' "$FO/$1.out" 2>/dev/null; then
                sed -n 's/^turbo-dex listening on //p' "$FO/$1.out" | head -n 1
                return 0
            fi
            sleep 0.05
            : "$i"
        done
        cat "$FO/$1.err" >&2
        die "failover: node $1 did not start listening within 10 s (its log is above)"
    }
    : >"$FO/a.out" && : >"$FO/b.out"
    formed_at=$(now_ms)
    # One after the other: a node listens only once it has joined, and the
    # second then joins well within the first one's 2 s join window, so
    # they split the shards. (Started at the same instant on a fresh
    # nats-server, the second once failed with "reading the cluster config
    # ...: timed out" while the first created the buckets, under load.)
    start_node a 127.0.0.1:0
    NODE_ADDR[0]=$(node_addr a)
    start_node b 127.0.0.1:0
    NODE_ADDR[1]=$(node_addr b)
    wait_formed 2 "$FAILOVER_SHARDS" 60 || die "failover: the two nodes did not form within 60 s (last status above)"
    FO_FORMED_MS=$(($(now_ms) - formed_at))
    note "2 nodes with --cluster $NATS_URL formed in $FO_FORMED_MS ms"
    cat "$TMP/status.txt" >&2
    id_of() { tr -d ' \n' <"$FO/$1/node-id"; }
    OWNER=$(awk "$AWK_IS_ID"'$1 == "0" && is_id($2) { print $2 }' "$TMP/status.txt")
    if [ "$OWNER" = "$(id_of a)" ]; then
        VICTIM=a VK=0 SURVIVOR=b SK=1
    elif [ "$OWNER" = "$(id_of b)" ]; then
        VICTIM=b VK=1 SURVIVOR=a SK=0
    else
        die "failover: shard 0's owner $OWNER is neither node (status above)"
    fi
    note "shard 0 (symbol 0) is node $VICTIM's ($OWNER, ${NODE_ADDR[VK]}); node $SURVIVOR ($(id_of "$SURVIVOR"), ${NODE_ADDR[SK]}) is the survivor"

    # probe ADDR: a short dex-trader run on symbol 0 only (shard 0 of any
    # shard count); true when at least one of its orders was accepted. It
    # writes PROBE_ACCEPTED and PROBE_REJECTS.
    PROBE_DURATION=50ms
    probe() {
        local json="$FO/probe.json"
        rm -f "$json"
        PROBE_ACCEPTED=0 PROBE_REJECTS=0
        "$DEX_TRADER" --server "$1" --symbols 1 --connections 2 --mix match --batch 10 --duration "$PROBE_DURATION" \
            --warmup 0s --drain 1s --connect-timeout 250ms --quiet --json "$json" >"$FO/probe.out" 2>"$FO/probe.err" || return 1
        PROBE_ACCEPTED=$(json_num "$json" accepted)
        PROBE_REJECTS=$(json_num "$json" rejects)
        [ "${PROBE_ACCEPTED:-0}" -gt 0 ]
    }
    # probe_until ADDR START_MS TIMEOUT_SECS: probes until one succeeds;
    # prints "LOWER UPPER PROBES": the start of the last failed probe and the
    # end of the first successful one, in ms after START_MS (the shard was
    # first served between them).
    probe_until() {
        local until=$(($2 + $3 * 1000)) lower=0 t probes=0
        while :; do
            t=$(now_ms)
            probes=$((probes + 1))
            if probe "$1"; then
                echo "$((t - $2)) $(($(now_ms) - $2)) accepted $PROBE_ACCEPTED" >>"$FO/probes.txt"
                echo "$lower $(($(now_ms) - $2)) $probes"
                return 0
            fi
            echo "$((t - $2)) $(($(now_ms) - $2)) accepted ${PROBE_ACCEPTED:-0} rejects ${PROBE_REJECTS:-0} $(head -c 120 "$FO/probe.err" | tr '\n' ' ')" >>"$FO/probes.txt"
            lower=$((t - $2))
            [ "$(now_ms)" -lt "$until" ] || return 1
            sleep 0.01
        done
    }
    # Probes until one is accepted (a 50 ms probe of debug binaries on a
    # loaded machine can end before its first order is answered).
    echo "before the kill: ms after the first probe at the start and the end of each" >>"$FO/probes.txt"
    probe_until "${NODE_ADDR[VK]}" "$(now_ms)" 10 >/dev/null ||
        die "failover: node $VICTIM does not accept orders for its shard 0 before the kill ($(cat "$FO/probe.err"))"

    FO_RUNS=() FO_LOWER=() FO_PROBES=() FO_LOG=()
    for run in $(seq 1 "$FAILOVER_RUNS"); do
        echo "run $run: ms after the kill at the start and the end of each probe" >>"$FO/probes.txt"
        kill_at=$(now_ms)
        kill -KILL "${NODE_PIDS[VK]}"
        wait "${NODE_PIDS[VK]}" 2>/dev/null || true
        start_node "$VICTIM" "${NODE_ADDR[VK]}"
        if result=$(probe_until "${NODE_ADDR[VK]}" "$kill_at" 60); then
            read -r lower upper probes <<<"$result"
            FO_RUNS+=("$upper") FO_LOWER+=("$lower") FO_PROBES+=("$probes")
            # The node's own account: its log line for taking the lease back.
            took=$(grep 'took back shard 0 (' "$FO/$VICTIM.err" | tail -n 1 | cut -d' ' -f1)
            took_ms=null
            [ -z "$took" ] || took_ms=$(($(date -u -d "$took" +%s%3N) - kill_at))
            FO_LOG+=("$took_ms")
            note "run $run: killed and restarted node $VICTIM; shard 0 served again $upper ms after the kill (not yet at $lower ms; $probes probes); its log says it took the lease back at $took_ms ms"
        else
            FAILURES=$((FAILURES + 1))
            note "run $run: shard 0 not served within 60 s of the kill; node $VICTIM's log:"
            tail -n 20 "$FO/$VICTIM.err" | sed 's/^/      /' >&2
            break
        fi
    done
    FO_MEDIAN=$(printf '%s\n' "${FO_RUNS[@]}" | grep . | median || true)

    # Contrast: killed and not restarted.
    step "failover: node $VICTIM killed and not restarted"
    VICTIM_ID=$(id_of "$VICTIM")
    kill_at=$(now_ms)
    kill -KILL "${NODE_PIDS[VK]}"
    wait "${NODE_PIDS[VK]}" 2>/dev/null || true
    NODE_PIDS[VK]=""
    EXPIRED_MS="" STALE_MS=""
    until_ms=$((kill_at + 30000))
    while [ -z "$EXPIRED_MS" ] || [ -z "$STALE_MS" ]; do
        t=$(now_ms)
        if status_to "$TMP/status.txt"; then
            # Every lease naming the victim expired (lease_left 0).
            if [ -z "$EXPIRED_MS" ] && awk -v id="$VICTIM_ID" '
                    $1 ~ /^[0-9]+$/ && $2 == id { n++; if ($3 == 0) e++ }
                    END { exit !(n > 0 && e == n) }' "$TMP/status.txt"; then
                EXPIRED_MS=$((t - kill_at))
                note "its leases expired (status: lease_left 0, not served) $EXPIRED_MS ms after the kill"
            fi
            if [ -z "$STALE_MS" ] && awk -v id="$VICTIM_ID" '$1 == id && $NF == "stale" { f = 1 } END { exit !f }' "$TMP/status.txt"; then
                STALE_MS=$((t - kill_at))
                note "it is stale in the status $STALE_MS ms after the kill"
            fi
        fi
        if [ "$t" -ge "$until_ms" ]; then
            FAILURES=$((FAILURES + 1))
            note "not both expired and stale within 30 s of the kill; the last status:"
            sed 's/^/      /' "$TMP/status.txt" >&2
            break
        fi
        sleep 0.1
    done
    # Its shard stays unserved: the survivor answers WrongNode for it.
    UNSERVED_MS=$(($(now_ms) - kill_at))
    if probe "${NODE_ADDR[SK]}"; then
        FAILURES=$((FAILURES + 1))
        UNSERVED_CONFIRMED=false
        note "the survivor accepted an order for the dead node's shard 0: unexpected in this design"
    else
        UNSERVED_CONFIRMED=true
        note "$UNSERVED_MS ms after the kill the survivor still rejects orders for shard 0 ($PROBE_REJECTS rejects, 0 accepted)"
    fi
    # The operator moves shard 0 to the survivor.
    claim_at=$(now_ms)
    echo "claim: ms after it at the start and the end of each probe" >>"$FO/probes.txt"
    CLAIM_MS="" CLAIM_LOWER=""
    if "$TURBO_DEX" cluster claim 0 --node "$(id_of "$SURVIVOR")" --force --cluster "$NATS_URL" >"$FO/claim.out" 2>&1 &&
        result=$(probe_until "${NODE_ADDR[SK]}" "$claim_at" 30); then
        read -r CLAIM_LOWER CLAIM_MS _ <<<"$result"
        note "after \`turbo-dex cluster claim 0 --node $(id_of "$SURVIVOR") --force\`: the survivor serves shard 0 $CLAIM_MS ms later (not yet at $CLAIM_LOWER ms)"
    else
        FAILURES=$((FAILURES + 1))
        note "the claim or the survivor's serving of shard 0 failed:"
        sed 's/^/      /' "$FO/claim.out" >&2
    fi
    for k in 0 1; do
        if [ -n "${NODE_PIDS[k]}" ]; then
            stop_child "${NODE_PIDS[k]}" INT 100
            NODE_PIDS[k]=""
        fi
    done
    stop_nats
    JSON_PARTS+=("$(printf '"failover": {"shards": %s, "nodes": 2, "formed_ms": %s, "probe_duration": "%s",\n    "restart_served_ms": %s, "restart_not_yet_served_ms": %s, "restart_probes": %s, "restart_lease_taken_back_ms": %s, "restart_served_ms_median": %s,\n    "no_restart": {"leases_expired_ms": %s, "stale_ms": %s, "still_unserved_at_ms": %s, "unserved_confirmed": %s, "claim_served_ms": %s, "claim_not_yet_served_ms": %s}}' \
        "$FAILOVER_SHARDS" "$FO_FORMED_MS" "$PROBE_DURATION" "$(json_array "${FO_RUNS[@]}")" "$(json_array "${FO_LOWER[@]}")" \
        "$(json_array "${FO_PROBES[@]}")" "$(json_array "${FO_LOG[@]}")" "${FO_MEDIAN:-null}" "${EXPIRED_MS:-null}" "${STALE_MS:-null}" "$UNSERVED_MS" \
        "$UNSERVED_CONFIRMED" "${CLAIM_MS:-null}" "${CLAIM_LOWER:-null}")")
fi

# ----------------------------------------------------------------- summary
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
SUMMARY="$TMP/summary.txt"
{
    echo "# turbo-dex cluster: what it costs, how long it takes to form, how long a dead node's shards stay unserved"
    echo "Machine: $MACHINE. Started $STARTED; load average (1, 5, 15 min) $LOAD_BEFORE before, $LOAD_AFTER after."
    if [ "$DO_OVERHEAD" -eq 1 ]; then
        echo
        echo "## Overhead: one node, without and with --cluster ($ROUNDS round(s), alternating)"
        echo "dex-trader --mix match --batch 2000 --connections 2${INFLIGHT:+ --inflight $INFLIGHT} --duration $DURATION --warmup $WARMUP; turbo-dex --cores ${CPUS[0]} --journal DIR --fsync $FSYNC$([ "$SPIN" -eq 1 ] && echo ' --poll spin, dex-trader --spin 1s'); $O_PLACEMENT."
        echo "All processes share this machine's $(nproc) CPUs."
        for mode in single cluster; do
            printf '%-8s orders/s: %s   trades/s: %s   median %s orders/s, %s trades/s\n' "$mode" \
                "$(col "$TMP/$mode-tput" 1 | while read -r x; do fmt_rate "$x"; printf ' '; done)" \
                "$(col "$TMP/$mode-tput" 2 | while read -r x; do fmt_rate "$x"; printf ' '; done)" \
                "$(fmt_rate "$(med "$TMP/$mode-tput" 1)")" "$(fmt_rate "$(med "$TMP/$mode-tput" 2)")"
        done
        awk -v o="$ORDERS_RATIO" -v t="$TRADES_RATIO" 'BEGIN { if (o != "null") printf "cluster / single: orders %.1f%%, trades %.1f%% (cost %+.1f%% orders, %+.1f%% trades; aim: under 5%%)\n", o * 100, t * 100, (1 - o) * 100, (1 - t) * 100 }'
        if [ -s "$TMP/single-lat" ]; then
            for mode in single cluster; do
                printf '%-8s batch 1 at %s orders/s open loop: p50 %.0f us, p99 %.0f us (medians; per run p50 %s, p99 %s)\n' "$mode" \
                    "$(fmt_rate "$LATENCY_RATE")" "$(med "$TMP/$mode-lat" 3)" "$(med "$TMP/$mode-lat" 4)" \
                    "$(col "$TMP/$mode-lat" 3 | awk '{ printf "%s%.0f", (NR > 1 ? " " : ""), $1 }')" \
                    "$(col "$TMP/$mode-lat" 4 | awk '{ printf "%s%.0f", (NR > 1 ? " " : ""), $1 }')"
            done
        fi
        echo "The cluster node owned its shard ${OWNED_MEDIAN:-?} ms (median) after it started (its 2 s join window)."
    fi
    if [ "$DO_FORMATION" -eq 1 ]; then
        echo
        echo "## Formation: scripts/auto-cluster.sh --nodes N (--cluster auto, mDNS, 2 shards per node; start to every node alive and every shard owned)"
        while read -r n m rest; do
            printf '%s nodes: median %s ms; runs (ms): %s\n' "$n" "${m:-none formed}" "$rest"
        done <"$TMP/formation"
    fi
    if [ "$DO_REPLICAS" -eq 1 ]; then
        echo
        echo "## Replicas: one node on a three-server NATS cluster, --replicas $(echo "$REPLICAS_LIST" | tr ' ' ',') ($ROUNDS round(s), alternating)"
        echo "dex-trader --mix match --batch 2000 --connections 2${INFLIGHT:+ --inflight $INFLIGHT} --duration $DURATION --warmup $WARMUP; turbo-dex --cores ${CPUS[0]} --journal DIR --fsync $FSYNC --cluster NATS [--replicas R]$([ "$SPIN" -eq 1 ] && echo ' --poll spin, dex-trader --spin 1s'); $R_PLACEMENT."
        for r in $REPLICAS_LIST; do
            printf -- '--replicas %s  orders/s: %s  trades/s: %s  median %s orders/s, %s trades/s' "$r" \
                "$(col "$TMP/replicas-$r-tput" 1 | while read -r x; do fmt_rate "$x"; printf ' '; done)" \
                "$(col "$TMP/replicas-$r-tput" 2 | while read -r x; do fmt_rate "$x"; printf ' '; done)" \
                "$(fmt_rate "$(med "$TMP/replicas-$r-tput" 1)")" "$(fmt_rate "$(med "$TMP/replicas-$r-tput" 2)")"
            awk -v a="${R_BASE:-null}" -v b="$(med "$TMP/replicas-$r-tput" 1)" 'BEGIN { if (a != "null" && a > 0 && b != "null") printf " (%.1f%% of --replicas 1)", b / a * 100 }'
            if [ -s "$TMP/replicas-$r-lat" ]; then
                printf '; batch 1 at %s orders/s: p50 %.0f us, p99 %.0f us' "$(fmt_rate "$LATENCY_RATE")" \
                    "$(med "$TMP/replicas-$r-lat" 3)" "$(med "$TMP/replicas-$r-lat" 4)"
            fi
            echo
        done
    fi
    if [ "$DO_FAILOVER" -eq 1 ]; then
        echo
        echo "## Failover: 2 nodes, $FAILOVER_SHARDS shards, --cluster nats://127.0.0.1 (formed in $FO_FORMED_MS ms)"
        echo "Probe: dex-trader on symbol 0 (shard 0) for $PROBE_DURATION (connect and logon within 250 ms), repeated until an order is accepted; a figure is the end of the first probe that got one accepted, \"not yet\" the start of the last probe that got none (probes.txt in --out lists them all)."
        echo "Killed (SIGKILL) and restarted at once on the same journal: shard 0 served again after (ms): ${FO_RUNS[*]:-none} (median ${FO_MEDIAN:-?}); not yet at: ${FO_LOWER[*]:-}; the node's log: lease taken back at ${FO_LOG[*]:-}"
        echo "Killed and not restarted: its leases expired after ${EXPIRED_MS:-?} ms, it was stale after ${STALE_MS:-?} ms; at $UNSERVED_MS ms its shard was $([ "$UNSERVED_CONFIRMED" = true ] && echo "still unserved (the survivor rejects its orders)" || echo "SERVED by the survivor (unexpected)"), and it stays so until an operator acts:"
        echo "turbo-dex cluster claim 0 --node SURVIVOR --force: the survivor served shard 0 after ${CLAIM_MS:-?} ms (not yet at ${CLAIM_LOWER:-?} ms)."
    fi
} >"$SUMMARY"
echo
cat "$SUMMARY"

if [ -n "$JSON" ]; then
    {
        printf '{\n  "machine": "%s", "started": "%s", "load_average_before": "%s", "load_average_after": "%s"' \
            "$MACHINE" "$STARTED" "$LOAD_BEFORE" "$LOAD_AFTER"
        for part in "${JSON_PARTS[@]}"; do
            printf ',\n  %s' "$part"
        done
        printf '\n}\n'
    } >"$JSON"
    note "wrote $JSON"
fi
if [ "$FAILURES" -gt 0 ]; then
    printf '%s: error: %s measurement(s) failed (see above)\n' "$PROG" "$FAILURES" >&2
    exit 1
fi
