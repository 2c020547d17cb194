#!/usr/bin/env bash
# The repeatable end-to-end benchmark: turbo-dex and dex-trader on loopback,
# pinned to separate cores.
#
#   (1) throughput, closed loop, realistic mix, batches 1, 10, 100, 2000,
#       for --engine match and --engine null;
#   (2) open-loop latency at fixed offered rates, percentiles to p99.99;
#   (3) the server's peak resident memory for every run, and (full mode)
#       its resident memory sampled over a 60-second run at full load;
#   and the bare loopback TCP round trip (tcp-rtt) for scale.
#
# Writes the raw JSON reports and table.md to a results folder (not
# committed) and prints the table.
#
#   scripts/bench.sh --short      # a quick look (3 s runs)
#   scripts/bench.sh --full       # for the record (10 s runs + 60 s memory run)
#   scripts/bench.sh --tiny       # seconds; what the test suite runs
#   scripts/bench.sh --short --report DIR   # and DIR/index.html, charts inline
set -euo pipefail
PROG=bench
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"
cd "$ROOT"

MODE=short
OUT=""
REPORT=""
BIN_DIR=${BIN_DIR:-}
SERVER_EXTRA=()

usage() {
    cat <<EOF
Usage: scripts/bench.sh [--tiny|--short|--full] [--out DIR] [--report DIR] [--bin-dir DIR] [-- TURBO-DEX ARGS...]

  --tiny        1-second runs, batches 1 and 100, one latency rate (the test suite's mode)
  --short       3-second runs, every batch size, latency at 100K and 1M orders/s (default)
  --full        10-second runs, latency at 100K, 1M and 5M orders/s, and a 60-second
                memory run
  --out DIR     where to write the JSON reports and table.md
                (default results/bench-<mode>-<time>)
  --report DIR  also write DIR/index.html: one self-contained page (inline SVG,
                no scripts, no external files) with the machine, the command, the
                tables, every run's latency percentile distribution in one chart
                (the TCP round trip and the longest hiccup as reference lines),
                and throughput and server RSS over a long run (--full: the
                60-second run; --tiny and --short add a 3 or 10-second one).
                The results go to DIR too unless --out says otherwise.
  --bin-dir DIR use prebuilt turbo-dex and dex-trader from DIR instead of building
  -- ARGS       extra arguments for every turbo-dex run (e.g. -- --batch 4096)

Short and full modes give both programs their CPUs to themselves: turbo-dex
runs with --poll spin and dex-trader with --spin 1s, so no answer waits for
a thread to wake (tiny mode, which shares the test machine, does not spin).
Rows marked journal "fsync" run with a journal in the results folder and
--fsync batch (deleted after the run); all others with --journal none.
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --tiny) MODE=tiny; shift ;;
        --short) MODE=short; shift ;;
        --full) MODE=full; shift ;;
        --out) OUT=${2:?--out needs a directory}; shift 2 ;;
        --report) REPORT=${2:?--report needs a directory}; shift 2 ;;
        --bin-dir) BIN_DIR=${2:?--bin-dir needs a directory}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; SERVER_EXTRA=("$@"); break ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
done

case "$MODE" in
    tiny)
        DURATION=1s WARMUP=500ms BATCHES="1 100" RATES="20000:1" MEMORY_SECS=0 RTT_COUNT=2000
        MD_SUBSCRIBERS=10 MD_FANOUT=20 MD_RATE=20000
        # The test suite shares two CPUs with other tests: nobody spins.
        SERVER_WAIT=() TRADER_WAIT=() ;;
    short)
        DURATION=3s WARMUP=1s BATCHES="1 10 100 2000" RATES="100000:1 1000000:10" MEMORY_SECS=0 RTT_COUNT=50000
        MD_SUBSCRIBERS=100 MD_FANOUT=1000 MD_RATE=100000
        SERVER_WAIT=(--poll spin) TRADER_WAIT=(--spin 1s) ;;
    full)
        DURATION=10s WARMUP=2s BATCHES="1 10 100 2000" RATES="100000:1 1000000:10 5000000:50" MEMORY_SECS=60 RTT_COUNT=200000
        MD_SUBSCRIBERS=100 MD_FANOUT=1000 MD_RATE=100000
        SERVER_WAIT=(--poll spin) TRADER_WAIT=(--spin 1s) ;;
