"""ReFrame perflogs of saescale's checks (runs/reframe) as results the regression gate reads.

A perflog (runs/reframe/config.py's format) is `|`-separated with a header line: completion
time, check name (`saescale_train %variant=<v> %grid=<dp>x<lp>`), system, partition, the saescale
train options (comma-joined), then per performance variable its value, unit, reference, bounds and verdict.
Each line is one run; it becomes a minimal results record (status ok, the benchmark's config,
the median step) so that `regress` pools the runs of one check as samples, one per run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .results import PathLike

HEADER_START = "job_completion_time|name|"
_NAME = re.compile(r"%variant=(\w+)\s+%grid=(\d+)x(\d+)")
_OPTIONS = {"--d-model": ("d_model", int), "--width": ("width", int),
            "--batch-size": ("batch_size", int), "--k": ("k", int),
            "--precision": ("precision", str), "--topk-algo": ("topk_algo", str),
            "--aux-k": ("aux_k", int), "--dead-window-tokens": ("dead_window_tokens", int),
            "--batch-scope": ("batch_scope", str), "--optimizer": ("optimizer", str)}


def is_perflog(path: PathLike) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().startswith(HEADER_START)
    except (OSError, UnicodeDecodeError):
        return False


def read_perflog(path: PathLike) -> list[dict[str, Any]]:
    """One minimal results record per run line of a saescale check's perflog.

    Raises ValueError naming the file and line when a line does not parse."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    out, header = [], None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line.startswith(HEADER_START):
            header = line.split("|")
            continue
        if header is None:
            raise ValueError(f"{path}:{n}: a run line before the header")
        row = dict(zip(header, line.split("|")))
        where = f"{path}:{n}"
        m = _NAME.search(row.get("name", ""))
        if not m:
            raise ValueError(f"{where}: check name {row.get('name')!r} is not saescale_train's")
        try:
            step_ms = float(row["step_ms_value"])
            opts = row.get("executable_opts", "").split(",")  # ReFrame joins the list with commas
        except (KeyError, ValueError) as e:
            raise ValueError(f"{where}: no step_ms value or options ({e})") from None
        config: dict[str, Any] = {"variant": m.group(1), "dp": int(m.group(2)),
                                  "lp": int(m.group(3)), "fence": True}
        for flag, value in zip(opts, opts[1:]):
            if flag in _OPTIONS:
                key, kind = _OPTIONS[flag]
                config[key] = kind(value)
        config.setdefault("topk_algo", "default")  # the perflog has no resolved algorithm
        out.append({
            "status": "ok", "_path": where,
            "config": config,
            "context": {"ranks": config["dp"] * config["lp"],
                        "grid": {"dp": config["dp"], "lp": config["lp"]},
                        "hostname": row.get("system", "")},
            "timing": {"step_s": {"median": step_ms / 1e3}, "fenced": True},
        })
    return out
