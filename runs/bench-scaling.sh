#!/usr/bin/env bash
# Strong scaling on this machine: JumpReLU and TopK at d=512, M=8192, B=2048 (global batch fixed)
# on 1, 2 and 4 ranks, data parallel and latent parallel, in one invocation; then the scaling
# table (speedup, efficiency, time and bytes in communication) and the planned bytes per step at
# Gemma-2-9B shapes (d=3584, M=131072, B=4096) for dp vs lp.
#   BUILD=build STEPS=12 bash runs/bench-scaling.sh
# Every run uses the same cores: 1 rank gets 2 BLAS threads, more ranks 1 each (on a 2-core
# machine 4 ranks share 2 cores: expect no speedup there, only the cost of the grid).
set -euo pipefail
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${BENCH_OUT:-bench-output/scaling}
STEPS=${STEPS:-12}
CORES=${CORES:-$(nproc)}
MPIEXEC=${MPIEXEC:-mpiexec}
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p "$OUT"
run() {
  local variant=$1 dp=$2 lp=$3 ranks=$(($2 * $3))
  local threads=$(( CORES / ranks > 0 ? CORES / ranks : 1 ))
  echo "== $variant dp $dp x lp $lp ($ranks ranks, $threads BLAS threads each)"
  OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=$threads \
    "$MPIEXEC" -n "$ranks" --oversubscribe --bind-to none -x OPENBLAS_NUM_THREADS -x OMP_NUM_THREADS \
    "$BUILD/bin/saescale" train --variant "$variant" --dp "$dp" --lp "$lp" \
    --d-model 512 --width 8192 --batch-size 2048 --k 32 --steps "$STEPS" --warmup-steps 3 --sparse off \
    --data synthetic --eval-tokens 2048 --progress-every 1000 --no-gemm-floor \
    --force --out "$OUT/$variant-dp$dp-lp$lp.json" | grep -E "^done"
}
for variant in jumprelu topk; do
  for grid in "1 1" "2 1" "1 2" "4 1" "1 4" "2 2"; do
    run "$variant" $grid
  done
done
PYTHONPATH=analysis "$PYTHON" -m saescale_analysis scaling "$OUT"/*.json
echo
for variant in jumprelu topk; do
  for grid in "--dp 8" "--lp 8"; do
    "$BUILD/bin/saescale" plan --variant "$variant" --d-model 3584 --width 131072 \
      --batch-size 4096 $grid | grep -E "^saescale plan|total"
  done
done
