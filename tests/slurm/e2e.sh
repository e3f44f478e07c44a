#!/usr/bin/env bash
# End-to-end test of the cluster workflow on a real Slurm (the one-node cluster of cluster.sh):
#   tests/slurm/e2e.sh                 (make test-slurm; about a minute on 2 cores; needs root)
#   SAESCALE_SKIP_SLURM=1 tests/slurm/e2e.sh     prints SKIPPED and exits 0
# Uses the build in BUILD (default build: nothing is rebuilt) and the Python venv in VENV
# (default .venv). Starts a cluster in a fresh directory, then, through Makefile.cluster and the
# real templates:
#   submit      make submit-weak submit-variants (local: p = 1, 2; 15 variant rows), and a
#               long variants row in a second study, to be preempted
#   preempt     scancel --batch --signal=USR1 to that job: the batch shell forwards USR1, saescale
#               checkpoints and exits 3, the job resubmits itself, the new job resumes and finishes
#   weak        every row ok at p = 1 and 2, tagged; allreduce.json at p = 2
#   variants    every row ok, tagged, time to fidelity recorded
#   env         each job attempt captured scontrol, modules, environment, saescale info, commit
#   status      make status counts every result as ok
#   report      make report writes report.md, report.html and figures
#   regress     the study against itself: exit 0, no REGRESSION; against a copy with every step
#               time x1.25: exit 1, REGRESSION
# One PASS/FAIL line per check with its time; the cluster is stopped (by PID) on every exit, and
# the work directory (/tmp/saescale-e2e.*) is removed when every check passed.
set -euo pipefail
export LC_ALL=C  # one decimal point for $EPOCHREALTIME and awk

