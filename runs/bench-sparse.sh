#!/usr/bin/env bash
# The sparse-aware step (--sparse on): d=512, M=32768, B=2048, k=32, each
# variant's step time as a fraction of the dense five-GEMM floor measured in the same run
# (floor_ratio), and where the step now goes (phases). Every variant starts at an L0 like TopK's
# instead of being trained there (a run long enough to train it is hours on a 2-core VM):
# JumpReLU from --threshold-init 0.16 (L0 ~ 23 on this synthetic data), ReLU and Gated from a
# negative --encoder-bias-init (ReLU's decoder rows start at norm 0.1, so its pre-activations are
# 10x smaller). TopK and BatchTopK select with ALGO (default filter: the CPU algorithm).
#   BUILD=build STEPS=10 ALGO=filter bash runs/bench-sparse.sh
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
ALGO=${ALGO:-filter}
run jumprelu --variant jumprelu --threshold-init 0.16
run topk --variant topk --topk-algo "$ALGO"
run batchtopk --variant batchtopk --topk-algo "$ALGO"
run relu --variant relu --encoder-bias-init -0.012
run gated --variant gated --encoder-bias-init -0.16
PYTHONPATH=analysis "$PYTHON" -m saescale_analysis costs "$OUT"/*.json
PYTHONPATH=analysis "$PYTHON" -m saescale_analysis phases "$OUT"/*.json
