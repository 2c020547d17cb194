#!/usr/bin/env bash
# tune-host.sh: prepare a Linux host for low-latency matching on the engine
# cores, check how far it is from that, and undo what it changed.
#
#   scripts/tune-host.sh --cores 0-39 [--iface eth0] [--mtu 9000]
#   scripts/tune-host.sh --cores 0-39 --iface eth0 --mtu 9000 --dry-run
#   scripts/tune-host.sh --cores 0-39 --iface eth0 --mtu 9000 --check
#   scripts/tune-host.sh --undo
#
# The values come from Red Hat's tuned profiles
# (https://github.com/redhat-performance/tuned, profiles/*/tuned.conf):
#   latency-performance  [cpu] governor=performance
#   network-latency      include=latency-performance; [vm] transparent_hugepages=never;
#                        [sysctl] net.core.busy_read=50, net.core.busy_poll=50
#   network-throughput   [sysctl] net.ipv4.tcp_rmem="4096 131072 16777216",
#                        net.ipv4.tcp_wmem="4096 16384 16777216"
#   throughput-performance  net.core.somaxconn=>2048 ("at least 2048")
# What we add or choose differently, and why:
#   - THP `madvise`, not tuned's `never`: both keep khugepaged compaction and
#     fault-time huge-page allocation (the latency spikes) away from every
#     process that did not ask; `madvise` still lets the engine madvise() its
#     pre-allocated book memory onto huge pages for fewer TLB misses.
#     An existing `never` is left alone.
#   - net.core.rmem_max/wmem_max 16 MiB: the same ceiling as the tcp_rmem/
#     tcp_wmem maxima above, so an explicit SO_RCVBUF/SO_SNDBUF can reach
#     what autotuning can (tuned leaves them alone).
#   - net.core.somaxconn 4096: the kernel default since 5.4 and our listen
#     backlog. Every number setting here only ever raises a value.
#   - NIC interrupts moved to the non-engine cores and irqbalance stopped (it
#     would move them back), memlock unlimited (io_uring rings and registered
#     buffers count against it before Linux 5.12), the interface MTU.
# tuning/src/host.rs holds the same values (tuning::host::recommended) and a
# test keeps the two equal.
#
# Each item that cannot be changed (not root, a missing interface, a kernel
# or VM without the setting) gets its own message; the rest still applies.
set -uo pipefail

RECOMMENDED_GOVERNOR=performance
RECOMMENDED_THP=madvise
RECOMMENDED_BUSY_READ_US=50
RECOMMENDED_BUSY_POLL_US=50
RECOMMENDED_SOMAXCONN=4096
RECOMMENDED_RMEM_MAX_BYTES=16777216
RECOMMENDED_WMEM_MAX_BYTES=16777216
RECOMMENDED_TCP_RMEM="4096 131072 16777216"
RECOMMENDED_TCP_WMEM="4096 16384 16777216"
# `ulimit -l` (KiB) below which --check warns: tuning::host::DEFAULT_MEMLOCK_MIN_BYTES.
MEMLOCK_MIN_KIB=65536
MEMLOCK_DROPIN_NAME=90-turbo-dex-memlock.conf
# CPU ids are below this (the largest CONFIG_NR_CPUS), as tuning::CPU_ID_LIMIT.
CPU_ID_LIMIT=8192
ALL_GROUPS="cpu,irq,thp,net,memlock,mtu"

