#!/usr/bin/env bash
# A turbo-dex cluster that finds itself: N network namespaces on one Linux
# bridge (so that mDNS multicast reaches every node), the very same
# `turbo-dex --cluster auto` command in each (its own journal directory,
# listening on its namespace's address), then, once every node is alive and
# every shard owned (`turbo-dex cluster status`), `dex-trader --cluster
# auto` from one more namespace on the bridge: it finds the nodes by mDNS
# too (NATS_URL unset) and routes each order to its shard's owner. Prints
# the time the cluster took to form, the cluster map, where dex-trader
# found the nodes, and orders/s and trades/s per node and in total.
#
#   sudo scripts/auto-cluster.sh --nodes 3
#   sudo scripts/auto-cluster.sh --nodes 2 --duration 2s --json out.json --bin-dir target/debug
#
# Needs root, ip (iproute2) and nats-server. Everything it creates
# (processes, namespaces, the bridge, the temporary directory) goes on exit,
# also on Ctrl-C and on error.
set -euo pipefail
PROG=auto-cluster
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"

NODES=""
DURATION=5s
SHARDS=""
JSON=""
PROFILE=release
FORM_TIMEOUT=60
STAGGER=0
BIN_DIR=${BIN_DIR:-}

usage() {
    cat <<EOF
Usage: sudo scripts/auto-cluster.sh --nodes N [--duration 5s] [--shards S] [--json FILE] [--bin-dir DIR | --debug] [--form-timeout SECS] [--stagger SECS]

Starts N turbo-dex nodes with --cluster auto, each in its own network
namespace on one bridge, waits until they have formed one cluster (every
node alive, every shard owned), runs dex-trader --cluster auto (--mix
match) from another namespace on the bridge, which finds the nodes by mDNS
as they did, and prints the formation time, the cluster map and orders/s
and trades/s per node and in total.

  --nodes N          how many nodes (1 to 50)
  --duration D       how long dex-trader trades (default 5s)
  --shards S         the cluster's shard count (default: 2 per node)
  --json FILE        also write {"nodes":[{"id","address","shards",
                     "orders_per_sec","trades_per_sec"}...],
                     "orders_per_sec","trades_per_sec","formed_ms"} to FILE
  --bin-dir DIR      use prebuilt turbo-dex and dex-trader from DIR
  --debug            build (and use) the debug binaries instead of release
  --form-timeout S   give up when the cluster has not formed within S
                     seconds of starting the nodes (default 60)
  --stagger S        start the nodes S whole seconds apart instead of all
                     at once (default 0): with 4 or more, every later node
                     finds the first one's nats-server by mDNS, and no
                     second server starts
  -h, --help         this text

Needs root (network namespaces), ip from iproute2 and nats-server (the
nodes start their own: JetStream, data under their journal directories).
Exit status: 0 done, 1 the cluster did not form or the run failed, 2 usage
or setup error.
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --nodes) NODES=${2:?--nodes needs a count}; shift 2 ;;
        --duration) DURATION=${2:?--duration needs a time, like 5s}; shift 2 ;;
        --shards) SHARDS=${2:?--shards needs a count}; shift 2 ;;
        --json) JSON=${2:?--json needs a file}; shift 2 ;;
        --bin-dir) BIN_DIR=${2:?--bin-dir needs a directory}; shift 2 ;;
        --debug) PROFILE=debug; shift ;;
        --form-timeout) FORM_TIMEOUT=${2:?--form-timeout needs seconds}; shift 2 ;;
        --stagger) STAGGER=${2:?--stagger needs seconds}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
done

[ -n "$NODES" ] || { usage >&2; die "--nodes is required"; }
case "$NODES" in
    *[!0-9]* | 0*) die "--nodes $NODES: give a whole number from 1 to 50" ;;
esac
[ "$NODES" -le 50 ] || die "--nodes $NODES: at most 50"
[ -n "$SHARDS" ] || SHARDS=$((NODES * 2))
case "$STAGGER" in
    '' | *[!0-9]*) die "--stagger $STAGGER: give whole seconds" ;;
esac
case "$SHARDS" in
    *[!0-9]* | 0*) die "--shards $SHARDS: give a whole number above 0" ;;
esac
case "$FORM_TIMEOUT" in
    *[!0-9]* | 0*) die "--form-timeout $FORM_TIMEOUT: give whole seconds above 0" ;;
esac
case "$DURATION" in
    *[0-9]s | *[0-9]ms) ;;
    *) die "--duration $DURATION: give a time like 5s or 1500ms" ;;
