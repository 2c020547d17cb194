#!/usr/bin/env bash
# The failover test, large: three turbo-dex nodes, each with its own
# server of a three-server NATS cluster (a "machine"), --replicas 3 and
# 1 s leases, each machine in a network namespace of its own joined by a
# bridge (10.77.0.0/24; needs root and ip from iproute2, else loopback,
# said in the output). Each trial trades through the shards' owners and,
# at a random moment, kills a whole machine (kill -9 of its node and of
# its nats-server) or cuts its network (its node and its nats-server run
# on, alone); it trades on until a standby serves its shards, checks with
# OrderQuery on the new owners that every acknowledged order is there with
# consistent quantities and that resent orders are refused, and brings
# the machine back (restarted, or joined again) as a standby, which must
# reload its copies from the streams and agree with the owners' snapshot
# digests. Beside the test's own client, dex-trader --cluster --verify
# trades through each trial on symbols and accounts of its own (every
# machine a seed), and must end with no violation.
# The last line:
#
#   trials T, acknowledged N, lost L, executed twice D, failover p50 X ms max Y ms
#
#   scripts/failover-test.sh                 # 20 trials
#   scripts/failover-test.sh --trials 50 --seed 7
#   scripts/failover-test.sh --keep-nats     # kill only the node, not its nats-server
#   scripts/failover-test.sh --loopback      # no namespaces, no network cuts
#   scripts/failover-test.sh --nats-server /opt/nats215/bin/nats-server
#
# The same test runs with two trials (a kill, a cut) in the test suite
# (engine/tests/cluster.rs, failover_loses_no_acknowledged_order).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

TRIALS=20
STEPS=300
SEED=$(date +%s)
KEEP_NATS=0
LOOPBACK=0
NATS_BIN=""

usage() {
    cat <<EOF2
Usage: scripts/failover-test.sh [--trials N] [--steps N] [--seed N] [--keep-nats] [--loopback] [--nats-server PATH]

  --trials N          machines killed, one per trial (default 20)
  --steps N           orders per trial; the kill comes between the first
                      and the last quarter of them (default 300)
  --seed N            seed of the order flow, the victims and the moments
                      (default: the time)
  --keep-nats         kill only the turbo-dex node of the machine; its
                      nats-server lives on (the engine's own failover time;
                      no network cuts)
  --loopback          every machine on 127.0.0.1, no network namespaces
                      (so no network cuts: each trial kills a machine)
  --nats-server PATH  the nats-server binary (default: the one on PATH,
                      or /usr/sbin/nats-server from the Debian package)
EOF2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --trials) TRIALS=${2:?--trials needs a number}; shift 2 ;;
        --steps) STEPS=${2:?--steps needs a number}; shift 2 ;;
        --seed) SEED=${2:?--seed needs a number}; shift 2 ;;
        --keep-nats) KEEP_NATS=1; shift ;;
        --loopback) LOOPBACK=1; shift ;;
        --nats-server) NATS_BIN=${2:?--nats-server needs a path}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; echo "failover-test: error: unknown option $1" >&2; exit 2 ;;
    esac
done
for n in "$TRIALS" "$STEPS" "$SEED"; do
    case "$n" in
        '' | *[!0-9]*) echo "failover-test: error: $n is not a number" >&2; exit 2 ;;
    esac
done
if [ -n "$NATS_BIN" ]; then
    if [ ! -x "$NATS_BIN" ] || [ "$(basename "$NATS_BIN")" != nats-server ]; then
        echo "failover-test: error: $NATS_BIN is not an executable named nats-server" >&2
        exit 2
    fi
    PATH="$(cd "$(dirname "$NATS_BIN")" && pwd):$PATH"
    export PATH
fi
if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
    echo "failover-test: error: no nats-server (apt-get install nats-server, or --nats-server PATH)" >&2
    exit 2
fi

echo "failover test: $TRIALS trials, $STEPS orders each, seed $SEED, $(PATH="$PATH:/usr/sbin" nats-server --version) (release build)" >&2
log=$(mktemp "${TMPDIR:-/tmp}/turbo-dex-failover-test.XXXXXX")
keep_log=0
trap '[ "$keep_log" = 1 ] || rm -f "$log"' EXIT
# The test starts dex-trader from the folder of its own binary.
cargo build --release --locked -p loadgen --bin dex-trader >"$log" 2>&1 || {
    echo "failover-test: error: cannot build dex-trader:" >&2
    tail -n 40 "$log" >&2
    exit 1
}
status=0
FAILOVER_TRIALS=$TRIALS FAILOVER_STEPS=$STEPS FAILOVER_SEED=$SEED FAILOVER_KEEP_NATS=$KEEP_NATS FAILOVER_LOOPBACK=$LOOPBACK \
    cargo test --release --locked -p engine --test cluster failover_loses_no_acknowledged_order \
    -- --nocapture >"$log" 2>&1 || status=$?
# Each kill and failover, and on failure what failed.
grep -E '^(failover test|trial [0-9]+:|orders refused|dex-trader --cluster|test result)|panicked|lost:|executed twice:|accepted again|reached account|SKIP' "$log" || true
if [ "$status" -ne 0 ]; then
    keep_log=1
    echo "failover-test: FAILED (seed $SEED); the log's end (the whole log, every machine's lines: $log):" >&2
    tail -n 80 "$log" >&2
    exit "$status"
fi
# The summary is the last line.
grep -E '^trials [0-9]+, acknowledged' "$log" | tail -n 1
