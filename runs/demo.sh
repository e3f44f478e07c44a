#!/usr/bin/env bash
# `make demo`: train the five SAE variants on the same synthetic activations (known ground-truth
# dictionary), write one results JSON per variant, print a comparison table and write the report
# (report.html, report.md and its figures; docs/figures/ in the repository are from this report).
set -euo pipefail
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-python3}
OUT=${DEMO_OUT:-demo-output}
SAESCALE="$BUILD/bin/saescale"
mkdir -p "$OUT/results" "$OUT/weights"

# d = 128, 1024 latents, 512 true features at L0 8; sized for a few minutes on 2 cores.
COMMON=(--d-model 128 --width 1024 --batch-size 2048 --steps 1000 --warmup-steps 20
        --data synthetic:features=512,l0=8,noise=0.02 --seed 1 --eval-tokens 16384
        --lr 5e-3 --progress-every 250 --target-fvu 0.3,0.2 --force)
train() {
  local variant=$1; shift
  "$SAESCALE" train --variant "$variant" "$@" "${COMMON[@]}" \
    --tag study=demo --tag sweep=variants --tag row="$variant" --tag system=local \
    --save-weights "$OUT/weights/$variant" --out "$OUT/results/$variant.json"
}
train relu --sparsity-coeff 0.3
train jumprelu --sparsity-coeff 0.01 --threshold-init 0.1 --bandwidth 0.05 --decoder-init-norm 1
train gated --sparsity-coeff 0.3
train topk --k 8
train batchtopk --k 8

echo
echo "== comparison (same data, same machine, one run each; ratios relative to JumpReLU) =="
PYTHONPATH=analysis "$PYTHON" -m saescale_analysis table "$OUT"/results/*.json
echo
PYTHONPATH=analysis "$PYTHON" -m saescale_analysis report "$OUT/results" --out "$OUT/report" \
  --title "saescale demo: five variants on one machine"
echo
echo "results: $OUT/results/*.json   weights (SAELens layout): $OUT/weights/<variant>/"
echo "report:  $OUT/report/report.html (and report.md; main figure $OUT/report/breakdown.png)"
