"""Harvest a transformer's hidden states as activation shards saescale trains on.

    python -m saescale_analysis.harvest --model PATH_OR_NAME --layer 3 --text 'corpus/*.txt' \\
        --tokens 1000000 --context 128 --out acts/

writes ``acts/shard_00000.npy`` ... (``[rows, d_model]``, float32 or float16) and
``acts/manifest.json`` (model, layer, hook, context, dtype, tokens, text source, shards), which
``saescale train --data acts/manifest.json`` reads. Text is tokenised as one stream, cut into
windows of ``context`` tokens (the model's special tokens added around each window and left out
of the activations), and run through the model with Hugging Face ``transformers``. It is
resumable: rerun the same command (or with more ``--tokens``) and it continues after the last
complete shard; a command that would change what was harvested is refused.

Needs torch and transformers: the models environment (``make deps-models``, .venv-models).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "saescale.activations/1"
MANIFEST = "manifest.json"


class HarvestError(Exception):
    """A problem with the command's input: one line for the user."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m saescale_analysis.harvest",
        description="Write a transformer's hidden states at one layer as .npy activation shards "
        "with a manifest that saescale reads (--data DIR/manifest.json).")
    p.add_argument("--model", required=True,
                   help="Hugging Face model name or local directory (offline: HF_HUB_OFFLINE=1)")
    p.add_argument("--layer", type=int, required=True,
                   help="hidden_states index: 0 is the embeddings, i the output of block i")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", metavar="PATH_OR_GLOB",
                     help="local text files, .gz ones decompressed (repeatable; read in sorted "
                     "order as one stream)")
    src.add_argument("--dataset", metavar="NAME",
                     help="a Hugging Face dataset (with --dataset-split and --dataset-column)")
    p.add_argument("--dataset-split", default="train")
    p.add_argument("--dataset-column", default="text")
    p.add_argument("--tokens", type=int, required=True, help="activation rows to write")
    p.add_argument("--context", type=int, default=128,
                   help="tokens per window, the model's special tokens included (default 128)")
    p.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (16)")
    p.add_argument("--shard-tokens", type=int, default=65536,
                   help="rows per shard, rounded up to whole windows (65536)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _text_files(patterns: list[str]) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not matched:
            raise HarvestError(f"--text '{pattern}' matches no files")
        for f in matched:
            path = Path(f)
            if not path.is_file():
                raise HarvestError(f"--text {f}: not a regular file")
            files.append(path)
    return files


def _read_file(path: Path) -> str:
    """A text file as UTF-8 (undecodable bytes replaced); .gz files decompressed."""
    if path.suffix == ".gz":
        import gzip

        with gzip.open(path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")
    return path.read_text(encoding="utf-8", errors="replace")


def _read_text(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """The documents, in order, and a description of where they came from (with a digest)."""
    digest = hashlib.sha256()
    if args.text:
        files = _text_files(args.text)
        docs = [_read_file(f) for f in files]
        for doc in docs:
            digest.update(doc.encode())
        return docs, {"kind": "files", "files": [str(f) for f in files],
                      "bytes": sum(len(d.encode()) for d in docs), "sha256": digest.hexdigest()}
    import datasets  # only for --dataset

    ds = datasets.load_dataset(args.dataset, split=args.dataset_split)
    if args.dataset_column not in ds.column_names:
        raise HarvestError(f"--dataset-column {args.dataset_column}: the dataset has "
                           f"{', '.join(ds.column_names)}")
    docs = [str(x) for x in ds[args.dataset_column]]
    for doc in docs:
        digest.update(doc.encode())
    return docs, {"kind": "dataset", "name": args.dataset, "split": args.dataset_split,
                  "column": args.dataset_column, "documents": len(docs),
                  "sha256": digest.hexdigest()}


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_manifest(out: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise HarvestError(f"{path}: not valid JSON ({e}); remove it or use another --out") from e
    for key, value in identity.items():
        if manifest.get(key) != value:
            raise HarvestError(f"{path} was harvested with {key} = {json.dumps(manifest.get(key))}"
                               f", this command has {json.dumps(value)}: use another --out")
    for shard in manifest.get("shards", []):
        if not (out / shard["file"]).is_file():
            raise HarvestError(f"{out / shard['file']}: listed in {path} but missing")
    return manifest


def _special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text (BERT: [CLS] / [SEP]; Llama: BOS)."""
    bare = tokenizer("saescale", add_special_tokens=False)["input_ids"]
    full = tokenizer("saescale", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return list(full[:start]), list(full[start + len(bare):])
    raise HarvestError("cannot tell the tokenizer's special tokens from its text tokens")


def harvest(args: argparse.Namespace) -> dict[str, Any]:
    if args.tokens < 1 or args.context < 2 or args.batch_size < 1 or args.shard_tokens < 1:
        raise HarvestError("--tokens, --batch-size and --shard-tokens must be positive and "
                           "--context at least 2")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise HarvestError(f"--out {out}: exists and is not a directory")

    import torch
    import transformers

    # transformers' own chatter: its weight-loading bar, and a warning that the whole text is longer
    # than the model's context (it is cut into windows below).
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    docs, source = _read_text(args)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    model = transformers.AutoModel.from_pretrained(args.model).to(args.device).eval()
    layers = getattr(model.config, "num_hidden_layers", None)
    if layers is not None and not 0 <= args.layer <= layers:
        raise HarvestError(f"--layer {args.layer}: the model has hidden states 0..{layers}")

    prefix, suffix = _special_tokens(tokenizer)
    special = len(prefix) + len(suffix)
    window = args.context - special
    if window < 1:
        raise HarvestError(f"--context {args.context} leaves no room beside the model's "
                           f"{special} special tokens")
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
    windows_available = len(ids) // window
    if windows_available * window < args.tokens:
        raise HarvestError(f"the text has {len(ids):,} tokens: {windows_available:,} windows of "
                           f"{window} give {windows_available * window:,} rows, fewer than "
                           f"--tokens {args.tokens:,} (add text or lower --tokens)")
    d_model = int(model.config.hidden_size)
    identity = {"format": FORMAT, "model": args.model, "layer": args.layer,
                "hook": f"hidden_states[{args.layer}]", "d_model": d_model, "dtype": args.dtype,
                "context": args.context, "tokens_per_window": window,
                "special_tokens": "excluded", "text_source": source}
    out.mkdir(parents=True, exist_ok=True)
    manifest = _load_manifest(out, identity) or {**identity, "shards": []}
    manifest.update({"transformers_version": transformers.__version__,
                     "torch_version": torch.__version__})
    windows_per_shard = -(-args.shard_tokens // window)
    done_windows = sum(s["windows"] for s in manifest["shards"])
    done_rows = sum(s["rows"] for s in manifest["shards"])
    if done_rows > args.tokens:
        raise HarvestError(f"{out / MANIFEST} already holds {done_rows:,} rows, more than "
                           f"--tokens {args.tokens:,}: use another --out")
    np_dtype = np.float32 if args.dtype == "float32" else np.float16

    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=args.tokens, initial=done_rows, unit="tok", desc="harvest",
                        file=sys.stderr)
    start, rows_now = time.perf_counter(), 0
    while done_rows < args.tokens:
        rows_wanted = min(windows_per_shard * window, args.tokens - done_rows)
        shard_windows = -(-rows_wanted // window)
        chunks = []
        for first in range(done_windows, done_windows + shard_windows, args.batch_size):
            batch = [prefix + ids[w * window:(w + 1) * window] + suffix
                     for w in range(first, min(first + args.batch_size,
                                               done_windows + shard_windows))]
            inputs = torch.tensor(batch, device=args.device)
            with torch.no_grad():
                hidden = model(input_ids=inputs, output_hidden_states=True).hidden_states[args.layer]
            # The window's own tokens: the special tokens around it are left out.
            kept = hidden[:, len(prefix):len(prefix) + window, :]
            chunks.append(kept.reshape(-1, d_model).to("cpu", torch.float32).numpy())
        rows = np.concatenate(chunks)[:rows_wanted].astype(np_dtype)
        if not np.isfinite(rows.astype(np.float32)).all():
            raise HarvestError(f"the model's hidden states at layer {args.layer} are not all "
                               "finite (try --dtype float32)")
        name = f"shard_{len(manifest['shards']):05d}.npy"
        _atomic_write(out / name, lambda f: np.save(f, rows))
        manifest["shards"].append({"file": name, "rows": int(len(rows)), "windows": shard_windows})
        done_windows += shard_windows
        done_rows += len(rows)
        rows_now += len(rows)
        manifest["tokens"] = done_rows
        _atomic_write(out / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=2).encode()))
        if progress:
            progress.update(len(rows))
    if progress:
        progress.close()
    seconds = time.perf_counter() - start
    manifest["tokens"] = done_rows
    manifest["last_run"] = {"rows": rows_now, "seconds": round(seconds, 3),
                            "tokens_per_s": round(rows_now / seconds, 1) if rows_now else None,
                            "device": args.device}
    _atomic_write(out / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=2).encode()))
    return manifest


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        manifest = harvest(args)
    except HarvestError as e:
        print(f"harvest: error: {e}", file=sys.stderr)
        return 1
    run = manifest["last_run"]
    rate = f"{run['tokens_per_s']:,.0f} tok/s" if run["tokens_per_s"] else "nothing new"
    print(f"harvest: {manifest['tokens']:,} rows of d={manifest['d_model']} "
          f"({manifest['hook']} of {manifest['model']}) in {len(manifest['shards'])} shards; "
          f"this run {run['rows']:,} rows, {rate} -> {Path(args.out) / MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
