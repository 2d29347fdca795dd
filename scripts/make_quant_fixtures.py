#!/usr/bin/env python3
"""Quantisation fixtures for temper-gguf's writers, made by llama.cpp itself.

Builds llama.cpp from the llama-cpp-python sdist (scripts/build_llama_cpp.sh, cached in
target/llama-cpp), then quantises one set of test rows with ggml's own ``ggml_quantize_chunk``
(through ctypes on libggml-base.so; with no importance matrix it runs the
``quantize_row_*_ref`` functions that llama.cpp's ``quantize`` tool uses) into every type
temper writes. For the types gguf-py can quantise (Q8_0, Q4_0, Q5_0, Q5_1) it checks that
gguf-py's bytes are ggml's. Writes under ``tests/fixtures/quant/``:

  input.f32          the rows, little-endian f32: 6 rows of 512 values (2 super-blocks, 16
                     32-value blocks a row): N(0, 0.02) weights, the same with outliers, all
                     positive, all negative, rows with zero and tiny (1e-20) blocks, Student-t.
  <type>.bin         ggml's bytes for the rows, for q8_0 q4_0 q5_0 q5_1 q4_k q5_k q6_k.
  <type>.deq.f32     ``gguf.quants.dequantize`` of those bytes.
  summary.json       per type: bytes, RMSE of the dequantised rows against the input, and
                     whether gguf-py's quantiser wrote the same bytes.

Usage:  python scripts/make_quant_fixtures.py      (needs numpy and gguf)
        LLAMA_CPP_BUILD=DIR takes an existing llama.cpp build folder.
"""

import ctypes
import json
import os
import subprocess
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "quant"
TYPES = {"q8_0": T.Q8_0, "q4_0": T.Q4_0, "q5_0": T.Q5_0, "q5_1": T.Q5_1, "q4_k": T.Q4_K,
         "q5_k": T.Q5_K, "q6_k": T.Q6_K}
ROW = 512


def rows():
    rng = np.random.default_rng(15)
    w = rng.normal(0, 0.02, ROW)
    outliers = rng.normal(0, 0.02, ROW)
    outliers[rng.choice(ROW, 6, replace=False)] = rng.choice([-1, 1], 6) * rng.uniform(0.2, 0.5, 6)
    pos = rng.uniform(0.1, 1.0, ROW)
    neg = -rng.uniform(0.0, 3.0, ROW)
    sparse = rng.normal(0, 1, ROW)
    sparse[0:32] = 0.0  # a zero 32-block (and half a zero Q6_K 16-block pair)
    sparse[256:288] = 1e-20  # tiny values, below ggml's GROUP_MAX_EPS in the Q6_K search
    sparse[300:310] = 0.0
    heavy = rng.standard_t(2.5, ROW)
    return np.stack([w, outliers, pos, neg, sparse, heavy]).astype(np.float32)


def main():
    if os.environ.get("LLAMA_CPP_BUILD"):
        build = Path(os.environ["LLAMA_CPP_BUILD"])
    else:
        build = Path(subprocess.run([str(ROOT / "scripts" / "build_llama_cpp.sh")], check=True,
                                    capture_output=True, text=True).stdout.splitlines()[-1])
    ggml = ctypes.CDLL(str(build / "bin" / "libggml-base.so"))
    ggml.ggml_quantize_chunk.restype = ctypes.c_size_t
    ggml.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                         ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                         ctypes.c_void_p]
    x = rows()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "input.f32").write_bytes(x.astype("<f4").tobytes())
    summary = {}
    for name, ty in TYPES.items():
        block, size = quants.GGML_QUANT_SIZES[ty]
        dst = np.zeros(x.shape[0] * ROW // block * size, dtype=np.uint8)
        n = ggml.ggml_quantize_chunk(int(ty), x.ctypes.data, dst.ctypes.data, 0, x.shape[0], ROW,
                                     None)
        assert n == dst.size, (name, n, dst.size)
        ours = dst.tobytes()
        (OUT / f"{name}.bin").write_bytes(ours)
        deq = quants.dequantize(dst.reshape(x.shape[0], -1), ty).astype(np.float32)
        (OUT / f"{name}.deq.f32").write_bytes(deq.astype("<f4").tobytes())
        rmse = float(np.sqrt(np.mean((deq - x) ** 2, axis=1)).max())
        entry = {"bytes": len(ours), "worst_row_rmse": rmse}
        try:
            py = quants.quantize(x, ty).tobytes()
            entry["gguf_py_same_bytes"] = py == ours
        except NotImplementedError:
            entry["gguf_py_same_bytes"] = None
        summary[name] = entry
        print(f"{name}: {len(ours)} bytes, worst row RMSE {rmse:.3e}, gguf-py quantises to the "
              f"same bytes: {entry['gguf_py_same_bytes']}")
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
