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
