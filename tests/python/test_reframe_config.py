"""runs/reframe: the site configuration is generated from runs/systems/*.env (one source of each
system's settings) and every system lists the 15 checks (5 variants x 3 grids)."""

from __future__ import annotations

import os
import subprocess
import sys
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMS = sorted(p.stem for p in (ROOT / "runs/systems").glob("*.env"))
reframe = pytest.importorskip("reframe")


def config(set_: str = "MODULES=") -> dict:
    os.environ["SAESCALE_SET"] = set_
    try:
        spec = importlib.util.spec_from_file_location("rfm_config", ROOT / "runs/reframe/config.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.site_configuration
    finally:
        del os.environ["SAESCALE_SET"]


def test_config_follows_the_system_settings():
    systems = {s["name"]: s for s in config("ACCOUNT=m1234 QOS=debug")["systems"]}
    assert sorted(systems) == SYSTEMS
    local = systems["local"]["partitions"][0]
    assert local["name"] == "debug" and local["scheduler"] == "squeue"  # local.env's settings
    assert local["access"] == ["--partition=debug", "--account=m1234", "--qos=debug"]
    assert systems["perlmutter"]["partitions"][0]["scheduler"] == "slurm"
    assert "--constraint=gpu" in systems["perlmutter"]["partitions"][0]["access"]


@pytest.mark.parametrize("system", SYSTEMS)
def test_every_system_lists_the_checks(system):
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from reframe.frontend.cli import main; sys.exit(main())",
         "-C", "runs/reframe/config.py", "-c", "runs/reframe/checks.py", "--system", system, "-l"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "SAESCALE_SET": "MODULES="})  # no Lmod here
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Found 15 check(s)" in done.stdout, done.stdout


def test_srun_gets_the_systems_launch_options(tmp_path):
    """The job script's srun line carries SRUN_MPI, the bindings, GPUs per task and SRUN_EXTRA."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from reframe.frontend.cli import main; sys.exit(main())",
         "-C", "runs/reframe/config.py", "-c", "runs/reframe/checks.py", "--system", "generic-gpu",
         "-n", "saescale_train%variant=topk%grid=2x1", "--dry-run", "--prefix", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "SAESCALE_SET": "MODULES= SRUN_EXTRA=--exclusive"})
    assert done.returncode == 0, done.stdout + done.stderr
    scripts = list(tmp_path.rglob("rfm_job.sh"))
    assert len(scripts) == 1, done.stdout
    srun = [line for line in scripts[0].read_text().splitlines() if line.startswith("srun")][0]
    for option in ("--mpi=pmix", "--cpu-bind=cores", "--gpus-per-task=1", "--exclusive"):
        assert option in srun, srun