esac

# With --report: every run keeps its latency histogram (.hgrm) and a long
# run (at least a short one) records throughput and RSS over time.
RSS_EVERY=5
TRADER_REPORT=()
if [ -n "$REPORT" ]; then
    [ -n "$OUT" ] || OUT=$REPORT
    mkdir -p "$REPORT" || die "cannot create the report directory $REPORT"
    REPORT=$(cd "$REPORT" && pwd)
    if [ "$MEMORY_SECS" -eq 0 ]; then
        RSS_EVERY=1
        case "$MODE" in
            tiny) MEMORY_SECS=3 ;;
            *) MEMORY_SECS=10 ;;
        esac
    fi
fi
[ -n "$OUT" ] || OUT="results/bench-$MODE-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SERVER_PID=""
# shellcheck disable=SC2317  # invoked by the trap
cleanup() { stop_server; }
trap cleanup EXIT
trap 'note "interrupted"; exit 130' INT TERM

build_binaries
if [ -n "$REPORT" ]; then
    DEX_REPORT="$(dirname "$DEX_TRADER")/dex-report"
    [ -x "$DEX_REPORT" ] || die "--report needs $DEX_REPORT (built with dex-trader: cargo build -p loadgen)"
fi
RTT_BIN="$(dirname "$TURBO_DEX")/tcp-rtt"
HICCUP_BIN="$(dirname "$TURBO_DEX")/hiccup"
if [ -z "${BIN_DIR:-}" ]; then
    cargo build --release --locked -p benches --bin tcp-rtt --bin hiccup >&2
fi

