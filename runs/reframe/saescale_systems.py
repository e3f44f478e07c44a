"""A system's settings for the ReFrame configuration and checks: runs/systems/<name>.env read by
runs/submit's own loader (the one source of each system's settings), with SAESCALE_SET="KEY=value
..." overriding them for one run as runs/submit --set does."""

from __future__ import annotations

import importlib.util
import os
import shlex
from importlib.machinery import SourceFileLoader
from pathlib import Path

RUNS = Path(__file__).resolve().parents[1]

# runs/submit has no .py suffix: load it as a module.
_loader = SourceFileLoader("saescale_submit", str(RUNS / "submit"))
submit = importlib.util.module_from_spec(importlib.util.spec_from_loader(_loader.name, _loader))
_loader.exec_module(submit)


def system_settings(name: str) -> dict[str, str]:
    return submit.load_system(name, shlex.split(os.environ.get("SAESCALE_SET", "")))