program=${0##*/}

usage() {
    cat <<EOF
usage: $program --cores LIST [--iface IF] [--mtu BYTES] [MODE] [OPTIONS]

Applies low-latency host settings for the engine cores LIST (taskset
syntax: 0-39, 0,2,4-7, 1-15:2). Needs root to change anything.

modes (default: apply)
  --dry-run         print every change it would make (current -> new), change nothing
  --check           print current vs recommended; exit 1 when something is not tuned
  --undo            restore what earlier applies changed, from the state file
                    (needs no other option)

what it sets (groups for --only)
  cpu       CPU frequency governor 'performance' on the engine cores
  irq       stop irqbalance; move --iface's interrupts to the other cores
  thp       transparent huge pages 'madvise' (when 'always')
  net       net.core.busy_read/busy_poll 50 us, somaxconn 4096, rmem_max/
            wmem_max and tcp_rmem/tcp_wmem maxima 16 MiB (only ever raised)
  memlock   a limits.d drop-in with memlock unlimited (for new logins)
  mtu       --iface's MTU to --mtu

options
  --iface IF        the NIC clients come in on (irq and mtu need it)
  --mtu BYTES       the MTU to set on --iface (e.g. 9000 for jumbo frames)
  --only GROUPS     comma-separated subset of: $ALL_GROUPS
  --state FILE      where apply saves the original values for --undo
                    (default /var/lib/turbo-dex/tune-host.state)
  --sysfs ROOT      read and write sysfs under ROOT (default /sys; for tests)
  --procfs ROOT     read and write procfs under ROOT (default /proc; for tests)
  --limits-dir DIR  where the memlock drop-in goes (default /etc/security/limits.d)
  -h, --help        this text

Re-running apply is harmless: values already tuned are left alone and the
originals saved by the first apply are kept. The environment variables
TUNE_HOST_SYSFS, TUNE_HOST_PROCFS, TUNE_HOST_STATE and TUNE_HOST_LIMITS_DIR
set the same defaults as the options.
EOF
}

die() {
    printf '%s: error: %s\n' "$program" "$*" >&2
    exit 2
}

mode=apply
cores_arg=""
iface=""
mtu=""
only=$ALL_GROUPS
state_file=${TUNE_HOST_STATE:-/var/lib/turbo-dex/tune-host.state}
sysfs=${TUNE_HOST_SYSFS:-/sys}
procfs=${TUNE_HOST_PROCFS:-/proc}
limits_dir=${TUNE_HOST_LIMITS_DIR:-/etc/security/limits.d}

need_value() {
    if [ "$#" -lt 2 ] || [ -z "$2" ] || [[ "$2" == --* ]]; then
        die "$1 needs a value; see --help"
    fi
}

set_mode() {
    [ "$mode" = apply ] || [ "$mode" = "$1" ] || die "--$mode and --$1 do not go together"
    mode=$1
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        --cores) need_value "$@"; cores_arg=$2; shift 2 ;;
        --cores=*) cores_arg=${1#*=}; shift ;;
        --iface) need_value "$@"; iface=$2; shift 2 ;;
        --iface=*) iface=${1#*=}; shift ;;
        --mtu) need_value "$@"; mtu=$2; shift 2 ;;
        --mtu=*) mtu=${1#*=}; shift ;;
        --only) need_value "$@"; only=$2; shift 2 ;;
        --only=*) only=${1#*=}; shift ;;
        --state) need_value "$@"; state_file=$2; shift 2 ;;
        --state=*) state_file=${1#*=}; shift ;;
        --sysfs) need_value "$@"; sysfs=$2; shift 2 ;;
        --sysfs=*) sysfs=${1#*=}; shift ;;
        --procfs) need_value "$@"; procfs=$2; shift 2 ;;
        --procfs=*) procfs=${1#*=}; shift ;;
        --limits-dir) need_value "$@"; limits_dir=$2; shift 2 ;;
        --limits-dir=*) limits_dir=${1#*=}; shift ;;
        --dry-run) set_mode dry-run; shift ;;
        --check) set_mode check; shift ;;
        --undo) set_mode undo; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1'; see --help" ;;
    esac
done

is_root() { [ "$(id -u)" = 0 ]; }

# ---------------------------------------------------------------- CPU lists

