#!/usr/bin/env bash
# What jumbo frames, batching and pinning buy, measured over a real network
# path instead of loopback: turbo-dex runs in one network namespace and
# dex-trader in another, joined by a veth pair (10.203.0.1/30 and .2/30,
# inside the namespaces only; the host's interfaces are never touched).
# Every combination of MTU (1500, 9000 on both veth ends), batch size
# (1, 10, 100, 2000, closed loop) and pinning (turbo-dex on one core and
# dex-trader on the other, or both unpinned) is one run against a fresh
# server, plus an open-loop latency row (a fixed --rate, batch 1) per MTU
# and pinning. Prints a markdown table and writes it, with the raw JSON of
# every run, to --out.
#
#   sudo scripts/netns-bench.sh                # --full: 10 s per run, about 5 minutes
#   sudo scripts/netns-bench.sh --short        # 3 s per run
#   sudo scripts/netns-bench.sh --tiny --bin-dir target/debug   # the test suite's run
#
# Needs root and ip (iproute2). The namespaces are deleted on exit, also
# when interrupted, and leftovers of a crashed earlier run are deleted at
# start.
set -euo pipefail
PROG=netns-bench
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"

MODE=full
OUT=""
BIN_DIR=${BIN_DIR:-}
ARGS_SEEN="$*"

usage() {
    cat <<EOF
Usage: sudo scripts/netns-bench.sh [--tiny | --short | --full] [--out DIR] [--bin-dir DIR]

Runs turbo-dex and dex-trader in two network namespaces joined by a veth
pair and reports orders/s and latency for MTU 1500 against 9000, batches
of 1, 10, 100 and 2000, and pinned against unpinned, as a markdown table.

  --tiny           1 s runs, batches 1 and 100 only, a low open-loop rate
                   (seconds-long runs for the test suite, debug builds)
  --short          3 s runs of every row
  --full           10 s runs of every row (the default; about 5 minutes)
  --out DIR        where table.md and the raw JSON of each run go
                   (default results/netns-<timestamp>)
  --bin-dir DIR    use prebuilt turbo-dex and dex-trader from DIR instead of
                   building them in release mode
  -h, --help       this text

Needs root (network namespaces) and ip from iproute2. Exit status: 0 all
runs completed, 1 a run failed (its row says so), 2 usage or setup error.
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --tiny) MODE=tiny; shift ;;
        --short) MODE=short; shift ;;
        --full) MODE=full; shift ;;
        --out) OUT=${2:?--out needs a directory}; shift 2 ;;
        --bin-dir) BIN_DIR=${2:?--bin-dir needs a directory}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "needs root to create network namespaces; run it as root (sudo scripts/netns-bench.sh)"
command -v ip >/dev/null 2>&1 || die "needs ip from iproute2 to create network namespaces; install it (apt-get install iproute2)"

# Durations and rows per mode. The open-loop rate sits well below what
# batch 1 sustains in release builds, so its latency is the path's, not a
# queue's; --tiny runs debug builds and uses a rate they keep up with.
case "$MODE" in
    tiny) DURATION=1s; WARMUP=300ms; BATCHES=(1 100); OPEN_RATE=5000 ;;
    short) DURATION=3s; WARMUP=1s; BATCHES=(1 10 100 2000); OPEN_RATE=100000 ;;
    full) DURATION=10s; WARMUP=2s; BATCHES=(1 10 100 2000); OPEN_RATE=100000 ;;
esac
MTUS=(1500 9000)
# Two connections with their own accounts, so that orders can trade
# (self-trade prevention stops one account trading with itself).
CONNECTIONS=2

[ -n "$OUT" ] || OUT="$ROOT/results/netns-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT" || die "cannot create the output directory $OUT"
OUT=$(cd "$OUT" && pwd)

