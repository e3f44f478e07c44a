"""saescale's training step against SAELens' at the same shapes, on the same threads.

    .venv-models/bin/python runs/bench-saelens.py [--saescale build/bin/saescale] [--threads 2]

For each variant, SAELens' training step as its SAETrainer runs it (`training_forward_pass`:
forward with the loss, then backward, global-norm clipping and Adam; no activation store) on one
random batch, and `saescale train` with its default options, both at d = 512, M = 8192, B = 2048,
k = 32 and an L0 near 32 (SAELens: thresholds/biases set at the pre-activation quantile of the
batch; saescale: --initial-l0 32), AuxK off on both sides (no dead-latent mask is given to
SAELens), and a learning rate of 1e-9 on both sides so that L0 stays where it started (a step's
work does not depend on the learning rate's value; at a real one the elementwise variants' L0
drifts within a few steps, to 5-320 here). Medians of the timed steps; one invocation, one
machine. The L0 printed is the last step's: SAELens' dense step costs the same at any L0.
Needs the models environment (analysis/requirements-models.txt).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

D, M, B, K = 512, 8192, 2048, 32
LR = 1e-9  # keeps L0 at its start on both sides
VARIANTS = {"relu": "standard", "jumprelu": "jumprelu", "gated": "gated", "topk": "topk",
            "batchtopk": "batchtopk"}


def saelens_sae(architecture: str):
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.gated_sae import GatedTrainingSAE, GatedTrainingSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    common = {"d_in": D, "d_sae": M}
    return {"standard": lambda: StandardTrainingSAE(StandardTrainingSAEConfig(**common)),
            "jumprelu": lambda: JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(**common)),
            "gated": lambda: GatedTrainingSAE(GatedTrainingSAEConfig(**common)),
            "topk": lambda: TopKTrainingSAE(TopKTrainingSAEConfig(**common, k=K)),
            "batchtopk": lambda: BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common, k=K)),
            }[architecture]()


def start_at_l0(sae, architecture: str, x: torch.Tensor) -> None:
    """Place the elementwise variants' cut at the pre-activation quantile where ~K latents fire."""
    if architecture in ("topk", "batchtopk"):
        return
    with torch.no_grad():
        sae_in = x - sae.b_dec if sae.cfg.apply_b_dec_to_input else x
        pre = sae_in @ sae.W_enc
        cut = torch.quantile(pre.flatten()[:2_000_000], 1 - K / M).item()
        if architecture == "standard":
            sae.b_enc.fill_(-cut)
        elif architecture == "gated":
            sae.b_gate.fill_(-cut)
        else:  # JumpReLU: zero bias, the threshold at the cut
            sae.b_enc.zero_()
            sae.threshold.fill_(cut)


def saelens_step_ms(architecture: str, steps: int, warmup: int) -> tuple[float, float]:
    from sae_lens.saes.sae import TrainStepInput

    torch.manual_seed(1)
    sae = saelens_sae(architecture)
    x = torch.randn(B, D) / D**0.5
    start_at_l0(sae, architecture, x)
    coefficients = {name: (c.value if hasattr(c, "value") else c)
                    for name, c in sae.get_coefficients().items()}
    opt = torch.optim.Adam(sae.parameters(), lr=LR)
    times, l0 = [], float("nan")
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        out = sae.training_forward_pass(TrainStepInput(
            sae_in=x, coefficients=coefficients, dead_neuron_mask=None, n_training_steps=i,
            is_logging_step=False))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        l0 = float((out.feature_acts != 0).sum(-1).float().mean())
    return 1e3 * statistics.median(times), l0


def saescale_step_ms(binary: str, variant: str, steps: int, warmup: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        # AuxK off: SAELens' step here gets no dead-latent mask, so it runs no auxiliary loss.
        extra = ["--aux-k", "0"] if variant in ("topk", "batchtopk") else ["--initial-l0", str(K)]
        subprocess.run([binary, "train", "--variant", variant, "--d-model", str(D), "--width",
                        str(M), "--batch-size", str(B), "--k", str(K), "--lr", str(LR), "--steps",
                        str(steps + warmup), "--warmup-steps", str(warmup), "--no-gemm-floor",
                        "--eval-tokens", "2048", "--out", str(out), *extra],
                       check=True, capture_output=True, text=True)
        r = json.loads(out.read_text())
        return 1e3 * r["timing"]["step_s"]["median"], r["fidelity"]["loss_curve"][-1]["l0"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--saescale", default="build/bin/saescale")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"d={D} M={M} B={B} k={K}, {args.steps} timed steps after {args.warmup}; torch "
          f"{torch.__version__} with {args.threads} threads")
    print(f"{'variant':10s} {'SAELens ms':>11s} {'L0':>7s} {'saescale ms':>12s} {'L0':>7s} "
          f"{'speed-up':>9s}")
    for variant, architecture in VARIANTS.items():
        theirs, their_l0 = saelens_step_ms(architecture, args.steps, args.warmup)
        ours, our_l0 = saescale_step_ms(args.saescale, variant, args.steps, args.warmup)
        print(f"{variant:10s} {theirs:11.1f} {their_l0:7.1f} {ours:12.1f} {our_l0:7.1f} "
              f"{theirs / ours:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
