#!/usr/bin/env bash
# Deterministic cost of one book operation: instructions, first-level data
# cache misses and last-level misses per operation, for the real book
# (one command at a time, and batched as the server does) and the naive
# reference book, on each measured flow. Runs benches' `book-ops` under
# valgrind's cachegrind (--cache-sim=yes) with 1 and 2 replays of the
# same stream; the difference, divided by the operations, is the cost of
# one replay alone (generating the stream and building the books cancel
# out). Counts do not depend on other load on the machine; the simulated
# caches are cachegrind's defaults for this CPU, so misses are comparable
# between runs on the same machine.
#
#   scripts/book-cachegrind.sh                  # 300,000 operations per flow
#   scripts/book-cachegrind.sh --ops 100000 --mixes heavy --books "real naive"
#   scripts/book-cachegrind.sh --tiny --bin target/debug/book-ops   # smoke test
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROG="book-cachegrind"
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"

OPS=300000
WARM_UP=100000
DEPTH=""
MIXES="heavy exchange-core exchange-core-64"
BOOKS="real batched naive"
BIN=""
OUT=""
LL_BYTES=""
usage() {
    cat <<'USAGE'
Usage: scripts/book-cachegrind.sh [--ops N] [--warm-up N] [--depth N]
           [--mixes "heavy exchange-core exchange-core-64"]
           [--books "real batched naive"] [--bin PATH] [--out DIR] [--tiny]

Prints a markdown table of instructions, D1 misses and last-level misses
per book operation, from valgrind --tool=cachegrind --cache-sim=yes.
  --ops N       measured operations per replay (default 300000)
  --warm-up N   operations applied to every book before (default 100000)
  --depth N     resting orders per symbol (default the workload's 1000)
  --mixes LIST  flows to measure (default all three)
  --books LIST  real (Shard::process), batched (Shard::process_batch in
                the server's batch size), naive (reference book)
  --bin PATH    a prebuilt book-ops (default: build it, release profile)
  --out DIR     keep cachegrind's logs and the table there (default: temp)
  --ll BYTES    simulate a last-level cache of BYTES (16-way, 64-byte lines)
                instead of the host's L3: --ll 2097152 counts misses past a
                2 MiB L2, which a large simulated L3 hides
  --tiny        2000 operations, 500 warm-up, depth 50: a quick check
USAGE
}
while [ $# -gt 0 ]; do
    case "$1" in
        --ops) OPS=${2:?--ops needs a number}; shift 2 ;;
        --warm-up) WARM_UP=${2:?--warm-up needs a number}; shift 2 ;;
        --depth) DEPTH=${2:?--depth needs a number}; shift 2 ;;
        --mixes) MIXES=${2:?--mixes needs a list}; shift 2 ;;
        --books) BOOKS=${2:?--books needs a list}; shift 2 ;;
        --bin) BIN=${2:?--bin needs a path}; shift 2 ;;
        --out) OUT=${2:?--out needs a directory}; shift 2 ;;
        --ll) LL_BYTES=${2:?--ll needs a size in bytes}; shift 2 ;;
        --tiny) OPS=2000; WARM_UP=500; DEPTH=50; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
done

if ! command -v valgrind >/dev/null 2>&1; then
    die "valgrind is not installed, so nothing can be measured: apt-get install valgrind (scripts/test.sh installs it)"
fi

if [ -z "$BIN" ]; then
    command -v cargo >/dev/null 2>&1 || die "cargo is not installed; install Rust from https://rustup.rs"
    step "building book-ops (release profile)"
    (cd "$ROOT" && cargo build --release --locked -p benches --bin book-ops) >&2
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/book-ops"
fi
[ -x "$BIN" ] || die "$BIN is not an executable book-ops"

if [ -n "$OUT" ]; then
    mkdir -p "$OUT"
    WORK=$OUT
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/turbo-dex-book-cachegrind.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT
fi

# Addresses decide cache sets: without address randomization two runs see
# the same layout, so the 2-minus-1 difference holds only the replay.
NO_ASLR=()
if command -v setarch >/dev/null 2>&1 && setarch "$(uname -m)" -R true 2>/dev/null; then
    NO_ASLR=(setarch "$(uname -m)" -R)
fi