# Names carry this shell's pid so that parallel runs never collide; the
# addresses can repeat because each pair lives in its own namespaces.
NS_PREFIX=tdx-netns-bench
NS_SRV="$NS_PREFIX-$$-srv"
NS_CLI="$NS_PREFIX-$$-cli"
VETH_SRV="tdxs$$"
VETH_CLI="tdxc$$"
ADDR_SRV=10.203.0.1
ADDR_CLI=10.203.0.2

SERVER_PID=""
TRADER_PID=""
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
    if [ -n "$TRADER_PID" ]; then
        kill -KILL "$TRADER_PID" 2>/dev/null || true
        wait "$TRADER_PID" 2>/dev/null || true
        TRADER_PID=""
    fi
    stop_server
    # Deleting a namespace deletes the veth end inside it, and with it the peer.
    ip netns del "$NS_SRV" 2>/dev/null || true
    ip netns del "$NS_CLI" 2>/dev/null || true
}
trap cleanup EXIT
trap 'note "interrupted"; exit 130' INT TERM

# Deletes the namespaces of earlier runs whose script is no longer running
# (a crash or a SIGKILL skips the trap).
remove_leftovers() {
    local ns pid
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
        case "$ns" in
            "$NS_PREFIX"-*-srv | "$NS_PREFIX"-*-cli) ;;
            *) continue ;;
        esac
        pid=${ns#"$NS_PREFIX"-}
        pid=${pid%-*}
        if [ "$pid" != "$$" ] && [ -r "/proc/$pid/cmdline" ] &&
            tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q netns-bench; then
            continue
        fi
        note "deleting $ns, left behind by an earlier run"
        ip netns del "$ns" 2>/dev/null || true
    done
}

setup_namespaces() {
    ip netns add "$NS_SRV" || die "cannot create network namespace $NS_SRV (is this a container without CAP_SYS_ADMIN?)"
    ip netns add "$NS_CLI" || die "cannot create network namespace $NS_CLI"
    # The pair is created with each end already inside its namespace, so no
    # interface ever appears on the host.
    ip link add "$VETH_SRV" netns "$NS_SRV" type veth peer name "$VETH_CLI" netns "$NS_CLI" ||
        die "cannot create a veth pair (is the veth kernel module available?)"
    ip -n "$NS_SRV" addr add "$ADDR_SRV/30" dev "$VETH_SRV"
    ip -n "$NS_CLI" addr add "$ADDR_CLI/30" dev "$VETH_CLI"
    ip -n "$NS_SRV" link set lo up
    ip -n "$NS_CLI" link set lo up
    ip -n "$NS_SRV" link set "$VETH_SRV" up
    ip -n "$NS_CLI" link set "$VETH_CLI" up
}

set_mtu() {
    ip -n "$NS_SRV" link set dev "$VETH_SRV" mtu "$1" || die "cannot set MTU $1 on $VETH_SRV"
    ip -n "$NS_CLI" link set dev "$VETH_CLI" mtu "$1" || die "cannot set MTU $1 on $VETH_CLI"
}

# Formats a JSON number: fmt_num FILE KEY DECIMALS; "-" when absent.
fmt_num() {
    local v
    v=$(json_num "$1" "$2")
    case "$v" in
        '' | *[!-0-9.eE+]*) echo "-" ;;
        *) awk -v v="$v" -v d="$3" 'BEGIN { printf "%.*f\n", d, v }' ;;
    esac
}

FAILED=0
ROWS=()
# Tab-separated results for the comparison tables: pin mtu load orders/s p99.
RESULTS="$OUT/results.tsv"
: >"$RESULTS"

