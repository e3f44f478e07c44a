"""ReFrame perflogs of runs/reframe's checks read by the regression gate: one sample per run line,
the benchmark identity from the check name and saescale's options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from saescale_analysis import perflog, regress

HEADER = ("job_completion_time|name|system|partition|executable_opts|step_ms_value|step_ms_unit|"
          "step_ms_ref|step_ms_lower_thres|step_ms_upper_thres|step_ms_result|")
OPTS = ("train,--variant,topk,--dp,2,--lp,1,--d-model,32,--width,256,--batch-size,256,--k,8,"
        "--target-fvu,0.3,0.15,--precision,fp32,--out,results.json")


def write(path: Path, steps_ms) -> Path:
    lines = [HEADER] + [f"2026-12-06T03:13:{i:02d}|saescale_train %variant=topk %grid=2x1|local|"
                        f"debug|{OPTS}|{ms}|ms|0.3|None|4.0|pass|" for i, ms in enumerate(steps_ms)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_perflog_gives_one_record_per_run(tmp_path):
    rng = np.random.default_rng()
    steps = rng.uniform(0.2, 0.4, size=4)
    records = perflog.read_perflog(write(tmp_path / "a.log", steps))
    assert perflog.is_perflog(tmp_path / "a.log")
    assert [r["timing"]["step_s"]["median"] for r in records] == pytest.approx(steps / 1e3)
    key = regress.bench_key(records[0])
    assert (key.variant, key.dp, key.lp, key.d_model, key.width, key.batch_size, key.k) == \
        ("topk", 2, 1, 32, 256, 256, 8)


def test_regress_flags_a_slower_perflog(tmp_path):
    rng = np.random.default_rng()
    base = write(tmp_path / "base.log", rng.normal(0.30, 0.005, size=12))
    same = write(tmp_path / "same.log", rng.normal(0.30, 0.005, size=12))
    slow = write(tmp_path / "slow.log", rng.normal(0.30 * 1.3, 0.005, size=12))
    verdicts = lambda cur: [r.verdict for r in regress.compare(  # noqa: E731
        regress.load_side(base, per_run=True), regress.load_side(cur, per_run=True),
        min_repetitions=9)]
    assert verdicts(slow) == [regress.REGRESSION]
    assert verdicts(same) != [regress.REGRESSION]


def test_a_line_that_is_not_a_saescale_check_is_named(tmp_path):
    bad = tmp_path / "bad.log"
    bad.write_text(HEADER + "\n2026|other_check|local|debug|x|0.3|ms|0|None|None|pass|\n")
    with pytest.raises(ValueError, match="bad.log:2"):
        perflog.read_perflog(bad)
