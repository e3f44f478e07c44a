#!/usr/bin/env bash
# The sparse-aware step (--sparse on) at issue 8's shape: d=512, M=32768, B=2048, k=32, each
# variant's step time as a fraction of the dense five-GEMM floor measured in the same run
# (floor_ratio), and where the step now goes (phases). JumpReLU starts at an L0 like TopK's
# (--threshold-init 0.16 gives L0 ~ 30 on this synthetic data) instead of being trained there.
# ReLU and Gated are dense at initialisation (L0 ~ M/2): their products fall back to the GEMMs
# until training makes them sparse, so they are left out here.
#   BUILD=build STEPS=10 bash runs/bench-sparse.sh
set -euo pipefail
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${BENCH_OUT:-bench-output/sparse}
STEPS=${STEPS:-10}
mkdir -p "$OUT"
run() {
  local name=$1; shift
  echo "== $name"
  "$BUILD/bin/saescale" train "$@" --d-model 512 --width 32768 --batch-size 2048 --k 32 \
    --steps "$STEPS" --warmup-steps 2 --data synthetic --eval-tokens 2048 --progress-every 1000 \
    --sparse on --tag sweep=sparse --tag row="$name" --force --out "$OUT/$name.json" | grep -E "^done"
}
run jumprelu --variant jumprelu --threshold-init 0.16
run topk --variant topk --topk-algo bisect
run batchtopk --variant batchtopk --topk-algo bisect
PYTHONPATH=analysis "$PYTHON" -m saescale_analysis costs "$OUT"/*.json
PYTHONPATH=analysis "$PYTHON" -m saescale_analysis phases "$OUT"/*.json
