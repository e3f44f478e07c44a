"""Scaling projection: an alpha-beta model of the collectives plus work-scaled compute, fitted on
the measured points of a study and projected to 8 ... 1024 GPUs, data parallel vs latent parallel.

Why a model and not more runs: the study measures a few rank counts; the question the suite asks
(does JumpReLU's cheaper step survive at scale, and which grid to use) is about hundreds of GPUs.
The model is deliberately simple and every assumption is stated in the report section:

* communication: each collective the plan lists (``saescale plan --out``: kind, group, ranks,
  bytes per call, calls) costs the ring time of a latency-bandwidth model fitted on the study's
  ``MPI_Allreduce`` sweep — all-reduce ``2(p-1)·α + 2(p-1)/p · n/β``, all-gather
  ``(p-1)·α + (p-1)/p · (p·block)/β``;
* compute: each compute phase's measured median at the base point (the variant's smallest rank
  count) times the ratio of the work model's work (FLOPs where the phase has FLOPs, else bytes)
  for the projected rank's shapes to the base rank's shapes — both from the same binary's plan;
* no overlap of compute and communication, perfect load balance, one network level.

The plan is asked of the C++ binary (never re-implemented here) so that the projection and the
trainer can never disagree about what a grid communicates or computes.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from .figures import VARIANT_ORDER, log_y, plain_numbers, variant_colour
from .scaling import efficiency
from .sections import Section

#: Projected GPU counts (the issue's 8 ... 1024; the measured rank counts are added to them).
DEFAULT_GPUS: tuple[int, ...] = tuple(2**i for i in range(3, 11))
#: Variants in the order the report uses (colours follow it).
VARIANTS = VARIANT_ORDER
SCALING_SWEEPS: tuple[str, ...] = ("weak", "strong")
MODES: tuple[str, ...] = ("dp", "lp")

_TIME_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
_ROW = re.compile(r"^(dp|lp)-([A-Za-z0-9_]+)$")
# AuxK counts as running in the median step when its forward phase takes at least this fraction
# of the activation (its own row selection over B x M is about as large as TopK's).
_AUXK_ACTIVE_FRACTION = 0.1


class PlanError(RuntimeError):
    """`saescale plan` could not be run or failed."""


class PlanFormatError(PlanError):
    """`saescale plan` wrote JSON without what the projection reads (an older binary)."""


# ---- the alpha-beta model ------------------------------------------------------------------


@dataclass(frozen=True)
class AlphaBeta:
    """A latency-bandwidth model of one network: α seconds per message step, β bytes/s per link.

    ranks: the sweep's rank count the fit came from; points: (bytes, measured s, fitted s) of the
    fit, so its residuals can be shown.
    """

    alpha_s: float
    beta_bytes_per_s: float
    ranks: int = 0
    points: tuple[tuple[float, float, float], ...] = ()

    @property
    def residuals(self) -> list[float]:
        """Relative residuals (fitted − measured) / measured, one per sweep point."""
        return [(fit - t) / t for _, t, fit in self.points]

    @property
    def max_abs_residual(self) -> float:
        return max((abs(r) for r in self.residuals), default=math.nan)


def allreduce_time(n_bytes: float, ranks: int, ab: AlphaBeta) -> float:
    """Ring all-reduce of an n-byte vector among `ranks` ranks: 2(p−1) steps of n/p bytes each
    (reduce-scatter, then all-gather); zero on one rank (saescale makes no call there)."""
    if ranks < 2:
        return 0.0
    return 2 * (ranks - 1) * ab.alpha_s + 2 * (ranks - 1) / ranks * n_bytes / ab.beta_bytes_per_s


def allgather_time(block_bytes: float, ranks: int, ab: AlphaBeta) -> float:
    """Ring all-gather of one `block_bytes` block per rank: p−1 steps, (p−1)/p of the p·block
    payload through every link."""
    if ranks < 2:
        return 0.0
    return (ranks - 1) * ab.alpha_s + (ranks - 1) / ranks * (ranks * block_bytes) / ab.beta_bytes_per_s


def collective_time(collective: dict[str, Any], ab: AlphaBeta) -> float:
    """Time of one entry of a plan's `collectives` list (all its calls)."""
    kind, ranks = collective["kind"], int(collective["ranks"])
    one = {"allreduce": allreduce_time, "allgather": allgather_time}.get(kind)
    if one is None:
        raise PlanFormatError(f"unknown collective kind {kind!r} in the plan")
    return float(collective["calls"]) * one(float(collective["bytes"]), ranks, ab)


def communication_times(plan: dict[str, Any], ab: AlphaBeta) -> dict[str, float]:
    """Modelled seconds per step of every communication phase of a plan."""
    out: dict[str, float] = {}
    for phase, entry in plan.get("communication_per_step", {}).items():
        if "collectives" not in entry:
            raise PlanFormatError("the plan JSON lacks `collectives` (a saescale older than "
                                  "the projection): rebuild saescale")
        out[phase] = sum(collective_time(c, ab) for c in entry["collectives"])
    return out


