#!/usr/bin/env bash
# End-to-end check of the local Slurm cluster (tests/slurm/cluster.sh) with saescale:
#   tests/slurm/verify.sh [path/to/saescale]      (default: build/bin/saescale; about 1.5 min)
# Starts a cluster in a fresh directory, runs each check below, prints one line per check with
# its time, and stops the cluster (also on failure). Exit status 0 when every check passed.
#   batch        sbatch --wrap 'hostname; sleep 1'             COMPLETED, output has the hostname
#   two-tasks    sbatch -n 2 --wrap 'srun -l hostname'         both task labels in the output
#   srun-pmix    srun -n 2 --mpi=pmix saescale train --lp 2    exit 0, results status ok
#   mpirun       mpirun inside an sbatch -n 2 allocation       COMPLETED, results status ok
#   scancel-usr1 scancel --signal=USR1 to a running step       exit 3, status preempted
#   signal-B     --time=1 --signal=B:USR1@45, shell forwards   exit 3, status preempted
#   resubmit     on exit 3: sbatch --dependency=afterany:$SLURM_JOB_ID "$0", resumes, finishes
#   requeue      on exit 3: scontrol requeue $SLURM_JOB_ID, restarts (Restarts=1), finishes
set -euo pipefail

src=${BASH_SOURCE[0]}
[[ $src == */* ]] || src=./$src
here=$(cd "${src%/*}" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${1:-$repo/build/bin/saescale}
[[ -x $bin ]] || { echo "verify.sh: saescale not found at $bin: build it (make build) or give its path" >&2; exit 1; }
bin=$(cd "${bin%/*}" && pwd)/${bin##*/}

work=$(mktemp -d /tmp/saescale-slurm-verify.XXXXXX)
chmod 0755 "$work"  # munged wants every directory above its socket searchable by all
echo "work directory: $work"
t0=$(date +%s.%N)
env_lines=$("$here/cluster.sh" start "$work/cluster")  # not eval "$(...)": that hides a failure
eval "$env_lines"
t1=$(date +%s.%N)
cleanup() {
    local rc=$?
    "$here/cluster.sh" stop "$SAESCALE_SLURM_STATE" || rc=1
    exit "$rc"
}
trap cleanup EXIT
printf 'cluster start: %.1f s\n' "$(echo "$t1 - $t0" | bc)"

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
failures=0
small=(--d-model 8 --width 32 --batch-size 64 --steps 3 --lp 2 --force)
long=(--d-model 32 --width 256 --batch-size 512 --lp 2 --progress-every 200 --force)

field() {  # field JOBID NAME: a field of `scontrol show job`
    scontrol -o show job "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"
}

wait_job() {  # wait_job JOBID [TIMEOUT_S]: until the job reaches a final state; prints it
    local j=$1 limit=${2:-120} st start
    start=$(date +%s)
    while :; do
        st=$(field "$j" JobState)
        case $st in
            COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | PREEMPTED | BOOT_FAIL | DEADLINE)
                echo "$st"; return 0 ;;
        esac
        (( $(date +%s) - start < limit )) || { echo "STUCK:$st"; return 0; }
        sleep 0.2
    done
}

wait_for_line() {  # wait_for_line FILE PATTERN [TIMEOUT_S]: until FILE has a line matching PATTERN
    local limit=${3:-60} start
    start=$(date +%s)
    until grep -qE "$2" "$1" 2>/dev/null; do
        (( $(date +%s) - start < limit )) || return 1
        sleep 0.2
    done
}

status_of() {  # status_of RESULTS.json: its "status"
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["status"])' "$1" 2>/dev/null || echo missing
}

report() {  # report NAME START_TIME OK(0/1) DETAIL
    local secs
    secs=$(echo "$(date +%s.%N) - $2" | bc)
    if [[ $3 == 1 ]]; then
        printf 'PASS %-13s %6.1f s  %s\n' "$1" "$secs" "$4"
    else
        printf 'FAIL %-13s %6.1f s  %s\n' "$1" "$secs" "$4"
        failures=$((failures + 1))
    fi
}

cd "$work"