# Prints the CPUs of a taskset-style list, one per line, ascending and
# unique. On a bad item prints a message naming it and returns 1.
expand_cpulist() {
    local list=$1 item first last stride cpu
    local -a items
    if [[ -z "${list//[[:space:]]/}" ]]; then
        echo "the CPU list is empty; write CPUs like 0-3,8,10-15:2" >&2
        return 1
    fi
    IFS=, read -r -a items <<<"$list"
    # `read` drops a trailing empty field, so check for empty items here.
    if [[ "$list" =~ ,[[:space:]]*$ || "$list" =~ ^[[:space:]]*, || "$list" =~ ,[[:space:]]*, ]]; then
        echo "the CPU list has an empty item (two commas in a row, or a comma at an end)" >&2
        return 1
    fi
    {
        for item in "${items[@]}"; do
            item=${item#"${item%%[![:space:]]*}"}
            item=${item%"${item##*[![:space:]]}"}
            if [[ "$item" =~ ^([0-9]+)([[:space:]]*-[[:space:]]*([0-9]+)([[:space:]]*:[[:space:]]*([0-9]+))?)?$ ]]; then
                # Five digits keep the arithmetic from overflowing; the
                # limit check below rejects the rest.
                if [ "${#BASH_REMATCH[1]}" -gt 5 ] || [ "${#BASH_REMATCH[3]}" -gt 5 ]; then
                    echo "bad CPU list item \"$item\": CPU ids are below $CPU_ID_LIMIT" >&2
                    return 1
                fi
                first=$((10#${BASH_REMATCH[1]}))
                last=$first
                [ -n "${BASH_REMATCH[3]}" ] && last=$((10#${BASH_REMATCH[3]}))
                stride=1
                if [ "${#BASH_REMATCH[5]}" -gt 5 ]; then
                    stride=$CPU_ID_LIMIT
                elif [ -n "${BASH_REMATCH[5]}" ]; then
                    stride=$((10#${BASH_REMATCH[5]}))
                fi
            else
                echo "bad CPU list item \"$item\"; write CPUs like 0-3,8,10-15:2" >&2
                return 1
            fi
            if [ "$last" -ge "$CPU_ID_LIMIT" ]; then
                echo "bad CPU list item \"$item\": CPU ids are below $CPU_ID_LIMIT" >&2
                return 1
            fi
            if [ "$last" -lt "$first" ]; then
                echo "bad CPU list item \"$item\": the range ends below its start; write it as $last-$first" >&2
                return 1
            fi
            if [ "$stride" -eq 0 ]; then
                echo "bad CPU list item \"$item\": the stride after ':' must be at least 1" >&2
                return 1
            fi
            for ((cpu = first; cpu <= last; cpu += stride)); do
                echo "$cpu"
            done
        done
    } | sort -n -u
}

# Prints the compact form (0-3,8) of CPUs given one per line on stdin.
compact_cpulist() {
    local cpu start="" prev="" out=""
    while read -r cpu; do
        [ -n "$cpu" ] || continue
        if [ -n "$prev" ] && [ "$cpu" -eq $((prev + 1)) ]; then
            prev=$cpu
            continue
        fi
        if [ -n "$start" ]; then
            if [ "$start" = "$prev" ]; then out+="$start,"; else out+="$start-$prev,"; fi
        fi
        start=$cpu
        prev=$cpu
    done
    if [ -n "$start" ]; then
        if [ "$start" = "$prev" ]; then out+="$start"; else out+="$start-$prev"; fi
    fi
    printf '%s\n' "${out%,}"
}

# ------------------------------------------------------------------ output

warnings=0
failures=0

# One line of --check output: status, item, current, recommended.
row() {
    printf '%-8s %-30s %-32s %s\n' "$1" "$2" "$3" "$4"
    if [ "$1" = WARN ]; then warnings=$((warnings + 1)); fi
}

# Says an item is skipped, and why, in every mode.
skip() {
    if [ "$mode" = check ]; then
        row unknown "$1" "$2" "${3:-}"
    else
        printf 'skip     %-30s %s\n' "$1" "$2"
    fi
}

fail() {
    printf 'FAILED   %-30s %s\n' "$1" "$2" >&2
    failures=$((failures + 1))
}

# Reads a one-line file, tabs and runs of spaces squeezed to one space.
read_value() {
    local value
    [ -r "$1" ] || return 1
    value=$(tr -s '\t ' '  ' <"$1" 2>/dev/null) || return 1
    value=${value%$'\n'}
    printf '%s\n' "${value% }"
}

root_hint() {
    if is_root; then printf '%s' "$1"; else printf '%s (not root: run with sudo)' "$1"; fi
}

# ------------------------------------------------------------------- state

state_has() {
    [ -f "$state_file" ] && awk -F'\t' -v k="$1" -v p="$2" '$1 == k && $2 == p { found = 1 } END { exit !found }' "$state_file"
}

# Saves an original value unless an earlier apply already saved one: a
# re-run must not replace the true original with an already-tuned value.
state_record() {
    if ! state_has "$1" "$2"; then
        printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$state_file"
    fi
}

# The network namespace this runs in: sysctl and MTU paths in the state
# file mean different things in another one.
current_netns() {
    readlink /proc/self/ns/net 2>/dev/null || echo unknown
}

# Dies when the state file was written in another network namespace.
state_check_netns() {
    local saved here
    saved=$(awk -F'\t' '$1 == "netns" { print $3; exit }' "$state_file" 2>/dev/null)
    here=$(current_netns)
    if [ -n "$saved" ] && [ "$saved" != "$here" ]; then
        die "$state_file was written in network namespace $saved but this is $here; run this there (ip netns exec NAME $program ...) or pass another --state"
    fi
}

state_open() {
    local dir
    dir=$(dirname -- "$state_file")
    if ! mkdir -p -- "$dir" 2>/dev/null || ! touch -- "$state_file" 2>/dev/null; then
        die "cannot write the state file $state_file, so --undo could not restore what this changes; $(root_hint "pass --state FILE")"
    fi
    if [ -s "$state_file" ]; then
        state_check_netns
    else
        printf '# turbo-dex tune-host.sh: values before the first apply, restored by --undo.\n' >"$state_file"
        printf 'netns\t-\t%s\n' "$(current_netns)" >>"$state_file"
    fi
}

# ------------------------------------------------------------ tune a value

# tune NAME PATH CURRENT NEW [RECOMMENDED]: the one place a file is changed.
# check prints a row; dry-run prints the change; apply saves CURRENT to the
# state file and writes NEW. CURRENT = NEW means already tuned.
tune() {
    local name=$1 path=$2 current=$3 new=$4 recommended=${5:-$4} error
    case "$mode" in
        check)
            if [ "$current" = "$new" ]; then row ok "$name" "$current" "$recommended"
            else row WARN "$name" "$current" "$recommended"; fi
            ;;
        dry-run)
            if [ "$current" = "$new" ]; then printf 'ok       %-30s %s\n' "$name" "$current"
            else printf 'change   %-30s %s -> %s\n' "$name" "$current" "$new"; fi
            ;;
        apply)
            if [ "$current" = "$new" ]; then
                printf 'ok       %-30s %s\n' "$name" "$current"
                return 0
            fi
            # Saved first: a crash between the two leaves an undo that
            # rewrites an unchanged value, never a change without its original.
            state_record file "$path" "$current"
            if error=$( { printf '%s\n' "$new" >"$path"; } 2>&1 ); then
                printf 'changed  %-30s %s -> %s\n' "$name" "$current" "$new"
            else
                fail "$name" "cannot write $path: ${error##*: }$(is_root || printf ' (not root: run with sudo)')"
                return 1
            fi
            ;;
    esac
}

# ------------------------------------------------------------------ groups

online_cpus=""
cores=""
other_cpus=""

resolve_cores() {
    local online_text missing error
    [ -n "$cores_arg" ] || die "--cores LIST is required (the engine cores, e.g. --cores 0-39)"
    error=$(expand_cpulist "$cores_arg" 2>&1 >/dev/null)
    [ -z "$error" ] || die "--cores: $error"
    cores=$(expand_cpulist "$cores_arg")
    online_text=$(read_value "$sysfs/devices/system/cpu/online") ||
        die "cannot read $sysfs/devices/system/cpu/online"
    online_cpus=$(expand_cpulist "$online_text") || die "cannot parse the online CPUs '$online_text'"
    missing=$(comm -13 <(sort <<<"$online_cpus") <(sort <<<"$cores") | sort -n | compact_cpulist)
    if [ -n "$missing" ]; then
        if [[ "$missing" =~ [-,] ]]; then
            die "cores $missing do not exist; this machine has cores $online_text"
        fi
        die "core $missing does not exist; this machine has cores $online_text"
    fi
    other_cpus=$(comm -23 <(sort <<<"$online_cpus") <(sort <<<"$cores") | sort -n | compact_cpulist)
}

group_cpu() {
    local cpu dir current available seen=0
    for cpu in $cores; do
        dir=$sysfs/devices/system/cpu/cpu$cpu/cpufreq
        if ! current=$(read_value "$dir/scaling_governor"); then
            continue
        fi
        seen=1
        available=$(read_value "$dir/scaling_available_governors" || echo "$RECOMMENDED_GOVERNOR")
        if [[ " $available " != *" $RECOMMENDED_GOVERNOR "* ]]; then
            skip "cpu$cpu governor" "driver offers only: $available" "$RECOMMENDED_GOVERNOR"
            continue
        fi
        tune "cpu$cpu governor" "$dir/scaling_governor" "$current" "$RECOMMENDED_GOVERNOR"
    done
    if [ "$seen" = 0 ]; then
        skip "governor" "no cpufreq on cores $(compact_cpulist <<<"$cores") (a VM, or scaling off in firmware): nothing to set" "$RECOMMENDED_GOVERNOR"
    fi
}

irqbalance_pids() {
    local comm_file pid name
    for comm_file in "$procfs"/[0-9]*/comm; do
        [ -r "$comm_file" ] || continue
        name=$(cat -- "$comm_file" 2>/dev/null) || continue
        if [ "$name" = irqbalance ]; then
            pid=${comm_file%/comm}
            echo "${pid##*/}"
        fi
    done
}

stop_irqbalance() {
    local pids=$1
    if [ "$procfs" != /proc ]; then
        skip irqbalance "running in the fake procfs $procfs: no service to stop"
        return
    fi
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet irqbalance 2>/dev/null; then
        if systemctl stop irqbalance 2>/dev/null; then
            state_record service irqbalance systemd
            printf 'changed  %-30s running -> stopped (systemctl stop irqbalance)\n' irqbalance
            return
        fi
    elif command -v service >/dev/null 2>&1 && service irqbalance status >/dev/null 2>&1; then
        if service irqbalance stop >/dev/null 2>&1; then
            state_record service irqbalance sysv
            printf 'changed  %-30s running -> stopped (service irqbalance stop)\n' irqbalance
            return
        fi
    else
        # shellcheck disable=SC2086 # one pid per word
        if kill $pids 2>/dev/null; then
            state_record service irqbalance process
            printf 'changed  %-30s running -> stopped (kill %s)\n' irqbalance "$pids"
            return
        fi
    fi
    fail irqbalance "$(root_hint "could not stop it")"
}

# IRQ numbers of --iface: its device's MSI vectors (a virtio NIC's are on
# the parent PCI device) and /proc/interrupts actions named after it.
iface_irqs() {
    local dir irq
    {
        for dir in "$sysfs/class/net/$iface/device/msi_irqs" "$sysfs/class/net/$iface/device/../msi_irqs"; do
            if [ -d "$dir" ]; then
                for irq in "$dir"/*; do
                    [ -e "$irq" ] && echo "${irq##*/}"
                done
                break
            fi
        done
        if [ -r "$procfs/interrupts" ]; then
            awk -v ifc="$iface" '$1 ~ /^[0-9]+:$/ {
                    name = $NF
                    if (name == ifc || index(name, ifc "-") == 1) { sub(":", "", $1); print $1 }
                }' "$procfs/interrupts"
        fi
    } | sort -n -u
}

group_irq() {
    local pids irq path current
    pids=$(irqbalance_pids | tr '\n' ' ')
    pids=${pids% }
    if [ -z "$pids" ]; then
        case "$mode" in
            check) row ok irqbalance "not running" "not running" ;;
            *) printf 'ok       %-30s %s\n' irqbalance "not running" ;;
        esac
    else
        case "$mode" in
            check) row WARN irqbalance "running (pid $pids)" "not running" ;;
            dry-run) printf 'change   %-30s %s -> %s\n' irqbalance "running (pid $pids)" stopped ;;
            apply) stop_irqbalance "$pids" ;;
        esac
    fi

    if [ -z "$iface" ]; then
        skip "nic irqs" "no --iface given: NIC interrupts left where they are"
        return
    fi
    if [ ! -e "$sysfs/class/net/$iface" ]; then
        skip "nic irqs" "interface $iface does not exist"
        return
    fi
    if [ -z "$other_cpus" ]; then
        skip "nic irqs" "every online core is an engine core: leave one out of --cores for interrupts"
        return
    fi
    local irqs
    irqs=$(iface_irqs)
    if [ -z "$irqs" ]; then
        skip "nic irqs" "$iface has no interrupts of its own (a virtual interface?): nothing to move"
        return
    fi
    for irq in $irqs; do
        path=$procfs/irq/$irq/smp_affinity_list
        if ! current=$(read_value "$path"); then
            skip "irq $irq affinity" "no $path"
            continue
        fi
        # Already tuned when no engine core can take it.
        if [ -z "$(comm -12 <(expand_cpulist "$current" | sort) <(sort <<<"$cores"))" ]; then
            tune "irq $irq affinity" "$path" "$current" "$current" "off cores $(compact_cpulist <<<"$cores")"
        else
            tune "irq $irq affinity" "$path" "$current" "$other_cpus" "$other_cpus" ||
                printf '         %-30s (a driver with kernel-managed affinity refuses this)\n' ""
        fi
    done
}

