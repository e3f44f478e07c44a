"""Tests for saescale_analysis.projection: the alpha-beta fit, the collective formulas, the
compute scaling, the projection and its fit check on synthetic studies, the real `saescale plan`,
and one end-to-end study of real 1- and 2-rank runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from saescale_analysis.projection import (
    AlphaBeta,
    PlanError,
    PlanFormatError,
    PlanRequest,
    SaescalePlanner,
    allgather_time,
    allreduce_time,
    choose_bases,
    collective_time,
    communication_times,
    _efficiency,
    fit_alpha_beta,
    fit_check,
    fit_sweeps,
    project,
    projection_grid,
    projection_section,
    read_allreduce_sweeps,
    scale_compute,
    to_run,
    work_ratio,
)
from saescale_analysis.results import load_results
from saescale_analysis.sections import Section

ROOT = Path(__file__).resolve().parents[2]
SAESCALE = ROOT / "build" / "bin" / "saescale"
KERNELS = ROOT / "build" / "bin" / "saescale-kernels"
SIZES = [8 * 4**i for i in range(12)] + [64 << 20]  # the kernels' sweep: 8 B ... 64 MiB


# ---- a hand-written plan (the contract's format) and a study made from it -------------------

def fake_plan(req: PlanRequest) -> dict[str, Any]:
    """A small stand-in for `saescale plan --out`: GEMM-like work on one rank's shapes, the
    decode all-reduce over lp, TopK's candidate all-gather over lp, the gradient all-reduce over
    dp in three buckets."""
    b, m, d = req.B // req.dp, req.M // req.lp, req.d
    P = 2 * m * d + m + d
    work = {
        "encode_gemm": {"flops": 2.0 * b * m * d, "bytes": 4.0 * (b * d + m * d + b * m)},
        "decode_gemm": {"flops": 2.0 * b * m * d, "bytes": 4.0 * (b * d + m * d + b * m)},
        "activation": ({"flops": 0.0, "bytes": 24.0 * b * m} if req.variant == "topk"
                       else {"flops": 3.0 * b * m, "bytes": 8.0 * b * m}),
        "optimizer": {"flops": 12.0 * P, "bytes": 28.0 * P},
    }
    comm: dict[str, Any] = {}

    def add(phase: str, kind: str, group: str, ranks: int, nbytes: float, calls: float = 1) -> None:
        if ranks >= 2:
            comm.setdefault(phase, {"group": group, "collectives": []})["collectives"].append(
                {"kind": kind, "group": group, "ranks": ranks, "bytes": nbytes, "calls": calls})

    if req.variant == "topk":
        add("comm_selection", "allgather", "lp", req.lp, b * req.k * 8.0)
    add("comm_decode", "allreduce", "lp", req.lp, b * d * 4.0)
    add("comm_gradients", "allreduce", "dp", req.dp, P * 4.0 / 3, 3)
    return {"schema": "saescale.plan/1", "grid": {"dp": req.dp, "lp": req.lp},
            "local_shape": {"B": b, "M": m, "d": d, "P": P}, "work_per_step": work,
            "communication_per_step": comm}


AB = AlphaBeta(alpha_s=2e-6, beta_bytes_per_s=5e9, ranks=4)
SECONDS_PER_FLOP, SECONDS_PER_BYTE, OTHER_S = 1e-10, 2e-11, 1e-4


def model_phases(req: PlanRequest) -> dict[str, float]:
    """Phase medians a machine that follows the model exactly would measure."""
    plan = fake_plan(req)
    out = {name: (w["flops"] * SECONDS_PER_FLOP if w["flops"] else w["bytes"] * SECONDS_PER_BYTE)
           for name, w in plan["work_per_step"].items()}
    return out | communication_times(plan, AB)


def make_result(variant: str, sweep: str, row: str, *, B: int, M: int, dp: int = 1, lp: int = 1,
                d: int = 64, scale: float = 1.0, aux_k: int = 0) -> dict[str, Any]:
    req = PlanRequest(variant=variant, d=d, B=B, M=M, dp=dp, lp=lp, aux_k=aux_k)
    phases = model_phases(req)
    step = (sum(phases.values()) + OTHER_S) * scale
    return {
        "schema": "saescale.result/1", "status": "ok",
        "context": {"ranks": dp * lp, "grid": {"dp": dp, "lp": lp},
                    "tags": {"sweep": sweep, "row": row, "ranks": str(dp * lp)}},
        "config": {"variant": variant, "d_model": d, "width": M, "batch_size": B, "k": 32,
                   "aux_k": aux_k, "topk_algo": "radix", "batch_scope": "global",
                   "optimizer": "adam", "resolved": {"adam_beta1": 0.0, "clip_norm": 0.0}},
        "timing": {"step_s": {"median": step},
                   "phases_s": {n: {"median": t} for n, t in phases.items()}},
        "_path": f"{sweep}/p{dp * lp}/{row}.json",
    }


def synthetic_study(scale_measured: float = 1.0) -> list[dict[str, Any]]:
    """Weak (dp: B = 256·p; lp: M = 512·p) and strong (B = 1024, M = 2048) sweeps of JumpReLU and
    TopK at 1, 2 and 4 ranks, every point following the model (times scale_measured above 1)."""
    out = []
    for v in ("jumprelu", "topk"):
        for p in (1, 2, 4):
            s = 1.0 if p == 1 else scale_measured
            out += [make_result(v, "weak", f"dp-{v}", B=256 * p, M=512, dp=p, scale=s),
                    make_result(v, "weak", f"lp-{v}", B=256, M=512 * p, lp=p, scale=s),
                    make_result(v, "strong", f"dp-{v}", B=1024, M=2048, dp=p, scale=s),
                    make_result(v, "strong", f"lp-{v}", B=1024, M=2048, lp=p, scale=s)]
    return out


def write_sweep(path: Path, ranks: int, ab: AlphaBeta, rng: np.random.Generator | None = None) -> None:
    """A Google Benchmark JSON of the MPI_Allreduce sweep following ab (with noise from rng)."""
    benchmarks = []
    for n in SIZES:
        t = allreduce_time(n, ranks, ab) * (rng.lognormal(0, 0.02) if rng is not None else 1.0)
        benchmarks.append({"name": f"MPI_Allreduce/{n}/iterations:10/manual_time", "run_type": "iteration",
                           "real_time": t * 1e6, "time_unit": "us", "bytes": float(n),
                           "busbw": n / t * 2 * (ranks - 1) / ranks})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"context": {"ranks": str(ranks)}, "benchmarks": benchmarks}))


# ---- the alpha-beta model ------------------------------------------------------------------

def test_fit_recovers_alpha_beta_from_noisy_sweep() -> None:
    rng = np.random.default_rng(6)
    for alpha, beta, p in [(2e-6, 5e9, 4), (25e-6, 12e9, 16), (0.3e-6, 1.5e9, 2)]:
        truth = AlphaBeta(alpha, beta)
        pts = [(n, allreduce_time(n, p, truth) * rng.lognormal(0, 0.03)) for n in SIZES]
        ab = fit_alpha_beta(pts, p)
        assert ab.ranks == p
        assert ab.alpha_s == pytest.approx(alpha, rel=0.08)
        assert ab.beta_bytes_per_s == pytest.approx(beta, rel=0.08)
        assert ab.max_abs_residual < 0.15
        assert len(ab.residuals) == len(SIZES)


def test_fit_is_exact_on_model_data_and_weights_small_messages() -> None:
    truth = AlphaBeta(4e-6, 8e9)
    ab = fit_alpha_beta([(n, allreduce_time(n, 8, truth)) for n in SIZES], 8)
    assert ab.alpha_s == pytest.approx(4e-6, rel=1e-9)
    assert ab.beta_bytes_per_s == pytest.approx(8e9, rel=1e-9)
    assert ab.max_abs_residual < 1e-9
    # A 20% error on the largest message must not swamp the latency (relative weighting).
    pts = [(n, allreduce_time(n, 8, truth) * (1.2 if n == SIZES[-1] else 1.0)) for n in SIZES]
    assert fit_alpha_beta(pts, 8).alpha_s == pytest.approx(4e-6, rel=0.05)
    with pytest.raises(ValueError):
        fit_alpha_beta(pts, 1)
    with pytest.raises(ValueError):
        fit_alpha_beta(pts[:1], 4)


def test_collective_formulas_by_hand() -> None:
    ab = AlphaBeta(alpha_s=1e-6, beta_bytes_per_s=1e9)
    # all-reduce: 2(p-1) alpha + 2(p-1)/p n / beta = 6 us + 1.5 ms
    assert allreduce_time(1e6, 4, ab) == pytest.approx(6e-6 + 1.5e-3)
    assert allreduce_time(1e6, 2, ab) == pytest.approx(2e-6 + 1e-3)
    # all-gather of 1000-byte blocks among 4: 3 alpha + 3/4 * 4000 / beta = 3 us + 3 us
    assert allgather_time(1000, 4, ab) == pytest.approx(6e-6)
    assert allreduce_time(1e6, 1, ab) == allgather_time(1e6, 1, ab) == 0.0
    three = {"kind": "allreduce", "group": "dp", "ranks": 4, "bytes": 1e6 / 3, "calls": 3}
    assert collective_time(three, ab) == pytest.approx(18e-6 + 1.5e-3)  # same bytes, 3x latency
    plan = {"communication_per_step": {
        "comm_decode": {"collectives": [{"kind": "allreduce", "group": "lp", "ranks": 2, "bytes": 1e6,
                                         "calls": 1}]},
        "comm_selection": {"collectives": [{"kind": "allgather", "group": "lp", "ranks": 4, "bytes": 1000,
                                            "calls": 1}]}}}
    assert communication_times(plan, ab) == pytest.approx({"comm_decode": 2e-6 + 1e-3,
                                                           "comm_selection": 6e-6})
    with pytest.raises(PlanFormatError):
        communication_times({"communication_per_step": {"comm_decode": {"calls": 1}}}, ab)
    with pytest.raises(PlanFormatError):
        collective_time({**three, "kind": "broadcast"}, ab)


def test_read_allreduce_sweeps_pools_rank_counts(tmp_path: Path) -> None:
    write_sweep(tmp_path / "weak" / "p4" / "allreduce.json", 4, AB)
    write_sweep(tmp_path / "strong" / "p4" / "allreduce.json", 4, AB)
    write_sweep(tmp_path / "weak" / "p2" / "allreduce.json", 2, AB)
    (tmp_path / "weak" / "p8").mkdir()
    (tmp_path / "weak" / "p8" / "allreduce.json").write_text("{not json")  # ignored
    sweeps = read_allreduce_sweeps(tmp_path)
    assert sorted(sweeps) == [2, 4]
    assert len(sweeps[4]) == 2 * len(SIZES)
    assert sweeps[2][0][1] == pytest.approx(allreduce_time(8, 2, AB))  # microseconds -> seconds
    fits = fit_sweeps(sweeps)
    assert fits[4].alpha_s == pytest.approx(AB.alpha_s, rel=1e-6)


# ---- compute scaling on a hand-written plan ----------------------------------------------------

def test_work_ratio_and_compute_scaling_on_hand_plan() -> None:
    base = {"work_per_step": {"encode_gemm": {"flops": 100.0, "bytes": 10.0},
                              "activation": {"flops": 0.0, "bytes": 50.0},
                              "clip": {"flops": 4.0, "bytes": 4.0}}}
    target = {"work_per_step": {"encode_gemm": {"flops": 50.0, "bytes": 999.0},
                                "activation": {"flops": 0.0, "bytes": 200.0}}}
    phases = {"encode_gemm": 2.0, "activation": 1.0, "clip": 0.5, "data_wait": 0.25, "comm_decode": 9.0}
    scaled = scale_compute(phases, base, target)
    assert scaled == pytest.approx({"encode_gemm": 1.0,   # FLOPs halve
                                    "activation": 4.0,    # no FLOPs: bytes x4
                                    "clip": 0.0,          # dropped on the target
                                    "data_wait": 0.25})   # unknown to the work model: kept
    assert "comm_decode" not in scaled                    # communication is modelled instead
    assert work_ratio(None, {"flops": 1.0}) == 1.0
    assert work_ratio({"flops": 0.0, "bytes": 0.0}, {"flops": 1.0}) == 1.0


def test_projection_grid_and_efficiency_conventions() -> None:
    base = to_run(make_result("jumprelu", "strong", "dp-jumprelu", B=1000, M=2048))
    assert base is not None
    assert projection_grid("weak", "dp", base, 8) == (8000, 2048, 8, 1)
    assert projection_grid("weak", "lp", base, 8) == (1000, 16384, 1, 8)
    assert projection_grid("strong", "dp", base, 8) == (1000, 2048, 8, 1)
    assert projection_grid("strong", "dp", base, 16) is None      # 1000 % 16
    assert projection_grid("strong", "lp", base, 1024) == (1000, 2048, 1, 1024)
    assert projection_grid("strong", "lp", base, 4096) is None    # 2048 % 4096
    assert _efficiency("weak", 1.0, 1, 1.25, 8) == pytest.approx(0.8)
    assert _efficiency("strong", 1.0, 1, 0.25, 8) == pytest.approx(0.5)   # S = 4 on 8
    assert _efficiency("strong", 1.0, 2, 0.25, 8) == pytest.approx(1.0)   # S = 4 on 4x the ranks


# ---- projection and fit check of a synthetic study ----------------------------------------

def test_projection_of_synthetic_study() -> None:
    runs = [to_run(r) for r in synthetic_study()]
    bases, notes = choose_bases(runs, fake_plan)
    assert not notes
    assert set(bases) == {(s, v, m) for s in ("weak", "strong") for v in ("jumprelu", "topk")
                          for m in ("dp", "lp")}
    assert all(b.run.ranks == 1 and b.other_s == pytest.approx(OTHER_S) for b in bases.values())
    proj, notes = project(bases, AB, fake_plan, gpus=(8, 64, 1024),
                          extra={("weak", "jumprelu"): {2, 4}})
    assert set(proj.gpus[(proj.sweep == "weak") & (proj.variant == "jumprelu")]) == {1, 2, 4, 8, 64, 1024}
    # Strong lp: M = 2048 splits over up to 1024 shards; strong dp: B = 1024 over 1024 replicas.
    assert 1024 in set(proj.gpus[(proj.sweep == "strong") & (proj["mode"] == "lp")])

    # Weak data parallel: compute per rank is constant, communication is the gradient all-reduce.
    b0 = bases[("weak", "jumprelu", "dp")]
    t0 = b0.run.step_s
    row = proj[(proj.sweep == "weak") & (proj.variant == "jumprelu") & (proj["mode"] == "dp")
               & (proj.gpus == 64)].iloc[0]
    P = 2 * 512 * 64 + 512 + 64
    comm = 3 * 2 * 63 * AB.alpha_s + 2 * 63 / 64 * P * 4 / AB.beta_bytes_per_s
    assert row.comm_s == pytest.approx(comm)
    assert row.step_s == pytest.approx(t0 + comm)
    assert row.efficiency == pytest.approx(t0 / (t0 + comm))
    assert (row.dp, row.lp, row.B, row.M, row.local_B) == (64, 1, 256 * 64, 512, 256)

    # Strong latent parallel: GEMM phases shrink 1/p, the B x d all-reduce is added.
    base = bases[("strong", "jumprelu", "lp")]
    row = proj[(proj.sweep == "strong") & (proj.variant == "jumprelu") & (proj["mode"] == "lp")
               & (proj.gpus == 8)].iloc[0]
    ph = base.phases_s
    P8 = 2 * 256 * 64 + 256 + 64
    P1 = 2 * 2048 * 64 + 2048 + 64
    compute = (ph["encode_gemm"] + ph["decode_gemm"] + ph["activation"]) / 8 + ph["optimizer"] * P8 / P1
    assert row.compute_s == pytest.approx(compute)
    assert row.comm_s == pytest.approx(allreduce_time(1024 * 64 * 4, 8, AB))
    assert row.efficiency == pytest.approx(base.run.step_s / row.step_s / 8)
    # p0's projection reproduces the measured base (no communication on one rank).
    first = proj[(proj.sweep == "strong") & (proj.gpus == 1)]
    assert (first.efficiency == 1.0).all()


def test_fit_check_on_measured_points() -> None:
    runs = [to_run(r) for r in synthetic_study()]
    bases, _ = choose_bases(runs, fake_plan)
    check = fit_check(runs, bases, AB, fake_plan)
    assert len(check) == 2 * 2 * 2 * 2  # sweeps x variants x modes x (2 and 4 ranks)
    assert set(check.ranks) == {2, 4}
    assert check.rel_error.abs().max() < 1e-9  # every point follows the model
    assert check.predicted_comm_s.gt(0).all()

    slow = [to_run(r) for r in synthetic_study(scale_measured=1.25)]
    bases, _ = choose_bases(slow, fake_plan)
    check = fit_check(slow, bases, AB, fake_plan)
    assert check.rel_error.to_numpy() == pytest.approx(np.full(len(check), 1 / 1.25 - 1))


def test_bases_fall_back_to_other_row_and_variants_sweep() -> None:
    results = [make_result("jumprelu", "weak", "dp-jumprelu", B=256, M=512),          # p0: dp only
               make_result("jumprelu", "weak", "lp-jumprelu", B=256, M=1024, lp=2),
               make_result("gated", "variants", "gated", B=512, M=512),                 # no scaling runs
               make_result("gated", "variants", "gated@s0.1", B=512, M=512),            # not a main row
               {**make_result("topk", "weak", "dp-topk", B=256, M=512), "status": "failed"}]
    runs = [r for r in map(to_run, results) if r is not None]
    assert len(runs) == 4
    bases, _ = choose_bases(runs, fake_plan)
    assert bases[("weak", "jumprelu", "lp")].source == "weak/dp-jumprelu"
    assert bases[("strong", "jumprelu", "dp")].source == "weak/dp-jumprelu"   # the other sweep's p0
    assert bases[("weak", "gated", "dp")].source == "variants/gated"
    assert not any(v == "topk" for _, v, _ in bases)


def test_auxk_decides_the_plan() -> None:
    """AuxK's collectives are planned only where it runs in the base's median step."""
    seen: list[PlanRequest] = []

    def planner(req: PlanRequest) -> dict[str, Any]:
        seen.append(req)
        return fake_plan(req)

    quiet = make_result("topk", "weak", "dp-topk", B=256, M=512, aux_k=512)
    busy = make_result("topk", "strong", "dp-topk", B=256, M=512, aux_k=512)
    busy["timing"]["phases_s"]["auxiliary_forward"] = {"median": busy["timing"]["phases_s"]["activation"]["median"]}
    bases, _ = choose_bases([to_run(quiet), to_run(busy)], planner)
    weak, strong = bases[("weak", "topk", "dp")], bases[("strong", "topk", "dp")]
    assert not weak.auxk and weak.request().aux_k == 0
    assert strong.auxk and strong.request().aux_k == 512
    assert {r.aux_k for r in seen} == {0, 512}


def test_section_of_synthetic_study(tmp_path: Path) -> None:
    study = tmp_path / "study"
    rng = np.random.default_rng(1)
    write_sweep(study / "weak" / "p2" / "allreduce.json", 2, AB, rng)
    write_sweep(study / "weak" / "p4" / "allreduce.json", 4, AB, rng)
    sec = projection_section(synthetic_study(), study, tmp_path / "out", None, planner=fake_plan,
                             gpus=(8, 64, 1024))
    assert isinstance(sec, Section) and sec.title == "Scaling projection"
    text = " ".join(sec.paragraphs)
    for needle in ("No overlap", "load balance", "One network level", "4 ranks", "Fit check"):
        assert needle in text
    captions = [c for c, _ in sec.tables]
    assert any("alpha-beta fit" in c for c in captions)
    assert any(c.startswith("Fit check") for c in captions)
    fit = sec.tables[0][1]
    assert list(fit.ranks) == [2, 4] and list(fit.used) == ["", "yes"]
    weak = next(t for c, t in sec.tables if c.startswith("Projected weak"))
    assert set(weak.GPUs) == {1, 2, 4, 8, 64, 1024}
    assert {"dp step ms", "lp step ms", "dp eff.", "lp eff."} <= set(weak.columns)
    assert len(sec.figures) == 5
    for _, png in sec.figures:
        assert png.parent == tmp_path / "out" and png.read_bytes()[:4] == b"\x89PNG"


def test_section_none_or_skipped(tmp_path: Path) -> None:
    variants_only = [make_result("jumprelu", "variants", "jumprelu", B=256, M=512)]
    assert projection_section(variants_only, tmp_path, tmp_path / "out", None, planner=fake_plan) is None
    assert projection_section([], tmp_path, tmp_path / "out", None, planner=fake_plan) is None
    study = synthetic_study()
    sec = projection_section(study, tmp_path, tmp_path / "out", None, planner=fake_plan)
    assert sec is not None and "skipped" in sec.paragraphs[0] and "allreduce.json" in sec.paragraphs[0]
    write_sweep(tmp_path / "weak" / "p2" / "allreduce.json", 2, AB)
    sec = projection_section(study, tmp_path, tmp_path / "out", tmp_path / "no-such-saescale")
    assert sec is not None and "skipped" in sec.paragraphs[0] and "no saescale binary" in sec.paragraphs[0]
    assert not sec.figures

    def broken(req: PlanRequest) -> dict[str, Any]:
        raise PlanError("saescale plan failed: boom")

    sec = projection_section(study, tmp_path, tmp_path / "out", None, planner=broken)
    assert sec is not None and "skipped" in sec.paragraphs[0] and "boom" in sec.paragraphs[0]

    def old(req: PlanRequest) -> dict[str, Any]:
        plan = fake_plan(req)
        del plan["work_per_step"]
        return plan

    sec = projection_section(study, tmp_path, tmp_path / "out", None, planner=old)
    assert sec is not None and "`work_per_step`" in sec.paragraphs[0]


# ---- the real binary -----------------------------------------------------------------------

def _real_plan_or_skip() -> SaescalePlanner:
    if not SAESCALE.is_file():
        pytest.skip(f"{SAESCALE} is missing (build saescale first)")
    planner = SaescalePlanner(SAESCALE)
    plan = planner(PlanRequest(variant="jumprelu", d=16, B=128, M=64, dp=2))
    if "collectives" not in plan.get("communication_per_step", {}).get("comm_gradients", {}):
        pytest.skip("this saescale's plan JSON lacks `collectives` (built before the projection)")
    return planner


def test_real_plan_collectives_and_work() -> None:
    planner = _real_plan_or_skip()
    dp4 = planner(PlanRequest(variant="jumprelu", d=16, B=128, M=64, dp=4))
    P = dp4["local_shape"]["P"]
    grads = dp4["communication_per_step"]["comm_gradients"]["collectives"]
    assert sum(c["bytes"] * c["calls"] for c in grads) == pytest.approx(4 * P)
    assert {c["ranks"] for c in grads} == {4}
    lp4 = planner(PlanRequest(variant="topk", d=16, B=128, M=64, lp=4))
    kinds = {c["kind"] for e in lp4["communication_per_step"].values() for c in e["collectives"]}
    assert kinds == {"allreduce", "allgather"}  # TopK's candidates are all-gathered
    one = planner(PlanRequest(variant="topk", d=16, B=128, M=64))
    ratio = work_ratio(one["work_per_step"]["encode_gemm"], lp4["work_per_step"]["encode_gemm"])
    assert ratio == pytest.approx((2 * 16 + 1) / (2 * 64 + 1))  # 2BMd + Bd (x - b_dec), M/4 a shard
    calls = planner.calls
    planner.prefetch([PlanRequest(variant="topk", d=16, B=128, M=64, lp=4),
                      PlanRequest(variant="topk", d=16, B=128, M=64, lp=2),
                      PlanRequest(variant="topk", d=16, B=128, M=64, dp=2)])
    assert planner.calls == calls + 2  # cached requests are not asked again
    with pytest.raises(PlanError, match="divisible"):
        planner(PlanRequest(variant="topk", d=16, B=128, M=64, lp=3))


# ---- end to end: real 1- and 2-rank runs ----------------------------------------------------

MPI_ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMP_NUM_THREADS": "1"}
SHAPE = ["--d-model", "32", "--steps", "30", "--warmup-steps", "5", "--data", "synthetic",
         "--eval-tokens", "256", "--no-gemm-floor", "--force"]


def _mpiexec() -> list[str]:
    """mpiexec for 2 ranks, with --oversubscribe where the MPI knows it (Open MPI)."""
    exe = shutil.which("mpiexec")
    if exe is None:
        pytest.skip("no mpiexec")
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
    return [exe, "-n", "2", *(["--oversubscribe"] if "oversubscribe" in help_text else [])]


@pytest.fixture(scope="module")
def real_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weak-scaling study of JumpReLU and TopK: 1 rank (B = 256, M = 256), 2 ranks data parallel
    (B = 512) and latent parallel (M = 512), and the all-reduce sweep up to 2 MiB at 2 ranks."""
    if not (SAESCALE.is_file() and KERNELS.is_file()):
        pytest.skip("build/bin/saescale or saescale-kernels is missing (build first)")
    if "--tag" not in subprocess.run([str(SAESCALE), "train", "--help"], capture_output=True,
                                     text=True).stdout:
        pytest.skip("this saescale train has no --tag")
    _real_plan_or_skip()
    mpi = _mpiexec()
    study = tmp_path_factory.mktemp("study")

    def train(prefix: list[str], variant: str, row: str, ranks: int, *extra: str) -> None:
        out = study / "weak" / f"p{ranks}" / f"{row}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([*prefix, str(SAESCALE), "train", "--variant", variant, *SHAPE,
                        "--batch-size", "256", "--width", "256", *extra, "--tag", "sweep=weak",
                        "--tag", f"row={row}", "--tag", f"ranks={ranks}", "--out", str(out)],
                       check=True, capture_output=True, env=MPI_ENV, timeout=120)

    for v in ("jumprelu", "topk"):
        train([], v, f"dp-{v}", 1)
        train(mpi, v, f"dp-{v}", 2, "--batch-size", "512")
        train(mpi, v, f"lp-{v}", 2, "--width", "512", "--lp", "2")
    sizes = "|".join(str(8 * 4**i) for i in range(10))  # 8 B ... 2 MiB: the runs' messages are small
    subprocess.run([*mpi, str(KERNELS), f"--benchmark_filter=MPI_Allreduce/({sizes})/",
                    f"--benchmark_out={study / 'weak' / 'p2' / 'allreduce.json'}",
                    "--benchmark_out_format=json"], check=True, capture_output=True, env=MPI_ENV,
                   timeout=120)
    return study


def test_end_to_end_real_runs(real_study: Path, tmp_path: Path) -> None:
    results = load_results(str(real_study / "**" / "*-*.json"))
    assert len(results) == 6
    sec = projection_section(results, real_study, tmp_path / "out", SAESCALE, gpus=(8, 1024))
    assert sec is not None and sec.title == "Scaling projection"
    assert "skipped" not in sec.paragraphs[0], sec.paragraphs
    tables = dict(sec.tables)
    fit = tables["All-reduce alpha-beta fit per measured rank count (the projection uses 2 ranks)"]
    assert list(fit.ranks) == [2] and list(fit.sizes) == [10]
    check = next(t for c, t in sec.tables if c.startswith("Fit check"))
    assert len(check) == 4  # dp and lp of both variants at 2 ranks
    assert set(check.ranks) == {2}
    errors = check.error.str.rstrip("%").astype(float)
    assert errors.abs().max() < 300  # predicted from the 1-rank base: same order as measured
    print("\n" + check.to_string())  # how well the model did, for the record (pytest -s)
    weak = next(t for c, t in sec.tables if c.startswith("Projected weak"))
    assert set(weak.GPUs) == {1, 2, 8, 1024}
    for _, png in sec.figures:
        assert png.is_file()
