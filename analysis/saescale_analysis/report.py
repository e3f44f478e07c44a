"""A study's report: every results file below a study directory, summarised in report.md and
report.html with PNG figures.

A *study* is a directory of results files (schema saescale.result/1) at any depth; other JSON
files (study.json, allreduce.json, checkpoint manifests) are ignored. Each run belongs to a
sweep and a row: ``context.tags.sweep`` and ``context.tags.row`` where the run was tagged; else
the sweep is the first directory below the study when that is one of :data:`SWEEPS` (otherwise
"variants") and the row is the variant name. Runs of one sweep and row that are the same
benchmark (:class:`regress.BenchKey`: shape, process grid, k, ...) are one *point*: their
per-step times are pooled (repetitions). Only runs with status "ok" enter the figures and
statistics; the others are listed with their reason.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binom

from . import figures
from .regress import BenchKey, bench_key, step_samples
from .results import SCHEMA, PathLike
from .scaling import efficiency
from .sections import Section
from .table import PHASE_GROUPS, group_phases

#: The sweeps a study holds (runs/sweeps/*.tsv), in report order of their sections.
SWEEPS = ("variants", "weak", "strong", "width")

#: The variant whose median step is 1.0 in the breakdown.
REFERENCE = "jumprelu"

#: Confidence level of the interval of each median.
CONFIDENCE = 0.95

#: Phases below this share of the median step are left out of the imbalance tables.
IMBALANCE_MIN_SHARE = 0.02


# --- statistics ---------------------------------------------------------------------------------

def median_ci(samples: Sequence[float], level: float = CONFIDENCE) -> tuple[float, float, float]:
    """Distribution-free confidence interval of the median: (low, high, coverage).

    For n sorted samples x(1) <= ... <= x(n), the interval [x(j+1), x(n-j)] misses the
    population median only when j or fewer samples lie on one side of it, so its coverage is
    1 - 2 P(B <= j) for B ~ Binomial(n, 1/2), whatever the distribution (continuous). j is the
    largest with coverage >= level; the coverage reached is returned (e.g. n = 10: [x(2), x(9)],
    97.9%). Too few samples for the level (n < 6 at 95%) give NaNs.
    """
    x = np.sort(np.asarray(samples, dtype=float))
    n = x.size
    cdf = binom.cdf(np.arange(n), n, 0.5)
    ok = np.flatnonzero(cdf <= (1 - level) / 2)
    if not ok.size:
        return math.nan, math.nan, math.nan
    j = int(ok[-1])
    return float(x[j]), float(x[n - 1 - j]), float(1 - 2 * cdf[j])


def harmonic_mean(rates: Iterable[float]) -> float:
    """The mean of rates over equal amounts of work (Hoefler & Belli: rates are summarised
    with harmonic means, so the result is the rate of the runs taken together)."""
    r = np.asarray(list(rates), dtype=float)
    return float(r.size / np.sum(1.0 / r)) if r.size and np.all(r > 0) else math.nan


# --- the study ----------------------------------------------------------------------------------

def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


@dataclass(eq=False)  # identity: points are hashable, each is one configuration
class Point:
    """One measured configuration: a sweep's row as one benchmark (shape, grid, ...), its
    runs pooled."""

    sweep: str
    row: str
    key: BenchKey
    runs: list[dict[str, Any]]

    @property
    def variant(self) -> str:
        return str(self.runs[0]["config"]["variant"])

    @property
    def grid(self) -> tuple[int, int]:
        return self.key.dp, self.key.lp

    @property
    def ranks(self) -> int:
        return int(self.runs[0]["context"]["ranks"])

    def config(self, key: str) -> Any:
        return self.runs[0]["config"].get(key)

    @cached_property
    def samples(self) -> np.ndarray:
        """Per-step times in seconds, every timed step of every run."""
        return np.concatenate([step_samples(r) for r in self.runs])

    @cached_property
    def median(self) -> float:
        return float(np.median(self.samples))

    @cached_property
    def ci(self) -> tuple[float, float, float]:
        return median_ci(self.samples)

    @cached_property
    def p10_p90(self) -> tuple[float, float]:
        p10, p90 = np.percentile(self.samples, [10, 90])
        return float(p10), float(p90)

    @cached_property
    def tokens_per_s(self) -> float:
        """Harmonic mean of the runs' tokens/s (each: global batch / its median step)."""
        return harmonic_mean(float(_get(r, "timing", "tokens_per_s") or math.nan)
                             for r in self.runs)

    def phases(self, stat: str) -> dict[str, float]:
        """One statistic of every phase (e.g. "median", or "ranks.max"), averaged over runs."""
        keys = stat.split(".")
        out: dict[str, list[float]] = {}
        for r in self.runs:
            for name, s in (_get(r, "timing", "phases_s") or {}).items():
                v = _get(s, *keys)
                if isinstance(v, (int, float)):
                    out.setdefault(name, []).append(float(v))
        return {name: float(np.mean(v)) for name, v in out.items()}

    def stack(self) -> dict[str, float]:
        """Seconds per phase group adding up to the median step: each group's share of the
        summed phase *means* (means add up to the mean step; medians need not) times the
        median step. Without phase times the whole step is "other"."""
        groups = group_phases({k: {"mean": v} for k, v in self.phases("mean").items()}, "mean")
        total = sum(groups.values())
        if total <= 0:
            return {"other": self.median}
        return {g: v / total * self.median for g, v in groups.items()}

    def fidelity(self, key: str) -> float:
        """Median over the runs of one fidelity metric (NaN if absent)."""
        v = [float(x) for r in self.runs if isinstance(x := _get(r, "fidelity", key), (int, float))]
        return float(np.median(v)) if v else math.nan


@dataclass
class LeftOut:
    """A results file kept out of the figures, and why."""

    path: str
    sweep: str
    row: str
    status: str
    reason: str


@dataclass
class Study:
    root: Path
    meta: dict[str, Any]
    results: list[dict[str, Any]]  # every results file, whatever its status
    points: list[Point]
    left_out: list[LeftOut]

    def sweep(self, name: str) -> list[Point]:
        return [p for p in self.points if p.sweep == name]