group_thp() {
    local path=$sysfs/kernel/mm/transparent_hugepage/enabled text current
    if ! text=$(read_value "$path"); then
        skip thp "no $path (kernel without transparent huge pages)" "$RECOMMENDED_THP"
        return
    fi
    current=${text#*[}
    current=${current%%]*}
    if [ "$current" = never ] || [ "$current" = madvise ]; then
        tune thp "$path" "$current" "$current" "$RECOMMENDED_THP (or never)"
    else
        tune thp "$path" "$current" "$RECOMMENDED_THP" "$RECOMMENDED_THP (or never)"
    fi
}

# Whether a sysctl that exists cannot be written even by root: a network
# namespace shows some of the host's values (rmem_max, wmem_max) read-only.
read_only_here() {
    [ "$mode" != check ] && is_root && [ ! -w "$1" ]
}

# sysctl_at_least NAME MINIMUM: raise a number sysctl to MINIMUM, never lower it.
sysctl_at_least() {
    local name=$1 minimum=$2 path current
    path=$procfs/sys/${name//.//}
    if ! current=$(read_value "$path"); then
        skip "$name" "not in this kernel or network namespace" ">= $minimum"
        return
    fi
    if read_only_here "$path"; then
        skip "$name" "read-only here ($current): a network namespace may not change it"
        return
    fi
    if [ "$current" -ge "$minimum" ] 2>/dev/null; then
        tune "$name" "$path" "$current" "$current" ">= $minimum"
    else
        tune "$name" "$path" "$current" "$minimum" ">= $minimum"
    fi
}

# sysctl_triple NAME "MIN DEFAULT MAX": raise each of the three numbers to at least the recommended one.
sysctl_triple() {
    local name=$1 path current new i
    local -a have want
    read -r -a want <<<"$2"
    path=$procfs/sys/${name//.//}
    if ! current=$(read_value "$path"); then
        skip "$name" "not in this kernel or network namespace" "$2"
        return
    fi
    if read_only_here "$path"; then
        skip "$name" "read-only here ($current): a network namespace may not change it"
        return
    fi
    read -r -a have <<<"$current"
    if [ "${#have[@]}" -ne 3 ]; then
        skip "$name" "unexpected value '$current'" "$2"
        return
    fi
    new=""
    for i in 0 1 2; do
        if [ "${have[$i]}" -ge "${want[$i]}" ]; then new+="${have[$i]} "; else new+="${want[$i]} "; fi
    done
    tune "$name" "$path" "$current" "${new% }" "max >= ${want[2]} ($2)"
}

group_net() {
    sysctl_at_least net.core.busy_read "$RECOMMENDED_BUSY_READ_US"
    sysctl_at_least net.core.busy_poll "$RECOMMENDED_BUSY_POLL_US"
    sysctl_at_least net.core.somaxconn "$RECOMMENDED_SOMAXCONN"
    sysctl_at_least net.core.rmem_max "$RECOMMENDED_RMEM_MAX_BYTES"
    sysctl_at_least net.core.wmem_max "$RECOMMENDED_WMEM_MAX_BYTES"
    sysctl_triple net.ipv4.tcp_rmem "$RECOMMENDED_TCP_RMEM"
    sysctl_triple net.ipv4.tcp_wmem "$RECOMMENDED_TCP_WMEM"
}

memlock_dropin_text() {
    cat <<'EOF'
# Written by turbo-dex scripts/tune-host.sh (removed by --undo). io_uring
# rings and registered buffers (Linux before 5.12) and mlockall count
# against RLIMIT_MEMLOCK. Applies to new login sessions.
*       -       memlock unlimited
root    -       memlock unlimited
EOF
}

group_memlock() {
    local dropin=$limits_dir/$MEMLOCK_DROPIN_NAME limit state_now
    limit=$(ulimit -l)
    if [ -f "$dropin" ]; then state_now="drop-in present"; else state_now="no drop-in"; fi
    case "$mode" in
        check)
            if [ "$limit" = unlimited ] || [ "$limit" -ge "$MEMLOCK_MIN_KIB" ]; then
                row ok memlock "ulimit -l $limit, $state_now" "unlimited"
            else
                row WARN memlock "ulimit -l $limit, $state_now" "unlimited"
            fi
            return
            ;;
        dry-run)
            if [ -f "$dropin" ]; then printf 'ok       %-30s %s\n' memlock "$dropin present"
            else printf 'change   %-30s %s -> %s\n' memlock "no drop-in" "$dropin (memlock unlimited)"; fi
            return
            ;;
    esac
    if [ -f "$dropin" ]; then
        if [ "$(cat -- "$dropin")" = "$(memlock_dropin_text)" ]; then
            printf 'ok       %-30s %s\n' memlock "$dropin present"
        else
            skip memlock "$dropin exists with other content: left alone"
        fi
    elif [ ! -d "$limits_dir" ]; then
        skip memlock "no $limits_dir (no pam_limits here): set LimitMEMLOCK=infinity in the service or docker --ulimit memlock=-1"
    elif memlock_dropin_text 2>/dev/null >"$dropin"; then
        state_record created "$dropin" -
        printf 'changed  %-30s %s -> %s\n' memlock "no drop-in" "$dropin (memlock unlimited)"
    else
        fail memlock "$(root_hint "cannot write $dropin")"
        return
    fi
    if [ "$limit" != unlimited ]; then
        printf '         %-30s this shell still has ulimit -l %s: log in again, or run "ulimit -l unlimited" as root;\n' "" "$limit"
        printf '         %-30s systemd services need LimitMEMLOCK=infinity, docker --ulimit memlock=-1\n' ""
    fi
}

