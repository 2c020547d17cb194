#!/usr/bin/env bash
# What jumbo frames, batching and pinning buy, measured over a real network
# path instead of loopback: turbo-dex runs in one network namespace and
# dex-trader in another, joined by a veth pair (10.203.0.1/30 and .2/30,
# inside the namespaces only; the host's interfaces are never touched).
# Every combination of MTU (1500, 9000 on both veth ends), batch size
# (1, 10, 100, 2000, closed loop) and pinning (turbo-dex on one core and
# dex-trader on the other, or unpinned) is one run against a fresh server,
# plus an open-loop latency row (a fixed --rate, batch 1) per MTU and
# pinning. --repeat N runs every configuration N times, in interleaved
# rounds, and the table gives the median. Prints a markdown table and
# writes it, with the raw JSON of every run, to --out.
#
#   sudo scripts/netns-bench.sh                # --full: 3 x 10 s per row, about 13 minutes
#   sudo scripts/netns-bench.sh --short        # 1 x 3 s per row, about 2 minutes
#   sudo scripts/netns-bench.sh --tiny --bin-dir target/debug   # the test suite's run
#   sudo scripts/netns-bench.sh --short --report DIR   # and DIR/index.html, bar charts inline
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
REPORT=""
RATE=""
REPEAT=""
BIN_DIR=${BIN_DIR:-}
ARGS_SEEN="$*"

usage() {
    cat <<EOF
Usage: sudo scripts/netns-bench.sh [--tiny | --short | --full] [--rate N] [--repeat N] [--out DIR] [--report DIR] [--bin-dir DIR]

Runs turbo-dex and dex-trader in two network namespaces joined by a veth
pair and reports orders/s and latency for MTU 1500 against 9000, batches
of 1, 10, 100 and 2000, and pinned against unpinned, as a markdown table.

  --tiny           1 s runs, batches 1 and 100 only, a low open-loop rate
                   (seconds-long runs for the test suite, debug builds)
  --short          3 s runs of every row, once (about 2 minutes)
  --full           10 s runs of every row, 3 times (the default; about
                   13 minutes)
  --repeat N       run every row N times (interleaved rounds) and report
                   the median (default 1, 3 with --full)
  --rate N         orders/s of the open-loop latency rows (default 100000,
                   5000 with --tiny)
  --out DIR        where table.md and the raw JSON of each run go
                   (default results/netns-<timestamp>)
  --report DIR     also write DIR/index.html: one self-contained page (inline
                   SVG, no scripts, no external files) with orders/s and p99
                   as grouped bars (pinning and MTU side by side for each
                   batch), the run-to-run range as error bars, and the
                   tables; the results go to DIR too unless --out says
                   otherwise
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
        --repeat) REPEAT=${2:?--repeat needs a count}; shift 2 ;;
        --rate) RATE=${2:?--rate needs orders per second}; shift 2 ;;
        --out) OUT=${2:?--out needs a directory}; shift 2 ;;
        --report) REPORT=${2:?--report needs a directory}; shift 2 ;;
        --bin-dir) BIN_DIR=${2:?--bin-dir needs a directory}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "needs root to create network namespaces; run it as root (sudo scripts/netns-bench.sh)"
command -v ip >/dev/null 2>&1 || die "needs ip from iproute2 to create network namespaces; install it (apt-get install iproute2)"

# Durations and rows per mode. The open-loop rate is a small fraction of
# what the server sustains with batching in release builds, so its latency
# is mostly the path's, not a queue's; --tiny runs debug builds and uses a
# rate they keep up with.
case "$MODE" in
    tiny) DURATION=1s; WARMUP=300ms; BATCHES=(1 100); OPEN_RATE=5000; ROUNDS=1 ;;
    short) DURATION=3s; WARMUP=1s; BATCHES=(1 10 100 2000); OPEN_RATE=100000; ROUNDS=1 ;;
    full) DURATION=10s; WARMUP=2s; BATCHES=(1 10 100 2000); OPEN_RATE=100000; ROUNDS=3 ;;
