"""Loading saescale results JSON files and flattening them into a DataFrame."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

SCHEMA = "saescale.result/1"

PathLike = str | os.PathLike[str]

# Column name -> (section path inside the result, pandas dtype).
_COLUMNS: dict[str, tuple[tuple[str, ...], str]] = {
    "variant": (("config", "variant"), "object"),
    "d_model": (("config", "d_model"), "Int64"),
    "width": (("config", "width"), "Int64"),
    "batch_size": (("config", "batch_size"), "Int64"),
    "ranks": (("context", "ranks"), "Int64"),
    "step_median_s": (("timing", "step_s", "median"), "float64"),
    "step_p10_s": (("timing", "step_s", "p10"), "float64"),
    "step_p90_s": (("timing", "step_s", "p90"), "float64"),
    "tokens_per_s": (("timing", "tokens_per_s"), "float64"),
    "floor_ratio": (("timing", "floor_ratio"), "float64"),
    "fvu": (("fidelity", "fvu"), "float64"),
    "l0": (("fidelity", "l0"), "float64"),
    "dead_fraction": (("fidelity", "dead_fraction"), "float64"),
    "mmcs": (("fidelity", "mmcs"), "float64"),
    "recovered_fraction": (("fidelity", "recovered_fraction"), "float64"),
    "peak_host_rss_bytes": (("memory", "peak_host_rss_bytes"), "Int64"),
    "status": (("status",), "object"),
}

#: Columns of the frame returned by :func:`to_frame`, in order.
FRAME_COLUMNS: list[str] = [*_COLUMNS, "path"]


def load_result(path: PathLike) -> dict[str, Any]:
    """Read one results file and check its schema tag.

    Raises OSError (e.g. FileNotFoundError) if the file cannot be read and
    ValueError, naming the path, if it is not a "saescale.result/1" object.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    schema = data.get("schema")
    if schema != SCHEMA:
        raise ValueError(f"{path}: unsupported schema {schema!r} (expected {SCHEMA!r})")
    data["_path"] = str(path)
    return data


def _expand(spec: PathLike) -> list[str]:
    s = os.fspath(spec)
    if glob.has_magic(s):
        matches = sorted(glob.glob(s, recursive=True))
        if not matches:
            raise FileNotFoundError(f"{s}: pattern matched no files")
        return matches
    return [s]


def load_results(paths: PathLike | Iterable[PathLike]) -> list[dict[str, Any]]:
    """Load results from paths and/or glob patterns (in the given order)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return [load_result(p) for spec in paths for p in _expand(spec)]


def _get(d: Any, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def to_frame(results: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per run; JSON nulls / missing fields become NaN (or <NA>)."""
    rows = [
        {**{col: _get(r, keys) for col, (keys, _) in _COLUMNS.items()}, "path": r.get("_path")}
        for r in results
    ]
    df = pd.DataFrame(rows, columns=FRAME_COLUMNS)
    return df.astype({col: dtype for col, (_, dtype) in _COLUMNS.items()})
