#!/usr/bin/env python3
"""The Phi-3 and Gemma GGUFs of temper-gguf's `tests/gguf_families.rs` run through llama.cpp.

That test writes, from random models of the init-model shapes phi3-tiny, gemma-tiny,
gemma2-tiny and gemma3-tiny, GGUFs in the layout llama.cpp's convert_hf_to_gguf.py gives them,
imports them back and checks every tensor. This script asks llama.cpp itself (vendored in the
PyPI sdist llama-cpp-python==0.3.36, built as make_llama_cpp_token_fixtures.py builds it) to
load the same GGUFs and compute the logits of the same tokens (f32 KV cache, flash attention
off), and prints how far temper's logits of the imported folders are from llama.cpp's.

Usage:
  python scripts/check_gguf_families_llama_cpp.py
Needs cmake, ninja, a C++17 compiler and numpy; cargo runs the test.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_llama_cpp_token_fixtures as base  # noqa: E402

ROOT = base.ROOT

DRIVER = r"""
// Logits of every position: argv[1] model.gguf, argv[2] a file of token ids; writes one line of
// n_vocab floats per token.
#include "llama.h"
#include <cstdio>
#include <fstream>
#include <vector>
static void quiet(enum ggml_log_level l, const char * t, void *) { if (l >= GGML_LOG_LEVEL_WARN) fputs(t, stderr); }
int main(int argc, char ** argv) {
    if (argc != 3) return 2;
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) { fprintf(stderr, "cannot load %s\n", argv[1]); return 1; }
    std::ifstream in(argv[2]);
    std::vector<llama_token> ids; int x; while (in >> x) ids.push_back(x);
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 512; cp.n_batch = 512; cp.n_ubatch = 512; cp.n_threads = 2;
    cp.type_k = GGML_TYPE_F32; cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "no context\n"); return 1; }
    llama_batch b = llama_batch_init((int) ids.size(), 0, 1);
    for (size_t i = 0; i < ids.size(); ++i) {
        b.token[i] = ids[i]; b.pos[i] = (int) i; b.n_seq_id[i] = 1; b.seq_id[i][0] = 0; b.logits[i] = 1;
    }
    b.n_tokens = (int) ids.size();
    if (llama_decode(ctx, b) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
    const int nv = llama_vocab_n_tokens(llama_model_get_vocab(model));
    for (size_t i = 0; i < ids.size(); ++i) {
        const float * l = llama_get_logits_ith(ctx, (int) i);
        for (int j = 0; j < nv; ++j) printf(j ? " %.7g" : "%.7g", l[j]);
        printf("\n");
    }
    llama_batch_free(b); llama_free(ctx); llama_model_free(model);
    return 0;
}
"""


def build_logits_driver(src: Path, build: Path) -> Path:
    base.build_driver(src, build)  # builds libllama and the static ggml libraries
    return base.link_driver(src, build, DRIVER, build / "logits-driver")


def main() -> None:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=ROOT / "target" / "artifacts")
    ap.add_argument("--build", type=Path, default=ROOT / "target" / "llama-cpp-build")
    args = ap.parse_args()
    src = base.unpack(base.fetch_sdist(args.cache), args.cache / "llama-cpp-python")
    driver = build_logits_driver(src, args.build)

    with tempfile.TemporaryDirectory() as keep:
        env = dict(os.environ, TEMPER_KEEP_FAMILY_GGUFS=keep)
        subprocess.run(["cargo", "test", "-p", "temper-gguf", "--test", "gguf_families"],
                       cwd=ROOT, env=env, check=True)
        for j in sorted(Path(keep).glob("*.json")):
            case = json.loads(j.read_text())
            ids, v = case["ids"], case["vocab"]
            temper = np.array(case["logits"], dtype=np.float64).reshape(len(ids), v)
            ids_file = Path(keep) / "ids.txt"
            ids_file.write_text(" ".join(map(str, ids)))
            out = subprocess.run([str(driver), str(j.with_suffix(".gguf")), str(ids_file)],
                                 capture_output=True, text=True, check=True).stdout
            llama = np.array([[float(x) for x in line.split()] for line in out.strip().split("\n")])
            err = np.abs(llama - temper).max() / np.abs(temper).max()
            agree = float(np.mean(llama.argmax(1) == temper.argmax(1)))
            print(f"{j.stem}: {len(ids)} positions: max |llama.cpp - temper| / max |logit| = "
                  f"{err:.2e}; argmax agrees at {agree:.0%} of positions")


if __name__ == "__main__":
    main()