def fit_alpha_beta(points: Iterable[tuple[float, float]], ranks: int) -> AlphaBeta:
    """Least-squares α and β of the ring all-reduce model from (bytes, seconds) sweep points at
    `ranks` ranks.

    The sweep spans 8 B to 64 MiB, so times span four orders of magnitude: an unweighted fit would
    be decided by the largest messages alone. Each point's equation is divided by its measured time,
    so the fit minimises the sum of squared *relative* errors; non-negative least squares keeps α
    and 1/β physical. The model is linear in (α, 1/β): t = 2(p−1)·α + 2(p−1)/p·n · (1/β).
    """
    if ranks < 2:
        raise ValueError("an all-reduce sweep needs at least 2 ranks to fit")
    pts = [(float(n), float(t)) for n, t in points if t > 0 and n > 0]
    if len(pts) < 2:
        raise ValueError(f"need at least 2 sweep points to fit alpha and beta, got {len(pts)}")
    n = np.array([p[0] for p in pts])
    t = np.array([p[1] for p in pts])
    design = np.column_stack([np.full_like(n, 2.0 * (ranks - 1)), 2.0 * (ranks - 1) / ranks * n])
    coef, _ = nnls(design / t[:, None], np.ones_like(t))
    alpha, inv_beta = float(coef[0]), float(coef[1])
    beta = 1.0 / inv_beta if inv_beta > 0 else math.inf
    fitted = design @ coef
    return AlphaBeta(alpha, beta, ranks, tuple(zip(n.tolist(), t.tolist(), fitted.tolist())))


def read_allreduce_sweep(path: Path) -> tuple[int, list[tuple[float, float]]]:
    """(ranks, [(bytes, seconds), ...]) of one Google Benchmark JSON of the MPI_Allreduce sweep.

    Repetitions of one size are reduced to their median (aggregate entries are skipped: the
    iterations already are the samples)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    ranks = int(data.get("context", {}).get("ranks", 0) or 0)
    by_size: dict[float, list[float]] = {}
    for b in data.get("benchmarks", []):
        if not str(b.get("name", "")).startswith("MPI_Allreduce") or b.get("error_occurred"):
            continue
        if b.get("run_type", "iteration") != "iteration":
            continue
        size = b.get("bytes")
        if size is None:
            m = re.match(r"MPI_Allreduce/(\d+)", b["name"])
            size = float(m.group(1)) if m else None
        scale = _TIME_UNITS.get(b.get("time_unit", "ns"))
        if size is None or scale is None or b.get("real_time") is None:
            continue
        by_size.setdefault(float(size), []).append(float(b["real_time"]) * scale)
    return ranks, [(n, float(np.median(ts))) for n, ts in sorted(by_size.items())]


def read_allreduce_sweeps(study: Path) -> dict[int, list[tuple[float, float]]]:
    """Every `allreduce.json` under the study, pooled by rank count (weak and strong sweeps both
    measure it at their rank counts: the fit takes all their points)."""
    out: dict[int, list[tuple[float, float]]] = {}
    for path in sorted(Path(study).rglob("allreduce.json")):
        try:
            ranks, pts = read_allreduce_sweep(path)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if ranks >= 2 and pts:
            out.setdefault(ranks, []).extend(pts)
    return out


def fit_sweeps(sweeps: dict[int, list[tuple[float, float]]]) -> dict[int, AlphaBeta]:
    """One fit per measured rank count."""
    return {p: fit_alpha_beta(pts, p) for p, pts in sorted(sweeps.items()) if len(pts) >= 2}


# ---- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanRequest:
    """What `saescale plan` needs to know of a run: shapes, grid, and the settings that change
    what is communicated or computed (selection, AuxK, optimiser, clipping)."""

    variant: str
    d: int
    B: int
    M: int
    dp: int = 1
    lp: int = 1
    k: int = 32
    aux_k: int = 0
    topk_algo: str = "radix"
    batch_scope: str = "global"
    optimizer: str = "adam"
    adam_beta1: float | None = None
    clip_norm: float | None = None

    def args(self) -> list[str]:
        a = ["--variant", self.variant, "--d-model", str(self.d), "--width", str(self.M),
             "--batch-size", str(self.B), "--dp", str(self.dp), "--lp", str(self.lp),
             "--k", str(self.k), "--aux-k", str(self.aux_k), "--topk-algo", self.topk_algo,
             "--batch-scope", self.batch_scope, "--optimizer", self.optimizer,
             "--data", "synthetic"]  # the data only changes the plan's evaluation memory
        if self.adam_beta1 is not None:
            a += ["--adam-beta1", repr(float(self.adam_beta1))]
        if self.clip_norm is not None:
            a += ["--clip-norm", repr(float(self.clip_norm))]
        return a


Planner = Callable[[PlanRequest], dict[str, Any]]


def prefetch(planner: Planner, requests: Iterable[PlanRequest]) -> None:
    """Let a planner that can (SaescalePlanner) run many requests at once; others are asked
    one by one when needed."""
    fetch = getattr(planner, "prefetch", None)
    if fetch is not None:
        fetch(list(requests))


class SaescalePlanner:
    """Calls `saescale plan --out` and caches its JSON per request: a projection asks a few
    hundred grids, and a call costs a process start (0.4 s on the development VM, nearly all of it
    the MPI_Init of an Open MPI singleton), so repeats must be free and the rest run in parallel
    (prefetch). Failures are cached too, as the error."""

    def __init__(self, binary: Path, timeout_s: float = 60.0, workers: int = 8) -> None:
        self.binary = Path(binary)
        self.timeout_s = timeout_s
        self.workers = workers
        self._cache: dict[PlanRequest, dict[str, Any] | PlanError] = {}
        self._dir = tempfile.TemporaryDirectory(prefix="saescale-plan-")
        self._names = itertools.count()
        self.calls = 0

    def __call__(self, req: PlanRequest) -> dict[str, Any]:
        hit = self._cache.get(req)
        if hit is None:
            hit = self._run(req)
            self._cache[req] = hit
        if isinstance(hit, PlanError):
            raise hit
        return hit

    def prefetch(self, requests: Iterable[PlanRequest]) -> None:
        """Run the plans not cached yet, several at a time: one call's cost is mostly process
        start-up (MPI_Init of a singleton: ~0.4 s on the development VM), not CPU."""
        todo = [r for r in dict.fromkeys(requests) if r not in self._cache]
        if len(todo) < 2:
            return
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for req, result in zip(todo, pool.map(self._run, todo)):
                self._cache[req] = result

    def _run(self, req: PlanRequest) -> dict[str, Any] | PlanError:
        self.calls += 1
        out = Path(self._dir.name) / f"plan-{next(self._names)}.json"
        cmd = [str(self.binary), "plan", *req.args(), "--out", str(out), "--force"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout_s)
        except (OSError, subprocess.TimeoutExpired) as e:
            return PlanError(f"{self.binary.name} plan could not run: {e}")
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            return PlanError(f"`{self.binary.name} plan {' '.join(req.args())}` failed: "
                             f"{msg[-1] if msg else f'exit {proc.returncode}'}")
        try:
            plan = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            return PlanError(f"{self.binary.name} plan wrote no readable JSON: {e}")
        finally:
            out.unlink(missing_ok=True)
        return plan


def check_plan_format(plan: dict[str, Any]) -> None:
    """Raise PlanFormatError unless the plan carries what the projection reads (`collectives` per
    communication phase, `work_per_step`, `local_shape`)."""
    missing = [k for k in ("work_per_step", "local_shape", "communication_per_step") if k not in plan]
    if any("collectives" not in e for e in plan.get("communication_per_step", {}).values()):
        missing.append("collectives")
    if missing:
        raise PlanFormatError(f"the plan JSON lacks {', '.join('`' + m + '`' for m in missing)} "
                              "(a saescale built before the projection's plan format): rebuild "
                              "saescale")


# ---- runs and bases ------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One results file, reduced to what the projection needs."""

    result: dict[str, Any] = field(repr=False, hash=False, compare=False)
    sweep: str
    row: str
    variant: str
    mode: str | None  # dp / lp for scaling rows, None otherwise
    ranks: int
    dp: int
    lp: int
    B: int
    M: int
    d: int
    step_s: float

    @property
    def grid(self) -> str:
        return f"dp {self.dp} x lp {self.lp}"

    @property
    def path(self) -> str:
        return str(self.result.get("_path", ""))

    def phases(self) -> dict[str, float]:
        """Median seconds per phase (the trainer's: the max over ranks of each step's time)."""
        return {name: float(s["median"]) for name, s in
                self.result.get("timing", {}).get("phases_s", {}).items()
                if isinstance(s, dict) and s.get("median") is not None}

    def request(self, *, B: int | None = None, M: int | None = None, dp: int | None = None,
                lp: int | None = None, aux_k: int | None = None) -> PlanRequest:
        """This run's plan request, optionally on other shapes or another grid."""
        c = self.result.get("config", {})
        resolved = c.get("resolved", {}) or {}

        def setting(key: str) -> float | None:
            value = resolved.get(key, c.get(key))
            return None if value is None else float(value)

        return PlanRequest(
            variant=self.variant, d=self.d, B=self.B if B is None else B,
            M=self.M if M is None else M, dp=self.dp if dp is None else dp,
            lp=self.lp if lp is None else lp, k=int(c.get("k", 32) or 32),
            aux_k=int(c.get("aux_k", 0) or 0) if aux_k is None else aux_k,
            topk_algo=str(c.get("topk_algo", "radix")), batch_scope=str(c.get("batch_scope", "global")),
            optimizer=str(c.get("optimizer", "adam")), adam_beta1=setting("adam_beta1"),
            clip_norm=setting("clip_norm"))


