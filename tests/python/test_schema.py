"""Tests of the results JSON Schema (schemas/saescale.result-1.schema.json) and `validate`."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from saescale_analysis.schema import SCHEMA_FILE, load_schema, schema_errors, validate_file
from test_analysis import ANALYSIS_DIR, VARIANTS, make_result, run_cli, write

Mutation = Callable[[dict[str, Any]], None]


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


@pytest.fixture
def result(rng: np.random.Generator) -> dict[str, Any]:
    return make_result(rng, "jumprelu")


def paths(errors: list[tuple[str, str]]) -> list[str]:
    return [where for where, _ in errors]


def grid_result(rng: np.random.Generator) -> dict[str, Any]:
    """A 2-rank latent-parallel result as the trainer writes it (ranks, communication)."""
    r = make_result(rng, "topk", ranks=2)
    r["context"]["grid"] = {"dp": 1, "lp": 2}
    r["context"]["comm"] = "mpi"
    r["context"]["placement"] = [{"rank": i, "dp_rank": 0, "lp_rank": i, "host": "h",
                                  "local_rank": i, "device": -1} for i in range(2)]
    for phase in r["timing"]["phases_s"].values():
        phase["ranks"] = {"min": phase["min"], "mean": phase["median"], "max": phase["median"]}
    r["timing"]["communication"] = {
        "comm_decode": {"calls_per_step": 1.0, "payload_bytes_per_step": 4096.0,
                        "sent_bytes_per_step": 4096.0, "planned_sent_bytes_per_step": 4096.0,
                        "bus_bandwidth_GBps": 0.14, "group": "lp"},
        "comm_statistics": {"calls_per_step": 0, "payload_bytes_per_step": 0, "sent_bytes_per_step": 0,
                            "planned_sent_bytes_per_step": 520.0, "bus_bandwidth_GBps": None,
                            "group": "dp+world"},
    }
    r["memory"]["peak_device_bytes"] = None
    return r


# --- the schema itself -------------------------------------------------------

def test_schema_is_valid_draft_2020_12():
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert SCHEMA_FILE.parent.name == "schemas" and SCHEMA_FILE.is_file()


def _property_schemas(node: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (name, schema) declared under "properties", outside the conditions of if/then."""
    if isinstance(node, dict):
        for name, sub in node.get("properties", {}).items():
            yield name, sub
        for key, value in node.items():
            if key != "if":
                yield from _property_schemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from _property_schemas(value)


def test_every_property_is_described():
    schema = load_schema()
    defs = schema["$defs"]
    missing = []
    for name, sub in _property_schemas(schema):
        ref = sub.get("$ref", "").removeprefix("#/$defs/")
        if "description" not in sub and "description" not in defs.get(ref, {}):
            missing.append(name)
    assert not missing


# --- valid results -----------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("ground_truth", [True, False])
def test_synthetic_results_validate(rng, variant, ground_truth):
    assert schema_errors(make_result(rng, variant, ground_truth=ground_truth)) == []


def test_grid_result_validates(rng):
    assert schema_errors(grid_result(rng)) == []


def test_no_timed_steps_validates(result):
    # --warmup-steps >= --steps: statistics carry n = 0 only, no floor, no benchmark entries.
    result["timing"]["step_s"] = {"n": 0}
    result["timing"]["phases_s"] = {name: {"n": 0} for name in result["timing"]["phases_s"]}
    result["timing"].update(tokens_per_s=0.0, gemm_floor_s=None, floor_ratio=None)
    result["benchmarks"] = []
    assert schema_errors(result) == []


def test_extensions_validate(result):
    """Fields being added (work per phase, ceilings, tracked memory, time to fidelity)."""
    encode = result["timing"]["phases_s"]["encode_gemm"]
    encode.update(flops=1e9, bytes=4e6, gflops_per_s=120.5, gbytes_per_s=None)
    result["timing"]["step_s"]["mean"] = result["timing"]["step_s"]["median"]
    result["timing"]["ceilings"] = {"gemm_floor_s": 1e-3, "floor_ratio": 1.5, "gemm_gflops_per_s": 900.0,
                                    "stream_copy_bytes": 2.0**28, "stream_copy_gbytes_per_s": None,
                                    "future_ceiling": 3}
    result["memory"].update(peak_device_bytes=123456, tracked={"Host": 2**20, "Cuda": 2**30},
                            device_used_bytes=None, breakdown_total=9, breakdown_vs_peak=0.96)
    result["memory"]["breakdown"].update(evaluation=4096, latent_state=64)
    result["config"]["target_fvu"] = [0.2, 0.05]
    result["fidelity"]["time_to_fidelity"] = [
        {"target_fvu": 0.2, "reached": True, "step": 120, "tokens": 122880, "train_s": 1.5,
         "wall_s": 2.0},
        {"target_fvu": 0.05, "reached": False, "step": None, "tokens": None, "train_s": None,
         "wall_s": None},
    ]
    result["a_new_section"] = {"anything": [1, "two"]}
    result["timing"]["new_timing_field"] = "x"
    assert schema_errors(result) == []
    result["memory"]["tracked"] = None  # tracking off
    assert schema_errors(result) == []


