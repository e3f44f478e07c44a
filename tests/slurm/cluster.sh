#!/usr/bin/env bash
# A one-node Slurm cluster on localhost for end-to-end tests: munged, slurmctld and slurmd started
# directly (no systemd), everything (key, config, state, spool, logs, PID files, munge socket)
# inside one state directory, daemons stopped by the PIDs recorded at start.
#
#   env=$(tests/slurm/cluster.sh start [STATE_DIR]) && eval "$env"   # export lines on stdout
#   (a bare eval "$(... start)" would hide a failed start: eval of nothing succeeds)
#   tests/slurm/cluster.sh status [STATE_DIR]
#   tests/slurm/cluster.sh stop   [STATE_DIR]
#
# STATE_DIR defaults to a new mktemp -d under /tmp for start, and to $SAESCALE_SLURM_STATE (set by
# the export lines) for stop/status. Needs root and the Debian packages slurm-wlm and munge.
# Tunables (environment): SAESCALE_SLURM_START_TIMEOUT (s, default 30),
# SAESCALE_SLURM_STOP_TIMEOUT (s, default 20), SAESCALE_SLURM_TEMPLATE (slurm.conf template).
# See tests/slurm/README.md.
set -euo pipefail

prog=cluster.sh
# The daemons live in /usr/sbin, which a test harness's PATH may lack.
export PATH="${PATH:+$PATH:}/usr/sbin:/sbin"
src=${BASH_SOURCE[0]}
[[ $src == */* ]] || src=./$src
here=$(cd "${src%/*}" && pwd)
repo=$(cd "$here/../.." && pwd)
template=${SAESCALE_SLURM_TEMPLATE:-$repo/runs/systems/local/slurm.conf.in}
start_timeout=${SAESCALE_SLURM_START_TIMEOUT:-30}
stop_timeout=${SAESCALE_SLURM_STOP_TIMEOUT:-20}

die() { echo "$prog: $*" >&2; exit 1; }
say() { echo "$prog: $*" >&2; }

usage() {
    echo "usage: $prog start|stop|status [STATE_DIR]" >&2
    exit 2
}

need() {  # need CMD: the command must be on PATH
    command -v "$1" >/dev/null 2>&1 || die "$1 not installed: apt-get install slurm-wlm munge"
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------- PIDs recorded in STATE/pids
# One "name pid" line per daemon, in start order. A PID counts as ours only while
# /proc/PID/comm still names the daemon (guards against PID reuse after a crash).
alive() {  # alive NAME PID (just spawned, it may still be setsid(1) about to exec NAME)
    local comm stat
    comm=$(cat "/proc/$2/comm" 2>/dev/null) || return 1
    [[ $comm == "$1" || $comm == setsid ]] || return 1
    stat=$(cat "/proc/$2/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]  # a zombie has exited
}

record() {  # record NAME PID
    echo "$1 $2" >>"$state/pids"
}

# ---------------------------------------------------------------- helpers for start
port_in_use() {  # port_in_use PORT: some socket listens on it (IPv4 or IPv6)
    local hex
    hex=$(printf '%04X' "$1")
    cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
        awk -v p=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }'
}

free_port() {  # free_port FIRST [EXCEPT]: the first free port from FIRST on (not EXCEPT)
    local p=$1
    while (( p < 65000 )); do
        if [[ $p != "${2:-}" ]] && ! port_in_use "$p"; then echo "$p"; return 0; fi
        p=$((p + 1))
    done
    die "no free TCP port found above $1"
}

show_log() {  # show_log FILE: its last lines on stderr
    [[ -s $1 ]] || return 0
    echo "---- last lines of $1" >&2
    tail -n 15 "$1" >&2
}

spawn() {  # spawn NAME LOG CMD...: start CMD detached (own session, no tty, output to LOG)
    local name=$1 log=$2
    shift 2
    # Not a process-group leader (no job control in scripts), so setsid(1) calls setsid()
    # and execs in place: $! is the daemon's own PID.
    SLURM_CONF=$state/etc/slurm.conf setsid "$@" </dev/null >>"$log" 2>&1 &
    local pid=$!
    disown "$pid"  # no job-control chatter if it is killed while we run
    record "$name" "$pid"
    spawned_pid=$pid
}

start_munged() {  # start_munged SOCKET: spawn munged, 0 once a credential round-trips (5 s)
    local sock=$1 pid i
    spawn munged "$state/log/munged.log" \
        munged --foreground --socket="$sock" --key-file="$state/munge/munge.key" \
        --pid-file="$state/run/munged.pid" --seed-file="$state/munge/munged.seed"
    pid=$spawned_pid
    munge_error=""
    for ((i = 0; i < 50; i++)); do
        if ! alive munged "$pid"; then
            munge_error="munged exited"
            break
        fi
        if [[ -S $sock ]] &&
            timeout 2 munge -n -S "$sock" 2>"$state/log/munge-check.err" |
            timeout 2 unmunge -S "$sock" >/dev/null 2>>"$state/log/munge-check.err"; then
            return 0
        fi
        sleep 0.1
    done
    [[ -n $munge_error ]] ||
        munge_error="no answer on $sock within 5 s ($(tail -n 1 "$state/log/munge-check.err" 2>/dev/null))"
    # Give up on this one: kill it and forget its PID.
    if alive munged "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    grep -v "^munged $pid\$" "$state/pids" >"$state/pids.tmp" || true
    mv "$state/pids.tmp" "$state/pids"
    rm -f "$sock" "$sock.lock"
    return 1
}

start_failed() {  # the EXIT trap while starting: stop what was started, keep the state dir
    local rc=$?
    trap - EXIT
    if (( rc != 0 )); then
        show_log "$state/log/munged.log"
        show_log "$state/log/slurmctld.log"
        show_log "$state/log/slurmd.log"
        say "start failed; stopping what was started (state kept in $state)"
        stop_daemons >/dev/null 2>&1 || true
    fi
    exit "$rc"
}

# ---------------------------------------------------------------- start
cmd_start() {
    (( EUID == 0 )) || die "must run as root (slurmd and SlurmUser=root need it)"
    local c
    for c in munged munge unmunge slurmctld slurmd sinfo squeue scontrol; do need "$c"; done
    [[ -r $template ]] || die "slurm.conf template not found: $template"

    if [[ -n ${1:-} ]]; then
        state=$1
        if [[ -e $state ]]; then
            [[ -d $state ]] || die "$state exists and is not a directory"
            [[ -z $(ls -A "$state") ]] || die "$state is not empty: give a new or empty directory (or stop it: $prog stop $state)"
        fi
        mkdir -p "$state"
        state=$(cd "$state" && pwd)
    else
        state=$(mktemp -d /tmp/saescale-slurm.XXXXXX)
    fi
    # The path is pasted into slurm.conf and munged's options: keep it plain.
    [[ $state =~ ^[A-Za-z0-9._/+-]+$ ]] || die "state directory path has unusual characters: $state"
    local t0 d
    t0=$(now)
    # munged refuses a socket unless every directory above it is searchable by all (o+x).
    d=$state
    while d=${d%/*}; [[ -n $d ]]; do
        [[ $(stat -c %A "$d") == *x ]] || [[ $(stat -c %A "$d") == *t ]] ||
            die "munged needs every directory above its socket searchable by all: chmod o+x $d (or use another STATE_DIR)"
    done

    # The socket's directory must be searchable by all too (run/ 0755); munged also refuses a
    # key directory that others can write (munge/ 0700).
    chmod 0755 "$state"
    mkdir -p "$state"/{etc,run,log,ctld,spool/slurmd,munge}
    chmod 0755 "$state/run"
    chmod 0700 "$state/munge"
    : >"$state/pids"
    trap start_failed EXIT

    # ---- munge: a fresh key, a socket in the state dir (slurm.conf: AuthInfo=socket=...)
    local sock=$state/run/munge.socket
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile="$state/munge/munge.key" --force
    else
        dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none
    fi
    chmod 0600 "$state/munge/munge.key"

    # ---- slurm.conf from the template
    local cpus mem_kb mem_mb ctld_port slurmd_port
    cpus=$(nproc)
    mem_kb=$(awk '$1 == "MemTotal:" { print $2 }' /proc/meminfo)
    mem_mb=$((mem_kb / 1024))
    ctld_port=$(free_port "${SAESCALE_SLURM_CTLD_PORT:-6817}")
    slurmd_port=$(free_port "${SAESCALE_SLURM_SLURMD_PORT:-$((ctld_port + 1))}" "$ctld_port")
    sed -e "s|@STATE_DIR@|$state|g" -e "s|@CPUS@|$cpus|g" -e "s|@REAL_MEMORY@|$mem_mb|g" \
        -e "s|@CTLD_PORT@|$ctld_port|g" -e "s|@SLURMD_PORT@|$slurmd_port|g" \
        "$template" >"$state/etc/slurm.conf"
    if grep -n '@[A-Z_]*@' "$state/etc/slurm.conf" >&2; then
        die "unreplaced placeholders left in $state/etc/slurm.conf (template: $template)"
    fi
    export SLURM_CONF=$state/etc/slurm.conf

    # ---- munged (foreground in its own session; its log is its stderr). Up to 3 attempts: once
    # in ~100 starts here munged vanished at start without a word in its log.
    local munged_pid="" attempt
    for attempt in 1 2 3; do
        if start_munged "$sock"; then
            munged_pid=$spawned_pid
            break
        fi
        say "munged attempt $attempt failed: $munge_error"
    done
    [[ -n $munged_pid ]] || die "munged did not start (see $state/log/munged.log): $munge_error"

    # ---- slurmctld, then slurmd (named localhost, whatever the hostname is)
    spawn slurmctld "$state/log/slurmctld.out" slurmctld -D -f "$SLURM_CONF"
    local ctld_pid=$spawned_pid
    spawn slurmd "$state/log/slurmd.out" slurmd -D -N localhost -f "$SLURM_CONF"
    local slurmd_pid=$spawned_pid

    # ---- wait (bounded) until the node is idle
    local deadline st=""
    deadline=$(awk -v a="$(now)" -v t="$start_timeout" 'BEGIN { printf "%.3f", a + t }')
    while :; do
        alive slurmctld "$ctld_pid" || die "slurmctld exited at start (see $state/log/slurmctld.log and slurmctld.out)"
        alive slurmd "$slurmd_pid" || die "slurmd exited at start (see $state/log/slurmd.log and slurmd.out)"
        st=$(sinfo -h -N -n localhost -o %T 2>/dev/null || true)
        [[ $st == idle ]] && break
        if awk -v d="$deadline" -v n="$(now)" 'BEGIN { exit !(n > d) }'; then
            die "node not idle after ${start_timeout} s (sinfo state: '${st:-no answer}'; see $state/log/)"
        fi
        sleep 0.2
    done
    trap - EXIT

    cat >"$state/env" <<EOF
export SLURM_CONF=$state/etc/slurm.conf
export SAESCALE_SLURM_STATE=$state
EOF
    say "cluster saescale-local up in $(elapsed "$t0") s: node localhost (CPUs=$cpus RealMemory=$mem_mb), partition debug, ports $ctld_port/$slurmd_port, state $state"
    say "PIDs: munged $munged_pid, slurmctld $ctld_pid, slurmd $slurmd_pid"
    cat "$state/env"
}

# ---------------------------------------------------------------- stop
stop_daemons() {  # TERM the recorded PIDs (newest first), wait, KILL what is left
    [[ -f $state/pids ]] || return 0
    local -a names=() pids=()
    local name pid i
    while read -r name pid; do
        [[ -n $name && -n $pid ]] || continue
        names+=("$name")
        pids+=("$pid")
    done <"$state/pids"
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        if alive "${names[i]}" "${pids[i]}"; then
            kill -TERM "${pids[i]}" 2>/dev/null || true
            say "sent TERM to ${names[i]} (${pids[i]})"
        fi
    done
    local deadline left
    deadline=$(( $(date +%s) + stop_timeout ))
    while :; do
        left=0
        for ((i = 0; i < ${#pids[@]}; i++)); do
            alive "${names[i]}" "${pids[i]}" && left=$((left + 1))
        done
        (( left == 0 )) && break
        if (( $(date +%s) >= deadline )); then
            for ((i = 0; i < ${#pids[@]}; i++)); do
                if alive "${names[i]}" "${pids[i]}"; then
                    say "${names[i]} (${pids[i]}) still running after ${stop_timeout} s: KILL"
                    kill -KILL "${pids[i]}" 2>/dev/null || true
                fi
            done
            sleep 0.2
            break
        fi
        sleep 0.1
    done
}

cmd_stop() {
    state=${1:-${SAESCALE_SLURM_STATE:-}}
    [[ -n $state ]] || die "no state directory: give it (stop STATE_DIR) or eval the start output first"
    [[ -f $state/pids ]] || die "$state has no pids file: not a cluster started by $prog"
    state=$(cd "$state" && pwd)
    local t0 name pid ctld=0 any=0
    t0=$(now)
    while read -r name pid; do
        alive "$name" "$pid" && any=1
        [[ $name == slurmctld ]] && alive slurmctld "$pid" && ctld=1
    done <"$state/pids"
    if (( any == 0 )); then
        say "nothing running in $state"
        return 0
    fi
    # Jobs first: slurmd leaves running job steps (slurmstepd) behind when it stops, so cancel
    # every job of this private cluster and wait (bounded) until the queue is empty.
    if (( ctld )); then
        export SLURM_CONF=$state/etc/slurm.conf
        local jobs
        jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ' || true)
        if [[ -n ${jobs// /} ]]; then
            say "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            local deadline=$(( $(date +%s) + stop_timeout ))
            while [[ -n $(squeue -h -o %A 2>/dev/null || true) ]] && (( $(date +%s) < deadline )); do
                sleep 0.2
            done
        fi
    fi
    stop_daemons
    local left=""
    while read -r name pid; do
        alive "$name" "$pid" && left+=" $name($pid)"
    done <"$state/pids"
    [[ -z $left ]] || die "still running after KILL:$left"
    # Job processes are not ours to kill (their jobs were cancelled above): only name stragglers,
    # i.e. batch scripts still running from this cluster's spool directory.
    local p strays=""
    for p in /proc/[0-9]*; do
        [[ ${p#/proc/} == "$$" ]] && continue
        tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF "$state/spool/" && strays+=" ${p#/proc/}"
    done
    [[ -z $strays ]] || say "warning: processes still running from $state/spool:$strays"
    say "stopped in $(elapsed "$t0") s (state kept in $state)"
}

# ---------------------------------------------------------------- status
cmd_status() {
    state=${1:-${SAESCALE_SLURM_STATE:-}}
    [[ -n $state ]] || die "no state directory: give it (status STATE_DIR) or eval the start output first"
    [[ -f $state/pids ]] || die "$state has no pids file: not a cluster started by $prog"
    local name pid up=0
    while read -r name pid; do
        if alive "$name" "$pid"; then
            echo "$name $pid running"
            [[ $name == slurmctld ]] && up=1
        else
            echo "$name $pid not running"
        fi
    done <"$state/pids"
    if (( up )); then
        export SLURM_CONF=$state/etc/slurm.conf
        sinfo -N -o '%N %P %T %C %m' || true
        squeue -o '%.8i %.9P %.20j %.8T %.10M %R' || true
    else
        return 1
    fi
}

case ${1:-} in
    start) shift; (( $# <= 1 )) || usage; cmd_start "$@" ;;
    stop) shift; (( $# <= 1 )) || usage; cmd_stop "$@" ;;
    status) shift; (( $# <= 1 )) || usage; cmd_status "$@" ;;
    *) usage ;;
esac
