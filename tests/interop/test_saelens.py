"""saescale's weight folders against the real SAELens, both ways.

- Every variant saescale trains is loaded by SAELens (`SAE.load_from_disk`); SAELens' encode and
  decode on the evaluation rows give the FVU and L0 that `saescale eval` reports.
- SAEs that SAELens builds and saves (standard, gated, jumprelu, topk; random weights, SAELens'
  own conventions such as `apply_b_dec_to_input: true`) are read by `saescale eval`, which gives
  the FVU and L0 that SAELens computes.

FVU agrees to 1e-6 and L0 exactly. Run by `make test-interop` in the models environment
(analysis/requirements-models.txt); SAESCALE names the binary.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from sae_lens import SAE
from sae_lens.saes.gated_sae import GatedSAE, GatedSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

SAESCALE = os.environ.get("SAESCALE", "build/bin/saescale")
D, M, EVAL_ROWS = 16, 64, 1024
SEED = int(os.environ.get("SAESCALE_TEST_SEED", np.random.SeedSequence().entropy % 2**31))


def saescale(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([SAESCALE, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"saescale {' '.join(args)}: {done.stderr}"
    return done


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[str, np.ndarray]:
    """Synthetic activation shards and the rows `saescale eval` evaluates (the first ones)."""
    root = tmp_path_factory.mktemp("data")
    saescale("gen-data", "--d-model", str(D), "--tokens", "6000", "--shard-tokens", "2000",
             "--data", f"synthetic:features=48,l0=4,seed={SEED % 1000 + 1}", "--out-dir", str(root))
    shards = sorted(glob.glob(str(root / "shard_*.npy")))
    rows = np.concatenate([np.load(s) for s in shards])[:EVAL_ROWS]
    return str(root / "shard_*.npy"), rows


def saelens_fidelity(sae: SAE, rows: np.ndarray) -> tuple[float, float]:
    """FVU (numerator and denominator summed separately, around the mean) and L0 by SAELens."""
    x = torch.from_numpy(rows)
    with torch.no_grad():
        feats = sae.encode(x)
        x_hat = sae.decode(feats)
    x64, e64 = rows.astype(np.float64), (x - x_hat).numpy().astype(np.float64)
    fvu = float((e64**2).sum() / ((x64 - x64.mean(axis=0)) ** 2).sum())
    l0 = float((feats != 0).sum().item()) / len(rows)
    return fvu, l0


def saescale_fidelity(folder: Path, pattern: str, tmp: Path) -> tuple[float, float]:
    out = tmp / f"eval-{folder.name}.json"
    saescale("eval", "--init", str(folder), "--data", pattern, "--eval-tokens", str(EVAL_ROWS),
             "--out", str(out))
    fid = json.loads(out.read_text())["fidelity"]
    assert fid["eval_tokens"] == EVAL_ROWS
    return fid["fvu"], fid["l0"]


@pytest.mark.parametrize("variant", ["relu", "jumprelu", "gated", "topk", "batchtopk"])
def test_saelens_loads_what_saescale_trained(variant: str, data, tmp_path: Path) -> None:
    pattern, rows = data
    folder = tmp_path / variant
    extra = {"topk": ["--k", "5"], "batchtopk": ["--k", "5"],
             "jumprelu": ["--threshold-init", "0.05", "--lr", "1e-3"],
             "relu": ["--lr", "1e-3"], "gated": ["--lr", "1e-3"]}[variant]
    saescale("train", "--variant", variant, "--width", str(M), "--batch-size", "256", "--steps",
             "40", "--data", pattern, "--eval-tokens", "256", "--seed", str(SEED % 1000 + 2),
             "--no-gemm-floor", "--save-weights", str(folder), "--out",
             str(tmp_path / "train.json"), *extra)
    cfg = json.loads((folder / "cfg.json").read_text())
    sae = SAE.load_from_disk(str(folder))
    if variant == "topk":
        assert cfg["k"] == 5 and sae.cfg.k == 5
    ours = saescale_fidelity(folder, pattern, tmp_path)
    theirs = saelens_fidelity(sae, rows)
    assert theirs[1] > 0, "no latent fired: the comparison would be vacuous"
    assert abs(ours[0] - theirs[0]) <= 1e-6, (variant, ours, theirs)
    assert ours[1] == theirs[1], (variant, ours, theirs)


def random_saelens_sae(architecture: str, gen: torch.Generator) -> SAE:
    common = {"d_in": D, "d_sae": M}
    sae = {"standard": lambda: StandardSAE(StandardSAEConfig(**common)),
           "gated": lambda: GatedSAE(GatedSAEConfig(**common)),
           "jumprelu": lambda: JumpReLUSAE(JumpReLUSAEConfig(**common)),
           "topk": lambda: TopKSAE(TopKSAEConfig(**common, k=6))}[architecture]()
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.dim() == 2 else 0.2))
        if architecture == "jumprelu":  # thresholds among the pre-activations: some latents fire
            sae.threshold.copy_(torch.rand(M, generator=gen) * 0.5 + 0.05)
    return sae


@pytest.mark.parametrize("architecture", ["standard", "gated", "jumprelu", "topk"])
def test_saescale_reads_what_saelens_saved(architecture: str, data, tmp_path: Path) -> None:
    pattern, rows = data
    gen = torch.Generator().manual_seed(SEED)
    sae = random_saelens_sae(architecture, gen)
    folder = tmp_path / architecture
    sae.save_model(str(folder))
    assert json.loads((folder / "cfg.json").read_text())["apply_b_dec_to_input"] is True
    ours = saescale_fidelity(folder, pattern, tmp_path)
    theirs = saelens_fidelity(sae, rows)
    assert theirs[1] > 0
    assert abs(ours[0] - theirs[0]) <= 1e-6 * max(1.0, theirs[0]), (architecture, ours, theirs)
    assert ours[1] == theirs[1], (architecture, ours, theirs)
