#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/CMakeLists.txt, clang, ASan + UBSan) and fuzzes each
# parser of untrusted input for a bounded time, starting from a copy of its seed corpus in
# tests/fuzz/corpus/ (the repository's corpus is never modified). Exits non-zero on any crash,
# leak, timeout, out-of-memory or sanitizer report, leaving the input under
# $FUZZ_BUILD/run/<target>/artifacts/.
#
#   FUZZ_SECONDS  seconds per target (default 20)
#   FUZZ_BUILD    build and work directory (default <repo>/build-fuzz)
#   FUZZ_TARGETS  which targets (default "npy safetensors config checkpoint manifest")
#   FUZZ_JOBS     parallel build jobs (default 2)
#   FUZZ_CXX      the clang++ to use (default clang++)
#   FUZZ_CMAKE_ARGS  extra configure arguments, e.g. -DFUZZ_TOML_HEADER_ONLY=ON (see CMakeLists.txt)
#
# Reproduce a saved input: $FUZZ_BUILD/fuzz_<target> <file>. Inputs in tests/fuzz/crashes/<target>/
# are replayed first as regression tests.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${FUZZ_BUILD:-$root/build-fuzz}
seconds=${FUZZ_SECONDS:-20}
targets=${FUZZ_TARGETS:-npy safetensors config checkpoint manifest}
jobs=${FUZZ_JOBS:-2}
cxx=${FUZZ_CXX:-clang++}

if ! command -v "$cxx" >/dev/null 2>&1; then
  echo "fuzz: error: '$cxx' not found: the fuzz targets need clang with libFuzzer" \
    "(Debian: apt-get install clang libclang-rt-dev)" >&2
  exit 2
fi
if ! command -v cmake >/dev/null 2>&1; then
  echo "fuzz: error: cmake not found (Debian: apt-get install cmake)" >&2
  exit 2
fi

start=$SECONDS
mkdir -p "$build"
echo "fuzz: building $build (log: $build/build.log)"
# shellcheck disable=SC2086 # FUZZ_CMAKE_ARGS is a list of arguments
if ! { cmake -S "$here" -B "$build" -DCMAKE_CXX_COMPILER="$cxx" ${FUZZ_CMAKE_ARGS:-} &&
  cmake --build "$build" -j "$jobs"; } >"$build/build.log" 2>&1; then
  tail -n 40 "$build/build.log" >&2
  echo "fuzz: error: build failed (log: $build/build.log)" >&2
  exit 2
fi
echo "fuzz: built in $((SECONDS - start)) s; $seconds s per target"

# halt_on_error: the first report ends the run, so its input is the saved artifact.
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1:halt_on_error=1
export UBSAN_OPTIONS=${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}print_stacktrace=1:halt_on_error=1

# Reports that fail a run even if the exit status were 0.
report_re='ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|libFuzzer)|runtime error:|FUZZ_CHECK failed|deadly signal'

# The stat::<name> value from libFuzzer's final statistics, or "?".
final_stat() { sed -n "s/^stat::$1: *//p" "$2" | tail -n 1 | grep . || echo "?"; }

# Why a run failed, from its log.
failure_kind() {
  local log=$1
  if grep -q 'ERROR: LeakSanitizer' "$log"; then echo leak
  elif grep -q 'ERROR: libFuzzer: timeout' "$log"; then echo timeout
  elif grep -q 'ERROR: libFuzzer: out-of-memory' "$log"; then echo out-of-memory
  elif grep -q 'ERROR: AddressSanitizer' "$log"; then echo "AddressSanitizer"
  elif grep -q 'runtime error:' "$log"; then echo "UndefinedBehaviorSanitizer"
  elif grep -q 'FUZZ_CHECK failed' "$log"; then echo "broken parser promise"
  elif grep -q 'uncaught exception\|terminate called' "$log"; then echo "uncaught exception"
  else echo crash
  fi
}

# Prints the report part of a failed run's log.
show_report() {
  local log=$1 first
  first=$(grep -n -m 1 -E "$report_re|terminate called" "$log" | cut -d: -f1 || true)
  first=${first:-1}
  sed -n "${first},$((first + 79))p" "$log" >&2
}

failed=()
summary=()
for t in $targets; do
  bin=$build/fuzz_$t
  work=$build/run/$t
  log=$work/fuzz.log
  rm -rf "$work"
  mkdir -p "$work/corpus" "$work/artifacts"
  cp -R "$here/corpus/$t/." "$work/corpus/"
  dict=()
  [ -f "$here/$t.dict" ] && dict=(-dict="$here/$t.dict")

  # Known crashers first (each must now be handled), one run per file so one failure does not
  # hide the others; the fuzzing below runs either way.
  for input in "$here/crashes/$t"/*; do
    [ -f "$input" ] || continue
    rlog=$work/regression-$(basename "$input").log
    rc=0
    "$bin" -timeout=5 -rss_limit_mb=2048 "$input" >"$rlog" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ] || grep -qE "$report_re" "$rlog"; then
      show_report "$rlog"
      summary+=("$(printf 'fuzz %-12s FAIL  regression input %s (%s, exit %s) log: %s' "$t" \
        "${input#"$root"/}" "$(failure_kind "$rlog")" "$rc" "$rlog")")
      [[ " ${failed[*]-} " == *" $t "* ]] || failed+=("$t")
    fi
  done

  rc=0
  "$bin" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=5 -print_final_stats=1 \
    "${dict[@]}" -artifact_prefix="$work/artifacts/" "$work/corpus" >"$log" 2>&1 || rc=$?

  execs=$(final_stat number_of_executed_units "$log")
  rate=$(final_stat average_exec_per_sec "$log")
  # The last status line, e.g. "#123456 DONE cov: 412 ft: 1503 corp: 180/9021b ...".
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -n 1 || true)
  edges=$(echo "$cov" | awk '{print $2}')
  features=$(echo "$cov" | awk '{print $4}')
  corpus=$(echo "$cov" | awk '{print $6}')
  seeds=$(find "$here/corpus/$t" -type f | wc -l)
  stats=$(printf '%s execs (%s/s)  cov %s edges  ft %s  corpus %s -> %s' "$execs" "$rate" \
    "${edges:-?}" "${features:-?}" "$seeds" "${corpus:-?}")
  if [ "$rc" -ne 0 ] || grep -qE "$report_re" "$log"; then
    show_report "$log"
    inputs=$(find "$work/artifacts" -type f | tr '\n' ' ')
    summary+=("$(printf 'fuzz %-12s FAIL  %s  (%s, exit %s) input: %s log: %s' "$t" "$stats" \
      "$(failure_kind "$log")" "$rc" "${inputs:-none saved}" "$log")")
    [[ " ${failed[*]-} " == *" $t "* ]] || failed+=("$t")
  else
    summary+=("$(printf 'fuzz %-12s OK    %s' "$t" "$stats")")
  fi
done

echo "fuzz: summary ($((SECONDS - start)) s in all)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (reproduce: $build/fuzz_<target> <input>)" >&2
  exit 1
fi
echo "fuzz: all clean"
