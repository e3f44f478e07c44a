#!/usr/bin/env python3
"""The GPU check's summary (runs/gpu-check): Python's standard library only, so it runs wherever
the bundle does.

From DIR/results/*.json it prints markdown:
  - per dense precision: each variant's step, its ratio to JumpReLU's, MFU, FVU and L0, and for
    TopK/BatchTopK the selection's time relative to the encoder GEMM;
  - the sparse step of each variant, relative to its dense step at the same precision;
  - the width sweep;
  - the issue's three targets (dense JumpReLU bf16 MFU >= 70%, sparse JumpReLU <= 0.3x dense,
    TopK selection <= 0.25x its encoder GEMM), each met or missed, with where the time goes.

MFU counts the step's five GEMMs (encode, decode and the three backward products, 2 B d M FLOPs
each: the same useful work for every variant) against the card's bf16 dense peak
(analysis/saescale_analysis/peaks.py). Without a known peak (host builds) it is left out.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["jumprelu", "relu", "gated", "topk", "batchtopk"]


def load_peaks():
    path = HERE.parent / "analysis" / "saescale_analysis" / "peaks.py"
    spec = importlib.util.spec_from_file_location("saescale_peaks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.peak_for


def load(folder: Path) -> list[dict]:
    runs = []
    for path in sorted((folder / "results").glob("*.json")):
        try:
            j = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"gpu_check_summary: skipping {path}: {e}", file=sys.stderr)
            continue
        if j.get("status") != "ok":
            continue
        c, t = j["config"], j["timing"]
        phases = t.get("phases_s", {})
        med = lambda p: (phases.get(p) or {}).get("median")  # noqa: E731
        runs.append({
            "name": path.stem, "variant": c["variant"], "precision": c["precision"],
            "sparse": c.get("sparse", "off") != "off", "d": c["d_model"], "M": c["width"],
            "B": c["batch_size"], "step": t["step_s"]["median"], "fvu": j["fidelity"]["fvu"],
            "l0": j["fidelity"]["l0"], "encode": med("encode_gemm"),
            "selection": med("activation") if c["variant"] in ("topk", "batchtopk") else None,
            "phases": {p: v.get("median", 0) for p, v in phases.items()},
            "gpu": (j["context"].get("gpu") or {}).get("name")
                   if isinstance(j["context"].get("gpu"), dict) else None,
            "sweep": j["context"].get("tags", {}).get("sweep"),
        })
    return runs


def gemm_flops(r: dict) -> float:
    return 5 * 2.0 * r["B"] * r["d"] * r["M"]


def fmt(v, spec=".3f", none="-"):
    return none if v is None else format(v, spec)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def where_time_goes(r: dict, top: int = 4) -> str:
    total = r["step"] or 1
    parts = sorted(r["phases"].items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{p} {100 * v / total:.0f}%" for p, v in parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="the GPU check's folder (results/ inside)")
    ap.add_argument("--full-width", type=int, required=True, help="M of the variant study")
    ap.add_argument("--dense", default="bf16", help="precision of the width sweep and targets")
    ap.add_argument("--sparse", default="bf16", help="precision of the sparse runs")
    a = ap.parse_args(argv)
    runs = load(a.folder)
    if not runs:
        print(f"gpu_check_summary: no successful runs in {a.folder}/results", file=sys.stderr)
        return 1
    peak_for = load_peaks()
    gpu = next((r["gpu"] for r in runs if r["gpu"]), None)
    peak = peak_for(gpu)
    bf16_peak = peak["bf16"] * 1e12 if peak else None
    out = [f"# GPU check summary\n\ndevice: {gpu or 'none (host build)'}; bf16 dense peak: "
           + (f"{peak['bf16']} TFLOP/s ({peak['source']})" if peak else "unknown") + "\n",
           "MFU = the step's five GEMMs (5 x 2 B d M FLOPs) / median step / bf16 dense peak. "
           "Ratios compare runs of this one invocation.\n"]
    by = {(r["variant"], r["precision"], r["sparse"], r["M"]): r for r in runs}
    mfu = lambda r: gemm_flops(r) / r["step"] / bf16_peak if bf16_peak and r["step"] else None  # noqa

    for precision in ["fp32", "tf32", "bf16"]:
        dense = [by.get((v, precision, False, a.full_width)) for v in ORDER]
        if not any(dense):
            continue
        ref = by.get(("jumprelu", precision, False, a.full_width))
        rows = []
        for r in dense:
            if r is None:
                continue
            rows.append([r["variant"], fmt(r["step"] * 1e3, ".2f"),
                         fmt(r["step"] / ref["step"] if ref else None, ".2f") + "x",
                         fmt(100 * mfu(r) if mfu(r) is not None else None, ".1f"),
                         fmt(r["fvu"], ".4f"), fmt(r["l0"], ".1f"),
                         fmt(r["selection"] / r["encode"] if r["selection"] and r["encode"]
                             else None, ".3f")])
        out.append(f"## Dense step, {precision} (d {runs[0]['d']}, M {a.full_width}, "
                   f"B {runs[0]['B']})\n")
        out.append(table(["variant", "step ms", "vs JumpReLU", "MFU %", "FVU", "L0",
                          "selection / encoder GEMM"], rows) + "\n")

    sparse_rows = []
    for v in ORDER:
        s = by.get((v, a.sparse, True, a.full_width))
        dense = by.get((v, a.sparse, False, a.full_width))
        ref = by.get(("jumprelu", a.sparse, True, a.full_width))
        if s:
            sparse_rows.append([v, fmt(s["step"] * 1e3, ".2f"),
                                fmt(s["step"] / dense["step"] if dense else None, ".3f") + "x",
                                fmt(s["step"] / ref["step"] if ref else None, ".2f") + "x",
                                fmt(s["fvu"], ".4f"), fmt(s["l0"], ".1f")])
    if sparse_rows:
        out.append(f"## Sparse step (--sparse on), {a.sparse}\n")
        out.append(table(["variant", "step ms", "vs its dense step", "vs JumpReLU sparse", "FVU",
                          "L0"], sparse_rows) + "\n")

    widths = sorted({r["M"] for r in runs if not r["sparse"] and r["precision"] == a.dense})
    if len(widths) > 1:
        rows = []
        for v in ORDER:
            cells = []
            for w in widths:
                r, ref = by.get((v, a.dense, False, w)), by.get(("jumprelu", a.dense, False, w))
                cells.append(f"{r['step'] * 1e3:.2f} ({r['step'] / ref['step']:.2f}x)"
                             if r and ref else "-")
            rows.append([v] + cells)
        out.append(f"## Width sweep, dense {a.dense}: step ms (vs JumpReLU)\n")
        out.append(table(["variant"] + [f"M {w}" for w in widths], rows) + "\n")

    out.append("## Targets\n")
    j_dense = by.get(("jumprelu", a.dense, False, a.full_width))
    j_sparse = by.get(("jumprelu", a.sparse, True, a.full_width))
    j_sparse_dense = by.get(("jumprelu", a.sparse, False, a.full_width))
    topk = by.get(("topk", a.dense, False, a.full_width))
    targets = []
    if j_dense and mfu(j_dense) is not None:
        m = mfu(j_dense)
        targets.append((f"dense JumpReLU {a.dense} MFU >= 70%", f"{100 * m:.1f}%", m >= 0.70,
                        j_dense))
    else:
        targets.append((f"dense JumpReLU {a.dense} MFU >= 70%", "no GPU peak known", None, None))
    if j_sparse and j_sparse_dense:
        ratio = j_sparse["step"] / j_sparse_dense["step"]
        targets.append(("sparse JumpReLU step <= 0.3x dense", f"{ratio:.3f}x", ratio <= 0.3,
                        j_sparse))
    if topk and topk["selection"] and topk["encode"]:
        ratio = topk["selection"] / topk["encode"]
        targets.append(("TopK selection <= 0.25x encoder GEMM", f"{ratio:.3f}x", ratio <= 0.25,
                        topk))
    for what, value, met, run in targets:
        verdict = "met" if met else ("missed" if met is not None else "not measured")
        line = f"- {what}: {value} ({verdict})"
        if met is False:
            line += f"; where the step goes ({run['name']}): {where_time_goes(run)}"
        out.append(line)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
