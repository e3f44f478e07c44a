"""runs/gpu_check_summary.py: the GPU check's numbers from results files with known answers (MFU
against the card's bf16 peak, ratios to JumpReLU, selection / encoder GEMM, the targets' verdicts).
"""
import importlib.util
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_check_summary", ROOT / "runs" / "gpu_check_summary.py")
summary = importlib.util.module_from_spec(spec)
sys.modules["gpu_check_summary"] = summary
spec.loader.exec_module(summary)

D, M, B = 3584, 131072, 4096
H100_BF16 = 989.4e12


def result(variant, precision, sparse, step, width=M, encode=None, activation=None,
           gpu="NVIDIA H100 80GB HBM3"):
    phases = {"encode_gemm": {"median": encode or step / 6}, "activation": {"median": activation or step / 20},
              "decode_gemm": {"median": step / 6}}
    return {"schema": "saescale.result/1", "status": "ok",
            "context": {"gpu": {"name": gpu} if gpu else None, "tags": {"study": "gpu-check"}},
            "config": {"variant": variant, "precision": precision, "sparse": "on" if sparse else "off",
                       "d_model": D, "width": width, "batch_size": B},
            "timing": {"step_s": {"median": step}, "phases_s": phases},
            "fidelity": {"fvu": 0.1, "l0": 64.0}}


def write(folder, name, r):
    (folder / "results").mkdir(parents=True, exist_ok=True)
    (folder / "results" / f"{name}.json").write_text(json.dumps(r))


def run(folder, capsys, *extra):
    assert summary.main([str(folder), "--full-width", str(M), *extra]) == 0
    return capsys.readouterr().out


def test_mfu_ratios_and_targets(tmp_path, capsys):
    rng = random.Random()
    jump = rng.uniform(0.025, 0.04)  # s: a bf16 step at these shapes
    flops = 5 * 2.0 * B * D * M
    topk_encode = jump / 5
    write(tmp_path, "jumprelu-dense-bf16", result("jumprelu", "bf16", False, jump))
    write(tmp_path, "topk-dense-bf16", result("topk", "bf16", False, 2 * jump, encode=topk_encode,
                                              activation=topk_encode * 0.5))
    write(tmp_path, "jumprelu-sparse-bf16", result("jumprelu", "bf16", True, 0.25 * jump))
    out = run(tmp_path, capsys)
    mfu = 100 * flops / jump / H100_BF16
    assert f"| jumprelu | {jump * 1e3:.2f} | 1.00x | {mfu:.1f} |" in out
    assert "| topk | " in out and "| 2.00x |" in out
    assert f"dense JumpReLU bf16 MFU >= 70%: {mfu:.1f}% ({'met' if mfu >= 70 else 'missed'})" in out
    assert "sparse JumpReLU step <= 0.3x dense: 0.250x (met)" in out
    assert "TopK selection <= 0.25x encoder GEMM: 0.500x (missed); where the step goes" in out
    assert "989.4 TFLOP/s" in out


def test_host_results_have_no_mfu(tmp_path, capsys):
    write(tmp_path, "jumprelu-dense-fp32", result("jumprelu", "fp32", False, 0.003, gpu=None))
    write(tmp_path, "relu-dense-fp32", result("relu", "fp32", False, 0.0045, gpu=None))
    out = run(tmp_path, capsys, "--dense", "fp32", "--sparse", "fp32")
    assert "device: none (host build)" in out
    assert "| relu | 4.50 | 1.50x | - |" in out
    assert "MFU >= 70%: no GPU peak known (not measured)" in out


def test_width_sweep_table(tmp_path, capsys):
    for w, t in ((16384, 0.004), (32768, 0.008)):
        write(tmp_path, f"jumprelu-width-{w}", result("jumprelu", "bf16", False, t, width=w))
        write(tmp_path, f"topk-width-{w}", result("topk", "bf16", False, 3 * t, width=w))
    write(tmp_path, "jumprelu-dense-bf16", result("jumprelu", "bf16", False, 0.03))
    out = run(tmp_path, capsys)
    assert "| variant | M 16384 | M 32768 | M 131072 |" in out
    assert "| topk | 12.00 (3.00x) | 24.00 (3.00x) | - |" in out


def test_no_results_is_an_error(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    assert summary.main([str(tmp_path), "--full-width", str(M)]) == 1
