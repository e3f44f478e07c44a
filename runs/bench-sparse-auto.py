"""Does --sparse auto pick the faster path on a loaded machine? One invocation, one machine.

    python3 runs/bench-sparse-auto.py [--saescale build/bin/saescale] [--shape 512,8192,2048]

Under each load (idle; one busy-loop process per core given in --loads), for rows of L entries
(ReLU started at L0 = L, a learning rate of 1e-12 so that L0 stays there):
  - the truth: the training step's median with --sparse on and with --sparse off, run back to back;
  - the calibration --sparse auto runs at start, repeated --calibrations times, and its crossover.
For each calibration and each L the path auto takes (sparse while L <= crossover) is compared with
the faster one; the regret is how much slower the chosen path's step is than the faster one's.
Prints a table and writes the measurements as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

LEVELS = (16, 64, 128, 160, 192, 256, 512)


def busy() -> None:
    while True:
        pass


def train(binary: str, shape: tuple[int, int, int], args: list[str], steps: int) -> dict:
    d, m, b = shape
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        subprocess.run([binary, "train", "--variant", "relu", "--d-model", str(d), "--width",
                        str(m), "--batch-size", str(b), "--steps", str(steps), "--warmup-steps",
                        "2", "--no-gemm-floor", "--eval-tokens", str(b), "--lr", "1e-12",
                        "--sparse-capacity", "4096", "--out", str(out), *args],
                       check=True, capture_output=True, text=True)
        return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--saescale", default="build/bin/saescale")
    ap.add_argument("--shape", default="512,8192,2048", help="d,M,B")
    ap.add_argument("--loads", default="0,1,2", help="busy processes per condition")
    ap.add_argument("--calibrations", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8, help="steps per truth run (2 more warm up)")
    ap.add_argument("--out", help="write the measurements here (JSON)")
    args = ap.parse_args()
    shape = tuple(int(x) for x in args.shape.split(","))
    results = []
    for load in (int(x) for x in args.loads.split(",")):
        hogs = [multiprocessing.Process(target=busy, daemon=True) for _ in range(load)]
        for h in hogs:
            h.start()
        try:
            truth = {}
            for level in LEVELS:
                start = ["--initial-l0", str(level)]
                on = train(args.saescale, shape, start + ["--sparse", "on"], args.steps + 2)
                off = train(args.saescale, shape, start + ["--sparse", "off"], args.steps + 2)
                truth[level] = {"l0": on["fidelity"]["loss_curve"][-1]["l0"],
                                "sparse_s": on["timing"]["step_s"]["median"],
                                "dense_s": off["timing"]["step_s"]["median"]}
            crossovers = []
            for c in range(args.calibrations):
                r = train(args.saescale, shape, ["--sparse", "auto", "--seed", str(c + 1)], 1)
                crossovers.append(r["timing"]["sparse"]["calibration"]["crossover_entries_per_row"])
        finally:
            for h in hogs:
                h.kill()
        results.append({"load": load, "truth": truth, "crossovers": crossovers})
        print(f"load {load} busy process(es); crossovers "
              f"{', '.join(f'{x:.0f}' for x in crossovers)} entries per row")
        print(f"  {'L':>5s} {'L0':>7s} {'sparse ms':>10s} {'dense ms':>9s} {'faster':>7s} "
              f"{'auto picks (of runs)':>21s} {'worst regret':>13s}")
        for level, t in truth.items():
            faster = "sparse" if t["sparse_s"] < t["dense_s"] else "dense"
            best = min(t["sparse_s"], t["dense_s"])
            picks = ["sparse" if t["l0"] <= x else "dense" for x in crossovers]
            regret = max((t["sparse_s"] if p == "sparse" else t["dense_s"]) / best - 1
                         for p in picks)
            print(f"  {level:5d} {t['l0']:7.1f} {1e3 * t['sparse_s']:10.1f} "
                  f"{1e3 * t['dense_s']:9.1f} {faster:>7s} "
                  f"{picks.count('sparse'):>10d} sparse {picks.count('dense'):>2d} dense "
                  f"{100 * regret:12.1f}%", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"shape": shape, "cores": os.cpu_count(),
                                              "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