esac
if [ -n "$REPEAT" ]; then
    case "$REPEAT" in
        *[!0-9]* | 0*) die "--repeat $REPEAT: give a whole number of runs above 0, like 3" ;;
    esac
    ROUNDS=$REPEAT
fi
if [ -n "$RATE" ]; then
    case "$RATE" in
        *[!0-9]* | 0*) die "--rate $RATE: give orders per second as a whole number above 0, like 100000" ;;
    esac
    OPEN_RATE=$RATE
fi
MTUS=(1500 9000)
# Two connections with their own accounts, so that orders can trade
# (self-trade prevention stops one account trading with itself).
CONNECTIONS=2

if [ -n "$REPORT" ]; then
    mkdir -p "$REPORT" || die "cannot create the report directory $REPORT"
    REPORT=$(cd "$REPORT" && pwd)
    [ -n "$OUT" ] || OUT=$REPORT
fi
[ -n "$OUT" ] || OUT="$ROOT/results/netns-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT" || die "cannot create the output directory $OUT"
OUT=$(cd "$OUT" && pwd)
[ -z "$BIN_DIR" ] || BIN_DIR=$(bin_dir_path "$BIN_DIR")
cd "$ROOT"

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
# One line per run, tab-separated: round pinning MTU batch load orders/s p50
# p99 p99.9 max errors status ("ok" or the exit status of a failed run)
# bytes/packet towards the server, bytes/packet towards the trader, trades/s.
RUNS="$OUT/runs.tsv"
: >"$RUNS"

# The load column of a row: "closed" or "open RATE/s".
load_label() {
    if [ "$1" -gt 0 ]; then echo "open $1/s"; else echo closed; fi
}

# Bytes and packets an interface has sent: tx_counters NS DEV prints "BYTES PACKETS".
tx_counters() {
    ip netns exec "$1" sh -c "cat /sys/class/net/$2/statistics/tx_bytes /sys/class/net/$2/statistics/tx_packets" |
        tr '\n' ' '
}

# Average bytes per packet between two tx_counters readings, or "-".
bytes_per_packet() {
    local b0 p0 b1 p1
    read -r b0 p0 <<<"$1"
    read -r b1 p1 <<<"$2"
    awk -v b="$((b1 - b0))" -v p="$((p1 - p0))" 'BEGIN { if (p > 0) printf "%.0f\n", b / p; else print "-" }'
}