def to_run(result: dict[str, Any]) -> Run | None:
    """A Run of a results file with status ok, tags and timing; None otherwise."""
    if result.get("status", "ok") != "ok":
        return None
    ctx, cfg = result.get("context", {}) or {}, result.get("config", {}) or {}
    tags = ctx.get("tags", {}) or {}
    step = (result.get("timing", {}) or {}).get("step_s", {}) or {}
    try:
        grid = ctx.get("grid", {}) or {}
        dp, lp = int(grid.get("dp", 1) or 1), int(grid.get("lp", 1) or 1)
        run = dict(variant=str(cfg["variant"]), B=int(cfg["batch_size"]), M=int(cfg["width"]),
                   d=int(cfg["d_model"]), step_s=float(step["median"]))
    except (KeyError, TypeError, ValueError):
        return None
    sweep, row = str(tags.get("sweep", "")), str(tags.get("row", ""))
    m = _ROW.match(row)
    mode = m.group(1) if m and sweep in SCALING_SWEEPS else None
    return Run(result, sweep, row, mode=mode, ranks=int(ctx.get("ranks", dp * lp) or dp * lp),
               dp=dp, lp=lp, **run)


@dataclass
class Base:
    """The measured point a (sweep, variant, mode) is projected from.

    phases_s: its phase medians; other_s: step median − Σ phase medians (medians do not add up
    exactly; held constant); auxk: whether AuxK runs in its median step (the plan then includes
    AuxK's collectives and work); plan: the base's own plan.
    """

    sweep: str
    variant: str
    mode: str
    run: Run
    source: str
    phases_s: dict[str, float]
    other_s: float
    auxk: bool
    plan: dict[str, Any]

    def request(self, **grid: int) -> PlanRequest:
        return self.run.request(aux_k=None if self.auxk else 0, **grid)