# One run against a fresh server: run_one PIN MTU BATCH RATE (RATE 0: closed loop).
run_one() {
    local pin=$1 mtu=$2 batch=$3 rate=$4
    local load name
    if [ "$rate" -gt 0 ]; then
        load="open $rate/s"
        name="$pin-mtu$mtu-batch$batch-rate$rate"
    else
        load=closed
        name="$pin-mtu$mtu-batch$batch"
    fi
    local server_args=(--quiet --mtu "$mtu")
    local trader_args=(--quiet --mtu "$mtu" --batch "$batch" --connections "$CONNECTIONS"
        --duration "$DURATION" --warmup "$WARMUP" --json "$OUT/$name.json")
    if [ "$pin" = pinned ]; then
        server_args+=(--cores "$SERVER_CPU")
        trader_args+=(--cores "$TRADER_CPU")
    else
        # One server thread either way, so that only the pinning differs.
        server_args+=(--cores "$SERVER_CPU" --no-pin)
    fi
    if [ "$rate" -gt 0 ]; then
        trader_args+=(--rate "$rate")
    fi
    note "$name"

    SERVER_PREFIX=(ip netns exec "$NS_SRV")
    SERVER_LISTEN="$ADDR_SRV:0"
    start_server "$OUT/$name.server.out" "$OUT/$name.server.err" "${server_args[@]}"

    local rc=0
    rm -f "$OUT/$name.json"
    ip netns exec "$NS_CLI" "$DEX_TRADER" --server "$SERVER_ADDR" "${trader_args[@]}" \
        >"$OUT/$name.trader.out" 2>"$OUT/$name.trader.err" &
    TRADER_PID=$!
    wait "$TRADER_PID" || rc=$?
    TRADER_PID=""
    stop_server

    local json="$OUT/$name.json" ops p50 p99 p999 max errors
    if [ "$rc" -ne 0 ] || [ ! -s "$json" ]; then
        FAILED=1
        note "  failed (exit status $rc): see $OUT/$name.trader.err"
        sed 's/^/      /' "$OUT/$name.trader.err" >&2 || true
        ROWS+=("| $pin | $mtu | $batch | $load | failed (exit $rc, see $name.trader.err) | - | - | - | - | - |")
        return 0
    fi
    ops=$(fmt_num "$json" orders_per_sec 0)
    p50=$(fmt_num "$json" p50 1)
    p99=$(fmt_num "$json" p99 1)
    p999=$(fmt_num "$json" p999 1)
    max=$(fmt_num "$json" max 1)
    errors=$(fmt_num "$json" errors 0)
    note "  $ops orders/s, p50 $p50 us, p99 $p99 us"
    ROWS+=("| $pin | $mtu | $batch | $load | $ops | $p50 | $p99 | $p999 | $max | $errors |")
    printf '%s\t%s\t%s\t%s\t%s\n' "$pin" "$mtu" "$batch $load" "$ops" "$p99" >>"$RESULTS"
}

# The change from A to B in percent, or "-" when either is missing or A is 0.
percent_change() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || a + 0 == 0) { print "-"; exit }
        printf "%+.0f%%\n", (b - a) * 100 / a
    }'
}

# Looks a result up: lookup PIN MTU LOAD FIELD (4 orders/s, 5 p99).
lookup() {
    awk -F '\t' -v p="$1" -v m="$2" -v l="$3" -v f="$4" \
        '$1 == p && $2 == m && $3 == l { print $f; exit }' "$RESULTS"
}

build_binaries
remove_leftovers
setup_namespaces

read -r -a CPUS <<<"$(allowed_cpus)"
PINS=(pinned unpinned)
SERVER_CPU=${CPUS[0]}
TRADER_CPU=${CPUS[1]:-}
if [ "${#CPUS[@]}" -lt 2 ]; then
    PINS=(unpinned)
    note "only one core here: skipping the pinned rows (they need one core each for turbo-dex and dex-trader)"
fi

LOADS=()
for b in "${BATCHES[@]}"; do LOADS+=("$b 0"); done
LOADS+=("1 $OPEN_RATE")

# Other work on the box skews every figure; the table says how busy it was.
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
step "running ${#PINS[@]} x ${#MTUS[@]} x ${#LOADS[@]} runs of $DURATION (+ $WARMUP warmup) in namespaces $NS_SRV and $NS_CLI"
for pin in "${PINS[@]}"; do
    for mtu in "${MTUS[@]}"; do
        set_mtu "$mtu"
        for load in "${LOADS[@]}"; do
            read -r batch rate <<<"$load"
            run_one "$pin" "$mtu" "$batch" "$rate"
        done
    done