# One run against a fresh server: run_one ROUND PIN MTU BATCH RATE (RATE 0: closed loop).
run_one() {
    local round=$1 pin=$2 mtu=$3 batch=$4 rate=$5
    local load name
    load=$(load_label "$rate")
    name="$pin-mtu$mtu-batch$batch"
    if [ "$rate" -gt 0 ]; then
        name="$name-rate$rate"
    fi
    name="$name-run$round"
    local server_args=(--quiet --mtu "$mtu" "${JOURNAL_ARGS[@]}")
    local trader_args=(--quiet --mtu "$mtu" --batch "$batch" --connections "$CONNECTIONS"
        --duration "$DURATION" --warmup "$WARMUP" --json "$OUT/$name.json")
    if [ "$pin" = pinned ]; then
        server_args+=(--cores "$SERVER_CPU")
        trader_args+=(--cores "$TRADER_CPU")
    else
        # One server thread either way, so that only the pinning differs.
        # dex-trader without --cores still pins its worker, to the first
        # CPU it may use: its glommio executor is always placed.
        server_args+=(--cores "$SERVER_CPU" --no-pin)
    fi
    if [ "$rate" -gt 0 ]; then
        trader_args+=(--rate "$rate")
    fi
    note "$name"

    SERVER_PREFIX=(ip netns exec "$NS_SRV")
    SERVER_LISTEN="$ADDR_SRV:0"
    start_server "$OUT/$name.server.out" "$OUT/$name.server.err" "${server_args[@]}"

    # The veth counters show what the MTU did to packets: with the veth's
    # segmentation offloads the kernel may pass packets above the MTU.
    local to_server0 to_trader0
    to_server0=$(tx_counters "$NS_CLI" "$VETH_CLI")
    to_trader0=$(tx_counters "$NS_SRV" "$VETH_SRV")
    local rc=0
    rm -f "$OUT/$name.json"
    ip netns exec "$NS_CLI" "$DEX_TRADER" --server "$SERVER_ADDR" "${trader_args[@]}" \
        >"$OUT/$name.trader.out" 2>"$OUT/$name.trader.err" &
    TRADER_PID=$!
    wait "$TRADER_PID" || rc=$?
    TRADER_PID=""
    stop_server
    local to_server to_trader
    to_server=$(bytes_per_packet "$to_server0" "$(tx_counters "$NS_CLI" "$VETH_CLI")")
    to_trader=$(bytes_per_packet "$to_trader0" "$(tx_counters "$NS_SRV" "$VETH_SRV")")

    local json="$OUT/$name.json" ops p50 p99 p999 max errors
    if [ "$rc" -ne 0 ] || [ ! -s "$json" ]; then
        FAILED=1
        note "  failed (exit status $rc): see $OUT/$name.trader.err"
        sed 's/^/      /' "$OUT/$name.trader.err" >&2 || true
        printf '%s\t%s\t%s\t%s\t%s\t-\t-\t-\t-\t-\t-\texit %s\t-\t-\t-\n' \
            "$round" "$pin" "$mtu" "$batch" "$load" "$rc" >>"$RUNS"
        return 0
    fi
    ops=$(fmt_num "$json" orders_per_sec 0)
    p50=$(fmt_num "$json" p50 1)
    p99=$(fmt_num "$json" p99 1)
    p999=$(fmt_num "$json" p999 1)
    max=$(fmt_num "$json" max 1)
    errors=$(fmt_num "$json" errors 0)
    trades=$(fmt_num "$json" trades_per_sec 0)
    note "  $ops orders/s, $trades trades/s, p50 $p50 us, p99 $p99 us"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\tok\t%s\t%s\t%s\n' \
        "$round" "$pin" "$mtu" "$batch" "$load" "$ops" "$p50" "$p99" "$p999" "$max" "$errors" \
        "$to_server" "$to_trader" "$trades" >>"$RUNS"
}

# The summary of one configuration over its rounds, tab-separated: ok runs,
# failed runs, then the medians of orders/s, p50, p99, p99.9 and max, the
# sum of errors, the lowest and highest orders/s, the medians of the
# bytes per packet towards the server and towards the trader, and the
# median trades/s.
# summarize PIN MTU BATCH LOAD
summarize() {
    # mawk has no asort: an insertion sort is plenty for a few rounds.
    awk -F '\t' -v p="$1" -v m="$2" -v b="$3" -v l="$4" '
        function median(col,    i, j, v, a, n) {
            n = 0
            for (i = 1; i <= ok; i++) {
                v = val[i, col] + 0
                for (j = n; j > 0 && a[j] > v; j--) a[j + 1] = a[j]
                a[j + 1] = v
                n++
            }
            if (n == 0) return "-"
            if (n % 2) return a[(n + 1) / 2]
            return (a[n / 2] + a[n / 2 + 1]) / 2
        }
        $2 == p && $3 == m && $4 == b && $5 == l {
            if ($12 != "ok") { failed++; next }
            ok++
            for (c = 6; c <= 15; c++) val[ok, c] = $c
            errors += $11
            if (ok == 1 || $6 + 0 < lo) lo = $6 + 0
            if (ok == 1 || $6 + 0 > hi) hi = $6 + 0
        }
        END {
            if (ok == 0) { printf "0\t%d\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\n", failed; exit }
            printf "%d\t%d\t%.0f\t%.1f\t%.1f\t%.1f\t%.1f\t%d\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\n", ok, failed + 0,
                median(6), median(7), median(8), median(9), median(10), errors, lo, hi,
                median(13), median(14), median(15)
        }' "$RUNS"
}

