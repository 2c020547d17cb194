#!/usr/bin/env bash
# The large crash test: drives turbo-dex (with a journal, --fsync batch),
# kills it with SIGKILL at random moments, restarts it on the same journal,
# and checks with order status queries that every acknowledged order is
# there in a consistent state and that resent orders never execute twice.
# Prints the number of trials and of acknowledged orders checked.
#
#   scripts/crash-test.sh                  # 50 trials
#   scripts/crash-test.sh --trials 200 --steps 500 --seed 7
#
# The same test runs small in the test suite (engine/tests/crash.rs).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

TRIALS=50
STEPS=400
SEED=$(date +%s)

usage() {
    cat <<EOF2
Usage: scripts/crash-test.sh [--trials N] [--steps N] [--seed N]

  --trials N   kill -9 / restart cycles (default 50)
  --steps N    at most this many trading steps between crashes (default 400)
  --seed N     seed of the order flow and the crash moments (default: the time)
EOF2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --trials) TRIALS=${2:?--trials needs a number}; shift 2 ;;
        --steps) STEPS=${2:?--steps needs a number}; shift 2 ;;
        --seed) SEED=${2:?--seed needs a number}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; echo "crash-test: error: unknown option $1" >&2; exit 2 ;;
    esac
done

echo "crash test: $TRIALS trials, up to $STEPS steps each, seed $SEED (release build)" >&2
log=$(mktemp "${TMPDIR:-/tmp}/turbo-dex-crash-test.XXXXXX")
trap 'rm -f "$log"' EXIT
status=0
CRASH_TRIALS=$TRIALS CRASH_STEPS=$STEPS CRASH_SEED=$SEED \
    cargo test --release --locked -p engine --test crash -- --nocapture >"$log" 2>&1 || status=$?
# The summary, any recovery that found a torn tail or a damaged snapshot,
# and on failure the assertion that failed.
grep -E '^(crash test|test result)|torn record|skipped damaged|panicked|assert' "$log" || true
if [ "$status" -ne 0 ]; then
    echo "crash-test: FAILED (seed $SEED); full log:" >&2
    tail -n 60 "$log" >&2
fi
exit "$status"
