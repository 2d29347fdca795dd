#!/usr/bin/env python3
"""Token-id fixtures for temper-gguf's SentencePiece tokenizers, made by llama.cpp itself.

Uses the llama.cpp build and driver of make_llama_cpp_token_fixtures.py (llama.cpp vendored in
the PyPI sdist llama-cpp-python==0.3.36, CPU only; `llama_tokenize` on a vocabulary-only load).
Before using the driver it checks it reproduces llama.cpp's own reference tokenisations
(`models/ggml-vocab-*.gguf.inp/.out`) for every SentencePiece vocabulary there.

Writes ``tests/fixtures/gguf/spm_tokens.json``: for the SentencePiece vocabularies of llama.cpp's
`models/` folder with reference tokenisations (llama-spm: Llama 1/2's; phi-3: Phi-3's, with
its chat tokens and `general.name` = Phi3), llama.cpp's ids for

  plain   the strings of make_llama_cpp_token_fixtures.py and more written for this project
          (runs of spaces, leading spaces, numbered lists, indented code, digits, CJK, emoji,
          the "▁" character itself), add_special and parse_special off: test-tokenizer-0's way;
  chat    the chats of make_llama_cpp_token_fixtures.py rendered with phi-3's chat template
          (jinja2), and strings with control tokens between spaces and newlines, add_special
          and parse_special on: BOS as the file asks, special tokens in the text matched, as
          temper's `encode(text, true)` does.

Usage:
  python scripts/make_spm_token_fixtures.py
Needs what make_llama_cpp_token_fixtures.py needs (cmake, ninja, a C++17 compiler, numpy), and
jinja2.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_llama_cpp_token_fixtures as base  # noqa: E402

ROOT = base.ROOT
OUT = base.OUT
VOCABS = ["llama-spm", "phi-3"]

MORE_STRINGS = [
    "    indented four",
    "        eight spaces then text",
    "a" + " " * 40 + "b",
    " " * 17,
    "two  spaces, three   spaces, five     spaces",
    "trailing\n\n\n",
    "\n\nleading newlines",
    "\t\ttabs\tinside",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n        self.items.append(x)\n",
    "if (x) {\n  y = 1;\n} else {\n    y = 2;\n}",
    "1) one\n2) two\n10) ten\n100) hundred",
    "3.14159 2.71828 1e-9 0x1F 1_000_000",
    "日本語のテキスト、中文文本，한국어 텍스트。",
    "emoji: 😀👍🏽👨‍👩‍👧‍👦 🇳🇴 ✨",
    "mixed 🤖robots🤖 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "the \u2581 character and \u2581\u2581 two of them",
    "zero\u200bwidth and non\u00a0breaking",
    "Ünïcödé ÀÉÎÕÜ ßẞ ﬁ ﬂ",
    "<s> and </s> and <unk> written as text",
    "<0x0A> <0xFF> written as text",
    "",
    " ",
    "\n",
]

CHAT_EXTRA = [
    "<|user|>\nHello<|end|>\n<|assistant|>\nHi there.<|end|>",
    "<|system|>   spaces after<|end|>   \n  <|user|>x<|end|>",
    "text</s>   more text</s>\n\nend",
    "<s>already a bos</s> <unk> <|endoftext|>  tail",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=ROOT / "target" / "artifacts")
    ap.add_argument("--build", type=Path, default=ROOT / "target" / "llama-cpp-build")
    args = ap.parse_args()

    sdist = base.fetch_sdist(args.cache)
    src = base.unpack(sdist, args.cache / "llama-cpp-python")
    sys.path.insert(0, str(src / "gguf-py"))
    if shutil.which("cmake") is None or shutil.which("ninja") is None:
        raise SystemExit("cmake and ninja are needed (pip install cmake ninja)")
    driver = base.build_driver(src, args.build)
    models = src / "models"

    import gguf as gguf_py
    import jinja2

    plain = base.STRINGS + MORE_STRINGS
    out = {
        "made_by": "llama.cpp (vendored in llama-cpp-python 0.3.36): llama_tokenize on a vocab_only load",
        "plain_strings": plain,
        "vocabs": [],
    }
    for name in VOCABS:
        vocab = models / f"ggml-vocab-{name}.gguf"
        r = gguf_py.GGUFReader(vocab)
        assert r.fields["tokenizer.ggml.model"].contents() == "llama", name
        texts = (models / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split(base.SEP)
        if texts and texts[-1] == "":
            texts.pop()
        want = [[int(t) for t in line.split()] for line in
                (models / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").splitlines()]
        got = base.llama_cpp_ids(driver, vocab, texts, False, False)
        assert got == want, f"the driver does not reproduce {vocab.name}"
        print(f"driver reproduces {vocab.name}: {len(want)} cases")

        entry = {"vocab": name, "plain": base.llama_cpp_ids(driver, vocab, plain, False, False)}
        if "tokenizer.chat_template" in r.fields:
            t = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(
                r.fields["tokenizer.chat_template"].contents())
            chats = [t.render(messages=m, add_generation_prompt=False, bos_token="<s>", eos_token="<|endoftext|>")
                     for m in base.CHATS]
            entry["chat_strings"] = chats + CHAT_EXTRA
            entry["chat"] = base.llama_cpp_ids(driver, vocab, entry["chat_strings"], True, True)
        out["vocabs"].append(entry)

    path = OUT / "spm_tokens.json"
    path.write_text(base.compact_id_lists(json.dumps(out, ensure_ascii=False, indent=1)) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
