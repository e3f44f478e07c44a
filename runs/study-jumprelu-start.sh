#!/usr/bin/env bash
# Does JumpReLU's start learn at M/d = 8 and beyond? Short runs (STEPS steps of B = 1024) on the
# same activations at M/d = 8, 16 and 32, with the decoder's initial row norm and the learning
# rate varied around the defaults; prints FVU and L0 on held-out rows after the run.
#   DATA=/path/manifest.json D=384 BUILD=build STEPS=200 bash runs/study-jumprelu-start.sh
set -euo pipefail
BUILD=${BUILD:-build}
DATA=${DATA:-synthetic}
D=${D:-384}
STEPS=${STEPS:-200}
OUT=${BENCH_OUT:-bench-output/jumprelu-start}
mkdir -p "$OUT"
printf '%-6s %-10s %-8s %8s %9s %8s\n' "M/d" "dec norm" "lr" "FVU" "L0" "step ms"
for ratio in ${RATIOS:-8 16 32}; do
  for norm in ${NORMS:-1 0.1}; do
    for lr in ${LRS:-7e-5 2e-4 7e-4}; do
      out="$OUT/m${ratio}-n${norm}-lr${lr}.json"
      "$BUILD/bin/saescale" train --variant jumprelu --d-model "$D" --width $((ratio * D)) \
        --batch-size 1024 --steps "$STEPS" --data "$DATA" --decoder-init-norm "$norm" \
        --lr "$lr" --eval-tokens 16384 --no-gemm-floor --progress-every 100000 --force \
        --out "$out" >/dev/null
      python3 -c 'import json, sys
r = json.load(open(sys.argv[1])); f = r["fidelity"]
print("%-6s %-10s %-8s %8.4f %9.1f %8.1f" % (sys.argv[2], sys.argv[3], sys.argv[4], f["fvu"],
      f["l0"], 1e3 * r["timing"]["step_s"]["median"]))' "$out" "$ratio" "$norm" "$lr"
    done
  done
done
