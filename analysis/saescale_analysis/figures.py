"""The report's PNG figures, drawn with matplotlib's Agg canvas.

Every function takes plain numbers (already summarised by :mod:`report`) and writes one PNG.
Figures are built as ``matplotlib.figure.Figure`` objects rather than through pyplot, so no
global backend or figure registry is touched: the report can run headless and inside tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter, PercentFormatter

from .table import PHASE_GROUPS

#: The variants in the order the README introduces them; plots list them so.
VARIANT_ORDER = ("relu", "jumprelu", "gated", "topk", "batchtopk")

_PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3",
            "#8c8c8c", "#ccb974", "#64b5cd"]
GROUP_COLOURS = dict(zip(PHASE_GROUPS, _PALETTE))
MEMORY_COLOURS = {"parameters": _PALETTE[0], "gradients": _PALETTE[1],
                  "optimizer_state": _PALETTE[2], "activations": _PALETTE[3],
                  "communication_buffers": _PALETTE[4], "evaluation": _PALETTE[5],
                  "latent_state": _PALETTE[6]}
DPI = 110


def variant_colour(variant: str) -> str:
    """One colour per variant, the same in every figure (unknown variants share grey)."""
    return _PALETTE[VARIANT_ORDER.index(variant)] if variant in VARIANT_ORDER else _PALETTE[7]


def _save(fig: Figure, path: Path, right: float = 1.0) -> Path:
    """Lay out (leaving the right edge from ``right`` on for a figure legend) and write."""
    fig.tight_layout(rect=(0, 0, right, 1))
    fig.savefig(path, dpi=DPI)
    return path


def plain_numbers() -> FuncFormatter:
    """Tick labels as plain numbers (a new formatter per axis: formatters bind to one axis)."""
    return FuncFormatter(lambda v, _: f"{v:g}")


def log_y(ax) -> None:
    """Log y axis (call after plotting) labelled in plain numbers (0.2, 0.5, 1, 10), not powers
    of ten. Minor ticks are labelled too where the axis spans few decades (all of them within
    one decade, 2 and 5 within three), so a narrow axis is not left with one label or none."""
    ax.set_yscale("log")
    ax.autoscale_view()
    lo, hi = ax.get_ylim()
    span = hi / lo
    labelled = range(1, 10) if span < 10 else (1, 2, 5) if span < 1000 else (1,)

    def minor(v: float, _: int) -> str:
        mantissa = round(v / 10 ** math.floor(math.log10(v)), 6)
        return f"{v:g}" if mantissa in labelled else ""

    # Widen the limits to the next labelled tick on each side, so both ends carry a label.
    def ticks(v: float) -> list[float]:
        e = math.floor(math.log10(v))
        return [m * 10.0 ** k for k in (e - 1, e, e + 1) for m in labelled]

    ax.set_ylim(max(t for t in ticks(lo) if t <= lo * (1 + 1e-9)),
                min(t for t in ticks(hi) if t >= hi * (1 - 1e-9)))

    ax.yaxis.set_major_formatter(plain_numbers())
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def _yerr_ms(median: Sequence[float], lo: Sequence[float],
             hi: Sequence[float]) -> list[list[float]]:
    """Error bars in ms from confidence intervals in seconds (none where the CI is NaN)."""
    return [[0.0 if math.isnan(a) else (m - a) * 1e3 for m, a in zip(median, lo)],
            [0.0 if math.isnan(b) else (b - m) * 1e3 for m, b in zip(median, hi)]]


def _rank_axis(ax, ranks: Sequence[int]) -> None:
    """Log2 axis with a tick at every rank count measured (1, 2, 4, ... rather than 10^k)."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(ranks))
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(plain_numbers())
    ax.xaxis.set_minor_formatter(NullFormatter())
    if len(ticks) == 1:
        ax.set_xlim(ticks[0] / 1.5, ticks[0] * 1.5)


@dataclass
class Panel:
    """One subplot of stacked bars: a bar per label, its segments by group, an optional text
    above each bar."""

    title: str
    labels: list[str]
    stacks: list[dict[str, float]]
    annotations: list[str] | None = None


