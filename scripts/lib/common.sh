# Shared helpers for the turbo-dex scripts (sourced, not run).
# shellcheck shell=bash

# Prints a step the way every script does.
step() { printf '\n==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
die() {
    printf '%s: error: %s\n' "${PROG:-turbo-dex}" "$*" >&2
    exit 2
}

# The CPUs this shell may run on, as a space-separated list.
allowed_cpus() {
    local list=""
    if command -v taskset >/dev/null 2>&1; then
        list=$(taskset -pc $$ 2>/dev/null | sed -n 's/.*: *//p')
    fi
    if [ -z "$list" ] && [ -r /sys/devices/system/cpu/online ]; then
        list=$(cat /sys/devices/system/cpu/online)
    fi
    [ -n "$list" ] || list="0"
    expand_cpu_list "$list"
}

# Expands a taskset-style list (0-3,8,10-14:2) into space-separated ids.
expand_cpu_list() {
    local IFS=, part out="" a b step
    for part in $1; do
        step=1
        case "$part" in
            *:*) step=${part#*:}; part=${part%%:*} ;;
        esac
        case "$part" in
            *-*) a=${part%-*}; b=${part#*-} ;;
            *) a=$part; b=$part ;;
        esac
        while [ "$a" -le "$b" ]; do
            out="$out $a"
            a=$((a + step))
        done
    done
    echo "${out# }"
}

# Joins ids with commas: "0 1 2" -> "0,1,2".
join_cpus() {
    local IFS=,
    # shellcheck disable=SC2048,SC2086
    set -- $*
    echo "$*"
}

# Builds the release binaries unless BIN_DIR is set; sets TURBO_DEX and DEX_TRADER.
build_binaries() {
    if [ -n "${BIN_DIR:-}" ]; then
        TURBO_DEX="$BIN_DIR/turbo-dex"
        DEX_TRADER="$BIN_DIR/dex-trader"
        note "using prebuilt binaries in $BIN_DIR"
    else
        command -v cargo >/dev/null 2>&1 || die "cargo is not installed; install Rust from https://rustup.rs"
        step "building turbo-dex and dex-trader in release mode (first build takes a few minutes)"
        cargo build --release --locked -p engine -p loadgen >&2
        local dir
        dir="${CARGO_TARGET_DIR:-$ROOT/target}/release"
        TURBO_DEX="$dir/turbo-dex"
        DEX_TRADER="$dir/dex-trader"
    fi
    [ -x "$TURBO_DEX" ] || die "missing $TURBO_DEX"
    [ -x "$DEX_TRADER" ] || die "missing $DEX_TRADER"
}

# Starts turbo-dex with the given arguments on 127.0.0.1:0, waits for its
# ready line and sets SERVER_PID, SERVER_ADDR, SERVER_OUT and SERVER_ERR.
# Optional: SERVER_LISTEN replaces 127.0.0.1:0, and the array SERVER_PREFIX
# is a command that execs turbo-dex (e.g. ip netns exec NS), so that
# SERVER_PID is still turbo-dex's own pid.
start_server() {
    local out_file=$1 err_file=$2
    shift 2
    SERVER_OUT=$out_file
    SERVER_ERR=$err_file
    : >"$SERVER_OUT"
    # The admin endpoint on a free port (its default, 9100, would collide
    # between servers); builds from before --admin existed get none.
    local admin=()
    if "$TURBO_DEX" --help 2>/dev/null | grep -q -- '--admin'; then
        admin=(--admin "${SERVER_ADMIN:-127.0.0.1:0}")
    fi
    "${SERVER_PREFIX[@]}" "$TURBO_DEX" --listen "${SERVER_LISTEN:-127.0.0.1:0}" "${admin[@]}" "$@" >"$SERVER_OUT" 2>"$SERVER_ERR" &
    SERVER_PID=$!
    local i
    for i in $(seq 1 200); do
        SERVER_ADDR=$(sed -n 's/^turbo-dex listening on //p' "$SERVER_OUT")
        SERVER_ADMIN_ADDR=$(sed -n 's/^turbo-dex admin listening on //p' "$SERVER_OUT")
        [ -n "$SERVER_ADDR" ] && return 0
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            cat "$SERVER_ERR" >&2
            SERVER_PID=""
            die "turbo-dex did not start (see the message above)"
        fi
        sleep 0.05
        : "$i"
    done
    die "turbo-dex did not report its address within 10 s"
}

# The server's peak resident memory in KiB (VmHWM), or 0.
server_peak_rss_kib() {
    local kib=0
    if [ -n "${SERVER_PID:-}" ] && [ -r "/proc/$SERVER_PID/status" ]; then
        kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$SERVER_PID/status")
    fi
    echo "${kib:-0}"
}

# The server's current resident memory in KiB (VmRSS), or 0.
server_rss_kib() {
    local kib=0
    if [ -n "${SERVER_PID:-}" ] && [ -r "/proc/$SERVER_PID/status" ]; then
        kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$SERVER_PID/status")
    fi
    echo "${kib:-0}"
}

# Stops a child: stop_child PID SIGNAL TRIES sends SIGNAL, waits up to
# TRIES x 50 ms for it to exit, then kills it, and reaps it.
stop_child() {
    local pid=$1 signal=$2 tries=$3 i
    if kill -0 "$pid" 2>/dev/null; then
        kill "-$signal" "$pid" 2>/dev/null || true
        for i in $(seq 1 "$tries"); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
            : "$i"
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# Stops the server gracefully (SIGINT), waits up to 20 s, then kills it.
stop_server() {
    [ -n "${SERVER_PID:-}" ] || return 0
    stop_child "$SERVER_PID" INT 400
    SERVER_PID=""
}

# --json FILE as an absolute path whose directory exists (else a usage
# error): JSON=$(json_out_path "$JSON").
json_out_path() {
    local path=$1
    case "$path" in
        /*) ;;
        *) path="$PWD/$path" ;;
    esac
    [ -d "$(dirname "$path")" ] || die "--json $path: its directory does not exist"
    printf '%s\n' "$path"
}

# --bin-dir DIR as an absolute path (else a usage error):
# BIN_DIR=$(bin_dir_path "$BIN_DIR").
bin_dir_path() {
    [ -d "$1" ] || die "--bin-dir $1 is not a directory"
    (cd "$1" && pwd)
}

# Reads a number field from a flat JSON report: json_num FILE KEY.
json_num() {
    grep -o "\"$2\"[[:space:]]*:[[:space:]]*[-0-9.eE+]*" "$1" 2>/dev/null | head -n 1 | sed 's/.*:[[:space:]]*//'
}