# ---- batch: one task
s=$(date +%s.%N)
j=$(sbatch --parsable -o "$work/batch.out" --wrap 'hostname; sleep 1')
st=$(wait_job "$j")
ok=0; [[ $st == COMPLETED && -s $work/batch.out ]] && ok=1
report batch "$s" $ok "job $j $st $(field "$j" ExitCode), output: $(head -c 60 "$work/batch.out")"

# ---- two tasks through srun inside the batch job
s=$(date +%s.%N)
j=$(sbatch --parsable -n 2 -o "$work/two.out" --wrap 'srun -l hostname')
st=$(wait_job "$j")
ok=0; [[ $st == COMPLETED ]] && grep -q '^0: ' "$work/two.out" && grep -q '^1: ' "$work/two.out" && ok=1
report two-tasks "$s" $ok "job $j $st, output: $(tr '\n' ' ' <"$work/two.out")"

# ---- Open MPI under srun (PMIx)
s=$(date +%s.%N)
rc=0
srun -n 2 --mpi=pmix "$bin" train "${small[@]}" --out "$work/srun.json" >"$work/srun.out" 2>&1 || rc=$?
ok=0; [[ $rc == 0 && $(status_of "$work/srun.json") == ok ]] && ok=1
report srun-pmix "$s" $ok "srun exit $rc, results $(status_of "$work/srun.json")"

# ---- mpirun inside an allocation
cat >"$work/mpirun.sbatch" <<EOF
#!/bin/bash
#SBATCH -n 2
#SBATCH -o $work/mpirun.out
set -euo pipefail
mpirun -x OPENBLAS_NUM_THREADS -x OMP_NUM_THREADS "$bin" train ${small[*]} --out "$work/mpirun.json"
EOF
s=$(date +%s.%N)
j=$(sbatch --parsable "$work/mpirun.sbatch")
st=$(wait_job "$j")
ok=0; [[ $st == COMPLETED && $(status_of "$work/mpirun.json") == ok ]] && ok=1
report mpirun "$s" $ok "job $j $st $(field "$j" ExitCode), results $(status_of "$work/mpirun.json")"

# ---- scancel --signal=USR1 to the running step
cat >"$work/usr1.sbatch" <<EOF
#!/bin/bash
#SBATCH -n 2
#SBATCH -o $work/usr1.out
srun --mpi=pmix "$bin" train ${long[*]} --steps 100000000 --checkpoint-dir "$work/ck-usr1" --out "$work/usr1.json"
EOF
s=$(date +%s.%N)
j=$(sbatch --parsable "$work/usr1.sbatch")
if wait_for_line "$work/usr1.out" '^ +step +[0-9]+/'; then scancel --signal=USR1 "$j"; fi
st=$(wait_job "$j")
ok=0; [[ $st == FAILED && $(field "$j" ExitCode) == 3:0 && $(status_of "$work/usr1.json") == preempted ]] && ok=1
report scancel-usr1 "$s" $ok "job $j $st $(field "$j" ExitCode), results $(status_of "$work/usr1.json")"

# ---- --signal=B:USR1@45 before a 1-minute limit; the batch shell forwards it to the step
cat >"$work/sigb.sbatch" <<EOF
#!/bin/bash
#SBATCH -n 2
#SBATCH --time=1
#SBATCH --signal=B:USR1@45
#SBATCH -o $work/sigb.out
echo "started \$(date +%s)"
trap 'echo "USR1 at \$(date +%s)"; kill -USR1 "\$pid"' USR1
srun --mpi=pmix "$bin" train ${long[*]} --steps 100000000 --checkpoint-dir "$work/ck-sigb" --out "$work/sigb.json" &
pid=\$!
wait "\$pid"; rc=\$?
# the trapped signal interrupts wait (status 138): wait again for srun's own status
if (( rc > 128 )) && kill -0 "\$pid" 2>/dev/null; then wait "\$pid"; rc=\$?; fi
exit "\$rc"
EOF
s=$(date +%s.%N)
j=$(sbatch --parsable "$work/sigb.sbatch")
st=$(wait_job "$j" 120)
ok=0; [[ $st == FAILED && $(field "$j" ExitCode) == 3:0 && $(status_of "$work/sigb.json") == preempted ]] && ok=1
after=$(awk '/^started/ { s = $2 } /^USR1 at/ { print $3 - s }' "$work/sigb.out")
report signal-B "$s" $ok "job $j $st $(field "$j" ExitCode), USR1 ${after:-?} s after start, results $(status_of "$work/sigb.json")"