src=${BASH_SOURCE[0]}
[[ $src == */* ]] || src=./$src
here=$(cd "${src%/*}" && pwd)
repo=$(cd "$here/../.." && pwd)
prog=e2e.sh

if [[ ${SAESCALE_SKIP_SLURM:-0} == 1 ]]; then
    echo "=================================================================="
    echo "$prog: SKIPPED: the Slurm end-to-end test did not run (SAESCALE_SKIP_SLURM=1)"
    echo "=================================================================="
    exit 0
fi
die() {
    echo "$prog: $*" >&2
    echo "$prog: (set SAESCALE_SKIP_SLURM=1 to skip this test on purpose)" >&2
    exit 1
}
(( EUID == 0 )) || die "needs root (it starts munged, slurmctld and slurmd): run it as root"
for c in munged slurmctld slurmd sbatch srun squeue scancel scontrol make python3; do
    command -v "$c" >/dev/null 2>&1 || die "$c not installed: apt-get install slurm-wlm munge (or make deps-system)"
done
cd "$repo"
BUILD=${BUILD:-build}
VENV=${VENV:-.venv}
[[ -x $BUILD/bin/saescale && -x $BUILD/bin/saescale-kernels ]] ||
    die "no saescale and saescale-kernels in $BUILD/bin: make build first"
[[ -x $VENV/bin/python ]] || die "no Python environment in $VENV: make deps-python first"

since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }  # seconds since $1
work=$(mktemp -d /tmp/saescale-e2e.XXXXXX)
chmod 0755 "$work"  # munged wants every directory above its socket searchable by all
echo "work directory: $work"
t_start=$EPOCHREALTIME
env_lines=$("$here/cluster.sh" start "$work/cluster") || die "the cluster did not start (see above)"
eval "$env_lines"
cleanup() {
    local rc=$?
    "$here/cluster.sh" stop "$SAESCALE_SLURM_STATE" || rc=1
    exit "$rc"
}
trap cleanup EXIT
echo "cluster start: $(since "$t_start") s"

failures=0
report() {  # report NAME START OK(0/1) DETAIL
    local secs
    secs=$(since "$2")
    if [[ $3 == 1 ]]; then
        printf 'PASS %-9s %6s s  %s\n' "$1" "$secs" "$4"
    else
        printf 'FAIL %-9s %6s s  %s\n' "$1" "$secs" "$4"
        failures=$((failures + 1))
    fi
}
indent() { sed 's/^/    /'; }
mk() {  # mk TARGET... VAR=...: Makefile.cluster on the local system with this build
    make -s -f Makefile.cluster SYSTEM=local BUILD="$BUILD" VENV="$VENV" "$@"
}
field() {  # field JOBID NAME: a field of `scontrol show job`
    scontrol -o show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1
}
pyjson() {  # pyjson CODE ARGS...: python3 with json, glob, sys imported; prints, exits 0/1
    python3 -c "import json, glob, os, sys
$1" "${@:2}"
}

study=$work/study       # the sweeps
long=$work/long         # the row that gets preempted

# ---- submit: the long row first, so that it starts at once and can be preempted mid-run
s=$EPOCHREALTIME
out=$(mk submit-variants STUDY="$long" SUBMIT_FLAGS="--rows jumprelu --steps 10000" 2>&1 &&
      mk submit-weak submit-variants STUDY="$study" 2>&1) || true
indent <<<"$out"
n=$(grep -c '^submitted ' <<<"$out" || true)
ok=0; (( n == 4 )) && ok=1
report submit "$s" $ok "$n jobs submitted (weak p=1, p=2, variants array; the long row)"
long_job=$(pyjson 'print(json.load(open(sys.argv[1]))["submissions"][0]["job_id"])' "$long/study.json" 2>/dev/null || echo none)

# ---- preempt: USR1 to the long row's batch shell once its first progress line is out
s=$EPOCHREALTIME
long_log=$long/variants/logs/sae-long-variants_${long_job}_0.out
deadline=$(( $(date +%s) + 60 ))
until grep -qE '^0: +step +[0-9]+/' "$long_log" 2>/dev/null || (( $(date +%s) > deadline )); do sleep 0.2; done
sent=0
if grep -qE '^0: +step +[0-9]+/' "$long_log" 2>/dev/null; then
    scancel --batch --signal=USR1 "$long_job" && sent=1
fi
# Everything submitted (and resubmitted) must leave the queue within a bound.
deadline=$(( $(date +%s) + 180 ))
while [[ -n $(squeue -h -o %i 2>/dev/null) ]] && (( $(date +%s) < deadline )); do sleep 0.5; done
left=$(squeue -h -o '%i %j %T' 2>/dev/null | tr '\n' ';')
next=$(sed -n 's/^preempted: resubmitted as job \([0-9]*\).*/\1/p' "$long_log" 2>/dev/null | head -n 1)
next_log=$long/variants/logs/sae-long-variants_${next:-none}_0.out
first_state="$(field "$long_job" JobState) $(field "$long_job" ExitCode)"
final=$(pyjson 'print(json.load(open(sys.argv[1]))["status"])' "$long/variants/p1/jumprelu.json" 2>/dev/null || echo missing)
ok=0
[[ $sent == 1 && -n $next && $first_state == "FAILED 3:0" && $final == ok ]] &&
    grep -q 'resumed from' "$next_log" && grep -q "preempted -> job $next" "$long/variants/resubmissions.log" && ok=1
report preempt "$s" $ok "job $long_job: USR1 sent=$sent, ended $first_state -> job ${next:-none} $(field "${next:-0}" JobState)$(grep -o 'resumed from.*' "$next_log" 2>/dev/null | sed 's/^/, /'), results $final"
[[ -z $left ]] || report queue "$s" 0 "jobs still queued after 180 s: $left"

# ---- results of both sweeps: status, tags, fidelity targets, allreduce
check_rows='
study, sweep, ranks, expected = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
d = os.path.join(study, sweep, "p%d" % ranks)
files = sorted(f for f in glob.glob(d + "/*.json") if not f.endswith("/allreduce.json"))
bad = []
for f in files:
    r = json.load(open(f))
    row = os.path.basename(f)[:-5]
    want = {"study": os.path.basename(study), "sweep": sweep, "row": row, "system": "local", "ranks": str(ranks)}
    if r.get("status") != "ok":
        bad.append("%s status %s" % (row, r.get("status")))
    if r["context"].get("tags") != want:
        bad.append("%s tags %s" % (row, r["context"].get("tags")))
    if r["timing"]["step_s"]["n"] < 9:
        bad.append("%s only %d timed steps" % (row, r["timing"]["step_s"]["n"]))
    if sweep == "variants" and len(r["fidelity"].get("time_to_fidelity") or []) != 2:
        bad.append("%s time_to_fidelity %s" % (row, r["fidelity"].get("time_to_fidelity")))
if len(files) != expected:
    bad.append("%d results, expected %d" % (len(files), expected))
print("; ".join(bad[:3]) if bad else "%d rows ok, tagged" % len(files))
sys.exit(1 if bad else 0)'
s=$EPOCHREALTIME
ok=1 detail=""
for p in 1 2; do
    if d=$(pyjson "$check_rows" "$study" weak "$p" 4); then :; else ok=0; fi
    detail+="p=$p: $d; "
done
ar=$(pyjson '
r = json.load(open(sys.argv[1]))
b = [x for x in r["benchmarks"] if x["name"].startswith("MPI_Allreduce/")]
assert b and str(r["context"].get("ranks")) == "2", "no MPI_Allreduce entries at 2 ranks"
print("%d sizes, busbw %.2f GB/s at %d B" % (len(b), b[-1]["busbw"] / 1e9, b[-1]["bytes"]))' "$study/weak/p2/allreduce.json" 2>&1) || ok=0
[[ ! -e $study/weak/p1/allreduce.json ]] || { ok=0; ar+=" (and an allreduce.json at p=1)"; }
report weak "$s" $ok "${detail}allreduce.json: ${ar##*$'\n'}"

s=$EPOCHREALTIME
ok=1
d=$(pyjson "$check_rows" "$study" variants 1 15) || ok=0
report variants "$s" $ok "$d, 2 fidelity targets each"

# ---- environment capture of every job attempt
s=$EPOCHREALTIME
ok=1 n=0 missing=""
for dir in "$study"/weak/p*/env/* "$study"/variants/p1/env/* "$long"/variants/p1/env/*; do
    n=$((n + 1))
    for f in job.txt scontrol-show-job.txt module-list.txt environment.txt saescale-info.json git.txt; do
        [[ -s $dir/$f ]] || { ok=0; missing+=" ${dir#"$work"/}/$f"; }
    done
    grep -q '^SLURM_JOB_ID=' "$dir/environment.txt" 2>/dev/null || { ok=0; missing+=" SLURM_JOB_ID in ${dir#"$work"/}"; }
    grep -q '^commit [0-9a-f]\{40\}' "$dir/git.txt" 2>/dev/null || { ok=0; missing+=" commit in ${dir#"$work"/}"; }
done
(( n == 2 + 15 + 2 )) || { ok=0; missing+=" ($n attempt directories, expected 19)"; }
report env "$s" $ok "$n job attempts captured${missing:+; missing:$missing}"

# ---- make status
s=$EPOCHREALTIME
st=$(mk status STUDY="$study" 2>&1) || true
ok=0
grep -Eq '^weak +1 +4 +4 +0 +0 +0$' <<<"$st" && grep -Eq '^weak +2 +4 +4 +0 +0 +0$' <<<"$st" &&
    grep -Eq '^variants +1 +15 +15 +0 +0 +0$' <<<"$st" && ok=1
report status "$s" $ok "$(grep -E '^(weak|variants) ' <<<"$st" | awk '{printf "%s%s p%s %s/%s ok", (NR > 1 ? "; " : ""), $1, $2, $4, $3}')"
(( ok )) || indent <<<"$st"

# ---- make report
s=$EPOCHREALTIME
if PYTHONPATH=analysis "$VENV/bin/python" -m saescale_analysis report --help >/dev/null 2>&1; then
    ok=0
    if mk report STUDY="$study" >"$work/report.log" 2>&1; then
        pngs=$(find "$study/report" -name '*.png' | wc -l)
        [[ -s $study/report/report.md && -s $study/report/report.html ]] && (( pngs > 0 )) && ok=1
        report report "$s" $ok "report.md, report.html, $pngs figures in $study/report"
    else
        report report "$s" 0 "make report failed: $(tail -n 1 "$work/report.log")"
    fi
else
    printf 'SKIP %-9s %6s s  %s\n' report "$(since "$s")" "python -m saescale_analysis has no report subcommand yet"
fi

# ---- make regress: the study against itself, then against a copy 25% slower per step
s=$EPOCHREALTIME
rc=0
# (CURRENT defaults to STUDY/variants/p*/*.json)
mk regress STUDY="$study" BASELINE="$study/variants/p1" >"$work/regress-self.log" 2>&1 || rc=$?
n_ok=$(grep -Ec ' ok$' "$work/regress-self.log" || true)
ok=0; [[ $rc == 0 ]] && (( n_ok > 0 )) && ! grep -Eq ' REGRESSION$' "$work/regress-self.log" && ok=1
report regress "$s" $ok "study vs itself: exit $rc, $n_ok benchmarks ok"
(( ok )) || indent <"$work/regress-self.log"
s=$EPOCHREALTIME
pyjson '
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst)
for f in glob.glob(src + "/*.json"):
    r = json.load(open(f))
    for b in r["benchmarks"]:
        b["real_time"] *= 1.25
        b["cpu_time"] *= 1.25
    s = r["timing"]["step_s"]
    for k in ("median", "p10", "p90", "min", "max", "mean"):
        s[k] *= 1.25
    json.dump(r, open(os.path.join(dst, os.path.basename(f)), "w"))' "$study/variants/p1" "$work/slower"
rc=0
mk regress BASELINE="$study/variants/p1" CURRENT="$work/slower/*.json" >"$work/regress-slow.log" 2>&1 || rc=$?
n_bad=$(grep -Ec ' REGRESSION$' "$work/regress-slow.log" || true)
# make exits 2 whenever a recipe fails; its message carries the recipe's own status (regress: 1).
ok=0; [[ $rc != 0 ]] && grep -q 'regress\] Error 1$' "$work/regress-slow.log" && (( n_bad > 0 )) && ok=1
report regress "$s" $ok "study vs every step x1.25: regress exit $(sed -n 's/.*regress\] Error \([0-9]*\)$/\1/p' "$work/regress-slow.log"), $n_bad REGRESSION rows"
(( ok )) || indent <"$work/regress-slow.log"

# ---- stop the cluster; nothing of it may be left running
cd /
t2=$EPOCHREALTIME
"$here/cluster.sh" stop "$SAESCALE_SLURM_STATE"
trap - EXIT
echo "cluster stop: $(since "$t2") s"
left=$(pgrep -af -- "$SAESCALE_SLURM_STATE/" || true)
if [[ -n $left ]]; then
    echo "FAIL processes left behind:"; echo "$left"; failures=$((failures + 1))
fi
total=$(since "$t_start")
if (( failures )); then
    printf '%s: %d check(s) failed in %s s (study: %s, cluster logs: %s/log)\n' "$prog" "$failures" "$total" "$study" "$SAESCALE_SLURM_STATE"
    exit 1
fi
# Kept on failure (above) for a look; a passing run leaves nothing behind.
if [[ -n ${SAESCALE_E2E_KEEP:-} ]]; then
    echo "kept: $work (SAESCALE_E2E_KEEP)"
else
    rm -rf -- "$work"
fi
printf '%s: all checks passed in %s s\n' "$prog" "$total"