esac

[ "$(id -u)" -eq 0 ] || die "needs root to create network namespaces; run it as root (sudo scripts/auto-cluster.sh)"
command -v ip >/dev/null 2>&1 || die "needs ip from iproute2 to create network namespaces; install it (apt-get install iproute2)"
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ] && [ ! -x /usr/local/sbin/nats-server ]; then
    die "needs nats-server (the nodes start their own); install it (apt-get install nats-server)"
fi

[ -z "$JSON" ] || JSON=$(json_out_path "$JSON")
[ -z "$BIN_DIR" ] || BIN_DIR=$(bin_dir_path "$BIN_DIR")
cd "$ROOT"

if [ -z "$BIN_DIR" ] && [ "$PROFILE" = debug ]; then
    command -v cargo >/dev/null 2>&1 || die "cargo is not installed; install Rust from https://rustup.rs"
    step "building turbo-dex and dex-trader (debug)"
    cargo build --locked -p engine -p loadgen --bins >&2
    BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
fi
build_binaries

# Names carry this shell's pid, so that parallel runs never collide; the
# addresses repeat between runs, but each run has its own bridge, in its
# own namespace.
NS_PREFIX="tdx-ac-$$"
NS_SWITCH="$NS_PREFIX-sw"
NS_TRADER="$NS_PREFIX-t"
NS_NODES=()
for i in $(seq 1 "$NODES"); do
    NS_NODES+=("$NS_PREFIX-$i")
done
SUBNET=10.78.0
TRADER_ADDR="$SUBNET.200"
PORT=9000

TMP=""
NODE_PIDS=()
TRADER_PID=""
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
    local pid ns i
    trap - EXIT INT TERM
    if [ -n "$TRADER_PID" ]; then
        kill -KILL "$TRADER_PID" 2>/dev/null || true
        wait "$TRADER_PID" 2>/dev/null || true
    fi
    # The nodes stop gracefully (each takes its nats-server with it).
    for pid in "${NODE_PIDS[@]}"; do
        kill -INT "$pid" 2>/dev/null || true
    done
    for i in $(seq 1 100); do
        alive=0
        for pid in "${NODE_PIDS[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then alive=1; fi
        done
        [ "$alive" -eq 1 ] || break
        sleep 0.1
        : "$i"
    done
    for pid in "${NODE_PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    # Whatever still runs in our namespaces (a nats-server whose node was
    # killed) goes too, then the namespaces: the switch's takes the bridge
    # and every veth with it.
    for ns in "${NS_NODES[@]}" "$NS_TRADER" "$NS_SWITCH"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null || true
        done
        ip netns del "$ns" 2>/dev/null || true
    done
    if [ -n "$TMP" ]; then
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'note "interrupted"; exit 130' INT TERM

# A namespace of the same name (an earlier run under our pid that was
# killed before its trap ran) goes first.
for ns in "${NS_NODES[@]}" "$NS_TRADER" "$NS_SWITCH"; do
    if ip netns list 2>/dev/null | awk '{print $1}' | grep -qx -- "$ns"; then
        note "deleting $ns, left behind by an earlier run"
        ip netns del "$ns" 2>/dev/null || true
    fi
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/auto-cluster.XXXXXX")

# attach NS PORT ADDR: a veth from the bridge to NS, as NS's eth0 at ADDR.
attach() {
    ip netns add "$1" || die "cannot create network namespace $1"
    ip -n "$1" link set lo up
    ip -n "$NS_SWITCH" link add "$2" type veth peer name eth0 netns "$1" ||
        die "cannot create a veth pair (is the veth kernel module available?)"
    ip -n "$NS_SWITCH" link set "$2" master br0
    ip -n "$NS_SWITCH" link set "$2" up
    ip -n "$1" addr add "$3/24" dev eth0
    ip -n "$1" link set eth0 multicast on up
}

step "creating $NODES node namespaces and one for dex-trader on a bridge ($NS_PREFIX-*)"
ip netns add "$NS_SWITCH" || die "cannot create network namespace $NS_SWITCH (is this a container without CAP_SYS_ADMIN?)"
# No multicast snooping: mDNS goes to every port.
ip -n "$NS_SWITCH" link add br0 type bridge mcast_snooping 0 || die "cannot create a bridge"
ip -n "$NS_SWITCH" link set br0 up
for i in $(seq 1 "$NODES"); do
    attach "${NS_NODES[$((i - 1))]}" "v$i" "$SUBNET.$i"