def stacked_bars(path: Path, panels: Sequence[Panel], ylabel: str, title: str,
                 xlabel: str = "", reference_line: float | None = None) -> Path:
    """Stacked bars of the phase groups, one subplot per panel (up to three per line), the
    legend to the right of them."""
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    widest = max(len(p.labels) for p in panels)
    fig_width = max(6.0, min(14.0, ncols * (1.2 + 0.75 * widest))) + 2.0
    fig = Figure(figsize=(fig_width, 1.0 + 3.4 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        bottom = [0.0] * len(panel.labels)
        for group in PHASE_GROUPS:
            heights = [s.get(group, 0.0) for s in panel.stacks]
            if any(h > 0 for h in heights):
                ax.bar(panel.labels, heights, bottom=bottom, color=GROUP_COLOURS[group],
                       label=group, width=0.65)
                bottom = [b + h for b, h in zip(bottom, heights)]
        for x, (top, text) in enumerate(zip(bottom, panel.annotations or [])):
            ax.annotate(text, (x, top), xytext=(0, 3), textcoords="offset points",
                        ha="center", va="bottom", fontsize=9)
        if reference_line is not None:
            ax.axhline(reference_line, color="black", lw=0.8, ls=":")
        ax.set_ylim(0, max(bottom, default=1.0) * 1.15 or 1.0)
        ax.set_title(panel.title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.set_xlabel(xlabel)
        ax.tick_params(axis="x", labelrotation=30 if widest > 4 else 0)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles: dict[str, object] = {}
    for ax in axes[:len(panels)]:  # a group absent from the first panel still gets an entry
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    order = sorted(handles, key=PHASE_GROUPS.index, reverse=True)  # top segment first
    fig.legend([handles[g] for g in order], order, fontsize=8, loc="center right")
    fig.suptitle(title, fontsize=11)
    return _save(fig, path, right=1 - 1.9 / fig_width)


@dataclass
class ScalingLine:
    """One series of a scaling sweep: median step (with its CI), ideal time and efficiency per
    rank count."""

    label: str
    variant: str
    latent_parallel: bool
    ranks: list[int]
    median_s: list[float]
    ci_lo_s: list[float]
    ci_hi_s: list[float]
    ideal_s: list[float]
    efficiency: list[float]


def scaling(path: Path, lines: Sequence[ScalingLine], title: str, ideal: str) -> Path:
    """Left: median step time against ranks, log-log, with the ideal line (dotted) and the 95%
    CI of each median; right: parallel efficiency on a linear 0-100% axis."""
    fig = Figure(figsize=(11.0, 4.2))
    ax_t, ax_e = fig.subplots(1, 2)
    ranks = [p for line in lines for p in line.ranks]
    for line in lines:
        colour = variant_colour(line.variant)
        style = dict(color=colour, marker="s" if line.latent_parallel else "o",
                     ls="--" if line.latent_parallel else "-")
        ax_t.errorbar(line.ranks, [m * 1e3 for m in line.median_s],
                      yerr=_yerr_ms(line.median_s, line.ci_lo_s, line.ci_hi_s), capsize=3,
                      label=line.label, **style)
        ax_t.plot(line.ranks, [t * 1e3 for t in line.ideal_s], color=colour, ls=":", lw=1)
        ax_e.plot(line.ranks, [100 * e for e in line.efficiency], label=line.label, **style)
    log_y(ax_t)
    ax_t.set_ylabel("median step time (ms)")
    ax_t.set_title(f"step time (dotted: ideal, {ideal})", fontsize=10)
    top = max([100.0] + [100 * e for line in lines for e in line.efficiency if not math.isnan(e)])
    ax_e.set_ylim(0, max(105.0, top * 1.05))
    ax_e.axhline(100, color="black", lw=0.8, ls=":")
    ax_e.yaxis.set_major_formatter(PercentFormatter())
    ax_e.set_ylabel("parallel efficiency")
    ax_e.set_title("efficiency", fontsize=10)
    for ax in (ax_t, ax_e):
        _rank_axis(ax, ranks)
        ax.set_xlabel("ranks")
        ax.grid(True, which="major", alpha=0.3)
    ax_e.legend(fontsize=8, loc="lower left")
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def memory(path: Path, labels: Sequence[str], peaks: Sequence[float | None],
           breakdowns: Sequence[dict[str, float]]) -> Path:
    """Per variant two bars: the measured peak (grey) and the analytic breakdown (stacked)."""
    fig = Figure(figsize=(max(6.0, 1.3 * len(labels) + 2), 4.2))
    ax = fig.subplots()
    width = 0.38
    xs = range(len(labels))
    ax.bar([x - width / 2 for x in xs], [(p or 0.0) / 2**20 for p in peaks], width,
           color="#8c8c8c", label="measured peak")
    for x, p in zip(xs, peaks):
        if p is None:
            ax.annotate("not tracked", (x - width / 2, 0), xytext=(0, 3),
                        textcoords="offset points", ha="center", rotation=90, fontsize=8)
    bottom = [0.0] * len(labels)
    for part, colour in MEMORY_COLOURS.items():
        heights = [b.get(part, 0.0) / 2**20 for b in breakdowns]
        if any(h > 0 for h in heights):
            ax.bar([x + width / 2 for x in xs], heights, width, bottom=bottom, color=colour,
                   label=f"analytic: {part.replace('_', ' ')}")
            bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("MiB per rank")
    ax.set_title("memory per rank: measured peak (left) and analytic breakdown (right)",
                 fontsize=10)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, path)


def fvu_l0(path: Path, series: dict[str, list[tuple[float, float, str]]]) -> Path:
    """FVU against L0, one line per variant through its sparsity levels; the points of extra
    levels are labelled with the level (an empty label: the main point). Lower left is better."""
    fig = Figure(figsize=(7.0, 4.8))
    ax = fig.subplots()
    for variant, points in series.items():
        points = sorted(points)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                color=variant_colour(variant), label=variant)
        for l0, fvu, level in points:
            if level:
                ax.annotate(level, (l0, fvu), xytext=(4, 4), textcoords="offset points",
                            fontsize=8)
    ax.set_xlabel("L0 (mean active latents per token)")
    ax.set_ylabel("FVU (held out)")
    ax.set_title("fidelity against sparsity (lower left is better)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def frontier(path: Path, variant: str, points: Sequence[tuple[float, float, float, str]]) -> Path:
    """One variant's frontier: FVU against L0 (left axis, solid), the median step at each point
    (right axis, dashed), each point labelled with its time to the first target FVU (a string)."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    pts = sorted(points)
    colour = variant_colour(variant)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colour, label="FVU")
    for l0, fvu, _, note in pts:
        if note:
            ax.annotate(note, (l0, fvu), xytext=(4, 4), textcoords="offset points", fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("L0 (mean active latents per token, log scale)")
    ax.set_ylabel("FVU (held out)")
    ax.grid(True, alpha=0.3)
    cost = ax.twinx()
    cost.plot([p[0] for p in pts], [1e3 * p[2] for p in pts], linestyle="--", marker="s",
              color="0.4", label="step ms")
    cost.set_ylabel("median step (ms, dashed)")
    cost.set_ylim(bottom=0)
    ax.set_title(f"{variant}: frontier (solid) and cost per step (dashed)", fontsize=10)
    return _save(fig, path)


def time_to_fidelity(path: Path, targets: Sequence[float],
                     times: dict[str, list[float | str]]) -> Path:
    """Grouped bars: training seconds to reach each target FVU, one bar per variant; where a
    variant has no time (a string, e.g. "not reached") the string is written at the bottom."""
    fig = Figure(figsize=(max(6.0, 1.2 + 0.5 * len(targets) * len(times)), 4.2))
    ax = fig.subplots()
    width = 0.8 / max(1, len(times))
    for i, (variant, values) in enumerate(times.items()):
        xs = [t + (i - (len(times) - 1) / 2) * width for t in range(len(targets))]
        ax.bar(xs, [0.0 if isinstance(v, str) else v for v in values], width,
               color=variant_colour(variant), label=variant)
        for x, v in zip(xs, values):
            if isinstance(v, str):
                ax.annotate(v, (x, 0), xytext=(0, 3), textcoords="offset points",
                            ha="center", va="bottom", rotation=90, fontsize=7)
    measured = [v for values in times.values() for v in values if not isinstance(v, str) and v > 0]
    if measured and max(measured) > 30 * min(measured):
        log_y(ax)
    ax.set_xticks(range(len(targets)), [f"FVU <= {t:g}" for t in targets])
    ax.set_ylabel("training time to reach it (s)")
    ax.set_title("time to fidelity (steps only, evaluation excluded)", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


@dataclass
class BoxPanel:
    """One subplot of box plots: per-step samples (seconds) per label."""

    title: str
    labels: list[str]
    samples: list[Sequence[float]]


def boxplots(path: Path, panels: Sequence[BoxPanel], title: str) -> Path:
    """Box plots of the per-step times: box = quartiles, line = median, whiskers = p10-p90,
    points beyond them drawn small. A panel whose steps span more than 10x is drawn on a log
    axis (a strong-scaling series, or a slow variant beside fast ones)."""
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    widest = max(len(p.labels) for p in panels)
    fig = Figure(figsize=(max(6.0, min(14.0, ncols * (1.2 + 0.7 * widest))), 1.0 + 3.4 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        ax.boxplot([[v * 1e3 for v in s] for s in panel.samples], whis=(10, 90),
                   flierprops=dict(markersize=2, alpha=0.5))
        ax.set_xticks(range(1, len(panel.labels) + 1), panel.labels)
        ax.tick_params(axis="x", labelrotation=30 if widest > 4 else 0)
        values = [v for s in panel.samples for v in s if v > 0]
        if values and max(values) > 10 * min(values):
            log_y(ax)
        ax.set_ylabel("step time (ms)")
        ax.set_title(panel.title, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def width(path: Path, series: dict[str, list[tuple[int, float, float, float]]]) -> Path:
    """Median step time (95% CI bars) against the number of latents M, log-log, per variant."""
    fig = Figure(figsize=(7.0, 4.5))
    ax = fig.subplots()
    for variant, points in series.items():
        m, median, lo, hi = zip(*sorted(points))
        ax.errorbar(m, [t * 1e3 for t in median], yerr=_yerr_ms(median, lo, hi), marker="o",
                    capsize=3, color=variant_colour(variant), label=variant)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(plain_numbers())
    log_y(ax)
    ax.set_xlabel("latents M")
    ax.set_ylabel("median step time (ms)")
    ax.set_title("step time against SAE width", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