def _variant_rank(variant: str) -> int:
    order = figures.VARIANT_ORDER
    return order.index(variant) if variant in order else len(order)


def _point_order(p: Point) -> tuple:
    sweep = SWEEPS.index(p.sweep) if p.sweep in SWEEPS else len(SWEEPS)
    return (sweep, p.sweep, _variant_rank(p.variant), p.row, p.ranks, p.grid[1])


def placement(result: dict[str, Any], root: Path) -> tuple[str, str]:
    """(sweep, row) of one run: its tags, else the study's directory layout and its variant."""
    tags = _get(result, "context", "tags")
    tags = tags if isinstance(tags, dict) else {}
    parts = Path(result["_path"]).relative_to(root).parts
    folder = parts[0] if len(parts) > 1 else None
    sweep = tags.get("sweep") or (folder if folder in SWEEPS else "variants")
    row = tags.get("row") or str(_get(result, "config", "variant"))
    return str(sweep), str(row)


def _unusable(result: dict[str, Any]) -> str | None:
    """Why a run with status "ok" cannot be summarised (None if it can)."""
    if not isinstance(_get(result, "config", "variant"), str):
        return "no config.variant"
    for keys in (("context", "ranks"), ("config", "batch_size")):
        if not isinstance(_get(result, *keys), int):
            return f"no {'.'.join(keys)}"
    if not isinstance(_get(result, "timing", "phases_s"), dict):
        return "no timing.phases_s"
    try:
        bench_key(result)
        step_samples(result)
    except (TypeError, ValueError) as e:
        return str(e).removeprefix(f"{result['_path']}: ")
    return None


def load_study(root: PathLike, exclude: PathLike | None = None) -> Study:
    """Every results file below root (except under exclude), grouped into points.

    Raises FileNotFoundError if root is not a directory or holds no results file. A JSON file
    that cannot be parsed is listed as left out (a job killed while writing must not hide the
    rest of the study).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such study directory")
    meta_file = root / "study.json"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    except (OSError, ValueError):
        meta = {}
    excluded = Path(exclude).resolve() if exclude is not None else None
    results, left_out = [], []
    pooled: dict[tuple[str, str, BenchKey], list[dict[str, Any]]] = {}
    for path in sorted(root.rglob("*.json")):
        if excluded is not None and path.resolve().is_relative_to(excluded):
            continue
        rel = str(path.relative_to(root))
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            left_out.append(LeftOut(rel, "-", "-", "unreadable", f"{type(e).__name__}: {e}"))
            continue
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            continue
        data["_path"] = str(path)
        results.append(data)
        sweep, row = placement(data, root)
        status = str(data.get("status"))
        why = (data.get("reason") or "-") if status != "ok" else _unusable(data)
        if status != "ok" or why:
            left_out.append(LeftOut(rel, sweep, row, status, why))
            continue
        pooled.setdefault((sweep, row, bench_key(data)), []).append(data)
    if not results:
        raise FileNotFoundError(f"{root}: no results files (schema {SCHEMA}) in the study")
    points = sorted((Point(s, r, k, runs) for (s, r, k), runs in pooled.items()), key=_point_order)
    return Study(root, meta if isinstance(meta, dict) else {}, results, points, left_out)


# --- formatting ---------------------------------------------------------------------------------

def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def ms(seconds: float | None) -> str:
    """Milliseconds with four significant digits ("-" if missing)."""
    if _missing(seconds):
        return "-"
    v = seconds * 1e3
    return f"{v:,.0f}" if v >= 1000 else f"{v:.4g}"


def _ci_cell(p: Point) -> str:
    lo, hi, _ = p.ci
    return "-" if math.isnan(lo) else f"[{ms(lo)}, {ms(hi)}]"


def _num(v: float | None, spec: str) -> str:
    return "-" if _missing(v) else format(v, spec)


def _mib(v: float | None) -> str:
    return "-" if _missing(v) else f"{v / 2**20:,.2f}"


def _label(p: Point, points: Sequence[Point]) -> str:
    """The row name; where one row holds several benchmarks (untagged runs of one variant),
    with the grid, or the benchmark's label when the grids are the same."""
    same = [q for q in points if q.row == p.row]
    if len(same) == 1:
        return p.row
    if len({q.grid for q in same}) == len(same):
        return f"{p.row} ({p.grid[0]}x{p.grid[1]})"
    return f"{p.row} ({p.key.label})"


def _frame(rows: list[list[str]], header: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=header, dtype=object)


def _distinct(values: Iterable[Any], most: int = 4) -> str:
    seen = list(dict.fromkeys(str(v) for v in values if not _missing(v) and v != ""))
    if not seen:
        return "-"
    if len(seen) > most:
        return "; ".join(seen[:most - 1]) + f"; ... ({len(seen)} values)"
    return "; ".join(seen)


# --- sections -----------------------------------------------------------------------------------

#: What a section builder returns: the section, or one line saying what the study lacked.
Built = Section | str