ARGS=(--ops "$OPS" --warm-up "$WARM_UP")
[ -n "$DEPTH" ] && ARGS+=(--depth "$DEPTH")

# One cachegrind run; its summary goes to $WORK/<mix>.<book>.<replays>.log.
measure() {
    local mix=$1 book=$2 replays=$3
    local log="$WORK/$mix.$book.$replays.log"
    if ! "${NO_ASLR[@]}" valgrind --tool=cachegrind --cache-sim=yes ${LL_BYTES:+"--LL=$LL_BYTES,16,64"} \
        --cachegrind-out-file=/dev/null "$BIN" "$mix" "$replays" "$book" "${ARGS[@]}" \
        >"$log" 2>&1; then
        cat "$log" >&2
        die "book-ops $mix $replays $book failed under cachegrind (log above)"
    fi
}

# A count from a cachegrind summary line ("==1== D1  misses:  1,234 (...)").
count() {
    local log=$1 what=$2
    sed -n "s/^==[0-9]*== ${what}: *\([0-9,]*\).*/\1/p" "$log" | tr -d , | head -n 1
}

# (count with 2 replays - count with 1 replay) / operations.
per_op() {
    local mix=$1 book=$2 what=$3 digits=$4
    local one two
    one=$(count "$WORK/$mix.$book.1.log" "$what")
    two=$(count "$WORK/$mix.$book.2.log" "$what")
    if [ -z "$one" ] || [ -z "$two" ]; then
        die "no '$what' in the cachegrind logs of $mix $book (see $WORK)"
    fi
    awk -v a="$one" -v b="$two" -v n="$OPS" -v d="$digits" 'BEGIN { printf "%.*f", d, (b - a) / n }'
}

label() {
    case "$1" in
        heavy) echo "heavy matching (50% GTC, 60% of them crossing, 30% IOC, 5% cancel, 15% replace)" ;;
        exchange-core) echo "exchange-core-like (9% GTC, 3% IOC, 6% cancel, 82% replace), 1 book" ;;
        exchange-core-64) echo "exchange-core-like over 64 books" ;;
        *) echo "$1" ;;
    esac
}

book_name() {
    case "$1" in
        real) echo "turbo-dex, one at a time" ;;
        batched) echo "turbo-dex, batched" ;;
        naive) echo "naive" ;;
        *) echo "$1" ;;
    esac
}

for mix in $MIXES; do
    for book in $BOOKS; do
        step "cachegrind: $mix, $book book, 1 and 2 replays of $OPS operations"
        # The two runs are independent and their counts do not depend on
        # timing: run them side by side.
        measure "$mix" "$book" 1 &
        first=$!
        measure "$mix" "$book" 2 || { wait "$first" || true; exit 2; }
        wait "$first" || exit 2
    done
done

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n 1)
command_line="scripts/book-cachegrind.sh --ops $OPS --warm-up $WARM_UP${DEPTH:+ --depth $DEPTH} --mixes \"$MIXES\" --books \"$BOOKS\"${LL_BYTES:+ --ll $LL_BYTES}"
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l)
TABLE="$WORK/table.md"
{
    echo "## Book operations under cachegrind"
    echo
    echo "Command: \`$command_line\`"
    echo "Machine: ${cpu:-unknown CPU}, $(nproc) CPUs; $(valgrind --version) --tool=cachegrind --cache-sim=yes ($([ -n "$LL_BYTES" ] && echo "last level simulated as $LL_BYTES bytes, 16-way" || echo "its default caches for this CPU")); main at $rev$([ "$dirty" -gt 0 ] && echo " with $dirty changed files")."
    echo "Per operation: (a run with 2 replays - a run with 1 replay) / $OPS operations; $WARM_UP warm-up operations on each book first."
    echo
    echo "| mix | book | instructions/op | D1 misses/op | last-level misses/op |"
    echo "|---|---|---:|---:|---:|"
    for mix in $MIXES; do
        first=1
        for book in $BOOKS; do
            name=""
            [ "$first" = 1 ] && name=$(label "$mix")
            first=0
            echo "| $name | $(book_name "$book") | $(per_op "$mix" "$book" "I   refs" 0) | $(per_op "$mix" "$book" "D1  misses" 2) | $(per_op "$mix" "$book" "LL misses" 3) |"
        done
    done
} >"$TABLE"
echo
cat "$TABLE"