def auxk_active(run: Run) -> bool:
    """Whether AuxK runs in the run's median step: only for TopK/BatchTopK with aux_k > 0, and
    only when some latents are dead — never if the results say `timing.auxiliary_ran` false, and
    otherwise visible as an auxiliary_forward phase that costs a fair share of the activation
    (its row selection) rather than the microseconds of a skipped one."""
    cfg = run.result.get("config", {})
    if run.variant not in ("topk", "batchtopk") or not int(cfg.get("aux_k", 0) or 0):
        return False
    if run.result.get("timing", {}).get("auxiliary_ran") is False:  # recorded by newer builds
        return False
    ph = run.phases()
    return ph.get("auxiliary_forward", 0.0) >= _AUXK_ACTIVE_FRACTION * ph.get("activation", math.inf)


def choose_bases(runs: Sequence[Run], planner: Planner) -> tuple[dict[tuple[str, str, str], Base], list[str]]:
    """The base point of every (sweep, variant, mode) that can be projected, and notes.

    Preference: the sweep's own smallest-rank run of that mode's row; else the other mode's row at
    that rank count (at p0 = 1 both rows are the same 1 x 1 grid); else the other scaling sweep's
    smallest-rank run; else the variants sweep's main row of the variant.
    """
    notes: list[str] = []
    variants = sorted({r.variant for r in runs if r.mode or (r.sweep == "variants" and r.row == r.variant)},
                      key=lambda v: (VARIANTS.index(v) if v in VARIANTS else len(VARIANTS), v))
    chosen: dict[tuple[str, str, str], tuple[Run, str]] = {}
    for sweep in SCALING_SWEEPS:
        for variant in variants:
            for mode in MODES:
                for s in (sweep, *[x for x in SCALING_SWEEPS if x != sweep]):
                    cands = [r for r in runs if r.sweep == s and r.variant == variant and r.mode]
                    if cands:
                        p0 = min(r.ranks for r in cands)
                        at_p0 = [r for r in cands if r.ranks == p0]
                        run = min([r for r in at_p0 if r.mode == mode] or at_p0, key=lambda r: r.path)
                        chosen[(sweep, variant, mode)] = (run, f"{s}/{run.row}")
                        break
                else:
                    main = [r for r in runs if r.sweep == "variants" and r.row == variant]
                    if main:
                        run = min(main, key=lambda r: (r.ranks, r.path))
                        chosen[(sweep, variant, mode)] = (run, f"variants/{run.row}")
    aux = {run.path: auxk_active(run) for run, _ in chosen.values()}
    requests = {run.path: run.request(aux_k=None if aux[run.path] else 0) for run, _ in chosen.values()}
    prefetch(planner, requests.values())
    bases: dict[tuple[str, str, str], Base] = {}
    failed: dict[str, list[str]] = {}  # error -> the bases it hit, so one failure is told once
    for (sweep, variant, mode), (run, source) in chosen.items():
        try:
            plan = planner(requests[run.path])
            check_plan_format(plan)
        except PlanFormatError:
            raise
        except PlanError as e:
            failed.setdefault(str(e), []).append(f"{sweep} {variant} {mode}")
            continue
        phases = run.phases()
        bases[(sweep, variant, mode)] = Base(sweep, variant, mode, run, source, phases,
                                             run.step_s - sum(phases.values()), aux[run.path], plan)
    notes += [f"no plan for the base of {', '.join(keys)}: {e}" for e, keys in failed.items()]
    return bases, notes


# ---- prediction ----------------------------------------------------------------------------


def work_ratio(base_work: dict[str, float] | None, target_work: dict[str, float] | None) -> float:
    """How much a phase's time scales from the base rank's shapes to the projected rank's: the
    FLOP ratio when the phase has FLOPs (GEMMs, elementwise arithmetic), else the byte ratio
    (selections, which the work model counts in passes over B x M). A phase the work model does
    not know keeps its time (ratio 1); one it drops on the projected shapes costs nothing."""
    if not base_work:
        return 1.0
    if not target_work:
        return 0.0
    for key in ("flops", "bytes"):
        b = float(base_work.get(key, 0.0) or 0.0)
        if b > 0:
            return float(target_work.get(key, 0.0) or 0.0) / b
    return 1.0


def scale_compute(phases_s: dict[str, float], base_plan: dict[str, Any],
                  target_plan: dict[str, Any]) -> dict[str, float]:
    """Each measured compute phase (not `comm_*`) scaled by its work ratio."""
    bw, tw = base_plan.get("work_per_step", {}), target_plan.get("work_per_step", {})
    return {name: t * work_ratio(bw.get(name), tw.get(name))
            for name, t in phases_s.items() if not name.startswith("comm_")}


@dataclass(frozen=True)
class Prediction:
    compute_s: float
    communication_s: float
    other_s: float
    phases_s: dict[str, float] = field(hash=False, compare=False)

    @property
    def step_s(self) -> float:
        return self.compute_s + self.communication_s + self.other_s


