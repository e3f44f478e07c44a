#!/usr/bin/env python3
"""Checks saescale-kernels' Google Benchmark JSON files (the `perf` ctest saescale_kernels_compare).

Each file must be valid JSON without duplicate keys, hold the run context (build, Kokkos, MPI, grid,
shape), and have a benchmark for every kernel of the training step with its work counters and every
size of the MPI_Allreduce sweep; then Google Benchmark's compare.py must accept the pair unchanged.

usage: check_kernels_json.py --compare /usr/share/benchmark/compare.py ONE_RANK.json TWO_RANKS.json
"""
import argparse
import json
import os
import subprocess
import sys

# Benchmark name -> counters it must report (positive). Names as benchmarks/kernels.cpp registers.
WORK = ("FLOP/s", "bytes_per_second")
SELECTION = ("bytes_per_second", "k")
KERNELS = {
    **{f"activation_forward/{v}": WORK for v in ("relu", "jumprelu", "gated")},
    **{f"activation_backward/{v}": WORK for v in ("relu", "jumprelu", "gated", "topk")},
    **{f"{s}/{a}": SELECTION for s in ("row_topk", "batch_topk") for a in ("radix", "bisect")},
    **{f"gemm/{g}": WORK for g in ("encode", "decode", "backward_decoder",
                                   "backward_activation", "backward_encoder")},
    "adam/beta1:0": WORK,
    "adam/beta1:0.9": WORK,
    "renormalize_rows": WORK,
    "project_decoder_gradient": WORK,
    **{f"sparse/{n}": ("bytes_per_second", "k") for n in ("compact_rows", "latent_index")},
    **{f"sparse/{n}": WORK + ("k",) for n in ("decode", "decoder_gradient_atomic",
                                              "decoder_gradient_sorted", "activation_gradient",
                                              "encoder_gradient")},
}
ALLREDUCE_BYTES = [8 * 4**i for i in range(12)] + [64 << 20]  # 8 B, x4 ... 32 MiB, 64 MiB
CONTEXT = ("saescale_version", "git_commit", "compiler", "build_type", "kokkos_version",
           "kokkos_exec_space", "mpi_library", "ranks", "grid.dp", "grid.lp", "blas",
           "gemm_backend", "shape.B", "shape.d", "shape.M", "topk.k")


def no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"duplicate keys {duplicates}")
    return dict(pairs)


def check(path, ranks):
    """Returns the problems found in one file (empty when it passes)."""
    try:
        with open(path) as f:
            doc = json.load(f, object_pairs_hook=no_duplicate_keys)
    except (OSError, ValueError) as e:
        return [f"cannot read it as JSON: {e}"]
    problems = []
    context = doc.get("context", {})
    problems += [f"context has no '{key}'" for key in CONTEXT if key not in context]
    if context.get("ranks") != str(ranks):
        problems.append(f"context ranks is {context.get('ranks')!r}, expected {ranks}")
    runs = {b["name"]: b for b in doc.get("benchmarks", []) if b.get("run_type") == "iteration"}
    for name, counters in KERNELS.items():
        run = runs.get(name + "/real_time")
        if run is None:
            problems.append(f"no benchmark {name}")
            continue
        problems += [f"{name}: counter {c} missing or not positive"
                     for c in counters if not run.get(c, 0) > 0]
    for size in ALLREDUCE_BYTES:
        name = next((n for n in runs if n.startswith(f"MPI_Allreduce/{size}/")), None)
        if name is None:
            problems.append(f"no MPI_Allreduce benchmark of {size} bytes")
            continue
        run = runs[name]
        if run.get("bytes") != size or not run.get("algbw", 0) > 0:
            problems.append(f"{name}: bytes or algbw wrong ({run.get('bytes')}, {run.get('algbw')})")
        if (run.get("busbw", -1) > 0) != (ranks > 1):  # 2(n-1)/n: 0 on one rank
            problems.append(f"{name}: busbw {run.get('busbw')} on {ranks} rank(s)")
        if "2(n-1)/n" not in run.get("label", ""):
            problems.append(f"{name}: label does not state the busbw factor")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", required=True, help="Google Benchmark's compare.py")
    parser.add_argument("one_rank")
    parser.add_argument("two_ranks")
    args = parser.parse_args()
    if not os.path.isfile(args.compare):
        print(f"Google Benchmark's compare.py not found at {args.compare} "
              "(Debian: apt-get install libbenchmark-tools)", file=sys.stderr)
        return 1
    failed = False
    for path, ranks in ((args.one_rank, 1), (args.two_ranks, 2)):
        for problem in check(path, ranks):
            print(f"{path}: {problem}", file=sys.stderr)
            failed = True
    compare = subprocess.run([sys.executable, args.compare, "benchmarks", args.one_rank,
                              args.two_ranks], capture_output=True, text=True)
    print(compare.stdout)
    if compare.returncode != 0:
        print(f"{args.compare} exited {compare.returncode}:\n{compare.stderr}", file=sys.stderr)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
