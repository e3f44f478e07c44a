#!/usr/bin/env python3
"""Regenerates the fuzz seed corpus (tests/fuzz/corpus/{npy,safetensors,config,checkpoint,
manifest}/) and the
dictionaries (tests/fuzz/*.dict). Python 3 standard library only; deterministic output.

    python3 tests/fuzz/make_corpus.py

The seeds are small on purpose: libFuzzer mutates them, so each one only has to reach a
distinct part of its parser (valid files of every accepted kind plus one per error class).
"""

import json
import os
import re
import shutil
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
CONFIG_CPP = os.path.join(HERE, "..", "..", "src", "config.cpp")


def write(kind, name, data):
    if isinstance(data, str):
        data = data.encode()
    assert len(data) < 4096, (kind, name, len(data))
    with open(os.path.join(CORPUS, kind, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------------------- npy


def npy_header(descr, shape, version=(1, 0), fortran=False):
    """The preamble + header NumPy writes (padded so the data starts 64-byte aligned)."""
    if len(shape) == 1:
        shape_s = "(%d,)" % shape[0]
    else:
        shape_s = "(" + ", ".join(str(d) for d in shape) + ")"
    text = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (
        descr,
        "True" if fortran else "False",
        shape_s,
    )
    len_bytes = 2 if version[0] == 1 else 4
    prefix = 6 + 2 + len_bytes
    text += " " * (63 - (prefix + len(text)) % 64) + "\n"
    fmt = "<H" if len_bytes == 2 else "<I"
    return b"\x93NUMPY" + bytes(version) + struct.pack(fmt, len(text)) + text.encode("latin-1")


def count(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def f4(n):
    return struct.pack("<%df" % n, *[0.25 * i - 1.0 for i in range(n)])


def f2(n):
    return struct.pack("<%de" % n, *[0.5 * i - 2.0 for i in range(n)])


def npy(descr, shape, **kw):
    body = f4(count(shape)) if descr == "<f4" else f2(count(shape))
    return npy_header(descr, shape, **kw) + body


def make_npy():
    write("npy", "f4_1d_v1.npy", npy("<f4", [8]))
    write("npy", "f4_2d_v1.npy", npy("<f4", [4, 8]))
    write("npy", "f2_2d_v1.npy", npy("<f2", [3, 4]))
    write("npy", "f2_1d_v2.npy", npy("<f2", [5], version=(2, 0)))
    write("npy", "f4_2d_v3.npy", npy("<f4", [2, 2], version=(3, 0)))
    write("npy", "f4_empty_rows.npy", npy("<f4", [0, 16]))
    # Hand-written header in the other style NumPy accepts: double quotes, no padding, 'L'.
    text = b'{"shape": (2L, 2), "fortran_order": False, "descr": "<f2"}\n'
    write("npy", "f2_dquote_nopad.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + f2(4))
    # Invalid: one per error class of parse_npy.
    good = npy("<f4", [4, 8])
    write("npy", "bad_magic.npy", b"\x93NUMPX" + good[6:])
    write("npy", "bad_version.npy", good[:6] + b"\x04\x00" + good[8:])
    write("npy", "truncated_data.npy", good[:-5])
    write("npy", "trailing_bytes.npy", good + b"\0\0\0\0")
    write("npy", "absurd_header_len.npy", b"\x93NUMPY\x02\x00" + struct.pack("<I", 0xFFFFFFF0) + good[10:74])
    write("npy", "fortran_order.npy", npy("<f4", [2, 2], fortran=True))
    write("npy", "bad_dtype.npy", npy_header("<f8", [2]) + b"\0" * 16)
    write("npy", "overflow_shape.npy", npy_header("<f4", [2**62, 2**62]))


# ---------------------------------------------------------------------------- safetensors


def safetensors(tensors, metadata=None, pad=True):
    """tensors: list of (name, dtype, shape, raw bytes), packed back to back like the writer."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(t[3] for t in tensors)


def bf16(n):
    # Upper halves of float32 values: exact bfloat16 numbers.
    return b"".join(f4(n)[4 * i + 2 : 4 * i + 4] for i in range(n))


def raw_header(text, body=b""):
    text = text.encode()
    return struct.pack("<Q", len(text)) + text + body


def make_safetensors():
    write("safetensors", "act_f32.safetensors", safetensors([("activations", "F32", [4, 8], f4(32))]))
    write("safetensors", "act_f16.safetensors", safetensors([("activations", "F16", [3, 4], f2(12))]))
    write(
        "safetensors",
        "act_bf16_meta.safetensors",
        safetensors([("activations", "BF16", [2, 8], bf16(16))], metadata={"format": "pt", "d": "8"}),
    )
    write(
        "safetensors",
        "sae_weights.safetensors",
        safetensors(
            [
                ("W_dec", "F32", [4, 2], f4(8)),
                ("W_enc", "F32", [2, 4], f4(8)),
                ("b_dec", "F32", [2], f4(2)),
                ("b_enc", "F32", [4], f4(4)),
                ("threshold", "F64", [4], struct.pack("<4d", 0.1, 0.2, 0.3, 0.4)),
                ("loss", "F32", [], f4(1)),
            ],
            metadata={"variant": "jumprelu"},
        ),
    )
    write("safetensors", "empty_tensor.safetensors", safetensors([("activations", "F32", [0, 8], b"")]))
    write("safetensors", "only_metadata.safetensors", safetensors([], metadata={}, pad=False))
    # Invalid: one per error class of parse_safetensors.
    good = safetensors([("activations", "F32", [2, 4], f4(8))])
    write("safetensors", "truncated_data.safetensors", good[:-3])
    write("safetensors", "absurd_header_len.safetensors", struct.pack("<Q", 2**63 + 5) + good[8:])
    write(
        "safetensors",
        "offsets_past_end.safetensors",
        raw_header('{"activations":{"dtype":"F32","shape":[2,4],"data_offsets":[16,48]}}', f4(8)),
    )
    write(
        "safetensors",
        "offsets_mismatch.safetensors",
        raw_header('{"activations":{"dtype":"F16","shape":[2,4],"data_offsets":[0,32]}}', f4(8)),
    )
    write(
        "safetensors",
        "bad_shape.safetensors",
        raw_header('{"activations":{"dtype":"F32","shape":[-2,4.5],"data_offsets":[0,0]}}'),
    )
    write(
        "safetensors",
        "bad_dtype.safetensors",
        raw_header('{"x":{"dtype":"I8","shape":[1],"data_offsets":[0,1]},"__metadata__":{"a":1}}', b"\0"),
    )
    write("safetensors", "not_json.safetensors", raw_header('{"activations": {"dtype": "F3', b"\0" * 4))


# ---------------------------------------------------------------------------- config (TOML)


def make_config():
    write(
        "config",
        "topk.toml",
        """# TopK on synthetic data
variant = "topk"
k = 16
aux-k = 64
d-model = 64
width = 256
batch-size = 512
steps = 200
data = "synthetic:features=64,l0=4"
target-fvu = [0.2, 0.1]
topk-algo = "bisect"
b-dec-init = "mean"
""",
    )
    write(
        "config",
        "jumprelu_snake.toml",
        """variant = 'jumprelu'
d_model = 32
width = 128
sparsity_coeff = 1e-3
lr = 7e-5
adam_beta1 = 0.0
adam_beta2 = 0.999
bandwidth = 0.001
threshold_init = 0.001
lr_warmup_steps = 10
sparsity_warmup_steps = 20
lr_decay_frac = 0.2
no_fence = true
no_gemm_floor = false
normalize = "sqrt-d"
force = true
""",
    )
    write(
        "config",
        "batchtopk_grid.toml",
        """variant = "batchtopk"
d-model = 128
width = 1024
dp = 2
lp = 2
comm = "mpi"
batch-scope = "local"
precision = "fp32"
seed = 4294967297
eval-every = 100
eval-tokens = 4096
shuffle-buffer = 1024
dead-window-tokens = 1_000_000
data = "acts/shard_*.npy"
out = "results/r.json"
save-weights = "weights/bt"
""",
    )
    write(
        "config",
        "gated_misc.toml",
        """variant = "gated"
optimizer = "sgd"
clip-norm = 0.0
decoder-init-norm = 0.1
progress-every = 10
loss-curve-points = 20
warmup-steps = 0
norm-tokens = 1024
ground-truth = "data/dictionary.npy"
init = "weights/old"
test-fail-step = -1
""",
    )
    # Invalid: unknown key, forbidden key, wrong types, a failing check, bad syntax.
    write("config", "unknown_key.toml", 'variant = "topk"\nnot-an-option = 3\n')
    write("config", "forbidden_key.toml", 'config = "other.toml"\n')
    write("config", "flag_not_bool.toml", 'no-fence = "yes"\n')
    write("config", "table_value.toml", "[d-model]\nx = 1\n")
    write("config", "bad_values.toml", 'k = -1\nvariant = "softmax"\n')
    write("config", "date_value.toml", "out = 1979-05-27T07:32:00Z\n")
    write("config", "bad_syntax.toml", 'variant = "topk\nk = [1, \n')


# ---------------------------------------------------------------------------- dictionaries


def dict_line(token):
    out = ""
    for b in token.encode("latin-1"):
        c = chr(b)
        out += c if 0x20 <= b < 0x7F and c not in '"\\' else "\\x%02X" % b
    return '"%s"\n' % out


def write_dict(name, tokens):
    with open(os.path.join(HERE, name), "w") as f:
        f.write("# libFuzzer dictionary, generated by make_corpus.py\n")
        for t in tokens:
            f.write(dict_line(t))


def make_dicts():
    write_dict(
        "npy.dict",
        ["\x93NUMPY", "\x01\x00", "\x02\x00", "\x03\x00", "'descr'", "'<f4'", "'<f2'", "'<f8'",
         "'fortran_order'", "'shape'", "True", "False", "(", ",)", ")", "{", "}", ": ", ", ", "L"],
    )
    write_dict(
        "safetensors.dict",
        ['"dtype"', '"shape"', '"data_offsets"', '"__metadata__"', '"activations"', '"F32"',
         '"F16"', '"BF16"', '"F64"', "[0,", "]", "{", "}", ":", ",", "18446744073709551615",
         "-1", "1e3", "\\u0000"],
    )
    # Option names straight from src/config.cpp, so the dictionary follows new options.
    with open(CONFIG_CPP) as f:
        names = sorted(set(re.findall(r'"!?--([a-z0-9][a-z0-9-]*)"', f.read())))
    if not names:
        raise SystemExit("make_corpus.py: no option names found in " + CONFIG_CPP)
    tokens = []
    for n in names:
        tokens += [n] + ([n.replace("-", "_")] if "-" in n else [])
    tokens += [" = ", "true", "false", "[", "]", "\"", "'''", "inf", "nan", "0x", "1e-3",
               "[table]", "{ a = 1 }", "\n"]
    write_dict("config.dict", tokens)


# ---------------------------------------------------------------------------- checkpoints


def rank_file(rank=1, step=7, grid=(2, 1), sections=None, corrupt=None):
    """A saescale checkpoint rank file (src/io/checkpoint.hpp): magic, header length, JSON header
    with identity and CRC-32 per section, sections."""
    sections = sections if sections is not None else [("adam_v", f4(4)), ("params", f4(6))]
    header = {"identity": {"rank": rank, "step": step, "grid": {"dp": grid[0], "lp": grid[1]}},
              "sections": [], "state": {"next_step": step}}
    offset = 0
    for name, data in sections:
        header["sections"].append({"name": name, "offset": offset, "bytes": len(data),
                                   "crc32": zlib.crc32(data) if corrupt != name else 0})
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    return b"SAESCKPT" + struct.pack("<Q", len(text)) + text + b"".join(d for _, d in sections)


def make_checkpoint():
    good = rank_file()
    write("checkpoint", "good.bin", good)
    write("checkpoint", "no_sections.bin", rank_file(sections=[]))
    write("checkpoint", "bad_crc.bin", rank_file(corrupt="params"))
    write("checkpoint", "other_rank.bin", rank_file(rank=0))
    write("checkpoint", "truncated.bin", good[:-3])
    write("checkpoint", "bad_magic.bin", b"SAESCKPX" + good[8:])


def manifest(step=10, ranks=2, edit=None):
    """A checkpoint manifest whose crc32 is over its compact, key-sorted dump (nlohmann's)."""
    m = {"format": "saescale.checkpoint/2", "step": step, "ranks": ranks,
         "grid": {"dp": ranks, "lp": 1}, "options": {"variant": "topk", "k": 32},
         "resolved": {"lr": 0.0001},
         "files": [{"rank": r, "file": "rank-%05d.bin" % r, "bytes": 1000 + r, "crc32": 12345 + r}
                   for r in range(ranks)]}
    m["crc32"] = zlib.crc32(json.dumps(m, sort_keys=True, separators=(",", ":"),
                                       ensure_ascii=False).encode())
    if edit:
        m.update(edit)
    return json.dumps(m, indent=2)


def make_manifest():
    write("manifest", "good.json", manifest())
    write("manifest", "one_rank.json", manifest(ranks=1))
    write("manifest", "edited_step.json", manifest(edit={"step": 5}))
    write("manifest", "wrong_step.json", manifest(step=20))
    write("manifest", "not_json.json", manifest()[:40])


def main():
    for kind in ("npy", "safetensors", "config", "checkpoint", "manifest"):
        path = os.path.join(CORPUS, kind)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
    make_npy()
    make_safetensors()
    make_config()
    make_checkpoint()
    make_manifest()
    make_dicts()
    total = sum(len(files) for _, _, files in os.walk(CORPUS))
    assert total < 60, total
    print("make_corpus.py: %d seed files under %s" % (total, os.path.relpath(CORPUS)))


if __name__ == "__main__":
    main()