# The change from A to B in percent, or "-" when either is missing or A is 0.
percent_change() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || a + 0 == 0) { print "-"; exit }
        printf "%+.0f%%\n", (b - a) * 100 / a
    }'
}

# Median orders/s (field 3) or p99 (field 5) of a configuration: median_of PIN MTU BATCH LOAD FIELD
median_of() {
    summarize "$1" "$2" "$3" "$4" | cut -f "$5"
}

build_binaries
if [ -n "$REPORT" ]; then
    DEX_REPORT="$(dirname "$DEX_TRADER")/dex-report"
    [ -x "$DEX_REPORT" ] || die "--report needs $DEX_REPORT (built with dex-trader: cargo build -p loadgen)"
fi
# This compares transports, not durability: no journal, so that no fdatasync
# sits in the latency and no run recovers the books (and the client order
# ids) of the one before. Binaries from before the journal have no flag.
JOURNAL_ARGS=()
JOURNAL_NOTE="turbo-dex has no journal"
if "$TURBO_DEX" --help 2>/dev/null | grep -q -- '--journal'; then
    JOURNAL_ARGS=(--journal none)
    JOURNAL_NOTE="--journal none"
fi
# Anything a binary writes in its working directory lands beside the results.
cd "$OUT"
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
step "running $ROUNDS x ${#LOADS[@]} x ${#PINS[@]} x ${#MTUS[@]} runs of $DURATION (+ $WARMUP warmup) in namespaces $NS_SRV and $NS_CLI"
# The configurations a comparison sets side by side run back to back, and
# every round runs each once, so that a change in what else the machine is
# doing falls on both sides of a comparison rather than on one.
MTU_NOW=""
for round in $(seq 1 "$ROUNDS"); do
    for load in "${LOADS[@]}"; do
        read -r batch rate <<<"$load"
        for pin in "${PINS[@]}"; do
            for mtu in "${MTUS[@]}"; do
                if [ "$mtu" != "$MTU_NOW" ]; then
                    set_mtu "$mtu"
                    MTU_NOW=$mtu
                fi
                run_one "$round" "$pin" "$mtu" "$batch" "$rate"
            done
        done
    done
done