def setup_section(study: Study) -> Section:
    """Where and how the numbers were measured (Hoefler & Belli: document every factor)."""
    ctx = [r.get("context") or {} for r in study.results]
    runs = [r for p in study.points for r in p.runs]
    tags = [c["tags"] if isinstance(c.get("tags"), dict) else {} for c in ctx]

    def kokkos(c: dict[str, Any]) -> str:
        return (f"{c.get('kokkos_version', '?')} {c.get('kokkos_exec_space', '?')} "
                f"(concurrency {c.get('kokkos_concurrency', '?')})")

    def commit(c: dict[str, Any]) -> str:
        return f"{c.get('git_commit', '?')}{' (dirty)' if c.get('git_dirty') else ''}"

    dates = sorted(str(c["date"]) for c in ctx if c.get("date"))
    jobs = {str(c["slurm_job_id"]) for c in ctx if c.get("slurm_job_id")}
    rows = [
        ["system", _distinct([t.get("system") for t in tags] + [study.meta.get("system")])],
        ["hosts", _distinct(p.get("host") for c in ctx for p in c.get("placement") or [])
         if any(c.get("placement") for c in ctx) else _distinct(c.get("hostname") for c in ctx)],
        ["Slurm", f"{len(jobs)} job(s); nodes {_distinct(c.get('slurm_nodelist') for c in ctx)}"
         if jobs else "not run under Slurm"],
        ["GPU", _distinct(c.get("gpu") or "none" for c in ctx)],
        ["Kokkos", _distinct(kokkos(c) for c in ctx)],
        ["compiler", _distinct(f"{c.get('compiler', '?')} {c.get('build_type', '')} "
                               f"{c.get('cxx_flags', '')}".strip() for c in ctx)],
        ["MPI", _distinct(c.get("mpi_library") for c in ctx)],
        ["GEMMs", _distinct(f"{c.get('gemm_backend', '?')}: "
                            f"{c.get('blas_config') or c.get('blas', '?')}" for c in ctx)],
        ["collectives", _distinct(c.get("comm") for c in ctx)],
        ["git commit", _distinct(commit(c) for c in ctx)],
        ["saescale", _distinct(c.get("saescale_version") for c in ctx)],
        ["ranks", ", ".join(str(v) for v in sorted({int(c.get("ranks") or 1) for c in ctx}))],
        ["dates", f"{dates[0]} to {dates[-1]}" if dates else "-"],
    ]
    what = [f"Study `{study.root}`"]
    if study.meta:
        what.append(", ".join(f"{k} {study.meta[k]}" for k in ("name", "system", "created")
                              if study.meta.get(k)))
        if isinstance(study.meta.get("submissions"), list):
            what.append(f"{len(study.meta['submissions'])} submission(s)")
    what.append(f"{len(study.results)} results file(s): {len(runs)} usable in {len(study.points)} "
                f"measured point(s), {len(study.left_out)} left out")
    warmup = sorted({int(_get(r, "config", "warmup_steps") or 0) for r in runs})
    unfenced = sum(1 for r in runs if not _get(r, "timing", "fenced"))
    timing = (
        "Timing: every phase of a step is bracketed by fences (Kokkos::fence; collectives are "
        "waited for and are phases of their own, `comm_*`), so a phase's time is its own. Each "
        "rank times its own steps and phases; there is no barrier per step (the step's "
        "collectives keep the ranks in step). After training the per-step times are reduced "
        "over the ranks: a step's time is the max over ranks (the slowest rank sets the pace), "
        "each phase's statistics are of its per-step max, and its min/mean/max over ranks show "
        "imbalance. The first steps of each run are warm-up and not timed "
        f"(--warmup-steps {', '.join(map(str, warmup)) or '-'}); the samples are the timed steps.")
    if unfenced:
        timing += (f" {unfenced} run(s) ran with --no-fence: their step times are honest, their "
                   "phase times measure launches only.")
    stats = (
        f"Statistics: medians with a distribution-free {CONFIDENCE:.0%} confidence interval of "
        "the median from binomial order statistics (the interval [x(j+1), x(n-j)] of the sorted "
        "samples with the largest j whose coverage 1 - 2 P(Binomial(n, 1/2) <= j) is still at "
        f"least {CONFIDENCE:.0%}; no assumption on the distribution; it needs n >= 6, and the "
        "exact coverage is in the run table). Repeated runs of one point are pooled, so the "
        "interval covers step-to-step, not run-to-run, variation. tokens/s = global batch / "
        "median step; repeated runs' rates are combined with the harmonic mean. p10/p90 are "
        "percentiles of the step times.")
    return Section("Setup", [". ".join(what) + ".", timing, stats],
                   tables=[("the setup of the runs (every distinct value)",
                            _frame(rows, ["factor", "value"]))])


def left_out_section(study: Study) -> Section | None:
    if not study.left_out:
        return None
    rows = [[x.path, x.sweep, x.row, x.status, x.reason] for x in study.left_out]
    return Section(
        "Runs left out",
        ["Failed, preempted, unreadable or incomplete results files; they are in no figure "
         "or statistic. A preempted row is rerun by resubmitting its job (rows whose results "
         "exist with status ok are skipped)."],
        tables=[("runs left out", _frame(rows, ["file", "sweep", "row", "status", "reason"]))])


def _main_points(study: Study) -> list[Point]:
    """The variants sweep's main rows (`<variant>`, no `@level`)."""
    return [p for p in study.sweep("variants") if "@" not in p.row]


def _reference(p: Point, points: Sequence[Point]) -> Point | None:
    return next((q for q in points if q.row == REFERENCE and q.grid == p.grid), None)