# ---- exit 3 -> resubmit itself with a dependency, resume from the checkpoint
cat >"$work/resubmit.sbatch" <<EOF
#!/bin/bash
#SBATCH -n 2
#SBATCH -J resubmit
#SBATCH -o $work/resubmit-%j.out
resume=()
[[ -e "$work/ck-resubmit/latest" ]] && resume=(--resume)
srun --mpi=pmix "$bin" train ${long[*]} --steps 4000 --checkpoint-dir "$work/ck-resubmit" --out "$work/resubmit.json" "\${resume[@]}"
rc=\$?
if (( rc == 3 )); then
    # \$0 is slurmd's copy of this script; sbatch reads it now, so it may vanish afterwards
    sbatch --dependency=afterany:"\$SLURM_JOB_ID" "\$0"
fi
exit "\$rc"
EOF
s=$(date +%s.%N)
j=$(sbatch --parsable "$work/resubmit.sbatch")
if wait_for_line "$work/resubmit-$j.out" '^ +step +[0-9]+/'; then scancel --signal=USR1 "$j"; fi
st=$(wait_job "$j")
next=$(sed -n 's/^Submitted batch job //p' "$work/resubmit-$j.out")
st2=MISSING
[[ -n $next ]] && st2=$(wait_job "$next")
ok=0
[[ $st == FAILED && $st2 == COMPLETED && $(status_of "$work/resubmit.json") == ok ]] &&
    grep -q '^resumed from' "$work/resubmit-$next.out" && ok=1
report resubmit "$s" $ok "job $j $st -> job ${next:-none} $st2, results $(status_of "$work/resubmit.json")"

# ---- exit 3 -> scontrol requeue, the same job id runs again and resumes
cat >"$work/requeue.sbatch" <<EOF
#!/bin/bash
#SBATCH -n 2
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH -o $work/requeue.out
echo "run \${SLURM_RESTART_COUNT:-0}"
resume=()
[[ -e "$work/ck-requeue/latest" ]] && resume=(--resume)
srun --mpi=pmix "$bin" train ${long[*]} --steps 4000 --checkpoint-dir "$work/ck-requeue" --out "$work/requeue.json" "\${resume[@]}"
rc=\$?
if (( rc == 3 )); then
    scontrol requeue "\$SLURM_JOB_ID"
fi
exit "\$rc"
EOF
s=$(date +%s.%N)
j=$(sbatch --parsable "$work/requeue.sbatch")
if wait_for_line "$work/requeue.out" '^ +step +[0-9]+/'; then scancel --signal=USR1 "$j"; fi
st=$(wait_job "$j" 180)
ok=0
[[ $st == COMPLETED && $(field "$j" Restarts) == 1 && $(status_of "$work/requeue.json") == ok ]] &&
    grep -q '^resumed from' "$work/requeue.out" && ok=1
report requeue "$s" $ok "job $j $st Restarts=$(field "$j" Restarts), results $(status_of "$work/requeue.json")"

cd /
t2=$(date +%s.%N)
"$here/cluster.sh" stop "$SAESCALE_SLURM_STATE"
t3=$(date +%s.%N)
trap - EXIT
printf 'cluster stop: %.1f s\n' "$(echo "$t3 - $t2" | bc)"
left=$(pgrep -af -- "$SAESCALE_SLURM_STATE/" || true)
if [[ -n $left ]]; then
    echo "FAIL processes left behind:"; echo "$left"; failures=$((failures + 1))
fi
if (( failures )); then
    echo "verify.sh: $failures check(s) failed (logs: $work, cluster logs: $SAESCALE_SLURM_STATE/log)"
    exit 1
fi
echo "verify.sh: all checks passed (logs in $work)"
