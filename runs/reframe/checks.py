"""saescale's ReFrame checks: `saescale train` for each variant and grid at the system's problem
size (D_MODEL, WIDTH, BATCH_SIZE, K, STEPS of runs/systems/<system>.env), launched by srun inside
a Slurm job. Sanity comes from the results JSON (status ok, the project's schema, finite FVU);
the performance variables are the median step, tokens/s, the step over the in-run GEMM floor,
selection over the encoder GEMM (TopK, BatchTopK), MFU against the card's bf16 dense peak where
a known GPU ran it (saescale_analysis.peaks), and the bus bandwidth of the gradient all-reduce
(more than one rank). References and tolerances come
from runs/systems/<system>.references (one line per check and variable; SAESCALE_REFERENCES
names another file). SAESCALE_BIN: the directory holding saescale (default build/bin)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shlex
import sys
from pathlib import Path

import reframe as rfm
import reframe.utility.sanity as sn
from reframe.core.builtins import (parameter, performance_function, run_after, run_before,
                                   sanity_function, variable)

# The shared settings reader, loaded by its path: imported through sys.path instead, under
# ReFrame's loader, it left the venv's site-packages off sys.path (pandas was not found).
_spec = importlib.util.spec_from_file_location(
    "saescale_systems", Path(__file__).resolve().parent / "saescale_systems.py")
_systems = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_systems)
RUNS, submit, system_settings = _systems.RUNS, _systems.submit, _systems.system_settings

REPO = RUNS.parent
sys.path.insert(0, str(REPO / "analysis"))
from saescale_analysis import peaks, schema  # noqa: E402  (imported while checks load)


def references(system: str) -> dict:
    """{check: {perf variable: (value, lower, upper, unit)}} from the references file: lines of
    `<variant>-<dp>x<lp> <variable> <value> <lower> <upper> <unit>`, the bounds as ReFrame's
    fractions of the value (-0.5: 50% below; `none`: unbounded)."""
    path = Path(os.environ.get("SAESCALE_REFERENCES") or RUNS / "systems" / f"{system}.references")
    out: dict = {}
    if not path.is_file():
        return out
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cols = line.split()
        if len(cols) != 6:
            raise ValueError(f"{path}:{n}: 6 columns: check variable value lower upper unit")
        check, var, value, lower, upper, unit = cols
        bound = lambda x: None if x == "none" else float(x)  # noqa: E731
        out.setdefault(check, {})[var] = (float(value), bound(lower), bound(upper), unit)
    return out


@sn.deferrable
def results(path: str) -> dict:
    return json.loads(Path(path).read_text())


@rfm.simple_test
class saescale_train(rfm.RunOnlyRegressionTest):
    """One saescale training run: a variant on a dp x lp grid."""

    variant = parameter(["jumprelu", "relu", "gated", "topk", "batchtopk"])
    grid = parameter([(1, 1), (2, 1), (1, 2)], fmt=lambda g: f"{g[0]}x{g[1]}")
    valid_systems = ["*"]
    valid_prog_environs = ["*"]
    extra_args = variable(str, value="")  # more saescale train options (-S extra_args=...)
    tags = {"saescale"}

    @run_after("init")
    def from_settings(self):
        env = system_settings(self.current_system.name)
        dp, lp = self.grid
        self.key = f"{self.variant}-{dp}x{lp}"  # its name in the references file
        self.num_tasks = dp * lp
        self.num_tasks_per_node = min(self.num_tasks, int(env.get("TASKS_PER_NODE") or 1))
        self.num_cpus_per_task = int(env.get("CPUS_PER_TASK") or 1)
        if int(env.get("GPUS_PER_TASK") or 0):
            self.extra_resources = {"gpu": {"num_gpus_per_node": int(env["GPUS_PER_NODE"])}}
        bin_dir = Path(os.environ.get("SAESCALE_BIN", REPO / "build" / "bin")).resolve()
        self.executable = str(bin_dir / "saescale")
        self.executable_opts = [
            "train", "--variant", self.variant, "--dp", str(dp), "--lp", str(lp),
            "--d-model", env["D_MODEL"], "--width", env["WIDTH"], "--batch-size", env["BATCH_SIZE"],
            "--k", env["K"], "--steps", env["STEPS"], "--warmup-steps", env["WARMUP_STEPS"],
            "--precision", env.get("PRECISION") or "fp32", "--data", env.get("DATA") or "synthetic",
            *shlex.split(env.get("TRAIN_ARGS", "")), *shlex.split(self.extra_args),
            "--out", "results.json", "--force"]
        self.env_vars = dict(kv.split("=", 1) for kv in shlex.split(env.get("JOB_ENV", "")))
        # srun's options as runs/submit renders them: --mpi, binding, the system's extras
        self.srun_options = [f"--{opt}={env[key]}" for key, opt in
                             (("SRUN_MPI", "mpi"), ("CPU_BIND", "cpu-bind"), ("GPU_BIND", "gpu-bind"),
                              ("GPUS_PER_TASK", "gpus-per-task"))
                             if env.get(key, "").strip() not in ("", "0")]
        self.srun_options += shlex.split(env.get("SRUN_EXTRA", ""))
        self.time_limit = f"{submit.seconds(env.get('VARIANTS_TIME') or '00:10:00', 'VARIANTS_TIME')}s"
        self.reference = {"*": references(self.current_system.name).get(self.key, {})}

    @run_before("run")
    def launcher_options(self):
        self.job.launcher.options = self.srun_options

    @sanity_function
    def validate(self):
        r = results(os.path.join(self.stagedir, "results.json"))
        return sn.all([sn.assert_eq(r["status"], "ok", msg="status {0}, expected ok"),
                       sn.assert_true(valid_schema(os.path.join(self.stagedir, "results.json")),
                                      msg="the results do not follow the schema"),
                       sn.assert_true(finite(r["fidelity"]["fvu"]), msg="FVU is not finite")])

    def _r(self):
        return results(os.path.join(self.stagedir, "results.json"))

    @performance_function("ms")
    def step_ms(self):
        return self._r()["timing"]["step_s"]["median"] * 1e3

    @performance_function("tokens/s")
    def tokens_per_s(self):
        r = self._r()
        return r["config"]["batch_size"] / r["timing"]["step_s"]["median"]

    @performance_function("x")
    def floor_ratio(self):
        return or_nan(self._r()["timing"]["ceilings"]["floor_ratio"])

    @run_before("performance")
    def variables_that_apply(self):
        """Selection for TopK and BatchTopK, bus bandwidth on more than one rank, MFU on a known
        GPU (each check's perflog has its own file, so the sets may differ)."""
        path = os.path.join(self.stagedir, "results.json")
        if self.variant in ("topk", "batchtopk"):
            self.perf_variables["selection_over_encoder"] = sn.make_performance_function(
                selection_over_encoder(path), "x")
        if self.num_tasks > 1:
            self.perf_variables["gradients_bus_GBps"] = sn.make_performance_function(
                bus_bandwidth(path, "comm_gradients"), "GB/s")
        if gpu_peak(path):
            self.perf_variables["mfu"] = sn.make_performance_function(mfu(path), "")


def gpu_peak(path: str) -> float | None:
    """The card's bf16 dense peak in FLOP/s (saescale_analysis.peaks), when a known GPU ran it."""
    try:
        r = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    gpu = r.get("context", {}).get("gpu") or {}
    entry = peaks.peak_for(gpu.get("name") if isinstance(gpu, dict) else None)
    return float(entry["bf16"]) * 1e12 if entry else None


@sn.deferrable
def valid_schema(path: str) -> bool:
    return not schema.validate_file(path)


@sn.deferrable
def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@sn.deferrable
def or_nan(x) -> float:
    return float("nan") if x is None else float(x)


@sn.deferrable
def selection_over_encoder(path: str) -> float:
    """TopK/BatchTopK: the selection (their activation phase) over the encoder GEMM."""
    phases = json.loads(Path(path).read_text())["timing"]["phases_s"]
    return phases["activation"]["median"] / phases["encode_gemm"]["median"]


@sn.deferrable
def mfu(path: str) -> float:
    """The step's FLOPs (work model) per second over the card's bf16 dense peak."""
    peak = gpu_peak(path)
    timing = json.loads(Path(path).read_text())["timing"]
    flops = timing.get("flops_per_step")
    return float("nan") if not (peak and flops) else flops / timing["step_s"]["median"] / peak


@sn.deferrable
def bus_bandwidth(path: str, phase: str) -> float:
    c = json.loads(Path(path).read_text())["timing"].get("communication", {}).get(phase)
    return float("nan") if not c or c.get("bus_bandwidth_GBps") is None else c["bus_bandwidth_GBps"]