TREE=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "an unknown commit")
if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    TREE="$TREE with uncommitted changes"
fi
CPU_MODEL=$(awk -F ': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
{
    echo "Command: \`scripts/netns-bench.sh${ARGS_SEEN:+ $ARGS_SEEN}\` ($MODE: $ROUNDS x $DURATION runs per row after $WARMUP warmup each)"
    echo
    echo "Machine: ${CPU_MODEL:-unknown CPU}, ${#CPUS[@]} usable cores, Linux $(uname -r), $(date -u +%Y-%m-%d)."
    echo "Binaries: $TURBO_DEX and $DEX_TRADER; source tree at $TREE."
    echo "Load average (1, 5, 15 min) before the runs: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)."
    echo
    if [ "${#CPUS[@]}" -ge 2 ]; then
        echo "Pinned: turbo-dex on CPU $SERVER_CPU, dex-trader on CPU $TRADER_CPU. Unpinned: turbo-dex --no-pin (one thread, free to move); dex-trader without --cores, which still places its one worker on the first CPU it may use (CPU $SERVER_CPU: dex-trader has no way to run unpinned)."
    else
        echo "Only one core: pinned rows skipped."
    fi
    echo
    echo "dex-trader: $CONNECTIONS connections, realistic mix; turbo-dex: match engine, one shard, adaptive polling, $JOURNAL_NOTE; both with --mtu of the veth MTU."
    echo "Each row is the median of its runs (columns 'runs' and 'orders/s range' say how many and how far apart); errors are summed."
    echo "Bytes/packet: what the veth ends sent per packet during the run (warmup and handshake included), ACKs counted as packets."
    echo
    echo "| pinning | MTU | batch | load | orders/s | trades/s | p50 us | p99 us | p99.9 us | max us | errors | runs | orders/s range | bytes/packet to server | bytes/packet to trader |"
    echo "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for pin in "${PINS[@]}"; do
        for mtu in "${MTUS[@]}"; do
            for load in "${LOADS[@]}"; do
                read -r batch rate <<<"$load"
                label=$(load_label "$rate")
                IFS=$'\t' read -r ok failed ops p50 p99 p999 max errors lo hi to_server to_trader trades <<<"$(summarize "$pin" "$mtu" "$batch" "$label")"
                runs=$ok
                [ "$failed" -eq 0 ] || runs="$ok of $((ok + failed))"
                if [ "$ok" -eq 0 ]; then
                    echo "| $pin | $mtu | $batch | $label | failed (see runs.tsv) | - | - | - | - | - | - | $runs | - | - | - |"
                else
                    echo "| $pin | $mtu | $batch | $label | $ops | $trades | $p50 | $p99 | $p999 | $max | $errors | $runs | $lo-$hi | $to_server | $to_trader |"
                fi
            done
        done
    done
    echo
    echo "Jumbo frames: MTU 9000 against 1500 (change in median orders/s and in median p99)."
    echo
    echo "| pinning | batch | load | orders/s 1500 | orders/s 9000 | change | p99 us 1500 | p99 us 9000 | change |"
    echo "|---|---:|---|---:|---:|---:|---:|---:|---:|"
    for pin in "${PINS[@]}"; do
        for load in "${LOADS[@]}"; do
            read -r batch rate <<<"$load"
            label=$(load_label "$rate")
            a=$(median_of "$pin" 1500 "$batch" "$label" 3)
            b=$(median_of "$pin" 9000 "$batch" "$label" 3)
            c=$(median_of "$pin" 1500 "$batch" "$label" 5)
            d=$(median_of "$pin" 9000 "$batch" "$label" 5)
            echo "| $pin | $batch | $label | $a | $b | $(percent_change "$a" "$b") | $c | $d | $(percent_change "$c" "$d") |"
        done
    done
    if [ "${#PINS[@]}" -ge 2 ]; then
        echo
        echo "Pinning: pinned against unpinned (change in median orders/s and in median p99)."
        echo
        echo "| MTU | batch | load | orders/s unpinned | orders/s pinned | change | p99 us unpinned | p99 us pinned | change |"
        echo "|---:|---:|---|---:|---:|---:|---:|---:|---:|"
        for mtu in "${MTUS[@]}"; do
            for load in "${LOADS[@]}"; do
                read -r batch rate <<<"$load"
                label=$(load_label "$rate")
                a=$(median_of unpinned "$mtu" "$batch" "$label" 3)
                b=$(median_of pinned "$mtu" "$batch" "$label" 3)
                c=$(median_of unpinned "$mtu" "$batch" "$label" 5)
                d=$(median_of pinned "$mtu" "$batch" "$label" 5)
                echo "| $mtu | $batch | $label | $a | $b | $(percent_change "$a" "$b") | $c | $d | $(percent_change "$c" "$d") |"
            done
        done
    fi
} >"$OUT/table.md"

step "results (also in $OUT/table.md; every run's raw JSON and logs, and runs.tsv, beside it)"
cat "$OUT/table.md"
if [ -n "$REPORT" ]; then
    step "report page"
    "$DEX_REPORT" netns "$OUT" --out "$REPORT/index.html" >&2 || FAILED=1
fi
if [ "$FAILED" -ne 0 ]; then
    printf '%s: some runs failed; their rows say so and their logs are in %s\n' "$PROG" "$OUT" >&2
    exit 1
fi
