"""ReFrame site configuration generated from runs/systems/*.env (the one source of each system's
settings: partition, account, QOS, srun's --mpi, job environment). Every system gets one
partition that submits through Slurm (sbatch) and launches with srun, and a perflog per check
under the perflog directory (`--perflogdir`, default perflogs/). Use with
    reframe -C runs/reframe/config.py -c runs/reframe/checks.py --system <name> -r
(`make -f Makefile.cluster SYSTEM=<name> reframe` does it). Settings overridden for one run:
SAESCALE_SET="KEY=value KEY=value" (as runs/submit --set)."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

# The shared settings reader, loaded by its path: imported through sys.path instead, under
# ReFrame's loader, it left the venv's site-packages off sys.path (pandas was not found).
_spec = importlib.util.spec_from_file_location(
    "saescale_systems", Path(__file__).resolve().parent / "saescale_systems.py")
_systems = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_systems)
RUNS, submit, system_settings = _systems.RUNS, _systems.submit, _systems.system_settings


def partition(env: dict[str, str]) -> dict:
    access = [f"--{opt}={env[key]}" for key, opt in (("PARTITION", "partition"), ("ACCOUNT", "account"),
                                                     ("QOS", "qos"), ("CONSTRAINT", "constraint"))
              if env.get(key) and env[key] != "CHANGE_ME"]
    return {"name": env.get("PARTITION") or "default",
            "descr": env.get("DESCRIPTION", ""),
            # squeue where Slurm keeps no accounting (sacct fails): the local test cluster
            "scheduler": env.get("REFRAME_SCHEDULER") or "slurm",
            "launcher": "srun",
            "access": access,
            "environs": ["saescale"],
            # --gpus-per-node for checks that ask for GPUs (extra_resources "gpu")
            "resources": [{"name": "gpu", "options": ["--gpus-per-node={num_gpus_per_node}"]}],
            "max_jobs": 8,
            "extras": {"settings": str(RUNS / "systems" / f"{env['_NAME']}.env")}}


def system(name: str, env: dict[str, str]) -> dict:
    return {"name": name, "descr": env.get("DESCRIPTION", name), "hostnames": [".*"],
            "modules_system": "lmod" if env.get("MODULES", "").strip() else "nomod",
            "partitions": [partition(env)]}


def environment(name: str, env: dict[str, str]) -> dict:
    """The system's MODULES loaded in every job (the build's modules: runs/systems/<name>.env)."""
    return {"name": "saescale", "target_systems": [name], "modules": shlex.split(env.get("MODULES", ""))}


SETTINGS = {name: system_settings(name) for name in submit.known_systems()}
site_configuration = {
    "systems": [system(name, env) for name, env in SETTINGS.items()],
    "environments": [environment(name, env) for name, env in SETTINGS.items()],
    "logging": [{
        "handlers_perflog": [{
            "type": "filelog",
            "prefix": "%(check_system)s/%(check_partition)s/%(check_variant)s-%(check_grid)s",
            "level": "info",
            "format": ("%(check_job_completion_time)s|%(check_name)s|%(check_system)s|"
                       "%(check_partition)s|%(check_executable_opts)s|%(check_perfvalues)s"),
            "format_perfvars": ("%(check_perf_value)s|%(check_perf_unit)s|%(check_perf_ref)s|"
                                "%(check_perf_lower_thres)s|%(check_perf_upper_thres)s|"
                                "%(check_perf_result)s|"),
            "append": True,
        }]
    }],
}
