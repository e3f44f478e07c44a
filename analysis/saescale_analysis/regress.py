"""Throughput regression gate: the same benchmarks in two sets of results files, compared.

Runs are matched by :class:`BenchKey` (what makes two runs "the same benchmark"). The samples
of a key are the per-step times of all its runs, pooled: each results file's ``benchmarks``
list holds one Google-Benchmark-style entry per timed step; a file without one contributes its
``timing.step_s.median`` as a single sample (``per_run=True`` uses one sample per file, its
median step, for every file). A key is a REGRESSION only when its median throughput fell by at
least ``threshold`` (default 5%: the median step time rose by 1/0.95 - 1 = 5.26% or more) *and*
a two-sided Mann-Whitney U test of the two samples gives p < ``alpha`` (as Google Benchmark's
compare.py does); with fewer than ``min_repetitions`` samples on either side the verdict is
"not enough repetitions" and nothing is concluded.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import mannwhitneyu

from .perflog import is_perflog, read_perflog
from .results import PathLike, _expand, load_result

#: Default root of the recorded baselines: analysis/baselines/<system>/<scale>/*.json.
BASELINES_ROOT = Path(__file__).resolve().parents[1] / "baselines"

OK, IMPROVED, REGRESSION = "ok", "improved", "REGRESSION"
FEW = "not enough repetitions"
NO_BASELINE, NO_CURRENT = "no baseline", "not in current"

#: Variants whose step does an exact top-k selection (k, the algorithm and AuxK matter).
SELECTION_VARIANTS = ("topk", "batchtopk")

#: saescale's defaults of --aux-k and --dead-window-tokens (left out of labels).
DEFAULT_AUX_K, DEFAULT_DEAD_WINDOW = 512, 10_000_000

#: context fields describing the system; a difference between the two sides is printed as a note.
SYSTEM_FIELDS = ("hostname", "kokkos_exec_space", "kokkos_concurrency", "gemm_backend", "gpu",
                 "compiler", "build_type")

_TIME_UNIT_S = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


@dataclass(frozen=True, order=True)
class BenchKey:
    """What makes two runs the same benchmark (fields that do not apply are None).

    The shape (variant, d_model, width, batch_size), GEMM precision, the process grid (dp, lp)
    and, on more than one rank, the collective backend; the optimizer and whether phases were
    fenced (both change the step); for TopK/BatchTopK also k, the selection algorithm, AuxK's
    k_aux and dead window (AuxK runs only while latents are dead) and, for BatchTopK, the batch
    scope. Not part of it: steps, warm-up, seeds, data source, learning-rate/sparsity settings,
    evaluation and checkpoint options, and the system (host, build), which the baseline
    directory stands for.
    """

    variant: str
    d_model: int
    width: int
    batch_size: int
    precision: str = "fp32"
    dp: int = 1
    lp: int = 1
    comm: str | None = None
    optimizer: str = "adam"
    fenced: bool = True
    k: int | None = None
    topk_algo: str | None = None
    aux_k: int | None = None
    dead_window_tokens: int | None = None
    batch_scope: str | None = None

    @property
    def label(self) -> str:
        """Compact name, e.g. ``topk d64 M512 B256 fp32 dp1xlp1 k32 radix``; the optimizer,
        fencing, AuxK and batch-scope settings appear only where not the defaults."""
        parts = [self.variant, f"d{self.d_model}", f"M{self.width}", f"B{self.batch_size}",
                 self.precision, f"dp{self.dp}xlp{self.lp}"]
        if self.comm:
            parts.append(f"comm={self.comm}")
        if self.optimizer != "adam":
            parts.append(self.optimizer)
        if not self.fenced:
            parts.append("unfenced")
        if self.k is not None:
            parts += [f"k{self.k}", str(self.topk_algo)]
        if self.aux_k not in (None, DEFAULT_AUX_K):
            parts.append(f"aux{self.aux_k}")
        if self.dead_window_tokens not in (None, 0, DEFAULT_DEAD_WINDOW):  # 0: the default
            parts.append(f"dead{self.dead_window_tokens}")
        if self.batch_scope not in (None, "global"):
            parts.append(f"scope={self.batch_scope}")
        return " ".join(parts)


def _sort_key(key: BenchKey) -> tuple:
    # None sorts before any value of its field.
    return tuple((v is not None, v) for v in (getattr(key, f.name) for f in fields(key)))


def bench_key(result: dict[str, Any]) -> BenchKey:
    """The benchmark identity of one results file (see :class:`BenchKey`)."""
    cfg, ctx = result.get("config", {}), result.get("context", {})
    grid = ctx.get("grid") or {}
    ranks = int(ctx.get("ranks") or 1)
    lp = int(grid.get("lp") or cfg.get("lp") or 1)
    dp = int(grid.get("dp") or cfg.get("dp") or max(ranks // lp, 1))
    variant = str(cfg.get("variant"))
    selection = variant in SELECTION_VARIANTS
    timing = result.get("timing") or {}
    return BenchKey(
        variant=variant, d_model=int(cfg.get("d_model", 0)), width=int(cfg.get("width", 0)),
        batch_size=int(cfg.get("batch_size", 0)), precision=str(cfg.get("precision") or "fp32"),
        dp=dp, lp=lp, comm=(ctx.get("comm") or cfg.get("comm")) if dp * lp > 1 else None,
        optimizer=str(cfg.get("optimizer") or "adam"), fenced=bool(timing.get("fenced", True)),
        k=cfg.get("k") if selection else None,
        topk_algo=cfg.get("topk_algo", "radix") if selection else None,
        aux_k=cfg.get("aux_k") if selection else None,
        dead_window_tokens=cfg.get("dead_window_tokens") if selection else None,
        batch_scope=cfg.get("batch_scope", "global") if variant == "batchtopk" else None,
    )


def step_samples(result: dict[str, Any]) -> list[float]:
    """Per-step times in seconds: the iteration entries of ``benchmarks``, else the one
    ``timing.step_s.median``. Raises ValueError (naming the file) if there is neither."""
    out = []
    for b in result.get("benchmarks") or []:
        if b.get("run_type", "iteration") != "iteration":
            continue  # aggregates (mean, median, ...) are statistics, not samples
        unit = b.get("time_unit", "ns")  # Google Benchmark's default unit
        if unit not in _TIME_UNIT_S or not isinstance(b.get("real_time"), (int, float)):
            raise ValueError(f"{result.get('_path', '?')}: benchmark entry without a usable "
                             f"real_time/time_unit: {b!r:.120}")
        out.append(float(b["real_time"]) * _TIME_UNIT_S[unit])
    if out:
        return out
    median = ((result.get("timing") or {}).get("step_s") or {}).get("median")
    if not isinstance(median, (int, float)) or median <= 0:
        raise ValueError(f"{result.get('_path', '?')}: no step times (neither benchmarks "
                         "entries nor timing.step_s.median)")
    return [float(median)]


def expand_inputs(spec: PathLike) -> list[str]:
    """A results file or ReFrame perflog, a directory (its ``*.json``, not recursive) or a glob,
    as sorted paths.
    Raises FileNotFoundError if a directory or a pattern yields no files."""
    s = os.fspath(spec)
    if os.path.isdir(s):
        paths = sorted(str(p) for p in Path(s).glob("*.json") if p.is_file())
        if not paths:
            raise FileNotFoundError(f"{s}: directory holds no results files (*.json)")
        return paths
    return _expand(s)


@dataclass
class Group:
    """The pooled samples of one benchmark key on one side."""

    key: BenchKey
    samples: list[float] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    contexts: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Side:
    """One side of the comparison: groups by key, and the files that were left out."""

    groups: dict[BenchKey, Group]
    skipped: list[str]


def pool(results: Iterable[dict[str, Any]], per_run: bool = False) -> Side:
    """Group results by key and pool their samples (``per_run``: one median per file).
    Runs whose status is not "ok" are skipped (listed in ``Side.skipped``)."""
    groups: dict[BenchKey, Group] = {}
    skipped = []
    for r in results:
        if r.get("status") != "ok":
            skipped.append(f"{r.get('_path', '?')} (status {r.get('status')!r})")
            continue
        try:
            key = bench_key(r)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{r.get('_path', '?')}: malformed config/context: {e}") from None
        g = groups.setdefault(key, Group(key))
        steps = step_samples(r)
        g.samples += [float(np.median(steps))] if per_run else steps
        g.paths.append(str(r.get("_path", "?")))
        g.contexts.append(r.get("context") or {})
    return Side(groups, skipped)


def load_side(specs: PathLike | Sequence[PathLike], per_run: bool = False) -> Side:
    """Load and pool results files given as files, directories or globs.

    Raises OSError (e.g. FileNotFoundError) or ValueError, naming the path, on unreadable
    input, and FileNotFoundError if nothing is found.
    """
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    paths = [p for spec in specs for p in expand_inputs(spec)]

    def results():
        for p in paths:
            if is_perflog(p):  # a ReFrame perflog of runs/reframe: one record per run line
                yield from read_perflog(p)
            else:
                yield load_result(p)

    return pool(results(), per_run=per_run)


def baseline_dir(system: str, scale: str, root: PathLike | None = None) -> Path:
    """The directory of the baseline for system S at scale X: ``<root>/<S>/<X>/``.

    Raises FileNotFoundError, naming what exists, if there is no such directory or it holds no
    ``*.json`` results file.
    """
    base = Path(root) if root is not None else BASELINES_ROOT
    path = base / system / scale
    if not path.is_dir():
        there = base / system if (base / system).is_dir() else base
        have = sorted(p.name for p in there.iterdir() if p.is_dir()) if there.is_dir() else []
        what = "scales" if there != base else "systems"
        raise FileNotFoundError(f"{path}: no baseline for system {system!r} at scale {scale!r} "
                                f"({what} recorded: {', '.join(have) or 'none'})")
    if not any(p.is_file() for p in path.glob("*.json")):
        raise FileNotFoundError(f"{path}: no baseline recorded yet (no *.json; see "
                                f"{base / 'README.md'} for how to record one)")
    return path


@dataclass
class Row:
    """One line of the comparison (median step times in seconds; NaN where absent)."""

    key: BenchKey
    base_n: int
    base_median_s: float
    cur_n: int
    cur_median_s: float
    change: float  # median throughput change: base median step / current median step - 1
    p_value: float
    verdict: str


def compare_groups(baseline: Group | None, current: Group | None, threshold: float = 0.05,
                   alpha: float = 0.05, min_repetitions: int = 9) -> Row:
    """The verdict of one key (either side may be absent)."""
    key = (baseline or current).key  # type: ignore[union-attr]
    b = np.asarray(baseline.samples if baseline else [], dtype=float)
    c = np.asarray(current.samples if current else [], dtype=float)
    b_med = float(np.median(b)) if b.size else math.nan
    c_med = float(np.median(c)) if c.size else math.nan
    change = b_med / c_med - 1.0 if b.size and c.size else math.nan
    p = math.nan
    if baseline is None:
        verdict = NO_BASELINE
    elif current is None:
        verdict = NO_CURRENT
    elif min(b.size, c.size) < min_repetitions:
        verdict = FEW
    else:
        p = float(mannwhitneyu(b, c, alternative="two-sided").pvalue)
        significant = p < alpha  # a NaN p-value is never significant
        if significant and change <= -threshold:
            verdict = REGRESSION
        elif significant and change >= threshold:
            verdict = IMPROVED
        else:
            verdict = OK
    return Row(key, int(b.size), b_med, int(c.size), c_med, change, p, verdict)


def compare(baseline: Side, current: Side, threshold: float = 0.05, alpha: float = 0.05,
            min_repetitions: int = 9) -> list[Row]:
    """One row per key found on either side: matched keys first, then one-sided ones."""
    keys = set(baseline.groups) | set(current.groups)
    rows = [compare_groups(baseline.groups.get(k), current.groups.get(k), threshold, alpha,
                           min_repetitions) for k in keys]
    return sorted(rows, key=lambda r: (r.verdict in (NO_BASELINE, NO_CURRENT), _sort_key(r.key)))


def system_notes(baseline: Side, current: Side) -> list[str]:
    """One line per system field (host, execution space, BLAS backend, GPU, compiler, build
    type) whose values differ between the two sides' runs: their numbers may not compare."""
    def values(side: Side, name: str) -> set[str]:
        return {str(c.get(name)) for g in side.groups.values() for c in g.contexts}

    notes = []
    for name in SYSTEM_FIELDS:
        b, c = values(baseline, name), values(current, name)
        if b and c and b != c:
            notes.append(f"note: the runs differ in {name}: baseline {', '.join(sorted(b))}; "
                         f"current {', '.join(sorted(c))}")
    return notes


