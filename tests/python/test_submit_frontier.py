"""The frontier sweep renders as one array job of 25 rows: five sparsity levels per variant."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_frontier_sweep_has_five_levels_per_variant(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "runs/submit"), "--system", "local", "--sweep", "frontier",
         "--study", str(tmp_path / "study"), "--bin", str(tmp_path), "--dry-run"],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --array=0-24" in done.stdout
    rows = dict(re.findall(r"^\s+\[([\w@.{}*/]+)\]='(.*)'$", done.stdout, flags=re.M))
    assert len(rows) == 25
    by_variant: dict[str, list[str]] = {}
    for name, args in rows.items():
        variant = re.search(r"--variant (\w+)", args).group(1)
        assert name.startswith(variant + "@")
        level = (re.search(r"--sparsity-coeff ([\d.]+)", args) if variant in
                 ("relu", "jumprelu", "gated") else re.search(r"--k (\d+)", args)).group(1)
        by_variant.setdefault(variant, []).append(level)
    assert sorted(by_variant) == ["batchtopk", "gated", "jumprelu", "relu", "topk"]
    # local.env: K = 8, so k runs 2 ... 32; lambda a quarter to four times the default.
    assert sorted(map(int, by_variant["topk"])) == [2, 4, 8, 16, 32]
    assert sorted(map(float, by_variant["jumprelu"])) == [0.00025, 0.0005, 0.001, 0.002, 0.004]
    assert all(len(levels) == 5 for levels in by_variant.values())


def dry_run(tmp_path: Path, *settings: str) -> subprocess.CompletedProcess:
    sets = [a for s in settings for a in ("--set", s)]
    return subprocess.run(
        [sys.executable, str(ROOT / "runs/submit"), "--system", "local", "--sweep", "frontier",
         "--study", str(tmp_path / "study"), "--bin", str(tmp_path), "--dry-run", *sets],
        capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_frontier_table_setting_runs_another_table(tmp_path: Path) -> None:
    """FRONTIER_TABLE=frontier-minilm: that table's rows (the MiniLM study's lambda ladders, every
    elementwise row started at L0 = K); a name that is no table is one line naming the file."""
    done = dry_run(tmp_path, "FRONTIER_TABLE=frontier-minilm", "K=32")
    assert done.returncode == 0, done.stderr
    rows = dict(re.findall(r"^\s+\[([\w@.{}*/]+)\]='(.*)'$", done.stdout, flags=re.M))
    assert len(rows) == 25
    assert "--sparsity-coeff 0.03 --initial-l0 32" in rows["relu@s0.03"]
    assert sorted(float(re.search(r"--sparsity-coeff ([\d.]+)", a).group(1))
                  for n, a in rows.items() if n.startswith("jumprelu@")) == \
        [0.0001, 0.0003, 0.001, 0.01, 0.1]
    for bad in ("no-such-table", "../sweeps/frontier"):
        done = dry_run(tmp_path, f"FRONTIER_TABLE={bad}")
        assert done.returncode == 1
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "FRONTIER_TABLE" in done.stderr or "no sweep table" in done.stderr, done.stderr