@pytest.mark.parametrize("status", ["failed", "preempted"])
def test_failed_or_preempted_needs_a_reason_only(result, status):
    partial = {k: result[k] for k in ("schema", "context", "config")}
    partial.update(status=status, reason="SIGTERM at step 400 (checkpoint written)")
    assert schema_errors(partial) == []
    del partial["reason"]
    assert paths(schema_errors(partial)) == ["$"]


def test_aggregate_benchmark_entry_validates(result):
    entry = dict(result["benchmarks"][0], run_type="aggregate", aggregate_name="median")
    del entry["repetition_index"]
    result["benchmarks"].append(entry)
    assert schema_errors(result) == []


# --- invalid results ---------------------------------------------------------

def _set(*keys: str | int, value: Any) -> Mutation:
    def mutate(r: dict[str, Any]) -> None:
        node = r
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return mutate


def _del(*keys: str | int) -> Mutation:
    def mutate(r: dict[str, Any]) -> None:
        node = r
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]
    return mutate


MUTATIONS: dict[str, tuple[Mutation, str, str]] = {
    # name: (mutation, JSON path of the error, text in its message)
    "missing timing": (_del("timing"), "$", "'timing' is a required property"),
    "missing memory": (_del("memory"), "$", "'memory'"),
    "missing fidelity": (_del("fidelity"), "$", "'fidelity'"),
    "missing benchmarks": (_del("benchmarks"), "$", "'benchmarks'"),
    "missing context": (_del("context"), "$", "'context'"),
    "missing config": (_del("config"), "$", "'config'"),
    "missing status": (_del("status"), "$", "'status'"),
    "wrong schema tag": (_set("schema", value="saescale.result/2"), "$.schema", "saescale.result/1"),
    "unknown status": (_set("status", value="crashed"), "$.status", "is not one of"),
    "string median": (_set("timing", "step_s", "median", value="0.01"), "$.timing.step_s.median",
                      "is not of type 'number'"),
    "fractional n": (_set("timing", "step_s", "n", value=2.5), "$.timing.step_s.n", "'integer'"),
    "negative n": (_set("timing", "step_s", "n", value=-1), "$.timing.step_s.n", "minimum"),
    "n without median": (_del("timing", "step_s", "median"), "$.timing.step_s", "'median'"),
    "phase without p90": (_del("timing", "phases_s", "encode_gemm", "p90"),
                          "$.timing.phases_s.encode_gemm", "'p90'"),
    "negative phase time": (_set("timing", "phases_s", "decode_gemm", "min", value=-1e-6),
                            "$.timing.phases_s.decode_gemm.min", "minimum"),
    "string phase flops": (_set("timing", "phases_s", "decode_gemm", "flops", value="1e9"),
                           "$.timing.phases_s.decode_gemm.flops", "'number', 'null'"),
    "string ceiling": (_set("timing", "ceilings", value={"gemm_gflops_per_s": "fast"}),
                       "$.timing.ceilings.gemm_gflops_per_s", "'number', 'null'"),
    "fenced not boolean": (_set("timing", "fenced", value=1), "$.timing.fenced", "'boolean'"),
    "missing floor_ratio": (_del("timing", "floor_ratio"), "$.timing", "'floor_ratio'"),
    "negative tokens_per_s": (_set("timing", "tokens_per_s", value=-5.0), "$.timing.tokens_per_s",
                              "minimum"),
    "communication missing bytes": (_set("timing", "communication", "comm_decode",
                                         value={"calls_per_step": 1, "payload_bytes_per_step": 8,
                                                "planned_sent_bytes_per_step": None,
                                                "bus_bandwidth_GBps": None}),
                                    "$.timing.communication.comm_decode", "'sent_bytes_per_step'"),
    "negative rss": (_set("memory", "peak_host_rss_bytes", value=-1), "$.memory.peak_host_rss_bytes",
                     "minimum"),
    "fractional device bytes": (_set("memory", "peak_device_bytes", value=1.5),
                                "$.memory.peak_device_bytes", "'integer', 'null'"),
    "breakdown missing activations": (_del("memory", "breakdown", "activations"), "$.memory.breakdown",
                                      "'activations'"),
    "tracked negative": (_set("memory", "tracked", value={"Host": -1}), "$.memory.tracked.Host",
                         "minimum"),
    "missing mmcs": (_del("fidelity", "mmcs"), "$.fidelity", "'mmcs'"),
    "dead fraction above 1": (_set("fidelity", "dead_fraction", value=1.5), "$.fidelity.dead_fraction",
                              "maximum"),
    "loss point without l0": (_del("fidelity", "loss_curve", 0, "l0"), "$.fidelity.loss_curve[0]",
                              "'l0'"),
    "time_to_fidelity reached string": (_set("fidelity", "time_to_fidelity",
                                             value=[{"target_fvu": 0.1, "reached": "yes"}]),
                                        "$.fidelity.time_to_fidelity[0].reached", "'boolean'"),
    "grid without lp": (_set("context", "grid", value={"dp": 1}), "$.context.grid", "'lp'"),
    "zero ranks": (_set("context", "ranks", value=0), "$.context.ranks", "minimum"),
    "git_dirty string": (_set("context", "git_dirty", value="no"), "$.context.git_dirty", "'boolean'"),
    "unknown variant": (_set("config", "variant", value="sparsemax"), "$.config.variant", "is not one of"),
    "width as string": (_set("config", "width", value="512"), "$.config.width", "'integer'"),
    "benchmark time unit": (_set("benchmarks", 0, "time_unit", value="min"), "$.benchmarks[0].time_unit",
                            "is not one of"),
    "benchmark negative iterations": (_set("benchmarks", 0, "iterations", value=-1),
                                      "$.benchmarks[0].iterations", "minimum"),
    "benchmark without cpu_time": (_del("benchmarks", 0, "cpu_time"), "$.benchmarks[0]", "'cpu_time'"),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_mutations_are_rejected(result, name):
    mutate, where, text = MUTATIONS[name]
    bad = copy.deepcopy(result)
    mutate(bad)
    errors = schema_errors(bad)
    assert errors, name
    assert any(w == where and text in m for w, m in errors), errors


def test_non_object_is_rejected():
    for value in ([1, 2], "saescale.result/1", None, 3):
        assert paths(schema_errors(value)) == ["$"]


# --- the validate command ----------------------------------------------------

def test_validate_file_roundtrip(result, tmp_path):
    assert validate_file(write(tmp_path / "ok.json", result)) == []
    (tmp_path / "broken.json").write_text("{nope", encoding="utf-8")
    with pytest.raises(ValueError, match="broken.json"):
        validate_file(tmp_path / "broken.json")
    with pytest.raises(FileNotFoundError):
        validate_file(tmp_path / "missing.json")


def test_cli_validate_ok(rng, tmp_path):
    files = [write(tmp_path / f"{v}.json", make_result(rng, v)) for v in VARIANTS]
    proc = run_cli("validate", *files)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == f"validate: all {len(files)} file(s) valid"
    proc = run_cli("validate", str(tmp_path / "*.json"))  # a quoted glob
    assert proc.returncode == 0 and f"all {len(files)} file(s)" in proc.stdout


def test_cli_validate_invalid_lists_every_error(result, tmp_path):
    good = write(tmp_path / "good.json", result)
    bad = copy.deepcopy(result)
    bad["timing"]["step_s"]["median"] = "fast"
    bad["status"] = "crashed"
    bad_path = write(tmp_path / "bad.json", bad)
    proc = run_cli("validate", good, bad_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "validate: 1 of 2 file(s) invalid"
    assert lines[:-1] == [
        f"{bad_path}: $.status: 'crashed' is not one of ['ok', 'failed', 'preempted']",
        f"{bad_path}: $.timing.step_s.median: 'fast' is not of type 'number'",
    ]
    assert "good.json" not in proc.stdout and proc.stderr == ""


def test_cli_validate_long_messages_stay_on_one_line(tmp_path):
    proc = run_cli("validate", write(tmp_path / "list.json", [{"x": "y" * 1000}] * 10))
    assert proc.returncode == 1
    first = proc.stdout.splitlines()[0]
    assert first.startswith(f"{tmp_path / 'list.json'}: $: ") and len(first) < 400


def test_cli_validate_errors_exit_2(result, tmp_path):
    good = write(tmp_path / "good.json", result)
    proc = run_cli("validate", good, tmp_path / "missing.json")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "missing.json" in proc.stderr
    (tmp_path / "broken.json").write_text("{nope", encoding="utf-8")
    proc = run_cli("validate", tmp_path / "broken.json")
    assert proc.returncode == 2 and "broken.json" in proc.stderr
    proc = run_cli("validate", str(tmp_path / "nothing_*.json"))
    assert proc.returncode == 2 and "matched no files" in proc.stderr
    assert run_cli("validate").returncode == 2  # no files


def test_cli_validate_without_jsonschema_says_make_deps(result, tmp_path):
    # A jsonschema package that fails to import, first on the path.
    fake = tmp_path / "fake"
    (fake / "jsonschema").mkdir(parents=True)
    (fake / "jsonschema" / "__init__.py").write_text("raise ImportError('not installed')\n")
    proc = subprocess.run([sys.executable, "-m", "saescale_analysis", "validate",
                           str(write(tmp_path / "r.json", result))],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": f"{fake}{os.pathsep}{ANALYSIS_DIR}"})
    assert proc.returncode == 2
    assert "make deps" in proc.stderr and "jsonschema" in proc.stderr


def test_loader_still_rejects_what_it_rejected(tmp_path):
    # validate is separate: load_result keeps refusing other schema tags with a ValueError.
    from saescale_analysis import load_result
    with pytest.raises(ValueError, match="unsupported schema"):
        load_result(write(tmp_path / "other.json", {"schema": "saescale.eval/1"}))
    assert json.loads((tmp_path / "other.json").read_text())["schema"] == "saescale.eval/1"