def predict(base: Base, target_plan: dict[str, Any], ab: AlphaBeta) -> Prediction:
    """The model's step time on the target plan's grid and shapes (no overlap: a sum)."""
    compute = scale_compute(base.phases_s, base.plan, target_plan)
    comm = communication_times(target_plan, ab)
    return Prediction(sum(compute.values()), sum(comm.values()), base.other_s, {**compute, **comm})


def projection_grid(sweep: str, mode: str, base: Run, p: int) -> tuple[int, int, int, int] | None:
    """(B, M, dp, lp) of the projected run on p GPUs, or None where the grid is impossible.

    Weak: dp keeps the base's per-rank batch (global B = b0·p), lp its per-rank width (M = m0·p).
    Strong: the base's global B and M, skipped where B % dp, M % lp ≠ 0 or a rank has no row.
    """
    b0, m0 = base.B // base.dp, base.M // base.lp
    if sweep == "weak":
        return (b0 * p, base.M, p, 1) if mode == "dp" else (base.B, m0 * p, 1, p)
    if mode == "dp":
        return None if base.B % p or base.B // p < 1 else (base.B, base.M, p, 1)
    return None if base.M % p else (base.B, base.M, 1, p)


def project(bases: dict[tuple[str, str, str], Base], ab: AlphaBeta, planner: Planner,
            gpus: Sequence[int] = DEFAULT_GPUS, extra: dict[tuple[str, str], set[int]] | None = None
            ) -> tuple[pd.DataFrame, list[str]]:
    """One row per (sweep, variant, mode, GPUs): the projected grid, shapes and times.

    extra: (sweep, variant) -> measured rank counts, projected too (and p0 always is)."""
    rows, notes = [], []
    todo: list[tuple[Base, int, tuple[int, int, int, int]]] = []
    for (sweep, variant, mode), base in bases.items():
        p0 = base.run.ranks
        points = sorted({p0, *(g for g in gpus if g >= p0),
                         *(g for g in (extra or {}).get((sweep, variant), ()) if g >= p0)})
        skipped = []
        for p in points:
            grid = projection_grid(sweep, mode, base.run, p)
            if grid is None:
                skipped.append(p)
            else:
                todo.append((base, p, grid))
        if skipped:
            what = f"B = {base.run.B}" if mode == "dp" else f"M = {base.run.M}"
            notes.append(f"{sweep} {variant} {mode}: skipped {', '.join(map(str, skipped))} GPUs "
                         f"({what} does not divide)")
    requests = [base.request(B=B, M=M, dp=dp, lp=lp) for base, _, (B, M, dp, lp) in todo]
    prefetch(planner, requests)
    t0: dict[tuple[str, str, str], float] = {}
    for (base, p, (B, M, dp, lp)), req in zip(todo, requests):
        key = (base.sweep, base.variant, base.mode)
        try:
            pred = predict(base, planner(req), ab)
        except PlanFormatError:
            raise
        except PlanError as e:
            notes.append(f"{base.sweep} {base.variant} {base.mode} on {p}: {e}")
            continue
        if p == base.run.ranks:
            t0[key] = pred.step_s
        rows.append(dict(sweep=base.sweep, variant=base.variant, mode=base.mode, gpus=p, dp=dp, lp=lp,
                         B=B, M=M, local_B=B // dp, local_M=M // lp, compute_s=pred.compute_s,
                         comm_s=pred.communication_s, other_s=pred.other_s, step_s=pred.step_s,
                         efficiency=_efficiency(base.sweep, t0.get(key, math.nan), base.run.ranks,
                                               pred.step_s, p), p0=base.run.ranks))
    cols = ["sweep", "variant", "mode", "gpus", "dp", "lp", "B", "M", "local_B", "local_M",
            "compute_s", "comm_s", "other_s", "step_s", "efficiency", "p0"]
    return pd.DataFrame(rows, columns=cols), notes


def fit_check(runs: Sequence[Run], bases: dict[tuple[str, str, str], Base], ab: AlphaBeta,
              planner: Planner) -> pd.DataFrame:
    """Every measured scaling point above its base's rank count, predicted from the base and the
    model (on the run's own shapes and grid) beside its measured median step."""
    todo = []
    for r in sorted(runs, key=lambda r: (r.sweep, r.variant, r.mode or "", r.ranks, r.path)):
        base = bases.get((r.sweep, r.variant, r.mode or ""))
        if r.mode and base is not None and r.ranks > base.run.ranks:
            todo.append((r, base, base.request(B=r.B, M=r.M, dp=r.dp, lp=r.lp)))
    prefetch(planner, [req for _, _, req in todo])
    rows = []
    for r, base, req in todo:
        try:
            pred = predict(base, planner(req), ab)
        except PlanFormatError:
            raise
        except PlanError:
            continue
        measured_comm = sum(t for n, t in r.phases().items() if n.startswith("comm_"))
        rows.append(dict(sweep=r.sweep, variant=r.variant, mode=r.mode, ranks=r.ranks, dp=r.dp,
                         lp=r.lp, B=r.B, M=r.M, measured_s=r.step_s, predicted_s=pred.step_s,
                         rel_error=(pred.step_s - r.step_s) / r.step_s,
                         measured_comm_s=measured_comm, predicted_comm_s=pred.communication_s,
                         base_ranks=base.run.ranks))
    cols = ["sweep", "variant", "mode", "ranks", "dp", "lp", "B", "M", "measured_s", "predicted_s",
            "rel_error", "measured_comm_s", "predicted_comm_s", "base_ranks"]
    return pd.DataFrame(rows, columns=cols)