group_mtu() {
    local path current max
    if [ -z "$iface" ] || [ -z "$mtu" ]; then
        skip mtu "needs --iface and --mtu"
        return
    fi
    path=$sysfs/class/net/$iface/mtu
    if ! current=$(read_value "$path"); then
        local names="" entry
        for entry in "$sysfs"/class/net/*; do
            [ -e "$entry" ] && names+="${entry##*/} "
        done
        skip "mtu $iface" "interface $iface does not exist; this machine has: ${names:-none}" "$mtu"
        return
    fi
    if ! tune "mtu $iface" "$path" "$current" "$mtu"; then
        max=$(ip -d link show dev "$iface" 2>/dev/null | grep -o 'maxmtu [0-9]*')
        printf '         %-30s the driver allows %s; the switch and the peer must carry it too\n' "" "${max:-less}"
    fi
}

# -------------------------------------------------------------------- undo

start_service() {
    case "$2" in
        systemd) systemctl start "$1" 2>/dev/null ;;
        sysv) service "$1" start >/dev/null 2>&1 ;;
        process) command -v "$1" >/dev/null 2>&1 && "$1" 2>/dev/null ;;
        *) return 1 ;;
    esac
}

undo() {
    local kind key value current restored=0 left
    if [ ! -f "$state_file" ]; then
        echo "nothing to undo: $state_file does not exist (no apply ran, or it was undone)"
        return 0
    fi
    state_check_netns
    left=$(mktemp)
    # Newest first, so a value changed twice ends at its oldest saved state.
    while IFS=$'\t' read -r kind key value; do
        case "$kind" in
            file)
                current=$(read_value "$key" || echo "?")
                if { printf '%s\n' "$value" >"$key"; } 2>/dev/null; then
                    printf 'restored %-30s %s -> %s\n' "$key" "$current" "$value"
                    restored=$((restored + 1))
                else
                    fail "$key" "$(root_hint "cannot write back '$value'")"
                    printf '%s\t%s\t%s\n' "$kind" "$key" "$value" >>"$left"
                fi
                ;;
            created)
                if rm -f -- "$key"; then
                    printf 'removed  %s\n' "$key"
                    restored=$((restored + 1))
                else
                    fail "$key" "$(root_hint "cannot remove it")"
                    printf '%s\t%s\t%s\n' "$kind" "$key" "$value" >>"$left"
                fi
                ;;
            service)
                if start_service "$key" "$value"; then
                    printf 'restored %-30s stopped -> running\n' "$key"
                    restored=$((restored + 1))
                else
                    fail "$key" "$(root_hint "could not start it again")"
                    printf '%s\t%s\t%s\n' "$kind" "$key" "$value" >>"$left"
                fi
                ;;
            netns) printf '%s\t%s\t%s\n' "$kind" "$key" "$value" >>"$left.netns" ;;
            '' | '#'*) ;;
            *) echo "ignoring unknown state line kind '$kind'" >&2 ;;
        esac
    done < <(tac -- "$state_file")
    if [ -s "$left" ]; then
        {
            printf '# turbo-dex tune-host.sh: values an --undo could not restore yet.\n'
            cat -- "$left.netns" 2>/dev/null
            tac -- "$left"
        } >"$state_file"
        echo "restored $restored; the rest stays in $state_file for another --undo"
    else
        rm -f -- "$state_file"
        echo "restored $restored setting(s); removed $state_file"
    fi
    rm -f -- "$left" "$left.netns"
}

