#!/usr/bin/env bash
# The ReFrame checks (runs/reframe) for real on the local one-node Slurm, as a centre runs them:
#   tests/reframe/run.sh        (make test-reframe; needs root for the cluster; about a minute)
#   SAESCALE_SKIP_SLURM=1 ...   prints SKIPPED and exits 0
# Through `make -f Makefile.cluster SYSTEM=local reframe` (sbatch, srun --mpi=pmix, squeue):
#   pass        JumpReLU on 1 rank and TopK on 2 (dp) run, pass their sanity and report every
#               performance variable against runs/systems/local.references' values with open
#               bounds: make test runs on shared machines, where no speed may be asserted (the
#               recorded bounds are what the cluster's own runs use)
#   regression  TopK on 2 ranks against a tightened reference (a step of 1 us): ReFrame fails it
#               with a performance error, and make exits non-zero
#   perflogs    one per check, with each variable's value, reference and verdict, read by
#               `saescale_analysis regress` (one sample per run)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD:-build}
VENV=${VENV:-.venv}
prog=tests/reframe/run.sh
if [[ ${SAESCALE_SKIP_SLURM:-0} == 1 ]]; then
    echo "$prog: SKIPPED: the ReFrame checks did not run (SAESCALE_SKIP_SLURM=1)"
    exit 0
fi
cd "$repo"
[[ -x "$VENV/bin/reframe" ]] || { echo "$prog: no $VENV/bin/reframe (make deps-python)" >&2; exit 1; }
[[ -x "$BUILD/bin/saescale" ]] || { echo "$prog: no $BUILD/bin/saescale (make build)" >&2; exit 1; }
work=$(mktemp -d /tmp/saescale-reframe.XXXXXX)
chmod 0755 "$work"  # munged wants every directory above its socket searchable by all
env=$(tests/slurm/cluster.sh start "$work/cluster")
eval "$env"
passed=0
cleanup() {  # the daemons always stop; the work directory goes when every check passed
    tests/slurm/cluster.sh stop "$work/cluster" >/dev/null 2>&1 || true
    if (( passed )); then rm -rf "$work"; else echo "$prog: kept $work" >&2; fi
}
trap cleanup EXIT
start=$SECONDS
checks=(-n 'saescale_train%variant=jumprelu%grid=1x1' -n 'saescale_train%variant=topk%grid=2x1')
reframe() {  # the centre's command, in this repository
    make -s -f Makefile.cluster SYSTEM=local BUILD="$BUILD" VENV="$VENV" STUDY="$work/study" \
         REFRAME_FLAGS="$1" reframe
}
fail() { echo "$prog: FAIL: $*" >&2; exit 1; }

awk '/^#/ || NF < 6 { print; next } { $4 = "none"; $5 = "none"; print }' \
    runs/systems/local.references > "$work/open.references"
if ! SAESCALE_REFERENCES="$work/open.references" reframe "${checks[*]@Q}" >"$work/pass.log" 2>&1; then
    tail -30 "$work/pass.log"; fail "the checks did not pass"
fi
grep -q "Ran 2/2 test case(s) from 2 check(s) (0 failure(s)" "$work/pass.log" \
    || { tail -30 "$work/pass.log"; fail "expected 2 passing checks"; }
echo "$prog: PASS: jumprelu-1x1 and topk-2x1 pass (local.references' values, open bounds)"

for check in jumprelu-1x1 topk-2x1; do
    log=$work/study/reframe/perflogs/local/debug/$check/saescale_train.log
    [[ -s $log ]] || fail "no perflog $log"
    grep -q "step_ms_value" "$log" && grep -q "|ms|" "$log" || fail "$log: no step_ms"
done
grep -q "selection_over_encoder_value" "$work/study/reframe/perflogs/local/debug/topk-2x1/saescale_train.log" \
    || fail "topk-2x1's perflog has no selection_over_encoder"
echo "$prog: PASS: perflogs per check under STUDY/reframe/perflogs"

topk_log=$work/study/reframe/perflogs/local/debug/topk-2x1/saescale_train.log
PYTHONPATH=analysis "$VENV/bin/python" -m saescale_analysis regress "$topk_log" "$topk_log" \
    >"$work/regress.log" 2>&1 || { cat "$work/regress.log"; fail "regress could not read a perflog"; }
grep -q "^topk d32 M256 B256 fp32 dp2xlp1 k8" "$work/regress.log" \
    || { cat "$work/regress.log"; fail "regress did not list the perflog's check"; }
echo "$prog: PASS: saescale_analysis regress reads the perflogs"

printf 'topk-2x1 step_ms 0.001 none 0.1 ms\n' > "$work/tight.references"
if SAESCALE_REFERENCES="$work/tight.references" \
        reframe "-n 'saescale_train%variant=topk%grid=2x1'" >"$work/tight.log" 2>&1; then
    tail -30 "$work/tight.log"; fail "a step of 1 us was not flagged"
fi
grep -q "performance error: failed to meet reference(s): step_ms=" "$work/tight.log" \
    || { tail -30 "$work/tight.log"; fail "the failure was not the performance reference"; }
echo "$prog: PASS: a tightened reference (topk-2x1 step_ms 1 us) fails with a performance error"
echo "$prog: all checks passed in $((SECONDS - start)) s"
passed=1
