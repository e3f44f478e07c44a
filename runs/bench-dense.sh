#!/usr/bin/env bash
# Dense step vs the in-run GEMM floor at d=512, M=8192, B=2048 (the foundation's performance
# check). Both variants in one invocation, on one machine; prints each run's phase breakdown.
#   BUILD=build STEPS=30 bash runs/bench-dense.sh [extra saescale train options]
set -euo pipefail
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${BENCH_OUT:-bench-output}
STEPS=${STEPS:-30}
mkdir -p "$OUT"
for variant in jumprelu relu; do
  "$BUILD/bin/saescale" train --variant "$variant" --d-model 512 --width 8192 --batch-size 2048 \
    --sparse off --steps "$STEPS" --warmup-steps 5 --data synthetic --eval-tokens 4096 --progress-every 1000 \
    --force --out "$OUT/dense-$variant.json" "$@"
done
PYTHONPATH=analysis "$PYTHON" -m saescale_analysis phases "$OUT"/dense-jumprelu.json "$OUT"/dense-relu.json
PYTHONPATH=analysis "$PYTHON" -m saescale_analysis table "$OUT"/dense-*.json