# -------------------------------------------------------------------- main

if [ "$mode" = undo ]; then
    undo
    [ "$failures" = 0 ] || exit 1
    exit 0
fi

resolve_cores
IFS=, read -r -a groups <<<"$only"
for group in "${groups[@]}"; do
    case ",$ALL_GROUPS," in
        *",$group,"*) ;;
        *) die "--only: unknown group '$group'; groups are $ALL_GROUPS" ;;
    esac
done
if [ -n "$mtu" ] && ! { [[ "$mtu" =~ ^[0-9]{1,5}$ ]] && [ "$mtu" -ge 68 ] && [ "$mtu" -le 65536 ]; }; then
    die "--mtu $mtu: give a number of bytes from 68 to 65536 (9000 for jumbo frames)"
fi
if [ -n "$iface" ] && [[ ! "$iface" =~ ^[A-Za-z0-9_.:@-]{1,15}$ ]]; then
    die "--iface '$iface' is not an interface name"
fi

echo "engine cores $(compact_cpulist <<<"$cores"); other cores: ${other_cpus:-none}"
case "$mode" in
    check) row status item current recommended ;;
    dry-run) echo "dry run: nothing is changed" ;;
    apply)
        is_root || echo "note: not root; most changes will fail (run with sudo)" >&2
        state_open
        ;;
esac

for group in cpu irq thp net memlock mtu; do
    [[ ",$only," == *",$group,"* ]] || continue
    case "$group" in
        cpu) group_cpu ;;
        irq) group_irq ;;
        thp) group_thp ;;
        net) group_net ;;
        memlock) group_memlock ;;
        mtu) group_mtu ;;
    esac
done

case "$mode" in
    check)
        if [ "$warnings" -gt 0 ]; then
            echo "host is NOT tuned: $warnings warning(s); apply with: $0 --cores $cores_arg${iface:+ --iface $iface}${mtu:+ --mtu $mtu}"
            exit 1
        fi
        echo "host is tuned for these cores"
        ;;
    apply)
        echo "originals saved in $state_file; restore with: $0 --undo${state_file:+ --state $state_file}"
        if [ "$failures" -gt 0 ]; then
            echo "$failures item(s) could not be changed (see FAILED above)" >&2
            exit 1
        fi
        ;;
esac
exit 0