done
attach "$NS_TRADER" vt "$TRADER_ADDR"

# The very same command in every namespace; only the journal directory
# and the namespace's own address differ. One engine core each, unpinned:
# the nodes share this machine's CPUs.
step "starting $NODES nodes: turbo-dex --cluster auto --shards $SHARDS --cores 0 --no-pin"
START_MS=$(date +%s%3N)
for i in $(seq 1 "$NODES"); do
    dir="$TMP/node-$i"
    mkdir -p "$dir"
    if [ "$i" -gt 1 ] && [ "$STAGGER" -gt 0 ]; then
        sleep "$STAGGER"
    fi
    ip netns exec "${NS_NODES[$((i - 1))]}" env -u NATS_URL "$TURBO_DEX" --cluster auto \
        --journal "$dir/journal" --listen "$SUBNET.$i:$PORT" --advertise "$SUBNET.$i:$PORT" \
        --shards "$SHARDS" --cores 0 --no-pin --quiet \
        >"$dir/out.log" 2>"$dir/err.log" &
    NODE_PIDS+=($!)
done

# Prints a node's log, for an error.
show_logs() {
    local i
    for i in $(seq 1 "$NODES"); do
        printf '%s: node %s (%s) log:\n' "$PROG" "$i" "$SUBNET.$i:$PORT" >&2
        tail -n 20 "$TMP/node-$i/err.log" "$TMP/node-$i/out.log" 2>/dev/null | sed 's/^/    /' >&2 || true
    done
}

# status [URLS]: `turbo-dex cluster status`, from dex-trader's namespace
# (finding NATS by mDNS there, or at URLS once known).
status() {
    ip netns exec "$NS_TRADER" env -u NATS_URL "$TURBO_DEX" cluster status --cluster "${1:-auto}" 2>"$TMP/status.err"
}

# A node id as the status writes it: 16 hex digits (mawk has no {16}).
AWK_IS_ID='function is_id(s) { return length(s) == 16 && s ~ /^[0-9a-f]+$/ }'

# formed STATUS_FILE: true when it lists NODES alive nodes and SHARDS
# shards, every one owned by an alive node with a lease left.
formed() {
    awk -v nodes="$NODES" -v shards="$SHARDS" "$AWK_IS_ID"'
        /^cluster at / { if ($0 !~ (": " shards " shards,")) exit 1 }
        is_id($1) && $NF == "alive" { alive[$1] = 1; n++ }
        $1 ~ /^[0-9]+$/ && is_id($2) && $4 == "ms" && NF == 4 && ($2 in alive) && $3 > 0 { owned++ }
        END { exit !(n == nodes && owned == shards) }' "$1"
}

step "waiting for the cluster to form (every node alive, every shard owned; at most ${FORM_TIMEOUT}s)"
URLS=auto
DEADLINE_MS=$((START_MS + FORM_TIMEOUT * 1000))
STATUS="$TMP/status.txt"
while :; do
    now=$(date +%s%3N)
    if status "$URLS" >"$STATUS"; then
        if formed "$STATUS"; then
            break
        fi
        # Ask the server found by mDNS directly from now on: quicker.
        URLS=$(sed -n 's/^cluster at \(.*\): [0-9]* shards,.*/\1/p' "$STATUS")
        [ -n "$URLS" ] || URLS=auto
    else
        URLS=auto
    fi
    for pid in "${NODE_PIDS[@]}"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_logs
            die "a node exited before the cluster formed (its log is above)"
        fi
    done
    if [ "$now" -ge "$DEADLINE_MS" ]; then
        show_logs
        printf '%s: last cluster status:\n' "$PROG" >&2
        sed 's/^/    /' "$STATUS" "$TMP/status.err" >&2
        printf '%s: error: the cluster did not form within %ss: %s nodes alive and %s shards owned were expected (status and node logs above)\n' \
            "$PROG" "$FORM_TIMEOUT" "$NODES" "$SHARDS" >&2
        exit 1
    fi
    sleep 0.2
done
FORMED_MS=$(($(date +%s%3N) - START_MS))
note "formed in $FORMED_MS ms"

step "cluster map"
cat "$STATUS"

