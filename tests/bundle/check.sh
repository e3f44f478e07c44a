#!/usr/bin/env bash
# The GPU bundle and the GPU check without a GPU (make test-gpu-check): the one-rank, MPI-free
# build whose kernels use their GPU mappings on the host is bundled (runs/gpu-bundle), unpacked
# into a fresh folder, and run from there with an empty environment: `saescale --version` and
# `info`, the refusal to run as one of several ranks, then the whole GPU check at host shapes.
#   BUILD=build-gpu-mapping PYTHON=.venv/bin/python bash tests/bundle/check.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${BUILD:-build-gpu-mapping}
python=${PYTHON:-python3}
case $python in /*) ;; */*) python="$root/$python" ;; esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "bundle check: FAILED: $*" >&2; exit 1; }

"$root/runs/gpu-bundle" "$build" --out "$tmp/bundle.tar.gz" --max-mib 60
mkdir "$tmp/unpacked"
tar -C "$tmp/unpacked" -xzf "$tmp/bundle.tar.gz"
dir=$(echo "$tmp"/unpacked/saescale-*)
[ -d "$dir" ] || fail "the tarball holds no saescale-* folder"
clean_env=(env -i PATH=/usr/bin:/bin HOME="$tmp")

# Every library a bundled binary loads comes from the bundle or glibc.
for f in "$dir"/bin/*; do
  ldd "$f" | awk -v d="$dir" '$2 == "=>" && $3 !~ "^"d && $1 !~ /^(linux-vdso|ld-linux|libc\.|libm\.|libpthread\.|libdl\.|librt\.|libcuda\.)/ {print FILENAME": "$0; bad=1} END {exit bad}' FILENAME="$f" ||
    fail "$(basename "$f") loads a library from outside the bundle"
done
"${clean_env[@]}" "$dir/bin/saescale" --version | grep -q '^saescale ' || fail "--version"
"${clean_env[@]}" "$dir/bin/saescale" info > "$tmp/info.json" || fail "saescale info"
grep -q '"mpi_library": "none' "$tmp/info.json" || fail "info does not say the bundle has no MPI"
if "${clean_env[@]}" OMPI_COMM_WORLD_SIZE=2 "$dir/bin/saescale" info > /dev/null 2> "$tmp/err"; then
  fail "started as one of 2 ranks, the MPI-free binary did not refuse"
fi
grep -q 'built without MPI' "$tmp/err" || fail "no clear error as one of 2 ranks: $(cat "$tmp/err")"
[ "$(wc -l < "$tmp/err")" -eq 1 ] || fail "the refusal is not one line: $(cat "$tmp/err")"

# The GPU check from the unpacked bundle: info, device tests, the study, summary, report.
"${clean_env[@]}" GPU_CHECK_OUT="$tmp/check" PYTHON="$python" "$dir/gpu-check" ||
  fail "the GPU check (its log: above)"
grep -q '^mode: host' "$tmp/check/status.txt" || fail "the check did not run in host mode"
runs=$(ls "$tmp/check/results"/*.json | wc -l)
[ "$runs" -eq 20 ] || fail "expected 20 study runs (5 variants x dense, sparse, 2 widths), got $runs"
grep -q '| jumprelu | ' "$tmp/check/summary.md" || fail "summary.md has no JumpReLU row"
[ -f "$tmp/check/report/report.html" ] || fail "no report"
echo "bundle check: passed ($(stat -c %s "$tmp/bundle.tar.gz") bytes; the GPU check took $(sed -n 's/^seconds: //p' "$tmp/check/status.txt") s)"