def breakdown_section(study: Study, out: Path) -> Built:
    points = _main_points(study)
    if not points:
        return ("No variants sweep (rows `<variant>`) in the study: no step-time breakdown, "
                "memory, time-to-fidelity or per-variant box plots.")
    labels = [_label(p, points) for p in points]
    refs = [r for r in (_reference(p, points) for p in points) if r is not None]
    relative = len(refs) == len(points)
    # bar heights: ratios to the reference's median step or, without one, milliseconds
    scale = [1 / r.median for r in refs] if relative else [1e3] * len(points)
    stacks = [{g: v * s for g, v in p.stack().items()} for p, s in zip(points, scale)]
    notes = [f"{p.median * s:.2f}x" if relative else f"{ms(p.median)} ms"
             for p, s in zip(points, scale)]
    fig = figures.stacked_bars(
        out / "breakdown.png", [figures.Panel("", labels, stacks, notes)],
        f"median step relative to {REFERENCE}" if relative else "median step (ms)",
        "step time by phase group" + (f" (relative to {REFERENCE})" if relative else ""),
        reference_line=1.0 if relative else None)
    shown = [g for g in PHASE_GROUPS if any(s.get(g, 0) > 0 for s in stacks)]
    rows = []
    for p, label, note in zip(points, labels, notes):
        shares = p.stack()
        rows.append([label, f"{p.ranks}", ms(p.median), _ci_cell(p),
                     note if relative else "-", _num(p.tokens_per_s, ",.0f"),
                     *(f"{100 * shares.get(g, 0.0) / p.median:.1f}" for g in shown)])
    header = ["variant", "ranks", "median ms", f"{CONFIDENCE:.0%} CI ms", f"vs {REFERENCE}",
              "tokens/s", *(f"{g} %" for g in shown)]
    text = []
    if relative:
        base = ", ".join(f"{ms(r.median)} ms" for r in dict.fromkeys(refs))
        text.append(f"Each bar is a variant's median step time divided by {REFERENCE}'s on the "
                    f"same grid ({REFERENCE}'s median step = 1.00 = {base}); the number on it is "
                    "that ratio.")
    else:
        text.append(f"No {REFERENCE} run on every grid measured, so the bars are absolute median "
                    "step times in ms.")
    text.append(
        "Segments split each bar by the phase groups' shares of the summed per-phase means (the "
        "means add up to the step, medians need not): GEMMs = the `*_gemm` phases; "
        "activation/selection = `activation` (TopK and BatchTopK select there); auxiliary = "
        "`auxiliary_forward`/`auxiliary_backward` (Gated's auxiliary reconstruction, AuxK); "
        "optimizer; communication = `comm_*`; other = loss, bias gradients, `variant_backward`, "
        "checks, decoder projection/renormalisation, statistics.")
    return Section("Step time by variant", text,
                   tables=[("median step, its confidence interval and its phase groups (% of the "
                            "step)", _frame(rows, header))],
                   figures=[("step time per variant by phase group", fig)])


_MEMORY_PARTS = tuple(figures.MEMORY_COLOURS)


def memory_section(study: Study, out: Path) -> Built:
    points = _main_points(study)
    if not points:
        return "No variants sweep in the study: no memory comparison."
    labels = [_label(p, points) for p in points]
    peaks = [max((v for r in p.runs
                  if isinstance(v := _get(r, "memory", "peak_device_bytes"), int)), default=None)
             for p in points]
    breakdowns = [{k: float(v) for k, v in (_get(p.runs[0], "memory", "breakdown") or {}).items()
                   if k in _MEMORY_PARTS and isinstance(v, (int, float))} for p in points]
    fig = figures.memory(out / "memory.png", labels, peaks, breakdowns)
    rows = []
    for p, label, peak, parts in zip(points, labels, peaks, breakdowns):
        total = sum(parts.values())
        rss = max(_get(r, "memory", "peak_host_rss_bytes") or 0 for r in p.runs)
        space = _get(p.runs[0], "memory", "device_memory_space") or "-"
        rows.append([label, str(p.ranks), str(space), _mib(peak), _mib(total),
                     f"{100 * total / peak:.0f}%" if peak else "-", _mib(rss or None),
                     *(_mib(parts.get(k)) for k in _MEMORY_PARTS)])
    header = ["variant", "ranks", "space", "measured peak MiB", "analytic MiB", "analytic/peak",
              "host RSS MiB", *(f"{k.replace('_', ' ')} MiB" for k in _MEMORY_PARTS)]
    return Section(
        "Memory per variant",
        ["Per rank. Measured peak: the largest sum of live Kokkos allocations in the device "
         "memory space during the run (every allocation tracked); analytic: the memory model's "
         "breakdown by purpose from the shapes alone. A gap between them is memory the model "
         "does not account for (allocator slack, temporaries)."],
        tables=[("memory per rank", _frame(rows, header))],
        figures=[("memory per rank: measured peak against the analytic breakdown", fig)])


def _level(row: str) -> str:
    """The sparsity level of a variants row (`topk@k16` -> `k16`; "" for a main row)."""
    return row.split("@", 1)[1] if "@" in row else ""


def fvu_l0_section(study: Study, out: Path) -> Built:
    points = [p for p in study.sweep("variants")
              if not math.isnan(p.fidelity("fvu")) and not math.isnan(p.fidelity("l0"))]
    if not points:
        return "No variants sweep with fidelity results in the study: no FVU against L0."
    series: dict[str, list[tuple[float, float, str]]] = {}
    for p in points:
        series.setdefault(p.variant, []).append(
            (p.fidelity("l0"), p.fidelity("fvu"), _level(p.row)))
    fig = figures.fvu_l0(out / "fvu-l0.png", series)
    rows = [[p.row, p.variant, _level(p.row) or "default", _num(p.fidelity("l0"), ".2f"),
             _num(p.fidelity("fvu"), ".4f"), _num(100 * p.fidelity("dead_fraction"), ".1f"),
             _num(p.fidelity("mmcs"), ".3f"), _num(p.fidelity("recovered_fraction"), ".3f")]
            for p in points]
    return Section(
        "Fidelity against sparsity",
        ["Every row of the variants sweep: the main rows (`<variant>`, level \"default\") and the "
         "extra sparsity levels (`<variant>@<level>`). FVU and L0 on the held-out tokens at the "
         "end of training; a curve further down and to the left reconstructs better with fewer "
         "active latents."],
        tables=[("fidelity per row", _frame(rows, ["row", "variant", "level", "L0", "FVU",
                                                   "dead %", "MMCS", "recovered"]))],
        figures=[("FVU against L0 per variant", fig)])