done

CPU_MODEL=$(awk -F ': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
{
    echo "Command: \`scripts/netns-bench.sh${ARGS_SEEN:+ $ARGS_SEEN}\` ($MODE: $DURATION runs after $WARMUP warmup)"
    echo
    echo "Machine: ${CPU_MODEL:-unknown CPU}, ${#CPUS[@]} usable cores, Linux $(uname -r), $(date -u +%Y-%m-%d)."
    echo "Load average (1, 5, 15 min) before the runs: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)."
    if [ "${#CPUS[@]}" -ge 2 ]; then
        echo
        echo "Pinned: turbo-dex on CPU $SERVER_CPU, dex-trader on CPU $TRADER_CPU. Unpinned: turbo-dex --no-pin (one thread, free to move), dex-trader without --cores."
    else
        echo
        echo "Only one core: pinned rows skipped."
    fi
    echo
    echo "dex-trader: $CONNECTIONS connections, realistic mix; turbo-dex: match engine, one shard, adaptive polling; both with --mtu of the veth MTU."
    echo
    echo "| pinning | MTU | batch | load | orders/s | p50 us | p99 us | p99.9 us | max us | errors |"
    echo "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "Jumbo frames: MTU 9000 against 1500 (change in orders/s and in p99)."
    echo
    echo "| pinning | batch | load | orders/s 1500 | orders/s 9000 | change | p99 us 1500 | p99 us 9000 | change |"
    echo "|---|---:|---|---:|---:|---:|---:|---:|---:|"
    for pin in "${PINS[@]}"; do
        for load in "${LOADS[@]}"; do
            read -r batch rate <<<"$load"
            if [ "$rate" -gt 0 ]; then key="$batch open $rate/s"; else key="$batch closed"; fi
            a=$(lookup "$pin" 1500 "$key" 4)
            b=$(lookup "$pin" 9000 "$key" 4)
            c=$(lookup "$pin" 1500 "$key" 5)
            d=$(lookup "$pin" 9000 "$key" 5)
            echo "| $pin | $batch | ${key#* } | ${a:--} | ${b:--} | $(percent_change "$a" "$b") | ${c:--} | ${d:--} | $(percent_change "$c" "$d") |"
        done
    done
    if [ "${#PINS[@]}" -ge 2 ]; then
        echo
        echo "Pinning: pinned against unpinned (change in orders/s and in p99)."
        echo
        echo "| MTU | batch | load | orders/s unpinned | orders/s pinned | change | p99 us unpinned | p99 us pinned | change |"
        echo "|---:|---:|---|---:|---:|---:|---:|---:|---:|"
        for mtu in "${MTUS[@]}"; do
            for load in "${LOADS[@]}"; do
                read -r batch rate <<<"$load"
                if [ "$rate" -gt 0 ]; then key="$batch open $rate/s"; else key="$batch closed"; fi
                a=$(lookup unpinned "$mtu" "$key" 4)
                b=$(lookup pinned "$mtu" "$key" 4)
                c=$(lookup unpinned "$mtu" "$key" 5)
                d=$(lookup pinned "$mtu" "$key" 5)
                echo "| $mtu | $batch | ${key#* } | ${a:--} | ${b:--} | $(percent_change "$a" "$b") | ${c:--} | ${d:--} | $(percent_change "$c" "$d") |"
            done
        done
    fi
} >"$OUT/table.md"

step "results (also in $OUT/table.md, raw JSON per run beside it)"
cat "$OUT/table.md"
if [ "$FAILED" -ne 0 ]; then
    printf '%s: some runs failed; their rows say so and their logs are in %s\n' "$PROG" "$OUT" >&2
    exit 1
fi
