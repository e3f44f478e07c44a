"""Scaling tables: the same run on several process grids, against its one-rank run."""

from __future__ import annotations

import math
from typing import Any


def efficiency(kind: str, t0: float, t: float, p0: int, p: int) -> tuple[float, float, float]:
    """(speedup, parallel efficiency, Karp-Flatt serial fraction) of time t on p ranks against
    time t0 on the base p0 ranks.

    Strong scaling (fixed global problem): speedup S = t0/t, efficiency S p0/p. Weak scaling
    (fixed work per rank): efficiency t0/t, and the speedup is the scaled speedup (p/p0) t0/t.
    The Karp-Flatt metric e = (1/S - 1/q) / (1 - 1/q), q = p/p0, is the serial fraction that
    would explain S; a growing e means overhead that grows with the ranks. NaN at p = p0.
    """
    if kind not in ("weak", "strong"):
        raise ValueError(f"unknown scaling kind {kind!r}")
    q = p / p0
    if kind == "strong":
        speedup = t0 / t
        eff = speedup / q
    else:
        eff = t0 / t
        speedup = q * eff
    serial = (1 / speedup - 1 / q) / (1 - 1 / q) if q != 1 else math.nan
    return speedup, eff, serial


def _grid(result: dict[str, Any]) -> tuple[int, int]:
    grid = result.get("context", {}).get("grid", {}) or {}
    return int(grid.get("dp", 1) or 1), int(grid.get("lp", 1) or 1)


def scaling_rows(results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per run: grid, median step, speedup and efficiency against the one-rank run of the
    same variant and shape (strong scaling: the global batch is fixed), the time in
    communication phases (sum of the comm_* phase medians, max over ranks) and the bytes each rank
    sends per step."""
    def key(r: dict[str, Any]) -> tuple:
        c = r.get("config", {})
        return (c.get("variant"), c.get("d_model"), c.get("width"), c.get("batch_size"))

    base: dict[tuple, float] = {}
    for r in results:
        if _grid(r) == (1, 1):
            base[key(r)] = r["timing"]["step_s"]["median"]
    header = ["variant", "grid", "ranks", "step ms", "speedup", "efficiency", "comm ms", "comm %",
              "sent MiB/step"]
    rows = []
    for r in sorted(results, key=lambda r: (str(key(r)[0]), _grid(r)[0] * _grid(r)[1], _grid(r)[1])):
        dp, lp = _grid(r)
        timing = r.get("timing", {})
        step = timing.get("step_s", {}).get("median")
        comm = sum(s.get("median", 0.0) for name, s in timing.get("phases_s", {}).items()
                   if name.startswith("comm_"))
        sent = sum(v.get("sent_bytes_per_step", 0.0) for v in timing.get("communication", {}).values())
        one = base.get(key(r), math.nan)
        speedup = efficiency("strong", one, step, 1, dp * lp)[0] if step else math.nan
        rows.append([
            str(key(r)[0]), f"dp {dp} x lp {lp}", str(dp * lp),
            f"{step * 1e3:.2f}" if step else "-",
            "-" if math.isnan(speedup) else f"{speedup:.2f}x",
            "-" if math.isnan(speedup) else f"{100 * speedup / (dp * lp):.0f}%",
            f"{comm * 1e3:.2f}", f"{100 * comm / step:.1f}%" if step else "-",
            f"{sent / 2**20:.2f}",
        ])
    return header, rows


def format_scaling(results: list[dict[str, Any]], markdown: bool = False) -> str:
    header, rows = scaling_rows(results)
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join([":---", ":---"] + ["---:"] * (len(header) - 2)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])