def interpolate_at_l0(points: Sequence[tuple[float, float]], l0: float) -> float | None:
    """A value at `l0` on one variant's frontier: piecewise linear in log L0 between the two
    measured points around it; None outside the measured range (no extrapolation)."""
    pts = sorted((x, y) for x, y in points if x > 0 and not _missing(y))
    if not pts or l0 <= 0 or not pts[0][0] <= l0 <= pts[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= l0 <= x1:
            if x1 == x0:
                return (y0 + y1) / 2
            t = (math.log(l0) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + t * (y1 - y0)
    return pts[0][1]  # a single point, at exactly its L0


def seconds_to_fvu(point: dict[str, Any], target: float) -> float | None:
    """Training time until a run's held-out FVU first reached `target`: the step of its first
    evaluation at or below it (point["curve"]: (step, FVU), the periodic evaluations then the
    final one) times its median step; None if it never did."""
    for step, fvu in point.get("curve", []):
        if fvu <= target:
            return step * point["step_s"]
    return None


def _time_at_l0(pts: Sequence[dict[str, Any]], l0: float, target: float) -> float | None:
    """seconds_to_fvu interpolated in log L0 between the two points around `l0`; None outside
    the measured range or when either of them never reached the target."""
    pts = sorted(pts, key=lambda q: q["l0"])
    exact = [q for q in pts if q["l0"] == l0]
    for q0, q1 in [(exact[0], exact[0])] if exact else zip(pts, pts[1:]):
        if q0["l0"] <= l0 <= q1["l0"]:
            t0, t1 = seconds_to_fvu(q0, target), seconds_to_fvu(q1, target)
            if t0 is None or t1 is None:
                return None
            return interpolate_at_l0([(q0["l0"], t0), (q1["l0"], t1)], l0)
    return None


def matched_l0_rows(frontiers: dict[str, list[dict[str, Any]]],
                    reference: str = REFERENCE) -> list[dict[str, Any]]:
    """Every variant against the reference at the reference's measured L0s: each variant's FVU,
    step time and tokens/s interpolated on its own frontier (points {l0, fvu, step_s,
    tokens_per_s, curve}) to that L0, and the training time it took to reach the reference's
    FVU there (seconds_to_fvu, interpolated the same way). Rows where the L0 lies outside a
    variant's range say so."""
    rows = []
    for ref in sorted(frontiers.get(reference, []), key=lambda q: q["l0"]):
        for variant, pts in frontiers.items():
            at = {key: interpolate_at_l0([(q["l0"], q[key]) for q in pts], ref["l0"])
                  for key in ("fvu", "step_s", "tokens_per_s")}
            at["seconds_to_reference_fvu"] = _time_at_l0(pts, ref["l0"], ref["fvu"])
            rows.append({"l0": ref["l0"], "variant": variant, **at,
                         "fvu_minus_reference": None if at["fvu"] is None
                         else at["fvu"] - ref["fvu"],
                         "step_ratio": None if at["step_s"] is None
                         else at["step_s"] / ref["step_s"]})
    return rows


def _frontiers(study: Study) -> dict[str, list[dict[str, float]]]:
    """Each variant's points (frontier sweep, else the variants sweep) with fidelity and speed."""
    points = study.sweep("frontier") or study.sweep("variants")
    out: dict[str, list[dict[str, float]]] = {}
    for p in points:
        l0, fvu = p.fidelity("l0"), p.fidelity("fvu")
        if _missing(l0) or _missing(fvu) or math.isnan(l0) or math.isnan(fvu):
            continue
        evals = _get(p.runs[0], "fidelity", "eval_curve") or []
        curve = [(int(e["step"]), float(e["fvu"])) for e in evals if not _missing(e.get("fvu"))]
        curve.append((int(p.config("steps")), fvu))  # the final evaluation
        out.setdefault(p.variant, []).append(
            {"l0": l0, "fvu": fvu, "step_s": p.median, "curve": curve,
             "tokens_per_s": float(p.config("batch_size")) / p.median})
    return out


def matched_l0_section(study: Study) -> Built:
    frontiers = _frontiers(study)
    if REFERENCE not in frontiers or len(frontiers) < 2:
        return (f"No sparsity levels of {REFERENCE} and another variant in the study: no "
                "comparison at matched L0.")
    matched = matched_l0_rows(frontiers)
    if all(r["fvu"] is None for r in matched if r["variant"] != REFERENCE):
        return (f"No other variant's measured L0 range covers an L0 that {REFERENCE} reached: no "
                "comparison at matched L0 (sweep more sparsity levels).")
    rows = [[_num(r["l0"], ".2f"), r["variant"], _num(r["fvu"], ".4f"),
             _num(r["fvu_minus_reference"], "+.4f"), _num(r["step_s"] and 1e3 * r["step_s"], ".2f"),
             _num(r["step_ratio"], ".2f"), _num(r["tokens_per_s"], ",.0f"),
             _num(r["seconds_to_reference_fvu"], ".3g")]
            for r in matched]
    return Section(
        f"Variants against {REFERENCE} at matched L0",
        [f"At each L0 that a {REFERENCE} run reached, every variant's FVU, median step and "
         "tokens/s interpolated on its own frontier (piecewise linear in log L0 between its two "
         "measured points around that L0; \"-\" where the L0 lies outside the variant's measured "
         f"range: no extrapolation). FVU − {REFERENCE}: negative reconstructs better at the same "
         f"sparsity; step ÷ {REFERENCE}: above 1 costs more per step. Time to {REFERENCE}'s FVU: "
         "the training time (steps to the first held-out evaluation at or below that FVU, times "
         "the median step) each variant needed to reconstruct as well as "
         f"{REFERENCE} did at that L0 by the end of its run; \"-\" where a run around that L0 "
         "never got there (resolution: --eval-every)."],
        tables=[("at matched L0", _frame(rows, ["L0", "variant", "FVU", f"FVU − {REFERENCE}",
                                                "step ms", f"step ÷ {REFERENCE}", "tokens/s",
                                                f"s to {REFERENCE}'s FVU"]))])


def _first_target_time(p: Point) -> str:
    """Training seconds to the run's first (easiest) --target-fvu, or why there is none."""
    entries = _get(p.runs[0], "fidelity", "time_to_fidelity") or []
    if not entries:
        return ""
    first = max(entries, key=lambda e: float(e["target_fvu"]))
    if not first.get("reached") or first.get("train_s") is None:
        return f"FVU {first['target_fvu']:g}: not reached"
    return f"FVU {first['target_fvu']:g} in {first['train_s']:.3g} s"


def frontier_section(study: Study, out: Path) -> Built:
    points = [p for p in study.sweep("frontier")
              if not math.isnan(p.fidelity("fvu")) and not math.isnan(p.fidelity("l0"))]
    if not points:
        return "No frontier sweep in the study: no frontier per variant."
    by_variant: dict[str, list[Point]] = {}
    for p in points:
        by_variant.setdefault(p.variant, []).append(p)
    figs, rows = [], []
    for variant in sorted(by_variant, key=_variant_rank):
        pts = sorted(by_variant[variant], key=lambda q: q.fidelity("l0"))
        figs.append((f"{variant}: FVU against L0, cost per step, time to the first target",
                     figures.frontier(out / f"frontier-{variant}.png", variant,
                                      [(q.fidelity("l0"), q.fidelity("fvu"), q.median,
                                        _first_target_time(q)) for q in pts])))
        rows += [[q.row, variant, _level(q.row), _num(q.fidelity("l0"), ".2f"),
                  _num(q.fidelity("fvu"), ".4f"), _num(1e3 * q.median, ".2f"),
                  _num(float(q.config("batch_size")) / q.median, ",.0f"),
                  _first_target_time(q) or "-"] for q in pts]
    return Section(
        "Frontier per variant",
        ["The frontier sweep: every variant on the same data for the same tokens at five "
         "sparsity levels. Per variant, FVU against L0 (lower left is better) with the median "
         "step at each level and the training time to the first --target-fvu."],
        tables=[("frontier points", _frame(rows, ["row", "variant", "level", "L0", "FVU",
                                                  "step ms", "tokens/s", "time to target"]))],
        figures=figs)


def time_to_fidelity_section(study: Study, out: Path) -> Built:
    points = [p for p in _main_points(study)
              if any(_get(r, "fidelity", "time_to_fidelity") for r in p.runs)]
    if not points:
        return "No run of the variants sweep recorded time to fidelity (--target-fvu)."
    labels = [_label(p, points) for p in points]
    entries = [{float(e["target_fvu"]): e
                for e in _get(p.runs[0], "fidelity", "time_to_fidelity") or []} for p in points]
    targets = sorted({t for e in entries for t in e}, reverse=True)  # easiest first
    times: dict[str, list[float | str]] = {}
    rows = []
    for p, label, by_target in zip(points, labels, entries):
        values: list[float | str] = []
        cells = []
        for t in targets:
            e = by_target.get(t)
            if e is None:
                values.append("not asked")
                cells.append("not asked")
            elif not e.get("reached") or e.get("train_s") is None:
                values.append("not reached")
                cells.append(f"not reached (final FVU {_num(p.fidelity('fvu'), '.3f')})")
            else:
                values.append(float(e["train_s"]))
                cells.append(f"{e['train_s']:.3g} s (step {e.get('step')}, "
                             f"{_num(e.get('tokens'), ',.0f')} tokens)")
        times[label] = values
        rows.append([label, *cells])
    fig = figures.time_to_fidelity(out / "time-to-fidelity.png", targets, times)
    missing = sum(v == "not reached" for values in times.values() for v in values)
    return Section(
        "Time to fidelity",
        ["Training time (the timed steps only, evaluations excluded) until the held-out FVU first "
         "fell to each target, from the first run of each main row; evaluations every few "
         "steps bound the resolution. "
         + (f"{missing} target(s) were not reached by the end of their run (\"not reached\", "
            "with the run's final FVU)." if missing else
            "Every run reached every target it was given.")],
        tables=[("time to each target FVU",
                 _frame(rows, ["variant", *(f"FVU <= {t:g}" for t in targets)]))],
        figures=[("training time to each target FVU", fig)])


def _series(points: Sequence[Point]) -> dict[str, list[Point]]:
    """Points of a scaling sweep by row, each in rank order."""
    out: dict[str, list[Point]] = {}
    for p in points:
        out.setdefault(p.row, []).append(p)
    return {row: sorted(ps, key=lambda p: (p.ranks, p.grid[1])) for row, ps in out.items()}


def scaling_section(study: Study, out: Path, kind: str) -> Built:
    points = study.sweep(kind)
    if not points:
        return f"No {kind} scaling sweep in the study."
    lines, rows, base_text = [], [], []
    for row, ps in _series(points).items():
        base = ps[0]
        p0, t0 = base.ranks, base.median
        effs = [efficiency(kind, t0, p.median, p0, p.ranks) for p in ps]
        lines.append(figures.ScalingLine(
            label=row, variant=base.variant,
            latent_parallel=row.startswith("lp-") or base.grid[1] > 1,
            ranks=[p.ranks for p in ps], median_s=[p.median for p in ps],
            ci_lo_s=[p.ci[0] for p in ps], ci_hi_s=[p.ci[1] for p in ps],
            ideal_s=[t0 if kind == "weak" else t0 * p0 / p.ranks for p in ps],
            efficiency=[e[1] for e in effs]))
        base_text.append(f"{row}: p0 = {p0} ({base.grid[0]}x{base.grid[1]}), {ms(t0)} ms per step "
                         f"({CONFIDENCE:.0%} CI {_ci_cell(base)} ms), "
                         f"{_num(base.tokens_per_s, ',.0f')} tokens/s")
        for p, (speedup, eff, serial) in zip(ps, effs):
            comm = p.stack().get("communication", 0.0)
            rows.append([row, str(p.ranks), f"{p.grid[0]}x{p.grid[1]}", str(p.config("batch_size")),
                         str(p.config("width")), ms(p.median), _ci_cell(p),
                         _num(p.tokens_per_s, ",.0f"), f"{speedup:.2f}x", f"{100 * eff:.0f}%",
                         _num(serial, ".3f"), f"{100 * comm / p.median:.1f}"])
    definition = ("Weak scaling: the work per rank is fixed; efficiency = T(p0)/T(p), ideal = a "
                  "flat line; the speedup column is the scaled speedup (p/p0) T(p0)/T(p)."
                  if kind == "weak" else
                  "Strong scaling: the global problem is fixed; speedup S(p) = T(p0)/T(p), "
                  "efficiency = S(p) p0/p, ideal time T(p0) p0/p.")
    scaling_fig = figures.scaling(out / f"{kind}-scaling.png", lines, f"{kind} scaling",
                                  "flat" if kind == "weak" else "T(p0) p0/p")
    panels = [figures.Panel(row, [str(p.ranks) for p in ps],
                            [{g: v * 1e3 for g, v in p.stack().items()} for p in ps],
                            [ms(p.median) for p in ps])
              for row, ps in _series(points).items()]
    phase_fig = figures.stacked_bars(out / f"{kind}-phases.png", panels, "median step (ms)",
                                     f"{kind} scaling: step time by phase group per rank count",
                                     xlabel="ranks")
    header = ["row", "ranks", "dp x lp", "global batch", "width", "median ms",
              f"{CONFIDENCE:.0%} CI ms", "tokens/s", "speedup", "efficiency", "Karp-Flatt",
              "comm %"]
    tables = [(f"{kind} scaling (T = median step time; base p0 = each row's fewest ranks)",
               _frame(rows, header))]
    imbalance = _imbalance_rows(points)
    if imbalance:
        tables.append((f"{kind} scaling, load imbalance of the multi-rank runs: phases taking at "
                       f"least {IMBALANCE_MIN_SHARE:.0%} of the step; min/mean/max over ranks of "
                       "the per-step phase time (medians)",
                       _frame(imbalance, ["row", "ranks", "phase", "median ms", "min ms",
                                          "mean ms", "max ms", "max/mean"])))
    return Section(
        f"{kind.capitalize()} scaling",
        [definition + " Karp-Flatt: the serial fraction e = (1/S - 1/q)/(1 - 1/q), q = p/p0, "
         "that would explain the speedup; a value growing with p means overhead growing with "
         "the ranks (communication, imbalance). The bars per rank count split the median step "
         "into phase groups as in the variant breakdown; communication is `comm_*`.",
         "Base case, absolute: " + "; ".join(base_text) + "."],
        tables=tables,
        figures=[(f"{kind} scaling: median step time (log-log, dotted: ideal) and parallel "
                  "efficiency", scaling_fig),
                 (f"{kind} scaling: phase groups per rank count", phase_fig)])


def _imbalance_rows(points: Sequence[Point]) -> list[list[str]]:
    rows = []
    for p in points:
        if p.ranks < 2:
            continue
        med, lo, mean, hi = (p.phases(s)
                             for s in ("median", "ranks.min", "ranks.mean", "ranks.max"))
        for name in sorted(med, key=lambda n: -med[n]):
            if med[name] < IMBALANCE_MIN_SHARE * p.median or name not in mean:
                continue
            rows.append([p.row, str(p.ranks), name, ms(med[name]), ms(lo.get(name)),
                         ms(mean[name]), ms(hi.get(name)),
                         f"{hi[name] / mean[name]:.2f}" if mean[name] > 0 and name in hi else "-"])
    return rows


def width_section(study: Study, out: Path) -> Built:
    points = study.sweep("width")
    if not points:
        return "No width sweep in the study."
    series: dict[str, list[tuple[int, float, float, float]]] = {}
    for p in points:
        series.setdefault(p.variant, []).append(
            (int(p.config("width")), p.median, p.ci[0], p.ci[1]))
    fig = figures.width(out / "width.png", series)
    rows = [[p.row, p.variant, str(p.config("width")), str(p.ranks), ms(p.median), _ci_cell(p),
             _num(p.tokens_per_s, ",.0f")]
            for p in sorted(points, key=lambda p: (_variant_rank(p.variant), p.config("width")))]
    return Section(
        "Step time against width",
        ["Rows `<variant>-M<width>`: the same shape but the number of latents M. On log-log axes "
         "a slope of 1 is time linear in M (the GEMMs); a steeper slope shows a superlinear part "
         "(e.g. selection), a flatter one fixed costs."],
        tables=[("median step per width", _frame(rows, ["row", "variant", "M", "ranks",
                                                         "median ms", f"{CONFIDENCE:.0%} CI ms",
                                                         "tokens/s"]))],
        figures=[("median step time against width (log-log)", fig)])


def variability_section(study: Study, out: Path) -> Built:
    figs = []
    main = _main_points(study)
    if main:
        panel = figures.BoxPanel("variants", [_label(p, main) for p in main],
                                 [p.samples for p in main])
        figs.append(("per-step times of each variant", figures.boxplots(
            out / "variability-variants.png", [panel], "variability of the step time per variant")))
    for kind in ("weak", "strong"):
        series = _series(study.sweep(kind))
        if series:
            panels = [figures.BoxPanel(row, [str(p.ranks) for p in ps], [p.samples for p in ps])
                      for row, ps in series.items()]
            fig = figures.boxplots(out / f"variability-{kind}.png", panels,
                                   f"{kind} scaling: variability of the step time per rank count")
            figs.append((f"per-step times of the {kind} scaling points (x: ranks)", fig))
    if not figs:
        return "No variants or scaling sweep in the study: no variability plots."
    return Section(
        "Variability",
        ["Box plots of every timed step (repeated runs pooled): box = quartiles, line = median, "
         "whiskers = p10 to p90, dots = steps beyond them. A long upper tail is interference "
         "(other jobs, the OS, the network); the run table gives the confidence interval of "
         "each median."],
        figures=figs)


def runs_section(study: Study) -> Built:
    if not study.points:
        return "No run finished with status ok: no run table."
    rows = []
    for p in study.points:
        lo, hi, cover = p.ci
        p10, p90 = p.p10_p90
        rows.append([p.sweep, _label(p, study.sweep(p.sweep)), p.variant, str(p.ranks),
                     f"{p.grid[0]}x{p.grid[1]}",
                     str(len(p.runs)), str(p.samples.size), ms(p.median), _ci_cell(p),
                     _num(100 * cover, ".1f"), ms(p10), ms(p90), _num(p.tokens_per_s, ",.0f")])
    header = ["sweep", "row", "variant", "ranks", "dp x lp", "runs", "n", "median ms",
              f"{CONFIDENCE:.0%} CI ms", "coverage %", "p10 ms", "p90 ms", "tokens/s"]
    return Section("All runs",
                   ["One line per measured point (runs of the same sweep, row and benchmark "
                    "pooled); n = timed steps."],
                   tables=[("every point: median step with its confidence interval",
                            _frame(rows, header))])


def projection_section(study: Study, out: Path, saescale: Path | None) -> Section | None:
    """The projection to larger shapes, from saescale_analysis.projection where installed."""
    try:
        from . import projection
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.projection":
            raise  # a dependency of projection is missing: that is a real error
        return None
    ok = [r for p in study.points for r in p.runs]
    return projection.projection_section(ok, study.root, out, saescale)


# --- rendering ----------------------------------------------------------------------------------

def _align_right(column: pd.Series) -> bool:
    """Numbers (and "-" for missing ones) are right-aligned, text left-aligned."""
    return all(re.fullmatch(r"[-+\[]?[\d.,]+.*|-", str(v)) is not None for v in column)


def _md_cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(_md_cell(c) for c in df.columns) + " |"
    align = "|" + "|".join("---:" if _align_right(df[c]) else ":---" for c in df.columns) + "|"
    body = ["| " + " | ".join(_md_cell(v) for v in row) + " |"
            for row in df.itertuples(index=False)]
    return "\n".join([head, align, *body])


def _rel(path: Path, out: Path) -> str:
    return Path(os.path.relpath(path, out)).as_posix()


def render_markdown(title: str, sections: Sequence[Section], out: Path,
                    omitted: Sequence[str]) -> str:
    """The report as Markdown; figures are links to the PNG files next to it."""
    parts = [f"# {title}"]
    for s in sections:
        parts.append(f"## {s.title}")
        parts += s.paragraphs
        for caption, df in s.tables:
            parts += [f"*{caption}*", markdown_table(df)]
        for caption, path in s.figures:
            parts.append(f"![{caption}]({_rel(path, out)})\n\n*Figure: {caption}*")
    if omitted:
        parts.append("## Not in this study")
        parts.append("\n".join(f"- {line}" for line in omitted))
    return "\n\n".join(parts) + "\n"


def _inline(text: str) -> str:
    """Escaped text with `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


_CSS = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;
color:#222;line-height:1.45}table{border-collapse:collapse;margin:.5rem 0 1.2rem;font-size:.85rem}
caption{caption-side:top;text-align:left;font-style:italic;padding:.2rem 0}
th,td{border:1px solid #ccc;padding:.2rem .45rem}th{background:#f2f2f2}td.num{text-align:right}
figure{margin:1rem 0}img{max-width:100%}figcaption{font-style:italic;font-size:.9rem}
code{background:#f4f4f4;padding:0 .2rem}"""


def html_table(caption: str, df: pd.DataFrame) -> str:
    right = [_align_right(df[c]) for c in df.columns]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td class=\"num\">{html.escape(str(v))}</td>" if r
                         else f"<td>{_inline(str(v))}</td>" for v, r in zip(row, right)) + "</tr>"
        for row in df.itertuples(index=False))
    return (f"<table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def render_html(title: str, sections: Sequence[Section], omitted: Sequence[str]) -> str:
    """The report as one self-contained HTML page: the PNGs are embedded as data URIs."""
    parts = ["<!DOCTYPE html>", "<html lang=\"en\">", "<head><meta charset=\"utf-8\">",
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>", "<body>",
             f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<section><h2>{html.escape(s.title)}</h2>")
        parts += [f"<p>{_inline(p)}</p>" for p in s.paragraphs]
        parts += [html_table(caption, df) for caption, df in s.tables]
        for caption, path in s.figures:
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt=\"{html.escape(caption)}\" "
                         f"src=\"data:image/png;base64,{data}\">"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        parts.append("</section>")
    if omitted:
        parts.append("<section><h2>Not in this study</h2><ul>"
                     + "".join(f"<li>{_inline(line)}</li>" for line in omitted) + "</ul></section>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


@dataclass
class Report:
    """What :func:`write_report` wrote."""

    markdown: Path
    html: Path
    sections: list[Section]
    omitted: list[str]
    study: Study


def write_report(study_dir: PathLike, out_dir: PathLike | None = None,
                 saescale: PathLike | None = None, title: str | None = None) -> Report:
    """Write out_dir/report.md, out_dir/report.html and the PNGs (default out_dir:
    study_dir/report). Raises FileNotFoundError for a missing or empty study and OSError when
    the output cannot be written."""
    root = Path(study_dir)
    out = Path(out_dir) if out_dir is not None else root / "report"
    study = load_study(root, exclude=out)
    out.mkdir(parents=True, exist_ok=True)
    builders: list[Callable[[], Built | None]] = [
        lambda: setup_section(study),
        lambda: left_out_section(study),
        lambda: breakdown_section(study, out),
        lambda: memory_section(study, out),
        lambda: fvu_l0_section(study, out),
        lambda: frontier_section(study, out),
        lambda: matched_l0_section(study),
        lambda: time_to_fidelity_section(study, out),
        lambda: scaling_section(study, out, "weak"),
        lambda: scaling_section(study, out, "strong"),
        lambda: width_section(study, out),
        lambda: variability_section(study, out),
        lambda: projection_section(study, out, Path(saescale) if saescale is not None else None),
        lambda: runs_section(study),
    ]
    sections, omitted = [], []
    for build in builders:
        built = build()
        if isinstance(built, Section):
            sections.append(built)
        elif isinstance(built, str):
            omitted.append(built)
    title = title or f"saescale study {study.meta.get('name') or root.resolve().name}"
    md, page = out / "report.md", out / "report.html"
    md.write_text(render_markdown(title, sections, out, omitted), encoding="utf-8")
    page.write_text(render_html(title, sections, omitted), encoding="utf-8")
    return Report(md, page, sections, omitted, study)
