#!/usr/bin/env bash
# Every variant's dense step at d=512, M=8192, B=2048, k=32 in one invocation on one machine (so
# the ratios to JumpReLU are comparable), TopK and BatchTopK with each --topk-algo; prints the
# comparison table and each run's phase breakdown.
#   BUILD=build STEPS=20 bash runs/bench-variants.sh
set -euo pipefail
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${BENCH_OUT:-bench-output/variants}
STEPS=${STEPS:-20}
mkdir -p "$OUT"
run() {
  local name=$1; shift
  "$BUILD/bin/saescale" train "$@" --d-model 512 --width 8192 --batch-size 2048 --k 32 \
    --sparse off --steps "$STEPS" --warmup-steps 4 --data synthetic --eval-tokens 2048 --progress-every 1000 \
    --force --out "$OUT/$name.json"
}
run jumprelu --variant jumprelu
run relu --variant relu
run gated --variant gated
for algo in radix bisect; do
  run "topk-$algo" --variant topk --topk-algo "$algo"
  run "batchtopk-$algo" --variant batchtopk --topk-algo "$algo"
done
# AuxK only runs while latents are dead; a short window makes it run from the third step on.
run topk-radix-auxk --variant topk --topk-algo radix --dead-window-tokens 4096
PYTHONPATH=analysis "$PYTHON" -m saescale_analysis table "$OUT"/*.json
PYTHONPATH=analysis "$PYTHON" -m saescale_analysis phases "$OUT"/*.json