# ---- the report section --------------------------------------------------------------------


def _ms(x: float) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x * 1e3:.3g}"


def _pct(x: float) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.0f}%"


def _efficiency(sweep: str, t0: float, p0: int, t: float, p: int) -> float:
    """Weak: T(p0)/T(p). Strong: S(p)·p0/p with S(p) = T(p0)/T(p); NaN without both times."""
    if not (t > 0 and t0 > 0):
        return math.nan
    return efficiency(sweep, t0, t, p0, p)[1]


def _measured_points(runs: Sequence[Run], bases: dict[tuple[str, str, str], Base]) -> pd.DataFrame:
    """Measured scaling runs with their measured efficiency against the measured base."""
    rows = []
    for r in runs:
        base = bases.get((r.sweep, r.variant, r.mode or ""))
        if not r.mode or base is None or base.source.split("/")[0] != r.sweep:
            continue
        rows.append(dict(sweep=r.sweep, variant=r.variant, mode=r.mode, gpus=r.ranks, step_s=r.step_s,
                         efficiency=_efficiency(r.sweep, base.run.step_s, base.run.ranks, r.step_s, r.ranks)))
    return pd.DataFrame(rows, columns=["sweep", "variant", "mode", "gpus", "step_s", "efficiency"])


def _plot_projection(proj: pd.DataFrame, measured: pd.DataFrame, sweep: str, column: str,
                     path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ideal_label = "ideal"
    for (variant, mode), g in proj[proj.sweep == sweep].groupby(["variant", "mode"], sort=False):
        g = g.sort_values("gpus")
        y = g[column] * (1e3 if column == "step_s" else 100)
        ax.plot(g.gpus, y, "-" if mode == "dp" else "--", color=variant_colour(variant),
                label=f"{variant} {mode}")
        if column == "step_s" and mode == "dp":  # T(p0) flat (weak) or T(p0)·p0/p (strong)
            p0, t0 = int(g.p0.iloc[0]), float(g.step_s.iloc[0]) * 1e3
            ideal = t0 if sweep == "weak" else t0 * p0 / g.gpus
            ax.plot(g.gpus, np.broadcast_to(ideal, g.gpus.shape), ":", color=variant_colour(variant),
                    alpha=0.5, lw=1, label=ideal_label)
            ideal_label = "_nolegend_"
    m = measured[measured.sweep == sweep]
    for (variant, mode), g in m.groupby(["variant", "mode"], sort=False):
        y = g[column] * (1e3 if column == "step_s" else 100)
        ax.plot(g.gpus, y, "o" if mode == "dp" else "s", color=variant_colour(variant), mfc="none",
                linestyle="none", label=f"{variant} {mode} measured")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(plain_numbers())
    ax.set_xlabel("GPUs (ranks)")
    if column == "step_s":
        log_y(ax)
        ax.set_ylabel("step time (ms, median)")
    else:
        ax.set_ylim(0, 105)
        ax.set_ylabel("efficiency (%)")
    ideal = ", ideal dotted" if column == "step_s" else ""
    ax.set_title(f"{sweep} scaling, projected (dp solid, lp dashed{ideal}; markers measured)",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_fit(fits: dict[int, AlphaBeta], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, res) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True,
                                  gridspec_kw={"height_ratios": [2, 1]})
    for i, (p, ab) in enumerate(sorted(fits.items())):
        n = np.array([q[0] for q in ab.points])
        t = np.array([q[1] for q in ab.points])
        colour = f"C{i}"
        ax.plot(n, t * 1e6, "o", color=colour, mfc="none", label=f"measured, {p} ranks")
        grid = np.geomspace(n.min(), n.max(), 100)
        ax.plot(grid, [allreduce_time(x, p, ab) * 1e6 for x in grid], "-", color=colour,
                label=f"fit, {p} ranks")
        res.plot(n, 100 * np.array(ab.residuals), "o-", color=colour)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_ylabel("all-reduce time (µs)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    res.axhline(0, color="k", lw=0.8)
    res.set_xlabel("message (bytes)")
    res.set_ylabel("(fit − measured) / measured, %")
    res.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _skipped(why: str) -> Section:
    return Section("Scaling projection", [f"The scaling projection was skipped: {why}"])


def _resolve_binary(saescale: Path | None) -> Path | None:
    if saescale is None:
        found = shutil.which("saescale")
        return Path(found) if found else None
    return Path(saescale) if Path(saescale).is_file() else None


def _frame_fit(fits: dict[int, AlphaBeta], used: int) -> pd.DataFrame:
    return pd.DataFrame([{
        "ranks": p, "sizes": len(ab.points),
        "alpha (us)": f"{ab.alpha_s * 1e6:.3g}",
        "beta (GB/s)": "inf" if math.isinf(ab.beta_bytes_per_s) else f"{ab.beta_bytes_per_s / 1e9:.3g}",
        "max |rel. residual|": _pct(ab.max_abs_residual),
        "used": "yes" if p == used else "",
    } for p, ab in sorted(fits.items())])


def _frame_residuals(ab: AlphaBeta) -> pd.DataFrame:
    return pd.DataFrame([{
        "bytes": int(n), "measured (us)": f"{t * 1e6:.4g}", "fitted (us)": f"{f * 1e6:.4g}",
        "residual": f"{100 * (f - t) / t:+.0f}%",
    } for n, t, f in ab.points])


def _frame_bases(bases: dict[tuple[str, str, str], Base]) -> pd.DataFrame:
    return pd.DataFrame([{
        "sweep": s, "variant": v, "mode": m, "base": b.source, "ranks": b.run.ranks, "grid": b.run.grid,
        "B": b.run.B, "M": b.run.M, "d": b.run.d, "step ms": _ms(b.run.step_s),
        "compute ms": _ms(sum(t for n, t in b.phases_s.items() if not n.startswith("comm_"))),
        "unattributed ms": _ms(b.other_s), "AuxK": ("yes" if b.auxk else "no")
        if b.variant in ("topk", "batchtopk") else "-",
    } for (s, v, m), b in bases.items()])


def _frame_check(check: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([{
        "sweep": r.sweep, "variant": r.variant, "mode": r.mode, "ranks": r.ranks,
        "grid": f"dp {r.dp} x lp {r.lp}", "B": r.B, "M": r.M, "measured ms": _ms(r.measured_s),
        "predicted ms": _ms(r.predicted_s), "error": f"{100 * r.rel_error:+.0f}%",
        "measured comm ms": _ms(r.measured_comm_s), "predicted comm ms": _ms(r.predicted_comm_s),
    } for r in check.itertuples()])


def _frame_projection(proj: pd.DataFrame, sweep: str, gpus: Sequence[int]) -> pd.DataFrame:
    rows = []
    p = proj[(proj.sweep == sweep) & proj.gpus.isin(gpus)]
    for (variant, n), g in p.groupby(["variant", "gpus"], sort=False):
        row: dict[str, Any] = {"variant": variant, "GPUs": n}
        for mode in MODES:
            m = g[g["mode"] == mode]
            if m.empty:
                row |= {f"{mode} step ms": "-", f"{mode} comm %": "-", f"{mode} eff.": "-"}
                continue
            x = m.iloc[0]
            row |= {f"{mode} step ms": _ms(x.step_s), f"{mode} comm %": _pct(x.comm_s / x.step_s),
                    f"{mode} eff.": _pct(x.efficiency)}
        rows.append(row)
    return pd.DataFrame(rows)


def projection_section(results: list[dict[str, Any]], study: Path, out_dir: Path,
                       saescale: Path | None, *, planner: Planner | None = None,
                       gpus: Sequence[int] = DEFAULT_GPUS) -> Section | None:
    """The report's scaling projection: α-β fit, fit check, projected step time and efficiency.

    results: the study's loaded results files (weak/strong rows tagged sweep= and row=dp-<v> /
    lp-<v>; variants rows serve as bases for variants without scaling runs). study: the study
    directory (its `allreduce.json` files are fitted). out_dir: where the PNGs are written.
    saescale: the binary whose `plan` says what each grid communicates and computes (None: look
    on PATH); planner replaces it (tests). Returns None when the study has no scaling data; a
    Section saying why when the projection cannot be made.
    """
    runs = [r for r in (to_run(x) for x in results) if r is not None]
    sweeps = read_allreduce_sweeps(Path(study))
    if not any(r.mode for r in runs) and not sweeps:
        return None
    if planner is None:
        binary = _resolve_binary(saescale)
        if binary is None:
            return _skipped(f"no saescale binary ({saescale or 'none given and none on PATH'}), "
                            "whose `plan` says what each grid communicates and computes.")
        planner = SaescalePlanner(binary)
    fits = fit_sweeps(sweeps)
    if not fits:
        return _skipped("no `allreduce.json` with an MPI_Allreduce sweep at 2 or more ranks under "
                        f"{study}, so there is nothing to fit the communication model to.")
    used = max(fits)
    ab = fits[used]
    try:
        bases, notes = choose_bases(runs, planner)
    except PlanError as e:
        return _skipped(str(e))
    if not bases:
        why = "; ".join(notes) if notes else "no results with status ok for any variant"
        return _skipped(f"no base point to project from ({why}).")
    extra: dict[tuple[str, str], set[int]] = {}
    for r in runs:
        if r.mode:
            extra.setdefault((r.sweep, r.variant), set()).add(r.ranks)
    try:
        proj, more = project(bases, ab, planner, gpus, extra)
        check = fit_check(runs, bases, ab, planner)
    except PlanError as e:
        return _skipped(str(e))
    notes += more
    measured = _measured_points(runs, bases)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sec = Section("Scaling projection")
    beta = ("unbounded" if math.isinf(ab.beta_bytes_per_s)
            else f"{ab.beta_bytes_per_s / 1e9:.3g} GB/s")
    sec.paragraphs += [
        f"What a step would cost on {min(gpus)} to {max(gpus)} GPUs, data parallel (`dp`: the batch split over "
        "replicas, the gradient buffer all-reduced) vs latent parallel (`lp`: the latents split "
        "over shards, the B x d reconstruction all-reduced, selections exchanged), projected from "
        "the measured points with a deliberately simple model. Its assumptions:",
        f"(1) Communication is a latency-bandwidth (alpha-beta) model of ring collectives: an "
        f"all-reduce of n bytes among p ranks takes 2(p-1)·α + 2(p-1)/p·n/β, an all-gather of one "
        f"b-byte block per rank (p-1)·α + (p-1)/p·(p·b)/β. α and β are fitted by least squares on "
        f"the relative error (times span four orders of magnitude) to the study's `MPI_Allreduce` "
        f"sweep; the projection uses the fit at the largest measured rank count, {used} ranks: "
        f"α = {ab.alpha_s * 1e6:.3g} µs, β = {beta} (largest relative residual "
        f"{_pct(ab.max_abs_residual)}). One network level: no distinction between links inside a "
        f"node and between nodes, so beyond one node the projection is optimistic wherever the "
        f"inter-node links are slower than the measured ones. The sweep is MPI on host buffers; "
        f"runs on GPUs use NCCL on device buffers, which the fit check below tests.",
        "(2) What each grid communicates is `saescale plan`'s list of collectives per phase (the "
        "same functions the trainer counts its bytes with): kind, group, ranks, bytes per call, "
        "calls. AuxK's collectives are included where AuxK runs in the base's median step "
        "(its `auxiliary_forward` costs at least a tenth of the activation), left out otherwise.",
        "(3) Compute: each compute phase's median at the base point (the variant's smallest "
        "measured rank count; its sweep's own run, else the variants sweep's) is scaled by the "
        "ratio of the work model's FLOPs (bytes for phases without FLOPs: the selections) on the "
        "projected rank's shapes to the base rank's, from the same plan — so the projection "
        "assumes each phase keeps the efficiency it had at the base's shapes; smaller local "
        "shapes usually run less efficiently, which makes it optimistic for strong scaling. "
        "The base's unattributed time (step median minus the sum of phase medians) is held "
        "constant.",
        "(4) No overlap of compute and communication: the step is their sum. This is "
        "conservative for data parallel: saescale overlaps the gradient all-reduce of W_dec's "
        "bucket with the encoder side of the backward pass. (5) Perfect load balance: the "
        "phase times are the max over ranks, and the model has no waiting for a slow rank.",
        "Weak scaling keeps the base's work per rank (dp: the per-rank batch, global batch "
        "B0·p; lp: the per-rank width, M = M0·p); strong scaling keeps the base's global B and "
        "M (points where B % dp or M % lp is not 0 are skipped). Efficiency: weak T(p0)/T(p), "
        "strong S(p)·p0/p, both against the projection at p0 (which reproduces the measured "
        "base up to its communication).",
    ]
    if not check.empty:
        err = check.rel_error.abs()
        worst = check.iloc[int(err.values.argmax())]
        sec.paragraphs.append(
            f"Fit check: the model predicts the {len(check)} measured scaling point(s) above their "
            f"base from the base alone with a median |error| of {100 * err.median():.0f}% (largest "
            f"{100 * err.max():.0f}%, {worst.variant} {worst['mode']} on {int(worst.ranks)} ranks). "
            "Measured communication phases include waiting for the slowest rank; the model's "
            "do not.")
    else:
        sec.paragraphs.append("Fit check: no measured scaling point above a base rank count, so "
                              "the model is unchecked.")
    for sweep in SCALING_SWEEPS:
        p = proj[proj.sweep == sweep]
        if p.empty:
            continue
        top = int(p.gpus.max())
        parts = []
        for variant, g in p[p.gpus == top].groupby("variant", sort=False):
            e = {m: g[g["mode"] == m].efficiency for m in MODES}
            parts.append(f"{variant} dp {_pct(e['dp'].iloc[0]) if len(e['dp']) else '-'} vs "
                         f"lp {_pct(e['lp'].iloc[0]) if len(e['lp']) else '-'}")
        if parts:
            sec.paragraphs.append(f"Projected {sweep}-scaling efficiency on {top} GPUs: "
                                  + "; ".join(parts) + ".")
    if notes:
        sec.paragraphs.append("Notes: " + "; ".join(notes) + ".")

    sec.tables.append((f"All-reduce alpha-beta fit per measured rank count (the projection uses "
                       f"{used} ranks)", _frame_fit(fits, used)))
    sec.tables.append((f"Residuals of the {used}-rank fit", _frame_residuals(ab)))
    sec.tables.append(("Base points (measured) the projection starts from", _frame_bases(bases)))
    if not check.empty:
        sec.tables.append(("Fit check: measured scaling points predicted from their base",
                           _frame_check(check)))
    shown = sorted({*gpus, *(r.ranks for r in runs if r.mode)})
    for sweep in SCALING_SWEEPS:
        if (proj.sweep == sweep).any():
            sec.tables.append((f"Projected {sweep} scaling: median step time, share in "
                               "communication, efficiency", _frame_projection(proj, sweep, shown)))

    fit_png = out_dir / "projection-allreduce-fit.png"
    _plot_fit(fits, fit_png)
    sec.figures.append(("All-reduce sweep and its alpha-beta fit; residuals below", fit_png))
    for sweep in SCALING_SWEEPS:
        if not (proj.sweep == sweep).any():
            continue
        t_png = out_dir / f"projection-{sweep}-time.png"
        e_png = out_dir / f"projection-{sweep}-efficiency.png"
        _plot_projection(proj, measured, sweep, "step_s", t_png)
        _plot_projection(proj, measured, sweep, "efficiency", e_png)
        sec.figures.append((f"Projected {sweep} scaling: median step time vs GPUs (log-log)", t_png))
        sec.figures.append((f"Projected {sweep} scaling: efficiency vs GPUs", e_png))
    return sec