read -r -a CPUS <<<"$(allowed_cpus)"
N=${#CPUS[@]}
if [ "$N" -ge 2 ]; then
    HALF=$((N / 2))
    SERVER_CPUS=$(join_cpus "${CPUS[@]:0:HALF}")
    TRADER_CPUS=$(join_cpus "${CPUS[@]:HALF}")
    SERVER_PIN=(--cores "$SERVER_CPUS")
    TRADER_PIN=(--cores "$TRADER_CPUS")
    PLACEMENT="turbo-dex on CPU $SERVER_CPUS, dex-trader on CPU $TRADER_CPUS"
else
    SERVER_PIN=(--cores "${CPUS[0]}" --no-pin)
    TRADER_PIN=()
    PLACEMENT="one CPU: both unpinned, sharing it"
fi
MACHINE="$(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), $(uname -sr)"
step "bench mode $MODE; $PLACEMENT; results in $OUT"

# One measured run: run_one NAME SERVER-ARGS... -- TRADER-ARGS...
run_one() {
    local name=$1
    shift
    local server_args=() trader_args=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do server_args+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    trader_args=("$@")
    if [ -n "$REPORT" ]; then
        trader_args+=(--hgrm "$OUT/$name.hgrm")
    fi
    start_server "$OUT/$name.server.out" "$OUT/$name.server.err" "${SERVER_PIN[@]}" --quiet \
        "${SERVER_WAIT[@]}" "${server_args[@]}" "${SERVER_EXTRA[@]}"
    local status=0
    "$DEX_TRADER" --server "$SERVER_ADDR" "${TRADER_PIN[@]}" "${TRADER_WAIT[@]}" --duration "$DURATION" --warmup "$WARMUP" \
        --quiet --json "$OUT/$name.json" "${trader_args[@]}" >"$OUT/$name.trader.out" 2>"$OUT/$name.trader.err" ||
        status=$?
    server_peak_rss_kib >"$OUT/$name.rss_kib"
    stop_server
    if [ "$status" -ne 0 ] || [ ! -s "$OUT/$name.json" ]; then
        note "run $name failed (dex-trader status $status):"
        sed 's/^/      /' "$OUT/$name.trader.err" >&2
        return 1
    fi
}

# Sets journal_args for run NAME with journal JOURNAL: "none", or "fsync"
# (a fresh journal in the results folder, fdatasync every batch).
set_journal_args() {
    journal_args=(--journal none)
    if [ "$2" = fsync ]; then
        rm -rf "$OUT/journal-$1"
        journal_args=(--journal "$OUT/journal-$1" --fsync batch)
    fi
}

fmt_rate() { awk -v x="${1:-0}" 'BEGIN { if (x >= 1e6) printf "%.2fM", x / 1e6; else if (x >= 1e3) printf "%.0fK", x / 1e3; else printf "%.0f", x }'; }
fmt_us() { awk -v x="${1:-0}" 'BEGIN { printf "%.0f", x }'; }
fmt_mib() { awk -v x="${1:-0}" 'BEGIN { printf "%.0f", x / 1024 }'; }
# The first number named KEY after the first "ANCHOR" in a JSON file.
json_num_in() { tr -d '\n' <"$1" | sed "s/^.*\"$2\"//" | grep -o "\"$3\"[[:space:]]*:[[:space:]]*[-0-9.eE+]*" | head -n 1 | sed 's/.*:[[:space:]]*//'; }

TABLE="$OUT/table.md"
{
    echo "# turbo-dex end-to-end benchmark ($MODE)"
    echo
    echo "Machine: $MACHINE. $PLACEMENT. Loopback."
    echo "Command: \`scripts/bench.sh --$MODE\`. Runs of $DURATION after $WARMUP warmup; realistic mix (9% GTC, 3% IOC, 6% cancel, 82% replace), 2 connections."
    echo "Waiting: turbo-dex ${SERVER_WAIT[*]:-with its default --poll adaptive}; dex-trader ${TRADER_WAIT[*]:-parking when idle}."
    echo "Load average (1, 5, 15 min) before the runs: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown): other work on the machine skews every figure."
    echo
} >"$TABLE"

failures=0

step "bare loopback TCP round trip (tcp-rtt, $RTT_COUNT trips)"
rtt_args=(--count "$RTT_COUNT" --json "$OUT/tcp-rtt.json")
if [ "$N" -ge 2 ]; then
    rtt_args+=(--server-cpu "${CPUS[0]}" --client-cpu "${CPUS[$((N / 2))]}")
fi
if [ -x "$RTT_BIN" ] && "$RTT_BIN" "${rtt_args[@]}" >"$OUT/tcp-rtt.out" 2>&1; then
    rtt_p50=$(json_num "$OUT/tcp-rtt.json" p50)
    rtt_p99=$(json_num "$OUT/tcp-rtt.json" p99)
    "$RTT_BIN" --count "$RTT_COUNT" --json "$OUT/tcp-rtt-unpinned.json" >"$OUT/tcp-rtt-unpinned.out" 2>&1 || true
    rtt_same=$(json_num "$OUT/tcp-rtt-unpinned.json" p50)
    spin_line=""
    spin_args=(--count "$RTT_COUNT" --json "$OUT/tcp-rtt-spin.json" --spin)
    if [ "$N" -ge 2 ]; then
        spin_args+=(--server-cpu "${CPUS[0]}" --client-cpu "${CPUS[$((N / 2))]}")
    fi
    if [ "${#TRADER_WAIT[@]}" -gt 0 ] && "$RTT_BIN" "${spin_args[@]}" >"$OUT/tcp-rtt-spin.out" 2>&1; then
        spin_line=" Spinning (non-blocking sockets polled in a busy loop, the ends on the two CPUs above, as the runs below): p50 $(json_num "$OUT/tcp-rtt-spin.json" p50) us, p99 $(json_num "$OUT/tcp-rtt-spin.json" p99) us."
    fi
    {
        echo "Bare loopback TCP round trip (32 bytes, blocking): p50 ${rtt_p50} us, p99 ${rtt_p99} us with the ends on the two CPUs above; p50 ${rtt_same:-?} us unpinned.${spin_line}"
        echo
    } >>"$TABLE"
else
    note "tcp-rtt unavailable; skipping the round-trip line"
fi

if [ "$MODE" != tiny ] && [ -x "$HICCUP_BIN" ]; then
    step "hiccups: how often the machine stops a spinning thread (hiccup, 10 s)"
    if "$HICCUP_BIN" --cpus "$(join_cpus "${CPUS[@]}")" --seconds 10 --json "$OUT/hiccup.json" >"$OUT/hiccup.out" 2>&1; then
        {
            echo "Hiccups: a thread spinning on each CPU, nothing else running, did not run for these gaps in 10 s (\`hiccup\`; no latency below can beat them):"
            echo
            sed 's/^/    /' "$OUT/hiccup.out"
            echo
        } >>"$TABLE"
    else
        note "hiccup failed; see $OUT/hiccup.out"
    fi
fi

step "throughput (closed loop)"
{
    echo "## Throughput, closed loop"
    echo
    echo "| engine | journal | batch | orders/s | reports/s | trades/s | rejects | p50 us | p99 us | p99.99 us | server peak RSS MiB |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
} >>"$TABLE"
# Rows: engine, journal (none or fsync), batch. The journal rows show what
# durability costs at the largest batch.
TPUT_ROWS=""
for engine in match null; do
    for batch in $BATCHES; do
        TPUT_ROWS="$TPUT_ROWS $engine:none:$batch"
    done
done
TPUT_ROWS="$TPUT_ROWS match:fsync:${BATCHES##* }"
for row in $TPUT_ROWS; do
    IFS=: read -r engine journal batch <<<"$row"
    name="tput-$engine-$journal-b$batch"
    note "$name"
    set_journal_args "$name" "$journal"
    if run_one "$name" --engine "$engine" "${journal_args[@]}" -- --batch "$batch" --connections 2 --mix realistic; then
        j="$OUT/$name.json"
        dur=$(json_num "$j" duration_secs)
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$engine" "$journal" "$batch" \
            "$(fmt_rate "$(json_num "$j" orders_per_sec)")" \
            "$(fmt_rate "$(awk -v r="$(json_num "$j" reports_received)" -v d="$dur" 'BEGIN { print (d > 0 ? r / d : 0) }')")" \
            "$(fmt_rate "$(awk -v r="$(json_num "$j" trades)" -v d="$dur" 'BEGIN { print (d > 0 ? r / d : 0) }')")" \
            "$(json_num "$j" rejects)" "$(fmt_us "$(json_num "$j" p50)")" "$(fmt_us "$(json_num "$j" p99)")" \
            "$(fmt_us "$(json_num "$j" p9999)")" "$(fmt_mib "$(cat "$OUT/$name.rss_kib")")" >>"$TABLE"
    else
        failures=$((failures + 1))
        printf '| %s | %s | %s | failed | | | | | | | |\n' "$engine" "$journal" "$batch" >>"$TABLE"
    fi
    rm -rf "$OUT/journal-$name"
done

step "latency (open loop)"
{
    echo
    echo "## Latency, open loop (wire to wire, from each order's scheduled send time)"
    echo
    echo "| engine | journal | offered/s | batch | achieved orders/s | trades/s | p50 us | p90 us | p99 us | p99.9 us | p99.99 us | max us | server peak RSS MiB |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
} >>"$TABLE"
for spec in $RATES; do
  rate=${spec%%:*}
  batch=${spec#*:}
  for journal in none fsync; do
    name="lat-match-$journal-r$rate"
    note "$name (batch $batch)"
    set_journal_args "$name" "$journal"
    # Two connections (two accounts), so that crossing orders trade.
    if run_one "$name" --engine match "${journal_args[@]}" -- --rate "$rate" --batch "$batch" --connections 2 --mix realistic; then
        j="$OUT/$name.json"
        dur=$(json_num "$j" duration_secs)
        printf '| match | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$journal" "$(fmt_rate "$rate")" "$batch" \
            "$(fmt_rate "$(json_num "$j" orders_per_sec)")" \
            "$(fmt_rate "$(awk -v r="$(json_num "$j" trades)" -v d="$dur" 'BEGIN { print (d > 0 ? r / d : 0) }')")" \
            "$(fmt_us "$(json_num "$j" p50)")" \
            "$(fmt_us "$(json_num "$j" p90)")" "$(fmt_us "$(json_num "$j" p99)")" "$(fmt_us "$(json_num "$j" p999)")" \
            "$(fmt_us "$(json_num "$j" p9999)")" "$(fmt_us "$(json_num "$j" max)")" \
            "$(fmt_mib "$(cat "$OUT/$name.rss_kib")")" >>"$TABLE"
    else
        failures=$((failures + 1))
        printf '| match | %s | %s | %s | failed | | | | | | | | |\n' "$journal" "$(fmt_rate "$rate")" "$batch" >>"$TABLE"
    fi
    rm -rf "$OUT/journal-$name"
  done
done

step "market data (depth subscribers on every symbol)"
{
    echo
    echo "## Market data: depth subscribers to every symbol beside two trading sessions"
    echo
    echo "| run | subscribers | offered/s | batch | orders/s | trades/s | md messages/s | gaps | checksum mismatches | cut-offs | ack p50 us | feed p50 us | feed p99 us |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
} >>"$TABLE"
# name:subscribers:rate (0 = closed loop):batch. The first two are the
# matching cost of depth subscribers at full load; the third the feed
# latency next to the acknowledgement latency; the last the fan-out.
MD_ROWS="md-none:0:0:2000 md-depth:$MD_SUBSCRIBERS:0:2000 md-latency:1:$MD_RATE:1 md-fanout:$MD_FANOUT:$MD_RATE:100"
md_tput_none="" md_tput_subs=""
for row in $MD_ROWS; do
    IFS=: read -r name subs rate batch <<<"$row"
    note "$name ($subs subscribers)"
    md_args=(--batch "$batch" --connections 2 --mix realistic)
    [ "$rate" -gt 0 ] && md_args+=(--rate "$rate")
    # Subscribers read on their own (unpinned) threads, one per CPU at most.
    [ "$subs" -gt 0 ] && md_args+=(--subscribe all --depth --subscribers "$subs" --subscriber-threads "$(( N < 4 ? N : 4 ))")
    server_args=(--engine match --journal none)
    # Every subscriber is a connection from 127.0.0.1: past turbo-dex's
    # default of 256 connections per address the fan-out would be refused.
    [ "$subs" -gt 0 ] && server_args+=(--max-connections-per-address "$((subs + 64))")
    if run_one "$name" "${server_args[@]}" -- "${md_args[@]}"; then
        j="$OUT/$name.json"
        dur=$(json_num "$j" duration_secs)
        tput=$(json_num "$j" orders_per_sec)
        [ "$name" = md-none ] && md_tput_none=$tput
        [ "$name" = md-depth ] && md_tput_subs=$tput
        if [ "$subs" -gt 0 ]; then
            md_rate=$(json_num_in "$j" market_data messages_per_sec)
            gaps=$(json_num_in "$j" market_data gaps)
            bad=$(json_num_in "$j" market_data checksum_mismatches)
            cuts=$(json_num_in "$j" market_data cut_offs)
            feed50=$(fmt_us "$(json_num_in "$j" latency_us p50)")
            feed99=$(fmt_us "$(json_num_in "$j" latency_us p99)")
        else
            md_rate=0 gaps="" bad="" cuts="" feed50="" feed99=""
        fi
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$subs" \
            "$([ "$rate" -gt 0 ] && fmt_rate "$rate" || echo "closed loop")" "$batch" "$(fmt_rate "$tput")" \
            "$(fmt_rate "$(awk -v r="$(json_num "$j" trades)" -v d="$dur" 'BEGIN { print (d > 0 ? r / d : 0) }')")" \
            "$(fmt_rate "$md_rate")" "$gaps" "$bad" "$cuts" "$(fmt_us "$(json_num "$j" p50)")" "$feed50" "$feed99" >>"$TABLE"
    else
        failures=$((failures + 1))
        printf '| %s | %s | | %s | failed | | | | | | | | |\n' "$name" "$subs" "$batch" >>"$TABLE"
    fi
done
if [ -n "$md_tput_none" ] && [ -n "$md_tput_subs" ]; then
    {
        echo
        awk -v a="$md_tput_subs" -v b="$md_tput_none" -v n="$MD_SUBSCRIBERS" 'BEGIN { if (b > 0) printf "Matching with %d depth subscribers: %.0f%% of the throughput with none (target: at least 80%%).\n", n, 100 * a / b }'
    } >>"$TABLE"
fi

if [ "$MEMORY_SECS" -gt 0 ]; then
    step "memory over a ${MEMORY_SECS}-second run at full load (batch 2000, match)"
    start_server "$OUT/memory.server.out" "$OUT/memory.server.err" "${SERVER_PIN[@]}" --quiet --engine match \
        --journal none "${SERVER_WAIT[@]}" "${SERVER_EXTRA[@]}"
    [ -z "$REPORT" ] || TRADER_REPORT=(--interval-log "$OUT/memory.hlog")
    "$DEX_TRADER" --server "$SERVER_ADDR" "${TRADER_PIN[@]}" "${TRADER_WAIT[@]}" --duration "${MEMORY_SECS}s" --warmup 2s --quiet \
        --batch 2000 --connections 2 --json "$OUT/memory.json" "${TRADER_REPORT[@]}" >"$OUT/memory.trader.out" 2>&1 &
    trader=$!
    : >"$OUT/memory.rss"
    : >"$OUT/memory.rss-time"
    started=$(date +%s.%N)
    while kill -0 "$trader" 2>/dev/null; do
        rss=$(server_rss_kib)
        echo "$rss" >>"$OUT/memory.rss"
        echo "$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') $rss" >>"$OUT/memory.rss-time"
        sleep "$RSS_EVERY"
    done
    wait "$trader" || failures=$((failures + 1))
    stop_server
    {
        echo
        echo "## Server resident memory over a ${MEMORY_SECS}-second run at full load (batch 2000, match), every $RSS_EVERY s"
        echo
        echo "RSS MiB: $(awk '{ printf "%s%.0f", (NR > 1 ? " " : ""), $1 / 1024 }' "$OUT/memory.rss")"
        echo
        awk 'NR == 2 { first = $1 } { last = $1 } END { if (NR >= 2) printf "After warm-up: %.0f MiB -> %.0f MiB at the end (%+.1f%%).\n", first / 1024, last / 1024, (last - first) * 100 / first }' "$OUT/memory.rss"
    } >>"$TABLE"
fi

echo
cat "$TABLE"
if [ -n "$REPORT" ]; then
    step "report page"
    "$DEX_REPORT" bench "$OUT" --out "$REPORT/index.html" >&2 || failures=$((failures + 1))
fi
if [ "$failures" -gt 0 ]; then
    printf '%s: %s run(s) failed; see %s\n' "$PROG" "$failures" "$OUT" >&2
    exit 1
fi