# id address shards (comma-separated) per node, from the status.
NODE_TABLE="$TMP/nodes.txt"
awk "$AWK_IS_ID"'
    is_id($1) && $NF == "alive" { ids[++n] = $1; addr[$1] = $2 }
    $1 ~ /^[0-9]+$/ && is_id($2) && $4 == "ms" && NF == 4 { s[$2] = (s[$2] == "" ? $1 : s[$2] "," $1) }
    END { for (i = 1; i <= n; i++) print ids[i], addr[ids[i]], s[ids[i]] }' "$STATUS" >"$NODE_TABLE"

# The trader finds the nodes on its own, as they found each other: mDNS
# from its namespace (NATS_URL unset), then the map from a node it found.
step "dex-trader --cluster auto --mix match --duration $DURATION (from $TRADER_ADDR)"
TRADER_JSON="$TMP/trader.json"
rc=0
ip netns exec "$NS_TRADER" env -u NATS_URL "$DEX_TRADER" --cluster auto --mix match \
    --duration "$DURATION" --json "$TRADER_JSON" >"$TMP/trader.out" 2>"$TMP/trader.err" &
TRADER_PID=$!
wait "$TRADER_PID" || rc=$?
TRADER_PID=""
if [ "$rc" -ne 0 ] || [ ! -s "$TRADER_JSON" ]; then
    sed 's/^/    /' "$TMP/trader.err" "$TMP/trader.out" >&2 || true
    printf '%s: error: dex-trader failed (exit status %s; its output is above)\n' "$PROG" "$rc" >&2
    exit 1
fi
# Where it found them: `dex-trader: cluster: N node(s) from mDNS (...)`.
FOUND=$(sed -n 's/^dex-trader: \(cluster: .* node(s) from .*\)$/\1/p' "$TMP/trader.err" | head -n 1)
note "dex-trader ${FOUND:-found the cluster (it did not say where)}"

# From dex-trader's JSON, one line per node: node_id orders/s trades/s,
# then "total orders/s trades/s". Its top-level figures come before
# "nodes", each node's from "address" to "closed".
FIGURES="$TMP/figures.txt"
grep -o '"[a-z_]*"[[:space:]]*:[[:space:]]*\("[^"]*"\|[-0-9.eE+]*\)' "$TRADER_JSON" |
    sed 's/^"\([a-z_]*\)"[[:space:]]*:[[:space:]]*"\{0,1\}\([^"]*\)"\{0,1\}$/\1 \2/' |
    awk '
        $1 == "nodes" { in_nodes = 1; next }
        !in_nodes && $1 == "orders_per_sec" && ops == "" { ops = $2 }
        !in_nodes && $1 == "trades_per_sec" && tps == "" { tps = $2 }
        in_nodes && $1 == "node_id" { id = $2 }
        in_nodes && $1 == "orders_per_sec" { o[id] = $2 }
        in_nodes && $1 == "trades_per_sec" { t[id] = $2; ids[++n] = id }
        END {
            for (i = 1; i <= n; i++) print ids[i], o[ids[i]] + 0, t[ids[i]] + 0
            print "total", ops + 0, tps + 0
        }' >"$FIGURES"

step "throughput (formed in $FORMED_MS ms; $NODES nodes, $SHARDS shards, dex-trader --mix match for $DURATION)"
awk '
    NR == FNR { o[$1] = $2; t[$1] = $3; next }
    FNR == 1 { printf "%-18s %-22s %-16s %14s %14s\n", "node", "address", "shards", "orders/s", "trades/s" }
    { printf "%-18s %-22s %-16s %14.0f %14.0f\n", $1, $2, $3, o[$1], t[$1] }
    END { printf "%-18s %-22s %-16s %14.0f %14.0f\n", "total", "", "", o["total"], t["total"] }
' "$FIGURES" "$NODE_TABLE"

if [ -n "$JSON" ]; then
    awk -v formed="$FORMED_MS" '
        NR == FNR { o[$1] = $2; t[$1] = $3; next }
        {
            shards = $3
            gsub(/,/, ", ", shards)
            line = sprintf("    {\"id\": \"%s\", \"address\": \"%s\", \"shards\": [%s], \"orders_per_sec\": %.0f, \"trades_per_sec\": %.0f}", $1, $2, shards, o[$1], t[$1])
            nodes = (nodes == "" ? line : nodes ",\n" line)
        }
        END {
            printf "{\n  \"nodes\": [\n%s\n  ],\n", nodes
            printf "  \"orders_per_sec\": %.0f,\n  \"trades_per_sec\": %.0f,\n  \"formed_ms\": %d\n}\n", o["total"], t["total"], formed
        }' "$FIGURES" "$NODE_TABLE" >"$JSON"
    note "wrote $JSON"
fi
