"""Tests for the saescale_analysis package (results loading, tables, CLI)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from saescale_analysis import FRAME_COLUMNS, format_table, load_result, load_results, table_rows, to_frame

ANALYSIS_DIR = Path(__file__).resolve().parents[2] / "analysis"
VARIANTS = ["batchtopk", "gated", "jumprelu", "relu", "topk"]


def make_result(rng: np.random.Generator, variant: str, *, ground_truth: bool = True,
                d_model: int = 64, width: int = 512, batch_size: int = 1024, ranks: int = 1) -> dict[str, Any]:
    def stats(scale: float) -> dict[str, float]:
        p10, med, p90 = np.sort(rng.uniform(0.5, 1.5, size=3)) * scale
        return {"median": float(med), "p10": float(p10), "p90": float(p90),
                "min": float(p10 * 0.9), "max": float(p90 * 1.1), "n": int(rng.integers(50, 500))}

    step = stats(float(rng.uniform(1e-3, 5e-2)))
    floor = float(step["median"] * rng.uniform(0.3, 0.9))
    fvu, l0 = float(rng.uniform(0.01, 0.3)), float(rng.uniform(5, 100))
    mmcs = float(rng.uniform(0.5, 1.0)) if ground_truth else None
    return {
        "schema": "saescale.result/1",
        "status": "ok",
        "context": {"saescale_version": "0.1.0", "git_commit": "0123abcd", "git_dirty": False,
                    "ranks": ranks, "grid": {"dp": ranks, "lp": 1},
                    "gpu": None, "hostname": "h", "unknown_field": [1, 2]},
        "config": {"variant": variant, "d_model": d_model, "width": width, "batch_size": batch_size,
                   "steps": int(rng.integers(100, 1000)), "k": 32, "lr": float(rng.uniform(1e-5, 1e-3)),
                   "precision": "fp32", "seed": int(rng.integers(0, 2**31)), "data": "synthetic"},
        "timing": {"step_s": step,
                   "phases_s": {"encode_gemm": stats(1e-3), "decode_gemm": stats(1e-3)},
                   "tokens_per_s": float(batch_size / step["median"]),
                   "flops_per_step": float(rng.uniform(1e8, 1e10)),
                   "gemm_floor_s": floor, "floor_ratio": step["median"] / floor,
                   "warmup_steps": 10, "total_train_s": float(rng.uniform(1, 100)),
                   "fenced": True, "communication": {}},
        "memory": {"peak_device_bytes": int(rng.integers(1, 2**34)),
                   "peak_host_rss_bytes": int(rng.integers(2**20, 2**36)),
                   "breakdown": {"parameters": 1, "gradients": 1, "optimizer_state": 2,
                                 "activations": 3, "communication_buffers": 0}},
        "fidelity": {"fvu": fvu, "l0": l0,
                     "dead_fraction": float(rng.uniform(0, 0.2)),
                     "shrinkage": float(rng.uniform(0.8, 1.0)),
                     "mmcs": mmcs,
                     "recovered_fraction": float(rng.uniform(0.5, 1.0)) if ground_truth else None,
                     "eval_tokens": 8192,
                     "loss_curve": [{"step": 0, "loss": 1.0, "mse": 0.9, "l0": 30.0}],
                     "eval_curve": [{"step": 50, "fvu": 2 * fvu, "l0": 2 * l0, "mmcs": mmcs,
                                     "dead_fraction": 0.0}]},
        "benchmarks": [{"name": f"saescale/{variant}/step", "run_name": f"saescale/{variant}/step",
                        "run_type": "iteration", "repetitions": 1, "repetition_index": 0,
                        "threads": ranks, "iterations": 1, "real_time": step["median"] * 1e3,
                        "cpu_time": step["median"] * 1e3, "time_unit": "ms"}],
    }


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    # Random but reproducible per test: seeded from the test's name.
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


@pytest.fixture
def runs(rng: np.random.Generator, tmp_path: Path) -> tuple[list[dict[str, Any]], list[Path]]:
    results = [make_result(rng, v, ground_truth=(v != "relu")) for v in rng.permutation(VARIANTS)]
    paths = [write(tmp_path / f"run_{i}.json", r) for i, r in enumerate(results)]
    return results, paths


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ANALYSIS_DIR)}
    return subprocess.run([sys.executable, "-m", "saescale_analysis", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)


def markdown_rows(text: str) -> tuple[list[str], list[list[str]]]:
    lines = text.strip().splitlines()
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    return cells[0], cells[2:]


# --- loading -----------------------------------------------------------------

def test_load_result_roundtrip(runs):
    results, paths = runs
    loaded = load_result(paths[0])
    assert loaded["config"] == results[0]["config"]
    assert loaded["timing"]["step_s"]["median"] == results[0]["timing"]["step_s"]["median"]


@pytest.mark.parametrize("bad", [{"schema": "saescale.result/2"}, {"status": "ok"}, [1, 2, 3]])
def test_load_result_bad_schema(tmp_path, bad):
    path = write(tmp_path / "bad.json", bad)
    with pytest.raises(ValueError, match="bad.json"):
        load_result(path)


def test_load_result_invalid_json_and_missing(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="broken.json"):
        load_result(path)
    with pytest.raises(FileNotFoundError):
        load_result(tmp_path / "missing.json")


def test_load_results_globs(runs, tmp_path):
    results, paths = runs
    loaded = load_results(str(tmp_path / "run_*.json"))
    assert [r["_path"] for r in loaded] == sorted(map(str, paths))
    assert len(load_results([paths[1], paths[0]])) == 2
    assert load_results(paths[2])[0]["config"]["variant"] == results[2]["config"]["variant"]
    with pytest.raises(FileNotFoundError):
        load_results(str(tmp_path / "nothing_*.json"))


# --- to_frame ----------------------------------------------------------------

def test_to_frame_columns_and_values(runs):
    results, paths = runs
    df = to_frame(load_results(paths))
    assert list(df.columns[: len(FRAME_COLUMNS)]) == FRAME_COLUMNS
    for col in ["variant", "d_model", "width", "batch_size", "ranks", "step_median_s", "step_p10_s",
                "step_p90_s", "tokens_per_s", "floor_ratio", "fvu", "l0", "dead_fraction", "mmcs",
                "recovered_fraction", "peak_host_rss_bytes", "path"]:
        assert col in df.columns
    assert len(df) == len(results)
    for (_, row), r, p in zip(df.iterrows(), results, paths):
        assert row["variant"] == r["config"]["variant"]
        assert row["path"] == str(p)
        assert row["width"] == r["config"]["width"]
        assert row["ranks"] == r["context"]["ranks"]
        assert row["step_median_s"] == pytest.approx(r["timing"]["step_s"]["median"])
        assert row["step_p10_s"] == pytest.approx(r["timing"]["step_s"]["p10"])
        assert row["step_p90_s"] == pytest.approx(r["timing"]["step_s"]["p90"])
        assert row["tokens_per_s"] == pytest.approx(r["timing"]["tokens_per_s"])
        assert row["floor_ratio"] == pytest.approx(r["timing"]["floor_ratio"])
        assert row["fvu"] == pytest.approx(r["fidelity"]["fvu"])
        assert row["l0"] == pytest.approx(r["fidelity"]["l0"])
        assert row["dead_fraction"] == pytest.approx(r["fidelity"]["dead_fraction"])
        assert row["peak_host_rss_bytes"] == r["memory"]["peak_host_rss_bytes"]
        if r["fidelity"]["mmcs"] is None:
            assert math.isnan(row["mmcs"]) and math.isnan(row["recovered_fraction"])
        else:
            assert row["mmcs"] == pytest.approx(r["fidelity"]["mmcs"])
            assert row["recovered_fraction"] == pytest.approx(r["fidelity"]["recovered_fraction"])
    assert df["fvu"].dtype == np.float64 and df["mmcs"].dtype == np.float64


def test_to_frame_null_floor_and_empty(rng):
    r = make_result(rng, "topk")
    r["timing"]["gemm_floor_s"] = r["timing"]["floor_ratio"] = None
    df = to_frame([r])
    assert math.isnan(df.loc[0, "floor_ratio"])
    assert "path" in df.columns
    empty = to_frame([])
    assert list(empty.columns) == FRAME_COLUMNS and len(empty) == 0


# --- tables ------------------------------------------------------------------

def test_table_ratios_and_order(runs):
    results, paths = runs
    df = to_frame(load_results(paths))
    header, rows = table_rows(df, "jumprelu")
    assert header[0] == "variant" and "vs jumprelu" in header
    assert [r[0] for r in rows] == sorted(VARIANTS)
    ref = next(r for r in results if r["config"]["variant"] == "jumprelu")["timing"]["step_s"]["median"]
    by_variant = {r["config"]["variant"]: r for r in results}
    ratio_col = header.index("vs jumprelu")
    for row in rows:
        expected = by_variant[row[0]]["timing"]["step_s"]["median"] / ref
        assert row[ratio_col] == f"{expected:.2f}x"
        if row[0] == "jumprelu":
            assert row[ratio_col] == "1.00x"
        median = by_variant[row[0]]["timing"]["step_s"]["median"]
        assert row[header.index("step ms (median)")] == f"{median * 1e3:.3f}"
    relu = rows[[r[0] for r in rows].index("relu")]
    assert relu[header.index("MMCS")] == "-"


def test_table_plain_text_fixed_width(runs):
    _, paths = runs
    text = format_table(to_frame(load_results(paths)))
    lines = text.splitlines()
    assert lines[0].startswith("variant") and "vs jumprelu" in lines[0]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert len(lines) == 2 + len(VARIANTS)
    assert [ln.split()[0] for ln in lines[2:]] == sorted(VARIANTS)
    # Right-aligned numeric columns end at the same offset on every line.
    assert len({len(ln) for ln in lines}) == 1
    assert "1.00x" in lines[2 + sorted(VARIANTS).index("jumprelu")]
    assert "|" not in text


def test_table_reference_absent(runs):
    _, paths = runs
    df = to_frame(load_results(paths))
    header, rows = table_rows(df, "no-such-variant")
    col = header.index("vs no-such-variant")
    assert all(r[col] == "-" for r in rows)
    df = df[df["variant"] != "jumprelu"]
    header, rows = table_rows(df)
    assert all(r[header.index("vs jumprelu")] == "-" for r in rows)


def test_table_relative_to_other_variant(runs):
    results, paths = runs
    header, rows = table_rows(to_frame(load_results(paths)), relative_to="topk")
    col = header.index("vs topk")
    assert dict((r[0], r[col]) for r in rows)["topk"] == "1.00x"


def test_table_mixed_configs_compare_within_config(rng):
    results = [make_result(rng, v, width=w) for w in (512, 2048) for v in ("jumprelu", "topk")]
    header, rows = table_rows(to_frame(results))
    assert "config" in header
    med = {(r["config"]["variant"], r["config"]["width"]): r["timing"]["step_s"]["median"] for r in results}
    col = header.index("vs jumprelu")
    for row in rows:
        width = int(row[header.index("config")].split("x")[1])
        assert row[col] == f"{med[(row[0], width)] / med[('jumprelu', width)]:.2f}x"


def test_table_markdown(runs):
    results, paths = runs
    text = format_table(to_frame(load_results(paths)), markdown=True)
    lines = text.splitlines()
    assert all(ln.startswith("|") and ln.endswith("|") for ln in lines)
    assert set(lines[1]) <= set("|-: ")
    header, rows = markdown_rows(text)
    assert header[0] == "variant" and len(rows) == len(results)
    assert all(len(r) == len(header) for r in rows)


# --- CLI ---------------------------------------------------------------------

def test_cli_help():
    for args in ([], ["table"], ["check-learning"]):
        proc = run_cli(*args, "--help")
        assert proc.returncode == 0
        assert "usage:" in proc.stdout
    assert "--max-fvu" in run_cli("check-learning", "--help").stdout


def test_cli_table(runs):
    _, paths = runs
    proc = run_cli("table", *paths)
    assert proc.returncode == 0, proc.stderr
    assert "vs jumprelu" in proc.stdout and "1.00x" in proc.stdout
    proc = run_cli("table", *paths, "--markdown", "--relative-to", "topk")
    assert proc.returncode == 0, proc.stderr
    header, rows = markdown_rows(proc.stdout)
    assert "vs topk" in header
    assert dict((r[0], r[header.index("vs topk")]) for r in rows)["topk"] == "1.00x"


def test_cli_errors_exit_2(runs, tmp_path):
    _, paths = runs
    proc = run_cli("table", paths[0], tmp_path / "missing.json")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "missing.json" in proc.stderr
    bad = write(tmp_path / "bad.json", {"schema": "other/1"})
    proc = run_cli("check-learning", bad, "--max-fvu", "1")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "bad.json" in proc.stderr
    assert run_cli("table").returncode == 2  # no files
    assert run_cli("check-learning", paths[0], "--true-l0", "32").returncode == 2  # missing ratio


def test_cli_check_learning(rng, tmp_path):
    true_l0, ratio = 32.0, 1.5
    results = [make_result(rng, v) for v in VARIANTS]
    for r in results:
        r["fidelity"].update(fvu=float(rng.uniform(0.01, 0.09)), recovered_fraction=float(rng.uniform(0.91, 1.0)),
                             l0=float(rng.uniform(true_l0 / ratio * 1.01, true_l0 * ratio * 0.99)))
    paths = [write(tmp_path / f"{r['config']['variant']}.json", r) for r in results]
    opts = ["--max-fvu", "0.1", "--min-recovered", "0.9", "--max-l0-ratio", str(ratio), "--true-l0", str(true_l0)]

    proc = run_cli("check-learning", *paths, *opts)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # Break one criterion in three different runs (and two in one of them).
    results[0]["fidelity"]["fvu"] = float(rng.uniform(0.2, 0.9))
    results[1]["fidelity"]["recovered_fraction"] = None
    results[2]["fidelity"]["l0"] = float(true_l0 * ratio * rng.uniform(1.1, 3))
    results[2]["fidelity"]["fvu"] = float(rng.uniform(0.2, 0.9))
    for r, p in zip(results, paths):
        write(p, r)
    proc = run_cli("check-learning", *paths, *opts)
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3
    assert {Path(ln.split()[1]).name for ln in lines} == {p.name for p in paths[:3]}
    assert "fvu" in lines[0] and "recovered" in lines[1] and "l0" in lines[2] and "fvu" in lines[2]

    # Only the checks that are asked for apply.
    proc = run_cli("check-learning", *paths, "--max-l0-ratio", str(ratio), "--true-l0", str(true_l0))
    assert proc.returncode == 1 and len(proc.stdout.strip().splitlines()) == 1


def test_phases_breakdown_shares_and_order(rng, tmp_path):
    from saescale_analysis.table import format_phases

    result = make_result(rng, "jumprelu")
    step = result["timing"]["step_s"]["median"]
    text = format_phases(result)
    lines = text.splitlines()
    assert "floor_ratio" in lines[0]
    rows = {ln.split()[0]: ln.split() for ln in lines[2:] if ln.split()[0] in result["timing"]["phases_s"]}
    assert set(rows) == set(result["timing"]["phases_s"])
    for name, cells in rows.items():
        med = result["timing"]["phases_s"][name]["median"]
        assert float(cells[1]) == pytest.approx(med * 1e3, abs=0.006)
        assert float(cells[3].rstrip("%")) == pytest.approx(100 * med / step, abs=0.06)
    # slowest first
    order = [ln.split()[0] for ln in lines[2:-1]]
    medians = [result["timing"]["phases_s"][n]["median"] for n in order]
    assert medians == sorted(medians, reverse=True)
    proc = run_cli("phases", write(tmp_path / "r.json", result))
    assert proc.returncode == 0 and "sum of phase medians" in proc.stdout


def test_scaling_speedup_efficiency_and_communication(rng):
    from saescale_analysis.scaling import format_scaling, scaling_rows
    one = make_result(rng, "topk")
    runs = [one]
    for dp, lp in [(2, 1), (1, 2), (2, 2)]:
        r = make_result(rng, "topk", ranks=dp * lp)
        r["context"]["grid"] = {"dp": dp, "lp": lp}
        step = float(rng.uniform(0.3, 1.2)) * one["timing"]["step_s"]["median"]
        r["timing"]["step_s"]["median"] = step
        comm = float(rng.uniform(0.05, 0.3)) * step
        r["timing"]["phases_s"]["comm_decode"] = {"median": comm / 2}
        r["timing"]["phases_s"]["comm_gradients"] = {"median": comm / 2}
        r["timing"]["communication"] = {"comm_decode": {"sent_bytes_per_step": 3 * 2**20},
                                        "comm_gradients": {"sent_bytes_per_step": 2**19}}
        runs.append(r)
    header, rows = scaling_rows(runs)
    assert [row[1] for row in rows] == ["dp 1 x lp 1", "dp 2 x lp 1", "dp 1 x lp 2", "dp 2 x lp 2"]
    base = one["timing"]["step_s"]["median"]
    for row, r in zip(rows[1:], runs[1:]):
        dp, lp = r["context"]["grid"]["dp"], r["context"]["grid"]["lp"]
        step = r["timing"]["step_s"]["median"]
        assert row[header.index("speedup")] == f"{base / step:.2f}x"
        assert row[header.index("efficiency")] == f"{100 * base / step / (dp * lp):.0f}%"
        comm = r["timing"]["phases_s"]["comm_decode"]["median"] * 2
        assert row[header.index("comm ms")] == f"{comm * 1e3:.2f}"
        assert row[header.index("sent MiB/step")] == "3.50"
    assert rows[0][header.index("speedup")] == "1.00x"
    assert format_scaling(runs, markdown=True).count("\n") == len(runs) + 1


def test_costs_shares_rates_and_memory(rng):
    from saescale_analysis.table import format_costs
    r = make_result(rng, "jumprelu")
    step = 0.1
    r["timing"]["step_s"]["median"] = step
    r["timing"]["phases_s"] = {
        "encode_gemm": {"median": 0.03, "flops": 3e9}, "decode_gemm": {"median": 0.03, "flops": 3e9},
        "activation": {"median": 0.02}, "optimizer": {"median": 0.01}, "renormalize": {"median": 0.01}}
    r["timing"]["ceilings"] = {"gemm_gflops_per_s": 200.0}
    r["memory"]["peak_device_bytes"] = 2**30
    r["memory"]["breakdown_total"] = 2**29
    r["_path"] = "/x/jumprelu.json"
    line = format_costs([r]).splitlines()[2].split()
    assert line == ["jumprelu", "100.0", "60.0", "20.0", "0.0", "10.0", "10.0", "100.0", "50%",
                    "1024.0", "512.0"]
    assert format_costs([r], markdown=True).splitlines()[2].startswith("| jumprelu |")
