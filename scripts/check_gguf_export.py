#!/usr/bin/env python3
"""Checks `temper export-gguf` with llama.cpp's own reader, gguf-py (PyPI `gguf`).

Exports the embedded tiny model with the PEFT-trained adapter of tests/fixtures/merge in f32,
bf16, q8_0, q4_0, q4_k_m, q5_k_m and q6_k, and the adapter alone, then reads every file with
``gguf.GGUFReader`` and compares: each tensor, dequantised by ``gguf.quants.dequantize`` and
with llama's q/k row permutation undone, against the merged model temper writes (``temper
merge --dtype float32``) and, exactly, against temper's own dequantisation (``temper
import-gguf --dtype float32`` of the same file); the token list against tokenizer.json; the
LoRA tensors against the adapter. (The tiny model's rows of 128 are not whole k-quant
super-blocks, so its k-quant files hold llama.cpp's fallback types; the k-quant blocks
themselves are checked in crates/temper-gguf/tests/quantize.rs and scripts/check_llama_cpp.sh.)

Usage:  python scripts/check_gguf_export.py --temper target/release/temper
Needs gguf, numpy, safetensors.
"""

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import gguf
import numpy as np
from gguf.quants import dequantize
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "examples" / "tiny" / "model"
ADAPTER = ROOT / "tests" / "fixtures" / "merge" / "init_adapter"


def unpermute(w, n_head):
    # GGUF row 2d + t of each head is HF row t * half + d.
    rows = w.shape[0]
    hd = rows // n_head
    return w.reshape(n_head, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_name(name):
    fixed = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    if name in fixed:
        return fixed[name]
    _, l, mod, param = name.split(".")
    m = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
         "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
         "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
         "ffn_down": "mlp.down_proj"}[mod]
    return f"model.layers.{l}.{m}.{param}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--temper", type=Path, required=True)
    args = ap.parse_args()
    cfg = json.loads((TINY / "config.json").read_text())
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    tok = json.loads((TINY / "tokenizer.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = lambda *a: subprocess.run([str(args.temper), *a], check=True, capture_output=True)
        run("merge", "--model", str(TINY), "--adapter", str(ADAPTER), "--out", str(tmp / "merged"),
            "--dtype", "float32")
        merged = load_file(tmp / "merged" / "model.safetensors")
        for ty in ["f32", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"]:
            out = tmp / f"tiny-{ty}.gguf"
            run("export-gguf", "--model", str(TINY), "--adapter", str(ADAPTER), "--out", str(out),
                "--type", ty)
            r = gguf.GGUFReader(out)
            run("import-gguf", str(out), "--out", str(tmp / f"back-{ty}"), "--dtype", "float32")
            back = load_file(tmp / f"back-{ty}" / "model.safetensors")
            worst = 0.0
            types = set()
            for t in r.tensors:
                types.add(t.tensor_type.name)
                got = dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
                got = got.astype(np.float32)
                if ".attn_q." in t.name:
                    got = unpermute(got, heads)
                elif ".attn_k." in t.name:
                    got = unpermute(got, kv)
                want = merged[hf_name(t.name)]
                assert np.array_equal(got, back[hf_name(t.name)]), f"{ty} {t.name}"
                err = float(np.abs(got - want).max() / np.abs(want).max())
                worst = max(worst, err)
            tokens = r.fields["tokenizer.ggml.tokens"].contents()
            vocab = {v: k for k, v in tok["model"]["vocab"].items()}
            assert tokens == [vocab[i] for i in range(len(tokens))]
            print(f"{ty}: gguf-py reads {len(r.tensors)} tensors, {len(r.fields)} fields; worst "
                  f"max|gguf - merged| / max|merged| over tensors {worst:.2e}, equal to temper's "
                  f"dequantisation; types {sorted(types)}; "
                  f"pre {r.fields['tokenizer.ggml.pre'].contents()}, {len(tokens)} tokens as in "
                  f"tokenizer.json")
            if ty == "f32":
                assert worst == 0.0
        out = tmp / "lora.gguf"
        run("export-gguf", "--model", str(TINY), "--adapter", str(ADAPTER), "--out", str(out),
            "--type", "f32", "--lora-only")
        r = gguf.GGUFReader(out)
        ad = load_file(ADAPTER / "adapter_model.safetensors")
        for t in r.tensors:
            blk, l, mod, _, which = t.name.split(".")
            m = hf_name(f"blk.{l}.{mod}.weight").removesuffix(".weight")
            key = f"base_model.model.{m}.lora_{which[-1].upper()}.weight"
            got = np.array(t.data).reshape([int(d) for d in reversed(t.shape)])
            if which == "lora_b" and mod in ("attn_q", "attn_k"):
                got = unpermute(got, heads if mod == "attn_q" else kv)
            assert np.array_equal(got, ad[key]), t.name
        f = r.fields
        print(f"lora: gguf-py reads {len(r.tensors)} tensors equal to the adapter's; general.type "
              f"{f['general.type'].contents()}, adapter.type {f['adapter.type'].contents()}, "
              f"adapter.lora.alpha {f['adapter.lora.alpha'].contents()}")


if __name__ == "__main__":
    main()