def failed(rows: Iterable[Row], strict: bool = False) -> bool:
    """Whether the gate fails: a REGRESSION, or with ``strict`` also a key with too few
    repetitions or a baseline key missing from the current runs."""
    bad = {REGRESSION, FEW, NO_CURRENT} if strict else {REGRESSION}
    return any(r.verdict in bad for r in rows)


HEADER = ["benchmark", "baseline ms (n)", "current ms (n)", "throughput", "p-value", "verdict"]


def _ms(median_s: float, n: int) -> str:
    return "-" if not n else f"{median_s * 1e3:.3f} ({n})"


def _p(p: float) -> str:
    if math.isnan(p):
        return "-"
    return f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}"


def regress_rows(rows: Sequence[Row]) -> list[list[str]]:
    """Formatted cells, in :data:`HEADER` order."""
    return [[r.key.label, _ms(r.base_median_s, r.base_n), _ms(r.cur_median_s, r.cur_n),
             "-" if math.isnan(r.change) else f"{100 * r.change:+.1f}%", _p(r.p_value), r.verdict]
            for r in rows]


def format_regress(rows: Sequence[Row], markdown: bool = False) -> str:
    """Render the comparison as a plain fixed-width table (or a markdown table)."""
    cells = regress_rows(rows)
    left = [True, False, False, False, False, True]
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |",
                 "|" + "|".join(":---" if l else "---:" for l in left) + "|"]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max(len(c) for c in col) for col in zip(HEADER, *cells)]

    def line(cs: list[str]) -> str:
        return "  ".join(c.ljust(w) if l else c.rjust(w)
                         for c, w, l in zip(cs, widths, left)).rstrip()

    return "\n".join([line(HEADER), "  ".join("-" * w for w in widths), *map(line, cells)])


def summary(rows: Sequence[Row], threshold: float, alpha: float, min_repetitions: int,
            per_run: bool) -> str:
    """One line: how many keys got each verdict, and the rule applied."""
    order = [REGRESSION, IMPROVED, OK, FEW, NO_BASELINE, NO_CURRENT]
    counts = [f"{sum(r.verdict == v for r in rows)} {v}" for v in order
              if any(r.verdict == v for r in rows)]
    unit = "runs" if per_run else "steps"
    return (f"regress: {', '.join(counts) or 'nothing to compare'} (REGRESSION: throughput "
            f"-{100 * threshold:g}% or worse and Mann-Whitney U p < {alpha:g}; samples: {unit}, "
            f"at least {min_repetitions} per side)")
