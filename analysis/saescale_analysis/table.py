"""Fixed-width and markdown comparison tables of saescale runs."""

from __future__ import annotations

import math
import os
from typing import Any

import pandas as pd

_CONFIG_KEYS = ["d_model", "width", "batch_size", "ranks"]


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(float(value) * scale, spec)


def table_rows(df: pd.DataFrame, relative_to: str = "jumprelu") -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells, sorted by variant name.

    The "vs <relative_to>" column is the ratio of the run's median step time to
    the median step time of the reference variant with the same
    d_model/width/batch_size/ranks, or "-" if there is no such reference run.
    A "config" column is added when the frame mixes several configurations.
    """
    df = df.sort_values(["variant", *_CONFIG_KEYS], kind="stable").reset_index(drop=True)
    configs = pd.Series(
        ["x".join("?" if pd.isna(v) else str(v) for v in vals)
         for vals in df[_CONFIG_KEYS].itertuples(index=False)],
        dtype=object,
    )
    ref = df.loc[df["variant"] == relative_to, "step_median_s"].groupby(configs).median()
    multi_config = configs.nunique() > 1

    header = ["variant", *(["config"] if multi_config else []), "step ms (median)", "p10-p90 ms",
              "tokens/s", f"vs {relative_to}", "FVU", "L0", "dead %", "MMCS"]
    rows = []
    for i, r in df.iterrows():
        base = ref.get(configs[i], math.nan)
        ratio = r["step_median_s"] / base if base > 0 else math.nan
        p10, p90 = _fmt(r["step_p10_s"], ".3f", 1e3), _fmt(r["step_p90_s"], ".3f", 1e3)
        rows.append([
            str(r["variant"]),
            *([configs[i]] if multi_config else []),
            _fmt(r["step_median_s"], ".3f", 1e3),
            "-" if p10 == p90 == "-" else f"{p10}-{p90}",
            _fmt(r["tokens_per_s"], ",.0f"),
            "-" if math.isnan(ratio) else f"{ratio:.2f}x",
            _fmt(r["fvu"], ".4f"),
            _fmt(r["l0"], ".1f"),
            _fmt(r["dead_fraction"], ".2f", 100.0),
            _fmt(r["mmcs"], ".3f"),
        ])
    return header, rows


def format_table(df: pd.DataFrame, relative_to: str = "jumprelu", markdown: bool = False) -> str:
    """Render runs as a plain fixed-width table (or a markdown table)."""
    header, rows = table_rows(df, relative_to)
    # Text columns (variant, config) are left-aligned, numbers right-aligned.
    left = [h in ("variant", "config") for h in header]
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join(":---" if l else "---:" for l in left) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if l else c.rjust(w)
                         for c, w, l in zip(cells, widths, left)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def format_phases(result: dict) -> str:
    """Per-phase breakdown of one run: median and p10-p90 in ms, share of the median step, and the
    rates the phase achieved against its work model (GFLOP/s for GEMMs, GB/s otherwise), with the
    run's in-run ceilings (the GEMMs alone, a stream copy) for comparison.

    Phase medians need not add up exactly to the step median (each is a median of its own; the
    means do add up).
    """
    timing = result.get("timing", {})
    step = timing.get("step_s", {}).get("median")
    phases = timing.get("phases_s", {})
    cfg = result.get("config", {})
    head = (f"{cfg.get('variant', '?')}: d={cfg.get('d_model')} M={cfg.get('width')} "
            f"B={cfg.get('batch_size')}  step median "
            + (f"{step * 1e3:.2f} ms" if step else "-"))
    floor, ratio = timing.get("gemm_floor_s"), timing.get("floor_ratio")
    if floor is not None and ratio is not None:
        head += f"  GEMM floor {floor * 1e3:.2f} ms  floor_ratio {ratio:.3f}"
    ceilings = timing.get("ceilings") or {}
    gemm_peak, copy_peak = ceilings.get("gemm_gflops_per_s"), ceilings.get("stream_copy_gbytes_per_s")
    lines = [head]
    if gemm_peak or copy_peak:
        lines.append(f"  ceilings: GEMMs alone {_fmt(gemm_peak, '.1f')} GFLOP/s, "
                     f"stream copy {_fmt(copy_peak, '.1f')} GB/s")
    lines.append(f"  {'phase':<28} {'median ms':>10} {'p10-p90 ms':>17} {'% of step':>9} "
                 f"{'GFLOP/s':>9} {'GB/s':>8} {'% ceiling':>9}")
    ordered = sorted(phases.items(), key=lambda kv: -kv[1].get("median", 0.0))
    for name, s in ordered:
        med = s.get("median", 0.0)
        share = f"{100 * med / step:8.1f}%" if step else "-"
        spread = f"{s.get('p10', 0) * 1e3:.2f}-{s.get('p90', 0) * 1e3:.2f}"
        gflops, gbytes = s.get("gflops_per_s"), s.get("gbytes_per_s")
        # GEMM phases against the GEMMs alone, the rest against the copy; comm phases have none.
        if name.endswith("_gemm") and gflops and gemm_peak:
            ceiling = f"{100 * gflops / gemm_peak:8.0f}%"
        elif not name.startswith("comm_") and not name.endswith("_gemm") and gbytes and copy_peak:
            ceiling = f"{100 * gbytes / copy_peak:8.0f}%"
        else:
            ceiling = "-"
        lines.append(f"  {name:<28} {med * 1e3:>10.2f} {spread:>17} {share:>9} "
                     f"{_fmt(gflops, '.1f'):>9} {_fmt(gbytes, '.2f'):>8} {ceiling:>9}")
    total = sum(s.get("median", 0.0) for s in phases.values())
    if step:
        lines.append(f"  {'sum of phase medians':<28} {total * 1e3:>10.2f} {'':>17} {100 * total / step:8.1f}%")
    memory = result.get("memory", {})
    peak, planned = memory.get("peak_device_bytes"), memory.get("breakdown_total")
    if peak and planned:
        lines.append(f"  memory: measured peak {peak / 2**20:.1f} MiB, analytic breakdown "
                     f"{planned / 2**20:.1f} MiB ({100 * planned / peak:.1f}%)")
    return "\n".join(lines)


#: Where a step's time goes, in stacking order (the groups of :func:`phase_group`).
PHASE_GROUPS = ("GEMMs", "activation/selection", "auxiliary", "optimizer", "communication", "other")


def phase_group(name: str) -> str:
    """The group of one timed phase: the GEMMs, the elementwise activation or top-k selection,
    the auxiliary passes (Gated's auxiliary reconstruction, AuxK), the optimizer, the
    collectives (comm_*), and the rest (loss, bias gradients, checks, projections, ...)."""
    if name.endswith("_gemm"):
        return "GEMMs"
    if name == "activation":
        return "activation/selection"
    if name in ("auxiliary_forward", "auxiliary_backward"):
        return "auxiliary"
    if name == "optimizer":
        return "optimizer"
    if name.startswith("comm_"):
        return "communication"
    return "other"


def group_phases(phases: dict[str, dict[str, Any]], stat: str = "median") -> dict[str, float]:
    """Sum of one statistic (median, mean, ...) of the phases of each group, in
    :data:`PHASE_GROUPS` order (0.0 for a group without phases)."""
    out = dict.fromkeys(PHASE_GROUPS, 0.0)
    for name, s in phases.items():
        out[phase_group(name)] += s.get(stat) or 0.0
    return out


def format_costs(results: list[dict], markdown: bool = False) -> str:
    """One row per run: where the step's time goes (GEMMs, activation/selection, auxiliary
    passes, optimizer, the rest, as % of the median step), the GEMMs' achieved rate against the
    run's own GEMM ceiling, and the measured memory peak against the analytic breakdown."""
    header = ["run", "step ms", "GEMMs %", "activation %", "auxiliary %", "optimizer %",
              "other %", "GEMM GFLOP/s", "of ceiling", "peak MiB", "breakdown MiB"]
    rows = []
    for r in results:
        timing = r.get("timing", {})
        step = timing.get("step_s", {}).get("median") or math.nan
        phases = timing.get("phases_s", {})
        groups = group_phases(phases)
        gemm, act, aux, opt = (groups[g] for g in PHASE_GROUPS[:4])
        other = groups["communication"] + groups["other"]  # this table keeps collectives in "other"
        flops = sum(s.get("flops") or 0.0 for k, s in phases.items() if k.endswith("_gemm"))
        rate = flops / gemm / 1e9 if gemm > 0 else math.nan
        ceiling = (timing.get("ceilings") or {}).get("gemm_gflops_per_s")
        memory = r.get("memory", {})
        peak, planned = memory.get("peak_device_bytes"), memory.get("breakdown_total")
        name = os.path.splitext(os.path.basename(r.get("_path", "?")))[0]
        rows.append([name, _fmt(step, ".1f", 1e3),
                     *(_fmt(v / step, ".1f", 100.0) for v in (gemm, act, aux, opt, other)),
                     _fmt(rate, ".1f"), "-" if not ceiling else f"{100 * rate / ceiling:.0f}%",
                     _fmt(peak, ".1f", 1 / 2**20), _fmt(planned, ".1f", 1 / 2**20)])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|:---|" + "---:|" * (len(header) - 1)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])
